//! Static configuration of the virtual network, with the original c2w-net-proxy's defaults.

use std::net::Ipv4Addr;

use smoltcp::time::Duration;

/// Everything that shapes the virtual network; `Config::default()` matches the original proxy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Address of the gateway (DHCP and DNS server, default route).
    pub gateway_ip: Ipv4Addr,
    /// MAC address used for the gateway and every virtual IP.
    pub gateway_mac: [u8; 6],
    /// Prefix length of the guest network (24 for 192.168.127.0/24).
    pub prefix_len: u8,
    /// IP MTU of the link; frames longer than `mtu + 14` are dropped.
    pub mtu: usize,
    /// Further addresses that answer ARP and ICMP like the gateway (the proxy lives at .253).
    pub virtual_ips: Vec<Ipv4Addr>,
    /// DHCP server settings.
    pub dhcp: DhcpConfig,
    /// DNS server settings.
    pub dns: DnsConfig,
    /// TCP buffer sizes and limits.
    pub tcp: TcpConfig,
    /// Limits of UDP to elsewhere (`Stack::bind_udp_elsewhere`).
    pub udp: UdpConfig,
    /// Frames pushed but not yet processed by `poll`; beyond this they are dropped and counted.
    pub max_queued_frames: usize,
    /// Frames towards the guest not yet popped; beyond this TCP output waits and replies are dropped.
    pub max_outbound_frames: usize,
    /// Seed of smoltcp's pseudo-random numbers (TCP initial sequence numbers); fixed for reproducibility.
    pub random_seed: u64,
}

/// DHCP server settings: the address pool and lease time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DhcpConfig {
    /// First address handed out (inclusive).
    pub pool_start: Ipv4Addr,
    /// Last address handed out (inclusive); the gateway and virtual IPs inside the range are skipped.
    pub pool_end: Ipv4Addr,
    /// Lease duration announced to clients.
    pub lease_time: Duration,
}

/// DNS server settings: the static host table and the fake-IP pool for every other name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsConfig {
    /// Names answered from this table (compared case-insensitively, without a trailing dot).
    pub hosts: Vec<(String, Ipv4Addr)>,
    /// Network of the fake-IP pool (198.18.0.0 by default).
    pub fake_ip_net: Ipv4Addr,
    /// Prefix length of the fake-IP pool (15 by default).
    pub fake_ip_prefix_len: u8,
    /// TTL of every answer, in seconds.
    pub ttl: u32,
}

/// TCP settings: per-connection buffers (they bound the advertised window) and limits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TcpConfig {
    /// Receive buffer per connection in bytes (the window the guest may fill).
    pub rx_buffer: usize,
    /// Transmit buffer per connection in bytes (what `TcpStream` writes may queue).
    pub tx_buffer: usize,
    /// Buffer bytes (receive plus transmit) all connections may hold together before new
    /// connections get smaller buffers: each gets at most an eighth of what the budget has
    /// left, never less than `min_buffer` each way. A WebAssembly memory never shrinks, so in
    /// a browser this caps what a burst of connections leaves the tab holding; one or a few
    /// busy connections still get the full sizes. `None`: every connection gets them.
    pub buffer_budget: Option<usize>,
    /// The smallest buffer each way under `buffer_budget` (raised by [`Config::set_mtu`] to
    /// [`MIN_SEGMENTS_BUFFERED`] full segments).
    pub min_buffer: usize,
    /// Connections alive at once (handshaking, open or closing); SYNs beyond get RST.
    pub max_connections: usize,
    /// Connections per listener that are handshaking or waiting for `accept`; SYNs beyond get RST.
    /// As large as `max_connections` by default, so a burst of connections to one port (a
    /// client opening 256 at once) is limited by the connection limit only.
    pub listen_backlog: usize,
    /// How long a dropped stream's connection may linger (closing) before it is aborted.
    pub orphan_timeout: Duration,
    /// How many times faster than the caller's clock smoltcp's clock runs (1 to
    /// [`MAX_CLOCK_SCALE`]; default [`DEFAULT_CLOCK_SCALE`]).
    ///
    /// smoltcp 0.14's retransmission timeout never goes below a fixed second, which on a
    /// virtual link with a sub-millisecond round trip makes every loss that fast retransmit
    /// does not repair cost a whole second (a download under 5% random loss ran at about
    /// 0.3 MB/s). The stack passes smoltcp its time multiplied by this factor, scales every
    /// duration it hands smoltcp (socket timeouts, the delayed-ACK time) up and every delay
    /// smoltcp reports down, so a connection behaves as before in the caller's time except
    /// for smoltcp's own fixed constants, which shrink by the factor. With 20: the minimum and
    /// initial retransmission timeout (1 s) become 50 ms, the retransmission timeout's
    /// ceiling and the zero-window probe's longest interval (60 s) 3 s, TIME-WAIT (10 s)
    /// 0.5 s, the challenge-ACK rate limit (1 s) 50 ms. A retransmission timeout smoltcp
    /// computes above the floor from measured round trips (`srtt + 4 rttvar`) is unchanged,
    /// the round trips being measured in the same scaled time. docs/robustness.md, "Loss
    /// recovery", has the measurements and the judgement of each constant; 1 restores
    /// smoltcp's own timing.
    pub clock_scale: u32,
}

/// The default [`TcpConfig::clock_scale`]: smoltcp's 1 s minimum retransmission timeout
/// becomes 50 ms (Linux's minimum is 200 ms, FreeBSD's 30 ms). The smallest of the scales
/// measured that reached 3 MB/s under 5% random loss natively (5: 1.4–1.5 MB/s, 10:
/// 2.8–3.1 MB/s, 20: 4.4–4.6 MB/s; 1: 0.3 MB/s).
pub const DEFAULT_CLOCK_SCALE: u32 = 20;

/// The largest [`TcpConfig::clock_scale`]: a 10 ms minimum retransmission timeout.
pub const MAX_CLOCK_SCALE: u32 = 100;

/// UDP settings: how much of the guest's UDP to elsewhere may wait for the `UdpEndpoint`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UdpConfig {
    /// Datagrams received for the `UdpEndpoint` and not yet read; beyond this they are dropped
    /// and counted (`Stats::dropped_udp_queue_full`). Each holds at most MTU − 28 bytes.
    pub max_queued_datagrams: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            gateway_ip: Ipv4Addr::new(192, 168, 127, 1),
            gateway_mac: [0x5a, 0x94, 0xef, 0xe4, 0x0c, 0xdd],
            prefix_len: 24,
            mtu: 1500,
            virtual_ips: vec![Ipv4Addr::new(192, 168, 127, 253)],
            dhcp: DhcpConfig::default(),
            dns: DnsConfig::default(),
            tcp: TcpConfig::default(),
            udp: UdpConfig::default(),
            max_queued_frames: 1024,
            max_outbound_frames: 1024,
            random_seed: 0x6332_772d_6e65_7421,
        }
    }
}

impl Default for DhcpConfig {
    fn default() -> Self {
        DhcpConfig {
            pool_start: Ipv4Addr::new(192, 168, 127, 3),
            pool_end: Ipv4Addr::new(192, 168, 127, 252),
            lease_time: Duration::from_secs(3600),
        }
    }
}

impl Default for DnsConfig {
    fn default() -> Self {
        DnsConfig {
            hosts: vec![
                (
                    "proxy.c2w.internal".to_string(),
                    Ipv4Addr::new(192, 168, 127, 253),
                ),
                (
                    "gateway.c2w.internal".to_string(),
                    Ipv4Addr::new(192, 168, 127, 1),
                ),
            ],
            fake_ip_net: Ipv4Addr::new(198, 18, 0, 0),
            fake_ip_prefix_len: 15,
            ttl: 60,
        }
    }
}

impl Default for TcpConfig {
    fn default() -> Self {
        TcpConfig {
            rx_buffer: 256 * 1024,
            tx_buffer: 256 * 1024,
            buffer_budget: None,
            // 16 segments of the default MTU's 1,460 bytes.
            min_buffer: MIN_SEGMENTS_BUFFERED * 1460,
            max_connections: 256,
            listen_backlog: 256,
            orphan_timeout: Duration::from_secs(60),
            clock_scale: DEFAULT_CLOCK_SCALE,
        }
    }
}

impl Default for UdpConfig {
    fn default() -> Self {
        UdpConfig {
            max_queued_datagrams: 256,
        }
    }
}

/// Why a `Config` cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// The guest network's prefix length must leave room for hosts.
    #[error("prefix length {0} is not in 1..=30")]
    PrefixLen(u8),
    /// The MTU must carry a minimal IPv4 packet and fit a 16-bit length.
    #[error("MTU {0} is not in 576..=65535")]
    Mtu(usize),
    /// The gateway MAC must be a unicast address.
    #[error("gateway MAC is not a unicast address")]
    GatewayMac,
    /// An address that must be a host of the guest network is not.
    #[error("{0} is not a host address of the guest network")]
    NotInSubnet(Ipv4Addr),
    /// The DHCP pool is empty or reversed.
    #[error("DHCP pool {0}..={1} is empty")]
    EmptyPool(Ipv4Addr, Ipv4Addr),
    /// The fake-IP pool must be a valid network with room for hosts.
    #[error("fake-IP pool {0}/{1} is not a valid network with host addresses")]
    FakeIpNet(Ipv4Addr, u8),
    /// The fake-IP pool must not overlap the guest network.
    #[error("fake-IP pool overlaps the guest network")]
    FakeIpOverlap,
    /// A host table name is empty or not a DNS name.
    #[error("host name {0:?} is not a valid DNS name")]
    HostName(String),
    /// A TCP buffer or limit is zero (or a buffer is beyond what TCP window scaling reaches).
    #[error("TCP setting {0} is out of range")]
    Tcp(&'static str),
    /// A queue limit is zero.
    #[error("queue limit {0} must be at least 1")]
    Queue(&'static str),
    /// The lease time must be between 1 s and u32::MAX s.
    #[error("DHCP lease time is out of range")]
    LeaseTime,
}

/// The netmask of a prefix length (0..=32).
pub(crate) fn mask(prefix_len: u8) -> u32 {
    if prefix_len == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(prefix_len.min(32)))
    }
}

/// Full-size TCP segments the socket buffers hold at least, so a large MTU still leaves a
/// window of several segments in flight.
pub const MIN_SEGMENTS_BUFFERED: usize = 16;

impl Config {
    /// Sets the link MTU (offered to the guest by DHCP) and grows the TCP buffers to hold at
    /// least [`MIN_SEGMENTS_BUFFERED`] full segments, so a jumbo MTU does not shrink the window
    /// to a few segments; smaller buffers already configured are raised, larger ones kept.
    pub fn set_mtu(&mut self, mtu: usize) {
        self.mtu = mtu;
        // IPv4 and TCP headers without options.
        let segment = mtu.saturating_sub(40);
        let floor = segment.saturating_mul(MIN_SEGMENTS_BUFFERED);
        self.tcp.rx_buffer = self.tcp.rx_buffer.max(floor);
        self.tcp.tx_buffer = self.tcp.tx_buffer.max(floor);
        self.tcp.min_buffer = self.tcp.min_buffer.max(floor);
    }

    /// The guest network's netmask.
    pub fn netmask(&self) -> Ipv4Addr {
        Ipv4Addr::from(mask(self.prefix_len))
    }

    /// The guest network's directed broadcast address.
    pub fn broadcast(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.gateway_ip) | !mask(self.prefix_len))
    }

    /// True when `ip` is a host address (not network, not broadcast) of the guest network.
    pub fn is_host_in_subnet(&self, ip: Ipv4Addr) -> bool {
        let m = mask(self.prefix_len);
        let ip = u32::from(ip);
        let net = u32::from(self.gateway_ip) & m;
        ip & m == net && ip != net && ip != net | !m
    }

    /// Checks every field; `Stack::new` calls this.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !(1..=30).contains(&self.prefix_len) {
            return Err(ConfigError::PrefixLen(self.prefix_len));
        }
        if !(576..=65535).contains(&self.mtu) {
            return Err(ConfigError::Mtu(self.mtu));
        }
        if self.gateway_mac[0] & 1 != 0 || self.gateway_mac == [0; 6] {
            return Err(ConfigError::GatewayMac);
        }
        for ip in std::iter::once(&self.gateway_ip).chain(&self.virtual_ips) {
            if !self.is_host_in_subnet(*ip) {
                return Err(ConfigError::NotInSubnet(*ip));
            }
        }
        let (start, end) = (self.dhcp.pool_start, self.dhcp.pool_end);
        for ip in [start, end] {
            if !self.is_host_in_subnet(ip) {
                return Err(ConfigError::NotInSubnet(ip));
            }
        }
        if u32::from(start) > u32::from(end) {
            return Err(ConfigError::EmptyPool(start, end));
        }
        let secs = self.dhcp.lease_time.secs();
        if secs == 0 || secs > u64::from(u32::MAX) {
            return Err(ConfigError::LeaseTime);
        }
        let (fnet, flen) = (self.dns.fake_ip_net, self.dns.fake_ip_prefix_len);
        if !(1..=30).contains(&flen) || u32::from(fnet) & !mask(flen) != 0 {
            return Err(ConfigError::FakeIpNet(fnet, flen));
        }
        // Two prefixes overlap when the shorter one contains the other's network address.
        let common = mask(flen.min(self.prefix_len));
        if u32::from(fnet) & common == u32::from(self.gateway_ip) & common {
            return Err(ConfigError::FakeIpOverlap);
        }
        for (name, _) in &self.dns.hosts {
            if crate::wire::dns::encode_name(name).is_none() {
                return Err(ConfigError::HostName(name.clone()));
            }
        }
        let tcp = &self.tcp;
        // smoltcp scales the window by at most 2^14, so buffers beyond 1 GiB cannot be advertised.
        for (what, size) in [("rx_buffer", tcp.rx_buffer), ("tx_buffer", tcp.tx_buffer)] {
            if size == 0 || size > (1 << 30) {
                return Err(ConfigError::Tcp(what));
            }
        }
        if tcp.min_buffer == 0 {
            return Err(ConfigError::Tcp("min_buffer"));
        }
        if tcp.max_connections == 0 {
            return Err(ConfigError::Tcp("max_connections"));
        }
        if tcp.listen_backlog == 0 {
            return Err(ConfigError::Tcp("listen_backlog"));
        }
        if !(1..=MAX_CLOCK_SCALE).contains(&tcp.clock_scale) {
            return Err(ConfigError::Tcp("clock_scale"));
        }
        if self.max_queued_frames == 0 {
            return Err(ConfigError::Queue("max_queued_frames"));
        }
        if self.max_outbound_frames == 0 {
            return Err(ConfigError::Queue("max_outbound_frames"));
        }
        if self.udp.max_queued_datagrams == 0 {
            return Err(ConfigError::Queue("udp.max_queued_datagrams"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;

    #[test]
    fn a_large_mtu_grows_the_tcp_buffers_to_sixteen_segments() {
        let mut c = Config::default();
        c.set_mtu(1500);
        assert_eq!(
            (c.mtu, c.tcp.rx_buffer),
            (1500, 256 * 1024),
            "defaults kept"
        );
        c.set_mtu(65520);
        assert_eq!(c.tcp.rx_buffer, 16 * 65480);
        assert_eq!(c.tcp.tx_buffer, 16 * 65480);
        assert_eq!(c.validate(), Ok(()));
        let mut big = Config::default();
        big.tcp.rx_buffer = 64 << 20;
        big.set_mtu(9000);
        assert_eq!(big.tcp.rx_buffer, 64 << 20, "larger buffers kept");
    }

    #[test]
    fn defaults_are_valid_and_match_the_original() {
        let c = Config::default();
        c.validate().unwrap();
        assert_eq!(c.netmask(), Ipv4Addr::new(255, 255, 255, 0));
        assert_eq!(c.broadcast(), Ipv4Addr::new(192, 168, 127, 255));
        assert_eq!(c.dhcp.pool_start, Ipv4Addr::new(192, 168, 127, 3));
    }

    #[test]
    fn rejects_bad_settings() {
        let mut c = Config::default();
        c.virtual_ips.push(Ipv4Addr::new(10, 0, 0, 1));
        assert_eq!(
            c.validate(),
            Err(ConfigError::NotInSubnet(Ipv4Addr::new(10, 0, 0, 1)))
        );
        let mut c = Config::default();
        c.dhcp.pool_start = Ipv4Addr::new(192, 168, 127, 200);
        c.dhcp.pool_end = Ipv4Addr::new(192, 168, 127, 100);
        assert!(matches!(c.validate(), Err(ConfigError::EmptyPool(..))));
        let mut c = Config::default();
        c.dns.fake_ip_net = Ipv4Addr::new(192, 168, 0, 0);
        c.dns.fake_ip_prefix_len = 16;
        assert_eq!(c.validate(), Err(ConfigError::FakeIpOverlap));
        let mut c = Config::default();
        c.dns.fake_ip_net = Ipv4Addr::new(198, 18, 0, 1);
        assert!(matches!(c.validate(), Err(ConfigError::FakeIpNet(..))));
        let mut c = Config::default();
        c.dns.hosts.push(("bad..name".into(), Ipv4Addr::LOCALHOST));
        assert!(matches!(c.validate(), Err(ConfigError::HostName(_))));
        let c = Config {
            mtu: 100,
            ..Config::default()
        };
        assert_eq!(c.validate(), Err(ConfigError::Mtu(100)));
        let mut c = Config::default();
        c.tcp.max_connections = 0;
        assert_eq!(c.validate(), Err(ConfigError::Tcp("max_connections")));
        for scale in [0, MAX_CLOCK_SCALE + 1] {
            let mut c = Config::default();
            c.tcp.clock_scale = scale;
            assert_eq!(c.validate(), Err(ConfigError::Tcp("clock_scale")));
        }
        let mut c = Config::default();
        c.tcp.clock_scale = MAX_CLOCK_SCALE;
        assert_eq!(c.validate(), Ok(()));
        let mut c = Config::default();
        c.udp.max_queued_datagrams = 0;
        assert_eq!(
            c.validate(),
            Err(ConfigError::Queue("udp.max_queued_datagrams"))
        );
    }
}
