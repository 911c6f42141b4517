//! The receiving half of one reliable stream: in-order delivery through a reorder buffer,
//! duplicate suppression, and the acknowledgement that describes it.

use std::collections::BTreeMap;

use super::body::{AckRange, MAX_ACK_RANGES};
use super::ids::MessageId;

/// What a receiver delivered and what it holds beyond the first gap.
///
/// Anything at or below `delivered`, or already held, is a duplicate: dropped, but the stream
/// still owes an ack (the sender evidently missed the last one). Anything further than `window`
/// beyond `delivered` is dropped too, so memory stays bounded; the sender never sends that far
/// ahead unless its window is larger than ours, and then it retransmits later.
#[derive(Debug)]
pub(crate) struct RecvStream {
    delivered: u64,
    held: BTreeMap<u64, Vec<u8>>,
    /// What `held` costs: each entry's payload plus [`HELD_OVERHEAD`].
    held_bytes: usize,
    ack_owed: bool,
}

/// What holding one message costs beyond its payload (the map entry, the `Vec`), charged
/// against the held budget so that empty payloads are not free.
pub(crate) const HELD_OVERHEAD: usize = 64;

/// The cost of holding a message of `len` payload bytes.
pub(crate) fn held_cost(len: usize) -> usize {
    len.saturating_add(HELD_OVERHEAD)
}

/// What one arriving message did.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Arrival {
    /// These messages are now delivered, in order (the arrival and what it unblocked).
    Delivered(Vec<(MessageId, Vec<u8>)>),
    /// Held until the gap below it is filled.
    Held,
    /// Already delivered or held: dropped.
    Duplicate,
    /// Too far ahead of the delivered point: dropped.
    BeyondWindow,
}

impl RecvStream {
    /// A stream that has delivered nothing and expects id 1.
    pub(crate) fn new() -> Self {
        Self { delivered: 0, held: BTreeMap::new(), held_bytes: 0, ack_owed: false }
    }

    /// Takes one arriving message; every arrival makes the stream owe an ack. A message that
    /// would be held is dropped instead (as `BeyondWindow`) when `may_hold` is false: the
    /// session's budget for held bytes is spent.
    pub(crate) fn handle_data(
        &mut self,
        id: MessageId,
        payload: Vec<u8>,
        window: u64,
        may_hold: bool,
    ) -> Arrival {
        self.ack_owed = true;
        let id = id.0;
        if id <= self.delivered || self.held.contains_key(&id) {
            return Arrival::Duplicate;
        }
        if id - self.delivered > window {
            return Arrival::BeyondWindow;
        }
        if id != self.delivered + 1 {
            if !may_hold {
                return Arrival::BeyondWindow;
            }
            self.held_bytes += held_cost(payload.len());
            self.held.insert(id, payload);
            return Arrival::Held;
        }
        self.delivered = id;
        let mut out = vec![(MessageId(id), payload)];
        while let Some(payload) = self.held.remove(&(self.delivered + 1)) {
            self.held_bytes -= held_cost(payload.len());
            self.delivered += 1;
            out.push((MessageId(self.delivered), payload));
        }
        Arrival::Delivered(out)
    }

    /// The highest id delivered in order (0: none).
    pub(crate) fn delivered(&self) -> MessageId {
        MessageId(self.delivered)
    }

    /// The held ranges, lowest first, at most [`MAX_ACK_RANGES`].
    pub(crate) fn held_ranges(&self) -> Vec<AckRange> {
        let mut ranges: Vec<AckRange> = Vec::new();
        for &id in self.held.keys() {
            if let Some(last) = ranges.last_mut().filter(|last| last.last.0 + 1 == id) {
                last.last = MessageId(id);
            } else if ranges.len() == MAX_ACK_RANGES {
                break;
            } else {
                ranges.push(AckRange { first: MessageId(id), last: MessageId(id) });
            }
        }
        ranges
    }

    /// What the messages held beyond the first gap cost (see [`held_cost`]).
    pub(crate) fn held_bytes(&self) -> usize {
        self.held_bytes
    }

    /// How many messages are held beyond the first gap.
    #[cfg(test)]
    pub(crate) fn held_count(&self) -> usize {
        self.held.len()
    }

    /// Whether an ack is owed.
    pub(crate) fn is_ack_owed(&self) -> bool {
        self.ack_owed
    }

    /// Whether an ack is owed; clears the debt.
    pub(crate) fn take_ack_owed(&mut self) -> bool {
        std::mem::take(&mut self.ack_owed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(arrival: Arrival) -> Vec<u64> {
        match arrival {
            Arrival::Delivered(list) => list.into_iter().map(|(id, _)| id.0).collect(),
            other => panic!("expected a delivery, got {other:?}"),
        }
    }

    #[test]
    fn out_of_order_arrivals_are_delivered_in_order_once() {
        let mut r = RecvStream::new();
        assert_eq!(r.handle_data(MessageId(3), b"c".to_vec(), 8, true), Arrival::Held);
        assert_eq!(r.handle_data(MessageId(2), b"b".to_vec(), 8, true), Arrival::Held);
        assert_eq!(r.handle_data(MessageId(3), b"c".to_vec(), 8, true), Arrival::Duplicate);
        assert_eq!(ids(r.handle_data(MessageId(1), b"a".to_vec(), 8, true)), vec![1, 2, 3]);
        assert_eq!(r.handle_data(MessageId(2), b"b".to_vec(), 8, true), Arrival::Duplicate);
        assert_eq!(r.handle_data(MessageId(0), b"?".to_vec(), 8, true), Arrival::Duplicate);
        assert_eq!(r.delivered(), MessageId(3));
        assert_eq!(r.held_bytes(), 0);
    }

    #[test]
    fn every_arrival_owes_an_ack_even_a_duplicate() {
        let mut r = RecvStream::new();
        assert!(!r.take_ack_owed());
        r.handle_data(MessageId(1), vec![], 8, true);
        assert!(r.take_ack_owed());
        assert!(!r.take_ack_owed());
        r.handle_data(MessageId(1), vec![], 8, true);
        assert!(r.take_ack_owed());
    }

    #[test]
    fn messages_beyond_the_window_are_dropped() {
        let mut r = RecvStream::new();
        assert_eq!(r.handle_data(MessageId(9), vec![], 8, true), Arrival::BeyondWindow);
        assert_eq!(r.handle_data(MessageId(u64::MAX), vec![], 8, true), Arrival::BeyondWindow);
        assert_eq!(r.handle_data(MessageId(7), vec![1], 8, false), Arrival::BeyondWindow);
        assert_eq!(r.handle_data(MessageId(8), vec![1], 8, true), Arrival::Held);
        assert_eq!(r.held_bytes(), 1 + HELD_OVERHEAD);
        assert_eq!(r.handle_data(MessageId(7), vec![], 8, true), Arrival::Held);
        assert_eq!((r.held_count(), r.held_bytes()), (2, 1 + 2 * HELD_OVERHEAD));
    }

    #[test]
    fn held_ranges_merge_neighbours_and_are_capped() {
        let mut r = RecvStream::new();
        for id in [3, 4, 5, 7, 10, 11] {
            r.handle_data(MessageId(id), vec![], 100, true);
        }
        let ranges: Vec<_> = r.held_ranges().iter().map(|r| (r.first.0, r.last.0)).collect();
        assert_eq!(ranges, vec![(3, 5), (7, 7), (10, 11)]);
        for id in (20..100).step_by(2) {
            r.handle_data(MessageId(id), vec![], 100, true);
        }
        assert_eq!(r.held_ranges().len(), MAX_ACK_RANGES);
    }
}
