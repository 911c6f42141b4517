//! Waiting on a condition variable until an optional deadline, tolerant of poisoning.

use std::sync::{Condvar, MutexGuard, PoisonError};
use std::time::Instant;

/// Waits on `condvar` until notified or `deadline` (never, if `None`) passes. Spurious
/// wake-ups are the caller's to handle (every caller re-checks its condition in a loop).
pub(crate) fn wait_until<'a, T>(
    condvar: &Condvar,
    guard: MutexGuard<'a, T>,
    deadline: Option<Instant>,
) -> MutexGuard<'a, T> {
    match deadline {
        None => condvar.wait(guard).unwrap_or_else(PoisonError::into_inner),
        Some(at) => {
            let left = at.saturating_duration_since(Instant::now());
            condvar.wait_timeout(guard, left).map_or_else(|e| e.into_inner().0, |(g, _)| g)
        }
    }
}
