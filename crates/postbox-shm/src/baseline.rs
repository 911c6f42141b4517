//! The raw shared-memory ping-pong `postbox bench` measures postbox against: one sequence
//! word and a buffer each way in a segment, nothing else (no framing, no checks, no locks).
//!
//! The client copies a request into its buffer and sets the word odd; the server, having
//! waited for that, copies the request out, the same bytes into its own buffer, and sets the
//! word even; the client waits for that and copies the answer out. A side waits by spinning
//! on the word, by giving the CPU up between looks at it (`sched_yield`), or by sleeping on it
//! as a futex (woken by the other side).

use std::os::fd::{BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::sys::{futex_wait, futex_wake};
use crate::{Segment, SegmentCreateError, SegmentOpenError};

/// How a side of the ping-pong waits for the other.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PingWait {
    /// Busy-wait on the word.
    Spin,
    /// Look at the word, give the CPU up (`sched_yield`), look again. On one core this is
    /// the cheapest round trip two processes can make: each hand-over is one switch to a
    /// thread that was runnable all along, with no wake-up.
    Yield,
    /// Sleep on the word as a futex; the other side wakes it.
    Futex,
}

/// One side's mapping of a ping-pong segment.
#[derive(Debug)]
pub struct PingPong {
    segment: Arc<Segment>,
    size: usize,
    /// The client's last request number.
    round: AtomicU32,
    /// Not shared between threads: a ping writes its buffer without locking.
    _one_thread: std::marker::PhantomData<std::cell::Cell<()>>,
}

impl PingPong {
    /// Creates a ping-pong segment for messages of `size` bytes (the client's side).
    ///
    /// # Errors
    /// [`SegmentCreateError`].
    pub fn create(size: usize) -> Result<Self, SegmentCreateError> {
        let data = size
            .max(1)
            .checked_mul(2)
            .and_then(|n| n.checked_add(BUFFERS_AT))
            .ok_or(SegmentCreateError::Os(std::io::ErrorKind::InvalidInput))?;
        let segment = Segment::create(data)?;
        Ok(Self {
            segment: Arc::new(segment),
            size,
            round: AtomicU32::new(0),
            _one_thread: std::marker::PhantomData,
        })
    }

    /// Opens the segment behind `fd` for messages of `size` bytes (the server's side).
    ///
    /// # Errors
    /// [`SegmentOpenError::TooSmall`] when it cannot hold them, or another open failure.
    pub fn open(fd: OwnedFd, size: usize) -> Result<Self, SegmentOpenError> {
        let segment = Segment::open(fd, Duration::from_secs(1))?;
        let needed = size.max(1).checked_mul(2).and_then(|n| n.checked_add(BUFFERS_AT));
        if needed.is_none_or(|needed| segment.data_size() < needed) {
            return Err(SegmentOpenError::TooSmall);
        }
        Ok(Self {
            segment: Arc::new(segment),
            size,
            round: AtomicU32::new(0),
            _one_thread: std::marker::PhantomData,
        })
    }

    /// The descriptor, to pass to the server process.
    #[must_use]
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.segment.fd()
    }

    /// Client: sends `request` (at most `size` bytes) and copies the answer into `answer`.
    /// One thread at a time, by the type (it is not `Sync`).
    pub fn ping(&self, request: &[u8], answer: &mut [u8], wait: PingWait) {
        let len = request.len().min(self.size);
        self.copy_in(0, &request[..len]);
        let round = self.round.load(Ordering::Relaxed).wrapping_add(2) & !STOP;
        self.round.store(round, Ordering::Relaxed);
        let asked = round.wrapping_sub(1);
        self.word().store(asked, Ordering::Release);
        if wait == PingWait::Futex {
            futex_wake(self.word());
        }
        self.await_change(asked, wait);
        let len = answer.len().min(self.size);
        self.copy_out(self.size, &mut answer[..len]);
    }

    /// Client: tells the server to return from [`serve`](Self::serve).
    pub fn stop(&self) {
        self.word().store(STOP, Ordering::Release);
        futex_wake(self.word());
    }

    /// Server: answers every request with its own bytes until the client stops.
    pub fn serve(&self, wait: PingWait) {
        let mut buf = vec![0u8; self.size];
        let mut last = 0u32;
        loop {
            let word = self.await_change(last, wait);
            if word == STOP {
                return;
            }
            if word % 2 == 0 {
                last = word;
                continue;
            }
            self.copy_out(0, &mut buf);
            self.copy_in(self.size, &buf);
            last = word.wrapping_add(1);
            self.word().store(last, Ordering::Release);
            if wait == PingWait::Futex {
                futex_wake(self.word());
            }
        }
    }

    /// Waits until the word is no longer `seen`; returns it.
    fn await_change(&self, seen: u32, wait: PingWait) -> u32 {
        loop {
            // SYNC POINT: pairs with the other side's Release store after its copy.
            let now = self.word().load(Ordering::Acquire);
            if now != seen {
                return now;
            }
            match wait {
                PingWait::Spin => std::hint::spin_loop(),
                PingWait::Yield => std::thread::yield_now(),
                PingWait::Futex => futex_wait(self.word(), seen, Duration::from_millis(100)),
            }
        }
    }

    fn word(&self) -> &AtomicU32 {
        // SAFETY: the data starts page-aligned and holds at least `BUFFERS_AT` bytes, so the
        // first 4 bytes are an aligned word inside the mapping the `Arc<Segment>` keeps
        // alive; it is only ever accessed atomically, by either process.
        unsafe { self.segment.data_ptr(0).cast::<AtomicU32>().as_ref() }
    }

    fn copy_in(&self, at: usize, bytes: &[u8]) {
        let dest = self.segment.data_ptr(BUFFERS_AT + at);
        // SAFETY: `at + bytes.len() <= 2 * size` and the data holds `BUFFERS_AT + 2 * size`
        // bytes (checked at create/open), so the destination is in the mapping; `bytes` is
        // private memory, so they do not overlap. The protocol gives this side the buffer
        // now (the other side only touches it after the word changes); a peer that breaks it
        // can only garble the bytes of a benchmark.
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), dest.as_ptr(), bytes.len()) };
    }

    fn copy_out(&self, at: usize, out: &mut [u8]) {
        let src = self.segment.data_ptr(BUFFERS_AT + at);
        // SAFETY: as in `copy_in`, with the source in the mapping and `out` private.
        unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), out.as_mut_ptr(), out.len()) };
    }
}

/// The word's value that ends [`PingPong::serve`] (odd, and never a request number).
const STOP: u32 = 0x8000_0001;
/// Buffers start on their own cache line, after the word.
const BUFFERS_AT: usize = 64;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[cfg_attr(miri, ignore = "Miri cannot map memory objects")]
    fn a_server_thread_answers_every_ping_in_every_wait_mode() {
        for wait in [PingWait::Spin, PingWait::Yield, PingWait::Futex] {
            let client = PingPong::create(64).unwrap();
            let server = PingPong::open(client.fd().try_clone_to_owned().unwrap(), 64).unwrap();
            let thread = std::thread::spawn(move || server.serve(wait));
            let mut answer = [0u8; 64];
            for i in 0..1000u32 {
                let request = [i as u8; 64];
                client.ping(&request, &mut answer, wait);
                assert_eq!(answer, request);
            }
            client.stop();
            thread.join().unwrap();
        }
    }
}
