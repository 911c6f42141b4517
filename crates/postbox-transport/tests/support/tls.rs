//! TLS settings for the host-link tests, from certificates made by `postbox_test::Authority`.

use postbox_test::{Authority, Identity};
use postbox_transport::host_link::TlsConfig;

/// TLS settings for a host holding `identity`, trusting `ca`, talking to `peer`.
pub(crate) fn tls_config(identity: &Identity, ca: &Authority, peer: &str) -> TlsConfig {
    TlsConfig::from_pem(
        identity.cert.as_bytes(),
        identity.key.as_bytes(),
        ca.pem().as_bytes(),
        peer,
    )
    .unwrap()
}
