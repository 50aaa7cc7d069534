//! Frame-level tests of what the stack hands out for elsewhere: the catch-all TCP listener
//! (`Stack::listen_elsewhere`), `TcpStream::abort`, and UDP to elsewhere
//! (`Stack::bind_udp_elsewhere`). Hand-built guest frames in, exact frames out.

#[cfg(target_arch = "wasm32")]
use wasm_bindgen_test::wasm_bindgen_test as test;

mod common;

use std::net::SocketAddrV4;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use common::*;
use futures::task::ArcWake;
use net_stack::{
    Config, ConnectionRequest, Datagram, Instant, ListenAddr, ListenError, Stack, TcpListener,
    TcpStream, UdpBindError, UdpSendError, Unreachable,
};
use smoltcp::wire::{
    Icmpv4Packet, IpProtocol, Ipv4Address, Ipv4Packet, TcpControl, TcpRepr, TcpSeqNumber,
};

const T: Instant = Instant::from_millis_const(5_000);
/// An address on the Internet.
const REMOTE: Ipv4Address = Ipv4Address::new(93, 184, 216, 34);
/// A fake IP of the DNS server's pool (198.18.0.0/15).
const FAKE: Ipv4Address = Ipv4Address::new(198, 18, 0, 9);
/// The window the stack announces with an empty 256 KiB receive buffer: 262,140 bytes
/// (see `safe_rx_capacity`) shifted by 2.
const FULL_WINDOW: u16 = 65535;

fn accept_now(listener: &TcpListener) -> Option<TcpStream> {
    let mut cx = Context::from_waker(futures::task::noop_waker_ref());
    match listener.poll_accept(&mut cx) {
        Poll::Ready(s) => Some(s),
        Poll::Pending => None,
    }
}

/// Reads everything available right now.
fn read_available(stream: &mut TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    while let Poll::Ready(Ok(n)) = try_read(stream, &mut buf) {
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
    }
    out
}

/// A segment the stack sends: no options, an ACK of `ack`.
fn repr(
    src_port: u16,
    dst_port: u16,
    control: TcpControl,
    seq: u32,
    ack: u32,
    window: u16,
    payload: &[u8],
) -> TcpRepr<'_> {
    TcpRepr {
        src_port,
        dst_port,
        control,
        seq_number: TcpSeqNumber(seq as i32),
        ack_number: Some(TcpSeqNumber(ack as i32)),
        window_len: window,
        window_scale: None,
        max_seg_size: None,
        sack_permitted: false,
        sack_ranges: [None, None, None],
        timestamp: None,
        payload,
    }
}

/// The SYN-ACK the stack must answer a guest SYN (seq `seq`, window scale 7, MSS 1460) with.
fn syn_ack(src_port: u16, dst_port: u16, isn: u32, seq: u32) -> TcpRepr<'static> {
    TcpRepr {
        window_scale: Some(2),
        max_seg_size: Some(1460),
        ..repr(
            src_port,
            dst_port,
            TcpControl::Syn,
            isn,
            seq + 1,
            FULL_WINDOW,
            &[],
        )
    }
}

/// Sends a SYN from the guest's `src_port` and completes the handshake; returns the stack's
/// initial sequence number.
fn handshake(stack: &Stack, dst: Ipv4Address, src_port: u16, dst_port: u16) -> u32 {
    let out = exchange(
        stack,
        &tcp_frame(dst, src_port, dst_port, TcpControl::Syn, 1000, None),
        T,
    );
    assert_eq!(out.len(), 1, "{dst}:{dst_port}");
    let isn = segment(&out[0]).seq_number;
    assert_eq!(
        out[0],
        tcp_to_guest_frame(dst, &syn_ack(dst_port, src_port, isn, 1000)),
        "SYN-ACK from {dst}:{dst_port}"
    );
    let ack = tcp_frame(
        dst,
        src_port,
        dst_port,
        TcpControl::None,
        1001,
        Some(isn.wrapping_add(1)),
    );
    assert!(exchange(stack, &ack, T).is_empty());
    isn
}

#[test]
fn the_catch_all_serves_any_address_elsewhere_byte_exact() {
    let (stack, rec) = stack_with(Config::default());
    with_dump(&rec, "elsewhere_tcp", || {
        let listener = stack.listen_elsewhere().unwrap();
        assert_eq!(listener.local_port(), 0);
        // SYN to 93.184.216.34:22 → SYN-ACK from 93.184.216.34:22.
        let isn = handshake(&stack, REMOTE, 40000, 22);
        let mut stream = accept_now(&listener).expect("accepted");
        assert_eq!(stream.local_addr(), SocketAddrV4::new(REMOTE, 22));
        assert_eq!(stream.peer_addr(), SocketAddrV4::new(GUEST_IP, 40000));

        // Guest → stream. The ACK waits (delayed ACK) for our answer.
        let hello = b"SSH-2.0-guest\r\n";
        let data = tcp_data_frame(
            REMOTE,
            40000,
            22,
            TcpControl::Psh,
            1001,
            Some(isn.wrapping_add(1)),
            hello,
        );
        assert!(exchange(&stack, &data, T).is_empty());
        assert_eq!(read_available(&mut stream), hello);

        // Stream → guest: one segment with the data and the ACK, the window whole again.
        let banner = b"SSH-2.0-relay\r\n";
        assert!(matches!(
            try_write(&mut stream, banner),
            Poll::Ready(Ok(15))
        ));
        stack.poll(T);
        let out: Vec<_> = std::iter::from_fn(|| stack.pop_frame()).collect();
        let answer = repr(
            22,
            40000,
            TcpControl::Psh,
            isn.wrapping_add(1),
            1016,
            FULL_WINDOW,
            banner,
        );
        assert_eq!(out, vec![tcp_to_guest_frame(REMOTE, &answer)]);

        // The guest acknowledges and closes: we ACK its FIN, the stream reads EOF.
        let fin = tcp_frame(
            REMOTE,
            40000,
            22,
            TcpControl::Fin,
            1016,
            Some(isn.wrapping_add(16)),
        );
        let out = exchange(&stack, &fin, T);
        let ack_of_fin = repr(
            22,
            40000,
            TcpControl::None,
            isn.wrapping_add(16),
            1017,
            FULL_WINDOW,
            &[],
        );
        assert_eq!(out, vec![tcp_to_guest_frame(REMOTE, &ack_of_fin)]);
        assert!(matches!(
            try_read(&mut stream, &mut [0u8; 16]),
            Poll::Ready(Ok(0))
        ));
        // Our close: FIN.
        assert!(try_close(&mut stream).is_ready());
        stack.poll(T);
        let out: Vec<_> = std::iter::from_fn(|| stack.pop_frame()).collect();
        let our_fin = repr(
            22,
            40000,
            TcpControl::Fin,
            isn.wrapping_add(16),
            1017,
            FULL_WINDOW,
            &[],
        );
        assert_eq!(out, vec![tcp_to_guest_frame(REMOTE, &our_fin)]);
        let last_ack = tcp_frame(
            REMOTE,
            40000,
            22,
            TcpControl::None,
            1017,
            Some(isn.wrapping_add(17)),
        );
        assert!(exchange(&stack, &last_ack, T).is_empty());
        drop(stream);
        stack.poll(T);
        let s = stack.stats();
        assert_eq!((s.tcp_accepted, s.tcp_refused, s.tcp_open), (1, 0, 0));
    });
}

#[test]
fn exact_and_fake_ip_listeners_win_and_our_own_addresses_stay_refused() {
    let (stack, rec) = stack_with(Config::default());
    with_dump(&rec, "elsewhere_precedence", || {
        let listeners = [
            stack.listen(ListenAddr::Ip(PROXY_IP), 80).unwrap(),
            stack.listen(ListenAddr::FakeIps, 443).unwrap(),
            stack.listen_elsewhere().unwrap(),
        ];
        let served = [
            (PROXY_IP, 80, 0),
            (FAKE, 443, 1),
            // A fake IP on a port without a fake-IP listener, and any address outside.
            (FAKE, 80, 2),
            (Ipv4Address::new(10, 1, 2, 3), 5432, 2),
            (Ipv4Address::new(8, 8, 8, 8), 53, 2),
        ];
        // Kept open: a dropped stream would send FIN.
        let mut streams = Vec::new();
        for (i, (dst, port, owner)) in served.into_iter().enumerate() {
            handshake(&stack, dst, 41000 + i as u16, port);
            for (j, listener) in listeners.iter().enumerate() {
                let accepted = accept_now(listener);
                assert_eq!(
                    accepted.is_some(),
                    j == owner,
                    "{dst}:{port} on listener {j}"
                );
                if let Some(stream) = accepted {
                    assert_eq!(stream.local_addr(), SocketAddrV4::new(dst, port));
                    streams.push(stream);
                }
            }
        }
        // Our own addresses, the guest network and what is never routed: the same RST as
        // without a catch-all (seq 0, ACK of the SYN, window 0, from where the guest dialled).
        let refused = [
            (GW_IP, 80),
            (PROXY_IP, 81),
            (Ipv4Address::new(192, 168, 127, 50), 22),
            (Ipv4Address::new(127, 0, 0, 1), 80),
            (Ipv4Address::new(169, 254, 169, 254), 80),
            (Ipv4Address::new(0, 1, 2, 3), 80),
            (Ipv4Address::new(240, 0, 0, 1), 80),
        ];
        for (i, (dst, port)) in refused.into_iter().enumerate() {
            let src_port = 42000 + i as u16;
            let out = exchange(
                &stack,
                &tcp_frame(dst, src_port, port, TcpControl::Syn, 7, None),
                T,
            );
            let rst = tcp_reply_frame(dst, port, src_port, TcpControl::Rst, 0, Some(8));
            assert_eq!(out, vec![rst], "{dst}:{port}");
        }
        let s = stack.stats();
        assert_eq!(
            (s.tcp_accepted, s.tcp_refused, s.tcp_open),
            (5, refused.len() as u64, 5)
        );
    });
}

#[test]
fn one_catch_all_at_a_time_and_dropping_it_restores_rst() {
    let (stack, rec) = stack_with(Config::default());
    with_dump(&rec, "elsewhere_drop", || {
        let listener = stack.listen_elsewhere().unwrap();
        assert_eq!(stack.listen_elsewhere().unwrap_err(), ListenError::InUse);
        let syn = tcp_frame(REMOTE, 40000, 443, TcpControl::Syn, 7, None);
        assert!(segment(&exchange(&stack, &syn, T)[0]).syn);
        // The handshake in progress is reset with the listener.
        drop(listener);
        stack.poll(T);
        let out: Vec<_> = std::iter::from_fn(|| stack.pop_frame()).collect();
        assert_eq!(out.len(), 1);
        assert!(segment(&out[0]).rst);
        assert_eq!(stack.stats().tcp_open, 0);
        let syn = tcp_frame(REMOTE, 40001, 443, TcpControl::Syn, 7, None);
        let rst = tcp_reply_frame(REMOTE, 443, 40001, TcpControl::Rst, 0, Some(8));
        assert_eq!(exchange(&stack, &syn, T), vec![rst]);
        let _again = stack.listen_elsewhere().unwrap();
        let syn = tcp_frame(REMOTE, 40002, 443, TcpControl::Syn, 7, None);
        assert!(segment(&exchange(&stack, &syn, T)[0]).syn);
    });
}

#[test]
fn the_catch_all_has_the_same_limits() {
    let mut config = Config::default();
    config.tcp.max_connections = 3;
    config.tcp.listen_backlog = 2;
    let (stack, rec) = stack_with(config);
    with_dump(&rec, "elsewhere_limits", || {
        let _exact = stack.listen(ListenAddr::Ip(PROXY_IP), 80).unwrap();
        let _any = stack.listen_elsewhere().unwrap();
        let syn = |dst, src_port, port| tcp_frame(dst, src_port, port, TcpControl::Syn, 1, None);
        for src_port in [40010, 40011] {
            let out = exchange(&stack, &syn(REMOTE, src_port, 443), T);
            assert!(segment(&out[0]).syn);
        }
        // The catch-all's backlog is full.
        let out = exchange(&stack, &syn(REMOTE, 40012, 443), T);
        let rst = tcp_reply_frame(REMOTE, 443, 40012, TcpControl::Rst, 0, Some(2));
        assert_eq!(out, vec![rst]);
        // Another listener has its own backlog, but the connection limit is shared.
        let out = exchange(&stack, &syn(PROXY_IP, 40013, 80), T);
        assert!(segment(&out[0]).syn);
        let other = Ipv4Address::new(10, 9, 8, 7);
        let out = exchange(&stack, &syn(other, 40014, 22), T);
        let rst = tcp_reply_frame(other, 22, 40014, TcpControl::Rst, 0, Some(2));
        assert_eq!(out, vec![rst]);
        let s = stack.stats();
        assert_eq!((s.tcp_refused, s.tcp_refused_limit, s.tcp_open), (2, 2, 3));
    });
}

#[test]
fn abort_resets_the_guest_and_frees_the_socket() {
    let (stack, rec) = stack_with(Config::default());
    with_dump(&rec, "elsewhere_abort", || {
        let listener = stack.listen_elsewhere().unwrap();
        let dst = Ipv4Address::new(10, 1, 2, 3);
        let isn = handshake(&stack, dst, 40000, 5432);
        let stream = accept_now(&listener).unwrap();
        // Five bytes arrive that nobody reads: the relay could not reach 10.1.2.3:5432.
        let data = tcp_data_frame(
            dst,
            40000,
            5432,
            TcpControl::Psh,
            1001,
            Some(isn.wrapping_add(1)),
            b"query",
        );
        assert!(exchange(&stack, &data, T).is_empty());
        let mut cx = Context::from_waker(futures::task::noop_waker_ref());
        while stack.poll_wake(&mut cx).is_ready() {}
        stream.abort();
        assert!(stack.poll_wake(&mut cx).is_ready(), "abort asks for a poll");
        stack.poll(T);
        let out: Vec<_> = std::iter::from_fn(|| stack.pop_frame()).collect();
        // smoltcp's RST of an aborted socket: our next sequence number and an ACK of everything
        // received; the unread bytes were discarded with the stream, so the window is whole.
        let rst = repr(
            5432,
            40000,
            TcpControl::Rst,
            isn.wrapping_add(1),
            1006,
            FULL_WINDOW,
            &[],
        );
        assert_eq!(out, vec![tcp_to_guest_frame(dst, &rst)]);
        assert_eq!(stack.stats().tcp_open, 0);
        // The guest's next segment finds no connection: the stack answers RST by itself.
        let late = tcp_frame(
            dst,
            40000,
            5432,
            TcpControl::None,
            1006,
            Some(isn.wrapping_add(1)),
        );
        let out = exchange(&stack, &late, T);
        assert_eq!(
            out,
            vec![tcp_reply_frame(
                dst,
                5432,
                40000,
                TcpControl::Rst,
                isn.wrapping_add(1),
                None
            )]
        );
        // Idle again: a new connection is served.
        handshake(&stack, dst, 40001, 5432);
        let s = stack.stats();
        assert_eq!((s.tcp_accepted, s.tcp_open, s.tcp_refused), (2, 1, 0));
    });
}

#[test]
fn abort_with_a_full_outbound_queue_sends_the_rst_once_there_is_room() {
    let config = Config {
        max_outbound_frames: 1,
        ..Config::default()
    };
    let (stack, rec) = stack_with(config);
    with_dump(&rec, "elsewhere_abort_full", || {
        let listener = stack.listen_elsewhere().unwrap();
        let isn = handshake(&stack, REMOTE, 40000, 443);
        let stream = accept_now(&listener).unwrap();
        // An ARP reply fills the outbound queue.
        let arp = hex("ffffffffffff 020000000001 0806 0001 0800 06 04 0001 020000000001 c0a87f03 000000000000 c0a87f01");
        stack.push_frame(&arp);
        stack.poll(T);
        stream.abort();
        stack.poll(T);
        // The RST waits, and so does the socket.
        assert_eq!(stack.stats().tcp_open, 1);
        assert_eq!(
            stack.pop_frame().map(|f| f[12..14].to_vec()),
            Some(vec![8, 6])
        );
        stack.poll(T);
        let rst = repr(
            443,
            40000,
            TcpControl::Rst,
            isn.wrapping_add(1),
            1001,
            FULL_WINDOW,
            &[],
        );
        assert_eq!(stack.pop_frame(), Some(tcp_to_guest_frame(REMOTE, &rst)));
        assert_eq!(stack.stats().tcp_open, 0);
    });
}

/// A DNS query for "a.b", type A.
fn dns_query() -> Vec<u8> {
    hex("0001 0100 0001 0000 0000 0000 01 61 01 62 00 0001 0001")
}

/// Sets the IPv4 flags and fragment offset field of a frame and fixes the header checksum.
fn fragment(mut frame: Vec<u8>, flags_and_offset: u16) -> Vec<u8> {
    frame[14 + 6..14 + 8].copy_from_slice(&flags_and_offset.to_be_bytes());
    Ipv4Packet::new_unchecked(&mut frame[14..]).fill_checksum();
    frame
}

#[test]
fn udp_to_elsewhere_comes_out_of_the_endpoint_and_the_rest_is_unchanged() {
    let (stack, rec) = stack_with(Config::default());
    with_dump(&rec, "elsewhere_udp_in", || {
        let endpoint = stack.bind_udp_elsewhere().unwrap();
        assert_eq!(stack.bind_udp_elsewhere().unwrap_err(), UdpBindError::InUse);
        assert_eq!(endpoint.max_payload(), 1500 - 28);
        let one = Ipv4Address::new(1, 1, 1, 1);
        let quic = udp_frame((GUEST_IP, 5353), (one, 443), GW_MAC, b"hello");
        assert!(exchange(&stack, &quic, T).is_empty());
        let ntp = udp_frame((GUEST_IP, 40123), (FAKE, 123), GW_MAC, b"ntp?");
        assert!(exchange(&stack, &ntp, T).is_empty());
        assert_eq!(
            endpoint.try_recv(),
            Some(Datagram {
                guest: SocketAddrV4::new(GUEST_IP, 5353),
                remote: SocketAddrV4::new(one, 443),
                payload: b"hello".to_vec(),
            })
        );
        assert_eq!(
            endpoint.try_recv(),
            Some(Datagram {
                guest: SocketAddrV4::new(GUEST_IP, 40123),
                remote: SocketAddrV4::new(FAKE, 123),
                payload: b"ntp?".to_vec(),
            })
        );
        assert_eq!(endpoint.try_recv(), None);

        // DNS at the gateway is still answered by the stack.
        let query = udp_frame((GUEST_IP, 5000), (GW_IP, 53), GW_MAC, &dns_query());
        let out = exchange(&stack, &query, T);
        assert_eq!(out.len(), 1);
        assert_eq!(parse_udp(&out[0]).0, (GW_IP, 53));
        // A closed port of ours still gets ICMP port unreachable.
        let closed = udp_frame((GUEST_IP, 5000), (PROXY_IP, 9), GW_MAC, b"x");
        let out = exchange(&stack, &closed, T);
        assert_eq!(out.len(), 1);
        let ip = Ipv4Packet::new_checked(&out[0][14..]).unwrap();
        assert_eq!(ip.next_header(), IpProtocol::Icmp);
        assert_eq!(
            &Icmpv4Packet::new_checked(ip.payload())
                .unwrap()
                .into_inner()[..2],
            &[3, 3]
        );
        // Broadcasts, the guest network, loopback, a unicast IP sent to the broadcast MAC and
        // IPv4 fragments never reach the endpoint.
        let dropped = [
            udp_frame(
                (GUEST_IP, 5000),
                (Ipv4Address::BROADCAST, 9999),
                [0xff; 6],
                b"x",
            ),
            udp_frame(
                (GUEST_IP, 5000),
                (Ipv4Address::new(192, 168, 127, 255), 9999),
                GW_MAC,
                b"x",
            ),
            udp_frame(
                (GUEST_IP, 5000),
                (Ipv4Address::new(192, 168, 127, 50), 9),
                GW_MAC,
                b"x",
            ),
            udp_frame(
                (GUEST_IP, 5000),
                (Ipv4Address::new(127, 0, 0, 1), 53),
                GW_MAC,
                b"x",
            ),
            udp_frame((GUEST_IP, 5000), (one, 53), [0xff; 6], b"x"),
            fragment(quic.clone(), 0x2000),
            fragment(quic.clone(), 0x0010),
        ];
        for frame in &dropped {
            assert!(exchange(&stack, frame, T).is_empty());
        }
        assert_eq!(endpoint.try_recv(), None);
        let s = stack.stats();
        assert_eq!(
            (
                s.udp_datagrams_in,
                s.dns_queries,
                s.udp_port_unreachable,
                s.dropped_unsupported,
                s.dropped_not_for_us,
            ),
            (2, 1, 1, 3, 4)
        );
    });
}

#[test]
fn the_endpoint_sends_byte_exact_datagrams_to_the_guest() {
    let (stack, rec) = stack_with(Config::default());
    with_dump(&rec, "elsewhere_udp_out", || {
        let endpoint = stack.bind_udp_elsewhere().unwrap();
        let one = SocketAddrV4::new(Ipv4Address::new(1, 1, 1, 1), 443);
        let guest = SocketAddrV4::new(GUEST_IP, 5353);
        // The guest's MAC is not known yet.
        assert_eq!(
            endpoint.send(one, guest, b"world"),
            Err(UdpSendError::NoNeighbor(GUEST_IP))
        );
        assert_eq!(stack.stats().dropped_no_neighbor, 1);
        let quic = udp_frame((GUEST_IP, 5353), (*one.ip(), 443), GW_MAC, b"hello");
        assert!(exchange(&stack, &quic, T).is_empty());
        let mut cx = Context::from_waker(futures::task::noop_waker_ref());
        while stack.poll_wake(&mut cx).is_ready() {}

        endpoint.send(one, guest, b"world").unwrap();
        assert!(stack.poll_wake(&mut cx).is_ready(), "send asks for a poll");
        let frame = stack.pop_frame().unwrap();
        let mut expected = hex("020000000001 5a94efe40cdd 0800
             4500 0021 0000 4000 4011 f91e 01010101 c0a87f03
             01bb 14e9 000d 59a6");
        expected.extend_from_slice(b"world");
        assert_eq!(frame, expected);
        assert_eq!(parse_udp(&frame).2, b"world", "checksums verified");

        // From a fake IP, as the guest addressed it.
        let fake = SocketAddrV4::new(FAKE, 123);
        endpoint
            .send(fake, SocketAddrV4::new(GUEST_IP, 40123), b"ntp")
            .unwrap();
        let mut expected = hex("020000000001 5a94efe40cdd 0800
             4500 001f 0000 4000 4011 3507 c61200 09 c0a87f03
             007b 9cbb 000b 7e65");
        expected.extend_from_slice(b"ntp");
        assert_eq!(stack.pop_frame(), Some(expected));

        // The largest payload fills the MTU exactly; one byte more is refused, not fragmented.
        let largest = vec![0x5a; 1472];
        endpoint.send(one, guest, &largest).unwrap();
        let frame = stack.pop_frame().unwrap();
        assert_eq!(frame.len(), 14 + 1500);
        assert_eq!(parse_udp(&frame).2, largest);
        assert_eq!(
            endpoint.send(one, guest, &[0; 1473]),
            Err(UdpSendError::TooLarge {
                len: 1473,
                max: 1472
            })
        );
        // Our own services cannot be spoken for.
        let dns = SocketAddrV4::new(GW_IP, 53);
        assert_eq!(
            endpoint.send(dns, guest, b"x"),
            Err(UdpSendError::NotElsewhere(GW_IP))
        );
        assert_eq!(stack.pop_frame(), None);
        let s = stack.stats();
        assert_eq!((s.udp_datagrams_out, s.frames_out), (3, 3));
    });
}

#[test]
fn both_udp_queues_are_bounded_and_drops_are_counted() {
    let mut config = Config {
        max_outbound_frames: 1,
        ..Config::default()
    };
    config.udp.max_queued_datagrams = 2;
    let (stack, rec) = stack_with(config);
    with_dump(&rec, "elsewhere_udp_full", || {
        let endpoint = stack.bind_udp_elsewhere().unwrap();
        let one = Ipv4Address::new(1, 1, 1, 1);
        for n in 0..3u8 {
            let frame = udp_frame((GUEST_IP, 5353), (one, 443), GW_MAC, &[n]);
            assert!(exchange(&stack, &frame, T).is_empty());
        }
        let s = stack.stats();
        assert_eq!(
            (
                s.udp_datagrams_in,
                s.dropped_udp_queue_full,
                s.frames_dropped
            ),
            (2, 1, 1)
        );
        assert_eq!(endpoint.try_recv().unwrap().payload, [0]);
        // Room for one again.
        let frame = udp_frame((GUEST_IP, 5353), (one, 443), GW_MAC, &[3]);
        assert!(exchange(&stack, &frame, T).is_empty());
        assert_eq!(endpoint.try_recv().unwrap().payload, [1]);
        assert_eq!(endpoint.try_recv().unwrap().payload, [3]);
        // Towards the guest: one frame waits, the next is refused and counted.
        let remote = SocketAddrV4::new(one, 443);
        let guest = SocketAddrV4::new(GUEST_IP, 5353);
        endpoint.send(remote, guest, b"a").unwrap();
        assert_eq!(
            endpoint.send(remote, guest, b"b"),
            Err(UdpSendError::OutboundFull)
        );
        let s = stack.stats();
        assert_eq!((s.udp_datagrams_out, s.dropped_outbound_full), (1, 1));
        assert_eq!(parse_udp(&stack.pop_frame().unwrap()).2, b"a");
    });
}

#[test]
fn dropping_the_endpoint_restores_the_old_behaviour() {
    let (stack, rec) = stack_with(Config::default());
    with_dump(&rec, "elsewhere_udp_drop", || {
        let one = Ipv4Address::new(1, 1, 1, 1);
        let frame = udp_frame((GUEST_IP, 5353), (one, 443), GW_MAC, b"hello");
        // No endpoint: dropped as not for us.
        assert!(exchange(&stack, &frame, T).is_empty());
        assert_eq!(stack.stats().dropped_not_for_us, 1);
        let endpoint = stack.bind_udp_elsewhere().unwrap();
        assert!(exchange(&stack, &frame, T).is_empty());
        assert_eq!(stack.stats().udp_datagrams_in, 1);
        // Unread datagrams go with the endpoint.
        drop(endpoint);
        assert!(exchange(&stack, &frame, T).is_empty());
        assert_eq!(stack.stats().dropped_not_for_us, 2);
        let endpoint = stack.bind_udp_elsewhere().unwrap();
        assert_eq!(endpoint.try_recv(), None);
    });
}

struct CountingWaker(AtomicUsize);

impl ArcWake for CountingWaker {
    fn wake_by_ref(arc_self: &Arc<Self>) {
        arc_self.0.fetch_add(1, Ordering::SeqCst);
    }
}

#[test]
fn the_endpoint_reader_is_woken_by_poll() {
    let (stack, _rec) = stack_with(Config::default());
    let endpoint = stack.bind_udp_elsewhere().unwrap();
    let counter = Arc::new(CountingWaker(AtomicUsize::new(0)));
    let waker = futures::task::waker(counter.clone());
    let mut cx = Context::from_waker(&waker);
    assert!(endpoint.poll_recv(&mut cx).is_pending());
    let frame = udp_frame(
        (GUEST_IP, 5353),
        (Ipv4Address::new(1, 1, 1, 1), 443),
        GW_MAC,
        b"hi",
    );
    stack.push_frame(&frame);
    assert_eq!(counter.0.load(Ordering::SeqCst), 0);
    stack.poll(T);
    assert_eq!(counter.0.load(Ordering::SeqCst), 1);
    assert!(matches!(endpoint.poll_recv(&mut cx), Poll::Ready(d) if d.payload == b"hi"));
    // The async form.
    stack.push_frame(&frame);
    stack.poll(T);
    let datagram = futures::executor::block_on(endpoint.recv());
    assert_eq!(datagram.guest, SocketAddrV4::new(GUEST_IP, 5353));
}

#[test]
fn refused_datagrams_get_icmp_unreachable_quoting_what_the_guest_sent() {
    let (stack, rec) = stack_with(Config::default());
    with_dump(&rec, "elsewhere_udp_unreachable", || {
        let endpoint = stack.bind_udp_elsewhere().unwrap();
        let cases = [
            (Unreachable::Port, REMOTE, 3u8),
            (Unreachable::Host, GW_IP, 1),
            (Unreachable::Network, GW_IP, 0),
            (Unreachable::Prohibited, GW_IP, 13),
        ];
        for (n, (why, from, code)) in cases.into_iter().enumerate() {
            let payload = vec![n as u8; 700];
            let sent = udp_frame((GUEST_IP, 40000 + n as u16), (REMOTE, 9), GW_MAC, &payload);
            assert!(exchange(&stack, &sent, T).is_empty());
            let datagram = endpoint.try_recv().unwrap();
            endpoint.unreachable(&datagram, why).unwrap();
            let frame = stack.pop_frame().unwrap();
            // To the guest's MAC from ours; from the destination itself for a closed port,
            // from the gateway otherwise.
            assert_eq!(frame[..12], [GUEST_MAC, GW_MAC].concat());
            let ip = Ipv4Packet::new_checked(&frame[14..]).unwrap();
            assert!(ip.verify_checksum());
            assert_eq!((ip.src_addr(), ip.dst_addr()), (from, GUEST_IP));
            assert_eq!(ip.next_header(), IpProtocol::Icmp);
            assert!(
                frame.len() - 14 <= 576,
                "an ICMP error stays within 576 bytes"
            );
            let icmp = Icmpv4Packet::new_checked(ip.payload()).unwrap();
            assert!(icmp.verify_checksum());
            let icmp = icmp.into_inner();
            let header = &icmp[..8];
            assert_eq!(
                (header[0], header[1]),
                (3, code),
                "destination unreachable, {why:?}"
            );
            assert_eq!(header[4..], [0, 0, 0, 0], "unused, and no next-hop MTU");
            // The quote: the guest's IP header (its addresses, protocol and length) and the
            // start of its UDP datagram byte for byte, checksum included.
            // Truncated: its total length says more than is quoted, so it is read unchecked.
            let quoted = Ipv4Packet::new_unchecked(&icmp[8..]);
            assert!(quoted.verify_checksum());
            let original = Ipv4Packet::new_checked(&sent[14..]).unwrap();
            assert_eq!(
                (quoted.src_addr(), quoted.dst_addr(), quoted.next_header()),
                (GUEST_IP, REMOTE, IpProtocol::Udp)
            );
            assert_eq!(quoted.total_len(), original.total_len());
            let quote = &icmp[8 + 20..];
            assert_eq!(quote.len(), 576 - 20 - 8 - 20);
            assert_eq!(quote, &original.payload()[..quote.len()]);
        }
        // A guest never seen and an address that is not elsewhere are refused.
        let stranger = Datagram {
            guest: SocketAddrV4::new(Ipv4Address::new(192, 168, 127, 77), 1),
            remote: SocketAddrV4::new(REMOTE, 9),
            payload: b"x".to_vec(),
        };
        assert_eq!(
            endpoint.unreachable(&stranger, Unreachable::Port),
            Err(UdpSendError::NoNeighbor(stranger.guest.ip().to_owned()))
        );
        let ours = Datagram {
            guest: SocketAddrV4::new(GUEST_IP, 1),
            remote: SocketAddrV4::new(GW_IP, 53),
            payload: b"x".to_vec(),
        };
        assert_eq!(
            endpoint.unreachable(&ours, Unreachable::Port),
            Err(UdpSendError::NotElsewhere(GW_IP))
        );
        assert_eq!(stack.stats().udp_unreachable_sent, 4);
    });
}

/// Polls a future once with a no-op waker.
fn poll_once<F: std::future::Future + Unpin>(future: &mut F) -> Poll<F::Output> {
    let mut cx = Context::from_waker(futures::task::noop_waker_ref());
    std::pin::Pin::new(future).poll(&mut cx)
}

fn request_now(listener: &TcpListener) -> Option<ConnectionRequest> {
    let mut cx = Context::from_waker(futures::task::noop_waker_ref());
    match listener.poll_request(&mut cx) {
        Poll::Ready(r) => Some(r),
        Poll::Pending => None,
    }
}

#[test]
fn an_asking_listener_holds_the_syn_until_accepted_then_answers_it_byte_exact() {
    let (stack, rec) = stack_with(Config::default());
    with_dump(&rec, "elsewhere_ask_accept", || {
        let listener = stack.ask_elsewhere().unwrap();
        assert_eq!(stack.listen_elsewhere().err(), Some(ListenError::InUse));
        let syn = tcp_frame(REMOTE, 40000, 22, TcpControl::Syn, 1000, None);
        // Held: nothing goes back, and the retransmission is dropped, not a second request.
        assert!(exchange(&stack, &syn, T).is_empty());
        assert!(exchange(&stack, &syn, T).is_empty());
        let request = request_now(&listener).expect("a request");
        assert!(request_now(&listener).is_none(), "one request per SYN");
        assert!(
            accept_now(&listener).is_none(),
            "nothing to accept without a decision"
        );
        assert_eq!(request.local_addr(), SocketAddrV4::new(REMOTE, 22));
        assert_eq!(request.peer_addr(), SocketAddrV4::new(GUEST_IP, 40000));

        // Accepting answers the held SYN: the same SYN-ACK as without asking.
        let mut accepting = Box::pin(request.accept());
        assert!(poll_once(&mut accepting).is_pending());
        // The SYN-ACK leaves with the poll that accepting asked for.
        stack.poll(T);
        let out: Vec<_> = std::iter::from_fn(|| stack.pop_frame()).collect();
        assert_eq!(out.len(), 1);
        let isn = segment(&out[0]).seq_number;
        assert_eq!(
            out[0],
            tcp_to_guest_frame(REMOTE, &syn_ack(22, 40000, isn, 1000))
        );
        // A retransmitted SYN now belongs to the socket, not to a new request.
        exchange(&stack, &syn, T);
        assert!(request_now(&listener).is_none());
        assert!(poll_once(&mut accepting).is_pending());
        let ack = tcp_frame(
            REMOTE,
            40000,
            22,
            TcpControl::None,
            1001,
            Some(isn.wrapping_add(1)),
        );
        assert!(exchange(&stack, &ack, T).is_empty());
        let Poll::Ready(Some(mut stream)) = poll_once(&mut accepting) else {
            panic!("the handshake completed");
        };
        assert!(
            accept_now(&listener).is_none(),
            "the stream went to the request"
        );
        assert_eq!(stream.local_addr(), SocketAddrV4::new(REMOTE, 22));
        let data = tcp_data_frame(
            REMOTE,
            40000,
            22,
            TcpControl::Psh,
            1001,
            Some(isn.wrapping_add(1)),
            b"hi",
        );
        assert!(exchange(&stack, &data, T).is_empty());
        assert_eq!(read_available(&mut stream), b"hi");
        assert_eq!(stack.stats().tcp_accepted, 1);
    });
}

#[test]
fn a_refused_or_dropped_request_answers_the_syn_with_rst() {
    let (stack, rec) = stack_with(Config::default());
    with_dump(&rec, "elsewhere_ask_refuse", || {
        let listener = stack.ask_elsewhere().unwrap();
        let mut cx = Context::from_waker(futures::task::noop_waker_ref());
        for (port, refuse) in [(40001u16, true), (40002, false)] {
            let syn = tcp_frame(REMOTE, port, 443, TcpControl::Syn, 7, None);
            assert!(exchange(&stack, &syn, T).is_empty());
            let request = request_now(&listener).unwrap();
            while stack.poll_wake(&mut cx).is_ready() {}
            if refuse {
                request.refuse();
            } else {
                drop(request);
            }
            assert!(
                stack.poll_wake(&mut cx).is_ready(),
                "deciding asks for a poll"
            );
            // The RST a closed port sends: ACK of the SYN, no window.
            let rst = tcp_reply_frame(REMOTE, 443, port, TcpControl::Rst, 0, Some(8));
            assert_eq!(stack.pop_frame(), Some(rst.clone()));
            assert_eq!(stack.pop_frame(), None);
            // Decided: a retransmission is a new request.
            assert!(exchange(&stack, &syn, T).is_empty());
            request_now(&listener).unwrap().refuse();
            assert_eq!(stack.pop_frame(), Some(rst));
        }
        assert_eq!(stack.stats().tcp_refused, 4);
        assert_eq!(stack.stats().tcp_accepted, 0);
    });
}

#[test]
fn held_syns_count_towards_the_backlog_and_go_with_the_listener() {
    let mut config = Config::default();
    config.tcp.listen_backlog = 2;
    let (stack, rec) = stack_with(config);
    with_dump(&rec, "elsewhere_ask_backlog", || {
        let listener = stack.ask_elsewhere().unwrap();
        for port in [40010u16, 40011] {
            let syn = tcp_frame(REMOTE, port, 80, TcpControl::Syn, 1, None);
            assert!(exchange(&stack, &syn, T).is_empty());
        }
        // The third is over the backlog: RST at once.
        let third = tcp_frame(REMOTE, 40012, 80, TcpControl::Syn, 1, None);
        let out = exchange(&stack, &third, T);
        let rst = tcp_reply_frame(REMOTE, 80, 40012, TcpControl::Rst, 0, Some(2));
        assert_eq!(out, vec![rst]);
        assert_eq!(stack.stats().tcp_refused_limit, 1);
        let first = request_now(&listener).unwrap();
        let mut accepting = Box::pin(first.accept());
        assert!(poll_once(&mut accepting).is_pending());
        stack.poll(T);
        assert_eq!(stack.pop_frame().map(|f| segment(&f).syn), Some(true));
        let second = request_now(&listener).unwrap();
        // The listener goes: the accepted handshake ends (None), the held SYN is forgotten
        // and its retransmission gets RST; the undecided request's drop sends nothing more.
        drop(listener);
        stack.poll(T);
        assert!(matches!(poll_once(&mut accepting), Poll::Ready(None)));
        let out: Vec<_> = std::iter::from_fn(|| stack.pop_frame()).collect();
        assert!(out.iter().all(|f| segment(f).rst), "{out:?}");
        drop(second);
        assert_eq!(stack.pop_frame(), None);
        let again = tcp_frame(REMOTE, 40011, 80, TcpControl::Syn, 1, None);
        let out = exchange(&stack, &again, T);
        let rst = tcp_reply_frame(REMOTE, 80, 40011, TcpControl::Rst, 0, Some(2));
        assert_eq!(out, vec![rst]);
    });
}
