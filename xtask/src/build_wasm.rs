//! `cargo xtask build-wasm`: the browser package in `dist/`: the release wasm (size-optimized,
//! LTO), wasm-bindgen's ES module glue and TypeScript declarations, and a package.json.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result};

use crate::tools::{ensure_wasm_toolchain, run, workspace_root};

/// Builds `dist/` and prints the sizes.
pub fn run_build(_args: &[String]) -> Result<PathBuf> {
    ensure_wasm_toolchain()?;
    let root = workspace_root();
    run(Command::new("cargo")
        .args([
            "build",
            "--release",
            "--target",
            "wasm32-unknown-unknown",
            "-p",
            "c2w-net-proxy",
            "--lib",
        ])
        .current_dir(&root))?;
    let wasm = root.join("target/wasm32-unknown-unknown/release/c2w_net_proxy.wasm");
    let dist = root.join("dist");
    if dist.exists() {
        std::fs::remove_dir_all(&dist).context("clearing dist/")?;
    }
    std::fs::create_dir_all(&dist)?;
    let mut bindgen = wasm_bindgen_cli_support::Bindgen::new();
    bindgen
        .input_path(&wasm)
        .web(true)
        .map_err(|e| anyhow::anyhow!("{e}"))?
        .typescript(true)
        .out_name("c2w_net_proxy");
    bindgen
        .generate(&dist)
        .map_err(|e| anyhow::anyhow!("wasm-bindgen: {e}"))?;
    write_package_json(&dist)?;
    let out_wasm = dist.join("c2w_net_proxy_bg.wasm");
    let raw = std::fs::metadata(&out_wasm)?.len();
    let gz = gzip_size(&out_wasm)?;
    println!(
        "dist/: {} bytes wasm ({} bytes gzip), in {}",
        raw,
        gz,
        dist.display()
    );
    Ok(dist)
}

fn write_package_json(dist: &Path) -> Result<()> {
    let version = env!("CARGO_PKG_VERSION");
    let json = format!(
        r#"{{
  "name": "c2w-net-proxy",
  "version": "{version}",
  "description": "The network behind an emulated NIC in the browser: DHCP, DNS, TCP/IP and an HTTP(S) proxy over fetch()",
  "type": "module",
  "module": "c2w_net_proxy.js",
  "types": "c2w_net_proxy.d.ts",
  "files": ["c2w_net_proxy.js", "c2w_net_proxy.d.ts", "c2w_net_proxy_bg.wasm", "c2w_net_proxy_bg.wasm.d.ts"],
  "license": "Apache-2.0"
}}
"#
    );
    std::fs::write(dist.join("package.json"), json)?;
    Ok(())
}

/// The size of `path` gzip-compressed at the best level.
pub fn gzip_size(path: &Path) -> Result<u64> {
    let data = std::fs::read(path)?;
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    enc.write_all(&data)?;
    Ok(enc.finish()?.len() as u64)
}
