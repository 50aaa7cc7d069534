//! The paths the network benchmark measures, each a [`Route`]: the host talking to the origins
//! directly (the reference), and a guest namespace behind the native runner, behind the wasm
//! build in headless Chromium (over the TAP-to-WebSocket bridge), behind the
//! container2wasm drop-in worker and relay in the same browser, and behind the native runner
//! with a Wisp relay (real servers) carrying raw TCP.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use super::workload::{Route, Scheme};
use crate::harness::bridge::Bridge;
use crate::harness::browser::launch::{Browser, Kind, LaunchSpec};
use crate::harness::browser::page_server::PageServer;
use crate::harness::browser::save_ca;
use crate::harness::guest::{text, Guest, GuestNs, Runner, PROXY};
use crate::harness::origins::{Cors, Origin, OriginFiles};
use crate::harness::procfs;
use crate::harness::relays::{WispServer, WispServerKind};

/// The origins every route reaches, and the test CA of the HTTPS one.
pub struct Origins {
    /// Plain HTTP origin (CORS on, so the browser routes can fetch it).
    pub http: Origin,
    /// HTTPS origin.
    pub https: Origin,
    /// The test CA that signed the HTTPS origin's certificate.
    pub ca: PathBuf,
    /// The HTTPS origin's certificate (Chromium trusts its key for the run).
    pub server_cert: PathBuf,
}

impl Origins {
    /// Starts the HTTP and HTTPS origins (certificate from `files`' test CA).
    pub fn start(files: &OriginFiles) -> Result<Self> {
        Ok(Self {
            http: Origin::http(files, Cors::On)?,
            https: Origin::https(files, Cors::On)?,
            ca: files.ca_cert.clone(),
            server_cert: files.server_cert().to_path_buf(),
        })
    }
}

/// Names under this suffix are rewritten to the HTTPS origin: each is a host the proxy has not
/// issued a leaf for yet.
pub const FRESH_SUFFIX: &str = "h.bench.test";

/// Runs `script` with `sh -c` within `limit`, returning stdout or an error with all output.
fn sh_output(mut cmd: Command, script: &str) -> Result<String> {
    let out = cmd
        .output()
        .with_context(|| format!("running `{script}`"))?;
    if !out.status.success() {
        bail!("`{script}` failed ({}): {}", out.status, text(&out));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The host itself, talking to the origins on loopback: the physical reference.
pub struct Direct<'a> {
    /// The origins.
    pub origins: &'a Origins,
    /// Scratch directory.
    pub scratch: PathBuf,
}

impl Route for Direct<'_> {
    fn name(&self) -> String {
        "direct".into()
    }

    fn sh(&self, script: &str, limit: Duration) -> Result<String> {
        let mut cmd = Command::new("timeout");
        cmd.arg("--kill-after=2")
            .arg(format!("{}", limit.as_secs_f64()))
            .args(["sh", "-c", script])
            .env_remove("http_proxy")
            .env_remove("https_proxy")
            .env_remove("HTTP_PROXY")
            .env_remove("HTTPS_PROXY")
            .env_remove("ALL_PROXY")
            .env_remove("all_proxy");
        sh_output(cmd, script)
    }

    fn curl(&self) -> String {
        format!(
            "curl -sS --noproxy '*' --cacert {}",
            self.origins.ca.display()
        )
    }

    fn base(&self, scheme: Scheme) -> Option<String> {
        Some(match scheme {
            Scheme::Http => self.origins.http.base_url(),
            Scheme::Https => self.origins.https.base_url(),
        })
    }

    fn scratch(&self) -> &Path {
        &self.scratch
    }

    /// The one HTTPS origin: the same two requests in new curl processes, as the reference
    /// for the proxied new-host figures.
    fn fresh_https_host(&self, _n: usize) -> Option<String> {
        self.base(Scheme::Https)
    }
}

/// How a guest route's serving side is observed.
pub enum Server {
    /// The native runner process.
    Runner(Runner),
    /// A browser (its process tree) and the page's stats board.
    Browser {
        /// The browser; dropped before the guest.
        browser: Browser,
        /// The page server whose board has the page's `stats` (with `wasmMemoryBytes`).
        pages: std::sync::Arc<crate::harness::browser::page_server::Board>,
        /// The bridge between the guest's TAP and the page.
        _bridge: Bridge,
    },
}

/// A guest namespace reaching the origins through the proxy at 192.168.127.253:80.
pub struct GuestRoute<'a> {
    /// `native`, `browser`, `c2w`, ... (with an `-mtuN` suffix for variants).
    pub name: String,
    /// The serving side (dropped first).
    pub server: Server,
    /// The guest.
    pub ns: GuestNs,
    /// The proxy's CA (PEM file) the guest trusts.
    pub proxy_ca: PathBuf,
    /// The guest's HOME and scratch directory.
    pub work: PathBuf,
    /// The origins.
    pub origins: &'a Origins,
    /// Whether fresh HTTPS names are rewritten to the origin on this route.
    pub fresh_names: bool,
}

impl GuestRoute<'_> {
    /// The shared guest-side checks (DHCP etc.).
    pub fn guest(&self) -> Guest<'_> {
        Guest {
            ns: &self.ns,
            ca: self.proxy_ca.clone(),
            work: self.work.clone(),
        }
    }
}

impl Route for GuestRoute<'_> {
    fn name(&self) -> String {
        self.name.clone()
    }

    fn sh(&self, script: &str, limit: Duration) -> Result<String> {
        self.guest().sh(script, limit)
    }

    fn curl(&self) -> String {
        format!("curl -sS -x {PROXY} --cacert {}", self.proxy_ca.display())
    }

    fn own_pages(&self) -> Option<String> {
        Some(PROXY.trim_end_matches(":80").to_string())
    }

    fn base(&self, scheme: Scheme) -> Option<String> {
        Some(match scheme {
            Scheme::Http => self.origins.http.base_url(),
            Scheme::Https => self.origins.https.base_url(),
        })
    }

    fn scratch(&self) -> &Path {
        &self.work
    }

    fn memory(&self) -> Option<u64> {
        match &self.server {
            Server::Runner(runner) => procfs::rss(runner.pid()),
            Server::Browser { pages, .. } => {
                let (_, text) = pages.get("stats")?;
                let stats: serde_json::Value = serde_json::from_str(&text).ok()?;
                stats.get("wasmMemoryBytes")?.as_f64().map(|v| v as u64)
            }
        }
    }

    fn cpu_time(&self) -> Option<Duration> {
        match &self.server {
            Server::Runner(runner) => procfs::cpu_time(runner.pid()),
            Server::Browser { browser, .. } => procfs::tree_cpu_time(browser.pid()),
        }
    }

    fn fresh_https_host(&self, n: usize) -> Option<String> {
        self.fresh_names.then(|| {
            format!(
                "https://n{n}-{}.{FRESH_SUFFIX}",
                std::process::id() % 100_000
            )
        })
    }
}

/// Starts the native runner `binary` on a TAP, a guest namespace behind it, and runs DHCP.
pub fn native<'a>(
    origins: &'a Origins,
    binary: &Path,
    dir: &Path,
    name: &str,
    extra: &[String],
) -> Result<GuestRoute<'a>> {
    let id = std::process::id();
    let tap = format!("c2wn{}{}", name.len(), id % 1_000_000);
    let proxy_ca = dir.join(format!("proxy-ca-{name}.pem"));
    let _ = std::fs::remove_file(&proxy_ca);
    let mut args = Runner::base_args(&origins.ca, &proxy_ca);
    args.extend([
        "--rewrite".into(),
        format!("*.{FRESH_SUFFIX}={}", origins.https.base_url()),
        "--timeout".into(),
        "2m".into(),
    ]);
    args.extend_from_slice(extra);
    let runner = Runner::start_tap(binary, &tap, &args, dir.join(format!("runner-{name}.log")))?;
    let work = dir.join(format!("{name}-work"));
    let ns = GuestNs::behind(&format!("c2w-bench-{name}-{id}"), &tap, &work)?;
    let route = GuestRoute {
        name: name.to_string(),
        server: Server::Runner(runner),
        ns,
        proxy_ca,
        work,
        origins,
        fresh_names: true,
    };
    route
        .guest()
        .dhcp()
        .context("DHCP behind the native runner")?;
    Ok(route)
}

/// Which page a browser route loads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Page {
    /// `e2e.html`: `NetProxy` on the page's main thread.
    NetProxy,
    /// `c2w.html`: container2wasm's relay on the main thread, `stack-worker.js` as the proxy.
    C2wRelay,
    /// `inbound.html`: `NetProxy` on the main thread reaching servers in the guest (its
    /// `?inbound=<JSON>` plan comes in `extra`).
    Inbound,
}

/// Starts a bridge, a guest namespace behind it and headless Chromium on `page`; waits for the
/// page's CA and runs DHCP.
pub fn browser<'a>(
    origins: &'a Origins,
    pages: &PageServer,
    dir: &Path,
    name: &str,
    page: Page,
) -> Result<GuestRoute<'a>> {
    browser_with(origins, pages, dir, name, page, "")
}

/// Like [`browser`], with `extra` (`key=value&`..., each ending in `&`) added to the page's
/// query (`relay=<JSON>` for `e2e.html`, `inbound=<JSON>` for `inbound.html`).
pub(super) fn browser_with<'a>(
    origins: &'a Origins,
    pages: &PageServer,
    dir: &Path,
    name: &str,
    page: Page,
    extra: &str,
) -> Result<GuestRoute<'a>> {
    let id = std::process::id();
    let tap = format!("c2wb{}{}", name.len(), id % 1_000_000);
    let bridge = Bridge::start(&tap)?;
    let work = dir.join(format!("{name}-work"));
    let ns = GuestNs::behind(&format!("c2w-bench-{name}-{id}"), &tap, &work)?;
    pages.board.clear();
    let (file, query) = match page {
        Page::NetProxy => ("e2e.html", String::new()),
        Page::Inbound => ("inbound.html", String::new()),
        Page::C2wRelay => (
            "c2w.html",
            "net=browser&proxy-allow=loopback&proxy-timeout-ms=120000&proxy-log=warn&".to_string(),
        ),
    };
    let url = format!("{}/{file}?{query}{extra}ws={}", pages.base, bridge.port);
    let spec = LaunchSpec {
        dir: &dir.join(format!("{name}-chromium")),
        origin_cert: &origins.server_cert,
        origin_ca: &origins.ca,
    };
    let browser = Browser::start(Kind::Chromium, &url, &spec)?;
    let waited = pages
        .board
        .wait("ready", 0, Duration::from_secs(90))
        .and_then(|_| pages.board.wait("ca", 0, Duration::from_secs(30)));
    let (_, pem) = match waited {
        Ok(v) => v,
        Err(e) => bail!("{e:#}\n--- browser log ---\n{}", browser.log_tail(25)),
    };
    let proxy_ca = dir.join(format!("proxy-ca-{name}.pem"));
    save_ca(&pem, &proxy_ca)?;
    let route = GuestRoute {
        name: name.to_string(),
        server: Server::Browser {
            browser,
            pages: pages.board.clone(),
            _bridge: bridge,
        },
        ns,
        proxy_ca,
        work,
        origins,
        fresh_names: page == Page::NetProxy,
    };
    route
        .guest()
        .dhcp()
        .with_context(|| format!("DHCP behind {name}"))?;
    Ok(route)
}

/// The name under which relay routes reach the origins (the relay maps it to 127.0.0.1).
const RELAY_ORIGIN: &str = "origin.test";

/// How a relay route's guest reaches the origins.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RelayShape {
    /// Straight to the origin, without the proxy: every connection is a raw relay stream.
    Raw,
    /// Through the proxy at 192.168.127.253:80, with `relay.http = "always"`: plain HTTP is
    /// re-issued by the proxy over a relay stream instead of `fetch()`, HTTPS is a `CONNECT`
    /// tunnel the proxy opens through the relay (end to end, no interception).
    Proxy,
}

/// A guest behind the native runner with `--relay`, or behind `NetProxy` in Chromium with
/// `config.relay`. [`RelayShape::Raw`]: its curl goes to the origins without the proxy, so
/// every connection is a relay stream, and HTTPS is end to end (the guest trusts the origin's
/// test CA; `localhost` is connected through a name the relay maps). [`RelayShape::Proxy`]:
/// its curl uses the proxy, which relays plain HTTP and `CONNECT` tunnels.
pub struct RelayRoute<'a> {
    /// The guest and its serving side (the runner or the browser).
    pub inner: GuestRoute<'a>,
    /// How the guest's curl reaches the origins.
    shape: RelayShape,
    /// The Wisp server (dropped after the serving side and the guest).
    _server: WispServer,
}

impl Route for RelayRoute<'_> {
    fn name(&self) -> String {
        self.inner.name()
    }

    fn sh(&self, script: &str, limit: Duration) -> Result<String> {
        self.inner.sh(script, limit)
    }

    fn curl(&self) -> String {
        let ca = self.inner.origins.ca.display();
        match self.shape {
            RelayShape::Raw => {
                format!(
                    "curl -sS --noproxy '*' --cacert {ca} --connect-to localhost::{RELAY_ORIGIN}:"
                )
            }
            RelayShape::Proxy => format!("curl -sS -x {PROXY} --cacert {ca}"),
        }
    }

    fn base(&self, scheme: Scheme) -> Option<String> {
        let origins = self.inner.origins;
        Some(match (self.shape, scheme) {
            (RelayShape::Raw, Scheme::Http) => {
                format!("http://{RELAY_ORIGIN}:{}", origins.http.addr().port())
            }
            (RelayShape::Raw, Scheme::Https) => {
                format!("https://localhost:{}", origins.https.addr().port())
            }
            (RelayShape::Proxy, Scheme::Http) => origins.http.base_url(),
            (RelayShape::Proxy, Scheme::Https) => origins.https.base_url(),
        })
    }

    fn scratch(&self) -> &Path {
        self.inner.scratch()
    }

    fn memory(&self) -> Option<u64> {
        self.inner.memory()
    }

    fn own_pages(&self) -> Option<String> {
        self.inner.own_pages()
    }

    fn cpu_time(&self) -> Option<Duration> {
        self.inner.cpu_time()
    }
}

/// The short name of a Wisp server kind in path names (`js`, `python`).
fn short(kind: WispServerKind) -> &'static str {
    kind.name().trim_start_matches("wisp-")
}

/// Starts a Wisp server of `kind`, the native runner relaying through it, and a guest.
pub fn relay<'a>(
    origins: &'a Origins,
    binary: &Path,
    dir: &Path,
    kind: WispServerKind,
) -> Result<RelayRoute<'a>> {
    let server = WispServer::start(kind, None)?;
    let name = format!("relay-{}", short(kind));
    let extra = [
        "--relay".to_string(),
        server.url(),
        "--relay-host".to_string(),
        format!("{RELAY_ORIGIN}=127.0.0.1"),
        // The runner allows loopback only; allow/deny apply to the name the guest asks for.
        "--allow".to_string(),
        RELAY_ORIGIN.to_string(),
    ];
    let inner = native(origins, binary, dir, &name, &extra)?;
    Ok(RelayRoute {
        inner,
        shape: RelayShape::Raw,
        _server: server,
    })
}

/// The name of the browser relay route of `kind` and `shape`: `browser-relay-js` (raw
/// streams), `browser-proxy-relay-js` (through the proxy).
pub fn browser_relay_name(kind: WispServerKind, shape: RelayShape) -> String {
    match shape {
        RelayShape::Raw => format!("browser-relay-{}", short(kind)),
        RelayShape::Proxy => format!("browser-proxy-relay-{}", short(kind)),
    }
}

/// Starts a Wisp server of `kind`, `e2e.html` in Chromium with `config.relay` naming it (and
/// `relay.http = "always"` for [`RelayShape::Proxy`]), a bridge and a guest.
pub fn browser_relay<'a>(
    origins: &'a Origins,
    pages: &PageServer,
    dir: &Path,
    kind: WispServerKind,
    shape: RelayShape,
) -> Result<RelayRoute<'a>> {
    let server = WispServer::start(kind, None)?;
    let name = browser_relay_name(kind, shape);
    let mut relay = serde_json::json!({
        "url": server.url(),
        // e2e.html allows these names besides loopback.
        "hosts": { RELAY_ORIGIN: "127.0.0.1" },
    });
    if shape == RelayShape::Proxy {
        relay["http"] = "always".into();
    }
    let extra = format!("relay={}&", crate::demo::boot::encode(&relay.to_string()));
    let inner = browser_with(origins, pages, dir, &name, Page::NetProxy, &extra)?;
    Ok(RelayRoute {
        inner,
        shape,
        _server: server,
    })
}
