//! `transport-node`: fetch-transport's browser backend (`FetchTransport`, wasm32) under node,
//! whose global `fetch()` it calls, against a local origin server started here on 127.0.0.1.
//!
//! The tests live in `fetch-transport/tests/node.rs`; they find the origin through
//! `FETCH_TRANSPORT_ORIGIN` and a closed port through `FETCH_TRANSPORT_REFUSED` (node inherits
//! the environment from wasm-bindgen-test-runner). Extra arguments go to the test binary's
//! `cargo test` command line (e.g. a test name filter).

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::Command;
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::Duration;

use anyhow::{Context, Result};

use crate::tools;

/// How long `/slow` waits for `/release` before sending the rest anyway (and saying so).
const SLOW_FALLBACK: Duration = Duration::from_secs(60);

/// Size of the `/large` body: far more than the 64 KiB pieces the backend may hand out.
const LARGE_LEN: usize = 8 << 20;

/// How long `/endless-stopped` waits for an `/endless` download to be abandoned.
const STOP_WAIT: Duration = Duration::from_secs(10);

/// Runs the node tests of fetch-transport's browser backend against a local origin.
pub fn run(args: &[String]) -> Result<()> {
    tools::ensure_wasm_toolchain()?;
    tools::ensure_programs(&[("node", "nodejs")])?;
    let runner = tools::ensure_wasm_bindgen_test_runner()?;
    let origin = start_origin()?;
    let refused = closed_port_url()?;
    eprintln!("xtask: transport-node: origin at {origin}, refused port at {refused}");
    let mut cmd = Command::new("cargo");
    cmd.args([
        "test",
        "--target",
        "wasm32-unknown-unknown",
        "-p",
        "fetch-transport",
        "--test",
        "node",
    ])
    .args(args)
    .env("CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_RUNNER", runner)
    .env("FETCH_TRANSPORT_ORIGIN", &origin)
    .env("FETCH_TRANSPORT_REFUSED", &refused)
    .current_dir(tools::workspace_root());
    tools::run(&mut cmd)
}

/// A URL on 127.0.0.1 whose port nothing listens on (bound, then released).
fn closed_port_url() -> Result<String> {
    let listener = TcpListener::bind("127.0.0.1:0").context("binding a probe port")?;
    let port = listener.local_addr()?.port();
    drop(listener);
    Ok(format!("http://127.0.0.1:{port}/"))
}

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

/// Starts the origin on a free port in a background thread; returns its base URL.
fn start_origin() -> Result<String> {
    let listener = TcpListener::bind("127.0.0.1:0").context("binding the origin server")?;
    let base = format!("http://{}", listener.local_addr()?);
    let shared = Arc::new(Shared::default());
    thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { continue };
            let shared = Arc::clone(&shared);
            thread::spawn(move || {
                if let Err(err) = serve(conn, &shared) {
                    eprintln!("xtask: transport-node origin: {err}");
                }
            });
        }
    });
    Ok(base)
}

struct Head {
    method: String,
    path: String,
    headers: Vec<(String, String)>,
}

fn read_head(r: &mut impl BufRead) -> io::Result<Option<Head>> {
    let mut line = String::new();
    if r.read_line(&mut line)? == 0 {
        return Ok(None);
    }
    let mut words = line.split_whitespace();
    let method = words.next().unwrap_or_default().to_string();
    let path = words.next().unwrap_or_default().to_string();
    let mut headers = Vec::new();
    loop {
        line.clear();
        if r.read_line(&mut line)? == 0 {
            return Ok(None);
        }
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some((n, v)) = l.split_once(':') {
            headers.push((n.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
    }
    Ok(Some(Head {
        method,
        path,
        headers,
    }))
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
    let Some(head) = read_head(&mut r)? else {
        return Ok(());
    };
    let len: usize = head
        .headers
        .iter()
        .find(|(n, _)| n == "content-length")
        .and_then(|(_, v)| v.parse().ok())
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
                out.push_str(&format!("{n}: {v}\n"));
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
