//! The native [`Link`]s: a TAP device (one read or write per frame) and a QEMU stream socket
//! (length-prefixed frames over TCP or a Unix socket).

use std::io;
use std::time::Duration;

use net_stack::qemu::{encode_frame, FrameDecoder};
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::{Interval, MissedTickBehavior};

use super::tap::{self, Tap};
use crate::link::{Link, LinkError, MAX_FRAME};

/// How often a TAP link checks that its interface still exists.
const TAP_WATCH: Duration = Duration::from_secs(1);

/// An I/O error of a TAP descriptor, recognising a deleted interface.
fn tap_error(err: io::Error) -> LinkError {
    if tap::is_detached(&err) {
        LinkError::Detached
    } else {
        LinkError::Io(err)
    }
}

/// A TAP device as a link. A deleted interface leaves a descriptor that never becomes
/// readable, so the link looks at the interface now and then while it waits.
pub struct TapLink {
    fd: AsyncFd<Tap>,
    watch: Interval,
    /// Where frames are read; each is copied out at its own length.
    buf: Vec<u8>,
}

impl TapLink {
    /// Wraps an open TAP device (must be called inside the tokio runtime).
    pub fn new(tap: Tap) -> io::Result<Self> {
        // SAFETY: `Tap` owns its descriptor, which stays open and unchanged until the
        // `AsyncFd` (which owns the `Tap`) is dropped.
        let fd = unsafe { AsyncFd::register(tap) }?;
        let mut watch = tokio::time::interval(TAP_WATCH);
        watch.set_missed_tick_behavior(MissedTickBehavior::Delay);
        Ok(Self {
            fd,
            watch,
            buf: vec![0; MAX_FRAME],
        })
    }

    /// The device.
    pub fn tap(&self) -> &Tap {
        self.fd.get_ref()
    }
}

impl Link for TapLink {
    async fn recv(&mut self) -> Result<Option<Vec<u8>>, LinkError> {
        loop {
            tokio::select! {
                biased;
                guard = self.fd.readable() => {
                    match guard?.try_io(|inner| inner.get_ref().read(&mut self.buf)) {
                        Ok(Ok(n)) => return Ok(Some(self.buf[..n].to_vec())),
                        Ok(Err(err)) => return Err(tap_error(err)),
                        Err(_would_block) => continue,
                    }
                }
                _ = self.watch.tick() => {
                    if !self.fd.get_ref().is_attached() {
                        return Err(LinkError::Detached);
                    }
                }
            }
        }
    }

    fn try_recv(&mut self) -> Result<Option<Vec<u8>>, LinkError> {
        match self.fd.get_ref().read(&mut self.buf) {
            Ok(n) => Ok(Some(self.buf[..n].to_vec())),
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => Ok(None),
            Err(err) => Err(tap_error(err)),
        }
    }

    async fn send(&mut self, frame: &[u8]) -> Result<(), LinkError> {
        loop {
            let mut guard = self.fd.writable().await?;
            match guard.try_io(|inner| inner.get_ref().write(frame)) {
                Ok(Ok(_)) => return Ok(()),
                Ok(Err(err)) => return Err(tap_error(err)),
                Err(_would_block) => continue,
            }
        }
    }
}

/// A byte stream carrying QEMU's length-prefixed frames.
pub trait ByteStream: AsyncRead + AsyncWrite + Unpin {}
impl<T: AsyncRead + AsyncWrite + Unpin> ByteStream for T {}

/// A QEMU `-netdev stream`/`socket` connection as a link.
pub struct StreamLink {
    io: Box<dyn ByteStream>,
    /// Reassembles frames across reads.
    decoder: FrameDecoder,
    /// Scratch space for reads.
    buf: Vec<u8>,
    /// Scratch space for encoding.
    out: Vec<u8>,
}

impl StreamLink {
    /// Wraps a connected QEMU stream.
    pub fn new(io: Box<dyn ByteStream>) -> Self {
        Self {
            io,
            decoder: FrameDecoder::new(MAX_FRAME),
            buf: vec![0; 64 * 1024],
            out: Vec::new(),
        }
    }
}

impl Link for StreamLink {
    /// Cancel-safe: bytes read stay in the decoder.
    async fn recv(&mut self) -> Result<Option<Vec<u8>>, LinkError> {
        loop {
            if let Some(frame) = self.decoder.next_frame()? {
                return Ok(Some(frame));
            }
            let n = self.io.read(&mut self.buf).await?;
            if n == 0 {
                return Ok(None);
            }
            self.decoder.push(&self.buf[..n]);
        }
    }

    fn try_recv(&mut self) -> Result<Option<Vec<u8>>, LinkError> {
        Ok(self.decoder.next_frame()?)
    }

    async fn send(&mut self, frame: &[u8]) -> Result<(), LinkError> {
        self.out.clear();
        encode_frame(frame, &mut self.out);
        self.io.write_all(&self.out).await?;
        Ok(())
    }

    fn dropped(&self) -> u64 {
        self.decoder.dropped()
    }
}
