//! The state the relay's handles, streams and driver share (single-threaded: `Rc<RefCell>`):
//! the Wisp client of the current connection, every stream's receive buffer and wakers, and
//! the counters.

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

use crate::wisp::{Client, CloseReason, Event, OpenError, StreamId, StreamType, WispVersion};

use super::{RelayConfig, RelayError};

/// Where the connection to the relay is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RelayState {
    /// Dialing or in the Wisp handshake.
    Connecting,
    /// Ready for streams.
    Up,
    /// Waiting before the next attempt.
    Down,
}

/// Counters of a relay, for `stats()` and logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayStats {
    /// Where the connection is.
    pub state: RelayState,
    /// The Wisp version of the current connection, when up.
    pub version: Option<WispVersion>,
    /// Connections that completed the handshake.
    pub connects: u64,
    /// Dial or handshake attempts that failed.
    pub connect_failures: u64,
    /// Connections lost after the handshake.
    pub losses: u64,
    /// Streams and flows open now.
    pub streams_open: u64,
    /// Streams and flows opened so far.
    pub streams_opened: u64,
    /// Streams the relay refused or closed abnormally.
    pub streams_failed: u64,
    /// Payload bytes handed to the relay.
    pub bytes_to_relay: u64,
    /// Payload bytes received from the relay.
    pub bytes_from_relay: u64,
    /// WebSocket messages (Wisp packets) sent to the relay: with `bytes_to_relay`, how well
    /// small writes are gathered (each message costs far more than its bytes).
    pub messages_to_relay: u64,
    /// WebSocket messages received from the relay.
    pub messages_from_relay: u64,
    /// Datagrams from the relay dropped because their flow's queue was full.
    pub datagrams_dropped: u64,
    /// Packets from the relay that were malformed or broke the protocol (ignored).
    pub protocol_errors: u64,
    /// The last connection error, if any.
    pub last_error: Option<String>,
}

/// A stream of one connection: the Wisp ID plus the connection's number, so a stream of a
/// lost connection is never confused with a new stream that reuses its ID.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SlotId {
    pub generation: u64,
    pub id: StreamId,
}

/// How a stream ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ended {
    /// The relay closed it: `Voluntary` is a normal end of stream.
    Server(CloseReason),
    /// The connection to the relay was lost.
    Lost(String),
}

/// One open stream's side of the shared state.
#[derive(Debug, Default)]
pub struct Slot {
    pub kind: Option<StreamType>,
    /// Received payloads (TCP pieces or UDP datagrams), oldest first.
    pub rx: VecDeque<Vec<u8>>,
    /// Bytes in `rx`.
    pub rx_bytes: usize,
    /// How far the front piece of `rx` was read (TCP).
    pub rx_offset: usize,
    pub read_waker: Option<Waker>,
    pub write_waker: Option<Waker>,
    /// The server confirmed the open (v2 with open confirmation).
    pub opened: bool,
    /// Whether any payload arrived (a close before it is a refusal).
    pub received: bool,
    pub ended: Option<Ended>,
    pub host: String,
    pub port: u16,
}

impl Slot {
    fn wake(&mut self) {
        if let Some(w) = self.read_waker.take() {
            w.wake();
        }
        if let Some(w) = self.write_waker.take() {
            w.wake();
        }
    }
}

/// The shared state.
pub struct Shared {
    pub config: RelayConfig,
    pub state: RelayState,
    /// The current connection's client, once dialed.
    pub client: Option<Client>,
    /// The current connection's number.
    pub generation: u64,
    pub slots: HashMap<StreamId, Slot>,
    /// Streams of ended connections whose handles are still alive: what they had received
    /// is still readable, then the reason they ended. Each leaves when its handle is dropped.
    pub orphans: HashMap<SlotId, Slot>,
    /// The driver's waker: woken when a handle queued something or freed buffer space.
    pub driver: Option<Waker>,
    /// Opens waiting for the relay to come up.
    pub waiting: Vec<Waker>,
    /// Whether the v1 fallback was needed for this relay (Auto).
    pub v1_only: bool,
    /// An open was refused because the relay is down: the driver redials sooner than its
    /// backoff says (see `RelayDriver::run`).
    pub redial_wanted: bool,
    /// The driver stopped reading because of `receive_paused`.
    pub receive_stopped: bool,
    pub stats: RelayStats,
}

impl Drop for Shared {
    fn drop(&mut self) {
        // The last handle is gone: the driver must see it to stop.
        self.wake_driver();
    }
}

impl Shared {
    pub fn new(config: RelayConfig) -> Self {
        Self {
            config,
            state: RelayState::Connecting,
            client: None,
            generation: 0,
            slots: HashMap::new(),
            orphans: HashMap::new(),
            driver: None,
            waiting: Vec::new(),
            v1_only: false,
            redial_wanted: false,
            receive_stopped: false,
            stats: RelayStats {
                state: RelayState::Connecting,
                version: None,
                connects: 0,
                connect_failures: 0,
                losses: 0,
                streams_open: 0,
                streams_opened: 0,
                streams_failed: 0,
                bytes_to_relay: 0,
                bytes_from_relay: 0,
                messages_to_relay: 0,
                messages_from_relay: 0,
                datagrams_dropped: 0,
                protocol_errors: 0,
                last_error: None,
            },
        }
    }

    pub fn stats(&self) -> RelayStats {
        let mut stats = self.stats.clone();
        stats.state = self.state;
        stats.version = self.client.as_ref().and_then(Client::version);
        stats.streams_open = self.slots.len() as u64;
        if let Some(client) = &self.client {
            let wisp = client.stats();
            stats.protocol_errors += wisp.malformed + wisp.unexpected;
        }
        stats
    }

    pub fn wake_driver(&mut self) {
        if let Some(w) = self.driver.take() {
            w.wake();
        }
    }

    /// The slot of a stream: of the current connection, or of an ended one (an orphan).
    pub fn slot(&mut self, id: SlotId) -> Option<&mut Slot> {
        if id.generation != self.generation {
            return self.orphans.get_mut(&id);
        }
        self.slots.get_mut(&id.id)
    }

    /// True while a stream holds its `stream_buffer`, or all streams together the
    /// `receive_budget`: the driver stops reading. Remembered in `receive_stopped`, so
    /// readers know to wake the driver once they freed enough.
    pub fn receive_paused(&mut self) -> bool {
        let limit = self.config.stream_buffer;
        let mut total = 0;
        let mut paused = false;
        for slot in self.slots.values() {
            if slot.kind == Some(StreamType::Tcp) {
                total += slot.rx_bytes;
                paused |= slot.rx_bytes >= limit;
            }
        }
        paused |= total >= self.config.receive_budget;
        self.receive_stopped = paused;
        paused
    }

    /// A reader took bytes: wakes the driver if it stopped reading and may go on now.
    pub fn bytes_taken(&mut self) {
        if self.receive_stopped && !self.receive_paused() {
            self.wake_driver();
        }
    }

    /// The connection is up: opens may go.
    pub fn set_up(&mut self) {
        self.state = RelayState::Up;
        self.stats.connects += 1;
        for w in self.waiting.drain(..) {
            w.wake();
        }
    }

    /// The connection attempt failed or the connection ended: every stream still open ends
    /// with `reason` (after what it had received), waiting opens learn it, and the state is
    /// `Down` until the next attempt.
    pub fn set_down(&mut self, reason: String, was_up: bool) {
        if was_up {
            self.stats.losses += 1;
        } else {
            self.stats.connect_failures += 1;
        }
        self.state = RelayState::Down;
        // Keep the count of the ended client's protocol errors.
        if let Some(client) = self.client.take() {
            let wisp = client.stats();
            self.stats.protocol_errors += wisp.malformed + wisp.unexpected;
        }
        self.stats.last_error = Some(reason.clone());
        let generation = self.generation;
        for (id, mut slot) in self.slots.drain() {
            // A stream the server had already closed keeps its own ending (and was counted).
            if slot.ended.is_none() {
                slot.ended = Some(Ended::Lost(reason.clone()));
                self.stats.streams_failed += 1;
            }
            slot.wake();
            self.orphans.insert(SlotId { generation, id }, slot);
        }
        self.generation += 1;
        for w in self.waiting.drain(..) {
            w.wake();
        }
    }

    /// A new attempt starts.
    pub fn set_connecting(&mut self) {
        self.state = RelayState::Connecting;
    }

    /// Hands one event of the client to the stream it concerns. Returns the client's fatal
    /// error, if that is what it was.
    pub fn dispatch(&mut self, event: Event) -> Option<String> {
        match event {
            Event::Ready => self.set_up(),
            Event::Opened { id } => {
                if let Some(slot) = self.slots.get_mut(&id) {
                    slot.opened = true;
                    slot.wake();
                }
            }
            Event::Data { id, bytes } => {
                self.stats.bytes_from_relay += bytes.len() as u64;
                let queue = self.config.datagram_queue;
                if let Some(slot) = self.slots.get_mut(&id) {
                    slot.received = true;
                    if slot.kind == Some(StreamType::Udp) && slot.rx.len() >= queue {
                        self.stats.datagrams_dropped += 1;
                    } else {
                        slot.rx_bytes += bytes.len();
                        slot.rx.push_back(bytes);
                    }
                    if let Some(w) = slot.read_waker.take() {
                        w.wake();
                    }
                }
            }
            Event::Writable { id } => {
                if let Some(w) = self
                    .slots
                    .get_mut(&id)
                    .and_then(|slot| slot.write_waker.take())
                {
                    w.wake();
                }
            }
            Event::Closed { id, reason } => {
                if let Some(slot) = self.slots.get_mut(&id) {
                    if reason != CloseReason::Voluntary {
                        self.stats.streams_failed += 1;
                    }
                    slot.ended = Some(Ended::Server(reason));
                    slot.wake();
                }
            }
            Event::Error(err) => return Some(err.to_string()),
        }
        None
    }

    /// Forgets a stream whose handle is gone, closing it towards the relay if still open.
    pub fn release(&mut self, id: SlotId) {
        if id.generation != self.generation {
            self.orphans.remove(&id);
            return;
        }
        let Some(slot) = self.slots.remove(&id.id) else {
            return;
        };
        if slot.ended.is_none() {
            if let Some(client) = self.client.as_mut() {
                let _ = client.close(id.id, CloseReason::Voluntary);
                self.wake_driver();
            }
        }
        // Space freed: the driver may read again.
        self.wake_driver();
    }

    fn unavailable(&self) -> RelayError {
        RelayError::Unavailable {
            url: self.config.url.clone(),
            reason: self
                .stats
                .last_error
                .clone()
                .unwrap_or_else(|| "not connected".into()),
        }
    }
}

/// An open in progress: waits for the relay to be up, opens the stream, and (with open
/// confirmation) waits for the server's answer.
pub struct Opening {
    shared: Rc<RefCell<Shared>>,
    kind: StreamType,
    host: String,
    port: u16,
    /// The stream once the CONNECT is queued.
    opened: Option<SlotId>,
    /// The open was given to the caller or abandoned.
    done: bool,
}

impl Opening {
    pub fn new(shared: Rc<RefCell<Shared>>, kind: StreamType, host: &str, port: u16) -> Self {
        Self {
            shared,
            kind,
            host: host.to_string(),
            port,
            opened: None,
            done: false,
        }
    }

    /// Gives up (a timeout): closes the stream if it was opened.
    pub fn abandon(mut self) {
        self.done = true;
        if let Some(id) = self.opened.take() {
            self.shared.borrow_mut().release(id);
        }
    }

    fn unsupported(&self, reason: impl Into<String>) -> RelayError {
        RelayError::Unsupported {
            host: self.host.clone(),
            port: self.port,
            reason: reason.into(),
        }
    }
}

impl Drop for Opening {
    fn drop(&mut self) {
        if !self.done {
            if let Some(id) = self.opened.take() {
                self.shared.borrow_mut().release(id);
            }
        }
    }
}

impl Future for Opening {
    type Output = Result<SlotId, RelayError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        let shared = this.shared.clone();
        let mut sh = shared.borrow_mut();
        if let Some(id) = this.opened {
            let Some(slot) = sh.slot(id) else {
                this.opened = None;
                this.done = true;
                return Poll::Ready(Err(sh.unavailable()));
            };
            if let Some(ended) = slot.ended.clone() {
                drop(sh);
                this.shared.borrow_mut().release(id);
                this.opened = None;
                this.done = true;
                return Poll::Ready(Err(match ended {
                    Ended::Server(reason) => RelayError::Refused {
                        host: this.host.clone(),
                        port: this.port,
                        reason,
                    },
                    Ended::Lost(reason) => RelayError::Lost { reason },
                }));
            }
            if slot.opened {
                this.done = true;
                return Poll::Ready(Ok(id));
            }
            slot.read_waker = Some(cx.waker().clone());
            return Poll::Pending;
        }
        match sh.state {
            RelayState::Down => {
                this.done = true;
                sh.redial_wanted = true;
                sh.wake_driver();
                return Poll::Ready(Err(sh.unavailable()));
            }
            RelayState::Connecting => {
                sh.waiting.push(cx.waker().clone());
                return Poll::Pending;
            }
            RelayState::Up => {}
        }
        let generation = sh.generation;
        let Some(client) = sh.client.as_mut() else {
            sh.waiting.push(cx.waker().clone());
            return Poll::Pending;
        };
        let confirm = client.open_confirmation();
        match client.open(this.kind, &this.host, this.port) {
            Ok(id) => {
                let slot_id = SlotId { generation, id };
                sh.stats.streams_opened += 1;
                sh.slots.insert(
                    id,
                    Slot {
                        kind: Some(this.kind),
                        opened: !confirm,
                        host: this.host.clone(),
                        port: this.port,
                        ..Slot::default()
                    },
                );
                sh.wake_driver();
                if !confirm {
                    this.done = true;
                    return Poll::Ready(Ok(slot_id));
                }
                this.opened = Some(slot_id);
                if let Some(slot) = sh.slots.get_mut(&id) {
                    slot.read_waker = Some(cx.waker().clone());
                }
                Poll::Pending
            }
            Err(OpenError::QueueFull) => {
                // The driver drains the queue and wakes the waiting opens.
                sh.waiting.push(cx.waker().clone());
                sh.wake_driver();
                Poll::Pending
            }
            Err(OpenError::NotReady) => {
                sh.waiting.push(cx.waker().clone());
                Poll::Pending
            }
            Err(OpenError::ConnectionClosed) => {
                this.done = true;
                Poll::Ready(Err(sh.unavailable()))
            }
            Err(
                err @ (OpenError::UdpUnsupported
                | OpenError::TooManyStreams { .. }
                | OpenError::EmptyHost),
            ) => {
                this.done = true;
                Poll::Ready(Err(this.unsupported(err.to_string())))
            }
        }
    }
}
