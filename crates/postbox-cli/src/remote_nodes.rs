//! The daemon's flags for nodes on other hosts attaching over TCP (docs/network.md §14).

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use postbox::{NodeTlsConfig, RemoteNodesConfig};

/// `--listen-tcp`, `--tcp-key` and the `--tcp-tls-*` files.
#[derive(Debug, Default, clap::Args)]
pub(crate) struct RemoteNodesArgs {
    /// Accept nodes of other hosts over TCP at ADDR:PORT (port 0: any free port, printed at
    /// start). Nodes attach with POSTBOX_BROKER=tcp://HOST:PORT and a key or certificate.
    #[arg(long, value_name = "ADDR:PORT")]
    listen_tcp: Option<SocketAddr>,
    /// A pre-shared key for nodes attaching over TCP: NAME=FILE, or FILE (named after the
    /// file's stem). The name is the nodes' principal in the policy (`remote_nodes`).
    /// Repeatable.
    #[arg(long = "tcp-key", value_name = "NAME=FILE")]
    keys: Vec<String>,
    /// Mutual TLS for nodes over TCP instead of keys: this broker's certificate chain (PEM).
    #[arg(long, value_name = "FILE", requires_all = ["tcp_tls_key", "tcp_tls_ca"])]
    tcp_tls_cert: Option<PathBuf>,
    /// The private key of --tcp-tls-cert (PEM).
    #[arg(long, value_name = "FILE", requires = "tcp_tls_cert")]
    tcp_tls_key: Option<PathBuf>,
    /// The CAs that sign the nodes' certificates (PEM); a node's principal is its
    /// certificate's first DNS name.
    #[arg(long, value_name = "FILE", requires = "tcp_tls_cert")]
    tcp_tls_ca: Option<PathBuf>,
}

impl RemoteNodesArgs {
    /// The settings the flags describe; `None` without `--listen-tcp`.
    pub(crate) fn config(&self) -> Result<Option<RemoteNodesConfig>> {
        let Some(listen) = self.listen_tcp else {
            if !self.keys.is_empty() || self.tcp_tls_cert.is_some() {
                bail!("--tcp-key and --tcp-tls-* need --listen-tcp");
            }
            return Ok(None);
        };
        let tls = (&self.tcp_tls_cert, &self.tcp_tls_key, &self.tcp_tls_ca);
        let config = match tls {
            (Some(cert), Some(key), Some(ca)) => {
                if !self.keys.is_empty() {
                    bail!("--listen-tcp takes keys (--tcp-key) or TLS (--tcp-tls-*), not both");
                }
                let tls = NodeTlsConfig::from_pem_files(cert, key, ca)
                    .context("--tcp-tls-cert, --tcp-tls-key, --tcp-tls-ca")?;
                RemoteNodesConfig::with_tls(listen, tls)
            }
            _ => {
                let keys = self
                    .keys
                    .iter()
                    .map(|flag| RemoteNodesConfig::key_from_flag(flag))
                    .collect::<Result<Vec<_>, _>>()
                    .context("--tcp-key")?;
                RemoteNodesConfig::with_keys(listen, keys)?
            }
        };
        Ok(Some(config))
    }
}
