//! [`Runtime`]: the time and the task executor the composition runs on, injected so the same
//! code runs under tokio natively and on the page's event loop in the browser. This is the
//! only way anything below reads a clock or arms a timer: http-proxy and fetch-transport
//! take their [`Timer`] from it ([`RuntimeTimer`]), the driver its `now` and its sleeps.

use std::rc::Rc;
use std::time::Duration;

use fetch_transport::Timer;
use futures::future::LocalBoxFuture;

/// Time and tasks, as the platform provides them. Single-threaded: tasks are `?Send`.
pub trait Runtime {
    /// A monotonic clock for the stack (microseconds; its zero is the runtime's business).
    fn now(&self) -> net_stack::Instant;

    /// A future that completes once `duration` has passed.
    fn sleep(&self, duration: Duration) -> LocalBoxFuture<'static, ()>;

    /// Lets the other ready tasks run before the caller continues.
    fn yield_now(&self) -> LocalBoxFuture<'static, ()>;

    /// Lets the host's event loop run too (timers, I/O, messages) before the caller
    /// continues. Where tasks and I/O share one scheduler (tokio) this is `yield_now`; in the
    /// browser a microtask yield alone would starve `fetch()` responses and messages.
    fn yield_to_host(&self) -> LocalBoxFuture<'static, ()> {
        self.yield_now()
    }

    /// Runs `task` in the background until it completes or the runtime shuts down.
    fn spawn(&self, task: LocalBoxFuture<'static, ()>);
}

/// A runtime's sleeps as the [`Timer`] http-proxy and fetch-transport take.
pub struct RuntimeTimer(pub Rc<dyn Runtime>);

impl Timer for RuntimeTimer {
    fn sleep(&self, duration: Duration) -> LocalBoxFuture<'static, ()> {
        self.0.sleep(duration)
    }

    fn next_task(&self) -> LocalBoxFuture<'static, ()> {
        self.0.yield_to_host()
    }
}

impl dyn Runtime {
    /// The runtime's sleeps as a shareable [`Timer`].
    pub fn timer(self: &Rc<Self>) -> Rc<dyn Timer> {
        Rc::new(RuntimeTimer(self.clone()))
    }
}
