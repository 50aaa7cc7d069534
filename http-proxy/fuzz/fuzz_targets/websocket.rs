//! The proxy's WebSocket path on one guest connection: an upgrade head (a valid one followed
//! by arbitrary frames, or arbitrary bytes where the head itself is checked) read in arbitrary
//! pieces, a server side that echoes or closes, timers that fire at once or never. The
//! session must end and be counted closed.
#![no_main]

use std::cell::Cell;
use std::collections::VecDeque;
use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};

use async_trait::async_trait;
use fetch_transport::relay::{Close, Dialed, MessageSocket, SocketError, WsMessage};
use futures::executor::block_on;
use futures::io::{AsyncRead, AsyncWrite};
use http_proxy::{Entry, Limits, Proxy, ProxyConfig, WebSocketError, WebSockets};
use http_proxy_fuzz::{Answering, FuzzTimer};
use libfuzzer_sys::fuzz_target;

/// A valid upgrade through the forward proxy.
const UPGRADE: &[u8] = b"GET http://echo.test/ HTTP/1.1\r\nHost: echo.test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: a, b\r\n\r\n";

/// The guest: reads come from `input` `piece` bytes at a time, then EOF; writes are counted.
struct Guest {
    input: Vec<u8>,
    pos: usize,
    piece: usize,
    written: Rc<Cell<usize>>,
}

impl AsyncRead for Guest {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
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
        self.written.set(self.written.get() + buf.len());
        Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_close(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// Echoes every message; after `budget` messages it closes with 4001.
struct Echo {
    queue: VecDeque<WsMessage>,
    budget: u8,
}

impl MessageSocket for Echo {
    fn poll_recv(&mut self, _cx: &mut Context<'_>) -> Poll<Result<Option<WsMessage>, SocketError>> {
        match self.queue.pop_front() {
            Some(message) => Poll::Ready(Ok(Some(message))),
            None if self.budget == 0 => Poll::Ready(Ok(None)),
            // The guest's next message wakes the bridge (it polls both sides every round).
            None => Poll::Pending,
        }
    }
    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), SocketError>> {
        Poll::Ready(Ok(()))
    }
    fn send(&mut self, message: WsMessage) -> Result<(), SocketError> {
        self.budget = self.budget.saturating_sub(1);
        self.queue.push_back(message);
        Ok(())
    }
    fn poll_flush(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), SocketError>> {
        Poll::Ready(Ok(()))
    }
    fn poll_close(&mut self, _cx: &mut Context<'_>, _close: &Close) -> Poll<Result<(), SocketError>> {
        Poll::Ready(Ok(()))
    }
    fn peer_close(&self) -> Option<Close> {
        Some(Close {
            code: 4001,
            reason: "bye".into(),
        })
    }
}

struct Sockets {
    refuse: bool,
    budget: u8,
}

#[async_trait(?Send)]
impl WebSockets for Sockets {
    async fn open(&self, url: &str, protocols: &[String]) -> Result<Dialed, WebSocketError> {
        if self.refuse {
            return Err(WebSocketError::Denied(url.into()));
        }
        Ok(Dialed {
            socket: Box::new(Echo {
                queue: VecDeque::new(),
                budget: self.budget,
            }),
            protocol: protocols.first().cloned(),
        })
    }
}

fuzz_target!(|data: &[u8]| {
    // [flags][piece][budget][guest bytes...]
    let [flags, piece, budget, input @ ..] = data else {
        return;
    };
    let mut bytes = Vec::new();
    if flags & 1 == 0 {
        bytes.extend_from_slice(UPGRADE);
    }
    bytes.extend_from_slice(input);
    let timer = Rc::new(FuzzTimer {
        fire: flags & 2 != 0,
    });
    let config = ProxyConfig {
        limits: Limits {
            max_websocket_message: 1024,
            ..Limits::default()
        },
        ..ProxyConfig::default()
    };
    let sockets = Sockets {
        refuse: flags & 4 != 0,
        budget: *budget,
    };
    let proxy = Proxy::new(config, Rc::new(Answering), timer).with_websockets(Rc::new(sockets));
    let entry = if flags & 8 != 0 {
        Entry::Http { fallback: None }
    } else {
        Entry::ForwardProxy
    };
    let written = Rc::new(Cell::new(0));
    let guest = Guest {
        input: bytes,
        pos: 0,
        piece: 1 + usize::from(*piece),
        written,
    };
    let _ = block_on(proxy.serve(guest, entry));
    let stats = proxy.stats();
    assert_eq!(stats.connections_open, 0, "connection still counted open");
    assert_eq!(stats.websockets_open, 0, "session still counted open");
});
