//! `HostLink`: the blocking handle of one reliable link to a broker on another host.

use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use postbox_core::reliable::{
    DatagramSendError, Event, MessageId, SendError, Session, SessionId, StreamId,
};

use super::config::{fresh_session_id, HostLinkConfig};
use super::error::{RecvError, RecvTimeoutError, TryRecvError};
use super::security::{LinkSecurity, TlsConfig};
use super::shared::{Core, Shared};
use super::stats::HostLinkStats;
use super::udp::{self, UdpSide};
use super::{connector, driver, quic};
use crate::{TransportError, Waker};

/// One end of a reliable link to a broker on another host, over TCP (plain, TLS, or
/// authenticated by a pre-shared key: [`LinkSecurity`]) or over QUIC (always mutual TLS:
/// [`dial_quic`](Self::dial_quic), [`listen_quic`](Self::listen_quic)).
///
/// A `HostLink` drives a [`Session`]: it keeps a connection to the peer (dialing with
/// backoff, or accepting on a listener), opens a new one after any break, and resends what
/// the peer lacks. Over QUIC each session stream has a QUIC stream of its own, so that a loss
/// on one never holds back another (see the module docs). Messages on one [`StreamId`] arrive
/// exactly once and in order; every message sent is, in the end, either [`Event::Acked`] or
/// [`Event::Failed`] with its payload back. A silent peer ends the link within
/// [`SessionConfig::dead_after`] (`PeerDead` or `Unreachable`), never a hang.
///
/// All methods take `&self`: one thread may send while another receives. Dropping the handle
/// stops at once, without telling the peer (as a crash would); [`close`](Self::close) first
/// to end politely.
///
/// [`SessionConfig::dead_after`]: postbox_core::reliable::SessionConfig::dead_after
#[derive(Debug)]
pub struct HostLink {
    shared: Arc<Shared>,
    id: SessionId,
    /// The driver and the acceptor; joined by `close` and on drop.
    threads: Mutex<Vec<JoinHandle<()>>>,
}

impl HostLink {
    /// Starts a link that dials `addr`, and dials again after every break.
    ///
    /// # Errors
    /// [`TransportError::Os`] when a thread or the waker cannot be created. Connection
    /// failures are not errors here: they are retried, and show in [`stats`](Self::stats)
    /// until the session ends as `Unreachable`.
    pub fn dial(addr: SocketAddr, config: HostLinkConfig) -> Result<Self, TransportError> {
        Self::dial_secured(addr, config, LinkSecurity::Plain)
    }

    /// Like [`dial`](Self::dial), with each connection secured as `security` says: a TLS
    /// handshake that checks the peer's certificate and name, or the pre-shared key exchange.
    /// A connection that fails it is closed and dialed again after the backoff; the reason
    /// shows in [`stats`](Self::stats) (`last_error`, `handshake_failures`).
    ///
    /// # Errors
    /// As [`dial`](Self::dial).
    pub fn dial_secured(
        addr: SocketAddr,
        config: HostLinkConfig,
        security: LinkSecurity,
    ) -> Result<Self, TransportError> {
        Self::dial_with(addr, config, security, None)
    }

    /// Like [`dial_secured`](Self::dial_secured), with the session's best-effort datagrams
    /// ([`send_datagram`](Self::send_datagram)) sent over UDP to `datagrams` (the listener's
    /// [`listen_with_udp`](Self::listen_with_udp) socket, or whatever forwards to it) from a
    /// socket of this link's own, instead of on the TCP connection. They are sealed with a key
    /// of the current connection when `security` is TLS or a pre-shared key, and carry the
    /// session ids otherwise (see the module docs). The dialer also sends a small probe there
    /// whenever a link opens and every heartbeat interval, so that the listener learns where
    /// to answer.
    ///
    /// # Errors
    /// As [`dial`](Self::dial), and [`TransportError::Os`] when the UDP socket cannot be made.
    pub fn dial_with_udp(
        addr: SocketAddr,
        datagrams: SocketAddr,
        config: HostLinkConfig,
        security: LinkSecurity,
    ) -> Result<Self, TransportError> {
        let sealed = security != LinkSecurity::Plain;
        let side = UdpSide::dial(datagrams, sealed).map_err(|e| os("bind datagram socket", &e))?;
        Self::dial_with(addr, config, security, Some(side))
    }

    fn dial_with(
        addr: SocketAddr,
        config: HostLinkConfig,
        security: LinkSecurity,
        udp: Option<(UdpSide, UdpSocket)>,
    ) -> Result<Self, TransportError> {
        let link = Self::start(config, security, udp)?;
        let shared = Arc::clone(&link.shared);
        // The dialer is not joined: it may sit in a connect for up to `connect_timeout`, and
        // it drops whatever it connects once the link has stopped.
        spawn("postbox-host-link-dial", move || connector::dial_loop(&shared, addr))
            .map_err(|e| link.abort_with(e))?;
        Ok(link)
    }

    /// Starts a link that accepts the peer's connections on `listener`; each new connection
    /// replaces the current one.
    ///
    /// # Errors
    /// [`TransportError::Os`] when the listener cannot be made non-blocking, or a thread or
    /// the waker cannot be created.
    pub fn listen(listener: TcpListener, config: HostLinkConfig) -> Result<Self, TransportError> {
        Self::listen_secured(listener, config, LinkSecurity::Plain)
    }

    /// Like [`listen`](Self::listen), with each accepted connection secured as `security`
    /// says; only a connection that passes (the client's certificate is signed by a trusted
    /// CA and names the peer, or the client proved the pre-shared key) replaces the current
    /// one. The session never reads a byte from any other.
    ///
    /// # Errors
    /// As [`listen`](Self::listen).
    pub fn listen_secured(
        listener: TcpListener,
        config: HostLinkConfig,
        security: LinkSecurity,
    ) -> Result<Self, TransportError> {
        Self::listen_with(listener, config, security, None)
    }

    /// Like [`listen_secured`](Self::listen_secured), with the session's best-effort datagrams
    /// carried over UDP: the dialer's ([`dial_with_udp`](Self::dial_with_udp)) arrive on
    /// `datagrams`, and this end's go back to where the dialer's latest authentic datagram
    /// came from (until one came, they are not sent).
    ///
    /// # Errors
    /// As [`listen`](Self::listen), and [`TransportError::Os`] when `datagrams` cannot be made
    /// non-blocking.
    pub fn listen_with_udp(
        listener: TcpListener,
        datagrams: UdpSocket,
        config: HostLinkConfig,
        security: LinkSecurity,
    ) -> Result<Self, TransportError> {
        let sealed = security != LinkSecurity::Plain;
        let side =
            UdpSide::listen(datagrams, sealed).map_err(|e| os("configure datagram socket", &e))?;
        Self::listen_with(listener, config, security, Some(side))
    }

    fn listen_with(
        listener: TcpListener,
        config: HostLinkConfig,
        security: LinkSecurity,
        udp: Option<(UdpSide, UdpSocket)>,
    ) -> Result<Self, TransportError> {
        listener.set_nonblocking(true).map_err(|e| os("configure listener", &e))?;
        let link = Self::start(config, security, udp)?;
        link.lock().want_connection = false;
        let shared = Arc::clone(&link.shared);
        let acceptor = spawn("postbox-host-link-accept", move || {
            connector::accept_loop(&shared, &listener);
        })
        .map_err(|e| link.abort_with(e))?;
        link.threads.lock().unwrap_or_else(PoisonError::into_inner).push(acceptor);
        Ok(link)
    }

    /// Starts a link that dials `addr` over QUIC, and dials again after every break or
    /// silence. Every connection is mutual TLS as `tls` says (the listener's certificate is
    /// checked against the CAs and the peer's name, and this end presents its own); a
    /// connection that fails it is dropped and dialed again after the backoff, with the reason
    /// in [`stats`](Self::stats) (`last_error`, `handshake_failures`). QUIC has no plain or
    /// pre-shared-key mode.
    ///
    /// # Errors
    /// [`TransportError::Os`] when the UDP socket, the runtime, a thread or the waker cannot
    /// be created. Connection failures are not errors here, as for [`dial`](Self::dial).
    pub fn dial_quic(
        addr: SocketAddr,
        tls: TlsConfig,
        config: HostLinkConfig,
    ) -> Result<Self, TransportError> {
        Self::start_quic(config, tls, quic::Carrier::Dial(addr))
    }

    /// Starts a link that accepts the peer's QUIC connections on `socket`; each new
    /// connection that passes mutual TLS (the client's certificate is signed by a trusted CA
    /// and names the peer) replaces the current one. The session never reads a byte from any
    /// other.
    ///
    /// # Errors
    /// [`TransportError::Os`] when the socket cannot be made non-blocking, or the runtime, a
    /// thread or the waker cannot be created.
    pub fn listen_quic(
        socket: UdpSocket,
        tls: TlsConfig,
        config: HostLinkConfig,
    ) -> Result<Self, TransportError> {
        Self::start_quic(config, tls, quic::Carrier::Listen(socket))
    }

    /// This end's session id: fresh for every `HostLink`, so the peer sees a new one as a
    /// restart.
    #[must_use]
    pub fn session_id(&self) -> SessionId {
        self.id
    }

    /// Sends `payload` on `stream`, waiting while the stream's window or the byte budget is
    /// full. Returns once the session holds the message; [`Event::Acked`] says when the peer
    /// has it.
    ///
    /// # Errors
    /// [`SendError`], holding the payload: too large, too many streams, or the link ended
    /// (`Ended`, with the reason). Never `Full`.
    pub fn send(&self, stream: StreamId, payload: Vec<u8>) -> Result<MessageId, SendError> {
        self.send_until(stream, payload, None)
    }

    /// Like [`send`](Self::send), but gives up with `Full` once `timeout` passed.
    ///
    /// # Errors
    /// As [`send`](Self::send), plus [`SendError::Full`] when the wait ended.
    pub fn send_timeout(
        &self,
        stream: StreamId,
        payload: Vec<u8>,
        timeout: Duration,
    ) -> Result<MessageId, SendError> {
        self.send_until(stream, payload, Some(Instant::now() + timeout))
    }

    /// Sends `payload` as a best-effort datagram on datagram stream `stream` (numbered apart
    /// from the reliable streams): sent once if a link is open, never resent, delivered by the
    /// peer at most once ([`Event::DatagramDelivered`]), possibly out of order, or not at all.
    /// Over UDP beside a TCP connection (see [`dial_with_udp`](Self::dial_with_udp)), as a
    /// QUIC datagram over QUIC, and otherwise on the connection with the rest. Never waits.
    ///
    /// # Errors
    /// [`DatagramSendError`], holding the payload: no link is open (`LinkDown`), the queue of
    /// datagrams not yet written is full, the payload is above
    /// [`SessionConfig::max_datagram_payload`](postbox_core::reliable::SessionConfig::max_datagram_payload),
    /// too many streams, or the link ended.
    pub fn send_datagram(
        &self,
        stream: StreamId,
        payload: Vec<u8>,
    ) -> Result<MessageId, DatagramSendError> {
        let mut core = self.lock();
        let id = core.session.send_datagram(stream, payload)?;
        let waiting = core.driver_waits();
        drop(core);
        self.shared.wake_driver(waiting);
        Ok(id)
    }

    /// Sends `payload` on `stream` if there is room now.
    ///
    /// # Errors
    /// As [`send_timeout`](Self::send_timeout) with a zero timeout: `Full` at once when the
    /// window is full.
    pub fn try_send(&self, stream: StreamId, payload: Vec<u8>) -> Result<MessageId, SendError> {
        self.send_until(stream, payload, Some(Instant::now()))
    }

    /// The next event: a delivery, an acknowledgement, a failure with its payload, a link
    /// opening, a restarted peer, or the end. Waits until there is one.
    ///
    /// # Errors
    /// [`RecvError`] once the link finished and its last event (`Ended`) was received.
    pub fn recv(&self) -> Result<Event, RecvError> {
        self.recv_until(None).map_err(|_| RecvError)
    }

    /// Appends every queued event to `events`, in order, without waiting.
    ///
    /// # Errors
    /// [`TryRecvError::Empty`] when none is queued, `Disconnected` once the link finished and
    /// its last event (`Ended`) was received.
    pub fn try_recv_batch(&self, events: &mut Vec<Event>) -> Result<(), TryRecvError> {
        let mut core = self.lock();
        if core.events.is_empty() {
            return Err(if core.finished {
                TryRecvError::Disconnected
            } else {
                TryRecvError::Empty
            });
        }
        events.extend(core.events.drain(..));
        Ok(())
    }

    /// Wakes `waker` whenever events are queued from now on (and at once if some are), so
    /// that an event loop polling the waker can take them with
    /// [`try_recv_batch`](Self::try_recv_batch): no thread needs to block in
    /// [`recv`](Self::recv) to hand them over.
    pub fn wake_on_events(&self, waker: Arc<Waker>) {
        let core = self.lock();
        if !core.events.is_empty() || core.finished {
            waker.wake();
        }
        // A second waker is ignored: the first one stays.
        let _ = self.shared.event_waker.set(waker);
    }

    /// Like [`recv`](Self::recv), waiting at most `timeout`.
    ///
    /// # Errors
    /// [`RecvTimeoutError::Timeout`] when nothing came in time, `Disconnected` as
    /// [`RecvError`].
    pub fn recv_timeout(&self, timeout: Duration) -> Result<Event, RecvTimeoutError> {
        self.recv_until(Some(Instant::now() + timeout))
    }

    /// The next event if one is queued.
    ///
    /// # Errors
    /// [`TryRecvError::Empty`] when none is, `Disconnected` as [`RecvError`].
    pub fn try_recv(&self) -> Result<Event, TryRecvError> {
        self.recv_until(Some(Instant::now())).map_err(|e| match e {
            RecvTimeoutError::Timeout => TryRecvError::Empty,
            RecvTimeoutError::Disconnected => TryRecvError::Disconnected,
        })
    }

    /// A snapshot of the session's and the connections' counters.
    #[must_use]
    pub fn stats(&self) -> HostLinkStats {
        let core = self.lock();
        core.counters.snapshot(core.session.stats(), core.events.len(), core.udp.peer)
    }

    /// Ends the link politely: pending messages fail with `Closed` (queued as
    /// [`Event::Failed`], then [`Event::Ended`]), the peer gets a close frame if a connection
    /// is open, and the threads stop. Returns once they have (within the configured stall
    /// timeout). Events stay available to `recv`; later sends fail with `Ended`.
    pub fn close(&self) {
        {
            let mut core = self.lock();
            core.session.close(Instant::now());
            self.shared.wake_driver(core.driver_waits());
        }
        self.join_threads();
    }

    /// A link over TCP with its driver thread, and the UDP side's reader if it has one. The
    /// UDP socket is theirs alone (not in the shared state): it closes when they stop.
    fn start(
        config: HostLinkConfig,
        security: LinkSecurity,
        udp: Option<(UdpSide, UdpSocket)>,
    ) -> Result<Self, TransportError> {
        let (side, socket) = udp.map_or((None, None), |(side, socket)| (Some(side), Some(socket)));
        let socket = socket.map(Arc::new);
        let link = Self::unstarted(config, security, side)?;
        let shared = Arc::clone(&link.shared);
        let driver_socket = socket.clone();
        let driver = spawn("postbox-host-link", move || driver::run(&shared, driver_socket))
            .map_err(|e| os("spawn host-link driver", &e))?;
        link.threads.lock().unwrap_or_else(PoisonError::into_inner).push(driver);
        if let Some(socket) = socket {
            let shared = Arc::clone(&link.shared);
            let reader = spawn("postbox-host-link-udp", move || {
                if let Some(side) = &shared.udp {
                    udp::read_loop(&shared, side, &socket);
                }
            })
            .map_err(|e| link.abort_with(e))?;
            link.threads.lock().unwrap_or_else(PoisonError::into_inner).push(reader);
        }
        Ok(link)
    }

    /// A link over QUIC with its thread: a runtime running the endpoint and the driver task.
    fn start_quic(
        config: HostLinkConfig,
        tls: TlsConfig,
        carrier: quic::Carrier,
    ) -> Result<Self, TransportError> {
        let mut config = config;
        quic::fit_session(&mut config.session);
        let link = Self::unstarted(config, LinkSecurity::Tls(tls.clone()), None)?;
        let runner = quic::Runner::new(&link.shared, tls, carrier)?;
        let thread = spawn("postbox-host-link-quic", move || runner.run())
            .map_err(|e| os("spawn host-link driver", &e))?;
        link.threads.lock().unwrap_or_else(PoisonError::into_inner).push(thread);
        Ok(link)
    }

    /// The handle and the shared state of a new session, with no thread yet.
    fn unstarted(
        config: HostLinkConfig,
        security: LinkSecurity,
        udp: Option<UdpSide>,
    ) -> Result<Self, TransportError> {
        let config = config.normalized();
        let id = fresh_session_id();
        let session = Session::new(id, config.session.clone(), Instant::now());
        let shared = Arc::new(Shared::new(config, security, session, Waker::new()?, udp));
        Ok(Self { shared, id, threads: Mutex::new(Vec::new()) })
    }

    fn send_until(
        &self,
        stream: StreamId,
        mut payload: Vec<u8>,
        deadline: Option<Instant>,
    ) -> Result<MessageId, SendError> {
        let mut core = self.lock();
        loop {
            match core.session.send(stream, payload) {
                Ok(id) => {
                    let waiting = core.driver_waits();
                    drop(core);
                    self.shared.wake_driver(waiting);
                    return Ok(id);
                }
                Err(SendError::Full(back)) => {
                    if deadline.is_some_and(|at| Instant::now() >= at) {
                        return Err(SendError::Full(back));
                    }
                    payload = back;
                    // Acks, failures and the end all arrive as events: each wakes `progress`.
                    core = self.shared.wait(&self.shared.progress, core, deadline);
                }
                Err(other) => return Err(other),
            }
        }
    }

    fn recv_until(&self, deadline: Option<Instant>) -> Result<Event, RecvTimeoutError> {
        let mut core = self.lock();
        loop {
            if let Some(event) = core.events.pop_front() {
                return Ok(event);
            }
            if core.finished {
                return Err(RecvTimeoutError::Disconnected);
            }
            if deadline.is_some_and(|at| Instant::now() >= at) {
                return Err(RecvTimeoutError::Timeout);
            }
            core = self.shared.wait(&self.shared.progress, core, deadline);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Core> {
        self.shared.lock()
    }

    fn join_threads(&self) {
        let threads =
            std::mem::take(&mut *self.threads.lock().unwrap_or_else(PoisonError::into_inner));
        for thread in threads {
            // A panicked thread already marked the link finished (see the driver).
            let _ = thread.join();
        }
    }

    /// Stops the threads already started and converts the spawn error.
    fn abort_with(&self, error: std::io::Error) -> TransportError {
        self.abort();
        os("spawn host-link thread", &error)
    }

    fn abort(&self) {
        self.lock().aborted = true;
        self.shared.wake_all();
        self.join_threads();
    }
}

impl Drop for HostLink {
    /// Stops every thread at once and closes the connection without a close frame: the peer
    /// sees a restart when a new incarnation connects, or `PeerDead` / `Unreachable` after its
    /// heartbeat bound.
    fn drop(&mut self) {
        self.abort();
    }
}

fn spawn(name: &str, run: impl FnOnce() + Send + 'static) -> std::io::Result<JoinHandle<()>> {
    thread::Builder::new().name(name.to_owned()).spawn(run)
}

fn os(operation: &'static str, error: &std::io::Error) -> TransportError {
    TransportError::Os { operation, kind: error.kind() }
}
