//! `cargo xtask e2e`: a real Linux guest (a network namespace behind the native runner's TAP
//! device) gets its address by DHCP, pings, resolves names and fetches from an origin server
//! on the host's loopback through the proxy. Every check prints a line; cleanup always runs.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::cleanup;
use crate::guest::{build_runner, GuestNs, Runner};
use crate::origin::{blob, sha256_hex, Origin};
use crate::report::Report;
use crate::tools::{ensure_programs, is_root, workspace_root};

const PROXY: &str = "http://192.168.127.253:80";

/// Runs the end-to-end suite.
pub fn run(_args: &[String]) -> Result<()> {
    if !is_root() {
        bail!("e2e needs root (TAP devices and network namespaces); run it as root");
    }
    ensure_programs(&[
        ("busybox", "busybox"),
        ("udhcpc", "udhcpc"),
        ("/etc/udhcpc/default.script", "udhcpc"),
        ("curl", "curl"),
        ("ip", "iproute2"),
        ("ping", "iputils-ping"),
        ("timeout", "coreutils"),
    ])?;
    let binary = build_runner()?;
    let _guard = cleanup::Guard;
    let origin = Origin::start(4)?;
    let id = std::process::id();
    let tap = format!("c2wt{id}");
    let log_dir = workspace_root().join("target/e2e");
    std::fs::create_dir_all(&log_dir)?;
    let runner = Runner::start_tap(
        &binary,
        &tap,
        &[
            "--pcap".into(),
            log_dir.join("guest.pcap").display().to_string(),
        ],
        log_dir.join("runner.log"),
    )?;
    let mut guest = GuestNs::create(&format!("c2w-e2e-{id}"))?;
    guest
        .adopt(&tap)
        .context("moving the TAP device into the guest namespace")?;
    let iface = guest.iface.clone();

    let mut report = Report::default();
    let leased = report.check(
        "dhcp: udhcpc gets 192.168.127.3, default route and DNS",
        || dhcp(&guest, &iface),
    );
    report.check("icmp: ping the gateway 192.168.127.1", || {
        ping(&guest, "192.168.127.1")
    });
    report.check("icmp: ping the proxy 192.168.127.253", || {
        ping(&guest, "192.168.127.253")
    });
    report.check("dns: nslookup some.name.test via 192.168.127.1", || {
        nslookup(&guest)
    });
    let size = 4 * 1024 * 1024;
    report.check("http: curl through the proxy, 4 MiB body, sha256", || {
        curl_blob(&guest, &origin, size)
    });
    report.check("http: small page through the proxy", || {
        curl_hello(&guest, &origin)
    });
    report.check(
        "tcp: a connection to an unserved port is refused in under a second",
        || refused(&guest),
    );
    report.check("proxy: own status page at http://192.168.127.253/", || {
        status_page(&guest)
    });
    if !leased {
        println!("note: later checks depend on the DHCP lease");
    }
    let mut runner = runner;
    report.check("runner: still running after the checks", || {
        if runner.is_running() {
            Ok("alive".into())
        } else {
            bail!("the runner exited: {}", runner.log_tail())
        }
    });
    drop(guest);
    drop(runner);
    report.finish("e2e")
}

fn text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn dhcp(guest: &GuestNs, iface: &str) -> Result<String> {
    let out = guest.output_within(
        &[
            "udhcpc",
            "-i",
            iface,
            "-n",
            "-q",
            "-f",
            "-t",
            "5",
            "-T",
            "2",
            "-s",
            "/etc/udhcpc/default.script",
        ],
        Duration::from_secs(20),
    )?;
    if !out.status.success() {
        bail!("udhcpc failed: {}", text(&out));
    }
    let addr = text(&guest.output_within(
        &["ip", "-4", "-o", "addr", "show", "dev", iface],
        Duration::from_secs(5),
    )?);
    if !addr.contains("inet 192.168.127.3/24") {
        bail!("unexpected address: {addr}");
    }
    let route = text(&guest.output_within(
        &["ip", "-4", "route", "show", "default"],
        Duration::from_secs(5),
    )?);
    if !route.contains("default via 192.168.127.1") {
        bail!("no default route via the gateway: {route}");
    }
    let resolv = guest.resolv_conf();
    if !resolv.contains("nameserver 192.168.127.1") {
        bail!("resolv.conf does not name 192.168.127.1: {resolv}");
    }
    Ok("192.168.127.3/24 via 192.168.127.1, nameserver 192.168.127.1".into())
}

fn ping(guest: &GuestNs, ip: &str) -> Result<String> {
    let out = guest.output_within(&["ping", "-c", "2", "-W", "2", ip], Duration::from_secs(10))?;
    if !out.status.success() {
        bail!("ping failed: {}", text(&out));
    }
    let summary = text(&out)
        .lines()
        .find(|l| l.contains("packets transmitted"))
        .unwrap_or("")
        .to_string();
    Ok(summary)
}

fn nslookup(guest: &GuestNs) -> Result<String> {
    let out = guest.output_within(
        &[
            "busybox",
            "nslookup",
            "-type=a",
            "some.name.test",
            "192.168.127.1",
        ],
        Duration::from_secs(10),
    )?;
    let t = text(&out);
    let answer = t
        .lines()
        .skip_while(|l| !l.contains("some.name.test"))
        .find(|l| l.starts_with("Address"))
        .map(str::to_string);
    match answer {
        Some(line) if out.status.success() && line.contains("198.1") => Ok(line.trim().to_string()),
        _ => bail!("no fake-IP answer: {t}"),
    }
}

fn curl_blob(guest: &GuestNs, origin: &Origin, size: usize) -> Result<String> {
    let url = format!("{}/blob/{size}", origin.base_url());
    let started = Instant::now();
    let out = guest.output_within(
        &[
            "sh",
            "-c",
            &format!("curl -sS --fail -x {PROXY} {url} | sha256sum"),
        ],
        Duration::from_secs(120),
    )?;
    let elapsed = started.elapsed();
    let got = text(&out);
    let expected = sha256_hex(&blob(size));
    if !out.status.success() || !got.starts_with(&expected) {
        bail!("sha256 mismatch or curl failure: {got}");
    }
    let mbps = size as f64 / elapsed.as_secs_f64() / 1e6;
    Ok(format!("{size} bytes, sha256 ok, {mbps:.1} MB/s"))
}

fn curl_hello(guest: &GuestNs, origin: &Origin) -> Result<String> {
    let url = format!("{}/hello", origin.base_url());
    let out = guest.output_within(
        &["curl", "-sS", "--fail", "-x", PROXY, &url],
        Duration::from_secs(20),
    )?;
    let body = String::from_utf8_lossy(&out.stdout).to_string();
    if !out.status.success() || body != "hello from the origin\n" {
        bail!("unexpected answer: {}", text(&out));
    }
    Ok("body matches".into())
}

fn refused(guest: &GuestNs) -> Result<String> {
    let started = Instant::now();
    let out = guest.output_within(
        &[
            "curl",
            "-sS",
            "--max-time",
            "5",
            "http://192.168.127.253:81/",
        ],
        Duration::from_secs(10),
    )?;
    let elapsed = started.elapsed();
    // curl's exit code 7: failed to connect (connection refused).
    if out.status.code() != Some(7) {
        bail!(
            "expected curl exit 7 (refused), got {:?}: {}",
            out.status.code(),
            text(&out)
        );
    }
    if elapsed > Duration::from_secs(1) {
        bail!("refused only after {elapsed:?}");
    }
    Ok(format!("refused after {} ms", elapsed.as_millis()))
}

fn status_page(guest: &GuestNs) -> Result<String> {
    let out = guest.output_within(
        &["curl", "-sS", "--fail", "http://192.168.127.253/"],
        Duration::from_secs(20),
    )?;
    let body = String::from_utf8_lossy(&out.stdout).to_string();
    if !out.status.success() || !body.contains("c2w-net-proxy") {
        bail!("unexpected status page: {}", text(&out));
    }
    Ok("served".into())
}
