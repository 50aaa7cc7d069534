//! The guest's WebSockets leave through a [`Dialer`] (the browser's `WebSocket`, or
//! tokio-tungstenite natively): [`GuestWebSockets`] is the proxy's `WebSockets` capability,
//! applying the transport's rewrites and allow/deny lists to each URL before dialing it.

use std::rc::Rc;

use async_trait::async_trait;
use fetch_transport::relay::{Dialed, Dialer};
use fetch_transport::{DestinationFilter, RewriteRule};
use http_proxy::{WebSocketError, WebSockets};
use url::Url;

/// Opens the guest's WebSockets with `dialer`, after the same rewrites and destination checks
/// as the guest's HTTP requests.
pub struct GuestWebSockets {
    dialer: Rc<dyn Dialer>,
    rewrites: Vec<RewriteRule>,
    destinations: DestinationFilter,
}

impl GuestWebSockets {
    /// WebSockets through `dialer`, with the transport's `rewrites` and `destinations`.
    pub fn new(
        dialer: Rc<dyn Dialer>,
        rewrites: Vec<RewriteRule>,
        destinations: DestinationFilter,
    ) -> Self {
        Self {
            dialer,
            rewrites,
            destinations,
        }
    }

    /// The URL actually dialed for the guest's `url`: rewritten like an HTTP request (a rule
    /// for `plain.test` sends `ws://plain.test/x` where `http://plain.test/x` would go), then
    /// checked against the allow/deny lists.
    pub fn target(&self, url: &str) -> Result<String, WebSocketError> {
        let denied = |reason: String| WebSocketError::Denied(reason);
        let parsed = Url::parse(url).map_err(|e| denied(format!("{url}: {e}")))?;
        let secure = match parsed.scheme() {
            "ws" => false,
            "wss" => true,
            other => return Err(denied(format!("{other}: is not a WebSocket scheme"))),
        };
        // The HTTP URL of the same place, to apply the transport's rules to.
        let mut http = parsed.clone();
        let _ = http.set_scheme(if secure { "https" } else { "http" });
        let http = match self.rewrites.iter().find_map(|rule| rule.apply(&http)) {
            Some(Ok(rewritten)) => rewritten,
            Some(Err(reason)) => return Err(denied(reason)),
            None => http,
        };
        self.destinations.check(&http).map_err(denied)?;
        let mut ws = http;
        let scheme = if ws.scheme() == "https" { "wss" } else { "ws" };
        let _ = ws.set_scheme(scheme);
        Ok(ws.into())
    }
}

#[async_trait(?Send)]
impl WebSockets for GuestWebSockets {
    async fn open(&self, url: &str, protocols: &[String]) -> Result<Dialed, WebSocketError> {
        let target = self.target(url)?;
        let protocols: Vec<&str> = protocols.iter().map(String::as_str).collect();
        tracing::debug!(%url, %target, ?protocols, "opening a guest WebSocket");
        Ok(self.dialer.dial(&target, &protocols).await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fetch_transport::relay::SocketError;
    use fetch_transport::DestinationPattern;

    /// Refuses every dial, saying which URL and protocols it was asked for.
    struct Refuse;

    #[async_trait(?Send)]
    impl Dialer for Refuse {
        async fn dial(&self, url: &str, protocols: &[&str]) -> Result<Dialed, SocketError> {
            Err(SocketError::Connect {
                url: url.into(),
                reason: format!("asked for {url} with {protocols:?}"),
            })
        }
    }

    fn sockets(destinations: DestinationFilter) -> GuestWebSockets {
        GuestWebSockets::new(
            Rc::new(Refuse),
            vec![
                RewriteRule::new("plain.test", "http://127.0.0.1:8080").unwrap(),
                RewriteRule::new("secure.test", "https://localhost:8443").unwrap(),
            ],
            destinations,
        )
    }

    #[test]
    fn rewrites_apply_to_websocket_urls_keeping_the_scheme_kind() {
        let s = sockets(DestinationFilter::allow_all());
        assert_eq!(
            s.target("ws://plain.test/live?x=1").unwrap(),
            "ws://127.0.0.1:8080/live?x=1"
        );
        assert_eq!(
            s.target("wss://secure.test/a").unwrap(),
            "wss://localhost:8443/a"
        );
        assert_eq!(
            s.target("ws://other.test:81/").unwrap(),
            "ws://other.test:81/"
        );
    }

    #[test]
    fn destinations_are_checked_after_the_rewrite() {
        let s = sockets(DestinationFilter::loopback_only());
        assert!(s.target("ws://plain.test/").is_ok());
        assert!(matches!(
            s.target("ws://example.com/"),
            Err(WebSocketError::Denied(_))
        ));
        let deny =
            DestinationFilter::allow_all().deny(DestinationPattern::parse("127.0.0.1").unwrap());
        assert!(matches!(
            sockets(deny).target("ws://plain.test/"),
            Err(WebSocketError::Denied(_))
        ));
    }

    #[test]
    fn the_dialer_gets_the_target_and_the_protocols() {
        let s = sockets(DestinationFilter::allow_all());
        let protocols = ["a".to_string(), "b".to_string()];
        let opened = futures::FutureExt::now_or_never(s.open("ws://plain.test/x", &protocols));
        let err = opened.expect("the dial answers at once").err().unwrap();
        assert!(
            err.to_string()
                .contains("asked for ws://127.0.0.1:8080/x with [\"a\", \"b\"]"),
            "{err}"
        );
    }
}
