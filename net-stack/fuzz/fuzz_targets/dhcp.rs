//! Arbitrary DHCP payloads in well-formed Ethernet/IPv4/UDP frames to the gateway's port 67,
//! two per input (so a REQUEST can follow a DISCOVER), with time advancing between them.
#![no_main]

use std::net::Ipv4Addr;

use libfuzzer_sys::fuzz_target;
use net_stack::{Config, Instant, Stack};
use net_stack_fuzz::{udp_frame, GATEWAY_MAC, GUEST_MAC};

fuzz_target!(|data: &[u8]| {
    let stack = Stack::new(Config::default()).unwrap();
    // Input: [flags][split: u16 BE][payload...]: the payload is split into two messages.
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let (split, payload) = match rest {
        [a, b, tail @ ..] => (usize::from(u16::from_be_bytes([*a, *b])), tail),
        _ => (usize::MAX, rest),
    };
    let split = split.min(payload.len());
    let (src_ip, dst_ip, dst_mac) = if flags & 1 == 0 {
        (Ipv4Addr::UNSPECIFIED, Ipv4Addr::BROADCAST, [0xff; 6])
    } else {
        (
            Ipv4Addr::new(192, 168, 127, 3),
            Ipv4Addr::new(192, 168, 127, 1),
            GATEWAY_MAC,
        )
    };
    let mut now = 0;
    for message in [&payload[..split], &payload[split..]] {
        if message.is_empty() {
            continue;
        }
        let frame = udp_frame(GUEST_MAC, dst_mac, (src_ip, 68), (dst_ip, 67), message);
        stack.push_frame(&frame);
        stack.poll(Instant::from_millis(now));
        while stack.pop_frame().is_some() {}
        now += i64::from(flags >> 1) * 1000;
    }
    let _ = stack.leases();
    let _ = stack.stats();
});
