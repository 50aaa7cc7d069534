//! The WebSocket phase of `cargo xtask e2e`: the native runner carries a real Linux guest's
//! WebSockets with its own client (tokio-tungstenite) to a local echo server, ws and wss
//! ([`WsEcho`]: the HTTPS origin's certificate, trusted with `--trust-ca`). The guest's clients
//! are Debian's python3-websocket through the proxy variables and python3-websockets in
//! transparent mode; the checks are in [`super::websocket_checks`], shared with the browser's
//! WebSocket phase. `--stats-file` gives the counters.

use anyhow::{bail, Context, Result};
use serde_json::Value;

use super::websocket_checks::{self, Front, WsEnv, DEBIAN_PYTHON};
use crate::harness::guest::{build_runner, Guest, GuestNs, Runner};
use crate::harness::origins::{OriginFiles, WsEcho};
use crate::report::Report;
use crate::tools::{ensure_programs, workspace_root};

/// The programs and Python modules the guest's clients need (Debian packages).
pub const GUEST_CLIENTS: [(&str, &str); 4] = [
    (DEBIAN_PYTHON, "python3"),
    ("curl", "curl"),
    (
        "/usr/lib/python3/dist-packages/websocket/__init__.py",
        "python3-websocket",
    ),
    (
        "/usr/lib/python3/dist-packages/websockets/__init__.py",
        "python3-websockets",
    ),
];

/// Runs the phase (its own echo server, runner, guest and directory); `filter` keeps only
/// checks whose name contains it (DHCP always runs).
pub fn run(filter: Option<String>) -> Result<()> {
    ensure_programs(&GUEST_CLIENTS)?;
    ensure_programs(&[("udhcpc", "udhcpc")])?;
    let binary = build_runner()?;
    let dir = workspace_root().join("target/e2e-websocket");
    std::fs::create_dir_all(&dir)?;
    let files = OriginFiles::create(&dir.join("origin")).context("creating the origin's files")?;
    let echo = WsEcho::start(&files).context("starting the WebSocket echo server")?;
    let stats = dir.join("stats.json");
    let _ = std::fs::remove_file(&stats);
    let proxy_ca = dir.join("proxy-ca.pem");
    let _ = std::fs::remove_file(&proxy_ca);
    let mut args = Runner::base_args(&files.ca_cert, &proxy_ca);
    args.extend([
        "--stats-file".into(),
        stats.display().to_string(),
        "--timeout".into(),
        "20s".into(),
    ]);
    for (name, base) in websocket_checks::rewrites(&echo) {
        args.push("--rewrite".into());
        args.push(format!("{name}={base}"));
    }
    let id = std::process::id();
    let tap = format!("c2ww{id}");
    let mut runner = Runner::start_tap(&binary, &tap, &args, dir.join("runner.log"))?;
    let work = dir.join("work");
    let ns = GuestNs::behind(&format!("c2w-ws-{id}"), &tap, &work)?;
    let guest = Guest {
        ns: &ns,
        ca: proxy_ca,
        work,
    };
    let mut r = Report::filtered(filter);
    r.check("dhcp (websocket): udhcpc gets a lease", || guest.dhcp());
    // The runner rewrites its stats file every 500 ms.
    let read_stats = || -> Result<Value> {
        let text = std::fs::read_to_string(&stats)
            .with_context(|| format!("reading {}", stats.display()))?;
        Ok(serde_json::from_str(&text)?)
    };
    let env = WsEnv {
        guest: &guest,
        echo: &echo,
        stats: &read_stats,
        front: Front::Native,
    };
    websocket_checks::run(&mut r, "websocket", &env);
    r.check("runner (websocket): still running", || {
        if runner.is_running() {
            Ok("alive".into())
        } else {
            bail!("the runner exited: {}", runner.log_tail())
        }
    });
    drop(guest);
    drop(ns);
    drop(runner);
    drop(echo);
    r.finish("e2e websocket")
}
