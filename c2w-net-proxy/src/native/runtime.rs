//! The [`Runtime`] on tokio: a current-thread runtime with a `LocalSet`, the clock counted
//! from the runner's start.

use std::time::Duration;

use futures::future::LocalBoxFuture;

use crate::runtime::Runtime;

/// Tokio's timers and local tasks; must be used inside a `LocalSet`.
#[derive(Debug, Clone)]
pub struct TokioRuntime {
    start: std::time::Instant,
}

impl TokioRuntime {
    /// A runtime whose clock starts now.
    pub fn new() -> Self {
        Self {
            start: std::time::Instant::now(),
        }
    }
}

impl Default for TokioRuntime {
    fn default() -> Self {
        Self::new()
    }
}

impl Runtime for TokioRuntime {
    fn now(&self) -> net_stack::Instant {
        net_stack::Instant::from_micros(self.start.elapsed().as_micros() as i64)
    }

    fn sleep(&self, duration: Duration) -> LocalBoxFuture<'static, ()> {
        Box::pin(tokio::time::sleep(duration))
    }

    fn yield_now(&self) -> LocalBoxFuture<'static, ()> {
        Box::pin(tokio::task::yield_now())
    }

    fn spawn(&self, task: LocalBoxFuture<'static, ()>) {
        tokio::task::spawn_local(task);
    }
}
