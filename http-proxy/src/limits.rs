//! Explicit limits that bound what one guest connection can make the proxy hold or wait for.

use std::time::Duration;

/// Per-connection limits. Every buffer the proxy keeps for a connection is bounded by these.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest request head (request line + headers) accepted; larger gets 431.
    pub max_head_bytes: usize,
    /// Most header fields in one request head; more gets 431.
    pub max_headers: usize,
    /// Largest chunk-size line (with extensions) or trailer line in a chunked body.
    pub max_chunk_line_bytes: usize,
    /// Largest piece of body data handed on at once (bounds the read buffer).
    pub max_body_piece: usize,
    /// Largest request body forwarded, or `None` for no limit (the default: the proxy streams
    /// bodies and holds at most `max_body_piece` of one, so memory does not depend on it; a
    /// transport that must hold bodies whole has its own cap). A `Content-Length` above it is
    /// answered 413 before anything is sent upstream; a chunked body that crosses it aborts
    /// the upstream request, gets 413 if no response has started, and closes the connection.
    pub max_request_body: Option<u64>,
    /// How long a keep-alive connection may sit idle between requests.
    pub idle_timeout: Duration,
    /// How long the guest may stall while sending a request head or body, or while the proxy
    /// waits to write to it.
    pub io_timeout: Duration,
    /// Largest WebSocket message carried either way; a larger one closes the session with
    /// 1009 (message too big). Also bounds what one session holds per direction.
    pub max_websocket_message: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_head_bytes: 64 * 1024,
            max_headers: 128,
            max_chunk_line_bytes: 4 * 1024,
            max_body_piece: 64 * 1024,
            max_request_body: None,
            idle_timeout: Duration::from_secs(60),
            io_timeout: Duration::from_secs(60),
            max_websocket_message: 16 << 20,
        }
    }
}
