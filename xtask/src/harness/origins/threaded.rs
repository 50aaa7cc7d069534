//! An origin server for load: one thread per connection, HTTP/1.1 keep-alive, TCP_NODELAY,
//! over plain TCP or rustls. tiny_http (the e2e origin) queues new connections behind the
//! keep-alive connections its few pool threads sit on, so a burst of simultaneous requests
//! stalls there (and its separate head and body writes meet delayed ACKs); the benchmarks'
//! reference path and the load checks must not be limited by their server, hence this one.
//!
//! Routes: `GET /blob/<len>` (the deterministic blob, streamed), `GET /hello`,
//! `POST /echo` (answers `POST <len> <sha256>`), `OPTIONS` (CORS preflight). Every answer
//! carries permissive CORS headers so the browser paths' `fetch()` may read it.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest, Sha256};

use super::content::BlobReader;
use super::http1::{self, Listener};

/// Largest request head read.
const MAX_HEAD: usize = 16 * 1024;
/// Bytes per write of a streamed body.
const CHUNK: usize = 64 * 1024;
/// A connection idle this long is closed.
const IDLE: Duration = Duration::from_secs(120);

/// A running origin; stops accepting when dropped (open connections end with their clients).
pub struct ThreadedOrigin {
    listener: Listener,
    scheme: &'static str,
}

impl ThreadedOrigin {
    /// Plain HTTP on 127.0.0.1, a free port.
    pub fn http() -> Result<Self> {
        Self::start(None)
    }

    /// HTTPS on 127.0.0.1 with the certificate chain and key in these PEM files.
    pub fn https(cert: &Path, key: &Path) -> Result<Self> {
        let certs = CertificateDer::pem_file_iter(cert)
            .with_context(|| format!("reading {}", cert.display()))?
            .collect::<Result<Vec<_>, _>>()?;
        let key = PrivateKeyDer::from_pem_file(key)
            .with_context(|| format!("reading {}", key.display()))?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(certs, key)?;
        Self::start(Some(Arc::new(config)))
    }

    fn start(tls: Option<Arc<rustls::ServerConfig>>) -> Result<Self> {
        let scheme = if tls.is_some() { "https" } else { "http" };
        let listener = Listener::start(move |stream| {
            let _ = stream.set_nodelay(true);
            let _ = stream.set_read_timeout(Some(IDLE));
            match tls.clone() {
                None => serve(stream.try_clone().ok(), stream),
                Some(config) => {
                    let Ok(conn) = rustls::ServerConnection::new(config) else {
                        return;
                    };
                    let tls = rustls::StreamOwned::new(conn, stream);
                    serve(None, tls);
                }
            }
        })?;
        Ok(Self { listener, scheme })
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.listener.addr()
    }

    /// `scheme://127.0.0.1:PORT`.
    pub fn base_url(&self) -> String {
        format!("{}://{}", self.scheme, self.addr())
    }
}

/// One parsed request head.
#[derive(Debug, Default)]
struct Head {
    method: String,
    path: String,
    content_length: u64,
    close: bool,
    expect_continue: bool,
}

/// Reads one request head; `None` at the end of the connection or on a bad head.
fn read_head<R: BufRead>(reader: &mut R) -> Option<Head> {
    let parsed = http1::read_head(reader, MAX_HEAD).ok()??;
    let mut head = Head {
        close: parsed.version == 0,
        ..Head::default()
    };
    for (name, value) in &parsed.headers {
        if name.eq_ignore_ascii_case("content-length") {
            head.content_length = value.parse().ok()?;
        } else if name.eq_ignore_ascii_case("expect") {
            head.expect_continue = value.eq_ignore_ascii_case("100-continue");
        } else if name.eq_ignore_ascii_case("connection") {
            head.close = value.eq_ignore_ascii_case("close");
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            // Not needed by the benchmark's clients; refuse rather than misframe.
            return None;
        }
    }
    head.method = parsed.method;
    head.path = parsed.path;
    Some(head)
}

const CORS: &str = "Access-Control-Allow-Origin: *\r\n\
                    Access-Control-Allow-Methods: GET, HEAD, POST, OPTIONS\r\n\
                    Access-Control-Allow-Headers: *\r\n\
                    Access-Control-Expose-Headers: *\r\n";

/// Serves requests on one connection until it closes. `plain` is the raw socket to shut down
/// when the stream is plain TCP (a TLS stream is closed by dropping it).
fn serve<S: Read + Write>(plain: Option<TcpStream>, stream: S) {
    let mut reader = BufReader::with_capacity(CHUNK, stream);
    while let Some(head) = read_head(&mut reader) {
        let connection = if head.close { "close" } else { "keep-alive" };
        let result = respond(&mut reader, &head, connection);
        if result.is_err() || head.close {
            break;
        }
    }
    let _ = reader.get_mut().flush();
    if let Some(s) = plain {
        let _ = s.shutdown(Shutdown::Both);
    }
}

fn respond<S: Read + Write>(
    reader: &mut BufReader<S>,
    head: &Head,
    connection: &str,
) -> std::io::Result<()> {
    let path = head.path.split('?').next().unwrap_or("");
    let small = |status: &str, body: String| {
        format!(
            "HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: {connection}\r\n{CORS}\r\n{body}",
            body.len()
        )
    };
    let out = match (head.method.as_str(), path) {
        ("OPTIONS", _) => format!(
            "HTTP/1.1 204 No Content\r\nAccess-Control-Max-Age: 600\r\nConnection: {connection}\r\n{CORS}\r\n"
        ),
        ("GET" | "HEAD", p) if p.starts_with("/blob/") => {
            let Ok(len) = p["/blob/".len()..].parse::<u64>() else {
                return write_all(reader, small("400 Bad Request", "bad length\n".into()));
            };
            let headers = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: {len}\r\nConnection: {connection}\r\n{CORS}\r\n"
            );
            write_all(reader, headers)?;
            if head.method == "GET" {
                let mut blob = BlobReader::new(len as usize);
                let mut buf = vec![0; CHUNK];
                loop {
                    let n = blob.read(&mut buf)?;
                    if n == 0 {
                        break;
                    }
                    reader.get_mut().write_all(&buf[..n])?;
                }
            }
            return reader.get_mut().flush();
        }
        ("GET", "/hello") => small("200 OK", "hello from the origin\n".into()),
        ("POST", "/echo") => {
            if head.expect_continue {
                write_all(reader, "HTTP/1.1 100 Continue\r\n\r\n".into())?;
            }
            let mut hasher = Sha256::new();
            let mut left = head.content_length;
            let mut buf = vec![0; CHUNK];
            while left > 0 {
                let want = buf.len().min(left as usize);
                let n = reader.read(&mut buf[..want])?;
                if n == 0 {
                    return Err(std::io::ErrorKind::UnexpectedEof.into());
                }
                hasher.update(&buf[..n]);
                left -= n as u64;
            }
            let sha: String = hasher
                .finalize()
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect();
            small(
                "200 OK",
                format!("POST {} {sha} chunked=false\n", head.content_length),
            )
        }
        _ => small("404 Not Found", "not found\n".into()),
    };
    write_all(reader, out)
}

fn write_all<S: Read + Write>(reader: &mut BufReader<S>, text: String) -> std::io::Result<()> {
    let w = reader.get_mut();
    w.write_all(text.as_bytes())?;
    w.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serves_blob_echo_and_keep_alive() {
        let origin = ThreadedOrigin::http().unwrap();
        let addr = origin.base_url().trim_start_matches("http://").to_string();
        let mut s = TcpStream::connect(&addr).unwrap();
        s.write_all(b"GET /blob/10 HTTP/1.1\r\nHost: x\r\n\r\nPOST /echo HTTP/1.1\r\nContent-Length: 3\r\nConnection: close\r\n\r\nabc")
            .unwrap();
        let mut got = Vec::new();
        s.read_to_end(&mut got).unwrap();
        let text = String::from_utf8_lossy(&got);
        assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
        assert!(text.contains("Content-Length: 10\r\n"));
        let blob = super::super::content::blob(10);
        let at = got.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
        assert_eq!(&got[at..at + 10], &blob[..]);
        assert!(text.contains(
            "POST 3 ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad chunked=false"
        ));
    }
}
