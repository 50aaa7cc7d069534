//! One request on a connection (CONNECT aside, see `connect`): the checks that refuse it, then
//! the answer, either one of the proxy's own pages or the origin's response through the
//! transport.

use std::cell::RefCell;
use std::rc::Rc;

use fetch_transport::policy::PROXY_CONNECTION;
use fetch_transport::Body;
use futures::io::{AsyncRead, AsyncWrite};
use futures::StreamExt;
use http::header;
use http::StatusCode;

use crate::body::decode::{request_framing, Decoder, RequestFraming};
use crate::error::ServeError;
use crate::error_page::ErrorPage;
use crate::forward::forward;
use crate::head::{RequestHead, Version};
use crate::io::{Outbound, SharedInbound};
use crate::refuse::{body_over_limit, body_too_large, refuse, upgrade_unsupported};
use crate::request_body::{DecoderState, RequestBody, SharedDecoder};
use crate::respond::{write_page, Outcome};
use crate::route::{route, Mode, Route};
use crate::stats::Counters;
use crate::Proxy;

/// Answers one request and says whether the connection stays open.
pub(crate) async fn handle<R, W>(
    proxy: &Proxy,
    inbound: &SharedInbound<R>,
    out: &mut Outbound<W>,
    mode: &Mode,
    head: RequestHead,
) -> Result<Outcome, ServeError>
where
    R: AsyncRead + Unpin + 'static,
    W: AsyncWrite + Unpin,
{
    let version = head.version;
    let keep_alive = wants_keep_alive(&head);
    if head.headers.contains_key(header::UPGRADE) {
        return refuse(proxy, out, &upgrade_unsupported(), &head.method, version).await;
    }
    let framing = match request_framing(&head.headers, version) {
        Ok(f) => f,
        Err(err) => {
            let page = ErrorPage::new(StatusCode::BAD_REQUEST, "bad-request", err.to_string());
            return refuse(proxy, out, &page, &head.method, version).await;
        }
    };
    let route = match route(proxy, &head, mode) {
        Ok(route) => route,
        Err(page) => return refuse(proxy, out, &page, &head.method, version).await,
    };
    let limits = &proxy.config.limits;
    if let (RequestFraming::Length(n), Some(limit)) = (framing, limits.max_request_body) {
        if n > limit {
            // Refused before anything is read or sent upstream (and before 100 Continue).
            Counters::add(&proxy.counters.bodies_too_large, 1);
            let page = body_too_large(limit);
            return refuse(proxy, out, &page, &head.method, version).await;
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

    match route {
        Route::OwnPage(path) => {
            answer_own_page(proxy, inbound, out, &head, &path, &state, keep_alive).await
        }
        Route::Forward(url) => {
            let body = request_body(framing, inbound, &state);
            forward(proxy, out, &head, url, body, &state, keep_alive).await
        }
    }
}

/// True when the request asks for the connection to stay open.
fn wants_keep_alive(head: &RequestHead) -> bool {
    let mut close = false;
    let mut keep = false;
    for name in [header::CONNECTION.as_str(), PROXY_CONNECTION] {
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

fn expects_continue(head: &RequestHead) -> bool {
    head.version == Version::Http11
        && head
            .headers
            .get(header::EXPECT)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.trim().eq_ignore_ascii_case("100-continue"))
}

/// The request body as the transport pulls it from the connection.
fn request_body<R: AsyncRead + Unpin + 'static>(
    framing: RequestFraming,
    inbound: &SharedInbound<R>,
    state: &SharedDecoder,
) -> Body {
    match framing {
        RequestFraming::Empty => Body::empty(),
        RequestFraming::Length(n) => {
            Body::from_stream(RequestBody::new(inbound.clone(), state.clone()), Some(n))
        }
        RequestFraming::Chunked => {
            Body::from_stream(RequestBody::new(inbound.clone(), state.clone()), None)
        }
    }
}

/// Answers a request addressed to the proxy itself, after reading its body to the end.
async fn answer_own_page<R, W>(
    proxy: &Proxy,
    inbound: &SharedInbound<R>,
    out: &mut Outbound<W>,
    head: &RequestHead,
    path: &str,
    state: &SharedDecoder,
    keep_alive: bool,
) -> Result<Outcome, ServeError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let version = head.version;
    let body_done = drain_body(inbound, state).await;
    if let Some(page) = body_over_limit(proxy, state) {
        return refuse(proxy, out, &page, &head.method, version).await;
    }
    let page = proxy.own_page(&head.method, path);
    let keep_alive = keep_alive && body_done;
    write_page(proxy, out, &page, &head.method, version, keep_alive).await?;
    Ok(Outcome::keep_alive_if(keep_alive))
}

/// Reads and discards a request body addressed to the proxy itself; false when it could not
/// be read to its end (the connection then closes).
async fn drain_body<R: AsyncRead + Unpin>(
    inbound: &SharedInbound<R>,
    state: &SharedDecoder,
) -> bool {
    let mut body = RequestBody::new(inbound.clone(), state.clone());
    while let Some(piece) = body.next().await {
        if piece.is_err() {
            return false;
        }
    }
    true
}
