//! One end of a connection's data path: a Unix stream socketpair carrying frames.
//!
//! Only stream-socket calls are used (`sendmsg` without ancillary data, `recv`, `shutdown`), so
//! the same code serves a direct link's TCP socket across hosts (`direct_link.rs`): a reset
//! reads as `Closed`, a keepalive or user timeout as an `Os` error, and both end the link.
//!
//! A frame is written whole or not at all as far as the receiver can tell: once its first byte
//! is in the socket, the writer finishes it (within the caller's wait); a writer that cannot
//! finish shuts the link down, because a half-written frame can never be taken back.

use std::io::IoSlice;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::Instant;

use postbox_core::FrameDecoder;
use rustix::net::{
    recv, sendmsg, shutdown, socketpair, AddressFamily, RecvFlags, SendAncillaryBuffer, SendFlags,
    Shutdown, SocketFlags, SocketType,
};

use crate::wait::{wait_readable, wait_writable};
use crate::{TransportError, Wait, WriteFramesError};

/// One end of a Unix stream link.
#[derive(Debug)]
pub struct UnixLink {
    fd: OwnedFd,
    /// This end was cut ([`cut`](Self::cut)).
    cut: std::sync::atomic::AtomicBool,
}

impl UnixLink {
    /// A connected pair of link ends.
    ///
    /// # Errors
    /// [`TransportError::Os`] when the kernel refuses (for example out of descriptors).
    pub fn pair() -> Result<(Self, Self), TransportError> {
        let (a, b) =
            socketpair(AddressFamily::UNIX, SocketType::STREAM, SocketFlags::CLOEXEC, None)
                .map_err(|e| TransportError::os("create link socketpair", e))?;
        Ok((Self::from_fd(a), Self::from_fd(b)))
    }

    /// Wraps a descriptor received from the broker.
    #[must_use]
    pub fn from_fd(fd: OwnedFd) -> Self {
        Self { fd, cut: std::sync::atomic::AtomicBool::new(false) }
    }

    /// Writes `header` then `body` as one frame.
    ///
    /// With [`Wait::NonBlocking`] or [`Wait::Until`], nothing is written when the link has no
    /// room before the wait ends (`WouldBlock` / `TimedOut`, the frame was not sent). A frame
    /// whose writing started is finished; if the wait ends first the link is shut down and
    /// `Stalled` returned (the receiver will see the link close, never a partial frame).
    ///
    /// # Errors
    /// `Closed` when the peer is gone, `WouldBlock`, `TimedOut`, `Stalled`, `Os`.
    pub fn write_frame(
        &self,
        header: &[u8],
        body: &[u8],
        wait: Wait,
    ) -> Result<(), TransportError> {
        let total = header.len() + body.len();
        let mut written = 0usize;
        // A started frame may take a little longer than a zero wait to finish.
        let mut wait = wait;
        while written < total {
            let parts = if written < header.len() {
                [IoSlice::new(&header[written..]), IoSlice::new(body)]
            } else {
                [IoSlice::new(&body[written - header.len()..]), IoSlice::new(&[])]
            };
            let mut flags = SendFlags::NOSIGNAL;
            if wait != Wait::Forever {
                flags |= SendFlags::DONTWAIT;
            }
            match sendmsg(&self.fd, &parts, &mut SendAncillaryBuffer::default(), flags) {
                Ok(n) => {
                    if written == 0 && n > 0 && wait != Wait::Forever {
                        // The frame has started: give it at least a grace period to finish,
                        // so that a short wait does not cost the whole link.
                        let grace = Wait::timeout(PARTIAL_FRAME_GRACE);
                        wait =
                            wait.ends_at().max(grace.ends_at()).map_or(Wait::Forever, Wait::Until);
                    }
                    written += n;
                }
                Err(rustix::io::Errno::INTR) => {}
                Err(rustix::io::Errno::AGAIN) => {
                    let room = match wait {
                        Wait::NonBlocking => false,
                        _ => match wait_writable(self.fd.as_fd(), wait) {
                            Ok(room) => room,
                            Err(error) => {
                                if written > 0 {
                                    // A half-written frame can never be taken back.
                                    self.shutdown();
                                }
                                return Err(error);
                            }
                        },
                    };
                    if !room {
                        if written == 0 {
                            return Err(match wait {
                                Wait::NonBlocking => TransportError::WouldBlock,
                                _ => TransportError::TimedOut,
                            });
                        }
                        self.shutdown();
                        return Err(TransportError::Stalled);
                    }
                }
                Err(errno) => {
                    if written > 0 {
                        // A half-written frame can never be taken back.
                        self.shutdown();
                    }
                    return Err(TransportError::os("write frame", errno));
                }
            }
        }
        Ok(())
    }

    /// Writes `frames`, whole frames back to back that end at the offsets in `ends`
    /// (ascending, the last one `frames.len()`).
    ///
    /// With [`Wait::Forever`] the whole batch goes in one `sendmsg` (one socket buffer for the
    /// reader per ~32 KiB instead of one per frame), resumed after each partial write until
    /// every frame is out.
    ///
    /// With [`Wait::NonBlocking`] or [`Wait::Until`] the frames go one `sendmsg` each, as
    /// [`write_frame`](Self::write_frame) writes them: a full link stops the batch between two
    /// frames, with the link open, where one write of many frames would end inside one (the
    /// kernel cuts a long write into socket buffers of its own size) and cost the link. Each
    /// frame keeps `write_frame`'s contract: one whose first byte is in the socket is
    /// finished, given a grace period past the wait if it needs one; once the wait has ended
    /// (or that grace was needed) no further frame is started. The receiver sees the frames
    /// before the one that failed, whole, and nothing of the others.
    ///
    /// # Errors
    /// [`WriteFramesError`] with how many frames were written whole and why the next one was
    /// not: `Closed` when the peer is gone, `WouldBlock`, `TimedOut`, `Stalled` (it was
    /// started and could not be finished; the link was shut down), `Os` (if a frame was under
    /// way, the link was shut down).
    pub fn write_frames(
        &self,
        frames: &[u8],
        ends: &[usize],
        wait: Wait,
    ) -> Result<(), WriteFramesError> {
        debug_assert_eq!(ends.last().copied().unwrap_or(0), frames.len(), "ends cover frames");
        let blocking = wait == Wait::Forever;
        let mut flags = SendFlags::NOSIGNAL;
        if !blocking {
            flags |= SendFlags::DONTWAIT;
        }
        let mut written = 0usize;
        // Frames written whole; the next one starts at `ends[whole - 1]`.
        let mut whole = 0usize;
        // When the frame under way started, if it did not go whole at once (its grace).
        let mut started_at = None;
        // The caller's wait is over: no frame starts any more (not blocking).
        let mut wait_over = false;
        let failed = |whole, error| Err(WriteFramesError { written: whole, error });
        while written < frames.len() {
            let frame_start = whole.checked_sub(1).map_or(0, |last| ends[last]);
            let mid_frame = written > frame_start;
            if !blocking && !mid_frame && written > 0 {
                wait_over |= matches!(wait, Wait::Until(_)) && wait.expired();
                if wait_over {
                    return failed(whole, wait_ended(wait));
                }
            }
            let limit = if blocking { frames.len() } else { ends[whole] };
            let parts = [IoSlice::new(&frames[written..limit])];
            match sendmsg(&self.fd, &parts, &mut SendAncillaryBuffer::default(), flags) {
                Ok(n) => {
                    if !blocking && !mid_frame && written + n < limit {
                        started_at = Some(Instant::now());
                    }
                    written += n;
                    while whole < ends.len() && ends[whole] <= written {
                        whole += 1;
                    }
                }
                Err(rustix::io::Errno::INTR) => {}
                Err(rustix::io::Errno::AGAIN) => {
                    let room_wait = match started_at {
                        Some(started) if mid_frame && !blocking => finish_within(wait, started),
                        _ => wait,
                    };
                    let room = match room_wait {
                        Wait::NonBlocking => Ok(false),
                        _ => wait_writable(self.fd.as_fd(), room_wait),
                    };
                    match room {
                        Ok(true) => wait_over |= mid_frame && wait.expired(),
                        Ok(false) if !mid_frame => return failed(whole, wait_ended(wait)),
                        Ok(false) => {
                            self.shutdown();
                            return failed(whole, TransportError::Stalled);
                        }
                        Err(error) => {
                            if mid_frame {
                                // A half-written frame can never be taken back.
                                self.shutdown();
                            }
                            return failed(whole, error);
                        }
                    }
                }
                Err(errno) => {
                    if mid_frame {
                        // A half-written frame can never be taken back.
                        self.shutdown();
                    }
                    return failed(whole, TransportError::os("write frames", errno));
                }
            }
        }
        Ok(())
    }

    /// Writes as much of `bytes` as fits now, never blocking; returns how many were written
    /// (0 when the link is full).
    ///
    /// # Errors
    /// `Closed` when the peer is gone, `Os`.
    pub fn write_available(&self, bytes: &[u8]) -> Result<usize, TransportError> {
        let flags = SendFlags::NOSIGNAL | SendFlags::DONTWAIT;
        loop {
            match sendmsg(
                &self.fd,
                &[IoSlice::new(bytes)],
                &mut SendAncillaryBuffer::default(),
                flags,
            ) {
                Ok(n) => return Ok(n),
                Err(rustix::io::Errno::INTR) => {}
                Err(rustix::io::Errno::AGAIN) => return Ok(0),
                Err(errno) => return Err(TransportError::os("write", errno)),
            }
        }
    }

    /// Reads what the link has into `decoder`; returns the byte count (never 0).
    ///
    /// # Errors
    /// `Closed` at end of stream (the peer exited or closed), `WouldBlock`, `TimedOut`, `Os`.
    pub fn read_into(
        &self,
        decoder: &mut FrameDecoder,
        wait: Wait,
    ) -> Result<usize, TransportError> {
        if let Wait::Until(_) = wait {
            if wait_readable(&[self.fd.as_fd()], wait)?.is_empty() {
                return Err(TransportError::TimedOut);
            }
        }
        let flags = if wait == Wait::Forever { RecvFlags::empty() } else { RecvFlags::DONTWAIT };
        loop {
            match recv(&self.fd, decoder.read_buffer(), flags) {
                Ok((0, _)) => return Err(TransportError::Closed),
                Ok((n, _)) => {
                    decoder.commit(n);
                    return Ok(n);
                }
                Err(rustix::io::Errno::INTR) => {}
                Err(errno) => return Err(TransportError::os("read frame", errno)),
            }
        }
    }

    /// Gives up the descriptor (to pass it to another process).
    #[must_use]
    pub fn into_fd(self) -> OwnedFd {
        self.fd
    }

    /// Shuts both directions down; the peer sees the link close.
    pub fn shutdown(&self) {
        // Failure means the socket is already disconnected, which is the goal.
        let _ = shutdown(&self.fd, Shutdown::Both);
    }

    /// Shuts the link down for good: a reader that asks [`is_cut`](Self::is_cut) reads
    /// nothing more (a revoked right), unlike after a plain [`shutdown`](Self::shutdown).
    pub fn cut(&self) {
        self.cut.store(true, std::sync::atomic::Ordering::Release);
        self.shutdown();
    }

    /// True once [`cut`](Self::cut).
    #[must_use]
    pub fn is_cut(&self) -> bool {
        self.cut.load(std::sync::atomic::Ordering::Acquire)
    }

    /// The descriptor, to pass to the broker's peer or to poll.
    #[must_use]
    pub fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// What a write reports when its wait ends before a frame starts.
fn wait_ended(wait: Wait) -> TransportError {
    match wait {
        Wait::NonBlocking => TransportError::WouldBlock,
        _ => TransportError::TimedOut,
    }
}

/// The wait for room to finish a frame that started at `started`: the caller's `wait`, or the
/// grace from the frame's start if that ends later (one grace per frame; none chains).
fn finish_within(wait: Wait, started: Instant) -> Wait {
    let grace_end = started + PARTIAL_FRAME_GRACE;
    match wait {
        Wait::Until(end) => Wait::Until(end.max(grace_end)),
        Wait::NonBlocking => Wait::Until(grace_end),
        Wait::Forever => Wait::Forever,
    }
}

/// How long a non-blocking or deadline write may take, at least, to finish a frame it started.
const PARTIAL_FRAME_GRACE: std::time::Duration = std::time::Duration::from_millis(500);

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use postbox_core::Frame;

    use super::*;
    use crate::test_frames::header;

    #[test]
    fn frames_cross_a_link_and_a_closed_peer_reads_as_closed() {
        let (a, b) = UnixLink::pair().unwrap();
        let body = vec![7u8; 300_000];
        let h = header(body.len()).encode(&body);
        let writer = std::thread::spawn(move || {
            a.write_frame(&h, &body, Wait::Forever).unwrap();
            a
        });
        let mut decoder = FrameDecoder::new(1 << 20);
        let frame: Frame = loop {
            b.read_into(&mut decoder, Wait::Forever).unwrap();
            if let Some(f) = decoder.poll_frame().unwrap() {
                break f;
            }
        };
        assert_eq!(frame.body.len(), 300_000);
        drop(writer.join().unwrap());
        assert_eq!(b.read_into(&mut decoder, Wait::Forever), Err(TransportError::Closed));
    }

    #[test]
    fn a_full_link_refuses_a_non_blocking_frame_without_writing_any_of_it() {
        let (a, _b) = UnixLink::pair().unwrap();
        let body = vec![1u8; 4096];
        let h = header(body.len()).encode(&body);
        let mut sent = 0;
        let err = loop {
            match a.write_frame(&h, &body, Wait::NonBlocking) {
                Ok(()) => sent += 1,
                Err(e) => break e,
            }
            assert!(sent < 100_000, "socket buffer never filled");
        };
        // Either the frame was refused whole, or it started and could not finish in time.
        assert!(matches!(err, TransportError::WouldBlock | TransportError::Stalled), "{err:?}");
        assert!(sent > 0);
    }

    /// `count` frames of `size` bytes back to back, each body filled with its number; and
    /// where each ends.
    fn numbered_frames(count: usize, size: usize) -> (Vec<u8>, Vec<usize>) {
        let mut frames = Vec::new();
        let mut ends = Vec::new();
        for i in 0..count {
            let body = vec![(i % 251) as u8; size];
            let mut h = header(size);
            h.id = i as u64;
            frames.extend_from_slice(&h.encode(&body));
            frames.extend_from_slice(&body);
            ends.push(frames.len());
        }
        (frames, ends)
    }

    /// Reads frames until `count` arrived or the link has nothing more to read now, checking
    /// that they are numbered from `first` on, in order, and whole; returns how many.
    fn read_numbered(b: &UnixLink, decoder: &mut FrameDecoder, first: usize, wait: Wait) -> usize {
        let mut next = first;
        loop {
            while let Some(frame) = decoder.poll_frame().unwrap() {
                assert_eq!(frame.header.id, next as u64, "in order, none twice");
                assert!(frame.body.iter().all(|&byte| byte == (next % 251) as u8));
                next += 1;
            }
            match b.read_into(decoder, wait) {
                Ok(_) => {}
                Err(TransportError::WouldBlock | TransportError::Closed) => return next - first,
                Err(other) => panic!("read failed: {other:?}"),
            }
        }
    }

    #[test]
    fn a_batch_of_frames_arrives_whole_and_in_order() {
        let (a, b) = UnixLink::pair().unwrap();
        let (frames, ends) = numbered_frames(64, 64);
        a.write_frames(&frames, &ends, Wait::NonBlocking).unwrap();
        drop(a);
        let mut decoder = FrameDecoder::new(1 << 20);
        assert_eq!(read_numbered(&b, &mut decoder, 0, Wait::Forever), 64);
        assert_eq!(decoder.buffered(), 0, "nothing beyond the frames");
    }

    #[test]
    fn a_blocking_batch_larger_than_the_socket_resumes_after_each_partial_write() {
        // 8 MiB to a socket in non-blocking mode: each sendmsg takes what fits (about 200 KiB)
        // and returns, most often inside a frame; the batch waits for room and goes on from
        // there. (On a blocking socket the kernel would finish the write inside one call.)
        let (a, b) = UnixLink::pair().unwrap();
        rustix::io::ioctl_fionbio(&a.fd, true).unwrap();
        let (frames, ends) = numbered_frames(2000, 4093);
        let writer = std::thread::spawn(move || a.write_frames(&frames, &ends, Wait::Forever));
        let mut decoder = FrameDecoder::new(1 << 20);
        assert_eq!(read_numbered(&b, &mut decoder, 0, Wait::Forever), 2000);
        assert_eq!(writer.join().unwrap(), Ok(()));
        assert_eq!(decoder.buffered(), 0, "nothing beyond the frames");
    }

    #[test]
    fn a_batch_that_does_not_fit_stops_between_frames_with_the_link_open_and_resumes_after_them() {
        for wait in [Wait::NonBlocking, Wait::timeout(Duration::from_millis(20))] {
            let (a, b) = UnixLink::pair().unwrap();
            let (frames, ends) = numbered_frames(2000, 4093);
            // Nobody reads: the socket fills, and the batch stops at the frame it has no room
            // for, without starting it.
            let failure = a.write_frames(&frames, &ends, wait).unwrap_err();
            let written = failure.written;
            let expected = if wait == Wait::NonBlocking {
                TransportError::WouldBlock
            } else {
                TransportError::TimedOut
            };
            assert_eq!(failure.error, expected, "{wait:?}: {failure:?}");
            assert!(written > 0 && written < 2000, "{failure:?}");
            // Exactly the whole ones are there, and nothing of the next.
            let mut decoder = FrameDecoder::new(1 << 20);
            assert_eq!(read_numbered(&b, &mut decoder, 0, Wait::NonBlocking), written);
            assert_eq!(decoder.buffered(), 0, "no part of the next frame");
            // The link is open: the rest goes once the reader takes, from the first unsent one.
            let start = ends[written - 1];
            let rest: Vec<usize> = ends[written..].iter().map(|e| e - start).collect();
            let writer = std::thread::spawn(move || {
                a.write_frames(&frames[start..], &rest, Wait::Forever).unwrap();
            });
            let more = read_numbered(&b, &mut decoder, written, Wait::Forever);
            writer.join().unwrap();
            assert_eq!(more, 2000 - written);
        }
    }

    #[test]
    fn a_batch_to_a_full_link_writes_nothing_and_says_so() {
        let (a, b) = UnixLink::pair().unwrap();
        let filler = vec![0u8; 4096];
        while a.write_available(&filler).unwrap() > 0 {}
        let (frames, ends) = numbered_frames(64, 64);
        let nothing = |error| WriteFramesError { written: 0, error };
        assert_eq!(
            a.write_frames(&frames, &ends, Wait::NonBlocking),
            Err(nothing(TransportError::WouldBlock))
        );
        let short = Wait::timeout(Duration::from_millis(10));
        assert_eq!(a.write_frames(&frames, &ends, short), Err(nothing(TransportError::TimedOut)));
        // The link is still usable: nothing of a frame went out.
        drop(a);
        let mut buf = vec![0u8; 1 << 16];
        let mut filled = 0;
        loop {
            match recv(&b.fd, &mut buf, RecvFlags::empty()) {
                Ok((0, _)) => break,
                Ok((n, _)) => filled += n,
                Err(errno) => panic!("{errno:?}"),
            }
        }
        assert_eq!(filled % filler.len(), 0, "only the filler arrived");
    }

    #[test]
    fn a_batch_whose_wait_ends_inside_a_frame_finishes_that_frame_and_starts_no_other() {
        let now = Instant::now();
        let waits = [
            (Wait::NonBlocking, TransportError::WouldBlock),
            (Wait::Until(now + Duration::from_millis(20)), TransportError::TimedOut),
        ];
        for (wait, expected) in waits {
            let (a, b) = UnixLink::pair().unwrap();
            // The first frame is larger than the socket holds: the wait ends with it under
            // way, and it can only finish once the reader takes, 30 ms after the wait ended
            // (well within the grace).
            let (frames, ends) = numbered_frames(8, 512 * 1024);
            let reading_from = wait.ends_at().unwrap() + Duration::from_millis(30);
            let reader = std::thread::spawn(move || {
                std::thread::sleep(reading_from.saturating_duration_since(Instant::now()));
                let mut decoder = FrameDecoder::new(1 << 20);
                let count = read_numbered(&b, &mut decoder, 0, Wait::Forever);
                (count, decoder.buffered())
            });
            let result = a.write_frames(&frames, &ends, wait);
            drop(a);
            let (count, left) = reader.join().unwrap();
            // The grace finished the first frame; the second was not started.
            assert_eq!(result, Err(WriteFramesError { written: 1, error: expected }), "{wait:?}");
            assert_eq!((count, left), (1, 0), "{wait:?}: one whole frame and nothing after it");
        }
    }

    #[test]
    fn a_frame_that_fails_inside_shuts_the_link_down() {
        for batched in [true, false] {
            let (a, b) = UnixLink::pair().unwrap();
            // Larger than the socket holds, and nobody reads: the frame stays under way.
            let (frames, ends) = numbered_frames(2, 512 * 1024);
            let writer = std::thread::spawn(move || {
                let result = if batched {
                    a.write_frames(&frames, &ends, Wait::Forever).map_err(|failure| failure.error)
                } else {
                    a.write_frame(&frames[..32], &frames[32..ends[0]], Wait::Forever)
                };
                (result, a)
            });
            assert!(!wait_readable(&[b.as_fd()], Wait::timeout(WATCHDOG)).unwrap().is_empty());
            // The reader stops reading (it does not close): the writer's next write fails.
            shutdown(&b.fd, Shutdown::Read).unwrap();
            let (result, a) = writer.join().unwrap();
            assert_eq!(result, Err(TransportError::Closed), "batched: {batched}");
            // The writer shut its end down: the other direction is closed too.
            let sent = rustix::net::send(&b.fd, b"x", SendFlags::NOSIGNAL);
            assert_eq!(sent, Err(rustix::io::Errno::PIPE), "batched: {batched}");
            drop(a);
        }
    }

    #[test]
    fn writing_to_a_closed_peer_is_closed_not_sigpipe() {
        let (a, b) = UnixLink::pair().unwrap();
        drop(b);
        let h = header(3).encode(b"abc");
        assert_eq!(a.write_frame(&h, b"abc", Wait::Forever), Err(TransportError::Closed));
    }

    #[test]
    fn a_batch_filling_the_socket_exactly_on_a_frame_boundary_counts_every_whole_frame() {
        // 3426-byte frames: 64 of them are the 219264 bytes a socket took in one write on the
        // reviewer's kernel. Where the socket fills at a frame's end, the count is exact too.
        let (a, b) = UnixLink::pair().unwrap();
        let (frames, ends) = numbered_frames(2000, 3426 - 32);
        let failure = a.write_frames(&frames, &ends, Wait::NonBlocking).unwrap_err();
        assert_eq!(failure.error, TransportError::WouldBlock);
        let mut decoder = FrameDecoder::new(1 << 20);
        let read = read_numbered(&b, &mut decoder, 0, Wait::NonBlocking);
        assert_eq!(read, failure.written);
        assert_eq!(decoder.buffered(), 0);
    }

    #[test]
    fn a_timed_batch_starts_no_frame_after_its_wait_ended() {
        // The reader starts taking long after the writer's 20 ms: room comes too late for
        // any frame that was not under way.
        let (a, b) = UnixLink::pair().unwrap();
        let (frames, ends) = numbered_frames(2000, 4093);
        let reader = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(100));
            let mut decoder = FrameDecoder::new(1 << 20);
            read_numbered(&b, &mut decoder, 0, Wait::Forever)
        });
        let result = a.write_frames(&frames, &ends, Wait::timeout(Duration::from_millis(20)));
        drop(a);
        let count = reader.join().unwrap();
        assert_eq!(
            result,
            Err(WriteFramesError { written: count, error: TransportError::TimedOut }),
            "the reader got {count} frames"
        );
    }

    #[test]
    fn a_non_blocking_batch_of_small_frames_to_a_full_link_leaves_it_open_as_single_frames_do() {
        // 1021-byte bodies, nobody reading. One by one, the kernel takes each frame whole or
        // not at all, and the link fills without harm.
        let (a, _b) = UnixLink::pair().unwrap();
        let (frames, ends) = numbered_frames(3000, 1021);
        let mut start = 0;
        let mut single = 0;
        for &end in &ends {
            match a.write_frame(
                &frames[start..start + 32],
                &frames[start + 32..end],
                Wait::NonBlocking,
            ) {
                Ok(()) => single += 1,
                Err(error) => {
                    assert_eq!(error, TransportError::WouldBlock, "after {single} frames");
                    break;
                }
            }
            start = end;
        }
        // The same frames as one batch: the same, WouldBlock with the link open (one write of
        // them all would end inside a frame the grace cannot finish, and cost the link).
        let (a, _b) = UnixLink::pair().unwrap();
        let failure = a.write_frames(&frames, &ends, Wait::NonBlocking).unwrap_err();
        assert_eq!(
            failure.error,
            TransportError::WouldBlock,
            "one by one: WouldBlock after {single} frames, link open; batched: {failure:?}"
        );
    }

    const WATCHDOG: Duration = Duration::from_secs(20);
}
