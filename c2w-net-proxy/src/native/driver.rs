//! The loop that drives the sans-IO stack: frames in from the link, `poll` at the times the
//! stack asks for, frames out to the link. Nothing busy-waits: the loop sleeps until a frame
//! arrives, a timer the stack asked for expires, a delayed frame is due, or a connection's
//! reader/writer woke it.
//!
//! With `--fault`, every frame in each direction goes through its own seeded
//! [`FaultInjector`] (loss, duplication, reordering, delay) between the link and the stack.

use std::time::Duration;

use futures::future::poll_fn;
use net_stack::fault::{FaultInjector, FaultSpec, FaultStats};
use net_stack::Stack;

use super::cli::ListenTarget;
use super::link::{Link, LinkError};
use super::tap::Tap;
use super::RunnerError;

/// Most frames taken from the link before the stack is polled again.
const BATCH: usize = 64;
/// How often a TAP link checks that its interface still exists.
const TAP_WATCH: Duration = Duration::from_secs(1);
/// How often the runner tries to re-create a deleted TAP interface.
const TAP_RETRY: Duration = Duration::from_secs(1);

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

/// Seed stream of the guest-to-stack injector (see [`FaultSpec::with_stream`]).
const TO_STACK_STREAM: u64 = 1;
/// Seed stream of the stack-to-guest injector.
const TO_GUEST_STREAM: u64 = 2;

/// The fault injectors of one guest link, one per direction with independent seeds. Their
/// counters are logged when the link ends, however it ends (guest gone, error, shutdown).
pub struct Faults {
    to_stack: FaultInjector,
    to_guest: FaultInjector,
}

impl Faults {
    /// Injectors for both directions from one spec.
    pub fn new(spec: &FaultSpec) -> Self {
        Self {
            to_stack: FaultInjector::new(spec.with_stream(TO_STACK_STREAM)),
            to_guest: FaultInjector::new(spec.with_stream(TO_GUEST_STREAM)),
        }
    }

    /// The earliest time a delayed or held frame is due in either direction.
    fn next_release(&self) -> Option<net_stack::Instant> {
        match (self.to_stack.next_release(), self.to_guest.next_release()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

fn log_fault_stats(direction: &str, s: FaultStats) {
    tracing::info!(
        direction,
        passed = s.passed,
        lost = s.lost,
        reordered = s.reordered,
        duplicated = s.duplicated,
        delayed = s.delayed,
        dropped_queue_full = s.dropped_queue_full,
        "fault counters"
    );
}

impl Drop for Faults {
    fn drop(&mut self) {
        log_fault_stats("guest->stack", self.to_stack.stats());
        log_fault_stats("stack->guest", self.to_guest.stats());
    }
}

/// Serves guests on `target` until an unrecoverable error, through fault injectors when
/// `fault` is given.
pub async fn serve(
    stack: &Stack,
    clock: &Clock,
    target: &ListenTarget,
    fault: Option<&FaultSpec>,
) -> Result<(), RunnerError> {
    if let Some(spec) = fault {
        tracing::info!(%spec, "injecting faults in both directions");
    }
    let faults = || fault.map(Faults::new);
    match target {
        ListenTarget::Tap(name) => {
            let mut link = open_tap(name).map_err(RunnerError::Tap)?;
            loop {
                match run_link(stack, clock, &mut link, faults()).await {
                    Err(LinkError::TapDeleted) => {
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
                serve_stream(stack, clock, Link::stream(Box::new(socket)), faults()).await;
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
                serve_stream(stack, clock, Link::stream(Box::new(socket)), faults()).await;
            }
        }
    }
}

/// Opens (or creates) the TAP interface `name` with a queue deep enough for bursts.
fn open_tap(name: &str) -> std::io::Result<Link> {
    let tap = Tap::open(name)?;
    if let Err(err) = tap.set_queue_len(super::tap::QUEUE_LEN) {
        tracing::warn!(interface = tap.name(), error = %err, "cannot set the TAP queue length");
    }
    tracing::info!(interface = tap.name(), "TAP device ready");
    Link::tap(tap)
}

/// Opens the TAP interface `name` again, retrying while that fails for a reason that may pass
/// (the name still taken while the old interface is being torn down).
async fn reopen_tap(name: &str) -> Result<Link, RunnerError> {
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

async fn serve_stream(stack: &Stack, clock: &Clock, mut link: Link, faults: Option<Faults>) {
    match run_link(stack, clock, &mut link, faults).await {
        Ok(()) => tracing::info!(dropped_frames = link.dropped(), "guest disconnected"),
        Err(err) => {
            tracing::warn!(error = %err, "guest link failed; waiting for the next connection")
        }
    }
}

/// Moves frames between `link` and `stack` until the link closes, through `faults` when
/// given (their counters are logged when this returns or is dropped).
pub async fn run_link(
    stack: &Stack,
    clock: &Clock,
    link: &mut Link,
    mut faults: Option<Faults>,
) -> Result<(), LinkError> {
    // A deleted TAP interface leaves a descriptor that never becomes readable: look at it
    // now and then rather than wait forever.
    let mut watch = link.needs_watching().then(|| {
        let mut interval = tokio::time::interval(TAP_WATCH);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        interval
    });
    loop {
        let now = clock.now();
        if let Some(f) = faults.as_mut() {
            while let Some(frame) = f.to_stack.pop(now) {
                stack.push_frame(&frame);
            }
        }
        stack.poll(now);
        while let Some(frame) = stack.pop_frame() {
            match faults.as_mut() {
                Some(f) => f.to_guest.push(frame, now),
                None => link.send(&frame).await?,
            }
        }
        if let Some(f) = faults.as_mut() {
            while let Some(frame) = f.to_guest.pop(now) {
                link.send(&frame).await?;
            }
        }
        let now = clock.now();
        let mut delay = stack
            .poll_delay(now)
            .map(|d| Duration::from_micros(d.total_micros()))
            .unwrap_or(Duration::from_secs(3600));
        if let Some(due) = faults.as_ref().and_then(Faults::next_release) {
            let until = Duration::from_micros(
                due.total_micros().saturating_sub(now.total_micros()).max(0) as u64,
            );
            delay = delay.min(until);
        }
        if delay.is_zero() {
            // The stack has more to do right away, or a delayed frame is due; let connection
            // tasks run first.
            tokio::task::yield_now().await;
            continue;
        }
        tokio::select! {
            biased;
            frame = link.recv() => {
                let Some(frame) = frame? else { return Ok(()) };
                let now = clock.now();
                let mut take = |frame: Vec<u8>| match faults.as_mut() {
                    Some(f) => f.to_stack.push(frame, now),
                    None => stack.push_frame(&frame),
                };
                take(frame);
                for _ in 1..BATCH {
                    match link.try_recv()? {
                        Some(frame) => take(frame),
                        None => break,
                    }
                }
            }
            () = poll_fn(|cx| stack.poll_wake(cx)) => {}
            () = tokio::time::sleep(delay) => {}
            () = watch_tick(&mut watch) => link.check_attached()?,
        }
    }
}

/// The next tick of `watch`; never, when there is nothing to watch.
async fn watch_tick(watch: &mut Option<tokio::time::Interval>) {
    match watch {
        Some(interval) => {
            interval.tick().await;
        }
        None => std::future::pending().await,
    }
}
