//! A short adaptive spin before sleeping: on a small machine a cross-core wake-up costs tens
//! of microseconds, so looking again for a while pays when the answer comes quickly.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// A spin budget that adapts to how spins end: it doubles after a spin that found what it
/// waited for and halves after one that did not, between a few microseconds and a limit.
/// How often to yield adapts too: a spin that succeeded only after yielding says the peer
/// shares this core (looking without yielding is wasted there), one that succeeded before
/// the first yield says it runs elsewhere. Now and then a spin that yields at every other
/// look tries more looks first (`probe_looks`), so that one met on the same core does not
/// keep yielding once the peer runs elsewhere: each yield costs a system call (370 ns on the
/// VM of docs/benchmarks.md), and a cross-core answer found after it comes that much later.
#[derive(Debug)]
pub struct Spin {
    budget_ns: AtomicU32,
    looks_per_yield: AtomicU32,
    /// Spins that succeeded after yielding, counted to [`PROBE_EVERY`].
    yielding_spins: AtomicU32,
}

impl Spin {
    /// A budget starting in the middle of its range.
    #[must_use]
    pub fn new() -> Self {
        Self {
            budget_ns: AtomicU32::new(nanos(START)),
            looks_per_yield: AtomicU32::new(MAX_LOOKS),
            yielding_spins: AtomicU32::new(0),
        }
    }

    /// Looks at `ready` until it is true or the budget is spent, yielding the CPU every few
    /// looks (a peer on the same core gets to run). True when `ready` came true. The looks
    /// thin out to one per 16 pauses: a peer publishing one message after another
    /// does not pay a cache-line transfer per message.
    pub fn run(&self, ready: impl FnMut() -> bool) -> bool {
        self.run_thinning_to(MAX_PAUSES, ready)
    }

    /// Like [`run`](Self::run), for an answer: a reply to a call, or a request whose caller
    /// waits for this side. The peer writes once, so looks cost it nothing, and they stay
    /// close together (one per 4 pauses): a look every 16 pauses (360 ns on
    /// the VM of docs/benchmarks.md) would find the answer 180 ns late on average.
    pub fn run_for_answer(&self, ready: impl FnMut() -> bool) -> bool {
        self.run_thinning_to(ANSWER_PAUSES, ready)
    }

    fn run_thinning_to(&self, max_pauses: u32, mut ready: impl FnMut() -> bool) -> bool {
        let budget = Duration::from_nanos(u64::from(self.budget_ns.load(Ordering::Relaxed)));
        let per_yield = match self.looks_per_yield.load(Ordering::Relaxed) {
            PROBE => probe_looks(max_pauses),
            looks => looks,
        };
        let started = Instant::now();
        let mut looks = 0u32;
        let mut pauses = 1u32;
        let mut yielded = false;
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
                std::thread::yield_now();
                yielded = true;
            } else {
                // Looks thin out as the spin goes on: each one pulls the peer's index to this
                // core, and a peer publishing one message after another would otherwise pay a
                // cache-line transfer per message.
                for _ in 0..pauses {
                    std::hint::spin_loop();
                }
                pauses = (pauses * 2).min(max_pauses);
            }
        };
        let next = if found { budget * 2 } else { budget / 2 };
        self.budget_ns.store(nanos(next.clamp(MIN, MAX)), Ordering::Relaxed);
        if found {
            let looks_next = if yielded {
                // Counted without a locked instruction: a count lost to a race only delays
                // the next probe.
                let spins = self.yielding_spins.load(Ordering::Relaxed).wrapping_add(1);
                self.yielding_spins.store(spins, Ordering::Relaxed);
                if spins % PROBE_EVERY == 0 {
                    // The next spin, of whichever kind, probes with looks of its own spacing.
                    PROBE
                } else {
                    MIN_LOOKS
                }
            } else {
                (per_yield * 2).min(MAX_LOOKS)
            };
            self.looks_per_yield.store(looks_next, Ordering::Relaxed);
        }
        found
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
/// Most pauses between two looks for an answer.
const ANSWER_PAUSES: u32 = 4;
/// One spin in this many of those that succeeded after yielding tries more looks before its
/// first yield ([`probe_looks`]). On the same core that spin yields later than it could, by
/// about 3 µs, shared out over the spins in between (25 ns each).
const PROBE_EVERY: u32 = 128;
/// `looks_per_yield` of the next spin when it is to probe.
const PROBE: u32 = 0;

/// Looks before the first yield of a probing spin whose looks are `max_pauses` pauses apart
/// at most: about 130 pauses in all (3 µs on the VM of docs/benchmarks.md), enough for an
/// answer from another core (a call takes about 1 µs there, a short method more).
fn probe_looks(max_pauses: u32) -> u32 {
    if max_pauses > ANSWER_PAUSES {
        PROBE_LOOKS_THINNING
    } else {
        PROBE_LOOKS_FOR_ANSWER
    }
}

/// Looks before the first yield of a probing spin for an answer: 123 pauses.
const PROBE_LOOKS_FOR_ANSWER: u32 = 32;
/// Looks before the first yield of a probing thinning spin: 143 pauses.
const PROBE_LOOKS_THINNING: u32 = 12;

#[cfg(test)]
mod tests {
    use super::*;

    /// A `ready` that comes true at its `at`-th look.
    fn ready_at(at: u32) -> impl FnMut() -> bool {
        let mut looks = 0;
        move || {
            looks += 1;
            looks >= at
        }
    }

    /// Spins until a spin finds `ready_at(at)`: a spin whose yield handed the CPU to another
    /// test's thread for longer than its budget gives up, and changes nothing but its budget.
    fn spin_until_found(spin: &Spin, at: u32, for_answer: bool) {
        while !if for_answer { spin.run_for_answer(ready_at(at)) } else { spin.run(ready_at(at)) } {
        }
    }

    /// Puts `spin` in the mode a peer on its core leaves it in, a yield at every other look, and
    /// counts `spins` spins there (of `PROBE_EVERY` that make a probe).
    fn met_on_this_core(spin: &Spin, spins: u32) {
        spin_until_found(spin, MAX_LOOKS + 1, true);
        for _ in 1..spins {
            assert_eq!(spin.looks_per_yield.load(Ordering::Relaxed), MIN_LOOKS);
            // Found at the look after the first yield.
            spin_until_found(spin, MIN_LOOKS + 1, true);
        }
    }

    #[test]
    fn a_peer_answering_from_another_core_takes_a_spin_out_of_yielding_at_every_other_look() {
        let spin = Spin::new();
        met_on_this_core(&spin, PROBE_EVERY - 1);
        assert_eq!(spin.looks_per_yield.load(Ordering::Relaxed), MIN_LOOKS);
        spin_until_found(&spin, MIN_LOOKS + 1, true);
        assert_eq!(spin.looks_per_yield.load(Ordering::Relaxed), PROBE, "no probe planned");
        // The peer now answers from another core, at the third look: the probe finds that
        // before its first yield, and the looks grow back.
        assert!(spin.run_for_answer(ready_at(MIN_LOOKS + 1)));
        assert_eq!(spin.looks_per_yield.load(Ordering::Relaxed), PROBE_LOOKS_FOR_ANSWER * 2);
        assert!(spin.run_for_answer(ready_at(MIN_LOOKS + 1)));
        assert_eq!(spin.looks_per_yield.load(Ordering::Relaxed), MAX_LOOKS);
    }

    #[test]
    fn a_probe_looks_as_long_as_the_spin_that_makes_it_needs() {
        for (thinning, probe) in [(false, PROBE_LOOKS_FOR_ANSWER), (true, PROBE_LOOKS_THINNING)] {
            let spin = Spin::new();
            met_on_this_core(&spin, PROBE_EVERY);
            assert_eq!(spin.looks_per_yield.load(Ordering::Relaxed), PROBE);
            // Found at the probe's last look before its first yield: the looks double.
            assert!(if thinning {
                spin.run(ready_at(probe))
            } else {
                spin.run_for_answer(ready_at(probe))
            });
            assert_eq!(spin.looks_per_yield.load(Ordering::Relaxed), probe * 2);
        }
    }

    #[test]
    fn a_spin_finds_what_is_ready_and_gives_up_on_what_never_is() {
        for answer in [false, true] {
            let spin = Spin::new();
            let mut ready = ready_at(100);
            assert!(if answer { spin.run_for_answer(&mut ready) } else { spin.run(&mut ready) });
            let started = Instant::now();
            assert!(!spin.run(|| false));
            assert!(started.elapsed() >= MIN, "gave up before its smallest budget");
        }
    }
}
