//! A link end of either flavor: the handle the layers above use, forwarding to the same-named
//! methods of [`UnixLink`] or [`ShmLink`].

use std::os::fd::{BorrowedFd, OwnedFd};

use postbox_core::wire::frame::HEADER_LEN;
use postbox_core::{FrameDecoder, PoolRef, SealedRef};
use postbox_shm::FeedEnd;

use crate::{
    LinkSide, PoolLoan, PoolView, SealedPayload, ShmLink, ShmLinkParts, TransportError, UnixLink,
    Wait, WriteFramesError,
};

/// One end of a connection's data path.
#[derive(Debug)]
pub enum Link {
    /// Frames on a Unix stream socketpair.
    Unix(UnixLink),
    /// Frames in a shared-memory segment; the socketpair detects close and death.
    Shm(Box<ShmLink>),
}

impl Link {
    /// The link whose descriptors the broker sent: one (a Unix link's socket) or three (a
    /// shared-memory link's socket, segment and wake-up socket, see [`ShmLinkParts::as_fds`]),
    /// opened as `side`.
    ///
    /// # Errors
    /// [`TransportError::Corrupt`] for any other count, or a segment of the wrong shape.
    pub fn from_fds(fds: Vec<OwnedFd>, side: LinkSide) -> Result<Self, TransportError> {
        match fds.len() {
            1 => Ok(Self::Unix(UnixLink::from_fd(fds.into_iter().next().expect("one fd")))),
            3 => {
                let parts = ShmLinkParts::from_fds(fds).ok_or(TransportError::Corrupt)?;
                Ok(Self::Shm(Box::new(ShmLink::open(parts, side)?)))
            }
            _ => Err(TransportError::Corrupt),
        }
    }

    /// See [`UnixLink::write_frame`] and [`ShmLink::write_frame`].
    ///
    /// # Errors
    /// `Closed`, `WouldBlock`, `TimedOut`, `Stalled`, `Corrupt`, `Os`.
    pub fn write_frame(
        &self,
        header: &[u8],
        body: &[u8],
        wait: Wait,
    ) -> Result<(), TransportError> {
        match self {
            Self::Unix(link) => link.write_frame(header, body, wait),
            Self::Shm(link) => link.write_frame(header, body, wait),
        }
    }

    /// Writes whole frames back to back, ending at the offsets in `ends`: on a Unix link in
    /// as few system calls as the socket allows ([`UnixLink::write_frames`]), on a
    /// shared-memory link frame by frame ([`ShmLink::write_frame`]; cork the link to publish
    /// them together).
    ///
    /// # Errors
    /// [`WriteFramesError`]: how many frames were written whole, and why the next was not.
    pub fn write_frames(
        &self,
        frames: &[u8],
        ends: &[usize],
        wait: Wait,
    ) -> Result<(), WriteFramesError> {
        match self {
            Self::Unix(link) => link.write_frames(frames, ends, wait),
            Self::Shm(link) => {
                let mut start = 0;
                for (written, &end) in ends.iter().enumerate() {
                    let frame = &frames[start..end];
                    let (header, body) = frame.split_at(HEADER_LEN.min(frame.len()));
                    link.write_frame(header, body, wait)
                        .map_err(|error| WriteFramesError { written, error })?;
                    start = end;
                }
                Ok(())
            }
        }
    }

    /// Holds frames written from now on back until [`uncork`](Self::uncork), to publish a
    /// batch at once ([`ShmLink::cork`]). A Unix link writes each frame as it comes.
    pub fn cork(&self) {
        if let Self::Shm(link) = self {
            link.cork();
        }
    }

    /// Publishes the frames held back since [`cork`](Self::cork) ([`ShmLink::uncork`]).
    pub fn uncork(&self) {
        if let Self::Shm(link) = self {
            link.uncork();
        }
    }

    /// See [`UnixLink::write_available`] and [`ShmLink::write_available`].
    ///
    /// # Errors
    /// `Closed`, `Corrupt`, `Os`.
    pub fn write_available(&self, bytes: &[u8]) -> Result<usize, TransportError> {
        match self {
            Self::Unix(link) => link.write_available(bytes),
            Self::Shm(link) => link.write_available(bytes),
        }
    }

    /// See [`UnixLink::read_into`] and [`ShmLink::read_into`].
    ///
    /// # Errors
    /// `Closed`, `WouldBlock`, `TimedOut`, `Corrupt`, `Os`.
    pub fn read_into(
        &self,
        decoder: &mut FrameDecoder,
        wait: Wait,
    ) -> Result<usize, TransportError> {
        match self {
            Self::Unix(link) => link.read_into(decoder, wait),
            Self::Shm(link) => link.read_into(decoder, wait),
        }
    }

    /// Appends the descriptors that turn readable when this link has something to read (or
    /// closed). Call [`prepare_poll`](Self::prepare_poll) before polling them and
    /// [`finish_poll`](Self::finish_poll) after.
    pub fn poll_fds<'a>(&'a self, out: &mut impl Extend<BorrowedFd<'a>>) {
        match self {
            Self::Unix(link) => out.extend([link.as_fd()]),
            Self::Shm(link) => out.extend(link.poll_fds()),
        }
    }

    /// Before a poll: true when there is input already (do not sleep).
    #[must_use]
    pub fn prepare_poll(&self) -> bool {
        match self {
            Self::Unix(_) => false,
            Self::Shm(link) => link.prepare_poll(),
        }
    }

    /// True when a read would find something now, as far as a look without a system call
    /// tells (always false for a Unix link: only a poll tells).
    #[must_use]
    pub fn has_input(&self) -> bool {
        match self {
            Self::Unix(_) => false,
            Self::Shm(link) => link.has_input(),
        }
    }

    /// After a poll reported descriptor `index` (of those [`poll_fds`](Self::poll_fds)
    /// appended) readable: a shared-memory link's socket is readable only when its peer hung
    /// up, which the next read must report.
    pub fn note_ready(&self, index: usize) {
        if let (Self::Shm(link), 1) = (self, index) {
            // Bytes on the socket are reported by the next read as well.
            let _ = link.peer_gone(true);
        }
    }

    /// After a poll.
    pub fn finish_poll(&self) {
        if let Self::Shm(link) = self {
            link.finish_poll();
        }
    }

    /// From now on the poll descriptors are watched by an epoll set (without
    /// `prepare_poll`): keep them signalling.
    pub fn keep_armed(&self) {
        if let Self::Shm(link) = self {
            link.keep_armed();
        }
    }

    /// The broker says the peer's node left (see [`ShmLink::peer_left`]; a Unix link learns
    /// it from its socket alone).
    pub fn peer_left(&self) {
        if let Self::Shm(link) = self {
            link.peer_left();
        }
    }

    /// See [`UnixLink::cut`] and [`ShmLink::cut`].
    pub fn cut(&self) {
        match self {
            Self::Unix(link) => link.cut(),
            Self::Shm(link) => link.cut(),
        }
    }

    /// True once [`cut`](Self::cut).
    #[must_use]
    pub fn is_cut(&self) -> bool {
        match self {
            Self::Unix(link) => link.is_cut(),
            Self::Shm(link) => link.is_cut(),
        }
    }

    /// Shuts both directions down; the peer sees the link close.
    pub fn shutdown(&self) {
        match self {
            Self::Unix(link) => link.shutdown(),
            Self::Shm(link) => link.shutdown(),
        }
    }

    /// See [`ShmLink::lend`]; a Unix link has no pool.
    ///
    /// # Errors
    /// `NoPool` for a Unix link, else as [`ShmLink::lend`].
    pub fn lend(&self, len: usize, wait: Wait) -> Result<PoolLoan, TransportError> {
        match self {
            Self::Unix(_) => Err(TransportError::NoPool),
            Self::Shm(link) => link.lend(len, wait),
        }
    }

    /// See [`ShmLink::cancel`].
    pub fn cancel(&self, loan: PoolLoan) {
        if let Self::Shm(link) = self {
            link.cancel(loan);
        }
    }

    /// See [`ShmLink::commit`].
    pub fn commit(&self, loan: &PoolLoan) {
        if let Self::Shm(link) = self {
            link.commit(loan);
        }
    }

    /// See [`ShmLink::sent`].
    pub fn sent(&self, loan: &PoolLoan) {
        if let Self::Shm(link) = self {
            link.sent(loan);
        }
    }

    /// See [`ShmLink::withdraw`].
    ///
    /// # Errors
    /// `Corrupt`, as [`ShmLink::withdraw`].
    pub fn withdraw(&self, loan: &PoolLoan) -> Result<(), TransportError> {
        match self {
            Self::Unix(_) => Ok(()),
            Self::Shm(link) => link.withdraw(loan),
        }
    }

    /// See [`ShmLink::view`]; a pooled frame on a Unix link breaks the protocol.
    ///
    /// # Errors
    /// `Corrupt`.
    pub fn view(&self, pool_ref: PoolRef, max: u32) -> Result<PoolView, TransportError> {
        match self {
            Self::Unix(_) => Err(TransportError::Corrupt),
            Self::Shm(link) => link.view(pool_ref, max),
        }
    }

    /// See [`ShmLink::send_sealed`].
    ///
    /// # Errors
    /// `NoPool` for a Unix link, else as [`ShmLink::send_sealed`].
    pub fn send_sealed(&self, fd: BorrowedFd<'_>) -> Result<u64, TransportError> {
        match self {
            Self::Unix(_) => Err(TransportError::NoPool),
            Self::Shm(link) => link.send_sealed(fd),
        }
    }

    /// See [`ShmLink::take_sealed`]; a sealed frame on a Unix link breaks the protocol.
    ///
    /// # Errors
    /// `Corrupt`.
    pub fn take_sealed(
        &self,
        sealed: SealedRef,
        max: u32,
    ) -> Result<SealedPayload, TransportError> {
        match self {
            Self::Unix(_) => Err(TransportError::Corrupt),
            Self::Shm(link) => link.take_sealed(sealed, max),
        }
    }

    /// This side's end of the link's feed (see `postbox_shm::FeedEnd`), taken once; `None`
    /// on a Unix link, or once taken.
    pub fn take_feed(&self) -> Option<FeedEnd> {
        match self {
            Self::Unix(_) => None,
            Self::Shm(link) => link.take_feed(),
        }
    }

    /// Writes the peer's wake-up descriptor (see [`ShmLink::signal_peer`]); nothing on a
    /// Unix link.
    pub fn signal_peer(&self) {
        if let Self::Shm(link) = self {
            link.signal_peer();
        }
    }

    /// Empties this side's wake-up socket (see [`ShmLink::drain_wake`]); nothing on a Unix
    /// link.
    pub fn drain_wake(&self) {
        if let Self::Shm(link) = self {
            link.drain_wake();
        }
    }

    /// Gives back a feed end [`take_feed`](Self::take_feed) returned, for a later taker.
    pub fn give_back_feed(&self, end: FeedEnd) {
        if let Self::Shm(link) = self {
            link.give_back_feed(end);
        }
    }

    /// True once the peer is known gone: the link was cut, or (shared memory) its socket hung
    /// up, looked at when `now` or when the last look is older than the check interval.
    ///
    /// # Errors
    /// `Corrupt` when the peer broke the protocol on the socket.
    pub fn peer_gone(&self, now: bool) -> Result<bool, TransportError> {
        match self {
            Self::Unix(link) => Ok(link.is_cut()),
            Self::Shm(link) => Ok(link.is_cut() || link.peer_gone(now)?),
        }
    }

    /// True for a shared-memory link.
    #[must_use]
    pub fn is_shared_memory(&self) -> bool {
        matches!(self, Self::Shm(_))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_frames::header;
    use crate::LinkShape;

    #[test]
    fn frames_to_a_full_shared_memory_link_count_the_ones_written_whole() {
        // A 512-byte stream holds two frames of 200-byte bodies, not three.
        let (client, server) = ShmLinkParts::pair(LinkShape::new(512, 1 << 20)).unwrap();
        let client = Link::Shm(Box::new(ShmLink::open(client, LinkSide::Client).unwrap()));
        let server = Link::Shm(Box::new(ShmLink::open(server, LinkSide::Server).unwrap()));
        let mut frames = Vec::new();
        let mut ends = Vec::new();
        for i in 0..3u8 {
            let body = [i; 200];
            frames.extend_from_slice(&header(body.len()).encode(&body));
            frames.extend_from_slice(&body);
            ends.push(frames.len());
        }
        let failure = client.write_frames(&frames, &ends, Wait::NonBlocking).unwrap_err();
        assert_eq!(failure, WriteFramesError { written: 2, error: TransportError::WouldBlock });
        let mut decoder = FrameDecoder::new(1 << 20);
        let mut bodies = Vec::new();
        while bodies.len() < 2 {
            server.read_into(&mut decoder, Wait::NonBlocking).unwrap();
            while let Some(frame) = decoder.poll_frame().unwrap() {
                bodies.push(frame.body[0]);
            }
        }
        assert_eq!(bodies, [0, 1]);
        assert_eq!(decoder.buffered(), 0, "nothing of the third");
    }
}
