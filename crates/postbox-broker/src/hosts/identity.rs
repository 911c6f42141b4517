//! Who a node is across hosts: the name brokers give each other for a node ([`NodeRef`]), the
//! local process ids that stand in for nodes of other hosts ([`StandIns`]), and the sender
//! identities inside mailbox deliveries and topic publications, rewritten as they cross
//! (docs/network.md §5).
//!
//! A node's [`ProcessId`] means something only to the broker that admitted it. Between
//! brokers a node is named by its host, the run of that host's broker (its *incarnation*, so
//! that ids of an earlier run are never taken for a new node), and its process id there. Each
//! broker gives every remote node it hears of a local process id of its own, `0.<n>` (pid 0:
//! no local process), the node's **stand-in**: nodes here see the remote node under it, and
//! sending to its inbox reaches the remote node. Nodes attached over TCP have ids `0.<n>` too;
//! both come from one allocator ([`PidZeroIds`]), so an id never names both.

use std::collections::{BTreeMap, HashMap};

use postbox_core::wire::frame::HEADER_LEN;
use postbox_core::wire::{put_text, DecodeError, Reader};
use postbox_core::{FrameHeader, FrameKind, PeerIdentity, ProcessId};

use super::protocol::ChannelKind;
use super::{HostName, FORWARD_OVERHEAD, MAX_REMOTE_MESSAGE};
use crate::registry::PidZeroIds;

/// A node as one broker names it to another.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct NodeRef {
    /// The host whose broker admitted the node; `None`: the broker sending the message.
    pub(crate) host: Option<HostName>,
    /// The run of that broker that admitted it (0: not known, as for an id a user typed).
    pub(crate) incarnation: u64,
    /// Its process id on that host.
    pub(crate) process: ProcessId,
}

/// This broker run's local process ids standing in for nodes of other hosts: `0.<n>`, each
/// node its own, the same one every time it is seen (so that replies and `recv_from` work),
/// never reused for another while the broker runs. Their generations come from the
/// registry's [`PidZeroIds`], which nodes attached over TCP take theirs from too.
///
/// Stand-ins are kept in two tiers, each forgetting the one used longest ago first when full
/// (sending to it then fails with `NoSuchPort`, as for a node that left): nodes a peer named
/// (a sender, a server, a client: nodes that exist), at most `capacity`; and nodes only this
/// host's nodes named (`Node::process_on`, which anyone may call with any id), at most
/// `named_capacity`. A flood of the latter thus never pushes out the former; a node named so
/// moves up once a peer names it.
#[derive(Debug)]
pub(crate) struct StandIns {
    /// This run of the broker (see [`this_run`]).
    incarnation: u64,
    capacity: usize,
    named_capacity: usize,
    by_generation: HashMap<u32, StandIn>,
    by_node: HashMap<(HostName, ProcessId), u32>,
    /// Generations of stand-ins for nodes a peer named, by last use, oldest first.
    recency: BTreeMap<u64, u32>,
    /// The same for nodes only this host's nodes named.
    named_recency: BTreeMap<u64, u32>,
    clock: u64,
}

/// A remote node behind a stand-in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct StandIn {
    pub(crate) host: HostName,
    pub(crate) incarnation: u64,
    pub(crate) process: ProcessId,
    used: u64,
    /// A peer named the node (not only a local node, by `process_on`).
    seen: bool,
}

impl NodeRef {
    /// Appends the wire form: host text (empty: the sender's) | incarnation u64 | process id.
    pub(crate) fn encode(&self, buf: &mut Vec<u8>) {
        put_text(buf, self.host.as_ref().map_or("", HostName::as_str));
        buf.extend_from_slice(&self.incarnation.to_le_bytes());
        buf.extend_from_slice(&self.process.pid.to_le_bytes());
        buf.extend_from_slice(&self.process.generation.to_le_bytes());
    }

    /// Reads the wire form (untrusted bytes: a bad host name is an error).
    pub(crate) fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let host = match r.text()? {
            "" => None,
            name => Some(HostName::new(name).map_err(|_| DecodeError::InvalidName)?),
        };
        let incarnation = r.u64()?;
        let process = ProcessId::new(r.u32()?, r.u32()?);
        Ok(Self { host, incarnation, process })
    }
}

impl StandIns {
    /// A table for this broker's run `incarnation`, keeping at most `capacity` stand-ins for
    /// nodes peers named and `named_capacity` for nodes only local nodes named.
    pub(crate) fn new(incarnation: u64, capacity: usize, named_capacity: usize) -> Self {
        Self {
            incarnation,
            capacity: capacity.max(1),
            named_capacity: named_capacity.max(1),
            by_generation: HashMap::new(),
            by_node: HashMap::new(),
            recency: BTreeMap::new(),
            named_recency: BTreeMap::new(),
            clock: 0,
        }
    }

    /// This run of the broker, as peers tell it from earlier ones.
    pub(crate) fn incarnation(&self) -> u64 {
        self.incarnation
    }

    /// How node `process` of this host (its own, or a stand-in) is named to a peer.
    pub(crate) fn node_ref(&self, process: ProcessId) -> NodeRef {
        match self.peek(process) {
            Some(remote) => NodeRef {
                host: Some(remote.host.clone()),
                incarnation: remote.incarnation,
                process: remote.process,
            },
            None => NodeRef { host: None, incarnation: self.incarnation, process },
        }
    }

    /// The stand-in of node `process` of `host`, admitted by that broker's run `incarnation`
    /// (0: not known), as a peer named it. Made if needed. A node first named without its
    /// incarnation (by a user) keeps its stand-in when the incarnation becomes known; a
    /// different incarnation means the remote broker restarted, so the old stand-in is
    /// dropped and a new one made.
    pub(crate) fn stand_in(
        &mut self,
        ids: &mut PidZeroIds,
        host: &HostName,
        incarnation: u64,
        process: ProcessId,
    ) -> ProcessId {
        self.find_or_make(ids, (host, incarnation, process), true)
    }

    /// Like [`stand_in`](Self::stand_in), for a node only a local node named
    /// (`Node::process_on`): a new one goes in the lower tier.
    pub(crate) fn named_stand_in(
        &mut self,
        ids: &mut PidZeroIds,
        host: &HostName,
        incarnation: u64,
        process: ProcessId,
    ) -> ProcessId {
        self.find_or_make(ids, (host, incarnation, process), false)
    }

    /// Forgets the stand-ins of `host`'s nodes admitted by a run of its broker other than
    /// `current` (that broker restarted: its nodes of earlier runs are gone). Those named
    /// without a run (0) stay: they mean whichever run is current.
    pub(crate) fn forget_other_runs(
        &mut self,
        ids: &mut PidZeroIds,
        host: &HostName,
        current: u64,
    ) {
        let stale: Vec<u32> = self
            .by_generation
            .iter()
            .filter(|(_, s)| s.host == *host && s.incarnation != 0 && s.incarnation != current)
            .map(|(generation, _)| *generation)
            .collect();
        for generation in stale {
            self.forget(ids, generation);
        }
    }

    /// The remote node `id` stands for, if it is a stand-in this table holds.
    pub(crate) fn remote(&mut self, id: ProcessId) -> Option<StandIn> {
        if id.pid != 0 {
            return None;
        }
        let entry = self.by_generation.get(&id.generation)?.clone();
        self.touch(id.generation);
        Some(entry)
    }

    /// Like [`remote`](Self::remote), without marking the stand-in as used.
    pub(crate) fn peek(&self, id: ProcessId) -> Option<&StandIn> {
        if id.pid != 0 {
            return None;
        }
        self.by_generation.get(&id.generation)
    }

    /// Stand-ins held.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.by_generation.len()
    }

    fn find_or_make(
        &mut self,
        ids: &mut PidZeroIds,
        (host, incarnation, process): (&HostName, u64, ProcessId),
        seen: bool,
    ) -> ProcessId {
        let key = (host.clone(), process);
        if let Some(&generation) = self.by_node.get(&key) {
            let known = self.by_generation.get(&generation).map_or(0, |s| s.incarnation);
            if incarnation == 0 || known == 0 || known == incarnation {
                if let Some(entry) = self.by_generation.get_mut(&generation) {
                    if entry.incarnation == 0 {
                        entry.incarnation = incarnation;
                    }
                }
                if seen {
                    self.promote(ids, generation);
                }
                self.touch(generation);
                return ProcessId::new(0, generation);
            }
            self.forget(ids, generation);
        }
        self.make_room(ids, seen);
        let generation = ids.allocate();
        self.clock += 1;
        let used = self.clock;
        let entry = StandIn { host: host.clone(), incarnation, process, used, seen };
        self.tier(seen).insert(used, generation);
        self.by_generation.insert(generation, entry);
        self.by_node.insert(key, generation);
        ProcessId::new(0, generation)
    }

    /// A stand-in only local nodes named, now named by a peer: into the upper tier.
    fn promote(&mut self, ids: &mut PidZeroIds, generation: u32) {
        let Some(entry) = self.by_generation.get(&generation) else { return };
        if entry.seen {
            return;
        }
        let used = entry.used;
        self.named_recency.remove(&used);
        self.make_room(ids, true);
        if let Some(entry) = self.by_generation.get_mut(&generation) {
            entry.seen = true;
            self.recency.insert(used, generation);
        }
    }

    /// Forgets the stand-in used longest ago in a tier that is full.
    fn make_room(&mut self, ids: &mut PidZeroIds, seen: bool) {
        let capacity = if seen { self.capacity } else { self.named_capacity };
        if self.tier(seen).len() >= capacity {
            if let Some((_, oldest)) = self.tier(seen).pop_first() {
                self.forget(ids, oldest);
            }
        }
    }

    fn tier(&mut self, seen: bool) -> &mut BTreeMap<u64, u32> {
        if seen {
            &mut self.recency
        } else {
            &mut self.named_recency
        }
    }

    fn touch(&mut self, generation: u32) {
        let Some(entry) = self.by_generation.get_mut(&generation) else { return };
        let (old, seen) = (entry.used, entry.seen);
        self.clock += 1;
        entry.used = self.clock;
        let tier = if seen { &mut self.recency } else { &mut self.named_recency };
        tier.remove(&old);
        tier.insert(self.clock, generation);
    }

    fn forget(&mut self, ids: &mut PidZeroIds, generation: u32) {
        if let Some(entry) = self.by_generation.remove(&generation) {
            self.tier(entry.seen).remove(&entry.used);
            self.by_node.remove(&(entry.host, entry.process));
            ids.release(generation);
        }
    }
}

/// A run of this broker: its start time and pid, mixed (never 0). Peers compare it to tell a
/// process id this run assigned from one an earlier run did.
pub(crate) fn this_run() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let pid = u64::from(std::process::id());
    (nanos ^ pid.rotate_left(40)).max(1)
}

/// Whether a frame of `kind` on a channel carrying `channel` names its sender in its body:
/// a mailbox's delivery, a topic's publication.
pub(crate) fn names_sender(channel: ChannelKind, kind: FrameKind) -> bool {
    match channel {
        ChannelKind::Mailbox => kind == FrameKind::Reply,
        ChannelKind::Subscription => kind == FrameKind::Oneway,
        ChannelKind::Port => false,
    }
}

/// A delivery or publication (`header`, `body`) leaving for a peer, with its sender named
/// for the peer: the header and body to send, or no body when a publication is too large to
/// cross (dropped, and counted in `lost`, which the next one reports); `None` when the body
/// names no sender.
pub(crate) fn named_for_peer(
    stand_ins: &StandIns,
    kind: ChannelKind,
    mut header: FrameHeader,
    body: &[u8],
    lost: &mut u64,
) -> Option<(FrameHeader, Option<Vec<u8>>)> {
    let (process, rest) = split_identity(body)?;
    let body = with_node_ref(&stand_ins.node_ref(process), rest);
    if kind == ChannelKind::Subscription {
        // A publication's correlation counts the messages dropped before it (§2.9).
        let crossing = HOST_MESSAGE_HEADER + HEADER_LEN + body.len();
        if crossing > (MAX_REMOTE_MESSAGE + FORWARD_OVERHEAD) as usize {
            *lost = lost.saturating_add(header.correlation).saturating_add(1);
            return Some((header, None));
        }
        header.correlation = header.correlation.saturating_add(std::mem::take(lost));
    }
    header.body_len = u32::try_from(body.len()).ok()?;
    Some((header, Some(body)))
}

/// Appends a frame of `header` (its body length set to that of `body`) and `body`.
pub(crate) fn push_frame(out: &mut Vec<u8>, mut header: FrameHeader, body: &[u8]) {
    header.body_len = u32::try_from(body.len()).unwrap_or(u32::MAX);
    out.extend_from_slice(&header.encode(body));
    out.extend_from_slice(body);
}

/// The sender's process id at the start of a delivery or publication body (docs/wire-format.md
/// §2.8–2.9: pid, generation, uid, gid), and what follows it.
pub(crate) fn split_identity(body: &[u8]) -> Option<(ProcessId, &[u8])> {
    let mut r = Reader::new(body);
    let process = ProcessId::new(r.u32().ok()?, r.u32().ok()?);
    r.take(8).ok()?;
    Some((process, &body[IDENTITY_LEN..]))
}

/// A body with the sender named for another host: node ref, then `rest`.
pub(crate) fn with_node_ref(node: &NodeRef, rest: &[u8]) -> Vec<u8> {
    let mut body = Vec::with_capacity(MAX_NODE_REF + rest.len());
    node.encode(&mut body);
    body.extend_from_slice(rest);
    body
}

/// The node ref at the start of a body that crossed hosts, and what follows it.
pub(crate) fn split_node_ref(body: &[u8]) -> Result<(NodeRef, &[u8]), DecodeError> {
    let mut r = Reader::new(body);
    let node = NodeRef::decode(&mut r)?;
    let at = body.len() - r.remaining();
    Ok((node, &body[at..]))
}

/// A body with the sender as nodes here know it: its 16-byte identity, then `rest`.
pub(crate) fn with_identity(identity: PeerIdentity, rest: &[u8]) -> Vec<u8> {
    let mut body = Vec::with_capacity(IDENTITY_LEN + rest.len());
    let process = identity.process_id;
    for word in [process.pid, process.generation, identity.uid, identity.gid] {
        body.extend_from_slice(&word.to_le_bytes());
    }
    body.extend_from_slice(rest);
    body
}

/// A publication's rest (topic text, then the message) with the topic named as seen from
/// here: `topic@host`.
pub(crate) fn qualify_topic(rest: &[u8], host: &HostName) -> Result<Vec<u8>, DecodeError> {
    let mut r = Reader::new(rest);
    let topic = r.text()?;
    let message = &rest[rest.len() - r.remaining()..];
    let mut out = Vec::with_capacity(rest.len() + 1 + host.as_str().len());
    put_text(&mut out, &format!("{topic}@{host}"));
    out.extend_from_slice(message);
    Ok(out)
}

/// The identity nodes here see for a node a peer named: its stand-in (or, for one of this
/// host's nodes, its own process id), with the user and group no local account has
/// (`(uid_t)-1`).
pub(crate) fn stand_in_identity(process_id: ProcessId) -> PeerIdentity {
    PeerIdentity { process_id, uid: u32::MAX, gid: u32::MAX }
}

/// The largest message a mailbox gives a receiver on another host: its delivery, with the
/// longest node ref naming its sender, crosses in one host message.
pub(crate) const MAX_DELIVERY_TO_PEER: usize = (MAX_REMOTE_MESSAGE + FORWARD_OVERHEAD) as usize
    - HOST_MESSAGE_HEADER
    - HEADER_LEN
    - MAX_NODE_REF;
/// Bytes of a sender identity in a delivery or publication.
const IDENTITY_LEN: usize = 16;
/// Bytes a host message puts before a frame: kind, origin, channel.
const HOST_MESSAGE_HEADER: usize = 10;
/// The most bytes a node ref takes: a 63-byte host name with its length, then 16.
const MAX_NODE_REF: usize = 2 + 63 + 16;

#[cfg(test)]
mod tests {
    use super::*;

    fn host(name: &str) -> HostName {
        HostName::new(name).unwrap()
    }

    #[test]
    fn a_remote_node_keeps_its_stand_in_and_each_node_has_its_own() {
        let mut table = StandIns::new(1, 8, 8);
        let mut ids = PidZeroIds::new();
        let first = table.stand_in(&mut ids, &host("a"), 7, ProcessId::new(100, 1));
        let second = table.stand_in(&mut ids, &host("a"), 7, ProcessId::new(100, 2));
        let other_host = table.stand_in(&mut ids, &host("c"), 9, ProcessId::new(100, 1));
        assert_eq!(first.pid, 0);
        assert_ne!(first.generation, 0);
        assert!(first != second && first != other_host && second != other_host);
        assert_eq!(table.stand_in(&mut ids, &host("a"), 7, ProcessId::new(100, 1)), first);
        let remote = table.remote(first).unwrap();
        assert_eq!((remote.host.as_str(), remote.incarnation), ("a", 7));
        assert_eq!(remote.process, ProcessId::new(100, 1));
        assert!(table.remote(ProcessId::new(100, 1)).is_none(), "a local id stands for nothing");
    }

    #[test]
    fn a_node_named_by_a_user_keeps_its_stand_in_once_its_broker_run_is_known() {
        let mut table = StandIns::new(1, 8, 8);
        let mut ids = PidZeroIds::new();
        let typed = table.stand_in(&mut ids, &host("b"), 0, ProcessId::new(5, 5));
        assert_eq!(table.stand_in(&mut ids, &host("b"), 42, ProcessId::new(5, 5)), typed);
        assert_eq!(table.remote(typed).unwrap().incarnation, 42);
        assert_eq!(table.stand_in(&mut ids, &host("b"), 0, ProcessId::new(5, 5)), typed);
        // The same id from a new run of b's broker is another node.
        let restarted = table.stand_in(&mut ids, &host("b"), 43, ProcessId::new(5, 5));
        assert_ne!(restarted, typed);
        assert!(table.remote(typed).is_none(), "the old node's stand-in is gone");
        assert_eq!(table.len(), 1);
    }

    #[test]
    fn the_stand_in_used_longest_ago_is_forgotten_first_and_none_is_reused() {
        let mut table = StandIns::new(1, 2, 2);
        let mut ids = PidZeroIds::new();
        let one = table.stand_in(&mut ids, &host("a"), 1, ProcessId::new(1, 1));
        let two = table.stand_in(&mut ids, &host("a"), 1, ProcessId::new(2, 1));
        table.remote(one);
        let three = table.stand_in(&mut ids, &host("a"), 1, ProcessId::new(3, 1));
        assert!(table.remote(two).is_none());
        assert!(table.remote(one).is_some() && table.remote(three).is_some());
        let again = table.stand_in(&mut ids, &host("a"), 1, ProcessId::new(2, 1));
        assert!(![one, two, three].contains(&again), "a forgotten generation is not reused");
    }

    #[test]
    fn a_flood_of_nodes_named_only_here_never_pushes_out_nodes_a_peer_named() {
        let mut table = StandIns::new(1, 4, 2);
        let mut ids = PidZeroIds::new();
        let live: Vec<ProcessId> = (1..=4)
            .map(|n| table.stand_in(&mut ids, &host("b"), 7, ProcessId::new(n, 1)))
            .collect();
        // One local node resolving ids by the thousand (`process_on`).
        for n in 0..10_000 {
            table.named_stand_in(&mut ids, &host("b"), 7, ProcessId::new(1000 + n, 1));
        }
        assert_eq!(table.len(), 4 + 2);
        for stand_in in &live {
            assert!(table.remote(*stand_in).is_some(), "{stand_in} was pushed out");
        }
        // A node named here, then by a peer (it answered), moves up and stays.
        let named = table.named_stand_in(&mut ids, &host("b"), 7, ProcessId::new(50, 1));
        assert_eq!(table.stand_in(&mut ids, &host("b"), 7, ProcessId::new(50, 1)), named);
        for n in 0..100 {
            table.named_stand_in(&mut ids, &host("b"), 7, ProcessId::new(2000 + n, 1));
        }
        assert!(table.remote(named).is_some());
        // Naming an id a peer named already gives its stand-in, whichever tier.
        assert_eq!(table.named_stand_in(&mut ids, &host("b"), 7, ProcessId::new(50, 1)), named);
        assert_eq!(table.len(), 4 + 2, "the upper tier forgot its oldest for it");
        assert_eq!(ids.taken(), table.len(), "forgotten stand-ins give their ids back");
    }

    #[test]
    fn nodes_attached_over_tcp_and_stand_ins_never_share_an_id() {
        use crate::registry::{NodeKey, Registry};
        let mut registry = Registry::new(crate::Limits::default());
        let mut table = StandIns::new(1, 3, 3);
        let mut nodes = Vec::new();
        let mut stand_ins = Vec::new();
        for n in 0..200u32 {
            // Nodes attached over TCP come and go, stand-ins are made and forgotten.
            let key = NodeKey(n as usize);
            nodes.push((key, registry.admit(key, 0, u32::MAX, u32::MAX).process_id));
            let ids = registry.pid_zero_ids();
            stand_ins.push(table.stand_in(ids, &host("b"), 7, ProcessId::new(0, n + 1)));
            stand_ins.push(table.named_stand_in(ids, &host("c"), 0, ProcessId::new(9, n + 1)));
            if n % 3 == 0 {
                let (key, _) = nodes.remove(nodes.len() / 2);
                registry.remove(key);
            }
        }
        let live_stand_ins: Vec<ProcessId> =
            stand_ins.into_iter().filter(|id| table.peek(*id).is_some()).collect();
        assert_eq!(live_stand_ins.len(), 3 + 3);
        for (key, id) in &nodes {
            assert_eq!(id.pid, 0);
            assert_eq!(registry.node_key(*id), Some(*key));
            assert!(table.peek(*id).is_none(), "node {id} is taken for a stand-in");
            assert_eq!(table.node_ref(*id).host, None, "node {id} is named as one of this host");
        }
        for id in &live_stand_ins {
            assert!(registry.node_key(*id).is_none(), "stand-in {id} is taken for a node");
        }
        assert_eq!(registry.pid_zero_ids().taken(), nodes.len() + live_stand_ins.len());
    }

    #[test]
    fn a_restarted_peers_nodes_of_earlier_runs_are_forgotten() {
        let mut table = StandIns::new(1, 8, 8);
        let mut ids = PidZeroIds::new();
        let old = table.stand_in(&mut ids, &host("b"), 41, ProcessId::new(5, 5));
        let any_run = table.named_stand_in(&mut ids, &host("b"), 0, ProcessId::new(6, 6));
        let other_host = table.stand_in(&mut ids, &host("c"), 41, ProcessId::new(5, 5));
        table.forget_other_runs(&mut ids, &host("b"), 42);
        assert!(table.remote(old).is_none(), "b's node of run 41 is gone");
        assert!(table.remote(any_run).is_some() && table.remote(other_host).is_some());
        let new = table.named_stand_in(&mut ids, &host("b"), 42, ProcessId::new(5, 5));
        assert_ne!(new, old);
        assert_eq!(table.remote(new).unwrap().incarnation, 42);
    }

    fn publication(correlation: u64, body: &[u8]) -> (FrameHeader, Vec<u8>) {
        let mut rest = Vec::new();
        put_text(&mut rest, "news");
        rest.extend_from_slice(body);
        let body = with_identity(stand_in_identity(ProcessId::new(10, 1)), &rest);
        let header = FrameHeader {
            kind: FrameKind::Oneway,
            priority: 0,
            msg_type: 0,
            id: 0,
            correlation,
            body_len: u32::try_from(body.len()).unwrap(),
            placement: postbox_core::Placement::Inline,
        };
        (header, body)
    }

    #[test]
    fn a_sender_leaves_named_for_the_peer_as_its_own_node_or_the_remote_one_it_stands_for() {
        let mut table = StandIns::new(5, 8, 8);
        let mut ids = PidZeroIds::new();
        let remote = table.stand_in(&mut ids, &host("c"), 9, ProcessId::new(3, 3));
        assert_eq!(
            table.node_ref(ProcessId::new(10, 1)),
            NodeRef { host: None, incarnation: 5, process: ProcessId::new(10, 1) }
        );
        assert_eq!(
            table.node_ref(remote),
            NodeRef { host: Some(host("c")), incarnation: 9, process: ProcessId::new(3, 3) }
        );
        let (header, body) = publication(2, b"hi");
        let mut lost = 0;
        let (named, body) =
            named_for_peer(&table, ChannelKind::Subscription, header, &body, &mut lost).unwrap();
        let body = body.unwrap();
        assert_eq!((named.correlation, named.body_len as usize), (2, body.len()));
        let (node, rest) = split_node_ref(&body).unwrap();
        assert_eq!(node, table.node_ref(ProcessId::new(10, 1)));
        assert_eq!(&rest[6..], b"hi");
        assert!(named_for_peer(&table, ChannelKind::Mailbox, header, &[0; 15], &mut 0).is_none());
        assert!(names_sender(ChannelKind::Mailbox, FrameKind::Reply));
        assert!(!names_sender(ChannelKind::Mailbox, FrameKind::ErrorReply));
        assert!(names_sender(ChannelKind::Subscription, FrameKind::Oneway));
        assert!(!names_sender(ChannelKind::Port, FrameKind::Reply));
    }

    #[test]
    fn a_publication_too_large_to_cross_is_dropped_and_counted_in_the_next_one() {
        let table = StandIns::new(5, 8, 8);
        let mut lost = 0;
        let (header, body) = publication(3, &vec![7; MAX_REMOTE_MESSAGE as usize]);
        let kind = ChannelKind::Subscription;
        let (_, dropped) = named_for_peer(&table, kind, header, &body, &mut lost).unwrap();
        assert!(dropped.is_none());
        assert_eq!(lost, 4, "the three it reported and itself");
        let (header, body) = publication(1, b"small");
        let (named, sent) = named_for_peer(&table, kind, header, &body, &mut lost).unwrap();
        assert!(sent.is_some());
        assert_eq!((named.correlation, lost), (5, 0));
    }

    #[test]
    fn the_largest_delivery_for_a_peer_crosses_whoever_sent_it() {
        let longest = host(&"h".repeat(63));
        let node = NodeRef { host: Some(longest), incarnation: 1, process: ProcessId::new(1, 1) };
        let body = with_node_ref(&node, &vec![0; MAX_DELIVERY_TO_PEER]);
        let crossing = HOST_MESSAGE_HEADER + HEADER_LEN + body.len();
        assert_eq!(crossing, (MAX_REMOTE_MESSAGE + FORWARD_OVERHEAD) as usize);
    }

    #[test]
    fn node_refs_and_rewritten_bodies_survive_the_trip_and_bad_bytes_are_errors() {
        let node = NodeRef { host: Some(host("c")), incarnation: 3, process: ProcessId::new(9, 4) };
        let body = with_node_ref(&node, b"rest");
        assert_eq!(split_node_ref(&body).unwrap(), (node.clone(), &b"rest"[..]));
        let mine = NodeRef { host: None, incarnation: 1, process: ProcessId::new(1, 1) };
        assert_eq!(split_node_ref(&with_node_ref(&mine, b"")).unwrap().0, mine);
        for len in 0..body.len() - 4 {
            assert!(split_node_ref(&body[..len]).is_err(), "cut at {len}");
        }
        let mut bad = body.clone();
        bad[2] = b' ';
        assert_eq!(split_node_ref(&bad), Err(DecodeError::InvalidName));
        for index in 0..body.len() {
            for value in [0, 0x80, 0xff] {
                let mut changed = body.clone();
                changed[index] = value;
                let _ = split_node_ref(&changed);
            }
        }

        let identity = stand_in_identity(ProcessId::new(0, 5));
        let local = with_identity(identity, b"msg");
        let (process, rest) = split_identity(&local).unwrap();
        assert_eq!((process, rest), (ProcessId::new(0, 5), &b"msg"[..]));
        assert!(split_identity(&local[..15]).is_none());

        let mut publication = Vec::new();
        put_text(&mut publication, "news");
        publication.extend_from_slice(b"hello");
        let qualified = qualify_topic(&publication, &host("b")).unwrap();
        let mut r = Reader::new(&qualified);
        assert_eq!(r.text().unwrap(), "news@b");
        assert_eq!(r.take(r.remaining()).unwrap(), b"hello");
        assert!(qualify_topic(&publication[..3], &host("b")).is_err());
    }
}
