//! What a relay hands out: [`RelayStream`], a TCP connection through the relay as a
//! `futures::io` byte stream, and [`RelayDatagrams`], a UDP flow.

use std::cell::RefCell;
use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};

use futures::io::{AsyncRead, AsyncWrite};

use crate::wisp::{CloseReason, SendError};

use super::shared::{Ended, Shared, SlotId};
use super::RelayError;

/// The error a stream's reader or writer sees when the stream did not end normally.
fn ended_error(ended: &Ended, host: &str, port: u16) -> io::Error {
    match ended {
        Ended::Server(CloseReason::ConnectionRefused) => io::Error::new(
            io::ErrorKind::ConnectionRefused,
            format!("relay: {host}:{port}: {}", CloseReason::ConnectionRefused),
        ),
        Ended::Server(reason) => io::Error::new(
            io::ErrorKind::ConnectionReset,
            format!("relay: {host}:{port}: {reason}"),
        ),
        Ended::Lost(reason) => io::Error::new(
            io::ErrorKind::ConnectionAborted,
            format!("relay connection lost: {reason}"),
        ),
    }
}

/// A TCP connection through the relay. Reads end with `Ok(0)` when the relay closes the
/// stream normally, with an error (refused, unreachable, reset, relay lost) otherwise. Dropping
/// it closes the stream towards the relay.
pub struct RelayStream {
    shared: Rc<RefCell<Shared>>,
    id: SlotId,
    /// The write side was shut down (Wisp cannot tell the relay; writes just stop).
    write_closed: bool,
}

impl std::fmt::Debug for RelayStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RelayStream")
            .field("id", &self.id.id)
            .finish_non_exhaustive()
    }
}

impl RelayStream {
    pub(crate) fn new(shared: Rc<RefCell<Shared>>, id: SlotId) -> Self {
        Self {
            shared,
            id,
            write_closed: false,
        }
    }

    /// The error for a stream of a connection that is gone.
    fn lost(&self) -> io::Error {
        io::Error::new(
            io::ErrorKind::ConnectionAborted,
            "relay connection lost".to_string(),
        )
    }
}

impl AsyncRead for RelayStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let mut sh = this.shared.borrow_mut();
        let Some(slot) = sh.slot(this.id) else {
            return Poll::Ready(Err(this.lost()));
        };
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        if let Some(front) = slot.rx.front() {
            let n = (front.len() - slot.rx_offset).min(buf.len());
            buf[..n].copy_from_slice(&front[slot.rx_offset..slot.rx_offset + n]);
            slot.rx_offset += n;
            if slot.rx_offset == front.len() {
                slot.rx.pop_front();
                slot.rx_offset = 0;
            }
            slot.rx_bytes -= n;
            sh.bytes_taken();
            return Poll::Ready(Ok(n));
        }
        match &slot.ended {
            Some(Ended::Server(CloseReason::Voluntary)) => Poll::Ready(Ok(0)),
            Some(ended) => Poll::Ready(Err(ended_error(ended, &slot.host, slot.port))),
            None => {
                slot.read_waker = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }
}

impl AsyncWrite for RelayStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.write_closed {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let mut sh = this.shared.borrow_mut();
        let Some(slot) = sh.slot(this.id) else {
            return Poll::Ready(Err(this.lost()));
        };
        if let Some(ended) = &slot.ended {
            return Poll::Ready(Err(match ended {
                Ended::Server(CloseReason::Voluntary) => io::ErrorKind::BrokenPipe.into(),
                ended => ended_error(ended, &slot.host, slot.port),
            }));
        }
        slot.write_waker = Some(cx.waker().clone());
        let Some(client) = sh.client.as_mut() else {
            return Poll::Ready(Err(this.lost()));
        };
        match client.send(this.id.id, buf) {
            Ok(0) => Poll::Pending,
            Ok(n) => {
                if let Some(slot) = sh.slot(this.id) {
                    slot.write_waker = None;
                }
                sh.stats.bytes_to_relay += n as u64;
                sh.wake_driver();
                Poll::Ready(Ok(n))
            }
            Err(SendError::UnknownStream(_)) => Poll::Ready(Err(this.lost())),
            Err(err) => Poll::Ready(Err(io::Error::new(io::ErrorKind::InvalidInput, err))),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // Written bytes are packets queued in the client; the driver sends them at once.
        Poll::Ready(Ok(()))
    }

    fn poll_close(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().write_closed = true;
        Poll::Ready(Ok(()))
    }
}

impl Drop for RelayStream {
    fn drop(&mut self) {
        if let Ok(mut sh) = self.shared.try_borrow_mut() {
            sh.release(self.id);
        }
    }
}

/// A UDP flow through the relay: datagrams to one destination and the datagrams it answers
/// with. Sends that do not fit the relay's queue are dropped (UDP may lose datagrams); so are
/// answers beyond the flow's queue, counted in the relay's stats.
pub struct RelayDatagrams {
    shared: Rc<RefCell<Shared>>,
    id: SlotId,
}

impl std::fmt::Debug for RelayDatagrams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RelayDatagrams")
            .field("id", &self.id.id)
            .finish_non_exhaustive()
    }
}

impl RelayDatagrams {
    pub(crate) fn new(shared: Rc<RefCell<Shared>>, id: SlotId) -> Self {
        Self { shared, id }
    }

    /// Sends one datagram; `Ok(false)` when it was dropped for want of queue space. An error
    /// once the flow ended ([`RelayError::Refused`] with the relay's reason, or
    /// [`RelayError::Lost`]) or for a datagram the relay cannot take ([`RelayError::Send`]).
    pub fn send(&self, datagram: &[u8]) -> Result<bool, RelayError> {
        let mut sh = self.shared.borrow_mut();
        let Some(slot) = sh.slot(self.id) else {
            return Err(gone());
        };
        if let Some(ended) = &slot.ended {
            return Err(flow_ended(ended, &slot.host, slot.port));
        }
        let Some(client) = sh.client.as_mut() else {
            return Err(gone());
        };
        match client.send(self.id.id, datagram) {
            Ok(0) => Ok(false),
            Ok(n) => {
                sh.stats.bytes_to_relay += n as u64;
                sh.wake_driver();
                Ok(true)
            }
            Err(err) => Err(err.into()),
        }
    }

    /// The next datagram from the destination; once the flow ended, why (as for
    /// [`send`](Self::send)).
    pub fn poll_recv(&self, cx: &mut Context<'_>) -> Poll<Result<Vec<u8>, RelayError>> {
        let mut sh = self.shared.borrow_mut();
        let Some(slot) = sh.slot(self.id) else {
            return Poll::Ready(Err(gone()));
        };
        if let Some(datagram) = slot.rx.pop_front() {
            slot.rx_bytes -= datagram.len();
            return Poll::Ready(Ok(datagram));
        }
        if let Some(ended) = &slot.ended {
            return Poll::Ready(Err(flow_ended(ended, &slot.host, slot.port)));
        }
        slot.read_waker = Some(cx.waker().clone());
        Poll::Pending
    }

    /// The next datagram (see [`poll_recv`](Self::poll_recv)).
    pub async fn recv(&self) -> Result<Vec<u8>, RelayError> {
        std::future::poll_fn(|cx| self.poll_recv(cx)).await
    }
}

/// Why a flow ended, as a [`RelayError`]: the server's CLOSE keeps its reason.
fn flow_ended(ended: &Ended, host: &str, port: u16) -> RelayError {
    match ended {
        Ended::Server(reason) => RelayError::Refused {
            host: host.to_string(),
            port,
            reason: *reason,
        },
        Ended::Lost(reason) => RelayError::Lost {
            reason: reason.clone(),
        },
    }
}

/// A flow whose relay connection is gone (its slot released with the connection).
fn gone() -> RelayError {
    RelayError::Lost {
        reason: "the relay connection that carried this flow is gone".into(),
    }
}

impl Drop for RelayDatagrams {
    fn drop(&mut self) {
        if let Ok(mut sh) = self.shared.try_borrow_mut() {
            sh.release(self.id);
        }
    }
}
