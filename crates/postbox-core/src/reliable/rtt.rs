//! Round-trip time estimate and retransmission timeout, after RFC 6298.

use std::time::Duration;

/// Smoothed RTT, its variation, and the retransmission timeout derived from them.
///
/// RFC 6298 §2: the first sample `R` sets `srtt = R`, `rttvar = R/2`; later ones update
/// `rttvar = 3/4 rttvar + 1/4 |srtt - R|` and `srtt = 7/8 srtt + 1/8 R`; then
/// `rto = srtt + max(granularity, 4 rttvar)`, clamped to `[min_rto, max_rto]`. Samples come only
/// from messages sent once (Karn's rule, enforced by the caller) and from heartbeats.
#[derive(Debug, Clone)]
pub(crate) struct RttEstimator {
    smoothed: Option<Duration>,
    variation: Duration,
    latest: Option<Duration>,
    rto: Duration,
    min_rto: Duration,
    max_rto: Duration,
}

impl RttEstimator {
    /// An estimator with no samples: the timeout is `initial_rto` until the first one.
    pub(crate) fn new(initial_rto: Duration, min_rto: Duration, max_rto: Duration) -> Self {
        let max_rto = max_rto.max(min_rto);
        Self {
            smoothed: None,
            variation: Duration::ZERO,
            latest: None,
            rto: initial_rto.clamp(min_rto, max_rto),
            min_rto,
            max_rto,
        }
    }

    /// Folds in one round-trip sample.
    pub(crate) fn handle_sample(&mut self, rtt: Duration) {
        self.latest = Some(rtt);
        match self.smoothed {
            None => {
                self.smoothed = Some(rtt);
                self.variation = rtt / 2;
            }
            Some(srtt) => {
                self.variation = (self.variation * 3 + srtt.abs_diff(rtt)) / 4;
                self.smoothed = Some((srtt * 7 + rtt) / 8);
            }
        }
        let srtt = self.smoothed.unwrap_or(rtt);
        self.rto = (srtt + (self.variation * 4).max(GRANULARITY)).clamp(self.min_rto, self.max_rto);
    }

    /// The retransmission timeout for a message sent `backoff` times without an answer since
    /// the last reset: doubled each time, never above `max_rto`.
    pub(crate) fn backed_off(&self, backoff: u32) -> Duration {
        let factor = 1u32 << backoff.min(MAX_BACKOFF_EXPONENT);
        self.rto.saturating_mul(factor).min(self.max_rto)
    }

    /// The current timeout before any backoff.
    pub(crate) fn rto(&self) -> Duration {
        self.rto
    }

    /// The smoothed round-trip time, once there is a sample.
    pub(crate) fn smoothed(&self) -> Option<Duration> {
        self.smoothed
    }

    /// The most recent sample.
    pub(crate) fn latest(&self) -> Option<Duration> {
        self.latest
    }
}

/// The clock granularity term `G` of RFC 6298.
const GRANULARITY: Duration = Duration::from_millis(1);
/// Backoff stops doubling after this many steps (`max_rto` caps it long before anyway).
const MAX_BACKOFF_EXPONENT: u32 = 16;

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn the_first_sample_sets_srtt_and_half_of_it_as_variation() {
        let mut rtt = RttEstimator::new(ms(1000), ms(10), ms(60_000));
        assert_eq!(rtt.rto(), ms(1000));
        rtt.handle_sample(ms(100));
        assert_eq!(rtt.smoothed(), Some(ms(100)));
        // 100 + 4 × 50
        assert_eq!(rtt.rto(), ms(300));
        rtt.handle_sample(ms(100));
        // rttvar = 3/4 × 50 = 37.5; rto = 100 + 150
        assert_eq!(rtt.rto(), ms(250));
    }

    #[test]
    fn the_timeout_stays_within_its_bounds_and_backoff_doubles_up_to_the_cap() {
        let mut rtt = RttEstimator::new(ms(1000), ms(200), ms(5000));
        rtt.handle_sample(ms(1));
        assert_eq!(rtt.rto(), ms(200));
        assert_eq!(rtt.backed_off(1), ms(400));
        assert_eq!(rtt.backed_off(3), ms(1600));
        assert_eq!(rtt.backed_off(u32::MAX), ms(5000));
        rtt.handle_sample(ms(60_000));
        assert_eq!(rtt.rto(), ms(5000));
    }
}
