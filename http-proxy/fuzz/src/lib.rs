//! What http-proxy's fuzz targets share: one CA and issuer per process (key generation is too
//! slow to repeat per input), a transport that answers every request, and timers.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use fetch_transport::{Body, Transport, TransportError};
use futures::future::{self, LocalBoxFuture};
use http_proxy::Timer;
use mitm_ca::{CaParams, CertificateAuthority, FixedClock, Issuer, IssuerConfig};

/// 2027-01-15, inside the CA's validity.
pub const NOW_SECS: u64 = 1_800_000_000;

/// The process-wide issuer (ECDSA P-256 CA, 30-day leaves, shared leaf key).
pub fn issuer() -> Arc<Issuer> {
    static ISSUER: OnceLock<Arc<Issuer>> = OnceLock::new();
    ISSUER
        .get_or_init(|| {
            let clock = Arc::new(FixedClock::new(NOW_SECS));
            let ca = CertificateAuthority::generate(&CaParams::default(), clock.as_ref())
                .expect("CA generation");
            let config = IssuerConfig {
                cache_capacity: 64,
                ..IssuerConfig::default()
            };
            Arc::new(Issuer::new(ca, config, clock).expect("issuer"))
        })
        .clone()
}

/// A transport that reads each request's body (up to 1 MiB) and answers 200 with a small
/// body, or, for paths containing "fail", a transport error.
pub struct Answering;

#[async_trait(?Send)]
impl Transport for Answering {
    async fn send(
        &self,
        request: http::Request<Body>,
    ) -> Result<http::Response<Body>, TransportError> {
        let (parts, body) = request.into_parts();
        let url = parts.uri.to_string();
        let body = body.collect(1 << 20).await;
        if url.contains("fail") {
            return Err(TransportError::Blocked {
                url,
                reason: "fuzz".into(),
            });
        }
        let text = match body {
            Ok(b) => Bytes::from(format!("{} {} {}", parts.method, url, b.len())),
            Err(_) => Bytes::from_static(b"body error"),
        };
        let mut response = http::Response::new(Body::full(text));
        if url.contains("chunked") {
            // Unknown length: the proxy frames it itself.
            let stream = futures::stream::iter([Ok(Bytes::from_static(b"a")), Ok(Bytes::new())]);
            *response.body_mut() = Body::from_stream(stream, None);
        }
        Ok(response)
    }
}

/// Timers that fire at once (every timeout path) or never (the guest's EOF ends everything).
pub struct FuzzTimer {
    /// Fire immediately instead of never.
    pub fire: bool,
}

impl Timer for FuzzTimer {
    fn sleep(&self, _duration: Duration) -> LocalBoxFuture<'static, ()> {
        if self.fire {
            Box::pin(future::ready(()))
        } else {
            Box::pin(future::pending())
        }
    }
}
