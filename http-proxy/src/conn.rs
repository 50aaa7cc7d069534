//! One guest connection: read request heads, forward each request through the transport,
//! stream the response back, repeat while keep-alive allows.

use std::cell::RefCell;
use std::io;
use std::rc::Rc;

use bytes::Bytes;
use fetch_transport::Body;
use futures::future::{self, LocalBoxFuture};
use futures::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use futures::StreamExt;
use http::header::{self, HeaderValue};
use http::{HeaderMap, Method, StatusCode};

use crate::body::decode::{request_framing, Decoder, RequestFraming};
use crate::body::encode::{encode_chunk, write_response_head, ResponseFraming, LAST_CHUNK};
use crate::error_page::ErrorPage;
use crate::head::{parse_request_head, RequestHead, Version};
use crate::io::{BoxedStream, Inbound, Outbound, Prefixed};
use crate::request_body::{DecoderState, RequestBody};
use crate::stats::Counters;
use crate::target::{origin_from_host_header, parse_target, Origin, Scheme, Target};
use crate::Proxy;

/// How request-targets on a connection are interpreted.
#[derive(Debug, Clone)]
pub(crate) enum Mode {
    /// A forward proxy: absolute-form requests; origin-form requests are for the proxy's own
    /// pages.
    Forward,
    /// Requests to an origin (inside a CONNECT tunnel, TLS to the proxy, or a transparently
    /// intercepted connection): origin-form targets at `origin` if fixed, else at the Host
    /// header, else at `fallback`.
    Origin {
        /// The scheme the guest used (https inside TLS).
        scheme: Scheme,
        /// The origin fixed by a CONNECT target, if any (wins over the Host header).
        fixed: Option<Origin>,
        /// Used when there is no Host header (e.g. the name a fake IP stands for).
        fallback: Option<Origin>,
    },
}

/// Why serving a connection ended early (logged by the embedder; the guest already got
/// whatever answer could be given).
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// Reading from or writing to the guest failed or timed out.
    #[error("guest connection: {0}")]
    Io(#[from] io::Error),
}

enum Outcome {
    KeepAlive,
    Close,
    /// CONNECT was accepted: the rest of the stream is a tunnel to this origin.
    Tunnel(Origin),
}

/// Serves HTTP/1.1 on `stream` until the guest closes it, an error closes it, or keep-alive
/// ends. A CONNECT continues as a tunnel on the same stream (boxed: it recurses).
pub(crate) fn serve<'a>(
    proxy: &'a Proxy,
    stream: BoxedStream,
    mode: Mode,
) -> LocalBoxFuture<'a, Result<(), ServeError>> {
    Box::pin(async move {
        let limits = &proxy.config.limits;
        let (reader, writer) = stream.split();
        let inbound = Rc::new(RefCell::new(Inbound::new(
            reader,
            limits.max_body_piece,
            proxy.timer.clone(),
            limits.idle_timeout,
        )));
        let mut out = Outbound::new(writer, proxy.timer.clone(), limits.io_timeout);
        let result = serve_requests(proxy, &inbound, &mut out, &mode).await;
        match result {
            Ok(Some(origin)) => {
                // Hand the same byte stream, with what was read ahead, to the tunnel.
                let Ok(inbound) = Rc::try_unwrap(inbound) else {
                    let _ = out.close().await;
                    return Ok(());
                };
                let (reader, read_ahead) = inbound.into_inner().into_parts();
                let Ok(stream) = reader.reunite(out.into_inner()) else {
                    return Ok(());
                };
                let stream: BoxedStream = Box::new(Prefixed::new(read_ahead, stream));
                crate::tls::tunnel(proxy, stream, origin).await
            }
            Ok(None) => {
                let _ = out.close().await;
                Ok(())
            }
            Err(err) => {
                let _ = out.close().await;
                Err(err)
            }
        }
    })
}

async fn serve_requests<R, W>(
    proxy: &Proxy,
    inbound: &Rc<RefCell<Inbound<R>>>,
    out: &mut Outbound<W>,
    mode: &Mode,
) -> Result<Option<Origin>, ServeError>
where
    R: AsyncRead + Unpin + 'static,
    W: AsyncWrite + Unpin,
{
    loop {
        let head = match read_head(proxy, inbound).await {
            Ok(Some(head)) => head,
            Ok(None) => return Ok(None),
            Err(HeadRead::Rejected(page)) => {
                Counters::add(&proxy.counters.bad_requests, 1);
                if page.status == StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE {
                    Counters::add(&proxy.counters.heads_too_large, 1);
                }
                write_page(proxy, out, &page, &Method::GET, Version::Http11, false).await?;
                return Ok(None);
            }
            Err(HeadRead::Io(err)) if err.kind() == io::ErrorKind::TimedOut => return Ok(None),
            Err(HeadRead::Io(err)) => return Err(err.into()),
        };
        Counters::add(&proxy.counters.requests, 1);
        match handle_request(proxy, inbound, out, mode, head).await? {
            Outcome::KeepAlive => continue,
            Outcome::Close => return Ok(None),
            Outcome::Tunnel(origin) => return Ok(Some(origin)),
        }
    }
}

enum HeadRead {
    Rejected(ErrorPage),
    Io(io::Error),
}

async fn read_head<R: AsyncRead + Unpin>(
    proxy: &Proxy,
    inbound: &Rc<RefCell<Inbound<R>>>,
) -> Result<Option<RequestHead>, HeadRead> {
    loop {
        let empty = match parse_buffered_head(proxy, &mut inbound.borrow_mut()) {
            HeadStep::Done(result) => return result,
            HeadStep::NeedMore { empty } => empty,
        };
        // Borrow only inside each poll: the RefCell is never held across the await.
        match future::poll_fn(|cx| inbound.borrow_mut().poll_fill(cx)).await {
            Ok(0) if empty => return Ok(None),
            Ok(0) => {
                let page = ErrorPage::new(
                    StatusCode::BAD_REQUEST,
                    "bad-request",
                    "connection closed inside the request head",
                );
                return Err(HeadRead::Rejected(page));
            }
            Ok(_) => {}
            Err(err) => return Err(HeadRead::Io(err)),
        }
    }
}

enum HeadStep {
    Done(Result<Option<RequestHead>, HeadRead>),
    NeedMore { empty: bool },
}

/// Parses a head from the bytes already buffered, or says more are needed (and sets the
/// read timeout: idle between requests, I/O inside one).
fn parse_buffered_head<R: AsyncRead + Unpin>(proxy: &Proxy, inbound: &mut Inbound<R>) -> HeadStep {
    let limits = &proxy.config.limits;
    // Tolerate the empty lines some clients send between requests (RFC 9112 §2.2).
    while inbound.buf.starts_with(b"\r\n") {
        let _ = inbound.buf.split_to(2);
    }
    if inbound.buf.starts_with(b"PRI * HTTP/2") {
        let page = ErrorPage::new(
            StatusCode::NOT_IMPLEMENTED,
            "unsupported",
            "HTTP/2 with prior knowledge is not supported; use HTTP/1.1",
        );
        return HeadStep::Done(Err(HeadRead::Rejected(page)));
    }
    if !inbound.buf.is_empty() {
        match parse_request_head(&inbound.buf, limits) {
            Ok(Some((head, len))) => {
                let _ = inbound.buf.split_to(len);
                return HeadStep::Done(Ok(Some(head)));
            }
            Ok(None) => {}
            Err(err) => {
                let page = ErrorPage::new(err.status(), "bad-request", err.to_string());
                return HeadStep::Done(Err(HeadRead::Rejected(page)));
            }
        }
    }
    let empty = inbound.buf.is_empty();
    inbound.set_timeout(if empty {
        limits.idle_timeout
    } else {
        limits.io_timeout
    });
    HeadStep::NeedMore { empty }
}

/// True when the request asks for the connection to stay open.
fn wants_keep_alive(head: &RequestHead) -> bool {
    let mut close = false;
    let mut keep = false;
    for name in [header::CONNECTION.as_str(), "proxy-connection"] {
        for value in head.headers.get_all(name) {
            for token in value.to_str().unwrap_or("").split(',') {
                let token = token.trim();
                close |= token.eq_ignore_ascii_case("close");
                keep |= token.eq_ignore_ascii_case("keep-alive");
            }
        }
    }
    match head.version {
        Version::Http11 => !close,
        Version::Http10 => keep && !close,
    }
}

/// Where a request goes, or an answer made here.
enum Route {
    /// The absolute URL the transport is asked for.
    Forward(String),
    OwnPage(String),
}

fn route(proxy: &Proxy, head: &RequestHead, mode: &Mode) -> Result<Route, Box<ErrorPage>> {
    let bad = |msg: String| Box::new(ErrorPage::new(StatusCode::BAD_REQUEST, "bad-request", msg));
    let target = parse_target(&head.target, false).map_err(|e| bad(e.to_string()))?;
    match (mode, target) {
        (
            _,
            Target::Absolute {
                origin,
                path_and_query,
            },
        ) => {
            if proxy.is_own_host(&origin.host.bare()) && origin.scheme == Scheme::Http {
                return Ok(Route::OwnPage(path_and_query));
            }
            Ok(Route::Forward(origin.url(&path_and_query)))
        }
        (Mode::Forward, Target::Origin(path)) => Ok(Route::OwnPage(path)),
        (
            Mode::Origin {
                scheme,
                fixed,
                fallback,
            },
            Target::Origin(path),
        ) => {
            let origin = match fixed {
                Some(origin) => origin.clone(),
                None => match head.headers.get(header::HOST).and_then(|v| v.to_str().ok()) {
                    Some(host) => {
                        origin_from_host_header(host, *scheme).map_err(|e| bad(e.to_string()))?
                    }
                    None => fallback
                        .clone()
                        .ok_or_else(|| bad("missing Host header".into()))?,
                },
            };
            if proxy.is_own_host(&origin.host.bare()) {
                return Ok(Route::OwnPage(path));
            }
            Ok(Route::Forward(origin.url(&path)))
        }
        (_, Target::Asterisk) => Err(bad("OPTIONS * is not supported by this proxy".into())),
        (_, Target::Authority { .. }) => {
            Err(bad("authority-form is only valid with CONNECT".into()))
        }
    }
}

async fn handle_request<R, W>(
    proxy: &Proxy,
    inbound: &Rc<RefCell<Inbound<R>>>,
    out: &mut Outbound<W>,
    mode: &Mode,
    head: RequestHead,
) -> Result<Outcome, ServeError>
where
    R: AsyncRead + Unpin + 'static,
    W: AsyncWrite + Unpin,
{
    let version = head.version;
    let mut keep_alive = wants_keep_alive(&head);
    let reject =
        |status: StatusCode, kind: &'static str, msg: &str| ErrorPage::new(status, kind, msg);

    if head.headers.contains_key(header::UPGRADE) {
        let page = reject(
            StatusCode::NOT_IMPLEMENTED,
            "unsupported",
            "protocol upgrades (e.g. WebSocket) cannot be carried over the browser's fetch()",
        );
        return reject_and_close(proxy, out, &page, &head.method, version).await;
    }
    if head.method == Method::CONNECT {
        return connect(proxy, inbound, out, mode, &head).await;
    }
    let framing = match request_framing(&head.headers, version) {
        Ok(f) => f,
        Err(err) => {
            let page = reject(StatusCode::BAD_REQUEST, "bad-request", &err.to_string());
            return reject_and_close(proxy, out, &page, &head.method, version).await;
        }
    };
    let route = match route(proxy, &head, mode) {
        Ok(route) => route,
        Err(page) => return reject_and_close(proxy, out, &page, &head.method, version).await,
    };
    let limits = &proxy.config.limits;
    if let (RequestFraming::Length(n), Some(limit)) = (framing, limits.max_request_body) {
        if n > limit {
            // Refused before anything is read or sent upstream (and before 100 Continue).
            Counters::add(&proxy.counters.bodies_too_large, 1);
            let page = body_too_large(limit);
            return reject_and_close(proxy, out, &page, &head.method, version).await;
        }
    }
    if framing != RequestFraming::Empty && expects_continue(&head) {
        out.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").await?;
    }

    let state = Rc::new(RefCell::new(DecoderState::new(
        Decoder::new(framing, limits.max_chunk_line_bytes, limits.max_body_piece),
        limits.max_request_body,
    )));
    inbound.borrow_mut().set_timeout(limits.io_timeout);

    let url = match route {
        Route::OwnPage(path) => {
            let body_done = drain_body(inbound, &state).await;
            if let Some(page) = body_over_limit(proxy, &state) {
                return reject_and_close(proxy, out, &page, &head.method, version).await;
            }
            let page = proxy.own_page(&head.method, &path);
            write_page(
                proxy,
                out,
                &page,
                &head.method,
                version,
                keep_alive && body_done,
            )
            .await?;
            return Ok(if keep_alive && body_done {
                Outcome::KeepAlive
            } else {
                Outcome::Close
            });
        }
        Route::Forward(url) => url,
    };

    let body = match framing {
        RequestFraming::Empty => Body::empty(),
        RequestFraming::Length(n) => {
            Body::from_stream(RequestBody::new(inbound.clone(), state.clone()), Some(n))
        }
        RequestFraming::Chunked => {
            Body::from_stream(RequestBody::new(inbound.clone(), state.clone()), None)
        }
    };
    let mut request = http::Request::builder()
        .method(head.method.clone())
        .uri(url.as_str());
    if let Some(headers) = request.headers_mut() {
        *headers = head.headers.clone();
    }
    let request = match request.body(body) {
        Ok(r) => r,
        Err(err) => {
            let page = reject(
                StatusCode::BAD_REQUEST,
                "bad-request",
                &format!("cannot build request: {err}"),
            );
            return reject_and_close(proxy, out, &page, &head.method, version).await;
        }
    };
    let started = proxy.counters.bytes_to_guest.get();
    let response = proxy.transport.send(request).await;
    let body_done = {
        let st = state.borrow();
        Counters::add(&proxy.counters.bytes_from_guest, st.decoded);
        st.decoder.is_done() && !st.failed
    };
    if !body_done {
        keep_alive = false;
    }
    if let Some(page) = body_over_limit(proxy, &state) {
        // The body stream failed, so the transport aborted the upstream request (or answers
        // without having sent the whole body): whatever it returned is dropped unread.
        drop(response);
        tracing::info!(method = %head.method, %url, "request body over the limit");
        return reject_and_close(proxy, out, &page, &head.method, version).await;
    }
    let response = match response {
        Ok(response) => response,
        Err(err) => {
            tracing::info!(method = %head.method, %url, error = %err, "request failed");
            Counters::add(&proxy.counters.transport_errors, 1);
            let page = ErrorPage::for_transport_error(&err);
            write_page(proxy, out, &page, &head.method, version, keep_alive).await?;
            return Ok(if keep_alive {
                Outcome::KeepAlive
            } else {
                Outcome::Close
            });
        }
    };
    let status = response.status();
    if status.as_u16() >= 400 {
        Counters::add(&proxy.counters.responses_error_status, 1);
    } else {
        Counters::add(&proxy.counters.responses_ok, 1);
    }
    let (parts, body) = response.into_parts();
    let framing = ResponseFraming::choose(&head.method, status, body.len(), version);
    if framing.needs_close() {
        keep_alive = false;
    }
    let complete = write_response(
        proxy,
        out,
        status,
        &parts.headers,
        framing,
        body,
        keep_alive,
        version,
    )
    .await
    .inspect_err(|err| {
        // The guest went away (or stalled past the I/O deadline) mid-response: still a cut
        // response, counted and logged like one the origin cut short.
        Counters::add(&proxy.counters.aborted_responses, 1);
        tracing::info!(method = %head.method, %url, status = status.as_u16(), error = %err, "response to the guest cut short");
    })?;
    if state.borrow().too_large {
        // The body crossed the limit after the response had started: it cannot become a 413
        // any more, so the connection closes (the response is cut short or already whole).
        Counters::add(&proxy.counters.bodies_too_large, 1);
        if !complete {
            Counters::add(&proxy.counters.aborted_responses, 1);
        }
        tracing::info!(method = %head.method, %url, complete, "request body over the limit mid-response; closing");
        return Ok(Outcome::Close);
    }
    let bytes = proxy.counters.bytes_to_guest.get() - started;
    tracing::info!(method = %head.method, %url, status = status.as_u16(), bytes, complete, "request");
    if !complete {
        Counters::add(&proxy.counters.aborted_responses, 1);
        return Ok(Outcome::Close);
    }
    Ok(if keep_alive {
        Outcome::KeepAlive
    } else {
        Outcome::Close
    })
}

/// Accepts a CONNECT: answers 200 and turns the connection into a tunnel whose TLS the proxy
/// terminates with a leaf for the target.
async fn connect<R, W>(
    proxy: &Proxy,
    inbound: &Rc<RefCell<Inbound<R>>>,
    out: &mut Outbound<W>,
    mode: &Mode,
    head: &RequestHead,
) -> Result<Outcome, ServeError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let version = head.version;
    let unsupported = |msg: &str| ErrorPage::new(StatusCode::NOT_IMPLEMENTED, "unsupported", msg);
    if !matches!(mode, Mode::Forward) {
        return reject_and_close(
            proxy,
            out,
            &unsupported("CONNECT is only accepted by the forward proxy port"),
            &head.method,
            version,
        )
        .await;
    }
    if proxy.issuer.is_none() {
        let page = unsupported("this proxy has no CA, so it cannot terminate TLS for CONNECT");
        return reject_and_close(proxy, out, &page, &head.method, version).await;
    }
    let (host, port) = match parse_target(&head.target, true) {
        Ok(Target::Authority { host, port }) => (host, port),
        Ok(_) | Err(_) => {
            let page = ErrorPage::new(
                StatusCode::BAD_REQUEST,
                "bad-request",
                "CONNECT needs a host:port target",
            );
            return reject_and_close(proxy, out, &page, &head.method, version).await;
        }
    };
    if !matches!(
        request_framing(&head.headers, version),
        Ok(RequestFraming::Empty)
    ) {
        let page = ErrorPage::new(
            StatusCode::BAD_REQUEST,
            "bad-request",
            "CONNECT must not have a body",
        );
        return reject_and_close(proxy, out, &page, &head.method, version).await;
    }
    let _ = inbound;
    out.write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
        .await?;
    Ok(Outcome::Tunnel(Origin {
        scheme: Scheme::Https,
        host,
        port,
    }))
}

/// The 413 for a request body over `Limits::max_request_body`.
fn body_too_large(limit: u64) -> ErrorPage {
    ErrorPage::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "body-too-large",
        format!("the request body is larger than this proxy's limit of {limit} bytes"),
    )
}

/// When the request body crossed the limit before any response was written: counts it and
/// returns the 413 to answer with.
fn body_over_limit(proxy: &Proxy, state: &Rc<RefCell<DecoderState>>) -> Option<ErrorPage> {
    let state = state.borrow();
    if !state.too_large {
        return None;
    }
    Counters::add(&proxy.counters.bodies_too_large, 1);
    Some(body_too_large(state.limit.unwrap_or(0)))
}

fn expects_continue(head: &RequestHead) -> bool {
    head.version == Version::Http11
        && head
            .headers
            .get(header::EXPECT)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.trim().eq_ignore_ascii_case("100-continue"))
}

/// Reads and discards a request body addressed to the proxy itself; false when it could not
/// be read to its end (the connection then closes).
async fn drain_body<R: AsyncRead + Unpin>(
    inbound: &Rc<RefCell<Inbound<R>>>,
    state: &Rc<RefCell<DecoderState>>,
) -> bool {
    let mut body = RequestBody::new(inbound.clone(), state.clone());
    while let Some(piece) = body.next().await {
        if piece.is_err() {
            return false;
        }
    }
    true
}

async fn reject_and_close<W: AsyncWrite + Unpin>(
    proxy: &Proxy,
    out: &mut Outbound<W>,
    page: &ErrorPage,
    method: &Method,
    version: Version,
) -> Result<Outcome, ServeError> {
    Counters::add(&proxy.counters.bad_requests, 1);
    write_page(proxy, out, page, method, version, false).await?;
    Ok(Outcome::Close)
}

/// Writes a response the proxy made itself (an error or one of its own pages), framed with
/// its length, with no body for HEAD (and 204/304).
async fn write_page<W: AsyncWrite + Unpin>(
    proxy: &Proxy,
    out: &mut Outbound<W>,
    page: &ErrorPage,
    method: &Method,
    version: Version,
    keep_alive: bool,
) -> Result<(), ServeError> {
    let len = page.body.len() as u64;
    let framing = ResponseFraming::choose(method, page.status, Some(len), version);
    let mut buf = Vec::with_capacity(256 + page.body.len());
    write_response_head(
        &mut buf,
        page.status,
        &page.headers,
        framing,
        keep_alive,
        version,
    );
    if framing != ResponseFraming::NoBody {
        buf.extend_from_slice(&page.body);
    }
    Counters::add(&proxy.counters.bytes_to_guest, buf.len() as u64);
    out.write_all(&buf).await?;
    Ok(())
}

/// Streams a response to the guest. Returns false when the body could not be delivered whole
/// (the origin's body failed or did not match its announced length): the connection is then
/// closed so the guest sees a truncated response, never a silently short success.
#[allow(clippy::too_many_arguments)]
async fn write_response<W: AsyncWrite + Unpin>(
    proxy: &Proxy,
    out: &mut Outbound<W>,
    status: StatusCode,
    headers: &HeaderMap,
    framing: ResponseFraming,
    mut body: Body,
    keep_alive: bool,
    version: Version,
) -> Result<bool, ServeError> {
    let mut buf = Vec::with_capacity(1024);
    write_response_head(&mut buf, status, headers, framing, keep_alive, version);
    Counters::add(&proxy.counters.bytes_to_guest, buf.len() as u64);
    out.write_all(&buf).await?;
    if framing == ResponseFraming::NoBody {
        return Ok(true);
    }
    let mut sent: u64 = 0;
    while let Some(piece) = body.next().await {
        let data: Bytes = match piece {
            Ok(data) => data,
            Err(err) => {
                tracing::info!(error = %err, "origin body failed; closing the guest connection");
                return Ok(false);
            }
        };
        sent += data.len() as u64;
        if let ResponseFraming::Length(n) = framing {
            if sent > n {
                tracing::info!(
                    announced = n,
                    "origin sent more than its Content-Length; closing"
                );
                return Ok(false);
            }
        }
        Counters::add(&proxy.counters.bytes_to_guest, data.len() as u64);
        if framing == ResponseFraming::Chunked {
            buf.clear();
            encode_chunk(&data, &mut buf);
            out.write_all(&buf).await?;
        } else {
            out.write_all(&data).await?;
        }
    }
    match framing {
        ResponseFraming::Length(n) if sent != n => {
            tracing::info!(
                announced = n,
                sent,
                "origin body shorter than announced; closing"
            );
            Ok(false)
        }
        ResponseFraming::Chunked => {
            out.write_all(LAST_CHUNK).await?;
            Counters::add(&proxy.counters.bytes_to_guest, LAST_CHUNK.len() as u64);
            Ok(true)
        }
        _ => Ok(true),
    }
}

/// The `Content-Type` value for the CA certificate download.
pub(crate) const PEM_CONTENT_TYPE: HeaderValue = HeaderValue::from_static("application/x-pem-file");
