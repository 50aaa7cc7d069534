//! Section "Into the guest": a server in a real Linux guest reached from outside the guest,
//! next to the same server run on the host and reached directly (the direct path). From the
//! host through the native runner's `--forward`; from a page through `NetProxy` in headless
//! Chromium (`fetchGuest`, and the page's own `fetch()` through the `guest-sw.js` preview),
//! the guest's frames crossing the TAP-to-WebSocket bridge as in the browser e2e's inbound
//! phase. The server is the forward phase's Python one (`http.server` with HTTP/1.1
//! keep-alive, POST answering the body's sha256), started with the same files every time.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use super::routes::{self, Origins, Page};
use super::workload::{mb_per_s, median, ok_times_ms, percentile};
use super::{publish, Machine};
use crate::e2e::forward::{start_guest_server, GUEST_HTTP, GUEST_SERVER};
use crate::harness::cleanup;
use crate::harness::daemon::free_port;
use crate::harness::guest::{Guest, GuestNs, Runner};
use crate::harness::origins::{blob, sha256_hex, OriginFiles};
use crate::tools::{ensure_programs, is_root, workspace_root};

const HEADING: &str = "## Into the guest";
const MIB: usize = 1 << 20;
/// Download size, and how many downloads per path (the median is reported).
const DOWNLOAD: usize = 64 * MIB;
const DOWNLOADS: usize = 3;
/// Upload size.
const UPLOAD: usize = 16 * MIB;
/// Small requests per latency run.
const REQUESTS: usize = 200;
/// Size of the small file the requests fetch.
const SMALL: usize = 256;
/// The guest's files: the small one, the download, and the bytes every path uploads (the page
/// fetches them from the guest first, so every upload is the same, known body).
const SMALL_FILE: &str = "small";
const DOWNLOAD_FILE: &str = "download";
const UPLOAD_FILE: &str = "upload-source";
/// How long the page may take for one workload (three downloads, 200 requests, ...).
const PAGE_STEP: Duration = Duration::from_secs(600);

/// One path's figures.
#[derive(Default)]
struct Figures {
    download: Option<f64>,
    upload: Option<f64>,
    request_ms: Option<f64>,
    request_p90_ms: Option<f64>,
    /// How many chunks the server read an upload in (the page's bodies arrive chunked).
    upload_chunks: Option<u64>,
}

/// A column of the table: the path's title, where its results.json names start, its figures.
struct Column {
    title: &'static str,
    prefix: &'static str,
    figures: Figures,
}

/// The same server on the host (the direct path), killed when dropped.
struct HostServer(Child);

impl Drop for HostServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// What the workloads check their results against.
struct Expected {
    download_sha: String,
    upload_sha: String,
    /// The upload's bytes on the host (curl's `--data-binary @file`).
    upload_file: std::path::PathBuf,
    /// Where curl writes its timings.
    scratch: std::path::PathBuf,
}

/// Measures every path and publishes the section.
pub(super) fn section() -> Result<()> {
    if !is_root() {
        bail!("bench inbound needs root (TAP devices and network namespaces)");
    }
    ensure_programs(&[
        ("curl", "curl"),
        ("python3", "python3"),
        ("udhcpc", "udhcpc"),
        ("/etc/udhcpc/default.script", "udhcpc"),
        ("ip", "iproute2"),
        ("timeout", "coreutils"),
        ("sha256sum", "coreutils"),
        ("openssl", "openssl"),
    ])?;
    let root = workspace_root();
    let binary = super::net::build_runner(&root)?;
    let dir = super::target_dir(&root).join("bench/inbound");
    let _ = std::fs::remove_dir_all(&dir);
    let files = dir.join("files");
    std::fs::create_dir_all(&files)?;
    std::fs::write(files.join(SMALL_FILE), blob(SMALL))?;
    std::fs::write(files.join(DOWNLOAD_FILE), blob(DOWNLOAD))?;
    std::fs::write(files.join(UPLOAD_FILE), blob(UPLOAD))?;
    let expected = Expected {
        download_sha: sha256_hex(&blob(DOWNLOAD)),
        upload_sha: sha256_hex(&blob(UPLOAD)),
        upload_file: files.join(UPLOAD_FILE),
        scratch: dir.clone(),
    };
    // Built (and Chromium checked) before anything is timed.
    let dist = super::net::browser_dist(&root, &dir)?;
    let _guard = cleanup::Guard;
    let load_before = load_average();
    let mut notes = Vec::new();

    // The direct path: the same script on the host's loopback.
    let direct_port = free_port()?;
    let script = dir.join("server.py");
    std::fs::write(&script, GUEST_SERVER)?;
    let child = Command::new("python3")
        .arg(&script)
        .arg(&files)
        .arg(direct_port.to_string())
        .arg(free_port()?.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting the host's server")?;
    let host = HostServer(child);
    let direct_base = format!("http://127.0.0.1:{direct_port}");
    wait_listening(direct_port)?;
    let direct = measure(&direct_base, &expected, &mut notes, "direct");
    drop(host);

    // Through the runner: host port -> guest port 8000.
    let forward = forward(&binary, &dir, &files, &expected, &mut notes);

    // Through NetProxy in Chromium.
    let (fetch_guest, preview) = match browser(&dir, &dist, &files, &expected, &mut notes) {
        Ok(both) => both,
        Err(e) => {
            eprintln!("xtask bench inbound: the browser paths failed: {e:#}");
            notes.push(format!("browser: {}", one_line(&format!("{e:#}"))));
            Default::default()
        }
    };
    let load_after = load_average();

    let columns = [
        Column {
            title: "direct",
            prefix: "inbound/direct",
            figures: direct,
        },
        Column {
            title: "forward",
            prefix: "inbound",
            figures: forward,
        },
        Column {
            title: "browser: fetchGuest",
            prefix: "inbound/browser/fetchguest",
            figures: fetch_guest,
        },
        Column {
            title: "browser: preview (guest-sw.js)",
            prefix: "inbound/browser/preview",
            figures: preview,
        },
    ];
    let (md, entries) = markdown(&columns, &notes, load_before, load_after);
    publish(HEADING, &md, entries)
}

/// The runner with `--forward` to the guest's port 8000, a guest behind it running the
/// server, and the workloads through the forwarded host port.
fn forward(
    binary: &Path,
    dir: &Path,
    files: &Path,
    expected: &Expected,
    notes: &mut Vec<String>,
) -> Figures {
    let run = |notes: &mut Vec<String>| -> Result<Figures> {
        let forward_port = free_port()?;
        let args = vec![
            "--forward".to_string(),
            format!("{forward_port}={GUEST_HTTP}"),
        ];
        let tap = format!("c2wbi{}", std::process::id());
        let runner = Runner::start_tap(binary, &tap, &args, dir.join("runner.log"))?;
        let work = dir.join("work");
        let ns = GuestNs::behind(&format!("c2w-bin-{}", std::process::id()), &tap, &work)?;
        let guest = Guest {
            ns: &ns,
            ca: dir.join("unused-ca.pem"),
            work,
        };
        guest.dhcp().context("the guest's DHCP behind the runner")?;
        let server = start_guest_server(&guest, files)?;
        let forward_base = format!("http://127.0.0.1:{forward_port}");
        let figures = measure(&forward_base, expected, notes, "forward");
        drop(server);
        drop(guest);
        drop(ns);
        drop(runner);
        Ok(figures)
    };
    run(notes).unwrap_or_else(|e| {
        eprintln!("xtask bench inbound: forward failed: {e:#}");
        notes.push(format!("forward: {}", one_line(&format!("{e:#}"))));
        Figures::default()
    })
}

/// `inbound.html` in Chromium in its bench mode, behind a bridge with a guest running the
/// server: the figures through `fetchGuest` and through the preview. A workload that fails is
/// noted and the others still run.
fn browser(
    dir: &Path,
    dist: &Path,
    files: &Path,
    expected: &Expected,
    notes: &mut Vec<String>,
) -> Result<(Figures, Figures)> {
    // The page's config.json names origins (the e2e page reads it); nothing here uses them.
    let origin_files =
        OriginFiles::create(&dir.join("origin")).context("creating the origin's files")?;
    let origins = Origins::start(&origin_files)?;
    let config = json!({
        "origins": {
            "http": origins.http.base_url(),
            "https": origins.https.base_url(),
            "nocors": origins.http.base_url(),
        },
        "rewrites": [],
    })
    .to_string();
    let pages = super::page_server(dist, config)?;
    let plan = json!({
        "http": GUEST_HTTP,
        "bench": {
            "download": format!("/{DOWNLOAD_FILE}"),
            "downloads": DOWNLOADS,
            "small": format!("/{SMALL_FILE}"),
            "requests": REQUESTS,
            "uploadSource": format!("/{UPLOAD_FILE}"),
            "upload": "/upload",
        },
    });
    let extra = format!("inbound={}&", crate::demo::boot::encode(&plan.to_string()));
    let route = routes::browser_with(
        &origins,
        &pages,
        dir,
        "inbound-browser",
        Page::Inbound,
        &extra,
    )?;
    let guest = route.guest();
    let server = start_guest_server(&guest, files)?;
    let board = &pages.board;
    // The page's result of `name`: its fields when it succeeded.
    let result = |name: &str, limit: Duration| -> Result<Value> {
        let (_, text) = board.wait(&format!("inbound.{name}"), 0, limit)?;
        let value: Value = serde_json::from_str(&text)
            .with_context(|| format!("the page's {name} is not JSON: {text}"))?;
        if value.get("ok") != Some(&Value::Bool(true)) {
            bail!(
                "the page failed {name}: {}",
                value.get("error").and_then(Value::as_str).unwrap_or(&text)
            );
        }
        Ok(value)
    };
    result("probe-up", Duration::from_secs(200))
        .context("the page never saw the guest's server listening")?;
    let mut both: [Figures; 2] = Default::default();
    for (i, (step, path)) in [("bench-", "fetchGuest"), ("bench-preview-", "preview")]
        .into_iter()
        .enumerate()
    {
        if path == "preview" {
            if let Err(e) = result("bench-preview-start", PAGE_STEP) {
                eprintln!("xtask bench inbound: the preview did not start: {e:#}");
                notes.push(format!(
                    "preview: did not start: {}",
                    one_line(&format!("{e:#}"))
                ));
                break;
            }
        }
        let figures = &mut both[i];
        let mut note = |what: &str, e: anyhow::Error| {
            eprintln!("xtask bench inbound: {path}: {what} failed: {e:#}");
            notes.push(format!("{path}: {what}: {}", one_line(&format!("{e:#}"))));
        };
        match result(&format!("{step}download"), PAGE_STEP)
            .and_then(|v| page_downloads(&v, &expected.download_sha))
        {
            Ok(mbps) => figures.download = Some(mbps),
            Err(e) => note("download", e),
        }
        match result(&format!("{step}upload"), PAGE_STEP)
            .and_then(|v| page_upload(&v, &expected.upload_sha))
        {
            Ok((mbps, chunks)) => {
                figures.upload = Some(mbps);
                figures.upload_chunks = chunks;
            }
            Err(e) => note("upload", e),
        }
        match result(&format!("{step}requests"), PAGE_STEP).and_then(|v| page_requests(&v)) {
            Ok(times) => {
                figures.request_ms = Some(median(&times));
                figures.request_p90_ms = Some(percentile(&times, 90.0));
            }
            Err(e) => note("requests", e),
        }
        report(path, figures);
    }
    if let Some((_, errors)) = board.get("page-error") {
        notes.push(format!("browser: the page reported: {}", one_line(&errors)));
    }
    drop(server);
    drop(guest);
    drop(route);
    let [fetch_guest, preview] = both;
    Ok((fetch_guest, preview))
}

/// The page's downloads, each checked (status, length, sha256): their median MB/s.
fn page_downloads(v: &Value, sha: &str) -> Result<f64> {
    let runs = v["runs"].as_array().context("no runs")?;
    let mut speeds = Vec::new();
    for run in runs {
        if run["status"] != 200 || run["bytes"] != DOWNLOAD || run["sha256"] != sha {
            bail!(
                "status {}, {} bytes, sha256 {}: want 200, {DOWNLOAD}, {sha}",
                run["status"],
                run["bytes"],
                run["sha256"]
            );
        }
        let ms = run["elapsedMs"].as_f64().context("no elapsedMs")?;
        speeds.push(mb_per_s(DOWNLOAD as u64, ms / 1e3));
    }
    if speeds.len() != DOWNLOADS {
        bail!("{} downloads reported, want {DOWNLOADS}", speeds.len());
    }
    Ok(median(&speeds))
}

/// The page's upload, checked by the server's answer: MB/s and the chunks it arrived in.
fn page_upload(v: &Value, sha: &str) -> Result<(f64, Option<u64>)> {
    let answer = v["answer"].as_str().unwrap_or("");
    let want = format!("POST {UPLOAD} {sha}");
    if v["status"] != 200 || !answer.starts_with(&want) {
        bail!(
            "status {}, the server answered {answer:?}: want 200 and {want:?}",
            v["status"]
        );
    }
    let chunks = answer
        .strip_prefix(&want)
        .and_then(|rest| rest.trim().strip_prefix("in "))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok());
    let ms = v["elapsedMs"].as_f64().context("no elapsedMs")?;
    Ok((mb_per_s(UPLOAD as u64, ms / 1e3), chunks))
}

/// The page's request times (ms), every one answered 200 with the small file.
fn page_requests(v: &Value) -> Result<Vec<f64>> {
    let times: Vec<f64> = v["times"]
        .as_array()
        .context("no times")?
        .iter()
        .filter_map(Value::as_f64)
        .collect();
    if times.len() != REQUESTS || v["bytes"] != REQUESTS * SMALL {
        bail!(
            "{} times and {} bytes, want {REQUESTS} and {}",
            times.len(),
            v["bytes"],
            REQUESTS * SMALL
        );
    }
    Ok(times)
}

/// The table, its text and the results.json entries (each named `<column prefix>/<row>`,
/// with the direct path's figure as its reference).
fn markdown(
    columns: &[Column],
    notes: &[String],
    load_before: Option<f64>,
    load_after: Option<f64>,
) -> (String, Vec<Value>) {
    let machine = Machine::detect();
    // The section's own processes count in the second figure; the first is taken before any
    // of them started (the builds are done by then).
    let load = match (load_before, load_after) {
        (Some(a), Some(b)) => format!(
            " Load average (1 min) {a:.1} when the measurements started and {b:.1} when they \
             ended{}.",
            if a >= 1.0 {
                ": **the machine was shared with other jobs** (expect ±20–30 % between runs)"
            } else {
                ""
            }
        ),
        _ => String::new(),
    };
    let chunks = columns
        .iter()
        .filter_map(|c| {
            c.figures
                .upload_chunks
                .map(|n| format!("{n} ({})", c.title))
        })
        .collect::<Vec<_>>()
        .join(", ");
    let mut md = format!(
        "{HEADING}\n\n`cargo xtask bench inbound` on {}, {} × {}.{load} One server: a Python \
         HTTP/1.1 server (`http.server`, keep-alive, TCP_NODELAY, POST answering the body's \
         length and sha256), the same script and files on every path. **direct**: it runs on \
         the host's loopback and curl on the host reaches it. **forward**: it runs in a \
         network namespace guest behind the native runner (`bench-native` build, TAP), curl on \
         the host reaches it through `--forward PORT=8000`. **browser**: it runs in the same \
         kind of guest behind `NetProxy` on a headless Chromium page (dist/ as built by \
         `build-wasm`), the guest's frames crossing the TAP-to-WebSocket bridge as in `e2e \
         --browser inbound`; the page reaches it with `fetchGuest` (**fetchGuest**) and with \
         its own `fetch()` of `/guest/8000/…` through `guest-sw.js` and `guest-preview.js`, \
         which call `fetchGuest` in the page (**preview**). The three run one after the other \
         in one run.\n\n\
         Downloads: {} MiB, the median of {DOWNLOADS}, sha256-checked (curl into sha256sum; \
         the page hashes the body after reading it whole, outside the time). Upload: {} MiB \
         POSTed, the server's sha256 checked; curl sends `Content-Length`, the page a `Blob` \
         body, which `fetchGuest` sends chunked: a `Request`'s body is a stream of unknown \
         length and more than the 64 KiB `fetchGuest` reads ahead to find one (the server \
         read it in {} chunks). Requests: {REQUESTS} GETs of a {SMALL}-byte file one after \
         the other on one keep-alive connection (curl's URL sequence; in the page, \
         `fetchGuest` keeps the connection for reuse), median and 90th percentile. Times are \
         curl's `time_total`, in the page `performance.now()` from the call until the body \
         has been read. Ratios are against direct.\n\n",
        machine.date,
        machine.cpus,
        machine.cpu_model,
        DOWNLOAD / MIB,
        UPLOAD / MIB,
        if chunks.is_empty() {
            "–".to_string()
        } else {
            chunks
        },
    );
    md.push_str("| Metric |");
    for c in columns {
        md.push_str(&format!(" {} |", c.title));
    }
    md.push_str("\n|---|");
    for _ in columns {
        md.push_str("---:|");
    }
    md.push('\n');
    type Get = fn(&Figures) -> Option<f64>;
    let rows: [(&str, String, &str, bool, Get); 4] = [
        (
            "download/64m",
            format!("Download {} MiB from the guest", DOWNLOAD / MIB),
            "MB/s",
            true,
            |f| f.download,
        ),
        (
            "upload/16m",
            format!("Upload (POST) {} MiB to the guest", UPLOAD / MIB),
            "MB/s",
            true,
            |f| f.upload,
        ),
        (
            "requests/keepalive",
            "Small request on a keep-alive connection, median".into(),
            "ms",
            false,
            |f| f.request_ms,
        ),
        (
            "requests/keepalive_p90",
            "Small request on a keep-alive connection, 90th percentile".into(),
            "ms",
            false,
            |f| f.request_p90_ms,
        ),
    ];
    let mut entries = Vec::new();
    for (key, label, unit, higher_is_better, get) in rows {
        let direct = get(&columns[0].figures);
        md.push_str(&format!("| {label} |"));
        for (i, c) in columns.iter().enumerate() {
            let Some(v) = get(&c.figures) else {
                md.push_str(" – |");
                continue;
            };
            let ratio = match direct {
                Some(d) if i > 0 && d > 0.0 => format!(" ({:.2}×)", v / d),
                _ => String::new(),
            };
            md.push_str(&format!(" {v:.2} {unit}{ratio} |"));
            if i > 0 {
                entries.push(json!({
                    "name": format!("{}/{key}", c.prefix),
                    "unit": unit,
                    "value": v,
                    "reference": direct,
                    "reference_name": format!("{}/{key}", columns[0].prefix),
                    "higher_is_better": higher_is_better,
                }));
            }
        }
        md.push('\n');
    }
    if !notes.is_empty() {
        md.push_str("\nNot measured in this run:\n\n");
        for n in notes {
            md.push_str(&format!("- {n}\n"));
        }
    }
    md.push('\n');
    (md, entries)
}

/// The 1-minute load average, when /proc says it.
fn load_average() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// An error's first line, and its last when there are more (for the document).
fn one_line(s: &str) -> String {
    let mut lines = s.lines().map(str::trim).filter(|l| !l.is_empty());
    let first: String = lines.next().unwrap_or("").chars().take(200).collect();
    match lines.next_back() {
        Some(last) => format!("{first} … {}", last.chars().take(200).collect::<String>()),
        None => first,
    }
}

/// Prints a path's figures as they are measured.
fn report(path: &str, figures: &Figures) {
    for (what, v) in [
        ("download MB/s", figures.download),
        ("upload MB/s", figures.upload),
        ("request ms, median", figures.request_ms),
        ("request ms, p90", figures.request_p90_ms),
    ] {
        eprintln!("xtask bench inbound: {path}: {what} {v:?}");
    }
}

/// Waits until something accepts on the host's `port`.
fn wait_listening(port: u16) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline {
            bail!("nothing listens on 127.0.0.1:{port}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

/// The three workloads against `base` with curl on the host; a failed one is noted and left
/// empty.
fn measure(base: &str, expected: &Expected, notes: &mut Vec<String>, path: &str) -> Figures {
    let mut figures = Figures::default();
    let mut note = |what: &str, e: anyhow::Error| {
        eprintln!("xtask bench inbound: {path} ({base}): {what} failed: {e:#}");
        notes.push(format!("{path}: {what}: {}", one_line(&format!("{e:#}"))));
    };
    let mut speeds = Vec::new();
    for _ in 0..DOWNLOADS {
        match download(base, &expected.download_sha, &expected.scratch) {
            Ok(secs) => speeds.push(mb_per_s(DOWNLOAD as u64, secs)),
            Err(e) => note("download", e),
        }
    }
    if !speeds.is_empty() {
        figures.download = Some(median(&speeds));
    }
    match post(base, &expected.upload_file, &expected.upload_sha) {
        Ok(secs) => figures.upload = Some(mb_per_s(UPLOAD as u64, secs)),
        Err(e) => note("upload", e),
    }
    match requests(base) {
        Ok(times) => {
            figures.request_ms = Some(median(&times));
            figures.request_p90_ms = Some(percentile(&times, 90.0));
        }
        Err(e) => note("requests", e),
    }
    report(path, &figures);
    figures
}

/// Runs a shell pipeline with a time limit; its stdout.
fn sh(script: &str) -> Result<String> {
    let out = Command::new("timeout")
        .args(["--kill-after=2", "120", "sh", "-c", script])
        .env_remove("http_proxy")
        .env_remove("HTTP_PROXY")
        .output()
        .context("running curl")?;
    if !out.status.success() {
        bail!(
            "`{script}` failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// One download hashed in a pipe: seconds (curl's `time_total`, written to `scratch`).
fn download(base: &str, expected: &str, scratch: &Path) -> Result<f64> {
    let time = scratch.join("time");
    let out = sh(&format!(
        "curl -sS --noproxy '*' -w '%{{stderr}}%{{time_total}}' {base}/{DOWNLOAD_FILE} 2>{} | sha256sum",
        time.display()
    ))?;
    let sha = out.split_whitespace().next().context("no sha256")?;
    let time = std::fs::read_to_string(&time)?;
    if sha != expected {
        bail!("sha256 {sha}, expected {expected} (curl: {time})");
    }
    time.trim().parse::<f64>().context("curl's time")
}

/// One POST whose sha256 the server reports: seconds.
fn post(base: &str, file: &Path, sha: &str) -> Result<f64> {
    let out = sh(&format!(
        "curl -sS --noproxy '*' --data-binary @{} -H 'Content-Type: application/octet-stream' -w ' %{{time_total}}' {base}/upload",
        file.display()
    ))?;
    let want = format!("POST {UPLOAD} {sha}");
    if !out.starts_with(&want) {
        bail!("the server answered {out:?}, expected {want:?}");
    }
    out.split_whitespace()
        .last()
        .context("no time")?
        .parse::<f64>()
        .context("curl's time")
}

/// `REQUESTS` small GETs on one connection: their times in ms.
fn requests(base: &str) -> Result<Vec<f64>> {
    let out = sh(&format!(
        "curl -sS --noproxy '*' -o /dev/null -w '%{{time_total}} %{{http_code}}\\n' '{base}/{SMALL_FILE}?[1-{REQUESTS}]'"
    ))?;
    let times = ok_times_ms(&out);
    if times.len() != REQUESTS {
        bail!("{} of {REQUESTS} requests answered 200: {out}", times.len());
    }
    Ok(times)
}
