//! A WebSocket seen as whole messages: [`MessageSocket`] (one open connection) and [`Dialer`]
//! (opens one). The browser's `WebSocket` and a native client implement them; the relay's
//! driver (binary Wisp packets) and the proxy's guest WebSockets (text, binary, close codes)
//! both know only these traits.

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
    /// An open connection failed (reset, protocol error).
    #[error("relay connection lost: {0}")]
    Lost(String),
    /// The peer sent a message larger than the socket's limit (the connection is over).
    #[error("the server sent a message larger than {limit} bytes")]
    TooLarge {
        /// The limit in bytes.
        limit: usize,
    },
}

/// One WebSocket data message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WsMessage {
    /// A text message (valid UTF-8 by construction).
    Text(String),
    /// A binary message.
    Binary(Vec<u8>),
}

impl WsMessage {
    /// The payload's length in bytes.
    pub fn len(&self) -> usize {
        match self {
            Self::Text(text) => text.len(),
            Self::Binary(bytes) => bytes.len(),
        }
    }

    /// True when the payload is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A close frame's status code and reason (RFC 6455 §7.4), sent or received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Close {
    /// The status code (1000 normal closure, 4000–4999 private use, ...).
    pub code: u16,
    /// The reason, at most 123 bytes of UTF-8 on the wire.
    pub reason: String,
}

impl Close {
    /// The normal closure (1000) without a reason: the relay's goodbye.
    pub const NORMAL: Close = Close {
        code: 1000,
        reason: String::new(),
    };
}

/// One open WebSocket carrying text and binary messages. Pings and pongs are handled by the
/// implementation; data messages come out whole.
pub trait MessageSocket {
    /// The next message, `Ok(None)` once the peer closed (its code and reason are then in
    /// [`peer_close`](Self::peer_close)). Cancel-safe: a message is either returned or stays
    /// queued.
    fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Result<Option<WsMessage>, SocketError>>;

    /// Ready when [`send`](Self::send) may be called: what was sent before is below the
    /// implementation's write bound (backpressure towards the relay).
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), SocketError>>;

    /// Queues one message; call only after `poll_ready` returned `Ready(Ok)`.
    fn send(&mut self, message: WsMessage) -> Result<(), SocketError>;

    /// Ready once everything queued was handed to the network.
    fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), SocketError>>;

    /// Sends a Close frame with `close` (taken on the first call) and waits for the closing
    /// handshake (a clean goodbye; the caller bounds how long it waits and drops the socket
    /// afterwards). A browser sends only 1000 and 3000–4999; other codes become 1000. After
    /// the peer closed first (`poll_recv` gave `Ok(None)`), it sends the reply to the peer's
    /// Close instead (`close` is then not used): call it, or the peer sees no closing
    /// handshake.
    fn poll_close(&mut self, cx: &mut Context<'_>, close: &Close) -> Poll<Result<(), SocketError>>;

    /// The peer's close code and reason, once `poll_recv` returned `Ok(None)` (`None` before,
    /// or when its Close frame carried no code).
    fn peer_close(&self) -> Option<Close>;
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
