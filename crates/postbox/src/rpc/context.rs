//! The call being served: a typed method reads its deadline here, and whether its caller
//! cancelled it; calls it makes to other services while it runs inherit the deadline.
//!
//! The server sets the context on the thread that runs the method for as long as it runs.

use std::cell::RefCell;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::ProcessId;

/// What the server knows about the call a method is serving.
#[derive(Debug, Clone)]
pub struct CallContext {
    /// When the caller stops waiting, if it said.
    pub deadline: Option<Instant>,
    /// The caller (set by the system, not by the caller).
    pub caller: ProcessId,
    /// Raised when the caller cancels the call.
    cancelled: Arc<AtomicBool>,
}

impl CallContext {
    /// The context of the call this thread is serving, if it is serving one.
    #[must_use]
    pub fn current() -> Option<Self> {
        CURRENT.with(|c| c.borrow().clone())
    }

    /// Time left before the caller's deadline (zero once it passed), if it set one.
    #[must_use]
    pub fn remaining(&self) -> Option<Duration> {
        self.deadline.map(|d| d.saturating_duration_since(Instant::now()))
    }

    /// True once the caller cancelled the call (it dropped an async call, or a retry
    /// superseded it): a long method may stop early; its answer goes nowhere.
    #[must_use]
    pub fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::Acquire)
    }

    pub(crate) fn new(
        deadline: Option<Instant>,
        caller: ProcessId,
        cancelled: Arc<AtomicBool>,
    ) -> Self {
        Self { deadline, caller, cancelled }
    }
}

/// Runs `f` with `context` as the current call's.
pub(crate) fn serving<R>(context: CallContext, f: impl FnOnce() -> R) -> R {
    struct Restore(Option<CallContext>);
    impl Drop for Restore {
        fn drop(&mut self) {
            CURRENT.with(|c| *c.borrow_mut() = self.0.take());
        }
    }
    let _restore = Restore(CURRENT.with(|c| c.borrow_mut().replace(context)));
    f()
}

/// The deadline a call made now inherits from the call being served.
pub(crate) fn inherited_deadline() -> Option<Instant> {
    CURRENT.with(|c| c.borrow().as_ref().and_then(|c| c.deadline))
}

thread_local! {
    static CURRENT: RefCell<Option<CallContext>> = const { RefCell::new(None) };
}
