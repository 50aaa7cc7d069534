//! The guest's request body as a stream the transport pulls from: bytes are read from the
//! connection only as fast as the transport consumes them (backpressure towards the guest).

use std::cell::RefCell;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};

use bytes::Bytes;
use fetch_transport::BodyError;
use futures::io::AsyncRead;
use futures::Stream;

use crate::body::decode::{Decoder, Step};
use crate::io::SharedInbound;

/// Decoder state shared between the body stream and the connection loop, which checks after
/// the response whether the body was read to its end.
pub(crate) type SharedDecoder = Rc<RefCell<DecoderState>>;

/// The decoder and how it ended.
pub(crate) struct DecoderState {
    pub decoder: Decoder,
    pub failed: bool,
    /// Body bytes handed to the transport so far.
    pub decoded: u64,
    /// `Limits::max_request_body`: the body fails once more than this would be handed on.
    pub limit: Option<u64>,
    /// The body failed because it crossed `limit`.
    pub too_large: bool,
}

impl DecoderState {
    /// A fresh state for one request body.
    pub fn new(decoder: Decoder, limit: Option<u64>) -> Self {
        Self {
            decoder,
            failed: false,
            decoded: 0,
            limit,
            too_large: false,
        }
    }
}

/// A request body stream over the connection's read half.
pub(crate) struct RequestBody<R> {
    inbound: SharedInbound<R>,
    state: SharedDecoder,
}

impl<R> RequestBody<R> {
    pub fn new(inbound: SharedInbound<R>, state: SharedDecoder) -> Self {
        Self { inbound, state }
    }
}

impl<R: AsyncRead + Unpin> Stream for RequestBody<R> {
    type Item = Result<Bytes, BodyError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let mut state = self.state.borrow_mut();
        if state.failed {
            return Poll::Ready(None);
        }
        let mut inbound = self.inbound.borrow_mut();
        loop {
            match state.decoder.decode(&mut inbound.buf) {
                Ok(Step::Data(data)) => {
                    let total = state.decoded.saturating_add(data.len() as u64);
                    if let Some(limit) = state.limit.filter(|limit| total > *limit) {
                        // Nothing of the piece that crosses the limit is handed on.
                        state.failed = true;
                        state.too_large = true;
                        return Poll::Ready(Some(Err(BodyError::new(format!(
                            "request body larger than the proxy's limit of {limit} bytes"
                        )))));
                    }
                    state.decoded = total;
                    return Poll::Ready(Some(Ok(data)));
                }
                Ok(Step::Done) => return Poll::Ready(None),
                Ok(Step::NeedMore) => {}
                Err(err) => {
                    state.failed = true;
                    return Poll::Ready(Some(Err(BodyError::new(err.to_string()))));
                }
            }
            match inbound.poll_fill(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(0)) => {
                    state.failed = true;
                    let reason = state
                        .decoder
                        .finish()
                        .err()
                        .map(|e| e.to_string())
                        .unwrap_or_default();
                    return Poll::Ready(Some(Err(BodyError::new(reason))));
                }
                Poll::Ready(Ok(_)) => {}
                Poll::Ready(Err(err)) => {
                    state.failed = true;
                    return Poll::Ready(Some(Err(BodyError::new(format!(
                        "reading request body: {err}"
                    )))));
                }
            }
        }
    }
}
