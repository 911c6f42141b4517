//! Access checks of the event loop: the policy asked with the node's kernel credentials (or,
//! for a node attached over TCP, its principal), capabilities granted and revoked, denials
//! answered and logged, policies replaced live.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use postbox_core::{
    ControlErrorCode, ControlMessage, LinkId, NamePattern, Operation, PortName, ProcessId, Rights,
    Target,
};
use postbox_transport::Waker;

use super::EventLoop;
use crate::policy::{inbox_name, Subject};
use crate::registry::NodeKey;
use crate::Policy;

/// Replaces a running broker's policy (for `SIGHUP`): cheap to clone, usable from any thread.
#[derive(Debug, Clone)]
pub struct PolicyReloader {
    pub(super) pending: Arc<Mutex<Option<Policy>>>,
    pub(super) waker: Arc<Waker>,
}

impl PolicyReloader {
    /// Hands the broker a new policy; it applies it to every request from its next round on.
    /// Links and ports that exist stay; the new limits apply to what nodes open next.
    pub fn reload(&self, policy: Policy) {
        *self.pending.lock().unwrap_or_else(PoisonError::into_inner) = Some(policy);
        self.waker.wake();
    }
}

/// Denials logged one by one each second; beyond, they are counted.
pub(super) const DENIALS_LOGGED_PER_SECOND: u32 = 100;

/// Who asks, as the policy knows it.
#[derive(Debug, Clone)]
pub(super) enum Asker {
    /// A local node: the kernel credentials of its control socket.
    Local(Subject),
    /// A node attached over TCP: the principal it proved.
    Remote(Arc<str>),
}

impl Asker {
    pub(super) fn allows(&self, policy: &Policy, operation: Operation, name: &str) -> bool {
        match self {
            Self::Local(subject) => policy.allows(*subject, operation, name),
            Self::Remote(principal) => policy.allows_remote(principal, operation, name),
        }
    }

    pub(super) fn allows_subscription(&self, policy: &Policy, pattern: &NamePattern) -> bool {
        match self {
            Self::Local(subject) => policy.allows_subscription(*subject, pattern),
            Self::Remote(principal) => policy.allows_remote_subscription(principal, pattern),
        }
    }

    pub(super) fn link_rights(&self, policy: &Policy, name: &str) -> Rights {
        match self {
            Self::Local(subject) => policy.link_rights(*subject, name),
            Self::Remote(principal) => policy.remote_link_rights(principal, name),
        }
    }
}

/// What a connect may carry, and whether it needs a grant beyond the policy.
pub(super) struct ConnectRights {
    pub(super) rights: Rights,
    pub(super) by_grant: Option<PortName>,
}

impl EventLoop {
    /// Who node `key` is to the policy: its kernel credentials, or its principal.
    pub(super) fn subject(&self, key: NodeKey) -> Option<Asker> {
        let node = self.nodes.get(key.0)?.as_ref()?;
        Some(match &node.remote {
            Some(remote) => Asker::Remote(Arc::clone(&remote.principal)),
            None => Asker::Local(Subject { uid: node.credentials.uid, gid: node.credentials.gid }),
        })
    }

    /// True when node `key` may do `operation` on `name`; otherwise answers `request` with
    /// [`ControlMessage::Denied`] and logs the denial.
    pub(super) fn permit(
        &mut self,
        key: NodeKey,
        request: u32,
        operation: Operation,
        name: &str,
    ) -> bool {
        let allowed =
            self.subject(key).is_some_and(|s| s.allows(&self.config.policy, operation, name));
        if !allowed {
            self.deny(key, request, operation, name);
        }
        allowed
    }

    /// True when node `key` may subscribe to `pattern`; otherwise denies as [`permit`] does.
    ///
    /// [`permit`]: Self::permit
    pub(super) fn permit_subscription(
        &mut self,
        key: NodeKey,
        request: u32,
        pattern: &str,
    ) -> bool {
        let allowed = NamePattern::parse(pattern).is_ok_and(|parsed| {
            self.subject(key).is_some_and(|s| s.allows_subscription(&self.config.policy, &parsed))
        });
        if !allowed {
            self.deny(key, request, Operation::Subscribe, pattern);
        }
        allowed
    }

    /// Answers `request` with a denial and logs it.
    pub(super) fn deny(&mut self, key: NodeKey, request: u32, operation: Operation, name: &str) {
        let node = self.nodes.get(key.0).and_then(Option::as_ref);
        if let Some(node) = node.filter(|_| self.denial_log.admit(Instant::now())) {
            let c = node.credentials;
            match &node.remote {
                Some(remote) => tracing::warn!(
                    remote_node = &*remote.principal,
                    address = %remote.address,
                    operation = operation.as_str(),
                    name,
                    "access denied"
                ),
                None => tracing::warn!(
                    uid = c.uid,
                    gid = c.gid,
                    pid = c.pid,
                    operation = operation.as_str(),
                    name,
                    "access denied"
                ),
            }
        }
        let denied = ControlMessage::Denied { request, operation, name: name.to_owned() };
        self.queue(key, &denied, Vec::new());
    }

    /// The rights node `key` gets on a new link to `target` out of those it `wanted`, from the
    /// policy and its grants; `None` (after answering with a denial) when that is nothing. A
    /// target that does not exist is left to the registry to refuse.
    pub(super) fn connect_rights(
        &mut self,
        key: NodeKey,
        request: u32,
        target: &Target,
        wanted: Rights,
    ) -> Option<ConnectRights> {
        let subject = self.subject(key)?;
        let client = self.registry.identity(key)?.process_id;
        let policy = &self.config.policy;
        let (name, from_policy, from_grant, port) = match target {
            Target::Port(name) => {
                let owner = self.registry.port(name).map(|(owner, ..)| owner);
                let own = owner == Some(key);
                let from_policy =
                    if own { Rights::ALL } else { subject.link_rights(policy, name.as_str()) };
                let from_grant = self.grants.rights(name, client);
                (name.as_str().to_owned(), from_policy, from_grant, Some(name.clone()))
            }
            Target::Inbox(process) => match self.registry.node_identity(*process) {
                Some(server) => {
                    let name = inbox_name(server.uid);
                    let from_policy = subject.link_rights(policy, &name);
                    (name, from_policy, Rights::NONE, None)
                }
                None => return Some(ConnectRights { rights: wanted, by_grant: None }),
            },
        };
        let rights = wanted.intersection(from_policy.union(from_grant));
        if rights.is_empty() {
            let operation =
                if wanted.contains(Rights::SEND) { Operation::Send } else { Operation::Call };
            self.deny(key, request, operation, &name);
            return None;
        }
        let by_grant = port.filter(|_| !from_policy.contains(rights));
        Some(ConnectRights { rights, by_grant })
    }

    /// Handles [`ControlMessage::Grant`]: the port's owner may grant anything; another node
    /// only rights it holds itself (by policy or by an earlier grant).
    pub(super) fn grant(
        &mut self,
        key: NodeKey,
        request: u32,
        name: PortName,
        to: ProcessId,
        rights: Rights,
    ) {
        let (Some(subject), Some(granter)) = (self.subject(key), self.registry.identity(key))
        else {
            return;
        };
        let Some((owner, ..)) = self.registry.port(&name) else {
            let detail = format!("no port named {name}");
            return self.refuse(key, request, ControlErrorCode::NoSuchPort, &detail);
        };
        if self.registry.node_identity(to).is_none() {
            let detail = format!("no live node {to}");
            return self.refuse(key, request, ControlErrorCode::NoSuchPort, &detail);
        }
        let held = if owner == key {
            Rights::ALL
        } else {
            subject
                .link_rights(&self.config.policy, name.as_str())
                .union(self.grants.rights(&name, granter.process_id))
        };
        if rights.is_empty() || !held.contains(rights) {
            let operation =
                if rights.contains(Rights::SEND) { Operation::Send } else { Operation::Call };
            return self.deny(key, request, operation, name.as_str());
        }
        self.grants.grant(name, to, rights, granter.process_id);
        self.queue(key, &ControlMessage::Ok { request }, Vec::new());
    }

    /// Handles [`ControlMessage::Revoke`]: ends the grant and closes the links made under it:
    /// both ends hear `LinkRevoked` and shut their ends down. The serving end is the port
    /// owner's, which is what cuts a client that ignores the notice. Each end still counts
    /// against its node until that node reports it closed.
    pub(super) fn revoke(&mut self, key: NodeKey, request: u32, name: &PortName, from: ProcessId) {
        let Some(by) = self.registry.identity(key) else { return };
        let by_owner = self.registry.port(name).is_some_and(|(owner, ..)| owner == key);
        let Some(links) = self.grants.revoke(name, from, by.process_id, by_owner) else {
            let detail = format!("no grant on {name} to {from} that this node may revoke");
            return self.refuse(key, request, ControlErrorCode::NotOwner, &detail);
        };
        for link in links {
            self.revoke_link(link);
        }
        self.queue(key, &ControlMessage::Ok { request }, Vec::new());
    }

    /// Tells both ends of `link` that the grant it was made under ended.
    pub(super) fn revoke_link(&mut self, link: LinkId) {
        for end in self.registry.link_ends(link) {
            self.queue(end, &ControlMessage::LinkRevoked { link }, Vec::new());
        }
    }

    /// True when node `key` may open one more link to a mailbox, a topic or another host:
    /// its links to nodes and to the broker, and its remote opens still waiting for an answer,
    /// together stay within its `connections` quota. Otherwise refuses.
    pub(super) fn has_link_room(&mut self, key: NodeKey, request: u32) -> bool {
        let Some(node) = self.registry.identity(key).map(|i| i.process_id) else { return false };
        let limit = self.config.policy.limits().connections;
        let to_broker = self.data.iter().flatten().filter(|l| l.peer.process_id == node).count()
            + self.topic_links.iter().flatten().filter(|l| l.peer.process_id == node).count()
            + self.relays.iter().flatten().filter(|r| r.client == Some(node)).count()
            + self.gateway.as_ref().map_or(0, |g| g.opens_of(node) + g.directs.links_of(node));
        if self.registry.links_of(key) + to_broker < limit {
            return true;
        }
        let detail = format!("a node may have at most {limit} links");
        self.refuse(key, request, ControlErrorCode::LimitExceeded, &detail);
        false
    }

    /// Takes a policy handed over by a [`PolicyReloader`], if any.
    pub(super) fn apply_pending_policy(&mut self) {
        self.reload_waker.reset();
        let pending = self.pending_policy.lock().unwrap_or_else(PoisonError::into_inner).take();
        if let Some(policy) = pending {
            if policy.socket_group() != self.config.policy.socket_group() {
                tracing::warn!(
                    "the socket group is set when the broker starts; restart to change it"
                );
            }
            self.registry.set_limits(policy.limits());
            self.config.policy = policy;
            tracing::info!("policy reloaded");
        }
    }
}
