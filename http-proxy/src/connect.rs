//! CONNECT and what follows it: the top of every guest connection. HTTP/1.1 is served on it
//! (`conn`); a CONNECT request is decided here and, once accepted, the connection becomes a
//! tunnel whose TLS is terminated (`tls`) before HTTP/1.1 is served inside, which may CONNECT
//! again. TLS entries (port 443, transparent HTTPS) come in through [`serve_tls`].

use bytes::BytesMut;
use futures::future::{self, Either, LocalBoxFuture};
use futures::io::AsyncReadExt;
use http::header;
use http::StatusCode;

use crate::body::decode::{request_framing, RequestFraming};
use crate::conn::{self, Ended};
use crate::error::ServeError;
use crate::error_page::ErrorPage;
use crate::head::RequestHead;
use crate::io::{BoxedStream, Prefixed};
use crate::refuse::upgrade_unsupported;
use crate::route::Mode;
use crate::target::{parse_target, Origin, Scheme, Target};
use crate::tls;
use crate::tunnel::{splice, HALF_CLOSE_LINGER};
use crate::websocket;
use crate::Proxy;

/// Serves `stream` in `mode` until it ends, following CONNECTs into their tunnels (boxed: a
/// tunnel serves again).
pub(crate) fn serve<'a>(
    proxy: &'a Proxy,
    stream: BoxedStream,
    mode: Mode,
) -> LocalBoxFuture<'a, Result<(), ServeError>> {
    Box::pin(async move {
        let pending = match conn::serve(proxy, stream, &mode).await? {
            Ended::Closed => return Ok(()),
            Ended::Connect(pending) => pending,
            Ended::WebSocket(pending) => return websocket::serve(proxy, pending, &mode).await,
        };
        let raw = proxy.raw_tunnels.clone();
        let origin = match tunnel_origin(proxy, &mode, &pending.head, raw.is_some()) {
            Ok(origin) => origin,
            Err(page) => return pending.refuse(proxy, &page).await,
        };
        let host = origin.host.bare();
        if let Some(tunnels) = raw.filter(|_| !proxy.is_own_host(&host)) {
            // End to end: the tunnel is opened first, so a refusal is still a 502 page.
            let remote = match tunnels.open(&host, origin.port).await {
                Ok(remote) => remote,
                Err(err) => {
                    let page = ErrorPage::new(
                        StatusCode::BAD_GATEWAY,
                        "tunnel-failed",
                        format!("cannot open a tunnel to {host}:{}: {err}", origin.port),
                    );
                    return pending.refuse(proxy, &page).await;
                }
            };
            return match pending.accept().await? {
                Some(stream) => {
                    if let Err(err) =
                        splice(stream, remote, proxy.timer.as_ref(), HALF_CLOSE_LINGER).await
                    {
                        tracing::debug!(%host, port = origin.port, error = %err, "raw tunnel ended with an error");
                    }
                    Ok(())
                }
                None => Ok(()),
            };
        }
        match pending.accept().await? {
            Some(stream) => tunnel(proxy, stream, origin).await,
            None => Ok(()),
        }
    })
}

/// Terminates TLS on `stream` with a leaf for the SNI (else `default_host`), then serves
/// HTTP/1.1 inside with `mode` (where the SNI names the origin if nothing else does).
pub(crate) async fn serve_tls(
    proxy: &Proxy,
    stream: BoxedStream,
    default_host: &str,
    mode: Mode,
) -> Result<(), ServeError> {
    let Some((stream, sni)) = tls::terminate(proxy, stream, default_host).await else {
        return Ok(());
    };
    let mode = mode.or_sni(sni.as_deref());
    serve(proxy, stream, mode).await
}

/// Decides a CONNECT request: the origin of the tunnel it asks for (whose TLS the proxy
/// terminates with a leaf for the target, or which a raw tunnel carries when `raw`), or the
/// page refusing it.
fn tunnel_origin(
    proxy: &Proxy,
    mode: &Mode,
    head: &RequestHead,
    raw: bool,
) -> Result<Origin, Box<ErrorPage>> {
    let unsupported = |msg: &str| {
        Box::new(ErrorPage::new(
            StatusCode::NOT_IMPLEMENTED,
            "unsupported",
            msg,
        ))
    };
    if head.headers.contains_key(header::UPGRADE) {
        return Err(Box::new(upgrade_unsupported()));
    }
    if !matches!(mode, Mode::Forward) {
        return Err(unsupported(
            "CONNECT is only accepted by the forward proxy port",
        ));
    }
    if proxy.issuer.is_none() && !raw {
        return Err(unsupported(
            "this proxy has no CA, so it cannot terminate TLS for CONNECT",
        ));
    }
    let (host, port) = match parse_target(&head.target, true) {
        Ok(Target::Authority { host, port }) => (host, port),
        Ok(_) | Err(_) => {
            return Err(Box::new(ErrorPage::new(
                StatusCode::BAD_REQUEST,
                "bad-request",
                "CONNECT needs a host:port target",
            )));
        }
    };
    if !matches!(
        request_framing(&head.headers, head.version),
        Ok(RequestFraming::Empty)
    ) {
        return Err(Box::new(ErrorPage::new(
            StatusCode::BAD_REQUEST,
            "bad-request",
            "CONNECT must not have a body",
        )));
    }
    Ok(Origin {
        scheme: Scheme::Https,
        host,
        port,
    })
}

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
async fn tunnel(proxy: &Proxy, stream: BoxedStream, origin: Origin) -> Result<(), ServeError> {
    match sniff(proxy, stream).await {
        Sniffed::Tls(stream) => {
            let mode = Mode::Origin {
                scheme: Scheme::Https,
                fixed: Some(origin.clone()),
                fallback: None,
            };
            serve_tls(proxy, stream, &origin.host.bare(), mode).await
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
