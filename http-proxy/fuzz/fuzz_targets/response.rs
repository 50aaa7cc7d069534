//! The HTTP/1.1 client's response side: `parse_response_head`, `response_framing` and
//! `keeps_alive` on the raw bytes, then a whole `Client::send` (GET or HEAD) against a server
//! that answers those bytes split at arbitrary points, whole, and byte by byte, reading the
//! body to its end: the three outcomes must be equal, body pieces within the limit, a
//! Content-Length body exactly its length, and the stream offered back only when the head
//! allowed reuse and the body completed (always then, when nothing beyond it was read).
#![no_main]

use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};

use fetch_transport::Body;
use futures::io::{AsyncRead, AsyncWrite};
use futures::StreamExt;
use http::Method;
use http_proxy::client::{
    keeps_alive, parse_response_head, response_framing, BodyFraming, Client, ClientConfig,
};
use http_proxy_fuzz::FuzzTimer;
use libfuzzer_sys::fuzz_target;

/// A server that answers with `pieces`, one per read, then EOF; what it is sent is dropped.
struct Server<'a> {
    pieces: Vec<&'a [u8]>,
    next: usize,
    offset: usize,
}

impl AsyncRead for Server<'_> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let Some(piece) = self.pieces.get(self.next).copied() else {
            return Poll::Ready(Ok(0));
        };
        let n = buf.len().min(piece.len() - self.offset);
        buf[..n].copy_from_slice(&piece[self.offset..self.offset + n]);
        self.offset += n;
        if self.offset == piece.len() {
            self.next += 1;
            self.offset = 0;
        }
        Poll::Ready(Ok(n))
    }
}

impl AsyncWrite for Server<'_> {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_close(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// What one exchange produced.
#[derive(Debug, PartialEq, Eq)]
struct Outcome {
    status: Option<u16>,
    fields: usize,
    body: Vec<u8>,
    error: Option<String>,
    /// The head allowed reuse and the body completed (whether the stream was then offered
    /// back also depends on whether bytes beyond the body had arrived yet).
    reusable: bool,
}

/// One exchange over `pieces`; `bytewise` says they are single bytes, so nothing beyond the
/// body can have been read when it completes.
fn exchange(config: &ClientConfig, method: &Method, pieces: Vec<&[u8]>, bytewise: bool) -> Outcome {
    let client = Client::new(config.clone(), Rc::new(FuzzTimer { fire: false }));
    let server = Server {
        pieces: pieces.into_iter().filter(|p| !p.is_empty()).collect(),
        next: 0,
        offset: 0,
    };
    let request = http::Request::builder()
        .method(method.clone())
        .uri("http://fuzz.test/")
        .body(Body::empty())
        .expect("request");
    futures::executor::block_on(async {
        let response = match client.send(server, request).await {
            Ok(response) => response,
            Err(err) => {
                return Outcome {
                    status: None,
                    fields: 0,
                    body: Vec::new(),
                    error: Some(err.to_string()),
                    reusable: false,
                }
            }
        };
        let status = Some(response.status().as_u16());
        let fields = response.headers().len();
        let mut body = response.into_body();
        let len = body.len();
        let allows = body.allows_reuse();
        let mut bytes = Vec::new();
        let mut error = None;
        while let Some(piece) = body.next().await {
            match piece {
                Ok(piece) => {
                    assert!(
                        !piece.is_empty() && piece.len() <= config.max_body_piece,
                        "bad piece size"
                    );
                    bytes.extend_from_slice(&piece);
                }
                Err(err) => {
                    error = Some(err.to_string());
                    break;
                }
            }
        }
        if let (Some(len), None) = (len, &error) {
            assert_eq!(
                bytes.len() as u64,
                len,
                "a Content-Length body of another length"
            );
        }
        let complete = body.is_complete();
        assert_eq!(complete, error.is_none(), "complete exactly when no error");
        let reused = body.into_reusable().is_some();
        assert!(
            !reused || (allows && complete),
            "reuse offered though not allowed"
        );
        if bytewise {
            assert_eq!(reused, allows && complete, "reuse allowed and not offered");
        }
        Outcome {
            status,
            fields,
            body: bytes,
            error,
            reusable: allows && complete,
        }
    })
}

fuzz_target!(|data: &[u8]| {
    // [flags][max_headers][max_piece][n splits][splits: n bytes][answer...]
    if data.len() < 4 {
        return;
    }
    let method = if data[0] & 1 == 1 {
        Method::HEAD
    } else {
        Method::GET
    };
    let config = ClientConfig {
        max_head_bytes: if data[0] & 2 == 2 { 256 } else { 64 * 1024 },
        max_headers: usize::from(data[1] % 32),
        max_line_bytes: 1 + usize::from(data[0] >> 2),
        max_body_piece: 1 + usize::from(data[2]),
        ..ClientConfig::default()
    };
    let n = usize::from(data[3] % 16).min(data.len() - 4);
    let splits = &data[4..4 + n];
    let answer = &data[4 + n..];

    if let Ok(Some(head)) = parse_response_head(answer, config.max_headers) {
        assert!(head.len <= answer.len() && head.headers.len() <= config.max_headers);
        if let Ok(framing) = response_framing(&method, &head) {
            if keeps_alive(&head, framing) {
                assert_ne!(framing, BodyFraming::UntilClose);
            }
        }
    }

    let mut pieces = Vec::new();
    let mut rest = answer;
    for &s in splits.iter().cycle().take(if n == 0 { 0 } else { 4096 }) {
        if rest.is_empty() {
            break;
        }
        let k = (usize::from(s) + 1).min(rest.len());
        pieces.push(&rest[..k]);
        rest = &rest[k..];
    }
    if !rest.is_empty() {
        pieces.push(rest);
    }
    let split = exchange(&config, &method, pieces, false);
    let whole = exchange(&config, &method, vec![answer], false);
    let bytewise = exchange(&config, &method, answer.chunks(1).collect(), true);
    assert_eq!(split, whole, "outcome depends on the split");
    assert_eq!(
        bytewise, whole,
        "outcome depends on the split (byte by byte)"
    );
});
