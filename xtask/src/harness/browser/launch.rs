//! Starting and always stopping the browsers: headless Chromium and Firefox ESR, each with a
//! fresh profile (and a fresh HOME, so nothing of the host user's is read or written), a
//! resolver or proxy setup under which no name but localhost resolves, and trust in the HTTPS
//! origin's certificate.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::harness::cleanup::{self, Action};
use crate::tools::{ensure_programs, output};

/// Which browser runs the pages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Debian's `chromium`.
    Chromium,
    /// Debian's `firefox-esr`.
    Firefox,
}

impl Kind {
    /// Parses `chromium` or `firefox`.
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "chromium" | "chrome" => Ok(Self::Chromium),
            "firefox" | "firefox-esr" => Ok(Self::Firefox),
            other => bail!("unknown browser `{other}` (chromium or firefox)"),
        }
    }

    /// Lower-case name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Chromium => "chromium",
            Self::Firefox => "firefox",
        }
    }

    /// Installs the browser (and what its setup needs) when missing.
    pub fn ensure_installed(self) -> Result<()> {
        match self {
            Self::Chromium => ensure_programs(&[("chromium", "chromium")]),
            Self::Firefox => ensure_programs(&[
                ("firefox-esr", "firefox-esr"),
                ("certutil", "libnss3-tools"),
            ]),
        }
    }

    /// The browser's version line.
    pub fn version(self) -> String {
        let program = match self {
            Self::Chromium => chromium_binary(),
            Self::Firefox => PathBuf::from("firefox-esr"),
        };
        output(Command::new(program).arg("--version"))
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|e| format!("unknown version ({e:#})"))
    }
}

/// Debian's launcher script reads /etc/chromium.d; the binary behind it takes our flags only.
fn chromium_binary() -> PathBuf {
    let direct = Path::new("/usr/lib/chromium/chromium");
    if direct.is_file() {
        direct.to_path_buf()
    } else {
        PathBuf::from("chromium")
    }
}

/// What the browser must trust and where it keeps its files.
pub struct LaunchSpec<'a> {
    /// A fresh directory for HOME and the profile.
    pub dir: &'a Path,
    /// The HTTPS origin's certificate (PEM).
    pub origin_cert: &'a Path,
    /// The test CA that issued it (PEM).
    pub origin_ca: &'a Path,
}

/// A running browser; it and every process it started are killed when dropped.
pub struct Browser {
    child: Child,
    action: Action,
    /// Its stdout+stderr.
    pub log: PathBuf,
    /// Which browser.
    pub kind: Kind,
}

/// base64 of the sha256 of the certificate's SubjectPublicKeyInfo, as Chromium's
/// `--ignore-certificate-errors-spki-list` wants it.
fn spki_hash(cert: &Path) -> Result<String> {
    let script = format!(
        "openssl x509 -in '{}' -pubkey -noout | openssl pkey -pubin -outform der | openssl dgst -sha256 -binary | base64",
        cert.display()
    );
    let hash = output(Command::new("sh").arg("-c").arg(script))?;
    let hash = hash.trim().to_string();
    if hash.len() != 44 {
        bail!("unexpected SPKI hash {hash:?}");
    }
    Ok(hash)
}

/// Firefox preferences: no first-run pages, telemetry, updates or background requests, and a
/// proxy at a closed loopback port for everything but loopback, so no name leaves the machine.
const FIREFOX_PREFS: &[(&str, &str)] = &[
    ("browser.shell.checkDefaultBrowser", "false"),
    ("browser.startup.homepage_override.mstone", "\"ignore\""),
    ("browser.aboutwelcome.enabled", "false"),
    ("startup.homepage_welcome_url", "\"about:blank\""),
    ("browser.startup.firstrunSkipsHomepage", "true"),
    ("datareporting.policy.dataSubmissionEnabled", "false"),
    ("datareporting.healthreport.uploadEnabled", "false"),
    ("toolkit.telemetry.enabled", "false"),
    ("toolkit.telemetry.unified", "false"),
    ("app.update.enabled", "false"),
    ("app.update.auto", "false"),
    ("app.normandy.enabled", "false"),
    ("app.shield.optoutstudies.enabled", "false"),
    ("extensions.update.enabled", "false"),
    ("extensions.getAddons.cache.enabled", "false"),
    ("browser.safebrowsing.malware.enabled", "false"),
    ("browser.safebrowsing.phishing.enabled", "false"),
    ("browser.safebrowsing.downloads.enabled", "false"),
    ("browser.safebrowsing.update.enabled", "false"),
    ("network.captive-portal-service.enabled", "false"),
    ("network.connectivity-service.enabled", "false"),
    ("network.trr.mode", "5"),
    ("network.dns.disablePrefetch", "true"),
    ("network.prefetch-next", "false"),
    ("network.predictor.enabled", "false"),
    ("network.http.speculative-parallel-limit", "0"),
    ("services.settings.server", "\"http://127.0.0.1:9/\""),
    ("browser.topsites.contile.enabled", "false"),
    ("browser.newtabpage.enabled", "false"),
    ("messaging-system.rsexperimentloader.enabled", "false"),
    ("network.proxy.type", "1"),
    ("network.proxy.http", "\"127.0.0.1\""),
    ("network.proxy.http_port", "9"),
    ("network.proxy.ssl", "\"127.0.0.1\""),
    ("network.proxy.ssl_port", "9"),
    ("network.proxy.share_proxy_settings", "true"),
    ("network.proxy.socks_remote_dns", "true"),
    ("network.proxy.no_proxies_on", "\"localhost, 127.0.0.1\""),
    ("network.proxy.allow_hijacking_localhost", "false"),
    (
        "dom.postMessage.sharedArrayBuffer.bypassCOOP_COEP.insecure.enabled",
        "false",
    ),
    ("devtools.console.stdout.content", "true"),
];

impl Browser {
    /// Starts `kind` headless on `url`.
    pub fn start(kind: Kind, url: &str, spec: &LaunchSpec) -> Result<Self> {
        if spec.dir.exists() {
            std::fs::remove_dir_all(spec.dir)?;
        }
        let home = spec.dir.join("home");
        let profile = spec.dir.join("profile");
        std::fs::create_dir_all(&home)?;
        std::fs::create_dir_all(&profile)?;
        let log = spec.dir.join(format!("{}.log", kind.name()));
        let log_file = std::fs::File::create(&log)?;
        let mut cmd = match kind {
            Kind::Chromium => {
                let mut cmd = Command::new(chromium_binary());
                cmd.args([
                    "--headless",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-quic",
                    "--no-first-run",
                    "--no-default-browser-check",
                    "--disable-background-networking",
                    "--disable-component-update",
                    "--disable-sync",
                    "--disable-extensions",
                    "--disable-default-apps",
                    "--disable-domain-reliability",
                    "--disable-breakpad",
                    "--metrics-recording-only",
                    "--mute-audio",
                    "--enable-logging=stderr",
                    "--v=0",
                    // Every name but localhost fails to resolve; IP literals need no resolver.
                    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE localhost, EXCLUDE 127.0.0.1",
                ])
                .arg(format!("--user-data-dir={}", profile.display()))
                // Trust the HTTPS origin's key (its test CA is in no trust store).
                .arg(format!(
                    "--ignore-certificate-errors-spki-list={}",
                    spki_hash(spec.origin_cert)?
                ))
                // For profiling by hand, e.g. `--js-flags=--perf-basic-prof` with `perf record`.
                .args(extra_chromium_args())
                .arg(url);
                cmd
            }
            Kind::Firefox => {
                let mut prefs = String::new();
                for (k, v) in FIREFOX_PREFS {
                    prefs.push_str(&format!("user_pref(\"{k}\", {v});\n"));
                }
                std::fs::write(profile.join("user.js"), prefs)?;
                // Trust the test CA in this profile's own NSS database only.
                let db = format!("sql:{}", profile.display());
                crate::tools::run(
                    Command::new("certutil")
                        .args(["-N", "-d", &db, "--empty-password"])
                        .stdout(Stdio::null()),
                )?;
                crate::tools::run(
                    Command::new("certutil")
                        .args(["-A", "-d", &db, "-n", "xtask-origin-test-ca", "-t", "C,,"])
                        .arg("-i")
                        .arg(spec.origin_ca)
                        .stdout(Stdio::null()),
                )?;
                let mut cmd = Command::new("firefox-esr");
                cmd.args(["-headless", "-no-remote", "-new-instance", "-profile"])
                    .arg(&profile)
                    .arg(url)
                    .env("MOZ_DISABLE_AUTO_SAFE_MODE", "1")
                    .env("MOZ_CRASHREPORTER_DISABLE", "1");
                cmd
            }
        };
        cmd.env("HOME", &home)
            .env_remove("DISPLAY")
            .env_remove("WAYLAND_DISPLAY")
            .stdin(Stdio::null())
            .stdout(log_file.try_clone()?)
            .stderr(log_file);
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {}", kind.name()))?;
        let action = cleanup::register(Action::Kill(child.id()));
        Ok(Self {
            child,
            action,
            log,
            kind,
        })
    }

    /// The main process's id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// True while the main process runs.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// The last lines of its log.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // Note the whole tree first: once the main process is gone its children are reparented.
        let tree = crate::harness::procfs::descendants(self.child.id());
        cleanup::run_one(&self.action);
        let _ = self.child.wait();
        std::thread::sleep(Duration::from_millis(200));
        for pid in tree {
            if Path::new(&format!("/proc/{pid}")).exists() {
                // SAFETY: kill(2) on a pid we started (a descendant of our browser).
                unsafe {
                    libc::kill(pid as libc::pid_t, libc::SIGKILL);
                }
            }
        }
    }
}

/// Extra Chromium flags from `XTASK_CHROMIUM_ARGS` (split on whitespace): how a profile of
/// the page is taken by hand (`--js-flags=--perf-basic-prof` for `perf record`).
fn extra_chromium_args() -> Vec<String> {
    std::env::var("XTASK_CHROMIUM_ARGS")
        .map(|v| v.split_whitespace().map(str::to_string).collect())
        .unwrap_or_default()
}
