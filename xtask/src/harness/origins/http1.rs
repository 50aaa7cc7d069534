//! The one HTTP/1.1 layer under the origins ([`Origin`], [`FaultOrigin`], [`NodeOrigin`]): an
//! accept loop giving every connection its own thread, request heads parsed by `httparse`,
//! request bodies framed by Content-Length or decoded from `Transfer-Encoding: chunked`, and
//! the reason phrases of status codes. What each origin answers, and how it frames the answer,
//! stays with the origin.
//!
//! [`Origin`]: super::Origin
//! [`FaultOrigin`]: super::FaultOrigin
//! [`NodeOrigin`]: super::NodeOrigin

use std::io::{self, BufRead, Read};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use anyhow::Result;

/// Pending connections the kernel queues for accept.
const LISTEN_BACKLOG: i32 = 4096;
/// Headers a request may carry.
const MAX_HEADERS: usize = 128;

/// A listener on 127.0.0.1 handing every connection to its own thread; stops accepting when
/// dropped (open connections end with their clients).
pub struct Listener {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Listener {
    /// Listens on a free port of 127.0.0.1 and runs `serve` on a new thread for every
    /// connection.
    pub fn start<F>(serve: F) -> Result<Self>
    where
        F: Fn(TcpStream) + Send + Sync + 'static,
    {
        Self::start_on(IpAddr::V4(Ipv4Addr::LOCALHOST), serve)
    }

    /// Like [`Listener::start`], on a free port of `ip` (an address of this host).
    pub fn start_on<F>(ip: IpAddr, serve: F) -> Result<Self>
    where
        F: Fn(TcpStream) + Send + Sync + 'static,
    {
        let listener = TcpListener::bind((ip, 0))?;
        // std listens with a backlog of 128: a burst of more connections than that loses SYNs
        // and the clients retry after 1, 3, 7 s... Listening again raises it.
        // SAFETY: listen(2) on a socket this function owns.
        if unsafe { libc::listen(listener.as_raw_fd(), LISTEN_BACKLOG) } != 0 {
            return Err(io::Error::last_os_error().into());
        }
        let addr = listener.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let serve = Arc::new(serve);
        let thread = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                for stream in listener.incoming() {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let Ok(stream) = stream else { continue };
                    let serve = serve.clone();
                    std::thread::spawn(move || serve(stream));
                }
            })
        };
        Ok(Self {
            addr,
            stop,
            thread: Some(thread),
        })
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect(self.addr);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// One request head.
#[derive(Debug, Default)]
pub struct Head {
    /// The method as sent (`GET`, `POST`...).
    pub method: String,
    /// The request target as sent (path and query).
    pub path: String,
    /// The minor version: 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub version: u8,
    /// Names as sent, values trimmed, in order.
    pub headers: Vec<(String, String)>,
}

impl Head {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Reads one request head of at most `limit` bytes (empty lines before it are skipped).
/// `Ok(None)` when the connection ends first; an `InvalidData` error for a head httparse
/// refuses or one over the limit.
pub fn read_head<R: BufRead>(reader: &mut R, limit: usize) -> io::Result<Option<Head>> {
    let mut buf = Vec::new();
    loop {
        let start = buf.len();
        let room = (limit + 1).saturating_sub(start) as u64;
        let n = reader.by_ref().take(room).read_until(b'\n', &mut buf)?;
        if buf.len() > limit {
            return Err(invalid("request head too large"));
        }
        if n == 0 || !buf.ends_with(b"\n") {
            return Ok(None);
        }
        let line = &buf[start..];
        if line == b"\n" || line == b"\r\n" {
            if start == 0 {
                buf.clear();
                continue;
            }
            break;
        }
    }
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    match request.parse(&buf) {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) => return Err(invalid("incomplete request head")),
        Err(err) => return Err(invalid(&err.to_string())),
    }
    Ok(Some(Head {
        method: request.method.unwrap_or_default().to_string(),
        path: request.path.unwrap_or_default().to_string(),
        version: request.version.unwrap_or(1),
        headers: request
            .headers
            .iter()
            .map(|h| {
                let value = String::from_utf8_lossy(h.value).trim().to_string();
                (h.name.to_string(), value)
            })
            .collect(),
    }))
}

fn invalid(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_string())
}

/// Longest chunk-size line or trailer line accepted, CRLF and chunk extensions included.
const MAX_LINE: usize = 4096;
/// Most trailer fields accepted after the last chunk.
const MAX_TRAILERS: usize = 64;

impl Head {
    /// Whether the connection may carry another request after this one's answer: HTTP/1.1
    /// without a `close` token in Connection. HTTP/1.0 connections are always closed after
    /// one answer (its keep-alive is optional, and no client of the tests needs it).
    pub fn keep_alive(&self) -> bool {
        self.version >= 1
            && !self
                .headers
                .iter()
                .filter(|(name, _)| name.eq_ignore_ascii_case("connection"))
                .flat_map(|(_, value)| value.split(','))
                .any(|token| token.trim().eq_ignore_ascii_case("close"))
    }

    /// Whether an HTTP/1.1 client waits for `100 Continue` before it sends the body.
    pub fn expects_continue(&self) -> bool {
        self.version >= 1
            && self
                .header("expect")
                .is_some_and(|v| v.eq_ignore_ascii_case("100-continue"))
    }

    /// How the request body is framed (RFC 9112 section 6.3), or why it cannot be read: then
    /// the request gets a 400 and the connection ends, since where the next request starts is
    /// unknown.
    pub fn framing(&self) -> Result<Framing, BodyError> {
        let values = |name: &'static str| {
            self.headers
                .iter()
                .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
                .flat_map(|(_, v)| v.split(','))
                .map(str::trim)
        };
        let has_length = values("content-length").next().is_some();
        let codings: Vec<&str> = values("transfer-encoding")
            .filter(|c| !c.is_empty())
            .collect();
        if !codings.is_empty() {
            if has_length {
                return Err(BodyError::LengthAndTransferEncoding);
            }
            return match codings.as_slice() {
                [only] if only.eq_ignore_ascii_case("chunked") => Ok(Framing::Chunked),
                _ => Err(BodyError::UnsupportedTransferEncoding),
            };
        }
        let mut length = None;
        for value in values("content-length") {
            if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
                return Err(BodyError::BadContentLength);
            }
            let n: u64 = value.parse().map_err(|_| BodyError::BadContentLength)?;
            if length.is_some_and(|seen| seen != n) {
                return Err(BodyError::BadContentLength);
            }
            length = Some(n);
        }
        Ok(Framing::Length(length.unwrap_or(0)))
    }
}

/// How a request body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// Exactly this many bytes (Content-Length; 0 when the request has neither header).
    Length(u64),
    /// `Transfer-Encoding: chunked`, decoded by [`ChunkedReader`].
    Chunked,
}

impl Framing {
    /// Whether the request has no body at all.
    pub fn is_empty(self) -> bool {
        self == Framing::Length(0)
    }
}

/// Why a request body cannot be framed or decoded. Reading a body reports it as an
/// `io::ErrorKind::InvalidData` error carrying this value (see [`BodyError::of`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyError {
    /// A Content-Length that is not a decimal number, or several that differ.
    BadContentLength,
    /// A Transfer-Encoding other than `chunked` alone (no other coding is decoded here).
    UnsupportedTransferEncoding,
    /// Both Content-Length and Transfer-Encoding (a smuggling vector; refused outright).
    LengthAndTransferEncoding,
    /// A chunk-size line that is not hex digits, optionally followed by extensions, ending in
    /// CRLF; or a size beyond u64.
    BadChunkSize,
    /// Chunk data not followed by CRLF (the chunk is longer or shorter than announced).
    BadChunkEnd,
    /// A chunk-size or trailer line longer than the limit.
    LineTooLong,
    /// A trailer line that is no `name: value` field ending in CRLF.
    BadTrailer,
    /// More trailer fields than the limit.
    TooManyTrailers,
}

impl BodyError {
    /// The `BodyError` inside an I/O error from a body reader, if that is what it carries.
    pub fn of(err: &io::Error) -> Option<BodyError> {
        err.get_ref()?.downcast_ref::<BodyError>().copied()
    }
}

impl std::fmt::Display for BodyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            BodyError::BadContentLength => "bad Content-Length",
            BodyError::UnsupportedTransferEncoding => "unsupported Transfer-Encoding",
            BodyError::LengthAndTransferEncoding => "both Content-Length and Transfer-Encoding",
            BodyError::BadChunkSize => "bad chunk-size line",
            BodyError::BadChunkEnd => "chunk data not followed by CRLF",
            BodyError::LineTooLong => "chunk-size or trailer line too long",
            BodyError::BadTrailer => "bad trailer field",
            BodyError::TooManyTrailers => "too many trailer fields",
        })
    }
}

impl std::error::Error for BodyError {}

impl From<BodyError> for io::Error {
    fn from(err: BodyError) -> Self {
        io::Error::new(io::ErrorKind::InvalidData, err)
    }
}

/// A request body read to its end and no further, so the next request on the connection
/// starts where it stops. A connection that ends inside the body is an `UnexpectedEof` error.
pub enum RequestBody<R> {
    /// Content-Length (or no body).
    Length(LengthReader<R>),
    /// `Transfer-Encoding: chunked`.
    Chunked(ChunkedReader<R>),
}

impl<R: BufRead> RequestBody<R> {
    /// The body that follows a head with this `framing` on `inner`.
    pub fn new(inner: R, framing: Framing) -> Self {
        match framing {
            Framing::Length(len) => RequestBody::Length(LengthReader { inner, left: len }),
            Framing::Chunked => RequestBody::Chunked(ChunkedReader::new(inner)),
        }
    }
}

impl<R: BufRead> Read for RequestBody<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            RequestBody::Length(body) => body.read(buf),
            RequestBody::Chunked(body) => body.read(buf),
        }
    }
}

/// A body of exactly `left` more bytes (`io::Take` would end quietly at an early EOF).
pub struct LengthReader<R> {
    inner: R,
    left: u64,
}

impl<R: Read> Read for LengthReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.left == 0 || buf.is_empty() {
            return Ok(0);
        }
        let want = buf
            .len()
            .min(usize::try_from(self.left).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..want])?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        self.left -= n as u64;
        Ok(n)
    }
}

/// A `Transfer-Encoding: chunked` body decoded as it is read (RFC 9112 section 7.1): chunk
/// extensions are skipped, trailer fields read and dropped, every line bounded and required to
/// end in CRLF (strict on purpose: the tests' origin should notice a proxy that frames
/// sloppily). Reads 0 once the last chunk and the trailers are consumed. Bad framing is an
/// `InvalidData` error carrying a [`BodyError`]; after any error the position in `inner` is
/// unspecified and the connection must end.
pub struct ChunkedReader<R> {
    inner: R,
    state: ChunkState,
    /// The line being parsed (chunk size or trailer).
    line: Vec<u8>,
}

/// Where a [`ChunkedReader`] is in the body.
#[derive(Debug, Clone, Copy)]
enum ChunkState {
    /// Before a chunk-size line.
    Size,
    /// Inside chunk data, this many bytes left.
    Data(u64),
    /// After chunk data, before its CRLF.
    DataEnd,
    /// After the last chunk's trailers.
    Done,
}

impl<R: BufRead> ChunkedReader<R> {
    /// Decodes the chunked body starting at `inner`'s position.
    pub fn new(inner: R) -> Self {
        Self {
            inner,
            state: ChunkState::Size,
            line: Vec::new(),
        }
    }

    /// Reads one line ending in CRLF into `self.line`, without the CRLF. `bad` is the error
    /// for a line ending in a bare LF or holding a CR elsewhere.
    fn read_line(&mut self, bad: BodyError) -> io::Result<()> {
        self.line.clear();
        let n = (&mut self.inner)
            .take(MAX_LINE as u64)
            .read_until(b'\n', &mut self.line)?;
        if !self.line.ends_with(b"\n") {
            return Err(if n == MAX_LINE {
                BodyError::LineTooLong.into()
            } else {
                io::ErrorKind::UnexpectedEof.into()
            });
        }
        if !self.line.ends_with(b"\r\n") {
            return Err(bad.into());
        }
        self.line.truncate(self.line.len() - 2);
        if self.line.contains(&b'\r') {
            return Err(bad.into());
        }
        Ok(())
    }

    /// Reads and drops the trailer section after the last chunk, up to its empty line.
    fn skip_trailers(&mut self) -> io::Result<()> {
        for _ in 0..=MAX_TRAILERS {
            self.read_line(BodyError::BadTrailer)?;
            if self.line.is_empty() {
                return Ok(());
            }
            // `name: value`, no obsolete line folding (a line starting with whitespace).
            let field_name = self.line.split(|&b| b == b':').next().unwrap_or_default();
            if field_name.len() == self.line.len()
                || field_name.is_empty()
                || !field_name.iter().all(|&b| is_token_byte(b))
            {
                return Err(BodyError::BadTrailer.into());
            }
        }
        Err(BodyError::TooManyTrailers.into())
    }
}

impl<R: BufRead> Read for ChunkedReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            match self.state {
                ChunkState::Done => return Ok(0),
                ChunkState::Size => {
                    self.read_line(BodyError::BadChunkSize)?;
                    let size = parse_chunk_size(&self.line)?;
                    if size == 0 {
                        self.skip_trailers()?;
                        self.state = ChunkState::Done;
                    } else {
                        self.state = ChunkState::Data(size);
                    }
                }
                ChunkState::Data(left) => {
                    if buf.is_empty() {
                        return Ok(0);
                    }
                    let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
                    let n = self.inner.read(&mut buf[..want])?;
                    if n == 0 {
                        return Err(io::ErrorKind::UnexpectedEof.into());
                    }
                    let left = left - n as u64;
                    self.state = if left == 0 {
                        ChunkState::DataEnd
                    } else {
                        ChunkState::Data(left)
                    };
                    return Ok(n);
                }
                ChunkState::DataEnd => {
                    let mut crlf = [0; 2];
                    self.inner.read_exact(&mut crlf)?;
                    if &crlf != b"\r\n" {
                        return Err(BodyError::BadChunkEnd.into());
                    }
                    self.state = ChunkState::Size;
                }
            }
        }
    }
}

/// The size in a chunk-size line (without its CRLF): hex digits, then nothing or chunk
/// extensions (`;` after optional whitespace, no control characters but tab).
fn parse_chunk_size(line: &[u8]) -> Result<u64, BodyError> {
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    if digits == 0 {
        return Err(BodyError::BadChunkSize);
    }
    let mut size: u64 = 0;
    for &b in &line[..digits] {
        let digit = (b as char).to_digit(16).map(u64::from);
        size = digit
            .and_then(|d| size.checked_mul(16)?.checked_add(d))
            .ok_or(BodyError::BadChunkSize)?;
    }
    let rest = &line[digits..];
    let rest = &rest[rest
        .iter()
        .take_while(|&&b| b == b' ' || b == b'\t')
        .count()..];
    let extensions_ok = rest.first().is_none_or(|&b| b == b';')
        && rest.iter().all(|&b| b == b'\t' || (b >= 0x20 && b != 0x7f));
    if extensions_ok {
        Ok(size)
    } else {
        Err(BodyError::BadChunkSize)
    }
}

/// Whether `b` may appear in a field name (RFC 9110 `tchar`).
fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// The reason phrase of a status code (RFC 9110 section 15), or "" for a code it does not
/// name (a valid, empty phrase).
pub fn reason(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        101 => "Switching Protocols",
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        203 => "Non-Authoritative Information",
        204 => "No Content",
        205 => "Reset Content",
        206 => "Partial Content",
        300 => "Multiple Choices",
        301 => "Moved Permanently",
        302 => "Found",
        303 => "See Other",
        304 => "Not Modified",
        307 => "Temporary Redirect",
        308 => "Permanent Redirect",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        406 => "Not Acceptable",
        408 => "Request Timeout",
        409 => "Conflict",
        410 => "Gone",
        411 => "Length Required",
        412 => "Precondition Failed",
        413 => "Content Too Large",
        414 => "URI Too Long",
        415 => "Unsupported Media Type",
        416 => "Range Not Satisfiable",
        417 => "Expectation Failed",
        422 => "Unprocessable Content",
        426 => "Upgrade Required",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        505 => "HTTP Version Not Supported",
        _ => "",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str, limit: usize) -> io::Result<Option<Head>> {
        read_head(&mut io::BufReader::new(text.as_bytes()), limit)
    }

    #[test]
    fn heads_parse_with_leading_empty_lines_and_bare_newlines() {
        let head = parse(
            "\r\nGET /a?b HTTP/1.0\r\nHost: x\r\nX-Y:  z \r\n\r\nbody",
            1024,
        )
        .unwrap()
        .unwrap();
        assert_eq!((head.method.as_str(), head.path.as_str()), ("GET", "/a?b"));
        assert_eq!(head.version, 0);
        assert_eq!(head.header("x-y"), Some("z"));
        let head = parse("POST /echo HTTP/1.1\nContent-Length: 3\n\nabc", 1024)
            .unwrap()
            .unwrap();
        assert_eq!(head.header("content-length"), Some("3"));
    }

    #[test]
    fn an_ended_connection_a_bad_head_and_an_oversized_head() {
        assert!(parse("", 1024).unwrap().is_none());
        assert!(parse("GET / HTTP/1.1\r\nHost:", 1024).unwrap().is_none());
        assert!(parse("GET / HTTP/1.1\r\nno colon\r\n\r\n", 1024).is_err());
        let big = format!("GET / HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(2000));
        assert!(parse(&big, 1024).is_err());
        assert!(parse(&big, 4096).unwrap().is_some());
    }

    /// Decodes `wire` as a chunked body read `step` bytes at a time; the body and what follows.
    fn dechunk(wire: &[u8], step: usize) -> io::Result<(Vec<u8>, Vec<u8>)> {
        let mut inner = io::BufReader::with_capacity(7, wire);
        let mut body = Vec::new();
        let mut reader = ChunkedReader::new(&mut inner);
        let mut buf = vec![0; step];
        loop {
            let n = reader.read(&mut buf)?;
            if n == 0 {
                break;
            }
            body.extend_from_slice(&buf[..n]);
        }
        let mut rest = Vec::new();
        inner.read_to_end(&mut rest)?;
        Ok((body, rest))
    }

    fn dechunk_error(wire: &[u8]) -> io::Error {
        match dechunk(wire, 4096) {
            Ok((body, _)) => panic!("{:?} decoded to {body:?}", String::from_utf8_lossy(wire)),
            Err(err) => err,
        }
    }

    #[test]
    fn chunked_bodies_decode_with_extensions_and_trailers_and_stop_at_their_end() {
        let wire = b"5;name=value\r\nhello\r\n6 ; a=\"b;c\"\t;x\r\n world\r\n\
                     A\r\n0123456789\r\n000\r\nX-Sum: 1\r\nOther:\r\n\r\nGET / HTTP/1.1\r\n";
        for step in [1, 2, 5, 64 * 1024] {
            let (body, rest) = dechunk(wire, step).unwrap();
            assert_eq!(body, b"hello world0123456789", "reads of {step}");
            assert_eq!(rest, b"GET / HTTP/1.1\r\n");
        }
        let (body, rest) = dechunk(b"0\r\n\r\n", 10).unwrap();
        assert!(body.is_empty() && rest.is_empty());
    }

    #[test]
    fn malformed_chunked_bodies_are_typed_errors() {
        let cases: &[(&[u8], BodyError)] = &[
            (b"zz\r\nhello\r\n0\r\n\r\n", BodyError::BadChunkSize),
            (b"\r\n", BodyError::BadChunkSize),
            (b" 5\r\nhello\r\n0\r\n\r\n", BodyError::BadChunkSize),
            (b"-5\r\nhello\r\n0\r\n\r\n", BodyError::BadChunkSize),
            (b"0x5\r\nhello\r\n0\r\n\r\n", BodyError::BadChunkSize),
            (b"5\nhello\r\n0\r\n\r\n", BodyError::BadChunkSize),
            (b"5;a\rb\r\nhello\r\n0\r\n\r\n", BodyError::BadChunkSize),
            (b"5;a\x01\r\nhello\r\n0\r\n\r\n", BodyError::BadChunkSize),
            (b"10000000000000000\r\n", BodyError::BadChunkSize),
            (b"5\r\nhelloX\r\n0\r\n\r\n", BodyError::BadChunkEnd),
            (b"5\r\nhello\n0\r\n\r\n", BodyError::BadChunkEnd),
            (b"0\r\nno colon\r\n\r\n", BodyError::BadTrailer),
            (b"0\r\n folded: x\r\n\r\n", BodyError::BadTrailer),
            (b"0\r\nX: y\n\r\n", BodyError::BadTrailer),
        ];
        for (wire, want) in cases {
            let err = dechunk_error(wire);
            assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{err}");
            assert_eq!(
                BodyError::of(&err),
                Some(*want),
                "{:?}",
                String::from_utf8_lossy(wire)
            );
        }
        let long = format!("1;{}\r\nx\r\n0\r\n\r\n", "e".repeat(MAX_LINE));
        assert_eq!(
            BodyError::of(&dechunk_error(long.as_bytes())),
            Some(BodyError::LineTooLong)
        );
        let max = format!("0\r\n{}\r\n", "T: v\r\n".repeat(MAX_TRAILERS));
        assert!(dechunk(max.as_bytes(), 10).is_ok());
        let many = format!("0\r\n{}\r\n", "T: v\r\n".repeat(MAX_TRAILERS + 1));
        assert_eq!(
            BodyError::of(&dechunk_error(many.as_bytes())),
            Some(BodyError::TooManyTrailers)
        );
        for cut in [
            &b"5\r\nhel"[..],
            b"5\r\nhello",
            b"5\r\nhello\r\n",
            b"0\r\nX: y\r\n",
            b"5",
        ] {
            assert_eq!(
                dechunk_error(cut).kind(),
                io::ErrorKind::UnexpectedEof,
                "{cut:?}"
            );
        }
    }

    #[test]
    fn framing_keep_alive_and_continue_follow_the_headers() {
        let head = |version: u8, headers: &[(&str, &str)]| Head {
            method: "POST".into(),
            path: "/".into(),
            version,
            headers: headers
                .iter()
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .collect(),
        };
        assert_eq!(head(1, &[]).framing(), Ok(Framing::Length(0)));
        assert!(head(1, &[]).framing().unwrap().is_empty());
        assert_eq!(
            head(1, &[("content-length", "12")]).framing(),
            Ok(Framing::Length(12))
        );
        assert_eq!(
            head(1, &[("Content-Length", "7, 7"), ("Content-Length", "7")]).framing(),
            Ok(Framing::Length(7))
        );
        assert_eq!(
            head(1, &[("Transfer-Encoding", "Chunked")]).framing(),
            Ok(Framing::Chunked)
        );
        let bad = [
            (vec![("Content-Length", "+5")], BodyError::BadContentLength),
            (
                vec![("Content-Length", "5, 6")],
                BodyError::BadContentLength,
            ),
            (vec![("Content-Length", "")], BodyError::BadContentLength),
            (
                vec![("Content-Length", "99999999999999999999")],
                BodyError::BadContentLength,
            ),
            (
                vec![("Transfer-Encoding", "gzip, chunked")],
                BodyError::UnsupportedTransferEncoding,
            ),
            (
                vec![("Transfer-Encoding", "chunked, gzip")],
                BodyError::UnsupportedTransferEncoding,
            ),
            (
                vec![("Transfer-Encoding", "chunked"), ("Content-Length", "3")],
                BodyError::LengthAndTransferEncoding,
            ),
        ];
        for (headers, want) in bad {
            assert_eq!(head(1, &headers).framing(), Err(want), "{headers:?}");
        }
        assert!(head(1, &[]).keep_alive());
        assert!(head(1, &[("Connection", "keep-alive")]).keep_alive());
        assert!(!head(1, &[("Connection", "keep-alive, Close")]).keep_alive());
        assert!(!head(0, &[("Connection", "keep-alive")]).keep_alive());
        assert!(head(1, &[("Expect", "100-Continue")]).expects_continue());
        assert!(!head(0, &[("Expect", "100-continue")]).expects_continue());
    }

    #[test]
    fn a_length_body_stops_at_its_length_and_notices_an_early_end() {
        let mut inner = io::BufReader::new(&b"abcdefNEXT"[..]);
        let mut body = Vec::new();
        RequestBody::new(&mut inner, Framing::Length(6))
            .read_to_end(&mut body)
            .unwrap();
        assert_eq!(body, b"abcdef");
        let mut rest = String::new();
        inner.read_to_string(&mut rest).unwrap();
        assert_eq!(rest, "NEXT");
        let err = RequestBody::new(io::BufReader::new(&b"abc"[..]), Framing::Length(6))
            .read_to_end(&mut Vec::new())
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
        assert_eq!(reason(404), "Not Found");
        assert_eq!(reason(599), "");
    }
}
