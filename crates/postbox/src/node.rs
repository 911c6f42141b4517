//! A node: one process attached to a broker, with its inbox, its ports and its connections.
//!
//! The node keeps one control socket to the broker. A small control thread reads it: answers
//! go to the thread that asked, and `IncomingConnection` notices hand new links to the port
//! they feed. Data never passes through that thread.

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::mpsc::{sync_channel, RecvTimeoutError as ChannelTimeout, SyncSender};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::thread::JoinHandle;
use std::time::Duration;

use postbox_core::wire::control::MAX_CONTROL_LEN;
use postbox_core::{
    AccessDenied, ControlErrorCode, ControlMessage, LinkId, ListenTarget, PeerIdentity,
    PortCounters, PortEntry, PortName, PortSpec, Rights, Target,
};
use postbox_transport::{ControlSocket, Link, LinkSide, TransportError, Wait};

use crate::client_link::Granted;
use crate::error::{BrokerRequestError, ConnectError, NodeError, OpenError, SendError};
use crate::mailbox::MailboxBuilder;
use crate::port::{Inbox, PortBuilder};
use crate::receiver::Receiver;
use crate::subscription::{Subscription, SubscriptionBuilder};
use crate::{Connection, Message, ProcessId};

/// A process attached to postbox.
///
/// # Examples
/// ```no_run
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let node = postbox::Node::attach()?; // the broker at the default socket path
/// let calc = node.connect("calc")?;
/// let reply = calc.call("2+2")?;
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct Node {
    shared: Arc<NodeShared>,
    inbox: Inbox,
    control_thread: Option<JoinHandle<()>>,
    /// The tunnel of a node attached over TCP (`remote.rs`).
    pub(crate) tunnel: Option<postbox_transport::tunnel::Tunnel>,
}

/// What a node's handles share: the control socket, pending requests, open receivers.
#[derive(Debug)]
pub(crate) struct NodeShared {
    control: ControlSocket,
    identity: PeerIdentity,
    max_message_size: u32,
    next_request: AtomicU32,
    pending: Mutex<HashMap<u32, SyncSender<Answer>>>,
    receivers: Mutex<HashMap<PortName, Weak<Receiver>>>,
    inbox: Arc<Receiver>,
    inbox_links: Mutex<HashMap<ProcessId, Connection>>,
    publishers: Mutex<HashMap<PortName, Connection>>,
    broker_gone: AtomicBool,
    /// This node's link ends, for the broker's notice that the other end's node left.
    link_ends: Mutex<HashMap<LinkId, Weak<Link>>>,
}

type Answer = (ControlMessage, Vec<OwnedFd>);

/// What [`Node::stat`] returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortStatus {
    /// The node that owns the port.
    pub owner: PeerIdentity,
    /// How the port buffers.
    pub spec: PortSpec,
    /// Its counters.
    pub counters: PortCounters,
}

/// What [`Node::list`] returns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listing {
    /// Nodes attached to the broker.
    pub nodes: u32,
    /// Ports, in name order.
    pub ports: Vec<PortEntry>,
    /// True when the broker cut the list short.
    pub truncated: bool,
}

impl Node {
    /// Attaches to the broker at the default socket path (`$POSTBOX_SOCKET`, else
    /// `$XDG_RUNTIME_DIR/postbox/broker.sock`, else `/tmp/postbox-$UID/broker.sock`); or, when
    /// `$POSTBOX_BROKER` is `tcp://HOST:PORT`, to the broker of another host over TCP with the
    /// key in `$POSTBOX_BROKER_KEY` (see [`attach_tcp`](Self::attach_tcp)).
    ///
    /// # Errors
    /// [`NodeError::BrokerUnreachable`] when no broker listens there; for TCP, as
    /// [`attach_tcp`](Self::attach_tcp), and [`NodeError::BadSettings`] when the variables
    /// are malformed.
    pub fn attach() -> Result<Self, NodeError> {
        match crate::remote::broker_from_env()? {
            Some(remote) => Self::attach_tcp(&remote.address, &remote.security),
            None => Self::attach_to(postbox_broker::socket_path::default_socket_path()),
        }
    }

    /// Attaches to the broker listening at `path`.
    ///
    /// # Errors
    /// [`NodeError::BrokerUnreachable`], [`NodeError::UntrustedBroker`] when the process
    /// listening there is not run by a user this node trusts (its own, root, or
    /// `$POSTBOX_BROKER_UID`), or [`NodeError::Refused`] when the broker does not admit this
    /// process.
    pub fn attach_to(path: impl AsRef<Path>) -> Result<Self, NodeError> {
        let path = path.as_ref();
        let unreachable = |kind| NodeError::BrokerUnreachable { path: PathBuf::from(path), kind };
        let control = ControlSocket::connect(path).map_err(|e| unreachable(error_kind(e)))?;
        // Whoever answers on the socket tells this node who its peers are: it must be a broker
        // of a trusted user, not a process that took over the socket's path.
        let broker = control.peer_credentials().map_err(|e| unreachable(error_kind(e)))?;
        if !trusted_broker(broker.uid) {
            return Err(NodeError::UntrustedBroker { path: PathBuf::from(path), uid: broker.uid });
        }
        Self::attach_over(control, unreachable)
    }

    /// Says Hello on `control` (a local broker's socket, or a tunnel's) and starts the node;
    /// `unreachable` says what a failure of the socket means.
    pub(crate) fn attach_over(
        control: ControlSocket,
        unreachable: impl Fn(std::io::ErrorKind) -> NodeError,
    ) -> Result<Self, NodeError> {
        let mut packet = Vec::new();
        ControlMessage::Hello { request: 1 }.encode(&mut packet);
        control
            .send(&packet, &[], Wait::timeout(HANDSHAKE_TIMEOUT))
            .map_err(|e| unreachable(error_kind(e)))?;
        let mut buf = vec![0u8; MAX_CONTROL_LEN];
        let (len, _) = control
            .recv(&mut buf, Wait::timeout(HANDSHAKE_TIMEOUT))
            .map_err(|e| unreachable(error_kind(e)))?;
        let (identity, max_message_size) = match ControlMessage::decode(&buf[..len]) {
            Ok(ControlMessage::Welcome { identity, max_message_size, .. }) => {
                (identity, max_message_size)
            }
            Ok(ControlMessage::Refused { detail, .. }) => return Err(NodeError::Refused(detail)),
            Ok(other) => return Err(NodeError::Refused(format!("unexpected answer {other:?}"))),
            Err(e) => return Err(NodeError::Refused(format!("undecodable answer: {e}"))),
        };
        let inbox = Arc::new(
            Receiver::new(PortSpec::default(), false).map_err(|e| unreachable(error_kind(e)))?,
        );
        let shared = Arc::new(NodeShared {
            control,
            identity,
            max_message_size,
            next_request: AtomicU32::new(2),
            pending: Mutex::new(HashMap::new()),
            receivers: Mutex::new(HashMap::new()),
            link_ends: Mutex::new(HashMap::new()),
            inbox: Arc::clone(&inbox),
            inbox_links: Mutex::new(HashMap::new()),
            publishers: Mutex::new(HashMap::new()),
            broker_gone: AtomicBool::new(false),
        });
        let weak = Arc::downgrade(&shared);
        let control_thread = std::thread::Builder::new()
            .name("postbox-control".into())
            .spawn(move || control_loop(&weak))
            .map_err(|e| unreachable(e.kind()))?;
        let inbox = Inbox::new(inbox, Arc::clone(&shared));
        Ok(Self { shared, inbox, control_thread: Some(control_thread), tunnel: None })
    }

    /// This node's process id, assigned by the broker.
    #[must_use]
    pub fn process_id(&self) -> ProcessId {
        self.shared.identity.process_id
    }

    /// What this node's handles share (for typed clients that reconnect).
    pub(crate) fn shared(&self) -> &Arc<NodeShared> {
        &self.shared
    }

    /// This node's identity (process id and kernel credentials).
    #[must_use]
    pub fn identity(&self) -> PeerIdentity {
        self.shared.identity
    }

    /// The largest message body this host's links accept.
    #[must_use]
    pub fn max_message_size(&self) -> u32 {
        self.shared.max_message_size
    }

    /// This node's inbox (direct addressing by [`ProcessId`]).
    #[must_use]
    pub fn inbox(&self) -> &Inbox {
        &self.inbox
    }

    /// Starts opening a named port (indirect addressing): `node.port("calc").open()?`.
    pub fn port(&self, name: &str) -> PortBuilder {
        PortBuilder::new(Arc::clone(&self.shared), name)
    }

    /// Connects to the port named `name`.
    ///
    /// The broker hands the port's owner its end of the new link while this returns, and the
    /// owner takes it in its own time: what is sent at once waits in the link, a blocking
    /// receive on the port gets it, and a `try_recv` that runs before the owner took the link
    /// may still find the port empty.
    ///
    /// # Errors
    /// [`ConnectError::NoSuchPort`], [`ConnectError::InvalidName`], [`ConnectError::BrokerGone`].
    pub fn connect(&self, name: &str) -> Result<Connection, ConnectError> {
        let name = PortName::new(name)?;
        self.shared.connect(Target::Port(name), Rights::ALL)
    }

    /// Connects to the inbox of node `process`.
    ///
    /// # Errors
    /// [`ConnectError::NoSuchPort`] when no live node has that id, [`ConnectError::BrokerGone`].
    pub fn connect_inbox(&self, process: ProcessId) -> Result<Connection, ConnectError> {
        self.shared.connect(Target::Inbox(process), Rights::ALL)
    }

    /// The process id by which this node reaches node `process` of host `host` (a peer of
    /// this node's broker): its **stand-in** here, `0.<n>` (docs/network.md §5). Send to it
    /// with [`send_to`](Self::send_to) and [`connect_inbox`](Self::connect_inbox); messages
    /// from that node carry the same id as their sender, so [`Inbox::recv_from`] and
    /// replies work with it too. For this node's own host it is `process` itself.
    ///
    /// Whether the node is alive is learnt when a link to it is made (`NoSuchPort` then).
    ///
    /// # Examples
    /// ```no_run
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let node = postbox::Node::attach()?;
    /// // Node 1234.5 of host b, as b's broker numbered it (`pid.generation@host`).
    /// let peer = node.process_on("b", "1234.5".parse()?)?;
    /// node.send_to(peer, "hello from a")?;
    /// let answer = node.inbox().recv_from(peer)?;
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// [`ConnectError::NoSuchPort`] when `host` is not this host or a peer of its broker,
    /// [`ConnectError::BrokerGone`].
    pub fn process_on(&self, host: &str, process: ProcessId) -> Result<ProcessId, ConnectError> {
        let host = host.to_owned();
        let answer = self.shared.request(|request| ControlMessage::ResolveProcess {
            request,
            host,
            process,
        });
        match answer {
            Ok((ControlMessage::Resolved { process, .. }, _)) => Ok(process),
            Ok((ControlMessage::Refused { code: ControlErrorCode::NoSuchPort, detail, .. }, _)) => {
                Err(ConnectError::NoSuchPort(detail))
            }
            Ok((ControlMessage::Refused { detail, .. }, _)) => Err(ConnectError::Refused(detail)),
            Ok(_) => Err(ConnectError::Refused("the broker sent an unexpected answer".into())),
            Err(Gone) => Err(ConnectError::BrokerGone),
        }
    }

    /// Sends `message` to the inbox of node `process`, connecting on first use (the link is
    /// kept for later sends). `process` may be a node of another host, by its stand-in
    /// ([`process_on`](Self::process_on), or the sender of a message from there).
    ///
    /// # Errors
    /// [`SendError`] with the message: `NoSuchPort` when no live node has that id,
    /// `Disconnected` when it died, `Unreachable` when its host does not answer,
    /// `BrokerGone`, `TooLarge`.
    pub fn send_to(
        &self,
        process: ProcessId,
        message: impl Into<Message>,
    ) -> Result<(), SendError> {
        let (connection, message) = with_message(self.inbox_link(process), message.into())?;
        let result = connection.send(message);
        if result.is_err() {
            self.shared.lock_inbox_links().remove(&process);
        }
        result
    }

    /// Starts creating or opening a mailbox (a queue the broker owns):
    /// `node.mailbox("/jobs").capacity(1000).create()?`. Send to it with
    /// [`connect`](Self::connect) like a port.
    pub fn mailbox(&self, name: &str) -> MailboxBuilder {
        MailboxBuilder::new(Arc::clone(&self.shared), name)
    }

    /// Subscribes to `pattern` (a topic name, or `*` for one segment and a final `**` for
    /// the rest: `/sensors/*`) with the default queue (1024 messages, oldest dropped).
    ///
    /// # Errors
    /// [`ConnectError`].
    pub fn subscribe(&self, pattern: &str) -> Result<Subscription, ConnectError> {
        self.subscription(pattern).open()
    }

    /// Starts a subscription with settings: `node.subscription("/x/*").capacity(8).open()?`.
    pub fn subscription(&self, pattern: &str) -> SubscriptionBuilder {
        SubscriptionBuilder::new(Arc::clone(&self.shared), pattern)
    }

    /// Publishes `message` to `topic` (the publishing link is made on first use and kept).
    /// Never waits on subscribers.
    ///
    /// # Errors
    /// [`SendError`] with the message.
    pub fn publish(&self, topic: &str, message: impl Into<Message>) -> Result<(), SendError> {
        let message = message.into();
        let Ok(name) = PortName::new(topic) else { return Err(SendError::NoSuchPort(message)) };
        let (connection, message) = with_message(self.publisher(&name), message)?;
        let result = connection.send(message);
        if result.is_err() {
            self.shared.lock_publishers().remove(&name);
        }
        result
    }

    /// Like [`publish`](Self::publish), without blocking the thread (tokio).
    ///
    /// # Errors
    /// [`SendError`] with the message.
    pub async fn publish_async(
        &self,
        topic: &str,
        message: impl Into<Message>,
    ) -> Result<(), SendError> {
        let message = message.into();
        let Ok(name) = PortName::new(topic) else { return Err(SendError::NoSuchPort(message)) };
        let (connection, message) = with_message(self.publisher(&name), message)?;
        let result = connection.send_async(message).await;
        if result.is_err() {
            self.shared.lock_publishers().remove(&name);
        }
        result
    }

    /// The cached publishing link to `topic`, made if needed (a quick broker request).
    fn publisher(&self, name: &PortName) -> Result<Connection, ConnectError> {
        let cached = self.shared.lock_publishers().get(name).filter(|c| !c.is_closed()).cloned();
        if let Some(connection) = cached {
            return Ok(connection);
        }
        let topic = name.clone();
        let connection = self
            .shared
            .connect_with(name.to_string(), |request| ControlMessage::Publish { request, topic })?;
        self.shared.lock_publishers().insert(name.clone(), connection.clone());
        Ok(connection)
    }

    /// Like [`send_to`](Self::send_to), without blocking the thread (tokio) while the link is
    /// full.
    ///
    /// # Errors
    /// As [`send_to`](Self::send_to).
    pub async fn send_to_async(
        &self,
        process: ProcessId,
        message: impl Into<Message>,
    ) -> Result<(), SendError> {
        let (connection, message) = with_message(self.inbox_link(process), message.into())?;
        let result = connection.send_async(message).await;
        if result.is_err() {
            self.shared.lock_inbox_links().remove(&process);
        }
        result
    }

    /// The cached link to `process`'s inbox, made if needed.
    fn inbox_link(&self, process: ProcessId) -> Result<Connection, ConnectError> {
        let cached =
            self.shared.lock_inbox_links().get(&process).filter(|c| !c.is_closed()).cloned();
        if let Some(connection) = cached {
            return Ok(connection);
        }
        let connection = self.shared.connect(Target::Inbox(process), Rights::ALL)?;
        self.shared.lock_inbox_links().insert(process, connection.clone());
        Ok(connection)
    }

    /// Makes topic `topic` keep its last `history` messages for subscribers that join later.
    ///
    /// # Errors
    /// [`BrokerRequestError`].
    pub fn create_topic(&self, topic: &str, history: u32) -> Result<(), BrokerRequestError> {
        let topic = PortName::new(topic).map_err(|e| BrokerRequestError::Refused(e.to_string()))?;
        done(self.shared.request(|request| ControlMessage::CreateTopic { request, topic, history }))
    }

    /// Lets node `to` connect to port `name` with `rights` (a capability), whatever the
    /// broker's policy says of it. The port's owner may grant any rights; another node only
    /// rights it holds itself. The grant lasts until revoked, or until the port closes or `to`
    /// leaves.
    ///
    /// # Errors
    /// [`BrokerRequestError::AccessDenied`] when this node may not grant that;
    /// [`BrokerRequestError::Refused`] when there is no such port or node.
    pub fn grant(
        &self,
        name: &str,
        to: ProcessId,
        rights: Rights,
    ) -> Result<(), BrokerRequestError> {
        let name = PortName::new(name).map_err(|e| BrokerRequestError::Refused(e.to_string()))?;
        done(self.shared.request(|request| ControlMessage::Grant { request, name, to, rights }))
    }

    /// Takes back what was granted to `from` on port `name` (by this node, or on a port this
    /// node owns); the links `from` made under the grant are closed.
    ///
    /// # Errors
    /// [`BrokerRequestError::Refused`] when there is no such grant this node may revoke.
    pub fn revoke(&self, name: &str, from: ProcessId) -> Result<(), BrokerRequestError> {
        let name = PortName::new(name).map_err(|e| BrokerRequestError::Refused(e.to_string()))?;
        done(self.shared.request(|request| ControlMessage::Revoke { request, name, from }))
    }

    /// Removes mailbox `name` from the broker (its queued messages are discarded).
    ///
    /// # Errors
    /// [`BrokerRequestError::Refused`] when there is no such mailbox.
    pub fn unlink_mailbox(&self, name: &str) -> Result<(), BrokerRequestError> {
        let name = PortName::new(name).map_err(|e| BrokerRequestError::Refused(e.to_string()))?;
        crate::mailbox::unlink(&self.shared, &name)
    }

    /// Lists the broker's ports.
    ///
    /// # Errors
    /// [`BrokerRequestError::BrokerGone`].
    pub fn list(&self) -> Result<Listing, BrokerRequestError> {
        match self.shared.request(|request| ControlMessage::List { request }) {
            Ok((ControlMessage::Listing { nodes, ports, truncated, .. }, _)) => {
                Ok(Listing { nodes, ports, truncated })
            }
            Ok((ControlMessage::Refused { detail, .. }, _)) => {
                Err(BrokerRequestError::Refused(detail))
            }
            Ok(_) => Err(BrokerRequestError::Refused("unexpected answer".into())),
            Err(Gone) => Err(BrokerRequestError::BrokerGone),
        }
    }

    /// The live counters of port `name`, as its owner reports them through the broker
    /// (queued messages, messages lost to drop-oldest, open links), with its owner and spec.
    ///
    /// # Errors
    /// [`BrokerRequestError::Refused`] when there is no such port or its owner did not
    /// answer; [`BrokerRequestError::BrokerGone`].
    pub fn stat(&self, name: &str) -> Result<PortStatus, BrokerRequestError> {
        let name = PortName::new(name).map_err(|e| BrokerRequestError::Refused(e.to_string()))?;
        match self.shared.request(|request| ControlMessage::Stat { request, name: name.clone() }) {
            Ok((ControlMessage::Stats { owner, spec, counters, .. }, _)) => {
                Ok(PortStatus { owner, spec, counters })
            }
            Ok((ControlMessage::Refused { detail, .. }, _)) => {
                Err(BrokerRequestError::Refused(detail))
            }
            Ok(_) => Err(BrokerRequestError::Refused("unexpected answer".into())),
            Err(Gone) => Err(BrokerRequestError::BrokerGone),
        }
    }

    /// The peer hosts of this node's broker, with their link state, RTT and retransmission
    /// counts (docs/network.md); empty when the broker links to no other host.
    ///
    /// # Errors
    /// [`BrokerRequestError::BrokerGone`]; [`BrokerRequestError::Refused`] when the broker
    /// does not serve its status port or answers with something else.
    pub fn hosts(&self) -> Result<Vec<crate::HostStatus>, BrokerRequestError> {
        let refused = |e: &dyn std::fmt::Display| BrokerRequestError::Refused(e.to_string());
        let connection = match self.connect(postbox_broker::hosts::HOSTS_PORT) {
            Ok(connection) => connection,
            Err(ConnectError::BrokerGone) => return Err(BrokerRequestError::BrokerGone),
            Err(error) => return Err(refused(&error)),
        };
        let reply =
            connection.call_timeout(Vec::new(), REQUEST_TIMEOUT).map_err(|e| refused(&e))?;
        postbox_broker::HostStatus::decode_list(reply.body()).map_err(|e| refused(&e))
    }

    /// True once the broker's control socket has closed (the broker exited or was killed).
    /// Existing links keep working; new ports and connections fail with `BrokerGone`.
    #[must_use]
    pub fn is_broker_gone(&self) -> bool {
        self.shared.broker_gone.load(Ordering::Acquire)
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.shared.lock_inbox_links().clear();
        self.shared.lock_publishers().clear();
        self.shared.control.shutdown();
        if let Some(thread) = self.control_thread.take() {
            let _ = thread.join();
        }
        if let Some(tunnel) = &self.tunnel {
            crate::remote::close_tunnel(tunnel);
        }
    }
}

/// The broker did not answer: its control socket is closed.
#[derive(Debug)]
pub(crate) struct Gone;

impl NodeShared {
    fn lock_inbox_links(&self) -> MutexGuard<'_, HashMap<ProcessId, Connection>> {
        self.inbox_links.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn lock_publishers(&self) -> MutexGuard<'_, HashMap<PortName, Connection>> {
        self.publishers.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub(crate) fn lock_receivers(&self) -> MutexGuard<'_, HashMap<PortName, Weak<Receiver>>> {
        self.receivers.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Sends a request and waits for the broker's answer.
    pub(crate) fn request(
        &self,
        build: impl FnOnce(u32) -> ControlMessage,
    ) -> Result<Answer, Gone> {
        if self.broker_gone.load(Ordering::Acquire) {
            return Err(Gone);
        }
        let request = self.next_request.fetch_add(1, Ordering::Relaxed).max(1);
        let (tx, rx) = sync_channel(1);
        self.pending.lock().unwrap_or_else(std::sync::PoisonError::into_inner).insert(request, tx);
        let mut packet = Vec::new();
        build(request).encode(&mut packet);
        let sent = self.control.send(&packet, &[], Wait::timeout(REQUEST_TIMEOUT));
        let answer = match sent {
            Ok(()) => match rx.recv_timeout(REQUEST_TIMEOUT) {
                Ok(answer) => Ok(answer),
                Err(ChannelTimeout::Timeout | ChannelTimeout::Disconnected) => Err(Gone),
            },
            Err(_) => Err(Gone),
        };
        self.pending.lock().unwrap_or_else(std::sync::PoisonError::into_inner).remove(&request);
        answer
    }

    /// Tells the broker a link is closed (bookkeeping only; never blocks).
    pub(crate) fn report_link_closed(&self, link: LinkId) {
        let mut packet = Vec::new();
        ControlMessage::LinkClosed { request: 0, link }.encode(&mut packet);
        let _ = self.control.send(&packet, &[], Wait::NonBlocking);
    }

    /// Releases a port name (best effort: a broker that is gone has released it already).
    pub(crate) fn close_port(&self, name: &PortName) {
        let mut packet = Vec::new();
        ControlMessage::ClosePort { request: 0, name: name.clone() }.encode(&mut packet);
        let _ = self.control.send(&packet, &[], Wait::timeout(REQUEST_TIMEOUT));
    }

    pub(crate) fn connect(
        self: &Arc<Self>,
        target: Target,
        rights: Rights,
    ) -> Result<Connection, ConnectError> {
        let name = match &target {
            Target::Port(name) => name.to_string(),
            Target::Inbox(process) => format!("inbox of {process}"),
        };
        self.connect_with(name, |request| ControlMessage::Connect { request, target, rights })
    }

    /// Asks the broker for a link (`build` makes the request) and wraps the end it sends.
    pub(crate) fn connect_with(
        self: &Arc<Self>,
        name: String,
        build: impl FnOnce(u32) -> ControlMessage,
    ) -> Result<Connection, ConnectError> {
        let answer = self.request(build);
        match answer {
            Ok((ControlMessage::Connected { link, server, spec, rights, quota, .. }, fds)) => {
                let end = Link::from_fds(fds, LinkSide::Client).map_err(|e| {
                    self.report_link_closed(link);
                    ConnectError::Refused(format!("the broker sent an unusable link: {e}"))
                })?;
                Connection::new(
                    end,
                    link,
                    server,
                    spec,
                    self.max_message_size,
                    Granted { rights, quota, target: name },
                    Arc::downgrade(self),
                )
                .map_err(|e| ConnectError::Refused(format!("cannot watch the link: {e}")))
            }
            Ok((ControlMessage::Refused { code: ControlErrorCode::NoSuchPort, detail, .. }, _)) => {
                Err(ConnectError::NoSuchPort(detail))
            }
            Ok((
                ControlMessage::Refused { code: ControlErrorCode::LimitExceeded, detail, .. },
                _,
            )) => Err(ConnectError::LimitExceeded(detail)),
            Ok((ControlMessage::Refused { code: ControlErrorCode::Unanswered, detail, .. }, _)) => {
                Err(ConnectError::Unreachable(detail))
            }
            Ok((ControlMessage::Refused { detail, .. }, _)) => Err(ConnectError::Refused(detail)),
            Ok((ControlMessage::Denied { operation, name, .. }, _)) => {
                Err(ConnectError::AccessDenied(AccessDenied { operation, name }))
            }
            Ok(_) => Err(ConnectError::Refused("the broker sent an unexpected answer".into())),
            Err(Gone) => Err(ConnectError::BrokerGone),
        }
    }

    pub(crate) fn open_port(
        &self,
        name: &PortName,
        receiver: &Arc<Receiver>,
        service: bool,
    ) -> Result<(), OpenError> {
        {
            let mut receivers = self.lock_receivers();
            if receivers.get(name).and_then(Weak::upgrade).is_some() {
                // Open in this node already; asking the broker would only confirm it, and the
                // live port's entry must stay as it is.
                return Err(OpenError::NameTaken(name.to_string()));
            }
            // Registered before asking, so that a connection arriving right after the
            // broker's answer finds the receiver.
            receivers.insert(name.clone(), Arc::downgrade(receiver));
        }
        let answer = self.request(|request| ControlMessage::OpenPort {
            request,
            name: name.clone(),
            spec: receiver.spec(),
            service,
        });
        let result = match answer {
            Ok((ControlMessage::Ok { .. }, _)) => return Ok(()),
            Ok((ControlMessage::Refused { code: ControlErrorCode::NameTaken, .. }, _)) => {
                Err(OpenError::NameTaken(name.to_string()))
            }
            Ok((
                ControlMessage::Refused { code: ControlErrorCode::LimitExceeded, detail, .. },
                _,
            )) => Err(OpenError::LimitExceeded(detail)),
            Ok((ControlMessage::Refused { detail, .. }, _)) => Err(OpenError::Refused(detail)),
            Ok((ControlMessage::Denied { operation, name, .. }, _)) => {
                Err(OpenError::AccessDenied(AccessDenied { operation, name }))
            }
            Ok(_) => Err(OpenError::Refused("the broker sent an unexpected answer".into())),
            Err(Gone) => Err(OpenError::BrokerGone),
        };
        let mut receivers = self.lock_receivers();
        if receivers.get(name).is_some_and(|w| std::ptr::eq(w.as_ptr(), Arc::as_ptr(receiver))) {
            receivers.remove(name);
        }
        result
    }
}

/// Reads the control socket until it closes; runs on the node's control thread.
fn control_loop(shared: &Weak<NodeShared>) {
    let mut buf = vec![0u8; MAX_CONTROL_LEN];
    loop {
        let Some(node) = shared.upgrade() else { return };
        // Block without holding the node alive longer than needed: `Node::drop` shuts the
        // socket down, which ends this read.
        let received = node.control.recv(&mut buf, Wait::Forever);
        match received {
            Ok((len, fds)) => match ControlMessage::decode(&buf[..len]) {
                Ok(message) => node.dispatch(message, fds),
                Err(_) => {
                    // An undecodable broker message: the control channel cannot be trusted.
                    node.control.shutdown();
                }
            },
            Err(TransportError::Oversized(_)) => {}
            Err(_) => {
                node.broker_gone.store(true, Ordering::Release);
                node.pending.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clear();
                return;
            }
        }
    }
}

impl NodeShared {
    fn lock_link_ends(&self) -> std::sync::MutexGuard<'_, HashMap<LinkId, Weak<Link>>> {
        // A map of weak references, consistent between statements.
        self.link_ends.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Remembers a link end of this node (for the broker's notices), forgetting ends that are
    /// gone now and then.
    pub(crate) fn track_link(&self, link: LinkId, end: Weak<Link>) {
        let mut ends = self.lock_link_ends();
        if ends.len() >= 64 && ends.len().is_power_of_two() {
            ends.retain(|_, end| end.strong_count() > 0);
        }
        ends.insert(link, end);
    }

    fn dispatch(&self, message: ControlMessage, fds: Vec<OwnedFd>) {
        match message {
            ControlMessage::IncomingConnection { link, target, client, rights, quota } => {
                let Ok(end) = Link::from_fds(fds, LinkSide::Server) else {
                    // Dropping the descriptors closes the client's link.
                    return self.report_link_closed(link);
                };
                let receiver = match &target {
                    ListenTarget::Inbox => Some(Arc::clone(&self.inbox)),
                    ListenTarget::Port(name) => {
                        self.lock_receivers().get(name).and_then(Weak::upgrade)
                    }
                };
                match receiver.and_then(|r| {
                    r.add_link(end, link, client, (rights, quota), self.max_message_size)
                }) {
                    Some(handle) => self.track_link(link, handle),
                    None => self.report_link_closed(link),
                }
            }
            ControlMessage::StatQuery { query, name } => {
                let receiver = self.lock_receivers().get(&name).and_then(Weak::upgrade);
                let counters = receiver.map(|r| {
                    r.absorb(&|link| self.report_link_closed(link));
                    let stats = r.stats();
                    PortCounters {
                        queued: stats.queued as u64,
                        lost: stats.lost,
                        links: u32::try_from(stats.links).unwrap_or(u32::MAX),
                    }
                });
                let mut packet = Vec::new();
                ControlMessage::StatReport { query, counters }.encode(&mut packet);
                let _ = self.control.send(&packet, &[], Wait::timeout(REQUEST_TIMEOUT));
            }
            ControlMessage::LinkRevoked { link } => {
                // A grant was revoked: this end goes now (the serving end's going is what
                // cuts the client off, whatever the client does: a receiver reads nothing
                // more from a link shut here).
                let end = self.lock_link_ends().remove(&link).and_then(|end| end.upgrade());
                if let Some(end) = end {
                    end.cut();
                }
            }
            ControlMessage::LinkClosed { request: 0, link } => {
                // The node at the other end left (it may have been killed): threads asleep on
                // this link's futex hear of it now rather than at the end of a sleep slice.
                let end = self.lock_link_ends().remove(&link).and_then(|end| end.upgrade());
                if let Some(end) = end {
                    end.peer_left();
                }
            }
            other => {
                let request = other.request();
                let waiter = self
                    .pending
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .remove(&request);
                if let Some(waiter) = waiter {
                    let _ = waiter.try_send((other, fds));
                }
            }
        }
    }
}

/// Pairs a link with the message to send on it, or hands the message back in the error.
fn with_message(
    link: Result<Connection, ConnectError>,
    message: Message,
) -> Result<(Connection, Message), SendError> {
    match link {
        Ok(connection) => Ok((connection, message)),
        Err(ConnectError::BrokerGone) => Err(SendError::BrokerGone(message)),
        Err(ConnectError::AccessDenied(denied)) => Err(SendError::AccessDenied { denied, message }),
        Err(ConnectError::Unreachable(_)) => Err(SendError::Unreachable(message)),
        Err(_) => Err(SendError::NoSuchPort(message)),
    }
}

/// True when a broker run by `uid` may be trusted: this process's own user, root, or the
/// user `$POSTBOX_BROKER_UID` names (a broker run by a dedicated service user).
fn trusted_broker(uid: u32) -> bool {
    let own = rustix::process::getuid().as_raw();
    let named = std::env::var("POSTBOX_BROKER_UID").ok().and_then(|v| v.trim().parse().ok());
    uid == own || uid == 0 || named == Some(uid)
}

/// The answer to a request that only says done: `Ok`, or why not.
pub(crate) fn done(
    answer: Result<(ControlMessage, Vec<OwnedFd>), Gone>,
) -> Result<(), BrokerRequestError> {
    match answer {
        Ok((ControlMessage::Ok { .. }, _)) => Ok(()),
        Ok((ControlMessage::Refused { detail, .. }, _)) => Err(BrokerRequestError::Refused(detail)),
        Ok((ControlMessage::Denied { operation, name, .. }, _)) => {
            Err(BrokerRequestError::AccessDenied(AccessDenied { operation, name }))
        }
        Ok(_) => Err(BrokerRequestError::Refused("unexpected answer".into())),
        Err(Gone) => Err(BrokerRequestError::BrokerGone),
    }
}

pub(crate) fn error_kind(error: TransportError) -> std::io::ErrorKind {
    match error {
        TransportError::Os { kind, .. } => kind,
        TransportError::Closed => std::io::ErrorKind::ConnectionReset,
        TransportError::TimedOut => std::io::ErrorKind::TimedOut,
        _ => std::io::ErrorKind::Other,
    }
}

/// How long the broker may take to admit a node.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the broker may take to answer a request before it is considered gone.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
