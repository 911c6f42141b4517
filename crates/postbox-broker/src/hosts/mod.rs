//! Brokers on other hosts: static peers, one reliable host link each, and the broker as the
//! gateway that carries its nodes' connections to ports over there (docs/network.md).
//!
//! ```text
//! hosts/
//! ├── config.rs    HostsConfig: this host's name, its peers (dial or listen, TCP or QUIC), timers
//! ├── identity.rs  NodeRef, StandIns: who a node of another host is, here and on the wire
//! ├── protocol.rs  HostMessage: open, opened, refused, frame(s), close (one remote connection)
//! ├── peer.rs      Peer: a host link restarted after each session end
//! └── status.rs    HostStatus: what `postbox ls` shows; the broker's status port
//! ```
//!
//! The event loop's side (relaying frames between local links and host links) is in
//! `event_loop/gateway.rs`.

mod config;
pub(crate) mod identity;
pub(crate) mod peer;
pub(crate) mod protocol;
mod status;

pub(crate) use config::{split_remote, FORWARD_OVERHEAD, MAX_DATAGRAM_PAYLOAD};
pub use config::{
    DatagramRoute, HostName, HostsConfig, HostsConfigError, PeerConfig, PeerConnect, PeerTransport,
    MAX_DATAGRAM_MESSAGE, MAX_REMOTE_MESSAGE,
};
pub use status::{HostState, HostStatus, HOSTS_PORT};
