//! Settings of a reliable session: timers, windows and size limits.

use std::time::Duration;

use super::body::MAX_ACK_RANGES;

/// Settings of a [`Session`](super::Session). Both ends of a link should use the same sizes:
/// a frame above the receiver's limits breaks the link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionConfig {
    /// How often an open link sends a heartbeat.
    pub heartbeat_interval: Duration,
    /// After this many heartbeat intervals without any valid frame from the peer, the session
    /// ends with [`PeerDead`](super::SessionError::PeerDead) (link open) or
    /// [`Unreachable`](super::SessionError::Unreachable) (no open link). At least 1.
    pub missed_heartbeats: u32,
    /// The retransmission timeout before the first RTT sample (RFC 6298 says 1 s).
    pub initial_rto: Duration,
    /// The lowest retransmission timeout.
    pub min_rto: Duration,
    /// The highest retransmission timeout, backoff included.
    pub max_rto: Duration,
    /// Reliable messages per stream accepted and not yet acknowledged; also how far ahead of
    /// its delivered point a receiver holds messages. At least 1.
    pub stream_window: usize,
    /// Payload bytes accepted and not yet acknowledged, over all streams.
    pub max_unacknowledged_bytes: usize,
    /// Payload bytes a receiver holds beyond gaps, over all streams; further out-of-order
    /// messages are dropped (and retransmitted by the peer later).
    pub max_held_bytes: usize,
    /// The largest reliable payload.
    pub max_payload: u32,
    /// The largest datagram payload (keep the frame within one UDP datagram: 1200 bytes plus
    /// 44 bytes of header and stream fields fit IPv6's minimum MTU).
    pub max_datagram_payload: u32,
    /// Datagrams queued for the link; more are refused with `Full`.
    pub datagram_queue: usize,
    /// Streams per direction (and per kind). A peer's frames for further streams are dropped.
    /// At most `u16::MAX`.
    pub max_streams: u32,
}

impl Default for SessionConfig {
    fn default() -> Self {
        Self {
            heartbeat_interval: Duration::from_secs(1),
            missed_heartbeats: 3,
            initial_rto: Duration::from_secs(1),
            min_rto: Duration::from_millis(200),
            max_rto: Duration::from_secs(2),
            stream_window: 256,
            max_unacknowledged_bytes: 64 << 20,
            max_held_bytes: 64 << 20,
            max_payload: 1 << 20,
            max_datagram_payload: 1200,
            datagram_queue: 256,
            max_streams: 4096,
        }
    }
}

impl SessionConfig {
    /// How long the peer may stay silent: `heartbeat_interval × missed_heartbeats`.
    #[must_use]
    pub fn dead_after(&self) -> Duration {
        self.heartbeat_interval.saturating_mul(self.missed_heartbeats.max(1))
    }

    /// The longest frame body this configuration sends or accepts.
    #[must_use]
    pub fn max_frame_body(&self) -> u32 {
        let data = self.max_payload.max(self.max_datagram_payload).saturating_add(DATA_FIELDS);
        let hello = 3 + 12 * self.max_streams.min(u32::from(u16::MAX));
        let ack = 13 + 16 * MAX_ACK_RANGES as u32;
        data.max(hello).max(ack)
    }

    /// The configuration with out-of-range values brought into range.
    pub(crate) fn normalized(mut self) -> Self {
        self.missed_heartbeats = self.missed_heartbeats.max(1);
        self.stream_window = self.stream_window.max(1);
        self.datagram_queue = self.datagram_queue.max(1);
        self.max_streams = self.max_streams.clamp(1, u32::from(u16::MAX));
        self.heartbeat_interval = self.heartbeat_interval.max(Duration::from_millis(1));
        self.min_rto = self.min_rto.max(Duration::from_millis(1));
        self.max_rto = self.max_rto.max(self.min_rto);
        self
    }
}

/// Stream id and message id in front of a payload.
const DATA_FIELDS: u32 = 12;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dead_after_is_interval_times_misses_and_limits_cover_every_frame() {
        let config = SessionConfig::default();
        assert_eq!(config.dead_after(), Duration::from_secs(3));
        assert_eq!(config.max_frame_body(), (1 << 20) + 12);
        let small = SessionConfig { max_payload: 10, max_streams: 100, ..config };
        assert_eq!(small.max_frame_body(), 1200 + 12);
        let zero = SessionConfig { missed_heartbeats: 0, stream_window: 0, ..small }.normalized();
        assert_eq!((zero.missed_heartbeats, zero.stream_window), (1, 1));
    }
}
