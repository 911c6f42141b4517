//! A segment: shared memory one process creates and another opens (its descriptor passed with
//! `SCM_RIGHTS`), with a versioned header published last.
//!
//! ```text
//! 0 magic u64 | 8 layout version u32 | 12 ready u32 | 16 data size u64 | … | 128 data
//! ```
//! The creator writes every field, then stores `ready = 1` with Release; the opener checks
//! the object's size, waits for `ready` with Acquire (bounded), then checks magic, version and
//! size. Whatever the other side writes later is untrusted; rings check their own fields.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::ring::{RingLayout, RingMemory};
use crate::sync::AtomicU64 as RingAtomic;
use crate::sys::{create_memory, memory_size, size_is_sealed, Mapping};
use crate::{RegionRing, RingError};

/// A mapped segment.
#[derive(Debug)]
pub struct Segment {
    fd: OwnedFd,
    mapping: Mapping,
    data_size: usize,
}

/// Failure of [`Segment::create`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SegmentCreateError {
    /// A segment holds at least one byte of data.
    #[error("a segment needs a data size above zero")]
    SizeIsZero,
    /// The operating system refused (out of memory, descriptors, or unsupported here).
    #[error("the operating system refused the segment: {0}")]
    Os(io::ErrorKind),
}

/// Failure of [`Segment::open`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SegmentOpenError {
    /// The memory object is smaller than a segment header, or than its header claims.
    #[error("the memory object is too small for the segment it claims to be")]
    TooSmall,
    /// Magic or layout version do not match this build.
    #[error("not a postbox segment of this layout version")]
    LayoutMismatch,
    /// The creator did not publish the header in time.
    #[error("the segment was not published in time")]
    NotReady,
    /// Its size is not sealed: another holder could shrink it under the mapping.
    #[error("the memory object's size is not sealed")]
    NotSealed,
    /// The operating system refused to map it.
    #[error("the operating system refused the mapping: {0}")]
    Os(io::ErrorKind),
}

impl Segment {
    /// Bytes before the data.
    pub const HEADER: usize = 128;
    const MAGIC: u64 = u64::from_le_bytes(*b"postbox\0");
    const LAYOUT_VERSION: u32 = 2;

    /// Creates a segment with `data_size` bytes of (zeroed) data and publishes its header.
    ///
    /// # Errors
    /// [`SegmentCreateError`].
    pub fn create(data_size: usize) -> Result<Self, SegmentCreateError> {
        Self::create_with(data_size, |_| {})
    }

    /// Like [`create`](Self::create), letting `init` write the data before the header is
    /// published (an opener that sees the header sees what `init` wrote).
    ///
    /// # Errors
    /// [`SegmentCreateError`].
    pub fn create_with(
        data_size: usize,
        init: impl FnOnce(&Self),
    ) -> Result<Self, SegmentCreateError> {
        if data_size == 0 {
            return Err(SegmentCreateError::SizeIsZero);
        }
        let os = |e: io::Error| SegmentCreateError::Os(e.kind());
        let total = Self::HEADER
            .checked_add(data_size)
            .ok_or(SegmentCreateError::Os(io::ErrorKind::InvalidInput))?;
        let fd = create_memory(total as u64).map_err(os)?;
        let mapping = Mapping::map(&fd, total).map_err(os)?;
        let segment = Self { fd, mapping, data_size };
        init(&segment);
        let header = segment.header();
        header.magic.store(Self::MAGIC, Ordering::Relaxed);
        header.version.store(Self::LAYOUT_VERSION, Ordering::Relaxed);
        header.data_size.store(data_size as u64, Ordering::Relaxed);
        // SYNC POINT: publishes the header; pairs with the opener's Acquire load of `ready`.
        header.ready.store(1, Ordering::Release);
        Ok(segment)
    }

    /// Opens a segment another process created, waiting up to `timeout` for its header.
    ///
    /// # Errors
    /// [`SegmentOpenError`].
    pub fn open(fd: OwnedFd, timeout: Duration) -> Result<Self, SegmentOpenError> {
        let os = |e: io::Error| SegmentOpenError::Os(e.kind());
        // A memory object whose size can change could shrink under the mapping (SIGBUS).
        if !size_is_sealed(&fd).map_err(os)? {
            return Err(SegmentOpenError::NotSealed);
        }
        let total = memory_size(&fd).map_err(os)?;
        let total = usize::try_from(total).map_err(|_| SegmentOpenError::TooSmall)?;
        if total <= Self::HEADER {
            return Err(SegmentOpenError::TooSmall);
        }
        let mapping = Mapping::map(&fd, total).map_err(os)?;
        let mut segment = Self { fd, mapping, data_size: 0 };
        let header = segment.header();
        let deadline = Instant::now() + timeout;
        // SYNC POINT: pairs with the creator's Release store of `ready`.
        while header.ready.load(Ordering::Acquire) != 1 {
            if Instant::now() >= deadline {
                return Err(SegmentOpenError::NotReady);
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        if header.magic.load(Ordering::Relaxed) != Self::MAGIC
            || header.version.load(Ordering::Relaxed) != Self::LAYOUT_VERSION
        {
            return Err(SegmentOpenError::LayoutMismatch);
        }
        let claimed = header.data_size.load(Ordering::Relaxed);
        let data_size = usize::try_from(claimed).map_err(|_| SegmentOpenError::TooSmall)?;
        if Self::HEADER.checked_add(data_size).is_none_or(|needed| needed > total) {
            return Err(SegmentOpenError::TooSmall);
        }
        segment.data_size = data_size;
        Ok(segment)
    }

    /// The descriptor, to pass to the other process.
    #[must_use]
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Bytes of data.
    #[must_use]
    pub fn data_size(&self) -> usize {
        self.data_size
    }

    /// A ring laid out at `offset` bytes into the data; `None` when it does not fit or the
    /// offset is not 8-aligned. Both processes must agree on `offset` and `layout`.
    pub fn ring(self: &Arc<Self>, offset: usize, layout: RingLayout) -> Option<SegmentRing> {
        let end = offset.checked_add(layout.size())?;
        if end > self.data_size || offset % 8 != 0 {
            return None;
        }
        // SAFETY: `HEADER + offset` is inside the mapping (`offset + size <= data_size` and
        // the mapping spans `HEADER + data_size`), so the pointer stays in bounds.
        let base = unsafe { self.mapping.as_ptr().as_ptr().add(Self::HEADER + offset) };
        let base = NonNull::new(base)?;
        // SAFETY: the region `base .. base + layout.size()` lies inside the mapping (checked
        // above), which is page-aligned plus multiples of 8, so `base` is 8-aligned; the
        // `SegmentRing` keeps the segment (and so the mapping) alive as long as it lives; the
        // memory is zeroed at creation, and the other process uses it only as the same ring.
        let region = unsafe { RegionRing::new(base, layout) };
        Some(SegmentRing { region, _segment: Arc::clone(self) })
    }

    /// A pointer `offset` bytes into the data.
    ///
    /// # Panics
    /// If `offset` is past the data (a layout bug of this crate).
    pub(crate) fn data_ptr(&self, offset: usize) -> NonNull<u8> {
        assert!(offset <= self.data_size, "offset past the segment's data");
        // SAFETY: `HEADER + offset <= HEADER + data_size`, the mapping's length, so the
        // pointer stays inside (or one past) the mapping.
        let ptr = unsafe { self.mapping.as_ptr().as_ptr().add(Self::HEADER + offset) };
        // A pointer into a mapping is never null.
        NonNull::new(ptr).expect("mapping pointers are not null")
    }

    fn header(&self) -> &Header {
        // SAFETY: the mapping spans at least `HEADER` (128) bytes, is page-aligned, and the
        // header's fields are atomics, which any process may access concurrently.
        unsafe { &*self.mapping.as_ptr().as_ptr().cast::<Header>() }
    }
}

/// The header's fields, all atomics: the other process may write them at any time.
#[repr(C)]
struct Header {
    magic: AtomicU64,
    version: AtomicU32,
    ready: AtomicU32,
    data_size: AtomicU64,
}

/// A ring in a segment, keeping the segment mapped while it lives.
#[derive(Debug)]
pub struct SegmentRing {
    region: RegionRing,
    _segment: Arc<Segment>,
}

impl crate::ring::sealed::Sealed for SegmentRing {}

impl RingMemory for SegmentRing {
    fn capacity(&self) -> u64 {
        self.region.capacity()
    }

    fn slot_size(&self) -> usize {
        self.region.slot_size()
    }

    fn tail(&self) -> &RingAtomic {
        self.region.tail()
    }

    fn head(&self) -> &RingAtomic {
        self.region.head()
    }

    unsafe fn write_slot(&self, index: usize, bytes: &[u8]) {
        // SAFETY: the caller upholds `write_slot`'s contract, which this forwards unchanged.
        unsafe { self.region.write_slot(index, bytes) }
    }

    unsafe fn read_slot(&self, index: usize, out: &mut Vec<u8>) -> Result<(), RingError> {
        // SAFETY: the caller upholds `read_slot`'s contract, which this forwards unchanged.
        unsafe { self.region.read_slot(index, out) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Ring;

    fn reopen(segment: &Segment) -> Result<Segment, SegmentOpenError> {
        let fd = segment.fd().try_clone_to_owned().unwrap();
        Segment::open(fd, Duration::from_secs(1))
    }

    #[test]
    #[cfg_attr(miri, ignore = "Miri cannot map memory objects")]
    fn a_ring_in_a_segment_carries_messages_between_two_mappings() {
        let layout = RingLayout::new(8, 64);
        let creator = Arc::new(Segment::create(layout.size()).unwrap());
        // A second, independent mapping of the same memory, as another process would have.
        let opener = Arc::new(reopen(&creator).unwrap());
        assert_eq!(opener.data_size(), layout.size());
        let mut producer = Ring::new(creator.ring(0, layout).unwrap()).producer();
        let mut consumer = Ring::new(opener.ring(0, layout).unwrap()).consumer();
        producer.push(b"across mappings").unwrap();
        let mut out = Vec::new();
        assert!(consumer.pop(&mut out).unwrap());
        assert_eq!(out, b"across mappings");
        assert!(creator.ring(8, RingLayout::new(8, 64)).is_none(), "does not fit");
        assert!(creator.ring(4, RingLayout::new(1, 8)).is_none(), "misaligned");
    }

    #[test]
    #[cfg_attr(miri, ignore = "Miri cannot map memory objects")]
    fn a_segment_cannot_be_shrunk_or_grown_by_anyone_holding_it() {
        let segment = Segment::create(4096).unwrap();
        assert!(rustix::fs::ftruncate(segment.fd(), 0).is_err());
        assert!(rustix::fs::ftruncate(segment.fd(), 1 << 20).is_err());
        assert!(reopen(&segment).is_ok());
    }

    #[test]
    #[cfg_attr(miri, ignore = "Miri cannot map memory objects")]
    fn a_memory_object_that_is_not_a_segment_is_refused() {
        let segment = Segment::create(4096).unwrap();
        segment.header().magic.store(7, Ordering::Relaxed);
        assert_eq!(reopen(&segment).unwrap_err(), SegmentOpenError::LayoutMismatch);
        segment.header().magic.store(Segment::MAGIC, Ordering::Relaxed);
        segment.header().data_size.store(u64::MAX, Ordering::Relaxed);
        assert_eq!(reopen(&segment).unwrap_err(), SegmentOpenError::TooSmall);
        segment.header().data_size.store(4096, Ordering::Relaxed);
        segment.header().ready.store(0, Ordering::Release);
        let fd = segment.fd().try_clone_to_owned().unwrap();
        assert_eq!(
            Segment::open(fd, Duration::from_millis(20)).unwrap_err(),
            SegmentOpenError::NotReady
        );
        assert_eq!(Segment::create(0).unwrap_err(), SegmentCreateError::SizeIsZero);
    }
}
