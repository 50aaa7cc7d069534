//! The forward phase of `cargo xtask e2e`: host ports carried into a real Linux guest by the
//! runner's `--forward` (`Stack::connect` underneath). The guest runs a Python HTTP server
//! (`http.server`, plus POST answering the body's sha256) and a TCP echo server; curl and a
//! small client on the host use them through the forwards. Before the guest has a lease, and
//! to a port nothing listens on, forwarded connections are reset at once.

use std::path::Path;
use std::process::Child;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::Value;

use crate::harness::daemon::free_port;
use crate::harness::guest::{build_runner, text, Guest, GuestNs, Runner};
use crate::harness::origins::{blob, sha256_hex};
use crate::report::Report;
use crate::tools::{ensure_programs, workspace_root};

/// The guest's HTTP server port.
pub(crate) const GUEST_HTTP: u16 = 8000;
/// The guest's TCP echo port.
pub(crate) const GUEST_ECHO: u16 = 7000;
/// A guest port nothing listens on.
const GUEST_CLOSED: u16 = 8999;

/// The guest's servers: files under argv[1], POST answers `POST <bytes> <sha256>` (with
/// ` in <n> chunks` after a chunked body), and an echo server that half-closes after echoing
/// everything.
pub(crate) const GUEST_SERVER: &str = r#"
import hashlib, http.server, socket, socketserver, sys, threading
root, http_port, echo_port = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])

class Files(http.server.SimpleHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body are separate writes: without this, Nagle's algorithm and a delayed ACK
    # hold every keep-alive response for 40 ms.
    disable_nagle_algorithm = True
    def __init__(self, *args, **kwargs):
        super().__init__(*args, directory=root, **kwargs)
    def do_POST(self):
        digest, received, chunks = hashlib.sha256(), 0, None
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            # A body of unknown length (fetchGuest's over 64 KiB) arrives chunked.
            chunks = 0
            while True:
                size = int(self.rfile.readline().split(b";")[0], 16)
                if size == 0:
                    break
                chunks += 1
                while size:
                    chunk = self.rfile.read(min(size, 1 << 16))
                    if not chunk:
                        raise ConnectionError("the chunked body ended early")
                    digest.update(chunk)
                    received += len(chunk)
                    size -= len(chunk)
                self.rfile.readline()
            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                pass
        else:
            left = int(self.headers.get("Content-Length", "0"))
            while left:
                chunk = self.rfile.read(min(left, 1 << 16))
                if not chunk:
                    break
                digest.update(chunk)
                received += len(chunk)
                left -= len(chunk)
        body = "POST %d %s" % (received, digest.hexdigest())
        if chunks is not None:
            body += " in %d chunks" % chunks
        body = body.encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
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

/// A process in the guest namespace, killed when dropped.
pub(crate) struct GuestProcess(Child);

impl Drop for GuestProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs the forward phase (its own runner, guest and directory).
pub fn run(filter: Option<String>) -> Result<()> {
    ensure_programs(&[
        ("curl", "curl"),
        ("python3", "python3"),
        ("udhcpc", "udhcpc"),
    ])?;
    let binary = build_runner()?;
    let dir = workspace_root().join("target/e2e-forward");
    let _ = std::fs::remove_dir_all(&dir);
    let files = dir.join("files");
    std::fs::create_dir_all(&files)?;
    for (name, len) in [
        ("small", 1024),
        ("1m", 1 << 20),
        ("64m", 64 << 20),
        ("16m", 16 << 20),
    ] {
        std::fs::write(files.join(name), blob(len))?;
    }
    let http_port = free_port()?;
    let echo_port = free_port()?;
    let closed_port = free_port()?;
    let stats = dir.join("stats.json");
    let args: Vec<String> = vec![
        "--forward".into(),
        format!("{http_port}={GUEST_HTTP}"),
        "--forward".into(),
        format!("127.0.0.1:{echo_port}={GUEST_ECHO}"),
        "--forward".into(),
        format!("{closed_port}={GUEST_CLOSED}"),
        "--stats-file".into(),
        stats.display().to_string(),
    ];
    let id = std::process::id();
    let tap = format!("c2wf{id}");
    let mut runner = Runner::start_tap(&binary, &tap, &args, dir.join("runner.log"))?;
    let work = dir.join("work");
    let ns = GuestNs::behind(&format!("c2w-fwd-{id}"), &tap, &work)?;
    let guest = Guest {
        ns: &ns,
        ca: dir.join("unused-ca.pem"),
        work,
    };
    let http = format!("http://127.0.0.1:{http_port}");
    let mut r = Report::filtered(filter);
    r.check(
        "forward: before the guest has a lease, a connection is reset at once",
        || refused_fast(&http),
    );
    r.check("dhcp (forward): udhcpc gets a lease", || guest.dhcp());
    let server = start_guest_server(&guest, &files);
    r.check(
        "forward: the guest's servers are up (python http.server, echo)",
        || {
            server
                .as_ref()
                .map(|_| "listening".to_string())
                .map_err(|e| anyhow::anyhow!("{e:#}"))
        },
    );
    r.check("forward: 1 MiB GET from the guest, sha256", || {
        download(&http, "1m", 1 << 20)
    });
    r.check("forward: 64 MiB GET from the guest, sha256", || {
        download(&http, "64m", 64 << 20)
    });
    r.check(
        "forward: 64 concurrent requests, every one answered",
        || concurrent(&http, 64),
    );
    r.check(
        "forward: 16 MiB POST to the guest, sha256 at the guest",
        || upload(&files.join("16m"), &http, 16 << 20),
    );
    r.check(
        "forward: 1 MiB through the guest's TCP echo, half-close, sha256",
        || echo(echo_port, 1 << 20),
    );
    r.check(
        "forward: a guest port nothing listens on is reset at once",
        || refused_fast(&format!("http://127.0.0.1:{closed_port}")),
    );
    r.check("forward: counters back to idle (tcp.open 0)", || {
        idle(&stats)
    });
    r.check("runner (forward): still running", || {
        if runner.is_running() {
            Ok("alive".into())
        } else {
            bail!("the runner exited: {}", runner.log_tail())
        }
    });
    drop(server);
    drop(guest);
    drop(ns);
    drop(runner);
    r.finish("e2e forward")
}

/// Starts the guest's servers ([`GUEST_SERVER`]) and waits until both ports accept.
pub(crate) fn start_guest_server(guest: &Guest, files: &Path) -> Result<GuestProcess> {
    start_python_servers(
        guest,
        "guest-server.py",
        GUEST_SERVER,
        files,
        [GUEST_HTTP, GUEST_ECHO],
    )
}

/// Starts `script` (Python, saved as `name` in the guest's work folder) in the guest with
/// `files` and `ports` as its arguments, and waits until every port accepts inside the
/// namespace.
pub(crate) fn start_python_servers(
    guest: &Guest,
    name: &str,
    script: &str,
    files: &Path,
    ports: [u16; 2],
) -> Result<GuestProcess> {
    let path = guest.work.join(name);
    std::fs::write(&path, script)?;
    let child = guest
        .ns
        .command(&[
            "python3",
            &path.display().to_string(),
            &files.display().to_string(),
            &ports[0].to_string(),
            &ports[1].to_string(),
        ])
        .spawn()
        .context("starting the guest's servers")?;
    let process = GuestProcess(child);
    let probe = format!(
        "import socket\nfor p in ({}, {}):\n    socket.create_connection(('127.0.0.1', p), timeout=1).close()\n",
        ports[0], ports[1]
    );
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let out = guest
            .ns
            .output_within(&["python3", "-c", &probe], Duration::from_secs(5))?;
        if out.status.success() {
            return Ok(process);
        }
        if Instant::now() > deadline {
            bail!("the guest's servers do not listen: {}", text(&out));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// curl on the host: exit 7 (refused), 52 (empty reply) or 56 (reset) within 3 s.
fn refused_fast(url: &str) -> Result<String> {
    let started = Instant::now();
    let out = std::process::Command::new("curl")
        .args(["-sS", "--max-time", "10", url])
        .output()?;
    let elapsed = started.elapsed();
    let code = out.status.code();
    if !matches!(code, Some(7 | 52 | 56)) {
        bail!("expected a reset, got exit {code:?}: {}", text(&out));
    }
    if elapsed > Duration::from_secs(3) {
        bail!("took {elapsed:?}");
    }
    Ok(format!(
        "curl exit {} after {} ms",
        code.unwrap_or(-1),
        elapsed.as_millis()
    ))
}

fn curl_to_file(url: &str, out: &Path) -> Result<()> {
    let result = std::process::Command::new("curl")
        .args(["-sS", "--fail", "--max-time", "120", "-o"])
        .arg(out)
        .arg(url)
        .output()?;
    if !result.status.success() {
        bail!("curl {url}: {}", text(&result));
    }
    Ok(())
}

fn download(base: &str, name: &str, len: usize) -> Result<String> {
    let out = workspace_root()
        .join("target/e2e-forward")
        .join(format!("{name}.out"));
    let started = Instant::now();
    curl_to_file(&format!("{base}/{name}"), &out)?;
    let secs = started.elapsed().as_secs_f64();
    let got = sha256_hex(&std::fs::read(&out)?);
    let want = sha256_hex(&blob(len));
    if got != want {
        bail!("sha256 {got}, want {want}");
    }
    Ok(format!("sha256 ok, {:.1} MB/s", len as f64 / secs / 1e6))
}

fn concurrent(base: &str, count: usize) -> Result<String> {
    let started = Instant::now();
    let out = std::process::Command::new("sh")
        .args([
            "-c",
            &format!(
                "seq {count} | xargs -P {count} -I{{}} curl -sS --max-time 60 -o /dev/null -w '%{{http_code}}\\n' {base}/small"
            ),
        ])
        .output()?;
    let codes = String::from_utf8_lossy(&out.stdout);
    let ok = codes.lines().filter(|l| *l == "200").count();
    if ok != count {
        bail!("{ok} of {count} answered 200: {codes:?} {}", text(&out));
    }
    Ok(format!(
        "{count} × 200 in {} ms",
        started.elapsed().as_millis()
    ))
}

fn upload(file: &Path, base: &str, len: usize) -> Result<String> {
    let started = Instant::now();
    let out = std::process::Command::new("curl")
        .args(["-sS", "--fail", "--max-time", "120", "--data-binary"])
        .arg(format!("@{}", file.display()))
        .arg(format!("{base}/upload"))
        .output()?;
    let got = String::from_utf8_lossy(&out.stdout).to_string();
    let want = format!("POST {len} {}", sha256_hex(&blob(len)));
    if got.trim() != want {
        bail!("the guest answered {got:?} ({}), want {want:?}", text(&out));
    }
    Ok(format!(
        "sha256 ok at the guest, {:.1} MB/s",
        len as f64 / started.elapsed().as_secs_f64() / 1e6
    ))
}

fn echo(port: u16, len: usize) -> Result<String> {
    use std::io::{Read, Write};
    let mut socket = std::net::TcpStream::connect(("127.0.0.1", port))?;
    socket.set_read_timeout(Some(Duration::from_secs(30)))?;
    let data = blob(len);
    let mut reader = socket.try_clone()?;
    let receiver = std::thread::spawn(move || -> std::io::Result<Vec<u8>> {
        let mut back = Vec::new();
        reader.read_to_end(&mut back)?;
        Ok(back)
    });
    socket.write_all(&data)?;
    socket.shutdown(std::net::Shutdown::Write)?;
    let back = receiver
        .join()
        .map_err(|_| anyhow::anyhow!("the reader panicked"))??;
    if sha256_hex(&back) != sha256_hex(&data) {
        bail!(
            "{} bytes came back, not the {} sent",
            back.len(),
            data.len()
        );
    }
    Ok(format!(
        "{len} bytes echoed, sha256 ok, EOF after the half-close"
    ))
}

fn idle(stats: &Path) -> Result<String> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let doc: Value = serde_json::from_str(&std::fs::read_to_string(stats)?)?;
        let open = doc.pointer("/tcp/open").and_then(Value::as_u64);
        if open == Some(0) {
            return Ok(format!(
                "tcp.open 0 ({} accepted, {} refused)",
                doc.pointer("/tcp/accepted")
                    .and_then(Value::as_u64)
                    .unwrap_or(0),
                doc.pointer("/tcp/refused")
                    .and_then(Value::as_u64)
                    .unwrap_or(0)
            ));
        }
        if Instant::now() > deadline {
            bail!("tcp.open is {open:?} 15 s after the last transfer");
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}
