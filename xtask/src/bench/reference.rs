//! References for the network benchmark that involve no network stack, so the stacks' own
//! cost can be told apart from the plumbing around them:
//!
//! - the TAP-to-WebSocket bridge alone: a peer (a headless Chromium page, `echo.html`, or
//!   node, `bench/scripts/echo.mjs`) echoes every IPv4/UDP frame back with addresses and ports
//!   swapped, and the guest (`bench/scripts/udp_echo.py`) measures round trip and throughput;
//! - container2wasm's relay alone: `relay-bench.html` relays like `c2w.html` between a sink/
//!   source standing in for the VM and a synthetic worker that sends and receives 4 KiB at a
//!   time as fast as it can.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::Value;

use super::routes::Origins;
use crate::harness::bridge::Bridge;
use crate::harness::browser::launch::{Browser, Kind, LaunchSpec};
use crate::harness::browser::page_server::PageServer;
use crate::harness::cleanup::{self, Action};
use crate::harness::guest::{text, GuestNs};
use crate::tools::{ensure_programs, workspace_root};

/// One measured reference figure.
#[derive(Debug, Clone, PartialEq)]
pub struct Figure {
    /// Stable key for results.json, e.g. `bridge-echo/chromium/payload`.
    pub key: String,
    /// Human label for the table.
    pub label: String,
    /// The value.
    pub value: f64,
    /// `MB/s`, `frames/s`, `%`, `µs`, `requests/s`.
    pub unit: &'static str,
    /// Whether a higher value is better.
    pub higher_is_better: bool,
}

impl Figure {
    fn new(key: String, label: String, value: f64, unit: &'static str, higher: bool) -> Self {
        Self {
            key,
            label,
            value,
            unit,
            higher_is_better: higher,
        }
    }
}

/// UDP payload per datagram: a full 1500-byte IPv4 packet.
const DATAGRAM: usize = 1472;
/// Datagrams in flight during the throughput phase.
const WINDOW: usize = 128;
/// The guest's static address and the echo peer's (nothing answers ARP behind the bridge, so
/// the peer gets a permanent neighbour entry).
const GUEST_IP: &str = "10.213.0.2";
const PEER_IP: &str = "10.213.0.1";
const PEER_MAC: &str = "52:54:00:c2:00:01";
const ECHO_PORT: &str = "9000";

/// Who echoes the frames on the far side of the bridge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EchoPeer {
    /// `xtask/bench/pages/echo.html` in headless Chromium (the browser paths' far side).
    Chromium,
    /// `xtask/bench/scripts/echo.mjs` in node (node's WebSocket client).
    Node,
}

impl EchoPeer {
    /// `chromium` / `node`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Chromium => "chromium",
            Self::Node => "node",
        }
    }
}

/// What keeps an echo peer alive; dropped (and so stopped) before the bridge.
enum PeerProcess {
    Browser {
        /// Held until the peer stops.
        _browser: Browser,
    },
    Node {
        child: Child,
        action: Action,
    },
}

impl Drop for PeerProcess {
    fn drop(&mut self) {
        if let Self::Node { child, action } = self {
            cleanup::run_one(action);
            let _ = child.wait();
        }
    }
}

/// The bridge alone: a guest namespace on a bridge whose far side is `peer`, echoing. Sends
/// [`DATAGRAM`]-byte UDP datagrams for `seconds` with [`WINDOW`] in flight, after 200 single
/// round trips. `pages` must be the bench's [`page_server`](super::page_server) (only used for
/// [`EchoPeer::Chromium`]).
/// Figures: echoed payload MB/s, echoed datagrams/s, loss %, median round trip µs.
pub fn bridge_echo(
    peer: EchoPeer,
    origins: &Origins,
    pages: &PageServer,
    dir: &Path,
    seconds: f64,
) -> Result<Vec<Figure>> {
    ensure_programs(&[("/usr/bin/python3", "python3")])?;
    let name = peer.name();
    let id = std::process::id();
    let tap = format!("c2we{}{}", name.len(), id % 1_000_000);
    let bridge = Bridge::start(&tap)?;
    let work = dir.join(format!("echo-{name}-work"));
    let ns = GuestNs::behind(&format!("c2w-bench-echo-{name}-{id}"), &tap, &work)?;
    let process = start_echo_peer(peer, origins, pages, dir, bridge.port)?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while bridge.clients() == 0 {
        if Instant::now() > deadline {
            bail!("the {name} echo peer did not connect to the bridge");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    for args in [
        vec!["ip", "addr", "add", &format!("{GUEST_IP}/24"), "dev", &tap],
        vec![
            "ip",
            "neigh",
            "replace",
            PEER_IP,
            "lladdr",
            PEER_MAC,
            "nud",
            "permanent",
            "dev",
            &tap,
        ],
    ] {
        ns.run(&args)?;
    }
    let script = workspace_root().join("xtask/bench/scripts/udp_echo.py");
    let out = ns.output_within(
        &[
            "/usr/bin/python3",
            &script.display().to_string(),
            PEER_IP,
            ECHO_PORT,
            &DATAGRAM.to_string(),
            &WINDOW.to_string(),
            &seconds.to_string(),
        ],
        Duration::from_secs_f64(seconds + 120.0),
    )?;
    let summary = bridge.summary();
    drop(process);
    drop(bridge);
    drop(ns);
    if !out.status.success() {
        bail!("udp_echo.py failed: {}\n{summary}", text(&out));
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let report: Value = serde_json::from_str(stdout.trim())
        .with_context(|| format!("udp_echo.py printed {stdout:?}; {summary}"))?;
    echo_figures(name, &report).with_context(|| format!("{report}; {summary}"))
}

fn start_echo_peer(
    peer: EchoPeer,
    origins: &Origins,
    pages: &PageServer,
    dir: &Path,
    port: u16,
) -> Result<PeerProcess> {
    match peer {
        EchoPeer::Chromium => {
            pages.board.clear();
            let url = format!("{}/echo.html?ws={port}", pages.base);
            let spec = LaunchSpec {
                dir: &dir.join("echo-chromium"),
                origin_cert: &origins.server_cert,
                origin_ca: &origins.ca,
            };
            let browser = Browser::start(Kind::Chromium, &url, &spec)?;
            if let Err(e) = pages.board.wait("ready", 0, Duration::from_secs(60)) {
                bail!("{e:#}\n--- browser log ---\n{}", browser.log_tail(25));
            }
            Ok(PeerProcess::Browser { _browser: browser })
        }
        EchoPeer::Node => {
            ensure_programs(&[("node", "nodejs")])?;
            let log = dir.join("echo-node.log");
            let log_file = std::fs::File::create(&log)?;
            let child = Command::new("node")
                .arg("--experimental-websocket")
                .arg(workspace_root().join("xtask/bench/scripts/echo.mjs"))
                .arg(format!("ws://127.0.0.1:{port}"))
                .stdin(Stdio::null())
                .stdout(log_file.try_clone()?)
                .stderr(log_file)
                .spawn()
                .context("starting node for the echo peer")?;
            let action = cleanup::register(Action::Kill(child.id()));
            Ok(PeerProcess::Node { child, action })
        }
    }
}

/// Turns udp_echo.py's report into figures; fails when echoes were corrupted or none came.
fn echo_figures(name: &str, report: &Value) -> Result<Vec<Figure>> {
    let num = |k: &str| report.get(k).and_then(Value::as_f64);
    let (Some(sent), Some(received), Some(bad)) = (num("sent"), num("received"), num("bad")) else {
        bail!("incomplete report");
    };
    if bad > 0.0 {
        bail!("{bad} echoed datagrams differed from what was sent");
    }
    if received <= 0.0 {
        bail!("no datagram came back");
    }
    let key = |what: &str| format!("bridge-echo/{name}/{what}");
    let what = format!("Bridge alone ({name} echoes), {DATAGRAM}-byte UDP datagrams");
    let mut figures = vec![
        Figure::new(
            key("payload"),
            format!("{what}, {WINDOW} in flight: payload echoed"),
            num("payload_mb_per_s").unwrap_or(0.0),
            "MB/s",
            true,
        ),
        Figure::new(
            key("frames"),
            format!("{what}, {WINDOW} in flight: frames echoed"),
            num("datagrams_per_s").unwrap_or(0.0),
            "frames/s",
            true,
        ),
        Figure::new(
            key("loss"),
            format!("{what}, {WINDOW} in flight: lost"),
            (sent - received).max(0.0) / sent.max(1.0) * 100.0,
            "%",
            false,
        ),
    ];
    if let Some(rtt) = num("rtt_median_us") {
        figures.push(Figure::new(
            key("rtt"),
            format!("{what}, one in flight: round trip, median"),
            rtt,
            "µs",
            false,
        ));
    }
    Ok(figures)
}

/// container2wasm's relay alone: `relay-bench.html` in headless Chromium, each phase
/// (`send`, `recv`, `both`) running `ms` milliseconds. `pages` must be the bench's
/// [`page_server`](super::page_server).
/// Figures: MB/s through the relay per phase (`both` counts both directions), and requests/s
/// in the `both` phase.
pub fn relay_alone(
    origins: &Origins,
    pages: &PageServer,
    dir: &Path,
    ms: u64,
) -> Result<Vec<Figure>> {
    pages.board.clear();
    let url = format!("{}/relay-bench.html?ms={ms}", pages.base);
    let spec = LaunchSpec {
        dir: &dir.join("relay-chromium"),
        origin_cert: &origins.server_cert,
        origin_ca: &origins.ca,
    };
    let browser = Browser::start(Kind::Chromium, &url, &spec)?;
    let limit = Duration::from_millis(3 * ms) + Duration::from_secs(90);
    let (_, result) = match pages.board.wait("result", 0, limit) {
        Ok(v) => v,
        Err(e) => bail!("{e:#}\n--- browser log ---\n{}", browser.log_tail(25)),
    };
    drop(browser);
    let phases: Vec<Value> =
        serde_json::from_str(&result).with_context(|| format!("relay-bench result {result:?}"))?;
    relay_figures(&phases).with_context(|| format!("relay-bench result {result}"))
}

/// Turns the page's phases into figures, checking that the sink got every frame sent.
fn relay_figures(phases: &[Value]) -> Result<Vec<Figure>> {
    const FRAME: f64 = 1514.0;
    let mut figures = Vec::new();
    for phase in phases {
        let name = phase["name"].as_str().unwrap_or("");
        if name == "error" {
            bail!("the synthetic worker failed: {}", phase["error"]);
        }
        let num = |k: &str| phase[k].as_f64().unwrap_or(0.0);
        let (sent, received, ms) = (num("bytesSent"), num("bytesReceived"), num("ms"));
        if num("badFrames") > 0.0 || num("sinkFrames") * (FRAME + 4.0) != sent {
            bail!(
                "phase {name}: the sink got {} frames for {sent} bytes sent",
                num("sinkFrames")
            );
        }
        if ms <= 0.0 || sent + received <= 0.0 {
            bail!("phase {name}: nothing moved");
        }
        let seconds = ms / 1e3;
        let (label, key) = match name {
            "send" => ("worker -> relay (send, towards the VM)", "send"),
            "recv" => ("relay -> worker (recv, from the VM)", "recv"),
            "both" => ("both directions alternating, aggregate", "both"),
            other => bail!("unknown phase {other}"),
        };
        figures.push(Figure::new(
            format!("relay-alone/{key}"),
            format!("container2wasm relay alone, synthetic worker, 4 KiB requests: {label}"),
            (sent + received) / 1e6 / seconds,
            "MB/s",
            true,
        ));
        if key == "both" {
            figures.push(Figure::new(
                "relay-alone/requests".into(),
                "container2wasm relay alone: requests answered per second (both directions)".into(),
                num("requests") / seconds,
                "requests/s",
                true,
            ));
        }
    }
    if figures.is_empty() {
        bail!("no phases reported");
    }
    Ok(figures)
}

/// The directory [`page_server`](super::page_server) needs as its last root when only the
/// pages are served (for tests).
#[cfg(test)]
fn empty_dist(dir: &Path) -> Result<std::path::PathBuf> {
    crate::tools::fresh_dir(&dir.join("empty-dist"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::harness::origins::OriginFiles;

    #[test]
    fn relay_figures_check_the_sink() {
        let ok = serde_json::json!([
            {"name": "send", "requests": 10, "bytesSent": 1518.0 * 27.0, "bytesReceived": 0,
             "ms": 1000.0, "sinkFrames": 27, "badFrames": 0},
            {"name": "both", "requests": 20, "bytesSent": 1518.0, "bytesReceived": 4096,
             "ms": 500.0, "sinkFrames": 1, "badFrames": 0},
        ]);
        let figures = relay_figures(ok.as_array().unwrap()).unwrap();
        assert_eq!(figures.len(), 3);
        assert_eq!(figures[0].key, "relay-alone/send");
        assert!((figures[0].value - 1518.0 * 27.0 / 1e6).abs() < 1e-9);
        assert!((figures[1].value - (1518.0 + 4096.0) / 1e6 / 0.5).abs() < 1e-9);
        assert_eq!(figures[2].value, 40.0);
        let short = serde_json::json!([
            {"name": "send", "requests": 10, "bytesSent": 4096, "bytesReceived": 0,
             "ms": 1000.0, "sinkFrames": 2, "badFrames": 0},
        ]);
        assert!(relay_figures(short.as_array().unwrap()).is_err());
    }

    #[test]
    fn echo_figures_reject_corruption() {
        let report = serde_json::json!({"sent": 100, "received": 90, "bad": 0,
            "payload_mb_per_s": 5.0, "datagrams_per_s": 3000.0, "rtt_median_us": 120.0});
        let figures = echo_figures("node", &report).unwrap();
        assert_eq!(figures[2].value, 10.0);
        assert_eq!(figures[3].unit, "µs");
        let bad = serde_json::json!({"sent": 100, "received": 90, "bad": 1});
        assert!(echo_figures("node", &bad).is_err());
    }

    /// Measures both references (root, node, Chromium):
    /// `cargo test -p xtask --profile bench-tools -- --ignored references`
    #[test]
    #[ignore = "needs root, node and Chromium"]
    fn references_measure() -> Result<()> {
        let _guard = cleanup::Guard;
        let root = workspace_root();
        let dir = root.join("target/bench/reference-test");
        std::fs::create_dir_all(&dir)?;
        let files = OriginFiles::create(&dir.join("origin"))?;
        let origins = Origins::start(&files)?;
        let pages = super::super::page_server(&empty_dist(&dir)?, "{}".into())?;
        let mut all = Vec::new();
        for peer in [EchoPeer::Node, EchoPeer::Chromium] {
            all.extend(bridge_echo(peer, &origins, &pages, &dir, 3.0)?);
        }
        all.extend(relay_alone(&origins, &pages, &dir, 2000)?);
        for f in &all {
            eprintln!("{:<100} {:>12.2} {}", f.label, f.value, f.unit);
        }
        Ok(())
    }
}
