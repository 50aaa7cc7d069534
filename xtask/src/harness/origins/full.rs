//! The e2e origin with every route the clients need, on tiny_http with a pool of workers, over
//! HTTP and HTTPS (the test CA's certificate), with or without CORS: `/blob/<len>`, `/echo`
//! (method, length, sha256 and framing of the request body), `/hello`, `/headers`,
//! `/set-cookie`, `/redirect`, a pip "simple" index with one wheel, and a git repository
//! through `git http-backend` (CGI).

use std::io::Write;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::thread;

use anyhow::{bail, Context, Result};

use super::content::{sha256_hex, BlobReader};
use super::files::{wheel_name, OriginFiles, WHEEL_PROJECT};
use crate::harness::server_pool::{header, ServerPool};

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
