//! The WebSocket under a relay, seen as whole binary messages: [`MessageSocket`] (one open
//! connection) and [`Dialer`] (opens one, again after a loss). The browser's `WebSocket` and a
//! native client implement them; the relay's driver knows only these traits.

use std::task::{Context, Poll};

use async_trait::async_trait;

/// Why the relay's WebSocket could not be opened or stopped working.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SocketError {
    /// The URL cannot be used (not `ws://` or `wss://`, malformed).
    #[error("bad relay URL {url}: {reason}")]
    BadUrl {
        /// The URL as configured.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The connection or the WebSocket handshake failed.
    #[error("cannot connect to the relay {url}: {reason}")]
    Connect {
        /// The relay's URL.
        url: String,
        /// Why, as far as it is known.
        reason: String,
    },
    /// An open connection failed (reset, protocol error, an oversized message).
    #[error("relay connection lost: {0}")]
    Lost(String),
}

/// One open WebSocket carrying binary messages. Text messages, pings and pongs are handled or
/// ignored by the implementation; only binary payloads come out.
pub trait MessageSocket {
    /// The next binary message, `Ok(None)` once the peer closed. Cancel-safe: a message is
    /// either returned or stays queued.
    fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Result<Option<Vec<u8>>, SocketError>>;

    /// Ready when [`send`](Self::send) may be called: what was sent before is below the
    /// implementation's write bound (backpressure towards the relay).
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), SocketError>>;

    /// Queues one binary message; call only after `poll_ready` returned `Ready(Ok)`.
    fn send(&mut self, message: Vec<u8>) -> Result<(), SocketError>;

    /// Ready once everything queued was handed to the network.
    fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), SocketError>>;

    /// Sends a Close frame and flushes it (a clean goodbye; the driver bounds how long it
    /// waits and drops the socket afterwards).
    fn poll_close(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), SocketError>>;
}

/// An open socket and the subprotocol the server chose (`None`: it chose none).
pub struct Dialed {
    /// The connection.
    pub socket: Box<dyn MessageSocket>,
    /// The `Sec-WebSocket-Protocol` the server answered with.
    pub protocol: Option<String>,
}

/// Opens the relay's WebSocket.
#[async_trait(?Send)]
pub trait Dialer {
    /// Connects to `url` offering `protocols` (`Sec-WebSocket-Protocol`; empty: none).
    async fn dial(&self, url: &str, protocols: &[&str]) -> Result<Dialed, SocketError>;
}
