//! What a receive returns: the message, who sent it, and for a call the right to reply once.

use std::sync::Arc;
use std::time::Duration;

use postbox_core::wire::frame::ReplyErrorCode;
use postbox_core::{FrameKind, PeerIdentity};
use postbox_transport::Wait;

use crate::error::SendError;
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
}

impl ReplyToken {
    pub(crate) fn new(link: Arc<ServerLink>, correlation: u64) -> Self {
        Self { link, correlation, answered: false }
    }

    /// Sends `reply` to the caller.
    ///
    /// # Errors
    /// [`SendError::Disconnected`] when the caller is gone (gave up or died),
    /// [`SendError::TooLarge`]; the reply is handed back.
    pub fn reply(mut self, reply: impl Into<Message>) -> Result<(), SendError> {
        self.answered = true;
        self.send(FrameKind::Reply, reply.into())
    }

    /// Answers with an error: the caller gets [`CallError::Remote`](crate::CallError::Remote)
    /// with this message.
    ///
    /// # Errors
    /// As [`reply`](Self::reply).
    pub fn fail(mut self, error: impl Into<Message>) -> Result<(), SendError> {
        self.answered = true;
        let message = error.into().with_type(ReplyErrorCode::Failed.to_u32());
        self.send(FrameKind::ErrorReply, message)
    }

    /// The process waiting for the reply.
    #[must_use]
    pub fn caller(&self) -> ProcessId {
        self.link.client.process_id
    }

    fn send(&self, kind: FrameKind, mut message: Message) -> Result<(), SendError> {
        match self.link.end.write(kind, &mut message, self.correlation, Wait::Forever) {
            Ok(()) => Ok(()),
            Err(WriteFailure::TooLarge(limit)) => Err(SendError::TooLarge { message, limit }),
            Err(WriteFailure::Closed | WriteFailure::Full) => Err(SendError::Disconnected(message)),
        }
    }
}

impl Drop for ReplyToken {
    fn drop(&mut self) {
        if !self.answered {
            let mut message = Message::new(Vec::new()).with_type(ReplyErrorCode::NoReply.to_u32());
            // Best effort within a bound: a caller that stopped reading must not stall the
            // server; if this fails the caller's link is already closed or stuck.
            let wait = Wait::timeout(NO_REPLY_WAIT);
            let _ =
                self.link.end.write(FrameKind::ErrorReply, &mut message, self.correlation, wait);
        }
    }
}

/// How long dropping an unanswered token may wait to tell the caller.
const NO_REPLY_WAIT: Duration = Duration::from_secs(1);
