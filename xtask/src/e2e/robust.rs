//! The robustness phase of `cargo xtask e2e`: load and failures against a real Linux guest (a
//! network namespace behind the native runner's TAP device), read back through the runner's
//! `--stats-file`. The checks shared with the browser e2e ([`crate::e2e::load`]: 1,000
//! sequential and 256 concurrent connections, an origin that resets mid-body, one that never
//! answers), then two only a TAP allows: a garbage-frame flood beside a download, and a guest
//! that vanishes mid-transfer (then its TAP is deleted: the runner must re-create it and serve
//! a new guest); after each, the runner's connection counters must return to zero and its
//! memory near its idle value. Every check prints its numbers; cleanup always runs.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use serde_json::Value;

use crate::e2e::load::{check_memory, wait_idle, CounterSource, Counters, LoadChecks, SETTLE};
use crate::harness::cleanup;
use crate::harness::guest::{build_runner, text, Guest, GuestNs, Runner, GUEST_MAC, PROXY};
use crate::harness::origins::{blob, Cors, FaultOrigin, Origin};
use crate::report::Report;
use crate::tools::{ensure_programs, is_root, workspace_root};

/// The checks of this phase (a filter that matches none of them skips the phase).
const CHECKS: [&str; 6] = [
    "robust: 1000 sequential connections",
    "robust: 256 concurrent connections",
    "robust: an origin that resets mid-body",
    "robust: an origin that never answers",
    "robust: a garbage-frame flood beside a 32 MiB download",
    "robust: a guest that vanishes mid-transfer; then its TAP is deleted",
];

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
    // Only generated routes are needed here (blob, hello), so no origin files.
    let http = Origin::http_without_files(Cors::On)?;
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
    let guest = Guest {
        ns: &ns,
        ca: PathBuf::new(),
        work: work.clone(),
    };
    let stats = StatsFile(stats);
    let limit_flags = runner_args(&binary, &stats.0)[6..].join(" ");
    let env = LoadChecks {
        guest: &guest,
        http: &http,
        fault: &fault,
        counters: &stats,
        work: work.clone(),
        origin_timeout: Duration::from_secs(ORIGIN_TIMEOUT_SECS),
        limits: if limit_flags.is_empty() {
            "none (net-stack defaults: max_connections 256, listen_backlog 128)".into()
        } else {
            format!("runner flags {limit_flags}")
        },
        concurrent: 256,
        concurrent_sizes: (200_000, 1000),
        // The transport keeps idle origin connections (and their read buffers) pooled for
        // its idle timeout (20 s); memory may return only when they close.
        memory_settle: Duration::from_secs(100),
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
        drop(guest);
        drop(ns);
        drop(runner);
        return r.finish("e2e robust");
    }
    r.check(CHECKS[0], || env.sequential(1000, idle));
    r.check(CHECKS[1], || env.concurrent(idle));
    r.check(CHECKS[2], || env.reset_mid_body());
    r.check(CHECKS[3], || env.never_answers());
    r.check(CHECKS[4], || flood_beside_download(&env, &stats, 50_000));
    r.check("robust: the runner is still running", || {
        if runner.is_running() {
            Ok("alive".into())
        } else {
            bail!("the runner exited: {}", runner.log_tail())
        }
    });
    r.check(CHECKS[5], || vanishing_guest(&binary, &dir, &http));
    drop(env);
    drop(guest);
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
        format!("{ORIGIN_TIMEOUT_SECS}s"),
    ];
    // A capture of everything the runner sees, for debugging a failing check (it slows the
    // runner, which changes the timing of load checks).
    if let Ok(path) = std::env::var("C2W_ROBUST_PCAP") {
        args.extend(["--pcap".to_string(), path]);
    }
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

/// The runner's `--stats-file` as a [`CounterSource`].
struct StatsFile(PathBuf);

impl StatsFile {
    /// The current snapshot.
    fn read(&self) -> Result<Counters> {
        let path = &self.0;
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading the stats file {}", path.display()))?;
        let raw: Value = serde_json::from_str(&text).context("parsing the stats file")?;
        let n = |pointer: &str| json_counter(&raw, pointer);
        Ok(Counters {
            tcp_open: n("/tcp/open"),
            tcp_accepted: n("/tcp/accepted"),
            tcp_refused_limit: n("/tcp/refusedLimit"),
            proxy_open: n("/proxy/connectionsOpen"),
            connections_total: n("/proxy/connectionsTotal"),
            aborted_responses: n("/proxy/errors/abortedResponses"),
            transport_errors: n("/proxy/errors/transportErrors"),
            bytes_to_guest: n("/proxy/bytesToGuest"),
            memory: n("/rssBytes"),
            memory_peak: n("/rssPeakBytes"),
            raw,
        })
    }
}

impl CounterSource for StatsFile {
    /// A snapshot written after now (the file is rewritten every 500 ms).
    fn fresh(&self) -> Result<Counters> {
        let since = unix_ms();
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if let Ok(s) = self.read() {
                if json_counter(&s.raw, "/unixMs") > since {
                    return Ok(s);
                }
            }
            if Instant::now() > deadline {
                bail!("the stats file {} is not being rewritten", self.0.display());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn memory_name(&self) -> &'static str {
        "RSS"
    }

    fn memory_slack(&self) -> u64 {
        RSS_SLACK
    }
}

/// The counter at a JSON pointer (`/drops/malformed`) of a stats snapshot; 0 when absent.
fn json_counter(raw: &Value, pointer: &str) -> u64 {
    raw.pointer(pointer).and_then(Value::as_u64).unwrap_or(0)
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Garbage frames from the guest at [`FLOOD_RATE`] while a download runs (native only: the
/// flood needs raw access to the guest's side of the TAP).
fn flood_beside_download(c: &LoadChecks, stats: &StatsFile, frames: usize) -> Result<String> {
    const SIZE: usize = 32 << 20;
    let script = c.work.join("flood.py");
    std::fs::write(&script, FLOOD_PY)?;
    let ready = c.work.join("flood.ready");
    let stop = c.work.join("flood.stop");
    let _ = std::fs::remove_file(&ready);
    let _ = std::fs::remove_file(&stop);
    let file = c.work.join("flood-download");
    let download_args = [
        "curl".to_string(),
        "-sS".into(),
        "--fail".into(),
        "-x".into(),
        PROXY.into(),
        "-o".into(),
        file.display().to_string(),
        format!("{}/blob/{SIZE}", c.http.base_url()),
    ];
    let download_args: Vec<&str> = download_args.iter().map(String::as_str).collect();
    // The same download without the flood, for comparison.
    let started = Instant::now();
    let quiet = c
        .guest
        .ns
        .output_within(&download_args, Duration::from_secs(180))?;
    let quiet_time = started.elapsed();
    if !quiet.status.success() {
        bail!("the download without flood failed: {}", text(&quiet));
    }
    let before = stats.fresh()?;
    let flood = c
        .guest
        .ns
        .command(&[
            "timeout",
            "120",
            "python3",
            &script.display().to_string(),
            &c.guest.ns.iface,
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
    let download = c
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
    let (_, after) = wait_idle(stats, SETTLE)?;
    let d = |key: &str| json_counter(&after.raw, key) - json_counter(&before.raw, key);
    if d("/drops/malformed") == 0 {
        bail!("dropped_malformed did not rise ({flood_text})");
    }
    Ok(format!(
        "32 MiB byte-exact in {:.1} s beside the flood ({:.1} s without it; {}); stack: frames_in +{}, dropped +{} (malformed +{}, unsupported +{}, not_for_us +{}, queue_full +{}), dns_errors +{}",
        elapsed.as_secs_f64(),
        quiet_time.as_secs_f64(),
        flood_text.trim(),
        d("/framesIn"),
        d("/drops/total"),
        d("/drops/malformed"),
        d("/drops/unsupported"),
        d("/drops/notForUs"),
        d("/drops/queueFull"),
        d("/dns/errors"),
    ))
}

/// A second runner whose TAP sits on a bridge in a "switch" namespace; the guest is another
/// namespace on a veth port of that bridge. Mid-download the guest's NIC is deleted and its
/// namespace removed, with no FIN or RST, like a VM that is killed: the runner's counters
/// must return to zero and its memory near idle. Then the switch namespace (and the TAP in
/// it) is deleted too: the runner must re-create its TAP and serve a new guest behind it.
fn vanishing_guest(binary: &Path, dir: &Path, http: &Origin) -> Result<String> {
    let id = std::process::id();
    let stats_path = dir.join("stats-vanish.json");
    let _ = std::fs::remove_file(&stats_path);
    let stats = StatsFile(stats_path.clone());
    let tap = format!("c2wv{id}");
    let work = dir.join("guest-work-vanish");
    crate::tools::fresh_dir(&work)?;
    let mut runner = Runner::start_tap(
        binary,
        &tap,
        &runner_args(binary, &stats_path),
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
    let idle = stats.fresh()?.max_memory(s).memory;

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
        let s = stats.fresh()?;
        if s.bytes_to_guest > 8 << 20 {
            break s;
        }
        if Instant::now() > deadline {
            cleanup::run_one(&kill);
            bail!("the download did not get going: {}", s.raw["proxy"]);
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
    let rss = check_memory(&stats, idle, &after)?;
    let mut detail = format!(
        "open during: tcp {tcp_during}, proxy {proxy_during}; back to 0/0 {:.1} s after the guest vanished; aborted_responses {}; {rss}",
        settled.as_secs_f64(),
        after.aborted_responses,
    );

    // Now the TAP itself goes away with the switch namespace: the runner must notice, make it
    // again, and serve a new guest behind it.
    drop(switch);
    let deleted = Instant::now();
    let reappeared = loop {
        let shown = Command::new("ip")
            .args(["link", "show", &tap])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if shown {
            break deleted.elapsed();
        }
        if !runner.is_running() {
            bail!(
                "{detail}; the runner exited after its TAP was deleted: {}",
                runner.log_tail()
            );
        }
        if deleted.elapsed() > Duration::from_secs(10) {
            bail!(
                "{detail}; the runner did not re-create its TAP {tap} within 10 s: {}",
                runner.log_tail()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let work = dir.join("guest-work-after");
    let after_ns = GuestNs::behind(&format!("c2w-rbn-{id}"), &tap, &work)?;
    let g = Guest {
        ns: &after_ns,
        ca: PathBuf::new(),
        work: work.clone(),
    };
    let lease = g.dhcp().context("DHCP behind the re-created TAP")?;
    let body = g.sh(
        &format!("curl -sS --fail -x {PROXY} {}/hello", http.base_url()),
        Duration::from_secs(20),
    )?;
    if body != "hello from the origin\n" {
        bail!("unexpected body behind the re-created TAP: {body:?}");
    }
    detail.push_str(&format!(
        "; its TAP deleted, the runner re-created it in {:.1} s and a new guest got {lease} and a response behind it",
        reappeared.as_secs_f64()
    ));
    drop(g);
    drop(after_ns);
    drop(runner);
    Ok(detail)
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
