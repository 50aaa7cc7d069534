//! The guest's WebSockets through the proxy: a real RFC 6455 client (tungstenite, client role)
//! over an in-memory pipe, and a scripted server side behind the `WebSockets` capability.

mod common;

use std::cell::RefCell;
use std::collections::VecDeque;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

use async_trait::async_trait;
use async_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use async_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use async_tungstenite::tungstenite::Message;
use async_tungstenite::WebSocketStream;
use fetch_transport::relay::{Close, Dialed, MessageSocket, SocketError, WsMessage};
use fetch_transport::{Body, Transport, TransportError};
use futures::executor::block_on;
use futures::future;
use futures::io::{AsyncReadExt, AsyncWriteExt};
use futures::StreamExt;
use http_proxy::{Entry, Limits, Proxy, ProxyConfig, WebSocketError, WebSockets};

use common::{pipe, End, NeverTimer};

/// No plain HTTP in these tests.
struct NoTransport;

#[async_trait(?Send)]
impl Transport for NoTransport {
    async fn send(
        &self,
        request: http::Request<Body>,
    ) -> Result<http::Response<Body>, TransportError> {
        Err(TransportError::Denied {
            url: request.uri().to_string(),
            reason: "no HTTP here".into(),
        })
    }
}

/// What the scripted server saw.
#[derive(Default)]
struct ServerLog {
    opened: Vec<(String, Vec<String>)>,
    received: Vec<WsMessage>,
    closed_with: Option<Close>,
}

/// The server side of one session: echoes every message; the text "close me" makes it close
/// with 4001 "server says bye".
struct EchoSocket {
    log: Rc<RefCell<ServerLog>>,
    queue: VecDeque<WsMessage>,
    ended: bool,
    waker: Option<Waker>,
}

impl MessageSocket for EchoSocket {
    fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Result<Option<WsMessage>, SocketError>> {
        if let Some(message) = self.queue.pop_front() {
            return Poll::Ready(Ok(Some(message)));
        }
        if self.ended {
            return Poll::Ready(Ok(None));
        }
        self.waker = Some(cx.waker().clone());
        Poll::Pending
    }
    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), SocketError>> {
        Poll::Ready(Ok(()))
    }
    fn send(&mut self, message: WsMessage) -> Result<(), SocketError> {
        self.log.borrow_mut().received.push(message.clone());
        if message == WsMessage::Text("close me".into()) {
            self.ended = true;
        } else {
            self.queue.push_back(message);
        }
        if let Some(w) = self.waker.take() {
            w.wake();
        }
        Ok(())
    }
    fn poll_flush(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), SocketError>> {
        Poll::Ready(Ok(()))
    }
    fn poll_close(
        &mut self,
        _cx: &mut Context<'_>,
        close: &Close,
    ) -> Poll<Result<(), SocketError>> {
        self.log.borrow_mut().closed_with = Some(close.clone());
        Poll::Ready(Ok(()))
    }
    fn peer_close(&self) -> Option<Close> {
        Some(Close {
            code: 4001,
            reason: "server says bye".into(),
        })
    }
}

/// Opens [`EchoSocket`]s choosing the last offered subprotocol, or refuses every URL.
struct Echo {
    log: Rc<RefCell<ServerLog>>,
    refuse: bool,
}

#[async_trait(?Send)]
impl WebSockets for Echo {
    async fn open(&self, url: &str, protocols: &[String]) -> Result<Dialed, WebSocketError> {
        self.log
            .borrow_mut()
            .opened
            .push((url.to_string(), protocols.to_vec()));
        if self.refuse {
            return Err(SocketError::Connect {
                url: url.into(),
                reason: "connection refused".into(),
            }
            .into());
        }
        Ok(Dialed {
            socket: Box::new(EchoSocket {
                log: self.log.clone(),
                queue: VecDeque::new(),
                ended: false,
                waker: None,
            }),
            protocol: protocols.last().cloned(),
        })
    }
}

fn proxy(refuse: bool, max_message: usize) -> (Proxy, Rc<RefCell<ServerLog>>) {
    let log = Rc::new(RefCell::new(ServerLog::default()));
    let config = ProxyConfig {
        limits: Limits {
            max_websocket_message: max_message,
            ..Limits::default()
        },
        ..ProxyConfig::default()
    };
    let proxy = Proxy::new(config, Rc::new(NoTransport), Rc::new(NeverTimer)).with_websockets(
        Rc::new(Echo {
            log: log.clone(),
            refuse,
        }),
    );
    (proxy, log)
}

/// The RFC 6455 §1.3 example key and its answer.
const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
const ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";

fn upgrade(target: &str, extra: &str) -> String {
    format!(
        "GET {target} HTTP/1.1\r\nHost: echo.test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
    )
}

/// Reads a response head (up to the blank line) byte by byte.
async fn read_head(stream: &mut End) -> String {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if stream.read(&mut byte).await.unwrap() == 0 {
            break;
        }
        head.push(byte[0]);
    }
    String::from_utf8(head).unwrap()
}

/// Reads everything until the proxy closes.
async fn read_all(stream: &mut End) -> String {
    let mut out = Vec::new();
    stream.read_to_end(&mut out).await.unwrap();
    String::from_utf8_lossy(&out).into_owned()
}

/// Serves one connection in `entry` while `client` runs against its other end.
fn session<F, T>(proxy: &Proxy, entry: Entry, client: impl FnOnce(End) -> F) -> T
where
    F: std::future::Future<Output = T>,
{
    let (guest, ours) = pipe();
    let (_, out) = block_on(future::join(proxy.serve(ours, entry), client(guest)));
    out
}

#[test]
fn absolute_form_upgrade_carries_text_and_binary_and_the_guests_close() {
    let (proxy, log) = proxy(false, 1 << 20);
    let head = session(&proxy, Entry::ForwardProxy, |mut guest| async move {
        let request = upgrade(
            "http://echo.test/chat?room=1",
            "Sec-WebSocket-Protocol: chat.v1, chat.v2\r\n",
        );
        guest.write_all(request.as_bytes()).await.unwrap();
        let head = read_head(&mut guest).await;
        let mut ws = WebSocketStream::from_raw_socket(guest, Role::Client, None).await;
        ws.send(Message::text("hello")).await.unwrap();
        assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("hello"));
        ws.send(Message::binary(vec![0u8, 1, 2, 255]))
            .await
            .unwrap();
        assert_eq!(
            ws.next().await.unwrap().unwrap(),
            Message::binary(vec![0u8, 1, 2, 255])
        );
        // A ping is answered by the proxy itself.
        ws.send(Message::Ping(b"p".to_vec().into())).await.unwrap();
        assert_eq!(
            ws.next().await.unwrap().unwrap(),
            Message::Pong(b"p".to_vec().into())
        );
        ws.close(Some(CloseFrame {
            code: CloseCode::Library(4321),
            reason: "guest done".into(),
        }))
        .await
        .unwrap();
        // The proxy answers the Close and hangs up.
        while let Some(Ok(_)) = ws.next().await {}
        head
    });
    assert!(
        head.starts_with("HTTP/1.1 101 Switching Protocols\r\n"),
        "{head}"
    );
    assert!(
        head.contains(&format!("Sec-WebSocket-Accept: {ACCEPT}\r\n")),
        "{head}"
    );
    assert!(
        head.contains("Sec-WebSocket-Protocol: chat.v2\r\n"),
        "{head}"
    );
    let log = log.borrow();
    assert_eq!(
        log.opened,
        vec![(
            "ws://echo.test/chat?room=1".to_string(),
            vec!["chat.v1".to_string(), "chat.v2".to_string()]
        )]
    );
    assert_eq!(log.received.len(), 2);
    assert_eq!(
        log.closed_with,
        Some(Close {
            code: 4321,
            reason: "guest done".into()
        })
    );
    let stats = proxy.stats();
    assert_eq!(
        (
            stats.websockets_opened,
            stats.websockets_open,
            stats.websocket_messages_from_guest,
            stats.websocket_messages_to_guest,
            stats.websocket_bytes_from_guest,
            stats.websocket_bytes_to_guest
        ),
        (1, 0, 2, 2, 9, 9)
    );
    assert_eq!(stats.connections_open, 0);
}

#[test]
fn a_servers_close_code_and_reason_reach_the_guest() {
    let (proxy, _) = proxy(false, 1 << 20);
    let close = session(&proxy, Entry::ForwardProxy, |mut guest| async move {
        guest
            .write_all(upgrade("http://echo.test/", "").as_bytes())
            .await
            .unwrap();
        let head = read_head(&mut guest).await;
        assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
        assert!(!head.contains("Sec-WebSocket-Protocol"), "{head}");
        let mut ws = WebSocketStream::from_raw_socket(guest, Role::Client, None).await;
        ws.send(Message::text("close me")).await.unwrap();
        match ws.next().await {
            Some(Ok(Message::Close(frame))) => frame,
            other => panic!("expected a Close, got {other:?}"),
        }
    });
    let close = close.expect("a close code");
    assert_eq!(u16::from(close.code), 4001);
    assert_eq!(close.reason.as_str(), "server says bye");
    assert_eq!(proxy.stats().websockets_open, 0);
}

/// The server's Close is answered (`poll_close` after `poll_recv` gave `Ok(None)`): found by
/// the e2e test, where the echo server saw the connection reset without a closing handshake.
#[test]
fn a_servers_close_is_answered_on_the_server_side() {
    let (proxy, log) = proxy(false, 1 << 20);
    session(&proxy, Entry::ForwardProxy, |mut guest| async move {
        guest
            .write_all(upgrade("http://echo.test/", "").as_bytes())
            .await
            .unwrap();
        let head = read_head(&mut guest).await;
        assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
        let mut ws = WebSocketStream::from_raw_socket(guest, Role::Client, None).await;
        ws.send(Message::text("close me")).await.unwrap();
        while let Some(Ok(_)) = ws.next().await {}
    });
    let answered = log.borrow().closed_with.clone();
    assert!(
        answered.is_some(),
        "the server socket's Close was never answered (poll_close not called)"
    );
}

#[test]
fn a_refused_upgrade_is_a_502_naming_the_url() {
    let (proxy, _) = proxy(true, 1 << 20);
    let out = session(&proxy, Entry::ForwardProxy, |mut guest| async move {
        guest
            .write_all(upgrade("http://refused.test:8080/x", "").as_bytes())
            .await
            .unwrap();
        read_all(&mut guest).await
    });
    assert!(out.starts_with("HTTP/1.1 502 "), "{out}");
    assert!(out.contains("ws://refused.test:8080/x"), "{out}");
    assert!(out.contains("connection refused"), "{out}");
    let stats = proxy.stats();
    assert_eq!((stats.websockets_refused, stats.websockets_opened), (1, 0));
}

#[test]
fn without_the_capability_an_upgrade_stays_501() {
    let proxy = Proxy::new(
        ProxyConfig::default(),
        Rc::new(NoTransport),
        Rc::new(NeverTimer),
    );
    let out = session(&proxy, Entry::ForwardProxy, |mut guest| async move {
        guest
            .write_all(upgrade("http://echo.test/", "").as_bytes())
            .await
            .unwrap();
        read_all(&mut guest).await
    });
    assert!(out.starts_with("HTTP/1.1 501 "), "{out}");
}

#[test]
fn invalid_handshakes_are_refused_before_anything_is_opened() {
    let cases = [
        (
            "GET http://echo.test/ HTTP/1.1\r\nHost: echo.test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n\r\n",
            "400",
        ),
        (
            "GET http://echo.test/ HTTP/1.1\r\nHost: echo.test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: c2hvcnQ=\r\nSec-WebSocket-Version: 13\r\n\r\n",
            "400",
        ),
        (
            "GET http://echo.test/ HTTP/1.1\r\nHost: echo.test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 8\r\n\r\n",
            "426",
        ),
        (
            "POST http://echo.test/ HTTP/1.1\r\nHost: echo.test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
            "400",
        ),
        (
            "GET http://echo.test/ HTTP/1.1\r\nHost: echo.test\r\nUpgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
            "400",
        ),
        // The proxy's own address serves no WebSocket.
        (
            "GET http://192.168.127.253/ HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
            "404",
        ),
    ];
    for (request, status) in cases {
        let (proxy, log) = proxy(false, 1 << 20);
        let out = session(&proxy, Entry::ForwardProxy, |mut guest| async move {
            guest.write_all(request.as_bytes()).await.unwrap();
            read_all(&mut guest).await
        });
        assert!(
            out.starts_with(&format!("HTTP/1.1 {status} ")),
            "{request:?} -> {out}"
        );
        if status == "426" {
            assert!(out.contains("sec-websocket-version: 13\r\n"), "{out}");
        }
        assert!(log.borrow().opened.is_empty());
    }
}

#[test]
fn transparent_http_uses_the_host_header() {
    let (proxy, log) = proxy(false, 1 << 20);
    session(
        &proxy,
        Entry::Http { fallback: None },
        |mut guest| async move {
            guest
                .write_all(upgrade("/live?x=1", "").as_bytes())
                .await
                .unwrap();
            let head = read_head(&mut guest).await;
            assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
            let mut ws = WebSocketStream::from_raw_socket(guest, Role::Client, None).await;
            ws.close(None).await.unwrap();
            while let Some(Ok(_)) = ws.next().await {}
        },
    );
    let log = log.borrow();
    assert_eq!(log.opened[0].0, "ws://echo.test/live?x=1");
    // A Close without a code reaches the server as a normal closure.
    assert_eq!(log.closed_with, Some(Close::NORMAL));
}

#[test]
fn a_message_over_the_limit_closes_the_guest_with_1009() {
    let (proxy, log) = proxy(false, 1000);
    let close = session(&proxy, Entry::ForwardProxy, |mut guest| async move {
        guest
            .write_all(upgrade("http://echo.test/", "").as_bytes())
            .await
            .unwrap();
        read_head(&mut guest).await;
        let config = WebSocketConfig::default();
        let mut ws = WebSocketStream::from_raw_socket(guest, Role::Client, Some(config)).await;
        ws.send(Message::binary(vec![7u8; 1000])).await.unwrap();
        assert_eq!(ws.next().await.unwrap().unwrap().len(), 1000);
        ws.send(Message::binary(vec![7u8; 1001])).await.unwrap();
        match ws.next().await {
            Some(Ok(Message::Close(frame))) => frame,
            other => panic!("expected a Close, got {other:?}"),
        }
    });
    assert_eq!(close.map(|f| u16::from(f.code)), Some(1009));
    assert_eq!(
        log.borrow().closed_with.as_ref().map(|c| c.code),
        Some(1009)
    );
    assert_eq!(proxy.stats().websockets_open, 0);
}

#[test]
fn a_guest_vanishing_mid_session_closes_the_server_side_and_counts_down() {
    let (proxy, log) = proxy(false, 1 << 20);
    session(&proxy, Entry::ForwardProxy, |mut guest| async move {
        guest
            .write_all(upgrade("http://echo.test/", "").as_bytes())
            .await
            .unwrap();
        read_head(&mut guest).await;
        let mut ws = WebSocketStream::from_raw_socket(guest, Role::Client, None).await;
        ws.send(Message::text("one")).await.unwrap();
        ws.next().await.unwrap().unwrap();
        // Gone without a Close: the pipe is dropped.
    });
    assert_eq!(
        log.borrow().closed_with.as_ref().map(|c| c.code),
        Some(1001)
    );
    let stats = proxy.stats();
    assert_eq!((stats.websockets_opened, stats.websockets_open), (1, 0));
    assert_eq!(stats.connections_open, 0);
}

#[test]
fn a_thousand_small_messages_arrive_in_order() {
    let (proxy, _) = proxy(false, 1 << 20);
    session(&proxy, Entry::ForwardProxy, |mut guest| async move {
        guest
            .write_all(upgrade("http://echo.test/", "").as_bytes())
            .await
            .unwrap();
        read_head(&mut guest).await;
        let ws = WebSocketStream::from_raw_socket(guest, Role::Client, None).await;
        let (tx, mut rx) = ws.split();
        let send = async move {
            for i in 0..1000 {
                tx.send(Message::text(format!("m{i}"))).await.unwrap();
            }
            tx
        };
        let receive = async move {
            for i in 0..1000 {
                assert_eq!(
                    rx.next().await.unwrap().unwrap(),
                    Message::text(format!("m{i}"))
                );
            }
            rx
        };
        let (tx, rx) = future::join(send, receive).await;
        let mut ws = WebSocketStream::reunite(tx, rx).map_err(drop).unwrap();
        ws.close(None).await.unwrap();
        while let Some(Ok(_)) = ws.next().await {}
    });
    assert_eq!(proxy.stats().websocket_messages_to_guest, 1000);
}

/// Raw tunnels (a relay) whose far end is handed to the test, and the tunnels asked for.
struct RawPeer {
    far_end: RefCell<Option<futures::channel::oneshot::Sender<End>>>,
    opened: Rc<RefCell<Vec<String>>>,
}

#[async_trait(?Send)]
impl http_proxy::RawTunnels for RawPeer {
    async fn open(
        &self,
        host: &str,
        port: u16,
    ) -> Result<http_proxy::BoxedStream, http_proxy::TunnelError> {
        self.opened.borrow_mut().push(format!("{host}:{port}"));
        if host == "refused.test" {
            return Err(http_proxy::TunnelError("connection refused (0x44)".into()));
        }
        let (far, ours) = pipe();
        if let Some(sender) = self.far_end.borrow_mut().take() {
            let _ = sender.send(far);
        }
        Ok(Box::new(ours))
    }
}

#[test]
fn with_raw_tunnels_a_plain_upgrade_goes_through_one_as_it_came() {
    let (sender, far_end) = futures::channel::oneshot::channel();
    let opened = Rc::new(RefCell::new(Vec::new()));
    let (proxy, log) = proxy(false, 1 << 20);
    let proxy = proxy.with_raw_tunnels(Rc::new(RawPeer {
        far_end: RefCell::new(Some(sender)),
        opened: opened.clone(),
    }));
    let (guest, ours) = pipe();
    let client = async move {
        let mut guest = guest;
        let request = upgrade(
            "http://echo.test:8080/chat?room=1",
            "Origin: http://guest.test\r\nProxy-Authorization: Basic eDp5\r\n",
        );
        guest.write_all(request.as_bytes()).await.unwrap();
        let head = read_head(&mut guest).await;
        guest.write_all(b"frames up").await.unwrap();
        let mut rest = [0u8; 11];
        guest.read_exact(&mut rest).await.unwrap();
        guest.close().await.unwrap();
        (head, rest)
    };
    // The server behind the tunnel: reads the request, answers it, echoes once.
    let server = async move {
        let mut far: End = far_end.await.unwrap();
        let request = read_head(&mut far).await;
        far.write_all(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: from-the-server\r\n\r\n")
            .await
            .unwrap();
        let mut up = [0u8; 9];
        far.read_exact(&mut up).await.unwrap();
        far.write_all(b"frames down").await.unwrap();
        let mut end = Vec::new();
        let _ = far.read_to_end(&mut end).await;
        far.close().await.unwrap();
        (request, up)
    };
    let (_, (head, down), (request, up)) = block_on(future::join3(
        proxy.serve(ours, Entry::ForwardProxy),
        client,
        server,
    ));
    assert_eq!(*opened.borrow(), ["echo.test:8080"]);
    assert_eq!(
        request,
        format!(
            "GET /chat?room=1 HTTP/1.1\r\nhost: echo.test\r\nupgrade: websocket\r\nconnection: Upgrade\r\nsec-websocket-key: {KEY}\r\nsec-websocket-version: 13\r\norigin: http://guest.test\r\n\r\n"
        ),
        "origin form, the guest's headers but the proxy's own"
    );
    assert!(
        head.contains("Sec-WebSocket-Accept: from-the-server"),
        "the server's own answer: {head}"
    );
    assert_eq!(&up, b"frames up");
    assert_eq!(&down, b"frames down");
    assert!(
        log.borrow().opened.is_empty(),
        "not the WebSockets capability"
    );
    let stats = proxy.stats();
    assert_eq!((stats.websockets_opened, stats.websockets_open), (1, 0));
}

#[test]
fn with_raw_tunnels_a_refused_tunnel_is_a_502_naming_the_url() {
    let (sender, _far_end) = futures::channel::oneshot::channel();
    let (proxy, _log) = proxy(false, 1 << 20);
    let proxy = proxy.with_raw_tunnels(Rc::new(RawPeer {
        far_end: RefCell::new(Some(sender)),
        opened: Rc::default(),
    }));
    let answer = session(&proxy, Entry::ForwardProxy, |mut guest| async move {
        guest
            .write_all(upgrade("http://refused.test/ws", "").as_bytes())
            .await
            .unwrap();
        read_all(&mut guest).await
    });
    assert!(answer.starts_with("HTTP/1.1 502 "), "{answer}");
    assert!(
        answer.contains("ws://refused.test/ws") && answer.contains("connection refused"),
        "{answer}"
    );
    assert_eq!(proxy.stats().websockets_refused, 1);
}
