//! Failures of starting or running a broker.

use std::io;
use std::path::PathBuf;

use postbox_transport::TransportError;

/// Why a broker could not start or stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BrokerError {
    /// Another broker is already serving at this path.
    #[error("a broker is already running at {0}")]
    AlreadyRunning(PathBuf),
    /// The socket's directory could not be prepared.
    #[error("cannot prepare socket directory {path}: {kind}")]
    Directory {
        /// The directory.
        path: PathBuf,
        /// What went wrong.
        kind: io::ErrorKind,
    },
    /// The directory exists but is not safe to use (owned by someone else, or open to others).
    #[error("socket directory {0} is not private to this user (want mode 0700, owned by us)")]
    UnsafeDirectory(PathBuf),
    /// A socket operation failed.
    #[error("broker socket: {0}")]
    Transport(#[from] TransportError),
    /// The broker thread panicked (a bug).
    #[error("the broker thread panicked")]
    Panicked,
}
