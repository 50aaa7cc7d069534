//! Hands memory freed after a burst of connections back to the system. Each TCP connection
//! owns two fixed socket buffers (256 KiB each by default); after hundreds of connections
//! close, glibc keeps the freed chunks in its heap (its mmap threshold adapts upwards), so the
//! runner's RSS would stay at the burst's peak although nothing is in use. `malloc_trim`
//! returns those free pages; it runs only when the number of open connections has fallen well
//! below its recent peak, so it costs nothing in steady state.

use std::time::Duration;

use net_stack::Stack;

/// How often the connection count is looked at.
const INTERVAL: Duration = Duration::from_secs(2);
/// Connections that must have closed since the peak before a trim is worth it.
const CLOSED_BEFORE_TRIM: u64 = 16;

/// Watches `stack`'s open connections on the current `LocalSet` and trims after a burst.
pub fn spawn(stack: &Stack) {
    let stack = stack.clone();
    tokio::task::spawn_local(async move {
        let mut peak = 0u64;
        loop {
            tokio::time::sleep(INTERVAL).await;
            let open = stack.stats().tcp_open;
            peak = peak.max(open);
            if peak >= open + CLOSED_BEFORE_TRIM {
                let released = trim();
                tracing::debug!(open, peak, released, "returned freed memory to the system");
                peak = open;
            }
        }
    });
}

/// Returns free heap pages to the system; true when some were released.
#[cfg(target_env = "gnu")]
fn trim() -> bool {
    // SAFETY: malloc_trim only walks glibc's own arenas; it has no preconditions.
    unsafe { libc::malloc_trim(0) == 1 }
}

/// Other C libraries have no `malloc_trim`; their allocators return memory by themselves or
/// not at all.
#[cfg(not(target_env = "gnu"))]
fn trim() -> bool {
    false
}
