//! WebSockets from the guest: with [`WebSockets`] configured (the browser's `WebSocket`, a
//! native client), a valid RFC 6455 upgrade on any path (absolute-form `ws://`, `ws://` or
//! `wss://` inside a CONNECT tunnel, transparent 80/443) is opened on the server side first;
//! only then is the guest answered `101` with `Sec-WebSocket-Accept`, and messages are carried
//! both ways ([`bridge`]). A refusal is a 502 naming the URL and the reason. The guest's frames
//! are decoded by tungstenite (server role); pings are answered here, extensions are not
//! negotiated, close codes and reasons pass both ways. With raw tunnels (a relay) a plain
//! `ws://` upgrade goes through a tunnel as it came instead ([`serve_raw`]).

use std::cell::Cell;
use std::future::poll_fn;
use std::task::{Context, Poll};

use async_trait::async_trait;
use async_tungstenite::tungstenite::error::{CapacityError, Error as WsError, ProtocolError};
use async_tungstenite::tungstenite::handshake::derive_accept_key;
use async_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use async_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use async_tungstenite::tungstenite::Message;
use async_tungstenite::WebSocketStream;
use fetch_transport::relay::{Close, Dialed, MessageSocket, SocketError, WsMessage};
use futures::future::{self, Either};
use futures::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use futures::{SinkExt, StreamExt};
use http::header::{self, HeaderName, HeaderValue};
use http::{HeaderMap, Method, StatusCode};

use crate::body::decode::{request_framing, RequestFraming};
use crate::conn::PendingConnect;
use crate::error::ServeError;
use crate::error_page::ErrorPage;
use crate::head::{RequestHead, Version};
use crate::route::{route, Mode, Route};
use crate::stats::Counters;
use crate::tunnel::{splice, RawTunnels, HALF_CLOSE_LINGER};
use crate::Proxy;

/// Why the server side of a guest's WebSocket could not be opened; the text goes into the
/// guest's error page.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WebSocketError {
    /// The configuration does not allow this destination (answered 403).
    #[error("not allowed by this proxy's configuration: {0}")]
    Denied(String),
    /// The WebSocket could not be opened (answered 502).
    #[error("{}", describe(.0))]
    Socket(#[from] SocketError),
}

/// Opens the server side of the guest's WebSockets (the browser's `WebSocket`, a native
/// client); http-proxy never learns what carries them.
#[async_trait(?Send)]
pub trait WebSockets {
    /// Opens `url` (`ws://` or `wss://`) offering `protocols`; the open socket and the
    /// subprotocol the server chose, or why not.
    async fn open(&self, url: &str, protocols: &[String]) -> Result<Dialed, WebSocketError>;
}

/// The reason inside a socket error, without the relay's wording around it.
fn describe(err: &SocketError) -> String {
    match err {
        SocketError::BadUrl { reason, .. } => format!("the URL cannot be used: {reason}"),
        SocketError::Connect { reason, .. } => reason.clone(),
        SocketError::Lost(reason) => reason.clone(),
        SocketError::TooLarge { limit } => format!("a message larger than {limit} bytes"),
    }
}

/// True when `head` asks to become a WebSocket (its `Upgrade` names `websocket`); whether the
/// rest of the handshake is valid is checked by [`serve`].
pub(crate) fn is_upgrade(head: &RequestHead) -> bool {
    tokens(&head.headers, &header::UPGRADE).any(|t| t.eq_ignore_ascii_case("websocket"))
}

/// The comma-separated tokens of every `name` field.
fn tokens<'a>(headers: &'a HeaderMap, name: &HeaderName) -> impl Iterator<Item = &'a str> + 'a {
    headers
        .get_all(name)
        .iter()
        .flat_map(|v| v.to_str().unwrap_or("").split(','))
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

/// A valid client handshake: the key to answer and the subprotocols offered, in order.
#[derive(Debug, PartialEq, Eq)]
pub struct Handshake {
    /// `Sec-WebSocket-Key`.
    pub key: String,
    /// `Sec-WebSocket-Protocol`, every value split at commas.
    pub protocols: Vec<String>,
}

/// Checks an upgrade request against RFC 6455 §4.2.1; the page refusing it otherwise.
pub fn check_handshake(head: &RequestHead) -> Result<Handshake, Box<ErrorPage>> {
    let bad = |msg: &str| {
        Box::new(ErrorPage::new(
            StatusCode::BAD_REQUEST,
            "bad-websocket-handshake",
            msg,
        ))
    };
    if head.method != Method::GET {
        return Err(bad("a WebSocket handshake must be a GET request"));
    }
    if head.version != Version::Http11 {
        return Err(bad("a WebSocket handshake needs HTTP/1.1"));
    }
    if !tokens(&head.headers, &header::CONNECTION).any(|t| t.eq_ignore_ascii_case("upgrade")) {
        return Err(bad("a WebSocket handshake needs Connection: Upgrade"));
    }
    let version = head.headers.get(header::SEC_WEBSOCKET_VERSION);
    if version.and_then(|v| v.to_str().ok()).map(str::trim) != Some("13") {
        let mut page = ErrorPage::new(
            StatusCode::UPGRADE_REQUIRED,
            "bad-websocket-handshake",
            "only WebSocket version 13 is supported",
        );
        page.headers.insert(
            header::SEC_WEBSOCKET_VERSION,
            HeaderValue::from_static("13"),
        );
        return Err(Box::new(page));
    }
    let mut keys = head.headers.get_all(header::SEC_WEBSOCKET_KEY).iter();
    let key = match (keys.next(), keys.next()) {
        (Some(key), None) => key.to_str().unwrap_or("").trim(),
        _ => return Err(bad("a WebSocket handshake needs one Sec-WebSocket-Key")),
    };
    let decoded = data_encoding::BASE64.decode(key.as_bytes());
    if decoded.map(|k| k.len()) != Ok(16) {
        return Err(bad("Sec-WebSocket-Key is not 16 bytes in base64"));
    }
    if !matches!(
        request_framing(&head.headers, head.version),
        Ok(RequestFraming::Empty)
    ) {
        return Err(bad("a WebSocket handshake must not have a body"));
    }
    let protocols: Vec<String> = tokens(&head.headers, &header::SEC_WEBSOCKET_PROTOCOL)
        .map(str::to_string)
        .collect();
    if protocols.iter().any(|p| !is_token(p)) {
        return Err(bad(
            "Sec-WebSocket-Protocol holds something that is not a token",
        ));
    }
    Ok(Handshake {
        key: key.to_string(),
        protocols,
    })
}

/// An HTTP token (RFC 9110 §5.6.2), as a subprotocol must be.
fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// The WebSocket URL of an `http(s)://` URL the route gave.
fn ws_url(url: &str) -> Option<String> {
    if let Some(rest) = url.strip_prefix("http://") {
        Some(format!("ws://{rest}"))
    } else {
        url.strip_prefix("https://")
            .map(|rest| format!("wss://{rest}"))
    }
}

/// The `101 Switching Protocols` for `key`, naming `protocol` when the server chose one.
pub fn switching_protocols(key: &str, protocol: Option<&str>) -> String {
    let mut head = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n",
        derive_accept_key(key.as_bytes())
    );
    if let Some(protocol) = protocol {
        head.push_str(&format!("Sec-WebSocket-Protocol: {protocol}\r\n"));
    }
    head.push_str("\r\n");
    head
}

/// Counts a refusal and answers the upgrade with `page`.
async fn refuse(
    proxy: &Proxy,
    pending: PendingConnect,
    page: &ErrorPage,
) -> Result<(), ServeError> {
    Counters::add(&proxy.counters.websockets_refused, 1);
    pending.refuse(proxy, page).await
}

/// Serves a WebSocket upgrade (`pending` holds its head): checks it, opens the server side
/// (bounded by the I/O timeout), answers 101 and carries the session until it ends.
pub(crate) async fn serve(
    proxy: &Proxy,
    pending: PendingConnect,
    mode: &Mode,
) -> Result<(), ServeError> {
    if proxy.websockets.is_none() && proxy.raw_tunnels.is_none() {
        return pending
            .refuse(proxy, &crate::refuse::upgrade_unsupported())
            .await;
    }
    let handshake = match check_handshake(&pending.head) {
        Ok(handshake) => handshake,
        Err(page) => return pending.refuse(proxy, &page).await,
    };
    let url = match route(proxy, &pending.head, mode) {
        Ok(Route::Forward(url)) => ws_url(&url),
        Ok(Route::OwnPage(_)) => None,
        Err(page) => return pending.refuse(proxy, &page).await,
    };
    let Some(url) = url else {
        let page = ErrorPage::new(
            StatusCode::NOT_FOUND,
            "own-page",
            "the proxy itself serves no WebSocket",
        );
        return pending.refuse(proxy, &page).await;
    };
    if let Some(tunnels) = proxy.raw_tunnels.clone() {
        if url.starts_with("ws://") {
            return serve_raw(proxy, pending, tunnels.as_ref(), &url).await;
        }
    }
    let Some(websockets) = proxy.websockets.clone() else {
        return pending
            .refuse(proxy, &crate::refuse::upgrade_unsupported())
            .await;
    };
    let open = websockets.open(&url, &handshake.protocols);
    let timeout = proxy.timer.sleep(proxy.config.limits.io_timeout);
    let opened = match future::select(open, timeout).await {
        Either::Left((result, _)) => result,
        Either::Right(_) => {
            let page = ErrorPage::new(
                StatusCode::GATEWAY_TIMEOUT,
                "timeout",
                format!("the WebSocket to {url} did not open in time"),
            );
            return refuse(proxy, pending, &page).await;
        }
    };
    let Dialed { socket, protocol } = match opened {
        Ok(dialed) => dialed,
        Err(err) => {
            let (status, kind) = match err {
                WebSocketError::Denied(_) => (StatusCode::FORBIDDEN, "denied"),
                WebSocketError::Socket(_) => (StatusCode::BAD_GATEWAY, "websocket-failed"),
            };
            let page = ErrorPage::new(
                status,
                kind,
                format!("cannot open a WebSocket to {url}: {err}"),
            );
            return refuse(proxy, pending, &page).await;
        }
    };
    if let Some(chosen) = protocol.as_deref() {
        if !handshake.protocols.iter().any(|p| p == chosen) {
            let page = ErrorPage::new(
                StatusCode::BAD_GATEWAY,
                "websocket-failed",
                format!("the WebSocket server at {url} chose the subprotocol {chosen:?}, which was not offered"),
            );
            return refuse(proxy, pending, &page).await;
        }
    }
    let response = switching_protocols(&handshake.key, protocol.as_deref());
    let Some(stream) = pending.switch(response.as_bytes()).await? else {
        return Ok(());
    };
    let limit = proxy.config.limits.max_websocket_message;
    let config = WebSocketConfig::default()
        .max_message_size(Some(limit))
        .max_frame_size(Some(limit))
        .max_write_buffer_size(limit.saturating_mul(2).max(1 << 20));
    let guest = WebSocketStream::from_raw_socket(stream, Role::Server, Some(config)).await;
    tracing::debug!(%url, ?protocol, "WebSocket session open");
    let ending = bridge(proxy, guest, socket, limit).await;
    tracing::debug!(%url, ?ending, "WebSocket session ended");
    Ok(())
}

/// With raw tunnels configured (a relay), a plain `ws://` upgrade is carried as it came: a
/// tunnel to the URL's host and port is opened (a refusal is a 502 naming it), the request
/// head is sent on in origin form, and the two streams are spliced, so the server answers the
/// guest's handshake itself and the session is end to end (the guest's `Origin` and cookies
/// reach the server; nothing of the WebSocket is decoded here, and its messages are not
/// counted, only the session).
async fn serve_raw(
    proxy: &Proxy,
    pending: PendingConnect,
    tunnels: &dyn RawTunnels,
    url: &str,
) -> Result<(), ServeError> {
    let Ok(uri) = url.parse::<http::Uri>() else {
        let page = ErrorPage::new(
            StatusCode::BAD_REQUEST,
            "bad-request",
            format!("not a URL: {url}"),
        );
        return pending.refuse(proxy, &page).await;
    };
    let host = uri.host().unwrap_or_default().trim_matches(['[', ']']);
    let port = uri.port_u16().unwrap_or(80);
    let remote = match tunnels.open(host, port).await {
        Ok(remote) => remote,
        Err(err) => {
            Counters::add(&proxy.counters.websockets_refused, 1);
            let page = ErrorPage::new(
                StatusCode::BAD_GATEWAY,
                "websocket-failed",
                format!("cannot open a tunnel for the WebSocket to {url}: {err}"),
            );
            return pending.refuse(proxy, &page).await;
        }
    };
    let target = uri.path_and_query().map_or("/", |p| p.as_str());
    let head = raw_head(
        &pending.head,
        target,
        uri.authority().map_or(host, |a| a.as_str()),
    );
    let Some(stream) = pending.switch(b"").await? else {
        return Ok(());
    };
    Counters::add(&proxy.counters.websockets_opened, 1);
    Counters::add(&proxy.counters.websockets_open, 1);
    let _open = OpenSession(&proxy.counters.websockets_open);
    let mut remote = remote;
    if let Err(err) = remote.write_all(&head).await {
        tracing::debug!(%url, error = %err, "raw WebSocket: the tunnel took no request");
        return Ok(());
    }
    match splice(stream, remote, proxy.timer.as_ref(), HALF_CLOSE_LINGER).await {
        Ok((sent, received)) => tracing::debug!(%url, sent, received, "raw WebSocket ended"),
        Err(err) => tracing::debug!(%url, error = %err, "raw WebSocket ended with an error"),
    }
    Ok(())
}

/// The guest's upgrade request as sent on through a raw tunnel: origin form, its own `Host`
/// (else `authority`), every header but the ones meant for the proxy.
fn raw_head(head: &RequestHead, target: &str, authority: &str) -> Vec<u8> {
    let mut out = format!("GET {target} HTTP/1.1\r\n").into_bytes();
    if !head.headers.contains_key(header::HOST) {
        out.extend_from_slice(format!("Host: {authority}\r\n").as_bytes());
    }
    for (name, value) in &head.headers {
        if name == header::PROXY_AUTHORIZATION || name.as_str() == "proxy-connection" {
            continue;
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out
}

/// Counts a session as open while it lives (also when its task is dropped).
struct OpenSession<'a>(&'a Cell<u64>);

impl Drop for OpenSession<'_> {
    fn drop(&mut self) {
        self.0.set(self.0.get().saturating_sub(1));
    }
}

/// How a session ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ending {
    /// The guest sent a Close (its code and reason, if any).
    GuestClosed(Option<Close>),
    /// The guest's connection ended or failed without a Close.
    GuestGone,
    /// The guest broke the protocol (the code it was closed with: 1002, 1007, 1009).
    GuestFailed(Close),
    /// The server closed (its code and reason, if any).
    ServerClosed(Option<Close>),
    /// The server's connection failed (the guest was closed with 1011, or 1009 for a
    /// message over the limit).
    ServerFailed(SocketError),
}

/// Messages moved per wake-up before the bridge lets other tasks run.
const BUDGET: usize = 64;

/// The longest close reason that fits a control frame with its code.
const MAX_CLOSE_REASON: usize = 123;

/// True for a close code that may be sent in a Close frame (1005, 1006 and 1015 only report
/// what happened; below 1000 is unused).
fn sendable(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}

/// `reason` cut to what a Close frame can carry.
fn short_reason(reason: &str) -> String {
    let mut end = reason.len().min(MAX_CLOSE_REASON);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    reason[..end].to_string()
}

/// Carries messages both ways between the guest and the server's socket until one side
/// closes or fails, then closes the other side (bounded by the I/O timeout). Holds at most one
/// message per direction: the next is read only once the other side took the last one.
pub async fn bridge<S>(
    proxy: &Proxy,
    mut guest: WebSocketStream<S>,
    mut server: Box<dyn MessageSocket>,
    max_message: usize,
) -> Ending
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let counters = &proxy.counters;
    Counters::add(&counters.websockets_opened, 1);
    Counters::add(&counters.websockets_open, 1);
    let _open = OpenSession(&counters.websockets_open);
    let mut pump = Pump {
        up: None,
        down: None,
        max_message,
        counters,
    };
    let ending = poll_fn(|cx| pump.poll(cx, &mut guest, server.as_mut())).await;
    let timeout = proxy.config.limits.io_timeout;
    // What each side is told.
    let (to_guest, to_server) = match &ending {
        Ending::GuestClosed(close) => (None, close.clone().or(Some(Close::NORMAL))),
        Ending::GuestGone => (
            None,
            Some(Close {
                code: 1001,
                reason: "the guest went away".into(),
            }),
        ),
        Ending::GuestFailed(close) => (Some(Some(close.clone())), Some(close.clone())),
        // The server's Close is answered too: a client sends its reply only when driven
        // (tungstenite queues it for the next write), and a server whose Close goes
        // unanswered sees the connection reset instead of a closing handshake.
        Ending::ServerClosed(close) => (
            Some(close.clone().filter(|c| sendable(c.code))),
            Some(close.clone().unwrap_or(Close::NORMAL)),
        ),
        Ending::ServerFailed(err) => {
            let code = match err {
                SocketError::TooLarge { .. } => 1009,
                _ => 1011,
            };
            let close = Close {
                code,
                reason: describe(err),
            };
            (Some(Some(close)), None)
        }
    };
    let close_server = async {
        if let Some(close) = to_server {
            let _ = poll_fn(|cx| server.poll_close(cx, &close)).await;
        }
    };
    let close_guest = async {
        match to_guest {
            // The guest closed first: tungstenite queued the reply; send it and hang up.
            None => {
                let _ = guest.close(None).await;
            }
            Some(close) => {
                let frame = close.map(|c| CloseFrame {
                    code: CloseCode::from(c.code),
                    reason: short_reason(&c.reason).into(),
                });
                if guest.send(Message::Close(frame)).await.is_ok() {
                    // Wait for the guest's reply (the closing handshake), discarding data.
                    while let Some(Ok(_)) = guest.next().await {}
                }
            }
        }
        let _ = guest.get_mut().close().await;
    };
    let both = future::join(Box::pin(close_server), Box::pin(close_guest));
    let _ = future::select(both, proxy.timer.sleep(timeout)).await;
    ending
}

/// The state of a session's message pump: at most one message waiting per direction.
struct Pump<'a> {
    /// From the guest, waiting for the server's socket to be ready.
    up: Option<WsMessage>,
    /// From the server, waiting for the guest's connection to be ready.
    down: Option<Message>,
    max_message: usize,
    counters: &'a Counters,
}

impl Pump<'_> {
    fn poll<S>(
        &mut self,
        cx: &mut Context<'_>,
        guest: &mut WebSocketStream<S>,
        server: &mut dyn MessageSocket,
    ) -> Poll<Ending>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        for _ in 0..BUDGET {
            let mut progress = false;
            // Guest to server.
            if self.up.is_none() {
                match guest.poll_next_unpin(cx) {
                    Poll::Pending => {}
                    Poll::Ready(Some(Ok(message))) => {
                        progress = true;
                        match message {
                            Message::Text(text) => {
                                self.up = Some(WsMessage::Text(text.to_string()))
                            }
                            Message::Binary(bytes) => {
                                self.up = Some(WsMessage::Binary(bytes.to_vec()))
                            }
                            Message::Close(frame) => {
                                return Poll::Ready(Ending::GuestClosed(frame.map(|f| Close {
                                    code: f.code.into(),
                                    reason: f.reason.to_string(),
                                })))
                            }
                            // Pings are answered by tungstenite (the pong leaves with the
                            // next flush); pongs and raw frames mean nothing here.
                            Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => {}
                        }
                    }
                    Poll::Ready(None) => return Poll::Ready(Ending::GuestGone),
                    Poll::Ready(Some(Err(err))) => return Poll::Ready(guest_error(err)),
                }
            }
            if let Some(message) = self.up.take() {
                match server.poll_ready(cx) {
                    Poll::Pending => self.up = Some(message),
                    Poll::Ready(Err(err)) => return Poll::Ready(Ending::ServerFailed(err)),
                    Poll::Ready(Ok(())) => {
                        Counters::add(&self.counters.websocket_messages_from_guest, 1);
                        Counters::add(
                            &self.counters.websocket_bytes_from_guest,
                            message.len() as u64,
                        );
                        if let Err(err) = server.send(message) {
                            return Poll::Ready(Ending::ServerFailed(err));
                        }
                        progress = true;
                    }
                }
            }
            // Server to guest.
            if self.down.is_none() {
                match server.poll_recv(cx) {
                    Poll::Pending => {}
                    Poll::Ready(Ok(Some(message))) => {
                        if message.len() > self.max_message {
                            let err = SocketError::TooLarge {
                                limit: self.max_message,
                            };
                            return Poll::Ready(Ending::ServerFailed(err));
                        }
                        progress = true;
                        self.down = Some(match message {
                            WsMessage::Text(text) => Message::text(text),
                            WsMessage::Binary(bytes) => Message::binary(bytes),
                        });
                    }
                    Poll::Ready(Ok(None)) => {
                        return Poll::Ready(Ending::ServerClosed(server.peer_close()))
                    }
                    Poll::Ready(Err(err)) => return Poll::Ready(Ending::ServerFailed(err)),
                }
            }
            if let Some(message) = self.down.take() {
                match guest.poll_ready_unpin(cx) {
                    Poll::Pending => self.down = Some(message),
                    Poll::Ready(Err(_)) => return Poll::Ready(Ending::GuestGone),
                    Poll::Ready(Ok(())) => {
                        let len = message.len() as u64;
                        if guest.start_send_unpin(message).is_err() {
                            return Poll::Ready(Ending::GuestGone);
                        }
                        Counters::add(&self.counters.websocket_messages_to_guest, 1);
                        Counters::add(&self.counters.websocket_bytes_to_guest, len);
                        progress = true;
                    }
                }
            }
            // Both flushes every round: a pong, the last message, a slow network.
            if let Poll::Ready(Err(_)) = guest.poll_flush_unpin(cx) {
                return Poll::Ready(Ending::GuestGone);
            }
            if let Poll::Ready(Err(err)) = server.poll_flush(cx) {
                return Poll::Ready(Ending::ServerFailed(err));
            }
            if !progress {
                return Poll::Pending;
            }
        }
        // Let other tasks run; come back at once.
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

/// What a decoding error from the guest ends the session with.
fn guest_error(err: WsError) -> Ending {
    let failed = |code: u16, reason: &str| {
        Ending::GuestFailed(Close {
            code,
            reason: reason.into(),
        })
    };
    match err {
        WsError::Capacity(CapacityError::MessageTooLong { .. }) => failed(1009, "message too big"),
        WsError::Capacity(_) => failed(1009, "frame too big"),
        WsError::Utf8(_) => failed(1007, "text message is not UTF-8"),
        WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake) => Ending::GuestGone,
        WsError::Protocol(_) => failed(1002, "protocol error"),
        _ => Ending::GuestGone,
    }
}
