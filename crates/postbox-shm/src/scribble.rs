//! Test support for hostile-peer tests: a second mapping of a segment that writes random words
//! all over its data, as a peer that keeps none of the rules would. Nothing in postbox uses it.

use std::ops::Range;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::{Segment, SegmentOpenError};

/// A second mapping of a segment that overwrites its data at random: test support for
/// hostile-peer tests.
///
/// A scribbler maps the segment behind a descriptor (a copy of the one a link end was given)
/// and stores random `u64` values at random 8-aligned offsets of the data: stream indices,
/// doorbell words, a link's shape, payload pools and payload bytes alike. It never writes the
/// segment header (the bytes before the data), which an opener checks once, before anyone else
/// can write. To the process that holds it, the scribbler's mapping is what another process's
/// mapping would be: link ends in this process reach the same memory only through their own
/// mappings, and every access of the scribbler is atomic.
///
/// Tests use it to show that a link end facing such a peer reports an error (a corrupt stream,
/// a closed or broken link) and never reads or writes outside its segment, panics or hangs.
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use postbox_shm::{Scribbler, Segment};
///
/// let segment = Segment::create(4096)?;
/// let scribbler = Scribbler::open(segment.fd().try_clone_to_owned()?)?;
/// let mut rng = 42;
/// scribbler.scribble(&mut rng, 100);
/// scribbler.poke(8, 7);
/// assert_eq!(scribbler.peek(8), 7);
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct Scribbler {
    segment: Segment,
}

impl Scribbler {
    /// Maps the segment behind `fd` (which must have been published already).
    ///
    /// # Errors
    /// [`SegmentOpenError`], as [`Segment::open`].
    pub fn open(fd: OwnedFd) -> Result<Self, SegmentOpenError> {
        Ok(Self { segment: Segment::open(fd, OPEN_TIMEOUT)? })
    }

    /// Bytes of data in the segment (the scribbler writes whole words of it only).
    #[must_use]
    pub fn data_size(&self) -> usize {
        self.segment.data_size()
    }

    /// Writes `writes` random words into the data, drawing from the xorshift generator whose
    /// state is `rng_state` (a zero state is replaced by a fixed non-zero one).
    ///
    /// Where: half the writes anywhere in the data; a quarter at the first or second word of a
    /// 64-byte line (where this crate keeps the words of its shared structures: stream
    /// indices, doorbells, a link's shape, each on a line of its own); a quarter in the first
    /// 4 KiB (a link's shape, doorbells and first stream indices). What: a random value, the
    /// word's current value moved up or down a little (an index that still looks plausible),
    /// a small value, or one of 0, 1 and `u64::MAX`.
    pub fn scribble(&self, rng_state: &mut u64, writes: usize) {
        self.scribble_within(rng_state, writes, 0..self.data_size());
    }

    /// Like [`scribble`](Self::scribble), within the bytes `range` of the data only (the first
    /// 4 KiB of the range count as its hot words); nothing when the range holds no whole word.
    pub fn scribble_within(&self, rng_state: &mut u64, writes: usize, range: Range<usize>) {
        let first = range.start.div_ceil(8);
        let end = range.end.min(self.data_size()) / 8;
        let words = end.saturating_sub(first);
        if words == 0 {
            return;
        }
        for _ in 0..writes {
            let where_ = next_random(rng_state);
            let word = first
                + match where_ % 4 {
                    0 | 1 => (where_ >> 8) as usize % words,
                    2 => {
                        let line = (where_ >> 8) as usize % words.div_ceil(8);
                        (line * 8 + ((where_ >> 2) & 1) as usize).min(words - 1)
                    }
                    _ => (where_ >> 8) as usize % words.min(HOT_WORDS),
                };
            let offset = word * 8;
            let what = next_random(rng_state);
            let value = match what % 4 {
                0 => next_random(rng_state),
                1 => {
                    // ± up to 2^19: within a stream's reach, or just past it.
                    let delta = (what >> 8) & ((1 << ((what >> 3) % 20)) - 1);
                    let current = self.peek(offset);
                    if what & 4 == 0 {
                        current.wrapping_add(delta)
                    } else {
                        current.wrapping_sub(delta)
                    }
                }
                2 => (what >> 8) % (1 << 20),
                _ => [0, 1, u64::MAX][(what >> 8) as usize % 3],
            };
            self.poke(offset, value);
        }
    }

    /// Stores `value` in the word at `offset` bytes into the data.
    ///
    /// # Panics
    /// If `offset` is not a multiple of 8 or the word does not lie inside the data.
    pub fn poke(&self, offset: usize, value: u64) {
        self.word(offset).store(value, Ordering::Release);
    }

    /// The word at `offset` bytes into the data, as it is now.
    ///
    /// # Panics
    /// If `offset` is not a multiple of 8 or the word does not lie inside the data.
    #[must_use]
    pub fn peek(&self, offset: usize) -> u64 {
        self.word(offset).load(Ordering::Acquire)
    }

    /// Overwrites the data from its start with `bytes`, a word at a time (a last partial word
    /// is completed with zeros; bytes past the last whole word of the data are ignored).
    pub fn fill(&self, bytes: &[u8]) {
        let words = self.data_size() / 8;
        for (index, chunk) in bytes.chunks(8).take(words).enumerate() {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.poke(index * 8, u64::from_ne_bytes(word));
        }
    }

    fn word(&self, offset: usize) -> &AtomicU64 {
        assert!(
            offset % 8 == 0 && offset.checked_add(8).is_some_and(|end| end <= self.data_size()),
            "word at {offset} is not an aligned word of the segment's data"
        );
        let word = self.segment.data_ptr(offset).cast::<AtomicU64>();
        // SAFETY: the 8 bytes at `offset` lie inside the segment's data (checked above), which
        // `self.segment` keeps mapped while the returned reference (tied to `&self`) lives;
        // the data starts 128 bytes into a page-aligned mapping and `offset` is a multiple of
        // 8, so the word is aligned. Every access this process makes through this mapping is
        // atomic; other accessors (peer processes, or link ends of this process through their
        // own mappings) cannot make a `u64` invalid, since any bit pattern is one.
        unsafe { word.as_ref() }
    }
}

/// The next value of a xorshift64* generator; a zero state is replaced by a fixed non-zero one.
fn next_random(state: &mut u64) -> u64 {
    if *state == 0 {
        *state = 0x9e37_79b9_7f4a_7c15;
    }
    let mut x = *state;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    *state = x;
    x.wrapping_mul(0x2545_f491_4f6c_dd1d)
}

/// Words at the start of the data that a quarter of the writes aim at (4 KiB).
const HOT_WORDS: usize = 512;
/// The segment was published before its descriptor was passed on.
const OPEN_TIMEOUT: Duration = Duration::from_millis(100);

#[cfg(test)]
mod tests {
    use super::*;

    fn segment_and_scribbler(data_size: usize) -> (Segment, Scribbler) {
        let segment = Segment::create(data_size).unwrap();
        let scribbler = Scribbler::open(segment.fd().try_clone_to_owned().unwrap()).unwrap();
        (segment, scribbler)
    }

    #[test]
    #[cfg_attr(miri, ignore = "Miri cannot map memory objects")]
    fn scribbling_changes_the_data_and_leaves_the_header_intact() {
        let (segment, scribbler) = segment_and_scribbler(64 * 1024);
        let mut rng = 1;
        scribbler.scribble(&mut rng, 10_000);
        let written = (0..scribbler.data_size() / 8).filter(|w| scribbler.peek(w * 8) != 0);
        assert!(written.count() > 1_000, "most writes land on words of their own");
        // Another mapping of the same memory sees the same words...
        let other = Scribbler::open(segment.fd().try_clone_to_owned().unwrap()).unwrap();
        assert!((0..8192).all(|w| other.peek(w * 8) == scribbler.peek(w * 8)));
        // ... and the header still describes the segment.
        let reopened =
            Segment::open(segment.fd().try_clone_to_owned().unwrap(), OPEN_TIMEOUT).unwrap();
        assert_eq!(reopened.data_size(), 64 * 1024);
    }

    #[test]
    #[cfg_attr(miri, ignore = "Miri cannot map memory objects")]
    fn the_same_seed_scribbles_the_same_words() {
        let contents = |seed: u64| {
            let (_segment, scribbler) = segment_and_scribbler(8 * 1024);
            let mut rng = seed;
            scribbler.scribble(&mut rng, 500);
            (0..1024).map(|w| scribbler.peek(w * 8)).collect::<Vec<_>>()
        };
        assert_eq!(contents(7), contents(7));
        assert_ne!(contents(7), contents(8));
    }

    #[test]
    #[cfg_attr(miri, ignore = "Miri cannot map memory objects")]
    fn fill_writes_whole_words_from_the_start_and_stops_at_the_end_of_the_data() {
        let (_segment, scribbler) = segment_and_scribbler(20);
        assert_eq!(scribbler.data_size(), 20);
        scribbler.fill(&[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20]);
        assert_eq!(scribbler.peek(0), u64::from_ne_bytes([1, 2, 3, 4, 5, 6, 7, 8]));
        assert_eq!(scribbler.peek(8), u64::from_ne_bytes([9, 10, 11, 12, 13, 14, 15, 16]));
        scribbler.fill(&[0xff; 9]);
        assert_eq!(
            scribbler.peek(8),
            u64::from_ne_bytes([0xff, 0, 0, 0, 0, 0, 0, 0]),
            "a partial word is completed with zeros"
        );
    }

    #[test]
    #[cfg_attr(miri, ignore = "Miri cannot map memory objects")]
    #[should_panic(expected = "not an aligned word")]
    fn a_word_past_the_data_is_refused() {
        let (_segment, scribbler) = segment_and_scribbler(20);
        scribbler.poke(16, 1);
    }
}
