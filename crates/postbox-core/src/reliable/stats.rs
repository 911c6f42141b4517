//! Counters and link state of a session, for `postbox ls` and diagnostics.

use std::time::Duration;

use super::ids::SessionId;

/// Where a session's link is, named after what it awaits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum LinkState {
    /// No transport link: waiting for the driver to connect.
    Down,
    /// A transport link is up; waiting for the peer's hello.
    ExpectHello,
    /// Hellos exchanged: messages flow.
    Open,
    /// The session is over.
    Ended,
}

/// A snapshot of a session's counters, from [`Session::stats`](super::Session::stats).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct SessionStats {
    /// The link's state.
    pub state: LinkState,
    /// The peer's session, once heard from.
    pub peer: Option<SessionId>,
    /// Smoothed round-trip time (RFC 6298), once measured.
    pub smoothed_rtt: Option<Duration>,
    /// The latest round-trip sample.
    pub latest_rtt: Option<Duration>,
    /// The current retransmission timeout, before backoff.
    pub rto: Duration,
    /// Links opened (the first one included): reconnects are this minus one.
    pub links_opened: u64,
    /// Frames written by `poll_transmit`.
    pub frames_sent: u64,
    /// Valid frames from the peer.
    pub frames_received: u64,
    /// Reliable messages sent again (timeout or resume).
    pub retransmissions: u64,
    /// Reliable messages received again and dropped.
    pub duplicates_dropped: u64,
    /// Datagrams dropped as duplicates or too old for the deduplication window.
    pub datagrams_dropped: u64,
    /// Frames whose checksum failed: dropped, never delivered.
    pub corrupt_frames: u64,
    /// Frames with valid checksums but an invalid or unknown body, or that break the protocol
    /// (an ack for a message never sent, a stream beyond the limit): dropped.
    pub malformed_frames: u64,
    /// Frames from an earlier incarnation of either end, or not addressed to this session.
    pub stale_frames: u64,
    /// Reliable messages accepted and not yet acknowledged.
    pub unacknowledged: u64,
    /// Links given up because a message stayed unacknowledged on them far past any
    /// retransmission timeout while they otherwise worked (only without
    /// [`retransmit_on_timeout`](super::SessionConfig::retransmit_on_timeout); see
    /// [`Session::handle_timeout`](super::Session::handle_timeout)).
    pub stalled_links: u64,
}
