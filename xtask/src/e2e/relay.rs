//! The relay phase of `cargo xtask e2e`: the native runner with `--relay` in front of real
//! Wisp servers, the ones users run (wisp-python from PyPI, wisp-js from npm), and a real
//! Linux guest. Through each: TCP to a port fetch() could never carry (sha256-exact both
//! ways), TLS end to end (the guest checks the origin's own certificate, not our CA), a
//! CONNECT tunnel, UDP, a refused destination, and the relay lost mid-download and back.
//! The checks are in [`super::relay_checks`], shared with the browser's relay phase.

use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde_json::Value;

use super::relay_checks::{self, RelayEnv, DENIED_NAME, LOOPBACK_NAMES, RELAY_ONLY_NAME};
use super::relay_clients::ClientServers;
use crate::harness::daemon::free_port;
use crate::harness::guest::{build_runner, Guest, GuestNs, Runner};
use crate::harness::origins::{Cors, Origin, OriginFiles, UdpEcho};
use crate::harness::relays::{WispServer, WispServerKind};
use crate::report::Report;
use crate::tools::{ensure_programs, workspace_root};

/// Runs the relay phase against each server (`filter` may name one: `wisp-js`).
pub fn run(filter: Option<&str>) -> Result<()> {
    ensure_programs(&[
        ("curl", "curl"),
        ("python3", "python3"),
        ("udhcpc", "udhcpc"),
        ("sha256sum", "coreutils"),
    ])?;
    let binary = build_runner()?;
    let dir = workspace_root().join("target/e2e-relay");
    std::fs::create_dir_all(&dir)?;
    let files = OriginFiles::create(&dir.join("origin")).context("creating the origin's files")?;
    let http = Origin::http(&files, Cors::Off)?;
    let https = Origin::https(&files, Cors::Off)?;
    let udp = UdpEcho::start()?;
    let clients = ClientServers::start(&dir.join("clients"))?;
    let filter = filter.map(|f| f.trim_start_matches("relay").trim().to_string());
    let mut r = Report::filtered(None);
    for kind in [WispServerKind::Python, WispServerKind::Js] {
        if filter
            .as_deref()
            .is_some_and(|f| !f.is_empty() && f != kind.name())
        {
            continue;
        }
        // The runner starts before its relay: the first checks see it unreachable.
        let port = free_port()?;
        let tag = kind.name();
        let stats = dir.join(format!("{tag}-stats.json"));
        let proxy_ca = dir.join(format!("{tag}-proxy-ca.pem"));
        let mut args: Vec<String> = vec!["--relay".into(), WispServer::url_on(port)];
        for name in LOOPBACK_NAMES {
            args.push("--relay-host".into());
            args.push(format!("{name}=127.0.0.1"));
        }
        args.extend([
            "--relay-only".into(),
            RELAY_ONLY_NAME.into(),
            "--deny".into(),
            DENIED_NAME.into(),
            "--stats-file".into(),
            stats.display().to_string(),
            "--ca-cert-out".into(),
            proxy_ca.display().to_string(),
        ]);
        let id = std::process::id();
        let tap = format!("c2wr{}{id}", &tag[5..6]);
        let mut runner =
            Runner::start_tap(&binary, &tap, &args, dir.join(format!("{tag}-runner.log")))?;
        let work = dir.join(format!("{tag}-work"));
        let guest = GuestNs::behind(&format!("c2w-relay-{tag}-{id}"), &tap, &work)?;
        let g = Guest {
            ns: &guest,
            ca: proxy_ca,
            work,
        };
        r.check(&format!("dhcp ({tag}): udhcpc gets a lease"), || g.dhcp());
        // The runner rewrites its stats file every 500 ms.
        let read_stats = || -> Result<Value> {
            let text = std::fs::read_to_string(&stats)
                .with_context(|| format!("reading {}", stats.display()))?;
            Ok(serde_json::from_str(&text)?)
        };
        let env = RelayEnv {
            guest: &g,
            test_ca: files.ca_cert.clone(),
            http: &http,
            https: &https,
            nocors: None,
            udp: &udp,
            clients: &clients,
            stats: &read_stats,
            transfer_limit: Duration::from_secs(60),
        };
        let label = format!("relay ({tag})");
        let mut server = relay_checks::start_late(&mut r, &label, &env, kind, port)
            .with_context(|| format!("starting {tag}"))?;
        relay_checks::run(&mut r, &label, &env, &mut server);
        r.check(&format!("runner ({tag}): still running"), || {
            if runner.is_running() {
                Ok("alive".into())
            } else {
                bail!("the runner exited: {}", runner.log_tail())
            }
        });
        drop(g);
        drop(guest);
        drop(runner);
        drop(server);
    }
    r.finish("e2e relay")
}
