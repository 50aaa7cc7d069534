//! `cargo xtask bench tab`: what a user of the demo gets, in the tab. The demo's v86 guest
//! (same image, same page) downloads from local origins through (a) our `v86-adapter.js` as
//! shipped, (b) the same with the other pacing choice (off on ne2k, forced on virtio), and
//! (c) v86's own `FetchNetworkAdapter`, and (d) both through a Wisp relay (our adapter with
//! `relay`, v86's `WispNetworkAdapter`, one wisp-js server), with each of v86's NICs (virtio,
//! ne2k), in one run; `--only` picks rows.
//! Reported: guest-side MB/s (bytes over curl's `time_total`, body to /dev/null), whether the
//! transfer finished, NIC watchdog messages, and the pacer's counters.

use std::time::Duration;

use anyhow::{bail, Result};
use serde_json::{json, Value};

use super::{publish, Machine};
use crate::demo::boot::{boot, encode, field, nic_watchdog, section};
use crate::harness::cleanup;
use crate::harness::origins::{Cors, Origin, OriginFiles};
use crate::harness::relays::{WispServer, WispServerKind};
use crate::tools::workspace_root;

const HEADING: &str = "## In the tab (v86)";

/// How long each download may take before it counts as stalled.
const TRANSFER_SECS: u64 = 90;

/// The end mark as the guest prints it.
const END: &str = "C2W-TAB-2-END";

/// The name the relay rows' guest asks for; `relay.hosts` maps it to 127.0.0.1 for the relay.
const RELAY_ORIGIN: &str = "origin.test";

/// Where the relay rows' guest fetches the origins' test CA from (the page server's site).
const CA_FILE: &str = "bench-origin-ca.pem";

/// How a backend's guest reaches the origins.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Reach {
    /// Through the guest's proxy variables (ours: fetch, TLS terminated by the proxy).
    Proxy,
    /// Straight to `PORT.external` (v86's fetch backend maps it to `http://localhost:PORT`).
    External,
    /// Straight to `origin.test:PORT` (https: `localhost:PORT` connected there): our DNS answers
    /// with a fake IP, the stack sends the connection through the relay, which is told
    /// (`relay.hosts`) to connect to 127.0.0.1. HTTPS is end to end (origin's test CA).
    RelayName,
    /// Straight to `127.0.0.1:PORT`, which the guest routes out of its NIC
    /// (`route_localnet`, its own loopback address removed): v86's Wisp backend asks the relay
    /// for the IP the guest connected to. HTTPS is end to end (origin's test CA).
    Loopback,
}

/// One way traffic leaves the guest.
#[derive(Clone, Copy)]
struct Backend {
    name: &'static str,
    /// The page's query; relay rows get `&relay=<the Wisp server's URL>` added.
    query: &'static str,
    reach: Reach,
    /// Whether it can carry https (v86's fetch backend cannot: it does not terminate TLS).
    https: bool,
    /// The NICs it is measured on (the shipped adapter paces the ne2k and not virtio, so each
    /// NIC is compared with the other pacing choice).
    nics: &'static [&'static str],
    /// The `--only` groups it belongs to.
    groups: &'static [&'static str],
}

impl Backend {
    fn relay(&self) -> bool {
        matches!(self.reach, Reach::RelayName | Reach::Loopback)
    }
}

const BACKENDS: &[Backend] = &[
    Backend {
        name: "c2w-net-proxy",
        query: "allow=loopback",
        reach: Reach::Proxy,
        https: true,
        nics: &["virtio", "ne2k"],
        groups: &["fetch", "relay"],
    },
    Backend {
        name: "c2w-net-proxy, pacing off",
        query: "allow=loopback&pacing=off",
        reach: Reach::Proxy,
        https: false,
        nics: &["ne2k"],
        groups: &["pacing"],
    },
    Backend {
        name: "c2w-net-proxy, pacing forced on",
        query: "allow=loopback&pacing=on",
        reach: Reach::Proxy,
        https: false,
        nics: &["virtio"],
        groups: &["pacing"],
    },
    Backend {
        name: "c2w-net-proxy via relay",
        query: "allow=loopback,origin.test&relay-hosts=origin.test=127.0.0.1",
        reach: Reach::RelayName,
        https: true,
        nics: &["virtio", "ne2k"],
        groups: &["relay"],
    },
    Backend {
        name: "v86 FetchNetworkAdapter",
        query: "backend=v86",
        reach: Reach::External,
        https: false,
        nics: &["virtio", "ne2k"],
        groups: &["fetch", "relay"],
    },
    Backend {
        name: "v86 WispNetworkAdapter",
        query: "backend=v86",
        reach: Reach::Loopback,
        https: true,
        nics: &["virtio", "ne2k"],
        groups: &["relay"],
    },
];

const NICS: &[&str] = &["virtio", "ne2k"];

/// The downloads: (label, scheme, bytes).
const TRANSFERS: &[(&str, &str, usize)] = &[
    ("16 MiB http", "http", 16 << 20),
    ("64 MiB http", "http", 64 << 20),
    ("16 MiB https", "https", 16 << 20),
];

/// Which rows `--only` selects: a backend group (`relay`, `fetch`, `pacing`) and/or a NIC;
/// every row when nothing names either.
struct Rows<'a> {
    only: &'a [String],
}

impl Rows<'_> {
    fn runs(&self, nic: &str, backend: &Backend) -> bool {
        let named = |set: &[&str]| self.only.iter().any(|o| set.contains(&o.as_str()));
        let any_nic = named(NICS);
        let any_group = self
            .only
            .iter()
            .any(|o| BACKENDS.iter().any(|b| b.groups.contains(&o.as_str())));
        (!any_nic || self.only.iter().any(|o| o == nic)) && (!any_group || named(backend.groups))
    }

    fn filtered(&self) -> bool {
        NICS.iter()
            .any(|nic| BACKENDS.iter().any(|b| !self.runs(nic, b)))
    }
}

/// One download's outcome.
struct Transfer {
    rc: String,
    bytes: f64,
    secs: f64,
}

impl Transfer {
    fn ok(&self) -> bool {
        self.rc == "0"
    }

    fn mb_s(&self) -> f64 {
        self.bytes / 1e6 / self.secs.max(1e-3)
    }

    fn cell(&self) -> String {
        if self.ok() {
            format!("{:.1} MB/s", self.mb_s())
        } else if self.rc == "28" {
            format!(
                "**stalled**: {:.2} MB in {:.0} s",
                self.bytes / 1e6,
                self.secs
            )
        } else {
            format!(
                "**failed** (curl exit {}): {:.2} MB in {:.1} s",
                self.rc,
                self.bytes / 1e6,
                self.secs
            )
        }
    }
}

/// The origins as one boot's script reaches them.
struct Targets<'a> {
    http: &'a Origin,
    https: &'a Origin,
    /// The page server's port (it serves the origins' test CA as [`CA_FILE`]).
    pages_port: u16,
}

/// The shell line typed into the guest for `backend`: a function `t LABEL URL` that downloads
/// and prints `tab label=LABEL rc=RC result=BYTES:SECS`, preceded for the relay rows by what
/// they need (no proxy variables, the origin's CA, for v86's Wisp backend the route out for
/// 127.0.0.1). Kept short: busybox's line editor takes about 1 KiB per line.
fn script(backend: &Backend, to: &Targets) -> String {
    let (http_port, https_port) = (to.http.addr().port(), to.https.addr().port());
    let mut setup = String::new();
    let opts = match backend.reach {
        Reach::Proxy => String::new(),
        Reach::External => "--noproxy '*' ".to_string(),
        Reach::RelayName | Reach::Loopback => {
            let host = if backend.reach == Reach::Loopback {
                setup.push_str(
                    "ip addr del 127.0.0.1/8 dev lo; \
                     echo 1 >/proc/sys/net/ipv4/conf/all/route_localnet; ",
                );
                "127.0.0.1"
            } else {
                RELAY_ORIGIN
            };
            setup.push_str(&format!(
                "unset http_proxy https_proxy HTTP_PROXY HTTPS_PROXY; \
                 curl -sS -m 30 -o /tmp/o.pem http://{host}:{}/{CA_FILE}; echo \"tab ca rc=$?\"; ",
                to.pages_port
            ));
            let connect = if backend.reach == Reach::RelayName {
                format!("--connect-to localhost::{RELAY_ORIGIN}: ")
            } else {
                String::new()
            };
            format!("--cacert /tmp/o.pem {connect}")
        }
    };
    let mut script = format!(
        "echo C2W-TAB-$((0+1))-BEGIN; {setup}t() {{ w=$(curl -sS -m {TRANSFER_SECS} {opts}-o /dev/null \
         -w '%{{size_download}}:%{{time_total}}' $2); echo \"tab label=$1 rc=$? result=$w\"; }}; "
    );
    for (label, scheme, bytes) in TRANSFERS {
        let url = match (*scheme, backend.reach) {
            ("https", _) if !backend.https => continue,
            ("https", Reach::Proxy) => format!("{}/blob/{bytes}", to.https.base_url()),
            ("https", Reach::RelayName) => format!("https://localhost:{https_port}/blob/{bytes}"),
            ("https", _) => format!("https://127.0.0.1:{https_port}/blob/{bytes}"),
            (_, Reach::Proxy) => format!("{}/blob/{bytes}", to.http.base_url()),
            (_, Reach::External) => format!("http://{http_port}.external/blob/{bytes}"),
            (_, Reach::RelayName) => format!("http://{RELAY_ORIGIN}:{http_port}/blob/{bytes}"),
            (_, Reach::Loopback) => format!("http://127.0.0.1:{http_port}/blob/{bytes}"),
        };
        script.push_str(&format!("t {} {url}; ", label.replace(' ', "-")));
    }
    script.push_str("sleep 1; echo C2W-TAB-$((1+1))-END");
    script
}

/// Runs the section: every row, or those `only` selects (see [`Rows`]).
pub fn section_run(only: &[String]) -> Result<()> {
    let rows_wanted = Rows { only };
    let site = crate::demo::prepare()?;
    crate::harness::browser::launch::Kind::Chromium.ensure_installed()?;
    let _guard = cleanup::Guard;
    let dir = workspace_root().join("target/bench/tab");
    std::fs::create_dir_all(&dir)?;
    let files = OriginFiles::create(&dir.join("origin"))?;
    let http = Origin::http(&files, Cors::On)?;
    let https = Origin::https(&files, Cors::On)?;
    std::fs::copy(&files.ca_cert, site.dir.join(CA_FILE))?;
    let server =
        crate::harness::browser::page_server::PageServer::serve(0, vec![site.dir.clone()], None)?;
    let pages_port: u16 = server
        .base
        .rsplit(':')
        .next()
        .and_then(|p| p.trim_end_matches('/').parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no port in the page server's {}", server.base))?;
    let targets = Targets {
        http: &http,
        https: &https,
        pages_port,
    };
    // One Wisp server for every relay row, ours and v86's.
    let any_relay = NICS.iter().any(|nic| {
        BACKENDS
            .iter()
            .any(|b| b.relay() && b.nics.contains(nic) && rows_wanted.runs(nic, b))
    });
    let wisp = if any_relay {
        Some(WispServer::start(WispServerKind::Js, None)?)
    } else {
        None
    };

    let mut rows = Vec::new();
    let mut entries = Vec::new();
    for nic in NICS {
        for backend in BACKENDS.iter().filter(|b| b.nics.contains(nic)) {
            if !rows_wanted.runs(nic, backend) {
                continue;
            }
            let script = script(backend, &targets);
            let name = format!("{nic}/{}", backend.name.replace([' ', ','], ""));
            println!("xtask bench tab: {nic} NIC, {}", backend.name);
            let relay = match (&wisp, backend.relay()) {
                (Some(wisp), true) => format!("&relay={}", encode(&wisp.url())),
                _ => String::new(),
            };
            let run = boot(
                &server,
                &files,
                &dir.join(&name),
                &format!("{}{relay}&net={nic}", backend.query),
                &script,
                END,
                Duration::from_secs(150 + TRANSFER_SECS * TRANSFERS.len() as u64),
            )?;
            if let Err(err) = &run.finished {
                bail!("{nic}, {}: the guest did not finish: {err:#}", backend.name);
            }
            let out = section(&run.console, "C2W-TAB-1-BEGIN", END).unwrap_or("");
            if let Some(line) = out.lines().find(|l| l.starts_with("tab ca rc=")) {
                if field(line, "rc=") != "0" {
                    eprintln!(
                        "xtask bench tab: {nic}, {}: the guest could not fetch the origin's CA ({line})",
                        backend.name
                    );
                }
            }
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
                    "value": if t.ok() { t.mb_s() } else { 0.0 },
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
            rows.push((
                (nic.to_string(), backend.name.to_string()),
                format!(
                    "| {nic} | {} | {} | {watchdog} | {pacing} |",
                    backend.name,
                    cells.join(" | ")
                ),
            ));
        }
    }
    drop(wisp);
    drop((http, https));

    let m = Machine::detect();
    let kept = if rows_wanted.filtered() {
        "\nRows this run did not measure (`--only`) are kept from the previous one."
    } else {
        ""
    };
    let mut text = format!(
        "{HEADING}\n\n\
         `cargo xtask bench tab`, {date}: the demo's v86 guest (Debian i386 kernel, busybox + curl) in\n\
         headless {browser} on {cpus} × {cpu}, downloading from local origins with curl\n\
         (`-o /dev/null`; MB/s is bytes over curl's `time_total`, guest-side). Every row is one boot of\n\
         the same page in the same run. *c2w-net-proxy* is `v86-adapter.js` as shipped: it paces\n\
         the ne2k (a frame goes when the NIC's receive ring has room for it, read from its\n\
         registers) and hands virtio every frame at once; *pacing off* on the ne2k is how it was\n\
         before the fix, *pacing forced on* on virtio is what pacing (by bursts of 8 frames /\n\
         12 KiB until the guest transmits or 10 ms pass) would cost there;\n\
         *v86 FetchNetworkAdapter* is v86's own fetch backend on the same page (http only: it does\n\
         not terminate TLS). The relay rows use one wisp-js 0.5.0 server on loopback:\n\
         *c2w-net-proxy via relay* is the same adapter with `relay` set (`?relay=`), the guest's\n\
         curl going straight to `{RELAY_ORIGIN}:PORT` (no proxy; `relay.hosts` maps the name to\n\
         127.0.0.1), so every connection is a raw Wisp stream and https is end to end (the guest\n\
         trusts the origin's test CA); *v86 WispNetworkAdapter* is v86's own Wisp backend\n\
         (`net_device.relay_url = \"wisp://...\"`) on the same server, the guest's curl going to\n\
         127.0.0.1:PORT (routed out of its NIC: v86 asks the relay for the address the guest\n\
         connected to), https end to end too. A transfer that does not finish within\n\
         {TRANSFER_SECS} s is marked stalled with what arrived.{kept}\n\n\
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
    let previous =
        std::fs::read_to_string(workspace_root().join("docs/benchmarks.md")).unwrap_or_default();
    for row in merge_rows(&previous, rows) {
        text.push_str(&row);
        text.push('\n');
    }
    publish(HEADING, &text, entries)
}

/// The table's rows: this run's, and for the (NIC, backend) pairs it did not measure the rows
/// of the section as it stands in `doc`, in NIC then backend order; rows of backends no longer
/// listed come last.
fn merge_rows(doc: &str, measured: Vec<((String, String), String)>) -> Vec<String> {
    let mut old: Vec<((String, String), String)> = Vec::new();
    let mut inside = false;
    for line in doc.lines() {
        if line.starts_with("## ") {
            inside = line.trim_end() == HEADING;
            continue;
        }
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        if inside && cells.len() > 3 && NICS.contains(&cells[1]) {
            old.push(((cells[1].into(), cells[2].into()), line.to_string()));
        }
    }
    let mut out = Vec::new();
    for nic in NICS {
        for backend in BACKENDS {
            let key = (nic.to_string(), backend.name.to_string());
            let row = measured
                .iter()
                .chain(old.iter())
                .find(|(k, _)| *k == key)
                .map(|(_, row)| row.clone());
            out.extend(row);
        }
    }
    for (key, row) in &old {
        let listed = BACKENDS.iter().any(|b| b.name == key.1) && NICS.contains(&key.0.as_str());
        if !listed {
            out.push(row.clone());
        }
    }
    out
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
        rc: field(line, "rc=").to_string(),
        bytes: bytes.parse().unwrap_or(0.0),
        secs: secs.parse().unwrap_or(0.0),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_picks_groups_and_nics() {
        let only = |names: &[&str]| names.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let picked = |names: &[&str]| {
            let o = only(names);
            let rows = Rows { only: &o };
            NICS.iter()
                .flat_map(|nic| {
                    BACKENDS
                        .iter()
                        .filter(|b| b.nics.contains(nic) && rows.runs(nic, b))
                        .map(move |b| format!("{nic}/{}", b.name))
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(picked(&[]).len(), 10);
        assert!(!Rows { only: &only(&[]) }.filtered());
        assert_eq!(
            picked(&["relay", "virtio"]),
            [
                "virtio/c2w-net-proxy",
                "virtio/c2w-net-proxy via relay",
                "virtio/v86 FetchNetworkAdapter",
                "virtio/v86 WispNetworkAdapter"
            ]
        );
        assert_eq!(picked(&["pacing"]).len(), 2);
        assert!(Rows {
            only: &only(&["ne2k"])
        }
        .filtered());
    }

    #[test]
    fn rows_not_measured_are_kept() {
        let doc = format!(
            "# B\n\n{HEADING}\n\ntext\n\n| NIC | backend | a |\n|---|---|---|\n\
             | virtio | c2w-net-proxy | old 1 |\n| ne2k | c2w-net-proxy | old 2 |\n\
             | ne2k | gone | old 3 |\n\n## Other\n\n| virtio | v86 FetchNetworkAdapter | no |\n"
        );
        let measured = vec![(
            ("virtio".to_string(), "c2w-net-proxy via relay".to_string()),
            "| virtio | c2w-net-proxy via relay | new |".to_string(),
        )];
        assert_eq!(
            merge_rows(&doc, measured),
            [
                "| virtio | c2w-net-proxy | old 1 |",
                "| virtio | c2w-net-proxy via relay | new |",
                "| ne2k | c2w-net-proxy | old 2 |",
                "| ne2k | gone | old 3 |",
            ]
        );
    }
}
