//! A connection: the sending side of one link to a port or an inbox, with calls matched to
//! their replies by correlation id.
//!
//! Replies are read by whichever calling thread is waiting (leader/follower): one thread at a
//! time reads the link and files every reply it finds in the call table, waking the others.
//! No background thread sits between the socket and the caller.

use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use postbox_core::wire::frame::ReplyErrorCode;
use postbox_core::{CallId, CallTable, Frame, FrameDecoder, FrameKind, LinkId, PeerIdentity};
use postbox_transport::{TransportError, UnixLink, Wait};

use crate::condvar::wait_until;
use crate::error::{CallError, SendError, SendTimeoutError, TrySendError};
use crate::link::{LinkEnd, WriteFailure};
use crate::node::NodeShared;
use crate::{Message, ProcessId};

/// The sending side of a link to one port or inbox. Cheap to clone; usable from many threads.
///
/// Made by [`Node::connect`](crate::Node::connect) (a named port) or
/// [`Node::connect_inbox`](crate::Node::connect_inbox) (a node's inbox). Data flows straight
/// to the serving process; the broker is not involved after set-up.
#[derive(Debug, Clone)]
pub struct Connection {
    inner: Arc<ConnectionInner>,
}

#[derive(Debug)]
struct ConnectionInner {
    end: LinkEnd,
    link: LinkId,
    server: PeerIdentity,
    state: Mutex<CallState>,
    replies: Condvar,
    decoder: Mutex<FrameDecoder>,
    node: Weak<NodeShared>,
}

#[derive(Debug)]
struct CallState {
    calls: CallTable<Outcome>,
    reading: bool,
    broken: Option<Broken>,
    /// Threads blocked on `replies`: notifying costs a system call, so only when there are any.
    waiting: usize,
}

#[derive(Debug, Clone)]
enum Outcome {
    Reply(Message),
    Failed(CallError),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Broken {
    PeerDied,
    Violation(String),
}

impl Connection {
    pub(crate) fn new(
        link: UnixLink,
        id: LinkId,
        server: PeerIdentity,
        max_body: u32,
        node: Weak<NodeShared>,
    ) -> Self {
        let inner = ConnectionInner {
            end: LinkEnd::new(link, max_body),
            link: id,
            server,
            state: Mutex::new(CallState {
                calls: CallTable::new(),
                reading: false,
                broken: None,
                waiting: 0,
            }),
            replies: Condvar::new(),
            decoder: Mutex::new(FrameDecoder::new(max_body)),
            node,
        };
        Self { inner: Arc::new(inner) }
    }

    /// The process serving the other end.
    #[must_use]
    pub fn server(&self) -> ProcessId {
        self.inner.server.process_id
    }

    /// The serving process's identity (kernel credentials as the broker saw them).
    #[must_use]
    pub fn server_identity(&self) -> PeerIdentity {
        self.inner.server
    }

    /// True once the link is known to be closed (the server is gone or broke the protocol).
    #[must_use]
    pub fn is_closed(&self) -> bool {
        self.inner.end.is_closed()
    }

    /// Sends a one-way message, blocking while the link is full.
    ///
    /// Returns once the message is in the link.
    ///
    /// # Errors
    /// [`SendError::Disconnected`] when the server is gone, [`SendError::TooLarge`]; the
    /// message is handed back.
    pub fn send(&self, message: impl Into<Message>) -> Result<(), SendError> {
        let mut message = message.into();
        match self.inner.end.write(FrameKind::Oneway, &mut message, 0, Wait::Forever) {
            Ok(()) => Ok(()),
            Err(WriteFailure::TooLarge(limit)) => Err(SendError::TooLarge { message, limit }),
            Err(WriteFailure::Closed | WriteFailure::Full) => Err(SendError::Disconnected(message)),
        }
    }

    /// Sends a one-way message if the link has room now.
    ///
    /// # Errors
    /// [`TrySendError::Full`], [`TrySendError::Disconnected`], [`TrySendError::TooLarge`];
    /// the message is handed back.
    pub fn try_send(&self, message: impl Into<Message>) -> Result<(), TrySendError> {
        let mut message = message.into();
        match self.inner.end.write(FrameKind::Oneway, &mut message, 0, Wait::NonBlocking) {
            Ok(()) => Ok(()),
            Err(WriteFailure::TooLarge(limit)) => Err(TrySendError::TooLarge { message, limit }),
            Err(WriteFailure::Full) => Err(TrySendError::Full(message)),
            Err(WriteFailure::Closed) => Err(TrySendError::Disconnected(message)),
        }
    }

    /// Sends a one-way message, waiting at most `timeout` for room in the link.
    ///
    /// # Errors
    /// [`SendTimeoutError`], with the message.
    pub fn send_timeout(
        &self,
        message: impl Into<Message>,
        timeout: Duration,
    ) -> Result<(), SendTimeoutError> {
        self.send_wait(message.into(), Wait::timeout(timeout))
    }

    /// Sends a one-way message, waiting until `deadline` at most for room in the link.
    ///
    /// # Errors
    /// [`SendTimeoutError`], with the message.
    pub fn send_deadline(
        &self,
        message: impl Into<Message>,
        deadline: Instant,
    ) -> Result<(), SendTimeoutError> {
        self.send_wait(message.into(), Wait::Until(deadline))
    }

    fn send_wait(&self, mut message: Message, wait: Wait) -> Result<(), SendTimeoutError> {
        match self.inner.end.write(FrameKind::Oneway, &mut message, 0, wait) {
            Ok(()) => Ok(()),
            Err(WriteFailure::TooLarge(limit)) => {
                Err(SendTimeoutError::TooLarge { message, limit })
            }
            Err(WriteFailure::Full) => Err(SendTimeoutError::Timeout(message)),
            Err(WriteFailure::Closed) => Err(SendTimeoutError::Disconnected(message)),
        }
    }

    /// Sends `request` and waits for the reply, however long it takes.
    ///
    /// If the server dies meanwhile the call fails with [`CallError::PeerDied`] at once (the
    /// kernel closes its end of the link); no timeout is needed for that.
    ///
    /// # Errors
    /// [`CallError`]; when the request was not sent it is handed back.
    pub fn call(&self, request: impl Into<Message>) -> Result<Message, CallError> {
        self.call_wait(request.into(), None)
    }

    /// Like [`call`](Self::call), giving up after `timeout`.
    ///
    /// # Errors
    /// [`CallError::Timeout`] when no reply came in time, and the others of [`call`](Self::call).
    pub fn call_timeout(
        &self,
        request: impl Into<Message>,
        timeout: Duration,
    ) -> Result<Message, CallError> {
        self.call_wait(request.into(), Instant::now().checked_add(timeout))
    }

    /// Like [`call`](Self::call), giving up at `deadline`.
    ///
    /// # Errors
    /// [`CallError::Timeout`] when no reply came in time, and the others of [`call`](Self::call).
    pub fn call_deadline(
        &self,
        request: impl Into<Message>,
        deadline: Instant,
    ) -> Result<Message, CallError> {
        self.call_wait(request.into(), Some(deadline))
    }

    fn call_wait(
        &self,
        mut request: Message,
        deadline: Option<Instant>,
    ) -> Result<Message, CallError> {
        let inner = &self.inner;
        let id = {
            let mut state = inner.lock_state();
            if state.broken.is_some() {
                return Err(CallError::Disconnected(request));
            }
            state.calls.begin(deadline)
        };
        let wait = Wait::deadline(deadline);
        if let Err(failure) = inner.end.write(FrameKind::Call, &mut request, id.0, wait) {
            inner.lock_state().calls.cancel(id);
            return Err(match failure {
                WriteFailure::TooLarge(limit) => CallError::TooLarge { message: request, limit },
                WriteFailure::Full => CallError::Timeout(Some(request)),
                WriteFailure::Closed => {
                    inner.break_link(Broken::PeerDied);
                    CallError::Disconnected(request)
                }
            });
        }
        inner.await_reply(id, deadline)
    }
}

impl ConnectionInner {
    fn lock_state(&self) -> MutexGuard<'_, CallState> {
        // The state is consistent between statements; a panicking holder leaves it usable.
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn await_reply(&self, id: CallId, deadline: Option<Instant>) -> Result<Message, CallError> {
        let mut state = self.lock_state();
        loop {
            if let Some(outcome) = state.calls.take(id) {
                return match outcome {
                    Outcome::Reply(message) => Ok(message),
                    Outcome::Failed(error) => Err(error),
                };
            }
            if let Some(error) = state.broken.as_ref().map(Broken::to_error) {
                state.calls.cancel(id);
                return Err(error);
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                state.calls.cancel(id);
                return Err(CallError::Timeout(None));
            }
            if state.reading {
                state.waiting += 1;
                state = wait_until(&self.replies, state, deadline);
                state.waiting -= 1;
                continue;
            }
            state.reading = true;
            drop(state);
            let read = self.read_replies(Wait::deadline(deadline));
            state = self.lock_state();
            state.reading = false;
            match read {
                Ok(frames) => {
                    for frame in frames {
                        let outcome = outcome_of(frame);
                        // A reply for a call that gave up is dropped (counted by the table).
                        let _ = state.calls.handle_reply(CallId(outcome.0), outcome.1);
                    }
                }
                Err(broken) => {
                    state.broken = Some(broken.clone());
                    state.calls.handle_all(|| Outcome::Failed(broken.to_error()));
                    self.end.close();
                }
            }
            if state.waiting > 0 {
                self.replies.notify_all();
            }
        }
    }

    /// Reads what the link has (waiting up to `wait`) and returns the reply frames.
    fn read_replies(&self, wait: Wait) -> Result<Vec<Frame>, Broken> {
        let mut decoder = self.decoder.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        match self.end.link().read_into(&mut decoder, wait) {
            Ok(_) => {}
            Err(TransportError::TimedOut | TransportError::WouldBlock) => return Ok(Vec::new()),
            Err(_) => return Err(Broken::PeerDied),
        }
        let mut frames = Vec::new();
        loop {
            match decoder.poll_frame() {
                Ok(Some(frame)) => match frame.header.kind {
                    FrameKind::Reply | FrameKind::ErrorReply => frames.push(frame),
                    other => {
                        return Err(Broken::Violation(format!("server sent a {other:?} frame")))
                    }
                },
                Ok(None) => return Ok(frames),
                Err(error) => return Err(Broken::Violation(error.to_string())),
            }
        }
    }

    fn break_link(&self, broken: Broken) {
        let mut state = self.lock_state();
        if state.broken.is_none() {
            state.broken = Some(broken.clone());
            state.calls.handle_all(|| Outcome::Failed(broken.to_error()));
        }
        self.end.close();
        if state.waiting > 0 {
            self.replies.notify_all();
        }
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

fn outcome_of(frame: Frame) -> (u64, Outcome) {
    let header = frame.header;
    let message = Message::from_frame(frame);
    let outcome = match header.kind {
        FrameKind::ErrorReply => match ReplyErrorCode::from_u32(header.msg_type) {
            ReplyErrorCode::NoReply => Outcome::Failed(CallError::NoReply),
            _ => Outcome::Failed(CallError::Remote(message)),
        },
        _ => Outcome::Reply(message),
    };
    (header.correlation, outcome)
}

impl Drop for ConnectionInner {
    fn drop(&mut self) {
        self.end.close();
        if let Some(node) = self.node.upgrade() {
            node.report_link_closed(self.link);
        }
    }
}
