//! What the browser's WebSocket events leave for the relay's driver: the messages received and
//! not yet taken, their size against a bound, where the connection is, and the task to wake.
//!
//! The browser delivers events whenever its event loop runs them, whether or not the driver
//! wants data; this state is the meeting point. It is plain Rust over any message type `M`
//! (a JavaScript `Uint8Array` in the browser, `Vec<u8>` in the tests here), so the rules — the
//! receive bound, what a close before and after `open` means, that queued messages come out
//! before the end — are tested natively; [`browser_socket`](super::browser_socket) only wires
//! the events to it.

use std::collections::VecDeque;
use std::task::{Context, Poll, Waker};

use super::socket::{Close, SocketError};

/// Why a WebSocket that never opened failed: the browser's `error` and `close` events say
/// nothing more (on purpose: a page must not learn why a cross-origin connection failed).
pub(super) const CANNOT_OPEN: &str =
    "the browser could not open the WebSocket (refused, unreachable, TLS, or a subprotocol the \
     server did not accept)";

/// The close code a `close` event reports when the peer's Close frame had no code.
const NO_STATUS: u16 = 1005;

/// Where the connection is.
#[derive(Debug)]
enum Phase {
    /// `new WebSocket(...)` was called; no `open` yet.
    Connecting,
    /// `open` came; messages may arrive.
    Open,
    /// The connection ended cleanly: `poll_recv` gives what is queued, then `Ok(None)`.
    Closed,
    /// The connection failed or never opened: `poll_recv` gives what is queued, then this.
    Broken(SocketError),
}

/// Received messages and the connection's phase, shared by the event handlers and the socket.
pub(super) struct Inbox<M> {
    url: String,
    phase: Phase,
    /// Messages with their sizes in bytes, oldest first.
    queue: VecDeque<(M, usize)>,
    /// Sum of the sizes in `queue`.
    queued_bytes: usize,
    /// The most bytes `queue` ever held (for the closing log line).
    peak_bytes: usize,
    /// Most bytes `queue` may hold; a message beyond breaks the connection.
    limit: usize,
    /// Largest single message; a larger one breaks the connection ([`SocketError::TooLarge`]).
    max_message: usize,
    /// An `error` event came while open (the `close` that follows is then a failure).
    errored: bool,
    /// The task polling this socket (the relay's driver, or the dial): woken by every event.
    waker: Option<Waker>,
    /// The driver while its receiving is paused (it still flushes every wake-up): woken only
    /// when the connection ends, so a failure is seen even while no message is wanted.
    end_waker: Option<Waker>,
    /// The code and reason of a clean close (1005, "no status", is none).
    peer_close: Option<Close>,
}

impl<M> Inbox<M> {
    /// A connecting socket to `url` that may hold `limit` bytes of unread messages.
    pub(super) fn new(url: &str, limit: usize) -> Self {
        Self {
            url: url.to_string(),
            phase: Phase::Connecting,
            queue: VecDeque::new(),
            queued_bytes: 0,
            peak_bytes: 0,
            limit,
            max_message: usize::MAX,
            errored: false,
            waker: None,
            end_waker: None,
            peer_close: None,
        }
    }

    /// The same inbox refusing messages larger than `limit` bytes.
    pub(super) fn with_max_message(mut self, limit: usize) -> Self {
        self.max_message = limit;
        self
    }

    fn wake(&mut self) {
        if let Some(waker) = self.waker.take() {
            waker.wake();
        }
    }

    /// Wakes everyone: the connection's phase changed.
    fn wake_all(&mut self) {
        self.wake();
        if let Some(waker) = self.end_waker.take() {
            waker.wake();
        }
    }

    fn register(&mut self, cx: &Context<'_>) {
        match &self.waker {
            Some(w) if w.will_wake(cx.waker()) => {}
            _ => self.waker = Some(cx.waker().clone()),
        }
    }

    /// The `open` event.
    pub(super) fn opened(&mut self) {
        if matches!(self.phase, Phase::Connecting) {
            self.phase = Phase::Open;
        }
        self.wake();
    }

    /// A binary message of `len` bytes. Beyond the bound the connection breaks: the queue is
    /// dropped and the error returned, so the caller closes the WebSocket (the browser would
    /// otherwise keep reading into memory nobody bounds).
    pub(super) fn message(&mut self, message: M, len: usize) -> Result<(), SocketError> {
        if !matches!(self.phase, Phase::Open) {
            // Nothing arrives before `open`; after a failure nothing is wanted.
            return Ok(());
        }
        if len > self.max_message {
            let err = SocketError::TooLarge {
                limit: self.max_message,
            };
            self.queue.clear();
            self.queued_bytes = 0;
            self.phase = Phase::Broken(err.clone());
            self.wake_all();
            return Err(err);
        }
        if self.queued_bytes + len > self.limit {
            let err = SocketError::Lost(format!(
                "the relay sent more than {} MiB the guest has not read",
                self.limit >> 20
            ));
            self.queue.clear();
            self.queued_bytes = 0;
            self.phase = Phase::Broken(err.clone());
            self.wake_all();
            return Err(err);
        }
        self.queued_bytes += len;
        self.peak_bytes = self.peak_bytes.max(self.queued_bytes);
        self.queue.push_back((message, len));
        self.wake();
        Ok(())
    }

    /// The `error` event: before `open` the dial failed; after, the `close` that follows
    /// reports a failure rather than an end.
    pub(super) fn errored(&mut self) {
        match self.phase {
            Phase::Connecting => {
                self.phase = Phase::Broken(SocketError::Connect {
                    url: self.url.clone(),
                    reason: CANNOT_OPEN.into(),
                });
            }
            Phase::Open => self.errored = true,
            Phase::Closed | Phase::Broken(_) => {}
        }
        self.wake_all();
    }

    /// The `close` event with its code, reason and `wasClean`.
    pub(super) fn closed(&mut self, code: u16, reason: &str, clean: bool) {
        let said = if reason.is_empty() {
            format!("code {code}")
        } else {
            format!("code {code}, {reason:?}")
        };
        match self.phase {
            Phase::Connecting => {
                self.phase = Phase::Broken(SocketError::Connect {
                    url: self.url.clone(),
                    reason: format!("{CANNOT_OPEN}; closed with {said}"),
                });
            }
            Phase::Open if clean && !self.errored => {
                self.phase = Phase::Closed;
                if code != NO_STATUS {
                    self.peer_close = Some(Close {
                        code,
                        reason: reason.to_string(),
                    });
                }
            }
            Phase::Open => {
                self.phase = Phase::Broken(SocketError::Lost(format!(
                    "the WebSocket broke ({said}, not a clean close)"
                )));
            }
            Phase::Closed | Phase::Broken(_) => {}
        }
        self.wake_all();
    }

    /// Ready once the dial's outcome is known: open, or why not.
    pub(super) fn poll_open(&mut self, cx: &Context<'_>) -> Poll<Result<(), SocketError>> {
        match &self.phase {
            Phase::Connecting => {
                self.register(cx);
                Poll::Pending
            }
            Phase::Open => Poll::Ready(Ok(())),
            Phase::Closed => Poll::Ready(Err(SocketError::Connect {
                url: self.url.clone(),
                reason: CANNOT_OPEN.into(),
            })),
            Phase::Broken(err) => Poll::Ready(Err(err.clone())),
        }
    }

    /// The oldest queued message; once none is left, the end (`Ok(None)`) or the failure.
    pub(super) fn poll_recv(&mut self, cx: &Context<'_>) -> Poll<Result<Option<M>, SocketError>> {
        if let Some((message, len)) = self.queue.pop_front() {
            self.queued_bytes -= len;
            return Poll::Ready(Ok(Some(message)));
        }
        match &self.phase {
            Phase::Connecting | Phase::Open => {
                self.register(cx);
                Poll::Pending
            }
            Phase::Closed => Poll::Ready(Ok(None)),
            Phase::Broken(err) => Poll::Ready(Err(err.clone())),
        }
    }

    /// Ready once the connection ended, however.
    pub(super) fn poll_ended(&mut self, cx: &Context<'_>) -> Poll<()> {
        match self.phase {
            Phase::Connecting | Phase::Open => {
                self.register(cx);
                Poll::Pending
            }
            Phase::Closed | Phase::Broken(_) => Poll::Ready(()),
        }
    }

    /// `Ok` while messages may be sent; else why not.
    pub(super) fn sendable(&self) -> Result<(), SocketError> {
        match &self.phase {
            Phase::Open => Ok(()),
            Phase::Connecting => Err(SocketError::Lost("the WebSocket is not open yet".into())),
            Phase::Closed => Err(SocketError::Lost("the relay closed the WebSocket".into())),
            Phase::Broken(err) => Err(err.clone()),
        }
    }

    /// Ready with the failure once the connection broke (a clean end is not one); until then
    /// the task is woken when the connection ends, but not by messages.
    pub(super) fn poll_broken(&mut self, cx: &Context<'_>) -> Poll<SocketError> {
        match &self.phase {
            Phase::Broken(err) => Poll::Ready(err.clone()),
            Phase::Connecting | Phase::Open => {
                match &self.end_waker {
                    Some(w) if w.will_wake(cx.waker()) => {}
                    _ => self.end_waker = Some(cx.waker().clone()),
                }
                Poll::Pending
            }
            Phase::Closed => Poll::Pending,
        }
    }

    /// A failure found by the socket itself (a `send` the browser refused).
    pub(super) fn fail(&mut self, err: SocketError) {
        if matches!(self.phase, Phase::Connecting | Phase::Open) {
            self.phase = Phase::Broken(err);
        }
        self.wake_all();
    }

    /// The peer's close code and reason after a clean close that carried one.
    pub(super) fn peer_close(&self) -> Option<Close> {
        self.peer_close.clone()
    }

    /// Bytes received and not yet taken, now and at most so far.
    pub(super) fn queued_bytes(&self) -> (usize, usize) {
        (self.queued_bytes, self.peak_bytes)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::task::Wake;

    use super::*;

    const URL: &str = "ws://relay.test/";

    /// Counts its wake-ups.
    #[derive(Default)]
    struct Counter(AtomicUsize);

    impl Wake for Counter {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn waker() -> (Arc<Counter>, Waker) {
        let counter = Arc::new(Counter::default());
        (counter.clone(), Waker::from(counter))
    }

    fn recv(
        inbox: &mut Inbox<Vec<u8>>,
        waker: &Waker,
    ) -> Poll<Result<Option<Vec<u8>>, SocketError>> {
        inbox.poll_recv(&Context::from_waker(waker))
    }

    #[test]
    fn open_then_messages_in_order_then_clean_end() {
        let (count, w) = waker();
        let mut inbox = Inbox::new(URL, 100);
        let cx = Context::from_waker(&w);
        assert!(inbox.poll_open(&cx).is_pending());
        inbox.opened();
        assert_eq!(count.0.load(Ordering::SeqCst), 1, "open wakes the dial");
        assert_eq!(inbox.poll_open(&cx), Poll::Ready(Ok(())));
        assert!(recv(&mut inbox, &w).is_pending());
        inbox.message(vec![1], 1).unwrap();
        inbox.message(vec![2, 2], 2).unwrap();
        assert_eq!(
            count.0.load(Ordering::SeqCst),
            2,
            "a message wakes the receiver"
        );
        assert_eq!(inbox.queued_bytes(), (3, 3));
        inbox.closed(1000, "", true);
        // What came before the close still comes out, in order, then the end.
        assert_eq!(recv(&mut inbox, &w), Poll::Ready(Ok(Some(vec![1]))));
        assert_eq!(recv(&mut inbox, &w), Poll::Ready(Ok(Some(vec![2, 2]))));
        assert_eq!(recv(&mut inbox, &w), Poll::Ready(Ok(None)));
        assert_eq!(inbox.queued_bytes(), (0, 3));
        assert!(inbox.sendable().is_err());
        assert!(
            inbox.poll_broken(&cx).is_pending(),
            "a clean end is no failure"
        );
    }

    #[test]
    fn failure_before_open_is_a_connect_error() {
        let (count, w) = waker();
        let mut inbox: Inbox<Vec<u8>> = Inbox::new(URL, 100);
        let cx = Context::from_waker(&w);
        assert!(inbox.poll_open(&cx).is_pending());
        inbox.errored();
        inbox.closed(1006, "", false);
        assert!(count.0.load(Ordering::SeqCst) >= 1);
        match inbox.poll_open(&cx) {
            Poll::Ready(Err(SocketError::Connect { url, reason })) => {
                assert_eq!(url, URL);
                assert_eq!(
                    reason, CANNOT_OPEN,
                    "the error event decides; the close adds nothing"
                );
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn close_before_open_without_error_names_the_code() {
        let (_, w) = waker();
        let mut inbox: Inbox<Vec<u8>> = Inbox::new(URL, 100);
        inbox.closed(1006, "", false);
        match inbox.poll_open(&Context::from_waker(&w)) {
            Poll::Ready(Err(SocketError::Connect { reason, .. })) => {
                assert!(reason.starts_with(CANNOT_OPEN), "{reason}");
                assert!(reason.contains("code 1006"), "{reason}");
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn unclean_close_is_a_loss_after_the_queue() {
        let (_, w) = waker();
        let mut inbox = Inbox::new(URL, 100);
        inbox.opened();
        inbox.message(vec![7], 1).unwrap();
        inbox.closed(1006, "", false);
        assert_eq!(recv(&mut inbox, &w), Poll::Ready(Ok(Some(vec![7]))));
        match recv(&mut inbox, &w) {
            Poll::Ready(Err(SocketError::Lost(text))) => {
                assert!(text.contains("1006"), "{text}")
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(inbox.poll_broken(&Context::from_waker(&w)).is_ready());
    }

    #[test]
    fn a_clean_close_keeps_the_peers_code_and_reason() {
        let (_, w) = waker();
        let mut inbox: Inbox<Vec<u8>> = Inbox::new(URL, 100);
        inbox.opened();
        assert_eq!(inbox.peer_close(), None);
        inbox.closed(4001, "done here", true);
        assert_eq!(recv(&mut inbox, &w), Poll::Ready(Ok(None)));
        assert_eq!(
            inbox.peer_close(),
            Some(Close {
                code: 4001,
                reason: "done here".into()
            })
        );
    }

    #[test]
    fn a_close_without_status_has_no_code() {
        let mut inbox: Inbox<Vec<u8>> = Inbox::new(URL, 100);
        inbox.opened();
        inbox.closed(NO_STATUS, "", true);
        assert_eq!(inbox.peer_close(), None);
    }

    #[test]
    fn a_message_over_the_message_limit_breaks_the_socket() {
        let (_, w) = waker();
        let mut inbox = Inbox::new(URL, 100).with_max_message(10);
        inbox.opened();
        inbox.message(vec![1; 10], 10).unwrap();
        assert_eq!(
            inbox.message(vec![2; 11], 11),
            Err(SocketError::TooLarge { limit: 10 })
        );
        assert_eq!(
            recv(&mut inbox, &w),
            Poll::Ready(Err(SocketError::TooLarge { limit: 10 }))
        );
    }

    #[test]
    fn error_then_clean_close_is_still_a_loss() {
        let (_, w) = waker();
        let mut inbox: Inbox<Vec<u8>> = Inbox::new(URL, 100);
        inbox.opened();
        inbox.errored();
        inbox.closed(1000, "bye", true);
        match recv(&mut inbox, &w) {
            Poll::Ready(Err(SocketError::Lost(text))) => {
                assert!(text.contains("\"bye\""), "{text}")
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn beyond_the_bound_the_socket_fails_and_drops_the_queue() {
        let (_, w) = waker();
        let mut inbox = Inbox::new(URL, 3 << 20);
        inbox.opened();
        inbox.message(vec![1], 2 << 20).unwrap();
        inbox.message(vec![2], 1 << 20).unwrap();
        // The driver's receiving is paused: it takes no message (so nothing is registered
        // through `poll_recv`) and only flushes. Messages do not wake it, the failure does.
        let (flusher, flush_w) = waker();
        let flush_cx = Context::from_waker(&flush_w);
        assert!(inbox.poll_broken(&flush_cx).is_pending());
        inbox.message(vec![9], 0).unwrap();
        assert_eq!(
            flusher.0.load(Ordering::SeqCst),
            0,
            "a message wakes no flusher"
        );
        // Exactly at the bound is fine; one byte more is not.
        let err = inbox.message(vec![3], 1).unwrap_err();
        assert_eq!(
            err,
            SocketError::Lost("the relay sent more than 3 MiB the guest has not read".into())
        );
        assert_eq!(
            flusher.0.load(Ordering::SeqCst),
            1,
            "the failure wakes the driver"
        );
        assert_eq!(inbox.poll_broken(&flush_cx), Poll::Ready(err.clone()));
        // Nothing queued comes out any more: the connection is over.
        assert_eq!(recv(&mut inbox, &w), Poll::Ready(Err(err.clone())));
        assert_eq!(inbox.queued_bytes().0, 0);
        assert_eq!(inbox.sendable(), Err(err.clone()));
        // Later messages and the close change nothing.
        inbox.message(vec![4], 1).unwrap();
        inbox.closed(1000, "", true);
        assert_eq!(recv(&mut inbox, &w), Poll::Ready(Err(err)));
    }

    #[test]
    fn taking_messages_makes_room_again() {
        let (_, w) = waker();
        let mut inbox = Inbox::new(URL, 10);
        inbox.opened();
        inbox.message(vec![0; 10], 10).unwrap();
        assert_eq!(recv(&mut inbox, &w), Poll::Ready(Ok(Some(vec![0; 10]))));
        inbox.message(vec![1; 10], 10).unwrap();
        assert_eq!(inbox.queued_bytes(), (10, 10));
    }

    #[test]
    fn ended_waits_for_the_close_and_a_local_failure_ends_it() {
        let (count, w) = waker();
        let cx = Context::from_waker(&w);
        let mut inbox: Inbox<Vec<u8>> = Inbox::new(URL, 10);
        inbox.opened();
        assert!(inbox.poll_ended(&cx).is_pending());
        let before = count.0.load(Ordering::SeqCst);
        inbox.fail(SocketError::Lost("send refused".into()));
        assert!(count.0.load(Ordering::SeqCst) > before);
        assert_eq!(inbox.poll_ended(&cx), Poll::Ready(()));
        assert_eq!(
            inbox.sendable(),
            Err(SocketError::Lost("send refused".into()))
        );
    }
}
