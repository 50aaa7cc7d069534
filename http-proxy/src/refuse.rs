//! Refusing a request: the pages for what the proxy does not carry, and answering with one
//! before closing the connection.

use std::cell::RefCell;
use std::rc::Rc;

use futures::io::AsyncWrite;
use http::{Method, StatusCode};

use crate::error::ServeError;
use crate::error_page::ErrorPage;
use crate::head::Version;
use crate::io::Outbound;
use crate::request_body::DecoderState;
use crate::respond::{write_page, Outcome};
use crate::stats::Counters;
use crate::Proxy;

/// Counts a bad request, answers it with `page` and closes the connection.
pub(crate) async fn refuse<W: AsyncWrite + Unpin>(
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

/// The 501 for a request with an `Upgrade` header (CONNECT included).
pub(crate) fn upgrade_unsupported() -> ErrorPage {
    ErrorPage::new(
        StatusCode::NOT_IMPLEMENTED,
        "unsupported",
        "protocol upgrades (e.g. WebSocket) cannot be carried over the browser's fetch()",
    )
}

/// The 413 for a request body over `Limits::max_request_body`.
pub(crate) fn body_too_large(limit: u64) -> ErrorPage {
    ErrorPage::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "body-too-large",
        format!("the request body is larger than this proxy's limit of {limit} bytes"),
    )
}

/// When the request body crossed the limit before any response was written: counts it and
/// returns the 413 to answer with.
pub(crate) fn body_over_limit(
    proxy: &Proxy,
    state: &Rc<RefCell<DecoderState>>,
) -> Option<ErrorPage> {
    let state = state.borrow();
    if !state.too_large {
        return None;
    }
    Counters::add(&proxy.counters.bodies_too_large, 1);
    Some(body_too_large(state.limit.unwrap_or(0)))
}
