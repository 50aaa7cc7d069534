//! The browser backend: `fetch()` through reqwest's wasm client, `mode: "cors"` (reqwest's
//! default, never switched to no-cors), `credentials: "omit"` always, redirects followed by the
//! browser. Response bodies stream from `Response.body` and are pulled only as fast as the
//! consumer reads.
//!
//! Request bodies cannot stream (reqwest's wasm client sends one buffer), so they are collected
//! whole up to [`TransportConfig::max_request_body`] (default 64 MiB); larger bodies fail with
//! [`TransportError::BodyTooLarge`].

use std::future::Future;
use std::pin::pin;

use async_trait::async_trait;
use futures::future::{select, Either};
use futures::StreamExt;
use http::Method;
use wasm_bindgen::prelude::*;
use wasm_bindgen_futures::JsFuture;

use crate::config::TransportConfig;
use crate::policy::{self, BodyDecoding, HeaderPolicy, PreparedRequest};
use crate::{Body, BodyError, CollectError, Transport, TransportError};

/// What a fetch() rejection (a TypeError) means, as far as a page can know.
const REFUSED: &str = "the browser refused the request (CORS policy or network error)";

/// Sends requests with the browser's (or node's) `fetch()`.
#[derive(Debug, Clone)]
pub struct FetchTransport {
    client: reqwest::Client,
    config: TransportConfig,
}

impl FetchTransport {
    /// A transport applying `config` and the browser header policy.
    pub fn new(config: TransportConfig) -> Self {
        Self {
            client: reqwest::Client::new(),
            config,
        }
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

        let mut builder = self
            .client
            .request(method.clone(), fetch_url.clone())
            .headers(headers)
            .fetch_credentials_omit();
        if !bytes.is_empty() {
            builder = builder.body(bytes);
        }
        let sent = builder.send();
        let result = match self.config.timeout {
            Some(limit) => match with_timeout(sent, limit.as_millis()).await {
                Some(result) => result,
                None => {
                    return Err(TransportError::Timeout {
                        url: guest_url,
                        reason: format!("no response head within {limit:?}"),
                    })
                }
            },
            None => sent.await,
        };
        let mut response = result.map_err(|e| map_error(&guest_url, &e))?;

        let status = response.status();
        let final_url = response.url().clone();
        let mut headers = std::mem::take(response.headers_mut());
        let bodiless = method == Method::HEAD
            || status == http::StatusCode::NO_CONTENT
            || status == http::StatusCode::NOT_MODIFIED;
        // fetch() decodes Content-Encoding and may hide that it did (Content-Encoding is not a
        // CORS-safelisted response header), so Content-Length cannot be trusted for a body.
        let decoding = if bodiless {
            BodyDecoding::Decoded
        } else {
            BodyDecoding::Opaque
        };
        policy::adjust_response(&self.config, &fetch_url, &final_url, &mut headers, decoding);

        let body = if bodiless {
            Body::empty()
        } else {
            let stream = response
                .bytes_stream()
                .map(|chunk| chunk.map_err(|e| BodyError::new(e.to_string())));
            Body::from_stream(stream, None)
        };
        let mut out = http::Response::new(body);
        *out.status_mut() = status;
        *out.headers_mut() = headers;
        Ok(out)
    }
}

fn map_error(url: &str, err: &reqwest::Error) -> TransportError {
    let url = url.to_string();
    if err.is_builder() {
        TransportError::InvalidRequest {
            url,
            reason: format!("the browser rejected the request: {err}"),
        }
    } else if err.is_timeout() {
        TransportError::Timeout {
            url,
            reason: err.to_string(),
        }
    } else {
        let detail = std::error::Error::source(err)
            .map(|s| format!(" ({s})"))
            .unwrap_or_default();
        TransportError::Blocked {
            url,
            reason: format!("{REFUSED}{detail}"),
        }
    }
}

#[wasm_bindgen]
extern "C" {
    #[wasm_bindgen(js_name = setTimeout)]
    fn set_timeout(handler: &js_sys::Function, millis: f64) -> JsValue;
    #[wasm_bindgen(js_name = clearTimeout)]
    fn clear_timeout(handle: &JsValue);
}

/// A JS timer that resolves after `millis` and is cleared when dropped.
struct Delay {
    fired: JsFuture,
    handle: JsValue,
}

impl Delay {
    fn new(millis: u128) -> Self {
        let mut handle = JsValue::UNDEFINED;
        let promise = js_sys::Promise::new(&mut |resolve, _reject| {
            handle = set_timeout(&resolve, millis as f64);
        });
        Self {
            fired: JsFuture::from(promise),
            handle,
        }
    }
}

impl Drop for Delay {
    fn drop(&mut self) {
        clear_timeout(&self.handle);
    }
}

/// Runs `future` unless `millis` pass first (then drops it, which aborts the fetch).
async fn with_timeout<F: Future>(future: F, millis: u128) -> Option<F::Output> {
    let mut delay = Delay::new(millis);
    let future = pin!(future);
    match select(future, &mut delay.fired).await {
        Either::Left((output, _)) => Some(output),
        Either::Right(_) => None,
    }
}
