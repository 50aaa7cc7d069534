//! Local origin servers for end-to-end tests, on the host's loopback only, over HTTP and
//! HTTPS (with a test CA made by openssl). They serve deterministic bodies whose sha256 the
//! checks compare against, echo uploads, a pip "simple" index with one wheel, and a git
//! repository through `git http-backend` (CGI).

pub mod threaded;

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread;

use crate::harness::server_pool::{header, ServerPool};

use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};

use crate::tools::run;

/// Content of the file in the test git repository.
pub const GIT_README: &str = "cloned through c2w-net-proxy\n";
/// The test wheel's project name and version.
pub const WHEEL_PROJECT: &str = "c2w-probe";

/// A running origin server; stops when dropped.
pub struct Origin {
    /// Serves until dropped.
    _pool: ServerPool,
    /// Where it listens (127.0.0.1, a free port).
    pub addr: SocketAddr,
    /// `http` or `https`.
    pub scheme: &'static str,
}

/// Whether an origin answers browsers' cross-origin requests (the browser e2e's `fetch()`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Cors {
    /// No CORS headers at all (a browser refuses to hand the response to a page).
    #[default]
    Off,
    /// `Access-Control-Allow-Origin` (the request's Origin, with credentials allowed, or `*`),
    /// preflight answers for OPTIONS, and every header exposed.
    On,
}

/// Files the origins serve and the test CA of the HTTPS origin.
#[derive(Debug, Clone)]
pub struct OriginFiles {
    /// Directory holding everything.
    pub dir: PathBuf,
    /// The test CA certificate (PEM) that signed the HTTPS origin's certificate.
    pub ca_cert: PathBuf,
    server_cert: PathBuf,
    server_key: PathBuf,
}

/// The deterministic body served at `/blob/<len>`: xorshift output no compressor or dedup
/// can fake.
pub fn blob(len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 4);
    let mut x: u32 = 0x9e37_79b9;
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// [`blob`]'s bytes produced as they are read, so a large body costs no memory.
pub struct BlobReader {
    x: u32,
    left: usize,
    /// Bytes of the current word not handed out yet (little-endian, like [`blob`]).
    pending: [u8; 4],
    pending_len: usize,
}

impl BlobReader {
    /// The first `len` bytes of the blob.
    pub fn new(len: usize) -> Self {
        Self {
            x: 0x9e37_79b9,
            left: len,
            pending: [0; 4],
            pending_len: 0,
        }
    }
}

impl std::io::Read for BlobReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let want = buf.len().min(self.left);
        let mut n = 0;
        while n < want {
            if self.pending_len == 0 {
                self.x ^= self.x << 13;
                self.x ^= self.x >> 17;
                self.x ^= self.x << 5;
                self.pending = self.x.to_le_bytes();
                self.pending_len = 4;
            }
            let start = 4 - self.pending_len;
            let take = (want - n).min(self.pending_len);
            buf[n..n + take].copy_from_slice(&self.pending[start..start + take]);
            self.pending_len -= take;
            n += take;
        }
        self.left -= n;
        Ok(n)
    }
}

/// Hex sha256 of `data`.
pub fn sha256_hex(data: &[u8]) -> String {
    Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

impl OriginFiles {
    /// Creates the test CA, the origin's certificate (for 127.0.0.1 and localhost), a wheel
    /// and a git repository under `dir`.
    pub fn create(dir: &Path) -> Result<Self> {
        if dir.exists() {
            std::fs::remove_dir_all(dir)?;
        }
        std::fs::create_dir_all(dir)?;
        let p = |name: &str| dir.join(name);
        let quiet = |cmd: &mut Command| run(cmd.stdout(Stdio::null()).stderr(Stdio::null()));
        quiet(
            Command::new("openssl")
                .args([
                    "req",
                    "-x509",
                    "-newkey",
                    "ec",
                    "-pkeyopt",
                    "ec_paramgen_curve:P-256",
                    "-nodes",
                    "-days",
                    "2",
                ])
                .args(["-subj", "/CN=xtask origin test CA"])
                .args([
                    "-addext",
                    "basicConstraints=critical,CA:TRUE",
                    "-addext",
                    "keyUsage=critical,keyCertSign,cRLSign",
                ])
                .arg("-keyout")
                .arg(p("ca.key"))
                .arg("-out")
                .arg(p("ca.pem")),
        )?;
        quiet(
            Command::new("openssl")
                .args([
                    "req",
                    "-new",
                    "-newkey",
                    "ec",
                    "-pkeyopt",
                    "ec_paramgen_curve:P-256",
                    "-nodes",
                    "-subj",
                    "/CN=127.0.0.1",
                ])
                .arg("-keyout")
                .arg(p("server.key"))
                .arg("-out")
                .arg(p("server.csr")),
        )?;
        std::fs::write(
            p("server.ext"),
            "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n",
        )?;
        quiet(
            Command::new("openssl")
                .args(["x509", "-req", "-days", "2"])
                .arg("-in")
                .arg(p("server.csr"))
                .arg("-CA")
                .arg(p("ca.pem"))
                .arg("-CAkey")
                .arg(p("ca.key"))
                .arg("-CAcreateserial")
                .arg("-out")
                .arg(p("server.pem"))
                .arg("-extfile")
                .arg(p("server.ext")),
        )?;
        make_wheel(dir)?;
        make_git_repo(&dir.join("git"))?;
        Ok(Self {
            dir: dir.to_path_buf(),
            ca_cert: p("ca.pem"),
            server_cert: p("server.pem"),
            server_key: p("server.key"),
        })
    }

    /// The HTTPS origin's certificate (PEM), e.g. to pin its key in a browser.
    pub fn server_cert(&self) -> &Path {
        &self.server_cert
    }

    /// The HTTPS origin's private key (PEM).
    pub fn server_key(&self) -> &Path {
        &self.server_key
    }
}

fn wheel_name() -> String {
    format!("{}-1.0-py3-none-any.whl", WHEEL_PROJECT.replace('-', "_"))
}

/// Writes a minimal, valid pure-Python wheel (with a RECORD of sha256 digests).
fn make_wheel(dir: &Path) -> Result<()> {
    let script = r#"
import base64, hashlib, sys, zipfile
path = sys.argv[1]
files = {
    "c2w_probe/__init__.py": b"VALUE = 'installed through c2w-net-proxy'\n",
    "c2w_probe-1.0.dist-info/METADATA": b"Metadata-Version: 2.1\nName: c2w-probe\nVersion: 1.0\n",
    "c2w_probe-1.0.dist-info/WHEEL": b"Wheel-Version: 1.0\nGenerator: xtask\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
}
record = ""
for name, data in files.items():
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    record += f"{name},sha256={digest},{len(data)}\n"
record += "c2w_probe-1.0.dist-info/RECORD,,\n"
files["c2w_probe-1.0.dist-info/RECORD"] = record.encode()
with zipfile.ZipFile(path, "w") as z:
    for name, data in files.items():
        z.writestr(name, data)
"#;
    run(Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(dir.join(wheel_name())))
}

/// A git repository with one commit holding README.
fn make_git_repo(dir: &Path) -> Result<()> {
    let repo = dir.join("repo");
    std::fs::create_dir_all(&repo)?;
    let git = |args: &[&str]| {
        run(Command::new("git")
            .args(args)
            .current_dir(&repo)
            .stdout(Stdio::null())
            .stderr(Stdio::null()))
    };
    git(&["init", "-q", "-b", "main"])?;
    std::fs::write(repo.join("README"), GIT_README)?;
    git(&["add", "README"])?;
    git(&[
        "-c",
        "user.name=xtask",
        "-c",
        "user.email=xtask@localhost",
        "commit",
        "-q",
        "-m",
        "test repository",
    ])?;
    git(&["config", "http.receivepack", "false"])?;
    Ok(())
}

impl Origin {
    /// Starts a plain HTTP origin on 127.0.0.1 with `workers` threads.
    pub fn http(files: &OriginFiles, workers: usize) -> Result<Self> {
        Self::http_with(files, workers, Cors::Off)
    }

    /// Starts a plain HTTP origin on 127.0.0.1, with or without CORS headers.
    pub fn http_with(files: &OriginFiles, workers: usize, cors: Cors) -> Result<Self> {
        let server = tiny_http::Server::http("127.0.0.1:0").map_err(|e| anyhow::anyhow!("{e}"))?;
        Self::spawn(server, files, workers, "http", cors)
    }

    /// Starts an HTTPS origin on 127.0.0.1 (certificate for 127.0.0.1 from the test CA).
    pub fn https(files: &OriginFiles, workers: usize) -> Result<Self> {
        Self::https_with(files, workers, Cors::Off)
    }

    /// Starts an HTTPS origin on 127.0.0.1, with or without CORS headers.
    pub fn https_with(files: &OriginFiles, workers: usize, cors: Cors) -> Result<Self> {
        let ssl = tiny_http::SslConfig {
            certificate: std::fs::read(&files.server_cert)?,
            private_key: std::fs::read(&files.server_key)?,
        };
        let server =
            tiny_http::Server::https("127.0.0.1:0", ssl).map_err(|e| anyhow::anyhow!("{e}"))?;
        Self::spawn(server, files, workers, "https", cors)
    }

    fn spawn(
        server: tiny_http::Server,
        files: &OriginFiles,
        workers: usize,
        scheme: &'static str,
        cors: Cors,
    ) -> Result<Self> {
        let files = files.clone();
        let pool = ServerPool::spawn(server, workers, move |request| {
            handle(request, &files, cors)
        })?;
        let addr = pool.addr;
        Ok(Self {
            _pool: pool,
            addr,
            scheme,
        })
    }

    /// `http(s)://127.0.0.1:PORT`.
    pub fn base_url(&self) -> String {
        format!("{}://{}", self.scheme, self.addr)
    }
}

/// The CORS headers for `request`'s answer (none when `cors` is off).
fn cors_headers(request: &tiny_http::Request, cors: Cors) -> Vec<tiny_http::Header> {
    if cors == Cors::Off {
        return Vec::new();
    }
    let find = |name: &'static str| {
        request
            .headers()
            .iter()
            .find(|h| h.field.equiv(name))
            .map(|h| h.value.to_string())
    };
    let mut out = vec![
        header("Vary", "Origin"),
        header("Access-Control-Expose-Headers", "*"),
    ];
    match find("Origin") {
        // Echoing the origin (not `*`) lets the page's own credentialed fetch set a cookie.
        Some(origin) => {
            out.push(header("Access-Control-Allow-Origin", &origin));
            out.push(header("Access-Control-Allow-Credentials", "true"));
        }
        None => out.push(header("Access-Control-Allow-Origin", "*")),
    }
    if request.method() == &tiny_http::Method::Options {
        out.push(header(
            "Access-Control-Allow-Methods",
            "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS",
        ));
        let asked = find("Access-Control-Request-Headers").unwrap_or_else(|| "*".into());
        out.push(header("Access-Control-Allow-Headers", &asked));
        out.push(header("Access-Control-Max-Age", "600"));
    }
    out
}

/// Responds with `response` plus `extra` headers.
fn send<R: std::io::Read>(
    request: tiny_http::Request,
    mut response: tiny_http::Response<R>,
    extra: &[tiny_http::Header],
) -> std::io::Result<()> {
    for h in extra {
        response.add_header(h.clone());
    }
    request.respond(response)
}

fn handle(mut request: tiny_http::Request, files: &OriginFiles, cors: Cors) {
    let extra = cors_headers(&request, cors);
    if cors == Cors::On && request.method() == &tiny_http::Method::Options {
        let _ = send(request, tiny_http::Response::empty(204), &extra);
        return;
    }
    let url = request.url().to_string();
    let (path, query) = url.split_once('?').unwrap_or((&url, ""));
    let path = path.to_string();
    let query = query.to_string();
    let text = |s: String| {
        tiny_http::Response::from_string(s).with_header(header("Content-Type", "text/plain"))
    };
    let _ = if let Some(len) = path.strip_prefix("/blob/") {
        match len.parse::<usize>() {
            Ok(len) if len <= 1 << 30 => send(
                request,
                tiny_http::Response::new(
                    tiny_http::StatusCode(200),
                    vec![header("Content-Type", "application/octet-stream")],
                    BlobReader::new(len),
                    Some(len),
                    None,
                ),
                &extra,
            ),
            _ => send(
                request,
                text("bad length\n".into()).with_status_code(400),
                &extra,
            ),
        }
    } else if path == "/echo" {
        // The request body's length and sha256, and how it was framed.
        let chunked = request
            .headers()
            .iter()
            .any(|h| h.field.equiv("Transfer-Encoding"));
        let mut body = Vec::new();
        let _ = request.as_reader().read_to_end(&mut body);
        let method = request.method().to_string();
        send(
            request,
            text(format!(
                "{method} {} {} chunked={chunked}\n",
                body.len(),
                sha256_hex(&body)
            )),
            &extra,
        )
    } else if path == "/hello" {
        send(request, text("hello from the origin\n".into()), &extra)
    } else if path == "/headers" {
        let mut s = String::new();
        for h in request.headers() {
            s.push_str(&format!("{}: {}\n", h.field, h.value));
        }
        send(request, text(s), &extra)
    } else if path == "/set-cookie" {
        // A cookie for this host in the browser profile that fetches it (the browser e2e checks
        // the proxy never sends it).
        send(
            request,
            text("cookie set\n".into()).with_header(header(
                "Set-Cookie",
                "c2w_probe=page-profile-secret; Path=/; Max-Age=3600; SameSite=Lax",
            )),
            &extra,
        )
    } else if path == "/redirect" {
        send(
            request,
            tiny_http::Response::empty(302).with_header(header("Location", "/hello")),
            &extra,
        )
    } else if path == "/simple/" || path == format!("/simple/{WHEEL_PROJECT}/") {
        let body = if path == "/simple/" {
            format!("<!DOCTYPE html><html><body><a href=\"/simple/{WHEEL_PROJECT}/\">{WHEEL_PROJECT}</a></body></html>\n")
        } else {
            let wheel = std::fs::read(files.dir.join(wheel_name())).unwrap_or_default();
            format!(
                "<!DOCTYPE html><html><body><a href=\"/files/{0}#sha256={1}\">{0}</a></body></html>\n",
                wheel_name(),
                sha256_hex(&wheel)
            )
        };
        send(
            request,
            tiny_http::Response::from_string(body).with_header(header("Content-Type", "text/html")),
            &extra,
        )
    } else if path == format!("/files/{}", wheel_name()) {
        match std::fs::read(files.dir.join(wheel_name())) {
            Ok(data) => send(
                request,
                tiny_http::Response::from_data(data)
                    .with_header(header("Content-Type", "application/octet-stream")),
                &extra,
            ),
            Err(_) => send(
                request,
                text("missing wheel\n".into()).with_status_code(500),
                &extra,
            ),
        }
    } else if path.starts_with("/git/") {
        git_cgi(request, files, &path, &query, &extra)
    } else {
        send(
            request,
            text("not found here\n".into()).with_status_code(404),
            &extra,
        )
    };
}

/// A CGI program's answer: status, headers, body.
type CgiResponse = (u16, Vec<(String, String)>, Vec<u8>);

/// Runs `git http-backend` as a CGI program for the smart HTTP protocol.
fn git_cgi(
    mut request: tiny_http::Request,
    files: &OriginFiles,
    path: &str,
    query: &str,
    extra: &[tiny_http::Header],
) -> std::io::Result<()> {
    let result = (|| -> Result<CgiResponse> {
        let mut body = Vec::new();
        request.as_reader().read_to_end(&mut body)?;
        let content_type = request
            .headers()
            .iter()
            .find(|h| h.field.equiv("Content-Type"))
            .map(|h| h.value.to_string())
            .unwrap_or_default();
        let mut child = Command::new("git")
            .arg("http-backend")
            .env("GIT_PROJECT_ROOT", files.dir.join("git"))
            .env("GIT_HTTP_EXPORT_ALL", "1")
            .env("REQUEST_METHOD", request.method().to_string())
            .env("PATH_INFO", path.trim_start_matches("/git"))
            .env("QUERY_STRING", query)
            .env("CONTENT_TYPE", content_type)
            .env("CONTENT_LENGTH", body.len().to_string())
            .env("REMOTE_ADDR", "127.0.0.1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()?;
        let mut stdin = child.stdin.take().context("stdin")?;
        let writer = thread::spawn(move || {
            let _ = stdin.write_all(&body);
        });
        let out = child.wait_with_output()?;
        let _ = writer.join();
        let split = out
            .stdout
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .map(|p| (p, 4))
            .or_else(|| {
                out.stdout
                    .windows(2)
                    .position(|w| w == b"\n\n")
                    .map(|p| (p, 2))
            });
        let Some((at, sep)) = split else {
            bail!("git http-backend wrote no header")
        };
        let head = String::from_utf8_lossy(&out.stdout[..at]).into_owned();
        let mut status = 200;
        let mut headers = Vec::new();
        for line in head.lines() {
            let Some((k, v)) = line.split_once(':') else {
                continue;
            };
            if k.eq_ignore_ascii_case("Status") {
                status = v
                    .trim()
                    .split(' ')
                    .next()
                    .and_then(|c| c.parse().ok())
                    .unwrap_or(500);
            } else {
                headers.push((k.trim().to_string(), v.trim().to_string()));
            }
        }
        Ok((status, headers, out.stdout[at + sep..].to_vec()))
    })();
    match result {
        Ok((status, headers, body)) => {
            let mut response = tiny_http::Response::from_data(body).with_status_code(status);
            for (k, v) in headers {
                response.add_header(header(&k, &v));
            }
            send(request, response, extra)
        }
        Err(err) => send(
            request,
            tiny_http::Response::from_string(format!("cgi error: {err:#}\n")).with_status_code(500),
            extra,
        ),
    }
}

/// An origin that fails on purpose, for the robustness checks: a plain `std` listener on
/// 127.0.0.1 answered by one thread, so a hanging request cannot starve the other origins'
/// workers.
/// - `/reset/<len>`: a 200 with `Content-Length: <len>`, half the body (of [`blob`]), then a
///   reset (SO_LINGER 0 and close).
/// - `/hang`: reads the request and never answers; the connection is held (at most
///   [`FaultOrigin::MAX_HELD`] at once) until the origin is dropped.
///
/// - `OPTIONS` (a CORS preflight): a 204 allowing everything, and a close.
///
/// Anything else gets a 404 and a close.
pub struct FaultOrigin {
    /// Where it listens.
    pub addr: SocketAddr,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
}

impl FaultOrigin {
    /// Hanging connections held at once; older ones are closed beyond this.
    pub const MAX_HELD: usize = 64;

    /// Starts it on a free port of 127.0.0.1.
    pub fn start() -> Result<Self> {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        listener.set_nonblocking(true)?;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let thread = thread::spawn(move || {
            let mut held = std::collections::VecDeque::new();
            while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        if let Some(hung) = fault_answer(stream) {
                            if held.len() >= Self::MAX_HELD {
                                held.pop_front();
                            }
                            held.push_back(hung);
                        }
                    }
                    Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => {
                        thread::sleep(std::time::Duration::from_millis(10));
                    }
                    Err(_) => thread::sleep(std::time::Duration::from_millis(10)),
                }
            }
        });
        Ok(Self {
            addr,
            stop,
            thread: Some(thread),
        })
    }

    /// `http://127.0.0.1:PORT`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for FaultOrigin {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Permissive CORS headers on the fault origin's answers, so a browser's `fetch()` reaches the
/// failure (a reset body) rather than a CORS refusal.
const FAULT_CORS: &str = "Access-Control-Allow-Origin: *\r\n\
                          Access-Control-Allow-Methods: GET, HEAD, POST, OPTIONS\r\n\
                          Access-Control-Allow-Headers: *\r\n";

/// Reads one request head and misbehaves as its path asks; returns the stream to hold for
/// `/hang`.
fn fault_answer(mut stream: std::net::TcpStream) -> Option<std::net::TcpStream> {
    use std::io::Read;
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_read_timeout(Some(std::time::Duration::from_secs(5)));
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 64 * 1024 {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => return None,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    let line = String::from_utf8_lossy(&head);
    let method = line.split(' ').next().unwrap_or("").to_string();
    let path = line.split(' ').nth(1).unwrap_or("").to_string();
    if method == "OPTIONS" {
        let _ = write!(
            stream,
            "HTTP/1.1 204 No Content\r\n{FAULT_CORS}Access-Control-Max-Age: 600\r\nConnection: close\r\n\r\n"
        );
        return None;
    }
    if path == "/hang" {
        return Some(stream);
    }
    if let Some(len) = path
        .strip_prefix("/reset/")
        .and_then(|n| n.parse::<usize>().ok())
        .filter(|&n| n <= 1 << 30)
    {
        let body = blob(len);
        let _ = write!(
            stream,
            "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: {len}\r\n{FAULT_CORS}\r\n"
        );
        let _ = stream.write_all(&body[..len / 2]);
        let _ = stream.flush();
        // Give the half body time to leave before the reset discards what is unsent.
        thread::sleep(std::time::Duration::from_millis(200));
        reset(&stream);
        return None;
    }
    let _ = stream.write_all(
        b"HTTP/1.1 404 Not Found\r\nContent-Length: 15\r\nConnection: close\r\n\r\nnot found here\n",
    );
    None
}

/// Closes `stream` with a TCP reset instead of a FIN (SO_LINGER with a zero timeout).
fn reset(stream: &std::net::TcpStream) {
    use std::os::fd::AsRawFd;
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: setsockopt on a descriptor `stream` owns, with a correctly sized `linger`.
    unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use super::*;

    #[test]
    fn blob_reader_yields_the_blob_whatever_the_read_sizes() {
        for len in [0, 1, 3, 4, 5, 1000, 65_537] {
            for step in [1, 3, 4, 7, 4096, 100_000] {
                let mut reader = BlobReader::new(len);
                let mut out = Vec::new();
                let mut buf = vec![0; step];
                loop {
                    let n = reader.read(&mut buf).unwrap();
                    if n == 0 {
                        break;
                    }
                    out.extend_from_slice(&buf[..n]);
                }
                assert_eq!(out, blob(len), "len {len}, reads of {step}");
            }
        }
    }
}
