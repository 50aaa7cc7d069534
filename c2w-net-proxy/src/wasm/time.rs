//! Time in the browser: the stack's clock from `performance.now()` and timers over the global
//! `setTimeout` (no `window`: the same code runs in Workers, on the main thread and in node).

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use futures::future::LocalBoxFuture;
use wasm_bindgen::prelude::*;

#[wasm_bindgen]
extern "C" {
    #[wasm_bindgen(js_namespace = performance, js_name = now)]
    fn performance_now() -> f64;
    #[wasm_bindgen(js_name = setTimeout)]
    fn set_timeout(handler: &js_sys::Function, millis: f64) -> JsValue;
    #[wasm_bindgen(js_name = clearTimeout)]
    fn clear_timeout(handle: &JsValue);
}

/// A monotonic clock in milliseconds, anchored to the wall clock when made so pcap
/// timestamps are real dates.
#[derive(Debug, Clone, Copy)]
pub struct MonotonicClock {
    offset_ms: f64,
}

impl MonotonicClock {
    /// A clock reading `Date.now()` now and advancing with `performance.now()`.
    pub fn new() -> Self {
        Self {
            offset_ms: js_sys::Date::now() - performance_now(),
        }
    }

    /// Milliseconds since the Unix epoch, never going backwards.
    pub fn now_ms(&self) -> f64 {
        self.offset_ms + performance_now()
    }

    /// The current time as the stack's `Instant`.
    pub fn now(&self) -> net_stack::Instant {
        net_stack::Instant::from_micros((self.now_ms() * 1000.0) as i64)
    }
}

struct SleepState {
    fired: Cell<bool>,
    waker: RefCell<Option<Waker>>,
}

/// A future that completes after a `setTimeout`; dropping it clears the timeout.
pub struct Sleep {
    state: Rc<SleepState>,
    handle: JsValue,
    _callback: Closure<dyn FnMut()>,
}

impl Sleep {
    /// Completes after `millis` milliseconds (at the earliest; timers are clamped by hosts).
    pub fn new(millis: f64) -> Self {
        let state = Rc::new(SleepState {
            fired: Cell::new(false),
            waker: RefCell::new(None),
        });
        let for_callback = state.clone();
        let callback = Closure::<dyn FnMut()>::new(move || {
            for_callback.fired.set(true);
            if let Some(waker) = for_callback.waker.borrow_mut().take() {
                waker.wake();
            }
        });
        let handle = set_timeout(callback.as_ref().unchecked_ref(), millis.max(0.0));
        Self {
            state,
            handle,
            _callback: callback,
        }
    }

    /// Polls without consuming (for use inside a `poll_fn`).
    pub fn poll_fired(&self, cx: &mut Context<'_>) -> Poll<()> {
        if self.state.fired.get() {
            Poll::Ready(())
        } else {
            *self.state.waker.borrow_mut() = Some(cx.waker().clone());
            Poll::Pending
        }
    }
}

impl Future for Sleep {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        self.poll_fired(cx)
    }
}

impl Drop for Sleep {
    fn drop(&mut self) {
        if !self.state.fired.get() {
            clear_timeout(&self.handle);
        }
    }
}

/// http-proxy's timer over `setTimeout`.
#[derive(Debug, Default)]
pub struct JsTimer;

impl http_proxy::Timer for JsTimer {
    fn sleep(&self, duration: Duration) -> LocalBoxFuture<'static, ()> {
        Box::pin(Sleep::new(duration.as_secs_f64() * 1000.0))
    }
}
