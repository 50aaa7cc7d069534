//! `cargo xtask e2e --browser [chromium|firefox] [FILTER]`: the browser build of the proxy in a
//! real headless browser, with a real Linux guest (a network namespace behind a TAP device)
//! reaching the page over a TAP-to-WebSocket bridge. The page's `fetch()` goes only to origin
//! servers on loopback; the checks run in the guest and are judged there.
//!
//! Phases, each with its own guest, bridge and browser process:
//! 1. `e2e.html`: `NetProxy` on the page's main thread, frames over the bridge.
//! 2. `c2w.html`: the page's main thread plays container2wasm's relay over a SharedArrayBuffer
//!    with `dist/stack-worker.js` as the proxy worker; the bridge is the VM side.
//! 3. `e2e.html` behind a bridge that injects faults (with no filter, or `faults`).
//! 4. `e2e.html` with `config.relay`, once per real Wisp server ([`relay`]; with no filter,
//!    or alone with `relay[ wisp-js|wisp-python]`).
//! 5. `inbound.html`: the page reaching servers in the guest (`fetchGuest`, `connect`,
//!    `probe`, the `guest-sw.js` preview) ([`inbound`]; with no filter, or alone with `inbound`).
//! 6. `e2e.html` with rewrites to a WebSocket echo server: the guest's WebSockets through the
//!    page's `WebSocket` ([`websocket`]; with no filter, or alone with `websocket`).
//!
//! The HTTPS origin's certificate comes from a test CA no browser trusts. Rather than hide the
//! HTTPS origin behind a rewrite to plain HTTP, the browser is made to trust it for this run
//! only: Chromium with `--ignore-certificate-errors-spki-list` (the origin key's hash; the flag
//! takes effect because the profile directory is explicit), Firefox with the test CA added to
//! the fresh profile's own NSS database. So `fetch()` really speaks TLS to the origin.

mod checks;
mod inbound;
mod load;
mod relay;
mod websocket;

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::harness::bridge::{Bridge, FaultCounts, FaultPlan};
use crate::harness::browser::launch::{Browser, Kind, LaunchSpec};
use crate::harness::browser::page_server::PageServer;
use crate::harness::browser::{save_ca, snapshot_dist, PACKAGE_FILES};
use crate::harness::cleanup;
use crate::harness::guest::Guest;
use crate::harness::guest::GuestNs;
use crate::harness::origins::{Cors, FaultOrigin, Origin, OriginFiles};
use crate::report::Report;
use crate::tools::{ensure_programs, is_root, workspace_root};
use checks::{PLAIN_NAME, SECURE_NAME};

/// Wasm memory growth allowed during the 100 MB download.
const MEMORY_BOUND: u64 = 32 << 20;
/// Size of the big download.
const BIG: usize = 100_000_000;

/// Everything both phases share.
struct Shared {
    kind: Kind,
    dir: PathBuf,
    files: OriginFiles,
    http: Origin,
    https: Origin,
    nocors: Origin,
    /// The origin that resets mid-body and never answers.
    fault: FaultOrigin,
    pages: PageServer,
}

/// Entry point: `args` are what follows `--browser` (an optional browser name, then an
/// optional check filter).
pub fn run(args: &[String]) -> Result<()> {
    // The filter may be several words (`relay wisp-js`), quoted or not.
    let joined = |rest: &[String]| Some(rest.join(" ")).filter(|f| !f.is_empty());
    let (kind, filter) = match args.first().map(String::as_str) {
        Some("chromium" | "chrome" | "firefox" | "firefox-esr") => {
            (Kind::parse(&args[0])?, joined(&args[1..]))
        }
        _ => (Kind::Chromium, joined(args)),
    };
    if !is_root() {
        bail!("e2e --browser needs root (TAP devices and network namespaces); run it as root");
    }
    ensure_programs(&[
        ("busybox", "busybox"),
        ("udhcpc", "udhcpc"),
        ("/etc/udhcpc/default.script", "udhcpc"),
        ("curl", "curl"),
        ("openssl", "openssl"),
        ("ip", "iproute2"),
        ("ping", "iputils-ping"),
        ("timeout", "coreutils"),
        ("sha256sum", "coreutils"),
        ("base64", "coreutils"),
    ])?;
    kind.ensure_installed()?;
    let root = workspace_root();
    let dist = root.join("dist");
    if !PACKAGE_FILES.iter().all(|f| dist.join(f).is_file()) {
        eprintln!("xtask: dist/ is missing or incomplete; running build-wasm");
        crate::build::wasm::run_build(&[])?;
    }
    println!("xtask: e2e-browser with {}", kind.version());

    let _guard = cleanup::Guard;
    let dir = root.join("target/e2e-browser");
    std::fs::create_dir_all(&dir)?;
    // The pages load a copy, so a build-wasm running meanwhile cannot change files under them.
    let dist = snapshot_dist(&dist, &dir.join("dist"))?;
    let files = OriginFiles::create(&dir.join("origin")).context("creating the origin's files")?;
    let http = Origin::http(&files, Cors::On)?;
    let https = Origin::https(&files, Cors::On)?;
    let nocors = Origin::http(&files, Cors::Off)?;
    let fault = FaultOrigin::start()?;
    let config = serde_json::json!({
        "timeout": format!("{}ms", load::PAGE_TIMEOUT.as_millis()),
        "origins": {
            "http": http.base_url(),
            "https": https.base_url(),
            "nocors": nocors.base_url(),
        },
        "rewrites": [
            { "host": PLAIN_NAME, "url": http.base_url() },
            { "host": SECURE_NAME, "url": https.base_url() },
        ],
    })
    .to_string();
    let pages = PageServer::start(&root.join("xtask/browser"), &dist, config)?;
    let shared = Shared {
        kind,
        dir,
        files,
        http,
        https,
        nocors,
        fault,
        pages,
    };

    // `relay[ SERVER]` runs the relay phase alone (against one Wisp server if named).
    let relay_only = filter
        .as_deref()
        .and_then(|f| f.strip_prefix("relay"))
        .map(|rest| rest.trim().to_string());
    let faults_wanted = filter
        .as_deref()
        .is_none_or(|f| "faults".contains(f) || f.starts_with("faults"));
    let mut r = Report::filtered(if relay_only.is_some() {
        None
    } else {
        filter.clone()
    });
    if let Some(server) = &relay_only {
        relay::phase(&shared, &mut r, server)?;
    } else if filter.as_deref() == Some("websocket") {
        websocket::phase(&shared, &mut r)?;
    } else if filter.as_deref() == Some("inbound") {
        inbound::phase(&shared, &mut r)?;
    } else {
        netproxy_phase(&shared, &mut r)?;
        c2w_phase(&shared, &mut r)?;
        if faults_wanted {
            faults_phase(&shared, &mut r)?;
        }
        if filter.is_none() {
            inbound::phase(&shared, &mut r)?;
            relay::phase(&shared, &mut r, "")?;
            websocket::phase(&shared, &mut r)?;
        }
    }
    drop(shared);
    r.finish("e2e-browser")
}

/// One phase's guest, bridge and browser, torn down in reverse order when dropped.
struct Phase {
    browser: Option<Browser>,
    guest: GuestNs,
    bridge: Bridge,
    work: PathBuf,
}

impl Phase {
    fn start(shared: &Shared, name: &str, page: &str, query: &str) -> Result<Self> {
        Self::start_with_faults(shared, name, page, query, None)
    }

    /// [`start`](Self::start) with a bridge that injects `faults` in both directions.
    fn start_with_faults(
        shared: &Shared,
        name: &str,
        page: &str,
        query: &str,
        faults: Option<FaultPlan>,
    ) -> Result<Self> {
        let id = std::process::id();
        // Interface names are at most 15 bytes.
        let tap = format!("c2wb{}{}", &name[..1], id % 1_000_000);
        let bridge = Bridge::start_with_faults(&tap, faults)?;
        let work = shared.dir.join(format!("{name}-work"));
        let guest = GuestNs::behind(&format!("c2w-b{name}-{id}"), &tap, &work)?;
        shared.pages.board.clear();
        let url = format!(
            "{}/{page}?{query}{}ws={}",
            shared.pages.base,
            if query.is_empty() { "" } else { "&" },
            bridge.port
        );
        let spec = LaunchSpec {
            dir: &shared.dir.join(format!("{name}-{}", shared.kind.name())),
            origin_cert: shared.files.server_cert(),
            origin_ca: &shared.files.ca_cert,
        };
        let browser = Browser::start(shared.kind, &url, &spec)?;
        Ok(Self {
            browser: Some(browser),
            guest,
            bridge,
            work,
        })
    }

    /// Waits for the page's `ready` and `ca`, and the bridge's client; saves the CA for the
    /// guest. Returns the PEM.
    fn wait_ready(&mut self, shared: &Shared, ca_file: &Path) -> Result<String> {
        let board = &shared.pages.board;
        let waited = board
            .wait("ready", 0, Duration::from_secs(90))
            .and_then(|_| board.wait("ca", 0, Duration::from_secs(30)));
        let (_, pem) = match waited {
            Ok(v) => v,
            Err(e) => {
                let tail = self
                    .browser
                    .as_ref()
                    .map(|b| b.log_tail(25))
                    .unwrap_or_default();
                bail!("{e:#}\n--- browser log tail ---\n{tail}");
            }
        };
        save_ca(&pem, ca_file)?;
        if self.bridge.clients() == 0 {
            bail!("the page is ready but never connected to the bridge");
        }
        Ok(pem)
    }

    /// The checks a phase's page ends with: no page errors (with the bridge's summary and the
    /// page's last stats), then the browser still running.
    fn closing_checks(
        &mut self,
        shared: &Shared,
        r: &mut Report,
        label: &str,
        ready: &Result<String>,
    ) {
        r.check(
            &format!("{label}: no page errors; the stats after the checks"),
            || {
                need(ready)?;
                if let Some((_, errors)) = shared.pages.board.get("page-error") {
                    bail!("the page reported: {errors}");
                }
                let stats = latest_stats(shared)?;
                Ok(format!("{}; {}", self.bridge.summary(), compact(&stats)))
            },
        );
        r.check(&format!("{label}: browser still running"), || {
            self.browser_alive()
        });
    }

    fn browser_alive(&mut self) -> Result<String> {
        let Some(b) = self.browser.as_mut() else {
            bail!("no browser")
        };
        if b.is_running() {
            Ok(format!("{} still running", b.kind.name()))
        } else {
            bail!("the browser exited: {}", b.log_tail(25))
        }
    }
}

impl Drop for Phase {
    fn drop(&mut self) {
        // The browser first (it holds the WebSocket), then the guest, then the TAP.
        drop(self.browser.take());
    }
}

/// Fails a check fast when the page never came up (instead of letting each time out).
fn need(ready: &Result<String>) -> Result<()> {
    match ready {
        Ok(_) => Ok(()),
        Err(e) => bail!("page not running: {}", first_line(&format!("{e:#}"))),
    }
}

fn first_line(s: &str) -> String {
    s.lines().next().unwrap_or("").to_string()
}

/// The next stats snapshot the page posts (every 250 ms while anything moves, every 5 s when
/// idle).
fn fresh_stats(shared: &Shared) -> Result<serde_json::Value> {
    let board = &shared.pages.board;
    let seen = board.get("stats").map(|(n, _)| n).unwrap_or(0);
    let (_, text) = board.wait("stats", seen, Duration::from_secs(10))?;
    serde_json::from_str(&text).with_context(|| format!("stats are not JSON: {text}"))
}

fn wasm_memory(stats: &serde_json::Value) -> Result<u64> {
    stats
        .get("wasmMemoryBytes")
        .and_then(|v| v.as_f64())
        .map(|v| v as u64)
        .with_context(|| format!("stats() has no wasmMemoryBytes: {stats}"))
}

fn netproxy_phase(shared: &Shared, r: &mut Report) -> Result<()> {
    let mut phase = Phase::start(shared, "netproxy", "e2e.html", "")?;
    let ca_file = shared.dir.join("proxy-ca-netproxy.pem");
    let ready = phase.wait_ready(shared, &ca_file);
    let pem = ready.as_ref().cloned().unwrap_or_default();
    r.check(
        "page: e2e.html creates NetProxy, exports its CA, connects to the bridge",
        || {
            ready.as_ref().map_err(|e| anyhow::anyhow!("{e:#}"))?;
            let agent = shared.pages.board.get("ready").unwrap_or_default().1;
            Ok(format!("CA of {} bytes; {agent}", pem.len()))
        },
    );
    let g = Guest {
        ns: &phase.guest,
        ca: ca_file.clone(),
        work: phase.work.clone(),
    };
    let http = shared.http.base_url();
    let https = shared.https.base_url();
    r.check(
        "dhcp: udhcpc gets 192.168.127.3, default route and DNS from the page",
        || {
            need(&ready)?;
            g.dhcp()
        },
    );
    r.check("icmp: ping the gateway 192.168.127.1", || {
        need(&ready)?;
        g.ping("192.168.127.1")
    });
    r.check("icmp: ping the proxy 192.168.127.253", || {
        need(&ready)?;
        g.ping("192.168.127.253")
    });
    r.check("dns: nslookup some.name.test via 192.168.127.1", || {
        need(&ready)?;
        g.nslookup()
    });
    r.check(
        "proxy: http://192.168.127.253/ca.pem is the page's CA",
        || {
            need(&ready)?;
            g.own_ca(&pem)
        },
    );
    r.check("curl http: GET through the page's fetch()", || {
        need(&ready)?;
        g.get_hello(&http)
    });
    r.check("curl https: GET through the page's fetch()", || {
        need(&ready)?;
        g.get_hello(&https)
    });
    r.check(
        "curl http: 100 MB download, sha256, wasm memory grows < 32 MiB",
        || {
            need(&ready)?;
            let before = fresh_stats(shared)?;
            let mem_before = wasm_memory(&before)?;
            let rate = g.download(&http, BIG, Duration::from_secs(400))?;
            let after = fresh_stats(shared)?;
            let mem_after = wasm_memory(&after)?;
            let growth = mem_after.saturating_sub(mem_before);
            let heap = after
                .get("jsHeapUsed")
                .and_then(|v| v.as_f64())
                .map(|v| format!(", JS heap {:.1} MiB", v / 1048576.0))
                .unwrap_or_default();
            if growth >= MEMORY_BOUND {
                bail!(
                    "wasm memory grew {} MiB ({} -> {} bytes) for a {BIG}-byte body",
                    growth >> 20,
                    mem_before,
                    mem_after
                );
            }
            Ok(format!(
                "sha256 ok, {rate:.1} MB/s, wasm memory {:.1} -> {:.1} MiB{heap}",
                mem_before as f64 / 1048576.0,
                mem_after as f64 / 1048576.0
            ))
        },
    );
    r.check("curl https: 10 MiB download, sha256", || {
        need(&ready)?;
        let rate = g.download(&https, 10 << 20, Duration::from_secs(120))?;
        Ok(format!("sha256 ok, {rate:.1} MB/s"))
    });
    r.check("curl http: 8 MiB POST --data-binary", || {
        need(&ready)?;
        g.upload(&http, 8 << 20, false)
    });
    r.check("curl https: 8 MiB POST --data-binary", || {
        need(&ready)?;
        g.upload(&https, 8 << 20, false)
    });
    r.check("curl http: chunked upload of 3 MiB", || {
        need(&ready)?;
        g.upload(&http, 3 << 20, true)
    });
    r.check(
        "transparent: curl http://plain.test/ without proxy variables",
        || {
            need(&ready)?;
            g.transparent(&format!("http://{PLAIN_NAME}"))
        },
    );
    r.check(
        "transparent: curl https://secure.test/ without proxy variables",
        || {
            need(&ready)?;
            g.transparent(&format!("https://{SECURE_NAME}"))
        },
    );
    r.check(
        "cors: an origin without CORS headers gives a 502 naming the URL and the refusal",
        || {
            need(&ready)?;
            g.no_cors(&shared.nocors.base_url())
        },
    );
    r.check(
        "cookie (control): the page's own credentialed fetch sends the planted cookie",
        || {
            need(&ready)?;
            let (_, echo) = shared
                .pages
                .board
                .get("cookie-control")
                .context("the page did not report its cookie control")?;
            expect_cookie(&echo)
        },
    );
    r.check(
        "credentials: the origin sees no Cookie on the guest's requests",
        || {
            need(&ready)?;
            g.no_cookie(&http)
        },
    );
    r.check("curl: a 404 from the origin arrives with its body", || {
        need(&ready)?;
        g.not_found(&http)
    });
    r.check(
        "curl: a redirect arrives followed, with X-Fetch-Redirected: true",
        || {
            need(&ready)?;
            g.redirect(&http)
        },
    );
    r.check(
        "curl: a destination outside allow=loopback gets 403",
        || {
            need(&ready)?;
            g.denied()
        },
    );
    load::checks(shared, &g, &ready, r);
    r.check(
        "page: no uncaught errors; stats count the proxied requests",
        || {
            need(&ready)?;
            if let Some((_, errors)) = shared.pages.board.get("page-error") {
                bail!("the page reported: {errors}");
            }
            let stats = fresh_stats(shared)?;
            Ok(format!(
                "{}; stats {}",
                phase.bridge.summary(),
                compact(&stats)
            ))
        },
    );
    drop(g);
    r.check("browser: still running after the checks", || {
        phase.browser_alive()
    });
    drop(phase);
    Ok(())
}

fn expect_cookie(echo: &str) -> Result<String> {
    let line = echo
        .lines()
        .find(|l| l.to_ascii_lowercase().starts_with("cookie:"))
        .with_context(|| format!("no Cookie header in the page's own request: {echo:?}"))?;
    if !line.contains("c2w_probe=page-profile-secret") {
        bail!("the page's cookie is not the planted one: {line}");
    }
    Ok("the profile holds c2w_probe for the origin".into())
}

/// The page's latest stats post (every 250 ms while anything changes).
fn latest_stats(shared: &Shared) -> Result<serde_json::Value> {
    let (_, text) = shared
        .pages
        .board
        .get("stats")
        .context("the page has posted no stats yet")?;
    serde_json::from_str(&text).with_context(|| format!("stats are not JSON: {text}"))
}

/// Stats in one short line: the numeric fields only.
fn compact(stats: &serde_json::Value) -> String {
    fn walk(prefix: &str, v: &serde_json::Value, out: &mut Vec<String>) {
        match v {
            serde_json::Value::Object(map) => {
                for (k, v) in map {
                    let key = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    walk(&key, v, out);
                }
            }
            serde_json::Value::Number(n) => out.push(format!("{prefix}={n}")),
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk("", stats, &mut out);
    out.join(" ")
}

fn c2w_phase(shared: &Shared, r: &mut Report) -> Result<()> {
    let mut phase = Phase::start(
        shared,
        "c2w",
        "c2w.html",
        "net=browser&proxy-allow=loopback&proxy-timeout-ms=30000&proxy-log=warn",
    )?;
    let ca_file = shared.dir.join("proxy-ca-c2w.pem");
    let ready = phase.wait_ready(shared, &ca_file);
    r.check(
        "c2w: stack-worker.js delivers the CA with send_cert through the relay",
        || {
            let pem = ready.as_ref().map_err(|e| anyhow::anyhow!("{e:#}"))?;
            if pem.len() > 4096 {
                bail!(
                    "the CA PEM is {} bytes; the relay's buffer holds 4096",
                    pem.len()
                );
            }
            let counts = shared
                .pages
                .board
                .get("stats")
                .map(|(_, s)| s)
                .unwrap_or_default();
            Ok(format!(
                "CA of {} bytes; {}",
                pem.len(),
                first_line(&counts)
            ))
        },
    );
    let g = Guest {
        ns: &phase.guest,
        ca: ca_file.clone(),
        work: phase.work.clone(),
    };
    r.check(
        "dhcp (c2w relay): udhcpc gets 192.168.127.3 through stack-worker.js",
        || {
            need(&ready)?;
            g.dhcp()
        },
    );
    r.check(
        "c2w: curl https through the worker, trusting the send_cert CA",
        || {
            need(&ready)?;
            g.get_hello(&shared.https.base_url())
        },
    );
    r.check(
        "c2w: 16 MiB http download through the relay, sha256",
        || {
            need(&ready)?;
            let rate = g.download(&shared.http.base_url(), 16 << 20, Duration::from_secs(240))?;
            Ok(format!("sha256 ok, {rate:.1} MB/s"))
        },
    );
    r.check(
        "c2w: relay saw only known requests and no page errors",
        || {
            need(&ready)?;
            if let Some((_, errors)) = shared.pages.board.get("page-error") {
                bail!("the page reported: {errors}");
            }
            let stats = fresh_stats(shared)?;
            let unknown = stats
                .pointer("/relay/unknown")
                .and_then(|v| v.as_array())
                .map(|a| a.len())
                .unwrap_or(0);
            if unknown > 0 {
                bail!("unknown request types: {stats}");
            }
            Ok(format!("{}; {}", phase.bridge.summary(), compact(&stats)))
        },
    );
    drop(g);
    r.check("c2w: browser still running after the checks", || {
        phase.browser_alive()
    });
    drop(phase);
    Ok(())
}

/// The faults the third phase's bridge injects in both directions.
const FAULTS: &str = "loss=5%,dup=1%,reorder=1%,delay=10ms,seed=21";
/// Download size per scheme under faults.
const FAULT_DOWNLOAD: usize = 1 << 20;
/// Upload size under faults.
const FAULT_UPLOAD: usize = 2 << 20;

/// `e2e.html` again, behind a bridge that loses, duplicates, reorders and delays frames in
/// both directions: downloads over http and https and an upload stay byte-exact.
fn faults_phase(shared: &Shared, r: &mut Report) -> Result<()> {
    let spec: FaultPlan = FAULTS.parse()?;
    let mut phase = Phase::start_with_faults(shared, "faults", "e2e.html", "", Some(spec))?;
    let ca_file = shared.dir.join("proxy-ca-faults.pem");
    let ready = phase.wait_ready(shared, &ca_file);
    r.check(
        &format!("faults: e2e.html up behind a bridge with {FAULTS}"),
        || {
            ready.as_ref().map_err(|e| anyhow::anyhow!("{e:#}"))?;
            Ok("ready, CA exported".into())
        },
    );
    let g = Guest {
        ns: &phase.guest,
        ca: ca_file.clone(),
        work: phase.work.clone(),
    };
    r.check(
        "dhcp (faults): udhcpc gets 192.168.127.3 through the lossy bridge",
        || {
            need(&ready)?;
            g.dhcp()
        },
    );
    for (scheme, base) in [
        ("http", shared.http.base_url()),
        ("https", shared.https.base_url()),
    ] {
        r.check(
            &format!(
                "faults: curl {scheme} {} MiB download, sha256",
                FAULT_DOWNLOAD >> 20
            ),
            || {
                need(&ready)?;
                let rate = g.download(&base, FAULT_DOWNLOAD, Duration::from_secs(180))?;
                Ok(format!("sha256 ok, {rate:.2} MB/s"))
            },
        );
    }
    r.check(
        &format!(
            "faults: curl https {} MiB POST --data-binary, sha256",
            FAULT_UPLOAD >> 20
        ),
        || {
            need(&ready)?;
            g.upload(&shared.https.base_url(), FAULT_UPLOAD, false)
        },
    );
    drop(g);
    r.check(
        "faults: the bridge lost, duplicated, reordered and delayed frames",
        || {
            need(&ready)?;
            let Some([to_guest, to_page]) = phase.bridge.fault_stats() else {
                bail!("the bridge reports no fault counters");
            };
            let sum = |f: fn(&FaultCounts) -> u64| f(&to_guest) + f(&to_page);
            let lost = sum(|s| s.lost);
            let passed = sum(|s| s.passed);
            let rate = lost as f64 / (lost + passed).max(1) as f64;
            if !(0.03..=0.07).contains(&rate)
                || sum(|s| s.duplicated) == 0
                || sum(|s| s.reordered) == 0
                || sum(|s| s.delayed) < passed / 2
            {
                bail!("faults not applied as asked: {}", phase.bridge.summary());
            }
            Ok(phase.bridge.summary())
        },
    );
    r.check("faults: browser still running after the checks", || {
        phase.browser_alive()
    });
    drop(phase);
    Ok(())
}
