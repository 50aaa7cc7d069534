//! The crate through which every guest HTTP request leaves the proxy.
//!
//! [`Transport`] is the one seam between the HTTP proxy and the outside world: in the browser it
//! is `fetch()`, natively an HTTP client, in tests a script. Requests and responses are
//! [`http::Request`] / [`http::Response`] carrying a streaming [`Body`].

mod body;
mod error;

pub use body::{Body, BodyError, CollectError};
pub use error::TransportError;

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
