//! postbox transports: the byte-moving edge between the sans-IO core and the operating system.
//!
//! - [`ControlSocket`] / [`ControlListener`]: the Unix seqpacket socket between a node and its
//!   broker, one control message per packet, with file descriptors passed by `SCM_RIGHTS` and
//!   the peer identified by `SO_PEERCRED`.
//! - [`UnixLink`]: one end of a connection's data path, a Unix stream socketpair carrying
//!   length-prefixed frames.
//! - [`ShmLink`]: one end of a shared-memory link, frames in a segment's byte streams, with
//!   the socketpair kept for close and death detection; [`Link`] is either flavor.
//! - [`Wait`], [`wait_readable`] and [`Waker`]: how long an operation may block, readiness of
//!   several descriptors at once, and a way to interrupt that wait.
//! - [`HostLink`] (module [`host_link`]): a reliable link to a broker on another host, the TCP
//!   driver of `postbox_core::reliable::Session`.
//! - Module [`direct_link`]: a TCP connection between a caller and a server on two hosts,
//!   set up by their brokers and then read and written by the nodes as a [`UnixLink`].
//! - Module [`tunnel`]: a node attached to a broker on another host over one TCP connection,
//!   its control packets and links relayed as channels ([`tunnel::dial`],
//!   [`tunnel::AttachListener`]).
//!
//! System calls go through `rustix` (host links through `std::net`); this crate has no `unsafe`
//! of its own. `io::Error` does not leave it: failures become [`TransportError`], which says
//! what postbox was doing.
#![forbid(unsafe_code)]

mod control_socket;
pub mod direct_link;
mod error;
pub mod host_link;
mod link;
mod sealed_fds;
mod shm_link;
mod spin;
#[cfg(test)]
mod test_frames;
pub mod tunnel;
mod unix_link;
mod wait;

pub use control_socket::{ControlListener, ControlSocket, Credentials, MAX_FDS};
pub use error::{TransportError, WriteFramesError};
pub use host_link::{HostLink, HostLinkConfig};
pub use link::Link;
pub use postbox_shm::{
    FeedConsumer, FeedEnd, FeedProducer, LinkShape, LinkSide, PoolLoan, PoolView, PushError, Rung,
    SealedBuilder, SealedError, SealedPayload, FEED_MAX_LEN,
};
pub use shm_link::{ShmLink, ShmLinkParts};
pub use spin::Spin;
pub use unix_link::UnixLink;
pub use wait::{wait_readable, wait_ready, Interest, ReadyFds, Wait, Waker, FEW_FDS};
