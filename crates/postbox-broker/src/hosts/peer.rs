//! One peer host: its host link, restarted after every session end. The link wakes the
//! broker's event loop when it has events, and the loop takes them (no thread in between).

use std::collections::VecDeque;
use std::net::{TcpListener, UdpSocket};
use std::sync::Arc;
use std::time::{Duration, Instant};

use postbox_transport::host_link::{
    DatagramSendError, Event, HostLink, HostLinkConfig, HostLinkStats, LinkSecurity, LinkState,
    SendError, StreamId,
};
use postbox_transport::{TransportError, Waker};

use super::config::{link_label, DatagramRoute, PeerConfig, PeerConnect, PeerTransport};
use super::status::{HostState, HostStatus};

/// One peer and its current host link.
#[derive(Debug)]
pub(crate) struct Peer {
    pub(crate) config: PeerConfig,
    link: Option<HostLink>,
    /// How many links were started (each one a new session).
    incarnation: u64,
    /// When to try starting a link again after a start failed or a session ended.
    pub(crate) restart_at: Option<Instant>,
    /// Messages waiting for room in the link, sent before anything else for this peer so
    /// that each stream keeps its order.
    pub(crate) backlog: VecDeque<(StreamId, Vec<u8>)>,
    /// The last session's counters, shown while a new one starts.
    last_stats: Option<HostLinkStats>,
    /// One-way messages of datagram ports lost on the way to or from this peer, as far as
    /// this broker can tell, since it started (docs/network.md §13).
    pub(crate) datagrams_lost: u64,
}

impl Peer {
    pub(crate) fn new(config: PeerConfig) -> Self {
        Self {
            config,
            link: None,
            incarnation: 0,
            restart_at: Some(Instant::now()),
            backlog: VecDeque::new(),
            last_stats: None,
            datagrams_lost: 0,
        }
    }

    /// Starts a new host link (a new session, so the peer sees a restart) that wakes `waker`
    /// when it has events; a TCP link gets its UDP side for datagrams as the peer's
    /// [`DatagramRoute`] says. On failure (the listening address, TCP or UDP, is still held by
    /// the previous link, or taken) the caller retries later.
    pub(crate) fn start(
        &mut self,
        config: &HostLinkConfig,
        waker: &Arc<Waker>,
    ) -> Result<(), TransportError> {
        let security = self.config.security.clone();
        let bind_failed = |e: std::io::Error| TransportError::Os {
            operation: "bind host-link listener",
            kind: e.kind(),
        };
        let route = self.config.datagrams;
        let link = match (self.config.transport, self.config.connect) {
            (PeerTransport::Tcp, PeerConnect::Dial(address)) => match route {
                DatagramRoute::Stream => HostLink::dial_secured(address, config.clone(), security)?,
                DatagramRoute::SameAddress => {
                    HostLink::dial_with_udp(address, address, config.clone(), security)?
                }
                DatagramRoute::Udp(to) => {
                    HostLink::dial_with_udp(address, to, config.clone(), security)?
                }
            },
            (PeerTransport::Tcp, PeerConnect::Listen(address)) => {
                let listener = TcpListener::bind(address).map_err(bind_failed)?;
                let udp_at = match route {
                    DatagramRoute::Stream => None,
                    // The port the listener got, should the address ask for any.
                    DatagramRoute::SameAddress => Some(listener.local_addr().unwrap_or(address)),
                    DatagramRoute::Udp(at) => Some(at),
                };
                match udp_at.map(|at| (at, UdpSocket::bind(at))) {
                    None => HostLink::listen_secured(listener, config.clone(), security)?,
                    Some((_, Ok(socket))) => {
                        HostLink::listen_with_udp(listener, socket, config.clone(), security)?
                    }
                    Some((at, Err(error))) if route == DatagramRoute::SameAddress => {
                        // The UDP twin of the link's port is someone else's: the link itself
                        // still serves everything but datagrams, which the dialer sends there.
                        tracing::warn!(
                            host = %self.config.name, %at, %error,
                            "datagram address taken; datagram ports lose this peer's datagrams \
                             (set datagram = \"ADDR:PORT\" or \"tcp\" for the peer)"
                        );
                        HostLink::listen_secured(listener, config.clone(), security)?
                    }
                    Some((_, Err(error))) => {
                        return Err(TransportError::Os {
                            operation: "bind host-link datagram socket",
                            kind: error.kind(),
                        });
                    }
                }
            }
            (PeerTransport::Quic, connect) => {
                // The configuration parser gives every QUIC peer TLS (`QuicWithoutTls`).
                let LinkSecurity::Tls(tls) = security else {
                    return Err(TransportError::Os {
                        operation: "start a QUIC host link without TLS",
                        kind: std::io::ErrorKind::InvalidInput,
                    });
                };
                match connect {
                    PeerConnect::Dial(address) => {
                        HostLink::dial_quic(address, tls, config.clone())?
                    }
                    PeerConnect::Listen(address) => {
                        let socket = UdpSocket::bind(address).map_err(bind_failed)?;
                        HostLink::listen_quic(socket, tls, config.clone())?
                    }
                }
            }
        };
        link.wake_on_events(Arc::clone(waker));
        self.incarnation += 1;
        self.link = Some(link);
        self.restart_at = None;
        self.backlog.clear();
        Ok(())
    }

    /// Appends the current link's queued events to `events`, in order.
    pub(crate) fn take_events(&self, events: &mut Vec<Event>) {
        if let Some(link) = &self.link {
            // Empty, or finished after its last event (`Ended`, which ends this link here).
            let _ = link.try_recv_batch(events);
        }
    }

    /// Forgets the current link after its session ended; a new one starts at `restart_at`.
    pub(crate) fn ended(&mut self, restart_at: Instant) {
        if let Some(link) = self.link.take() {
            self.last_stats = Some(link.stats());
        }
        self.backlog.clear();
        self.restart_at = Some(restart_at);
    }

    /// Sends `payload` on `stream` unless the window is full (or older messages wait):
    /// `Err(Full)` hands it back for later. Never blocks.
    pub(crate) fn try_send(&self, stream: StreamId, payload: Vec<u8>) -> Result<(), SendError> {
        let Some(link) = &self.link else {
            return Err(SendError::Ended(payload, postbox_core::reliable::SessionError::Closed));
        };
        if !self.backlog.is_empty() {
            return Err(SendError::Full(payload));
        }
        link.try_send(stream, payload).map(|_| ())
    }

    /// Sends a best-effort datagram on `stream` if a link is open and has room; a datagram
    /// that cannot go now is not kept (the error hands it back).
    pub(crate) fn send_datagram(
        &self,
        stream: StreamId,
        payload: Vec<u8>,
    ) -> Result<(), DatagramSendError> {
        let Some(link) = &self.link else {
            return Err(DatagramSendError::LinkDown(payload));
        };
        link.send_datagram(stream, payload).map(|_| ())
    }

    /// Sends a control message now, or keeps it for when there is room. Dropped when no link
    /// is up: the channel it is about ended with the session.
    pub(crate) fn send_or_keep(&mut self, stream: StreamId, payload: Vec<u8>) {
        if self.link.is_none() {
            return;
        }
        match self.try_send(stream, payload) {
            Ok(()) => {}
            Err(SendError::Full(payload)) => self.backlog.push_back((stream, payload)),
            // Too large cannot happen for control messages; an ended session fails them all.
            Err(_) => {}
        }
    }

    /// Sends what the backlog holds, in order, while there is room.
    pub(crate) fn flush_backlog(&mut self) {
        let Some(link) = &self.link else { return };
        while let Some((stream, payload)) = self.backlog.pop_front() {
            match link.try_send(stream, payload) {
                Ok(_) => {}
                Err(SendError::Full(payload)) => {
                    self.backlog.push_front((stream, payload));
                    return;
                }
                Err(_) => {}
            }
        }
    }

    /// The link's smoothed round-trip time, once measured.
    pub(crate) fn smoothed_rtt(&self) -> Option<Duration> {
        self.link.as_ref()?.stats().session.smoothed_rtt
    }

    /// Whether a link is started (it may still be connecting).
    pub(crate) fn has_link(&self) -> bool {
        self.link.is_some()
    }

    /// What `postbox ls` shows of this peer.
    pub(crate) fn status(&self, channels: u32, direct_links: u32) -> HostStatus {
        let (stats, state) = match (&self.link, &self.last_stats) {
            (Some(link), _) => {
                let stats = link.stats();
                let state = match stats.session.state {
                    LinkState::Open => HostState::Open,
                    LinkState::ExpectHello => HostState::Connecting,
                    LinkState::Ended => HostState::Ended,
                    _ => HostState::Down,
                };
                (Some(stats), state)
            }
            (None, last) => (last.clone(), HostState::Ended),
        };
        HostStatus {
            name: self.config.name.to_string(),
            connect: format!("{}{}", self.config.connect, link_label(&self.config)),
            state,
            rtt: stats.as_ref().and_then(|s| s.session.smoothed_rtt),
            retransmissions: stats.as_ref().map_or(0, |s| s.session.retransmissions),
            duplicates: stats.as_ref().map_or(0, |s| s.session.duplicates_dropped),
            corrupt_frames: stats.as_ref().map_or(0, |s| s.session.corrupt_frames),
            connections: stats.as_ref().map_or(0, |s| s.connections),
            sessions: self.incarnation,
            channels,
            direct_links,
            datagrams_lost: self.datagrams_lost,
        }
    }
}

impl Drop for Peer {
    /// Closes the link politely: the peer fails its channels at once instead of after its
    /// heartbeat bound.
    fn drop(&mut self) {
        if let Some(link) = self.link.take() {
            link.close();
        }
    }
}
