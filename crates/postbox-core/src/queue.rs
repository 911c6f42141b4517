//! The receive queue of a port: highest priority first, FIFO within a priority (POSIX message
//! queues), with selective receive by sender and by message type (SysV `msgrcv`).

use std::collections::VecDeque;

use crate::identity::ProcessId;
use crate::wire::frame::MAX_PRIORITY;

/// Which queued messages a receive may take.
///
/// # Examples
/// ```
/// use postbox_core::{ProcessId, Selector, TypeFilter};
///
/// let any = Selector::ANY;
/// let from_one = Selector::from_sender(ProcessId::new(42, 1));
/// let urgent_kinds = Selector::ANY.type_at_most(3); // lowest type ≤ 3 first, like msgrcv(-3)
/// assert_eq!(urgent_kinds.msg_type, TypeFilter::AtMost(3));
/// # let _ = (any, from_one);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Selector {
    /// Only messages from this sender (symmetric addressing); `None` for any sender.
    pub sender: Option<ProcessId>,
    /// Which message types.
    pub msg_type: TypeFilter,
}

/// Selection by message type, after SysV `msgrcv`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum TypeFilter {
    /// Any type (`msgtyp == 0`).
    #[default]
    Any,
    /// Exactly this type (`msgtyp > 0`).
    Exact(u32),
    /// The lowest type that is at most this value (`msgtyp < 0`); among messages of that type,
    /// the usual order (highest priority, then oldest).
    AtMost(u32),
}

/// What the queue knows of each message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct QueuedMeta {
    /// Who sent it.
    pub sender: ProcessId,
    /// Its type tag.
    pub msg_type: u32,
    /// Its priority, 0 to 31.
    pub priority: u8,
}

impl Selector {
    /// Any message: highest priority first, oldest first within a priority.
    pub const ANY: Self = Self { sender: None, msg_type: TypeFilter::Any };

    /// Messages from `sender` only.
    #[must_use]
    pub const fn from_sender(sender: ProcessId) -> Self {
        Self { sender: Some(sender), msg_type: TypeFilter::Any }
    }

    /// Narrows to messages of exactly type `msg_type`.
    #[must_use]
    pub const fn of_type(mut self, msg_type: u32) -> Self {
        self.msg_type = TypeFilter::Exact(msg_type);
        self
    }

    /// Narrows to the lowest type that is at most `max_type`.
    #[must_use]
    pub const fn type_at_most(mut self, max_type: u32) -> Self {
        self.msg_type = TypeFilter::AtMost(max_type);
        self
    }

    /// True when a message with `meta` may be taken (before the "lowest type" rule of
    /// [`TypeFilter::AtMost`], which compares messages with each other).
    #[must_use]
    pub fn accepts(&self, meta: &QueuedMeta) -> bool {
        let sender_ok = self.sender.is_none_or(|s| s == meta.sender);
        let type_ok = match self.msg_type {
            TypeFilter::Any => true,
            TypeFilter::Exact(t) => meta.msg_type == t,
            TypeFilter::AtMost(t) => meta.msg_type <= t,
        };
        sender_ok && type_ok
    }
}

/// Messages that arrived at a port and were not yet received: one FIFO lane per priority.
#[derive(Debug)]
pub struct PortQueue<T> {
    lanes: Vec<VecDeque<(u64, QueuedMeta, T)>>,
    /// Bit `p` set when lane `p` holds anything.
    occupied: u32,
    len: usize,
    arrivals: u64,
}

impl<T> Default for PortQueue<T> {
    fn default() -> Self {
        let lanes = (0..=MAX_PRIORITY).map(|_| VecDeque::new()).collect();
        Self { lanes, occupied: 0, len: 0, arrivals: 0 }
    }
}

impl<T> PortQueue<T> {
    /// An empty queue.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Queues `item`; a priority above 31 counts as 31.
    pub fn push(&mut self, meta: QueuedMeta, item: T) {
        let lane = usize::from(meta.priority.min(MAX_PRIORITY));
        self.lanes[lane].push_back((self.arrivals, meta, item));
        self.occupied |= 1 << lane;
        self.arrivals += 1;
        self.len += 1;
    }

    /// Queues `item` ahead of everything of its priority, as the oldest (a message handed back
    /// after a failed delivery).
    pub fn push_front(&mut self, meta: QueuedMeta, item: T) {
        let lane = usize::from(meta.priority.min(MAX_PRIORITY));
        self.lanes[lane].push_front((0, meta, item));
        self.occupied |= 1 << lane;
        self.len += 1;
    }

    /// Takes the message `selector` picks: among those it accepts (for
    /// [`TypeFilter::AtMost`], those of the lowest accepted type), the highest priority, and
    /// within it the oldest.
    pub fn pop(&mut self, selector: Selector) -> Option<(QueuedMeta, T)> {
        if self.len == 0 {
            return None;
        }
        let wanted = match selector.msg_type {
            TypeFilter::AtMost(_) => {
                let lowest =
                    self.iter_meta().filter(|m| selector.accepts(m)).map(|m| m.msg_type).min()?;
                Selector { msg_type: TypeFilter::Exact(lowest), ..selector }
            }
            _ => selector,
        };
        if wanted == Selector::ANY {
            // The highest lane with anything in it, straight from the mask (`len > 0`).
            let lane = (u32::BITS - 1 - self.occupied.leading_zeros()) as usize;
            return self.take_at(lane, 0);
        }
        for lane in (0..self.lanes.len()).rev() {
            let found = self.lanes[lane].iter().position(|(_, meta, _)| wanted.accepts(meta));
            if let Some(position) = found {
                return self.take_at(lane, position);
            }
        }
        None
    }

    /// Takes the first message, by priority then age, that `pick` accepts: the others stay
    /// where they are (a mailbox skips what one receiver cannot take, for the others).
    pub fn pop_where(
        &mut self,
        mut pick: impl FnMut(&QueuedMeta, &T) -> bool,
    ) -> Option<(QueuedMeta, T)> {
        for lane in (0..self.lanes.len()).rev() {
            let found = self.lanes[lane].iter().position(|(_, meta, item)| pick(meta, item));
            if let Some(position) = found {
                return self.take_at(lane, position);
            }
        }
        None
    }

    /// Removes the item at `position` of `lane`, keeping the mask of occupied lanes.
    fn take_at(&mut self, lane: usize, position: usize) -> Option<(QueuedMeta, T)> {
        let taken = self.lanes[lane].remove(position)?;
        self.len -= 1;
        if self.lanes[lane].is_empty() {
            self.occupied &= !(1 << lane);
        }
        Some((taken.1, taken.2))
    }

    /// Removes the earliest-arrived item, whatever its priority, that `pick` accepts (for
    /// overflow by drop-oldest).
    pub fn remove_oldest(
        &mut self,
        mut pick: impl FnMut(&QueuedMeta, &T) -> bool,
    ) -> Option<(QueuedMeta, T)> {
        let (lane, position) = self
            .lanes
            .iter()
            .enumerate()
            .filter_map(|(l, lane)| {
                lane.iter().position(|(_, meta, item)| pick(meta, item)).map(|p| (lane[p].0, l, p))
            })
            .min()
            .map(|(_, l, p)| (l, p))?;
        self.take_at(lane, position)
    }

    /// Removes every item `drop` says to, keeping the order of the rest; returns how many.
    pub fn remove_where(&mut self, mut drop: impl FnMut(&QueuedMeta, &T) -> bool) -> usize {
        let before = self.len;
        for lane in &mut self.lanes {
            lane.retain(|(_, meta, item)| !drop(meta, item));
        }
        self.len = self.lanes.iter().map(VecDeque::len).sum();
        self.occupied = (0..self.lanes.len())
            .filter(|&lane| !self.lanes[lane].is_empty())
            .fold(0, |mask, lane| mask | 1 << lane);
        before - self.len
    }

    /// Number of queued items.
    #[must_use]
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when nothing is queued.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn iter_meta(&self) -> impl Iterator<Item = &QueuedMeta> {
        self.lanes.iter().flat_map(|lane| lane.iter().map(|(_, meta, _)| meta))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(sender: u32, msg_type: u32, priority: u8) -> QueuedMeta {
        QueuedMeta { sender: ProcessId::new(sender, 1), msg_type, priority }
    }

    #[test]
    fn higher_priorities_come_first_and_each_priority_is_fifo() {
        let mut q = PortQueue::new();
        q.push(meta(1, 0, 0), "low-1");
        q.push(meta(1, 0, 31), "top");
        q.push(meta(2, 0, 0), "low-2");
        q.push(meta(2, 0, 5), "mid");
        let order: Vec<_> = std::iter::from_fn(|| q.pop(Selector::ANY).map(|(_, x)| x)).collect();
        assert_eq!(order, ["top", "mid", "low-1", "low-2"]);
    }

    #[test]
    fn selective_receive_skips_other_senders_and_keeps_their_order() {
        let (a, b) = (ProcessId::new(1, 1), ProcessId::new(2, 1));
        let mut q = PortQueue::new();
        q.push(meta(1, 0, 0), "a1");
        q.push(meta(2, 0, 0), "b1");
        q.push(meta(1, 0, 0), "a2");
        q.push(meta(2, 0, 0), "b2");
        let from_b = Selector::from_sender(b);
        assert_eq!(q.pop(from_b).map(|x| x.1), Some("b1"));
        assert_eq!(q.pop(from_b).map(|x| x.1), Some("b2"));
        assert_eq!(q.pop(from_b).map(|x| x.1), None);
        assert_eq!(q.pop(Selector::from_sender(a)).map(|x| x.1), Some("a1"));
        assert_eq!(q.pop(Selector::ANY).map(|x| x.1), Some("a2"));
        assert!(q.is_empty());
    }

    #[test]
    fn drop_oldest_takes_the_earliest_arrival_across_priorities() {
        let mut q = PortQueue::new();
        q.push(meta(1, 0, 9), "first, high");
        q.push(meta(2, 0, 0), "other sender");
        q.push(meta(1, 0, 0), "second, low");
        let from_1 = |m: &QueuedMeta, _: &&str| m.sender == ProcessId::new(1, 1);
        assert_eq!(q.remove_oldest(from_1).map(|x| x.1), Some("first, high"));
        assert_eq!(q.remove_oldest(from_1).map(|x| x.1), Some("second, low"));
        assert_eq!(q.remove_oldest(from_1), None);
        assert_eq!(q.len(), 1);
    }

    #[test]
    fn pop_where_skips_what_it_does_not_pick_and_keeps_the_order_of_the_rest() {
        let mut q = PortQueue::new();
        q.push(meta(1, 0, 0), "large, low");
        q.push(meta(1, 0, 5), "large, high");
        q.push(meta(1, 0, 0), "small, low");
        q.push(meta(1, 0, 5), "small, high");
        let small = |_: &QueuedMeta, item: &&str| item.starts_with("small");
        assert_eq!(q.pop_where(small).map(|x| x.1), Some("small, high"));
        assert_eq!(q.pop_where(small).map(|x| x.1), Some("small, low"));
        assert_eq!(q.pop_where(small), None);
        assert_eq!(q.pop(Selector::ANY).map(|x| x.1), Some("large, high"));
        assert_eq!(q.pop(Selector::ANY).map(|x| x.1), Some("large, low"));
    }

    #[test]
    fn type_selection_follows_msgrcv() {
        let mut q = PortQueue::new();
        q.push(meta(1, 7, 0), "seven");
        q.push(meta(1, 3, 0), "three-low");
        q.push(meta(1, 5, 9), "five");
        q.push(meta(1, 3, 4), "three-high");
        assert_eq!(q.pop(Selector::ANY.of_type(5)).map(|x| x.1), Some("five"));
        assert_eq!(q.pop(Selector::ANY.of_type(4)).map(|x| x.1), None);
        // Lowest type ≤ 6 is 3; of the two, the higher priority first.
        assert_eq!(q.pop(Selector::ANY.type_at_most(6)).map(|x| x.1), Some("three-high"));
        assert_eq!(q.pop(Selector::ANY.type_at_most(6)).map(|x| x.1), Some("three-low"));
        assert_eq!(q.pop(Selector::ANY.type_at_most(6)).map(|x| x.1), None);
        assert_eq!(q.len(), 1);
    }
}
