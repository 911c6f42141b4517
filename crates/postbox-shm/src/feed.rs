//! A link segment's feed: a ring of small messages from the link's client to its server, and
//! a doorbell for each of its two ends, which one thread each holds alone.
//!
//! ```text
//! feed: 0 consumer's doorbell | 64 producer's doorbell | 128 ring (tail, head, slots)
//! ```
//! The producer rings the consumer's doorbell after every push; the consumer rings the
//! producer's only after a pop that found the ring at least half full (a producer sleeps
//! only on a full ring; see [`Popped::Took`] for why half). Each end marks its own doorbell
//! closed when dropped. An end that waits by polling descriptors (the async forms) arms its
//! doorbell; the ring then returns [`Rung::Signal`] to the other end, which writes the link's
//! wake-up descriptor (this crate does not hold it). Everything the peer can write is
//! checked as in the ring and the doorbells: a scribbling peer can garble messages, cause
//! wake-ups that find nothing, or make the ring report [`RingError::Corrupt`], nothing worse.

use std::sync::Arc;
use std::time::Duration;

use crate::doorbell::{Doorbell, Rung};
use crate::link_segment::LinkSide;
use crate::ring::{Consumer, Popped, Producer, PushError, Ring, RingError, RingLayout};
use crate::segment::{Segment, SegmentRing};

/// One end of a feed.
#[derive(Debug)]
pub enum FeedEnd {
    /// The link client's end: it pushes.
    Producer(FeedProducer),
    /// The link server's end: it pops.
    Consumer(FeedConsumer),
}

/// The sending end of a feed.
#[derive(Debug)]
pub struct FeedProducer {
    ring: Producer<SegmentRing>,
    /// Rung by the consumer when it frees room.
    mine: Doorbell,
    /// The consumer's: rung after every push.
    peer: Doorbell,
}

/// The receiving end of a feed.
#[derive(Debug)]
pub struct FeedConsumer {
    ring: Consumer<SegmentRing>,
    /// Rung by the producer after every push.
    mine: Doorbell,
    /// The producer's: rung when a pop frees a full ring.
    peer: Doorbell,
}

impl FeedProducer {
    /// Copies `bytes` into the next slot, publishes it, and wakes the consumer if it sleeps
    /// on the futex; [`Rung::Signal`] when the consumer polls a descriptor instead (the
    /// caller writes the link's wake-up descriptor).
    ///
    /// # Errors
    /// [`PushError::Full`], [`PushError::TooLarge`] (over [`FEED_MAX_LEN`]), or
    /// [`PushError::Corrupt`] when the consumer's index is impossible.
    #[inline]
    pub fn push(&mut self, bytes: &[u8]) -> Result<Rung, PushError> {
        self.ring.push(bytes)?;
        Ok(self.peer.ring())
    }

    /// Asks the consumer to return [`Rung::Signal`] from the pops that free room, until
    /// [`disarm`](Self::disarm): for a wait on descriptors. Look again after arming.
    pub fn arm(&self) {
        self.mine.arm();
    }

    /// Stops the signals [`arm`](Self::arm) asked for.
    pub fn disarm(&self) {
        self.mine.disarm();
    }

    /// Closes the feed from this end (as dropping it does) and wakes the consumer; `Signal`
    /// when the consumer polls a descriptor, which the caller then writes.
    pub fn close(&self) -> Rung {
        self.mine.close();
        self.peer.ring()
    }

    /// True when every slot holds a message the consumer has not taken.
    #[must_use]
    pub fn is_full(&self) -> bool {
        self.ring.is_full()
    }

    /// Sleeps until the consumer frees room or closes, or `timeout`; returns at once when
    /// either is already so. Callers look again afterwards (a wake-up may find nothing).
    pub fn sleep_for_room(&self, timeout: Duration) {
        self.mine.sleep(timeout, || !self.ring.is_full() || self.peer.is_closed());
    }

    /// True once the consumer's end was dropped.
    #[must_use]
    #[inline]
    pub fn peer_closed(&self) -> bool {
        self.peer.is_closed()
    }
}

impl FeedConsumer {
    /// Copies the next message into `out` (cleared first); `Ok(None)` when none waits. Wakes
    /// the producer after a pop that found the ring at least half full: `Some(Rung::Signal)`
    /// when the producer polls a descriptor (the caller writes the link's wake-up
    /// descriptor).
    ///
    /// # Errors
    /// [`RingError::Corrupt`] when the producer's index or a stored length is impossible.
    #[inline]
    pub fn pop(&mut self, out: &mut Vec<u8>) -> Result<Option<Rung>, RingError> {
        match self.ring.pop_noting_full(out)? {
            Popped::Empty => Ok(None),
            Popped::Took { crowded: true } => Ok(Some(self.peer.ring())),
            Popped::Took { crowded: false } => Ok(Some(Rung::Done)),
        }
    }

    /// Asks the producer to return [`Rung::Signal`] from every push, until
    /// [`disarm`](Self::disarm): for a wait on descriptors. Look again after arming.
    pub fn arm(&self) {
        self.mine.arm();
    }

    /// Stops the signals [`arm`](Self::arm) asked for.
    pub fn disarm(&self) {
        self.mine.disarm();
    }

    /// Closes the feed from this end (as dropping it does) and wakes the producer; `Signal`
    /// when the producer polls a descriptor, which the caller then writes.
    pub fn close(&self) -> Rung {
        self.mine.close();
        self.peer.ring()
    }

    /// True when no message waits.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.ring.is_empty()
    }

    /// Sleeps until the producer pushes or closes, or `timeout`; returns at once when either
    /// is already so. Callers look again afterwards (a wake-up may find nothing).
    pub fn sleep_for_input(&self, timeout: Duration) {
        self.mine.sleep(timeout, || !self.ring.is_empty() || self.peer.is_closed());
    }

    /// True once the producer's end was dropped.
    #[must_use]
    #[inline]
    pub fn peer_closed(&self) -> bool {
        self.peer.is_closed()
    }
}

impl Drop for FeedProducer {
    fn drop(&mut self) {
        // A consumer polling a descriptor is woken by the holder of the link, which closes
        // first (see `close`).
        let _ = self.close();
    }
}

impl Drop for FeedConsumer {
    fn drop(&mut self) {
        let _ = self.close();
    }
}

/// The largest message a feed carries, in bytes.
pub const FEED_MAX_LEN: usize = 248;

/// Bytes a feed takes in a link segment.
pub(crate) const FEED_SIZE: usize = RING_AT + ring_layout().size();

/// `side`'s end of the feed at `offset` (64-aligned) into `segment`; `None` when it does not
/// fit (the caller checked the layout, so only a bug of this crate gets there).
pub(crate) fn open_feed(segment: &Arc<Segment>, offset: usize, side: LinkSide) -> Option<FeedEnd> {
    if offset.checked_add(FEED_SIZE)? > segment.data_size() || offset % 64 != 0 {
        return None;
    }
    let ring = Ring::new(segment.ring(offset + RING_AT, ring_layout())?);
    let consumer_bell = Doorbell::at(segment, offset);
    let producer_bell = Doorbell::at(segment, offset + 64);
    Some(match side {
        LinkSide::Client => FeedEnd::Producer(FeedProducer {
            ring: ring.producer(),
            mine: producer_bell,
            peer: consumer_bell,
        }),
        LinkSide::Server => FeedEnd::Consumer(FeedConsumer {
            ring: ring.consumer(),
            mine: consumer_bell,
            peer: producer_bell,
        }),
    })
}

const fn ring_layout() -> RingLayout {
    RingLayout { capacity: FEED_SLOTS, slot_size: FEED_MAX_LEN }
}

/// Slots in a feed (a power of two).
const FEED_SLOTS: u64 = 256;
/// Where the ring starts: after the two doorbells.
const RING_AT: usize = 128;

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

    use super::*;
    use crate::{create_link_segment, open_link_segment, LinkShape, Scribbler};

    fn ends() -> (FeedProducer, FeedConsumer) {
        ends_and_segment().0
    }

    /// Both ends of a fresh link's feed, each in its own mapping, and the segment.
    fn ends_and_segment() -> ((FeedProducer, FeedConsumer), Segment, LinkShape) {
        let shape = LinkShape::new(4096, 1);
        let segment = create_link_segment(shape).unwrap();
        let fd = || segment.fd().try_clone_to_owned().unwrap();
        let client = open_link_segment(fd(), LinkSide::Client).unwrap();
        let server = open_link_segment(fd(), LinkSide::Server).unwrap();
        match (client.feed, server.feed) {
            (FeedEnd::Producer(p), FeedEnd::Consumer(c)) => ((p, c), segment, shape),
            other => panic!("the client produces, the server consumes: {other:?}"),
        }
    }

    /// A producer sleeping on a full ring is woken by the pops that follow, even when the
    /// pop that freed the first slot looked at the ring before the producer filled it: no
    /// sleep runs to its end while room is there (found by a review: a pop that saw the
    /// ring one slot short of full woke nobody, and the producer slept through).
    #[test]
    #[cfg_attr(miri, ignore = "Miri cannot map memory objects")]
    fn a_producer_asleep_on_a_full_feed_is_always_woken() {
        let (mut producer, mut consumer) = ends();
        let total = 400_000u64;
        let long = Duration::from_secs(2);
        let consuming = std::thread::spawn(move || {
            let mut out = Vec::new();
            let mut got = 0u64;
            while got < total {
                match consumer.pop(&mut out).unwrap() {
                    Some(_) => {
                        assert_eq!(out, got.to_le_bytes());
                        got += 1;
                    }
                    None => consumer.sleep_for_input(long),
                }
            }
        });
        let (mut sleeps, mut slept_through) = (0u32, Vec::new());
        for i in 0..total {
            while producer.push(&i.to_le_bytes()) == Err(PushError::Full) {
                sleeps += 1;
                let started = std::time::Instant::now();
                producer.sleep_for_room(long);
                if started.elapsed() >= long && !producer.is_full() {
                    slept_through.push(i);
                }
            }
        }
        consuming.join().unwrap();
        assert!(slept_through.is_empty(), "{sleeps} sleeps, lost wake-ups at {slept_through:?}");
    }

    /// A peer scribbling over the feed (indices, lengths, doorbells, bytes) while both ends
    /// work: the ends see garbled messages, wake-ups that find nothing, or `Corrupt`, and
    /// never a message longer than a slot, a panic, or a wait that does not end.
    #[test]
    #[cfg_attr(miri, ignore = "Miri cannot map memory objects")]
    fn a_scribbled_feed_reports_corruption_and_never_overreads_or_hangs() {
        let ((mut producer, mut consumer), segment, shape) = ends_and_segment();
        let scribbler = Scribbler::open(segment.fd().try_clone_to_owned().unwrap()).unwrap();
        let feed = shape.feed_at()..shape.feed_at() + FEED_SIZE;
        let stop = Arc::new(AtomicBool::new(false));
        let writes = Arc::new(AtomicU64::new(0));
        let scribbling = {
            let (stop, writes) = (Arc::clone(&stop), Arc::clone(&writes));
            std::thread::spawn(move || {
                let mut rng = 0x5eed_f00d;
                while !stop.load(Ordering::Relaxed) {
                    scribbler.scribble_within(&mut rng, 16, feed.clone());
                    writes.fetch_add(16, Ordering::Relaxed);
                    std::thread::yield_now();
                }
            })
        };
        let (mut pushed, mut popped, mut push_corrupt, mut pop_corrupt) = (0u32, 0u32, 0, 0);
        let mut out = Vec::new();
        let started = std::time::Instant::now();
        while started.elapsed() < Duration::from_millis(300) || push_corrupt + pop_corrupt == 0 {
            assert!(started.elapsed() < Duration::from_secs(20), "the scribbler never hit");
            match producer.push(&[0xab; 100][..(pushed as usize % 101)]) {
                Ok(_) => pushed += 1,
                Err(PushError::Corrupt) => push_corrupt += 1,
                Err(PushError::Full) => producer.sleep_for_room(Duration::from_micros(100)),
                Err(PushError::TooLarge { .. }) => unreachable!("at most 100 bytes"),
            }
            match consumer.pop(&mut out) {
                Ok(Some(_)) => {
                    assert!(out.len() <= FEED_MAX_LEN, "a message longer than a slot");
                    popped += 1;
                }
                Ok(None) => consumer.sleep_for_input(Duration::from_micros(100)),
                Err(RingError::Corrupt) => pop_corrupt += 1,
            }
        }
        stop.store(true, Ordering::Relaxed);
        scribbling.join().unwrap();
        assert!(writes.load(Ordering::Relaxed) > 0);
        eprintln!("pushed {pushed}, popped {popped}, corrupt {push_corrupt} + {pop_corrupt}");
    }

    #[test]
    #[cfg_attr(miri, ignore = "Miri cannot map memory objects")]
    fn a_feed_carries_messages_in_order_until_full() {
        let (mut producer, mut consumer) = ends();
        let mut out = Vec::new();
        assert_eq!(consumer.pop(&mut out), Ok(None));
        for i in 0..FEED_SLOTS {
            assert_eq!(producer.push(&i.to_le_bytes()), Ok(Rung::Done));
        }
        assert!(producer.is_full());
        assert_eq!(producer.push(b"x"), Err(PushError::Full));
        let too_large = [0u8; FEED_MAX_LEN + 1];
        assert!(matches!(producer.push(&too_large), Err(PushError::TooLarge { .. })));
        // Each end armed asks the other to signal it: the producer on every push, the
        // consumer on the pop that frees a full ring.
        producer.arm();
        assert_eq!(consumer.pop(&mut out), Ok(Some(Rung::Signal)), "it freed a full ring");
        assert_eq!(out, 0u64.to_le_bytes());
        for i in 1..FEED_SLOTS {
            // Signals while at least half the slots were taken, none after.
            let crowded = FEED_SLOTS - i >= FEED_SLOTS / 2;
            let rung = if crowded { Rung::Signal } else { Rung::Done };
            assert_eq!(consumer.pop(&mut out), Ok(Some(rung)), "pop {i}");
            assert_eq!(out, i.to_le_bytes());
        }
        producer.disarm();
        assert!(consumer.is_empty());
        consumer.arm();
        assert_eq!(producer.push(&[7; FEED_MAX_LEN]), Ok(Rung::Signal));
        consumer.disarm();
        assert!(consumer.pop(&mut out).unwrap().is_some());
        assert_eq!(out, [7; FEED_MAX_LEN]);
    }

    #[test]
    #[cfg_attr(miri, ignore = "Miri cannot map memory objects")]
    fn each_end_wakes_the_other_and_sees_it_close() {
        let (mut producer, mut consumer) = ends();
        let sleeper = std::thread::spawn(move || {
            let mut out = Vec::new();
            while consumer.pop(&mut out).unwrap().is_none() {
                consumer.sleep_for_input(Duration::from_secs(30));
            }
            // Fill, then free one slot once the producer sleeps for room.
            std::thread::sleep(Duration::from_millis(50));
            assert!(consumer.pop(&mut out).unwrap().is_some());
            std::thread::sleep(Duration::from_millis(50));
            consumer
        });
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(producer.push(b"wake"), Ok(Rung::Done), "the consumer sleeps on its futex");
        while producer.push(b"fill").is_ok() {}
        let started = std::time::Instant::now();
        while producer.is_full() {
            producer.sleep_for_room(Duration::from_secs(30));
        }
        assert!(started.elapsed() < Duration::from_secs(20), "the pop woke the producer");
        let consumer = sleeper.join().unwrap();
        assert!(!producer.peer_closed());
        drop(consumer);
        assert!(producer.peer_closed());
        producer.sleep_for_room(Duration::from_secs(30));
    }
}
