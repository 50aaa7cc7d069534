//! The robustness phase of `cargo xtask e2e`: load and failures against a real Linux guest (a
//! network namespace behind the native runner's TAP device), read back through the runner's
//! `--stats-file`. 1,000 sequential and 256 concurrent connections, an origin that resets
//! mid-body, one that never answers, a garbage-frame flood beside a download, and a guest that
//! vanishes mid-transfer; after each, the runner's connection counters must return to zero
//! and its memory near its idle value. Every check prints its numbers; cleanup always runs.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use serde_json::Value;

use crate::cleanup;
use crate::guest::{build_runner, text, Guest, GuestNs, Runner, GUEST_MAC, PROXY};
use crate::origin::{blob, FaultOrigin};
use crate::report::Report;
use crate::threaded_origin::ThreadedOrigin;
use crate::tools::{ensure_programs, is_root, workspace_root};

/// The checks of this phase (a filter that matches none of them skips the phase).
const CHECKS: [&str; 6] = [
    "robust: 1000 sequential connections",
    "robust: 256 concurrent connections",
    "robust: an origin that resets mid-body",
    "robust: an origin that never answers",
    "robust: a garbage-frame flood beside a 32 MiB download",
    "robust: a guest that vanishes mid-transfer",
];

/// How long counters may take to return to idle after a check whose connections end cleanly.
const SETTLE: Duration = Duration::from_secs(10);
/// A vanished guest never acknowledges again: the proxy's write times out (http-proxy's
/// `io_timeout`, 60 s) and the orphaned socket then lingers up to net-stack's
/// `orphan_timeout` (60 s) before it is aborted.
const VANISHED_SETTLE: Duration = Duration::from_secs(150);
/// The runner's origin timeout (`--timeout`), short so a hanging origin is answered quickly.
const ORIGIN_TIMEOUT_SECS: u64 = 5;
/// Memory the runner may keep after a load above its idle value (allocator caches, the
/// transport's connection pool, grown tables): at most this much, and at most a quarter of
/// what the load added at its peak.
const RSS_SLACK: u64 = 24 << 20;

/// Runs the phase: every check, or only those whose names contain `filter` (`robust` runs
/// them all, `robust: 256` one).
pub fn run(filter: Option<String>) -> Result<()> {
    if let Some(f) = &filter {
        if !CHECKS.iter().any(|name| name.contains(f.as_str())) {
            bail!(
                "no robustness check matches {f:?}; they are: {}",
                CHECKS.join(", ")
            );
        }
    }
    if !is_root() {
        bail!("e2e needs root (TAP devices and network namespaces); run it as root");
    }
    ensure_programs(&[
        ("busybox", "busybox"),
        ("udhcpc", "udhcpc"),
        ("/etc/udhcpc/default.script", "udhcpc"),
        ("curl", "curl"),
        ("python3", "python3"),
        ("ip", "iproute2"),
        ("timeout", "coreutils"),
    ])?;
    let binary = build_runner()?;
    let _guard = cleanup::Guard;
    let dir = workspace_root().join("target/e2e-robust");
    std::fs::create_dir_all(&dir)?;
    // A thread per connection: tiny_http's pool queues a burst of new connections behind the
    // keep-alive ones it sits on, past the runner's 5 s origin timeout.
    let http = ThreadedOrigin::http()?;
    let fault = FaultOrigin::start()?;
    let work = dir.join("guest-work");
    let id = std::process::id();
    let stats = dir.join("stats.json");
    let _ = std::fs::remove_file(&stats);
    let tap = format!("c2wr{id}");
    let mut runner = Runner::start_tap(
        &binary,
        &tap,
        &runner_args(&binary, &stats),
        dir.join("runner.log"),
    )?;
    let ns = GuestNs::behind(&format!("c2w-rb-{id}"), &tap, &work)?;
    let env = Env {
        guest: Guest {
            ns: &ns,
            ca: PathBuf::new(),
            work: work.clone(),
        },
        http: &http,
        fault: &fault,
        stats: stats.clone(),
        work: work.clone(),
        limit_flags: runner_args(&binary, &stats)[6..].join(" "),
    };

    let mut r = Report::filtered(filter);
    // Always runs (the name starts with "dhcp"): the lease, and the idle memory every load
    // check compares against.
    let mut idle = 0;
    if !r.check(
        "dhcp (robust): the guest gets its lease; idle memory after one request",
        || {
            let lease = env.guest.dhcp()?;
            let (rss, detail) = env.warm_up()?;
            idle = rss;
            Ok(format!("{lease}; {detail}"))
        },
    ) {
        drop(env);
        drop(ns);
        drop(runner);
        return r.finish("e2e robust");
    }
    r.check(CHECKS[0], || env.sequential(1000, idle));
    r.check(CHECKS[1], || env.concurrent(256, idle));
    r.check(CHECKS[2], || env.reset_mid_body());
    r.check(CHECKS[3], || env.never_answers());
    r.check(CHECKS[4], || env.flood_beside_download(50_000));
    r.check("robust: the runner is still running", || {
        if runner.is_running() {
            Ok("alive".into())
        } else {
            bail!("the runner exited: {}", runner.log_tail())
        }
    });
    r.check(CHECKS[5], || vanishing_guest(&binary, &dir, &http));
    drop(env);
    drop(ns);
    drop(runner);
    r.finish("e2e robust")
}

/// The runner's arguments besides `--tap`: the stats file, loopback origins, a short origin
/// timeout, and room for 256 concurrent connections where the runner has flags for its TCP
/// limits (net-stack's defaults allow 256 connections and a listen backlog of 128).
fn runner_args(binary: &Path, stats: &Path) -> Vec<String> {
    let mut args: Vec<String> = vec![
        "--stats-file".into(),
        stats.display().to_string(),
        "--allow".into(),
        "loopback".into(),
        "--timeout".into(),
        ORIGIN_TIMEOUT_SECS.to_string(),
    ];
    let help = Command::new(binary)
        .arg("--help")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    for (flag, value) in [("--max-connections", "1024"), ("--listen-backlog", "512")] {
        if help.contains(flag) {
            args.extend([flag.to_string(), value.to_string()]);
        }
    }
    args
}

/// Everything a check needs.
struct Env<'a> {
    guest: Guest<'a>,
    http: &'a ThreadedOrigin,
    fault: &'a FaultOrigin,
    /// The runner's `--stats-file`.
    stats: PathBuf,
    /// The guest's HOME (curl config files, downloads).
    work: PathBuf,
    /// The TCP limit flags the runner got (empty when it has none).
    limit_flags: String,
}

/// One snapshot of the runner's stats file.
#[derive(Debug, Clone)]
struct Snapshot(Value);

impl Snapshot {
    /// A counter of net-stack (`net_stack`) or http-proxy (`http_proxy`); 0 when absent.
    fn get(&self, section: &str, key: &str) -> u64 {
        self.0[section][key].as_u64().unwrap_or(0)
    }

    fn top(&self, key: &str) -> u64 {
        self.0[key].as_u64().unwrap_or(0)
    }

    fn rss(&self) -> u64 {
        self.top("rss_bytes")
    }

    fn open(&self) -> (u64, u64) {
        (
            self.get("net_stack", "tcp_open"),
            self.get("http_proxy", "connections_open"),
        )
    }
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1 << 20) as f64
}

/// The current snapshot in `path`.
fn read_stats(path: &Path) -> Result<Snapshot> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the stats file {}", path.display()))?;
    Ok(Snapshot(
        serde_json::from_str(&text).context("parsing the stats file")?,
    ))
}

/// A snapshot written after now (the file is rewritten every 500 ms).
fn fresh_stats(path: &Path) -> Result<Snapshot> {
    let since = unix_ms();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let Ok(s) = read_stats(path) {
            if s.top("unix_ms") > since {
                return Ok(s);
            }
        }
        if Instant::now() > deadline {
            bail!("the stats file {} is not being rewritten", path.display());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Waits until a fresh snapshot shows no open TCP connection and no open proxy connection;
/// the time it took and that snapshot.
fn wait_idle(path: &Path, limit: Duration) -> Result<(Duration, Snapshot)> {
    let started = Instant::now();
    loop {
        let s = fresh_stats(path)?;
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
    }
}

/// Waits up to `limit` until the runner's RSS passes [`check_rss`] against `idle`; the time it
/// took and the last snapshot (which may still fail the check when `limit` ran out).
fn wait_rss(path: &Path, idle: u64, limit: Duration) -> Result<(Duration, Snapshot)> {
    let started = Instant::now();
    loop {
        let s = fresh_stats(path)?;
        if check_rss(idle, s.top("rss_peak_bytes"), s.rss()).is_ok() || started.elapsed() > limit {
            return Ok((started.elapsed(), s));
        }
    }
}

/// Established TCP connections on this host whose remote end is 127.0.0.1:`port` (the
/// runner's connections to an origin), from /proc/net/tcp.
fn established_to(port: u16) -> usize {
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

/// Fails unless `after` is near `idle`: within [`RSS_SLACK`] and within a quarter of what the
/// load added at `peak`.
fn check_rss(idle: u64, peak: u64, after: u64) -> Result<String> {
    let grown = after.saturating_sub(idle);
    let added = peak.saturating_sub(idle);
    let line = format!(
        "RSS idle {:.1} MiB, peak {:.1} MiB, after {:.1} MiB",
        mib(idle),
        mib(peak),
        mib(after)
    );
    if grown > RSS_SLACK || (added > RSS_SLACK && grown > added / 4) {
        bail!("memory did not return near idle: {line}");
    }
    Ok(line)
}

impl Env<'_> {
    fn curl(&self) -> String {
        format!("curl -sS -x {PROXY}")
    }

    /// One request, then idle: the baseline RSS (the transport's client and its pools exist).
    fn warm_up(&self) -> Result<(u64, String)> {
        let body = self.guest.sh(
            &format!("{} --fail {}/hello", self.curl(), self.http.base_url()),
            Duration::from_secs(20),
        )?;
        if body != "hello from the origin\n" {
            bail!("unexpected body {body:?}");
        }
        let (_, s) = wait_idle(&self.stats, SETTLE)?;
        std::thread::sleep(Duration::from_secs(1));
        let s = fresh_stats(&self.stats)?.max_rss(s);
        Ok((s.rss(), format!("RSS idle {:.1} MiB", mib(s.rss()))))
    }

    /// `count` requests one after the other, each on its own connection.
    fn sequential(&self, count: usize, idle: u64) -> Result<String> {
        const SIZE: usize = 4096;
        let config = self.work.join("sequential.curl");
        let mut lines = String::new();
        for i in 0..count {
            lines.push_str(&format!(
                "url = \"{}/blob/{SIZE}?i={i}\"\n",
                self.http.base_url()
            ));
        }
        std::fs::write(&config, lines)?;
        let before = fresh_stats(&self.stats)?;
        let started = Instant::now();
        let out = self.guest.ns.output_within(
            &[
                "curl",
                "-sS",
                "--fail",
                "-x",
                PROXY,
                "-H",
                "Connection: close",
                "-w",
                "%{stderr}%{time_connect} %{time_total}\\n",
                "-K",
                &config.display().to_string(),
            ],
            Duration::from_secs(240),
        )?;
        let elapsed = started.elapsed();
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
        let (settle, after) = wait_idle(&self.stats, SETTLE)?;
        let connections = after.get("http_proxy", "connections_total")
            - before.get("http_proxy", "connections_total");
        let accepted =
            after.get("net_stack", "tcp_accepted") - before.get("net_stack", "tcp_accepted");
        if connections < count as u64 || accepted < count as u64 {
            bail!("only {connections} proxy connections ({accepted} TCP accepts) for {count} requests");
        }
        let rss = check_rss(idle, after.top("rss_peak_bytes"), after.rss())?;
        Ok(format!(
            "{count} connections in {:.1} s, byte-exact; per transfer: connect p50 {:.1} ms, total p50 {:.1} / p99 {:.1} / max {:.1} ms (host to origin directly, keep-alive: p50 {:.1} ms); tcp_open and connections_open 0 after {} ms; {rss}",
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
            .args(["-sS", "--fail", "-o", "/dev/null", "-w", "%{time_total}\\n"])
            .args(std::iter::repeat_n(url.as_str(), count))
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

    /// `count` transfers at once (curl --parallel), each into its own file, byte-exact.
    fn concurrent(&self, count: usize, idle: u64) -> Result<String> {
        let out_dir = self.work.join("parallel");
        let _ = std::fs::remove_dir_all(&out_dir);
        std::fs::create_dir_all(&out_dir)?;
        let size = |i: usize| 200_000 + i * 1000;
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
        std::fs::write(&config, lines)?;
        let before = fresh_stats(&self.stats)?;
        let started = Instant::now();
        let out = self.guest.ns.output_within(
            &[
                "curl",
                "-sS",
                "--fail",
                "-x",
                PROXY,
                "--no-progress-meter",
                "--parallel",
                "--parallel-immediate",
                "--parallel-max",
                &count.to_string(),
                "-K",
                &config.display().to_string(),
            ],
            Duration::from_secs(240),
        )?;
        let elapsed = started.elapsed();
        let during = read_stats(&self.stats)?;
        let mut bad = Vec::new();
        let mut total = 0;
        for i in 0..count {
            let got = std::fs::read(out_dir.join(i.to_string())).unwrap_or_default();
            total += got.len();
            if got != blob(size(i)) {
                bad.push(format!("#{i}: {} of {} bytes", got.len(), size(i)));
            }
        }
        let refused = during.get("net_stack", "tcp_refused_limit")
            - before.get("net_stack", "tcp_refused_limit");
        if !out.status.success() || !bad.is_empty() {
            bail!(
                "curl {}; {} of {count} transfers wrong ({}); SYNs refused by the limits (tcp_refused_limit): {refused}; runner limit flags: {}; curl said: {}",
                out.status,
                bad.len(),
                bad.iter().take(5).cloned().collect::<Vec<_>>().join(", "),
                if self.limit_flags.is_empty() {
                    "none (net-stack defaults: max_connections 256, listen_backlog 128)"
                } else {
                    &self.limit_flags
                },
                tail(&text(&out))
            );
        }
        let (settle, after) = wait_idle(&self.stats, SETTLE)?;
        let connections = after.get("http_proxy", "connections_total")
            - before.get("http_proxy", "connections_total");
        let right_after = after.rss();
        let pooled = established_to(self.http.addr().port());
        // The transport keeps idle origin connections (and their read buffers) pooled for
        // its idle timeout (reqwest: 90 s); memory may return only when they close.
        let (waited, after) = wait_rss(&self.stats, idle, Duration::from_secs(100))?;
        let rss = check_rss(idle, after.top("rss_peak_bytes"), after.rss()).with_context(|| {
            format!(
                "all {count} transfers byte-exact in {:.1} s and counters 0 after {} ms, but {pooled} pooled origin connections then and {} after {:.0} s more",
                elapsed.as_secs_f64(),
                settle.as_millis(),
                established_to(self.http.addr().port()),
                waited.as_secs_f64()
            )
        })?;
        Ok(format!(
            "{count} transfers ({:.1} MB) in {:.1} s over {connections} connections, byte-exact; idle after {} ms; right then RSS {:.1} MiB with {pooled} pooled origin connections; near idle after {:.1} s more: {rss}",
            total as f64 / 1e6,
            elapsed.as_secs_f64(),
            settle.as_millis(),
            mib(right_after),
            waited.as_secs_f64(),
        ))
    }

    /// The origin sends half the announced body and resets: curl must see a truncated transfer.
    fn reset_mid_body(&self) -> Result<String> {
        const LEN: usize = 4 << 20;
        let before = fresh_stats(&self.stats)?;
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
        let (settle, after) = wait_idle(&self.stats, SETTLE)?;
        let aborted = after.get("http_proxy", "aborted_responses")
            - before.get("http_proxy", "aborted_responses");
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

    /// The origin accepts and never answers: the proxy's 504 within the runner's timeout.
    fn never_answers(&self) -> Result<String> {
        let before = fresh_stats(&self.stats)?;
        let started = Instant::now();
        let got = self.guest.sh(
            &format!(
                "{} -w ' %{{http_code}}' {}/hang",
                self.curl(),
                self.fault.base_url()
            ),
            Duration::from_secs(30),
        )?;
        let elapsed = started.elapsed();
        if !got.ends_with(" 504") || !got.contains("in time") {
            bail!("expected the proxy's 504, got {got:?}");
        }
        let limit = Duration::from_secs(ORIGIN_TIMEOUT_SECS + 2);
        if elapsed > limit {
            bail!("504 only after {elapsed:?} (timeout {ORIGIN_TIMEOUT_SECS} s)");
        }
        let (settle, after) = wait_idle(&self.stats, SETTLE)?;
        let errors = after.get("http_proxy", "transport_errors")
            - before.get("http_proxy", "transport_errors");
        let reason = got.lines().find(|l| l.contains("in time")).unwrap_or("");
        Ok(format!(
            "504 after {:.2} s (timeout {ORIGIN_TIMEOUT_SECS} s): {:?}; transport_errors +{errors}; idle after {} ms",
            elapsed.as_secs_f64(),
            reason.trim(),
            settle.as_millis()
        ))
    }

    /// Garbage frames from the guest at [`FLOOD_RATE`] while a download runs.
    fn flood_beside_download(&self, frames: usize) -> Result<String> {
        const SIZE: usize = 32 << 20;
        let script = self.work.join("flood.py");
        std::fs::write(&script, FLOOD_PY)?;
        let ready = self.work.join("flood.ready");
        let stop = self.work.join("flood.stop");
        let _ = std::fs::remove_file(&ready);
        let _ = std::fs::remove_file(&stop);
        let file = self.work.join("flood-download");
        let download_args = [
            "curl".to_string(),
            "-sS".into(),
            "--fail".into(),
            "-x".into(),
            PROXY.into(),
            "-o".into(),
            file.display().to_string(),
            format!("{}/blob/{SIZE}", self.http.base_url()),
        ];
        let download_args: Vec<&str> = download_args.iter().map(String::as_str).collect();
        // The same download without the flood, for comparison.
        let started = Instant::now();
        let quiet = self
            .guest
            .ns
            .output_within(&download_args, Duration::from_secs(180))?;
        let quiet_time = started.elapsed();
        if !quiet.status.success() {
            bail!("the download without flood failed: {}", text(&quiet));
        }
        let before = fresh_stats(&self.stats)?;
        let flood = self
            .guest
            .ns
            .command(&[
                "timeout",
                "120",
                "python3",
                &script.display().to_string(),
                &self.guest.ns.iface,
                &frames.to_string(),
                &ready.display().to_string(),
                &stop.display().to_string(),
                &FLOOD_RATE.to_string(),
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting the flood")?;
        let kill = cleanup::register(cleanup::Action::Kill(flood.id()));
        let deadline = Instant::now() + Duration::from_secs(30);
        while !ready.exists() {
            if Instant::now() > deadline {
                cleanup::run_one(&kill);
                bail!("the flood did not start");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let started = Instant::now();
        let download = self
            .guest
            .ns
            .output_within(&download_args, Duration::from_secs(180));
        let elapsed = started.elapsed();
        std::fs::write(&stop, "")?;
        let flood_out = flood.wait_with_output();
        cleanup::run_one(&kill);
        let flood_out = flood_out.context("waiting for the flood")?;
        let flood_text = text(&flood_out);
        if !flood_out.status.success() {
            bail!("the flood failed ({}): {flood_text}", flood_out.status);
        }
        let download = download?;
        if !download.status.success() {
            bail!("the download failed: {}", text(&download));
        }
        let got = std::fs::read(&file)?;
        let _ = std::fs::remove_file(&file);
        if got.len() != SIZE || got != blob(SIZE) {
            bail!("download differs: {} of {SIZE} bytes", got.len());
        }
        let (_, after) = wait_idle(&self.stats, SETTLE)?;
        let d = |key: &str| after.get("net_stack", key) - before.get("net_stack", key);
        if d("dropped_malformed") == 0 {
            bail!("dropped_malformed did not rise ({flood_text})");
        }
        Ok(format!(
            "32 MiB byte-exact in {:.1} s beside the flood ({:.1} s without it; {}); stack: frames_in +{}, dropped +{} (malformed +{}, unsupported +{}, not_for_us +{}, queue_full +{}), dns_errors +{}",
            elapsed.as_secs_f64(),
            quiet_time.as_secs_f64(),
            flood_text.trim(),
            d("frames_in"),
            d("frames_dropped"),
            d("dropped_malformed"),
            d("dropped_unsupported"),
            d("dropped_not_for_us"),
            d("dropped_queue_full"),
            d("dns_errors"),
        ))
    }
}

impl Snapshot {
    /// `self`, unless `other` shows more resident memory (an idle baseline should not be
    /// the lowest sample).
    fn max_rss(self, other: Snapshot) -> Snapshot {
        if other.rss() > self.rss() {
            other
        } else {
            self
        }
    }
}

/// The `q` quantile (0..=1) of `values` (sorted in place); 0 when empty.
fn percentile(values: &mut [f64], q: f64) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    values.sort_by(f64::total_cmp);
    let i = ((values.len() - 1) as f64 * q).round() as usize;
    values[i.min(values.len() - 1)]
}

/// The last lines of a command's output, for messages.
fn tail(s: &str) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(5)..].join(" | ")
}

/// A second runner whose TAP sits on a bridge in a "switch" namespace; the guest is another
/// namespace on a veth port of that bridge. Mid-download the guest's NIC is deleted and its
/// namespace removed, with no FIN or RST, like a VM that is killed: the runner's counters
/// must return to zero and its memory near idle. Then the switch namespace (and the TAP in
/// it) is deleted too, and what the runner does is reported.
fn vanishing_guest(binary: &Path, dir: &Path, http: &ThreadedOrigin) -> Result<String> {
    let id = std::process::id();
    let stats = dir.join("stats-vanish.json");
    let _ = std::fs::remove_file(&stats);
    let tap = format!("c2wv{id}");
    let work = dir.join("guest-work-vanish");
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work)?;
    let mut runner = Runner::start_tap(
        binary,
        &tap,
        &runner_args(binary, &stats),
        dir.join("runner-vanish.log"),
    )?;
    let switch = GuestNs::create(&format!("c2w-rbs-{id}"), &work)?;
    let guest_name = format!("c2w-rbg-{id}");
    let mut guest = GuestNs::create(&guest_name, &work)?;
    crate::tools::run(Command::new("ip").args(["link", "set", &tap, "netns", &switch.name]))?;
    switch.run(&["ip", "link", "add", "br0", "type", "bridge"])?;
    switch.run(&["ip", "link", "set", &tap, "master", "br0"])?;
    switch.run(&[
        "ip",
        "link",
        "add",
        "vs",
        "type",
        "veth",
        "peer",
        "name",
        "vg",
        "netns",
        &guest_name,
    ])?;
    switch.run(&["ip", "link", "set", "vs", "master", "br0"])?;
    for iface in [tap.as_str(), "vs", "br0"] {
        switch.run(&["ip", "link", "set", iface, "up"])?;
    }
    guest.run(&["ip", "link", "set", "vg", "address", GUEST_MAC])?;
    guest.run(&["ip", "link", "set", "vg", "up"])?;
    guest.iface = "vg".into();
    let g = Guest {
        ns: &guest,
        ca: PathBuf::new(),
        work: work.clone(),
    };
    g.dhcp().context("DHCP through the bridge")?;
    g.sh(
        &format!("curl -sS --fail -x {PROXY} {}/hello", http.base_url()),
        Duration::from_secs(20),
    )?;
    let (_, s) = wait_idle(&stats, SETTLE)?;
    std::thread::sleep(Duration::from_secs(1));
    let idle = fresh_stats(&stats)?.max_rss(s).rss();

    // A download slow enough to be cut in the middle.
    let download = guest
        .command(&[
            "curl",
            "-sS",
            "-x",
            PROXY,
            "--limit-rate",
            "4M",
            "-o",
            "/dev/null",
            &format!("{}/blob/{}", http.base_url(), 512 << 20),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting the download")?;
    let kill = cleanup::register(cleanup::Action::Kill(download.id()));
    let deadline = Instant::now() + Duration::from_secs(20);
    let during = loop {
        let s = fresh_stats(&stats)?;
        if s.get("http_proxy", "bytes_to_guest") > 8 << 20 {
            break s;
        }
        if Instant::now() > deadline {
            cleanup::run_one(&kill);
            bail!("the download did not get going: {:?}", s.0["http_proxy"]);
        }
    };
    let (tcp_during, proxy_during) = during.open();
    // The guest's NIC disappears first (nothing it sends afterwards reaches the runner), then
    // its processes and namespace.
    switch.run(&["ip", "link", "del", "vs"])?;
    let vanished = Instant::now();
    cleanup::run_one(&kill);
    drop(download);
    drop(guest);
    let (_, after) = wait_idle(&stats, VANISHED_SETTLE)?;
    let settled = vanished.elapsed();
    let rss = check_rss(idle, after.top("rss_peak_bytes"), after.rss())?;
    let mut detail = format!(
        "open during: tcp {tcp_during}, proxy {proxy_during}; back to 0/0 {:.1} s after the guest vanished; aborted_responses {}; {rss}",
        settled.as_secs_f64(),
        after.get("http_proxy", "aborted_responses"),
    );

    // Now the TAP itself goes away with the switch namespace.
    let pid = after.top("pid");
    drop(switch);
    std::thread::sleep(Duration::from_secs(2));
    let cpu_before = cpu_ticks(pid);
    std::thread::sleep(Duration::from_secs(2));
    let cpu_after = cpu_ticks(pid);
    let running = runner.is_running();
    detail.push_str(&format!(
        "; after its TAP was deleted the runner is {} (CPU {} ticks in 2 s)",
        if running { "still running" } else { "gone" },
        cpu_after.saturating_sub(cpu_before)
    ));
    if !running {
        detail.push_str(&format!(": {}", runner.log_tail()));
    }
    drop(runner);
    Ok(detail)
}

/// utime + stime of process `pid` in clock ticks (0 when unreadable).
fn cpu_ticks(pid: u64) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    // utime and stime are fields 14 and 15 of stat(5); `fields` starts at field 3.
    let get = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    get(11) + get(12)
}

/// Sends garbage frames on an AF_PACKET socket: random bytes, truncated Ethernet/ARP/IPv4
/// headers, bad IPv4 and TCP checksums, garbage DNS and DHCP payloads. Writes the ready file
/// when the frames are built, sends at least `count`, and keeps going until the stop file
/// appears. Prints what it sent.
/// Garbage frames per second the flood sends (about 20 MB/s of garbage): far more than a guest
/// in a browser's emulator produces, and what the debug runner on a shared 2-core machine still
/// drains, so the frames the kernel's TAP queue drops are not the download's.
const FLOOD_RATE: u32 = 30_000;

const FLOOD_PY: &str = r#"
import os, random, socket, struct, sys, time
iface, count, ready, stop, rate = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], float(sys.argv[5])
rnd = random.Random(20260901)
gw = bytes.fromhex("5a94efe40cdd")
me = bytes.fromhex("525400c20003")
guest_ip = socket.inet_aton("192.168.127.3")
gw_ip = socket.inet_aton("192.168.127.1")
proxy_ip = socket.inet_aton("192.168.127.253")

def rb(n):
    return rnd.getrandbits(8 * n).to_bytes(n, "big") if n else b""

def csum(b):
    if len(b) % 2:
        b += b"\0"
    s = sum(struct.unpack("!%dH" % (len(b) // 2), b))
    while s >> 16:
        s = (s & 0xffff) + (s >> 16)
    return ~s & 0xffff

def ipv4(proto, payload, dst, good=True):
    hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), rnd.getrandbits(16), 0, 64, proto, 0, guest_ip, dst)
    c = csum(hdr) if good else (csum(hdr) ^ 0x5a5a) or 1
    return hdr[:10] + struct.pack("!H", c) + hdr[12:] + payload

def eth(kind, payload, dst=gw):
    return dst + me + struct.pack("!H", kind) + payload

def frame(i):
    k = i % 8
    if k == 0:
        return rb(rnd.randint(1, 1514))
    if k == 1:
        return eth(0x0800, ipv4(rnd.choice([1, 6, 17]), rb(rnd.randint(0, 1000)), gw_ip, good=False))
    if k == 2:
        return eth(0x0800, rb(rnd.randint(0, 19)))
    if k == 3:
        return eth(0x0806, rb(rnd.randint(0, 27)))
    if k == 4:
        tcp = struct.pack("!HHIIBBHHH", rnd.randint(1024, 65535), 80, rnd.getrandbits(32), 0, 0x50, 0x02, 65535, 0xdead, 0) + rb(rnd.randint(0, 200))
        return eth(0x0800, ipv4(6, tcp, proxy_ip))
    if k == 5:
        body = rb(rnd.randint(0, 300))
        return eth(0x0800, ipv4(17, struct.pack("!HHHH", rnd.randint(1024, 65535), 53, 8 + len(body), 0) + body, gw_ip))
    if k == 6:
        body = rb(rnd.randint(0, 300))
        return eth(0x0800, ipv4(17, struct.pack("!HHHH", 68, 67, 8 + len(body), 0) + body, gw_ip))
    # IPv4 header claiming options and a length past the frame, with a valid checksum.
    hdr = bytearray(ipv4(rnd.choice([1, 6, 17]), rb(rnd.randint(0, 40)), gw_ip))
    hdr[0] = 0x4f
    hdr[2:4] = struct.pack("!H", 1400)
    hdr[10:12] = b"\0\0"
    hdr[10:12] = struct.pack("!H", csum(bytes(hdr[:20])))
    return eth(0x0800, bytes(hdr))

frames = [frame(i) for i in range(count)]
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind((iface, 0))
open(ready, "w").close()
sent = errors = 0
started = time.monotonic()
i = 0
while True:
    try:
        s.send(frames[i % count])
        sent += 1
    except OSError:
        errors += 1
    i += 1
    if i % 256 == 0:
        # Paced: a guest can send faster than the TAP queue in front of the runner drains,
        # and then the kernel drops its real frames together with the garbage before the
        # runner sees any; that measures the host's scheduler, not the proxy.
        ahead = started + i / rate - time.monotonic()
        if ahead > 0:
            time.sleep(ahead)
        if i >= count and (os.path.exists(stop) or time.monotonic() - started > 100):
            break
elapsed = time.monotonic() - started
print("%d garbage frames in %.1f s, %.0f/s, %d send errors" % (sent, elapsed, sent / elapsed, errors))
"#;
