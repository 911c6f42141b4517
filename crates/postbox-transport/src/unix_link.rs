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

use postbox_core::FrameDecoder;
use rustix::net::{
    recv, sendmsg, shutdown, socketpair, AddressFamily, RecvFlags, SendAncillaryBuffer, SendFlags,
    Shutdown, SocketFlags, SocketType,
};

use crate::wait::{wait_readable, wait_writable};
use crate::{TransportError, Wait};

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
                        _ => wait_writable(self.fd.as_fd(), wait)?,
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
                Err(errno) => return Err(TransportError::os("write frame", errno)),
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

/// How long a non-blocking or deadline write may take, at least, to finish a frame it started.
const PARTIAL_FRAME_GRACE: std::time::Duration = std::time::Duration::from_millis(500);

#[cfg(test)]
mod tests {
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

    #[test]
    fn writing_to_a_closed_peer_is_closed_not_sigpipe() {
        let (a, b) = UnixLink::pair().unwrap();
        drop(b);
        let h = header(3).encode(b"abc");
        assert_eq!(a.write_frame(&h, b"abc", Wait::Forever), Err(TransportError::Closed));
    }
}
