//! The load and failure checks of [`crate::e2e::load`] against the page's proxy: the same
//! guest-side workloads as `cargo xtask e2e robust`, judged by the counters the page reads
//! from `NetProxy.stats()` (open TCP and proxy connections, the wasm module's live heap).

use std::time::Duration;

use anyhow::{Context, Result};
use serde_json::Value;

use super::{fresh_stats, need, Shared};
use crate::e2e::load::{CounterSource, Counters, LoadChecks};
use crate::harness::guest::Guest;
use crate::report::Report;

/// The page's `timeoutMs` (time limit for a response head), from the harness's page config.
pub(super) const PAGE_TIMEOUT: Duration = Duration::from_secs(10);

/// Live heap the module may keep above idle after a load: tables that grew (DNS names, leases,
/// socket slots) and the allocator's rounding; the counter is exact, no cache hides in it.
const HEAP_SLACK: u64 = 4 << 20;

/// The page's stats posts as a [`CounterSource`].
pub(super) struct PageCounters<'a>(pub &'a Shared);

impl CounterSource for PageCounters<'_> {
    fn fresh(&self) -> Result<Counters> {
        let raw = fresh_stats(self.0)?;
        let num = |path: &[&str]| -> Result<u64> {
            let mut v = &raw;
            for key in path {
                v = &v[*key];
            }
            v.as_f64()
                .map(|n| n as u64)
                .with_context(|| format!("stats() has no {}: {raw}", path.join(".")))
        };
        Ok(Counters {
            tcp_open: num(&["tcp", "open"])?,
            tcp_accepted: num(&["tcp", "accepted"])?,
            tcp_refused_limit: num(&["tcp", "refusedLimit"])?,
            proxy_open: num(&["proxy", "connectionsOpen"])?,
            connections_total: num(&["proxy", "connectionsTotal"])?,
            aborted_responses: num(&["proxy", "errors", "abortedResponses"])?,
            transport_errors: num(&["proxy", "errors", "transportErrors"])?,
            bytes_to_guest: num(&["proxy", "bytesToGuest"])?,
            memory: num(&["heapBytes"])?,
            memory_peak: num(&["heapPeakBytes"])?,
            raw: Value::Null,
        })
    }

    fn memory_name(&self) -> &'static str {
        "wasm heap"
    }

    fn memory_slack(&self) -> u64 {
        HEAP_SLACK
    }
}

/// Runs the load and failure checks with `guest` behind the page.
pub(super) fn checks(shared: &Shared, guest: &Guest, ready: &Result<String>, r: &mut Report) {
    let counters = PageCounters(shared);
    let load = LoadChecks {
        guest,
        http: &shared.http,
        fault: &shared.fault,
        counters: &counters,
        work: guest.work.clone(),
        origin_timeout: PAGE_TIMEOUT,
        limits: "the page's defaults (limits.maxConnections 256)".into(),
        concurrent: 256,
        // Smaller than natively: every body crosses the harness's WebSocket bridge twice.
        concurrent_sizes: (16_384, 256),
        memory_settle: Duration::from_secs(20),
    };
    let mut idle = None;
    r.check("robust (page): idle wasm heap after one request", || {
        need(ready)?;
        let (heap, detail) = load.warm_up()?;
        idle = Some(heap);
        Ok(detail)
    });
    let idle = || idle.context("no idle baseline (the warm-up failed)");
    r.check(
        "robust (page): 1000 sequential connections; then none open, heap near idle",
        || load.sequential(1000, idle()?),
    );
    r.check(
        "robust (page): 256 concurrent connections; then none open, heap near idle",
        || load.concurrent(idle()?),
    );
    r.check(
        "robust (page): an origin that resets mid-body; truncated, counters back to idle",
        || {
            need(ready)?;
            load.reset_mid_body()
        },
    );
    r.check(
        "robust (page): an origin that never answers; 504 after timeoutMs, counters idle",
        || {
            need(ready)?;
            load.never_answers()
        },
    );
}
