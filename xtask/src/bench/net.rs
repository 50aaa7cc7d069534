//! Section "Network paths": the same guest workloads (downloads, uploads, request latency,
//! new HTTPS hosts, concurrent downloads, memory, idle CPU) on every path, in one run, each
//! figure next to the direct path's (curl on the host to the same origin on loopback) and
//! reported as a ratio, because these machines are shared and noisy.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use super::routes::{self, Direct, Origins, Page, RelayShape, FRESH_SUFFIX};
use super::workload::{self, mb_per_s, median, Route, Scheme};
use super::{peer, reference};
use super::{publish, Machine};
use crate::harness::browser::page_server::PageServer;
use crate::harness::cleanup;
use crate::harness::origins::OriginFiles;
use crate::harness::relays::WispServerKind;
use crate::tools::{self, ensure_programs, is_root, workspace_root};

const HEADING: &str = "## Network paths";
const MIB: u64 = 1 << 20;

/// What to measure; `--quick` shrinks the sizes for a smoke run.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Download sizes; the last is the one memory is watched during.
    pub downloads: Vec<u64>,
    /// Upload size.
    pub upload: u64,
    /// Requests per latency run.
    pub requests: usize,
    /// New-host rounds.
    pub new_hosts: usize,
    /// Concurrent download counts, and the size of each.
    pub concurrency: Vec<usize>,
    /// Size of each concurrent download.
    pub concurrent_size: u64,
    /// Idle period for the CPU measurement.
    pub idle: Duration,
    /// Which paths to run (`native`, `relay`, `browser`, `browser-relay`, `c2w`, `mtu`, `v86`,
    /// `reference`); all when empty.
    pub only: Vec<String>,
}

impl Plan {
    /// The plan: 1, 64 and 512 MiB downloads, 64 MiB upload, 200 requests, 64 and 256
    /// concurrent downloads, 10 idle seconds.
    pub fn full() -> Self {
        Self {
            downloads: vec![MIB, 64 * MIB, 512 * MIB],
            upload: 64 * MIB,
            requests: 200,
            new_hosts: 20,
            concurrency: vec![64, 256],
            concurrent_size: MIB,
            idle: Duration::from_secs(10),
            only: Vec::new(),
        }
    }

    /// A short run of every workload, for checking the harness.
    pub fn quick() -> Self {
        Self {
            downloads: vec![MIB, 16 * MIB],
            upload: 8 * MIB,
            requests: 50,
            new_hosts: 5,
            concurrency: vec![16],
            concurrent_size: 256 << 10,
            idle: Duration::from_secs(3),
            only: Vec::new(),
        }
    }

    fn runs(&self, path: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|p| p == path)
    }
}

/// One row of the table: a metric measured on several paths.
#[derive(Debug, Clone)]
struct Metric {
    key: String,
    label: String,
    unit: &'static str,
    /// Higher is better (throughput) or lower is better (latency, memory, CPU).
    higher_is_better: bool,
}

/// Every figure, by metric key and then by path name.
#[derive(Debug, Default)]
struct Results {
    metrics: Vec<Metric>,
    values: BTreeMap<String, BTreeMap<String, f64>>,
    paths: Vec<String>,
    notes: Vec<String>,
}

impl Results {
    fn record(&mut self, path: &str, metric: Metric, value: f64) {
        eprintln!(
            "xtask bench: {path:>10} {:<48} {value:.3} {}",
            metric.label, metric.unit
        );
        if !self.paths.iter().any(|p| p == path) {
            self.paths.push(path.to_string());
        }
        if !self.metrics.iter().any(|m| m.key == metric.key) {
            self.metrics.push(metric.clone());
        }
        self.values
            .entry(metric.key)
            .or_default()
            .insert(path.to_string(), value);
    }

    fn get(&self, key: &str, path: &str) -> Option<f64> {
        self.values.get(key)?.get(path).copied()
    }

    /// A figure failed to be measured: noted, and the run goes on.
    fn failed(&mut self, path: &str, what: &str, err: anyhow::Error) {
        let all = format!("{err:#}");
        let line = format!("{path}: {what} failed: {}", first_line(&all));
        // The whole error on the terminal (curl's complaint is after the command line); the
        // first line in the document.
        eprintln!(
            "xtask bench: {path}: {what} failed: {}",
            all.chars().take(4000).collect::<String>()
        );
        self.notes.push(line);
    }
}

/// An error in one line for the document: its first line and, when there are more, its last
/// (a failed script's first line is its command; what went wrong comes last).
fn first_line(s: &str) -> String {
    let mut lines = s.lines().map(str::trim).filter(|l| !l.is_empty());
    let first: String = lines.next().unwrap_or("").chars().take(200).collect();
    match lines.next_back() {
        Some(last) => format!("{first} … {}", last.chars().take(200).collect::<String>()),
        None => first,
    }
}

fn size_label(size: u64) -> String {
    if size >= MIB {
        format!("{} MiB", size / MIB)
    } else {
        format!("{} KiB", size >> 10)
    }
}

fn throughput_metric(key: String, label: String) -> Metric {
    Metric {
        key,
        label,
        unit: "MB/s",
        higher_is_better: true,
    }
}

fn lower_metric(key: String, label: String, unit: &'static str) -> Metric {
    Metric {
        key,
        label,
        unit,
        higher_is_better: false,
    }
}

/// Runs every workload of `plan` on `route`, recording into `results`. A workload that fails
/// is noted and the others still run.
fn measure(route: &dyn Route, plan: &Plan, results: &mut Results, subset: Subset) {
    let path = route.name();
    // Idle first, once set-up work has settled: after the workloads the browser would still be
    // collecting the garbage of gigabytes moved, which is not the proxy's idle cost.
    if route.cpu_time().is_some() {
        std::thread::sleep(IDLE_SETTLE);
    }
    if let Some(before) = route.cpu_time() {
        std::thread::sleep(plan.idle);
        if let Some(after) = route.cpu_time() {
            results.record(
                &path,
                idle_metric(plan),
                (after - before).as_secs_f64() * 1e3,
            );
        }
    }
    let schemes: Vec<Scheme> = Scheme::BOTH
        .into_iter()
        .filter(|s| route.base(*s).is_some())
        .collect();
    let biggest = plan.downloads.iter().copied().max().unwrap_or(MIB);
    for &scheme in &schemes {
        for &size in &plan.downloads {
            if subset == Subset::Light && size > 64 * MIB {
                continue;
            }
            let watch = size == biggest && scheme == Scheme::Http;
            let expected = workload::blob_sha(size);
            let metric = throughput_metric(
                format!("download/{}/{}", scheme.as_str(), size),
                format!("Download {} over {}", size_label(size), scheme.as_str()),
            );
            let baseline = route.memory();
            let mut peak = baseline.unwrap_or(0);
            let outcome = std::thread::scope(|s| {
                let job = s.spawn(|| workload::download(route, scheme, size, &expected));
                while watch && !job.is_finished() {
                    if let Some(m) = route.memory() {
                        peak = peak.max(m);
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
                job.join()
                    .unwrap_or_else(|_| bail!("download thread panicked"))
            });
            match outcome {
                Ok(secs) => {
                    results.record(&path, metric, mb_per_s(size, secs));
                    if let (true, Some(base)) = (watch, baseline) {
                        if let Some(m) = route.memory() {
                            peak = peak.max(m);
                        }
                        results.record(
                            &path,
                            lower_metric(
                                format!("memory/growth/{size}"),
                                format!("Memory growth during the {} download", size_label(size)),
                                "MiB",
                            ),
                            peak.saturating_sub(base) as f64 / MIB as f64,
                        );
                    }
                }
                Err(e) => results.failed(&path, &metric.label, e),
            }
        }
        if subset == Subset::Full {
            let file = route.scratch().join("upload.bin");
            let metric = throughput_metric(
                format!("upload/{}/{}", scheme.as_str(), plan.upload),
                format!(
                    "Upload (POST) {} over {}",
                    size_label(plan.upload),
                    scheme.as_str()
                ),
            );
            match workload::upload_file(&file, plan.upload)
                .and_then(|()| workload::upload(route, scheme, plan.upload, &file))
            {
                Ok(secs) => results.record(&path, metric, mb_per_s(plan.upload, secs)),
                Err(e) => results.failed(&path, &metric.label, e),
            }
        }
        for new_connections in [false, true] {
            let (key, what) = if new_connections {
                ("new", "each on a new connection")
            } else {
                ("keepalive", "on one keep-alive connection")
            };
            let metric = lower_metric(
                format!("requests/{}/{key}", scheme.as_str()),
                format!(
                    "{} sequential small {} requests {what}: median per request",
                    plan.requests,
                    scheme.as_str()
                ),
                "ms",
            );
            match workload::requests(route, scheme, plan.requests, new_connections) {
                Ok(times) => results.record(&path, metric, median(&times)),
                Err(e) => results.failed(&path, &metric.label, e),
            }
        }
        // The same requests answered by the proxy itself: the stack's and the proxy's share
        // of a request's cost, without the way out (in the browser, fetch()).
        if let (Scheme::Http, Some(own)) = (scheme, route.own_pages()) {
            let metric = lower_metric(
                "requests/own/keepalive".into(),
                format!(
                    "{} sequential small requests the proxy answers itself (its /ca.pem), one keep-alive connection: median per request",
                    plan.requests
                ),
                "ms",
            );
            match workload::requests_to(route, &format!("{own}/ca.pem"), plan.requests, false) {
                Ok(times) => results.record(&path, metric, median(&times)),
                Err(e) => results.failed(&path, &metric.label, e),
            }
        }
    }
    if subset == Subset::Full && route.fresh_https_host(0).is_some() {
        match workload::https_hosts(route, plan.new_hosts) {
            Ok(pairs) => {
                let first: Vec<f64> = pairs.iter().map(|p| p.0).collect();
                let again: Vec<f64> = pairs.iter().map(|p| p.1).collect();
                results.record(
                    &path,
                    lower_metric(
                        "https/new_host".into(),
                        "HTTPS request to a host the proxy has not seen (curl run of its own: TLS set-up, handshake, leaf), median".into(),
                        "ms",
                    ),
                    median(&first),
                );
                results.record(
                    &path,
                    lower_metric(
                        "https/known_host".into(),
                        "The same again (leaf cached; new curl run and handshake), median".into(),
                        "ms",
                    ),
                    median(&again),
                );
            }
            Err(e) => results.failed(&path, "new HTTPS hosts", e),
        }
    }
    if subset == Subset::Full {
        for &n in &plan.concurrency {
            let metric = throughput_metric(
                format!("concurrent/{n}"),
                format!(
                    "{n} simultaneous {} http downloads, aggregate",
                    size_label(plan.concurrent_size)
                ),
            );
            let before = route.memory();
            let mut peak = before;
            let outcome = std::thread::scope(|s| {
                let job =
                    s.spawn(|| workload::concurrent(route, Scheme::Http, n, plan.concurrent_size));
                while !job.is_finished() {
                    peak = peak.max(route.memory());
                    std::thread::sleep(Duration::from_millis(100));
                }
                job.join()
                    .unwrap_or_else(|_| bail!("concurrent downloads thread panicked"))
            });
            match outcome {
                Ok(wall) => {
                    results.record(
                        &path,
                        metric,
                        mb_per_s(n as u64 * plan.concurrent_size, wall),
                    );
                    // Absolute: a wasm memory never shrinks, so its size after the burst is
                    // what the tab keeps (natively: the runner's RSS at its peak).
                    if let Some(peak) = peak.max(route.memory()) {
                        eprintln!(
                            "xtask bench: {path}: memory before the {n} downloads {:.1} MiB, at most {:.1} MiB during them",
                            before.unwrap_or(0) as f64 / MIB as f64,
                            peak as f64 / MIB as f64
                        );
                        results.record(
                            &path,
                            lower_metric(
                                format!("memory/concurrent/{n}"),
                                format!(
                                    "Memory (wasm memory; natively RSS) at most during the {n} simultaneous downloads"
                                ),
                                "MiB",
                            ),
                            peak as f64 / MIB as f64,
                        );
                    }
                }
                Err(e) => results.failed(&path, &metric.label, e),
            }
        }
    }
}

fn idle_metric(plan: &Plan) -> Metric {
    lower_metric(
        "idle/cpu".into(),
        format!(
            "CPU time while idle for {} s after set-up (serving side)",
            plan.idle.as_secs()
        ),
        "ms",
    )
}

/// CPU time of headless Chromium showing an empty page for `idle`: what the browser itself
/// costs, to tell from what the proxy's page adds.
fn blank_page_cpu(
    origins: &Origins,
    pages: &PageServer,
    dir: &Path,
    idle: Duration,
) -> Result<f64> {
    let spec = crate::harness::browser::launch::LaunchSpec {
        dir: &dir.join("blank-chromium"),
        origin_cert: &origins.server_cert,
        origin_ca: &origins.ca,
    };
    let browser = crate::harness::browser::launch::Browser::start(
        crate::harness::browser::launch::Kind::Chromium,
        &format!("{}/idle.html", pages.base),
        &spec,
    )?;
    // Start-up work settles first, as it has on the measured pages by then.
    std::thread::sleep(Duration::from_secs(5) + IDLE_SETTLE);
    let cpu = || crate::harness::procfs::tree_cpu_time(browser.pid()).context("browser CPU time");
    let before = cpu()?;
    std::thread::sleep(idle);
    Ok((cpu()? - before).as_secs_f64() * 1e3)
}

/// Quiet time after a path's set-up before its idle CPU is measured.
const IDLE_SETTLE: Duration = Duration::from_secs(3);

/// How much of the plan a path runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Subset {
    /// Everything.
    Full,
    /// Downloads up to 64 MiB and request latency (slow or limited paths).
    Light,
    /// A peer: downloads (all sizes, http only where it has no TLS) and request latency; no
    /// uploads (v86's fetch backend re-copies the whole body per segment).
    Peer,
}

/// Runs the section.
pub(super) fn section(plan: &Plan) -> Result<()> {
    if !is_root() {
        bail!("bench (network paths) needs root (TAP devices and network namespaces)");
    }
    ensure_programs(&[
        ("udhcpc", "udhcpc"),
        ("/etc/udhcpc/default.script", "udhcpc"),
        ("curl", "curl"),
        ("ip", "iproute2"),
        ("timeout", "coreutils"),
        ("sha256sum", "coreutils"),
        ("openssl", "openssl"),
    ])?;
    let root = workspace_root();
    let dir = root.join("target/bench/net");
    std::fs::create_dir_all(&dir)?;
    eprintln!("xtask bench: building the native runner (profile bench-native)");
    let binary = build_runner(&root)?;
    let _guard = cleanup::Guard;
    let files = OriginFiles::create(&dir.join("origin")).context("creating the origin's files")?;
    let origins = Origins::start(&files)?;
    let mut results = Results::default();
    let started = Instant::now();

    let direct = Direct {
        origins: &origins,
        scratch: crate::tools::fresh_dir(&dir.join("direct-work"))?,
    };
    measure(&direct, plan, &mut results, Subset::Full);

    if plan.runs("native") {
        match routes::native(&origins, &binary, &dir, "native", &[]) {
            Ok(route) => measure(&route, plan, &mut results, Subset::Full),
            Err(e) => results.failed("native", "setup", e),
        }
    }
    if plan.runs("relay") {
        for kind in [WispServerKind::Js, WispServerKind::Python] {
            match routes::relay(&origins, &binary, &dir, kind) {
                Ok(route) => measure(&route, plan, &mut results, Subset::Full),
                Err(e) => results.failed(&format!("relay-{}", kind.name()), "setup", e),
            }
        }
    }
    if plan.runs("v86") {
        match peer::v86(&origins, &dir) {
            Ok(route) => measure(&route, plan, &mut results, Subset::Peer),
            Err(e) => results.failed("v86", "setup", e),
        }
    }
    let browser_relay = plan.runs("browser-relay");
    if plan.runs("browser") || browser_relay || plan.runs("c2w") || plan.runs("reference") {
        let pages = browser_pages(&root, &dir, &origins)?;
        // The browser relay paths are read against the fetch path of the same run.
        if plan.runs("browser") || browser_relay {
            match routes::browser(&origins, &pages, &dir, "browser", Page::NetProxy) {
                Ok(route) => measure(&route, plan, &mut results, Subset::Full),
                Err(e) => results.failed("browser", "setup", e),
            }
        }
        if browser_relay {
            for (kind, shape) in BROWSER_RELAYS {
                let name = routes::browser_relay_name(kind, shape);
                match routes::browser_relay(&origins, &pages, &dir, kind, shape) {
                    Ok(route) => measure(&route, plan, &mut results, Subset::Full),
                    Err(e) => results.failed(&name, "setup", e),
                }
            }
        }
        if plan.runs("browser") {
            match blank_page_cpu(&origins, &pages, &dir, plan.idle) {
                Ok(ms) => results.record("chromium-blank", idle_metric(plan), ms),
                Err(e) => results.failed("chromium-blank", "idle CPU", e),
            }
        }
        if plan.runs("c2w") {
            match routes::browser(&origins, &pages, &dir, "c2w", Page::C2wRelay) {
                Ok(route) => measure(&route, plan, &mut results, Subset::Light),
                Err(e) => results.failed("c2w", "setup", e),
            }
        }
        if plan.runs("reference") {
            references(&origins, &pages, &dir, &mut results);
        }
    }
    if plan.runs("mtu") {
        let extra = ["--mtu".to_string(), LARGE_MTU.to_string()];
        let name = format!("native-mtu{LARGE_MTU}");
        match routes::native(&origins, &binary, &dir, &name, &extra) {
            Ok(route) => measure(&route, plan, &mut results, Subset::Light),
            Err(e) => results.failed(&name, "setup", e),
        }
    }
    eprintln!(
        "xtask bench: network paths measured in {:.0} s",
        started.elapsed().as_secs_f64()
    );
    let md = markdown(&results, plan);
    publish(HEADING, &md, entries(&results))
}

/// The browser relay paths: raw relay streams through each Wisp server, and wisp-js behind the
/// proxy (plain HTTP relayed instead of fetched, HTTPS as `CONNECT` tunnels).
const BROWSER_RELAYS: [(WispServerKind, RelayShape); 3] = [
    (WispServerKind::Js, RelayShape::Raw),
    (WispServerKind::Python, RelayShape::Raw),
    (WispServerKind::Js, RelayShape::Proxy),
];

/// The large MTU the `mtu` variant offers by DHCP (the largest Linux accepts on a TAP, less
/// the Ethernet header, as in QEMU's and gVisor's jumbo setups).
const LARGE_MTU: u32 = 65520;

/// The stack-free references: the bridge echoing frames (Chromium and node), and
/// container2wasm's relay fed by a synthetic worker. Recorded as their own paths.
fn references(origins: &Origins, pages: &PageServer, dir: &Path, results: &mut Results) {
    let record = |results: &mut Results, path: &str, figures: Vec<reference::Figure>| {
        for f in figures {
            let metric = Metric {
                key: f.key,
                label: f.label,
                unit: f.unit,
                higher_is_better: f.higher_is_better,
            };
            results.record(path, metric, f.value);
        }
    };
    for peer in [reference::EchoPeer::Chromium, reference::EchoPeer::Node] {
        let path = format!("bridge-{}", peer.name());
        match reference::bridge_echo(peer, origins, pages, dir, 3.0) {
            Ok(f) => record(results, &path, f),
            Err(e) => results.failed(&path, "echo", e),
        }
    }
    match reference::relay_alone(origins, pages, dir, 2000) {
        Ok(f) => record(results, "relay-alone", f),
        Err(e) => results.failed("relay-alone", "relay", e),
    }
}

/// Builds the runner with the optimized native profile.
pub(super) fn build_runner(root: &Path) -> Result<std::path::PathBuf> {
    tools::run(
        std::process::Command::new("cargo")
            .args(["build", "--quiet", "--profile", "bench-native"])
            .args(["-p", "c2w-net-proxy", "--bin", "c2w-net-proxy"])
            .current_dir(root),
    )?;
    Ok(super::target_dir(root).join("bench-native/c2w-net-proxy"))
}

/// Serves the browser test pages with a config whose rewrites map the fresh names to the
/// HTTPS origin.
fn browser_pages(root: &Path, dir: &Path, origins: &Origins) -> Result<PageServer> {
    let dist = browser_dist(root, dir)?;
    let config = json!({
        "origins": {
            "http": origins.http.base_url(),
            "https": origins.https.base_url(),
            "nocors": origins.http.base_url(),
        },
        "rewrites": [
            { "host": format!("*.{FRESH_SUFFIX}"), "url": origins.https.base_url() },
        ],
        "plantCookie": false,
    })
    .to_string();
    super::page_server(&dist, config)
}

/// Checks that Chromium is installed, rebuilds dist/ (every time, quick when nothing changed,
/// so the browser paths run this code) and copies it under `dir` (a build running meanwhile
/// cannot change the files under the pages). Returns the copy.
pub(super) fn browser_dist(root: &Path, dir: &Path) -> Result<std::path::PathBuf> {
    crate::harness::browser::launch::Kind::Chromium.ensure_installed()?;
    crate::build::wasm::run_build(&[])?;
    crate::harness::browser::snapshot_dist(&root.join("dist"), &dir.join("dist"))
}

/// A cell: the value, and its ratio to the direct path's.
fn cell(results: &Results, metric: &Metric, path: &str) -> String {
    let Some(v) = results.get(&metric.key, path) else {
        return "–".into();
    };
    let value = match metric.unit {
        "MB/s" => format!("{v:.1} MB/s"),
        "ms" if v < 10.0 => format!("{v:.2} ms"),
        "ms" => format!("{v:.0} ms"),
        "MiB" => format!("{v:.1} MiB"),
        unit => format!("{v:.2} {unit}"),
    };
    match (path, results.get(&metric.key, "direct")) {
        ("direct", _) | (_, None) => value,
        (_, Some(d)) if d > 0.0 => format!("{value} ({:.2}×)", v / d),
        _ => value,
    }
}

/// True for the stack-free reference figures (they get their own table).
fn is_reference(key: &str) -> bool {
    key.starts_with("bridge-echo/") || key.starts_with("relay-alone/")
}

fn markdown(results: &Results, plan: &Plan) -> String {
    let machine = Machine::detect();
    let mut md = format!("{HEADING}\n\n");
    md.push_str(&format!(
        "Measured by `cargo xtask bench net` on {} on {} CPUs ({}). One run, every path \
         against the same origin servers (xtask's test origin on loopback: a thread per \
         connection, keep-alive, TCP_NODELAY, TLS by rustls) and the same kind of guest (a \
         network namespace running the Linux kernel's stack and curl). Ratios are against the \
         direct path (curl on the host to the origin) measured in the same run; downloads are \
         piped into sha256sum and checked on every path. Times are curl's own (`time_total`). \
         The runner is the `bench-native` build; the browser paths run dist/ in headless \
         Chromium behind the TAP-to-WebSocket bridge.\n\n",
        machine.date, machine.cpus, machine.cpu_model
    ));
    let paths: Vec<&String> = results
        .paths
        .iter()
        .filter(|p| {
            results
                .metrics
                .iter()
                .any(|m| !is_reference(&m.key) && results.get(&m.key, p).is_some())
        })
        .collect();
    md.push_str("| Metric |");
    for p in &paths {
        md.push_str(&format!(" {p} |"));
    }
    md.push_str("\n|---|");
    for _ in &paths {
        md.push_str("---:|");
    }
    md.push('\n');
    for metric in results.metrics.iter().filter(|m| !is_reference(&m.key)) {
        md.push_str(&format!("| {} |", metric.label));
        for p in &paths {
            md.push_str(&format!(" {} |", cell(results, metric, p)));
        }
        md.push('\n');
    }
    md.push_str(&format!(
        "\nPaths: **direct** curl on the host, no proxy; **native** the runner on a TAP \
         device; **browser** `NetProxy` on a Chromium page, frames over the bridge; **c2w** \
         `stack-worker.js` behind a page playing container2wasm's relay (its 4 KiB \
         SharedArrayBuffer protocol); **v86** the peer: v86's own fetch network backend \
         (`FetchNetworkAdapter`, npm v86 {}) in node over the same bridge, plain HTTP only \
         (it has no TLS interception) and no uploads (it re-copies the body per segment); \
         **native-mtu{LARGE_MTU}** the runner offering MTU {LARGE_MTU} by DHCP; \
         **chromium-blank** headless Chromium on an empty page (idle CPU baseline); \
         **relay-js** / **relay-python** the runner with `--relay` in front of wisp-js / \
         wisp-python on loopback, the guest's curl going straight to the origin (no proxy: \
         every connection is a relay stream, HTTPS end to end with the origin's own \
         certificate); **browser-relay-js** / **browser-relay-python** the same guest behind \
         `NetProxy` in Chromium with `config.relay` (the page's own WebSocket to the Wisp \
         server); **browser-proxy-relay-js** `NetProxy` with `relay.http = \"always\"` and \
         the guest's curl through the proxy: plain HTTP re-issued over a relay stream instead \
         of `fetch()`, HTTPS as a `CONNECT` tunnel through the relay.\n",
        crate::demo::V86_VERSION
    ));
    let refs: Vec<&Metric> = results
        .metrics
        .iter()
        .filter(|m| is_reference(&m.key))
        .collect();
    if !refs.is_empty() {
        md.push_str(
            "\nReferences without our stack, to tell its cost from the harness's: the bridge \
             alone (a Chromium page or node echoing UDP frames back to the guest, 1472-byte \
             datagrams, 128 in flight) and container2wasm's relay alone (the relay page fed \
             by a synthetic worker, 4 KiB per request).\n\n| Reference | Figure | Value |\n|---|---|---:|\n",
        );
        for m in refs {
            for p in &results.paths {
                if let Some(v) = results.get(&m.key, p) {
                    md.push_str(&format!("| {p} | {} | {v:.1} {} |\n", m.label, m.unit));
                }
            }
        }
    }
    let target_lines = targets(results, plan);
    if !target_lines.is_empty() {
        md.push_str("\nTargets:\n\n");
        for line in target_lines {
            md.push_str(&format!("- {line}\n"));
        }
    }
    if !results.notes.is_empty() {
        md.push_str("\nNot measured in this run:\n\n");
        for n in &results.notes {
            md.push_str(&format!("- {n}\n"));
        }
    }
    md
}

/// The targets, each with the measured figure and met / NOT met.
fn targets(results: &Results, plan: &Plan) -> Vec<String> {
    let mut out = Vec::new();
    let mut check = |what: String, ok: bool, measured: String| {
        out.push(format!(
            "{what}: {measured} — {}",
            if ok { "met" } else { "NOT met" }
        ));
    };
    let big = plan.downloads.iter().copied().max().unwrap_or(MIB);
    let key = format!("download/http/{big}");
    for (path, floor) in [("native", 0.25), ("browser", 0.10)] {
        if let (Some(v), Some(d)) = (results.get(&key, path), results.get(&key, "direct")) {
            check(
                format!(
                    "{path} download ≥ {floor}× direct ({} over http)",
                    size_label(big)
                ),
                v / d >= floor,
                format!("{:.3}×", v / d),
            );
        }
        if let (Some(v), Some(peer)) = (results.get(&key, path), results.get(&key, "v86")) {
            check(
                format!("{path} download ≥ 10× the v86 peer"),
                v / peer >= 10.0,
                format!("{:.1}×", v / peer),
            );
        }
    }
    relay_goals(results, big, plan.upload, &mut check);
    if let Some(v) = results.get("requests/http/keepalive", "native") {
        let d = results
            .get("requests/http/keepalive", "direct")
            .unwrap_or(0.0);
        check(
            "native per-request overhead on a keep-alive connection < 1 ms".into(),
            v - d < 1.0,
            format!("{:.2} ms over direct", v - d),
        );
    }
    if let Some(v) = results.get("https/new_host", "native") {
        // curl's own TLS set-up (reading the CA file, its handshake) is in both figures; the
        // proxy's share is the difference to the direct path's identical request.
        let d = results.get("https/new_host", "direct").unwrap_or(0.0);
        check(
            "native first request to a new HTTPS host < 5 ms".into(),
            v - d < 5.0,
            format!(
                "{v:.2} ms in all, {:.2} ms more than the direct path's",
                v - d
            ),
        );
    }
    for path in ["native", "browser"] {
        if let Some(v) = results.get(&format!("memory/growth/{big}"), path) {
            check(
                format!(
                    "{path} memory growth during the {} download < 32 MiB",
                    size_label(big)
                ),
                v < 32.0,
                format!("{v:.1} MiB"),
            );
        }
    }
    let secs = plan.idle.as_secs_f64().max(1.0);
    if let Some(v) = results.get("idle/cpu", "native") {
        check(
            "native idle CPU near zero".into(),
            v / secs < 5.0,
            format!("{:.1} ms of CPU per idle second", v / secs),
        );
    }
    for path in ["browser", "c2w"] {
        if let (Some(v), Some(blank)) = (
            results.get("idle/cpu", path),
            results.get("idle/cpu", "chromium-blank"),
        ) {
            // The browser path's page also posts its stats to the harness every 250 ms.
            let added = (v - blank) / secs;
            check(
                format!("{path} idle CPU near zero (beyond Chromium on an empty page)"),
                added < 20.0,
                format!(
                    "{:.1} ms per idle second, {:.1} ms of them Chromium's own",
                    v / secs,
                    blank / secs
                ),
            );
        }
    }
    out
}

/// Issue #18's goal for the browser relay paths, against the fetch path (`browser`) of the same
/// run: at least as fast for the largest download, faster for uploads, over http and https.
fn relay_goals(
    results: &Results,
    big: u64,
    upload: u64,
    check: &mut impl FnMut(String, bool, String),
) {
    for (kind, shape) in BROWSER_RELAYS {
        let path = routes::browser_relay_name(kind, shape);
        for scheme in Scheme::BOTH {
            let s = scheme.as_str();
            // Downloads at least as fast, uploads faster.
            let pairs = [
                (format!("download/{s}/{big}"), "download", "≥"),
                (format!("upload/{s}/{upload}"), "upload", ">"),
            ];
            for (key, what, op) in pairs {
                let (Some(v), Some(fetch)) =
                    (results.get(&key, &path), results.get(&key, "browser"))
                else {
                    continue;
                };
                let ok = if op == ">" { v > fetch } else { v >= fetch };
                check(
                    format!(
                        "{path} {what} {op} the fetch path's (browser; {} over {s})",
                        size_label(if what == "upload" { upload } else { big })
                    ),
                    ok,
                    format!("{v:.1} against {fetch:.1} MB/s, {:.2}×", v / fetch),
                );
            }
        }
    }
}

/// results.json entries: `net/<path>/<metric>` with the direct value as reference.
fn entries(results: &Results) -> Vec<Value> {
    let mut out = Vec::new();
    for metric in &results.metrics {
        let reference = results.get(&metric.key, "direct");
        for path in &results.paths {
            if let Some(v) = results.get(&metric.key, path) {
                out.push(json!({
                    "name": format!("net/{path}/{}", metric.key),
                    "unit": metric.unit,
                    "value": v,
                    "reference": if path == "direct" { None } else { reference },
                    "higher_is_better": metric.higher_is_better,
                }));
            }
        }
    }
    out
}
