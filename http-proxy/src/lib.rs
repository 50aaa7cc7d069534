//! An HTTP/1.1 forward proxy that serves any `futures::io::AsyncRead + AsyncWrite` stream and
//! sends every request through a [`fetch_transport::Transport`].
//!
//! It knows nothing of frames or TCP/IP: the embedder accepts connections (from net-stack,
//! a socket, a test pipe) and hands each to [`Proxy::serve`] with the [`Mode`] that says how
//! its request-targets are interpreted. Request heads are parsed with httparse; body framing,
//! keep-alive and limits are in this crate ([`body`], [`Limits`]).

pub mod body;
pub mod client;
mod conn;
mod connect;
mod error;
mod error_page;
mod forward;
pub mod head;
mod io;
mod limits;
mod refuse;
mod request;
mod request_body;
mod respond;
mod route;
mod stats;
pub mod target;
mod timer;
mod tls;
mod tunnel;
pub mod websocket;

use std::rc::Rc;
use std::sync::Arc;

use bytes::Bytes;
use fetch_transport::Transport;
use futures::io::{AsyncRead, AsyncWrite};
use http::header::{HeaderValue, CONTENT_TYPE};
use http::{Method, StatusCode};
use mitm_ca::Issuer;

pub use error::ServeError;
pub use io::{BoxedStream, GuestStream};
use route::Mode;
use target::{Origin, Scheme};
pub use tunnel::{splice, RawTunnels, TunnelError, HALF_CLOSE_LINGER};
pub use websocket::{WebSocketError, WebSockets};

/// Which service of the proxy a guest connection reached; decides how its bytes are read.
#[derive(Debug, Clone)]
pub enum Entry {
    /// The forward proxy port (`http_proxy`): absolute-form requests, and CONNECT tunnels
    /// whose TLS is terminated with a leaf for the target.
    ForwardProxy,
    /// Plain HTTP addressed to an origin (transparent interception): the Host header names
    /// the origin, else `fallback` (e.g. the name a fake IP stands for).
    Http {
        /// The origin used when a request has no Host header.
        fallback: Option<Origin>,
    },
    /// TLS addressed to an origin or to the proxy itself: terminated with a leaf for the SNI
    /// (else `fallback`'s host, else the proxy's own name); requests inside go to the Host
    /// header, else `fallback`, else the SNI.
    Tls {
        /// The origin used when neither SNI nor Host header says more.
        fallback: Option<Origin>,
    },
}
pub use error_page::{ErrorPage, PROXY_ERROR_HEADER};
pub use limits::Limits;
pub use stats::ProxyStats;
pub use timer::Timer;

/// The `Content-Type` value for the CA certificate download.
const PEM_CONTENT_TYPE: HeaderValue = HeaderValue::from_static("application/x-pem-file");

/// Configuration of a [`Proxy`].
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    /// Per-connection limits.
    pub limits: Limits,
    /// Host names and IP literals that address the proxy itself (its status page and CA
    /// download), e.g. `192.168.127.253`.
    pub own_hosts: Vec<String>,
    /// The CA certificate served at `/ca.pem` and `/ca.crt`, when there is one.
    pub ca_certificate_pem: Option<String>,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        Self {
            limits: Limits::default(),
            own_hosts: vec!["192.168.127.253".into(), "proxy.c2w.internal".into()],
            ca_certificate_pem: None,
        }
    }
}

/// The proxy: configuration, the transport requests leave through, injected time, counters.
pub struct Proxy {
    config: ProxyConfig,
    transport: Rc<dyn Transport>,
    timer: Rc<dyn Timer>,
    issuer: Option<Arc<Issuer>>,
    raw_tunnels: Option<Rc<dyn RawTunnels>>,
    websockets: Option<Rc<dyn WebSockets>>,
    counters: stats::Counters,
}

impl Proxy {
    /// A proxy sending requests through `transport`, timing out idle guests with `timer`.
    pub fn new(config: ProxyConfig, transport: Rc<dyn Transport>, timer: Rc<dyn Timer>) -> Self {
        Self {
            config,
            transport,
            timer,
            issuer: None,
            raw_tunnels: None,
            websockets: None,
            counters: stats::Counters::default(),
        }
    }

    /// Enables TLS termination (CONNECT, port 443, transparent HTTPS) with leaves from
    /// `issuer`; its CA certificate is served at `/ca.pem` unless the config names another.
    pub fn with_issuer(mut self, issuer: Arc<Issuer>) -> Self {
        if self.config.ca_certificate_pem.is_none() {
            self.config.ca_certificate_pem = Some(issuer.ca().certificate_pem());
        }
        self.issuer = Some(issuer);
        self
    }

    /// Carries CONNECT tunnels end to end through `tunnels` (e.g. a relay) instead of
    /// terminating their TLS: the guest sees the origin's own certificate.
    pub fn with_raw_tunnels(mut self, tunnels: Rc<dyn RawTunnels>) -> Self {
        self.raw_tunnels = Some(tunnels);
        self
    }

    /// Carries the guest's WebSocket upgrades through `websockets` (e.g. the browser's
    /// `WebSocket`); without it an upgrade is answered 501.
    pub fn with_websockets(mut self, websockets: Rc<dyn WebSockets>) -> Self {
        self.websockets = Some(websockets);
        self
    }

    /// The configuration.
    pub fn config(&self) -> &ProxyConfig {
        &self.config
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> ProxyStats {
        self.counters.snapshot()
    }

    /// Serves one guest connection until it ends. Never panics on guest input; every error
    /// the guest caused was answered before this returns.
    pub async fn serve<S>(&self, stream: S, entry: Entry) -> Result<(), ServeError>
    where
        S: AsyncRead + AsyncWrite + Unpin + 'static,
    {
        stats::Counters::add(&self.counters.connections_total, 1);
        stats::Counters::add(&self.counters.connections_open, 1);
        let stream: io::BoxedStream = Box::new(stream);
        let result = match entry {
            Entry::ForwardProxy => connect::serve(self, stream, Mode::Forward).await,
            Entry::Http { fallback } => {
                connect::serve(
                    self,
                    stream,
                    Mode::Origin {
                        scheme: Scheme::Http,
                        fixed: None,
                        fallback,
                    },
                )
                .await
            }
            Entry::Tls { fallback } => {
                let default_host = match &fallback {
                    Some(origin) => origin.host.bare(),
                    None => self
                        .config
                        .own_hosts
                        .first()
                        .cloned()
                        .unwrap_or_else(|| "localhost".into()),
                };
                let mode = Mode::Origin {
                    scheme: Scheme::Https,
                    fixed: None,
                    fallback,
                };
                connect::serve_tls(self, stream, &default_host, mode).await
            }
        };
        self.counters
            .connections_open
            .set(self.counters.connections_open.get() - 1);
        result
    }

    fn is_own_host(&self, host: &str) -> bool {
        self.config
            .own_hosts
            .iter()
            .any(|h| h.eq_ignore_ascii_case(host))
    }

    /// The proxy's own pages: a status page at `/`, the CA certificate at `/ca.pem`/`/ca.crt`.
    fn own_page(&self, method: &Method, path: &str) -> ErrorPage {
        if method != Method::GET && method != Method::HEAD {
            return ErrorPage::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "own-page",
                "only GET and HEAD are served here",
            );
        }
        let path = path.split('?').next().unwrap_or("/");
        match path {
            "/" => {
                let stats = self.stats();
                let mut page = ErrorPage::new(StatusCode::OK, "own-page", "");
                page.body = Bytes::from(format!(
                    "c2w-net-proxy {}\n\nThis is the HTTP proxy of the virtual network. Set http_proxy and https_proxy to\nhttp://{}:80. The CA certificate to trust for HTTPS is at /ca.pem.\n\nconnections open: {}\nrequests: {}\nresponses ok: {}\nresponses with error status: {}\nrejected requests: {}\ntransport errors: {}\n",
                    env!("CARGO_PKG_VERSION"),
                    self.config.own_hosts.first().map(String::as_str).unwrap_or("proxy"),
                    stats.connections_open,
                    stats.requests,
                    stats.responses_ok,
                    stats.responses_error_status,
                    stats.bad_requests,
                    stats.transport_errors,
                ));
                page.headers.remove(PROXY_ERROR_HEADER);
                page
            }
            "/ca.pem" | "/ca.crt" => match &self.config.ca_certificate_pem {
                Some(pem) => {
                    let mut page = ErrorPage::new(StatusCode::OK, "own-page", "");
                    page.body = Bytes::from(pem.clone());
                    page.headers.remove(PROXY_ERROR_HEADER);
                    page.headers.insert(CONTENT_TYPE, PEM_CONTENT_TYPE);
                    page.headers.insert(
                        http::header::CONTENT_DISPOSITION,
                        HeaderValue::from_static("attachment; filename=\"c2w-net-proxy-ca.pem\""),
                    );
                    page
                }
                None => ErrorPage::new(StatusCode::NOT_FOUND, "own-page", "this proxy has no CA certificate"),
            },
            _ => ErrorPage::new(
                StatusCode::BAD_REQUEST,
                "not-a-proxy-request",
                format!("{path} is not a page of the proxy; to fetch a site, send the absolute URL (http_proxy)"),
            ),
        }
    }
}
