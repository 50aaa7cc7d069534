//! [`WsEcho`]: a WebSocket echo server on 127.0.0.1, plain (`ws://`) and over TLS (`wss://`,
//! the HTTPS origin's certificate from the test CA), for the guest-WebSocket checks. Written
//! with tungstenite (the crate under tokio-tungstenite), blocking, a thread per connection,
//! like the other origins:
//! - text and binary messages are sent back as they came, in order;
//! - a subprotocol is chosen when the client offers one of [`KNOWN_PROTOCOLS`] (the first
//!   it offers of them), none otherwise;
//! - the text message [`CLOSE_REQUEST`] makes the server close with [`SERVER_CLOSE_CODE`] and
//!   [`SERVER_CLOSE_REASON`];
//! - an upgrade on [`REFUSED_PATH`] is answered `403 Forbidden` with a short body;
//! - every session is recorded ([`Session`]): path, `Origin`, protocol, messages, and the
//!   client's Close (code and reason) or how it ended, so checks can see what reached it.

use std::io::ErrorKind;
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{Context, Result};
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::{HeaderValue, StatusCode};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::{self, Message, WebSocket};

use super::files::OriginFiles;

/// The subprotocols the server knows, in its order of preference when several are offered.
pub const KNOWN_PROTOCOLS: [&str; 2] = ["echo.v2", "chat.v1"];
/// A text message asking the server to close the session.
pub const CLOSE_REQUEST: &str = "close-4001";
/// The code the server closes with on [`CLOSE_REQUEST`].
pub const SERVER_CLOSE_CODE: u16 = 4001;
/// The reason the server closes with on [`CLOSE_REQUEST`].
pub const SERVER_CLOSE_REASON: &str = "asked to close by the client";
/// The path whose upgrades are refused with 403.
pub const REFUSED_PATH: &str = "/refuse";
/// The body of the 403.
pub const REFUSED_BODY: &str = "no WebSockets here";
/// Largest message the server takes (the checks send at most 1 MiB).
const MAX_MESSAGE: usize = 8 << 20;
/// How long a connection may stay silent before its thread gives up on it.
const IDLE_LIMIT: Duration = Duration::from_secs(120);

/// What the server saw of one session.
#[derive(Debug, Clone, Default)]
pub struct Session {
    /// The request path (with the query).
    pub path: String,
    /// The `Origin` header, if the client sent one.
    pub origin: Option<String>,
    /// The subprotocols the client offered.
    pub offered: Vec<String>,
    /// The subprotocol chosen.
    pub protocol: Option<String>,
    /// Data messages received (and echoed).
    pub messages: u64,
    /// The client's Close: `Some(None)` when it carried no code.
    pub client_close: Option<Option<(u16, String)>>,
    /// The session is over (closed, failed or cut).
    pub ended: bool,
    /// How it ended when not by a Close from the client.
    pub error: Option<String>,
}

type Sessions = Arc<Mutex<Vec<Session>>>;
/// Changes the current session's record.
type Update<'a> = &'a dyn Fn(&dyn Fn(&mut Session));
/// A connection's thread and a handle to its socket (to end it when the server stops).
type Connection = (TcpStream, JoinHandle<()>);

/// The echo server, plain and TLS listeners; stops, ending its connections, when dropped.
pub struct WsEcho {
    ws_port: u16,
    wss_port: u16,
    sessions: Sessions,
    stop: Arc<AtomicBool>,
    connections: Arc<Mutex<Vec<Connection>>>,
    threads: Vec<JoinHandle<()>>,
}

impl WsEcho {
    /// Starts both listeners on free ports of 127.0.0.1; `files` gives the TLS certificate.
    pub fn start(files: &OriginFiles) -> Result<Self> {
        let tls = files
            .server_tls()
            .context("the wss listener's certificate")?;
        let sessions: Sessions = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let connections: Arc<Mutex<Vec<Connection>>> = Arc::default();
        let mut threads = Vec::new();
        let mut ports = Vec::new();
        for tls in [None, Some(tls)] {
            let listener = TcpListener::bind("127.0.0.1:0")?;
            // Polled, so that dropping the server ends the accept loop.
            listener.set_nonblocking(true)?;
            ports.push(listener.local_addr()?.port());
            let (sessions, stop, connections) =
                (sessions.clone(), stop.clone(), connections.clone());
            threads.push(std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let stream = match listener.accept() {
                        Ok((stream, _)) => stream,
                        Err(err) if err.kind() == ErrorKind::WouldBlock => {
                            std::thread::sleep(Duration::from_millis(20));
                            continue;
                        }
                        Err(_) => continue,
                    };
                    let Ok(handle) = stream.try_clone() else {
                        continue;
                    };
                    let (sessions, tls) = (sessions.clone(), tls.clone());
                    let worker = std::thread::spawn(move || {
                        if stream.set_nonblocking(false).is_err()
                            || stream.set_read_timeout(Some(IDLE_LIMIT)).is_err()
                        {
                            return;
                        }
                        let _ = stream.set_nodelay(true);
                        // The accept loop keeps a clone of the socket: close it here once the
                        // session is over, or the client waits for the TCP close (a browser
                        // for 2 s after the closing handshake).
                        let Ok(closer) = stream.try_clone() else {
                            return;
                        };
                        match tls {
                            None => serve(stream, &sessions),
                            Some(config) => {
                                let Ok(conn) = rustls::ServerConnection::new(config) else {
                                    return;
                                };
                                serve(rustls::StreamOwned::new(conn, stream), &sessions);
                            }
                        }
                        let _ = closer.shutdown(Shutdown::Both);
                    });
                    let mut list = connections.lock().unwrap_or_else(|e| e.into_inner());
                    let (done, open): (Vec<_>, Vec<_>) =
                        list.drain(..).partition(|(_, t)| t.is_finished());
                    for (_, t) in done {
                        let _ = t.join();
                    }
                    *list = open;
                    list.push((handle, worker));
                }
            }));
        }
        Ok(Self {
            ws_port: ports[0],
            wss_port: ports[1],
            sessions,
            stop,
            connections,
            threads,
        })
    }

    /// `http://127.0.0.1:PORT` of the plain listener (what a rewrite points a name at).
    pub fn ws_base(&self) -> String {
        format!("http://127.0.0.1:{}", self.ws_port)
    }

    /// `https://127.0.0.1:PORT` of the TLS listener.
    pub fn wss_base(&self) -> String {
        format!("https://127.0.0.1:{}", self.wss_port)
    }

    /// Every session so far, in the order they were accepted.
    pub fn sessions(&self) -> Vec<Session> {
        self.sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The sessions whose path contains `tag`.
    pub fn sessions_tagged(&self, tag: &str) -> Vec<Session> {
        self.sessions()
            .into_iter()
            .filter(|s| s.path.contains(tag))
            .collect()
    }
}

impl Drop for WsEcho {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        let connections =
            std::mem::take(&mut *self.connections.lock().unwrap_or_else(|e| e.into_inner()));
        for (stream, worker) in connections {
            let _ = stream.shutdown(Shutdown::Both);
            let _ = worker.join();
        }
    }
}

/// The protocol to choose among `offered`: the first known one the client offers.
fn choose(offered: &[String]) -> Option<&'static str> {
    offered
        .iter()
        .find_map(|p| KNOWN_PROTOCOLS.iter().find(|k| *k == p).copied())
}

/// Answers the handshake (refusing [`REFUSED_PATH`]) and echoes until the session ends.
fn serve<S: std::io::Read + std::io::Write>(stream: S, sessions: &Sessions) {
    let mut seen = Session::default();
    // tungstenite's callback type: the refusal is a whole HTTP response.
    #[allow(clippy::result_large_err)]
    let callback = |request: &Request, mut response: Response| {
        seen.path = request
            .uri()
            .path_and_query()
            .map(|p| p.to_string())
            .unwrap_or_default();
        seen.origin = request
            .headers()
            .get("origin")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        seen.offered = request
            .headers()
            .get_all("sec-websocket-protocol")
            .iter()
            .flat_map(|v| v.to_str().unwrap_or("").split(','))
            .map(|p| p.trim().to_string())
            .filter(|p| !p.is_empty())
            .collect();
        if request.uri().path() == REFUSED_PATH {
            let mut refusal = ErrorResponse::new(Some(REFUSED_BODY.to_string()));
            *refusal.status_mut() = StatusCode::FORBIDDEN;
            return Err(refusal);
        }
        if let Some(chosen) = choose(&seen.offered) {
            seen.protocol = Some(chosen.to_string());
            response
                .headers_mut()
                .insert("sec-websocket-protocol", HeaderValue::from_static(chosen));
        }
        Ok(response)
    };
    let config = WebSocketConfig::default()
        .max_message_size(Some(MAX_MESSAGE))
        .max_frame_size(Some(MAX_MESSAGE));
    // The error holds the callback (and its borrow of `seen`): keep only its text.
    let accepted = tungstenite::accept_hdr_with_config(stream, callback, Some(config))
        .map_err(|err| err.to_string());
    let index = {
        let mut list = sessions.lock().unwrap_or_else(|e| e.into_inner());
        list.push(seen.clone());
        list.len() - 1
    };
    let update = |f: &dyn Fn(&mut Session)| {
        let mut list = sessions.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut list[index]);
    };
    let mut ws = match accepted {
        Ok(ws) => ws,
        Err(err) => {
            let error = format!("handshake: {err}");
            update(&|s| {
                s.ended = true;
                s.error = Some(error.clone());
            });
            return;
        }
    };
    let error = echo(&mut ws, &update);
    update(&|s| {
        s.ended = true;
        s.error = error.clone();
    });
}

/// Echoes data messages until the session ends; `None` when it ended with a closing
/// handshake, else what went wrong.
fn echo<S: std::io::Read + std::io::Write>(
    ws: &mut WebSocket<S>,
    update: Update,
) -> Option<String> {
    // Our Close is sent: what still comes before the client's answer is not echoed.
    let mut closing = false;
    loop {
        let message = match ws.read() {
            Ok(message) => message,
            // The closing handshake is complete (either side began it).
            Err(tungstenite::Error::ConnectionClosed) => return None,
            Err(err) => return Some(err.to_string()),
        };
        let reply = match message {
            Message::Text(text) if text.as_str() == CLOSE_REQUEST => {
                update(&|s| s.messages += 1);
                let frame = CloseFrame {
                    code: CloseCode::from(SERVER_CLOSE_CODE),
                    reason: SERVER_CLOSE_REASON.into(),
                };
                if let Err(err) = ws.close(Some(frame)) {
                    return Some(err.to_string());
                }
                closing = true;
                // Read on until the client's Close answers ours.
                continue;
            }
            Message::Text(_) | Message::Binary(_) => {
                update(&|s| s.messages += 1);
                if closing {
                    continue;
                }
                message
            }
            Message::Close(frame) => {
                let close = frame.map(|f| (u16::from(f.code), f.reason.to_string()));
                update(&|s| s.client_close = Some(close.clone()));
                // tungstenite queued the reply; the next read flushes it and ends.
                continue;
            }
            Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => continue,
        };
        if let Err(err) = ws.send(reply) {
            return Some(err.to_string());
        }
    }
}
