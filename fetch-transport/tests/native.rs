//! The native backend against a local origin server (std threads on 127.0.0.1:0).

#![cfg(not(target_arch = "wasm32"))]

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use bytes::Bytes;
use fetch_transport::{
    body_channel, Body, NativeTransport, Transport, TransportConfig, TransportError,
};
use futures::StreamExt;

const BLOCK: usize = 64 * 1024;

/// Counters the origin keeps, shared with the test.
#[derive(Default)]
struct Counters {
    /// Bytes of `/big/N` bodies written to the socket so far.
    written: AtomicU64,
    /// Bytes of `/upload` bodies received so far.
    uploaded: AtomicU64,
}

struct Origin {
    addr: SocketAddr,
    counters: Arc<Counters>,
}

impl Origin {
    fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let counters = Arc::new(Counters::default());
        let shared = Arc::clone(&counters);
        thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { return };
                let counters = Arc::clone(&shared);
                thread::spawn(move || {
                    let _ = serve(conn, &counters);
                });
            }
        });
        Self { addr, counters }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}

struct Head {
    method: String,
    path: String,
    headers: Vec<(String, String)>,
}

impl Head {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Reads one request head, parsed by httparse (names in lower case); `None` when the
/// connection ends first.
fn read_head(r: &mut impl BufRead) -> io::Result<Option<Head>> {
    let mut buf = Vec::new();
    loop {
        let start = buf.len();
        if r.read_until(b'\n', &mut buf)? == 0 {
            return Ok(None);
        }
        if matches!(&buf[start..], b"\r\n" | b"\n") {
            break;
        }
    }
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut request = httparse::Request::new(&mut headers);
    request
        .parse(&buf)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    Ok(Some(Head {
        method: request.method.unwrap_or_default().to_string(),
        path: request.path.unwrap_or_default().to_string(),
        headers: request
            .headers
            .iter()
            .map(|h| {
                let value = String::from_utf8_lossy(h.value).trim().to_string();
                (h.name.to_ascii_lowercase(), value)
            })
            .collect(),
    }))
}

/// Reads a request body (Content-Length or chunked), calling `each` per piece.
fn read_body(r: &mut impl BufRead, head: &Head, mut each: impl FnMut(&[u8])) -> io::Result<()> {
    if let Some(len) = head.header("content-length") {
        let mut buf = vec![0; len.parse().unwrap()];
        r.read_exact(&mut buf)?;
        each(&buf);
    } else if head.header("transfer-encoding") == Some("chunked") {
        let mut line = String::new();
        loop {
            line.clear();
            r.read_line(&mut line)?;
            let size = match httparse::parse_chunk_size(line.as_bytes()) {
                Ok(httparse::Status::Complete((_, size))) => size as usize,
                _ => panic!("bad chunk size line {line:?}"),
            };
            if size == 0 {
                line.clear();
                r.read_line(&mut line)?;
                return Ok(());
            }
            let mut buf = vec![0; size + 2];
            r.read_exact(&mut buf)?;
            each(&buf[..size]);
        }
    }
    Ok(())
}

fn respond(
    w: &mut impl Write,
    status: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> io::Result<()> {
    write!(w, "HTTP/1.1 {status}\r\nConnection: close\r\n")?;
    for (n, v) in headers {
        write!(w, "{n}: {v}\r\n")?;
    }
    write!(w, "Content-Length: {}\r\n\r\n", body.len())?;
    w.write_all(body)?;
    w.flush()
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

const GZIP_TEXT: &str = "hello gzip world, hello gzip world, hello gzip world";

fn serve(stream: TcpStream, counters: &Counters) -> io::Result<()> {
    let mut r = BufReader::new(stream.try_clone()?);
    let mut w = stream;
    let Some(head) = read_head(&mut r)? else {
        return Ok(());
    };
    let path = head.path.clone();
    if path == "/upload" {
        let mut received = Vec::new();
        read_body(&mut r, &head, |piece| {
            counters
                .uploaded
                .fetch_add(piece.len() as u64, Ordering::SeqCst);
            received.extend_from_slice(piece);
        })?;
        let mut body = format!("{} bytes: ", received.len()).into_bytes();
        body.extend_from_slice(&received);
        return respond(&mut w, "200 OK", &[], &body);
    }
    let mut request_body = Vec::new();
    read_body(&mut r, &head, |p| request_body.extend_from_slice(p))?;
    if let Some(n) = path.strip_prefix("/big/") {
        let total: u64 = n.parse().unwrap();
        write!(
            w,
            "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: {total}\r\n\r\n"
        )?;
        let block = vec![b'x'; BLOCK];
        let mut left = total;
        while left > 0 {
            let n = left.min(BLOCK as u64) as usize;
            w.write_all(&block[..n])?;
            counters.written.fetch_add(n as u64, Ordering::SeqCst);
            left -= n as u64;
        }
        return w.flush();
    }
    if let Some(n) = path.strip_prefix("/redirect/") {
        let n: u32 = n.parse().unwrap();
        if n == 0 {
            return respond(&mut w, "200 OK", &[], b"landed");
        }
        let location = format!("/redirect/{}", n - 1);
        return respond(&mut w, "302 Found", &[("Location", &location)], b"");
    }
    if let Some(u) = path.strip_prefix("/proxy?u=") {
        let target = percent_encoding::percent_decode_str(u)
            .decode_utf8()
            .unwrap();
        let body = format!("proxied {target}");
        return respond(&mut w, "200 OK", &[], body.as_bytes());
    }
    match path.as_str() {
        "/chunked" => {
            write!(
                w,
                "HTTP/1.1 200 OK\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n"
            )?;
            for piece in ["hello ", "chunked ", "world"] {
                write!(w, "{:x}\r\n{piece}\r\n", piece.len())?;
                w.flush()?;
            }
            w.write_all(b"0\r\n\r\n")?;
            w.flush()
        }
        "/missing" => respond(
            &mut w,
            "404 Not Found",
            &[
                ("X-Multi", "a"),
                ("X-Multi", "b"),
                ("Set-Cookie", "a=1"),
                ("Set-Cookie", "b=2"),
                ("Content-Type", "text/plain"),
            ],
            b"no such page",
        ),
        "/boom" => respond(&mut w, "500 Internal Server Error", &[], b"boom"),
        "/away" => respond(
            &mut w,
            "302 Found",
            &[("Location", "http://example.com/")],
            b"",
        ),
        "/loop" => respond(&mut w, "302 Found", &[("Location", "/loop")], b""),
        "/gzip" => respond(
            &mut w,
            "200 OK",
            &[("Content-Encoding", "gzip")],
            &gzip(GZIP_TEXT.as_bytes()),
        ),
        "/hang" => {
            // Never answer; return when the client gives up and closes the connection.
            let mut byte = [0; 1];
            while r.read(&mut byte)? > 0 {}
            Ok(())
        }
        "/echo" => {
            let mut body = format!("{}\n", head.method);
            for (n, v) in &head.headers {
                body.push_str(&format!("{n}: {v}\n"));
            }
            body.push('\n');
            let mut body = body.into_bytes();
            body.extend_from_slice(&request_body);
            respond(&mut w, "200 OK", &[], &body)
        }
        _ => respond(&mut w, "400 Bad Request", &[], b"unknown path"),
    }
}

fn loopback() -> TransportConfig {
    TransportConfig::builder().loopback_only().build().unwrap()
}

fn transport(config: TransportConfig) -> NativeTransport {
    NativeTransport::builder()
        .config(config)
        .system_roots(false)
        .build()
        .unwrap()
}

fn get(url: &str) -> http::Request<Body> {
    http::Request::get(url).body(Body::empty()).unwrap()
}

async fn text(resp: http::Response<Body>) -> String {
    let bytes = resp.into_body().collect(1 << 20).await.unwrap();
    String::from_utf8(bytes.to_vec()).unwrap()
}

#[tokio::test]
async fn large_body_streams_with_bounded_memory() {
    const TOTAL: u64 = 512 * 1024 * 1024;
    // Socket buffers on loopback may grow to tcp_rmem max (32 MiB here) + tcp_wmem (4 MiB);
    // anything near the body size would mean the transport buffers the body.
    const BOUND: u64 = 64 * 1024 * 1024;
    let origin = Origin::start();
    let t = transport(loopback());
    let resp = t
        .send(get(&origin.url(&format!("/big/{TOTAL}"))))
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    assert_eq!(body.len(), Some(TOTAL));
    let (mut received, mut max_chunk, mut max_ahead) = (0u64, 0usize, 0u64);
    while let Some(chunk) = body.next().await {
        let chunk = chunk.unwrap();
        assert!(chunk.iter().all(|&b| b == b'x'));
        received += chunk.len() as u64;
        max_chunk = max_chunk.max(chunk.len());
        let written = origin.counters.written.load(Ordering::SeqCst);
        max_ahead = max_ahead.max(written.saturating_sub(received));
    }
    assert_eq!(received, TOTAL);
    println!("max chunk {max_chunk} bytes, origin at most {max_ahead} bytes ahead of the reader");
    assert!(max_chunk <= 1 << 20, "chunk of {max_chunk} bytes");
    assert!(max_ahead <= BOUND, "origin ran {max_ahead} bytes ahead");
}

#[tokio::test]
async fn chunked_response_streams_in_order() {
    let origin = Origin::start();
    let resp = transport(loopback())
        .send(get(&origin.url("/chunked")))
        .await
        .unwrap();
    assert!(resp.headers().get("transfer-encoding").is_none());
    assert!(resp.headers().get("connection").is_none());
    assert_eq!(resp.body().len(), None);
    assert_eq!(text(resp).await, "hello chunked world");
}

#[tokio::test]
async fn redirects_are_followed_and_reported() {
    let origin = Origin::start();
    let t = transport(loopback());
    let resp = t.send(get(&origin.url("/redirect/3"))).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-fetch-redirected"], "true");
    assert_eq!(
        resp.headers()["x-fetch-url"],
        origin.url("/redirect/0").as_str()
    );
    assert_eq!(text(resp).await, "landed");

    let direct = t.send(get(&origin.url("/redirect/0"))).await.unwrap();
    assert!(direct.headers().get("x-fetch-redirected").is_none());
    assert!(direct.headers().get("x-fetch-url").is_none());

    // 20 redirects are followed, 21 are not.
    let resp = t.send(get(&origin.url("/redirect/20"))).await.unwrap();
    assert_eq!(resp.status(), 200);
    let err = t.send(get(&origin.url("/redirect/21"))).await.unwrap_err();
    assert!(
        matches!(&err, TransportError::Blocked { reason, .. } if reason.contains("redirects")),
        "{err:?}"
    );
    let err = t.send(get(&origin.url("/loop"))).await.unwrap_err();
    assert!(matches!(err, TransportError::Blocked { .. }), "{err:?}");
}

#[tokio::test]
async fn redirect_to_a_denied_destination_is_denied() {
    let origin = Origin::start();
    let err = transport(loopback())
        .send(get(&origin.url("/away")))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, TransportError::Denied { reason, .. } if reason.contains("example.com")),
        "{err:?}"
    );
}

#[tokio::test]
async fn error_statuses_keep_headers_and_body() {
    let origin = Origin::start();
    let t = transport(loopback());
    let resp = t.send(get(&origin.url("/missing"))).await.unwrap();
    assert_eq!(resp.status(), 404);
    let multi: Vec<_> = resp.headers().get_all("x-multi").iter().collect();
    assert_eq!(multi, ["a", "b"]);
    assert_eq!(resp.headers().get_all("set-cookie").iter().count(), 2);
    assert_eq!(resp.headers()["content-type"], "text/plain");
    assert_eq!(resp.body().len(), Some(12));
    assert_eq!(text(resp).await, "no such page");

    let resp = t.send(get(&origin.url("/boom"))).await.unwrap();
    assert_eq!(resp.status(), 500);
    assert_eq!(text(resp).await, "boom");
}

#[tokio::test]
async fn refused_connection_is_blocked() {
    let port = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let err = transport(loopback())
        .send(get(&format!("http://127.0.0.1:{port}/")))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, TransportError::Blocked { reason, .. } if reason.contains("connect")),
        "{err:?}"
    );
}

#[tokio::test]
async fn slow_origin_times_out() {
    let origin = Origin::start();
    let config = TransportConfig::builder()
        .loopback_only()
        .timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let err = transport(config)
        .send(get(&origin.url("/hang")))
        .await
        .unwrap_err();
    assert!(matches!(err, TransportError::Timeout { .. }), "{err:?}");
}

#[tokio::test]
async fn denied_destination_never_leaves() {
    let err = transport(loopback())
        .send(get("http://example.com/"))
        .await
        .unwrap_err();
    assert!(matches!(err, TransportError::Denied { .. }), "{err:?}");
}

fn guest_request(url: &str) -> http::Request<Body> {
    http::Request::post(url)
        .header("Cookie", "session=guest")
        .header("User-Agent", "guest-agent/1.0")
        .header("Sec-Fetch-Mode", "navigate")
        .header("Proxy-Authorization", "Basic Zm9v")
        .header("Connection", "X-Hop")
        .header("X-Hop", "1")
        .header("X-Custom", "kept")
        .header("X-Custom", "twice")
        .body(Body::from("payload"))
        .unwrap()
}

#[tokio::test]
async fn transparent_mode_removes_only_hop_by_hop_headers() {
    let origin = Origin::start();
    let resp = transport(loopback())
        .send(guest_request(&origin.url("/echo")))
        .await
        .unwrap();
    let echo = text(resp).await;
    assert!(echo.starts_with("POST\n"), "{echo}");
    for kept in [
        "cookie: session=guest",
        "user-agent: guest-agent/1.0",
        "sec-fetch-mode: navigate",
        "x-custom: kept",
        "x-custom: twice",
        "content-length: 7",
    ] {
        assert!(echo.contains(kept), "{kept} missing in {echo}");
    }
    for gone in ["proxy-authorization", "x-hop", "transfer-encoding"] {
        assert!(!echo.contains(gone), "{gone} leaked in {echo}");
    }
    assert!(echo.ends_with("\n\npayload"), "{echo}");
}

#[tokio::test]
async fn browser_like_mode_applies_the_browser_policy() {
    let origin = Origin::start();
    let t = NativeTransport::builder()
        .config(loopback())
        .system_roots(false)
        .browser_like(true)
        .build()
        .unwrap();
    let echo = text(t.send(guest_request(&origin.url("/echo"))).await.unwrap()).await;
    for gone in [
        "cookie",
        "guest-agent",
        "sec-fetch-mode",
        "proxy-authorization",
        "x-hop",
    ] {
        assert!(!echo.contains(gone), "{gone} leaked in {echo}");
    }
    assert!(echo.contains("x-custom: kept") && echo.contains("x-custom: twice"));

    // Decoded like fetch() does, with the framing headers of the encoded body gone.
    let resp = t.send(get(&origin.url("/gzip"))).await.unwrap();
    assert!(resp.headers().get("content-encoding").is_none());
    assert!(resp.headers().get("content-length").is_none());
    assert_eq!(resp.body().len(), None);
    assert_eq!(text(resp).await, GZIP_TEXT);

    // Keeping the User-Agent is an option.
    let t = NativeTransport::builder()
        .config(
            TransportConfig::builder()
                .loopback_only()
                .keep_user_agent(true)
                .build()
                .unwrap(),
        )
        .system_roots(false)
        .browser_like(true)
        .build()
        .unwrap();
    let echo = text(t.send(guest_request(&origin.url("/echo"))).await.unwrap()).await;
    assert!(echo.contains("user-agent: guest-agent/1.0"), "{echo}");
}

#[tokio::test]
async fn transparent_mode_passes_encoded_bodies_through() {
    let origin = Origin::start();
    let resp = transport(loopback())
        .send(get(&origin.url("/gzip")))
        .await
        .unwrap();
    let compressed = gzip(GZIP_TEXT.as_bytes());
    assert_eq!(resp.headers()["content-encoding"], "gzip");
    assert_eq!(
        resp.headers()["content-length"],
        compressed.len().to_string().as_str()
    );
    assert_eq!(resp.body().len(), Some(compressed.len() as u64));
    let body = resp.into_body().collect(1 << 20).await.unwrap();
    assert_eq!(body, compressed);
}

#[tokio::test]
async fn request_body_streams_before_it_ends() {
    let origin = Origin::start();
    let t = transport(loopback());
    let (tx, body) = body_channel(None);
    let request = http::Request::post(origin.url("/upload"))
        .body(body)
        .unwrap();
    let uploaded = &origin.counters.uploaded;
    let feeder = async move {
        assert!(tx.send(Bytes::from_static(b"first ")));
        // The origin must see the first chunk while the body is still open. The deadline only
        // turns a transport that buffers the whole body into a failure instead of a hang.
        let mut waited = 0;
        while uploaded.load(Ordering::SeqCst) < 6 {
            assert!(waited < 10_000, "the first chunk never reached the origin");
            tokio::time::sleep(Duration::from_millis(5)).await;
            waited += 5;
        }
        assert!(tx.send(Bytes::from_static(b"second")));
        tx.finish();
    };
    let (resp, ()) = tokio::join!(t.send(request), feeder);
    assert_eq!(text(resp.unwrap()).await, "12 bytes: first second");
}

#[tokio::test]
async fn failing_request_body_aborts() {
    let origin = Origin::start();
    let (tx, body) = body_channel(None);
    assert!(tx.send(Bytes::from_static(b"partial")));
    tx.fail("the guest went away");
    let request = http::Request::post(origin.url("/upload"))
        .body(body)
        .unwrap();
    let err = transport(loopback()).send(request).await.unwrap_err();
    assert!(
        matches!(&err, TransportError::Aborted { reason, .. } if reason.contains("guest went away")),
        "{err:?}"
    );
}

#[tokio::test]
async fn v86_rewrite_and_cors_proxy_route_requests() {
    let origin = Origin::start();
    let port = origin.addr.port();
    let config = TransportConfig::builder()
        .allow("127.0.0.1")
        .rewrite("*.external", "http://127.0.0.1:{*}")
        .build()
        .unwrap();
    let resp = transport(config)
        .send(get(&format!("http://{port}.external/redirect/1")))
        .await
        .unwrap();
    assert_eq!(
        resp.headers()["x-fetch-url"],
        origin.url("/redirect/0").as_str()
    );
    assert_eq!(text(resp).await, "landed");

    let config = TransportConfig::builder()
        .allow("*.example")
        .cors_proxy(origin.url("/proxy?u={url}"))
        .build()
        .unwrap();
    let t = transport(config);
    let resp = t.send(get("https://site.example/a?b=c")).await.unwrap();
    assert_eq!(text(resp).await, "proxied https://site.example/a?b=c");
    let err = t.send(get("https://elsewhere.test/")).await.unwrap_err();
    assert!(matches!(err, TransportError::Denied { .. }), "{err:?}");
}

/// A one-request HTTPS origin with a certificate for `localhost` issued by a fresh CA.
fn tls_origin() -> (u16, String) {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let leaf_key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .signed_by(&leaf_key, &ca)
        .unwrap();
    let key = rustls_pki_types::PrivateKeyDer::Pkcs8(leaf_key.serialize_der().into());
    let server = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(vec![leaf.der().clone()], key)
    .unwrap();
    let server = Arc::new(server);
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { return };
            let server = Arc::clone(&server);
            thread::spawn(move || {
                let tls = rustls::ServerConnection::new(server).unwrap();
                let stream = rustls::StreamOwned::new(tls, conn);
                let mut r = BufReader::new(stream);
                if let Ok(Some(_)) = read_head(&mut r) {
                    let _ = respond(r.get_mut(), "200 OK", &[], b"tls ok");
                }
            });
        }
    });
    (port, ca.pem())
}

#[tokio::test]
async fn extra_root_certificates_are_trusted() {
    let (port, ca_pem) = tls_origin();
    let url = format!("https://localhost:{port}/");
    for system_roots in [false, true] {
        let t = NativeTransport::builder()
            .config(loopback())
            .system_roots(system_roots)
            .add_root_pem(ca_pem.as_bytes())
            .unwrap()
            .build()
            .unwrap();
        let resp = t.send(get(&url)).await.unwrap();
        assert_eq!(text(resp).await, "tls ok", "system_roots={system_roots}");

        let untrusting = NativeTransport::builder()
            .config(loopback())
            .system_roots(system_roots)
            .build()
            .unwrap();
        let err = untrusting.send(get(&url)).await.unwrap_err();
        assert!(
            matches!(&err, TransportError::Blocked { reason, .. } if reason.contains("certificate")),
            "system_roots={system_roots}: {err:?}"
        );
    }
    assert!(NativeTransport::builder().add_root_pem(b"not pem").is_err());
}

#[tokio::test]
async fn empty_post_says_content_length_zero() {
    let origin = Origin::start();
    let request = http::Request::post(origin.url("/echo"))
        .body(Body::empty())
        .unwrap();
    let echo = text(transport(loopback()).send(request).await.unwrap()).await;
    assert!(echo.contains("content-length: 0\n"), "{echo}");
    let echo = text(
        transport(loopback())
            .send(get(&origin.url("/echo")))
            .await
            .unwrap(),
    )
    .await;
    assert!(!echo.contains("content-length"), "{echo}");
}
