//! An in-memory [`Transport`] driven by a script, for testing code built on the trait.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};

use async_trait::async_trait;
use bytes::Bytes;
use futures::channel::mpsc;
use futures::future::LocalBoxFuture;
use futures::Stream;

use crate::config::TransportConfig;
use crate::policy::{prepare, HeaderPolicy};
use crate::{Body, BodyError, Transport, TransportError};

type Handler = Box<dyn FnOnce(http::Request<Body>) -> LocalBoxFuture<'static, Reply>>;
type Reply = Result<http::Response<Body>, TransportError>;

enum Step {
    Reply(Reply),
    Handler(Handler),
}

/// A request as the scripted transport received it.
#[derive(Debug, Clone)]
pub struct RecordedRequest {
    /// The method.
    pub method: http::Method,
    /// The URI as received (before any policy).
    pub uri: http::Uri,
    /// The headers, after the policy when one is configured.
    pub headers: http::HeaderMap,
    /// The whole body for replies queued with [`ScriptedTransport::respond`] or
    /// [`ScriptedTransport::fail`]; `None` when a handler took the body.
    pub body: Option<Result<Bytes, crate::CollectError>>,
}

struct State {
    steps: VecDeque<Step>,
    received: Vec<RecordedRequest>,
}

/// A [`Transport`] that answers each request with the next step of a script (a response, an
/// error or a closure) and records every request. Clones share the same script and record.
///
/// With [`ScriptedTransport::with_policy`] it applies the same routing and header policy as the
/// real backends first, so `Denied`/`InvalidRequest` come out exactly as they would.
#[derive(Clone)]
pub struct ScriptedTransport {
    state: Rc<RefCell<State>>,
    policy: Option<(Rc<TransportConfig>, HeaderPolicy)>,
}

/// How much of a request body a queued step collects into [`RecordedRequest::body`].
const RECORD_LIMIT: usize = 64 * 1024 * 1024;

impl Default for ScriptedTransport {
    fn default() -> Self {
        Self::new()
    }
}

impl ScriptedTransport {
    /// An empty script with no policy: requests are recorded exactly as sent.
    pub fn new() -> Self {
        Self {
            state: Rc::new(RefCell::new(State {
                steps: VecDeque::new(),
                received: Vec::new(),
            })),
            policy: None,
        }
    }

    /// An empty script that applies `config` and `policy` to each request before the script.
    pub fn with_policy(config: TransportConfig, policy: HeaderPolicy) -> Self {
        Self {
            policy: Some((Rc::new(config), policy)),
            ..Self::new()
        }
    }

    /// Queues a response for the next request; the request body is read whole first (into
    /// [`RecordedRequest::body`]), so use [`ScriptedTransport::handle`] for stalling bodies.
    pub fn respond(&self, response: http::Response<Body>) -> &Self {
        self.push(Step::Reply(Ok(response)))
    }

    /// Queues an error for the next request.
    pub fn fail(&self, error: TransportError) -> &Self {
        self.push(Step::Reply(Err(error)))
    }

    /// Queues a closure that receives the next request (body included) and answers it.
    pub fn handle<F, Fut>(&self, handler: F) -> &Self
    where
        F: FnOnce(http::Request<Body>) -> Fut + 'static,
        Fut: Future<Output = Result<http::Response<Body>, TransportError>> + 'static,
    {
        self.push(Step::Handler(Box::new(move |req| Box::pin(handler(req)))))
    }

    fn push(&self, step: Step) -> &Self {
        self.state.borrow_mut().steps.push_back(step);
        self
    }

    /// Every request received so far, in order.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.state.borrow().received.clone()
    }

    /// How many queued steps are still unused.
    pub fn remaining(&self) -> usize {
        self.state.borrow().steps.len()
    }
}

#[async_trait(?Send)]
impl Transport for ScriptedTransport {
    async fn send(
        &self,
        request: http::Request<Body>,
    ) -> Result<http::Response<Body>, TransportError> {
        let uri = request.uri().clone();
        let request = match &self.policy {
            Some((config, policy)) => {
                let p = prepare(config, request, *policy)?;
                let mut req = http::Request::new(p.body);
                *req.method_mut() = p.method;
                *req.uri_mut() = uri.clone();
                *req.headers_mut() = p.headers;
                req
            }
            None => request,
        };
        let mut record = RecordedRequest {
            method: request.method().clone(),
            uri: uri.clone(),
            headers: request.headers().clone(),
            body: None,
        };
        let step = self.state.borrow_mut().steps.pop_front();
        let Some(step) = step else {
            self.state.borrow_mut().received.push(record);
            return Err(TransportError::Aborted {
                url: uri.to_string(),
                reason: "ScriptedTransport: unexpected request, the script is empty".into(),
            });
        };
        match step {
            Step::Reply(reply) => {
                record.body = Some(request.into_body().collect(RECORD_LIMIT).await);
                self.state.borrow_mut().received.push(record);
                reply
            }
            Step::Handler(handler) => {
                self.state.borrow_mut().received.push(record);
                handler(request).await
            }
        }
    }
}

/// The sending half of a [`body_channel`]: the test decides when each chunk arrives, whether
/// the body stalls, ends ([`BodySender::finish`] or drop) or fails ([`BodySender::fail`]).
#[derive(Debug)]
pub struct BodySender {
    tx: mpsc::UnboundedSender<Result<Bytes, BodyError>>,
}

impl BodySender {
    /// Delivers one chunk; returns false when the body's reader has gone.
    pub fn send(&self, chunk: impl Into<Bytes>) -> bool {
        self.tx.unbounded_send(Ok(chunk.into())).is_ok()
    }

    /// Ends the body with an error after the chunks already sent.
    pub fn fail(self, reason: impl Into<String>) {
        let _ = self.tx.unbounded_send(Err(BodyError::new(reason)));
    }

    /// Ends the body normally (same as dropping the sender).
    pub fn finish(self) {}

    /// True when the reader has dropped the body.
    pub fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }
}

/// A body fed chunk by chunk by the returned [`BodySender`]; `len` is its declared length.
pub fn body_channel(len: Option<u64>) -> (BodySender, Body) {
    let (tx, rx) = mpsc::unbounded();
    (
        BodySender { tx },
        Body::from_stream(ChannelBody { rx }, len),
    )
}

struct ChannelBody {
    rx: mpsc::UnboundedReceiver<Result<Bytes, BodyError>>,
}

impl Stream for ChannelBody {
    type Item = Result<Bytes, BodyError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        Pin::new(&mut self.rx).poll_next(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::executor::block_on;
    use futures::{FutureExt, StreamExt};

    fn get(uri: &str) -> http::Request<Body> {
        http::Request::builder()
            .uri(uri)
            .header("Cookie", "x=1")
            .body(Body::from("hi"))
            .unwrap()
    }

    #[test]
    fn replies_in_order_and_records() {
        let t = ScriptedTransport::new();
        t.respond(
            http::Response::builder()
                .status(404)
                .body(Body::from("gone"))
                .unwrap(),
        )
        .fail(TransportError::Timeout {
            url: "u".into(),
            reason: "r".into(),
        });
        assert_eq!(t.remaining(), 2);
        let r = block_on(t.send(get("http://a.example/1"))).unwrap();
        assert_eq!(r.status(), 404);
        assert_eq!(block_on(r.into_body().collect(100)).unwrap(), "gone");
        assert!(matches!(
            block_on(t.send(get("http://a.example/2"))),
            Err(TransportError::Timeout { .. })
        ));
        let err = block_on(t.send(get("http://a.example/3"))).unwrap_err();
        assert!(err.to_string().contains("script is empty"), "{err}");
        let reqs = t.requests();
        assert_eq!(reqs.len(), 3);
        assert_eq!(reqs[0].uri, "http://a.example/1");
        assert_eq!(reqs[0].headers.get("cookie").unwrap(), "x=1");
        assert_eq!(reqs[1].body, Some(Ok(Bytes::from_static(b"hi"))));
        assert_eq!(reqs[2].body, None);
    }

    #[test]
    fn handler_sees_body_and_channel_body_streams() {
        let t = ScriptedTransport::new();
        let (tx, body) = body_channel(None);
        let mut body = Some(body);
        t.handle(move |req| async move {
            let got = req.into_body().collect(10).await.unwrap();
            assert_eq!(got, "hi");
            Ok(http::Response::new(body.take().unwrap()))
        });
        let resp = block_on(t.send(get("http://a.example/"))).unwrap();
        let mut body = resp.into_body();
        assert!(tx.send("one"));
        assert_eq!(block_on(body.next()).unwrap().unwrap(), "one");
        // Nothing queued: the body is stalled, not finished.
        assert!(body.next().now_or_never().is_none());
        tx.fail("reset");
        assert_eq!(block_on(body.next()).unwrap(), Err(BodyError::new("reset")));
        assert!(block_on(body.next()).is_none());
    }

    #[test]
    fn policy_applies_before_the_script() {
        let config = TransportConfig::builder().loopback_only().build().unwrap();
        let t = ScriptedTransport::with_policy(
            config,
            HeaderPolicy::Browser {
                keep_user_agent: false,
            },
        );
        assert!(matches!(
            block_on(t.send(get("http://example.com/"))),
            Err(TransportError::Denied { .. })
        ));
        assert!(t.requests().is_empty());
        t.respond(http::Response::new(Body::empty()));
        block_on(t.send(get("http://127.0.0.1/"))).unwrap();
        assert!(t.requests()[0].headers.get("cookie").is_none());
    }
}
