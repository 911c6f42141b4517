//! How a remote node proves who it is, and how a broker checks it: pre-shared keys, each with
//! a name, or client certificates. The keys and TLS files are the host links' own
//! ([`PreSharedKey`], [`TlsConfig`]); only the broker's side differs, since it serves many
//! nodes and learns from the proof which one connected.

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};

use crate::host_link::security::{certificates, private_key, read_pem_files};
use crate::host_link::{PreSharedKey, SecurityConfigError, TlsConfig};

/// What a node presents to a remote broker ([`dial`](super::dial)).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum AttachSecurity {
    /// An HMAC-SHA256 challenge-response with a key the broker knows under a name; then plain
    /// TCP (authenticated, not encrypted).
    PreSharedKey(PreSharedKey),
    /// Mutual TLS: the node's certificate, the CAs that sign the broker's, and the name the
    /// broker's certificate must carry ([`TlsConfig::from_pem_files`] with the broker's host
    /// name as the peer name).
    Tls(TlsConfig),
}

/// What a broker accepts from remote nodes ([`AttachListener`](super::AttachListener)).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum AcceptSecurity {
    /// Pre-shared keys, each under the name its nodes are known by (their principal).
    PreSharedKeys(Vec<NamedKey>),
    /// Client certificates signed by the configured CAs; a node is known by the first DNS
    /// name of its certificate's subjectAltName.
    Tls(NodeTlsConfig),
}

/// A pre-shared key and the name (principal) of the nodes that hold it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamedKey {
    name: String,
    key: PreSharedKey,
}

/// The broker's TLS settings for remote nodes: its certificate chain and key, and the CAs
/// that sign the nodes' certificates. Any name those CAs vouch for is accepted; the name
/// becomes the node's principal, which the access policy then judges.
///
/// Equality is identity: two `NodeTlsConfig`s are equal when one is a clone of the other.
#[derive(Clone)]
pub struct NodeTlsConfig {
    pub(super) server: Arc<ServerConfig>,
}

/// A principal name that is not 1–253 ASCII letters, digits, `-`, `_` or `.`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid principal name {0:?} (1-253 ASCII letters, digits, '-', '_', '.')")]
pub struct PrincipalNameError(pub String);

impl NamedKey {
    /// `key`, for the nodes to be known as `name`.
    ///
    /// # Errors
    /// [`PrincipalNameError`] for a name that is not a valid principal.
    pub fn new(name: &str, key: PreSharedKey) -> Result<Self, PrincipalNameError> {
        check_principal(name)?;
        Ok(Self { name: name.to_owned(), key })
    }

    /// The principal of the nodes that hold this key.
    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The key.
    #[must_use]
    pub fn key(&self) -> &PreSharedKey {
        &self.key
    }
}

impl NodeTlsConfig {
    /// TLS settings from PEM files: `cert` (the broker's certificate chain, leaf first), `key`
    /// (its private key), `ca` (the CAs that sign the nodes' certificates).
    ///
    /// # Errors
    /// [`SecurityConfigError`] when a file cannot be read or parsed, or rustls refuses it.
    pub fn from_pem_files(cert: &Path, key: &Path, ca: &Path) -> Result<Self, SecurityConfigError> {
        let (chain, key, ca) = read_pem_files(cert, key, ca)?;
        Self::build(chain, key, ca)
    }

    /// TLS settings from PEM text held in memory; as [`from_pem_files`](Self::from_pem_files).
    ///
    /// # Errors
    /// As [`from_pem_files`](Self::from_pem_files).
    pub fn from_pem(cert: &[u8], key: &[u8], ca: &[u8]) -> Result<Self, SecurityConfigError> {
        Self::build(
            certificates(cert, "certificate chain")?,
            private_key(key, "private key")?,
            certificates(ca, "CA certificates")?,
        )
    }

    fn build(
        chain: Vec<rustls::pki_types::CertificateDer<'static>>,
        key: rustls::pki_types::PrivateKeyDer<'static>,
        ca: Vec<rustls::pki_types::CertificateDer<'static>>,
    ) -> Result<Self, SecurityConfigError> {
        let refused = |e: &dyn fmt::Display| SecurityConfigError::Refused(e.to_string());
        let mut roots = RootCertStore::empty();
        for certificate in ca {
            roots.add(certificate).map_err(|e| refused(&e))?;
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        // The chain, validity and usage are checked in the handshake; the name is read after
        // it, as the principal.
        let verifier =
            WebPkiClientVerifier::builder_with_provider(Arc::new(roots), Arc::clone(&provider))
                .build()
                .map_err(|e| refused(&e))?;
        let mut server = ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| refused(&e))?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain, key)
            .map_err(|e| refused(&e))?;
        // Every connection authenticates afresh.
        server.send_tls13_tickets = 0;
        Ok(Self { server: Arc::new(server) })
    }
}

impl fmt::Debug for NodeTlsConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NodeTlsConfig").finish_non_exhaustive()
    }
}

impl PartialEq for NodeTlsConfig {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.server, &other.server)
    }
}

impl Eq for NodeTlsConfig {}

/// Checks that `name` can be a remote node's principal (a key's name, a certificate's DNS
/// name): 1–253 ASCII letters, digits, `-`, `_` or `.`.
///
/// # Errors
/// [`PrincipalNameError`] otherwise.
pub fn check_principal(name: &str) -> Result<(), PrincipalNameError> {
    let valid = (1..=253).contains(&name.len())
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if valid {
        Ok(())
    } else {
        Err(PrincipalNameError(name.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn principal_names_are_short_plain_ascii() {
        assert!(check_principal("worker-1.example_a").is_ok());
        for bad in ["", "a b", "*.example", "ü", &"a".repeat(254)] {
            assert_eq!(check_principal(bad), Err(PrincipalNameError(bad.to_owned())));
        }
        let key = PreSharedKey::new(&[1; 16]).unwrap();
        assert_eq!(NamedKey::new("app", key.clone()).unwrap().name(), "app");
        assert!(NamedKey::new("no way", key).is_err());
    }
}
