//! Raw tunnels: with [`RawTunnels`] configured (a relay), a CONNECT is carried end to end
//! instead of having its TLS terminated, so the guest sees the origin's own certificate and no
//! CA is needed. [`splice`] copies bytes both ways between the guest and the tunnel.

use std::io;

use async_trait::async_trait;
use futures::future::{self, Either};
use futures::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::io::BoxedStream;

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

/// Copies bytes both ways between `a` and `b` until both directions ended; the end of one
/// direction shuts down the other side's write half. An error in either direction ends both
/// at once (a reset must not leave the other direction waiting forever). Returns the bytes
/// moved a→b and b→a.
pub async fn splice<A, B>(a: A, b: B) -> io::Result<(u64, u64)>
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let (a_read, mut a_write) = a.split();
    let (b_read, mut b_write) = b.split();
    let forward = Box::pin(async move {
        let n = futures::io::copy(a_read, &mut b_write).await?;
        b_write.close().await?;
        Ok::<u64, io::Error>(n)
    });
    let backward = Box::pin(async move {
        let n = futures::io::copy(b_read, &mut a_write).await?;
        a_write.close().await?;
        Ok::<u64, io::Error>(n)
    });
    match future::select(forward, backward).await {
        Either::Left((Ok(sent), backward)) => Ok((sent, backward.await?)),
        Either::Right((Ok(received), forward)) => Ok((forward.await?, received)),
        Either::Left((Err(err), _)) | Either::Right((Err(err), _)) => Err(err),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::executor::block_on;
    use futures::io::Cursor;

    /// A stream that reads from one buffer and writes into another.
    struct Duplex {
        input: Cursor<Vec<u8>>,
        output: Vec<u8>,
        closed: bool,
        fail_read: bool,
    }

    impl AsyncRead for Duplex {
        fn poll_read(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
            buf: &mut [u8],
        ) -> std::task::Poll<io::Result<usize>> {
            if self.fail_read {
                return std::task::Poll::Ready(Err(io::ErrorKind::ConnectionReset.into()));
            }
            std::pin::Pin::new(&mut self.input).poll_read(cx, buf)
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

    fn duplex(input: &[u8], fail_read: bool) -> Duplex {
        Duplex {
            input: Cursor::new(input.to_vec()),
            output: Vec::new(),
            closed: false,
            fail_read,
        }
    }

    #[test]
    fn both_directions_are_copied_and_each_end_closes_the_other_write_side() {
        let mut a = duplex(b"from a", false);
        let mut b = duplex(b"from b, longer", false);
        let moved = block_on(splice(&mut a, &mut b)).unwrap();
        assert_eq!(moved, (6, 14));
        assert_eq!(b.output, b"from a");
        assert_eq!(a.output, b"from b, longer");
        assert!(a.closed && b.closed);
    }

    #[test]
    fn an_error_in_one_direction_ends_both() {
        let mut a = duplex(b"", false);
        // `a` would stay open forever in a real stream; here the failing side must end it.
        let mut b = duplex(b"", true);
        let err = block_on(splice(&mut a, &mut b)).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::ConnectionReset);
    }
}
