//! Raw TCP and UDP through a Wisp relay: the [`wisp`](crate::wisp) protocol core driven over a
//! WebSocket, with byte streams and datagram flows for the rest of the system.
//!
//! [`Relay::new`] returns a cheap handle and a [`RelayDriver`] whose [`run`](RelayDriver::run)
//! future the embedder spawns (this crate spawns nothing). The driver dials the relay through a
//! [`Dialer`] (the browser's `WebSocket`, or tokio-tungstenite natively), runs the Wisp
//! handshake, moves packets both ways, and reconnects with exponential backoff when the
//! connection is lost; streams open at that moment end with an error, new ones work once the
//! relay is back. [`Relay::connect_tcp`] gives a [`RelayStream`] (`futures::io::AsyncRead +
//! AsyncWrite`); [`Relay::open_udp`] a [`RelayDatagrams`] flow.
//!
//! Flow control and memory: towards the relay, a stream's writes take only what the server's
//! CONTINUE credit allows (a slow relay stops the writer, so the guest's TCP window closes).
//! From the relay, streams buffer what their readers have not taken; while one stream holds
//! [`RelayConfig::stream_buffer`] bytes or all of them together [`RelayConfig::receive_budget`],
//! the driver stops reading the WebSocket (Wisp gives clients no credit of their own, so this
//! pushes back on the server through the WebSocket's transport, for all streams at once).
//! Natively the limits are generous (8 MiB per stream, 64 MiB in all), so one slow reader
//! does not stall every other stream as soon as it falls a little behind. UDP
//! flows drop what does not fit, counted, as a datagram network would. The browser's
//! `WebSocket` reads the network regardless, so there the pause only stops processing:
//! unread messages wait in the socket, bounded by `MAX_UNREAD` (see `browser_socket`), and the
//! module's own buffers stay small (256 KiB per stream, 4 MiB in all), since a WebAssembly
//! memory never shrinks.
//!
//! Wisp has no half-close: shutting down a [`RelayStream`]'s write side only stops writing;
//! the stream is closed towards the relay when it is dropped, or by the server.

mod driver;
mod shared;
mod socket;
mod stream;
#[cfg(test)]
mod tests;

#[cfg(target_arch = "wasm32")]
mod browser_socket;
#[cfg(any(target_arch = "wasm32", test))]
mod inbox;
#[cfg(not(target_arch = "wasm32"))]
mod native_socket;

use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

use futures::future::{self, Either};

use crate::timer::Timer;
use crate::wisp::{ClientConfig, CloseReason, SendError, StreamType};

#[cfg(target_arch = "wasm32")]
pub use browser_socket::{BrowserDialer, MAX_BUFFERED, MAX_UNREAD, RECHECK};
pub use driver::RelayDriver;
#[cfg(not(target_arch = "wasm32"))]
pub use native_socket::NativeDialer;
pub use shared::{RelayState, RelayStats};
pub use socket::{Close, Dialed, Dialer, MessageSocket, SocketError, WsMessage};
pub use stream::{RelayDatagrams, RelayStream};

use shared::Shared;

/// Which Wisp version to ask the relay for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WispVersionChoice {
    /// Offer v2 (the `wisp-v2` subprotocol); if the WebSocket cannot be opened with the
    /// offer, dial again without it and keep v1 for this relay (a v1-only server may refuse
    /// the offer, and a browser refuses a server that does not echo it).
    #[default]
    Auto,
    /// Never offer v2.
    V1,
    /// Offer v2 only.
    V2,
}

/// How the relay is reached and how much it may hold. Build with [`RelayConfig::new`] and the
/// setters; every limit has a default.
#[derive(Debug, Clone)]
pub struct RelayConfig {
    url: String,
    version: WispVersionChoice,
    client: ClientConfig,
    connect_timeout: Duration,
    backoff_min: Duration,
    backoff_max: Duration,
    stream_buffer: usize,
    receive_budget: usize,
    datagram_queue: usize,
}

/// Default [`RelayConfig::stream_buffer`]: small in the browser (the socket keeps the rest in
/// JavaScript memory), generous natively.
const STREAM_BUFFER: usize = if cfg!(target_arch = "wasm32") {
    256 << 10
} else {
    8 << 20
};
/// Default [`RelayConfig::receive_budget`].
const RECEIVE_BUDGET: usize = if cfg!(target_arch = "wasm32") {
    4 << 20
} else {
    64 << 20
};

impl RelayConfig {
    /// A relay at `url` (`ws://` or `wss://`, a path ending in `/`), Wisp v2 if offered, no
    /// credentials, default limits.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            version: WispVersionChoice::Auto,
            client: ClientConfig::default(),
            connect_timeout: Duration::from_secs(10),
            backoff_min: Duration::from_millis(250),
            backoff_max: Duration::from_secs(30),
            stream_buffer: STREAM_BUFFER,
            receive_budget: RECEIVE_BUDGET,
            datagram_queue: 64,
        }
    }

    /// The relay's URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Which protocol version to ask for.
    pub fn version(mut self, version: WispVersionChoice) -> Self {
        self.version = version;
        self
    }

    /// The Wisp client's settings (credentials, stream and queue limits).
    pub fn client(mut self, client: ClientConfig) -> Self {
        self.client = client;
        self
    }

    /// How long dialing plus the handshake, and a stream open waiting for the relay, may take.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// The first and the longest wait between reconnection attempts (doubling in between).
    pub fn backoff(mut self, min: Duration, max: Duration) -> Self {
        self.backoff_min = min;
        self.backoff_max = max.max(min);
        self
    }

    /// Bytes from the relay one stream may hold unread before the driver stops reading
    /// (8 MiB natively, 256 KiB in the browser).
    pub fn stream_buffer(mut self, bytes: usize) -> Self {
        self.stream_buffer = bytes.max(1);
        self
    }

    /// Bytes from the relay all streams together may hold unread before the driver stops
    /// reading (64 MiB natively, 4 MiB in the browser).
    pub fn receive_budget(mut self, bytes: usize) -> Self {
        self.receive_budget = bytes.max(1);
        self
    }

    /// Datagrams from the relay queued per UDP flow; more are dropped and counted.
    pub fn datagram_queue(mut self, datagrams: usize) -> Self {
        self.datagram_queue = datagrams.max(1);
        self
    }
}

/// Why a stream or flow could not be opened, or ended abnormally. Every variant says enough
/// for an error page or a log line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RelayError {
    /// The relay is not connected (unreachable, refusing, or reconnecting after a loss).
    #[error("the relay {url} is unavailable: {reason}")]
    Unavailable {
        /// The relay's URL.
        url: String,
        /// The last connection error.
        reason: String,
    },
    /// The relay closed the stream when it was opened (unreachable host, refused, blocked).
    #[error("the relay could not reach {host}:{port}: {reason}")]
    Refused {
        /// The destination as asked for.
        host: String,
        /// Its port.
        port: u16,
        /// The relay's close reason.
        reason: CloseReason,
    },
    /// The relay connection was lost while the stream was open.
    #[error("the relay connection was lost: {reason}")]
    Lost {
        /// Why.
        reason: String,
    },
    /// The relay did not confirm the stream in time.
    #[error("the relay did not open {host}:{port} within {timeout:?}")]
    Timeout {
        /// The destination as asked for.
        host: String,
        /// Its port.
        port: u16,
        /// The limit.
        timeout: Duration,
    },
    /// The relay (or this configuration) cannot open such a stream: UDP not offered, too many
    /// streams, an empty host name.
    #[error("the relay cannot open {host}:{port}: {reason}")]
    Unsupported {
        /// The destination as asked for.
        host: String,
        /// Its port.
        port: u16,
        /// Why.
        reason: String,
    },
    /// A datagram could not be sent on a UDP flow (empty, or larger than the relay takes).
    #[error("cannot send on the relay flow: {0}")]
    Send(#[from] SendError),
}

/// A handle to the relay: opens streams and flows, reports state. Cheap to clone; the driver
/// runs until every handle is gone.
#[derive(Clone)]
pub struct Relay {
    shared: Rc<RefCell<Shared>>,
    timer: Rc<dyn Timer>,
}

impl std::fmt::Debug for Relay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Relay")
            .field("url", &self.shared.borrow().config.url)
            .finish_non_exhaustive()
    }
}

impl Relay {
    /// A relay handle and the driver to spawn. Nothing is dialed until the driver runs.
    pub fn new(
        config: RelayConfig,
        dialer: Rc<dyn Dialer>,
        timer: Rc<dyn Timer>,
    ) -> (Relay, RelayDriver) {
        let shared = Rc::new(RefCell::new(Shared::new(config)));
        let driver = RelayDriver::new(Rc::downgrade(&shared), dialer, timer.clone());
        (Relay { shared, timer }, driver)
    }

    /// Counters and the connection state.
    pub fn stats(&self) -> RelayStats {
        self.shared.borrow().stats()
    }

    /// The relay's URL.
    pub fn url(&self) -> String {
        self.shared.borrow().config.url.clone()
    }

    /// Opens a TCP stream to `host:port` through the relay. Waits (up to the connect timeout)
    /// while the relay is connecting; fails at once while it is down between attempts. With
    /// a v2 relay that confirms opens, returns once confirmed; otherwise at once (a refusal
    /// then shows as an error on the first read).
    pub async fn connect_tcp(&self, host: &str, port: u16) -> Result<RelayStream, RelayError> {
        let id = self.open(StreamType::Tcp, host, port).await?;
        Ok(RelayStream::new(self.shared.clone(), id))
    }

    /// Opens a UDP flow to `host:port` through the relay (one Wisp UDP stream).
    pub async fn open_udp(&self, host: &str, port: u16) -> Result<RelayDatagrams, RelayError> {
        let id = self.open(StreamType::Udp, host, port).await?;
        Ok(RelayDatagrams::new(self.shared.clone(), id))
    }

    async fn open(
        &self,
        kind: StreamType,
        host: &str,
        port: u16,
    ) -> Result<shared::SlotId, RelayError> {
        let timeout = self.shared.borrow().config.connect_timeout;
        let opening = shared::Opening::new(self.shared.clone(), kind, host, port);
        match future::select(opening, self.timer.sleep(timeout)).await {
            Either::Left((result, _)) => result,
            Either::Right(((), opening)) => {
                opening.abandon();
                Err(RelayError::Timeout {
                    host: host.to_string(),
                    port,
                    timeout,
                })
            }
        }
    }
}
