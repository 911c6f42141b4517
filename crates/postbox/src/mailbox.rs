//! Mailboxes: queues the broker owns. A mailbox outlives the processes that use it (until it
//! is unlinked, like a POSIX message queue), takes messages from many senders, and hands each
//! message to exactly one of its receivers, by priority. A message a receiver has been sent
//! but has not taken when it dies goes to another receiver.
//!
//! ```
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let broker = postbox::Broker::embedded()?;
//! let node = broker.node()?;
//! let jobs = node.mailbox("/jobs").capacity(1000).create()?;
//! node.connect("/jobs")?.send("job 1")?;       // any node, by name, like a port
//! let job = jobs.recv()?;
//! assert_eq!(job.body(), b"job 1");
//! assert_eq!(job.sender(), node.process_id()); // the true sender, told by the broker
//! jobs.unlink()?;
//! # Ok(()) }
//! ```

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use postbox_core::wire::frame::ReplyErrorCode;
use postbox_core::{ControlErrorCode, ControlMessage, PeerIdentity, PortName, ProcessId, Reader};

use crate::error::{
    BrokerRequestError, CallError, ConnectError, OpenError, RecvError, RecvTimeoutError,
    TryRecvError,
};
use crate::node::{Gone, NodeShared};
use crate::{Connection, Envelope, Message};

/// Creates or opens a mailbox: `node.mailbox("/jobs").capacity(1000).create()?`.
#[derive(Debug)]
#[must_use = "a builder does nothing until create() or open() is called"]
pub struct MailboxBuilder {
    node: Arc<NodeShared>,
    name: String,
    capacity: u32,
}

/// A mailbox this node receives from (and may send to or unlink).
#[derive(Debug)]
pub struct Mailbox {
    node: Arc<NodeShared>,
    name: PortName,
    /// The receiving link, made on the first receive.
    receiving: Mutex<Option<Connection>>,
}

impl MailboxBuilder {
    pub(crate) fn new(node: Arc<NodeShared>, name: &str) -> Self {
        Self { node, name: name.to_owned(), capacity: DEFAULT_CAPACITY }
    }

    /// Messages the mailbox holds at most, across all senders (queued and in flight to a
    /// receiver); senders wait beyond that. Used only when the mailbox is created.
    pub fn capacity(mut self, messages: u32) -> Self {
        self.capacity = messages;
        self
    }

    /// Creates the mailbox.
    ///
    /// # Errors
    /// [`OpenError::NameTaken`] when it (or a port of that name) exists,
    /// [`OpenError::InvalidName`], [`OpenError::BrokerGone`].
    pub fn create(self) -> Result<Mailbox, OpenError> {
        self.make(false)
    }

    /// Opens the mailbox, creating it if it does not exist.
    ///
    /// # Errors
    /// As [`create`](Self::create), but an existing mailbox is not an error.
    pub fn open_or_create(self) -> Result<Mailbox, OpenError> {
        self.make(true)
    }

    /// Opens an existing mailbox to receive from it (its receiving link is made now). A
    /// mailbox of another host is named `name@host`: this node is then one of its receivers
    /// there (docs/network.md).
    ///
    /// # Errors
    /// [`OpenError::NotFound`] when there is none by that name, [`OpenError::AccessDenied`]
    /// when the broker's policy does not let this node receive from it,
    /// [`OpenError::Unreachable`] when it is on another host that does not answer.
    pub fn open(self) -> Result<Mailbox, OpenError> {
        let name = PortName::new(&self.name)?;
        match self.node.request(|request| ControlMessage::Stat { request, name: name.clone() }) {
            // `Stat` answers for this host's names only; a name of another host is asked for
            // its receiving link straight away, which its broker answers.
            Ok((ControlMessage::Refused { code: ControlErrorCode::NoSuchPort, .. }, _))
                if name.as_str().contains('@') =>
            {
                let receiving = name.clone();
                let link = self.node.connect_with(name.to_string(), |request| {
                    ControlMessage::ReceiveMailbox { request, name: receiving }
                });
                match link {
                    Ok(link) => {
                        Ok(Mailbox { node: self.node, name, receiving: Mutex::new(Some(link)) })
                    }
                    Err(ConnectError::AccessDenied(denied)) => Err(OpenError::AccessDenied(denied)),
                    Err(ConnectError::Unreachable(detail)) => Err(OpenError::Unreachable(detail)),
                    Err(ConnectError::BrokerGone) => Err(OpenError::BrokerGone),
                    Err(ConnectError::LimitExceeded(detail)) => {
                        Err(OpenError::LimitExceeded(detail))
                    }
                    Err(_) => Err(OpenError::NotFound(name.to_string())),
                }
            }
            Ok((ControlMessage::Stats { owner, .. }, _)) if owner.process_id.generation == 0 => {
                let receiving = name.clone();
                let link = self.node.connect_with(name.to_string(), |request| {
                    ControlMessage::ReceiveMailbox { request, name: receiving }
                });
                let link = match link {
                    Ok(link) => Some(link),
                    Err(ConnectError::AccessDenied(denied)) => {
                        return Err(OpenError::AccessDenied(denied))
                    }
                    // Made again at the first receive.
                    Err(_) => None,
                };
                Ok(Mailbox { node: self.node, name, receiving: Mutex::new(link) })
            }
            Ok(_) => Err(OpenError::NotFound(name.to_string())),
            Err(Gone) => Err(OpenError::BrokerGone),
        }
    }

    fn make(self, open_existing: bool) -> Result<Mailbox, OpenError> {
        let name = PortName::new(&self.name)?;
        let capacity = self.capacity;
        let answer = self.node.request(|request| ControlMessage::CreateMailbox {
            request,
            name: name.clone(),
            capacity,
            open_existing,
        });
        match answer {
            Ok((ControlMessage::Ok { .. }, _)) => {
                Ok(Mailbox { node: self.node, name, receiving: Mutex::new(None) })
            }
            Ok((ControlMessage::Refused { code: ControlErrorCode::NameTaken, .. }, _)) => {
                Err(OpenError::NameTaken(name.to_string()))
            }
            Ok((ControlMessage::Refused { detail, .. }, _)) => Err(OpenError::Refused(detail)),
            Ok((ControlMessage::Denied { operation, name, .. }, _)) => {
                Err(OpenError::AccessDenied(postbox_core::AccessDenied { operation, name }))
            }
            Ok(_) => Err(OpenError::Refused("the broker sent an unexpected answer".into())),
            Err(Gone) => Err(OpenError::BrokerGone),
        }
    }
}

impl Mailbox {
    /// The mailbox's name.
    #[must_use]
    pub fn name(&self) -> &str {
        self.name.as_str()
    }

    /// Waits for the next message (highest priority first, oldest first within one).
    ///
    /// # Errors
    /// [`RecvError::Closed`] when the mailbox was unlinked or the broker is gone.
    pub fn recv(&self) -> Result<Envelope, RecvError> {
        self.pull(None).map_err(|_| RecvError::Closed)
    }

    /// Takes a waiting message without blocking.
    ///
    /// # Errors
    /// [`TryRecvError::Empty`] or [`TryRecvError::Closed`].
    pub fn try_recv(&self) -> Result<Envelope, TryRecvError> {
        self.pull(Some(Duration::ZERO)).map_err(|f| match f {
            PullFailure::Empty => TryRecvError::Empty,
            PullFailure::Closed => TryRecvError::Closed,
        })
    }

    /// Waits at most `timeout` for the next message.
    ///
    /// # Errors
    /// [`RecvTimeoutError::Timeout`] or [`RecvTimeoutError::Closed`].
    pub fn recv_timeout(&self, timeout: Duration) -> Result<Envelope, RecvTimeoutError> {
        self.pull(Some(timeout)).map_err(|f| match f {
            PullFailure::Empty => RecvTimeoutError::Timeout,
            PullFailure::Closed => RecvTimeoutError::Closed,
        })
    }

    /// Waits for the next message without blocking the thread (tokio).
    ///
    /// # Errors
    /// [`RecvError::Closed`] when the mailbox was unlinked or the broker is gone.
    pub async fn recv_async(&self) -> Result<Envelope, RecvError> {
        let connection = self.receiving_link().map_err(|_| RecvError::Closed)?;
        let link = connection.client_link();
        match link.call_correlated_async(Message::new(Vec::new())).await {
            Ok((reply, correlation)) => {
                // Taken: the mailbox may forget it.
                link.acknowledge(correlation).map_err(|_| RecvError::Closed)?;
                delivery(reply).ok_or(RecvError::Closed)
            }
            Err(_) => {
                *self.receiving.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = None;
                Err(RecvError::Closed)
            }
        }
    }

    /// Removes the mailbox from the broker: queued messages are discarded and every link to
    /// it closes.
    ///
    /// # Errors
    /// [`BrokerRequestError`].
    pub fn unlink(self) -> Result<(), BrokerRequestError> {
        unlink(&self.node, &self.name)
    }

    fn pull(&self, wait: Option<Duration>) -> Result<Envelope, PullFailure> {
        let connection = self.receiving_link()?;
        let link = connection.client_link();
        // The broker ends the pull at the wait's end; the local deadline only guards against
        // a broker that stopped answering.
        let (body, deadline) = match wait {
            None => (Vec::new(), None),
            Some(wait) => {
                let millis = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX);
                (
                    millis.to_le_bytes().to_vec(),
                    Instant::now().checked_add(wait.saturating_add(PULL_GRACE)),
                )
            }
        };
        match link.call_correlated(Message::new(body), deadline, || {}) {
            Ok((reply, correlation)) => {
                // Taken: the mailbox may forget it.
                link.acknowledge(correlation).map_err(|_| PullFailure::Closed)?;
                delivery(reply).ok_or(PullFailure::Closed)
            }
            Err(CallError::Remote(error)) => match ReplyErrorCode::from_u32(error.msg_type()) {
                ReplyErrorCode::Empty => Err(PullFailure::Empty),
                _ => Err(PullFailure::Closed),
            },
            Err(CallError::Timeout(_)) => {
                // The broker did not answer in time: a delivery may still come, which nobody
                // would acknowledge. Dropping the link makes the broker queue it again.
                *self.receiving.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = None;
                Err(PullFailure::Empty)
            }
            Err(_) => {
                *self.receiving.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = None;
                Err(PullFailure::Closed)
            }
        }
    }

    fn receiving_link(&self) -> Result<Connection, PullFailure> {
        let mut receiving =
            self.receiving.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(connection) = receiving.as_ref().filter(|c| !c.is_closed()) {
            return Ok(connection.clone());
        }
        let name = self.name.clone();
        let connection = self
            .node
            .connect_with(name.to_string(), |request| ControlMessage::ReceiveMailbox {
                request,
                name,
            })
            .map_err(|_| PullFailure::Closed)?;
        *receiving = Some(connection.clone());
        Ok(connection)
    }
}

/// Removes mailbox `name`.
pub(crate) fn unlink(node: &NodeShared, name: &PortName) -> Result<(), BrokerRequestError> {
    crate::node::done(
        node.request(|request| ControlMessage::UnlinkMailbox { request, name: name.clone() }),
    )
}

/// Why a pull returned without a message.
enum PullFailure {
    Empty,
    Closed,
}

/// Unpacks a delivery: the sender's identity (16 bytes, as the broker saw it), then the body.
fn delivery(reply: Message) -> Option<Envelope> {
    let mut r = Reader::new(&reply.body);
    let sender = PeerIdentity {
        process_id: ProcessId::new(r.u32().ok()?, r.u32().ok()?),
        uid: r.u32().ok()?,
        gid: r.u32().ok()?,
    };
    let mut message = reply;
    message.body.owned_mut().drain(..16);
    Some(Envelope { message, sender, reply: None, lost: 0, topic: None })
}

/// Messages a mailbox holds when created without a capacity.
const DEFAULT_CAPACITY: u32 = 1024;
/// How long past its own deadline a pull waits for the broker's answer.
const PULL_GRACE: Duration = Duration::from_secs(2);
