//! The test pages' own server on 127.0.0.1: static files from page directories
//! (`xtask/browser/`, `xtask/bench/pages/`) and `dist/` with the cross-origin isolation headers
//! `SharedArrayBuffer` needs, the run's configuration as `/config.json`, and a small board the
//! pages post results to (`POST /report/<key>`), which the harness waits on.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use crate::harness::server_pool::{header, ServerPool};
use anyhow::{bail, Result};

/// What the pages have reported: the latest value and how many times each key was posted.
#[derive(Default)]
pub struct Board {
    entries: Mutex<HashMap<String, (u64, String)>>,
    changed: Condvar,
}

impl Board {
    pub(crate) fn put(&self, key: &str, value: String) {
        let mut map = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let entry = map.entry(key.to_string()).or_insert((0, String::new()));
        entry.0 += 1;
        // Errors and logs accumulate; everything else keeps its latest value.
        if key == "page-error" || key == "log" {
            if !entry.1.is_empty() {
                entry.1.push('\n');
            }
            entry.1.push_str(&value);
        } else {
            entry.1 = value;
        }
        self.changed.notify_all();
    }

    /// The latest value of `key` and its count.
    pub fn get(&self, key: &str) -> Option<(u64, String)> {
        self.entries
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(key)
            .cloned()
    }

    /// Waits until `key` has been posted more than `after` times; returns its value and count.
    /// Fails early if the page posted `fatal`.
    pub fn wait(&self, key: &str, after: u64, limit: Duration) -> Result<(u64, String)> {
        let deadline = Instant::now() + limit;
        let mut map = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if let Some((n, v)) = map.get(key) {
                if *n > after {
                    return Ok((*n, v.clone()));
                }
            }
            if let Some((_, fatal)) = map.get("fatal") {
                bail!("the page failed: {fatal}");
            }
            let now = Instant::now();
            if now >= deadline {
                bail!("the page did not report `{key}` within {limit:?}");
            }
            map = self
                .changed
                .wait_timeout(map, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Forgets everything (between phases).
    pub fn clear(&self) {
        self.entries
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }
}

/// The running page server; stops when dropped.
pub struct PageServer {
    _pool: ServerPool,
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    /// What the pages reported.
    pub board: Arc<Board>,
}

impl PageServer {
    /// Serves `pages` first, then `dist`, and `config` (JSON) at `/config.json`, on a free
    /// port.
    pub fn start(pages: &Path, dist: &Path, config: String) -> Result<Self> {
        let roots = vec![pages.to_path_buf(), dist.to_path_buf()];
        Self::serve(0, roots, Some(config))
    }

    /// Serves the files under `roots` (the first that has a path wins) on 127.0.0.1:`port`
    /// (0: any free port), and `config` at `/config.json` when given.
    pub fn serve(port: u16, roots: Vec<PathBuf>, config: Option<String>) -> Result<Self> {
        let server = tiny_http::Server::http(("127.0.0.1", port))
            .map_err(|e| anyhow::anyhow!("page server on 127.0.0.1:{port}: {e}"))?;
        let board = Arc::new(Board::default());
        let shared = board.clone();
        let pool = ServerPool::spawn(server, 4, move |request| {
            handle(request, &roots, &shared, config.as_deref())
        })?;
        let base = format!("http://{}", pool.addr);
        Ok(Self {
            _pool: pool,
            base,
            board,
        })
    }

    /// Serves until the process ends.
    pub fn wait(self) {
        self._pool.wait();
    }
}

/// MIME type by extension (octet-stream for anything else, e.g. a kernel image).
fn mime(path: &Path) -> &'static str {
    match path.extension().and_then(|e| e.to_str()).unwrap_or("") {
        "js" | "mjs" => "text/javascript",
        "wasm" => "application/wasm",
        "html" => "text/html; charset=utf-8",
        "json" => "application/json",
        "css" => "text/css",
        "ts" | "pem" | "txt" | "md" => "text/plain; charset=utf-8",
        _ => "application/octet-stream",
    }
}

/// Maps a URL path to a file under one of `roots`, refusing anything that climbs out.
fn resolve(roots: &[PathBuf], path: &str) -> Option<PathBuf> {
    let path = path.trim_start_matches('/');
    let path = if path.is_empty() { "index.html" } else { path };
    if path
        .split('/')
        .any(|seg| seg.is_empty() || seg == ".." || seg == "." || seg.starts_with('.'))
    {
        return None;
    }
    let found = roots.iter().map(|r| r.join(path)).find(|p| p.is_file());
    // container2wasm's pages load the proxy's wasm as `c2w-net-proxy.wasm`; a package
    // without that file still has wasm-bindgen's.
    if found.is_none() && path == "c2w-net-proxy.wasm" {
        return resolve(roots, "c2w_net_proxy_bg.wasm");
    }
    found
}

fn handle(mut request: tiny_http::Request, roots: &[PathBuf], board: &Board, config: Option<&str>) {
    let url = request.url().to_string();
    let path = url.split('?').next().unwrap_or("").to_string();
    let isolation = [
        header("Cross-Origin-Opener-Policy", "same-origin"),
        header("Cross-Origin-Embedder-Policy", "require-corp"),
        header("Cross-Origin-Resource-Policy", "same-origin"),
        header("Cache-Control", "no-store"),
    ];
    let respond = |request: tiny_http::Request, mut response: tiny_http::ResponseBox| {
        for h in &isolation {
            response.add_header(h.clone());
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
            if matches!(key.as_str(), "log" | "page-error" | "fatal") {
                eprintln!("xtask: page {key}: {body}");
            }
            board.put(&key, body);
            respond(request, text(204, String::new()));
        }
        (tiny_http::Method::Get, "/config.json") if config.is_some() => {
            let response = tiny_http::Response::from_string(config.unwrap_or_default())
                .with_header(header("Content-Type", "application/json"))
                .boxed();
            respond(request, response);
        }
        (tiny_http::Method::Get | tiny_http::Method::Head, p) => match resolve(roots, p) {
            Some(file) => match std::fs::File::open(&file) {
                Ok(f) => {
                    let response = tiny_http::Response::from_file(f)
                        .with_header(header("Content-Type", mime(&file)))
                        .boxed();
                    respond(request, response);
                }
                Err(e) => respond(request, text(500, format!("{p}: {e}\n"))),
            },
            None => respond(request, text(404, format!("no such file: {p}\n"))),
        },
        _ => respond(request, text(405, "method not allowed\n".into())),
    }
}
