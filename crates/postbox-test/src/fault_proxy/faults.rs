//! What the fault proxy does to the frames it forwards, and when it cuts the connections.

use std::time::Duration;

/// The faults a [`FaultProxy`](super::FaultProxy) injects, per direction and per frame.
///
/// Probabilities are per frame and independent: a frame may be both duplicated and corrupted.
/// A dropped frame suffers nothing else.
#[derive(Debug, Clone, PartialEq)]
pub struct Faults {
    /// Chance that a frame is dropped.
    pub loss: f64,
    /// Chance that a frame is sent twice.
    pub duplication: f64,
    /// Chance that one bit of a frame (header or body, anywhere) is flipped. A flipped header
    /// bit breaks the receiver's byte stream; a flipped body bit costs that frame only.
    pub corruption: f64,
    /// Chance that a frame is held back and sent after the next one. A held frame with no
    /// successor goes out after [`Faults::reorder_hold`].
    pub reordering: f64,
    /// The longest a reordered frame waits for a successor.
    pub reorder_hold: Duration,
    /// Chance that a frame is delayed by a time in [`Faults::delay_range`]. The byte stream
    /// stays in order, so a delayed frame holds up the ones behind it (as on TCP).
    pub delay: f64,
    /// How long a delayed frame waits: between the two bounds.
    pub delay_range: (Duration, Duration),
    /// Cut both connections of every proxied pair after a time between the two bounds, again
    /// and again; `None` cuts only on [`FaultProxy::cut_now`](super::FaultProxy::cut_now).
    pub cut_every: Option<(Duration, Duration)>,
    /// The longest frame body the proxy parses; a longer declared length counts as
    /// unparsable and cuts the connection.
    pub max_frame_body: u32,
}

impl Faults {
    /// No faults: the proxy forwards every frame as it came, and cuts only on demand.
    #[must_use]
    pub fn none() -> Self {
        Self {
            loss: 0.0,
            duplication: 0.0,
            corruption: 0.0,
            reordering: 0.0,
            reorder_hold: Duration::from_millis(20),
            delay: 0.0,
            delay_range: (Duration::ZERO, Duration::ZERO),
            cut_every: None,
            max_frame_body: DEFAULT_MAX_FRAME_BODY,
        }
    }

    /// The faults of tracker issue 7: 5% loss, 2% duplication, 1% corruption, plus 2%
    /// reordering, 5% of frames delayed by 1–20 ms, and a cut every 1–2 s.
    #[must_use]
    pub fn harsh() -> Self {
        Self {
            loss: 0.05,
            duplication: 0.02,
            corruption: 0.01,
            reordering: 0.02,
            delay: 0.05,
            delay_range: (Duration::from_millis(1), Duration::from_millis(20)),
            cut_every: Some((Duration::from_secs(1), Duration::from_secs(2))),
            ..Self::none()
        }
    }
}

impl Default for Faults {
    fn default() -> Self {
        Self::none()
    }
}

/// Far above any host-link configuration in the tests; still bounds what a garbage header
/// could make the proxy buffer.
const DEFAULT_MAX_FRAME_BODY: u32 = 64 << 20;
