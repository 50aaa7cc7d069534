//! [`AptRepo`]: a Debian package repository made at test time and served over plain HTTP on a
//! free port of 127.0.0.1, for apt in a guest. One tiny package ([`APT_PACKAGE`] 1.0,
//! `Architecture: all`) is built with `dpkg-deb --build`; `apt-ftparchive` writes the
//! `Packages` index and a `Release` file listing its hashes, in the flat layout that a
//! source line `deb [trusted=yes] http://HOST:PORT/ ./` reads (no signature: `trusted=yes`).
//! The server is Python's `http.server`, a real HTTP server that sends no CORS headers.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, Result};
use flate2::write::GzEncoder;

use super::daemon::{free_port, Daemon};
use super::origins::sha256_hex;
use crate::tools::{ensure_programs, fresh_dir, output, run, which};

/// The test package's name.
pub const APT_PACKAGE: &str = "c2w-probe";
/// The test package's version.
pub const APT_VERSION: &str = "1.0";
/// What the package installs at `/usr/share/c2w-probe/probe.txt`.
const PROBE_TEXT: &str = "downloaded by apt through c2w-net-proxy\n";

/// A served repository; its server is killed when dropped.
pub struct AptRepo {
    daemon: Daemon,
    deb: PathBuf,
    deb_sha256: String,
}

impl AptRepo {
    /// Empties `dir`, builds the package and the index in `dir/repo` and serves that folder
    /// on a free port of 127.0.0.1.
    pub fn start(dir: &Path) -> Result<Self> {
        ensure_programs(&[
            ("dpkg-deb", "dpkg"),
            ("apt-ftparchive", "apt-utils"),
            ("python3", "python3"),
        ])?;
        let dir = fresh_dir(dir)?;
        let root = dir.join("repo");
        std::fs::create_dir_all(&root)?;
        let deb = root.join(format!("{APT_PACKAGE}_{APT_VERSION}_all.deb"));
        build_package(&dir.join("package"), &deb)?;
        write_index(&root)?;
        let deb_sha256 = sha256_hex(&std::fs::read(&deb)?);
        let python = which("python3").context("python3 serves the repository")?;
        let port = free_port()?;
        let daemon = Daemon::start(
            "http.server",
            Command::new(python)
                .args(["-u", "-m", "http.server", "--bind", "127.0.0.1"])
                .arg(port.to_string())
                .arg("--directory")
                .arg(&root),
            port,
            &dir.join("http.log"),
        )?;
        Ok(Self {
            daemon,
            deb,
            deb_sha256,
        })
    }

    /// The port it is served on (127.0.0.1).
    pub fn port(&self) -> u16 {
        self.daemon.port()
    }

    /// The package file's name (`c2w-probe_1.0_all.deb`).
    pub fn deb_name(&self) -> String {
        self.deb
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    }

    /// The sha256 (hex) of the package file as built.
    pub fn deb_sha256(&self) -> &str {
        &self.deb_sha256
    }

    /// The apt source line for the repository reached as `host` (a name the guest resolves).
    pub fn source_line(&self, host: &str) -> String {
        format!("deb [trusted=yes] http://{host}:{}/ ./", self.port())
    }

    /// The request lines the server logged (`"GET /./Packages.gz HTTP/1.1" 200`), in order.
    pub fn requests(&self) -> Vec<String> {
        self.daemon
            .log_text()
            .lines()
            .filter_map(|l| l.split_once("] \"").map(|(_, r)| r.replace('"', "")))
            .collect()
    }

    /// The end of the server's log, for failure messages.
    pub fn log_tail(&self) -> String {
        self.daemon.log_tail()
    }
}

/// Builds the package from a tree made in `tree` into `deb`.
fn build_package(tree: &Path, deb: &Path) -> Result<()> {
    let share = tree.join("usr/share").join(APT_PACKAGE);
    std::fs::create_dir_all(&share)?;
    std::fs::write(share.join("probe.txt"), PROBE_TEXT)?;
    let debian = tree.join("DEBIAN");
    std::fs::create_dir_all(&debian)?;
    std::fs::write(
        debian.join("control"),
        format!(
            "Package: {APT_PACKAGE}\n\
             Version: {APT_VERSION}\n\
             Architecture: all\n\
             Maintainer: xtask <xtask@localhost>\n\
             Description: probe package of c2w-net-proxy's tests\n \
             Built at test time; downloaded by apt in a guest through the relay.\n"
        ),
    )?;
    run(Command::new("dpkg-deb")
        .args(["--root-owner-group", "--build"])
        .arg(tree)
        .arg(deb)
        .stdout(Stdio::null()))
    .context("dpkg-deb --build")
}

/// `Packages`, `Packages.gz` and `Release` for the `.deb` files in `root` (flat layout).
fn write_index(root: &Path) -> Result<()> {
    let packages = output(
        Command::new("apt-ftparchive")
            .args(["packages", "."])
            .current_dir(root),
    )
    .context("apt-ftparchive packages")?;
    std::fs::write(root.join("Packages"), &packages)?;
    let mut gz = GzEncoder::new(
        std::fs::File::create(root.join("Packages.gz"))?,
        flate2::Compression::best(),
    );
    gz.write_all(packages.as_bytes())?;
    gz.finish()?;
    // Made after the indexes it lists, written once it is complete (it hashes the folder).
    let release = output(
        Command::new("apt-ftparchive")
            .args(["release", "."])
            .current_dir(root),
    )
    .context("apt-ftparchive release")?;
    std::fs::write(root.join("Release"), release)?;
    Ok(())
}
