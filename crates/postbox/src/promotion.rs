//! When a receiving thread leaves with an envelope, whether a thread waiting on the same
//! endpoint is woken at once to read the links in its place.
//!
//! The threads of a pool take turns: one reads the links (the leader), the others wait. A
//! leader that handed itself an envelope used to wake a waiting thread every time, so that
//! the links were read while it handled the envelope. A wake-up costs a system call on the
//! leader's way out and, on a small machine, a thread that competes for the CPU with the
//! handler and its caller: with two serving threads, a lone caller's 64 B call took 14 µs
//! instead of 0.7 µs on the VM of docs/benchmarks.md. A thread that comes back sooner than a
//! woken one could start gains nothing from that wake-up.
//!
//! So an endpoint estimates how long its threads stay away with an envelope (from leaving to
//! their next receive), and wakes a waiting thread at once only when that is longer than a
//! wake-up takes ([`PROMPT_AWAY`]). One of the threads waiting behind a leader looks now and
//! then whether the links lost their reader, and takes them over if so (a leader leaving
//! when none keeps the looks wakes one to keep them); the others wait to be woken. It looks
//! every [`MIN_STANDBY`] while leaders keep leaving, so that a handler running long after
//! many short ones delays the requests behind it by about that much at most. The interval
//! doubles, up to [`MAX_STANDBY`], with each look that times out when no leader has left
//! for [`QUIET`] (an idle pool wakes rarely); a leader that leaves after such a quiet spell
//! wakes the thread that keeps the looks, which goes back to the short interval. Calls
//! coming more often than one per [`QUIET`] keep the interval short and wake nobody. The estimate jumps to a
//! long absence at once and decays by an eighth of the difference per shorter one.

use std::cell::Cell;
use std::time::{Duration, Instant};

/// How long an endpoint's threads stay away with an envelope, and how often its waiting
/// threads look.
#[derive(Debug)]
pub(crate) struct Promotion {
    away: Duration,
    standby: Duration,
    /// When a leader last left with an envelope.
    left_at: Option<Instant>,
}

impl Default for Promotion {
    fn default() -> Self {
        Self { away: Duration::ZERO, standby: MIN_STANDBY, left_at: None }
    }
}

/// What a leader leaving with an envelope does for the threads waiting behind it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Promote {
    /// Nothing: it will be back before a woken thread could start, and the waiting threads
    /// look often.
    Later,
    /// Wake one to read the links now: the endpoint's threads stay away long.
    Now,
    /// Wake the thread that keeps the looks: it waits as long as the looks were apart when
    /// it began, which a quiet spell made long; from now on it looks often.
    NowAndLookOften,
}

impl Promotion {
    /// A leader leaves with an envelope while threads wait, `now`.
    pub(crate) fn on_leave(&mut self, now: Instant) -> Promote {
        self.left_at = Some(now);
        if self.standby > MIN_STANDBY {
            self.standby = MIN_STANDBY;
            return Promote::NowAndLookOften;
        }
        if self.away >= PROMPT_AWAY {
            return Promote::Now;
        }
        Promote::Later
    }

    /// A thread came back `away` after it left with an envelope.
    pub(crate) fn on_return(&mut self, away: Duration) {
        self.away = if away >= self.away { away } else { self.away - (self.away - away) / 8 };
    }

    /// For a thread about to wait behind a leader: how long before it looks again.
    pub(crate) fn standby(&self) -> Duration {
        self.standby
    }

    /// A waiting thread's wait ran out, `now`. No leader left for [`QUIET`]: the next looks
    /// come later.
    pub(crate) fn on_look(&mut self, now: Instant) {
        if self.left_at.is_none_or(|at| now.saturating_duration_since(at) >= QUIET) {
            self.standby = (self.standby * 2).min(MAX_STANDBY);
        }
    }
}

/// Notes that this thread leaves endpoint `endpoint` (an address) with an envelope `now`.
pub(crate) fn note_leaving(endpoint: usize, now: Instant) {
    LEFT.set(Some((endpoint, now)));
}

/// How long this thread was away from `endpoint`, if it left it with an envelope last
/// (forgotten once asked).
pub(crate) fn returning(endpoint: usize, now: impl FnOnce() -> Instant) -> Option<Duration> {
    match LEFT.get() {
        Some((left, at)) if left == endpoint => {
            LEFT.set(None);
            Some(now().saturating_duration_since(at))
        }
        _ => None,
    }
}

thread_local! {
    /// The endpoint this thread last left with an envelope while others waited, and when.
    static LEFT: Cell<Option<(usize, Instant)>> = const { Cell::new(None) };
}

/// A wake-up of a waiting thread takes about this long to get it running (tens of
/// microseconds across cores on a small VM): a leader back sooner is not replaced.
pub(crate) const PROMPT_AWAY: Duration = Duration::from_micros(20);

/// How often threads waiting behind a leader look whether the links lost their reader, while
/// leaders keep leaving with envelopes...
pub(crate) const MIN_STANDBY: Duration = Duration::from_millis(1);

/// ... and at most, after a quiet spell.
pub(crate) const MAX_STANDBY: Duration = Duration::from_millis(64);

/// No leader leaving for this long is a quiet spell: the waiting threads' looks thin out.
pub(crate) const QUIET: Duration = Duration::from_millis(8);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_absences_wake_nobody_and_one_long_absence_wakes_at_once_from_then_on() {
        let now = Instant::now();
        let mut promotion = Promotion::default();
        for _ in 0..10 {
            assert_eq!(promotion.on_leave(now), Promote::Later, "threads are expected back soon");
            promotion.on_return(Duration::from_micros(2));
        }
        promotion.on_return(Duration::from_millis(5));
        assert_eq!(promotion.on_leave(now), Promote::Now);
        promotion.on_return(Duration::from_micros(2));
        assert_eq!(
            promotion.on_leave(now),
            Promote::Now,
            "one short absence does not undo a long one"
        );
    }

    #[test]
    fn the_estimate_decays_below_a_wake_up_after_enough_short_absences() {
        let mut promotion = Promotion::default();
        promotion.on_return(Duration::from_millis(1));
        let mut returns = 0;
        while promotion.on_leave(Instant::now()) == Promote::Now {
            promotion.on_return(Duration::from_micros(1));
            returns += 1;
            assert!(returns < 100, "the estimate never decayed");
        }
        // From 1 ms to below 20 µs by an eighth of the difference each: about 30 returns.
        assert!((20..60).contains(&returns), "decayed after {returns}");
    }

    #[test]
    fn waiting_threads_look_rarely_after_a_quiet_spell_and_often_again_once_a_leader_leaves() {
        let start = Instant::now();
        let at = |ms: u64| start + Duration::from_millis(ms);
        let mut promotion = Promotion::default();
        assert_eq!(promotion.standby(), MIN_STANDBY);
        // A leader leaves every 5 ms: the looks stay frequent, and nobody is woken.
        for leave in 0..10 {
            assert_eq!(promotion.on_leave(at(5 * leave)), Promote::Later);
            promotion.on_look(at(5 * leave + 4));
            assert_eq!(promotion.standby(), MIN_STANDBY);
        }
        // A quiet spell: from 8 ms after the last leave, each look doubles the interval.
        promotion.on_look(at(45 + 7));
        assert_eq!(promotion.standby(), MIN_STANDBY);
        let mut now = 45 + 8;
        for _ in 0..10 {
            promotion.on_look(at(now));
            now += promotion.standby().as_millis() as u64;
        }
        assert_eq!(promotion.standby(), MAX_STANDBY);
        // The first leader to leave after it wakes the thread that keeps the looks; they are
        // frequent again, and the next leader wakes nobody.
        assert_eq!(promotion.on_leave(at(now)), Promote::NowAndLookOften);
        assert_eq!(promotion.standby(), MIN_STANDBY);
        assert_eq!(promotion.on_leave(at(now + 1)), Promote::Later);
    }

    #[test]
    fn a_thread_is_away_from_the_endpoint_it_left_only() {
        let start = Instant::now();
        note_leaving(1, start);
        assert_eq!(returning(2, || start), None, "another endpoint");
        let later = start + Duration::from_micros(7);
        assert_eq!(returning(1, || later), Some(Duration::from_micros(7)));
        assert_eq!(returning(1, || later), None, "asked once");
    }
}
