//! Frame observation: a hook that sees every frame in both directions (for pcap capture).

use smoltcp::time::Instant;

/// Which way a frame crossed the virtual NIC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Sent by the guest, received by the stack.
    FromGuest,
    /// Sent by the stack towards the guest.
    ToGuest,
}

/// Sees every frame both ways; called from inside `Stack::poll`, so it must not call the `Stack`.
pub trait FrameObserver {
    /// One frame crossed the NIC at `now`.
    fn on_frame(&mut self, direction: Direction, frame: &[u8], now: Instant);
}
