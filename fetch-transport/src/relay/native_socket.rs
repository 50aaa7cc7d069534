//! The relay's WebSocket natively: tokio-tungstenite over TCP, or TLS by rustls (ring) for
//! `wss://`, verified like the native transport's HTTPS.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use async_trait::async_trait;
use futures::{Sink, Stream};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::header::SEC_WEBSOCKET_PROTOCOL;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::{Connector, MaybeTlsStream, WebSocketStream};

use super::socket::{Dialed, Dialer, MessageSocket, SocketError};

/// Largest message accepted from the relay: far above any Wisp packet a server sends (they
/// carry at most a few tens of KiB of stream data), small enough to bound memory.
const MAX_MESSAGE: usize = 1 << 20;
/// Bytes gathered before they are written to the socket.
const WRITE_BUFFER: usize = 64 * 1024;
/// Most bytes waiting in the write buffer before `poll_ready` waits.
const MAX_WRITE_BUFFER: usize = 1 << 20;

/// Dials `ws://` and `wss://` relays with tokio-tungstenite.
#[derive(Clone)]
pub struct NativeDialer {
    tls: Arc<rustls::ClientConfig>,
}

impl NativeDialer {
    /// A dialer verifying `wss://` servers with `tls` (for example the native transport's
    /// configuration, so the same roots apply).
    pub fn new(tls: Arc<rustls::ClientConfig>) -> Self {
        Self { tls }
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
            .max_message_size(Some(MAX_MESSAGE))
            .max_frame_size(Some(MAX_MESSAGE))
            .write_buffer_size(WRITE_BUFFER)
            .max_write_buffer_size(MAX_WRITE_BUFFER);
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
            socket: Box::new(NativeSocket { ws }),
            protocol,
        })
    }
}

/// An open tokio-tungstenite connection.
struct NativeSocket {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

fn lost(err: WsError) -> SocketError {
    SocketError::Lost(err.to_string())
}

impl MessageSocket for NativeSocket {
    fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Result<Option<Vec<u8>>, SocketError>> {
        loop {
            match Pin::new(&mut self.ws).poll_next(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(None) | Poll::Ready(Some(Ok(Message::Close(_)))) => {
                    return Poll::Ready(Ok(None))
                }
                Poll::Ready(Some(Ok(Message::Binary(data)))) => {
                    return Poll::Ready(Ok(Some(data.to_vec())))
                }
                // Pings are answered by tungstenite; text and pongs mean nothing to Wisp.
                Poll::Ready(Some(Ok(_))) => continue,
                Poll::Ready(Some(Err(WsError::ConnectionClosed | WsError::AlreadyClosed))) => {
                    return Poll::Ready(Ok(None))
                }
                Poll::Ready(Some(Err(err))) => return Poll::Ready(Err(lost(err))),
            }
        }
    }

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), SocketError>> {
        Pin::new(&mut self.ws).poll_ready(cx).map_err(lost)
    }

    fn send(&mut self, message: Vec<u8>) -> Result<(), SocketError> {
        Pin::new(&mut self.ws)
            .start_send(Message::binary(message))
            .map_err(lost)
    }

    fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), SocketError>> {
        Pin::new(&mut self.ws).poll_flush(cx).map_err(lost)
    }

    fn poll_close(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), SocketError>> {
        Pin::new(&mut self.ws).poll_close(cx).map_err(lost)
    }
}
