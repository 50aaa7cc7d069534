//! Frame-level tests of connections the stack opens into the guest (`Stack::connect`,
//! `Stack::probe`): the SYN it sends, the guest's SYN-ACK, RST or silence, and the stream.

#[cfg(target_arch = "wasm32")]
use wasm_bindgen_test::wasm_bindgen_test as test;

mod common;

use std::future::Future;
use std::net::SocketAddrV4;
use std::pin::Pin;
use std::task::{Context, Poll};

use common::*;
use net_stack::{Config, ConnectError, Duration, Instant, Stack};
use smoltcp::wire::{EthernetFrame, Ipv4Packet, TcpControl, TcpPacket};

const T: Instant = Instant::from_millis_const(5_000);
const TIMEOUT: Duration = Duration::from_secs(3);

fn poll_once<F: Future + Unpin>(future: &mut F) -> Poll<F::Output> {
    let mut cx = Context::from_waker(futures::task::noop_waker_ref());
    Pin::new(future).poll(&mut cx)
}

/// The guest's address becomes known to the stack (any frame from it will do).
fn guest_seen(stack: &Stack) {
    let hello = udp_frame((GUEST_IP, 5000), (GW_IP, 9), GW_MAC, b"hi");
    exchange(stack, &hello, T);
}

/// (source port, destination port) of a segment towards the guest.
fn ports(frame: &[u8]) -> (u16, u16) {
    let eth = EthernetFrame::new_checked(frame).unwrap();
    let ip = Ipv4Packet::new_checked(eth.payload()).unwrap();
    let tcp = TcpPacket::new_checked(ip.payload()).unwrap();
    (tcp.src_port(), tcp.dst_port())
}

#[test]
fn addresses_that_are_not_a_known_guest_are_refused_before_any_frame() {
    let (stack, _rec) = stack_with(Config::default());
    let guest = SocketAddrV4::new(GUEST_IP, 8000);
    let error = |addr| stack.connect(addr, TIMEOUT).err();
    assert_eq!(
        error(SocketAddrV4::new(GUEST_IP, 0)),
        Some(ConnectError::PortZero)
    );
    assert_eq!(error(guest), Some(ConnectError::UnknownGuest(GUEST_IP)));
    for ip in [
        GW_IP,
        PROXY_IP,
        smoltcp::wire::Ipv4Address::new(192, 168, 127, 0),
        smoltcp::wire::Ipv4Address::new(192, 168, 127, 255),
        smoltcp::wire::Ipv4Address::new(10, 0, 0, 3),
    ] {
        assert_eq!(
            error(SocketAddrV4::new(ip, 80)),
            Some(ConnectError::NotGuest(ip))
        );
    }
    assert_eq!(stack.pop_frame(), None);
    assert_eq!(stack.stats().tcp_open, 0);
}

#[test]
fn a_connection_into_the_guest_carries_data_both_ways() {
    let (stack, rec) = stack_with(Config::default());
    with_dump(&rec, "inbound_connect", || {
        guest_seen(&stack);
        let guest = SocketAddrV4::new(GUEST_IP, 8000);
        let mut connecting = stack.connect(guest, TIMEOUT).unwrap();
        assert!(poll_once(&mut connecting).is_pending());
        stack.poll(T);
        // The SYN: from the gateway, a port of the dynamic range, MSS and window scale.
        let syn = stack.pop_frame().expect("a SYN");
        let seg = segment(&syn);
        assert!(seg.syn && !seg.ack && !seg.rst);
        assert_eq!(seg.src, (GW_IP, 49152));
        assert_eq!(ports(&syn), (49152, 8000));
        assert_eq!(seg.mss, Some(1460));
        assert!(seg.wscale.is_some());
        assert!(poll_once(&mut connecting).is_pending());

        // The guest answers SYN-ACK; the stack ACKs and the stream is there.
        let isn = seg.seq_number;
        let syn_ack = tcp_frame(GW_IP, 8000, 49152, TcpControl::Syn, 7000, Some(isn + 1));
        let out = exchange(&stack, &syn_ack, T);
        assert_eq!(out.len(), 1, "the handshake's ACK");
        let ack = segment(&out[0]);
        assert!(ack.ack && !ack.syn);
        assert_eq!(ack.ack_number, 7001);
        let Poll::Ready(Ok(mut stream)) = poll_once(&mut connecting) else {
            panic!("connected");
        };
        assert_eq!(stream.local_addr(), SocketAddrV4::new(GW_IP, 49152));
        assert_eq!(stream.peer_addr(), guest);
        assert_eq!(stack.stats().tcp_open, 1);

        // Stack → guest.
        assert!(matches!(
            try_write(&mut stream, b"GET / HTTP/1.1\r\n\r\n"),
            Poll::Ready(Ok(18))
        ));
        stack.poll(T);
        let out: Vec<_> = std::iter::from_fn(|| stack.pop_frame()).collect();
        assert_eq!(out.len(), 1);
        assert_eq!(segment(&out[0]).seq_number, isn + 1);
        // Guest → stack.
        let reply = tcp_data_frame(
            GW_IP,
            8000,
            49152,
            TcpControl::Psh,
            7001,
            Some(isn + 19),
            b"HTTP/1.1 200 OK\r\n\r\n",
        );
        exchange(&stack, &reply, T);
        let mut buf = [0u8; 64];
        assert!(matches!(
            try_read(&mut stream, &mut buf),
            Poll::Ready(Ok(19))
        ));
        assert_eq!(&buf[..19], b"HTTP/1.1 200 OK\r\n\r\n");

        // A second connection takes the next port.
        let mut second = stack.connect(guest, TIMEOUT).unwrap();
        assert!(poll_once(&mut second).is_pending());
        stack.poll(T);
        assert_eq!(ports(&stack.pop_frame().unwrap()), (49153, 8000));
    });
}

#[test]
fn rst_is_refused_silence_times_out_and_dropping_resets() {
    let (stack, rec) = stack_with(Config::default());
    with_dump(&rec, "inbound_refused", || {
        guest_seen(&stack);
        // RST: refused.
        let guest = SocketAddrV4::new(GUEST_IP, 9);
        let mut refused = stack.connect(guest, TIMEOUT).unwrap();
        stack.poll(T);
        let syn = segment(&stack.pop_frame().unwrap());
        let rst = tcp_frame(
            GW_IP,
            9,
            syn.src.1,
            TcpControl::Rst,
            0,
            Some(syn.seq_number + 1),
        );
        exchange(&stack, &rst, T);
        assert!(matches!(
            poll_once(&mut refused),
            Poll::Ready(Err(ConnectError::Refused(g))) if g == guest
        ));
        assert_eq!(stack.stats().tcp_open, 0, "the socket is freed");

        // Silence: SYNs are retransmitted, then the attempt times out.
        let quiet = SocketAddrV4::new(GUEST_IP, 10);
        let mut silent = stack.connect(quiet, TIMEOUT).unwrap();
        stack.poll(T);
        assert!(segment(&stack.pop_frame().unwrap()).syn);
        let mut now = T;
        let mut syns = 1;
        let outcome = loop {
            if let Poll::Ready(outcome) = poll_once(&mut silent) {
                break outcome;
            }
            now += Duration::from_millis(250);
            assert!(now < T + Duration::from_secs(10), "no timeout");
            stack.poll(now);
            syns += std::iter::from_fn(|| stack.pop_frame()).count();
        };
        assert!(matches!(outcome, Err(ConnectError::TimedOut(g, t)) if g == quiet && t == TIMEOUT));
        assert!(syns >= 2, "{syns} SYNs");
        assert!(now >= T + TIMEOUT, "not before the timeout");
        assert_eq!(stack.stats().tcp_open, 0);

        // Dropped while connecting: the guest's late SYN-ACK finds a reset.
        let late = SocketAddrV4::new(GUEST_IP, 11);
        let dropped = stack.connect(late, TIMEOUT).unwrap();
        stack.poll(now);
        let syn = segment(&stack.pop_frame().unwrap());
        drop(dropped);
        stack.poll(now);
        while stack.pop_frame().is_some() {}
        let syn_ack = tcp_frame(
            GW_IP,
            11,
            syn.src.1,
            TcpControl::Syn,
            1,
            Some(syn.seq_number + 1),
        );
        let out = exchange(&stack, &syn_ack, now);
        assert!(out.iter().all(|f| segment(f).rst), "only RST answers it");
        stack.poll(now + Duration::from_secs(60));
        assert_eq!(stack.stats().tcp_open, 0);
    });
}

#[test]
fn probe_tells_listening_from_closed() {
    let (stack, _rec) = stack_with(Config::default());
    guest_seen(&stack);
    for (port, listening) in [(22u16, true), (23, false)] {
        let mut probe = Box::pin(stack.probe(SocketAddrV4::new(GUEST_IP, port), TIMEOUT));
        assert!(poll_once(&mut probe).is_pending());
        stack.poll(T);
        let syn = segment(&stack.pop_frame().unwrap());
        let answer = if listening {
            tcp_frame(
                GW_IP,
                port,
                syn.src.1,
                TcpControl::Syn,
                1,
                Some(syn.seq_number + 1),
            )
        } else {
            tcp_frame(
                GW_IP,
                port,
                syn.src.1,
                TcpControl::Rst,
                0,
                Some(syn.seq_number + 1),
            )
        };
        exchange(&stack, &answer, T);
        assert_eq!(poll_once(&mut probe), Poll::Ready(Ok(listening)));
        stack.poll(T);
        let out: Vec<_> = std::iter::from_fn(|| stack.pop_frame()).collect();
        if listening {
            assert!(
                out.iter().any(|f| segment(f).rst),
                "the probe resets what it opened"
            );
        }
    }
}
