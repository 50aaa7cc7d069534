//! The whole proxy on one guest connection: `Proxy::serve` reads arbitrary bytes (request heads,
//! bodies, CONNECT, ClientHellos inside tunnels, TLS on the TLS entry) in arbitrary pieces,
//! with a transport that answers every request and timers that fire at once or never.
#![no_main]

use std::cell::Cell;
use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};

use futures::executor::block_on;
use futures::io::{AsyncRead, AsyncWrite};
use http_proxy::target::{Host, Origin, Scheme};
use http_proxy::{Entry, Proxy, ProxyConfig};
use http_proxy_fuzz::{issuer, Answering, FuzzTimer};
use libfuzzer_sys::fuzz_target;

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

fuzz_target!(|data: &[u8]| {
    // [flags][piece][guest bytes...]
    let [flags, piece, input @ ..] = data else {
        return;
    };
    let fallback = (flags & 4 != 0).then(|| Origin {
        scheme: Scheme::Http,
        host: Host::parse("example.test").unwrap(),
        port: 80,
    });
    let entry = match flags & 3 {
        0 | 3 => Entry::ForwardProxy,
        1 => Entry::Http { fallback },
        _ => Entry::Tls { fallback },
    };
    let timer = Rc::new(FuzzTimer {
        fire: flags & 8 != 0,
    });
    let proxy = Proxy::new(ProxyConfig::default(), Rc::new(Answering), timer).with_issuer(issuer());
    let written = Rc::new(Cell::new(0));
    let guest = Guest {
        input: input.to_vec(),
        pos: 0,
        piece: 1 + usize::from(*piece),
        written: written.clone(),
    };
    let _ = block_on(proxy.serve(guest, entry));
    let stats = proxy.stats();
    assert_eq!(stats.connections_open, 0, "connection still counted open");
});
