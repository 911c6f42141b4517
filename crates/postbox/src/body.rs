//! Where a message's bytes are: in this process, in a payload pool lent for sending (written
//! in place), in a payload pool received (read in place, handed back when dropped), or in a
//! sealed memory object of their own.

use std::sync::Arc;

use postbox_core::FrameBody;
use postbox_transport::{Link, PoolLoan, PoolView, SealedPayload};

use crate::spare;

/// A message body.
#[derive(Debug)]
pub(crate) enum Body {
    /// Bytes this process owns.
    Owned(Vec<u8>),
    /// A few received bytes this process owns, kept without an allocation.
    Small(SmallBody),
    /// Space lent by a link's payload pool, not sent yet.
    Lent(Lent),
    /// A received payload, read in place in the sender's pool.
    Viewed(Arc<PoolView>),
    /// A sealed memory object of its own: nobody can change it, so it is shared (sent or
    /// received) without copying, even between processes that do not trust each other.
    Sealed(Arc<SealedPayload>),
}

/// Up to [`SMALL_BODY`] bytes, in place.
///
/// Aligned as a `Vec` is, so that every variant of [`Body`] starts at the same offset: with
/// the bytes right after the enum's tag, building an owned body wrote its vector at an odd
/// offset that a move then read back in other pieces, a store-forwarding stall of about 8 ns
/// per message built (`perf annotate` of `Message::new`).
#[derive(Debug, Clone, Copy)]
#[repr(align(8))]
pub(crate) struct SmallBody {
    len: u8,
    bytes: [u8; SMALL_BODY],
}

/// Space lent by a link: goes back to the link unless sent on it.
#[derive(Debug)]
pub(crate) struct Lent {
    /// `None` once sent (the receiver owns the space until it hands it back).
    loan: Option<PoolLoan>,
    link: Arc<Link>,
}

impl Body {
    /// A received frame's body: kept in place when small, else in an allocation.
    pub(crate) fn received(body: FrameBody<'_>) -> Self {
        match body {
            FrameBody::Borrowed(bytes) if bytes.len() <= SMALL_BODY => {
                let mut small = SmallBody { len: bytes.len() as u8, bytes: [0; SMALL_BODY] };
                small.bytes[..bytes.len()].copy_from_slice(bytes);
                Self::Small(small)
            }
            // A body as large as the ones this thread builds or sends (a typed request or
            // reply) goes into a buffer the thread kept from one of those: no allocation.
            FrameBody::Borrowed(bytes) if bytes.len() <= spare::SPARE_LIMIT => {
                Self::Owned(spare::copy_of(bytes))
            }
            body => Self::Owned(body.into_vec()),
        }
    }

    /// A copy of `bytes`: in place when small, else in an allocation (as if received).
    pub(crate) fn copied(bytes: &[u8]) -> Self {
        Self::received(FrameBody::Borrowed(bytes))
    }

    /// Lent space on `link`.
    pub(crate) fn lent(loan: PoolLoan, link: Arc<Link>) -> Self {
        Self::Lent(Lent { loan: Some(loan), link })
    }

    /// The bytes, writable; a received payload is copied out first (the sender's pool is not
    /// ours to write).
    pub(crate) fn as_mut_slice(&mut self) -> &mut [u8] {
        if matches!(self, Self::Viewed(_) | Self::Sealed(_)) {
            *self = Self::Owned(self.to_vec());
        }
        match self {
            Self::Owned(bytes) => bytes,
            Self::Small(small) => &mut small.bytes[..usize::from(small.len)],
            Self::Lent(lent) => lent.loan.as_mut().map_or(&mut [], PoolLoan::as_mut_slice),
            Self::Viewed(_) | Self::Sealed(_) => unreachable!("replaced by an owned copy above"),
        }
    }

    /// The bytes as a vector of this process (copied unless they are one already).
    pub(crate) fn owned_mut(&mut self) -> &mut Vec<u8> {
        if !matches!(self, Self::Owned(_)) {
            *self = Self::Owned(self.to_vec());
        }
        match self {
            Self::Owned(bytes) => bytes,
            _ => unreachable!("made owned above"),
        }
    }

    /// Takes the bytes out (copied unless they are owned).
    pub(crate) fn into_vec(mut self) -> Vec<u8> {
        std::mem::take(self.owned_mut())
    }

    /// The loan to send in place when this body was lent by `link` (and not sent yet).
    pub(crate) fn loan_for(&self, link: &Arc<Link>) -> Option<&PoolLoan> {
        match self {
            Self::Lent(lent) if Arc::ptr_eq(&lent.link, link) => lent.loan.as_ref(),
            _ => None,
        }
    }

    /// True for bytes this process owns (not lent, received in place or sealed).
    pub(crate) fn is_owned(&self) -> bool {
        matches!(self, Self::Owned(_) | Self::Small(_))
    }

    /// The sealed payload, when the body is one.
    pub(crate) fn sealed(&self) -> Option<&SealedPayload> {
        match self {
            Self::Sealed(payload) => Some(payload),
            _ => None,
        }
    }

    /// Records that the lent space was sent: it now belongs to the receiver.
    pub(crate) fn mark_sent(&mut self) {
        if let Self::Lent(lent) = self {
            lent.loan = None;
        }
    }
}

impl std::ops::Deref for Body {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        match self {
            Self::Owned(bytes) => bytes,
            Self::Small(small) => &small.bytes[..usize::from(small.len)],
            Self::Lent(lent) => lent.loan.as_ref().map_or(&[], PoolLoan::as_slice),
            Self::Viewed(view) => view.as_slice(),
            Self::Sealed(payload) => payload.as_slice(),
        }
    }
}

impl Clone for Body {
    /// A received payload is shared; lent space is copied (two messages must not send one
    /// loan).
    fn clone(&self) -> Self {
        match self {
            Self::Viewed(view) => Self::Viewed(Arc::clone(view)),
            Self::Sealed(payload) => Self::Sealed(Arc::clone(payload)),
            Self::Small(small) => Self::Small(*small),
            other => Self::Owned(other.to_vec()),
        }
    }
}

impl PartialEq for Body {
    fn eq(&self, other: &Self) -> bool {
        **self == **other
    }
}

impl Eq for Body {}

impl Default for Body {
    fn default() -> Self {
        Self::Owned(Vec::new())
    }
}

impl Drop for Lent {
    fn drop(&mut self) {
        if let Some(loan) = self.loan.take() {
            self.link.cancel(loan);
        }
    }
}

/// Largest body kept without an allocation of its own (received, or copied in): a [`Body`]
/// is 72 bytes. A larger bound (119 bytes, a 128-byte `Body`, enough for the typed echo of 64
/// bytes) made every message slower to move than the allocations it saved
/// (docs/benchmarks.md, "Small typed frames without allocations").
pub(crate) const SMALL_BODY: usize = 64;
