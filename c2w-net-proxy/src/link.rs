//! [`Link`]: the guest's side of the wire, whatever carries it: a TAP device or a QEMU stream
//! natively, JavaScript callbacks in the browser, or a test bridge. The [`driver`] moves
//! frames between one link and the stack; a link only moves frames.
//!
//! [`driver`]: crate::driver

use std::future::Future;
use std::io;

use net_stack::qemu::DecodeError;

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
    /// The device behind the link was removed (a TAP interface deleted under its descriptor).
    #[error("the TAP interface was deleted")]
    Detached,
}

/// Frames to and from one guest. Single-threaded: the futures need not be `Send`.
pub trait Link {
    /// The next frame from the guest; `None` once the link has closed. Must be cancel-safe:
    /// the driver drops it when something else needs attention, and nothing may be lost.
    fn recv(&mut self) -> impl Future<Output = Result<Option<Vec<u8>>, LinkError>>;

    /// A frame that is already waiting, without waiting (for batching).
    fn try_recv(&mut self) -> Result<Option<Vec<u8>>, LinkError>;

    /// Sends one frame to the guest, waiting while the link is full.
    fn send(&mut self, frame: &[u8]) -> impl Future<Output = Result<(), LinkError>>;

    /// Called after each round of sends: a link that gathers frames hands them over here.
    fn flush(&mut self) -> Result<(), LinkError> {
        Ok(())
    }

    /// Frames the link dropped itself (bad stream framing, a full inbox).
    fn dropped(&self) -> u64 {
        0
    }
}
