//! A connection: the sending side of one link to a port or an inbox.

use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use postbox_core::{LinkId, PeerIdentity, PortSpec};
use postbox_transport::{Link, Wait};

use crate::client_link::{CallRequest, ClientLink, Granted, OnewayFailure};
use crate::error::{
    CallError, LoanError, SendBatchError, SendError, SendTimeoutError, TrySendError,
};
use crate::node::NodeShared;
use crate::{Message, ProcessId};

/// The sending side of a link to one port or inbox. Cheap to clone; usable from many threads.
///
/// Made by [`Node::connect`](crate::Node::connect) (a named port) or
/// [`Node::connect_inbox`](crate::Node::connect_inbox) (a node's inbox). Data flows straight
/// to the serving process; the broker is not involved after set-up. One-way sends respect the
/// port's [`PortSpec`]: its capacity per link (by credits the receiver returns as it takes
/// messages) and its overflow policy.
#[derive(Debug, Clone)]
pub struct Connection {
    link: Arc<ClientLink>,
}

impl Connection {
    pub(crate) fn new(
        link: Link,
        id: LinkId,
        server: PeerIdentity,
        spec: PortSpec,
        host_max: u32,
        granted: Granted,
        node: Weak<NodeShared>,
    ) -> std::io::Result<Self> {
        let tracker = node.upgrade();
        let link = Arc::new(ClientLink::new(link, id, server, spec, host_max, granted, node)?);
        if let Some(node) = tracker {
            node.track_link(id, link.end.link_handle());
        }
        Ok(Self { link })
    }

    /// True when `a` and `b` are clones of one connection (the same link).
    pub(crate) fn same_link(a: &Self, b: &Self) -> bool {
        Arc::ptr_eq(&a.link, &b.link)
    }

    /// The process serving the other end.
    #[must_use]
    pub fn server(&self) -> ProcessId {
        self.link.server.process_id
    }

    /// The serving process's identity (kernel credentials as the broker saw them).
    #[must_use]
    pub fn server_identity(&self) -> PeerIdentity {
        self.link.server
    }

    pub(crate) fn client_link(&self) -> &ClientLink {
        &self.link
    }

    /// How the port buffers: capacity, overflow policy, largest message; and how this link
    /// delivers: [`Delivery::Datagrams`](crate::Delivery::Datagrams) for a link to a datagram
    /// port on another host (one-way messages only, best effort), else reliably.
    #[must_use]
    pub fn spec(&self) -> PortSpec {
        self.link.spec
    }

    /// True for a link that carries best-effort datagrams.
    fn carries_datagrams(&self) -> bool {
        self.link.spec.delivery == postbox_core::Delivery::Datagrams
    }

    /// True once the link is known to be closed (the server is gone or broke the protocol).
    #[must_use]
    pub fn is_closed(&self) -> bool {
        self.link.end.is_closed()
    }

    /// Closes the link, for every clone of this connection: calls waiting on it fail with
    /// `PeerDied`, later sends with `Disconnected`, and the server sees the link close.
    pub fn close(&self) {
        self.link.end.close();
    }

    /// One-way messages sent on this link that the receiver has not taken yet, as far as its
    /// credits have told (they come back in batches of up to half the capacity).
    #[must_use]
    pub fn in_flight(&self) -> u64 {
        self.link.in_flight()
    }

    /// Sends a one-way message. At capacity, waits for room (a port that fails instead says
    /// `Full`; a drop-oldest port never waits). On a rendezvous port, returns only once the
    /// receiver has taken the message.
    ///
    /// # Errors
    /// [`SendError`] with the message: `Disconnected` when the server is gone, `TooLarge`,
    /// `Full` on a port whose overflow policy is to fail.
    pub fn send(&self, message: impl Into<Message>) -> Result<(), SendError> {
        let mut message = message.into();
        match self.link.send_oneway(&mut message, Wait::Forever, false) {
            Ok(()) => Ok(()),
            Err(failure) => Err(send_error(&self.link, failure, message)),
        }
    }

    /// Sends the one-way messages of `batch` in order, as [`send`](Self::send) would one by
    /// one, but as one write: on a shared-memory link the receiver sees them together and is
    /// woken once; on a Unix link they go in one system call (up to 32 KiB at a time). Sent
    /// messages are drained from `batch`, which is empty on success. Where a message must wait
    /// for room, the ones before it are delivered first (and other threads' sends on this
    /// connection may go between them while it waits for credit; until then they wait, or a
    /// `try_send` finds the link `Full`). A rendezvous port takes them one by one.
    ///
    /// # Errors
    /// [`SendBatchError`]; the messages not sent stay in `batch`, the one that failed first.
    pub fn send_batch(&self, batch: &mut Vec<Message>) -> Result<(), SendBatchError> {
        self.link.send_batch(batch, Wait::Forever).map_err(batch_error)
    }

    /// Like [`send_batch`](Self::send_batch), sending only what the link has room for now.
    /// On a Unix link each message is its own system call, as with [`try_send`](Self::try_send):
    /// a full link stops the batch between two messages and stays open.
    ///
    /// # Errors
    /// [`SendBatchError::Full`] when some did not fit (they stay in `batch`), and as
    /// [`send_batch`](Self::send_batch).
    pub fn try_send_batch(&self, batch: &mut Vec<Message>) -> Result<(), SendBatchError> {
        self.link.send_batch(batch, Wait::NonBlocking).map_err(batch_error)
    }

    /// Like [`send_batch`](Self::send_batch), waiting at most `timeout` for room; no message
    /// starts after that (on a Unix link each is its own system call, as with
    /// [`try_send_batch`](Self::try_send_batch)).
    ///
    /// # Errors
    /// [`SendBatchError::Timeout`] when some were not sent in time (they stay in `batch`), and
    /// as [`send_batch`](Self::send_batch).
    pub fn send_batch_timeout(
        &self,
        batch: &mut Vec<Message>,
        timeout: Duration,
    ) -> Result<(), SendBatchError> {
        self.link.send_batch(batch, Wait::timeout(timeout)).map_err(batch_error)
    }

    /// Like [`send_batch`](Self::send_batch), without blocking the thread (tokio).
    ///
    /// # Errors
    /// As [`send_batch`](Self::send_batch).
    pub async fn send_batch_async(&self, batch: &mut Vec<Message>) -> Result<(), SendBatchError> {
        self.link.send_batch_async(batch).await.map_err(batch_error)
    }

    /// Sends a one-way message and returns only once the receiver holds it (it was taken by a
    /// receive), whatever the port's capacity.
    ///
    /// # Errors
    /// As [`send`](Self::send); [`SendError::DatagramsOnly`] on a link that carries
    /// best-effort datagrams (nothing is sent).
    pub fn send_confirmed(&self, message: impl Into<Message>) -> Result<(), SendError> {
        let mut message = message.into();
        if self.carries_datagrams() {
            return Err(SendError::DatagramsOnly(message));
        }
        match self.link.send_oneway(&mut message, Wait::Forever, true) {
            Ok(()) => Ok(()),
            Err(failure) => Err(send_error(&self.link, failure, message)),
        }
    }

    /// Space for a payload of `len` bytes in this link's shared payload pool, as a message:
    /// fill it in place with [`Message::body_mut`], then send or call with it on this
    /// connection. The receiver reads it where it lies (zero-copy) and hands the space back
    /// when it drops the message. Waits for space the receiver still holds.
    ///
    /// A lent message sent on another connection is copied. Unsent, its space goes back when
    /// it is dropped. Once sent, its bytes are the receiver's: a lent message handed back
    /// after it was sent (a confirmed send whose receiver did not take it in time) has an
    /// empty body.
    ///
    /// # Errors
    /// [`LoanError`].
    pub fn loan(&self, len: usize) -> Result<Message, LoanError> {
        self.link.end.lend(len, Wait::Forever)
    }

    /// Like [`loan`](Self::loan), only if space is free now.
    ///
    /// # Errors
    /// [`LoanError`] ([`LoanError::Full`] when no space is free).
    pub fn try_loan(&self, len: usize) -> Result<Message, LoanError> {
        self.link.end.lend(len, Wait::NonBlocking)
    }

    /// Like [`loan`](Self::loan), waiting at most `timeout` for space.
    ///
    /// # Errors
    /// [`LoanError`] ([`LoanError::Full`] when no space was handed back in time).
    pub fn loan_timeout(&self, len: usize, timeout: Duration) -> Result<Message, LoanError> {
        self.link.end.lend(len, Wait::timeout(timeout))
    }

    /// Reads large replies the server lends or passes through the link's pool where they lie,
    /// without copying them. Only when the server is trusted: it can still change those bytes
    /// while they are read. Without it such replies are copied out on arrival. (For every
    /// clone of this connection.)
    #[must_use]
    pub fn read_replies_in_place(self) -> Self {
        self.link.read_in_place.store(true, std::sync::atomic::Ordering::Relaxed);
        self
    }

    /// Sends a one-way message if the link has room now.
    ///
    /// # Errors
    /// [`TrySendError::Full`], [`TrySendError::Disconnected`], [`TrySendError::TooLarge`];
    /// the message is handed back.
    pub fn try_send(&self, message: impl Into<Message>) -> Result<(), TrySendError> {
        let mut message = message.into();
        match self.link.send_oneway(&mut message, Wait::NonBlocking, false) {
            Ok(()) => Ok(()),
            Err(OnewayFailure::TooLarge(limit)) => {
                Err(TrySendError::TooLarge { message, limit: clamp(limit) })
            }
            Err(OnewayFailure::Disconnected) => Err(TrySendError::Disconnected(message)),
            Err(OnewayFailure::Denied) => {
                Err(TrySendError::AccessDenied { denied: self.link.send_denied(), message })
            }
            // A rendezvous send cannot complete without waiting.
            Err(OnewayFailure::Full | OnewayFailure::Timeout | OnewayFailure::NotTaken) => {
                Err(TrySendError::Full(message))
            }
        }
    }

    /// Sends a one-way message, waiting at most `timeout` for room (and, on a rendezvous
    /// port, for the receiver to take it).
    ///
    /// # Errors
    /// [`SendTimeoutError`], with the message.
    pub fn send_timeout(
        &self,
        message: impl Into<Message>,
        timeout: Duration,
    ) -> Result<(), SendTimeoutError> {
        self.send_wait(message.into(), Wait::timeout(timeout), false)
    }

    /// Like [`send_timeout`](Self::send_timeout), until `deadline`.
    ///
    /// # Errors
    /// [`SendTimeoutError`], with the message.
    pub fn send_deadline(
        &self,
        message: impl Into<Message>,
        deadline: Instant,
    ) -> Result<(), SendTimeoutError> {
        self.send_wait(message.into(), Wait::Until(deadline), false)
    }

    /// Like [`send_confirmed`](Self::send_confirmed), waiting at most `timeout`.
    ///
    /// # Errors
    /// [`SendTimeoutError::NotTaken`] when the message was sent but not taken in time;
    /// [`SendTimeoutError::DatagramsOnly`] on a link that carries best-effort datagrams.
    pub fn send_confirmed_timeout(
        &self,
        message: impl Into<Message>,
        timeout: Duration,
    ) -> Result<(), SendTimeoutError> {
        let message = message.into();
        if self.carries_datagrams() {
            return Err(SendTimeoutError::DatagramsOnly(message));
        }
        self.send_wait(message, Wait::timeout(timeout), true)
    }

    fn send_wait(
        &self,
        mut message: Message,
        wait: Wait,
        confirm: bool,
    ) -> Result<(), SendTimeoutError> {
        match self.link.send_oneway(&mut message, wait, confirm) {
            Ok(()) => Ok(()),
            Err(OnewayFailure::TooLarge(limit)) => {
                Err(SendTimeoutError::TooLarge { message, limit: clamp(limit) })
            }
            Err(OnewayFailure::Full | OnewayFailure::Timeout) => {
                Err(SendTimeoutError::Timeout(message))
            }
            Err(OnewayFailure::NotTaken) => Err(SendTimeoutError::NotTaken(message)),
            Err(OnewayFailure::Disconnected) => Err(SendTimeoutError::Disconnected(message)),
            Err(OnewayFailure::Denied) => {
                Err(SendTimeoutError::AccessDenied { denied: self.link.send_denied(), message })
            }
        }
    }

    /// Sends a one-way message without blocking the thread (tokio): waits for room, and on a
    /// rendezvous port for the receiver, by awaiting readiness. Usable beside the blocking
    /// forms on the same connection.
    ///
    /// # Errors
    /// As [`send`](Self::send).
    pub async fn send_async(&self, message: impl Into<Message>) -> Result<(), SendError> {
        let mut message = message.into();
        match self.link.send_oneway_async(&mut message, false).await {
            Ok(()) => Ok(()),
            Err(failure) => Err(send_error(&self.link, failure, message)),
        }
    }

    /// Like [`send_confirmed`](Self::send_confirmed), without blocking the thread (tokio).
    ///
    /// # Errors
    /// As [`send_confirmed`](Self::send_confirmed).
    pub async fn send_confirmed_async(&self, message: impl Into<Message>) -> Result<(), SendError> {
        let mut message = message.into();
        if self.carries_datagrams() {
            return Err(SendError::DatagramsOnly(message));
        }
        match self.link.send_oneway_async(&mut message, true).await {
            Ok(()) => Ok(()),
            Err(failure) => Err(send_error(&self.link, failure, message)),
        }
    }

    /// Sends `request` and awaits the reply without blocking the thread (tokio). Many calls
    /// may be in flight on one connection, from tasks and threads alike. Dropping the future
    /// gives up on the reply. For a deadline, wrap it in `tokio::time::timeout`.
    ///
    /// # Errors
    /// As [`call`](Self::call).
    pub async fn call_async(&self, request: impl Into<Message>) -> Result<Message, CallError> {
        self.link.call_async(request.into()).await
    }

    /// Sends `request` and waits for the reply, however long it takes.
    ///
    /// If the server dies meanwhile the call fails with [`CallError::PeerDied`] at once (the
    /// kernel closes its end of the link); no timeout is needed for that. Calls are not
    /// counted against the port's capacity: each waits for its own reply.
    ///
    /// # Errors
    /// [`CallError`]; when the request was not sent it is handed back
    /// ([`CallError::DatagramsOnly`] on a link that carries best-effort datagrams).
    pub fn call(&self, request: impl Into<Message>) -> Result<Message, CallError> {
        self.link.call(request.into(), None)
    }

    /// Opens this connection's feed: a one-way run of small messages to the server, straight
    /// through the link's shared memory, for one thread of this process (see
    /// [`FeedSender`](crate::FeedSender)). Returns once the server accepted
    /// ([`Envelope::accept_feed`](crate::Envelope::accept_feed)). One feed per connection.
    ///
    /// # Errors
    /// [`OpenFeedError`](crate::OpenFeedError): `NotShared` (a Unix or remote link), `Taken`,
    /// `AccessDenied`, `Refused`, `PeerDied`.
    pub fn open_feed(&self) -> Result<crate::FeedSender, crate::OpenFeedError> {
        crate::feed::open(&self.link, None)
    }

    /// Like [`open_feed`](Self::open_feed), giving up after `timeout` (the feed is then
    /// closed: the server may have taken its end).
    ///
    /// # Errors
    /// As [`open_feed`](Self::open_feed), and `Timeout`.
    pub fn open_feed_timeout(
        &self,
        timeout: Duration,
    ) -> Result<crate::FeedSender, crate::OpenFeedError> {
        crate::feed::open(&self.link, Instant::now().checked_add(timeout))
    }

    /// Like [`call`](Self::call), giving up after `timeout`.
    ///
    /// # Errors
    /// [`CallError::Timeout`] when no reply came in time, and the others of [`call`](Self::call).
    pub fn call_timeout(
        &self,
        request: impl Into<Message>,
        timeout: Duration,
    ) -> Result<Message, CallError> {
        self.link.call(request.into(), Instant::now().checked_add(timeout))
    }

    /// Like [`call`](Self::call), giving up at `deadline` (if any), with `while_waiting` run
    /// once the request is written, before the wait for the reply (see
    /// `ClientLink::call_correlated`). The request is a [`Message`], or bytes the caller holds
    /// (`RequestBytes`).
    pub(crate) fn call_while(
        &self,
        request: impl CallRequest,
        deadline: Option<Instant>,
        while_waiting: impl FnOnce(),
    ) -> Result<Message, CallError> {
        self.link.call_correlated(request, deadline, while_waiting).map(|(message, _)| message)
    }

    /// Like [`call`](Self::call), giving up at `deadline`.
    ///
    /// # Errors
    /// [`CallError::Timeout`] when no reply came in time, and the others of [`call`](Self::call).
    pub fn call_deadline(
        &self,
        request: impl Into<Message>,
        deadline: Instant,
    ) -> Result<Message, CallError> {
        self.link.call(request.into(), Some(deadline))
    }
}

fn send_error(link: &ClientLink, failure: OnewayFailure, message: Message) -> SendError {
    match failure {
        OnewayFailure::TooLarge(limit) => SendError::TooLarge { message, limit: clamp(limit) },
        OnewayFailure::Full | OnewayFailure::Timeout | OnewayFailure::NotTaken => {
            SendError::Full(message)
        }
        OnewayFailure::Disconnected => SendError::Disconnected(message),
        OnewayFailure::Denied => SendError::AccessDenied { denied: link.send_denied(), message },
    }
}

fn batch_error(failure: OnewayFailure) -> SendBatchError {
    match failure {
        OnewayFailure::TooLarge(limit) => SendBatchError::TooLarge { limit: clamp(limit) },
        OnewayFailure::Full => SendBatchError::Full,
        OnewayFailure::Timeout => SendBatchError::Timeout,
        OnewayFailure::NotTaken => SendBatchError::NotTaken,
        OnewayFailure::Disconnected => SendBatchError::Disconnected,
        OnewayFailure::Denied => SendBatchError::AccessDenied,
    }
}

fn clamp(limit: u64) -> u32 {
    u32::try_from(limit).unwrap_or(u32::MAX)
}
