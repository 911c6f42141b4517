//! A node attached to a broker on another host: one TCP connection (a **tunnel**) that carries
//! the node's control packets and every link the broker would otherwise pass it as a
//! descriptor, since descriptors cannot cross TCP (`docs/network.md` §14).
//!
//! ```text
//! node process                                   broker process
//! Node ─control socketpair─ pump ══TCP══ pump ─control socketpair─ event loop
//! link end ─socketpair─────  │    channels   │  ─ socket the broker passed ─ peer node
//! ```
//!
//! Each end runs a pump thread (`pump.rs`). The node's side [`dial`]s, authenticates, and hands
//! the node a [`ControlSocket`] that behaves as one to a local broker: control packets cross
//! as they are, and each link the broker passes arrives as a fresh socketpair end whose bytes
//! the pumps relay. The broker's side ([`AttachListener`]) hands the broker a control socket
//! of its own for each authenticated node, so its event loop serves remote nodes as it serves
//! local ones. Only Unix links can be relayed: the broker gives remote nodes no shared-memory
//! links.
//!
//! Frames are `postbox_core::wire::tunnel`'s: each relayed link is a channel with its own
//! credit (a window of [`TunnelConfig::window`] bytes), so one slow reader never holds up the
//! others. Heartbeats keep a quiet tunnel alive; a tunnel silent for
//! [`TunnelConfig::dead_after`] ends, and so does one that brings a malformed frame or breaks
//! the rules. When a tunnel ends, every local end closes: the node's calls fail with
//! `PeerDied`, its broker requests with `BrokerGone`; the broker drops the node as if its
//! process had died.
//!
//! ```text
//! tunnel/
//! ├── listener.rs   AttachListener: accepts, authenticates on a thread per connection
//! ├── handshake.rs  the pre-shared key exchange and the TLS handshakes
//! ├── security.rs   AttachSecurity (node), AcceptSecurity, NamedKey, NodeTlsConfig (broker)
//! ├── pump.rs       the relay loop, one thread per tunnel end
//! ├── channel.rs    one relayed link: its socket, its bytes in waiting, its credit
//! ├── stream.rs     the connection: plain TCP or TLS, non-blocking
//! └── error.rs      AttachError, TunnelError
//! ```

mod channel;
mod error;
mod handshake;
mod listener;
mod pump;
mod security;
mod stream;
#[cfg(test)]
mod tests;

use std::net::{TcpStream, ToSocketAddrs};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};

pub use error::{AttachError, TunnelError};
pub use listener::{AttachEvent, AttachListener, AttachedNode};
pub use security::{
    check_principal, AcceptSecurity, AttachSecurity, NamedKey, NodeTlsConfig, PrincipalNameError,
};

use crate::{ControlSocket, TransportError};
use pump::{Pump, Side};
use stream::TunnelStream;

/// Timing and sizes of a tunnel; both ends should use the same.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TunnelConfig {
    /// A tunnel end that sent nothing for this long sends a ping.
    pub heartbeat_interval: Duration,
    /// A tunnel whose other end sent nothing for this long (or took none of this end's bytes)
    /// is given up.
    pub dead_after: Duration,
    /// Connecting and authenticating must finish within this.
    pub handshake_timeout: Duration,
    /// Bytes of one link in flight towards its reader, at most (per direction).
    pub window: u32,
    /// Links one tunnel relays at once, at most: a tunnel asked to relay more ends with
    /// [`TunnelError::TooManyChannels`].
    pub max_channels: usize,
    /// Bytes from the other end waiting for this end's local readers, across all links of
    /// one tunnel, at most: a tunnel brought more ends with [`TunnelError::OverBudget`].
    pub inbound_budget: usize,
    /// Tunnels (and handshakes) an [`AttachListener`] serves at once, at most; it turns
    /// further connections away ([`AttachError::TooManyTunnels`]). The node's side ignores it.
    pub max_tunnels: usize,
}

impl Default for TunnelConfig {
    fn default() -> Self {
        Self {
            heartbeat_interval: Duration::from_secs(1),
            dead_after: Duration::from_secs(10),
            handshake_timeout: Duration::from_secs(10),
            window: 256 * 1024,
            max_channels: 256,
            inbound_budget: 16 * 1024 * 1024,
            max_tunnels: 64,
        }
    }
}

/// The node's side of a running tunnel, to learn when it settled or ended.
///
/// Bytes a node wrote to a link are safe once the broker's side of the tunnel passed them on;
/// before, they wait in this process. A node that is about to exit closes its control socket
/// and links, then waits for [`wait_settled`](Self::wait_settled), so that nothing it wrote is
/// lost with the process.
#[derive(Debug, Clone)]
pub struct Tunnel {
    state: Arc<(Mutex<Progress>, Condvar)>,
}

#[derive(Debug, Default)]
struct Progress {
    settled: bool,
    ended: Option<Result<(), TunnelError>>,
}

impl Tunnel {
    fn new() -> Self {
        Self { state: Arc::new((Mutex::new(Progress::default()), Condvar::new())) }
    }

    /// Waits, at most `timeout`, until the tunnel has **settled**: the control channel is
    /// closed both ways, and every link whose end this process closed had all its bytes
    /// passed on at the broker's side (or the link was reset there), or until it ended.
    /// Returns whether it did.
    #[must_use]
    pub fn wait_settled(&self, timeout: Duration) -> bool {
        self.wait(timeout, |p| p.settled || p.ended.is_some()).is_some()
    }

    /// Waits, at most `timeout`, until the tunnel has ended: `Some` with how, `None` while it
    /// still runs (a link end of this process or of the broker's side is still open).
    #[must_use]
    pub fn wait_ended(&self, timeout: Duration) -> Option<Result<(), TunnelError>> {
        self.wait(timeout, |p| p.ended.is_some()).and_then(|p| p.ended)
    }

    fn wait(&self, timeout: Duration, done: impl Fn(&Progress) -> bool) -> Option<Progress> {
        let (state, changed) = &*self.state;
        let guard = state.lock().unwrap_or_else(PoisonError::into_inner);
        let (guard, _) = changed
            .wait_timeout_while(guard, timeout, |p| !done(p))
            .unwrap_or_else(PoisonError::into_inner);
        done(&guard).then(|| Progress { settled: guard.settled, ended: guard.ended })
    }

    fn update(&self, change: impl FnOnce(&mut Progress)) {
        let (state, changed) = &*self.state;
        change(&mut state.lock().unwrap_or_else(PoisonError::into_inner));
        changed.notify_all();
    }

    pub(crate) fn settle(&self) {
        self.update(|p| p.settled = true);
    }

    fn end(&self, result: Result<(), TunnelError>) {
        self.update(|p| p.ended = Some(result));
    }
}

/// Connects to the broker listening for remote nodes at `address` (`host:port`),
/// authenticates, and starts the tunnel; returns the node's end of the control connection, to
/// be used as a local broker's, and the tunnel's handle.
///
/// # Errors
/// [`AttachError`]: `Unresolved`, `Connect`, `Authentication` (a wrong key, a refused
/// certificate), `HandshakeTimeout`, `Closed`, `Os`.
pub fn dial(
    address: &str,
    security: &AttachSecurity,
    config: TunnelConfig,
) -> Result<(ControlSocket, Tunnel), AttachError> {
    let deadline = Instant::now() + config.handshake_timeout;
    let socket = connect(address, config.handshake_timeout)?;
    socket
        .set_nodelay(true)
        .map_err(|e| AttachError::Os { operation: "set up connection", kind: e.kind() })?;
    let stream = match security {
        AttachSecurity::PreSharedKey(key) => {
            handshake::prove_key(&mut handshake::Deadlined::new(&socket, deadline), key)?;
            TunnelStream::Plain(socket)
        }
        AttachSecurity::Tls(tls) => handshake::tls_as_node(socket, tls, deadline)?,
    };
    stream
        .configure()
        .map_err(|e| AttachError::Os { operation: "set up tunnel", kind: e.kind() })?;
    let (node_end, pump_end) = ControlSocket::pair().map_err(|e| match e {
        TransportError::Os { kind, .. } => AttachError::Os { operation: "set up tunnel", kind },
        _ => AttachError::Os { operation: "set up tunnel", kind: std::io::ErrorKind::Other },
    })?;
    let tunnel = Tunnel::new();
    let pump = Pump::new(Side::Node, stream, pump_end, config).reporting_to(tunnel.clone());
    let handle = tunnel.clone();
    std::thread::Builder::new()
        .name("postbox-tunnel".into())
        .spawn(move || handle.end(pump.run()))
        .map_err(|e| AttachError::Os { operation: "start the tunnel", kind: e.kind() })?;
    Ok((node_end, tunnel))
}

/// The first address of `address` that accepts a connection within `timeout`.
fn connect(address: &str, timeout: Duration) -> Result<TcpStream, AttachError> {
    let candidates = address.to_socket_addrs().map_err(|_| AttachError::Unresolved)?;
    let mut last = AttachError::Unresolved;
    for candidate in candidates {
        match TcpStream::connect_timeout(&candidate, timeout) {
            Ok(socket) => return Ok(socket),
            Err(e) => last = AttachError::Connect(e.kind()),
        }
    }
    Err(last)
}
