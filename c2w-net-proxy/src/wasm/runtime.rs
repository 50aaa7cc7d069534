//! The [`Runtime`] in the browser (and node): the clock from `performance.now()`, timers from
//! the global `setTimeout` (gloo-timers; no `window`, so Workers and node work too), tasks on
//! the page's event loop. Every task ends when its proxy closes.
//!
//! Yielding to the host is a hop to the next event-loop task: a `MessageChannel` message
//! (node: `setImmediate`), not `setTimeout(0)`, which browsers clamp to 4 ms once timers nest
//! five deep: a driver that yields after every busy stretch would otherwise wait 4 ms each.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::future::poll_fn;
use std::rc::Rc;
use std::task::Poll;
use std::time::Duration;

use futures::channel::oneshot;
use futures::future::{select, FutureExt, LocalBoxFuture, Shared};
use wasm_bindgen::prelude::*;
use wasm_bindgen::JsCast;

use crate::runtime::Runtime;

#[wasm_bindgen]
extern "C" {
    #[wasm_bindgen(js_namespace = performance, js_name = now)]
    fn performance_now() -> f64;

    type MessageChannel;
    #[wasm_bindgen(constructor)]
    fn new() -> MessageChannel;
    #[wasm_bindgen(method, getter)]
    fn port1(this: &MessageChannel) -> MessagePort;
    #[wasm_bindgen(method, getter)]
    fn port2(this: &MessageChannel) -> MessagePort;

    type MessagePort;
    #[wasm_bindgen(method, setter)]
    fn set_onmessage(this: &MessagePort, handler: &js_sys::Function);
    #[wasm_bindgen(method, js_name = postMessage)]
    fn post_message(this: &MessagePort, message: &JsValue);

    #[wasm_bindgen(js_name = setImmediate)]
    fn set_immediate(handler: &js_sys::Function);
}

/// How this global scope reaches its next event-loop task.
enum Hop {
    /// node: `setImmediate` (a `MessagePort` there would keep the process alive).
    Immediate(Closure<dyn FnMut()>),
    /// Pages and workers: a message to ourselves.
    Channel {
        sender: MessagePort,
        _receiver: MessagePort,
        _handler: Closure<dyn FnMut()>,
    },
}

/// The yields waiting for their task, oldest first; each hop completes one.
struct NextTask {
    waiting: Rc<RefCell<VecDeque<oneshot::Sender<()>>>>,
    hop: Hop,
}

impl NextTask {
    fn new() -> Self {
        let waiting: Rc<RefCell<VecDeque<oneshot::Sender<()>>>> = Default::default();
        let queue = waiting.clone();
        let handler = Closure::<dyn FnMut()>::new(move || {
            let next = queue.borrow_mut().pop_front();
            if let Some(done) = next {
                let _ = done.send(());
            }
        });
        let has_immediate = js_sys::Reflect::get(&js_sys::global(), &"setImmediate".into())
            .is_ok_and(|f| f.is_function());
        let hop = if has_immediate {
            Hop::Immediate(handler)
        } else {
            let channel = MessageChannel::new();
            let receiver = channel.port1();
            receiver.set_onmessage(handler.as_ref().unchecked_ref());
            Hop::Channel {
                sender: channel.port2(),
                _receiver: receiver,
                _handler: handler,
            }
        };
        Self { waiting, hop }
    }

    /// A future that completes in the next event-loop task.
    fn hop(&self) -> oneshot::Receiver<()> {
        let (done, hopped) = oneshot::channel();
        self.waiting.borrow_mut().push_back(done);
        match &self.hop {
            Hop::Immediate(handler) => set_immediate(handler.as_ref().unchecked_ref()),
            Hop::Channel { sender, .. } => sender.post_message(&JsValue::UNDEFINED),
        }
        hopped
    }
}

thread_local! {
    static NEXT_TASK: NextTask = NextTask::new();
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
        let hopped = NEXT_TASK.with(NextTask::hop);
        Box::pin(async move {
            let _ = hopped.await;
        })
    }

    fn spawn(&self, task: LocalBoxFuture<'static, ()>) {
        let stopped = self.stopped.clone();
        wasm_bindgen_futures::spawn_local(async move {
            select(task, stopped).await;
        });
    }
}
