//! The receive queue of a port: FIFO per sender link, with selective receive by sender.

use std::collections::VecDeque;

use crate::identity::ProcessId;

/// Which queued message a receive may take.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Selector {
    /// The oldest message from any sender (asymmetric addressing).
    Any,
    /// The oldest message from this sender only (symmetric addressing).
    From(ProcessId),
}

impl Selector {
    /// True when a message from `sender` may be taken.
    #[must_use]
    pub fn accepts(&self, sender: ProcessId) -> bool {
        match self {
            Self::Any => true,
            Self::From(wanted) => *wanted == sender,
        }
    }
}

/// Messages that arrived at a port and were not yet received.
///
/// Order is arrival order; a receive with [`Selector::From`] skips other senders' messages
/// and leaves them queued in their order.
#[derive(Debug)]
pub struct PortQueue<T> {
    items: VecDeque<(ProcessId, T)>,
}

impl<T> Default for PortQueue<T> {
    fn default() -> Self {
        Self { items: VecDeque::new() }
    }
}

impl<T> PortQueue<T> {
    /// An empty queue.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Queues `item`, which came from `sender`.
    pub fn push(&mut self, sender: ProcessId, item: T) {
        self.items.push_back((sender, item));
    }

    /// Takes the oldest item `selector` accepts.
    pub fn pop(&mut self, selector: Selector) -> Option<(ProcessId, T)> {
        let index = match selector {
            Selector::Any => 0,
            Selector::From(_) => self.items.iter().position(|(s, _)| selector.accepts(*s))?,
        };
        self.items.remove(index)
    }

    /// Number of queued items.
    #[must_use]
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// True when nothing is queued.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selective_receive_skips_other_senders_and_keeps_their_order() {
        let (a, b) = (ProcessId::new(1, 1), ProcessId::new(2, 1));
        let mut q = PortQueue::new();
        q.push(a, "a1");
        q.push(b, "b1");
        q.push(a, "a2");
        q.push(b, "b2");
        assert_eq!(q.pop(Selector::From(b)), Some((b, "b1")));
        assert_eq!(q.pop(Selector::From(b)), Some((b, "b2")));
        assert_eq!(q.pop(Selector::From(b)), None);
        assert_eq!(q.pop(Selector::Any), Some((a, "a1")));
        assert_eq!(q.pop(Selector::Any), Some((a, "a2")));
        assert!(q.is_empty());
    }
}
