//! A streaming message body with an optional known length.

use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures::stream::{LocalBoxStream, Stream};

/// Why a body stream ended before its end.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("body stream failed: {reason}")]
pub struct BodyError {
    /// Human-readable cause (e.g. "connection reset by origin").
    pub reason: String,
}

impl BodyError {
    /// Creates a body error with a human-readable reason.
    pub fn new(reason: impl Into<String>) -> Self {
        Self {
            reason: reason.into(),
        }
    }
}

enum Inner {
    Empty,
    Full(Option<Bytes>),
    Stream(LocalBoxStream<'static, Result<Bytes, BodyError>>),
}

/// A request or response body: empty, one buffer, or a stream of chunks pulled on demand.
///
/// `len()` is the exact length when it is known in advance (Content-Length), which lets the
/// proxy frame a response without chunked encoding.
pub struct Body {
    inner: Inner,
    len: Option<u64>,
}

impl Body {
    /// A body with no bytes (length 0).
    pub fn empty() -> Self {
        Self {
            inner: Inner::Empty,
            len: Some(0),
        }
    }

    /// A body held in one buffer.
    pub fn full(bytes: impl Into<Bytes>) -> Self {
        let bytes = bytes.into();
        let len = Some(bytes.len() as u64);
        let inner = if bytes.is_empty() {
            Inner::Empty
        } else {
            Inner::Full(Some(bytes))
        };
        Self { inner, len }
    }

    /// A body pulled chunk by chunk from `stream`; `len` is its exact length if known.
    pub fn from_stream(
        stream: impl Stream<Item = Result<Bytes, BodyError>> + 'static,
        len: Option<u64>,
    ) -> Self {
        Self {
            inner: Inner::Stream(Box::pin(stream)),
            len,
        }
    }

    /// The exact length in bytes, when known before reading.
    pub fn len(&self) -> Option<u64> {
        self.len
    }

    /// True when the body is known to be empty.
    pub fn is_empty(&self) -> bool {
        self.len == Some(0)
    }

    /// Reads the whole body into memory, failing once it exceeds `limit` bytes.
    pub async fn collect(mut self, limit: usize) -> Result<Bytes, CollectError> {
        use futures::StreamExt;
        if let Some(len) = self.len {
            if len > limit as u64 {
                return Err(CollectError::TooLarge { limit });
            }
        }
        let mut buf = bytes::BytesMut::new();
        while let Some(chunk) = self.next().await {
            let chunk = chunk.map_err(CollectError::Body)?;
            if buf.len() + chunk.len() > limit {
                return Err(CollectError::TooLarge { limit });
            }
            buf.extend_from_slice(&chunk);
        }
        Ok(buf.freeze())
    }
}

/// Why [`Body::collect`] failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CollectError {
    /// The body is longer than the limit.
    #[error("body is larger than the limit of {limit} bytes")]
    TooLarge {
        /// The limit that was exceeded, in bytes.
        limit: usize,
    },
    /// The stream failed.
    #[error(transparent)]
    Body(#[from] BodyError),
}

impl Default for Body {
    fn default() -> Self {
        Self::empty()
    }
}

impl fmt::Debug for Body {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self.inner {
            Inner::Empty => "empty",
            Inner::Full(_) => "full",
            Inner::Stream(_) => "stream",
        };
        f.debug_struct("Body")
            .field("kind", &kind)
            .field("len", &self.len)
            .finish()
    }
}

impl From<Bytes> for Body {
    fn from(bytes: Bytes) -> Self {
        Self::full(bytes)
    }
}

impl From<Vec<u8>> for Body {
    fn from(bytes: Vec<u8>) -> Self {
        Self::full(bytes)
    }
}

impl From<&'static str> for Body {
    fn from(s: &'static str) -> Self {
        Self::full(Bytes::from_static(s.as_bytes()))
    }
}

impl Stream for Body {
    type Item = Result<Bytes, BodyError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        match &mut self.inner {
            Inner::Empty => Poll::Ready(None),
            Inner::Full(bytes) => Poll::Ready(bytes.take().map(Ok)),
            Inner::Stream(stream) => stream.as_mut().poll_next(cx),
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        match &self.inner {
            Inner::Empty => (0, Some(0)),
            Inner::Full(b) => (b.is_some() as usize, Some(b.is_some() as usize)),
            Inner::Stream(s) => s.size_hint(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::executor::block_on;
    use futures::stream;

    #[test]
    fn full_body_yields_once_with_length() {
        let body = Body::full("hello");
        assert_eq!(body.len(), Some(5));
        assert_eq!(
            block_on(body.collect(16)).unwrap(),
            Bytes::from_static(b"hello")
        );
    }

    #[test]
    fn collect_enforces_limit_on_unknown_length() {
        let chunks = vec![
            Ok(Bytes::from_static(b"abcd")),
            Ok(Bytes::from_static(b"efgh")),
        ];
        let body = Body::from_stream(stream::iter(chunks), None);
        assert_eq!(
            block_on(body.collect(6)),
            Err(CollectError::TooLarge { limit: 6 })
        );
    }

    #[test]
    fn collect_rejects_known_length_over_limit_without_reading() {
        let body = Body::from_stream(stream::pending(), Some(100));
        assert_eq!(
            block_on(body.collect(10)),
            Err(CollectError::TooLarge { limit: 10 })
        );
    }

    #[test]
    fn stream_error_is_reported() {
        let chunks = vec![Ok(Bytes::from_static(b"ab")), Err(BodyError::new("reset"))];
        let body = Body::from_stream(stream::iter(chunks), None);
        assert_eq!(
            block_on(body.collect(10)),
            Err(CollectError::Body(BodyError::new("reset")))
        );
    }
}
