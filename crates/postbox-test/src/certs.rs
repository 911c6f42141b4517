//! Certificates made for tests: a certificate authority that issues host certificates, good for
//! both ends of a TLS host link (server and client authentication).

use rcgen::{
    BasicConstraints, Certificate, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair,
};

/// A certificate authority made for a test.
pub struct Authority {
    cert: Certificate,
    key: KeyPair,
}

/// A host's certificate and private key, PEM.
#[derive(Debug, Clone)]
pub struct Identity {
    /// The certificate chain (one certificate), PEM.
    pub cert: String,
    /// The private key, PEM.
    pub key: String,
}

impl Authority {
    /// A new self-signed CA named `name`.
    ///
    /// # Panics
    /// If rcgen cannot make a key or sign (a broken test environment).
    #[must_use]
    pub fn new(name: &str) -> Self {
        let key = KeyPair::generate().expect("generate a CA key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA parameters");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let cert = params.self_signed(&key).expect("self-sign the CA");
        Self { cert, key }
    }

    /// The CA's certificate, PEM (what peers trust).
    #[must_use]
    pub fn pem(&self) -> String {
        self.cert.pem()
    }

    /// A certificate for host `name` (its DNS name and common name), signed by this CA.
    ///
    /// # Panics
    /// If rcgen cannot make a key or sign, or `name` is not a valid DNS name.
    #[must_use]
    pub fn issue(&self, name: &str) -> Identity {
        let key = KeyPair::generate().expect("generate a host key");
        let mut params = CertificateParams::new(vec![name.to_owned()]).expect("host parameters");
        params.distinguished_name.push(DnType::CommonName, name);
        params.extended_key_usages =
            vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        let cert = params.signed_by(&key, &self.cert, &self.key).expect("sign a host certificate");
        Identity { cert: cert.pem(), key: key.serialize_pem() }
    }
}

impl std::fmt::Debug for Authority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authority").finish_non_exhaustive()
    }
}
