//! Reaching servers inside the guest: [`GuestHttp`] opens connections into it
//! (`Stack::connect`, from the gateway's address), probes ports, and sends HTTP requests with
//! http-proxy's [`Client`], keeping a few idle connections per guest port for reuse. Shared by
//! the browser's `connect`/`fetchGuest`/`probe` and the native runner's `--forward`.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::pin::Pin;
use std::rc::{Rc, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use fetch_transport::{Body, BodyError};
use futures::future::{self, Either};
use futures::Stream;
use http::header::HOST;
use http::{HeaderValue, Request, Response};
use http_proxy::client::{is_idle_open, Client, ClientConfig, ClientError, ResponseBody};
use net_stack::{ConnectError, Stack, TcpStream};

use crate::runtime::Runtime;

/// How long the guest may take to answer a connection's SYN.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long an idle kept-alive connection stays in the pool.
pub const POOL_IDLE: Duration = Duration::from_secs(30);
/// Idle kept-alive connections kept per guest address and port.
pub const MAX_IDLE_PER_PORT: usize = 4;
/// Extra time past the stack's own connect timeout before the wait is given up regardless
/// (the stack's timer needs the driver; this one does not).
const CONNECT_GRACE: Duration = Duration::from_secs(1);

/// The guest's current address: the most recently renewed DHCP lease.
pub fn guest_ip(stack: &Stack) -> Option<Ipv4Addr> {
    stack
        .leases()
        .into_iter()
        .max_by_key(|lease| lease.expires)
        .map(|lease| lease.ip)
}

/// A guest port given as a JavaScript number: an integer of 1–65535.
pub fn port_number(value: f64) -> Result<u16, GuestError> {
    if value.fract() != 0.0 || !(1.0..=65535.0).contains(&value) {
        return Err(GuestError::BadPort(value));
    }
    Ok(value as u16)
}

/// The bounds of [`GuestHttp`].
#[derive(Debug, Clone)]
pub struct GuestConfig {
    /// How long the guest may take to answer a SYN.
    pub connect_timeout: Duration,
    /// The HTTP client's limits; its idle timeout bounds every wait for the guest's server.
    pub client: ClientConfig,
    /// How long an idle kept-alive connection is kept.
    pub pool_idle: Duration,
    /// Idle kept-alive connections kept per guest address and port (0: no reuse).
    pub max_idle_per_port: usize,
}

impl Default for GuestConfig {
    fn default() -> Self {
        Self {
            connect_timeout: CONNECT_TIMEOUT,
            client: ClientConfig::default(),
            pool_idle: POOL_IDLE,
            max_idle_per_port: MAX_IDLE_PER_PORT,
        }
    }
}

/// Why the guest could not be reached or did not answer.
#[derive(Debug, thiserror::Error)]
pub enum GuestError {
    /// A port number that is not an integer of 1–65535.
    #[error("port {0} is not a TCP port (1-65535)")]
    BadPort(f64),
    /// Port 0.
    #[error("port 0 cannot be connected to")]
    PortZero,
    /// No address was given and no guest has taken a DHCP lease yet.
    #[error("no guest has a DHCP lease yet (its network is not up; or give its ip)")]
    NoLease,
    /// The guest answered with RST: nothing listens on that port.
    #[error("{0} refused the connection (nothing listens there)")]
    Refused(SocketAddrV4),
    /// The guest did not answer the SYN in time.
    #[error("{0} did not answer within {1:?}")]
    TimedOut(SocketAddrV4, Duration),
    /// The stack cannot open the connection (not a guest address, limits).
    #[error("cannot connect to {0}: {1}")]
    Connect(SocketAddrV4, ConnectError),
    /// The HTTP exchange failed: a malformed response, the guest closing mid-body, silence.
    #[error("{0}: {1}")]
    Http(SocketAddrV4, ClientError),
}

impl GuestError {
    fn from_connect(guest: SocketAddrV4, err: ConnectError, timeout: Duration) -> Self {
        match err {
            ConnectError::PortZero => Self::PortZero,
            ConnectError::Refused(addr) => Self::Refused(addr),
            ConnectError::TimedOut(addr, _) => Self::TimedOut(addr, timeout),
            other => Self::Connect(guest, other),
        }
    }
}

/// One idle kept-alive connection.
struct Idle {
    id: u64,
    stream: TcpStream,
}

/// The idle connections per guest address and port, each dropped after `idle_for`.
struct Pool {
    idle: RefCell<HashMap<SocketAddrV4, Vec<Idle>>>,
    next_id: Cell<u64>,
    runtime: Rc<dyn Runtime>,
    idle_for: Duration,
    max_per_port: usize,
}

impl Pool {
    /// The most recently used idle connection to `guest` that is still open.
    fn take(&self, guest: SocketAddrV4) -> Option<TcpStream> {
        let mut idle = self.idle.borrow_mut();
        let list = idle.get_mut(&guest)?;
        let mut found = None;
        while let Some(mut entry) = list.pop() {
            if is_idle_open(&mut entry.stream) {
                found = Some(entry.stream);
                break;
            }
        }
        if list.is_empty() {
            idle.remove(&guest);
        }
        found
    }

    /// Keeps `stream` for the next request to `guest`, the oldest making room when the port
    /// has its fill; it is dropped (closed) after `idle_for` unless used before.
    fn put(self: &Rc<Self>, guest: SocketAddrV4, stream: TcpStream) {
        if self.max_per_port == 0 {
            return;
        }
        let id = self.next_id.get();
        self.next_id.set(id + 1);
        {
            let mut idle = self.idle.borrow_mut();
            let list = idle.entry(guest).or_default();
            if list.len() >= self.max_per_port {
                list.remove(0);
            }
            list.push(Idle { id, stream });
        }
        let pool = Rc::downgrade(self);
        let sleep = self.runtime.sleep(self.idle_for);
        self.runtime.spawn(Box::pin(async move {
            sleep.await;
            if let Some(pool) = pool.upgrade() {
                pool.expire(guest, id);
            }
        }));
    }

    fn expire(&self, guest: SocketAddrV4, id: u64) {
        let mut idle = self.idle.borrow_mut();
        if let Some(list) = idle.get_mut(&guest) {
            list.retain(|entry| entry.id != id);
            if list.is_empty() {
                idle.remove(&guest);
            }
        }
    }

    fn len(&self) -> usize {
        self.idle.borrow().values().map(Vec::len).sum()
    }
}

/// Connections and HTTP requests into the guest.
pub struct GuestHttp {
    stack: Stack,
    runtime: Rc<dyn Runtime>,
    client: Client,
    connect_timeout: Duration,
    pool: Rc<Pool>,
}

impl GuestHttp {
    /// Reaches the guest behind `stack`, timing every wait with `runtime`'s timer.
    pub fn new(stack: Stack, runtime: Rc<dyn Runtime>, config: GuestConfig) -> Self {
        let pool = Rc::new(Pool {
            idle: RefCell::default(),
            next_id: Cell::new(0),
            runtime: runtime.clone(),
            idle_for: config.pool_idle,
            max_per_port: config.max_idle_per_port,
        });
        Self {
            client: Client::new(config.client, runtime.timer()),
            stack,
            runtime,
            connect_timeout: config.connect_timeout,
            pool,
        }
    }

    /// The guest address for `port`: at `ip`, else at the most recent DHCP lease.
    pub fn address(&self, port: u16, ip: Option<Ipv4Addr>) -> Result<SocketAddrV4, GuestError> {
        if port == 0 {
            return Err(GuestError::PortZero);
        }
        let ip = match ip {
            Some(ip) => ip,
            None => guest_ip(&self.stack).ok_or(GuestError::NoLease)?,
        };
        Ok(SocketAddrV4::new(ip, port))
    }

    /// A new TCP connection to `guest`, or why not (refused at once when nothing listens).
    pub async fn connect(&self, guest: SocketAddrV4) -> Result<TcpStream, GuestError> {
        let timeout = self.connect_timeout;
        let connecting = self
            .stack
            .connect(guest, timeout.into())
            .map_err(|err| GuestError::from_connect(guest, err, timeout))?;
        let guard = self.runtime.sleep(timeout + CONNECT_GRACE);
        match future::select(connecting, guard).await {
            Either::Left((result, _)) => {
                result.map_err(|err| GuestError::from_connect(guest, err, timeout))
            }
            Either::Right(_) => Err(GuestError::TimedOut(guest, timeout)),
        }
    }

    /// Whether something listens on `guest` (answers a SYN with SYN-ACK; RST is `false`);
    /// an error when the guest stays silent for `timeout`.
    pub async fn probe(&self, guest: SocketAddrV4, timeout: Duration) -> Result<bool, GuestError> {
        let probing = self.stack.probe(guest, timeout.into());
        let guard = self.runtime.sleep(timeout + CONNECT_GRACE);
        futures::pin_mut!(probing);
        match future::select(probing, guard).await {
            Either::Left((result, _)) => {
                result.map_err(|err| GuestError::from_connect(guest, err, timeout))
            }
            Either::Right(_) => Err(GuestError::TimedOut(guest, timeout)),
        }
    }

    /// Sends `request` to the HTTP server at `guest`, over an idle kept-alive connection when
    /// one is open, else a new one. Without a `Host` header or an authority in its URI the
    /// request goes with `Host: <ip>:<port>`. A request without a body that finds its reused
    /// connection closed by the server is sent once more on a new one.
    pub async fn send(
        &self,
        guest: SocketAddrV4,
        request: Request<Body>,
    ) -> Result<Response<GuestBody>, GuestError> {
        let (mut parts, body) = request.into_parts();
        if !parts.headers.contains_key(HOST) && parts.uri.authority().is_none() {
            if let Ok(host) = HeaderValue::from_str(&guest.to_string()) {
                parts.headers.insert(HOST, host);
            }
        }
        let replayable = body.len() == Some(0);
        if let Some(stream) = self.pool.take(guest) {
            let request = Request::from_parts(copy_parts(&parts), body);
            match self.client.send(stream, request).await {
                Ok(response) => return Ok(self.wrap(guest, response)),
                Err(err) if replayable && stale(&err) => {
                    tracing::debug!(%guest, error = %err, "a kept-alive connection was closed; again on a new one");
                }
                Err(err) => return Err(GuestError::Http(guest, err)),
            }
            let stream = self.connect(guest).await?;
            let request = Request::from_parts(parts, Body::empty());
            return match self.client.send(stream, request).await {
                Ok(response) => Ok(self.wrap(guest, response)),
                Err(err) => Err(GuestError::Http(guest, err)),
            };
        }
        let stream = self.connect(guest).await?;
        match self
            .client
            .send(stream, Request::from_parts(parts, body))
            .await
        {
            Ok(response) => Ok(self.wrap(guest, response)),
            Err(err) => Err(GuestError::Http(guest, err)),
        }
    }

    /// Idle kept-alive connections in the pool (all ports).
    pub fn idle_connections(&self) -> usize {
        self.pool.len()
    }

    fn wrap(
        &self,
        guest: SocketAddrV4,
        response: Response<ResponseBody<TcpStream>>,
    ) -> Response<GuestBody> {
        let (head, body) = response.into_parts();
        let mut body = GuestBody {
            len: body.len(),
            inner: Some(body),
            guest,
            pool: Rc::downgrade(&self.pool),
        };
        // No body at all: the connection is free at once, read or not.
        if body.inner.as_ref().is_some_and(ResponseBody::is_complete) {
            body.finish();
        }
        Response::from_parts(head, body)
    }
}

/// Whether a failure on a reused connection means the server had closed it while idle
/// (nothing of a response came back).
fn stale(err: &ClientError) -> bool {
    matches!(
        err,
        ClientError::ClosedBeforeResponse | ClientError::SendHead(_) | ClientError::Read(_)
    )
}

/// The parts of a request without its extensions, for sending it again.
fn copy_parts(parts: &http::request::Parts) -> http::request::Parts {
    let mut copy = Request::new(()).into_parts().0;
    copy.method = parts.method.clone();
    copy.uri = parts.uri.clone();
    copy.version = parts.version;
    copy.headers = parts.headers.clone();
    copy
}

/// A response body from the guest, streamed as it is polled; once read to its end, its
/// connection goes back to the pool when the response allowed that.
pub struct GuestBody {
    inner: Option<ResponseBody<TcpStream>>,
    len: Option<u64>,
    guest: SocketAddrV4,
    pool: Weak<Pool>,
}

impl GuestBody {
    /// The body's length when the response said it.
    pub fn len(&self) -> Option<u64> {
        self.len
    }

    /// True when the response said there is no body.
    pub fn is_empty(&self) -> bool {
        self.len == Some(0)
    }

    /// The body as the transports' [`Body`] (errors as text).
    pub fn into_body(self) -> Body {
        let len = self.len;
        let stream = futures::StreamExt::map(self, |piece| {
            piece.map_err(|err| BodyError::new(err.to_string()))
        });
        Body::from_stream(stream, len)
    }

    /// Returns the connection to the pool when it can carry another request.
    fn finish(&mut self) {
        let Some(body) = self.inner.take() else {
            return;
        };
        if let (Some(stream), Some(pool)) = (body.into_reusable(), self.pool.upgrade()) {
            pool.put(self.guest, stream);
        }
    }
}

impl std::fmt::Debug for GuestBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GuestBody")
            .field("guest", &self.guest)
            .field("len", &self.len)
            .field("done", &self.inner.is_none())
            .finish()
    }
}

impl Stream for GuestBody {
    type Item = Result<Bytes, GuestError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        let Some(body) = this.inner.as_mut() else {
            return Poll::Ready(None);
        };
        match Pin::new(body).poll_next(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Some(Ok(piece))) => Poll::Ready(Some(Ok(piece))),
            Poll::Ready(Some(Err(err))) => {
                this.inner = None;
                Poll::Ready(Some(Err(GuestError::Http(this.guest, err))))
            }
            Poll::Ready(None) => {
                this.finish();
                Poll::Ready(None)
            }
        }
    }
}

#[cfg(all(test, not(target_arch = "wasm32")))]
mod tests;
