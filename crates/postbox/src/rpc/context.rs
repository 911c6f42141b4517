//! The call being served: a typed method reads its deadline here, and calls it makes to other
//! services while it runs inherit that deadline.
//!
//! The server sets the context on the thread that runs the method for as long as it runs.

use std::cell::Cell;
use std::time::{Duration, Instant};

use crate::ProcessId;

/// What the server knows about the call a method is serving.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CallContext {
    /// When the caller stops waiting, if it said.
    pub deadline: Option<Instant>,
    /// The caller (set by the system, not by the caller).
    pub caller: ProcessId,
}

impl CallContext {
    /// The context of the call this thread is serving, if it is serving one.
    #[must_use]
    pub fn current() -> Option<Self> {
        CURRENT.with(Cell::get)
    }

    /// Time left before the caller's deadline (zero once it passed), if it set one.
    #[must_use]
    pub fn remaining(&self) -> Option<Duration> {
        self.deadline.map(|d| d.saturating_duration_since(Instant::now()))
    }
}

/// Runs `f` with `context` as the current call's.
pub(crate) fn serving<R>(context: CallContext, f: impl FnOnce() -> R) -> R {
    struct Restore(Option<CallContext>);
    impl Drop for Restore {
        fn drop(&mut self) {
            CURRENT.with(|c| c.set(self.0));
        }
    }
    let _restore = Restore(CURRENT.with(|c| c.replace(Some(context))));
    f()
}

/// The deadline a call made now inherits from the call being served.
pub(crate) fn inherited_deadline() -> Option<Instant> {
    CallContext::current().and_then(|c| c.deadline)
}

thread_local! {
    static CURRENT: Cell<Option<CallContext>> = const { Cell::new(None) };
}
