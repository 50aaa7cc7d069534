//! The browser side of the harness: launching headless Chromium or Firefox
//! ([`launch`]), the server of the test pages and the package ([`page_server`]), and the
//! small helpers the browser e2e and the benchmarks share.

pub mod launch;
pub mod page_server;

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

/// The package files the pages load.
pub const PACKAGE_FILES: &[&str] = &[
    "c2w_net_proxy.js",
    "c2w_net_proxy_bg.wasm",
    "stack-worker.js",
];

/// Copies `dist` to `to` (replacing it) and checks the copy is complete.
pub fn snapshot_dist(dist: &Path, to: &Path) -> Result<PathBuf> {
    if to.exists() {
        std::fs::remove_dir_all(to)?;
    }
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(dist).context("reading dist/")? {
        let entry = entry?;
        if entry.file_type()?.is_file() {
            std::fs::copy(entry.path(), to.join(entry.file_name()))
                .with_context(|| format!("copying {}", entry.path().display()))?;
        }
    }
    for f in PACKAGE_FILES {
        if !to.join(f).is_file() {
            bail!("dist/ changed while it was copied ({f} is missing); run again");
        }
    }
    Ok(to.to_path_buf())
}

/// Writes `pem` for the guest to trust and checks it is one PEM certificate.
pub fn save_ca(pem: &str, path: &Path) -> Result<()> {
    if !pem.contains("-----BEGIN CERTIFICATE-----") || !pem.contains("-----END CERTIFICATE-----") {
        bail!("not a PEM certificate: {pem:?}");
    }
    std::fs::write(path, pem).with_context(|| format!("writing {}", path.display()))
}
