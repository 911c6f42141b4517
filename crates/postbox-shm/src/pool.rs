//! Payload pool: out-of-line space in a link segment for large messages, allocated by the
//! sender, read in place by the receiver, and handed back by it when it is done.
//!
//! ```text
//! 0 release tail u64 (receiver) | 64 release head u64 (sender) | 128 release slots u32 × n
//! | blocks: n × BLOCK bytes, from a page boundary
//! ```
//! The sender keeps its own record of which runs of blocks it lent; the shared memory only
//! carries the receiver's "I am done with the run starting at block i" through a small SPSC
//! ring. Whatever a peer writes there is checked against that private record: a receiver that
//! lies can only make the sender reuse space that receiver still reads (its own loss), a
//! release for a run that was never lent is a protocol violation. The receiver checks every
//! (offset, length) it is told before it reads anything.
//!
//! Bytes in the pool are shared with the peer: a sender writes them in place and must not
//! touch them after sending; a receiver reads them in place. A peer that breaks these rules
//! can only garble the bytes of its own messages; peers that do not trust each other need
//! payloads the sender can no longer change (sealed memory objects).

use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;

use crate::{Doorbell, Segment};

/// The shape of a pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolLayout {
    /// Number of blocks.
    pub blocks: u32,
}

impl PoolLayout {
    /// Bytes per block: the unit of allocation.
    pub const BLOCK: usize = 64 * 1024;
    /// Bytes before the blocks (the release ring for up to `blocks` entries, page-aligned).
    #[must_use]
    pub fn header(&self) -> usize {
        (RELEASE_SLOTS_AT + 4 * self.ring_capacity() as usize).next_multiple_of(PAGE)
    }

    /// A pool of at least `bytes`, in whole blocks (at least one).
    #[must_use]
    pub fn for_bytes(bytes: usize) -> Self {
        let blocks = bytes.div_ceil(Self::BLOCK).max(1);
        Self { blocks: u32::try_from(blocks).unwrap_or(u32::MAX) }
    }

    /// Bytes the whole pool takes.
    #[must_use]
    pub fn size(&self) -> usize {
        self.header() + self.blocks as usize * Self::BLOCK
    }

    /// Bytes of payload the pool holds.
    #[must_use]
    pub fn capacity(&self) -> usize {
        self.blocks as usize * Self::BLOCK
    }

    fn ring_capacity(&self) -> u64 {
        u64::from(self.blocks).next_power_of_two()
    }
}

/// A run of blocks lent to one message: where its bytes are, as the frame carries it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolRun {
    /// Byte offset of the run in the pool's blocks (a multiple of [`PoolLayout::BLOCK`]).
    pub offset: u64,
    /// Bytes of payload in it.
    pub len: u64,
}

/// The peer broke the pool's rules: the link must go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PoolError {
    /// A release for a run that was not lent, or an impossible release index.
    #[error("the peer released pool space it was not lent")]
    BadRelease,
    /// An offset or length outside the pool.
    #[error("a payload lies outside the pool")]
    OutOfBounds,
}

/// A pool in a mapped segment (either side), keeping the segment mapped.
#[derive(Debug)]
struct PoolMemory {
    base: NonNull<u8>,
    layout: PoolLayout,
    _segment: Arc<Segment>,
}

/// The sending side: lends runs of blocks and learns of their release.
#[derive(Debug)]
pub struct PoolWriter {
    memory: Arc<PoolMemory>,
    /// Per block: the length in blocks of the run starting there, 0 when none starts there.
    lent: Vec<u32>,
    /// Per block: where the run starting there stands (only a sent run may come back).
    state: Vec<RunState>,
    /// Per block: in use.
    used: Vec<bool>,
    /// Releases consumed so far.
    head: u64,
}

/// Where a lent run stands, at its first block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RunState {
    /// No run starts here.
    Free,
    /// Lent, being written: the receiver cannot know of it.
    Lent,
    /// Its frame is being written; `released` when the receiver handed it back already.
    Committed { released: bool },
    /// Its frame was written: the receiver holds it until it hands it back.
    Sent,
}

/// The receiving side: checks runs and hands them back.
#[derive(Debug)]
pub struct PoolReader {
    memory: Arc<PoolMemory>,
    /// Releases published so far (guarded: views are dropped from any thread).
    tail: std::sync::Mutex<u64>,
    /// Rung after each release: the sender may be waiting for space.
    bell: std::sync::OnceLock<Doorbell>,
}

/// A payload read in place, handed back to the sender when dropped.
#[derive(Debug)]
pub struct PoolView {
    reader: Arc<PoolReader>,
    start_block: u32,
    ptr: NonNull<u8>,
    len: usize,
}

/// Space lent for one message, written in place before it is sent.
#[derive(Debug)]
pub struct PoolLoan {
    run: PoolRun,
    ptr: NonNull<u8>,
    /// Keeps the pool mapped while the loan lives.
    memory: Arc<PoolMemory>,
}

impl PoolMemory {
    fn release_tail(&self) -> &AtomicU64 {
        // SAFETY: offset 0 of the pool lies in the mapping the segment keeps alive (the
        // caller of `pool_at` checked the whole layout fits) and is 8-aligned (page-aligned
        // pool start); only atomics access it.
        unsafe { self.base.cast::<AtomicU64>().as_ref() }
    }

    fn release_head(&self) -> &AtomicU64 {
        // SAFETY: as for `release_tail`, at offset 64 (inside the header).
        unsafe { self.base.add(64).cast::<AtomicU64>().as_ref() }
    }

    fn release_slot(&self, index: u64) -> &AtomicU32 {
        let slot = (index & (self.layout.ring_capacity() - 1)) as usize;
        // SAFETY: the mask keeps `slot` below the ring's capacity, whose slots lie between
        // `RELEASE_SLOTS_AT` and `header()`, inside the mapping; 4-aligned; atomics only.
        unsafe { self.base.add(RELEASE_SLOTS_AT + 4 * slot).cast::<AtomicU32>().as_ref() }
    }

    /// The start of block `block` (< blocks).
    fn block_ptr(&self, block: u32) -> NonNull<u8> {
        debug_assert!(block < self.layout.blocks);
        // SAFETY: `block < blocks`, so the offset lies inside the pool's mapped blocks.
        unsafe { self.base.add(self.layout.header() + block as usize * PoolLayout::BLOCK) }
    }
}

// SAFETY: a `PoolMemory` is a pointer into a mapping its `Arc<Segment>` keeps alive; the
// words it hands out are atomics, and payload bytes are reached only through loans and
// views, which follow the lending protocol.
unsafe impl Send for PoolMemory {}
// SAFETY: as for `Send`.
unsafe impl Sync for PoolMemory {}

/// The two sides of a pool at `offset` bytes into a segment's data; `None` when it does not
/// fit or `offset` is not page-aligned.
pub(crate) fn pool_at(
    segment: &Arc<Segment>,
    offset: usize,
    layout: PoolLayout,
) -> Option<(PoolWriter, Arc<PoolReader>)> {
    if offset % PAGE != 0 || offset.checked_add(layout.size())? > segment.data_size() {
        return None;
    }
    let memory = Arc::new(PoolMemory {
        base: segment.data_ptr(offset),
        layout,
        _segment: Arc::clone(segment),
    });
    let blocks = layout.blocks as usize;
    let writer = PoolWriter {
        memory: Arc::clone(&memory),
        lent: vec![0; blocks],
        state: vec![RunState::Free; blocks],
        used: vec![false; blocks],
        head: memory.release_head().load(Ordering::Acquire),
    };
    let tail = memory.release_tail().load(Ordering::Acquire);
    let reader =
        PoolReader { memory, tail: std::sync::Mutex::new(tail), bell: std::sync::OnceLock::new() };
    Some((writer, Arc::new(reader)))
}

impl PoolWriter {
    /// Lends space for `len` bytes, `Ok(None)` when the pool has no run that large free now
    /// (releases arrive as the receiver drops its views).
    ///
    /// # Errors
    /// [`PoolError::BadRelease`] when the receiver released something it was not lent.
    pub fn lend(&mut self, len: usize) -> Result<Option<PoolLoan>, PoolError> {
        self.collect_releases()?;
        let need = len.div_ceil(PoolLayout::BLOCK).max(1);
        if need > self.used.len() {
            return Ok(None);
        }
        let mut run = 0usize;
        for block in 0..self.used.len() {
            run = if self.used[block] { 0 } else { run + 1 };
            if run == need {
                let start = block + 1 - need;
                self.used[start..=block].fill(true);
                // Fits a `u32`: `need <= blocks`, itself a `u32`.
                self.lent[start] = need as u32;
                self.state[start] = RunState::Lent;
                let start = start as u32;
                let offset = u64::from(start) * PoolLayout::BLOCK as u64;
                let ptr = self.memory.block_ptr(start);
                let run = PoolRun { offset, len: len as u64 };
                return Ok(Some(PoolLoan { run, ptr, memory: Arc::clone(&self.memory) }));
            }
        }
        Ok(None)
    }

    /// Takes back a loan that was never sent (or whose sending failed). A loan of another
    /// pool is ignored.
    pub fn cancel(&mut self, loan: PoolLoan) {
        if let Some(start) = self.start_of(&loan) {
            self.free(start);
        }
    }

    /// Records that `loan`'s run is about to be sent: a release that arrives before
    /// [`sent`](Self::sent) is held back, not acted on. Call before writing the frame that
    /// announces it; [`withdraw`](Self::withdraw) if that write fails.
    pub fn commit(&mut self, loan: &PoolLoan) {
        if let Some(start) = self.start_of(loan) {
            self.state[start] = RunState::Committed { released: false };
        }
    }

    /// The frame announcing `loan`'s run was written: the run is the receiver's until it
    /// hands it back (at once, if it already did).
    pub fn sent(&mut self, loan: &PoolLoan) {
        if let Some(start) = self.start_of(loan) {
            match self.state[start] {
                RunState::Committed { released: true } => self.free(start),
                _ => self.state[start] = RunState::Sent,
            }
        }
    }

    /// Undoes [`commit`](Self::commit): the frame was not written, the loan is the caller's
    /// again.
    ///
    /// # Errors
    /// [`PoolError::BadRelease`] when the receiver handed the run back meanwhile, before it
    /// could know of it (the run stays lent to the caller; the link must go).
    pub fn withdraw(&mut self, loan: &PoolLoan) -> Result<(), PoolError> {
        if let Some(start) = self.start_of(loan) {
            let early = matches!(self.state[start], RunState::Committed { released: true });
            self.state[start] = RunState::Lent;
            if early {
                return Err(PoolError::BadRelease);
            }
        }
        Ok(())
    }

    /// The first block of `loan` when it is a live loan of this pool.
    fn start_of(&self, loan: &PoolLoan) -> Option<usize> {
        if !Arc::ptr_eq(&loan.memory, &self.memory) {
            return None;
        }
        let start = (loan.run.offset / PoolLayout::BLOCK as u64) as usize;
        (self.lent.get(start).copied().unwrap_or(0) > 0).then_some(start)
    }

    /// Bytes of payload the pool holds.
    #[must_use]
    pub fn capacity(&self) -> usize {
        self.memory.layout.capacity()
    }

    /// Frees every run the receiver released since the last look.
    fn collect_releases(&mut self) -> Result<(), PoolError> {
        let memory = Arc::clone(&self.memory);
        // SYNC POINT: pairs with the receiver's Release store of the tail after writing a
        // slot.
        let tail = memory.release_tail().load(Ordering::Acquire);
        if tail.wrapping_sub(self.head) > memory.layout.ring_capacity() {
            return Err(PoolError::BadRelease);
        }
        while self.head != tail {
            let start = memory.release_slot(self.head).load(Ordering::Relaxed) as usize;
            // Only a run that was sent can come back; one being sent comes back once its frame
            // is out; one still being written, or never lent, cannot (else the same space could
            // be lent twice).
            match self.state.get(start).copied() {
                Some(RunState::Sent) => self.free(start),
                Some(RunState::Committed { released: false }) => {
                    self.state[start] = RunState::Committed { released: true };
                }
                _ => return Err(PoolError::BadRelease),
            }
            self.head = self.head.wrapping_add(1);
        }
        // SYNC POINT: frees the slots for the receiver (it reads this with Acquire).
        memory.release_head().store(self.head, Ordering::Release);
        Ok(())
    }

    fn free(&mut self, start: usize) {
        let len = std::mem::take(&mut self.lent[start]) as usize;
        self.state[start] = RunState::Free;
        self.used[start..start + len].fill(false);
    }
}

impl PoolLoan {
    /// Where the payload goes, as the frame announcing it carries it.
    #[must_use]
    pub fn run(&self) -> PoolRun {
        self.run
    }

    /// The lent bytes.
    #[must_use]
    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: as for `as_mut_slice`, shared instead of exclusive.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.run.len as usize) }
    }

    /// The lent bytes, to write in place.
    #[must_use]
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: the run was lent to this loan alone (the writer marked its blocks used, and
        // frees them only when this loan is cancelled, or after it was committed as sent and
        // the receiver handed it back; a release before the commit is refused); it lies
        // inside the pool (`lend` checked `need <= blocks`, and `len <= need * BLOCK`); it
        // stays mapped while `memory` (and through it the segment) lives. An honest receiver
        // does not touch unsent space; a hostile one can only garble it.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.run.len as usize) }
    }

    /// Shortens the payload to `len` bytes (no effect when longer than it is).
    pub fn truncate(&mut self, len: usize) {
        self.run.len = self.run.len.min(len as u64);
    }
}

// SAFETY: a loan is exclusive access to a run of shared memory that stays mapped; moving it
// to another thread changes nothing about that.
unsafe impl Send for PoolLoan {}
// SAFETY: `&PoolLoan` reads the bytes only; they are written only through `&mut PoolLoan`.
unsafe impl Sync for PoolLoan {}

impl PoolReader {
    /// A view of the payload at `run`, checked to lie in the pool; dropping it releases the run.
    ///
    /// # Errors
    /// [`PoolError::OutOfBounds`] when the sender described space outside the pool.
    pub fn view(self: &Arc<Self>, run: PoolRun) -> Result<PoolView, PoolError> {
        let block = PoolLayout::BLOCK as u64;
        let blocks = u64::from(self.memory.layout.blocks);
        let start = run.offset / block;
        let need = run.len.div_ceil(block).max(1);
        if run.offset % block != 0 || start >= blocks || need > blocks - start {
            return Err(PoolError::OutOfBounds);
        }
        // Fits: `start < blocks`, a `u32`.
        let start = start as u32;
        Ok(PoolView {
            reader: Arc::clone(self),
            start_block: start,
            ptr: self.memory.block_ptr(start),
            len: run.len as usize,
        })
    }

    /// Hands the run starting at `block` back to the sender (best effort: a ring that is
    /// full means the sender broke the rules by sending more runs than the pool has).
    fn release(&self, block: u32) {
        let memory = &*self.memory;
        let mut tail = self.tail.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        // SYNC POINT: pairs with the sender's Release store of the head after consuming.
        let head = memory.release_head().load(Ordering::Acquire);
        if tail.wrapping_sub(head) >= memory.layout.ring_capacity() {
            return;
        }
        memory.release_slot(*tail).store(block, Ordering::Relaxed);
        *tail = tail.wrapping_add(1);
        // SYNC POINT: publishes the slot; pairs with the sender's Acquire load of the tail.
        memory.release_tail().store(*tail, Ordering::Release);
        drop(tail);
        if let Some(bell) = self.bell.get() {
            // A sender waiting for space sleeps on the futex (lending blocks only there).
            let _ = bell.ring();
        }
    }

    /// Rings `bell` (the sender's doorbell) after every release.
    pub(crate) fn ring_on_release(&self, bell: Doorbell) {
        let _ = self.bell.set(bell);
    }
}

impl PoolView {
    /// The payload.
    #[must_use]
    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: `view` checked the run lies inside the pool, which stays mapped as long as
        // this view holds its reader (and so the segment); the sender lent this run for this
        // message and does not reuse it before the release this view sends on drop. A
        // sender that breaks that rule can only change which bytes are seen: they are plain
        // bytes, and nothing here relies on their values.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl PoolView {
    /// The payload copied into this process's memory (the way to read a payload from a
    /// sender that is not trusted: the copy cannot change afterwards).
    #[must_use]
    pub fn copy_to_vec(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.len);
        // SAFETY: the source is the checked run inside the mapped pool (as for `as_slice`),
        // read through a raw pointer, never a reference, so bytes the sender changes meanwhile
        // only change what is copied; `out` has room for `len` bytes and is private memory
        // (no overlap); `set_len` follows the copy that initialised exactly those bytes.
        unsafe {
            std::ptr::copy_nonoverlapping(self.ptr.as_ptr(), out.as_mut_ptr(), self.len);
            out.set_len(self.len);
        }
        out
    }
}

impl Drop for PoolView {
    fn drop(&mut self) {
        self.reader.release(self.start_block);
    }
}

// SAFETY: a view is shared, read-only access to a run that stays mapped and lent until the
// view drops; reading it from another thread changes nothing about that.
unsafe impl Send for PoolView {}
// SAFETY: as for `Send`.
unsafe impl Sync for PoolView {}

const PAGE: usize = 4096;
const RELEASE_SLOTS_AT: usize = 128;

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(blocks: u32) -> (PoolWriter, Arc<PoolReader>) {
        let layout = PoolLayout { blocks };
        let segment = Arc::new(Segment::create(layout.size()).unwrap());
        pool_at(&segment, 0, layout).unwrap()
    }

    #[test]
    #[cfg_attr(miri, ignore = "Miri cannot map memory objects")]
    fn a_lent_run_is_read_in_place_and_comes_back_when_the_view_drops() {
        let (mut writer, reader) = pool(4);
        let mut loan = writer.lend(100_000).unwrap().unwrap();
        loan.as_mut_slice().fill(7);
        let run = loan.run();
        assert_eq!(run, PoolRun { offset: 0, len: 100_000 });
        let big = writer.lend(3 * PoolLayout::BLOCK).unwrap();
        assert!(big.is_none(), "two blocks left, three asked");
        let small = writer.lend(10).unwrap().unwrap();
        assert_eq!(small.run().offset, 2 * PoolLayout::BLOCK as u64);
        writer.commit(&loan);
        writer.sent(&loan);
        let view = reader.view(run).unwrap();
        assert!(view.as_slice().iter().all(|&b| b == 7));
        assert_eq!(view.as_slice().len(), 100_000);
        drop(view);
        let again = writer.lend(2 * PoolLayout::BLOCK).unwrap().unwrap();
        assert_eq!(again.run().offset, 0, "the released run is lent again");
    }

    #[test]
    #[cfg_attr(miri, ignore = "Miri cannot map memory objects")]
    fn runs_outside_the_pool_and_releases_never_lent_are_refused() {
        let (mut writer, reader) = pool(2);
        let block = PoolLayout::BLOCK as u64;
        for bad in [
            PoolRun { offset: 1, len: 1 },
            PoolRun { offset: 2 * block, len: 1 },
            PoolRun { offset: block, len: block + 1 },
            PoolRun { offset: u64::MAX - block + 1, len: u64::MAX },
        ] {
            assert_eq!(reader.view(bad).unwrap_err(), PoolError::OutOfBounds, "{bad:?}");
        }
        // A hostile receiver releases block 1, which was never lent.
        reader.release(1);
        assert_eq!(writer.lend(1).unwrap_err(), PoolError::BadRelease);
    }

    #[test]
    #[cfg_attr(miri, ignore = "Miri cannot map memory objects")]
    fn a_run_still_being_written_cannot_be_handed_back_and_lent_twice() {
        let (mut writer, reader) = pool(2);
        let loan = writer.lend(10).unwrap().unwrap();
        // A hostile receiver guesses the run before it is sent.
        reader.release(0);
        assert_eq!(writer.lend(10).unwrap_err(), PoolError::BadRelease);
        drop(loan);
    }

    #[test]
    #[cfg_attr(miri, ignore = "Miri cannot map memory objects")]
    fn a_release_while_the_frame_is_being_written_waits_for_it() {
        let (mut writer, reader) = pool(1);
        let loan = writer.lend(10).unwrap().unwrap();
        writer.commit(&loan);
        // Released before the frame is out: held back, the space is not lent again yet.
        reader.release(0);
        assert!(writer.lend(10).unwrap().is_none());
        writer.sent(&loan);
        assert!(writer.lend(10).unwrap().is_some(), "free once the frame is out");

        let (mut writer, reader) = pool(1);
        let loan = writer.lend(10).unwrap().unwrap();
        writer.commit(&loan);
        reader.release(0);
        // The write failed after all: the receiver released what it could not know of.
        assert!(writer.lend(10).unwrap().is_none());
        assert_eq!(writer.withdraw(&loan), Err(PoolError::BadRelease));
    }

    #[test]
    #[cfg_attr(miri, ignore = "Miri cannot map memory objects")]
    fn a_loan_keeps_the_pool_mapped_after_everything_else_is_gone() {
        let (mut writer, reader) = pool(1);
        let mut loan = writer.lend(10).unwrap().unwrap();
        drop(writer);
        drop(reader);
        loan.as_mut_slice().fill(1);
        assert_eq!(loan.as_slice(), [1; 10]);
    }
}
