//! What [`Origin`](super::Origin) answers on each path, whatever the method (HEAD gets the
//! same answer without its body; CORS preflights are answered before routing):
//! - `/blob/<len>`: `len` bytes (at most 1 GiB) of the deterministic blob, streamed;
//! - `/echo`: `<METHOD> <len> <sha256> chunked=<bool>\n` for the request body, hashed as it
//!   arrives (`chunked` says whether it came with `Transfer-Encoding: chunked`);
//! - `/hello`: `hello from the origin\n`;
//! - `/headers`: the request's headers, one `Name: value` line each;
//! - `/set-cookie`: a cookie for the browser profile that fetches it;
//! - `/redirect`: a 302 to `/hello`;
//! - `/simple/`, `/simple/<project>/`, `/files/<wheel>`: a pip "simple" index with one wheel,
//!   and `/git/...`: `git http-backend` (see `cgi.rs`), both only with [`OriginFiles`];
//! - anything else: a 404 with `not found here\n`.

use std::io::{self, Read};

use sha2::{Digest, Sha256};

use super::cgi;
use super::content::sha256_hex;
use super::files::{wheel_name, OriginFiles, WHEEL_PROJECT};
use super::http1::{Framing, Head};
use super::origin::CHUNK;

/// Largest `/blob/<len>`.
const MAX_BLOB: usize = 1 << 30;

/// A request as the routes see it (its body is passed beside it).
pub(super) struct Request<'a> {
    /// The parsed head.
    pub head: &'a Head,
    /// The target's path, without the query.
    pub path: &'a str,
    /// The target's query, without `?` (empty when there is none).
    pub query: &'a str,
    /// How the body is framed.
    pub framing: Framing,
}

/// An answer; the connection adds Content-Length, Connection and the CORS headers.
pub(super) struct Response {
    /// The status code (its reason phrase comes from `http1::reason`).
    pub status: u16,
    /// Headers besides the framing ones.
    pub headers: Vec<(String, String)>,
    /// What follows the head (not sent for HEAD, 204 or 304).
    pub body: Body,
}

/// A response body of known length.
pub(super) enum Body {
    /// Bytes in memory.
    Bytes(Vec<u8>),
    /// The first `len` bytes of the blob, generated while they are written.
    Blob(usize),
}

impl Body {
    /// Its length in bytes (the Content-Length).
    pub fn len(&self) -> usize {
        match self {
            Body::Bytes(data) => data.len(),
            Body::Blob(len) => *len,
        }
    }
}

impl Response {
    /// `status` with a `text/plain` body.
    pub fn text(status: u16, text: impl Into<String>) -> Self {
        Self::bytes(status, "text/plain", text.into().into_bytes())
    }

    /// `status` with `data` of this Content-Type.
    pub fn bytes(status: u16, content_type: &str, data: Vec<u8>) -> Self {
        Self {
            status,
            headers: vec![("Content-Type".into(), content_type.into())],
            body: Body::Bytes(data),
        }
    }

    /// `status` without body or headers.
    pub fn empty(status: u16) -> Self {
        Self {
            status,
            headers: Vec::new(),
            body: Body::Bytes(Vec::new()),
        }
    }

    /// Adds a header.
    pub fn with_header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }
}

/// The answer to `request`. `body` is the request body; what a route leaves unread is read
/// by the caller. An error is the body's (the client went away, or framed it badly).
pub(super) fn answer<B: Read + Send>(
    request: &Request,
    body: &mut B,
    files: Option<&OriginFiles>,
) -> io::Result<Response> {
    let path = request.path;
    if let Some(len) = path.strip_prefix("/blob/") {
        return Ok(match len.parse::<usize>() {
            Ok(len) if len <= MAX_BLOB => Response {
                status: 200,
                headers: vec![("Content-Type".into(), "application/octet-stream".into())],
                body: Body::Blob(len),
            },
            _ => Response::text(400, "bad length\n"),
        });
    }
    match path {
        "/echo" => echo(request, body),
        "/hello" => Ok(Response::text(200, "hello from the origin\n")),
        "/headers" => {
            let lines: String = request
                .head
                .headers
                .iter()
                .map(|(name, value)| format!("{name}: {value}\n"))
                .collect();
            Ok(Response::text(200, lines))
        }
        // A cookie for this host in the browser profile that fetches it (the browser e2e checks
        // the proxy never sends it).
        "/set-cookie" => Ok(Response::text(200, "cookie set\n").with_header(
            "Set-Cookie",
            "c2w_probe=page-profile-secret; Path=/; Max-Age=3600; SameSite=Lax",
        )),
        "/redirect" => Ok(Response::empty(302).with_header("Location", "/hello")),
        _ => match files {
            Some(files) if path.starts_with("/git/") => cgi::git_http_backend(request, body, files),
            Some(files) => Ok(pip(path, files).unwrap_or_else(not_found)),
            None => Ok(not_found()),
        },
    }
}

fn not_found() -> Response {
    Response::text(404, "not found here\n")
}

/// `POST /echo` and the like: the method, the body's length and sha256 (hashed as it is read,
/// so a large upload costs no memory), and whether it was chunked.
fn echo<B: Read>(request: &Request, body: &mut B) -> io::Result<Response> {
    let mut hasher = Sha256::new();
    let mut len: u64 = 0;
    let mut buf = vec![0; CHUNK];
    loop {
        let n = body.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        len += n as u64;
    }
    let sha: String = hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let chunked = request.framing == Framing::Chunked;
    Ok(Response::text(
        200,
        format!("{} {len} {sha} chunked={chunked}\n", request.head.method),
    ))
}

/// The pip "simple" index (PEP 503) of the one test wheel, and the wheel; `None` for any other
/// path.
fn pip(path: &str, files: &OriginFiles) -> Option<Response> {
    let wheel = wheel_name();
    let html = |body: String| Some(Response::bytes(200, "text/html", body.into_bytes()));
    if path == "/simple/" {
        return html(format!(
            "<!DOCTYPE html><html><body><a href=\"/simple/{WHEEL_PROJECT}/\">{WHEEL_PROJECT}</a></body></html>\n"
        ));
    }
    if path == format!("/simple/{WHEEL_PROJECT}/") {
        let data = match std::fs::read(files.dir.join(&wheel)) {
            Ok(data) => data,
            Err(err) => return Some(Response::text(500, format!("missing wheel: {err}\n"))),
        };
        return html(format!(
            "<!DOCTYPE html><html><body><a href=\"/files/{wheel}#sha256={}\">{wheel}</a></body></html>\n",
            sha256_hex(&data)
        ));
    }
    if path == format!("/files/{wheel}") {
        return Some(match std::fs::read(files.dir.join(&wheel)) {
            Ok(data) => Response::bytes(200, "application/octet-stream", data),
            Err(err) => Response::text(500, format!("missing wheel: {err}\n")),
        });
    }
    None
}
