//! Serving mailboxes: the broker keeps one end of every link to a mailbox, reads senders'
//! frames into the mailbox, answers receivers' pulls, and returns credit to senders as
//! messages leave (docs/wire-format.md §2.8).

use std::time::{Duration, Instant};

use postbox_core::wire::frame::ReplyErrorCode;
use postbox_core::{
    Capacity, ControlErrorCode, ControlMessage, Delivery, EndpointKind, FrameDecoder, FrameKind,
    LinkId, Overflow, PeerIdentity, Placement, PortCounters, PortEntry, PortName, PortSpec,
    ReleaseCounter,
};
use postbox_transport::{Interest, TransportError, UnixLink, Wait};

use super::out_queue::OutQueue;
use super::{encode, EventLoop};
use crate::hosts::identity;
use crate::mailbox::{Answer, DataKey, Mailbox, Stored};
use crate::registry::NodeKey;

/// The broker's end of a link to a mailbox.
#[derive(Debug)]
pub(super) struct DataLink {
    pub(super) link: UnixLink,
    id: LinkId,
    pub(super) peer: PeerIdentity,
    mailbox: PortName,
    role: Role,
    decoder: FrameDecoder,
    /// Frames waiting for room in the link, how much of the first was written, and their
    /// total size (past a bound the link is not read until its peer reads).
    out: OutQueue,
    /// The peer closed its end; frames already read still go into the mailbox as room
    /// allows, then the link is dropped.
    finished: bool,
}

#[derive(Debug)]
enum Role {
    /// A sender's link: its one-way messages go into the mailbox.
    Input { release: ReleaseCounter },
    /// A receiver's link: pulls come in, messages with bodies up to `max_body` bytes go out.
    Output { max_body: usize },
}

impl DataLink {
    fn enqueue(&mut self, frame: Vec<u8>) {
        self.out.push(frame);
    }
}

impl EventLoop {
    pub(super) fn create_mailbox(
        &mut self,
        key: NodeKey,
        request: u32,
        name: PortName,
        capacity: u32,
        open_existing: bool,
    ) {
        if self.refuse_if_taken(key, request, &name, "mailbox") {
            return;
        }
        if self.mailboxes.contains_key(&name) {
            if open_existing {
                return self.queue(key, &ControlMessage::Ok { request }, Vec::new());
            }
            let detail = format!("mailbox {name} exists");
            return self.refuse(key, request, ControlErrorCode::NameTaken, &detail);
        }
        if capacity == 0 {
            let detail = "a mailbox holds at least one message";
            return self.refuse(key, request, ControlErrorCode::LimitExceeded, detail);
        }
        self.mailboxes.insert(name, Mailbox::new(capacity));
        self.queue(key, &ControlMessage::Ok { request }, Vec::new());
    }

    pub(super) fn unlink_mailbox(&mut self, key: NodeKey, request: u32, name: &PortName) {
        let Some(mut mailbox) = self.mailboxes.remove(name) else {
            let detail = format!("no mailbox named {name}");
            return self.refuse(key, request, ControlErrorCode::NoSuchPort, &detail);
        };
        for (link, correlation) in mailbox.take_pulls() {
            self.answer_error(link, correlation, ReplyErrorCode::Closed, "mailbox unlinked");
        }
        // Every link to it closes: senders and receivers see the other end go away.
        for index in 0..self.data.len() {
            let of_mailbox = self.data[index].as_ref().is_some_and(|d| &d.mailbox == name);
            if of_mailbox {
                self.flush_data(DataKey(index));
                self.close_data(DataKey(index));
            }
        }
        self.queue(key, &ControlMessage::Ok { request }, Vec::new());
    }

    /// Makes a link to mailbox `name`: a sender's (`input`) or a receiver's.
    pub(super) fn connect_mailbox(
        &mut self,
        key: NodeKey,
        request: u32,
        name: &PortName,
        input: bool,
    ) {
        let Some(capacity) = self.mailboxes.get(name).map(|m| m.capacity) else {
            let detail = format!("no mailbox named {name}");
            return self.refuse(key, request, ControlErrorCode::NoSuchPort, &detail);
        };
        let Some(peer) = self.registry.identity(key) else { return };
        if !self.has_link_room(key, request) {
            return;
        }
        let Some((ours, theirs)) = self.broker_link_pair(key, request) else { return };
        let (id, spec) = self.attach_mailbox_link(ours, peer, name, capacity, input, usize::MAX);
        self.hand_broker_link(key, request, id, spec, theirs);
    }

    /// Makes `link` the broker's end of a link to mailbox `name` (which exists) for `peer`, a
    /// node of another host (docs/network.md §5); how the mailbox buffers, for that node. As a
    /// receiver, the node is given only messages that can cross to it: larger ones stay for
    /// the mailbox's other receivers.
    pub(super) fn attach_mailbox(
        &mut self,
        link: UnixLink,
        peer: PeerIdentity,
        name: &PortName,
        input: bool,
    ) -> PortSpec {
        let capacity = self.mailboxes.get(name).map_or(1, |m| m.capacity);
        let max_body = identity::MAX_DELIVERY_TO_PEER;
        self.attach_mailbox_link(link, peer, name, capacity, input, max_body).1
    }

    /// Makes `link` the broker's end of a link to mailbox `name`; a receiver's gets messages
    /// with bodies up to `max_body` bytes.
    fn attach_mailbox_link(
        &mut self,
        link: UnixLink,
        peer: PeerIdentity,
        name: &PortName,
        capacity: u32,
        input: bool,
        max_body: usize,
    ) -> (LinkId, PortSpec) {
        let spec = PortSpec {
            capacity: Capacity::Bounded(capacity),
            overflow: Overflow::Block,
            // A delivery adds the sender's identity to the body; it must still fit a link.
            message_size: Some(self.config.max_message_size.saturating_sub(DELIVERY_HEADER)),
            delivery: Delivery::Reliable,
        };
        let id = self.registry.allocate_link_id();
        let role = if input {
            Role::Input { release: ReleaseCounter::new(&spec) }
        } else {
            Role::Output { max_body }
        };
        let link = DataLink {
            link,
            id,
            peer,
            mailbox: name.clone(),
            role,
            decoder: FrameDecoder::new(self.config.max_message_size),
            out: OutQueue::default(),
            finished: false,
        };
        match self.data.iter().position(Option::is_none) {
            Some(free) => self.data[free] = Some(link),
            None => self.data.push(Some(link)),
        }
        (id, spec)
    }

    pub(super) fn mailbox_stats(&self, request: u32, name: &PortName) -> ControlMessage {
        let mailbox = &self.mailboxes[name];
        let links = self.data.iter().flatten().filter(|d| &d.mailbox == name).count();
        ControlMessage::Stats {
            request,
            owner: self.identity,
            spec: PortSpec {
                capacity: Capacity::Bounded(mailbox.capacity),
                overflow: Overflow::Block,
                message_size: Some(self.config.max_message_size),
                delivery: Delivery::Reliable,
            },
            counters: PortCounters {
                queued: mailbox.held() as u64,
                lost: 0,
                links: u32::try_from(links).unwrap_or(u32::MAX),
            },
        }
    }

    pub(super) fn mailbox_entries(&self) -> Vec<PortEntry> {
        self.mailboxes
            .keys()
            .map(|name| PortEntry {
                name: name.clone(),
                owner: self.identity,
                connections: u32::try_from(
                    self.data.iter().flatten().filter(|d| &d.mailbox == name).count(),
                )
                .unwrap_or(u32::MAX),
                kind: EndpointKind::Mailbox,
            })
            .collect()
    }

    /// What to poll a data link for: writable while frames wait, readable unless it is a
    /// sender's link into a full mailbox (its sender then feels the back-pressure).
    pub(super) fn data_interest(&self, link: &DataLink) -> Option<Interest> {
        let full = link.finished || link.out.bytes() > OUT_LIMIT || self.input_blocked(link);
        match (full, link.out.is_empty()) {
            (true, true) => None,
            (true, false) => Some(Interest::WRITE),
            (false, true) => Some(Interest::READ),
            (false, false) => Some(Interest::BOTH),
        }
    }

    /// True for a sender's link that is not to be read now: its mailbox is full (or gone), or
    /// the sender's messages held in all mailboxes reached its byte quota.
    fn input_blocked(&self, link: &DataLink) -> bool {
        matches!(link.role, Role::Input { .. })
            && (self.mailboxes.get(&link.mailbox).is_none_or(Mailbox::is_full)
                || self.held_from(link.peer.process_id) >= self.config.policy.limits().queued_bytes)
    }

    /// What `sender`'s messages count in all mailboxes against its quota.
    fn held_from(&self, sender: postbox_core::ProcessId) -> u64 {
        self.mailboxes.values().map(|m| m.bytes_from(sender)).sum()
    }

    /// Serves a ready data link: writes what waits, reads and handles what came.
    pub(super) fn service_data(&mut self, key: DataKey) {
        self.flush_data(key);
        for _ in 0..MAX_READS_PER_ROUND {
            if self.data.get(key.0).and_then(Option::as_ref).is_some_and(|l| self.input_blocked(l))
            {
                break;
            }
            let Some(link) = self.data.get_mut(key.0).and_then(Option::as_mut) else { return };
            match link.link.read_into(&mut link.decoder, Wait::NonBlocking) {
                Ok(_) => {}
                Err(TransportError::WouldBlock) => break,
                Err(_) => {
                    // What the sender sent before it left is still delivered; a receiver's
                    // link goes at once (its messages in flight are queued again).
                    link.finished = true;
                    let output = matches!(link.role, Role::Output { .. });
                    self.handle_frames(key);
                    if output {
                        return self.close_data(key);
                    }
                    return self.close_if_drained(key);
                }
            }
            self.handle_frames(key);
        }
        self.flush_data(key);
    }

    /// Handles the complete frames a data link holds (a sender's only while the mailbox has
    /// room and the sender is within its byte quota: the rest wait in the decoder). Returns
    /// true when no complete frame is left.
    fn handle_frames(&mut self, key: DataKey) -> bool {
        // A sender's bytes held in every mailbox: summed once, then counted up as frames go in.
        let Some(sender) = self.data.get(key.0).and_then(Option::as_ref).map(|l| l.peer) else {
            return true;
        };
        let mut held = self.held_from(sender.process_id);
        let quota = self.config.policy.limits().queued_bytes;
        loop {
            let Some(link) = self.data.get_mut(key.0).and_then(Option::as_mut) else { return true };
            let Some(mailbox) = self.mailboxes.get_mut(&link.mailbox) else { return true };
            let (input, max_body) = match link.role {
                Role::Input { .. } => (true, 0),
                Role::Output { max_body } => (false, max_body),
            };
            if input && (mailbox.is_full() || held >= quota) {
                return false;
            }
            let frame = match link.decoder.poll_frame() {
                // The broker's links are Unix links: a payload elsewhere breaks the protocol.
                Ok(Some(frame)) if frame.header.placement == Placement::Inline => frame,
                Ok(None) => return true,
                Ok(Some(_)) | Err(_) => {
                    self.close_data(key);
                    return true;
                }
            };
            let header = frame.header;
            match (input, header.kind) {
                (true, FrameKind::Oneway | FrameKind::Confirmed) => {
                    held += mailbox.push(Stored {
                        msg_type: header.msg_type,
                        priority: header.priority,
                        body: frame.body,
                        sender: link.peer,
                        from: key,
                        from_link: link.id,
                        confirm: header.kind == FrameKind::Confirmed,
                    });
                }
                (true, FrameKind::Credit) if frame.body.is_empty() => self.send_credit(key, true),
                (true, FrameKind::Call) => {
                    let detail = "a mailbox takes one-way messages; calls go to a port";
                    self.answer_error(key, header.correlation, ReplyErrorCode::Failed, detail);
                }
                (false, FrameKind::Call) => {
                    let deadline = match frame.body.as_slice() {
                        [] => None,
                        millis => match <[u8; 8]>::try_from(millis) {
                            Ok(bytes) => Some(
                                Instant::now() + Duration::from_millis(u64::from_le_bytes(bytes)),
                            ),
                            Err(_) => {
                                self.close_data(key);
                                return true;
                            }
                        },
                    };
                    // A correlation in use, or a flood of pulls, breaks the protocol.
                    if mailbox.knows(key, header.correlation)
                        || mailbox.pulls_of(key) >= MAX_PULLS_PER_LINK
                    {
                        self.close_data(key);
                        return true;
                    }
                    mailbox.pull(key, header.correlation, deadline, max_body);
                }
                (false, FrameKind::Oneway) if frame.body.is_empty() => {
                    if let Some(stored) = mailbox.ack(key, header.correlation) {
                        self.released(stored);
                    }
                }
                // Anything else breaks the mailbox protocol: the link goes.
                _ => {
                    self.close_data(key);
                    return true;
                }
            }
        }
    }

    /// Answers every pull that can be answered, on every mailbox.
    pub(super) fn answer_pulls(&mut self, now: Instant) {
        let names: Vec<PortName> = self.mailboxes.keys().cloned().collect();
        for name in names {
            let answers = match self.mailboxes.get_mut(&name) {
                Some(mailbox) => mailbox.poll_answers(now),
                None => continue,
            };
            for answer in answers {
                match answer {
                    Answer::Deliver { link, correlation } => self.deliver(&name, link, correlation),
                    Answer::Empty { link, correlation } => {
                        self.answer_error(link, correlation, ReplyErrorCode::Empty, "");
                    }
                }
            }
            // Room made by deliveries and acks lets senders' waiting frames in; who goes
            // first rotates, so that no sender is starved under sustained load.
            let mut inputs: Vec<DataKey> = self
                .data
                .iter()
                .enumerate()
                .filter(|(_, d)| d.as_ref().is_some_and(|d| d.mailbox == name))
                .map(|(i, _)| DataKey(i))
                .collect();
            if !inputs.is_empty() {
                self.rounds = self.rounds.wrapping_add(1);
                let first = self.rounds % inputs.len();
                inputs.rotate_left(first);
            }
            for key in inputs {
                self.handle_frames(key);
                self.close_if_drained(key);
            }
        }
        for index in 0..self.data.len() {
            self.flush_data(DataKey(index));
        }
    }

    fn deliver(&mut self, name: &PortName, key: DataKey, correlation: u64) {
        let Some(stored) = self.mailboxes.get(name).and_then(|m| m.in_flight(key, correlation))
        else {
            return;
        };
        // A delivery's body: the true sender's identity, then the message (§2.8).
        let sender = stored.sender;
        let mut body = Vec::with_capacity(16 + stored.body.len());
        for word in [sender.process_id.pid, sender.process_id.generation, sender.uid, sender.gid] {
            body.extend_from_slice(&word.to_le_bytes());
        }
        body.extend_from_slice(&stored.body);
        let frame = encode(FrameKind::Reply, stored.msg_type, stored.priority, correlation, &body);
        if let Some(link) = self.data.get_mut(key.0).and_then(Option::as_mut) {
            link.enqueue(frame);
        }
    }

    fn answer_error(&mut self, key: DataKey, correlation: u64, code: ReplyErrorCode, detail: &str) {
        let frame = encode(FrameKind::ErrorReply, code.to_u32(), 0, correlation, detail.as_bytes());
        if let Some(link) = self.data.get_mut(key.0).and_then(Option::as_mut) {
            link.enqueue(frame);
        }
    }

    /// A message left its mailbox: its sender's link, if still the same, gets the credit.
    fn released(&mut self, stored: Stored) {
        let link = self.data.get_mut(stored.from.0).and_then(Option::as_mut);
        if let Some(Role::Input { release }) =
            link.filter(|d| d.id == stored.from_link).map(|d| &mut d.role)
        {
            release.on_release(stored.body.len() as u64);
            self.send_credit(stored.from, stored.confirm);
        }
    }

    fn send_credit(&mut self, key: DataKey, urgent: bool) {
        let Some(link) = self.data.get_mut(key.0).and_then(Option::as_mut) else { return };
        let Role::Input { release } = &mut link.role else { return };
        if let Some(credit) = release.poll_credit(urgent) {
            release.credit_sent(credit);
            link.enqueue(encode(FrameKind::Credit, 0, 0, 0, &credit.to_bytes()));
        }
    }

    /// Writes what a data link has waiting, as far as it goes without blocking.
    fn flush_data(&mut self, key: DataKey) {
        let Some(link) = self.data.get_mut(key.0).and_then(Option::as_mut) else { return };
        // The peer gone, nothing more can reach it. A sender's frames may still wait unread in
        // the socket; they are read (and delivered) until the end of the stream. A receiver's
        // link goes now.
        if link.out.flush(&link.link).is_err() && matches!(link.role, Role::Output { .. }) {
            self.close_data(key);
        }
    }

    /// Drops a link whose peer left once every complete frame it sent is in the mailbox (a
    /// partial frame at the end of the stream is discarded, §2.5).
    fn close_if_drained(&mut self, key: DataKey) {
        let finished = self.data.get(key.0).and_then(Option::as_ref).is_some_and(|d| d.finished);
        if finished && self.handle_frames(key) {
            self.close_data(key);
        }
    }

    /// Drops a data link; a receiver's messages in flight go back to its mailbox.
    fn close_data(&mut self, key: DataKey) {
        let Some(link) = self.data.get_mut(key.0).and_then(Option::take) else { return };
        link.link.shutdown();
        if matches!(link.role, Role::Output { .. }) {
            if let Some(mailbox) = self.mailboxes.get_mut(&link.mailbox) {
                mailbox.receiver_gone(key);
            }
        }
    }
}

/// Bytes of the identity a delivery puts before the message's body (§2.8).
const DELIVERY_HEADER: u32 = 16;
/// Bytes waiting to be written on a data link past which it is not read.
const OUT_LIMIT: usize = 256 * 1024;
/// Pulls one receiving link may have waiting.
const MAX_PULLS_PER_LINK: usize = 1024;

/// Reads from one data link before the others get a turn.
const MAX_READS_PER_ROUND: usize = 16;
