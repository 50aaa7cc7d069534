//! Arbitrary frames into a fresh stack with time advancing: ARP, IPv4 (fragments, options),
//! ICMP, UDP, DHCP, DNS and TCP to listeners whose accepted streams are read and written (and
//! some aborted), the catch-all listener for elsewhere among them, and UDP to elsewhere echoed
//! back through the endpoint.
#![no_main]

use std::net::Ipv4Addr;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures::io::{AsyncRead, AsyncWrite};
use futures::task::noop_waker_ref;
use libfuzzer_sys::fuzz_target;
use net_stack::{Config, Instant, ListenAddr, Stack, TcpStream};
use net_stack_fuzz::records;

fuzz_target!(|data: &[u8]| {
    let stack = Stack::new(Config::default()).unwrap();
    let proxy = Ipv4Addr::new(192, 168, 127, 253);
    let listeners = [
        stack.listen(ListenAddr::Ip(proxy), 80).unwrap(),
        stack.listen(ListenAddr::Ip(proxy), 443).unwrap(),
        stack.listen(ListenAddr::FakeIps, 80).unwrap(),
        stack.listen_elsewhere().unwrap(),
    ];
    let udp = stack.bind_udp_elsewhere().unwrap();
    let mut streams: Vec<TcpStream> = Vec::new();
    let mut cx = Context::from_waker(noop_waker_ref());
    let mut now = 0u64;
    let mut buf = [0u8; 2048];
    for (i, (step, frame)) in records(data).into_iter().enumerate() {
        now += step;
        stack.push_frame(&frame);
        stack.poll(Instant::from_millis(now as i64));
        for l in &listeners {
            while let Poll::Ready(s) = l.poll_accept(&mut cx) {
                streams.push(s);
            }
        }
        // Echo every datagram to elsewhere back, as if the remote answered.
        while let Some(d) = udp.try_recv() {
            let _ = udp.send(d.remote, d.guest, &d.payload);
        }
        // Echo what the guest sent; on three frames in six, close, abort or drop one stream.
        for s in &mut streams {
            if let Poll::Ready(Ok(n)) = Pin::new(&mut *s).poll_read(&mut cx, &mut buf) {
                let _ = Pin::new(&mut *s).poll_write(&mut cx, &buf[..n]);
            }
        }
        match i % 6 {
            2 if !streams.is_empty() => {
                let _ = Pin::new(&mut streams[0]).poll_close(&mut cx);
            }
            4 if !streams.is_empty() => streams.remove(0).abort(),
            5 if !streams.is_empty() => drop(streams.remove(0)),
            _ => {}
        }
        stack.poll(Instant::from_millis(now as i64));
        while stack.pop_frame().is_some() {}
        let _ = stack.poll_delay(Instant::from_millis(now as i64));
    }
    // Let timers (retransmission, orphans, leases) run out.
    for _ in 0..4 {
        now += 30_000;
        stack.poll(Instant::from_millis(now as i64));
        while stack.pop_frame().is_some() {}
    }
    drop(streams);
    now += 300_000;
    stack.poll(Instant::from_millis(now as i64));
    while stack.pop_frame().is_some() {}
    let _ = stack.stats();
});
