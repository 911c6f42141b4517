//! Where one side of a shared-memory link sleeps: words in the segment its peer rings.
//!
//! A side waits for two things from its peer: bytes in its inbound stream, and room in its
//! outbound stream. Either way the peer, having changed a stream, rings this side's doorbell.
//! Ringing is free while nobody sleeps: the peer looks at two words and makes a system call
//! only for a side that said it is asleep, on a futex (`sleepers`, for blocking waits) or on
//! a descriptor it polls (`armed`, for waits that poll descriptors, as the async forms do; the
//! ringer writes that side's wake-up descriptor, which this crate does not hold).
//!
//! The words are in memory the peer can write, so nothing here trusts them: a scribbling peer
//! can cause wake-ups that find nothing (callers re-check their condition) or withhold
//! wake-ups it owed anyway; sleeps are bounded so a waiter always gets to look again.

use std::ptr::NonNull;
use std::sync::atomic::{fence, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::sys::{futex_wait, futex_wake};
use crate::Segment;

/// One side's doorbell words, as laid out in a segment (64 bytes, one cache line).
#[repr(C, align(64))]
#[derive(Debug)]
pub(crate) struct DoorbellWords {
    /// Threads of this side asleep on `bell`.
    sleepers: AtomicU32,
    /// Non-zero while this side wants its wake-up descriptor written on every ring.
    armed: AtomicU32,
    /// The futex word: bumped on every ring that finds sleepers.
    bell: AtomicU32,
    /// Set by this side when it closes the link.
    closed: AtomicU32,
}

/// A handle on one side's doorbell in a mapped segment.
#[derive(Debug, Clone)]
pub struct Doorbell {
    words: NonNull<DoorbellWords>,
    _segment: Arc<Segment>,
}

/// What the ringer must still do itself: write the sleeping side's wake-up descriptor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub enum Rung {
    /// Nothing more.
    Done,
    /// The side polls its wake-up descriptor: write it.
    Signal,
}

impl Doorbell {
    /// The doorbell at `offset` bytes into the segment's data.
    ///
    /// # Panics
    /// If the words do not fit in the segment or `offset` is not 64-aligned (a layout bug of
    /// this crate, not a peer's).
    pub(crate) fn at(segment: &Arc<Segment>, offset: usize) -> Self {
        assert!(offset % 64 == 0 && offset + 64 <= segment.data_size(), "doorbell layout");
        let words = segment.data_ptr(offset).cast::<DoorbellWords>();
        Self { words, _segment: Arc::clone(segment) }
    }

    fn words(&self) -> &DoorbellWords {
        // SAFETY: `at` checked that the 64 bytes lie inside the segment's data, which the
        // `Arc<Segment>` keeps mapped; the data starts page-aligned plus a multiple of 64, so
        // the words are aligned; every field is an atomic, safe to share with any process.
        unsafe { self.words.as_ref() }
    }

    /// Rings: called by the peer after it published bytes to, or freed room for, this side.
    /// Wakes futex sleepers itself; says whether this side's wake-up descriptor must be
    /// written.
    pub fn ring(&self) -> Rung {
        let words = self.words();
        // SYNC POINT: orders the caller's publication (a stream index store) before reading
        // whether anyone sleeps; pairs with the fence in `sleep` / `arm` (Dekker: either the
        // sleeper sees the new index, or the ringer sees the sleeper).
        fence(Ordering::SeqCst);
        if words.sleepers.load(Ordering::Relaxed) != 0 {
            words.bell.fetch_add(1, Ordering::Release);
            futex_wake(&words.bell);
        }
        if words.armed.load(Ordering::Relaxed) != 0 {
            Rung::Signal
        } else {
            Rung::Done
        }
    }

    /// Sleeps on the futex until rung, or `timeout`, unless `ready` (checked after announcing
    /// the sleep) says there is no need. Callers re-check their condition afterwards.
    pub fn sleep(&self, timeout: Duration, ready: impl FnOnce() -> bool) {
        let words = self.words();
        let bell = words.bell.load(Ordering::Acquire);
        words.sleepers.fetch_add(1, Ordering::Relaxed);
        // SYNC POINT: pairs with the fence in `ring`.
        fence(Ordering::SeqCst);
        if !ready() {
            futex_wait(&words.bell, bell, timeout);
        }
        words.sleepers.fetch_sub(1, Ordering::Relaxed);
    }

    /// Asks the peer to write this side's wake-up descriptor on every ring, until [`disarm`]. Callers
    /// check their condition after arming, before they poll.
    ///
    /// [`disarm`]: Self::disarm
    pub fn arm(&self) {
        self.words().armed.store(1, Ordering::Relaxed);
        // SYNC POINT: pairs with the fence in `ring`.
        fence(Ordering::SeqCst);
    }

    /// Stops wake-up writes (the side is busy and will look by itself).
    pub fn disarm(&self) {
        self.words().armed.store(0, Ordering::Relaxed);
    }

    /// Marks this side closed (the peer sees it through [`is_closed`](Self::is_closed)).
    pub fn close(&self) {
        self.words().closed.store(1, Ordering::Release);
    }

    /// True once this side said it closed.
    #[must_use]
    #[inline]
    pub fn is_closed(&self) -> bool {
        self.words().closed.load(Ordering::Acquire) != 0
    }
}

// SAFETY: a `Doorbell` points at atomics in a mapping its `Arc<Segment>` keeps alive; atomics
// may be used from any thread.
unsafe impl Send for Doorbell {}
// SAFETY: as for `Send`: every access is an atomic operation.
unsafe impl Sync for Doorbell {}
