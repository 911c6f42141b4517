//! Fuzzing hooks (`cfg(fuzzing)`): a stream laid out in memory of this process whose every
//! word a fuzz target sets, as a hostile peer would write a shared segment.
//!
//! The region is a heap allocation of exactly the stream's size, so AddressSanitizer sees any
//! access past it; a mapped segment would hide such an access among its neighbours.

use std::any::Any;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::stream::{RegionStream, Stream, StreamConsumer, StreamLayout, StreamProducer};

/// Both ends of a [`RegionStream`] over heap memory that the caller may overwrite between
/// operations: indices, data, anything.
#[derive(Debug)]
pub struct ExposedStream {
    words: Arc<Box<[AtomicU64]>>,
    producer: StreamProducer<RegionStream>,
    consumer: StreamConsumer<RegionStream>,
}

impl ExposedStream {
    /// A stream of `capacity` bytes (rounded as [`StreamLayout::new`] rounds) whose region
    /// starts out as `contents`: the indices, then the data, as laid out in a segment. Bytes
    /// past `contents` are zero, bytes of `contents` past the region are ignored. Each end
    /// loads its index from the region, as an end opening a segment does.
    #[must_use]
    pub fn new(capacity: u64, contents: &[u8]) -> Self {
        let layout = StreamLayout::new(capacity);
        // `size()` is the 128-byte header plus a power of two of at least 8: whole words.
        let words: Box<[AtomicU64]> = (0..layout.size() / 8)
            .map(|index| {
                let mut word = [0u8; 8];
                let chunk = contents.get(index * 8..).unwrap_or_default();
                let n = chunk.len().min(8);
                word[..n].copy_from_slice(&chunk[..n]);
                AtomicU64::new(u64::from_ne_bytes(word))
            })
            .collect();
        let words = Arc::new(words);
        // A pointer to the whole slice (not to its first word), so that it may reach every
        // byte; the bytes lie in `UnsafeCell`s (the atomics), so writing through it is allowed.
        let base = NonNull::new(words.as_ptr().cast::<u8>().cast_mut())
            .expect("a boxed slice's pointer is not null");
        let owner: Arc<dyn Any + Send + Sync> = Arc::clone(&words) as _;
        // SAFETY: `RegionStream::new`'s contract: `base` is 8-aligned (the alignment of
        // `AtomicU64`) and valid for reads and writes of `layout.size()` bytes (the slice's
        // length, all interior-mutable) for as long as `owner`, which the stream keeps, lives;
        // the index words hold whatever `contents` said, which the ends check; in this process
        // only this stream's ends access the region, except for `poke`, `peek` and `region`,
        // which are atomic and, taking `&mut self` or `&self` while the ends are reachable
        // only through `&mut self`, never run at the same time as an end's access.
        let region = unsafe { RegionStream::new(base, layout, Some(owner)) };
        let (producer, consumer) = Stream::new(region).split();
        Self { words, producer, consumer }
    }

    /// Bytes of data (a power of two).
    #[must_use]
    pub fn capacity(&self) -> usize {
        self.producer.capacity()
    }

    /// Bytes of the whole region: indices, then data.
    #[must_use]
    pub fn size(&self) -> usize {
        self.words.len() * 8
    }

    /// The writing end.
    pub fn producer(&mut self) -> &mut StreamProducer<RegionStream> {
        &mut self.producer
    }

    /// The reading end.
    pub fn consumer(&mut self) -> &mut StreamConsumer<RegionStream> {
        &mut self.consumer
    }

    /// Stores `value` in the word at `offset` bytes into the region (the producer's index is
    /// at 0, the consumer's at 64, the data from 128).
    ///
    /// # Panics
    /// If `offset` is not a multiple of 8 or lies past the region.
    pub fn poke(&mut self, offset: usize, value: u64) {
        self.word(offset).store(value, Ordering::Relaxed);
    }

    /// The word at `offset` bytes into the region.
    ///
    /// # Panics
    /// If `offset` is not a multiple of 8 or lies past the region.
    #[must_use]
    pub fn peek(&self, offset: usize) -> u64 {
        self.word(offset).load(Ordering::Relaxed)
    }

    /// A copy of the whole region.
    #[must_use]
    pub fn region(&self) -> Vec<u8> {
        self.words.iter().flat_map(|word| word.load(Ordering::Relaxed).to_ne_bytes()).collect()
    }

    fn word(&self, offset: usize) -> &AtomicU64 {
        assert!(offset % 8 == 0, "offset {offset} is not a multiple of 8");
        &self.words[offset / 8]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::StreamError;

    #[test]
    fn an_exposed_stream_carries_bytes_like_any_stream() {
        let mut stream = ExposedStream::new(16, &[]);
        assert_eq!((stream.capacity(), stream.size()), (16, 144));
        assert_eq!(stream.producer().write(b"hello").unwrap(), 5);
        assert_eq!(stream.peek(0), 5, "the producer published its index");
        let mut out = [0u8; 8];
        assert_eq!(stream.consumer().read(&mut out).unwrap(), 5);
        assert_eq!(&out[..5], b"hello");
        assert_eq!(stream.peek(64), 5, "the consumer freed the space");
        assert_eq!(&stream.region()[128..133], b"hello");
    }

    #[test]
    fn contents_set_the_indices_and_the_data_the_ends_start_from() {
        let mut contents = vec![0u8; 128 + 8];
        contents[0..8].copy_from_slice(&13u64.to_ne_bytes());
        contents[64..72].copy_from_slice(&10u64.to_ne_bytes());
        contents[128..136].copy_from_slice(b"abcdefgh");
        let mut stream = ExposedStream::new(8, &contents);
        assert_eq!(stream.consumer().available().unwrap(), 3);
        let mut out = [0u8; 8];
        // The consumer starts at 10, which is offset 2 of 8 bytes of data.
        assert_eq!(stream.consumer().read(&mut out).unwrap(), 3);
        assert_eq!(&out[..3], b"cde");
        assert_eq!(stream.producer().free().unwrap(), 8);
    }

    #[test]
    fn poked_indices_are_reported_as_corrupt_by_both_ends() {
        let mut stream = ExposedStream::new(64, &[]);
        stream.poke(0, 1 << 40);
        assert_eq!(stream.consumer().available(), Err(StreamError::Corrupt));
        assert_eq!(stream.consumer().read(&mut [0u8; 8]), Err(StreamError::Corrupt));
        stream.poke(64, 1 << 40);
        assert_eq!(stream.producer().free(), Err(StreamError::Corrupt));
        // A write the room seen before covers needs no new look; a larger one looks.
        assert_eq!(stream.producer().write(&[0; 65]), Err(StreamError::Corrupt));
    }
}
