//! A node attached to the broker of another host over TCP (docs/network.md §14): the
//! connection is a tunnel that carries the control protocol and every link, so the whole node
//! API works as with a local broker.

use std::path::Path;

use postbox_transport::host_link::{PreSharedKey, TlsConfig};
use postbox_transport::tunnel::{self, AttachError, AttachSecurity, TunnelConfig};

use crate::error::NodeError;
use crate::Node;

/// A remote broker named by the environment.
#[derive(Debug)]
pub(crate) struct RemoteBroker {
    /// `host:port`.
    pub(crate) address: String,
    pub(crate) security: AttachSecurity,
}

impl Node {
    /// Attaches to the broker of another host listening for nodes at `address` (`host:port`,
    /// `postbox daemon --listen-tcp`), proving who this node is as `security` says: a
    /// pre-shared key the broker knows under a name, or a certificate. The broker knows the
    /// node by that name (its principal), and its policy says what the node may do.
    ///
    /// Everything then works as with a local broker, over the one TCP connection: links are
    /// relayed by this process and the broker's, never shared memory. When the connection
    /// breaks (or stays silent for 10 s), broker requests fail with `BrokerGone` and calls
    /// waiting on the broker's side with `PeerDied`; the broker drops the node as if it had
    /// died.
    ///
    /// # Examples
    /// ```no_run
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use postbox::{AttachSecurity, Node, PreSharedKey};
    ///
    /// let key = PreSharedKey::from_file("/etc/postbox/app.psk".as_ref())?;
    /// let node = Node::attach_tcp("broker.example:7500", &AttachSecurity::PreSharedKey(key))?;
    /// let reply = node.connect("echo")?.call("hi")?;
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// [`NodeError::RemoteUnreachable`] (nothing listens, the address does not resolve, the
    /// connection broke), [`NodeError::AuthenticationFailed`] (a key or certificate refused
    /// by either side), [`NodeError::Refused`] (the broker does not admit more nodes).
    pub fn attach_tcp(address: &str, security: &AttachSecurity) -> Result<Self, NodeError> {
        let failed = |error| match error {
            AttachError::Authentication(reason) => {
                NodeError::AuthenticationFailed { address: address.to_owned(), reason }
            }
            error => NodeError::RemoteUnreachable { address: address.to_owned(), error },
        };
        let (control, tunnel) =
            tunnel::dial(address, security, TunnelConfig::default()).map_err(failed)?;
        let mut node = Self::attach_over(control, |kind| {
            let error = match kind {
                std::io::ErrorKind::ConnectionReset => AttachError::Closed,
                std::io::ErrorKind::TimedOut => AttachError::HandshakeTimeout,
                kind => AttachError::Os { operation: "attach", kind },
            };
            NodeError::RemoteUnreachable { address: address.to_owned(), error }
        })?;
        node.tunnel = Some(tunnel);
        Ok(node)
    }
}

/// Lets the tunnel of a node that is going settle, for a while: what the node wrote to its
/// links stays in this process until the broker's side of the tunnel passed it on, and a
/// process that exits first would lose it. Links still open elsewhere in the process do not
/// hold this up.
pub(crate) fn close_tunnel(tunnel: &tunnel::Tunnel) {
    let _ = tunnel.wait_settled(CLOSE_WAIT);
}

/// How long a node attached over TCP waits, when dropped, for its tunnel to settle.
const CLOSE_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// The remote broker `$POSTBOX_BROKER` names (`tcp://HOST:PORT`), with the credentials the
/// other variables give: `$POSTBOX_BROKER_KEY` (a key file), or `$POSTBOX_BROKER_CERT`,
/// `$POSTBOX_BROKER_CERT_KEY` and `$POSTBOX_BROKER_CA` (PEM files; the broker's certificate
/// must name `$POSTBOX_BROKER_NAME`, else HOST). `None` when `$POSTBOX_BROKER` is unset or
/// empty.
pub(crate) fn broker_from_env() -> Result<Option<RemoteBroker>, NodeError> {
    let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    let Some(broker) = var("POSTBOX_BROKER") else { return Ok(None) };
    let address = parse_broker(&broker)?;
    let bad = |e: &dyn std::fmt::Display| NodeError::BadSettings(e.to_string());
    let security = match (var("POSTBOX_BROKER_KEY"), var("POSTBOX_BROKER_CERT")) {
        (Some(key), _) => {
            let key = PreSharedKey::from_file(Path::new(&key))
                .map_err(|e| bad(&format_args!("POSTBOX_BROKER_KEY: {e}")))?;
            AttachSecurity::PreSharedKey(key)
        }
        (None, Some(cert)) => {
            let (Some(key), Some(ca)) = (var("POSTBOX_BROKER_CERT_KEY"), var("POSTBOX_BROKER_CA"))
            else {
                let detail =
                    "POSTBOX_BROKER_CERT needs POSTBOX_BROKER_CERT_KEY and POSTBOX_BROKER_CA";
                return Err(bad(&detail));
            };
            let name = var("POSTBOX_BROKER_NAME").unwrap_or_else(|| host_of(&address).to_owned());
            let tls =
                TlsConfig::from_pem_files(Path::new(&cert), Path::new(&key), Path::new(&ca), &name)
                    .map_err(|e| bad(&format_args!("POSTBOX_BROKER_CERT: {e}")))?;
            AttachSecurity::Tls(tls)
        }
        (None, None) => {
            let detail = "POSTBOX_BROKER needs POSTBOX_BROKER_KEY (a key file), or \
                          POSTBOX_BROKER_CERT, POSTBOX_BROKER_CERT_KEY and POSTBOX_BROKER_CA";
            return Err(bad(&detail));
        }
    };
    Ok(Some(RemoteBroker { address, security }))
}

/// `HOST:PORT` out of `tcp://HOST:PORT`.
fn parse_broker(text: &str) -> Result<String, NodeError> {
    let bad = || {
        NodeError::BadSettings(format!("POSTBOX_BROKER: expected tcp://HOST:PORT, got {text:?}"))
    };
    let address = text.strip_prefix("tcp://").ok_or_else(bad)?.trim_end_matches('/');
    let (host, port) = address.rsplit_once(':').ok_or_else(bad)?;
    if host.is_empty() || port.parse::<u16>().is_err() {
        return Err(bad());
    }
    Ok(address.to_owned())
}

/// The host part of `host:port` (without an IPv6 address's brackets).
fn host_of(address: &str) -> &str {
    let host = address.rsplit_once(':').map_or(address, |(host, _)| host);
    host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broker_addresses_are_tcp_urls_with_a_port() {
        assert_eq!(parse_broker("tcp://b.example:7500").unwrap(), "b.example:7500");
        assert_eq!(parse_broker("tcp://[::1]:7500/").unwrap(), "[::1]:7500");
        for bad in ["b.example:7500", "tcp://b.example", "tcp://:7500", "tcp://b:port", "udp://b:1"]
        {
            assert!(matches!(parse_broker(bad), Err(NodeError::BadSettings(_))), "{bad}");
        }
        assert_eq!(host_of("[::1]:7500"), "::1");
        assert_eq!(host_of("b.example:7500"), "b.example");
    }
}
