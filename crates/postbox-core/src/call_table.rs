//! Calls in flight on one link: correlation ids, deadlines, and replies waiting to be taken.

use std::collections::HashMap;
use std::time::Instant;

/// The correlation id of one call on one link.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CallId(pub u64);

/// Calls awaiting their replies (sans-IO: time comes in as `now`).
///
/// `T` is whatever completes a call (a reply frame, or an error).
#[derive(Debug)]
pub struct CallTable<T> {
    next: u64,
    calls: HashMap<CallId, Slot<T>>,
    late_replies: u64,
}

#[derive(Debug)]
enum Slot<T> {
    Waiting { deadline: Option<Instant> },
    Done(T),
}

/// Failure of [`CallTable::handle_reply`]: no call is waiting for that id (it timed out, was
/// cancelled, or never existed). The reply is handed back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownCall<T>(pub T);

impl<T> Default for CallTable<T> {
    fn default() -> Self {
        Self { next: 1, calls: HashMap::new(), late_replies: 0 }
    }
}

impl<T> CallTable<T> {
    /// An empty table; the first id is 1 (0 means "no call" on the wire).
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Starts a call that expires at `deadline` (never, if `None`) and returns its id.
    pub fn begin(&mut self, deadline: Option<Instant>) -> CallId {
        let id = CallId(self.next);
        self.next = self.next.wrapping_add(1).max(1);
        self.calls.insert(id, Slot::Waiting { deadline });
        id
    }

    /// Records the outcome of call `id`.
    ///
    /// # Errors
    /// [`UnknownCall`] (with the value) when no call is waiting for `id`; the table counts it
    /// as a late reply.
    pub fn handle_reply(&mut self, id: CallId, value: T) -> Result<(), UnknownCall<T>> {
        match self.calls.get_mut(&id) {
            Some(slot @ Slot::Waiting { .. }) => {
                *slot = Slot::Done(value);
                Ok(())
            }
            _ => {
                self.late_replies += 1;
                Err(UnknownCall(value))
            }
        }
    }

    /// Completes every waiting call with `make()` (for example when the peer died).
    pub fn handle_all(&mut self, mut make: impl FnMut() -> T) {
        for slot in self.calls.values_mut() {
            if matches!(slot, Slot::Waiting { .. }) {
                *slot = Slot::Done(make());
            }
        }
    }

    /// Removes the waiting calls whose deadline is at or before `now` and returns their ids.
    pub fn handle_timeout(&mut self, now: Instant) -> Vec<CallId> {
        let expired: Vec<CallId> = self
            .calls
            .iter()
            .filter_map(|(id, slot)| match slot {
                Slot::Waiting { deadline: Some(d) } if *d <= now => Some(*id),
                _ => None,
            })
            .collect();
        for id in &expired {
            self.calls.remove(id);
        }
        expired
    }

    /// The earliest deadline among waiting calls: call [`handle_timeout`](Self::handle_timeout)
    /// then.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.calls
            .values()
            .filter_map(|slot| match slot {
                Slot::Waiting { deadline } => *deadline,
                Slot::Done(_) => None,
            })
            .min()
    }

    /// Takes the outcome of call `id` if it has one; the call is then forgotten.
    pub fn take(&mut self, id: CallId) -> Option<T> {
        match self.calls.get(&id) {
            Some(Slot::Done(_)) => match self.calls.remove(&id) {
                Some(Slot::Done(value)) => Some(value),
                _ => None,
            },
            _ => None,
        }
    }

    /// Forgets call `id` (its caller gave up); a reply arriving later counts as late.
    pub fn cancel(&mut self, id: CallId) {
        self.calls.remove(&id);
    }

    /// Calls started and not yet taken or cancelled.
    #[must_use]
    pub fn in_flight(&self) -> usize {
        self.calls.len()
    }

    /// Replies that arrived for no waiting call.
    #[must_use]
    pub fn late_replies(&self) -> u64 {
        self.late_replies
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn replies_are_matched_by_id_in_any_order() {
        let mut table = CallTable::new();
        let (a, b) = (table.begin(None), table.begin(None));
        assert_ne!(a, b);
        table.handle_reply(b, "b").unwrap();
        assert_eq!(table.take(a), None);
        table.handle_reply(a, "a").unwrap();
        assert_eq!(table.take(a), Some("a"));
        assert_eq!(table.take(b), Some("b"));
        assert_eq!(table.in_flight(), 0);
    }

    #[test]
    fn expired_calls_are_removed_and_their_late_replies_counted() {
        let now = Instant::now();
        let mut table = CallTable::new();
        let short = table.begin(Some(now + Duration::from_millis(10)));
        let long = table.begin(Some(now + Duration::from_secs(10)));
        assert_eq!(table.poll_timeout(), Some(now + Duration::from_millis(10)));
        assert_eq!(table.handle_timeout(now + Duration::from_millis(10)), vec![short]);
        assert_eq!(table.handle_reply(short, 1), Err(UnknownCall(1)));
        assert_eq!(table.late_replies(), 1);
        assert_eq!(table.poll_timeout(), Some(now + Duration::from_secs(10)));
        table.handle_all(|| 7);
        assert_eq!(table.take(long), Some(7));
    }
}
