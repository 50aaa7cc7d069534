//! [`RelayDriver`]: the task that keeps a relay connected and moves its packets. It dials,
//! runs the Wisp handshake, hands received packets to the client and the client's packets to
//! the WebSocket, and after a failure waits (exponential backoff, injected timer) and dials
//! again.

use std::cell::RefCell;
use std::future::{poll_fn, Future};
use std::pin::pin;
use std::rc::{Rc, Weak};
use std::task::Poll;
use std::time::Duration;

use futures::future::{self, Either, LocalBoxFuture};

use crate::timer::Timer;
use crate::wisp::{Client, Event, HandleError, V2_SUBPROTOCOL};

use super::shared::{RelayState, Shared};
use super::socket::{Close, Dialer, MessageSocket, WsMessage};
use super::WispVersionChoice;

/// Messages handled per wake-up before the driver lets other tasks run.
const RECEIVE_BUDGET: usize = 64;
/// Queued bytes that go to the socket at once; less waits for [`Timer::next_task`].
const FLUSH_AT: usize = 64 * 1024;
/// How long a clean close of the WebSocket may take when the relay is no longer needed.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);
/// While the backoff runs, a connection the relay had to refuse brings the next attempt
/// forward to this long after the last one: a relay that comes back is used at the next
/// connection, not after up to `backoff_max`, and attempts stay at most one a second.
const REDIAL_ON_DEMAND: Duration = Duration::from_secs(1);

/// Why a connection ended.
enum End {
    /// Every handle is gone: the driver stops.
    Unused,
    /// The connection failed or was closed; the reason is kept for errors and stats.
    Failed(String),
}

/// The relay's connection task. Spawn [`run`](Self::run) on the embedder's runtime; it ends
/// when every [`Relay`](super::Relay) handle (and every stream) is gone.
pub struct RelayDriver {
    shared: Weak<RefCell<Shared>>,
    dialer: Rc<dyn Dialer>,
    timer: Rc<dyn Timer>,
}

impl RelayDriver {
    pub(crate) fn new(
        shared: Weak<RefCell<Shared>>,
        dialer: Rc<dyn Dialer>,
        timer: Rc<dyn Timer>,
    ) -> Self {
        Self {
            shared,
            dialer,
            timer,
        }
    }

    /// Keeps the relay connected until it is no longer used.
    pub async fn run(self) {
        let mut backoff: Option<Duration> = None;
        loop {
            if let Some(delay) = backoff {
                if self
                    .unless_unused(self.wait_to_redial(delay))
                    .await
                    .is_none()
                {
                    return;
                }
            }
            let Some(shared) = self.shared.upgrade() else {
                return;
            };
            let (config, v1_only) = {
                let mut sh = shared.borrow_mut();
                sh.set_connecting();
                (sh.config.clone(), sh.v1_only)
            };
            drop(shared);
            let (min, max) = (config.backoff_min, config.backoff_max);
            // One deadline for the dial and the handshake together.
            let mut deadline = self.timer.sleep(config.connect_timeout);
            let dialing = Box::pin(self.dial(&config.url, config.version, v1_only));
            let dialed = match self
                .unless_unused(future::select(dialing, &mut deadline))
                .await
            {
                None => return,
                Some(Either::Left((dialed, _))) => dialed,
                Some(Either::Right(_)) => Err(format!(
                    "no WebSocket connection within {:?}",
                    config.connect_timeout
                )),
            };
            let socket = match dialed {
                Ok(socket) => socket,
                Err(reason) => {
                    let Some(shared) = self.shared.upgrade() else {
                        return;
                    };
                    tracing::warn!(url = %config.url, %reason, "relay: cannot connect");
                    shared.borrow_mut().set_down(reason, false);
                    backoff = Some(backoff.map_or(min, |b| (b * 2).min(max)));
                    continue;
                }
            };
            {
                let Some(shared) = self.shared.upgrade() else {
                    return;
                };
                shared.borrow_mut().client = Some(Client::new(config.client.clone()));
            }
            let end = self.serve(socket, deadline, config.connect_timeout).await;
            let Some(shared) = self.shared.upgrade() else {
                return;
            };
            let reason = match end {
                End::Unused => return,
                End::Failed(reason) => reason,
            };
            let was_up = shared.borrow().state == RelayState::Up;
            tracing::warn!(url = %config.url, %reason, was_up, "relay: connection ended");
            shared.borrow_mut().set_down(reason, was_up);
            backoff = if was_up {
                Some(min)
            } else {
                Some(backoff.map_or(min, |b| (b * 2).min(max)))
            };
        }
    }

    /// Waits `delay`, or less when a connection is refused meanwhile because the relay is
    /// down ([`REDIAL_ON_DEMAND`] after the last attempt at the earliest).
    async fn wait_to_redial(&self, delay: Duration) {
        if let Some(shared) = self.shared.upgrade() {
            shared.borrow_mut().redial_wanted = false;
        }
        let backoff = self.timer.sleep(delay);
        let demand = async {
            if delay <= REDIAL_ON_DEMAND {
                return future::pending().await;
            }
            self.timer.sleep(REDIAL_ON_DEMAND).await;
            poll_fn(|cx| match self.shared.upgrade() {
                Some(shared) if shared.borrow().redial_wanted => Poll::Ready(()),
                Some(shared) => {
                    shared.borrow_mut().driver = Some(cx.waker().clone());
                    Poll::Pending
                }
                None => Poll::Ready(()),
            })
            .await
        };
        future::select(backoff, pin!(demand)).await;
    }

    /// Runs `work` unless every handle goes first (then `None`): waiting between attempts or
    /// dialing must not keep alive a driver nobody needs (`Shared` wakes the driver when it
    /// is dropped).
    async fn unless_unused<T>(&self, work: impl Future<Output = T>) -> Option<T> {
        let unused = poll_fn(|cx| match self.shared.upgrade() {
            None => Poll::Ready(()),
            Some(shared) => {
                shared.borrow_mut().driver = Some(cx.waker().clone());
                Poll::Pending
            }
        });
        match future::select(pin!(work), pin!(unused)).await {
            Either::Left((output, _)) => Some(output),
            Either::Right(_) => None,
        }
    }

    /// Opens the WebSocket, offering v2 as configured (and falling back to v1 on `Auto`).
    async fn dial(
        &self,
        url: &str,
        version: WispVersionChoice,
        v1_only: bool,
    ) -> Result<Box<dyn MessageSocket>, String> {
        let offer_v2 = match version {
            WispVersionChoice::V1 => false,
            WispVersionChoice::V2 => true,
            WispVersionChoice::Auto => !v1_only,
        };
        if !offer_v2 {
            return self
                .dialer
                .dial(url, &[])
                .await
                .map(|d| d.socket)
                .map_err(|e| e.to_string());
        }
        match self.dialer.dial(url, &[V2_SUBPROTOCOL]).await {
            Ok(dialed) => Ok(dialed.socket),
            Err(err) if version == WispVersionChoice::Auto => {
                // A v1-only server may refuse the offer (or not echo it, which a browser
                // refuses): try once without, and keep v1 if that works.
                let dialed = self
                    .dialer
                    .dial(url, &[])
                    .await
                    .map_err(|e2| format!("{err}; without the v2 offer: {e2}"))?;
                if let Some(shared) = self.shared.upgrade() {
                    shared.borrow_mut().v1_only = true;
                }
                tracing::info!(url, "relay: the server refused the v2 offer; using Wisp v1");
                Ok(dialed.socket)
            }
            Err(err) => Err(err.to_string()),
        }
    }

    /// Runs one connection until it fails or is no longer used; the handshake must finish
    /// before `deadline` (the attempt's connect timeout, `timeout`, started with the dial).
    async fn serve(
        &self,
        mut socket: Box<dyn MessageSocket>,
        deadline: LocalBoxFuture<'static, ()>,
        timeout: Duration,
    ) -> End {
        let shared = self.shared.clone();
        let mut flush = Flush {
            timer: self.timer.clone(),
            turn: None,
        };
        let pump = poll_fn(|cx| {
            let Some(shared) = shared.upgrade() else {
                return Poll::Ready(End::Unused);
            };
            let mut sh = shared.borrow_mut();
            sh.driver = Some(cx.waker().clone());
            let mut state = PumpState::default();
            match pump_once(&mut sh, socket.as_mut(), cx, &mut state, &mut flush) {
                Some(end) => Poll::Ready(end),
                None => Poll::Pending,
            }
        });
        let handshake = {
            let shared = self.shared.clone();
            async move {
                deadline.await;
                match shared.upgrade() {
                    Some(sh) if sh.borrow().state != RelayState::Up => {}
                    // Up (or unused): this timer no longer matters.
                    _ => future::pending::<()>().await,
                }
            }
        };
        let end = match future::select(Box::pin(pump), Box::pin(handshake)).await {
            Either::Left((end, _)) => end,
            Either::Right(_) => End::Failed(format!("no Wisp handshake within {timeout:?}")),
        };
        if matches!(end, End::Unused) {
            let close = poll_fn(|cx| socket.poll_close(cx, &Close::NORMAL));
            let _ = future::select(Box::pin(close), self.timer.sleep(CLOSE_TIMEOUT)).await;
        }
        end
    }
}

/// When the client's queued packets go to the socket: at once when they fill a DATA packet,
/// else once the embedder's event loop has run what it had queued ([`Timer::next_task`]). In
/// a browser every guest frame is a task of its own, and a segment written as soon as it
/// arrived would cost a WebSocket message (a message costs the page, the browser's network
/// process and the relay far more than its bytes); waiting one task lets a burst of segments
/// leave as one.
struct Flush {
    timer: Rc<dyn Timer>,
    /// The task hop being waited for, while small writes wait.
    turn: Option<LocalBoxFuture<'static, ()>>,
}

impl Flush {
    /// Whether `queued` bytes should be transmitted now; when not, `cx` is woken when they
    /// should.
    fn due(&mut self, queued: usize, cx: &mut std::task::Context<'_>) -> bool {
        if queued == 0 {
            return false;
        }
        if queued >= FLUSH_AT {
            self.turn = None;
            return true;
        }
        let turn = self.turn.get_or_insert_with(|| self.timer.next_task());
        if turn.as_mut().poll(cx).is_ready() {
            self.turn = None;
            true
        } else {
            false
        }
    }
}

/// What a wake-up of the pump learns while dispatching events.
#[derive(Default)]
struct PumpState {
    /// A fatal client error (the connection is over).
    fatal: Option<String>,
}

/// One wake-up: receive what is there (unless a stream's buffer is full), dispatch events,
/// transmit what the client queued, flush. `Some` when the connection is over.
fn pump_once(
    sh: &mut Shared,
    socket: &mut dyn MessageSocket,
    cx: &mut std::task::Context<'_>,
    state: &mut PumpState,
    flush: &mut Flush,
) -> Option<End> {
    // Receive.
    let mut budget = RECEIVE_BUDGET;
    while !sh.receive_paused() {
        if budget == 0 {
            // Let the streams' readers run; come back at once.
            cx.waker().wake_by_ref();
            break;
        }
        budget -= 1;
        let message = match socket.poll_recv(cx) {
            Poll::Pending => break,
            Poll::Ready(Ok(Some(WsMessage::Binary(message)))) => message,
            // Wisp is binary; a text message means nothing to it.
            Poll::Ready(Ok(Some(WsMessage::Text(_)))) => continue,
            Poll::Ready(Ok(None)) => {
                return Some(End::Failed("the relay closed the WebSocket".into()))
            }
            Poll::Ready(Err(err)) => return Some(End::Failed(err.to_string())),
        };
        sh.stats.messages_from_relay += 1;
        handle(sh, &message, state);
        if let Some(fatal) = state.fatal.take() {
            // Say goodbye if the client queued a CLOSE; the connection is over either way.
            let _ = transmit(sh, socket, cx, true);
            return Some(End::Failed(fatal));
        }
    }
    // Transmit.
    let queued = sh.client.as_ref().map_or(0, Client::queued_transmit_bytes);
    let send = flush.due(queued, cx);
    if let Err(reason) = transmit(sh, socket, cx, send) {
        return Some(End::Failed(reason));
    }
    // Transmitting may have made streams writable again.
    drain_events(sh, state);
    if let Some(fatal) = state.fatal.take() {
        return Some(End::Failed(fatal));
    }
    None
}

/// Hands one message to the client and its events to the streams.
fn handle(sh: &mut Shared, message: &[u8], state: &mut PumpState) {
    let Some(client) = sh.client.as_mut() else {
        return;
    };
    if let Err(HandleError::EventsNotDrained { .. }) = client.handle_message(message) {
        // Events are drained after every message, so this cannot stay: drain and retry once.
        drain_events(sh, state);
        if let Some(client) = sh.client.as_mut() {
            let _ = client.handle_message(message);
        }
    }
    drain_events(sh, state);
}

/// Moves every pending client event to the stream it concerns.
fn drain_events(sh: &mut Shared, state: &mut PumpState) {
    loop {
        let Some(event) = sh.client.as_mut().and_then(Client::poll_event) else {
            return;
        };
        let fatal = matches!(event, Event::Error(_));
        if let Some(reason) = sh.dispatch(event) {
            state.fatal = Some(reason);
        }
        if fatal {
            return;
        }
    }
}

/// Writes the client's queued packets while the socket takes them (when `send`), then
/// flushes (always: an earlier flush may still be under way).
fn transmit(
    sh: &mut Shared,
    socket: &mut dyn MessageSocket,
    cx: &mut std::task::Context<'_>,
    send: bool,
) -> Result<(), String> {
    let mut sent = false;
    while let Some(client) = sh.client.as_mut().filter(|_| send) {
        if client.queued_transmit_bytes() == 0 {
            break;
        }
        match socket.poll_ready(cx) {
            Poll::Pending => break,
            Poll::Ready(Err(err)) => return Err(err.to_string()),
            Poll::Ready(Ok(())) => {}
        }
        let Some(packet) = client.poll_transmit() else {
            break;
        };
        socket
            .send(WsMessage::Binary(packet))
            .map_err(|e| e.to_string())?;
        sh.stats.messages_to_relay += 1;
        sent = true;
    }
    if sent {
        // Opens that found the queue full may go now.
        for w in sh.waiting.drain(..) {
            w.wake();
        }
    }
    match socket.poll_flush(cx) {
        Poll::Ready(Err(err)) => Err(err.to_string()),
        _ => Ok(()),
    }
}
