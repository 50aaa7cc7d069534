//! Arbitrary DNS messages in well-formed Ethernet/IPv4/UDP frames to the gateway's port 53;
//! the fake-IP names handed out are looked up again.
#![no_main]

use std::net::Ipv4Addr;

use libfuzzer_sys::fuzz_target;
use net_stack::{Config, Instant, Stack};
use net_stack_fuzz::{udp_frame, GATEWAY_MAC, GUEST_MAC};

fuzz_target!(|data: &[u8]| {
    let mut config = Config::default();
    config.dns.hosts = vec![("host.test".into(), Ipv4Addr::new(192, 168, 127, 254))];
    let stack = Stack::new(config).unwrap();
    let guest = Ipv4Addr::new(192, 168, 127, 3);
    let gateway = Ipv4Addr::new(192, 168, 127, 1);
    let frame = udp_frame(GUEST_MAC, GATEWAY_MAC, (guest, 40000), (gateway, 53), data);
    stack.push_frame(&frame);
    stack.poll(Instant::from_millis(0));
    while let Some(reply) = stack.pop_frame() {
        // An A answer's address (last 4 bytes of a one-answer reply) may be a fake IP.
        if reply.len() >= 4 {
            let n = reply.len();
            let ip = Ipv4Addr::new(reply[n - 4], reply[n - 3], reply[n - 2], reply[n - 1]);
            let _ = stack.fake_ip_name(ip);
        }
    }
    let _ = stack.stats();
});
