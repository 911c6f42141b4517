//! What the fault proxy did: frames seen, faults injected, connections cut.

use std::sync::atomic::{AtomicU64, Ordering};

/// A snapshot of a [`FaultProxy`](super::FaultProxy)'s counters, both directions together.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ProxyCounters {
    /// Client connections accepted (each one a proxied pair once the target answered).
    pub connections: u64,
    /// Accepted clients closed at once because the target refused or did not answer.
    pub target_unreachable: u64,
    /// Frames read from either side.
    pub frames: u64,
    /// Frames dropped.
    pub dropped: u64,
    /// Frames sent twice.
    pub duplicated: u64,
    /// Frames sent with a flipped bit in the header.
    pub corrupted_headers: u64,
    /// Frames sent with a flipped bit in the body.
    pub corrupted_bodies: u64,
    /// Frames sent after their successor.
    pub reordered: u64,
    /// Frames held back by a delay.
    pub delayed: u64,
    /// Frames swallowed while partitioned.
    pub black_holed: u64,
    /// Proxied pairs cut for any reason: on schedule, on demand, or because one side closed
    /// or failed.
    pub cuts: u64,
    /// Of those, the pairs cut on schedule or by [`cut_now`](super::FaultProxy::cut_now).
    pub injected_cuts: u64,
    /// Byte streams that did not parse as frames; the pair was cut.
    pub unparsable: u64,
}

impl ProxyCounters {
    /// Frames corrupted, header or body.
    #[must_use]
    pub fn corrupted(&self) -> u64 {
        self.corrupted_headers + self.corrupted_bodies
    }
}

/// The live counters, shared by the proxy's threads.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) connections: AtomicU64,
    pub(crate) target_unreachable: AtomicU64,
    pub(crate) frames: AtomicU64,
    pub(crate) dropped: AtomicU64,
    pub(crate) duplicated: AtomicU64,
    pub(crate) corrupted_headers: AtomicU64,
    pub(crate) corrupted_bodies: AtomicU64,
    pub(crate) reordered: AtomicU64,
    pub(crate) delayed: AtomicU64,
    pub(crate) black_holed: AtomicU64,
    pub(crate) cuts: AtomicU64,
    pub(crate) injected_cuts: AtomicU64,
    pub(crate) unparsable: AtomicU64,
}

impl Counters {
    pub(crate) fn snapshot(&self) -> ProxyCounters {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        ProxyCounters {
            connections: get(&self.connections),
            target_unreachable: get(&self.target_unreachable),
            frames: get(&self.frames),
            dropped: get(&self.dropped),
            duplicated: get(&self.duplicated),
            corrupted_headers: get(&self.corrupted_headers),
            corrupted_bodies: get(&self.corrupted_bodies),
            reordered: get(&self.reordered),
            delayed: get(&self.delayed),
            black_holed: get(&self.black_holed),
            cuts: get(&self.cuts),
            injected_cuts: get(&self.injected_cuts),
            unparsable: get(&self.unparsable),
        }
    }
}

/// Adds one to a counter (relaxed: counters order nothing).
pub(crate) fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}
