//! Cancellation of calls in progress: a caller that stops waiting (it dropped an async call)
//! sends a cancel request with the call's id; the server raises the call's flag, which the
//! method reads (`CallContext::is_cancelled`) to stop early. A cancel that arrives before its
//! call started is remembered (boundedly) and the call is not run at all.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use postbox_core::ProcessId;

/// Flags of the calls running, and cancels that came before their calls.
#[derive(Debug, Default)]
pub struct CancelTable {
    running: HashMap<(ProcessId, u64), Arc<AtomicBool>>,
    early: HashSet<(ProcessId, u64)>,
    early_order: VecDeque<(ProcessId, u64)>,
}

impl CancelTable {
    /// An empty table.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// A call starts: its flag, or `None` when it was cancelled already (do not run it).
    pub fn start(&mut self, caller: ProcessId, call_id: u64) -> Option<Arc<AtomicBool>> {
        if self.early.remove(&(caller, call_id)) {
            // Its place in the order goes too: left there, trimming it later would forget a
            // newer cancel of the same id.
            if let Some(at) = self.early_order.iter().position(|k| *k == (caller, call_id)) {
                self.early_order.remove(at);
            }
            return None;
        }
        let flag = Arc::new(AtomicBool::new(false));
        self.running.insert((caller, call_id), Arc::clone(&flag));
        Some(flag)
    }

    /// A call ended (its flag is forgotten).
    pub fn finish(&mut self, caller: ProcessId, call_id: u64) {
        self.running.remove(&(caller, call_id));
    }

    /// The caller cancelled: raises the flag of the call running, or remembers the cancel
    /// for a call not started yet (the oldest such are forgotten past [`EARLY_CANCELS`]).
    pub fn cancel(&mut self, caller: ProcessId, call_id: u64) {
        if let Some(flag) = self.running.get(&(caller, call_id)) {
            flag.store(true, Ordering::Release);
            return;
        }
        if self.early.insert((caller, call_id)) {
            self.early_order.push_back((caller, call_id));
        }
        while self.early_order.len() > EARLY_CANCELS {
            if let Some(old) = self.early_order.pop_front() {
                self.early.remove(&old);
            }
        }
    }
}

/// Cancels remembered for calls that have not started.
pub const EARLY_CANCELS: usize = 1024;

#[cfg(test)]
mod tests {
    use super::*;

    const ME: ProcessId = ProcessId { pid: 1, generation: 1 };

    #[test]
    fn a_cancel_raises_the_flag_of_the_running_call_only() {
        let mut table = CancelTable::new();
        let seven = table.start(ME, 7).unwrap();
        let eight = table.start(ME, 8).unwrap();
        table.cancel(ME, 7);
        assert!(seven.load(Ordering::Acquire));
        assert!(!eight.load(Ordering::Acquire));
        table.finish(ME, 7);
        table.finish(ME, 8);
    }

    #[test]
    fn a_cancel_before_its_call_keeps_the_call_from_running_and_is_bounded() {
        let mut table = CancelTable::new();
        table.cancel(ME, 9);
        assert!(table.start(ME, 9).is_none(), "cancelled before it started");
        assert!(table.start(ME, 9).is_some(), "the cancel was used up");
        for id in 100..100 + EARLY_CANCELS as u64 + 10 {
            table.cancel(ME, id);
        }
        assert!(table.start(ME, 100).is_some(), "the oldest early cancels are forgotten");
        assert!(table.start(ME, 100 + EARLY_CANCELS as u64).is_none());
    }

    /// Found by the `rpc_envelope` fuzz target (its model: a call cancelled before it started
    /// ran): a used-up early cancel left its place in the order behind.
    #[test]
    fn a_cancel_used_up_and_given_again_is_kept_among_the_newest() {
        let mut table = CancelTable::new();
        table.cancel(ME, 7);
        assert!(table.start(ME, 7).is_none());
        table.cancel(ME, 7);
        for id in 1000..1000 + EARLY_CANCELS as u64 - 1 {
            table.cancel(ME, id);
        }
        assert!(table.start(ME, 7).is_none(), "one of the newest {EARLY_CANCELS} cancels");
    }
}
