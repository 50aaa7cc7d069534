//! A local origin server for end-to-end tests, on the host's loopback only. It serves
//! deterministic bodies whose sha256 the checks compare against.

use std::net::SocketAddr;
use std::sync::Arc;
use std::thread;

use anyhow::{Context, Result};
use sha2::{Digest, Sha256};

/// A running origin server; stops when dropped.
pub struct Origin {
    server: Arc<tiny_http::Server>,
    threads: Vec<thread::JoinHandle<()>>,
    /// Where it listens (127.0.0.1, a free port).
    pub addr: SocketAddr,
}

/// The deterministic body served at `/blob/<len>`: a repeating pattern no compressor or
/// dedup can fake, derived from the byte index.
pub fn blob(len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len);
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

/// Hex sha256 of `data`.
pub fn sha256_hex(data: &[u8]) -> String {
    Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

impl Origin {
    /// Starts the server on 127.0.0.1 with `workers` threads.
    pub fn start(workers: usize) -> Result<Self> {
        let server = Arc::new(
            tiny_http::Server::http("127.0.0.1:0")
                .map_err(|e| anyhow::anyhow!("{e}"))
                .context("origin server")?,
        );
        let addr = server
            .server_addr()
            .to_ip()
            .context("origin server address")?;
        let threads = (0..workers)
            .map(|_| {
                let server = server.clone();
                thread::spawn(move || {
                    for request in server.incoming_requests() {
                        handle(request);
                    }
                })
            })
            .collect();
        Ok(Self {
            server,
            threads,
            addr,
        })
    }

    /// `http://127.0.0.1:PORT`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for Origin {
    fn drop(&mut self) {
        self.server.unblock();
        for _ in 1..self.threads.len() {
            self.server.unblock();
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn handle(mut request: tiny_http::Request) {
    let url = request.url().to_string();
    let path = url.split('?').next().unwrap_or("/");
    let header = |k: &str, v: &str| {
        tiny_http::Header::from_bytes(k.as_bytes(), v.as_bytes()).expect("valid header")
    };
    let result = if let Some(len) = path.strip_prefix("/blob/") {
        match len.parse::<usize>() {
            Ok(len) if len <= 1 << 30 => request.respond(
                tiny_http::Response::from_data(blob(len))
                    .with_header(header("Content-Type", "application/octet-stream")),
            ),
            _ => request
                .respond(tiny_http::Response::from_string("bad length").with_status_code(400)),
        }
    } else if path == "/echo" {
        // Answers with the sha256 and length of the request body.
        let mut body = Vec::new();
        let _ = request.as_reader().read_to_end(&mut body);
        let text = format!("{} {}\n", body.len(), sha256_hex(&body));
        request.respond(tiny_http::Response::from_string(text))
    } else if path == "/hello" {
        request.respond(
            tiny_http::Response::from_string("hello from the origin\n")
                .with_header(header("Content-Type", "text/plain")),
        )
    } else {
        request.respond(tiny_http::Response::from_string("not found here\n").with_status_code(404))
    };
    let _ = result;
}
