//! A sans-IO client for the Wisp protocol: many TCP and UDP streams over one WebSocket.
//!
//! [Wisp](https://github.com/MercuryWorkshop/wisp-protocol) (MercuryWorkshop) lets a browser
//! page reach arbitrary TCP/UDP destinations through a relay server: every stream is opened
//! with CONNECT and carried in DATA packets, one packet per WebSocket binary message, tagged
//! with a client-chosen stream ID. This module implements version 1 and version 2 (draft 6:
//! INFO handshake, UDP, password auth, MOTD and stream open confirmation extensions).
//!
//! What it does: [`packet`] parses and emits every packet byte-exactly; [`Client`] is the
//! client's state machine (handshake, stream IDs, credit, close). What it does not do: any
//! I/O. The WebSocket (and, for v2, asking for a `Sec-WebSocket-Protocol`, e.g.
//! [`V2_SUBPROTOCOL`]), timeouts, and the byte-stream interface the rest of the proxy uses are
//! the caller's; they come later in the composition. Key authentication (extension 0x03) is
//! parsed but not answered: a server that requires it is refused with [`ClientError::KeyAuthRequired`].
//!
//! # Flow control
//!
//! Only the server grants credit. Its CONTINUE packet carries "the number of packets that the
//! server can buffer for the current stream": the client stores it, spends one per DATA
//! packet on a TCP stream, and stops at zero until the next CONTINUE replaces the value. The
//! CONTINUE on stream 0 that ends the handshake is the initial credit of every stream. UDP
//! streams have no credit. [`Client::send`] therefore takes only what credit (and the transmit
//! queue) allows and returns how much that was; it never buffers the rest.
//!
//! The specification gives the client no way to slow the server down: there is no CONTINUE
//! from the client. A slow reader simply stops reading the WebSocket, which pushes back on the
//! server through the WebSocket's own transport, for all streams at once.
//!
//! # Memory
//!
//! Everything the client holds is bounded by its [`ClientConfig`]: open streams, bytes waiting
//! for [`Client::poll_transmit`] (sends take nothing once the limit is reached), and events
//! waiting for [`Client::poll_event`]. The contract is that the caller drains events after
//! each [`Client::handle_message`]; one message yields at most a few events (or, for the
//! server closing the whole connection, one per open stream). If events are not drained, the
//! client refuses further messages with [`HandleError::EventsNotDrained`] instead of growing.

pub mod client;
pub mod packet;

pub use client::{
    Client, ClientConfig, ClientConfigBuilder, ClientConfigError, ClientError, CloseError, Event,
    HandleError, OpenError, SendError, Stats, StreamId, WispVersion,
};
pub use packet::{CloseReason, EmitError, Packet, ParseError, Payload, StreamType};

/// A `Sec-WebSocket-Protocol` value for Wisp v2 connections. The specification requires the
/// header (a server speaks v1 without it) but not a value; this is the one wisp-js sends.
pub const V2_SUBPROTOCOL: &str = "wisp-v2";
