//! A message: header fields the sender may choose, and a body of bytes or a serde value.

use std::sync::atomic::{AtomicU64, Ordering};

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::body::Body;
use postbox_transport::{PoolView, SealedBuilder, SealedError, SealedPayload};

/// A message: a type tag, a priority and a body.
///
/// The `id` is assigned when the message is sent (unique within the sending process); the
/// sender is never a field the sender can set: receivers learn it from the link.
///
/// # Examples
/// ```
/// use postbox::Message;
///
/// let msg = Message::new("hello").with_type(7).with_priority(3);
/// assert_eq!(msg.body(), b"hello");
/// let typed = Message::encode(&(1u32, "two")).unwrap();
/// assert_eq!(typed.decode::<(u32, String)>().unwrap(), (1, "two".to_owned()));
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Message {
    pub(crate) id: u64,
    pub(crate) msg_type: u32,
    pub(crate) priority: u8,
    pub(crate) body: Body,
}

/// Failure of [`Message::encode`] or [`Message::decode`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("message body encoding: {0}")]
pub struct BodyError(String);

impl Message {
    /// A message with these body bytes, type 0, priority 0.
    pub fn new(body: impl Into<Vec<u8>>) -> Self {
        Self { id: 0, msg_type: 0, priority: 0, body: Body::Owned(body.into()) }
    }

    /// A message with a copy of `body`, type 0, priority 0: held in place, without an
    /// allocation, when it is small.
    pub(crate) fn copied(body: &[u8]) -> Self {
        Self { id: 0, msg_type: 0, priority: 0, body: Body::copied(body) }
    }

    /// A message whose body is `value` encoded with postcard (little-endian, portable).
    ///
    /// # Errors
    /// [`BodyError`] when serde refuses the value.
    pub fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Self, BodyError> {
        postcard::to_stdvec(value).map(Self::new).map_err(|e| BodyError(e.to_string()))
    }

    /// Decodes the body as a `T` encoded by [`Message::encode`].
    ///
    /// # Errors
    /// [`BodyError`] when the body is not a valid `T`.
    pub fn decode<T: DeserializeOwned>(&self) -> Result<T, BodyError> {
        postcard::from_bytes(&self.body).map_err(|e| BodyError(e.to_string()))
    }

    /// Sets the type tag (for selective receive).
    #[must_use]
    pub fn with_type(mut self, msg_type: u32) -> Self {
        self.msg_type = msg_type;
        self
    }

    /// Sets the priority, 0 (lowest) to 31 (highest); larger values are clamped to 31.
    #[must_use]
    pub fn with_priority(mut self, priority: u8) -> Self {
        self.priority = priority.min(postbox_core::wire::frame::MAX_PRIORITY);
        self
    }

    /// The body bytes.
    #[must_use]
    pub fn body(&self) -> &[u8] {
        &self.body
    }

    /// The body bytes, to write in place: the way to fill space lent by
    /// [`Connection::loan`](crate::Connection::loan) without copying. A received payload that
    /// is read in place is copied out first.
    #[must_use]
    pub fn body_mut(&mut self) -> &mut [u8] {
        self.body.as_mut_slice()
    }

    /// The body, taken out (copied when it is read in place or lent). A received body of
    /// more than 64 bytes may come in a buffer the receiving thread had kept from a message it
    /// sent (a call's request, a typed reply): its capacity is then at most twice its length,
    /// or 256 bytes.
    #[must_use]
    pub fn into_body(self) -> Vec<u8> {
        self.body.into_vec()
    }

    /// A message whose body is a sealed memory object of its own, `len` bytes written by
    /// `write` before it is sealed: from then on nobody, its sender included, can change it.
    /// Sent on a shared-memory link it travels without a copy, and the receiver checks the
    /// seals before it reads: the way to pass a large payload to a process that does not trust
    /// this one (elsewhere it is copied like any body).
    ///
    /// # Errors
    /// When the operating system refuses the memory object (out of memory or descriptors, or
    /// not supported here).
    pub fn sealed(len: usize, write: impl FnOnce(&mut [u8])) -> std::io::Result<Self> {
        let failed = |e: SealedError| std::io::Error::other(e.to_string());
        let mut builder = SealedBuilder::new(len).map_err(failed)?;
        write(builder.as_mut_slice());
        let payload = builder.seal().map_err(failed)?;
        Ok(Self {
            id: 0,
            msg_type: 0,
            priority: 0,
            body: Body::Sealed(std::sync::Arc::new(payload)),
        })
    }

    /// True when the body is a sealed memory object nobody can change ([`Message::sealed`],
    /// or received as one).
    #[must_use]
    pub fn is_sealed(&self) -> bool {
        self.body.sealed().is_some()
    }

    /// True when the body is shared memory: lent for sending in place, or a received payload
    /// read in place (zero-copy).
    #[must_use]
    pub fn is_zero_copy(&self) -> bool {
        !self.body.is_owned()
    }

    /// The type tag.
    #[must_use]
    pub fn msg_type(&self) -> u32 {
        self.msg_type
    }

    /// The priority.
    #[must_use]
    pub fn priority(&self) -> u8 {
        self.priority
    }

    /// The id the sending process gave it (0 until sent).
    #[must_use]
    pub fn id(&self) -> u64 {
        self.id
    }
}

impl From<&str> for Message {
    fn from(text: &str) -> Self {
        Self::new(text)
    }
}

impl From<Vec<u8>> for Message {
    fn from(body: Vec<u8>) -> Self {
        Self::new(body)
    }
}

impl Message {
    /// The message an inline frame carried, with its body as received.
    pub(crate) fn received(header: &postbox_core::FrameHeader, body: Body) -> Self {
        Self { id: header.id, msg_type: header.msg_type, priority: header.priority, body }
    }

    /// The message a pooled frame announces, its payload read in place.
    pub(crate) fn from_pooled(header: &postbox_core::FrameHeader, view: PoolView) -> Self {
        Self {
            id: header.id,
            msg_type: header.msg_type,
            priority: header.priority,
            body: Body::Viewed(std::sync::Arc::new(view)),
        }
    }

    /// The message a pooled frame announced, its payload copied out.
    pub(crate) fn from_copied(header: &postbox_core::FrameHeader, body: Vec<u8>) -> Self {
        Self {
            id: header.id,
            msg_type: header.msg_type,
            priority: header.priority,
            body: Body::Owned(body),
        }
    }

    /// The message a sealed frame announces.
    pub(crate) fn from_sealed(header: &postbox_core::FrameHeader, payload: SealedPayload) -> Self {
        Self {
            id: header.id,
            msg_type: header.msg_type,
            priority: header.priority,
            body: Body::Sealed(std::sync::Arc::new(payload)),
        }
    }

    /// A message whose body is space lent by a link.
    pub(crate) fn lent(body: Body) -> Self {
        Self { id: 0, msg_type: 0, priority: 0, body }
    }
}

/// The next message id of this process (never 0, never given twice). Each thread takes ids
/// from a block of its own, so threads sending at once do not contend for one counter.
pub(crate) fn next_message_id() -> u64 {
    static NEXT_BLOCK: AtomicU64 = AtomicU64::new(1);
    thread_local! {
        static BLOCK: std::cell::Cell<(u64, u64)> = const { std::cell::Cell::new((0, 0)) };
    }
    BLOCK.with(|block| {
        let (next, end) = block.get();
        let id = if next < end { next } else { NEXT_BLOCK.fetch_add(ID_BLOCK, Ordering::Relaxed) };
        let end = if next < end { end } else { id + ID_BLOCK };
        block.set((id + 1, end));
        id
    })
}

/// Message ids a thread takes at once.
const ID_BLOCK: u64 = 1024;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_ids_are_never_zero_and_never_given_twice_across_threads() {
        let per_thread = 3 * ID_BLOCK as usize + 7;
        let threads: Vec<_> = (0..4)
            .map(|_| {
                std::thread::spawn(move || {
                    (0..per_thread).map(|_| next_message_id()).collect::<Vec<_>>()
                })
            })
            .collect();
        let mut all: Vec<u64> = threads.into_iter().flat_map(|t| t.join().unwrap()).collect();
        assert!(all.iter().all(|&id| id != 0));
        let n = all.len();
        all.sort_unstable();
        all.dedup();
        assert_eq!(all.len(), n, "an id was given twice");
    }
}
