//! What this host opens for a peer's nodes (docs/network.md §3, §5): a peer's `Open` of one
//! of this host's ports, mailboxes, topics or nodes' inboxes, checked against the policy for
//! that host (existence first, as for the broker's own user locally), then served.
//!
//! A port or inbox gets a link made as for a local client, with the broker as the client.
//! A mailbox or topic serves the remote node through a link whose one end the mailbox or topic
//! keeps (as for a local node) and whose other end the gateway relays: the mailbox and topic
//! logic does not know the difference, and its semantics (each message to one receiver,
//! persistence, fan-out, flow control) hold across hosts unchanged.

use postbox_core::{
    ControlMessage, Delivery, ListenTarget, NamePattern, Operation, PeerIdentity, PortName,
    PortSpec, ProcessId, Rights,
};
use postbox_transport::UnixLink;

use super::datagrams::{client_spec, DatagramRelay};
use super::gateway::remote_spec;
use super::EventLoop;
use crate::hosts::identity::NodeRef;
use crate::hosts::protocol::{Channel, ChannelKind, HostMessage, OpenTarget, Refusal};
use crate::hosts::MAX_REMOTE_MESSAGE;
use crate::policy::inbox_name;
use crate::registry::NodeKey;

/// One of the broker's own endpoints, served to a peer's node.
#[derive(Debug)]
enum BrokerEndpoint {
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
    /// The peer's node `client` opens `target` on this host: checked against the policy for
    /// the peer, then served; the peer hears `Opened` or `Refused`.
    pub(super) fn open_for_peer(
        &mut self,
        host: usize,
        channel: Channel,
        (target, direct): (OpenTarget, bool),
        wanted: Rights,
        client: &NodeRef,
    ) {
        let Some(gateway) = &self.gateway else { return };
        if gateway.channels.contains_key(&(host, channel)) {
            return self.close_channel(host, channel, true);
        }
        let peer = gateway.peers[host].config.name.clone();
        let limit = self.config.policy.limits().channels_per_host;
        let answer = if gateway.opened_by_peer(host) >= limit {
            // Each channel costs a link pair, a relay and what they buffer: a peer, all its
            // nodes together, is held to a quota as a node is.
            let detail = format!("host {peer} may have at most {limit} channels open here");
            HostMessage::Refused { channel, reason: Refusal::LimitExceeded, detail }
        } else if client.host.as_ref().is_some_and(|h| *h != peer) {
            // Only a node of the peer itself opens a channel; anything else would let the peer
            // speak for another host's node (or one of this host's).
            let detail = format!("a channel from host {peer} must be opened by a node of {peer}");
            HostMessage::Refused { channel, reason: Refusal::Denied, detail }
        } else {
            let client = self.identity_from(host, client);
            match target {
                OpenTarget::Port(name) => {
                    self.port_for_peer(host, channel, (&name, direct), wanted, client)
                }
                OpenTarget::Mailbox(name) => self.mailbox_for_peer(host, channel, &name, client),
                OpenTarget::Publish(topic) => self.publisher_for_peer(host, channel, topic, client),
                OpenTarget::Subscribe { pattern, capacity, drop_newest } => {
                    let queue = (capacity, drop_newest);
                    self.subscriber_for_peer(host, channel, &pattern, queue, client)
                }
                OpenTarget::Inbox { incarnation, process } => {
                    self.inbox_for_peer(host, channel, (incarnation, process), wanted, client)
                }
            }
        };
        self.answer_peer(host, answer);
    }

    fn answer_peer(&mut self, host: usize, answer: HostMessage) {
        let (Some(gateway), Some(channel)) = (&mut self.gateway, answer.channel()) else { return };
        gateway.peers[host].send_or_keep(channel.stream(), answer.encode());
    }

    /// The peer's node subscribes to `pattern`, with a queue here of `capacity` that drops
    /// the oldest (or with `drop_newest` the newest) beyond.
    fn subscriber_for_peer(
        &mut self,
        host: usize,
        channel: Channel,
        pattern: &str,
        (capacity, drop_newest): (u32, bool),
        client: PeerIdentity,
    ) -> HostMessage {
        let peer = self.peer_name(host);
        let Ok(pattern) = NamePattern::parse(pattern) else {
            let detail = format!("not a topic pattern: {pattern:?}");
            return HostMessage::Refused { channel, reason: Refusal::InvalidName, detail };
        };
        if !self.config.policy.allows_host_subscription(&peer, &pattern) {
            let detail = format!("host {peer} may not subscribe to {pattern}");
            return HostMessage::Refused { channel, reason: Refusal::Denied, detail };
        }
        let endpoint = BrokerEndpoint::Subscriber { pattern, capacity, drop_newest };
        self.broker_end_for_peer(host, channel, ChannelKind::Subscription, client, endpoint)
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
        let this_run = self
            .gateway
            .as_ref()
            .is_some_and(|g| incarnation == 0 || incarnation == g.stand_ins.incarnation());
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
    /// `client`: a link whose one end the mailbox or topic keeps and whose other end the
    /// gateway relays.
    fn broker_end_for_peer(
        &mut self,
        host: usize,
        channel: Channel,
        kind: ChannelKind,
        client: PeerIdentity,
        endpoint: BrokerEndpoint,
    ) -> HostMessage {
        let (ours, theirs) = match UnixLink::pair() {
            Ok(pair) => pair,
            Err(error) => {
                let detail = format!("cannot create the link: {error}");
                return HostMessage::Refused { channel, reason: Refusal::LimitExceeded, detail };
            }
        };
        let sender =
            matches!(endpoint, BrokerEndpoint::MailboxInput(_) | BrokerEndpoint::Publisher(_));
        let spec = match endpoint {
            BrokerEndpoint::MailboxInput(name) => self.attach_mailbox(theirs, client, &name, true),
            BrokerEndpoint::MailboxOutput(name) => {
                self.attach_mailbox(theirs, client, &name, false)
            }
            BrokerEndpoint::Publisher(topic) => self.attach_publisher(theirs, client, topic),
            BrokerEndpoint::Subscriber { pattern, capacity, drop_newest } => {
                self.attach_subscriber(theirs, client, pattern, capacity, drop_newest)
            }
        };
        let max = self.config.max_message_size;
        self.relay_for_peer((host, channel), ours, (kind, max), None);
        let mut spec = remote_spec(spec, max);
        if sender {
            // What a remote node puts in a mailbox or topic may go on to another host with
            // its sender's name (and topic) before it: there must be room for them.
            let limit = MAX_REMOTE_MESSAGE - REMOTE_ENVELOPE_ROOM;
            spec.message_size = Some(spec.message_size.map_or(limit, |n| n.min(limit)));
        }
        let quota = self.config.policy.quota();
        let Some(gateway) = &self.gateway else {
            return HostMessage::Close { channel, last: None };
        };
        let server = gateway.stand_ins.node_ref(self.identity.process_id);
        HostMessage::Opened { channel, spec, rights: Rights::ALL, quota, server }
    }

    /// The peer's node connects to this host's port `port` (or to mailbox `port`, to send to
    /// it): checked against the policy for that host, then made like any connection, with the
    /// broker as the client. The answer for the peer.
    fn port_for_peer(
        &mut self,
        host: usize,
        channel: Channel,
        (port, direct): (&PortName, bool),
        wanted: Rights,
        client: PeerIdentity,
    ) -> HostMessage {
        let host_name = self.peer_name(host);
        let refuse = |reason, detail: String| HostMessage::Refused { channel, reason, detail };
        let policy = &self.config.policy;
        let rights = policy.host_link_rights(&host_name, port.as_str()).intersection(wanted);
        // Existence first, as for the broker's own user locally: a caller learns that a name
        // is wrong before whether it may use it.
        if Self::is_reserved(port) {
            return refuse(Refusal::NoSuchPort, format!("no port named {port}"));
        }
        let Some((owner, _, spec)) = self.registry.port(port) else {
            if self.mailboxes.contains_key(port) {
                // A mailbox takes one-way messages from anyone allowed to send to it.
                if !policy.allows_host(&host_name, Operation::Send, port.as_str()) {
                    return refuse(Refusal::Denied, format!("host {host_name} may not use {port}"));
                }
                let endpoint = BrokerEndpoint::MailboxInput(port.clone());
                return self.broker_end_for_peer(
                    host,
                    channel,
                    ChannelKind::Port,
                    client,
                    endpoint,
                );
            }
            let detail = match self.name_kind(port) {
                Some(kind) => format!("{port} is a {kind}; publish to it or subscribe to it"),
                None => format!("no port named {port}"),
            };
            return refuse(Refusal::NoSuchPort, detail);
        };
        if rights.is_empty() {
            return refuse(Refusal::Denied, format!("host {host_name} may not use {port}"));
        }
        if direct && spec.delivery != Delivery::Datagrams {
            if !self.has_room(owner) {
                let detail = "the serving node is not reading its control socket".to_owned();
                return refuse(Refusal::LimitExceeded, detail);
            }
            let mut spec = remote_spec(spec, self.config.max_message_size);
            spec.delivery = Delivery::Reliable;
            let offer = (spec, rights, client);
            if let Some(answer) = self.offer_direct(host, channel, (owner, port), offer) {
                return answer;
            }
        }
        let target = ListenTarget::Port(port.clone());
        self.link_for_peer(host, channel, (owner, target, spec), rights, client)
            .unwrap_or_else(|detail| refuse(Refusal::LimitExceeded, detail))
    }

    /// Makes the link from the broker (as the peer node's stand-in `client`) to `owner`'s
    /// port or inbox (`target`, buffering as `spec`); the answer for the peer, or why not. A
    /// datagram port's channel takes the peer's datagrams into the link within the port's
    /// window (`datagrams.rs`).
    fn link_for_peer(
        &mut self,
        host: usize,
        channel: Channel,
        (owner, target, spec): (NodeKey, ListenTarget, PortSpec),
        rights: Rights,
        client: PeerIdentity,
    ) -> Result<HostMessage, String> {
        if !self.has_room(owner) {
            return Err("the serving node is not reading its control socket".into());
        }
        let server = self.registry.identity(owner).ok_or("the node left")?.process_id;
        let (ours, theirs) =
            UnixLink::pair().map_err(|e| format!("cannot create the link: {e}"))?;
        let datagrams =
            matches!(target, ListenTarget::Port(_)) && spec.delivery == Delivery::Datagrams;
        let relay = datagrams.then(|| DatagramRelay::receiving(&spec));
        let mut spec = remote_spec(spec, self.config.max_message_size);
        if datagrams {
            spec = client_spec(spec);
        } else {
            spec.delivery = Delivery::Reliable;
        }
        let link = self.registry.allocate_link_id();
        let quota = self.config.policy.quota();
        let incoming = ControlMessage::IncomingConnection { link, target, client, rights, quota };
        self.queue(owner, &incoming, vec![theirs.into_fd()]);
        self.flush(owner);
        let max_body = spec.message_size.unwrap_or(MAX_REMOTE_MESSAGE);
        self.relay_for_peer((host, channel), ours, (ChannelKind::Port, max_body), relay);
        let server = self.gateway.as_ref().ok_or("no gateway")?.stand_ins.node_ref(server);
        Ok(HostMessage::Opened { channel, spec, rights, quota, server })
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
