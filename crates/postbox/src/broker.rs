//! The broker as a library user sees it: embedded in this process, or run as the daemon.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

use postbox_broker::{BrokerConfig, BrokerError, BrokerHandle};

use crate::error::NodeError;
use crate::Node;

/// A broker running inside this process on its own thread, with a private socket.
///
/// The tests and `postbox demo` use it; child processes reach it through the socket path
/// (set `POSTBOX_SOCKET` to [`socket_path`](Self::socket_path) in their environment).
/// Dropping it stops the broker and removes its socket directory.
///
/// # Examples
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let broker = postbox::Broker::embedded()?;
/// let server = broker.node()?;
/// let port = server.port("echo").open()?;
/// let client = broker.node()?;
/// client.connect("echo")?.send("hi")?;
/// assert_eq!(port.recv()?.body(), b"hi");
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct Broker {
    handle: Option<BrokerHandle>,
    private_dir: Option<PathBuf>,
}

impl Broker {
    /// Starts a broker with default settings on a private socket in a new temporary
    /// directory (mode 0700).
    ///
    /// # Errors
    /// [`BrokerError`] when the directory or socket cannot be made.
    pub fn embedded() -> Result<Self, BrokerError> {
        Self::embedded_with(|config| config)
    }

    /// Like [`embedded`](Self::embedded), with settings adjusted by `configure` (the socket
    /// path is chosen by this function).
    ///
    /// # Errors
    /// [`BrokerError`] when the directory or socket cannot be made.
    pub fn embedded_with(
        configure: impl FnOnce(BrokerConfig) -> BrokerConfig,
    ) -> Result<Self, BrokerError> {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "postbox-embedded-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let mut config = configure(BrokerConfig::new(dir.join("broker.sock")));
        config.socket_path = dir.join("broker.sock");
        let handle = postbox_broker::Broker::bind(config)?.spawn()?;
        Ok(Self { handle: Some(handle), private_dir: Some(dir) })
    }

    /// Starts a broker with `config` on its own thread in this process.
    ///
    /// # Errors
    /// [`BrokerError::AlreadyRunning`] and socket errors.
    pub fn start(config: BrokerConfig) -> Result<Self, BrokerError> {
        let handle = postbox_broker::Broker::bind(config)?.spawn()?;
        Ok(Self { handle: Some(handle), private_dir: None })
    }

    /// Runs a broker with `config` in this thread until the process ends (`postbox daemon`).
    ///
    /// # Errors
    /// [`BrokerError`] when it cannot start.
    pub fn run_daemon(config: BrokerConfig) -> Result<(), BrokerError> {
        postbox_broker::Broker::bind(config)?.run()
    }

    /// The control socket nodes connect to.
    #[must_use]
    pub fn socket_path(&self) -> &Path {
        // Invariant: `handle` is Some until drop.
        self.handle.as_ref().expect("broker handle present until drop").socket_path()
    }

    /// Where nodes on other hosts attach over TCP ([`BrokerConfig::remote_nodes`], with the
    /// port chosen when it was 0): give it to [`Node::attach_tcp`]. `None` when not
    /// configured.
    #[must_use]
    pub fn remote_address(&self) -> Option<std::net::SocketAddr> {
        self.handle.as_ref().and_then(BrokerHandle::remote_address)
    }

    /// Replaces the broker's access policy; requests from now on are checked against it.
    pub fn reload_policy(&self, policy: postbox_broker::Policy) {
        if let Some(handle) = &self.handle {
            handle.reload_policy(policy);
        }
    }

    /// Attaches a new node in this process to this broker.
    ///
    /// # Errors
    /// [`NodeError`].
    pub fn node(&self) -> Result<Node, NodeError> {
        Node::attach_to(self.socket_path())
    }

    /// Stops the broker now. Nodes see `BrokerGone` for new requests; their links keep
    /// working.
    ///
    /// # Errors
    /// What the broker loop returned.
    pub fn stop(mut self) -> Result<(), BrokerError> {
        let result = self.handle.take().map_or(Ok(()), BrokerHandle::stop);
        self.remove_dir();
        result
    }

    fn remove_dir(&mut self) {
        if let Some(dir) = self.private_dir.take() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        drop(self.handle.take());
        self.remove_dir();
    }
}
