//! Mailboxes, topics and inboxes of other hosts (docs/network.md §1, §5): a local node's
//! request for `jobs@b`, `news@b`, `/sensors/*@b` or a remote node's stand-in becomes a
//! channel the gateway opens to the peer; a peer's `Open` of one of this host's mailboxes,
//! topics or nodes is checked against the policy for that host and served here.
//!
//! A mailbox or topic on this host serves a remote node through a link whose one end the
//! mailbox or topic keeps (as for a local node) and whose other end the gateway relays: the
//! mailbox and topic logic does not know the difference, and its semantics (each message to
//! one receiver, persistence, fan-out, flow control) hold across hosts unchanged.

use postbox_core::{
    ControlErrorCode, ControlMessage, ListenTarget, NamePattern, Operation, PeerIdentity, PortName,
    PortSpec, ProcessId, Rights, Target,
};

use super::EventLoop;
use crate::hosts::identity::NodeRef;
use crate::hosts::protocol::{Channel, ChannelKind, HostMessage, OpenTarget, Refusal};
use crate::hosts::{split_remote, HostName, MAX_REMOTE_MESSAGE};
use crate::policy::inbox_name;
use crate::registry::NodeKey;

/// Where a name of the form `name@host` leads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    /// `host` is this host: the name is a local one.
    Here,
    /// `host` is the peer with this index.
    Peer(usize),
}

/// One of the broker's own endpoints, served to a peer's node.
#[derive(Debug)]
pub(super) enum BrokerEndpoint {
    /// Mailbox `0`, to send to.
    MailboxInput(PortName),
    /// Mailbox `0`, to receive from.
    MailboxOutput(PortName),
    /// Topic `0`, to publish to.
    Publisher(PortName),
    /// Topics matching `pattern`, to subscribe to.
    Subscriber { pattern: NamePattern, capacity: u32, drop_newest: bool },
}

impl EventLoop {
    /// True for a request about another host's name (or a remote node's stand-in), which
    /// [`handle_remote`](Self::handle_remote) answers; also for `ResolveProcess`.
    pub(super) fn is_remote_request(&self, message: &ControlMessage) -> bool {
        match message {
            ControlMessage::Connect { target: Target::Port(name), .. } => {
                !self.mailboxes.contains_key(name)
                    && self.registry.port(name).is_none()
                    && self.is_remote(name)
            }
            ControlMessage::Connect { target: Target::Inbox(process), .. } => {
                process.pid == 0 && process.generation != 0 && self.gateway.is_some()
            }
            ControlMessage::ReceiveMailbox { name, .. } => {
                !self.mailboxes.contains_key(name) && self.is_remote(name)
            }
            ControlMessage::Publish { topic, .. } => {
                self.name_kind(topic).is_none() && self.is_remote(topic)
            }
            ControlMessage::Subscribe { pattern, .. } => self.remote_pattern(pattern).is_some(),
            ControlMessage::ResolveProcess { .. } => true,
            _ => false,
        }
    }

    /// Handles a request for which [`is_remote_request`](Self::is_remote_request) holds:
    /// `name@this-host` as the local name, anything else through a channel to the host.
    pub(super) fn handle_remote(&mut self, key: NodeKey, message: ControlMessage) {
        match message {
            ControlMessage::Connect { request, target: Target::Port(name), rights } => {
                self.connect_remote(key, request, &name, rights);
            }
            ControlMessage::Connect { request, target: Target::Inbox(process), rights } => {
                self.connect_remote_inbox(key, request, process, rights);
            }
            ControlMessage::ReceiveMailbox { request, name } => {
                let local = |name| ControlMessage::ReceiveMailbox { request, name };
                let remote = OpenTarget::Mailbox;
                self.open_named(key, request, &name, Operation::Receive, local, remote);
            }
            ControlMessage::Publish { request, topic } => {
                let local = |topic| ControlMessage::Publish { request, topic };
                self.open_named(key, request, &topic, Operation::Send, local, OpenTarget::Publish);
            }
            ControlMessage::Subscribe { request, pattern: text, capacity, drop_newest } => {
                match self.remote_pattern(&text) {
                    Some((pattern, Route::Here)) => {
                        let subscribe =
                            ControlMessage::Subscribe { request, pattern, capacity, drop_newest };
                        self.handle(key, subscribe);
                    }
                    // This host's policy checks the pattern as written, like a name.
                    Some((pattern, Route::Peer(host)))
                        if self.permit(key, request, Operation::Subscribe, &text) =>
                    {
                        let target = OpenTarget::Subscribe { pattern, capacity, drop_newest };
                        let operation = Operation::Subscribe;
                        self.open_remote(
                            key,
                            request,
                            host,
                            (target, Rights::ALL),
                            text,
                            operation,
                        );
                    }
                    _ => {}
                }
            }
            ControlMessage::ResolveProcess { request, host, process } => {
                self.resolve_process(key, request, &host, process);
            }
            _ => {}
        }
    }

    /// A request for mailbox or topic `name@host` (made by `local` from the local name, or
    /// opened as `remote` of it): on this host, the local name's request; on a peer, a channel
    /// there if this host's policy lets the node do `operation` on the whole name.
    fn open_named(
        &mut self,
        key: NodeKey,
        request: u32,
        name: &PortName,
        operation: Operation,
        local: impl FnOnce(PortName) -> ControlMessage,
        remote: impl FnOnce(PortName) -> OpenTarget,
    ) {
        match self.route(name) {
            Some((local_name, Route::Here)) => self.handle(key, local(local_name)),
            Some((remote_name, Route::Peer(host)))
                if self.permit(key, request, operation, name.as_str()) =>
            {
                let target = (remote(remote_name), Rights::ALL);
                self.open_remote(key, request, host, target, name.to_string(), operation);
            }
            _ => {}
        }
    }

    /// `name@host` split, when `host` is this host or a peer.
    fn route(&self, name: &PortName) -> Option<(PortName, Route)> {
        let (local, host) = split_remote(name)?;
        Some((local, self.route_to(host)?))
    }

    /// Where `host` is, when it is this host or a peer.
    fn route_to(&self, host: &str) -> Option<Route> {
        let gateway = self.gateway.as_ref()?;
        if host == gateway.config.name.as_str() {
            return Some(Route::Here);
        }
        gateway.config.peer_index(host).map(Route::Peer)
    }

    /// A subscription pattern `pattern@host` split, when `host` is this host or a peer and
    /// `pattern` is a valid pattern.
    fn remote_pattern(&self, text: &str) -> Option<(String, Route)> {
        let (pattern, host) = text.rsplit_once('@')?;
        HostName::new(host).ok()?;
        NamePattern::parse(pattern).ok()?;
        Some((pattern.to_owned(), self.route_to(host)?))
    }

    /// A `Connect` to the inbox of a remote node's stand-in: opened on the node's host.
    fn connect_remote_inbox(
        &mut self,
        key: NodeKey,
        request: u32,
        process: ProcessId,
        wanted: Rights,
    ) {
        let Some(gateway) = &mut self.gateway else { return };
        let own = gateway.config.name.clone();
        let (host, remote) = match gateway.stand_ins.remote(process) {
            Some(remote) if remote.host == own => (None, remote),
            Some(remote) => (gateway.config.peer_index(remote.host.as_str()), remote),
            None => {
                let detail = format!("no live node {process}");
                return self.refuse(key, request, ControlErrorCode::NoSuchPort, &detail);
            }
        };
        let Some(host) = host else {
            let detail = if remote.host == own {
                format!("no live node {process} (of an earlier run of this host's broker)")
            } else {
                format!("node {process} is on host {}, which this host has no link to", remote.host)
            };
            return self.refuse(key, request, ControlErrorCode::NoSuchPort, &detail);
        };
        // Here, the inbox of a node of another host counts as that of user (uid_t)-1.
        let name = inbox_name(u32::MAX);
        let Some(subject) = self.subject(key) else { return };
        let rights = wanted.intersection(self.config.policy.link_rights(subject, &name));
        let operation =
            if wanted.contains(Rights::SEND) { Operation::Send } else { Operation::Call };
        if rights.is_empty() {
            return self.deny(key, request, operation, &name);
        }
        let target = OpenTarget::Inbox { incarnation: remote.incarnation, process: remote.process };
        let name = format!("inbox of {}@{}", remote.process, remote.host);
        self.open_remote(key, request, host, (target, rights), name, operation);
    }

    /// Answers `ResolveProcess`: the stand-in of node `process` of `host` (the id itself for
    /// this host).
    fn resolve_process(&mut self, key: NodeKey, request: u32, host: &str, process: ProcessId) {
        let route = self.route_to(host);
        let Some(gateway) = &mut self.gateway else {
            let detail = format!("no host named {host} (this broker has no peer hosts)");
            return self.refuse(key, request, ControlErrorCode::NoSuchPort, &detail);
        };
        let resolved = match (route, HostName::new(host)) {
            (Some(Route::Here), _) => process,
            (Some(Route::Peer(_)), Ok(name)) if process.pid != 0 => {
                gateway.stand_ins.stand_in(&name, 0, process)
            }
            (Some(Route::Peer(_)), _) => {
                let detail = format!("{process} is not a node of host {host}");
                return self.refuse(key, request, ControlErrorCode::NoSuchPort, &detail);
            }
            (None, _) => {
                let detail = format!("no host named {host}");
                return self.refuse(key, request, ControlErrorCode::NoSuchPort, &detail);
            }
        };
        self.queue(key, &ControlMessage::Resolved { request, process: resolved }, Vec::new());
    }

    /// The peer's node `client` opens `target` on this host: checked against the policy for
    /// the peer, then served; the peer hears `Opened` or `Refused`.
    pub(super) fn open_for_peer(
        &mut self,
        host: usize,
        channel: Channel,
        target: OpenTarget,
        wanted: Rights,
        client: &NodeRef,
    ) {
        let Some(gateway) = &self.gateway else { return };
        if gateway.channels.contains_key(&(host, channel)) {
            return self.close_channel(host, channel, true);
        }
        let peer = gateway.peers[host].config.name.clone();
        let answer = if client.host.as_ref().is_some_and(|h| *h != peer) {
            // Only a node of the peer itself opens a channel; anything else would let the peer
            // speak for another host's node (or one of this host's).
            let detail = format!("a channel from host {peer} must be opened by a node of {peer}");
            HostMessage::Refused { channel, reason: Refusal::Denied, detail }
        } else {
            let client = self.identity_from(host, client);
            match target {
                OpenTarget::Port(name) => self.port_for_peer(host, channel, &name, wanted, client),
                OpenTarget::Mailbox(name) => self.mailbox_for_peer(host, channel, &name, client),
                OpenTarget::Publish(topic) => self.publisher_for_peer(host, channel, topic, client),
                OpenTarget::Subscribe { pattern, capacity, drop_newest } => {
                    let Ok(pattern) = NamePattern::parse(&pattern) else {
                        let detail = format!("not a topic pattern: {pattern:?}");
                        let reason = Refusal::InvalidName;
                        return self
                            .answer_peer(host, HostMessage::Refused { channel, reason, detail });
                    };
                    if !self.config.policy.allows_host_subscription(peer.as_str(), &pattern) {
                        let detail = format!("host {peer} may not subscribe to {pattern}");
                        let reason = Refusal::Denied;
                        return self
                            .answer_peer(host, HostMessage::Refused { channel, reason, detail });
                    }
                    let endpoint = BrokerEndpoint::Subscriber { pattern, capacity, drop_newest };
                    self.broker_end_for_peer(
                        host,
                        channel,
                        ChannelKind::Subscription,
                        client,
                        endpoint,
                    )
                }
                OpenTarget::Inbox { incarnation, process } => {
                    self.inbox_for_peer(host, channel, (incarnation, process), wanted, client)
                }
            }
        };
        self.answer_peer(host, answer);
    }

    fn answer_peer(&mut self, host: usize, answer: HostMessage) {
        if let Some(gateway) = &mut self.gateway {
            gateway.peers[host].send_or_keep(answer.channel().stream(), answer.encode());
        }
    }

    /// The peer's node receives from mailbox `name`.
    fn mailbox_for_peer(
        &mut self,
        host: usize,
        channel: Channel,
        name: &PortName,
        client: PeerIdentity,
    ) -> HostMessage {
        let peer = self.peer_name(host);
        if !self.mailboxes.contains_key(name) {
            let detail = format!("no mailbox named {name}");
            return HostMessage::Refused { channel, reason: Refusal::NoSuchPort, detail };
        }
        if !self.config.policy.allows_host(&peer, Operation::Receive, name.as_str()) {
            let detail = format!("host {peer} may not receive from {name}");
            return HostMessage::Refused { channel, reason: Refusal::Denied, detail };
        }
        let endpoint = BrokerEndpoint::MailboxOutput(name.clone());
        self.broker_end_for_peer(host, channel, ChannelKind::Mailbox, client, endpoint)
    }

    /// The peer's node publishes to `topic` (created if the policy lets the host manage it).
    fn publisher_for_peer(
        &mut self,
        host: usize,
        channel: Channel,
        topic: PortName,
        client: PeerIdentity,
    ) -> HostMessage {
        let peer = self.peer_name(host);
        let held = self.name_kind(&topic).filter(|kind| *kind != "topic");
        if let Some(kind) = held.or(Self::is_reserved(&topic).then_some("port")) {
            let detail = format!("{topic} is a {kind}");
            return HostMessage::Refused { channel, reason: Refusal::NameTaken, detail };
        }
        let policy = &self.config.policy;
        let allowed = policy.allows_host(&peer, Operation::Send, topic.as_str())
            && (self.topics.contains_key(&topic)
                || policy.allows_host(&peer, Operation::Manage, topic.as_str()));
        if !allowed {
            let detail = format!("host {peer} may not publish to {topic}");
            return HostMessage::Refused { channel, reason: Refusal::Denied, detail };
        }
        let endpoint = BrokerEndpoint::Publisher(topic);
        self.broker_end_for_peer(host, channel, ChannelKind::Port, client, endpoint)
    }

    /// The peer's node sends to the inbox of node `process` of this host (admitted by this
    /// broker's run `incarnation`, or 0 for whichever).
    fn inbox_for_peer(
        &mut self,
        host: usize,
        channel: Channel,
        (incarnation, process): (u64, ProcessId),
        wanted: Rights,
        client: PeerIdentity,
    ) -> HostMessage {
        let peer = self.peer_name(host);
        let this_run =
            self.gateway.as_ref().is_some_and(|g| incarnation == 0 || incarnation == g.incarnation);
        let owner = if this_run { self.registry.node_key(process) } else { None };
        let (Some(owner), Some(server)) = (owner, owner.and_then(|o| self.registry.identity(o)))
        else {
            let detail = format!("no live node {process}");
            return HostMessage::Refused { channel, reason: Refusal::NoSuchPort, detail };
        };
        let name = inbox_name(server.uid);
        let rights = self.config.policy.host_link_rights(&peer, &name).intersection(wanted);
        if rights.is_empty() {
            let detail = format!("host {peer} may not use {name}");
            return HostMessage::Refused { channel, reason: Refusal::Denied, detail };
        }
        let target = (owner, ListenTarget::Inbox, PortSpec::default());
        self.link_for_peer(host, channel, target, rights, client).unwrap_or_else(|detail| {
            HostMessage::Refused { channel, reason: Refusal::LimitExceeded, detail }
        })
    }

    /// Serves the peer's channel with one of the broker's own endpoints, for the peer's node
    /// `client`.
    pub(super) fn broker_end_for_peer(
        &mut self,
        host: usize,
        channel: Channel,
        kind: ChannelKind,
        client: PeerIdentity,
        endpoint: BrokerEndpoint,
    ) -> HostMessage {
        let sender =
            matches!(endpoint, BrokerEndpoint::MailboxInput(_) | BrokerEndpoint::Publisher(_));
        let answer = self.broker_link_for_peer(host, channel, kind, |this, link| match endpoint {
            BrokerEndpoint::MailboxInput(name) => this.attach_mailbox(link, client, &name, true),
            BrokerEndpoint::MailboxOutput(name) => this.attach_mailbox(link, client, &name, false),
            BrokerEndpoint::Publisher(topic) => this.attach_publisher(link, client, topic),
            BrokerEndpoint::Subscriber { pattern, capacity, drop_newest } => {
                this.attach_subscriber(link, client, pattern, capacity, drop_newest)
            }
        });
        match answer {
            Ok(HostMessage::Opened { channel, mut spec, rights, quota, server }) if sender => {
                // What a remote node puts in a mailbox or topic may go on to another host
                // with its sender's name (and topic) before it: there must be room for them.
                let limit = MAX_REMOTE_MESSAGE - REMOTE_ENVELOPE_ROOM;
                spec.message_size = Some(spec.message_size.map_or(limit, |n| n.min(limit)));
                HostMessage::Opened { channel, spec, rights, quota, server }
            }
            Ok(answer) => answer,
            Err(detail) => HostMessage::Refused { channel, reason: Refusal::LimitExceeded, detail },
        }
    }

    fn peer_name(&self, host: usize) -> String {
        self.gateway
            .as_ref()
            .and_then(|g| g.peers.get(host))
            .map_or_else(String::new, |p| p.config.name.to_string())
    }
}

/// Room kept in what a remote node may send to a mailbox or topic here, for the sender's name
/// and the topic that go before it when it crosses to another host again.
const REMOTE_ENVELOPE_ROOM: u32 = 512;
