//! The native runner: the same stack and proxy as in the browser, behind a Linux TAP device or
//! a QEMU `-netdev stream`/`socket` connection, with reqwest as the transport.

mod cli;
mod forward;
mod limits;
mod link;
mod runtime;
mod serve;
mod stats_file;
pub mod tap;
mod trim;

use std::fs::File;
use std::io::BufWriter;
use std::process::ExitCode;
use std::rc::Rc;

use clap::Parser;
use net_stack::PcapWriter;
use tracing_subscriber::EnvFilter;

pub use cli::{Args, ListenTarget};
pub use forward::{Forward, ForwardParseError};
pub use limits::LimitArgs;
pub use link::{ByteStream, StreamLink, TapLink};
/// The fault layer `--fault` puts in the frame path (re-exported for test harnesses).
#[cfg(feature = "fault")]
pub use net_stack::fault::{FaultInjector, FaultSpec, FaultStats};
pub use runtime::TokioRuntime;

use crate::compose::{compose, ComposeError, Platform};
use crate::driver::Faults;
use crate::link::LinkError;
use crate::runtime::Runtime;

/// Why the runner stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum RunnerError {
    /// The options were refused, or the system could not be put together.
    #[error(transparent)]
    Compose(#[from] ComposeError),
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
    /// A command-line value could not be used.
    #[error("{0}")]
    Argument(String),
    /// The link to the guest failed.
    #[error("guest link: {0}")]
    Link(#[from] LinkError),
    /// A file given on the command line could not be read or written.
    #[error("{path}: {source}")]
    File {
        /// The path.
        path: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
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

/// The injectors `--fault` asks for, fresh for each link.
#[cfg(feature = "fault")]
fn fault_source(args: &Args) -> impl Fn() -> Option<Faults> + '_ {
    if let Some(spec) = &args.fault {
        tracing::info!(%spec, "injecting faults in both directions");
    }
    move || args.fault.as_ref().map(Faults::new)
}

/// Without the `fault` feature there is nothing to inject.
#[cfg(not(feature = "fault"))]
fn fault_source(_: &Args) -> impl Fn() -> Option<Faults> {
    || None
}

/// Runs the stack and proxy on the link chosen by `args` until the link ends for good or a
/// signal (SIGINT, SIGTERM) arrives. Must run inside a tokio `LocalSet`.
pub async fn run(args: Args) -> Result<(), RunnerError> {
    let options = args.options()?;
    let runtime = Rc::new(TokioRuntime::new());
    let system = compose(
        &options,
        Platform {
            runtime: runtime.clone() as Rc<dyn Runtime>,
            transport: args.transport()?,
            default_max_request_body: None,
            dialer: args.dialer()?,
            websocket_dialer: Some(args.websocket_dialer(&options)?),
        },
    )?;
    if let Some(path) = &args.ca_cert_out {
        std::fs::write(path, &system.ca_pem).map_err(|source| RunnerError::File {
            path: path.display().to_string(),
            source,
        })?;
    }
    let stack = &system.stack;
    if let Some(path) = &args.pcap {
        let file_err = |source| RunnerError::File {
            path: path.display().to_string(),
            source,
        };
        let file = File::create(path).map_err(file_err)?;
        let writer = PcapWriter::new(BufWriter::new(file)).map_err(file_err)?;
        stack.set_frame_observer(Some(Box::new(writer)));
    }
    trim::spawn(stack);
    let stats_file = args
        .stats_file
        .as_deref()
        .map(|path| stats_file::spawn(path, &system, args.pcap.is_some()));

    let target = args.listen();
    let faults = fault_source(&args);
    let dyn_runtime: Rc<dyn Runtime> = runtime.clone();
    let result = tokio::select! {
        result = serve::serve(stack, &runtime, &target, &faults) => result,
        result = forward::serve(stack, &dyn_runtime, &args.forward) => result,
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
