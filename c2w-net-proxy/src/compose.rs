//! The composition, once for every platform: from [`Options`] and what the platform provides
//! (a [`Runtime`] and a way to make the transport), build the stack, the CA and its leaf
//! issuer, the proxy, and start the services on the virtual network. The browser's `NetProxy`
//! and the native runner are adapters around [`compose`]: they fill the options, pick the
//! link, and run the [`driver`](crate::driver).

use std::net::Ipv4Addr;
use std::rc::Rc;
use std::sync::Arc;

use fetch_transport::relay::{Dialer, Relay, RelayConfig, WispVersionChoice};
use fetch_transport::wisp::{ClientConfig, ClientConfigError};
use fetch_transport::{DestinationFilter, DestinationPattern, Transport, TransportConfig};
use http_proxy::{Proxy, ProxyConfig};
use mitm_ca::{CaParams, CertificateAuthority, Clock, Issuer, IssuerConfig};
use net_stack::Stack;

use crate::clock::WallClock;
use crate::options::{Options, OptionsError, RelayOptions, RelayVersion};
use crate::relay::{self, RelayTunnels, RoutesError};
use crate::relay_http::{RelayHttp, ViaRelay, RELAY_HTTP_IDLE};
use crate::runtime::Runtime;
use crate::services;
use crate::websocket::GuestWebSockets;

/// The name the proxy answers to besides its address.
pub const PROXY_NAME: &str = "proxy.c2w.internal";

/// Why the system could not be put together; the message names the option at fault.
#[derive(Debug, thiserror::Error)]
pub enum ComposeError {
    /// An option is malformed or out of range.
    #[error(transparent)]
    Options(#[from] OptionsError),
    /// The stack refused the network the options describe.
    #[error("config.network: {0}")]
    Network(#[from] net_stack::ConfigError),
    /// The transport refused its options (a pattern, a rewrite, a CA file).
    #[error("transport options: {0}")]
    Transport(#[from] fetch_transport::ConfigError),
    /// No CA could be generated.
    #[error("cannot generate the CA: {0}")]
    CaGenerate(#[from] mitm_ca::CaError),
    /// The CA given in the options was refused.
    #[error("config.ca: {0}")]
    CaImport(#[from] mitm_ca::ImportError),
    /// The leaf issuer could not be set up.
    #[error("leaf issuer: {0}")]
    Issuer(#[from] mitm_ca::IssueError),
    /// A service could not listen on the virtual network.
    #[error("cannot listen on the virtual network: {0}")]
    Listen(#[from] net_stack::ListenError),
    /// The relay's routes could not be set up.
    #[error("config.relay: {0}")]
    RelayRoutes(#[from] RoutesError),
    /// The relay's Wisp settings were refused.
    #[error("config.relay: {0}")]
    RelayClient(#[from] ClientConfigError),
    /// A relay is configured but this platform cannot open WebSockets.
    #[error("config.relay: this build cannot reach a relay")]
    RelayUnsupported,
}

/// Makes the transport requests leave through, from the options' transport settings.
pub type TransportFactory =
    Box<dyn FnOnce(TransportConfig) -> Result<Rc<dyn Transport>, ComposeError>>;

/// What the platform brings to the composition.
pub struct Platform {
    /// Time and tasks.
    pub runtime: Rc<dyn Runtime>,
    /// Makes the transport requests leave through, from the options' transport settings
    /// (`fetch()` in the browser, an HTTP client natively).
    pub transport: TransportFactory,
    /// The request body limit when the options set none: the browser's `fetch()` holds
    /// request bodies whole, so it has one; natively bodies stream and there is none.
    pub default_max_request_body: Option<u64>,
    /// Opens the relay's WebSocket (the browser's `WebSocket`, tokio-tungstenite natively);
    /// needed only when the options configure a relay.
    pub dialer: Option<Rc<dyn Dialer>>,
    /// Opens the guest's WebSockets (its message limit set from the options); `None` uses
    /// `dialer`, and without either a guest's upgrade is answered 501.
    pub websocket_dialer: Option<Rc<dyn Dialer>>,
}

/// The running system: what the adapters drive and report on. Cloning shares it.
#[derive(Clone)]
pub struct System {
    /// The virtual network.
    pub stack: Stack,
    /// The HTTP(S) proxy behind the proxy address and the fake IPs.
    pub proxy: Rc<Proxy>,
    /// The CA certificate (PEM) the guest must trust for HTTPS.
    pub ca_pem: String,
    /// The proxy's address on the guest network.
    pub proxy_ip: Ipv4Addr,
    /// The relay, when one is configured.
    pub relay: Option<Relay>,
}

/// The transport settings the options describe.
pub fn transport_config(
    options: &Options,
    default_max_request_body: Option<u64>,
) -> Result<TransportConfig, fetch_transport::ConfigError> {
    let mut builder =
        TransportConfig::builder().keep_user_agent(options.keep_user_agent.unwrap_or(false));
    if let Some(limit) = options.limits().max_request_body(default_max_request_body) {
        builder = builder.max_request_body(limit);
    }
    if let Some(proxy) = &options.cors_proxy {
        builder = builder.cors_proxy(proxy.as_str());
    }
    for rule in options.rewrites.iter().flatten() {
        builder = builder.rewrite(rule.host.as_str(), rule.url.as_str());
    }
    for pattern in options.allow.iter().flatten() {
        builder = builder.allow(pattern.as_str());
    }
    for pattern in options.deny.iter().flatten() {
        builder = builder.deny(pattern.as_str());
    }
    if let Some(timeout) = options.timeout() {
        builder = builder.timeout(timeout);
    }
    builder.build()
}

/// Request bodies up to this size are held so a plain HTTP request refused by `fetch()` can
/// be sent again through the relay (bigger ones go to `fetch()` only).
const DEFAULT_MAX_REPLAY: usize = 16 << 20;

/// An allow-list filter holding `patterns` (checked by `validate`).
fn patterns(
    patterns: Option<&[String]>,
) -> Result<DestinationFilter, fetch_transport::ConfigError> {
    let mut filter = DestinationFilter::allow_all();
    for pattern in patterns.unwrap_or_default() {
        filter = filter.allow(DestinationPattern::parse(pattern)?);
    }
    Ok(filter)
}

/// The relay's settings the options describe.
fn relay_config(options: &RelayOptions) -> Result<RelayConfig, ClientConfigError> {
    let mut client = ClientConfig::builder().udp(options.udp.unwrap_or(true));
    if let (Some(user), Some(password)) = (&options.username, &options.password) {
        client = client.password(user.as_str(), password.as_str());
    }
    let version = match options.version.unwrap_or(RelayVersion::Auto) {
        RelayVersion::Auto => WispVersionChoice::Auto,
        RelayVersion::V1 => WispVersionChoice::V1,
        RelayVersion::V2 => WispVersionChoice::V2,
    };
    Ok(RelayConfig::new(options.url.trim())
        .version(version)
        .client(client.build()?))
}

/// The CA that issues the guest-facing leaves: the one in the options, or a fresh one.
fn issuer(options: &Options) -> Result<(Arc<Issuer>, String), ComposeError> {
    let clock: Arc<dyn Clock> = Arc::new(WallClock);
    let ca = match &options.ca {
        Some(ca) => CertificateAuthority::from_pem(&ca.cert_pem, &ca.key_pem, clock.as_ref())?,
        None => CertificateAuthority::generate(&CaParams::default(), clock.as_ref())?,
    };
    let pem = ca.certificate_pem();
    tracing::info!(subject = ca.subject(), "CA ready");
    Ok((
        Arc::new(Issuer::new(ca, IssuerConfig::default(), clock)?),
        pem,
    ))
}

/// Builds the whole system from `options` on `platform` and starts its services (their tasks
/// run on the platform's runtime). The link is the caller's: run the driver on it next.
pub fn compose(options: &Options, platform: Platform) -> Result<System, ComposeError> {
    options.validate()?;
    let stack_config = options.stack_config();
    let proxy_ip = stack_config.virtual_ips[0];
    let stack = Stack::new(stack_config)?;
    let config = transport_config(options, platform.default_max_request_body)?;
    let destinations = config.destinations().clone();
    let rewrites = config.rewrites().to_vec();
    let websocket_dialer = platform
        .websocket_dialer
        .clone()
        .or_else(|| platform.dialer.clone());
    let max_replay = options
        .limits()
        .max_request_body(platform.default_max_request_body)
        .map_or(DEFAULT_MAX_REPLAY, |limit| {
            limit.min(DEFAULT_MAX_REPLAY as u64) as usize
        });
    let mut transport = (platform.transport)(config)?;
    let (issuer, ca_pem) = issuer(options)?;
    let proxy_config = ProxyConfig {
        limits: options
            .limits()
            .proxy_limits(platform.default_max_request_body),
        own_hosts: vec![proxy_ip.to_string(), PROXY_NAME.into()],
        ..ProxyConfig::default()
    };
    let timer = platform.runtime.timer();
    // The relay, and the way plain HTTP reaches it, before the proxy that uses both.
    let relay = match &options.relay {
        Some(relay_options) => {
            let dialer = platform.dialer.ok_or(ComposeError::RelayUnsupported)?;
            let (relay, driver) = Relay::new(relay_config(relay_options)?, dialer, timer.clone());
            platform.runtime.spawn(Box::pin(driver.run()));
            transport = Rc::new(ViaRelay::new(
                transport,
                RelayHttp::new(
                    relay.clone(),
                    Rc::new(relay_options.clone()),
                    destinations.clone(),
                    timer.clone(),
                    options.timeout().unwrap_or(RELAY_HTTP_IDLE),
                ),
                relay_options.http.unwrap_or_default(),
                patterns(relay_options.relay_only.as_deref())?,
                patterns(relay_options.fetch_only.as_deref())?,
                max_replay,
            ));
            Some(relay)
        }
        None => None,
    };
    let mut proxy = Proxy::new(proxy_config, transport, timer).with_issuer(issuer);
    // The guest's WebSocket upgrades (with a relay, CONNECT tunnels stay raw: their
    // WebSockets go through the relay).
    if let Some(dialer) = websocket_dialer {
        proxy = proxy.with_websockets(Rc::new(GuestWebSockets::new(
            dialer,
            rewrites,
            destinations.clone(),
        )));
    }
    let relay = match (&options.relay, relay) {
        (Some(relay_options), Some(relay)) => {
            let relay_options = Rc::new(relay_options.clone());
            proxy = proxy.with_raw_tunnels(Rc::new(RelayTunnels::new(
                relay.clone(),
                relay_options.clone(),
                destinations.clone(),
            )));
            relay::start(
                &stack,
                relay.clone(),
                relay_options,
                destinations,
                platform.runtime.clone(),
            )?;
            Some(relay)
        }
        _ => None,
    };
    let proxy = Rc::new(proxy);
    let transparent_https = relay.is_none();
    services::start(
        &stack,
        proxy.clone(),
        proxy_ip,
        transparent_https,
        platform.runtime.clone(),
    )?;
    Ok(System {
        stack,
        proxy,
        ca_pem,
        proxy_ip,
        relay,
    })
}
