//! `NetProxy.stats()`: the stack's and the proxy's counters as a plain JavaScript object
//! (the shape is the `NetProxyStats` interface in the generated TypeScript).

use http_proxy::ProxyStats;
use js_sys::{Array, Object, Reflect};
use net_stack::{Lease, Stats};
use wasm_bindgen::{JsCast, JsValue};

/// Everything `stats()` reports, gathered before conversion.
pub struct Snapshot {
    /// The stack's counters.
    pub stack: Stats,
    /// Current DHCP leases.
    pub leases: Vec<Lease>,
    /// The proxy's counters.
    pub proxy: ProxyStats,
    /// Frames skipped by the `pushStream` decoder.
    pub stream_dropped: u64,
    /// Whether a capture is running.
    pub capturing: bool,
    /// Whether `close` was called.
    pub closed: bool,
}

/// Builds a plain object from `(key, value)` pairs.
fn object(fields: &[(&str, JsValue)]) -> JsValue {
    let obj = Object::new();
    for (key, value) in fields {
        // Setting a property on a fresh plain object cannot fail.
        let _ = Reflect::set(&obj, &JsValue::from_str(key), value);
    }
    obj.into()
}

fn n(value: u64) -> JsValue {
    JsValue::from_f64(value as f64)
}

fn mac_string(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// The size of this module's WebAssembly memory in bytes.
fn wasm_memory_bytes() -> f64 {
    let memory: js_sys::WebAssembly::Memory = wasm_bindgen::memory().unchecked_into();
    let buffer = memory.buffer();
    Reflect::get(&buffer, &JsValue::from_str("byteLength"))
        .ok()
        .and_then(|v| v.as_f64())
        .unwrap_or(0.0)
}

/// The `NetProxyStats` object for `s`.
pub fn to_js(s: &Snapshot) -> JsValue {
    let st = &s.stack;
    let p = &s.proxy;
    let leases: Array = s
        .leases
        .iter()
        .map(|lease| {
            object(&[
                ("mac", JsValue::from_str(&mac_string(&lease.mac))),
                ("ip", JsValue::from_str(&lease.ip.to_string())),
            ])
        })
        .collect();
    object(&[
        ("framesIn", n(st.frames_in)),
        ("framesOut", n(st.frames_out)),
        ("bytesIn", n(st.bytes_in)),
        ("bytesOut", n(st.bytes_out)),
        (
            "drops",
            object(&[
                ("total", n(st.frames_dropped + s.stream_dropped)),
                ("oversized", n(st.dropped_oversized)),
                ("malformed", n(st.dropped_malformed)),
                ("unsupported", n(st.dropped_unsupported)),
                ("notForUs", n(st.dropped_not_for_us)),
                ("queueFull", n(st.dropped_queue_full)),
                ("outboundFull", n(st.dropped_outbound_full)),
                ("noNeighbor", n(st.dropped_no_neighbor)),
                ("streamFraming", n(s.stream_dropped)),
            ]),
        ),
        ("arpReplies", n(st.arp_replies)),
        ("icmpEchoReplies", n(st.icmp_echo_replies)),
        ("udpPortUnreachable", n(st.udp_port_unreachable)),
        (
            "dhcp",
            object(&[
                ("offers", n(st.dhcp_offers)),
                ("acks", n(st.dhcp_acks)),
                ("naks", n(st.dhcp_naks)),
                ("poolExhausted", n(st.dhcp_pool_exhausted)),
                ("leases", leases.into()),
            ]),
        ),
        (
            "dns",
            object(&[
                ("queries", n(st.dns_queries)),
                ("errors", n(st.dns_errors)),
                ("fakeIps", n(st.dns_fake_ips)),
                ("fakeIpsRecycled", n(st.dns_fake_ips_recycled)),
            ]),
        ),
        (
            "tcp",
            object(&[
                ("open", n(st.tcp_open)),
                ("accepted", n(st.tcp_accepted)),
                ("refused", n(st.tcp_refused)),
                ("refusedLimit", n(st.tcp_refused_limit)),
            ]),
        ),
        (
            "proxy",
            object(&[
                ("connectionsTotal", n(p.connections_total)),
                ("connectionsOpen", n(p.connections_open)),
                ("requests", n(p.requests)),
                ("responsesOk", n(p.responses_ok)),
                ("responsesErrorStatus", n(p.responses_error_status)),
                (
                    "errors",
                    object(&[
                        ("badRequests", n(p.bad_requests)),
                        ("transportErrors", n(p.transport_errors)),
                        ("abortedResponses", n(p.aborted_responses)),
                        ("headsTooLarge", n(p.heads_too_large)),
                        ("bodiesTooLarge", n(p.bodies_too_large)),
                    ]),
                ),
                ("bytesToGuest", n(p.bytes_to_guest)),
                ("bytesFromGuest", n(p.bytes_from_guest)),
            ]),
        ),
        ("capturing", JsValue::from_bool(s.capturing)),
        ("closed", JsValue::from_bool(s.closed)),
        ("wasmMemoryBytes", JsValue::from_f64(wasm_memory_bytes())),
        ("heapBytes", n(crate::heap::HEAP.live_bytes() as u64)),
        ("heapPeakBytes", n(crate::heap::HEAP.peak_bytes() as u64)),
    ])
}
