//! The broker's single-threaded event loop over its control sockets.
//!
//! ```text
//! event_loop/
//! ├── access.rs        policy checks (kernel credentials, or a TCP node's principal), grants
//! ├── mailboxes.rs     serving mailboxes (the broker keeps one end of their links)
//! ├── topics.rs        serving topics: publishers in, a queue per subscriber out
//! ├── out_queue.rs     frames waiting for room in a link the loop never blocks on
//! ├── gateway.rs       links to other hosts' brokers: channels relayed over host links
//! ├── remote.rs        a node's requests for other hosts' names (`jobs@b`) and stand-ins
//! ├── peer_opens.rs    a peer's opens of this host's ports, mailboxes, topics and inboxes
//! ├── datagrams.rs     channels to datagram ports: best-effort session datagrams
//! ├── dropped.rs       publications dropped on the way to a peer, and their credits
//! └── remote_nodes.rs  nodes attached over TCP (tunnels) joining the loop
//! ```

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use postbox_core::{
    Capacity, ControlErrorCode, ControlMessage, Delivery, FrameHeader, FrameKind, Operation,
    PeerIdentity, PortName, PortSpec, Target,
};
use postbox_transport::tunnel::AttachListener;
use postbox_transport::{
    wait_ready, ControlListener, ControlSocket, Credentials, Interest, LinkShape, ShmLinkParts,
    TransportError, UnixLink, Wait, Waker,
};

use crate::grants::Grants;
use crate::mailbox::{DataKey, Mailbox};
use crate::registry::{NodeKey, Registry};

mod access;
mod datagrams;
mod direct;
mod dropped;
mod gateway;
mod log_budget;
mod mailboxes;
mod out_queue;
mod peer_opens;
mod remote;
mod remote_nodes;
mod topics;

pub use access::PolicyReloader;

use crate::socket_path::bind_listener;
use crate::{BrokerConfig, BrokerError};
use gateway::{Gateway, Relay, RelayKey};
use log_budget::LogBudget;
use mailboxes::DataLink;
use remote_nodes::RemoteNode;
use topics::{TopicKey, TopicLink};

/// A bound broker, ready to [`run`](Self::run) in this thread or [`spawn`](Self::spawn) on its
/// own.
#[derive(Debug)]
pub struct Broker {
    config: BrokerConfig,
    listener: ControlListener,
    /// Accepts nodes over TCP, when configured.
    remote_nodes: Option<AttachListener>,
    stop: Arc<Waker>,
    reloader: PolicyReloader,
}

/// A broker running on its own thread; dropping the handle stops it.
#[derive(Debug)]
pub struct BrokerHandle {
    socket_path: PathBuf,
    remote_address: Option<SocketAddr>,
    stop: Arc<Waker>,
    reloader: PolicyReloader,
    thread: Option<JoinHandle<Result<(), BrokerError>>>,
}

impl Broker {
    /// Prepares the socket directory and binds the control socket.
    ///
    /// # Errors
    /// [`BrokerError::AlreadyRunning`] when a live broker serves the path; directory and
    /// socket failures otherwise.
    pub fn bind(config: BrokerConfig) -> Result<Self, BrokerError> {
        let listener = bind_listener(&config.socket_path, config.policy.socket_group())?;
        let remote_nodes = config
            .remote_nodes
            .as_ref()
            .map(|r| AttachListener::bind(r.listen, r.security.clone(), r.tunnel))
            .transpose()?;
        let reloader =
            PolicyReloader { pending: Arc::new(Mutex::new(None)), waker: Arc::new(Waker::new()?) };
        Ok(Self { config, listener, remote_nodes, stop: Arc::new(Waker::new()?), reloader })
    }

    /// Where nodes on other hosts attach over TCP (the port chosen, when configured with
    /// port 0); `None` without [`BrokerConfig::remote_nodes`].
    #[must_use]
    pub fn remote_address(&self) -> Option<SocketAddr> {
        self.remote_nodes.as_ref().map(AttachListener::local_addr)
    }

    /// A handle that replaces this broker's policy while it runs (the daemon's `SIGHUP`).
    #[must_use]
    pub fn policy_reloader(&self) -> PolicyReloader {
        self.reloader.clone()
    }

    /// Where nodes connect.
    #[must_use]
    pub fn socket_path(&self) -> &Path {
        &self.config.socket_path
    }

    /// Serves in this thread until the process ends (or a [`BrokerHandle`] stops it).
    ///
    /// # Errors
    /// Only when polling itself fails; a misbehaving node never stops the broker.
    pub fn run(self) -> Result<(), BrokerError> {
        let gateway = self.config.hosts.clone().map(Gateway::new).transpose()?;
        let mut state = EventLoop {
            gateway,
            relays: Vec::new(),
            registry: Registry::new(self.config.policy.limits()),
            grants: Grants::default(),
            denial_log: LogBudget::new(
                "access denials",
                access::DENIALS_LOGGED_PER_SECOND,
                Instant::now(),
            ),
            refusal_log: LogBudget::new(
                "refused remote nodes",
                remote_nodes::REFUSALS_LOGGED_PER_SECOND,
                Instant::now(),
            ),
            pending_policy: Arc::clone(&self.reloader.pending),
            reload_waker: Arc::clone(&self.reloader.waker),
            config: self.config,
            nodes: Vec::new(),
            accept_paused_until: None,
            queries: HashMap::new(),
            next_query: 1,
            mailboxes: HashMap::new(),
            data: Vec::new(),
            identity: broker_identity(),
            topics: HashMap::new(),
            topic_links: Vec::new(),
            rounds: 0,
        };
        let listeners = Listeners { local: &self.listener, remote: self.remote_nodes.as_ref() };
        let result = state.serve(&listeners, &self.stop, &self.reloader.waker);
        let _ = std::fs::remove_file(&state.config.socket_path);
        result
    }

    /// Serves on a new thread; the returned handle stops the broker when dropped.
    ///
    /// # Errors
    /// [`BrokerError::Transport`] when the thread cannot be started.
    pub fn spawn(self) -> Result<BrokerHandle, BrokerError> {
        let stop = Arc::clone(&self.stop);
        let socket_path = self.config.socket_path.clone();
        let remote_address = self.remote_address();
        let reloader = self.reloader.clone();
        let thread = std::thread::Builder::new()
            .name("postbox-broker".into())
            .spawn(move || self.run())
            .map_err(|e| TransportError::Os { operation: "spawn broker", kind: e.kind() })?;
        Ok(BrokerHandle { socket_path, remote_address, stop, reloader, thread: Some(thread) })
    }
}

impl BrokerHandle {
    /// Where nodes connect.
    #[must_use]
    pub fn socket_path(&self) -> &Path {
        &self.socket_path
    }

    /// Where nodes on other hosts attach over TCP, when configured.
    #[must_use]
    pub fn remote_address(&self) -> Option<SocketAddr> {
        self.remote_address
    }

    /// Replaces the broker's policy: requests from now on are checked against `policy`.
    pub fn reload_policy(&self, policy: crate::Policy) {
        self.reloader.reload(policy);
    }

    /// Stops the broker and waits for its thread. Nodes see `BrokerGone`; their direct links
    /// keep working.
    ///
    /// # Errors
    /// What the broker loop returned.
    pub fn stop(mut self) -> Result<(), BrokerError> {
        self.stop_inner()
    }

    fn stop_inner(&mut self) -> Result<(), BrokerError> {
        self.stop.wake();
        match self.thread.take() {
            Some(thread) => thread.join().map_err(|_| BrokerError::Panicked)?,
            None => Ok(()),
        }
    }
}

impl Drop for BrokerHandle {
    fn drop(&mut self) {
        let _ = self.stop_inner();
    }
}

/// One admitted (or not yet admitted) node's control connection.
#[derive(Debug)]
struct NodeConnection {
    socket: ControlSocket,
    credentials: Credentials,
    outbox: VecDeque<(Vec<u8>, Vec<OwnedFd>)>,
    closing: bool,
    accepted_at: Instant,
    /// Who the node is when it attached over TCP (its credentials then are placeholders).
    remote: Option<RemoteNode>,
}

/// Where nodes come from: the control socket, and the TCP listener for remote nodes.
#[derive(Debug, Clone, Copy)]
struct Listeners<'a> {
    local: &'a ControlListener,
    remote: Option<&'a AttachListener>,
}

#[derive(Debug)]
struct EventLoop {
    config: BrokerConfig,
    registry: Registry,
    /// Rights nodes handed to other nodes.
    grants: Grants,
    /// Denied requests, logged within a budget (a node can cause any number of them).
    denial_log: LogBudget,
    /// Refused attempts of nodes to attach over TCP, logged within a budget (anybody who can
    /// connect can cause them).
    refusal_log: LogBudget,
    /// A policy waiting to be applied, and the waker that says so.
    pending_policy: Arc<Mutex<Option<crate::Policy>>>,
    reload_waker: Arc<Waker>,
    nodes: Vec<Option<NodeConnection>>,
    /// Set after `accept` failed (out of descriptors): the listener is left out of the poll
    /// set until then, instead of spinning on a connection that cannot be accepted.
    accept_paused_until: Option<Instant>,
    /// Stat requests relayed to port owners, by query number.
    queries: HashMap<u32, PendingQuery>,
    next_query: u32,
    /// Mailboxes, by name.
    mailboxes: HashMap<PortName, Mailbox>,
    /// The broker's own ends of links to mailboxes.
    data: Vec<Option<DataLink>>,
    /// Who the broker is, as owner of its mailboxes.
    identity: PeerIdentity,
    /// Topics, by name.
    topics: HashMap<PortName, crate::topic::Topic>,
    /// The broker's own ends of links to topics.
    topic_links: Vec<Option<TopicLink>>,
    /// Rounds served, to rotate which sender gets a mailbox's freed room first.
    rounds: usize,
    /// Peer hosts, when configured.
    gateway: Option<Gateway>,
    /// The broker's own ends of links relayed to other hosts, and of status-port links.
    relays: Vec<Option<Relay>>,
}

/// A `Stat` the broker asked a port's owner about, waiting for its report.
#[derive(Debug)]
struct PendingQuery {
    requester: NodeKey,
    request: u32,
    owner: NodeKey,
    owner_identity: PeerIdentity,
    spec: PortSpec,
    deadline: Instant,
}

/// What one entry of the poll set is.
#[derive(Debug, Clone, Copy)]
enum Slot {
    Stop,
    Reload,
    Listener,
    RemoteNodes,
    Node(NodeKey),
    Data(DataKey),
    Topic(TopicKey),
    Hosts,
    Relay(RelayKey),
}

impl EventLoop {
    fn serve(
        &mut self,
        listeners: &Listeners<'_>,
        stop: &Waker,
        reload: &Waker,
    ) -> Result<(), BrokerError> {
        let mut packet = vec![0u8; postbox_core::wire::control::MAX_CONTROL_LEN];
        loop {
            let now = Instant::now();
            if self.accept_paused_until.is_some_and(|until| until <= now) {
                self.accept_paused_until = None;
            }
            self.expire_silent_nodes(now);
            self.expire_queries(now);
            self.run_gateway_timers(now);
            let ready = {
                let mut set =
                    vec![(stop.as_fd(), Interest::READ), (reload.as_fd(), Interest::READ)];
                let mut slots = vec![Slot::Stop, Slot::Reload];
                if self.accept_paused_until.is_none() {
                    set.push((listeners.local.as_fd(), Interest::READ));
                    slots.push(Slot::Listener);
                }
                if let Some(remote) = listeners.remote {
                    set.push((remote.as_fd(), Interest::READ));
                    slots.push(Slot::RemoteNodes);
                }
                for (index, node) in self.nodes.iter().enumerate() {
                    if let Some(node) = node {
                        let interest =
                            if node.outbox.is_empty() { Interest::READ } else { Interest::BOTH };
                        set.push((node.socket.as_fd(), interest));
                        slots.push(Slot::Node(NodeKey(index)));
                    }
                }
                for (index, link) in self.topic_links.iter().enumerate() {
                    if let Some(link) = link {
                        set.push((link.link.as_fd(), EventLoop::topic_interest(link)));
                        slots.push(Slot::Topic(TopicKey(index)));
                    }
                }
                for (index, link) in self.data.iter().enumerate() {
                    if let Some(link) = link {
                        if let Some(interest) = self.data_interest(link) {
                            set.push((link.link.as_fd(), interest));
                            slots.push(Slot::Data(DataKey(index)));
                        }
                    }
                }
                if let Some(gateway) = &self.gateway {
                    set.push((gateway.waker().as_fd(), Interest::READ));
                    slots.push(Slot::Hosts);
                }
                for (index, relay) in self.relays.iter().enumerate() {
                    if let Some(interest) = relay.as_ref().and_then(Relay::interest) {
                        // Invariant: `interest` is only Some for a present relay.
                        let relay = relay.as_ref().expect("relay present");
                        set.push((relay.link.as_fd(), interest));
                        slots.push(Slot::Relay(RelayKey(index)));
                    }
                }
                match wait_ready(&set, Wait::deadline(self.next_timer())) {
                    Ok(ready) => ready.iter().map(|&i| slots[i]).collect::<Vec<_>>(),
                    Err(_) => {
                        // poll itself failed (out of memory): try again shortly, never spin.
                        std::thread::sleep(Duration::from_millis(10));
                        continue;
                    }
                }
            };
            for slot in ready {
                match slot {
                    Slot::Stop => return Ok(()),
                    Slot::Reload => self.apply_pending_policy(),
                    Slot::Listener => self.accept_all(listeners.local),
                    Slot::RemoteNodes => {
                        if let Some(remote) = listeners.remote {
                            self.serve_remote_nodes(remote);
                        }
                    }
                    Slot::Node(key) => {
                        self.read_node(key, &mut packet);
                        self.flush(key);
                    }
                    Slot::Data(key) => self.service_data(key),
                    Slot::Topic(key) => self.service_topic(key),
                    Slot::Hosts => self.service_hosts(),
                    Slot::Relay(key) => self.service_relay(key),
                }
            }
            self.answer_pulls(Instant::now());
            self.flush_topics();
            // Answers queued for other nodes during this round (incoming connections).
            for index in 0..self.nodes.len() {
                self.flush(NodeKey(index));
            }
        }
    }

    /// What holds `name`, if anything: a node's "port", a "mailbox" or a "topic" (the three
    /// share one namespace).
    fn name_kind(&self, name: &PortName) -> Option<&'static str> {
        if self.registry.port(name).is_some() {
            Some("port")
        } else if self.mailboxes.contains_key(name) {
            Some("mailbox")
        } else if self.topics.contains_key(name) {
            Some("topic")
        } else {
            None
        }
    }

    /// Refuses `request` with `NameTaken` when something other than a `kind` holds `name`;
    /// true when it did.
    fn refuse_if_taken(&mut self, key: NodeKey, request: u32, name: &PortName, kind: &str) -> bool {
        match self.name_kind(name).filter(|held| *held != kind) {
            Some(held) => {
                let detail = format!("{name} is a {held}");
                self.refuse(key, request, ControlErrorCode::NameTaken, &detail);
                true
            }
            None => false,
        }
    }

    /// The next instant the loop must wake without any socket being ready.
    fn next_timer(&self) -> Option<Instant> {
        let hello_deadlines = self
            .nodes
            .iter()
            .enumerate()
            .filter_map(|(index, node)| node.as_ref().map(|n| (index, n)))
            .filter(|(index, _)| !self.registry.is_admitted(NodeKey(*index)))
            .map(|(_, n)| n.accepted_at + self.config.hello_timeout);
        let query_deadlines = self.queries.values().map(|q| q.deadline);
        let pull_deadlines = self.mailboxes.values().filter_map(Mailbox::next_deadline);
        hello_deadlines
            .chain(query_deadlines)
            .chain(pull_deadlines)
            .chain(self.accept_paused_until)
            .chain(self.gateway.as_ref().and_then(Gateway::next_deadline))
            .min()
    }

    /// Disconnects connections that did not say Hello in time: they hold a descriptor and a
    /// slot, and a flood of them must not lock others out.
    fn expire_queries(&mut self, now: Instant) {
        let expired: Vec<u32> =
            self.queries.iter().filter(|(_, q)| q.deadline <= now).map(|(id, _)| *id).collect();
        for id in expired {
            if let Some(query) = self.queries.remove(&id) {
                let detail = "the port's owner did not answer in time";
                self.refuse(query.requester, query.request, ControlErrorCode::Unanswered, detail);
            }
        }
    }

    fn expire_silent_nodes(&mut self, now: Instant) {
        for index in 0..self.nodes.len() {
            let key = NodeKey(index);
            let silent = self.nodes[index].as_ref().is_some_and(|n| {
                now >= n.accepted_at + self.config.hello_timeout && !self.registry.is_admitted(key)
            });
            if silent {
                self.reject(key, ControlErrorCode::OutOfOrder, "no Hello in time");
            }
        }
    }

    fn accept_all(&mut self, listener: &ControlListener) {
        loop {
            let socket = match listener.accept() {
                Ok(Some(socket)) => socket,
                Ok(None) => return,
                Err(_) => {
                    // Out of descriptors, typically: the pending connection stays in the
                    // backlog, so polling the listener again at once would spin.
                    self.accept_paused_until = Some(Instant::now() + ACCEPT_BACKOFF);
                    return;
                }
            };
            let active = self.nodes.iter().flatten().count();
            let Ok(credentials) = socket.peer_credentials() else {
                continue;
            };
            if active >= self.config.max_nodes {
                let refusal = refused(0, ControlErrorCode::LimitExceeded, "broker is full");
                let _ = socket.send(&refusal, &[], Wait::NonBlocking);
                continue;
            }
            let policy = &self.config.policy;
            let per_user = policy.limits().nodes_per_user;
            let of_user = self
                .nodes
                .iter()
                .flatten()
                .filter(|n| n.remote.is_none() && n.credentials.uid == credentials.uid);
            if credentials.uid != policy.owner_uid() && of_user.count() >= per_user {
                let detail = format!("uid {} has {per_user} nodes attached", credentials.uid);
                let refusal = refused(0, ControlErrorCode::LimitExceeded, &detail);
                let _ = socket.send(&refusal, &[], Wait::NonBlocking);
                continue;
            }
            self.insert_node(NodeConnection {
                socket,
                credentials,
                outbox: VecDeque::new(),
                closing: false,
                accepted_at: Instant::now(),
                remote: None,
            });
        }
    }

    /// Serves `node` from now on, in the first free slot.
    fn insert_node(&mut self, node: NodeConnection) {
        match self.nodes.iter().position(Option::is_none) {
            Some(free) => self.nodes[free] = Some(node),
            None => self.nodes.push(Some(node)),
        }
    }

    fn read_node(&mut self, key: NodeKey, packet: &mut [u8]) {
        for _ in 0..MAX_PACKETS_PER_ROUND {
            let Some(node) = self.nodes.get(key.0).and_then(Option::as_ref) else {
                return;
            };
            if node.closing {
                return;
            }
            match node.socket.recv(packet, Wait::NonBlocking) {
                Ok((len, _stray_fd)) => {
                    // A descriptor sent to the broker is never wanted; it is closed here.
                    match ControlMessage::decode(&packet[..len]) {
                        Ok(message) => self.handle(key, message),
                        Err(error) => {
                            let detail = format!("undecodable control message: {error}");
                            self.reject(key, ControlErrorCode::Malformed, &detail);
                            return;
                        }
                    }
                }
                Err(TransportError::WouldBlock) => return,
                Err(TransportError::Oversized(limit)) => {
                    let detail = format!("control message over {limit} bytes");
                    self.reject(key, ControlErrorCode::Malformed, &detail);
                    return;
                }
                Err(_) => {
                    self.remove(key);
                    return;
                }
            }
        }
    }

    fn handle(&mut self, key: NodeKey, message: ControlMessage) {
        let request = message.request();
        let admitted = self.registry.is_admitted(key);
        match message {
            ControlMessage::Hello { request } if !admitted => {
                let creds = self.nodes[key.0].as_ref().map(|n| n.credentials);
                // Invariant: `handle` is only called for a present node.
                let creds = creds.expect("node present");
                let identity = self.registry.admit(key, creds.pid, creds.uid, creds.gid);
                let welcome = ControlMessage::Welcome {
                    request,
                    identity,
                    max_message_size: self.config.max_message_size,
                };
                self.queue(key, &welcome, Vec::new());
            }
            ControlMessage::Hello { .. } => {
                self.refuse(key, request, ControlErrorCode::OutOfOrder, "already admitted");
            }
            _ if !admitted => {
                self.reject(key, ControlErrorCode::OutOfOrder, "the first message must be Hello");
            }
            // Names of other hosts, remote nodes' stand-ins (docs/network.md): remote.rs.
            message if self.is_remote_request(&message) => self.handle_remote(key, message),
            ControlMessage::OpenPort { request, ref name, .. }
                if !self.permit(key, request, Operation::Register, name.as_str()) => {}
            ControlMessage::CreateMailbox { request, ref name, .. }
            | ControlMessage::UnlinkMailbox { request, ref name }
            | ControlMessage::CreateTopic { request, topic: ref name, .. }
                if !self.permit(key, request, Operation::Manage, name.as_str()) => {}
            ControlMessage::ReceiveMailbox { request, ref name }
                if !self.permit(key, request, Operation::Receive, name.as_str()) => {}
            ControlMessage::Publish { request, ref topic }
                if !self.permit(key, request, Operation::Send, topic.as_str()) => {}
            // Publishing to a topic that does not exist creates it: that is managing it.
            ControlMessage::Publish { request, ref topic }
                if !self.topics.contains_key(topic)
                    && !self.permit(key, request, Operation::Manage, topic.as_str()) => {}
            ControlMessage::Subscribe { request, ref pattern, .. }
                if !self.permit_subscription(key, request, pattern) => {}
            ControlMessage::Grant { request, name, to, rights } => {
                self.grant(key, request, name, to, rights);
            }
            ControlMessage::Revoke { request, name, from } => {
                self.revoke(key, request, &name, from)
            }
            ControlMessage::OpenPort { request, name, .. } if Self::is_reserved(&name) => {
                let detail = format!("{name} is the broker's own");
                self.refuse(key, request, ControlErrorCode::NameTaken, &detail);
            }
            ControlMessage::OpenPort { request, name, .. }
                if self.mailboxes.contains_key(&name) || self.topics.contains_key(&name) =>
            {
                let detail = format!("{name} is a mailbox");
                self.refuse(key, request, ControlErrorCode::NameTaken, &detail);
            }
            ControlMessage::CreateMailbox { request, name, capacity, open_existing } => {
                self.create_mailbox(key, request, name, capacity, open_existing);
            }
            ControlMessage::UnlinkMailbox { request, name } => {
                self.unlink_mailbox(key, request, &name)
            }
            ControlMessage::Publish { request, topic } => self.publish_link(key, request, topic),
            ControlMessage::Subscribe { request, pattern, capacity, drop_newest } => {
                self.subscribe_link(key, request, &pattern, capacity, drop_newest);
            }
            ControlMessage::CreateTopic { request, topic, history } => {
                self.create_topic(key, request, topic, history);
            }
            ControlMessage::ReceiveMailbox { request, name } => {
                self.connect_mailbox(key, request, &name, false);
            }
            ControlMessage::Connect { request, target: Target::Port(ref name), .. }
                if Self::is_reserved(name) =>
            {
                self.connect_status(key, request);
            }
            ControlMessage::Connect { request, target: Target::Port(name), .. }
                if self.mailboxes.contains_key(&name) =>
            {
                if self.permit(key, request, Operation::Send, name.as_str()) {
                    self.connect_mailbox(key, request, &name, true);
                }
            }
            ControlMessage::Stat { request, name } if self.mailboxes.contains_key(&name) => {
                let stats = self.mailbox_stats(request, &name);
                self.queue(key, &stats, Vec::new());
            }
            ControlMessage::OpenPort { request, spec, .. }
                if spec.delivery == Delivery::Datagrams
                    && spec.capacity == Capacity::Rendezvous =>
            {
                let detail = "a rendezvous port cannot take datagrams";
                self.refuse(key, request, ControlErrorCode::Malformed, detail);
            }
            ControlMessage::OpenPort { request, name, mut spec, service } => {
                // A port cannot take more than the host's links carry.
                let host = self.config.max_message_size;
                spec.message_size = Some(spec.message_size.map_or(host, |n| n.min(host)));
                match self.registry.open_port(key, name.clone(), spec) {
                    Ok(()) => {
                        if service {
                            self.registry.mark_service(&name);
                        }
                        self.queue(key, &ControlMessage::Ok { request }, Vec::new());
                    }
                    Err((code, detail)) => self.refuse(key, request, code, &detail),
                }
            }
            ControlMessage::ClosePort { request, name } => self.close_port(key, request, &name),
            ControlMessage::Connect { request, target, rights } => {
                let Some(allowed) = self.connect_rights(key, request, &target, rights) else {
                    return;
                };
                if !self.has_link_room(key, request) {
                    return;
                }
                let new = match self.registry.connect(key, &target, allowed.rights) {
                    Ok(new) => new,
                    Err((code, detail)) => return self.refuse(key, request, code, &detail),
                };
                if !self.has_room(new.server) {
                    // The server is not reading its control socket; refusing this client is
                    // fair, disconnecting the server for others' requests is not.
                    self.registry.link_closed(key, new.link);
                    self.registry.link_closed(new.server, new.link);
                    let detail = "the serving node is not reading its control socket";
                    return self.refuse(key, request, ControlErrorCode::LimitExceeded, detail);
                }
                // A node attached over TCP gets its links through its tunnel: socket bytes
                // cross it, shared memory cannot.
                let tunneled = self.is_tcp_node(key) || self.is_tcp_node(new.server);
                let (server_fds, client_fds) = match self.link_pair(tunneled) {
                    Ok(pair) => pair,
                    Err(error) => {
                        self.registry.link_closed(key, new.link);
                        self.registry.link_closed(new.server, new.link);
                        let detail = format!("cannot create the link: {error}");
                        return self.refuse(key, request, ControlErrorCode::LimitExceeded, &detail);
                    }
                };
                if let Some(name) = allowed.by_grant {
                    self.grants.link_made(new.link, name, new.client_identity.process_id);
                }
                let incoming = ControlMessage::IncomingConnection {
                    link: new.link,
                    target: new.target,
                    client: new.client_identity,
                    rights: new.rights,
                    quota: self.config.policy.quota(),
                };
                self.queue(new.server, &incoming, server_fds);
                // The server hears of the link before the client is told it exists: a client
                // must never hold a link whose other end is still only in the broker.
                self.flush(new.server);
                let connected = ControlMessage::Connected {
                    request,
                    link: new.link,
                    server: new.server_identity,
                    // A link within the host is lossless, whatever the port asks of others.
                    spec: PortSpec { delivery: Delivery::Reliable, ..new.spec },
                    rights: new.rights,
                    quota: self.config.policy.quota(),
                };
                self.queue(key, &connected, client_fds);
            }
            ControlMessage::LinkClosed { request, link } => {
                self.registry.link_closed(key, link);
                if let Some(gateway) = &mut self.gateway {
                    gateway.directs.link_closed(link);
                }
                if self.registry.link_ends(link).is_empty() {
                    self.grants.link_closed(link);
                }
                if request != 0 {
                    self.queue(key, &ControlMessage::Ok { request }, Vec::new());
                }
            }
            ControlMessage::Stat { request, name } => {
                let Some((owner, owner_identity, spec)) = self.registry.port(&name) else {
                    let detail = format!("no port named {name}");
                    return self.refuse(key, request, ControlErrorCode::NoSuchPort, &detail);
                };
                if !self.has_room(owner) {
                    let detail = "the port's owner is not reading its control socket";
                    return self.refuse(key, request, ControlErrorCode::LimitExceeded, detail);
                }
                let query = self.next_query;
                self.next_query = self.next_query.wrapping_add(1).max(1);
                let deadline = Instant::now() + STAT_TIMEOUT;
                let pending =
                    PendingQuery { requester: key, request, owner, owner_identity, spec, deadline };
                self.queries.insert(query, pending);
                self.queue(owner, &ControlMessage::StatQuery { query, name }, Vec::new());
            }
            ControlMessage::StatReport { query, counters } => {
                // Only the node that was asked may answer.
                let Some(pending) = self.queries.get(&query).filter(|q| q.owner == key) else {
                    return;
                };
                let (requester, request) = (pending.requester, pending.request);
                let (owner, spec) = (pending.owner_identity, pending.spec);
                self.queries.remove(&query);
                match counters {
                    Some(counters) => {
                        let stats = ControlMessage::Stats { request, owner, spec, counters };
                        self.queue(requester, &stats, Vec::new());
                    }
                    None => {
                        let detail = "the port closed";
                        self.refuse(requester, request, ControlErrorCode::NoSuchPort, detail);
                    }
                }
            }
            ControlMessage::List { request } => {
                let (nodes, mut ports) = self.registry.listing();
                ports.extend(self.mailbox_entries());
                ports.extend(self.topic_entries());
                ports.sort_by(|a, b| a.name.cmp(&b.name));
                let listing = ControlMessage::Listing { request, nodes, ports, truncated: false };
                self.queue(key, &listing, Vec::new());
            }
            _ => self.reject(key, ControlErrorCode::Malformed, "not a request"),
        }
    }

    fn close_port(&mut self, key: NodeKey, request: u32, name: &PortName) {
        match self.registry.close_port(key, name) {
            Ok(()) => {
                self.grants.port_closed(name);
                self.queue(key, &ControlMessage::Ok { request }, Vec::new());
            }
            Err((code, detail)) => self.refuse(key, request, code, &detail),
        }
    }

    fn refuse(&mut self, key: NodeKey, request: u32, code: ControlErrorCode, detail: &str) {
        let message = ControlMessage::Refused { request, code, detail: detail.to_owned() };
        self.queue(key, &message, Vec::new());
    }

    /// Refuses and disconnects a node that broke the protocol.
    fn reject(&mut self, key: NodeKey, code: ControlErrorCode, detail: &str) {
        self.refuse(key, 0, code, detail);
        self.flush(key);
        if let Some(node) = self.nodes.get_mut(key.0).and_then(Option::as_mut) {
            node.closing = true;
        }
        self.remove(key);
    }

    /// The descriptors of a new link between two nodes, `(server, client)`: a shared-memory
    /// link (socket, segment, wake-up socket) or, when configured so or `unix_only`, a Unix
    /// link (socket only).
    fn link_pair(&self, unix_only: bool) -> Result<(Vec<OwnedFd>, Vec<OwnedFd>), TransportError> {
        match self.config.shared_memory_links.filter(|_| !unix_only) {
            Some(capacity) => {
                let shape = LinkShape::new(capacity, self.config.shared_memory_pool);
                let (client, server) = ShmLinkParts::pair(shape)?;
                let fds = |p: ShmLinkParts| vec![p.socket, p.segment, p.wake];
                Ok((fds(server), fds(client)))
            }
            None => {
                let (server, client) = UnixLink::pair()?;
                Ok((vec![server.into_fd()], vec![client.into_fd()]))
            }
        }
    }

    fn queue(&mut self, key: NodeKey, message: &ControlMessage, fds: Vec<OwnedFd>) {
        let limit = self.config.max_queued_per_node;
        let Some(node) = self.nodes.get_mut(key.0).and_then(Option::as_mut) else {
            return;
        };
        if node.outbox.len() >= limit {
            // A node that does not read its control socket loses it; others are unaffected.
            self.remove(key);
            return;
        }
        let mut bytes = Vec::with_capacity(64);
        message.encode(&mut bytes);
        node.outbox.push_back((bytes, fds));
    }

    /// A link whose one end the broker keeps and the other goes to node `key`; `None` after
    /// refusing `request` when the system gives no socketpair.
    fn broker_link_pair(&mut self, key: NodeKey, request: u32) -> Option<(UnixLink, UnixLink)> {
        match UnixLink::pair() {
            Ok(pair) => Some(pair),
            Err(error) => {
                let detail = format!("cannot create the link: {error}");
                self.refuse(key, request, ControlErrorCode::LimitExceeded, &detail);
                None
            }
        }
    }

    /// Answers `request` with the node's end of a link whose other end the broker keeps (a
    /// mailbox's or a topic's): both rights, since the broker checks its own protocol.
    fn hand_broker_link(
        &mut self,
        key: NodeKey,
        request: u32,
        link: postbox_core::LinkId,
        spec: PortSpec,
        theirs: UnixLink,
    ) {
        let connected = ControlMessage::Connected {
            request,
            link,
            server: self.identity,
            spec,
            rights: postbox_core::Rights::ALL,
            quota: self.config.policy.quota(),
        };
        self.queue(key, &connected, vec![theirs.into_fd()]);
    }

    /// True when `key`'s outbox can take one more message.
    fn has_room(&self, key: NodeKey) -> bool {
        self.nodes
            .get(key.0)
            .and_then(Option::as_ref)
            .is_some_and(|n| n.outbox.len() < self.config.max_queued_per_node)
    }

    fn flush(&mut self, key: NodeKey) {
        let Some(node) = self.nodes.get_mut(key.0).and_then(Option::as_mut) else {
            return;
        };
        while let Some((bytes, fds)) = node.outbox.front() {
            let fds: Vec<_> = fds.iter().map(AsFd::as_fd).collect();
            match node.socket.send(bytes, &fds, Wait::NonBlocking) {
                Ok(()) => {
                    node.outbox.pop_front();
                }
                Err(TransportError::WouldBlock) => return,
                Err(_) => {
                    self.remove(key);
                    return;
                }
            }
        }
    }

    fn remove(&mut self, key: NodeKey) {
        if let Some(slot) = self.nodes.get_mut(key.0) {
            // Dropping the connection closes the socket and any queued link ends, so the
            // other sides of those links see them close.
            *slot = None;
        }
        // The other ends hear of it from the broker too: a thread asleep on a shared-memory
        // link's futex watches no descriptor that could tell it.
        let orphaned = self.registry.orphaned_by(key);
        for name in self.registry.ports_of(key) {
            self.grants.port_closed(&name);
        }
        if let Some(left) = self.registry.remove(key) {
            if let Some(gateway) = &mut self.gateway {
                gateway.directs.node_left(left.process_id);
            }
            for link in self.grants.node_left(left.process_id) {
                self.revoke_link(link);
            }
        }
        // Best effort: a node slow to read its control socket is never disconnected for them
        // (its sleep slices notice the death anyway), so they stop at half its queue.
        for (other, link) in orphaned {
            let room = self
                .nodes
                .get(other.0)
                .and_then(Option::as_ref)
                .is_some_and(|n| n.outbox.len() < self.config.max_queued_per_node / 2);
            if room {
                self.queue(other, &ControlMessage::LinkClosed { request: 0, link }, Vec::new());
                self.flush(other);
            }
        }
        let orphaned: Vec<u32> = self
            .queries
            .iter()
            .filter(|(_, q)| q.owner == key || q.requester == key)
            .map(|(id, _)| *id)
            .collect();
        for id in orphaned {
            if let Some(query) = self.queries.remove(&id) {
                if query.requester != key {
                    let detail = "the port's owner left";
                    self.refuse(
                        query.requester,
                        query.request,
                        ControlErrorCode::NoSuchPort,
                        detail,
                    );
                }
            }
        }
        debug_assert!(self.registry.node_count() <= self.nodes.iter().flatten().count());
    }
}

/// One frame the broker writes on a mailbox or topic link: a delivery, a publication (the
/// message's body after an identity and maybe a topic, within the limits announced to
/// senders, §2.8–2.9), a credit, or a short text. A body past `u32::MAX` cannot occur; if it
/// did, the length would make the peer refuse the frame rather than misread it.
fn encode(kind: FrameKind, msg_type: u32, priority: u8, correlation: u64, body: &[u8]) -> Vec<u8> {
    let body_len = u32::try_from(body.len()).unwrap_or(u32::MAX);
    let header = FrameHeader {
        kind,
        priority,
        msg_type,
        id: 0,
        correlation,
        body_len,
        placement: postbox_core::Placement::Inline,
    };
    let mut frame = header.encode(body).to_vec();
    frame.extend_from_slice(body);
    frame
}

/// The broker's identity as the owner of mailboxes: its pid, generation 0 (no node has it).
fn broker_identity() -> PeerIdentity {
    PeerIdentity {
        process_id: postbox_core::ProcessId::new(
            rustix::process::getpid().as_raw_nonzero().get().unsigned_abs(),
            0,
        ),
        uid: rustix::process::getuid().as_raw(),
        gid: rustix::process::getgid().as_raw(),
    }
}

fn refused(request: u32, code: ControlErrorCode, detail: &str) -> Vec<u8> {
    let mut bytes = Vec::new();
    ControlMessage::Refused { request, code, detail: detail.to_owned() }.encode(&mut bytes);
    bytes
}

/// How long a port's owner may take to answer a relayed `Stat`.
const STAT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long the listener rests after `accept` failed.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Packets read from one node before others get a turn (fairness against floods).
const MAX_PACKETS_PER_ROUND: usize = 64;
