//! Allow and deny lists of destinations: host names (with `*.` wildcards), IP addresses,
//! CIDR blocks and the `loopback` keyword.
//!
//! Matching is on the host as written in the URL, after WHATWG normalisation (the `url` crate
//! parses hosts exactly as browsers do, so `http://2130706433/` is `127.0.0.1` here too). Names
//! are never resolved: a deny rule for an address does not stop a name that resolves to it, and
//! an allow list of addresses refuses every name. An IPv4-mapped IPv6 address (`[::ffff:a.b.c.d]`)
//! is matched as the IPv4 address it carries.
//!
//! Hosts are `url::Host`, not http-proxy's `target::Host` or mitm-ca's `Host`: what is matched
//! must be the host exactly as a browser's URL parser reads it, and this crate depends on
//! neither of the others (http-proxy sits above it, mitm-ca beside it).

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use url::{Host, Url};

use crate::error::ConfigError;

/// One rule of an allow or deny list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DestinationPattern {
    /// `*`: every destination.
    Any,
    /// `loopback`: the name `localhost`, `127.0.0.0/8` and `::1`.
    Loopback,
    /// An exact host name, e.g. `example.com` (case-insensitive, trailing dot ignored).
    Name(String),
    /// `*.example.com`: every name strictly below `example.com` (not `example.com` itself).
    Subdomains(String),
    /// One IP address, e.g. `10.0.0.1` or `::1` (brackets allowed).
    Ip(IpAddr),
    /// A CIDR block, e.g. `10.0.0.0/8` or `fd00::/8`.
    Cidr {
        /// The network address (host bits are ignored when matching).
        network: IpAddr,
        /// The prefix length in bits.
        prefix: u8,
    },
}

impl DestinationPattern {
    /// Parses one rule: `*`, `loopback`, `name`, `*.suffix`, an IP address or a CIDR block.
    pub fn parse(pattern: &str) -> Result<Self, ConfigError> {
        let err = |reason: &str| ConfigError::Destination {
            pattern: pattern.to_string(),
            reason: reason.to_string(),
        };
        let p = pattern.trim();
        if p.is_empty() {
            return Err(err("empty pattern"));
        }
        if p == "*" {
            return Ok(Self::Any);
        }
        if p.eq_ignore_ascii_case("loopback") {
            return Ok(Self::Loopback);
        }
        if let Some((addr, prefix)) = p.split_once('/') {
            let network = parse_ip(addr).ok_or_else(|| err("not an IP address before `/`"))?;
            let prefix: u8 = prefix
                .parse()
                .map_err(|_| err("the prefix length is not a number"))?;
            let max = if network.is_ipv4() { 32 } else { 128 };
            if prefix > max {
                return Err(err("the prefix length is too long for this address family"));
            }
            return Ok(Self::Cidr { network, prefix });
        }
        if let Some(ip) = parse_ip(p) {
            return Ok(Self::Ip(normalize_ip(ip)));
        }
        if let Some(suffix) = p.strip_prefix("*.") {
            return match Host::parse(suffix) {
                Ok(Host::Domain(d)) if !d.contains('*') => {
                    Ok(Self::Subdomains(trim_dot(&d).to_string()))
                }
                Ok(_) => Err(err("`*.` must be followed by a host name")),
                Err(e) => Err(err(&e.to_string())),
            };
        }
        match Host::parse(p) {
            Ok(Host::Domain(d)) if !d.contains('*') => Ok(Self::Name(trim_dot(&d).to_string())),
            Ok(Host::Domain(_)) => Err(err("`*` is only allowed as `*` or a leading `*.`")),
            Ok(Host::Ipv4(ip)) => Ok(Self::Ip(IpAddr::V4(ip))),
            Ok(Host::Ipv6(ip)) => Ok(Self::Ip(normalize_ip(IpAddr::V6(ip)))),
            Err(e) => Err(err(&e.to_string())),
        }
    }

    /// True when `host` (from a parsed URL) matches this rule.
    pub fn matches(&self, host: &Host<&str>) -> bool {
        match (self, host_as_ip(host)) {
            (Self::Any, _) => true,
            (Self::Loopback, Some(ip)) => ip.is_loopback(),
            (Self::Loopback, None) => domain(host).is_some_and(|d| d == "localhost"),
            (Self::Name(name), None) => domain(host).is_some_and(|d| d == name),
            (Self::Subdomains(suffix), None) => domain(host).is_some_and(|d| {
                d.len() > suffix.len() + 1
                    && d.ends_with(suffix.as_str())
                    && d.as_bytes()[d.len() - suffix.len() - 1] == b'.'
            }),
            (Self::Ip(want), Some(ip)) => *want == ip,
            (Self::Cidr { network, prefix }, Some(ip)) => in_cidr(ip, *network, *prefix),
            _ => false,
        }
    }
}

impl FromStr for DestinationPattern {
    type Err = ConfigError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl fmt::Display for DestinationPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Any => f.write_str("*"),
            Self::Loopback => f.write_str("loopback"),
            Self::Name(n) => f.write_str(n),
            Self::Subdomains(s) => write!(f, "*.{s}"),
            Self::Ip(ip) => write!(f, "{ip}"),
            Self::Cidr { network, prefix } => write!(f, "{network}/{prefix}"),
        }
    }
}

/// An allow list and a deny list; deny rules win, and an empty allow list allows everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DestinationFilter {
    allow: Vec<DestinationPattern>,
    deny: Vec<DestinationPattern>,
}

impl DestinationFilter {
    /// A filter that allows every destination.
    pub fn allow_all() -> Self {
        Self::default()
    }

    /// A filter that allows only loopback destinations (tests and the demo).
    pub fn loopback_only() -> Self {
        Self::allow_all().allow(DestinationPattern::Loopback)
    }

    /// Adds an allow rule; once there is one, only matching destinations are allowed.
    pub fn allow(mut self, pattern: DestinationPattern) -> Self {
        self.allow.push(pattern);
        self
    }

    /// Adds a deny rule; a destination matching one is refused even if allowed.
    pub fn deny(mut self, pattern: DestinationPattern) -> Self {
        self.deny.push(pattern);
        self
    }

    /// The allow rules, in order.
    pub fn allowed(&self) -> &[DestinationPattern] {
        &self.allow
    }

    /// The deny rules, in order.
    pub fn denied(&self) -> &[DestinationPattern] {
        &self.deny
    }

    /// Checks the host of `url`; on refusal returns a sentence saying which rule refused it.
    pub fn check(&self, url: &Url) -> Result<(), String> {
        let Some(host) = url.host() else {
            return Err("the URL has no host".to_string());
        };
        if let Some(rule) = self.deny.iter().find(|p| p.matches(&host)) {
            return Err(format!("destination {host} matches the deny rule `{rule}`"));
        }
        if !self.allow.is_empty() && !self.allow.iter().any(|p| p.matches(&host)) {
            let list: Vec<String> = self.allow.iter().map(ToString::to_string).collect();
            return Err(format!(
                "destination {host} is not in the allow list ({})",
                list.join(", ")
            ));
        }
        Ok(())
    }
}

fn trim_dot(s: &str) -> &str {
    s.strip_suffix('.').unwrap_or(s)
}

fn domain<'a>(host: &'a Host<&str>) -> Option<&'a str> {
    match host {
        Host::Domain(d) => Some(trim_dot(d)),
        _ => None,
    }
}

fn parse_ip(s: &str) -> Option<IpAddr> {
    let s = s
        .strip_prefix('[')
        .and_then(|s| s.strip_suffix(']'))
        .unwrap_or(s);
    s.parse().ok()
}

fn normalize_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    }
}

fn host_as_ip(host: &Host<&str>) -> Option<IpAddr> {
    match host {
        Host::Ipv4(ip) => Some(IpAddr::V4(*ip)),
        Host::Ipv6(ip) => Some(normalize_ip(IpAddr::V6(*ip))),
        Host::Domain(_) => None,
    }
}

fn in_cidr(ip: IpAddr, network: IpAddr, prefix: u8) -> bool {
    match (ip, normalize_ip(network)) {
        (IpAddr::V4(ip), IpAddr::V4(net)) => {
            let mask = mask_v4(prefix);
            u32::from(ip) & mask == u32::from(net) & mask
        }
        (IpAddr::V6(ip), IpAddr::V6(net)) => {
            let mask = mask_v6(prefix);
            u128::from(ip) & mask == u128::from(net) & mask
        }
        // A block written in IPv4-mapped IPv6 form was normalised above; other mixed families
        // never match.
        _ => false,
    }
}

fn mask_v4(prefix: u8) -> u32 {
    match prefix {
        0 => 0,
        p => u32::MAX << (32 - u32::from(p.min(32))),
    }
}

fn mask_v6(prefix: u8) -> u128 {
    match prefix {
        0 => 0,
        p => u128::MAX << (128 - u32::from(p.min(128))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(s: &str) -> Url {
        Url::parse(s).unwrap()
    }

    fn p(s: &str) -> DestinationPattern {
        DestinationPattern::parse(s).unwrap()
    }

    #[test]
    fn parses_every_form() {
        assert_eq!(p("*"), DestinationPattern::Any);
        assert_eq!(p("LoopBack"), DestinationPattern::Loopback);
        assert_eq!(
            p("Example.COM."),
            DestinationPattern::Name("example.com".into())
        );
        assert_eq!(
            p("*.example.com"),
            DestinationPattern::Subdomains("example.com".into())
        );
        assert_eq!(
            p("10.1.2.3"),
            DestinationPattern::Ip("10.1.2.3".parse().unwrap())
        );
        assert_eq!(p("[::1]"), DestinationPattern::Ip("::1".parse().unwrap()));
        assert_eq!(
            p("10.0.0.0/8"),
            DestinationPattern::Cidr {
                network: "10.0.0.0".parse().unwrap(),
                prefix: 8
            }
        );
        for bad in [
            "",
            "10.0.0.0/33",
            "::/129",
            "1.2.3.4/x",
            "a*.b",
            "*.",
            "*.1.2.3.4",
        ] {
            assert!(DestinationPattern::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn display_round_trips() {
        for s in [
            "*",
            "loopback",
            "example.com",
            "*.example.com",
            "10.0.0.1",
            "fd00::/8",
        ] {
            assert_eq!(p(s).to_string(), s);
        }
    }

    #[test]
    fn loopback_keyword() {
        let f = DestinationFilter::loopback_only();
        for ok in [
            "http://localhost/",
            "http://LOCALHOST.:8080/",
            "http://127.0.0.1/",
            "http://127.9.9.9/",
            "http://[::1]:80/",
            "http://[::ffff:127.0.0.1]/",
            "http://2130706433/",
            "http://0x7f.1/",
        ] {
            assert_eq!(f.check(&url(ok)), Ok(()), "{ok}");
        }
        for bad in [
            "http://example.com/",
            "http://foo.localhost/",
            "http://10.0.0.1/",
            "http://[::2]/",
            "http://localhost.example.com/",
        ] {
            let reason = f.check(&url(bad)).unwrap_err();
            assert!(
                reason.contains("not in the allow list (loopback)"),
                "{reason}"
            );
        }
    }

    #[test]
    fn wildcard_names_match_strict_subdomains_only() {
        let rule = p("*.example.com");
        let host = |s: &str| url(s);
        assert!(rule.matches(&host("http://a.example.com/").host().unwrap()));
        assert!(rule.matches(&host("http://a.b.EXAMPLE.com/").host().unwrap()));
        assert!(!rule.matches(&host("http://example.com/").host().unwrap()));
        assert!(!rule.matches(&host("http://badexample.com/").host().unwrap()));
        assert!(!rule.matches(&host("http://1.2.3.4/").host().unwrap()));
    }

    #[test]
    fn cidr_and_ip_rules() {
        let f = DestinationFilter::allow_all()
            .allow(p("192.168.0.0/16"))
            .allow(p("fd00::/8"))
            .allow(p("8.8.8.8"));
        assert!(f.check(&url("http://192.168.44.5/")).is_ok());
        assert!(f.check(&url("http://[::ffff:192.168.1.1]/")).is_ok());
        assert!(f.check(&url("http://[fd12::1]/")).is_ok());
        assert!(f.check(&url("http://8.8.8.8/")).is_ok());
        assert!(f.check(&url("http://8.8.4.4/")).is_err());
        assert!(f.check(&url("http://192.169.0.1/")).is_err());
        assert!(f.check(&url("http://[fe00::1]/")).is_err());
        // Names are never resolved, so an address allow list refuses every name.
        assert!(f.check(&url("http://dns.google/")).is_err());
        assert!(p("0.0.0.0/0").matches(&url("http://1.2.3.4/").host().unwrap()));
        assert!(!p("0.0.0.0/0").matches(&url("http://[::2]/").host().unwrap()));
    }

    #[test]
    fn deny_wins_over_allow_and_empty_allow_allows_all() {
        let f = DestinationFilter::allow_all().deny(p("*.internal"));
        assert!(f.check(&url("https://example.org/")).is_ok());
        let reason = f.check(&url("https://db.internal/")).unwrap_err();
        assert!(reason.contains("deny rule `*.internal`"), "{reason}");

        let f = DestinationFilter::loopback_only().deny(p("127.0.0.2"));
        assert!(f.check(&url("http://127.0.0.1/")).is_ok());
        assert!(f.check(&url("http://127.0.0.2/")).is_err());
    }
}
