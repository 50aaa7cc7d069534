//! What every backend is configured with: CORS proxy, host rewrites, allowed destinations,
//! timeout and request-body limit.

use std::time::Duration;

use percent_encoding::{percent_decode_str, utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use url::Url;

use crate::destination::{DestinationFilter, DestinationPattern};
use crate::error::ConfigError;

/// The default limit for request bodies that must be held whole (the browser backend).
pub const DEFAULT_MAX_REQUEST_BODY: u64 = 64 * 1024 * 1024;

/// Characters left as they are when a URL is put inside another (like JavaScript's
/// `encodeURIComponent`, minus `!*'()`).
const COMPONENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// Placeholder used to find where the target URL goes after the proxy URL is normalised.
const SENTINEL: &str = "fetchtransportsentinel0url";

/// A CORS proxy: each request goes to `before + percent-encoded(target URL) + after`.
///
/// Built from a prefix (`https://proxy.example/?url=`) or a template containing `{url}`
/// (`https://proxy.example/fetch?u={url}&cache=0`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CorsProxy {
    before: String,
    after: String,
}

impl CorsProxy {
    /// A proxy to which the percent-encoded target URL is appended.
    pub fn prefix(prefix: &str) -> Result<Self, ConfigError> {
        Self::from_parts(prefix, prefix, "")
    }

    /// A proxy URL template in which `{url}` (exactly once) stands for the encoded target URL.
    pub fn template(template: &str) -> Result<Self, ConfigError> {
        let err = |reason: &str| ConfigError::CorsProxy {
            proxy: template.to_string(),
            reason: reason.to_string(),
        };
        let mut parts = template.split("{url}");
        let before = parts.next().unwrap_or_default();
        let Some(after) = parts.next() else {
            return Err(err("the template has no `{url}`"));
        };
        if parts.next().is_some() {
            return Err(err("`{url}` appears more than once"));
        }
        Self::from_parts(template, before, after)
    }

    /// A template when `s` contains `{url}`, else a prefix.
    pub fn parse(s: &str) -> Result<Self, ConfigError> {
        if s.contains("{url}") {
            Self::template(s)
        } else {
            Self::prefix(s)
        }
    }

    fn from_parts(given: &str, before: &str, after: &str) -> Result<Self, ConfigError> {
        let err = |reason: String| ConfigError::CorsProxy {
            proxy: given.to_string(),
            reason,
        };
        let url = Url::parse(&format!("{before}{SENTINEL}{after}"))
            .map_err(|e| err(format!("does not make a URL: {e}")))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(err("the proxy must be an http or https URL".into()));
        }
        // Keep the normalised form so `unwrap` can recognise URLs the client hands back.
        let normal = url.as_str();
        let Some((before, after)) = normal.split_once(SENTINEL) else {
            return Err(err(
                "the target URL would land in the host name; put it in the path or query".into(),
            ));
        };
        if url.host_str().is_some_and(|h| h.contains(SENTINEL)) {
            return Err(err(
                "the target URL would land in the host name; put it in the path or query".into(),
            ));
        }
        Ok(Self {
            before: before.to_string(),
            after: after.to_string(),
        })
    }

    /// The URL actually fetched for `target`.
    pub fn wrap(&self, target: &Url) -> Result<Url, String> {
        let encoded = utf8_percent_encode(target.as_str(), COMPONENT);
        let s = format!("{}{encoded}{}", self.before, self.after);
        Url::parse(&s).map_err(|e| format!("the CORS proxy URL {s} is invalid: {e}"))
    }

    /// The target URL inside a URL made by [`CorsProxy::wrap`], if `fetched` is one.
    pub fn unwrap(&self, fetched: &Url) -> Option<Url> {
        let middle = fetched
            .as_str()
            .strip_prefix(self.before.as_str())?
            .strip_suffix(self.after.as_str())?;
        let decoded = percent_decode_str(middle).decode_utf8().ok()?;
        Url::parse(&decoded).ok()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum HostMatch {
    Exact(String),
    Below(String),
}

/// Maps guest-visible host names to real base URLs, e.g. `*.external` → `http://localhost:{*}`
/// (v86's `PORT.external`). The guest's path and query are appended to the base URL's path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RewriteRule {
    host: HostMatch,
    base: String,
}

impl RewriteRule {
    /// A rule for the host `host_pattern` (exact, or `*.suffix` for any name below `suffix`);
    /// in `base_url`, `{*}` stands for the part of the host the `*` matched.
    pub fn new(host_pattern: &str, base_url: &str) -> Result<Self, ConfigError> {
        let err = |reason: &str| ConfigError::Rewrite {
            host: host_pattern.to_string(),
            base: base_url.to_string(),
            reason: reason.to_string(),
        };
        let pattern = host_pattern.trim().to_ascii_lowercase();
        let host = match pattern.strip_prefix("*.") {
            Some(suffix) if !suffix.is_empty() && !suffix.contains('*') => {
                HostMatch::Below(suffix.trim_end_matches('.').to_string())
            }
            Some(_) => return Err(err("`*.` must be followed by a host name")),
            None if pattern.is_empty() || pattern.contains('*') => {
                return Err(err("the host pattern must be a name or `*.name`"))
            }
            None => HostMatch::Exact(pattern.trim_end_matches('.').to_string()),
        };
        if matches!(host, HostMatch::Exact(_)) && base_url.contains("{*}") {
            return Err(err("`{*}` needs a `*.` host pattern"));
        }
        let sample = base_url.replace("{*}", "1");
        match Url::parse(&sample) {
            Ok(u) if matches!(u.scheme(), "http" | "https") && u.has_host() => {}
            Ok(_) => return Err(err("the base URL must be an http or https URL")),
            Err(e) => return Err(err(&format!("the base URL does not parse: {e}"))),
        }
        Ok(Self {
            host,
            base: base_url.to_string(),
        })
    }

    /// v86's convention: `http://PORT.external/path` goes to `http://localhost:PORT/path`.
    pub fn v86_external() -> Self {
        Self {
            host: HostMatch::Below("external".to_string()),
            base: "http://localhost:{*}".to_string(),
        }
    }

    /// The rewritten URL when this rule applies to `url`; an error when it applies but the
    /// result is not a URL (e.g. `abc.external` for the v86 rule).
    pub fn apply(&self, url: &Url) -> Option<Result<Url, String>> {
        let host = url.host_str()?.trim_end_matches('.').to_ascii_lowercase();
        let captured = match &self.host {
            HostMatch::Exact(h) if *h == host => "",
            HostMatch::Below(suffix) => {
                let head = host.strip_suffix(suffix.as_str())?.strip_suffix('.')?;
                if head.is_empty() {
                    return None;
                }
                head
            }
            HostMatch::Exact(_) => return None,
        };
        let base = self.base.replace("{*}", captured);
        let mut out = match Url::parse(&base) {
            Ok(u) if matches!(u.scheme(), "http" | "https") && u.has_host() => u,
            _ => {
                return Some(Err(format!(
                    "host {host} rewrites to {base}, which is not an http(s) URL"
                )))
            }
        };
        let path = format!("{}{}", out.path().trim_end_matches('/'), url.path());
        out.set_path(&path);
        out.set_query(url.query());
        Some(Ok(out))
    }
}

/// Everything a backend applies to each request besides the header policy.
///
/// Build one with [`TransportConfig::builder`]; [`TransportConfig::default`] allows every
/// destination, has no timeout, no CORS proxy and no rewrites.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransportConfig {
    pub(crate) cors_proxy: Option<CorsProxy>,
    pub(crate) rewrites: Vec<RewriteRule>,
    pub(crate) destinations: DestinationFilter,
    pub(crate) timeout: Option<Duration>,
    pub(crate) keep_user_agent: bool,
    pub(crate) max_request_body: u64,
}

impl Default for TransportConfig {
    fn default() -> Self {
        Self {
            cors_proxy: None,
            rewrites: Vec::new(),
            destinations: DestinationFilter::allow_all(),
            timeout: None,
            keep_user_agent: false,
            max_request_body: DEFAULT_MAX_REQUEST_BODY,
        }
    }
}

impl TransportConfig {
    /// Starts a configuration with the defaults.
    pub fn builder() -> TransportConfigBuilder {
        TransportConfigBuilder::default()
    }

    /// The CORS proxy requests go through, if any.
    pub fn cors_proxy(&self) -> Option<&CorsProxy> {
        self.cors_proxy.as_ref()
    }

    /// The host rewrite rules, tried in order (the first that applies wins).
    pub fn rewrites(&self) -> &[RewriteRule] {
        &self.rewrites
    }

    /// The allowed and denied destinations.
    pub fn destinations(&self) -> &DestinationFilter {
        &self.destinations
    }

    /// How long to wait for the response head (the body is not timed).
    pub fn timeout(&self) -> Option<Duration> {
        self.timeout
    }

    /// Whether the guest's `User-Agent` is kept under the browser policy.
    pub fn keep_user_agent(&self) -> bool {
        self.keep_user_agent
    }

    /// The largest request body a backend that must hold bodies whole will carry.
    pub fn max_request_body(&self) -> u64 {
        self.max_request_body
    }
}

/// Builder for [`TransportConfig`]; values are checked by [`TransportConfigBuilder::build`].
#[derive(Debug, Clone, Default)]
pub struct TransportConfigBuilder {
    cors_proxy: Option<String>,
    rewrites: Vec<Result<RewriteRule, (String, String)>>,
    allow: Vec<String>,
    deny: Vec<String>,
    timeout: Option<Duration>,
    keep_user_agent: bool,
    max_request_body: Option<u64>,
}

impl TransportConfigBuilder {
    /// Sends every request through a CORS proxy: a prefix, or a template containing `{url}`.
    pub fn cors_proxy(mut self, proxy: impl Into<String>) -> Self {
        self.cors_proxy = Some(proxy.into());
        self
    }

    /// Adds a rewrite rule (see [`RewriteRule::new`]); rules are tried in the order added.
    pub fn rewrite(mut self, host_pattern: impl Into<String>, base_url: impl Into<String>) -> Self {
        self.rewrites
            .push(Err((host_pattern.into(), base_url.into())));
        self
    }

    /// Adds v86's `PORT.external` → `http://localhost:PORT` rule.
    pub fn v86_external(mut self) -> Self {
        self.rewrites.push(Ok(RewriteRule::v86_external()));
        self
    }

    /// Allows a destination pattern (see [`DestinationPattern::parse`]); once one is given,
    /// every other destination is refused.
    pub fn allow(mut self, pattern: impl Into<String>) -> Self {
        self.allow.push(pattern.into());
        self
    }

    /// Refuses a destination pattern, even when it is also allowed.
    pub fn deny(mut self, pattern: impl Into<String>) -> Self {
        self.deny.push(pattern.into());
        self
    }

    /// Allows only loopback destinations (what tests and the demo must use).
    pub fn loopback_only(self) -> Self {
        self.allow("loopback")
    }

    /// Fails a request with [`crate::TransportError::Timeout`] when its response head has not
    /// arrived within `timeout`.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Keeps the guest's `User-Agent` under the browser policy (dropped by default so more
    /// requests stay CORS-simple).
    pub fn keep_user_agent(mut self, keep: bool) -> Self {
        self.keep_user_agent = keep;
        self
    }

    /// Largest request body the browser backend will carry (it must hold bodies whole);
    /// default [`DEFAULT_MAX_REQUEST_BODY`] (64 MiB).
    pub fn max_request_body(mut self, bytes: u64) -> Self {
        self.max_request_body = Some(bytes);
        self
    }

    /// Checks every value and returns the configuration.
    pub fn build(self) -> Result<TransportConfig, ConfigError> {
        let cors_proxy = self
            .cors_proxy
            .as_deref()
            .map(CorsProxy::parse)
            .transpose()?;
        let rewrites = self
            .rewrites
            .into_iter()
            .map(|r| r.or_else(|(host, base)| RewriteRule::new(&host, &base)))
            .collect::<Result<Vec<_>, _>>()?;
        let mut destinations = DestinationFilter::allow_all();
        for a in &self.allow {
            destinations = destinations.allow(DestinationPattern::parse(a)?);
        }
        for d in &self.deny {
            destinations = destinations.deny(DestinationPattern::parse(d)?);
        }
        Ok(TransportConfig {
            cors_proxy,
            rewrites,
            destinations,
            timeout: self.timeout,
            keep_user_agent: self.keep_user_agent,
            max_request_body: self.max_request_body.unwrap_or(DEFAULT_MAX_REQUEST_BODY),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(s: &str) -> Url {
        Url::parse(s).unwrap()
    }

    #[test]
    fn cors_proxy_prefix_encodes_and_unwraps() {
        let proxy = CorsProxy::parse("https://Proxy.Example/?url=").unwrap();
        let target = url("http://example.com/a b?x=1&y=%2F#");
        let wrapped = proxy.wrap(&target).unwrap();
        assert_eq!(
            wrapped.as_str(),
            "https://proxy.example/?url=http%3A%2F%2Fexample.com%2Fa%2520b%3Fx%3D1%26y%3D%252F%23"
        );
        assert_eq!(proxy.unwrap(&wrapped), Some(target));
        assert_eq!(proxy.unwrap(&url("https://other.example/")), None);
    }

    #[test]
    fn cors_proxy_template_keeps_suffix() {
        let proxy = CorsProxy::parse("http://127.0.0.1:9/fetch?u={url}&cache=0").unwrap();
        let target = url("https://example.org/x");
        let wrapped = proxy.wrap(&target).unwrap();
        assert_eq!(
            wrapped.as_str(),
            "http://127.0.0.1:9/fetch?u=https%3A%2F%2Fexample.org%2Fx&cache=0"
        );
        assert_eq!(proxy.unwrap(&wrapped), Some(target));
    }

    #[test]
    fn cors_proxy_rejects_bad_values() {
        for bad in [
            "not a url",
            "ftp://proxy/?u=",
            "http://x/{url}/{url}",
            "http://{url}/",
        ] {
            assert!(
                matches!(CorsProxy::parse(bad), Err(ConfigError::CorsProxy { .. })),
                "{bad} accepted"
            );
        }
    }

    #[test]
    fn v86_rewrite_maps_port_to_localhost() {
        let rule = RewriteRule::v86_external();
        let out = rule
            .apply(&url("http://8080.external/a/b?c=d"))
            .unwrap()
            .unwrap();
        assert_eq!(out.as_str(), "http://localhost:8080/a/b?c=d");
        assert!(rule.apply(&url("http://external/")).is_none());
        assert!(rule.apply(&url("http://8080.externals/")).is_none());
        let err = rule
            .apply(&url("http://abc.external/"))
            .unwrap()
            .unwrap_err();
        assert!(err.contains("not an http(s) URL"), "{err}");
    }

    #[test]
    fn exact_rewrite_joins_base_path() {
        let rule = RewriteRule::new("API.guest", "https://real.example/v1/").unwrap();
        let out = rule
            .apply(&url("http://api.guest/items?id=3"))
            .unwrap()
            .unwrap();
        assert_eq!(out.as_str(), "https://real.example/v1/items?id=3");
        assert!(rule.apply(&url("http://x.api.guest/")).is_none());
    }

    #[test]
    fn rewrite_rejects_bad_rules() {
        assert!(RewriteRule::new("a.guest", "http://localhost:{*}").is_err());
        assert!(RewriteRule::new("*.guest", "file:///etc/{*}").is_err());
        assert!(RewriteRule::new("*.", "http://x/").is_err());
        assert!(RewriteRule::new("a*b", "http://x/").is_err());
        assert!(RewriteRule::new("*.guest", "http://{*}.real.example/").is_ok());
    }

    #[test]
    fn builder_validates_and_defaults() {
        let config = TransportConfig::builder().build().unwrap();
        assert_eq!(config, TransportConfig::default());
        assert_eq!(config.max_request_body(), 64 * 1024 * 1024);
        assert!(!config.keep_user_agent());

        let config = TransportConfig::builder()
            .loopback_only()
            .deny("127.0.0.2")
            .rewrite("*.guest", "http://localhost:{*}")
            .v86_external()
            .timeout(Duration::from_secs(3))
            .keep_user_agent(true)
            .max_request_body(10)
            .cors_proxy("http://127.0.0.1:1/?u=")
            .build()
            .unwrap();
        assert_eq!(config.rewrites().len(), 2);
        assert_eq!(
            config.destinations().allowed(),
            &[DestinationPattern::Loopback]
        );
        assert_eq!(config.timeout(), Some(Duration::from_secs(3)));
        assert_eq!(config.max_request_body(), 10);
        assert!(config.cors_proxy().is_some());

        assert!(matches!(
            TransportConfig::builder().allow("10.0.0.0/99").build(),
            Err(ConfigError::Destination { .. })
        ));
        assert!(matches!(
            TransportConfig::builder().rewrite("*.x", "nope").build(),
            Err(ConfigError::Rewrite { .. })
        ));
    }
}
