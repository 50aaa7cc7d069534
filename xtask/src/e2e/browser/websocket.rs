//! The WebSocket phase of the browser e2e: `e2e.html` with rewrites of the WebSocket names to
//! the local echo server ([`WsEcho`], ws and wss), so the page's own `WebSocket` carries the
//! guest's WebSockets. The guest-side checks are the native WebSocket phase's
//! ([`crate::e2e::websocket_checks`]), judged for a browser front: the server sees the page's
//! `Origin`, and a guest's close code a page may not send (1001) reaches it as 1000. The
//! counters come from the page's `NetProxy.stats()`.

use anyhow::{bail, Context, Result};
use percent_encoding::{utf8_percent_encode, NON_ALPHANUMERIC};
use serde_json::Value;

use super::{first_line, latest_stats, need, Phase, Shared};
use crate::e2e::websocket::GUEST_CLIENTS;
use crate::e2e::websocket_checks::{self, Front, WsEnv};
use crate::harness::guest::Guest;
use crate::harness::origins::WsEcho;
use crate::report::Report;
use crate::tools::ensure_programs;

/// Runs the WebSocket checks through the page (its own echo server, guest, bridge and
/// browser).
pub(super) fn phase(shared: &Shared, r: &mut Report) -> Result<()> {
    ensure_programs(&GUEST_CLIENTS)?;
    let echo = WsEcho::start(&shared.files).context("starting the WebSocket echo server")?;
    let rewrites: Vec<Value> = websocket_checks::rewrites(&echo)
        .into_iter()
        .map(|(host, url)| serde_json::json!({ "host": host, "url": url }))
        .collect();
    let query = format!(
        "rewrites={}",
        utf8_percent_encode(&Value::from(rewrites).to_string(), NON_ALPHANUMERIC)
    );
    let mut phase = Phase::start(shared, "websocket", "e2e.html", &query)?;
    let ca_file = shared.dir.join("proxy-ca-websocket.pem");
    let ready = phase.wait_ready(shared, &ca_file);
    let label = format!("websocket ({})", shared.kind.name());
    r.check(
        &format!("{label}: e2e.html creates NetProxy with the echo server's rewrites"),
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
    match &ready {
        Ok(_) => {
            let stats = || latest_stats(shared);
            let env = WsEnv {
                guest: &g,
                echo: &echo,
                stats: &stats,
                front: Front::Browser {
                    page_origin: shared.pages.base.clone(),
                },
            };
            websocket_checks::run(r, &label, &env);
        }
        Err(e) => {
            r.check(&format!("{label}: the WebSocket checks"), || {
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
    drop(echo);
    Ok(())
}
