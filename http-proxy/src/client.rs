//! An HTTP/1.1 client over any `futures::io` byte stream: the request written with the
//! proxy's own framing (Content-Length when the body's length is known, else chunked), the
//! response head parsed with httparse (1xx skipped), its body framed by RFC 9112 §6.3 and
//! decoded by [`crate::body::decode::Decoder`] as the caller pulls it, with every wait on the
//! server bounded by an injected-timer idle timeout. A response whose framing allows it hands
//! the stream back once its body is read ([`ResponseBody::into_reusable`]) for keep-alive.
//!
//! It knows nothing of where the stream goes: a relay stream to an origin, a TCP connection
//! into a guest, a test pipe.

use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use fetch_transport::{Body, BodyError};
use futures::future::{self, Either};
use futures::io::{AsyncRead, AsyncWrite};
use futures::{Stream, StreamExt};
use http::header::{CONNECTION, CONTENT_LENGTH, HOST, TRANSFER_ENCODING};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, Version};

use crate::body::decode::{DecodeError, Decoder, RequestFraming, Step};
use crate::body::encode::{encode_chunk, LAST_CHUNK};
use crate::io::{Inbound, Outbound};
use crate::timer::Timer;

/// Largest response head (status line and fields, all 1xx heads before it included).
pub const MAX_HEAD_BYTES: usize = 64 * 1024;
/// Most header fields in one response head.
pub const MAX_HEADERS: usize = 128;
/// Longest chunk-size or trailer line in a chunked response body.
pub const MAX_LINE_BYTES: usize = 4 * 1024;
/// Largest body piece handed on at once.
pub const MAX_BODY_PIECE: usize = 64 * 1024;
/// How long the server may send nothing (or take nothing) before the exchange fails.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Bytes read from the stream at once.
const READ_SIZE: usize = 16 * 1024;
/// How much of a request body of unknown length is read before the head is written: a body
/// that ends within it goes with `Content-Length` (a browser's request bodies are streams of
/// unknown length, and servers such as Python's `http.server` cannot read chunked uploads).
pub const LENGTH_PROBE_BYTES: usize = 64 * 1024;
/// How long that read waits for the body's pieces before the request goes chunked, so a
/// slow or interactive upload is not held back.
pub const LENGTH_PROBE_WAIT: Duration = Duration::from_millis(50);

/// The bounds of a [`Client`]: what one response can make it hold, and how long it waits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientConfig {
    /// Largest response head in bytes, 1xx heads before it included.
    pub max_head_bytes: usize,
    /// Most header fields in one response head.
    pub max_headers: usize,
    /// Longest chunk-size or trailer line of a chunked body.
    pub max_line_bytes: usize,
    /// Largest body piece handed on at once.
    pub max_body_piece: usize,
    /// How long the server may stay silent while a response is awaited or read, or leave
    /// the request unread.
    pub idle_timeout: Duration,
}

impl Default for ClientConfig {
    fn default() -> Self {
        Self {
            max_head_bytes: MAX_HEAD_BYTES,
            max_headers: MAX_HEADERS,
            max_line_bytes: MAX_LINE_BYTES,
            max_body_piece: MAX_BODY_PIECE,
            idle_timeout: IDLE_TIMEOUT,
        }
    }
}

/// Why an exchange failed, from writing the request to the last byte of the response body.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The request names no host: no `Host` header and no authority in its URI.
    #[error("the request has no Host header and no authority in its URI")]
    NoHost,
    /// The request body's own stream failed.
    #[error("the request body failed: {0}")]
    RequestBody(#[source] BodyError),
    /// The request body's stream yielded another number of bytes than its length said.
    #[error("the request body said {declared} bytes and had {sent} or more")]
    RequestBodyLength {
        /// The length the body declared.
        declared: u64,
        /// How many bytes it had when the mismatch was seen.
        sent: u64,
    },
    /// Writing the request head failed.
    #[error("sending the request head: {0}")]
    SendHead(#[source] io::Error),
    /// Writing the request body failed.
    #[error("sending the request body: {0}")]
    SendBody(#[source] io::Error),
    /// The server took none of the request for the idle timeout.
    #[error("the server took nothing of the request for {0:?}")]
    NotReading(Duration),
    /// Reading from the stream failed.
    #[error("reading the response: {0}")]
    Read(#[source] io::Error),
    /// The server sent nothing for the idle timeout.
    #[error("nothing from the server for {0:?}")]
    TimedOut(Duration),
    /// The stream ended before any byte of a response.
    #[error("the server closed the connection without a response")]
    ClosedBeforeResponse,
    /// The stream ended inside a response head.
    #[error("the server closed the connection mid-head")]
    ClosedMidHead,
    /// The response head (with the 1xx heads before it) is over the limit.
    #[error("the server's response head is over {0} bytes")]
    HeadTooLarge(usize),
    /// The response head has more fields than the limit.
    #[error("the server's response head has more than {0} header fields")]
    TooManyHeaders(usize),
    /// httparse refused the response head.
    #[error("malformed response head from the server: {0}")]
    Malformed(httparse::Error),
    /// The status code is not one `http` accepts (100–999).
    #[error("malformed response head from the server: status {0}")]
    BadStatus(u16),
    /// A header field's name or value is not one `http` accepts.
    #[error("malformed response head from the server: the field {0:?}")]
    BadHeader(String),
    /// `101 Switching Protocols` to a request that asked for no upgrade.
    #[error("the server switched protocols (101) though no upgrade was asked for")]
    UnexpectedUpgrade,
    /// `Transfer-Encoding` that cannot be read.
    #[error("unsupported Transfer-Encoding from the server")]
    TransferEncoding,
    /// `Content-Length` that is not one number.
    #[error("invalid Content-Length from the server")]
    ContentLength,
    /// The stream ended before the response body did.
    #[error("the server closed the connection mid-body")]
    ClosedMidBody,
    /// The chunked body is malformed.
    #[error("malformed response body from the server: {0}")]
    Body(#[source] DecodeError),
}

/// A response's status line and fields as received, and how many bytes they took.
#[derive(Debug, Clone)]
pub struct ResponseHead {
    /// HTTP/1.0 or HTTP/1.1.
    pub version: Version,
    /// The status code.
    pub status: StatusCode,
    /// Every field in order, framing and connection fields included.
    pub headers: HeaderMap,
    /// The head's length in bytes, final empty line included.
    pub len: usize,
}

/// How a response body is delimited on the wire (RFC 9112 §6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFraming {
    /// No body (HEAD, 204, 304, `Content-Length: 0`).
    Empty,
    /// Exactly this many bytes.
    Length(u64),
    /// Chunked.
    Chunked,
    /// Until the server closes the connection.
    UntilClose,
}

/// Sends requests over streams it is given; holds only its limits and the timer.
pub struct Client {
    config: ClientConfig,
    timer: Rc<dyn Timer>,
}

impl Client {
    /// A client bounded by `config`, timing its waits with `timer`.
    pub fn new(config: ClientConfig, timer: Rc<dyn Timer>) -> Self {
        Self { config, timer }
    }

    /// The limits it was made with.
    pub fn config(&self) -> &ClientConfig {
        &self.config
    }

    /// Writes `request` on `stream` and reads the response head; the body is then read as
    /// the returned [`ResponseBody`] is polled. The request target is the URI's path and
    /// query; `Host` is the request's `Host` header, else the URI's authority. Hop-by-hop
    /// fields are not sent; `Connection: close` in the request is, and rules out reuse.
    pub async fn send<S>(
        &self,
        mut stream: S,
        request: Request<Body>,
    ) -> Result<Response<ResponseBody<S>>, ClientError>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let (parts, body) = request.into_parts();
        let body = self.probe_length(body).await?;
        let host = match parts.headers.get(HOST) {
            Some(value) => value.as_bytes().to_vec(),
            None => parts
                .uri
                .authority()
                .map(|a| a.as_str().as_bytes().to_vec())
                .ok_or(ClientError::NoHost)?,
        };
        let target = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        let close = has_token(&parts.headers, "close");
        let head = request_head(
            &parts.method,
            target,
            &host,
            &parts.headers,
            body.len(),
            close,
        );
        let idle = self.config.idle_timeout;
        {
            let mut out = Outbound::new(&mut stream, self.timer.clone(), idle);
            out.write_all(&head)
                .await
                .map_err(|err| write_error(err, idle, ClientError::SendHead))?;
            write_body(&mut out, body, idle).await?;
        }
        let mut inbound = Inbound::new(stream, READ_SIZE, self.timer.clone(), idle);
        let head = read_head(&mut inbound, &self.config).await?;
        let framing = response_framing(&parts.method, &head)?;
        let reusable = !close && keeps_alive(&head, framing);
        let body = ResponseBody::new(inbound, framing, &self.config, reusable);
        let mut response = Response::new(body);
        *response.status_mut() = head.status;
        *response.version_mut() = head.version;
        *response.headers_mut() = head.headers;
        Ok(response)
    }
}

impl Client {
    /// A body of unknown length with its first [`LENGTH_PROBE_BYTES`] read (for at most
    /// [`LENGTH_PROBE_WAIT`]): whole with its length when it ended within them, else a stream
    /// of unknown length again, what was read first.
    async fn probe_length(&self, mut body: Body) -> Result<Body, ClientError> {
        if body.len().is_some() {
            return Ok(body);
        }
        let mut read: Vec<Bytes> = Vec::new();
        let mut total = 0;
        let mut wait = self.timer.sleep(LENGTH_PROBE_WAIT);
        while total <= LENGTH_PROBE_BYTES {
            match future::select(body.next(), &mut wait).await {
                Either::Left((Some(piece), _)) => {
                    let piece = piece.map_err(ClientError::RequestBody)?;
                    total += piece.len();
                    read.push(piece);
                }
                Either::Left((None, _)) => {
                    let mut whole = BytesMut::with_capacity(total);
                    for piece in read {
                        whole.extend_from_slice(&piece);
                    }
                    return Ok(Body::full(whole.freeze()));
                }
                Either::Right(_) => break,
            }
        }
        let first = futures::stream::iter(read.into_iter().map(Ok));
        Ok(Body::from_stream(first.chain(body), None))
    }
}

/// A write failure as the client reports it: a timeout says the server stopped reading.
fn write_error(
    err: io::Error,
    idle: Duration,
    other: impl FnOnce(io::Error) -> ClientError,
) -> ClientError {
    if err.kind() == io::ErrorKind::TimedOut {
        ClientError::NotReading(idle)
    } else {
        other(err)
    }
}

/// The request head: request line, `Host`, the caller's end-to-end fields, our framing, and
/// `Connection: close` when `close`. A body of length 0 gets `Content-Length: 0` only for
/// the methods that carry one.
pub fn request_head(
    method: &Method,
    target: &str,
    host: &[u8],
    headers: &HeaderMap,
    body_len: Option<u64>,
    close: bool,
) -> Vec<u8> {
    let mut head = format!("{method} {target} HTTP/1.1\r\nHost: ").into_bytes();
    head.extend_from_slice(host);
    head.extend_from_slice(b"\r\n");
    for (name, value) in headers {
        if name == HOST
            || name == CONTENT_LENGTH
            || name == TRANSFER_ENCODING
            || fetch_transport::policy::is_hop_by_hop(name)
        {
            continue;
        }
        head.extend_from_slice(name.as_str().as_bytes());
        head.extend_from_slice(b": ");
        head.extend_from_slice(value.as_bytes());
        head.extend_from_slice(b"\r\n");
    }
    match body_len {
        Some(0) if !matches!(*method, Method::POST | Method::PUT | Method::PATCH) => {}
        Some(len) => head.extend_from_slice(format!("Content-Length: {len}\r\n").as_bytes()),
        None => head.extend_from_slice(b"Transfer-Encoding: chunked\r\n"),
    }
    if close {
        head.extend_from_slice(b"Connection: close\r\n");
    }
    head.extend_from_slice(b"\r\n");
    head
}

/// Streams the request body: as is with a known length (which it must match), else chunked.
async fn write_body<W: AsyncWrite + Unpin>(
    out: &mut Outbound<W>,
    mut body: Body,
    idle: Duration,
) -> Result<(), ClientError> {
    let declared = body.len();
    let mut sent: u64 = 0;
    let mut framed = Vec::new();
    while let Some(piece) = body.next().await {
        let piece = piece.map_err(ClientError::RequestBody)?;
        if piece.is_empty() {
            continue;
        }
        sent += piece.len() as u64;
        let data: &[u8] = match declared {
            Some(declared) if sent > declared => {
                return Err(ClientError::RequestBodyLength { declared, sent })
            }
            Some(_) => &piece,
            None => {
                framed.clear();
                encode_chunk(&piece, &mut framed);
                &framed
            }
        };
        out.write_all(data)
            .await
            .map_err(|err| write_error(err, idle, ClientError::SendBody))?;
    }
    match declared {
        Some(declared) if sent != declared => {
            Err(ClientError::RequestBodyLength { declared, sent })
        }
        Some(_) => Ok(()),
        None => out
            .write_all(LAST_CHUNK)
            .await
            .map_err(|err| write_error(err, idle, ClientError::SendBody)),
    }
}

/// Reads response heads until a final one (1xx skipped, all of them within the head limit).
async fn read_head<S: AsyncRead + Unpin>(
    inbound: &mut Inbound<S>,
    config: &ClientConfig,
) -> Result<ResponseHead, ClientError> {
    let mut budget = config.max_head_bytes;
    // Where the search for the head's end goes on.
    let mut from = 0;
    loop {
        let mut complete = None;
        while let Some(end) = head_end(&inbound.buf, from) {
            if end > budget {
                return Err(ClientError::HeadTooLarge(config.max_head_bytes));
            }
            match parse_response_head(&inbound.buf[..end], config.max_headers)? {
                Some(head) => {
                    complete = Some(head);
                    break;
                }
                // An empty line the parser does not take as the end: look for the next one.
                None => from = end - 1,
            }
        }
        if let Some(head) = complete {
            let _ = inbound.buf.split_to(head.len);
            budget -= head.len;
            from = 0;
            if head.status == StatusCode::SWITCHING_PROTOCOLS {
                return Err(ClientError::UnexpectedUpgrade);
            }
            if head.status.is_informational() {
                continue;
            }
            return Ok(head);
        }
        if inbound.buf.len() > budget {
            return Err(ClientError::HeadTooLarge(config.max_head_bytes));
        }
        // A line break among the last two bytes may yet start the empty line.
        from = from.max(inbound.buf.len().saturating_sub(2));
        let read = futures::future::poll_fn(|cx| inbound.poll_fill(cx)).await;
        match read {
            Ok(0) if inbound.buf.is_empty() && budget == config.max_head_bytes => {
                return Err(ClientError::ClosedBeforeResponse)
            }
            Ok(0) => return Err(ClientError::ClosedMidHead),
            Ok(_) => {}
            Err(err) => return Err(read_error(err, config.idle_timeout)),
        }
    }
}

/// A read failure as the client reports it: a timeout says the server went silent.
fn read_error(err: io::Error, idle: Duration) -> ClientError {
    if err.kind() == io::ErrorKind::TimedOut {
        ClientError::TimedOut(idle)
    } else {
        ClientError::Read(err)
    }
}

/// Where the first head in `buf` whose final line break is at or after `from` ends (after
/// its empty line, CRLF or bare LF).
fn head_end(buf: &[u8], from: usize) -> Option<usize> {
    (from..buf.len()).find_map(|i| {
        if buf[i] != b'\n' {
            return None;
        }
        match (buf.get(i + 1), buf.get(i + 2)) {
            (Some(b'\n'), _) => Some(i + 2),
            (Some(b'\r'), Some(b'\n')) => Some(i + 3),
            _ => None,
        }
    })
}

/// Parses a response head at the start of `buf`: `None` while it is incomplete.
pub fn parse_response_head(
    buf: &[u8],
    max_headers: usize,
) -> Result<Option<ResponseHead>, ClientError> {
    let mut slots = vec![httparse::EMPTY_HEADER; max_headers];
    let mut response = httparse::Response::new(&mut slots);
    let len = match response.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(ClientError::TooManyHeaders(max_headers))
        }
        Err(err) => return Err(ClientError::Malformed(err)),
    };
    let code = response.code.unwrap_or(0);
    let status = StatusCode::from_u16(code).map_err(|_| ClientError::BadStatus(code))?;
    let version = match response.version {
        Some(0) => Version::HTTP_10,
        _ => Version::HTTP_11,
    };
    let mut headers = HeaderMap::with_capacity(response.headers.len());
    for field in response.headers.iter() {
        let bad = || ClientError::BadHeader(field.name.to_string());
        let name = HeaderName::from_bytes(field.name.as_bytes()).map_err(|_| bad())?;
        let value = HeaderValue::from_bytes(field.value).map_err(|_| bad())?;
        headers.append(name, value);
    }
    Ok(Some(ResponseHead {
        version,
        status,
        headers,
        len,
    }))
}

/// How the body of `head`, answering a `method` request, is delimited (RFC 9112 §6.3).
pub fn response_framing(method: &Method, head: &ResponseHead) -> Result<BodyFraming, ClientError> {
    let status = head.status;
    if *method == Method::HEAD
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        return Ok(BodyFraming::Empty);
    }
    if head.headers.contains_key(TRANSFER_ENCODING) {
        let mut last = None;
        for value in head.headers.get_all(TRANSFER_ENCODING) {
            let value = value.to_str().map_err(|_| ClientError::TransferEncoding)?;
            if let Some(coding) = value.split(',').map(str::trim).rfind(|c| !c.is_empty()) {
                last = Some(coding.to_ascii_lowercase());
            }
        }
        // Not chunked last: the body runs to the close (item 4).
        return Ok(match last.as_deref() {
            Some("chunked") => BodyFraming::Chunked,
            _ => BodyFraming::UntilClose,
        });
    }
    let mut length: Option<u64> = None;
    for value in head.headers.get_all(CONTENT_LENGTH) {
        let text = value.to_str().map_err(|_| ClientError::ContentLength)?;
        for part in text.split(',').map(str::trim) {
            if part.is_empty() || part.len() > 19 || !part.bytes().all(|b| b.is_ascii_digit()) {
                return Err(ClientError::ContentLength);
            }
            let n: u64 = part.parse().map_err(|_| ClientError::ContentLength)?;
            if length.is_some_and(|prev| prev != n) {
                return Err(ClientError::ContentLength);
            }
            length = Some(n);
        }
    }
    Ok(match length {
        Some(0) => BodyFraming::Empty,
        Some(n) => BodyFraming::Length(n),
        None => BodyFraming::UntilClose,
    })
}

/// Whether the connection may carry another request after this response: its end is
/// delimited, the server did not say `close` (HTTP/1.1) or did say `keep-alive` (HTTP/1.0),
/// and its framing is unambiguous (not both Transfer-Encoding and Content-Length).
pub fn keeps_alive(head: &ResponseHead, framing: BodyFraming) -> bool {
    if framing == BodyFraming::UntilClose || has_token(&head.headers, "close") {
        return false;
    }
    let has_te = head.headers.contains_key(TRANSFER_ENCODING);
    if has_te && head.headers.contains_key(CONTENT_LENGTH) {
        return false;
    }
    match head.version {
        Version::HTTP_11 => true,
        Version::HTTP_10 => !has_te && has_token(&head.headers, "keep-alive"),
        _ => false,
    }
}

/// Whether a `Connection` field lists `token`.
fn has_token(headers: &HeaderMap, token: &str) -> bool {
    headers.get_all(CONNECTION).iter().any(|value| {
        value
            .to_str()
            .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
    })
}

/// Whether an idle kept-alive stream is still usable: nothing to read and not closed.
/// Polls it once without waiting (bytes or EOF on an idle connection both rule it out).
pub fn is_idle_open<S: AsyncRead + Unpin>(stream: &mut S) -> bool {
    let waker = futures::task::noop_waker();
    let mut cx = Context::from_waker(&waker);
    let mut byte = [0u8; 1];
    Pin::new(stream).poll_read(&mut cx, &mut byte).is_pending()
}

/// The response body, decoded from the stream as it is polled: pieces of at most
/// `max_body_piece` bytes, an error after `idle_timeout` of silence. Once complete, the
/// stream can be taken back for another request ([`ResponseBody::into_reusable`]).
pub struct ResponseBody<S> {
    inbound: Inbound<S>,
    /// `None`: the body runs until the server closes.
    decoder: Option<Decoder>,
    len: Option<u64>,
    reusable: bool,
    idle: Duration,
    max_piece: usize,
    ended: bool,
    failed: bool,
}

impl<S> ResponseBody<S> {
    fn new(
        inbound: Inbound<S>,
        framing: BodyFraming,
        config: &ClientConfig,
        reusable: bool,
    ) -> Self {
        let (decoder, len) = match framing {
            BodyFraming::Empty => (Some(RequestFraming::Empty), Some(0)),
            BodyFraming::Length(n) => (Some(RequestFraming::Length(n)), Some(n)),
            BodyFraming::Chunked => (Some(RequestFraming::Chunked), None),
            BodyFraming::UntilClose => (None, None),
        };
        Self {
            inbound,
            decoder: decoder.map(|f| Decoder::new(f, config.max_line_bytes, config.max_body_piece)),
            len,
            reusable,
            idle: config.idle_timeout,
            max_piece: config.max_body_piece.max(1),
            ended: false,
            failed: false,
        }
    }

    /// The body's length when the head said it (Content-Length, or none at all).
    pub fn len(&self) -> Option<u64> {
        self.len
    }

    /// True when the head said there is no body.
    pub fn is_empty(&self) -> bool {
        self.len == Some(0)
    }

    /// True once the whole body has been read (at once for an empty one).
    pub fn is_complete(&self) -> bool {
        !self.failed && (self.ended || self.decoder.as_ref().is_some_and(Decoder::is_done))
    }

    /// Whether the stream will be offered back once the body is complete.
    pub fn allows_reuse(&self) -> bool {
        self.reusable
    }

    fn fail(&mut self, err: ClientError) -> Poll<Option<Result<Bytes, ClientError>>> {
        self.failed = true;
        self.ended = true;
        Poll::Ready(Some(Err(err)))
    }
}

impl<S: AsyncRead + Unpin> ResponseBody<S> {
    /// The stream, ready for the next request: only when the body is complete, its framing
    /// and both sides' `Connection` fields allow reuse, and the server sent nothing beyond
    /// it. Otherwise `None` (drop it to close the connection).
    pub fn into_reusable(self) -> Option<S> {
        if !self.reusable || !self.is_complete() {
            return None;
        }
        let (stream, rest) = self.inbound.into_parts();
        rest.is_empty().then_some(stream)
    }
}

impl<S: AsyncRead + Unpin> Stream for ResponseBody<S> {
    type Item = Result<Bytes, ClientError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if this.ended {
            return Poll::Ready(None);
        }
        loop {
            match this.decoder.as_mut() {
                Some(decoder) => match decoder.decode(&mut this.inbound.buf) {
                    Ok(Step::Data(data)) => return Poll::Ready(Some(Ok(data))),
                    Ok(Step::Done) => {
                        this.ended = true;
                        return Poll::Ready(None);
                    }
                    Ok(Step::NeedMore) => {}
                    Err(err) => return this.fail(ClientError::Body(err)),
                },
                None if !this.inbound.buf.is_empty() => {
                    let n = this.inbound.buf.len().min(this.max_piece);
                    return Poll::Ready(Some(Ok(this.inbound.buf.split_to(n).freeze())));
                }
                None => {}
            }
            match this.inbound.poll_fill(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(0)) => {
                    if this.decoder.is_some() {
                        return this.fail(ClientError::ClosedMidBody);
                    }
                    this.ended = true;
                    return Poll::Ready(None);
                }
                Poll::Ready(Ok(_)) => {}
                Poll::Ready(Err(err)) => return this.fail(read_error(err, this.idle)),
            }
        }
    }
}

#[cfg(test)]
mod tests;
