//! The origin that fails on purpose (resets mid-body, never answers).

use std::io::Write;
use std::net::SocketAddr;
use std::thread;

use anyhow::Result;

use super::content::blob;
use super::http1;

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
fn fault_answer(stream: std::net::TcpStream) -> Option<std::net::TcpStream> {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_read_timeout(Some(std::time::Duration::from_secs(5)));
    let mut reader = std::io::BufReader::new(stream);
    let Ok(Some(head)) = http1::read_head(&mut reader, 64 * 1024) else {
        return None;
    };
    let mut stream = reader.into_inner();
    let (method, path) = (head.method, head.path);
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

    /// Sends `request` and reads until the origin closes or resets.
    fn ask(origin: &FaultOrigin, request: &str) -> String {
        let mut s = std::net::TcpStream::connect(origin.addr).unwrap();
        s.write_all(request.as_bytes()).unwrap();
        let mut got = Vec::new();
        let mut buf = [0; 4096];
        while let Ok(n) = s.read(&mut buf) {
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
        }
        String::from_utf8_lossy(&got).into_owned()
    }

    #[test]
    fn preflight_reset_and_unknown_paths() {
        let origin = FaultOrigin::start().unwrap();
        let preflight = ask(&origin, "OPTIONS /reset/10 HTTP/1.1\r\nHost: x\r\n\r\n");
        assert!(
            preflight.starts_with("HTTP/1.1 204 No Content\r\n"),
            "{preflight}"
        );
        let other = ask(&origin, "GET /nope HTTP/1.1\r\nHost: x\r\n\r\n");
        assert!(other.starts_with("HTTP/1.1 404 Not Found\r\n"), "{other}");
        assert!(other.ends_with("not found here\n"), "{other}");
        let reset = ask(&origin, "GET /reset/1000 HTTP/1.1\r\nHost: x\r\n\r\n");
        assert!(reset.starts_with("HTTP/1.1 200 OK\r\n"), "{reset}");
        assert!(reset.contains("Content-Length: 1000\r\n"), "{reset}");
    }
}
