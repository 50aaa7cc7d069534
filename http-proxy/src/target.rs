//! Request-target forms (RFC 9112 §3.2) and the absolute URL the transport is given.

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};

use http::uri::{Authority, Uri};

/// URL scheme of a forwarded request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    /// Plain HTTP (default port 80).
    Http,
    /// HTTPS (default port 443).
    Https,
}

impl Scheme {
    /// The scheme's default port.
    pub fn default_port(self) -> u16 {
        match self {
            Self::Http => 80,
            Self::Https => 443,
        }
    }

    /// The scheme as written in a URL.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Http => "http",
            Self::Https => "https",
        }
    }
}

/// A host as it appears in a URL: a DNS name, an IPv4 or an IPv6 literal.
///
/// Not `mitm_ca::Host`, on purpose: this is what a request-target or Host header may carry,
/// checked only as far as forwarding needs (a name of letters, digits, `-`, `.` and `_`) and
/// written as a URL writes it (`[::1]`). mitm-ca's is stricter (a name a certificate can be
/// issued for) and writes IPv6 bare; the name a leaf is issued for goes through it there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Host {
    /// A registered name, lowercased.
    Name(String),
    /// An IPv4 literal.
    V4(Ipv4Addr),
    /// An IPv6 literal (written in brackets in URLs).
    V6(Ipv6Addr),
}

impl Host {
    /// Parses a host as written in an authority (`[::1]`, `1.2.3.4`, `name`).
    pub fn parse(raw: &str) -> Result<Self, TargetError> {
        if let Some(inner) = raw.strip_prefix('[').and_then(|r| r.strip_suffix(']')) {
            return inner
                .parse()
                .map(Self::V6)
                .map_err(|_| TargetError::InvalidHost);
        }
        if let Ok(v4) = raw.parse() {
            return Ok(Self::V4(v4));
        }
        let name = raw.trim_end_matches('.').to_ascii_lowercase();
        let valid = !name.is_empty()
            && name.len() <= 253
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_');
        if valid {
            Ok(Self::Name(name))
        } else {
            Err(TargetError::InvalidHost)
        }
    }

    /// The host without brackets, as used for SNI and certificate names.
    pub fn bare(&self) -> String {
        match self {
            Self::Name(n) => n.clone(),
            Self::V4(a) => a.to_string(),
            Self::V6(a) => a.to_string(),
        }
    }
}

impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Name(n) => f.write_str(n),
            Self::V4(a) => write!(f, "{a}"),
            Self::V6(a) => write!(f, "[{a}]"),
        }
    }
}

/// Where a request goes: scheme, host and port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    /// The scheme.
    pub scheme: Scheme,
    /// The host.
    pub host: Host,
    /// The port (explicit or the scheme's default).
    pub port: u16,
}

impl Origin {
    /// The absolute URL for `path_and_query` at this origin; the default port is omitted.
    pub fn url(&self, path_and_query: &str) -> String {
        let path = if path_and_query.is_empty() {
            "/"
        } else {
            path_and_query
        };
        if self.port == self.scheme.default_port() {
            format!("{}://{}{}", self.scheme.as_str(), self.host, path)
        } else {
            format!(
                "{}://{}:{}{}",
                self.scheme.as_str(),
                self.host,
                self.port,
                path
            )
        }
    }

    /// The value of a Host header for this origin.
    pub fn host_header(&self) -> String {
        if self.port == self.scheme.default_port() {
            self.host.to_string()
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// The request-target, classified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// `http://host[:port]/path` (proxy requests); userinfo is dropped.
    Absolute {
        /// Scheme, host, port.
        origin: Origin,
        /// Path and query, starting with `/`.
        path_and_query: String,
    },
    /// `/path?query` (requests to an origin server, i.e. to us or inside a tunnel).
    Origin(String),
    /// `host:port` (CONNECT).
    Authority {
        /// Host.
        host: Host,
        /// Port.
        port: u16,
    },
    /// `*` (OPTIONS to the server itself).
    Asterisk,
}

/// Why a request-target was rejected (answered with 400).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TargetError {
    /// Not a valid URI.
    #[error("invalid request-target")]
    Invalid,
    /// A scheme other than http or https.
    #[error("unsupported URL scheme (only http and https)")]
    UnsupportedScheme,
    /// The host is not a name or an IP literal.
    #[error("invalid host in request-target")]
    InvalidHost,
    /// The port is missing (CONNECT) or not a number.
    #[error("invalid or missing port in request-target")]
    InvalidPort,
}

/// Classifies a request-target; `connect` selects the authority-form used by CONNECT.
pub fn parse_target(target: &str, connect: bool) -> Result<Target, TargetError> {
    if connect {
        let authority: Authority = target.parse().map_err(|_| TargetError::Invalid)?;
        if target.contains('@') {
            return Err(TargetError::Invalid);
        }
        let port = authority.port_u16().ok_or(TargetError::InvalidPort)?;
        return Ok(Target::Authority {
            host: Host::parse(authority.host())?,
            port,
        });
    }
    if target == "*" {
        return Ok(Target::Asterisk);
    }
    if target.starts_with('/') {
        return Ok(Target::Origin(target.to_string()));
    }
    let uri: Uri = target.parse().map_err(|_| TargetError::Invalid)?;
    let scheme = match uri.scheme_str().map(str::to_ascii_lowercase).as_deref() {
        Some("http") => Scheme::Http,
        Some("https") => Scheme::Https,
        Some(_) => return Err(TargetError::UnsupportedScheme),
        None => return Err(TargetError::Invalid),
    };
    let authority = uri.authority().ok_or(TargetError::InvalidHost)?;
    let host = Host::parse(authority.host())?;
    let port = match authority.as_str().rsplit_once(':') {
        Some((_, p)) if !p.ends_with(']') && !authority.as_str().ends_with(']') => {
            authority.port_u16().ok_or(TargetError::InvalidPort)?
        }
        _ => scheme.default_port(),
    };
    let path_and_query = uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/")
        .to_string();
    Ok(Target::Absolute {
        origin: Origin { scheme, host, port },
        path_and_query,
    })
}

/// Parses a Host header value (`name[:port]`) into an origin for `scheme`.
pub fn origin_from_host_header(value: &str, scheme: Scheme) -> Result<Origin, TargetError> {
    let authority: Authority = value.parse().map_err(|_| TargetError::InvalidHost)?;
    let host = Host::parse(authority.host())?;
    let port = match authority.port() {
        Some(p) => p.as_u16(),
        None => scheme.default_port(),
    };
    Ok(Origin { scheme, host, port })
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;

    fn absolute(t: &str) -> (Origin, String) {
        match parse_target(t, false).unwrap() {
            Target::Absolute {
                origin,
                path_and_query,
            } => (origin, path_and_query),
            other => panic!("not absolute: {other:?}"),
        }
    }

    #[test]
    fn default_and_explicit_ports() {
        let (o, p) = absolute("http://Example.Test/a?b=1");
        assert_eq!(
            o,
            Origin {
                scheme: Scheme::Http,
                host: Host::Name("example.test".into()),
                port: 80
            }
        );
        assert_eq!(p, "/a?b=1");
        assert_eq!(o.url(&p), "http://example.test/a?b=1");
        let (o, p) = absolute("http://127.0.0.1:8080");
        assert_eq!(o.port, 8080);
        assert_eq!(o.url(&p), "http://127.0.0.1:8080/");
        assert_eq!(o.host_header(), "127.0.0.1:8080");
        let (o, _) = absolute("https://h.test:443/");
        assert_eq!(o.url("/"), "https://h.test/");
    }

    #[test]
    fn ipv6_literals() {
        let (o, p) = absolute("http://[::1]:8080/x");
        assert_eq!(o.host, Host::V6("::1".parse().unwrap()));
        assert_eq!(o.port, 8080);
        assert_eq!(o.url(&p), "http://[::1]:8080/x");
        let (o, _) = absolute("http://[2001:db8::1]/");
        assert_eq!(o.port, 80);
        assert_eq!(o.host.bare(), "2001:db8::1");
    }

    #[test]
    fn userinfo_is_dropped() {
        let (o, p) = absolute("http://user:pw@example.test:81/p");
        assert_eq!(o.url(&p), "http://example.test:81/p");
    }

    #[test]
    fn connect_authority_form() {
        assert_eq!(
            parse_target("example.test:443", true).unwrap(),
            Target::Authority {
                host: Host::Name("example.test".into()),
                port: 443
            }
        );
        assert_eq!(
            parse_target("[::1]:8443", true).unwrap(),
            Target::Authority {
                host: Host::V6("::1".parse().unwrap()),
                port: 8443
            }
        );
        assert_eq!(
            parse_target("example.test", true),
            Err(TargetError::InvalidPort)
        );
    }

    #[test]
    fn other_forms_and_errors() {
        assert_eq!(
            parse_target("/x", false).unwrap(),
            Target::Origin("/x".into())
        );
        assert_eq!(parse_target("*", false).unwrap(), Target::Asterisk);
        assert_eq!(
            parse_target("ftp://a/", false),
            Err(TargetError::UnsupportedScheme)
        );
        assert_eq!(
            parse_target("http://a b/", false),
            Err(TargetError::Invalid)
        );
        assert_eq!(
            parse_target("http://bad!host/", false).unwrap_err(),
            TargetError::InvalidHost
        );
    }

    #[test]
    fn host_header_parsing() {
        let o = origin_from_host_header("Example.test:8080", Scheme::Http).unwrap();
        assert_eq!(o.url("/"), "http://example.test:8080/");
        let o = origin_from_host_header("[::1]", Scheme::Https).unwrap();
        assert_eq!(o.port, 443);
    }
}
