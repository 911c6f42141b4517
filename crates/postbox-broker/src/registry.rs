//! The broker's bookkeeping: admitted nodes, port names, and the links between them.
//!
//! Pure logic (no sockets), so every rule is unit-tested: a name held by a live node cannot be
//! taken; a removed node's names and links are released at once.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use postbox_core::{
    ControlErrorCode, EndpointKind, LinkId, ListenTarget, PeerIdentity, PortEntry, PortName,
    PortSpec, ProcessId, Rights, Target,
};

use crate::Limits;

/// A node's slot in the event loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct NodeKey(pub(crate) usize);

#[derive(Debug)]
struct NodeRecord {
    identity: PeerIdentity,
    ports: BTreeSet<PortName>,
    links: BTreeSet<LinkId>,
}

/// A link, open at both ends until each end reports it closed (or its node leaves): a node's
/// link limit counts the link ends it still holds, whatever the other end did.
#[derive(Debug, Clone)]
struct LinkRecord {
    client: NodeKey,
    server: NodeKey,
    target: ListenTarget,
    client_open: bool,
    server_open: bool,
}

/// What a successful connect asks the event loop to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct NewLink {
    pub(crate) link: LinkId,
    pub(crate) server: NodeKey,
    pub(crate) server_identity: PeerIdentity,
    pub(crate) client_identity: PeerIdentity,
    pub(crate) target: ListenTarget,
    pub(crate) spec: PortSpec,
    pub(crate) rights: Rights,
}

/// Refusal with a code and a detail for the node.
pub(crate) type Refusal = (ControlErrorCode, String);

/// The one allocator of process ids `0.<n>` (pid 0: no process of this host behind the id).
/// Two kinds of nodes get them, and from here only, so that no id ever names both: nodes
/// attached over TCP (and any node whose pid the kernel reports as 0, one in another pid
/// namespace), admitted by the [`Registry`]; and the stand-ins of nodes of other hosts
/// (`hosts::identity::StandIns`). Generation 0 is never given (`0.0` names the broker itself);
/// generations go up and are not reused before the counter wraps, and then never one that is
/// still taken.
#[derive(Debug)]
pub(crate) struct PidZeroIds {
    next: u32,
    taken: HashSet<u32>,
}

impl PidZeroIds {
    pub(crate) fn new() -> Self {
        Self { next: 1, taken: HashSet::new() }
    }

    /// A generation no node and no stand-in has; taken until [`release`](Self::release)d.
    pub(crate) fn allocate(&mut self) -> u32 {
        loop {
            let generation = self.next;
            self.next = self.next.wrapping_add(1).max(1);
            if self.taken.insert(generation) {
                return generation;
            }
        }
    }

    /// Gives `generation` back (its node left, its stand-in was forgotten).
    pub(crate) fn release(&mut self, generation: u32) {
        self.taken.remove(&generation);
    }

    /// Generations taken.
    #[cfg(test)]
    pub(crate) fn taken(&self) -> usize {
        self.taken.len()
    }
}

#[derive(Debug)]
pub(crate) struct Registry {
    max_ports: usize,
    max_links: usize,
    max_links_per_peer: usize,
    next_generation: u32,
    /// Generations of the ids `0.<n>`: nodes with pid 0 and other hosts' nodes' stand-ins.
    pid_zero: PidZeroIds,
    next_link: u64,
    nodes: HashMap<NodeKey, NodeRecord>,
    by_process: HashMap<ProcessId, NodeKey>,
    ports: BTreeMap<PortName, NodeKey>,
    /// How each port buffers, told to its clients.
    specs: HashMap<PortName, PortSpec>,
    /// Ports served by typed services.
    services: HashSet<PortName>,
    links: HashMap<LinkId, LinkRecord>,
    /// Links open at both ends, per (serving node, port): what `ls` shows as connections.
    connections: HashMap<(NodeKey, PortName), u32>,
}

impl Registry {
    pub(crate) fn new(limits: Limits) -> Self {
        Self {
            max_ports: limits.ports,
            max_links: limits.connections,
            max_links_per_peer: limits.links_per_peer,
            next_generation: 1,
            pid_zero: PidZeroIds::new(),
            next_link: 1,
            nodes: HashMap::new(),
            by_process: HashMap::new(),
            ports: BTreeMap::new(),
            specs: HashMap::new(),
            services: HashSet::new(),
            links: HashMap::new(),
            connections: HashMap::new(),
        }
    }

    /// Admits a node under its kernel credentials and assigns its process id. A node with
    /// pid 0 (attached over TCP: no process here) gets its generation from the allocator it
    /// shares with the stand-ins of other hosts' nodes ([`PidZeroIds`]).
    pub(crate) fn admit(&mut self, key: NodeKey, pid: u32, uid: u32, gid: u32) -> PeerIdentity {
        if pid == 0 {
            let process_id = ProcessId::new(0, self.pid_zero.allocate());
            return self.insert_node(key, PeerIdentity { process_id, uid, gid });
        }
        // Generations wrap after 2³² admissions: skip any still in use with this pid.
        let mut process_id = ProcessId::new(pid, self.next_generation);
        self.next_generation = self.next_generation.wrapping_add(1).max(1);
        while self.by_process.contains_key(&process_id) {
            process_id = ProcessId::new(pid, self.next_generation);
            self.next_generation = self.next_generation.wrapping_add(1).max(1);
        }
        self.insert_node(key, PeerIdentity { process_id, uid, gid })
    }

    fn insert_node(&mut self, key: NodeKey, identity: PeerIdentity) -> PeerIdentity {
        self.nodes
            .insert(key, NodeRecord { identity, ports: BTreeSet::new(), links: BTreeSet::new() });
        self.by_process.insert(identity.process_id, key);
        identity
    }

    /// The allocator of ids `0.<n>`, for the stand-ins of other hosts' nodes.
    pub(crate) fn pid_zero_ids(&mut self) -> &mut PidZeroIds {
        &mut self.pid_zero
    }

    /// Applies new limits to what nodes do from now on (what they hold already stays).
    pub(crate) fn set_limits(&mut self, limits: Limits) {
        self.max_ports = limits.ports;
        self.max_links = limits.connections;
        self.max_links_per_peer = limits.links_per_peer;
    }

    /// The slot of the live node with process id `process`.
    pub(crate) fn node_key(&self, process: ProcessId) -> Option<NodeKey> {
        self.by_process.get(&process).copied()
    }

    /// The identity of the live node with process id `process`.
    pub(crate) fn node_identity(&self, process: ProcessId) -> Option<PeerIdentity> {
        self.nodes.get(self.by_process.get(&process)?).map(|n| n.identity)
    }

    pub(crate) fn is_admitted(&self, key: NodeKey) -> bool {
        self.nodes.contains_key(&key)
    }

    pub(crate) fn open_port(
        &mut self,
        key: NodeKey,
        name: PortName,
        spec: PortSpec,
    ) -> Result<(), Refusal> {
        let node = self.nodes.get_mut(&key).ok_or_else(not_admitted)?;
        if let Some(owner) = self.ports.get(&name) {
            let detail = if *owner == key {
                format!("port {name} is already open in this node")
            } else {
                format!("port {name} is held by another live node")
            };
            return Err((ControlErrorCode::NameTaken, detail));
        }
        if node.ports.len() >= self.max_ports {
            let detail = format!("a node may hold at most {} ports", self.max_ports);
            return Err((ControlErrorCode::LimitExceeded, detail));
        }
        node.ports.insert(name.clone());
        self.specs.insert(name.clone(), spec);
        self.ports.insert(name, key);
        Ok(())
    }

    /// Lists open port `name` as a typed service's.
    pub(crate) fn mark_service(&mut self, name: &PortName) {
        if self.ports.contains_key(name) {
            self.services.insert(name.clone());
        }
    }

    pub(crate) fn close_port(&mut self, key: NodeKey, name: &PortName) -> Result<(), Refusal> {
        if self.ports.get(name) != Some(&key) {
            return Err((ControlErrorCode::NotOwner, format!("this node does not hold {name}")));
        }
        self.ports.remove(name);
        self.specs.remove(name);
        self.services.remove(name);
        if let Some(node) = self.nodes.get_mut(&key) {
            node.ports.remove(name);
        }
        Ok(())
    }

    pub(crate) fn connect(
        &mut self,
        key: NodeKey,
        target: &Target,
        rights: Rights,
    ) -> Result<NewLink, Refusal> {
        let client = self.nodes.get(&key).ok_or_else(not_admitted)?;
        let client_identity = client.identity;
        if client.links.len() >= self.max_links {
            let detail = format!("a node may have at most {} links", self.max_links);
            return Err((ControlErrorCode::LimitExceeded, detail));
        }
        let (server, listen) = match target {
            Target::Port(name) => {
                let server = self.ports.get(name).copied().ok_or_else(|| {
                    (ControlErrorCode::NoSuchPort, format!("no port named {name}"))
                })?;
                (server, ListenTarget::Port(name.clone()))
            }
            Target::Inbox(process_id) => {
                let server = self.by_process.get(process_id).copied().ok_or_else(|| {
                    (ControlErrorCode::NoSuchPort, format!("no live node {process_id}"))
                })?;
                (server, ListenTarget::Inbox)
            }
        };
        // Invariant: `ports` and `by_process` only name admitted nodes (removal clears both).
        let server_record = self.nodes.get(&server).expect("registered names belong to nodes");
        if server != key && server_record.links.len() >= self.max_links {
            let detail = "the serving node has reached its link limit".to_owned();
            return Err((ControlErrorCode::LimitExceeded, detail));
        }
        let to_server = client
            .links
            .iter()
            .filter_map(|l| self.links.get(l))
            .filter(|r| r.client == key && r.server == server && r.client_open)
            .count();
        if server != key && to_server >= self.max_links_per_peer {
            let limit = self.max_links_per_peer;
            let detail = format!("a node may have at most {limit} links to one node");
            return Err((ControlErrorCode::LimitExceeded, detail));
        }
        let server_identity = server_record.identity;
        let link = LinkId(self.next_link);
        self.next_link += 1;
        let record = LinkRecord {
            client: key,
            server,
            target: listen.clone(),
            client_open: true,
            server_open: true,
        };
        self.links.insert(link, record);
        for side in [key, server] {
            if let Some(node) = self.nodes.get_mut(&side) {
                node.links.insert(link);
            }
        }
        if let ListenTarget::Port(name) = &listen {
            *self.connections.entry((server, name.clone())).or_default() += 1;
        }
        let spec = match &listen {
            ListenTarget::Port(name) => self.specs.get(name).copied().unwrap_or_default(),
            ListenTarget::Inbox => PortSpec::default(),
        };
        Ok(NewLink { link, server, server_identity, client_identity, target: listen, spec, rights })
    }

    /// Records that node `key` closed its end of `link`; ignores links it holds no end of.
    pub(crate) fn link_closed(&mut self, key: NodeKey, link: LinkId) {
        let Some(record) = self.links.get_mut(&link) else { return };
        let was_active = record.client_open && record.server_open;
        if record.client == key && record.client_open {
            record.client_open = false;
        } else if record.server == key && record.server_open {
            record.server_open = false;
        } else {
            return;
        }
        let record = record.clone();
        if let Some(node) = self.nodes.get_mut(&key) {
            node.links.remove(&link);
        }
        if was_active {
            if let ListenTarget::Port(name) = &record.target {
                let key = (record.server, name.clone());
                if let Some(count) = self.connections.get_mut(&key) {
                    *count = count.saturating_sub(1);
                    if *count == 0 {
                        self.connections.remove(&key);
                    }
                }
            }
        }
        if !record.client_open && !record.server_open {
            self.links.remove(&link);
        }
    }

    /// The nodes that still hold an end of `link` (one for each open end).
    pub(crate) fn link_ends(&self, link: LinkId) -> Vec<NodeKey> {
        let Some(record) = self.links.get(&link) else { return Vec::new() };
        let client = record.client_open.then_some(record.client);
        let server = record.server_open.then_some(record.server);
        client.into_iter().chain(server).collect()
    }

    /// Link ends node `key` holds (to other nodes).
    pub(crate) fn links_of(&self, key: NodeKey) -> usize {
        self.nodes.get(&key).map_or(0, |n| n.links.len())
    }

    /// The ports node `key` holds.
    pub(crate) fn ports_of(&self, key: NodeKey) -> Vec<PortName> {
        self.nodes.get(&key).map(|n| n.ports.iter().cloned().collect()).unwrap_or_default()
    }

    /// The links whose other end node `key`'s departure leaves open: `(other node, link)`.
    pub(crate) fn orphaned_by(&self, key: NodeKey) -> Vec<(NodeKey, LinkId)> {
        let Some(node) = self.nodes.get(&key) else { return Vec::new() };
        node.links
            .iter()
            .filter_map(|link| {
                let record = self.links.get(link)?;
                if record.client == key && record.server != key && record.server_open {
                    Some((record.server, *link))
                } else if record.server == key && record.client != key && record.client_open {
                    Some((record.client, *link))
                } else {
                    None
                }
            })
            .collect()
    }

    /// Removes a node that left: its names are free at once, its ends of links closed.
    pub(crate) fn remove(&mut self, key: NodeKey) -> Option<PeerIdentity> {
        let node = self.nodes.get(&key)?;
        let links: Vec<LinkId> = node.links.iter().copied().collect();
        for link in links {
            // Twice: a node connected to its own port holds both ends of that link.
            self.link_closed(key, link);
            self.link_closed(key, link);
        }
        let node = self.nodes.remove(&key)?;
        self.by_process.remove(&node.identity.process_id);
        if node.identity.process_id.pid == 0 {
            self.pid_zero.release(node.identity.process_id.generation);
        }
        for name in &node.ports {
            self.ports.remove(name);
            self.specs.remove(name);
            self.services.remove(name);
        }
        Some(node.identity)
    }

    /// The identity of an admitted node.
    pub(crate) fn identity(&self, key: NodeKey) -> Option<PeerIdentity> {
        self.nodes.get(&key).map(|n| n.identity)
    }

    /// A fresh link id, for links the broker keeps an end of itself (mailboxes).
    pub(crate) fn allocate_link_id(&mut self) -> LinkId {
        let link = LinkId(self.next_link);
        self.next_link += 1;
        link
    }

    /// The owner and spec of port `name`.
    pub(crate) fn port(&self, name: &PortName) -> Option<(NodeKey, PeerIdentity, PortSpec)> {
        let key = *self.ports.get(name)?;
        let owner = self.nodes.get(&key)?.identity;
        Some((key, owner, self.specs.get(name).copied().unwrap_or_default()))
    }

    pub(crate) fn listing(&self) -> (u32, Vec<PortEntry>) {
        let ports = self
            .ports
            .iter()
            .map(|(name, key)| PortEntry {
                name: name.clone(),
                owner: self.nodes[key].identity,
                connections: self.connections.get(&(*key, name.clone())).copied().unwrap_or(0),
                kind: if self.services.contains(name) {
                    EndpointKind::Service
                } else {
                    EndpointKind::Port
                },
            })
            .collect();
        (u32::try_from(self.nodes.len()).unwrap_or(u32::MAX), ports)
    }

    /// True while node `key` holds its end of `link` (for tests of the accounting).
    #[cfg(test)]
    fn holds(&self, key: NodeKey, link: LinkId) -> bool {
        self.nodes.get(&key).is_some_and(|n| n.links.contains(&link))
    }

    pub(crate) fn node_count(&self) -> usize {
        self.nodes.len()
    }
}

fn not_admitted() -> Refusal {
    (ControlErrorCode::OutOfOrder, "send Hello first".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn registry() -> Registry {
        Registry::new(Limits { ports: 2, ..Limits::default() })
    }

    fn name(text: &str) -> PortName {
        PortName::new(text).unwrap()
    }

    #[test]
    fn a_live_nodes_name_cannot_be_taken_and_a_dead_nodes_name_is_free_at_once() {
        let mut r = registry();
        let (a, b) = (NodeKey(1), NodeKey(2));
        r.admit(a, 100, 0, 0);
        r.admit(b, 200, 0, 0);
        r.open_port(a, name("calc"), PortSpec::default()).unwrap();
        assert_eq!(
            r.open_port(b, name("calc"), PortSpec::default()).unwrap_err().0,
            ControlErrorCode::NameTaken
        );
        assert_eq!(r.close_port(b, &name("calc")).unwrap_err().0, ControlErrorCode::NotOwner);
        r.remove(a);
        r.open_port(b, name("calc"), PortSpec::default()).unwrap();
    }

    #[test]
    fn connect_finds_ports_and_inboxes_and_counts_links() {
        let mut r = registry();
        let (a, b) = (NodeKey(1), NodeKey(2));
        let server = r.admit(a, 100, 0, 0);
        r.admit(b, 200, 0, 0);
        r.open_port(a, name("calc"), PortSpec::default()).unwrap();
        let link = r.connect(b, &Target::Port(name("calc")), Rights::ALL).unwrap();
        assert_eq!(link.server, a);
        assert_eq!(link.server_identity, server);
        let inbox = r.connect(b, &Target::Inbox(server.process_id), Rights::ALL).unwrap();
        assert_eq!(inbox.target, ListenTarget::Inbox);
        assert_eq!(r.listing().1[0].connections, 1);
        r.link_closed(b, link.link);
        assert_eq!(r.listing().1[0].connections, 0);
        let missing = r.connect(b, &Target::Port(name("nope")), Rights::ALL).unwrap_err();
        assert_eq!(missing.0, ControlErrorCode::NoSuchPort);
        r.remove(a);
        let gone = r.connect(b, &Target::Inbox(server.process_id), Rights::ALL).unwrap_err();
        assert_eq!(gone.0, ControlErrorCode::NoSuchPort);
    }

    #[test]
    fn each_end_of_a_link_counts_against_its_own_node_until_it_reports_closed() {
        let mut r = registry();
        let (server, client) = (NodeKey(1), NodeKey(2));
        r.admit(server, 100, 0, 0);
        r.admit(client, 200, 0, 0);
        r.open_port(server, name("calc"), PortSpec::default()).unwrap();
        let link = r.connect(client, &Target::Port(name("calc")), Rights::ALL).unwrap().link;
        r.link_closed(client, link);
        assert_eq!(r.listing().1[0].connections, 0, "no longer open at both ends");
        assert!(!r.holds(client, link));
        assert!(r.holds(server, link), "the server has not closed its end yet");
        r.link_closed(NodeKey(3), link);
        assert!(r.holds(server, link), "a stranger cannot close it");
        r.link_closed(server, link);
        assert!(!r.holds(server, link));
        assert!(r.links.is_empty());
    }

    #[test]
    fn ids_without_a_process_skip_0_and_every_one_still_taken_when_they_wrap() {
        let mut ids = PidZeroIds::new();
        let (one, two) = (ids.allocate(), ids.allocate());
        assert_eq!((one, two), (1, 2));
        ids.release(one);
        ids.next = u32::MAX;
        assert_eq!(ids.allocate(), u32::MAX);
        assert_eq!(ids.allocate(), 1, "0 is skipped, 1 was given back");
        assert_eq!(ids.allocate(), 3, "2 is still taken");
        assert_eq!(ids.taken(), 4, "2, u32::MAX, 1 and 3");
    }

    #[test]
    fn a_node_with_pid_0_takes_an_id_without_a_process_and_gives_it_back() {
        let mut r = registry();
        let local = r.admit(NodeKey(1), 100, 0, 0);
        let remote = r.admit(NodeKey(2), 0, u32::MAX, u32::MAX);
        assert_eq!(remote.process_id.pid, 0);
        assert_ne!(remote.process_id.generation, 0);
        assert_eq!(r.node_key(remote.process_id), Some(NodeKey(2)));
        assert_eq!(r.pid_zero_ids().taken(), 1);
        r.remove(NodeKey(2));
        assert_eq!(r.pid_zero_ids().taken(), 0);
        r.remove(NodeKey(1));
        assert_ne!(local.process_id, remote.process_id);
    }

    #[test]
    fn a_reused_pid_gets_a_new_process_id() {
        let mut r = registry();
        let first = r.admit(NodeKey(1), 100, 0, 0);
        r.remove(NodeKey(1));
        let second = r.admit(NodeKey(1), 100, 0, 0);
        assert_ne!(first.process_id, second.process_id);
    }

    #[test]
    fn one_client_may_hold_only_its_share_of_a_servers_links() {
        let mut r = Registry::new(Limits { links_per_peer: 2, ..Limits::default() });
        let (server, greedy, other) = (NodeKey(1), NodeKey(2), NodeKey(3));
        r.admit(server, 1, 0, 0);
        r.admit(greedy, 2, 0, 0);
        r.admit(other, 3, 0, 0);
        r.open_port(server, name("calc"), PortSpec::default()).unwrap();
        let target = Target::Port(name("calc"));
        let first = r.connect(greedy, &target, Rights::ALL).unwrap().link;
        r.connect(greedy, &target, Rights::ALL).unwrap();
        let third = r.connect(greedy, &target, Rights::ALL).unwrap_err();
        assert_eq!(third.0, ControlErrorCode::LimitExceeded);
        r.connect(other, &target, Rights::ALL).unwrap();
        r.link_closed(greedy, first);
        r.connect(greedy, &target, Rights::ALL).unwrap();
    }

    #[test]
    fn the_port_limit_is_enforced() {
        let mut r = registry();
        r.admit(NodeKey(1), 1, 0, 0);
        r.open_port(NodeKey(1), name("a"), PortSpec::default()).unwrap();
        r.open_port(NodeKey(1), name("b"), PortSpec::default()).unwrap();
        let err = r.open_port(NodeKey(1), name("c"), PortSpec::default()).unwrap_err();
        assert_eq!(err.0, ControlErrorCode::LimitExceeded);
    }
}
