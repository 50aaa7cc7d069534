//! [`Stats`]: the stack's and the proxy's counters in one document, the same for
//! `NetProxy.stats()` in the browser and the native runner's `--stats-file`. Each front end
//! adds only what its platform knows about memory (the wasm heap; the process's RSS) beside
//! it. The TypeScript declarations (`NetProxyStats`) are generated from these types.

use fetch_transport::relay::{Relay, RelayState};
use fetch_transport::wisp::WispVersion;
use serde::Serialize;

use crate::compose::System;

#[cfg(target_arch = "wasm32")]
use tsify::Tsify;

/// A snapshot of every counter, gathered from the stack and the proxy at one moment.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(target_arch = "wasm32", derive(Tsify))]
pub struct Stats {
    /// Frames taken from the guest.
    pub frames_in: u64,
    /// Frames sent to the guest.
    pub frames_out: u64,
    /// Bytes of the frames taken from the guest.
    pub bytes_in: u64,
    /// Bytes of the frames sent to the guest.
    pub bytes_out: u64,
    /// Frames dropped, by reason.
    pub drops: Drops,
    /// ARP requests answered.
    pub arp_replies: u64,
    /// ICMP echo requests answered.
    pub icmp_echo_replies: u64,
    /// UDP datagrams to closed ports answered with ICMP port unreachable.
    pub udp_port_unreachable: u64,
    /// UDP flows the relay could not carry (refused, closed, denied, relay down), answered
    /// with ICMP destination unreachable.
    pub udp_unreachable: u64,
    /// UDP datagrams from the guest handed to the relay's flows.
    pub udp_datagrams_in: u64,
    /// UDP datagrams from the relay's flows sent to the guest.
    pub udp_datagrams_out: u64,
    /// The DHCP server.
    pub dhcp: DhcpStats,
    /// The DNS server.
    pub dns: DnsStats,
    /// TCP towards the guest.
    pub tcp: TcpStats,
    /// The HTTP proxy.
    pub proxy: ProxyCounters,
    /// The Wisp relay, when one is configured.
    #[cfg_attr(target_arch = "wasm32", tsify(optional))]
    pub relay: Option<RelayCounters>,
    /// Whether a capture is running.
    pub capturing: bool,
    /// Whether the proxy was closed (the browser's `close()`; natively the final snapshot).
    pub closed: bool,
}

/// Frames dropped, by reason.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(target_arch = "wasm32", derive(Tsify))]
pub struct Drops {
    /// Every dropped frame, stream framing included.
    pub total: u64,
    /// Larger than the MTU allows.
    pub oversized: u64,
    /// Headers that do not parse.
    pub malformed: u64,
    /// A protocol the stack does not speak.
    pub unsupported: u64,
    /// Addressed to someone else.
    pub not_for_us: u64,
    /// The inbound queue (the stack's, or the browser link's inbox) was full.
    pub queue_full: u64,
    /// The queue towards the guest was full.
    pub outbound_full: u64,
    /// No ARP entry for the destination.
    pub no_neighbor: u64,
    /// Frames skipped by the QEMU stream decoder (empty or longer than the MTU allows).
    pub stream_framing: u64,
    /// UDP datagrams for the relay dropped because its queue was full.
    pub udp_queue_full: u64,
}

/// DHCP counters and the current leases.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(target_arch = "wasm32", derive(Tsify))]
pub struct DhcpStats {
    /// OFFERs sent.
    pub offers: u64,
    /// ACKs sent.
    pub acks: u64,
    /// NAKs sent.
    pub naks: u64,
    /// DISCOVERs that found the pool empty.
    pub pool_exhausted: u64,
    /// The leases held now.
    pub leases: Vec<LeaseInfo>,
}

/// One DHCP lease.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[cfg_attr(target_arch = "wasm32", derive(Tsify))]
pub struct LeaseInfo {
    /// The client's MAC address, `aa:bb:cc:dd:ee:ff`.
    pub mac: String,
    /// The leased IPv4 address.
    pub ip: String,
}

/// DNS counters.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(target_arch = "wasm32", derive(Tsify))]
pub struct DnsStats {
    /// Queries answered.
    pub queries: u64,
    /// Queries answered with an error.
    pub errors: u64,
    /// Fake IPs handed out.
    pub fake_ips: u64,
    /// Fake IPs taken back from the least recently used name because the pool was full.
    pub fake_ips_recycled: u64,
}

/// TCP counters.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(target_arch = "wasm32", derive(Tsify))]
pub struct TcpStats {
    /// Connections alive now.
    pub open: u64,
    /// Connections accepted.
    pub accepted: u64,
    /// SYNs refused with RST (no listener).
    pub refused: u64,
    /// SYNs refused with RST because of the connection limit.
    pub refused_limit: u64,
}

/// The proxy's counters.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(target_arch = "wasm32", derive(Tsify))]
pub struct ProxyCounters {
    /// Guest connections served.
    pub connections_total: u64,
    /// Guest connections open now.
    pub connections_open: u64,
    /// Requests read.
    pub requests: u64,
    /// Responses from origins passed on.
    pub responses_ok: u64,
    /// Error responses the proxy wrote itself.
    pub responses_error_status: u64,
    /// What went wrong, by kind.
    pub errors: ProxyErrors,
    /// Bytes written to the guest.
    pub bytes_to_guest: u64,
    /// Bytes read from the guest.
    pub bytes_from_guest: u64,
    /// The guest's WebSockets.
    pub websockets: WebSocketCounters,
}

/// The guest's WebSocket sessions (carried by the browser's `WebSocket`, natively by a
/// WebSocket client).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(target_arch = "wasm32", derive(Tsify))]
pub struct WebSocketCounters {
    /// Sessions carried now.
    pub open: u64,
    /// Sessions opened (answered 101) since start.
    pub opened: u64,
    /// Upgrades refused because the server side did not open (502, 403, 504).
    pub refused: u64,
    /// Messages sent to the guest.
    pub messages_to_guest: u64,
    /// Messages received from the guest.
    pub messages_from_guest: u64,
    /// Payload bytes sent to the guest.
    pub bytes_to_guest: u64,
    /// Payload bytes received from the guest.
    pub bytes_from_guest: u64,
}

/// The proxy's error counters.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(target_arch = "wasm32", derive(Tsify))]
pub struct ProxyErrors {
    /// Requests refused as malformed (4xx).
    pub bad_requests: u64,
    /// Requests the transport could not carry (502, 504).
    pub transport_errors: u64,
    /// Responses cut off mid-body.
    pub aborted_responses: u64,
    /// Of `badRequests`: heads over `limits.maxHeadBytes` (431).
    pub heads_too_large: u64,
    /// Bodies over `limits.maxRequestBody`: 413 (also in `badRequests`), or closed
    /// mid-response.
    pub bodies_too_large: u64,
}

/// The relay's connection and counters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(target_arch = "wasm32", derive(Tsify))]
pub struct RelayCounters {
    /// `connecting`, `up` or `down` (waiting before the next attempt).
    pub state: &'static str,
    /// The Wisp version of the current connection (1 or 2), when up.
    pub version: Option<u8>,
    /// Connections that completed the handshake.
    pub connects: u64,
    /// Attempts that failed (dial or handshake).
    pub connect_failures: u64,
    /// Connections lost after the handshake.
    pub losses: u64,
    /// Streams and UDP flows open now.
    pub streams_open: u64,
    /// Streams and UDP flows opened so far.
    pub streams_opened: u64,
    /// Streams the relay refused or closed abnormally.
    pub streams_failed: u64,
    /// Payload bytes sent to the relay.
    pub bytes_to_relay: u64,
    /// Payload bytes received from the relay.
    pub bytes_from_relay: u64,
    /// WebSocket messages sent to the relay.
    pub messages_to_relay: u64,
    /// WebSocket messages received from the relay.
    pub messages_from_relay: u64,
    /// Datagrams from the relay dropped because their flow's queue was full.
    pub datagrams_dropped: u64,
    /// Packets from the relay that were malformed or broke the protocol (ignored).
    pub protocol_errors: u64,
    /// The last connection error.
    pub last_error: Option<String>,
}

impl RelayCounters {
    /// The document's form of the relay's stats.
    fn of(relay: &Relay) -> Self {
        let r = relay.stats();
        Self {
            state: match r.state {
                RelayState::Connecting => "connecting",
                RelayState::Up => "up",
                RelayState::Down => "down",
            },
            version: r.version.map(|v| match v {
                WispVersion::V1 => 1,
                WispVersion::V2 => 2,
            }),
            connects: r.connects,
            connect_failures: r.connect_failures,
            losses: r.losses,
            streams_open: r.streams_open,
            streams_opened: r.streams_opened,
            streams_failed: r.streams_failed,
            bytes_to_relay: r.bytes_to_relay,
            bytes_from_relay: r.bytes_from_relay,
            messages_to_relay: r.messages_to_relay,
            messages_from_relay: r.messages_from_relay,
            datagrams_dropped: r.datagrams_dropped,
            protocol_errors: r.protocol_errors,
            last_error: r.last_error,
        }
    }
}

/// What the stats are gathered from besides the stack and the proxy.
#[derive(Debug, Clone, Copy, Default)]
pub struct Extra {
    /// Frames the link's stream decoder skipped.
    pub stream_dropped: u64,
    /// Frames the link dropped because its inbox was full (counted as `queueFull`).
    pub inbox_dropped: u64,
    /// Whether a capture is running.
    pub capturing: bool,
    /// Whether the proxy is closed.
    pub closed: bool,
}

fn mac_string(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

impl Stats {
    /// Gathers the counters of the system's stack, proxy and relay now.
    pub fn gather(system: &System, extra: Extra) -> Self {
        let stack = &system.stack;
        let s = stack.stats();
        let p = system.proxy.stats();
        Self {
            frames_in: s.frames_in,
            frames_out: s.frames_out,
            bytes_in: s.bytes_in,
            bytes_out: s.bytes_out,
            drops: Drops {
                total: s.frames_dropped + extra.stream_dropped + extra.inbox_dropped,
                oversized: s.dropped_oversized,
                malformed: s.dropped_malformed,
                unsupported: s.dropped_unsupported,
                not_for_us: s.dropped_not_for_us,
                queue_full: s.dropped_queue_full + extra.inbox_dropped,
                outbound_full: s.dropped_outbound_full,
                no_neighbor: s.dropped_no_neighbor,
                stream_framing: extra.stream_dropped,
                udp_queue_full: s.dropped_udp_queue_full,
            },
            arp_replies: s.arp_replies,
            icmp_echo_replies: s.icmp_echo_replies,
            udp_port_unreachable: s.udp_port_unreachable,
            udp_unreachable: s.udp_unreachable_sent,
            udp_datagrams_in: s.udp_datagrams_in,
            udp_datagrams_out: s.udp_datagrams_out,
            dhcp: DhcpStats {
                offers: s.dhcp_offers,
                acks: s.dhcp_acks,
                naks: s.dhcp_naks,
                pool_exhausted: s.dhcp_pool_exhausted,
                leases: stack
                    .leases()
                    .iter()
                    .map(|lease| LeaseInfo {
                        mac: mac_string(&lease.mac),
                        ip: lease.ip.to_string(),
                    })
                    .collect(),
            },
            dns: DnsStats {
                queries: s.dns_queries,
                errors: s.dns_errors,
                fake_ips: s.dns_fake_ips,
                fake_ips_recycled: s.dns_fake_ips_recycled,
            },
            tcp: TcpStats {
                open: s.tcp_open,
                accepted: s.tcp_accepted,
                refused: s.tcp_refused,
                refused_limit: s.tcp_refused_limit,
            },
            proxy: ProxyCounters {
                connections_total: p.connections_total,
                connections_open: p.connections_open,
                requests: p.requests,
                responses_ok: p.responses_ok,
                responses_error_status: p.responses_error_status,
                errors: ProxyErrors {
                    bad_requests: p.bad_requests,
                    transport_errors: p.transport_errors,
                    aborted_responses: p.aborted_responses,
                    heads_too_large: p.heads_too_large,
                    bodies_too_large: p.bodies_too_large,
                },
                bytes_to_guest: p.bytes_to_guest,
                bytes_from_guest: p.bytes_from_guest,
                websockets: WebSocketCounters {
                    open: p.websockets_open,
                    opened: p.websockets_opened,
                    refused: p.websockets_refused,
                    messages_to_guest: p.websocket_messages_to_guest,
                    messages_from_guest: p.websocket_messages_from_guest,
                    bytes_to_guest: p.websocket_bytes_to_guest,
                    bytes_from_guest: p.websocket_bytes_from_guest,
                },
            },
            relay: system.relay.as_ref().map(RelayCounters::of),
            capturing: extra.capturing,
            closed: extra.closed,
        }
    }
}
