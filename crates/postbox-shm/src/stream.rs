//! Bounded single-producer, single-consumer byte stream: the data path of a shared-memory link.
//!
//! Layout (both backings): a producer index `tail` and a consumer index `head`, both counting
//! bytes up forever (`u64`), each on its own cache line, then `capacity` bytes of data, a power
//! of two, used circularly. The producer copies bytes in at `tail % capacity`, then publishes
//! them by storing the new `tail` with Release; the consumer observes `tail` with Acquire,
//! copies bytes out, then frees them by storing the new `head` with Release, which the
//! producer observes with Acquire before reusing the space. Each end keeps its own index
//! privately and only publishes it, so a peer that scribbles over the shared words can make
//! the other end see an impossible distance (reported as [`StreamError::Corrupt`]), never make
//! it read or write outside the data.
//!
//! The producer remembers the last `head` it loaded and loads the shared word again only when
//! that leaves too little room: the consumer's line is not pulled across cores on every write.
//! It may also stage several writes and publish them with one store ([`StreamProducer::stage`],
//! [`StreamProducer::publish`]), so a batch of frames costs the consumer one look.
//!
//! The stream carries bytes, not messages: frames are cut by the reader's frame decoder, which
//! validates them as it would bytes from a socket.

use std::sync::Arc;

use crate::sync::{AtomicU64, Ordering};

/// Memory a [`Stream`] runs on. Implemented by [`HeapStream`] and [`RegionStream`] only.
pub trait StreamMemory: sealed::Sealed {
    /// Bytes of data (a power of two).
    fn capacity(&self) -> u64;
    /// The producer's index.
    fn tail(&self) -> &AtomicU64;
    /// The consumer's index.
    fn head(&self) -> &AtomicU64;
    /// Copies `bytes` into the data at `offset`.
    ///
    /// # Safety
    /// The caller is the only producer; `offset + bytes.len() <= capacity`; the consumer has
    /// freed that space (its `head`, loaded with Acquire, is past the space's previous use)
    /// and it is not published yet.
    unsafe fn copy_in(&self, offset: usize, bytes: &[u8]);
    /// Copies the data at `offset` into `out`.
    ///
    /// # Safety
    /// The caller is the only consumer; `offset + out.len() <= capacity`; the space was
    /// published: a `tail` past it was loaded with Acquire.
    unsafe fn copy_out(&self, offset: usize, out: &mut [u8]);
}

pub(crate) mod sealed {
    pub trait Sealed {}
}

/// The peer broke the stream's rules: the link must go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StreamError {
    /// The indices are an impossible distance apart.
    #[error("the stream's indices were corrupted by its peer")]
    Corrupt,
}

/// A stream over some memory, before it is split into its two ends.
#[derive(Debug)]
pub struct Stream<M: StreamMemory> {
    memory: Arc<M>,
}

/// The writing end. Takes `&mut self`: one producer, by the type.
#[derive(Debug)]
pub struct StreamProducer<M: StreamMemory> {
    memory: Arc<M>,
    /// Where the next byte goes (staged bytes included).
    tail: u64,
    /// The `tail` last stored in the shared word.
    published: u64,
    /// The consumer's `head` as last loaded (checked then).
    head_seen: u64,
}

/// The reading end. Takes `&mut self`: one consumer, by the type.
#[derive(Debug)]
pub struct StreamConsumer<M: StreamMemory> {
    memory: Arc<M>,
    head: u64,
}

/// A look at the producer's index without the consumer: any thread may ask whether bytes
/// were published past a position the consumer reported ([`StreamConsumer::position`]).
#[derive(Debug)]
pub struct StreamWatch<M: StreamMemory> {
    memory: Arc<M>,
}

impl<M: StreamMemory> Stream<M> {
    /// A stream over `memory`.
    pub fn new(memory: M) -> Self {
        Self { memory: Arc::new(memory) }
    }

    /// Both ends, for a stream used within one process.
    #[must_use]
    pub fn split(self) -> (StreamProducer<M>, StreamConsumer<M>) {
        let consumer = StreamConsumer {
            head: self.memory.head().load(Ordering::Acquire),
            memory: Arc::clone(&self.memory),
        };
        (self.producer(), consumer)
    }

    /// The writing end only (the reader is another process).
    #[must_use]
    pub fn producer(self) -> StreamProducer<M> {
        let tail = self.memory.tail().load(Ordering::Acquire);
        let head_seen = self.memory.head().load(Ordering::Acquire);
        // An impossible head leaves no room until a load finds a possible one.
        let head_seen = if tail.wrapping_sub(head_seen) > self.memory.capacity() {
            tail.wrapping_sub(self.memory.capacity())
        } else {
            head_seen
        };
        StreamProducer { memory: self.memory, tail, published: tail, head_seen }
    }

    /// The reading end only (the writer is another process).
    #[must_use]
    pub fn consumer(self) -> StreamConsumer<M> {
        let head = self.memory.head().load(Ordering::Acquire);
        StreamConsumer { memory: self.memory, head }
    }
}

impl<M: StreamMemory> StreamProducer<M> {
    /// Bytes that can be written now.
    ///
    /// # Errors
    /// [`StreamError::Corrupt`] when the consumer's index is impossible.
    pub fn free(&mut self) -> Result<usize, StreamError> {
        let memory = &*self.memory;
        // SYNC POINT: pairs with the consumer's Release store of `head` after copying bytes
        // out, so the space it covers is free to overwrite.
        let head = memory.head().load(Ordering::Acquire);
        let used = self.tail.wrapping_sub(head);
        // The consumer cannot have freed bytes before the ones it freed last time.
        if used > memory.capacity() || head.wrapping_sub(self.head_seen) > memory.capacity() {
            return Err(StreamError::Corrupt);
        }
        self.head_seen = head;
        // At most `capacity`, which is a mapped size and so fits a `usize`.
        Ok((memory.capacity() - used) as usize)
    }

    /// Room for at least `wanted` bytes, from the `head` seen last if it leaves enough, else
    /// from a new look; returns the room found (which may be less).
    fn room_for(&mut self, wanted: usize) -> Result<usize, StreamError> {
        let used = self.tail.wrapping_sub(self.head_seen);
        // `head_seen` was checked when it was loaded and `tail` grew only into room: at most
        // `capacity`, which fits a `usize`.
        let room = (self.memory.capacity() - used) as usize;
        if room >= wanted {
            return Ok(room);
        }
        self.free()
    }

    /// Copies as much of `bytes` as fits now and publishes it (with anything staged before);
    /// returns how much (0 when full).
    ///
    /// # Errors
    /// [`StreamError::Corrupt`] when the consumer's index is impossible.
    pub fn write(&mut self, bytes: &[u8]) -> Result<usize, StreamError> {
        let n = self.room_for(bytes.len())?.min(bytes.len());
        self.copy_in(&bytes[..n]);
        self.publish();
        Ok(n)
    }

    /// Copies all of `parts` (one after the other) without publishing them, if they fit now;
    /// false (nothing copied) if they do not. [`publish`](Self::publish) makes them visible.
    ///
    /// # Errors
    /// [`StreamError::Corrupt`] when the consumer's index is impossible.
    pub fn stage(&mut self, parts: &[&[u8]]) -> Result<bool, StreamError> {
        let total = parts.iter().map(|p| p.len()).sum::<usize>();
        if self.room_for(total)? < total {
            return Ok(false);
        }
        for part in parts {
            self.copy_in(part);
        }
        Ok(true)
    }

    /// Makes every staged byte visible to the consumer (one store).
    pub fn publish(&mut self) {
        if self.published != self.tail {
            self.published = self.tail;
            // SYNC POINT: publishes the bytes; pairs with the consumer's Acquire load of
            // `tail`.
            self.memory.tail().store(self.tail, Ordering::Release);
        }
    }

    /// How many bytes were written in all, staged ones included (the producer's index).
    #[must_use]
    pub fn position(&self) -> u64 {
        self.tail
    }

    /// True when bytes are staged but not published.
    #[must_use]
    pub fn has_staged(&self) -> bool {
        self.published != self.tail
    }

    /// Copies `bytes`, which fit in the room last found, in at `tail` and advances it
    /// (unpublished).
    fn copy_in(&mut self, bytes: &[u8]) {
        let n = bytes.len();
        if n == 0 {
            return;
        }
        let memory = &*self.memory;
        let capacity = memory.capacity() as usize;
        // The mask keeps the offset below the capacity, a power of two.
        let offset = (self.tail & (memory.capacity() - 1)) as usize;
        let first = n.min(capacity - offset);
        // SAFETY: `copy_in`'s contract: this is the only producer (`&mut self`, one producer
        // per stream); `offset + first <= capacity` and `first + (n - first) = n <= room`
        // (every caller checked the room `room_for` found), so both pieces lie in space the
        // consumer freed (from a `head` loaded with Acquire in `free`, now or before) that is
        // unpublished until `publish` stores `tail`.
        unsafe {
            memory.copy_in(offset, &bytes[..first]);
            memory.copy_in(0, &bytes[first..n]);
        }
        self.tail = self.tail.wrapping_add(n as u64);
    }

    /// Bytes of data in all.
    #[must_use]
    pub fn capacity(&self) -> usize {
        self.memory.capacity() as usize
    }
}

impl<M: StreamMemory> StreamConsumer<M> {
    /// How many bytes were read in all (the consumer's index).
    #[must_use]
    pub fn position(&self) -> u64 {
        self.head
    }

    /// A watch on this stream's producer index, for threads that do not hold the consumer.
    #[must_use]
    pub fn watch(&self) -> StreamWatch<M> {
        StreamWatch { memory: Arc::clone(&self.memory) }
    }

    /// Bytes that can be read now.
    ///
    /// # Errors
    /// [`StreamError::Corrupt`] when the producer's index is impossible.
    pub fn available(&self) -> Result<usize, StreamError> {
        let memory = &*self.memory;
        // SYNC POINT: pairs with the producer's Release store of `tail` after copying bytes in.
        let tail = memory.tail().load(Ordering::Acquire);
        let available = tail.wrapping_sub(self.head);
        if available > memory.capacity() {
            return Err(StreamError::Corrupt);
        }
        Ok(available as usize)
    }

    /// Copies up to `out.len()` bytes out and frees their space; returns how many (0 when the
    /// stream is empty).
    ///
    /// # Errors
    /// [`StreamError::Corrupt`] when the producer's index is impossible.
    pub fn read(&mut self, out: &mut [u8]) -> Result<usize, StreamError> {
        let n = self.available()?.min(out.len());
        if n == 0 {
            return Ok(0);
        }
        let memory = &*self.memory;
        let capacity = memory.capacity() as usize;
        // The mask keeps the offset below the capacity, a power of two.
        let offset = (self.head & (memory.capacity() - 1)) as usize;
        let first = n.min(capacity - offset);
        let (front, back) = out[..n].split_at_mut(first);
        // SAFETY: `copy_out`'s contract: this is the only consumer (`&mut self`, one consumer
        // per stream); `offset + first <= capacity` and `back.len() = n - first <= capacity`;
        // all `n` bytes were published (`n <= available`, from a `tail` loaded with Acquire).
        unsafe {
            memory.copy_out(offset, front);
            memory.copy_out(0, back);
        }
        self.head = self.head.wrapping_add(n as u64);
        // SYNC POINT: frees the space; pairs with the producer's Acquire load of `head`.
        memory.head().store(self.head, Ordering::Release);
        Ok(n)
    }
}

impl<M: StreamMemory> StreamWatch<M> {
    /// True when the producer's index differs from `position` (a [`StreamConsumer::position`]):
    /// bytes past it were published, or the peer scribbled over the index (which a read then
    /// reports as [`StreamError::Corrupt`]). One load, no lock.
    #[must_use]
    pub fn published_past(&self, position: u64) -> bool {
        // SYNC POINT: pairs with the producer's Release store of `tail`; a reader that sees
        // the new index and then reads loads it again with Acquire in `available`.
        self.memory.tail().load(Ordering::Acquire) != position
    }
}

/// A stream's memory in this process (tests, Miri and loom run the stream on it).
#[derive(Debug)]
pub struct HeapStream {
    tail: AtomicU64,
    head: AtomicU64,
    data: Box<[crate::sync::UnsafeCell<u8>]>,
}

impl HeapStream {
    /// A stream of `capacity` bytes (rounded up to a power of two, at least 1).
    #[must_use]
    pub fn new(capacity: usize) -> Self {
        let capacity = capacity.max(1).next_power_of_two();
        let data = (0..capacity).map(|_| crate::sync::UnsafeCell::new(0)).collect();
        Self { tail: AtomicU64::new(0), head: AtomicU64::new(0), data }
    }
}

impl sealed::Sealed for HeapStream {}

impl StreamMemory for HeapStream {
    fn capacity(&self) -> u64 {
        self.data.len() as u64
    }

    fn tail(&self) -> &AtomicU64 {
        &self.tail
    }

    fn head(&self) -> &AtomicU64 {
        &self.head
    }

    unsafe fn copy_in(&self, offset: usize, bytes: &[u8]) {
        for (cell, byte) in self.data[offset..offset + bytes.len()].iter().zip(bytes) {
            // SAFETY: the caller guarantees this producer alone accesses these bytes now
            // (freed by the consumer, not yet published), so writing through the pointer is
            // sound.
            cell.with_mut(|p| unsafe { *p = *byte });
        }
    }

    unsafe fn copy_out(&self, offset: usize, out: &mut [u8]) {
        for (cell, byte) in self.data[offset..offset + out.len()].iter().zip(out) {
            // SAFETY: the caller guarantees these bytes were published and that no producer
            // writes them until this consumer frees them, so reading is sound.
            *byte = cell.with(|p| unsafe { *p });
        }
    }
}

// SAFETY: the data bytes are only touched through the SPSC protocol above (the producer
// writes space before publishing it, the consumer reads it after observing that), and the
// indices are atomics; so sharing a `HeapStream` between the two threads is sound.
unsafe impl Sync for HeapStream {}

/// The shape of a stream laid out in a memory region.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamLayout {
    /// Bytes of data (a power of two).
    pub capacity: u64,
}

impl StreamLayout {
    /// Bytes before the data: `tail` and `head`, each on its own cache line.
    pub const HEADER: usize = 128;

    /// A layout with `capacity` rounded up to a power of two (at least 8).
    #[must_use]
    pub fn new(capacity: u64) -> Self {
        Self { capacity: capacity.max(8).next_power_of_two() }
    }

    /// Bytes the whole stream takes.
    #[must_use]
    pub fn size(&self) -> usize {
        Self::HEADER + self.capacity as usize
    }
}

/// A stream laid out in a memory region that another process may map too.
#[cfg(not(loom))]
#[derive(Debug)]
pub struct RegionStream {
    base: std::ptr::NonNull<u8>,
    layout: StreamLayout,
    /// What keeps the region mapped, if anything (a segment).
    _owner: Option<Arc<dyn std::any::Any + Send + Sync>>,
}

#[cfg(not(loom))]
impl RegionStream {
    /// A stream over the region at `base`.
    ///
    /// # Safety
    /// `base` is aligned to 8 bytes and valid for reads and writes of `layout.size()` bytes for
    /// the life of the returned value (or of `owner`, which it keeps); the two index words were
    /// zeroed before either end used the stream (or hold values a previous user left, which
    /// the ends check); in this process, only this stream accesses the region.
    #[must_use]
    pub unsafe fn new(
        base: std::ptr::NonNull<u8>,
        layout: StreamLayout,
        owner: Option<Arc<dyn std::any::Any + Send + Sync>>,
    ) -> Self {
        Self { base, layout, _owner: owner }
    }

    fn data(&self) -> *mut u8 {
        // SAFETY: the header lies inside the region `new`'s contract makes valid.
        unsafe { self.base.as_ptr().add(StreamLayout::HEADER) }
    }
}

#[cfg(not(loom))]
impl sealed::Sealed for RegionStream {}

#[cfg(not(loom))]
impl StreamMemory for RegionStream {
    fn capacity(&self) -> u64 {
        self.layout.capacity
    }

    fn tail(&self) -> &AtomicU64 {
        // SAFETY: offset 0 is inside the region and 8-aligned (`new`'s contract); an
        // `AtomicU64` may be shared with any other accessor, which all go through atomics too.
        unsafe { &*self.base.as_ptr().cast::<AtomicU64>() }
    }

    fn head(&self) -> &AtomicU64 {
        // SAFETY: offset 64 is inside the region (the header is 128 bytes) and 8-aligned; as
        // for `tail`, every accessor of this word uses atomics.
        unsafe { &*self.base.as_ptr().add(64).cast::<AtomicU64>() }
    }

    unsafe fn copy_in(&self, offset: usize, bytes: &[u8]) {
        // SAFETY: `offset + len <= capacity` (caller), so the destination lies in the data;
        // the caller guarantees no one in this process touches those bytes now, and `bytes`
        // is this process's private memory, so the ranges do not overlap.
        unsafe {
            std::ptr::copy_nonoverlapping(bytes.as_ptr(), self.data().add(offset), bytes.len());
        }
    }

    unsafe fn copy_out(&self, offset: usize, out: &mut [u8]) {
        // SAFETY: `offset + len <= capacity` (caller), so the source lies in the data; `out`
        // is this process's private memory. A hostile peer writing the source meanwhile can
        // only change which bytes are copied: they are plain bytes, validated after the copy.
        unsafe {
            std::ptr::copy_nonoverlapping(self.data().add(offset), out.as_mut_ptr(), out.len());
        }
    }
}

// SAFETY: a `RegionStream` is a pointer to shared memory whose index words are atomics and
// whose data is accessed only by the SPSC protocol; moving it to or sharing it with another
// thread changes nothing about that.
#[cfg(not(loom))]
unsafe impl Send for RegionStream {}
// SAFETY: as for `Send`: all access goes through the stream ends, which follow the protocol.
#[cfg(not(loom))]
unsafe impl Sync for RegionStream {}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    fn wraps_and_reports_full<M: StreamMemory>(stream: Stream<M>) {
        let (mut producer, mut consumer) = stream.split();
        let mut out = [0u8; 16];
        for round in 0..20u8 {
            let chunk = [round; 5];
            assert_eq!(producer.write(&chunk).unwrap(), 5);
            assert_eq!(producer.write(&chunk).unwrap(), 5);
            assert_eq!(consumer.read(&mut out[..7]).unwrap(), 7);
            assert_eq!(consumer.read(&mut out[7..]).unwrap(), 3);
            assert_eq!(&out[..10], &[round; 10]);
            assert_eq!(consumer.read(&mut out).unwrap(), 0);
        }
        assert_eq!(producer.write(&[9; 40]).unwrap(), 16, "only the capacity fits");
        assert_eq!(producer.write(&[9]).unwrap(), 0);
        assert_eq!(producer.free().unwrap(), 0);
        assert_eq!(consumer.available().unwrap(), 16);
    }

    fn region(layout: StreamLayout) -> (Vec<u64>, RegionStream) {
        let mut words = vec![0u64; layout.size().div_ceil(8)];
        let base = std::ptr::NonNull::new(words.as_mut_ptr().cast::<u8>()).unwrap();
        // SAFETY: `words` is 8-aligned, zeroed, `size()` bytes long, and outlives the stream in
        // every test (returned together, dropped after it).
        let stream = unsafe { RegionStream::new(base, layout, None) };
        (words, stream)
    }

    #[test]
    fn a_heap_stream_wraps_around_and_reports_full() {
        wraps_and_reports_full(Stream::new(HeapStream::new(16)));
    }

    #[test]
    fn a_region_stream_wraps_around_and_reports_full() {
        let (_words, stream) = region(StreamLayout::new(16));
        wraps_and_reports_full(Stream::new(stream));
    }

    #[test]
    fn corrupted_indices_are_reported_never_followed() {
        let (mut words, stream) = region(StreamLayout::new(16));
        let (mut producer, mut consumer) = Stream::new(stream).split();
        producer.write(b"fine").unwrap();
        // A hostile peer moves the producer index far ahead...
        words[0] = 1 << 40;
        let mut out = [0u8; 64];
        assert_eq!(consumer.read(&mut out), Err(StreamError::Corrupt));
        // ... or the consumer index, as the producer sees it.
        words[8] = 1 << 40;
        assert_eq!(producer.free(), Err(StreamError::Corrupt));
        // A write that fits the room seen before needs no new look; one that does not looks.
        assert_eq!(producer.write(&[0; 13]), Err(StreamError::Corrupt));
        // An index that moves back is as impossible.
        words[8] = 0;
        assert_eq!(producer.free().unwrap(), 12);
        words[8] = 1;
        assert_eq!(producer.free().unwrap(), 13);
        words[8] = 0;
        assert_eq!(producer.free(), Err(StreamError::Corrupt));
    }

    #[test]
    fn staged_bytes_stay_invisible_until_published_and_go_whole_or_not_at_all() {
        let (mut producer, mut consumer) = Stream::new(HeapStream::new(16)).split();
        let mut out = [0u8; 16];
        assert!(producer.stage(&[b"abc", b"de"]).unwrap());
        assert!(producer.stage(&[b"fgh"]).unwrap());
        assert!(producer.has_staged());
        assert_eq!(consumer.read(&mut out).unwrap(), 0, "nothing published yet");
        // Eight bytes staged: nine more do not fit, and none of them is copied.
        assert!(!producer.stage(&[b"12345", b"6789"]).unwrap());
        producer.publish();
        assert!(!producer.has_staged());
        assert_eq!(consumer.read(&mut out).unwrap(), 8);
        assert_eq!(&out[..8], b"abcdefgh");
        // The room the consumer freed is found again, across the wrap.
        assert!(producer.stage(&[b"0123456789", b"abcdef"]).unwrap());
        producer.publish();
        assert_eq!(consumer.read(&mut out).unwrap(), 16);
        assert_eq!(&out, b"0123456789abcdef");
    }

    #[test]
    fn a_writer_and_a_reader_thread_pass_every_byte_in_order() {
        let (mut producer, mut consumer) = Stream::new(HeapStream::new(64)).split();
        let total: usize = if cfg!(miri) { 2_000 } else { 1_000_000 };
        let writer = std::thread::spawn(move || {
            let bytes: Vec<u8> = (0..total).map(|i| (i % 251) as u8).collect();
            let mut sent = 0;
            while sent < total {
                let end = (sent + 37).min(total);
                match producer.write(&bytes[sent..end]).unwrap() {
                    0 => std::thread::yield_now(),
                    n => sent += n,
                }
            }
        });
        let mut got = 0usize;
        let mut out = [0u8; 50];
        while got < total {
            let n = consumer.read(&mut out).unwrap();
            for (i, byte) in out[..n].iter().enumerate() {
                assert_eq!(*byte, ((got + i) % 251) as u8);
            }
            got += n;
            if n == 0 {
                std::thread::yield_now();
            }
        }
        writer.join().unwrap();
    }

    #[test]
    fn a_watch_sees_published_bytes_past_the_consumers_position_and_nothing_else() {
        let (mut producer, mut consumer) = Stream::new(HeapStream::new(16)).split();
        let watch = consumer.watch();
        assert!(!watch.published_past(consumer.position()), "empty");
        producer.stage(&[b"abc"]).unwrap();
        assert!(!watch.published_past(consumer.position()), "staged bytes are not published");
        producer.publish();
        assert!(watch.published_past(consumer.position()));
        let mut out = [0u8; 8];
        assert_eq!(consumer.read(&mut out).unwrap(), 3);
        assert_eq!(consumer.position(), 3);
        assert!(!watch.published_past(consumer.position()), "all read");
    }
}
