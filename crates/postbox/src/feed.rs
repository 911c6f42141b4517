//! Feeds: a one-way run of small messages from one thread on a connection's client side to
//! one thread of the serving process, through a ring in the link's shared memory.
//!
//! A feed is for data whose latency matters more than anything else a port offers: market
//! ticks, sensor samples, control set-points. It rides on a [`Connection`] (so the broker
//! looked the name up and checked the policy when it connected) and is opened by a call the
//! server accepts ([`Connection::open_feed`], [`Envelope::accept_feed`]). Then each end
//! belongs to one thread (`&mut self`): no lock, no frame header, no checksum, no priority,
//! no port queue. A message is at most [`FEED_MAX_LEN`] bytes, copied into a slot of a ring
//! of 256 and out of it; the sender waits (or gets `Full`) while the ring is full. The port's
//! capacity, priorities and selective receive do not apply to feed messages.
//!
//! Waits spin briefly, then sleep on a futex (the blocking forms) or wait on the link's
//! wake-up descriptor (the async forms, in slices of at most 20 ms).
//!
//! Death and damage are noticed as on the link: a dropped end closes the feed (the other end
//! gets [`FeedSendError::Disconnected`] or, once the ring is empty,
//! [`FeedRecvError::Disconnected`]); a killed peer is noticed through the link's socket,
//! looked at every 1024 sends or receives and after every sleep; a cut (revoked) link ends
//! the receiver at the next such look; a peer that scribbles impossible indices or lengths
//! over the ring gets its link shut down and [`FeedRecvError::ProtocolViolation`].
//!
//! ```
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use postbox::{Broker, FeedRecvError};
//!
//! let broker = Broker::embedded()?;
//! let server = broker.node()?;
//! let port = server.port("ticks").open()?;
//! let serving = std::thread::spawn(move || -> Result<Vec<u8>, FeedRecvError> {
//!     let request = port.recv().expect("a feed request");
//!     let mut feed = request.accept_feed().expect("a feed");
//!     feed.recv()
//! });
//! let mut feed = broker.node()?.connect("ticks")?.open_feed()?;
//! feed.send(b"42.17")?;
//! assert_eq!(serving.join().unwrap()?, b"42.17");
//! # Ok(())
//! # }
//! ```

use std::sync::Arc;
use std::time::{Duration, Instant};

use postbox_core::{PeerIdentity, Rights};
use postbox_transport::{FeedConsumer, FeedEnd, FeedProducer, Link, PushError, Rung, Spin};

use crate::client_link::ClientLink;
use crate::error::CallError;
use crate::readiness::Readiness;
use crate::{Envelope, Message, ProcessId};

/// The largest message a feed carries, in bytes.
pub const FEED_MAX_LEN: usize = postbox_transport::FEED_MAX_LEN;

/// The message type of the call that opens a feed ([`Connection::open_feed`]); a server
/// that does not take feeds can ignore or refuse it like any call.
///
/// [`Connection::open_feed`]: crate::Connection::open_feed
pub const FEED_MSG_TYPE: u32 = 0x6665_6501;

/// The sending end of a feed: held by one thread (`&mut self`).
#[derive(Debug)]
pub struct FeedSender {
    producer: FeedProducer,
    /// Keeps the connection's link open for as long as the feed lives.
    _connection: Arc<ClientLink>,
    link: Arc<Link>,
    server: PeerIdentity,
    spin: Spin,
    /// Sends since the link's socket was last asked whether the peer died.
    since_check: u32,
    /// The receiver is known gone: every send from now on says so.
    gone: bool,
    /// For the async forms: the link's descriptors, made on the first async wait.
    readiness: Option<Readiness>,
}

/// The receiving end of a feed: held by one thread (`&mut self`).
#[derive(Debug)]
pub struct FeedReceiver {
    consumer: FeedConsumer,
    link: Arc<Link>,
    sender: PeerIdentity,
    spin: Spin,
    /// Empty looks since the link's socket was last asked whether the peer died.
    since_check: u32,
    /// The peer broke the ring's rules: the feed is over.
    violated: bool,
    /// The sender is known gone and the ring was found empty after that, or the link was
    /// cut: every receive from now on says so.
    gone: bool,
    /// The link's socket hung up: the sender's process is gone (what it pushed is still
    /// received).
    hung_up: bool,
    /// For the async forms: the link's descriptors, made on the first async wait.
    readiness: Option<Readiness>,
}

/// Failure to open or accept a feed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum OpenFeedError {
    /// The link is not in shared memory (a Unix link, or a port on another host).
    #[error("feeds need a shared-memory link; this one is not")]
    NotShared,
    /// This connection's feed is already open (one per connection: connect again for more).
    #[error("this connection's feed is already open")]
    Taken,
    /// The connection may not send one-way messages, which a feed carries.
    #[error("this connection may not send one-way messages")]
    AccessDenied,
    /// The server did not accept the feed (it answered otherwise, or not at all).
    #[error("the server did not accept the feed")]
    Refused,
    /// No answer in time; the feed is closed (the server may have taken its end).
    #[error("the server did not answer in time")]
    Timeout,
    /// The other side is gone.
    #[error("the other side is gone")]
    PeerDied,
    /// The envelope is not a feed request (a call of type [`FEED_MSG_TYPE`]).
    #[error("not a feed request")]
    NotAFeedRequest,
}

/// Failure of a feed send. The caller still holds its bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FeedSendError {
    /// Every slot is taken ([`FeedSender::try_send`] only).
    #[error("the feed is full")]
    Full,
    /// Still full when the time ran out ([`FeedSender::send_timeout`] only).
    #[error("the feed stayed full until the deadline")]
    Timeout,
    /// Over [`FEED_MAX_LEN`].
    #[error("message of {len} bytes exceeds a feed's {max}")]
    TooLarge {
        /// The message's length.
        len: usize,
        /// The largest a feed carries.
        max: usize,
    },
    /// The receiving end was dropped, or its process died.
    #[error("the receiver is gone")]
    Disconnected,
    /// The receiver scribbled over the ring; the link was shut down.
    #[error("the receiver broke the shared-memory protocol")]
    ProtocolViolation,
}

/// Failure of a feed receive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FeedRecvError {
    /// No message waits ([`FeedReceiver::try_recv`] only).
    #[error("no message waits")]
    Empty,
    /// None came before the deadline ([`FeedReceiver::recv_timeout`] only).
    #[error("no message came before the deadline")]
    Timeout,
    /// The sending end was dropped, or its process died, and every message it sent was
    /// received.
    #[error("the sender is gone")]
    Disconnected,
    /// The sender scribbled over the ring; the link was shut down.
    #[error("the sender broke the shared-memory protocol")]
    ProtocolViolation,
}

impl FeedSender {
    /// Sends `bytes`, waiting while the feed is full.
    ///
    /// # Errors
    /// [`FeedSendError::TooLarge`], [`FeedSendError::Disconnected`],
    /// [`FeedSendError::ProtocolViolation`].
    pub fn send(&mut self, bytes: &[u8]) -> Result<(), FeedSendError> {
        self.send_until(bytes, None)
    }

    /// Sends `bytes` if a slot is free now.
    ///
    /// # Errors
    /// [`FeedSendError::Full`], and those of [`send`](Self::send).
    pub fn try_send(&mut self, bytes: &[u8]) -> Result<(), FeedSendError> {
        if self.gone {
            return Err(FeedSendError::Disconnected);
        }
        self.since_check += 1;
        if self.since_check >= CHECK_EVERY && self.peer_gone(false)? {
            return Err(FeedSendError::Disconnected);
        }
        // Read by the consumer's thread only when it closes: a look that stays in this cache.
        if self.producer.peer_closed() {
            return Err(FeedSendError::Disconnected);
        }
        match self.producer.push(bytes) {
            Ok(Rung::Done) => Ok(()),
            Ok(Rung::Signal) => {
                self.link.signal_peer();
                Ok(())
            }
            Err(PushError::Full) if self.peer_gone(false)? => Err(FeedSendError::Disconnected),
            Err(PushError::Full) => Err(FeedSendError::Full),
            Err(PushError::TooLarge { len, slot_size }) => {
                Err(FeedSendError::TooLarge { len, max: slot_size })
            }
            Err(_) => {
                self.link.shutdown();
                Err(FeedSendError::ProtocolViolation)
            }
        }
    }

    /// Like [`send`](Self::send), waiting at most `timeout` for a free slot.
    ///
    /// # Errors
    /// [`FeedSendError::Timeout`], and those of [`send`](Self::send).
    pub fn send_timeout(&mut self, bytes: &[u8], timeout: Duration) -> Result<(), FeedSendError> {
        // A timeout too long for the clock is no limit at all.
        self.send_until(bytes, Instant::now().checked_add(timeout))
    }

    /// Like [`send`](Self::send), without blocking the thread (tokio): while the feed is
    /// full, the task waits on the link's wake-up descriptor, which the receiver writes when
    /// it frees room.
    ///
    /// # Errors
    /// As [`send`](Self::send).
    pub async fn send_async(&mut self, bytes: &[u8]) -> Result<(), FeedSendError> {
        loop {
            match self.try_send(bytes) {
                Err(FeedSendError::Full) => {}
                done => return done,
            }
            self.producer.arm();
            // Armed before this look: a pop that frees room after it signals the descriptor.
            if self.producer.is_full() && !self.producer.peer_closed() {
                wait(&mut self.readiness, &self.link).await;
            }
            self.producer.disarm();
            // Woken by the socket's hang-up, perhaps: look at it now.
            if self.peer_gone(true)? {
                return Err(FeedSendError::Disconnected);
            }
        }
    }

    /// The serving process, which receives.
    #[must_use]
    pub fn server(&self) -> ProcessId {
        self.server.process_id
    }

    fn send_until(&mut self, bytes: &[u8], deadline: Option<Instant>) -> Result<(), FeedSendError> {
        loop {
            match self.try_send(bytes) {
                Err(FeedSendError::Full) => {}
                done => return done,
            }
            if !self.spin.run(|| !self.producer.is_full() || self.producer.peer_closed()) {
                let Some(slice) = sleep_slice(deadline) else {
                    return Err(FeedSendError::Timeout);
                };
                self.producer.sleep_for_room(slice);
                // A killed receiver rings nobody: ask its socket after every sleep.
                if self.peer_gone(true)? {
                    return Err(FeedSendError::Disconnected);
                }
            }
        }
    }

    /// True (from now on) when the receiver closed, its process is gone, or the link was
    /// cut; the link's socket is looked at when `now`, else at most once per check interval.
    fn peer_gone(&mut self, now: bool) -> Result<bool, FeedSendError> {
        self.since_check = 0;
        match self.link.peer_gone(now) {
            Ok(gone) => {
                self.gone = gone || self.producer.peer_closed();
                Ok(self.gone)
            }
            Err(_) => Err(FeedSendError::ProtocolViolation),
        }
    }
}

impl FeedReceiver {
    /// Waits for the next message.
    ///
    /// # Errors
    /// [`FeedRecvError::Disconnected`], [`FeedRecvError::ProtocolViolation`].
    pub fn recv(&mut self) -> Result<Vec<u8>, FeedRecvError> {
        let mut out = Vec::new();
        self.recv_until(&mut out, None).map(|()| out)
    }

    /// Like [`recv`](Self::recv), into `out` (cleared first): no allocation once `out` holds
    /// [`FEED_MAX_LEN`] bytes.
    ///
    /// # Errors
    /// As [`recv`](Self::recv).
    pub fn recv_into(&mut self, out: &mut Vec<u8>) -> Result<(), FeedRecvError> {
        self.recv_until(out, None)
    }

    /// The next message if one waits.
    ///
    /// # Errors
    /// [`FeedRecvError::Empty`], and those of [`recv`](Self::recv).
    pub fn try_recv(&mut self) -> Result<Vec<u8>, FeedRecvError> {
        let mut out = Vec::new();
        self.try_recv_into(&mut out).map(|()| out)
    }

    /// Like [`try_recv`](Self::try_recv), into `out` (cleared first): what a busy-waiting
    /// receiver calls in its loop.
    ///
    /// # Errors
    /// As [`try_recv`](Self::try_recv).
    pub fn try_recv_into(&mut self, out: &mut Vec<u8>) -> Result<(), FeedRecvError> {
        if self.violated {
            return Err(FeedRecvError::ProtocolViolation);
        }
        self.since_check += 1;
        if self.since_check >= CHECK_EVERY {
            // Counted over messages too: a cut (revoked) link gives nothing more, however
            // busy its sender keeps the ring.
            self.look_at_link(false)?;
        }
        if self.gone {
            return Err(FeedRecvError::Disconnected);
        }
        match self.consumer.pop(out) {
            Ok(Some(rung)) => {
                self.signal(rung);
                return Ok(());
            }
            Ok(None) => {}
            Err(_) => return Err(self.violation()),
        }
        // The producer's close comes after its last push: seen closed, one more look finds
        // every message it sent. So does a hang-up of its socket (it died).
        if !self.consumer.peer_closed() && !self.hung_up {
            return Err(FeedRecvError::Empty);
        }
        match self.consumer.pop(out) {
            Ok(Some(rung)) => {
                self.signal(rung);
                Ok(())
            }
            Ok(None) => {
                self.gone = true;
                Err(FeedRecvError::Disconnected)
            }
            Err(_) => Err(self.violation()),
        }
    }

    /// Like [`recv`](Self::recv), without blocking the thread (tokio): the task waits on the
    /// link's wake-up descriptor, which the sender writes while this end is armed.
    ///
    /// # Errors
    /// As [`recv`](Self::recv).
    pub async fn recv_async(&mut self) -> Result<Vec<u8>, FeedRecvError> {
        let mut out = Vec::new();
        self.recv_into_async(&mut out).await.map(|()| out)
    }

    /// Like [`recv_into`](Self::recv_into), without blocking the thread (tokio).
    ///
    /// # Errors
    /// As [`recv`](Self::recv).
    pub async fn recv_into_async(&mut self, out: &mut Vec<u8>) -> Result<(), FeedRecvError> {
        loop {
            match self.try_recv_into(out) {
                Err(FeedRecvError::Empty) => {}
                done => return done,
            }
            self.consumer.arm();
            // Armed before this look: a push after it signals the descriptor.
            if self.consumer.is_empty() && !self.consumer.peer_closed() {
                wait(&mut self.readiness, &self.link).await;
            }
            self.consumer.disarm();
            // Woken by the socket's hang-up, perhaps: look at it now.
            self.look_at_link(true)?;
        }
    }

    /// Passes a pop's wake-up on to the sender's descriptor when it asked for one.
    fn signal(&self, rung: Rung) {
        if rung == Rung::Signal {
            self.link.signal_peer();
        }
    }

    /// Like [`recv`](Self::recv), giving up after `timeout`.
    ///
    /// # Errors
    /// [`FeedRecvError::Timeout`], and those of [`recv`](Self::recv).
    pub fn recv_timeout(&mut self, timeout: Duration) -> Result<Vec<u8>, FeedRecvError> {
        let mut out = Vec::new();
        // A timeout too long for the clock is no limit at all.
        self.recv_until(&mut out, Instant::now().checked_add(timeout)).map(|()| out)
    }

    /// The process that sends.
    #[must_use]
    pub fn sender(&self) -> ProcessId {
        self.sender.process_id
    }

    /// The sender's identity (kernel credentials as the broker saw them).
    #[must_use]
    pub fn sender_identity(&self) -> PeerIdentity {
        self.sender
    }

    fn recv_until(
        &mut self,
        out: &mut Vec<u8>,
        deadline: Option<Instant>,
    ) -> Result<(), FeedRecvError> {
        loop {
            match self.try_recv_into(out) {
                Err(FeedRecvError::Empty) => {}
                done => return done,
            }
            if !self.spin.run_for_answer(|| !self.consumer.is_empty()) {
                let Some(slice) = sleep_slice(deadline) else {
                    return Err(FeedRecvError::Timeout);
                };
                self.consumer.sleep_for_input(slice);
                // A killed sender rings nobody: ask its socket after every slice.
                self.look_at_link(true)?;
            }
        }
    }

    /// Asks the link whether it was cut (then nothing more is received) or its socket hung
    /// up (then what the ring holds is still received); the socket is looked at when `now`,
    /// else at most once per check interval.
    fn look_at_link(&mut self, now: bool) -> Result<(), FeedRecvError> {
        self.since_check = 0;
        if self.link.is_cut() {
            self.gone = true;
            return Ok(());
        }
        match self.link.peer_gone(now) {
            Ok(gone) => {
                self.hung_up |= gone;
                Ok(())
            }
            Err(_) => Err(self.violation()),
        }
    }

    fn violation(&mut self) -> FeedRecvError {
        self.violated = true;
        self.link.shutdown();
        FeedRecvError::ProtocolViolation
    }
}

impl Drop for FeedSender {
    fn drop(&mut self) {
        // The receiver may wait on a descriptor: the ring alone does not reach it.
        if self.producer.close() == Rung::Signal {
            self.link.signal_peer();
        }
    }
}

impl Drop for FeedReceiver {
    fn drop(&mut self) {
        if self.consumer.close() == Rung::Signal {
            self.link.signal_peer();
        }
    }
}

/// Opens `link`'s feed: takes its producing end, asks the server to accept, and gives the end
/// back unless it did (so a later attempt can try again).
pub(crate) fn open(
    link: &Arc<ClientLink>,
    deadline: Option<Instant>,
) -> Result<FeedSender, OpenFeedError> {
    if !link.granted.rights.contains(Rights::SEND) {
        return Err(OpenFeedError::AccessDenied);
    }
    let shared = link.end.shared_link();
    let producer = match shared.take_feed() {
        Some(FeedEnd::Producer(producer)) => producer,
        Some(other) => {
            shared.give_back_feed(other);
            return Err(OpenFeedError::NotShared);
        }
        None if shared.is_shared_memory() => return Err(OpenFeedError::Taken),
        None => return Err(OpenFeedError::NotShared),
    };
    let request = Message::new(Vec::new()).with_type(FEED_MSG_TYPE);
    let refused = match link.call(request, deadline) {
        Ok(reply) if reply.msg_type() == FEED_MSG_TYPE && reply.body() == ACCEPTED => {
            return Ok(FeedSender {
                producer,
                _connection: Arc::clone(link),
                link: shared,
                server: link.server,
                spin: Spin::new(),
                since_check: 0,
                gone: false,
                readiness: None,
            });
        }
        Ok(_) | Err(CallError::Remote(_) | CallError::NoReply) => OpenFeedError::Refused,
        Err(CallError::AccessDenied { .. }) => OpenFeedError::AccessDenied,
        // The server may have taken its end: this one closes as it drops.
        Err(CallError::Timeout(_)) => return Err(OpenFeedError::Timeout),
        Err(CallError::PeerDied | CallError::Disconnected(_)) => OpenFeedError::PeerDied,
        Err(_) => OpenFeedError::Refused,
    };
    shared.give_back_feed(FeedEnd::Producer(producer));
    Err(refused)
}

/// Accepts the feed `envelope` asks for (see [`Envelope::accept_feed`]).
pub(crate) fn accept(mut envelope: Envelope) -> Result<FeedReceiver, OpenFeedError> {
    if envelope.message().msg_type() != FEED_MSG_TYPE {
        return Err(OpenFeedError::NotAFeedRequest);
    }
    let Some(token) = envelope.take_reply_token() else {
        return Err(OpenFeedError::NotAFeedRequest);
    };
    let server_link = Arc::clone(token.server_link());
    if !server_link.rights().contains(Rights::SEND) {
        // Dropped unanswered: the caller hears `Refused`.
        return Err(OpenFeedError::AccessDenied);
    }
    let shared = server_link.end.shared_link();
    let consumer = match shared.take_feed() {
        Some(FeedEnd::Consumer(consumer)) => consumer,
        Some(other) => {
            shared.give_back_feed(other);
            return Err(OpenFeedError::NotShared);
        }
        None if shared.is_shared_memory() => return Err(OpenFeedError::Taken),
        None => return Err(OpenFeedError::NotShared),
    };
    let sender = envelope.sender;
    match token.reply(Message::copied(ACCEPTED).with_type(FEED_MSG_TYPE)) {
        Ok(()) => Ok(FeedReceiver {
            consumer,
            link: shared,
            sender,
            spin: Spin::new(),
            since_check: 0,
            violated: false,
            gone: false,
            hung_up: false,
            readiness: None,
        }),
        // The caller gave up or died: it closed its end, and this one closes as it drops.
        Err(_) => Err(OpenFeedError::PeerDied),
    }
}

/// Waits until one of `link`'s descriptors (its wake-up socket, its socket) fires, or
/// [`SLEEP_SLICE`] passes, making the set that watches them on the first call; then empties
/// the wake-up socket (its bytes only say "look again"; a full socket would stop firing).
///
/// The slice bounds what a lost wake-up costs: the port's own receive loop drains the same
/// socket, and a byte it takes first may leave this set nothing to report. Without a set
/// (out of descriptors or memory), the slice is a plain sleep.
async fn wait(readiness: &mut Option<Readiness>, link: &Link) {
    if readiness.is_none() {
        *readiness = Readiness::new().ok().inspect(|made| {
            let mut fds = Vec::with_capacity(2);
            link.poll_fds(&mut fds);
            for fd in fds {
                made.watch(fd);
            }
        });
    }
    match readiness {
        Some(readiness) => {
            let _ = tokio::time::timeout(SLEEP_SLICE, readiness.wait()).await;
        }
        None => tokio::time::sleep(SLEEP_SLICE).await,
    }
    link.drain_wake();
}

/// How long the next sleep before `deadline` may last: [`SLEEP_SLICE`] at most; `None` once
/// the deadline has passed.
fn sleep_slice(deadline: Option<Instant>) -> Option<Duration> {
    let Some(deadline) = deadline else { return Some(SLEEP_SLICE) };
    let left = deadline.checked_duration_since(Instant::now())?;
    (!left.is_zero()).then(|| left.min(SLEEP_SLICE))
}

/// The body of the reply that accepts a feed.
const ACCEPTED: &[u8] = b"postbox feed accepted";
/// Looks (sends, or receives) between two questions to the link: a killed peer rings nobody
/// and never marks the feed closed, and a cut link says so only when asked.
const CHECK_EVERY: u32 = 1024;
/// The longest sleep between two looks at the link's socket.
const SLEEP_SLICE: Duration = Duration::from_millis(20);
