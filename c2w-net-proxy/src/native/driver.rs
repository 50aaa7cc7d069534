//! The loop that drives the sans-IO stack: frames in from the link, `poll` at the times the
//! stack asks for, frames out to the link. Nothing busy-waits: the loop sleeps until a frame
//! arrives, a timer the stack asked for expires, or a connection's reader/writer woke it.

use std::time::Duration;

use futures::future::poll_fn;
use net_stack::Stack;

use super::cli::ListenTarget;
use super::link::{Link, LinkError};
use super::tap::Tap;
use super::RunnerError;

/// Most frames taken from the link before the stack is polled again.
const BATCH: usize = 64;

/// The runner's clock: microseconds since start, as the stack's `Instant`.
#[derive(Debug, Clone)]
pub struct Clock {
    start: std::time::Instant,
}

impl Clock {
    /// A clock starting now.
    pub fn new() -> Self {
        Self {
            start: std::time::Instant::now(),
        }
    }

    /// The current time for the stack.
    pub fn now(&self) -> net_stack::Instant {
        net_stack::Instant::from_micros(self.start.elapsed().as_micros() as i64)
    }
}

impl Default for Clock {
    fn default() -> Self {
        Self::new()
    }
}

/// Serves guests on `target` until an unrecoverable error.
pub async fn serve(stack: &Stack, clock: &Clock, target: &ListenTarget) -> Result<(), RunnerError> {
    match target {
        ListenTarget::Tap(name) => {
            let tap = Tap::open(name).map_err(RunnerError::Tap)?;
            tracing::info!(interface = tap.name(), "TAP device ready");
            let mut link = Link::tap(tap).map_err(RunnerError::Tap)?;
            run_link(stack, clock, &mut link).await?;
            Ok(())
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
                serve_stream(stack, clock, Link::stream(Box::new(socket))).await;
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
                serve_stream(stack, clock, Link::stream(Box::new(socket))).await;
            }
        }
    }
}

async fn serve_stream(stack: &Stack, clock: &Clock, mut link: Link) {
    match run_link(stack, clock, &mut link).await {
        Ok(()) => tracing::info!(dropped_frames = link.dropped(), "guest disconnected"),
        Err(err) => {
            tracing::warn!(error = %err, "guest link failed; waiting for the next connection")
        }
    }
}

/// Moves frames between `link` and `stack` until the link closes.
pub async fn run_link(stack: &Stack, clock: &Clock, link: &mut Link) -> Result<(), LinkError> {
    loop {
        stack.poll(clock.now());
        while let Some(frame) = stack.pop_frame() {
            link.send(&frame).await?;
        }
        let delay = stack
            .poll_delay(clock.now())
            .map(|d| Duration::from_micros(d.total_micros()))
            .unwrap_or(Duration::from_secs(3600));
        if delay.is_zero() {
            // The stack has more to do right away; let connection tasks run first.
            tokio::task::yield_now().await;
            continue;
        }
        tokio::select! {
            biased;
            frame = link.recv() => {
                let Some(frame) = frame? else { return Ok(()) };
                stack.push_frame(&frame);
                for _ in 1..BATCH {
                    match link.try_recv()? {
                        Some(frame) => stack.push_frame(&frame),
                        None => break,
                    }
                }
            }
            () = poll_fn(|cx| stack.poll_wake(cx)) => {}
            () = tokio::time::sleep(delay) => {}
        }
    }
}
