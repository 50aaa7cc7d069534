//! TCP listeners and streams over smoltcp sockets.
//!
//! smoltcp sockets accept one connection each, so the stack looks at every incoming SYN before
//! smoltcp does: when a listener matches and no socket has that 4-tuple, a fresh socket listening
//! on exactly (destination IP, port) is created and takes the SYN. A listener for one address
//! and port wins over a fake-IP listener for the port, which wins over the catch-all listener
//! for elsewhere (`Stack::listen_elsewhere`). Sockets then move from the listener's handshaking
//! set to its accept queue once established, become `TcpStream`s on `accept`, and are removed
//! from the `SocketSet` once their stream is dropped (or aborted) and they closed.
//!
//! A catch-all listener may instead ask first (`Stack::ask_elsewhere`): a SYN it matches is
//! held, not shown to smoltcp, and handed out as a `ConnectionRequest`. Retransmissions of a
//! held SYN are dropped. Accepting replays the held SYN through smoltcp (the SYN-ACK goes out
//! then); refusing replays it with no socket for it, so smoltcp answers RST.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

use smoltcp::iface::{SocketHandle, SocketSet};
use smoltcp::socket::tcp::{self, RecvError, SendError, State};
use smoltcp::time::{Duration, Instant};
use smoltcp::wire::{IpAddress, IpListenEndpoint};

use crate::clock::Clock;
use crate::config::TcpConfig;
use crate::shared::Shared;
use crate::stats::Stats;

/// Why `Stack::connect` opened no connection into the guest.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConnectError {
    /// Port 0 cannot be connected to.
    #[error("port 0 cannot be connected to")]
    PortZero,
    /// The address is not one the guest can have: outside the guest network, or ours.
    #[error("{0} is not an address of the guest network")]
    NotGuest(Ipv4Addr),
    /// No frame has come from this address yet, so its MAC is unknown (no lease, or the guest
    /// never used it).
    #[error("no guest has used {0} yet")]
    UnknownGuest(Ipv4Addr),
    /// `TcpConfig::max_connections` connections are open.
    #[error("the limit of {0} TCP connections is reached")]
    Limit(usize),
    /// Every local port towards this guest address and port is in use.
    #[error("no local port is free towards {0}")]
    NoPort(SocketAddrV4),
    /// The guest answered the SYN with RST: nothing listens there.
    #[error("{0} refused the connection (nothing listens there)")]
    Refused(SocketAddrV4),
    /// The guest did not answer within the timeout.
    #[error("{0} did not answer within {1}")]
    TimedOut(SocketAddrV4, Duration),
}

/// Where a listener accepts connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ListenAddr {
    /// One address of ours: the gateway or a virtual IP.
    Ip(Ipv4Addr),
    /// Any address of the DNS fake-IP pool (for transparent proxying of names).
    FakeIps,
}

/// Why `Stack::listen` or `Stack::listen_elsewhere` failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ListenError {
    /// The address is neither the gateway nor a virtual IP.
    #[error("{0} is not the gateway or a virtual IP")]
    NotLocal(Ipv4Addr),
    /// Port 0 cannot be listened on.
    #[error("port 0 cannot be listened on")]
    PortZero,
    /// Another live listener already has this address and port (or, for
    /// `Stack::listen_elsewhere`, another catch-all listener is alive).
    #[error("address and port already have a listener")]
    InUse,
}

/// What a listener takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scope {
    /// SYNs to one port of an address (or of every fake IP).
    Port(ListenAddr, u16),
    /// SYNs to elsewhere that no `Port` listener takes (`Stack::listen_elsewhere`).
    Elsewhere,
}

/// What the stack knows of a SYN's destination address (the table knows no addresses).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Destination {
    /// In the DNS fake-IP pool.
    pub(crate) fake_ip: bool,
    /// Elsewhere: a fake IP, or an address outside the guest network that is not ours and
    /// can be routed (see `Stack::listen_elsewhere`).
    pub(crate) elsewhere: bool,
}

/// What listeners and streams need of the stack's state: the connection table, the socket
/// set and the time of the latest poll. The stack's state implements it; nothing else of the
/// stack is known here.
pub(crate) trait TcpHost {
    /// The TCP part of the state.
    fn tcp(&mut self) -> TcpParts<'_>;
    /// Processes a held SYN's IPv4 packet again, as if it had just arrived, once its request
    /// was decided (the answer, SYN-ACK or RST, is queued towards the guest).
    fn replay_syn(&mut self, packet: &[u8]);
}

/// The TCP part of the stack's state, borrowed.
pub(crate) struct TcpParts<'a> {
    pub(crate) table: &'a mut TcpTable,
    pub(crate) sockets: &'a mut SocketSet<'static>,
    /// Time of the latest `Stack::poll` (used when a stream is dropped between polls).
    pub(crate) now: Instant,
}

/// How listeners and streams hold the stack's shared state.
type SharedTcp = Shared<dyn TcpHost>;

/// How long a handshake may take before its socket is given up.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);

/// How long an ACK of received data may wait for more data or an answer to ride along
/// (smoltcp's own default, kept in the caller's time whatever `TcpConfig::clock_scale` is).
const ACK_DELAY: Duration = Duration::from_millis(10);

#[derive(Debug)]
struct ListenerState {
    scope: Scope,
    /// Hands SYNs out as `ConnectionRequest`s before answering them.
    asks: bool,
    handshaking: Vec<SocketHandle>,
    ready: VecDeque<SocketHandle>,
    /// SYNs held for this listener, in arrival order, not yet handed out.
    requests: VecDeque<SynKey>,
    /// Established connections of accepted requests, waiting for their `Handshake`.
    answered: HashMap<SynKey, SocketHandle>,
    waker: Option<Waker>,
}

#[derive(Debug)]
struct Conn {
    local: SocketAddrV4,
    remote: SocketAddrV4,
    /// Set while handshaking or waiting in an accept queue.
    listener: Option<u64>,
    /// Set once no `TcpStream` (and no listener) refers to the socket any more.
    orphaned_at: Option<Instant>,
    /// Made for an accepted `ConnectionRequest`: once established it waits in its listener's
    /// `answered` map for the request's `Handshake`, not in the accept queue.
    requested: bool,
    /// The `Handshake` waiting for this connection to be established or to fail.
    handshake_waker: Option<Waker>,
    /// Opened by the stack towards the guest (`Stack::connect`) and not established yet.
    dialing: Option<Dialing>,
    /// Bytes of the socket's receive and transmit buffers.
    buffers: usize,
}

/// A connection the stack opens towards the guest, until its handshake ends.
#[derive(Debug)]
struct Dialing {
    /// How long the guest may take to answer.
    timeout: Duration,
    /// The guest answered the SYN with RST.
    refused: bool,
    waker: Option<Waker>,
}

/// A held SYN: (the guest's address, the address it dialled).
type SynKey = (SocketAddrV4, SocketAddrV4);

/// A SYN held for a `ConnectionRequest` until it is accepted or refused.
#[derive(Debug)]
struct HeldSyn {
    listener: u64,
    /// The SYN's IPv4 packet, replayed once decided.
    packet: Vec<u8>,
    decision: Option<bool>,
}

/// Listeners and connections of the stack.
#[derive(Debug)]
pub(crate) struct TcpTable {
    config: TcpConfig,
    listeners: HashMap<u64, ListenerState>,
    next_listener: u64,
    conns: HashMap<SocketHandle, Conn>,
    held: HashMap<SynKey, HeldSyn>,
    /// The next local port to try for connections towards the guest.
    next_port: u16,
}

/// Local ports of connections the stack opens towards the guest (IANA's dynamic range).
const DIAL_PORTS: std::ops::RangeInclusive<u16> = 49152..=65535;

/// What the stack decided for an incoming SYN (for tests and counters).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SynVerdict {
    /// A socket for this 4-tuple exists (a retransmitted SYN); smoltcp handles it.
    Existing,
    /// A fresh socket now listens for it.
    Created,
    /// Nobody listens: smoltcp answers RST.
    NoListener,
    /// A limit was reached: no socket, smoltcp answers RST.
    Limit,
    /// Held for a `ConnectionRequest` (or a retransmission of a held SYN): smoltcp does not
    /// see it now.
    Held,
}

impl TcpTable {
    pub(crate) fn new(config: TcpConfig) -> Self {
        TcpTable {
            config,
            listeners: HashMap::new(),
            next_listener: 1,
            conns: HashMap::new(),
            held: HashMap::new(),
            next_port: *DIAL_PORTS.start(),
        }
    }

    /// smoltcp's clock, for durations handed to its sockets.
    fn clock(&self) -> Clock {
        Clock::new(self.config.clock_scale)
    }

    /// Connections holding a socket.
    pub(crate) fn open(&self) -> usize {
        self.conns.len()
    }

    /// Registers a listener; the caller checked that `Ip` addresses are ours.
    pub(crate) fn listen(&mut self, addr: ListenAddr, port: u16) -> Result<u64, ListenError> {
        if port == 0 {
            return Err(ListenError::PortZero);
        }
        self.add_listener(Scope::Port(addr, port), false)
    }

    /// Registers the catch-all listener for elsewhere (at most one); `asks`: it hands SYNs out
    /// as requests before answering them.
    pub(crate) fn listen_elsewhere(&mut self, asks: bool) -> Result<u64, ListenError> {
        self.add_listener(Scope::Elsewhere, asks)
    }

    fn add_listener(&mut self, scope: Scope, asks: bool) -> Result<u64, ListenError> {
        if self.listeners.values().any(|l| l.scope == scope) {
            return Err(ListenError::InUse);
        }
        let id = self.next_listener;
        self.next_listener += 1;
        self.listeners.insert(
            id,
            ListenerState {
                scope,
                asks,
                handshaking: Vec::new(),
                ready: VecDeque::new(),
                requests: VecDeque::new(),
                answered: HashMap::new(),
                waker: None,
            },
        );
        Ok(id)
    }

    /// The listener a SYN to `dst` belongs to: one for its address and port, else the fake-IP
    /// listener for its port, else the catch-all for elsewhere.
    fn listener_for(&self, dst: SocketAddrV4, class: Destination) -> Option<u64> {
        let rank = |scope: Scope| match scope {
            Scope::Port(ListenAddr::Ip(ip), port) if ip == *dst.ip() && port == dst.port() => {
                Some(0)
            }
            Scope::Port(ListenAddr::FakeIps, port) if class.fake_ip && port == dst.port() => {
                Some(1)
            }
            Scope::Elsewhere if class.elsewhere => Some(2),
            _ => None,
        };
        self.listeners
            .iter()
            .filter_map(|(&id, l)| Some((rank(l.scope)?, id)))
            .min()
            .map(|(_, id)| id)
    }

    /// Inspects a SYN (without ACK) before smoltcp sees it: creates a socket for it when a
    /// listener matches, or holds it (`packet`, its IPv4 packet) for a listener that asks.
    pub(crate) fn on_syn(
        &mut self,
        sockets: &mut SocketSet<'static>,
        src: SocketAddrV4,
        dst: SocketAddrV4,
        class: Destination,
        packet: &[u8],
        stats: &mut Stats,
    ) -> SynVerdict {
        if self
            .conns
            .values()
            .any(|c| c.local == dst && c.remote == src)
        {
            return SynVerdict::Existing;
        }
        let key = (src, dst);
        let decided = match self.held.get(&key).map(|h| h.decision) {
            Some(None) => return SynVerdict::Held,
            Some(Some(accept)) => {
                self.held.remove(&key);
                if !accept {
                    stats.tcp_refused += 1;
                    return SynVerdict::NoListener;
                }
                true
            }
            None => false,
        };
        let matching = self
            .listener_for(dst, class)
            .and_then(|id| Some((id, self.listeners.get_mut(&id)?)));
        let Some((id, listener)) = matching else {
            stats.tcp_refused += 1;
            return SynVerdict::NoListener;
        };
        let waiting = listener.handshaking.len() + listener.ready.len() + listener.answered.len();
        let held = self.held.values().filter(|h| h.listener == id).count();
        if self.conns.len() >= self.config.max_connections
            || waiting + held >= self.config.listen_backlog + usize::from(decided)
        {
            stats.tcp_refused += 1;
            stats.tcp_refused_limit += 1;
            return SynVerdict::Limit;
        }
        if listener.asks && !decided {
            self.held.insert(
                key,
                HeldSyn {
                    listener: id,
                    packet: packet.to_vec(),
                    decision: None,
                },
            );
            listener.requests.push_back(key);
            if let Some(waker) = listener.waker.take() {
                waker.wake();
            }
            return SynVerdict::Held;
        }
        let in_use = self.conns.values().map(|c| c.buffers).sum();
        let (mut socket, buffers) = new_socket(&self.config, in_use);
        let clock = Clock::new(self.config.clock_scale);
        socket.set_timeout(Some(clock.duration_to_smoltcp(HANDSHAKE_TIMEOUT)));
        let endpoint = IpListenEndpoint {
            addr: Some(IpAddress::Ipv4(*dst.ip())),
            port: dst.port(),
        };
        if socket.listen(endpoint).is_err() {
            return SynVerdict::NoListener;
        }
        let handle = sockets.add(socket);
        listener.handshaking.push(handle);
        self.conns.insert(
            handle,
            Conn {
                local: dst,
                remote: src,
                listener: Some(id),
                orphaned_at: None,
                requested: decided,
                handshake_waker: None,
                dialing: None,
                buffers,
            },
        );
        SynVerdict::Created
    }

    /// After smoltcp processed input: moves established sockets to accept queues, forgets
    /// handshakes that failed, drains and times out orphaned connections.
    pub(crate) fn maintain(
        &mut self,
        sockets: &mut SocketSet<'static>,
        now: Instant,
        stats: &mut Stats,
    ) {
        let mut forget = Vec::new();
        let conns = &mut self.conns;
        for listener in self.listeners.values_mut() {
            listener.handshaking.retain(|&handle| {
                let socket = sockets.get_mut::<tcp::Socket>(handle);
                match socket.state() {
                    State::SynReceived => true,
                    // The SYN never reached it, or the guest reset the handshake.
                    State::Listen | State::Closed | State::TimeWait => {
                        if let Some(waker) = conns
                            .get_mut(&handle)
                            .and_then(|c| c.handshake_waker.take())
                        {
                            waker.wake();
                        }
                        forget.push(handle);
                        false
                    }
                    _ => {
                        socket.set_timeout(None);
                        // smoltcp hands a SYN to the first free socket listening on its endpoint,
                        // which may not be the one created for it: take the tuple from the socket.
                        if let (Some(conn), Some(local), Some(remote)) = (
                            conns.get_mut(&handle),
                            socket.local_endpoint(),
                            socket.remote_endpoint(),
                        ) {
                            // IPv4 is the only protocol compiled into smoltcp here.
                            let (IpAddress::Ipv4(l), IpAddress::Ipv4(r)) =
                                (local.addr, remote.addr);
                            conn.local = SocketAddrV4::new(l, local.port);
                            conn.remote = SocketAddrV4::new(r, remote.port);
                        }
                        stats.tcp_accepted += 1;
                        match conns.get_mut(&handle) {
                            Some(conn) if conn.requested => {
                                listener.answered.insert((conn.remote, conn.local), handle);
                                if let Some(waker) = conn.handshake_waker.take() {
                                    waker.wake();
                                }
                            }
                            _ => {
                                listener.ready.push_back(handle);
                                if let Some(waker) = listener.waker.take() {
                                    waker.wake();
                                }
                            }
                        }
                        false
                    }
                }
            });
        }
        for handle in forget {
            self.conns.remove(&handle);
            sockets.remove(handle);
        }
        for (&handle, conn) in self.conns.iter_mut() {
            let socket = sockets.get_mut::<tcp::Socket>(handle);
            // A connection the stack is opening: its `Connecting` learns how the handshake
            // ended (dialling connections are never orphaned).
            if let Some(dialing) = conn.dialing.as_mut() {
                if !matches!(socket.state(), State::SynSent | State::SynReceived) {
                    if let Some(waker) = dialing.waker.take() {
                        waker.wake();
                    }
                }
                continue;
            }
            let Some(since) = conn.orphaned_at else {
                continue;
            };
            // Nobody will read: discard data so the guest is not stuck on a zero window.
            while socket.can_recv() {
                if socket.recv(|data| (data.len(), ())).is_err() {
                    break;
                }
            }
            if now >= since + self.config.orphan_timeout && socket.is_open() {
                socket.abort();
            }
        }
    }

    /// After smoltcp transmitted: removes sockets of orphaned connections that are closed.
    /// An aborted socket keeps its remote endpoint until its RST went out (smoltcp forgets it
    /// then), so a full outbound queue delays the removal instead of losing the RST.
    pub(crate) fn reclaim(&mut self, sockets: &mut SocketSet<'static>) {
        self.conns.retain(|&handle, conn| {
            if conn.orphaned_at.is_none() {
                return true;
            }
            let socket = sockets.get::<tcp::Socket>(handle);
            let rst_pending = socket.state() == State::Closed && socket.remote_endpoint().is_some();
            if matches!(socket.state(), State::Closed | State::TimeWait) && !rst_pending {
                sockets.remove(handle);
                false
            } else {
                true
            }
        });
    }

    /// The earliest orphan deadline, for `poll_delay`.
    pub(crate) fn poll_at(&self) -> Option<Instant> {
        self.conns
            .values()
            .filter_map(|c| c.orphaned_at)
            .map(|since| since + self.config.orphan_timeout)
            .min()
    }

    /// Next established connection of a listener, or registers the waker.
    fn poll_accept(
        &mut self,
        id: u64,
        cx: &mut Context<'_>,
    ) -> Poll<(SocketHandle, SocketAddrV4, SocketAddrV4)> {
        let Some(listener) = self.listeners.get_mut(&id) else {
            return Poll::Pending;
        };
        match listener.ready.pop_front() {
            Some(handle) => {
                let conn = self
                    .conns
                    .get_mut(&handle)
                    .expect("queued socket has a connection");
                conn.listener = None;
                Poll::Ready((handle, conn.local, conn.remote))
            }
            None => {
                listener.waker = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }

    /// Checks the limits and picks a free local port for a connection from `local_ip` to
    /// `remote`.
    pub(crate) fn dial_port(
        &mut self,
        local_ip: Ipv4Addr,
        remote: SocketAddrV4,
    ) -> Result<SocketAddrV4, ConnectError> {
        if self.conns.len() >= self.config.max_connections {
            return Err(ConnectError::Limit(self.config.max_connections));
        }
        let span = usize::from(DIAL_PORTS.end() - DIAL_PORTS.start()) + 1;
        for _ in 0..span {
            let port = self.next_port;
            self.next_port = if port == *DIAL_PORTS.end() {
                *DIAL_PORTS.start()
            } else {
                port + 1
            };
            let local = SocketAddrV4::new(local_ip, port);
            if !self
                .conns
                .values()
                .any(|c| c.local == local && c.remote == remote)
            {
                return Ok(local);
            }
        }
        Err(ConnectError::NoPort(remote))
    }

    /// A socket for a new connection, sized by the buffer budget, and the bytes it takes.
    pub(crate) fn new_socket(&self) -> (tcp::Socket<'static>, usize) {
        new_socket(&self.config, self.buffers_in_use())
    }

    /// Buffer bytes the connections hold now.
    pub(crate) fn buffers_in_use(&self) -> usize {
        self.conns.values().map(|c| c.buffers).sum()
    }

    /// A socket created by `Stack::connect` for `local` → `remote` (its SYN queued), whose
    /// buffers take `buffers` bytes.
    pub(crate) fn add_dialing(
        &mut self,
        handle: SocketHandle,
        local: SocketAddrV4,
        remote: SocketAddrV4,
        timeout: Duration,
        buffers: usize,
    ) {
        self.conns.insert(
            handle,
            Conn {
                local,
                remote,
                listener: None,
                orphaned_at: None,
                requested: false,
                handshake_waker: None,
                dialing: Some(Dialing {
                    timeout,
                    refused: false,
                    waker: None,
                }),
                buffers,
            },
        );
    }

    /// A RST from the guest: if it answers a connection the stack is opening, the guest
    /// refused it (smoltcp only closes the socket, which a timeout does too).
    pub(crate) fn on_rst(&mut self, src: SocketAddrV4, dst: SocketAddrV4) {
        if let Some(dialing) = self
            .conns
            .values_mut()
            .find(|c| c.local == dst && c.remote == src)
            .and_then(|c| c.dialing.as_mut())
        {
            dialing.refused = true;
        }
    }

    /// A connection the stack opens: `Ready(Ok)` once established (handed to its stream),
    /// an error once it failed (its socket is freed), else registers the waker.
    fn poll_dial(
        &mut self,
        handle: SocketHandle,
        sockets: &mut SocketSet<'static>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<(), ConnectError>> {
        let Some(conn) = self.conns.get_mut(&handle) else {
            return Poll::Ready(Err(ConnectError::Limit(self.config.max_connections)));
        };
        let Some(dialing) = conn.dialing.as_mut() else {
            return Poll::Ready(Ok(()));
        };
        let socket = sockets.get_mut::<tcp::Socket>(handle);
        match socket.state() {
            State::SynSent | State::SynReceived => {
                dialing.waker = Some(cx.waker().clone());
                Poll::Pending
            }
            State::Closed | State::TimeWait | State::Listen => {
                let error = if dialing.refused {
                    ConnectError::Refused(conn.remote)
                } else {
                    ConnectError::TimedOut(conn.remote, dialing.timeout)
                };
                self.conns.remove(&handle);
                sockets.remove(handle);
                Poll::Ready(Err(error))
            }
            _ => {
                socket.set_timeout(None);
                conn.dialing = None;
                Poll::Ready(Ok(()))
            }
        }
    }

    /// Next held SYN of a listener that asks, or registers the waker.
    fn poll_request(&mut self, id: u64, cx: &mut Context<'_>) -> Poll<SynKey> {
        let Some(listener) = self.listeners.get_mut(&id) else {
            return Poll::Pending;
        };
        while let Some(key) = listener.requests.pop_front() {
            if self.held.contains_key(&key) {
                return Poll::Ready(key);
            }
        }
        listener.waker = Some(cx.waker().clone());
        Poll::Pending
    }

    /// Decides a held SYN; returns its packet to replay (`None` if it is no longer held: the
    /// listener went away).
    fn decide(&mut self, key: SynKey, accept: bool) -> Option<Vec<u8>> {
        let held = self.held.get_mut(&key)?;
        held.decision = Some(accept);
        Some(held.packet.clone())
    }

    /// The connection of an accepted request once established: `Ready(Some)` with its handle
    /// (handed over: no longer the listener's), `Ready(None)` if the handshake failed or was
    /// never started, else registers the waker.
    fn poll_handshake(&mut self, key: SynKey, cx: &mut Context<'_>) -> Poll<Option<SocketHandle>> {
        let answered = self
            .listeners
            .values_mut()
            .find_map(|l| l.answered.remove(&key));
        if let Some(handle) = answered {
            if let Some(conn) = self.conns.get_mut(&handle) {
                conn.listener = None;
                conn.requested = false;
            }
            return Poll::Ready(Some(handle));
        }
        let (remote, local) = key;
        match self
            .conns
            .values_mut()
            .find(|c| c.requested && c.local == local && c.remote == remote)
        {
            Some(conn) => {
                conn.handshake_waker = Some(cx.waker().clone());
                Poll::Pending
            }
            None => Poll::Ready(None),
        }
    }

    /// Drops a listener: its handshakes and unaccepted connections are reset, its held SYNs
    /// forgotten (their retransmissions get RST).
    fn close_listener(&mut self, id: u64, sockets: &mut SocketSet<'static>, now: Instant) {
        let Some(listener) = self.listeners.remove(&id) else {
            return;
        };
        self.held.retain(|_, held| held.listener != id);
        let answered = listener.answered.into_values();
        for handle in listener
            .handshaking
            .into_iter()
            .chain(listener.ready)
            .chain(answered)
        {
            sockets.get_mut::<tcp::Socket>(handle).abort();
            if let Some(conn) = self.conns.get_mut(&handle) {
                conn.listener = None;
                conn.orphaned_at = Some(now);
                conn.requested = false;
                if let Some(waker) = conn.handshake_waker.take() {
                    waker.wake();
                }
            }
        }
    }

    /// A stream was dropped: close the socket (FIN after queued data) and reclaim it later.
    fn orphan(&mut self, handle: SocketHandle, sockets: &mut SocketSet<'static>, now: Instant) {
        let socket = sockets.get_mut::<tcp::Socket>(handle);
        socket.close();
        let timeout = self.clock().duration_to_smoltcp(self.config.orphan_timeout);
        socket.set_timeout(Some(timeout));
        if let Some(conn) = self.conns.get_mut(&handle) {
            conn.orphaned_at = Some(now);
        }
    }
}

/// Accepts TCP connections to one (address, port), or to elsewhere (`Stack::listen_elsewhere`);
/// dropping it resets connections not yet accepted and makes new SYNs get RST.
pub struct TcpListener {
    shared: Rc<SharedTcp>,
    id: u64,
    port: u16,
}

impl TcpListener {
    pub(crate) fn new(shared: Rc<SharedTcp>, id: u64, port: u16) -> Self {
        TcpListener { shared, id, port }
    }

    /// The next established connection, or Pending (the waker is woken by `Stack::poll`).
    pub fn poll_accept(&self, cx: &mut Context<'_>) -> Poll<TcpStream> {
        let mut inner = self.shared.inner.borrow_mut();
        inner
            .tcp()
            .table
            .poll_accept(self.id, cx)
            .map(|(handle, local, peer)| TcpStream::new(self.shared.clone(), handle, local, peer))
    }

    /// Waits for the next established connection.
    pub async fn accept(&self) -> TcpStream {
        futures::future::poll_fn(|cx| self.poll_accept(cx)).await
    }

    /// The next connection the guest asks for, for a listener made by `Stack::ask_elsewhere`
    /// (never Ready for others); the guest's SYN is held until the request is decided.
    pub fn poll_request(&self, cx: &mut Context<'_>) -> Poll<ConnectionRequest> {
        let mut inner = self.shared.inner.borrow_mut();
        inner
            .tcp()
            .table
            .poll_request(self.id, cx)
            .map(|(remote, local)| ConnectionRequest {
                shared: self.shared.clone(),
                local,
                peer: remote,
                decided: false,
            })
    }

    /// Waits for the next connection request (see [`poll_request`](Self::poll_request)).
    pub async fn request(&self) -> ConnectionRequest {
        futures::future::poll_fn(|cx| self.poll_request(cx)).await
    }

    /// The port this listener accepts on; 0 for the catch-all listener, which takes every port
    /// (each stream's `local_addr` says which one the guest dialled).
    pub fn local_port(&self) -> u16 {
        self.port
    }
}

impl std::fmt::Debug for TcpListener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TcpListener")
            .field("port", &self.port)
            .finish()
    }
}

impl Drop for TcpListener {
    fn drop(&mut self) {
        if let Ok(mut inner) = self.shared.inner.try_borrow_mut() {
            let TcpParts {
                table,
                sockets,
                now,
            } = inner.tcp();
            table.close_listener(self.id, sockets, now);
            drop(inner);
            self.shared.request_poll();
        }
    }
}

/// A connection the stack is opening towards the guest (`Stack::connect`): resolves to the
/// stream once the guest answered with SYN-ACK, or to why not (RST: `Refused`; silence:
/// `TimedOut`). Dropping it before then resets the attempt.
pub struct Connecting {
    shared: Rc<SharedTcp>,
    handle: Option<SocketHandle>,
    local: SocketAddrV4,
    peer: SocketAddrV4,
}

impl Connecting {
    pub(crate) fn new(
        shared: Rc<SharedTcp>,
        handle: SocketHandle,
        local: SocketAddrV4,
        peer: SocketAddrV4,
    ) -> Self {
        Self {
            shared,
            handle: Some(handle),
            local,
            peer,
        }
    }
}

impl std::future::Future for Connecting {
    type Output = Result<TcpStream, ConnectError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let Some(handle) = self.handle else {
            return Poll::Pending;
        };
        let result = {
            let mut inner = self.shared.inner.borrow_mut();
            let TcpParts { table, sockets, .. } = inner.tcp();
            std::task::ready!(table.poll_dial(handle, sockets, cx))
        };
        self.handle = None;
        Poll::Ready(
            result.map(|()| TcpStream::new(self.shared.clone(), handle, self.local, self.peer)),
        )
    }
}

impl Drop for Connecting {
    fn drop(&mut self) {
        let Some(handle) = self.handle else {
            return;
        };
        if let Ok(mut inner) = self.shared.inner.try_borrow_mut() {
            let TcpParts {
                table,
                sockets,
                now,
            } = inner.tcp();
            sockets.get_mut::<tcp::Socket>(handle).abort();
            if let Some(conn) = table.conns.get_mut(&handle) {
                conn.dialing = None;
                conn.orphaned_at = Some(now);
            }
            drop(inner);
            self.shared.request_poll();
        }
    }
}

impl std::fmt::Debug for Connecting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connecting")
            .field("local", &self.local)
            .field("peer", &self.peer)
            .finish_non_exhaustive()
    }
}

/// A connection the guest asked for (its SYN, held) that is not answered yet: from a listener
/// made by `Stack::ask_elsewhere`. Accept it once the destination is known to be reachable,
/// refuse it otherwise: the guest then sees a refused connection (RST to its SYN), not one
/// that opened and reset. Dropping it undecided refuses it.
pub struct ConnectionRequest {
    shared: Rc<SharedTcp>,
    local: SocketAddrV4,
    peer: SocketAddrV4,
    decided: bool,
}

impl ConnectionRequest {
    /// The address and port the guest dialled.
    pub fn local_addr(&self) -> SocketAddrV4 {
        self.local
    }

    /// The guest's address and port.
    pub fn peer_addr(&self) -> SocketAddrV4 {
        self.peer
    }

    /// Answers the SYN (SYN-ACK) and waits for the handshake: the stream once the guest
    /// completed it, `None` if it did not (reset, timed out, or the listener was dropped).
    pub async fn accept(mut self) -> Option<TcpStream> {
        self.decide(true);
        let key = (self.peer, self.local);
        let handle = futures::future::poll_fn(|cx| {
            self.shared
                .inner
                .borrow_mut()
                .tcp()
                .table
                .poll_handshake(key, cx)
        })
        .await?;
        Some(TcpStream::new(
            self.shared.clone(),
            handle,
            self.local,
            self.peer,
        ))
    }

    /// Refuses the connection: the guest's SYN is answered with RST.
    pub fn refuse(mut self) {
        self.decide(false);
    }

    fn decide(&mut self, accept: bool) {
        if std::mem::replace(&mut self.decided, true) {
            return;
        }
        let Ok(mut inner) = self.shared.inner.try_borrow_mut() else {
            return;
        };
        if let Some(packet) = inner.tcp().table.decide((self.peer, self.local), accept) {
            inner.replay_syn(&packet);
        }
        drop(inner);
        self.shared.request_poll();
    }
}

impl Drop for ConnectionRequest {
    fn drop(&mut self) {
        self.decide(false);
    }
}

impl std::fmt::Debug for ConnectionRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectionRequest")
            .field("local", &self.local)
            .field("peer", &self.peer)
            .finish_non_exhaustive()
    }
}

/// A smoltcp socket for an accepted or a dialled connection, with buffers sized by
/// [`buffer_sizes`] while the other connections hold `in_use` buffer bytes; also returns the
/// bytes its buffers take.
fn new_socket(config: &TcpConfig, in_use: usize) -> (tcp::Socket<'static>, usize) {
    let (rx, tx) = buffer_sizes(config, in_use);
    let rx = safe_rx_capacity(rx);
    let mut socket = tcp::Socket::new(
        tcp::SocketBuffer::new(vec![0u8; rx]),
        tcp::SocketBuffer::new(vec![0u8; tx]),
    );
    // Small writes of a proxy (headers, TLS records) should leave at once.
    socket.set_nagle_enabled(false);
    // smoltcp counts this in its own, scaled time.
    socket.set_ack_delay(Some(
        Clock::new(config.clock_scale).duration_to_smoltcp(ACK_DELAY),
    ));
    (socket, rx + tx)
}

/// Receive and transmit buffer sizes for a new connection while the others hold `in_use`
/// bytes: the configured ones while they fit in an eighth of what `buffer_budget` has left,
/// else scaled down to that eighth, never below `min_buffer` (nor above the configured size).
pub(crate) fn buffer_sizes(config: &TcpConfig, in_use: usize) -> (usize, usize) {
    let (rx, tx) = (config.rx_buffer, config.tx_buffer);
    let Some(budget) = config.buffer_budget else {
        return (rx, tx);
    };
    let share = budget.saturating_sub(in_use) / 8;
    let full = rx + tx;
    if full <= share {
        return (rx, tx);
    }
    let scaled = |size: usize| {
        let part = (size as u128 * share as u128 / full as u128) as usize;
        part.max(config.min_buffer).min(size)
    };
    (scaled(rx), scaled(tx))
}

/// The receive buffer size to give smoltcp for a requested `size`: the nearest one whose
/// announced window cannot outgrow it.
///
/// smoltcp 0.14 derives its window shift from the buffer's bit length
/// (`bits(size) - 16`) and announces `min(size, 65,535)` unscaled in its SYN-ACK, but then
/// judges the guest's segments against that figure *shifted*: for most sizes above 64 KiB
/// (every power of two among them) the window it accepts data into reaches past the end of
/// the buffer. A guest sending there trips a debug assertion, and in release builds leaves
/// the reassembler counting bytes that were never stored, which later panics (found by the
/// `frames` fuzz target). Sizes of the form 65,535 × 2^k are safe, as is anything up to
/// 65,535, so the request is rounded to the nearest such size (256 KiB becomes 262,140).
pub(crate) fn safe_rx_capacity(size: usize) -> usize {
    const MAX_UNSCALED: usize = 0xffff;
    if size <= MAX_UNSCALED {
        return size;
    }
    let shift = (usize::BITS - size.leading_zeros()) as usize - 16;
    let announced = MAX_UNSCALED << shift;
    if size >= announced {
        return size;
    }
    let below = MAX_UNSCALED << (shift - 1);
    if announced - size < size - below {
        announced
    } else {
        below
    }
}

/// One accepted TCP connection as an async byte stream with smoltcp's buffers as the only
/// buffering: a slow reader shrinks the advertised window, writes wait for transmit space.
pub struct TcpStream {
    shared: Rc<SharedTcp>,
    handle: SocketHandle,
    local: SocketAddrV4,
    peer: SocketAddrV4,
    write_closed: bool,
}

impl TcpStream {
    fn new(
        shared: Rc<SharedTcp>,
        handle: SocketHandle,
        local: SocketAddrV4,
        peer: SocketAddrV4,
    ) -> Self {
        TcpStream {
            shared,
            handle,
            local,
            peer,
            write_closed: false,
        }
    }

    /// The address and port the guest connected to: a virtual IP, the gateway, a fake IP
    /// (`Stack::fake_ip_name` tells its name) or, through the catch-all listener, any address
    /// elsewhere.
    pub fn local_addr(&self) -> SocketAddrV4 {
        self.local
    }

    /// Ends the connection with a RST instead of a FIN, discarding data not yet sent or read:
    /// for when what the guest connected to cannot be reached after all (the handshake with
    /// the guest completed before anyone tried). The RST goes out with the next `Stack::poll`
    /// (once the outbound queue has room) and the socket is freed after it.
    pub fn abort(self) {
        self.with_socket(|socket| socket.abort());
        // Dropping `self` orphans the closed socket, which `Stack::poll` then reclaims.
    }

    /// The guest's address and port.
    pub fn peer_addr(&self) -> SocketAddrV4 {
        self.peer
    }

    fn with_socket<R>(&self, f: impl FnOnce(&mut tcp::Socket<'static>) -> R) -> R {
        let mut inner = self.shared.inner.borrow_mut();
        f(inner.tcp().sockets.get_mut::<tcp::Socket>(self.handle))
    }
}

impl std::fmt::Debug for TcpStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TcpStream")
            .field("local", &self.local)
            .field("peer", &self.peer)
            .finish()
    }
}

fn reset() -> io::Error {
    io::Error::new(
        io::ErrorKind::ConnectionReset,
        "connection reset by the guest",
    )
}

impl futures::io::AsyncRead for TcpStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let result = self.with_socket(|socket| match socket.recv_slice(buf) {
            Ok(0) => {
                socket.register_recv_waker(cx.waker());
                Poll::Pending
            }
            Ok(n) => Poll::Ready(Ok(n)),
            Err(RecvError::Finished) => Poll::Ready(Ok(0)),
            Err(RecvError::InvalidState) => Poll::Ready(Err(reset())),
        });
        if let Poll::Ready(Ok(n)) = result {
            if n > 0 {
                // The window opened: smoltcp may owe the guest a window update.
                self.shared.request_poll();
            }
        }
        result
    }
}

impl futures::io::AsyncWrite for TcpStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let write_closed = self.write_closed;
        let result = self.with_socket(|socket| match socket.send_slice(buf) {
            Ok(0) => {
                socket.register_send_waker(cx.waker());
                Poll::Pending
            }
            Ok(n) => Poll::Ready(Ok(n)),
            Err(SendError::InvalidState) if write_closed => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "write after close",
            ))),
            Err(SendError::InvalidState) => Poll::Ready(Err(reset())),
        });
        if let Poll::Ready(Ok(_)) = result {
            self.shared.request_poll();
        }
        result
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // Written data is in smoltcp's transmit buffer; the next `Stack::poll` sends it.
        Poll::Ready(Ok(()))
    }

    fn poll_close(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if !self.write_closed {
            self.write_closed = true;
            self.with_socket(|socket| socket.close());
            self.shared.request_poll();
        }
        Poll::Ready(Ok(()))
    }
}

impl Drop for TcpStream {
    fn drop(&mut self) {
        if let Ok(mut inner) = self.shared.inner.try_borrow_mut() {
            let TcpParts {
                table,
                sockets,
                now,
            } = inner.tcp();
            table.orphan(self.handle, sockets, now);
            drop(inner);
            self.shared.request_poll();
        }
    }
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::{buffer_sizes, safe_rx_capacity};
    use crate::config::TcpConfig;

    /// The window smoltcp 0.14 accepts data into right after its SYN-ACK, for a buffer of
    /// `capacity` bytes: the unscaled SYN-ACK window shifted by the shift it derives.
    fn first_window(capacity: usize) -> usize {
        let bits = (usize::BITS - capacity.leading_zeros()) as usize;
        capacity.min(0xffff) << bits.saturating_sub(16)
    }

    #[test]
    fn the_first_window_never_outgrows_the_buffer() {
        let mut sizes: Vec<usize> = (0..=26).map(|k| 1usize << k).collect();
        sizes.extend([
            1500,
            65_535,
            65_536,
            98_303,
            98_304,
            100_000,
            16 * 65_480,
            3 << 20,
        ]);
        sizes.extend((1..2000).map(|i| i * 997));
        for size in sizes {
            let capacity = safe_rx_capacity(size);
            assert!(
                first_window(capacity) <= capacity,
                "{size} -> {capacity}: window {}",
                first_window(capacity)
            );
            assert!(
                capacity * 2 >= size && capacity <= size * 2,
                "{size} -> {capacity}"
            );
        }
    }

    #[test]
    fn sizes_round_to_the_nearest_safe_one() {
        assert_eq!(safe_rx_capacity(16 * 1024), 16 * 1024);
        assert_eq!(safe_rx_capacity(65_535), 65_535);
        assert_eq!(safe_rx_capacity(65_536), 65_535);
        assert_eq!(safe_rx_capacity(256 * 1024), 262_140);
    }

    #[test]
    fn buffer_sizes_share_the_budget_and_keep_the_floor() {
        let mut config = TcpConfig::default();
        assert_eq!(
            buffer_sizes(&config, usize::MAX),
            (256 << 10, 256 << 10),
            "no budget"
        );
        config.buffer_budget = Some(8 << 20);
        // An eighth of 8 MiB is 1 MiB: the full 512 KiB fits.
        assert_eq!(buffer_sizes(&config, 0), (256 << 10, 256 << 10));
        assert_eq!(buffer_sizes(&config, 4 << 20), (256 << 10, 256 << 10));
        // 2 MiB left: 256 KiB for both directions.
        assert_eq!(buffer_sizes(&config, 6 << 20), (128 << 10, 128 << 10));
        // Nothing left, or more in use than the budget: the floor.
        assert_eq!(buffer_sizes(&config, 8 << 20), (23_360, 23_360));
        assert_eq!(buffer_sizes(&config, 64 << 20), (23_360, 23_360));
        // Never above the configured size, even when that is below the floor.
        config.tx_buffer = 4096;
        assert_eq!(buffer_sizes(&config, 8 << 20).1, 4096);
        assert_eq!(safe_rx_capacity(262_140), 262_140);
        assert_eq!(safe_rx_capacity(100_000), 131_070);
        // The MTU-derived floor (16 segments of a 65,520-byte MTU) grows by 880 bytes.
        assert_eq!(safe_rx_capacity(16 * 65_480), 1_048_560);
    }
}
