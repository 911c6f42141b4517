//! One request, as a serving thread handles it: checked (message type, envelope, method name,
//! schema hash, arguments against recursive shapes, deadline counted from arrival), answered
//! from the reply cache when it is a retry, run with its call context (a panic answers an
//! error), and answered; cancel and describe requests are answered at once.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use postbox_rpc::{
    json, CancelTable, Lookup, MethodSchema, ReplyCache, ReplyStatus, RequestFlags, RequestHeader,
    RequestKind, Shape, RPC_CONTROL_MSG_TYPE, RPC_MSG_TYPE,
};

use crate::rpc::dispatch::{Dispatch, Outcome};
use crate::rpc::{codec, context};
use crate::{spare, Envelope, Message, ProcessId, ReplyToken};

/// What every serving thread (or task) of one service shares.
pub(crate) struct Handler {
    service: Arc<dyn Dispatch>,
    /// The service's methods (its schema is the same for every call), read here rather than
    /// through the schema's static, which may share a cache line with data other threads
    /// write.
    methods: &'static [MethodSchema],
    /// Replies of recent calls, for retries (at most once).
    cache: Mutex<ReplyCache<ReplyToken>>,
    /// Flags of the calls running, for their callers' cancels.
    cancels: Mutex<CancelTable>,
    /// Per method, the shape its argument bytes are checked against before serde decodes
    /// them, for methods whose shapes could make serde recurse or loop without bound.
    checks: Vec<Option<Shape>>,
}

impl Handler {
    pub(crate) fn new(service: Arc<dyn Dispatch>) -> Self {
        let methods = service.schema().methods.as_slice();
        let checks = methods
            .iter()
            .map(|m| {
                let args = Shape::Tuple(m.args.iter().map(|a| a.shape.clone()).collect());
                args.needs_check().then_some(args)
            })
            .collect();
        Self {
            service,
            methods,
            cache: Mutex::new(ReplyCache::new(REPLY_CACHE_ENTRIES, REPLY_CACHE_BYTES)),
            cancels: Mutex::new(CancelTable::new()),
            checks,
        }
    }

    /// Answers one request (or, for a retry of a call that ran or runs, its first reply).
    pub(crate) fn handle(&self, mut envelope: Envelope) {
        let token = envelope.take_reply_token();
        self.serve_request(token, &envelope);
        // Answered: the request's buffer (unless it was small, and held in place) can hold
        // this thread's next reply or request.
        spare::keep_body(envelope.message);
    }

    /// Handles the request `envelope` holds, answering `token` (unless the request is one-way
    /// or a cancel).
    fn serve_request(&self, token: Option<ReplyToken>, envelope: &Envelope) {
        let arrived = token.as_ref().map_or_else(Instant::now, ReplyToken::arrived);
        let msg_type = envelope.message().msg_type();
        if msg_type != RPC_MSG_TYPE && msg_type != RPC_CONTROL_MSG_TYPE {
            let what = "not a typed request (message type is not RPC_MSG_TYPE)";
            return answer(token, Outcome::text(ReplyStatus::BadRequest, what));
        }
        let (header, args) = match RequestHeader::decode(envelope.body()) {
            Ok(decoded) => decoded,
            Err(e) => return answer(token, Outcome::text(ReplyStatus::BadRequest, &e.to_string())),
        };
        let caller = envelope.sender();
        match header.kind {
            RequestKind::Cancel => return lock(&self.cancels).cancel(caller, header.call_id),
            RequestKind::Describe => return answer(token, Outcome::ok(self.service.schema())),
            _ => {}
        }
        let Some(token) = token else {
            // One-way: nothing to answer, nothing to remember.
            self.run(&header, args, caller, arrived);
            return;
        };
        if header.kind != RequestKind::Call || header.flags & RequestFlags::RETRIES == 0 {
            // A caller that never retries has no use for a kept reply.
            return answer(Some(token), self.run(&header, args, caller, arrived));
        }
        let lookup = lock(&self.cache).begin(caller, header.call_id, token);
        match lookup {
            Lookup::Run(token) => {
                let outcome = self.run(&header, args, caller, arrived);
                let ran = outcome.method_ran();
                let reply = outcome.into_body();
                let waiters = if ran {
                    lock(&self.cache).finish(caller, header.call_id, &reply)
                } else {
                    lock(&self.cache).abandon(caller, header.call_id)
                };
                // A caller that gave up or died is not the server's problem.
                for waiter in std::iter::once(token).chain(waiters) {
                    let _ = waiter.reply(Message::new(reply.clone()));
                }
            }
            // A retry pushed out of a crowded wait is dropped here, out of the lock (its
            // caller gets NoReply and may retry again).
            Lookup::Joined(pushed_out) => drop(pushed_out),
            Lookup::Replay(token, reply) => {
                let _ = token.reply(Message::new(reply));
            }
        }
    }

    /// Runs a call or one-way request: the method it names, checked against this definition.
    fn run(
        &self,
        header: &RequestHeader,
        args: &[u8],
        caller: ProcessId,
        arrived: Instant,
    ) -> Outcome {
        let Some(index) = self.methods.iter().position(|m| m.name == header.method) else {
            return Outcome::text(ReplyStatus::UnknownMethod, &header.method);
        };
        let method = &self.methods[index];
        if header.method_hash != 0 && header.method_hash != method.hash {
            return Outcome::text(
                ReplyStatus::TypeMismatch,
                &format!("method {}: the caller was built from another definition", method.name),
            );
        }
        if let Some(Err(e)) = self.checks[index].as_ref().map(|shape| json::check(args, shape)) {
            return Outcome::text(ReplyStatus::BadRequest, &e.to_string());
        }
        // Counted from when the request was read off the link, not from now: it may have
        // waited in the port's queue.
        let deadline = (header.deadline_ns != 0)
            .then(|| arrived.checked_add(Duration::from_nanos(header.deadline_ns)))
            .flatten();
        if deadline.is_some_and(|d| d <= Instant::now()) {
            return Outcome::text(ReplyStatus::DeadlineExceeded, "");
        }
        // Only calls their callers may cancel are registered for cancels.
        let cancellable = header.flags & RequestFlags::CANCELLABLE != 0;
        let cancelled = if cancellable {
            match lock(&self.cancels).start(caller, header.call_id) {
                Some(flag) => Some(flag),
                None => return Outcome::text(ReplyStatus::Cancelled, ""),
            }
        } else {
            None
        };
        let outcome = catch_unwind(AssertUnwindSafe(|| {
            context::serving(deadline, caller, cancelled, || self.service.dispatch(index, args))
        }));
        if cancellable {
            lock(&self.cancels).finish(caller, header.call_id);
        }
        outcome.unwrap_or_else(|panic| {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a panic without a message".to_owned());
            Outcome::text(ReplyStatus::Panicked, &what)
        })
    }
}

/// Locks a table the serving threads share. Each is consistent between its own statements: a
/// panic elsewhere leaves it usable.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Answers `token`, if there is one (a caller that gave up or died is not the server's
/// problem).
fn answer(token: Option<ReplyToken>, outcome: Outcome) {
    if let Some(Ok(reply)) =
        token.map(|token| token.reply_returning(codec::message_of(outcome.into_body())))
    {
        spare::keep_body(reply);
    }
}

/// Replies of finished calls kept for retries, per service: at most this many...
const REPLY_CACHE_ENTRIES: usize = 4096;
/// ... and at most this many bytes of them.
const REPLY_CACHE_BYTES: usize = 16 << 20;
