//! What a node may do with a name: operations, link rights, and the typed denial.
//!
//! The broker decides from the node's kernel credentials and its policy (DESIGN.md §4); this
//! module only names the decisions, so that the broker, the nodes and the wire agree on them.

use std::fmt;

/// An operation the broker's policy grants or denies, per name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Operation {
    /// Open a port under the name.
    Register,
    /// Send one-way messages to the port, mailbox or topic (publish).
    Send,
    /// Call the port (send requests and wait for replies).
    Call,
    /// Receive from the mailbox.
    Receive,
    /// Subscribe to the topic or topic pattern.
    Subscribe,
    /// Create or unlink the mailbox or topic.
    Manage,
}

impl Operation {
    /// Every operation, in wire order.
    pub const ALL: [Self; 6] =
        [Self::Register, Self::Send, Self::Call, Self::Receive, Self::Subscribe, Self::Manage];

    /// The operation's name, as policy files and messages spell it.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Register => "register",
            Self::Send => "send",
            Self::Call => "call",
            Self::Receive => "receive",
            Self::Subscribe => "subscribe",
            Self::Manage => "manage",
        }
    }

    /// The operation a policy file names `text`.
    #[must_use]
    pub fn from_name(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|op| op.as_str() == text)
    }

    /// The operation's wire code.
    #[must_use]
    pub fn to_u8(self) -> u8 {
        match self {
            Self::Register => 1,
            Self::Send => 2,
            Self::Call => 3,
            Self::Receive => 4,
            Self::Subscribe => 5,
            Self::Manage => 6,
        }
    }

    /// The operation with wire code `code`.
    #[must_use]
    pub fn from_u8(code: u8) -> Option<Self> {
        Self::ALL.into_iter().find(|op| op.to_u8() == code)
    }
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the client end of one link may carry: one-way messages, calls, or both. The broker
/// grants them when it makes the link and tells both ends; the server drops a link that
/// carries what it was not granted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Rights(u8);

impl Rights {
    /// Nothing.
    pub const NONE: Self = Self(0);
    /// One-way messages.
    pub const SEND: Self = Self(1);
    /// Calls.
    pub const CALL: Self = Self(2);
    /// One-way messages and calls.
    pub const ALL: Self = Self(3);

    /// True when every right of `other` is in `self`.
    #[must_use]
    pub fn contains(self, other: Self) -> bool {
        self.0 & other.0 == other.0
    }

    /// The rights in both.
    #[must_use]
    pub fn intersection(self, other: Self) -> Self {
        Self(self.0 & other.0)
    }

    /// The rights in either.
    #[must_use]
    pub fn union(self, other: Self) -> Self {
        Self(self.0 | other.0)
    }

    /// True when no right is granted.
    #[must_use]
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The right an operation needs on a link, if it is a link right.
    #[must_use]
    pub fn for_operation(operation: Operation) -> Self {
        match operation {
            Operation::Send => Self::SEND,
            Operation::Call => Self::CALL,
            _ => Self::NONE,
        }
    }

    /// The wire byte.
    #[must_use]
    pub fn to_u8(self) -> u8 {
        self.0
    }

    /// Reads the wire byte; `None` when it has bits this build does not know.
    #[must_use]
    pub fn from_u8(bits: u8) -> Option<Self> {
        (bits & !Self::ALL.0 == 0).then_some(Self(bits))
    }
}

impl fmt::Display for Rights {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.contains(Self::SEND), self.contains(Self::CALL)) {
            (true, true) => f.write_str("send+call"),
            (true, false) => f.write_str("send"),
            (false, true) => f.write_str("call"),
            (false, false) => f.write_str("none"),
        }
    }
}

/// What one client may have waiting at a server on one link, set by the broker's policy and
/// told to both ends: the client refuses calls beyond `calls_in_flight` with a clear error,
/// and the server stops reading a link that has more waiting (so a client that ignores the
/// limit only slows itself).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Quota {
    /// Calls sent and not yet answered.
    pub calls_in_flight: u32,
    /// Bytes of one-way messages queued at the server and not yet received.
    pub queued_bytes: u64,
}

impl Default for Quota {
    fn default() -> Self {
        Self { calls_in_flight: 1024, queued_bytes: 16 * 1024 * 1024 }
    }
}

/// The broker's policy (or a link's granted rights) does not allow `operation` on `name`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, thiserror::Error)]
#[error("access denied: {operation} on {name}")]
pub struct AccessDenied {
    /// What was attempted.
    pub operation: Operation,
    /// The port, mailbox, topic or pattern it was attempted on (`#inbox/<uid>` for an inbox).
    pub name: String,
}

impl AccessDenied {
    /// A denial of `operation` on `name`.
    #[must_use]
    pub fn new(operation: Operation, name: impl Into<String>) -> Self {
        Self { operation, name: name.into() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operations_round_trip_through_names_and_wire_codes() {
        for op in Operation::ALL {
            assert_eq!(Operation::from_name(op.as_str()), Some(op));
            assert_eq!(Operation::from_u8(op.to_u8()), Some(op));
        }
        assert_eq!(Operation::from_name("delete"), None);
        assert_eq!(Operation::from_u8(0), None);
    }

    #[test]
    fn rights_combine_and_unknown_bits_are_refused() {
        assert!(Rights::ALL.contains(Rights::SEND));
        assert!(!Rights::SEND.contains(Rights::CALL));
        assert_eq!(Rights::SEND.union(Rights::CALL), Rights::ALL);
        assert_eq!(Rights::ALL.intersection(Rights::CALL), Rights::CALL);
        assert!(Rights::NONE.is_empty());
        assert_eq!(Rights::from_u8(4), None);
        assert_eq!(
            AccessDenied::new(Operation::Call, "calc").to_string(),
            "access denied: call on calc"
        );
    }
}
