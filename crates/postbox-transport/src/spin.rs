//! A short adaptive spin before sleeping: on a small machine a cross-core wake-up costs tens
//! of microseconds, so looking again for a while pays when the answer comes quickly.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// A spin budget that adapts to how spins end: it doubles after a spin that found what it
/// waited for and halves after one that did not, between a few microseconds and a limit.
///
/// How often to yield adapts too, to where the peer runs. A spin that found what it waited for
/// right after a yield that gave the CPU to another thread says the peer shares this core:
/// looking without yielding is wasted there, so the spin yields at every other look. One that
/// found it before yielding, or after a yield that gave the CPU to nobody, says the peer runs
/// elsewhere: each yield is then only a system call (0.4–1 µs on the VM of
/// docs/benchmarks.md) that delays the answer, so the spin looks for longer first.
///
/// A yield tells what it did by how long it took: one that gave the CPU up for a while took
/// more than twice the shortest yield seen (an exchange with a peer on the core is two
/// context switches, 3–5 µs against 0.6–1 µs for an empty yield on that VM). Without that
/// test, a peer on another core that was merely slow once (a pause between batches of calls)
/// put the spin into yielding at every other look, and every call after paid for a yield.
/// The test costs a clock read per yield.
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
    /// looks (a peer on the same core gets to run). True when `ready` came true. The looks
    /// thin out to one per 16 pauses: a peer publishing one message after another
    /// does not pay a cache-line transfer per message.
    pub fn run(&self, ready: impl FnMut() -> bool) -> bool {
        self.run_thinning_to(MAX_PAUSES, ready, yield_cpu)
    }

    /// Like [`run`](Self::run), for an answer: a reply to a call, or a request whose caller
    /// waits for this side. The peer writes once, so looks cost it nothing, and they stay
    /// close together (one per 4 pauses): a look every 16 pauses (360 ns on
    /// the VM of docs/benchmarks.md) would find the answer 180 ns late on average.
    pub fn run_for_answer(&self, ready: impl FnMut() -> bool) -> bool {
        self.run_thinning_to(ANSWER_PAUSES, ready, yield_cpu)
    }

    /// The spin, with `yield_now` to give the CPU up, the clock read just before given (true
    /// when another thread ran meanwhile).
    fn run_thinning_to(
        &self,
        max_pauses: u32,
        mut ready: impl FnMut() -> bool,
        mut yield_now: impl FnMut(Instant) -> bool,
    ) -> bool {
        let budget = Duration::from_nanos(u64::from(self.budget_ns.load(Ordering::Relaxed)));
        let per_yield = self.looks_per_yield.load(Ordering::Relaxed).max(1);
        let started = Instant::now();
        let mut looks = 0u32;
        let mut pauses = 1u32;
        let mut yielded = false;
        let mut handed_over = false;
        let found = loop {
            if ready() {
                break true;
            }
            looks += 1;
            if looks % per_yield == 0 {
                // At least one yield, whatever the budget: a peer on this core can only
                // answer once it gets the CPU.
                let now = Instant::now();
                if yielded && now.duration_since(started) >= budget {
                    break false;
                }
                // Only the last yield counts: an answer from a peer on this core comes right
                // after the yield that let it run.
                handed_over = yield_now(now);
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
            let looks_next = match (yielded, handed_over) {
                // The peer answered while this thread had given it the CPU: it shares the core.
                (true, true) => MIN_LOOKS,
                // Found while looking, or after a yield that only cost its system call: the
                // peer runs elsewhere.
                (false, _) => (per_yield * 2).min(MAX_LOOKS),
                (true, false) => MAX_LOOKS,
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

/// Gives the CPU up (the clock read `before`); true when another thread ran meanwhile, as far
/// as the yield's length tells: more than twice the shortest yield this process has seen
/// (500 ns at most), which is what a yield costs when nobody else wants the CPU.
fn yield_cpu(before: Instant) -> bool {
    std::thread::yield_now();
    judged(nanos(before.elapsed()), &EMPTY_YIELD_NS)
}

/// True when a yield that `took` ns handed the CPU over: it took more than twice `shortest`,
/// the shortest yield seen, which it updates.
fn judged(took: u32, shortest: &AtomicU32) -> bool {
    let empty = shortest.fetch_min(took.max(1), Ordering::Relaxed);
    took > empty.saturating_mul(2)
}

fn nanos(d: Duration) -> u32 {
    u32::try_from(d.as_nanos()).unwrap_or(u32::MAX)
}

/// The shortest yield seen in this process (ns). It starts at 500 ns, so that the yields of a
/// spin whose peer has shared the core from the start (microseconds each) count as handing
/// the CPU over before any empty one was timed. It never rises: on a host where an empty
/// yield takes more than twice that (1 µs), every yield counts as handing the CPU over, and
/// the spin yields at every other look after any yield, as it did before yields were timed.
static EMPTY_YIELD_NS: AtomicU32 = AtomicU32::new(500);

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

    /// A spin for an answer found at look `at`, each yield reported as `handed_over`; returns
    /// the yields it made.
    fn spin_found_at(spin: &Spin, at: u32, handed_over: bool) -> u32 {
        spin_found_after(spin, at, |_| handed_over)
    }

    /// A spin for an answer found at look `at`, its `n`-th yield reported as `handed_over(n)`;
    /// returns the yields it made. The budget is unbounded: a test thread preempted for long
    /// still finds its answer.
    fn spin_found_after(spin: &Spin, at: u32, mut handed_over: impl FnMut(u32) -> bool) -> u32 {
        spin.budget_ns.store(u32::MAX, Ordering::Relaxed);
        let mut yields = 0;
        let found = spin.run_thinning_to(ANSWER_PAUSES, ready_at(at), |_| {
            yields += 1;
            handed_over(yields)
        });
        assert!(found, "an unbounded budget ran out within {at} looks");
        yields
    }

    fn looks_per_yield(spin: &Spin) -> u32 {
        spin.looks_per_yield.load(Ordering::Relaxed)
    }

    #[test]
    fn a_peer_that_answers_while_given_the_cpu_makes_the_spin_yield_at_every_other_look() {
        let spin = Spin::new();
        assert_eq!(spin_found_at(&spin, MAX_LOOKS + 1, true), 1);
        assert_eq!(looks_per_yield(&spin), MIN_LOOKS);
        // The next spins yield at every other look, for as long as the peer answers so.
        assert_eq!(spin_found_at(&spin, 2 * MIN_LOOKS + 1, true), 2);
        assert_eq!(looks_per_yield(&spin), MIN_LOOKS);
    }

    #[test]
    fn a_peer_answering_late_from_another_core_does_not_make_the_spin_yield_early() {
        let spin = Spin::new();
        // Slow once, found after a yield that gave the CPU to nobody: the looks stay long.
        assert_eq!(spin_found_at(&spin, MAX_LOOKS + 1, false), 1);
        assert_eq!(looks_per_yield(&spin), MAX_LOOKS);
        // Met on this core, then answering from another one: the first spin whose yields were
        // empty gives the looks back at once.
        spin_found_at(&spin, MAX_LOOKS + 1, true);
        assert_eq!(looks_per_yield(&spin), MIN_LOOKS);
        assert_eq!(spin_found_at(&spin, 5 * MIN_LOOKS + 1, false), 5);
        assert_eq!(looks_per_yield(&spin), MAX_LOOKS);
    }

    #[test]
    fn only_the_yield_right_before_the_answer_tells_where_the_peer_runs() {
        let spin = Spin::new();
        spin_found_at(&spin, MAX_LOOKS + 1, true);
        assert_eq!(looks_per_yield(&spin), MIN_LOOKS);
        // Another thread took the CPU at the first yield, not at the last one.
        assert_eq!(spin_found_after(&spin, 3 * MIN_LOOKS + 1, |n| n == 1), 3);
        assert_eq!(looks_per_yield(&spin), MAX_LOOKS);
        // And the other way round.
        assert_eq!(spin_found_after(&spin, 2 * MAX_LOOKS + 1, |n| n == 2), 2);
        assert_eq!(looks_per_yield(&spin), MIN_LOOKS);
    }

    #[test]
    fn an_answer_found_before_the_first_yield_doubles_the_looks_between_yields() {
        let spin = Spin::new();
        spin_found_at(&spin, MAX_LOOKS + 1, true);
        for expected in [2 * MIN_LOOKS, 4 * MIN_LOOKS, 8 * MIN_LOOKS] {
            // Found at the last look before the next yield.
            assert_eq!(spin_found_at(&spin, looks_per_yield(&spin) - 1, true), 0);
            assert_eq!(looks_per_yield(&spin), expected);
        }
    }

    #[test]
    fn a_yield_gave_the_cpu_up_when_it_took_more_than_twice_the_shortest() {
        let shortest = AtomicU32::new(500);
        assert!(!judged(700, &shortest), "an empty yield a little longer than the first guess");
        assert_eq!(shortest.load(Ordering::Relaxed), 500);
        assert!(judged(1001, &shortest));
        assert!(!judged(300, &shortest), "the shortest yield yet");
        assert_eq!(shortest.load(Ordering::Relaxed), 300);
        assert!(judged(601, &shortest));
        assert!(!judged(600, &shortest));
        assert!(judged(u32::MAX, &shortest));
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
