//! Section "Into the guest": a server in a real Linux guest reached from the host through the
//! native runner's `--forward`, next to the same server run on the host and reached directly
//! (the direct path). The server is the forward phase's Python one (`http.server` with HTTP/1.1
//! keep-alive, POST answering the body's sha256), started with the same files both times.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::json;

use super::workload::{mb_per_s, median, ok_times_ms};
use super::{publish, Machine};
use crate::e2e::forward::{start_guest_server, GUEST_HTTP, GUEST_SERVER};
use crate::harness::daemon::free_port;
use crate::harness::guest::{Guest, GuestNs, Runner};
use crate::harness::origins::{blob, sha256_hex};
use crate::tools::{ensure_programs, is_root, workspace_root};

const HEADING: &str = "## Into the guest (native --forward)";
const MIB: usize = 1 << 20;
/// Download size, and how many downloads per path (the median is reported).
const DOWNLOAD: usize = 64 * MIB;
const DOWNLOADS: usize = 3;
/// Upload size.
const UPLOAD: usize = 16 * MIB;
/// Small requests per latency run.
const REQUESTS: usize = 100;

/// One path's figures.
#[derive(Default)]
struct Figures {
    download: Option<f64>,
    upload: Option<f64>,
    request_ms: Option<f64>,
}

/// The same server on the host (the direct path), killed when dropped.
struct HostServer(Child);

impl Drop for HostServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Measures both paths and publishes the section.
pub(super) fn section() -> Result<()> {
    if !is_root() {
        bail!("bench inbound needs root (a TAP device and a network namespace)");
    }
    ensure_programs(&[
        ("curl", "curl"),
        ("python3", "python3"),
        ("udhcpc", "udhcpc"),
    ])?;
    let root = workspace_root();
    let binary = super::net::build_runner(&root)?;
    let dir = super::target_dir(&root).join("bench/inbound");
    let _ = std::fs::remove_dir_all(&dir);
    let files = dir.join("files");
    std::fs::create_dir_all(&files)?;
    std::fs::write(files.join("small"), blob(256))?;
    std::fs::write(files.join("download"), blob(DOWNLOAD))?;
    let upload_file = dir.join("upload");
    std::fs::write(&upload_file, blob(UPLOAD))?;
    let expected = sha256_hex(&blob(DOWNLOAD));
    let upload_sha = sha256_hex(&blob(UPLOAD));

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
    let _host = HostServer(child);
    let direct_base = format!("http://127.0.0.1:{direct_port}");
    wait_listening(direct_port)?;
    let direct = measure(&direct_base, &expected, &upload_file, &upload_sha);

    // Through the runner: host port -> guest port 8000.
    let forward_port = free_port()?;
    let args = vec![
        "--forward".to_string(),
        format!("{forward_port}={GUEST_HTTP}"),
    ];
    let tap = format!("c2wbi{}", std::process::id());
    let runner = Runner::start_tap(&binary, &tap, &args, dir.join("runner.log"))?;
    let work = dir.join("work");
    let ns = GuestNs::behind(&format!("c2w-bin-{}", std::process::id()), &tap, &work)?;
    let guest = Guest {
        ns: &ns,
        ca: dir.join("unused-ca.pem"),
        work,
    };
    guest.dhcp().context("the guest's DHCP")?;
    let server = start_guest_server(&guest, &files)?;
    let forward_base = format!("http://127.0.0.1:{forward_port}");
    let forward = measure(&forward_base, &expected, &upload_file, &upload_sha);
    drop(server);
    drop(guest);
    drop(ns);
    drop(runner);

    let forward = forward?;
    let direct = direct?;
    let machine = Machine::detect();
    let mut md = format!(
        "{HEADING}\n\n`cargo xtask bench inbound` on {}, {} × {}: a Python HTTP/1.1 server \
         (`http.server`, keep-alive, POST answering the body's sha256) in a network namespace \
         guest behind the native runner (`bench-native` build, TAP), reached from the host with \
         curl through `--forward PORT=8000`; **direct** is the same server started on the \
         host's loopback. Downloads are sha256-checked (median of {DOWNLOADS}); the upload is \
         checked by the server; requests are {REQUESTS} small GETs on one keep-alive \
         connection (median).\n\n| Metric | direct | forward |\n|---|---:|---:|\n",
        machine.date, machine.cpus, machine.cpu_model
    );
    let mut entries = Vec::new();
    type Get = fn(&Figures) -> Option<f64>;
    let rows: [(&str, &str, &str, Get); 3] = [
        (
            "inbound/download/64m",
            "Download 64 MiB from the guest",
            "MB/s",
            |f| f.download,
        ),
        (
            "inbound/upload/16m",
            "Upload (POST) 16 MiB to the guest",
            "MB/s",
            |f| f.upload,
        ),
        (
            "inbound/requests/keepalive",
            "Small request on a keep-alive connection, median",
            "ms",
            |f| f.request_ms,
        ),
    ];
    for (key, label, unit, get) in rows {
        let (d, f) = (get(&direct), get(&forward));
        let cell = |v: Option<f64>| v.map_or("–".to_string(), |v| format!("{v:.2} {unit}"));
        let ratio = match (d, f) {
            (Some(d), Some(f)) if d > 0.0 => format!(" ({:.2}×)", f / d),
            _ => String::new(),
        };
        md.push_str(&format!("| {label} | {} | {}{ratio} |\n", cell(d), cell(f)));
        if let Some(f) = f {
            entries.push(json!({"name": key, "unit": unit, "value": f, "reference": d}));
        }
    }
    md.push('\n');
    publish(HEADING, &md, entries)
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

/// The three workloads against `base`; a failed one is reported and left empty.
fn measure(base: &str, expected: &str, upload: &Path, upload_sha: &str) -> Result<Figures> {
    let mut figures = Figures::default();
    let mut speeds = Vec::new();
    for _ in 0..DOWNLOADS {
        match download(base, expected, upload.parent().unwrap_or(Path::new("."))) {
            Ok(secs) => speeds.push(mb_per_s(DOWNLOAD as u64, secs)),
            Err(e) => eprintln!("xtask bench inbound: {base}: download failed: {e:#}"),
        }
    }
    if !speeds.is_empty() {
        figures.download = Some(median(&speeds));
    }
    match post(base, upload, upload_sha) {
        Ok(secs) => figures.upload = Some(mb_per_s(UPLOAD as u64, secs)),
        Err(e) => eprintln!("xtask bench inbound: {base}: upload failed: {e:#}"),
    }
    match requests(base) {
        Ok(ms) => figures.request_ms = Some(ms),
        Err(e) => eprintln!("xtask bench inbound: {base}: requests failed: {e:#}"),
    }
    for (what, v) in [
        ("download MB/s", figures.download),
        ("upload MB/s", figures.upload),
        ("request ms", figures.request_ms),
    ] {
        eprintln!("xtask bench inbound: {base}: {what} {v:?}");
    }
    if figures.download.is_none() && figures.upload.is_none() && figures.request_ms.is_none() {
        bail!("nothing could be measured through {base}");
    }
    Ok(figures)
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
        "curl -sS --noproxy '*' -w '%{{stderr}}%{{time_total}}' {base}/download 2>{} | sha256sum",
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

/// `REQUESTS` small GETs on one connection: the median in ms.
fn requests(base: &str) -> Result<f64> {
    let out = sh(&format!(
        "curl -sS --noproxy '*' -o /dev/null -w '%{{time_total}} %{{http_code}}\\n' '{base}/small?[1-{REQUESTS}]'"
    ))?;
    let times = ok_times_ms(&out);
    if times.len() != REQUESTS {
        bail!("{} of {REQUESTS} requests answered 200: {out}", times.len());
    }
    Ok(median(&times))
}
