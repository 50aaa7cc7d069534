//! The relay phase of the browser e2e: `e2e.html` with `config.relay` naming a real Wisp
//! server (wisp-python, then wisp-js), so the page's own `WebSocket` (fetch-transport's
//! `BrowserDialer`) carries the guest's raw TCP, UDP and CONNECT tunnels. One page load, guest
//! and bridge per server. The guest-side checks are the native relay phase's
//! ([`crate::e2e::relay_checks`]); the counters come from the page's `NetProxy.stats()`.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use percent_encoding::{utf8_percent_encode, NON_ALPHANUMERIC};
use serde_json::Value;

use super::{first_line, latest_stats, need, Phase, Shared};
use crate::e2e::relay_checks::{
    self, RelayEnv, DENIED_NAME, LOOPBACK_NAMES, ORIGIN_NAME, RELAY_ONLY_NAME,
};
use crate::e2e::relay_clients::ClientServers;
use crate::harness::daemon::free_port;
use crate::harness::guest::Guest;
use crate::harness::origins::UdpEcho;
use crate::harness::relays::{WispServer, WispServerKind};
use crate::report::Report;

/// How long a 16 MiB transfer may take through the page (the c2w phase allows as much).
const TRANSFER_LIMIT: Duration = Duration::from_secs(240);
/// fetch-transport's bound on relay messages the browser received and the driver did not
/// process (`relay::MAX_UNREAD`, a wasm32-only item).
const MAX_UNREAD: usize = 64 << 20;
/// Wasm memory growth allowed while the unread messages pile up: they stay in JavaScript
/// memory, the module holds only the streams' buffers.
const STALL_MEMORY_BOUND: u64 = 16 << 20;

/// Runs the relay checks through the page against each Wisp server; `server` may name one
/// (`wisp-js`, `wisp-python`), empty for both.
pub(super) fn phase(shared: &Shared, r: &mut Report, server: &str) -> Result<()> {
    let kinds = [WispServerKind::Python, WispServerKind::Js];
    if !server.is_empty() && !kinds.iter().any(|k| k.name() == server) {
        bail!("e2e --browser relay: unknown Wisp server `{server}` (wisp-python or wisp-js)");
    }
    let udp = UdpEcho::start()?;
    let clients = ClientServers::start(&shared.dir.join("relay-clients"))?;
    for kind in kinds {
        if !server.is_empty() && server != kind.name() {
            continue;
        }
        one_server(shared, r, kind, &udp, &clients)?;
    }
    Ok(())
}

fn one_server(
    shared: &Shared,
    r: &mut Report,
    kind: WispServerKind,
    udp: &UdpEcho,
    clients: &ClientServers,
) -> Result<()> {
    let tag = kind.name();
    // The page starts before its relay: the first checks see it unreachable.
    let port = free_port()?;
    let hosts: serde_json::Map<String, Value> = LOOPBACK_NAMES
        .iter()
        .map(|name| (name.to_string(), Value::from("127.0.0.1")))
        .collect();
    let relay = serde_json::json!({
        "url": WispServer::url_on(port),
        "hosts": hosts,
        "relayOnly": [RELAY_ONLY_NAME],
    });
    let query = format!(
        "relay={}&deny={}",
        utf8_percent_encode(&relay.to_string(), NON_ALPHANUMERIC),
        utf8_percent_encode(DENIED_NAME, NON_ALPHANUMERIC)
    );
    // Distinct first letters: the phase's TAP name is built from it.
    let name = match kind {
        WispServerKind::Python => "pyrelay",
        WispServerKind::Js => "jsrelay",
    };
    let mut phase = Phase::start(shared, name, "e2e.html", &query)?;
    let ca_file = shared.dir.join(format!("proxy-ca-{name}.pem"));
    let ready = phase.wait_ready(shared, &ca_file);
    let label = format!("relay ({tag}, {})", shared.kind.name());
    r.check(
        &format!("{label}: e2e.html creates NetProxy with config.relay = {relay}"),
        || {
            ready.as_ref().map_err(|e| anyhow::anyhow!("{e:#}"))?;
            Ok("ready, CA exported".into())
        },
    );
    let g = Guest {
        ns: &phase.guest,
        ca: ca_file.clone(),
        work: phase.work.clone(),
    };
    r.check(&format!("dhcp ({label}): udhcpc gets a lease"), || {
        need(&ready)?;
        g.dhcp()
    });
    let mut server = None;
    match &ready {
        Ok(_) => {
            let stats = || latest_stats(shared);
            let env = RelayEnv {
                guest: &g,
                test_ca: shared.files.ca_cert.clone(),
                http: &shared.http,
                https: &shared.https,
                nocors: Some(&shared.nocors),
                udp,
                clients,
                stats: &stats,
                transfer_limit: TRANSFER_LIMIT,
            };
            let started = relay_checks::start_late(r, &label, &env, kind, port)
                .with_context(|| format!("starting {tag}"))?;
            let server = server.insert(started);
            relay_checks::run(r, &label, &env, server);
            r.check(
                &format!(
                    "{label}: a guest that stops reading: unread relay data stops at {} MiB, \
                     the connection fails and comes back",
                    MAX_UNREAD >> 20
                ),
                || stalled_reader(shared, &g),
            );
        }
        Err(e) => {
            r.check(&format!("{label}: the relay checks"), || {
                bail!(
                    "not run: the page is not running ({})",
                    first_line(&format!("{e:#}"))
                )
            });
        }
    }
    drop(g);
    phase.closing_checks(shared, r, &label, &ready);
    drop(phase);
    drop(server);
    Ok(())
}

/// A guest opens a 1 GiB download through the relay and does not read it (a 4 KiB receive
/// buffer, then sleep). The relay keeps sending (Wisp gives it no reason to stop), the browser
/// keeps receiving, the driver stops processing; at [`MAX_UNREAD`] bytes the page's socket
/// gives up: the stats count a loss whose error says so, wasm memory did not grow with it, and
/// the relay is back for new connections.
fn stalled_reader(shared: &Shared, g: &Guest) -> Result<String> {
    let before = latest_stats(shared)?;
    let num = |stats: &Value, p: &str| stats.pointer(p).and_then(Value::as_u64).unwrap_or(0);
    let losses_before = num(&before, "/relay/losses");
    let memory_before = num(&before, "/wasmMemoryBytes");
    let port = shared.http.addr().port();
    let script = g.work.join("stall.py");
    std::fs::write(
        &script,
        format!(
            "import socket, time\n\
             s = socket.socket()\n\
             s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)\n\
             s.connect(('{ORIGIN_NAME}', {port}))\n\
             s.sendall(b'GET /blob/1073741824 HTTP/1.1\\r\\nHost: {ORIGIN_NAME}\\r\\n\\r\\n')\n\
             time.sleep(300)\n"
        ),
    )?;
    let mut reader =
        g.ns.command(&["python3", &script.display().to_string()])
            .spawn()
            .context("starting the guest that does not read")?;
    let started = Instant::now();
    let outcome = (|| -> Result<(Value, Duration)> {
        let deadline = started + Duration::from_secs(120);
        loop {
            let stats = latest_stats(shared)?;
            let error = stats
                .pointer("/relay/lastError")
                .and_then(Value::as_str)
                .unwrap_or("");
            if num(&stats, "/relay/losses") > losses_before && error.contains("has not read") {
                return Ok((stats, started.elapsed()));
            }
            if let Some(status) = reader.try_wait()? {
                bail!("the guest's script ended ({status}) before the relay gave up");
            }
            if Instant::now() > deadline {
                bail!(
                    "the relay connection did not fail within 120 s: {}",
                    stats.get("relay").cloned().unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    })();
    let _ = reader.kill();
    let _ = reader.wait();
    let (failed, after) = outcome?;
    let growth = num(&failed, "/wasmMemoryBytes").saturating_sub(memory_before);
    if growth > STALL_MEMORY_BOUND {
        bail!(
            "wasm memory grew {} MiB while the unread data piled up",
            growth >> 20
        );
    }
    let heap = failed
        .get("jsHeapUsed")
        .and_then(Value::as_f64)
        .map(|v| format!(", JS heap {:.0} MiB then", v / 1048576.0))
        .unwrap_or_default();
    let error = failed
        .pointer("/relay/lastError")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    // Back: the driver reconnects at once after a loss.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let body = g.sh(
            &format!(
                "curl -sS --noproxy '*' --max-time 10 http://{ORIGIN_NAME}:{port}/hello || true"
            ),
            Duration::from_secs(15),
        )?;
        if body.contains("hello from the origin") {
            break;
        }
        if Instant::now() > deadline {
            bail!("no working connection 20 s after the failure: {body:?}");
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    Ok(format!(
        "failed after {:.1} s: {error:?}; wasm memory +{} KiB{heap}; back for new connections",
        after.as_secs_f64(),
        growth >> 10
    ))
}
