//! The broker's side: a TCP listener whose connections are authenticated on threads of their
//! own and become tunnels, each handing the broker a control socket as if a local node had
//! connected.

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Instant;

use super::error::{AttachError, TunnelError};
use super::handshake::{check_key, tls_as_broker, Deadlined};
use super::pump::{Pump, Side};
use super::security::AcceptSecurity;
use super::stream::TunnelStream;
use super::TunnelConfig;
use crate::wait::{wait_ready, Interest, Wait};
use crate::{ControlSocket, TransportError, Waker};

/// Accepts remote nodes over TCP: authenticates each connection, then relays it as a tunnel.
///
/// The broker polls [`as_fd`](Self::as_fd) and takes what happened with
/// [`try_next`](Self::try_next): nodes attached (a control socket to serve like an accepted
/// local one, and the principal the node proved), attempts refused, tunnels ended. Dropping
/// the listener stops accepting; tunnels already open go on until their ends close.
#[derive(Debug)]
pub struct AttachListener {
    local_addr: SocketAddr,
    shared: Arc<Shared>,
    stop: Arc<Waker>,
    thread: Option<JoinHandle<()>>,
}

/// What happened at an [`AttachListener`].
#[derive(Debug)]
#[non_exhaustive]
pub enum AttachEvent {
    /// A node authenticated; its tunnel runs.
    Attached(AttachedNode),
    /// A connection failed authentication (or the handshake) and was closed.
    Refused {
        /// Where it came from.
        address: SocketAddr,
        /// Why.
        error: AttachError,
    },
    /// A tunnel ended.
    Ended {
        /// The node's principal.
        principal: String,
        /// Where it came from.
        address: SocketAddr,
        /// `Ok` when both ends closed everything; otherwise why the connection was given up.
        result: Result<(), TunnelError>,
    },
}

/// A node attached over TCP.
#[derive(Debug)]
pub struct AttachedNode {
    /// The broker's end of the node's control connection.
    pub control: ControlSocket,
    /// Who the node proved to be: the name of its key, or its certificate's DNS name.
    pub principal: String,
    /// Where it connected from.
    pub address: SocketAddr,
}

#[derive(Debug)]
struct Shared {
    events: Mutex<VecDeque<AttachEvent>>,
    ready: Waker,
    handshakes: AtomicUsize,
    /// Handshakes in progress per source address.
    handshakes_from: Mutex<HashMap<IpAddr, usize>>,
    /// Tunnels running (authenticated).
    tunnels: AtomicUsize,
    security: AcceptSecurity,
    config: TunnelConfig,
}

impl AttachListener {
    /// Binds `address` and starts accepting.
    ///
    /// # Errors
    /// [`TransportError::Os`] when the address cannot be bound or the thread not started.
    pub fn bind(
        address: SocketAddr,
        security: AcceptSecurity,
        config: TunnelConfig,
    ) -> Result<Self, TransportError> {
        let os =
            |operation| move |e: std::io::Error| TransportError::Os { operation, kind: e.kind() };
        let listener = TcpListener::bind(address).map_err(os("bind the node listener"))?;
        listener.set_nonblocking(true).map_err(os("bind the node listener"))?;
        let local_addr = listener.local_addr().map_err(os("bind the node listener"))?;
        let shared = Arc::new(Shared {
            events: Mutex::new(VecDeque::new()),
            ready: Waker::new()?,
            handshakes: AtomicUsize::new(0),
            handshakes_from: Mutex::new(HashMap::new()),
            tunnels: AtomicUsize::new(0),
            security,
            config,
        });
        let stop = Arc::new(Waker::new()?);
        let thread = {
            let (shared, stop) = (Arc::clone(&shared), Arc::clone(&stop));
            std::thread::Builder::new()
                .name("postbox-node-listener".into())
                .spawn(move || accept_loop(&listener, &shared, &stop))
                .map_err(os("start the node listener"))?
        };
        Ok(Self { local_addr, shared, stop, thread: Some(thread) })
    }

    /// The address bound (with the port the system chose for port 0).
    #[must_use]
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Readable while events wait.
    #[must_use]
    pub fn as_fd(&self) -> BorrowedFd<'_> {
        self.shared.ready.as_fd()
    }

    /// The next event, if any.
    pub fn try_next(&self) -> Option<AttachEvent> {
        let mut events = self.shared.events.lock().unwrap_or_else(PoisonError::into_inner);
        let event = events.pop_front();
        if events.is_empty() {
            self.shared.ready.reset();
        }
        event
    }
}

impl Drop for AttachListener {
    fn drop(&mut self) {
        self.stop.wake();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Shared {
    fn push(&self, event: AttachEvent) {
        self.events.lock().unwrap_or_else(PoisonError::into_inner).push_back(event);
        self.ready.wake();
    }

    /// Counts a handshake from `ip`, unless it has as many in progress as one address may.
    fn begin_handshake(&self, ip: IpAddr) -> bool {
        let mut from = self.handshakes_from.lock().unwrap_or_else(PoisonError::into_inner);
        let count = from.entry(ip).or_insert(0);
        if *count >= MAX_HANDSHAKES_PER_ADDRESS {
            return false;
        }
        *count += 1;
        true
    }

    /// Gives back the slot of a handshake from `ip` that finished (or never started).
    fn end_handshake(&self, ip: IpAddr) {
        self.handshakes.fetch_sub(1, Ordering::AcqRel);
        let mut from = self.handshakes_from.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(count) = from.get_mut(&ip) {
            *count -= 1;
            if *count == 0 {
                from.remove(&ip);
            }
        }
    }
}

fn accept_loop(listener: &TcpListener, shared: &Arc<Shared>, stop: &Waker) {
    loop {
        let set = [(stop.as_fd(), Interest::READ), (listener.as_fd(), Interest::READ)];
        match wait_ready(&set, Wait::Forever) {
            Ok(ready) if ready.contains(&0) => return,
            Ok(_) => {}
            // poll itself failed (out of memory): try again shortly, never spin.
            Err(_) => std::thread::sleep(std::time::Duration::from_millis(10)),
        }
        loop {
            let (socket, address) = match listener.accept() {
                Ok(accepted) => accepted,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                // Nothing pending, or out of descriptors: wait for the next readiness (and
                // rest first in the second case, not to spin on the backlog).
                Err(e) => {
                    if e.kind() != std::io::ErrorKind::WouldBlock {
                        std::thread::sleep(std::time::Duration::from_millis(100));
                    }
                    break;
                }
            };
            // A slow or silent client holds one handshake thread for the handshake timeout at
            // most, and only a few at once: the rest are turned away, never queued.
            // Only this thread adds to either count, so the check holds until the add.
            let busy =
                shared.handshakes.load(Ordering::Acquire) + shared.tunnels.load(Ordering::Acquire);
            if busy >= shared.config.max_tunnels {
                shared.push(AttachEvent::Refused { address, error: AttachError::TooManyTunnels });
                continue;
            }
            // One source address cannot take every handshake slot either.
            if shared.handshakes.load(Ordering::Acquire) >= MAX_HANDSHAKES
                || !shared.begin_handshake(address.ip())
            {
                shared.push(AttachEvent::Refused { address, error: AttachError::Busy });
                continue;
            }
            shared.handshakes.fetch_add(1, Ordering::AcqRel);
            let worker = Arc::clone(shared);
            let spawned = std::thread::Builder::new()
                .name("postbox-tunnel".into())
                .spawn(move || serve_connection(socket, address, &worker));
            if spawned.is_err() {
                // The socket went with the closure that never ran: it is closed.
                shared.end_handshake(address.ip());
            }
        }
    }
}

/// Authenticates one connection, then runs its tunnel on this thread.
fn serve_connection(socket: TcpStream, address: SocketAddr, shared: &Shared) {
    let authenticated = authenticate(socket, &shared.security, shared.config);
    if authenticated.is_ok() {
        // Counted before the handshake's slot is given back, so the listener never sees
        // this connection in neither count.
        shared.tunnels.fetch_add(1, Ordering::AcqRel);
    }
    shared.end_handshake(address.ip());
    let authenticated = authenticated.map_err(|error| {
        shared.push(AttachEvent::Refused { address, error });
    });
    let Ok(authenticated) = authenticated else { return };
    let result = run_tunnel(authenticated, address, shared);
    shared.tunnels.fetch_sub(1, Ordering::AcqRel);
    if let Some((principal, result)) = result {
        shared.push(AttachEvent::Ended { principal, address, result });
    }
}

/// Runs an authenticated connection's tunnel on this thread; the principal and how the
/// tunnel ended, or `None` when it could not start (the refusal is pushed).
fn run_tunnel(
    authenticated: (TunnelStream, String),
    address: SocketAddr,
    shared: &Shared,
) -> Option<(String, Result<(), TunnelError>)> {
    let refuse = |error| {
        shared.push(AttachEvent::Refused { address, error });
        None
    };
    let (stream, principal) = authenticated;
    let opened = ControlSocket::pair().map_err(|e| match e {
        TransportError::Os { kind, .. } => AttachError::Os { operation: "tunnel", kind },
        _ => AttachError::Os { operation: "tunnel", kind: std::io::ErrorKind::Other },
    });
    let (broker_end, pump_end) = match opened {
        Ok(pair) => pair,
        Err(error) => return refuse(error),
    };
    if let Err(e) = stream.configure() {
        return refuse(AttachError::Os { operation: "tunnel", kind: e.kind() });
    }
    let node = AttachedNode { control: broker_end, principal: principal.clone(), address };
    shared.push(AttachEvent::Attached(node));
    let result = Pump::new(Side::Broker, stream, pump_end, shared.config).run();
    Some((principal, result))
}

/// The broker's side of the handshake, bounded by the handshake timeout.
fn authenticate(
    socket: TcpStream,
    security: &AcceptSecurity,
    config: TunnelConfig,
) -> Result<(TunnelStream, String), AttachError> {
    // One deadline for the whole handshake, not one per read: a client that trickles its
    // greeting a byte at a time is cut off as soon as a silent one.
    let deadline = Instant::now() + config.handshake_timeout;
    socket
        .set_nodelay(true)
        .map_err(|e| AttachError::Os { operation: "set up connection", kind: e.kind() })?;
    match security {
        AcceptSecurity::PreSharedKeys(keys) => {
            let principal = check_key(&mut Deadlined::new(&socket, deadline), keys)?;
            Ok((TunnelStream::Plain(socket), principal))
        }
        AcceptSecurity::Tls(tls) => tls_as_broker(socket, tls, deadline),
    }
}

/// Handshakes in progress at once, at most.
const MAX_HANDSHAKES: usize = 8;
/// Handshakes in progress at once from one source address, at most.
const MAX_HANDSHAKES_PER_ADDRESS: usize = 4;
