//! Writing the response to the guest: the proxy's own pages and errors whole, an origin's
//! response streamed with the framing the guest's version allows.

use bytes::Bytes;
use fetch_transport::Body;
use futures::io::AsyncWrite;
use futures::StreamExt;
use http::{HeaderMap, Method, StatusCode};

use crate::body::encode::{encode_chunk, write_response_head, ResponseFraming, LAST_CHUNK};
use crate::error::ServeError;
use crate::error_page::ErrorPage;
use crate::head::Version;
use crate::io::Outbound;
use crate::stats::Counters;
use crate::Proxy;

/// What becomes of the connection once a request is answered.
pub(crate) enum Outcome {
    /// The next request may follow on the same connection.
    KeepAlive,
    /// The connection closes.
    Close,
}

impl Outcome {
    /// `KeepAlive` when `keep_alive`, else `Close`.
    pub(crate) fn keep_alive_if(keep_alive: bool) -> Self {
        if keep_alive {
            Self::KeepAlive
        } else {
            Self::Close
        }
    }
}

/// Writes a response the proxy made itself (an error or one of its own pages), framed with
/// its length, with no body for HEAD (and 204/304).
pub(crate) async fn write_page<W: AsyncWrite + Unpin>(
    proxy: &Proxy,
    out: &mut Outbound<W>,
    page: &ErrorPage,
    method: &Method,
    version: Version,
    keep_alive: bool,
) -> Result<(), ServeError> {
    let len = page.body.len() as u64;
    let framing = ResponseFraming::choose(method, page.status, Some(len), version);
    let mut buf = Vec::with_capacity(256 + page.body.len());
    write_response_head(
        &mut buf,
        page.status,
        &page.headers,
        framing,
        keep_alive,
        version,
    );
    if framing != ResponseFraming::NoBody {
        buf.extend_from_slice(&page.body);
    }
    Counters::add(&proxy.counters.bytes_to_guest, buf.len() as u64);
    out.write_all(&buf).await?;
    Ok(())
}

/// Streams a response to the guest. Returns false when the body could not be delivered whole
/// (the origin's body failed or did not match its announced length): the connection is then
/// closed so the guest sees a truncated response, never a silently short success.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn write_response<W: AsyncWrite + Unpin>(
    proxy: &Proxy,
    out: &mut Outbound<W>,
    status: StatusCode,
    headers: &HeaderMap,
    framing: ResponseFraming,
    mut body: Body,
    keep_alive: bool,
    version: Version,
) -> Result<bool, ServeError> {
    let mut buf = Vec::with_capacity(1024);
    write_response_head(&mut buf, status, headers, framing, keep_alive, version);
    Counters::add(&proxy.counters.bytes_to_guest, buf.len() as u64);
    out.write_all(&buf).await?;
    if framing == ResponseFraming::NoBody {
        return Ok(true);
    }
    let mut sent: u64 = 0;
    while let Some(piece) = body.next().await {
        let data: Bytes = match piece {
            Ok(data) => data,
            Err(err) => {
                tracing::info!(error = %err, "origin body failed; closing the guest connection");
                return Ok(false);
            }
        };
        sent += data.len() as u64;
        if let ResponseFraming::Length(n) = framing {
            if sent > n {
                tracing::info!(
                    announced = n,
                    "origin sent more than its Content-Length; closing"
                );
                return Ok(false);
            }
        }
        Counters::add(&proxy.counters.bytes_to_guest, data.len() as u64);
        if framing == ResponseFraming::Chunked {
            buf.clear();
            encode_chunk(&data, &mut buf);
            out.write_all(&buf).await?;
        } else {
            out.write_all(&data).await?;
        }
    }
    match framing {
        ResponseFraming::Length(n) if sent != n => {
            tracing::info!(
                announced = n,
                sent,
                "origin body shorter than announced; closing"
            );
            Ok(false)
        }
        ResponseFraming::Chunked => {
            out.write_all(LAST_CHUNK).await?;
            Counters::add(&proxy.counters.bytes_to_guest, LAST_CHUNK.len() as u64);
            Ok(true)
        }
        _ => Ok(true),
    }
}
