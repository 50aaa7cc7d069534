//! Command-line arguments of the native runner.

use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::Duration;

use clap::{ArgGroup, Parser};
use fetch_transport::NativeTransport;

use super::RunnerError;
use std::collections::BTreeMap;

use fetch_transport::relay::Dialer;

use crate::compose::{ComposeError, TransportFactory};
use crate::options::{
    CaPem, NetworkOptions, Options, RelayHttpMode, RelayOptions, RelayVersion, Rewrite, Timeout,
};

/// c2w-net-proxy: the virtual network (DHCP, DNS, TCP/IP) and HTTP(S) proxy behind an
/// emulated NIC, attached to a Linux TAP device or a QEMU stream socket.
#[derive(Debug, Clone, Parser)]
#[command(version, group(ArgGroup::new("link").required(true).args(["tap", "qemu_listen"])))]
pub struct Args {
    /// Create (or attach to) the TAP device NAME (IFF_TAP | IFF_NO_PI). It keeps working
    /// after the interface is moved into another network namespace.
    #[arg(long, value_name = "NAME")]
    pub tap: Option<String>,

    /// Listen for QEMU's `-netdev stream` / `-netdev socket,connect=` framing on
    /// `host:port` (TCP) or `unix:PATH`. One guest at a time; the next may connect after it.
    #[arg(long, value_name = "ADDR")]
    pub qemu_listen: Option<String>,

    /// Write every frame in both directions to this pcap file (open it in Wireshark).
    #[arg(long, value_name = "PATH")]
    pub pcap: Option<PathBuf>,

    /// Link MTU offered to the guest by DHCP (576..=65535, default 1500). A large MTU such as
    /// 65520 cuts per-packet work when the guest's link allows it; TCP buffers grow to hold at
    /// least 16 segments unless --tcp-buffer says otherwise.
    #[arg(long, value_name = "BYTES", value_parser = clap::value_parser!(u16).range(576..))]
    pub mtu: Option<u16>,

    /// Inject seeded faults into the frames of both directions (off by default), e.g.
    /// `loss=5%,reorder=1%,dup=1%,delay=100ms,seed=7` (also `jitter=`, `queue=`), for testing.
    #[cfg(feature = "fault")]
    #[arg(long, value_name = "SPEC")]
    pub fault: Option<net_stack::fault::FaultSpec>,

    /// Log filter: a level (error, warn, info, debug, trace) or tracing directives.
    #[arg(long, value_name = "LEVEL", default_value = "info")]
    pub log: String,

    /// Also trust this PEM CA certificate for origins' TLS (repeatable).
    #[arg(long, value_name = "PATH")]
    pub trust_ca: Vec<PathBuf>,

    /// Use this CA (PEM certificate) to issue the guest-facing leaf certificates, with
    /// `--ca-key`; without both, a fresh CA is generated at start.
    #[arg(long, value_name = "PATH", requires = "ca_key")]
    pub ca_cert: Option<PathBuf>,

    /// The PKCS#8 PEM private key of `--ca-cert`.
    #[arg(long, value_name = "PATH", requires = "ca_cert")]
    pub ca_key: Option<PathBuf>,

    /// Write the CA certificate (PEM, never the key) here, for the guest to trust.
    #[arg(long, value_name = "PATH")]
    pub ca_cert_out: Option<PathBuf>,

    /// Only allow these destinations (host, `*.suffix`, IP, CIDR or `loopback`; repeatable).
    #[arg(long, value_name = "PATTERN")]
    pub allow: Vec<String>,

    /// Refuse these destinations with 403 (same patterns as --allow; repeatable).
    #[arg(long, value_name = "PATTERN")]
    pub deny: Vec<String>,

    /// Send requests for HOST (or `*.suffix`) to a base URL instead: `HOST=URL` (repeatable;
    /// `{*}` in URL stands for what `*` matched, e.g. `*.external=http://localhost:{*}`).
    #[arg(long, value_name = "HOST=URL")]
    pub rewrite: Vec<Rewrite>,

    /// Per-request timeout for origins' response heads: a duration such as `5s`, `500ms`,
    /// `2m`, or a plain number of seconds (1 ms to 24 h).
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = crate::duration::parse_timeout)]
    pub timeout: Duration,

    /// Behave like the browser's fetch(): decoded bodies, forbidden headers removed.
    #[arg(long)]
    pub browser_like: bool,

    /// Limits on connections, buffers, address pools and request sizes.
    #[command(flatten)]
    pub limits: super::limits::LimitArgs,

    /// Write the stack's and proxy's counters and the process's memory (JSON) to PATH every
    /// 500 ms and on exit, replacing the file atomically.
    #[arg(long, value_name = "PATH")]
    pub stats_file: Option<PathBuf>,

    /// A Wisp relay (`ws://HOST:PORT/` or `wss://...`) for TCP to any port, UDP, and CONNECT
    /// tunnels end to end; without it only HTTP(S) through the proxy leaves.
    #[arg(long, value_name = "URL")]
    pub relay: Option<String>,

    /// The relay's protocol version: auto (v2 when the server takes it), v1 or v2.
    #[arg(long, value_name = "VERSION", requires = "relay")]
    pub relay_version: Option<RelayVersion>,

    /// User name and password for a v2 relay that asks for them: `USER:PASSWORD`.
    #[arg(long, value_name = "USER:PASSWORD", requires = "relay")]
    pub relay_auth: Option<String>,

    /// Keep the guest's UDP off the relay (only DHCP and DNS to the gateway are answered).
    #[arg(long, requires = "relay")]
    pub relay_no_udp: bool,

    /// Plain http:// through the proxy with a relay: fallback (fetch first, the relay when it
    /// fails), always (the relay only) or never (fetch only).
    #[arg(long, value_name = "MODE", requires = "relay")]
    pub relay_http: Option<RelayHttpMode>,

    /// Plain HTTP to these destinations always goes through the relay (allow/deny pattern
    /// syntax; repeatable).
    #[arg(long, value_name = "PATTERN", requires = "relay")]
    pub relay_only: Vec<String>,

    /// Plain HTTP to these destinations never goes through the relay (repeatable).
    #[arg(long, value_name = "PATTERN", requires = "relay")]
    pub fetch_only: Vec<String>,

    /// Have the relay connect to TARGET when the guest asks for NAME: `NAME=TARGET`
    /// (repeatable), e.g. `db.test=127.0.0.1` for a server on the relay host's loopback.
    #[arg(long, value_name = "NAME=TARGET", requires = "relay")]
    pub relay_host: Vec<String>,

    /// Forward a host port into the guest: `[HOST:]PORT=GUEST_PORT` (repeatable; HOST is
    /// 127.0.0.1 unless given). Connections go to the guest's DHCP address; with no guest
    /// yet, or nothing listening on GUEST_PORT, they are reset.
    #[arg(long, value_name = "[HOST:]PORT=GUEST_PORT")]
    pub forward: Vec<super::Forward>,
}

/// Where the runner gets its guest from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenTarget {
    /// A TAP device by name.
    Tap(String),
    /// A TCP address for QEMU's stream framing.
    Tcp(String),
    /// A Unix socket path for QEMU's stream framing.
    Unix(PathBuf),
}

impl Args {
    /// The link selected on the command line.
    pub fn listen(&self) -> ListenTarget {
        if let Some(name) = &self.tap {
            return ListenTarget::Tap(name.clone());
        }
        let addr = self.qemu_listen.clone().unwrap_or_default();
        match addr.strip_prefix("unix:") {
            Some(path) => ListenTarget::Unix(PathBuf::from(path)),
            None => ListenTarget::Tcp(addr.strip_prefix("tcp:").unwrap_or(&addr).to_string()),
        }
    }
}

fn read_file(path: &Path) -> Result<Vec<u8>, RunnerError> {
    std::fs::read(path).map_err(|source| RunnerError::File {
        path: path.display().to_string(),
        source,
    })
}

fn read_text(path: &Path) -> Result<String, RunnerError> {
    Ok(String::from_utf8_lossy(&read_file(path)?).into_owned())
}

impl Args {
    /// The options the flags describe (the CA files read), the same type the browser's
    /// `NetProxyConfig` deserializes into.
    pub fn options(&self) -> Result<Options, RunnerError> {
        let ca = match (&self.ca_cert, &self.ca_key) {
            (Some(cert), Some(key)) => Some(CaPem {
                cert_pem: read_text(cert)?,
                key_pem: read_text(key)?,
            }),
            _ => None,
        };
        Ok(Options {
            network: self.mtu.map(|mtu| NetworkOptions {
                mtu: Some(u32::from(mtu)),
                ..NetworkOptions::default()
            }),
            limits: Some(self.limits.options()),
            ca,
            rewrites: Some(self.rewrite.clone()),
            allow: Some(self.allow.clone()),
            deny: Some(self.deny.clone()),
            timeout: Some(Timeout(self.timeout)),
            relay: self.relay_options()?,
            ..Options::default()
        })
    }

    /// The `relay` options from `--relay*`.
    fn relay_options(&self) -> Result<Option<RelayOptions>, RunnerError> {
        let Some(url) = &self.relay else {
            return Ok(None);
        };
        let (username, password) = match &self.relay_auth {
            Some(auth) => {
                let (user, password) = auth.split_once(':').ok_or_else(|| {
                    RunnerError::Argument("--relay-auth must be USER:PASSWORD".into())
                })?;
                (Some(user.to_string()), Some(password.to_string()))
            }
            None => (None, None),
        };
        let mut hosts = BTreeMap::new();
        for entry in &self.relay_host {
            let (name, target) = entry.split_once('=').ok_or_else(|| {
                RunnerError::Argument(format!("--relay-host {entry:?} is not NAME=TARGET"))
            })?;
            hosts.insert(name.to_string(), target.to_string());
        }
        Ok(Some(RelayOptions {
            url: url.clone(),
            version: self.relay_version,
            username,
            password,
            udp: Some(!self.relay_no_udp),
            http: self.relay_http,
            relay_only: Some(self.relay_only.clone()),
            fetch_only: Some(self.fetch_only.clone()),
            hosts: Some(hosts),
        }))
    }

    /// Opens the relay's WebSocket natively, trusting the same CAs as the transport.
    pub fn dialer(&self) -> Result<Option<Rc<dyn Dialer>>, RunnerError> {
        if self.relay.is_none() {
            return Ok(None);
        }
        let mut builder = NativeTransport::builder();
        for path in &self.trust_ca {
            builder = builder
                .add_root_pem(&read_file(path)?)
                .map_err(ComposeError::from)?;
        }
        let dialer = builder.relay_dialer().map_err(ComposeError::from)?;
        Ok(Some(Rc::new(dialer)))
    }

    /// Opens the guest's WebSockets natively (tokio-tungstenite), trusting the same CAs as the
    /// transport and accepting messages up to the options' limit.
    pub fn websocket_dialer(&self, options: &Options) -> Result<Rc<dyn Dialer>, RunnerError> {
        let mut builder = NativeTransport::builder();
        for path in &self.trust_ca {
            builder = builder
                .add_root_pem(&read_file(path)?)
                .map_err(ComposeError::from)?;
        }
        let limit = options.limits().proxy_limits(None).max_websocket_message;
        let dialer = builder
            .relay_dialer()
            .map_err(ComposeError::from)?
            .max_message(limit);
        Ok(Rc::new(dialer))
    }

    /// Makes the native transport (reqwest) from the options' transport settings, with the
    /// extra trusted CAs and the browser-like mode of the command line.
    pub fn transport(&self) -> Result<TransportFactory, RunnerError> {
        let roots = self
            .trust_ca
            .iter()
            .map(|path| read_file(path))
            .collect::<Result<Vec<_>, _>>()?;
        let browser_like = self.browser_like;
        Ok(Box::new(move |config| {
            let mut builder = NativeTransport::builder()
                .config(config)
                .browser_like(browser_like);
            for pem in &roots {
                builder = builder.add_root_pem(pem)?;
            }
            Ok(Rc::new(builder.build()?))
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(extra: &[&str]) -> Result<Args, clap::Error> {
        Args::try_parse_from(["c2w-net-proxy", "--tap", "t0"].iter().chain(extra))
    }

    #[test]
    fn timeout_takes_units_and_plain_seconds() {
        assert_eq!(parse(&[]).unwrap().timeout, Duration::from_secs(60));
        for (text, want) in [
            ("5s", Duration::from_secs(5)),
            ("500ms", Duration::from_millis(500)),
            ("2m", Duration::from_secs(120)),
            ("5", Duration::from_secs(5)),
        ] {
            assert_eq!(parse(&["--timeout", text]).unwrap().timeout, want, "{text}");
        }
    }

    #[test]
    fn a_bad_timeout_is_refused_with_a_reason() {
        let err = parse(&["--timeout", "5 parsecs"]).unwrap_err().to_string();
        assert!(err.contains("is not a duration"), "{err}");
        let err = parse(&["--timeout", "0"]).unwrap_err().to_string();
        assert!(err.contains("out of range"), "{err}");
    }
}
