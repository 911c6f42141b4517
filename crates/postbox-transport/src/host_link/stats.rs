//! Counters of a host link: the session's, plus what happened to the TCP connections.

use postbox_core::reliable::SessionStats;

use super::error::LinkError;

/// A snapshot from [`HostLink::stats`](super::HostLink::stats).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct HostLinkStats {
    /// The session's counters, RTT and link state.
    pub session: SessionStats,
    /// Connections (TCP or QUIC) made (dialing side) or accepted (listening side), and
    /// secured when the link uses TLS or a pre-shared key.
    pub connections: u64,
    /// Dial attempts that failed.
    pub connect_failures: u64,
    /// Connections lost after they were made: reset, closed, damaged, stalled or (QUIC)
    /// silent past the idle timeout.
    pub connections_lost: u64,
    /// Connections closed during their TLS handshake or pre-shared key exchange: refused,
    /// failed or timed out (never counted in `connections`).
    pub handshake_failures: u64,
    /// Session bytes written to connections (before encryption, with TLS).
    pub bytes_sent: u64,
    /// Session bytes read from connections (after decryption, with TLS).
    pub bytes_received: u64,
    /// Why the last connection was lost or the last dial failed.
    pub last_error: Option<LinkError>,
    /// Events waiting for [`HostLink::recv`](super::HostLink::recv).
    pub queued_events: usize,
}

/// The connection counters kept next to the session.
#[derive(Debug, Clone, Default)]
pub(super) struct ConnectionCounters {
    pub(super) connections: u64,
    pub(super) connect_failures: u64,
    pub(super) connections_lost: u64,
    pub(super) handshake_failures: u64,
    pub(super) bytes_sent: u64,
    pub(super) bytes_received: u64,
    pub(super) last_error: Option<LinkError>,
}

impl ConnectionCounters {
    pub(super) fn snapshot(&self, session: SessionStats, queued_events: usize) -> HostLinkStats {
        HostLinkStats {
            session,
            connections: self.connections,
            connect_failures: self.connect_failures,
            connections_lost: self.connections_lost,
            handshake_failures: self.handshake_failures,
            bytes_sent: self.bytes_sent,
            bytes_received: self.bytes_received,
            last_error: self.last_error,
            queued_events,
        }
    }
}
