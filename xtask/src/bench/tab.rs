//! `cargo xtask bench tab`: what a user of the demo gets, in the tab. The demo's v86 guest
//! (same image, same page) downloads from local origins through (a) our `v86-adapter.js` as
//! shipped, (b) the same with the other pacing choice (off on ne2k, forced on virtio), and
//! (c) v86's own `FetchNetworkAdapter`, with each of v86's NICs (virtio, ne2k), in one run.
//! Reported: guest-side MB/s (curl's own `speed_download`, body to /dev/null), whether the
//! transfer finished, NIC watchdog messages, and the pacer's counters.

use std::time::Duration;

use anyhow::{bail, Result};
use serde_json::{json, Value};

use super::{publish, Machine};
use crate::demo::boot::{boot, field, nic_watchdog, section};
use crate::harness::cleanup;
use crate::harness::origins::{Cors, Origin, OriginFiles};
use crate::tools::workspace_root;

const HEADING: &str = "## In the tab (v86)";

/// How long each download may take before it counts as stalled.
const TRANSFER_SECS: u64 = 90;

/// The end mark as the guest prints it.
const END: &str = "C2W-TAB-2-END";

/// One way traffic leaves the guest.
#[derive(Clone, Copy)]
struct Backend {
    name: &'static str,
    query: &'static str,
    /// Whether downloads go through the guest's proxy variables (ours) or straight to
    /// `PORT.external` (v86's, which maps it to `http://localhost:PORT`).
    proxied: bool,
    /// Whether it can carry https (v86's fetch backend cannot: it does not terminate TLS).
    https: bool,
    /// The NICs it is measured on (the shipped adapter paces the ne2k and not virtio, so each
    /// NIC is compared with the other pacing choice).
    nics: &'static [&'static str],
}

const BACKENDS: &[Backend] = &[
    Backend {
        name: "c2w-net-proxy",
        query: "allow=loopback",
        proxied: true,
        https: true,
        nics: &["virtio", "ne2k"],
    },
    Backend {
        name: "c2w-net-proxy, pacing off",
        query: "allow=loopback&pacing=off",
        proxied: true,
        https: false,
        nics: &["ne2k"],
    },
    Backend {
        name: "c2w-net-proxy, pacing forced on",
        query: "allow=loopback&pacing=on",
        proxied: true,
        https: false,
        nics: &["virtio"],
    },
    Backend {
        name: "v86 FetchNetworkAdapter",
        query: "backend=v86",
        proxied: false,
        https: false,
        nics: &["virtio", "ne2k"],
    },
];

const NICS: &[&str] = &["virtio", "ne2k"];

/// The downloads: (label, scheme, bytes).
const TRANSFERS: &[(&str, &str, usize)] = &[
    ("16 MiB http", "http", 16 << 20),
    ("64 MiB http", "http", 64 << 20),
    ("16 MiB https", "https", 16 << 20),
];

/// One download's outcome.
struct Transfer {
    ok: bool,
    bytes: f64,
    secs: f64,
}

impl Transfer {
    fn mb_s(&self) -> f64 {
        self.bytes / 1e6 / self.secs.max(1e-3)
    }

    fn cell(&self) -> String {
        if self.ok {
            format!("{:.1} MB/s", self.mb_s())
        } else {
            format!(
                "**stalled**: {:.2} MB in {:.0} s",
                self.bytes / 1e6,
                self.secs
            )
        }
    }
}

/// Runs the section.
pub fn section_run() -> Result<()> {
    let site = crate::demo::prepare()?;
    crate::harness::browser::launch::Kind::Chromium.ensure_installed()?;
    let _guard = cleanup::Guard;
    let dir = workspace_root().join("target/bench/tab");
    std::fs::create_dir_all(&dir)?;
    let files = OriginFiles::create(&dir.join("origin"))?;
    let http = Origin::http(&files, Cors::On)?;
    let https = Origin::https(&files, Cors::On)?;
    let server =
        crate::harness::browser::page_server::PageServer::serve(0, vec![site.dir.clone()], None)?;
    let http_port = http.addr().port();

    let mut rows = Vec::new();
    let mut entries = Vec::new();
    for nic in NICS {
        for backend in BACKENDS.iter().filter(|b| b.nics.contains(nic)) {
            let mut script = String::from("echo C2W-TAB-$((0+1))-BEGIN; ");
            for (label, scheme, bytes) in TRANSFERS {
                let url = match (*scheme, backend.proxied) {
                    ("https", true) if backend.https => {
                        format!("{}/blob/{bytes}", https.base_url())
                    }
                    ("https", _) => continue,
                    (_, true) => format!("{}/blob/{bytes}", http.base_url()),
                    (_, false) => format!("http://{http_port}.external/blob/{bytes}"),
                };
                let noproxy = if backend.proxied {
                    ""
                } else {
                    "--noproxy '*' "
                };
                script.push_str(&format!(
                    "w=$(curl -sS -m {TRANSFER_SECS} {noproxy}-o /dev/null -w '%{{size_download}}:%{{time_total}}' {url}); \
                     echo \"tab label={} rc=$? result=$w\"; ",
                    label.replace(' ', "-")
                ));
            }
            script.push_str("sleep 1; echo C2W-TAB-$((1+1))-END");
            let name = format!("{nic}/{}", backend.name.replace([' ', ','], ""));
            println!("xtask bench tab: {nic} NIC, {}", backend.name);
            let run = boot(
                &server,
                &files,
                &dir.join(&name),
                &format!("{}&net={nic}", backend.query),
                &script,
                END,
                Duration::from_secs(120 + TRANSFER_SECS * TRANSFERS.len() as u64),
            )?;
            if let Err(err) = &run.finished {
                bail!("{nic}, {}: the guest did not finish: {err:#}", backend.name);
            }
            let out = section(&run.console, "C2W-TAB-1-BEGIN", END).unwrap_or("");
            let mut cells = Vec::new();
            for (label, scheme, _) in TRANSFERS {
                if *scheme == "https" && !backend.https {
                    cells.push("n/a".to_string());
                    continue;
                }
                let t = parse(out, &label.replace(' ', "-"))?;
                entries.push(json!({
                    "name": format!("tab/{nic}/{}/{}", backend.name, label),
                    "unit": "MB/s",
                    "value": if t.ok { t.mb_s() } else { 0.0 },
                    "reference": null,
                }));
                cells.push(t.cell());
            }
            let watchdog = match nic_watchdog(&run.console) {
                Some(_) => format!(
                    "{} lines",
                    run.console
                        .lines()
                        .filter(|l| nic_watchdog(l).is_some())
                        .count()
                ),
                None => "none".to_string(),
            };
            let pacing = serde_json::from_str::<Value>(&run.stats)
                .ok()
                .and_then(|v| {
                    let p = &v["pacing"];
                    p.is_object().then(|| {
                        if p["mode"] == "room" {
                            format!(
                                "room: {} waited, {} refusals, {} wake-ups",
                                p["deferred"], p["refused"], p["wakeups"]
                            )
                        } else {
                            format!(
                                "{} waited, {} idle releases",
                                p["deferred"], p["releasedByTimer"]
                            )
                        }
                    })
                })
                .unwrap_or_else(|| "—".to_string());
            rows.push(format!(
                "| {nic} | {} | {} | {watchdog} | {pacing} |",
                backend.name,
                cells.join(" | ")
            ));
        }
    }
    drop((http, https));

    let m = Machine::detect();
    let mut text = format!(
        "{HEADING}\n\n\
         `cargo xtask bench tab`, {date}: the demo's v86 guest (Debian i386 kernel, busybox + curl) in\n\
         headless {browser} on {cpus} × {cpu}, downloading from local origins with curl\n\
         (`-o /dev/null`; MB/s is curl's own `speed_download`, guest-side). Every row is one boot of\n\
         the same page in the same run. *c2w-net-proxy* is `v86-adapter.js` as shipped: it paces\n\
         the ne2k (a frame goes when the NIC's receive ring has room for it, read from its\n\
         registers) and hands virtio every frame at once; *pacing off* on the ne2k is how it was\n\
         before the fix, *pacing forced on* on virtio is what pacing (by bursts of 8 frames /\n\
         12 KiB until the guest transmits or 10 ms pass) would cost there;\n\
         *v86 FetchNetworkAdapter* is v86's own fetch backend on the same page (http only: it does\n\
         not terminate TLS). A transfer that does not finish within {TRANSFER_SECS} s is marked\n\
         stalled with what arrived.\n\n\
         | NIC | backend | {} | NIC watchdog | pacer |\n|---|---|{}---|---|\n",
        TRANSFERS
            .iter()
            .map(|(l, _, _)| *l)
            .collect::<Vec<_>>()
            .join(" | "),
        "---:|".repeat(TRANSFERS.len()),
        date = m.date,
        browser = crate::harness::browser::launch::Kind::Chromium.version(),
        cpus = m.cpus,
        cpu = m.cpu_model,
    );
    for row in rows {
        text.push_str(&row);
        text.push('\n');
    }
    publish(HEADING, &text, entries)
}

/// Reads the `tab label=LABEL rc=RC result=BYTES:SECS` line of one download.
fn parse(out: &str, label: &str) -> Result<Transfer> {
    let line = out
        .lines()
        .find(|l| l.starts_with(&format!("tab label={label} ")))
        .ok_or_else(|| anyhow::anyhow!("no result line for {label}"))?;
    let (bytes, secs) = field(line, "result=")
        .split_once(':')
        .ok_or_else(|| anyhow::anyhow!("no result: {line}"))?;
    Ok(Transfer {
        ok: field(line, "rc=") == "0",
        bytes: bytes.parse().unwrap_or(0.0),
        secs: secs.parse().unwrap_or(0.0),
    })
}
