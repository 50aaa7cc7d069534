//! Section "Guest WebSockets": a guest's WebSocket carried by the native runner (the proxy
//! opens its own client connection to the server, tokio-tungstenite, and bridges messages),
//! next to the same client on the host talking to the same echo server directly. The client is
//! the e2e phase's (`ws_client.py`, Debian's python3-websocket; in the guest through
//! `http_proxy`, a CONNECT tunnel to port 80); the server is the e2e phase's echo server.

use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use super::{publish, Machine};
use crate::e2e::websocket_checks::{rewrites, CLIENT, DEBIAN_PYTHON, WS_NAME};
use crate::harness::guest::{text, Guest, GuestNs, Runner, PROXY};
use crate::harness::origins::{OriginFiles, WsEcho};
use crate::tools::{ensure_programs, is_root, workspace_root};

const HEADING: &str = "## Guest WebSockets (native)";
/// Sequential round trips of a small message.
const ROUND_TRIPS: usize = 2000;
const SMALL: usize = 32;
/// Sequential echoes of a large message.
const LARGE_COUNT: usize = 32;
const LARGE: usize = 1 << 20;

/// What one path measured.
struct Figures {
    round_trips_per_s: f64,
    large_mb_s: f64,
}

/// Measures both paths and publishes the section.
pub(super) fn section() -> Result<()> {
    if !is_root() {
        bail!("bench websocket needs root (a TAP device and a network namespace)");
    }
    ensure_programs(&crate::e2e::websocket::GUEST_CLIENTS)?;
    ensure_programs(&[("udhcpc", "udhcpc")])?;
    let root = workspace_root();
    let binary = super::net::build_runner(&root)?;
    let dir = super::target_dir(&root).join("bench/websocket");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let files = OriginFiles::create(&dir.join("origin")).context("creating the origin's files")?;
    let echo = WsEcho::start(&files).context("starting the WebSocket echo server")?;
    let script = dir.join("ws_client.py");
    std::fs::write(&script, CLIENT)?;

    // Direct: the same client on the host, to the echo server's own address.
    let direct_url = echo.ws_base().replacen("http://", "ws://", 1);
    let direct = measure(
        |args| {
            let mut cmd = std::process::Command::new("timeout");
            cmd.args(["--kill-after=2", "300", DEBIAN_PYTHON])
                .arg(&script)
                .arg("websocket-client")
                .args(args)
                .env_remove("http_proxy")
                .env_remove("HTTP_PROXY");
            let out = cmd.output().context("running the client on the host")?;
            json_line(&out)
        },
        &direct_url,
    );

    // Through the runner: the guest's client via http_proxy, the runner's own client onwards.
    let proxy_ca = dir.join("proxy-ca.pem");
    let mut args: Vec<String> = vec![
        "--ca-cert-out".into(),
        proxy_ca.display().to_string(),
        "--allow".into(),
        "loopback".into(),
    ];
    for (name, base) in rewrites(&echo) {
        args.push("--rewrite".into());
        args.push(format!("{name}={base}"));
    }
    let id = std::process::id();
    let tap = format!("c2wbw{id}");
    let runner = Runner::start_tap(&binary, &tap, &args, dir.join("runner.log"))?;
    let work = dir.join("work");
    let ns = GuestNs::behind(&format!("c2w-bws-{id}"), &tap, &work)?;
    let guest = Guest {
        ns: &ns,
        ca: proxy_ca,
        work,
    };
    guest.dhcp().context("the guest's DHCP")?;
    let proxied = measure(
        |args| {
            let quoted: Vec<String> = args.iter().map(|a| format!("'{a}'")).collect();
            let line = format!(
                "http_proxy={PROXY} PROXY_CA={} {DEBIAN_PYTHON} {} websocket-client {}",
                guest.ca.display(),
                script.display(),
                quoted.join(" ")
            );
            let out = guest
                .ns
                .output_within(&["sh", "-c", &line], Duration::from_secs(300))?;
            json_line(&out)
        },
        &format!("ws://{WS_NAME}"),
    );
    drop(guest);
    drop(ns);
    drop(runner);
    drop(echo);
    let (direct, proxied) = (direct?, proxied?);

    let machine = Machine::detect();
    let mut md = format!(
        "{HEADING}\n\n`cargo xtask bench websocket` on {}, {} × {}: Debian's python3-websocket \
         (websocket-client) against a tungstenite echo server on loopback. **direct**: the \
         client on the host. **runner**: the client in a network namespace guest behind the \
         native runner (`bench-native` build), through `http_proxy` (a CONNECT tunnel to port \
         80); the runner completes the guest's handshake only once its own tokio-tungstenite \
         connection to the server is open and carries each message across. Round trips: \
         {ROUND_TRIPS} messages of {SMALL} bytes, each sent once the previous came back. \
         Large: {LARGE_COUNT} messages of 1 MiB, each echoed before the next (MB/s counts both \
         ways).\n\n| Metric | direct | runner |\n|---|---:|---:|\n",
        machine.date, machine.cpus, machine.cpu_model
    );
    md.push_str(&format!(
        "| Round trips per second ({SMALL}-byte messages) | {:.0} | {:.0} ({:.2}×) |\n",
        direct.round_trips_per_s,
        proxied.round_trips_per_s,
        proxied.round_trips_per_s / direct.round_trips_per_s
    ));
    md.push_str(&format!(
        "| 1 MiB messages echoed, MB/s | {:.1} | {:.1} ({:.2}×) |\n\n",
        direct.large_mb_s,
        proxied.large_mb_s,
        proxied.large_mb_s / direct.large_mb_s
    ));
    let entries = vec![
        json!({"name": "websocket/round_trips", "unit": "1/s",
               "value": proxied.round_trips_per_s, "reference": direct.round_trips_per_s}),
        json!({"name": "websocket/1mib", "unit": "MB/s",
               "value": proxied.large_mb_s, "reference": direct.large_mb_s}),
    ];
    publish(HEADING, &md, entries)
}

/// The last stdout line of a client run, as JSON; fails with the output when the run failed.
fn json_line(out: &std::process::Output) -> Result<Value> {
    if !out.status.success() {
        bail!("the client failed ({}): {}", out.status, text(out));
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let last = stdout.lines().last().unwrap_or("");
    serde_json::from_str(last).with_context(|| format!("not JSON: {}", text(out)))
}

/// Runs both workloads with `run` (the client's arguments after the library) against `base`.
fn measure(run: impl Fn(&[&str]) -> Result<Value>, base: &str) -> Result<Figures> {
    let timed = |size: usize, count: usize| -> Result<f64> {
        let url = format!("{base}/bench?tag=bench-{size}");
        let v = run(&["timed", &url, &count.to_string(), &size.to_string()])?;
        if v.get("echoed").and_then(Value::as_bool) != Some(true) {
            bail!("{url}: the echoes differ: {v}");
        }
        v.get("seconds")
            .and_then(Value::as_f64)
            .with_context(|| format!("{url}: no time: {v}"))
    };
    let small = timed(SMALL, ROUND_TRIPS)?;
    let large = timed(LARGE, LARGE_COUNT)?;
    let figures = Figures {
        round_trips_per_s: ROUND_TRIPS as f64 / small.max(1e-6),
        large_mb_s: (2 * LARGE * LARGE_COUNT) as f64 / 1e6 / large.max(1e-6),
    };
    eprintln!(
        "xtask bench websocket: {base}: {:.0} round trips/s, {:.1} MB/s with 1 MiB messages",
        figures.round_trips_per_s, figures.large_mb_s
    );
    Ok(figures)
}
