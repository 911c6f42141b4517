//! The broker as gateway to other hosts: it keeps one end of every link that crosses hosts
//! and relays its frames over the host link to the peer broker, which keeps the other end's
//! counterpart (docs/network.md §3–4). Also serves the status port `postbox/hosts`.
//!
//! ```text
//! caller ──link── broker A ══host link══ broker B ──link── server of `echo`
//!        (A faces the client)            (B faces the server)
//! ```
//!
//! Frames cross unchanged (header and body): the caller's calls and one-way messages, the
//! server's replies and credits. Each remote connection is a [`Channel`]; closing either end
//! closes the other, and a peer that dies, restarts or stays unreachable closes all of its
//! channels, so callers see `PeerDied` within the heartbeat bound. Mailboxes, topics and
//! inboxes cross the same way (a node's side in `remote.rs`, the peer's in `peer_opens.rs`);
//! only the sender named inside a mailbox's delivery or a topic's publication is rewritten on
//! the way (`hosts/identity.rs`).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use postbox_core::wire::frame::{ReplyErrorCode, HEADER_LEN};
use postbox_core::{
    ControlErrorCode, ControlMessage, Delivery, Frame, FrameDecoder, FrameHeader, FrameKind,
    Operation, Placement, PortName, PortSpec, ProcessId, Quota, Rights, Target,
};
use postbox_transport::host_link::{Event, HostLinkConfig, SendError};
use postbox_transport::{Interest, TransportError, UnixLink, Wait, Waker};

use super::datagrams::{client_spec, DatagramRelay};
use super::direct::Directs;
use super::dropped::DroppedPublications;
use super::out_queue::OutQueue;
use super::{encode, EventLoop};
use crate::hosts::identity::{self, NodeRef, StandIns};
use crate::hosts::peer::Peer;
use crate::hosts::protocol::{Channel, ChannelKind, HostMessage, OpenTarget, Refusal};
use crate::hosts::{split_remote, HostStatus, HostsConfig, HOSTS_PORT, MAX_REMOTE_MESSAGE};
use crate::registry::{NodeKey, PidZeroIds};

/// The broker's peers and the remote connections in the making.
#[derive(Debug)]
pub(super) struct Gateway {
    pub(super) config: HostsConfig,
    link_config: HostLinkConfig,
    pub(super) peers: Vec<Peer>,
    /// Woken by every host link that has events (and by direct links in the making).
    pub(super) waker: Arc<Waker>,
    next_channel: u64,
    /// Direct links in the making (`direct.rs`).
    pub(super) directs: Directs,
    /// Connects of local nodes waiting for the peer's answer.
    pub(super) opening: HashMap<(usize, Channel), PendingOpen>,
    /// The relay of each open channel.
    pub(super) channels: HashMap<(usize, Channel), RelayKey>,
    /// Per peer: the channels it opened that are open (held to `channels_per_host`).
    opened_by_peer: Vec<usize>,
    /// Per peer: the bytes its channels' relays hold for their local ends.
    relay_out: Vec<Arc<AtomicUsize>>,
    /// Per peer: the run of its broker it last told (0: none yet), the one whose nodes its
    /// stand-ins name when a local node names one by id (docs/network.md §5).
    peer_runs: Vec<u64>,
    /// This run's process ids standing in for nodes of other hosts (docs/network.md §5).
    pub(super) stand_ins: StandIns,
    /// Datagram channels the client's side closed, whose port's side waits until then for
    /// the datagrams the close overtook (`datagrams.rs`).
    pub(super) datagrams_closing: Vec<(usize, Channel, Instant)>,
}

/// A local node's request for a name of another host (`port@host`, a mailbox, a topic, an
/// inbox), sent on as `Open`.
#[derive(Debug)]
pub(super) struct PendingOpen {
    pub(super) node: NodeKey,
    pub(super) process: ProcessId,
    pub(super) request: u32,
    /// The name as the node asked for it, for a denial.
    name: String,
    /// What a denial says was denied.
    operation: Operation,
    kind: ChannelKind,
    pub(super) rights: Rights,
    pub(super) deadline: Instant,
    /// The port the `Open` asked for as a direct link (only then is an `OpenedDirect` taken);
    /// asked for again, relayed, should the dial fail (`direct.rs`).
    pub(super) direct: Option<PortName>,
}

/// A relay's slot in the event loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) struct RelayKey(pub(super) usize);

/// The broker's end of a local link whose frames cross to another host (or, for the status
/// port, are answered by the broker itself).
#[derive(Debug)]
pub(super) struct Relay {
    pub(super) link: UnixLink,
    facing: Facing,
    kind: ChannelKind,
    /// Publications dropped on the way to a remote subscriber (too large to cross), told
    /// with the next one.
    lost: u64,
    /// The same, counted in the credits the topic gets (so its window does not shrink).
    dropped: DroppedPublications,
    /// The local node at the other end, when it is the client (counts against its links).
    pub(super) client: Option<ProcessId>,
    /// What the relays of the peer's channels hold for their local ends, all together
    /// (`out` counted in, and out again as it is written or dropped).
    host_out: Option<Arc<AtomicUsize>>,
    pub(super) decoder: FrameDecoder,
    /// The largest body accepted from the host link for this link.
    pub(super) max_body: u32,
    pub(super) out: OutQueue,
    /// Messages for the host link that found no room (at most two: a batch and the frame
    /// that did not fit it): the local link is not read until they have gone.
    blocked: VecDeque<Vec<u8>>,
    /// The local end closed; what it sent before is still forwarded.
    pub(super) finished: bool,
    /// The peer closed the channel (or is gone): what it sent before is still written to the
    /// local end, and then the relay ends. The channel is no longer the gateway's.
    peer_closed: bool,
    /// A channel to a datagram port: its one-way frames cross as datagrams
    /// (`datagrams.rs`), not as reliable messages.
    pub(super) datagrams: Option<DatagramRelay>,
}

/// Who is at the local end of a relay.
#[derive(Debug, Clone, Copy)]
enum Facing {
    /// A local client of a remote port: its calls and messages go out, replies come in.
    Client { host: usize, channel: Channel },
    /// A local server whose client is remote: calls and messages come in, replies go out.
    Server { host: usize, channel: Channel },
    /// A local node asking for the host links' status.
    Status,
}

impl Gateway {
    /// The gateway of `config`; its host links start on the event loop's first round.
    pub(super) fn new(config: HostsConfig) -> Result<Self, TransportError> {
        let peers = config.peers.len();
        let waker = Arc::new(Waker::new()?);
        Ok(Self {
            link_config: config.link_config(),
            peers: config.peers.iter().cloned().map(Peer::new).collect(),
            directs: Directs::new(&config, &waker)?,
            config,
            waker,
            next_channel: 1,
            opening: HashMap::new(),
            channels: HashMap::new(),
            opened_by_peer: vec![0; peers],
            relay_out: (0..peers).map(|_| Arc::default()).collect(),
            peer_runs: vec![0; peers],
            stand_ins: StandIns::new(identity::this_run(), MAX_STAND_INS, MAX_NAMED_STAND_INS),
            datagrams_closing: Vec::new(),
        })
    }

    /// The waker that says host-link events are waiting.
    pub(super) fn waker(&self) -> &Waker {
        &self.waker
    }

    /// The next instant a connect times out or a host link is due to start.
    pub(super) fn next_deadline(&self) -> Option<Instant> {
        let opens = self.opening.values().map(|p| p.deadline);
        let closing = self.datagrams_closing.iter().map(|&(_, _, at)| at);
        let offers = self.directs.next_deadline();
        opens
            .chain(self.peers.iter().filter_map(|p| p.restart_at))
            .chain(closing)
            .chain(offers)
            .min()
    }

    /// The channels peer `host` opened here that are open, with the direct links it holds or
    /// was offered here.
    pub(super) fn opened_by_peer(&self, host: usize) -> usize {
        self.opened_by_peer.get(host).copied().unwrap_or(0) + self.directs.held_for(host)
    }

    /// The run of peer `host`'s broker, as it last told it (0: not told yet).
    pub(super) fn peer_run(&self, host: usize) -> u64 {
        self.peer_runs.get(host).copied().unwrap_or(0)
    }

    /// Peer `host` told the run of its broker: when it is a new one, the stand-ins of the
    /// host's nodes of other runs are forgotten (those nodes are gone), and a node named by
    /// id from now on is one of this run.
    fn peer_told_run(&mut self, ids: &mut PidZeroIds, host: usize, run: u64) {
        let (Some(known), Some(peer)) = (self.peer_runs.get_mut(host), self.peers.get(host)) else {
            return;
        };
        if run != 0 && *known != run {
            *known = run;
            self.stand_ins.forget_other_runs(ids, &peer.config.name, run);
        }
    }

    /// Tells peer `host` this broker's run: first in each of its sessions.
    fn send_run(&mut self, host: usize) {
        let run = HostMessage::Run { incarnation: self.stand_ins.incarnation() };
        if let Some(peer) = self.peers.get_mut(host) {
            peer.send_or_keep(HostMessage::RUN_STREAM, run.encode());
        }
    }

    /// Remote opens of node `node` still waiting for the peer's answer (each one a link
    /// to be).
    pub(super) fn opens_of(&self, node: ProcessId) -> usize {
        self.opening.values().filter(|p| p.process == node).count()
    }

    pub(super) fn open_timeout(&self) -> Duration {
        (self.config.dead_after() + Duration::from_secs(1)).min(MAX_OPEN_WAIT)
    }
}

impl Relay {
    fn new(
        link: UnixLink,
        facing: Facing,
        kind: ChannelKind,
        client: Option<ProcessId>,
        max_body: u32,
    ) -> Self {
        Self {
            link,
            facing,
            kind,
            lost: 0,
            dropped: DroppedPublications::default(),
            client,
            host_out: None,
            decoder: FrameDecoder::new(max_body),
            max_body,
            out: OutQueue::default(),
            blocked: VecDeque::new(),
            finished: false,
            peer_closed: false,
            datagrams: None,
        }
    }

    pub(super) fn enqueue(&mut self, frame: Vec<u8>) {
        if let Some(host_out) = &self.host_out {
            host_out.fetch_add(frame.len(), Ordering::Relaxed);
        }
        self.out.push(frame);
    }

    /// Writes what waits, as far as it goes without blocking; false when the local end is
    /// gone.
    fn flush(&mut self) -> bool {
        let before = self.out.bytes();
        let written = self.out.flush(&self.link).is_ok();
        if let Some(host_out) = &self.host_out {
            host_out.fetch_sub(before - self.out.bytes(), Ordering::Relaxed);
        }
        written
    }

    /// Bytes the relays of this relay's peer hold for their local ends, all together.
    pub(super) fn host_out(&self) -> usize {
        self.host_out.as_ref().map_or(0, |o| o.load(Ordering::Relaxed))
    }

    /// What to poll its link for: readable while nothing waits for the host link, writable
    /// while frames wait for the local end.
    pub(super) fn interest(&self) -> Option<Interest> {
        let read = !self.finished && !self.peer_closed && self.blocked.is_empty();
        match (read, self.out.is_empty()) {
            (true, true) => Some(Interest::READ),
            (true, false) => Some(Interest::BOTH),
            (false, false) => Some(Interest::WRITE),
            (false, true) => None,
        }
    }

    pub(super) fn remote(&self) -> Option<(usize, Channel)> {
        match self.facing {
            Facing::Client { host, channel } | Facing::Server { host, channel } => {
                Some((host, channel))
            }
            Facing::Status => None,
        }
    }
}

impl Drop for Relay {
    /// What it still held for its local end no longer counts against its host.
    fn drop(&mut self) {
        if let Some(host_out) = &self.host_out {
            host_out.fetch_sub(self.out.bytes(), Ordering::Relaxed);
        }
    }
}

impl EventLoop {
    /// True for a name of the form `port@host` whose host is a peer or this host.
    pub(super) fn is_remote(&self, name: &PortName) -> bool {
        let (Some(gateway), Some((_, host))) = (&self.gateway, split_remote(name)) else {
            return false;
        };
        host == gateway.config.name.as_str() || gateway.config.peer_index(host).is_some()
    }

    /// Handles a `Connect` to a name for which [`is_remote`](Self::is_remote) holds.
    pub(super) fn connect_remote(
        &mut self,
        key: NodeKey,
        request: u32,
        name: &PortName,
        rights: Rights,
    ) {
        let Some(gateway) = &self.gateway else { return };
        let Some((port, host)) = split_remote(name) else { return };
        if host == gateway.config.name.as_str() {
            // `port@this-host` is the local port.
            let target = Target::Port(port);
            return self.handle(key, ControlMessage::Connect { request, target, rights });
        }
        let Some(index) = gateway.config.peer_index(host) else { return };
        let target = Target::Port(name.clone());
        let Some(allowed) = self.connect_rights(key, request, &target, rights) else {
            return;
        };
        let operation =
            if allowed.rights.contains(Rights::SEND) { Operation::Send } else { Operation::Call };
        let wanted = (OpenTarget::Port(port), allowed.rights);
        self.open_remote(key, request, index, wanted, name.to_string(), operation);
    }

    /// Asks peer `host` to open `target` for node `key` with `rights`; the node's request is
    /// answered when the peer answers (or the wait ends). `name` and `operation` are what a
    /// denial names.
    pub(super) fn open_remote(
        &mut self,
        key: NodeKey,
        request: u32,
        host: usize,
        (target, rights): (OpenTarget, Rights),
        name: String,
        operation: Operation,
    ) {
        if !self.has_link_room(key, request) {
            return;
        }
        let Some(process) = self.registry.identity(key).map(|i| i.process_id) else { return };
        let Some(gateway) = self.gateway.as_mut() else { return };
        if !gateway.peers[host].has_link() {
            let host = &gateway.peers[host].config.name;
            let detail = format!("host {host} is unreachable (its link is restarting)");
            return self.refuse(key, request, ControlErrorCode::Unanswered, &detail);
        }
        let channel = Channel { opened_here: true, number: gateway.next_channel };
        gateway.next_channel += 1;
        let deadline = Instant::now() + gateway.open_timeout();
        let kind = target.kind();
        // Only a port is asked for directly: mailboxes, topics and inboxes stay relayed.
        let direct = match &target {
            OpenTarget::Port(port) if gateway.peers[host].config.direct => Some(port.clone()),
            _ => None,
        };
        let asks_direct = direct.is_some();
        let pending = PendingOpen {
            node: key,
            process,
            request,
            name,
            operation,
            kind,
            rights,
            deadline,
            direct,
        };
        gateway.opening.insert((host, channel), pending);
        let client = gateway.stand_ins.node_ref(process);
        let open = HostMessage::Open { channel, target, rights, client, direct: asks_direct };
        gateway.peers[host].send_or_keep(channel.stream(), open.encode());
    }

    /// Answers a `Connect` to the status port with a link the broker serves itself.
    pub(super) fn connect_status(&mut self, key: NodeKey, request: u32) {
        if !self.has_link_room(key, request) {
            return;
        }
        let Some(process) = self.registry.identity(key).map(|i| i.process_id) else { return };
        let Some((ours, theirs)) = self.broker_link_pair(key, request) else { return };
        let id = self.registry.allocate_link_id();
        let max = self.config.max_message_size;
        let relay = Relay::new(ours, Facing::Status, ChannelKind::Port, Some(process), max);
        self.insert_relay(relay);
        let spec = PortSpec { message_size: Some(max), ..PortSpec::default() };
        self.hand_broker_link(key, request, id, spec, theirs);
    }

    /// True for the status port's name, which no node may open.
    pub(super) fn is_reserved(name: &PortName) -> bool {
        name.as_str() == HOSTS_PORT
    }

    /// Starts host links that are due and fails connects that waited too long.
    pub(super) fn run_gateway_timers(&mut self, now: Instant) {
        let Some(gateway) = &mut self.gateway else { return };
        for index in 0..gateway.peers.len() {
            let peer = &mut gateway.peers[index];
            if peer.restart_at.is_some_and(|at| at <= now) {
                match peer.start(&gateway.link_config, &gateway.waker) {
                    Ok(()) => gateway.send_run(index),
                    Err(error) => {
                        tracing::warn!(host = %peer.config.name, %error, "host link not started");
                        peer.restart_at = Some(now + RESTART_DELAY);
                    }
                }
            }
        }
        gateway.directs.expire(now);
        let expired: Vec<(usize, Channel)> =
            gateway.opening.iter().filter(|(_, p)| p.deadline <= now).map(|(k, _)| *k).collect();
        for (host, channel) in expired {
            let Some(gateway) = &mut self.gateway else { return };
            gateway.directs.forget_dial(host, channel);
            if let Some(pending) = gateway.opening.remove(&(host, channel)) {
                // Should the peer still answer, its relay is closed again at once.
                gateway.peers[host].send_or_keep(channel.stream(), close(channel));
                let detail =
                    format!("host {} did not answer in time", gateway.peers[host].config.name);
                self.refuse(pending.node, pending.request, ControlErrorCode::Unanswered, &detail);
            }
        }
        self.run_datagram_timers(now);
    }

    /// Handles every host-link event waiting.
    pub(super) fn service_hosts(&mut self) {
        let Some(gateway) = &self.gateway else { return };
        // Reset first: a link that queues events after it took them wakes the loop again.
        gateway.waker.reset();
        self.service_directs();
        let Some(gateway) = &self.gateway else { return };
        let mut events = Vec::new();
        for host in 0..gateway.peers.len() {
            if let Some(gateway) = &self.gateway {
                gateway.peers[host].take_events(&mut events);
            }
            for event in events.drain(..) {
                self.handle_host_event(host, event);
            }
        }
    }

    /// One event of `host`'s current link.
    fn handle_host_event(&mut self, host: usize, event: Event) {
        let Some(gateway) = &mut self.gateway else { return };
        match event {
            Event::Delivered { payload, .. } => match HostMessage::decode(&payload) {
                Ok(message) => self.handle_host_message(host, message),
                Err(error) => {
                    let name = &gateway.peers[host].config.name;
                    tracing::warn!(host = %name, %error, "malformed message from host");
                }
            },
            Event::DatagramDelivered { payload, .. } => match HostMessage::decode(&payload) {
                Ok(HostMessage::Datagram { channel, seq, frames }) if !channel.opened_here => {
                    self.datagram_from_peer(host, channel, seq, &frames);
                }
                Ok(other) => {
                    // Only a channel's one-way frames travel as datagrams.
                    if let Some(channel) = other.channel() {
                        self.close_channel(host, channel, true);
                    }
                }
                Err(error) => {
                    let name = &gateway.peers[host].config.name;
                    tracing::warn!(host = %name, %error, "malformed datagram from host");
                }
            },
            Event::Acked { .. } => self.unblock_host(host),
            Event::Failed { payload, .. } => {
                // Only when the session ends or the peer restarted: the channel is gone.
                if let Some(channel) = HostMessage::decode(&payload).ok().and_then(|m| m.channel())
                {
                    self.drop_channel(host, channel);
                }
            }
            Event::PeerRestarted { .. } => {
                // A new session of the peer's: it has not heard this broker's run yet.
                gateway.send_run(host);
                self.drop_host_channels(host);
            }
            Event::Ended(error) => {
                tracing::warn!(host = %gateway.peers[host].config.name, %error, "host link ended");
                gateway.peers[host].ended(Instant::now() + RESTART_DELAY);
                self.drop_host_channels(host);
                self.cut_direct_links(host);
            }
            _ => {}
        }
    }

    fn handle_host_message(&mut self, host: usize, message: HostMessage) {
        match message {
            HostMessage::Open { channel, target, rights, client, direct }
                if !channel.opened_here =>
            {
                self.open_for_peer(host, channel, (target, direct), rights, &client);
            }
            HostMessage::OpenedDirect { channel, spec, rights, quota, server, address, token }
                if channel.opened_here =>
            {
                let offer = (address, token);
                self.dial_offered(host, channel, (spec, rights, quota), &server, offer);
            }
            HostMessage::Opened { channel, spec, rights, quota, server } if channel.opened_here => {
                self.peer_opened(host, channel, (spec, rights, quota), &server);
            }
            HostMessage::Refused { channel, reason, detail } if channel.opened_here => {
                let Some(gateway) = &mut self.gateway else { return };
                let Some(pending) = gateway.opening.remove(&(host, channel)) else { return };
                let host_name = gateway.peers[host].config.name.to_string();
                let (node, request) = (pending.node, pending.request);
                match reason {
                    Refusal::NoSuchPort => {
                        let detail = format!("{detail} (on host {host_name})");
                        self.refuse(node, request, ControlErrorCode::NoSuchPort, &detail);
                    }
                    Refusal::Denied => {
                        let operation = pending.operation;
                        let denied =
                            ControlMessage::Denied { request, operation, name: pending.name };
                        self.queue(node, &denied, Vec::new());
                    }
                    Refusal::LimitExceeded => {
                        self.refuse(node, request, ControlErrorCode::LimitExceeded, &detail);
                    }
                    Refusal::NameTaken => {
                        let detail = format!("{detail} (on host {host_name})");
                        self.refuse(node, request, ControlErrorCode::NameTaken, &detail);
                    }
                    Refusal::InvalidName => {
                        self.refuse(node, request, ControlErrorCode::InvalidName, &detail);
                    }
                }
            }
            HostMessage::Frame { channel, frame } => {
                self.frames_from_peer(host, channel, frame, false);
            }
            HostMessage::Frames { channel, frames } => {
                self.frames_from_peer(host, channel, frames, true);
            }
            HostMessage::Close { channel, last } => {
                if last.is_some_and(|last| self.datagrams_closing(host, channel, last)) {
                    // A datagram channel waits briefly for what the close overtook.
                    return;
                }
                let Some(gateway) = &mut self.gateway else { return };
                // A token offered for the channel is not dialed now (the peer's connect ended,
                // or it went through the gateway instead).
                gateway.directs.withdraw(host, channel);
                if let Some(pending) = gateway.opening.remove(&(host, channel)) {
                    let detail = "the remote host closed the connection";
                    self.refuse(
                        pending.node,
                        pending.request,
                        ControlErrorCode::Unanswered,
                        detail,
                    );
                }
                self.close_channel(host, channel, false);
            }
            HostMessage::Run { incarnation } => {
                if let Some(gateway) = &mut self.gateway {
                    gateway.peer_told_run(self.registry.pid_zero_ids(), host, incarnation);
                }
            }
            // A message about a channel from the wrong side breaks the protocol; the channel
            // (if any) goes.
            other => {
                if let Some(channel) = other.channel() {
                    self.close_channel(host, channel, true);
                }
            }
        }
    }

    /// Relays `link` as this host's side of the peer's `channel` (the server's side); frames
    /// of `kind` with bodies up to `max_body` bytes cross, as datagrams when `datagrams` says.
    pub(super) fn relay_for_peer(
        &mut self,
        (host, channel): (usize, Channel),
        link: UnixLink,
        (kind, max_body): (ChannelKind, u32),
        datagrams: Option<DatagramRelay>,
    ) {
        let facing = Facing::Server { host, channel };
        let mut relay = Relay::new(link, facing, kind, None, max_body);
        relay.datagrams = datagrams;
        let key = self.insert_relay(relay);
        if let Some(gateway) = &mut self.gateway {
            if gateway.channels.insert((host, channel), key).is_none() {
                if let Some(opened) = gateway.opened_by_peer.get_mut(host) {
                    *opened += 1;
                }
            }
        }
    }

    /// The peer connected one of this host's nodes: it gets its end of a link the broker
    /// relays.
    fn peer_opened(
        &mut self,
        host: usize,
        channel: Channel,
        (spec, rights, quota): (PortSpec, Rights, Quota),
        server: &NodeRef,
    ) {
        let Some(gateway) = &mut self.gateway else { return };
        let Some(pending) = gateway.opening.remove(&(host, channel)) else {
            // Timed out meanwhile (and Close already sent), or never asked: close it.
            return self.close_channel(host, channel, true);
        };
        let peer = &gateway.peers[host].config.name;
        if let Some(named) = server.host.as_ref().filter(|h| *h != peer) {
            // Only a node of the peer serves a channel it opened: anything else would let the
            // peer pass itself off as another host's node, or as one of this host's.
            let detail = format!("host {peer} named a node of host {named} as the server");
            tracing::warn!(host = %peer, "a peer answered an open for another host's node");
            gateway.peers[host].send_or_keep(channel.stream(), close(channel));
            return self.refuse(
                pending.node,
                pending.request,
                ControlErrorCode::Malformed,
                &detail,
            );
        }
        let alive =
            self.registry.identity(pending.node).is_some_and(|i| i.process_id == pending.process);
        let rights = rights.intersection(pending.rights);
        let pair = UnixLink::pair();
        let (Ok((ours, theirs)), true, false) = (pair, alive, rights.is_empty()) else {
            let detail = "cannot create the link";
            self.refuse(pending.node, pending.request, ControlErrorCode::LimitExceeded, detail);
            if let Some(gateway) = &mut self.gateway {
                gateway.peers[host].send_or_keep(channel.stream(), close(channel));
            }
            return;
        };
        let server = self.identity_from(host, server);
        let mut spec = remote_spec(spec, self.config.max_message_size);
        let max = self.config.max_message_size;
        let facing = Facing::Client { host, channel };
        let mut relay = Relay::new(ours, facing, pending.kind, Some(pending.process), max);
        if spec.delivery == Delivery::Datagrams && pending.kind == ChannelKind::Port {
            // A datagram port: this gateway credits the client itself (`datagrams.rs`).
            spec = client_spec(spec);
            relay.datagrams = Some(DatagramRelay::sending());
        } else {
            spec.delivery = Delivery::Reliable;
        }
        let key = self.insert_relay(relay);
        if let Some(gateway) = &mut self.gateway {
            gateway.channels.insert((host, channel), key);
        }
        let link = self.registry.allocate_link_id();
        let connected = ControlMessage::Connected {
            request: pending.request,
            link,
            server,
            spec,
            rights,
            quota,
        };
        self.queue(pending.node, &connected, vec![theirs.into_fd()]);
    }

    /// Frames from the peer for the local end of `channel` (one, or with `batch` several back
    /// to back): each checked, then all queued there as one write.
    fn frames_from_peer(&mut self, host: usize, channel: Channel, frames: Vec<u8>, batch: bool) {
        let Some(key) = self.relay_of(host, channel) else { return };
        let Some(relay) = self.relays.get_mut(key.0).and_then(Option::as_mut) else { return };
        if relay.datagrams.is_some() {
            // A datagram channel carries no reliable frames either way.
            return self.close_relay(key, true);
        }
        let (kind, facing) = (relay.kind, relay.facing);
        let count = relayed_frames(&frames, relay.max_body, |header| {
            header.placement == Placement::Inline
                && match facing {
                    Facing::Client { .. } => may_reach_client(kind, header.kind),
                    Facing::Server { .. } => {
                        may_reach_server(kind, header.kind, header.body_len as usize)
                    }
                    Facing::Status => false,
                }
        });
        let valid = count.is_some_and(|n| n == 1 || (batch && n > 1));
        let host_out = relay.host_out.as_ref().map_or(0, |o| o.load(Ordering::Relaxed));
        if !valid || relay.out.bytes() > RELAY_OUT_LIMIT || host_out > HOST_OUT_LIMIT {
            return self.close_relay(key, true);
        }
        let frames = match facing {
            Facing::Client { .. } if kind != ChannelKind::Port => {
                match self.senders_named_here(host, kind, &frames) {
                    Some(frames) => frames,
                    None => return self.close_relay(key, true),
                }
            }
            // A subscriber's credits count the publications dropped on the way too.
            Facing::Server { .. } if kind == ChannelKind::Subscription => {
                match relay.dropped.credits_from_peer(&frames) {
                    Some(frames) => frames,
                    None => return self.close_relay(key, true),
                }
            }
            _ => frames,
        };
        let Some(relay) = self.relays.get_mut(key.0).and_then(Option::as_mut) else { return };
        relay.enqueue(frames);
        self.flush_relay(key);
    }

    /// Serves a ready relay: writes what waits, reads and forwards what came.
    pub(super) fn service_relay(&mut self, key: RelayKey) {
        self.flush_relay(key);
        if self.relays.get(key.0).and_then(Option::as_ref).is_none_or(|r| r.peer_closed) {
            // Gone, or only writing what the peer sent before its close.
            return;
        }
        self.forward_relay(key);
        for _ in 0..MAX_READS_PER_ROUND {
            let Some(relay) = self.relays.get_mut(key.0).and_then(Option::as_mut) else { return };
            if relay.finished || !relay.blocked.is_empty() {
                break;
            }
            match relay.link.read_into(&mut relay.decoder, Wait::NonBlocking) {
                Ok(_) => {}
                Err(TransportError::WouldBlock) => break,
                Err(_) => relay.finished = true,
            }
            self.forward_relay(key);
        }
        self.flush_relay(key);
    }

    /// Forwards the complete frames a relay holds, until the host link has no room; closes
    /// a relay whose local end finished once all it sent is forwarded.
    ///
    /// Consecutive frames travel as one host message (up to [`BATCH_BYTES`]), so that a
    /// node's batch stays one reliable message, one acknowledgement, one event and one write
    /// on the far side.
    fn forward_relay(&mut self, key: RelayKey) {
        match self.relays.get(key.0).and_then(Option::as_ref).map(|r| &r.datagrams) {
            Some(Some(DatagramRelay::Sending(_))) => return self.forward_datagrams(key),
            Some(Some(DatagramRelay::Receiving(_))) => return self.take_port_credits(key),
            _ => {}
        }
        loop {
            let Some(relay) = self.relays.get_mut(key.0).and_then(Option::as_mut) else { return };
            if let Some(payload) = relay.blocked.pop_front() {
                if !self.send_for_relay(key, payload) {
                    return;
                }
                continue;
            }
            let Some((_, channel)) = relay.remote() else { return self.serve_status(key) };
            let (facing, kind) = (relay.facing, relay.kind);
            // Deliveries and publications leaving for a peer name their sender for it.
            let renamed = matches!(facing, Facing::Server { .. }) && kind != ChannelKind::Port;
            let stand_ins = self.gateway.as_ref().map(|g| &g.stand_ins);
            let mut batch = Vec::new();
            // Where the last frame in `batch` starts, and how many frames it holds.
            let (mut last_start, mut count) = (0, 0);
            let mut dropped = 0;
            let mut broken = false;
            while batch.len() < BATCH_BYTES {
                let lost = &mut relay.lost;
                // Some(true): the frame goes; Some(false): dropped (counted); None: refused.
                let polled = relay.decoder.poll_frame_with(|header, body| {
                    let body = body.as_slice();
                    let allowed = header.placement == Placement::Inline
                        && match facing {
                            Facing::Client { .. } => {
                                may_reach_server(kind, header.kind, body.len())
                            }
                            Facing::Server { .. } => may_reach_client(kind, header.kind),
                            Facing::Status => false,
                        };
                    if !allowed {
                        return None;
                    }
                    if renamed && identity::names_sender(kind, header.kind) {
                        let (header, body) =
                            identity::named_for_peer(stand_ins?, kind, header, body, lost)?;
                        let Some(body) = body else { return Some(false) };
                        last_start = batch.len();
                        identity::push_frame(&mut batch, header, &body);
                    } else {
                        last_start = batch.len();
                        batch.extend_from_slice(&header.encode(body));
                        batch.extend_from_slice(body);
                    }
                    Some(true)
                });
                match polled {
                    Ok(Some(Some(true))) => count += 1,
                    Ok(Some(Some(false))) => dropped += 1,
                    Ok(None) => break,
                    Ok(Some(None)) | Err(_) => {
                        broken = true;
                        break;
                    }
                }
            }
            if dropped > 0 {
                // The topic counted them as sent; the subscriber will never credit them.
                let credit = relay.dropped.on_dropped(dropped);
                relay.enqueue(credit);
            }
            if count == 0 {
                if broken || relay.finished {
                    self.close_relay(key, true);
                }
                return;
            }
            // A large last frame that took the batch past its bound crosses on its own, so a
            // batch never exceeds what the host link carries.
            let mut messages = Vec::with_capacity(2);
            if count > 1 && batch.len() > BATCH_BYTES {
                let last = batch.split_off(last_start);
                messages.push(frames_message(channel, batch, count - 1));
                messages.push(frames_message(channel, last, 1));
            } else {
                messages.push(frames_message(channel, batch, count));
            }
            let mut messages = messages.into_iter();
            for payload in messages.by_ref() {
                if !self.send_for_relay(key, payload) {
                    break;
                }
            }
            if let Some(relay) = self.relays.get_mut(key.0).and_then(Option::as_mut) {
                relay.blocked.extend(messages);
            }
            if broken {
                return self.close_relay(key, true);
            }
            if self.relays.get(key.0).and_then(Option::as_ref).is_none_or(|r| !r.blocked.is_empty())
            {
                return;
            }
        }
    }

    /// Answers what a relay to the status port holds: each call gets the host links' status.
    fn serve_status(&mut self, key: RelayKey) {
        loop {
            let Some(relay) = self.relays.get_mut(key.0).and_then(Option::as_mut) else { return };
            let frame = match relay.decoder.poll_frame() {
                Ok(Some(frame)) if frame.header.placement == Placement::Inline => frame,
                Ok(None) => {
                    if relay.finished {
                        self.close_relay(key, true);
                    }
                    return;
                }
                Ok(Some(_)) | Err(_) => return self.close_relay(key, true),
            };
            match frame.header.kind {
                FrameKind::Call => {
                    let body = HostStatus::encode_list(&self.host_statuses());
                    let correlation = frame.header.correlation;
                    let reply = encode(FrameKind::Reply, 0, 0, correlation, &body);
                    if let Some(relay) = self.relays.get_mut(key.0).and_then(Option::as_mut) {
                        relay.enqueue(reply);
                    }
                }
                FrameKind::Credit if frame.body.is_empty() => {}
                _ => return self.close_relay(key, true),
            }
        }
    }

    /// Sends a relay's message on its host link; false when it must wait (kept as
    /// `blocked`) or the relay closed.
    fn send_for_relay(&mut self, key: RelayKey, payload: Vec<u8>) -> bool {
        let Some(relay) = self.relays.get_mut(key.0).and_then(Option::as_mut) else { return false };
        let Some((host, channel)) = relay.remote() else { return false };
        let Some(peer) = self.gateway.as_ref().and_then(|g| g.peers.get(host)) else {
            self.close_relay(key, false);
            return false;
        };
        match peer.try_send(channel.stream(), payload) {
            Ok(()) => true,
            Err(SendError::Full(payload)) => {
                relay.blocked.push_front(payload);
                false
            }
            Err(SendError::TooLarge(payload)) => {
                // A call too large to cross is answered here; anything else breaks the link.
                let call = HostMessage::decode(&payload).ok().and_then(|m| match m {
                    HostMessage::Frame { frame, .. } => {
                        let header = Frame::decode(&frame, u32::MAX).ok()?.header;
                        (header.kind == FrameKind::Call).then_some(header.correlation)
                    }
                    _ => None,
                });
                match call {
                    Some(correlation) => {
                        let detail = b"the request is too large to cross hosts";
                        let code = ReplyErrorCode::Failed.to_u32();
                        relay.enqueue(encode(FrameKind::ErrorReply, code, 0, correlation, detail));
                        true
                    }
                    None => {
                        self.close_relay(key, true);
                        false
                    }
                }
            }
            Err(_) => {
                // The session ended: its event closes every channel of the host.
                self.close_relay(key, false);
                false
            }
        }
    }

    /// Room came free on `host`'s link: the backlog goes first, then blocked relays.
    fn unblock_host(&mut self, host: usize) {
        let Some(gateway) = &mut self.gateway else { return };
        gateway.peers[host].flush_backlog();
        let waiting: Vec<RelayKey> = (0..self.relays.len())
            .filter(|&i| {
                self.relays[i].as_ref().is_some_and(|r| {
                    !r.blocked.is_empty() && r.remote().is_some_and(|(h, _)| h == host)
                })
            })
            .map(RelayKey)
            .collect();
        for key in waiting {
            self.forward_relay(key);
            self.flush_relay(key);
        }
    }

    /// Writes what a relay has waiting, as far as it goes without blocking.
    pub(super) fn flush_relay(&mut self, key: RelayKey) {
        let Some(relay) = self.relays.get_mut(key.0).and_then(Option::as_mut) else { return };
        // A write fails once the local end is closed (a client that sent its last messages and
        // dropped its connection while credits were on their way to it). What it sent before
        // may still wait unread in the link: it is read to the end, and the end of the link
        // (not this write) finishes the relay. The frames that could not be written are gone.
        let written = relay.flush();
        if relay.peer_closed && (!written || relay.out.is_empty()) {
            // All the peer sent before its close is with the local end (or can never be).
            self.close_relay(key, false);
        }
    }

    pub(super) fn relay_of(&self, host: usize, channel: Channel) -> Option<RelayKey> {
        self.gateway.as_ref()?.channels.get(&(host, channel)).copied()
    }

    fn insert_relay(&mut self, mut relay: Relay) -> RelayKey {
        if let (Some((host, _)), Some(gateway)) = (relay.remote(), &self.gateway) {
            relay.host_out = gateway.relay_out.get(host).cloned();
        }
        match self.relays.iter().position(Option::is_none) {
            Some(free) => {
                self.relays[free] = Some(relay);
                RelayKey(free)
            }
            None => {
                self.relays.push(Some(relay));
                RelayKey(self.relays.len() - 1)
            }
        }
    }

    /// Drops a relay; its local end sees the link close (a caller's waiting calls fail with
    /// `PeerDied`). With `tell_peer`, the peer closes its end too.
    pub(super) fn close_relay(&mut self, key: RelayKey, tell_peer: bool) {
        let Some(relay) = self.relays.get_mut(key.0).and_then(Option::take) else { return };
        relay.link.shutdown();
        if !relay.peer_closed {
            self.forget_channel(relay.remote(), relay.datagrams.is_some(), tell_peer);
        }
    }

    /// The peer closed a relay's channel, or is gone: the relay ends once what the peer sent
    /// before is written to its local end (at once when nothing waits), so that a reply the
    /// server wrote just before it closed its port reaches its caller whole.
    fn close_relay_when_written(&mut self, key: RelayKey) {
        let Some(relay) = self.relays.get_mut(key.0).and_then(Option::as_mut) else { return };
        if relay.out.is_empty() {
            return self.close_relay(key, false);
        }
        relay.peer_closed = true;
        // What waited for the peer's link can no longer go: the peer closed.
        relay.blocked.clear();
        let (remote, datagrams) = (relay.remote(), relay.datagrams.is_some());
        // The channel is done with now (its id may come again): only the writing is left.
        self.forget_channel(remote, datagrams, false);
    }

    /// Takes a relay's channel (`remote`) off the gateway's books; with `tell_peer`, the peer
    /// closes its end too.
    fn forget_channel(
        &mut self,
        remote: Option<(usize, Channel)>,
        datagrams: bool,
        tell_peer: bool,
    ) {
        let Some((host, channel)) = remote else { return };
        let Some(gateway) = &mut self.gateway else { return };
        if datagrams {
            gateway.datagrams_closing.retain(|&(h, c, _)| (h, c) != (host, channel));
        }
        if gateway.channels.remove(&(host, channel)).is_some() && !channel.opened_here {
            if let Some(opened) = gateway.opened_by_peer.get_mut(host) {
                *opened = opened.saturating_sub(1);
            }
        }
        if tell_peer {
            gateway.peers[host].send_or_keep(channel.stream(), close(channel));
        }
    }

    pub(super) fn close_channel(&mut self, host: usize, channel: Channel, tell_peer: bool) {
        match self.relay_of(host, channel) {
            Some(key) if tell_peer => self.close_relay(key, true),
            Some(key) => self.close_relay_when_written(key),
            None if tell_peer => {
                if let Some(gateway) = &mut self.gateway {
                    gateway.peers[host].send_or_keep(channel.stream(), close(channel));
                }
            }
            None => {}
        }
    }

    /// A channel whose messages can no longer reach the peer: its relay and any connect
    /// waiting on it end.
    fn drop_channel(&mut self, host: usize, channel: Channel) {
        if let Some(gateway) = &mut self.gateway {
            gateway.directs.forget_dial(host, channel);
        }
        if let Some(pending) =
            self.gateway.as_mut().and_then(|g| g.opening.remove(&(host, channel)))
        {
            let detail = "the remote host did not answer";
            self.refuse(pending.node, pending.request, ControlErrorCode::Unanswered, detail);
        }
        self.close_channel(host, channel, false);
    }

    /// The peer died, restarted or stayed unreachable: every channel with it ends, so no
    /// caller waits past the heartbeat bound.
    fn drop_host_channels(&mut self, host: usize) {
        let Some(gateway) = &self.gateway else { return };
        let channels: Vec<Channel> = gateway
            .channels
            .keys()
            .chain(gateway.opening.keys())
            .filter(|(h, _)| *h == host)
            .map(|(_, c)| *c)
            .collect();
        for channel in channels {
            self.drop_channel(host, channel);
        }
    }

    /// Every peer's status, for the status port.
    fn host_statuses(&self) -> Vec<HostStatus> {
        let Some(gateway) = &self.gateway else { return Vec::new() };
        gateway
            .peers
            .iter()
            .enumerate()
            .map(|(index, peer)| {
                let channels = gateway.channels.keys().filter(|(h, _)| *h == index).count();
                let direct_links = gateway.directs.links_with(index);
                let count = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
                peer.status(count(channels), count(direct_links))
            })
            .collect()
    }
}

/// A port's spec as told across hosts: bodies within what the host link carries and this
/// host's links take.
pub(super) fn remote_spec(mut spec: PortSpec, max_message_size: u32) -> PortSpec {
    let limit = MAX_REMOTE_MESSAGE.min(max_message_size);
    spec.message_size = Some(spec.message_size.map_or(limit, |n| n.min(limit)));
    spec
}

pub(super) fn close(channel: Channel) -> Vec<u8> {
    HostMessage::Close { channel, last: None }.encode()
}

/// The host message carrying `frames` (`count` of them, back to back) of `channel`.
fn frames_message(channel: Channel, frames: Vec<u8>, count: usize) -> Vec<u8> {
    if count == 1 {
        HostMessage::Frame { channel, frame: frames }.encode()
    } else {
        HostMessage::Frames { channel, frames }.encode()
    }
}

/// Whether a frame of `kind` with a body of `body_len` bytes may travel from a client to its
/// server on a channel carrying `channel`: calls and messages, and credits without a body;
/// on a subscription, only credits.
fn may_reach_server(channel: ChannelKind, kind: FrameKind, body_len: usize) -> bool {
    match channel {
        ChannelKind::Port | ChannelKind::Mailbox => {
            matches!(kind, FrameKind::Oneway | FrameKind::Confirmed | FrameKind::Call)
                || (kind == FrameKind::Credit && body_len == 0)
        }
        ChannelKind::Subscription => kind == FrameKind::Credit,
    }
}

/// Whether a frame of `kind` may travel from a server to its client on a channel carrying
/// `channel`: replies and credits; on a subscription, only publications.
fn may_reach_client(channel: ChannelKind, kind: FrameKind) -> bool {
    match channel {
        ChannelKind::Port | ChannelKind::Mailbox => {
            matches!(kind, FrameKind::Reply | FrameKind::ErrorReply | FrameKind::Credit)
        }
        ChannelKind::Subscription => kind == FrameKind::Oneway,
    }
}

/// How many whole, intact frames `bytes` holds back to back, each one's header accepted by
/// `accept`; `None` when any is damaged, cut short, too long or refused.
pub(super) fn relayed_frames(
    mut bytes: &[u8],
    max_body: u32,
    mut accept: impl FnMut(&FrameHeader) -> bool,
) -> Option<usize> {
    let mut count = 0;
    while !bytes.is_empty() {
        let (header, len) = frame_at_start(bytes, max_body)?;
        if !accept(&header) {
            return None;
        }
        bytes = &bytes[len..];
        count += 1;
    }
    Some(count)
}

/// The header and length of the frame at the start of `bytes` when it is whole and intact:
/// its header decodes, its body is there, and its checksum matches. Checked in place rather
/// than with `Frame::decode`, which copies the body out.
pub(super) fn frame_at_start(bytes: &[u8], max_body: u32) -> Option<(FrameHeader, usize)> {
    let header_bytes: &[u8; HEADER_LEN] = bytes.get(..HEADER_LEN)?.try_into().ok()?;
    let (header, _) = FrameHeader::decode(header_bytes, max_body).ok()?;
    let len = HEADER_LEN + header.body_len as usize;
    let body = bytes.get(HEADER_LEN..len)?;
    // Every header field has exactly one encoding, so re-encoding gives the same 32 bytes
    // exactly when the declared checksum is that of this header and body.
    (header.encode(body) == *header_bytes).then_some((header, len))
}

/// How long after a session ended (or a start failed) a new host link starts.
const RESTART_DELAY: Duration = Duration::from_millis(100);
/// The longest a `Connect` to a remote port waits for the peer (nodes give up at 10 s).
const MAX_OPEN_WAIT: Duration = Duration::from_secs(8);
/// Bytes from the peer waiting for a local end past which the relay is closed: within the
/// flow control of an honest peer this is never reached.
pub(super) const RELAY_OUT_LIMIT: usize = 64 << 20;
/// Bytes from one peer waiting for the local ends of all its channels past which the channel
/// that brings more is closed: a bound on what a peer can make this broker hold, far above
/// what honest peers within their channels' flow control ever reach.
pub(super) const HOST_OUT_LIMIT: usize = 1 << 30;
/// Bytes of frames gathered into one host message (a larger frame crosses on its own).
const BATCH_BYTES: usize = 64 << 10;
/// Reads from one relay before the others get a turn.
const MAX_READS_PER_ROUND: usize = 16;
/// Stand-ins kept for nodes of other hosts that peers named (about 100 bytes each).
const MAX_STAND_INS: usize = 1 << 16;
/// Stand-ins kept for nodes of other hosts that only local nodes named (`process_on`).
const MAX_NAMED_STAND_INS: usize = 1 << 14;

#[cfg(test)]
mod tests {
    use super::*;

    fn call(body: &[u8]) -> Vec<u8> {
        encode(FrameKind::Call, 0, 0, 7, body)
    }

    fn client_bound(header: &FrameHeader) -> bool {
        may_reach_client(ChannelKind::Port, header.kind)
    }

    fn server_bound(header: &FrameHeader) -> bool {
        may_reach_server(ChannelKind::Port, header.kind, header.body_len as usize)
    }

    #[test]
    fn a_batch_of_relayed_frames_is_checked_frame_by_frame_in_place() {
        let mut batch = call(b"one");
        batch.extend(call(&[9; 64]));
        batch.extend(encode(FrameKind::Oneway, 0, 0, 0, b""));
        assert_eq!(relayed_frames(&batch, 1024, server_bound), Some(3));
        assert_eq!(relayed_frames(&call(b"x"), 1024, server_bound), Some(1));
        // A call may not travel towards a client.
        assert_eq!(relayed_frames(&batch, 1024, client_bound), None);
        // Cut short, anywhere.
        for len in 1..batch.len() {
            let complete = [0, 35, 35 + 96, batch.len()].contains(&len);
            assert_eq!(relayed_frames(&batch[..len], 1024, server_bound).is_some(), complete);
        }
        // Any changed byte breaks a checksum or a field.
        for index in 0..batch.len() {
            let mut damaged = batch.clone();
            damaged[index] ^= 0x40;
            assert_eq!(relayed_frames(&damaged, 1024, server_bound), None, "byte {index}");
        }
        // A body above the link's limit.
        assert_eq!(relayed_frames(&batch, 32, server_bound), None);
    }

    #[test]
    fn what_relays_hold_for_their_local_ends_is_counted_for_their_host_until_written_or_dropped() {
        let host_out = Arc::new(AtomicUsize::new(0));
        let (ours, _theirs) = UnixLink::pair().unwrap();
        let channel = Channel { opened_here: false, number: 1 };
        let facing = Facing::Server { host: 0, channel };
        let mut relay = Relay::new(ours, facing, ChannelKind::Port, None, 1024);
        relay.host_out = Some(Arc::clone(&host_out));
        relay.enqueue(call(b"one"));
        relay.enqueue(call(b"two"));
        assert_eq!(host_out.load(Ordering::Relaxed), 2 * call(b"one").len());
        assert!(relay.flush());
        assert_eq!(host_out.load(Ordering::Relaxed), 0, "written");
        relay.enqueue(call(b"three"));
        drop(relay);
        assert_eq!(host_out.load(Ordering::Relaxed), 0, "dropped");
    }

    #[test]
    fn a_subscription_carries_only_credits_to_the_topics_and_publications_back() {
        use ChannelKind::{Mailbox, Port, Subscription};
        assert!(may_reach_server(Subscription, FrameKind::Credit, 16));
        assert!(may_reach_client(Subscription, FrameKind::Oneway));
        for kind in [FrameKind::Oneway, FrameKind::Call, FrameKind::Confirmed] {
            assert!(!may_reach_server(Subscription, kind, 0), "{kind:?}");
            assert!(may_reach_server(Port, kind, 0) && may_reach_server(Mailbox, kind, 0));
        }
        for kind in [FrameKind::Reply, FrameKind::ErrorReply, FrameKind::Credit] {
            assert!(!may_reach_client(Subscription, kind), "{kind:?}");
            assert!(may_reach_client(Port, kind) && may_reach_client(Mailbox, kind));
        }
        assert!(!may_reach_server(Port, FrameKind::Credit, 16), "a credit with a body");
        assert!(!may_reach_client(Mailbox, FrameKind::Oneway));
    }
}
