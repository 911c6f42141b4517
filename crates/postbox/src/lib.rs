//! postbox: message passing between processes — ports, inboxes, `send`, `recv`, `call` and
//! `reply` — with the broker only on the set-up path.
//!
//! # Hello, world
//!
//! ```
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use postbox::{Broker, Message};
//!
//! let broker = Broker::embedded()?;          // or `postbox daemon` + Node::attach()
//! let server = broker.node()?;
//! let port = server.port("greeter").open()?; // a named port (indirect addressing)
//!
//! let client = broker.node()?;
//! let greeter = client.connect("greeter")?; // broker checks the name, hands out a link
//! std::thread::scope(|s| {
//!     s.spawn(|| {
//!         let call = port.recv().unwrap();
//!         let name = String::from_utf8_lossy(call.body()).into_owned();
//!         call.reply(format!("hello, {name}").as_str()).unwrap();
//!     });
//!     let reply = greeter.call("world").unwrap();
//!     assert_eq!(reply.body(), b"hello, world");
//! });
//! # Ok(()) }
//! ```
//!
//! # Concepts
//! - [`Node`]: a process attached to a broker. Its [`ProcessId`] is the pid plus a generation
//!   the broker assigns, so a reused pid is never confused with a dead process. A node may
//!   attach to another host's broker over TCP ([`Node::attach_tcp`], `$POSTBOX_BROKER`).
//! - [`Port`]: a named endpoint owned by one node; [`Inbox`]: every node's own endpoint,
//!   addressed by process id ([`Node::send_to`], [`Inbox::recv_from`]).
//! - [`Connection`]: the sending side of a link, made by the broker in a preparation phase
//!   (lookup, then a socketpair with one end passed to each side); after that, data flows
//!   straight between the two processes.
//! - [`Envelope`]: what a receive returns — the [`Message`], the sender as the system saw it,
//!   and for a call a send-once [`ReplyToken`]. Dropping the token answers `NoReply`.
//! - [`FeedSender`] / [`FeedReceiver`]: a connection's feed, a one-way run of small messages
//!   through a ring in the link's shared memory, one thread at each end, for the lowest
//!   latency ([`Connection::open_feed`], [`Envelope::accept_feed`]).
//!
//! Every operation has blocking, `try_` and `_timeout`/`_deadline` forms; failed sends hand
//! the message back in their error. A server that dies mid-call fails its callers with
//! [`CallError::PeerDied`] at once.
#![forbid(unsafe_code)]

mod body;
mod broker;
mod client_link;
mod condvar;
mod connection;
mod envelope;
mod error;
mod fair_queue;
mod feed;
mod link;
mod mailbox;
mod message;
mod node;
mod port;
mod promotion;
mod readiness;
mod receiver;
mod remote;
pub mod rpc;
mod spare;
mod subscription;

pub use broker::Broker;
pub use connection::Connection;
pub use envelope::{Envelope, ReplyToken, REPLY_WAIT};
pub use error::{
    BrokerRequestError, CallError, ConnectError, LoanError, NodeError, OpenError, RecvError,
    RecvTimeoutError, SendBatchError, SendError, SendTimeoutError, TryRecvError, TrySendError,
};
pub use feed::{
    FeedReceiver, FeedRecvError, FeedSendError, FeedSender, OpenFeedError, FEED_MAX_LEN,
    FEED_MSG_TYPE,
};
pub use mailbox::{Mailbox, MailboxBuilder};
pub use message::{BodyError, Message};
pub use node::{Listing, Node, PortStatus};
pub use port::{Inbox, Port, PortBuilder};
pub use postbox_broker::socket_path::default_socket_path;
pub use postbox_broker::{
    BrokerConfig, BrokerError, HostState, HostStatus, HostsConfig, HostsConfigError, Limits,
    Policy, PolicyError, RemoteNodesConfig, RemoteNodesConfigError, DEFAULT_MAX_MESSAGE_SIZE,
    MAX_DATAGRAM_MESSAGE,
};
pub use postbox_core::{
    AccessDenied, Capacity, Delivery, EndpointKind, Operation, Overflow, PeerIdentity,
    PortCounters, PortEntry, PortSpec, ProcessId, Rights, Selector, TypeFilter,
};
pub use postbox_rpc_macros::service;
pub use postbox_transport::host_link::{AuthenticationError, PreSharedKey, TlsConfig};
pub use postbox_transport::tunnel::{AttachError, AttachSecurity, NamedKey, NodeTlsConfig};
pub use receiver::PortStats;
pub use subscription::{Subscription, SubscriptionBuilder};

/// The README's example is compiled as a doctest, so it cannot drift from the API.
#[cfg(doctest)]
#[doc = include_str!("../../../README.md")]
pub struct ReadmeDoctests;
