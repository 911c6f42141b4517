//! What a broker is configured with.

use std::path::PathBuf;
use std::time::Duration;

use crate::{HostsConfig, Policy, RemoteNodesConfig};

/// Settings of one broker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerConfig {
    /// Where the control socket is bound.
    pub socket_path: PathBuf,
    /// The largest message body links on this host accept, announced to every node.
    pub max_message_size: u32,
    /// Who may do what with each name, and the per-node limits (ports, links).
    pub policy: Policy,
    /// Nodes admitted at once.
    pub max_nodes: usize,
    /// Control messages queued for one node that is not reading before it is disconnected.
    pub max_queued_per_node: usize,
    /// How long a new connection may take to send Hello before it is disconnected.
    pub hello_timeout: Duration,
    /// Links between nodes use shared memory, with streams of this many bytes each way;
    /// `None` makes them Unix links (the socketpair alone).
    pub shared_memory_links: Option<usize>,
    /// Bytes each way in a shared-memory link's payload pool (the largest zero-copy payload).
    /// Shared memory is only used as payloads fill it.
    pub shared_memory_pool: usize,
    /// This host's name and its peers; `None` links to no other host.
    pub hosts: Option<HostsConfig>,
    /// Nodes on other hosts attach over TCP here; `None` accepts local nodes only.
    pub remote_nodes: Option<RemoteNodesConfig>,
}

impl BrokerConfig {
    /// Defaults, with the control socket at `socket_path`.
    pub fn new(socket_path: impl Into<PathBuf>) -> Self {
        Self {
            socket_path: socket_path.into(),
            max_message_size: DEFAULT_MAX_MESSAGE_SIZE,
            policy: Policy::own_user_only(rustix::process::getuid().as_raw()),
            max_nodes: 4096,
            max_queued_per_node: 1024,
            hello_timeout: Duration::from_secs(10),
            shared_memory_links: Some(DEFAULT_LINK_CAPACITY),
            shared_memory_pool: DEFAULT_POOL_SIZE,
            hosts: None,
            remote_nodes: None,
        }
    }

    /// Makes links between nodes Unix links (`false`) or shared-memory links (`true`, the
    /// default).
    #[must_use]
    pub fn shared_memory(mut self, on: bool) -> Self {
        self.shared_memory_links = on.then_some(DEFAULT_LINK_CAPACITY);
        self
    }

    /// Sets the access policy and limits.
    #[must_use]
    pub fn policy(mut self, policy: Policy) -> Self {
        self.policy = policy;
        self
    }

    /// Names this host and links it to its peers (docs/network.md).
    #[must_use]
    pub fn hosts(mut self, hosts: HostsConfig) -> Self {
        self.hosts = Some(hosts);
        self
    }

    /// Accepts nodes on other hosts over TCP (docs/network.md §14).
    #[must_use]
    pub fn remote_nodes(mut self, remote_nodes: RemoteNodesConfig) -> Self {
        self.remote_nodes = Some(remote_nodes);
        self
    }

    /// Sets the largest message body.
    #[must_use]
    pub fn max_message_size(mut self, bytes: u32) -> Self {
        self.max_message_size = bytes;
        self
    }
}

/// Bytes each way in a shared-memory link's streams: many small messages in flight, and large
/// ones in few pieces, for 512 KiB of shared memory per link at most.
pub(crate) const DEFAULT_LINK_CAPACITY: usize = 256 * 1024;

/// Bytes each way in a shared-memory link's payload pool: a few large payloads in flight.
pub(crate) const DEFAULT_POOL_SIZE: usize = 16 * 1024 * 1024;

/// 64 MiB: large payloads fit, a hostile length cannot exhaust memory.
pub const DEFAULT_MAX_MESSAGE_SIZE: u32 = 64 * 1024 * 1024;
