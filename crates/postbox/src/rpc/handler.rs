//! One request, as a serving thread handles it: checked (message type, envelope, method name,
//! schema hash, arguments against recursive shapes, deadline counted from arrival), answered
//! from the reply cache when it is a retry, run with its call context (a panic answers an
//! error), and answered; cancel and describe requests are answered at once.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use postbox_core::wire::DecodeError;
use postbox_rpc::{
    json, CancelTable, Lookup, MethodSchema, ReplyCache, ReplyStatus, RequestFields, RequestFlags,
    RequestKind, Shape, NO_DEADLINE, RPC_CONTROL_MSG_TYPE, RPC_MSG_TYPE,
};

use crate::rpc::context;
use crate::rpc::dispatch::{reply, Answer, Args, Dispatch, Outcome, Sink, SMALL_REPLY};
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
        let caller = envelope.sender();
        // The reply token stays in the envelope until the answer: moved out right after the
        // envelope was built, it would be read back before the processor could forward it.
        self.serve_request(&mut envelope.reply, &mut envelope.message, caller);
        // Answered: the request's buffer (unless it was small and held in place, or the
        // arguments took it over) can hold this thread's next reply or request...
        spare::keep_body(envelope.message);
        // ... and what else the next call needs is allocated now, while the caller reads its
        // reply: a buffer for the request, one for the reply.
        spare::stock(2, SMALL_REPLY);
    }

    /// Handles the request `message` from `caller`, answering `token` (unless the request is
    /// one-way or a cancel).
    fn serve_request(
        &self,
        token: &mut Option<ReplyToken>,
        message: &mut Message,
        caller: ProcessId,
    ) {
        let msg_type = message.msg_type();
        if msg_type != RPC_MSG_TYPE && msg_type != RPC_CONTROL_MSG_TYPE {
            let what = "not a typed request (message type is not RPC_MSG_TYPE)";
            return reply(token.take(), Outcome::text(ReplyStatus::BadRequest, what));
        }
        let request = match self.request_of(message.body()) {
            Ok(request) => request,
            Err(e) => {
                let outcome = Outcome::text(ReplyStatus::BadRequest, &e.to_string());
                return reply(token.take(), outcome);
            }
        };
        match request.kind {
            RequestKind::Cancel => return lock(&self.cancels).cancel(caller, request.call_id),
            RequestKind::Describe => {
                return reply(token.take(), Outcome::ok(self.service.schema()));
            }
            _ => {}
        }
        let Some(token_ref) = token.as_ref() else {
            // One-way: nothing to answer, nothing to remember (the outcome's buffer serves
            // again, whatever the method did).
            let arrived = Instant::now();
            let _ = self.run(&request, message, caller, arrived, Answer::new(Sink::Nowhere));
            return;
        };
        let arrived = token_ref.arrived();
        if request.kind != RequestKind::Call || request.flags & RequestFlags::RETRIES == 0 {
            // A caller that never retries has no use for a kept reply: it is answered as soon
            // as the outcome is known.
            let ran = self.run(&request, message, caller, arrived, Answer::new(Sink::Reply(token)));
            if token.is_some() {
                reply(token.take(), unanswered(ran));
            }
            return;
        }
        let Some(token) = token.take() else { return };
        let lookup = lock(&self.cache).begin(caller, request.call_id, token);
        match lookup {
            Lookup::Run(token) => {
                let mut outcome = None;
                let sink = Answer::new(Sink::Hold(&mut outcome));
                let ran = self.run(&request, message, caller, arrived, sink);
                let outcome = outcome.unwrap_or_else(|| unanswered(ran));
                let ran = outcome.method_ran();
                let reply = outcome.into_body();
                let waiters = if ran {
                    lock(&self.cache).finish(caller, request.call_id, &reply)
                } else {
                    lock(&self.cache).abandon(caller, request.call_id)
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

    /// The request whose body is `body`: its header decoded, its method looked up by name.
    /// The name is compared as bytes: one that matches a method's is UTF-8 (as the method's
    /// is), and only one that matches none is checked, with the error `RequestHeader::decode`
    /// gives.
    fn request_of(&self, body: &[u8]) -> Result<Request, DecodeError> {
        let (fields, args) = RequestFields::decode(body)?;
        let method = match self.methods.iter().position(|m| m.name.as_bytes() == fields.method) {
            Some(index) => index,
            None => {
                // Checked here, named when answered (see `unknown_method`).
                fields.into_header()?;
                self.methods.len()
            }
        };
        Ok(Request {
            kind: fields.kind,
            flags: fields.flags,
            call_id: fields.call_id,
            method,
            method_hash: fields.method_hash,
            deadline_ns: fields.deadline_ns,
            args_at: body.len() - args.len(),
        })
    }

    /// Runs a call or one-way request (its arguments in `message`): the method it names,
    /// checked against this definition. Hands `answer` the outcome (at most once), as soon as it
    /// is known (the method's result is dropped after). Returns how the service's dispatch
    /// ended: a dispatch that returned or panicked without answering leaves `answer` uncalled,
    /// for the caller to answer with [`unanswered`].
    fn run(
        &self,
        request: &Request,
        message: &mut Message,
        caller: ProcessId,
        arrived: Instant,
        answer: Answer<'_>,
    ) -> std::thread::Result<()> {
        let (index, deadline) = match self.admit(request, message.body(), arrived) {
            Ok(admitted) => admitted,
            Err(refusal) => {
                answer.with(refusal);
                return Ok(());
            }
        };
        // Only calls their callers may cancel are registered for cancels.
        let cancellable = request.flags & RequestFlags::CANCELLABLE != 0;
        let cancelled = if cancellable {
            let Some(flag) = lock(&self.cancels).start(caller, request.call_id) else {
                answer.with(Outcome::text(ReplyStatus::Cancelled, ""));
                return Ok(());
            };
            Some(flag)
        } else {
            None
        };
        let args = Args::new(message, request.args_at);
        let ran = catch_unwind(AssertUnwindSafe(|| {
            context::serving(deadline, caller, cancelled, || {
                self.service.dispatch(index, args, answer);
            });
        }));
        if cancellable {
            lock(&self.cancels).finish(caller, request.call_id);
        }
        ran
    }

    /// The method `request` (whose body is `body`) runs, and its deadline (counted from
    /// `arrived`), or the outcome that refuses it: an unknown method, another definition's,
    /// arguments that fail their shape's check, a deadline passed.
    fn admit(
        &self,
        request: &Request,
        body: &[u8],
        arrived: Instant,
    ) -> Result<(usize, Option<Instant>), Outcome> {
        let index = request.method;
        let Some(method) = self.methods.get(index) else { return Err(unknown_method(body)) };
        if request.method_hash != 0 && request.method_hash != method.hash {
            return Err(Outcome::text(
                ReplyStatus::TypeMismatch,
                &format!("method {}: the caller was built from another definition", method.name),
            ));
        }
        if let Some(Err(e)) = self.checks[index]
            .as_ref()
            .map(|shape| json::check(body.get(request.args_at..).unwrap_or_default(), shape))
        {
            return Err(Outcome::text(ReplyStatus::BadRequest, &e.to_string()));
        }
        // Counted from when the request was read off the link, not from now: it may have
        // waited in the port's queue.
        let deadline = (request.deadline_ns != 0 && request.deadline_ns != NO_DEADLINE)
            .then(|| arrived.checked_add(Duration::from_nanos(request.deadline_ns)))
            .flatten();
        if deadline.is_some_and(|d| d <= Instant::now()) {
            return Err(Outcome::text(ReplyStatus::DeadlineExceeded, ""));
        }
        Ok((index, deadline))
    }
}

/// The answer to a call whose dispatch ended (`ran`) without answering: its panic's message,
/// or a dispatch that gave no answer. A panic after the answer (dropping the result) changes
/// nothing for the caller.
fn unanswered(ran: std::thread::Result<()>) -> Outcome {
    let what = match ran {
        Ok(()) => "the service's dispatch gave no answer".to_owned(),
        Err(panic) => panic
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a panic without a message".to_owned()),
    };
    Outcome::text(ReplyStatus::Panicked, &what)
}

/// The answer to the request `body`, whose method's name (valid UTF-8) no method has.
#[cold]
fn unknown_method(body: &[u8]) -> Outcome {
    let name = RequestFields::decode(body)
        .ok()
        .and_then(|(fields, _)| fields.into_header().ok())
        .map(|header| header.method.into_owned())
        .unwrap_or_default();
    Outcome::text(ReplyStatus::UnknownMethod, &name)
}

/// A request's header as the handler keeps it while the call runs, its method found by name
/// (the header itself borrows the body, which the arguments may take over).
struct Request {
    kind: RequestKind,
    flags: u8,
    call_id: u64,
    /// The method's index in the schema; past its end when no method has the name.
    method: usize,
    method_hash: u64,
    deadline_ns: u64,
    /// Where the arguments start in the body.
    args_at: usize,
}

/// Locks a table the serving threads share. Each is consistent between its own statements: a
/// panic elsewhere leaves it usable.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Replies of finished calls kept for retries, per service: at most this many...
const REPLY_CACHE_ENTRIES: usize = 4096;
/// ... and at most this many bytes of them.
const REPLY_CACHE_BYTES: usize = 16 << 20;
