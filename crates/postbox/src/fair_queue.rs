//! A port's receive queue with a fair share per link: a busy sender's backlog does not stand
//! between a quiet sender's message and the receiver.
//!
//! While several links feed the endpoint, each (link, priority) has at most [`FAIR_SHARE`]
//! envelopes in the [`PortQueue`]; the rest wait, in order, and move into the queue as that
//! link's envelopes of that priority are taken. A message arriving on a quiet link so waits
//! behind at most a share of each busy link's, not behind a whole window of them, and a message
//! of higher priority never waits behind lower ones. A selective receive (by sender or type)
//! first moves up every held envelope it could pick, so that what it may select is exactly
//! what it would be without shares.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};

use postbox_core::wire::frame::MAX_PRIORITY;
use postbox_core::{LinkId, PortQueue, QueuedMeta, Selector, TypeFilter};

/// Envelopes of one link and one priority in the queue at once.
pub(crate) const FAIR_SHARE: usize = 32;

/// Priority lanes of a queue.
pub(crate) const PRIORITIES: usize = MAX_PRIORITY as usize + 1;

/// What the fair queue needs to know of an item: where it came from, how the queue sees it,
/// and its link's count of items in the queue per priority (kept on the link, so that the
/// common path looks nothing up).
pub(crate) trait Shared {
    /// The link it came on.
    fn link(&self) -> LinkId;
    /// Its sender, type and priority.
    fn meta(&self) -> QueuedMeta;
    /// Its link's items in the queue, per priority.
    fn in_queue(&self) -> &[AtomicUsize; PRIORITIES];
}

/// A [`PortQueue`] with a fair share per link.
#[derive(Debug)]
pub(crate) struct FairQueue<T> {
    queue: PortQueue<T>,
    /// Items over their share, per (link, priority), oldest first.
    held: HashMap<(LinkId, u8), VecDeque<T>>,
    /// Items in `held`, all links together.
    held_total: usize,
    /// Items of one link and one priority queued while nothing else was, oldest first: a
    /// receiver of any item takes them in order without the queue's bookkeeping. They move to
    /// the front of the queue before anything else is queued or selected.
    run: VecDeque<T>,
}

impl<T: Shared> FairQueue<T> {
    /// An empty queue.
    pub(crate) fn new() -> Self {
        Self { queue: PortQueue::new(), held: HashMap::new(), held_total: 0, run: VecDeque::new() }
    }

    /// Items queued or held.
    pub(crate) fn len(&self) -> usize {
        self.queue.len() + self.held_total + self.run.len()
    }

    /// True while some items wait for room in their share: the links should then be read
    /// now and then even though the queue is not empty.
    pub(crate) fn holds_back(&self) -> bool {
        self.held_total > 0
    }

    /// Queues `item`, or holds it back: behind what its link holds already at its priority
    /// (order), or when that share is full and `shared` (other links feed the endpoint).
    pub(crate) fn push(&mut self, item: T, shared: bool) {
        self.end_run();
        let meta = item.meta();
        let priority = lane(&meta);
        let key = (item.link(), priority);
        let behind = self.held_total > 0 && self.held.contains_key(&key);
        let count = &item.in_queue()[usize::from(priority)];
        if behind || (shared && count.load(Ordering::Relaxed) >= FAIR_SHARE) {
            self.held.entry(key).or_default().push_back(item);
            self.held_total += 1;
        } else {
            count.fetch_add(1, Ordering::Relaxed);
            self.queue.push(meta, item);
        }
    }

    /// Takes the item `selector` picks, as [`PortQueue::pop`] would from everything queued and
    /// held. Also says whether a held item moved up into the queue (another receiver may
    /// want it).
    pub(crate) fn pop(&mut self, selector: Selector) -> Option<(T, bool)> {
        if !self.run.is_empty() {
            if selector == Selector::ANY {
                // Older than anything else queued (which `push` keeps so): next in any case.
                return self.run.pop_front().map(|item| (item, false));
            }
            self.end_run();
        }
        if selector != Selector::ANY && self.held_total > 0 {
            self.release_matching(selector);
        }
        let (_, item) = self.queue.pop(selector)?;
        let moved = self.refill(&item);
        Some((item, moved))
    }

    /// Removes the oldest queued item `pick` accepts (drop-oldest).
    pub(crate) fn remove_oldest(&mut self, pick: impl FnMut(&QueuedMeta, &T) -> bool) -> Option<T> {
        self.end_run();
        let (meta, item) = self.queue.remove_oldest(pick)?;
        item.in_queue()[usize::from(lane(&meta))].fetch_sub(1, Ordering::Relaxed);
        Some(item)
    }

    /// The links in `dead` are gone: their held items that `keep` accepts are queued (after
    /// their queued ones), the others dropped with every queued item `keep` refuses.
    pub(crate) fn links_gone(&mut self, dead: &[LinkId], keep: impl Fn(&T) -> bool) {
        self.end_run();
        let keys: Vec<(LinkId, u8)> =
            self.held.keys().filter(|(id, _)| dead.contains(id)).copied().collect();
        for key in keys {
            let Some(held) = self.held.remove(&key) else { continue };
            self.held_total -= held.len();
            for item in held.into_iter().filter(&keep) {
                item.in_queue()[usize::from(key.1)].fetch_add(1, Ordering::Relaxed);
                self.queue.push(item.meta(), item);
            }
        }
        self.queue.remove_where(|_, item| dead.contains(&item.link()) && !keep(item));
    }

    /// Drops everything.
    pub(crate) fn clear(&mut self) {
        *self = Self::new();
    }

    /// Queues `item` at the end of the run of items that came while the queue was empty (all
    /// of one link and one priority: the caller sees to it). The queue must hold nothing else
    /// when the run starts.
    pub(crate) fn push_run(&mut self, item: T) {
        debug_assert!(!self.run.is_empty() || self.len() == 0, "a run starts on an empty queue");
        self.run.push_back(item);
    }

    /// Moves the run to the front of the queue, in order, where selection and the fair shares
    /// see it.
    fn end_run(&mut self) {
        while let Some(item) = self.run.pop_back() {
            let meta = item.meta();
            item.in_queue()[usize::from(lane(&meta))].fetch_add(1, Ordering::Relaxed);
            self.queue.push_front(meta, item);
        }
    }

    /// `taken` left the queue: the next item its link holds at its priority takes its place.
    /// True when one moved.
    fn refill(&mut self, taken: &T) -> bool {
        let priority = lane(&taken.meta());
        taken.in_queue()[usize::from(priority)].fetch_sub(1, Ordering::Relaxed);
        if self.held_total == 0 {
            return false;
        }
        let key = (taken.link(), priority);
        let Some(held) = self.held.get_mut(&key) else { return false };
        let next = held.pop_front();
        if held.is_empty() {
            self.held.remove(&key);
        }
        let Some(next) = next else { return false };
        self.held_total -= 1;
        next.in_queue()[usize::from(priority)].fetch_add(1, Ordering::Relaxed);
        self.queue.push(next.meta(), next);
        true
    }

    /// Moves into the queue every held item `selector` could pick, with those before it of its
    /// link and priority (their order kept): up to the first match of each, or for "lowest
    /// type" selection, the last.
    fn release_matching(&mut self, selector: Selector) {
        let lowest_type = matches!(selector.msg_type, TypeFilter::AtMost(_));
        let keys: Vec<(LinkId, u8)> = self.held.keys().copied().collect();
        for key in keys {
            let Some(held) = self.held.get_mut(&key) else { continue };
            let mut matching =
                held.iter().enumerate().filter(|(_, item)| selector.accepts(&item.meta()));
            let upto = if lowest_type { matching.next_back() } else { matching.next() };
            let Some((index, _)) = upto else { continue };
            let moved: Vec<T> = held.drain(..=index).collect();
            if held.is_empty() {
                self.held.remove(&key);
            }
            self.held_total -= moved.len();
            for item in moved {
                item.in_queue()[usize::from(key.1)].fetch_add(1, Ordering::Relaxed);
                self.queue.push(item.meta(), item);
            }
        }
    }
}

/// The queue lane of an item.
fn lane(meta: &QueuedMeta) -> u8 {
    meta.priority.min(MAX_PRIORITY)
}

#[cfg(test)]
mod tests {
    use super::*;
    use postbox_core::ProcessId;
    use std::sync::Arc;

    /// A test item: its link's counters are shared by the items of one link.
    #[derive(Debug)]
    struct Item {
        link: u64,
        meta: QueuedMeta,
        counts: Arc<[AtomicUsize; PRIORITIES]>,
    }

    impl Shared for Item {
        fn link(&self) -> LinkId {
            LinkId(self.link)
        }
        fn meta(&self) -> QueuedMeta {
            self.meta
        }
        fn in_queue(&self) -> &[AtomicUsize; PRIORITIES] {
            &self.counts
        }
    }

    fn links(n: usize) -> Vec<Arc<[AtomicUsize; PRIORITIES]>> {
        (0..n).map(|_| Arc::new(std::array::from_fn(|_| AtomicUsize::new(0)))).collect()
    }

    fn item(counts: &[Arc<[AtomicUsize; PRIORITIES]>], link: usize, ty: u32, prio: u8) -> Item {
        let sender = ProcessId::new(link as u32 + 1, 1);
        Item {
            link: link as u64,
            meta: QueuedMeta { sender, msg_type: ty, priority: prio },
            counts: Arc::clone(&counts[link]),
        }
    }

    #[test]
    fn a_busy_link_keeps_its_order_and_a_quiet_one_comes_within_a_share() {
        let counts = links(2);
        let mut q = FairQueue::new();
        for i in 0..100 {
            q.push(item(&counts, 0, i, 0), true);
        }
        q.push(item(&counts, 1, 1000, 0), true);
        assert_eq!(q.len(), 101);
        let order: Vec<u32> =
            std::iter::from_fn(|| q.pop(Selector::ANY)).map(|(it, _)| it.meta.msg_type).collect();
        let quiet = order.iter().position(|t| *t == 1000).unwrap();
        assert!(quiet <= FAIR_SHARE, "behind {quiet}");
        let busy: Vec<u32> = order.into_iter().filter(|t| *t != 1000).collect();
        assert_eq!(busy, (0..100).collect::<Vec<_>>());
        assert!(counts.iter().all(|c| c.iter().all(|n| n.load(Ordering::Relaxed) == 0)));
    }

    #[test]
    fn selection_and_priority_see_what_is_held() {
        let counts = links(2);
        let mut q = FairQueue::new();
        for _ in 0..40 {
            q.push(item(&counts, 0, 1, 0), true);
        }
        q.push(item(&counts, 0, 7, 0), true);
        q.push(item(&counts, 0, 9, 31), true);
        let (urgent, _) = q.pop(Selector::ANY).unwrap();
        assert_eq!(urgent.meta.priority, 31);
        let (wanted, _) = q.pop(Selector::ANY.of_type(7)).unwrap();
        assert_eq!(wanted.meta.msg_type, 7);
        assert_eq!(q.len(), 40);
    }

    #[test]
    fn a_run_comes_first_in_order_whatever_is_queued_or_selected_after_it() {
        let counts = links(2);
        let mut q = FairQueue::new();
        for ty in 0..5 {
            q.push_run(item(&counts, 0, ty, 3));
        }
        assert_eq!(q.len(), 5);
        assert_eq!(q.pop(Selector::ANY).map(|(it, _)| it.meta.msg_type), Some(0));
        // A later arrival of the same priority queues behind the rest of the run; a higher
        // priority goes first, as it would have without the run.
        q.push(item(&counts, 1, 100, 3), true);
        q.push(item(&counts, 1, 200, 9), true);
        let order: Vec<u32> =
            std::iter::from_fn(|| q.pop(Selector::ANY)).map(|(it, _)| it.meta.msg_type).collect();
        assert_eq!(order, [200, 1, 2, 3, 4, 100]);
        // A selective receive sees the run too.
        for ty in 0..3 {
            q.push_run(item(&counts, 0, ty, 0));
        }
        assert_eq!(q.pop(Selector::ANY.of_type(2)).map(|(it, _)| it.meta.msg_type), Some(2));
        assert_eq!(q.pop(Selector::ANY).map(|(it, _)| it.meta.msg_type), Some(0));
        assert_eq!(q.pop(Selector::ANY).map(|(it, _)| it.meta.msg_type), Some(1));
        assert!(counts.iter().all(|c| c.iter().all(|n| n.load(Ordering::Relaxed) == 0)));
    }

    #[test]
    fn a_gone_links_held_items_are_queued_or_dropped() {
        let counts = links(2);
        let mut q = FairQueue::new();
        for i in 0..50 {
            q.push(item(&counts, 0, i % 2, 0), true);
        }
        // Keep the even types (the one-way messages, say), drop the others.
        q.links_gone(&[LinkId(0)], |it| it.meta.msg_type == 0);
        assert_eq!(q.len(), 25);
        assert!(!q.holds_back());
    }
}
