//! `cargo xtask test`: everything CI runs, in order, stopping at the first failure: fmt,
//! clippy (native and wasm32), unit tests (native and wasm32 under node), fetch()'s backend
//! under node, each fuzz target briefly (`fuzz --smoke`), build-wasm with its node smoke
//! tests, the real-guest e2e (with its fault and load phases), and the same guest behind the browser build in headless Chromium and Firefox ESR, and the demo (a v86 Linux
//! VM booting in the page) checked headless.

use std::process::Command;

use anyhow::Result;

use crate::tools::{cargo_test_wasm, ensure_programs, ensure_wasm_toolchain, run, workspace_root};

/// Runs the whole suite.
pub fn run_all(args: &[String]) -> Result<()> {
    let root = workspace_root();
    let cargo = |args: &[&str]| -> Result<()> {
        println!("xtask: cargo {}", args.join(" "));
        run(Command::new("cargo").args(args).current_dir(&root))
    };
    ensure_wasm_toolchain()?;
    // Tests use the system's curl and openssl as real clients and verifiers.
    ensure_programs(&[("curl", "curl"), ("openssl", "openssl"), ("node", "nodejs")])?;
    cargo(&["fmt", "--all", "--check"])?;
    cargo(&[
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ])?;
    cargo(&[
        "clippy",
        "--workspace",
        "--exclude",
        "xtask",
        "--all-targets",
        "--target",
        "wasm32-unknown-unknown",
        "--",
        "-D",
        "warnings",
    ])?;
    cargo(&["test", "--workspace"])?;
    println!("xtask: wasm32 tests under node");
    cargo_test_wasm(&["net-stack", "mitm-ca", "http-proxy"])?;
    crate::transport_node::run(&[])?;
    // Every fuzz target briefly on its seed corpus (nightly cargo-fuzz; a crash fails the run).
    crate::fuzz::run_cmd(&["--smoke".to_string()])?;
    crate::build::wasm::run_build(&["--check".to_string()])?;
    crate::e2e::run(args)?;
    crate::e2e::browser::run(&["chromium".to_string()])?;
    crate::e2e::browser::run(&["firefox".to_string()])?;
    crate::demo::run(&["--check".to_string()])?;
    Ok(())
}
