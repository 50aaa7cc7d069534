//! The stack: frames in, frames out. Ethernet, ARP, IPv4, ICMP and UDP (DHCP, DNS) are handled
//! here directly; TCP segments go through smoltcp (`Medium::Ip`) for the connection machinery.

use std::collections::{HashMap, VecDeque};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::rc::Rc;
use std::task::{Context, Poll};

use smoltcp::iface::{self, Interface, SocketSet};
use smoltcp::time::{Duration, Instant};
use smoltcp::wire::{
    DhcpPacket, DhcpRepr, EthernetAddress, EthernetFrame, EthernetProtocol, HardwareAddress,
    Icmpv4DstUnreachable, Icmpv4Repr, IpAddress, IpCidr, IpProtocol, Ipv4Packet, Ipv4Repr,
    TcpPacket, UdpPacket, DHCP_SERVER_PORT, ETHERNET_HEADER_LEN, IPV4_HEADER_LEN,
};

use crate::arp::{self, ArpAction};
use crate::clock::Clock;
use crate::config::{Config, ConfigError};
use crate::device::IpDevice;
use crate::dhcp::{DhcpOutcome, DhcpServer, Lease};
use crate::dns::DnsServer;
use crate::icmp::{self, IcmpAction};
use crate::observer::{Direction, FrameObserver};
use crate::shared::Shared;
use crate::stats::{Drop, Stats};
use crate::tcp::{
    ConnectError, Connecting, Destination, ListenAddr, ListenError, SynVerdict, TcpHost,
    TcpListener, TcpParts, TcpTable,
};
use crate::udp::{
    Datagram, UdpBindError, UdpEndpoint, UdpHost, UdpQueue, UdpSendError, Unreachable,
};
use crate::wire::emit;

/// Most IP → MAC entries remembered (guests rarely use more than one address).
const MAX_NEIGHBORS: usize = 1024;
const DNS_PORT: u16 = 53;
/// Bytes of the offending datagram quoted in an ICMP error (keeps the error within 576 bytes).
const ICMP_QUOTE_MAX: usize = 576 - 20 - 8 - 20;
/// IPv4 and UDP headers: what a UDP payload leaves of the MTU.
const UDP_OVERHEAD: usize = 20 + 8;

/// Everything mutable of the stack.
struct Inner {
    config: Config,
    mac: EthernetAddress,
    iface: Interface,
    /// smoltcp's clock (`TcpConfig::clock_scale`): every time and duration between the
    /// stack and smoltcp goes through it.
    clock: Clock,
    device: IpDevice,
    sockets: SocketSet<'static>,
    tcp: TcpTable,
    /// Datagrams to elsewhere waiting for the `UdpEndpoint`.
    udp: UdpQueue,
    inbound: VecDeque<Vec<u8>>,
    outbound: VecDeque<Vec<u8>>,
    neighbors: HashMap<Ipv4Addr, EthernetAddress>,
    dhcp: DhcpServer,
    dns: DnsServer,
    stats: Stats,
    observer: Option<Box<dyn FrameObserver>>,
    /// Time of the latest `poll` (used when a stream is dropped between polls).
    now: Instant,
}

/// The virtual network: a cheap clonable handle (single-threaded, `!Send`).
#[derive(Clone)]
pub struct Stack {
    shared: Rc<Shared<Inner>>,
}

impl std::fmt::Debug for Stack {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stack").finish_non_exhaustive()
    }
}

impl Stack {
    /// A stack with `config` (checked with `Config::validate`).
    pub fn new(config: Config) -> Result<Stack, ConfigError> {
        config.validate()?;
        let mut device = IpDevice::new(config.mtu);
        let mut iface_config = iface::Config::new(HardwareAddress::Ip);
        iface_config.random_seed = config.random_seed;
        let mut iface = Interface::new(iface_config, &mut device, Instant::ZERO);
        iface.update_ip_addrs(|addrs| {
            let _ = addrs.push(IpCidr::new(
                IpAddress::Ipv4(config.gateway_ip),
                config.prefix_len,
            ));
        });
        // Accept TCP for every destination: virtual IPs and fake IPs are served by sockets
        // bound to them, everything else gets smoltcp's RST.
        iface.set_any_ip(true);
        let _ = iface.routes_mut().add_default_ipv4_route(config.gateway_ip);
        let inner = Inner {
            mac: EthernetAddress(config.gateway_mac),
            iface,
            clock: Clock::new(config.tcp.clock_scale),
            device,
            sockets: SocketSet::new(Vec::new()),
            tcp: TcpTable::new(config.tcp.clone()),
            udp: UdpQueue::new(config.udp.max_queued_datagrams),
            inbound: VecDeque::new(),
            outbound: VecDeque::new(),
            neighbors: HashMap::new(),
            dhcp: DhcpServer::new(&config),
            dns: DnsServer::new(&config.dns),
            stats: Stats::default(),
            observer: None,
            now: Instant::ZERO,
            config,
        };
        Ok(Stack {
            shared: Rc::new(Shared::new(inner)),
        })
    }

    /// Queues one Ethernet frame from the guest; `poll` processes it.
    pub fn push_frame(&self, frame: &[u8]) {
        let mut inner = self.shared.inner.borrow_mut();
        inner.stats.frames_in += 1;
        inner.stats.bytes_in += frame.len() as u64;
        if inner.inbound.len() >= inner.config.max_queued_frames {
            inner.stats.drop(Drop::QueueFull);
            return;
        }
        inner.inbound.push_back(frame.to_vec());
    }

    /// Processes queued frames, timers and socket I/O at time `now`, producing frames for `pop_frame`.
    pub fn poll(&self, now: Instant) {
        self.shared.inner.borrow_mut().poll(now);
    }

    /// The next frame towards the guest.
    ///
    /// Popping from a full outbound queue requests a poll (see `poll_wake`): TCP output that
    /// waited for room can go out.
    pub fn pop_frame(&self) -> Option<Vec<u8>> {
        let mut inner = self.shared.inner.borrow_mut();
        let was_full = inner.outbound.len() >= inner.config.max_outbound_frames;
        let frame = inner.outbound.pop_front();
        drop(inner);
        if was_full && frame.is_some() {
            self.shared.request_poll();
        }
        frame
    }

    /// How long until `poll` must run again at the latest; None means only on new input.
    pub fn poll_delay(&self, now: Instant) -> Option<Duration> {
        let mut inner = self.shared.inner.borrow_mut();
        if !inner.inbound.is_empty() {
            return Some(Duration::ZERO);
        }
        let outbound_full = inner.outbound.len() >= inner.config.max_outbound_frames;
        let Inner {
            iface,
            clock,
            sockets,
            tcp,
            ..
        } = &mut *inner;
        // With the outbound queue full smoltcp cannot send anyway; `pop_frame` wakes us instead
        // of a zero delay making the driver spin.
        let smoltcp = if outbound_full {
            None
        } else {
            iface
                .poll_delay(clock.to_smoltcp(now), sockets)
                .map(|delay| clock.duration_from_smoltcp(delay))
        };
        let orphans = tcp
            .poll_at()
            .map(|at| if at > now { at - now } else { Duration::ZERO });
        match (smoltcp, orphans) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Ready once something happened outside `poll` that needs a `poll` (a stream was read,
    /// written, closed or dropped, a listener dropped); otherwise keeps the waker, Pending.
    pub fn poll_wake(&self, cx: &mut Context<'_>) -> Poll<()> {
        self.shared.poll_wake(cx)
    }

    /// Accepts TCP connections to `addr:port`.
    pub fn listen(&self, addr: ListenAddr, port: u16) -> Result<TcpListener, ListenError> {
        let mut inner = self.shared.inner.borrow_mut();
        if let ListenAddr::Ip(ip) = addr {
            if !inner.is_ours(ip) {
                return Err(ListenError::NotLocal(ip));
            }
        }
        let id = inner.tcp.listen(addr, port)?;
        Ok(TcpListener::new(self.shared.clone(), id, port))
    }

    /// Accepts TCP connections to elsewhere, any port, that no other listener takes: for
    /// relaying the guest's connections to the outside world.
    ///
    /// Elsewhere is every address the guest reaches through the gateway that the stack does
    /// not serve itself: the DNS fake IPs (`Stack::fake_ip_name` tells their names) and any
    /// address outside the guest network that is not ours (the gateway, the virtual IPs) and
    /// is routed (not 0.0.0.0/8, loopback, link-local 169.254.0.0/16, multicast or
    /// 240.0.0.0/4). A listener for the exact address and port, or a fake-IP listener for the
    /// port, always wins; SYNs to our own addresses nobody listens on still get RST. The
    /// connection limits are the same as for other listeners (`max_connections`, and
    /// `listen_backlog` for this listener). Each stream's `local_addr` is the address and
    /// port the guest dialled; `TcpListener::local_port` is 0. A fake IP the DNS server never
    /// handed out (or recycled since) has no name. The handshake with the guest completes
    /// before anything is known of the destination: `TcpStream::abort` resets a connection
    /// that cannot be relayed. At most one catch-all listener exists at a time
    /// (`ListenError::InUse`); dropping it restores RST for these SYNs.
    pub fn listen_elsewhere(&self) -> Result<TcpListener, ListenError> {
        let id = self.shared.inner.borrow_mut().tcp.listen_elsewhere(false)?;
        Ok(TcpListener::new(self.shared.clone(), id, 0))
    }

    /// Like `listen_elsewhere`, but each SYN is held and handed out by
    /// `TcpListener::request` as a `ConnectionRequest` before it is answered: the embedder
    /// opens the other side first and then accepts (SYN-ACK) or refuses (RST), so the guest
    /// sees an unreachable destination as a refused connection, as it would directly.
    /// Retransmissions of a held SYN are dropped; held SYNs count towards `listen_backlog`.
    /// `TcpListener::accept` never returns for this listener. It is the one catch-all
    /// listener (`ListenError::InUse` beside `listen_elsewhere`'s).
    pub fn ask_elsewhere(&self) -> Result<TcpListener, ListenError> {
        let id = self.shared.inner.borrow_mut().tcp.listen_elsewhere(true)?;
        Ok(TcpListener::new(self.shared.clone(), id, 0))
    }

    /// Binds the endpoint that receives every UDP datagram the guest sends elsewhere (see
    /// `listen_elsewhere` for what that is) and sends datagrams back: for relaying UDP. At most
    /// one exists at a time (`UdpBindError::InUse`); see `UdpEndpoint` for what it gets.
    pub fn bind_udp_elsewhere(&self) -> Result<UdpEndpoint, UdpBindError> {
        let mut inner = self.shared.inner.borrow_mut();
        inner.udp.bind()?;
        let max_payload = inner.config.mtu - UDP_OVERHEAD;
        Ok(UdpEndpoint::new(self.shared.clone(), max_payload))
    }

    /// The name a fake IP handed out by the DNS server stands for. Counts as a use of the
    /// mapping: call it when a connection to the address is accepted, so a name in use is the
    /// last to be recycled when the pool is full.
    pub fn fake_ip_name(&self, ip: Ipv4Addr) -> Option<String> {
        let mut inner = self.shared.inner.borrow_mut();
        inner.dns.fake_ips.name_of(ip).map(str::to_string)
    }

    /// Whether `ip` is in the DNS server's fake-IP pool (handed out or not).
    pub fn is_fake_ip(&self, ip: Ipv4Addr) -> bool {
        self.shared.inner.borrow().dns.fake_ips.contains(ip)
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> Stats {
        let inner = self.shared.inner.borrow();
        let mut stats = inner.stats;
        stats.tcp_open = inner.tcp.open() as u64;
        stats
    }

    /// Installs (or removes) the observer that sees every frame both ways.
    pub fn set_frame_observer(&self, observer: Option<Box<dyn FrameObserver>>) {
        self.shared.inner.borrow_mut().observer = observer;
    }

    /// Opens a TCP connection into the guest, from the gateway's address and a port of the
    /// dynamic range, to `guest` (an address of the guest network that holds a DHCP lease or
    /// that the stack has seen frames from). The SYN leaves with the next `Stack::poll`; the returned
    /// future resolves to a `TcpStream` (same buffers, backpressure and limits as accepted
    /// connections) once the guest answers, to `ConnectError::Refused` on RST, and to
    /// `ConnectError::TimedOut` when the guest stays silent for `timeout` (SYNs are
    /// retransmitted meanwhile).
    pub fn connect(
        &self,
        guest: SocketAddrV4,
        timeout: Duration,
    ) -> Result<Connecting, ConnectError> {
        let mut inner = self.shared.inner.borrow_mut();
        if guest.port() == 0 {
            return Err(ConnectError::PortZero);
        }
        let ip = *guest.ip();
        let mask = crate::config::mask(inner.config.prefix_len);
        let gateway = inner.config.gateway_ip;
        let in_network = u32::from(ip) & mask == u32::from(gateway) & mask;
        let host_part = u32::from(ip) & !mask;
        if !in_network || inner.is_ours(ip) || host_part == 0 || host_part == !mask {
            return Err(ConnectError::NotGuest(ip));
        }
        if !inner.neighbors.contains_key(&ip) {
            // A guest that took its lease and has said nothing since is reached at the MAC
            // it took the lease with.
            let leased = inner.dhcp.leases().into_iter().find(|l| l.ip == ip);
            let Some(lease) = leased else {
                return Err(ConnectError::UnknownGuest(ip));
            };
            inner.learn(ip, EthernetAddress(lease.mac));
        }
        let local = inner.tcp.dial_port(gateway, guest)?;
        let (mut socket, buffers) = inner.tcp.new_socket();
        socket.set_timeout(Some(inner.clock.duration_to_smoltcp(timeout)));
        let Inner {
            iface,
            sockets,
            tcp,
            ..
        } = &mut *inner;
        socket
            .connect(
                iface.context(),
                (IpAddress::Ipv4(ip), guest.port()),
                (IpAddress::Ipv4(gateway), local.port()),
            )
            .map_err(|_| ConnectError::NoPort(guest))?;
        let handle = sockets.add(socket);
        tcp.add_dialing(handle, local, guest, timeout, buffers);
        drop(inner);
        self.shared.request_poll();
        Ok(Connecting::new(self.shared.clone(), handle, local, guest))
    }

    /// Whether something in the guest listens on `guest`'s port: `Ok(true)` when it answers
    /// a SYN with SYN-ACK (the connection is then reset), `Ok(false)` on RST, an error when
    /// it stays silent for `timeout` or cannot be asked.
    pub async fn probe(
        &self,
        guest: SocketAddrV4,
        timeout: Duration,
    ) -> Result<bool, ConnectError> {
        match self.connect(guest, timeout)?.await {
            Ok(stream) => {
                stream.abort();
                Ok(true)
            }
            Err(ConnectError::Refused(_)) => Ok(false),
            Err(err) => Err(err),
        }
    }

    /// Current DHCP leases.
    pub fn leases(&self) -> Vec<Lease> {
        self.shared.inner.borrow().dhcp.leases()
    }
}

impl TcpHost for Inner {
    fn tcp(&mut self) -> TcpParts<'_> {
        TcpParts {
            table: &mut self.tcp,
            sockets: &mut self.sockets,
            now: self.now,
        }
    }

    fn replay_syn(&mut self, packet: &[u8]) {
        // The packet passed every check when it arrived; it is replayed at the last poll's
        // time, like a stream's writes between polls.
        let Ok(ip) = Ipv4Packet::new_checked(packet) else {
            return;
        };
        let (src, dst) = (ip.src_addr(), ip.dst_addr());
        let header = usize::from(ip.header_len());
        let total = usize::from(ip.total_len()).min(packet.len());
        let Some(body) = packet.get(header..total) else {
            return;
        };
        let now = self.now;
        let _ = self.process_tcp(src, dst, body, packet, now);
    }
}

impl UdpHost for Inner {
    fn udp_queue(&mut self) -> &mut UdpQueue {
        &mut self.udp
    }

    fn send_udp_unreachable(
        &mut self,
        datagram: &Datagram,
        why: Unreachable,
    ) -> Result<(), UdpSendError> {
        let (guest, remote) = (datagram.guest, datagram.remote);
        let mac = self.udp_route(remote, guest)?;
        // The datagram as the guest sent it (its UDP header and checksum rebuilt), quoted up
        // to the same limit as for our own closed ports.
        let sent = emit::udp_frame(mac, self.mac, guest, remote, &datagram.payload);
        let udp = &sent[ETHERNET_HEADER_LEN + IPV4_HEADER_LEN..];
        let header = Ipv4Repr {
            src_addr: *guest.ip(),
            dst_addr: *remote.ip(),
            next_header: IpProtocol::Udp,
            payload_len: udp.len(),
            hop_limit: emit::HOP_LIMIT,
        };
        let (reason, from) = match why {
            Unreachable::Network => (Icmpv4DstUnreachable::NetUnreachable, self.config.gateway_ip),
            Unreachable::Host => (
                Icmpv4DstUnreachable::HostUnreachable,
                self.config.gateway_ip,
            ),
            Unreachable::Port => (Icmpv4DstUnreachable::PortUnreachable, *remote.ip()),
            Unreachable::Prohibited => {
                (Icmpv4DstUnreachable::CommProhibited, self.config.gateway_ip)
            }
        };
        let icmp = Icmpv4Repr::DstUnreachable {
            reason,
            header,
            data: &udp[..udp.len().min(ICMP_QUOTE_MAX)],
        };
        let frame = emit::icmp_frame(self.mac, mac, from, *guest.ip(), &icmp);
        self.send(frame);
        self.stats.udp_unreachable_sent += 1;
        Ok(())
    }

    fn send_udp(
        &mut self,
        remote: SocketAddrV4,
        guest: SocketAddrV4,
        payload: &[u8],
    ) -> Result<(), UdpSendError> {
        let max = self.config.mtu - UDP_OVERHEAD;
        if payload.len() > max {
            return Err(UdpSendError::TooLarge {
                len: payload.len(),
                max,
            });
        }
        let mac = self.udp_route(remote, guest)?;
        let frame = emit::udp_frame(self.mac, mac, remote, guest, payload);
        self.send(frame);
        self.stats.udp_datagrams_out += 1;
        Ok(())
    }
}

impl Inner {
    /// Whether a frame from `remote` (elsewhere) may go to `guest` now, and to which MAC:
    /// like smoltcp's TCP output (`flush_device`), the one the guest address was seen with.
    fn udp_route(
        &mut self,
        remote: SocketAddrV4,
        guest: SocketAddrV4,
    ) -> Result<EthernetAddress, UdpSendError> {
        if !self.is_elsewhere(*remote.ip()) {
            return Err(UdpSendError::NotElsewhere(*remote.ip()));
        }
        let Some(mac) = self.neighbors.get(guest.ip()).copied() else {
            self.stats.drop(Drop::NoNeighbor);
            return Err(UdpSendError::NoNeighbor(*guest.ip()));
        };
        if self.outbound.len() >= self.config.max_outbound_frames {
            self.stats.drop(Drop::OutboundFull);
            return Err(UdpSendError::OutboundFull);
        }
        Ok(mac)
    }

    /// The gateway or a virtual IP.
    fn is_ours(&self, ip: Ipv4Addr) -> bool {
        ip == self.config.gateway_ip || self.config.virtual_ips.contains(&ip)
    }

    /// An address the guest reaches through us that we do not serve (see
    /// `Stack::listen_elsewhere`): a fake IP, or a routed address outside the guest network.
    fn is_elsewhere(&self, ip: Ipv4Addr) -> bool {
        if self.dns.fake_ips.contains(ip) {
            return true;
        }
        let mask = crate::config::mask(self.config.prefix_len);
        let in_guest_network = u32::from(ip) & mask == u32::from(self.config.gateway_ip) & mask;
        let first = ip.octets()[0];
        // 0.0.0.0/8 ("this network") and 240.0.0.0/4 (reserved, with the broadcast address)
        // are never destinations; loopback and link-local never leave a host or a link.
        !(in_guest_network
            || self.is_ours(ip)
            || first == 0
            || first >= 240
            || ip.is_loopback()
            || ip.is_link_local()
            || ip.is_multicast())
    }

    fn poll(&mut self, now: Instant) {
        self.now = now;
        while let Some(frame) = self.inbound.pop_front() {
            if let Some(observer) = self.observer.as_mut() {
                observer.on_frame(Direction::FromGuest, &frame, now);
            }
            if let Err(reason) = self.process_frame(&frame, now) {
                self.stats.drop(reason);
            }
        }
        let Inner {
            tcp,
            sockets,
            stats,
            ..
        } = self;
        tcp.maintain(sockets, now, stats);
        self.device.tx_room = self
            .config
            .max_outbound_frames
            .saturating_sub(self.outbound.len());
        self.iface.poll(
            self.clock.to_smoltcp(now),
            &mut self.device,
            &mut self.sockets,
        );
        self.flush_device();
        self.tcp.reclaim(&mut self.sockets);
    }

    /// Queues a frame towards the guest (observer, counters, outbound limit).
    fn send(&mut self, frame: Vec<u8>) {
        if self.outbound.len() >= self.config.max_outbound_frames {
            self.stats.drop(Drop::OutboundFull);
            return;
        }
        if let Some(observer) = self.observer.as_mut() {
            observer.on_frame(Direction::ToGuest, &frame, self.now);
        }
        self.stats.frames_out += 1;
        self.stats.bytes_out += frame.len() as u64;
        self.outbound.push_back(frame);
    }

    /// Wraps the IP packets smoltcp produced into Ethernet frames towards their neighbor.
    fn flush_device(&mut self) {
        for _ in 0..std::mem::take(&mut self.device.tx_dropped) {
            self.stats.drop(Drop::OutboundFull);
        }
        while let Some(packet) = self.device.tx.pop_front() {
            let dst = Ipv4Packet::new_checked(&packet[..])
                .ok()
                .map(|p| p.dst_addr());
            match dst.and_then(|ip| self.neighbors.get(&ip).copied()) {
                Some(mac) => {
                    let frame = emit::ipv4_frame(self.mac, mac, &packet);
                    self.send(frame);
                }
                None => self.stats.drop(Drop::NoNeighbor),
            }
        }
    }

    fn learn(&mut self, ip: Ipv4Addr, mac: EthernetAddress) {
        if ip.is_unspecified() || ip.is_broadcast() || ip.is_multicast() || !mac.is_unicast() {
            return;
        }
        if self.neighbors.len() < MAX_NEIGHBORS || self.neighbors.contains_key(&ip) {
            self.neighbors.insert(ip, mac);
        }
    }

    fn process_frame(&mut self, frame: &[u8], now: Instant) -> Result<(), Drop> {
        if frame.len() > self.config.mtu + ETHERNET_HEADER_LEN {
            return Err(Drop::Oversized);
        }
        let eth = EthernetFrame::new_checked(frame).map_err(|_| Drop::Malformed)?;
        let dst = eth.dst_addr();
        if dst != self.mac && !dst.is_broadcast() {
            return Err(Drop::NotForUs);
        }
        let src = eth.src_addr();
        match eth.ethertype() {
            EthernetProtocol::Arp => {
                let (action, learned) = arp::handle(eth.payload(), self.mac, |ip| self.is_ours(ip));
                if let Some((ip, mac)) = learned {
                    self.learn(ip, mac);
                }
                match action {
                    ArpAction::Reply(reply) => {
                        self.stats.arp_replies += 1;
                        self.send(reply);
                        Ok(())
                    }
                    ArpAction::Ignore => Ok(()),
                    ArpAction::Malformed => Err(Drop::Malformed),
                }
            }
            EthernetProtocol::Ipv4 => {
                self.process_ipv4(src, dst.is_broadcast(), eth.payload(), now)
            }
            _ => Err(Drop::Unsupported),
        }
    }

    fn process_ipv4(
        &mut self,
        src_mac: EthernetAddress,
        l2_broadcast: bool,
        payload: &[u8],
        now: Instant,
    ) -> Result<(), Drop> {
        let packet = Ipv4Packet::new_checked(payload).map_err(|_| Drop::Malformed)?;
        if packet.version() != 4 || !packet.verify_checksum() {
            return Err(Drop::Malformed);
        }
        if packet.more_frags() || packet.frag_offset() != 0 {
            return Err(Drop::Unsupported);
        }
        let (src, dst) = (packet.src_addr(), packet.dst_addr());
        // The exact IP packet, without Ethernet padding.
        let ip_bytes = &payload[..usize::from(packet.total_len())];
        let body = packet.payload();
        if !src_mac.is_unicast() {
            return Err(Drop::Malformed);
        }
        self.learn(src, src_mac);
        match packet.next_header() {
            IpProtocol::Icmp => {
                if !self.is_ours(dst) {
                    return Err(Drop::NotForUs);
                }
                match icmp::handle(body) {
                    IcmpAction::EchoReply {
                        ident,
                        seq_no,
                        data,
                    } => {
                        let reply = Icmpv4Repr::EchoReply {
                            ident,
                            seq_no,
                            data,
                        };
                        let frame = emit::icmp_frame(self.mac, src_mac, dst, src, &reply);
                        self.stats.icmp_echo_replies += 1;
                        self.send(frame);
                        Ok(())
                    }
                    IcmpAction::Ignore => Ok(()),
                    IcmpAction::Malformed => Err(Drop::Malformed),
                }
            }
            IpProtocol::Udp => self.process_udp(src_mac, l2_broadcast, &packet, now),
            IpProtocol::Tcp => {
                if l2_broadcast || dst.is_broadcast() || dst.is_multicast() || dst.is_unspecified()
                {
                    return Err(Drop::NotForUs);
                }
                self.process_tcp(src, dst, body, ip_bytes, now)
            }
            _ => Err(Drop::Unsupported),
        }
    }

    /// A UDP datagram in `packet` (checked, unfragmented), from `src_mac`.
    fn process_udp(
        &mut self,
        src_mac: EthernetAddress,
        l2_broadcast: bool,
        packet: &Ipv4Packet<&[u8]>,
        now: Instant,
    ) -> Result<(), Drop> {
        let (src, dst, hop_limit) = (packet.src_addr(), packet.dst_addr(), packet.hop_limit());
        let body = packet.payload();
        let udp = UdpPacket::new_checked(body).map_err(|_| Drop::Malformed)?;
        if udp.checksum() != 0 && !udp.verify_checksum(&IpAddress::Ipv4(src), &IpAddress::Ipv4(dst))
        {
            return Err(Drop::Malformed);
        }
        let port = udp.dst_port();
        if port == DHCP_SERVER_PORT && (dst.is_broadcast() || dst == self.config.gateway_ip) {
            let packet = DhcpPacket::new_checked(udp.payload()).map_err(|_| Drop::Malformed)?;
            let repr = DhcpRepr::parse(&packet).map_err(|_| Drop::Malformed)?;
            let (reply, outcome) = self.dhcp.handle(&repr, now);
            match outcome {
                DhcpOutcome::Offer => self.stats.dhcp_offers += 1,
                DhcpOutcome::Ack => self.stats.dhcp_acks += 1,
                DhcpOutcome::Nak => self.stats.dhcp_naks += 1,
                DhcpOutcome::PoolExhausted => self.stats.dhcp_pool_exhausted += 1,
                DhcpOutcome::Silent => {}
            }
            if let Some(reply) = reply {
                let frame = emit::udp_frame(
                    self.mac,
                    reply.dst.mac,
                    SocketAddrV4::new(self.config.gateway_ip, DHCP_SERVER_PORT),
                    SocketAddrV4::new(reply.dst.ip, reply.dst.port),
                    &reply.payload,
                );
                self.send(frame);
            }
            return Ok(());
        }
        if port == DNS_PORT && dst == self.config.gateway_ip {
            let (reply, outcome) = self.dns.answer(udp.payload());
            let Some(reply) = reply else {
                return Err(Drop::Malformed);
            };
            self.stats.dns_queries += 1;
            self.stats.dns_fake_ips += u64::from(outcome.new_fake_ip);
            self.stats.dns_fake_ips_recycled += u64::from(outcome.recycled_fake_ip);
            self.stats.dns_errors += u64::from(outcome.error);
            let frame = emit::udp_frame(
                self.mac,
                src_mac,
                SocketAddrV4::new(dst, DNS_PORT),
                SocketAddrV4::new(src, udp.src_port()),
                &reply,
            );
            self.send(frame);
            return Ok(());
        }
        if self.udp.is_bound()
            && !l2_broadcast
            && !(src.is_unspecified() || src.is_broadcast() || src.is_multicast())
            && self.is_elsewhere(dst)
        {
            let datagram = Datagram {
                guest: SocketAddrV4::new(src, udp.src_port()),
                remote: SocketAddrV4::new(dst, port),
                payload: udp.payload().to_vec(),
            };
            if !self.udp.deliver(datagram) {
                return Err(Drop::UdpQueueFull);
            }
            self.stats.udp_datagrams_in += 1;
            return Ok(());
        }
        if self.is_ours(dst) {
            // RFC 1122 3.2.2.1: a closed UDP port on one of our addresses is answered with
            // ICMP port unreachable, so the guest fails at once instead of timing out.
            let quoted = &body[..body.len().min(ICMP_QUOTE_MAX)];
            let header = Ipv4Repr {
                src_addr: src,
                dst_addr: dst,
                next_header: IpProtocol::Udp,
                payload_len: quoted.len(),
                hop_limit,
            };
            let icmp = Icmpv4Repr::DstUnreachable {
                reason: Icmpv4DstUnreachable::PortUnreachable,
                header,
                data: quoted,
            };
            let frame = emit::icmp_frame(self.mac, src_mac, dst, src, &icmp);
            self.stats.udp_port_unreachable += 1;
            self.send(frame);
            Ok(())
        } else if dst.is_broadcast() {
            Err(Drop::Unsupported)
        } else {
            Err(Drop::NotForUs)
        }
    }

    fn process_tcp(
        &mut self,
        src: Ipv4Addr,
        dst: Ipv4Addr,
        body: &[u8],
        ip_bytes: &[u8],
        now: Instant,
    ) -> Result<(), Drop> {
        let segment = TcpPacket::new_checked(body).map_err(|_| Drop::Malformed)?;
        if !segment.verify_checksum(&IpAddress::Ipv4(src), &IpAddress::Ipv4(dst)) {
            return Err(Drop::Malformed);
        }
        if segment.rst() {
            self.tcp.on_rst(
                SocketAddrV4::new(src, segment.src_port()),
                SocketAddrV4::new(dst, segment.dst_port()),
            );
        }
        if segment.syn() && !segment.ack() && !segment.rst() {
            let class = Destination {
                fake_ip: self.dns.fake_ips.contains(dst),
                elsewhere: self.is_elsewhere(dst),
            };
            let Inner {
                tcp,
                sockets,
                stats,
                ..
            } = self;
            let verdict = tcp.on_syn(
                sockets,
                SocketAddrV4::new(src, segment.src_port()),
                SocketAddrV4::new(dst, segment.dst_port()),
                class,
                ip_bytes,
                stats,
            );
            if verdict == SynVerdict::Held {
                return Ok(());
            }
        }
        self.device.tx_room = self
            .config
            .max_outbound_frames
            .saturating_sub(self.outbound.len());
        self.device.rx = Some(ip_bytes.to_vec());
        self.iface.poll_ingress_single(
            self.clock.to_smoltcp(now),
            &mut self.device,
            &mut self.sockets,
        );
        self.device.rx = None;
        self.flush_device();
        Ok(())
    }
}
