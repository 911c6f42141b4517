//! Reliable messaging between brokers on different hosts, above any transport (sans-IO).
//!
//! One [`Session`] per pair of hosts multiplexes every stream between them (one stream per
//! pair of ports) over one transport link at a time: TCP or TLS, a QUIC stream, or UDP. The
//! transport may lose, duplicate, reorder or corrupt frames and may break at any moment; above
//! it the session gives:
//!
//! - **exactly once, in order per stream** for reliable messages: message ids, acks with held
//!   ranges, retransmission on timeout (RTT estimated after RFC 6298) and across reconnects,
//!   duplicate suppression at the receiver, crc32c on every frame;
//! - **at most once** for best-effort datagrams: sent once, checksummed, deduplicated;
//! - **no head-of-line blocking between streams**: each stream has its own reorder buffer;
//! - **a clear end**: a restarted peer, a peer silent for the heartbeat bound, a peer whose
//!   reports contradict what it acknowledged (a restart that reused its session id), or a
//!   closed session fails every pending message with a [`SessionError`], never a hang;
//! - **frames sized for the transport**: [`SessionConfig::max_frame_len`] bounds every frame
//!   (one UDP datagram with [`SessionConfig::datagram`]); hellos are split to fit.
//!
//! Like the rest of this crate it does no I/O and reads no clock; the drivers (TCP/TLS, QUIC,
//! UDP) live in the transport layer. The frame format is in [`frame`] and [`body`].
//!
//! ```text
//! reliable/
//! ├── ids.rs       SessionId, StreamId, MessageId
//! ├── frame.rs     header: magic, version, kind, length, sessions, two crc32c
//! ├── body.rs      Hello, Data, Ack, Heartbeat bodies
//! ├── decoder.rs   StreamDecoder: a byte stream into frames
//! ├── rtt.rs       RFC 6298 estimator
//! ├── sender.rs    per stream: unacknowledged messages, timers, resume
//! ├── receiver.rs  per stream: reorder buffer, duplicates, ack ranges
//! ├── datagram.rs  anti-replay window for datagrams
//! ├── config.rs, event.rs, error.rs, stats.rs
//! └── session.rs   Session: the state machine over all of it
//! ```

pub mod body;
mod config;
mod datagram;
pub mod decoder;
mod error;
mod event;
pub mod frame;
mod ids;
mod receiver;
mod rtt;
mod sender;
mod session;
mod stats;

pub use config::SessionConfig;
pub use error::{BestEffortError, DatagramSendError, SendError, SessionError};
pub use event::{Event, Lane, Transmit};
pub use ids::{MessageId, SessionId, StreamId};
pub use session::Session;
pub use stats::{LinkState, SessionStats};
