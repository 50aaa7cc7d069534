//! The TAP-to-WebSocket bridge: one thread that relays Ethernet frames between a TAP device
//! (whose interface the guest namespace adopts) and one WebSocket client on 127.0.0.1 (the
//! test page). One binary message is one Ethernet frame, in both directions.
//!
//! Backpressure, never unbounded buffering: while the WebSocket has unflushed bytes the TAP
//! is not read (the kernel's TAP queue fills and drops, and the guest's TCP backs off), and
//! while a frame from the page cannot be written to the TAP the WebSocket is not read (TCP
//! flow control then stops the page). At most one frame is held in each direction plus
//! tungstenite's write buffer, which is capped.

use std::io::ErrorKind;
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{Context, Result};
use c2w_net_proxy::native::tap::Tap;
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
        let tap = Tap::open(tap_name).with_context(|| format!("opening TAP {tap_name}"))?;
        let listener = TcpListener::bind("127.0.0.1:0").context("binding the bridge")?;
        listener.set_nonblocking(true)?;
        let port = listener.local_addr()?.port();
        let stats = Arc::new(BridgeStats::default());
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let stats = stats.clone();
            let stop = stop.clone();
            std::thread::Builder::new()
                .name("tap-ws-bridge".into())
                .spawn(move || serve(tap, listener, &stats, &stop))?
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
        format!(
            "bridge: {} client(s), {} frames to the page, {} to the guest, {} TAP write errors",
            s.clients.load(Ordering::Relaxed),
            s.to_page.load(Ordering::Relaxed),
            s.to_guest.load(Ordering::Relaxed),
            s.tap_errors.load(Ordering::Relaxed)
        )
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
fn serve(tap: Tap, listener: TcpListener, stats: &BridgeStats, stop: &AtomicBool) {
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
                if let Err(e) = relay(&tap, ws, stats, stop) {
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

/// Relays frames until the client closes, an error occurs, or `stop` is set.
fn relay(
    tap: &Tap,
    mut ws: WebSocket<TcpStream>,
    stats: &BridgeStats,
    stop: &AtomicBool,
) -> Result<()> {
    let mut buf = vec![0u8; FRAME_BUF];
    // Bytes given to the WebSocket that are not yet on the socket.
    let mut unflushed = false;
    // A frame from the page that the TAP could not take yet.
    let mut held: Option<Vec<u8>> = None;
    while !stop.load(Ordering::Relaxed) {
        let mut tap_events = 0;
        if !unflushed {
            tap_events |= libc::POLLIN;
        }
        if held.is_some() {
            tap_events |= libc::POLLOUT;
        }
        let mut ws_events = 0;
        if held.is_none() {
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
        poll_fds(&mut fds, Duration::from_millis(100));

        // Page -> guest.
        if let Some(frame) = held.take() {
            held = write_tap(tap, frame, stats);
        }
        while held.is_none() {
            match ws.read() {
                Ok(Message::Binary(frame)) => held = write_tap(tap, frame.to_vec(), stats),
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
        let mut moved = 0;
        while !unflushed && moved < BATCH {
            let n = match tap.read(&mut buf) {
                Ok(n) => n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => return Err(anyhow::anyhow!("reading the TAP: {e}")),
            };
            moved += 1;
            stats.to_page.fetch_add(1, Ordering::Relaxed);
            match ws.write(Message::binary(buf[..n].to_vec())) {
                Ok(()) => {}
                // Queued in the (capped) write buffer; stop reading the TAP until it drains.
                Err(e) if would_block(&e) => unflushed = true,
                Err(e) => return Err(anyhow::anyhow!("writing the WebSocket: {e}")),
            }
        }
        if moved > 0 && !unflushed {
            match ws.flush() {
                Ok(()) => {}
                Err(e) if would_block(&e) => unflushed = true,
                Err(e) => return Err(anyhow::anyhow!("flushing the WebSocket: {e}")),
            }
        }
    }
    let _ = ws.close(None);
    let _ = ws.flush();
    Ok(())
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
