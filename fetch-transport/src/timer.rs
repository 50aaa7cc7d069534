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
}
