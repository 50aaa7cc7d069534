//! Forwarding a request through the transport and relaying the origin's response to the guest.

use fetch_transport::Body;
use futures::io::AsyncWrite;
use http::StatusCode;

use crate::body::encode::ResponseFraming;
use crate::error::ServeError;
use crate::error_page::ErrorPage;
use crate::head::RequestHead;
use crate::io::Outbound;
use crate::refuse::{body_over_limit, refuse};
use crate::request_body::SharedDecoder;
use crate::respond::{write_page, write_response, Outcome};
use crate::stats::Counters;
use crate::Proxy;

/// Sends the request to `url` with `body` (streamed from the guest as the transport pulls it)
/// and relays the response; `state` tells afterwards how the body was read.
pub(crate) async fn forward<W: AsyncWrite + Unpin>(
    proxy: &Proxy,
    out: &mut Outbound<W>,
    head: &RequestHead,
    url: String,
    body: Body,
    state: &SharedDecoder,
    mut keep_alive: bool,
) -> Result<Outcome, ServeError> {
    let version = head.version;
    let request = match build_request(head, &url, body) {
        Ok(request) => request,
        Err(page) => return refuse(proxy, out, &page, &head.method, version).await,
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
    if let Some(page) = body_over_limit(proxy, state) {
        // The body stream failed, so the transport aborted the upstream request (or answers
        // without having sent the whole body): whatever it returned is dropped unread.
        drop(response);
        tracing::info!(method = %head.method, %url, "request body over the limit");
        return refuse(proxy, out, &page, &head.method, version).await;
    }
    let response = match response {
        Ok(response) => response,
        Err(err) => {
            tracing::info!(method = %head.method, %url, error = %err, "request failed");
            Counters::add(&proxy.counters.transport_errors, 1);
            let page = ErrorPage::for_transport_error(&err);
            write_page(proxy, out, &page, &head.method, version, keep_alive).await?;
            return Ok(Outcome::keep_alive_if(keep_alive));
        }
    };
    let relayed = relay(proxy, out, head, &url, response, keep_alive).await?;
    if state.borrow().too_large {
        // The body crossed the limit after the response had started: it cannot become a 413
        // any more, so the connection closes (the response is cut short or already whole).
        Counters::add(&proxy.counters.bodies_too_large, 1);
        if !relayed.complete {
            Counters::add(&proxy.counters.aborted_responses, 1);
        }
        tracing::info!(method = %head.method, %url, complete = relayed.complete, "request body over the limit mid-response; closing");
        return Ok(Outcome::Close);
    }
    let bytes = proxy.counters.bytes_to_guest.get() - started;
    tracing::info!(method = %head.method, %url, status = relayed.status.as_u16(), bytes, complete = relayed.complete, "request");
    if !relayed.complete {
        Counters::add(&proxy.counters.aborted_responses, 1);
        return Ok(Outcome::Close);
    }
    Ok(Outcome::keep_alive_if(relayed.keep_alive))
}

/// The request the transport is given: the guest's method and headers, at the absolute `url`.
fn build_request(
    head: &RequestHead,
    url: &str,
    body: Body,
) -> Result<http::Request<Body>, Box<ErrorPage>> {
    let mut request = http::Request::builder()
        .method(head.method.clone())
        .uri(url);
    if let Some(headers) = request.headers_mut() {
        *headers = head.headers.clone();
    }
    request.body(body).map_err(|err| {
        Box::new(ErrorPage::new(
            StatusCode::BAD_REQUEST,
            "bad-request",
            format!("cannot build request: {err}"),
        ))
    })
}

/// How relaying a response went.
struct Relayed {
    status: StatusCode,
    /// The body reached the guest whole.
    complete: bool,
    /// The connection may stay open (the framing did not need a close).
    keep_alive: bool,
}

/// Counts the response's status and streams it to the guest with the framing its version and
/// the request method allow.
async fn relay<W: AsyncWrite + Unpin>(
    proxy: &Proxy,
    out: &mut Outbound<W>,
    head: &RequestHead,
    url: &str,
    response: http::Response<Body>,
    mut keep_alive: bool,
) -> Result<Relayed, ServeError> {
    let version = head.version;
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
    Ok(Relayed {
        status,
        complete,
        keep_alive,
    })
}
