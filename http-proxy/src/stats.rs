//! Counters of what the proxy did, readable at any time (the browser page shows them).

use std::cell::Cell;

/// Live counters owned by a [`crate::Proxy`].
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub connections_total: Cell<u64>,
    pub connections_open: Cell<u64>,
    pub requests: Cell<u64>,
    pub responses_ok: Cell<u64>,
    pub responses_error_status: Cell<u64>,
    pub bad_requests: Cell<u64>,
    pub heads_too_large: Cell<u64>,
    pub bodies_too_large: Cell<u64>,
    pub transport_errors: Cell<u64>,
    pub aborted_responses: Cell<u64>,
    pub bytes_to_guest: Cell<u64>,
    pub bytes_from_guest: Cell<u64>,
    pub websockets_open: Cell<u64>,
    pub websockets_opened: Cell<u64>,
    pub websockets_refused: Cell<u64>,
    pub websocket_messages_to_guest: Cell<u64>,
    pub websocket_messages_from_guest: Cell<u64>,
    pub websocket_bytes_to_guest: Cell<u64>,
    pub websocket_bytes_from_guest: Cell<u64>,
}

impl Counters {
    pub fn add(cell: &Cell<u64>, n: u64) {
        cell.set(cell.get().saturating_add(n));
    }

    pub fn snapshot(&self) -> ProxyStats {
        ProxyStats {
            connections_total: self.connections_total.get(),
            connections_open: self.connections_open.get(),
            requests: self.requests.get(),
            responses_ok: self.responses_ok.get(),
            responses_error_status: self.responses_error_status.get(),
            bad_requests: self.bad_requests.get(),
            heads_too_large: self.heads_too_large.get(),
            bodies_too_large: self.bodies_too_large.get(),
            transport_errors: self.transport_errors.get(),
            aborted_responses: self.aborted_responses.get(),
            bytes_to_guest: self.bytes_to_guest.get(),
            bytes_from_guest: self.bytes_from_guest.get(),
            websockets_open: self.websockets_open.get(),
            websockets_opened: self.websockets_opened.get(),
            websockets_refused: self.websockets_refused.get(),
            websocket_messages_to_guest: self.websocket_messages_to_guest.get(),
            websocket_messages_from_guest: self.websocket_messages_from_guest.get(),
            websocket_bytes_to_guest: self.websocket_bytes_to_guest.get(),
            websocket_bytes_from_guest: self.websocket_bytes_from_guest.get(),
        }
    }
}

/// A snapshot of the proxy's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProxyStats {
    /// Guest connections accepted since start.
    pub connections_total: u64,
    /// Guest connections being served now.
    pub connections_open: u64,
    /// Requests read from guests.
    pub requests: u64,
    /// Responses from origins with a status below 400.
    pub responses_ok: u64,
    /// Responses from origins with a status of 400 or more (forwarded intact).
    pub responses_error_status: u64,
    /// Requests rejected as malformed, unsupported or over a limit (4xx/501 made by the proxy).
    pub bad_requests: u64,
    /// Of `bad_requests`: heads over `Limits::max_head_bytes` or `max_headers` (431).
    pub heads_too_large: u64,
    /// Request bodies over `Limits::max_request_body` (413 when no response had started;
    /// the connection is closed either way).
    pub bodies_too_large: u64,
    /// Requests the transport could not carry (502/504/413 made by the proxy).
    pub transport_errors: u64,
    /// Responses cut short because the origin's body failed or the guest went away.
    pub aborted_responses: u64,
    /// Response bytes written to guests (heads and bodies).
    pub bytes_to_guest: u64,
    /// Request body bytes read from guests.
    pub bytes_from_guest: u64,
    /// Guest WebSocket sessions carried now.
    pub websockets_open: u64,
    /// Guest WebSocket sessions opened (answered 101) since start.
    pub websockets_opened: u64,
    /// WebSocket upgrades refused because the server side could not be opened (502/403/504).
    pub websockets_refused: u64,
    /// WebSocket messages (text and binary) sent to guests.
    pub websocket_messages_to_guest: u64,
    /// WebSocket messages (text and binary) received from guests.
    pub websocket_messages_from_guest: u64,
    /// Payload bytes of the messages sent to guests.
    pub websocket_bytes_to_guest: u64,
    /// Payload bytes of the messages received from guests.
    pub websocket_bytes_from_guest: u64,
}
