//! Bounded single-producer, single-consumer ring of byte messages.
//!
//! Layout (both backings): a producer index `tail` and a consumer index `head`, both counting
//! up forever (`u64`), and `capacity` slots, a power of two, each holding a `u32` length and
//! up to `slot_size` bytes. The producer fills slot `tail % capacity`, then publishes it by
//! storing `tail + 1` with Release; the consumer observes `tail` with Acquire, copies the slot
//! out, then frees it by storing `head + 1` with Release, which the producer observes with
//! Acquire before reusing the slot. Based on the classic Lamport SPSC queue.

use std::sync::Arc;

use crate::sync::{AtomicU64, Ordering};

/// Memory a [`Ring`] runs on. Implemented by [`HeapRing`] and [`RegionRing`] only.
pub trait RingMemory: sealed::Sealed {
    /// Number of slots (a power of two).
    fn capacity(&self) -> u64;
    /// Largest message, in bytes.
    fn slot_size(&self) -> usize;
    /// The producer's index.
    fn tail(&self) -> &AtomicU64;
    /// The consumer's index.
    fn head(&self) -> &AtomicU64;
    /// Writes `bytes` (at most `slot_size`) and their length into slot `index`.
    ///
    /// # Safety
    /// The caller is the only producer, `index < capacity`, and the slot is neither published
    /// nor still being read: the consumer's `head` (loaded with Acquire) is past the slot's
    /// previous use.
    unsafe fn write_slot(&self, index: usize, bytes: &[u8]);
    /// Copies slot `index` into `out` (cleared first). The length stored in the slot is
    /// untrusted and checked against `slot_size`.
    ///
    /// # Errors
    /// [`RingError::Corrupt`] when the stored length exceeds the slot.
    ///
    /// # Safety
    /// The caller is the only consumer, `index < capacity`, and the slot was published: a
    /// `tail` past it was loaded with Acquire.
    unsafe fn read_slot(&self, index: usize, out: &mut Vec<u8>) -> Result<(), RingError>;
}

pub(crate) mod sealed {
    pub trait Sealed {}
}

/// The peer broke the ring's rules (indices or lengths out of range): the link must go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RingError {
    /// Indices or a length in the ring are impossible.
    #[error("the ring's indices or lengths were corrupted by its peer")]
    Corrupt,
}

/// Failure of [`Producer::push`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PushError {
    /// Every slot holds a message the consumer has not taken.
    #[error("the ring is full")]
    Full,
    /// The message is larger than a slot.
    #[error("message of {len} bytes exceeds the slot size {slot_size}")]
    TooLarge {
        /// The message's length.
        len: usize,
        /// The slot size.
        slot_size: usize,
    },
    /// The consumer's index is impossible: the peer broke the rules.
    #[error("the ring's indices were corrupted by its peer")]
    Corrupt,
}

/// A ring over some memory, before it is split into its two ends.
#[derive(Debug)]
pub struct Ring<M: RingMemory> {
    memory: Arc<M>,
}

/// The producing end. `push` takes `&mut self`: one producer, by the type.
#[derive(Debug)]
pub struct Producer<M: RingMemory> {
    memory: Arc<M>,
    tail: u64,
    /// The consumer's index as last loaded. It only grows, so slots it shows free are free:
    /// `push` loads the index again only when this one shows the ring full, which keeps the
    /// consumer's cache line out of a push that has room (a transfer between cores each).
    head: u64,
}

/// The consuming end. `pop` takes `&mut self`: one consumer, by the type.
#[derive(Debug)]
pub struct Consumer<M: RingMemory> {
    memory: Arc<M>,
    head: u64,
}

/// What [`Consumer::pop_noting_full`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Popped {
    /// No message was waiting.
    Empty,
    /// A message was copied out; `crowded` when at least half the slots were taken before
    /// it (a producer waiting for room may be asleep and needs waking).
    Took {
        /// At least half the slots were taken before this pop.
        crowded: bool,
    },
}

impl<M: RingMemory> Ring<M> {
    /// A ring over `memory`.
    pub fn new(memory: M) -> Self {
        Self { memory: Arc::new(memory) }
    }

    /// Both ends, for a ring used within one process.
    #[must_use]
    pub fn split(self) -> (Producer<M>, Consumer<M>) {
        let consumer = Consumer {
            head: self.memory.head().load(Ordering::Acquire),
            memory: Arc::clone(&self.memory),
        };
        (self.producer(), consumer)
    }

    /// The producing end only (the consumer is another process).
    #[must_use]
    pub fn producer(self) -> Producer<M> {
        let tail = self.memory.tail().load(Ordering::Acquire);
        // A head past the tail (scribbled, or left by an earlier user) is caught by the first
        // push that loads the index again: starting from the tail, the ring looks empty.
        Producer { memory: self.memory, tail, head: tail }
    }

    /// The consuming end only (the producer is another process).
    #[must_use]
    pub fn consumer(self) -> Consumer<M> {
        let head = self.memory.head().load(Ordering::Acquire);
        Consumer { memory: self.memory, head }
    }
}

impl<M: RingMemory> Producer<M> {
    /// Copies `bytes` into the next slot and publishes it.
    ///
    /// # Errors
    /// [`PushError::Full`], [`PushError::TooLarge`], or [`PushError::Corrupt`] when the
    /// consumer's index is impossible.
    #[inline]
    pub fn push(&mut self, bytes: &[u8]) -> Result<(), PushError> {
        let memory = &*self.memory;
        if bytes.len() > memory.slot_size() {
            return Err(PushError::TooLarge { len: bytes.len(), slot_size: memory.slot_size() });
        }
        if self.tail.wrapping_sub(self.head) >= memory.capacity() {
            // SYNC POINT: pairs with the consumer's Release store of `head` after copying a
            // slot out, so the slot is free to overwrite.
            let head = memory.head().load(Ordering::Acquire);
            let used = self.tail.wrapping_sub(head);
            if used > memory.capacity() {
                return Err(PushError::Corrupt);
            }
            if used == memory.capacity() {
                return Err(PushError::Full);
            }
            self.head = head;
        }
        // The mask keeps the index below the capacity, a power of two.
        let index = (self.tail & (memory.capacity() - 1)) as usize;
        // SAFETY: `push` takes `&mut self` and a `Producer` is only made once per ring, so
        // this is the only producer; `index < capacity` by the mask; the slot is free because
        // `tail - head < capacity` for a `head` loaded with Acquire, now or at an earlier push
        // (an honest consumer finished reading the slot before it stored that index, and its
        // index only grows; a hostile one can only have a slot rewritten while it reads it,
        // which `write_slot` keeps inside the region), and it is not published until the
        // store below.
        unsafe { memory.write_slot(index, bytes) };
        self.tail = self.tail.wrapping_add(1);
        // SYNC POINT: publishes the slot; pairs with the consumer's Acquire load of `tail`.
        memory.tail().store(self.tail, Ordering::Release);
        Ok(())
    }

    /// True when every slot is taken (as far as the consumer's index tells now).
    #[must_use]
    pub fn is_full(&self) -> bool {
        let head = self.memory.head().load(Ordering::Acquire);
        self.tail.wrapping_sub(head) >= self.memory.capacity()
    }

    /// The largest message a slot holds.
    #[must_use]
    pub fn slot_size(&self) -> usize {
        self.memory.slot_size()
    }
}

impl<M: RingMemory> Consumer<M> {
    /// Copies the next message into `out` (cleared first); `Ok(false)` when there is none.
    ///
    /// # Errors
    /// [`RingError::Corrupt`] when the producer's index or a stored length is impossible.
    pub fn pop(&mut self, out: &mut Vec<u8>) -> Result<bool, RingError> {
        Ok(self.pop_noting_full(out)? != Popped::Empty)
    }

    /// Like [`pop`](Self::pop), and says whether at least half the slots were taken before it.
    ///
    /// A producer that found the ring full may go to sleep; the pops that follow must wake
    /// it. A pop's look at the producer's index may be older than the producer's last pushes
    /// (it looked, then the producer filled the ring and slept before this pop's freeing of
    /// a slot reached it), so "full" would miss it: the next pops would find one slot, then
    /// two, fewer than all taken. Half the ring leaves room for every such pop, whose looks
    /// all precede the producer's sleep (a store buffer's worth at most), yet is never
    /// reached while a consumer keeps up, so its pops skip the waking (a fence each).
    ///
    /// # Errors
    /// [`RingError::Corrupt`] when the producer's index or a stored length is impossible.
    #[inline]
    pub fn pop_noting_full(&mut self, out: &mut Vec<u8>) -> Result<Popped, RingError> {
        let memory = &*self.memory;
        // SYNC POINT: pairs with the producer's Release store of `tail` after filling a slot.
        let tail = memory.tail().load(Ordering::Acquire);
        let available = tail.wrapping_sub(self.head);
        if available == 0 {
            return Ok(Popped::Empty);
        }
        if available > memory.capacity() {
            return Err(RingError::Corrupt);
        }
        // The mask keeps the index below the capacity, a power of two.
        let index = (self.head & (memory.capacity() - 1)) as usize;
        // SAFETY: `pop` takes `&mut self` and a `Consumer` is only made once per ring, so
        // this is the only consumer; `index < capacity` by the mask; the slot was published
        // because `tail > head` was loaded with Acquire, pairing with the producer's Release.
        unsafe { memory.read_slot(index, out)? };
        self.head = self.head.wrapping_add(1);
        // SYNC POINT: frees the slot; pairs with the producer's Acquire load of `head`.
        memory.head().store(self.head, Ordering::Release);
        Ok(Popped::Took { crowded: available >= memory.capacity().div_ceil(2) })
    }

    /// True when no message waits (as far as the producer's index tells now).
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.memory.tail().load(Ordering::Acquire) == self.head
    }
}

/// A ring's memory in this process (tests, Miri and loom run the ring on it).
#[derive(Debug)]
pub struct HeapRing {
    tail: AtomicU64,
    head: AtomicU64,
    slot_size: usize,
    slots: Box<[crate::sync::UnsafeCell<Slot>]>,
}

#[derive(Debug, Default)]
struct Slot {
    len: usize,
    data: Box<[u8]>,
}

impl HeapRing {
    /// A ring of `capacity` slots (rounded up to a power of two, at least 1) of `slot_size`
    /// bytes each.
    #[must_use]
    pub fn new(capacity: usize, slot_size: usize) -> Self {
        let capacity = capacity.max(1).next_power_of_two();
        let slots = (0..capacity)
            .map(|_| {
                crate::sync::UnsafeCell::new(Slot {
                    len: 0,
                    data: vec![0; slot_size].into_boxed_slice(),
                })
            })
            .collect();
        Self { tail: AtomicU64::new(0), head: AtomicU64::new(0), slot_size, slots }
    }
}

impl sealed::Sealed for HeapRing {}

impl RingMemory for HeapRing {
    fn capacity(&self) -> u64 {
        self.slots.len() as u64
    }

    fn slot_size(&self) -> usize {
        self.slot_size
    }

    fn tail(&self) -> &AtomicU64 {
        &self.tail
    }

    fn head(&self) -> &AtomicU64 {
        &self.head
    }

    unsafe fn write_slot(&self, index: usize, bytes: &[u8]) {
        self.slots[index].with_mut(|slot| {
            // SAFETY: the caller guarantees exclusive access to this slot (sole producer, slot
            // neither published nor being read), so a unique reference is sound.
            let slot = unsafe { &mut *slot };
            slot.data[..bytes.len()].copy_from_slice(bytes);
            slot.len = bytes.len();
        });
    }

    unsafe fn read_slot(&self, index: usize, out: &mut Vec<u8>) -> Result<(), RingError> {
        self.slots[index].with(|slot| {
            // SAFETY: the caller guarantees the slot is published and that no producer writes
            // it until this consumer frees it, so a shared reference is sound.
            let slot = unsafe { &*slot };
            out.clear();
            let data = slot.data.get(..slot.len).ok_or(RingError::Corrupt)?;
            out.extend_from_slice(data);
            Ok(())
        })
    }
}

// SAFETY: the slots are only touched through the SPSC protocol above (one producer writes a
// slot before publishing it, one consumer reads it after observing that), and the indices are
// atomics; so sharing a `HeapRing` between the two threads is sound.
unsafe impl Sync for HeapRing {}

/// The shape of a ring laid out in a memory region.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RingLayout {
    /// Number of slots (a power of two).
    pub capacity: u64,
    /// Largest message, in bytes.
    pub slot_size: usize,
}

impl RingLayout {
    /// Bytes before the first slot: `tail` and `head`, each on its own cache line.
    pub const HEADER: usize = 128;

    /// A layout with `capacity` rounded up to a power of two (at least 1).
    #[must_use]
    pub fn new(capacity: u64, slot_size: usize) -> Self {
        Self { capacity: capacity.max(1).next_power_of_two(), slot_size }
    }

    /// Bytes from one slot to the next: the length word and the data, rounded up to 8.
    #[must_use]
    pub const fn stride(&self) -> usize {
        (4 + self.slot_size).next_multiple_of(8)
    }

    /// Bytes the whole ring takes.
    #[must_use]
    pub const fn size(&self) -> usize {
        Self::HEADER + self.capacity as usize * self.stride()
    }
}

/// A ring laid out in a memory region that another process may map too.
#[cfg(not(loom))]
#[derive(Debug)]
pub struct RegionRing {
    base: std::ptr::NonNull<u8>,
    layout: RingLayout,
}

#[cfg(not(loom))]
impl RegionRing {
    /// A ring over the region at `base`.
    ///
    /// # Safety
    /// `base` is aligned to 8 bytes and valid for reads and writes of `layout.size()` bytes for
    /// the life of the returned value; the two index words were zeroed before either end used
    /// the ring (or hold values a previous user left, which the ends check); only this ring
    /// and its peer access the region, and only through ring ends.
    #[must_use]
    pub unsafe fn new(base: std::ptr::NonNull<u8>, layout: RingLayout) -> Self {
        Self { base, layout }
    }

    fn slot_ptr(&self, index: usize) -> *mut u8 {
        let offset = RingLayout::HEADER + index * self.layout.stride();
        // SAFETY: callers pass `index < capacity`, so `offset + stride <= size()`, inside the
        // region `new`'s contract makes valid.
        unsafe { self.base.as_ptr().add(offset) }
    }
}

#[cfg(not(loom))]
impl sealed::Sealed for RegionRing {}

#[cfg(not(loom))]
impl RingMemory for RegionRing {
    fn capacity(&self) -> u64 {
        self.layout.capacity
    }

    fn slot_size(&self) -> usize {
        self.layout.slot_size
    }

    fn tail(&self) -> &AtomicU64 {
        // SAFETY: offset 0 is inside the region, 8-aligned (`new`'s contract); an `AtomicU64`
        // may be shared with any other accessor, which all go through atomics too.
        unsafe { &*self.base.as_ptr().cast::<AtomicU64>() }
    }

    fn head(&self) -> &AtomicU64 {
        // SAFETY: offset 64 is inside the region (the header is 128 bytes) and 8-aligned; as
        // for `tail`, every accessor of this word uses atomics.
        unsafe { &*self.base.as_ptr().add(64).cast::<AtomicU64>() }
    }

    unsafe fn write_slot(&self, index: usize, bytes: &[u8]) {
        let slot = self.slot_ptr(index);
        // The length fits a `u32`: it is at most `slot_size`, checked by the producer, and
        // slots are far smaller than 4 GiB.
        let len = (bytes.len() as u32).to_ne_bytes();
        // SAFETY: the slot spans `stride >= 4 + slot_size` bytes inside the region and
        // `bytes.len() <= slot_size`; the caller guarantees no one else accesses this slot
        // now (sole producer, unpublished, freed by the consumer). Source and destination
        // cannot overlap: `bytes` is this process's memory, not the ring's.
        unsafe {
            std::ptr::copy_nonoverlapping(len.as_ptr(), slot, 4);
            std::ptr::copy_nonoverlapping(bytes.as_ptr(), slot.add(4), bytes.len());
        }
    }

    unsafe fn read_slot(&self, index: usize, out: &mut Vec<u8>) -> Result<(), RingError> {
        let slot = self.slot_ptr(index);
        let mut len = [0u8; 4];
        // SAFETY: the first 4 bytes of the slot are inside the region; they are copied out
        // once, so the check below and the copy use the same value whatever a hostile peer
        // writes meanwhile.
        unsafe { std::ptr::copy_nonoverlapping(slot, len.as_mut_ptr(), 4) };
        let len = u32::from_ne_bytes(len) as usize;
        if len > self.layout.slot_size {
            return Err(RingError::Corrupt);
        }
        out.clear();
        out.reserve(len);
        // SAFETY: `len <= slot_size`, so `slot + 4 .. slot + 4 + len` is inside the slot;
        // `out` has room for `len` bytes (reserved above) and is this process's memory, so
        // they do not overlap; `set_len` follows a copy that initialised exactly those bytes.
        unsafe {
            std::ptr::copy_nonoverlapping(slot.add(4), out.as_mut_ptr(), len);
            out.set_len(len);
        }
        Ok(())
    }
}

// SAFETY: a `RegionRing` is a pointer to shared memory whose index words are atomics and
// whose slots are accessed only by the SPSC protocol; moving it to or sharing it with
// another thread changes nothing about that.
#[cfg(not(loom))]
unsafe impl Send for RegionRing {}
// SAFETY: as for `Send`: all access goes through the ring ends, which follow the protocol.
#[cfg(not(loom))]
unsafe impl Sync for RegionRing {}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    fn fifo<M: RingMemory>(ring: Ring<M>) {
        let (mut producer, mut consumer) = ring.split();
        let mut out = Vec::new();
        for round in 0..5u8 {
            for i in 0..4u8 {
                producer.push(&[round, i, 7]).unwrap();
            }
            assert_eq!(producer.push(b"x"), Err(PushError::Full));
            for i in 0..4u8 {
                assert!(consumer.pop(&mut out).unwrap());
                assert_eq!(out, [round, i, 7]);
            }
            assert!(!consumer.pop(&mut out).unwrap());
        }
        assert_eq!(producer.push(&[0; 65]), Err(PushError::TooLarge { len: 65, slot_size: 64 }));
    }

    /// A heap buffer aligned to 8, standing in for a mapped segment.
    fn region(layout: RingLayout) -> (Vec<u64>, RegionRing) {
        let mut words = vec![0u64; layout.size().div_ceil(8)];
        let base = std::ptr::NonNull::new(words.as_mut_ptr().cast::<u8>()).unwrap();
        // SAFETY: `words` is 8-aligned, zeroed, `size()` bytes long, and outlives the ring in
        // every test (returned together, dropped after it).
        let ring = unsafe { RegionRing::new(base, layout) };
        (words, ring)
    }

    #[test]
    fn a_heap_ring_is_fifo_and_reports_full_and_too_large() {
        fifo(Ring::new(HeapRing::new(4, 64)));
    }

    #[test]
    fn a_region_ring_is_fifo_and_reports_full_and_too_large() {
        let (_words, ring) = region(RingLayout::new(4, 64));
        fifo(Ring::new(ring));
    }

    #[test]
    fn a_corrupted_length_or_index_is_reported_never_read_out_of_bounds() {
        let layout = RingLayout::new(4, 64);
        let (mut words, ring) = region(layout);
        let (mut producer, mut consumer) = Ring::new(ring).split();
        producer.push(b"fine").unwrap();
        // A hostile peer writes an impossible length into the published slot.
        let slot_word = RingLayout::HEADER / 8;
        words[slot_word] = u64::from(u32::MAX);
        let mut out = Vec::new();
        assert_eq!(consumer.pop(&mut out), Err(RingError::Corrupt));
        // ... and an impossible producer index.
        words[0] = u64::MAX / 2;
        assert_eq!(consumer.pop(&mut out), Err(RingError::Corrupt));
        // ... and an impossible consumer index, seen by the producer once the slots it knew
        // free are used (it loads the index only then).
        words[8] = u64::MAX / 2;
        for _ in 1..4 {
            producer.push(b"x").unwrap();
        }
        assert_eq!(producer.push(b"x"), Err(PushError::Corrupt));
    }

    #[test]
    fn a_pop_says_when_it_found_the_ring_half_full_or_more() {
        let (mut producer, mut consumer) = Ring::new(HeapRing::new(4, 8)).split();
        let mut out = Vec::new();
        let took = |crowded| Ok(Popped::Took { crowded });
        assert_eq!(consumer.pop_noting_full(&mut out), Ok(Popped::Empty));
        assert!(consumer.is_empty());
        producer.push(b"a").unwrap();
        assert!(!consumer.is_empty());
        assert_eq!(consumer.pop_noting_full(&mut out), took(false));
        for byte in [b"b", b"c", b"d", b"e"] {
            producer.push(byte).unwrap();
        }
        assert_eq!(producer.push(b"f"), Err(PushError::Full));
        assert_eq!(consumer.pop_noting_full(&mut out), took(true), "4 of 4");
        assert_eq!(out, b"b");
        // The producer's cached index said full; it loads the consumer's again and finds room.
        producer.push(b"f").unwrap();
        assert_eq!(consumer.pop_noting_full(&mut out), took(true), "4 of 4");
        assert_eq!(consumer.pop_noting_full(&mut out), took(true), "3 of 4");
        assert_eq!(consumer.pop_noting_full(&mut out), took(true), "2 of 4");
        assert_eq!(consumer.pop_noting_full(&mut out), took(false), "1 of 4");
        assert_eq!(out, b"f");
        assert_eq!(producer.slot_size(), 8);
    }

    #[test]
    fn a_producer_and_a_consumer_thread_pass_every_message_in_order() {
        let ring = Ring::new(HeapRing::new(8, 16));
        let (mut producer, mut consumer) = ring.split();
        let count = if cfg!(miri) { 200u64 } else { 100_000 };
        let writer = std::thread::spawn(move || {
            for i in 0..count {
                while producer.push(&i.to_le_bytes()) == Err(PushError::Full) {
                    std::thread::yield_now();
                }
            }
        });
        let mut out = Vec::new();
        let mut next = 0u64;
        while next < count {
            if consumer.pop(&mut out).unwrap() {
                assert_eq!(out, next.to_le_bytes());
                next += 1;
            } else {
                std::thread::yield_now();
            }
        }
        writer.join().unwrap();
    }
}
