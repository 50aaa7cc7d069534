//! Command-line arguments of the native runner.

use std::path::PathBuf;
use std::rc::Rc;

use clap::{ArgGroup, Parser};
use fetch_transport::Transport;

use super::RunnerError;

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

    /// Log filter: a level (error, warn, info, debug, trace) or tracing directives.
    #[arg(long, value_name = "LEVEL", default_value = "info")]
    pub log: String,

    /// Also trust this PEM CA certificate for origins' TLS (repeatable).
    #[arg(long, value_name = "PATH")]
    pub trust_ca: Vec<PathBuf>,
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

/// The native transport with the extra trusted CAs from `--trust-ca`.
pub fn build_transport(args: &Args) -> Result<Rc<dyn Transport>, RunnerError> {
    let mut builder = fetch_transport::NativeTransport::builder();
    for path in &args.trust_ca {
        let pem = std::fs::read(path).map_err(|source| RunnerError::File {
            path: path.display().to_string(),
            source,
        })?;
        builder = builder
            .add_root_pem(&pem)
            .map_err(|e| RunnerError::Transport(format!("{}: {e}", path.display())))?;
    }
    let transport = builder
        .build()
        .map_err(|e| RunnerError::Transport(e.to_string()))?;
    Ok(Rc::new(transport))
}
