//! WebSockets natively (the relay's, and the guest's WebSockets the proxy carries):
//! tokio-tungstenite over TCP, or TLS by rustls (ring) for `wss://`, verified like the native
//! transport's HTTPS.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use async_trait::async_trait;
use futures::{Sink, Stream};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::error::CapacityError;
use tokio_tungstenite::tungstenite::http::header::SEC_WEBSOCKET_PROTOCOL;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::{Connector, MaybeTlsStream, WebSocketStream};

use super::socket::{Close, Dialed, Dialer, MessageSocket, SocketError, WsMessage};

/// Largest message accepted by default (the relay's dialer): far above any Wisp packet a
/// server sends (they carry at most a few tens of KiB of stream data), small enough to bound
/// memory.
const MAX_MESSAGE: usize = 1 << 20;
/// Bytes gathered before they are written to the socket.
const WRITE_BUFFER: usize = 64 * 1024;
/// Most bytes waiting in the write buffer before `poll_ready` waits.
const MAX_WRITE_BUFFER: usize = 1 << 20;

/// Dials `ws://` and `wss://` relays with tokio-tungstenite.
#[derive(Clone)]
pub struct NativeDialer {
    tls: Arc<rustls::ClientConfig>,
    max_message: usize,
}

impl NativeDialer {
    /// A dialer verifying `wss://` servers with `tls` (for example the native transport's
    /// configuration, so the same roots apply); messages up to 1 MiB.
    pub fn new(tls: Arc<rustls::ClientConfig>) -> Self {
        Self {
            tls,
            max_message: MAX_MESSAGE,
        }
    }

    /// The same dialer accepting messages up to `limit` bytes (a larger one fails the
    /// connection with [`SocketError::TooLarge`]).
    pub fn max_message(mut self, limit: usize) -> Self {
        self.max_message = limit;
        self
    }
}

impl std::fmt::Debug for NativeDialer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NativeDialer").finish_non_exhaustive()
    }
}

#[async_trait(?Send)]
impl Dialer for NativeDialer {
    async fn dial(&self, url: &str, protocols: &[&str]) -> Result<Dialed, SocketError> {
        let bad_url = |reason: String| SocketError::BadUrl {
            url: url.to_string(),
            reason,
        };
        let mut request = url
            .into_client_request()
            .map_err(|err| bad_url(err.to_string()))?;
        if !protocols.is_empty() {
            let value = HeaderValue::from_str(&protocols.join(", "))
                .map_err(|err| bad_url(err.to_string()))?;
            request.headers_mut().insert(SEC_WEBSOCKET_PROTOCOL, value);
        }
        let config = WebSocketConfig::default()
            .max_message_size(Some(self.max_message))
            .max_frame_size(Some(self.max_message))
            .write_buffer_size(WRITE_BUFFER)
            .max_write_buffer_size(MAX_WRITE_BUFFER.max(self.max_message + WRITE_BUFFER));
        let (ws, response) = tokio_tungstenite::connect_async_tls_with_config(
            request,
            Some(config),
            true,
            Some(Connector::Rustls(Arc::clone(&self.tls))),
        )
        .await
        .map_err(|err| SocketError::Connect {
            url: url.to_string(),
            reason: err.to_string(),
        })?;
        let protocol = response
            .headers()
            .get(SEC_WEBSOCKET_PROTOCOL)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        Ok(Dialed {
            socket: Box::new(NativeSocket {
                ws,
                peer_close: None,
                limit: self.max_message,
                close_sent: false,
            }),
            protocol,
        })
    }
}

/// An open tokio-tungstenite connection.
struct NativeSocket {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    /// The peer's Close frame, once one came.
    peer_close: Option<Close>,
    /// The message size limit the connection was configured with.
    limit: usize,
    /// Our Close frame was queued.
    close_sent: bool,
}

fn lost(err: WsError) -> SocketError {
    SocketError::Lost(err.to_string())
}

impl NativeSocket {
    fn failed(&self, err: WsError) -> SocketError {
        match err {
            WsError::Capacity(CapacityError::MessageTooLong { .. }) => {
                SocketError::TooLarge { limit: self.limit }
            }
            err => lost(err),
        }
    }
}

impl MessageSocket for NativeSocket {
    fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Result<Option<WsMessage>, SocketError>> {
        loop {
            match Pin::new(&mut self.ws).poll_next(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(None) => return Poll::Ready(Ok(None)),
                Poll::Ready(Some(Ok(Message::Close(frame)))) => {
                    self.peer_close = frame.map(|f| Close {
                        code: f.code.into(),
                        reason: f.reason.to_string(),
                    });
                    return Poll::Ready(Ok(None));
                }
                Poll::Ready(Some(Ok(Message::Binary(data)))) => {
                    return Poll::Ready(Ok(Some(WsMessage::Binary(data.to_vec()))))
                }
                Poll::Ready(Some(Ok(Message::Text(text)))) => {
                    return Poll::Ready(Ok(Some(WsMessage::Text(text.to_string()))))
                }
                // Pings are answered by tungstenite; pongs mean nothing here.
                Poll::Ready(Some(Ok(_))) => continue,
                Poll::Ready(Some(Err(WsError::ConnectionClosed | WsError::AlreadyClosed))) => {
                    return Poll::Ready(Ok(None))
                }
                Poll::Ready(Some(Err(err))) => return Poll::Ready(Err(self.failed(err))),
            }
        }
    }

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), SocketError>> {
        Pin::new(&mut self.ws).poll_ready(cx).map_err(lost)
    }

    fn send(&mut self, message: WsMessage) -> Result<(), SocketError> {
        let message = match message {
            WsMessage::Binary(bytes) => Message::binary(bytes),
            WsMessage::Text(text) => Message::text(text),
        };
        Pin::new(&mut self.ws).start_send(message).map_err(lost)
    }

    fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), SocketError>> {
        Pin::new(&mut self.ws).poll_flush(cx).map_err(lost)
    }

    fn poll_close(&mut self, cx: &mut Context<'_>, close: &Close) -> Poll<Result<(), SocketError>> {
        if !self.close_sent {
            self.close_sent = true;
            let frame = CloseFrame {
                code: CloseCode::from(close.code),
                reason: close.reason.clone().into(),
            };
            match Pin::new(&mut self.ws).start_send(Message::Close(Some(frame))) {
                Ok(()) => {}
                // The peer closed first (its Close was answered already).
                Err(WsError::ConnectionClosed | WsError::AlreadyClosed) => {
                    return Poll::Ready(Ok(()))
                }
                Err(WsError::Protocol(_)) => {}
                Err(err) => return Poll::Ready(Err(lost(err))),
            }
        }
        Pin::new(&mut self.ws).poll_close(cx).map_err(lost)
    }

    fn peer_close(&self) -> Option<Close> {
        self.peer_close.clone()
    }
}

#[cfg(test)]
mod tests {
    use std::future::poll_fn;

    use futures::{SinkExt, StreamExt};
    use tokio::net::TcpListener;

    use super::*;

    fn dialer() -> NativeDialer {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth();
        NativeDialer::new(Arc::new(tls))
    }

    /// A server that closes first gets its Close answered by `poll_close` (the closing
    /// handshake completes; before, the proxy dropped the socket with the reply still queued
    /// and the server saw a reset).
    #[tokio::test]
    async fn poll_close_after_the_peers_close_answers_it() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            let mut ws = tokio_tungstenite::accept_async(tcp).await.unwrap();
            ws.send(Message::Close(Some(CloseFrame {
                code: CloseCode::from(4001),
                reason: "bye".into(),
            })))
            .await
            .unwrap();
            // The client's reply (a Close), then the stream ends cleanly; a dropped socket
            // is an error.
            let mut replied = false;
            loop {
                match ws.next().await {
                    Some(Ok(Message::Close(_))) => replied = true,
                    None | Some(Err(WsError::ConnectionClosed)) if replied => return Ok(()),
                    other => return Err(format!("{other:?}")),
                }
            }
        });
        let Dialed { mut socket, .. } = dialer().dial(&format!("ws://{addr}/"), &[]).await.unwrap();
        let received = poll_fn(|cx| socket.poll_recv(cx)).await;
        assert_eq!(received, Ok(None));
        assert_eq!(
            socket.peer_close(),
            Some(Close {
                code: 4001,
                reason: "bye".into()
            })
        );
        poll_fn(|cx| socket.poll_close(cx, &Close::NORMAL))
            .await
            .unwrap();
        drop(socket);
        assert_eq!(server.await.unwrap(), Ok(()));
    }
}
