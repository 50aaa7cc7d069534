//! Where the runner's guests come from: a TAP device (re-created when it is deleted), or
//! QEMU connections on a TCP or Unix socket, one guest at a time. Each link is run by the
//! shared [`driver`](crate::driver).

use std::time::Duration;

use net_stack::Stack;

use super::cli::ListenTarget;
use super::link::{StreamLink, TapLink};
use super::runtime::TokioRuntime;
use super::tap::{Tap, QUEUE_LEN};
use super::RunnerError;
use crate::driver::{self, Faults};
use crate::link::{Link, LinkError};

/// How often the runner tries to re-create a deleted TAP interface.
const TAP_RETRY: Duration = Duration::from_secs(1);

/// The fault injectors for each new link: none, or fresh ones from `--fault`.
pub type FaultSource<'a> = &'a dyn Fn() -> Option<Faults>;

/// Serves guests on `target` until an unrecoverable error.
pub async fn serve(
    stack: &Stack,
    runtime: &TokioRuntime,
    target: &ListenTarget,
    faults: FaultSource<'_>,
) -> Result<(), RunnerError> {
    match target {
        ListenTarget::Tap(name) => {
            let mut link = open_tap(name).map_err(RunnerError::Tap)?;
            loop {
                match driver::run(stack, runtime, &mut link, faults()).await {
                    Err(LinkError::Detached) => {
                        // Deleted under us (`ip link del`, its namespace removed): make it
                        // again under the same name, in this namespace, for whoever manages
                        // the guest's side to attach; the stack and its leases carry on.
                        tracing::warn!(
                            interface = name.as_str(),
                            "the TAP interface was deleted; re-creating it"
                        );
                        link = reopen_tap(name).await?;
                    }
                    other => return Ok(other?),
                }
            }
        }
        ListenTarget::Tcp(addr) => {
            let socket_err = |source| RunnerError::Socket {
                addr: addr.clone(),
                source,
            };
            let listener = tokio::net::TcpListener::bind(addr.as_str())
                .await
                .map_err(socket_err)?;
            tracing::info!(address = %listener.local_addr().map_err(socket_err)?, "waiting for QEMU (tcp)");
            loop {
                let (socket, peer) = listener.accept().await.map_err(socket_err)?;
                let _ = socket.set_nodelay(true);
                tracing::info!(%peer, "guest connected");
                serve_stream(stack, runtime, StreamLink::new(Box::new(socket)), faults()).await;
            }
        }
        ListenTarget::Unix(path) => {
            let socket_err = |source| RunnerError::Socket {
                addr: path.display().to_string(),
                source,
            };
            let _ = std::fs::remove_file(path);
            let listener = tokio::net::UnixListener::bind(path).map_err(socket_err)?;
            tracing::info!(path = %path.display(), "waiting for QEMU (unix)");
            loop {
                let (socket, _) = listener.accept().await.map_err(socket_err)?;
                tracing::info!("guest connected");
                serve_stream(stack, runtime, StreamLink::new(Box::new(socket)), faults()).await;
            }
        }
    }
}

/// Opens (or creates) the TAP interface `name` with a queue deep enough for bursts.
fn open_tap(name: &str) -> std::io::Result<TapLink> {
    let tap = Tap::open(name)?;
    if let Err(err) = tap.set_queue_len(QUEUE_LEN) {
        tracing::warn!(interface = tap.name(), error = %err, "cannot set the TAP queue length");
    }
    tracing::info!(interface = tap.name(), "TAP device ready");
    TapLink::new(tap)
}

/// Opens the TAP interface `name` again, retrying while that fails for a reason that may pass
/// (the name still taken while the old interface is being torn down).
async fn reopen_tap(name: &str) -> Result<TapLink, RunnerError> {
    let mut logged = false;
    loop {
        match open_tap(name) {
            Ok(link) => return Ok(link),
            Err(err) if err.kind() == std::io::ErrorKind::InvalidInput => {
                return Err(RunnerError::Tap(err))
            }
            Err(err) => {
                if !logged {
                    tracing::warn!(interface = name, error = %err, "cannot re-create the TAP interface yet; retrying every second");
                    logged = true;
                }
                tokio::time::sleep(TAP_RETRY).await;
            }
        }
    }
}

async fn serve_stream(
    stack: &Stack,
    runtime: &TokioRuntime,
    mut link: StreamLink,
    faults: Option<Faults>,
) {
    match driver::run(stack, runtime, &mut link, faults).await {
        Ok(()) => tracing::info!(dropped_frames = link.dropped(), "guest disconnected"),
        Err(err) => {
            tracing::warn!(error = %err, "guest link failed; waiting for the next connection")
        }
    }
}
