//! What the datagram proxy does to the datagrams it forwards, and what it counted.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// The faults a [`DatagramProxy`](super::DatagramProxy) injects, per direction and per
/// datagram.
///
/// Probabilities are per datagram and independent: a datagram may be both duplicated and
/// corrupted. A dropped datagram suffers nothing else. Unlike the TCP proxy's, a delayed
/// datagram holds up nothing behind it: UDP has no order to keep.
#[derive(Debug, Clone, PartialEq)]
pub struct DatagramFaults {
    /// Chance that a datagram is dropped.
    pub loss: f64,
    /// Chance that a datagram is sent twice.
    pub duplication: f64,
    /// Chance that one bit of a datagram, anywhere, is flipped.
    pub corruption: f64,
    /// Chance that a datagram is held back and sent after the next one in its direction. A
    /// held datagram with no successor goes out after [`reorder_hold`](Self::reorder_hold).
    pub reordering: f64,
    /// The longest a reordered datagram waits for a successor.
    pub reorder_hold: Duration,
    /// Chance that a datagram is delayed by a time in [`delay_range`](Self::delay_range);
    /// later ones overtake it.
    pub delay: f64,
    /// How long a delayed datagram waits: between the two bounds.
    pub delay_range: (Duration, Duration),
    /// Every datagram waits this long (both directions): a path with latency.
    pub latency: Duration,
    /// Rebind every client's upstream socket after a time between the two bounds, again and
    /// again (the target sees the client come from a new address, as after a NAT rebinding);
    /// `None` rebinds only on [`rebind_now`](super::DatagramProxy::rebind_now).
    pub rebind_every: Option<(Duration, Duration)>,
}

impl DatagramFaults {
    /// No faults: every datagram is forwarded as it came, at once.
    #[must_use]
    pub fn none() -> Self {
        Self {
            loss: 0.0,
            duplication: 0.0,
            corruption: 0.0,
            reordering: 0.0,
            reorder_hold: Duration::from_millis(20),
            delay: 0.0,
            delay_range: (Duration::ZERO, Duration::ZERO),
            latency: Duration::ZERO,
            rebind_every: None,
        }
    }

    /// The faults of tracker issue 7 on datagrams: 5% loss, 2% duplication, 1% corruption,
    /// plus 2% reordering and 5% of datagrams delayed by 1–20 ms.
    #[must_use]
    pub fn harsh() -> Self {
        Self {
            loss: 0.05,
            duplication: 0.02,
            corruption: 0.01,
            reordering: 0.02,
            delay: 0.05,
            delay_range: (Duration::from_millis(1), Duration::from_millis(20)),
            ..Self::none()
        }
    }
}

impl Default for DatagramFaults {
    fn default() -> Self {
        Self::none()
    }
}

/// A snapshot of a [`DatagramProxy`](super::DatagramProxy)'s counters, both directions
/// together.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct DatagramCounters {
    /// Upstream sockets opened: one per client address, and a new one after each rebind.
    pub flows: u64,
    /// Datagrams read from either side.
    pub datagrams: u64,
    /// Datagrams dropped.
    pub dropped: u64,
    /// Datagrams sent twice.
    pub duplicated: u64,
    /// Datagrams sent with a flipped bit.
    pub corrupted: u64,
    /// Datagrams sent after their successor.
    pub reordered: u64,
    /// Datagrams held back by a delay.
    pub delayed: u64,
    /// Datagrams swallowed while partitioned.
    pub black_holed: u64,
    /// Times every client's upstream socket was replaced.
    pub rebinds: u64,
}

/// The live counters, shared by the proxy's threads.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) flows: AtomicU64,
    pub(crate) datagrams: AtomicU64,
    pub(crate) dropped: AtomicU64,
    pub(crate) duplicated: AtomicU64,
    pub(crate) corrupted: AtomicU64,
    pub(crate) reordered: AtomicU64,
    pub(crate) delayed: AtomicU64,
    pub(crate) black_holed: AtomicU64,
    pub(crate) rebinds: AtomicU64,
}

impl Counters {
    pub(crate) fn snapshot(&self) -> DatagramCounters {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        DatagramCounters {
            flows: get(&self.flows),
            datagrams: get(&self.datagrams),
            dropped: get(&self.dropped),
            duplicated: get(&self.duplicated),
            corrupted: get(&self.corrupted),
            reordered: get(&self.reordered),
            delayed: get(&self.delayed),
            black_holed: get(&self.black_holed),
            rebinds: get(&self.rebinds),
        }
    }
}

/// Adds one to a counter (relaxed: counters order nothing).
pub(crate) fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}
