//! `cargo xtask e2e`: the end-to-end phases against real Linux guests (network namespaces
//! behind TAP devices), all needing root:
//! - [`native`]: the native runner and real clients (curl, wget, openssl, python, pip, git);
//! - [`faults`]: transfers through the runner's `--fault` profiles;
//! - [`robust`]: load and failing origins ([`load`] holds the load checks it shares with the
//!   browser phase);
//! - [`relay`]: the runner with `--relay` in front of real Wisp servers ([`relay_checks`] holds
//!   the guest-side checks it shares with the browser's relay phase, [`relay_clients`] the
//!   real clients among them: git over ssh, apt, a TCP echo);
//! - [`websocket`]: the guest's WebSockets carried by the runner's own client to a local echo
//!   server, with real clients in the guest ([`websocket_checks`] holds the guest-side checks
//!   it shares with the browser's WebSocket phase);
//! - [`browser`]: the browser build in headless Chromium or Firefox (`e2e --browser`).
//!
//! The pieces they stand on (guests, origins, browsers, the bridge) are in `crate::harness`.

pub mod browser;
mod faults;
pub(crate) mod forward;
mod load;
mod native;
mod relay;
mod relay_checks;
mod relay_clients;
mod robust;
pub(crate) mod websocket;
pub(crate) mod websocket_checks;

use anyhow::{bail, Result};

use crate::harness::cleanup;
use crate::tools::is_root;

/// Runs the end-to-end suite: the native phase, then the fault and robustness phases.
/// `args` may hold one filter: only checks whose name contains it run (DHCP always does), and
/// the other phases are skipped; `faults[ PROFILE]`, `robust[: CHECK]`, `relay[ SERVER]` or
/// `forward[: CHECK]` or `websocket[: CHECK]` runs only that phase.
pub fn run(args: &[String]) -> Result<()> {
    if !is_root() {
        bail!("e2e needs root (TAP devices and network namespaces); run it as root");
    }
    if let Some(filter) = args.first().filter(|f| f.starts_with("faults")) {
        return faults::run(Some(filter));
    }
    if let Some(filter) = args.first().filter(|f| f.starts_with("robust")) {
        return robust::run(Some(filter.clone()));
    }
    if let Some(filter) = args.first().filter(|f| f.starts_with("forward")) {
        let _guard = cleanup::Guard;
        let check = filter
            .trim_start_matches("forward")
            .trim_start_matches(':')
            .trim();
        return forward::run((!check.is_empty()).then(|| check.to_string()));
    }
    if let Some(filter) = args.first().filter(|f| f.starts_with("websocket")) {
        let _guard = cleanup::Guard;
        let check = filter
            .trim_start_matches("websocket")
            .trim_start_matches(':')
            .trim();
        return websocket::run((!check.is_empty()).then(|| check.to_string()));
    }
    if args.first().is_some_and(|f| f.starts_with("relay")) {
        let _guard = cleanup::Guard;
        // `e2e relay wisp-js` comes as two arguments: the server is the second.
        return relay::run(Some(&args.join(" ")));
    }
    // Cleans up whatever the phases leave registered, however the suite ends.
    let _guard = cleanup::Guard;
    let result = native::run(args)?;
    // The fault phase (own runner, guest and directory) runs with the whole suite.
    let faults = if args.is_empty() {
        faults::run(None)
    } else {
        Ok(())
    };
    // The robustness phase (load and failures; own runner, guest and directory) too.
    let robust = if args.is_empty() {
        robust::run(None)
    } else {
        Ok(())
    };
    // The relay phase (real Wisp servers; own runners and guests) too.
    let relay = if args.is_empty() {
        relay::run(None)
    } else {
        Ok(())
    };
    // The forward phase (host ports into the guest; own runner and guest) too.
    let forward = if args.is_empty() {
        forward::run(None)
    } else {
        Ok(())
    };
    // The WebSocket phase (an echo server, real clients; own runner and guest) too.
    let websocket = if args.is_empty() {
        websocket::run(None)
    } else {
        Ok(())
    };
    result
        .and(faults)
        .and(robust)
        .and(relay)
        .and(forward)
        .and(websocket)
}
