//! [`Origin`], the test origin of the e2e, the demo check, the benchmarks and the load checks:
//! a thread per connection (a burst of connections never waits behind busy ones), HTTP/1.1
//! keep-alive, TCP_NODELAY, plain TCP or rustls, on the shared layer of `http1.rs`. This file
//! is the connection: reading requests, framing answers (always with a Content-Length), CORS
//! headers, and closing; what each path answers is in `routes.rs`.

use std::io::{self, BufReader, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Shutdown, SocketAddr, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use super::content::BlobReader;
use super::files::OriginFiles;
use super::http1::{self, BodyError, Head, Listener, RequestBody};
use super::routes::{self, Body, Request, Response};

/// Largest request head read.
const MAX_HEAD: usize = 64 * 1024;
/// Bytes per read of the connection and per write of a streamed body.
pub(super) const CHUNK: usize = 64 * 1024;
/// A connection idle this long (no byte read, or none written) is closed, so no thread waits
/// forever on a client that went away silently.
const IDLE: Duration = Duration::from_secs(120);
/// How long a closing connection keeps reading (and dropping) what the client still sends, so
/// unread bytes do not make the kernel reset the connection before the client read the answer.
const LINGER: Duration = Duration::from_secs(2);

/// Whether an origin answers browsers' cross-origin requests (the browser paths' `fetch()`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Cors {
    /// No CORS headers at all (a browser refuses to hand the response to a page); OPTIONS is
    /// routed like any other method.
    #[default]
    Off,
    /// `Access-Control-Allow-Origin` (the request's Origin, with credentials allowed, or `*`),
    /// every header exposed, and a 204 preflight answer to OPTIONS on any path.
    On,
}

/// A running origin server on a free port of 127.0.0.1; stops accepting when dropped (open
/// connections end with their clients, or after two idle minutes).
///
/// Routes (see `routes.rs`): `/blob/<len>`, `/echo`, `/hello`, `/headers`, `/set-cookie`,
/// `/redirect`, and with [`OriginFiles`] a pip "simple" index with one wheel (`/simple/`,
/// `/files/`) and `git http-backend` under `/git/`.
pub struct Origin {
    listener: Listener,
    scheme: &'static str,
}

/// What every connection of one origin shares.
struct Site {
    files: Option<OriginFiles>,
    cors: Cors,
}

impl Origin {
    /// Plain HTTP with every route.
    pub fn http(files: &OriginFiles, cors: Cors) -> Result<Self> {
        Self::start(None, Some(files.clone()), cors)
    }

    /// HTTPS (the certificate for 127.0.0.1 and localhost from `files`' test CA) with every
    /// route.
    pub fn https(files: &OriginFiles, cors: Cors) -> Result<Self> {
        let tls = tls_config(&files.server_cert, &files.server_key)?;
        Self::start(Some(tls), Some(files.clone()), cors)
    }

    /// Plain HTTP without files, for callers that need only the generated routes (blob, echo,
    /// hello...): the pip index and git answer 404.
    pub fn http_without_files(cors: Cors) -> Result<Self> {
        Self::start(None, None, cors)
    }

    /// Plain HTTP with every route, on a free port of `ip` (an address of this host other
    /// than loopback, e.g. the host's end of a veth pair, for a guest namespace to reach
    /// directly).
    pub fn http_on(ip: IpAddr, files: &OriginFiles, cors: Cors) -> Result<Self> {
        Self::start_on(ip, None, Some(files.clone()), cors)
    }

    fn start(
        tls: Option<Arc<rustls::ServerConfig>>,
        files: Option<OriginFiles>,
        cors: Cors,
    ) -> Result<Self> {
        Self::start_on(IpAddr::V4(Ipv4Addr::LOCALHOST), tls, files, cors)
    }

    fn start_on(
        ip: IpAddr,
        tls: Option<Arc<rustls::ServerConfig>>,
        files: Option<OriginFiles>,
        cors: Cors,
    ) -> Result<Self> {
        let scheme = if tls.is_some() { "https" } else { "http" };
        let site = Arc::new(Site { files, cors });
        let listener = Listener::start_on(ip, move |stream| {
            let _ = stream.set_nodelay(true);
            let _ = stream.set_read_timeout(Some(IDLE));
            let _ = stream.set_write_timeout(Some(IDLE));
            match &tls {
                None => serve(stream, &site),
                Some(config) => {
                    let Ok(conn) = rustls::ServerConnection::new(config.clone()) else {
                        return;
                    };
                    serve(rustls::StreamOwned::new(conn, stream), &site);
                }
            }
        })
        .context("starting the origin server")?;
        Ok(Self { listener, scheme })
    }

    /// Where it listens (a free port of 127.0.0.1, or of the address given to `http_on`).
    pub fn addr(&self) -> SocketAddr {
        self.listener.addr()
    }

    /// `http` or `https`.
    pub fn scheme(&self) -> &'static str {
        self.scheme
    }

    /// `http(s)://ADDR:PORT` (127.0.0.1 unless started with `http_on`).
    pub fn base_url(&self) -> String {
        format!("{}://{}", self.scheme, self.addr())
    }
}

impl OriginFiles {
    /// The rustls server configuration of the HTTPS origin's certificate (for 127.0.0.1 and
    /// localhost), for other servers that speak TLS like it.
    pub fn server_tls(&self) -> Result<Arc<rustls::ServerConfig>> {
        tls_config(&self.server_cert, &self.server_key)
    }
}

/// The rustls server configuration for the certificate chain and key in these PEM files.
fn tls_config(cert: &Path, key: &Path) -> Result<Arc<rustls::ServerConfig>> {
    let certs = CertificateDer::pem_file_iter(cert)
        .with_context(|| format!("reading {}", cert.display()))?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("reading {}", cert.display()))?;
    let key =
        PrivateKeyDer::from_pem_file(key).with_context(|| format!("reading {}", key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    Ok(Arc::new(config))
}

/// A connection's byte stream, plain TCP or TLS over it.
trait Conn: Read + Write + Send {
    /// The socket under the stream.
    fn socket(&self) -> &TcpStream;
    /// Ends the stream's own protocol before the socket is shut down (TLS: close_notify).
    fn finish(&mut self) {}
}

impl Conn for TcpStream {
    fn socket(&self) -> &TcpStream {
        self
    }
}

impl Conn for rustls::StreamOwned<rustls::ServerConnection, TcpStream> {
    fn socket(&self) -> &TcpStream {
        &self.sock
    }

    fn finish(&mut self) {
        self.conn.send_close_notify();
        let _ = self.flush();
    }
}

/// Serves requests on one connection until it closes, fails, idles out, or an answer closes it.
fn serve<C: Conn>(conn: C, site: &Site) {
    let mut reader = BufReader::with_capacity(CHUNK, conn);
    loop {
        let head = match http1::read_head(&mut reader, MAX_HEAD) {
            Ok(Some(head)) => head,
            // The client closed between requests.
            Ok(None) => break,
            Err(err) => {
                if err.kind() == io::ErrorKind::InvalidData {
                    let answer = Response::text(400, format!("bad request head: {err}\n"));
                    let _ = send(
                        reader.get_mut(),
                        &Head::default(),
                        &answer,
                        false,
                        Cors::Off,
                    );
                }
                // Otherwise a timeout or a reset: nobody to answer.
                break;
            }
        };
        match exchange(&mut reader, &head, site) {
            Ok(true) => {}
            Ok(false) | Err(_) => break,
        }
    }
    close(reader.into_inner());
}

/// Answers one request whose head was just read; whether the connection carries on.
fn exchange<C: Conn>(reader: &mut BufReader<C>, head: &Head, site: &Site) -> io::Result<bool> {
    let keep_alive = head.keep_alive();
    let framing = match head.framing() {
        Ok(framing) => framing,
        Err(err) => {
            let answer = Response::text(400, format!("bad request: {err}\n"));
            send(reader.get_mut(), head, &answer, false, site.cors)?;
            return Ok(false);
        }
    };
    if head.expects_continue() && !framing.is_empty() {
        let w = reader.get_mut();
        w.write_all(b"HTTP/1.1 100 Continue\r\n\r\n")?;
        w.flush()?;
    }
    let (path, query) = head.path.split_once('?').unwrap_or((&head.path, ""));
    let request = Request {
        head,
        path,
        query,
        framing,
    };
    let mut body = RequestBody::new(&mut *reader, framing);
    let answer = if site.cors == Cors::On && head.method == "OPTIONS" {
        Ok(Response::empty(204))
    } else {
        routes::answer(&request, &mut body, site.files.as_ref())
    };
    // Whatever the route left of the body is read before answering: the next request starts
    // after it, and a client still sending cannot block on an answer nobody reads.
    let answer = answer.and_then(|answer| {
        io::copy(&mut body, &mut io::sink())?;
        Ok(answer)
    });
    drop(body);
    match answer {
        Ok(answer) => {
            send(reader.get_mut(), head, &answer, keep_alive, site.cors)?;
            Ok(keep_alive)
        }
        Err(err) => {
            if let Some(bad) = BodyError::of(&err) {
                let answer = Response::text(400, format!("bad request body: {bad}\n"));
                send(reader.get_mut(), head, &answer, false, site.cors)?;
            }
            // Otherwise the client went away or stalled inside its body.
            Ok(false)
        }
    }
}

/// Writes `response` to the request `head`: status line, the route's headers, CORS headers,
/// Content-Length (except for 1xx, 204 and 304) and Connection, then the body unless the
/// request is HEAD. A blob body is streamed in [`CHUNK`] writes.
fn send<W: Write>(
    w: &mut W,
    head: &Head,
    response: &Response,
    keep_alive: bool,
    cors: Cors,
) -> io::Result<()> {
    let status = response.status;
    let mut out = format!("HTTP/1.1 {status} {}\r\n", http1::reason(status));
    let has_body = !(status < 200 || status == 204 || status == 304);
    let cors = cors_headers(head, cors);
    for (name, value) in response.headers.iter().chain(&cors) {
        out.push_str(&format!("{name}: {value}\r\n"));
    }
    if has_body {
        out.push_str(&format!("Content-Length: {}\r\n", response.body.len()));
    }
    let connection = if keep_alive { "keep-alive" } else { "close" };
    out.push_str(&format!("Connection: {connection}\r\n\r\n"));
    let mut out = out.into_bytes();
    let send_body = has_body && head.method != "HEAD";
    match &response.body {
        Body::Bytes(data) if send_body => {
            out.extend_from_slice(data);
            w.write_all(&out)?;
        }
        Body::Blob(len) if send_body => {
            w.write_all(&out)?;
            let mut blob = BlobReader::new(*len);
            let mut buf = vec![0; CHUNK];
            loop {
                let n = blob.read(&mut buf)?;
                if n == 0 {
                    break;
                }
                w.write_all(&buf[..n])?;
            }
        }
        _ => w.write_all(&out)?,
    }
    w.flush()
}

/// The CORS headers for the answer to `head` (none when `cors` is off).
fn cors_headers(head: &Head, cors: Cors) -> Vec<(String, String)> {
    if cors == Cors::Off {
        return Vec::new();
    }
    let mut out = vec![
        ("Vary".to_string(), "Origin".to_string()),
        ("Access-Control-Expose-Headers".into(), "*".into()),
    ];
    match head.header("origin") {
        // Echoing the origin (not `*`) lets the page's own credentialed fetch set a cookie.
        Some(origin) => {
            out.push(("Access-Control-Allow-Origin".into(), origin.into()));
            out.push(("Access-Control-Allow-Credentials".into(), "true".into()));
        }
        None => out.push(("Access-Control-Allow-Origin".into(), "*".into())),
    }
    if head.method == "OPTIONS" {
        out.push((
            "Access-Control-Allow-Methods".into(),
            "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS".into(),
        ));
        let asked = head.header("access-control-request-headers").unwrap_or("*");
        out.push(("Access-Control-Allow-Headers".into(), asked.into()));
        out.push(("Access-Control-Max-Age".into(), "600".into()));
    }
    out
}

/// Ends a connection: TLS close_notify, FIN, then a lingering read of what the client still
/// sends (at most [`LINGER`]) before the socket is dropped.
fn close<C: Conn>(mut conn: C) {
    conn.finish();
    let mut socket = conn.socket();
    if socket.shutdown(Shutdown::Write).is_err() {
        return;
    }
    let deadline = Instant::now() + LINGER;
    let _ = socket.set_read_timeout(Some(LINGER));
    let mut buf = [0; 4096];
    while Instant::now() < deadline {
        match socket.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
    }
}
