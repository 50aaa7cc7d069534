//! The link to the guest: frames in and out over a TAP device or a QEMU stream socket.

use std::io;

use net_stack::qemu::{encode_frame, DecodeError, FrameDecoder};
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::tap::Tap;

/// Largest frame accepted from a stream: Ethernet header + the largest MTU we may configure.
pub const MAX_FRAME: usize = 14 + 65535;

/// Why a link stopped working.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// Reading or writing failed.
    #[error("i/o: {0}")]
    Io(#[from] io::Error),
    /// The QEMU byte stream lost its framing (a length prefix that cannot be right).
    #[error("stream framing lost: {0}")]
    Framing(#[from] DecodeError),
    /// The TAP interface was deleted under the open descriptor.
    #[error("the TAP interface was deleted")]
    TapDeleted,
}

impl LinkError {
    /// An I/O error of the TAP descriptor, recognising a deleted interface.
    fn tap(err: io::Error) -> Self {
        if super::tap::is_detached(&err) {
            Self::TapDeleted
        } else {
            Self::Io(err)
        }
    }
}

/// A byte stream carrying QEMU's length-prefixed frames.
pub trait ByteStream: AsyncRead + AsyncWrite + Unpin {}
impl<T: AsyncRead + AsyncWrite + Unpin> ByteStream for T {}

/// A connected link to one guest.
pub enum Link {
    /// A TAP device: one read/write per frame.
    Tap(AsyncFd<Tap>),
    /// A QEMU stream connection.
    Stream {
        /// The connection.
        io: Box<dyn ByteStream>,
        /// Reassembles frames across reads.
        decoder: FrameDecoder,
        /// Scratch space for reads.
        buf: Vec<u8>,
        /// Scratch space for encoding.
        out: Vec<u8>,
    },
}

impl Link {
    /// Wraps an open TAP device.
    pub fn tap(tap: Tap) -> io::Result<Self> {
        // SAFETY: `Tap` owns its descriptor, which stays open and unchanged until the
        // `AsyncFd` (which owns the `Tap`) is dropped.
        let fd = unsafe { AsyncFd::register(tap) }?;
        Ok(Self::Tap(fd))
    }

    /// Wraps a connected QEMU stream.
    pub fn stream(io: Box<dyn ByteStream>) -> Self {
        Self::Stream {
            io,
            decoder: FrameDecoder::new(MAX_FRAME),
            buf: vec![0; 64 * 1024],
            out: Vec::new(),
        }
    }

    /// The next frame from the guest; `None` when the link closed. Cancel-safe: bytes read
    /// stay in the decoder.
    pub async fn recv(&mut self) -> Result<Option<Vec<u8>>, LinkError> {
        match self {
            Self::Tap(fd) => {
                let mut frame = vec![0u8; MAX_FRAME];
                loop {
                    let mut guard = fd.readable().await?;
                    match guard.try_io(|inner| inner.get_ref().read(&mut frame)) {
                        Ok(Ok(n)) => {
                            frame.truncate(n);
                            return Ok(Some(frame));
                        }
                        Ok(Err(err)) => return Err(LinkError::tap(err)),
                        Err(_would_block) => continue,
                    }
                }
            }
            Self::Stream {
                io, decoder, buf, ..
            } => loop {
                if let Some(frame) = decoder.next_frame()? {
                    return Ok(Some(frame));
                }
                let n = io.read(buf).await?;
                if n == 0 {
                    return Ok(None);
                }
                decoder.push(&buf[..n]);
            },
        }
    }

    /// A frame that is already waiting, without blocking (for batching).
    pub fn try_recv(&mut self) -> Result<Option<Vec<u8>>, LinkError> {
        match self {
            Self::Tap(fd) => {
                let mut frame = vec![0u8; MAX_FRAME];
                match fd.get_ref().read(&mut frame) {
                    Ok(n) => {
                        frame.truncate(n);
                        Ok(Some(frame))
                    }
                    Err(err) if err.kind() == io::ErrorKind::WouldBlock => Ok(None),
                    Err(err) => Err(LinkError::tap(err)),
                }
            }
            Self::Stream { decoder, .. } => Ok(decoder.next_frame()?),
        }
    }

    /// Sends one frame to the guest, waiting while the link is full.
    pub async fn send(&mut self, frame: &[u8]) -> Result<(), LinkError> {
        match self {
            Self::Tap(fd) => loop {
                let mut guard = fd.writable().await?;
                match guard.try_io(|inner| inner.get_ref().write(frame)) {
                    Ok(Ok(_)) => return Ok(()),
                    Ok(Err(err)) => return Err(LinkError::tap(err)),
                    Err(_would_block) => continue,
                }
            },
            Self::Stream { io, out, .. } => {
                out.clear();
                encode_frame(frame, out);
                io.write_all(out).await?;
                Ok(())
            }
        }
    }

    /// Fails with [`LinkError::TapDeleted`] when this is a TAP device whose interface is gone
    /// (nothing else tells: a dead descriptor never becomes readable).
    pub fn check_attached(&self) -> Result<(), LinkError> {
        match self {
            Self::Tap(fd) if !fd.get_ref().is_attached() => Err(LinkError::TapDeleted),
            _ => Ok(()),
        }
    }

    /// Whether this link can lose its device without a read or write noticing.
    pub fn needs_watching(&self) -> bool {
        matches!(self, Self::Tap(_))
    }

    /// Frames dropped by the stream decoder (bad length prefixes).
    pub fn dropped(&self) -> u64 {
        match self {
            Self::Tap(_) => 0,
            Self::Stream { decoder, .. } => decoder.dropped(),
        }
    }
}
