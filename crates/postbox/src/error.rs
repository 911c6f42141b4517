//! One small error type per operation; every failed send hands the message back.

use std::io;
use std::path::PathBuf;

use postbox_core::{AccessDenied, NameError};
use postbox_transport::host_link::AuthenticationError;
use postbox_transport::tunnel::AttachError;

use crate::Message;

/// Failure of a blocking send ([`Connection::send`](crate::Connection::send),
/// [`Node::send_to`](crate::Node::send_to), [`ReplyToken::reply`](crate::ReplyToken::reply)).
/// Holds the message, which was not delivered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SendError {
    /// The receiving side is gone (it exited, was killed, or closed the port).
    #[error("the receiver is gone")]
    Disconnected(Message),
    /// The body exceeds the host's maximum message size.
    #[error("message of {} bytes exceeds the limit of {limit}", .message.body.len())]
    TooLarge {
        /// The message.
        message: Message,
        /// The limit in bytes.
        limit: u32,
    },
    /// The link is at capacity and the port's overflow policy is to fail, not wait.
    #[error("the link is full and the port fails instead of waiting")]
    Full(Message),
    /// No live node or port has that address (direct addressing).
    #[error("no such port or node")]
    NoSuchPort(Message),
    /// The broker is gone, so no new link could be made.
    #[error("the broker is gone")]
    BrokerGone(Message),
    /// The broker's policy, or the rights it granted this link, do not allow sending there.
    #[error("{denied}")]
    AccessDenied {
        /// What was denied, on which name.
        denied: AccessDenied,
        /// The message.
        message: Message,
    },
    /// The receiver is on another host whose broker did not answer (down, partitioned off, or
    /// its link restarting), so no link could be made (docs/network.md).
    #[error("the receiver's host is unreachable")]
    Unreachable(Message),
    /// A confirmed send on a link that carries best-effort datagrams (a datagram port on
    /// another host, docs/network.md §13): nothing can confirm that the receiver took it. Not
    /// sent; a plain `send` is.
    #[error("the link carries best-effort datagrams: a send cannot be confirmed; not sent")]
    DatagramsOnly(Message),
}

/// Failure of a non-blocking send. Holds the message, which was not sent.
///
/// Capacity is counted by credits the receiver returns in batches (up to half the capacity),
/// so `Full` may be reported while the receiver has taken some messages it has not yet
/// reported; it is never wrong the other way.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TrySendError {
    /// The link is full: the receiver is not keeping up.
    #[error("the link is full")]
    Full(Message),
    /// The receiving side is gone.
    #[error("the receiver is gone")]
    Disconnected(Message),
    /// The body exceeds the host's maximum message size.
    #[error("message of {} bytes exceeds the limit of {limit}", .message.body.len())]
    TooLarge {
        /// The message.
        message: Message,
        /// The limit in bytes.
        limit: u32,
    },
    /// The link was granted calls only, not one-way messages.
    #[error("{denied}")]
    AccessDenied {
        /// What was denied, on which name.
        denied: AccessDenied,
        /// The message.
        message: Message,
    },
}

/// Failure of a send with a timeout or deadline. Holds the message, which was not delivered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SendTimeoutError {
    /// The link stayed full until the deadline.
    #[error("the link stayed full until the deadline")]
    Timeout(Message),
    /// The message was sent but the receiver had not taken it by the deadline (rendezvous or
    /// confirmed send). It is still in the link and may yet be taken: sending it again may
    /// deliver it twice.
    #[error("sent, but not taken by the receiver before the deadline")]
    NotTaken(Message),
    /// The receiving side is gone.
    #[error("the receiver is gone")]
    Disconnected(Message),
    /// The body exceeds the host's maximum message size.
    #[error("message of {} bytes exceeds the limit of {limit}", .message.body.len())]
    TooLarge {
        /// The message.
        message: Message,
        /// The limit in bytes.
        limit: u32,
    },
    /// The link was granted calls only, not one-way messages.
    #[error("{denied}")]
    AccessDenied {
        /// What was denied, on which name.
        denied: AccessDenied,
        /// The message.
        message: Message,
    },
    /// A confirmed send on a link that carries best-effort datagrams (a datagram port on
    /// another host, docs/network.md §13): nothing can confirm that the receiver took it. Not
    /// sent.
    #[error("the link carries best-effort datagrams: a send cannot be confirmed; not sent")]
    DatagramsOnly(Message),
}

/// Failure of a batch send ([`Connection::send_batch`](crate::Connection::send_batch)). The
/// messages not sent stay in the batch, in order, the one that failed first: nothing is lost.
/// (On a rendezvous port, a message written whose receiver then went away stays in the batch
/// too, with `Disconnected`, as a single send hands it back: the receiver may have taken it.)
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SendBatchError {
    /// The link is full: the receiver is not keeping up (non-blocking sends, and ports that
    /// fail instead of waiting).
    #[error("the link is full")]
    Full,
    /// The link stayed full until the deadline.
    #[error("the link stayed full until the deadline")]
    Timeout,
    /// On a rendezvous port: the last message sent (no longer in the batch) was not taken by
    /// the receiver before the deadline. It is still in the link and may yet be taken.
    #[error("sent, but not taken by the receiver before the deadline")]
    NotTaken,
    /// The receiving side is gone.
    #[error("the receiver is gone")]
    Disconnected,
    /// The first message left exceeds the host's maximum message size.
    #[error("a message exceeds the limit of {limit} bytes")]
    TooLarge {
        /// The limit in bytes.
        limit: u32,
    },
    /// The link was granted calls only, not one-way messages.
    #[error("access denied: this link may not carry one-way messages")]
    AccessDenied,
}

/// Failure to lend space for a zero-copy payload ([`Connection::loan`](crate::Connection::loan)).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LoanError {
    /// Larger than the link's payload pool or the port's message size.
    #[error("a payload of {len} bytes exceeds the limit of {limit}")]
    TooLarge {
        /// The length asked for.
        len: usize,
        /// The largest payload the link can lend.
        limit: u64,
    },
    /// The link is not a shared-memory link (it has no payload pool).
    #[error("this link is not a shared-memory link: it cannot lend payload space")]
    NotSharedMemory,
    /// The receiver did not hand space back before the wait ended.
    #[error("the payload pool stayed full until the wait ended")]
    Full,
    /// The receiving side is gone.
    #[error("the receiver is gone")]
    Disconnected,
}

/// Failure of a blocking receive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RecvError {
    /// The port was closed.
    #[error("the port is closed")]
    Closed,
}

/// Failure of a non-blocking receive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TryRecvError {
    /// No message is waiting.
    #[error("no message is waiting")]
    Empty,
    /// The port was closed.
    #[error("the port is closed")]
    Closed,
}

/// Failure of a receive with a timeout or deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RecvTimeoutError {
    /// No message arrived before the deadline.
    #[error("no message arrived before the deadline")]
    Timeout,
    /// The port was closed.
    #[error("the port is closed")]
    Closed,
}

/// Failure of a call ([`Connection::call`](crate::Connection::call) and its forms).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CallError {
    /// The link was already closed; the request was not sent and is handed back.
    #[error("the server is gone; the request was not sent")]
    Disconnected(Message),
    /// The request exceeds the host's maximum message size; not sent.
    #[error("request of {} bytes exceeds the limit of {limit}", .message.body.len())]
    TooLarge {
        /// The request.
        message: Message,
        /// The limit in bytes.
        limit: u32,
    },
    /// The deadline passed. Holds the request when it could not even be sent.
    #[error("the call timed out")]
    Timeout(Option<Message>),
    /// The request was sent, then the server died or closed the link before replying.
    #[error("the server died before replying")]
    PeerDied,
    /// The server dropped the call's reply token without answering.
    #[error("the server dropped the call without replying")]
    NoReply,
    /// The server answered with an error; the message says what.
    #[error("the server answered with an error")]
    Remote(Message),
    /// The server sent bytes that are not valid frames; the link was dropped.
    #[error("protocol violation by the server: {0}")]
    ProtocolViolation(String),
    /// The broker's policy, or the rights it granted this link, do not allow calls there.
    #[error("{denied}")]
    AccessDenied {
        /// What was denied, on which name.
        denied: AccessDenied,
        /// The request, not sent.
        message: Message,
    },
    /// This link already has as many calls waiting for answers as the broker's quota allows.
    #[error("{limit} calls already wait for answers on this link (the quota)")]
    TooManyCalls {
        /// The request, not sent.
        message: Message,
        /// The quota.
        limit: u32,
    },
    /// The link carries best-effort datagrams (a datagram port on another host,
    /// docs/network.md §13), which take one-way messages only; the request was not sent.
    #[error(
        "the link carries best-effort datagrams, one-way messages only; the request was not sent"
    )]
    DatagramsOnly(Message),
}

/// Failure of [`Node::connect`](crate::Node::connect),
/// [`Node::connect_inbox`](crate::Node::connect_inbox) and
/// [`Node::process_on`](crate::Node::process_on).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectError {
    /// No port by that name, or no live node with that id.
    #[error("no such port: {0}")]
    NoSuchPort(String),
    /// The name breaks the naming rules.
    #[error("invalid port name: {0}")]
    InvalidName(#[from] NameError),
    /// The broker is gone; existing links keep working but no new ones can be made.
    #[error("the broker is gone")]
    BrokerGone,
    /// A quota of this node's was reached (ports or links, per the broker's policy).
    #[error("quota reached: {0}")]
    LimitExceeded(String),
    /// The broker refused for another reason.
    #[error("the broker refused: {0}")]
    Refused(String),
    /// The broker's policy does not allow the operation on the name.
    #[error(transparent)]
    AccessDenied(#[from] AccessDenied),
    /// The port, mailbox, topic or node is on another host (`port@host`, a remote node's
    /// process id) whose broker did not answer: the host is down, partitioned off, or its link
    /// is restarting (docs/network.md).
    #[error("host unreachable: {0}")]
    Unreachable(String),
}

/// Failure of [`PortBuilder::open`](crate::PortBuilder::open) and of creating or opening a
/// mailbox.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum OpenError {
    /// Another live node holds the name, or a mailbox has it (or, for `create`, the mailbox
    /// exists already).
    #[error("name {0} is taken")]
    NameTaken(String),
    /// No mailbox has that name.
    #[error("no mailbox named {0}")]
    NotFound(String),
    /// The name breaks the naming rules.
    #[error("invalid port name: {0}")]
    InvalidName(#[from] NameError),
    /// The broker is gone.
    #[error("the broker is gone")]
    BrokerGone,
    /// A quota of this node's was reached (ports or links, per the broker's policy).
    #[error("quota reached: {0}")]
    LimitExceeded(String),
    /// The broker refused for another reason.
    #[error("the broker refused: {0}")]
    Refused(String),
    /// The broker's policy does not allow the operation on the name.
    #[error(transparent)]
    AccessDenied(#[from] AccessDenied),
    /// The mailbox is on another host (`name@host`) whose broker did not answer: the host is
    /// down, partitioned off, or its link is restarting (docs/network.md).
    #[error("host unreachable: {0}")]
    Unreachable(String),
}

/// Failure of a request that only reads the broker's state ([`Node::list`](crate::Node::list)).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BrokerRequestError {
    /// The broker is gone.
    #[error("the broker is gone")]
    BrokerGone,
    /// The broker refused.
    #[error("the broker refused: {0}")]
    Refused(String),
    /// The broker's policy does not allow the operation on the name.
    #[error(transparent)]
    AccessDenied(#[from] AccessDenied),
}

/// Failure of attaching a node to a broker.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NodeError {
    /// Nothing accepts connections at the socket path.
    #[error("no broker at {path} ({kind}); start one with `postbox daemon`")]
    BrokerUnreachable {
        /// The socket path tried.
        path: PathBuf,
        /// Why the connection failed.
        kind: io::ErrorKind,
    },
    /// The process listening at the socket is run by a user this node does not trust as its
    /// broker (not its own user, root, or `$POSTBOX_BROKER_UID`).
    #[error("the process at {path} runs as uid {uid}, not as a trusted broker user")]
    UntrustedBroker {
        /// The socket path.
        path: PathBuf,
        /// The listening process's user.
        uid: u32,
    },
    /// The broker did not admit the node.
    #[error("the broker did not admit this node: {0}")]
    Refused(String),
    /// No broker could be reached at the TCP address, or the connection failed before the
    /// broker admitted the node.
    #[error("no broker reachable at tcp://{address}: {error}")]
    RemoteUnreachable {
        /// The address tried (`host:port`).
        address: String,
        /// Why.
        error: AttachError,
    },
    /// Authentication with the broker at the TCP address failed: it refused this node's key or
    /// certificate (`RefusedByPeer`), or could not prove that it knows the key (`WrongKey`),
    /// or its certificate was not trusted. Nothing was asked of it.
    #[error("authentication with the broker at tcp://{address} failed: {reason}")]
    AuthenticationFailed {
        /// The address tried (`host:port`).
        address: String,
        /// Why.
        reason: AuthenticationError,
    },
    /// `$POSTBOX_BROKER` or the credentials it needs are missing or malformed.
    #[error("{0}")]
    BadSettings(String),
}

impl SendError {
    /// The message that was not delivered.
    #[must_use]
    pub fn into_message(self) -> Message {
        match self {
            Self::Disconnected(m)
            | Self::Full(m)
            | Self::NoSuchPort(m)
            | Self::BrokerGone(m)
            | Self::Unreachable(m)
            | Self::DatagramsOnly(m) => m,
            Self::TooLarge { message, .. } | Self::AccessDenied { message, .. } => message,
        }
    }
}

impl TrySendError {
    /// The message that was not sent.
    #[must_use]
    pub fn into_message(self) -> Message {
        match self {
            Self::Full(m) | Self::Disconnected(m) => m,
            Self::TooLarge { message, .. } | Self::AccessDenied { message, .. } => message,
        }
    }
}

impl SendTimeoutError {
    /// The message that was not delivered.
    #[must_use]
    pub fn into_message(self) -> Message {
        match self {
            Self::Timeout(m)
            | Self::NotTaken(m)
            | Self::Disconnected(m)
            | Self::DatagramsOnly(m) => m,
            Self::TooLarge { message, .. } | Self::AccessDenied { message, .. } => message,
        }
    }
}
