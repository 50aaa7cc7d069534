//! Plain HTTP through the relay: [`RelayHttp`] speaks HTTP/1.1 to the origin over a relay
//! stream (requests framed like the proxy frames them, responses parsed with httparse and the
//! proxy's body decoder), and [`ViaRelay`] decides per request whether the proxy's transport
//! (`fetch()` in the browser) or the relay carries it: `fetch` first and the relay when the
//! browser refuses (CORS, a network error) and the request can be replayed, always the relay,
//! or never, with per-destination exceptions in the allow/deny pattern syntax.
//!
//! Only `http://` goes this way: with a relay, HTTPS already travels end to end through CONNECT
//! and transparent 443, and an `https://` request that still reaches the transport (the
//! proxy's own TLS port) stays with `fetch()`.

use std::rc::Rc;
use std::time::Duration;

use async_trait::async_trait;
use fetch_transport::relay::Relay;
use fetch_transport::{Body, BodyError, DestinationFilter, Timer, Transport, TransportError};
use futures::StreamExt;
use http::header::{CONNECTION, TRANSFER_ENCODING};
use http::{HeaderMap, Request, Response};
use http_proxy::client::{Client, ClientConfig, ClientError};

use crate::options::{RelayHttpMode, RelayOptions};

/// The header on every response that came through the relay, so a user (and a test) can
/// tell which way a request went.
pub const VIA_RELAY: (&str, &str) = ("x-c2w-via", "relay");
/// How long a response through the relay may stay silent when the options set no `timeout`.
pub const RELAY_HTTP_IDLE: Duration = Duration::from_secs(60);

/// HTTP/1.1 to origins over relay streams, one stream per request, closed from our side once
/// the response is complete (the origin is not asked to close: wisp-js 0.5.0 drops data it
/// still holds when the origin closes first, and never closes the stream). A response that
/// sends nothing for `idle` fails, so a relay that stops mid-body cannot hang the guest.
/// The exchange itself is http-proxy's [`Client`].
pub struct RelayHttp {
    relay: Relay,
    options: Rc<RelayOptions>,
    destinations: DestinationFilter,
    client: Client,
}

impl RelayHttp {
    /// Requests through `relay`, names mapped by `options.hosts`, destinations checked against
    /// the `allow`/`deny` options as the transport checks them; a response silent for `idle`
    /// (timed with `timer`) fails.
    pub fn new(
        relay: Relay,
        options: Rc<RelayOptions>,
        destinations: DestinationFilter,
        timer: Rc<dyn Timer>,
        idle: Duration,
    ) -> Self {
        let config = ClientConfig {
            idle_timeout: idle,
            ..ClientConfig::default()
        };
        Self {
            relay,
            options,
            destinations,
            client: Client::new(config, timer),
        }
    }

    /// Sends `request` (an absolute `http://` URI) and returns the response with its body
    /// streamed from the relay.
    pub async fn send(&self, request: Request<Body>) -> Result<Response<Body>, TransportError> {
        let url = request.uri().to_string();
        let uri = request.uri();
        if uri.scheme_str() != Some("http") {
            return Err(TransportError::InvalidRequest {
                url: url.clone(),
                reason: "only http:// requests go through the relay".into(),
            });
        }
        let Some(host) = uri.host().map(|h| h.trim_matches(['[', ']']).to_string()) else {
            return Err(TransportError::InvalidRequest {
                url: url.clone(),
                reason: "no host".into(),
            });
        };
        if let Ok(parsed) = url::Url::parse(&url) {
            if let Err(reason) = self.destinations.check(&parsed) {
                return Err(TransportError::Denied {
                    url: url.clone(),
                    reason,
                });
            }
        }
        let port = uri.port_u16().unwrap_or(80);
        let (mut parts, body) = request.into_parts();
        // The origin is never asked to close (see the type's docs): the guest's
        // connection-specific fields stay behind, as every hop-by-hop one does.
        parts.headers.remove(CONNECTION);
        let stream = self
            .relay
            .connect_tcp(self.options.target(&host), port)
            .await
            .map_err(|err| TransportError::Blocked {
                url: url.clone(),
                reason: err.to_string(),
            })?;
        let response = self
            .client
            .send(stream, Request::from_parts(parts, body))
            .await
            .map_err(|err| relay_error(&url, &err))?;
        let (head, body) = response.into_parts();
        let len = body.len();
        // The stream is dropped (closed) with the body, whatever the framing allows.
        let body = body.map(|piece| piece.map_err(|err| BodyError::new(relay_reason(&err))));
        let mut response = Response::new(Body::from_stream(body, len));
        *response.status_mut() = head.status;
        let mut kept = HeaderMap::new();
        for (name, value) in head.headers.iter() {
            if name == TRANSFER_ENCODING || fetch_transport::policy::is_hop_by_hop(name) {
                continue;
            }
            kept.append(name.clone(), value.clone());
        }
        kept.insert(VIA_RELAY.0, http::HeaderValue::from_static(VIA_RELAY.1));
        *response.headers_mut() = kept;
        Ok(response)
    }
}

/// A failed exchange as the transport reports it: an aborted upload when the request body
/// could not be sent, else the origin cannot be reached through the relay.
fn relay_error(url: &str, err: &ClientError) -> TransportError {
    let url = url.to_string();
    let reason = relay_reason(err);
    match err {
        ClientError::SendBody(_)
        | ClientError::RequestBody(_)
        | ClientError::RequestBodyLength { .. } => TransportError::Aborted { url, reason },
        _ => TransportError::Blocked { url, reason },
    }
}

/// The client's failure in the relay's words: the server is the origin, and failures of the
/// stream are the relay's.
fn relay_reason(err: &ClientError) -> String {
    match err {
        ClientError::SendHead(e) | ClientError::SendBody(e) | ClientError::Read(e) => {
            format!("relay: {e}")
        }
        ClientError::TimedOut(idle) => format!("relay: nothing from the origin for {idle:?}"),
        ClientError::NotReading(idle) => format!("relay: the origin took nothing for {idle:?}"),
        ClientError::RequestBody(e) => e.to_string(),
        ClientError::ClosedBeforeResponse => {
            "the origin closed the connection without a response".into()
        }
        ClientError::ClosedMidHead => "the origin closed the connection mid-head".into(),
        ClientError::ClosedMidBody => "the origin closed the connection mid-body".into(),
        ClientError::HeadTooLarge(limit) => {
            format!("the origin's response head is over {limit} bytes")
        }
        ClientError::TooManyHeaders(limit) => {
            format!("malformed response head from the origin: more than {limit} fields")
        }
        ClientError::Malformed(e) => format!("malformed response head from the origin: {e}"),
        ClientError::BadStatus(code) => {
            format!("malformed response head from the origin: status {code}")
        }
        ClientError::BadHeader(name) => {
            format!("malformed response head from the origin: the field {name:?}")
        }
        ClientError::UnexpectedUpgrade => {
            "the origin switched protocols (101) though no upgrade was asked for".into()
        }
        ClientError::TransferEncoding => "unsupported Transfer-Encoding from the origin".into(),
        ClientError::ContentLength => "invalid Content-Length from the origin".into(),
        ClientError::Body(e) => e.to_string(),
        other => other.to_string(),
    }
}

/// The proxy's transport with the relay beside it: decides per `http://` request which one
/// carries it (see the module docs).
pub struct ViaRelay {
    fetch: Rc<dyn Transport>,
    relay: RelayHttp,
    mode: RelayHttpMode,
    relay_only: DestinationFilter,
    fetch_only: DestinationFilter,
    /// Largest request body held for a replay through the relay.
    max_replay: usize,
}

impl ViaRelay {
    /// `fetch` and `relay` with the options' mode and exceptions; bodies up to `max_replay`
    /// bytes are held so a refused request can be sent again.
    pub fn new(
        fetch: Rc<dyn Transport>,
        relay: RelayHttp,
        mode: RelayHttpMode,
        relay_only: DestinationFilter,
        fetch_only: DestinationFilter,
        max_replay: usize,
    ) -> Self {
        Self {
            fetch,
            relay,
            mode,
            relay_only,
            fetch_only,
            max_replay,
        }
    }

    /// The mode for `url`: an exception when one matches, else the configured mode.
    fn mode_for(&self, url: &url::Url) -> RelayHttpMode {
        let listed =
            |filter: &DestinationFilter| !filter.allowed().is_empty() && filter.check(url).is_ok();
        if listed(&self.fetch_only) {
            RelayHttpMode::Never
        } else if listed(&self.relay_only) {
            RelayHttpMode::Always
        } else {
            self.mode
        }
    }
}

#[async_trait(?Send)]
impl Transport for ViaRelay {
    async fn send(&self, request: Request<Body>) -> Result<Response<Body>, TransportError> {
        let Ok(url) = url::Url::parse(&request.uri().to_string()) else {
            return self.fetch.send(request).await;
        };
        if url.scheme() != "http" {
            return self.fetch.send(request).await;
        }
        match self.mode_for(&url) {
            RelayHttpMode::Never => self.fetch.send(request).await,
            RelayHttpMode::Always => self.relay.send(request).await,
            RelayHttpMode::Fallback => {
                let (parts, body) = request.into_parts();
                let replayable = body.len().is_some_and(|n| n <= self.max_replay as u64);
                if !replayable {
                    return self.fetch.send(Request::from_parts(parts, body)).await;
                }
                let bytes =
                    body.collect(self.max_replay)
                        .await
                        .map_err(|err| TransportError::Aborted {
                            url: url.to_string(),
                            reason: err.to_string(),
                        })?;
                let first = Request::from_parts(parts.clone(), Body::full(bytes.clone()));
                match self.fetch.send(first).await {
                    Err(TransportError::Blocked { reason, .. }) => {
                        tracing::info!(%url, %reason, "fetch refused; trying the relay");
                        let again = Request::from_parts(parts, Body::full(bytes));
                        self.relay.send(again).await.map_err(|err| match err {
                            TransportError::Blocked { url, reason: relay } => {
                                TransportError::Blocked {
                                    url,
                                    reason: format!("{reason}; through the relay: {relay}"),
                                }
                            }
                            other => other,
                        })
                    }
                    other => other,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_relay_names_the_origin_in_its_reasons_and_aborts_failed_uploads() {
        let url = "http://a.test/";
        let blocked = |err: ClientError| match relay_error(url, &err) {
            TransportError::Blocked { reason, .. } => reason,
            other => panic!("{other:?}"),
        };
        assert_eq!(
            blocked(ClientError::ClosedBeforeResponse),
            "the origin closed the connection without a response"
        );
        assert_eq!(
            blocked(ClientError::ClosedMidHead),
            "the origin closed the connection mid-head"
        );
        assert_eq!(
            blocked(ClientError::HeadTooLarge(65536)),
            "the origin's response head is over 65536 bytes"
        );
        assert_eq!(
            blocked(ClientError::ContentLength),
            "invalid Content-Length from the origin"
        );
        assert_eq!(
            blocked(ClientError::TimedOut(RELAY_HTTP_IDLE)),
            "relay: nothing from the origin for 60s"
        );
        assert_eq!(
            blocked(ClientError::Malformed(httparse::Error::Status)),
            "malformed response head from the origin: invalid response status"
        );
        let aborted = relay_error(
            url,
            &ClientError::RequestBody(BodyError::new("guest went away")),
        );
        assert!(matches!(
            aborted,
            TransportError::Aborted { reason, .. } if reason == "body stream failed: guest went away"
        ));
        let aborted = relay_error(
            url,
            &ClientError::SendBody(std::io::Error::other("stream closed")),
        );
        assert!(matches!(
            aborted,
            TransportError::Aborted { reason, .. } if reason == "relay: stream closed"
        ));
    }
}
