//! Host names as leaf certificates need them: normalized, validated, and split into DNS names
//! and IP literals (an IP must go in an iPAddress SAN, never in a dNSName).

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// A validated, normalized host a leaf certificate can be issued for.
///
/// Kept apart from http-proxy's `target::Host` (a host as a URL carries it) and the `url::Host`
/// fetch-transport matches destinations on: a certificate needs stricter rules (labels of 1 to
/// 63 characters, no hyphen at a label's edge, no numeric top-level label) and the bare IPv6
/// form (`::1`) of a SAN and cache key, and this crate depends on neither of the others.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Host {
    /// A DNS name: ASCII lowercase, no trailing dot (punycode for internationalized names).
    Dns(String),
    /// An IPv4 or IPv6 literal.
    Ip(IpAddr),
}

/// Why a host string cannot have a certificate.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HostError {
    /// The host is empty (or only a dot).
    #[error("empty host name")]
    Empty,
    /// The host is longer than the 253 characters a DNS name may have.
    #[error("host name longer than 253 characters")]
    TooLong,
    /// A label (between dots) is empty or longer than 63 characters.
    #[error("host name label {0:?} is empty or longer than 63 characters")]
    BadLabelLength(String),
    /// A character that is not a letter, digit, '-' or '_' (e.g. a port, a wildcard, a space,
    /// or a non-ASCII letter that should have been converted to punycode).
    #[error("host name has the invalid character {0:?} (ports, wildcards and non-ASCII are not accepted; use the xn-- form)")]
    BadCharacter(char),
    /// A label starts or ends with a hyphen.
    #[error("host name label {0:?} starts or ends with '-'")]
    HyphenAtLabelEdge(String),
    /// The last label is all digits: neither a valid IPv4 literal nor a DNS name.
    #[error("{0:?} is neither a valid IP address nor a DNS name (numeric top-level label)")]
    NumericTld(String),
    /// Brackets around something that is not an IPv6 address.
    #[error("{0:?} in brackets is not an IPv6 address")]
    BadBracketedIpv6(String),
}

impl Host {
    /// Parses and normalizes `input`: lowercases, strips one trailing dot, accepts IPv4, IPv6
    /// with or without brackets ("[::1]", "::1") and DNS names; rejects everything else.
    pub fn parse(input: &str) -> Result<Self, HostError> {
        if let Some(inner) = input.strip_prefix('[') {
            let Some(inner) = inner.strip_suffix(']') else {
                return Err(HostError::BadBracketedIpv6(input.to_string()));
            };
            return inner
                .parse::<Ipv6Addr>()
                .map(|ip| Host::Ip(IpAddr::V6(ip)))
                .map_err(|_| HostError::BadBracketedIpv6(input.to_string()));
        }
        if let Ok(ip) = input.parse::<Ipv4Addr>() {
            return Ok(Host::Ip(IpAddr::V4(ip)));
        }
        if let Ok(ip) = input.parse::<Ipv6Addr>() {
            return Ok(Host::Ip(IpAddr::V6(ip)));
        }
        let name = input.strip_suffix('.').unwrap_or(input);
        if name.is_empty() {
            return Err(HostError::Empty);
        }
        if name.len() > 253 {
            return Err(HostError::TooLong);
        }
        if let Some(c) = name
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
        {
            return Err(HostError::BadCharacter(c));
        }
        let name = name.to_ascii_lowercase();
        for label in name.split('.') {
            if label.is_empty() || label.len() > 63 {
                return Err(HostError::BadLabelLength(label.to_string()));
            }
            if label.starts_with('-') || label.ends_with('-') {
                return Err(HostError::HyphenAtLabelEdge(label.to_string()));
            }
        }
        let tld = name.rsplit('.').next().unwrap_or_default();
        if tld.bytes().all(|b| b.is_ascii_digit()) {
            return Err(HostError::NumericTld(input.to_string()));
        }
        Ok(Host::Dns(name))
    }

    /// True for IP literals.
    pub fn is_ip(&self) -> bool {
        matches!(self, Host::Ip(_))
    }
}

impl fmt::Display for Host {
    /// The canonical form used as cache key and certificate CN ("::1", never "[::1]").
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Host::Dns(name) => f.write_str(name),
            Host::Ip(ip) => write!(f, "{ip}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg_attr(target_arch = "wasm32", wasm_bindgen_test::wasm_bindgen_test)]
    #[test]
    fn normalizes_names_and_ips() {
        assert_eq!(
            Host::parse("Example.COM.").unwrap(),
            Host::Dns("example.com".into())
        );
        assert_eq!(
            Host::parse("localhost").unwrap(),
            Host::Dns("localhost".into())
        );
        assert_eq!(
            Host::parse("_srv.my-host.example").unwrap(),
            Host::Dns("_srv.my-host.example".into())
        );
        assert_eq!(
            Host::parse("192.168.127.253").unwrap(),
            Host::Ip("192.168.127.253".parse().unwrap())
        );
        let v6 = Host::Ip("::1".parse().unwrap());
        assert_eq!(Host::parse("::1").unwrap(), v6);
        assert_eq!(Host::parse("[::1]").unwrap(), v6);
        assert_eq!(Host::parse("[0:0:0::1]").unwrap(), v6);
        assert_eq!(Host::parse("[::1]").unwrap().to_string(), "::1");
        assert_eq!(
            Host::parse("2001:DB8::A").unwrap().to_string(),
            "2001:db8::a"
        );
        assert!(Host::parse("10.0.0.1").unwrap().is_ip());
        assert!(!Host::parse("a.b").unwrap().is_ip());
    }

    #[cfg_attr(target_arch = "wasm32", wasm_bindgen_test::wasm_bindgen_test)]
    #[test]
    fn rejects_invalid_hosts() {
        assert_eq!(Host::parse(""), Err(HostError::Empty));
        assert_eq!(Host::parse("."), Err(HostError::Empty));
        assert!(matches!(
            Host::parse("a..b"),
            Err(HostError::BadLabelLength(_))
        ));
        assert!(matches!(
            Host::parse("example.com:443"),
            Err(HostError::BadCharacter(':'))
        ));
        assert!(matches!(
            Host::parse("*.example.com"),
            Err(HostError::BadCharacter('*'))
        ));
        assert!(matches!(
            Host::parse("a b"),
            Err(HostError::BadCharacter(' '))
        ));
        assert!(matches!(
            Host::parse("bücher.de"),
            Err(HostError::BadCharacter('ü'))
        ));
        assert!(matches!(
            Host::parse("-a.example"),
            Err(HostError::HyphenAtLabelEdge(_))
        ));
        assert!(matches!(
            Host::parse("256.1.1.1"),
            Err(HostError::NumericTld(_))
        ));
        assert!(matches!(
            Host::parse("1.2.3"),
            Err(HostError::NumericTld(_))
        ));
        assert!(matches!(
            Host::parse("[::1"),
            Err(HostError::BadBracketedIpv6(_))
        ));
        assert!(matches!(
            Host::parse("[1.2.3.4]"),
            Err(HostError::BadBracketedIpv6(_))
        ));
        assert!(matches!(
            Host::parse("fe80::1%eth0"),
            Err(HostError::BadCharacter(_))
        ));
        let long_label = "a".repeat(64);
        assert!(matches!(
            Host::parse(&format!("{long_label}.com")),
            Err(HostError::BadLabelLength(_))
        ));
        let long_name = ["abcdefghi"; 26].join(".");
        assert_eq!(Host::parse(&long_name), Err(HostError::TooLong));
    }
}
