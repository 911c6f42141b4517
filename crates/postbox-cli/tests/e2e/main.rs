//! End-to-end tests: the real `postbox` binary as daemon, workers and CLI, in real processes.
//!
//! Each test starts its own `postbox daemon` on a private socket in a temporary directory.
//! The test process itself attaches as a node where it needs the library API, and plays the
//! hostile peer where a test needs raw bytes on a socket.

mod access;
mod async_forms;
mod bench;
mod buffering;
mod cli;
mod death;
mod demo;
mod feeds;
mod host_faults;
mod hostile;
mod hosts;
mod hosts_datagrams;
mod hosts_direct;
mod hosts_names;
mod hosts_quic;
mod hosts_tls;
mod mailbox_edges;
mod mailboxes;
mod netns;
mod operations;
mod remote_attach;
mod shm;
mod topics;
mod typed;
mod util;
