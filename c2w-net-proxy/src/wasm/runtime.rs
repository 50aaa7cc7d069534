//! The [`Runtime`] in the browser (and node): the clock from `performance.now()`, timers from
//! the global `setTimeout` (gloo-timers; no `window`, so Workers and node work too), tasks on
//! the page's event loop. Every task ends when its proxy closes.

use std::future::poll_fn;
use std::task::Poll;
use std::time::Duration;

use futures::channel::oneshot;
use futures::future::{select, FutureExt, LocalBoxFuture, Shared};
use wasm_bindgen::prelude::*;

use crate::runtime::Runtime;

#[wasm_bindgen]
extern "C" {
    #[wasm_bindgen(js_namespace = performance, js_name = now)]
    fn performance_now() -> f64;
}

/// The page's clock, timers and event loop for one `NetProxy`.
pub struct BrowserRuntime {
    /// `Date.now() - performance.now()` when made: stack time is a real date (pcap
    /// timestamps), advancing monotonically.
    offset_ms: f64,
    /// Completes when the proxy closes (its sender dropped); every task selects on it.
    stopped: Shared<oneshot::Receiver<()>>,
}

impl BrowserRuntime {
    /// A runtime whose tasks run until `stop` is dropped.
    pub fn new() -> (Self, oneshot::Sender<()>) {
        let (stop, stopped) = oneshot::channel();
        let runtime = Self {
            offset_ms: js_sys::Date::now() - performance_now(),
            stopped: stopped.shared(),
        };
        (runtime, stop)
    }
}

/// Completes after one trip through the microtask queue.
async fn microtask() {
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

impl Runtime for BrowserRuntime {
    fn now(&self) -> net_stack::Instant {
        net_stack::Instant::from_micros(((self.offset_ms + performance_now()) * 1000.0) as i64)
    }

    fn sleep(&self, duration: Duration) -> LocalBoxFuture<'static, ()> {
        // setTimeout counts whole milliseconds: round up, never fire early.
        let millis = duration
            .as_micros()
            .div_ceil(1000)
            .min(u128::from(u32::MAX)) as u32;
        Box::pin(gloo_timers::future::TimeoutFuture::new(millis))
    }

    fn yield_now(&self) -> LocalBoxFuture<'static, ()> {
        Box::pin(microtask())
    }

    fn yield_to_host(&self) -> LocalBoxFuture<'static, ()> {
        Box::pin(gloo_timers::future::TimeoutFuture::new(0))
    }

    fn spawn(&self, task: LocalBoxFuture<'static, ()>) {
        let stopped = self.stopped.clone();
        wasm_bindgen_futures::spawn_local(async move {
            select(task, stopped).await;
        });
    }
}
