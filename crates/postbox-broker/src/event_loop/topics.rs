//! Serving topics: publishers' links in, a queue and a link per subscriber out
//! (docs/wire-format.md §2.9). The broker releases a published message as soon as it is
//! copied to the subscribers' queues, so publishers never wait on subscribers.

use std::sync::Arc;

use postbox_core::{
    Capacity, ControlErrorCode, ControlMessage, Credit, Delivery, FrameDecoder, FrameKind,
    NamePattern, Overflow, PeerIdentity, Placement, PortName, PortSpec, ReleaseCounter, SendWindow,
};
use postbox_transport::{Interest, TransportError, UnixLink, Wait};

use super::out_queue::OutQueue;
use super::{encode, EventLoop};
use crate::registry::NodeKey;
use crate::topic::{Published, SubscriberQueue, Topic};

/// The broker's end of a link to a topic.
#[derive(Debug)]
pub(super) struct TopicLink {
    pub(super) link: UnixLink,
    pub(super) peer: PeerIdentity,
    role: TopicRole,
    decoder: FrameDecoder,
    out: OutQueue,
}

#[derive(Debug)]
enum TopicRole {
    Publisher { topic: PortName, release: ReleaseCounter },
    Subscriber { pattern: NamePattern, queue: SubscriberQueue, window: SendWindow },
}

/// A topic link's slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) struct TopicKey(pub(super) usize);

impl EventLoop {
    pub(super) fn create_topic(
        &mut self,
        key: NodeKey,
        request: u32,
        topic: PortName,
        history: u32,
    ) {
        if self.refuse_if_taken(key, request, &topic, "topic") {
            return;
        }
        let entry = self.topics.entry(topic).or_insert_with(|| Topic::new(history));
        entry.keep = history as usize;
        while entry.history.len() > entry.keep {
            entry.forget_oldest();
        }
        self.queue(key, &ControlMessage::Ok { request }, Vec::new());
    }

    pub(super) fn publish_link(&mut self, key: NodeKey, request: u32, topic: PortName) {
        if self.refuse_if_taken(key, request, &topic, "topic") {
            return;
        }
        let (role, spec) = self.publisher_role(topic);
        self.add_topic_link(key, request, role, spec);
    }

    pub(super) fn subscribe_link(
        &mut self,
        key: NodeKey,
        request: u32,
        pattern: &str,
        capacity: u32,
        drop_newest: bool,
    ) {
        let Ok(parsed) = NamePattern::parse(pattern) else {
            let detail = format!("not a topic pattern: {pattern:?}");
            return self.refuse(key, request, ControlErrorCode::InvalidName, &detail);
        };
        let (role, spec) = self.subscriber_role(parsed, capacity, drop_newest);
        let slot = self.add_topic_link(key, request, role, spec);
        if let Some(slot) = slot {
            self.pump(slot);
        }
    }

    /// Makes `link` the broker's end of a publishing link to `topic` (created if needed) for
    /// `peer`, a node of another host (docs/network.md §5); how the topic takes messages.
    pub(super) fn attach_publisher(
        &mut self,
        link: UnixLink,
        peer: PeerIdentity,
        topic: PortName,
    ) -> PortSpec {
        let (role, spec) = self.publisher_role(topic);
        self.attach_topic_link(link, peer, role);
        spec
    }

    /// Makes `link` the broker's end of a subscription to `pattern` for `peer`, a node of
    /// another host; how the broker sends to it.
    pub(super) fn attach_subscriber(
        &mut self,
        link: UnixLink,
        peer: PeerIdentity,
        pattern: NamePattern,
        capacity: u32,
        drop_newest: bool,
    ) -> PortSpec {
        let (role, spec) = self.subscriber_role(pattern, capacity, drop_newest);
        let slot = self.attach_topic_link(link, peer, role);
        self.pump(slot);
        spec
    }

    /// A publisher's role on `topic` (created if it does not exist) and its link's spec.
    fn publisher_role(&mut self, topic: PortName) -> (TopicRole, PortSpec) {
        self.topics.entry(topic.clone()).or_insert_with(|| Topic::new(0));
        let spec = PortSpec {
            capacity: Capacity::Bounded(PUBLISHER_WINDOW),
            overflow: Overflow::Block,
            // A publication adds the publisher's identity and the topic to the body (§2.9).
            message_size: Some(self.config.max_message_size.saturating_sub(PUBLICATION_HEADER)),
            delivery: Delivery::Reliable,
        };
        (TopicRole::Publisher { topic, release: ReleaseCounter::new(&spec) }, spec)
    }

    /// A subscriber's role on `pattern`, its queue holding what matching topics keep, and its
    /// link's spec.
    fn subscriber_role(
        &self,
        pattern: NamePattern,
        capacity: u32,
        drop_newest: bool,
    ) -> (TopicRole, PortSpec) {
        // The subscriber's own receive side: the broker sends within this window.
        let capacity = capacity.clamp(1, MAX_SUBSCRIBER_CAPACITY);
        let spec = PortSpec {
            capacity: Capacity::Bounded(capacity),
            overflow: if drop_newest { Overflow::Fail } else { Overflow::DropOldest },
            message_size: Some(self.config.max_message_size),
            delivery: Delivery::Reliable,
        };
        let mut queue =
            SubscriberQueue::new(capacity, self.config.policy.limits().queued_bytes, drop_newest);
        // Late joiners get what matching topics keep.
        for (name, topic) in &self.topics {
            if pattern.matches(name) {
                for message in &topic.history {
                    queue.push(message.clone());
                }
            }
        }
        (TopicRole::Subscriber { pattern, queue, window: SendWindow::new(&spec) }, spec)
    }

    fn add_topic_link(
        &mut self,
        key: NodeKey,
        request: u32,
        role: TopicRole,
        spec: PortSpec,
    ) -> Option<TopicKey> {
        let peer = self.registry.identity(key)?;
        if !self.has_link_room(key, request) {
            return None;
        }
        let (ours, theirs) = self.broker_link_pair(key, request)?;
        let slot = self.attach_topic_link(ours, peer, role);
        let id = self.registry.allocate_link_id();
        self.hand_broker_link(key, request, id, spec, theirs);
        Some(slot)
    }

    fn attach_topic_link(
        &mut self,
        link: UnixLink,
        peer: PeerIdentity,
        role: TopicRole,
    ) -> TopicKey {
        let link = TopicLink {
            link,
            peer,
            role,
            decoder: FrameDecoder::new(self.config.max_message_size),
            out: OutQueue::default(),
        };
        match self.topic_links.iter().position(Option::is_none) {
            Some(free) => {
                self.topic_links[free] = Some(link);
                TopicKey(free)
            }
            None => {
                self.topic_links.push(Some(link));
                TopicKey(self.topic_links.len() - 1)
            }
        }
    }

    pub(super) fn topic_interest(link: &TopicLink) -> Interest {
        if link.out.is_empty() {
            Interest::READ
        } else {
            Interest::BOTH
        }
    }

    /// Serves a ready topic link: writes what waits, reads and handles what came.
    pub(super) fn service_topic(&mut self, key: TopicKey) {
        self.flush_topic(key);
        for _ in 0..MAX_READS_PER_ROUND {
            let Some(link) = self.topic_links.get_mut(key.0).and_then(Option::as_mut) else {
                return;
            };
            match link.link.read_into(&mut link.decoder, Wait::NonBlocking) {
                Ok(_) => {}
                Err(TransportError::WouldBlock) => break,
                Err(_) => {
                    self.handle_topic_frames(key);
                    return self.close_topic(key);
                }
            }
            self.handle_topic_frames(key);
        }
        self.flush_topic(key);
    }

    fn handle_topic_frames(&mut self, key: TopicKey) {
        loop {
            let Some(link) = self.topic_links.get_mut(key.0).and_then(Option::as_mut) else {
                return;
            };
            let frame = match link.decoder.poll_frame() {
                // The broker's links are Unix links: a payload elsewhere breaks the protocol.
                Ok(Some(frame)) if frame.header.placement == Placement::Inline => frame,
                Ok(None) => return,
                Ok(Some(_)) | Err(_) => return self.close_topic(key),
            };
            let header = frame.header;
            match (&mut link.role, header.kind) {
                (
                    TopicRole::Publisher { topic, release },
                    FrameKind::Oneway | FrameKind::Confirmed,
                ) => {
                    let len = frame.body.len() as u64;
                    let message = Published {
                        topic: topic.clone(),
                        msg_type: header.msg_type,
                        priority: header.priority,
                        body: Arc::new(frame.body),
                        sender: link.peer,
                    };
                    // Copied to every queue: the publisher's message is released at once.
                    release.on_release(len);
                    if let Some(credit) = release.poll_credit(header.kind == FrameKind::Confirmed) {
                        link.out.push(encode(FrameKind::Credit, 0, 0, 0, &credit.to_bytes()));
                        release.credit_sent(credit);
                    }
                    self.fan_out(&message);
                }
                (TopicRole::Publisher { release, .. }, FrameKind::Credit)
                    if frame.body.is_empty() =>
                {
                    if let Some(credit) = release.poll_credit(true) {
                        link.out.push(encode(FrameKind::Credit, 0, 0, 0, &credit.to_bytes()));
                        release.credit_sent(credit);
                    }
                }
                (TopicRole::Subscriber { window, .. }, FrameKind::Credit) => {
                    let accepted = Credit::decode(&frame.body)
                        .ok()
                        .is_some_and(|credit| window.handle_credit(credit).is_ok());
                    if !accepted {
                        return self.close_topic(key);
                    }
                    self.pump(key);
                }
                // Anything else breaks the topic protocol: the link goes.
                _ => return self.close_topic(key),
            }
        }
    }

    /// Copies a published message to the topic's history and to every matching subscriber.
    fn fan_out(&mut self, message: &Published) {
        let max_bytes = self.config.policy.limits().queued_bytes;
        if let Some(topic) = self.topics.get_mut(&message.topic) {
            topic.remember(message, max_bytes);
        }
        for index in 0..self.topic_links.len() {
            let matched = match self.topic_links[index].as_mut().map(|l| &mut l.role) {
                Some(TopicRole::Subscriber { pattern, queue, .. })
                    if pattern.matches(&message.topic) =>
                {
                    queue.push(message.clone());
                    true
                }
                _ => false,
            };
            if matched {
                self.pump(TopicKey(index));
            }
        }
    }

    /// Sends a subscriber what its window allows, while what waits to be written stays under
    /// [`OUT_LIMIT`]: the rest stays in its queue, which the quota bounds by bytes (a
    /// subscriber that does not read costs the broker its quota, not more).
    fn pump(&mut self, key: TopicKey) {
        let Some(link) = self.topic_links.get_mut(key.0).and_then(Option::as_mut) else { return };
        let TopicRole::Subscriber { queue, window, .. } = &mut link.role else { return };
        let mut waiting = link.out.unwritten();
        while waiting < OUT_LIMIT && window.admit(0) == postbox_core::Admission::Now {
            let Some(message) = queue.pop() else { break };
            let lost = std::mem::take(&mut queue.lost_unreported);
            // The body: the publisher's identity, the topic, then the message (§2.9).
            let sender = message.sender;
            let mut body =
                Vec::with_capacity(16 + 2 + message.topic.as_str().len() + message.body.len());
            for word in
                [sender.process_id.pid, sender.process_id.generation, sender.uid, sender.gid]
            {
                body.extend_from_slice(&word.to_le_bytes());
            }
            let topic = message.topic.as_str().as_bytes();
            // Topic names are at most 255 bytes (PortName), so the cast cannot truncate.
            body.extend_from_slice(&(topic.len() as u16).to_le_bytes());
            body.extend_from_slice(topic);
            body.extend_from_slice(&message.body);
            let frame = encode(FrameKind::Oneway, message.msg_type, message.priority, lost, &body);
            waiting += frame.len();
            link.out.push(frame);
            window.on_sent(0);
        }
    }

    fn flush_topic(&mut self, key: TopicKey) {
        let Some(link) = self.topic_links.get_mut(key.0).and_then(Option::as_mut) else { return };
        // The peer gone, a publisher's unread frames still reach the topic.
        if link.out.flush(&link.link).is_err() && matches!(link.role, TopicRole::Subscriber { .. })
        {
            self.close_topic(key);
        }
    }

    pub(super) fn flush_topics(&mut self) {
        for index in 0..self.topic_links.len() {
            self.flush_topic(TopicKey(index));
            // Room written out lets what waits in the subscriber's queue follow.
            self.pump(TopicKey(index));
            self.flush_topic(TopicKey(index));
        }
    }

    fn close_topic(&mut self, key: TopicKey) {
        if let Some(link) = self.topic_links.get_mut(key.0).and_then(Option::take) {
            link.link.shutdown();
        }
    }
}

impl EventLoop {
    /// The topics, for `ls`: owned by the broker; connections are the links to each topic
    /// (its publishers) plus the subscriptions whose pattern matches it.
    pub(super) fn topic_entries(&self) -> Vec<postbox_core::PortEntry> {
        self.topics
            .keys()
            .map(|name| {
                let links = self
                    .topic_links
                    .iter()
                    .flatten()
                    .filter(|l| match &l.role {
                        TopicRole::Publisher { topic, .. } => topic == name,
                        TopicRole::Subscriber { pattern, .. } => pattern.matches(name),
                    })
                    .count();
                postbox_core::PortEntry {
                    name: name.clone(),
                    owner: self.identity,
                    connections: u32::try_from(links).unwrap_or(u32::MAX),
                    kind: postbox_core::EndpointKind::Topic,
                }
            })
            .collect()
    }
}

/// Bytes a publication may put before the message's body: identity, then a topic name.
const PUBLICATION_HEADER: u32 = 16 + 2 + postbox_core::PortName::MAX_LEN as u32;
/// One-way messages a publisher may have in flight to the broker.
const PUBLISHER_WINDOW: u32 = 1024;
/// Reads from one topic link before the others get a turn.
const MAX_READS_PER_ROUND: usize = 16;

/// Bytes of frames waiting to be written to one subscriber before more are taken from its
/// queue.
const OUT_LIMIT: usize = 256 * 1024;

/// The most messages a subscriber's queue at the broker may be asked to hold (its byte quota
/// applies as well).
const MAX_SUBSCRIBER_CAPACITY: u32 = 1 << 16;
