//! What a broker is configured with.

use std::path::PathBuf;
use std::time::Duration;

/// Settings of one broker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerConfig {
    /// Where the control socket is bound.
    pub socket_path: PathBuf,
    /// The largest message body links on this host accept, announced to every node.
    pub max_message_size: u32,
    /// Ports one node may hold.
    pub max_ports_per_node: usize,
    /// Links one node may have open (as client or server).
    pub max_links_per_node: usize,
    /// Nodes admitted at once.
    pub max_nodes: usize,
    /// Control messages queued for one node that is not reading before it is disconnected.
    pub max_queued_per_node: usize,
    /// How long a new connection may take to send Hello before it is disconnected.
    pub hello_timeout: Duration,
}

impl BrokerConfig {
    /// Defaults, with the control socket at `socket_path`.
    pub fn new(socket_path: impl Into<PathBuf>) -> Self {
        Self {
            socket_path: socket_path.into(),
            max_message_size: DEFAULT_MAX_MESSAGE_SIZE,
            max_ports_per_node: 1024,
            max_links_per_node: 4096,
            max_nodes: 4096,
            max_queued_per_node: 1024,
            hello_timeout: Duration::from_secs(10),
        }
    }

    /// Sets the largest message body.
    #[must_use]
    pub fn max_message_size(mut self, bytes: u32) -> Self {
        self.max_message_size = bytes;
        self
    }
}

/// 64 MiB: large payloads fit, a hostile length cannot exhaust memory.
pub const DEFAULT_MAX_MESSAGE_SIZE: u32 = 64 * 1024 * 1024;
