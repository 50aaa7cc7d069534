//! Load and failure checks a real guest runs against whichever proxy is behind its NIC: the
//! native runner (`cargo xtask e2e robust`, counters from its `--stats-file`) or the browser
//! build (`cargo xtask e2e --browser`, counters from the page's `NetProxy.stats()`). 1,000
//! sequential and 256 concurrent connections, an origin that resets mid-body and one that
//! never answers; after each, the proxy's open connections must return to zero and its memory
//! (the runner's RSS, the wasm module's live heap) near its idle value.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::Value;

use crate::harness::guest::{text, Guest, PROXY};
use crate::harness::origins::{blob, FaultOrigin, Origin};

/// How long counters may take to return to idle after a check whose connections end cleanly.
pub const SETTLE: Duration = Duration::from_secs(10);

/// The counters the checks read, whichever proxy they come from.
#[derive(Debug, Clone, Default)]
pub struct Counters {
    /// net-stack's open TCP connections.
    pub tcp_open: u64,
    /// net-stack's accepted TCP connections.
    pub tcp_accepted: u64,
    /// SYNs refused because of the connection limit.
    pub tcp_refused_limit: u64,
    /// http-proxy's open guest connections.
    pub proxy_open: u64,
    /// http-proxy's guest connections since the start.
    pub connections_total: u64,
    /// Responses cut short (origin failed mid-body, guest gone).
    pub aborted_responses: u64,
    /// Requests whose transport failed (refused, timed out).
    pub transport_errors: u64,
    /// Body bytes written to guests.
    pub bytes_to_guest: u64,
    /// Memory in use now (RSS natively, live heap bytes in the wasm module).
    pub memory: u64,
    /// The most memory in use so far.
    pub memory_peak: u64,
    /// The whole snapshot, for counters only one kind of proxy has.
    pub raw: Value,
}

impl Counters {
    /// Open TCP connections and open proxy connections.
    pub fn open(&self) -> (u64, u64) {
        (self.tcp_open, self.proxy_open)
    }

    /// `self`, unless `other` shows more memory in use (an idle baseline should not be the
    /// lowest sample).
    pub fn max_memory(self, other: Counters) -> Counters {
        if other.memory > self.memory {
            other
        } else {
            self
        }
    }
}

/// Where the counters come from, and how memory is judged there.
pub trait CounterSource {
    /// A snapshot taken after this call began.
    fn fresh(&self) -> Result<Counters>;
    /// What [`Counters::memory`] measures, for messages ("RSS", "wasm heap").
    fn memory_name(&self) -> &'static str;
    /// Memory that may stay above idle after a load (allocator caches, pools, grown tables).
    fn memory_slack(&self) -> u64;
}

/// Waits until a fresh snapshot shows no open TCP connection and no open proxy connection;
/// the time it took and that snapshot.
pub fn wait_idle(source: &dyn CounterSource, limit: Duration) -> Result<(Duration, Counters)> {
    let started = Instant::now();
    loop {
        let s = source.fresh()?;
        if s.open() == (0, 0) {
            return Ok((started.elapsed(), s));
        }
        if started.elapsed() > limit {
            let (tcp, proxy) = s.open();
            bail!(
                "still open after {:.1} s: net-stack tcp_open {tcp}, http-proxy connections_open {proxy}",
                started.elapsed().as_secs_f64()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Waits up to `limit` until memory passes [`check_memory`] against `idle`; the time it took
/// and the last snapshot (which may still fail the check when `limit` ran out).
pub fn wait_memory(
    source: &dyn CounterSource,
    idle: u64,
    limit: Duration,
) -> Result<(Duration, Counters)> {
    let started = Instant::now();
    loop {
        let s = source.fresh()?;
        if check_memory(source, idle, &s).is_ok() || started.elapsed() > limit {
            return Ok((started.elapsed(), s));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Fails unless the memory in `now` is near `idle`: within the source's slack and within a
/// quarter of what the load added at its peak.
pub fn check_memory(source: &dyn CounterSource, idle: u64, now: &Counters) -> Result<String> {
    let grown = now.memory.saturating_sub(idle);
    let added = now.memory_peak.saturating_sub(idle);
    let slack = source.memory_slack();
    let line = format!(
        "{} idle {}, peak {}, after {}",
        source.memory_name(),
        memory_size(idle),
        memory_size(now.memory_peak),
        memory_size(now.memory)
    );
    if grown > slack || (added > slack && grown > added / 4) {
        bail!("memory did not return near idle: {line}");
    }
    Ok(line)
}

/// A memory figure for messages: MiB, or KiB below one MiB.
pub fn memory_size(bytes: u64) -> String {
    if bytes < 1 << 20 {
        format!("{:.0} KiB", bytes as f64 / 1024.0)
    } else {
        format!("{:.1} MiB", bytes as f64 / (1 << 20) as f64)
    }
}

/// The `q` quantile (0..=1) of `values` (sorted in place); 0 when empty.
pub fn percentile(values: &mut [f64], q: f64) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    values.sort_by(f64::total_cmp);
    let i = ((values.len() - 1) as f64 * q).round() as usize;
    values[i.min(values.len() - 1)]
}

/// The last lines of a command's output, for messages.
pub fn tail(s: &str) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(5)..].join(" | ")
}

/// Established TCP connections on this host whose remote end is 127.0.0.1:`port` (the
/// proxy's connections to an origin, or the browser's), from /proc/net/tcp.
pub fn established_to(port: u16) -> usize {
    let remote = format!("0100007F:{port:04X}");
    std::fs::read_to_string("/proc/net/tcp")
        .unwrap_or_default()
        .lines()
        .skip(1)
        .filter(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            f.get(2) == Some(&remote.as_str()) && f.get(3) == Some(&"01")
        })
        .count()
}

/// A guest, its origins and the proxy's counters: everything the checks need.
pub struct LoadChecks<'a> {
    /// The guest (a namespace whose only network is the proxy).
    pub guest: &'a Guest<'a>,
    /// The origin downloads come from.
    pub http: &'a Origin,
    /// The origin that resets and hangs.
    pub fault: &'a FaultOrigin,
    /// The proxy's counters.
    pub counters: &'a dyn CounterSource,
    /// The guest's HOME (curl config files, downloads).
    pub work: PathBuf,
    /// How long the proxy waits for an origin's response head.
    pub origin_timeout: Duration,
    /// The proxy's connection limits, for the message when connections are refused.
    pub limits: String,
    /// Transfers the concurrent check starts at once.
    pub concurrent: usize,
    /// The body size of transfer `i` in the concurrent check is `base + i * step`.
    pub concurrent_sizes: (usize, usize),
    /// How long memory may take to return near idle after the concurrent check (a native
    /// transport keeps idle origin connections pooled for a while).
    pub memory_settle: Duration,
}

impl LoadChecks<'_> {
    fn curl(&self) -> String {
        format!("curl -sS -x {PROXY}")
    }

    /// One request, then idle: the baseline memory (the transport exists, tables are made).
    pub fn warm_up(&self) -> Result<(u64, String)> {
        let body = self.guest.sh(
            &format!("{} --fail {}/hello", self.curl(), self.http.base_url()),
            Duration::from_secs(20),
        )?;
        if body != "hello from the origin\n" {
            bail!("unexpected body {body:?}");
        }
        let (_, s) = wait_idle(self.counters, SETTLE)?;
        std::thread::sleep(Duration::from_secs(1));
        let s = self.counters.fresh()?.max_memory(s);
        Ok((
            s.memory,
            format!(
                "{} idle {}",
                self.counters.memory_name(),
                memory_size(s.memory)
            ),
        ))
    }

    /// Writes `lines` as the curl config file `config`, then runs curl in the guest through
    /// the proxy with it and `args`: the counters before, curl's output and how long it took.
    fn curl_config(
        &self,
        config: &std::path::Path,
        lines: String,
        args: &[&str],
    ) -> Result<(Counters, std::process::Output, Duration)> {
        std::fs::write(config, lines)?;
        let config = config.display().to_string();
        let mut argv = vec!["curl", "-sS", "--fail", "-x", PROXY];
        argv.extend_from_slice(args);
        argv.extend(["-K", config.as_str()]);
        let before = self.counters.fresh()?;
        let started = Instant::now();
        let out = self
            .guest
            .ns
            .output_within(&argv, Duration::from_secs(240))?;
        Ok((before, out, started.elapsed()))
    }

    /// `count` requests one after the other, each on its own connection.
    pub fn sequential(&self, count: usize, idle: u64) -> Result<String> {
        const SIZE: usize = 4096;
        let config = self.work.join("sequential.curl");
        let mut lines = String::new();
        for i in 0..count {
            lines.push_str(&format!(
                "url = \"{}/blob/{SIZE}?i={i}\"\n",
                self.http.base_url()
            ));
        }
        let (before, out, elapsed) = self.curl_config(
            &config,
            lines,
            &[
                "-H",
                "Connection: close",
                "-w",
                "%{stderr}%{time_connect} %{time_total}\\n",
            ],
        )?;
        if !out.status.success() {
            bail!("curl failed ({}): {}", out.status, tail(&text(&out)));
        }
        // Per transfer: connect (guest to proxy) and total, in ms.
        let mut connect = Vec::new();
        let mut total = Vec::new();
        for line in String::from_utf8_lossy(&out.stderr).lines() {
            let mut it = line.split(' ').filter_map(|v| v.parse::<f64>().ok());
            if let (Some(c), Some(t)) = (it.next(), it.next()) {
                connect.push(c * 1000.0);
                total.push(t * 1000.0);
            }
        }
        let direct = self.direct_baseline(SIZE, 100)?;
        let one = blob(SIZE);
        if out.stdout.len() != SIZE * count || out.stdout.chunks(SIZE).any(|c| c != one) {
            bail!(
                "bodies differ: {} bytes for {count} x {SIZE}",
                out.stdout.len()
            );
        }
        let (settle, after) = wait_idle(self.counters, SETTLE)?;
        let connections = after.connections_total - before.connections_total;
        let accepted = after.tcp_accepted - before.tcp_accepted;
        if connections < count as u64 || accepted < count as u64 {
            bail!("only {connections} proxy connections ({accepted} TCP accepts) for {count} requests");
        }
        let memory = check_memory(self.counters, idle, &after)?;
        Ok(format!(
            "{count} connections in {:.1} s, byte-exact; per transfer: connect p50 {:.1} ms, total p50 {:.1} / p99 {:.1} / max {:.1} ms (host to origin directly, keep-alive: p50 {:.1} ms); tcp_open and connections_open 0 after {} ms; {memory}",
            elapsed.as_secs_f64(),
            percentile(&mut connect, 0.5),
            percentile(&mut total, 0.5),
            percentile(&mut total, 0.99),
            percentile(&mut total, 1.0),
            direct,
            settle.as_millis()
        ))
    }

    /// The median time of `count` requests from the host straight to the origin on one
    /// keep-alive connection (how the proxy's pooled client meets it), in ms.
    fn direct_baseline(&self, size: usize, count: usize) -> Result<f64> {
        let url = format!("{}/blob/{size}", self.http.base_url());
        let out = Command::new("curl")
            .args(["-sS", "--fail", "-w", "%{time_total}\\n"])
            // `-o` applies to one URL: without one each, the other bodies went to stdout and
            // hid most of the times in binary lines.
            .args(std::iter::repeat_n(["-o", "/dev/null", url.as_str()], count).flatten())
            .output()
            .context("curl on the host")?;
        if !out.status.success() {
            bail!("direct curl failed: {}", text(&out));
        }
        let mut times: Vec<f64> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.trim().parse::<f64>().ok())
            .map(|t| t * 1000.0)
            .collect();
        Ok(percentile(&mut times, 0.5))
    }

    /// [`Self::concurrent`] transfers at once (curl --parallel), each into its own file,
    /// byte-exact.
    pub fn concurrent(&self, idle: u64) -> Result<String> {
        let count = self.concurrent;
        let out_dir = self.work.join("parallel");
        crate::tools::fresh_dir(&out_dir)?;
        let (base, step) = self.concurrent_sizes;
        let size = |i: usize| base + i * step;
        let config = self.work.join("parallel.curl");
        let mut lines = String::new();
        for i in 0..count {
            lines.push_str(&format!(
                "url = \"{}/blob/{}\"\noutput = \"{}/{i}\"\n",
                self.http.base_url(),
                size(i),
                out_dir.display()
            ));
        }
        let (before, out, elapsed) = self.curl_config(
            &config,
            lines,
            &[
                "--no-progress-meter",
                "--parallel",
                "--parallel-immediate",
                "--parallel-max",
                &count.to_string(),
            ],
        )?;
        let during = self.counters.fresh()?;
        let mut bad = Vec::new();
        let mut total = 0;
        for i in 0..count {
            let got = std::fs::read(out_dir.join(i.to_string())).unwrap_or_default();
            total += got.len();
            if got != blob(size(i)) {
                bad.push(format!("#{i}: {} of {} bytes", got.len(), size(i)));
            }
        }
        let refused = during.tcp_refused_limit - before.tcp_refused_limit;
        if !out.status.success() || !bad.is_empty() {
            bail!(
                "curl {}; {} of {count} transfers wrong ({}); SYNs refused by the limits (tcp_refused_limit): {refused}; limits: {}; curl said: {}",
                out.status,
                bad.len(),
                bad.iter().take(5).cloned().collect::<Vec<_>>().join(", "),
                self.limits,
                tail(&text(&out))
            );
        }
        let (settle, after) = wait_idle(self.counters, SETTLE)?;
        let connections = after.connections_total - before.connections_total;
        let right_after = after.memory;
        let port = self.http.addr().port();
        let pooled = established_to(port);
        let (waited, after) = wait_memory(self.counters, idle, self.memory_settle)?;
        let memory = check_memory(self.counters, idle, &after).with_context(|| {
            format!(
                "all {count} transfers byte-exact in {:.1} s and counters 0 after {} ms, but {pooled} pooled origin connections then and {} after {:.0} s more",
                elapsed.as_secs_f64(),
                settle.as_millis(),
                established_to(port),
                waited.as_secs_f64()
            )
        })?;
        Ok(format!(
            "{count} transfers ({:.1} MB) in {:.1} s over {connections} connections, byte-exact; idle after {} ms; right then {} {} with {pooled} pooled origin connections; near idle after {:.1} s more: {memory}",
            total as f64 / 1e6,
            elapsed.as_secs_f64(),
            settle.as_millis(),
            self.counters.memory_name(),
            memory_size(right_after),
            waited.as_secs_f64(),
        ))
    }

    /// The origin sends half the announced body and resets: curl must see a truncated transfer.
    pub fn reset_mid_body(&self) -> Result<String> {
        const LEN: usize = 4 << 20;
        let before = self.counters.fresh()?;
        let started = Instant::now();
        let out = self.guest.ns.output_within(
            &[
                "curl",
                "-sS",
                "-x",
                PROXY,
                "-o",
                "/dev/null",
                "-w",
                "%{http_code} %{size_download}",
                &format!("{}/reset/{LEN}", self.fault.base_url()),
            ],
            Duration::from_secs(30),
        )?;
        let elapsed = started.elapsed();
        let code = out.status.code();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let got: u64 = stdout
            .split_whitespace()
            .nth(1)
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        // 18: partial file (the connection closed before Content-Length); 56: receive failure.
        if !matches!(code, Some(18) | Some(56)) {
            bail!(
                "expected curl exit 18 or 56 (truncated), got {code:?} after {:.1} s: {}",
                elapsed.as_secs_f64(),
                text(&out)
            );
        }
        if got >= LEN as u64 {
            bail!("curl received the whole {got} bytes");
        }
        let (settle, after) = wait_idle(self.counters, SETTLE)?;
        let aborted = after.aborted_responses - before.aborted_responses;
        if aborted == 0 {
            bail!("http-proxy's aborted_responses did not rise");
        }
        Ok(format!(
            "curl exit {} after {:.2} s with {got} of {LEN} bytes ({}); aborted_responses +{aborted}; idle after {} ms",
            code.unwrap_or(-1),
            elapsed.as_secs_f64(),
            tail(&String::from_utf8_lossy(&out.stderr)).trim(),
            settle.as_millis()
        ))
    }

    /// The origin accepts and never answers: the proxy's 504 within its origin timeout.
    pub fn never_answers(&self) -> Result<String> {
        let before = self.counters.fresh()?;
        let started = Instant::now();
        let got = self.guest.sh(
            &format!(
                "{} -w ' %{{http_code}}' {}/hang",
                self.curl(),
                self.fault.base_url()
            ),
            self.origin_timeout + Duration::from_secs(25),
        )?;
        let elapsed = started.elapsed();
        if !got.ends_with(" 504") || !got.contains("in time") {
            bail!("expected the proxy's 504, got {got:?}");
        }
        let timeout = self.origin_timeout.as_secs_f64();
        if elapsed > self.origin_timeout + Duration::from_secs(2) {
            bail!(
                "504 only after {:.1} s (timeout {timeout:.0} s)",
                elapsed.as_secs_f64()
            );
        }
        let (settle, after) = wait_idle(self.counters, SETTLE)?;
        let errors = after.transport_errors - before.transport_errors;
        if errors == 0 {
            bail!("http-proxy's transport_errors did not rise");
        }
        let reason = got.lines().find(|l| l.contains("in time")).unwrap_or("");
        Ok(format!(
            "504 after {:.2} s (timeout {timeout:.0} s): {:?}; transport_errors +{errors}; idle after {} ms",
            elapsed.as_secs_f64(),
            reason.trim(),
            settle.as_millis()
        ))
    }
}
