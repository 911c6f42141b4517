//! Which hosts a broker links to: its own name, its static peers, and their timers.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::Duration;

use postbox_core::PortName;
use postbox_transport::host_link::{
    HostLinkConfig, LinkSecurity, PreSharedKey, SessionConfig, TlsConfig,
};
use serde::Deserialize;

/// This broker's place among hosts: its name and the peers it links to (docs/network.md).
///
/// Each pair of brokers is joined by one host link. Exactly one side of a pair dials; the
/// other listens on an address reserved for that one peer (a host link cannot tell who is
/// connecting, so one listening address serves one peer). Links are plain TCP unless a peer
/// (or a top-level `[tls]` table, for every peer) asks for TLS or a pre-shared key, or for
/// QUIC (`transport = "quic"`, always with TLS).
///
/// # Examples
/// ```
/// use postbox_broker::HostsConfig;
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let config = HostsConfig::from_toml(
///     r#"
///     name = "alpha"
///     heartbeat_interval_ms = 500
///     [peers]
///     beta = { dial = "127.0.0.1:7401" }
///     gamma = { listen = "127.0.0.1:7402" }
///     "#,
/// )?;
/// assert_eq!(config.name.as_str(), "alpha");
/// assert_eq!(config.peers.len(), 2);
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostsConfig {
    /// This host's name, as its peers know it.
    pub name: HostName,
    /// The peers, one host link each.
    pub peers: Vec<PeerConfig>,
    /// How often an open host link sends a heartbeat.
    pub heartbeat_interval: Duration,
    /// Heartbeat intervals without a word from a peer before its calls fail (`PeerDead` or
    /// `Unreachable`).
    pub missed_heartbeats: u32,
    /// Where this broker accepts direct links from peers that may make them (`direct_listen
    /// = "ADDR:PORT"`, docs/network.md §15); none: every channel goes through the gateway.
    pub direct_listen: Option<SocketAddr>,
    /// The address peers are told to dial for direct links, when it is not `direct_listen`
    /// (behind NAT or a relay: `direct_advertise = "ADDR:PORT"`).
    pub direct_advertise: Option<SocketAddr>,
    /// The file's top-level `[tls]` table, for peers added later by flag over QUIC.
    default_tls: Option<TlsFiles>,
}

/// A host's name: 1 to 63 ASCII letters, digits, `-`, `_` or `.`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct HostName(String);

/// One static peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerConfig {
    /// The peer's name (what `port@name` says).
    pub name: HostName,
    /// How the host link to it is made.
    pub connect: PeerConnect,
    /// How the link's connections are secured (plain TCP by default; always TLS over QUIC).
    pub security: LinkSecurity,
    /// What carries the link: TCP (the default) or QUIC.
    pub transport: PeerTransport,
    /// Where a TCP link's best-effort datagrams go (datagram ports, docs/network.md §13);
    /// QUIC carries them as QUIC datagrams.
    pub datagrams: DatagramRoute,
    /// Connections to the peer's ports, and from its nodes to this host's, may be direct
    /// links between the two nodes, without the brokers on the data path (`direct = true`;
    /// both sides must say so, and the serving side needs a `direct_listen` address:
    /// docs/network.md §15).
    pub direct: bool,
}

/// Where a TCP host link carries the best-effort datagrams of datagram ports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DatagramRoute {
    /// UDP at the link's own address and port number: the dialer sends to the address it
    /// dials, the listener receives on the address it listens on (the default).
    #[default]
    SameAddress,
    /// UDP at this address instead: where the dialer sends them (another port, a relay), or
    /// where the listener receives them (`datagram = "ADDR:PORT"`).
    Udp(SocketAddr),
    /// On the TCP connection with everything else, reliable underneath (`datagram = "tcp"`,
    /// for paths that block UDP): still counted and dropped as best effort by the brokers.
    Stream,
}

/// What carries a host link.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PeerTransport {
    /// TCP: plain, TLS, or with a pre-shared key.
    #[default]
    Tcp,
    /// QUIC (UDP), always with mutual TLS: each port's channel on a stream of its own, so a
    /// loss on one holds back no other.
    Quic,
}

/// Which side of a pair makes the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerConnect {
    /// This broker dials the peer here (and dials again after every break).
    Dial(SocketAddr),
    /// This broker accepts the peer's connections here; the address serves this peer only.
    Listen(SocketAddr),
}

/// Why a host configuration was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HostsConfigError {
    /// The TOML does not parse or has unknown keys.
    #[error("invalid host configuration: {0}")]
    Invalid(String),
    /// A host name breaks the naming rules.
    #[error("invalid host name {0:?} (1 to 63 ASCII letters, digits, '-', '_' or '.')")]
    BadName(String),
    /// A peer says neither or both of `dial` and `listen`, or a flag is not
    /// `NAME=dial:ADDR`, `NAME=listen:ADDR`, `NAME=quic-dial:ADDR` or `NAME=quic-listen:ADDR`.
    #[error("peer {0}: say exactly one of dial = \"ADDR:PORT\" or listen = \"ADDR:PORT\"")]
    BadPeer(String),
    /// An address does not resolve.
    #[error("peer {peer}: cannot resolve {address:?}")]
    BadAddress {
        /// The peer.
        peer: String,
        /// The address as written.
        address: String,
    },
    /// Two peers share a name, or a peer has this host's name.
    #[error("host {0} is named twice")]
    Duplicate(String),
    /// A peer over QUIC has no TLS settings (neither its own `tls` nor a `[tls]` table; a
    /// `psk_file` does not do: QUIC always runs TLS).
    #[error("peer {0}: QUIC needs TLS (the peer's tls = {{ .. }} or a [tls] table)")]
    QuicWithoutTls(String),
    /// A peer whose host link is encrypted (TLS or QUIC) is allowed direct links, which are
    /// plain TCP: its calls and replies would cross the network in the clear
    /// (docs/network.md §15, docs/security.md).
    #[error(
        "peer {0}: direct links are plain TCP, so they are not allowed with a TLS or QUIC host \
         link (its messages would cross the network unencrypted); drop `direct` or use a \
         pre-shared key"
    )]
    DirectOverEncryptedLink(String),
    /// A peer over QUIC names a `datagram` route: QUIC carries datagrams itself.
    #[error("peer {0}: datagram = … is for TCP links; QUIC carries datagrams itself")]
    DatagramRouteOverQuic(String),
    /// A peer's TLS or pre-shared key settings cannot be used: a file is missing or
    /// malformed, or the peer names both `tls` and `psk_file`.
    #[error("peer {peer}: {reason}")]
    BadSecurity {
        /// The peer.
        peer: String,
        /// What is wrong.
        reason: String,
    },
}

impl HostsConfig {
    /// A host named `name` with no peers yet and the default timers (1 s heartbeats, 3
    /// missed).
    ///
    /// # Errors
    /// [`HostsConfigError::BadName`].
    pub fn new(name: &str) -> Result<Self, HostsConfigError> {
        let session = SessionConfig::default();
        Ok(Self {
            name: HostName::new(name)?,
            peers: Vec::new(),
            heartbeat_interval: session.heartbeat_interval,
            missed_heartbeats: session.missed_heartbeats,
            direct_listen: None,
            direct_advertise: None,
            default_tls: None,
        })
    }

    /// Parses the TOML form (see the type's example): `name`, optional
    /// `heartbeat_interval_ms` and `missed_heartbeats`, and a `[peers]` table of
    /// `NAME = { dial = "ADDR:PORT" }` or `NAME = { listen = "ADDR:PORT" }`.
    ///
    /// Security, per peer: `tls = { cert = "PEM", key = "PEM", ca = "PEM" }` (this host's
    /// certificate chain and private key, and the CA certificates that sign the peers'; the
    /// peer's certificate must carry the peer's name), or `psk_file = "PATH"` (a pre-shared
    /// key: authenticates, does not encrypt). A top-level `[tls]` table with the same keys
    /// applies to every peer that says neither. The files are read here.
    ///
    /// Transport, per peer: `transport = "tcp"` (the default) or `"quic"`; a QUIC peer needs
    /// TLS (its own `tls`, or the `[tls]` table). A TCP peer's datagrams: `datagram =
    /// "ADDR:PORT"` (UDP there), `"tcp"` (on the connection), or nothing (UDP at the link's
    /// own address and port).
    ///
    /// # Errors
    /// [`HostsConfigError`] says what is wrong; nothing is silently ignored.
    pub fn from_toml(text: &str) -> Result<Self, HostsConfigError> {
        let file: HostsFile =
            toml::from_str(text).map_err(|e| HostsConfigError::Invalid(e.to_string()))?;
        let mut config = Self::new(&file.name)?;
        config.default_tls = file.tls.as_ref().map(TlsSection::files);
        if let Some(ms) = file.heartbeat_interval_ms {
            config.heartbeat_interval = Duration::from_millis(ms.max(1));
        }
        if let Some(missed) = file.missed_heartbeats {
            config.missed_heartbeats = missed.max(1);
        }
        if let Some(address) = &file.direct_listen {
            config.direct_listen = Some(resolve("direct_listen", address)?);
        }
        if let Some(address) = &file.direct_advertise {
            config.direct_advertise = Some(resolve("direct_advertise", address)?);
        }
        for (name, peer) in file.peers {
            let connect = match (&peer.dial, &peer.listen) {
                (Some(address), None) => PeerConnect::Dial(resolve(&name, address)?),
                (None, Some(address)) => PeerConnect::Listen(resolve(&name, address)?),
                _ => return Err(HostsConfigError::BadPeer(name)),
            };
            let host = HostName::new(&name)?;
            let transport = peer.transport.unwrap_or_default().into();
            let security = peer.security(&host, file.tls.as_ref())?;
            if transport == PeerTransport::Quic && !matches!(security, LinkSecurity::Tls(_)) {
                return Err(HostsConfigError::QuicWithoutTls(name));
            }
            let datagrams = match peer.datagram.as_deref() {
                None => DatagramRoute::SameAddress,
                Some(_) if transport == PeerTransport::Quic => {
                    return Err(HostsConfigError::DatagramRouteOverQuic(name));
                }
                Some("tcp") => DatagramRoute::Stream,
                Some(address) => DatagramRoute::Udp(resolve(&name, address)?),
            };
            let direct = peer.direct.unwrap_or(false);
            let peer = PeerConfig { name: host, connect, security, transport, datagrams, direct };
            config.add_peer(peer)?;
        }
        Ok(config)
    }

    /// Adds a peer from its flag form: `NAME=dial:ADDR:PORT` or `NAME=listen:ADDR:PORT` (plain
    /// TCP), or `NAME=quic-dial:ADDR:PORT` or `NAME=quic-listen:ADDR:PORT` (QUIC, with the TLS
    /// settings of the hosts file's `[tls]` table).
    ///
    /// # Errors
    /// [`HostsConfigError`] for a malformed flag, an unresolvable address, a duplicate, or a
    /// QUIC peer without a `[tls]` table (`QuicWithoutTls`).
    pub fn add_peer_flag(&mut self, flag: &str) -> Result<(), HostsConfigError> {
        let bad = || HostsConfigError::BadPeer(flag.to_owned());
        let (name, how) = flag.split_once('=').ok_or_else(bad)?;
        let (transport, how) = match how.strip_prefix("quic-") {
            Some(how) => (PeerTransport::Quic, how),
            None => (PeerTransport::Tcp, how),
        };
        let connect = if let Some(address) = how.strip_prefix("dial:") {
            PeerConnect::Dial(resolve(name, address)?)
        } else if let Some(address) = how.strip_prefix("listen:") {
            PeerConnect::Listen(resolve(name, address)?)
        } else {
            return Err(bad());
        };
        let host = HostName::new(name)?;
        let security = match transport {
            // Flags make plain TCP links; TLS over TCP needs the peer in the hosts file.
            PeerTransport::Tcp => LinkSecurity::Plain,
            PeerTransport::Quic => match &self.default_tls {
                Some(files) => files.load(&host)?,
                None => return Err(HostsConfigError::QuicWithoutTls(name.to_owned())),
            },
        };
        let datagrams = DatagramRoute::SameAddress;
        let direct = false;
        self.add_peer(PeerConfig { name: host, connect, security, transport, datagrams, direct })
    }

    /// Lets connections to and from peer `name` be direct links (the `--direct-peer NAME`
    /// flag; `direct = true` in the file).
    ///
    /// # Errors
    /// [`HostsConfigError::BadPeer`] when no peer has that name,
    /// [`HostsConfigError::DirectOverEncryptedLink`] when its host link is TLS or QUIC.
    pub fn allow_direct(&mut self, name: &str) -> Result<(), HostsConfigError> {
        let peer = self.peers.iter_mut().find(|p| p.name.as_str() == name);
        let peer = peer.ok_or_else(|| HostsConfigError::BadPeer(name.to_owned()))?;
        refuse_direct_over_encryption(peer.transport, &peer.security, name)?;
        peer.direct = true;
        Ok(())
    }

    /// Adds a peer.
    ///
    /// # Errors
    /// [`HostsConfigError::Duplicate`] when the name is this host's or another peer's,
    /// [`HostsConfigError::DirectOverEncryptedLink`] when it allows direct links over a TLS or
    /// QUIC host link.
    pub fn add_peer(&mut self, peer: PeerConfig) -> Result<(), HostsConfigError> {
        if peer.name == self.name || self.peers.iter().any(|p| p.name == peer.name) {
            return Err(HostsConfigError::Duplicate(peer.name.0));
        }
        if peer.direct {
            refuse_direct_over_encryption(peer.transport, &peer.security, peer.name.as_str())?;
        }
        self.peers.push(peer);
        Ok(())
    }

    /// How long a silent peer may take to be declared dead or unreachable: the bound on
    /// every wait for it.
    #[must_use]
    pub fn dead_after(&self) -> Duration {
        self.heartbeat_interval.saturating_mul(self.missed_heartbeats.max(1))
    }

    /// The settings of each host link.
    pub(crate) fn link_config(&self) -> HostLinkConfig {
        let mut config = HostLinkConfig::default();
        config.session.heartbeat_interval = self.heartbeat_interval;
        config.session.missed_heartbeats = self.missed_heartbeats.max(1);
        // Retransmission must keep up with a short heartbeat bound.
        config.session.max_rto = config.session.max_rto.min(self.heartbeat_interval.max(MIN_RTO));
        config.session.initial_rto = config.session.initial_rto.min(config.session.max_rto);
        config.session.min_rto = config.session.min_rto.min(config.session.max_rto);
        config.session.max_payload = MAX_REMOTE_MESSAGE + FORWARD_OVERHEAD;
        // A datagram carries one channel's frames, numbered (`hosts/protocol.rs`): within one
        // UDP datagram of IPv6's minimum MTU with the session's and the UDP side's headers, and
        // within a QUIC datagram at QUIC's initial MTU.
        config.session.max_datagram_payload = MAX_DATAGRAM_PAYLOAD;
        config.session.datagram_queue = DATAGRAM_QUEUE;
        // Channels are spread over a fixed set of streams: the peer may open no more (over
        // QUIC, a stream each; the readers' buffers are bounded by it).
        config.session.max_streams = super::protocol::STREAMS;
        config.reconnect_max = config.reconnect_max.min(self.heartbeat_interval.max(MIN_RTO));
        config
    }

    /// The peer named `name`, by index.
    pub(crate) fn peer_index(&self, name: &str) -> Option<usize> {
        self.peers.iter().position(|p| p.name.as_str() == name)
    }
}

impl HostName {
    /// Checks `name` and wraps it.
    ///
    /// # Errors
    /// [`HostsConfigError::BadName`].
    pub fn new(name: &str) -> Result<Self, HostsConfigError> {
        let valid = (1..=63).contains(&name.len())
            && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        if valid {
            Ok(Self(name.to_owned()))
        } else {
            Err(HostsConfigError::BadName(name.to_owned()))
        }
    }

    /// The name as text.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for HostName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::fmt::Display for PeerConnect {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Dial(address) => write!(f, "dial {address}"),
            Self::Listen(address) => write!(f, "listen {address}"),
        }
    }
}

/// How `postbox ls` names a link's carrier and security: empty for plain TCP.
pub(crate) fn link_label(peer: &PeerConfig) -> &'static str {
    match (peer.transport, &peer.security) {
        (PeerTransport::Quic, _) => " (quic)",
        (PeerTransport::Tcp, LinkSecurity::Tls(_)) => " (tls)",
        (PeerTransport::Tcp, LinkSecurity::PreSharedKey(_)) => " (psk)",
        _ => "",
    }
}

/// Splits `port@host` into the port's name and the host's, when both parts are valid; the
/// last `@` separates them.
pub(crate) fn split_remote(name: &PortName) -> Option<(PortName, &str)> {
    let (port, host) = name.as_str().rsplit_once('@')?;
    let port = PortName::new(port).ok()?;
    HostName::new(host).ok()?;
    Some((port, host))
}

/// The largest message body that crosses hosts: links to remote ports announce at most this.
pub const MAX_REMOTE_MESSAGE: u32 = 1 << 20;

/// The largest message body that crosses hosts as a datagram: links to a datagram port on
/// another host announce at most this (docs/network.md §13).
pub const MAX_DATAGRAM_MESSAGE: u32 = 1024;

/// The largest host message in one datagram: its 18-byte header, then frames (each a 32-byte
/// header and its body), so that one message of [`MAX_DATAGRAM_MESSAGE`] bytes fits.
pub(crate) const MAX_DATAGRAM_PAYLOAD: u32 = 1100;

/// What forwarding adds to a frame on a host link: the message header and the frame header,
/// with room to spare.
pub(crate) const FORWARD_OVERHEAD: u32 = 64;

/// The shortest retransmission bound used with very short heartbeats.
const MIN_RTO: Duration = Duration::from_millis(50);
/// Datagrams queued in a host link for its writer; more are dropped (and counted).
const DATAGRAM_QUEUE: usize = 1024;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct HostsFile {
    name: String,
    heartbeat_interval_ms: Option<u64>,
    missed_heartbeats: Option<u32>,
    direct_listen: Option<String>,
    direct_advertise: Option<String>,
    #[serde(default)]
    peers: std::collections::BTreeMap<String, PeerSection>,
    tls: Option<TlsSection>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PeerSection {
    dial: Option<String>,
    listen: Option<String>,
    tls: Option<TlsSection>,
    psk_file: Option<String>,
    transport: Option<TransportName>,
    datagram: Option<String>,
    direct: Option<bool>,
}

/// `transport = "tcp"` or `"quic"`; anything else is refused by the parser.
#[derive(Debug, Clone, Copy, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
enum TransportName {
    #[default]
    Tcp,
    Quic,
}

impl From<TransportName> for PeerTransport {
    fn from(name: TransportName) -> Self {
        match name {
            TransportName::Tcp => Self::Tcp,
            TransportName::Quic => Self::Quic,
        }
    }
}

/// A `[tls]` table's files, kept for peers added by flag after the file was read.
#[derive(Debug, Clone, PartialEq, Eq)]
struct TlsFiles {
    cert: PathBuf,
    key: PathBuf,
    ca: PathBuf,
}

impl TlsFiles {
    /// TLS settings for the link to `peer`, read from the files now.
    fn load(&self, peer: &HostName) -> Result<LinkSecurity, HostsConfigError> {
        TlsConfig::from_pem_files(&self.cert, &self.key, &self.ca, peer.as_str())
            .map(LinkSecurity::Tls)
            .map_err(|e| HostsConfigError::BadSecurity {
                peer: peer.as_str().to_owned(),
                reason: e.to_string(),
            })
    }
}

/// PEM files: this host's certificate chain and key, and the CAs that sign the peers'.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TlsSection {
    cert: String,
    key: String,
    ca: String,
}

impl PeerSection {
    /// The peer's own setting, else the file's `[tls]`, else plain TCP; files are read now.
    fn security(
        &self,
        peer: &HostName,
        default_tls: Option<&TlsSection>,
    ) -> Result<LinkSecurity, HostsConfigError> {
        let bad = |reason: String| HostsConfigError::BadSecurity {
            peer: peer.as_str().to_owned(),
            reason,
        };
        match (&self.tls, &self.psk_file) {
            (Some(_), Some(_)) => Err(bad("say at most one of tls and psk_file".to_owned())),
            (None, Some(path)) => PreSharedKey::from_file(Path::new(path))
                .map(LinkSecurity::PreSharedKey)
                .map_err(|e| bad(e.to_string())),
            (tls, None) => match tls.as_ref().or(default_tls) {
                None => Ok(LinkSecurity::Plain),
                Some(tls) => tls.files().load(peer),
            },
        }
    }
}

impl TlsSection {
    fn files(&self) -> TlsFiles {
        TlsFiles {
            cert: PathBuf::from(&self.cert),
            key: PathBuf::from(&self.key),
            ca: PathBuf::from(&self.ca),
        }
    }
}

/// Direct links are plain TCP (docs/network.md §15): a peer whose host link is encrypted does
/// not get them, or its messages would silently lose the encryption the operator chose.
fn refuse_direct_over_encryption(
    transport: PeerTransport,
    security: &LinkSecurity,
    peer: &str,
) -> Result<(), HostsConfigError> {
    if transport == PeerTransport::Quic || matches!(security, LinkSecurity::Tls(_)) {
        return Err(HostsConfigError::DirectOverEncryptedLink(peer.to_owned()));
    }
    Ok(())
}

fn resolve(peer: &str, address: &str) -> Result<SocketAddr, HostsConfigError> {
    let bad =
        || HostsConfigError::BadAddress { peer: peer.to_owned(), address: address.to_owned() };
    address.to_socket_addrs().map_err(|_| bad())?.next().ok_or_else(bad)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn direct_links_are_opted_into_per_peer_in_the_file_or_by_flag() {
        let mut config = HostsConfig::from_toml(
            "name = 'b'\ndirect_listen = '127.0.0.1:7410'\n\
             direct_advertise = '192.0.2.2:7410'\n[peers]\n\
             a = { listen = '127.0.0.1:9', direct = true }\nc = { dial = '127.0.0.1:10' }\n",
        )
        .unwrap();
        assert_eq!(config.direct_listen, Some("127.0.0.1:7410".parse().unwrap()));
        assert_eq!(config.direct_advertise, Some("192.0.2.2:7410".parse().unwrap()));
        let direct: Vec<bool> = config.peers.iter().map(|p| p.direct).collect();
        assert_eq!(direct, [true, false]);
        config.allow_direct("c").unwrap();
        assert!(config.peers[1].direct);
        assert_eq!(config.allow_direct("z"), Err(HostsConfigError::BadPeer("z".into())));
        let plain = HostsConfig::from_toml("name = 'b'\n[peers]\na = { dial = '127.0.0.1:9' }");
        let plain = plain.unwrap();
        assert!(!plain.peers[0].direct && plain.direct_listen.is_none());
        let bad = "name = 'b'\ndirect_listen = 'nowhere'\n";
        assert!(matches!(HostsConfig::from_toml(bad), Err(HostsConfigError::BadAddress { .. })));
    }

    #[test]
    fn direct_links_are_refused_for_a_quic_peer_by_flag_and_file() {
        // TLS peers are refused the same way (the e2e test has the certificates);
        // `refuse_direct_over_encryption` looks at the transport and the security alike.
        let quic = "name = 'b'\n[peers]\na = { listen = '127.0.0.1:9', transport = 'quic', \
                    direct = true }\n";
        // QUIC without TLS is refused first; either way no direct link over it.
        assert!(HostsConfig::from_toml(quic).is_err());
        assert_eq!(
            refuse_direct_over_encryption(PeerTransport::Quic, &LinkSecurity::Plain, "a"),
            Err(HostsConfigError::DirectOverEncryptedLink("a".into()))
        );
        let key = PreSharedKey::new(b"0123456789abcdef0123").unwrap();
        for security in [LinkSecurity::Plain, LinkSecurity::PreSharedKey(key)] {
            assert_eq!(refuse_direct_over_encryption(PeerTransport::Tcp, &security, "a"), Ok(()));
        }
    }

    #[test]
    fn peers_come_from_toml_and_flags_and_mistakes_are_reported() {
        let mut config = HostsConfig::from_toml(
            "name = 'a'\nmissed_heartbeats = 5\n[peers]\nb = { dial = '127.0.0.1:9' }\n",
        )
        .unwrap();
        assert_eq!(config.missed_heartbeats, 5);
        assert_eq!(config.peers[0].connect, PeerConnect::Dial("127.0.0.1:9".parse().unwrap()));
        config.add_peer_flag("c=listen:127.0.0.1:10").unwrap();
        assert_eq!(config.peer_index("c"), Some(1));
        assert_eq!(
            config.add_peer_flag("c=dial:127.0.0.1:11"),
            Err(HostsConfigError::Duplicate("c".into()))
        );
        assert!(matches!(
            config.add_peer_flag("a=dial:127.0.0.1:11"),
            Err(HostsConfigError::Duplicate(_))
        ));
        assert!(matches!(config.add_peer_flag("d=connect:x"), Err(HostsConfigError::BadPeer(_))));
        assert!(matches!(
            config.add_peer_flag("d e=dial:127.0.0.1:1"),
            Err(HostsConfigError::BadName(_))
        ));
        let both = "name = 'a'\n[peers]\nb = { dial = '127.0.0.1:9', listen = '127.0.0.1:9' }";
        assert!(matches!(HostsConfig::from_toml(both), Err(HostsConfigError::BadPeer(_))));
        assert!(matches!(
            HostsConfig::from_toml("name = 'a'\nport = 1"),
            Err(HostsConfigError::Invalid(_))
        ));
        assert!(matches!(HostsConfig::new(""), Err(HostsConfigError::BadName(_))));
    }

    #[test]
    fn peers_choose_tls_or_a_pre_shared_key_and_bad_settings_are_reported() {
        let dir = tempfile::tempdir().unwrap();
        let key_path = dir.path().join("b.key");
        std::fs::write(&key_path, "  0123456789abcdef0123\n").unwrap();
        let key = key_path.display();
        let config = HostsConfig::from_toml(&format!(
            "name = 'a'\n[peers]\nb = {{ dial = '127.0.0.1:9', psk_file = '{key}' }}\n\
             c = {{ listen = '127.0.0.1:10' }}\n"
        ))
        .unwrap();
        let expected = PreSharedKey::new(b"0123456789abcdef0123").unwrap();
        assert_eq!(config.peers[0].security, LinkSecurity::PreSharedKey(expected));
        assert_eq!(config.peers[1].security, LinkSecurity::Plain);
        assert_eq!(link_label(&config.peers[0]), " (psk)");

        let missing = dir.path().join("missing.pem");
        let missing = missing.display();
        let tls = format!("{{ cert = '{missing}', key = '{missing}', ca = '{missing}' }}");
        let bad = |toml: String| match HostsConfig::from_toml(&toml) {
            Err(HostsConfigError::BadSecurity { peer, reason }) => (peer, reason),
            other => panic!("expected BadSecurity, got {other:?}"),
        };
        let (peer, reason) =
            bad(format!("name = 'a'\n[peers]\nb = {{ dial = '127.0.0.1:9', tls = {tls} }}"));
        assert_eq!(peer, "b");
        assert!(reason.contains("missing.pem"), "{reason}");
        // A top-level [tls] applies to every peer that says nothing else.
        let (peer, _) =
            bad(format!("name = 'a'\ntls = {tls}\n[peers]\nc = {{ dial = '127.0.0.1:9' }}"));
        assert_eq!(peer, "c");
        let (_, reason) = bad(format!(
            "name = 'a'\n[peers]\nb = {{ dial = '127.0.0.1:9', tls = {tls}, psk_file = '{key}' }}"
        ));
        assert!(reason.contains("at most one"), "{reason}");
        let short = dir.path().join("short.key");
        std::fs::write(&short, "short").unwrap();
        let short = short.display();
        bad(format!("name = 'a'\n[peers]\nb = {{ dial = '127.0.0.1:9', psk_file = '{short}' }}"));
        // Unknown keys in a tls table are errors, as everywhere else.
        let unknown = "name = 'a'\n[tls]\ncert = 'x'\nkey = 'x'\nca = 'x'\ncrl = 'x'\n";
        assert!(matches!(HostsConfig::from_toml(unknown), Err(HostsConfigError::Invalid(_))));
    }

    #[test]
    fn quic_peers_come_from_toml_and_flags_and_need_tls() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key, ca) = tls_files(dir.path());
        let tls = format!("[tls]\ncert = '{cert}'\nkey = '{key}'\nca = '{ca}'\n");
        let mut config = HostsConfig::from_toml(&format!(
            "name = 'a'\n{tls}[peers]\nb = {{ dial = '127.0.0.1:9', transport = 'quic' }}\n\
             c = {{ listen = '127.0.0.1:10', transport = 'tcp' }}\n"
        ))
        .unwrap();
        assert_eq!(config.peers[0].transport, PeerTransport::Quic);
        assert!(matches!(config.peers[0].security, LinkSecurity::Tls(_)));
        assert_eq!(link_label(&config.peers[0]), " (quic)");
        assert_eq!(config.peers[0].connect.to_string(), "dial 127.0.0.1:9");
        assert_eq!(config.peers[1].transport, PeerTransport::Tcp);
        assert_eq!(link_label(&config.peers[1]), " (tls)");
        // Flags: the quic forms take the file's [tls]; the others stay plain TCP.
        config.add_peer_flag("d=quic-listen:127.0.0.1:11").unwrap();
        config.add_peer_flag("e=quic-dial:127.0.0.1:12").unwrap();
        config.add_peer_flag("f=dial:127.0.0.1:13").unwrap();
        let transports: Vec<_> = config.peers[2..].iter().map(|p| p.transport).collect();
        assert_eq!(transports, [PeerTransport::Quic, PeerTransport::Quic, PeerTransport::Tcp]);
        assert_eq!(config.peers[2].connect, PeerConnect::Listen("127.0.0.1:11".parse().unwrap()));
        assert_eq!(config.peers[4].security, LinkSecurity::Plain);
        assert!(matches!(
            config.add_peer_flag("g=quic-connect:127.0.0.1:14"),
            Err(HostsConfigError::BadPeer(_))
        ));

        // Without TLS, QUIC is refused: no [tls], a pre-shared key instead, or a bare flag.
        let plain = "name = 'a'\n[peers]\nb = { dial = '127.0.0.1:9', transport = 'quic' }\n";
        assert_eq!(
            HostsConfig::from_toml(plain),
            Err(HostsConfigError::QuicWithoutTls("b".into()))
        );
        let psk = dir.path().join("b.psk");
        std::fs::write(&psk, "0123456789abcdef0123").unwrap();
        let psk = psk.display().to_string();
        let with_key = format!(
            "name = 'a'\n[peers]\n\
             b = {{ dial = '127.0.0.1:9', transport = 'quic', psk_file = '{psk}' }}\n"
        );
        assert_eq!(
            HostsConfig::from_toml(&with_key),
            Err(HostsConfigError::QuicWithoutTls("b".into()))
        );
        let mut bare = HostsConfig::new("a").unwrap();
        assert_eq!(
            bare.add_peer_flag("b=quic-dial:127.0.0.1:9"),
            Err(HostsConfigError::QuicWithoutTls("b".into()))
        );
        let unknown = "name = 'a'\n[peers]\nb = { dial = '127.0.0.1:9', transport = 'udp' }\n";
        assert!(matches!(HostsConfig::from_toml(unknown), Err(HostsConfigError::Invalid(_))));
    }

    #[test]
    fn a_tcp_peer_says_where_its_datagrams_go_and_a_quic_peer_may_not() {
        let config = HostsConfig::from_toml(
            "name = 'a'\n[peers]\nb = { dial = '127.0.0.1:9', datagram = '127.0.0.1:19' }\n\
             c = { listen = '127.0.0.1:10', datagram = 'tcp' }\nd = { dial = '127.0.0.1:11' }\n",
        )
        .unwrap();
        let routes: Vec<DatagramRoute> = config.peers.iter().map(|p| p.datagrams).collect();
        assert_eq!(
            routes,
            [
                DatagramRoute::Udp("127.0.0.1:19".parse().unwrap()),
                DatagramRoute::Stream,
                DatagramRoute::SameAddress
            ]
        );
        let bad = "name = 'a'\n[peers]\nb = { dial = '127.0.0.1:9', datagram = 'nowhere' }\n";
        assert!(matches!(HostsConfig::from_toml(bad), Err(HostsConfigError::BadAddress { .. })));
        let dir = tempfile::tempdir().unwrap();
        let (cert, key, ca) = tls_files(dir.path());
        let quic = format!(
            "name = 'a'\n[tls]\ncert = '{cert}'\nkey = '{key}'\nca = '{ca}'\n[peers]\n\
             b = {{ dial = '127.0.0.1:9', transport = 'quic', datagram = '127.0.0.1:19' }}\n"
        );
        assert_eq!(
            HostsConfig::from_toml(&quic),
            Err(HostsConfigError::DatagramRouteOverQuic("b".into()))
        );
    }

    #[test]
    fn a_host_link_allows_the_peer_only_the_streams_channels_use() {
        // Over QUIC each is a stream the peer may open, with a reader's buffer behind it.
        let config = HostsConfig::new("a").unwrap().link_config();
        assert_eq!(config.session.max_streams, super::super::protocol::STREAMS);
    }

    #[test]
    fn port_at_host_splits_at_the_last_at_sign() {
        let name = |s: &str| PortName::new(s).unwrap();
        assert_eq!(split_remote(&name("echo@b")), Some((name("echo"), "b")));
        assert_eq!(split_remote(&name("a@b@c")), Some((name("a@b"), "c")));
        assert_eq!(split_remote(&name("echo")), None);
        assert_eq!(split_remote(&name("echo@")), None);
        assert_eq!(split_remote(&name("@b")), None);
        assert_eq!(split_remote(&name("echo@b:c")), None);
    }

    /// Host a's certificate, key and CA written to files in `dir`: their paths.
    fn tls_files(dir: &std::path::Path) -> (String, String, String) {
        let ca = postbox_test::Authority::new("test CA");
        let identity = ca.issue("a");
        let write = |name: &str, text: &str| {
            let path = dir.join(name);
            std::fs::write(&path, text).unwrap();
            path.display().to_string()
        };
        (write("a.pem", &identity.cert), write("a.key", &identity.key), write("ca.pem", &ca.pem()))
    }
}
