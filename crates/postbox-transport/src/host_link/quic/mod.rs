//! Host links over QUIC (quinn): the reliable session's lanes on QUIC streams of their own, so
//! that a loss on one port's stream holds back no other's.
//!
//! ```text
//! quic/
//! ├── mod.rs        Carrier (dial or listen), Runner: the runtime thread of one link
//! ├── crypto.rs     TLS per connection (checks that record why they refused), settings, errors
//! ├── connector.rs  the dial task, the accept loop (address validation) and its handshakes
//! ├── driver.rs     the driver task: connections in, each lane's writes out, timers, the end
//! └── reader.rs     per connection: a task per incoming QUIC stream, datagrams, and a watcher
//!                   per stream of this end's (for the peer stopping it)
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
//! - *datagrams* go as QUIC datagrams, one frame each. Their payloads are capped so that a
//!   frame fits in one at QUIC's smallest packet size (`crypto::session_config`); one the
//!   connection cannot take is dropped and counted (`HostLinkStats::datagrams_unsent`).
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
//! recovers lost packets itself, so the session does not resend on timeout
//! (`SessionConfig::retransmit_on_timeout` off); its ids and acknowledgements stay the
//! guarantee across connections.
//!
//! **Within one connection** a frame is lost only if a stream that carries it is given up
//! while the connection stays up, and each way that can happen breaks the connection, so that
//! the next one resends: the peer stops one of this end's lane streams (STOP_SENDING: a
//! watcher per stream sees it), a reader of the peer's streams panics (its stream is dropped,
//! which stops it), or a decoder meets a damaged header. As a backstop for anything else (a
//! peer that loses a frame without a trace), the session gives a link up when a message stays
//! unacknowledged on it for the silence bound while the peer is heard from
//! (`Session::handle_timeout`), and the driver drops the connection
//! ([`LinkError::Unacknowledged`](super::LinkError::Unacknowledged)).
//!
//! **Hostile clients and peers.** The listener makes every client prove its address (a QUIC
//! Retry) before it spends a handshake slot on it (8 at once, 2 per IP address), so that
//! forged Initial packets cannot keep the real peer out. An authenticated peer may open one
//! stream per session stream plus the control stream (`max_streams + 1`), and the decoders of
//! one connection may hold at most what it can have unacknowledged in partly received frames
//! (`crypto::partial_budget`); more, and the connection is dropped
//! ([`LinkError::Flooded`](super::LinkError::Flooded)).

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

/// Adapts a session's settings to QUIC: no retransmission on timeout, datagrams that fit in
/// one QUIC datagram (see `crypto::session_config`).
pub(super) fn fit_session(session: &mut postbox_core::reliable::SessionConfig) {
    crypto::session_config(session);
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

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Mutex;
    use std::thread::JoinHandle;
    use std::time::{Duration, Instant};

    use postbox_core::reliable::{DatagramSendError, SessionConfig};
    use postbox_test::Authority;

    use super::super::{Event, HostLink, HostLinkConfig, StreamId, TlsConfig};
    use super::*;

    fn tls(ca: &Authority, host: &str, peer: &str) -> TlsConfig {
        let identity = ca.issue(host);
        let (cert, key) = (identity.cert.as_bytes(), identity.key.as_bytes());
        TlsConfig::from_pem(cert, key, ca.pem().as_bytes(), peer).unwrap()
    }

    fn next_event(link: &HostLink) -> Event {
        link.recv_timeout(Duration::from_secs(30)).expect("an event")
    }

    /// A UDP relay to `target` over a path with IPv6's minimum MTU (1280): it drops datagrams
    /// above 1232 bytes, so that QUIC's path MTU discovery cannot go past that.
    struct SmallPath {
        addr: SocketAddr,
        stop: Arc<AtomicBool>,
        threads: Vec<JoinHandle<()>>,
    }

    impl SmallPath {
        fn start(target: SocketAddr) -> Self {
            let front = Arc::new(UdpSocket::bind("127.0.0.1:0").unwrap());
            let back = Arc::new(UdpSocket::bind("127.0.0.1:0").unwrap());
            back.connect(target).unwrap();
            for socket in [&front, &back] {
                socket.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
            }
            let addr = front.local_addr().unwrap();
            let stop = Arc::new(AtomicBool::new(false));
            let client = Arc::new(Mutex::new(None));
            let forth = {
                let (front, back) = (Arc::clone(&front), Arc::clone(&back));
                let (stop, client) = (Arc::clone(&stop), Arc::clone(&client));
                thread::spawn(move || {
                    let mut buf = [0u8; 65536];
                    while !stop.load(Ordering::Relaxed) {
                        if let Ok((len, from)) = front.recv_from(&mut buf) {
                            *client.lock().unwrap() = Some(from);
                            if len <= PATH_LIMIT {
                                let _ = back.send(&buf[..len]);
                            }
                        }
                    }
                })
            };
            let back_again = {
                let stop = Arc::clone(&stop);
                thread::spawn(move || {
                    let mut buf = [0u8; 65536];
                    while !stop.load(Ordering::Relaxed) {
                        if let Ok(len) = back.recv(&mut buf) {
                            let to = *client.lock().unwrap();
                            if let (true, Some(to)) = (len <= PATH_LIMIT, to) {
                                let _ = front.send_to(&buf[..len], to);
                            }
                        }
                    }
                })
            };
            Self { addr, stop, threads: vec![forth, back_again] }
        }
    }

    impl Drop for SmallPath {
        fn drop(&mut self) {
            self.stop.store(true, Ordering::Relaxed);
            for thread in self.threads.drain(..) {
                let _ = thread.join();
            }
        }
    }

    #[test]
    fn a_datagram_of_the_largest_payload_the_session_accepts_crosses_quic() {
        let ca = Authority::new("postbox test CA");
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = socket.local_addr().unwrap();
        // The default session allows 1200-byte datagram payloads: a frame QUIC cannot carry at
        // its smallest packet size. The link lowers the limit to what it can.
        let config = HostLinkConfig::default();
        assert_eq!(config.session.max_datagram_payload, 1200);
        let listening = HostLink::listen_quic(socket, tls(&ca, "b", "a"), config.clone()).unwrap();
        let path = SmallPath::start(addr);
        let dialing = HostLink::dial_quic(path.addr, tls(&ca, "a", "b"), config).unwrap();
        while !matches!(next_event(&dialing), Event::LinkOpen { .. }) {}
        while !matches!(next_event(&listening), Event::LinkOpen { .. }) {}
        let largest = (crypto::DATAGRAM_FRAME_LEN - SessionConfig::DATA_FRAME_OVERHEAD) as usize;
        assert!(largest as u32 + SessionConfig::DATA_FRAME_OVERHEAD <= DATAGRAM_FRAME_LIMIT);
        let too_large = dialing.send_datagram(StreamId(1), vec![0; largest + 1]);
        assert!(matches!(too_large, Err(DatagramSendError::TooLarge(_))), "{too_large:?}");
        // Best effort: sent again until one arrives (loopback loses none in practice), within
        // a watchdog.
        let payload = vec![7; largest];
        let mut attempts = 0;
        let delivered = loop {
            attempts += 1;
            assert!(attempts <= 150, "watchdog: no datagram arrived; {:?}", dialing.stats());
            dialing.send_datagram(StreamId(1), payload.clone()).unwrap();
            let deadline = Instant::now() + Duration::from_millis(200);
            let got = std::iter::from_fn(|| {
                let left = deadline.saturating_duration_since(Instant::now());
                listening.recv_timeout(left).ok()
            })
            .find(|event| matches!(event, Event::DatagramDelivered { .. }));
            if let Some(event) = got {
                break event;
            }
        };
        let Event::DatagramDelivered { stream, payload: got, .. } = delivered else {
            unreachable!()
        };
        assert_eq!((stream, got), (StreamId(1), payload));
        assert_eq!(dialing.stats().datagrams_unsent, 0);
    }

    /// What quinn lets a datagram be at QUIC's smallest packet size with 8-byte connection
    /// ids (its default): 1200 less 1 + 8 + 4 + 16 of packet overhead and 1 + 8 of frame.
    const DATAGRAM_FRAME_LIMIT: u32 = 1200 - (1 + 8 + 4 + 16) - (1 + 8);
    /// The largest UDP payload on a path with IPv6's minimum MTU: 1280 less 40 + 8 of headers.
    const PATH_LIMIT: usize = 1232;
}
