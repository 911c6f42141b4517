//! A short adaptive spin before sleeping: on a small machine a cross-core wake-up costs tens
//! of microseconds, so looking again for a while pays when the answer comes quickly.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// A spin budget that adapts to how spins end: it doubles after a spin that found what it
/// waited for and halves after one that did not, between a few microseconds and a limit.
/// How often to yield adapts too: a yield that handed the CPU to another thread (it took
/// longer than a yield with nothing else to run) says the peer may share this core, where
/// looking without yielding is wasted; a spin that succeeded without such a yield says the
/// peer runs elsewhere, where each yield only delays the look that finds the answer.
#[derive(Debug)]
pub struct Spin {
    budget_ns: AtomicU32,
    looks_per_yield: AtomicU32,
}

impl Spin {
    /// A budget starting in the middle of its range.
    #[must_use]
    pub fn new() -> Self {
        Self { budget_ns: AtomicU32::new(nanos(START)), looks_per_yield: AtomicU32::new(MAX_LOOKS) }
    }

    /// Looks at `ready` until it is true or the budget is spent, yielding the CPU every few
    /// looks (a peer on the same core gets to run). True when `ready` came true.
    pub fn run(&self, mut ready: impl FnMut() -> bool) -> bool {
        let budget = Duration::from_nanos(u64::from(self.budget_ns.load(Ordering::Relaxed)));
        let per_yield = self.looks_per_yield.load(Ordering::Relaxed).max(1);
        let started = Instant::now();
        let mut looks = 0u32;
        let mut pauses = 1u32;
        let mut yielded = false;
        let mut switched = false;
        let found = loop {
            if ready() {
                break true;
            }
            looks += 1;
            if looks % per_yield == 0 {
                // At least one yield, whatever the budget: a peer on this core can only
                // answer once it gets the CPU.
                if yielded && started.elapsed() >= budget {
                    break false;
                }
                let before = Instant::now();
                std::thread::yield_now();
                switched |= before.elapsed() >= SWITCHED;
                yielded = true;
            } else {
                // Looks thin out as the spin goes on: each one pulls the peer's index to this
                // core, and a peer publishing one message after another would otherwise pay a
                // cache-line transfer per message.
                for _ in 0..pauses {
                    std::hint::spin_loop();
                }
                pauses = (pauses * 2).min(MAX_PAUSES);
            }
        };
        let next = if found { budget * 2 } else { budget / 2 };
        self.budget_ns.store(nanos(next.clamp(MIN, MAX)), Ordering::Relaxed);
        if found {
            self.looks_per_yield
                .store(looks_per_yield_after(per_yield, switched), Ordering::Relaxed);
        }
        found
    }
}

/// The looks between yields after a spin that found what it waited for, `per_yield` before:
/// few after a yield that `switched` to another thread (the peer may share this core and
/// answers only once it has the CPU), twice as many otherwise. A spin that yielded without
/// switching grows them too: the peer answered from another core, and before this rule a
/// spin that had once met a peer on its core kept yielding at every other look ever after.
fn looks_per_yield_after(per_yield: u32, switched: bool) -> u32 {
    if switched {
        MIN_LOOKS
    } else {
        (per_yield * 2).min(MAX_LOOKS)
    }
}

impl Default for Spin {
    fn default() -> Self {
        Self::new()
    }
}

fn nanos(d: Duration) -> u32 {
    u32::try_from(d.as_nanos()).unwrap_or(u32::MAX)
}

const START: Duration = Duration::from_micros(20);
const MIN: Duration = Duration::from_micros(1);
const MAX: Duration = Duration::from_micros(50);
/// Looks between two yields of the CPU: few when the peer shares the core, many when not.
const MIN_LOOKS: u32 = 2;
const MAX_LOOKS: u32 = 64;
/// Most pauses between two looks (a pause is tens of nanoseconds).
const MAX_PAUSES: u32 = 16;
/// A yield that took this long handed the CPU to another thread: one that finds nothing else
/// to run returns in a few hundred nanoseconds (370 ns on the 2-vCPU VM of
/// docs/benchmarks.md), a switch to another process and back takes microseconds (2.3 µs).
const SWITCHED: Duration = Duration::from_micros(1);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn looks_between_yields_grow_back_after_yields_that_switched_to_nobody() {
        // A peer on another core, met after one on this core: the looks grow back.
        let mut per_yield = MIN_LOOKS;
        for _ in 0..8 {
            per_yield = looks_per_yield_after(per_yield, false);
        }
        assert_eq!(per_yield, MAX_LOOKS);
        // A yield that handed the CPU over: few looks between yields at once.
        assert_eq!(looks_per_yield_after(MAX_LOOKS, true), MIN_LOOKS);
    }

    #[test]
    fn a_spin_finds_what_is_ready_and_gives_up_on_what_never_is() {
        let spin = Spin::new();
        let mut looks = 0;
        assert!(spin.run(|| {
            looks += 1;
            looks == 100
        }));
        let started = Instant::now();
        assert!(!spin.run(|| false));
        assert!(started.elapsed() >= MIN, "gave up before its smallest budget");
    }
}
