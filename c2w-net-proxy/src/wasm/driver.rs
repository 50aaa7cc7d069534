//! The task that drives the sans-IO stack in the browser: `poll(now)`, hand the frames out,
//! then sleep until a frame is pushed, the delay the stack asked for passes, or a connection
//! woke the stack (`poll_wake`). No busy polling: an idle proxy has no timer pending unless
//! smoltcp asked for one.

use std::cell::{Cell, RefCell};
use std::future::poll_fn;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

use super::time::Sleep;
use super::Inner;

/// Zero-delay rounds in a row after which the driver yields to the host's event loop (a
/// `setTimeout(0)`) instead of only to the microtask queue, so fetch() responses and
/// messages are never starved.
const MICROTASK_ROUNDS: u32 = 16;

/// "A frame was pushed (or the proxy closed)": a flag plus the driver's waker.
#[derive(Default)]
pub struct Kick {
    pending: Cell<bool>,
    waker: RefCell<Option<Waker>>,
}

impl Kick {
    /// Wakes the driver.
    pub fn kick(&self) {
        self.pending.set(true);
        if let Some(waker) = self.waker.borrow_mut().take() {
            waker.wake();
        }
    }

    /// Ready (and reset) once kicked; otherwise keeps the waker.
    fn poll_kicked(&self, cx: &mut Context<'_>) -> Poll<()> {
        if self.pending.replace(false) {
            Poll::Ready(())
        } else {
            *self.waker.borrow_mut() = Some(cx.waker().clone());
            Poll::Pending
        }
    }
}

/// Completes after one trip through the microtask queue.
async fn yield_now() {
    let mut yielded = false;
    poll_fn(|cx| {
        if yielded {
            Poll::Ready(())
        } else {
            yielded = true;
            cx.waker().wake_by_ref();
            Poll::Pending
        }
    })
    .await
}

/// Runs until the proxy is closed.
pub async fn drive(inner: Rc<Inner>) {
    // The armed timer and the time (ms) it fires at.
    let mut timer: Option<(f64, Sleep)> = None;
    let mut zero_rounds = 0u32;
    let mut framed = Vec::new();
    while !inner.closed.get() {
        inner.stack.poll(inner.clock.now());
        inner.deliver(&mut framed);
        if inner.closed.get() {
            break;
        }
        let now_ms = inner.clock.now_ms();
        match inner.stack.poll_delay(inner.clock.now()) {
            Some(delay) if delay.total_micros() == 0 => {
                zero_rounds += 1;
                if zero_rounds >= MICROTASK_ROUNDS {
                    zero_rounds = 0;
                    Sleep::new(0.0).await;
                } else {
                    yield_now().await;
                }
                continue;
            }
            Some(delay) => {
                let delay_ms = delay.total_micros() as f64 / 1000.0;
                let deadline = now_ms + delay_ms;
                // A timer that fires no later than needed is kept: waking early only costs
                // one extra poll, re-arming costs a setTimeout/clearTimeout pair.
                if timer.as_ref().is_none_or(|(at, _)| *at > deadline) {
                    timer = Some((deadline, Sleep::new(delay_ms)));
                }
            }
            None => timer = None,
        }
        zero_rounds = 0;
        poll_fn(|cx| {
            let kicked = inner.kick.poll_kicked(cx).is_ready();
            let woken = inner.stack.poll_wake(cx).is_ready();
            let fired = match &timer {
                Some((_, sleep)) => sleep.poll_fired(cx).is_ready(),
                None => false,
            };
            if fired {
                timer = None;
            }
            if kicked || woken || fired {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
        .await;
    }
}
