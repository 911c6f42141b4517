//! The postbox broker: the host's authority for names, connection set-up and peer death.
//!
//! The broker listens on a Unix seqpacket socket ([`socket_path::default_socket_path`]),
//! admits each node under its kernel credentials (`SO_PEERCRED`), keeps the registry of port
//! names, and on `connect` creates a socketpair and hands one end to each side with
//! `SCM_RIGHTS`. It is **not** on the data path: frames flow straight between the two nodes.
//! When a node's control socket closes (it exited or was killed), its names are free at once.
//!
//! Nodes of other hosts may attach over TCP ([`BrokerConfig::remote_nodes`],
//! [`RemoteNodesConfig`]): each authenticated connection is a tunnel whose control socket the
//! broker serves like a local node's, known to the policy by the principal it proved, and given
//! Unix links only, which the tunnel relays (docs/network.md §14).
//!
//! ```no_run
//! use postbox_broker::{Broker, BrokerConfig};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let config = BrokerConfig::new("/tmp/example/broker.sock");
//! let broker = Broker::bind(config)?;
//! broker.run()?; // serves until stopped
//! # Ok(())
//! # }
//! ```
#![forbid(unsafe_code)]

mod config;
mod error;
mod event_loop;
mod grants;
pub mod hosts;
mod mailbox;
pub mod policy;
mod registry;
mod remote_nodes;
pub mod socket_path;
mod topic;

pub use config::{BrokerConfig, DEFAULT_MAX_MESSAGE_SIZE};
pub use error::BrokerError;
pub use event_loop::{Broker, BrokerHandle, PolicyReloader};
pub use hosts::{
    DatagramRoute, HostState, HostStatus, HostsConfig, HostsConfigError, PeerConfig, PeerConnect,
    MAX_DATAGRAM_MESSAGE,
};
pub use policy::{Limits, Policy, PolicyError, Subject};
pub use remote_nodes::{RemoteNodesConfig, RemoteNodesConfigError};
