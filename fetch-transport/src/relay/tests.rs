//! The relay against an in-memory Wisp server. The test plays the server: [`FakeDialer`]
//! decides what each dial yields and hands the test the [`Server`] end of a channel-backed
//! [`MessageSocket`]; [`ManualTimer`] moves only when the test advances it, so handshakes,
//! backoff and timeouts are deterministic. Everything runs on one `LocalPool`; the futures the
//! test awaits are polled by [`Net::poll`] only when their waker fired, so a lost wake-up
//! fails a test instead of being hidden by polling again.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::future::{poll_fn, Future};
use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use async_trait::async_trait;
use futures::executor::LocalPool;
use futures::future::LocalBoxFuture;
use futures::io::{AsyncReadExt, AsyncWriteExt};
use futures::task::{ArcWake, LocalSpawnExt};

use super::*;
use crate::wisp::{CloseReason, Packet, Payload, SendError, WispVersion, V2_SUBPROTOCOL};

const URL: &str = "ws://relay.test/";
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_millis(800);
const MS: Duration = Duration::from_millis(1);

// ---------------------------------------------------------------------------------------------
// The clock.

/// A clock that moves only when the test says so.
#[derive(Clone, Default)]
struct ManualTimer {
    clock: Rc<RefCell<Clock>>,
}

#[derive(Default)]
struct Clock {
    now: Duration,
    /// Deadlines of pending sleeps and the wakers to call when they pass.
    sleepers: Vec<(Duration, Waker)>,
    /// Held: `next_task` waits for [`ManualTimer::turn`]; else it completes at once.
    turns_held: bool,
    /// Task hops done so far, and the wakers of the hops waiting for the next.
    turns: u64,
    turn_waiters: Vec<Waker>,
}

impl ManualTimer {
    /// From now on `next_task` completes only at [`turn`](Self::turn): the test plays the
    /// event loop.
    fn hold_turns(&self) {
        self.clock.borrow_mut().turns_held = true;
    }

    /// The event loop moves on to its next task.
    fn turn(&self) {
        let waiters = {
            let mut clock = self.clock.borrow_mut();
            clock.turns += 1;
            std::mem::take(&mut clock.turn_waiters)
        };
        for waker in waiters {
            waker.wake();
        }
    }

    /// Moves the clock and wakes the sleeps whose deadline passed.
    fn advance(&self, by: Duration) {
        let due: Vec<Waker> = {
            let mut clock = self.clock.borrow_mut();
            clock.now += by;
            let now = clock.now;
            let (due, pending) = std::mem::take(&mut clock.sleepers)
                .into_iter()
                .partition(|(deadline, _)| *deadline <= now);
            clock.sleepers = pending;
            due.into_iter().map(|(_, waker)| waker).collect()
        };
        for waker in due {
            waker.wake();
        }
    }
}

impl Timer for ManualTimer {
    fn sleep(&self, duration: Duration) -> LocalBoxFuture<'static, ()> {
        let clock = self.clock.clone();
        let deadline = clock.borrow().now + duration;
        Box::pin(poll_fn(move |cx| {
            let mut clock = clock.borrow_mut();
            if clock.now >= deadline {
                Poll::Ready(())
            } else {
                clock.sleepers.push((deadline, cx.waker().clone()));
                Poll::Pending
            }
        }))
    }

    fn next_task(&self) -> LocalBoxFuture<'static, ()> {
        let clock = self.clock.clone();
        let start = clock.borrow().turns;
        Box::pin(poll_fn(move |cx| {
            let mut clock = clock.borrow_mut();
            if !clock.turns_held || clock.turns > start {
                Poll::Ready(())
            } else {
                clock.turn_waiters.push(cx.waker().clone());
                Poll::Pending
            }
        }))
    }
}

// ---------------------------------------------------------------------------------------------
// The WebSocket: a pair of message queues.

/// What travels between the relay's socket and the test's server end.
#[derive(Default)]
struct Pipe {
    to_client: VecDeque<Vec<u8>>,
    to_server: VecDeque<Vec<u8>>,
    /// Set when the server hung up (`Ok`) or the connection failed (`Err`); the client sees
    /// it once it has read what was sent before.
    end: Option<Result<(), SocketError>>,
    recv_waker: Option<Waker>,
    /// Most messages the client may have in flight before `poll_ready` waits (a slow link).
    write_bound: Option<usize>,
    ready_waker: Option<Waker>,
    /// The client sent its Close frame.
    closed_by_client: bool,
    /// The client dropped its socket.
    dropped_by_client: bool,
}

impl Pipe {
    fn wake_client(&mut self) {
        if let Some(waker) = self.recv_waker.take() {
            waker.wake();
        }
    }
}

/// The relay's side of a [`Pipe`].
struct ClientSocket(Rc<RefCell<Pipe>>);

impl MessageSocket for ClientSocket {
    fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Result<Option<WsMessage>, SocketError>> {
        let mut pipe = self.0.borrow_mut();
        if let Some(message) = pipe.to_client.pop_front() {
            return Poll::Ready(Ok(Some(WsMessage::Binary(message))));
        }
        match pipe.end.clone() {
            Some(Ok(())) => Poll::Ready(Ok(None)),
            Some(Err(err)) => Poll::Ready(Err(err)),
            None => {
                pipe.recv_waker = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), SocketError>> {
        let mut pipe = self.0.borrow_mut();
        match pipe.write_bound {
            Some(bound) if pipe.to_server.len() >= bound => {
                pipe.ready_waker = Some(cx.waker().clone());
                Poll::Pending
            }
            _ => Poll::Ready(Ok(())),
        }
    }

    fn send(&mut self, message: WsMessage) -> Result<(), SocketError> {
        let WsMessage::Binary(message) = message else {
            panic!("the relay sent a text message");
        };
        self.0.borrow_mut().to_server.push_back(message);
        Ok(())
    }

    fn poll_flush(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), SocketError>> {
        Poll::Ready(Ok(()))
    }

    fn poll_close(
        &mut self,
        _cx: &mut Context<'_>,
        close: &Close,
    ) -> Poll<Result<(), SocketError>> {
        assert_eq!(close, &Close::NORMAL, "the relay says goodbye normally");
        self.0.borrow_mut().closed_by_client = true;
        Poll::Ready(Ok(()))
    }

    fn peer_close(&self) -> Option<Close> {
        None
    }
}

impl Drop for ClientSocket {
    fn drop(&mut self) {
        self.0.borrow_mut().dropped_by_client = true;
    }
}

/// The test's side of a [`Pipe`]: the Wisp server. Dropping it hangs up.
struct Server {
    pipe: Rc<RefCell<Pipe>>,
}

impl Server {
    /// Sends one message (one packet) to the relay.
    fn send(&self, message: Vec<u8>) {
        let mut pipe = self.pipe.borrow_mut();
        pipe.to_client.push_back(message);
        pipe.wake_client();
    }

    /// The next message the relay sent, if any.
    fn recv(&self) -> Option<Vec<u8>> {
        let mut pipe = self.pipe.borrow_mut();
        let message = pipe.to_server.pop_front();
        if let Some(waker) = pipe.ready_waker.take() {
            waker.wake();
        }
        message
    }

    /// From now on the relay may have at most `bound` messages unread by the server.
    fn set_write_bound(&self, bound: usize) {
        self.pipe.borrow_mut().write_bound = Some(bound);
    }

    /// The relay's next message is exactly `expected`.
    #[track_caller]
    fn expect(&self, expected: &[u8]) {
        assert_eq!(self.recv().as_deref(), Some(expected));
    }

    /// The relay sent nothing more.
    #[track_caller]
    fn expect_nothing(&self) {
        assert_eq!(self.recv(), None);
    }

    /// Messages sent to the relay that it has not read yet.
    fn unread(&self) -> usize {
        self.pipe.borrow().to_client.len()
    }

    /// Ends the connection with an error (a reset, not a clean close).
    fn fail(&self, reason: &str) {
        let mut pipe = self.pipe.borrow_mut();
        pipe.end = Some(Err(SocketError::Lost(reason.into())));
        pipe.wake_client();
    }

    /// The relay dropped its socket.
    fn dropped_by_client(&self) -> bool {
        self.pipe.borrow().dropped_by_client
    }

    /// The relay sent a Close frame before dropping the socket.
    fn closed_by_client(&self) -> bool {
        self.pipe.borrow().closed_by_client
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let mut pipe = self.pipe.borrow_mut();
        if pipe.end.is_none() {
            pipe.end = Some(Ok(()));
        }
        pipe.wake_client();
    }
}

// ---------------------------------------------------------------------------------------------
// The dialer.

/// A dialer whose answers the test queues: each dial takes the next answer, or waits for one.
#[derive(Default)]
struct FakeDialer {
    state: RefCell<DialerState>,
}

#[derive(Default)]
struct DialerState {
    answers: VecDeque<Result<Rc<RefCell<Pipe>>, String>>,
    /// The protocols offered by each dial, in order.
    offers: Vec<Vec<String>>,
    /// Refuse any dial that offers `wisp-v2` (a v1-only server behind a strict proxy).
    refuse_v2: bool,
    waker: Option<Waker>,
}

impl FakeDialer {
    /// The next dial succeeds; returns the server's end of its socket.
    fn accept(&self) -> Server {
        let pipe = Rc::new(RefCell::new(Pipe::default()));
        self.answer(Ok(pipe.clone()));
        Server { pipe }
    }

    /// The next dial fails with `reason`.
    fn fail(&self, reason: &str) {
        self.answer(Err(reason.to_string()));
    }

    fn answer(&self, answer: Result<Rc<RefCell<Pipe>>, String>) {
        let mut state = self.state.borrow_mut();
        state.answers.push_back(answer);
        if let Some(waker) = state.waker.take() {
            waker.wake();
        }
    }

    fn refuse_v2(&self) {
        self.state.borrow_mut().refuse_v2 = true;
    }

    /// How many dials were started.
    fn dials(&self) -> usize {
        self.state.borrow().offers.len()
    }

    /// The protocols offered by each dial.
    fn offers(&self) -> Vec<Vec<String>> {
        self.state.borrow().offers.clone()
    }
}

#[async_trait(?Send)]
impl Dialer for FakeDialer {
    async fn dial(&self, url: &str, protocols: &[&str]) -> Result<Dialed, SocketError> {
        let refuse = {
            let mut state = self.state.borrow_mut();
            state
                .offers
                .push(protocols.iter().map(|p| p.to_string()).collect());
            state.refuse_v2 && protocols.contains(&V2_SUBPROTOCOL)
        };
        let connect_error = |reason: String| SocketError::Connect {
            url: url.to_string(),
            reason,
        };
        if refuse {
            return Err(connect_error("the server refuses wisp-v2".into()));
        }
        let answer = poll_fn(|cx| {
            let mut state = self.state.borrow_mut();
            match state.answers.pop_front() {
                Some(answer) => Poll::Ready(answer),
                None => {
                    state.waker = Some(cx.waker().clone());
                    Poll::Pending
                }
            }
        })
        .await;
        let pipe = answer.map_err(connect_error)?;
        Ok(Dialed {
            socket: Box::new(ClientSocket(pipe)),
            protocol: protocols.first().map(|p| p.to_string()),
        })
    }
}

// ---------------------------------------------------------------------------------------------
// The executor.

/// A waker that records that it was called.
#[derive(Default)]
struct Flag(AtomicBool);

impl ArcWake for Flag {
    fn wake_by_ref(arc_self: &Arc<Self>) {
        arc_self.0.store(true, Ordering::SeqCst);
    }
}

/// A future the test polls by hand (see [`Net::poll`]).
struct Op<F: Future> {
    future: Pin<Box<F>>,
    woken: Arc<Flag>,
}

/// The pool running the driver, and the test's handles on the clock and the dialer.
struct Net {
    pool: LocalPool,
    timer: ManualTimer,
    dialer: Rc<FakeDialer>,
    /// Set when the driver's `run()` returned.
    done: Rc<Cell<bool>>,
}

impl Net {
    /// Runs the driver until it waits.
    fn run(&mut self) {
        self.pool.run_until_stalled();
    }

    /// Moves the clock, then runs the driver.
    fn advance(&mut self, by: Duration) {
        self.run();
        self.timer.advance(by);
        self.run();
    }

    /// Wraps a future for [`poll`](Self::poll); it has not been polled yet.
    fn op<F: Future>(&mut self, future: F) -> Op<F> {
        Op {
            future: Box::pin(future),
            woken: Arc::new(Flag(AtomicBool::new(true))),
        }
    }

    /// Runs the driver and polls `op` whenever its waker fired (never otherwise), until
    /// neither makes progress or `op` completes. Do not poll a completed `op` again.
    fn poll<F: Future>(&mut self, op: &mut Op<F>) -> Poll<F::Output> {
        let waker = futures::task::waker(op.woken.clone());
        let mut cx = Context::from_waker(&waker);
        loop {
            self.run();
            if !op.woken.0.swap(false, Ordering::SeqCst) {
                return Poll::Pending;
            }
            if let Poll::Ready(output) = op.future.as_mut().poll(&mut cx) {
                // Let the driver send what the operation queued.
                self.run();
                return Poll::Ready(output);
            }
        }
    }

    /// Runs `future` to completion; panics if it has to wait for something the test has
    /// not done yet.
    #[track_caller]
    fn ready<F: Future>(&mut self, future: F) -> F::Output {
        let mut op = self.op(future);
        match self.poll(&mut op) {
            Poll::Ready(output) => output,
            Poll::Pending => panic!("the operation is waiting"),
        }
    }
}

/// The output of a completed poll.
#[track_caller]
fn done<T>(poll: Poll<T>) -> T {
    match poll {
        Poll::Ready(output) => output,
        Poll::Pending => panic!("the operation is waiting"),
    }
}

// ---------------------------------------------------------------------------------------------
// Setup and packets.

/// Wisp v1 only, the test's timeouts and backoff.
fn config() -> RelayConfig {
    RelayConfig::new(URL)
        .version(WispVersionChoice::V1)
        .connect_timeout(CONNECT_TIMEOUT)
        .backoff(BACKOFF_MIN, BACKOFF_MAX)
}

/// A relay whose driver is spawned (and has not run yet).
fn start(config: RelayConfig) -> (Relay, Net) {
    let timer = ManualTimer::default();
    let dialer = Rc::new(FakeDialer::default());
    let (relay, driver) = Relay::new(config, dialer.clone(), Rc::new(timer.clone()));
    let pool = LocalPool::new();
    let done = Rc::new(Cell::new(false));
    let finished = done.clone();
    pool.spawner()
        .spawn_local(async move {
            driver.run().await;
            finished.set(true);
        })
        .expect("spawn the driver");
    let net = Net {
        pool,
        timer,
        dialer,
        done,
    };
    (relay, net)
}

/// A relay up on Wisp v1 with `credit` packets per stream.
fn up_v1(config: RelayConfig, credit: u32) -> (Relay, Net, Server) {
    let (relay, mut net) = start(config);
    let server = net.dialer.accept();
    server.send(cont(0, credit));
    net.run();
    assert_eq!(relay.stats().state, RelayState::Up);
    (relay, net, server)
}

/// CONTINUE: `credit` more packets for `stream`.
fn cont(stream: u32, credit: u32) -> Vec<u8> {
    Packet {
        stream_id: stream,
        payload: Payload::Continue {
            buffer_remaining: credit,
        },
    }
    .to_vec()
}

/// DATA for `stream`.
fn data(stream: u32, bytes: &[u8]) -> Vec<u8> {
    Packet {
        stream_id: stream,
        payload: Payload::Data(bytes),
    }
    .to_vec()
}

/// CLOSE of `stream` with the reason byte `reason`.
fn close(stream: u32, reason: u8) -> Vec<u8> {
    Packet {
        stream_id: stream,
        payload: Payload::Close(CloseReason::from(reason)),
    }
    .to_vec()
}

/// The exact bytes of a TCP CONNECT to `example.com:80` on stream `id`.
fn connect_example_com_80(id: u8) -> Vec<u8> {
    [&[0x01, id, 0, 0, 0, 0x01, 80, 0][..], b"example.com"].concat()
}

/// Reads once from `stream`.
#[track_caller]
fn read_some(net: &mut Net, stream: &mut RelayStream) -> io::Result<Vec<u8>> {
    let mut buf = [0u8; 4096];
    let n = net.ready(stream.read(&mut buf))?;
    Ok(buf[..n].to_vec())
}

// ---------------------------------------------------------------------------------------------
// 1. A v1 connection and one stream's whole life.

#[test]
fn v1_handshake_then_a_stream_end_to_end() {
    let (relay, mut net) = start(config());
    assert_eq!(relay.stats().state, RelayState::Connecting);
    let server = net.dialer.accept();
    net.run();
    assert_eq!(
        net.dialer.offers(),
        [Vec::<String>::new()],
        "V1: no subprotocol"
    );
    assert_eq!(
        relay.stats().state,
        RelayState::Connecting,
        "no CONTINUE yet"
    );

    server.send(vec![0x03, 0, 0, 0, 0, 2, 0, 0, 0]); // CONTINUE on stream 0: 2 packets
    net.run();
    let stats = relay.stats();
    assert_eq!(stats.state, RelayState::Up);
    assert_eq!(stats.version, Some(WispVersion::V1));
    assert_eq!(stats.connects, 1);
    server.expect_nothing(); // a v1 client answers nothing

    let mut stream = net.ready(relay.connect_tcp("example.com", 80)).unwrap();
    server.expect(&connect_example_com_80(1));
    assert_eq!(relay.stats().streams_open, 1);

    // Server to stream, and a read that waits for data.
    server.send(vec![0x02, 1, 0, 0, 0, b'h', b'i']);
    assert_eq!(read_some(&mut net, &mut stream).unwrap(), b"hi");
    {
        let mut buf = [0u8; 16];
        let mut read = net.op(stream.read(&mut buf));
        assert!(net.poll(&mut read).is_pending());
        server.send(data(1, b"there"));
        assert_eq!(done(net.poll(&mut read)).unwrap(), 5);
        drop(read);
        assert_eq!(&buf[..5], b"there");
    }

    // Writes are DATA packets, one credit each; the third waits for CONTINUE.
    assert_eq!(net.ready(stream.write(b"one")).unwrap(), 3);
    server.expect(&[0x02, 1, 0, 0, 0, b'o', b'n', b'e']);
    assert_eq!(net.ready(stream.write(b"two")).unwrap(), 3);
    server.expect(&[0x02, 1, 0, 0, 0, b't', b'w', b'o']);
    {
        let mut write = net.op(stream.write(b"three"));
        assert!(net.poll(&mut write).is_pending());
        server.expect_nothing();
        server.send(cont(1, 1));
        assert_eq!(done(net.poll(&mut write)).unwrap(), 5);
    }
    server.expect(&[0x02, 1, 0, 0, 0, b't', b'h', b'r', b'e', b'e']);
    let stats = relay.stats();
    assert_eq!((stats.bytes_to_relay, stats.bytes_from_relay), (11, 7));

    // A voluntary CLOSE: buffered data first, then end of stream.
    server.send(data(1, b"bye"));
    server.send(vec![0x04, 1, 0, 0, 0, 0x02]);
    assert_eq!(read_some(&mut net, &mut stream).unwrap(), b"bye");
    assert_eq!(read_some(&mut net, &mut stream).unwrap(), b"");
    assert_eq!(read_some(&mut net, &mut stream).unwrap(), b"", "EOF stays");
    let err = net.ready(stream.write(b"late")).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::BrokenPipe);
    drop(stream);
    net.run();
    server.expect_nothing(); // the server closed it: no CLOSE back

    // Dropping an open stream closes it towards the relay.
    let stream = net.ready(relay.connect_tcp("example.org", 443)).unwrap();
    server.expect(&[&[0x01, 2, 0, 0, 0, 0x01, 0xbb, 0x01][..], b"example.org"].concat());
    drop(stream);
    net.run();
    server.expect(&[0x04, 2, 0, 0, 0, 0x02]);
    let stats = relay.stats();
    assert_eq!(stats.streams_opened, 2);
    assert_eq!(stats.streams_open, 0);
    assert_eq!(stats.streams_failed, 0);
}

#[test]
fn small_writes_wait_for_the_next_task_and_leave_as_one_packet() {
    let (relay, mut net, server) = up_v1(config(), 2);
    net.timer.hold_turns();
    let mut stream = net.ready(relay.connect_tcp("example.com", 80)).unwrap();
    server.expect_nothing();
    net.timer.turn();
    net.run();
    server.expect(&connect_example_com_80(1));

    // Three writes in one task (a guest's segments, one frame each): one DATA, one credit.
    for piece in [&b"one "[..], b"two ", b"three"] {
        assert_eq!(net.ready(stream.write(piece)).unwrap(), piece.len());
    }
    server.expect_nothing();
    net.timer.turn();
    net.run();
    server.expect(&data(1, b"one two three"));
    // A full packet's worth goes at once; its second credit is the last.
    let big = vec![7u8; 64 * 1024];
    assert_eq!(net.ready(stream.write(&big)).unwrap(), big.len());
    server.expect(&data(1, &big));
    let mut write = net.op(stream.write(b"more"));
    assert!(net.poll(&mut write).is_pending(), "no credit left");
    server.expect_nothing();
}

#[test]
fn shutdown_stops_writes_but_not_reads() {
    let (relay, mut net, server) = up_v1(config(), 8);
    let mut stream = net.ready(relay.connect_tcp("example.com", 80)).unwrap();
    server.expect(&connect_example_com_80(1));
    net.ready(stream.close()).unwrap();
    let err = net.ready(stream.write(b"x")).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::BrokenPipe);
    server.expect_nothing(); // Wisp has no half-close
    server.send(data(1, b"reply"));
    assert_eq!(read_some(&mut net, &mut stream).unwrap(), b"reply");
}

// ---------------------------------------------------------------------------------------------
// 2. Refusal.

#[test]
fn refused_stream_errors_with_the_destination() {
    let (relay, mut net, server) = up_v1(config(), 8);
    let mut stream = net.ready(relay.connect_tcp("example.com", 80)).unwrap();
    server.expect(&connect_example_com_80(1));
    let mut buf = [0u8; 16];
    {
        let mut read = net.op(stream.read(&mut buf));
        assert!(net.poll(&mut read).is_pending());
        server.send(close(1, 0x44));
        let err = done(net.poll(&mut read)).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::ConnectionRefused);
        assert_eq!(
            err.to_string(),
            "relay: example.com:80: connection refused (0x44)"
        );
    }
    let err = net.ready(stream.write(b"x")).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::ConnectionRefused);
    assert_eq!(relay.stats().streams_failed, 1);
    drop(stream);
    net.run();
    server.expect_nothing(); // already closed by the server

    // Another reason reads as a reset, named.
    let mut stream = net.ready(relay.connect_tcp("example.com", 80)).unwrap();
    server.expect(&connect_example_com_80(2));
    server.send(close(2, 0x42));
    let err = read_some(&mut net, &mut stream).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::ConnectionReset);
    assert_eq!(
        err.to_string(),
        "relay: example.com:80: host unreachable (0x42)"
    );
    assert_eq!(relay.stats().streams_failed, 2);
}

// ---------------------------------------------------------------------------------------------
// 3. Losing the relay, reconnecting, backoff.

#[test]
fn relay_loss_fails_streams_then_reconnects_after_backoff() {
    let (relay, mut net, server) = up_v1(config(), 8);
    let mut stream = net.ready(relay.connect_tcp("example.com", 80)).unwrap();
    server.expect(&connect_example_com_80(1));
    // A refused stream whose handle is still around when the relay goes.
    let refused = net.ready(relay.connect_tcp("example.com", 80)).unwrap();
    server.expect(&connect_example_com_80(2));
    server.send(close(2, 0x44));
    net.run();
    assert_eq!(relay.stats().streams_failed, 1);

    let mut buf = [0u8; 16];
    {
        let mut read = net.op(stream.read(&mut buf));
        assert!(net.poll(&mut read).is_pending());
        drop(server); // the relay hangs up
        let err = done(net.poll(&mut read)).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::ConnectionAborted);
        assert_eq!(
            err.to_string(),
            "relay connection lost: the relay closed the WebSocket"
        );
    }
    let err = net.ready(stream.write(b"x")).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::ConnectionAborted);
    let stats = relay.stats();
    assert_eq!(stats.state, RelayState::Down);
    assert_eq!(stats.version, None);
    assert_eq!(
        (stats.connects, stats.losses, stats.connect_failures),
        (1, 1, 0)
    );
    assert_eq!(stats.streams_open, 0);
    assert_eq!(
        stats.streams_failed, 2,
        "the lost stream; the refused one once"
    );
    assert_eq!(
        stats.last_error.as_deref(),
        Some("the relay closed the WebSocket")
    );

    // Down: opens fail at once, naming the relay.
    let err = net.ready(relay.connect_tcp("example.com", 80)).unwrap_err();
    assert_eq!(
        err,
        RelayError::Unavailable {
            url: URL.into(),
            reason: "the relay closed the WebSocket".into()
        }
    );
    assert!(err.to_string().contains(URL), "{err}");

    // The next dial comes after the minimum backoff, not before.
    assert_eq!(net.dialer.dials(), 1);
    net.advance(BACKOFF_MIN - MS);
    assert_eq!(net.dialer.dials(), 1);
    net.advance(MS);
    assert_eq!(net.dialer.dials(), 2);
    assert_eq!(relay.stats().state, RelayState::Connecting);

    // While connecting, an open waits for the handshake.
    let mut open = net.op(relay.connect_tcp("example.com", 80));
    assert!(net.poll(&mut open).is_pending());
    let server = net.dialer.accept();
    net.run();
    server.send(cont(0, 8));
    let mut fresh = done(net.poll(&mut open)).unwrap();
    assert_eq!(relay.stats().connects, 2);
    server.expect(&connect_example_com_80(1)); // stream IDs start over

    // The old handles (same IDs, old connection) touch nothing of the new one.
    drop(stream);
    drop(refused);
    net.run();
    server.expect_nothing();
    server.send(data(1, b"new"));
    assert_eq!(read_some(&mut net, &mut fresh).unwrap(), b"new");
    assert_eq!(net.ready(fresh.write(b"ok")).unwrap(), 2);
    server.expect(&[0x02, 1, 0, 0, 0, b'o', b'k']);
}

#[test]
fn socket_error_is_a_loss_with_its_reason() {
    let (relay, mut net, server) = up_v1(config(), 8);
    let mut stream = net.ready(relay.connect_tcp("example.com", 80)).unwrap();
    server.fail("reset by peer");
    let err = read_some(&mut net, &mut stream).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::ConnectionAborted);
    let message = err.to_string();
    assert!(message.contains("reset by peer"), "{message}");
    assert_eq!(relay.stats().losses, 1);
}

#[test]
fn what_arrived_before_a_loss_is_still_read() {
    let (relay, mut net) = start(config().version(WispVersionChoice::V2));
    let server = net.dialer.accept();
    server.send(server_info(&[0x05, 0, 0, 0, 0])); // stream open confirmation
    server.send(cont(0, 8));
    net.run();
    server.expect(&CLIENT_INFO);
    let mut open = net.op(relay.connect_tcp("example.com", 80));
    assert!(net.poll(&mut open).is_pending());
    server.send(cont(1, 8));
    let mut cut = done(net.poll(&mut open)).unwrap();
    drop(open);
    let mut open = net.op(relay.connect_tcp("example.com", 80));
    assert!(net.poll(&mut open).is_pending());
    server.send(cont(2, 8));
    let mut finished = done(net.poll(&mut open)).unwrap();
    drop(open);
    // A third open is still waiting for its confirmation when the relay goes.
    let mut waiting = net.op(relay.connect_tcp("example.com", 80));
    assert!(net.poll(&mut waiting).is_pending());

    server.send(data(1, b"partial"));
    server.send(data(2, b"complete"));
    server.send(close(2, 0x02));
    drop(server);
    net.run();
    assert_eq!(relay.stats().state, RelayState::Down);
    assert_eq!(
        done(net.poll(&mut waiting)).unwrap_err(),
        RelayError::Lost {
            reason: "the relay closed the WebSocket".into()
        }
    );
    drop(waiting);

    // The cut stream: its data, then the loss.
    assert_eq!(read_some(&mut net, &mut cut).unwrap(), b"partial");
    let err = read_some(&mut net, &mut cut).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::ConnectionAborted);
    // The finished stream ended before the loss: its data, then a normal end.
    assert_eq!(read_some(&mut net, &mut finished).unwrap(), b"complete");
    assert_eq!(read_some(&mut net, &mut finished).unwrap(), b"");
    assert_eq!(
        relay.stats().streams_failed,
        2,
        "the cut stream and the open"
    );

    // Nothing of the old connection stays once its handles are gone.
    assert_eq!(relay.shared.borrow().orphans.len(), 2);
    drop(cut);
    drop(finished);
    assert!(relay.shared.borrow().orphans.is_empty());
}

#[test]
fn backoff_doubles_up_to_the_max_and_resets_after_a_connection() {
    let (relay, mut net) = start(config());
    net.dialer.fail("connection refused");
    net.run();
    assert_eq!(net.dialer.dials(), 1);
    let stats = relay.stats();
    assert_eq!(stats.state, RelayState::Down);
    assert_eq!(stats.connect_failures, 1);
    let reason = stats.last_error.unwrap();
    assert!(reason.contains("connection refused"), "{reason}");

    let mut dials = 1;
    for wait in [100, 200, 400, 800, 800] {
        let wait = Duration::from_millis(wait);
        net.dialer.fail("connection refused");
        net.advance(wait - MS);
        assert_eq!(net.dialer.dials(), dials, "too early: {wait:?}");
        net.advance(MS);
        dials += 1;
        assert_eq!(net.dialer.dials(), dials, "after {wait:?}");
    }
    assert_eq!(relay.stats().connect_failures, 6);

    // A connection that came up resets the backoff.
    let server = net.dialer.accept();
    net.advance(BACKOFF_MAX);
    assert_eq!(net.dialer.dials(), dials + 1);
    server.send(cont(0, 8));
    net.run();
    assert_eq!(relay.stats().state, RelayState::Up);
    drop(server);
    net.run();
    net.advance(BACKOFF_MIN - MS);
    assert_eq!(net.dialer.dials(), dials + 1);
    net.advance(MS);
    assert_eq!(net.dialer.dials(), dials + 2);
}

#[test]
fn a_connection_refused_while_down_brings_the_next_dial_forward() {
    let long = Duration::from_secs(30);
    let (relay, mut net) = start(config().backoff(long, long));
    net.dialer.fail("connection refused");
    net.run();
    assert_eq!(net.dialer.dials(), 1);
    // Nobody asks: the backoff runs its course.
    net.advance(Duration::from_secs(5));
    assert_eq!(net.dialer.dials(), 1);
    // A connection while down fails at once, and the relay is tried again right away (at
    // least a second after the last attempt, which has long passed).
    let err = net.ready(relay.connect_tcp("example.com", 80)).unwrap_err();
    assert!(matches!(err, RelayError::Unavailable { .. }), "{err:?}");
    let server = net.dialer.accept();
    net.run();
    assert_eq!(net.dialer.dials(), 2);
    server.send(cont(0, 8));
    net.run();
    assert_eq!(relay.stats().state, RelayState::Up);
    drop(server);
    net.run();
    assert_eq!(relay.stats().state, RelayState::Down);

    // Down again: a refused connection right after the loss waits out the one-second floor.
    net.dialer.fail("connection refused");
    net.advance(long);
    assert_eq!(net.dialer.dials(), 3);
    let err = net.ready(relay.connect_tcp("example.com", 80)).unwrap_err();
    assert!(matches!(err, RelayError::Unavailable { .. }), "{err:?}");
    net.advance(Duration::from_millis(999));
    assert_eq!(
        net.dialer.dials(),
        3,
        "not sooner than a second after the last attempt"
    );
    net.dialer.fail("connection refused");
    net.advance(MS);
    assert_eq!(net.dialer.dials(), 4);
    // Asked once, redialed once: the next waits for its backoff again.
    net.advance(Duration::from_secs(10));
    assert_eq!(net.dialer.dials(), 4);
}

#[test]
fn protocol_errors_are_counted_across_reconnects() {
    let (relay, mut net, server) = up_v1(config(), 8);
    server.send(vec![0xff, 0, 0, 0]); // not a packet
    server.send(data(0, b"x")); // DATA on stream 0
    net.run();
    assert_eq!(relay.stats().protocol_errors, 2);
    assert_eq!(relay.stats().state, RelayState::Up, "ignored, not fatal");
    drop(server);
    net.run();
    assert_eq!(relay.stats().protocol_errors, 2, "kept after the loss");
    let server = net.dialer.accept();
    net.advance(BACKOFF_MIN);
    server.send(cont(0, 8));
    server.send(vec![0xff]);
    net.run();
    assert_eq!(relay.stats().protocol_errors, 3);
}

// ---------------------------------------------------------------------------------------------
// 4. Backpressure from a slow reader.

#[test]
fn a_full_stream_buffer_stops_reading_the_socket() {
    let (relay, mut net, server) = up_v1(config().stream_buffer(1024), 8);
    let mut stream = net.ready(relay.connect_tcp("example.com", 80)).unwrap();
    server.expect(&connect_example_com_80(1));
    let mut sent = Vec::new();
    for i in 0..50u8 {
        let piece: Vec<u8> = (0..100u8)
            .map(|j| i.wrapping_mul(7).wrapping_add(j))
            .collect();
        server.send(data(1, &piece));
        sent.extend_from_slice(&piece);
    }
    net.run();
    // 11 packets make 1100 >= 1024 bytes: the driver stops there.
    assert_eq!(server.unread(), 39);
    assert_eq!(relay.stats().bytes_from_relay, 1100);
    net.run();
    assert_eq!(server.unread(), 39, "stays paused");

    // Writing still works while receiving is paused.
    assert_eq!(net.ready(stream.write(b"up")).unwrap(), 2);
    server.expect(&[0x02, 1, 0, 0, 0, b'u', b'p']);

    // One piece read frees room for exactly one more packet.
    let first = read_some(&mut net, &mut stream).unwrap();
    assert_eq!(first, sent[..100]);
    assert_eq!(server.unread(), 38);
    assert_eq!(relay.stats().bytes_from_relay, 1200);

    // Everything arrives, in order, and the buffer never holds much more than its limit.
    let mut received = first;
    while received.len() < sent.len() {
        received.extend(read_some(&mut net, &mut stream).unwrap());
        let buffered = relay.stats().bytes_from_relay as usize - received.len();
        assert!(buffered < 1024 + 100, "{buffered} bytes buffered");
    }
    assert_eq!(received, sent);
    assert_eq!(server.unread(), 0);
}

#[test]
fn streams_together_over_the_budget_stop_reading_until_one_reader_frees_enough() {
    let config = config().stream_buffer(1 << 20).receive_budget(1000);
    let (relay, mut net, server) = up_v1(config, 8);
    let mut first = net.ready(relay.connect_tcp("example.com", 80)).unwrap();
    server.expect(&connect_example_com_80(1));
    let _second = net.ready(relay.connect_tcp("example.com", 80)).unwrap();
    server.expect(&connect_example_com_80(2));
    // 300 bytes each, alternating: neither stream is near its own limit, but after four
    // packets (1200 >= 1000 bytes together) the driver stops.
    for _ in 0..5 {
        server.send(data(1, &[1; 300]));
        server.send(data(2, &[2; 300]));
    }
    net.run();
    assert_eq!(relay.stats().bytes_from_relay, 1200);
    assert_eq!(server.unread(), 6);
    // Reading 300 of the first stream's bytes: 900 together, below the budget again.
    assert_eq!(read_some(&mut net, &mut first).unwrap(), [1; 300]);
    assert_eq!(
        relay.stats().bytes_from_relay,
        1500,
        "one more packet, then over again"
    );
    assert_eq!(server.unread(), 5);
}

#[test]
fn a_burst_is_read_in_slices_without_losing_the_rest() {
    // More messages than the driver handles per wake-up: it comes back for the rest.
    let (relay, mut net, server) = up_v1(config(), 8);
    let mut stream = net.ready(relay.connect_tcp("example.com", 80)).unwrap();
    for i in 0..200u8 {
        server.send(data(1, &[i]));
    }
    net.run();
    assert_eq!(server.unread(), 0);
    let mut received = Vec::new();
    while received.len() < 200 {
        received.extend(read_some(&mut net, &mut stream).unwrap());
    }
    assert_eq!(received, (0..200u8).collect::<Vec<_>>());
}

#[test]
fn a_slow_relay_stops_the_writer() {
    let client = ClientConfig::builder()
        .max_queued_bytes(20)
        .build()
        .unwrap();
    let (relay, mut net, server) = up_v1(config().client(client), 100);
    let mut stream = net.ready(relay.connect_tcp("example.com", 80)).unwrap();
    server.expect(&connect_example_com_80(1));
    server.set_write_bound(1);
    // One message on the wire and the client's queue (20 bytes) full: a write waits until the
    // server reads. Everything arrives in order, once.
    let (mut sent, mut received, mut waits) = (Vec::new(), Vec::new(), 0);
    for byte in b'a'..=b'l' {
        let chunk = [byte; 10];
        let mut offset = 0;
        while offset < chunk.len() {
            let taken = {
                let mut write = net.op(stream.write(&chunk[offset..]));
                match net.poll(&mut write) {
                    Poll::Ready(n) => Some(n.unwrap()),
                    Poll::Pending => None,
                }
            };
            match taken {
                Some(n) => {
                    sent.extend_from_slice(&chunk[offset..offset + n]);
                    offset += n;
                }
                None => {
                    if waits == 0 {
                        assert!(sent.len() <= 10 + 20, "{} bytes before waiting", sent.len());
                    }
                    waits += 1;
                    let message = server.recv().expect("a message waits for the server");
                    assert_eq!(message[..5], [0x02, 1, 0, 0, 0]);
                    received.extend_from_slice(&message[5..]);
                    net.run();
                }
            }
        }
    }
    net.run();
    while let Some(message) = server.recv() {
        received.extend_from_slice(&message[5..]);
        net.run();
    }
    assert!(waits > 0, "the writer never waited");
    assert_eq!(received, sent);
    assert_eq!(sent.len(), 120);
}

#[test]
fn dropping_a_full_stream_resumes_reading() {
    let (relay, mut net, server) = up_v1(config().stream_buffer(1024), 8);
    let full = net.ready(relay.connect_tcp("example.com", 80)).unwrap();
    let mut other = net.ready(relay.connect_tcp("example.com", 80)).unwrap();
    for _ in 0..20 {
        server.send(data(1, &[1; 100]));
    }
    server.send(data(2, b"behind"));
    net.run();
    assert_eq!(server.unread(), 10, "all streams wait for the full one");
    drop(full);
    net.run();
    assert_eq!(server.unread(), 0);
    assert_eq!(read_some(&mut net, &mut other).unwrap(), b"behind");
}

// ---------------------------------------------------------------------------------------------
// 5. Versions.

/// A v2 server's INFO: version 2.0 with the given extension entries.
fn server_info(extensions: &[u8]) -> Vec<u8> {
    [&[0x05, 0, 0, 0, 0, 0x02, 0x00][..], extensions].concat()
}

/// The client's INFO (no credentials): v2.0, UDP, MOTD, stream open confirmation.
const CLIENT_INFO: [u8; 22] = [
    0x05, 0, 0, 0, 0, 0x02, 0x00, // INFO on stream 0, v2.0
    0x01, 0, 0, 0, 0, // UDP
    0x04, 0, 0, 0, 0, // MOTD
    0x05, 0, 0, 0, 0, // stream open confirmation
];

#[test]
fn auto_falls_back_to_v1_and_stays_there() {
    let (relay, mut net) = start(config().version(WispVersionChoice::Auto));
    net.dialer.refuse_v2();
    let server = net.dialer.accept();
    net.run();
    assert_eq!(
        net.dialer.offers(),
        [vec![V2_SUBPROTOCOL.to_string()], vec![]]
    );
    server.send(cont(0, 8));
    net.run();
    assert_eq!(relay.stats().state, RelayState::Up);
    assert_eq!(relay.stats().version, Some(WispVersion::V1));
    let _stream = net.ready(relay.connect_tcp("example.com", 80)).unwrap();
    server.expect(&connect_example_com_80(1));

    drop(server);
    let _server = net.dialer.accept();
    net.advance(BACKOFF_MIN);
    assert_eq!(
        net.dialer.offers(),
        [vec![V2_SUBPROTOCOL.to_string()], vec![], vec![]],
        "the redial does not offer v2 again"
    );
}

#[test]
fn auto_offers_v2_first() {
    let (relay, mut net) = start(config().version(WispVersionChoice::Auto));
    let server = net.dialer.accept();
    net.run();
    assert_eq!(net.dialer.offers(), [vec![V2_SUBPROTOCOL.to_string()]]);
    server.send(server_info(&[]));
    net.run();
    server.expect(&CLIENT_INFO);
    server.send(cont(0, 8));
    net.run();
    assert_eq!(relay.stats().version, Some(WispVersion::V2));
}

#[test]
fn v2_never_falls_back() {
    let (relay, mut net) = start(config().version(WispVersionChoice::V2));
    net.dialer.refuse_v2();
    net.run();
    assert_eq!(net.dialer.offers(), [vec![V2_SUBPROTOCOL.to_string()]]);
    let stats = relay.stats();
    assert_eq!((stats.state, stats.connect_failures), (RelayState::Down, 1));
    net.advance(BACKOFF_MIN);
    assert_eq!(net.dialer.offers().concat(), [V2_SUBPROTOCOL; 2]);
}

#[test]
fn v2_handshake_with_an_info_first_server() {
    let (relay, mut net) = start(config().version(WispVersionChoice::V2));
    let server = net.dialer.accept();
    net.run();
    assert_eq!(net.dialer.offers(), [vec![V2_SUBPROTOCOL.to_string()]]);
    server.send(server_info(&[0x01, 0, 0, 0, 0])); // UDP
    net.run();
    server.expect(&CLIENT_INFO);
    assert_eq!(relay.stats().state, RelayState::Connecting);
    server.send(cont(0, 16));
    net.run();
    let stats = relay.stats();
    assert_eq!(stats.state, RelayState::Up);
    assert_eq!(stats.version, Some(WispVersion::V2));
    // No open confirmation offered: the stream is usable at once.
    let mut stream = net.ready(relay.connect_tcp("example.com", 80)).unwrap();
    server.expect(&connect_example_com_80(1));
    server.send(data(1, b"v2"));
    assert_eq!(read_some(&mut net, &mut stream).unwrap(), b"v2");
}

#[test]
fn v2_open_confirmation_refusal_and_timeout() {
    let (relay, mut net) = start(config().version(WispVersionChoice::V2));
    let server = net.dialer.accept();
    net.run();
    server.send(server_info(&[0x05, 0, 0, 0, 0])); // stream open confirmation
    server.send(cont(0, 4));
    net.run();
    server.expect(&CLIENT_INFO);
    assert_eq!(relay.stats().state, RelayState::Up);

    // Confirmed by a CONTINUE on the stream.
    let mut open = net.op(relay.connect_tcp("example.com", 80));
    assert!(net.poll(&mut open).is_pending());
    server.expect(&connect_example_com_80(1));
    server.send(cont(1, 4));
    let mut stream = done(net.poll(&mut open)).unwrap();
    drop(open);
    assert_eq!(net.ready(stream.write(b"go")).unwrap(), 2);
    server.expect(&[0x02, 1, 0, 0, 0, b'g', b'o']);

    // Refused: the open itself fails, with the destination and the reason.
    let mut open = net.op(relay.connect_tcp("blocked.test", 25));
    assert!(net.poll(&mut open).is_pending());
    server.expect(&[&[0x01, 2, 0, 0, 0, 0x01, 25, 0][..], b"blocked.test"].concat());
    server.send(close(2, 0x48));
    assert_eq!(
        done(net.poll(&mut open)).unwrap_err(),
        RelayError::Refused {
            host: "blocked.test".into(),
            port: 25,
            reason: CloseReason::HostBlocked
        }
    );
    drop(open);
    net.run();
    server.expect_nothing();

    // Never confirmed: a timeout, and the stream is closed towards the relay.
    let mut open = net.op(relay.connect_tcp("slow.test", 8080));
    assert!(net.poll(&mut open).is_pending());
    server.expect(&[&[0x01, 3, 0, 0, 0, 0x01, 0x90, 0x1f][..], b"slow.test"].concat());
    net.advance(CONNECT_TIMEOUT - MS);
    assert!(net.poll(&mut open).is_pending());
    net.advance(MS);
    assert_eq!(
        done(net.poll(&mut open)).unwrap_err(),
        RelayError::Timeout {
            host: "slow.test".into(),
            port: 8080,
            timeout: CONNECT_TIMEOUT
        }
    );
    net.run();
    server.expect(&[0x04, 3, 0, 0, 0, 0x02]);
    assert_eq!(relay.stats().streams_open, 1, "only the confirmed stream");
}

// ---------------------------------------------------------------------------------------------
// 6. UDP.

#[test]
fn udp_datagrams_both_ways_and_overflow_dropped() {
    // No TCP credit at all: UDP does not use it.
    let (relay, mut net, server) = up_v1(config().datagram_queue(2), 0);
    let flow = net.ready(relay.open_udp("10.0.0.1", 53)).unwrap();
    server.expect(&[&[0x01, 1, 0, 0, 0, 0x02, 53, 0][..], b"10.0.0.1"].concat());

    assert!(flow.send(b"query").unwrap());
    assert!(flow.send(b"again").unwrap());
    net.run();
    server.expect(&[&[0x02, 1, 0, 0, 0][..], b"query"].concat());
    server.expect(&[&[0x02, 1, 0, 0, 0][..], b"again"].concat());

    for answer in [&b"a1"[..], b"a2", b"a3", b"a4"] {
        server.send(data(1, answer));
    }
    net.run();
    assert_eq!(relay.stats().datagrams_dropped, 2);
    assert_eq!(net.ready(flow.recv()).unwrap(), b"a1");
    assert_eq!(net.ready(flow.recv()).unwrap(), b"a2");
    let mut recv = net.op(flow.recv());
    assert!(net.poll(&mut recv).is_pending(), "a3 and a4 were dropped");
    server.send(data(1, b"a5"));
    assert_eq!(done(net.poll(&mut recv)).unwrap(), b"a5");
    drop(recv);

    // A UDP flow never pauses the socket, whatever its queue holds.
    for _ in 0..5 {
        server.send(data(1, &[0; 2000]));
    }
    net.run();
    assert_eq!(server.unread(), 0);
    assert_eq!(relay.stats().datagrams_dropped, 5);

    drop(flow);
    net.run();
    server.expect(&[0x04, 1, 0, 0, 0, 0x02]);
}

#[test]
fn udp_flow_closed_by_the_server_keeps_its_reason() {
    let (relay, mut net, server) = up_v1(config(), 0);
    let flow = net.ready(relay.open_udp("10.0.0.1", 9)).unwrap();
    server.expect(&[&[0x01, 1, 0, 0, 0, 0x02, 9, 0][..], b"10.0.0.1"].concat());
    assert!(matches!(
        flow.send(&[]),
        Err(RelayError::Send(SendError::EmptyDatagram))
    ));
    let mut recv = net.op(flow.recv());
    assert!(net.poll(&mut recv).is_pending());
    server.send(close(1, 0x44));
    let refused = RelayError::Refused {
        host: "10.0.0.1".into(),
        port: 9,
        reason: CloseReason::ConnectionRefused,
    };
    assert_eq!(done(net.poll(&mut recv)).unwrap_err(), refused);
    drop(recv);
    assert_eq!(flow.send(b"late").unwrap_err(), refused);
    assert_eq!(
        refused.to_string(),
        "the relay could not reach 10.0.0.1:9: connection refused (0x44)"
    );
}

// ---------------------------------------------------------------------------------------------
// 7. Timeouts of the connection attempt.

#[test]
fn silent_server_fails_the_handshake_and_is_retried() {
    let (relay, mut net) = start(config());
    let server = net.dialer.accept();
    net.advance(Duration::from_secs(1));
    // An open waiting for the connection learns of its failure.
    let mut open = net.op(relay.connect_tcp("example.com", 80));
    assert!(net.poll(&mut open).is_pending());
    net.advance(CONNECT_TIMEOUT - Duration::from_secs(1) - MS);
    assert_eq!(relay.stats().state, RelayState::Connecting);
    assert!(net.poll(&mut open).is_pending());
    net.advance(MS);
    let stats = relay.stats();
    assert_eq!(stats.state, RelayState::Down);
    assert_eq!(stats.connect_failures, 1);
    assert_eq!(
        stats.last_error.as_deref(),
        Some("no Wisp handshake within 10s")
    );
    assert!(server.dropped_by_client());
    assert!(matches!(
        done(net.poll(&mut open)),
        Err(RelayError::Unavailable { .. })
    ));

    assert_eq!(net.dialer.dials(), 1);
    let server = net.dialer.accept();
    net.advance(BACKOFF_MIN);
    assert_eq!(net.dialer.dials(), 2);
    // Silent again: the attempt fails again and the wait doubles.
    net.advance(CONNECT_TIMEOUT);
    assert_eq!(relay.stats().connect_failures, 2);
    assert!(server.dropped_by_client());
    net.advance(2 * BACKOFF_MIN - MS);
    assert_eq!(net.dialer.dials(), 2);
    net.advance(MS);
    assert_eq!(net.dialer.dials(), 3);
}

#[test]
fn a_dial_that_never_answers_times_out() {
    let (relay, mut net) = start(config());
    net.run();
    assert_eq!(net.dialer.dials(), 1);
    net.advance(CONNECT_TIMEOUT - MS);
    assert_eq!(relay.stats().state, RelayState::Connecting);
    net.advance(MS);
    let stats = relay.stats();
    assert_eq!((stats.state, stats.connect_failures), (RelayState::Down, 1));
    assert_eq!(
        stats.last_error.as_deref(),
        Some("no WebSocket connection within 10s")
    );
}

#[test]
fn the_connect_timeout_covers_dial_and_handshake_together() {
    let (relay, mut net) = start(config());
    net.advance(Duration::from_secs(6));
    let server = net.dialer.accept(); // the dial took 6 s
    net.run();
    assert_eq!(relay.stats().state, RelayState::Connecting);
    net.advance(Duration::from_secs(4));
    assert_eq!(relay.stats().state, RelayState::Down, "10 s in all");
    assert!(server.dropped_by_client());
}

// ---------------------------------------------------------------------------------------------
// 8. The driver's end.

#[test]
fn driver_ends_when_the_last_stream_goes_after_the_handle() {
    let (relay, mut net, server) = up_v1(config(), 8);
    let mut stream = net.ready(relay.connect_tcp("example.com", 80)).unwrap();
    server.expect(&connect_example_com_80(1));
    drop(relay);
    net.run();
    assert!(!net.done.get(), "the stream still uses the relay");
    server.send(data(1, b"still"));
    assert_eq!(read_some(&mut net, &mut stream).unwrap(), b"still");
    drop(stream);
    net.run();
    assert!(net.done.get());
    // The WebSocket's clean close ends the stream on the server.
    assert!(server.closed_by_client());
    assert!(server.dropped_by_client());
}

#[test]
fn driver_ends_when_the_handle_goes_last() {
    let (relay, mut net, server) = up_v1(config(), 8);
    let stream = net.ready(relay.connect_tcp("example.com", 80)).unwrap();
    drop(stream);
    net.run();
    assert!(!net.done.get());
    drop(relay);
    net.run();
    assert!(net.done.get());
    assert!(server.closed_by_client());
}

#[test]
fn driver_ends_while_waiting_to_redial() {
    let (relay, mut net) =
        start(config().backoff(Duration::from_secs(30), Duration::from_secs(30)));
    net.dialer.fail("down");
    net.run();
    assert_eq!(relay.stats().state, RelayState::Down);
    drop(relay);
    net.run();
    assert!(net.done.get(), "no 30 s wait for nothing");
    assert_eq!(net.dialer.dials(), 1);
}

#[test]
fn driver_ends_while_dialing() {
    let (relay, mut net) = start(config());
    net.run();
    assert_eq!(net.dialer.dials(), 1);
    drop(relay);
    net.run();
    assert!(net.done.get());
}
