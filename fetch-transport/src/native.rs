//! The native backend: reqwest over hyper, TLS by rustls with the ring provider, system roots
//! (rustls-platform-verifier) plus roots from configuration. Request and response bodies stream
//! in both directions. Needs a tokio runtime with timers enabled (reqwest's own requirement).

use std::error::Error as StdError;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use async_trait::async_trait;
use bytes::Bytes;
use futures::channel::mpsc;
use futures::future::{select, Either, LocalBoxFuture};
use futures::{FutureExt, SinkExt, Stream, StreamExt};
use http::header::{HeaderValue, CONTENT_LENGTH};
use http::Method;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;

use crate::config::TransportConfig;
use crate::error::ConfigError;
use crate::policy::{self, BodyDecoding, HeaderPolicy, PreparedRequest};
use crate::{Body, BodyError, Transport, TransportError};

/// Most redirects followed for one request (the Fetch standard's limit).
const MAX_REDIRECTS: usize = 20;

/// Sends requests with reqwest: by default as a transparent proxy would (only hop-by-hop headers
/// removed, bodies untouched); with [`NativeTransportBuilder::browser_like`] as the browser would.
#[derive(Debug, Clone)]
pub struct NativeTransport {
    client: reqwest::Client,
    config: Arc<TransportConfig>,
    browser_like: bool,
}

/// Builder for [`NativeTransport`].
#[derive(Debug, Clone)]
pub struct NativeTransportBuilder {
    config: TransportConfig,
    roots: Vec<CertificateDer<'static>>,
    system_roots: bool,
    browser_like: bool,
}

impl Default for NativeTransportBuilder {
    fn default() -> Self {
        Self {
            config: TransportConfig::default(),
            roots: Vec::new(),
            system_roots: true,
            browser_like: false,
        }
    }
}

/// Idle connections kept per origin host after a burst.
const POOL_IDLE_PER_HOST: usize = 8;
/// How long an idle origin connection is kept for reuse.
const POOL_IDLE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(20);

impl NativeTransportBuilder {
    /// Uses `config` (routing, allow/deny list, timeout, …).
    pub fn config(mut self, config: TransportConfig) -> Self {
        self.config = config;
        self
    }

    /// Trusts every certificate in `pem` (one or more `CERTIFICATE` blocks) as a root, in
    /// addition to the system roots (the runner's `--trust-ca PATH`).
    pub fn add_root_pem(mut self, pem: &[u8]) -> Result<Self, ConfigError> {
        let certs = CertificateDer::pem_slice_iter(pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| ConfigError::RootCertificate {
                reason: format!("bad PEM: {e}"),
            })?;
        if certs.is_empty() {
            return Err(ConfigError::RootCertificate {
                reason: "no CERTIFICATE block in the PEM data".into(),
            });
        }
        self.roots.extend(certs);
        Ok(self)
    }

    /// Trusts one DER-encoded certificate as a root.
    pub fn add_root_der(mut self, der: impl Into<Vec<u8>>) -> Self {
        self.roots.push(CertificateDer::from(der.into()));
        self
    }

    /// Whether the operating system's roots are trusted too (default true); false trusts only
    /// the added roots.
    pub fn system_roots(mut self, on: bool) -> Self {
        self.system_roots = on;
        self
    }

    /// Imitates the browser: forbidden request headers (and `User-Agent`, unless the config
    /// keeps it) removed, compressed bodies decoded (gzip, deflate) and `Content-Encoding` /
    /// `Content-Length` dropped, CONNECT/TRACE/TRACK refused.
    pub fn browser_like(mut self, on: bool) -> Self {
        self.browser_like = on;
        self
    }

    /// Builds the client.
    pub fn build(self) -> Result<NativeTransport, ConfigError> {
        let tls = self.tls_config()?;
        let config = Arc::new(self.config);
        let redirect_config = Arc::clone(&config);
        let redirects = reqwest::redirect::Policy::custom(move |attempt| {
            if attempt.previous().len() > MAX_REDIRECTS {
                return attempt.error(RedirectRefused::TooMany);
            }
            let target = policy::target_of(&redirect_config, attempt.url());
            match redirect_config.destinations.check(&target) {
                Ok(()) => attempt.follow(),
                Err(reason) => attempt.error(RedirectRefused::Denied(reason)),
            }
        });
        let client = reqwest::Client::builder()
            .tls_backend_preconfigured(tls)
            .redirect(redirects)
            .referer(false)
            .no_proxy()
            .gzip(self.browser_like)
            .deflate(self.browser_like)
            .tcp_nodelay(true)
            // A guest can make the proxy open hundreds of connections to one origin at once;
            // keep only a few idle afterwards, and not for long, so memory returns to idle.
            .pool_max_idle_per_host(POOL_IDLE_PER_HOST)
            .pool_idle_timeout(POOL_IDLE_TIMEOUT)
            .build()
            .map_err(|e| ConfigError::Client {
                reason: error_chain(&e),
            })?;
        Ok(NativeTransport {
            client,
            config,
            browser_like: self.browser_like,
        })
    }

    /// A dialer for a relay's `wss://` WebSocket that trusts the same roots as the transport.
    pub fn relay_dialer(&self) -> Result<crate::relay::NativeDialer, ConfigError> {
        let mut tls = self.tls_config()?;
        tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(crate::relay::NativeDialer::new(Arc::new(tls)))
    }

    fn tls_config(&self) -> Result<rustls::ClientConfig, ConfigError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .map_err(|e| ConfigError::Client {
                reason: e.to_string(),
            })?;
        let mut tls = if self.system_roots {
            let verifier = rustls_platform_verifier::Verifier::new_with_extra_roots(
                self.roots.iter().cloned(),
                provider,
            )
            .map_err(|e| ConfigError::RootCertificate {
                reason: e.to_string(),
            })?;
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(verifier))
                .with_no_client_auth()
        } else {
            let mut store = rustls::RootCertStore::empty();
            for cert in &self.roots {
                store
                    .add(cert.clone())
                    .map_err(|e| ConfigError::RootCertificate {
                        reason: e.to_string(),
                    })?;
            }
            builder.with_root_certificates(store).with_no_client_auth()
        };
        tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(tls)
    }
}

impl NativeTransport {
    /// Starts a builder (system roots, transparent mode, default configuration).
    pub fn builder() -> NativeTransportBuilder {
        NativeTransportBuilder::default()
    }

    /// A transport with `config`, system roots and the transparent (non-browser) policy.
    pub fn new(config: TransportConfig) -> Result<Self, ConfigError> {
        Self::builder().config(config).build()
    }

    /// The configuration in use.
    pub fn config(&self) -> &TransportConfig {
        &self.config
    }

    fn header_policy(&self) -> HeaderPolicy {
        if self.browser_like {
            HeaderPolicy::Browser {
                keep_user_agent: self.config.keep_user_agent,
            }
        } else {
            HeaderPolicy::HopByHop
        }
    }
}

#[async_trait(?Send)]
impl Transport for NativeTransport {
    async fn send(
        &self,
        request: http::Request<Body>,
    ) -> Result<http::Response<Body>, TransportError> {
        let PreparedRequest {
            method,
            guest_url,
            fetch_url,
            mut headers,
            body,
            ..
        } = policy::prepare(&self.config, request, self.header_policy())?;

        // The body's own length frames the request; a guest's Content-Length never leaks
        // through unchecked (hyper rejects a body that does not match it).
        headers.remove(CONTENT_LENGTH);
        let upload = if body.is_empty() {
            // Like a browser: an empty POST/PUT/… still says `Content-Length: 0`.
            if method != Method::GET && method != Method::HEAD {
                headers.insert(CONTENT_LENGTH, HeaderValue::from(0u64));
            }
            None
        } else {
            if let Some(len) = body.len() {
                headers.insert(CONTENT_LENGTH, HeaderValue::from(len));
            }
            let (tx, rx) = mpsc::channel(1);
            Some((pump(body, tx).boxed_local(), UploadStream { rx }))
        };
        let mut builder = self
            .client
            .request(method.clone(), fetch_url.clone())
            .headers(headers);
        let pump = match upload {
            Some((pump, stream)) => {
                builder = builder.body(reqwest::Body::wrap_stream(stream));
                Some(pump)
            }
            None => None,
        };
        let head = send_while_pumping(builder.send(), pump);
        let (result, pump) = match self.config.timeout {
            Some(limit) => match tokio::time::timeout(limit, head).await {
                Ok(done) => done,
                Err(_) => {
                    return Err(TransportError::Timeout {
                        url: guest_url,
                        reason: format!("no response head within {limit:?}"),
                    })
                }
            },
            None => head.await,
        };
        let mut response = result.map_err(|e| map_error(&guest_url, &e))?;

        let status = response.status();
        let version = response.version();
        let final_url = response.url().clone();
        let mut headers = std::mem::take(response.headers_mut());
        let bodiless = method == Method::HEAD
            || status.is_informational()
            || status == http::StatusCode::NO_CONTENT
            || status == http::StatusCode::NOT_MODIFIED;
        let decoding = if self.browser_like {
            BodyDecoding::Decoded
        } else {
            BodyDecoding::Raw
        };
        policy::adjust_response(&self.config, &fetch_url, &final_url, &mut headers, decoding);

        let body = if bodiless {
            Body::empty()
        } else {
            // reqwest knows the exact length unless it decodes; a remaining Content-Length
            // (reqwest removes it when it decodes) is the length of what we stream.
            let len = response.content_length().or_else(|| {
                headers
                    .get(CONTENT_LENGTH)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse().ok())
            });
            let stream = response
                .bytes_stream()
                .map(|chunk| chunk.map_err(|e| BodyError::new(error_chain(&e))));
            Body::from_stream(
                DriveAlong {
                    side: pump,
                    stream: Box::pin(stream),
                },
                len,
            )
        };
        let mut out = http::Response::new(body);
        *out.status_mut() = status;
        *out.version_mut() = version;
        *out.headers_mut() = headers;
        Ok(out)
    }
}

/// Awaits the response head while feeding the request body; returns the unfinished feeder
/// when the origin answered before reading the whole body.
async fn send_while_pumping<F>(
    send: F,
    pump: Option<LocalBoxFuture<'static, ()>>,
) -> (
    reqwest::Result<reqwest::Response>,
    Option<LocalBoxFuture<'static, ()>>,
)
where
    F: std::future::Future<Output = reqwest::Result<reqwest::Response>>,
{
    let Some(pump) = pump else {
        return (send.await, None);
    };
    match select(Box::pin(send), pump).await {
        Either::Left((result, pump)) => (result, Some(pump)),
        Either::Right(((), send)) => (send.await, None),
    }
}

/// One message from the request body to reqwest: a chunk, an error, or the clean end.
type Piece = Result<Option<Bytes>, BodyError>;

/// Moves the (non-`Send`) request body into the channel reqwest reads, one chunk at a time.
async fn pump(mut body: Body, mut tx: mpsc::Sender<Piece>) {
    while let Some(item) = body.next().await {
        let failed = item.is_err();
        if tx.send(item.map(Some)).await.is_err() || failed {
            return;
        }
    }
    let _ = tx.send(Ok(None)).await;
}

/// The `Send` stream reqwest uploads from; ends with an error if the feeder stops early, so a
/// truncated body is never sent as if it were complete.
struct UploadStream {
    rx: mpsc::Receiver<Piece>,
}

impl Stream for UploadStream {
    type Item = Result<Bytes, BodyError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        match Pin::new(&mut self.rx).poll_next(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Some(Ok(Some(chunk)))) => Poll::Ready(Some(Ok(chunk))),
            Poll::Ready(Some(Ok(None))) => Poll::Ready(None),
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e))),
            Poll::Ready(None) => Poll::Ready(Some(Err(BodyError::new(
                "the request body was abandoned before its end",
            )))),
        }
    }
}

/// A response body stream that keeps driving the request-body feeder while it is read.
struct DriveAlong {
    side: Option<LocalBoxFuture<'static, ()>>,
    stream: Pin<Box<dyn Stream<Item = Result<Bytes, BodyError>>>>,
}

impl Stream for DriveAlong {
    type Item = Result<Bytes, BodyError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if let Some(side) = self.side.as_mut() {
            if side.as_mut().poll(cx).is_ready() {
                self.side = None;
            }
        }
        self.stream.as_mut().poll_next(cx)
    }
}

/// Why a redirect was not followed.
#[derive(Debug, thiserror::Error)]
enum RedirectRefused {
    #[error("more than {MAX_REDIRECTS} redirects")]
    TooMany,
    #[error("redirect to a denied destination: {0}")]
    Denied(String),
}

/// The error and its sources, joined with ": ".
fn error_chain(err: &(dyn StdError + 'static)) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

fn find_source<'a, T: StdError + 'static>(err: &'a (dyn StdError + 'static)) -> Option<&'a T> {
    let mut current = Some(err);
    while let Some(e) = current {
        if let Some(found) = e.downcast_ref::<T>() {
            return Some(found);
        }
        current = e.source();
    }
    None
}

fn map_error(url: &str, err: &reqwest::Error) -> TransportError {
    let url = url.to_string();
    let reason = error_chain(err);
    if let Some(refused) = find_source::<RedirectRefused>(err) {
        return match refused {
            RedirectRefused::Denied(why) => TransportError::Denied {
                url,
                reason: why.clone(),
            },
            RedirectRefused::TooMany => TransportError::Blocked {
                url,
                reason: refused.to_string(),
            },
        };
    }
    if err.is_timeout() {
        TransportError::Timeout { url, reason }
    } else if err.is_builder() {
        TransportError::InvalidRequest { url, reason }
    } else if find_source::<BodyError>(err).is_some() {
        TransportError::Aborted {
            url,
            reason: format!("the request body failed: {reason}"),
        }
    } else if err.is_connect() {
        TransportError::Blocked {
            url,
            reason: format!("cannot connect: {reason}"),
        }
    } else {
        TransportError::Blocked { url, reason }
    }
}
