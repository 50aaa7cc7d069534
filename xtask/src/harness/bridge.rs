//! The TAP-to-WebSocket bridge: a pump between two [`Link`]s, the runner's [`TapLink`] (whose
//! interface the guest namespace adopts) and [`WsLink`], one WebSocket client on 127.0.0.1 (the
//! test page). One binary message is one Ethernet frame, in both directions.
//!
//! Backpressure, never unbounded buffering: a frame is read from one side only once the other
//! side took the previous one (`Link::send` waits while the WebSocket's socket is full; the
//! kernel's TAP queue then fills and drops, and the guest's TCP backs off; the page's TCP is
//! stopped by flow control while we write to the TAP). At most one frame is in flight plus
//! tungstenite's write buffer, which is capped.
//!
//! With a [`FaultPlan`] ([`Bridge::start_with_faults`]) each direction also crosses its own
//! seeded fault injector (loss, duplication, reordering, delay), the same layer as the native
//! runner's `--fault`. A side is not read while its injector's queue is full, so backpressure
//! still holds; the pump sleeps until the next delayed frame is due.
//!
//! This is the only file of xtask that uses the `c2w_net_proxy` library (its links, fault
//! injector and clock); callers see [`FaultPlan`] and [`FaultCounts`] (the injector's counters)
//! through it.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{Context, Result};
use c2w_net_proxy::link::{Link, LinkError};
use c2w_net_proxy::native::tap::Tap;
use c2w_net_proxy::native::{FaultInjector, FaultSpec, TapLink, TokioRuntime as Clock};
use c2w_net_proxy::runtime::Runtime;
use futures::{FutureExt, SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::WebSocketStream;

/// Counters of the bridge, for failure messages.
#[derive(Debug, Default)]
pub struct BridgeStats {
    /// Frames read from the TAP and sent to the page.
    pub to_page: AtomicU64,
    /// Frames received from the page and written to the TAP.
    pub to_guest: AtomicU64,
    /// Frames from the page the TAP refused (its interface down, a malformed frame).
    pub tap_errors: AtomicU64,
    /// WebSocket clients accepted so far.
    pub clients: AtomicU64,
    /// Fault counters (towards the guest, towards the page), summed over clients; `None`
    /// without faults.
    pub faults: Mutex<Option<[FaultCounts; 2]>>,
}

/// A fault profile for [`Bridge::start_with_faults`], in the native runner's `--fault` syntax
/// (e.g. `loss=5%,dup=1%,reorder=1%,delay=10ms,seed=21`).
#[derive(Debug, Clone, Copy)]
pub struct FaultPlan(FaultSpec);

impl std::str::FromStr for FaultPlan {
    type Err = anyhow::Error;

    fn from_str(text: &str) -> Result<Self> {
        Ok(Self(text.parse::<FaultSpec>()?))
    }
}

/// One direction's fault counters: the injector's own, under the name the harness uses.
pub use c2w_net_proxy::native::FaultStats as FaultCounts;

/// One line for a direction's fault counters.
fn fault_line(s: &FaultCounts) -> String {
    format!(
        "{} passed, {} lost, {} reordered, {} duplicated, {} delayed, {} dropped (queue full)",
        s.passed, s.lost, s.reordered, s.duplicated, s.delayed, s.dropped_queue_full
    )
}

/// A running bridge; stops (and closes the TAP, which deletes the interface) when dropped.
pub struct Bridge {
    /// The WebSocket port on 127.0.0.1.
    pub port: u16,
    stats: Arc<BridgeStats>,
    stop: watch::Sender<bool>,
    thread: Option<JoinHandle<()>>,
}

/// The largest frame a TAP with MTU 1500 can hand us, with generous room.
const FRAME_BUF: usize = 65_536;
/// At most this many TAP frames are moved per turn before the page's side is looked at again.
const BATCH: usize = 64;
/// The longest the pump sleeps without looking at its fault injectors.
const TICK: Duration = Duration::from_millis(100);
/// How long a client may take over its WebSocket handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

impl Bridge {
    /// Creates the TAP device `tap_name` and listens for the page on a free loopback port.
    pub fn start(tap_name: &str) -> Result<Self> {
        Self::start_with_faults(tap_name, None)
    }

    /// Like [`start`](Self::start), with `faults` injected in both directions when given
    /// (independent seeds per direction, derived from the spec's).
    pub fn start_with_faults(tap_name: &str, faults: Option<FaultPlan>) -> Result<Self> {
        let faults = faults.map(|plan| plan.0);
        let tap = Tap::open(tap_name).with_context(|| format!("opening TAP {tap_name}"))?;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").context("binding the bridge")?;
        listener.set_nonblocking(true)?;
        let port = listener.local_addr()?.port();
        let stats = Arc::new(BridgeStats {
            faults: Mutex::new(faults.map(|_| [FaultCounts::default(); 2])),
            ..BridgeStats::default()
        });
        let (stop, stopped) = watch::channel(false);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("starting the bridge's runtime")?;
        let thread = {
            let stats = stats.clone();
            std::thread::Builder::new()
                .name("tap-ws-bridge".into())
                .spawn(move || {
                    runtime.block_on(async move {
                        if let Err(err) = serve(tap, listener, &stats, stopped, faults).await {
                            eprintln!("xtask: bridge stopped: {err:#}");
                        }
                    })
                })?
        };
        Ok(Self {
            port,
            stats,
            stop,
            thread: Some(thread),
        })
    }

    /// One line of counters.
    pub fn summary(&self) -> String {
        let s = &self.stats;
        let faults = match self.fault_stats() {
            Some([to_guest, to_page]) => format!(
                "; faults towards the guest: {}; towards the page: {}",
                fault_line(&to_guest),
                fault_line(&to_page)
            ),
            None => String::new(),
        };
        format!(
            "bridge: {} client(s), {} frames to the page, {} to the guest, {} TAP write errors{faults}",
            s.clients.load(Ordering::Relaxed),
            s.to_page.load(Ordering::Relaxed),
            s.to_guest.load(Ordering::Relaxed),
            s.tap_errors.load(Ordering::Relaxed)
        )
    }

    /// The fault counters so far (towards the guest, towards the page), summed over clients;
    /// `None` when the bridge injects no faults.
    pub fn fault_stats(&self) -> Option<[FaultCounts; 2]> {
        *self.stats.faults.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Number of clients accepted so far.
    pub fn clients(&self) -> u64 {
        self.stats.clients.load(Ordering::Relaxed)
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Accepts clients one after the other and pumps frames for each until it goes away, the
/// TAP fails, or the bridge is dropped.
async fn serve(
    tap: Tap,
    listener: std::net::TcpListener,
    stats: &BridgeStats,
    mut stop: watch::Receiver<bool>,
    faults: Option<FaultSpec>,
) -> Result<()> {
    let mut tap = TapLink::new(tap).context("registering the TAP")?;
    let listener = TcpListener::from_std(listener)?;
    loop {
        let stream = tokio::select! {
            _ = stop.changed() => return Ok(()),
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(err) => {
                    eprintln!("xtask: bridge: accept failed: {err}");
                    tokio::time::sleep(TICK).await;
                    continue;
                }
            },
        };
        stats.clients.fetch_add(1, Ordering::Relaxed);
        let mut page = tokio::select! {
            _ = stop.changed() => return Ok(()),
            ws = WsLink::accept(stream) => match ws {
                Ok(ws) => ws,
                Err(err) => {
                    eprintln!("xtask: bridge: handshake failed: {err:#}");
                    continue;
                }
            },
        };
        let mut injectors = faults.map(|spec| Injectors::new(spec, stats));
        let ended = tokio::select! {
            _ = stop.changed() => None,
            ended = pump(&mut tap, &mut page, injectors.as_mut(), stats) => Some(ended),
        };
        if let Some(injectors) = &injectors {
            injectors.publish(stats);
        }
        match ended {
            None => {
                page.close().await;
                return Ok(());
            }
            Some(Ok(())) => {}
            Some(Err(PumpError::Tap(err))) => return Err(err).context("the TAP failed"),
            Some(Err(PumpError::Page(err))) => eprintln!("xtask: bridge: client ended: {err}"),
        }
    }
}

/// Which side of the pump failed: the TAP ends the bridge, the page only its client.
#[derive(Debug)]
enum PumpError {
    Tap(LinkError),
    Page(LinkError),
}

/// What ended a wait of the pump.
enum Turn {
    FromGuest(Result<Option<Vec<u8>>, LinkError>),
    FromPage(Result<Option<Vec<u8>>, LinkError>),
    Due,
}

/// Moves frames between the TAP and one page until the page goes away (`Ok`) or a side fails.
async fn pump(
    tap: &mut TapLink,
    page: &mut WsLink,
    mut faults: Option<&mut Injectors>,
    stats: &BridgeStats,
) -> Result<(), PumpError> {
    loop {
        if let Some(f) = faults.as_deref_mut() {
            let now = f.clock.now();
            while let Some(frame) = f.to_guest.pop(now) {
                to_guest(tap, &frame, stats).await?;
            }
            while let Some(frame) = f.to_page.pop(now) {
                to_page(page, &frame, stats).await?;
            }
            f.publish(stats);
        }
        let guest_side = faults
            .as_deref()
            .is_none_or(|f| Injectors::room(&f.to_page));
        let page_side = faults
            .as_deref()
            .is_none_or(|f| Injectors::room(&f.to_guest));
        let wait = faults.as_deref().and_then(Injectors::wait).unwrap_or(TICK);
        let turn = tokio::select! {
            frame = tap.recv(), if guest_side => Turn::FromGuest(frame),
            frame = page.recv(), if page_side => Turn::FromPage(frame),
            _ = tokio::time::sleep(wait) => Turn::Due,
        };
        match turn {
            Turn::FromGuest(frame) => {
                let mut next = frame.map_err(PumpError::Tap)?;
                let mut moved = 0;
                while let Some(frame) = next {
                    match faults.as_deref_mut() {
                        Some(f) => {
                            let now = f.clock.now();
                            f.to_page.push(frame, now);
                            if !Injectors::room(&f.to_page) {
                                break;
                            }
                        }
                        None => to_page(page, &frame, stats).await?,
                    }
                    moved += 1;
                    if moved == BATCH {
                        break;
                    }
                    next = tap.try_recv().map_err(PumpError::Tap)?;
                }
            }
            Turn::FromPage(frame) => match frame.map_err(PumpError::Page)? {
                None => return Ok(()),
                Some(frame) => match faults.as_deref_mut() {
                    Some(f) => {
                        let now = f.clock.now();
                        f.to_guest.push(frame, now);
                    }
                    None => to_guest(tap, &frame, stats).await?,
                },
            },
            Turn::Due => {}
        }
    }
}

/// Writes one frame to the TAP. A frame the TAP refuses (interface down, malformed) is
/// dropped and counted, as a wire would drop it; a deleted interface ends the bridge.
async fn to_guest(tap: &mut TapLink, frame: &[u8], stats: &BridgeStats) -> Result<(), PumpError> {
    match tap.send(frame).await {
        Ok(()) => {
            stats.to_guest.fetch_add(1, Ordering::Relaxed);
            Ok(())
        }
        Err(LinkError::Io(_)) => {
            stats.tap_errors.fetch_add(1, Ordering::Relaxed);
            Ok(())
        }
        Err(err) => Err(PumpError::Tap(err)),
    }
}

/// Sends one frame to the page, waiting while its socket is full.
async fn to_page(page: &mut WsLink, frame: &[u8], stats: &BridgeStats) -> Result<(), PumpError> {
    page.send(frame).await.map_err(PumpError::Page)?;
    stats.to_page.fetch_add(1, Ordering::Relaxed);
    Ok(())
}

/// Seed stream of the injector towards the guest (as in the native runner).
const TO_GUEST_STREAM: u64 = 2;
/// Seed stream of the injector towards the page (the network stack's side).
const TO_PAGE_STREAM: u64 = 1;

/// One client's fault injectors.
struct Injectors {
    to_guest: FaultInjector,
    to_page: FaultInjector,
    clock: Clock,
    /// Counters of earlier clients, to which this client's are added.
    base: [FaultCounts; 2],
}

impl Injectors {
    fn new(spec: FaultSpec, stats: &BridgeStats) -> Self {
        let base = stats
            .faults
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .unwrap_or_default();
        Self {
            to_guest: FaultInjector::new(spec.with_stream(TO_GUEST_STREAM)),
            to_page: FaultInjector::new(spec.with_stream(TO_PAGE_STREAM)),
            clock: Clock::new(),
            base,
        }
    }

    /// Stores the counters in `stats` (this client's added to earlier clients').
    fn publish(&self, stats: &BridgeStats) {
        let mut slot = stats.faults.lock().unwrap_or_else(|e| e.into_inner());
        *slot = Some([
            self.base[0] + self.to_guest.stats(),
            self.base[1] + self.to_page.stats(),
        ]);
    }

    /// True while `inj` has room (otherwise its input side is not read: backpressure).
    fn room(inj: &FaultInjector) -> bool {
        inj.len() < inj.spec().queue
    }

    /// Time until the earliest frame due in either direction.
    fn wait(&self) -> Option<Duration> {
        let now = self.clock.now();
        [self.to_guest.next_release(), self.to_page.next_release()]
            .into_iter()
            .flatten()
            .min()
            .map(|at| Duration::from_micros((at.total_micros() - now.total_micros()).max(0) as u64))
    }
}

/// The page's WebSocket as a link: one binary message per frame; pings are answered by
/// tungstenite, other messages ignored.
pub struct WsLink {
    ws: WebSocketStream<TcpStream>,
    /// The page closed (a Close message was read).
    closed: bool,
}

impl WsLink {
    /// Completes the server handshake on `stream` (within [`HANDSHAKE_TIMEOUT`]).
    async fn accept(stream: TcpStream) -> Result<Self> {
        stream.set_nodelay(true)?;
        // Every message goes to the socket at once (no gathering), and at most 1 MiB waits
        // in tungstenite when the socket is full.
        let config = WebSocketConfig::default()
            .write_buffer_size(0)
            .max_write_buffer_size(1 << 20)
            .max_message_size(Some(FRAME_BUF))
            .max_frame_size(Some(FRAME_BUF));
        let ws = tokio::time::timeout(
            HANDSHAKE_TIMEOUT,
            tokio_tungstenite::accept_async_with_config(stream, Some(config)),
        )
        .await
        .context("WebSocket handshake timed out")?
        .context("WebSocket handshake")?;
        Ok(Self { ws, closed: false })
    }

    /// Says goodbye to the page, briefly.
    async fn close(&mut self) {
        let _ = tokio::time::timeout(TICK, self.ws.close(None)).await;
    }

    /// What one read of the WebSocket means for the link: `Ok(Some(Some(frame)))` a frame,
    /// `Ok(Some(None))` the end, `Ok(None)` a message that is not a frame.
    fn frame(
        &mut self,
        item: Option<Result<Message, tungstenite::Error>>,
    ) -> Result<Option<Option<Vec<u8>>>, LinkError> {
        match item {
            Some(Ok(Message::Binary(frame))) => Ok(Some(Some(frame.to_vec()))),
            Some(Ok(Message::Close(_))) | None => {
                self.closed = true;
                Ok(Some(None))
            }
            Some(Ok(_)) => Ok(None),
            Some(Err(
                tungstenite::Error::ConnectionClosed
                | tungstenite::Error::AlreadyClosed
                | tungstenite::Error::Protocol(
                    tungstenite::error::ProtocolError::ResetWithoutClosingHandshake,
                ),
            )) => {
                self.closed = true;
                Ok(Some(None))
            }
            Some(Err(tungstenite::Error::Io(err))) => Err(LinkError::Io(err)),
            Some(Err(err)) => Err(LinkError::Io(io::Error::other(err))),
        }
    }
}

impl Link for WsLink {
    /// Cancel-safe: a partly read message stays in tungstenite.
    async fn recv(&mut self) -> Result<Option<Vec<u8>>, LinkError> {
        while !self.closed {
            let item = self.ws.next().await;
            if let Some(frame) = self.frame(item)? {
                return Ok(frame);
            }
        }
        Ok(None)
    }

    fn try_recv(&mut self) -> Result<Option<Vec<u8>>, LinkError> {
        while !self.closed {
            let Some(item) = self.ws.next().now_or_never() else {
                return Ok(None);
            };
            if let Some(frame) = self.frame(item)? {
                return Ok(frame);
            }
        }
        Ok(None)
    }

    async fn send(&mut self, frame: &[u8]) -> Result<(), LinkError> {
        self.ws
            .send(Message::binary(frame.to_vec()))
            .await
            .map_err(|err| match err {
                tungstenite::Error::Io(err) => LinkError::Io(err),
                err => LinkError::Io(io::Error::other(err)),
            })
    }
}
