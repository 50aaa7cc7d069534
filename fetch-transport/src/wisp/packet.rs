//! Wisp packets on the wire: parse and emit, in the style of smoltcp's `Repr`s.
//!
//! Every packet is `[type: u8][stream id: u32 LE][payload]` and travels as one WebSocket binary
//! message. [`Packet::parse`] borrows from the message (hostnames, DATA payloads, extension
//! payloads are slices of it); [`Packet::emit`] appends the exact bytes to a `Vec`. Extension
//! payloads in an INFO packet are kept raw ([`RawExtension`]) because their layout depends on
//! who sent them; [`ServerExtension`] and [`ClientExtension`] decode and encode the ones the
//! specification defines.

use std::borrow::Cow;
use std::fmt;

/// Length of the header every packet starts with: type (1 byte) and stream ID (4 bytes).
pub const HEADER_LEN: usize = 5;

/// Extension ID of UDP support (no payload either way).
pub const EXT_UDP: u8 = 0x01;
/// Extension ID of password authentication (server: required flag; client: credentials).
pub const EXT_PASSWORD_AUTH: u8 = 0x02;
/// Extension ID of public/private key authentication (server: challenge; client: signature).
pub const EXT_KEY_AUTH: u8 = 0x03;
/// Extension ID of the server's message of the day (server: UTF-8 text; client: empty).
pub const EXT_MOTD: u8 = 0x04;
/// Extension ID of stream open confirmation (no payload either way).
pub const EXT_STREAM_OPEN_CONFIRMATION: u8 = 0x05;

/// Length of the header of each extension entry in an INFO packet: ID (1) + length (4).
const EXTENSION_HEADER_LEN: usize = 5;

/// Why bytes are not a valid Wisp packet (or extension payload).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// The message is shorter than the 5-byte header.
    #[error("packet of {len} bytes is shorter than the {HEADER_LEN}-byte header")]
    Truncated {
        /// Length of the message.
        len: usize,
    },
    /// The type byte names no packet type of the specification.
    #[error("unknown packet type {0:#04x}")]
    UnknownType(u8),
    /// A payload is shorter than its packet type's fixed fields.
    #[error("{packet} payload of {got} bytes is shorter than {min}")]
    TooShort {
        /// The packet type.
        packet: PacketType,
        /// The smallest valid payload length.
        min: usize,
        /// The payload length received.
        got: usize,
    },
    /// A fixed-size payload has another length.
    #[error("{packet} payload of {got} bytes; it must be exactly {expected}")]
    WrongLength {
        /// The packet type.
        packet: PacketType,
        /// The only valid payload length.
        expected: usize,
        /// The payload length received.
        got: usize,
    },
    /// A CONNECT packet's stream type is neither TCP (0x01) nor UDP (0x02).
    #[error("unknown stream type {0:#04x}")]
    UnknownStreamType(u8),
    /// A string field is not UTF-8.
    #[error("{field} is not valid UTF-8")]
    InvalidUtf8 {
        /// Which field.
        field: &'static str,
    },
    /// An INFO packet's extension list ends inside an entry's header or payload.
    #[error("extension entry at offset {offset} of the list runs past its end")]
    ExtensionTruncated {
        /// Offset of the entry within the extension list.
        offset: usize,
    },
    /// A known extension's payload does not have the layout the specification gives it.
    #[error("extension {id:#04x}: {reason}")]
    ExtensionPayload {
        /// The extension ID.
        id: u8,
        /// What is wrong with the payload.
        reason: &'static str,
    },
}

/// Why a value cannot be put on the wire.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EmitError {
    /// A password-auth username is longer than its one-byte length field allows.
    #[error("username of {len} bytes is longer than 255")]
    UsernameTooLong {
        /// The username's length in bytes.
        len: usize,
    },
    /// An extension payload is longer than its four-byte length field allows.
    #[error("extension payload of {len} bytes does not fit a u32 length")]
    ExtensionTooLarge {
        /// The payload's length in bytes.
        len: usize,
    },
}

/// The five packet types of Wisp v2 (v1 has the first four).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PacketType {
    /// 0x01: the client opens a stream.
    Connect,
    /// 0x02: stream payload, either direction.
    Data,
    /// 0x03: the server's buffer credit for a stream (stream 0: initial credit of every stream).
    Continue,
    /// 0x04: either side closes a stream (stream 0: the whole connection).
    Close,
    /// 0x05 (v2): version and extensions, exchanged once at the start.
    Info,
}

impl PacketType {
    /// The type byte.
    pub fn to_u8(self) -> u8 {
        match self {
            Self::Connect => 0x01,
            Self::Data => 0x02,
            Self::Continue => 0x03,
            Self::Close => 0x04,
            Self::Info => 0x05,
        }
    }
}

impl TryFrom<u8> for PacketType {
    type Error = ParseError;

    fn try_from(byte: u8) -> Result<Self, ParseError> {
        Ok(match byte {
            0x01 => Self::Connect,
            0x02 => Self::Data,
            0x03 => Self::Continue,
            0x04 => Self::Close,
            0x05 => Self::Info,
            other => return Err(ParseError::UnknownType(other)),
        })
    }
}

impl fmt::Display for PacketType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Connect => "CONNECT",
            Self::Data => "DATA",
            Self::Continue => "CONTINUE",
            Self::Close => "CLOSE",
            Self::Info => "INFO",
        })
    }
}

/// Whether a stream carries a TCP byte stream or UDP datagrams.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StreamType {
    /// 0x01: a TCP connection; flow-controlled by CONTINUE credit.
    Tcp,
    /// 0x02: UDP datagrams, one per DATA packet; not flow-controlled.
    Udp,
}

impl StreamType {
    /// The stream-type byte of a CONNECT packet.
    pub fn to_u8(self) -> u8 {
        match self {
            Self::Tcp => 0x01,
            Self::Udp => 0x02,
        }
    }
}

impl TryFrom<u8> for StreamType {
    type Error = ParseError;

    fn try_from(byte: u8) -> Result<Self, ParseError> {
        match byte {
            0x01 => Ok(Self::Tcp),
            0x02 => Ok(Self::Udp),
            other => Err(ParseError::UnknownStreamType(other)),
        }
    }
}

/// The reason byte of a CLOSE packet, named as in the specification; other values are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CloseReason {
    /// 0x01: reason unspecified or unknown.
    Unspecified,
    /// 0x02: voluntary closure (one side resetting or finishing the connection).
    Voluntary,
    /// 0x03: unexpected closure due to a network error.
    NetworkError,
    /// 0x04 (v2): incompatible extensions; only during the handshake.
    IncompatibleExtensions,
    /// 0x41 (server): invalid stream information (reserved address, invalid port).
    InvalidInfo,
    /// 0x42 (server): the destination host is unreachable (e.g. does not resolve).
    UnreachableHost,
    /// 0x43 (server): stream creation timed out; the destination did not respond.
    ConnectTimeout,
    /// 0x44 (server): the destination refused the connection.
    ConnectionRefused,
    /// 0x47 (server): TCP data transfer timed out.
    TransferTimeout,
    /// 0x48 (server): the destination is intentionally blocked by the server.
    HostBlocked,
    /// 0x49 (server): the connection is throttled by the server.
    Throttled,
    /// 0x81 (client): the client hit an unexpected error and cannot receive more data.
    ClientError,
    /// 0xc0 (v2 auth): invalid username or password.
    AuthBadPassword,
    /// 0xc1 (v2 auth): invalid signature.
    AuthBadSignature,
    /// 0xc2 (v2 auth): authentication required but no credentials were provided.
    AuthMissingCredentials,
    /// Any value the specification does not name.
    Unknown(u8),
}

impl fmt::Display for CloseReason {
    /// A readable form for errors and logs, with the byte: "connection refused (0x44)".
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = match self {
            Self::Unspecified => "closed (unspecified)",
            Self::Voluntary => "closed",
            Self::NetworkError => "network error",
            Self::IncompatibleExtensions => "incompatible extensions",
            Self::InvalidInfo => "invalid destination",
            Self::UnreachableHost => "host unreachable",
            Self::ConnectTimeout => "connection timed out",
            Self::ConnectionRefused => "connection refused",
            Self::TransferTimeout => "transfer timed out",
            Self::HostBlocked => "destination blocked by the relay",
            Self::Throttled => "throttled by the relay",
            Self::ClientError => "client error",
            Self::AuthBadPassword => "wrong username or password",
            Self::AuthBadSignature => "bad signature",
            Self::AuthMissingCredentials => "credentials required",
            Self::Unknown(_) => "closed",
        };
        write!(f, "{text} (0x{:02x})", u8::from(*self))
    }
}

impl From<u8> for CloseReason {
    fn from(byte: u8) -> Self {
        match byte {
            0x01 => Self::Unspecified,
            0x02 => Self::Voluntary,
            0x03 => Self::NetworkError,
            0x04 => Self::IncompatibleExtensions,
            0x41 => Self::InvalidInfo,
            0x42 => Self::UnreachableHost,
            0x43 => Self::ConnectTimeout,
            0x44 => Self::ConnectionRefused,
            0x47 => Self::TransferTimeout,
            0x48 => Self::HostBlocked,
            0x49 => Self::Throttled,
            0x81 => Self::ClientError,
            0xc0 => Self::AuthBadPassword,
            0xc1 => Self::AuthBadSignature,
            0xc2 => Self::AuthMissingCredentials,
            other => Self::Unknown(other),
        }
    }
}

impl From<CloseReason> for u8 {
    fn from(reason: CloseReason) -> u8 {
        match reason {
            CloseReason::Unspecified => 0x01,
            CloseReason::Voluntary => 0x02,
            CloseReason::NetworkError => 0x03,
            CloseReason::IncompatibleExtensions => 0x04,
            CloseReason::InvalidInfo => 0x41,
            CloseReason::UnreachableHost => 0x42,
            CloseReason::ConnectTimeout => 0x43,
            CloseReason::ConnectionRefused => 0x44,
            CloseReason::TransferTimeout => 0x47,
            CloseReason::HostBlocked => 0x48,
            CloseReason::Throttled => 0x49,
            CloseReason::ClientError => 0x81,
            CloseReason::AuthBadPassword => 0xc0,
            CloseReason::AuthBadSignature => 0xc1,
            CloseReason::AuthMissingCredentials => 0xc2,
            CloseReason::Unknown(other) => other,
        }
    }
}

/// One packet: the stream it belongs to and its typed payload, borrowing from the message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packet<'a> {
    /// The stream ID; 0 is the connection itself (handshake CONTINUE/INFO, connection CLOSE).
    pub stream_id: u32,
    /// The payload, by packet type.
    pub payload: Payload<'a>,
}

/// The payload of a packet, one variant per packet type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Payload<'a> {
    /// CONNECT: `[stream type: u8][port: u16 LE][hostname: UTF-8, rest of the packet]`.
    Connect {
        /// TCP or UDP.
        stream_type: StreamType,
        /// Destination port.
        port: u16,
        /// Destination hostname (or IP literal), not NUL-terminated.
        host: &'a str,
    },
    /// DATA: the stream's bytes (TCP) or one datagram (UDP), the rest of the packet.
    Data(&'a [u8]),
    /// CONTINUE: `[buffer remaining: u32 LE]`, a number of DATA packets (not bytes).
    Continue {
        /// How many more DATA packets the server can buffer for this stream.
        buffer_remaining: u32,
    },
    /// CLOSE: `[reason: u8]`.
    Close(CloseReason),
    /// INFO (v2): `[major: u8][minor: u8][extension entries]`.
    Info(Info<'a>),
}

impl Payload<'_> {
    /// The packet type this payload belongs to.
    pub fn packet_type(&self) -> PacketType {
        match self {
            Self::Connect { .. } => PacketType::Connect,
            Self::Data(_) => PacketType::Data,
            Self::Continue { .. } => PacketType::Continue,
            Self::Close(_) => PacketType::Close,
            Self::Info(_) => PacketType::Info,
        }
    }
}

/// The body of an INFO packet: the sender's protocol version and its extensions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Info<'a> {
    /// Major protocol version (2 for Wisp v2).
    pub major: u8,
    /// Minor protocol version.
    pub minor: u8,
    /// The extension entries in the order they appear.
    pub extensions: Vec<RawExtension<'a>>,
}

/// One extension entry of an INFO packet, its payload not yet interpreted.
///
/// `[id: u8][payload length: u32 LE][payload]`. The payload is at most `u32::MAX` bytes, which
/// [`RawExtension::new`] checks, so emitting never fails.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawExtension<'a> {
    id: u8,
    payload: Cow<'a, [u8]>,
}

impl<'a> RawExtension<'a> {
    /// An entry with this ID and payload; fails when the payload does not fit a u32 length.
    pub fn new(id: u8, payload: impl Into<Cow<'a, [u8]>>) -> Result<Self, EmitError> {
        let payload = payload.into();
        if u32::try_from(payload.len()).is_err() {
            return Err(EmitError::ExtensionTooLarge { len: payload.len() });
        }
        Ok(Self { id, payload })
    }

    /// An entry with no payload (UDP, stream open confirmation, a client's MOTD entry).
    pub fn empty(id: u8) -> Self {
        Self {
            id,
            payload: Cow::Borrowed(&[]),
        }
    }

    /// The extension ID.
    pub fn id(&self) -> u8 {
        self.id
    }

    /// The extension's payload bytes.
    pub fn payload(&self) -> &[u8] {
        &self.payload
    }

    /// The same entry, its payload borrowed from this one.
    pub fn borrowed(&self) -> RawExtension<'_> {
        RawExtension {
            id: self.id,
            payload: Cow::Borrowed(&self.payload),
        }
    }

    fn wire_len(&self) -> usize {
        EXTENSION_HEADER_LEN + self.payload.len()
    }
}

/// An extension entry as the server sends it, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerExtension<'a> {
    /// 0x01: the server supports UDP streams.
    Udp,
    /// 0x02: the server allows password authentication; `[required: u8]`.
    PasswordAuth {
        /// Whether the client must authenticate (nonzero byte).
        required: bool,
    },
    /// 0x03: the server allows key authentication; `[required: u8][algorithms: u8][challenge]`.
    KeyAuth {
        /// Whether the client must authenticate (nonzero byte).
        required: bool,
        /// Bit mask of signature algorithms (0b0000_0001: Ed25519).
        algorithms: u8,
        /// Random bytes for the client to sign.
        challenge: &'a [u8],
    },
    /// 0x04: the server's message of the day, UTF-8.
    Motd(&'a str),
    /// 0x05: the server confirms each opened stream with a CONTINUE packet.
    StreamOpenConfirmation,
    /// An extension this implementation does not know, kept raw.
    Unknown(RawExtension<'a>),
}

impl<'a> ServerExtension<'a> {
    /// Decodes a server's entry by its ID, borrowing from it.
    pub fn parse(raw: &'a RawExtension<'_>) -> Result<Self, ParseError> {
        let bad = |reason| ParseError::ExtensionPayload { id: raw.id, reason };
        let payload: &'a [u8] = &raw.payload;
        Ok(match raw.id {
            EXT_UDP => {
                expect_empty(payload).map_err(bad)?;
                Self::Udp
            }
            EXT_PASSWORD_AUTH => match payload {
                [required] => Self::PasswordAuth {
                    required: *required != 0,
                },
                _ => return Err(bad("the server's payload must be exactly 1 byte")),
            },
            EXT_KEY_AUTH => match payload {
                [required, algorithms, challenge @ ..] => Self::KeyAuth {
                    required: *required != 0,
                    algorithms: *algorithms,
                    challenge,
                },
                _ => return Err(bad("the server's payload must be at least 2 bytes")),
            },
            EXT_MOTD => Self::Motd(
                std::str::from_utf8(payload)
                    .map_err(|_| ParseError::InvalidUtf8 { field: "MOTD" })?,
            ),
            EXT_STREAM_OPEN_CONFIRMATION => {
                expect_empty(payload).map_err(bad)?;
                Self::StreamOpenConfirmation
            }
            _ => Self::Unknown(raw.borrowed()),
        })
    }

    /// Encodes the entry.
    pub fn to_raw(&self) -> Result<RawExtension<'a>, EmitError> {
        Ok(match self {
            Self::Udp => RawExtension::empty(EXT_UDP),
            Self::PasswordAuth { required } => {
                RawExtension::new(EXT_PASSWORD_AUTH, vec![u8::from(*required)])?
            }
            Self::KeyAuth {
                required,
                algorithms,
                challenge,
            } => {
                let mut payload = vec![u8::from(*required), *algorithms];
                payload.extend_from_slice(challenge);
                RawExtension::new(EXT_KEY_AUTH, payload)?
            }
            Self::Motd(text) => RawExtension::new(EXT_MOTD, text.as_bytes())?,
            Self::StreamOpenConfirmation => RawExtension::empty(EXT_STREAM_OPEN_CONFIRMATION),
            Self::Unknown(raw) => raw.clone(),
        })
    }
}

/// An extension entry as the client sends it, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientExtension<'a> {
    /// 0x01: the client supports UDP streams.
    Udp,
    /// 0x02: credentials; `[username length: u8][username][password: rest of the payload]`.
    PasswordAuth {
        /// The username, at most 255 bytes of UTF-8.
        username: &'a str,
        /// The password, UTF-8.
        password: &'a str,
    },
    /// 0x03: `[selected algorithm: u8][SHA-256 of the public key: 32 bytes][signature]`.
    KeyAuth {
        /// Bit mask of the algorithm the client chose.
        algorithm: u8,
        /// SHA-256 hash of the public key used.
        public_key_hash: [u8; 32],
        /// Signature of the server's challenge.
        signature: &'a [u8],
    },
    /// 0x04: the client accepts a MOTD; the specification gives the client's entry no payload.
    Motd,
    /// 0x05: the client understands stream open confirmations (no payload).
    StreamOpenConfirmation,
    /// An extension this implementation does not know, kept raw.
    Unknown(RawExtension<'a>),
}

impl<'a> ClientExtension<'a> {
    /// Decodes a client's entry by its ID, borrowing from it.
    pub fn parse(raw: &'a RawExtension<'_>) -> Result<Self, ParseError> {
        let bad = |reason| ParseError::ExtensionPayload { id: raw.id, reason };
        let payload: &'a [u8] = &raw.payload;
        Ok(match raw.id {
            EXT_UDP => {
                expect_empty(payload).map_err(bad)?;
                Self::Udp
            }
            EXT_PASSWORD_AUTH => {
                let Some((&len, rest)) = payload.split_first() else {
                    return Err(bad("the client's payload has no username length"));
                };
                if rest.len() < usize::from(len) {
                    return Err(bad("the username runs past the payload"));
                }
                let (username, password) = rest.split_at(usize::from(len));
                Self::PasswordAuth {
                    username: std::str::from_utf8(username)
                        .map_err(|_| ParseError::InvalidUtf8 { field: "username" })?,
                    password: std::str::from_utf8(password)
                        .map_err(|_| ParseError::InvalidUtf8 { field: "password" })?,
                }
            }
            EXT_KEY_AUTH => {
                if payload.len() < 33 {
                    return Err(bad("the client's payload must be at least 33 bytes"));
                }
                let mut public_key_hash = [0; 32];
                public_key_hash.copy_from_slice(&payload[1..33]);
                Self::KeyAuth {
                    algorithm: payload[0],
                    public_key_hash,
                    signature: &payload[33..],
                }
            }
            EXT_MOTD => {
                expect_empty(payload).map_err(bad)?;
                Self::Motd
            }
            EXT_STREAM_OPEN_CONFIRMATION => {
                expect_empty(payload).map_err(bad)?;
                Self::StreamOpenConfirmation
            }
            _ => Self::Unknown(raw.borrowed()),
        })
    }

    /// Encodes the entry; fails when a username is longer than 255 bytes.
    pub fn to_raw(&self) -> Result<RawExtension<'a>, EmitError> {
        Ok(match self {
            Self::Udp => RawExtension::empty(EXT_UDP),
            Self::PasswordAuth { username, password } => {
                let len = u8::try_from(username.len()).map_err(|_| EmitError::UsernameTooLong {
                    len: username.len(),
                })?;
                let mut payload = Vec::with_capacity(1 + username.len() + password.len());
                payload.push(len);
                payload.extend_from_slice(username.as_bytes());
                payload.extend_from_slice(password.as_bytes());
                RawExtension::new(EXT_PASSWORD_AUTH, payload)?
            }
            Self::KeyAuth {
                algorithm,
                public_key_hash,
                signature,
            } => {
                let mut payload = Vec::with_capacity(33 + signature.len());
                payload.push(*algorithm);
                payload.extend_from_slice(public_key_hash);
                payload.extend_from_slice(signature);
                RawExtension::new(EXT_KEY_AUTH, payload)?
            }
            Self::Motd => RawExtension::empty(EXT_MOTD),
            Self::StreamOpenConfirmation => RawExtension::empty(EXT_STREAM_OPEN_CONFIRMATION),
            Self::Unknown(raw) => raw.clone(),
        })
    }
}

fn expect_empty(payload: &[u8]) -> Result<(), &'static str> {
    if payload.is_empty() {
        Ok(())
    } else {
        Err("this extension has no payload")
    }
}

impl<'a> Packet<'a> {
    /// Parses one WebSocket message as a packet; strict about fixed-size payloads.
    pub fn parse(message: &'a [u8]) -> Result<Self, ParseError> {
        let (stream_id, packet_type, payload) = parse_header(message)?;
        let too_short = |min: usize| ParseError::TooShort {
            packet: packet_type,
            min,
            got: payload.len(),
        };
        let exactly = |expected: usize| -> Result<(), ParseError> {
            if payload.len() == expected {
                Ok(())
            } else {
                Err(ParseError::WrongLength {
                    packet: packet_type,
                    expected,
                    got: payload.len(),
                })
            }
        };
        let payload = match packet_type {
            PacketType::Connect => {
                let [kind, lo, hi, host @ ..] = payload else {
                    return Err(too_short(3));
                };
                Payload::Connect {
                    stream_type: StreamType::try_from(*kind)?,
                    port: u16::from_le_bytes([*lo, *hi]),
                    host: std::str::from_utf8(host)
                        .map_err(|_| ParseError::InvalidUtf8 { field: "hostname" })?,
                }
            }
            PacketType::Data => Payload::Data(payload),
            PacketType::Continue => {
                exactly(4)?;
                Payload::Continue {
                    buffer_remaining: u32::from_le_bytes([
                        payload[0], payload[1], payload[2], payload[3],
                    ]),
                }
            }
            PacketType::Close => {
                exactly(1)?;
                Payload::Close(CloseReason::from(payload[0]))
            }
            PacketType::Info => {
                let [major, minor, list @ ..] = payload else {
                    return Err(too_short(2));
                };
                Payload::Info(Info {
                    major: *major,
                    minor: *minor,
                    extensions: parse_extensions(list)?,
                })
            }
        };
        Ok(Self { stream_id, payload })
    }

    /// The number of bytes [`Packet::emit`] appends.
    pub fn buffer_len(&self) -> usize {
        HEADER_LEN
            + match &self.payload {
                Payload::Connect { host, .. } => 3 + host.len(),
                Payload::Data(bytes) => bytes.len(),
                Payload::Continue { .. } => 4,
                Payload::Close(_) => 1,
                Payload::Info(info) => {
                    2 + info
                        .extensions
                        .iter()
                        .map(RawExtension::wire_len)
                        .sum::<usize>()
                }
            }
    }

    /// Appends the packet's bytes to `out`.
    pub fn emit(&self, out: &mut Vec<u8>) {
        out.reserve(self.buffer_len());
        emit_header(out, self.payload.packet_type(), self.stream_id);
        match &self.payload {
            Payload::Connect {
                stream_type,
                port,
                host,
            } => {
                out.push(stream_type.to_u8());
                out.extend_from_slice(&port.to_le_bytes());
                out.extend_from_slice(host.as_bytes());
            }
            Payload::Data(bytes) => out.extend_from_slice(bytes),
            Payload::Continue { buffer_remaining } => {
                out.extend_from_slice(&buffer_remaining.to_le_bytes())
            }
            Payload::Close(reason) => out.push(u8::from(*reason)),
            Payload::Info(info) => {
                out.push(info.major);
                out.push(info.minor);
                for ext in &info.extensions {
                    out.push(ext.id);
                    // RawExtension::new and parse_extensions keep payloads within u32.
                    let len = u32::try_from(ext.payload.len()).unwrap_or(u32::MAX);
                    out.extend_from_slice(&len.to_le_bytes());
                    out.extend_from_slice(&ext.payload);
                }
            }
        }
    }

    /// The packet's bytes in a new `Vec`: one WebSocket binary message.
    pub fn to_vec(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.buffer_len());
        self.emit(&mut out);
        out
    }
}

/// Reads the header: stream ID, packet type and the payload that follows.
pub fn parse_header(message: &[u8]) -> Result<(u32, PacketType, &[u8]), ParseError> {
    let [kind, a, b, c, d, payload @ ..] = message else {
        return Err(ParseError::Truncated { len: message.len() });
    };
    let packet_type = PacketType::try_from(*kind)?;
    Ok((u32::from_le_bytes([*a, *b, *c, *d]), packet_type, payload))
}

/// Appends a DATA packet for `stream_id` carrying `payload`, without building a [`Packet`].
pub fn emit_data(out: &mut Vec<u8>, stream_id: u32, payload: &[u8]) {
    out.reserve(HEADER_LEN + payload.len());
    emit_header(out, PacketType::Data, stream_id);
    out.extend_from_slice(payload);
}

fn emit_header(out: &mut Vec<u8>, packet_type: PacketType, stream_id: u32) {
    out.push(packet_type.to_u8());
    out.extend_from_slice(&stream_id.to_le_bytes());
}

fn parse_extensions(mut list: &[u8]) -> Result<Vec<RawExtension<'_>>, ParseError> {
    let total = list.len();
    let mut extensions = Vec::new();
    while !list.is_empty() {
        let offset = total - list.len();
        let [id, a, b, c, d, rest @ ..] = list else {
            return Err(ParseError::ExtensionTruncated { offset });
        };
        let len = u32::from_le_bytes([*a, *b, *c, *d]);
        let len = usize::try_from(len)
            .ok()
            .filter(|len| *len <= rest.len())
            .ok_or(ParseError::ExtensionTruncated { offset })?;
        let (payload, next) = rest.split_at(len);
        extensions.push(RawExtension {
            id: *id,
            payload: Cow::Borrowed(payload),
        });
        list = next;
    }
    Ok(extensions)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Parses `bytes`, compares with `packet`, and emits `packet` back to exactly `bytes`.
    fn both_ways(bytes: &[u8], packet: Packet<'_>) {
        assert_eq!(Packet::parse(bytes).as_ref(), Ok(&packet), "parse");
        assert_eq!(packet.to_vec(), bytes, "emit");
        assert_eq!(packet.buffer_len(), bytes.len(), "buffer_len");
    }

    #[test]
    fn connect_tcp() {
        // Type 1, stream 1, TCP, port 80 = 0x0050 LE, "example.com".
        let mut bytes = vec![0x01, 0x01, 0x00, 0x00, 0x00, 0x01, 0x50, 0x00];
        bytes.extend_from_slice(b"example.com");
        both_ways(
            &bytes,
            Packet {
                stream_id: 1,
                payload: Payload::Connect {
                    stream_type: StreamType::Tcp,
                    port: 80,
                    host: "example.com",
                },
            },
        );
    }

    #[test]
    fn connect_udp_multibyte_fields() {
        // Stream 0x12345678, UDP, port 53 = 0x0035, "1.1.1.1".
        let mut bytes = vec![0x01, 0x78, 0x56, 0x34, 0x12, 0x02, 0x35, 0x00];
        bytes.extend_from_slice(b"1.1.1.1");
        both_ways(
            &bytes,
            Packet {
                stream_id: 0x1234_5678,
                payload: Payload::Connect {
                    stream_type: StreamType::Udp,
                    port: 53,
                    host: "1.1.1.1",
                },
            },
        );
        // Port 0xbb01 (47873) checks the byte order of the port on its own.
        both_ways(
            &[0x01, 0x02, 0x00, 0x00, 0x00, 0x01, 0x01, 0xbb, b'h'],
            Packet {
                stream_id: 2,
                payload: Payload::Connect {
                    stream_type: StreamType::Tcp,
                    port: 0xbb01,
                    host: "h",
                },
            },
        );
    }

    #[test]
    fn connect_errors() {
        assert_eq!(
            Packet::parse(&[0x01, 1, 0, 0, 0, 0x01, 0x50]),
            Err(ParseError::TooShort {
                packet: PacketType::Connect,
                min: 3,
                got: 2
            })
        );
        assert_eq!(
            Packet::parse(&[0x01, 1, 0, 0, 0, 0x03, 0x50, 0x00, b'a']),
            Err(ParseError::UnknownStreamType(3))
        );
        assert_eq!(
            Packet::parse(&[0x01, 1, 0, 0, 0, 0x01, 0x50, 0x00, 0xff]),
            Err(ParseError::InvalidUtf8 { field: "hostname" })
        );
    }

    #[test]
    fn data() {
        both_ways(
            &[0x02, 0x07, 0x00, 0x00, 0x00, b'h', b'i', 0x00, 0xff],
            Packet {
                stream_id: 7,
                payload: Payload::Data(b"hi\x00\xff"),
            },
        );
        both_ways(
            &[0x02, 0x07, 0x00, 0x00, 0x00],
            Packet {
                stream_id: 7,
                payload: Payload::Data(b""),
            },
        );
        let mut out = Vec::new();
        emit_data(&mut out, 7, b"hi");
        assert_eq!(out, [0x02, 0x07, 0x00, 0x00, 0x00, b'h', b'i']);
    }

    #[test]
    fn continue_initial_and_per_stream() {
        // The v1 handshake packet: CONTINUE on stream 0 with 128 (wisp-python and wisp-js).
        both_ways(
            &[0x03, 0x00, 0x00, 0x00, 0x00, 0x80, 0x00, 0x00, 0x00],
            Packet {
                stream_id: 0,
                payload: Payload::Continue {
                    buffer_remaining: 128,
                },
            },
        );
        both_ways(
            &[0x03, 0x05, 0x00, 0x00, 0x00, 0x04, 0x03, 0x02, 0x01],
            Packet {
                stream_id: 5,
                payload: Payload::Continue {
                    buffer_remaining: 0x0102_0304,
                },
            },
        );
        for bad in [
            &[0x03, 0, 0, 0, 0, 1, 0, 0][..],
            &[0x03, 0, 0, 0, 0, 1, 0, 0, 0, 0],
        ] {
            assert_eq!(
                Packet::parse(bad),
                Err(ParseError::WrongLength {
                    packet: PacketType::Continue,
                    expected: 4,
                    got: bad.len() - HEADER_LEN
                })
            );
        }
    }

    #[test]
    fn close_every_named_reason() {
        let named = [
            (0x01, CloseReason::Unspecified),
            (0x02, CloseReason::Voluntary),
            (0x03, CloseReason::NetworkError),
            (0x04, CloseReason::IncompatibleExtensions),
            (0x41, CloseReason::InvalidInfo),
            (0x42, CloseReason::UnreachableHost),
            (0x43, CloseReason::ConnectTimeout),
            (0x44, CloseReason::ConnectionRefused),
            (0x47, CloseReason::TransferTimeout),
            (0x48, CloseReason::HostBlocked),
            (0x49, CloseReason::Throttled),
            (0x81, CloseReason::ClientError),
            (0xc0, CloseReason::AuthBadPassword),
            (0xc1, CloseReason::AuthBadSignature),
            (0xc2, CloseReason::AuthMissingCredentials),
            (0x45, CloseReason::Unknown(0x45)),
            (0x00, CloseReason::Unknown(0x00)),
        ];
        for (byte, reason) in named {
            both_ways(
                &[0x04, 0x09, 0x00, 0x00, 0x00, byte],
                Packet {
                    stream_id: 9,
                    payload: Payload::Close(reason),
                },
            );
        }
        // Every byte maps to a reason and back to itself.
        for byte in 0..=u8::MAX {
            assert_eq!(u8::from(CloseReason::from(byte)), byte);
        }
        assert_eq!(
            Packet::parse(&[0x04, 9, 0, 0, 0]),
            Err(ParseError::WrongLength {
                packet: PacketType::Close,
                expected: 1,
                got: 0
            })
        );
    }

    #[test]
    fn info_with_extensions() {
        // A server's INFO: v2.0, UDP, password auth required, MOTD "hi".
        let bytes = [
            0x05, 0x00, 0x00, 0x00, 0x00, // INFO, stream 0
            0x02, 0x00, // version 2.0
            0x01, 0x00, 0x00, 0x00, 0x00, // UDP, no payload
            0x02, 0x01, 0x00, 0x00, 0x00, 0x01, // password auth, required
            0x04, 0x02, 0x00, 0x00, 0x00, b'h', b'i', // MOTD
        ];
        let packet = Packet {
            stream_id: 0,
            payload: Payload::Info(Info {
                major: 2,
                minor: 0,
                extensions: vec![
                    RawExtension::empty(EXT_UDP),
                    RawExtension::new(EXT_PASSWORD_AUTH, &[1u8][..]).unwrap(),
                    RawExtension::new(EXT_MOTD, &b"hi"[..]).unwrap(),
                ],
            }),
        };
        both_ways(&bytes, packet.clone());
        let Payload::Info(info) = Packet::parse(&bytes).unwrap().payload else {
            panic!("not INFO");
        };
        let typed: Vec<_> = info
            .extensions
            .iter()
            .map(|e| ServerExtension::parse(e).unwrap())
            .collect();
        assert_eq!(
            typed,
            [
                ServerExtension::Udp,
                ServerExtension::PasswordAuth { required: true },
                ServerExtension::Motd("hi"),
            ]
        );
        // And back: the typed entries encode to the same raw ones.
        let raw: Vec<_> = typed.iter().map(|e| e.to_raw().unwrap()).collect();
        assert_eq!(raw, info.extensions);
    }

    #[test]
    fn info_without_extensions_and_unknown_kept() {
        both_ways(
            &[0x05, 0, 0, 0, 0, 0x02, 0x01],
            Packet {
                stream_id: 0,
                payload: Payload::Info(Info {
                    major: 2,
                    minor: 1,
                    extensions: vec![],
                }),
            },
        );
        let bytes = [0x05, 0, 0, 0, 0, 2, 0, 0xee, 0x03, 0, 0, 0, 1, 2, 3];
        let packet = Packet::parse(&bytes).unwrap();
        let Payload::Info(info) = &packet.payload else {
            panic!("not INFO");
        };
        assert_eq!(info.extensions[0].id(), 0xee);
        assert_eq!(info.extensions[0].payload(), [1, 2, 3]);
        assert_eq!(
            ServerExtension::parse(&info.extensions[0]),
            Ok(ServerExtension::Unknown(info.extensions[0].clone()))
        );
        assert_eq!(packet.to_vec(), bytes);
    }

    #[test]
    fn info_errors() {
        assert_eq!(
            Packet::parse(&[0x05, 0, 0, 0, 0, 2]),
            Err(ParseError::TooShort {
                packet: PacketType::Info,
                min: 2,
                got: 1
            })
        );
        // Entry header cut short, then a declared length past the end.
        assert_eq!(
            Packet::parse(&[0x05, 0, 0, 0, 0, 2, 0, 0x01, 0, 0, 0, 0, 0x04, 1, 0]),
            Err(ParseError::ExtensionTruncated { offset: 5 })
        );
        assert_eq!(
            Packet::parse(&[0x05, 0, 0, 0, 0, 2, 0, 0x04, 3, 0, 0, 0, b'a', b'b']),
            Err(ParseError::ExtensionTruncated { offset: 0 })
        );
        assert_eq!(
            Packet::parse(&[0x05, 0, 0, 0, 0, 2, 0, 0x04, 0xff, 0xff, 0xff, 0xff]),
            Err(ParseError::ExtensionTruncated { offset: 0 })
        );
    }

    #[test]
    fn server_extension_payloads() {
        let raw = |id, p: &'static [u8]| RawExtension::new(id, p).unwrap();
        assert_eq!(
            ServerExtension::parse(&raw(EXT_PASSWORD_AUTH, &[0])),
            Ok(ServerExtension::PasswordAuth { required: false })
        );
        assert!(matches!(
            ServerExtension::parse(&raw(EXT_PASSWORD_AUTH, &[])),
            Err(ParseError::ExtensionPayload { id: 0x02, .. })
        ));
        assert!(matches!(
            ServerExtension::parse(&raw(EXT_UDP, &[0])),
            Err(ParseError::ExtensionPayload { id: 0x01, .. })
        ));
        let key_raw = raw(EXT_KEY_AUTH, &[1, 0b1, 9, 8, 7]);
        let key = ServerExtension::parse(&key_raw).unwrap();
        assert_eq!(
            key,
            ServerExtension::KeyAuth {
                required: true,
                algorithms: 1,
                challenge: &[9, 8, 7]
            }
        );
        assert_eq!(key.to_raw().unwrap().payload(), [1, 1, 9, 8, 7]);
        assert!(ServerExtension::parse(&raw(EXT_KEY_AUTH, &[1])).is_err());
        assert_eq!(
            ServerExtension::parse(&raw(EXT_STREAM_OPEN_CONFIRMATION, &[])),
            Ok(ServerExtension::StreamOpenConfirmation)
        );
        assert_eq!(
            ServerExtension::parse(&raw(EXT_MOTD, &[0xc3])),
            Err(ParseError::InvalidUtf8 { field: "MOTD" })
        );
    }

    #[test]
    fn client_password_layout_is_draft_6() {
        // [username length: u8][username][password], no password length field.
        let ext = ClientExtension::PasswordAuth {
            username: "user",
            password: "pässword",
        };
        let raw = ext.to_raw().unwrap();
        assert_eq!(raw.id(), EXT_PASSWORD_AUTH);
        let mut expected = vec![4u8];
        expected.extend_from_slice(b"user");
        expected.extend_from_slice("pässword".as_bytes());
        assert_eq!(raw.payload(), expected);
        let reparsed = RawExtension::new(EXT_PASSWORD_AUTH, expected.as_slice()).unwrap();
        assert_eq!(ClientExtension::parse(&reparsed), Ok(ext));

        let long = "u".repeat(256);
        assert_eq!(
            ClientExtension::PasswordAuth {
                username: &long,
                password: ""
            }
            .to_raw(),
            Err(EmitError::UsernameTooLong { len: 256 })
        );
        let short = RawExtension::new(EXT_PASSWORD_AUTH, &[5u8, b'a'][..]).unwrap();
        assert!(ClientExtension::parse(&short).is_err());
        let empty = RawExtension::empty(EXT_PASSWORD_AUTH);
        assert!(ClientExtension::parse(&empty).is_err());
    }

    #[test]
    fn client_key_auth_and_empty_entries() {
        let mut payload = vec![0b1];
        payload.extend(0..32u8);
        payload.extend_from_slice(b"sig");
        let raw = RawExtension::new(EXT_KEY_AUTH, payload.as_slice()).unwrap();
        let parsed = ClientExtension::parse(&raw).unwrap();
        let mut hash = [0u8; 32];
        for (i, b) in hash.iter_mut().enumerate() {
            *b = i as u8;
        }
        assert_eq!(
            parsed,
            ClientExtension::KeyAuth {
                algorithm: 1,
                public_key_hash: hash,
                signature: b"sig"
            }
        );
        assert_eq!(parsed.to_raw().unwrap(), raw);
        let short = RawExtension::new(EXT_KEY_AUTH, &payload[..32]).unwrap();
        assert!(ClientExtension::parse(&short).is_err());
        for (id, ext) in [
            (EXT_UDP, ClientExtension::Udp),
            (EXT_MOTD, ClientExtension::Motd),
            (
                EXT_STREAM_OPEN_CONFIRMATION,
                ClientExtension::StreamOpenConfirmation,
            ),
        ] {
            assert_eq!(
                ClientExtension::parse(&RawExtension::empty(id)),
                Ok(ext.clone())
            );
            assert_eq!(ext.to_raw().unwrap(), RawExtension::empty(id));
        }
    }

    #[test]
    fn header_errors() {
        for len in 0..HEADER_LEN {
            let bytes = vec![0x02; len];
            assert_eq!(Packet::parse(&bytes), Err(ParseError::Truncated { len }));
        }
        for kind in [0x00, 0x06, 0xff] {
            assert_eq!(
                Packet::parse(&[kind, 1, 0, 0, 0, 0]),
                Err(ParseError::UnknownType(kind))
            );
        }
    }
}
