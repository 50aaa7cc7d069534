//! WebSockets in the browser (the relay's, and the guest's WebSockets the proxy carries):
//! [`BrowserDialer`] opens the page's (or worker's) `WebSocket` with
//! `binaryType = "arraybuffer"`, and its [`MessageSocket`] turns the socket's events into the
//! polls the relay's driver and the proxy make.
//!
//! - Dialing resolves on `open`. An `error` or `close` before it fails with
//!   [`SocketError::Connect`]; the browser does not say why (refused, unreachable, a TLS
//!   failure, a subprotocol the server did not accept all look the same to a page). The
//!   subprotocol the server chose is `WebSocket.protocol`.
//! - Text and binary messages go into a queue the driver takes from (the relay's driver
//!   ignores text: Wisp sends none). A clean `close` ends the queue (`Ok(None)` after what is
//!   queued; its code and reason are `peer_close`); an unclean one, or an `error` before it,
//!   is a [`SocketError::Lost`]. A message over the dialer's message limit fails the socket
//!   with [`SocketError::TooLarge`] (the browser itself has no such limit).
//! - Closing: a script may send only 1000 and 3000–4999, and a reason of at most 123 bytes;
//!   other codes are sent as 1000 and longer reasons are cut.
//! - Sending: `send` copies the message into the browser at once. `poll_ready` waits while
//!   `bufferedAmount` (bytes handed to the browser, not yet on the network) is above
//!   [`MAX_BUFFERED`]. No event says it went down, so while over the bound the socket looks
//!   again every [`RECHECK`] on the embedder's timer (a page in a background tab has its
//!   timers throttled, which then slows uploads through the relay; a worker is not throttled
//!   as hard).
//!
//! Memory: the browser's `WebSocket` has no receive backpressure. The relay's driver stops
//! *processing* messages while a stream's buffer is full (the guest is not reading), but the
//! browser keeps reading the network and firing `message` events into this queue. The queued
//! messages stay in JavaScript memory (a `Uint8Array` each, copied into wasm memory only when
//! the driver takes them: wasm memory never shrinks), and they are bounded: beyond
//! [`MAX_UNREAD`] bytes the socket fails with [`SocketError::Lost`] and is closed, so a fast
//! relay and a guest that stopped reading cannot take the tab's memory. The driver then
//! reconnects; the streams of the lost connection end with an error. A download much faster
//! than the guest can read therefore fails once it is that far ahead (natively TCP's window
//! pushes back on the server instead). The streams API (`WebSocketStream`) would give real
//! backpressure but only Chromium has it.
//!
//! The event handlers are `Closure`s owned by the socket; dropping the socket (or the dial's
//! future) removes them from the `WebSocket` and closes it if still connecting or open.

use std::cell::RefCell;
use std::future::poll_fn;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use futures::future::LocalBoxFuture;
use js_sys::{ArrayBuffer, Uint8Array};
use wasm_bindgen::prelude::*;
use wasm_bindgen::JsCast;
use web_sys::{BinaryType, CloseEvent, Event, MessageEvent, WebSocket};

use super::inbox::Inbox;
use super::socket::{Close, Dialed, Dialer, MessageSocket, SocketError, WsMessage};
use crate::browser::describe;
use crate::timer::Timer;

/// Most bytes received from the relay and not yet processed by the driver. Far above what
/// flowing traffic queues (the driver takes messages as fast as the guest reads), so it is
/// reached only by a relay that keeps sending to a guest that stopped reading; then the
/// connection fails rather than the tab's memory growing without end.
pub const MAX_UNREAD: usize = 64 << 20;
/// `bufferedAmount` above which `poll_ready` waits: enough to keep the network busy between
/// two looks, little enough that a slow relay stops the guest's writers soon.
pub const MAX_BUFFERED: usize = 1 << 20;
/// How often `poll_ready` looks at `bufferedAmount` again while it is over the bound.
pub const RECHECK: Duration = Duration::from_millis(5);

/// `WebSocket.readyState` values.
const CONNECTING: u16 = 0;
const OPEN: u16 = 1;
/// The close code of a normal goodbye.
const NORMAL_CLOSURE: u16 = 1000;
/// The longest close reason a script may send, in bytes.
const MAX_CLOSE_REASON: usize = 123;

/// Opens WebSockets with the browser's `WebSocket` (pages, workers, and node 22+, whichever
/// global `WebSocket` there is).
#[derive(Clone)]
pub struct BrowserDialer {
    timer: Rc<dyn Timer>,
    max_unread: usize,
    max_message: usize,
}

impl BrowserDialer {
    /// A dialer whose sockets wait on `timer` (the embedder's runtime) while the browser's
    /// send buffer is full; [`MAX_UNREAD`] bytes may wait unread, with no message limit.
    pub fn new(timer: Rc<dyn Timer>) -> Self {
        Self {
            timer,
            max_unread: MAX_UNREAD,
            max_message: usize::MAX,
        }
    }

    /// The same dialer whose sockets fail on a message over `max_message` bytes and on more
    /// than `max_unread` bytes received and not yet taken.
    pub fn limits(mut self, max_message: usize, max_unread: usize) -> Self {
        self.max_message = max_message;
        self.max_unread = max_unread;
        self
    }
}

impl std::fmt::Debug for BrowserDialer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BrowserDialer").finish_non_exhaustive()
    }
}

#[async_trait(?Send)]
impl Dialer for BrowserDialer {
    async fn dial(&self, url: &str, protocols: &[&str]) -> Result<Dialed, SocketError> {
        // Dropping this future before `open` drops the socket, which closes the WebSocket.
        let socket = BrowserSocket::connect(url, protocols, self.timer.clone(), self)?;
        poll_fn(|cx| socket.inbox.borrow_mut().poll_open(cx)).await?;
        let protocol = Some(socket.ws.protocol()).filter(|p| !p.is_empty());
        tracing::debug!(url, ?protocol, "relay: WebSocket open");
        Ok(Dialed {
            socket: Box::new(socket),
            protocol,
        })
    }
}

/// The event handlers, kept alive as long as the `WebSocket` may call them.
struct Handlers {
    _open: Closure<dyn FnMut(Event)>,
    _message: Closure<dyn FnMut(MessageEvent)>,
    _error: Closure<dyn FnMut(Event)>,
    _close: Closure<dyn FnMut(CloseEvent)>,
}

/// A message as the browser delivered it: text already a Rust string, binary still in
/// JavaScript memory.
enum Received {
    Text(String),
    Binary(Uint8Array),
}

/// One browser `WebSocket`.
struct BrowserSocket {
    ws: WebSocket,
    inbox: Rc<RefCell<Inbox<Received>>>,
    timer: Rc<dyn Timer>,
    /// The pending look at `bufferedAmount` while over [`MAX_BUFFERED`].
    recheck: Option<LocalBoxFuture<'static, ()>>,
    /// `close()` was called.
    closing: bool,
    _handlers: Handlers,
}

impl BrowserSocket {
    /// Creates the `WebSocket` and attaches the handlers; it is connecting when this returns.
    fn connect(
        url: &str,
        protocols: &[&str],
        timer: Rc<dyn Timer>,
        dialer: &BrowserDialer,
    ) -> Result<Self, SocketError> {
        let ws = if protocols.is_empty() {
            WebSocket::new(url)
        } else {
            let list: js_sys::Array = protocols.iter().map(|p| JsValue::from_str(p)).collect();
            WebSocket::new_with_str_sequence(url, &list)
        }
        .map_err(|err| {
            let reason = describe(&err);
            // A SyntaxError: not ws:// or wss://, a fragment, a malformed subprotocol. Else a
            // SecurityError (a port the browser blocks, ws:// from an https page) or a
            // ReferenceError (no global WebSocket: node before 22).
            let syntax = err
                .dyn_ref::<js_sys::Error>()
                .is_some_and(|e| e.name() == "SyntaxError");
            if syntax {
                SocketError::BadUrl {
                    url: url.to_string(),
                    reason,
                }
            } else {
                SocketError::Connect {
                    url: url.to_string(),
                    reason,
                }
            }
        })?;
        ws.set_binary_type(BinaryType::Arraybuffer);
        let inbox = Rc::new(RefCell::new(
            Inbox::new(url, dialer.max_unread).with_max_message(dialer.max_message),
        ));

        let open = {
            let inbox = inbox.clone();
            Closure::<dyn FnMut(Event)>::new(move |_: Event| inbox.borrow_mut().opened())
        };
        let message = {
            let inbox = inbox.clone();
            let ws = ws.clone();
            let url = url.to_string();
            Closure::<dyn FnMut(MessageEvent)>::new(move |event: MessageEvent| {
                let data = event.data();
                let (message, len) = match data.dyn_into::<ArrayBuffer>() {
                    Ok(buffer) => {
                        let bytes = Uint8Array::new(&buffer);
                        let len = bytes.length() as usize;
                        (Received::Binary(bytes), len)
                    }
                    Err(data) => match data.as_string() {
                        Some(text) => {
                            let len = text.len();
                            (Received::Text(text), len)
                        }
                        None => return,
                    },
                };
                let refused = inbox.borrow_mut().message(message, len);
                if let Err(err) = refused {
                    tracing::warn!(url = %url, error = %err, "WebSocket: closing it");
                    let _ = ws.close_with_code(NORMAL_CLOSURE);
                }
            })
        };
        let error = {
            let inbox = inbox.clone();
            let url = url.to_string();
            Closure::<dyn FnMut(Event)>::new(move |_: Event| {
                tracing::debug!(url = %url, "relay: WebSocket error event");
                inbox.borrow_mut().errored();
            })
        };
        let close = {
            let inbox = inbox.clone();
            let url = url.to_string();
            Closure::<dyn FnMut(CloseEvent)>::new(move |event: CloseEvent| {
                let (code, reason, clean) = (event.code(), event.reason(), event.was_clean());
                let mut inbox = inbox.borrow_mut();
                let (queued, peak) = inbox.queued_bytes();
                tracing::info!(
                    url = %url,
                    code,
                    reason = %reason,
                    clean,
                    queued,
                    peak_queued = peak,
                    "relay: the WebSocket closed"
                );
                inbox.closed(code, &reason, clean);
            })
        };
        ws.set_onopen(Some(open.as_ref().unchecked_ref()));
        ws.set_onmessage(Some(message.as_ref().unchecked_ref()));
        ws.set_onerror(Some(error.as_ref().unchecked_ref()));
        ws.set_onclose(Some(close.as_ref().unchecked_ref()));
        Ok(Self {
            ws,
            inbox,
            timer,
            recheck: None,
            closing: false,
            _handlers: Handlers {
                _open: open,
                _message: message,
                _error: error,
                _close: close,
            },
        })
    }
}

impl MessageSocket for BrowserSocket {
    fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Result<Option<WsMessage>, SocketError>> {
        // Copied into wasm memory only now, one message at a time.
        self.inbox.borrow_mut().poll_recv(cx).map_ok(|message| {
            message.map(|message| match message {
                Received::Binary(bytes) => WsMessage::Binary(bytes.to_vec()),
                Received::Text(text) => WsMessage::Text(text),
            })
        })
    }

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), SocketError>> {
        loop {
            self.inbox.borrow().sendable()?;
            if self.ws.buffered_amount() as usize <= MAX_BUFFERED {
                self.recheck = None;
                return Poll::Ready(Ok(()));
            }
            let timer = &self.timer;
            let recheck = self.recheck.get_or_insert_with(|| timer.sleep(RECHECK));
            match recheck.as_mut().poll(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(()) => self.recheck = None,
            }
        }
    }

    fn send(&mut self, message: WsMessage) -> Result<(), SocketError> {
        self.inbox.borrow().sendable()?;
        // The browser copies the bytes before this returns.
        let sent = match &message {
            WsMessage::Binary(bytes) => self.ws.send_with_u8_array(bytes),
            WsMessage::Text(text) => self.ws.send_with_str(text),
        };
        sent.map_err(|err| {
            let err = SocketError::Lost(format!("the browser refused to send: {}", describe(&err)));
            self.inbox.borrow_mut().fail(err.clone());
            err
        })
    }

    /// Ready at once: the browser took each message whole in `send` and transmits it on its
    /// own (`poll_ready` is where a full send buffer waits). Fails once the connection broke;
    /// after a clean close the receiving side reports the end. The driver flushes on every
    /// wake-up, also while its receiving is paused, so this is where it learns of a failure
    /// then (the receive bound reached, above all): the task is woken when the connection
    /// ends.
    fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), SocketError>> {
        match self.inbox.borrow_mut().poll_broken(cx) {
            Poll::Ready(err) => Poll::Ready(Err(err)),
            Poll::Pending => Poll::Ready(Ok(())),
        }
    }

    fn poll_close(&mut self, cx: &mut Context<'_>, close: &Close) -> Poll<Result<(), SocketError>> {
        if !self.closing {
            self.closing = true;
            if matches!(self.ws.ready_state(), CONNECTING | OPEN) {
                let (code, reason) = script_close(close);
                self.ws
                    .close_with_code_and_reason(code, reason)
                    .map_err(|err| SocketError::Lost(describe(&err)))?;
            }
        }
        // The browser's `close` event: the closing handshake is over.
        self.inbox.borrow_mut().poll_ended(cx).map(Ok)
    }

    fn peer_close(&self) -> Option<Close> {
        self.inbox.borrow().peer_close()
    }
}

/// The code and reason a script may send for `close`: 1000 or 3000–4999, at most 123 bytes.
fn script_close(close: &Close) -> (u16, &str) {
    let code = match close.code {
        NORMAL_CLOSURE | 3000..=4999 => close.code,
        _ => NORMAL_CLOSURE,
    };
    let mut end = close.reason.len().min(MAX_CLOSE_REASON);
    while !close.reason.is_char_boundary(end) {
        end -= 1;
    }
    (code, &close.reason[..end])
}

impl Drop for BrowserSocket {
    fn drop(&mut self) {
        // No handler may run once the closures are gone.
        self.ws.set_onopen(None);
        self.ws.set_onmessage(None);
        self.ws.set_onerror(None);
        self.ws.set_onclose(None);
        if matches!(self.ws.ready_state(), CONNECTING | OPEN) {
            let _ = self.ws.close_with_code(NORMAL_CLOSURE);
        }
    }
}
