//! The error types of the transport edge.

use std::io;

/// Failure of a transport operation, converted once from the operating system's error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TransportError {
    /// The peer closed its end (or died): nothing more can be sent or received.
    #[error("the peer closed the connection")]
    Closed,
    /// The operation could not proceed without blocking and was asked not to block.
    #[error("the operation would block")]
    WouldBlock,
    /// The deadline passed first.
    #[error("the deadline passed")]
    TimedOut,
    /// A frame was started but could not be finished before the deadline; the link was shut
    /// down (the receiver sees it close, never a partial frame).
    #[error("the peer stopped reading in the middle of a frame; link shut down")]
    Stalled,
    /// The peer broke the shared-memory protocol (impossible indices, bytes where none
    /// belong, a segment of the wrong shape): the link must go.
    #[error("the peer broke the shared-memory protocol")]
    Corrupt,
    /// Zero-copy payloads need a shared-memory link; this one is a Unix link.
    #[error("this link has no shared payload pool (it is not a shared-memory link)")]
    NoPool,
    /// A control packet was larger than the buffer that received it.
    #[error("control message larger than {0} bytes")]
    Oversized(usize),
    /// The operating system refused.
    #[error("{operation} failed: {kind}")]
    Os {
        /// What postbox was doing.
        operation: &'static str,
        /// The kind of the OS error.
        kind: io::ErrorKind,
    },
}

/// Failure of [`Link::write_frames`](crate::Link::write_frames) and
/// [`UnixLink::write_frames`](crate::UnixLink::write_frames): the frames before
/// `written` went out whole, the others not at all (or, with `Stalled`, the one after them
/// in part, and the link was shut down).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{error} after {written} whole frames")]
pub struct WriteFramesError {
    /// How many frames, from the first, were written whole.
    pub written: usize,
    /// Why the others were not.
    pub error: TransportError,
}

impl TransportError {
    /// Converts an OS error raised while doing `operation`.
    #[must_use]
    pub fn os(operation: &'static str, errno: rustix::io::Errno) -> Self {
        match errno {
            rustix::io::Errno::PIPE | rustix::io::Errno::CONNRESET => Self::Closed,
            rustix::io::Errno::AGAIN => Self::WouldBlock,
            other => Self::Os { operation, kind: io::Error::from(other).kind() },
        }
    }
}
