//! Why a node could not attach to a remote broker, and why a tunnel ended.

use std::io;

use postbox_core::wire::DecodeError;

use crate::host_link::AuthenticationError;

/// Failure of attaching over TCP: of [`dial`](super::dial) on the node's side, or of one
/// attempt the broker's [`AttachListener`](super::AttachListener) refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AttachError {
    /// The broker's address does not resolve to any socket address.
    #[error("the broker's address does not resolve")]
    Unresolved,
    /// Connecting to the broker failed (refused, unreachable, timed out).
    #[error("connecting to the broker failed: {0}")]
    Connect(io::ErrorKind),
    /// Authentication failed: the pre-shared key exchange or the TLS handshake. Nothing of
    /// the control protocol was read from, or sent over, the connection.
    #[error("authentication failed: {0}")]
    Authentication(AuthenticationError),
    /// The authentication did not finish within the handshake timeout.
    #[error("the handshake did not finish in time")]
    HandshakeTimeout,
    /// The other end closed the connection during the handshake.
    #[error("the connection closed during the handshake")]
    Closed,
    /// The broker has as many handshakes in progress as it allows; try again.
    #[error("the broker is busy with other handshakes")]
    Busy,
    /// The broker serves as many tunnels as it allows
    /// ([`TunnelConfig::max_tunnels`](super::TunnelConfig::max_tunnels)).
    #[error("the broker serves as many remote nodes as it allows")]
    TooManyTunnels,
    /// The operating system refused.
    #[error("{operation} failed: {kind}")]
    Os {
        /// What postbox was doing.
        operation: &'static str,
        /// The kind of the OS error.
        kind: io::ErrorKind,
    },
}

/// Why a tunnel ended other than by both ends closing everything.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TunnelError {
    /// The connection broke (reset, or closed before the other end was done).
    #[error("the connection broke")]
    Broken,
    /// Nothing arrived from the other end for the configured bound (a partition, or a host
    /// that is gone).
    #[error("the other end fell silent")]
    Silent,
    /// The other end stopped reading: a write made no progress for the configured bound.
    #[error("the other end stopped reading")]
    Stalled,
    /// Bytes that are not tunnel frames arrived (the connection was dropped at once).
    #[error("malformed tunnel frame: {0}")]
    Malformed(DecodeError),
    /// Well-formed frames that break the tunnel's rules (data beyond the credit given, a
    /// channel that was never opened, descriptors passed by a node).
    #[error("tunnel protocol violated: {0}")]
    Protocol(&'static str),
    /// The tunnel was to relay more links at once than
    /// [`TunnelConfig::max_channels`](super::TunnelConfig::max_channels).
    #[error("more links than a tunnel may relay")]
    TooManyChannels,
    /// More bytes waited for this end's local readers than
    /// [`TunnelConfig::inbound_budget`](super::TunnelConfig::inbound_budget) allows.
    #[error("more bytes in waiting than the tunnel's budget")]
    OverBudget,
    /// The TLS layer failed (a damaged or forged record).
    #[error("TLS failure")]
    Tls,
    /// The operating system refused.
    #[error("{operation} failed: {kind}")]
    Os {
        /// What the tunnel was doing.
        operation: &'static str,
        /// The kind of the OS error.
        kind: io::ErrorKind,
    },
}

impl AttachError {
    /// An I/O failure during the handshake: a timeout is the handshake's.
    pub(super) fn handshake_io(error: &io::Error) -> Self {
        match error.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => Self::HandshakeTimeout,
            io::ErrorKind::UnexpectedEof
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe => Self::Closed,
            kind => Self::Os { operation: "handshake", kind },
        }
    }
}

impl TunnelError {
    /// An I/O failure of the connection.
    pub(super) fn io(operation: &'static str, error: &io::Error) -> Self {
        match error.kind() {
            io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe
            | io::ErrorKind::UnexpectedEof
            | io::ErrorKind::NotConnected => Self::Broken,
            kind => Self::Os { operation, kind },
        }
    }
}
