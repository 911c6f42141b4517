//! Log lines that others can cause (denied requests, refused connections), kept readable under
//! a flood: at most a number of lines a second, then one line counting those left out.

use std::time::{Duration, Instant};

/// A budget of log lines per second for one kind of event.
#[derive(Debug)]
pub(super) struct LogBudget {
    /// What the lines are about, for the line that counts those left out.
    what: &'static str,
    per_second: u32,
    window: Instant,
    logged: u32,
    left_out: u64,
}

impl LogBudget {
    /// A budget of `per_second` lines about `what` (plural, as in "access denials").
    pub(super) fn new(what: &'static str, per_second: u32, now: Instant) -> Self {
        Self { what, per_second, window: now, logged: 0, left_out: 0 }
    }

    /// True when an event at `now` is to be logged. When a second has passed since the window
    /// opened, first logs how many were left out in it (if any) and opens a new one.
    pub(super) fn admit(&mut self, now: Instant) -> bool {
        if now.saturating_duration_since(self.window) >= WINDOW {
            if let Some(count) = self.close_window(now) {
                tracing::warn!(count, "{} not logged (too many)", self.what);
            }
        }
        if self.logged < self.per_second {
            self.logged += 1;
            true
        } else {
            self.left_out += 1;
            false
        }
    }

    /// Opens a new window at `now`; returns how many were left out of the last, if any.
    fn close_window(&mut self, now: Instant) -> Option<u64> {
        let left_out = std::mem::take(&mut self.left_out);
        self.window = now;
        self.logged = 0;
        (left_out > 0).then_some(left_out)
    }
}

/// How long one budget lasts.
const WINDOW: Duration = Duration::from_secs(1);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flood_is_logged_up_to_the_budget_each_second_and_the_rest_counted() {
        let start = Instant::now();
        let mut budget = LogBudget::new("things", 3, start);
        let admitted = (0..10).filter(|_| budget.admit(start)).count();
        assert_eq!(admitted, 3);
        assert_eq!(budget.left_out, 7);
        // Still the same second: nothing more.
        assert!(!budget.admit(start + Duration::from_millis(999)));
        assert_eq!(budget.left_out, 8);
        // A new second: the count is reported and reset, and lines flow again.
        let next = start + Duration::from_secs(1);
        assert!(budget.admit(next));
        assert_eq!((budget.left_out, budget.logged), (0, 1));
        assert_eq!(budget.close_window(next), None, "nothing left out in the new window yet");
    }

    #[test]
    fn a_clock_that_seems_to_go_back_does_not_panic_or_reopen_the_window() {
        let start = Instant::now() + Duration::from_secs(5);
        let mut budget = LogBudget::new("things", 1, start);
        assert!(budget.admit(start));
        assert!(!budget.admit(start - Duration::from_secs(2)));
        assert_eq!(budget.left_out, 1);
    }
}
