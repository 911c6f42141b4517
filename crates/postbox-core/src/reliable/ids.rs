//! Identifiers of the reliable host-link protocol: sessions, streams and messages.

use std::fmt;
use std::num::NonZeroU64;

/// One incarnation of one end of a host link.
///
/// Each end picks a fresh id whenever it creates a [`Session`](super::Session) (at broker start,
/// and again after a session ended): 64 random bits from a cryptographically seeded source.
/// Never a timestamp, a counter or a configured constant: a peer that comes back with a
/// different id is a restarted peer whose unacknowledged state is gone, but one that comes
/// back with the *same* id cannot be told from the old incarnation by its id. The session
/// then only notices the contradiction in what the peer reports and ends with
/// [`ProtocolViolation`](super::SessionError::ProtocolViolation), failing what was pending.
/// Zero is reserved on the wire for "not known yet".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionId(NonZeroU64);

impl SessionId {
    /// The id `value`, or `None` for zero (reserved).
    #[must_use]
    pub fn new(value: u64) -> Option<Self> {
        NonZeroU64::new(value).map(Self)
    }

    /// The id as carried on the wire.
    #[must_use]
    pub fn get(self) -> u64 {
        self.0.get()
    }
}

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// One ordered stream inside a session, typically one per pair of ports.
///
/// Reliable streams are independent: a loss on one never delays delivery on another. Datagram
/// streams are a separate namespace (the same number may name one of each).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StreamId(pub u32);

/// The number of a message within its stream: 1 for the first, then consecutive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MessageId(pub u64);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_id_zero_is_reserved() {
        assert_eq!(SessionId::new(0), None);
        assert_eq!(SessionId::new(7).map(SessionId::get), Some(7));
        assert_eq!(SessionId::new(0xab).unwrap().to_string(), "00000000000000ab");
    }
}
