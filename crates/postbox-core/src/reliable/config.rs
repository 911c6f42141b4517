//! Settings of a reliable session: timers, windows and size limits.

use std::time::Duration;

use super::body::{HELLO_ENTRY_LEN, HELLO_FIXED_LEN, MAX_ACK_RANGES};
use super::frame::HEADER_LEN;

/// Settings of a [`Session`](super::Session). Both ends of a link should use the same sizes:
/// a frame above the receiver's limits breaks the link.
///
/// The default suits a byte stream (TCP, TLS, a QUIC stream); [`datagram`](Self::datagram)
/// keeps every frame within one UDP datagram.
///
/// Out-of-range values are brought into range when a session is created (see
/// [`Session::config`](super::Session::config)): counts of zero become one, timers lie between
/// 1 ms and [`MAX_TIMER`](Self::MAX_TIMER), and payload limits shrink to fit `max_frame_len`.
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
    /// How long the acknowledgement of a message that arrived in order may wait: it goes out
    /// with the next frames this end writes anyway (a call's reply carries its request's), or
    /// covers the next arrivals too. After [`ACK_EVERY`](Self::ACK_EVERY) arrivals, and for a
    /// duplicate or an arrival out of order, it goes at once. Zero acknowledges every arrival
    /// at once. At most a quarter of `min_rto`: the sender's RTT samples include the delay.
    pub ack_delay: Duration,
    /// Reliable messages per stream accepted and not yet acknowledged; also how far ahead of
    /// its delivered point a receiver holds messages. At least 1.
    pub stream_window: usize,
    /// Payload bytes accepted and not yet acknowledged, over all streams.
    pub max_unacknowledged_bytes: usize,
    /// Bytes a receiver holds beyond gaps, over all streams, each message counted as its
    /// payload plus 64 bytes of bookkeeping (so empty payloads are not free); further
    /// out-of-order messages are dropped (and retransmitted by the peer later).
    pub max_held_bytes: usize,
    /// The largest reliable payload (reliable messages are not segmented: each travels in one
    /// frame, so this is also bounded by `max_frame_len`).
    pub max_payload: u32,
    /// The largest datagram payload (also bounded by `max_frame_len`).
    pub max_datagram_payload: u32,
    /// The longest frame, header included, this session writes: the transport's unit. A byte
    /// stream has none (`u32::MAX`); over UDP it is what one datagram carries (see
    /// [`datagram`](Self::datagram)). Payloads that would not fit are refused with `TooLarge`,
    /// and a hello that would not fit is split into several frames. At least
    /// [`MIN_FRAME_LEN`](Self::MIN_FRAME_LEN).
    pub max_frame_len: u32,
    /// Datagrams queued for the link; more are refused with `Full`.
    pub datagram_queue: usize,
    /// Streams per direction (and per kind). A peer's frames for further streams are dropped.
    /// At most `u16::MAX`.
    pub max_streams: u32,
    /// Whether a message still unacknowledged a retransmission timeout after it went out is
    /// sent again on the same link. Needed where a link can lose or damage frames: UDP, and
    /// TCP (whose checksum misses damage that crc32c catches). A driver whose links deliver
    /// every frame of each lane intact, in order, or break (QUIC: reliable streams under
    /// authenticated encryption) turns it off, so that a large message that takes longer than
    /// the timeout to cross is not sent twice. Either way a new link resends everything
    /// unacknowledged, and silence ends the session. Without it, a message that stays
    /// unacknowledged for [`dead_after`](Self::dead_after) on a link that otherwise works (a
    /// peer that lost it without breaking the link) makes the session give the link up, so
    /// that the next one resends it (see
    /// [`Session::handle_timeout`](super::Session::handle_timeout)).
    pub retransmit_on_timeout: bool,
}

impl Default for SessionConfig {
    fn default() -> Self {
        Self {
            heartbeat_interval: Duration::from_secs(1),
            missed_heartbeats: 3,
            initial_rto: Duration::from_secs(1),
            min_rto: Duration::from_millis(200),
            max_rto: Duration::from_secs(2),
            ack_delay: Duration::from_millis(1),
            stream_window: 256,
            max_unacknowledged_bytes: 64 << 20,
            max_held_bytes: 64 << 20,
            max_payload: 1 << 20,
            max_datagram_payload: 1200,
            datagram_queue: 256,
            max_streams: 4096,
            max_frame_len: u32::MAX,
            retransmit_on_timeout: true,
        }
    }
}

impl SessionConfig {
    /// The smallest accepted `max_frame_len`: an ack with every held range fits.
    pub const MIN_FRAME_LEN: u32 = 512;
    /// Arrivals in order after which their acknowledgement goes at once, delay or not.
    pub const ACK_EVERY: u32 = 16;
    /// The longest accepted timer setting; longer ones are shortened to it.
    pub const MAX_TIMER: Duration = Duration::from_secs(24 * 60 * 60);
    /// What a data or datagram frame adds to its payload: the frame header and the stream and
    /// message ids.
    pub const DATA_FRAME_OVERHEAD: u32 = FRAME_OVERHEAD;
    /// The frame limit of [`datagram`](Self::datagram): IPv6's minimum MTU (1280) less the
    /// IPv6 and UDP headers (40 + 8), so that a frame never needs IP fragmentation.
    pub const DATAGRAM_FRAME_LEN: u32 = 1232;

    /// The default settings with every frame within one UDP datagram of
    /// [`DATAGRAM_FRAME_LEN`](Self::DATAGRAM_FRAME_LEN) bytes: payloads up to 1188 bytes (the
    /// frame less its 32-byte header and 12 bytes of stream and id), hellos split as needed.
    #[must_use]
    pub fn datagram() -> Self {
        let payload = Self::DATAGRAM_FRAME_LEN - FRAME_OVERHEAD;
        Self {
            max_frame_len: Self::DATAGRAM_FRAME_LEN,
            max_payload: payload,
            max_datagram_payload: payload,
            ..Self::default()
        }
    }

    /// How long the peer may stay silent: `heartbeat_interval × missed_heartbeats`.
    #[must_use]
    pub fn dead_after(&self) -> Duration {
        self.heartbeat_interval.saturating_mul(self.missed_heartbeats.max(1))
    }

    /// The longest frame body this configuration sends or accepts.
    #[must_use]
    pub fn max_frame_body(&self) -> u32 {
        let data = self.max_payload.max(self.max_datagram_payload).saturating_add(DATA_FIELDS);
        let streams = self.max_streams.min(u32::from(u16::MAX));
        let hello = HELLO_FIXED_LEN as u32 + HELLO_ENTRY_LEN as u32 * streams;
        let ack = ACK_MAX_BODY;
        let body = data.max(hello).max(ack);
        body.min(self.max_frame_len.max(Self::MIN_FRAME_LEN) - HEADER_LEN as u32)
    }

    /// The configuration with out-of-range values brought into range.
    pub(crate) fn normalized(mut self) -> Self {
        let timer = |d: Duration| d.clamp(Duration::from_millis(1), Self::MAX_TIMER);
        self.missed_heartbeats = self.missed_heartbeats.max(1);
        self.stream_window = self.stream_window.max(1);
        self.datagram_queue = self.datagram_queue.max(1);
        self.max_streams = self.max_streams.clamp(1, u32::from(u16::MAX));
        self.heartbeat_interval = timer(self.heartbeat_interval);
        self.initial_rto = timer(self.initial_rto);
        self.min_rto = timer(self.min_rto);
        self.max_rto = timer(self.max_rto).max(self.min_rto);
        self.ack_delay = self.ack_delay.min(self.min_rto / 4);
        self.max_frame_len = self.max_frame_len.max(Self::MIN_FRAME_LEN);
        let fits = self.max_frame_len - FRAME_OVERHEAD;
        self.max_payload = self.max_payload.min(fits);
        self.max_datagram_payload = self.max_datagram_payload.min(fits);
        self
    }
}

/// Stream id and message id in front of a payload.
const DATA_FIELDS: u32 = 12;
/// Header and stream fields of a data frame: the frame length less its payload.
const FRAME_OVERHEAD: u32 = HEADER_LEN as u32 + DATA_FIELDS;
/// The body of an ack with every held range.
const ACK_MAX_BODY: u32 = 13 + 16 * MAX_ACK_RANGES as u32;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dead_after_is_interval_times_misses_and_limits_cover_every_frame() {
        let config = SessionConfig::default();
        assert_eq!(config.dead_after(), Duration::from_secs(3));
        assert_eq!(config.max_frame_body(), (1 << 20) + 12);
        let small = SessionConfig { max_payload: 10, max_streams: 100, ..config };
        // A hello naming all 100 streams is the longest: 19 + 12 × 100.
        assert_eq!(small.max_frame_body(), 19 + 12 * 100);
        let zero = SessionConfig { missed_heartbeats: 0, stream_window: 0, ..small }.normalized();
        assert_eq!((zero.missed_heartbeats, zero.stream_window), (1, 1));
    }

    #[test]
    fn the_datagram_preset_keeps_every_frame_within_one_datagram() {
        let config = SessionConfig::datagram();
        assert_eq!(config.max_frame_body() + HEADER_LEN as u32, 1232);
        assert_eq!(config.max_payload + FRAME_OVERHEAD, 1232);
        assert_eq!(config.clone().normalized(), config);
        // A frame limit shrinks the payload limits to fit.
        let tiny = SessionConfig { max_frame_len: 0, ..SessionConfig::default() }.normalized();
        assert_eq!(tiny.max_frame_len, SessionConfig::MIN_FRAME_LEN);
        assert_eq!(tiny.max_payload, SessionConfig::MIN_FRAME_LEN - FRAME_OVERHEAD);
        assert!(ACK_MAX_BODY + (HEADER_LEN as u32) <= SessionConfig::MIN_FRAME_LEN);
    }

    #[test]
    fn timers_are_clamped_at_both_ends() {
        let huge = SessionConfig {
            heartbeat_interval: Duration::MAX,
            initial_rto: Duration::MAX,
            min_rto: Duration::MAX,
            max_rto: Duration::ZERO,
            ..SessionConfig::default()
        }
        .normalized();
        assert_eq!(huge.heartbeat_interval, SessionConfig::MAX_TIMER);
        assert_eq!(
            (huge.min_rto, huge.max_rto),
            (SessionConfig::MAX_TIMER, SessionConfig::MAX_TIMER)
        );
        assert_eq!(huge.dead_after(), SessionConfig::MAX_TIMER * 3);
    }
}
