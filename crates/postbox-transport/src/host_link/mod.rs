//! Reliable links between brokers on different hosts: the TCP and QUIC drivers of a reliable
//! session.
//!
//! A [`HostLink`] runs a [`postbox_core::reliable::Session`] over real TCP connections with
//! real threads, or over QUIC connections ([`dial_quic`](HostLink::dial_quic),
//! [`listen_quic`](HostLink::listen_quic), module `quic`). One end [`dial`](HostLink::dial)s
//! and redials after every break (bounded exponential backoff); the other
//! [`listen`](HostLink::listen)s and takes each new connection in place of the last. Above the
//! connections the session gives each stream exactly-once, in-order delivery, resends across
//! reconnects, and ends with `PeerDead` or `Unreachable` within its heartbeat bound when the
//! peer falls silent: never a hang.
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
//! ├── udp.rs        the UDP side of a TCP link: datagrams beside the connection, probes
//! ├── udp_window.rs which of the peer's UDP datagram numbers were taken (replays refused)
//! ├── datagram_key.rs  the key that seals them, derived per connection (TLS exporter, PSK)
//! ├── security.rs   LinkSecurity, TlsConfig, PreSharedKey
//! ├── quic/         the QUIC carrier: a QUIC stream per lane (control, each session stream)
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
//! [`HostLinkStats::last_error`] says why ([`LinkError::Authentication`]).
//!
//! QUIC always runs mutual TLS with a [`TlsConfig`], checked the same way (the certificates
//! are verified inside the QUIC handshake; a refused connection never reaches the session).
//! There is no QUIC without TLS: the constructors take a `TlsConfig`, not a `LinkSecurity`.
//!
//! # Datagrams
//!
//! [`HostLink::send_datagram`] sends a best-effort datagram: sent once, never resent,
//! checksummed, delivered at most once ([`Event::DatagramDelivered`]). Over QUIC it is a QUIC
//! datagram. A TCP link made by [`dial_with_udp`](HostLink::dial_with_udp) and
//! [`listen_with_udp`](HostLink::listen_with_udp) carries it in a UDP datagram beside the
//! connection (`udp.rs`): sealed (ChaCha20-Poly1305) with a key derived for each connection
//! from its TLS secrets or its pre-shared key exchange, so nobody else can inject or read one;
//! on a plain link it carries the two random session ids the session checks instead, which
//! keeps off-path senders out but not anyone who sees the traffic. Other TCP links carry
//! datagrams on the connection, reliable underneath.

mod config;
mod connection;
mod connector;
mod datagram_key;
mod driver;
mod error;
mod handle;
pub(crate) mod handshake;
mod quic;
pub(crate) mod security;
mod shared;
mod stats;
mod udp;
mod udp_window;

pub use config::HostLinkConfig;
pub use error::{AuthenticationError, LinkError, RecvError, RecvTimeoutError, TryRecvError};
pub use handle::HostLink;
pub use postbox_core::reliable::{
    DatagramSendError, Event, LinkState, MessageId, SendError, SessionConfig, SessionError,
    SessionId, SessionStats, StreamId,
};
pub use security::{LinkSecurity, PreSharedKey, SecurityConfigError, TlsConfig};
pub use stats::HostLinkStats;
