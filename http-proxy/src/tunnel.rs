//! Raw tunnels: with [`RawTunnels`] configured (a relay), a CONNECT is carried end to end
//! instead of having its TLS terminated, so the guest sees the origin's own certificate and no
//! CA is needed. [`splice`] copies bytes both ways between the guest and the tunnel.

use std::io;
use std::time::Duration;

use async_trait::async_trait;
use futures::channel::oneshot;
use futures::future::{self, Either, FutureExt};
use futures::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::io::BoxedStream;
use crate::timer::Timer;

/// Why a raw tunnel could not be opened; the text goes into the guest's 502 page.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct TunnelError(pub String);

/// Opens raw byte streams to `host:port` for CONNECT tunnels (e.g. through a Wisp relay).
/// http-proxy never learns what carries them.
#[async_trait(?Send)]
pub trait RawTunnels {
    /// A byte stream to `host:port`, or why there is none.
    async fn open(&self, host: &str, port: u16) -> Result<BoxedStream, TunnelError>;
}

/// How long [`splice`] keeps carrying `b`'s answer after `a` finished sending, while `b`
/// stays silent: for tunnels that cannot pass a half-close on (Wisp has none), a peer that
/// never learns that the guest is done would otherwise hold the connection open forever.
pub const HALF_CLOSE_LINGER: Duration = Duration::from_secs(5);

/// Copies bytes both ways between `a` (the guest) and `b` (the tunnel) until both directions
/// ended. The end of one direction shuts down the other side's write half; after `a` ended,
/// `b`'s answer is carried on only while `b` sends something at least every `linger`. An
/// error in either direction ends both at once (a reset must not leave the other direction
/// waiting forever). Returns the bytes moved a→b and b→a.
pub async fn splice<A, B>(a: A, b: B, timer: &dyn Timer, linger: Duration) -> io::Result<(u64, u64)>
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let (a_read, mut a_write) = a.split();
    let (mut b_read, mut b_write) = b.split();
    let (done, a_finished) = oneshot::channel::<()>();
    let a_finished = a_finished.shared();
    let forward = Box::pin(async move {
        let n = futures::io::copy(a_read, &mut b_write).await?;
        b_write.close().await?;
        let _ = done.send(());
        Ok::<u64, io::Error>(n)
    });
    let backward = Box::pin(async move {
        let mut buf = vec![0u8; COPY_BUFFER];
        let mut total = 0u64;
        loop {
            let finished = a_finished.clone();
            let quiet = async move {
                let _ = finished.await;
                timer.sleep(linger).await;
            };
            match future::select(b_read.read(&mut buf), Box::pin(quiet)).await {
                Either::Left((Ok(0), _)) | Either::Right(_) => break,
                Either::Left((Ok(n), _)) => {
                    a_write.write_all(&buf[..n]).await?;
                    total += n as u64;
                }
                Either::Left((Err(err), _)) => return Err(err),
            }
        }
        a_write.close().await?;
        Ok::<u64, io::Error>(total)
    });
    match future::select(forward, backward).await {
        Either::Left((Ok(sent), backward)) => Ok((sent, backward.await?)),
        Either::Right((Ok(received), forward)) => Ok((forward.await?, received)),
        Either::Left((Err(err), _)) | Either::Right((Err(err), _)) => Err(err),
    }
}

/// Bytes read from the tunnel per write to the guest.
const COPY_BUFFER: usize = 16 * 1024;

#[cfg(test)]
mod tests {
    use super::*;
    use futures::executor::block_on;
    use futures::io::Cursor;

    /// How a [`Duplex`] reads.
    #[derive(Clone, Copy, PartialEq)]
    enum Read {
        /// Its input, then the end.
        Data,
        /// A reset.
        Fail,
        /// Never anything (a peer that neither answers nor closes).
        Silent,
    }

    /// A stream that reads from one buffer and writes into another.
    struct Duplex {
        input: Cursor<Vec<u8>>,
        output: Vec<u8>,
        closed: bool,
        read: Read,
    }

    impl AsyncRead for Duplex {
        fn poll_read(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
            buf: &mut [u8],
        ) -> std::task::Poll<io::Result<usize>> {
            match self.read {
                Read::Fail => std::task::Poll::Ready(Err(io::ErrorKind::ConnectionReset.into())),
                Read::Silent => std::task::Poll::Pending,
                Read::Data => std::pin::Pin::new(&mut self.input).poll_read(cx, buf),
            }
        }
    }

    impl AsyncWrite for Duplex {
        fn poll_write(
            mut self: std::pin::Pin<&mut Self>,
            _cx: &mut std::task::Context<'_>,
            buf: &[u8],
        ) -> std::task::Poll<io::Result<usize>> {
            self.output.extend_from_slice(buf);
            std::task::Poll::Ready(Ok(buf.len()))
        }
        fn poll_flush(
            self: std::pin::Pin<&mut Self>,
            _cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<io::Result<()>> {
            std::task::Poll::Ready(Ok(()))
        }
        fn poll_close(
            mut self: std::pin::Pin<&mut Self>,
            _cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<io::Result<()>> {
            self.closed = true;
            std::task::Poll::Ready(Ok(()))
        }
    }

    fn duplex(input: &[u8], read: Read) -> Duplex {
        Duplex {
            input: Cursor::new(input.to_vec()),
            output: Vec::new(),
            closed: false,
            read,
        }
    }

    struct NeverTimer;

    impl Timer for NeverTimer {
        fn sleep(&self, _: Duration) -> futures::future::LocalBoxFuture<'static, ()> {
            Box::pin(future::pending())
        }
    }

    /// A timer whose sleeps end at once: the linger is over as soon as it starts.
    struct InstantTimer;

    impl Timer for InstantTimer {
        fn sleep(&self, _: Duration) -> futures::future::LocalBoxFuture<'static, ()> {
            Box::pin(future::ready(()))
        }
    }

    #[test]
    fn a_silent_tunnel_is_let_go_once_the_guest_is_done_and_the_linger_passed() {
        let mut a = duplex(b"request", Read::Data);
        // A peer that never answers and never closes (a tunnel without half-close).
        let mut b = duplex(b"", Read::Silent);
        let moved = block_on(splice(&mut a, &mut b, &InstantTimer, HALF_CLOSE_LINGER)).unwrap();
        assert_eq!(moved, (7, 0));
        assert_eq!(b.output, b"request");
        assert!(a.closed);
    }

    #[test]
    fn both_directions_are_copied_and_each_end_closes_the_other_write_side() {
        let mut a = duplex(b"from a", Read::Data);
        let mut b = duplex(b"from b, longer", Read::Data);
        let moved = block_on(splice(&mut a, &mut b, &NeverTimer, HALF_CLOSE_LINGER)).unwrap();
        assert_eq!(moved, (6, 14));
        assert_eq!(b.output, b"from a");
        assert_eq!(a.output, b"from b, longer");
        assert!(a.closed && b.closed);
    }

    #[test]
    fn an_error_in_one_direction_ends_both() {
        let mut a = duplex(b"", Read::Data);
        // `a` would stay open forever in a real stream; here the failing side must end it.
        let mut b = duplex(b"", Read::Fail);
        let err = block_on(splice(&mut a, &mut b, &NeverTimer, HALF_CLOSE_LINGER)).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::ConnectionReset);
    }
}
