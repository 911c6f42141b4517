//! A seeded SplitMix64 generator shared by the reliable-session tests: small, deterministic,
//! good enough to schedule faults and forge frames.
#![allow(dead_code)] // each test file uses some of it

use std::time::Duration;

/// SplitMix64: small, seedable, good enough to schedule faults.
pub(crate) struct Rng(pub(crate) u64);

impl Rng {
    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    pub(crate) fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    pub(crate) fn chance(&mut self, p: f64) -> bool {
        ((self.next_u64() >> 11) as f64 / (1u64 << 53) as f64) < p
    }

    pub(crate) fn between(&mut self, (low, high): (Duration, Duration)) -> Duration {
        let span = (high - low).as_micros() as u64;
        low + Duration::from_micros(self.below(span + 1))
    }
}
