//! A tiny_http server answered by a few worker threads, stopped and joined when dropped: the
//! piece under the browser e2e's page server (the origins have their own layer, in
//! `origins/http1.rs`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::thread;

use anyhow::{Context, Result};

/// A running server; its workers stop when it is dropped.
pub struct ServerPool {
    server: Arc<tiny_http::Server>,
    threads: Vec<thread::JoinHandle<()>>,
    /// Where it listens.
    pub addr: SocketAddr,
}

impl ServerPool {
    /// Answers every request of `server` with `handle`, on `workers` threads.
    pub fn spawn<H>(server: tiny_http::Server, workers: usize, handle: H) -> Result<Self>
    where
        H: Fn(tiny_http::Request) + Send + Sync + 'static,
    {
        let server = Arc::new(server);
        let addr = server.server_addr().to_ip().context("server address")?;
        let handle = Arc::new(handle);
        let threads = (0..workers.max(1))
            .map(|_| {
                let server = server.clone();
                let handle = handle.clone();
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
}

impl ServerPool {
    /// Blocks while the server runs (until the process ends).
    pub fn wait(mut self) {
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for ServerPool {
    fn drop(&mut self) {
        for _ in 0..self.threads.len() {
            self.server.unblock();
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// A response header (names and values here are always valid).
pub fn header(name: &str, value: &str) -> tiny_http::Header {
    tiny_http::Header::from_bytes(name.as_bytes(), value.as_bytes()).expect("valid header")
}
