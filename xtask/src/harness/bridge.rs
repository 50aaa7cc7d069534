//! The TAP-to-WebSocket bridge: one thread that relays Ethernet frames between a TAP device
//! (whose interface the guest namespace adopts) and one WebSocket client on 127.0.0.1 (the
//! test page). One binary message is one Ethernet frame, in both directions.
//!
//! Backpressure, never unbounded buffering: while the WebSocket has unflushed bytes the TAP
//! is not read (the kernel's TAP queue fills and drops, and the guest's TCP backs off), and
//! while a frame from the page cannot be written to the TAP the WebSocket is not read (TCP
//! flow control then stops the page). At most one frame is held in each direction plus
//! tungstenite's write buffer, which is capped.
//!
//! With a [`FaultPlan`] ([`Bridge::start_with_faults`]) each direction also crosses its own
//! seeded fault injector (loss, duplication, reordering, delay), the same layer as the native
//! runner's `--fault`. A side is not read while its injector's queue is full, so backpressure
//! still holds; the loop sleeps until the next delayed frame is due.
//!
//! This is the only file of xtask that uses the `c2w_net_proxy` library (its TAP device, fault
//! injector and clock); callers see [`FaultPlan`] and [`FaultCounts`] (the injector's counters) through it.

use std::io::ErrorKind;
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{Context, Result};
use c2w_net_proxy::native::tap::Tap;
use c2w_net_proxy::native::{FaultInjector, FaultSpec, TokioRuntime as Clock};
use c2w_net_proxy::runtime::Runtime;
use tungstenite::protocol::WebSocketConfig;
use tungstenite::{Message, WebSocket};

/// Counters of the bridge, for failure messages.
#[derive(Debug, Default)]
pub struct BridgeStats {
    /// Frames read from the TAP and sent to the page.
    pub to_page: AtomicU64,
    /// Frames received from the page and written to the TAP.
    pub to_guest: AtomicU64,
    /// Frames from the page the TAP refused (other than "try again").
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
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

/// The largest frame a TAP with MTU 1500 can hand us, with generous room.
const FRAME_BUF: usize = 65_536;
/// At most this many TAP frames are moved per loop turn before the socket is looked at again.
const BATCH: usize = 64;

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
        let listener = TcpListener::bind("127.0.0.1:0").context("binding the bridge")?;
        listener.set_nonblocking(true)?;
        let port = listener.local_addr()?.port();
        let stats = Arc::new(BridgeStats {
            faults: Mutex::new(faults.map(|_| [FaultCounts::default(); 2])),
            ..BridgeStats::default()
        });
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let stats = stats.clone();
            let stop = stop.clone();
            std::thread::Builder::new()
                .name("tap-ws-bridge".into())
                .spawn(move || serve(tap, listener, &stats, &stop, faults))?
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
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn poll_fds(fds: &mut [libc::pollfd], timeout: Duration) {
    // SAFETY: `fds` is a valid, writable slice of pollfd for the duration of the call.
    unsafe {
        libc::poll(
            fds.as_mut_ptr(),
            fds.len() as libc::nfds_t,
            timeout.as_millis() as libc::c_int,
        );
    }
}

/// Accepts clients one after the other and relays for each until it goes away or `stop`.
fn serve(
    tap: Tap,
    listener: TcpListener,
    stats: &BridgeStats,
    stop: &AtomicBool,
    faults: Option<FaultSpec>,
) {
    while !stop.load(Ordering::Relaxed) {
        let stream = match listener.accept() {
            Ok((stream, _)) => stream,
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                let mut fds = [libc::pollfd {
                    fd: listener.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                }];
                poll_fds(&mut fds, Duration::from_millis(100));
                continue;
            }
            Err(e) => {
                eprintln!("xtask: bridge: accept failed: {e}");
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
        };
        stats.clients.fetch_add(1, Ordering::Relaxed);
        match handshake(stream) {
            Ok(ws) => {
                let mut injectors = faults.map(Injectors::new);
                let result = relay(&tap, ws, stats, stop, injectors.as_mut());
                if let Some(injectors) = &injectors {
                    injectors.publish(stats);
                }
                if let Err(e) = result {
                    eprintln!("xtask: bridge: client ended: {e:#}");
                }
            }
            Err(e) => eprintln!("xtask: bridge: handshake failed: {e:#}"),
        }
    }
}

fn handshake(stream: TcpStream) -> Result<WebSocket<TcpStream>> {
    // The handshake runs blocking (with a limit); the relay then runs non-blocking.
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    stream.set_nodelay(true)?;
    let config = WebSocketConfig::default()
        .write_buffer_size(0)
        .max_write_buffer_size(1 << 20)
        .max_message_size(Some(FRAME_BUF))
        .max_frame_size(Some(FRAME_BUF));
    let ws = tungstenite::accept_with_config(stream, Some(config))
        .map_err(|e| anyhow::anyhow!("WebSocket handshake: {e}"))?;
    ws.get_ref().set_read_timeout(None)?;
    ws.get_ref().set_nonblocking(true)?;
    Ok(ws)
}

fn would_block(err: &tungstenite::Error) -> bool {
    matches!(err, tungstenite::Error::Io(e) if e.kind() == ErrorKind::WouldBlock)
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
    base: Option<[FaultCounts; 2]>,
}

impl Injectors {
    fn new(spec: FaultSpec) -> Self {
        Self {
            to_guest: FaultInjector::new(spec.with_stream(TO_GUEST_STREAM)),
            to_page: FaultInjector::new(spec.with_stream(TO_PAGE_STREAM)),
            clock: Clock::new(),
            base: None,
        }
    }

    /// Stores the counters in `stats` (this client's added to earlier clients').
    fn publish(&self, stats: &BridgeStats) {
        let mut slot = stats.faults.lock().unwrap_or_else(|e| e.into_inner());
        let base = self.base.unwrap_or_else(|| slot.unwrap_or_default());
        *slot = Some([
            base[0] + self.to_guest.stats(),
            base[1] + self.to_page.stats(),
        ]);
    }

    /// True while `inj` has room (otherwise its input side is not read: backpressure).
    fn room(inj: &FaultInjector) -> bool {
        inj.len() < inj.spec().queue
    }

    /// Time until the earliest frame due in a direction that can take it now (`to_guest`
    /// when no TAP write is pending, `to_page` when the WebSocket is flushed).
    fn wait(&self, to_guest: bool, to_page: bool) -> Option<Duration> {
        let now = self.clock.now();
        let mut due = None;
        for (ready, inj) in [(to_guest, &self.to_guest), (to_page, &self.to_page)] {
            if let (true, Some(at)) = (ready, inj.next_release()) {
                let micros = (at.total_micros() - now.total_micros()).max(0) as u64;
                let wait = Duration::from_micros(micros);
                due = Some(due.map_or(wait, |d: Duration| d.min(wait)));
            }
        }
        due
    }
}

/// Relays frames until the client closes, an error occurs, or `stop` is set; through
/// `faults` when given.
fn relay(
    tap: &Tap,
    mut ws: WebSocket<TcpStream>,
    stats: &BridgeStats,
    stop: &AtomicBool,
    mut faults: Option<&mut Injectors>,
) -> Result<()> {
    if let Some(f) = faults.as_mut() {
        // Earlier clients' counters, fixed for this one.
        f.base = *stats.faults.lock().unwrap_or_else(|e| e.into_inner());
    }
    let mut buf = vec![0u8; FRAME_BUF];
    // Bytes given to the WebSocket that are not yet on the socket.
    let mut unflushed = false;
    // A frame from the page that the TAP could not take yet.
    let mut held: Option<Vec<u8>> = None;
    while !stop.load(Ordering::Relaxed) {
        let page_room = faults.as_ref().is_none_or(|f| Injectors::room(&f.to_guest));
        let tap_room = faults.as_ref().is_none_or(|f| Injectors::room(&f.to_page));
        let mut tap_events = 0;
        if !unflushed && tap_room {
            tap_events |= libc::POLLIN;
        }
        if held.is_some() {
            tap_events |= libc::POLLOUT;
        }
        let mut ws_events = 0;
        if held.is_none() && page_room {
            ws_events |= libc::POLLIN;
        }
        if unflushed {
            ws_events |= libc::POLLOUT;
        }
        let mut fds = [
            libc::pollfd {
                fd: tap.as_raw_fd(),
                events: tap_events,
                revents: 0,
            },
            libc::pollfd {
                fd: ws.get_ref().as_raw_fd(),
                events: ws_events,
                revents: 0,
            },
        ];
        let mut timeout = Duration::from_millis(100);
        if let Some(wait) = faults
            .as_ref()
            .and_then(|f| f.wait(held.is_none(), !unflushed))
        {
            // poll() counts whole milliseconds: round up so a frame due in 0.4 ms does not
            // make the loop spin.
            timeout = timeout.min(Duration::from_millis(wait.as_micros().div_ceil(1000) as u64));
        }
        poll_fds(&mut fds, timeout);

        // Page -> guest.
        if let Some(frame) = held.take() {
            held = write_tap(tap, frame, stats);
        }
        if let Some(f) = faults.as_mut() {
            deliver_to_guest(tap, f, &mut held, stats);
        }
        while held.is_none() && faults.as_ref().is_none_or(|f| Injectors::room(&f.to_guest)) {
            match ws.read() {
                Ok(Message::Binary(frame)) => match faults.as_mut() {
                    Some(f) => {
                        let now = f.clock.now();
                        f.to_guest.push(frame.to_vec(), now);
                        deliver_to_guest(tap, f, &mut held, stats);
                    }
                    None => held = write_tap(tap, frame.to_vec(), stats),
                },
                Ok(Message::Close(_)) => return Ok(()),
                Ok(_) => {}
                Err(e) if would_block(&e) => break,
                Err(
                    tungstenite::Error::ConnectionClosed
                    | tungstenite::Error::AlreadyClosed
                    | tungstenite::Error::Protocol(
                        tungstenite::error::ProtocolError::ResetWithoutClosingHandshake,
                    ),
                ) => return Ok(()),
                Err(e) => return Err(anyhow::anyhow!("reading the WebSocket: {e}")),
            }
        }

        // Guest -> page.
        if unflushed {
            match ws.flush() {
                Ok(()) => unflushed = false,
                Err(e) if would_block(&e) => {}
                Err(e) => return Err(anyhow::anyhow!("flushing the WebSocket: {e}")),
            }
        }
        let mut wrote = false;
        if let Some(f) = faults.as_mut() {
            wrote |= send_due(&mut ws, f, &mut unflushed, stats)?;
        }
        let mut moved = 0;
        while !unflushed
            && moved < BATCH
            && faults.as_ref().is_none_or(|f| Injectors::room(&f.to_page))
        {
            let n = match tap.read(&mut buf) {
                Ok(n) => n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => return Err(anyhow::anyhow!("reading the TAP: {e}")),
            };
            moved += 1;
            match faults.as_mut() {
                Some(f) => {
                    let now = f.clock.now();
                    f.to_page.push(buf[..n].to_vec(), now);
                    wrote |= send_due(&mut ws, f, &mut unflushed, stats)?;
                }
                None => {
                    wrote = true;
                    stats.to_page.fetch_add(1, Ordering::Relaxed);
                    match ws.write(Message::binary(buf[..n].to_vec())) {
                        Ok(()) => {}
                        // Queued in the (capped) write buffer; stop reading the TAP until it
                        // drains.
                        Err(e) if would_block(&e) => unflushed = true,
                        Err(e) => return Err(anyhow::anyhow!("writing the WebSocket: {e}")),
                    }
                }
            }
        }
        if wrote && !unflushed {
            match ws.flush() {
                Ok(()) => {}
                Err(e) if would_block(&e) => unflushed = true,
                Err(e) => return Err(anyhow::anyhow!("flushing the WebSocket: {e}")),
            }
        }
        if let Some(f) = faults.as_ref() {
            f.publish(stats);
        }
    }
    let _ = ws.close(None);
    let _ = ws.flush();
    Ok(())
}

/// Writes the frames due towards the guest to the TAP until none is due or the TAP is full.
fn deliver_to_guest(tap: &Tap, f: &mut Injectors, held: &mut Option<Vec<u8>>, stats: &BridgeStats) {
    let now = f.clock.now();
    while held.is_none() {
        let Some(frame) = f.to_guest.pop(now) else {
            break;
        };
        *held = write_tap(tap, frame, stats);
    }
}

/// Writes the frames due towards the page to the WebSocket until none is due or it is full;
/// true if it wrote any.
fn send_due(
    ws: &mut WebSocket<TcpStream>,
    f: &mut Injectors,
    unflushed: &mut bool,
    stats: &BridgeStats,
) -> Result<bool> {
    let now = f.clock.now();
    let mut wrote = false;
    while !*unflushed {
        let Some(frame) = f.to_page.pop(now) else {
            break;
        };
        wrote = true;
        stats.to_page.fetch_add(1, Ordering::Relaxed);
        match ws.write(Message::binary(frame)) {
            Ok(()) => {}
            Err(e) if would_block(&e) => *unflushed = true,
            Err(e) => return Err(anyhow::anyhow!("writing the WebSocket: {e}")),
        }
    }
    Ok(wrote)
}

/// Writes one frame to the TAP; returns it back when the TAP cannot take it yet.
fn write_tap(tap: &Tap, frame: Vec<u8>, stats: &BridgeStats) -> Option<Vec<u8>> {
    match tap.write(&frame) {
        Ok(_) => {
            stats.to_guest.fetch_add(1, Ordering::Relaxed);
            None
        }
        Err(e) if e.kind() == ErrorKind::WouldBlock || e.kind() == ErrorKind::Interrupted => {
            Some(frame)
        }
        Err(_) => {
            // The guest's interface is down or the frame is malformed: drop it, as a wire would.
            stats.tap_errors.fetch_add(1, Ordering::Relaxed);
            None
        }
    }
}
