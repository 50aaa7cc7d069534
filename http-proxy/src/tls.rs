//! TLS termination: inside CONNECT tunnels, on the proxy's own port 443, and for transparently
//! intercepted HTTPS. The leaf certificate comes from mitm-ca's issuer, for the ClientHello's
//! SNI, else the host the connection is known to be for.

use futures::future::{self, Either};
use futures_rustls::rustls::server::Acceptor;
use futures_rustls::LazyConfigAcceptor;

use crate::io::BoxedStream;
use crate::Proxy;

/// Terminates TLS on `stream` with a leaf for the SNI (else `default_host`): the decrypted
/// stream and the SNI, or None when there is no CA, no ClientHello or no handshake in time
/// (the connection is then dropped).
pub(crate) async fn terminate(
    proxy: &Proxy,
    stream: BoxedStream,
    default_host: &str,
) -> Option<(BoxedStream, Option<String>)> {
    let Some(issuer) = &proxy.issuer else {
        tracing::info!("TLS connection but no CA configured; closed");
        return None;
    };
    let accept = LazyConfigAcceptor::new(Acceptor::default(), stream);
    let sleep = proxy.timer.sleep(proxy.config.limits.io_timeout);
    let start = match future::select(accept, sleep).await {
        Either::Left((Ok(start), _)) => start,
        Either::Left((Err(err), _)) => {
            tracing::info!(error = %err, "not a TLS ClientHello; closed");
            return None;
        }
        Either::Right(_) => return None,
    };
    let sni = start.client_hello().server_name().map(str::to_string);
    let host = sni.as_deref().unwrap_or(default_host);
    let config = issuer.server_config(Some(host));
    let handshake = start.into_stream(config);
    let sleep = proxy.timer.sleep(proxy.config.limits.io_timeout);
    let tls = match future::select(handshake, sleep).await {
        Either::Left((Ok(tls), _)) => tls,
        Either::Left((Err(err), _)) => {
            tracing::info!(%host, error = %err, "TLS handshake with the guest failed (does it trust the proxy's CA?)");
            return None;
        }
        Either::Right(_) => return None,
    };
    Some((Box::new(tls), sni))
}
