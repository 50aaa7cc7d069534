//! TCP end to end in memory: a smoltcp interface plays the guest, frame by frame, against the
//! Stack; the server side uses TcpListener/TcpStream as the proxy would.

#[cfg(target_arch = "wasm32")]
use wasm_bindgen_test::wasm_bindgen_test as test;

mod common;

use std::io::ErrorKind;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use common::*;
use futures::task::ArcWake;
use net_stack::{Config, ListenAddr, TcpStream};
use smoltcp::socket::tcp::State;
use smoltcp::wire::Ipv4Address;

fn accept_now(listener: &net_stack::TcpListener) -> Option<TcpStream> {
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

#[test]
fn connect_send_echo_fin_and_socket_reclaimed() {
    let mut net = Net::new(Config::default());
    let rec = net.recorder.clone();
    with_dump(&rec, "tcp_echo", move || {
        let listener = net.stack.listen(ListenAddr::Ip(PROXY_IP), 80).unwrap();
        let client = net.connect(PROXY_IP, 80, 65536, 65536);
        net.pump();
        assert_eq!(net.socket(client).state(), State::Established);
        let mut stream = accept_now(&listener).expect("accepted");
        assert_eq!(stream.local_addr(), "192.168.127.253:80".parse().unwrap());
        assert_eq!(stream.peer_addr(), "192.168.127.3:40000".parse().unwrap());

        let request = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";
        assert_eq!(
            net.socket(client).send_slice(request).unwrap(),
            request.len()
        );
        net.pump();
        assert_eq!(read_available(&mut stream), request);
        // Nothing more: Pending, not EOF.
        assert!(try_read(&mut stream, &mut [0u8; 16]).is_pending());

        let reply: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        let mut written = 0;
        let mut received = Vec::new();
        while received.len() < reply.len() {
            if written < reply.len() {
                if let Poll::Ready(n) = try_write(&mut stream, &reply[written..]) {
                    written += n.unwrap();
                }
            }
            net.pump();
            let sock = net.socket(client);
            while sock.can_recv() {
                sock.recv(|d| {
                    received.extend_from_slice(d);
                    (d.len(), ())
                })
                .unwrap();
            }
        }
        assert_eq!(received, reply);

        // Guest FIN: the stream reads EOF.
        net.socket(client).close();
        net.pump();
        assert!(matches!(
            try_read(&mut stream, &mut [0u8; 16]),
            Poll::Ready(Ok(0))
        ));
        // Our close sends FIN; the guest sees the connection end.
        assert!(try_close(&mut stream).is_ready());
        net.pump();
        assert!(matches!(
            net.socket(client).state(),
            State::TimeWait | State::Closed
        ));
        assert_eq!(net.stack.stats().tcp_open, 1);
        drop(stream);
        net.pump();
        let stats = net.stack.stats();
        assert_eq!((stats.tcp_open, stats.tcp_accepted), (0, 1));
    });
}

#[test]
fn unread_stream_limits_the_guest_to_the_window() {
    let mut config = Config::default();
    config.tcp.rx_buffer = 8192;
    let mut net = Net::new(config);
    let rec = net.recorder.clone();
    with_dump(&rec, "tcp_backpressure", move || {
        let listener = net.stack.listen(ListenAddr::Ip(PROXY_IP), 80).unwrap();
        let client = net.connect(PROXY_IP, 80, 4096, 200_000);
        net.pump();
        let mut stream = accept_now(&listener).unwrap();
        let data: Vec<u8> = (0..150_000u32).map(|i| (i * 7) as u8).collect();
        assert_eq!(net.socket(client).send_slice(&data).unwrap(), data.len());
        net.pump();
        // Only our receive buffer's worth left the guest.
        let queued = net.socket(client).send_queue();
        assert_eq!(
            data.len() - queued,
            8192,
            "bytes accepted beyond the window"
        );
        let out_before = net.stack.stats().frames_out;
        // Reading frees window: the guest continues, and all data arrives in order.
        let mut got = Vec::new();
        for _ in 0..200 {
            got.extend(read_available(&mut stream));
            net.pump();
            if got.len() == data.len() {
                break;
            }
        }
        got.extend(read_available(&mut stream));
        assert_eq!(got.len(), data.len());
        assert!(got == data);
        assert!(net.stack.stats().frames_out > out_before);
    });
}

#[test]
fn writes_wait_when_the_transmit_buffer_is_full() {
    let mut config = Config::default();
    config.tcp.tx_buffer = 4096;
    let mut net = Net::new(config);
    let listener = net.stack.listen(ListenAddr::Ip(PROXY_IP), 80).unwrap();
    // The guest has a tiny receive window and does not read.
    let client = net.connect(PROXY_IP, 80, 1024, 1024);
    net.pump();
    let mut stream = accept_now(&listener).unwrap();
    let big = vec![0x55u8; 20_000];
    let mut total = 0;
    while let Poll::Ready(n) = try_write(&mut stream, &big) {
        total += n.unwrap();
        net.pump();
    }
    // 4 KiB in our buffer + what the guest's 1 KiB window let through.
    assert!(total <= 4096 + 1024, "wrote {total}");
    assert!(total >= 4096);
    // The guest reads: the write proceeds again.
    let mut drained = 0;
    for _ in 0..10 {
        let sock = net.socket(client);
        while sock.can_recv() {
            drained += sock.recv(|d| (d.len(), d.len())).unwrap();
        }
        net.pump();
    }
    assert!(drained >= 4096);
    assert!(try_write(&mut stream, &big).is_ready());
}

#[test]
fn many_concurrent_connections_to_one_listener() {
    let mut net = Net::new(Config::default());
    let rec = net.recorder.clone();
    with_dump(&rec, "tcp_many", move || {
        let listener = net.stack.listen(ListenAddr::Ip(PROXY_IP), 80).unwrap();
        let clients: Vec<_> = (0..8)
            .map(|_| net.connect(PROXY_IP, 80, 8192, 8192))
            .collect();
        net.pump();
        let mut streams: Vec<TcpStream> = std::iter::from_fn(|| accept_now(&listener)).collect();
        assert_eq!(streams.len(), 8);
        for (i, c) in clients.iter().enumerate() {
            net.socket(*c)
                .send_slice(format!("hello {i}").as_bytes())
                .unwrap();
        }
        net.pump();
        for stream in &mut streams {
            let got = read_available(stream);
            let port = stream.peer_addr().port();
            let i = usize::from(port - 40000);
            assert_eq!(got, format!("hello {i}").as_bytes());
            assert!(try_write(stream, format!("bye {i}").as_bytes()).is_ready());
        }
        net.pump();
        for (i, c) in clients.iter().enumerate() {
            let mut buf = [0u8; 64];
            let n = net.socket(*c).recv_slice(&mut buf).unwrap();
            assert_eq!(&buf[..n], format!("bye {i}").as_bytes());
        }
        assert_eq!(net.stack.stats().tcp_open, 8);
        // Dropping the streams closes them; once the guest closes too, every socket is gone.
        drop(streams);
        net.pump();
        for c in &clients {
            net.socket(*c).close();
        }
        net.pump();
        assert_eq!(net.stack.stats().tcp_open, 0);
    });
}

#[test]
fn dropped_stream_sends_fin_and_is_reclaimed_even_if_the_guest_keeps_sending() {
    let mut config = Config::default();
    config.tcp.rx_buffer = 4096;
    let mut net = Net::new(config);
    let listener = net.stack.listen(ListenAddr::Ip(PROXY_IP), 80).unwrap();
    let client = net.connect(PROXY_IP, 80, 4096, 65536);
    net.pump();
    let stream = accept_now(&listener).unwrap();
    drop(stream);
    net.pump();
    // The guest got our FIN: it can no longer receive but may still send.
    assert_eq!(net.socket(client).state(), State::CloseWait);
    net.socket(client).send_slice(&[1u8; 30_000]).unwrap();
    net.pump();
    // Data of an orphaned connection is discarded, so the guest is never stuck on a zero window.
    assert_eq!(net.socket(client).send_queue(), 0);
    net.socket(client).close();
    net.pump();
    assert_eq!(net.stack.stats().tcp_open, 0);
}

#[test]
fn guest_rst_makes_reads_and_writes_fail() {
    let mut net = Net::new(Config::default());
    let listener = net.stack.listen(ListenAddr::Ip(PROXY_IP), 80).unwrap();
    let client = net.connect(PROXY_IP, 80, 4096, 4096);
    net.pump();
    let mut stream = accept_now(&listener).unwrap();
    net.socket(client).abort();
    net.pump();
    match try_read(&mut stream, &mut [0u8; 8]) {
        Poll::Ready(Err(e)) => assert_eq!(e.kind(), ErrorKind::ConnectionReset),
        other => panic!("read after RST: {other:?}"),
    }
    match try_write(&mut stream, b"x") {
        Poll::Ready(Err(e)) => assert_eq!(e.kind(), ErrorKind::ConnectionReset),
        other => panic!("write after RST: {other:?}"),
    }
    drop(stream);
    net.pump();
    assert_eq!(net.stack.stats().tcp_open, 0);
}

#[test]
fn dropping_the_listener_refuses_new_connections() {
    let mut net = Net::new(Config::default());
    let listener = net.stack.listen(ListenAddr::Ip(PROXY_IP), 80).unwrap();
    // Established but never accepted: reset when the listener goes.
    let queued = net.connect(PROXY_IP, 80, 4096, 4096);
    net.pump();
    assert_eq!(net.socket(queued).state(), State::Established);
    drop(listener);
    net.pump();
    assert_eq!(net.socket(queued).state(), State::Closed);
    let late = net.connect(PROXY_IP, 80, 4096, 4096);
    net.pump();
    assert_eq!(net.socket(late).state(), State::Closed);
    let stats = net.stack.stats();
    assert_eq!((stats.tcp_open, stats.tcp_refused), (0, 1));
}

struct CountingWaker(AtomicUsize);

impl ArcWake for CountingWaker {
    fn wake_by_ref(arc_self: &Arc<Self>) {
        arc_self.0.fetch_add(1, Ordering::SeqCst);
    }
}

#[test]
fn poll_wake_fires_after_stream_activity_and_accept_wakes_the_listener() {
    let mut net = Net::new(Config::default());
    let listener = net.stack.listen(ListenAddr::Ip(PROXY_IP), 80).unwrap();
    let counter = Arc::new(CountingWaker(AtomicUsize::new(0)));
    let waker = futures::task::waker(counter.clone());
    let mut cx = Context::from_waker(&waker);
    assert!(listener.poll_accept(&mut cx).is_pending());
    assert!(net.stack.poll_wake(&mut cx).is_pending());
    let client = net.connect(PROXY_IP, 80, 4096, 4096);
    net.pump();
    assert_eq!(
        counter.0.load(Ordering::SeqCst),
        1,
        "accept waker woken once"
    );
    let mut stream = accept_now(&listener).unwrap();
    net.socket(client).send_slice(b"abc").unwrap();
    net.pump();
    assert!(net.stack.poll_wake(&mut cx).is_pending());
    assert_eq!(read_available(&mut stream), b"abc");
    assert_eq!(
        counter.0.load(Ordering::SeqCst),
        2,
        "stack waker woken by the read"
    );
    assert!(net.stack.poll_wake(&mut cx).is_ready());
    assert!(net.stack.poll_wake(&mut cx).is_pending());
    // An async accept through the executor works too.
    let second = net.connect(PROXY_IP, 80, 4096, 4096);
    net.pump();
    let s2 = futures::executor::block_on(listener.accept());
    assert_eq!(s2.peer_addr().port(), 40001);
    let _ = second;
}

#[test]
fn poll_delay_reports_pending_timers() {
    let mut net = Net::new(Config::default());
    assert_eq!(net.stack.poll_delay(net.now), None);
    let _listener = net.stack.listen(ListenAddr::Ip(PROXY_IP), 80).unwrap();
    let client = net.connect(PROXY_IP, 80, 4096, 4096);
    net.pump();
    net.socket(client).send_slice(b"x").unwrap();
    let g = &mut net.guest;
    g.iface.poll(net.now, &mut g.dev, &mut g.sockets);
    while let Some(f) = g.dev.tx.pop_front() {
        net.stack.push_frame(&f);
    }
    assert_eq!(
        net.stack.poll_delay(net.now),
        Some(net_stack::Duration::ZERO)
    );
    net.stack.poll(net.now);
    // The data needs an ACK, which smoltcp delays: a timer is pending.
    let delay = net.stack.poll_delay(net.now).expect("ack timer");
    assert!(delay <= net_stack::Duration::from_millis(10), "{delay}");
}

#[test]
fn full_outbound_queue_holds_tcp_back_and_pop_requests_a_poll() {
    let config = Config {
        max_outbound_frames: 4,
        ..Config::default()
    };
    let mut net = Net::new(config);
    let listener = net.stack.listen(ListenAddr::Ip(PROXY_IP), 80).unwrap();
    let client = net.connect(PROXY_IP, 80, 65536, 4096);
    net.pump();
    let mut stream = accept_now(&listener).unwrap();
    let data: Vec<u8> = (0..30_000u32).map(|i| (i % 253) as u8).collect();
    let mut written = 0;
    while let Poll::Ready(n) = try_write(&mut stream, &data[written..]) {
        written += n.unwrap();
        if written == data.len() {
            break;
        }
    }
    net.stack.poll(net.now);
    let waker = futures::task::noop_waker_ref();
    let mut cx = Context::from_waker(waker);
    while net.stack.poll_wake(&mut cx).is_ready() {}
    // Four frames wait; smoltcp keeps the rest of the data instead of dropping segments, and
    // poll_delay does not ask for a busy loop.
    assert_eq!(net.stack.stats().dropped_outbound_full, 0);
    assert_eq!(net.stack.poll_delay(net.now), None);
    let first = net.stack.pop_frame().unwrap();
    assert!(net.stack.poll_wake(&mut cx).is_ready());
    net.guest.dev.rx.push_back(first);
    let mut received = Vec::new();
    for _ in 0..50 {
        net.pump();
        let sock = net.socket(client);
        while sock.can_recv() {
            sock.recv(|d| {
                received.extend_from_slice(d);
                (d.len(), ())
            })
            .unwrap();
        }
        if written < data.len() {
            if let Poll::Ready(n) = try_write(&mut stream, &data[written..]) {
                written += n.unwrap();
            }
        }
    }
    assert_eq!(received, data);
}

#[test]
fn orphan_that_the_guest_never_closes_is_aborted_after_the_timeout() {
    let mut net = Net::new(Config::default());
    let listener = net.stack.listen(ListenAddr::Ip(PROXY_IP), 80).unwrap();
    let client = net.connect(PROXY_IP, 80, 4096, 4096);
    net.pump();
    drop(accept_now(&listener).unwrap());
    net.pump();
    // The guest half-closes never: our side sits in FIN-WAIT-2.
    assert_eq!(net.socket(client).state(), State::CloseWait);
    assert_eq!(net.stack.stats().tcp_open, 1);
    let delay = net.stack.poll_delay(net.now).expect("orphan deadline");
    assert!(delay <= net_stack::Duration::from_secs(60), "{delay}");
    net.now += net_stack::Duration::from_secs(61);
    net.pump();
    assert_eq!(net.stack.stats().tcp_open, 0);
    // The guest was told with an RST.
    assert_eq!(net.socket(client).state(), State::Closed);
}

/// Throughput of the in-memory path (guest smoltcp → Stack → TcpStream and back), printed for
/// the record; run with `cargo test --release -p net-stack --test tcp -- --ignored --nocapture`.
#[test]
#[ignore]
fn measure_in_memory_throughput() {
    let mut net = Net::new(Config::default());
    let listener = net.stack.listen(ListenAddr::Ip(PROXY_IP), 80).unwrap();
    let client = net.connect(PROXY_IP, 80, 256 * 1024, 256 * 1024);
    net.pump();
    let mut stream = accept_now(&listener).unwrap();
    let total = 64 * 1024 * 1024;
    let chunk = vec![0xa5u8; 64 * 1024];
    let (mut sent, mut got) = (0usize, 0usize);
    let mut buf = vec![0u8; 64 * 1024];
    let started = std::time::Instant::now();
    while got < total {
        let sock = net.socket(client);
        if sent < total && sock.can_send() {
            sent += sock
                .send_slice(&chunk[..chunk.len().min(total - sent)])
                .unwrap();
        }
        let g = &mut net.guest;
        g.iface.poll(net.now, &mut g.dev, &mut g.sockets);
        while let Some(f) = g.dev.tx.pop_front() {
            net.stack.push_frame(&f);
        }
        net.stack.poll(net.now);
        while let Some(f) = net.stack.pop_frame() {
            g.dev.rx.push_back(f);
        }
        while let Poll::Ready(Ok(n)) = try_read(&mut stream, &mut buf) {
            if n == 0 {
                break;
            }
            assert!(buf[..n].iter().all(|b| *b == 0xa5));
            got += n;
        }
        net.now += net_stack::Duration::from_micros(100);
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "guest -> stream: {} MiB in {secs:.2} s = {:.0} MiB/s (frames in {}, out {})",
        total >> 20,
        (total >> 20) as f64 / secs,
        net.stack.stats().frames_in,
        net.stack.stats().frames_out
    );
}

#[test]
fn catch_all_relays_a_guest_connection_and_abort_resets_it() {
    let mut net = Net::new(Config::default());
    let rec = net.recorder.clone();
    with_dump(&rec, "tcp_elsewhere_abort", move || {
        let listener = net.stack.listen_elsewhere().unwrap();
        let dst = Ipv4Address::new(10, 1, 2, 3);
        let client = net.connect(dst, 5432, 4096, 4096);
        net.pump();
        assert_eq!(net.socket(client).state(), State::Established);
        let mut stream = accept_now(&listener).expect("accepted");
        assert_eq!(stream.local_addr(), "10.1.2.3:5432".parse().unwrap());
        net.socket(client).send_slice(b"ping").unwrap();
        net.pump();
        assert_eq!(read_available(&mut stream), b"ping");
        assert!(try_write(&mut stream, b"pong").is_ready());
        net.pump();
        let mut buf = [0u8; 16];
        let n = net.socket(client).recv_slice(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"pong");
        // The far side went away: the guest learns it from a RST, not a FIN.
        stream.abort();
        net.pump();
        assert_eq!(net.socket(client).state(), State::Closed);
        assert_eq!(net.stack.stats().tcp_open, 0);
    });
}

/// The TCP header and payload of a frame towards the guest (what a retransmission must
/// repeat exactly; the IPv4 identification around it differs per packet).
fn tcp_bytes(frame: &[u8]) -> Vec<u8> {
    let eth = smoltcp::wire::EthernetFrame::new_checked(frame).unwrap();
    let ip = smoltcp::wire::Ipv4Packet::new_checked(eth.payload()).unwrap();
    ip.payload().to_vec()
}

/// A data segment towards the guest is lost (the test never hands it over): smoltcp resends
/// it, byte for byte, exactly when its minimum retransmission timeout (1 s of smoltcp's
/// clock) has passed in the caller's time divided by `clock_scale`, and not a microsecond
/// before; `poll_delay` announces that moment in the caller's time.
fn lost_segment_is_resent_after(scale: u32, expected: net_stack::Duration) {
    let mut config = Config::default();
    config.tcp.clock_scale = scale;
    let mut net = Net::new(config);
    let listener = net.stack.listen(ListenAddr::Ip(PROXY_IP), 80).unwrap();
    let client = net.connect(PROXY_IP, 80, 65536, 4096);
    net.pump();
    assert_eq!(net.socket(client).state(), State::Established);
    let mut stream = accept_now(&listener).expect("accepted");

    let reply = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n";
    assert!(matches!(try_write(&mut stream, reply), Poll::Ready(Ok(n)) if n == reply.len()));
    let sent_at = net.now;
    net.stack.poll(sent_at);
    let lost: Vec<Vec<u8>> = std::iter::from_fn(|| net.stack.pop_frame()).collect();
    assert_eq!(lost.len(), 1, "one data segment");
    let original = tcp_bytes(&lost[0]);
    assert!(original.ends_with(reply));
    assert_eq!(net.stack.poll_delay(sent_at), Some(expected));

    let just_before = sent_at + expected - net_stack::Duration::from_micros(1);
    net.stack.poll(just_before);
    assert!(net.stack.pop_frame().is_none(), "resent too early");
    net.stack.poll(sent_at + expected);
    let again = net.stack.pop_frame().expect("resent after the timeout");
    assert_eq!(tcp_bytes(&again), original);
    assert!(net.stack.pop_frame().is_none());

    // Handed over this time, the reply arrives once and the connection goes on.
    net.now = sent_at + expected;
    net.guest.dev.rx.push_back(again);
    net.pump();
    let sock = net.socket(client);
    let mut got = vec![0u8; 128];
    let n = sock.recv_slice(&mut got).unwrap();
    assert_eq!(&got[..n], reply);
}

#[test]
fn lost_segment_is_resent_after_200_ms_with_clock_scale_5() {
    lost_segment_is_resent_after(5, net_stack::Duration::from_millis(200));
}

#[test]
fn lost_segment_is_resent_after_the_scaled_second_with_the_default_clock_scale() {
    let scale = net_stack::DEFAULT_CLOCK_SCALE;
    lost_segment_is_resent_after(
        scale,
        net_stack::Duration::from_micros(1_000_000 / u64::from(scale)),
    );
}

#[test]
fn lost_segment_is_resent_after_smoltcps_second_without_clock_scaling() {
    lost_segment_is_resent_after(1, net_stack::Duration::from_millis(1000));
}

#[test]
fn clock_scale_keeps_the_callers_timeouts() {
    // A dropped stream's connection the guest never closes is aborted after `orphan_timeout`
    // of the caller's time, whatever smoltcp's clock runs at (the timeout handed to the
    // socket is scaled with it).
    for scale in [1, 5, 20] {
        let mut config = Config::default();
        config.tcp.clock_scale = scale;
        config.tcp.orphan_timeout = net_stack::Duration::from_secs(10);
        let mut net = Net::new(config);
        let listener = net.stack.listen(ListenAddr::Ip(PROXY_IP), 80).unwrap();
        let client = net.connect(PROXY_IP, 80, 4096, 4096);
        net.pump();
        let stream = accept_now(&listener).expect("accepted");
        drop(stream);
        // The guest is gone: nothing it would answer reaches the stack any more.
        let dropped_at = net.now;
        let mut t = dropped_at;
        let mut reset_at = None;
        while t < dropped_at + net_stack::Duration::from_secs(30) {
            net.stack.poll(t);
            while let Some(frame) = net.stack.pop_frame() {
                if segment(&frame).rst && reset_at.is_none() {
                    reset_at = Some(t);
                }
            }
            t += net_stack::Duration::from_millis(100);
        }
        let reset_at = reset_at.expect("the orphan is reset");
        let after = reset_at - dropped_at;
        assert!(
            after >= net_stack::Duration::from_secs(10)
                && after <= net_stack::Duration::from_millis(10_100),
            "scale {scale}: reset after {after}"
        );
        assert_eq!(net.stack.stats().tcp_open, 0, "scale {scale}");
        let _ = client;
    }
}
