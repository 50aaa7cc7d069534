//! Real Wisp servers as relay peers, the ones a user would run: `wisp-python` (PyPI) and
//! `@mercuryworkshop/wisp-js` (npm). Each is installed at a pinned version into
//! `target/relays/` on first use (a venv, an npm folder), started on a free port of 127.0.0.1
//! with loopback and private destinations allowed (the tests' origins are on loopback), and
//! killed however the test ends. They run as separate processes only (wisp-js is LGPL-3.0):
//! nothing of theirs is linked.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use super::daemon::{free_port, Daemon};
use crate::tools::{ensure_programs, run, workspace_root};

/// The wisp-python release the tests run.
const WISP_PYTHON: &str = "wisp-python==0.9.0";
/// The wisp-js release the tests run.
const WISP_JS: &str = "@mercuryworkshop/wisp-js@0.5.0";

/// Which Wisp server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WispServerKind {
    /// `python3 -m wisp.server` from wisp-python (Wisp v1).
    Python,
    /// `wisp-js-server` from wisp-js (Wisp v2 when the client asks for the `wisp-v2`
    /// subprotocol, else v1).
    Js,
}

impl WispServerKind {
    /// A short name for logs and check names.
    pub fn name(self) -> &'static str {
        match self {
            Self::Python => "wisp-python",
            Self::Js => "wisp-js",
        }
    }

    /// Why this server cannot carry several busy streams at once, if it cannot.
    ///
    /// wisp-python 0.9.0 sends with websockets' legacy API, whose flow control copies an old
    /// asyncio helper that allows one waiting writer (`_drain_helper`: `assert waiter is None`).
    /// Once a client reads a little slower than the server writes (any real client, at
    /// times), two stream tasks wait for the socket at once; the second dies on that
    /// assertion and its stream stalls, never closed. Reproduced without this project: a
    /// plain Python Wisp client reading 8 streams with short pauses stalls them for good.
    pub fn stalls_concurrent_streams(self) -> Option<&'static str> {
        match self {
            Self::Python => Some(
                "wisp-python 0.9.0 stalls streams when two wait for its WebSocket at once \
                 (websockets' legacy flow control takes one waiter); see WispServerKind",
            ),
            Self::Js => None,
        }
    }
}

/// A running Wisp server (a [`Daemon`]); killed when dropped.
pub struct WispServer {
    kind: WispServerKind,
    daemon: Option<Daemon>,
    port: u16,
}

impl WispServer {
    /// Installs `kind` if needed and starts it on a free port of 127.0.0.1. `js_options` is
    /// merged into wisp-js's server options (its `-O` JSON); ignored for Python.
    pub fn start(kind: WispServerKind, js_options: Option<&serde_json::Value>) -> Result<Self> {
        Self::start_on(kind, free_port()?, js_options)
    }

    /// Like [`start`](Self::start), on `port` (a relay coming back where it was).
    pub fn start_on(
        kind: WispServerKind,
        port: u16,
        js_options: Option<&serde_json::Value>,
    ) -> Result<Self> {
        let dir = workspace_root().join("target/relays");
        std::fs::create_dir_all(&dir)?;
        let log = dir.join(format!("{}-{port}.log", kind.name()));
        let mut cmd = match kind {
            WispServerKind::Python => {
                let python = install_python(&dir)?;
                let mut cmd = Command::new(python);
                cmd.args(["-m", "wisp.server", "--host", "127.0.0.1", "--port"])
                    .arg(port.to_string())
                    .args(["--allow-loopback", "--allow-private", "--log-level", "info"])
                    .args(["--threads", "1"]);
                cmd
            }
            WispServerKind::Js => {
                let cli = install_js(&dir)?;
                let mut options = serde_json::json!({
                    "allow_loopback_ips": true,
                    "allow_private_ips": true,
                });
                if let (Some(extra), Some(map)) = (js_options, options.as_object_mut()) {
                    for (k, v) in extra.as_object().into_iter().flatten() {
                        map.insert(k.clone(), v.clone());
                    }
                }
                let mut cmd = Command::new("node");
                cmd.arg(cli)
                    .args(["-H", "127.0.0.1", "-P"])
                    .arg(port.to_string())
                    .args(["-L", "INFO", "-O"])
                    .arg(options.to_string());
                cmd
            }
        };
        let daemon = Daemon::start(kind.name(), &mut cmd, port, &log)?;
        Ok(Self {
            kind,
            daemon: Some(daemon),
            port,
        })
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `ws://127.0.0.1:PORT/` (Wisp servers take connections on paths ending in `/`).
    pub fn url(&self) -> String {
        Self::url_on(self.port)
    }

    /// The URL a server started on `port` will have (for a proxy started before its relay).
    pub fn url_on(port: u16) -> String {
        format!("ws://127.0.0.1:{port}/")
    }

    /// Which server this is.
    pub fn kind(&self) -> WispServerKind {
        self.kind
    }

    /// Kills the server now (a relay lost mid-transfer; its workers with it).
    pub fn kill(&mut self) {
        self.daemon = None;
    }
}

/// The venv's python with wisp-python installed.
fn install_python(dir: &Path) -> Result<PathBuf> {
    let venv = dir.join("python");
    let python = venv.join("bin/python3");
    let stamp = venv.join(".installed");
    if std::fs::read_to_string(&stamp).ok().as_deref() == Some(WISP_PYTHON) {
        return Ok(python);
    }
    let system = crate::tools::which("python3")
        .context("python3 is needed to run wisp-python (the Wisp relay peer)")?;
    eprintln!("xtask: installing {WISP_PYTHON} into {}", venv.display());
    let _ = std::fs::remove_dir_all(&venv);
    run(Command::new(system).args(["-m", "venv"]).arg(&venv))
        .context("creating a venv for wisp-python (Debian: apt-get install python3-venv)")?;
    run(Command::new(&python).args([
        "-m",
        "pip",
        "install",
        "--quiet",
        "--disable-pip-version-check",
        WISP_PYTHON,
    ]))
    .context("pip install wisp-python")?;
    std::fs::write(&stamp, WISP_PYTHON)?;
    Ok(python)
}

/// wisp-js's server CLI, installed with npm.
fn install_js(dir: &Path) -> Result<PathBuf> {
    ensure_programs(&[("node", "nodejs"), ("npm", "npm")])?;
    let root = dir.join("js");
    let cli = root.join("node_modules/@mercuryworkshop/wisp-js/src/bin/server_cli.mjs");
    let stamp = root.join(".installed");
    if std::fs::read_to_string(&stamp).ok().as_deref() == Some(WISP_JS) && cli.exists() {
        return Ok(cli);
    }
    eprintln!("xtask: installing {WISP_JS} into {}", root.display());
    std::fs::create_dir_all(&root)?;
    std::fs::write(
        root.join("package.json"),
        "{\"name\":\"c2w-relay-peers\",\"private\":true}\n",
    )?;
    run(Command::new("npm")
        .args([
            "install",
            "--silent",
            "--no-audit",
            "--no-fund",
            "--save-exact",
            WISP_JS,
        ])
        .current_dir(&root))
    .context("npm install wisp-js")?;
    if !cli.exists() {
        bail!("npm installed {WISP_JS} but {} is missing", cli.display());
    }
    std::fs::write(&stamp, WISP_JS)?;
    Ok(cli)
}
