//! One guest connection speaking HTTP/1.1: read request heads, answer each request, repeat
//! while keep-alive allows. A CONNECT ends the loop: the connection is handed, unanswered, to
//! the layer that serves tunnels (`connect`).

use std::cell::RefCell;
use std::io;
use std::rc::Rc;

use futures::future;
use futures::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadHalf, WriteHalf};
use http::{Method, StatusCode};

use crate::error::ServeError;
use crate::error_page::ErrorPage;
use crate::head::{parse_request_head, RequestHead, Version};
use crate::io::{BoxedStream, Inbound, Outbound, Prefixed, SharedInbound};
use crate::refuse::refuse;
use crate::request;
use crate::respond::{write_page, Outcome};
use crate::route::Mode;
use crate::stats::Counters;
use crate::websocket;
use crate::Proxy;

/// How serving HTTP/1.1 on a connection ended.
pub(crate) enum Ended {
    /// The connection was closed (by the guest, after an error was answered, or when
    /// keep-alive ended).
    Closed,
    /// The guest sent a CONNECT: not answered yet, see [`PendingConnect`].
    Connect(PendingConnect),
    /// The guest asked for a WebSocket (and the proxy carries them): not answered yet.
    WebSocket(PendingConnect),
}

/// A request that ends the HTTP/1.1 loop without an answer.
enum Handoff {
    Connect(RequestHead),
    WebSocket(RequestHead),
}

/// A connection stopped at a CONNECT request (or a WebSocket upgrade), holding the request
/// and the connection with whatever the guest sent after it.
pub(crate) struct PendingConnect {
    /// The CONNECT request.
    pub head: RequestHead,
    inbound: SharedInbound<ReadHalf<BoxedStream>>,
    out: Outbound<WriteHalf<BoxedStream>>,
}

impl PendingConnect {
    /// Refuses the CONNECT with `page` (counted as a bad request) and closes the connection.
    pub async fn refuse(mut self, proxy: &Proxy, page: &ErrorPage) -> Result<(), ServeError> {
        let result = refuse(
            proxy,
            &mut self.out,
            page,
            &self.head.method,
            self.head.version,
        )
        .await;
        let _ = self.out.close().await;
        result.map(drop)
    }

    /// Accepts the CONNECT: answers 200 and returns the byte stream behind it (with what was
    /// read ahead), or None when it cannot be taken back whole.
    pub async fn accept(self) -> Result<Option<BoxedStream>, ServeError> {
        self.switch(b"HTTP/1.1 200 Connection established\r\n\r\n")
            .await
    }

    /// Answers with `response` (a 200 for CONNECT, a 101 for a WebSocket) and returns the
    /// byte stream behind it (with what was read ahead), or None when it cannot be taken back
    /// whole.
    pub async fn switch(mut self, response: &[u8]) -> Result<Option<BoxedStream>, ServeError> {
        if let Err(err) = self.out.write_all(response).await {
            let _ = self.out.close().await;
            return Err(err.into());
        }
        // Hand the same byte stream, with what was read ahead, to the tunnel.
        let Ok(inbound) = Rc::try_unwrap(self.inbound) else {
            let _ = self.out.close().await;
            return Ok(None);
        };
        let (reader, read_ahead) = inbound.into_inner().into_parts();
        let Ok(stream) = reader.reunite(self.out.into_inner()) else {
            return Ok(None);
        };
        Ok(Some(Box::new(Prefixed::new(read_ahead, stream))))
    }
}

/// Serves HTTP/1.1 on `stream` until the guest closes it, an error closes it, keep-alive
/// ends, or a CONNECT asks for more than HTTP.
pub(crate) async fn serve(
    proxy: &Proxy,
    stream: BoxedStream,
    mode: &Mode,
) -> Result<Ended, ServeError> {
    let limits = &proxy.config.limits;
    let (reader, writer) = stream.split();
    let inbound = Rc::new(RefCell::new(Inbound::new(
        reader,
        limits.max_body_piece,
        proxy.timer.clone(),
        limits.idle_timeout,
    )));
    let mut out = Outbound::new(writer, proxy.timer.clone(), limits.io_timeout);
    let result = serve_requests(proxy, &inbound, &mut out, mode).await;
    match result {
        Ok(Some(Handoff::Connect(head))) => {
            Ok(Ended::Connect(PendingConnect { head, inbound, out }))
        }
        Ok(Some(Handoff::WebSocket(head))) => {
            Ok(Ended::WebSocket(PendingConnect { head, inbound, out }))
        }
        Ok(None) => {
            let _ = out.close().await;
            Ok(Ended::Closed)
        }
        Err(err) => {
            let _ = out.close().await;
            Err(err)
        }
    }
}

/// Answers requests until the connection is to close (None) or a CONNECT or WebSocket
/// upgrade arrives.
async fn serve_requests<R, W>(
    proxy: &Proxy,
    inbound: &SharedInbound<R>,
    out: &mut Outbound<W>,
    mode: &Mode,
) -> Result<Option<Handoff>, ServeError>
where
    R: AsyncRead + Unpin + 'static,
    W: AsyncWrite + Unpin,
{
    loop {
        let head = match read_head(proxy, inbound).await {
            Ok(Some(head)) => head,
            Ok(None) => return Ok(None),
            Err(HeadRead::Rejected(page)) => {
                Counters::add(&proxy.counters.bad_requests, 1);
                if page.status == StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE {
                    Counters::add(&proxy.counters.heads_too_large, 1);
                }
                write_page(proxy, out, &page, &Method::GET, Version::Http11, false).await?;
                return Ok(None);
            }
            Err(HeadRead::Io(err)) if err.kind() == io::ErrorKind::TimedOut => return Ok(None),
            Err(HeadRead::Io(err)) => return Err(err.into()),
        };
        Counters::add(&proxy.counters.requests, 1);
        if head.method == Method::CONNECT {
            return Ok(Some(Handoff::Connect(head)));
        }
        if proxy.websockets.is_some() && websocket::is_upgrade(&head) {
            return Ok(Some(Handoff::WebSocket(head)));
        }
        match request::handle(proxy, inbound, out, mode, head).await? {
            Outcome::KeepAlive => continue,
            Outcome::Close => return Ok(None),
        }
    }
}

enum HeadRead {
    Rejected(ErrorPage),
    Io(io::Error),
}

async fn read_head<R: AsyncRead + Unpin>(
    proxy: &Proxy,
    inbound: &SharedInbound<R>,
) -> Result<Option<RequestHead>, HeadRead> {
    loop {
        let empty = match parse_buffered_head(proxy, &mut inbound.borrow_mut()) {
            HeadStep::Done(result) => return result,
            HeadStep::NeedMore { empty } => empty,
        };
        // Borrow only inside each poll: the RefCell is never held across the await.
        match future::poll_fn(|cx| inbound.borrow_mut().poll_fill(cx)).await {
            Ok(0) if empty => return Ok(None),
            Ok(0) => {
                let page = ErrorPage::new(
                    StatusCode::BAD_REQUEST,
                    "bad-request",
                    "connection closed inside the request head",
                );
                return Err(HeadRead::Rejected(page));
            }
            Ok(_) => {}
            Err(err) => return Err(HeadRead::Io(err)),
        }
    }
}

enum HeadStep {
    Done(Result<Option<RequestHead>, HeadRead>),
    NeedMore { empty: bool },
}

/// Parses a head from the bytes already buffered, or says more are needed (and sets the
/// read timeout: idle between requests, I/O inside one).
fn parse_buffered_head<R: AsyncRead + Unpin>(proxy: &Proxy, inbound: &mut Inbound<R>) -> HeadStep {
    let limits = &proxy.config.limits;
    // Tolerate the empty lines some clients send between requests (RFC 9112 §2.2).
    while inbound.buf.starts_with(b"\r\n") {
        let _ = inbound.buf.split_to(2);
    }
    if inbound.buf.starts_with(b"PRI * HTTP/2") {
        let page = ErrorPage::new(
            StatusCode::NOT_IMPLEMENTED,
            "unsupported",
            "HTTP/2 with prior knowledge is not supported; use HTTP/1.1",
        );
        return HeadStep::Done(Err(HeadRead::Rejected(page)));
    }
    if !inbound.buf.is_empty() {
        match parse_request_head(&inbound.buf, limits) {
            Ok(Some((head, len))) => {
                let _ = inbound.buf.split_to(len);
                return HeadStep::Done(Ok(Some(head)));
            }
            Ok(None) => {}
            Err(err) => {
                let page = ErrorPage::new(err.status(), "bad-request", err.to_string());
                return HeadStep::Done(Err(HeadRead::Rejected(page)));
            }
        }
    }
    let empty = inbound.buf.is_empty();
    inbound.set_timeout(if empty {
        limits.idle_timeout
    } else {
        limits.io_timeout
    });
    HeadStep::NeedMore { empty }
}
