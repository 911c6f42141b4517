//! How a host link's connections are secured: plain TCP, mutual TLS, or a pre-shared key.
//!
//! TLS is rustls (TLS 1.3 only, the `ring` provider) with a certificate on both ends: the dialer
//! verifies the listener's certificate against the configured CAs and the peer's host name, and
//! the listener requires a client certificate, verified the same way (the CAs, and the peer's
//! host name, since a listening address serves one peer). The pre-shared key mode is an
//! HMAC-SHA256 challenge-response before the session: it authenticates the peer but neither
//! encrypts nor protects what follows (see `handshake.rs`).

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerifier};
use rustls::client::{verify_server_name, Resumption, WebPkiServerVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ParsedCertificate, WebPkiClientVerifier};
use rustls::{
    ClientConfig, DigitallySignedStruct, DistinguishedName, RootCertStore, ServerConfig,
    SignatureScheme,
};

/// How the connections of a host link are secured; both ends must say the same.
///
/// Given to [`HostLink::dial_secured`](super::HostLink::dial_secured) or
/// [`HostLink::listen_secured`](super::HostLink::listen_secured). A connection that fails
/// authentication never reaches the session: no session frame is read from it, and the
/// reason shows in [`HostLinkStats::last_error`](super::HostLinkStats::last_error) as
/// [`LinkError::Authentication`](super::LinkError::Authentication).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum LinkSecurity {
    /// Plain TCP: no encryption, and whoever connects to a listener is taken as the peer.
    #[default]
    Plain,
    /// Mutual TLS with certificates.
    Tls(TlsConfig),
    /// An HMAC-SHA256 challenge-response with a pre-shared key, then plain TCP: the peer is
    /// authenticated, but the session's bytes are neither encrypted nor protected against an
    /// attacker on the path.
    PreSharedKey(PreSharedKey),
}

/// Mutual TLS settings for the link to one peer: this host's certificate chain and key, the
/// CAs trusted to sign the peer's certificate, and the name the peer's certificate must carry.
///
/// Built once (both the dialing and the listening configuration, so every mistake shows here);
/// cheap to clone. Equality is identity: two `TlsConfig`s are equal when one is a clone of the
/// other.
#[derive(Clone)]
pub struct TlsConfig {
    pub(crate) client: Arc<ClientConfig>,
    pub(super) server: Arc<ServerConfig>,
    pub(crate) peer_name: ServerName<'static>,
    /// The dialer's check of the listener's certificate (in `client`), for configurations
    /// made per connection (QUIC, `quic/crypto.rs`).
    pub(super) server_verifier: Arc<dyn ServerCertVerifier>,
    /// The listener's check of the dialer's certificate (in `server`), likewise.
    pub(super) client_verifier: Arc<dyn ClientCertVerifier>,
}

/// A secret shared by both ends of a host link, for [`LinkSecurity::PreSharedKey`].
///
/// Equality compares the key in constant time. `Debug` does not show it.
#[derive(Clone)]
pub struct PreSharedKey(Arc<[u8]>);

/// Why TLS settings or a pre-shared key could not be loaded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SecurityConfigError {
    /// A file could not be read.
    #[error("cannot read {path:?}: {kind}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The kind of the OS error.
        kind: std::io::ErrorKind,
    },
    /// A PEM file holds no item of the expected kind, or a malformed one.
    #[error("{what}: no valid PEM {expected} found")]
    Pem {
        /// The file, or what the bytes were.
        what: String,
        /// The kind of item looked for: `CERTIFICATE` or `PRIVATE KEY`.
        expected: &'static str,
    },
    /// The peer's name is neither a DNS name nor an IP address.
    #[error("{0:?} cannot be verified as a certificate name")]
    BadPeerName(String),
    /// rustls refused the certificates or the key (a key that does not match the certificate,
    /// an unsupported key type, a CA certificate that does not parse).
    #[error("TLS settings refused: {0}")]
    Refused(String),
    /// A pre-shared key shorter than [`PreSharedKey::MIN_LEN`] bytes.
    #[error("a pre-shared key needs at least {min} bytes, this one has {len}")]
    KeyTooShort {
        /// The key's length.
        len: usize,
        /// The least accepted.
        min: usize,
    },
}

impl TlsConfig {
    /// TLS settings from PEM files: `cert` (this host's certificate chain, leaf first), `key`
    /// (its private key: PKCS#8, PKCS#1 or SEC1), `ca` (one or more CA certificates that sign
    /// the peers' certificates), and `peer_name`, the name the peer's certificate must carry
    /// (its host name).
    ///
    /// # Errors
    /// [`SecurityConfigError`] when a file cannot be read or parsed, or rustls refuses it.
    pub fn from_pem_files(
        cert: &Path,
        key: &Path,
        ca: &Path,
        peer_name: &str,
    ) -> Result<Self, SecurityConfigError> {
        let (chain, key, ca) = read_pem_files(cert, key, ca)?;
        Self::build(chain, key, ca, peer_name)
    }

    /// TLS settings from PEM text held in memory; as [`from_pem_files`](Self::from_pem_files).
    ///
    /// # Errors
    /// As [`from_pem_files`](Self::from_pem_files).
    pub fn from_pem(
        cert: &[u8],
        key: &[u8],
        ca: &[u8],
        peer_name: &str,
    ) -> Result<Self, SecurityConfigError> {
        Self::build(
            certificates(cert, "certificate chain")?,
            private_key(key, "private key")?,
            certificates(ca, "CA certificates")?,
            peer_name,
        )
    }

    /// The name the peer's certificate must carry.
    #[must_use]
    pub fn peer_name(&self) -> String {
        self.peer_name.to_str().into_owned()
    }

    fn build(
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
        ca: Vec<CertificateDer<'static>>,
        peer_name: &str,
    ) -> Result<Self, SecurityConfigError> {
        let refused = |e: &dyn fmt::Display| SecurityConfigError::Refused(e.to_string());
        let peer_name = ServerName::try_from(peer_name.to_owned())
            .map_err(|_| SecurityConfigError::BadPeerName(peer_name.to_owned()))?;
        let mut roots = RootCertStore::empty();
        for certificate in ca {
            roots.add(certificate).map_err(|e| refused(&e))?;
        }
        let roots = Arc::new(roots);
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let versions = [&rustls::version::TLS13];

        let server_verifier =
            WebPkiServerVerifier::builder_with_provider(Arc::clone(&roots), Arc::clone(&provider))
                .build()
                .map_err(|e| refused(&e))?;
        let mut client = ClientConfig::builder_with_provider(Arc::clone(&provider))
            .with_protocol_versions(&versions)
            .map_err(|e| refused(&e))?
            .with_webpki_verifier(Arc::clone(&server_verifier))
            .with_client_auth_cert(chain.clone(), key.clone_key())
            .map_err(|e| refused(&e))?;
        // Every connection authenticates afresh: no tickets, so nothing outlives a restart.
        client.resumption = Resumption::disabled();

        let verifier = WebPkiClientVerifier::builder_with_provider(roots, Arc::clone(&provider))
            .build()
            .map_err(|e| refused(&e))?;
        let client_verifier: Arc<dyn ClientCertVerifier> =
            Arc::new(PeerNameVerifier { inner: verifier, name: peer_name.clone() });
        let mut server = ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&versions)
            .map_err(|e| refused(&e))?
            .with_client_cert_verifier(Arc::clone(&client_verifier))
            .with_single_cert(chain, key)
            .map_err(|e| refused(&e))?;
        server.send_tls13_tickets = 0;
        Ok(Self {
            client: Arc::new(client),
            server: Arc::new(server),
            peer_name,
            server_verifier,
            client_verifier,
        })
    }
}

impl fmt::Debug for TlsConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsConfig").field("peer_name", &self.peer_name).finish_non_exhaustive()
    }
}

impl PartialEq for TlsConfig {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.client, &other.client) && Arc::ptr_eq(&self.server, &other.server)
    }
}

impl Eq for TlsConfig {}

impl PreSharedKey {
    /// The shortest key accepted, in bytes.
    pub const MIN_LEN: usize = 16;

    /// Wraps `key`.
    ///
    /// # Errors
    /// [`SecurityConfigError::KeyTooShort`] below [`MIN_LEN`](Self::MIN_LEN) bytes.
    pub fn new(key: &[u8]) -> Result<Self, SecurityConfigError> {
        if key.len() < Self::MIN_LEN {
            return Err(SecurityConfigError::KeyTooShort { len: key.len(), min: Self::MIN_LEN });
        }
        Ok(Self(Arc::from(key)))
    }

    /// Reads the key from `path`: the file's bytes without leading and trailing ASCII
    /// whitespace (so `head -c 32 /dev/urandom | base64 > key` makes a good one).
    ///
    /// # Errors
    /// [`SecurityConfigError::Read`], or `KeyTooShort`.
    pub fn from_file(path: &Path) -> Result<Self, SecurityConfigError> {
        let bytes = std::fs::read(path)
            .map_err(|e| SecurityConfigError::Read { path: path.to_owned(), kind: e.kind() })?;
        Self::new(bytes.trim_ascii())
    }

    pub(crate) fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for PreSharedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PreSharedKey(..)")
    }
}

impl PartialEq for PreSharedKey {
    fn eq(&self, other: &Self) -> bool {
        // Constant time: the comparison says nothing about where two keys differ.
        self.0.len() == other.0.len()
            && self.0.iter().zip(other.0.iter()).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
    }
}

impl Eq for PreSharedKey {}

/// The listener's check of a client certificate: the CA chain (webpki), then the peer's name,
/// so that another host holding a certificate from the same CA cannot take this peer's place.
#[derive(Debug)]
struct PeerNameVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    name: ServerName<'static>,
}

impl ClientCertVerifier for PeerNameVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verified = self.inner.verify_client_cert(end_entity, intermediates, now)?;
        verify_server_name(&ParsedCertificate::try_from(end_entity)?, &self.name)?;
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// A certificate chain (leaf first), its private key and CA certificates, read from the PEM
/// files `cert`, `key` and `ca` in that order; an error names the file.
pub(crate) fn read_pem_files(
    cert: &Path,
    key: &Path,
    ca: &Path,
) -> Result<
    (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>, Vec<CertificateDer<'static>>),
    SecurityConfigError,
> {
    let read = |path: &Path| {
        std::fs::read(path)
            .map_err(|e| SecurityConfigError::Read { path: path.to_owned(), kind: e.kind() })
    };
    let named = |path: &Path| path.display().to_string();
    Ok((
        certificates(&read(cert)?, &named(cert))?,
        private_key(&read(key)?, &named(key))?,
        certificates(&read(ca)?, &named(ca))?,
    ))
}

pub(crate) fn certificates(
    pem: &[u8],
    what: &str,
) -> Result<Vec<CertificateDer<'static>>, SecurityConfigError> {
    let bad = || SecurityConfigError::Pem { what: what.to_owned(), expected: "CERTIFICATE" };
    let certificates =
        CertificateDer::pem_slice_iter(pem).collect::<Result<Vec<_>, _>>().map_err(|_| bad())?;
    if certificates.is_empty() {
        return Err(bad());
    }
    Ok(certificates)
}

pub(crate) fn private_key(
    pem: &[u8],
    what: &str,
) -> Result<PrivateKeyDer<'static>, SecurityConfigError> {
    PrivateKeyDer::from_pem_slice(pem)
        .map_err(|_| SecurityConfigError::Pem { what: what.to_owned(), expected: "PRIVATE KEY" })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_compare_by_value_and_short_keys_and_bad_pem_are_refused() {
        let key = PreSharedKey::new(&[7; 16]).unwrap();
        assert_eq!(key, PreSharedKey::new(&[7; 16]).unwrap());
        assert_ne!(key, PreSharedKey::new(&[7; 17]).unwrap());
        assert_eq!(format!("{key:?}"), "PreSharedKey(..)");
        assert_eq!(
            PreSharedKey::new(b"short"),
            Err(SecurityConfigError::KeyTooShort { len: 5, min: 16 })
        );
        assert!(matches!(
            TlsConfig::from_pem(b"junk", b"junk", b"junk", "b"),
            Err(SecurityConfigError::Pem { expected: "CERTIFICATE", .. })
        ));
    }
}
