//! Why a host link could not give an event, and why a connection under it (TCP or QUIC) was
//! lost or refused.

use std::io;

use postbox_core::wire::DecodeError;

/// Failure of [`HostLink::recv`](super::HostLink::recv): the link finished and every event,
/// its final `Ended` included, was already received.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the host link finished and every event was received")]
pub struct RecvError;

/// Failure of [`HostLink::try_recv`](super::HostLink::try_recv).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TryRecvError {
    /// No event is queued now.
    #[error("no event is queued")]
    Empty,
    /// The link finished and every event was received.
    #[error("the host link finished and every event was received")]
    Disconnected,
}

/// Failure of [`HostLink::recv_timeout`](super::HostLink::recv_timeout).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RecvTimeoutError {
    /// No event arrived before the timeout.
    #[error("no event arrived before the timeout")]
    Timeout,
    /// The link finished and every event was received.
    #[error("the host link finished and every event was received")]
    Disconnected,
}

/// Why a connection of a host link (TCP or QUIC) was lost or could not be made, for
/// [`HostLinkStats::last_error`](super::HostLinkStats::last_error). The session resends
/// everything on the next connection; only the session's end is final.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LinkError {
    /// Dialing the peer failed.
    #[error("connecting to the peer failed: {0}")]
    Connect(io::ErrorKind),
    /// The peer (or a middlebox) closed the connection.
    #[error("the peer closed the connection")]
    Closed,
    /// A frame header arrived damaged: the byte stream cannot be resynchronised.
    #[error("damaged frame header, connection reset: {0}")]
    Corrupt(DecodeError),
    /// A write moved no byte for the configured stall timeout.
    #[error("the peer stopped reading; connection reset")]
    Stalled,
    /// A newer connection from the peer replaced this one (listening side).
    #[error("replaced by a newer connection")]
    Replaced,
    /// Authentication failed: a TLS handshake or the pre-shared key exchange. The connection
    /// was closed before any session frame was read from it.
    #[error("authentication failed: {0}")]
    Authentication(AuthenticationError),
    /// The TLS layer failed after the handshake: a damaged or forged record, or a protocol
    /// error.
    #[error("TLS failure, connection reset")]
    TlsProtocol,
    /// A TLS handshake or pre-shared key exchange did not finish within the connect timeout.
    #[error("the handshake did not finish in time")]
    HandshakeTimeout,
    /// Nothing arrived from the peer for the QUIC connection's idle timeout (a broken path, a
    /// partition); the connection was dropped and is made again.
    #[error("the QUIC connection went silent; dropped")]
    TimedOut,
    /// The QUIC layer failed: the peer (or this end) broke the QUIC protocol, or stopped a
    /// stream the link needs.
    #[error("QUIC failure, connection closed")]
    QuicProtocol,
    /// A message went unacknowledged on a connection that otherwise worked, long past any
    /// retransmission timeout (QUIC, which does not resend on timeout: the peer lost it
    /// without breaking the connection); the connection was dropped and the session resends
    /// on the next.
    #[error("a message went unacknowledged; connection reset")]
    Unacknowledged,
    /// The peer left more bytes in partly sent frames, over all of a QUIC connection's
    /// streams, than it can have unacknowledged (see `SessionConfig::max_unacknowledged_bytes`);
    /// the connection was dropped rather than buffer more.
    #[error("the peer sent too many partial frames; connection closed")]
    Flooded,
    /// The operating system refused.
    #[error("{operation} failed: {kind}")]
    Os {
        /// What the host link was doing.
        operation: &'static str,
        /// The kind of the OS error.
        kind: io::ErrorKind,
    },
}

/// Why a connection's authentication failed, in [`LinkError::Authentication`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AuthenticationError {
    /// The peer's certificate is not signed by a configured CA.
    #[error("the peer's certificate is not signed by a trusted CA")]
    UntrustedCertificate,
    /// The peer's certificate does not name the expected host.
    #[error("the peer's certificate is not valid for its host name")]
    WrongName,
    /// The peer's certificate has expired or is not valid yet.
    #[error("the peer's certificate is expired or not yet valid")]
    OutsideValidity,
    /// The peer's certificate is invalid otherwise (bad signature, encoding or usage).
    #[error("the peer's certificate is invalid")]
    BadCertificate,
    /// The peer presented no certificate.
    #[error("the peer presented no certificate")]
    NoCertificate,
    /// The peer refused this end: its certificate, or its proof of the pre-shared key.
    #[error("the peer refused this host's credentials")]
    RefusedByPeer,
    /// The peer did not prove knowledge of the pre-shared key.
    #[error("the peer does not know the pre-shared key")]
    WrongKey,
    /// The peer does not speak the configured handshake (plain TCP, another mode, or garbage).
    #[error("the peer does not speak the configured handshake")]
    UnexpectedGreeting,
    /// The TLS handshake failed for another reason (no common parameters, a bad message).
    #[error("TLS handshake failed")]
    Handshake,
}

impl LinkError {
    /// Converts an OS error raised while doing `operation`.
    pub(super) fn io(operation: &'static str, error: &io::Error) -> Self {
        match error.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => Self::Stalled,
            io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe
            | io::ErrorKind::UnexpectedEof
            | io::ErrorKind::NotConnected => Self::Closed,
            kind => Self::Os { operation, kind },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn os_errors_map_to_what_happened_to_the_connection() {
        let stalled = io::Error::from(io::ErrorKind::WouldBlock);
        assert_eq!(LinkError::io("write", &stalled), LinkError::Stalled);
        let reset = io::Error::from(io::ErrorKind::ConnectionReset);
        assert_eq!(LinkError::io("read", &reset), LinkError::Closed);
        let other = io::Error::from(io::ErrorKind::PermissionDenied);
        assert_eq!(
            LinkError::io("read", &other),
            LinkError::Os { operation: "read", kind: io::ErrorKind::PermissionDenied }
        );
        assert_eq!(LinkError::Stalled.to_string(), "the peer stopped reading; connection reset");
    }
}
