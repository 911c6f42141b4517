//! Buffers a thread keeps between messages: the body of a call this thread wrote (or of a typed
//! request or reply it built) serves as the body of the next one it receives or builds, so that
//! a call of a few hundred bytes allocates nothing on either side once the thread is warm.
//!
//! A thread keeps at most [`SPARES`] buffers of at most [`SPARE_LIMIT`] bytes each: what a
//! thread can hold on to this way is bounded, whatever it sends.

use std::cell::RefCell;

use crate::body::Body;
use crate::Message;

/// A buffer with room for `room` bytes, empty: the smallest this thread kept ([`keep`]) that
/// is large enough, else a new one. A thread being torn down (a message built in a
/// thread-local's destructor) gets a new one.
#[inline(always)]
pub(crate) fn take(room: usize) -> Vec<u8> {
    take_within(room, usize::MAX)
}

/// A copy of `bytes` (a received body) in a buffer this thread kept, or in a new one. A kept
/// buffer much larger than `bytes` is left for what this thread builds: the copy may be kept
/// by the application for long, and must not hold much more memory than a copy of its own
/// would (at most twice its length, or [`RECEIVED_SLACK`] bytes).
#[inline]
pub(crate) fn copy_of(bytes: &[u8]) -> Vec<u8> {
    let mut buffer = take_within(bytes.len(), (2 * bytes.len()).max(RECEIVED_SLACK));
    buffer.extend_from_slice(bytes);
    buffer
}

/// [`take`], of a kept buffer of at most `most` bytes.
// Always inlined: a vector returned from a call is written in pieces that the caller's first
// moves read back before the processor can forward them (a stall of several nanoseconds).
#[inline(always)]
fn take_within(room: usize, most: usize) -> Vec<u8> {
    let taken = SPARE.try_with(|spare| {
        let mut kept = spare.try_borrow_mut().ok()?;
        let mut fitting: Option<&mut Vec<u8>> = None;
        for buffer in kept.iter_mut() {
            let capacity = buffer.capacity();
            if (room..=most).contains(&capacity)
                && fitting.as_ref().is_none_or(|best| capacity < best.capacity())
            {
                fitting = Some(buffer);
            }
        }
        fitting.map(std::mem::take)
    });
    match taken {
        Ok(Some(mut buffer)) => {
            buffer.clear();
            buffer
        }
        _ => Vec::with_capacity(room),
    }
}

/// Keeps `buffer` (its bytes are used up) for this thread's next [`take`]: in a free place,
/// else instead of the smallest buffer kept when that one is smaller. A buffer larger than
/// [`SPARE_LIMIT`] (or without any room) is freed; so is everything while the thread is
/// torn down.
#[inline]
pub(crate) fn keep(buffer: Vec<u8>) {
    let capacity = buffer.capacity();
    if capacity == 0 || capacity > SPARE_LIMIT {
        return;
    }
    let _ = SPARE.try_with(|spare| {
        let Ok(mut kept) = spare.try_borrow_mut() else { return };
        if let Some(smallest) = kept.iter_mut().min_by_key(|kept| kept.capacity()) {
            if smallest.capacity() < capacity {
                *smallest = buffer;
            }
        }
    });
}

/// Makes this thread keep at least `count` buffers (at most [`SPARES`]) with room for `room`
/// bytes, allocating the missing ones in place of the smallest kept: for a thread about to
/// wait (for a reply, for the next request), so that what it receives or builds next takes a
/// buffer without allocating.
pub(crate) fn stock(count: usize, room: usize) {
    if room > SPARE_LIMIT {
        return;
    }
    let _ = SPARE.try_with(|spare| {
        let Ok(mut kept) = spare.try_borrow_mut() else { return };
        let fitting = kept.iter().filter(|buffer| buffer.capacity() >= room).count();
        for _ in fitting..count.min(SPARES) {
            // The smallest kept buffer is not one of the fitting ones (fewer fit than wanted).
            if let Some(smallest) = kept.iter_mut().min_by_key(|buffer| buffer.capacity()) {
                *smallest = Vec::with_capacity(room);
            }
        }
    });
}

/// Keeps the buffer of a message this thread is done with (written to its link, or answered),
/// when the message owns one.
pub(crate) fn keep_body(mut message: Message) {
    keep_body_of(&mut message);
}

/// [`keep_body`], for a message about to be dropped where it is (not moved once more: a
/// message moved right after it was built costs more than what is done with it).
#[inline]
pub(crate) fn keep_body_of(message: &mut Message) {
    if let Body::Owned(buffer) = &mut message.body {
        keep(std::mem::take(buffer));
    }
}

thread_local! {
    /// The buffers this thread is done with (an empty `Vec` is a free place).
    static SPARE: RefCell<[Vec<u8>; SPARES]> =
        const { RefCell::new([Vec::new(), Vec::new(), Vec::new()]) };
}

/// How many buffers a thread keeps: a typed server needs two at a time (the request it
/// received, the reply it builds), one more lets a reply in flight come back.
const SPARES: usize = 3;

/// The largest buffer a thread keeps.
pub(crate) const SPARE_LIMIT: usize = 4096;

/// A received body may take a kept buffer of up to this many bytes, however short it is (a
/// typed request or reply of a few dozen bytes takes the 256-byte buffer a reply was built in).
const RECEIVED_SLACK: usize = 256;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kept_buffer_is_taken_again_empty_and_without_a_new_allocation() {
        let mut buffer = Vec::with_capacity(300);
        buffer.extend_from_slice(b"used");
        let at = buffer.as_ptr();
        keep(buffer);
        let again = take(200);
        assert_eq!(again.as_ptr(), at, "the kept buffer was not handed out");
        assert!(again.is_empty());
        assert_eq!(take(200).capacity(), 200, "a second take found a buffer nobody kept");
    }

    #[test]
    fn the_smallest_buffer_that_fits_is_taken() {
        let (small, large) = (Vec::with_capacity(128), Vec::with_capacity(1024));
        let (small_at, large_at) = (small.as_ptr(), large.as_ptr());
        keep(large);
        keep(small);
        let (first, second) = (take(100), take(100));
        assert_eq!(first.as_ptr(), small_at);
        assert_eq!(second.as_ptr(), large_at);
    }

    #[test]
    fn a_buffer_too_small_for_the_room_asked_stays_kept() {
        let small = Vec::with_capacity(64);
        let small_at = small.as_ptr();
        keep(small);
        let new = take(500);
        assert!(new.capacity() >= 500);
        assert_ne!(new.as_ptr(), small_at);
        let again = take(10);
        assert_eq!(again.as_ptr(), small_at, "the small buffer was dropped");
    }

    #[test]
    fn a_received_body_takes_no_buffer_much_larger_than_itself() {
        let large = Vec::with_capacity(2000);
        let large_at = large.as_ptr();
        keep(large);
        let copy = copy_of(&[7; 100]);
        assert_ne!(copy.as_ptr(), large_at, "100 bytes kept 2000");
        assert_eq!((copy.as_slice(), copy.capacity()), (&[7u8; 100][..], 100));
        let copy = copy_of(&[7; 1000]);
        assert_eq!(copy.as_ptr(), large_at, "1000 bytes may take 2000");
        keep(Vec::with_capacity(RECEIVED_SLACK));
        assert_eq!(copy_of(&[1; 65]).capacity(), RECEIVED_SLACK, "a typed reply's buffer");
    }

    #[test]
    fn stocking_allocates_only_the_buffers_missing() {
        let taken_sorted = || {
            let mut taken: Vec<usize> = (0..SPARES).map(|_| take(1).capacity()).collect();
            taken.sort_unstable();
            taken
        };
        keep(Vec::with_capacity(300));
        keep(Vec::with_capacity(10));
        stock(2, 256);
        assert_eq!(taken_sorted(), [10, 256, 300], "a new one in the free place, the rest kept");
        for capacity in [300, 10, 20] {
            keep(Vec::with_capacity(capacity));
        }
        stock(2, 256);
        assert_eq!(taken_sorted(), [20, 256, 300], "the smallest made way");
        stock(SPARES + 5, 64);
        let taken: Vec<usize> = (0..SPARES).map(|_| take(64).capacity()).collect();
        assert_eq!(taken, [64; SPARES], "at most SPARES buffers, each of the room asked");
        stock(2, SPARE_LIMIT + 1);
        assert_eq!(take(1).capacity(), 1, "no buffer over the limit is stocked");
    }

    #[test]
    fn a_thread_keeps_at_most_a_few_bounded_buffers() {
        keep(Vec::with_capacity(SPARE_LIMIT + 1));
        assert_eq!(take(1).capacity(), 1, "a buffer over the limit was kept");
        let kept: Vec<Vec<u8>> = (1..=SPARES + 2).map(|i| Vec::with_capacity(100 * i)).collect();
        let largest: Vec<*const u8> = kept.iter().rev().take(SPARES).map(|b| b.as_ptr()).collect();
        kept.into_iter().for_each(keep);
        let taken: Vec<Vec<u8>> = (0..SPARES).map(|_| take(1)).collect();
        let mut taken: Vec<*const u8> = taken.iter().map(|b| b.as_ptr()).collect();
        let mut expected = largest;
        expected.sort();
        taken.sort();
        assert_eq!(taken, expected, "not the largest buffers were kept");
        assert_eq!(take(1).capacity(), 1, "more buffers were kept than SPARES");
    }
}
