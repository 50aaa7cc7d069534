//! [`Origin`] over loopback with byte-exact requests: keep-alive, both body framings,
//! 100-continue, HEAD, HTTP/1.0, CORS on and off, bad framing, git http-backend, HTTPS.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};

use super::content::{blob, sha256_hex};
use super::files::{make_git_repo, OriginFiles};
use super::{Cors, Origin, GIT_README};

/// One parsed response.
#[derive(Debug)]
struct Answer {
    status: u16,
    reason: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Splits `bytes` into responses, each framed by its Content-Length (none: no body);
/// `head_only` marks the answers to HEAD requests, in order.
fn responses(mut bytes: &[u8], head_only: &[bool]) -> Vec<Answer> {
    let mut out = Vec::new();
    while !bytes.is_empty() {
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut response = httparse::Response::new(&mut headers);
        let httparse::Status::Complete(len) = response.parse(bytes).unwrap() else {
            panic!(
                "incomplete response head: {:?}",
                String::from_utf8_lossy(bytes)
            );
        };
        let headers: Vec<(String, String)> = response
            .headers
            .iter()
            .map(|h| {
                let value = String::from_utf8(h.value.to_vec()).unwrap();
                (h.name.to_string(), value)
            })
            .collect();
        let mut answer = Answer {
            status: response.code.unwrap(),
            reason: response.reason.unwrap().to_string(),
            headers,
            body: Vec::new(),
        };
        bytes = &bytes[len..];
        let head_only = head_only.get(out.len()).copied().unwrap_or(false);
        if let (Some(n), false) = (answer.header("content-length"), head_only) {
            let n: usize = n.parse().unwrap();
            answer.body = bytes[..n].to_vec();
            bytes = &bytes[n..];
        }
        out.push(answer);
    }
    out
}

/// Connects to `origin`, with a timeout so a server that fails to close fails the test.
fn connect(origin: &Origin) -> TcpStream {
    let s = TcpStream::connect(origin.addr()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s
}

/// Sends `request` and reads until the origin closes.
fn ask(origin: &Origin, request: &[u8]) -> Vec<u8> {
    let mut s = connect(origin);
    s.write_all(request).unwrap();
    let mut got = Vec::new();
    s.read_to_end(&mut got).unwrap();
    got
}

fn ask_one(origin: &Origin, request: &str) -> Answer {
    let head_only = request.starts_with("HEAD ");
    let mut all = responses(&ask(origin, request.as_bytes()), &[head_only]);
    assert_eq!(all.len(), 1, "{all:?}");
    all.remove(0)
}

/// A fresh directory under the system's temporary one.
fn scratch(what: &str) -> PathBuf {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("xtask-origin-{what}-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn keep_alive_carries_blob_echo_and_hello_on_one_connection() {
    let origin = Origin::http_without_files(Cors::Off).unwrap();
    let got = ask(
        &origin,
        b"GET /blob/100000 HTTP/1.1\r\nHost: x\r\n\r\n\
          POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc\
          GET /hello HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    let all = responses(&got, &[]);
    assert_eq!(all.len(), 3, "{all:?}");
    assert_eq!((all[0].status, all[0].reason.as_str()), (200, "OK"));
    assert_eq!(all[0].header("content-length"), Some("100000"));
    assert_eq!(all[0].header("connection"), Some("keep-alive"));
    assert_eq!(all[0].body, blob(100_000));
    assert_eq!(
        all[1].text(),
        "POST 3 ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad chunked=false\n"
    );
    assert_eq!(all[2].text(), "hello from the origin\n");
    assert_eq!(all[2].header("connection"), Some("close"));
    assert!(all
        .iter()
        .all(|a| a.header("access-control-allow-origin").is_none()));
}

#[test]
fn a_chunked_upload_with_extensions_and_a_trailer_is_hashed_whole() {
    let origin = Origin::http_without_files(Cors::Off).unwrap();
    let got = ask(
        &origin,
        b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n\
          5;name=\"v\"\r\nhello\r\n6\r\n world\r\n0\r\nX-Checksum: 1\r\n\r\n\
          PUT /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    );
    let all = responses(&got, &[]);
    assert_eq!(all.len(), 2, "{all:?}");
    assert_eq!(
        all[0].text(),
        format!("POST 11 {} chunked=true\n", sha256_hex(b"hello world"))
    );
    assert_eq!(
        all[1].text(),
        format!("PUT 0 {} chunked=false\n", sha256_hex(b""))
    );
}

#[test]
fn expect_100_continue_gets_its_interim_answer_before_the_body_is_sent() {
    let origin = Origin::http_without_files(Cors::Off).unwrap();
    let mut s = connect(&origin);
    s.write_all(
        b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\
          Connection: close\r\n\r\n",
    )
    .unwrap();
    let mut interim = [0; 25];
    s.read_exact(&mut interim).unwrap();
    assert_eq!(&interim, b"HTTP/1.1 100 Continue\r\n\r\n");
    s.write_all(b"12345").unwrap();
    let mut rest = Vec::new();
    s.read_to_end(&mut rest).unwrap();
    let all = responses(&rest, &[]);
    assert_eq!(
        all[0].text(),
        format!("POST 5 {} chunked=false\n", sha256_hex(b"12345"))
    );
}

#[test]
fn head_answers_carry_the_get_length_without_a_body() {
    let origin = Origin::http_without_files(Cors::Off).unwrap();
    let got = ask(
        &origin,
        b"HEAD /blob/12345 HTTP/1.1\r\nHost: x\r\n\r\n\
          HEAD /hello HTTP/1.1\r\nHost: x\r\n\r\n\
          HEAD /missing HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    let all = responses(&got, &[true, true, true]);
    assert_eq!(all.len(), 3, "{all:?}");
    assert_eq!(all[0].header("content-length"), Some("12345"));
    assert_eq!(all[1].header("content-length"), Some("22"));
    assert_eq!((all[2].status, all[2].reason.as_str()), (404, "Not Found"));
    assert_eq!(all[2].header("content-length"), Some("15"));
    assert!(all.iter().all(|a| a.body.is_empty()));
}

#[test]
fn http_1_0_is_answered_then_closed() {
    let origin = Origin::http_without_files(Cors::Off).unwrap();
    // The client keeps its side open: read_to_end returns only because the origin closes.
    let answer = ask_one(
        &origin,
        "GET /hello HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
    );
    assert_eq!(answer.status, 200);
    assert_eq!(answer.header("connection"), Some("close"));
    assert_eq!(answer.text(), "hello from the origin\n");
}

#[test]
fn redirect_and_bad_blob_lengths() {
    let origin = Origin::http_without_files(Cors::Off).unwrap();
    let redirect = ask_one(
        &origin,
        "GET /redirect HTTP/1.1\r\nConnection: close\r\n\r\n",
    );
    assert_eq!((redirect.status, redirect.reason.as_str()), (302, "Found"));
    assert_eq!(redirect.header("location"), Some("/hello"));
    assert_eq!(redirect.header("content-length"), Some("0"));
    let bad = ask_one(&origin, "GET /blob/x HTTP/1.1\r\nConnection: close\r\n\r\n");
    assert_eq!((bad.status, bad.reason.as_str()), (400, "Bad Request"));
    let big = ask_one(
        &origin,
        "GET /blob/1073741825 HTTP/1.1\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(big.status, 400);
    // Routes that need files are not there without them.
    let pip = ask_one(
        &origin,
        "GET /simple/ HTTP/1.1\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(pip.status, 404);
}

#[test]
fn cors_on_echoes_the_origin_and_answers_preflights_cors_off_sends_nothing() {
    let on = Origin::http_without_files(Cors::On).unwrap();
    let with_origin = ask_one(
        &on,
        "GET /hello HTTP/1.1\r\nOrigin: http://page.test\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(
        with_origin.header("access-control-allow-origin"),
        Some("http://page.test")
    );
    assert_eq!(
        with_origin.header("access-control-allow-credentials"),
        Some("true")
    );
    assert_eq!(with_origin.header("vary"), Some("Origin"));
    assert_eq!(
        with_origin.header("access-control-expose-headers"),
        Some("*")
    );
    assert!(with_origin.header("access-control-max-age").is_none());
    let without = ask_one(&on, "GET /hello HTTP/1.1\r\nConnection: close\r\n\r\n");
    assert_eq!(without.header("access-control-allow-origin"), Some("*"));
    assert!(without.header("access-control-allow-credentials").is_none());
    let preflight = ask_one(
        &on,
        "OPTIONS /echo HTTP/1.1\r\nOrigin: http://page.test\r\n\
         Access-Control-Request-Method: POST\r\n\
         Access-Control-Request-Headers: content-type, x-probe\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(
        (preflight.status, preflight.reason.as_str()),
        (204, "No Content")
    );
    assert!(preflight.header("content-length").is_none());
    assert_eq!(
        preflight.header("access-control-allow-headers"),
        Some("content-type, x-probe")
    );
    assert_eq!(
        preflight.header("access-control-allow-methods"),
        Some("GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS")
    );
    assert_eq!(preflight.header("access-control-max-age"), Some("600"));
    assert_eq!(
        preflight.header("access-control-allow-origin"),
        Some("http://page.test")
    );

    let off = Origin::http_without_files(Cors::Off).unwrap();
    let plain = ask_one(
        &off,
        "GET /hello HTTP/1.1\r\nOrigin: http://page.test\r\nConnection: close\r\n\r\n",
    );
    assert!(
        plain
            .headers
            .iter()
            .all(|(n, _)| !n.to_ascii_lowercase().starts_with("access-control-") && n != "Vary"),
        "{plain:?}"
    );
    let options = ask_one(
        &off,
        "OPTIONS /hello HTTP/1.1\r\nOrigin: http://page.test\r\n\
         Access-Control-Request-Method: POST\r\nConnection: close\r\n\r\n",
    );
    // Not a preflight answer: OPTIONS is routed, and /hello answers any method.
    assert_eq!(options.status, 200);
    assert!(options.header("access-control-allow-origin").is_none());
    let missing = ask_one(
        &off,
        "OPTIONS /nowhere HTTP/1.1\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(missing.status, 404);
    assert_eq!(missing.text(), "not found here\n");
}

#[test]
fn bad_framing_gets_a_400_and_the_connection_ends() {
    let origin = Origin::http_without_files(Cors::Off).unwrap();
    for request in [
        // A chunk size that is no hex number; the pipelined request after it is never read.
        &b"POST /echo HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n\
           GET /hello HTTP/1.1\r\n\r\n"[..],
        // The same in a body no route reads.
        b"POST /hello HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhelloXX\r\n0\r\n\r\n",
        b"POST /echo HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"POST /echo HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n",
        b"GET / HTTP/1.1\r\nno colon\r\n\r\n",
    ] {
        let all = responses(&ask(&origin, request), &[]);
        assert_eq!(all.len(), 1, "{all:?}");
        assert_eq!(
            (all[0].status, all[0].reason.as_str()),
            (400, "Bad Request")
        );
        assert_eq!(all[0].header("connection"), Some("close"));
    }
}

#[test]
fn headers_route_lists_the_request_headers() {
    let origin = Origin::http_without_files(Cors::Off).unwrap();
    let answer = ask_one(
        &origin,
        "GET /headers HTTP/1.1\r\nHost: x\r\nX-Probe: a b\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(answer.text(), "Host: x\nX-Probe: a b\nConnection: close\n");
    let cookie = ask_one(
        &origin,
        "GET /set-cookie HTTP/1.1\r\nConnection: close\r\n\r\n",
    );
    assert!(cookie
        .header("set-cookie")
        .is_some_and(|c| c.starts_with("c2w_probe=")));
}

/// Origin files with only the git repository (no CA, certificate or wheel).
fn git_only_files() -> OriginFiles {
    let dir = scratch("git");
    make_git_repo(&dir.join("git")).unwrap();
    OriginFiles {
        ca_cert: dir.join("absent-ca.pem"),
        server_cert: dir.join("absent-server.pem"),
        server_key: dir.join("absent-server.key"),
        dir,
    }
}

#[test]
fn git_http_backend_advertises_refs_answers_a_chunked_post_and_clones() {
    let files = git_only_files();
    let origin = Origin::http(&files, Cors::Off).unwrap();
    let refs = ask_one(
        &origin,
        "GET /git/repo/info/refs?service=git-upload-pack HTTP/1.1\r\nHost: x\r\n\
         Connection: close\r\n\r\n",
    );
    assert_eq!(refs.status, 200, "{}", refs.text());
    assert_eq!(
        refs.header("content-type"),
        Some("application/x-git-upload-pack-advertisement")
    );
    assert!(refs.text().starts_with("001e# service=git-upload-pack\n"));
    assert!(refs.text().contains("refs/heads/main"));

    // Protocol v2's ls-refs in a chunked body: the CGI gets no CONTENT_LENGTH and reads to
    // the end of its stdin; Git-Protocol reaches it as HTTP_GIT_PROTOCOL.
    let command = b"0014command=ls-refs\n0000";
    let mut request = b"POST /git/repo/git-upload-pack HTTP/1.1\r\nHost: x\r\n\
        Content-Type: application/x-git-upload-pack-request\r\nGit-Protocol: version=2\r\n\
        Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
        .to_vec();
    for part in command.chunks(7) {
        request.extend_from_slice(format!("{:x}\r\n", part.len()).as_bytes());
        request.extend_from_slice(part);
        request.extend_from_slice(b"\r\n");
    }
    request.extend_from_slice(b"0\r\n\r\n");
    let all = responses(&ask(&origin, &request), &[]);
    assert_eq!(all[0].status, 200, "{}", all[0].text());
    assert!(
        all[0].text().contains("refs/heads/main\n"),
        "{}",
        all[0].text()
    );

    let missing = ask_one(
        &origin,
        "GET /git/nothing/info/refs?service=git-upload-pack HTTP/1.1\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(
        (missing.status, missing.reason.as_str()),
        (404, "Not Found")
    );

    let dest = files.dir.join("clone");
    let out = Command::new("git")
        .args(["-c", "http.proxy=", "clone", "-q"])
        .arg(format!("{}/git/repo", origin.base_url()))
        .arg(&dest)
        .env_remove("http_proxy")
        .env_remove("HTTP_PROXY")
        .env_remove("all_proxy")
        .env_remove("ALL_PROXY")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        std::fs::read_to_string(dest.join("README")).unwrap(),
        GIT_README
    );
    let _ = std::fs::remove_dir_all(&files.dir);
}

#[test]
fn https_serves_the_pip_index_and_wheel_and_ends_with_close_notify() {
    let dir = scratch("https");
    let files = OriginFiles::create(&dir).unwrap();
    let origin = Origin::https(&files, Cors::Off).unwrap();
    assert!(origin.base_url().starts_with("https://127.0.0.1:"));
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_file(&files.ca_cert).unwrap())
        .unwrap();
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let name = ServerName::try_from("127.0.0.1").unwrap();
    let conn = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
    let mut tls = rustls::StreamOwned::new(conn, connect(&origin));
    let wheel = super::files::wheel_name();
    tls.write_all(
        format!(
            "GET /simple/c2w-probe/ HTTP/1.1\r\nHost: x\r\n\r\n\
             GET /files/{wheel} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        .as_bytes(),
    )
    .unwrap();
    let mut got = Vec::new();
    // An error here would be a connection closed without close_notify.
    tls.read_to_end(&mut got).unwrap();
    let all = responses(&got, &[]);
    assert_eq!(all.len(), 2, "{all:?}");
    let data = std::fs::read(dir.join(&wheel)).unwrap();
    assert!(all[0]
        .text()
        .contains(&format!("/files/{wheel}#sha256={}", sha256_hex(&data))));
    assert_eq!(all[1].body, data);
    let _ = std::fs::remove_dir_all(&dir);
}
