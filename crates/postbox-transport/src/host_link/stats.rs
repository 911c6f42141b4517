//! Counters of a host link: the session's, plus what happened to the TCP connections and to
//! the UDP datagrams beside them.

use std::net::SocketAddr;

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
    /// Connections lost after they were made: reset, closed, damaged, stalled, given up by
    /// the session (a message unacknowledged far too long), or (QUIC) silent past the idle
    /// timeout, a stream stopped by the peer, or flooded with partial frames.
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
    /// UDP datagrams written (TCP links with a UDP path: best-effort datagrams and the
    /// dialer's probes). Over QUIC and without a UDP path, datagrams are not counted here.
    pub datagrams_sent: u64,
    /// Datagrams not sent. Over UDP: no key or peer address yet (a listener learns the dialer's
    /// from its first authentic datagram), or the socket refused. Over QUIC: larger than the
    /// connection's datagrams, or its datagram buffer full. They are not kept.
    pub datagrams_unsent: u64,
    /// UDP datagrams taken: a probe naming both sessions, or a datagram frame between them
    /// that the session took (its duplicate window may still drop it:
    /// `session.datagrams_dropped`).
    pub datagrams_received: u64,
    /// UDP datagrams refused: longer than any the peer sends, malformed, plain on a sealed
    /// link (or sealed on a plain one), not authentic under the current connection's key (or
    /// opened under a key replaced meanwhile), numbered as one taken before (a replay) or
    /// older than the window of numbers, damaged (`session.corrupt_frames`), naming other
    /// sessions (`session.stale_frames`), or any frame but a datagram
    /// (`session.malformed_frames`).
    pub datagrams_rejected: u64,
    /// Of `datagrams_rejected`, those numbered as a datagram taken before or older than the
    /// window of numbers (`udp_window.rs`): copies made on the way, or replays.
    pub datagrams_replayed: u64,
    /// Where this end sends its UDP datagrams now: the dialer's configured address, or the
    /// address the listener learned; `None` without a UDP path or before the listener heard
    /// the dialer.
    pub datagram_peer: Option<SocketAddr>,
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
    pub(super) datagrams_sent: u64,
    pub(super) datagrams_unsent: u64,
    pub(super) datagrams_received: u64,
    pub(super) datagrams_rejected: u64,
    pub(super) datagrams_replayed: u64,
}

impl ConnectionCounters {
    pub(super) fn snapshot(
        &self,
        session: SessionStats,
        queued_events: usize,
        datagram_peer: Option<SocketAddr>,
    ) -> HostLinkStats {
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
            datagrams_sent: self.datagrams_sent,
            datagrams_unsent: self.datagrams_unsent,
            datagrams_received: self.datagrams_received,
            datagrams_rejected: self.datagrams_rejected,
            datagrams_replayed: self.datagrams_replayed,
            datagram_peer,
        }
    }
}
