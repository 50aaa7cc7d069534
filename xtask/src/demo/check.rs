//! `cargo xtask demo --check`: serves the demo, starts local CORS-enabled origins (HTTP and
//! HTTPS), opens the page in headless Chromium (no name but localhost resolves; the page's
//! proxy may reach loopback only), types a script into the guest's shell and asserts on the
//! console output the page posts back, and on what the page's preview iframe loaded from the
//! guest's own web server.

use std::time::Duration;

use anyhow::{bail, Result};

use super::boot::{boot, field, nic_watchdog, section, Boot, Run};
use super::Site;
use crate::build::guest_image;
use crate::harness::browser::launch::Kind;
use crate::harness::browser::page_server::PageServer;
use crate::harness::cleanup;
use crate::harness::origins::{blob, sha256_hex, Cors, Origin, OriginFiles};
use crate::report::Report;
use crate::tools::workspace_root;

/// How long the guest may take to boot and run the script.
const LIMIT: Duration = Duration::from_secs(420);

/// The size of the bulk downloads (over http and https, on each NIC), and the time curl gets
/// for each.
const BULK: usize = 16 << 20;
const BULK_SECS: u64 = 120;

/// The end mark as printed by the guest (the typed command shows `$((1+1))` instead).
const END: &str = "C2W-CHECK-2-END";

/// The emulated NICs the guest is booted with, in turn, and the Linux driver each must end up
/// bound to.
const NICS: &[(&str, &str)] = &[("virtio", "virtio_net"), ("ne2k", "ne2k-pci")];

/// Everything both boots share: the page server and the local origins.
struct Shared {
    server: PageServer,
    files: OriginFiles,
    script: String,
    dir: std::path::PathBuf,
    // Kept alive for the whole check.
    _origins: [Origin; 3],
}

/// Reads one `bulk url=... rc=... sha=... secs=T` line (T: curl's own time_total): passes when
/// curl succeeded and the digest matches; the detail is the guest-side rate.
fn bulk_result(out: &str, url_prefix: &str, want_sha: &str) -> Result<String> {
    let line = out
        .lines()
        .find(|l| l.starts_with("bulk ") && l.contains(url_prefix))
        .ok_or_else(|| anyhow::anyhow!("no result line for {url_prefix}"))?;
    if field(line, "rc=") != "0" {
        bail!("curl failed: {line}");
    }
    if field(line, "sha=") != want_sha {
        bail!(
            "wrong body (sha256 {} instead of {want_sha})",
            field(line, "sha=")
        );
    }
    let secs: f64 = field(line, "secs=")
        .parse()
        .map_err(|_| anyhow::anyhow!("no time: {line}"))?;
    Ok(format!(
        "{:.1} MB/s guest-side, {secs:.1} s",
        BULK as f64 / 1e6 / secs.max(0.01)
    ))
}

/// Entry point: `site` is the assembled demo.
pub fn run(site: &Site, only: &[String]) -> Result<()> {
    if let Some(bad) = only.iter().find(|n| !NICS.iter().any(|(nic, _)| nic == n)) {
        bail!("demo --check: unknown NIC `{bad}` (virtio, ne2k)");
    }
    let kind = Kind::Chromium;
    kind.ensure_installed()?;
    println!(
        "xtask: demo --check with {}, guest image from {}",
        kind.version(),
        site.image.summary()
    );
    let _guard = cleanup::Guard;
    let dir = workspace_root().join("target/demo/check");
    std::fs::create_dir_all(&dir)?;
    let files = OriginFiles::create(&dir.join("origin"))?;
    let http = Origin::http(&files, Cors::On)?;
    let https = Origin::https(&files, Cors::On)?;
    let nocors = Origin::http(&files, Cors::Off)?;
    let server = PageServer::serve(0, vec![site.dir.clone()], None)?;
    let script = format!(
        "echo C2W-CHECK-$((0+1))-BEGIN; \
         curl -sS --fail -m 30 {http}/hello; echo \"http-rc=$?\"; \
         curl -sS --fail -m 30 {https}/hello; echo \"https-rc=$?\"; \
         curl -sS --fail -m 30 http://192.168.127.253/; echo \"status-rc=$?\"; \
         curl -sS -m 30 {nocors}/hello; echo \"nocors-rc=$?\"; \
         for u in {http}/blob/{BULK} {https}/blob/{BULK}; do \
           w=$(curl -sS --fail -m {BULK_SECS} -o /tmp/bulk -w '%{{time_total}}' $u); rc=$?; \
           echo \"bulk url=$u rc=$rc sha=$(sha256sum /tmp/bulk | cut -c1-64) secs=$w\"; \
           rm -f /tmp/bulk; \
         done; {extra} sleep 1; \
         echo C2W-CHECK-$((1+1))-END",
        // Extra guest commands for diagnosis (their output lands in console.txt).
        extra = std::env::var("C2W_DEMO_EXTRA")
            .map(|e| format!("{e};"))
            .unwrap_or_default(),
        http = http.base_url(),
        https = https.base_url(),
        nocors = nocors.base_url(),
    );
    let shared = Shared {
        server,
        files,
        script,
        dir,
        _origins: [http, https, nocors],
    };
    let mut r = Report::default();
    for (nic, driver) in NICS {
        if !only.is_empty() && !only.iter().any(|n| n == nic) {
            continue;
        }
        println!("xtask: demo --check: booting the guest with the {nic} NIC");
        check_nic(&shared, site, nic, driver, &mut r)?;
    }
    r.finish("demo")
}

/// Boots the guest with `nic` and runs the checks on it, each named after the NIC.
fn check_nic(shared: &Shared, site: &Site, nic: &str, driver: &str, r: &mut Report) -> Result<()> {
    let dir = shared.dir.join(nic);
    let Boot {
        console,
        stats,
        panel,
        finished,
        elapsed,
    } = boot(
        &shared.server,
        &shared.files,
        &dir,
        &Run {
            query: &format!("allow=loopback&net={nic}"),
            script: &shared.script,
            end: END,
            reports: &["preview"],
            limit: LIMIT,
        },
    )?;
    let preview = shared.server.board.get("preview").map(|(_, v)| v);
    println!(
        "xtask: {nic}: guest console saved to {}",
        dir.join("console.txt").display()
    );
    if let Some(line) = console.lines().find(|l| l.contains("c2w-demo: image from")) {
        println!("xtask: {nic}: guest says: {}", line.trim());
    }

    // A module that did not load explains everything after it: report it alone.
    let module_failures: Vec<&str> = console
        .lines()
        .filter(|l| l.contains("c2w-demo: NIC module") || l.contains("c2w-demo:   kernel:"))
        .map(str::trim)
        .collect();
    if !module_failures.is_empty() {
        r.check(&format!("{nic}: NIC modules load"), || {
            bail!(
                "{} (image from {})",
                module_failures.join("\n  "),
                site.image.summary()
            )
        });
        return Ok(());
    }
    if let Err(err) = finished {
        r.check(&format!("{nic}: boot and run the script"), || Err(err));
        return Ok(());
    }

    r.check(&format!("{nic}: lease line"), || {
        let line = console
            .lines()
            .find(|l| l.contains("c2w-demo: lease 192.168.127."))
            .ok_or_else(|| anyhow::anyhow!("no lease line"))?;
        if !line.contains(&format!("({driver})")) {
            bail!("the interface is not driven by {driver}: {line}");
        }
        Ok(line.trim().to_string())
    });
    r.check(
        &format!("{nic}: CA certificate at /.wasmenv/proxy.crt"),
        || {
            if console.contains("c2w-demo: CA certificate saved to /.wasmenv/proxy.crt") {
                Ok("fetched from http://192.168.127.253/ca.pem".into())
            } else {
                bail!("the guest did not save the CA")
            }
        },
    );
    let out = section(&console, "C2W-CHECK-1-BEGIN", END).unwrap_or("");
    r.check(&format!("{nic}: curl http through the proxy"), || {
        let part = out.split("http-rc=").next().unwrap_or("");
        if part.contains("hello from the origin") && out.contains("http-rc=0") {
            Ok("body matches".into())
        } else {
            bail!("unexpected output: {out:?}")
        }
    });
    r.check(&format!("{nic}: curl https through the proxy"), || {
        let part = section(out, "http-rc=0", "https-rc=").unwrap_or("");
        if part.contains("hello from the origin") && out.contains("https-rc=0") {
            Ok("body matches, the guest trusted the proxy's CA".into())
        } else {
            bail!("unexpected output: {out:?}")
        }
    });
    r.check(&format!("{nic}: proxy status page"), || {
        if out.contains("This is the HTTP proxy of the virtual network")
            && out.contains("status-rc=0")
        {
            Ok("http://192.168.127.253/ served".into())
        } else {
            bail!("unexpected output: {out:?}")
        }
    });
    r.check(
        &format!("{nic}: a CORS refusal reaches the guest and the page explains it"),
        || {
            let part = section(out, "status-rc=0", "nocors-rc=").unwrap_or("");
            if part.contains("hello from the origin") {
                bail!("the origin without CORS headers was readable: {part:?}");
            }
            if !panel.contains("does not allow cross-origin requests") {
                bail!("the page's error list does not explain it:\n{panel}");
            }
            let guest = part.trim().lines().next().unwrap_or("").to_string();
            Ok(format!("guest got {guest:?}"))
        },
    );
    r.check(
        &format!("{nic}: stats(): lease and request counters"),
        || {
            let v: serde_json::Value = serde_json::from_str(&stats)?;
            let s = &v["stats"];
            let leases = s["dhcp"]["leases"].to_string();
            let requests = s["proxy"]["requests"].as_u64().unwrap_or(0);
            if !leases.contains("192.168.127.3") || requests < 4 {
                bail!("leases {leases}, requests {requests}");
            }
            Ok(format!(
                "leases {leases}, {requests} requests, {} ok",
                s["proxy"]["responsesOk"]
            ))
        },
    );
    let want_sha = sha256_hex(&blob(BULK));
    for scheme in ["http", "https"] {
        r.check(
            &format!("{nic}: 16 MiB over {scheme}, sha256 checked"),
            || bulk_result(out, &format!("url={scheme}://"), &want_sha),
        );
    }
    r.check(&format!("{nic}: the adapter paces only the ne2k"), || {
        let v: serde_json::Value = serde_json::from_str(&stats)?;
        let pacing = &v["pacing"];
        match (nic, pacing["nic"].as_str()) {
            ("ne2k", Some("ne2k")) if pacing["mode"] == "room" => Ok(format!(
                "ne2k identified and paced by its ring's room: {} frames waited, the room \
                 refused {} times ({}), re-checks released {} (guest) {} (timer) {} (arrival), \
                 {} wake-ups, {} refusals while stuck, {} dropped; v86 did not store {}",
                pacing["deferred"],
                pacing["refused"],
                pacing["refusals"],
                pacing["releasedByGuest"],
                pacing["releasedByRecheck"],
                pacing["releasedByArrival"],
                pacing["wakeups"],
                pacing["refusedWithoutInterrupt"],
                pacing["dropped"],
                pacing["notStored"]
            )),
            ("virtio", None) if pacing.is_null() => {
                Ok("virtio identified, frames go straight to the NIC".into())
            }
            _ => bail!("unexpected pacing for the {nic} NIC: {pacing}"),
        }
    });
    check_preview(nic, &console, preview.as_deref(), r);
    r.check(
        &format!("{nic}: no NIC watchdog message"),
        || match nic_watchdog(&console) {
            Some(line) => bail!("the guest's NIC stalled: {line}"),
            None => Ok("none on the console".into()),
        },
    );
    let timings: serde_json::Value = serde_json::from_str(&stats)
        .map(|v: serde_json::Value| v["timings"].clone())
        .unwrap_or_default();
    let secs = |key: &str| {
        timings[key]
            .as_f64()
            .map(|ms| format!("{:.1} s", ms / 1000.0))
            .unwrap_or_else(|| "n/a".into())
    };
    println!(
        "xtask: {nic}: timings from page load: proxy ready {}, lease {}, shell {}, first proxied request {}, first curl done {}, guest's port {PREVIEW_PORT} listening {}, preview loaded {}; whole boot and check {:.1} s",
        secs("proxyReadyMs"),
        secs("leaseMs"),
        secs("shellMs"),
        secs("firstRequestMs"),
        secs("firstCurlMs"),
        secs("previewListeningMs"),
        secs("previewLoadedMs"),
        elapsed.as_secs_f64()
    );
    if let Some(line) = console
        .lines()
        .find(|l| l.contains("c2w-demo: shell ready"))
    {
        println!("xtask: {nic}: guest says: {}", line.trim());
    }
    Ok(())
}

/// The port of the guest's web server, which the page previews.
const PREVIEW_PORT: u16 = guest_image::HTTPD_PORT;

/// The checks on the preview: the guest started its web server, and the iframe showed its
/// page through the Service Worker with the relative assets, the CGI's answer and a second
/// page. `report` is what the page posted as `preview` (demo.js, `setupPreview`).
fn check_preview(nic: &str, console: &str, report: Option<&str>, r: &mut Report) {
    r.check(
        &format!("{nic}: preview: the guest started busybox httpd"),
        || match console.lines().find(|l| l.contains("c2w-demo: web server")) {
            Some(line) if line.contains(&format!("listening on port {PREVIEW_PORT}")) => {
                Ok(line.trim().to_string())
            }
            Some(line) => bail!("{}", line.trim()),
            None => bail!("the guest printed no `c2w-demo: web server` line"),
        },
    );
    let parsed: Result<serde_json::Value> = match report {
        None => Err(anyhow::anyhow!(
            "the page posted no `preview` report (demo.js setupPreview never finished)"
        )),
        Some(text) => serde_json::from_str(text).map_err(|e| anyhow::anyhow!("{e}: {text}")),
    };
    let p = match parsed {
        Ok(p) if p["state"] == "loaded" => p,
        Ok(p) => {
            r.check(&format!("{nic}: preview: the iframe loads"), || {
                bail!(
                    "the page did not load the preview: state {}, {}",
                    p["state"],
                    p["reason"].as_str().unwrap_or("no reason given")
                )
            });
            return;
        }
        Err(err) => {
            r.check(&format!("{nic}: preview: the iframe loads"), || Err(err));
            return;
        }
    };
    let want_path = format!("/preview/guest/{PREVIEW_PORT}/");
    r.check(
        &format!("{nic}: preview: the iframe shows the guest's page through guest-sw.js"),
        || {
            let marker = p["marker"].as_str().unwrap_or("");
            if p["readable"] != true {
                bail!("the iframe's document was not readable (not same-origin?)");
            }
            if !marker.contains("Served by busybox httpd inside the guest") {
                bail!(
                    "no marker `Served by busybox httpd inside the guest` in the iframe (#served-by: {}); it shows: {:?}",
                    p["marker"],
                    p["body"].as_str().unwrap_or("")
                );
            }
            if p["path"] != want_path.as_str() {
                bail!("the iframe is at {} instead of {want_path}", p["path"]);
            }
            if p["controlled"] != true {
                bail!("the iframe is not controlled by the Service Worker");
            }
            Ok(format!("{want_path}: {:?}, controlled by the worker", marker))
        },
    );
    r.check(
        &format!("{nic}: preview: relative assets (style.css, tux.svg) load"),
        || {
            let mut missing = Vec::new();
            if p["stylesheet"] != "loaded" {
                missing.push(format!(
                    "style.css (--c2w-guest-style is {} instead of \"loaded\")",
                    p["stylesheet"]
                ));
            }
            let width = p["image"]["width"].as_u64().unwrap_or(0);
            if p["image"]["complete"] != true || width == 0 {
                missing.push(format!("tux.svg (img: {})", p["image"]));
            }
            if missing.is_empty() {
                Ok(format!("stylesheet applied, image {width} px wide"))
            } else {
                bail!("not loaded through the preview: {}", missing.join(", "))
            }
        },
    );
    r.check(
        &format!("{nic}: preview: page.js asked the guest's CGI (cgi-bin/status), which saw the gateway"),
        || {
            if p["live"] != "ok" {
                bail!("page.js did not fill in the guest's status: {}", p["live"]);
            }
            if p["hostname"] != "c2w-demo" {
                bail!(
                    "the CGI reported hostname {} instead of c2w-demo",
                    p["hostname"]
                );
            }
            // fetchGuest connects from the gateway, like a LAN peer (docs/browser.md).
            if p["client"] != "192.168.127.1" {
                bail!(
                    "the guest saw the page's connection come from {} instead of the gateway 192.168.127.1",
                    p["client"]
                );
            }
            let text = p["liveText"].as_str().unwrap_or("").replace('\n', " ");
            Ok(text.split_whitespace().collect::<Vec<_>>().join(" "))
        },
    );
    r.check(
        &format!("{nic}: preview: a second page (about.html) from inside the iframe"),
        || {
            let about = &p["about"];
            let want = format!("/preview/guest/{PREVIEW_PORT}/about.html");
            if about["status"] != 200 || about["page"] != true || about["path"] != want.as_str() {
                bail!("fetching about.html from the iframe gave {about}");
            }
            Ok(format!("{want}: 200, the about page"))
        },
    );
}
