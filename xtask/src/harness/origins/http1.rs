//! The one HTTP/1.1 layer under the hand-written origins ([`ThreadedOrigin`],
//! [`FaultOrigin`], [`NodeOrigin`]): an accept loop giving every connection its own thread,
//! and request heads parsed by `httparse`. What each origin answers, and how it frames the
//! answer, stays with the origin.
//!
//! [`ThreadedOrigin`]: super::ThreadedOrigin
//! [`FaultOrigin`]: super::FaultOrigin
//! [`NodeOrigin`]: super::NodeOrigin

use std::io::{self, BufRead, Read};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use anyhow::Result;

/// Pending connections the kernel queues for accept.
const LISTEN_BACKLOG: i32 = 4096;
/// Headers a request may carry.
const MAX_HEADERS: usize = 128;

/// A listener on 127.0.0.1 handing every connection to its own thread; stops accepting when
/// dropped (open connections end with their clients).
pub struct Listener {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Listener {
    /// Listens on a free port of 127.0.0.1 and runs `serve` on a new thread for every
    /// connection.
    pub fn start<F>(serve: F) -> Result<Self>
    where
        F: Fn(TcpStream) + Send + Sync + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        // std listens with a backlog of 128: a burst of more connections than that loses SYNs
        // and the clients retry after 1, 3, 7 s... Listening again raises it.
        // SAFETY: listen(2) on a socket this function owns.
        if unsafe { libc::listen(listener.as_raw_fd(), LISTEN_BACKLOG) } != 0 {
            return Err(io::Error::last_os_error().into());
        }
        let addr = listener.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let serve = Arc::new(serve);
        let thread = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                for stream in listener.incoming() {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let Ok(stream) = stream else { continue };
                    let serve = serve.clone();
                    std::thread::spawn(move || serve(stream));
                }
            })
        };
        Ok(Self {
            addr,
            stop,
            thread: Some(thread),
        })
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect(self.addr);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// One request head.
#[derive(Debug, Default)]
pub struct Head {
    pub method: String,
    /// The request target as sent (path and query).
    pub path: String,
    /// The minor version: 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub version: u8,
    /// Names as sent, values trimmed, in order.
    pub headers: Vec<(String, String)>,
}

impl Head {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Reads one request head of at most `limit` bytes (empty lines before it are skipped).
/// `Ok(None)` when the connection ends first; an `InvalidData` error for a head httparse
/// refuses or one over the limit.
pub fn read_head<R: BufRead>(reader: &mut R, limit: usize) -> io::Result<Option<Head>> {
    let mut buf = Vec::new();
    loop {
        let start = buf.len();
        let room = (limit + 1).saturating_sub(start) as u64;
        let n = reader.by_ref().take(room).read_until(b'\n', &mut buf)?;
        if buf.len() > limit {
            return Err(invalid("request head too large"));
        }
        if n == 0 || !buf.ends_with(b"\n") {
            return Ok(None);
        }
        let line = &buf[start..];
        if line == b"\n" || line == b"\r\n" {
            if start == 0 {
                buf.clear();
                continue;
            }
            break;
        }
    }
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    match request.parse(&buf) {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) => return Err(invalid("incomplete request head")),
        Err(err) => return Err(invalid(&err.to_string())),
    }
    Ok(Some(Head {
        method: request.method.unwrap_or_default().to_string(),
        path: request.path.unwrap_or_default().to_string(),
        version: request.version.unwrap_or(1),
        headers: request
            .headers
            .iter()
            .map(|h| {
                let value = String::from_utf8_lossy(h.value).trim().to_string();
                (h.name.to_string(), value)
            })
            .collect(),
    }))
}

fn invalid(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str, limit: usize) -> io::Result<Option<Head>> {
        read_head(&mut io::BufReader::new(text.as_bytes()), limit)
    }

    #[test]
    fn heads_parse_with_leading_empty_lines_and_bare_newlines() {
        let head = parse(
            "\r\nGET /a?b HTTP/1.0\r\nHost: x\r\nX-Y:  z \r\n\r\nbody",
            1024,
        )
        .unwrap()
        .unwrap();
        assert_eq!((head.method.as_str(), head.path.as_str()), ("GET", "/a?b"));
        assert_eq!(head.version, 0);
        assert_eq!(head.header("x-y"), Some("z"));
        let head = parse("POST /echo HTTP/1.1\nContent-Length: 3\n\nabc", 1024)
            .unwrap()
            .unwrap();
        assert_eq!(head.header("content-length"), Some("3"));
    }

    #[test]
    fn an_ended_connection_a_bad_head_and_an_oversized_head() {
        assert!(parse("", 1024).unwrap().is_none());
        assert!(parse("GET / HTTP/1.1\r\nHost:", 1024).unwrap().is_none());
        assert!(parse("GET / HTTP/1.1\r\nno colon\r\n\r\n", 1024).is_err());
        let big = format!("GET / HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(2000));
        assert!(parse(&big, 1024).is_err());
        assert!(parse(&big, 4096).unwrap().is_some());
    }
}
