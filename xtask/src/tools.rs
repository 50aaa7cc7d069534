//! Finding and installing the tools the tasks need: Debian packages, rustup targets, cargo
//! binaries. Every task calls these first, so a fresh machine needs nothing installed by hand.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

/// The workspace root (the parent of the xtask crate).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

/// Runs a command, streaming its output, and fails with the command line when it fails.
pub fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd
        .status()
        .with_context(|| format!("cannot start {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed with {status}");
    }
    Ok(())
}

/// Runs a command and returns its stdout, failing with its stderr when it fails.
pub fn output(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .output()
        .with_context(|| format!("cannot start {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed with {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// True when `program` is on PATH.
pub fn have(program: &str) -> bool {
    which(program).is_some()
}

/// The full path of `program` on PATH.
pub fn which(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
}

/// True when running as root (needed for apt, TAP devices and network namespaces).
pub fn is_root() -> bool {
    output(Command::new("id").arg("-u"))
        .map(|s| s.trim() == "0")
        .unwrap_or(false)
}

/// Makes sure each `(program, debian_package)` is present, installing the missing packages
/// with apt-get when root, else failing with the exact command to run.
pub fn ensure_programs(wanted: &[(&str, &str)]) -> Result<()> {
    let missing: Vec<&str> = wanted
        .iter()
        .filter(|(program, _)| !have(program) && !Path::new(program).exists())
        .map(|(_, package)| *package)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    if !is_root() {
        bail!(
            "missing Debian packages; install them with: sudo apt-get install -y {}",
            missing.join(" ")
        );
    }
    eprintln!("xtask: installing Debian packages: {}", missing.join(" "));
    let update = Command::new("apt-get").args(["update", "-qq"]).status();
    if !matches!(update, Ok(s) if s.success()) {
        eprintln!("xtask: warning: apt-get update failed; trying the install anyway");
    }
    run(Command::new("apt-get")
        .args(["install", "-y", "-qq", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive"))
}

/// Makes sure the `wasm32-unknown-unknown` target and clang (ring's C code) are available.
pub fn ensure_wasm_toolchain() -> Result<()> {
    let installed = output(Command::new("rustup").args(["target", "list", "--installed"]))?;
    if !installed
        .lines()
        .any(|l| l.trim() == "wasm32-unknown-unknown")
    {
        run(Command::new("rustup").args(["target", "add", "wasm32-unknown-unknown"]))?;
    }
    ensure_programs(&[("clang", "clang"), ("llvm-ar", "llvm")])
}

/// The `wasm-bindgen` version pinned in Cargo.lock; the CLI tools must match it exactly.
pub fn wasm_bindgen_version() -> Result<String> {
    let lock = std::fs::read_to_string(workspace_root().join("Cargo.lock"))
        .context("reading Cargo.lock")?;
    let mut lines = lock.lines();
    while let Some(line) = lines.next() {
        if line.trim() == "name = \"wasm-bindgen\"" {
            if let Some(v) = lines
                .next()
                .and_then(|l| l.trim().strip_prefix("version = \""))
            {
                return Ok(v.trim_end_matches('"').to_string());
            }
        }
    }
    bail!("wasm-bindgen is not in Cargo.lock")
}

/// Path of a `wasm-bindgen-test-runner` matching the locked `wasm-bindgen`, installed with
/// `cargo install wasm-bindgen-cli` into `target/tools` when missing or of another version.
pub fn ensure_wasm_bindgen_test_runner() -> Result<PathBuf> {
    let version = wasm_bindgen_version()?;
    let root = workspace_root()
        .join("target/tools")
        .join(format!("wasm-bindgen-{version}"));
    let runner = root.join("bin/wasm-bindgen-test-runner");
    if !runner.exists() {
        eprintln!(
            "xtask: installing wasm-bindgen-cli {version} (test runner) into {}",
            root.display()
        );
        // Not `--locked`: the registry mirror here lacks some exact versions in the CLI's own
        // lock file (e.g. webpki-roots 1.0.11), so let cargo pick compatible ones.
        run(Command::new("cargo")
            .args(["install", "--quiet", "wasm-bindgen-cli", "--version"])
            .arg(&version)
            .arg("--root")
            .arg(&root))?;
    }
    Ok(runner)
}

/// Runs `cargo test` for `packages` on wasm32 under node, through wasm-bindgen's test runner.
pub fn cargo_test_wasm(packages: &[&str]) -> Result<()> {
    ensure_wasm_toolchain()?;
    ensure_programs(&[("node", "nodejs")])?;
    let runner = ensure_wasm_bindgen_test_runner()?;
    let mut cmd = Command::new("cargo");
    cmd.args(["test", "--target", "wasm32-unknown-unknown"]);
    for p in packages {
        cmd.args(["-p", p]);
    }
    cmd.env("CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_RUNNER", runner);
    run(cmd.current_dir(workspace_root()))
}

/// A fresh, empty directory.
pub fn fresh_dir(dir: &Path) -> Result<PathBuf> {
    if dir.exists() {
        std::fs::remove_dir_all(dir)?;
    }
    std::fs::create_dir_all(dir)?;
    Ok(dir.to_path_buf())
}
