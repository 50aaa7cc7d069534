//! The demo's static server on 127.0.0.1: the site directory with the headers
//! `SharedArrayBuffer` needs (COOP/COEP), and `POST /report/<key>` into the browser harness's
//! [`Board`] for `--check`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread;

use anyhow::{Context, Result};

use crate::browser::server::Board;

/// The running server; stops when dropped.
pub struct DemoServer {
    server: Arc<tiny_http::Server>,
    threads: Vec<thread::JoinHandle<()>>,
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    /// What the page posted.
    pub board: Arc<Board>,
}

impl DemoServer {
    /// Serves `site` on 127.0.0.1:`port` (0: any free port).
    pub fn start(site: &Path, port: u16) -> Result<Self> {
        let server = tiny_http::Server::http(("127.0.0.1", port))
            .map_err(|e| anyhow::anyhow!("cannot listen on 127.0.0.1:{port}: {e}"))?;
        let server = Arc::new(server);
        let addr = server.server_addr().to_ip().context("server address")?;
        let board = Arc::new(Board::default());
        let site = Arc::new(site.to_path_buf());
        let threads = (0..4)
            .map(|_| {
                let server = server.clone();
                let board = board.clone();
                let site = site.clone();
                thread::spawn(move || {
                    for request in server.incoming_requests() {
                        handle(request, &site, &board);
                    }
                })
            })
            .collect();
        Ok(Self {
            server,
            threads,
            base: format!("http://{addr}"),
            board,
        })
    }

    /// Serves until the process ends.
    pub fn wait(mut self) {
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for DemoServer {
    fn drop(&mut self) {
        for _ in 0..self.threads.len() {
            self.server.unblock();
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn header(k: &str, v: &str) -> tiny_http::Header {
    tiny_http::Header::from_bytes(k.as_bytes(), v.as_bytes()).expect("valid header")
}

fn mime(path: &Path) -> &'static str {
    match path.extension().and_then(|e| e.to_str()).unwrap_or("") {
        "js" | "mjs" => "text/javascript",
        "wasm" => "application/wasm",
        "html" => "text/html; charset=utf-8",
        "css" => "text/css",
        "json" => "application/json",
        "ts" | "md" | "txt" | "pem" => "text/plain; charset=utf-8",
        _ => "application/octet-stream",
    }
}

/// Maps a URL path to a file under `site`, refusing anything that climbs out or is hidden.
fn resolve(site: &Path, path: &str) -> Option<PathBuf> {
    let path = path.trim_start_matches('/');
    let path = if path.is_empty() { "index.html" } else { path };
    if path
        .split('/')
        .any(|seg| seg.is_empty() || seg.starts_with('.'))
    {
        return None;
    }
    Some(site.join(path)).filter(|p| p.is_file())
}

fn handle(mut request: tiny_http::Request, site: &Path, board: &Board) {
    let url = request.url().to_string();
    let path = url.split('?').next().unwrap_or("").to_string();
    let respond = |request: tiny_http::Request, mut response: tiny_http::ResponseBox| {
        for (k, v) in [
            ("Cross-Origin-Opener-Policy", "same-origin"),
            ("Cross-Origin-Embedder-Policy", "require-corp"),
            ("Cross-Origin-Resource-Policy", "same-origin"),
            ("Cache-Control", "no-cache"),
        ] {
            response.add_header(header(k, v));
        }
        let _ = request.respond(response);
    };
    let text = |status: u16, body: String| {
        tiny_http::Response::from_string(body)
            .with_status_code(status)
            .with_header(header("Content-Type", "text/plain; charset=utf-8"))
            .boxed()
    };
    match (request.method(), path.as_str()) {
        (tiny_http::Method::Post, p) if p.starts_with("/report/") => {
            let key = p.trim_start_matches("/report/").to_string();
            let mut body = String::new();
            let _ = request.as_reader().read_to_string(&mut body);
            if key == "page-error" || key == "fatal" {
                eprintln!("xtask: page {key}: {body}");
            }
            board.put(&key, body);
            respond(request, text(204, String::new()));
        }
        (tiny_http::Method::Get | tiny_http::Method::Head, p) => match resolve(site, p) {
            Some(file) => match std::fs::File::open(&file) {
                Ok(f) => {
                    let response = tiny_http::Response::from_file(f)
                        .with_header(header("Content-Type", mime(&file)))
                        .boxed();
                    respond(request, response);
                }
                Err(e) => respond(request, text(500, format!("{e}\n"))),
            },
            None => respond(request, text(404, format!("no such file: {p}\n"))),
        },
        _ => respond(request, text(405, "method not allowed\n".into())),
    }
}
