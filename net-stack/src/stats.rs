//! Counters of everything the stack did, for logs, tests and benchmarks.

/// A snapshot of the stack's counters (`Stack::stats`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Frames pushed by the driver (including ones dropped later).
    pub frames_in: u64,
    /// Frames queued towards the guest.
    pub frames_out: u64,
    /// Bytes of `frames_in`.
    pub bytes_in: u64,
    /// Bytes of `frames_out`.
    pub bytes_out: u64,
    /// All dropped frames: the sum of the `dropped_*` counters.
    pub frames_dropped: u64,
    /// Dropped: longer than MTU + 14.
    pub dropped_oversized: u64,
    /// Dropped: truncated headers, bad lengths or checksums, unparsable DHCP.
    pub dropped_malformed: u64,
    /// Dropped: a protocol we do not serve (IPv6, other ethertypes, IP fragments, other UDP ports).
    pub dropped_unsupported: u64,
    /// Dropped: addressed to another MAC or IP than ours.
    pub dropped_not_for_us: u64,
    /// Dropped: the inbound queue was full (`Config::max_queued_frames`).
    pub dropped_queue_full: u64,
    /// Dropped: the outbound queue was full (`Config::max_outbound_frames`).
    pub dropped_outbound_full: u64,
    /// Dropped: a packet towards an IP whose MAC we never saw.
    pub dropped_no_neighbor: u64,
    /// Dropped: a UDP datagram to elsewhere found the `UdpEndpoint`'s queue full
    /// (`UdpConfig::max_queued_datagrams`).
    pub dropped_udp_queue_full: u64,
    /// ARP replies sent.
    pub arp_replies: u64,
    /// ICMP echo replies sent.
    pub icmp_echo_replies: u64,
    /// ICMP port unreachable sent for UDP to a port of ours nobody serves.
    pub udp_port_unreachable: u64,
    /// ICMP destination unreachable sent for UDP to elsewhere that could not be carried
    /// (`UdpEndpoint::unreachable`).
    pub udp_unreachable_sent: u64,
    /// UDP datagrams to elsewhere queued for the `UdpEndpoint`.
    pub udp_datagrams_in: u64,
    /// UDP datagrams the `UdpEndpoint` sent to the guest.
    pub udp_datagrams_out: u64,
    /// DHCP OFFERs sent.
    pub dhcp_offers: u64,
    /// DHCP ACKs sent (including INFORM answers).
    pub dhcp_acks: u64,
    /// DHCP NAKs sent.
    pub dhcp_naks: u64,
    /// DISCOVERs left unanswered because no address was free.
    pub dhcp_pool_exhausted: u64,
    /// DNS queries answered (any response code).
    pub dns_queries: u64,
    /// DNS queries answered with an error code (FORMERR, NOTIMP, SERVFAIL).
    pub dns_errors: u64,
    /// Fake IPs handed out (including recycled ones).
    pub dns_fake_ips: u64,
    /// Of `dns_fake_ips`: the pool was full, so the least recently used name lost its address.
    pub dns_fake_ips_recycled: u64,
    /// TCP connections established and queued on a listener.
    pub tcp_accepted: u64,
    /// SYNs answered with RST (no listener, backlog or connection limit).
    pub tcp_refused: u64,
    /// Of `tcp_refused`: refused because of `max_connections` or the listen backlog.
    pub tcp_refused_limit: u64,
    /// TCP connections currently holding a socket (handshaking, open or closing).
    pub tcp_open: u64,
}

/// Why a frame was dropped (each maps to one `Stats` counter).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Drop {
    Oversized,
    Malformed,
    Unsupported,
    NotForUs,
    QueueFull,
    OutboundFull,
    NoNeighbor,
    UdpQueueFull,
}

impl Stats {
    /// Counts one dropped frame.
    pub(crate) fn drop(&mut self, reason: Drop) {
        self.frames_dropped += 1;
        let counter = match reason {
            Drop::Oversized => &mut self.dropped_oversized,
            Drop::Malformed => &mut self.dropped_malformed,
            Drop::Unsupported => &mut self.dropped_unsupported,
            Drop::NotForUs => &mut self.dropped_not_for_us,
            Drop::QueueFull => &mut self.dropped_queue_full,
            Drop::OutboundFull => &mut self.dropped_outbound_full,
            Drop::NoNeighbor => &mut self.dropped_no_neighbor,
            Drop::UdpQueueFull => &mut self.dropped_udp_queue_full,
        };
        *counter += 1;
    }
}
