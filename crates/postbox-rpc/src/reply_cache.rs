//! At-most-once execution: a server remembers the replies of recent calls by caller and call
//! id, so a call retried after its reply was lost (a timeout, a link cut) is answered from here
//! instead of running the method twice.
//!
//! A retry that arrives while the first run is still going waits for it (the server keeps its
//! reply tokens as `W` and answers them all when the run ends). The cache is bounded: past
//! `capacity` finished entries, the oldest are forgotten. A call retried after its entry was
//! forgotten, or after the server restarted, runs again; the docs say so.

use std::collections::{HashMap, VecDeque};

use postbox_core::ProcessId;

/// What to do with an arriving call (with its waiter, when it is not kept).
#[derive(Debug, PartialEq, Eq)]
pub enum Lookup<W> {
    /// First time: run the method, answer `W`, then [`ReplyCache::finish`].
    Run(W),
    /// A retry of a call still running: its waiter was kept and comes back from `finish`.
    /// Past [`MAX_WAITERS`] retries of one call, the oldest waiter is pushed out and
    /// returned here (to be dropped: its caller may retry again).
    Joined(Option<W>),
    /// A retry of a finished call: answer `W` with these reply bytes.
    Replay(W, Vec<u8>),
}

/// Recent replies by (caller, call id), and the retries waiting for calls still running.
#[derive(Debug)]
pub struct ReplyCache<W> {
    entries: HashMap<(ProcessId, u64), Entry<W>>,
    /// Finished entries, oldest first.
    finished: VecDeque<(ProcessId, u64)>,
    capacity: usize,
    /// Bytes of the finished replies held, and the most to hold.
    bytes: usize,
    max_bytes: usize,
}

#[derive(Debug)]
enum Entry<W> {
    Running(Vec<W>),
    Done(Vec<u8>),
}

impl<W> ReplyCache<W> {
    /// A cache of the replies of at most `capacity` finished calls and `max_bytes` bytes of
    /// them (the newest reply is kept even if it alone is larger).
    #[must_use]
    pub fn new(capacity: usize, max_bytes: usize) -> Self {
        Self {
            entries: HashMap::new(),
            finished: VecDeque::new(),
            capacity: capacity.max(1),
            bytes: 0,
            max_bytes,
        }
    }

    /// Looks up call `call_id` from `caller`; a retry of a running call leaves `waiter` here.
    pub fn begin(&mut self, caller: ProcessId, call_id: u64, waiter: W) -> Lookup<W> {
        match self.entries.get_mut(&(caller, call_id)) {
            None => {
                self.entries.insert((caller, call_id), Entry::Running(Vec::new()));
                Lookup::Run(waiter)
            }
            Some(Entry::Running(waiters)) => {
                let pushed_out = (waiters.len() >= MAX_WAITERS).then(|| waiters.remove(0));
                waiters.push(waiter);
                Lookup::Joined(pushed_out)
            }
            Some(Entry::Done(reply)) => Lookup::Replay(waiter, reply.clone()),
        }
    }

    /// Records the reply of a call that ran; returns the retries that waited for it.
    pub fn finish(&mut self, caller: ProcessId, call_id: u64, reply: &[u8]) -> Vec<W> {
        let key = (caller, call_id);
        let waiters = match self.entries.insert(key, Entry::Done(reply.to_vec())) {
            Some(Entry::Running(waiters)) => waiters,
            _ => Vec::new(),
        };
        self.finished.push_back(key);
        self.bytes += reply.len();
        while self.finished.len() > self.capacity
            || (self.bytes > self.max_bytes && self.finished.len() > 1)
        {
            let Some(old) = self.finished.pop_front() else { break };
            if let Some(Entry::Done(reply)) = self.entries.remove(&old) {
                self.bytes -= reply.len();
            }
        }
        waiters
    }

    /// Forgets a call whose method did not run (its deadline had passed, its arguments did not
    /// decode): a retry may run it. Returns the retries that waited for it.
    pub fn abandon(&mut self, caller: ProcessId, call_id: u64) -> Vec<W> {
        match self.entries.remove(&(caller, call_id)) {
            Some(Entry::Running(waiters)) => waiters,
            Some(done @ Entry::Done(_)) => {
                // Not running: put it back as it was.
                self.entries.insert((caller, call_id), done);
                Vec::new()
            }
            None => Vec::new(),
        }
    }

    /// Finished entries held.
    #[must_use]
    pub fn len(&self) -> usize {
        self.finished.len()
    }

    /// True when no finished entry is held.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.finished.is_empty()
    }
}

/// Retries of one running call that wait for its reply at most.
pub const MAX_WAITERS: usize = 16;

#[cfg(test)]
mod tests {
    use super::*;

    fn caller(pid: u32) -> ProcessId {
        ProcessId { pid, generation: 1 }
    }

    #[test]
    fn a_retry_is_replayed_or_joins_the_run_and_never_runs_twice() {
        let mut cache = ReplyCache::new(8, 1 << 20);
        assert_eq!(cache.begin(caller(1), 7, "first"), Lookup::Run("first"));
        assert_eq!(cache.begin(caller(1), 7, "retry while running"), Lookup::Joined(None));
        // The same id from another caller is another call.
        assert_eq!(cache.begin(caller(2), 7, "other"), Lookup::Run("other"));
        assert_eq!(cache.finish(caller(1), 7, b"42"), vec!["retry while running"]);
        assert_eq!(
            cache.begin(caller(1), 7, "late retry"),
            Lookup::Replay("late retry", b"42".to_vec())
        );
        assert_eq!(cache.len(), 1);
    }

    #[test]
    fn a_call_that_did_not_run_is_forgotten_so_that_a_retry_runs_it() {
        let mut cache = ReplyCache::new(8, 1 << 20);
        assert_eq!(cache.begin(caller(1), 5, 'a'), Lookup::Run('a'));
        assert_eq!(cache.begin(caller(1), 5, 'b'), Lookup::Joined(None));
        assert_eq!(cache.abandon(caller(1), 5), vec!['b']);
        assert_eq!(cache.begin(caller(1), 5, 'c'), Lookup::Run('c'));
        cache.finish(caller(1), 5, b"x");
        assert!(cache.abandon(caller(1), 5).is_empty(), "a finished call stays");
        assert_eq!(cache.begin(caller(1), 5, 'd'), Lookup::Replay('d', b"x".to_vec()));
    }

    #[test]
    fn replies_are_bounded_in_bytes_and_retries_of_one_call_in_number() {
        let mut cache = ReplyCache::new(100, 10);
        for id in 1..=4 {
            assert_eq!(cache.begin(caller(1), id, 0), Lookup::Run(0));
            cache.finish(caller(1), id, &[0; 4]);
        }
        assert_eq!(cache.len(), 2, "16 bytes do not fit 10: the oldest went");
        assert_eq!(cache.begin(caller(1), 9, 0), Lookup::Run(0));
        for waiter in 1..=MAX_WAITERS {
            assert_eq!(cache.begin(caller(1), 9, waiter), Lookup::Joined(None));
        }
        assert_eq!(cache.begin(caller(1), 9, 99), Lookup::Joined(Some(1)), "the oldest out");
        let waiters = cache.finish(caller(1), 9, &[0; 100]);
        assert_eq!(waiters.len(), MAX_WAITERS);
        assert_eq!(cache.len(), 1, "a reply larger than the bound is kept alone");
    }

    #[test]
    fn past_its_capacity_the_oldest_replies_are_forgotten() {
        let mut cache = ReplyCache::new(2, 1 << 20);
        for id in 1..=3 {
            assert_eq!(cache.begin(caller(1), id, ()), Lookup::Run(()));
            cache.finish(caller(1), id, &[id as u8]);
        }
        assert_eq!(cache.len(), 2);
        assert_eq!(cache.begin(caller(1), 1, ()), Lookup::Run(()), "forgotten: runs again");
        assert_eq!(cache.begin(caller(1), 3, ()), Lookup::Replay((), vec![3]));
    }
}
