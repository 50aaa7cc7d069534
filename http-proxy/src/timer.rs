//! Injected time: the proxy never reads a clock itself (sans-IO; on wasm32 the clock is JS).

use std::time::Duration;

use futures::future::LocalBoxFuture;

/// Creates futures that complete after a duration. Supplied by the embedder (tokio natively,
/// `setTimeout` in the browser, a manual clock in tests).
pub trait Timer {
    /// A future that completes once `duration` has passed.
    fn sleep(&self, duration: Duration) -> LocalBoxFuture<'static, ()>;
}
