//! Command-line flags for the limits of the stack and the proxy (what happens when each is
//! reached is in docs/usage.md, "Limits"). Unset flags keep the crates' defaults.

use clap::Args;

use crate::options::{parse_bytes, parse_count, AddrRange, Cidr, LimitOptions};

/// Limits on what the guest can make the runner hold: connections, buffers, address pools,
/// request sizes.
#[derive(Debug, Clone, Default, Args)]
pub struct LimitArgs {
    /// TCP connections alive at once (default 256; a listener's backlog follows it); new SYNs
    /// beyond get RST (counted as tcp_refused_limit).
    #[arg(long, help_heading = "Limits", value_name = "N", value_parser = parse_count)]
    pub max_connections: Option<u64>,

    /// TCP socket buffer per connection and direction, e.g. 256K (default 256K, at most 1G);
    /// bounds the window advertised to the guest and what the proxy may queue towards it.
    #[arg(long, help_heading = "Limits", value_name = "BYTES", value_parser = parse_bytes)]
    pub tcp_buffer: Option<u64>,

    /// TCP socket buffer bytes all connections may hold together before new ones get smaller
    /// buffers (each at most an eighth of what is left, at least 16 segments each way), e.g.
    /// 64M; 0 = no cap (the default natively).
    #[arg(long, help_heading = "Limits", value_name = "BYTES", value_parser = parse_bytes)]
    pub tcp_buffer_budget: Option<u64>,

    /// DHCP addresses handed out, START-END inclusive (default
    /// 192.168.127.3-192.168.127.252); a DISCOVER when all are taken gets no OFFER (counted
    /// as dhcp_pool_exhausted).
    #[arg(long, help_heading = "Limits", value_name = "START-END", value_parser = clap::value_parser!(AddrRange))]
    pub dhcp_pool: Option<AddrRange>,

    /// Network of the DNS fake-IP pool, ADDR/LEN with LEN in 1..=30 (default 198.18.0.0/15);
    /// when full, the least recently used name's address is recycled (counted as
    /// dns_fake_ips_recycled).
    #[arg(long, help_heading = "Limits", value_name = "CIDR", value_parser = clap::value_parser!(Cidr))]
    pub fake_ip_net: Option<Cidr>,

    /// Largest HTTP request head, e.g. 64K (default 64K); larger heads get 431 and the
    /// connection closes (counted as heads_too_large).
    #[arg(long, help_heading = "Limits", value_name = "BYTES", value_parser = parse_bytes)]
    pub max_head_bytes: Option<u64>,

    /// Largest HTTP request body forwarded, e.g. 64M (default: no limit natively); a larger
    /// Content-Length gets 413 before anything is sent, a chunked body crossing it is aborted
    /// (counted as bodies_too_large).
    #[arg(long, help_heading = "Limits", value_name = "BYTES", value_parser = parse_bytes)]
    pub max_request_body: Option<u64>,

    /// Largest WebSocket message carried either way, e.g. 1M (default 16M); a larger one
    /// closes the guest's session with 1009.
    #[arg(long, help_heading = "Limits", value_name = "BYTES", value_parser = parse_bytes)]
    pub max_websocket_message: Option<u64>,
}

impl LimitArgs {
    /// The limits given on the command line, as the options every front end fills.
    pub fn options(&self) -> LimitOptions {
        LimitOptions {
            max_connections: self.max_connections,
            tcp_buffer_bytes: self.tcp_buffer,
            tcp_buffer_budget: self.tcp_buffer_budget,
            dhcp_pool: self.dhcp_pool,
            fake_ip_net: self.fake_ip_net,
            max_head_bytes: self.max_head_bytes,
            max_request_body: self.max_request_body,
            max_websocket_message: self.max_websocket_message,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

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
    fn flags_reach_both_configurations() {
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
        let options = crate::options::Options {
            limits: Some(args.options()),
            ..Default::default()
        };
        options.validate().unwrap();
        let stack = options.stack_config();
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
        let proxy = options.limits().proxy_limits(None);
        assert_eq!(
            (proxy.max_head_bytes, proxy.max_request_body),
            (2048, Some(1 << 20))
        );
        stack.validate().unwrap();
    }

    #[test]
    fn no_flags_keep_the_defaults() {
        let options = crate::options::Options {
            limits: Some(parse(&[]).unwrap().options()),
            ..Default::default()
        };
        assert_eq!(options.stack_config(), net_stack::Config::default());
        let proxy = options.limits().proxy_limits(None);
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
}
