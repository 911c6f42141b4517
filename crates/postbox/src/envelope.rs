//! What a receive returns: the message, who sent it, and for a call the right to reply once.

use std::sync::Arc;
use std::time::Duration;

use postbox_core::wire::frame::ReplyErrorCode;
use postbox_core::{FrameKind, PeerIdentity};
use postbox_transport::Wait;

use crate::error::{LoanError, SendError};
use crate::feed::OpenFeedError;
use crate::link::WriteFailure;
use crate::receiver::ServerLink;
use crate::{Message, ProcessId};

/// A received message, its sender, and for a call its [`ReplyToken`].
///
/// The sender is set by the system from the link the message arrived on, never by the
/// sending process.
#[derive(Debug)]
pub struct Envelope {
    pub(crate) message: Message,
    pub(crate) sender: PeerIdentity,
    pub(crate) reply: Option<ReplyToken>,
    pub(crate) lost: u64,
    pub(crate) topic: Option<String>,
}

/// A send-once right to answer one call.
///
/// Dropped without a reply, the caller's call fails with
/// [`CallError::NoReply`](crate::CallError::NoReply), never a hang.
#[derive(Debug)]
pub struct ReplyToken {
    link: Arc<ServerLink>,
    correlation: u64,
    answered: bool,
    /// When the call was read off its link (for deadlines counted from arrival).
    arrived: std::time::Instant,
}

impl ReplyToken {
    /// Space for a reply payload of `len` bytes in the link's shared payload pool, to fill
    /// in place ([`Message::body_mut`]) and pass to [`reply`](Self::reply): the caller reads it
    /// where it lies. See [`Connection::loan`](crate::Connection::loan).
    ///
    /// # Errors
    /// [`LoanError`].
    pub fn loan(&self, len: usize) -> Result<Message, LoanError> {
        self.link.end.lend(len, Wait::timeout(crate::REPLY_WAIT))
    }

    /// The link the call came on.
    pub(crate) fn server_link(&self) -> &Arc<ServerLink> {
        &self.link
    }
}

impl Envelope {
    /// The message.
    #[must_use]
    pub fn message(&self) -> &Message {
        &self.message
    }

    /// The message, taken out (for a call, take the token first with
    /// [`take_reply_token`](Self::take_reply_token) or use [`reply`](Self::reply)).
    #[must_use]
    pub fn into_message(self) -> Message {
        self.message
    }

    /// The body bytes.
    #[must_use]
    pub fn body(&self) -> &[u8] {
        &self.message.body
    }

    /// Who sent it.
    #[must_use]
    pub fn sender(&self) -> ProcessId {
        self.sender.process_id
    }

    /// Who sent it, with the kernel credentials the broker saw.
    #[must_use]
    pub fn sender_identity(&self) -> PeerIdentity {
        self.sender
    }

    /// Messages lost since the previous envelope the port handed out: the gap before this
    /// one. Dropped by the port (overflow policy drop-oldest) or its sender, or, on a datagram
    /// port, lost on the way from another host or dropped there for want of room
    /// ([`PortBuilder::datagrams`](crate::PortBuilder::datagrams)). Zero when nothing was lost.
    #[must_use]
    pub fn lost(&self) -> u64 {
        self.lost
    }

    /// For a message received by a subscription: the topic it was published to.
    #[must_use]
    pub fn topic(&self) -> Option<&str> {
        self.topic.as_deref()
    }

    /// True when the sender waits for a reply.
    #[must_use]
    pub fn is_call(&self) -> bool {
        self.reply.is_some()
    }

    /// Takes the reply token, to answer later or from another thread.
    pub fn take_reply_token(&mut self) -> Option<ReplyToken> {
        self.reply.take()
    }

    /// Answers the call this envelope carries.
    ///
    /// # Errors
    /// [`SendError::Disconnected`] when the caller is gone or this was not a call (the reply is
    /// handed back), [`SendError::TooLarge`].
    pub fn reply(mut self, reply: impl Into<Message>) -> Result<(), SendError> {
        match self.reply.take() {
            Some(token) => token.reply(reply),
            None => Err(SendError::Disconnected(reply.into())),
        }
    }

    /// True when this is a request to open a feed ([`Connection::open_feed`]): a call of
    /// type [`FEED_MSG_TYPE`](crate::FEED_MSG_TYPE).
    ///
    /// [`Connection::open_feed`]: crate::Connection::open_feed
    #[must_use]
    pub fn is_feed_request(&self) -> bool {
        self.reply.is_some() && self.message.msg_type() == crate::FEED_MSG_TYPE
    }

    /// Accepts the feed this envelope asks for: the receiving end of the link's feed, for
    /// one thread. The caller's [`open_feed`](crate::Connection::open_feed) returns once this
    /// answered. Dropping the envelope instead refuses the feed.
    ///
    /// # Errors
    /// [`OpenFeedError::NotAFeedRequest`], [`OpenFeedError::AccessDenied`] (the client may
    /// not send one-way messages; it hears `Refused`), [`OpenFeedError::Taken`],
    /// [`OpenFeedError::NotShared`], [`OpenFeedError::PeerDied`] (the caller gave up).
    pub fn accept_feed(self) -> Result<crate::FeedReceiver, OpenFeedError> {
        crate::feed::accept(self)
    }
}

impl ReplyToken {
    pub(crate) fn new(
        link: Arc<ServerLink>,
        correlation: u64,
        arrived: std::time::Instant,
    ) -> Self {
        Self { link, correlation, answered: false, arrived }
    }

    /// When the call was read off its link: it may have waited in the port's queue since.
    #[must_use]
    pub fn arrived(&self) -> std::time::Instant {
        self.arrived
    }

    /// Sends `reply` to the caller.
    ///
    /// # Errors
    /// [`SendError::Disconnected`] when the caller is gone, or stopped reading its link for
    /// longer than [`REPLY_WAIT`] (its link is then closed and its call fails with
    /// `PeerDied`); [`SendError::TooLarge`], after which the caller's call fails with
    /// [`CallError::Remote`](crate::CallError::Remote) saying so. The reply is handed back.
    pub fn reply(self, reply: impl Into<Message>) -> Result<(), SendError> {
        self.reply_returning(reply.into()).map(drop)
    }

    /// Like [`reply`](Self::reply), handing the reply back once written, so that its buffer
    /// may serve again.
    pub(crate) fn reply_returning(mut self, reply: Message) -> Result<Message, SendError> {
        let result = self.send(FrameKind::Reply, reply);
        self.settle(result.as_ref().err());
        result
    }

    /// Like [`reply`](Self::reply), for a reply body of bytes the server holds, shorter than
    /// [`POOL_THRESHOLD`](crate::link::POOL_THRESHOLD) (a typed reply): written from them,
    /// without a [`Message`]. An error hands back a copy.
    pub(crate) fn reply_bytes(mut self, body: &[u8]) -> Result<(), SendError> {
        let written = self.link.end.write_bytes(
            FrameKind::Reply,
            0,
            body,
            self.correlation,
            Wait::timeout(REPLY_WAIT),
        );
        // A credit skipped while this reply held the link goes out now.
        self.link.flush_credit(true);
        let result = written.map_err(|failure| self.failed(failure, Message::new(body)));
        self.settle(result.as_ref().err());
        result
    }

    /// Answers with an error: the caller gets [`CallError::Remote`](crate::CallError::Remote)
    /// with this message.
    ///
    /// # Errors
    /// As [`reply`](Self::reply).
    pub fn fail(mut self, error: impl Into<Message>) -> Result<(), SendError> {
        let message = error.into().with_type(ReplyErrorCode::Failed.to_u32());
        let result = self.send(FrameKind::ErrorReply, message);
        self.settle(result.as_ref().err());
        result.map(drop)
    }

    /// Like [`reply`](Self::reply), without blocking the thread (tokio) while the caller's
    /// link is full.
    ///
    /// # Errors
    /// As [`reply`](Self::reply) (no time limit applies: wrap it in `tokio::time::timeout`).
    pub async fn reply_async(mut self, reply: impl Into<Message>) -> Result<(), SendError> {
        let mut message = reply.into();
        // Watched from now on (adding it twice is harmless).
        self.link.end.watch(&self.link.readiness);
        loop {
            match self.link.end.write(
                FrameKind::Reply,
                &mut message,
                self.correlation,
                Wait::NonBlocking,
            ) {
                Ok(()) => {
                    self.answered = true;
                    self.link.flush_credit(true);
                    return Ok(());
                }
                Err(WriteFailure::Full) => {
                    if self.link.readiness.wait().await.is_err() {
                        self.answered = true;
                        return Err(SendError::Disconnected(message));
                    }
                }
                Err(WriteFailure::TooLarge(limit)) => {
                    let error = SendError::TooLarge { message, limit };
                    self.settle(Some(&error));
                    return Err(error);
                }
                Err(WriteFailure::Closed | WriteFailure::Violation) => {
                    self.answered = true;
                    return Err(SendError::Disconnected(message));
                }
            }
        }
    }

    /// The process waiting for the reply.
    #[must_use]
    pub fn caller(&self) -> ProcessId {
        self.link.client.process_id
    }

    /// Writes `message` as a `kind` frame, and hands it back, written or not.
    fn send(&self, kind: FrameKind, mut message: Message) -> Result<Message, SendError> {
        let written =
            self.link.end.write(kind, &mut message, self.correlation, Wait::timeout(REPLY_WAIT));
        // A credit skipped while this reply held the link goes out now.
        self.link.flush_credit(true);
        match written {
            Ok(()) => Ok(message),
            Err(failure) => Err(self.failed(failure, message)),
        }
    }

    /// The error of a reply `message` whose write failed with `failure`.
    fn failed(&self, failure: WriteFailure, message: Message) -> SendError {
        match failure {
            WriteFailure::TooLarge(limit) => SendError::TooLarge { message, limit },
            WriteFailure::Full => {
                // The caller has not read its link for REPLY_WAIT: a reply may never fit, and
                // a server thread must not wait on it forever.
                self.link.end.close();
                SendError::Disconnected(message)
            }
            WriteFailure::Closed | WriteFailure::Violation => SendError::Disconnected(message),
        }
    }

    /// Makes sure the caller learns the outcome, whatever happened to the reply.
    fn settle(&mut self, error: Option<&SendError>) {
        if let Some(SendError::TooLarge { message, limit }) = error {
            let note =
                format!("reply of {} bytes exceeds the limit of {limit}", message.body.len());
            let note = Message::new(note).with_type(ReplyErrorCode::Failed.to_u32());
            // If even this fails, the link was closed and the caller sees PeerDied.
            let _ = self.send(FrameKind::ErrorReply, note);
        }
        self.answered = true;
    }
}

impl Drop for ReplyToken {
    fn drop(&mut self) {
        if !self.answered {
            let mut message = Message::new(Vec::new()).with_type(ReplyErrorCode::NoReply.to_u32());
            let wait = Wait::timeout(NO_REPLY_WAIT);
            let sent =
                self.link.end.write(FrameKind::ErrorReply, &mut message, self.correlation, wait);
            if sent.is_err() {
                // The caller would wait for an answer that cannot reach it: closing the link
                // turns that wait into PeerDied.
                self.link.end.close();
            }
        }
    }
}

/// How long a reply may wait for room in the caller's link before the link is closed.
pub const REPLY_WAIT: Duration = Duration::from_secs(10);

/// How long dropping an unanswered token may wait to tell the caller.
const NO_REPLY_WAIT: Duration = Duration::from_secs(1);
