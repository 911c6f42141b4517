//! One end of a shared-memory link: frames travel through a byte stream in a segment both
//! processes map, and the Unix socketpair stays beside it for close and death detection.
//!
//! Same contract as [`UnixLink`](crate::UnixLink): a frame is written whole or not at all as
//! far as the receiver can tell. A frame that fits the stream is written only once there is
//! room for all of it; a larger one is written piece by piece and, like a started socket
//! write, finished within the caller's wait (plus a grace period) or the link is shut down.
//!
//! Waiting: first a short adaptive spin (yielding the CPU now and then, so a peer on the same
//! core gets to run), then sleep on this side's doorbell: a futex for blocking calls, or this
//! side's wake-up socket for callers that poll descriptors (the receive loop and the async
//! forms).
//! Sleeps are cut into slices; between slices the socket is checked for a hang-up, so a peer
//! killed mid-wait is noticed within a slice even though nobody rings the doorbell for it.
//!
//! Batches: between [`ShmLink::cork`] and [`ShmLink::uncork`], frames that fit are copied into
//! the stream but published (and the peer rung) only once, at the uncork, or earlier when a
//! frame must wait for room (the reader has to see what is staged to make room).

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use postbox_core::wire::padding::Padding;
use postbox_core::{FrameDecoder, PoolRef, SealedRef};
use postbox_shm::{
    open_link_segment, Doorbell, FeedEnd, LinkMemory, LinkShape, LinkSide, PoolLoan, PoolReader,
    PoolRun, PoolView, PoolWriter, RegionStream, Rung, SealedPayload, StreamConsumer, StreamError,
    StreamProducer, StreamWatch,
};
use rustix::net::{recv, send, shutdown, RecvFlags, SendFlags, Shutdown};

use crate::sealed_fds::{send_sealed, PendingSealed, SocketState};
use crate::{Spin, TransportError, Wait};

/// The descriptors the broker hands each side of a shared-memory link.
#[derive(Debug)]
pub struct ShmLinkParts {
    /// This side's end of the socketpair.
    pub socket: OwnedFd,
    /// The link segment.
    pub segment: OwnedFd,
    /// This side's end of the wake-up socketpair: the peer's rings arrive here, and this
    /// side's rings leave from here. Only this side holds it, and every read and write on it
    /// is non-blocking per call, so the peer cannot make either block.
    pub wake: OwnedFd,
}

/// One end of a shared-memory link.
#[derive(Debug)]
pub struct ShmLink {
    socket: OwnedFd,
    outbound: Mutex<Outbound>,
    inbound: Mutex<StreamConsumer<RegionStream>>,
    /// A look at the peer's index without the lock, against `consumed`.
    inbound_watch: StreamWatch<RegionStream>,
    /// The inbound consumer's position after its last read.
    consumed: AtomicU64,
    outbound_pool: Mutex<PoolWriter>,
    inbound_pool: Arc<PoolReader>,
    mine: Doorbell,
    peer: Doorbell,
    wake: OwnedFd,
    /// The wake-up socket stays armed (the async forms watch it).
    keep_armed: AtomicBool,
    /// This end was shut down.
    shut: AtomicBool,
    /// This end was cut: nothing more is to be read either.
    cut: AtomicBool,
    /// The peer's socket was seen hung up.
    hung_up: AtomicBool,
    /// The socket carried something other than sealed payloads (the peer broke the protocol).
    violated: AtomicBool,
    /// Sealed payload descriptors taken off the socket, waiting for their frames.
    sealed_in: Mutex<PendingSealed>,
    /// The next sealed payload's sequence number.
    sealed_out: AtomicU64,
    /// When the socket was last looked at, on the coarse clock (µs).
    checked_at_us: AtomicU64,
    /// How long to spin before sleeping.
    spin: Spin,
    /// This side's end of the link's feed, until a feed takes it.
    feed: Mutex<Option<FeedEnd>>,
}

/// This side's stream, and whether frames written to it wait for [`ShmLink::uncork`].
#[derive(Debug)]
struct Outbound {
    stream: StreamProducer<RegionStream>,
    corked: bool,
}

/// What a wait on the link waits for, which sets how its spin looks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Awaited {
    /// Input. A blocking read of a shared-memory link is a caller's, for a reply or credit,
    /// which the peer writes once (a port's receiver spins on its own and reads without
    /// blocking; subscriptions read Unix links).
    Input,
    /// Room in this side's stream, which the peer frees one read after another.
    Room,
}

impl ShmLink {
    /// Opens this side of a link from the broker's descriptors.
    ///
    /// # Errors
    /// [`TransportError::Corrupt`] when the segment is not a link segment of this layout.
    pub fn open(parts: ShmLinkParts, side: LinkSide) -> Result<Self, TransportError> {
        let LinkMemory { outbound, inbound, outbound_pool, inbound_pool, mine, peer, feed } =
            open_link_segment(parts.segment, side).map_err(|_| TransportError::Corrupt)?;
        Ok(Self {
            socket: parts.socket,
            outbound: Mutex::new(Outbound { stream: outbound, corked: false }),
            inbound_watch: inbound.watch(),
            consumed: AtomicU64::new(inbound.position()),
            inbound: Mutex::new(inbound),
            outbound_pool: Mutex::new(outbound_pool),
            inbound_pool,
            mine,
            peer,
            wake: parts.wake,
            keep_armed: AtomicBool::new(false),
            shut: AtomicBool::new(false),
            cut: AtomicBool::new(false),
            hung_up: AtomicBool::new(false),
            violated: AtomicBool::new(false),
            sealed_in: Mutex::new(PendingSealed::default()),
            sealed_out: AtomicU64::new(0),
            checked_at_us: AtomicU64::new(coarse_now_us()),
            spin: Spin::new(),
            feed: Mutex::new(Some(feed)),
        })
    }

    /// This side's end of the link's feed; `None` once taken (and not given back).
    pub fn take_feed(&self) -> Option<FeedEnd> {
        lock(&self.feed).take()
    }

    /// Gives back a feed end [`take_feed`](Self::take_feed) returned, for a later taker.
    pub fn give_back_feed(&self, end: FeedEnd) {
        *lock(&self.feed) = Some(end);
    }

    /// Writes `header` then `body` as one frame (see the module's contract).
    ///
    /// # Errors
    /// `Closed` when the peer is gone, `WouldBlock`, `TimedOut`, `Stalled`, `Corrupt`.
    pub fn write_frame(
        &self,
        header: &[u8],
        body: &[u8],
        wait: Wait,
    ) -> Result<(), TransportError> {
        let mut out = lock(&self.outbound);
        if self.keep_armed.load(Ordering::Relaxed) {
            // As in `read_into`: async writers waiting for room are woken through it too.
            self.drain_wake();
        }
        // Writing to a peer that closed or died would lose the frame silently.
        if self.is_finished() || self.peer_gone(false)? {
            return Err(TransportError::Closed);
        }
        let total = header.len() + body.len();
        let out = &mut *out;
        if total <= out.stream.capacity() {
            // Whole or nothing: wait for room for all of it. A frame sent on its own is
            // padded, when the padding fits too, so that the next one starts on a cache line
            // of its own (fewer lines cross between the cores per frame); a frame is never
            // held back for its padding. Corked frames, sent as a batch, are packed.
            let padded = !out.corked && {
                let padding = Padding::after(out.stream.position() + total as u64);
                let padding = padding.as_slice();
                !padding.is_empty()
                    && out.stream.stage(&[header, body, padding]).map_err(corrupt)?
            };
            if !padded && !out.stream.stage(&[header, body]).map_err(corrupt)? {
                // What is staged goes first: the reader must see it to make room.
                self.publish(&mut out.stream);
                let stream = &mut out.stream;
                self.wait_until(wait, Awaited::Room, || {
                    stream.free().map_or(true, |f| f >= total)
                })?;
                if !out.stream.stage(&[header, body]).map_err(corrupt)? {
                    return Err(TransportError::Corrupt);
                }
            }
            if !out.corked {
                self.publish(&mut out.stream);
            }
            return Ok(());
        }
        self.publish(&mut out.stream);
        let out = &mut out.stream;
        // Larger than the stream: piece by piece, finishing what was started.
        let mut wait = wait;
        let mut written = 0usize;
        while written < total {
            let n = if written < header.len() {
                out.write(&header[written..]).map_err(corrupt)?
            } else {
                out.write(&body[written - header.len()..]).map_err(corrupt)?
            };
            if n > 0 {
                if written == 0 && wait != Wait::Forever {
                    let grace = Wait::timeout(PARTIAL_FRAME_GRACE);
                    wait = wait.ends_at().max(grace.ends_at()).map_or(Wait::Forever, Wait::Until);
                }
                written += n;
                self.ring_peer();
                continue;
            }
            let waited =
                self.wait_until(wait, Awaited::Room, || out.free().map_or(true, |f| f > 0));
            match waited {
                Ok(()) => {}
                Err(TransportError::WouldBlock | TransportError::TimedOut) if written > 0 => {
                    self.shutdown();
                    return Err(TransportError::Stalled);
                }
                Err(error) => return Err(error),
            }
        }
        Ok(())
    }

    /// Holds frames written from now on back from the peer until [`uncork`](Self::uncork)
    /// (see the module's notes on batches).
    pub fn cork(&self) {
        lock(&self.outbound).corked = true;
    }

    /// Publishes the frames written since [`cork`](Self::cork), ringing the peer once.
    pub fn uncork(&self) {
        let mut out = lock(&self.outbound);
        out.corked = false;
        self.publish(&mut out.stream);
    }

    /// Publishes what is staged in `stream` and rings the peer, if anything is.
    fn publish(&self, stream: &mut StreamProducer<RegionStream>) {
        if stream.has_staged() {
            stream.publish();
            self.ring_peer();
        }
    }

    /// Writes as much of `bytes` as fits now, never blocking; returns how many were written.
    ///
    /// # Errors
    /// `Closed` when the peer is gone, `Corrupt`.
    pub fn write_available(&self, bytes: &[u8]) -> Result<usize, TransportError> {
        if self.is_finished() {
            return Err(TransportError::Closed);
        }
        let n = lock(&self.outbound).stream.write(bytes).map_err(corrupt)?;
        if n > 0 {
            self.ring_peer();
        }
        Ok(n)
    }

    /// Reads what the link has into `decoder`; returns the byte count (never 0).
    ///
    /// # Errors
    /// `Closed` once the peer is gone and everything it sent was read, `WouldBlock`,
    /// `TimedOut`, `Corrupt`.
    pub fn read_into(
        &self,
        decoder: &mut FrameDecoder,
        wait: Wait,
    ) -> Result<usize, TransportError> {
        let mut inbound = lock(&self.inbound);
        if self.keep_armed.load(Ordering::Relaxed) {
            // An epoll set watches the wake-up socket and never reads it: empty it here, or
            // once full the peer's rings would stop arriving and the set would never fire.
            self.drain_wake();
        }
        loop {
            let n = inbound.read(decoder.read_buffer()).map_err(corrupt)?;
            if n > 0 {
                self.consumed.store(inbound.position(), Ordering::Release);
                decoder.commit(n);
                // Room was freed: a peer waiting to write hears of it.
                self.ring_peer();
                return Ok(n);
            }
            if self.is_finished() {
                // Bytes written just before the close are still delivered.
                if inbound.available().is_ok_and(|n| n > 0) {
                    continue;
                }
                return Err(TransportError::Closed);
            }
            if wait == Wait::NonBlocking {
                // Nothing to read: the socket tells whether that is for good. Polling readers
                // ask at most once per interval (no system call per look); readers woken by
                // an epoll set (async) always ask, since its hang-up event comes only once.
                // A peer found gone may have written just before it went: the next turn
                // reads that, or reports the close (`peer_gone` marked the link finished).
                let always = self.keep_armed.load(Ordering::Acquire);
                if self.peer_gone(always)? {
                    continue;
                }
                return Err(TransportError::WouldBlock);
            }
            // Blocking waits look at the socket between their sleep slices.
            self.wait_until(wait, Awaited::Input, || inbound.available().map_or(true, |n| n > 0))?;
        }
    }

    /// Lends space in this side's payload pool for a payload of `len` bytes, waiting until
    /// `wait` ends at most for the receiver to hand space back.
    ///
    /// # Errors
    /// `Oversized` when the pool is smaller than `len`, `WouldBlock`, `TimedOut`, `Closed`,
    /// `Corrupt` (the receiver released space it was not lent).
    pub fn lend(&self, len: usize, wait: Wait) -> Result<PoolLoan, TransportError> {
        let capacity = lock(&self.outbound_pool).capacity();
        if len > capacity {
            return Err(TransportError::Oversized(capacity));
        }
        let mut lent = None;
        let mut failed = None;
        let mut attempt = || match lock(&self.outbound_pool).lend(len) {
            Ok(Some(loan)) => {
                lent = Some(loan);
                true
            }
            Ok(None) => false,
            Err(_) => {
                // The receiver handed back space it was not lent: the link must go.
                failed = Some(TransportError::Corrupt);
                true
            }
        };
        if !attempt() {
            self.wait_until(wait, Awaited::Room, &mut attempt)?;
        }
        if let Some(error) = failed {
            self.violated.store(true, Ordering::Release);
            self.shutdown();
            return Err(error);
        }
        lent.ok_or(TransportError::TimedOut)
    }

    /// Records that `loan` is about to be sent (see [`PoolWriter::commit`]).
    pub fn commit(&self, loan: &PoolLoan) {
        lock(&self.outbound_pool).commit(loan);
    }

    /// Records that the frame announcing `loan` was written (see [`PoolWriter::sent`]).
    pub fn sent(&self, loan: &PoolLoan) {
        lock(&self.outbound_pool).sent(loan);
    }

    /// Undoes [`commit`](Self::commit) after the frame could not be written.
    ///
    /// # Errors
    /// `Corrupt` when the receiver handed the run back before it could know of it (the link
    /// is shut down).
    pub fn withdraw(&self, loan: &PoolLoan) -> Result<(), TransportError> {
        let withdrawn = lock(&self.outbound_pool).withdraw(loan);
        withdrawn.map_err(|_| {
            self.violated.store(true, Ordering::Release);
            self.shutdown();
            TransportError::Corrupt
        })
    }

    /// Takes back a loan that will not be sent.
    pub fn cancel(&self, loan: PoolLoan) {
        lock(&self.outbound_pool).cancel(loan);
    }

    /// The payload a pooled frame describes, read in place; at most `max` bytes.
    ///
    /// # Errors
    /// `Corrupt` when it lies outside the pool or exceeds `max`.
    pub fn view(&self, pool_ref: PoolRef, max: u32) -> Result<PoolView, TransportError> {
        if pool_ref.len > u64::from(max) {
            return Err(TransportError::Corrupt);
        }
        let run = PoolRun { offset: pool_ref.offset, len: pool_ref.len };
        self.inbound_pool.view(run).map_err(|_| TransportError::Corrupt)
    }

    /// Passes a sealed payload's memory object to the peer; returns the sequence number its
    /// frame must carry. Call just before writing that frame.
    ///
    /// # Errors
    /// `WouldBlock` or `Stalled` when the peer holds too many unclaimed payloads, `Closed`,
    /// `Os`.
    pub fn send_sealed(&self, fd: BorrowedFd<'_>) -> Result<u64, TransportError> {
        let seq = self.sealed_out.fetch_add(1, Ordering::Relaxed);
        send_sealed(self.socket.as_fd(), seq, fd)?;
        Ok(seq)
    }

    /// The sealed payload a frame announces, checked (seals, size) and mapped read-only; at
    /// most `max` bytes.
    ///
    /// # Errors
    /// `Corrupt` when its memory object did not come first, is not sealed, or is too small.
    pub fn take_sealed(
        &self,
        sealed: SealedRef,
        max: u32,
    ) -> Result<SealedPayload, TransportError> {
        if sealed.len > u64::from(max) {
            return Err(TransportError::Corrupt);
        }
        let mut pending = lock(&self.sealed_in);
        // Older descriptors (whose frames never came) are skipped as the socket is drained,
        // however many there are.
        let fd = loop {
            if let Some(fd) = pending.take(sealed.seq) {
                break fd;
            }
            if !pending.drain_more(self.socket.as_fd())? {
                return Err(TransportError::Corrupt);
            }
        };
        drop(pending);
        let len = usize::try_from(sealed.len).map_err(|_| TransportError::Corrupt)?;
        SealedPayload::open(fd, len).map_err(|_| TransportError::Corrupt)
    }

    /// Prepares a poll of [`poll_fds`](Self::poll_fds): asks the peer to write this side's
    /// wake-up socket. Returns true when there is something to read already (do not sleep).
    #[must_use]
    pub fn prepare_poll(&self) -> bool {
        self.mine.arm();
        self.has_input()
    }

    /// Ends a poll: stops wake-up writes (unless the async forms watch them) and empties the
    /// wake-up socket.
    pub fn finish_poll(&self) {
        if !self.keep_armed.load(Ordering::Acquire) {
            self.mine.disarm();
        }
        self.drain_wake();
    }

    /// Empties this side's wake-up socket (its bytes mean nothing but "look again"): a waiter
    /// on it that does not go through [`finish_poll`](Self::finish_poll) calls this after
    /// each wait, or the socket fills and stops firing.
    pub fn drain_wake(&self) {
        let mut buf = [0u8; 64];
        for _ in 0..WAKE_DRAIN_READS {
            match recv(&self.wake, &mut buf, RecvFlags::DONTWAIT) {
                Ok((n, _)) if n == buf.len() => {}
                // The peer closed its wake-up end: it is gone (or broke the link on purpose).
                Ok((0, _)) => {
                    self.hung_up.store(true, Ordering::Release);
                    return;
                }
                // Drained, or nothing was rung (EAGAIN).
                _ => return,
            }
        }
    }

    /// Keeps the wake-up socket armed from now on: every ring writes it (for descriptors watched by
    /// an epoll set, which cannot prepare each wait).
    pub fn keep_armed(&self) {
        self.keep_armed.store(true, Ordering::Release);
        self.mine.arm();
    }

    /// The descriptors to poll for reading: this side's wake-up socket, and the socket
    /// (readable only when the peer hangs up).
    #[must_use]
    pub fn poll_fds(&self) -> [BorrowedFd<'_>; 2] {
        [self.wake.as_fd(), self.socket.as_fd()]
    }

    /// The broker says the peer's node left: treat the link as hung up (what it sent is
    /// still read) and wake this side's futex sleepers, which watch no descriptor.
    pub fn peer_left(&self) {
        self.hung_up.store(true, Ordering::Release);
        // Only this side's futex sleepers matter: pollers see the socket hang up by itself.
        let _ = self.mine.ring();
    }

    /// Shuts the link down: the peer sees it close at once.
    pub fn shutdown(&self) {
        self.shut.store(true, Ordering::Release);
        self.mine.close();
        self.ring_peer();
        // Failure means the socket is already disconnected, which is the goal.
        let _ = shutdown(&self.socket, Shutdown::Both);
    }

    /// Shuts the link down for good: as [`shutdown`](Self::shutdown), and a reader that
    /// asks [`is_cut`](Self::is_cut) reads nothing more of what the peer wrote (a revoked
    /// right). A plain shutdown (a stalled write, say) still lets what arrived be read.
    pub fn cut(&self) {
        self.cut.store(true, Ordering::Release);
        self.shutdown();
    }

    /// True once [`cut`](Self::cut).
    #[must_use]
    pub fn is_cut(&self) -> bool {
        self.cut.load(Ordering::Acquire)
    }

    /// True when bytes wait to be read, or the peer closed (so a reader should look).
    #[must_use]
    pub fn has_input(&self) -> bool {
        // No lock: bytes published past what the last read took (or a scribbled index, which
        // the read reports). Bytes a reader took but has not decoded yet are its to hand on.
        // A peer killed outright never marks the segment closed: its socket's hang-up, once
        // noticed (or reported by the broker), counts as input too, so that a reader looks.
        self.inbound_watch.published_past(self.consumed.load(Ordering::Acquire))
            || self.peer.is_closed()
            || self.hung_up.load(Ordering::Acquire)
    }

    fn is_finished(&self) -> bool {
        self.shut.load(Ordering::Acquire)
            || self.peer.is_closed()
            || self.hung_up.load(Ordering::Acquire)
    }

    /// True once the peer's socket hung up (it closed or died without saying so in the
    /// segment). Looks at the socket when `now`, or when the last look is older than the
    /// check interval; call with `now` when a poll reported the socket readable.
    ///
    /// # Errors
    /// `Corrupt` when bytes arrived on the socket.
    pub fn peer_gone(&self, now: bool) -> Result<bool, TransportError> {
        if self.violated.load(Ordering::Acquire) {
            return Err(TransportError::Corrupt);
        }
        if self.hung_up.load(Ordering::Acquire) {
            return Ok(true);
        }
        let at = coarse_now_us();
        let last = self.checked_at_us.load(Ordering::Relaxed);
        if !now && at.saturating_sub(last) < HANGUP_CHECK_INTERVAL.as_micros() as u64 {
            return Ok(false);
        }
        self.checked_at_us.store(at, Ordering::Relaxed);
        let gone = self.socket_hung_up()?;
        if gone {
            self.hung_up.store(true, Ordering::Release);
        }
        Ok(gone)
    }

    /// Rings the peer's doorbell after publishing bytes or freeing room.
    fn ring_peer(&self) {
        if self.peer.ring() == Rung::Signal {
            self.signal_peer();
        }
    }

    /// Writes the peer's wake-up descriptor: for a doorbell that answered [`Rung::Signal`]
    /// (the peer polls descriptors, as its async forms do).
    pub fn signal_peer(&self) {
        // A full socket means wake-ups are already waiting: this one is delivered either
        // way. Never blocks, whatever the peer did to its end.
        let _ = send(&self.wake, &[1], SendFlags::DONTWAIT | SendFlags::NOSIGNAL);
    }

    /// True when the peer hung up its socket (it closed or died). Takes the sealed payload
    /// descriptors waiting there on the way; anything else on the socket breaks the protocol.
    fn socket_hung_up(&self) -> Result<bool, TransportError> {
        if self.violated.load(Ordering::Acquire) {
            return Err(TransportError::Corrupt);
        }
        let mut pending = lock(&self.sealed_in);
        match pending.drain(self.socket.as_fd()) {
            // Descriptors left in the socket hide its end: ask the socket itself.
            Ok(SocketState::Open) if pending.is_full() => {
                Ok(PendingSealed::peer_hung_up(self.socket.as_fd()))
            }
            Ok(state) => Ok(state == SocketState::HungUp),
            Err(error) => {
                self.violated.store(true, Ordering::Release);
                Err(error)
            }
        }
    }

    /// Waits until `ready` or the wait ends: spins briefly, then sleeps on the futex in
    /// slices, checking for a hang-up between them.
    fn wait_until(
        &self,
        wait: Wait,
        awaited: Awaited,
        mut ready: impl FnMut() -> bool,
    ) -> Result<(), TransportError> {
        if wait == Wait::NonBlocking {
            return Err(TransportError::WouldBlock);
        }
        let spun = match awaited {
            Awaited::Input => self.spin.run_for_answer(&mut ready),
            Awaited::Room => self.spin.run(&mut ready),
        };
        if spun {
            return Ok(());
        }
        loop {
            if self.is_finished() {
                // What the peer wrote before it closed is still read: a reader that finds it
                // here returns to take it (and sees the close on its next read).
                return match awaited {
                    Awaited::Input if ready() => Ok(()),
                    _ => Err(TransportError::Closed),
                };
            }
            let now = Instant::now();
            let slice = match wait.ends_at() {
                Some(end) if end <= now => return Err(TransportError::TimedOut),
                Some(end) => (end - now).min(SLEEP_SLICE),
                None => SLEEP_SLICE,
            };
            self.mine.sleep(slice, || ready() || self.peer.is_closed());
            if ready() {
                return Ok(());
            }
            // After a whole slice, or (rate-limited) after a wake-up that found nothing, such
            // as a signal: a peer that died without ringing is noticed either way. It may
            // have written just before it went: the loop's top decides (`peer_gone` marked
            // the link finished).
            self.peer_gone(now.elapsed() >= slice)?;
        }
    }
}

impl Drop for ShmLink {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Microseconds on the coarse monotonic clock: a few nanoseconds to read (against tens for
/// the precise one) and as fine as the kernel's tick (1–4 ms), enough to rate-limit the
/// hang-up checks of every read and write.
fn coarse_now_us() -> u64 {
    let now = rustix::time::clock_gettime(rustix::time::ClockId::MonotonicCoarse);
    (now.tv_sec as u64).saturating_mul(1_000_000) + now.tv_nsec as u64 / 1_000
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A stream end is consistent between calls; a panicking holder leaves it usable.
    mutex.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn corrupt(_: StreamError) -> TransportError {
    TransportError::Corrupt
}

/// How long a started frame larger than the stream may take, at least, to finish.
const PARTIAL_FRAME_GRACE: Duration = Duration::from_millis(500);
/// How often a reader that finds nothing looks at the socket for a hang-up.
const HANGUP_CHECK_INTERVAL: Duration = Duration::from_millis(1);
/// Reads that empty the wake-up socket at most (a peer flooding it only costs a few).
const WAKE_DRAIN_READS: usize = 4;
/// Longest single sleep: a peer killed mid-wait is noticed within it.
const SLEEP_SLICE: Duration = Duration::from_millis(10);

impl ShmLinkParts {
    /// Everything a shared-memory link needs, for both sides: a socketpair, a link segment of
    /// `shape`, and a wake-up socketpair. `(client, server)`.
    ///
    /// # Errors
    /// [`TransportError::Os`] when the kernel refuses (memory, descriptors).
    pub fn pair(shape: LinkShape) -> Result<(Self, Self), TransportError> {
        let (client_socket, server_socket) = crate::UnixLink::pair()?;
        let segment = postbox_shm::create_link_segment(shape).map_err(|e| match e {
            postbox_shm::SegmentCreateError::Os(kind) => {
                TransportError::Os { operation: "create link segment", kind }
            }
            _ => TransportError::Os {
                operation: "create link segment",
                kind: std::io::ErrorKind::InvalidInput,
            },
        })?;
        let dup = |fd: BorrowedFd<'_>| {
            rustix::io::fcntl_dupfd_cloexec(fd, 0).map_err(|e| TransportError::os("dup", e))
        };
        let (client_wake, server_wake) = crate::UnixLink::pair()?;
        let client = Self {
            socket: client_socket.into_fd(),
            segment: dup(segment.fd())?,
            wake: client_wake.into_fd(),
        };
        let server = Self {
            socket: server_socket.into_fd(),
            segment: dup(segment.fd())?,
            wake: server_wake.into_fd(),
        };
        Ok((client, server))
    }

    /// The descriptors in the order they travel in a control packet.
    #[must_use]
    pub fn as_fds(&self) -> [BorrowedFd<'_>; 3] {
        [self.socket.as_fd(), self.segment.as_fd(), self.wake.as_fd()]
    }

    /// The parts from descriptors received in that order; `None` unless there are three.
    #[must_use]
    pub fn from_fds(fds: Vec<OwnedFd>) -> Option<Self> {
        let [socket, segment, wake]: [OwnedFd; 3] = fds.try_into().ok()?;
        Some(Self { socket, segment, wake })
    }
}

#[cfg(test)]
mod tests {
    use postbox_core::wire::padding::FRAME_ALIGN;
    use postbox_core::Frame;

    use super::*;
    use crate::test_frames::header;

    fn pair(capacity: usize) -> (ShmLink, ShmLink) {
        let (client, server) = ShmLinkParts::pair(LinkShape::new(capacity, 1 << 20)).unwrap();
        (
            ShmLink::open(client, LinkSide::Client).unwrap(),
            ShmLink::open(server, LinkSide::Server).unwrap(),
        )
    }

    fn read_frame(link: &ShmLink, decoder: &mut FrameDecoder) -> Frame {
        loop {
            if let Some(frame) = decoder.poll_frame().unwrap() {
                return frame;
            }
            link.read_into(decoder, Wait::timeout(Duration::from_secs(10))).unwrap();
        }
    }

    #[test]
    fn small_and_larger_than_the_stream_frames_cross_whole_and_in_order() {
        let (client, server) = pair(4096);
        let big = vec![7u8; 100_000];
        let writer = std::thread::spawn(move || {
            client.write_frame(&header(3).encode(b"abc"), b"abc", Wait::Forever).unwrap();
            client.write_frame(&header(big.len()).encode(&big), &big, Wait::Forever).unwrap();
            client.write_frame(&header(1).encode(b"z"), b"z", Wait::Forever).unwrap();
            client
        });
        let mut decoder = FrameDecoder::new(1 << 20);
        assert_eq!(read_frame(&server, &mut decoder).body, b"abc");
        assert_eq!(read_frame(&server, &mut decoder).body.len(), 100_000);
        assert_eq!(read_frame(&server, &mut decoder).body, b"z");
        let client = writer.join().unwrap();
        drop(client);
        assert_eq!(
            server.read_into(&mut decoder, Wait::Forever),
            Err(TransportError::Closed),
            "a closed peer reads as closed once its data is read"
        );
    }

    /// Three corked frames of 35 bytes each, written, then read.
    fn send_and_read_a_batch(client: &ShmLink, server: &ShmLink, decoder: &mut FrameDecoder) {
        client.cork();
        for body in [b"one", b"two", b"six"] {
            client.write_frame(&header(3).encode(body), body, Wait::NonBlocking).unwrap();
        }
        client.uncork();
        for body in [b"one", b"two", b"six"] {
            assert_eq!(read_frame(server, decoder).body, body);
        }
    }

    #[test]
    fn frames_sent_on_their_own_start_on_a_cache_line_and_corked_ones_are_packed() {
        let (client, server) = pair(4096);
        let mut decoder = FrameDecoder::new(1 << 20);
        let read_up_to = || server.consumed.load(Ordering::Acquire);
        for len in [1usize, 31, 32, 33, 63, 64, 65, 100, 200] {
            let body = vec![len as u8; len];
            client.write_frame(&header(len).encode(&body), &body, Wait::NonBlocking).unwrap();
            assert_eq!(read_frame(&server, &mut decoder).body, body);
            assert_eq!(read_up_to() % FRAME_ALIGN as u64, 0, "after a {len}-byte body");
        }
        let before = read_up_to();
        send_and_read_a_batch(&client, &server, &mut decoder);
        assert_eq!(read_up_to() - before, 3 * 35, "a batch is packed");
        assert_eq!(decoder.buffered(), 0);
    }

    #[test]
    fn a_frame_that_fits_is_written_even_when_its_padding_does_not() {
        let (client, server) = pair(512);
        let mut decoder = FrameDecoder::new(1 << 20);
        // A batch leaves the reader at 105, off the lines; a frame on its own then ends the
        // writer's bytes at 192, padding included: 425 bytes are free, not 448.
        send_and_read_a_batch(&client, &server, &mut decoder);
        client.write_frame(&header(1).encode(b"z"), b"z", Wait::NonBlocking).unwrap();
        let body = [7u8; 425 - 32];
        client.write_frame(&header(body.len()).encode(&body), &body, Wait::NonBlocking).unwrap();
        assert_eq!(read_frame(&server, &mut decoder).body, b"z");
        assert_eq!(read_frame(&server, &mut decoder).body, body);
        assert_eq!(decoder.buffered(), 0);
    }

    #[test]
    fn a_full_stream_refuses_a_non_blocking_frame_without_writing_any_of_it() {
        let (client, server) = pair(512);
        let body = [1u8; 200];
        let h = header(body.len()).encode(&body);
        client.write_frame(&h, &body, Wait::NonBlocking).unwrap();
        client.write_frame(&h, &body, Wait::NonBlocking).unwrap();
        assert_eq!(
            client.write_frame(&h, &body, Wait::NonBlocking),
            Err(TransportError::WouldBlock)
        );
        let timed = client.write_frame(&h, &body, Wait::timeout(Duration::from_millis(20)));
        assert_eq!(timed, Err(TransportError::TimedOut));
        let mut decoder = FrameDecoder::new(1 << 20);
        assert_eq!(read_frame(&server, &mut decoder).body.len(), 200);
        assert_eq!(read_frame(&server, &mut decoder).body.len(), 200);
        assert!(decoder.poll_frame().unwrap().is_none(), "nothing of the refused frames arrived");
    }

    #[test]
    fn a_peer_that_vanishes_without_closing_is_noticed_by_a_blocked_reader() {
        let (client_parts, server_parts) =
            ShmLinkParts::pair(LinkShape::new(4096, 1 << 20)).unwrap();
        let client = ShmLink::open(client_parts, LinkSide::Client).unwrap();
        let started = Instant::now();
        let killer = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(30));
            // As if the server process died: its descriptors close, nobody rings.
            drop(server_parts);
        });
        let mut decoder = FrameDecoder::new(1 << 20);
        assert_eq!(client.read_into(&mut decoder, Wait::Forever), Err(TransportError::Closed));
        assert!(started.elapsed() < Duration::from_secs(5));
        killer.join().unwrap();
    }

    #[test]
    fn a_frame_written_just_before_the_peer_closes_is_read_by_a_reader_already_waiting() {
        // A blocking reader, after a sleep slice that found nothing.
        a_frame_and_the_close_come_during_a_hang_up_check(Wait::timeout(Duration::from_secs(20)));
        // A non-blocking reader woken by an epoll set (async), which always asks the socket.
        a_frame_and_the_close_come_during_a_hang_up_check(Wait::NonBlocking);
    }

    /// Holding the lock a hang-up check takes stops the reader in that check, after it found
    /// nothing to read: the frame and the close both come while it is there, as when a reader
    /// is preempted at that point. The reader must return the frame, then see the close.
    fn a_frame_and_the_close_come_during_a_hang_up_check(wait: Wait) {
        let (client, server) = pair(4096);
        if wait == Wait::NonBlocking {
            // As the async forms set it: such a reader asks the socket on every empty read.
            server.keep_armed();
        }
        let mut decoder = FrameDecoder::new(1 << 20);
        std::thread::scope(|scope| {
            let held = lock(&server.sealed_in);
            let reader = scope.spawn(|| {
                let read = server.read_into(&mut decoder, wait);
                (read, decoder)
            });
            // Longer than a blocking reader's spin and first sleep slice.
            std::thread::sleep(SLEEP_SLICE * 5);
            client.write_frame(&header(5).encode(b"reply"), b"reply", Wait::Forever).unwrap();
            drop(client);
            drop(held);
            let (read, mut decoder) = reader.join().unwrap();
            assert!(read.is_ok(), "{wait:?}: the frame is read, not lost to the close: {read:?}");
            assert_eq!(decoder.poll_frame().unwrap().unwrap().body, b"reply");
            assert_eq!(
                server.read_into(&mut decoder, Wait::NonBlocking),
                Err(TransportError::Closed),
                "{wait:?}: the close is seen once the frame is read"
            );
        });
    }

    #[test]
    fn sealed_payloads_are_matched_by_sequence_and_checked_before_they_are_read() {
        let (client, server) = pair(4096);
        let mut builder = postbox_shm::SealedBuilder::new(100).unwrap();
        builder.as_mut_slice().fill(8);
        let sealed = builder.seal().unwrap();
        // A payload whose frame never came (its write failed) is skipped.
        let stray = client.send_sealed(sealed.fd()).unwrap();
        let seq = client.send_sealed(sealed.fd()).unwrap();
        assert_eq!(seq, stray + 1);
        let payload = server.take_sealed(SealedRef { len: 100, seq }, 1 << 20).unwrap();
        assert!(payload.as_slice().iter().all(|&b| b == 8));
        // Claimed again, or never sent, or larger than allowed: the peer broke the protocol.
        assert_eq!(
            server.take_sealed(SealedRef { len: 100, seq }, 1 << 20).unwrap_err(),
            TransportError::Corrupt
        );
        assert_eq!(
            server.take_sealed(SealedRef { len: 100, seq: seq + 5 }, 1 << 20).unwrap_err(),
            TransportError::Corrupt
        );
        // A memory object that is not sealed is refused before it is read.
        let unsealed_fd = rustix::fs::memfd_create("x", rustix::fs::MemfdFlags::empty()).unwrap();
        rustix::fs::ftruncate(&unsealed_fd, 100).unwrap();
        let seq = client.send_sealed(unsealed_fd.as_fd()).unwrap();
        assert_eq!(
            server.take_sealed(SealedRef { len: 100, seq }, 1 << 20).unwrap_err(),
            TransportError::Corrupt
        );
        let seq = client.send_sealed(sealed.fd()).unwrap();
        assert_eq!(
            server.take_sealed(SealedRef { len: 100, seq }, 99).unwrap_err(),
            TransportError::Corrupt
        );
    }

    #[test]
    fn a_sender_far_ahead_of_its_frames_is_not_a_violation() {
        let (client, server) = pair(4096);
        let mut builder = postbox_shm::SealedBuilder::new(10).unwrap();
        builder.as_mut_slice().fill(1);
        let sealed = builder.seal().unwrap();
        // Seventy whose frames never came (failed writes), then a hundred that come.
        for _ in 0..70 {
            client.send_sealed(sealed.fd()).unwrap();
        }
        let seqs: Vec<u64> = (0..100).map(|_| client.send_sealed(sealed.fd()).unwrap()).collect();
        // The receiver looks at the socket (as a poll would make it) before any frame arrives.
        assert!(!server.peer_gone(true).unwrap());
        for seq in seqs {
            let payload = server.take_sealed(SealedRef { len: 10, seq }, 1 << 20).unwrap();
            assert_eq!(payload.as_slice(), [1; 10]);
        }
    }

    #[test]
    fn the_brokers_notice_wakes_a_reader_asleep_on_the_futex() {
        // The peer's descriptors stay open (its socket never hangs up): only the notice can
        // end this read.
        let (client_parts, server_parts) =
            ShmLinkParts::pair(LinkShape::new(4096, 1 << 20)).unwrap();
        let client = std::sync::Arc::new(ShmLink::open(client_parts, LinkSide::Client).unwrap());
        let notifier = {
            let client = std::sync::Arc::clone(&client);
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(50));
                client.peer_left();
            })
        };
        let mut decoder = FrameDecoder::new(1 << 20);
        let read = client.read_into(&mut decoder, Wait::timeout(Duration::from_secs(20)));
        assert_eq!(read, Err(TransportError::Closed));
        notifier.join().unwrap();
        drop(server_parts);
    }

    #[test]
    fn bytes_on_the_socket_of_a_shared_memory_link_break_the_protocol() {
        let (client_parts, server_parts) =
            ShmLinkParts::pair(LinkShape::new(4096, 1 << 20)).unwrap();
        let client = ShmLink::open(client_parts, LinkSide::Client).unwrap();
        rustix::io::write(&server_parts.socket, b"junk").unwrap();
        // A reader that finds nothing looks at the socket once per check interval (on a clock
        // that moves by kernel ticks of up to 4 ms).
        std::thread::sleep(HANGUP_CHECK_INTERVAL + Duration::from_millis(10));
        let mut decoder = FrameDecoder::new(1 << 20);
        assert_eq!(client.read_into(&mut decoder, Wait::NonBlocking), Err(TransportError::Corrupt));
    }
}
