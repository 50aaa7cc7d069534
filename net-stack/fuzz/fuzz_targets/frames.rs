//! Arbitrary frames into a fresh stack with time advancing: ARP, IPv4 (fragments, options),
//! ICMP, UDP, DHCP, DNS and TCP to listeners whose accepted streams are read and written (and
//! some aborted), the catch-all listener for elsewhere among them (asking first on odd input
//! lengths: its requests accepted or refused in turn), and UDP to elsewhere echoed back
//! through the endpoint or answered with ICMP unreachable.
#![no_main]

use std::net::Ipv4Addr;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures::io::{AsyncRead, AsyncWrite};
use futures::task::noop_waker_ref;
use libfuzzer_sys::fuzz_target;
use futures::future::LocalBoxFuture;
use net_stack::{Config, Instant, ListenAddr, Stack, TcpStream, Unreachable};
use net_stack_fuzz::records;

fuzz_target!(|data: &[u8]| {
    let stack = Stack::new(Config::default()).unwrap();
    let proxy = Ipv4Addr::new(192, 168, 127, 253);
    let listeners = [
        stack.listen(ListenAddr::Ip(proxy), 80).unwrap(),
        stack.listen(ListenAddr::Ip(proxy), 443).unwrap(),
        stack.listen(ListenAddr::FakeIps, 80).unwrap(),
        if data.len() % 2 == 1 {
            stack.ask_elsewhere().unwrap()
        } else {
            stack.listen_elsewhere().unwrap()
        },
    ];
    let mut accepting: Vec<LocalBoxFuture<'static, Option<TcpStream>>> = Vec::new();
    let mut requests = 0usize;
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
            while let Poll::Ready(request) = l.poll_request(&mut cx) {
                requests += 1;
                match requests % 3 {
                    0 => request.refuse(),
                    1 => accepting.push(Box::pin(request.accept())),
                    _ => drop(request),
                }
            }
        }
        accepting.retain_mut(|handshake| match handshake.as_mut().poll(&mut cx) {
            Poll::Ready(Some(s)) => {
                streams.push(s);
                false
            }
            Poll::Ready(None) => false,
            Poll::Pending => true,
        });
        // Echo datagrams to elsewhere back, as if the remote answered; refuse one in three.
        let mut datagrams = 0usize;
        while let Some(d) = udp.try_recv() {
            datagrams += 1;
            if datagrams % 3 == 0 {
                let _ = udp.unreachable(&d, Unreachable::Port);
            } else {
                let _ = udp.send(d.remote, d.guest, &d.payload);
            }
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
    drop(accepting);
    drop(streams);
    now += 300_000;
    stack.poll(Instant::from_millis(now as i64));
    while stack.pop_frame().is_some() {}
    let _ = stack.stats();
});
