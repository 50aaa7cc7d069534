//! The client side of a Wisp connection as a pure state machine (no I/O, no clock).
//!
//! The caller owns the WebSocket. It hands each received binary message to
//! [`Client::handle_message`], writes every message [`Client::poll_transmit`] yields, and drains
//! [`Client::poll_event`] after each message. Streams are opened, written and closed with
//! [`Client::open`], [`Client::send`] and [`Client::close`]. See the [module docs](super) for
//! the flow-control and memory contract.

use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::num::NonZeroU32;

use super::packet::{
    emit_data, parse_header, ClientExtension, CloseReason, Info, Packet, PacketType, ParseError,
    Payload, RawExtension, ServerExtension, StreamType, EXT_MOTD, EXT_PASSWORD_AUTH,
    EXT_STREAM_OPEN_CONFIRMATION, EXT_UDP, HEADER_LEN,
};

/// Default for [`ClientConfigBuilder::max_open_streams`].
pub const DEFAULT_MAX_OPEN_STREAMS: usize = 256;
/// Default for [`ClientConfigBuilder::max_data_payload`]: 64 KiB per DATA packet.
pub const DEFAULT_MAX_DATA_PAYLOAD: usize = 64 * 1024;
/// Default for [`ClientConfigBuilder::max_queued_bytes`]: 1 MiB of packets not yet transmitted.
pub const DEFAULT_MAX_QUEUED_BYTES: usize = 1024 * 1024;
/// Default for [`ClientConfigBuilder::max_pending_data`]: 1 MiB of received data not yet polled.
pub const DEFAULT_MAX_PENDING_DATA: usize = 1024 * 1024;
/// Default for [`ClientConfigBuilder::max_pending_events`].
pub const DEFAULT_MAX_PENDING_EVENTS: usize = 1024;

/// The protocol version of the client's INFO packet (the latest it implements): 2.0.
const CLIENT_VERSION: (u8, u8) = (2, 0);

/// A stream's ID: chosen by the client, never 0 (0 is the connection itself).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct StreamId(NonZeroU32);

impl StreamId {
    /// The ID as it appears on the wire; `None` for 0, which no stream can have.
    pub fn new(id: u32) -> Option<Self> {
        NonZeroU32::new(id).map(Self)
    }

    /// The ID as it appears on the wire.
    pub fn get(self) -> u32 {
        self.0.get()
    }
}

impl fmt::Display for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Which protocol version the server chose by its first packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WispVersion {
    /// The server's first packet was CONTINUE on stream 0: no INFO, no extensions.
    V1,
    /// The server's first packet was INFO: extensions were negotiated.
    V2,
}

/// A configuration value the client cannot use.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClientConfigError {
    /// The password-auth username does not fit its one-byte length field.
    #[error("username of {len} bytes is longer than 255")]
    UsernameTooLong {
        /// The username's length in bytes.
        len: usize,
    },
    /// A limit was set to zero, which would make the client useless.
    #[error("{name} must be at least 1")]
    ZeroLimit {
        /// The setting's name.
        name: &'static str,
    },
    /// More streams than there are nonzero stream IDs.
    #[error("max_open_streams {max} is more than there are stream IDs")]
    TooManyStreams {
        /// The value given.
        max: usize,
    },
}

/// How the client is set up: credentials and the limits that bound its memory.
#[derive(Clone, PartialEq, Eq)]
pub struct ClientConfig {
    /// The encoded password-auth entry (username length, username, password), if configured.
    password_entry: Option<Vec<u8>>,
    udp: bool,
    max_open_streams: usize,
    max_data_payload: usize,
    max_queued_bytes: usize,
    max_pending_data: usize,
    max_pending_events: usize,
}

impl fmt::Debug for ClientConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print the password.
        f.debug_struct("ClientConfig")
            .field("password", &self.password_entry.as_ref().map(|_| "<set>"))
            .field("udp", &self.udp)
            .field("max_open_streams", &self.max_open_streams)
            .field("max_data_payload", &self.max_data_payload)
            .field("max_queued_bytes", &self.max_queued_bytes)
            .field("max_pending_data", &self.max_pending_data)
            .field("max_pending_events", &self.max_pending_events)
            .finish()
    }
}

impl Default for ClientConfig {
    fn default() -> Self {
        Self {
            password_entry: None,
            udp: true,
            max_open_streams: DEFAULT_MAX_OPEN_STREAMS,
            max_data_payload: DEFAULT_MAX_DATA_PAYLOAD,
            max_queued_bytes: DEFAULT_MAX_QUEUED_BYTES,
            max_pending_data: DEFAULT_MAX_PENDING_DATA,
            max_pending_events: DEFAULT_MAX_PENDING_EVENTS,
        }
    }
}

impl ClientConfig {
    /// A builder starting from the defaults (no credentials, UDP on, the `DEFAULT_*` limits).
    pub fn builder() -> ClientConfigBuilder {
        ClientConfigBuilder {
            config: Self::default(),
            credentials: None,
        }
    }

    /// The most streams open at once.
    pub fn max_open_streams(&self) -> usize {
        self.max_open_streams
    }

    /// The largest DATA payload the client emits (and the largest UDP datagram it accepts).
    pub fn max_data_payload(&self) -> usize {
        self.max_data_payload
    }

    /// How many bytes of packets may wait for [`Client::poll_transmit`] before sends refuse.
    pub fn max_queued_bytes(&self) -> usize {
        self.max_queued_bytes
    }

    /// How many bytes of received data may wait in events before messages are refused.
    pub fn max_pending_data(&self) -> usize {
        self.max_pending_data
    }

    /// How many events may wait before messages are refused.
    pub fn max_pending_events(&self) -> usize {
        self.max_pending_events
    }
}

/// Builds a [`ClientConfig`]; [`ClientConfigBuilder::build`] checks the values.
#[derive(Clone)]
pub struct ClientConfigBuilder {
    config: ClientConfig,
    credentials: Option<(String, String)>,
}

impl fmt::Debug for ClientConfigBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientConfigBuilder")
            .field("config", &self.config)
            .field("username", &self.credentials.as_ref().map(|(u, _)| u))
            .finish_non_exhaustive()
    }
}

impl ClientConfigBuilder {
    /// Username and password for the v2 password-auth extension, sent only when the server
    /// offers it. The username must be at most 255 bytes.
    pub fn password(mut self, username: impl Into<String>, password: impl Into<String>) -> Self {
        self.credentials = Some((username.into(), password.into()));
        self
    }

    /// Whether UDP streams may be opened (and the UDP extension announced); on by default.
    pub fn udp(mut self, enabled: bool) -> Self {
        self.config.udp = enabled;
        self
    }

    /// The most streams open at once; [`Client::open`] refuses more.
    pub fn max_open_streams(mut self, max: usize) -> Self {
        self.config.max_open_streams = max;
        self
    }

    /// The largest DATA payload the client emits: TCP sends are split into packets of at most
    /// this size (one credit each), larger UDP datagrams are refused.
    pub fn max_data_payload(mut self, max: usize) -> Self {
        self.config.max_data_payload = max;
        self
    }

    /// How many bytes of packets may wait for [`Client::poll_transmit`]; once reached, sends
    /// take nothing and opens are refused until the queue drains (it may overshoot by one
    /// packet).
    pub fn max_queued_bytes(mut self, max: usize) -> Self {
        self.config.max_queued_bytes = max;
        self
    }

    /// How many bytes of received DATA may wait in undrained events; once reached,
    /// [`Client::handle_message`] refuses messages until events are polled.
    pub fn max_pending_data(mut self, max: usize) -> Self {
        self.config.max_pending_data = max;
        self
    }

    /// How many events may wait undrained; once reached, [`Client::handle_message`] refuses
    /// messages until events are polled.
    pub fn max_pending_events(mut self, max: usize) -> Self {
        self.config.max_pending_events = max;
        self
    }

    /// Checks the values and returns the configuration.
    pub fn build(self) -> Result<ClientConfig, ClientConfigError> {
        let mut config = self.config;
        for (name, value) in [
            ("max_open_streams", config.max_open_streams),
            ("max_data_payload", config.max_data_payload),
            ("max_queued_bytes", config.max_queued_bytes),
            ("max_pending_data", config.max_pending_data),
            ("max_pending_events", config.max_pending_events),
        ] {
            if value == 0 {
                return Err(ClientConfigError::ZeroLimit { name });
            }
        }
        if u32::try_from(config.max_open_streams).is_err() {
            return Err(ClientConfigError::TooManyStreams {
                max: config.max_open_streams,
            });
        }
        if let Some((username, password)) = &self.credentials {
            let entry = ClientExtension::PasswordAuth { username, password }
                .to_raw()
                .map_err(|_| ClientConfigError::UsernameTooLong {
                    len: username.len(),
                })?;
            config.password_entry = Some(entry.payload().to_vec());
        }
        Ok(config)
    }
}

/// Something the caller must learn about; polled with [`Client::poll_event`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The handshake is done (v1: the initial CONTINUE; v2: INFO exchanged, then CONTINUE):
    /// streams can be opened.
    Ready,
    /// The server confirmed that the stream's socket is open (v2 stream open confirmation
    /// only; without it no such event comes and the stream is usable at once).
    Opened {
        /// The stream.
        id: StreamId,
    },
    /// Bytes from the stream's socket: a piece of the TCP byte stream, or one UDP datagram.
    Data {
        /// The stream.
        id: StreamId,
        /// The payload of one DATA packet.
        bytes: Vec<u8>,
    },
    /// A stream on which [`Client::send`] took less than it was given can take more now (the
    /// server sent credit, or the transmit queue drained).
    Writable {
        /// The stream.
        id: StreamId,
    },
    /// The server closed the stream (or the whole connection); its ID is free again.
    Closed {
        /// The stream.
        id: StreamId,
        /// The server's reason.
        reason: CloseReason,
    },
    /// The connection is over: the caller should transmit what is queued and close the
    /// WebSocket.
    Error(ClientError),
}

/// Why a connection ended (delivered as [`Event::Error`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClientError {
    /// The server requires authentication, offers password auth, and no credentials are
    /// configured. The client sent CLOSE with reason 0xc2.
    #[error("the Wisp server requires a password and none is configured")]
    PasswordRequired,
    /// The server requires key authentication only, which this client does not implement. The
    /// client sent CLOSE with reason 0xc2.
    #[error("the Wisp server requires key authentication, which is not supported")]
    KeyAuthRequired,
    /// The server's INFO packet is malformed, so no handshake can follow. The client sent
    /// CLOSE with reason 0x04 (incompatible extensions).
    #[error("malformed INFO packet from the Wisp server: {0}")]
    MalformedInfo(ParseError),
    /// The server refused the connection during the handshake (CLOSE on stream 0), e.g. 0xc0
    /// for a wrong password.
    #[error("the Wisp server refused the connection: {0:?}")]
    Rejected(CloseReason),
    /// The server closed the whole connection (CLOSE on stream 0) after the handshake; every
    /// open stream was reported closed with the same reason.
    #[error("the Wisp server closed the connection: {0:?}")]
    ConnectionClosed(CloseReason),
}

/// Why [`Client::handle_message`] did not take a message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HandleError {
    /// Undrained events hold too much: poll events, then hand the same message in again.
    #[error("{events} events holding {data_bytes} bytes are not drained")]
    EventsNotDrained {
        /// Events waiting.
        events: usize,
        /// DATA bytes in them.
        data_bytes: usize,
    },
}

/// Why [`Client::open`] did not open a stream.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OpenError {
    /// The handshake is not done; wait for [`Event::Ready`].
    #[error("the Wisp handshake is not done")]
    NotReady,
    /// The connection has ended ([`Event::Error`]).
    #[error("the Wisp connection is closed")]
    ConnectionClosed,
    /// UDP is disabled in the configuration or the v2 server did not offer it.
    #[error("UDP streams are not supported on this connection")]
    UdpUnsupported,
    /// [`ClientConfig::max_open_streams`] streams are open.
    #[error("{max} streams are already open")]
    TooManyStreams {
        /// The limit.
        max: usize,
    },
    /// The hostname is empty.
    #[error("empty hostname")]
    EmptyHost,
    /// The transmit queue is full; poll transmits first.
    #[error("the transmit queue is full")]
    QueueFull,
}

/// Why [`Client::send`] failed (running out of credit is not a failure: it returns 0).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// No such stream is open (never opened, or closed by either side).
    #[error("stream {0} is not open")]
    UnknownStream(StreamId),
    /// A UDP datagram must carry at least one byte (0 is the "not taken" answer of `send`).
    #[error("empty UDP datagram")]
    EmptyDatagram,
    /// A UDP datagram is larger than [`ClientConfig::max_data_payload`].
    #[error("UDP datagram of {len} bytes is larger than {max}")]
    DatagramTooLarge {
        /// The datagram's length.
        len: usize,
        /// The limit.
        max: usize,
    },
}

/// Why [`Client::close`] failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CloseError {
    /// No such stream is open.
    #[error("stream {0} is not open")]
    UnknownStream(StreamId),
}

/// Counts of what the server sent that was not acted on (never fatal after the handshake).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Messages that are not valid packets, and malformed extension entries in INFO.
    pub malformed: u64,
    /// Valid packets that break the protocol here: CONNECT from the server, INFO after the
    /// handshake, DATA/CONTINUE on stream 0, CONTINUE for a UDP stream, anything before the
    /// handshake that is not part of it.
    pub unexpected: u64,
    /// DATA, CONTINUE or CLOSE for a stream that is not open (possibly closed just before).
    pub unknown_stream: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Waiting for the server's first packet: INFO (v2) or CONTINUE on stream 0 (v1).
    AwaitServer,
    /// v2: the client's INFO is sent; waiting for CONTINUE (or CLOSE) on stream 0.
    AwaitContinue,
    Ready,
    Closed,
}

#[derive(Debug)]
struct Stream {
    kind: StreamType,
    /// DATA packets the server can still buffer (TCP only).
    credit: u32,
    /// A send took less than given since the last `Writable`.
    blocked: bool,
    /// A `Writable` for this stream is waiting in the event queue.
    writable_pending: bool,
    /// The server confirmed the open (stream open confirmation).
    opened: bool,
}

/// A Wisp client multiplexing TCP and UDP streams over one message-based connection.
#[derive(Debug)]
pub struct Client {
    config: ClientConfig,
    state: State,
    version: Option<WispVersion>,
    /// Credit of each new TCP stream: the CONTINUE on stream 0.
    initial_credit: u32,
    udp: bool,
    open_confirmation: bool,
    motd: Option<String>,
    streams: BTreeMap<u32, Stream>,
    next_id: u32,
    transmit: VecDeque<Vec<u8>>,
    queued_bytes: usize,
    /// A send was refused because the transmit queue was full.
    queue_blocked: bool,
    events: VecDeque<Event>,
    pending_data: usize,
    stats: Stats,
}

impl Client {
    /// A client waiting for the server's first packet.
    pub fn new(config: ClientConfig) -> Self {
        Self {
            config,
            state: State::AwaitServer,
            version: None,
            initial_credit: 0,
            udp: false,
            open_confirmation: false,
            motd: None,
            streams: BTreeMap::new(),
            next_id: 1,
            transmit: VecDeque::new(),
            queued_bytes: 0,
            queue_blocked: false,
            events: VecDeque::new(),
            pending_data: 0,
            stats: Stats::default(),
        }
    }

    /// Processes one WebSocket binary message (one packet).
    ///
    /// Malformed packets and protocol violations are counted in [`Client::stats`] and
    /// ignored; a handshake that cannot go on ends in [`Event::Error`]. Refuses the message,
    /// leaving it unprocessed, when the undrained events reach the configured limits.
    pub fn handle_message(&mut self, message: &[u8]) -> Result<(), HandleError> {
        if self.pending_data >= self.config.max_pending_data
            || self.events.len() >= self.config.max_pending_events
        {
            return Err(HandleError::EventsNotDrained {
                events: self.events.len(),
                data_bytes: self.pending_data,
            });
        }
        if self.state == State::Closed {
            return Ok(());
        }
        let packet = match Packet::parse(message) {
            Ok(packet) => packet,
            Err(error) => {
                self.on_malformed(message, error);
                return Ok(());
            }
        };
        match self.state {
            State::AwaitServer => self.on_first_packet(packet),
            State::AwaitContinue => self.on_handshake_reply(packet),
            State::Ready => self.on_packet(packet),
            State::Closed => {}
        }
        Ok(())
    }

    /// The next message to write to the WebSocket, oldest first.
    pub fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        let packet = self.transmit.pop_front()?;
        self.queued_bytes -= packet.len();
        if self.queue_blocked && self.queued_bytes < self.config.max_queued_bytes {
            self.queue_blocked = false;
            let ids: Vec<u32> = self.streams.keys().copied().collect();
            for id in ids {
                self.wake_if_writable(id);
            }
        }
        Some(packet)
    }

    /// The next event, oldest first. Drain after every [`Client::handle_message`].
    pub fn poll_event(&mut self) -> Option<Event> {
        let event = self.events.pop_front()?;
        match &event {
            Event::Data { bytes, .. } => self.pending_data -= bytes.len(),
            Event::Writable { id } => {
                if let Some(stream) = self.streams.get_mut(&id.get()) {
                    stream.writable_pending = false;
                }
            }
            _ => {}
        }
        Some(event)
    }

    /// Opens a stream to `host:port`: queues a CONNECT packet and returns the new ID.
    ///
    /// The stream can be written at once (the specification lets the client send before any
    /// confirmation); a TCP stream starts with the initial credit from the handshake.
    pub fn open(&mut self, kind: StreamType, host: &str, port: u16) -> Result<StreamId, OpenError> {
        match self.state {
            State::AwaitServer | State::AwaitContinue => return Err(OpenError::NotReady),
            State::Closed => return Err(OpenError::ConnectionClosed),
            State::Ready => {}
        }
        if kind == StreamType::Udp && !self.udp {
            return Err(OpenError::UdpUnsupported);
        }
        if self.streams.len() >= self.config.max_open_streams {
            return Err(OpenError::TooManyStreams {
                max: self.config.max_open_streams,
            });
        }
        if host.is_empty() {
            return Err(OpenError::EmptyHost);
        }
        if self.queued_bytes >= self.config.max_queued_bytes {
            return Err(OpenError::QueueFull);
        }
        let id = self.allocate_id();
        self.streams.insert(
            id.get(),
            Stream {
                kind,
                credit: self.initial_credit,
                blocked: false,
                writable_pending: false,
                opened: false,
            },
        );
        self.queue(Packet {
            stream_id: id.get(),
            payload: Payload::Connect {
                stream_type: kind,
                port,
                host,
            },
        });
        Ok(id)
    }

    /// Queues `bytes` for the stream and returns how many were taken.
    ///
    /// TCP: as many DATA packets (of at most `max_data_payload` bytes, one credit each) as the
    /// server's credit and the transmit queue allow; 0 when out of credit. UDP: the whole
    /// datagram as one packet, or 0 when the transmit queue is full. Nothing is buffered
    /// beyond what is returned; an [`Event::Writable`] follows a short send.
    pub fn send(&mut self, id: StreamId, bytes: &[u8]) -> Result<usize, SendError> {
        let max_payload = self.config.max_data_payload;
        let max_queued = self.config.max_queued_bytes;
        let stream = self
            .streams
            .get_mut(&id.get())
            .ok_or(SendError::UnknownStream(id))?;
        let taken = match stream.kind {
            StreamType::Udp => {
                if bytes.is_empty() {
                    return Err(SendError::EmptyDatagram);
                }
                if bytes.len() > max_payload {
                    return Err(SendError::DatagramTooLarge {
                        len: bytes.len(),
                        max: max_payload,
                    });
                }
                if self.queued_bytes < max_queued {
                    push_data(&mut self.transmit, &mut self.queued_bytes, id, bytes);
                    bytes.len()
                } else {
                    0
                }
            }
            StreamType::Tcp => {
                // Bytes written while this stream's last DATA still waits to be sent join it:
                // credit counts packets, and a guest's segments arrive a few KiB at a time.
                let mut taken = append_data(
                    &mut self.transmit,
                    &mut self.queued_bytes,
                    id,
                    bytes,
                    max_payload,
                    max_queued,
                );
                while taken < bytes.len() && stream.credit > 0 && self.queued_bytes < max_queued {
                    let end = bytes.len().min(taken + max_payload);
                    push_data(
                        &mut self.transmit,
                        &mut self.queued_bytes,
                        id,
                        &bytes[taken..end],
                    );
                    stream.credit -= 1;
                    taken = end;
                }
                taken
            }
        };
        if taken < bytes.len() {
            stream.blocked = true;
            if self.queued_bytes >= max_queued {
                self.queue_blocked = true;
            }
        }
        Ok(taken)
    }

    /// Closes the stream at once (the specification's CLOSE is immediate) and queues a CLOSE
    /// packet with `reason`. Data the server sends after this is dropped.
    pub fn close(&mut self, id: StreamId, reason: CloseReason) -> Result<(), CloseError> {
        let stream = self
            .streams
            .remove(&id.get())
            .ok_or(CloseError::UnknownStream(id))?;
        if stream.writable_pending {
            // Stale now; dropping it keeps the event queue bounded by the open streams even
            // when the caller opens, fills and closes streams without polling events.
            self.events.retain(|e| *e != Event::Writable { id });
        }
        self.queue(Packet {
            stream_id: id.get(),
            payload: Payload::Close(reason),
        });
        Ok(())
    }

    /// Whether the handshake is done and the connection not over.
    pub fn is_ready(&self) -> bool {
        self.state == State::Ready
    }

    /// The version the server chose, once its first packet is in.
    pub fn version(&self) -> Option<WispVersion> {
        self.version
    }

    /// Whether UDP streams can be opened (configured, and offered by a v2 server).
    pub fn udp_supported(&self) -> bool {
        self.udp
    }

    /// Whether the server confirms opened streams ([`Event::Opened`]).
    pub fn open_confirmation(&self) -> bool {
        self.open_confirmation
    }

    /// The server's message of the day (v2 MOTD extension).
    pub fn motd(&self) -> Option<&str> {
        self.motd.as_deref()
    }

    /// DATA packets the TCP stream may still send; `None` for UDP or unknown streams.
    pub fn credit(&self, id: StreamId) -> Option<u32> {
        self.streams
            .get(&id.get())
            .filter(|s| s.kind == StreamType::Tcp)
            .map(|s| s.credit)
    }

    /// How many streams are open.
    pub fn open_streams(&self) -> usize {
        self.streams.len()
    }

    /// Bytes of packets waiting for [`Client::poll_transmit`].
    pub fn queued_transmit_bytes(&self) -> usize {
        self.queued_bytes
    }

    /// Events waiting for [`Client::poll_event`], and the DATA bytes they hold.
    pub fn pending_events(&self) -> (usize, usize) {
        (self.events.len(), self.pending_data)
    }

    /// What the server sent that was ignored.
    pub fn stats(&self) -> Stats {
        self.stats
    }

    fn on_malformed(&mut self, message: &[u8], error: ParseError) {
        self.stats.malformed = self.stats.malformed.saturating_add(1);
        tracing::debug!(%error, len = message.len(), "wisp: ignored a malformed packet");
        // The server's INFO comes once: if it cannot be read, no handshake can follow.
        let is_info = matches!(parse_header(message), Ok((0, PacketType::Info, _)));
        if self.state == State::AwaitServer && is_info {
            self.reject(
                CloseReason::IncompatibleExtensions,
                ClientError::MalformedInfo(error),
            );
        }
    }

    fn on_unexpected(&mut self, packet: &Packet<'_>) {
        self.stats.unexpected = self.stats.unexpected.saturating_add(1);
        tracing::debug!(
            packet = %packet.payload.packet_type(),
            stream = packet.stream_id,
            state = ?self.state,
            "wisp: ignored an unexpected packet"
        );
    }

    fn on_first_packet(&mut self, packet: Packet<'_>) {
        match (packet.stream_id, &packet.payload) {
            (0, Payload::Continue { buffer_remaining }) => {
                self.version = Some(WispVersion::V1);
                self.udp = self.config.udp;
                self.become_ready(*buffer_remaining);
            }
            (0, Payload::Info(info)) => self.on_server_info(info),
            (0, Payload::Close(reason)) => self.end(ClientError::Rejected(*reason)),
            _ => self.on_unexpected(&packet),
        }
    }

    fn on_server_info(&mut self, info: &Info<'_>) {
        let mut udp = false;
        let mut password = None;
        let mut key_required = false;
        let mut confirmation = false;
        let mut motd = None;
        for raw in &info.extensions {
            match ServerExtension::parse(raw) {
                Ok(ServerExtension::Udp) => udp = true,
                Ok(ServerExtension::PasswordAuth { required }) => password = Some(required),
                Ok(ServerExtension::KeyAuth { required, .. }) => key_required |= required,
                Ok(ServerExtension::Motd(text)) => motd = Some(text.to_owned()),
                Ok(ServerExtension::StreamOpenConfirmation) => confirmation = true,
                Ok(ServerExtension::Unknown(_)) => {}
                Err(error) => {
                    self.stats.malformed = self.stats.malformed.saturating_add(1);
                    tracing::debug!(%error, "wisp: ignored a malformed extension in INFO");
                }
            }
        }
        self.version = Some(WispVersion::V2);
        let send_password = password.is_some() && self.config.password_entry.is_some();
        if (password == Some(true) || key_required) && !send_password {
            let error = if password.is_some() {
                ClientError::PasswordRequired
            } else {
                ClientError::KeyAuthRequired
            };
            self.reject(CloseReason::AuthMissingCredentials, error);
            return;
        }
        self.udp = udp && self.config.udp;
        self.open_confirmation = confirmation;
        self.motd = motd;

        let mut extensions = Vec::with_capacity(4);
        if self.config.udp {
            extensions.push(RawExtension::empty(EXT_UDP));
        }
        if let (true, Some(entry)) = (send_password, &self.config.password_entry) {
            // build() encoded the entry from a String, so its length fits a u32.
            if let Ok(raw) = RawExtension::new(EXT_PASSWORD_AUTH, entry.clone()) {
                extensions.push(raw);
            }
        }
        extensions.push(RawExtension::empty(EXT_MOTD));
        extensions.push(RawExtension::empty(EXT_STREAM_OPEN_CONFIRMATION));
        let (major, minor) = CLIENT_VERSION;
        let reply = Packet {
            stream_id: 0,
            payload: Payload::Info(Info {
                major,
                minor,
                extensions,
            }),
        };
        self.queue(reply);
        self.state = State::AwaitContinue;
    }

    fn on_handshake_reply(&mut self, packet: Packet<'_>) {
        match (packet.stream_id, &packet.payload) {
            (0, Payload::Continue { buffer_remaining }) => self.become_ready(*buffer_remaining),
            (0, Payload::Close(reason)) => self.end(ClientError::Rejected(*reason)),
            _ => self.on_unexpected(&packet),
        }
    }

    fn become_ready(&mut self, initial_credit: u32) {
        self.initial_credit = initial_credit;
        self.state = State::Ready;
        self.events.push_back(Event::Ready);
    }

    fn on_packet(&mut self, packet: Packet<'_>) {
        let Some(id) = StreamId::new(packet.stream_id) else {
            match packet.payload {
                Payload::Close(reason) => self.end(ClientError::ConnectionClosed(reason)),
                _ => self.on_unexpected(&packet),
            }
            return;
        };
        if matches!(packet.payload, Payload::Connect { .. } | Payload::Info(_)) {
            self.on_unexpected(&packet);
            return;
        }
        let Some(stream) = self.streams.get_mut(&id.get()) else {
            self.stats.unknown_stream = self.stats.unknown_stream.saturating_add(1);
            tracing::debug!(
                packet = %packet.payload.packet_type(),
                stream = id.get(),
                "wisp: ignored a packet for a stream that is not open"
            );
            return;
        };
        match packet.payload {
            Payload::Data(bytes) => {
                // An empty TCP payload carries nothing; an empty UDP datagram is a datagram.
                if !bytes.is_empty() || stream.kind == StreamType::Udp {
                    self.pending_data += bytes.len();
                    self.events.push_back(Event::Data {
                        id,
                        bytes: bytes.to_vec(),
                    });
                }
            }
            Payload::Continue { buffer_remaining } => {
                let confirms = self.open_confirmation && !stream.opened;
                if confirms {
                    stream.opened = true;
                    self.events.push_back(Event::Opened { id });
                }
                match stream.kind {
                    // "When the client receives a CONTINUE packet from the server, it must
                    // store the received buffer size": the value replaces the credit.
                    StreamType::Tcp => {
                        stream.credit = buffer_remaining;
                        self.wake_if_writable(id.get());
                    }
                    // "the client does not keep track of any buffer" for UDP; a CONTINUE
                    // other than the open confirmation breaks "must not be sent".
                    StreamType::Udp if !confirms => self.on_unexpected(&packet),
                    StreamType::Udp => {}
                }
            }
            Payload::Close(reason) => {
                self.streams.remove(&id.get());
                self.events.push_back(Event::Closed { id, reason });
            }
            Payload::Connect { .. } | Payload::Info(_) => self.on_unexpected(&packet),
        }
    }

    /// Queues `Writable` for a blocked stream that can send again.
    fn wake_if_writable(&mut self, id: u32) {
        let queue_has_room = self.queued_bytes < self.config.max_queued_bytes;
        let Some(stream) = self.streams.get_mut(&id) else {
            return;
        };
        let has_credit = stream.kind == StreamType::Udp || stream.credit > 0;
        if stream.blocked && has_credit && queue_has_room && !stream.writable_pending {
            stream.blocked = false;
            stream.writable_pending = true;
            if let Some(id) = StreamId::new(id) {
                self.events.push_back(Event::Writable { id });
            }
        }
    }

    /// Refuses the handshake: CLOSE on stream 0 with `reason`, then the error event.
    fn reject(&mut self, reason: CloseReason, error: ClientError) {
        self.queue(Packet {
            stream_id: 0,
            payload: Payload::Close(reason),
        });
        self.end(error);
    }

    /// Ends the connection: every open stream is reported closed, then the error.
    fn end(&mut self, error: ClientError) {
        let reason = match &error {
            ClientError::ConnectionClosed(reason) | ClientError::Rejected(reason) => *reason,
            _ => CloseReason::Unspecified,
        };
        if let ClientError::ConnectionClosed(_) | ClientError::Rejected(_) = error {
            // The server has closed the connection: nothing queued can matter to it.
            self.transmit.clear();
            self.queued_bytes = 0;
        }
        for id in std::mem::take(&mut self.streams).into_keys() {
            if let Some(id) = StreamId::new(id) {
                self.events.push_back(Event::Closed { id, reason });
            }
        }
        self.state = State::Closed;
        self.events.push_back(Event::Error(error));
    }

    fn allocate_id(&mut self) -> StreamId {
        // Terminates: fewer streams are open than there are nonzero u32 values (build()).
        loop {
            let candidate = self.next_id;
            self.next_id = self.next_id.checked_add(1).unwrap_or(1);
            if let Some(id) = StreamId::new(candidate) {
                if !self.streams.contains_key(&candidate) {
                    return id;
                }
            }
        }
    }

    fn queue(&mut self, packet: Packet<'_>) {
        let bytes = packet.to_vec();
        self.queued_bytes += bytes.len();
        self.transmit.push_back(bytes);
    }
}

/// Appends what fits of `bytes` to the last queued packet if it is a DATA packet of stream
/// `id` with room below `max_payload` (and the queue below `max_queued`); how much it took.
fn append_data(
    transmit: &mut VecDeque<Vec<u8>>,
    queued: &mut usize,
    id: StreamId,
    bytes: &[u8],
    max_payload: usize,
    max_queued: usize,
) -> usize {
    let Some(last) = transmit.back_mut() else {
        return 0;
    };
    let ours = last.len() >= HEADER_LEN
        && last[0] == PacketType::Data.to_u8()
        && last[1..HEADER_LEN] == id.get().to_le_bytes();
    if !ours || *queued >= max_queued {
        return 0;
    }
    let room = max_payload.saturating_sub(last.len() - HEADER_LEN);
    let n = room.min(bytes.len()).min(max_queued - *queued);
    last.extend_from_slice(&bytes[..n]);
    *queued += n;
    n
}

fn push_data(transmit: &mut VecDeque<Vec<u8>>, queued: &mut usize, id: StreamId, payload: &[u8]) {
    let mut packet = Vec::with_capacity(HEADER_LEN + payload.len());
    emit_data(&mut packet, id.get(), payload);
    *queued += packet.len();
    transmit.push_back(packet);
}

#[cfg(test)]
mod tests {
    use super::*;

    const V1_CONTINUE_128: [u8; 9] = [0x03, 0, 0, 0, 0, 0x80, 0, 0, 0];

    fn events(client: &mut Client) -> Vec<Event> {
        std::iter::from_fn(|| client.poll_event()).collect()
    }

    fn transmits(client: &mut Client) -> Vec<Vec<u8>> {
        std::iter::from_fn(|| client.poll_transmit()).collect()
    }

    fn config() -> ClientConfigBuilder {
        ClientConfig::builder()
    }

    /// A client after a v1 handshake whose initial credit is `credit`.
    fn ready_v1(credit: u32, config: ClientConfig) -> Client {
        let mut client = Client::new(config);
        let mut hello = vec![0x03, 0, 0, 0, 0];
        hello.extend_from_slice(&credit.to_le_bytes());
        client.handle_message(&hello).unwrap();
        assert_eq!(events(&mut client), [Event::Ready]);
        client
    }

    fn id(n: u32) -> StreamId {
        StreamId::new(n).unwrap()
    }

    fn continue_packet(stream: u32, credit: u32) -> Vec<u8> {
        let mut bytes = vec![0x03];
        bytes.extend_from_slice(&stream.to_le_bytes());
        bytes.extend_from_slice(&credit.to_le_bytes());
        bytes
    }

    fn data_packet(stream: u32, payload: &[u8]) -> Vec<u8> {
        let mut bytes = vec![0x02];
        bytes.extend_from_slice(&stream.to_le_bytes());
        bytes.extend_from_slice(payload);
        bytes
    }

    fn close_packet(stream: u32, reason: u8) -> Vec<u8> {
        let mut bytes = vec![0x04];
        bytes.extend_from_slice(&stream.to_le_bytes());
        bytes.push(reason);
        bytes
    }

    #[test]
    fn v1_handshake() {
        let mut client = Client::new(ClientConfig::default());
        assert!(!client.is_ready());
        assert_eq!(
            client.open(StreamType::Tcp, "example.com", 80),
            Err(OpenError::NotReady)
        );
        client.handle_message(&V1_CONTINUE_128).unwrap();
        assert_eq!(events(&mut client), [Event::Ready]);
        assert!(client.is_ready());
        assert_eq!(client.version(), Some(WispVersion::V1));
        assert!(client.udp_supported());
        assert!(!client.open_confirmation());
        assert!(
            transmits(&mut client).is_empty(),
            "v1: the client sends nothing"
        );
        let stream = client.open(StreamType::Tcp, "example.com", 80).unwrap();
        assert_eq!(client.credit(stream), Some(128));
    }

    /// The server's INFO: v2.0 with UDP and MOTD "hi".
    const SERVER_INFO_UDP_MOTD: [u8; 19] = [
        0x05, 0, 0, 0, 0, 0x02, 0x00, // INFO on stream 0, v2.0
        0x01, 0, 0, 0, 0, // UDP
        0x04, 0x02, 0, 0, 0, b'h', b'i', // MOTD "hi"
    ];

    /// The client's INFO without credentials: v2.0, UDP, MOTD, stream open confirmation.
    const CLIENT_INFO: [u8; 22] = [
        0x05, 0, 0, 0, 0, 0x02, 0x00, // INFO on stream 0, v2.0
        0x01, 0, 0, 0, 0, // UDP
        0x04, 0, 0, 0, 0, // MOTD (no client payload)
        0x05, 0, 0, 0, 0, // stream open confirmation
    ];

    #[test]
    fn v2_handshake_without_password() {
        let mut client = Client::new(ClientConfig::default());
        client.handle_message(&SERVER_INFO_UDP_MOTD).unwrap();
        assert_eq!(transmits(&mut client), [CLIENT_INFO.to_vec()]);
        assert!(events(&mut client).is_empty(), "not ready before CONTINUE");
        assert_eq!(client.version(), Some(WispVersion::V2));
        assert_eq!(
            client.open(StreamType::Tcp, "a", 1),
            Err(OpenError::NotReady)
        );
        client.handle_message(&continue_packet(0, 32)).unwrap();
        assert_eq!(events(&mut client), [Event::Ready]);
        assert_eq!(client.motd(), Some("hi"));
        assert!(client.udp_supported());
        assert!(!client.open_confirmation());
        let stream = client.open(StreamType::Tcp, "a", 1).unwrap();
        assert_eq!(client.credit(stream), Some(32));
        assert_eq!(client.stats(), Stats::default());
    }

    fn server_info_password(required: u8) -> Vec<u8> {
        vec![
            0x05, 0, 0, 0, 0, 0x02, 0x00, // INFO, v2.0
            0x01, 0, 0, 0, 0, // UDP
            0x02, 0x01, 0, 0, 0, required, // password auth
        ]
    }

    #[test]
    fn v2_handshake_with_password() {
        let config = config().password("user", "secret").build().unwrap();
        let mut client = Client::new(config);
        client.handle_message(&server_info_password(1)).unwrap();
        let expected: Vec<u8> = [
            &[0x05, 0, 0, 0, 0, 0x02, 0x00][..],
            &[0x01, 0, 0, 0, 0],
            // Password auth: 11 bytes = [4]["user"]["secret"].
            &[0x02, 11, 0, 0, 0, 4],
            b"user",
            b"secret",
            &[0x04, 0, 0, 0, 0],
            &[0x05, 0, 0, 0, 0],
        ]
        .concat();
        assert_eq!(transmits(&mut client), [expected]);
        client.handle_message(&continue_packet(0, 16)).unwrap();
        assert_eq!(events(&mut client), [Event::Ready]);
    }

    #[test]
    fn v2_password_optional() {
        // Offered but not required, no credentials: proceed without.
        let mut client = Client::new(ClientConfig::default());
        client.handle_message(&server_info_password(0)).unwrap();
        assert_eq!(transmits(&mut client), [CLIENT_INFO.to_vec()]);
        // Offered but not required, credentials configured: the client authenticates.
        let config = config().password("u", "p").build().unwrap();
        let mut client = Client::new(config);
        client.handle_message(&server_info_password(0)).unwrap();
        let sent = transmits(&mut client);
        let needle = [0x02, 3, 0, 0, 0, 1, b'u', b'p'];
        assert!(sent[0].windows(needle.len()).any(|w| w == needle));
    }

    #[test]
    fn v2_wrong_password_rejected_by_server() {
        let config = config().password("user", "wrong").build().unwrap();
        let mut client = Client::new(config);
        client.handle_message(&server_info_password(1)).unwrap();
        assert_eq!(transmits(&mut client).len(), 1);
        client.handle_message(&close_packet(0, 0xc0)).unwrap();
        assert_eq!(
            events(&mut client),
            [Event::Error(ClientError::Rejected(
                CloseReason::AuthBadPassword
            ))]
        );
        assert_eq!(
            client.open(StreamType::Tcp, "a", 1),
            Err(OpenError::ConnectionClosed)
        );
        // Whatever comes after is ignored.
        client.handle_message(&continue_packet(0, 16)).unwrap();
        assert!(events(&mut client).is_empty());
        assert!(!client.is_ready());
    }

    #[test]
    fn v2_password_required_but_not_configured() {
        let mut client = Client::new(ClientConfig::default());
        client.handle_message(&server_info_password(1)).unwrap();
        // No INFO: CLOSE on stream 0 with 0xc2 (authentication required, no credentials).
        assert_eq!(transmits(&mut client), [vec![0x04, 0, 0, 0, 0, 0xc2]]);
        assert_eq!(
            events(&mut client),
            [Event::Error(ClientError::PasswordRequired)]
        );
        assert!(!client.is_ready());
    }

    #[test]
    fn v2_key_auth_required_is_refused() {
        let info = [
            0x05, 0, 0, 0, 0, 0x02, 0x00, // INFO, v2.0
            0x03, 0x04, 0, 0, 0, 1, 0b1, 0xaa, 0xbb, // key auth required, Ed25519, challenge
        ];
        let mut client = Client::new(config().password("u", "p").build().unwrap());
        client.handle_message(&info).unwrap();
        assert_eq!(transmits(&mut client), [vec![0x04, 0, 0, 0, 0, 0xc2]]);
        assert_eq!(
            events(&mut client),
            [Event::Error(ClientError::KeyAuthRequired)]
        );
    }

    #[test]
    fn v2_without_udp_and_udp_disabled() {
        let info = [0x05, 0, 0, 0, 0, 0x02, 0x00];
        let mut client = Client::new(ClientConfig::default());
        client.handle_message(&info).unwrap();
        client.handle_message(&continue_packet(0, 8)).unwrap();
        assert_eq!(events(&mut client), [Event::Ready]);
        assert!(!client.udp_supported());
        assert_eq!(
            client.open(StreamType::Udp, "1.1.1.1", 53),
            Err(OpenError::UdpUnsupported)
        );

        let mut client = Client::new(config().udp(false).build().unwrap());
        client.handle_message(&SERVER_INFO_UDP_MOTD).unwrap();
        let sent = transmits(&mut client);
        assert_eq!(sent[0], [&CLIENT_INFO[..7], &CLIENT_INFO[12..]].concat());
        let mut client = ready_v1(8, config().udp(false).build().unwrap());
        assert_eq!(
            client.open(StreamType::Udp, "1.1.1.1", 53),
            Err(OpenError::UdpUnsupported)
        );
    }

    #[test]
    fn v2_malformed_info_ends_handshake() {
        // The MOTD entry declares 9 bytes but carries 2.
        let info = [0x05, 0, 0, 0, 0, 0x02, 0x00, 0x04, 9, 0, 0, 0, b'h', b'i'];
        let mut client = Client::new(ClientConfig::default());
        client.handle_message(&info).unwrap();
        assert_eq!(transmits(&mut client), [vec![0x04, 0, 0, 0, 0, 0x04]]);
        assert_eq!(
            events(&mut client),
            [Event::Error(ClientError::MalformedInfo(
                ParseError::ExtensionTruncated { offset: 0 }
            ))]
        );
        // A malformed entry inside a well-formed list is skipped and counted.
        let info = [0x05, 0, 0, 0, 0, 0x02, 0x00, 0x01, 1, 0, 0, 0, 0xff];
        let mut client = Client::new(ClientConfig::default());
        client.handle_message(&info).unwrap();
        assert_eq!(client.stats().malformed, 1);
        assert!(!client.udp_supported());
        client.handle_message(&continue_packet(0, 8)).unwrap();
        assert_eq!(events(&mut client), [Event::Ready]);
    }

    #[test]
    fn handshake_ignores_other_packets() {
        let mut client = Client::new(ClientConfig::default());
        for message in [
            data_packet(5, b"x"),
            continue_packet(5, 1),
            vec![0x01, 1, 0, 0, 0, 1, 80, 0, b'a'],
            vec![0x03, 0, 0],
        ] {
            client.handle_message(&message).unwrap();
        }
        assert!(events(&mut client).is_empty());
        assert_eq!(
            client.stats(),
            Stats {
                malformed: 1,
                unexpected: 3,
                unknown_stream: 0
            }
        );
        client.handle_message(&V1_CONTINUE_128).unwrap();
        assert_eq!(events(&mut client), [Event::Ready]);
    }

    #[test]
    fn open_tcp_connect_bytes() {
        let mut client = ready_v1(128, ClientConfig::default());
        let first = client.open(StreamType::Tcp, "example.com", 443).unwrap();
        let second = client.open(StreamType::Udp, "10.0.0.1", 53).unwrap();
        assert_eq!((first.get(), second.get()), (1, 2));
        let mut connect = vec![0x01, 0x01, 0, 0, 0, 0x01, 0xbb, 0x01];
        connect.extend_from_slice(b"example.com");
        let mut udp = vec![0x01, 0x02, 0, 0, 0, 0x02, 0x35, 0x00];
        udp.extend_from_slice(b"10.0.0.1");
        assert_eq!(transmits(&mut client), [connect, udp]);
        assert_eq!(client.open_streams(), 2);
        assert_eq!(client.credit(second), None, "UDP has no credit");
        assert_eq!(
            client.open(StreamType::Tcp, "", 80),
            Err(OpenError::EmptyHost)
        );
    }

    #[test]
    fn credit_exhaustion_and_continue() {
        let mut client = ready_v1(2, ClientConfig::default());
        let s = client.open(StreamType::Tcp, "h", 1).unwrap();
        transmits(&mut client);
        assert_eq!(client.send(s, b"a"), Ok(1));
        assert_eq!(client.send(s, b"b"), Ok(1), "joins the queued DATA");
        assert_eq!(client.credit(s), Some(1), "one packet, one credit");
        assert_eq!(transmits(&mut client), [vec![0x02, 1, 0, 0, 0, b'a', b'b']]);
        assert_eq!(client.send(s, b"c"), Ok(1));
        assert_eq!(client.credit(s), Some(0));
        assert_eq!(transmits(&mut client), [vec![0x02, 1, 0, 0, 0, b'c']]);
        assert_eq!(
            client.send(s, b"d"),
            Ok(0),
            "out of credit, nothing queued to join"
        );
        assert_eq!(client.send(s, b"d"), Ok(0));
        assert!(events(&mut client).is_empty());
        // The server's CONTINUE replaces the credit and wakes the stream once.
        client.handle_message(&continue_packet(1, 3)).unwrap();
        assert_eq!(events(&mut client), [Event::Writable { id: s }]);
        assert_eq!(client.credit(s), Some(3));
        assert_eq!(client.send(s, b"d"), Ok(1));
        assert_eq!(transmits(&mut client), [vec![0x02, 1, 0, 0, 0, b'd']]);
    }

    #[test]
    fn writes_join_their_stream_s_queued_data_up_to_the_max_payload() {
        let config = config().max_data_payload(4).build().unwrap();
        let mut client = ready_v1(10, config);
        let a = client.open(StreamType::Tcp, "a", 1).unwrap();
        let b = client.open(StreamType::Tcp, "b", 1).unwrap();
        transmits(&mut client);
        assert_eq!(client.send(a, b"12"), Ok(2));
        assert_eq!(client.send(a, b"345"), Ok(3), "2 join, 1 starts a packet");
        assert_eq!(client.send(b, b"x"), Ok(1));
        assert_eq!(
            client.send(a, b"6"),
            Ok(1),
            "another stream's DATA is last: new packet"
        );
        assert_eq!(client.credit(a), Some(7));
        assert_eq!(client.credit(b), Some(9));
        assert_eq!(
            transmits(&mut client),
            [
                data_packet(1, b"1234"),
                data_packet(1, b"5"),
                data_packet(2, b"x"),
                data_packet(1, b"6"),
            ]
        );
    }

    #[test]
    fn continue_sets_credit_without_spurious_wakeups() {
        let mut client = ready_v1(10, ClientConfig::default());
        let s = client.open(StreamType::Tcp, "h", 1).unwrap();
        assert_eq!(client.send(s, b"x"), Ok(1));
        assert_eq!(client.credit(s), Some(9));
        // Stored, not added: 5, not 14.
        client.handle_message(&continue_packet(1, 5)).unwrap();
        assert_eq!(client.credit(s), Some(5));
        assert!(events(&mut client).is_empty(), "never blocked: no Writable");
        // A CONTINUE of 0 stops the stream (once its queued DATA is sent).
        client.handle_message(&continue_packet(1, 0)).unwrap();
        transmits(&mut client);
        assert_eq!(client.send(s, b"x"), Ok(0));
        client.handle_message(&continue_packet(1, 0)).unwrap();
        assert!(events(&mut client).is_empty(), "still no credit");
        client.handle_message(&continue_packet(1, 1)).unwrap();
        assert_eq!(events(&mut client), [Event::Writable { id: s }]);
    }

    #[test]
    fn send_splits_into_packets_of_max_payload() {
        let config = config().max_data_payload(4).build().unwrap();
        let mut client = ready_v1(2, config);
        let s = client.open(StreamType::Tcp, "h", 1).unwrap();
        transmits(&mut client);
        assert_eq!(client.send(s, b"0123456789"), Ok(8));
        assert_eq!(
            transmits(&mut client),
            [
                [&[0x02, 1, 0, 0, 0][..], b"0123"].concat(),
                [&[0x02, 1, 0, 0, 0][..], b"4567"].concat()
            ]
        );
        assert_eq!(client.send(s, b""), Ok(0));
        assert!(transmits(&mut client).is_empty(), "no empty DATA packet");
    }

    #[test]
    fn data_goes_to_its_stream() {
        let mut client = ready_v1(8, ClientConfig::default());
        let a = client.open(StreamType::Tcp, "a", 1).unwrap();
        let b = client.open(StreamType::Udp, "b", 2).unwrap();
        client.handle_message(&data_packet(2, b"to b")).unwrap();
        client.handle_message(&data_packet(1, b"to a")).unwrap();
        client.handle_message(&data_packet(1, b"")).unwrap();
        client.handle_message(&data_packet(2, b"")).unwrap();
        assert_eq!(client.pending_events(), (3, 8));
        assert_eq!(
            events(&mut client),
            [
                Event::Data {
                    id: b,
                    bytes: b"to b".to_vec()
                },
                Event::Data {
                    id: a,
                    bytes: b"to a".to_vec()
                },
                // Empty TCP payloads carry nothing; an empty UDP datagram is one.
                Event::Data {
                    id: b,
                    bytes: Vec::new()
                },
            ]
        );
        assert_eq!(client.pending_events(), (0, 0));
    }

    #[test]
    fn server_close_with_each_reason() {
        let mut client = ready_v1(8, ClientConfig::default());
        for byte in [
            0x01, 0x02, 0x03, 0x04, 0x41, 0x42, 0x43, 0x44, 0x47, 0x48, 0x49, 0x81, 0xc0, 0xc1,
            0xc2, 0x7f,
        ] {
            let s = client.open(StreamType::Tcp, "h", 1).unwrap();
            client.handle_message(&close_packet(s.get(), byte)).unwrap();
            assert_eq!(
                events(&mut client),
                [Event::Closed {
                    id: s,
                    reason: CloseReason::from(byte)
                }]
            );
            assert_eq!(client.send(s, b"x"), Err(SendError::UnknownStream(s)));
            assert_eq!(client.open_streams(), 0);
        }
        assert_eq!(client.stats(), Stats::default());
    }

    #[test]
    fn client_close() {
        let mut client = ready_v1(8, ClientConfig::default());
        let s = client.open(StreamType::Tcp, "h", 1).unwrap();
        transmits(&mut client);
        assert_eq!(client.close(s, CloseReason::Voluntary), Ok(()));
        assert_eq!(transmits(&mut client), [vec![0x04, 1, 0, 0, 0, 0x02]]);
        assert_eq!(
            client.close(s, CloseReason::Voluntary),
            Err(CloseError::UnknownStream(s))
        );
        // Data racing the close is dropped and counted, not delivered.
        client.handle_message(&data_packet(1, b"late")).unwrap();
        client.handle_message(&close_packet(1, 0x02)).unwrap();
        assert!(events(&mut client).is_empty());
        assert_eq!(client.stats().unknown_stream, 2);
        assert_eq!(client.send(s, b"x"), Err(SendError::UnknownStream(s)));
        // The next stream gets a new ID.
        assert_eq!(client.open(StreamType::Tcp, "h", 1).unwrap().get(), 2);
    }

    #[test]
    fn udp_without_credit() {
        let config = config().max_data_payload(8).build().unwrap();
        let mut client = ready_v1(0, config);
        let tcp = client.open(StreamType::Tcp, "h", 1).unwrap();
        let udp = client.open(StreamType::Udp, "1.1.1.1", 53).unwrap();
        transmits(&mut client);
        assert_eq!(client.send(tcp, b"x"), Ok(0), "TCP waits for credit");
        assert_eq!(client.send(udp, b"ping"), Ok(4));
        assert_eq!(client.send(udp, b"pong"), Ok(4));
        assert_eq!(client.send(udp, b""), Err(SendError::EmptyDatagram));
        assert_eq!(
            client.send(udp, b"123456789"),
            Err(SendError::DatagramTooLarge { len: 9, max: 8 })
        );
        assert_eq!(
            transmits(&mut client),
            [
                vec![0x02, 2, 0, 0, 0, b'p', b'i', b'n', b'g'],
                vec![0x02, 2, 0, 0, 0, b'p', b'o', b'n', b'g']
            ]
        );
        // CONTINUE must not be sent for UDP: counted, ignored.
        client.handle_message(&continue_packet(2, 4)).unwrap();
        assert!(events(&mut client).is_empty());
        assert_eq!(client.stats().unexpected, 1);
    }

    #[test]
    fn stream_open_confirmation() {
        let info = [
            0x05, 0, 0, 0, 0, 0x02, 0x00, // INFO, v2.0
            0x01, 0, 0, 0, 0, // UDP
            0x05, 0, 0, 0, 0, // stream open confirmation
        ];
        let mut client = Client::new(ClientConfig::default());
        client.handle_message(&info).unwrap();
        client.handle_message(&continue_packet(0, 4)).unwrap();
        assert_eq!(events(&mut client), [Event::Ready]);
        assert!(client.open_confirmation());
        let tcp = client.open(StreamType::Tcp, "h", 1).unwrap();
        let udp = client.open(StreamType::Udp, "h", 2).unwrap();
        // Data may go out before the confirmation.
        assert_eq!(client.send(tcp, b"early"), Ok(5));
        client.handle_message(&continue_packet(1, 10)).unwrap();
        client.handle_message(&continue_packet(2, 10)).unwrap();
        assert_eq!(
            events(&mut client),
            [Event::Opened { id: tcp }, Event::Opened { id: udp }]
        );
        assert_eq!(client.credit(tcp), Some(10));
        // Only the first CONTINUE confirms; a later one on UDP is a violation.
        client.handle_message(&continue_packet(1, 7)).unwrap();
        client.handle_message(&continue_packet(2, 7)).unwrap();
        assert!(events(&mut client).is_empty());
        assert_eq!(client.credit(tcp), Some(7));
        assert_eq!(client.stats().unexpected, 1);
    }

    #[test]
    fn stream_ids_wrap_and_skip_open_ones() {
        let mut client = ready_v1(8, ClientConfig::default());
        let first = client.open(StreamType::Tcp, "h", 1).unwrap();
        assert_eq!(first.get(), 1);
        client.next_id = u32::MAX;
        assert_eq!(
            client.open(StreamType::Tcp, "h", 1).unwrap().get(),
            u32::MAX
        );
        // Wraps past 0 (reserved) and past 1 (still open).
        assert_eq!(client.open(StreamType::Tcp, "h", 1).unwrap().get(), 2);
    }

    #[test]
    fn max_open_streams() {
        let config = config().max_open_streams(2).build().unwrap();
        let mut client = ready_v1(8, config);
        let a = client.open(StreamType::Tcp, "h", 1).unwrap();
        client.open(StreamType::Tcp, "h", 1).unwrap();
        assert_eq!(
            client.open(StreamType::Tcp, "h", 1),
            Err(OpenError::TooManyStreams { max: 2 })
        );
        client.close(a, CloseReason::Voluntary).unwrap();
        assert!(client.open(StreamType::Tcp, "h", 1).is_ok());
    }

    #[test]
    fn transmit_queue_is_bounded() {
        let config = config().max_queued_bytes(10).build().unwrap();
        let mut client = ready_v1(100, config);
        transmits(&mut client);
        let udp = client.open(StreamType::Udp, "h", 1).unwrap();
        let tcp = client.open(StreamType::Tcp, "h", 1).unwrap();
        assert_eq!(client.queued_transmit_bytes(), 9 + 9);
        assert_eq!(client.send(udp, b"dgram"), Ok(0), "queue full");
        assert_eq!(client.send(tcp, b"bytes"), Ok(0), "queue full");
        assert_eq!(
            client.open(StreamType::Tcp, "h", 1),
            Err(OpenError::QueueFull)
        );
        assert_eq!(client.credit(tcp), Some(100), "no credit spent");
        // Draining the queue wakes both blocked streams, once.
        assert_eq!(transmits(&mut client).len(), 2);
        assert_eq!(
            events(&mut client),
            [Event::Writable { id: udp }, Event::Writable { id: tcp }]
        );
        assert_eq!(client.send(tcp, b"0123456789abc"), Ok(13));
        assert_eq!(client.queued_transmit_bytes(), 18);
    }

    #[test]
    fn writable_is_not_repeated_while_pending() {
        let config = config().max_queued_bytes(1).build().unwrap();
        let mut client = ready_v1(100, config);
        let s = client.open(StreamType::Udp, "h", 1).unwrap();
        for _ in 0..100 {
            assert_eq!(client.send(s, b"x"), Ok(0));
            while client.poll_transmit().is_some() {}
            assert_eq!(client.send(s, b"x"), Ok(1));
        }
        // Without polling events: one Writable for the stream, not a hundred.
        assert_eq!(events(&mut client), [Event::Writable { id: s }]);
    }

    #[test]
    fn closing_drops_a_pending_writable() {
        let config = config().max_queued_bytes(1).build().unwrap();
        let mut client = ready_v1(100, config);
        for _ in 0..100 {
            let s = client.open(StreamType::Udp, "h", 1).unwrap();
            assert_eq!(client.send(s, b"x"), Ok(0));
            while client.poll_transmit().is_some() {}
            assert_eq!(client.pending_events(), (1, 0), "Writable for {s}");
            client.close(s, CloseReason::Voluntary).unwrap();
            assert_eq!(client.pending_events(), (0, 0));
            while client.poll_transmit().is_some() {}
        }
    }

    #[test]
    fn undrained_events_refuse_messages() {
        let config = config()
            .max_pending_data(4)
            .max_pending_events(3)
            .build()
            .unwrap();
        let mut client = ready_v1(8, config);
        client.open(StreamType::Tcp, "h", 1).unwrap();
        client.handle_message(&data_packet(1, b"12345")).unwrap();
        let refused = client.handle_message(&data_packet(1, b"6"));
        assert_eq!(
            refused,
            Err(HandleError::EventsNotDrained {
                events: 1,
                data_bytes: 5
            })
        );
        assert_eq!(events(&mut client).len(), 1);
        for _ in 0..3 {
            client.handle_message(&data_packet(1, b"6")).unwrap();
        }
        assert!(client.handle_message(&data_packet(1, b"7")).is_err());
        assert_eq!(events(&mut client).len(), 3);
        client.handle_message(&data_packet(1, b"7")).unwrap();
    }

    #[test]
    fn server_closes_connection() {
        let mut client = ready_v1(8, ClientConfig::default());
        let a = client.open(StreamType::Tcp, "h", 1).unwrap();
        let b = client.open(StreamType::Udp, "h", 2).unwrap();
        client.handle_message(&close_packet(0, 0x49)).unwrap();
        assert_eq!(
            events(&mut client),
            [
                Event::Closed {
                    id: a,
                    reason: CloseReason::Throttled
                },
                Event::Closed {
                    id: b,
                    reason: CloseReason::Throttled
                },
                Event::Error(ClientError::ConnectionClosed(CloseReason::Throttled)),
            ]
        );
        assert!(transmits(&mut client).is_empty(), "queued CONNECTs dropped");
        assert_eq!(client.queued_transmit_bytes(), 0);
        assert_eq!(client.send(a, b"x"), Err(SendError::UnknownStream(a)));
        assert_eq!(
            client.open(StreamType::Tcp, "h", 1),
            Err(OpenError::ConnectionClosed)
        );
    }

    #[test]
    fn violations_after_handshake_are_counted() {
        let mut client = ready_v1(8, ClientConfig::default());
        client.open(StreamType::Tcp, "h", 1).unwrap();
        for message in [
            data_packet(0, b"x"),                   // DATA on stream 0
            continue_packet(0, 9),                  // CONTINUE on stream 0
            vec![0x01, 1, 0, 0, 0, 1, 80, 0, b'a'], // CONNECT from the server
            vec![0x05, 0, 0, 0, 0, 2, 0],           // INFO after the handshake
            vec![0x05, 1, 0, 0, 0, 2, 0],           // INFO on a stream
        ] {
            client.handle_message(&message).unwrap();
        }
        for message in [
            &[][..],
            &[0x02, 1, 0],             // shorter than the header
            &[0x09, 1, 0, 0, 0],       // unknown type
            &[0x03, 1, 0, 0, 0, 1],    // CONTINUE too short
            &[0x04, 1, 0, 0, 0],       // CLOSE without reason
            &[0x04, 1, 0, 0, 0, 1, 2], // CLOSE too long
        ] {
            client.handle_message(message).unwrap();
        }
        client.handle_message(&data_packet(77, b"x")).unwrap();
        assert_eq!(
            client.stats(),
            Stats {
                malformed: 6,
                unexpected: 5,
                unknown_stream: 1
            }
        );
        assert!(events(&mut client).is_empty());
        assert!(client.is_ready());
        assert_eq!(client.credit(StreamId::new(1).unwrap()), Some(8));
    }

    #[test]
    fn arbitrary_messages_never_panic() {
        // A deterministic xorshift stream of messages, biased to valid headers and stream IDs.
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for round in 0..200 {
            let config = config()
                .max_queued_bytes(64)
                .max_pending_data(64)
                .max_pending_events(8)
                .max_open_streams(4)
                .build()
                .unwrap();
            let mut client = Client::new(config);
            if round % 2 == 0 {
                client.handle_message(&V1_CONTINUE_128).unwrap();
            }
            for _ in 0..200 {
                let r = next();
                let len = (r % 24) as usize;
                let mut message: Vec<u8> = (0..len).map(|_| next() as u8).collect();
                if let Some(first) = message.first_mut() {
                    *first = 1 + (*first % 6);
                }
                if message.len() >= 5 {
                    message[1..5].copy_from_slice(&((r >> 8) as u32 % 6).to_le_bytes());
                }
                let _ = client.handle_message(&message);
                match (r >> 40) % 4 {
                    0 => {
                        let _ = client.open(StreamType::Tcp, "h", 1);
                    }
                    1 => {
                        let _ = client.send(id(1 + (r >> 50) as u32 % 5), b"payload");
                    }
                    2 => {
                        let _ = client.close(id(1 + (r >> 50) as u32 % 5), CloseReason::Voluntary);
                    }
                    _ => while client.poll_event().is_some() {},
                }
                let (events, data) = client.pending_events();
                assert!(events <= 8 + 4 + 2 && data <= 64 + 24);
                assert!(client.queued_transmit_bytes() <= 64 + 24);
                assert!(client.open_streams() <= 4);
                if r % 3 == 0 {
                    while client.poll_transmit().is_some() {}
                }
            }
        }
    }

    #[test]
    fn config_is_checked() {
        assert_eq!(
            config().password("u".repeat(256), "p").build(),
            Err(ClientConfigError::UsernameTooLong { len: 256 })
        );
        assert!(config().password("u".repeat(255), "p").build().is_ok());
        assert_eq!(
            config().max_open_streams(0).build(),
            Err(ClientConfigError::ZeroLimit {
                name: "max_open_streams"
            })
        );
        assert_eq!(
            config().max_data_payload(0).build(),
            Err(ClientConfigError::ZeroLimit {
                name: "max_data_payload"
            })
        );
        let config = config().password("alice", "hunter2").build().unwrap();
        let shown = format!("{config:?}");
        assert!(!shown.contains("hunter2") && shown.contains("<set>"));
        assert_eq!(config.max_open_streams(), DEFAULT_MAX_OPEN_STREAMS);
    }
}
