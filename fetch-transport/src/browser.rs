//! The browser backend: the global `fetch()` (window, worker or node) called directly through
//! web-sys, with `mode: "cors"`, `credentials: "omit"` always and `redirect: "follow"`.
//!
//! Response bodies are read from `Response.body` piece by piece (see [`reader`]): the chunk the
//! browser delivers stays in JS memory and at most 64 KiB of it is copied into wasm memory at a
//! time, only when the consumer asks. Browsers differ wildly in chunk size (Chromium ≤ 64 KiB,
//! Firefox as much as it has buffered); wasm memory never shrinks, so it must not depend on that.
//!
//! Request bodies are collected whole up to [`TransportConfig::max_request_body`] (default
//! 64 MiB), larger ones fail with [`TransportError::BodyTooLarge`]: streaming uploads need
//! `duplex: "half"` and HTTP/2, which not every browser (nor every origin) offers.
//!
//! One `AbortController` per request: it fires when the response head does not arrive within
//! the configured timeout, when the `send` future is dropped, and when the response body is
//! dropped before its end (a guest that disconnects stops the download).

mod reader;

use std::future::Future;
use std::pin::pin;
use std::rc::Rc;

use async_trait::async_trait;
use bytes::Bytes;
use futures::future::{select, Either};
use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::{Method, StatusCode};
use url::Url;
use wasm_bindgen::prelude::*;
use wasm_bindgen_futures::JsFuture;

use crate::config::TransportConfig;
use crate::policy::{self, BodyDecoding, HeaderPolicy, PreparedRequest};
use crate::{Body, CollectError, Timer, Transport, TransportError};

pub(crate) use reader::describe;
use reader::{AbortOnDrop, ResponseBody};

/// What a fetch() rejection (a TypeError) means, as far as a page can know.
const REFUSED: &str = "the browser refused the request (CORS policy or network error)";

#[wasm_bindgen]
extern "C" {
    /// The global `fetch`, looked up when called: works on a page, in a worker and in node.
    #[wasm_bindgen(catch, js_name = fetch)]
    fn global_fetch(request: &web_sys::Request) -> Result<js_sys::Promise, JsValue>;
}

/// Sends requests with the browser's (or node's) `fetch()`, or with a function the embedder
/// gives in its place ([`FetchTransport::with_fetch`]).
#[derive(Clone)]
pub struct FetchTransport {
    config: TransportConfig,
    timer: Rc<dyn Timer>,
    /// The embedder's `fetch` (same signature), called instead of the global one.
    fetch: Option<js_sys::Function>,
}

impl std::fmt::Debug for FetchTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FetchTransport")
            .field("config", &self.config)
            .field("custom_fetch", &self.fetch.is_some())
            .finish_non_exhaustive()
    }
}

impl FetchTransport {
    /// A transport applying `config` and the browser header policy; the response-head timeout
    /// runs on `timer` (the embedder's runtime).
    pub fn new(config: TransportConfig, timer: Rc<dyn Timer>) -> Self {
        Self {
            config,
            timer,
            fetch: None,
        }
    }

    /// Calls `fetch` (a function taking a `Request` and returning a `Response` or a promise of
    /// one) instead of the global `fetch()`: a page can add credentials, answer some URLs
    /// itself or route requests elsewhere, and everything after it (header policy, limits,
    /// streaming, timeouts) stays the same.
    pub fn with_fetch(mut self, fetch: js_sys::Function) -> Self {
        self.fetch = Some(fetch);
        self
    }

    /// The configuration in use.
    pub fn config(&self) -> &TransportConfig {
        &self.config
    }
}

#[async_trait(?Send)]
impl Transport for FetchTransport {
    async fn send(
        &self,
        request: http::Request<Body>,
    ) -> Result<http::Response<Body>, TransportError> {
        let policy = HeaderPolicy::Browser {
            keep_user_agent: self.config.keep_user_agent,
        };
        let PreparedRequest {
            method,
            guest_url,
            fetch_url,
            headers,
            body,
            ..
        } = policy::prepare(&self.config, request, policy)?;

        let limit = self.config.max_request_body;
        let bytes = body
            .collect(usize::try_from(limit).unwrap_or(usize::MAX))
            .await
            .map_err(|e| match e {
                CollectError::TooLarge { .. } => TransportError::BodyTooLarge {
                    url: guest_url.clone(),
                    limit,
                },
                CollectError::Body(e) => TransportError::Aborted {
                    url: guest_url.clone(),
                    reason: format!("the request body failed: {}", e.reason),
                },
            })?;
        if !bytes.is_empty() && (method == Method::GET || method == Method::HEAD) {
            return Err(TransportError::InvalidRequest {
                url: guest_url,
                reason: format!("the browser cannot send a {method} request with a body"),
            });
        }

        let invalid = |reason: String| TransportError::InvalidRequest {
            url: guest_url.clone(),
            reason,
        };
        let abort = AbortOnDrop::new()
            .map_err(|e| invalid(format!("no AbortController here: {}", describe(&e))))?;
        let js_request = build_request(&method, &fetch_url, &headers, bytes, &abort)
            .map_err(|reason| invalid(format!("the browser rejected the request: {reason}")))?;
        let promise = match &self.fetch {
            None => global_fetch(&js_request).map_err(|e| TransportError::Blocked {
                url: guest_url.clone(),
                reason: format!("fetch() cannot be called here: {}", describe(&e)),
            })?,
            Some(fetch) => fetch
                .call1(&JsValue::UNDEFINED, &js_request)
                // A plain value or a thenable: either way a promise to await.
                .map(|value| js_sys::Promise::resolve(&value))
                .map_err(|e| TransportError::Blocked {
                    url: guest_url.clone(),
                    reason: format!("the page's fetch function threw: {}", describe(&e)),
                })?,
        };
        drop(js_request);
        let sent = JsFuture::from(promise);
        let result = match self.config.timeout {
            Some(limit) => match with_timeout(sent, self.timer.sleep(limit)).await {
                Some(result) => result,
                None => {
                    abort.abort();
                    return Err(TransportError::Timeout {
                        url: guest_url,
                        reason: format!("no response head within {limit:?}"),
                    });
                }
            },
            None => sent.await,
        };
        let response: web_sys::Response = match result {
            Ok(response) if self.fetch.is_none() => response.unchecked_into(),
            // The embedder's function may resolve to anything.
            Ok(response) => response
                .dyn_into()
                .map_err(|other| TransportError::Blocked {
                    url: guest_url.clone(),
                    reason: format!(
                        "the page's fetch function did not give a Response ({})",
                        describe(&other)
                    ),
                })?,
            Err(e) if self.fetch.is_some() => {
                return Err(TransportError::Blocked {
                    url: guest_url,
                    reason: format!("the page's fetch function failed: {}", describe(&e)),
                })
            }
            Err(e) => {
                return Err(TransportError::Blocked {
                    url: guest_url,
                    reason: format!("{REFUSED} ({})", describe(&e)),
                })
            }
        };

        // Status 0 is an opaque or error response, which cors mode never gives a page.
        let Ok(status) = StatusCode::from_u16(response.status()) else {
            return Err(TransportError::Blocked {
                url: guest_url,
                reason: format!("{REFUSED} (status {})", response.status()),
            });
        };
        let mut headers = read_headers(&response.headers());
        // Only a followed redirect changes the URL; otherwise keep ours (`Response.url` drops
        // a fragment and may be normalised differently).
        let final_url = if response.redirected() {
            Url::parse(&response.url()).unwrap_or_else(|_| fetch_url.clone())
        } else {
            fetch_url.clone()
        };
        let stream = response.body();
        let bodiless = method == Method::HEAD
            || status == StatusCode::NO_CONTENT
            || status == StatusCode::NOT_MODIFIED
            || stream.is_none();
        // fetch() decodes Content-Encoding and may hide that it did (Content-Encoding is not a
        // CORS-safelisted response header), so Content-Length cannot be trusted for a body.
        let decoding = if bodiless {
            BodyDecoding::Decoded
        } else {
            BodyDecoding::Opaque
        };
        policy::adjust_response(&self.config, &fetch_url, &final_url, &mut headers, decoding);

        let body = match stream {
            Some(stream) if !bodiless => {
                let body =
                    ResponseBody::new(&stream, abort).map_err(|e| TransportError::Aborted {
                        url: guest_url.clone(),
                        reason: format!("the response body cannot be read: {}", describe(&e)),
                    })?;
                Body::from_stream(body, None)
            }
            // A body the answer cannot have: release it (dropping `abort` ends the fetch).
            Some(stream) => {
                drop(JsFuture::from(stream.cancel()));
                Body::empty()
            }
            None => Body::empty(),
        };
        let mut out = http::Response::new(body);
        *out.status_mut() = status;
        *out.headers_mut() = headers;
        Ok(out)
    }
}

/// The JS `Request` for one fetch; errors are the browser's reasons.
fn build_request(
    method: &Method,
    url: &Url,
    headers: &HeaderMap,
    body: Bytes,
    abort: &AbortOnDrop,
) -> Result<web_sys::Request, String> {
    let js_headers = web_sys::Headers::new().map_err(|e| describe(&e))?;
    for (name, value) in headers {
        js_headers
            .append(name.as_str(), &byte_string(value))
            .map_err(|e| format!("header {name}: {}", describe(&e)))?;
    }
    let init = web_sys::RequestInit::new();
    init.set_method(method.as_str());
    init.set_headers(&js_headers);
    init.set_mode(web_sys::RequestMode::Cors);
    init.set_credentials(web_sys::RequestCredentials::Omit);
    init.set_redirect(web_sys::RequestRedirect::Follow);
    init.set_signal(Some(&abort.signal()));
    if !body.is_empty() {
        // A copy on the JS side; ours is freed when this returns.
        init.set_body(&js_sys::Uint8Array::from(&body[..]));
    }
    web_sys::Request::new_with_str_and_init(url.as_str(), &init).map_err(|e| describe(&e))
}

/// A header value as the JS ByteString it stands for: one UTF-16 code unit per byte, so bytes
/// outside ASCII (obs-text) reach the browser unchanged.
fn byte_string(value: &HeaderValue) -> String {
    value.as_bytes().iter().map(|&b| char::from(b)).collect()
}

/// The response headers, in the order the browser gives them (multi-valued ones already joined
/// with ", " by the `Headers` object; `Set-Cookie` is never visible to a page).
fn read_headers(js: &web_sys::Headers) -> HeaderMap {
    let mut out = HeaderMap::new();
    for entry in &js.entries() {
        let Ok(entry) = entry else { break };
        let pair: js_sys::Array = entry.unchecked_into();
        let (Some(name), Some(value)) = (pair.get(0).as_string(), pair.get(1).as_string()) else {
            continue;
        };
        // A ByteString: every code unit is one byte.
        let bytes: Option<Vec<u8>> = value
            .chars()
            .map(|c| u8::try_from(u32::from(c)).ok())
            .collect();
        match (
            HeaderName::from_bytes(name.as_bytes()),
            bytes.and_then(|b| HeaderValue::from_bytes(&b).ok()),
        ) {
            (Ok(name), Some(value)) => {
                out.append(name, value);
            }
            _ => tracing::debug!(%name, "skipped a response header that is not valid HTTP"),
        }
    }
    out
}

/// Runs `future` unless `deadline` completes first (then drops it).
async fn with_timeout<F: Future>(
    future: F,
    deadline: impl Future<Output = ()>,
) -> Option<F::Output> {
    let future = pin!(future);
    let deadline = pin!(deadline);
    match select(future, deadline).await {
        Either::Left((output, _)) => Some(output),
        Either::Right(_) => None,
    }
}
