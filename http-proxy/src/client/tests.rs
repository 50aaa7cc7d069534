//! Byte-exact tests of the client over an in-memory stream and a timer the test fires.

#[cfg(target_arch = "wasm32")]
use wasm_bindgen_test::wasm_bindgen_test as test;

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::task::Waker;

use futures::future::LocalBoxFuture;

use super::*;

/// A server scripted by its bytes: reads hand out `input` `piece` bytes at a time, then EOF
/// (or nothing ever, with `stall`); everything written is kept.
struct Pipe {
    input: Vec<u8>,
    pos: usize,
    piece: usize,
    stall: bool,
    written: Rc<RefCell<Vec<u8>>>,
}

impl Pipe {
    fn new(input: &[u8]) -> Self {
        Self {
            input: input.to_vec(),
            pos: 0,
            piece: usize::MAX,
            stall: false,
            written: Rc::default(),
        }
    }

    fn piece(mut self, piece: usize) -> Self {
        self.piece = piece;
        self
    }

    fn stalling(mut self) -> Self {
        self.stall = true;
        self
    }

    fn written(&self) -> String {
        String::from_utf8(self.written.borrow().clone()).unwrap()
    }
}

impl AsyncRead for Pipe {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        if self.pos == self.input.len() {
            return if self.stall {
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

impl AsyncWrite for Pipe {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.written.borrow_mut().extend_from_slice(buf);
        Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_close(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// A writer that never takes a byte.
struct Deaf;

impl AsyncRead for Deaf {
    fn poll_read(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        _buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        Poll::Pending
    }
}

impl AsyncWrite for Deaf {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        _buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Poll::Pending
    }
    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_close(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// Sleeps that end only when the test calls `fire`.
#[derive(Default)]
struct ManualTimer {
    fired: Rc<Cell<bool>>,
    armed: Rc<Cell<usize>>,
    wakers: Rc<RefCell<Vec<Waker>>>,
}

impl ManualTimer {
    fn fire(&self) {
        self.fired.set(true);
        for waker in self.wakers.borrow_mut().drain(..) {
            waker.wake();
        }
    }
}

impl Timer for ManualTimer {
    fn sleep(&self, _duration: Duration) -> LocalBoxFuture<'static, ()> {
        self.armed.set(self.armed.get() + 1);
        let fired = self.fired.clone();
        let wakers = self.wakers.clone();
        Box::pin(futures::future::poll_fn(move |cx| {
            if fired.get() {
                Poll::Ready(())
            } else {
                wakers.borrow_mut().push(cx.waker().clone());
                Poll::Pending
            }
        }))
    }
}

fn new_client() -> (Client, Rc<ManualTimer>) {
    let timer = Rc::new(ManualTimer::default());
    (Client::new(ClientConfig::default(), timer.clone()), timer)
}

fn poll_once<F: Future + Unpin>(future: &mut F) -> Poll<F::Output> {
    let waker = futures::task::noop_waker();
    Pin::new(future).poll(&mut Context::from_waker(&waker))
}

fn get(uri: &str) -> Request<Body> {
    Request::get(uri).body(Body::empty()).unwrap()
}

/// Sends `request` to a server answering `answer` (read `piece` bytes at a time) and returns
/// what was written, the response head and the body (or the first error).
fn exchange(
    request: Request<Body>,
    answer: &[u8],
    piece: usize,
) -> Result<(String, Response<ResponseBody<Pipe>>), ClientError> {
    let (client, _timer) = new_client();
    let pipe = Pipe::new(answer).piece(piece);
    let written = pipe.written.clone();
    let response = futures::executor::block_on(client.send(pipe, request))?;
    let written = String::from_utf8(written.borrow().clone()).unwrap();
    Ok((written, response))
}

/// Reads the whole body: its bytes, or the first error.
fn read_all(body: &mut ResponseBody<Pipe>) -> Result<Vec<u8>, ClientError> {
    futures::executor::block_on(async {
        let mut out = Vec::new();
        while let Some(piece) = body.next().await {
            let piece = piece?;
            assert!(!piece.is_empty() && piece.len() <= MAX_BODY_PIECE);
            out.extend_from_slice(&piece);
        }
        Ok(out)
    })
}

#[test]
fn the_request_head_keeps_end_to_end_fields_and_frames_the_body_itself() {
    let mut headers = HeaderMap::new();
    headers.insert("Host", "site.test:8080".parse().unwrap());
    headers.insert("Connection", "keep-alive".parse().unwrap());
    headers.insert("Proxy-Authorization", "Basic x".parse().unwrap());
    headers.insert("Transfer-Encoding", "chunked".parse().unwrap());
    headers.insert("Accept", "*/*".parse().unwrap());
    let head = request_head(
        &Method::POST,
        "/p?q=1",
        b"site.test:8080",
        &headers,
        Some(5),
        false,
    );
    assert_eq!(
        String::from_utf8(head).unwrap(),
        "POST /p?q=1 HTTP/1.1\r\nHost: site.test:8080\r\naccept: */*\r\n\
         Content-Length: 5\r\n\r\n"
    );
    let head = request_head(
        &Method::GET,
        "/",
        b"a.test",
        &HeaderMap::new(),
        Some(0),
        false,
    );
    assert_eq!(
        String::from_utf8(head).unwrap(),
        "GET / HTTP/1.1\r\nHost: a.test\r\n\r\n"
    );
    let head = request_head(
        &Method::POST,
        "/",
        b"a.test",
        &HeaderMap::new(),
        Some(0),
        true,
    );
    assert_eq!(
        String::from_utf8(head).unwrap(),
        "POST / HTTP/1.1\r\nHost: a.test\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
}

#[test]
fn a_get_is_written_exactly_and_its_length_delimited_answer_read() {
    let request = Request::get("http://a.test:8080/p?q=1")
        .header("Accept", "*/*")
        .header("X-Two", "1")
        .header("X-Two", "2")
        .body(Body::empty())
        .unwrap();
    let (written, response) = exchange(
        request,
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A: b\r\n\r\nhello",
        3,
    )
    .unwrap();
    assert_eq!(
        written,
        "GET /p?q=1 HTTP/1.1\r\nHost: a.test:8080\r\naccept: */*\r\nx-two: 1\r\nx-two: 2\r\n\r\n"
    );
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.version(), Version::HTTP_11);
    assert_eq!(response.headers()["x-a"], "b");
    let mut body = response.into_body();
    assert_eq!(body.len(), Some(5));
    assert_eq!(read_all(&mut body).unwrap(), b"hello");
    assert!(body.is_complete());
    assert!(body.into_reusable().is_some());
}

#[test]
fn the_host_header_wins_over_the_uri_and_a_request_without_either_is_refused() {
    let request = Request::get("/only/path")
        .header("Host", "named.test")
        .body(Body::empty())
        .unwrap();
    let (written, _) = exchange(request, b"HTTP/1.1 204 No Content\r\n\r\n", 64).unwrap();
    assert_eq!(
        written,
        "GET /only/path HTTP/1.1\r\nHost: named.test\r\n\r\n"
    );
    assert!(matches!(
        exchange(get("/only/path"), b"", 64),
        Err(ClientError::NoHost)
    ));
}

#[test]
fn a_short_body_of_unknown_length_is_read_first_and_sent_with_its_length() {
    let pieces = vec![
        Ok(Bytes::from_static(b"ab")),
        Ok(Bytes::new()),
        Ok(Bytes::from(vec![b'x'; 17])),
    ];
    let request = Request::post("http://h/up")
        .body(Body::from_stream(futures::stream::iter(pieces), None))
        .unwrap();
    let (written, response) =
        exchange(request, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", 64).unwrap();
    assert_eq!(
        written,
        format!(
            "POST /up HTTP/1.1\r\nHost: h\r\nContent-Length: 19\r\n\r\nab{}",
            "x".repeat(17)
        )
    );
    assert!(response.into_body().into_reusable().is_some());
}

#[test]
fn a_long_body_of_unknown_length_is_uploaded_chunked() {
    let big = vec![b'y'; LENGTH_PROBE_BYTES];
    let pieces = vec![
        Ok(Bytes::from_static(b"ab")),
        Ok(Bytes::from(big.clone())),
        Ok(Bytes::from_static(b"z")),
    ];
    let request = Request::post("http://h/up")
        .body(Body::from_stream(futures::stream::iter(pieces), None))
        .unwrap();
    let (written, _) =
        exchange(request, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", 64).unwrap();
    assert_eq!(
        written,
        format!(
            "POST /up HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n\
             2\r\nab\r\n{:x}\r\n{}\r\n1\r\nz\r\n0\r\n\r\n",
            big.len(),
            "y".repeat(big.len())
        )
    );
}

#[test]
fn a_body_that_pauses_goes_chunked_once_the_probe_waited() {
    let (client, timer) = new_client();
    let (tx, rx) = futures::channel::mpsc::unbounded::<Result<Bytes, BodyError>>();
    tx.unbounded_send(Ok(Bytes::from_static(b"first"))).unwrap();
    let request = Request::post("http://h/up")
        .body(Body::from_stream(rx, None))
        .unwrap();
    let pipe = Pipe::new(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n").piece(64);
    let written = pipe.written.clone();
    let mut send = Box::pin(client.send(pipe, request));
    assert!(poll_once(&mut send).is_pending());
    assert!(written.borrow().is_empty(), "nothing before the probe ends");
    timer.fire();
    assert!(poll_once(&mut send).is_pending(), "the body has not ended");
    assert_eq!(
        String::from_utf8(written.borrow().clone()).unwrap(),
        "POST /up HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nfirst\r\n"
    );
    tx.unbounded_send(Ok(Bytes::from_static(b"then"))).unwrap();
    drop(tx);
    assert!(poll_once(&mut send).is_ready());
    assert!(String::from_utf8(written.borrow().clone())
        .unwrap()
        .ends_with("5\r\nfirst\r\n4\r\nthen\r\n0\r\n\r\n"));
}

#[test]
fn a_body_of_known_length_is_uploaded_as_is_and_must_match_it() {
    let pieces = vec![
        Ok(Bytes::from_static(b"abc")),
        Ok(Bytes::from_static(b"de")),
    ];
    let request = Request::put("http://h/")
        .body(Body::from_stream(futures::stream::iter(pieces), Some(5)))
        .unwrap();
    let (written, _) = exchange(request, b"HTTP/1.1 200 OK\r\n\r\n", 64).unwrap();
    assert_eq!(
        written,
        "PUT / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nabcde"
    );
    for (declared, pieces) in [(4, vec!["abc", "de"]), (9, vec!["abc"])] {
        let pieces: Vec<Result<Bytes, BodyError>> = pieces
            .into_iter()
            .map(|p| Ok(Bytes::from_static(p.as_bytes())))
            .collect();
        let request = Request::put("http://h/")
            .body(Body::from_stream(
                futures::stream::iter(pieces),
                Some(declared),
            ))
            .unwrap();
        assert!(matches!(
            exchange(request, b"HTTP/1.1 200 OK\r\n\r\n", 64),
            Err(ClientError::RequestBodyLength { declared: d, .. }) if d == declared
        ));
    }
    let pieces = vec![Ok(Bytes::from_static(b"ab")), Err(BodyError::new("gone"))];
    let request = Request::post("http://h/")
        .body(Body::from_stream(futures::stream::iter(pieces), None))
        .unwrap();
    assert!(matches!(
        exchange(request, b"", 64),
        Err(ClientError::RequestBody(e)) if e.reason == "gone"
    ));
}

#[test]
fn informational_responses_are_skipped_and_101_refused() {
    let answer = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n\
                   HTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok";
    for piece in [1, 5, 1000] {
        let (_, response) = exchange(get("http://h/"), answer, piece).unwrap();
        assert_eq!(response.status(), StatusCode::CREATED);
        assert!(response.headers().get("link").is_none());
        assert_eq!(read_all(&mut response.into_body()).unwrap(), b"ok");
    }
    assert!(matches!(
        exchange(
            get("http://h/"),
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\n\r\n",
            64
        ),
        Err(ClientError::UnexpectedUpgrade)
    ));
}

#[test]
fn a_chunked_answer_is_decoded_in_any_split_and_offers_the_stream_back() {
    let answer = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\
                   5;x=y\r\nhello\r\n6\r\n world\r\n0\r\nTrailer: t\r\n\r\n";
    for piece in [1, 2, 7, 1000] {
        let (_, response) = exchange(get("http://h/"), answer, piece).unwrap();
        let mut body = response.into_body();
        assert_eq!(body.len(), None);
        assert!(!body.is_complete());
        assert_eq!(read_all(&mut body).unwrap(), b"hello world");
        assert!(body.into_reusable().is_some(), "piece {piece}");
    }
}

#[test]
fn a_close_delimited_answer_runs_to_the_end_and_is_never_reused() {
    let answer = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\neverything until EOF";
    let (_, response) = exchange(get("http://h/"), answer, 4).unwrap();
    let mut body = response.into_body();
    assert!(!body.allows_reuse());
    assert_eq!(read_all(&mut body).unwrap(), b"everything until EOF");
    assert!(body.is_complete());
    assert!(body.into_reusable().is_none());
    // Pieces stay within the limit here too.
    let (client, _timer) = (
        Client::new(
            ClientConfig {
                max_body_piece: 3,
                ..ClientConfig::default()
            },
            Rc::new(ManualTimer::default()),
        ),
        (),
    );
    let response =
        futures::executor::block_on(client.send(Pipe::new(answer), get("http://h/"))).unwrap();
    let pieces: Vec<Bytes> = futures::executor::block_on(response.into_body().collect::<Vec<_>>())
        .into_iter()
        .collect::<Result<_, _>>()
        .unwrap();
    assert!(pieces.iter().all(|p| p.len() <= 3));
    assert_eq!(pieces.concat(), b"everything until EOF");
    // A coding other than a final chunked is delimited by the close too.
    let answer = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nzz";
    let (_, response) = exchange(get("http://h/"), answer, 64).unwrap();
    assert_eq!(read_all(&mut response.into_body()).unwrap(), b"zz");
}

#[test]
fn a_server_that_closes_early_is_an_error_at_each_stage() {
    assert!(matches!(
        exchange(get("http://h/"), b"", 64),
        Err(ClientError::ClosedBeforeResponse)
    ));
    assert!(matches!(
        exchange(get("http://h/"), b"HTTP/1.1 200 OK\r\nContent-Le", 64),
        Err(ClientError::ClosedMidHead)
    ));
    assert!(matches!(
        exchange(get("http://h/"), b"HTTP/1.1 100 Continue\r\n\r\n", 64),
        Err(ClientError::ClosedMidHead)
    ));
    for answer in [
        &b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort"[..],
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel",
    ] {
        let (_, response) = exchange(get("http://h/"), answer, 64).unwrap();
        let mut body = response.into_body();
        assert!(matches!(
            read_all(&mut body),
            Err(ClientError::ClosedMidBody)
        ));
        // The error ends the body.
        assert!(futures::executor::block_on(body.next()).is_none());
        assert!(!body.is_complete());
        assert!(body.into_reusable().is_none());
    }
}

#[test]
fn malformed_heads_and_bodies_are_refused() {
    for (answer, check) in [
        (
            &b"HELLO\r\n\r\n"[..],
            (|e| matches!(e, ClientError::Malformed(_))) as fn(&ClientError) -> bool,
        ),
        (b"HTTP/1.1 abc OK\r\n\r\n", |e| {
            matches!(e, ClientError::Malformed(_))
        }),
        (b"HTTP/1.1 200 OK\r\nBad Name: x\r\n\r\n", |e| {
            matches!(e, ClientError::Malformed(_))
        }),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 1, 2\r\n\r\n", |e| {
            matches!(e, ClientError::ContentLength)
        }),
        (b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n", |e| {
            matches!(e, ClientError::ContentLength)
        }),
        (
            b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n",
            |e| matches!(e, ClientError::ContentLength),
        ),
    ] {
        match exchange(get("http://h/"), answer, 64) {
            Err(err) => assert!(check(&err), "{answer:?}: {err}"),
            Ok(_) => panic!("{answer:?} was taken"),
        }
    }
    let answer = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n";
    let (_, response) = exchange(get("http://h/"), answer, 64).unwrap();
    assert!(matches!(
        read_all(&mut response.into_body()),
        Err(ClientError::Body(DecodeError::InvalidChunkSize))
    ));
}

#[test]
fn heads_over_the_limits_are_refused_without_waiting_for_their_end() {
    let timer: Rc<dyn Timer> = Rc::new(ManualTimer::default());
    let config = ClientConfig {
        max_head_bytes: 64,
        max_headers: 2,
        ..ClientConfig::default()
    };
    let client = Client::new(config, timer);
    let send = |answer: &[u8]| {
        // Stalls after its bytes: only the limit can end the wait.
        let pipe = Pipe::new(answer).piece(7).stalling();
        let mut sending = Box::pin(client.send(pipe, get("http://h/")));
        match poll_once(&mut sending) {
            Poll::Ready(result) => result.map(|_| ()),
            Poll::Pending => panic!("still waiting"),
        }
    };
    let long = format!("HTTP/1.1 200 OK\r\nX: {}", "a".repeat(100));
    assert!(matches!(
        send(long.as_bytes()),
        Err(ClientError::HeadTooLarge(64))
    ));
    let long = format!("HTTP/1.1 200 OK\r\nX: {}\r\n\r\n", "a".repeat(50));
    assert!(matches!(
        send(long.as_bytes()),
        Err(ClientError::HeadTooLarge(64))
    ));
    // 1xx heads count towards the limit.
    let many = "HTTP/1.1 100 Continue\r\n\r\n".repeat(3);
    assert!(matches!(
        send(many.as_bytes()),
        Err(ClientError::HeadTooLarge(64))
    ));
    assert!(matches!(
        send(b"HTTP/1.1 200 OK\r\nA: 1\r\nB: 2\r\nC: 3\r\n\r\n"),
        Err(ClientError::TooManyHeaders(2))
    ));
    assert!(send(b"HTTP/1.1 200 OK\r\nA: 1\r\nB: 2\r\n\r\n").is_ok());
}

#[test]
fn a_silent_server_fails_after_the_idle_timeout() {
    // Silent before the head.
    let (client, timer) = new_client();
    let mut sending = Box::pin(client.send(Pipe::new(b"").stalling(), get("http://h/")));
    assert!(poll_once(&mut sending).is_pending());
    assert!(poll_once(&mut sending).is_pending());
    timer.fire();
    assert!(matches!(
        poll_once(&mut sending),
        Poll::Ready(Err(ClientError::TimedOut(IDLE_TIMEOUT)))
    ));

    // Silent mid-body: every byte restarts the wait.
    let (client, timer) = new_client();
    let pipe = Pipe::new(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhe").stalling();
    let response = futures::executor::block_on(client.send(pipe, get("http://h/"))).unwrap();
    let mut body = response.into_body();
    let armed = timer.armed.get();
    assert!(matches!(poll_once(&mut body.next()), Poll::Ready(Some(Ok(b))) if b == "he"));
    assert!(poll_once(&mut body.next()).is_pending());
    assert_eq!(timer.armed.get(), armed + 1, "the wait is timed");
    assert!(poll_once(&mut body.next()).is_pending());
    assert_eq!(timer.armed.get(), armed + 1, "one deadline per wait");
    timer.fire();
    assert!(matches!(
        poll_once(&mut body.next()),
        Poll::Ready(Some(Err(ClientError::TimedOut(IDLE_TIMEOUT))))
    ));
    assert!(body.into_reusable().is_none());

    // A server that takes none of the request.
    let (client, timer) = new_client();
    let mut sending = Box::pin(client.send(Deaf, get("http://h/")));
    assert!(poll_once(&mut sending).is_pending());
    timer.fire();
    assert!(matches!(
        poll_once(&mut sending),
        Poll::Ready(Err(ClientError::NotReading(IDLE_TIMEOUT)))
    ));
}

#[test]
fn the_stream_is_offered_back_only_when_both_sides_allow_it() {
    let reused = |request: Request<Body>, answer: &[u8]| {
        let (_, response) = exchange(request, answer, 64).unwrap();
        let mut body = response.into_body();
        read_all(&mut body).unwrap();
        body.into_reusable().is_some()
    };
    let ok = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
    assert!(reused(get("http://h/"), ok));
    assert!(!reused(
        get("http://h/"),
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: Keep-Alive, close\r\n\r\nok"
    ));
    let closing = Request::get("http://h/")
        .header("Connection", "close")
        .body(Body::empty())
        .unwrap();
    let (written, _) = exchange(closing, ok, 64).unwrap();
    assert_eq!(
        written,
        "GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n"
    );
    let closing = Request::get("http://h/")
        .header("Connection", "close")
        .body(Body::empty())
        .unwrap();
    assert!(!reused(closing, ok));
    assert!(!reused(
        get("http://h/"),
        b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok"
    ));
    assert!(reused(
        get("http://h/"),
        b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\nConnection: keep-alive\r\n\r\nok"
    ));
    // Ambiguous framing.
    assert!(!reused(
        get("http://h/"),
        b"HTTP/1.1 200 OK\r\nContent-Length: 7\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n"
    ));
    // Bytes beyond the response.
    assert!(!reused(
        get("http://h/"),
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokEXTRA"
    ));
    // A body not read to its end.
    let (_, response) = exchange(get("http://h/"), ok, 64).unwrap();
    assert!(response.into_body().into_reusable().is_none());
    // No body at all: reusable at once, whatever Content-Length says.
    let head = Request::head("http://h/").body(Body::empty()).unwrap();
    let (_, response) =
        exchange(head, b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n", 64).unwrap();
    let body = response.into_body();
    assert!(body.is_complete() && body.is_empty());
    assert!(body.into_reusable().is_some());
}

#[test]
fn a_reused_stream_carries_the_next_exchange() {
    let (client, _timer) = new_client();
    let answers = b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\na";
    let pipe = Pipe::new(answers);
    let response = futures::executor::block_on(client.send(pipe, get("http://h/1"))).unwrap();
    let mut body = response.into_body();
    assert_eq!(read_all(&mut body).unwrap(), b"a");
    let mut pipe = body.into_reusable().unwrap();
    pipe.input
        .extend_from_slice(b"HTTP/1.1 404 Not Found\r\nContent-Length: 1\r\n\r\nb");
    let response = futures::executor::block_on(client.send(pipe, get("http://h/2"))).unwrap();
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    let mut body = response.into_body();
    assert_eq!(read_all(&mut body).unwrap(), b"b");
    let pipe = body.into_reusable().unwrap();
    assert_eq!(
        pipe.written(),
        "GET /1 HTTP/1.1\r\nHost: h\r\n\r\nGET /2 HTTP/1.1\r\nHost: h\r\n\r\n"
    );
}

#[test]
fn response_framing_follows_rfc_9112() {
    let head = |status: u16, pairs: &[(&str, &str)]| {
        let mut headers = HeaderMap::new();
        for (k, v) in pairs {
            headers.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        ResponseHead {
            version: Version::HTTP_11,
            status: StatusCode::from_u16(status).unwrap(),
            headers,
            len: 0,
        }
    };
    let get = Method::GET;
    let framing = |method: &Method, status, pairs: &[(&str, &str)]| {
        response_framing(method, &head(status, pairs))
    };
    assert_eq!(
        framing(&Method::HEAD, 200, &[("content-length", "9")]).unwrap(),
        BodyFraming::Empty
    );
    assert_eq!(framing(&get, 304, &[]).unwrap(), BodyFraming::Empty);
    assert_eq!(
        framing(&get, 204, &[("content-length", "3")]).unwrap(),
        BodyFraming::Empty
    );
    assert_eq!(
        framing(&get, 200, &[("transfer-encoding", "gzip, chunked")]).unwrap(),
        BodyFraming::Chunked
    );
    assert_eq!(
        framing(
            &get,
            200,
            &[
                ("transfer-encoding", "gzip"),
                ("transfer-encoding", "Chunked")
            ]
        )
        .unwrap(),
        BodyFraming::Chunked
    );
    assert_eq!(
        framing(&get, 200, &[("transfer-encoding", "chunked, gzip")]).unwrap(),
        BodyFraming::UntilClose
    );
    assert_eq!(
        framing(&get, 200, &[("content-length", "12")]).unwrap(),
        BodyFraming::Length(12)
    );
    assert_eq!(
        framing(&get, 200, &[("content-length", "12, 12")]).unwrap(),
        BodyFraming::Length(12)
    );
    assert_eq!(
        framing(&get, 200, &[("content-length", "0")]).unwrap(),
        BodyFraming::Empty
    );
    assert_eq!(framing(&get, 200, &[]).unwrap(), BodyFraming::UntilClose);
    assert!(matches!(
        framing(&get, 200, &[("content-length", "x")]),
        Err(ClientError::ContentLength)
    ));
}

#[test]
fn heads_parse_or_wait_for_more() {
    assert!(parse_response_head(b"HTTP/1.1 200 OK\r\nContent-Le", 8)
        .unwrap()
        .is_none());
    let head = parse_response_head(b"HTTP/1.0 404 Not Found\r\nX-A: b\r\n\r\nbody", 8)
        .unwrap()
        .unwrap();
    assert_eq!(head.status, StatusCode::NOT_FOUND);
    assert_eq!(head.version, Version::HTTP_10);
    assert_eq!(head.headers["x-a"], "b");
    assert_eq!(head.len, 34);
    assert!(parse_response_head(b"HTTP/1.1 abc\r\n\r\n", 8).is_err());
    assert_eq!(head_end(b"HTTP/1.1 200 OK\n\nrest", 0), Some(17));
    assert_eq!(head_end(b"HTTP/1.1 200 OK\r\n\r\nrest", 0), Some(19));
    assert_eq!(head_end(b"HTTP/1.1 200 OK\r\n\r", 0), None);
    // Resuming a scan finds an end that straddles the previous buffer's end.
    assert_eq!(head_end(b"HTTP/1.1 200 OK\r\n\r\n", 16), Some(19));
    assert_eq!(head_end(b"HTTP/1.1 200 OK\r\n\r\n", 17), None);
}

#[test]
fn an_idle_stream_is_open_until_it_reads_eof_or_bytes() {
    assert!(is_idle_open(&mut Pipe::new(b"").stalling()));
    assert!(!is_idle_open(&mut Pipe::new(b"")));
    assert!(!is_idle_open(&mut Pipe::new(b"x").stalling()));
}
