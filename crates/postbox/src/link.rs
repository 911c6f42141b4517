//! The data path of one connection as either side sees it: frame writing, serialised between
//! threads, over a Unix or shared-memory link.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};

use postbox_core::wire::frame::HEADER_LEN;
use postbox_core::{FrameHeader, FrameKind, Placement, PoolRef, SealedRef};
use postbox_transport::{Link, PoolLoan, PoolView, TransportError, Wait};

use crate::body::Body;
use crate::error::LoanError;

use crate::message::next_message_id;
use crate::readiness::Readiness;
use crate::Message;

/// One end of a link, shared by every thread that writes to it.
#[derive(Debug)]
pub(crate) struct LinkEnd {
    link: Arc<Link>,
    writer: WriteGate,
    max_body: u32,
    closed: AtomicBool,
}

/// One writer at a time, with a bounded wait to become it: a `try_send` or `send_timeout` must
/// not wait without bound behind a blocking `send` that is stuck on a full link.
///
/// An uncontended writer enters and leaves with one atomic operation each; the lock and the
/// condition variable are only for writers that wait.
struct WriteGate {
    busy: AtomicBool,
    /// Writers waiting (or about to wait) on `free`, counted under `lock`.
    waiting: AtomicUsize,
    lock: Mutex<()>,
    free: Condvar,
}

/// The right to write frames until dropped.
struct GateGuard<'a>(&'a WriteGate);

/// The right to write frames on one link until dropped.
#[derive(Debug)]
pub(crate) struct WriteGuard<'a> {
    end: &'a LinkEnd,
    /// Frames written under this guard are published together when it drops.
    corked: bool,
    _gate: GateGuard<'a>,
}

impl WriteGuard<'_> {
    /// Writes `message` as one frame of `kind` (see [`LinkEnd::write`]).
    pub(crate) fn write(
        &self,
        kind: FrameKind,
        message: &mut Message,
        correlation: u64,
        wait: Wait,
    ) -> Result<(), WriteFailure> {
        let end = self.end;
        let Ok(body_len) = u32::try_from(message.body.len()) else {
            return Err(WriteFailure::TooLarge(end.max_body));
        };
        if body_len > end.max_body {
            return Err(WriteFailure::TooLarge(end.max_body));
        }
        if end.is_closed() {
            return Err(WriteFailure::Closed);
        }
        message.id = next_message_id();
        // Space this link lent goes in place: the frame carries only where it is. A large
        // body of this process goes through the pool too when it has room now (one copy, and
        // the receiver reads it in place), else through the stream.
        let lent_loan = message.body.loan_for(&end.link);
        let lent = lent_loan.map(PoolLoan::run);
        let copied = match lent {
            // Only bytes of this process: a sealed body must stay sealed.
            None if message.body.is_owned() && message.body.len() >= POOL_THRESHOLD => {
                end.link.lend(message.body.len(), Wait::NonBlocking).ok().map(|mut loan| {
                    loan.as_mut_slice().copy_from_slice(&message.body);
                    loan
                })
            }
            _ => None,
        };
        let pool_ref = lent
            .or(copied.as_ref().map(PoolLoan::run))
            .map(|run| PoolRef { offset: run.offset, len: run.len }.to_bytes());
        // A sealed payload's memory object goes on the socket, its frame says which one (if
        // the socket takes no more, the bytes are copied instead).
        let sealed_ref = match message.body.sealed() {
            Some(payload) if pool_ref.is_none() => end
                .link
                .send_sealed(payload.fd())
                .ok()
                .map(|seq| SealedRef { len: payload.len() as u64, seq }.to_bytes()),
            _ => None,
        };
        let (body, placement): (&[u8], Placement) = match (&pool_ref, &sealed_ref) {
            (Some(r), _) => (r, Placement::Pooled),
            (None, Some(r)) => (r, Placement::Sealed),
            (None, None) => (&message.body, Placement::Inline),
        };
        let header = FrameHeader {
            kind,
            priority: message.priority,
            msg_type: message.msg_type,
            id: message.id,
            correlation,
            body_len: body.len() as u32,
            placement,
        }
        .encode(body);
        // The pool may be handed the run back as soon as the frame is out: say so first.
        let loan = lent_loan.or(copied.as_ref());
        if let Some(loan) = loan {
            end.link.commit(loan);
        }
        let mut written = end.link.write_frame(&header, body, wait);
        if let Some(loan) = loan {
            if written.is_ok() {
                end.link.sent(loan);
            } else if let Err(violation) = end.link.withdraw(loan) {
                written = Err(violation);
            }
        }
        if let (Err(_), Some(loan)) = (&written, copied) {
            // The copy was not sent: its space goes back (the message keeps its body).
            end.link.cancel(loan);
        }
        match written {
            Ok(()) => {
                if lent.is_some() {
                    message.body.mark_sent();
                }
                Ok(())
            }
            Err(error) => {
                // Handed back unsent: without an id (0 until sent).
                message.id = 0;
                Err(end.failure_of(error))
            }
        }
    }

    /// Writes `body`, bytes of this process shorter than [`POOL_THRESHOLD`] (a small request
    /// built on the caller's stack), as one frame of `kind` with type `msg_type`, priority 0:
    /// what [`write`](Self::write) does for such a body, without a [`Message`] to hold it.
    pub(crate) fn write_bytes(
        &self,
        kind: FrameKind,
        msg_type: u32,
        body: &[u8],
        correlation: u64,
        wait: Wait,
    ) -> Result<(), WriteFailure> {
        let end = self.end;
        // A length past `u32` is too large for any link.
        let body_len = u32::try_from(body.len()).unwrap_or(u32::MAX);
        if body_len > end.max_body {
            return Err(WriteFailure::TooLarge(end.max_body));
        }
        if end.is_closed() {
            return Err(WriteFailure::Closed);
        }
        debug_assert!(body.len() < POOL_THRESHOLD, "a body for the pool in write_bytes");
        let header = FrameHeader {
            kind,
            priority: 0,
            msg_type,
            id: next_message_id(),
            correlation,
            body_len,
            placement: Placement::Inline,
        }
        .encode(body);
        end.link.write_frame(&header, body, wait).map_err(|error| end.failure_of(error))
    }

    /// Writes `messages` in order as frames of `kind` (no correlation), counting in `written`
    /// those that went out; on a failure the others were not written, and the failure is the
    /// first of them's, as [`write`](Self::write) would report it.
    ///
    /// On a Unix link, consecutive bodies of this process are encoded together, up to
    /// [`BATCH_BYTES`] at a time, and with [`Wait::Forever`] written in one system call
    /// ([`Link::write_frames`]): the receiver reads one socket buffer instead of one per
    /// message. Other bodies (sealed, lent, large) and shared-memory links go frame by frame.
    /// Messages not written keep id 0.
    pub(crate) fn write_batch(
        &self,
        kind: FrameKind,
        messages: &mut [Message],
        wait: Wait,
        written: &mut usize,
    ) -> Result<(), WriteFailure> {
        let end = self.end;
        if !matches!(*end.link, Link::Unix(_)) {
            for message in messages {
                self.write(kind, message, 0, wait)?;
                *written += 1;
            }
            return Ok(());
        }
        let mut frames = Vec::new();
        let mut ends = Vec::new();
        let mut rest = messages;
        while !rest.is_empty() {
            frames.clear();
            ends.clear();
            for message in rest.iter_mut() {
                let len = message.body.len();
                let fits = frames.len() + HEADER_LEN + len <= BATCH_BYTES;
                if !message.body.is_owned() || len > end.max_body as usize || !fits {
                    break;
                }
                message.id = next_message_id();
                let header = FrameHeader {
                    kind,
                    priority: message.priority,
                    msg_type: message.msg_type,
                    id: message.id,
                    correlation: 0,
                    body_len: len as u32,
                    placement: Placement::Inline,
                }
                .encode(&message.body);
                frames.extend_from_slice(&header);
                frames.extend_from_slice(&message.body);
                ends.push(frames.len());
            }
            if ends.is_empty() {
                // The first goes alone (and reports its own failure, such as its size).
                self.write(kind, &mut rest[0], 0, wait)?;
                *written += 1;
                rest = &mut rest[1..];
                continue;
            }
            if end.is_closed() {
                return Err(WriteFailure::Closed);
            }
            if let Err(failure) = end.link.write_frames(&frames, &ends, wait) {
                *written += failure.written;
                // The ones not written go back as they came: without an id (0 until sent).
                for unsent in &mut rest[failure.written..ends.len()] {
                    unsent.id = 0;
                }
                return Err(end.failure_of(failure.error));
            }
            *written += ends.len();
            rest = &mut rest[ends.len()..];
        }
        Ok(())
    }
}

/// At most this many bytes of frames are gathered for a Unix link at a time (and a body
/// larger than that goes alone, without a copy into the batch): a blocking batch writes them
/// with one system call, which Linux queues as one socket buffer (up to about 32 KiB); a
/// non-blocking or timed one writes them frame by frame ([`UnixLink::write_frames`]).
///
/// [`UnixLink::write_frames`]: postbox_transport::UnixLink::write_frames
const BATCH_BYTES: usize = 32 * 1024;

/// Bodies this large go through a shared-memory link's payload pool when it has room: below
/// it, copying through the stream costs less than lending.
pub(crate) const POOL_THRESHOLD: usize = 32 * 1024;

/// Why a frame was not written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WriteFailure {
    /// The body is over the limit (nothing written).
    TooLarge(u32),
    /// The peer is gone (nothing delivered).
    Closed,
    /// The peer broke the shared-memory protocol; the link was closed (nothing delivered).
    Violation,
    /// No room before the wait ended (nothing delivered).
    Full,
}

impl LinkEnd {
    /// What a write that failed with `error` reports; a link that may hold part of a frame,
    /// or that the peer broke or left, is closed.
    fn failure_of(&self, error: TransportError) -> WriteFailure {
        match error {
            TransportError::WouldBlock | TransportError::TimedOut => WriteFailure::Full,
            TransportError::Stalled => {
                self.close();
                WriteFailure::Full
            }
            TransportError::Corrupt => {
                self.close();
                WriteFailure::Violation
            }
            _ => {
                self.close();
                WriteFailure::Closed
            }
        }
    }

    pub(crate) fn new(link: Link, max_body: u32) -> Self {
        Self {
            link: Arc::new(link),
            writer: WriteGate::default(),
            max_body,
            closed: AtomicBool::new(false),
        }
    }

    /// Space for a payload of `len` bytes in this link's payload pool, as a message body to
    /// fill in place and send on this link (waits until `wait` ends at most for space).
    pub(crate) fn lend(&self, len: usize, wait: Wait) -> Result<Message, LoanError> {
        if len > self.max_body as usize {
            return Err(LoanError::TooLarge { len, limit: u64::from(self.max_body) });
        }
        if self.is_closed() {
            return Err(LoanError::Disconnected);
        }
        match self.link.lend(len, wait) {
            Ok(loan) => Ok(Message::lent(Body::lent(loan, Arc::clone(&self.link)))),
            Err(TransportError::Oversized(limit)) => {
                Err(LoanError::TooLarge { len, limit: limit as u64 })
            }
            Err(TransportError::NoPool) => Err(LoanError::NotSharedMemory),
            Err(TransportError::WouldBlock | TransportError::TimedOut) => Err(LoanError::Full),
            Err(_) => Err(LoanError::Disconnected),
        }
    }

    /// The payload a pooled or sealed frame describes, as a message (`None`: the peer broke
    /// the protocol).
    /// A pooled payload is read in place only when `in_place` (the receiver trusts its
    /// senders); otherwise it is copied out at once and its space handed back.
    pub(crate) fn described(
        &self,
        header: &FrameHeader,
        body: &[u8],
        max: u32,
        in_place: bool,
    ) -> Option<Message> {
        match header.placement {
            Placement::Inline => None,
            Placement::Pooled if in_place => {
                Some(Message::from_pooled(header, self.view(body, max)?))
            }
            Placement::Pooled => {
                let copied = self.view(body, max)?.copy_to_vec();
                Some(Message::from_copied(header, copied))
            }
            Placement::Sealed => {
                let sealed = SealedRef::decode(body).ok()?;
                let payload = self.link.take_sealed(sealed, max).ok()?;
                Some(Message::from_sealed(header, payload))
            }
        }
    }

    /// The payload a pooled frame describes, read in place (`None`: the peer broke the
    /// protocol).
    pub(crate) fn view(&self, body: &[u8], max: u32) -> Option<PoolView> {
        let pool_ref = PoolRef::decode(body).ok()?;
        self.link.view(pool_ref, max).ok()
    }

    /// Writes `message` as one frame of `kind`, giving it a fresh id (a reply is matched by
    /// `correlation`, not by its id); waits until `wait` ends at most to become the writer.
    pub(crate) fn write(
        &self,
        kind: FrameKind,
        message: &mut Message,
        correlation: u64,
        wait: Wait,
    ) -> Result<(), WriteFailure> {
        let guard = self.enter(wait).ok_or(WriteFailure::Full)?;
        guard.write(kind, message, correlation, wait)
    }

    /// Like [`write`](Self::write), for a small body of bytes (see
    /// [`WriteGuard::write_bytes`]).
    pub(crate) fn write_bytes(
        &self,
        kind: FrameKind,
        msg_type: u32,
        body: &[u8],
        correlation: u64,
        wait: Wait,
    ) -> Result<(), WriteFailure> {
        let guard = self.enter(wait).ok_or(WriteFailure::Full)?;
        guard.write_bytes(kind, msg_type, body, correlation, wait)
    }

    /// Becomes the only writer of this link until the guard drops, waiting until `wait` ends
    /// at most.
    pub(crate) fn enter(&self, wait: Wait) -> Option<WriteGuard<'_>> {
        let gate = self.writer.enter(wait)?;
        Some(WriteGuard { end: self, corked: false, _gate: gate })
    }

    /// Like [`enter`](Self::enter), for a batch: the frames written under the guard reach the
    /// peer together (one publication, one wake-up) when it drops. Drop it before waiting
    /// for anything the peer must do.
    pub(crate) fn enter_batch(&self, wait: Wait) -> Option<WriteGuard<'_>> {
        let gate = self.writer.enter(wait)?;
        self.link.cork();
        Some(WriteGuard { end: self, corked: true, _gate: gate })
    }

    /// The largest body this link carries.
    pub(crate) fn max_body(&self) -> u32 {
        self.max_body
    }

    pub(crate) fn link(&self) -> &Link {
        &self.link
    }

    /// The link itself, for a feed that outlives this borrow.
    pub(crate) fn shared_link(&self) -> Arc<Link> {
        Arc::clone(&self.link)
    }

    /// A handle on the link for the node's table of link ends (the broker's notices).
    pub(crate) fn link_handle(&self) -> std::sync::Weak<Link> {
        Arc::downgrade(&self.link)
    }

    /// Has `readiness` watch this link from now on (for the async forms).
    pub(crate) fn watch(&self, readiness: &Readiness) {
        self.link.keep_armed();
        let mut fds = Vec::with_capacity(2);
        self.link.poll_fds(&mut fds);
        for fd in fds {
            readiness.watch(fd);
        }
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Marks the link dead and shuts it down, so the peer sees it close at once.
    pub(crate) fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.link.shutdown();
    }
}

impl Drop for WriteGuard<'_> {
    fn drop(&mut self) {
        if self.corked {
            self.end.link.uncork();
        }
    }
}

impl Drop for LinkEnd {
    fn drop(&mut self) {
        self.link.shutdown();
    }
}

impl WriteGate {
    /// Becomes the writer, waiting until `wait` ends at most.
    fn enter(&self, wait: Wait) -> Option<GateGuard<'_>> {
        if self.busy.compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed).is_ok() {
            return Some(GateGuard(self));
        }
        // The lock guards no data (a panicking holder leaves nothing inconsistent).
        let mut guard = self.lock.lock().unwrap_or_else(PoisonError::into_inner);
        // Counted before the look below: a leaving writer that missed this count left `busy`
        // false for that look to see (both sequentially consistent), and one that saw it
        // notifies under the lock, which this writer holds until it waits.
        self.waiting.fetch_add(1, Ordering::SeqCst);
        let entered = loop {
            if self.busy.compare_exchange(false, true, Ordering::SeqCst, Ordering::Relaxed).is_ok()
            {
                break true;
            }
            if wait.expired() {
                break false;
            }
            guard = crate::condvar::wait_until(&self.free, guard, wait.ends_at());
        };
        self.waiting.fetch_sub(1, Ordering::SeqCst);
        // Not `then_some`: a guard made and dropped would open the gate another writer holds.
        if entered {
            Some(GateGuard(self))
        } else {
            None
        }
    }
}

impl Default for WriteGate {
    fn default() -> Self {
        Self {
            busy: AtomicBool::new(false),
            waiting: AtomicUsize::new(0),
            lock: Mutex::new(()),
            free: Condvar::new(),
        }
    }
}

impl std::fmt::Debug for WriteGate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WriteGate").field("busy", &self.busy).finish_non_exhaustive()
    }
}

impl Drop for GateGuard<'_> {
    fn drop(&mut self) {
        let gate = self.0;
        gate.busy.store(false, Ordering::SeqCst);
        if gate.waiting.load(Ordering::SeqCst) > 0 {
            let _guard = gate.lock.lock().unwrap_or_else(PoisonError::into_inner);
            gate.free.notify_all();
        }
    }
}

impl std::fmt::Debug for GateGuard<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("GateGuard")
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use postbox_core::FrameDecoder;
    use postbox_transport::UnixLink;

    use super::*;

    /// Messages of the given sizes, each body filled with its number.
    fn numbered(sizes: &[usize]) -> Vec<Message> {
        sizes.iter().enumerate().map(|(i, &size)| Message::new(vec![i as u8; size])).collect()
    }

    /// Reads frames until the link has nothing more now (`NonBlocking`) or closes; checks
    /// that they carry `messages` from the first on, in order, whole; returns how many.
    fn read_in_order(b: &UnixLink, messages: &[Message], wait: Wait) -> (usize, usize) {
        let mut decoder = FrameDecoder::new(1 << 20);
        let mut next = 0;
        loop {
            while let Some(frame) = decoder.poll_frame().unwrap() {
                assert_eq!(frame.header.id, messages[next].id, "in order, none twice");
                assert_eq!(frame.body, messages[next].body());
                next += 1;
            }
            match b.read_into(&mut decoder, wait) {
                Ok(_) => {}
                Err(TransportError::WouldBlock | TransportError::Closed) => {
                    return (next, decoder.buffered())
                }
                Err(other) => panic!("read failed: {other:?}"),
            }
        }
    }

    #[test]
    fn a_batch_on_a_unix_link_arrives_in_order_around_a_body_too_large_to_gather() {
        let (a, b) = UnixLink::pair().unwrap();
        let end = LinkEnd::new(Link::Unix(a), 1 << 20);
        let mut messages = numbered(&[64, 1, 0, BATCH_BYTES + 1, 64, 300, 64]);
        let reader = std::thread::spawn(move || {
            let mut decoder = FrameDecoder::new(1 << 20);
            let mut frames = Vec::new();
            while b.read_into(&mut decoder, Wait::Forever).is_ok() {
                while let Some(frame) = decoder.poll_frame().unwrap() {
                    frames.push(frame);
                }
            }
            frames
        });
        let mut written = 0;
        let guard = end.enter_batch(Wait::Forever).unwrap();
        guard.write_batch(FrameKind::Oneway, &mut messages, Wait::Forever, &mut written).unwrap();
        drop(guard);
        assert_eq!(written, messages.len());
        drop(end);
        let frames = reader.join().unwrap();
        assert_eq!(frames.len(), messages.len());
        for (frame, message) in frames.iter().zip(&messages) {
            assert_eq!(frame.header.id, message.id);
            assert_eq!(frame.body, message.body());
        }
    }

    #[test]
    fn a_non_blocking_batch_to_a_full_unix_link_counts_exactly_the_frames_written_whole_and_leaves_it_open(
    ) {
        let (a, b) = UnixLink::pair().unwrap();
        // A small send buffer makes the kernel cut one write of a whole batch into socket
        // buffers of 8 KiB at most, so that such a write would end inside a frame.
        rustix::net::sockopt::set_socket_send_buffer_size(a.as_fd(), 16 * 1024).unwrap();
        let end = LinkEnd::new(Link::Unix(a), 1 << 20);
        // About 3 MiB: far more than the socket holds with nobody reading.
        let mut messages = numbered(&[1021; 3000]);
        let mut written = 0;
        let guard = end.enter_batch(Wait::NonBlocking).unwrap();
        let result =
            guard.write_batch(FrameKind::Oneway, &mut messages, Wait::NonBlocking, &mut written);
        drop(guard);
        assert_eq!(result, Err(WriteFailure::Full));
        assert!(written > 0 && written < messages.len(), "{written}");
        assert!(!end.is_closed(), "the batch stopped between two frames");
        let (read, left) = read_in_order(&b, &messages, Wait::NonBlocking);
        assert_eq!(read, written);
        assert_eq!(left, 0, "no part of the first unsent frame");
        assert!(messages[written..].iter().all(|m| m.id == 0), "unsent ones have no id");
    }

    #[test]
    fn a_writer_that_gives_up_leaves_the_gate_closed_for_its_holder() {
        let gate = WriteGate::default();
        let held = gate.enter(Wait::NonBlocking).unwrap();
        assert!(gate.enter(Wait::NonBlocking).is_none());
        assert!(gate.enter(Wait::timeout(Duration::from_millis(20))).is_none());
        assert!(gate.enter(Wait::NonBlocking).is_none(), "still held after two give-ups");
        drop(held);
        assert!(gate.enter(Wait::NonBlocking).is_some());
    }

    #[test]
    fn a_waiting_writer_enters_once_the_holder_leaves() {
        let gate = WriteGate::default();
        let held = gate.enter(Wait::NonBlocking).unwrap();
        std::thread::scope(|s| {
            let waiter = s.spawn(|| gate.enter(Wait::timeout(Duration::from_secs(20))).is_some());
            while gate.waiting.load(Ordering::SeqCst) == 0 {
                std::thread::yield_now();
            }
            drop(held);
            assert!(waiter.join().unwrap(), "the waiter entered");
        });
        assert!(!gate.busy.load(Ordering::SeqCst), "and left");
    }
}
