//! postbox transports: the byte-moving edge between the sans-IO core and the operating system.
//!
//! - [`ControlSocket`] / [`ControlListener`]: the Unix seqpacket socket between a node and its
//!   broker, one control message per packet, with file descriptors passed by `SCM_RIGHTS` and
//!   the peer identified by `SO_PEERCRED`.
//! - [`UnixLink`]: one end of a connection's data path, a Unix stream socketpair carrying
//!   length-prefixed frames.
//! - [`Wait`], [`wait_readable`] and [`Waker`]: how long an operation may block, readiness of
//!   several descriptors at once, and a way to interrupt that wait.
//!
//! All system calls go through `rustix`; this crate has no `unsafe` of its own. `io::Error`
//! does not leave it: failures become [`TransportError`], which says what postbox was doing.
#![forbid(unsafe_code)]

mod control_socket;
mod error;
mod unix_link;
mod wait;

pub use control_socket::{ControlListener, ControlSocket, Credentials};
pub use error::TransportError;
pub use unix_link::UnixLink;
pub use wait::{wait_readable, wait_ready, Interest, Wait, Waker};
