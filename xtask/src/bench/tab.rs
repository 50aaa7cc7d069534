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
use crate::demo::boot::{boot, encode, field, nic_watchdog, section, Run};
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
        groups: &["fetch", "relay", "shipped"],
    },
    Backend {
        name: "c2w-net-proxy, in-page source",
        query: "allow=loopback&source=page",
        reach: Reach::Proxy,
        https: true,
        nics: &["virtio", "ne2k"],
        groups: &["fetch", "ceiling"],
    },
    Backend {
        name: "c2w-net-proxy, MTU 65520",
        query: "allow=loopback&mtu=65520",
        reach: Reach::Proxy,
        https: true,
        nics: &["virtio"],
        groups: &["mtu"],
    },
    Backend {
        name: "c2w-net-proxy, in-page source, MTU 65520",
        query: "allow=loopback&source=page&mtu=65520",
        reach: Reach::Proxy,
        https: true,
        nics: &["virtio"],
        groups: &["mtu"],
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

/// One thing the guest measures.
#[derive(Clone, Copy)]
enum Measure {
    /// `GET /blob/N` with curl, the body to /dev/null: MB/s.
    Download { https: bool, bytes: usize },
    /// `POST /echo` of N bytes from a file in the guest's memory: MB/s.
    Upload { bytes: usize },
    /// [`REQUESTS`] small GETs (`/blob/100` to `/blob/199`): one curl reusing its connection,
    /// or one curl (and connection) per request: curl's median and 90th percentile.
    Requests { keep_alive: bool },
}

/// The column headings and what each measures, in the table's order.
const MEASURES: &[(&str, Measure)] = &[
    (
        "16 MiB http",
        Measure::Download {
            https: false,
            bytes: 16 << 20,
        },
    ),
    (
        "64 MiB http",
        Measure::Download {
            https: false,
            bytes: 64 << 20,
        },
    ),
    (
        "16 MiB https",
        Measure::Download {
            https: true,
            bytes: 16 << 20,
        },
    ),
    ("16 MiB upload http", Measure::Upload { bytes: 16 << 20 }),
    (
        "100 requests, keep-alive",
        Measure::Requests { keep_alive: true },
    ),
    (
        "100 requests, new connections",
        Measure::Requests { keep_alive: false },
    ),
];

/// How many small requests a [`Measure::Requests`] makes.
const REQUESTS: usize = 100;

/// The small requests ask for `/blob/FIRST_SMALL` and on, one byte more each.
const FIRST_SMALL: usize = 100;

impl Measure {
    /// The label the guest prints (no spaces).
    fn tag(label: &str) -> String {
        label.replace(", ", "-").replace(' ', "-")
    }

    fn https(self) -> bool {
        matches!(self, Measure::Download { https: true, .. })
    }
}

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

/// One measurement's outcome as the guest printed it.
enum Outcome {
    /// A download or upload: curl's exit code, the bytes moved and curl's `time_total`.
    Transfer { rc: String, bytes: f64, secs: f64 },
    /// Small requests: how many were answered 200, curl's median and 90th percentile (s).
    Requests { ok: usize, median: f64, p90: f64 },
}

impl Outcome {
    fn ok(&self) -> bool {
        match self {
            Outcome::Transfer { rc, .. } => rc == "0",
            Outcome::Requests { ok, .. } => *ok == REQUESTS,
        }
    }

    /// The figure results.json records: MB/s, or the median in ms; 0 when it failed.
    fn value(&self) -> (f64, &'static str) {
        match self {
            Outcome::Transfer { bytes, secs, .. } => (
                if self.ok() {
                    bytes / 1e6 / secs.max(1e-3)
                } else {
                    0.0
                },
                "MB/s",
            ),
            Outcome::Requests { median, .. } => (if self.ok() { median * 1e3 } else { 0.0 }, "ms"),
        }
    }

    fn cell(&self) -> String {
        match self {
            Outcome::Transfer { .. } if self.ok() => format!("{:.1} MB/s", self.value().0),
            Outcome::Transfer { rc, bytes, secs } if rc == "28" => {
                format!("**stalled**: {:.2} MB in {secs:.0} s", bytes / 1e6)
            }
            Outcome::Transfer { rc, bytes, secs } => format!(
                "**failed** (curl exit {rc}): {:.2} MB in {secs:.1} s",
                bytes / 1e6
            ),
            Outcome::Requests { median, p90, .. } if self.ok() => {
                format!("{:.1} ms (p90 {:.1})", median * 1e3, p90 * 1e3)
            }
            Outcome::Requests { ok, .. } => format!("**failed**: {ok} of {REQUESTS} answered"),
        }
    }
}

/// The origins as one boot's script reaches them.
struct Targets {
    /// The http origin's base URL (`http://127.0.0.1:PORT`) and port.
    http: (String, u16),
    /// The https origin's base URL and port.
    https: (String, u16),
    /// The page server's port (it serves the origins' test CA as [`CA_FILE`]).
    pages_port: u16,
}

/// The shell lines typed into the guest for `backend`: functions `t LABEL VAR CURL-ARGS...` (a
/// transfer: prints `tab label=LABEL rc=RC result=BYTES:SECS`, BYTES being curl's VAR) and
/// `r LABEL COMMAND...` (small requests: prints `tab label=LABEL result=OK:MEDIAN:P90`), each
/// followed by the guest's TCP counters (`tab ns LABEL ...`, names once as `tab nh`), preceded
/// for the relay rows by what they need (no proxy variables, the origin's CA, for v86's Wisp
/// backend the route out for 127.0.0.1). Kept short: busybox's line editor takes about 1 KiB
/// per line.
fn script(backend: &Backend, to: &Targets) -> String {
    let (http_port, https_port) = (to.http.1, to.https.1);
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
    let http_base = match backend.reach {
        Reach::Proxy => to.http.0.clone(),
        Reach::External => format!("http://{http_port}.external"),
        Reach::RelayName => format!("http://{RELAY_ORIGIN}:{http_port}"),
        Reach::Loopback => format!("http://127.0.0.1:{http_port}"),
    };
    let https_base = match backend.reach {
        Reach::Proxy => to.https.0.clone(),
        Reach::RelayName => format!("https://localhost:{https_port}"),
        _ => format!("https://127.0.0.1:{https_port}"),
    };
    let tcp = "$(grep ^TcpExt: /proc/net/netstat|tail -1) $(grep ^Tcp: /proc/net/snmp|tail -1)";
    // Two lines: the functions (quiet), then what prints. The second is typed while the first
    // runs; the begin mark's `$((0+1))` tells the line it prints from its echo.
    let mut script = format!(
        "head -c {UPLOAD} /dev/zero >/tmp/up; n(){{ echo \"tab ns $1 {tcp}\"; }}; \
         c(){{ curl -sS -m {TRANSFER_SECS} {opts}-o /dev/null \"$@\"; }}; \
         t(){{ l=$1; v=$2; shift 2; w=$(c -w \"%{{$v}}:%{{time_total}}\" \"$@\"); \
         echo \"tab label=$l rc=$? result=$w\"; n $l; }}; \
         r(){{ l=$1; shift; \"$@\" >/tmp/r; awk '$1==200{{print $2}}' /tmp/r|sort -n >/tmp/s; \
         echo \"tab label=$l result=$(wc -l </tmp/s):$(sed -n {MEDIAN}p /tmp/s):$(sed -n {P90}p /tmp/s)\"; n $l; }}; \
         k(){{ for i in $(seq {FIRST} {LAST}); do c -w '%{{http_code}} %{{time_total}}\\n' $1$i; done; }}\n\
         echo C2W-TAB-$((0+1))-BEGIN; {setup}echo \"tab nh x {names}\"; n start; ",
        UPLOAD = upload_bytes(),
        names = tcp.replace("tail", "head"),
        MEDIAN = REQUESTS / 2,
        P90 = REQUESTS * 9 / 10,
        FIRST = FIRST_SMALL,
        LAST = FIRST_SMALL + REQUESTS - 1,
    );
    for (label, measure) in MEASURES {
        let tag = Measure::tag(label);
        let line = match *measure {
            Measure::Download { https: true, .. } if !backend.https => continue,
            Measure::Download { https, bytes } => {
                let base = if https { &https_base } else { &http_base };
                format!("t {tag} size_download {base}/blob/{bytes}")
            }
            Measure::Upload { .. } => {
                format!("t {tag} size_upload -H Expect: --data-binary @/tmp/up {http_base}/echo")
            }
            Measure::Requests { keep_alive: true } => format!(
                "r {tag} c -w '%{{http_code}} %{{time_total}}\\n' '{http_base}/blob/[{FIRST_SMALL}-{}]'",
                FIRST_SMALL + REQUESTS - 1
            ),
            Measure::Requests { keep_alive: false } => format!("r {tag} k {http_base}/blob/"),
        };
        script.push_str(&line);
        script.push_str("; ");
    }
    script.push_str("sleep 1; echo C2W-TAB-$((1+1))-END");
    script
}

/// The upload's size (the one [`Measure::Upload`] in [`MEASURES`]).
fn upload_bytes() -> usize {
    MEASURES
        .iter()
        .find_map(|(_, m)| match m {
            Measure::Upload { bytes } => Some(*bytes),
            _ => None,
        })
        .unwrap_or(0)
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
        http: (http.base_url(), http.addr().port()),
        https: (https.base_url(), https.addr().port()),
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
    let mut measured = Measured::default();
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
                &Run {
                    query: &format!("{}{relay}&net={nic}", backend.query),
                    script: &script,
                    end: END,
                    reports: &[],
                    limit: Duration::from_secs(240 + TRANSFER_SECS * MEASURES.len() as u64),
                },
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
            let counters = GuestTcp::read(out);
            let mut cells = Vec::new();
            let mut seen = Vec::new();
            for (label, measure) in MEASURES {
                if measure.https() && !backend.https {
                    cells.push("n/a".to_string());
                    continue;
                }
                let tag = Measure::tag(label);
                let outcome = parse(out, &tag, *measure)?;
                let (value, unit) = outcome.value();
                entries.push(json!({
                    "name": format!("tab/{nic}/{}/{}", backend.name, label),
                    "unit": unit,
                    "value": value,
                    "reference": null,
                }));
                if outcome.ok() {
                    measured.0.insert((nic, backend.name, label), value);
                }
                cells.push(outcome.cell());
                if let Measure::Download { .. } = measure {
                    let d = counters.during(&tag);
                    seen.push(format!(
                        "{}: {}/{}",
                        label.trim_end_matches(" http"),
                        d.out_of_order,
                        d.duplicates
                    ));
                }
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
            // The last `{stats, timings, pacing, nic}` the page posted (Null when none).
            let posted: Value = serde_json::from_str(&run.stats).unwrap_or(Value::Null);
            let p = &posted["pacing"];
            let pacing = if !p.is_object() {
                "—".to_string()
            } else if p["mode"] == "room" {
                format!(
                    "room: {} waited, {} refusals, {} wake-ups",
                    p["deferred"], p["refused"], p["wakeups"]
                )
            } else {
                format!(
                    "{} waited, {} idle releases",
                    p["deferred"], p["releasedByTimer"]
                )
            };
            let dropped = posted["nic"]["dropped"]
                .as_u64()
                .map_or("—".to_string(), |n| n.to_string());
            let memory = posted["stats"]["wasmMemoryBytes"]
                .as_f64()
                .map_or("—".to_string(), |b| {
                    format!("{:.0} MiB", b / f64::from(1 << 20))
                });
            rows.push((
                (nic.to_string(), backend.name.to_string()),
                format!(
                    "| {nic} | {} | {} | {} | {dropped} | {memory} | {watchdog} | {pacing} |",
                    backend.name,
                    cells.join(" | "),
                    seen.join(", "),
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
         (`-o /dev/null`; MB/s is bytes over curl's `time_total`, guest-side), uploading 16 MiB\n\
         (`--data-binary` from the guest's memory to the origin's `/echo`) and making {REQUESTS} small\n\
         requests (100–199 bytes) with one curl reusing its connection and with one curl each\n\
         (curl's median and 90th percentile of `time_total`). Every row is one boot of\n\
         the same page in the same run. *c2w-net-proxy* is `v86-adapter.js` as shipped: it paces\n\
         the ne2k (a frame goes when the NIC's receive ring has room for it, read from its\n\
         registers) and hands virtio every frame at once; *pacing off* on the ne2k is how it was\n\
         before the fix, *pacing forced on* on virtio is what pacing (by bursts of 8 frames /\n\
         12 KiB until the guest transmits or 10 ms pass) would cost there;\n\
         *v86 FetchNetworkAdapter* is v86's own fetch backend on the same page (http only: it does\n\
         not terminate TLS). *in-page source* is *c2w-net-proxy* with a `fetch` hook that answers\n\
         `/blob/N` with N bytes made in the page and `/echo` itself (the demo's `?source=page`):\n\
         the same guest, emulator, NIC and stack with no network behind them, so the ceiling of\n\
         this path. *guest saw* is, per download, the guest kernel's `TCPOFOQueue` (segments that\n\
         arrived after a gap: a frame lost on the way in) / `TCPDSACKOldSent` (segments that\n\
         arrived twice: what we sent again though it had arrived); *NIC did not take* is what the\n\
         adapter saw v86 drop (virtio: no receive buffer; the paced ne2k: not stored in its ring;\n\
         — where it cannot tell); *wasm* is the proxy's wasm\n\
         memory after the run. The relay rows use one wisp-js 0.5.0 server on loopback:\n\
         *c2w-net-proxy via relay* is the same adapter with `relay` set (`?relay=`), the guest's\n\
         curl going straight to `{RELAY_ORIGIN}:PORT` (no proxy; `relay.hosts` maps the name to\n\
         127.0.0.1), so every connection is a raw Wisp stream and https is end to end (the guest\n\
         trusts the origin's test CA); *v86 WispNetworkAdapter* is v86's own Wisp backend\n\
         (`net_device.relay_url = \"wisp://...\"`) on the same server, the guest's curl going to\n\
         127.0.0.1:PORT (routed out of its NIC: v86 asks the relay for the address the guest\n\
         connected to), https end to end too. A transfer that does not finish within\n\
         {TRANSFER_SECS} s is marked stalled with what arrived.{kept}\n\n\
         | NIC | backend | {} | guest saw (out of order / twice) | NIC did not take | wasm | NIC watchdog | pacer |\n\
         |---|---|{}---|---:|---:|---|---|\n",
        MEASURES
            .iter()
            .map(|(l, _)| *l)
            .collect::<Vec<_>>()
            .join(" | "),
        "---:|".repeat(MEASURES.len()),
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
    text.push_str(&measured.ratios(&mut entries));
    publish(HEADING, &text, entries)
}

/// The shipped adapter's row, the ceiling it is compared with, and the peer.
const OURS: &str = "c2w-net-proxy";
const CEILING: &str = "c2w-net-proxy, in-page source";
const PEER: &str = "v86 FetchNetworkAdapter";

/// This run's figures that finished: (NIC, backend, column) → MB/s or ms.
#[derive(Default)]
struct Measured(std::collections::BTreeMap<(&'static str, &'static str, &'static str), f64>);

impl Measured {
    /// The shipped adapter against the in-page ceiling and v86's fetch backend, per NIC and
    /// column, where this run measured both sides (a table, and `tab/.../ratio` entries).
    fn ratios(&self, entries: &mut Vec<Value>) -> String {
        let mut lines = Vec::new();
        for nic in NICS {
            for (label, measure) in MEASURES {
                let Some(&ours) = self.0.get(&(nic, OURS, label)) else {
                    continue;
                };
                // Higher is better for MB/s, lower for latency: a ratio above 1 is ours ahead.
                let ahead = |other: f64| match measure {
                    Measure::Requests { .. } => other / ours,
                    _ => ours / other,
                };
                let mut cells = Vec::new();
                for (against, key) in [("ceiling", CEILING), ("v86-fetch", PEER)] {
                    match self.0.get(&(nic, key, label)) {
                        Some(&other) if other > 0.0 && ours > 0.0 => {
                            entries.push(json!({
                                "name": format!("tab/{nic}/{OURS}/{label}/vs {against}"),
                                "unit": "ratio",
                                "value": ahead(other),
                                "reference": other,
                            }));
                            cells.push(format!("{:.2}×", ahead(other)));
                        }
                        _ => cells.push("—".to_string()),
                    }
                }
                lines.push(format!("| {nic} | {label} | {} |", cells.join(" | ")));
            }
        }
        if lines.is_empty() {
            return String::new();
        }
        format!(
            "\nIn this run, *c2w-net-proxy* against its ceiling (*in-page source*) and against v86's\n\
             fetch backend on the same NIC (above 1: ours is faster; for requests, the other's\n\
             median over ours):\n\n\
             | NIC | measure | of the ceiling | of v86 FetchNetworkAdapter |\n|---|---|---:|---:|\n{}\n",
            lines.join("\n")
        )
    }
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

/// Reads the result line of one measurement: `tab label=LABEL rc=RC result=BYTES:SECS` for a
/// transfer, `tab label=LABEL result=OK:MEDIAN:P90` for small requests.
fn parse(out: &str, label: &str, measure: Measure) -> Result<Outcome> {
    let line = out
        .lines()
        .find(|l| l.starts_with(&format!("tab label={label} ")))
        .ok_or_else(|| anyhow::anyhow!("no result line for {label}"))?;
    let result: Vec<&str> = field(line, "result=").split(':').collect();
    let number = |i: usize| result.get(i).and_then(|v| v.trim().parse::<f64>().ok());
    Ok(match measure {
        Measure::Requests { .. } => Outcome::Requests {
            ok: number(0).unwrap_or(0.0) as usize,
            median: number(1).unwrap_or(0.0),
            p90: number(2).unwrap_or(0.0),
        },
        _ => Outcome::Transfer {
            rc: field(line, "rc=").to_string(),
            bytes: number(0).unwrap_or(0.0),
            secs: number(1).unwrap_or(0.0),
        },
    })
}

/// The guest kernel's TCP counters as it printed them after each measurement
/// (`tab nh x NAMES...` once, `tab ns LABEL VALUES...` after each).
struct GuestTcp {
    /// (label, counter name → value), in the order printed; `start` first.
    samples: Vec<(String, std::collections::HashMap<String, i64>)>,
}

/// What the guest's counters moved by during one measurement.
#[derive(Debug, Default, PartialEq)]
struct TcpDelta {
    /// `TcpExt: TCPOFOQueue`: segments queued out of order (one arrived after a gap).
    out_of_order: i64,
    /// `TcpExt: TCPDSACKOldSent`: segments that arrived a second time.
    duplicates: i64,
}

impl GuestTcp {
    fn read(out: &str) -> Self {
        let names: Vec<String> = out
            .lines()
            .find_map(|l| l.strip_prefix("tab nh x "))
            .map(|l| qualified(l.split_whitespace()))
            .unwrap_or_default();
        let samples = out
            .lines()
            .filter_map(|l| l.strip_prefix("tab ns "))
            .filter_map(|l| {
                let mut words = l.split_whitespace();
                let label = words.next()?.to_string();
                let values = words.map(|w| w.parse::<i64>().ok());
                let map = names
                    .iter()
                    .zip(values)
                    .filter_map(|(n, v)| Some((n.clone(), v?)))
                    .collect();
                Some((label, map))
            })
            .collect();
        Self { samples }
    }

    /// The change from the sample before `label`'s to `label`'s; zero when either is missing.
    fn during(&self, label: &str) -> TcpDelta {
        let Some(i) = self.samples.iter().position(|(l, _)| l == label) else {
            return TcpDelta::default();
        };
        if i == 0 {
            return TcpDelta::default();
        }
        let (before, after) = (&self.samples[i - 1].1, &self.samples[i].1);
        let delta = |name: &str| after.get(name).unwrap_or(&0) - before.get(name).unwrap_or(&0);
        TcpDelta {
            out_of_order: delta("TcpExt.TCPOFOQueue"),
            duplicates: delta("TcpExt.TCPDSACKOldSent"),
        }
    }
}

/// Counter names as `Section.Name` (`TcpExt.TCPOFOQueue`, `Tcp.InSegs`): the words of the
/// kernel's header lines, where a word ending in `:` starts a section.
fn qualified<'a>(words: impl Iterator<Item = &'a str>) -> Vec<String> {
    let mut section = "";
    words
        .map(|w| match w.strip_suffix(':') {
            Some(s) => {
                section = s;
                w.to_string()
            }
            None => format!("{section}.{w}"),
        })
        .collect()
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
        assert_eq!(picked(&[]).len(), 14);
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
    fn every_script_fits_busybox_line_editor() {
        let to = Targets {
            http: ("http://127.0.0.1:40001".into(), 40001),
            https: ("https://127.0.0.1:40002".into(), 40002),
            pages_port: 40003,
        };
        for backend in BACKENDS {
            let text = script(backend, &to);
            for line in text.lines() {
                assert!(line.len() < 1000, "{}: {} bytes", backend.name, line.len());
            }
            let line = text;
            assert!(line.contains("t 16-MiB-upload-http size_upload"));
            for part in [
                "seq 100 199",
                "/blob/[100-199]'",
                "sed -n 50p",
                "sed -n 90p",
            ] {
                assert!(line.contains(part), "{}: no {part}", backend.name);
            }
            assert_eq!(
                line.contains("16-MiB-https"),
                backend.https,
                "{}",
                backend.name
            );
        }
    }

    #[test]
    fn guest_counters_are_read_as_deltas_per_measurement() {
        let out = "\
tab nh x TcpExt: SyncookiesSent TCPOFOQueue TCPDSACKOldSent Tcp: InSegs\n\
tab ns start TcpExt: 0 5 1 Tcp: 100\n\
tab label=16-MiB-http rc=0 result=16777216:2.5\n\
tab ns 16-MiB-http TcpExt: 0 9 4 Tcp: 12000\n\
tab ns 64-MiB-http TcpExt: 0 9 10 Tcp: 50000\n";
        let tcp = GuestTcp::read(out);
        assert_eq!(
            tcp.during("16-MiB-http"),
            TcpDelta {
                out_of_order: 4,
                duplicates: 3
            }
        );
        assert_eq!(
            tcp.during("64-MiB-http"),
            TcpDelta {
                out_of_order: 0,
                duplicates: 6
            }
        );
        assert_eq!(tcp.during("missing"), TcpDelta::default());
        let outcome = parse(out, "16-MiB-http", MEASURES[0].1).unwrap();
        assert!(outcome.ok());
        assert!((outcome.value().0 - 6.71).abs() < 0.01);
        let requests = parse(
            "tab label=ka result=100:0.004:0.009\n",
            "ka",
            Measure::Requests { keep_alive: true },
        )
        .unwrap();
        assert_eq!(requests.cell(), "4.0 ms (p90 9.0)");
        let short = parse(
            "tab label=ka result=37::\n",
            "ka",
            Measure::Requests { keep_alive: true },
        )
        .unwrap();
        assert_eq!(short.cell(), "**failed**: 37 of 100 answered");
    }

    #[test]
    fn ratios_compare_ours_with_the_ceiling_and_the_peer_where_both_ran() {
        let mut m = Measured::default();
        m.0.insert(("virtio", OURS, "64 MiB http"), 8.0);
        m.0.insert(("virtio", CEILING, "64 MiB http"), 10.0);
        m.0.insert(("virtio", PEER, "64 MiB http"), 2.0);
        m.0.insert(("virtio", OURS, "100 requests, keep-alive"), 20.0);
        m.0.insert(("virtio", CEILING, "100 requests, keep-alive"), 10.0);
        m.0.insert(("ne2k", CEILING, "64 MiB http"), 10.0);
        let mut entries = Vec::new();
        let text = m.ratios(&mut entries);
        assert!(
            text.contains("| virtio | 64 MiB http | 0.80× | 4.00× |"),
            "{text}"
        );
        assert!(
            text.contains("| virtio | 100 requests, keep-alive | 0.50× | — |"),
            "{text}"
        );
        assert!(!text.contains("ne2k"), "{text}");
        assert_eq!(entries.len(), 3);
        assert!(Measured::default().ratios(&mut entries).is_empty());
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
