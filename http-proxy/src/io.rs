//! The connection's I/O halves with bounded buffers and deadlines, so that a guest that
//! stalls cannot hold a connection open forever.

use std::cell::RefCell;
use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::BytesMut;
use futures::future::{self, Either, LocalBoxFuture};
use futures::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use futures::FutureExt;

use crate::timer::Timer;

thread_local! {
    /// Where [`Inbound::poll_fill`] reads before keeping what arrived (connections of one
    /// thread take turns: a read never waits while holding it).
    static SCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// The read half with its buffer. Bytes read ahead (pipelined requests) stay here.
pub(crate) struct Inbound<R> {
    reader: R,
    /// Bytes received and not yet consumed.
    pub buf: BytesMut,
    read_size: usize,
    timer: Rc<dyn Timer>,
    timeout: Duration,
    deadline: Option<LocalBoxFuture<'static, ()>>,
}

impl<R: AsyncRead + Unpin> Inbound<R> {
    pub fn new(reader: R, read_size: usize, timer: Rc<dyn Timer>, timeout: Duration) -> Self {
        Self {
            reader,
            buf: BytesMut::new(),
            read_size,
            timer,
            timeout,
            deadline: None,
        }
    }

    /// Sets how long the next reads may wait for bytes.
    pub fn set_timeout(&mut self, timeout: Duration) {
        if timeout != self.timeout {
            self.timeout = timeout;
            self.deadline = None;
        }
    }

    /// Reads more bytes into the buffer. `Ok(0)` is EOF; a stall longer than the timeout is
    /// `ErrorKind::TimedOut`.
    ///
    /// Reads go through one scratch buffer per thread and only what arrived is kept, so a
    /// connection waiting for its next request holds a buffer the size of what it has, not
    /// `read_size` (with hundreds of connections open, 64 KiB each was most of the memory).
    pub fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        let mut read = |scratch: &mut Vec<u8>| {
            if scratch.len() < self.read_size {
                scratch.resize(self.read_size, 0);
            }
            let result = Pin::new(&mut self.reader).poll_read(cx, &mut scratch[..self.read_size]);
            if let Poll::Ready(Ok(n)) = result {
                self.buf.extend_from_slice(&scratch[..n]);
            }
            result
        };
        // A reader that itself fills an `Inbound` finds the scratch taken: it gets its own.
        let result = SCRATCH.with(|cell| match cell.try_borrow_mut() {
            Ok(mut scratch) => read(&mut scratch),
            Err(_) => read(&mut Vec::new()),
        });
        match result {
            Poll::Ready(Ok(n)) => {
                self.deadline = None;
                Poll::Ready(Ok(n))
            }
            Poll::Ready(Err(err)) => Poll::Ready(Err(err)),
            Poll::Pending => {
                let timer = &self.timer;
                let timeout = self.timeout;
                let deadline = self.deadline.get_or_insert_with(|| timer.sleep(timeout));
                match deadline.poll_unpin(cx) {
                    Poll::Ready(()) => {
                        self.deadline = None;
                        Poll::Ready(Err(io::Error::new(
                            io::ErrorKind::TimedOut,
                            "guest stalled",
                        )))
                    }
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    /// Takes the reader and the bytes read ahead back (to hand the stream to TLS).
    pub fn into_parts(self) -> (R, BytesMut) {
        (self.reader, self.buf)
    }
}

/// Shared access to the read half: the request body stream handed to the transport and the
/// connection loop both read from it, never at the same time.
pub(crate) type SharedInbound<R> = Rc<RefCell<Inbound<R>>>;

/// The write half with a deadline on every write.
pub(crate) struct Outbound<W> {
    writer: W,
    timer: Rc<dyn Timer>,
    timeout: Duration,
}

impl<W: AsyncWrite + Unpin> Outbound<W> {
    pub fn new(writer: W, timer: Rc<dyn Timer>, timeout: Duration) -> Self {
        Self {
            writer,
            timer,
            timeout,
        }
    }

    /// Writes all of `data` and flushes it, failing with `TimedOut` if the guest does not take
    /// it in time. The flush matters under TLS: a record that did not fit the connection stays
    /// buffered in the TLS session until the next write or flush, which after a response's last
    /// bytes may be the idle timeout.
    pub async fn write_all(&mut self, data: &[u8]) -> io::Result<()> {
        let sleep = self.timer.sleep(self.timeout);
        let writer = &mut self.writer;
        let write = async move {
            writer.write_all(data).await?;
            writer.flush().await
        };
        futures::pin_mut!(write);
        match future::select(write, sleep).await {
            Either::Left((result, _)) => result,
            Either::Right(((), _)) => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "guest stopped reading",
            )),
        }
    }

    /// Takes the writer back (to hand the stream to TLS).
    pub fn into_inner(self) -> W {
        self.writer
    }

    /// Flushes and closes the write side (sends FIN), bounded by the timeout.
    pub async fn close(&mut self) -> io::Result<()> {
        let sleep = self.timer.sleep(self.timeout);
        let close = self.writer.close();
        futures::pin_mut!(close);
        match future::select(close, sleep).await {
            Either::Left((result, _)) => result,
            Either::Right(((), _)) => {
                Err(io::Error::new(io::ErrorKind::TimedOut, "close timed out"))
            }
        }
    }
}

/// Any guest byte stream, type-erased so that a stream can be wrapped (TLS inside a CONNECT
/// tunnel) without the connection code becoming infinitely generic.
pub trait GuestStream: AsyncRead + AsyncWrite + Unpin {}
impl<T: AsyncRead + AsyncWrite + Unpin> GuestStream for T {}

/// A boxed [`GuestStream`].
pub type BoxedStream = Box<dyn GuestStream>;

/// A stream whose first bytes come from a buffer already read from it (bytes read ahead
/// while parsing the CONNECT request, or while sniffing for a TLS ClientHello).
pub(crate) struct Prefixed<S> {
    prefix: BytesMut,
    inner: S,
}

impl<S> Prefixed<S> {
    pub fn new(prefix: BytesMut, inner: S) -> Self {
        Self { prefix, inner }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        if !self.prefix.is_empty() {
            let n = buf.len().min(self.prefix.len());
            buf[..n].copy_from_slice(&self.prefix.split_to(n));
            return Poll::Ready(Ok(n));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Prefixed<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_close(cx)
    }
}
