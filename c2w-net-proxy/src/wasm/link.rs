//! The browser's [`Link`]: frames pushed by JavaScript (`pushFrame`, or `pushStream` decoded)
//! wait in a bounded inbox for the driver; frames towards the guest go to the `onFrame`
//! callback one by one and to `onStream` QEMU-framed, one call per round of the driver.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::future::poll_fn;
use std::rc::Rc;
use std::task::{Poll, Waker};

use js_sys::{Function, Uint8Array};
use wasm_bindgen::JsValue;

use crate::link::{Link, LinkError};

/// Frames waiting for the driver at most; more are dropped and counted (the stack's own
/// inbound queue has the same bound).
const INBOX_FRAMES: usize = 1024;

/// What the `NetProxy` methods and the driver's link share.
#[derive(Default)]
pub struct JsPort {
    inbox: RefCell<VecDeque<Vec<u8>>>,
    waker: RefCell<Option<Waker>>,
    closed: Cell<bool>,
    dropped: Cell<u64>,
    on_frame: RefCell<Option<Function>>,
    on_stream: RefCell<Option<Function>>,
}

impl JsPort {
    /// A frame from the guest; dropped and counted when the inbox is full.
    pub fn push(&self, frame: Vec<u8>) {
        let mut inbox = self.inbox.borrow_mut();
        if inbox.len() >= INBOX_FRAMES {
            self.dropped.set(self.dropped.get() + 1);
            return;
        }
        inbox.push_back(frame);
        drop(inbox);
        if let Some(waker) = self.waker.borrow_mut().take() {
            waker.wake();
        }
    }

    /// Ends the link: the driver returns once the inbox is drained; callbacks are let go.
    pub fn close(&self) {
        self.closed.set(true);
        self.on_frame.borrow_mut().take();
        self.on_stream.borrow_mut().take();
        if let Some(waker) = self.waker.borrow_mut().take() {
            waker.wake();
        }
    }

    /// Sets the callback that receives each frame towards the guest.
    pub fn set_on_frame(&self, callback: Function) {
        *self.on_frame.borrow_mut() = Some(callback);
    }

    /// Sets the callback that receives QEMU-framed bytes towards the guest.
    pub fn set_on_stream(&self, callback: Function) {
        *self.on_stream.borrow_mut() = Some(callback);
    }

    /// Frames dropped because the inbox was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.get()
    }
}

/// The driver's side of a [`JsPort`].
pub struct JsLink {
    port: Rc<JsPort>,
    /// QEMU-framed bytes gathered for `onStream` during one round.
    framed: Vec<u8>,
}

impl JsLink {
    /// The link over `port`.
    pub fn new(port: Rc<JsPort>) -> Self {
        Self {
            port,
            framed: Vec::new(),
        }
    }
}

fn call(callback: &Function, bytes: &[u8], name: &str) {
    if let Err(err) = callback.call1(&JsValue::NULL, &Uint8Array::from(bytes)) {
        tracing::warn!(error = ?err, "the {name} callback threw");
    }
}

impl Link for JsLink {
    async fn recv(&mut self) -> Result<Option<Vec<u8>>, LinkError> {
        poll_fn(|cx| {
            if let Some(frame) = self.port.inbox.borrow_mut().pop_front() {
                return Poll::Ready(Ok(Some(frame)));
            }
            if self.port.closed.get() {
                return Poll::Ready(Ok(None));
            }
            *self.port.waker.borrow_mut() = Some(cx.waker().clone());
            Poll::Pending
        })
        .await
    }

    fn try_recv(&mut self) -> Result<Option<Vec<u8>>, LinkError> {
        Ok(self.port.inbox.borrow_mut().pop_front())
    }

    async fn send(&mut self, frame: &[u8]) -> Result<(), LinkError> {
        // Cloned out first: a callback may call back in (onFrame, close) and borrow again.
        let on_frame = self.port.on_frame.borrow().clone();
        if let Some(callback) = on_frame {
            call(&callback, frame, "onFrame");
        }
        if self.port.on_stream.borrow().is_some() {
            net_stack::qemu::encode_frame(frame, &mut self.framed);
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), LinkError> {
        if !self.framed.is_empty() {
            let on_stream = self.port.on_stream.borrow().clone();
            if let Some(callback) = on_stream {
                call(&callback, &self.framed, "onStream");
            }
            self.framed.clear();
        }
        Ok(())
    }

    fn dropped(&self) -> u64 {
        self.port.dropped()
    }
}
