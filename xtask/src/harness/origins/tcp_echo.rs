//! [`TcpEcho`]: a TCP server on 127.0.0.1 that sends every byte back as it comes, for the
//! relay's raw TCP round trip. A thread accepts; each connection has its own thread that
//! copies what it reads back to the peer and shuts down its write half once the peer's has
//! ended (so a client that half-closes reads the whole echo, then EOF).

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::Result;

/// How long a connection may stay silent before its thread gives up on it.
const IDLE_LIMIT: Duration = Duration::from_secs(60);

/// A connection's thread and a handle to its socket (to end it when the server stops).
type Connection = (TcpStream, JoinHandle<()>);

/// A running TCP echo server; stops, ending its connections, when dropped.
pub struct TcpEcho {
    port: u16,
    echoed: Arc<AtomicU64>,
    accepted: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    connections: Arc<Mutex<Vec<Connection>>>,
    thread: Option<JoinHandle<()>>,
}

impl TcpEcho {
    /// Starts it on a free port of 127.0.0.1.
    pub fn start() -> Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        // Polled, so that dropping the server ends the accept loop.
        listener.set_nonblocking(true)?;
        let port = listener.local_addr()?.port();
        let echoed = Arc::new(AtomicU64::new(0));
        let accepted = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let connections: Arc<Mutex<Vec<Connection>>> = Arc::default();
        let thread = {
            let (echoed, accepted, stop, connections) = (
                echoed.clone(),
                accepted.clone(),
                stop.clone(),
                connections.clone(),
            );
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let stream = match listener.accept() {
                        Ok((stream, _)) => stream,
                        Err(err) if err.kind() == ErrorKind::WouldBlock => {
                            std::thread::sleep(Duration::from_millis(20));
                            continue;
                        }
                        Err(_) => continue,
                    };
                    accepted.fetch_add(1, Ordering::Relaxed);
                    let Ok(handle) = stream.try_clone() else {
                        continue;
                    };
                    let echoed = echoed.clone();
                    let worker = std::thread::spawn(move || echo(stream, &echoed));
                    let mut list = connections.lock().unwrap_or_else(|e| e.into_inner());
                    // Forget the connections that ended.
                    let (done, open): (Vec<_>, Vec<_>) =
                        list.drain(..).partition(|(_, t)| t.is_finished());
                    for (_, t) in done {
                        let _ = t.join();
                    }
                    *list = open;
                    list.push((handle, worker));
                }
            })
        };
        Ok(Self {
            port,
            echoed,
            accepted,
            stop,
            connections,
            thread: Some(thread),
        })
    }

    /// Its port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Bytes sent back so far, over all connections.
    pub fn echoed(&self) -> u64 {
        self.echoed.load(Ordering::Relaxed)
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::Relaxed)
    }
}

/// Copies `stream`'s bytes back to it until its peer stops sending (EOF), then shuts down
/// the write half; an error or [`IDLE_LIMIT`] of silence ends it too.
fn echo(mut stream: TcpStream, echoed: &AtomicU64) {
    if stream.set_nonblocking(false).is_err() || stream.set_read_timeout(Some(IDLE_LIMIT)).is_err()
    {
        return;
    }
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                if stream.write_all(&buf[..n]).is_err() {
                    return;
                }
                echoed.fetch_add(n as u64, Ordering::Relaxed);
            }
            Err(err) if err.kind() == ErrorKind::Interrupted => continue,
            Err(_) => return,
        }
    }
    let _ = stream.shutdown(Shutdown::Write);
}

impl Drop for TcpEcho {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
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

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::net::{Shutdown, TcpStream};
    use std::time::{Duration, Instant};

    use super::TcpEcho;
    use crate::harness::origins::blob;

    #[test]
    fn echoes_a_mebibyte_then_eof_after_a_half_close() {
        let server = TcpEcho::start().unwrap();
        let mut stream = TcpStream::connect(("127.0.0.1", server.port())).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let data = blob(1 << 20);
        // Sent from another thread: the echo comes back while the rest is still going out.
        let sender = {
            let mut stream = stream.try_clone().unwrap();
            let data = data.clone();
            std::thread::spawn(move || {
                stream.write_all(&data).unwrap();
                stream.shutdown(Shutdown::Write).unwrap();
            })
        };
        let mut got = Vec::new();
        stream.read_to_end(&mut got).unwrap();
        sender.join().unwrap();
        assert_eq!(got.len(), data.len());
        assert!(got == data, "the echo differs from what was sent");
        assert_eq!(server.echoed(), 1 << 20);
        assert_eq!(server.accepted(), 1);
    }

    #[test]
    fn dropping_the_server_ends_an_open_connection() {
        let server = TcpEcho::start().unwrap();
        let mut stream = TcpStream::connect(("127.0.0.1", server.port())).unwrap();
        stream.write_all(b"ping").unwrap();
        let mut buf = [0u8; 4];
        stream.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"ping");
        let started = Instant::now();
        drop(server);
        assert!(started.elapsed() < Duration::from_secs(5), "drop waited");
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let mut rest = Vec::new();
        assert_eq!(stream.read_to_end(&mut rest).unwrap(), 0, "not closed");
    }
}
