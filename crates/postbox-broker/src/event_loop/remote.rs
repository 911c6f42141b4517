//! Mailboxes, topics and inboxes of other hosts, as this host's nodes use them
//! (docs/network.md §1, §5): a request for `jobs@b`, `news@b`, `/sensors/*@b` or for the
//! inbox of a remote node's stand-in becomes a channel the gateway opens to the peer
//! (`peer_opens.rs` is the peer's side); `pid.generation@host` resolves to a stand-in; and
//! nodes of other hosts named by a peer get their identities here.

use postbox_core::wire::frame::HEADER_LEN;
use postbox_core::{
    ControlErrorCode, ControlMessage, NamePattern, Operation, PeerIdentity, PortName, ProcessId,
    Rights, Target,
};

use super::gateway::frame_at_start;
use super::EventLoop;
use crate::hosts::identity::{self, NodeRef};
use crate::hosts::protocol::{ChannelKind, OpenTarget};
use crate::hosts::{split_remote, HostName};
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
            // A node here with pid 0 (attached over TCP) is not a stand-in: their ids come
            // from one allocator, so a live node's id is never a stand-in's.
            ControlMessage::Connect { target: Target::Inbox(process), .. } => {
                process.pid == 0
                    && process.generation != 0
                    && self.gateway.is_some()
                    && self.registry.node_key(*process).is_none()
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
                    Some((pattern, Route::Peer(host)))
                        if self.permit_remote_subscription(key, request, &text) =>
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

    /// True when node `key` may subscribe to `text` (`pattern@host`): this host's policy must
    /// cover every topic it can bring, `topic@host`, as for a local subscription (a wildcard
    /// only under a rule's wildcard at least as wide). Otherwise denies as
    /// [`permit`](Self::permit) does.
    fn permit_remote_subscription(&mut self, key: NodeKey, request: u32, text: &str) -> bool {
        let allowed = names_brought(text).is_some_and(|names| {
            self.subject(key).is_some_and(|s| s.allows_subscription(&self.config.policy, &names))
        });
        if !allowed {
            self.deny(key, request, Operation::Subscribe, text);
        }
        allowed
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
        let rights = wanted.intersection(subject.link_rights(&self.config.policy, &name));
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
    /// this host), for the run of the host's broker it last told.
    fn resolve_process(&mut self, key: NodeKey, request: u32, host: &str, process: ProcessId) {
        let route = self.route_to(host);
        let Some(gateway) = &mut self.gateway else {
            let detail = format!("no host named {host} (this broker has no peer hosts)");
            return self.refuse(key, request, ControlErrorCode::NoSuchPort, &detail);
        };
        let resolved = match (route, HostName::new(host)) {
            (Some(Route::Here), _) => process,
            (Some(Route::Peer(index)), Ok(name)) if process.pid != 0 => {
                let run = gateway.peer_run(index);
                let ids = self.registry.pid_zero_ids();
                gateway.stand_ins.named_stand_in(ids, &name, run, process)
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

    /// Who node `node` (named by peer `host`) is here: a node of this host's current run
    /// under its own process id, any other under its stand-in. Never with a local node's user
    /// and group: a peer's word is not the kernel's, so every node a peer names gets the user
    /// and group no local account has (docs/network.md §5).
    pub(super) fn identity_from(&mut self, host: usize, node: &NodeRef) -> PeerIdentity {
        let Some(gateway) = &mut self.gateway else {
            return identity::stand_in_identity(ProcessId::new(0, 0));
        };
        let Some(peer) = gateway.peers.get(host) else {
            return identity::stand_in_identity(ProcessId::new(0, 0));
        };
        let name = node.host.clone().unwrap_or_else(|| peer.config.name.clone());
        // A node of this host only with this run's incarnation: 0 ("whichever run") would let
        // an id of an earlier run, or any id at all, pass for a live node. An id `0.<n>` is
        // one of this host's nodes only while a node attached over TCP has it (otherwise it
        // would be a stand-in, which a peer never names as this host's).
        let this_run = node.incarnation == gateway.stand_ins.incarnation();
        let local = node.process.pid != 0 || self.registry.node_key(node.process).is_some();
        if name == gateway.config.name && this_run && local {
            return identity::stand_in_identity(node.process);
        }
        let ids = self.registry.pid_zero_ids();
        let stand_in = gateway.stand_ins.stand_in(ids, &name, node.incarnation, node.process);
        identity::stand_in_identity(stand_in)
    }

    /// Checked frames of a mailbox's or a topic's channel from `host`, with the sender of each
    /// delivery or publication named as nodes here know it (and a publication's topic as
    /// `topic@host`); `None` when one names its sender wrongly.
    pub(super) fn senders_named_here(
        &mut self,
        host: usize,
        kind: ChannelKind,
        mut frames: &[u8],
    ) -> Option<Vec<u8>> {
        let host_name = self.gateway.as_ref()?.peers.get(host)?.config.name.clone();
        let mut out = Vec::with_capacity(frames.len() + 64);
        while !frames.is_empty() {
            let (header, len) = frame_at_start(frames, u32::MAX)?;
            let body = &frames[HEADER_LEN..len];
            if identity::names_sender(kind, header.kind) {
                let (node, rest) = identity::split_node_ref(body).ok()?;
                let sender = self.identity_from(host, &node);
                let body = if kind == ChannelKind::Subscription {
                    identity::with_identity(
                        sender,
                        &identity::qualify_topic(rest, &host_name).ok()?,
                    )
                } else {
                    identity::with_identity(sender, rest)
                };
                identity::push_frame(&mut out, header, &body);
            } else {
                out.extend_from_slice(&frames[..len]);
            }
            frames = &frames[len..];
        }
        Some(out)
    }
}

/// The topic names a subscription to `text` (`pattern@host`) brings, as a pattern: the
/// pattern with `@host` after its last segment when that is a name (`news@b`,
/// `/sensors/imu@b`); a final wildcard stays as it is (its topics `x@host` are exactly what a
/// rule's wildcard there matches, and a rule's name never matches them all).
fn names_brought(text: &str) -> Option<NamePattern> {
    let (pattern, _) = text.rsplit_once('@')?;
    let last = pattern.rsplit('/').next()?;
    let names = if last == "*" || last == "**" { pattern } else { text };
    NamePattern::parse(names).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn covered(rule: &str, subscription: &str) -> bool {
        let names = names_brought(subscription).unwrap();
        NamePattern::parse(rule).unwrap().covers(&names)
    }

    #[test]
    fn a_remote_subscription_is_covered_only_by_rules_for_every_topic_it_brings() {
        assert!(covered("/sensors/*", "/sensors/*@b"));
        assert!(covered("/sensors/**", "/sensors/*@b"));
        assert!(covered("/sensors/**", "/sensors/**@b"));
        assert!(!covered("/sensors/*", "/sensors/**@b"), "one level does not cover all below");
        assert!(covered("news@b", "news@b"));
        assert!(covered("*", "news@b"));
        assert!(!covered("news", "news@b"), "a's rule for news is not one for b's news");
        assert!(!covered("/sensors/imu@b", "/sensors/*@b"));
        assert!(covered("/sensors/*", "/sensors/imu@b"));
        assert!(names_brought("/sensors/*").is_none(), "no host");
    }
}
