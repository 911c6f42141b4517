//! Topics: publish/subscribe fan-out owned by the broker. Every subscriber whose pattern
//! matches a topic gets every message published to it, through a queue of its own, so a slow
//! subscriber never holds up the publisher or the other subscribers.

use std::collections::VecDeque;
use std::sync::Arc;

use postbox_core::{PeerIdentity, PortName};

/// A message published to a topic (shared by every subscriber's queue).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Published {
    pub(crate) topic: PortName,
    pub(crate) msg_type: u32,
    pub(crate) priority: u8,
    pub(crate) body: Arc<Vec<u8>>,
    pub(crate) sender: PeerIdentity,
}

/// One subscriber's queue at the broker.
#[derive(Debug)]
pub(crate) struct SubscriberQueue {
    capacity: usize,
    /// Body bytes the queue may hold (the subscriber's quota), whatever the capacity says.
    max_bytes: u64,
    bytes: u64,
    drop_newest: bool,
    queue: VecDeque<Published>,
    /// Dropped since the last message sent to the subscriber (reported with the next one).
    pub(crate) lost_unreported: u64,
}

impl SubscriberQueue {
    pub(crate) fn new(capacity: u32, max_bytes: u64, drop_newest: bool) -> Self {
        Self {
            capacity: capacity.max(1) as usize,
            max_bytes,
            bytes: 0,
            drop_newest,
            queue: VecDeque::new(),
            lost_unreported: 0,
        }
    }

    /// Queues a message; when full (in messages or bytes), drops the oldest (or this one),
    /// counted. A message larger than the byte quota alone is still kept when the queue is
    /// empty, so that a subscriber always gets the newest.
    pub(crate) fn push(&mut self, message: Published) {
        let size = message.body.len() as u64;
        let over = |q: &Self| {
            !q.queue.is_empty()
                && (q.queue.len() >= q.capacity || q.bytes.saturating_add(size) > q.max_bytes)
        };
        if over(self) && self.drop_newest {
            self.lost_unreported += 1;
            return;
        }
        while over(self) {
            self.lost_unreported += 1;
            self.pop();
        }
        self.bytes += size;
        self.queue.push_back(message);
    }

    pub(crate) fn pop(&mut self) -> Option<Published> {
        let message = self.queue.pop_front()?;
        self.bytes -= message.body.len() as u64;
        Some(message)
    }
}

/// A topic: its name and the messages it keeps for late subscribers.
#[derive(Debug)]
pub(crate) struct Topic {
    pub(crate) history: VecDeque<Published>,
    pub(crate) keep: usize,
    /// Body bytes kept.
    bytes: u64,
}

impl Topic {
    pub(crate) fn new(keep: u32) -> Self {
        Self { history: VecDeque::new(), keep: keep as usize, bytes: 0 }
    }

    /// Keeps `message` for late subscribers: the last `keep`, and no more than `max_bytes` of
    /// bodies (the newest always).
    pub(crate) fn remember(&mut self, message: &Published, max_bytes: u64) {
        if self.keep == 0 {
            return;
        }
        self.history.push_back(message.clone());
        self.bytes += message.body.len() as u64;
        while self.history.len() > self.keep || (self.bytes > max_bytes && self.history.len() > 1) {
            self.forget_oldest();
        }
    }

    /// Drops the oldest kept message.
    pub(crate) fn forget_oldest(&mut self) {
        if let Some(old) = self.history.pop_front() {
            self.bytes -= old.body.len() as u64;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use postbox_core::ProcessId;

    fn name(text: &str) -> PortName {
        PortName::new(text).unwrap()
    }

    fn published(body: &str) -> Published {
        Published {
            topic: name("/t"),
            msg_type: 0,
            priority: 0,
            body: Arc::new(body.as_bytes().to_vec()),
            sender: PeerIdentity { process_id: ProcessId::new(1, 1), uid: 0, gid: 0 },
        }
    }

    #[test]
    fn a_full_subscriber_queue_drops_and_counts() {
        let mut oldest = SubscriberQueue::new(2, u64::MAX, false);
        let mut newest = SubscriberQueue::new(2, u64::MAX, true);
        for body in ["1", "2", "3"] {
            oldest.push(published(body));
            newest.push(published(body));
        }
        assert_eq!((oldest.lost_unreported, newest.lost_unreported), (1, 1));
        assert_eq!(oldest.pop().unwrap().body.as_slice(), b"2");
        assert_eq!(newest.pop().unwrap().body.as_slice(), b"1");
    }

    #[test]
    fn a_subscriber_queue_holds_no_more_bytes_than_its_quota() {
        let mut queue = SubscriberQueue::new(100, 5, false);
        for body in ["aa", "bb", "cc", "dddddddd"] {
            queue.push(published(body));
        }
        assert_eq!(queue.lost_unreported, 3, "each arrival pushed the oldest out");
        assert_eq!(queue.pop().unwrap().body.as_slice(), b"dddddddd", "the newest stays");
        assert!(queue.pop().is_none());
    }

    #[test]
    fn a_topic_keeps_no_more_bytes_than_its_limit_but_always_the_newest() {
        let mut topic = Topic::new(100);
        for body in ["aaa", "bbb", "cccc", "dddddddd"] {
            topic.remember(&published(body), 7);
        }
        let kept: Vec<&[u8]> = topic.history.iter().map(|m| m.body.as_slice()).collect();
        assert_eq!(kept, [b"dddddddd"]);
    }

    #[test]
    fn a_topic_keeps_its_last_messages() {
        let mut topic = Topic::new(2);
        for body in ["1", "2", "3"] {
            topic.remember(&published(body), u64::MAX);
        }
        let kept: Vec<&[u8]> = topic.history.iter().map(|m| m.body.as_slice()).collect();
        assert_eq!(kept, [b"2", b"3"]);
    }
}
