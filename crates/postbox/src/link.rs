//! The data path of one connection as either side sees it: frame writing, serialised between
//! threads, over a Unix stream link.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use postbox_core::{FrameHeader, FrameKind};
use postbox_transport::{TransportError, UnixLink, Wait};

use crate::message::next_message_id;
use crate::Message;

/// One end of a link, shared by every thread that writes to it.
#[derive(Debug)]
pub(crate) struct LinkEnd {
    link: UnixLink,
    write_lock: Mutex<()>,
    max_body: u32,
    closed: AtomicBool,
}

/// Why a frame was not written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WriteFailure {
    /// The body is over the limit (nothing written).
    TooLarge(u32),
    /// The peer is gone (nothing delivered).
    Closed,
    /// No room before the wait ended (nothing delivered).
    Full,
}

impl LinkEnd {
    pub(crate) fn new(link: UnixLink, max_body: u32) -> Self {
        Self { link, write_lock: Mutex::new(()), max_body, closed: AtomicBool::new(false) }
    }

    /// Writes `message` as one frame of `kind`; gives it a fresh id unless it is a reply.
    pub(crate) fn write(
        &self,
        kind: FrameKind,
        message: &mut Message,
        correlation: u64,
        wait: Wait,
    ) -> Result<(), WriteFailure> {
        let Ok(body_len) = u32::try_from(message.body.len()) else {
            return Err(WriteFailure::TooLarge(self.max_body));
        };
        if body_len > self.max_body {
            return Err(WriteFailure::TooLarge(self.max_body));
        }
        if self.is_closed() {
            return Err(WriteFailure::Closed);
        }
        message.id = next_message_id();
        let header = FrameHeader {
            kind,
            priority: message.priority,
            msg_type: message.msg_type,
            id: message.id,
            correlation,
            body_len,
        }
        .encode(&message.body);
        // A poisoned lock only means another writer panicked; the link itself is still whole
        // because a frame is either fully written or the link is shut down.
        let _guard = self.write_lock.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        match self.link.write_frame(&header, &message.body, wait) {
            Ok(()) => Ok(()),
            Err(TransportError::WouldBlock | TransportError::TimedOut) => Err(WriteFailure::Full),
            Err(TransportError::Stalled) => {
                self.close();
                Err(WriteFailure::Full)
            }
            Err(_) => {
                self.close();
                Err(WriteFailure::Closed)
            }
        }
    }

    pub(crate) fn link(&self) -> &UnixLink {
        &self.link
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Marks the link dead and shuts it down, so the peer sees it close at once.
    pub(crate) fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.link.shutdown();
    }
}

impl Drop for LinkEnd {
    fn drop(&mut self) {
        self.link.shutdown();
    }
}
