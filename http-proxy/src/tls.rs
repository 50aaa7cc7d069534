//! TLS termination: inside CONNECT tunnels, on the proxy's own port 443, and for transparently
//! intercepted HTTPS. The leaf certificate comes from mitm-ca's issuer, for the ClientHello's
//! SNI, else the host the connection is known to be for.

use futures::future::{self, Either};
use futures::io::AsyncReadExt;
use futures_rustls::rustls::server::Acceptor;
use futures_rustls::LazyConfigAcceptor;

use bytes::BytesMut;

use crate::conn::{serve, Mode, ServeError};
use crate::io::{BoxedStream, Prefixed};
use crate::target::{Origin, Scheme};
use crate::Proxy;

/// The first byte of a TLS record carrying a handshake message.
const TLS_HANDSHAKE: u8 = 0x16;

/// What the guest started a tunnel with.
enum Sniffed {
    Tls(BoxedStream),
    Http(BoxedStream),
    Other,
    Nothing,
}

/// Reads the tunnel's first bytes (bounded by the I/O timeout) to tell TLS from plain HTTP.
async fn sniff(proxy: &Proxy, mut stream: BoxedStream) -> Sniffed {
    let mut first = [0u8; 1];
    let read = stream.read(&mut first);
    let sleep = proxy.timer.sleep(proxy.config.limits.io_timeout);
    let n = match future::select(read, sleep).await {
        Either::Left((Ok(n), _)) => n,
        Either::Left((Err(_), _)) | Either::Right(_) => return Sniffed::Nothing,
    };
    if n == 0 {
        return Sniffed::Nothing;
    }
    let byte = first[0];
    let stream: BoxedStream = Box::new(Prefixed::new(BytesMut::from(&first[..]), stream));
    if byte == TLS_HANDSHAKE {
        Sniffed::Tls(stream)
    } else if byte.is_ascii_uppercase() {
        Sniffed::Http(stream)
    } else {
        Sniffed::Other
    }
}

/// Serves a CONNECT tunnel to `origin`: TLS is terminated and the requests inside go to
/// `https://origin`; a tunnel that starts with a plain HTTP request is served as `http://`.
pub(crate) async fn tunnel(
    proxy: &Proxy,
    stream: BoxedStream,
    origin: Origin,
) -> Result<(), ServeError> {
    match sniff(proxy, stream).await {
        Sniffed::Tls(stream) => {
            let mode = Mode::Origin {
                scheme: Scheme::Https,
                fixed: Some(origin.clone()),
                fallback: None,
            };
            terminate(proxy, stream, &origin.host.bare(), mode).await
        }
        Sniffed::Http(stream) => {
            let origin = Origin {
                scheme: Scheme::Http,
                ..origin
            };
            serve(
                proxy,
                stream,
                Mode::Origin {
                    scheme: Scheme::Http,
                    fixed: Some(origin),
                    fallback: None,
                },
            )
            .await
        }
        Sniffed::Other => {
            tracing::info!(host = %origin.host, port = origin.port, "CONNECT tunnel did not start with TLS or HTTP; closed");
            Ok(())
        }
        Sniffed::Nothing => Ok(()),
    }
}

/// Terminates TLS on `stream` with a leaf for the SNI (else `default_host`), then serves
/// HTTP/1.1 inside with `mode`.
pub(crate) async fn terminate(
    proxy: &Proxy,
    stream: BoxedStream,
    default_host: &str,
    mode: Mode,
) -> Result<(), ServeError> {
    let Some(issuer) = &proxy.issuer else {
        tracing::info!("TLS connection but no CA configured; closed");
        return Ok(());
    };
    let accept = LazyConfigAcceptor::new(Acceptor::default(), stream);
    let sleep = proxy.timer.sleep(proxy.config.limits.io_timeout);
    let start = match future::select(accept, sleep).await {
        Either::Left((Ok(start), _)) => start,
        Either::Left((Err(err), _)) => {
            tracing::info!(error = %err, "not a TLS ClientHello; closed");
            return Ok(());
        }
        Either::Right(_) => return Ok(()),
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
            return Ok(());
        }
        Either::Right(_) => return Ok(()),
    };
    let mode = match mode {
        Mode::Origin {
            scheme,
            fixed: None,
            fallback: None,
        } if sni.is_some() => {
            // No Host header and no CONNECT target: the SNI names the origin.
            let fallback = crate::target::Host::parse(host).ok().map(|h| Origin {
                scheme,
                host: h,
                port: 443,
            });
            Mode::Origin {
                scheme,
                fixed: None,
                fallback,
            }
        }
        other => other,
    };
    serve(proxy, Box::new(tls), mode).await
}
