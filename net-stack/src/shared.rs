//! The state a `Stack` shares with its listeners and streams, and how they ask for a poll.

use std::cell::RefCell;
use std::task::{Context, Poll, Waker};

/// State shared by the `Stack` handle, listeners and streams: the stack's state `S` and the
/// pending request for a `poll`. Listeners and streams hold it as `Shared<dyn TcpHost>` (see
/// `tcp`): they reach only the TCP part of the state.
pub(crate) struct Shared<S: ?Sized> {
    wake: RefCell<WakeState>,
    pub(crate) inner: RefCell<S>,
}

#[derive(Default)]
struct WakeState {
    pending: bool,
    waker: Option<Waker>,
}

impl<S> Shared<S> {
    /// Shares `inner`, with no poll requested.
    pub(crate) fn new(inner: S) -> Self {
        Shared {
            wake: RefCell::new(WakeState::default()),
            inner: RefCell::new(inner),
        }
    }
}

impl<S: ?Sized> Shared<S> {
    /// Something changed outside `poll` that needs a `poll` (see `Stack::poll_wake`).
    pub(crate) fn request_poll(&self) {
        let waker = {
            let mut wake = self.wake.borrow_mut();
            wake.pending = true;
            wake.waker.take()
        };
        if let Some(waker) = waker {
            waker.wake();
        }
    }

    /// Ready once a poll was requested since the last Ready; otherwise keeps the waker,
    /// Pending.
    pub(crate) fn poll_wake(&self, cx: &mut Context<'_>) -> Poll<()> {
        let mut wake = self.wake.borrow_mut();
        if wake.pending {
            wake.pending = false;
            Poll::Ready(())
        } else {
            wake.waker = Some(cx.waker().clone());
            Poll::Pending
        }
    }
}
