//! Who a node is: its broker-assigned `ProcessId` and the kernel credentials behind it.

use std::fmt;
use std::str::FromStr;

/// A node's identity on one host, assigned by the broker.
///
/// The operating system's pid plus a generation the broker counts up for every node it admits,
/// so that a pid reused by a new process is never confused with the dead one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ProcessId {
    /// The operating system's process id.
    pub pid: u32,
    /// The broker's admission counter for this node (starts at 1).
    pub generation: u32,
}

impl ProcessId {
    /// Builds a process id from its two parts.
    #[must_use]
    pub const fn new(pid: u32, generation: u32) -> Self {
        Self { pid, generation }
    }
}

impl fmt::Display for ProcessId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.pid, self.generation)
    }
}

/// Failure of parsing a [`ProcessId`] from its `pid.generation` text form.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a process id (expected `pid.generation`, e.g. `1234.1`): {0:?}")]
pub struct ParseProcessIdError(pub String);

impl FromStr for ProcessId {
    type Err = ParseProcessIdError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let err = || ParseProcessIdError(text.to_owned());
        let (pid, generation) = text.split_once('.').ok_or_else(err)?;
        Ok(Self {
            pid: pid.parse().map_err(|_| err())?,
            generation: generation.parse().map_err(|_| err())?,
        })
    }
}

/// The identity of the process at the other end of a link, as the broker saw it.
///
/// The uid, gid and pid come from the kernel (`SO_PEERCRED`), never from the peer itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PeerIdentity {
    /// The broker-assigned process id.
    pub process_id: ProcessId,
    /// The peer's user id.
    pub uid: u32,
    /// The peer's group id.
    pub gid: u32,
}

impl fmt::Display for PeerIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (uid {}, gid {})", self.process_id, self.uid, self.gid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn process_id_round_trips_through_its_text_form() {
        let id = ProcessId::new(4242, 7);
        assert_eq!(id.to_string(), "4242.7");
        assert_eq!("4242.7".parse::<ProcessId>(), Ok(id));
        assert!("4242".parse::<ProcessId>().is_err());
        assert!("a.b".parse::<ProcessId>().is_err());
    }
}
