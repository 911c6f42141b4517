//! The segment of one shared-memory link: a doorbell per side and a byte stream each way.
//!
//! ```text
//! data: 0 client doorbell | 64 server doorbell | 128 stream client→server | … stream server→client
//! ```
//! The broker creates it (both streams empty, both doorbells quiet) and passes its descriptor
//! to both sides at connect time; each side opens it as [`LinkSide::Client`] or
//! [`LinkSide::Server`]. The capacity of each stream is implied by the data size.

use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::Duration;

use crate::doorbell::Doorbell;
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

/// One side's view of a link segment.
#[derive(Debug)]
pub struct LinkMemory {
    /// Bytes this side sends.
    pub outbound: StreamProducer<RegionStream>,
    /// Bytes this side receives.
    pub inbound: StreamConsumer<RegionStream>,
    /// Where this side sleeps (the peer rings it).
    pub mine: Doorbell,
    /// Where the peer sleeps (this side rings it).
    pub peer: Doorbell,
}

/// Failure to open a link segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LinkSegmentError {
    /// Not a segment, or not one of this layout.
    #[error(transparent)]
    Segment(#[from] SegmentOpenError),
    /// The data size does not describe two streams of a power-of-two capacity.
    #[error("the segment's size does not fit a link's layout")]
    BadLayout,
}

/// Creates a link segment whose streams hold `capacity` bytes each (rounded up to a power of
/// two). The caller passes [`Segment::fd`] to both sides, then may drop the segment.
///
/// # Errors
/// [`SegmentCreateError`].
pub fn create_link_segment(capacity: usize) -> Result<Segment, SegmentCreateError> {
    let layout = StreamLayout::new(capacity as u64);
    Segment::create(STREAMS_AT + 2 * layout.size())
}

/// Opens the link segment behind `fd` as `side`.
///
/// # Errors
/// [`LinkSegmentError`].
pub fn open_link_segment(fd: OwnedFd, side: LinkSide) -> Result<LinkMemory, LinkSegmentError> {
    let segment = Arc::new(Segment::open(fd, OPEN_TIMEOUT)?);
    let per_stream =
        (segment.data_size().checked_sub(STREAMS_AT)).ok_or(LinkSegmentError::BadLayout)?;
    if per_stream % 2 != 0 {
        return Err(LinkSegmentError::BadLayout);
    }
    let capacity =
        (per_stream / 2).checked_sub(StreamLayout::HEADER).ok_or(LinkSegmentError::BadLayout)?;
    if !capacity.is_power_of_two() || capacity < 8 {
        return Err(LinkSegmentError::BadLayout);
    }
    let layout = StreamLayout::new(capacity as u64);
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
    let (mine, peer, outbound, inbound) = match side {
        LinkSide::Client => (0, 1, 0, 1),
        LinkSide::Server => (1, 0, 1, 0),
    };
    Ok(LinkMemory {
        outbound: stream(outbound).producer(),
        inbound: stream(inbound).consumer(),
        mine: Doorbell::at(&segment, mine * DOORBELL_SIZE),
        peer: Doorbell::at(&segment, peer * DOORBELL_SIZE),
    })
}

const DOORBELL_SIZE: usize = 64;
/// Where the streams start: after the two doorbells.
const STREAMS_AT: usize = 2 * DOORBELL_SIZE;
/// The broker publishes the header before passing the descriptor: no wait is needed, but a
/// short one costs nothing.
const OPEN_TIMEOUT: Duration = Duration::from_millis(100);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::doorbell::Rung;

    fn pair(capacity: usize) -> (LinkMemory, LinkMemory) {
        let segment = create_link_segment(capacity).unwrap();
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
        assert_eq!(client.peer.ring(), Rung::WriteEventfd);
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
        let segment = Segment::create(STREAMS_AT + 2 * (StreamLayout::HEADER + 100)).unwrap();
        let fd = segment.fd().try_clone_to_owned().unwrap();
        assert_eq!(
            open_link_segment(fd, LinkSide::Client).unwrap_err(),
            LinkSegmentError::BadLayout
        );
    }
}
