//! Settings of a host link: the session's timers and limits plus connection handling.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use postbox_core::reliable::{SessionConfig, SessionId};

/// Settings of a [`HostLink`](super::HostLink).
///
/// The session part bounds everything the peer can make this end wait for: no valid frame for
/// [`SessionConfig::dead_after`] ends the link with `PeerDead` (a connection was up) or
/// `Unreachable` (none was). Both ends should use the same session sizes: over QUIC, for
/// one, a peer that leaves more than this end's `max_unacknowledged_bytes` in half-sent frames
/// loses its connection, and `max_streams` is how many streams it may open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostLinkConfig {
    /// Timers, windows and size limits of the reliable session.
    pub session: SessionConfig,
    /// How long one TCP connect may take (dialing side).
    pub connect_timeout: Duration,
    /// The wait before reconnecting after a link that opened broke; doubled after each attempt
    /// that fails or breaks before the session opens (dialing side).
    pub reconnect_min: Duration,
    /// The longest wait between two connection attempts (dialing side).
    pub reconnect_max: Duration,
    /// A write that moves no byte for this long breaks the connection (the session resends
    /// on the next one); this also bounds how long [`HostLink::close`](super::HostLink::close)
    /// can wait for its close frame to leave.
    pub stall_timeout: Duration,
}

impl Default for HostLinkConfig {
    fn default() -> Self {
        Self {
            session: SessionConfig::default(),
            connect_timeout: Duration::from_secs(2),
            reconnect_min: Duration::from_millis(50),
            reconnect_max: Duration::from_secs(2),
            stall_timeout: Duration::from_secs(2),
        }
    }
}

impl HostLinkConfig {
    /// The configuration with out-of-range values brought into range (socket timeouts must
    /// not be zero; the backoff bounds must be ordered).
    pub(super) fn normalized(mut self) -> Self {
        self.connect_timeout = self.connect_timeout.max(MIN_TIMEOUT);
        self.stall_timeout = self.stall_timeout.max(MIN_TIMEOUT);
        self.reconnect_max = self.reconnect_max.max(self.reconnect_min);
        self
    }

    /// The dial delay after `current`: doubled, within the configured bounds.
    pub(super) fn next_backoff(&self, current: Duration) -> Duration {
        current.saturating_mul(2).clamp(self.reconnect_min, self.reconnect_max)
    }
}

/// A fresh, random session id for a new incarnation of this end.
///
/// The randomness comes from the standard library's randomly keyed hasher, mixed with the time,
/// the process id and a counter, so two incarnations never share an id in practice (a shared
/// id would hide a restart from the peer).
pub(super) fn fresh_session_id() -> SessionId {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    loop {
        let mut hasher = RandomState::new().build_hasher();
        hasher.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
        let since_epoch = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
        hasher.write_u128(since_epoch.as_nanos());
        hasher.write_u32(std::process::id());
        if let Some(id) = SessionId::new(hasher.finish()) {
            return id;
        }
    }
}

/// Socket timeouts of zero mean "none" (or are refused); the shortest accepted instead.
const MIN_TIMEOUT: Duration = Duration::from_millis(1);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_within_bounds_and_ids_differ() {
        let config = HostLinkConfig {
            reconnect_min: Duration::from_millis(10),
            reconnect_max: Duration::from_millis(35),
            ..HostLinkConfig::default()
        };
        let steps: Vec<u128> =
            std::iter::successors(Some(Duration::ZERO), |d| Some(config.next_backoff(*d)))
                .take(5)
                .map(|d| d.as_millis())
                .collect();
        assert_eq!(steps, [0, 10, 20, 35, 35]);
        assert_ne!(fresh_session_id(), fresh_session_id());
        let zero = HostLinkConfig { stall_timeout: Duration::ZERO, ..config }.normalized();
        assert_eq!(zero.stall_timeout, MIN_TIMEOUT);
    }
}
