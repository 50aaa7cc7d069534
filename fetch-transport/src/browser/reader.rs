//! `Response.body` read piece by piece, with the browser's chunk kept on the JS side.
//!
//! A `ReadableStream` hands out chunks of whatever size the browser likes (Firefox: everything
//! it has buffered, megabytes). Copying such a chunk whole into wasm memory would grow the
//! memory to the largest chunk ever seen, for good. Instead the current chunk (a `Uint8Array`)
//! stays in JS and at most [`MAX_PIECE`] bytes of it are copied per poll. What wasm holds is the
//! pieces the consumer has not dropped yet.
//!
//! One read ahead: as soon as a chunk arrives the next `read()` is started, so the next chunk
//! is waiting (in JS memory) when this one is used up. A `read()` of a network body resolves in
//! a task of its own; on a page whose main thread also runs an emulator that task waits behind
//! the emulator's time slice, and without the read ahead every chunk paid that wait in turn.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures::Stream;
use js_sys::Uint8Array;
use wasm_bindgen::{JsCast, JsValue};
use wasm_bindgen_futures::JsFuture;
use web_sys::{AbortController, AbortSignal, ReadableStream, ReadableStreamDefaultReader};

use crate::BodyError;

/// The largest piece handed out, in bytes. Each open response may hold one in wasm memory
/// while the guest is slow to take it, so with hundreds of downloads at once the size is
/// memory the tab keeps (a wasm memory never shrinks); 16 KiB is still eleven full segments.
pub(crate) const MAX_PIECE: u32 = 16 * 1024;

/// An `AbortController` that aborts its request when dropped (a no-op once the response body
/// has been read to its end).
pub(super) struct AbortOnDrop(AbortController);

impl AbortOnDrop {
    pub(super) fn new() -> Result<Self, JsValue> {
        AbortController::new().map(Self)
    }

    /// The signal to pass to `fetch()`.
    pub(super) fn signal(&self) -> AbortSignal {
        self.0.signal()
    }

    /// Aborts now: a pending `fetch()` rejects, a body being read errors.
    pub(super) fn abort(&self) {
        self.0.abort();
    }
}

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A response body stream over a `ReadableStreamDefaultReader`.
pub(super) struct ResponseBody {
    reader: ReadableStreamDefaultReader,
    /// The chunk being handed out (JS memory) and the offset of its next unread byte.
    chunk: Option<(Uint8Array, u32)>,
    /// The `read()` in progress: started as soon as the previous chunk arrived (one ahead).
    read: Option<JsFuture>,
    /// The stream ended or failed: nothing more to read, nothing to cancel.
    finished: bool,
    /// Aborts the fetch when the body is dropped before its end.
    abort: AbortOnDrop,
}

impl ResponseBody {
    /// Locks `stream` for reading; `abort` ends the fetch when the body is dropped.
    pub(super) fn new(stream: &ReadableStream, abort: AbortOnDrop) -> Result<Self, JsValue> {
        Ok(Self {
            reader: ReadableStreamDefaultReader::new(stream)?,
            chunk: None,
            read: None,
            finished: false,
            abort,
        })
    }

    /// Copies the next piece of the current chunk into wasm memory, if any is left.
    fn next_piece(&mut self) -> Option<Bytes> {
        let (chunk, offset) = self.chunk.as_mut()?;
        let len = chunk.length();
        if *offset >= len {
            self.chunk = None;
            return None;
        }
        let end = *offset + (len - *offset).min(MAX_PIECE);
        let piece = chunk.subarray(*offset, end).to_vec();
        *offset = end;
        if end == len {
            // Let the browser free the chunk as soon as it is used up.
            self.chunk = None;
        }
        Some(Bytes::from(piece))
    }

    fn fail(&mut self, reason: String) -> Poll<Option<Result<Bytes, BodyError>>> {
        self.finished = true;
        self.chunk = None;
        Poll::Ready(Some(Err(BodyError::new(reason))))
    }
}

impl Stream for ResponseBody {
    type Item = Result<Bytes, BodyError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        loop {
            if this.finished {
                return Poll::Ready(None);
            }
            if let Some(piece) = this.next_piece() {
                return Poll::Ready(Some(Ok(piece)));
            }
            let read = this
                .read
                .get_or_insert_with(|| JsFuture::from(this.reader.read()));
            let outcome = match Pin::new(read).poll(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(outcome) => outcome,
            };
            this.read = None;
            let result: web_sys::ReadableStreamReadResult = match outcome {
                Ok(result) => result.unchecked_into(),
                Err(e) => {
                    return this.fail(format!(
                        "reading the response body failed: {}",
                        describe(&e)
                    ))
                }
            };
            if result.get_done().unwrap_or(false) {
                this.finished = true;
                return Poll::Ready(None);
            }
            match result.get_value().dyn_into::<Uint8Array>() {
                // An empty chunk is legal; the loop reads the next one.
                Ok(chunk) => {
                    this.chunk = Some((chunk, 0));
                    // Read ahead: the next chunk travels while this one is handed out.
                    this.read = Some(JsFuture::from(this.reader.read()));
                }
                Err(other) => {
                    return this.fail(format!(
                        "the response body delivered {} instead of bytes",
                        other.js_typeof().as_string().unwrap_or_default()
                    ))
                }
            }
        }
    }
}

impl Drop for ResponseBody {
    fn drop(&mut self) {
        if !self.finished {
            // Dropped before its end: stop the download. A rejection of `cancel()` is handled
            // (and ignored) by the JsFuture, so it never surfaces as an unhandled rejection.
            drop(JsFuture::from(self.reader.cancel()));
            self.abort.abort();
        }
    }
}

/// A JS exception or rejection as text: `Name: message`, with its `cause` (node's fetch puts the
/// network error there, e.g. `connect ECONNREFUSED`).
pub(crate) fn describe(value: &JsValue) -> String {
    describe_at(value, 0)
}

fn describe_at(value: &JsValue, depth: usize) -> String {
    if let Some(err) = value.dyn_ref::<js_sys::Error>() {
        let mut text = format!(
            "{}: {}",
            String::from(err.name()),
            String::from(err.message())
        );
        let cause = err.cause();
        if depth < 3 && !cause.is_undefined() && !cause.is_null() {
            text.push_str(&format!(" (cause: {})", describe_at(&cause, depth + 1)));
        }
        return text;
    }
    match value.as_string() {
        Some(text) => text,
        None => format!("{value:?}"),
    }
}
