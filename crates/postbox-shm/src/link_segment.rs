//! The segment of one shared-memory link: its shape, a doorbell per side, a byte stream each
//! way, a payload pool each way, and a feed from client to server.
//!
//! ```text
//! data: 0 stream capacity u64, pool blocks u32 | 64 client doorbell | 128 server doorbell
//!     | 192 stream client→server | stream server→client | (page) pool client→server | pool server→client
//!     | (page) feed client→server
//! ```
//! The broker creates it (streams empty, doorbells quiet, pools free) and passes its
//! descriptor to both sides at connect time; each side opens it as [`LinkSide::Client`] or
//! [`LinkSide::Server`], reading the shape once and checking that it fits the mapping.

use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::doorbell::Doorbell;
use crate::feed::{open_feed, FeedEnd, FEED_SIZE};
use crate::pool::{pool_at, PoolLayout, PoolReader, PoolWriter};
use crate::stream::{RegionStream, Stream, StreamConsumer, StreamLayout, StreamProducer};
use crate::{Segment, SegmentCreateError, SegmentOpenError};

/// Which end of the link a process holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkSide {
    /// The end that asked to connect.
    Client,
    /// The end that owns the port.
    Server,
}

/// The shape of a link segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinkShape {
    /// Bytes in each stream (a power of two).
    pub stream_capacity: u64,
    /// Each payload pool.
    pub pool: PoolLayout,
}

impl LinkShape {
    /// Streams of `stream_capacity` bytes (rounded up to a power of two) and pools of at
    /// least `pool_bytes`.
    #[must_use]
    pub fn new(stream_capacity: usize, pool_bytes: usize) -> Self {
        Self {
            stream_capacity: StreamLayout::new(stream_capacity as u64).capacity,
            pool: PoolLayout::for_bytes(pool_bytes),
        }
    }

    fn stream(&self) -> StreamLayout {
        StreamLayout::new(self.stream_capacity)
    }

    fn pools_at(&self) -> usize {
        (STREAMS_AT + 2 * self.stream().size()).next_multiple_of(PAGE)
    }

    pub(crate) fn feed_at(&self) -> usize {
        (self.pools_at() + 2 * self.pool.size()).next_multiple_of(PAGE)
    }

    fn size(&self) -> usize {
        self.feed_at() + FEED_SIZE
    }
}

/// One side's view of a link segment.
#[derive(Debug)]
pub struct LinkMemory {
    /// Bytes this side sends.
    pub outbound: StreamProducer<RegionStream>,
    /// Bytes this side receives.
    pub inbound: StreamConsumer<RegionStream>,
    /// Space this side lends for the large payloads it sends.
    pub outbound_pool: PoolWriter,
    /// Large payloads this side receives, read in place.
    pub inbound_pool: Arc<PoolReader>,
    /// Where this side sleeps (the peer rings it).
    pub mine: Doorbell,
    /// Where the peer sleeps (this side rings it).
    pub peer: Doorbell,
    /// This side's end of the feed: the client's pushes, the server's pops.
    pub feed: FeedEnd,
}

/// Failure to open a link segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LinkSegmentError {
    /// Not a segment, or not one of this layout.
    #[error(transparent)]
    Segment(#[from] SegmentOpenError),
    /// The shape it claims is impossible or does not fit its size.
    #[error("the segment's size does not fit a link's layout")]
    BadLayout,
}

/// Creates a link segment of `shape`. The caller passes [`Segment::fd`] to both sides, then
/// may drop the segment.
///
/// # Errors
/// [`SegmentCreateError`].
pub fn create_link_segment(shape: LinkShape) -> Result<Segment, SegmentCreateError> {
    let segment = Segment::create_with(shape.size(), |segment| {
        let (capacity, blocks) = shape_words(segment);
        capacity.store(shape.stream_capacity, Ordering::Relaxed);
        blocks.store(shape.pool.blocks, Ordering::Relaxed);
    })?;
    Ok(segment)
}

/// Opens the link segment behind `fd` as `side`.
///
/// # Errors
/// [`LinkSegmentError`].
pub fn open_link_segment(fd: OwnedFd, side: LinkSide) -> Result<LinkMemory, LinkSegmentError> {
    let segment = Arc::new(Segment::open(fd, OPEN_TIMEOUT)?);
    if segment.data_size() < STREAMS_AT {
        return Err(LinkSegmentError::BadLayout);
    }
    // Read once: whatever the peer writes there later is never looked at again.
    let (capacity, blocks) = shape_words(&segment);
    let capacity = capacity.load(Ordering::Relaxed);
    let blocks = blocks.load(Ordering::Relaxed);
    if !capacity.is_power_of_two() || !(8..=MAX_STREAM).contains(&capacity) || blocks == 0 {
        return Err(LinkSegmentError::BadLayout);
    }
    let shape = LinkShape { stream_capacity: capacity, pool: PoolLayout { blocks } };
    if shape.size() > segment.data_size() {
        return Err(LinkSegmentError::BadLayout);
    }
    let layout = shape.stream();
    let stream = |index: usize| {
        let offset = STREAMS_AT + index * layout.size();
        let base = segment.data_ptr(offset);
        let owner: Arc<dyn std::any::Any + Send + Sync> = Arc::clone(&segment) as _;
        // SAFETY: `offset + layout.size() <= data_size` by the size checks above, so the region
        // lies in the mapping, which `owner` keeps alive; it is 8-aligned (page-aligned data
        // plus multiples of 64 and of the header and a power-of-two capacity ≥ 8); the broker
        // zeroed it at creation; in this process only this stream uses it.
        Stream::new(unsafe { RegionStream::new(base, layout, Some(owner)) })
    };
    let pool = |index: usize| {
        let offset = shape.pools_at() + index * shape.pool.size();
        pool_at(&segment, offset, shape.pool).ok_or(LinkSegmentError::BadLayout)
    };
    let (mine, peer, outbound, inbound) = match side {
        LinkSide::Client => (0, 1, 0, 1),
        LinkSide::Server => (1, 0, 1, 0),
    };
    let (outbound_pool, _) = pool(outbound)?;
    let (_, inbound_pool) = pool(inbound)?;
    let peer_bell = Doorbell::at(&segment, DOORBELLS_AT + peer * DOORBELL_SIZE);
    inbound_pool.ring_on_release(peer_bell);
    let feed = open_feed(&segment, shape.feed_at(), side).ok_or(LinkSegmentError::BadLayout)?;
    Ok(LinkMemory {
        outbound: stream(outbound).producer(),
        inbound: stream(inbound).consumer(),
        outbound_pool,
        inbound_pool,
        mine: Doorbell::at(&segment, DOORBELLS_AT + mine * DOORBELL_SIZE),
        peer: Doorbell::at(&segment, DOORBELLS_AT + peer * DOORBELL_SIZE),
        feed,
    })
}

/// The words that give a link segment's shape.
///
/// # Panics
/// If the segment is smaller than the shape words and doorbells (callers check first).
fn shape_words(segment: &Segment) -> (&AtomicU64, &AtomicU32) {
    assert!(segment.data_size() >= STREAMS_AT, "a link segment holds its shape words");
    let base = segment.data_ptr(0);
    // SAFETY: the first 12 bytes of the data lie in the mapping (asserted above) and the data
    // starts page-aligned; the words are atomics, safe to share with any process.
    unsafe { (base.cast::<AtomicU64>().as_ref(), base.add(8).cast::<AtomicU32>().as_ref()) }
}

const DOORBELL_SIZE: usize = 64;
/// Where the doorbells start: after the shape words.
const DOORBELLS_AT: usize = 64;
/// Where the streams start: after the two doorbells.
const STREAMS_AT: usize = DOORBELLS_AT + 2 * DOORBELL_SIZE;
const PAGE: usize = 4096;
/// Largest stream a peer may claim (a hostile creator must not make us map absurd sizes:
/// the mapping size is the object's size anyway, but the arithmetic stays small).
const MAX_STREAM: u64 = 1 << 30;
/// The broker publishes the header before passing the descriptor: no wait is needed, but a
/// short one costs nothing.
const OPEN_TIMEOUT: Duration = Duration::from_millis(100);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::doorbell::Rung;

    fn pair(capacity: usize) -> (LinkMemory, LinkMemory) {
        let segment = create_link_segment(LinkShape::new(capacity, 1 << 20)).unwrap();
        let fd = || segment.fd().try_clone_to_owned().unwrap();
        let client = open_link_segment(fd(), LinkSide::Client).unwrap();
        let server = open_link_segment(fd(), LinkSide::Server).unwrap();
        (client, server)
    }

    #[test]
    #[cfg_attr(miri, ignore = "Miri cannot map memory objects")]
    fn each_side_writes_to_the_other_and_rings_it() {
        let (mut client, mut server) = pair(4096);
        assert_eq!(client.outbound.capacity(), 4096);
        assert_eq!(client.outbound.write(b"ping").unwrap(), 4);
        assert_eq!(client.peer.ring(), Rung::Done, "nobody sleeps, nobody armed");
        let mut buf = [0u8; 16];
        assert_eq!(server.inbound.read(&mut buf).unwrap(), 4);
        assert_eq!(&buf[..4], b"ping");
        server.mine.arm();
        assert_eq!(client.peer.ring(), Rung::Signal);
        server.mine.disarm();
        server.outbound.write(b"pong").unwrap();
        assert_eq!(client.inbound.read(&mut buf).unwrap(), 4);
        assert!(!client.peer.is_closed());
        server.mine.close();
        assert!(client.peer.is_closed());
    }

    #[test]
    #[cfg_attr(miri, ignore = "Miri cannot map memory objects")]
    fn a_sleeper_is_woken_by_a_ring_from_another_thread() {
        let (mut client, server) = pair(64);
        let peer = client.peer.clone();
        let waker = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            client.outbound.write(b"x").unwrap();
            let _ = peer.ring();
        });
        let started = std::time::Instant::now();
        let mut inbound = server.inbound;
        let mut buf = [0u8; 1];
        while inbound.read(&mut buf).unwrap() == 0 {
            server.mine.sleep(Duration::from_secs(10), || inbound.available().unwrap() > 0);
        }
        assert!(started.elapsed() < Duration::from_secs(5), "the ring woke the sleeper");
        waker.join().unwrap();
    }

    #[test]
    #[cfg_attr(miri, ignore = "Miri cannot map memory objects")]
    fn a_segment_of_another_shape_is_refused() {
        let open = |segment: &Segment| {
            let fd = segment.fd().try_clone_to_owned().unwrap();
            open_link_segment(fd, LinkSide::Client).map(|_| ())
        };
        // No shape words at all.
        assert_eq!(open(&Segment::create(16).unwrap()), Err(LinkSegmentError::BadLayout));
        let shape = LinkShape::new(4096, 1);
        let segment = create_link_segment(shape).unwrap();
        assert_eq!(open(&segment), Ok(()));
        let (capacity, blocks) = shape_words(&segment);
        // A capacity that is not a power of two, then one the mapping cannot hold.
        capacity.store(4000, Ordering::Relaxed);
        assert_eq!(open(&segment), Err(LinkSegmentError::BadLayout));
        capacity.store(1 << 20, Ordering::Relaxed);
        assert_eq!(open(&segment), Err(LinkSegmentError::BadLayout));
        capacity.store(4096, Ordering::Relaxed);
        blocks.store(1000, Ordering::Relaxed);
        assert_eq!(open(&segment), Err(LinkSegmentError::BadLayout));
    }

    #[test]
    #[cfg_attr(miri, ignore = "Miri cannot map memory objects")]
    fn a_payload_lent_by_one_side_is_read_in_place_by_the_other() {
        let (mut client, server) = pair(4096);
        let mut loan = client.outbound_pool.lend(300_000).unwrap().unwrap();
        loan.as_mut_slice()[299_999] = 42;
        let view = server.inbound_pool.view(loan.run()).unwrap();
        assert_eq!(view.as_slice()[299_999], 42);
        assert!(client.outbound_pool.capacity() >= 300_000);
    }
}
