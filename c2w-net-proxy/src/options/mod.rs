//! [`Options`]: everything the composition is built from, in one type that every front end
//! fills. The JavaScript `NetProxyConfig` object (through serde-wasm-bindgen, unknown fields
//! refused) and the `stack-worker.js` query string (which becomes such an object) deserialize
//! into it; the native runner's flags map onto the same fields with the same value types
//! ([`AddrRange`], [`Cidr`], [`MacAddr`], [`Timeout`]). [`Options::validate`] checks the ranges
//! once for all of them, and every error carries the path of the bad field
//! (`limits.maxConnections`), which is also the field's name in JavaScript.
//!
//! The TypeScript declarations of `NetProxyConfig` are generated from these types (tsify).

use std::collections::BTreeMap;
use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;
use std::time::Duration;

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;

#[cfg(target_arch = "wasm32")]
use tsify::Tsify;

use crate::duration::{parse_timeout, DurationError};

mod tree;

pub use tree::{from_tree, Tree};

/// Largest safe integer in JavaScript (2^53 - 1): sizes beyond cannot be written exactly.
pub(crate) const MAX_SAFE_INTEGER: u64 = 9_007_199_254_740_991;

/// An option that cannot be used: where it is and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("config{}{}: {reason}", if path.is_empty() { "" } else { "." }, path)]
pub struct OptionsError {
    /// The field, as named in `NetProxyConfig` (`network.mtu`, `rewrites[0].host`).
    pub path: String,
    /// What is wrong with it.
    pub reason: String,
}

impl OptionsError {
    fn new(path: &str, reason: impl Into<String>) -> Self {
        Self {
            path: path.to_string(),
            reason: reason.into(),
        }
    }
}

/// Everything the composition takes; every field is optional and unset keeps the default.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[cfg_attr(target_arch = "wasm32", derive(Tsify))]
#[cfg_attr(target_arch = "wasm32", tsify(rename = "NetProxyConfig"))]
pub struct Options {
    /// The guest network: addresses, MTU, extra DNS names.
    #[serde(default)]
    #[cfg_attr(target_arch = "wasm32", tsify(optional))]
    pub network: Option<NetworkOptions>,
    /// Limits and what happens when each is reached: see docs/usage.md, "Limits".
    #[serde(default)]
    #[cfg_attr(target_arch = "wasm32", tsify(optional))]
    pub limits: Option<LimitOptions>,
    /// A CA to import instead of generating one.
    #[serde(default)]
    #[cfg_attr(target_arch = "wasm32", tsify(optional))]
    pub ca: Option<CaPem>,
    /// A CORS proxy: a URL prefix, or a template with `{url}`.
    #[serde(default)]
    #[cfg_attr(target_arch = "wasm32", tsify(optional))]
    pub cors_proxy: Option<String>,
    /// Host rewrite rules, tried in order.
    #[serde(default)]
    #[cfg_attr(target_arch = "wasm32", tsify(optional))]
    pub rewrites: Option<Vec<Rewrite>>,
    /// Only these destinations (host, `*.suffix`, IP, CIDR or `loopback`).
    #[serde(default)]
    #[cfg_attr(target_arch = "wasm32", tsify(optional))]
    pub allow: Option<Vec<String>>,
    /// Destinations refused with 403 (same patterns as `allow`).
    #[serde(default)]
    #[cfg_attr(target_arch = "wasm32", tsify(optional))]
    pub deny: Option<Vec<String>>,
    /// Time limit for a response head: whole seconds, or a string such as "5s", "500ms", "2m".
    #[serde(default)]
    #[cfg_attr(target_arch = "wasm32", tsify(optional, type = "number | string"))]
    pub timeout: Option<Timeout>,
    /// The same in milliseconds (kept for existing pages; give one of the two).
    #[serde(default)]
    #[cfg_attr(target_arch = "wasm32", tsify(optional))]
    pub timeout_ms: Option<u64>,
    /// Keep the guest's User-Agent instead of the browser's.
    #[serde(default)]
    #[cfg_attr(target_arch = "wasm32", tsify(optional))]
    pub keep_user_agent: Option<bool>,
    /// Console log level (the browser build; natively `--log` takes tracing directives).
    #[serde(default)]
    #[cfg_attr(
        target_arch = "wasm32",
        tsify(
            optional,
            type = "\"error\" | \"warn\" | \"info\" | \"debug\" | \"trace\""
        )
    )]
    pub log_level: Option<LogLevel>,
    /// A Wisp relay for what `fetch()` cannot carry: TCP to any port, UDP, and CONNECT
    /// tunnels end to end (see docs/usage.md, "Relay"). Unset: fetch only.
    #[serde(default)]
    #[cfg_attr(target_arch = "wasm32", tsify(optional))]
    pub relay: Option<RelayOptions>,
}

/// The `relay` part: which Wisp server, and what goes through it. Its `Debug` never shows
/// the password.
#[derive(Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[cfg_attr(target_arch = "wasm32", derive(Tsify))]
pub struct RelayOptions {
    /// The Wisp server: `ws://` or `wss://`, a path ending in `/`.
    pub url: String,
    /// The protocol version: `auto` (v2 when the server takes it, the default), `v1` or `v2`.
    #[serde(default)]
    #[cfg_attr(
        target_arch = "wasm32",
        tsify(optional, type = "\"auto\" | \"v1\" | \"v2\"")
    )]
    pub version: Option<RelayVersion>,
    /// The user name for a v2 server that asks for a password.
    #[serde(default)]
    #[cfg_attr(target_arch = "wasm32", tsify(optional))]
    pub username: Option<String>,
    /// The password that goes with `username`.
    #[serde(default)]
    #[cfg_attr(target_arch = "wasm32", tsify(optional))]
    pub password: Option<String>,
    /// Carry the guest's UDP (other than DHCP and DNS to the gateway); default true.
    #[serde(default)]
    #[cfg_attr(target_arch = "wasm32", tsify(optional))]
    pub udp: Option<bool>,
    /// Plain `http://` requests through the proxy: `fallback` (fetch first, the relay when
    /// the browser refuses; the default), `always` (the relay only) or `never` (fetch only).
    /// Also accepted as `mode`.
    #[serde(default, alias = "mode")]
    #[cfg_attr(
        target_arch = "wasm32",
        tsify(optional, type = "\"fallback\" | \"always\" | \"never\"")
    )]
    pub http: Option<RelayHttpMode>,
    /// Destinations whose plain HTTP always goes through the relay (allow/deny pattern
    /// syntax: host, `*.suffix`, IP, CIDR or `loopback`).
    #[serde(default)]
    #[cfg_attr(target_arch = "wasm32", tsify(optional))]
    pub relay_only: Option<Vec<String>>,
    /// Destinations whose plain HTTP never goes through the relay (same syntax).
    #[serde(default)]
    #[cfg_attr(target_arch = "wasm32", tsify(optional))]
    pub fetch_only: Option<Vec<String>>,
    /// Destinations the relay must reach under another name or address, e.g.
    /// `{"db.test": "127.0.0.1"}` for a server on the relay host's loopback. Also accepted
    /// as `map`.
    #[serde(default, alias = "map")]
    #[cfg_attr(target_arch = "wasm32", tsify(optional))]
    pub hosts: Option<BTreeMap<String, String>>,
}

/// Which way plain `http://` requests through the proxy take when a relay is configured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RelayHttpMode {
    /// `fetch()` first; the relay when the browser refuses and the request can be replayed.
    #[default]
    Fallback,
    /// The relay only.
    Always,
    /// `fetch()` only.
    Never,
}

impl std::str::FromStr for RelayHttpMode {
    type Err = ValueError;

    fn from_str(text: &str) -> Result<Self, ValueError> {
        match text {
            "fallback" => Ok(Self::Fallback),
            "always" => Ok(Self::Always),
            "never" => Ok(Self::Never),
            _ => Err(ValueError::RelayHttpMode(text.to_string())),
        }
    }
}

/// Which Wisp version the relay is asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RelayVersion {
    /// v2 when the server takes it, else v1.
    Auto,
    /// v1 only.
    V1,
    /// v2 only.
    V2,
}

impl std::fmt::Debug for RelayOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RelayOptions")
            .field("url", &self.url)
            .field("version", &self.version)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<set>"))
            .field("udp", &self.udp)
            .field("http", &self.http)
            .field("relay_only", &self.relay_only)
            .field("fetch_only", &self.fetch_only)
            .field("hosts", &self.hosts)
            .finish()
    }
}

impl RelayOptions {
    /// Checks the URL, the credentials and the host map (the path of a bad field is named).
    fn validate(&self) -> Result<(), OptionsError> {
        let url = self.url.trim();
        let scheme_ok = url.starts_with("ws://") || url.starts_with("wss://");
        let host_ok = url
            .split_once("://")
            .is_some_and(|(_, rest)| !rest.is_empty() && !rest.starts_with('/'));
        if !scheme_ok || !host_ok {
            return Err(OptionsError::new(
                "relay.url",
                format!("{url:?} is not a ws:// or wss:// URL with a host"),
            ));
        }
        if url.chars().any(char::is_whitespace) {
            return Err(OptionsError::new(
                "relay.url",
                format!("{url:?} contains white space"),
            ));
        }
        match (&self.username, &self.password) {
            (Some(_), None) => {
                return Err(OptionsError::new(
                    "relay.password",
                    "a username needs a password",
                ))
            }
            (None, Some(_)) => {
                return Err(OptionsError::new(
                    "relay.username",
                    "a password needs a username",
                ))
            }
            (Some(user), Some(_)) if user.is_empty() || user.len() > 255 => {
                return Err(OptionsError::new(
                    "relay.username",
                    "must be 1 to 255 bytes long",
                ))
            }
            _ => {}
        }
        for (field, patterns) in [
            ("relayOnly", &self.relay_only),
            ("fetchOnly", &self.fetch_only),
        ] {
            for (i, pattern) in patterns.iter().flatten().enumerate() {
                if let Err(err) = fetch_transport::DestinationPattern::parse(pattern) {
                    return Err(OptionsError::new(
                        &format!("relay.{field}[{i}]"),
                        err.to_string(),
                    ));
                }
            }
        }
        for (name, target) in self.hosts.iter().flatten() {
            if name.is_empty() || target.trim().is_empty() {
                return Err(OptionsError::new(
                    &format!("relay.hosts.{name}"),
                    "names and targets must not be empty",
                ));
            }
        }
        Ok(())
    }

    /// Where the relay must connect for `host` (the host map, case-insensitively), else `host`.
    pub fn target<'a>(&'a self, host: &'a str) -> &'a str {
        self.hosts
            .iter()
            .flatten()
            .find(|(name, _)| name.eq_ignore_ascii_case(host))
            .map_or(host, |(_, target)| target.as_str())
    }
}

impl std::str::FromStr for RelayVersion {
    type Err = ValueError;

    fn from_str(text: &str) -> Result<Self, ValueError> {
        match text {
            "auto" => Ok(Self::Auto),
            "v1" | "1" => Ok(Self::V1),
            "v2" | "2" => Ok(Self::V2),
            _ => Err(ValueError::RelayVersion(text.to_string())),
        }
    }
}

/// The `network` part: the original's network unless told otherwise.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[cfg_attr(target_arch = "wasm32", derive(Tsify))]
pub struct NetworkOptions {
    /// The gateway's address (DHCP, DNS, default route); default 192.168.127.1.
    #[serde(default)]
    #[cfg_attr(target_arch = "wasm32", tsify(optional, type = "string"))]
    pub gateway_ip: Option<Ipv4Addr>,
    /// The gateway's MAC address; default 5a:94:ef:e4:0c:dd.
    #[serde(default)]
    #[cfg_attr(target_arch = "wasm32", tsify(optional, type = "string"))]
    pub gateway_mac: Option<MacAddr>,
    /// The proxy's address on the guest network; default the network's .253.
    #[serde(default)]
    #[cfg_attr(target_arch = "wasm32", tsify(optional, type = "string"))]
    pub proxy_ip: Option<Ipv4Addr>,
    /// The guest network's prefix length (1..=30; default 24).
    #[serde(default)]
    #[cfg_attr(target_arch = "wasm32", tsify(optional))]
    pub prefix_len: Option<u8>,
    /// The link MTU offered by DHCP (576..=65535; default 1500).
    #[serde(default)]
    #[cfg_attr(target_arch = "wasm32", tsify(optional))]
    pub mtu: Option<u32>,
    /// Extra static DNS names and their IPv4 addresses.
    #[serde(default)]
    #[cfg_attr(
        target_arch = "wasm32",
        tsify(optional, type = "Record<string, string>")
    )]
    pub dns_hosts: Option<BTreeMap<String, Ipv4Addr>>,
}

/// The `limits` part: every field unset keeps the default.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[cfg_attr(target_arch = "wasm32", derive(Tsify))]
pub struct LimitOptions {
    /// TCP connections alive at once (default 256); SYNs beyond get RST.
    #[serde(default)]
    #[cfg_attr(target_arch = "wasm32", tsify(optional))]
    pub max_connections: Option<u64>,
    /// TCP socket buffer per connection and direction in bytes (default 262144; the receive
    /// side is rounded to 65535 × 2^k above 64 KiB).
    #[serde(default)]
    #[cfg_attr(target_arch = "wasm32", tsify(optional))]
    pub tcp_buffer_bytes: Option<u64>,
    /// TCP socket buffer bytes all connections may hold together before new ones get smaller
    /// buffers (each at most an eighth of what is left, at least 16 segments each way).
    /// Default 4 MiB in the browser (a wasm memory never shrinks), no cap natively; 0 = none.
    #[serde(default)]
    #[cfg_attr(target_arch = "wasm32", tsify(optional))]
    pub tcp_buffer_budget: Option<u64>,
    /// DHCP pool "START-END" (default "192.168.127.3-192.168.127.252").
    #[serde(default)]
    #[cfg_attr(target_arch = "wasm32", tsify(optional, type = "string"))]
    pub dhcp_pool: Option<AddrRange>,
    /// DNS fake-IP network "ADDR/LEN" (default "198.18.0.0/15"); full = LRU name recycled.
    #[serde(default)]
    #[cfg_attr(target_arch = "wasm32", tsify(optional, type = "string"))]
    pub fake_ip_net: Option<Cidr>,
    /// Largest HTTP request head in bytes (default 65536); larger gets 431.
    #[serde(default)]
    #[cfg_attr(target_arch = "wasm32", tsify(optional))]
    pub max_head_bytes: Option<u64>,
    /// Largest HTTP request body in bytes (browser default 67108864, native default none);
    /// larger gets 413.
    #[serde(default)]
    #[cfg_attr(target_arch = "wasm32", tsify(optional))]
    pub max_request_body: Option<u64>,
    /// Largest WebSocket message carried either way, in bytes (default 16777216, 1024–2^30);
    /// a larger one closes the session with 1009.
    #[serde(default, rename = "maxWebSocketMessage")]
    #[cfg_attr(target_arch = "wasm32", tsify(optional))]
    pub max_websocket_message: Option<u64>,
}

/// A CA certificate and its private key, PEM, to issue the guest-facing certificates with.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[cfg_attr(target_arch = "wasm32", derive(Tsify))]
pub struct CaPem {
    /// The CA certificate, PEM.
    pub cert_pem: String,
    /// Its private key, PEM (PKCS#8, SEC1 or PKCS#1).
    pub key_pem: String,
}

/// One host rewrite rule: requests for `host` go to `url` instead.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(target_arch = "wasm32", derive(Tsify))]
pub struct Rewrite {
    /// Host pattern: a name or `*.suffix`.
    pub host: String,
    /// The base URL (`{*}` stands for what `*` matched).
    pub url: String,
}

impl FromStr for Rewrite {
    type Err = std::convert::Infallible;

    /// `HOST=URL` as the runner's `--rewrite` takes it (the transport checks both parts).
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let (host, url) = text.split_once('=').unwrap_or((text, ""));
        Ok(Self {
            host: host.to_string(),
            url: url.to_string(),
        })
    }
}

/// How much goes to the browser console, from least to most.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum LogLevel {
    /// Errors only.
    Error = 1,
    /// Errors and warnings (the default).
    Warn = 2,
    /// Plus information.
    Info = 3,
    /// Plus debugging detail.
    Debug = 4,
    /// Everything.
    Trace = 5,
}

/// A log level that does not exist.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not one of error, warn, info, debug, trace")]
pub struct LogLevelError(String);

impl FromStr for LogLevel {
    type Err = LogLevelError;

    /// `error`, `warn` (or `warning`), `info`, `debug` or `trace`, in any case.
    fn from_str(text: &str) -> Result<Self, LogLevelError> {
        match text.to_ascii_lowercase().as_str() {
            "error" => Ok(Self::Error),
            "warn" | "warning" => Ok(Self::Warn),
            "info" => Ok(Self::Info),
            "debug" => Ok(Self::Debug),
            "trace" => Ok(Self::Trace),
            _ => Err(LogLevelError(text.to_string())),
        }
    }
}

/// Implements `Deserialize` through `FromStr` for a value written as a string.
macro_rules! deserialize_from_str {
    ($ty:ty, $expecting:literal) => {
        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                struct StrVisitor;
                impl Visitor<'_> for StrVisitor {
                    type Value = $ty;
                    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                        f.write_str($expecting)
                    }
                    fn visit_str<E: de::Error>(self, text: &str) -> Result<$ty, E> {
                        text.parse().map_err(E::custom)
                    }
                }
                deserializer.deserialize_str(StrVisitor)
            }
        }
    };
}

/// A MAC address written `5a:94:ef:e4:0c:dd` (or with `-`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MacAddr(pub [u8; 6]);

/// A value written in a form that cannot be used, with the expected form.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValueError {
    /// Not a MAC address.
    #[error("{0:?} is not a MAC address like 5a:94:ef:e4:0c:dd")]
    Mac(String),
    /// Not `START-END`.
    #[error("{0:?} is not START-END with two IPv4 addresses, START not after END")]
    Range(String),
    /// Not `ADDR/LEN`.
    #[error("{0:?} is not a network ADDR/LEN with LEN in 1..=30 and no host bits set")]
    Cidr(String),
    /// Not a size in bytes.
    #[error("{0:?} is not a size in bytes (a number, optionally followed by K, M or G)")]
    Bytes(String),
    /// Not a whole number of at least 1.
    #[error("{0:?} is not a whole number of at least 1")]
    Count(String),
    /// A size of zero or beyond what can be addressed.
    #[error("{0:?} is out of range (at least 1, and it must fit in memory)")]
    OutOfRange(String),
    /// Not a relay version.
    #[error("{0:?} is not a relay version (auto, v1 or v2)")]
    RelayVersion(String),
    /// Not a relay HTTP mode.
    #[error("{0:?} is not a relay HTTP mode (fallback, always or never)")]
    RelayHttpMode(String),
}

impl FromStr for MacAddr {
    type Err = ValueError;

    fn from_str(text: &str) -> Result<Self, ValueError> {
        let err = || ValueError::Mac(text.to_string());
        let mut mac = [0u8; 6];
        let mut parts = text.split([':', '-']);
        for byte in &mut mac {
            let part = parts.next().ok_or_else(err)?;
            if part.is_empty() || part.len() > 2 {
                return Err(err());
            }
            *byte = u8::from_str_radix(part, 16).map_err(|_| err())?;
        }
        if parts.next().is_some() {
            return Err(err());
        }
        Ok(Self(mac))
    }
}
deserialize_from_str!(MacAddr, "a MAC address string");

/// An inclusive range of IPv4 addresses, written `START-END` (START not after END).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AddrRange {
    /// The first address.
    pub start: Ipv4Addr,
    /// The last address.
    pub end: Ipv4Addr,
}

impl FromStr for AddrRange {
    type Err = ValueError;

    fn from_str(text: &str) -> Result<Self, ValueError> {
        let bad = || ValueError::Range(text.to_string());
        let (start, end) = text.split_once('-').ok_or_else(bad)?;
        let start: Ipv4Addr = start.trim().parse().map_err(|_| bad())?;
        let end: Ipv4Addr = end.trim().parse().map_err(|_| bad())?;
        if u32::from(start) > u32::from(end) {
            return Err(bad());
        }
        Ok(Self { start, end })
    }
}
deserialize_from_str!(AddrRange, "a string \"START-END\"");

/// An IPv4 network, written `ADDR/LEN` with LEN in 1..=30 and no host bits set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    /// The network address.
    pub addr: Ipv4Addr,
    /// The prefix length.
    pub len: u8,
}

impl FromStr for Cidr {
    type Err = ValueError;

    fn from_str(text: &str) -> Result<Self, ValueError> {
        let bad = || ValueError::Cidr(text.to_string());
        let (addr, len) = text.split_once('/').ok_or_else(bad)?;
        let addr: Ipv4Addr = addr.trim().parse().map_err(|_| bad())?;
        let len: u8 = len.trim().parse().map_err(|_| bad())?;
        if !(1..=30).contains(&len) || u32::from(addr) & (u32::MAX >> len) != 0 {
            return Err(bad());
        }
        Ok(Self { addr, len })
    }
}
deserialize_from_str!(Cidr, "a string \"ADDR/LEN\"");
deserialize_from_str!(LogLevel, "a log level string");
deserialize_from_str!(RelayVersion, "\"auto\", \"v1\" or \"v2\"");
deserialize_from_str!(RelayHttpMode, "\"fallback\", \"always\" or \"never\"");

/// A response-head time limit: a whole number of seconds, or a duration string with units
/// (`5s`, `500ms`, `2m`, `1h 30m`), 1 ms to 24 h.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeout(pub Duration);

impl FromStr for Timeout {
    type Err = DurationError;

    fn from_str(text: &str) -> Result<Self, DurationError> {
        parse_timeout(text).map(Self)
    }
}

impl<'de> Deserialize<'de> for Timeout {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct TimeoutVisitor;
        impl Visitor<'_> for TimeoutVisitor {
            type Value = Timeout;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a number of seconds or a duration string such as \"5s\"")
            }
            fn visit_str<E: de::Error>(self, text: &str) -> Result<Timeout, E> {
                text.parse().map_err(E::custom)
            }
            fn visit_u64<E: de::Error>(self, secs: u64) -> Result<Timeout, E> {
                self.visit_str(&secs.to_string())
            }
            fn visit_i64<E: de::Error>(self, secs: i64) -> Result<Timeout, E> {
                match u64::try_from(secs) {
                    Ok(secs) => self.visit_u64(secs),
                    Err(_) => self.visit_f64(secs as f64),
                }
            }
            fn visit_f64<E: de::Error>(self, secs: f64) -> Result<Timeout, E> {
                if secs.fract() == 0.0 && (0.0..=MAX_SAFE_INTEGER as f64).contains(&secs) {
                    return self.visit_u64(secs as u64);
                }
                Err(E::custom(format!(
                    "{secs} is not a whole number of seconds (write a string such as \"500ms\")"
                )))
            }
        }
        deserializer.deserialize_any(TimeoutVisitor)
    }
}

/// A size: digits with an optional binary multiple (K/KiB, M/MiB, G/GiB; case-insensitive),
/// as the runner's size flags take it.
pub fn parse_bytes(text: &str) -> Result<u64, ValueError> {
    let bad = || ValueError::Bytes(text.to_string());
    let trimmed = text.trim();
    let digits = trimmed.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    let shift = match trimmed[digits.len()..].to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kib" => 10,
        "m" | "mib" => 20,
        "g" | "gib" => 30,
        _ => return Err(bad()),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let n: u64 = digits.parse().map_err(|_| bad())?;
    let bytes = n
        .checked_mul(1u64 << shift)
        .ok_or_else(|| ValueError::OutOfRange(text.to_string()))?;
    if bytes == 0 {
        return Err(ValueError::OutOfRange(text.to_string()));
    }
    Ok(bytes)
}

/// A count of at least 1 (plain digits), as the runner's count flags take it.
pub fn parse_count(text: &str) -> Result<u64, ValueError> {
    let trimmed = text.trim();
    if trimmed.is_empty() || !trimmed.bytes().all(|b| b.is_ascii_digit()) {
        return Err(ValueError::Count(text.to_string()));
    }
    match trimmed.parse::<u64>() {
        Ok(n) if n >= 1 => Ok(n),
        _ => Err(ValueError::OutOfRange(text.to_string())),
    }
}

/// Checks that `value`, when given, lies in `min..=max`.
fn in_range(path: &str, value: Option<u64>, min: u64, max: u64) -> Result<(), OptionsError> {
    match value {
        Some(n) if n < min || n > max => Err(OptionsError::new(
            path,
            format!("{n} is not an integer in {min}..={max}"),
        )),
        _ => Ok(()),
    }
}

impl Options {
    /// Reads options from an options object, naming the path of the first bad field. Ranges
    /// are checked by [`Options::validate`], not here.
    pub fn from_tree(tree: Tree) -> Result<Self, OptionsError> {
        from_tree(tree)
    }

    /// Checks every range the types alone do not: called once by the composition, whichever
    /// front end filled the options.
    pub fn validate(&self) -> Result<(), OptionsError> {
        if let Some(network) = &self.network {
            in_range(
                "network.prefixLen",
                network.prefix_len.map(u64::from),
                1,
                30,
            )?;
            in_range("network.mtu", network.mtu.map(u64::from), 576, 65535)?;
        }
        if let Some(limits) = &self.limits {
            in_range("limits.maxConnections", limits.max_connections, 1, 65_536)?;
            // smoltcp's window scaling reaches 1 GiB at most.
            in_range(
                "limits.tcpBufferBytes",
                limits.tcp_buffer_bytes,
                1024,
                1 << 30,
            )?;
            in_range(
                "limits.tcpBufferBudget",
                limits.tcp_buffer_budget,
                0,
                1 << 40,
            )?;
            in_range("limits.maxHeadBytes", limits.max_head_bytes, 256, 16 << 20)?;
            in_range(
                "limits.maxWebSocketMessage",
                limits.max_websocket_message,
                1024,
                1 << 30,
            )?;
            in_range(
                "limits.maxRequestBody",
                limits.max_request_body,
                1,
                MAX_SAFE_INTEGER,
            )?;
        }
        if let Some(relay) = &self.relay {
            relay.validate()?;
        }
        in_range("timeoutMs", self.timeout_ms, 1, 86_400_000)?;
        if self.timeout.is_some() && self.timeout_ms.is_some() {
            return Err(OptionsError::new(
                "timeout",
                "give either timeout or timeoutMs, not both",
            ));
        }
        Ok(())
    }

    /// The response-head time limit, from `timeout` or `timeoutMs`.
    pub fn timeout(&self) -> Option<Duration> {
        self.timeout
            .map(|t| t.0)
            .or(self.timeout_ms.map(Duration::from_millis))
    }

    /// The limits part, defaults when absent.
    pub fn limits(&self) -> LimitOptions {
        self.limits.clone().unwrap_or_default()
    }

    /// The stack configuration: the original's network with `network` and `limits` applied.
    /// When the gateway or prefix changes, the DHCP pool, the proxy's default address and the
    /// built-in DNS names follow the new network. `Stack::new` checks the result.
    pub fn stack_config(&self) -> net_stack::Config {
        let network = self.network.clone().unwrap_or_default();
        let mut config = net_stack::Config::default();
        let moved = network.gateway_ip.is_some() || network.prefix_len.is_some();
        if let Some(ip) = network.gateway_ip {
            config.gateway_ip = ip;
        }
        if let Some(len) = network.prefix_len {
            config.prefix_len = len;
        }
        if let Some(mac) = network.gateway_mac {
            config.gateway_mac = mac.0;
        }
        if let Some(mtu) = network.mtu {
            config.set_mtu(mtu as usize);
        }
        if moved {
            let net = u32::from(config.gateway_ip) & u32::from(config.netmask());
            let broadcast = u32::from(config.broadcast());
            config.dhcp.pool_start = Ipv4Addr::from(net.saturating_add(3));
            config.dhcp.pool_end = Ipv4Addr::from(broadcast.saturating_sub(3));
            if network.proxy_ip.is_none() {
                // The default proxy address is the network's .253 (counted from its end).
                config.virtual_ips = vec![Ipv4Addr::from(broadcast.saturating_sub(2))];
            }
        }
        if let Some(ip) = network.proxy_ip {
            config.virtual_ips = vec![ip];
        }
        let proxy_ip = config.virtual_ips[0];
        let gateway_ip = config.gateway_ip;
        for (name, ip) in &mut config.dns.hosts {
            match name.as_str() {
                "proxy.c2w.internal" => *ip = proxy_ip,
                "gateway.c2w.internal" => *ip = gateway_ip,
                _ => {}
            }
        }
        if let Some(hosts) = network.dns_hosts {
            config.dns.hosts.extend(hosts);
        }
        self.limits().apply_to_stack(&mut config);
        config
    }
}

/// A byte count as `usize` (saturating: `Config::validate` rejects what is too big).
fn size(bytes: u64) -> usize {
    usize::try_from(bytes).unwrap_or(usize::MAX)
}

/// The TCP buffer budget when `limits.tcpBufferBudget` is unset: 4 MiB in the browser, where
/// the wasm memory a burst of connections grows never comes back (256 connections with the
/// full 2 × 256 KiB each took 146–158 MiB); none natively, where freed memory is reused.
const DEFAULT_TCP_BUFFER_BUDGET: Option<u64> = if cfg!(target_arch = "wasm32") {
    Some(4 << 20)
} else {
    None
};

impl LimitOptions {
    /// Writes the network limits into the stack configuration.
    pub fn apply_to_stack(&self, config: &mut net_stack::Config) {
        if let Some(n) = self.max_connections {
            config.tcp.max_connections = size(n);
            // A burst to one port must be limited by the connection limit, not the backlog.
            config.tcp.listen_backlog = config.tcp.listen_backlog.max(size(n));
        }
        if let Some(bytes) = self.tcp_buffer_bytes {
            config.tcp.rx_buffer = size(bytes);
            config.tcp.tx_buffer = size(bytes);
        }
        config.tcp.buffer_budget = match self.tcp_buffer_budget.or(DEFAULT_TCP_BUFFER_BUDGET) {
            Some(0) | None => None,
            Some(bytes) => Some(size(bytes)),
        };
        if let Some(pool) = self.dhcp_pool {
            config.dhcp.pool_start = pool.start;
            config.dhcp.pool_end = pool.end;
        }
        if let Some(net) = self.fake_ip_net {
            config.dns.fake_ip_net = net.addr;
            config.dns.fake_ip_prefix_len = net.len;
        }
    }

    /// The request body limit: the one set, else `default_body` (the platform's).
    pub fn max_request_body(&self, default_body: Option<u64>) -> Option<u64> {
        self.max_request_body.or(default_body)
    }

    /// The proxy's per-connection limits; `default_body` applies when no body limit is set
    /// (the browser's fetch holds bodies whole and has one, natively there is none).
    pub fn proxy_limits(&self, default_body: Option<u64>) -> http_proxy::Limits {
        let mut limits = http_proxy::Limits {
            max_request_body: self.max_request_body(default_body),
            ..http_proxy::Limits::default()
        };
        if let Some(bytes) = self.max_head_bytes {
            limits.max_head_bytes = size(bytes);
        }
        if let Some(bytes) = self.max_websocket_message {
            limits.max_websocket_message = size(bytes);
        }
        limits
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The tree a JavaScript object with the same content becomes.
    fn tree(value: serde_json::Value) -> Tree {
        use serde_json::Value;
        match value {
            Value::Null => Tree::Null,
            Value::Bool(b) => Tree::Bool(b),
            Value::Number(n) => Tree::Number(n.as_f64().unwrap()),
            Value::String(s) => Tree::String(s),
            Value::Array(items) => Tree::Array(items.into_iter().map(tree).collect()),
            Value::Object(map) => {
                Tree::Object(map.into_iter().map(|(k, v)| (k, tree(v))).collect())
            }
        }
    }

    /// Reads JSON as the JS front end reads its object: with the path.
    fn parse(json: &str) -> Result<Options, String> {
        let value = serde_json::from_str(json).unwrap();
        let options = Options::from_tree(tree(value)).map_err(|e| e.to_string())?;
        options.validate().map_err(|e| e.to_string())?;
        Ok(options)
    }

    #[test]
    fn every_field_is_read() {
        let options = parse(
            r#"{
              "network": {"gatewayIp": "10.0.2.2", "gatewayMac": "02:00:00:00:00:01",
                          "prefixLen": 24, "mtu": 9000, "dnsHosts": {"db.test": "10.0.2.9"}},
              "limits": {"maxConnections": 3, "tcpBufferBytes": 16384,
                         "dhcpPool": "10.0.2.10-10.0.2.11", "fakeIpNet": "100.64.0.0/30",
                         "maxHeadBytes": 2048, "maxRequestBody": 1048576},
              "ca": {"certPem": "C", "keyPem": "K"},
              "corsProxy": "https://cors.example/?{url}",
              "rewrites": [{"host": "*.external", "url": "http://localhost:{*}"}],
              "allow": ["loopback"], "deny": ["10.0.0.0/8"],
              "timeout": "5s", "keepUserAgent": true, "logLevel": "debug"
            }"#,
        )
        .unwrap();
        let stack = options.stack_config();
        assert_eq!(stack.gateway_ip, Ipv4Addr::new(10, 0, 2, 2));
        assert_eq!(stack.gateway_mac, [2, 0, 0, 0, 0, 1]);
        assert_eq!(stack.virtual_ips, vec![Ipv4Addr::new(10, 0, 2, 253)]);
        assert_eq!(stack.tcp.max_connections, 3);
        assert_eq!((stack.tcp.rx_buffer, stack.tcp.tx_buffer), (16384, 16384));
        assert_eq!(stack.dhcp.pool_start, Ipv4Addr::new(10, 0, 2, 10));
        assert_eq!(stack.dns.fake_ip_prefix_len, 30);
        assert!(stack
            .dns
            .hosts
            .contains(&("db.test".to_string(), Ipv4Addr::new(10, 0, 2, 9))));
        assert!(stack.dns.hosts.contains(&(
            "proxy.c2w.internal".to_string(),
            Ipv4Addr::new(10, 0, 2, 253)
        )));
        stack.validate().unwrap();
        let limits = options.limits().proxy_limits(None);
        assert_eq!(
            (limits.max_head_bytes, limits.max_request_body),
            (2048, Some(1 << 20))
        );
        assert_eq!(options.timeout(), Some(Duration::from_secs(5)));
        assert_eq!(options.log_level, Some(LogLevel::Debug));
        assert_eq!(options.rewrites.unwrap()[0].url, "http://localhost:{*}");
    }

    #[test]
    fn nothing_given_keeps_the_defaults() {
        let options = parse("{}").unwrap();
        assert_eq!(options, Options::default());
        assert_eq!(options.stack_config(), net_stack::Config::default());
        let limits = options.limits().proxy_limits(Some(64 << 20));
        assert_eq!(limits.max_request_body, Some(64 << 20));
        assert_eq!(options.limits().proxy_limits(None).max_request_body, None);
        let nulls = parse(r#"{"network": null, "timeout": null, "allow": null}"#).unwrap();
        assert_eq!(nulls, Options::default());
    }

    #[test]
    fn errors_name_the_field() {
        for (json, needle) in [
            (r#"{"network": {"mtu": "big"}}"#, "network.mtu"),
            (r#"{"netwerk": {}}"#, "netwerk"),
            (
                r#"{"network": {"gatewayIp": "10.0.0.300"}}"#,
                "network.gatewayIp",
            ),
            (r#"{"network": {"gatewayMac": "5a:94"}}"#, "MAC address"),
            (r#"{"logLevel": "loud"}"#, "logLevel"),
            (
                r#"{"limits": {"maxConections": 5}}"#,
                "limits.maxConections",
            ),
            (
                r#"{"limits": {"maxConnections": 0}}"#,
                "limits.maxConnections",
            ),
            (
                r#"{"limits": {"maxRequestBody": 1.5}}"#,
                "limits.maxRequestBody",
            ),
            (
                r#"{"limits": {"tcpBufferBytes": "1M"}}"#,
                "limits.tcpBufferBytes",
            ),
            (
                r#"{"limits": {"dhcpPool": "192.168.127.9"}}"#,
                "limits.dhcpPool",
            ),
            (
                r#"{"limits": {"fakeIpNet": "198.18.0.1/15"}}"#,
                "limits.fakeIpNet",
            ),
            (r#"{"rewrites": [{"host": "a"}]}"#, "rewrites[0]"),
            (
                r#"{"rewrites": [{"host": "a", "url": "b", "x": 1}]}"#,
                "rewrites[0].x",
            ),
            (r#"{"allow": [1]}"#, "allow[0]"),
            (r#"{"timeout": "5 parsecs"}"#, "is not a duration"),
            (r#"{"timeout": "0s"}"#, "out of range"),
            (r#"{"timeout": -1}"#, "timeout"),
            (r#"{"timeout": 2.5}"#, "whole number of seconds"),
            (r#"{"timeout": true}"#, "timeout"),
            (
                r#"{"timeout": "5s", "timeoutMs": 5000}"#,
                "either timeout or timeoutMs",
            ),
            (r#"{"timeoutMs": 0}"#, "timeoutMs"),
            (r#"[]"#, "config: invalid type: sequence"),
            (r#"{"network": [1500]}"#, "network: invalid type: sequence"),
            (
                r#"{"ca": {"certPem": "C"}}"#,
                "config.ca: missing field `keyPem`",
            ),
            (
                r#"{"network": {"dnsHosts": {"a.test": "x"}}}"#,
                "network.dnsHosts.a.test",
            ),
        ] {
            let err = parse(json).unwrap_err();
            assert!(err.contains(needle), "{json}: {err}");
        }
    }

    #[test]
    fn the_relay_is_read_checked_and_never_shows_its_password() {
        let options = parse(
            r#"{"relay": {"url": "wss://relay.example/wisp/", "version": "v2",
                          "username": "u", "password": "hunter2", "udp": false,
                          "http": "always", "relayOnly": ["*.debian.org"],
                          "fetchOnly": ["10.0.0.0/8"], "hosts": {"DB.test": "127.0.0.1"}}}"#,
        )
        .unwrap();
        let relay = options.relay.as_ref().unwrap();
        assert_eq!(relay.version, Some(RelayVersion::V2));
        assert_eq!(relay.http, Some(RelayHttpMode::Always));
        assert_eq!(relay.target("db.TEST"), "127.0.0.1");
        assert_eq!(relay.target("other.test"), "other.test");
        // The names of the first sketch (`mode`, `map`) are read too.
        let sketch = parse(
            r#"{"relay": {"url": "ws://x/", "mode": "never", "map": {"a.test": "10.0.0.1"}}}"#,
        )
        .unwrap();
        let sketch = sketch.relay.as_ref().unwrap();
        assert_eq!(sketch.http, Some(RelayHttpMode::Never));
        assert_eq!(sketch.target("a.test"), "10.0.0.1");
        let shown = format!("{options:?}");
        assert!(
            !shown.contains("hunter2") && shown.contains("<set>"),
            "{shown}"
        );
        for (json, needle) in [
            (r#"{"relay": {"url": "http://x/"}}"#, "relay.url"),
            (r#"{"relay": {"url": "ws:///"}}"#, "relay.url"),
            (
                r#"{"relay": {"url": "ws://x/", "username": "u"}}"#,
                "relay.password",
            ),
            (
                r#"{"relay": {"url": "ws://x/", "password": "p"}}"#,
                "relay.username",
            ),
            (
                r#"{"relay": {"url": "ws://x/", "version": "3"}}"#,
                "relay.version",
            ),
            (
                r#"{"relay": {"url": "ws://x/", "http": "sometimes"}}"#,
                "relay.http",
            ),
            (
                r#"{"relay": {"url": "ws://x/", "relayOnly": ["a b"]}}"#,
                "relay.relayOnly[0]",
            ),
            (
                r#"{"relay": {"url": "ws://x/", "hosts": {"a.test": ""}}}"#,
                "relay.hosts.a.test",
            ),
            (r#"{"relay": {"url": "ws://x/", "mapp": {}}}"#, "relay.mapp"),
        ] {
            let err = parse(json).unwrap_err();
            assert!(err.contains(needle), "{json}: {err}");
        }
    }

    #[test]
    fn timeouts_take_seconds_and_units() {
        for (json, want) in [
            (r#"{"timeout": 2}"#, Duration::from_secs(2)),
            (r#"{"timeout": "500ms"}"#, Duration::from_millis(500)),
            (r#"{"timeout": "2m"}"#, Duration::from_secs(120)),
            (r#"{"timeoutMs": 100}"#, Duration::from_millis(100)),
        ] {
            assert_eq!(parse(json).unwrap().timeout(), Some(want), "{json}");
        }
    }

    #[test]
    fn values_parse_from_text() {
        assert_eq!(parse_bytes("4096"), Ok(4096));
        assert_eq!(parse_bytes("256K"), Ok(256 * 1024));
        assert_eq!(parse_bytes("64MiB"), Ok(64 << 20));
        assert_eq!(parse_bytes("1g"), Ok(1 << 30));
        for bad in ["", "K", "12Q", "-5", "1.5M", "0x10", "1 2"] {
            assert!(
                matches!(parse_bytes(bad), Err(ValueError::Bytes(_))),
                "{bad}"
            );
        }
        assert!(matches!(parse_bytes("0"), Err(ValueError::OutOfRange(_))));
        assert!(matches!(
            parse_bytes("99999999999999G"),
            Err(ValueError::OutOfRange(_))
        ));
        assert_eq!(parse_count("3"), Ok(3));
        assert!(parse_count("0").is_err() && parse_count("1K").is_err());
        assert!("192.168.127.20-192.168.127.10"
            .parse::<AddrRange>()
            .is_err());
        assert!("198.18.0.0/31".parse::<Cidr>().is_err());
        assert_eq!(
            "5a-94-ef-e4-0c-dd".parse::<MacAddr>(),
            Ok(MacAddr([0x5a, 0x94, 0xef, 0xe4, 0x0c, 0xdd]))
        );
        let rule: Rewrite = "*.external=http://localhost:{*}".parse().unwrap();
        assert_eq!(rule.host, "*.external");
    }

    #[test]
    fn values_the_network_rejects_fail_in_the_stack() {
        // Well-formed but outside the guest network or overlapping it: Stack::new refuses.
        for json in [
            r#"{"limits": {"dhcpPool": "10.0.0.1-10.0.0.9"}}"#,
            r#"{"limits": {"fakeIpNet": "192.168.0.0/16"}}"#,
        ] {
            let options = parse(json).unwrap();
            assert!(
                net_stack::Stack::new(options.stack_config()).is_err(),
                "{json}"
            );
        }
    }
}
