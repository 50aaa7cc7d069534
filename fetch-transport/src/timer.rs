//! Injected time: no crate below the composition reads a clock or arms a timer of its own
//! (sans-IO; on wasm32 there is no `std` clock at all). The embedder's runtime supplies this.

use std::time::Duration;

use futures::future::LocalBoxFuture;

/// Creates futures that complete after a duration. Supplied by the embedder (tokio natively,
/// `setTimeout` in the browser, a manual clock in tests); the browser transport's timeout and
/// http-proxy's idle and response limits take their time from it.
pub trait Timer {
    /// A future that completes once `duration` has passed.
    fn sleep(&self, duration: Duration) -> LocalBoxFuture<'static, ()>;

    /// A future that completes once the embedder's event loop has run the work it already
    /// had queued (the next task in a browser, a yield on tokio). The relay waits for it
    /// before sending small writes, so what a burst of tasks wrote leaves as one message.
    fn next_task(&self) -> LocalBoxFuture<'static, ()> {
        self.sleep(Duration::ZERO)
    }
}
