//! The peer the network benchmark compares against: v86's fetch network backend
//! (`FetchNetworkAdapter` from the npm package `v86`, pinned by `cargo xtask demo`), driven in
//! node by `xtask/bench/scripts/v86-peer.mjs` through the same TAP-to-WebSocket bridge as the
//! browser paths, answering the same guest namespace.
//!
//! What the peer can carry: plain HTTP to TCP port 80 of any address (it fetches
//! `http://<Host header><path>` with node's fetch()). It has no TLS interception, no proxy
//! port, no keep-alive (every response is `Connection: close`), and it sends one TCP segment at
//! a time, waiting for each ACK. It reads the whole response from fetch() into an unbounded
//! send buffer as fast as fetch() delivers, so its memory grows with the body size (node's
//! RSS went from 81 to 657 MiB during a 512 MiB download). A request body is reassembled by
//! concatenating every segment into a new array (quadratic): an 8 MiB upload ran at about
//! 1 MB/s and a 32 MiB one did not finish within two minutes, so uploads are not measured.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use super::routes::Origins;
use super::workload::{Route, Scheme};
use crate::harness::bridge::Bridge;
use crate::harness::cleanup::{self, Action};
use crate::harness::guest::{text, Guest, GuestNs, GUEST_MAC};
use crate::harness::procfs;
use crate::tools::{ensure_programs, workspace_root};

/// The address v86's adapter gives itself (its router, DHCP and DNS server).
pub const V86_ROUTER: &str = "192.168.86.1";
/// The address v86's DHCP server hands the guest (a /24).
pub const V86_GUEST: &str = "192.168.86.100";

/// Where `cargo xtask demo` installs its pinned npm packages; the peer uses the same copy.
fn node_modules_root() -> PathBuf {
    workspace_root().join("target/demo/node")
}

/// The guest namespace behind v86's fetch backend (a node process) and the bridge.
pub struct V86Route<'a> {
    /// The node process running `v86-peer.mjs`; killed first when the route is dropped.
    node: Child,
    node_action: Action,
    log: PathBuf,
    /// The bridge between the guest's TAP and the node process.
    bridge: Bridge,
    /// The guest.
    ns: GuestNs,
    /// The guest's HOME and scratch directory.
    work: PathBuf,
    /// The origins.
    origins: &'a Origins,
}

/// Starts the v86 peer: installs the pinned `v86` package if needed, starts a bridge, a guest
/// namespace adopting its TAP and the node process, and runs the guest's DHCP against v86's
/// own DHCP server (the guest gets [`V86_GUEST`]/24 via [`V86_ROUTER`]).
pub fn v86<'a>(origins: &'a Origins, dir: &Path) -> Result<V86Route<'a>> {
    ensure_programs(&[("node", "nodejs"), ("npm", "npm")])?;
    let modules = node_modules_root();
    crate::demo::npm_install(&modules)?;
    let package = modules.join("node_modules/v86");
    let script = workspace_root().join("xtask/bench/scripts/v86-peer.mjs");

    let id = std::process::id();
    let tap = format!("c2wv{}", id % 1_000_000);
    let bridge = Bridge::start(&tap)?;
    let work = dir.join("v86-work");
    let ns = GuestNs::behind(&format!("c2w-bench-v86-{id}"), &tap, &work)?;

    let log = dir.join("v86-peer.log");
    let log_file =
        std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
    let node = Command::new("node")
        .arg("--experimental-websocket")
        .arg(&script)
        .arg(&package)
        .arg(format!("ws://127.0.0.1:{}", bridge.port))
        .arg(GUEST_MAC)
        .stdout(log_file.try_clone()?)
        .stderr(log_file)
        .stdin(Stdio::null())
        .spawn()
        .context("starting node for the v86 peer")?;
    let node_action = cleanup::register(Action::Kill(node.id()));
    let mut route = V86Route {
        node,
        node_action,
        log,
        bridge,
        ns,
        work,
        origins,
    };
    route.wait_connected(Duration::from_secs(60))?;
    route.dhcp().context("DHCP from v86's fetch backend")?;
    Ok(route)
}

impl V86Route<'_> {
    /// Waits until the node process has connected to the bridge.
    fn wait_connected(&mut self, limit: Duration) -> Result<()> {
        let deadline = Instant::now() + limit;
        while self.bridge.clients() == 0 {
            if let Some(status) = self.node.try_wait()? {
                bail!("the v86 peer exited with {status}: {}", self.log_tail());
            }
            if Instant::now() > deadline {
                bail!(
                    "the v86 peer did not connect to the bridge within {limit:?}: {}",
                    self.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    /// udhcpc against v86's DHCP server; checks the address and the default route.
    fn dhcp(&self) -> Result<()> {
        let iface = self.ns.iface.clone();
        let out = self.ns.udhcpc()?;
        if !out.status.success() {
            bail!("udhcpc failed: {}\n{}", text(&out), self.log_tail());
        }
        let addr = text(&self.ns.output_within(
            &["ip", "-4", "-o", "addr", "show", "dev", &iface],
            Duration::from_secs(5),
        )?);
        if !addr.contains(&format!("inet {V86_GUEST}/24")) {
            bail!("unexpected address from v86: {addr}");
        }
        let route = text(&self.ns.output_within(
            &["ip", "-4", "route", "show", "default"],
            Duration::from_secs(5),
        )?);
        if !route.contains(&format!("default via {V86_ROUTER}")) {
            bail!("no default route via v86's router: {route}");
        }
        Ok(())
    }

    /// The last lines of the node process's log, for failure messages.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let tail = lines[lines.len().saturating_sub(15)..].join("\n");
        format!("--- v86 peer log ---\n{tail}\n{}", self.bridge.summary())
    }

    fn guest(&self) -> Guest<'_> {
        Guest {
            ns: &self.ns,
            ca: PathBuf::new(),
            work: self.work.clone(),
        }
    }
}

impl Route for V86Route<'_> {
    fn name(&self) -> String {
        "v86".into()
    }

    fn sh(&self, script: &str, limit: Duration) -> Result<String> {
        self.guest()
            .sh(script, limit)
            .map_err(|e| e.context(self.log_tail()))
    }

    /// v86's adapter answers port 80 of any address and fetches the Host header's origin, so
    /// the origin's loopback URL is kept (as Host) and the connection goes to v86's router.
    /// curl's `Expect: 100-continue` (bodies over 1 MiB) is left out: the adapter passes every
    /// request header on to fetch(), and node's fetch() refuses `Expect` (a browser's drops it).
    fn curl(&self) -> String {
        format!("curl -sS --noproxy '*' -H 'Expect:' --connect-to ::{V86_ROUTER}:80")
    }

    fn base(&self, scheme: Scheme) -> Option<String> {
        match scheme {
            Scheme::Http => Some(self.origins.http.base_url()),
            // The fetch backend has no TLS interception.
            Scheme::Https => None,
        }
    }

    fn scratch(&self) -> &Path {
        &self.work
    }

    /// The node process's RSS (the adapter buffers responses in its heap).
    fn memory(&self) -> Option<u64> {
        procfs::rss(self.node.id())
    }

    fn cpu_time(&self) -> Option<Duration> {
        procfs::cpu_time(self.node.id())
    }
}

impl Drop for V86Route<'_> {
    fn drop(&mut self) {
        cleanup::run_one(&self.node_action);
        let _ = self.node.wait();
        // Then the bridge, then the namespace (field order).
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::workload::{self, blob_sha, mb_per_s, median};
    use crate::harness::origins::OriginFiles;

    /// Runs the v86 peer end to end (root, node, npm): byte-exact downloads of 1 and 64 MiB
    /// and request latency. `cargo test -p xtask --profile bench-tools -- --ignored v86_peer`
    #[test]
    #[ignore = "needs root, node and the npm registry (or an installed v86)"]
    fn v86_peer_downloads_and_requests() -> Result<()> {
        let _guard = cleanup::Guard;
        let dir = workspace_root().join("target/bench/peer-test");
        std::fs::create_dir_all(&dir)?;
        let files = OriginFiles::create(&dir.join("origin"))?;
        let origins = Origins::start(&files)?;
        let route = v86(&origins, &dir)?;
        assert!(route.base(Scheme::Https).is_none());
        for size in [1u64 << 20, 64 << 20] {
            let before = route.memory().unwrap_or(0);
            let secs = workload::download(&route, Scheme::Http, size, &blob_sha(size))?;
            let after = route.memory().unwrap_or(0);
            eprintln!(
                "v86: {size} bytes in {secs:.3} s = {:.2} MB/s; node RSS {} -> {} MiB",
                mb_per_s(size, secs),
                before >> 20,
                after >> 20
            );
        }
        for new_connections in [false, true] {
            let times = workload::requests(&route, Scheme::Http, 50, new_connections)?;
            eprintln!(
                "v86: 50 requests (new connections: {new_connections}): median {:.2} ms",
                median(&times)
            );
        }
        Ok(())
    }
}
