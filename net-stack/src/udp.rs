//! UDP to elsewhere: the datagrams the guest sends to addresses the stack does not serve come
//! out of one `UdpEndpoint`, and the endpoint sends datagrams back to the guest as if the remote
//! had answered. The stack's state implements `UdpHost` (the queue and building frames); nothing
//! else of the stack is known here.

use std::collections::VecDeque;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

use crate::shared::Shared;

/// One UDP datagram between the guest and an address elsewhere.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Datagram {
    /// The guest's address and port (the source of what it sent, the destination of replies).
    pub guest: SocketAddrV4,
    /// The address and port elsewhere, as the guest addressed it: a fake IP (see
    /// `Stack::fake_ip_name`) or an address outside the guest network.
    pub remote: SocketAddrV4,
    /// The UDP payload.
    pub payload: Vec<u8>,
}

/// Why a datagram to elsewhere could not be carried, as the guest learns it: the code of the
/// ICMP destination unreachable message `UdpEndpoint::unreachable` sends (RFC 792, RFC 1812).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unreachable {
    /// Code 0, from the gateway: no way to the destination at all (e.g. the relay is down).
    Network,
    /// Code 1, from the gateway: the destination host cannot be reached (does not resolve).
    Host,
    /// Code 3, from the destination itself: nothing listens on that port.
    Port,
    /// Code 13, from the gateway: the destination is blocked by policy.
    Prohibited,
}

/// Why `Stack::bind_udp_elsewhere` failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum UdpBindError {
    /// Another `UdpEndpoint` is alive; there is one at a time.
    #[error("a UDP endpoint for elsewhere is already bound")]
    InUse,
}

/// Why `UdpEndpoint::send` sent nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum UdpSendError {
    /// The payload does not fit in one frame (MTU − 28 bytes); the stack does not fragment.
    #[error("UDP payload of {len} bytes exceeds the {max} that fit in one frame")]
    TooLarge {
        /// The payload's length.
        len: usize,
        /// The largest payload that fits (`UdpEndpoint::max_payload`).
        max: usize,
    },
    /// The source is not elsewhere (one of our addresses, the guest network, or an address
    /// that is not routed): the endpoint cannot speak for it.
    #[error("{0} is not an address elsewhere")]
    NotElsewhere(Ipv4Addr),
    /// The guest address was never seen in a frame from the guest, so its MAC is unknown
    /// (counted in `Stats::dropped_no_neighbor`).
    #[error("no MAC known for guest address {0}")]
    NoNeighbor(Ipv4Addr),
    /// The queue towards the guest is full (counted in `Stats::dropped_outbound_full`).
    #[error("the queue towards the guest is full")]
    OutboundFull,
}

/// The datagrams waiting for the endpoint, and whether one is bound.
#[derive(Debug)]
pub(crate) struct UdpQueue {
    bound: bool,
    limit: usize,
    queue: VecDeque<Datagram>,
    waker: Option<Waker>,
}

impl UdpQueue {
    /// An unbound queue holding at most `limit` datagrams once bound.
    pub(crate) fn new(limit: usize) -> Self {
        UdpQueue {
            bound: false,
            limit,
            queue: VecDeque::new(),
            waker: None,
        }
    }

    /// Whether an endpoint takes datagrams to elsewhere now.
    pub(crate) fn is_bound(&self) -> bool {
        self.bound
    }

    /// Marks the endpoint bound.
    pub(crate) fn bind(&mut self) -> Result<(), UdpBindError> {
        if self.bound {
            return Err(UdpBindError::InUse);
        }
        self.bound = true;
        Ok(())
    }

    /// The endpoint is gone: forget what it did not read.
    fn unbind(&mut self) {
        self.bound = false;
        self.queue = VecDeque::new();
        self.waker = None;
    }

    /// Queues a datagram for the endpoint and wakes its reader; false (nothing queued) when
    /// the queue is full.
    pub(crate) fn deliver(&mut self, datagram: Datagram) -> bool {
        if self.queue.len() >= self.limit {
            return false;
        }
        self.queue.push_back(datagram);
        if let Some(waker) = self.waker.take() {
            waker.wake();
        }
        true
    }

    fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Datagram> {
        match self.queue.pop_front() {
            Some(datagram) => Poll::Ready(datagram),
            None => {
                self.waker = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }

    fn try_recv(&mut self) -> Option<Datagram> {
        self.queue.pop_front()
    }
}

/// What the endpoint needs of the stack's state; the stack's state implements it.
pub(crate) trait UdpHost {
    /// The queue of datagrams for the endpoint.
    fn udp_queue(&mut self) -> &mut UdpQueue;
    /// Queues ICMP destination unreachable towards the guest for `datagram`, which it sent.
    fn send_udp_unreachable(
        &mut self,
        datagram: &Datagram,
        why: Unreachable,
    ) -> Result<(), UdpSendError>;
    /// Builds the frame of a datagram from `remote` to `guest` and queues it towards the guest.
    fn send_udp(
        &mut self,
        remote: SocketAddrV4,
        guest: SocketAddrV4,
        payload: &[u8],
    ) -> Result<(), UdpSendError>;
}

/// How the endpoint holds the stack's shared state.
type SharedUdp = Shared<dyn UdpHost>;

/// Every UDP datagram the guest sends elsewhere, and a way to answer: for relaying UDP.
///
/// Made by `Stack::bind_udp_elsewhere`; at most one exists at a time. It receives the
/// datagrams whose destination is a fake IP (any port) or a routable address outside the guest
/// network that is not ours, sent to the gateway's MAC. DHCP and DNS at the gateway stay with
/// the stack, UDP to other ports of our own addresses still gets ICMP port unreachable, and
/// IPv4 fragments are dropped before UDP is looked at (`Stats::dropped_unsupported`), so a
/// datagram larger than one frame never arrives. What is not read waits in a queue of
/// `UdpConfig::max_queued_datagrams`; datagrams beyond are dropped and counted
/// (`Stats::dropped_udp_queue_full`). Dropping the endpoint discards the queue and restores
/// the behaviour without one: datagrams to elsewhere are dropped (`Stats::dropped_not_for_us`).
pub struct UdpEndpoint {
    shared: Rc<SharedUdp>,
    max_payload: usize,
}

impl UdpEndpoint {
    pub(crate) fn new(shared: Rc<SharedUdp>, max_payload: usize) -> Self {
        UdpEndpoint {
            shared,
            max_payload,
        }
    }

    /// The next datagram from the guest, or Pending (the waker is woken by `Stack::poll`).
    pub fn poll_recv(&self, cx: &mut Context<'_>) -> Poll<Datagram> {
        self.shared.inner.borrow_mut().udp_queue().poll_recv(cx)
    }

    /// Waits for the next datagram from the guest.
    pub async fn recv(&self) -> Datagram {
        futures::future::poll_fn(|cx| self.poll_recv(cx)).await
    }

    /// The next datagram from the guest if one is queued.
    pub fn try_recv(&self) -> Option<Datagram> {
        self.shared.inner.borrow_mut().udp_queue().try_recv()
    }

    /// Sends `payload` to the guest at `guest` as a datagram from `remote` (as if the remote
    /// answered), in one frame to the MAC the guest address was last seen with. The frame is
    /// queued towards the guest at once and the stack asks for a poll (`Stack::poll_wake`), so
    /// the driver pops it. Payloads above `max_payload` are refused, never fragmented.
    pub fn send(
        &self,
        remote: SocketAddrV4,
        guest: SocketAddrV4,
        payload: &[u8],
    ) -> Result<(), UdpSendError> {
        self.shared
            .inner
            .borrow_mut()
            .send_udp(remote, guest, payload)?;
        self.shared.request_poll();
        Ok(())
    }

    /// Tells the guest that `datagram`, which it sent, could not be carried: ICMP destination
    /// unreachable with the code for `why`, quoting the datagram, so a connected socket fails
    /// at once (ECONNREFUSED, EHOSTUNREACH, ENETUNREACH) instead of waiting for an answer.
    /// Counted in `Stats::udp_unreachable_sent`. No rate limit: the caller sends one per
    /// refused flow.
    pub fn unreachable(&self, datagram: &Datagram, why: Unreachable) -> Result<(), UdpSendError> {
        self.shared
            .inner
            .borrow_mut()
            .send_udp_unreachable(datagram, why)?;
        self.shared.request_poll();
        Ok(())
    }

    /// The largest payload `send` takes: the MTU less the IPv4 and UDP headers (28 bytes).
    pub fn max_payload(&self) -> usize {
        self.max_payload
    }
}

impl std::fmt::Debug for UdpEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UdpEndpoint")
            .field("max_payload", &self.max_payload)
            .finish_non_exhaustive()
    }
}

impl Drop for UdpEndpoint {
    fn drop(&mut self) {
        if let Ok(mut inner) = self.shared.inner.try_borrow_mut() {
            inner.udp_queue().unbind();
        }
    }
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;

    fn datagram(n: u8) -> Datagram {
        Datagram {
            guest: SocketAddrV4::new(Ipv4Addr::new(192, 168, 127, 3), 5000),
            remote: SocketAddrV4::new(Ipv4Addr::new(10, 1, 2, 3), 53),
            payload: vec![n],
        }
    }

    #[test]
    fn the_queue_is_bounded_one_binding_at_a_time_and_emptied_on_unbind() {
        let mut q = UdpQueue::new(2);
        assert!(!q.is_bound());
        assert_eq!(q.bind(), Ok(()));
        assert_eq!(q.bind(), Err(UdpBindError::InUse));
        assert!(q.deliver(datagram(1)));
        assert!(q.deliver(datagram(2)));
        assert!(!q.deliver(datagram(3)));
        assert_eq!(q.try_recv(), Some(datagram(1)));
        q.unbind();
        assert_eq!(q.try_recv(), None);
        assert_eq!(q.bind(), Ok(()));
    }
}
