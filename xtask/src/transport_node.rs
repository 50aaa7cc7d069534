//! `transport-node`: fetch-transport's browser backend (`FetchTransport`, wasm32) under node,
//! whose global `fetch()` it calls, against a local origin server started here on 127.0.0.1.
//!
//! The tests live in `fetch-transport/tests/node.rs`; they find the origin through
//! `FETCH_TRANSPORT_ORIGIN` and a closed port through `FETCH_TRANSPORT_REFUSED` (node inherits
//! the environment from wasm-bindgen-test-runner); the origin is
//! `harness::origins::NodeOrigin`. Extra arguments go to the test binary's
//! `cargo test` command line (e.g. a test name filter).

use std::net::TcpListener;
use std::process::Command;

use anyhow::{Context, Result};

use crate::harness::origins::NodeOrigin;
use crate::tools;

/// Runs the node tests of fetch-transport's browser backend against a local origin.
pub fn run(args: &[String]) -> Result<()> {
    tools::ensure_wasm_toolchain()?;
    tools::ensure_programs(&[("node", "nodejs")])?;
    let runner = tools::ensure_wasm_bindgen_test_runner()?;
    let server = NodeOrigin::start()?;
    let origin = server.base_url();
    let refused = closed_port_url()?;
    eprintln!("xtask: transport-node: origin at {origin}, refused port at {refused}");
    let mut cmd = Command::new("cargo");
    cmd.args([
        "test",
        "--target",
        "wasm32-unknown-unknown",
        "-p",
        "fetch-transport",
        "--test",
        "node",
    ])
    .args(args)
    .env("CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_RUNNER", runner)
    .env("FETCH_TRANSPORT_ORIGIN", &origin)
    .env("FETCH_TRANSPORT_REFUSED", &refused)
    .current_dir(tools::workspace_root());
    tools::run(&mut cmd)
}

/// A URL on 127.0.0.1 whose port nothing listens on (bound, then released).
fn closed_port_url() -> Result<String> {
    let listener = TcpListener::bind("127.0.0.1:0").context("binding a probe port")?;
    let port = listener.local_addr()?.port();
    drop(listener);
    Ok(format!("http://127.0.0.1:{port}/"))
}
