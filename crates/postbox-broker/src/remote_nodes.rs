//! Remote nodes: processes on other hosts that attach to this broker directly, over TCP
//! (`postbox daemon --listen-tcp ADDR --tcp-key NAME=FILE`; docs/network.md §14).
//!
//! Each authenticated connection becomes a tunnel (`postbox_transport::tunnel`) that hands the
//! event loop a control socket, served like a local node's. What differs is who the node is:
//! it has no uid or pid the kernel vouches for, so it is known by its **principal**, the name
//! of the key it proved it holds (or of its certificate), and the access policy grants it
//! rights only where a rule names it (`remote_nodes = ["NAME"]`). Its links are Unix links
//! only: shared memory cannot cross the tunnel.

use std::net::SocketAddr;
use std::path::Path;

use postbox_transport::host_link::{PreSharedKey, SecurityConfigError};
use postbox_transport::tunnel::{
    AcceptSecurity, NamedKey, NodeTlsConfig, PrincipalNameError, TunnelConfig,
};

/// Settings of a broker that accepts remote nodes over TCP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteNodesConfig {
    /// Where to listen (port 0: a port the system chooses; see
    /// [`Broker::remote_address`](crate::Broker::remote_address)).
    pub listen: SocketAddr,
    /// How nodes authenticate: named pre-shared keys, or client certificates.
    pub security: AcceptSecurity,
    /// Heartbeats, the silence bound, the handshake timeout and the per-link window.
    pub tunnel: TunnelConfig,
}

/// Why remote node settings could not be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RemoteNodesConfigError {
    /// A key file could not be read, or holds too short a key.
    #[error("key {name}: {error}")]
    BadKey {
        /// The key's name.
        name: String,
        /// What was wrong with it.
        error: SecurityConfigError,
    },
    /// A key's name cannot be a principal.
    #[error(transparent)]
    BadName(#[from] PrincipalNameError),
    /// A key flag names no file.
    #[error("{0:?}: expected NAME=FILE or FILE")]
    BadFlag(String),
    /// Two keys have the same name.
    #[error("two keys are named {0}")]
    DuplicateName(String),
    /// Two keys are the same: a node holding it could not be told apart.
    #[error("keys {0} and {1} are the same key")]
    DuplicateKey(String, String),
    /// Neither keys nor TLS settings: nobody could attach.
    #[error("a TCP listener for nodes needs at least one key (--tcp-key) or TLS settings")]
    NoCredentials,
}

impl RemoteNodesConfig {
    /// Nodes attach at `listen` with one of `keys`, each known by its key's name.
    ///
    /// # Errors
    /// `NoCredentials` for no keys, `DuplicateName` or `DuplicateKey`.
    pub fn with_keys(
        listen: SocketAddr,
        keys: Vec<NamedKey>,
    ) -> Result<Self, RemoteNodesConfigError> {
        if keys.is_empty() {
            return Err(RemoteNodesConfigError::NoCredentials);
        }
        for (index, key) in keys.iter().enumerate() {
            for earlier in &keys[..index] {
                if earlier.name() == key.name() {
                    return Err(RemoteNodesConfigError::DuplicateName(key.name().to_owned()));
                }
                if earlier.key() == key.key() {
                    let names = (earlier.name().to_owned(), key.name().to_owned());
                    return Err(RemoteNodesConfigError::DuplicateKey(names.0, names.1));
                }
            }
        }
        Ok(Self {
            listen,
            security: AcceptSecurity::PreSharedKeys(keys),
            tunnel: TunnelConfig::default(),
        })
    }

    /// Nodes attach at `listen` over mutual TLS, each known by its certificate's DNS name.
    #[must_use]
    pub fn with_tls(listen: SocketAddr, tls: NodeTlsConfig) -> Self {
        Self { listen, security: AcceptSecurity::Tls(tls), tunnel: TunnelConfig::default() }
    }

    /// A key from a `--tcp-key` flag: `NAME=FILE`, or `FILE` (named after the file's stem,
    /// `app.psk` → `app`). The key is the file's bytes without surrounding whitespace, at
    /// least 16.
    ///
    /// # Errors
    /// `BadFlag`, `BadName`, `BadKey`.
    pub fn key_from_flag(flag: &str) -> Result<NamedKey, RemoteNodesConfigError> {
        let (name, path) = match flag.split_once('=') {
            Some((name, path)) => (name.to_owned(), Path::new(path)),
            None => {
                let path = Path::new(flag);
                let stem = path.file_stem().and_then(|s| s.to_str());
                let stem = stem.ok_or_else(|| RemoteNodesConfigError::BadFlag(flag.to_owned()))?;
                (stem.to_owned(), path)
            }
        };
        if path.as_os_str().is_empty() {
            return Err(RemoteNodesConfigError::BadFlag(flag.to_owned()));
        }
        postbox_transport::tunnel::check_principal(&name)?;
        let key = PreSharedKey::from_file(path)
            .map_err(|error| RemoteNodesConfigError::BadKey { name: name.clone(), error })?;
        Ok(NamedKey::new(&name, key)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_flags_name_their_keys_and_mistakes_are_reported() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("worker.psk");
        std::fs::write(&file, "  0123456789abcdef0123\n").unwrap();
        let named = RemoteNodesConfig::key_from_flag(&format!("app={}", file.display())).unwrap();
        assert_eq!(named.name(), "app");
        let by_stem = RemoteNodesConfig::key_from_flag(file.to_str().unwrap()).unwrap();
        assert_eq!(by_stem.name(), "worker");
        assert!(matches!(
            RemoteNodesConfig::key_from_flag("bad name=/x"),
            Err(RemoteNodesConfigError::BadName(_))
        ));
        assert!(matches!(
            RemoteNodesConfig::key_from_flag("app="),
            Err(RemoteNodesConfigError::BadFlag(_))
        ));
        let missing = dir.path().join("missing.psk");
        assert!(matches!(
            RemoteNodesConfig::key_from_flag(missing.to_str().unwrap()),
            Err(RemoteNodesConfigError::BadKey { .. })
        ));
        let listen = "127.0.0.1:0".parse().unwrap();
        assert_eq!(
            RemoteNodesConfig::with_keys(listen, Vec::new()),
            Err(RemoteNodesConfigError::NoCredentials)
        );
        assert_eq!(
            RemoteNodesConfig::with_keys(listen, vec![named.clone(), by_stem.clone()]),
            Err(RemoteNodesConfigError::DuplicateKey("app".into(), "worker".into()))
        );
        assert_eq!(
            RemoteNodesConfig::with_keys(listen, vec![named.clone(), named]),
            Err(RemoteNodesConfigError::DuplicateName("app".into()))
        );
    }
}
