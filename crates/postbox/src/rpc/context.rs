//! The call being served: a typed method reads its deadline here, and whether its caller
//! cancelled it; calls it makes to other services while it runs inherit the deadline.
//!
//! The server sets the context on the thread that runs the method for as long as it runs.

use std::cell::{Cell, RefCell};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::ProcessId;

/// What the server knows about the call a method is serving.
#[derive(Clone)]
pub struct CallContext {
    /// When the caller stops waiting, if it said.
    pub deadline: Option<Instant>,
    /// The caller (set by the system, not by the caller).
    pub caller: ProcessId,
    /// Raised when the caller cancels the call; `None` for a call its caller cannot cancel.
    cancelled: Option<Arc<AtomicBool>>,
}

impl CallContext {
    /// The context of the call this thread is serving, if it is serving one.
    #[must_use]
    pub fn current() -> Option<Self> {
        let frame = CURRENT.get()?;
        let cancelled =
            if frame.cancellable { CANCEL_FLAG.with(|flag| flag.borrow().clone()) } else { None };
        Some(Self { deadline: frame.deadline, caller: frame.caller, cancelled })
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
        self.cancelled.as_ref().is_some_and(|flag| flag.load(Ordering::Acquire))
    }
}

impl std::fmt::Debug for CallContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CallContext")
            .field("deadline", &self.deadline)
            .field("caller", &self.caller)
            .field("cancelled", &self.is_cancelled())
            .finish()
    }
}

/// Runs `f` as the call from `caller` with `deadline`, which its caller may cancel through
/// `cancelled` (`None`: it cannot).
///
/// Every call is served through here, so the common case costs two plain stores: the
/// context is kept as a `Copy` frame, and the cancel flag (reference counted) is touched only
/// for calls that have one. [`CallContext::current`] builds the context from them.
pub(crate) fn serving<R>(
    deadline: Option<Instant>,
    caller: ProcessId,
    cancelled: Option<Arc<AtomicBool>>,
    f: impl FnOnce() -> R,
) -> R {
    /// Puts back what the thread served before (nothing, usually), also when `f` panics.
    struct Restore {
        frame: Option<Frame>,
        /// The previous cancel flag, when this call replaced it.
        flag: Option<Option<Arc<AtomicBool>>>,
    }
    impl Drop for Restore {
        fn drop(&mut self) {
            CURRENT.set(self.frame);
            if let Some(flag) = self.flag.take() {
                CANCEL_FLAG.with(|current| *current.borrow_mut() = flag);
            }
        }
    }
    let frame = Frame { deadline, caller, cancellable: cancelled.is_some() };
    let _restore = Restore {
        frame: CURRENT.replace(Some(frame)),
        flag: cancelled.map(|flag| CANCEL_FLAG.with(|current| current.replace(Some(flag)))),
    };
    f()
}

/// The deadline a call made now inherits from the call being served.
pub(crate) fn inherited_deadline() -> Option<Instant> {
    CURRENT.get().and_then(|frame| frame.deadline)
}

/// The call a thread serves, apart from its cancel flag.
#[derive(Debug, Clone, Copy)]
struct Frame {
    deadline: Option<Instant>,
    caller: ProcessId,
    /// Whether [`CANCEL_FLAG`] holds this call's flag.
    cancellable: bool,
}

thread_local! {
    static CURRENT: Cell<Option<Frame>> = const { Cell::new(None) };
    static CANCEL_FLAG: RefCell<Option<Arc<AtomicBool>>> = const { RefCell::new(None) };
}

#[cfg(test)]
mod tests {
    use super::*;

    const CALLER: ProcessId = ProcessId { pid: 7, generation: 1 };

    #[test]
    fn the_context_is_set_while_serving_and_put_back_after_nested_calls_and_panics() {
        assert!(CallContext::current().is_none());
        let flag = Arc::new(AtomicBool::new(false));
        let deadline = Instant::now() + Duration::from_secs(60);
        serving(Some(deadline), CALLER, Some(Arc::clone(&flag)), || {
            let outer = CallContext::current().expect("serving");
            assert_eq!((outer.deadline, outer.caller), (Some(deadline), CALLER));
            assert_eq!(inherited_deadline(), Some(deadline));
            serving(None, CALLER, None, || {
                let inner = CallContext::current().expect("serving");
                assert_eq!(inner.deadline, None);
                flag.store(true, Ordering::Release);
                assert!(!inner.is_cancelled(), "a call without a flag is never cancelled");
            });
            let panicked = std::panic::catch_unwind(|| {
                serving(None, CALLER, Some(Arc::new(AtomicBool::new(false))), || panic!("no"))
            });
            assert!(panicked.is_err());
            let outer = CallContext::current().expect("serving");
            assert_eq!(outer.deadline, Some(deadline));
            assert!(outer.is_cancelled(), "the outer call's own flag is back");
        });
        assert!(CallContext::current().is_none());
        assert_eq!(inherited_deadline(), None);
    }
}
