//! The native phase of `cargo xtask e2e`: a real Linux guest (a network namespace behind the
//! native runner's TAP device) gets its address by DHCP, pings, resolves names, and reaches
//! HTTP and HTTPS origins on the host's loopback through the proxy with real clients: curl,
//! busybox and GNU wget, openssl, python, pip and git, with and without proxy variables.
//! Every check prints a line; cleanup always runs.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::harness::guest::{build_runner, expect_contains, text, Guest, GuestNs, Runner, PROXY};
use crate::harness::origins::{
    blob, sha256_hex, Cors, Origin, OriginFiles, GIT_README, WHEEL_PROJECT,
};
use crate::report::Report;
use crate::tools::{ensure_programs, workspace_root};

const PROXY_HOSTPORT: &str = "192.168.127.253:80";
/// Guest-visible names that transparent mode rewrites to the local origins.
const PLAIN_NAME: &str = "plain.test";
const SECURE_NAME: &str = "secure.test";

/// Everything a check needs.
struct Env {
    guest: GuestNs,
    http: Origin,
    https: Origin,
    /// The proxy's CA certificate (written by the runner), for guest clients to trust.
    proxy_ca: PathBuf,
    /// Scratch directory the guest can read and write (same filesystem).
    work: PathBuf,
}

/// Runs the native phase's checks. `args` may hold one filter: only checks whose name
/// contains it run (DHCP always does).
///
/// The outer error is a failed setup (the suite stops there); the inner one is the checks'
/// verdict.
pub fn run(args: &[String]) -> Result<Result<()>> {
    ensure_programs(&[
        ("busybox", "busybox"),
        ("udhcpc", "udhcpc"),
        ("/etc/udhcpc/default.script", "udhcpc"),
        ("curl", "curl"),
        ("wget", "wget"),
        ("openssl", "openssl"),
        ("git", "git"),
        ("python3", "python3"),
        ("ip", "iproute2"),
        ("ping", "iputils-ping"),
        ("timeout", "coreutils"),
        ("sha256sum", "coreutils"),
    ])?;
    let binary = build_runner()?;
    let dir = workspace_root().join("target/e2e");
    std::fs::create_dir_all(&dir)?;
    let files = OriginFiles::create(&dir.join("origin")).context("creating the origin's files")?;
    let http = Origin::http(&files, Cors::Off)?;
    let https = Origin::https(&files, Cors::Off)?;
    let proxy_ca = dir.join("proxy-ca.pem");
    let _ = std::fs::remove_file(&proxy_ca);
    let id = std::process::id();
    let tap = format!("c2wt{id}");
    let mut runner_args = Runner::base_args(&files.ca_cert, &proxy_ca);
    runner_args.extend([
        "--pcap".into(),
        dir.join("guest.pcap").display().to_string(),
        "--rewrite".into(),
        format!("{PLAIN_NAME}={}", http.base_url()),
        "--rewrite".into(),
        format!("{SECURE_NAME}={}", https.base_url()),
        "--timeout".into(),
        "20s".into(),
    ]);
    let mut runner = Runner::start_tap(&binary, &tap, &runner_args, dir.join("runner.log"))?;
    let work = dir.join("guest-work");
    let guest = GuestNs::behind(&format!("c2w-e2e-{id}"), &tap, &work)?;
    let env = Env {
        guest,
        http,
        https,
        proxy_ca,
        work,
    };

    let mut r = Report::filtered(args.first().cloned());
    let g = env.checks();
    r.check(
        "dhcp: udhcpc gets 192.168.127.3, default route and DNS",
        || g.dhcp(),
    );
    r.check("icmp: ping the gateway 192.168.127.1", || {
        g.ping("192.168.127.1")
    });
    r.check("icmp: ping the proxy 192.168.127.253", || {
        g.ping("192.168.127.253")
    });
    r.check("dns: nslookup some.name.test via 192.168.127.1", || {
        g.nslookup()
    });
    r.check(
        "tcp: a connection to an unserved port is refused in under a second",
        || refused(&env.guest, "http://192.168.127.253:81/"),
    );
    r.check(
        "proxy: own status page and CA download at http://192.168.127.253/",
        || own_pages(&env),
    );
    for scheme in ["http", "https"] {
        r.check(&format!("curl {scheme}: GET through the proxy"), || {
            curl_get(&env, scheme)
        });
        r.check(&format!("curl {scheme}: HEAD through the proxy"), || {
            curl_head(&env, scheme)
        });
        r.check(&format!("curl {scheme}: 50 MiB download, sha256"), || {
            curl_download(&env, scheme, 50 << 20)
        });
        r.check(&format!("curl {scheme}: 20 MiB POST --data-binary"), || {
            curl_upload(&env, scheme, 20 << 20, false)
        });
        r.check(&format!("curl {scheme}: chunked upload"), || {
            curl_upload(&env, scheme, 3 << 20, true)
        });
        r.check(&format!("curl {scheme}: HTTP/1.0 (-0)"), || {
            curl_http10(&env, scheme)
        });
        r.check(&format!("curl {scheme}: Expect: 100-continue"), || {
            curl_expect(&env, scheme)
        });
    }
    r.check("curl: a 404 from the origin arrives with its body", || {
        curl_404(&env)
    });
    r.check(
        "curl: a denied destination gets 403 with the reason",
        || curl_denied(&env),
    );
    r.check("busybox wget: http through the proxy", || {
        busybox_wget(&env)
    });
    r.check("GNU wget: http and https through the proxy", || {
        gnu_wget(&env)
    });
    r.check(
        "openssl s_client -proxy: chain verifies against the proxy's CA",
        || openssl_s_client(&env),
    );
    r.check("python3 urllib: https through the proxy", || {
        python_urllib(&env)
    });
    r.check(
        "pip install: a wheel from a local HTTPS simple index",
        || pip_install(&env),
    );
    r.check("git clone: over HTTPS from git http-backend", || {
        git_clone(&env)
    });
    r.check(
        "transparent: curl http://plain.test/ without proxy variables",
        || transparent_http(&env),
    );
    r.check(
        "transparent: curl https://secure.test/ without proxy variables",
        || transparent_https(&env),
    );
    r.check(
        "transparent: other ports on a fake IP are refused at once",
        || refused(&env.guest, &format!("http://{PLAIN_NAME}:8080/")),
    );
    r.check("runner: still running after the checks", || {
        if runner.is_running() {
            Ok("alive".into())
        } else {
            bail!("the runner exited: {}", runner.log_tail())
        }
    });
    drop(env);
    drop(runner);
    Ok(r.finish("e2e"))
}

impl Env {
    /// The shared guest-side checks, trusting the runner's CA.
    fn checks(&self) -> Guest<'_> {
        Guest {
            ns: &self.guest,
            ca: self.proxy_ca.clone(),
            work: self.work.clone(),
        }
    }
}

/// Runs `script` in the guest; stdout, or an error with everything it printed.
fn sh(env: &Env, script: &str, limit: Duration) -> Result<String> {
    env.checks().sh(script, limit)
}

/// curl through the proxy, trusting its CA, failing on HTTP errors.
fn curl(env: &Env) -> String {
    format!("{} --fail", env.checks().curl())
}

fn origin(env: &Env, scheme: &str) -> String {
    if scheme == "https" {
        env.https.base_url()
    } else {
        env.http.base_url()
    }
}

fn refused(guest: &GuestNs, url: &str) -> Result<String> {
    let started = Instant::now();
    let out = guest.output_within(
        &["curl", "-sS", "--max-time", "5", url],
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

fn own_pages(env: &Env) -> Result<String> {
    let page = sh(
        env,
        "curl -sS --fail http://192.168.127.253/",
        Duration::from_secs(20),
    )?;
    expect_contains(&page, "c2w-net-proxy")?;
    let ca = sh(
        env,
        "curl -sS --fail http://192.168.127.253/ca.pem",
        Duration::from_secs(20),
    )?;
    let written =
        std::fs::read_to_string(&env.proxy_ca).context("the runner's --ca-cert-out file")?;
    if ca != written {
        bail!("/ca.pem differs from the CA the runner wrote");
    }
    Ok("status page and /ca.pem served".into())
}

fn curl_get(env: &Env, scheme: &str) -> Result<String> {
    let body = sh(
        env,
        &format!("{} {}/hello", curl(env), origin(env, scheme)),
        Duration::from_secs(20),
    )?;
    if body != "hello from the origin\n" {
        bail!("unexpected body {body:?}");
    }
    Ok("body matches".into())
}

fn curl_head(env: &Env, scheme: &str) -> Result<String> {
    let head = sh(
        env,
        &format!("{} -I {}/blob/12345", curl(env), origin(env, scheme)),
        Duration::from_secs(20),
    )?;
    let lower = head.to_ascii_lowercase();
    expect_contains(&lower, "200")?;
    expect_contains(&lower, "content-length: 12345")?;
    Ok("200 with the origin's content-length".into())
}

fn curl_download(env: &Env, scheme: &str, size: usize) -> Result<String> {
    let started = Instant::now();
    let got = sh(
        env,
        &format!(
            "{} {}/blob/{size} | sha256sum",
            curl(env),
            origin(env, scheme)
        ),
        Duration::from_secs(300),
    )?;
    let elapsed = started.elapsed();
    if !got.starts_with(&sha256_hex(&blob(size))) {
        bail!("sha256 mismatch: {got}");
    }
    Ok(format!(
        "{size} bytes, sha256 ok, {:.1} MB/s",
        size as f64 / elapsed.as_secs_f64() / 1e6
    ))
}

fn upload_file(env: &Env, size: usize) -> Result<(PathBuf, String)> {
    let path = env.work.join(format!("upload-{size}"));
    let data = blob(size);
    std::fs::write(&path, &data)?;
    Ok((path, sha256_hex(&data)))
}

fn curl_upload(env: &Env, scheme: &str, size: usize, chunked: bool) -> Result<String> {
    let (path, sha) = upload_file(env, size)?;
    let te = if chunked {
        "-H 'Transfer-Encoding: chunked'"
    } else {
        ""
    };
    let got = sh(
        env,
        &format!(
            "{} {te} --data-binary @{} {}/echo",
            curl(env),
            path.display(),
            origin(env, scheme)
        ),
        Duration::from_secs(300),
    )?;
    expect_contains(&got, &format!("POST {size} {sha}"))?;
    Ok(format!("origin received {size} bytes, sha256 ok"))
}

fn curl_http10(env: &Env, scheme: &str) -> Result<String> {
    let got = sh(
        env,
        &format!(
            "{} -0 -i {}/blob/100000 | head -c 100000000 | wc -c",
            curl(env),
            origin(env, scheme)
        ),
        Duration::from_secs(20),
    )?;
    let total: usize = got.trim().parse().context("byte count")?;
    if total <= 100_000 {
        bail!("short HTTP/1.0 response: {total} bytes");
    }
    let body = sh(
        env,
        &format!(
            "{} -0 {}/blob/100000 | sha256sum",
            curl(env),
            origin(env, scheme)
        ),
        Duration::from_secs(20),
    )?;
    if !body.starts_with(&sha256_hex(&blob(100_000))) {
        bail!("sha256 mismatch over HTTP/1.0");
    }
    Ok("body intact over HTTP/1.0".into())
}

fn curl_expect(env: &Env, scheme: &str) -> Result<String> {
    let (path, sha) = upload_file(env, 200_000)?;
    let got = sh(
        env,
        &format!(
            "{} -v -H 'Expect: 100-continue' --data-binary @{} {}/echo 2>&1",
            curl(env),
            path.display(),
            origin(env, scheme)
        ),
        Duration::from_secs(30),
    )?;
    expect_contains(&got, "100 Continue")?;
    expect_contains(&got, &format!("POST 200000 {sha}"))?;
    Ok("100 Continue, then the body arrived".into())
}

fn curl_404(env: &Env) -> Result<String> {
    let got = sh(
        env,
        &format!(
            "curl -sS -x {PROXY} -w ' %{{http_code}}' {}/missing",
            env.http.base_url()
        ),
        Duration::from_secs(20),
    )?;
    if got != "not found here\n 404" {
        bail!("unexpected: {got:?}");
    }
    Ok("404 with the origin's body".into())
}

fn curl_denied(env: &Env) -> Result<String> {
    let got = sh(
        env,
        &format!("curl -sS -x {PROXY} -w ' %{{http_code}}' http://example.com/"),
        Duration::from_secs(20),
    )?;
    if !got.ends_with(" 403") || !got.contains("example.com") {
        bail!("unexpected: {got:?}");
    }
    Ok(got.lines().next().unwrap_or("").to_string())
}

fn busybox_wget(env: &Env) -> Result<String> {
    let got = sh(
        env,
        &format!(
            "http_proxy={PROXY} busybox wget -q -O - {}/hello",
            env.http.base_url()
        ),
        Duration::from_secs(20),
    )?;
    if got != "hello from the origin\n" {
        bail!("unexpected body {got:?}");
    }
    Ok("body matches".into())
}

fn gnu_wget(env: &Env) -> Result<String> {
    for base in [env.http.base_url(), env.https.base_url()] {
        let got = sh(
            env,
            &format!(
                "http_proxy={PROXY} https_proxy={PROXY} wget -q -O - --ca-certificate={} {base}/blob/300000 | sha256sum",
                env.proxy_ca.display()
            ),
            Duration::from_secs(30),
        )?;
        if !got.starts_with(&sha256_hex(&blob(300_000))) {
            bail!("sha256 mismatch for {base}");
        }
    }
    Ok("http and https bodies intact".into())
}

fn openssl_s_client(env: &Env) -> Result<String> {
    let got = sh(
        env,
        &format!(
            "echo | openssl s_client -proxy {PROXY_HOSTPORT} -connect {} -CAfile {} -servername localhost 2>&1",
            env.https.addr(),
            env.proxy_ca.display()
        ),
        Duration::from_secs(30),
    )?;
    expect_contains(&got, "Verify return code: 0 (ok)")?;
    Ok("Verify return code: 0 (ok)".into())
}

fn python_urllib(env: &Env) -> Result<String> {
    let script = format!(
        "import urllib.request; print(urllib.request.urlopen('{}/hello', timeout=20).read().decode(), end='')",
        env.https.base_url()
    );
    let got = sh(
        env,
        &format!(
            "https_proxy={PROXY} SSL_CERT_FILE={} python3 -c \"{script}\"",
            env.proxy_ca.display()
        ),
        Duration::from_secs(30),
    )?;
    if got != "hello from the origin\n" {
        bail!("unexpected body {got:?}");
    }
    Ok("body matches".into())
}

fn pip_install(env: &Env) -> Result<String> {
    let target = env.work.join("pip-target");
    let got = sh(
        env,
        &format!(
            "python3 -m pip install --quiet --no-cache-dir --disable-pip-version-check --no-input --proxy {PROXY} --cert {} --index-url {}/simple/ --target {} {WHEEL_PROJECT} && PYTHONPATH={} python3 -c 'import c2w_probe; print(c2w_probe.VALUE)'",
            env.proxy_ca.display(),
            env.https.base_url(),
            target.display(),
            target.display()
        ),
        Duration::from_secs(120),
    )?;
    expect_contains(&got, "installed through c2w-net-proxy")?;
    Ok("installed and imported".into())
}

fn git_clone(env: &Env) -> Result<String> {
    let dest = env.work.join("clone");
    let _ = std::fs::remove_dir_all(&dest);
    sh(
        env,
        &format!(
            "git -c http.proxy={PROXY} -c http.sslCAInfo={} clone -q {}/git/repo {}",
            env.proxy_ca.display(),
            env.https.base_url(),
            dest.display()
        ),
        Duration::from_secs(60),
    )?;
    let readme =
        std::fs::read_to_string(Path::new(&dest).join("README")).context("README in the clone")?;
    if readme != GIT_README {
        bail!("unexpected README {readme:?}");
    }
    Ok("cloned, README matches".into())
}

fn transparent_http(env: &Env) -> Result<String> {
    let got = sh(
        env,
        &format!("env -u http_proxy -u https_proxy curl -sS --fail http://{PLAIN_NAME}/hello"),
        Duration::from_secs(20),
    )?;
    if got != "hello from the origin\n" {
        bail!("unexpected body {got:?}");
    }
    Ok("body matches".into())
}

fn transparent_https(env: &Env) -> Result<String> {
    let got = sh(
        env,
        &format!("env -u http_proxy -u https_proxy curl -sS --fail --cacert {} https://{SECURE_NAME}/hello", env.proxy_ca.display()),
        Duration::from_secs(20),
    )?;
    if got != "hello from the origin\n" {
        bail!("unexpected body {got:?}");
    }
    Ok("body matches, leaf issued for secure.test".into())
}
