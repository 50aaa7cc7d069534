//! `NetProxyConfig` from JavaScript: read field by field with `Reflect`, so every mistake is
//! reported with its path (`network.mtu: expected a number`) and unknown options (typos) are
//! refused instead of silently ignored.

use std::net::Ipv4Addr;
use std::time::Duration;

use js_sys::{Array, Object, Reflect};
use wasm_bindgen::{JsCast, JsValue};

use super::log::Level;

/// A configuration value from JavaScript that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A value has the wrong JavaScript type.
    #[error("config.{path}: expected {expected}")]
    Type {
        /// Where in the config object.
        path: String,
        /// What was expected there.
        expected: &'static str,
    },
    /// An option that does not exist (usually a typo).
    #[error("config.{path}: unknown option (known: {known})")]
    Unknown {
        /// Where in the config object.
        path: String,
        /// The options accepted at that level.
        known: String,
    },
    /// A value of the right type that cannot be used.
    #[error("config.{path}: {reason}")]
    Value {
        /// Where in the config object.
        path: String,
        /// What is wrong with it.
        reason: String,
    },
}

/// The CA to import instead of generating one.
#[derive(Debug, Clone)]
pub struct CaPem {
    /// The CA certificate, PEM.
    pub cert_pem: String,
    /// Its private key, PEM (PKCS#8 or SEC1/PKCS#1 as mitm-ca accepts).
    pub key_pem: String,
}

/// One host rewrite rule (`{host, url}`).
#[derive(Debug, Clone)]
pub struct Rewrite {
    /// Host pattern: a name or `*.suffix`.
    pub host: String,
    /// The base URL requests for that host go to.
    pub url: String,
}

/// The `network` part of the config.
#[derive(Debug, Clone, Default)]
pub struct NetworkOptions {
    /// The gateway's address (DHCP, DNS, default route).
    pub gateway_ip: Option<Ipv4Addr>,
    /// The gateway's MAC address.
    pub gateway_mac: Option<[u8; 6]>,
    /// The proxy's address on the guest network.
    pub proxy_ip: Option<Ipv4Addr>,
    /// The guest network's prefix length.
    pub prefix_len: Option<u8>,
    /// The link MTU.
    pub mtu: Option<usize>,
    /// Extra static DNS names.
    pub dns_hosts: Vec<(String, Ipv4Addr)>,
}

/// The `limits` part of the config: every field unset keeps the default.
#[derive(Debug, Clone, Default)]
pub struct LimitOptions {
    /// TCP connections alive at once; SYNs beyond get RST.
    pub max_connections: Option<usize>,
    /// TCP socket buffer per connection and direction, in bytes.
    pub tcp_buffer_bytes: Option<usize>,
    /// The DHCP pool, first and last address.
    pub dhcp_pool: Option<(Ipv4Addr, Ipv4Addr)>,
    /// The DNS fake-IP network and prefix length.
    pub fake_ip_net: Option<(Ipv4Addr, u8)>,
    /// Largest HTTP request head in bytes.
    pub max_head_bytes: Option<usize>,
    /// Largest HTTP request body in bytes.
    pub max_request_body: Option<u64>,
}

/// The browser's default request body limit: the fetch backend holds bodies whole, so the
/// proxy refuses the same size early (413 on Content-Length, before reading anything).
pub const DEFAULT_MAX_REQUEST_BODY: u64 = fetch_transport::DEFAULT_MAX_REQUEST_BODY;

impl LimitOptions {
    /// Writes the network limits into the stack configuration (`Stack::new` checks them).
    pub fn apply_to_stack(&self, config: &mut net_stack::Config) {
        if let Some(n) = self.max_connections {
            config.tcp.max_connections = n;
            // A burst to one port must be limited by the connection limit, not the backlog.
            config.tcp.listen_backlog = config.tcp.listen_backlog.max(n);
        }
        if let Some(bytes) = self.tcp_buffer_bytes {
            config.tcp.rx_buffer = bytes;
            config.tcp.tx_buffer = bytes;
        }
        if let Some((start, end)) = self.dhcp_pool {
            config.dhcp.pool_start = start;
            config.dhcp.pool_end = end;
        }
        if let Some((net, len)) = self.fake_ip_net {
            config.dns.fake_ip_net = net;
            config.dns.fake_ip_prefix_len = len;
        }
    }

    /// The request body limit in bytes (the fetch backend gets the same cap).
    pub fn max_request_body(&self) -> u64 {
        self.max_request_body.unwrap_or(DEFAULT_MAX_REQUEST_BODY)
    }

    /// The proxy's per-connection limits.
    pub fn proxy_limits(&self) -> http_proxy::Limits {
        let mut limits = http_proxy::Limits {
            max_request_body: Some(self.max_request_body()),
            ..http_proxy::Limits::default()
        };
        if let Some(bytes) = self.max_head_bytes {
            limits.max_head_bytes = bytes;
        }
        limits
    }
}

/// Everything `NetProxy.create` accepts, checked for types.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Network settings.
    pub network: NetworkOptions,
    /// Limits on connections, buffers, address pools and request sizes.
    pub limits: LimitOptions,
    /// A CA to import.
    pub ca: Option<CaPem>,
    /// CORS proxy prefix or `{url}` template.
    pub cors_proxy: Option<String>,
    /// Host rewrite rules, in order.
    pub rewrites: Vec<Rewrite>,
    /// Allowed destination patterns.
    pub allow: Vec<String>,
    /// Denied destination patterns.
    pub deny: Vec<String>,
    /// Timeout for response heads.
    pub timeout: Option<Duration>,
    /// Keep the guest's User-Agent.
    pub keep_user_agent: bool,
    /// Console log level.
    pub log_level: Option<Level>,
}

/// A JS object being read, with its path for messages.
struct Reader {
    object: JsValue,
    path: String,
}

impl Reader {
    fn new(object: JsValue, path: &str, known: &[&str]) -> Result<Self, ConfigError> {
        if !object.is_object() || Array::is_array(&object) {
            return Err(ConfigError::Type {
                path: path.trim_end_matches('.').to_string(),
                expected: "an object",
            });
        }
        let reader = Reader {
            object,
            path: path.to_string(),
        };
        for key in Object::keys(reader.object.unchecked_ref::<Object>()).iter() {
            let key = key.as_string().unwrap_or_default();
            if !known.contains(&key.as_str()) {
                return Err(ConfigError::Unknown {
                    path: format!("{}{key}", reader.path),
                    known: known.join(", "),
                });
            }
        }
        Ok(reader)
    }

    fn path(&self, key: &str) -> String {
        format!("{}{key}", self.path)
    }

    /// The value at `key`, `None` when absent, undefined or null.
    fn get(&self, key: &str) -> Option<JsValue> {
        let value = Reflect::get(&self.object, &JsValue::from_str(key)).ok()?;
        (!value.is_undefined() && !value.is_null()).then_some(value)
    }

    fn string(&self, key: &str) -> Result<Option<String>, ConfigError> {
        self.get(key)
            .map(|v| {
                v.as_string().ok_or(ConfigError::Type {
                    path: self.path(key),
                    expected: "a string",
                })
            })
            .transpose()
    }

    fn number(&self, key: &str) -> Result<Option<f64>, ConfigError> {
        self.get(key)
            .map(|v| {
                v.as_f64().ok_or(ConfigError::Type {
                    path: self.path(key),
                    expected: "a number",
                })
            })
            .transpose()
    }

    fn integer(&self, key: &str, min: f64, max: f64) -> Result<Option<u64>, ConfigError> {
        let Some(n) = self.number(key)? else {
            return Ok(None);
        };
        if n.fract() != 0.0 || n < min || n > max {
            return Err(ConfigError::Value {
                path: self.path(key),
                reason: format!("{n} is not an integer in {min}..={max}"),
            });
        }
        Ok(Some(n as u64))
    }

    fn boolean(&self, key: &str) -> Result<Option<bool>, ConfigError> {
        self.get(key)
            .map(|v| {
                v.as_bool().ok_or(ConfigError::Type {
                    path: self.path(key),
                    expected: "a boolean",
                })
            })
            .transpose()
    }

    fn strings(&self, key: &str) -> Result<Vec<String>, ConfigError> {
        let Some(value) = self.get(key) else {
            return Ok(Vec::new());
        };
        let type_err = |path: String| ConfigError::Type {
            path,
            expected: "an array of strings",
        };
        let array = value
            .dyn_into::<Array>()
            .map_err(|_| type_err(self.path(key)))?;
        array
            .iter()
            .enumerate()
            .map(|(i, v)| {
                v.as_string()
                    .ok_or_else(|| type_err(format!("{}[{i}]", self.path(key))))
            })
            .collect()
    }

    fn ipv4(&self, key: &str) -> Result<Option<Ipv4Addr>, ConfigError> {
        self.string(key)?
            .map(|s| {
                s.parse().map_err(|_| ConfigError::Value {
                    path: self.path(key),
                    reason: format!("{s:?} is not an IPv4 address"),
                })
            })
            .transpose()
    }
}

fn parse_mac(s: &str, path: String) -> Result<[u8; 6], ConfigError> {
    let err = || ConfigError::Value {
        path: path.clone(),
        reason: format!("{s:?} is not a MAC address like 5a:94:ef:e4:0c:dd"),
    };
    let mut mac = [0u8; 6];
    let mut parts = s.split([':', '-']);
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
    Ok(mac)
}

fn parse_network(value: JsValue) -> Result<NetworkOptions, ConfigError> {
    let r = Reader::new(
        value,
        "network.",
        &[
            "gatewayIp",
            "gatewayMac",
            "proxyIp",
            "prefixLen",
            "mtu",
            "dnsHosts",
        ],
    )?;
    let mut out = NetworkOptions {
        gateway_ip: r.ipv4("gatewayIp")?,
        proxy_ip: r.ipv4("proxyIp")?,
        prefix_len: r.integer("prefixLen", 1.0, 30.0)?.map(|n| n as u8),
        mtu: r.integer("mtu", 576.0, 65535.0)?.map(|n| n as usize),
        ..NetworkOptions::default()
    };
    if let Some(mac) = r.string("gatewayMac")? {
        out.gateway_mac = Some(parse_mac(&mac, r.path("gatewayMac"))?);
    }
    if let Some(hosts) = r.get("dnsHosts") {
        let path = r.path("dnsHosts");
        if !hosts.is_object() || Array::is_array(&hosts) {
            return Err(ConfigError::Type {
                path,
                expected: "an object mapping names to IPv4 addresses",
            });
        }
        for entry in Object::entries(hosts.unchecked_ref::<Object>()).iter() {
            let entry: Array = entry.unchecked_into();
            let name = entry.get(0).as_string().unwrap_or_default();
            let ip = entry
                .get(1)
                .as_string()
                .and_then(|s| s.parse::<Ipv4Addr>().ok())
                .ok_or_else(|| ConfigError::Value {
                    path: format!("{path}.{name}"),
                    reason: "expected an IPv4 address string".into(),
                })?;
            out.dns_hosts.push((name, ip));
        }
    }
    Ok(out)
}

/// Largest safe integer in JavaScript (2^53 - 1): sizes beyond cannot be written exactly.
const MAX_SAFE_INTEGER: f64 = 9_007_199_254_740_991.0;

/// `"START-END"`: two IPv4 addresses, START not after END.
fn parse_pool(s: &str, path: String) -> Result<(Ipv4Addr, Ipv4Addr), ConfigError> {
    let err = || ConfigError::Value {
        path: path.clone(),
        reason: format!("{s:?} is not \"START-END\" with two IPv4 addresses, START not after END"),
    };
    let (start, end) = s.split_once('-').ok_or_else(err)?;
    let start: Ipv4Addr = start.trim().parse().map_err(|_| err())?;
    let end: Ipv4Addr = end.trim().parse().map_err(|_| err())?;
    if u32::from(start) > u32::from(end) {
        return Err(err());
    }
    Ok((start, end))
}

/// `"ADDR/LEN"`: a network address with LEN in 1..=30 and no host bits set.
fn parse_cidr(s: &str, path: String) -> Result<(Ipv4Addr, u8), ConfigError> {
    let err = || ConfigError::Value {
        path: path.clone(),
        reason: format!(
            "{s:?} is not a network \"ADDR/LEN\" with LEN in 1..=30 and no host bits set"
        ),
    };
    let (addr, len) = s.split_once('/').ok_or_else(err)?;
    let addr: Ipv4Addr = addr.trim().parse().map_err(|_| err())?;
    let len: u8 = len.trim().parse().map_err(|_| err())?;
    if !(1..=30).contains(&len) || u32::from(addr) & (u32::MAX >> len) != 0 {
        return Err(err());
    }
    Ok((addr, len))
}

fn parse_limits(value: JsValue) -> Result<LimitOptions, ConfigError> {
    let r = Reader::new(
        value,
        "limits.",
        &[
            "maxConnections",
            "tcpBufferBytes",
            "dhcpPool",
            "fakeIpNet",
            "maxHeadBytes",
            "maxRequestBody",
        ],
    )?;
    let dhcp_pool = match r.string("dhcpPool")? {
        Some(s) => Some(parse_pool(&s, r.path("dhcpPool"))?),
        None => None,
    };
    let fake_ip_net = match r.string("fakeIpNet")? {
        Some(s) => Some(parse_cidr(&s, r.path("fakeIpNet"))?),
        None => None,
    };
    Ok(LimitOptions {
        max_connections: r
            .integer("maxConnections", 1.0, 65_536.0)?
            .map(|n| n as usize),
        // smoltcp's window scaling reaches 1 GiB at most.
        tcp_buffer_bytes: r
            .integer("tcpBufferBytes", 1024.0, 1_073_741_824.0)?
            .map(|n| n as usize),
        dhcp_pool,
        fake_ip_net,
        max_head_bytes: r
            .integer("maxHeadBytes", 256.0, 16_777_216.0)?
            .map(|n| n as usize),
        max_request_body: r.integer("maxRequestBody", 1.0, MAX_SAFE_INTEGER)?,
    })
}

fn parse_rewrites(r: &Reader) -> Result<Vec<Rewrite>, ConfigError> {
    let Some(value) = r.get("rewrites") else {
        return Ok(Vec::new());
    };
    let array = value.dyn_into::<Array>().map_err(|_| ConfigError::Type {
        path: r.path("rewrites"),
        expected: "an array of {host, url}",
    })?;
    array
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let rule = Reader::new(v, &format!("rewrites[{i}]."), &["host", "url"])?;
            let need = |key: &str| {
                rule.string(key)?.ok_or(ConfigError::Type {
                    path: rule.path(key),
                    expected: "a string",
                })
            };
            Ok(Rewrite {
                host: need("host")?,
                url: need("url")?,
            })
        })
        .collect()
}

/// A duration given as a whole number of seconds or a string such as `"5s"`, `"500ms"`, `"2m"`.
fn parse_timeout_value(value: &JsValue, path: &str) -> Result<Duration, ConfigError> {
    let text = if let Some(n) = value.as_f64() {
        if n.fract() != 0.0 || !(0.0..=MAX_SAFE_INTEGER).contains(&n) {
            return Err(ConfigError::Value {
                path: path.to_string(),
                reason: format!(
                    "{n} is not a whole number of seconds (write a string such as \"500ms\")"
                ),
            });
        }
        (n as u64).to_string()
    } else if let Some(s) = value.as_string() {
        s
    } else {
        return Err(ConfigError::Type {
            path: path.to_string(),
            expected: "a number of seconds or a duration string such as \"5s\"",
        });
    };
    crate::duration::parse_timeout(&text).map_err(|e| ConfigError::Value {
        path: path.to_string(),
        reason: e.to_string(),
    })
}

/// Reads the config object given to `NetProxy.create` (`undefined`/`null` = all defaults).
pub fn parse(value: &JsValue) -> Result<Options, ConfigError> {
    if value.is_undefined() || value.is_null() {
        return Ok(Options::default());
    }
    let r = Reader::new(
        value.clone(),
        "",
        &[
            "network",
            "limits",
            "ca",
            "corsProxy",
            "rewrites",
            "allow",
            "deny",
            "timeout",
            "timeoutMs",
            "keepUserAgent",
            "logLevel",
        ],
    )?;
    let network = r.get("network").map(parse_network).transpose()?;
    let limits = r.get("limits").map(parse_limits).transpose()?;
    let ca = match r.get("ca") {
        Some(v) => {
            let ca = Reader::new(v, "ca.", &["certPem", "keyPem"])?;
            let need = |key: &str| {
                ca.string(key)?.ok_or(ConfigError::Type {
                    path: ca.path(key),
                    expected: "a PEM string",
                })
            };
            Some(CaPem {
                cert_pem: need("certPem")?,
                key_pem: need("keyPem")?,
            })
        }
        None => None,
    };
    let timeout_ms = r
        .integer("timeoutMs", 1.0, 86_400_000.0)?
        .map(Duration::from_millis);
    let timeout = match (r.get("timeout"), timeout_ms) {
        (Some(_), Some(_)) => {
            return Err(ConfigError::Value {
                path: r.path("timeout"),
                reason: "give either timeout or timeoutMs, not both".into(),
            })
        }
        (Some(v), None) => Some(parse_timeout_value(&v, &r.path("timeout"))?),
        (None, ms) => ms,
    };
    let log_level = match r.string("logLevel")? {
        Some(s) => Some(Level::parse(&s).ok_or_else(|| ConfigError::Value {
            path: r.path("logLevel"),
            reason: format!("{s:?} is not one of error, warn, info, debug, trace"),
        })?),
        None => None,
    };
    Ok(Options {
        network: network.unwrap_or_default(),
        limits: limits.unwrap_or_default(),
        ca,
        cors_proxy: r.string("corsProxy")?,
        rewrites: parse_rewrites(&r)?,
        allow: r.strings("allow")?,
        deny: r.strings("deny")?,
        timeout,
        keep_user_agent: r.boolean("keepUserAgent")?.unwrap_or(false),
        log_level,
    })
}

/// The stack configuration: the original's defaults with `network` applied. When the gateway
/// or prefix changes, the DHCP pool and the built-in DNS names follow the new network.
pub fn stack_config(network: &NetworkOptions) -> net_stack::Config {
    let mut config = net_stack::Config::default();
    let moved = network.gateway_ip.is_some() || network.prefix_len.is_some();
    if let Some(ip) = network.gateway_ip {
        config.gateway_ip = ip;
    }
    if let Some(len) = network.prefix_len {
        config.prefix_len = len;
    }
    if let Some(mac) = network.gateway_mac {
        config.gateway_mac = mac;
    }
    if let Some(mtu) = network.mtu {
        config.set_mtu(mtu);
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
    config.dns.hosts.extend(network.dns_hosts.iter().cloned());
    config
}
