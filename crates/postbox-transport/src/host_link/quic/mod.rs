//! Host links over QUIC (quinn): the reliable session's lanes on QUIC streams of their own, so
//! that a loss on one port's stream holds back no other's.
//!
//! ```text
//! quic/
//! ├── mod.rs        Carrier (dial or listen), Runner: the runtime thread of one link
//! ├── crypto.rs     TLS per connection (checks that record why they refused), settings, errors
//! ├── connector.rs  the dial task, the accept loop and its handshakes
//! ├── driver.rs     the driver task: connections in, each lane's writes out, timers, the end
//! └── reader.rs     per connection: a task per incoming QUIC stream, datagrams
//! ```
//!
//! **Mapping.** The session tags every frame with its [`Lane`](postbox_core::reliable::Lane)
//! (`Transmit::lane`). Per QUIC connection each end opens, when it first has a frame for it,
//! one unidirectional QUIC stream per lane and keeps it for the connection's life:
//!
//! - the *control* lane: hellos, acknowledgements, heartbeats and their answers, close; its
//!   stream has a higher priority than the others, so that acknowledgements and heartbeats do
//!   not queue behind bulk data;
//! - one lane per *session stream* (one per port channel): its messages, retransmissions
//!   included, in id order;
//! - *datagrams* go as QUIC datagrams, one frame each.
//!
//! Every QUIC stream carries whole session frames back to back (`reliable/frame.rs`), so the
//! receiver needs no mapping: it cuts each incoming stream into frames with a decoder of its
//! own and hands them to the session (`Session::handle_frame`). A lost packet delays only the
//! QUIC streams whose bytes it carried; the session needs order within a lane only. While a
//! lane's write is in flight (the stream's flow control or the connection's send window is
//! full) the driver takes no more of that lane's frames from the session
//! (`Session::poll_transmit_where`), and the other lanes go on.
//!
//! **Resume.** A QUIC connection is one *link* of the session, as a TCP connection is: a new
//! one (redialed after the old one broke or went silent for the idle timeout, or accepted in
//! place of the old one) opens with a hello each way on its control lane, and each side
//! resends what the other lacks on the new connection's lanes. Data may overtake the hello (it
//! is on another stream); the session accepts it, since it comes from the peer it knows. QUIC
//! recovers lost packets itself; the session's ids, acknowledgements and timers stay the
//! guarantee across connections (and the backstop within one).

mod connector;
mod crypto;
mod driver;
mod reader;

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::sync::Arc;
use std::thread;

use quinn::{Endpoint, EndpointConfig, TokioRuntime};

use super::security::TlsConfig;
use super::shared::Shared;
use crate::TransportError;

/// How a QUIC host link reaches its peer.
#[derive(Debug)]
pub(super) enum Carrier {
    /// Dials this address, again after every break.
    Dial(SocketAddr),
    /// Accepts the peer's connections on this socket.
    Listen(UdpSocket),
}

/// What runs on a QUIC link's thread: a single-threaded tokio runtime with quinn's endpoint
/// and the driver. Made on the caller's thread, so that a socket or runtime failure is an
/// error of `dial_quic` / `listen_quic`, not a silent end.
#[derive(Debug)]
pub(super) struct Runner {
    runtime: tokio::runtime::Runtime,
    driver: driver::Driver,
}

impl Runner {
    /// A runtime and an endpoint for `carrier`, with `tls` checking every connection.
    pub(super) fn new(
        shared: &Arc<Shared>,
        tls: TlsConfig,
        carrier: Carrier,
    ) -> Result<Self, TransportError> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| os("start QUIC runtime", &e))?;
        let transport = Arc::new(crypto::transport_config(&shared.config));
        // quinn spawns its endpoint task on the runtime it is made in.
        let entered = runtime.enter();
        let (endpoint, role) = match carrier {
            Carrier::Dial(addr) => {
                let unspecified: SocketAddr = if addr.is_ipv4() {
                    (Ipv4Addr::UNSPECIFIED, 0).into()
                } else {
                    (Ipv6Addr::UNSPECIFIED, 0).into()
                };
                let socket =
                    UdpSocket::bind(unspecified).map_err(|e| os("bind QUIC socket", &e))?;
                (endpoint(socket, None)?, driver::Role::Dial(addr))
            }
            Carrier::Listen(socket) => {
                // Incoming connections get a configuration of their own (`accept_with`); this
                // one only lets the endpoint accept.
                let (server, _) = crypto::server_config(&tls, &transport)
                    .map_err(|_| os_kind("configure QUIC TLS", std::io::ErrorKind::InvalidInput))?;
                (endpoint(socket, Some(server))?, driver::Role::Listen)
            }
        };
        let driver = driver::Driver::new(Arc::clone(shared), endpoint, tls, transport, role);
        drop(entered);
        Ok(Self { runtime, driver })
    }

    /// Runs the link until its session ends or the handle is dropped (on the link's thread).
    pub(super) fn run(self) {
        let shared = self.driver.shared();
        let _guard = FinishOnPanic(shared);
        self.runtime.block_on(self.driver.run());
        // Dropping the runtime stops what is left: readers, writes, the acceptor, the endpoint.
    }
}

/// Should the driver panic, the handle still learns that the link is over (as the TCP driver
/// does).
struct FinishOnPanic(Arc<Shared>);

impl Drop for FinishOnPanic {
    fn drop(&mut self) {
        if thread::panicking() {
            driver::mark_finished(&self.0);
        }
    }
}

fn endpoint(
    socket: UdpSocket,
    server: Option<quinn::ServerConfig>,
) -> Result<Endpoint, TransportError> {
    socket.set_nonblocking(true).map_err(|e| os("configure QUIC socket", &e))?;
    Endpoint::new(EndpointConfig::default(), server, socket, Arc::new(TokioRuntime))
        .map_err(|e| os("start QUIC endpoint", &e))
}

fn os(operation: &'static str, error: &std::io::Error) -> TransportError {
    os_kind(operation, error.kind())
}

fn os_kind(operation: &'static str, kind: std::io::ErrorKind) -> TransportError {
    TransportError::Os { operation, kind }
}
