//! Sealed payloads beside a shared-memory link's frames: the memory object of each one travels
//! on the link's socket (`SCM_RIGHTS`) with its 8-byte sequence number, just before the frame
//! that announces it travels in the stream. The receiver matches the frame's sequence number
//! with the descriptors it took off the socket; a descriptor whose frame never came (the
//! sender's write of it failed) is skipped and closed.

use std::collections::VecDeque;
use std::io::{IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{BorrowedFd, OwnedFd};

use rustix::event::{poll, PollFd, PollFlags};
use rustix::net::{
    recvmsg, sendmsg, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags,
};

use crate::TransportError;

/// Descriptors taken off the socket, waiting for their frames.
#[derive(Debug, Default)]
pub(crate) struct PendingSealed {
    queue: VecDeque<(u64, OwnedFd)>,
}

/// What the socket said when drained.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SocketState {
    /// Open (and drained).
    Open,
    /// The peer hung up.
    HungUp,
}

/// Sends `fd` with sequence number `seq` (never blocks: the socket carries nothing else, so
/// a full socket means the peer holds too many unclaimed payloads).
pub(crate) fn send_sealed(
    socket: BorrowedFd<'_>,
    seq: u64,
    fd: BorrowedFd<'_>,
) -> Result<(), TransportError> {
    let fds = [fd];
    let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    // The buffer was sized for one descriptor, so this push always fits.
    let pushed = control.push(SendAncillaryMessage::ScmRights(&fds));
    debug_assert!(pushed, "control buffer sized for one descriptor");
    let bytes = seq.to_le_bytes();
    let flags = SendFlags::NOSIGNAL | SendFlags::DONTWAIT;
    loop {
        match sendmsg(socket, &[IoSlice::new(&bytes)], &mut control, flags) {
            Ok(n) if n == bytes.len() => return Ok(()),
            // A stream socket may take part of 8 bytes only when nearly full: the peer is not
            // claiming its payloads; the link cannot go on.
            Ok(_) => return Err(TransportError::Stalled),
            Err(rustix::io::Errno::INTR) => {}
            Err(rustix::io::Errno::AGAIN) => return Err(TransportError::WouldBlock),
            Err(errno) => return Err(TransportError::os("send sealed payload", errno)),
        }
    }
}

impl PendingSealed {
    /// Takes the sealed payload descriptors waiting on `socket`, up to [`MAX_PENDING`] held
    /// (the rest wait in the socket until frames claim these); reports a hang-up.
    ///
    /// # Errors
    /// `Corrupt` when the socket carries anything but (sequence number, descriptor) pairs.
    pub(crate) fn drain(&mut self, socket: BorrowedFd<'_>) -> Result<SocketState, TransportError> {
        loop {
            if self.queue.len() >= MAX_PENDING {
                return Ok(SocketState::Open);
            }
            let mut bytes = [0u8; 8];
            let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(2))];
            let mut control = RecvAncillaryBuffer::new(&mut space);
            let flags = RecvFlags::DONTWAIT | RecvFlags::CMSG_CLOEXEC | RecvFlags::WAITALL;
            let result = recvmsg(socket, &mut [IoSliceMut::new(&mut bytes)], &mut control, flags);
            let mut fds: Vec<OwnedFd> = Vec::new();
            for message in control.drain() {
                if let RecvAncillaryMessage::ScmRights(received) = message {
                    fds.extend(received);
                }
            }
            match result {
                Ok(msg) if msg.bytes == 0 && fds.is_empty() => return Ok(SocketState::HungUp),
                Ok(msg) if msg.bytes == 8 && fds.len() == 1 => {
                    let fd = fds.pop().expect("one descriptor");
                    self.queue.push_back((u64::from_le_bytes(bytes), fd));
                }
                Ok(_) => return Err(TransportError::Corrupt),
                Err(rustix::io::Errno::INTR) => {}
                Err(rustix::io::Errno::AGAIN) => return Ok(SocketState::Open),
                Err(_) => return Ok(SocketState::HungUp),
            }
        }
    }

    /// Takes more descriptors off the socket, if any wait there and there is room; false when
    /// none came.
    ///
    /// # Errors
    /// As [`drain`](Self::drain).
    pub(crate) fn drain_more(&mut self, socket: BorrowedFd<'_>) -> Result<bool, TransportError> {
        let before = self.queue.len();
        self.drain(socket)?;
        Ok(self.queue.len() > before)
    }

    /// True when the queue is full (more descriptors may wait in the socket).
    pub(crate) fn is_full(&self) -> bool {
        self.queue.len() >= MAX_PENDING
    }

    /// The descriptor of sealed payload `seq`, skipping (and closing) older ones whose frames
    /// never came; `None` when it is not here.
    pub(crate) fn take(&mut self, seq: u64) -> Option<OwnedFd> {
        while let Some((front, _)) = self.queue.front() {
            if *front < seq {
                self.queue.pop_front();
                continue;
            }
            if *front == seq {
                return self.queue.pop_front().map(|(_, fd)| fd);
            }
            return None;
        }
        None
    }

    /// True when the peer hung up, even with descriptors still unread in the socket.
    pub(crate) fn peer_hung_up(socket: BorrowedFd<'_>) -> bool {
        let mut fds = [PollFd::from_borrowed_fd(socket, PollFlags::RDHUP)];
        let zero = rustix::time::Timespec { tv_sec: 0, tv_nsec: 0 };
        match poll(&mut fds, Some(&zero)) {
            Ok(_) => {
                fds[0].revents().intersects(PollFlags::RDHUP | PollFlags::HUP | PollFlags::ERR)
            }
            Err(_) => false,
        }
    }
}

/// Sealed payload descriptors a receiver takes off the socket before their frames arrive;
/// more wait in the socket (whose buffer bounds what a sender can push ahead).
pub(crate) const MAX_PENDING: usize = 64;
