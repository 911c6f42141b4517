//! Reliable links between brokers on different hosts: the TCP driver of a reliable session.
//!
//! A [`HostLink`] runs a [`postbox_core::reliable::Session`] over real TCP connections with
//! real threads. One end [`dial`](HostLink::dial)s and redials after every break (bounded
//! exponential backoff); the other [`listen`](HostLink::listen)s and takes each new
//! connection in place of the last. Above the connections the session gives each stream
//! exactly-once, in-order delivery, resends across reconnects, and ends with `PeerDead` or
//! `Unreachable` within its heartbeat bound when the peer falls silent: never a hang.
//!
//! ```
//! use std::net::TcpListener;
//! use std::time::Duration;
//! use postbox_transport::host_link::{Event, HostLink, HostLinkConfig, StreamId};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let listener = TcpListener::bind("127.0.0.1:0")?;
//! let addr = listener.local_addr()?;
//! let server = HostLink::listen(listener, HostLinkConfig::default())?;
//! let client = HostLink::dial(addr, HostLinkConfig::default())?;
//!
//! let id = client.send(StreamId(1), b"hello".to_vec())?;
//! loop {
//!     match server.recv_timeout(Duration::from_secs(10))? {
//!         Event::Delivered { stream, id: got, payload } => {
//!             assert_eq!((stream, got, payload), (StreamId(1), id, b"hello".to_vec()));
//!             break;
//!         }
//!         _ => {} // LinkOpen first
//!     }
//! }
//! client.close(); // the server sees `Event::Ended(SessionError::PeerClosed)`
//! # Ok(())
//! # }
//! ```
//!
//! ```text
//! host_link/
//! ├── handle.rs     HostLink: dial / listen, send, recv, stats, close
//! ├── driver.rs     driver thread (timers, writes, connection changes) and per-connection reader
//! ├── connector.rs  dialer with backoff, acceptor
//! ├── shared.rs     the state the threads share, behind one mutex
//! ├── config.rs     HostLinkConfig
//! ├── error.rs      RecvError, TryRecvError, RecvTimeoutError, LinkError
//! └── stats.rs      HostLinkStats
//! ```
//!
//! Plain TCP only for now: no encryption and no authentication of the peer, so on the
//! listening side any client that connects replaces the current connection. TLS (rustls)
//! and QUIC (quinn) drivers come next, over the same session.

mod config;
mod connector;
mod driver;
mod error;
mod handle;
mod shared;
mod stats;

pub use config::HostLinkConfig;
pub use error::{LinkError, RecvError, RecvTimeoutError, TryRecvError};
pub use handle::HostLink;
pub use postbox_core::reliable::{
    Event, LinkState, MessageId, SendError, SessionConfig, SessionError, SessionId, SessionStats,
    StreamId,
};
pub use stats::HostLinkStats;
