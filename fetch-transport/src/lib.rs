//! The crate through which every guest HTTP request leaves the proxy.
//!
//! [`Transport`] is the one seam between the HTTP proxy and the outside world: in the browser it
//! is `fetch()`, natively an HTTP client, in tests a script. Requests and responses are
//! [`http::Request`] / [`http::Response`] carrying a streaming [`Body`].
//!
//! Backends: `FetchTransport` (wasm32, the browser's `fetch()`), `NativeTransport` (other
//! targets, reqwest + rustls/ring) and [`ScriptedTransport`] (tests, `scripted` feature). All
//! apply the same [`TransportConfig`] and [`policy`].
//!
//! Known limits: the browser backend holds request bodies whole (up to
//! [`TransportConfig::max_request_body`], 64 MiB by default) because streaming uploads need
//! `duplex: "half"` and HTTP/2, which not every browser or origin offers; `fetch()` joins multi-valued response headers itself (the `Headers` object) and
//! follows redirects without asking, so the allow/deny list is checked on the first URL only in
//! the browser (natively, on every hop); the timeout covers the response head, not the body.
//!
//! [`relay`] is the other way traffic can leave: raw TCP streams and UDP flows through a Wisp
//! relay server over one WebSocket ([`wisp`] is the protocol's sans-IO core; [`relay`] drives it
//! over the browser's `WebSocket` or a native client, with reconnection and bounded buffers).

mod body;
mod config;
mod destination;
mod error;
pub mod policy;
pub mod relay;
mod timer;
pub mod wisp;

#[cfg(target_arch = "wasm32")]
mod browser;
#[cfg(not(target_arch = "wasm32"))]
mod native;
#[cfg(feature = "scripted")]
mod scripted;

pub use body::{Body, BodyError, CollectError};
pub use config::{
    CorsProxy, RewriteRule, TransportConfig, TransportConfigBuilder, DEFAULT_MAX_REQUEST_BODY,
};
pub use destination::{DestinationFilter, DestinationPattern};
pub use error::{ConfigError, TransportError};
pub use policy::{BodyDecoding, HeaderPolicy};
pub use timer::Timer;

#[cfg(target_arch = "wasm32")]
pub use browser::FetchTransport;
#[cfg(not(target_arch = "wasm32"))]
pub use native::{NativeTransport, NativeTransportBuilder};
#[cfg(feature = "scripted")]
pub use scripted::{body_channel, BodySender, RecordedRequest, ScriptedTransport};

use async_trait::async_trait;

/// Sends one HTTP request to its origin and returns the response head with a streaming body.
///
/// The request URI is always absolute (`http://host[:port]/path?query` or `https://…`).
/// Implementations are `?Send` because the browser is single-threaded.
#[async_trait(?Send)]
pub trait Transport {
    /// Performs the request. Errors say why the request could not be carried (see
    /// [`TransportError`]); an HTTP error status from the origin is a successful response.
    async fn send(
        &self,
        request: http::Request<Body>,
    ) -> Result<http::Response<Body>, TransportError>;
}
