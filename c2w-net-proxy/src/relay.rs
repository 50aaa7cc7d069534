//! What goes through the Wisp relay when one is configured, decided here and nowhere below:
//! - TCP to every destination the stack does not serve itself (`Stack::ask_elsewhere`:
//!   any port of a fake IP, any address outside the guest network), spliced to a relay stream;
//!   a fake IP becomes the name it stands for, so the relay resolves it. The guest's SYN is
//!   answered once the relay stream is open: a destination `allow`/`deny` refuses, or met
//!   while the relay is down, gets RST to its SYN (a refused connection), and so does one the
//!   relay cannot reach when it confirms opens (Wisp v2); a relay that does not confirm opens
//!   at once, so the refusal resets the connection just after it opened. Wisp cannot pass a
//!   half-close on: once the guest has sent FIN, the answer is carried while it keeps coming
//!   ([`HALF_CLOSE_LINGER`]).
//! - UDP other than DHCP and DNS to the gateway (`Stack::bind_udp_elsewhere`): one relay UDP
//!   stream per (guest port, destination) flow, closed after [`UDP_IDLE`] without traffic. A
//!   flow the relay refuses or closes, or that `allow`/`deny` refuses, is answered with ICMP
//!   destination unreachable quoting the guest's datagram (`unreachable_code`).
//! - The proxy's CONNECT tunnels, end to end ([`RelayTunnels`]): the guest sees the origin's
//!   own certificate.
//!
//! Names in `relay.hosts` are rewritten before the relay sees them.

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::SocketAddrV4;
use std::rc::Rc;
use std::time::Duration;

use async_trait::async_trait;
use fetch_transport::relay::{Relay, RelayDatagrams, RelayError};
use fetch_transport::wisp::CloseReason;
use fetch_transport::DestinationFilter;
use futures::channel::mpsc;
use futures::future::{self, Either};
use futures::StreamExt;
use http_proxy::{splice, BoxedStream, RawTunnels, TunnelError, HALF_CLOSE_LINGER};
use net_stack::{ConnectionRequest, Datagram, Stack, TcpListener, UdpEndpoint, Unreachable};

use crate::options::RelayOptions;
use crate::runtime::Runtime;
use fetch_transport::Timer;

/// A UDP flow without a datagram either way for this long is closed.
pub const UDP_IDLE: Duration = Duration::from_secs(60);
/// UDP flows open at once; datagrams that would open more are dropped.
const MAX_UDP_FLOWS: usize = 256;
/// Datagrams from the guest waiting for their flow's relay stream to open.
const FLOW_QUEUE: usize = 32;

/// Why the relay's routes could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum RoutesError {
    /// The catch-all TCP listener is taken.
    #[error("cannot listen for relayed TCP: {0}")]
    Listen(#[from] net_stack::ListenError),
    /// The UDP endpoint is taken.
    #[error("cannot carry UDP: {0}")]
    Udp(#[from] net_stack::UdpBindError),
}

/// Why a destination the guest addressed is not handed to the relay.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
enum NotCarried {
    /// A fake IP our DNS never handed out, or recycled since.
    #[error("a fake IP that names nothing")]
    UnknownFakeIp,
    /// The `allow`/`deny` options refuse it (their reason).
    #[error("{0}")]
    Denied(String),
}

/// The relay, how destinations are named to it, and which are allowed (`allow`/`deny`).
#[derive(Clone)]
struct Route {
    stack: Stack,
    relay: Relay,
    options: Rc<RelayOptions>,
    destinations: Rc<DestinationFilter>,
}

impl Route {
    /// The host the relay should connect to for what the guest addressed: the name a fake IP
    /// stands for (or the IP itself), mapped through `relay.hosts`. `Err` with the reason
    /// for a fake IP that names nothing (never handed out, or recycled) and for a destination
    /// the `allow`/`deny` options refuse (checked on the name the guest asked for).
    fn host_for(&self, addr: &SocketAddrV4) -> Result<String, NotCarried> {
        let asked = match self.stack.fake_ip_name(*addr.ip()) {
            Some(name) => name,
            None if self.stack.is_fake_ip(*addr.ip()) => return Err(NotCarried::UnknownFakeIp),
            None => addr.ip().to_string(),
        };
        check(&self.destinations, &asked).map_err(NotCarried::Denied)?;
        Ok(self.options.target(&asked).to_string())
    }
}

/// Checks `host` (a name or an IP literal) against the `allow`/`deny` options.
fn check(destinations: &DestinationFilter, host: &str) -> Result<(), String> {
    let url = url::Url::parse(&format!("http://{host}/")).map_err(|e| format!("{host}: {e}"))?;
    destinations.check(&url)
}

/// Starts the relay's routes on `stack`: TCP to elsewhere always, UDP when `options.udp`
/// allows (default on).
pub fn start(
    stack: &Stack,
    relay: Relay,
    options: Rc<RelayOptions>,
    destinations: DestinationFilter,
    runtime: Rc<dyn Runtime>,
) -> Result<(), RoutesError> {
    let route = Route {
        stack: stack.clone(),
        relay,
        options,
        destinations: Rc::new(destinations),
    };
    let listener = stack.ask_elsewhere()?;
    runtime.spawn(Box::pin(accept_tcp(
        listener,
        route.clone(),
        runtime.clone(),
    )));
    if route.options.udp.unwrap_or(true) {
        let endpoint = Rc::new(stack.bind_udp_elsewhere()?);
        runtime.spawn(Box::pin(carry_udp(endpoint, route, runtime.clone())));
    }
    Ok(())
}

async fn accept_tcp(listener: TcpListener, route: Route, runtime: Rc<dyn Runtime>) {
    loop {
        let request = listener.request().await;
        runtime.spawn(Box::pin(carry_tcp(request, route.clone(), runtime.timer())));
    }
}

/// Carries one guest connection through the relay. The guest's SYN is answered only once the
/// relay stream is open; what cannot be opened is refused (RST to the SYN), as it would be
/// directly.
async fn carry_tcp(request: ConnectionRequest, route: Route, timer: Rc<dyn Timer>) {
    let dst = request.local_addr();
    let host = match route.host_for(&dst) {
        Ok(host) => host,
        Err(why) => {
            tracing::info!(%dst, %why, "relay: not carried; refused");
            request.refuse();
            return;
        }
    };
    let mut remote = match route.relay.connect_tcp(&host, dst.port()).await {
        Ok(remote) => remote,
        Err(err) => {
            tracing::info!(%dst, %host, error = %err, "relay: cannot open; refused");
            request.refuse();
            return;
        }
    };
    let Some(mut stream) = request.accept().await else {
        tracing::debug!(%dst, %host, "relay: the guest did not complete the handshake");
        return;
    };
    match splice(&mut stream, &mut remote, timer.as_ref(), HALF_CLOSE_LINGER).await {
        Ok((sent, received)) => {
            tracing::debug!(%dst, %host, sent, received, "relay: connection ended");
        }
        Err(err) => {
            tracing::debug!(%dst, %host, error = %err, "relay: connection failed; reset");
            stream.abort();
        }
    }
}

/// A flow's way in: datagrams from the guest for its relay stream.
type FlowQueue = mpsc::Sender<Vec<u8>>;
/// The open flows by (guest, destination as addressed).
type Flows = Rc<RefCell<HashMap<(SocketAddrV4, SocketAddrV4), FlowQueue>>>;

/// Hands every datagram from the guest to its flow, opening flows as needed.
async fn carry_udp(endpoint: Rc<UdpEndpoint>, route: Route, runtime: Rc<dyn Runtime>) {
    let flows: Flows = Rc::default();
    loop {
        let datagram = endpoint.recv().await;
        let key = (datagram.guest, datagram.remote);
        let mut map = flows.borrow_mut();
        if let Some(queue) = map.get_mut(&key) {
            if queue.try_send(datagram.payload).is_err() {
                tracing::debug!(guest = %key.0, remote = %key.1, "relay: UDP flow queue full; datagram dropped");
            }
            continue;
        }
        if map.len() >= MAX_UDP_FLOWS {
            tracing::debug!(guest = %key.0, remote = %key.1, "relay: too many UDP flows; datagram dropped");
            continue;
        }
        let (queue, datagrams) = mpsc::channel(FLOW_QUEUE);
        map.insert(key, queue);
        drop(map);
        runtime.spawn(Box::pin(udp_flow(
            datagram,
            datagrams,
            endpoint.clone(),
            route.clone(),
            flows.clone(),
            runtime.clone(),
        )));
    }
}

/// One UDP flow, opened by the guest's datagram `first`: opens its relay stream, then moves
/// datagrams both ways until idle. When the flow cannot be carried, or ends because the relay
/// closed it, the guest learns it from ICMP destination unreachable for its last datagram.
async fn udp_flow(
    first: Datagram,
    mut from_guest: mpsc::Receiver<Vec<u8>>,
    endpoint: Rc<UdpEndpoint>,
    route: Route,
    flows: Flows,
    runtime: Rc<dyn Runtime>,
) {
    let (guest, remote) = (first.guest, first.remote);
    let refusal = match route.host_for(&remote) {
        Ok(host) => match route.relay.open_udp(&host, remote.port()).await {
            Ok(flow) => {
                let mut last = first;
                relay_datagrams(&mut from_guest, &flow, &endpoint, &mut last, &runtime)
                    .await
                    .err()
                    .map(|err| (last, unreachable_code(&err), err.to_string()))
            }
            Err(err) => {
                tracing::info!(%guest, %remote, %host, error = %err, "relay: cannot open a UDP flow");
                Some((first, unreachable_code(&err), err.to_string()))
            }
        },
        Err(why) => {
            tracing::info!(%guest, %remote, %why, "relay: UDP not carried");
            let code = match why {
                NotCarried::UnknownFakeIp => Unreachable::Host,
                NotCarried::Denied(_) => Unreachable::Prohibited,
            };
            Some((first, Some(code), why.to_string()))
        }
    };
    flows.borrow_mut().remove(&(guest, remote));
    if let Some((datagram, Some(code), why)) = refusal {
        tracing::debug!(%guest, %remote, ?code, %why, "relay: UDP flow refused; ICMP unreachable");
        if let Err(err) = endpoint.unreachable(&datagram, code) {
            tracing::debug!(%guest, %remote, error = %err, "relay: ICMP unreachable not sent");
        }
    }
}

/// The ICMP destination unreachable a guest gets for a UDP flow that failed with `err`; none
/// for a flow the relay closed normally or a datagram it could not take.
fn unreachable_code(err: &RelayError) -> Option<Unreachable> {
    Some(match err {
        RelayError::Refused { reason, .. } => match reason {
            CloseReason::Voluntary => return None,
            CloseReason::ConnectionRefused => Unreachable::Port,
            CloseReason::HostBlocked | CloseReason::Throttled => Unreachable::Prohibited,
            _ => Unreachable::Host,
        },
        RelayError::Timeout { .. } => Unreachable::Host,
        RelayError::Unavailable { .. } | RelayError::Lost { .. } => Unreachable::Network,
        RelayError::Unsupported { .. } => Unreachable::Prohibited,
        RelayError::Send(_) => return None,
    })
}

/// Moves datagrams both ways until the flow is idle for [`UDP_IDLE`] (`Ok`) or ends (`Err`);
/// `last` is kept as the guest's most recent datagram, the one an ICMP error quotes.
async fn relay_datagrams(
    from_guest: &mut mpsc::Receiver<Vec<u8>>,
    flow: &RelayDatagrams,
    endpoint: &UdpEndpoint,
    last: &mut Datagram,
    runtime: &Rc<dyn Runtime>,
) -> Result<(), RelayError> {
    let (guest, remote) = (last.guest, last.remote);
    send_datagram(flow, last)?;
    let mut active = runtime.now();
    let mut idle = runtime.sleep(UDP_IDLE);
    loop {
        let outgoing = from_guest.next();
        let incoming = Box::pin(flow.recv());
        let wake = future::select(future::select(outgoing, incoming), &mut idle).await;
        match wake {
            Either::Left((Either::Left((Some(payload), _)), _)) => {
                active = runtime.now();
                last.payload = payload;
                send_datagram(flow, last)?;
            }
            Either::Left((Either::Left((None, _)), _)) => return Ok(()),
            Either::Left((Either::Right((Ok(datagram), _)), _)) => {
                active = runtime.now();
                if let Err(err) = endpoint.send(remote, guest, &datagram) {
                    tracing::debug!(%guest, %remote, error = %err, "relay: datagram not delivered");
                }
            }
            Either::Left((Either::Right((Err(err), _)), _)) => {
                tracing::debug!(%guest, %remote, error = %err, "relay: UDP flow ended");
                return Err(err);
            }
            Either::Right(((), _)) => {
                let quiet = Duration::from_micros((runtime.now() - active).total_micros());
                if quiet >= UDP_IDLE {
                    return Ok(());
                }
                idle = runtime.sleep(UDP_IDLE - quiet);
            }
        }
    }
}

/// Sends the guest's datagram on the flow. One the relay cannot take is dropped (as a
/// network drops what it cannot carry); an error only when the flow has ended.
fn send_datagram(flow: &RelayDatagrams, datagram: &Datagram) -> Result<(), RelayError> {
    match flow.send(&datagram.payload) {
        Ok(_) => Ok(()),
        Err(RelayError::Send(err)) => {
            tracing::debug!(guest = %datagram.guest, remote = %datagram.remote, error = %err, "relay: datagram dropped");
            Ok(())
        }
        Err(err) => Err(err),
    }
}

/// The proxy's CONNECT tunnels through the relay.
pub struct RelayTunnels {
    relay: Relay,
    options: Rc<RelayOptions>,
    destinations: DestinationFilter,
}

impl RelayTunnels {
    /// Tunnels through `relay`, names mapped by `options.hosts`, destinations checked
    /// against the `allow`/`deny` options.
    pub fn new(relay: Relay, options: Rc<RelayOptions>, destinations: DestinationFilter) -> Self {
        Self {
            relay,
            options,
            destinations,
        }
    }
}

#[async_trait(?Send)]
impl RawTunnels for RelayTunnels {
    async fn open(&self, host: &str, port: u16) -> Result<BoxedStream, TunnelError> {
        check(&self.destinations, host).map_err(TunnelError)?;
        let target = self.options.target(host);
        match self.relay.connect_tcp(target, port).await {
            Ok(stream) => Ok(Box::new(stream)),
            Err(err) => Err(TunnelError(err.to_string())),
        }
    }
}
