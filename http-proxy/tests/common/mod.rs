//! What the integration tests share: an in-memory duplex byte pipe and a timer that never
//! fires.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use futures::future::{self, LocalBoxFuture};
use futures::io::{AsyncRead, AsyncWrite};
use http_proxy::Timer;

/// One direction of an in-memory byte pipe.
#[derive(Default)]
struct Half {
    bytes: VecDeque<u8>,
    closed: bool,
    reader: Option<Waker>,
}

/// One end of a duplex in-memory pipe.
pub struct End {
    incoming: Rc<RefCell<Half>>,
    outgoing: Rc<RefCell<Half>>,
}

/// The two ends of a fresh pipe.
pub fn pipe() -> (End, End) {
    let a = Rc::new(RefCell::new(Half::default()));
    let b = Rc::new(RefCell::new(Half::default()));
    (
        End {
            incoming: a.clone(),
            outgoing: b.clone(),
        },
        End {
            incoming: b,
            outgoing: a,
        },
    )
}

impl AsyncRead for End {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let mut half = self.incoming.borrow_mut();
        if half.bytes.is_empty() {
            if half.closed {
                return Poll::Ready(Ok(0));
            }
            half.reader = Some(cx.waker().clone());
            return Poll::Pending;
        }
        let n = buf.len().min(half.bytes.len());
        for (slot, byte) in buf.iter_mut().zip(half.bytes.drain(..n)) {
            *slot = byte;
        }
        Poll::Ready(Ok(n))
    }
}

impl AsyncWrite for End {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let mut half = self.outgoing.borrow_mut();
        if half.closed {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        half.bytes.extend(buf);
        if let Some(w) = half.reader.take() {
            w.wake();
        }
        Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_close(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut half = self.outgoing.borrow_mut();
        half.closed = true;
        if let Some(w) = half.reader.take() {
            w.wake();
        }
        Poll::Ready(Ok(()))
    }
}

impl Drop for End {
    fn drop(&mut self) {
        for half in [&self.outgoing, &self.incoming] {
            let mut half = half.borrow_mut();
            half.closed = true;
            if let Some(w) = half.reader.take() {
                w.wake();
            }
        }
    }
}

/// A timer whose sleeps never end.
pub struct NeverTimer;

impl Timer for NeverTimer {
    fn sleep(&self, _: Duration) -> LocalBoxFuture<'static, ()> {
        Box::pin(future::pending())
    }
}
