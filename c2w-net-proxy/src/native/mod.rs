//! The native runner: the same stack and proxy as in the browser, behind a Linux TAP device or
//! a QEMU `-netdev stream`/`socket` connection, with reqwest as the transport.

mod cli;
mod driver;
mod limits;
mod link;
mod stats_file;
pub mod tap;
mod trim;

use std::fs::File;
use std::io::BufWriter;
use std::process::ExitCode;
use std::rc::Rc;
use std::time::Duration;

use clap::Parser;
use futures::future::LocalBoxFuture;
use http_proxy::{Proxy, ProxyConfig, Timer};
use net_stack::{Config, PcapWriter, Stack};
use tracing_subscriber::EnvFilter;

pub use cli::{Args, ListenTarget};
pub use driver::Clock;
pub use limits::{LimitArgs, LimitError};
/// The fault layer `--fault` puts in the frame path (re-exported for test harnesses).
pub use net_stack::fault::{FaultInjector, FaultSpec, FaultStats};

use crate::services;

/// Why the runner stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum RunnerError {
    /// The stack's configuration was rejected.
    #[error("network configuration: {0}")]
    Config(#[from] net_stack::ConfigError),
    /// A listener could not be opened on the virtual network.
    #[error("virtual network listener: {0}")]
    Listen(#[from] net_stack::ListenError),
    /// The TAP device could not be created or used.
    #[error("TAP device: {0}")]
    Tap(#[source] std::io::Error),
    /// The QEMU socket could not be opened or used.
    #[error("QEMU socket {addr}: {source}")]
    Socket {
        /// The address given on the command line.
        addr: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The link to the guest failed.
    #[error("guest link: {0}")]
    Link(#[from] link::LinkError),
    /// A file given on the command line could not be read or written.
    #[error("{path}: {source}")]
    File {
        /// The path.
        path: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The transport could not be built.
    #[error("transport: {0}")]
    Transport(#[from] fetch_transport::ConfigError),
    /// The CA could not be generated.
    #[error("CA: {0}")]
    CaGenerate(#[from] mitm_ca::CaError),
    /// The CA given on the command line was rejected.
    #[error("CA import: {0}")]
    CaImport(#[from] mitm_ca::ImportError),
    /// The leaf issuer could not be set up.
    #[error("leaf issuer: {0}")]
    Issuer(#[from] mitm_ca::IssueError),
}

/// Entry point of the `c2w-net-proxy` binary.
pub fn main() -> ExitCode {
    let args = Args::parse();
    let filter = EnvFilter::try_new(&args.log).unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("c2w-net-proxy: cannot start the runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    let local = tokio::task::LocalSet::new();
    match local.block_on(&runtime, run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!("{err}");
            eprintln!("c2w-net-proxy: {err}");
            ExitCode::FAILURE
        }
    }
}

/// http-proxy's timer on tokio.
struct TokioTimer;

impl Timer for TokioTimer {
    fn sleep(&self, duration: Duration) -> LocalBoxFuture<'static, ()> {
        Box::pin(tokio::time::sleep(duration))
    }
}

/// Runs the stack and proxy on the link chosen by `args` until the link ends for good or a
/// signal (SIGINT, SIGTERM) arrives. Must run inside a tokio `LocalSet`.
pub async fn run(args: Args) -> Result<(), RunnerError> {
    let mut config = Config::default();
    let mut proxy_config = ProxyConfig::default();
    if let Some(mtu) = args.mtu {
        config.set_mtu(usize::from(mtu));
    }
    args.limits.apply(&mut config, &mut proxy_config.limits);
    let proxy_ip = config
        .virtual_ips
        .first()
        .copied()
        .unwrap_or(std::net::Ipv4Addr::new(192, 168, 127, 253));
    let stack = Stack::new(config)?;
    if let Some(path) = &args.pcap {
        let file = File::create(path).map_err(|source| RunnerError::File {
            path: path.display().to_string(),
            source,
        })?;
        let writer = PcapWriter::new(BufWriter::new(file)).map_err(|source| RunnerError::File {
            path: path.display().to_string(),
            source,
        })?;
        stack.set_frame_observer(Some(Box::new(writer)));
    }
    let transport = cli::build_transport(&args)?;
    let issuer = cli::build_issuer(&args)?;
    let proxy = Proxy::new(proxy_config, transport, Rc::new(TokioTimer));
    let proxy = Rc::new(proxy.with_issuer(issuer));
    let spawner: services::Spawner = Rc::new(|task| {
        tokio::task::spawn_local(task);
    });
    services::start(&stack, proxy.clone(), proxy_ip, spawner)?;
    trim::spawn(&stack);
    let stats_file = args
        .stats_file
        .as_deref()
        .map(|path| stats_file::spawn(path, &stack, &proxy));

    let clock = Clock::new();
    let target = args.listen();
    let result = tokio::select! {
        result = driver::serve(&stack, &clock, &target, args.fault.as_ref()) => result,
        () = shutdown_signal() => {
            tracing::info!("shutting down");
            Ok(())
        }
    };
    if let Some(stats_file) = &stats_file {
        stats_file.write_logged(true);
    }
    // Flush the capture before leaving.
    stack.set_frame_observer(None);
    result
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
