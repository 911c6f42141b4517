//! Mailboxes: queues the broker owns. They outlive the nodes that use them (until unlinked),
//! take messages from many senders, and hand each message to exactly one receiver.
//!
//! A receiver pulls (a call on its receiving link); the mailbox answers with the next message
//! by priority and keeps it *in flight* until the receiver acknowledges it. A receiver that
//! goes away with messages in flight gives them back: they are delivered to another receiver.
//! This module is the bookkeeping only; the event loop moves the bytes.

use std::collections::{HashMap, VecDeque};
use std::time::Instant;

use postbox_core::{LinkId, PeerIdentity, PortQueue, ProcessId, QueuedMeta, Selector};

/// A data link of the broker's (an end it keeps of a link to a mailbox).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct DataKey(pub(crate) usize);

/// A message held by a mailbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Stored {
    pub(crate) msg_type: u32,
    pub(crate) priority: u8,
    pub(crate) body: Vec<u8>,
    pub(crate) sender: PeerIdentity,
    /// The link it came in on, to credit when it leaves (the slot, and the link's id, since
    /// a slot is reused once its link is gone).
    pub(crate) from: DataKey,
    pub(crate) from_link: LinkId,
    /// Its sender waits until it is taken.
    pub(crate) confirm: bool,
}

/// A receiver waiting for a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Pull {
    link: DataKey,
    correlation: u64,
    deadline: Option<Instant>,
    /// The largest body the receiver can be given (a remote receiver's: what crosses hosts).
    max_body: usize,
}

/// What the event loop must tell a receiver.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Answer {
    /// Deliver the message now in flight under (link, correlation).
    Deliver { link: DataKey, correlation: u64 },
    /// Nothing came before the pull's deadline.
    Empty { link: DataKey, correlation: u64 },
}

#[derive(Debug)]
pub(crate) struct Mailbox {
    pub(crate) capacity: u32,
    queue: PortQueue<Stored>,
    in_flight: HashMap<(DataKey, u64), Stored>,
    pulls: VecDeque<Pull>,
    /// Body bytes held (queued and in flight), per sender: what counts against its quota.
    bytes_by_sender: HashMap<ProcessId, u64>,
}

impl Mailbox {
    pub(crate) fn new(capacity: u32) -> Self {
        Self {
            capacity: capacity.max(1),
            queue: PortQueue::new(),
            in_flight: HashMap::new(),
            pulls: VecDeque::new(),
            bytes_by_sender: HashMap::new(),
        }
    }

    /// Messages held: queued and in flight.
    pub(crate) fn held(&self) -> usize {
        self.queue.len() + self.in_flight.len()
    }

    /// Messages queued, not yet handed to a receiver.
    #[cfg(test)]
    pub(crate) fn queued(&self) -> usize {
        self.queue.len()
    }

    pub(crate) fn is_full(&self) -> bool {
        self.held() >= self.capacity as usize
    }

    /// Body bytes held from `sender`.
    pub(crate) fn bytes_from(&self, sender: ProcessId) -> u64 {
        self.bytes_by_sender.get(&sender).copied().unwrap_or(0)
    }

    /// Stores a message (the caller checked [`is_full`](Self::is_full)); returns what it
    /// counts against its sender's quota.
    pub(crate) fn push(&mut self, stored: Stored) -> u64 {
        let held = held_bytes(&stored);
        *self.bytes_by_sender.entry(stored.sender.process_id).or_default() += held;
        let meta = QueuedMeta {
            sender: stored.sender.process_id,
            msg_type: stored.msg_type,
            priority: stored.priority,
        };
        self.queue.push(meta, stored);
        held
    }

    /// Records a receiver's pull for a message with a body of at most `max_body` bytes (a
    /// larger one is left for other receivers); it is answered by
    /// [`poll_answers`](Self::poll_answers).
    pub(crate) fn pull(
        &mut self,
        link: DataKey,
        correlation: u64,
        deadline: Option<Instant>,
        max_body: usize,
    ) {
        self.pulls.push_back(Pull { link, correlation, deadline, max_body });
    }

    /// Matches waiting pulls with queued messages, and expires pulls whose deadline passed.
    pub(crate) fn poll_answers(&mut self, now: Instant) -> Vec<Answer> {
        let mut answers = Vec::new();
        let mut waiting = VecDeque::new();
        while let Some(pull) = self.pulls.pop_front() {
            let taken = if pull.max_body == usize::MAX {
                self.queue.pop(Selector::ANY)
            } else {
                self.queue.pop_where(|_, stored| stored.body.len() <= pull.max_body)
            };
            if let Some((_, stored)) = taken {
                self.in_flight.insert((pull.link, pull.correlation), stored);
                answers.push(Answer::Deliver { link: pull.link, correlation: pull.correlation });
            } else if pull.deadline.is_some_and(|d| d <= now) {
                answers.push(Answer::Empty { link: pull.link, correlation: pull.correlation });
            } else {
                waiting.push_back(pull);
            }
        }
        self.pulls = waiting;
        answers
    }

    /// True when `link` already has a pull, or a message in flight, under `correlation`.
    pub(crate) fn knows(&self, link: DataKey, correlation: u64) -> bool {
        self.in_flight.contains_key(&(link, correlation))
            || self.pulls.iter().any(|p| p.link == link && p.correlation == correlation)
    }

    /// Pulls `link` has waiting.
    pub(crate) fn pulls_of(&self, link: DataKey) -> usize {
        self.pulls.iter().filter(|p| p.link == link).count()
    }

    /// The earliest pull deadline: call [`poll_answers`](Self::poll_answers) then.
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        self.pulls.iter().filter_map(|p| p.deadline).min()
    }

    /// The message in flight under (link, correlation).
    pub(crate) fn in_flight(&self, link: DataKey, correlation: u64) -> Option<&Stored> {
        self.in_flight.get(&(link, correlation))
    }

    /// The receiver took the message: it leaves the mailbox.
    pub(crate) fn ack(&mut self, link: DataKey, correlation: u64) -> Option<Stored> {
        let stored = self.in_flight.remove(&(link, correlation))?;
        let sender = stored.sender.process_id;
        if let Some(bytes) = self.bytes_by_sender.get_mut(&sender) {
            *bytes = bytes.saturating_sub(held_bytes(&stored));
            if *bytes == 0 {
                self.bytes_by_sender.remove(&sender);
            }
        }
        Some(stored)
    }

    /// A receiving link went away: its pulls are forgotten and its messages in flight are
    /// queued again, ahead of the others, for another receiver.
    pub(crate) fn receiver_gone(&mut self, link: DataKey) -> usize {
        self.pulls.retain(|p| p.link != link);
        let returned: Vec<(u64, Stored)> = self
            .in_flight
            .keys()
            .filter(|(l, _)| *l == link)
            .copied()
            .collect::<Vec<_>>()
            .into_iter()
            .filter_map(|key| self.in_flight.remove(&key).map(|s| (key.1, s)))
            .collect();
        let count = returned.len();
        let mut returned = returned;
        // Oldest delivery last, so that pushing each to the front keeps them in order.
        returned.sort_by_key(|(correlation, _)| std::cmp::Reverse(*correlation));
        for (_, stored) in returned {
            let meta = QueuedMeta {
                sender: stored.sender.process_id,
                msg_type: stored.msg_type,
                priority: stored.priority,
            };
            self.queue.push_front(meta, stored);
        }
        count
    }

    /// Every waiting pull, for the answers owed when the mailbox is unlinked.
    pub(crate) fn take_pulls(&mut self) -> Vec<(DataKey, u64)> {
        self.pulls.drain(..).map(|p| (p.link, p.correlation)).collect()
    }
}

/// What a stored message counts against its sender's quota: its body, and what holding it
/// costs besides (so that empty messages are not free).
fn held_bytes(stored: &Stored) -> u64 {
    stored.body.len() as u64 + PER_MESSAGE
}

/// The cost of holding one message beside its body, roughly its bookkeeping.
const PER_MESSAGE: u64 = 64;

#[cfg(test)]
mod tests {
    use super::*;
    use postbox_core::ProcessId;

    fn stored(body: &str, priority: u8) -> Stored {
        Stored {
            msg_type: 0,
            priority,
            body: body.as_bytes().to_vec(),
            sender: PeerIdentity { process_id: ProcessId::new(1, 1), uid: 0, gid: 0 },
            from: DataKey(9),
            from_link: LinkId(9),
            confirm: false,
        }
    }

    #[test]
    fn each_message_goes_to_one_receiver_in_priority_order() {
        let now = Instant::now();
        let mut m = Mailbox::new(10);
        m.push(stored("low", 0));
        m.push(stored("high", 7));
        m.pull(DataKey(1), 1, None, usize::MAX);
        m.pull(DataKey(2), 1, None, usize::MAX);
        m.pull(DataKey(3), 1, Some(now), usize::MAX);
        let answers = m.poll_answers(now);
        assert_eq!(
            answers,
            vec![
                Answer::Deliver { link: DataKey(1), correlation: 1 },
                Answer::Deliver { link: DataKey(2), correlation: 1 },
                Answer::Empty { link: DataKey(3), correlation: 1 },
            ]
        );
        assert_eq!(m.in_flight(DataKey(1), 1).unwrap().body, b"high");
        assert_eq!(m.held(), 2);
        assert!(m.ack(DataKey(1), 1).is_some());
        assert_eq!(m.held(), 1);
    }

    #[test]
    fn a_receiver_that_goes_away_gives_its_messages_back_for_another() {
        let mut m = Mailbox::new(10);
        m.push(stored("a", 0));
        m.push(stored("b", 0));
        m.pull(DataKey(1), 1, None, usize::MAX);
        m.pull(DataKey(1), 2, None, usize::MAX);
        m.poll_answers(Instant::now());
        assert_eq!(m.queued(), 0);
        assert_eq!(m.receiver_gone(DataKey(1)), 2);
        m.pull(DataKey(2), 5, None, usize::MAX);
        m.poll_answers(Instant::now());
        assert_eq!(m.in_flight(DataKey(2), 5).unwrap().body, b"a", "the oldest comes back first");
    }

    #[test]
    fn a_message_too_large_for_one_receiver_waits_for_another_and_blocks_nothing() {
        let now = Instant::now();
        let mut m = Mailbox::new(10);
        m.push(stored("a large one", 0));
        m.push(stored("small", 0));
        m.pull(DataKey(1), 1, None, 5);
        m.pull(DataKey(1), 2, None, 5);
        let answers = m.poll_answers(now);
        assert_eq!(answers, vec![Answer::Deliver { link: DataKey(1), correlation: 1 }]);
        assert_eq!(m.in_flight(DataKey(1), 1).unwrap().body, b"small");
        assert!(m.knows(DataKey(1), 2), "the second pull waits for a message it can take");
        m.pull(DataKey(2), 1, None, usize::MAX);
        assert_eq!(m.poll_answers(now), vec![Answer::Deliver { link: DataKey(2), correlation: 1 }]);
        assert_eq!(m.in_flight(DataKey(2), 1).unwrap().body, b"a large one");
    }

    #[test]
    fn capacity_counts_messages_in_flight_too() {
        let mut m = Mailbox::new(2);
        m.push(stored("a", 0));
        m.pull(DataKey(1), 1, None, usize::MAX);
        m.poll_answers(Instant::now());
        m.push(stored("b", 0));
        assert!(m.is_full());
        m.ack(DataKey(1), 1);
        assert!(!m.is_full());
    }
}
