//! The origin of fetch-transport's node tests (`cargo xtask transport-node`, the tests in
//! `fetch-transport/tests/node.rs`): plain HTTP, one request per connection, every answer with
//! `Access-Control-Allow-Origin: *`.
//! - `/page`, `/redirect` (to `/page`), `/missing` (404 with `X-Origin`), `/gzip`;
//! - `/echo`: the method, the headers (names in lower case) and the body;
//! - `/slow`: a first chunk, then the rest once `/release` is requested (or after a minute);
//! - `/large`: 8 MiB of a known pattern in one write; `/endless`: the pattern until the client
//!   goes away, which `/endless-stopped` then reports; `/hang`: never answers.

use std::io::{self, BufReader, Read, Write};
use std::net::TcpStream;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};

use super::http1::{self, Listener};

/// Largest request head read.
const MAX_HEAD: usize = 64 * 1024;
/// How long `/slow` waits for `/release` before sending the rest anyway (and saying so).
const SLOW_FALLBACK: Duration = Duration::from_secs(60);

/// Size of the `/large` body: far more than the 64 KiB pieces the backend may hand out.
const LARGE_LEN: usize = 8 << 20;

/// How long `/endless-stopped` waits for an `/endless` download to be abandoned.
const STOP_WAIT: Duration = Duration::from_secs(10);

/// Counts `/release` requests so `/slow` knows when to finish.
#[derive(Default)]
struct Release {
    count: Mutex<u64>,
    signal: Condvar,
}

/// Shared state of the origin's routes.
#[derive(Default)]
struct Shared {
    release: Release,
    /// How many `/endless` downloads the client has abandoned (the socket failed under us).
    stopped: Mutex<u64>,
    stopped_signal: Condvar,
}

/// The origin of `cargo xtask transport-node` (fetch-transport's node tests) on a free port of
/// 127.0.0.1, a thread per connection; stops accepting when dropped.
pub struct NodeOrigin {
    listener: Listener,
}

impl NodeOrigin {
    /// Starts it.
    pub fn start() -> Result<Self> {
        let shared = Arc::new(Shared::default());
        let listener = Listener::start(move |conn| {
            if let Err(err) = serve(conn, &shared) {
                eprintln!("xtask: transport-node origin: {err}");
            }
        })
        .context("starting the origin server")?;
        Ok(Self { listener })
    }

    /// `http://127.0.0.1:PORT`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.listener.addr())
    }
}

fn respond(
    w: &mut impl Write,
    status: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> io::Result<()> {
    write!(
        w,
        "HTTP/1.1 {status}\r\nConnection: close\r\nAccess-Control-Allow-Origin: *\r\n"
    )?;
    for (n, v) in headers {
        write!(w, "{n}: {v}\r\n")?;
    }
    write!(w, "Content-Length: {}\r\n\r\n", body.len())?;
    w.write_all(body)?;
    w.flush()
}

fn chunk(w: &mut impl Write, data: &[u8]) -> io::Result<()> {
    write!(w, "{:x}\r\n", data.len())?;
    w.write_all(data)?;
    w.write_all(b"\r\n")?;
    w.flush()
}

/// Byte `i` of the `/large` and `/endless` bodies (the tests check it as they read).
fn pattern(i: usize) -> u8 {
    (i % 251) as u8
}

fn serve(stream: TcpStream, shared: &Shared) -> io::Result<()> {
    let release = &shared.release;
    let mut r = BufReader::new(stream.try_clone()?);
    let mut w = stream;
    let Some(head) = http1::read_head(&mut r, MAX_HEAD)? else {
        return Ok(());
    };
    let len: usize = head
        .header("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0; len];
    r.read_exact(&mut body)?;
    match head.path.as_str() {
        "/page" => respond(
            &mut w,
            "200 OK",
            &[("Content-Type", "text/plain")],
            b"hello page",
        ),
        "/redirect" => respond(&mut w, "302 Found", &[("Location", "/page")], b""),
        "/missing" => respond(
            &mut w,
            "404 Not Found",
            &[("X-Origin", "test")],
            b"no such page",
        ),
        "/gzip" => respond(
            &mut w,
            "200 OK",
            &[("Content-Encoding", "gzip")],
            &gzip(b"hello gzip, decoded by fetch"),
        ),
        "/echo" => {
            let mut out = format!("{}\n", head.method);
            for (n, v) in &head.headers {
                out.push_str(&format!("{}: {v}\n", n.to_ascii_lowercase()));
            }
            out.push('\n');
            let mut out = out.into_bytes();
            out.extend_from_slice(&body);
            respond(&mut w, "200 OK", &[], &out)
        }
        "/slow" => {
            let start = *release.count.lock().unwrap();
            write!(
                w,
                "HTTP/1.1 200 OK\r\nConnection: close\r\nAccess-Control-Allow-Origin: *\r\n\
                 Transfer-Encoding: chunked\r\n\r\n"
            )?;
            chunk(&mut w, b"first-chunk;")?;
            let guard = release.count.lock().unwrap();
            let (_guard, wait) = release
                .signal
                .wait_timeout_while(guard, SLOW_FALLBACK, |count| *count == start)
                .unwrap();
            let rest: &[u8] = if wait.timed_out() {
                b"rest;released-by-timeout"
            } else {
                b"rest;released-by-signal"
            };
            chunk(&mut w, rest)?;
            w.write_all(b"0\r\n\r\n")?;
            w.flush()
        }
        "/release" => {
            *release.count.lock().unwrap() += 1;
            release.signal.notify_all();
            respond(&mut w, "200 OK", &[], b"released")
        }
        "/large" => {
            // One write of the whole body: the client's network stack gets it as fast as it
            // can take it, and the browser may hand it over in chunks as large as it buffered.
            let body: Vec<u8> = (0..LARGE_LEN).map(pattern).collect();
            respond(
                &mut w,
                "200 OK",
                &[("Content-Type", "application/octet-stream")],
                &body,
            )
        }
        "/endless" => {
            write!(
                w,
                "HTTP/1.1 200 OK\r\nConnection: close\r\nAccess-Control-Allow-Origin: *\r\n\
                 Transfer-Encoding: chunked\r\n\r\n"
            )?;
            let block: Vec<u8> = (0..1 << 16).map(pattern).collect();
            // Until the client goes away; its abort shows up here as a failed write.
            while chunk(&mut w, &block).is_ok() {}
            *shared.stopped.lock().unwrap() += 1;
            shared.stopped_signal.notify_all();
            Ok(())
        }
        "/endless-stopped" => {
            let guard = shared.stopped.lock().unwrap();
            let (count, _) = shared
                .stopped_signal
                .wait_timeout_while(guard, STOP_WAIT, |count| *count == 0)
                .unwrap();
            let count = count.to_string();
            respond(&mut w, "200 OK", &[], count.as_bytes())
        }
        "/hang" => {
            // Never answer; return once the client gives up and closes the connection.
            let mut byte = [0; 1];
            while r.read(&mut byte)? > 0 {}
            Ok(())
        }
        _ => respond(&mut w, "404 Not Found", &[], b"unknown path"),
    }
}

/// `data` gzip-compressed (flate2), for the route that checks fetch() decodes it.
fn gzip(data: &[u8]) -> Vec<u8> {
    use std::io::Write as _;
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    encoder.write_all(data).expect("writing to memory");
    encoder.finish().expect("writing to memory")
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};

    use super::*;

    fn ask(origin: &NodeOrigin, request: &str) -> String {
        let addr = origin.base_url().trim_start_matches("http://").to_string();
        let mut s = TcpStream::connect(addr).unwrap();
        s.write_all(request.as_bytes()).unwrap();
        let mut got = Vec::new();
        s.read_to_end(&mut got).unwrap();
        String::from_utf8_lossy(&got).into_owned()
    }

    #[test]
    fn page_echo_missing_and_gzip() {
        let origin = NodeOrigin::start().unwrap();
        let page = ask(&origin, "GET /page HTTP/1.1\r\nHost: x\r\n\r\n");
        assert!(page.starts_with("HTTP/1.1 200 OK\r\n"), "{page}");
        assert!(
            page.contains("Access-Control-Allow-Origin: *\r\n"),
            "{page}"
        );
        assert!(page.ends_with("\r\n\r\nhello page"), "{page}");
        let echo = ask(
            &origin,
            "POST /echo HTTP/1.1\r\nHost: x\r\nX-Test: A b\r\nContent-Length: 3\r\n\r\nabc",
        );
        assert!(
            echo.ends_with("\r\n\r\nPOST\nhost: x\nx-test: A b\ncontent-length: 3\n\nabc"),
            "{echo}"
        );
        let missing = ask(&origin, "GET /missing HTTP/1.1\r\n\r\n");
        assert!(
            missing.starts_with("HTTP/1.1 404 Not Found\r\n"),
            "{missing}"
        );
        assert!(missing.contains("X-Origin: test\r\n"), "{missing}");
        let zipped = ask(&origin, "GET /gzip HTTP/1.1\r\n\r\n");
        assert!(zipped.contains("Content-Encoding: gzip\r\n"), "{zipped}");
    }
}
