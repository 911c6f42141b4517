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
//! ├── connection.rs one connection: plain TCP, or TLS shared by the writer and the reader
//! ├── connector.rs  dialer with backoff, acceptor
//! ├── handshake.rs  securing a new connection: TLS handshake, pre-shared key exchange
//! ├── security.rs   LinkSecurity, TlsConfig, PreSharedKey
//! ├── shared.rs     the state the threads share, behind one mutex
//! ├── config.rs     HostLinkConfig
//! ├── error.rs      RecvError, TryRecvError, RecvTimeoutError, LinkError, AuthenticationError
//! └── stats.rs      HostLinkStats
//! ```
//!
//! # Security
//!
//! [`dial`](HostLink::dial) and [`listen`](HostLink::listen) use plain TCP: no encryption and
//! no authentication, so on the listening side any client that connects replaces the current
//! connection. [`dial_secured`](HostLink::dial_secured) and
//! [`listen_secured`](HostLink::listen_secured) take a [`LinkSecurity`]:
//!
//! - [`LinkSecurity::Tls`]: the same session bytes over rustls (TLS 1.3), with a certificate on
//!   both ends. Each end checks that the other's certificate is signed by a configured CA and
//!   carries the peer's host name.
//! - [`LinkSecurity::PreSharedKey`]: an HMAC-SHA256 challenge-response proves that both ends
//!   know the key, then the session runs over plain TCP. It authenticates but does not
//!   encrypt.
//!
//! A connection that fails authentication is closed before the session reads a byte from it;
//! [`HostLinkStats::last_error`] says why ([`LinkError::Authentication`]). QUIC (quinn) comes
//! next, over the same session.

mod config;
mod connection;
mod connector;
mod driver;
mod error;
mod handle;
pub(crate) mod handshake;
pub(crate) mod security;
mod shared;
mod stats;

pub use config::HostLinkConfig;
pub use error::{AuthenticationError, LinkError, RecvError, RecvTimeoutError, TryRecvError};
pub use handle::HostLink;
pub use postbox_core::reliable::{
    Event, LinkState, MessageId, SendError, SessionConfig, SessionError, SessionId, SessionStats,
    StreamId,
};
pub use security::{LinkSecurity, PreSharedKey, SecurityConfigError, TlsConfig};
pub use stats::HostLinkStats;
