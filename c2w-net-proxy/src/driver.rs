//! The loop that drives the sans-IO stack over one [`Link`], the same in the browser and
//! natively: frames in from the link, `poll` at the times the stack asks for, frames out to
//! the link. Nothing busy-waits: the loop sleeps until a frame arrives, a timer the stack
//! asked for expires, a delayed frame is due, or a connection's reader or writer woke the
//! stack (`poll_wake`).
//!
//! With [`Faults`] (the `fault` feature, for tests and the runner's `--fault`), every frame in
//! each direction goes through its own seeded injector between the link and the stack.

use std::future::{poll_fn, Future};
use std::pin::pin;
use std::task::Poll;
use std::time::Duration;

use futures::future::LocalBoxFuture;
use net_stack::{Instant, Stack};

use crate::link::{Link, LinkError};
use crate::runtime::Runtime;

pub use crate::faults::Faults;

/// Most frames taken from the link before the stack is polled again.
const BATCH: usize = 64;
/// Zero-delay rounds in a row after which the driver yields to the host's event loop
/// ([`Runtime::yield_to_host`]) instead of only to the other tasks.
const YIELD_ROUNDS: u32 = 16;

/// What ended a wait.
enum Wake {
    Frame(Result<Option<Vec<u8>>, LinkError>),
    Stack,
    Timer,
}

/// Moves frames between `link` and `stack` until the link closes (`Ok`) or fails, through
/// `faults` when given (their counters are logged when they are dropped).
pub async fn run<L: Link>(
    stack: &Stack,
    runtime: &dyn Runtime,
    link: &mut L,
    mut faults: Option<Faults>,
) -> Result<(), LinkError> {
    // The armed timer and when it fires.
    let mut timer: Option<(Instant, LocalBoxFuture<'static, ()>)> = None;
    let mut zero_rounds = 0u32;
    loop {
        let now = runtime.now();
        if let Some(f) = faults.as_mut() {
            f.release_to_stack(now, |frame| stack.push_frame(&frame));
        }
        stack.poll(now);
        while let Some(frame) = stack.pop_frame() {
            match faults.as_mut() {
                Some(f) => f.to_guest(frame, now),
                None => link.send(&frame).await?,
            }
        }
        if let Some(f) = faults.as_mut() {
            while let Some(frame) = f.release_to_guest(now) {
                link.send(&frame).await?;
            }
        }
        link.flush()?;

        let now = runtime.now();
        let due = [
            stack.poll_delay(now).map(|d| now + d),
            faults.as_ref().and_then(Faults::next_release),
        ]
        .into_iter()
        .flatten()
        .min();
        match due {
            Some(at) if at <= now => {
                // The stack has more to do right away, or a delayed frame is due: let
                // connection tasks run first.
                zero_rounds += 1;
                if zero_rounds >= YIELD_ROUNDS {
                    zero_rounds = 0;
                    runtime.yield_to_host().await;
                } else {
                    runtime.yield_now().await;
                }
                continue;
            }
            Some(at) => {
                // A timer that fires no later than needed is kept: waking early costs one
                // extra poll, re-arming costs a timer (a setTimeout pair in the browser).
                if timer.as_ref().is_none_or(|(armed, _)| *armed > at) {
                    let delay = Duration::from_micros((at - now).total_micros());
                    timer = Some((at, runtime.sleep(delay)));
                }
            }
            None => timer = None,
        }
        zero_rounds = 0;

        let wake = {
            let mut recv = pin!(link.recv());
            poll_fn(|cx| {
                if let Poll::Ready(frame) = recv.as_mut().poll(cx) {
                    return Poll::Ready(Wake::Frame(frame));
                }
                if stack.poll_wake(cx).is_ready() {
                    return Poll::Ready(Wake::Stack);
                }
                if let Some((_, sleep)) = timer.as_mut() {
                    if sleep.as_mut().poll(cx).is_ready() {
                        return Poll::Ready(Wake::Timer);
                    }
                }
                Poll::Pending
            })
            .await
        };
        match wake {
            Wake::Frame(frame) => {
                let Some(frame) = frame? else { return Ok(()) };
                let now = runtime.now();
                let mut take = |frame: Vec<u8>| match faults.as_mut() {
                    Some(f) => f.from_guest(frame, now),
                    None => stack.push_frame(&frame),
                };
                take(frame);
                for _ in 1..BATCH {
                    match link.try_recv()? {
                        Some(frame) => take(frame),
                        None => break,
                    }
                }
            }
            Wake::Stack => {}
            Wake::Timer => timer = None,
        }
    }
}
