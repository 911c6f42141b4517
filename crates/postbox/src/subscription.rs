//! Topics: publish/subscribe through the broker. Every subscriber whose pattern matches a topic
//! gets every message published to it; each has a queue of its own at the broker, so a slow
//! subscriber never holds up the publisher or the others (it loses its oldest messages
//! instead, counted, and told with the next one it receives).
//!
//! ```
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let broker = postbox::Broker::embedded()?;
//! let node = broker.node()?;
//! let imu = node.subscribe("/sensors/*")?;
//! node.publish("/sensors/imu", "ax=0.1")?;
//! let sample = imu.recv()?;
//! assert_eq!((sample.topic(), sample.body()), (Some("/sensors/imu"), &b"ax=0.1"[..]));
//! # Ok(()) }
//! ```

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use postbox_core::{
    ControlMessage, Delivery, FrameDecoder, FrameKind, Overflow, PeerIdentity, PortSpec, ProcessId,
    Reader, ReleaseCounter,
};
use postbox_transport::{TransportError, Wait};

use crate::error::{ConnectError, RecvError, RecvTimeoutError, TryRecvError};
use crate::node::NodeShared;
use crate::{Connection, Envelope, Message};

/// Subscribes to topics: `node.subscription("/sensors/*").capacity(64).open()?`.
#[derive(Debug)]
#[must_use = "a builder does nothing until open() is called"]
pub struct SubscriptionBuilder {
    node: Arc<NodeShared>,
    pattern: String,
    capacity: u32,
    drop_newest: bool,
}

/// A subscription: receives every message published to a matching topic.
#[derive(Debug)]
pub struct Subscription {
    /// Kept for its link (the broker's end sends here) and its writer (credits go back).
    connection: Connection,
    inner: Mutex<Inbound>,
    pattern: String,
}

#[derive(Debug)]
struct Inbound {
    decoder: FrameDecoder,
    ready: VecDeque<Envelope>,
    release: ReleaseCounter,
    closed: bool,
}

impl SubscriptionBuilder {
    pub(crate) fn new(node: Arc<NodeShared>, pattern: &str) -> Self {
        Self { node, pattern: pattern.to_owned(), capacity: DEFAULT_CAPACITY, drop_newest: false }
    }

    /// Messages the broker keeps for this subscriber when it does not keep up (and as many
    /// again in transit).
    pub fn capacity(mut self, messages: u32) -> Self {
        self.capacity = messages.max(1);
        self
    }

    /// What the broker drops when this subscriber's queue is full: the oldest message (the
    /// default, `Overflow::DropOldest`) or the newest (`Overflow::Fail`). Either way the loss
    /// is counted and reported by [`Envelope::lost`]. A topic never blocks its publisher.
    pub fn overflow(mut self, overflow: Overflow) -> Self {
        self.drop_newest = overflow == Overflow::Fail;
        self
    }

    /// Subscribes.
    ///
    /// # Errors
    /// [`ConnectError::Refused`] for a malformed pattern, [`ConnectError::BrokerGone`].
    pub fn open(self) -> Result<Subscription, ConnectError> {
        let (pattern, capacity, drop_newest) =
            (self.pattern.clone(), self.capacity, self.drop_newest);
        let connection = self.node.connect_with(self.pattern.clone(), |request| {
            ControlMessage::Subscribe { request, pattern, capacity, drop_newest }
        })?;
        // The window the broker keeps (it may cap the capacity asked for): credits are
        // counted against the same one.
        let spec = PortSpec {
            capacity: connection.spec().capacity,
            overflow: Overflow::DropOldest,
            message_size: None,
            delivery: Delivery::Reliable,
        };
        let inner = Inbound {
            decoder: FrameDecoder::new(u32::MAX),
            ready: VecDeque::new(),
            release: ReleaseCounter::new(&spec),
            closed: false,
        };
        Ok(Subscription { connection, inner: Mutex::new(inner), pattern: self.pattern })
    }
}

impl Subscription {
    /// The pattern subscribed to.
    #[must_use]
    pub fn pattern(&self) -> &str {
        &self.pattern
    }

    /// Waits for the next message.
    ///
    /// # Errors
    /// [`RecvError::Closed`] when the broker is gone.
    pub fn recv(&self) -> Result<Envelope, RecvError> {
        self.next(Wait::Forever).map_err(|_| RecvError::Closed)
    }

    /// Takes a waiting message without blocking.
    ///
    /// # Errors
    /// [`TryRecvError::Empty`] or [`TryRecvError::Closed`].
    pub fn try_recv(&self) -> Result<Envelope, TryRecvError> {
        self.next(Wait::NonBlocking).map_err(|closed| {
            if closed {
                TryRecvError::Closed
            } else {
                TryRecvError::Empty
            }
        })
    }

    /// Waits at most `timeout` for the next message.
    ///
    /// # Errors
    /// [`RecvTimeoutError::Timeout`] or [`RecvTimeoutError::Closed`].
    pub fn recv_timeout(&self, timeout: Duration) -> Result<Envelope, RecvTimeoutError> {
        self.next(Wait::timeout(timeout)).map_err(|closed| {
            if closed {
                RecvTimeoutError::Closed
            } else {
                RecvTimeoutError::Timeout
            }
        })
    }

    /// Waits for the next message without blocking the thread (tokio).
    ///
    /// # Errors
    /// [`RecvError::Closed`] when the broker is gone.
    pub async fn recv_async(&self) -> Result<Envelope, RecvError> {
        loop {
            match self.next(Wait::NonBlocking) {
                Ok(envelope) => return Ok(envelope),
                Err(true) => return Err(RecvError::Closed),
                Err(false) => {}
            }
            let link = self.connection.client_link();
            link.wait_ready().await.map_err(|_| RecvError::Closed)?;
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inbound> {
        self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The next envelope; `Err(true)` when the link closed, `Err(false)` when the wait ended.
    fn next(&self, wait: Wait) -> Result<Envelope, bool> {
        let mut inner = self.lock();
        loop {
            if let Some(envelope) = inner.ready.pop_front() {
                // The broker counts messages only (publications carry a header of their own).
                inner.release.on_release(0);
                self.send_credit(&mut inner, false);
                return Ok(envelope);
            }
            if inner.closed {
                return Err(true);
            }
            if wait.expired() && wait != Wait::NonBlocking {
                return Err(false);
            }
            // About to wait: the broker hears of every message taken first.
            self.send_credit(&mut inner, true);
            let link = self.connection.client_link();
            let inbound = &mut *inner;
            match link.end.link().read_into(&mut inbound.decoder, wait) {
                Ok(_) => {}
                Err(TransportError::TimedOut | TransportError::WouldBlock) => return Err(false),
                Err(_) => {
                    inbound.closed = true;
                    continue;
                }
            }
            loop {
                match inbound.decoder.poll_frame() {
                    Ok(Some(frame)) if frame.header.kind == FrameKind::Oneway => {
                        match publication(frame) {
                            Some(envelope) => inbound.ready.push_back(envelope),
                            None => inbound.closed = true,
                        }
                    }
                    Ok(None) => break,
                    Ok(Some(_)) | Err(_) => {
                        inbound.closed = true;
                        break;
                    }
                }
            }
        }
    }

    fn send_credit(&self, inner: &mut Inbound, urgent: bool) {
        let Some(credit) = inner.release.poll_credit(urgent) else { return };
        let mut message = Message::new(credit.to_bytes().to_vec());
        let end = &self.connection.client_link().end;
        if end.write(FrameKind::Credit, &mut message, 0, Wait::timeout(CREDIT_WAIT)).is_ok() {
            inner.release.credit_sent(credit);
        }
    }
}

/// Unpacks a publication: publisher identity (16 bytes), topic (u16 length + text), body.
fn publication(frame: postbox_core::Frame) -> Option<Envelope> {
    let header = frame.header;
    // Topic links are the broker's Unix links: a payload anywhere else breaks the protocol.
    if header.placement != postbox_core::Placement::Inline {
        return None;
    }
    let mut r = Reader::new(&frame.body);
    let sender = PeerIdentity {
        process_id: ProcessId::new(r.u32().ok()?, r.u32().ok()?),
        uid: r.u32().ok()?,
        gid: r.u32().ok()?,
    };
    let topic = r.text().ok()?.to_owned();
    let start = frame.body.len() - r.remaining();
    let message = Message {
        id: header.id,
        msg_type: header.msg_type,
        priority: header.priority,
        body: crate::body::Body::Owned(frame.body[start..].to_vec()),
    };
    // For publications, the correlation field counts the messages dropped before this one.
    Some(Envelope { message, sender, reply: None, lost: header.correlation, topic: Some(topic) })
}

/// Messages kept for a subscriber that does not keep up, by default.
const DEFAULT_CAPACITY: u32 = 1024;
/// How long returning credit may wait for room in the link.
const CREDIT_WAIT: Duration = Duration::from_secs(1);
