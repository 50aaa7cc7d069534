//! The proxy against scripted guests and a scripted transport: every HTTP/1.1 behaviour the
//! proxy promises, checked on the exact bytes the guest receives.

#[cfg(target_arch = "wasm32")]
use wasm_bindgen_test::wasm_bindgen_test as test;

use std::cell::RefCell;
use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use fetch_transport::{Body, BodyError, Transport, TransportError};
use futures::executor::block_on;
use futures::future::{self, LocalBoxFuture};
use futures::io::{AsyncRead, AsyncWrite};
use futures::stream;
use http_proxy::{Entry, Limits, Proxy, ProxyConfig, Timer};

/// A guest: reads come from `input` in pieces of `piece` bytes; then EOF, or a stall forever.
struct Guest {
    input: Vec<u8>,
    pos: usize,
    piece: usize,
    stall_at_end: bool,
    output: Rc<RefCell<Vec<u8>>>,
    max_write: Rc<RefCell<usize>>,
}

impl AsyncRead for Guest {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        if self.pos >= self.input.len() {
            return if self.stall_at_end {
                Poll::Pending
            } else {
                Poll::Ready(Ok(0))
            };
        }
        let n = buf.len().min(self.piece).min(self.input.len() - self.pos);
        buf[..n].copy_from_slice(&self.input[self.pos..self.pos + n]);
        self.pos += n;
        Poll::Ready(Ok(n))
    }
}

impl AsyncWrite for Guest {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.output.borrow_mut().extend_from_slice(buf);
        let mut max = self.max_write.borrow_mut();
        *max = (*max).max(buf.len());
        Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_close(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// Timers that never fire, or fire at once (to test timeouts without waiting).
struct TestTimer {
    fire: bool,
}

impl Timer for TestTimer {
    fn sleep(&self, _duration: Duration) -> LocalBoxFuture<'static, ()> {
        if self.fire {
            Box::pin(future::ready(()))
        } else {
            Box::pin(future::pending())
        }
    }
}

#[derive(Debug, Clone)]
struct Seen {
    method: String,
    url: String,
    headers: http::HeaderMap,
    body: Result<Bytes, String>,
}

type Responder = Box<dyn Fn(&Seen) -> Result<http::Response<Body>, TransportError>>;

/// A transport that records each request (reading its whole body) and answers with `respond`.
struct Script {
    seen: RefCell<Vec<Seen>>,
    respond: Responder,
}

#[async_trait(?Send)]
impl Transport for Script {
    async fn send(
        &self,
        request: http::Request<Body>,
    ) -> Result<http::Response<Body>, TransportError> {
        let (parts, body) = request.into_parts();
        let body = body.collect(1 << 30).await.map_err(|e| e.to_string());
        let seen = Seen {
            method: parts.method.to_string(),
            url: parts.uri.to_string(),
            headers: parts.headers,
            body,
        };
        let response = (self.respond)(&seen);
        self.seen.borrow_mut().push(seen);
        response
    }
}

fn ok_text(text: &'static str) -> Responder {
    Box::new(move |_| {
        Ok(http::Response::builder()
            .status(200)
            .header("content-type", "text/plain")
            .body(Body::full(text))
            .unwrap())
    })
}

struct Run {
    stats: http_proxy::ProxyStats,
    output: String,
    raw: Vec<u8>,
    seen: Vec<Seen>,
    max_write: usize,
}

fn run_with(
    input: &[u8],
    respond: Responder,
    mode: Entry,
    piece: usize,
    stall: bool,
    fire: bool,
    limits: Limits,
) -> Run {
    let script = Rc::new(Script {
        seen: RefCell::new(Vec::new()),
        respond,
    });
    let config = ProxyConfig {
        limits,
        ca_certificate_pem: Some(
            "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n".into(),
        ),
        ..ProxyConfig::default()
    };
    let proxy = Proxy::new(config, script.clone(), Rc::new(TestTimer { fire }));
    let output = Rc::new(RefCell::new(Vec::new()));
    let max_write = Rc::new(RefCell::new(0));
    let guest = Guest {
        input: input.to_vec(),
        pos: 0,
        piece,
        stall_at_end: stall,
        output: output.clone(),
        max_write: max_write.clone(),
    };
    let _ = block_on(proxy.serve(guest, mode));
    assert_eq!(proxy.stats().connections_open, 0);
    let raw = output.borrow().clone();
    let seen = script.seen.borrow().clone();
    let max_write = *max_write.borrow();
    Run {
        stats: proxy.stats(),
        output: String::from_utf8_lossy(&raw).into_owned(),
        raw,
        seen,
        max_write,
    }
}

fn run(input: &[u8], respond: Responder) -> Run {
    run_with(
        input,
        respond,
        Entry::ForwardProxy,
        7,
        false,
        false,
        Limits::default(),
    )
}

#[test]
fn absolute_form_get_is_forwarded_and_framed_with_length() {
    let r = run(
        b"GET http://example.test/a?b=1 HTTP/1.1\r\nHost: example.test\r\nAccept: */*\r\n\r\n",
        ok_text("hello"),
    );
    assert_eq!(r.seen.len(), 1);
    assert_eq!(r.seen[0].method, "GET");
    assert_eq!(r.seen[0].url, "http://example.test/a?b=1");
    assert_eq!(r.seen[0].headers.get("accept").unwrap(), "*/*");
    assert_eq!(
        r.output,
        "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 5\r\n\r\nhello"
    );
}

#[test]
fn host_header_disagreeing_with_target_loses() {
    let r = run(
        b"GET http://right.test:8080/x HTTP/1.1\r\nHost: wrong.test\r\n\r\n",
        ok_text("ok"),
    );
    assert_eq!(r.seen[0].url, "http://right.test:8080/x");
}

#[test]
fn keep_alive_and_pipelined_requests_are_answered_in_order() {
    let input = b"GET http://a.test/1 HTTP/1.1\r\nHost: a.test\r\n\r\nGET http://a.test/2 HTTP/1.1\r\nHost: a.test\r\n\r\nGET http://a.test/3 HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n";
    let respond: Responder = Box::new(|seen| {
        let body = seen.url.rsplit('/').next().unwrap().to_string();
        Ok(http::Response::builder()
            .status(200)
            .body(Body::full(body))
            .unwrap())
    });
    let r = run_with(
        input,
        respond,
        Entry::ForwardProxy,
        1000,
        false,
        false,
        Limits::default(),
    );
    let urls: Vec<_> = r.seen.iter().map(|s| s.url.as_str()).collect();
    assert_eq!(
        urls,
        ["http://a.test/1", "http://a.test/2", "http://a.test/3"]
    );
    assert_eq!(
        r.output,
        "HTTP/1.1 200 OK\r\ncontent-length: 1\r\n\r\n1HTTP/1.1 200 OK\r\ncontent-length: 1\r\n\r\n2HTTP/1.1 200 OK\r\ncontent-length: 1\r\nconnection: close\r\n\r\n3"
    );
}

#[test]
fn http10_client_gets_close_delimited_body_without_chunking() {
    let respond: Responder = Box::new(|_| {
        let body = stream::iter(vec![
            Ok(Bytes::from_static(b"abc")),
            Ok(Bytes::from_static(b"def")),
        ]);
        Ok(http::Response::builder()
            .status(200)
            .body(Body::from_stream(body, None))
            .unwrap())
    });
    let r = run(
        b"GET http://a.test/ HTTP/1.0\r\n\r\nGET http://a.test/again HTTP/1.0\r\n\r\n",
        respond,
    );
    assert_eq!(
        r.seen.len(),
        1,
        "HTTP/1.0 closes after one response by default"
    );
    assert_eq!(
        r.output,
        "HTTP/1.1 200 OK\r\nconnection: close\r\n\r\nabcdef"
    );
}

#[test]
fn http10_keep_alive_with_known_length() {
    let r = run(b"GET http://a.test/ HTTP/1.0\r\nProxy-Connection: Keep-Alive\r\n\r\nGET http://a.test/2 HTTP/1.0\r\n\r\n", ok_text("x"));
    assert_eq!(r.seen.len(), 2);
    assert!(r.output.starts_with("HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 1\r\nconnection: keep-alive\r\n\r\nx"));
}

#[test]
fn unknown_length_is_chunked_for_http11() {
    let respond: Responder = Box::new(|_| {
        let body = stream::iter(vec![
            Ok(Bytes::from_static(b"hello ")),
            Ok(Bytes::from_static(b"world")),
        ]);
        Ok(http::Response::builder()
            .status(200)
            .body(Body::from_stream(body, None))
            .unwrap())
    });
    let r = run(
        b"GET http://a.test/ HTTP/1.1\r\nConnection: close\r\n\r\n",
        respond,
    );
    assert_eq!(r.output, "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n6\r\nhello \r\n5\r\nworld\r\n0\r\n\r\n");
}

#[test]
fn content_length_and_chunked_request_bodies_are_decoded() {
    let input = b"POST http://a.test/up HTTP/1.1\r\nContent-Length: 11\r\n\r\nhello worldPOST http://a.test/up2 HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5;x=y\r\nhello\r\n6\r\n world\r\n0\r\nTrailer-A: 1\r\n\r\n";
    let r = run(input, ok_text("ok"));
    assert_eq!(r.seen.len(), 2);
    assert_eq!(r.seen[0].body.as_deref().unwrap(), b"hello world");
    assert_eq!(r.seen[1].body.as_deref().unwrap(), b"hello world");
    assert_eq!(r.stats.bytes_from_guest, 22);
}

#[test]
fn expect_100_continue_is_answered_first() {
    let r = run(b"PUT http://a.test/ HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 3\r\nConnection: close\r\n\r\nabc", ok_text("ok"));
    assert!(
        r.output
            .starts_with("HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\n"),
        "{}",
        r.output
    );
    assert_eq!(r.seen[0].body.as_deref().unwrap(), b"abc");
}

#[test]
fn head_204_304_have_no_body() {
    let respond: Responder = Box::new(|seen| {
        let status = if seen.url.ends_with("204") {
            204
        } else if seen.url.ends_with("304") {
            304
        } else {
            200
        };
        Ok(http::Response::builder()
            .status(status)
            .header("content-length", "42")
            .body(Body::empty())
            .unwrap())
    });
    let input = b"HEAD http://a.test/ HTTP/1.1\r\n\r\nGET http://a.test/204 HTTP/1.1\r\n\r\nGET http://a.test/304 HTTP/1.1\r\nConnection: close\r\n\r\n";
    let r = run(input, respond);
    assert_eq!(
        r.output,
        "HTTP/1.1 200 OK\r\ncontent-length: 42\r\n\r\nHTTP/1.1 204 No Content\r\n\r\nHTTP/1.1 304 Not Modified\r\ncontent-length: 42\r\nconnection: close\r\n\r\n"
    );
}

fn assert_rejected(input: &[u8], status: &str) -> Run {
    let r = run(input, ok_text("should not be reached"));
    assert!(r.seen.is_empty(), "transport must not be called");
    assert!(
        r.output.starts_with(&format!("HTTP/1.1 {status}")),
        "expected {status}, got {}",
        r.output
    );
    assert!(r.output.contains("connection: close"));
    assert!(r.output.contains("x-c2w-proxy-error"));
    r
}

#[test]
fn bad_input_gets_a_clear_4xx_and_close() {
    let mut huge = b"GET http://a.test/ HTTP/1.1\r\nX-Big: ".to_vec();
    huge.extend(std::iter::repeat_n(b'a', 70 * 1024));
    assert_rejected(&huge, "431");
    assert_rejected(b"GARBAGE LINE\r\n\r\n", "400");
    assert_rejected(b"GET http://a.test/ HTTP/1.1\r\nNoColon\r\n\r\n", "400");
    assert_rejected(b"GET http://a.test/ HTTP/1.1\r\n: empty\r\n\r\n", "400");
    assert_rejected(
        b"POST http://a.test/ HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
        "400",
    );
    assert_rejected(b"GET ftp://a.test/ HTTP/1.1\r\n\r\n", "400");
    let r = assert_rejected(
        b"GET http://a.test/ HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
        "501",
    );
    assert!(r.output.contains("WebSocket"));
    assert_rejected(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", "501");
}

#[test]
fn invalid_chunk_size_fails_the_request_body() {
    let r = run(
        b"POST http://a.test/ HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        ok_text("ok"),
    );
    assert_eq!(r.seen.len(), 1);
    assert!(r.seen[0]
        .body
        .as_ref()
        .unwrap_err()
        .contains("invalid chunk size"));
    assert!(r.output.contains("connection: close"), "{}", r.output);
}

fn error_output(err: TransportError) -> String {
    let respond: Responder = Box::new(move |_| Err(err.clone()));
    run(
        b"GET http://a.test/x HTTP/1.1\r\nConnection: close\r\n\r\n",
        respond,
    )
    .output
}

#[test]
fn transport_errors_become_explained_responses() {
    let out = error_output(TransportError::Blocked {
        url: "http://a.test/x".into(),
        reason: "TypeError: Failed to fetch".into(),
    });
    assert!(out.starts_with("HTTP/1.1 502 Bad Gateway\r\n"), "{out}");
    assert!(out.contains("x-c2w-proxy-error: blocked"));
    assert!(out.contains("the browser refused the request to http://a.test/x"));
    assert!(out.contains("CORS"));
    let out = error_output(TransportError::Timeout {
        url: "http://a.test/x".into(),
        reason: "30 s".into(),
    });
    assert!(out.starts_with("HTTP/1.1 504 Gateway Timeout\r\n"), "{out}");
    let out = error_output(TransportError::BodyTooLarge {
        url: "http://a.test/x".into(),
        limit: 10,
    });
    assert!(
        out.starts_with("HTTP/1.1 413 Payload Too Large\r\n"),
        "{out}"
    );
}

#[test]
fn origin_error_status_keeps_body() {
    let respond: Responder = Box::new(|_| {
        Ok(http::Response::builder()
            .status(404)
            .body(Body::full("no such page"))
            .unwrap())
    });
    let r = run(
        b"GET http://a.test/missing HTTP/1.1\r\nConnection: close\r\n\r\n",
        respond,
    );
    assert_eq!(
        r.output,
        "HTTP/1.1 404 Not Found\r\ncontent-length: 12\r\nconnection: close\r\n\r\nno such page"
    );
}

#[test]
fn origin_dying_mid_body_is_visible_to_the_guest() {
    let respond: Responder = Box::new(|_| {
        let body = stream::iter(vec![
            Ok(Bytes::from_static(b"12345")),
            Err(BodyError::new("reset by origin")),
        ]);
        Ok(http::Response::builder()
            .status(200)
            .body(Body::from_stream(body, Some(10)))
            .unwrap())
    });
    let r = run(
        b"GET http://a.test/ HTTP/1.1\r\n\r\nGET http://a.test/next HTTP/1.1\r\n\r\n",
        respond,
    );
    assert_eq!(
        r.seen.len(),
        1,
        "the connection closes after a truncated response"
    );
    assert!(
        r.output.ends_with("content-length: 10\r\n\r\n12345"),
        "{}",
        r.output
    );
    let respond: Responder = Box::new(|_| {
        let body = stream::iter(vec![
            Ok(Bytes::from_static(b"12345")),
            Err(BodyError::new("reset")),
        ]);
        Ok(http::Response::builder()
            .status(200)
            .body(Body::from_stream(body, None))
            .unwrap())
    });
    let r = run(b"GET http://a.test/ HTTP/1.1\r\n\r\n", respond);
    assert!(
        r.output.ends_with("5\r\n12345\r\n"),
        "no terminating chunk: {}",
        r.output
    );
}

#[test]
fn stalled_guest_is_closed_by_the_timeout() {
    // The head never completes and the timer fires at once: serve() must return.
    let r = run_with(
        b"GET http://a.test/ HTTP/1.1\r\nHost",
        ok_text("x"),
        Entry::ForwardProxy,
        7,
        true,
        true,
        Limits::default(),
    );
    assert!(r.seen.is_empty());
    // An idle keep-alive connection after one response is closed too.
    let r = run_with(
        b"GET http://a.test/ HTTP/1.1\r\n\r\n",
        ok_text("x"),
        Entry::ForwardProxy,
        64,
        true,
        true,
        Limits::default(),
    );
    assert_eq!(r.seen.len(), 1);
}

#[test]
fn own_pages_status_and_ca() {
    let r = run(b"GET / HTTP/1.1\r\nHost: 192.168.127.253\r\n\r\nGET http://192.168.127.253/ca.pem HTTP/1.1\r\nConnection: close\r\n\r\n", ok_text("x"));
    assert!(r.seen.is_empty());
    assert!(r.output.starts_with("HTTP/1.1 200 OK\r\n"));
    assert!(r.output.contains("This is the HTTP proxy"));
    assert!(r.output.contains("content-type: application/x-pem-file"));
    assert!(r.output.ends_with("-----END CERTIFICATE-----\n"));
    let r = run(
        b"GET /elsewhere HTTP/1.1\r\nConnection: close\r\n\r\n",
        ok_text("x"),
    );
    assert!(r.output.starts_with("HTTP/1.1 400"), "{}", r.output);
}

#[test]
fn origin_mode_uses_host_header_or_fallback() {
    use http_proxy::target::{Host, Origin, Scheme};
    let mode = Entry::Http {
        fallback: Some(Origin {
            scheme: Scheme::Http,
            host: Host::Name("mapped.test".into()),
            port: 80,
        }),
    };
    let r = run_with(b"GET /a HTTP/1.1\r\nHost: site.test:8443\r\n\r\nGET /b HTTP/1.1\r\nConnection: close\r\n\r\n", ok_text("x"), mode, 64, false, false, Limits::default());
    let urls: Vec<_> = r.seen.iter().map(|s| s.url.as_str()).collect();
    assert_eq!(urls, ["http://site.test:8443/a", "http://mapped.test/b"]);
}

#[test]
fn large_response_streams_with_bounded_writes() {
    // 64 MiB in 64 KiB pieces: the proxy never holds more than one piece plus chunk framing.
    const PIECE: usize = 64 * 1024;
    const PIECES: usize = 1024;
    let respond: Responder = Box::new(|_| {
        let body = stream::iter((0..PIECES).map(|_| Ok(Bytes::from(vec![7u8; PIECE]))));
        Ok(http::Response::builder()
            .status(200)
            .body(Body::from_stream(body, None))
            .unwrap())
    });
    let r = run(
        b"GET http://a.test/big HTTP/1.1\r\nConnection: close\r\n\r\n",
        respond,
    );
    let head_len = r.output.find("\r\n\r\n").unwrap() + 4;
    let expected_body = PIECES * (PIECE + "10000\r\n".len() + 2) + 5;
    assert_eq!(r.raw.len() - head_len, expected_body);
    assert!(
        r.max_write <= PIECE + 16,
        "largest single write {} bytes",
        r.max_write
    );
}

#[test]
fn error_page_for_head_has_no_body_and_keeps_the_connection() {
    let respond: Responder = Box::new(|seen| {
        if seen.method == "HEAD" {
            Err(TransportError::Blocked {
                url: seen.url.clone(),
                reason: "CORS".into(),
            })
        } else {
            Ok(http::Response::builder()
                .status(200)
                .body(Body::full("next"))
                .unwrap())
        }
    });
    let r = run(
        b"HEAD http://a.test/x HTTP/1.1\r\n\r\nGET http://a.test/y HTTP/1.1\r\nConnection: close\r\n\r\n",
        respond,
    );
    assert_eq!(r.seen.len(), 2);
    let (first, second) = r
        .output
        .split_at(r.output.find("HTTP/1.1 200").expect("second response"));
    assert!(first.starts_with("HTTP/1.1 502 Bad Gateway\r\n"), "{first}");
    assert!(
        first.ends_with("\r\n\r\n"),
        "no body after a HEAD response: {first:?}"
    );
    assert!(second.ends_with("\r\n\r\nnext"));
}

fn limited(max_request_body: u64) -> Limits {
    Limits {
        max_request_body: Some(max_request_body),
        ..Limits::default()
    }
}

/// The exact 413 the proxy answers for a request body over `limit`.
fn body_too_large_page(limit: u64) -> String {
    let body = format!(
        "c2w-net-proxy: the request body is larger than this proxy's limit of {limit} bytes\n"
    );
    format!(
        "HTTP/1.1 413 Payload Too Large\r\ncontent-type: text/plain; charset=utf-8\r\nx-c2w-proxy-error: body-too-large\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
}

#[test]
fn content_length_over_the_body_limit_gets_413_before_anything_is_sent() {
    // With Expect: 100-continue the guest is not invited to send the body either; the
    // pipelined request after it is never read (the connection closes).
    let input = b"PUT http://a.test/up HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 11\r\n\r\nhello worldGET http://a.test/next HTTP/1.1\r\n\r\n";
    let r = run_with(
        input,
        ok_text("should not be reached"),
        Entry::ForwardProxy,
        7,
        false,
        false,
        limited(10),
    );
    assert_eq!(r.output, body_too_large_page(10));
    assert!(r.seen.is_empty(), "nothing may reach the transport");
    assert_eq!(
        (
            r.stats.bodies_too_large,
            r.stats.bad_requests,
            r.stats.bytes_from_guest
        ),
        (1, 1, 0)
    );
}

#[test]
fn bodies_of_exactly_the_limit_pass() {
    let input = b"POST http://a.test/a HTTP/1.1\r\nContent-Length: 10\r\n\r\n0123456789POST http://a.test/b HTTP/1.1\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n4\r\n0123\r\n6\r\n456789\r\n0\r\n\r\n";
    let r = run_with(
        input,
        ok_text("ok"),
        Entry::ForwardProxy,
        3,
        false,
        false,
        limited(10),
    );
    assert_eq!(r.seen.len(), 2);
    assert_eq!(r.seen[0].body.as_deref().unwrap(), b"0123456789");
    assert_eq!(r.seen[1].body.as_deref().unwrap(), b"0123456789");
    assert_eq!(
        r.output,
        "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 2\r\n\r\nokHTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok"
    );
    assert_eq!(
        (r.stats.bodies_too_large, r.stats.bytes_from_guest),
        (0, 20)
    );
}

#[test]
fn chunked_body_crossing_the_limit_aborts_upstream_and_gets_413() {
    // 4 + 4 bytes pass, the third chunk crosses 10: the transport's body stream fails there
    // (whatever it answers is dropped), the guest gets 413 and the connection closes.
    let input = b"POST http://a.test/up HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n4\r\naaaa\r\n4\r\nbbbb\r\n4\r\ncccc\r\n0\r\n\r\nGET http://a.test/next HTTP/1.1\r\n\r\n";
    for piece in [1, 5, 4096] {
        let r = run_with(
            input,
            ok_text("upstream answered anyway"),
            Entry::ForwardProxy,
            piece,
            false,
            false,
            limited(10),
        );
        assert_eq!(r.output, body_too_large_page(10), "read pieces of {piece}");
        assert_eq!(r.seen.len(), 1, "the second request is never read");
        let err = r.seen[0].body.as_ref().unwrap_err();
        assert!(err.contains("limit of 10 bytes"), "{err}");
        assert_eq!(
            (
                r.stats.bodies_too_large,
                r.stats.bad_requests,
                r.stats.responses_ok
            ),
            (1, 1, 0)
        );
        // Never more than the limit is handed on (how much of "cccc" depends on the reads).
        let handed_on = r.stats.bytes_from_guest;
        assert!((8..=10).contains(&handed_on), "{handed_on}");
    }
}

#[test]
fn body_limit_applies_to_the_proxys_own_pages() {
    let r = run_with(
        b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n8\r\n01234567\r\n0\r\n\r\n",
        ok_text("never"),
        Entry::ForwardProxy,
        7,
        false,
        false,
        limited(5),
    );
    assert_eq!(r.output, body_too_large_page(5));
    assert_eq!(r.stats.bodies_too_large, 1);
}

/// A transport that answers at once and reads the request body only while the response body
/// is being streamed (an origin that replies before the upload ends).
struct EarlyAnswer;

#[async_trait(?Send)]
impl Transport for EarlyAnswer {
    async fn send(
        &self,
        request: http::Request<Body>,
    ) -> Result<http::Response<Body>, TransportError> {
        use futures::StreamExt;
        let upload = request.into_body();
        let body = stream::unfold(Some(upload), |upload| async move {
            let mut upload = upload?;
            match upload.next().await {
                Some(Ok(_)) => Some((Ok(Bytes::from_static(b"x")), Some(upload))),
                Some(Err(err)) => Some((Err(err), None)),
                None => None,
            }
        });
        Ok(http::Response::builder()
            .status(200)
            .body(Body::from_stream(body, None))
            .unwrap())
    }
}

#[test]
fn body_crossing_the_limit_after_the_response_started_closes_the_connection() {
    let proxy = Proxy::new(
        ProxyConfig {
            limits: limited(6),
            ..ProxyConfig::default()
        },
        Rc::new(EarlyAnswer),
        Rc::new(TestTimer { fire: false }),
    );
    let output = Rc::new(RefCell::new(Vec::new()));
    let guest = Guest {
        input: b"POST http://a.test/up HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n4\r\naaaa\r\n4\r\nbbbb\r\n0\r\n\r\nGET http://a.test/next HTTP/1.1\r\n\r\n".to_vec(),
        pos: 0,
        piece: 4096,
        stall_at_end: false,
        output: output.clone(),
        max_write: Rc::new(RefCell::new(0)),
    };
    let _ = block_on(proxy.serve(guest, Entry::ForwardProxy));
    let out = String::from_utf8_lossy(&output.borrow()).into_owned();
    // The head was out before the limit was crossed: it says close, and the chunked body is
    // cut short (no last chunk), so the guest sees a truncated response, never a success.
    assert_eq!(
        out,
        "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n1\r\nx\r\n"
    );
    let stats = proxy.stats();
    assert_eq!(
        (
            stats.bodies_too_large,
            stats.aborted_responses,
            stats.requests,
            stats.connections_open
        ),
        (1, 1, 1, 0)
    );
}

#[test]
fn too_large_heads_are_counted() {
    let mut huge = b"GET http://a.test/ HTTP/1.1\r\nX-Big: ".to_vec();
    huge.extend(std::iter::repeat_n(b'a', 2000));
    let r = run_with(
        &huge,
        ok_text("never"),
        Entry::ForwardProxy,
        7,
        false,
        false,
        Limits {
            max_head_bytes: 1024,
            ..Limits::default()
        },
    );
    assert!(r.output.starts_with("HTTP/1.1 431 "), "{}", r.output);
    assert!(r.output.contains("request head larger than 1024 bytes"));
    assert_eq!((r.stats.heads_too_large, r.stats.bad_requests), (1, 1));
}

/// A guest that goes away after `left` bytes of the response: later writes fail.
struct Vanishing {
    guest: Guest,
    left: usize,
}

impl AsyncRead for Vanishing {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.guest).poll_read(cx, buf)
    }
}

impl AsyncWrite for Vanishing {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.left == 0 {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        let n = buf.len().min(self.left);
        self.left -= n;
        Pin::new(&mut self.guest).poll_write(cx, &buf[..n])
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.guest).poll_flush(cx)
    }
    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.guest).poll_close(cx)
    }
}

#[test]
fn a_guest_vanishing_mid_response_counts_as_an_aborted_response() {
    let script = Rc::new(Script {
        seen: RefCell::new(Vec::new()),
        respond: ok_text("a body long enough to be cut short by the vanishing guest"),
    });
    let proxy = Proxy::new(
        ProxyConfig::default(),
        script,
        Rc::new(TestTimer { fire: false }),
    );
    let output = Rc::new(RefCell::new(Vec::new()));
    let guest = Vanishing {
        guest: Guest {
            input: b"GET http://a.test/ HTTP/1.1\r\n\r\n".to_vec(),
            pos: 0,
            piece: 4096,
            stall_at_end: true,
            output: output.clone(),
            max_write: Rc::new(RefCell::new(0)),
        },
        left: 90,
    };
    let _ = block_on(proxy.serve(guest, Entry::ForwardProxy));
    assert_eq!(output.borrow().len(), 90);
    let stats = proxy.stats();
    assert_eq!(
        (
            stats.requests,
            stats.aborted_responses,
            stats.connections_open
        ),
        (1, 1, 0)
    );
}
