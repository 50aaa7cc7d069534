//! Plain HTTP through the relay: [`RelayHttp`] speaks HTTP/1.1 to the origin over a relay
//! stream (requests framed like the proxy frames them, responses parsed with httparse and the
//! proxy's body decoder), and [`ViaRelay`] decides per request whether the proxy's transport
//! (`fetch()` in the browser) or the relay carries it: `fetch` first and the relay when the
//! browser refuses (CORS, a network error) and the request can be replayed, always the relay,
//! or never, with per-destination exceptions in the allow/deny pattern syntax.
//!
//! Only `http://` goes this way: with a relay, HTTPS already travels end to end through CONNECT
//! and transparent 443, and an `https://` request that still reaches the transport (the
//! proxy's own TLS port) stays with `fetch()`.

use std::rc::Rc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use fetch_transport::relay::{Relay, RelayStream};
use fetch_transport::{Body, BodyError, DestinationFilter, Timer, Transport, TransportError};
use futures::io::{AsyncReadExt, AsyncWriteExt};
use futures::StreamExt;
use http::header::{CONTENT_LENGTH, HOST, TRANSFER_ENCODING};
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_proxy::body::decode::{Decoder, RequestFraming, Step};
use http_proxy::body::encode::{encode_chunk, LAST_CHUNK};

use crate::options::{RelayHttpMode, RelayOptions};

/// The header on every response that came through the relay, so a user (and a test) can
/// tell which way a request went.
pub const VIA_RELAY: (&str, &str) = ("x-c2w-via", "relay");
/// Largest response head read from an origin.
const MAX_HEAD: usize = 64 * 1024;
/// Headers a response may carry.
const MAX_HEADERS: usize = 128;
/// Longest chunk-size or trailer line.
const MAX_LINE: usize = 4096;
/// Largest body piece handed on at once.
const MAX_PIECE: usize = 64 * 1024;
/// Bytes read from the relay stream at once.
const READ_SIZE: usize = 16 * 1024;
/// How long a response through the relay may stay silent when the options set no `timeout`.
pub const RELAY_HTTP_IDLE: Duration = Duration::from_secs(60);

/// HTTP/1.1 to origins over relay streams, one stream per request, closed from our side once
/// the response is complete (the origin is not asked to close: wisp-js 0.5.0 drops data it
/// still holds when the origin closes first, and never closes the stream). A response that
/// sends nothing for `idle` fails, so a relay that stops mid-body cannot hang the guest.
pub struct RelayHttp {
    relay: Relay,
    options: Rc<RelayOptions>,
    destinations: DestinationFilter,
    timer: Rc<dyn Timer>,
    idle: Duration,
}

impl RelayHttp {
    /// Requests through `relay`, names mapped by `options.hosts`, destinations checked against
    /// the `allow`/`deny` options as the transport checks them; a response silent for `idle`
    /// (timed with `timer`) fails.
    pub fn new(
        relay: Relay,
        options: Rc<RelayOptions>,
        destinations: DestinationFilter,
        timer: Rc<dyn Timer>,
        idle: Duration,
    ) -> Self {
        Self {
            relay,
            options,
            destinations,
            timer,
            idle,
        }
    }

    /// Sends `request` (an absolute `http://` URI) and returns the response with its body
    /// streamed from the relay.
    pub async fn send(&self, request: Request<Body>) -> Result<Response<Body>, TransportError> {
        let url = request.uri().to_string();
        let blocked = |reason: String| TransportError::Blocked {
            url: url.clone(),
            reason,
        };
        let uri = request.uri();
        if uri.scheme_str() != Some("http") {
            return Err(TransportError::InvalidRequest {
                url: url.clone(),
                reason: "only http:// requests go through the relay".into(),
            });
        }
        let Some(host) = uri.host().map(|h| h.trim_matches(['[', ']']).to_string()) else {
            return Err(TransportError::InvalidRequest {
                url: url.clone(),
                reason: "no host".into(),
            });
        };
        if let Ok(parsed) = url::Url::parse(&url) {
            if let Err(reason) = self.destinations.check(&parsed) {
                return Err(TransportError::Denied {
                    url: url.clone(),
                    reason,
                });
            }
        }
        let port = uri.port_u16().unwrap_or(80);
        let authority = uri
            .authority()
            .map(|a| a.as_str().to_string())
            .unwrap_or_else(|| host.clone());
        let target = uri
            .path_and_query()
            .map(|p| p.as_str().to_string())
            .unwrap_or_else(|| "/".into());
        let method = request.method().clone();
        let (parts, body) = request.into_parts();
        let mut stream = self
            .relay
            .connect_tcp(self.options.target(&host), port)
            .await
            .map_err(|err| blocked(err.to_string()))?;
        let head = request_head(&method, &target, &authority, &parts.headers, body.len());
        stream
            .write_all(&head)
            .await
            .map_err(|err| blocked(format!("relay: {err}")))?;
        write_body(&mut stream, body, &url).await?;
        let idle = Idle {
            timer: self.timer.clone(),
            limit: self.idle,
        };
        read_response(stream, &method, &url, idle).await
    }
}

/// The request head as written to the origin: the guest's headers minus the hop-by-hop ones
/// and the body framing, which are the relay client's own.
fn request_head(
    method: &Method,
    target: &str,
    authority: &str,
    headers: &HeaderMap,
    body_len: Option<u64>,
) -> Vec<u8> {
    let mut head = format!("{method} {target} HTTP/1.1\r\n").into_bytes();
    let host = headers
        .get(HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or(authority);
    head.extend_from_slice(format!("Host: {host}\r\n").as_bytes());
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
    head.extend_from_slice(b"\r\n");
    head
}

/// Streams the request body: as is with a known length, else chunked.
async fn write_body(
    stream: &mut RelayStream,
    mut body: Body,
    url: &str,
) -> Result<(), TransportError> {
    let chunked = body.len().is_none();
    let failed = |reason: String| TransportError::Aborted {
        url: url.to_string(),
        reason,
    };
    let mut out = Vec::new();
    while let Some(piece) = body.next().await {
        let piece = piece.map_err(|err| failed(err.to_string()))?;
        if chunked {
            out.clear();
            encode_chunk(&piece, &mut out);
            stream.write_all(&out).await
        } else {
            stream.write_all(&piece).await
        }
        .map_err(|err| failed(format!("relay: {err}")))?;
    }
    if chunked {
        stream
            .write_all(LAST_CHUNK)
            .await
            .map_err(|err| failed(format!("relay: {err}")))?;
    }
    Ok(())
}

/// Reads the response head (skipping 1xx) and returns the response whose body streams the
/// rest of the connection.
async fn read_response(
    mut stream: RelayStream,
    method: &Method,
    url: &str,
    idle: Idle,
) -> Result<Response<Body>, TransportError> {
    let blocked = |reason: String| TransportError::Blocked {
        url: url.to_string(),
        reason,
    };
    let mut buf = BytesMut::new();
    loop {
        let (status, headers, used) = loop {
            if let Some(parsed) = parse_head(&buf).map_err(|e| blocked(e.to_string()))? {
                break parsed;
            }
            if buf.len() > MAX_HEAD {
                return Err(blocked(format!(
                    "the origin's response head is over {MAX_HEAD} bytes"
                )));
            }
            let n = read_more(&mut stream, &mut buf, &idle)
                .await
                .map_err(|err| blocked(format!("relay: {err}")))?;
            if n == 0 {
                return Err(blocked(if buf.is_empty() {
                    "the origin closed the connection without a response".into()
                } else {
                    "the origin closed the connection mid-head".into()
                }));
            }
        };
        let _ = buf.split_to(used);
        if status.is_informational() {
            continue;
        }
        let framing = response_framing(method, status, &headers)
            .map_err(|reason| blocked(reason.to_string()))?;
        let len = match framing {
            Framing::Decoded(RequestFraming::Length(n)) => Some(n),
            Framing::Decoded(RequestFraming::Empty) => Some(0),
            _ => None,
        };
        let mut response = Response::new(Body::from_stream(
            body_stream(stream, buf, framing, idle),
            len,
        ));
        *response.status_mut() = status;
        let mut kept = HeaderMap::new();
        for (name, value) in headers.iter() {
            if name == TRANSFER_ENCODING || fetch_transport::policy::is_hop_by_hop(name) {
                continue;
            }
            kept.append(name.clone(), value.clone());
        }
        kept.insert(VIA_RELAY.0, http::HeaderValue::from_static(VIA_RELAY.1));
        *response.headers_mut() = kept;
        return Ok(response);
    }
}

/// How long a response may stay silent.
#[derive(Clone)]
struct Idle {
    timer: Rc<dyn Timer>,
    limit: Duration,
}

/// Reads what the relay stream has into `buf`; an error after `idle.limit` without a byte.
async fn read_more(
    stream: &mut RelayStream,
    buf: &mut BytesMut,
    idle: &Idle,
) -> std::io::Result<usize> {
    let mut chunk = [0u8; READ_SIZE];
    let read = stream.read(&mut chunk);
    match futures::future::select(read, idle.timer.sleep(idle.limit)).await {
        futures::future::Either::Left((n, _)) => {
            let n = n?;
            buf.extend_from_slice(&chunk[..n]);
            Ok(n)
        }
        futures::future::Either::Right(_) => Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("nothing from the origin for {:?}", idle.limit),
        )),
    }
}

/// Why a response head was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
enum HeadError {
    #[error("malformed response head from the origin: {0}")]
    Malformed(String),
    #[error("unsupported Transfer-Encoding from the origin")]
    TransferEncoding,
    #[error("invalid Content-Length from the origin")]
    Length,
}

/// A complete head in `buf`: status, headers, and how many bytes it took.
fn parse_head(buf: &[u8]) -> Result<Option<(StatusCode, HeaderMap, usize)>, HeadError> {
    let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut response = httparse::Response::new(&mut slots);
    let used = match response.parse(buf) {
        Ok(httparse::Status::Complete(used)) => used,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(err) => return Err(HeadError::Malformed(err.to_string())),
    };
    let status = response
        .code
        .and_then(|c| StatusCode::from_u16(c).ok())
        .ok_or_else(|| HeadError::Malformed("bad status".into()))?;
    let mut headers = HeaderMap::new();
    for h in response.headers.iter() {
        let name = http::HeaderName::from_bytes(h.name.as_bytes())
            .map_err(|e| HeadError::Malformed(e.to_string()))?;
        let value = http::HeaderValue::from_bytes(h.value)
            .map_err(|e| HeadError::Malformed(e.to_string()))?;
        headers.append(name, value);
    }
    Ok(Some((status, headers, used)))
}

/// How a response body ends.
#[derive(Debug, Clone, Copy)]
enum Framing {
    /// Content-Length or chunked (or none at all).
    Decoded(RequestFraming),
    /// Until the origin closes.
    Close,
}

/// RFC 9112 §6.3 for a response to `method`.
fn response_framing(
    method: &Method,
    status: StatusCode,
    headers: &HeaderMap,
) -> Result<Framing, HeadError> {
    if *method == Method::HEAD
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        return Ok(Framing::Decoded(RequestFraming::Empty));
    }
    if let Some(te) = headers.get(TRANSFER_ENCODING) {
        let te = te.to_str().map_err(|_| HeadError::TransferEncoding)?;
        let last = te.rsplit(',').next().unwrap_or("").trim();
        return if last.eq_ignore_ascii_case("chunked") {
            Ok(Framing::Decoded(RequestFraming::Chunked))
        } else {
            // Not chunked last: the body runs to the close (RFC 9112 §6.3 item 4).
            Ok(Framing::Close)
        };
    }
    match headers.get(CONTENT_LENGTH) {
        Some(value) => {
            let n = value
                .to_str()
                .ok()
                .and_then(|v| v.trim().parse::<u64>().ok())
                .ok_or(HeadError::Length)?;
            Ok(Framing::Decoded(if n == 0 {
                RequestFraming::Empty
            } else {
                RequestFraming::Length(n)
            }))
        }
        None => Ok(Framing::Close),
    }
}

/// The response body, read from the relay stream as the proxy pulls it.
fn body_stream(
    stream: RelayStream,
    buf: BytesMut,
    framing: Framing,
    idle: Idle,
) -> impl futures::Stream<Item = Result<Bytes, BodyError>> {
    let decoder = match framing {
        Framing::Decoded(framing) => Some(Decoder::new(framing, MAX_LINE, MAX_PIECE)),
        Framing::Close => None,
    };
    futures::stream::unfold(Some((stream, buf, decoder)), move |state| {
        let idle = idle.clone();
        async move {
            let (mut stream, mut buf, mut decoder) = state?;
            loop {
                match decoder.as_mut() {
                    Some(d) => match d.decode(&mut buf) {
                        Ok(Step::Data(data)) => {
                            return Some((Ok(data), Some((stream, buf, decoder))))
                        }
                        Ok(Step::Done) => return None,
                        Ok(Step::NeedMore) => {}
                        Err(err) => return Some((Err(BodyError::new(err.to_string())), None)),
                    },
                    None if !buf.is_empty() => {
                        let data = buf.split().freeze();
                        return Some((Ok(data), Some((stream, buf, decoder))));
                    }
                    None => {}
                }
                match read_more(&mut stream, &mut buf, &idle).await {
                    Ok(0) => {
                        return match decoder {
                            None => None,
                            Some(d) => match d.finish() {
                                Ok(()) => None,
                                Err(err) => Some((Err(BodyError::new(err.to_string())), None)),
                            },
                        };
                    }
                    Ok(_) => {}
                    Err(err) => return Some((Err(BodyError::new(format!("relay: {err}"))), None)),
                }
            }
        }
    })
}

/// The proxy's transport with the relay beside it: decides per `http://` request which one
/// carries it (see the module docs).
pub struct ViaRelay {
    fetch: Rc<dyn Transport>,
    relay: RelayHttp,
    mode: RelayHttpMode,
    relay_only: DestinationFilter,
    fetch_only: DestinationFilter,
    /// Largest request body held for a replay through the relay.
    max_replay: usize,
}

impl ViaRelay {
    /// `fetch` and `relay` with the options' mode and exceptions; bodies up to `max_replay`
    /// bytes are held so a refused request can be sent again.
    pub fn new(
        fetch: Rc<dyn Transport>,
        relay: RelayHttp,
        mode: RelayHttpMode,
        relay_only: DestinationFilter,
        fetch_only: DestinationFilter,
        max_replay: usize,
    ) -> Self {
        Self {
            fetch,
            relay,
            mode,
            relay_only,
            fetch_only,
            max_replay,
        }
    }

    /// The mode for `url`: an exception when one matches, else the configured mode.
    fn mode_for(&self, url: &url::Url) -> RelayHttpMode {
        let listed =
            |filter: &DestinationFilter| !filter.allowed().is_empty() && filter.check(url).is_ok();
        if listed(&self.fetch_only) {
            RelayHttpMode::Never
        } else if listed(&self.relay_only) {
            RelayHttpMode::Always
        } else {
            self.mode
        }
    }
}

#[async_trait(?Send)]
impl Transport for ViaRelay {
    async fn send(&self, request: Request<Body>) -> Result<Response<Body>, TransportError> {
        let Ok(url) = url::Url::parse(&request.uri().to_string()) else {
            return self.fetch.send(request).await;
        };
        if url.scheme() != "http" {
            return self.fetch.send(request).await;
        }
        match self.mode_for(&url) {
            RelayHttpMode::Never => self.fetch.send(request).await,
            RelayHttpMode::Always => self.relay.send(request).await,
            RelayHttpMode::Fallback => {
                let (parts, body) = request.into_parts();
                let replayable = body.len().is_some_and(|n| n <= self.max_replay as u64);
                if !replayable {
                    return self.fetch.send(Request::from_parts(parts, body)).await;
                }
                let bytes =
                    body.collect(self.max_replay)
                        .await
                        .map_err(|err| TransportError::Aborted {
                            url: url.to_string(),
                            reason: err.to_string(),
                        })?;
                let first = Request::from_parts(parts.clone(), Body::full(bytes.clone()));
                match self.fetch.send(first).await {
                    Err(TransportError::Blocked { reason, .. }) => {
                        tracing::info!(%url, %reason, "fetch refused; trying the relay");
                        let again = Request::from_parts(parts, Body::full(bytes));
                        self.relay.send(again).await.map_err(|err| match err {
                            TransportError::Blocked { url, reason: relay } => {
                                TransportError::Blocked {
                                    url,
                                    reason: format!("{reason}; through the relay: {relay}"),
                                }
                            }
                            other => other,
                        })
                    }
                    other => other,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_request_head_drops_hop_by_hop_headers_and_frames_the_body_itself() {
        let mut headers = HeaderMap::new();
        headers.insert("Host", "site.test:8080".parse().unwrap());
        headers.insert("Connection", "keep-alive".parse().unwrap());
        headers.insert("Proxy-Authorization", "Basic x".parse().unwrap());
        headers.insert("Transfer-Encoding", "chunked".parse().unwrap());
        headers.insert("Accept", "*/*".parse().unwrap());
        let head = request_head(&Method::POST, "/p?q=1", "site.test:8080", &headers, Some(5));
        assert_eq!(
            String::from_utf8(head).unwrap(),
            "POST /p?q=1 HTTP/1.1\r\nHost: site.test:8080\r\naccept: */*\r\n\
             Content-Length: 5\r\n\r\n"
        );
        let head = request_head(&Method::GET, "/", "a.test", &HeaderMap::new(), Some(0));
        assert_eq!(
            String::from_utf8(head).unwrap(),
            "GET / HTTP/1.1\r\nHost: a.test\r\n\r\n"
        );
        let head = request_head(&Method::PUT, "/", "a.test", &HeaderMap::new(), None);
        assert!(String::from_utf8(head)
            .unwrap()
            .contains("Transfer-Encoding: chunked\r\n"));
    }

    #[test]
    fn response_framing_follows_rfc_9112() {
        let h = |pairs: &[(&str, &str)]| {
            let mut m = HeaderMap::new();
            for (k, v) in pairs {
                m.append(
                    http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                    v.parse().unwrap(),
                );
            }
            m
        };
        let get = Method::GET;
        let ok = StatusCode::OK;
        assert!(matches!(
            response_framing(&Method::HEAD, ok, &h(&[("content-length", "9")])),
            Ok(Framing::Decoded(RequestFraming::Empty))
        ));
        assert!(matches!(
            response_framing(&get, StatusCode::NOT_MODIFIED, &h(&[])),
            Ok(Framing::Decoded(RequestFraming::Empty))
        ));
        assert!(matches!(
            response_framing(&get, ok, &h(&[("transfer-encoding", "gzip, chunked")])),
            Ok(Framing::Decoded(RequestFraming::Chunked))
        ));
        assert!(matches!(
            response_framing(&get, ok, &h(&[("transfer-encoding", "gzip")])),
            Ok(Framing::Close)
        ));
        assert!(matches!(
            response_framing(&get, ok, &h(&[("content-length", "12")])),
            Ok(Framing::Decoded(RequestFraming::Length(12)))
        ));
        assert!(matches!(
            response_framing(&get, ok, &h(&[])),
            Ok(Framing::Close)
        ));
        assert_eq!(
            response_framing(&get, ok, &h(&[("content-length", "x")])).unwrap_err(),
            HeadError::Length
        );
    }

    #[test]
    fn heads_parse_or_wait_for_more() {
        assert!(parse_head(b"HTTP/1.1 200 OK\r\nContent-Le")
            .unwrap()
            .is_none());
        let (status, headers, used) = parse_head(b"HTTP/1.1 404 Not Found\r\nX-A: b\r\n\r\nbody")
            .unwrap()
            .unwrap();
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert_eq!(headers["x-a"], "b");
        assert_eq!(used, 34);
        assert!(parse_head(b"HTTP/1.1 abc\r\n\r\n").is_err());
    }
}
