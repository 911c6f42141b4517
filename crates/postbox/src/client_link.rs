//! The client side of one link: one-way sends under the port's flow control (credits), calls
//! matched to their replies, and the leader/follower reading of the link.
//!
//! Whichever thread needs something from the link (a reply, or credit to send) reads it while
//! the others wait: one thread at a time reads frames and files them (replies in the call
//! table, credits in the send window), then wakes the rest. No background thread sits
//! between the socket and the caller.

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard, Weak};
use std::time::Instant;

use postbox_core::wire::frame::ReplyErrorCode;
use postbox_core::{
    AccessDenied, Admission, CallId, CallTable, Capacity, Credit, Delivery, FrameDecoder,
    FrameHeader, FrameKind, LinkId, Operation, Overflow, PeerIdentity, PortSpec, Quota, Rights,
    SendWindow,
};
use postbox_transport::{Link, TransportError, Wait};

use crate::body::Body;
use crate::condvar::wait_until;
use crate::error::CallError;
use crate::link::{LinkEnd, WriteFailure, WriteGuard};
use crate::node::NodeShared;
use crate::readiness::Readiness;
use crate::{spare, Message};

/// What a call writes: a [`Message`], or a small request built on the caller's stack
/// ([`RequestBytes`]), which becomes a message only to be handed back with an error.
pub(crate) trait CallRequest {
    /// Writes the request as a call frame correlated by `id`.
    fn write(&mut self, end: &LinkEnd, id: u64, wait: Wait) -> Result<(), WriteFailure>;
    /// The request as a message, handed back with an error.
    fn into_message(self) -> Message;
    /// The request was written: what it holds may serve again.
    fn written(self);
}

impl CallRequest for Message {
    fn write(&mut self, end: &LinkEnd, id: u64, wait: Wait) -> Result<(), WriteFailure> {
        end.write(FrameKind::Call, self, id, wait)
    }

    fn into_message(self) -> Message {
        self
    }

    fn written(self) {
        // Its buffer can take the reply.
        spare::keep_body(self);
    }
}

/// A request's body and type, in bytes the caller holds (a typed request encoded on its
/// stack): written without a [`Message`] and without a buffer of its own.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RequestBytes<'a> {
    pub(crate) msg_type: u32,
    pub(crate) body: &'a [u8],
}

impl CallRequest for RequestBytes<'_> {
    fn write(&mut self, end: &LinkEnd, id: u64, wait: Wait) -> Result<(), WriteFailure> {
        end.write_bytes(FrameKind::Call, self.msg_type, self.body, id, wait)
    }

    fn into_message(self) -> Message {
        Message::new(self.body).with_type(self.msg_type)
    }

    fn written(self) {}
}

/// Forgets a call whose async caller went away before its reply.
struct PendingCall<'a> {
    link: &'a ClientLink,
    id: CallId,
}

impl Drop for PendingCall<'_> {
    fn drop(&mut self) {
        self.link.lock().calls.cancel(self.id);
    }
}

/// The client end of a link, shared by the clones of a [`Connection`](crate::Connection).
#[derive(Debug)]
pub(crate) struct ClientLink {
    pub(crate) end: LinkEnd,
    pub(crate) server: PeerIdentity,
    pub(crate) spec: PortSpec,
    id: LinkId,
    /// What the broker granted this link.
    pub(crate) granted: Granted,
    state: Mutex<ClientState>,
    changed: Condvar,
    decoder: Mutex<FrameDecoder>,
    /// The largest reply payload accepted (the host's limit).
    max_reply: u32,
    /// Pooled replies are read in place (the caller trusts the server), not copied out.
    pub(crate) read_in_place: std::sync::atomic::AtomicBool,
    /// Messages this side dropped (drop-oldest, link full in the kernel too), to be reported
    /// with the next one-way frame.
    dropped_unreported: AtomicU64,
    node: Weak<NodeShared>,
    /// For the async forms: the link's readiness, and "another thread filed something".
    readiness: Readiness,
}

#[derive(Debug)]
struct ClientState {
    calls: CallTable<Outcome>,
    window: SendWindow,
    reading: bool,
    broken: Option<Broken>,
    /// Threads blocked on `changed`: notifying costs a system call, so only when there are any.
    waiting: usize,
}

#[derive(Debug, Clone)]
enum Outcome {
    Reply(Message),
    Failed(CallError),
}

/// What a link broken by a peer that scribbled over shared memory reports.
const CORRUPT: &str = "the server broke the shared-memory protocol";

/// A frame read from the link, as a message.
struct Received {
    header: FrameHeader,
    message: Message,
}

/// Why the link can no longer be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Broken {
    PeerDied,
    Violation(String),
}

/// What the broker granted a client link, and what it leads to (for denials).
#[derive(Debug, Clone)]
pub(crate) struct Granted {
    /// One-way messages, calls, or both.
    pub(crate) rights: Rights,
    /// How many calls may wait for answers.
    pub(crate) quota: Quota,
    /// A port name, or which inbox.
    pub(crate) target: String,
}

/// Why a one-way send did not happen (or, for a confirmed one, was not confirmed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OnewayFailure {
    /// Over the port's message size (or byte capacity); the limit.
    TooLarge(u64),
    /// At capacity (non-blocking, or the port fails instead of blocking).
    Full,
    /// At capacity until the wait ended.
    Timeout,
    /// Sent, but not taken by the receiver before the wait ended.
    NotTaken,
    /// The server is gone.
    Disconnected,
    /// The link was granted calls only.
    Denied,
}

/// Why waiting on the link ended without what was wanted.
enum WaitFailure {
    Timeout,
    Broken(Broken),
}

impl ClientLink {
    pub(crate) fn new(
        link: Link,
        id: LinkId,
        server: PeerIdentity,
        spec: PortSpec,
        host_max: u32,
        granted: Granted,
        node: Weak<NodeShared>,
    ) -> std::io::Result<Self> {
        let max_body = spec.message_size.map_or(host_max, |n| n.min(host_max));
        let readiness = Readiness::new()?;
        Ok(Self {
            end: LinkEnd::new(link, max_body),
            server,
            spec,
            id,
            granted,
            state: Mutex::new(ClientState {
                calls: CallTable::new(),
                window: SendWindow::new(&spec),
                reading: false,
                broken: None,
                waiting: 0,
            }),
            changed: Condvar::new(),
            decoder: Mutex::new(FrameDecoder::new(host_max)),
            max_reply: host_max,
            read_in_place: std::sync::atomic::AtomicBool::new(false),
            dropped_unreported: AtomicU64::new(0),
            node,
            readiness,
        })
    }

    fn lock(&self) -> MutexGuard<'_, ClientState> {
        // The state is consistent between statements; a panicking holder leaves it usable.
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Sends a one-way message under the port's capacity and overflow policy. With `confirm`
    /// (and always on a rendezvous port) returns only once the receiver has taken it.
    pub(crate) fn send_oneway(
        &self,
        message: &mut Message,
        wait: Wait,
        confirm: bool,
    ) -> Result<(), OnewayFailure> {
        match self.write_oneway(message, wait, confirm, false)? {
            None => Ok(()),
            Some(number) => {
                let taken = |s: &mut ClientState| s.window.is_released(number).then_some(());
                match self.wait_for(wait.ends_at(), taken) {
                    Ok(()) => Ok(()),
                    Err(WaitFailure::Timeout) => Err(OnewayFailure::NotTaken),
                    Err(WaitFailure::Broken(_)) => Err(OnewayFailure::Disconnected),
                }
            }
        }
    }

    /// Writes a one-way message under the port's capacity and overflow policy, waiting up to
    /// `wait` for room. Returns the message's number when the sender must still wait for the
    /// receiver to take it (confirmed or rendezvous). A non-blocking attempt that would have
    /// to wait for confirmation writes nothing (`Full`), unless `may_leave_pending`.
    fn write_oneway(
        &self,
        message: &mut Message,
        wait: Wait,
        confirm: bool,
        may_leave_pending: bool,
    ) -> Result<Option<u64>, OnewayFailure> {
        self.write_oneway_held(&mut None, false, message, wait, confirm, may_leave_pending)
    }

    /// Sends the one-way messages of `batch` in order, under one entry to the link and
    /// published to the receiver together (one wake-up), except where a message must wait for
    /// room (what was written goes first). Sent messages are drained from `batch`; on a
    /// failure the unsent ones stay in it, the failed one first. A rendezvous port takes them
    /// one by one, each waiting for the receiver.
    pub(crate) fn send_batch(
        &self,
        batch: &mut Vec<Message>,
        wait: Wait,
    ) -> Result<(), OnewayFailure> {
        let mut sent = 0;
        let result = if self.spec.capacity == Capacity::Rendezvous {
            batch.iter_mut().try_for_each(|message| {
                let result = self.send_oneway(message, wait, false);
                // A message not taken in time is in the link all the same.
                if matches!(result, Ok(()) | Err(OnewayFailure::NotTaken)) {
                    sent += 1;
                }
                result
            })
        } else {
            self.write_batch(batch, wait, &mut sent)
        };
        batch.drain(..sent);
        result
    }

    /// Writes `batch` under one entry to the link, counting in `sent` what was written. The
    /// messages the window admits now are counted in it together (one lock), then written
    /// together ([`WriteGuard::write_batch`]);
    /// one it does not admit goes the way of a single send (waiting for credit, or failing).
    fn write_batch(
        &self,
        batch: &mut [Message],
        wait: Wait,
        sent: &mut usize,
    ) -> Result<(), OnewayFailure> {
        let mut held = None;
        while *sent < batch.len() {
            let counted = self.count_in_advance(&mut held, &batch[*sent..], wait)?;
            if counted == 0 {
                // Not confirmed, nothing left pending: the written number is not needed.
                self.write_oneway_held(&mut held, true, &mut batch[*sent], wait, false, false)?;
                *sent += 1;
                continue;
            }
            let guard = held.as_ref().expect("entered by count_in_advance");
            let counted = &mut batch[*sent..*sent + counted];
            let mut written = 0;
            let result = guard.write_batch(FrameKind::Oneway, counted, wait, &mut written);
            *sent += written;
            if let Err(failure) = result {
                // The one that failed and the rest counted with it were not written.
                let mut state = self.lock();
                for unsent in &counted[written..] {
                    state.window.on_unsent(unsent.body.len() as u64);
                }
                // A sender waiting for room saw them counted.
                self.wake_waiters(&state);
                return self.write_failed(&mut state, failure, wait).map(|_| ());
            }
        }
        Ok(())
    }

    /// Counts in the window, under one lock, the messages at the front of `rest` it admits
    /// now (entering the link first); returns how many. None on ports that drop the oldest
    /// (each message's own way decides there) or links not granted sends.
    fn count_in_advance<'a>(
        &'a self,
        held: &mut Option<WriteGuard<'a>>,
        rest: &[Message],
        wait: Wait,
    ) -> Result<usize, OnewayFailure> {
        if self.spec.overflow == Overflow::DropOldest || !self.granted.rights.contains(Rights::SEND)
        {
            return Ok(0);
        }
        if held.is_none() {
            *held = Some(self.end.enter_batch(wait).ok_or_else(|| full_or_timeout(wait))?);
        }
        let mut state = self.lock();
        if state.broken.is_some() {
            return Err(OnewayFailure::Disconnected);
        }
        let mut counted = 0;
        for message in rest {
            let len = message.body.len() as u64;
            if len > u64::from(self.end.max_body()) || state.window.admit(len) != Admission::Now {
                break;
            }
            state.window.on_sent(len);
            counted += 1;
        }
        Ok(counted)
    }

    /// Like [`send_batch`](Self::send_batch) with no wait, awaiting readiness (tokio) while
    /// the link is full.
    pub(crate) async fn send_batch_async(
        &self,
        batch: &mut Vec<Message>,
    ) -> Result<(), OnewayFailure> {
        if self.spec.capacity == Capacity::Rendezvous {
            // Each message waits for the receiver: one by one, as `send_async` would.
            while let Some(message) = batch.first_mut() {
                let result = self.send_oneway_async(message, false).await;
                if matches!(result, Ok(()) | Err(OnewayFailure::NotTaken)) {
                    batch.remove(0);
                }
                result?;
            }
            return Ok(());
        }
        self.watch_link();
        loop {
            match self.send_batch(batch, Wait::NonBlocking) {
                Err(OnewayFailure::Full) if self.spec.overflow == Overflow::Block => {
                    self.request_credit();
                    self.readiness.wait().await.map_err(|_| OnewayFailure::Disconnected)?;
                }
                done => return done,
            }
        }
    }

    /// As [`write_oneway`](Self::write_oneway), writing under the guard in `held`, entered
    /// when it is empty (for a `batch`, with [`LinkEnd::enter_batch`]); a batch passes the one
    /// its previous message used. A wait for credit drops it first (publishing what the batch
    /// wrote, which the receiver must see to give credit).
    fn write_oneway_held<'a>(
        &'a self,
        held: &mut Option<WriteGuard<'a>>,
        batch: bool,
        message: &mut Message,
        wait: Wait,
        confirm: bool,
        may_leave_pending: bool,
    ) -> Result<Option<u64>, OnewayFailure> {
        if !self.granted.rights.contains(Rights::SEND) {
            return Err(OnewayFailure::Denied);
        }
        let len = message.body.len() as u64;
        if len > u64::from(self.end.max_body()) {
            return Err(OnewayFailure::TooLarge(u64::from(self.end.max_body())));
        }
        let confirm = confirm || self.spec.capacity == Capacity::Rendezvous;
        if confirm && wait == Wait::NonBlocking && !may_leave_pending {
            // A send that must wait for the receiver cannot complete without waiting; it is
            // not started (it could not be taken back).
            return Err(OnewayFailure::Full);
        }
        let kind = if confirm { FrameKind::Confirmed } else { FrameKind::Oneway };
        let number = loop {
            let guard = match held {
                Some(guard) => &*guard,
                None => {
                    let entered =
                        if batch { self.end.enter_batch(wait) } else { self.end.enter(wait) };
                    &*held.insert(entered.ok_or_else(|| full_or_timeout(wait))?)
                }
            };
            // A message admitted now is counted as sent at once (one lock per message), and
            // taken back if it is not written.
            let admit = |state: &mut ClientState| {
                let admission = state.window.admit(len);
                (admission, (admission == Admission::Now).then(|| state.window.on_sent(len)))
            };
            let (admission, counted) = {
                let mut state = self.lock();
                if state.broken.is_some() {
                    return Err(OnewayFailure::Disconnected);
                }
                admit(&mut state)
            };
            let (admission, counted) = match admission {
                Admission::Full if self.spec.overflow == Overflow::Block => {
                    // Credit may be waiting unread on the link.
                    self.read_available();
                    admit(&mut self.lock())
                }
                other => (other, counted),
            };
            let write_wait = match (admission, self.spec.overflow) {
                (Admission::Never, _) => {
                    return Err(OnewayFailure::TooLarge(self.spec.byte_window()))
                }
                (Admission::Now, Overflow::DropOldest) => Wait::NonBlocking,
                (Admission::Now, _) => wait,
                (Admission::Full, Overflow::Fail) => return Err(OnewayFailure::Full),
                // Sent beyond the window on purpose: the receiver drops this link's oldest.
                (Admission::Full, Overflow::DropOldest) => Wait::NonBlocking,
                (Admission::Full, Overflow::Block) => {
                    if wait == Wait::NonBlocking {
                        return Err(OnewayFailure::Full);
                    }
                    // Ask for credit: a receiver whose report could not be written (its side
                    // of the link was full) sends it again when this arrives.
                    let mut request = Message::new(Vec::new());
                    let _ = guard.write(FrameKind::Credit, &mut request, 0, Wait::NonBlocking);
                    *held = None;
                    let room = |s: &mut ClientState| {
                        (s.window.admit(len) != Admission::Full).then_some(())
                    };
                    // The request is sent again every so often: a receiver that could not
                    // write its credit when it was asked has another chance.
                    let retry = Instant::now() + CREDIT_REQUEST_INTERVAL;
                    let until = wait.ends_at().map_or(retry, |end| end.min(retry));
                    match self.wait_for(Some(until), room) {
                        Ok(()) => continue,
                        Err(WaitFailure::Timeout) if !wait.expired() => continue,
                        Err(WaitFailure::Timeout) => return Err(OnewayFailure::Timeout),
                        Err(WaitFailure::Broken(_)) => return Err(OnewayFailure::Disconnected),
                    }
                }
            };
            // Only drop-oldest ports ever drop: others skip the atomic exchange.
            let dropped = match self.dropped_unreported.load(Ordering::Relaxed) {
                0 => 0,
                _ => self.dropped_unreported.swap(0, Ordering::Relaxed),
            };
            match guard.write(kind, message, dropped, write_wait) {
                Ok(()) => break counted.unwrap_or_else(|| self.lock().window.on_sent(len)),
                Err(failure) => {
                    let mut state = self.lock();
                    if counted.is_some() {
                        state.window.on_unsent(len);
                        // A sender waiting for room saw this message counted.
                        self.wake_waiters(&state);
                    }
                    self.dropped_unreported.fetch_add(dropped, Ordering::Relaxed);
                    return self.write_failed(&mut state, failure, wait);
                }
            }
        };
        Ok(confirm.then_some(number))
    }

    /// What a one-way write that failed with `failure` returns (the window already corrected).
    fn write_failed(
        &self,
        state: &mut ClientState,
        failure: WriteFailure,
        wait: Wait,
    ) -> Result<Option<u64>, OnewayFailure> {
        match failure {
            WriteFailure::TooLarge(limit) => Err(OnewayFailure::TooLarge(u64::from(limit))),
            WriteFailure::Closed => Err(OnewayFailure::Disconnected),
            WriteFailure::Violation => {
                self.break_locked(state, Broken::Violation(CORRUPT.into()));
                Err(OnewayFailure::Disconnected)
            }
            WriteFailure::Full if self.spec.overflow == Overflow::DropOldest => {
                // The kernel's buffer is full too: this message is the one lost, counted and
                // reported with the next frame.
                self.dropped_unreported.fetch_add(1, Ordering::Relaxed);
                Ok(None)
            }
            WriteFailure::Full => Err(full_or_timeout(wait)),
        }
    }

    /// Like [`send_oneway`](Self::send_oneway) with no wait, awaiting readiness (tokio) while
    /// the link is full or the receiver has not taken a confirmed message yet.
    pub(crate) async fn send_oneway_async(
        &self,
        message: &mut Message,
        confirm: bool,
    ) -> Result<(), OnewayFailure> {
        self.watch_link();
        let number = loop {
            match self.write_oneway(message, Wait::NonBlocking, confirm, true) {
                Ok(number) => break number,
                Err(OnewayFailure::Full) if self.spec.overflow == Overflow::Block => {
                    self.request_credit();
                    self.readiness.wait().await.map_err(|_| OnewayFailure::Disconnected)?;
                }
                Err(failure) => return Err(failure),
            }
        };
        let Some(number) = number else { return Ok(()) };
        loop {
            self.read_available();
            {
                let state = self.lock();
                if state.window.is_released(number) {
                    return Ok(());
                }
                if state.broken.is_some() {
                    return Err(OnewayFailure::Disconnected);
                }
            }
            self.readiness.wait().await.map_err(|_| OnewayFailure::Disconnected)?;
        }
    }

    /// Sends `request` as a call and awaits the reply (tokio), without a thread per call.
    /// Dropping the future forgets the call (a late reply is discarded).
    pub(crate) async fn call_async(&self, request: Message) -> Result<Message, CallError> {
        self.call_correlated_async(request).await.map(|(message, _)| message)
    }

    /// Like [`call_async`](Self::call_async), also returning the correlation id.
    pub(crate) async fn call_correlated_async(
        &self,
        request: Message,
    ) -> Result<(Message, u64), CallError> {
        let request = self.permit_call(request)?;
        let mut request = request;
        self.watch_link();
        let id = {
            let mut state = self.lock();
            if state.broken.is_some() {
                return Err(CallError::Disconnected(request));
            }
            let limit = self.granted.quota.calls_in_flight;
            if state.calls.in_flight() >= limit as usize {
                return Err(CallError::TooManyCalls { message: request, limit });
            }
            state.calls.begin(None)
        };
        let pending = PendingCall { link: self, id };
        loop {
            match self.end.write(FrameKind::Call, &mut request, id.0, Wait::NonBlocking) {
                Ok(()) => break,
                Err(WriteFailure::Full) => {
                    self.readiness.wait().await.map_err(|_| CallError::PeerDied)?;
                }
                Err(WriteFailure::TooLarge(limit)) => {
                    return Err(CallError::TooLarge { message: request, limit })
                }
                // Other calls' replies may still wait in the link: its reader reports the
                // close once they are read (see `call_correlated`).
                Err(WriteFailure::Closed) => return Err(CallError::Disconnected(request)),
                Err(WriteFailure::Violation) => {
                    self.break_link(Broken::Violation(CORRUPT.into()));
                    return Err(CallError::Disconnected(request));
                }
            }
        }
        loop {
            self.read_available();
            {
                let mut state = self.lock();
                if let Some(outcome) = state.calls.take(id) {
                    std::mem::forget(pending);
                    return match outcome {
                        Outcome::Reply(message) => Ok((message, id.0)),
                        Outcome::Failed(error) => Err(error),
                    };
                }
                if let Some(broken) = &state.broken {
                    return Err(broken.to_error());
                }
            }
            self.readiness.wait().await.map_err(|_| CallError::PeerDied)?;
        }
    }

    /// Waits (tokio) until the link or the link's state changed since the last wait.
    pub(crate) async fn wait_ready(&self) -> std::io::Result<()> {
        self.watch_link();
        self.readiness.wait().await
    }

    /// Watches the link for the async forms (once; from then on, every wait sees it).
    fn watch_link(&self) {
        if self.readiness.activate() {
            self.end.watch(&self.readiness);
        }
    }

    /// Asks the receiver for the credit it owes (an empty credit frame), without waiting.
    fn request_credit(&self) {
        if let Some(guard) = self.end.enter(Wait::NonBlocking) {
            let mut request = Message::new(Vec::new());
            let _ = guard.write(FrameKind::Credit, &mut request, 0, Wait::NonBlocking);
        }
    }

    /// Sends `request` as a call and waits for its reply until `deadline`.
    pub(crate) fn call(
        &self,
        request: Message,
        deadline: Option<Instant>,
    ) -> Result<Message, CallError> {
        self.call_correlated(request, deadline, || {}).map(|(message, _)| message)
    }

    /// Like [`call`](Self::call), also returning the call's correlation id (a mailbox pull is
    /// acknowledged by it). `while_waiting` runs once the request is written (if it is), before
    /// the wait for the reply: work that would otherwise delay the call, done while the server
    /// works.
    pub(crate) fn call_correlated<R: CallRequest>(
        &self,
        request: R,
        deadline: Option<Instant>,
        while_waiting: impl FnOnce(),
    ) -> Result<(Message, u64), CallError> {
        let mut request = self.permit_call(request)?;
        let id = {
            let mut state = self.lock();
            if state.broken.is_some() {
                return Err(CallError::Disconnected(request.into_message()));
            }
            let limit = self.granted.quota.calls_in_flight;
            if state.calls.in_flight() >= limit as usize {
                return Err(CallError::TooManyCalls { message: request.into_message(), limit });
            }
            state.calls.begin(deadline)
        };
        if let Err(failure) = request.write(&self.end, id.0, Wait::deadline(deadline)) {
            self.lock().calls.cancel(id);
            let request = request.into_message();
            return Err(match failure {
                WriteFailure::TooLarge(limit) => CallError::TooLarge { message: request, limit },
                WriteFailure::Full => CallError::Timeout(Some(request)),
                // Not a break of the link: replies the server wrote before it closed may
                // still wait there for other calls. Their reader sees the close after them.
                WriteFailure::Closed => CallError::Disconnected(request),
                // The request comes back; the link's later users see the violation.
                WriteFailure::Violation => {
                    self.break_link(Broken::Violation(CORRUPT.into()));
                    CallError::Disconnected(request)
                }
            });
        }
        request.written();
        if let Err(panic) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(while_waiting)) {
            // The call is forgotten (a reply that still comes is dropped): a panic here must
            // not keep its place among the calls in flight.
            self.lock().calls.cancel(id);
            std::panic::resume_unwind(panic);
        }
        match self.wait_for(deadline, |s| s.calls.take(id)) {
            Ok(Outcome::Reply(message)) => Ok((message, id.0)),
            Ok(Outcome::Failed(error)) => Err(error),
            Err(failure) => {
                self.lock().calls.cancel(id);
                Err(match failure {
                    WaitFailure::Timeout => CallError::Timeout(None),
                    WaitFailure::Broken(broken) => broken.to_error(),
                })
            }
        }
    }

    /// The request back, or the refusal when the link carries datagrams (one-way only) or the
    /// denial when it was granted one-way messages only.
    fn permit_call<R: CallRequest>(&self, request: R) -> Result<R, CallError> {
        if self.spec.delivery == Delivery::Datagrams {
            return Err(CallError::DatagramsOnly(request.into_message()));
        }
        if self.granted.rights.contains(Rights::CALL) {
            Ok(request)
        } else {
            let denied = AccessDenied::new(Operation::Call, self.granted.target.clone());
            Err(CallError::AccessDenied { denied, message: request.into_message() })
        }
    }

    /// The denial of a one-way send on this link.
    pub(crate) fn send_denied(&self) -> AccessDenied {
        AccessDenied::new(Operation::Send, self.granted.target.clone())
    }

    /// Acknowledges a mailbox delivery: an empty one-way frame carrying the pull's
    /// correlation (docs/wire-format.md §2.8). Not counted against any capacity.
    pub(crate) fn acknowledge(&self, correlation: u64) -> Result<(), CallError> {
        let mut ack = Message::new(Vec::new());
        match self.end.write(FrameKind::Oneway, &mut ack, correlation, Wait::Forever) {
            Ok(()) => Ok(()),
            Err(_) => Err(CallError::PeerDied),
        }
    }

    /// Waits until `ready` yields, reading the link when no other thread does.
    fn wait_for<T>(
        &self,
        deadline: Option<Instant>,
        mut ready: impl FnMut(&mut ClientState) -> Option<T>,
    ) -> Result<T, WaitFailure> {
        let mut state = self.lock();
        loop {
            if let Some(value) = ready(&mut state) {
                return Ok(value);
            }
            if let Some(broken) = &state.broken {
                return Err(WaitFailure::Broken(broken.clone()));
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return Err(WaitFailure::Timeout);
            }
            if state.reading {
                state.waiting += 1;
                state = wait_until(&self.changed, state, deadline);
                state.waiting -= 1;
                continue;
            }
            state.reading = true;
            drop(state);
            let read = self.read_frames(Wait::deadline(deadline));
            state = self.lock();
            self.apply(&mut state, read);
        }
    }

    /// Reads and files whatever the link holds now, unless another thread is reading.
    fn read_available(&self) {
        let mut state = self.lock();
        if state.reading || state.broken.is_some() {
            return;
        }
        state.reading = true;
        drop(state);
        let read = self.read_frames(Wait::NonBlocking);
        let mut state = self.lock();
        self.apply(&mut state, read);
    }

    /// Files what a read produced and hands the reading role back.
    fn apply(&self, state: &mut ClientState, read: Result<Vec<Received>, Broken>) {
        state.reading = false;
        let result = read.and_then(|mut frames| {
            let filed = frames.drain(..).try_for_each(|frame| {
                if frame.header.kind == FrameKind::Credit {
                    let credit = Credit::decode(frame.message.body())
                        .map_err(|e| Broken::Violation(e.to_string()))?;
                    state
                        .window
                        .handle_credit(credit)
                        .map_err(|e| Broken::Violation(e.to_string()))?;
                } else {
                    let (correlation, outcome) = outcome_of(frame);
                    // A reply for a call that gave up is dropped (counted by the table).
                    let _ = state.calls.handle_reply(CallId(correlation), outcome);
                }
                Ok(())
            });
            keep_read_vector(frames);
            filed
        });
        if let Err(broken) = result {
            self.break_locked(state, broken);
        }
        self.wake_waiters(state);
    }

    /// Reads until at least one whole frame is here or the wait ends (a large reply arrives in
    /// pieces; nobody needs anything until it is whole).
    fn read_frames(&self, wait: Wait) -> Result<Vec<Received>, Broken> {
        let mut decoder = self.decoder.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut frames = READ_VECTOR.try_with(Cell::take).unwrap_or_default();
        while frames.is_empty() {
            match self.end.link().read_into(&mut decoder, wait) {
                Ok(_) => {}
                Err(TransportError::TimedOut | TransportError::WouldBlock) => return Ok(frames),
                Err(TransportError::Corrupt) => return Err(Broken::Violation(CORRUPT.into())),
                Err(_) => return Err(Broken::PeerDied),
            }
            loop {
                match decoder.poll_frame_with(|header, body| (header, Body::received(body))) {
                    Ok(Some((header, body))) => match header.kind {
                        FrameKind::Credit
                            if header.placement != postbox_core::Placement::Inline =>
                        {
                            return Err(Broken::Violation("server sent a pooled credit".into()));
                        }
                        FrameKind::Reply | FrameKind::ErrorReply | FrameKind::Credit => {
                            frames.push(self.receive(header, body)?)
                        }
                        other => {
                            return Err(Broken::Violation(format!(
                                "server sent a {other:?} frame"
                            )));
                        }
                    },
                    Ok(None) => break,
                    Err(error) => return Err(Broken::Violation(error.to_string())),
                }
            }
        }
        Ok(frames)
    }

    /// The message a frame carries, its payload read in place when the frame is pooled.
    fn receive(&self, header: FrameHeader, body: Body) -> Result<Received, Broken> {
        let message = if header.placement == postbox_core::Placement::Inline {
            Message::received(&header, body)
        } else {
            let in_place = self.read_in_place.load(std::sync::atomic::Ordering::Relaxed);
            self.end.described(&header, &body, self.max_reply, in_place).ok_or_else(|| {
                Broken::Violation("the server described a payload it did not provide".into())
            })?
        };
        Ok(Received { header, message })
    }

    fn break_link(&self, broken: Broken) {
        let mut state = self.lock();
        self.break_locked(&mut state, broken);
        self.wake_waiters(&state);
    }

    /// Fails every waiting call with `broken` (the first reason sticks) and closes the link.
    fn break_locked(&self, state: &mut ClientState, broken: Broken) {
        if state.broken.is_none() {
            state.calls.handle_all(|| Outcome::Failed(broken.to_error()));
            state.broken = Some(broken);
        }
        self.end.close();
    }

    /// Wakes the threads and tasks waiting on this link's state.
    fn wake_waiters(&self, state: &ClientState) {
        if state.waiting > 0 {
            self.changed.notify_all();
        }
        self.readiness.signal();
    }

    /// Messages sent on this link and not yet taken by the receiver, as far as the credits
    /// that arrived tell.
    pub(crate) fn in_flight(&self) -> u64 {
        self.read_available();
        self.lock().window.in_flight().0
    }
}

impl Broken {
    fn to_error(&self) -> CallError {
        match self {
            Self::PeerDied => CallError::PeerDied,
            Self::Violation(what) => CallError::ProtocolViolation(what.clone()),
        }
    }
}

thread_local! {
    /// The vector this thread's last read of a link filled, emptied, for its next read: a
    /// call reads its reply without an allocation.
    static READ_VECTOR: Cell<Vec<Received>> = const { Cell::new(Vec::new()) };
}

/// Keeps `frames` (emptied) for this thread's next read, unless it grew large.
fn keep_read_vector(frames: Vec<Received>) {
    if frames.capacity() <= READ_VECTOR_LIMIT {
        let _ = READ_VECTOR.try_with(|kept| kept.set(frames));
    }
}

/// The most frames a kept read vector has room for.
const READ_VECTOR_LIMIT: usize = 64;

/// How often a sender waiting for credit asks for it again.
const CREDIT_REQUEST_INTERVAL: std::time::Duration = std::time::Duration::from_millis(100);

fn full_or_timeout(wait: Wait) -> OnewayFailure {
    match wait {
        Wait::NonBlocking => OnewayFailure::Full,
        _ => OnewayFailure::Timeout,
    }
}

fn outcome_of(frame: Received) -> (u64, Outcome) {
    let Received { header, message } = frame;
    let outcome = match header.kind {
        FrameKind::ErrorReply => match ReplyErrorCode::from_u32(header.msg_type) {
            ReplyErrorCode::NoReply => Outcome::Failed(CallError::NoReply),
            _ => Outcome::Failed(CallError::Remote(message)),
        },
        _ => Outcome::Reply(message),
    };
    (header.correlation, outcome)
}

impl Drop for ClientLink {
    fn drop(&mut self) {
        self.end.close();
        if let Some(node) = self.node.upgrade() {
            node.report_link_closed(self.id);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use crate::{Broker, BrokerConfig, CallError, Connection, Message, Node, Port};

    /// A port and a connection to it, over shared memory or a Unix socketpair.
    struct Connected {
        port: Port,
        connection: Connection,
        _nodes: [Node; 2],
        _broker: Broker,
    }

    fn connected(shared_memory: bool) -> Connected {
        let broker = Broker::embedded_with(|c: BrokerConfig| c.shared_memory(shared_memory));
        let broker = broker.unwrap();
        let server = broker.node().unwrap();
        let port = server.port("late-close").open().unwrap();
        let client = broker.node().unwrap();
        let connection = client.connect("late-close").unwrap();
        Connected { port, connection, _nodes: [server, client], _broker: broker }
    }

    #[test]
    fn a_reply_written_before_the_server_closed_reaches_its_caller_though_another_call_found_the_link_closed(
    ) {
        for shared_memory in [true, false] {
            let Connected { port, connection, _nodes, _broker } = connected(shared_memory);
            let serving = std::thread::spawn(move || {
                let mut call = port.recv().unwrap();
                call.take_reply_token().unwrap().reply(Message::new("answer")).unwrap();
                // The port goes with its links right after the reply.
                drop(port);
            });
            let other = connection.clone();
            let deadline = Instant::now() + Duration::from_secs(20);
            let reply = connection.call_while(Message::new("question"), Some(deadline), || {
                // Before this caller looks for its reply: the server answered and left, and
                // another user of the connection finds the link closed.
                serving.join().unwrap();
                let late = other.call_timeout("too late", Duration::from_secs(20));
                assert!(matches!(late, Err(CallError::Disconnected(_))), "{late:?}");
            });
            let reply = reply.unwrap_or_else(|e| panic!("shared memory {shared_memory}: {e}"));
            assert_eq!(reply.body(), b"answer");
        }
    }

    #[tokio::test]
    async fn an_async_call_gets_the_reply_written_before_the_server_closed_though_another_found_it_closed(
    ) {
        for shared_memory in [true, false] {
            let Connected { port, connection, _nodes, _broker } = connected(shared_memory);
            let (go, told) = std::sync::mpsc::channel::<()>();
            let serving = std::thread::spawn(move || {
                let mut call = port.recv().unwrap();
                told.recv().unwrap();
                call.take_reply_token().unwrap().reply(Message::new("answer")).unwrap();
                drop(port);
            });
            let mut first = Box::pin(connection.call_async("question"));
            // Polled until its request is out and it waits for the reply (the server holds
            // it).
            let waited = tokio::time::timeout(Duration::from_millis(50), &mut first).await;
            assert!(waited.is_err(), "no reply before the server is told to answer");
            go.send(()).unwrap();
            serving.join().unwrap();
            let late = connection.call_async("too late").await;
            assert!(matches!(late, Err(CallError::Disconnected(_))), "{late:?}");
            let reply = tokio::time::timeout(Duration::from_secs(20), first).await.unwrap();
            let reply = reply.unwrap_or_else(|e| panic!("shared memory {shared_memory}: {e}"));
            assert_eq!(reply.body(), b"answer");
        }
    }
}
