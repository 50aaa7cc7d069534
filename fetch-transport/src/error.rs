//! The crate's errors: a configuration value that cannot be used, and why a request could not
//! be carried to its origin.

/// A request that produced no HTTP response. Every variant names the URL and a human-readable
/// reason so the proxy can answer the guest with a precise error page (502, 504, 413, …).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransportError {
    /// The browser refused the request: a `fetch()` TypeError (CORS or a network error), or
    /// natively a connection that could not be made.
    #[error("blocked: {url}: {reason}")]
    Blocked {
        /// The URL that was requested.
        url: String,
        /// Why, as far as it is known.
        reason: String,
    },
    /// No response within the configured time.
    #[error("timed out: {url}: {reason}")]
    Timeout {
        /// The URL that was requested.
        url: String,
        /// What timed out.
        reason: String,
    },
    /// The request was aborted before completion.
    #[error("aborted: {url}: {reason}")]
    Aborted {
        /// The URL that was requested.
        url: String,
        /// Why it was aborted.
        reason: String,
    },
    /// The request cannot be expressed to this backend (bad URL, method, header, …).
    #[error("invalid request: {url}: {reason}")]
    InvalidRequest {
        /// The URL that was requested.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The destination is not allowed by the configured allow/deny list (the proxy answers 403).
    #[error("denied: {url}: {reason}")]
    Denied {
        /// The URL that was requested.
        url: String,
        /// Which rule denied it.
        reason: String,
    },
    /// The request body is larger than the backend can carry.
    #[error("request body too large for {url}: limit is {limit} bytes")]
    BodyTooLarge {
        /// The URL that was requested.
        url: String,
        /// The limit in bytes.
        limit: u64,
    },
}

impl TransportError {
    /// The URL the failed request was for.
    pub fn url(&self) -> &str {
        match self {
            Self::Blocked { url, .. }
            | Self::Timeout { url, .. }
            | Self::Aborted { url, .. }
            | Self::InvalidRequest { url, .. }
            | Self::Denied { url, .. }
            | Self::BodyTooLarge { url, .. } => url,
        }
    }
}

/// A configuration value that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// An allow or deny rule does not parse.
    #[error("invalid destination pattern `{pattern}`: {reason}")]
    Destination {
        /// The rule as given.
        pattern: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The CORS proxy prefix or template does not make valid URLs.
    #[error("invalid CORS proxy `{proxy}`: {reason}")]
    CorsProxy {
        /// The prefix or template as given.
        proxy: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A rewrite rule's host pattern or base URL is unusable.
    #[error("invalid rewrite rule `{host}` -> `{base}`: {reason}")]
    Rewrite {
        /// The host pattern as given.
        host: String,
        /// The base URL as given.
        base: String,
        /// What is wrong with it.
        reason: String,
    },
    /// An extra root certificate cannot be read.
    #[error("invalid root certificate: {reason}")]
    RootCertificate {
        /// What is wrong with it.
        reason: String,
    },
    /// The native HTTP client cannot be built with these settings.
    #[error("cannot build the HTTP client: {reason}")]
    Client {
        /// Why, as reported by the client library.
        reason: String,
    },
}
