//! The inbound phase of the browser e2e (`e2e --browser [chromium|firefox] inbound`, and part
//! of the default run): the page reaches servers running *in* the guest. The guest runs a
//! Python HTTP server (files of 1 MiB and 64 MiB, an index page with a relative script, a few
//! redirect and cookie endpoints) and a TCP echo; `inbound.html` waits for `probe` to see the
//! server, then uses `fetchGuest`, `connect` and `probe`, and finally registers `guest-sw.js`
//! through `guest-preview.js` and loads the guest's page in an iframe and the 64 MiB file
//! through the preview path. The page posts each result as `inbound.<name>`; the checks here
//! compare them with what the harness knows (the files' sha256).

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use percent_encoding::{utf8_percent_encode, NON_ALPHANUMERIC};
use serde_json::Value;

use super::{first_line, need, Phase, Shared};
use crate::e2e::forward::start_python_servers;
use crate::harness::guest::Guest;
use crate::harness::origins::{blob, sha256_hex};
use crate::report::Report;

/// The guest's HTTP server port.
const GUEST_HTTP: u16 = 8000;
/// The guest's TCP echo port.
const GUEST_ECHO: u16 = 7000;
/// A guest port nothing listens on.
const GUEST_CLOSED: u16 = 8999;
/// Bytes the page sends through the echo.
const ECHO_BYTES: usize = 6000;
/// The big file's size.
const BIG: usize = 64 << 20;
/// What the guest's index page says (the iframe check looks for it).
const MARKER: &str = "served by the guest's own http.server";

/// The guest's servers: files under argv[1] (http.server), redirects and cookies, and an echo
/// that half-closes after echoing everything.
const GUEST_SERVER: &str = r#"
import http.server, socket, socketserver, sys, threading
root, http_port, echo_port = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])

class Files(http.server.SimpleHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def __init__(self, *args, **kwargs):
        super().__init__(*args, directory=root, **kwargs)
    def answer(self, status, body, headers=()):
        body = body.encode()
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def do_GET(self):
        host = self.headers.get("Host", "")
        if self.path == "/redirect-root":
            return self.answer(302, "moved", [("Location", "/small.txt")])
        if self.path == "/redirect-absolute":
            return self.answer(302, "moved", [("Location", "http://%s/small.txt" % host)])
        if self.path == "/redirect-relative":
            return self.answer(302, "moved", [("Location", "small.txt")])
        if self.path == "/cookie/set":
            return self.answer(200, "set", [("Set-Cookie", "preview=yes; Path=/cookie; HttpOnly"),
                                            ("Set-Cookie", "second=2; Path=/cookie")])
        if self.path in ("/cookie/echo", "/echo-cookie"):
            return self.answer(200, "cookie: %s" % self.headers.get("Cookie", "none"))
        return super().do_GET()
    def log_message(self, *args):
        pass

class Echo(socketserver.BaseRequestHandler):
    def handle(self):
        while True:
            data = self.request.recv(1 << 16)
            if not data:
                break
            self.request.sendall(data)
        self.request.shutdown(socket.SHUT_WR)

for server in (http.server.ThreadingHTTPServer, socketserver.ThreadingTCPServer):
    server.daemon_threads = True
    server.allow_reuse_address = True
echo = socketserver.ThreadingTCPServer(("0.0.0.0", echo_port), Echo)
threading.Thread(target=echo.serve_forever, daemon=True).start()
http.server.ThreadingHTTPServer(("0.0.0.0", http_port), Files).serve_forever()
"#;

/// Runs the inbound checks (one page load, guest and bridge).
pub(super) fn phase(shared: &Shared, r: &mut Report) -> Result<()> {
    let files = shared.dir.join("inbound-files");
    let _ = std::fs::remove_dir_all(&files);
    std::fs::create_dir_all(&files)?;
    std::fs::write(
        files.join("index.html"),
        format!(
            "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>guest index</title></head>\n\
             <body><p id=\"marker\">{MARKER}</p><a href=\"small.txt\">small</a>\n\
             <script src=\"app.js\"></script></body></html>\n"
        ),
    )?;
    std::fs::write(
        files.join("app.js"),
        "document.body.dataset.app = 'ran from ' + location.pathname;\n",
    )?;
    std::fs::write(files.join("small.txt"), "small file of the guest\n")?;
    std::fs::write(files.join("1m"), blob(1 << 20))?;
    std::fs::write(files.join("64m"), blob(BIG))?;
    let plan = serde_json::json!({
        "http": GUEST_HTTP, "echo": GUEST_ECHO, "closed": GUEST_CLOSED, "echoBytes": ECHO_BYTES,
    });
    let query = format!(
        "inbound={}",
        utf8_percent_encode(&plan.to_string(), NON_ALPHANUMERIC)
    );
    let mut phase = Phase::start(shared, "inbound", "inbound.html", &query)?;
    let ca_file = shared.dir.join("proxy-ca-inbound.pem");
    let ready = phase.wait_ready(shared, &ca_file);
    let label = format!("inbound ({})", shared.kind.name());
    r.check(
        &format!("{label}: inbound.html creates NetProxy and connects to the bridge"),
        || {
            ready.as_ref().map_err(|e| anyhow::anyhow!("{e:#}"))?;
            Ok("ready".into())
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
    let server = ready
        .as_ref()
        .map_err(|e| anyhow::anyhow!("page not running: {}", first_line(&format!("{e:#}"))))
        .and_then(|_| {
            start_python_servers(
                &g,
                "inbound-server.py",
                GUEST_SERVER,
                &files,
                [GUEST_HTTP, GUEST_ECHO],
            )
        });
    r.check(
        &format!("{label}: the guest's python http.server and echo listen"),
        || {
            server
                .as_ref()
                .map(|_| format!("ports {GUEST_HTTP} and {GUEST_ECHO}"))
                .map_err(|e| anyhow::anyhow!("{e:#}"))
        },
    );
    let running = |_: ()| -> Result<()> {
        need(&ready)?;
        server
            .as_ref()
            .map(|_| ())
            .map_err(|_| anyhow::anyhow!("the guest's servers are not running"))
    };
    let board = &shared.pages.board;
    // Waits for the page's result of `name`; `Ok` holds its fields when it succeeded.
    let result = |name: &str, limit: Duration| -> Result<Value> {
        running(())?;
        let (_, text) = board.wait(&format!("inbound.{name}"), 0, limit)?;
        let value: Value =
            serde_json::from_str(&text).with_context(|| format!("not JSON: {text}"))?;
        if value.get("ok") != Some(&Value::Bool(true)) {
            bail!(
                "the page failed it: {}",
                value.get("error").and_then(Value::as_str).unwrap_or(&text)
            );
        }
        Ok(value)
    };
    let sha_1m = sha256_hex(&blob(1 << 20));
    let sha_big = sha256_hex(&blob(BIG));
    r.check(
        &format!("{label}: probe({GUEST_HTTP}) turns true once the guest's server listens"),
        || {
            let v = result("probe-up", Duration::from_secs(200))?;
            Ok(format!("after {} probes ({} ms)", v["tries"], v["ms"]))
        },
    );
    r.check(
        &format!("{label}: fetchGuest(\"/1m\"), sha256 in the page"),
        || {
            expect_digest(
                &result("fetch-1m", Duration::from_secs(60))?,
                1 << 20,
                &sha_1m,
            )
        },
    );
    r.check(
        &format!("{label}: fetchGuest of the 64 MiB file, streamed, sha256 in the page"),
        || {
            expect_digest(
                &result("fetch-64m", Duration::from_secs(240))?,
                BIG,
                &sha_big,
            )
        },
    );
    r.check(
        &format!("{label}: fetchGuest of a missing file gives the guest's 404"),
        || {
            let v = result("fetch-404", Duration::from_secs(30))?;
            if v["status"] != 404 {
                bail!("status {}, want 404: {v}", v["status"]);
            }
            Ok(format!("404 with {:?}", v["body"].as_str().unwrap_or("")))
        },
    );
    r.check(
        &format!(
            "{label}: connect({GUEST_ECHO}) echo round trip of {ECHO_BYTES} bytes, half-close"
        ),
        || {
            let v = result("echo", Duration::from_secs(30))?;
            if v["received"] != ECHO_BYTES || v["sentSha256"] != v["receivedSha256"] {
                bail!("the echo differs: {v}");
            }
            Ok(format!(
                "{ECHO_BYTES} bytes back, sha256 ok, EOF ({} ms)",
                v["ms"]
            ))
        },
    );
    r.check(
        &format!("{label}: probe({GUEST_CLOSED}) of a closed port is false"),
        || {
            let v = result("probe-closed", Duration::from_secs(15))?;
            if v["listening"] != false {
                bail!("probe said {v}");
            }
            Ok(format!("false in {} ms", v["ms"]))
        },
    );
    r.check(
        &format!("{label}: connect({GUEST_CLOSED}) is refused quickly with a clear error"),
        || {
            let v = result("connect-closed", Duration::from_secs(15))?;
            let error = v["error"].as_str().unwrap_or("");
            if !error.starts_with("connect:") || !error.contains("refused") {
                bail!("unclear error: {error:?}");
            }
            let ms = v["ms"].as_u64().unwrap_or(u64::MAX);
            if ms > 2000 {
                bail!("took {ms} ms");
            }
            Ok(format!("{error:?} in {ms} ms"))
        },
    );
    r.check(
        &format!("{label}: preview: guest-sw.js registers and controls the page (secure context)"),
        || {
            let v = result("preview-start", Duration::from_secs(40))?;
            if v["secure"] != true {
                bail!("the page is not a secure context: {v}");
            }
            Ok(format!(
                "scope {}, crossOriginIsolated {}",
                v["scope"], v["isolated"]
            ))
        },
    );
    r.check(
        &format!("{label}: preview: an iframe at /guest/{GUEST_HTTP}/ shows the guest's index page and its relative script"),
        || {
            let v = result("preview-iframe", Duration::from_secs(70))?;
            let want_path = format!("/guest/{GUEST_HTTP}/");
            let want_app = format!("ran from {want_path}");
            if v["path"] != want_path.as_str()
                || v["title"] != "guest index"
                || v["marker"] != MARKER
                || v["app"] != want_app.as_str()
                || v["controlled"] != true
            {
                bail!("the iframe loaded something else: {v}");
            }
            Ok(format!("title, marker and app.js as served by the guest at {want_path}"))
        },
    );
    r.check(
        &format!("{label}: preview: the 64 MiB file through guest-sw.js, sha256 in the page"),
        || {
            expect_digest(
                &result("preview-64m", Duration::from_secs(240))?,
                BIG,
                &sha_big,
            )
        },
    );
    r.check(
        &format!("{label}: preview: redirects (root-relative, absolute to the guest, relative) stay in the preview path"),
        || {
            let v = result("preview-redirects", Duration::from_secs(30))?;
            let want = format!("/guest/{GUEST_HTTP}/small.txt");
            for name in ["redirect-root", "redirect-absolute", "redirect-relative"] {
                let one = &v[name];
                if one["status"] != 200
                    || one["redirected"] != true
                    || one["url"] != want.as_str()
                    || one["body"] != "small file of the guest\n"
                {
                    bail!("{name}: {one}");
                }
            }
            Ok(format!("all three end at {want}"))
        },
    );
    r.check(
        &format!("{label}: preview: cookies the guest sets come back on its path only, outside the page's cookies"),
        || {
            let v = result("preview-cookies", Duration::from_secs(30))?;
            let in_path = v["inPath"].as_str().unwrap_or("");
            if v["setStatus"] != 200
                || !in_path.contains("preview=yes")
                || !in_path.contains("second=2")
                || v["outside"] != "cookie: none"
                || v["documentCookie"].as_str().unwrap_or("").contains("preview")
            {
                bail!("{v}");
            }
            Ok(format!("{in_path:?} under /cookie, none outside"))
        },
    );
    r.check(
        &format!("{label}: preview: the page's other requests and other origins pass through"),
        || {
            let v = result("preview-passthrough", Duration::from_secs(30))?;
            if v["own"] != 200 || v["other"] != 200 || v["otherBody"] != "hello from the origin" {
                bail!("{v}");
            }
            Ok("own /config.json and the origin's /hello answered by the network".into())
        },
    );
    r.check(
        &format!("{label}: preview: with no page answering, 503 within the worker's timeout and a clear body"),
        || {
            let v = result("preview-no-page", Duration::from_secs(30))?;
            let body = v["body"].as_str().unwrap_or("");
            if v["status"] != 503 || !body.contains("no page with a running NetProxy") {
                bail!("{v}");
            }
            let ms = v["ms"].as_u64().unwrap_or(u64::MAX);
            if !(2500..10000).contains(&ms) {
                bail!("answered after {ms} ms (the worker waits 3000)");
            }
            Ok(format!("503 after {ms} ms: {body:?}"))
        },
    );
    r.check(
        &format!("{label}: tcp.open back to 0 (idle keep-alive connections dropped)"),
        || {
            running(())?;
            idle(shared)
        },
    );
    r.check(&format!("{label}: no page errors"), || {
        need(&ready)?;
        if let Some((_, errors)) = board.get("page-error") {
            bail!("the page reported: {errors}");
        }
        Ok(phase.bridge.summary())
    });
    drop(g);
    drop(server);
    r.check(&format!("{label}: browser still running"), || {
        phase.browser_alive()
    });
    drop(phase);
    Ok(())
}

fn expect_digest(v: &Value, len: usize, sha: &str) -> Result<String> {
    if v["status"] != 200 || v["bytes"] != len || v["sha256"] != sha {
        bail!(
            "status {}, {} bytes, sha256 {}: want 200, {len}, {sha}",
            v["status"],
            v["bytes"],
            v["sha256"]
        );
    }
    Ok(format!(
        "sha256 ok, {:.1} MB/s",
        v["mbps"].as_f64().unwrap_or(0.0)
    ))
}

/// Waits until the page's stats show no open TCP connection (the keep-alive pool drops idle
/// connections after 30 s).
fn idle(shared: &Shared) -> Result<String> {
    let deadline = Instant::now() + Duration::from_secs(50);
    loop {
        let (_, text) = shared
            .pages
            .board
            .get("stats")
            .context("the page posted no stats")?;
        let stats: Value = serde_json::from_str(&text)?;
        let open = stats.pointer("/tcp/open").and_then(Value::as_u64);
        if open == Some(0) {
            return Ok(format!(
                "tcp.open 0 (accepted {})",
                stats.pointer("/tcp/accepted").unwrap_or(&Value::Null)
            ));
        }
        if Instant::now() > deadline {
            bail!("tcp.open is {open:?} 50 s after the last request");
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}
