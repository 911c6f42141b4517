//! Test support for postbox: tools that make real transports misbehave on purpose.
//!
//! - [`FaultProxy`]: a TCP proxy between two host-link ends that cuts the byte streams into
//!   frames and drops, duplicates, reorders, corrupts and delays them, cuts both connections
//!   on a schedule or on demand, and black-holes all traffic to simulate a partition. Its
//!   [`ProxyCounters`] prove the faults happened.
//! - [`DatagramProxy`]: the same for UDP (host links over QUIC): drops, duplicates, reorders,
//!   corrupts and delays datagrams, partitions, and rebinds a client's address; its
//!   [`DatagramCounters`] prove it.
//! - [`Rng`]: the small seeded generator behind every fault, so a failing seed can be replayed.
//! - [`Authority`]: a certificate authority made for a test, issuing host certificates
//!   ([`Identity`]) for TLS host links.
//! - [`free_port`], [`free_udp_port`]: a loopback port for a daemon to listen on, never the
//!   same number twice in one test process.
//!
//! ```no_run
//! use std::net::TcpListener;
//! use postbox_test::{FaultProxy, Faults};
//!
//! # fn main() -> std::io::Result<()> {
//! let server = TcpListener::bind("127.0.0.1:0")?;
//! let proxy = FaultProxy::start(server.local_addr()?, Faults::harsh(), 7)?;
//! // Clients dial `proxy.addr()` instead of the server.
//! # let _ = proxy.addr();
//! proxy.partition(); // every frame is swallowed from now on
//! proxy.heal();
//! proxy.cut_now(); // both connections of every proxied pair shut down
//! println!("{:?}", proxy.counters());
//! # Ok(())
//! # }
//! ```
//!
//! This crate is not published; nothing outside postbox's own tests depends on it.
#![forbid(unsafe_code)]

mod certs;
mod datagram_proxy;
mod fault_proxy;
mod port;
mod rng;

pub use certs::{Authority, Identity};
pub use datagram_proxy::{DatagramCounters, DatagramFaults, DatagramProxy};
pub use fault_proxy::{FaultProxy, Faults, ProxyCounters};
pub use port::{free_port, free_udp_port};
pub use rng::Rng;
