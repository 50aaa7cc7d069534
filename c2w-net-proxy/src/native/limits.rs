//! Command-line flags for the limits of the stack and the proxy (what happens when each is
//! reached is in docs/usage.md, "Limits"). Unset flags keep the crates' defaults.

use std::net::Ipv4Addr;

use clap::Args;

/// Limits on what the guest can make the runner hold: connections, buffers, address pools,
/// request sizes.
#[derive(Debug, Clone, Default, Args)]
pub struct LimitArgs {
    /// TCP connections alive at once (default 256; a listener's backlog follows it); new SYNs
    /// beyond get RST (counted as tcp_refused_limit).
    #[arg(long, help_heading = "Limits", value_name = "N", value_parser = parse_count)]
    pub max_connections: Option<usize>,

    /// TCP socket buffer per connection and direction, e.g. 256K (default 256K, at most 1G);
    /// bounds the window advertised to the guest and what the proxy may queue towards it.
    #[arg(long, help_heading = "Limits", value_name = "BYTES", value_parser = parse_bytes)]
    pub tcp_buffer: Option<u64>,

    /// DHCP addresses handed out, START-END inclusive (default
    /// 192.168.127.3-192.168.127.252); a DISCOVER when all are taken gets no OFFER (counted
    /// as dhcp_pool_exhausted).
    #[arg(long, help_heading = "Limits", value_name = "START-END", value_parser = parse_range)]
    pub dhcp_pool: Option<(Ipv4Addr, Ipv4Addr)>,

    /// Network of the DNS fake-IP pool, ADDR/LEN with LEN in 1..=30 (default 198.18.0.0/15);
    /// when full, the least recently used name's address is recycled (counted as
    /// dns_fake_ips_recycled).
    #[arg(long, help_heading = "Limits", value_name = "CIDR", value_parser = parse_cidr)]
    pub fake_ip_net: Option<(Ipv4Addr, u8)>,

    /// Largest HTTP request head, e.g. 64K (default 64K); larger heads get 431 and the
    /// connection closes (counted as heads_too_large).
    #[arg(long, help_heading = "Limits", value_name = "BYTES", value_parser = parse_bytes)]
    pub max_head_bytes: Option<u64>,

    /// Largest HTTP request body forwarded, e.g. 64M (default: no limit natively); a larger
    /// Content-Length gets 413 before anything is sent, a chunked body crossing it is aborted
    /// (counted as bodies_too_large).
    #[arg(long, help_heading = "Limits", value_name = "BYTES", value_parser = parse_bytes)]
    pub max_request_body: Option<u64>,
}

/// Why a limit flag's value cannot be used (clap prints it with the flag's name).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LimitError {
    /// Not a count of bytes.
    #[error("{0:?} is not a size in bytes (a number, optionally followed by K, M or G)")]
    Bytes(String),
    /// Not a whole number.
    #[error("{0:?} is not a whole number")]
    Count(String),
    /// A size of zero, or one beyond what the platform can address.
    #[error("{0:?} is out of range (at least 1, and it must fit in memory)")]
    Range(String),
    /// Not `START-END` with two IPv4 addresses, START not after END.
    #[error("{0:?} is not START-END with two IPv4 addresses, START not after END")]
    Pool(String),
    /// Not `ADDR/LEN` with LEN in 1..=30 and no host bits set.
    #[error("{0:?} is not a network ADDR/LEN with LEN in 1..=30 and no host bits set")]
    Cidr(String),
}

/// A size: digits with an optional binary multiple (K/KiB, M/MiB, G/GiB; case-insensitive).
pub fn parse_bytes(text: &str) -> Result<u64, LimitError> {
    let bad = || LimitError::Bytes(text.to_string());
    let trimmed = text.trim();
    let digits = trimmed.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    let unit = trimmed[digits.len()..].to_ascii_lowercase();
    let shift = match unit.as_str() {
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
        .ok_or_else(|| LimitError::Range(text.to_string()))?;
    if bytes == 0 {
        return Err(LimitError::Range(text.to_string()));
    }
    Ok(bytes)
}

/// A count of at least 1 (plain digits).
fn parse_count(text: &str) -> Result<usize, LimitError> {
    let trimmed = text.trim();
    if trimmed.is_empty() || !trimmed.bytes().all(|b| b.is_ascii_digit()) {
        return Err(LimitError::Count(text.to_string()));
    }
    match trimmed.parse::<usize>() {
        Ok(n) if n >= 1 => Ok(n),
        _ => Err(LimitError::Range(text.to_string())),
    }
}

/// `START-END`, two IPv4 addresses in order.
fn parse_range(text: &str) -> Result<(Ipv4Addr, Ipv4Addr), LimitError> {
    let bad = || LimitError::Pool(text.to_string());
    let (start, end) = text.split_once('-').ok_or_else(bad)?;
    let start: Ipv4Addr = start.trim().parse().map_err(|_| bad())?;
    let end: Ipv4Addr = end.trim().parse().map_err(|_| bad())?;
    if u32::from(start) > u32::from(end) {
        return Err(bad());
    }
    Ok((start, end))
}

/// `ADDR/LEN`, a network address with LEN in 1..=30 and no host bits.
fn parse_cidr(text: &str) -> Result<(Ipv4Addr, u8), LimitError> {
    let bad = || LimitError::Cidr(text.to_string());
    let (addr, len) = text.split_once('/').ok_or_else(bad)?;
    let addr: Ipv4Addr = addr.trim().parse().map_err(|_| bad())?;
    let len: u8 = len.trim().parse().map_err(|_| bad())?;
    if !(1..=30).contains(&len) || u32::from(addr) & (u32::MAX >> len) != 0 {
        return Err(bad());
    }
    Ok((addr, len))
}

/// A byte count as `usize` (saturating: `Config::validate` rejects what is too big).
fn size(bytes: u64) -> usize {
    usize::try_from(bytes).unwrap_or(usize::MAX)
}

impl LimitArgs {
    /// Writes every limit given on the command line into the stack's and the proxy's
    /// configuration; `Stack::new` then checks the network ones against the guest network.
    pub fn apply(&self, stack: &mut net_stack::Config, proxy: &mut http_proxy::Limits) {
        if let Some(n) = self.max_connections {
            stack.tcp.max_connections = n;
            // A burst to one port must be limited by the connection limit, not the backlog.
            stack.tcp.listen_backlog = stack.tcp.listen_backlog.max(n);
        }
        if let Some(bytes) = self.tcp_buffer {
            stack.tcp.rx_buffer = size(bytes);
            stack.tcp.tx_buffer = size(bytes);
        }
        if let Some((start, end)) = self.dhcp_pool {
            stack.dhcp.pool_start = start;
            stack.dhcp.pool_end = end;
        }
        if let Some((net, len)) = self.fake_ip_net {
            stack.dns.fake_ip_net = net;
            stack.dns.fake_ip_prefix_len = len;
        }
        if let Some(bytes) = self.max_head_bytes {
            proxy.max_head_bytes = size(bytes);
        }
        if let Some(bytes) = self.max_request_body {
            proxy.max_request_body = Some(bytes);
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        limits: LimitArgs,
    }

    fn parse(args: &[&str]) -> Result<LimitArgs, String> {
        Cli::try_parse_from(std::iter::once("c2w-net-proxy").chain(args.iter().copied()))
            .map(|cli| cli.limits)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn sizes_take_binary_suffixes_and_refuse_nonsense() {
        assert_eq!(parse_bytes("4096"), Ok(4096));
        assert_eq!(parse_bytes("256K"), Ok(256 * 1024));
        assert_eq!(parse_bytes("64MiB"), Ok(64 << 20));
        assert_eq!(parse_bytes("1g"), Ok(1 << 30));
        for bad in ["", "K", "12Q", "-5", "1.5M", "0x10", "1 2"] {
            assert!(
                matches!(parse_bytes(bad), Err(LimitError::Bytes(_))),
                "{bad}"
            );
        }
        assert!(matches!(parse_bytes("0"), Err(LimitError::Range(_))));
        assert!(matches!(
            parse_bytes("99999999999999G"),
            Err(LimitError::Range(_))
        ));
    }

    #[test]
    fn flags_are_applied_to_both_configurations() {
        let args = parse(&[
            "--max-connections",
            "3",
            "--tcp-buffer",
            "16K",
            "--dhcp-pool",
            "192.168.127.10-192.168.127.11",
            "--fake-ip-net",
            "100.64.0.0/30",
            "--max-head-bytes",
            "2K",
            "--max-request-body",
            "1M",
        ])
        .unwrap();
        let mut stack = net_stack::Config::default();
        let mut proxy = http_proxy::Limits::default();
        args.apply(&mut stack, &mut proxy);
        assert_eq!(stack.tcp.max_connections, 3);
        assert_eq!(stack.tcp.listen_backlog, 256);
        assert_eq!((stack.tcp.rx_buffer, stack.tcp.tx_buffer), (16384, 16384));
        assert_eq!(
            (stack.dhcp.pool_start, stack.dhcp.pool_end),
            (
                Ipv4Addr::new(192, 168, 127, 10),
                Ipv4Addr::new(192, 168, 127, 11)
            )
        );
        assert_eq!(
            (stack.dns.fake_ip_net, stack.dns.fake_ip_prefix_len),
            (Ipv4Addr::new(100, 64, 0, 0), 30)
        );
        assert_eq!(
            (proxy.max_head_bytes, proxy.max_request_body),
            (2048, Some(1 << 20))
        );
        stack.validate().unwrap();
    }

    #[test]
    fn no_flags_keep_the_defaults() {
        let args = parse(&[]).unwrap();
        let mut stack = net_stack::Config::default();
        let mut proxy = http_proxy::Limits::default();
        args.apply(&mut stack, &mut proxy);
        assert_eq!(stack, net_stack::Config::default());
        assert_eq!(proxy.max_request_body, None);
        assert_eq!(proxy.max_head_bytes, 64 * 1024);
    }

    #[test]
    fn bad_values_are_refused_with_the_flag_named() {
        for (flag, value) in [
            ("--max-connections", "0"),
            ("--max-connections", "1K"),
            ("--tcp-buffer", "lots"),
            ("--dhcp-pool", "192.168.127.20-192.168.127.10"),
            ("--dhcp-pool", "192.168.127.20"),
            ("--fake-ip-net", "198.18.0.1/15"),
            ("--fake-ip-net", "198.18.0.0/31"),
            ("--fake-ip-net", "198.18.0.0"),
            ("--max-request-body", "1T"),
        ] {
            let err = parse(&[flag, value]).unwrap_err();
            assert!(err.contains(flag) && err.contains(value), "{flag}: {err}");
        }
    }

    #[test]
    fn values_the_network_rejects_fail_at_start() {
        // Well-formed but outside the guest network or overlapping it: Stack::new refuses.
        for args in [
            ["--dhcp-pool", "10.0.0.1-10.0.0.9"],
            ["--fake-ip-net", "192.168.0.0/16"],
            ["--tcp-buffer", "2G"],
        ] {
            let mut stack = net_stack::Config::default();
            parse(&args)
                .unwrap()
                .apply(&mut stack, &mut http_proxy::Limits::default());
            assert!(net_stack::Stack::new(stack).is_err(), "{args:?}");
        }
    }
}
