//! Latency samples and their percentiles, for the demo's table.

use std::time::Duration;

/// Sorted round-trip samples.
#[derive(Debug)]
pub(crate) struct Samples(Vec<Duration>);

impl Samples {
    pub(crate) fn new(mut samples: Vec<Duration>) -> Self {
        samples.sort_unstable();
        Self(samples)
    }

    /// The `p`-th percentile (0–100), nearest rank.
    pub(crate) fn percentile(&self, p: f64) -> Duration {
        if self.0.is_empty() {
            return Duration::ZERO;
        }
        let rank = ((p / 100.0) * self.0.len() as f64).ceil() as usize;
        self.0[rank.clamp(1, self.0.len()) - 1]
    }
}

/// Nanoseconds on the system-wide monotonic clock: comparable between processes.
pub(crate) fn monotonic_ns() -> u64 {
    let now = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    (now.tv_sec as u64).saturating_mul(1_000_000_000).saturating_add(now.tv_nsec as u64)
}

/// Formats a duration in microseconds with one decimal.
pub(crate) fn micros(d: Duration) -> String {
    format!("{:.1} µs", d.as_secs_f64() * 1e6)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_use_the_nearest_rank() {
        let s = Samples::new((1..=100).rev().map(Duration::from_micros).collect());
        assert_eq!(s.percentile(50.0), Duration::from_micros(50));
        assert_eq!(s.percentile(99.0), Duration::from_micros(99));
        assert_eq!(s.percentile(100.0), Duration::from_micros(100));
        assert_eq!(Samples::new(Vec::new()).percentile(50.0), Duration::ZERO);
    }
}
