//! The key that seals a host link's UDP datagrams: derived for each TCP connection from its
//! TLS secrets or its pre-shared key exchange, so that only the two ends of that connection can
//! make a datagram the other accepts, or read one.
//!
//! ```text
//! TLS:             key = TLS exporter (RFC 8446 §7.5), label "EXPORTER-postbox-host-link-datagrams",
//!                        no context, 32 bytes
//! pre-shared key:  key = HMAC-SHA256(psk, "postbox-host-link-datagrams" | dialer nonce | listener nonce)
//! sealing:         ChaCha20-Poly1305 (RFC 8439) under that key; nonce = sender's role u8 (1 dialer,
//!                  2 listener) | 0 0 0 | the sender's counter u64 (little-endian)
//! ```
//!
//! Both ends hold the same key; the role in the nonce keeps the two directions apart, and each
//! end numbers what it seals from one counter that never repeats, so no nonce is used twice
//! under a key. A new connection brings a new key: datagrams sealed for an earlier one are
//! refused.

use std::fmt;

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305};
use ring::hmac;

use super::error::LinkError;
use super::handshake::Role;
use super::security::PreSharedKey;

/// One connection's datagram key, and which end of the connection this is.
pub(super) struct DatagramKey {
    key: LessSafeKey,
    role: Role,
}

impl DatagramKey {
    /// The key of a TLS connection whose handshake is complete.
    pub(super) fn from_tls(tls: &rustls::Connection, role: Role) -> Result<Self, LinkError> {
        // Fails only before the handshake completes, which the caller has waited for.
        let secret = tls
            .export_keying_material([0u8; KEY_LEN], TLS_EXPORTER_LABEL, None)
            .map_err(|_| LinkError::TlsProtocol)?;
        Ok(Self::new(&secret, role))
    }

    /// The key of a connection authenticated by the pre-shared key exchange with these two
    /// fresh nonces (`handshake.rs`).
    pub(super) fn from_pre_shared_key(
        key: &PreSharedKey,
        dialer_nonce: &[u8],
        listener_nonce: &[u8],
        role: Role,
    ) -> Self {
        let mac = hmac::Key::new(hmac::HMAC_SHA256, key.as_bytes());
        let mut context = hmac::Context::with_key(&mac);
        context.update(PSK_LABEL);
        context.update(dialer_nonce);
        context.update(listener_nonce);
        Self::new(context.sign().as_ref(), role)
    }

    fn new(secret: &[u8], role: Role) -> Self {
        // Invariant: `secret` is 32 bytes (an exporter output or an HMAC-SHA256), ChaCha20's
        // key length.
        let unbound = UnboundKey::new(&CHACHA20_POLY1305, secret).expect("a 32-byte key");
        Self { key: LessSafeKey::new(unbound), role }
    }

    /// Encrypts `body` in place as this end's datagram number `counter`, authenticating
    /// `header` with it, and appends the tag.
    pub(super) fn seal(&self, counter: u64, header: &[u8], body: &mut Vec<u8>) {
        let nonce = nonce(self.role, counter);
        // Fails only for a body beyond ChaCha20's 256 GiB; a datagram is far smaller.
        if let Ok(tag) = self.key.seal_in_place_separate_tag(nonce, Aad::from(header), body) {
            body.extend_from_slice(tag.as_ref());
        } else {
            body.clear();
        }
    }

    /// Decrypts in place what the peer sealed as its datagram number `counter` with `header`
    /// (ciphertext, then tag); the plaintext, or `None` when it is not authentic.
    pub(super) fn open<'a>(
        &self,
        counter: u64,
        header: &[u8],
        sealed: &'a mut [u8],
    ) -> Option<&'a mut [u8]> {
        let peer = match self.role {
            Role::Dialer => Role::Listener,
            Role::Listener => Role::Dialer,
        };
        self.key.open_in_place(nonce(peer, counter), Aad::from(header), sealed).ok()
    }
}

impl fmt::Debug for DatagramKey {
    /// Never shows the key.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DatagramKey").field("role", &self.role).finish_non_exhaustive()
    }
}

/// The nonce of datagram `counter` sealed by the end in `role`.
fn nonce(role: Role, counter: u64) -> Nonce {
    let mut bytes = [0u8; 12];
    bytes[0] = match role {
        Role::Dialer => 1,
        Role::Listener => 2,
    };
    bytes[4..].copy_from_slice(&counter.to_le_bytes());
    Nonce::assume_unique_for_key(bytes)
}

/// Bytes the sealing adds to a body: the Poly1305 tag.
pub(super) const TAG_LEN: usize = 16;
const KEY_LEN: usize = 32;
const TLS_EXPORTER_LABEL: &[u8] = b"EXPORTER-postbox-host-link-datagrams";
const PSK_LABEL: &[u8] = b"postbox-host-link-datagrams";

#[cfg(test)]
mod tests {
    use super::*;

    fn pair() -> (DatagramKey, DatagramKey) {
        let psk = PreSharedKey::new(&[7; 32]).unwrap();
        let (d, l) = ([1u8; 32], [2u8; 32]);
        (
            DatagramKey::from_pre_shared_key(&psk, &d, &l, Role::Dialer),
            DatagramKey::from_pre_shared_key(&psk, &d, &l, Role::Listener),
        )
    }

    #[test]
    fn what_one_end_seals_only_the_other_end_opens_and_any_change_is_refused() {
        let (dialer, listener) = pair();
        let mut sealed = b"telemetry".to_vec();
        dialer.seal(5, b"head", &mut sealed);
        assert_eq!(sealed.len(), 9 + 16, "the body, then the tag");
        assert_ne!(&sealed[..9], b"telemetry", "encrypted");
        assert_eq!(
            listener.open(5, b"head", &mut sealed.clone()).as_deref(),
            Some(&b"telemetry"[..])
        );
        // Another counter, another header, a flipped bit, or the sender itself (a reflected
        // datagram): refused.
        assert!(listener.open(6, b"head", &mut sealed.clone()).is_none());
        assert!(listener.open(5, b"hear", &mut sealed.clone()).is_none());
        for index in 0..sealed.len() {
            let mut damaged = sealed.clone();
            damaged[index] ^= 0x01;
            assert!(listener.open(5, b"head", &mut damaged).is_none(), "byte {index}");
        }
        assert!(dialer.open(5, b"head", &mut sealed.clone()).is_none());
        // Other nonces make another key.
        let psk = PreSharedKey::new(&[7; 32]).unwrap();
        let other = DatagramKey::from_pre_shared_key(&psk, &[1; 32], &[3; 32], Role::Listener);
        assert!(other.open(5, b"head", &mut sealed).is_none());
        assert!(!format!("{dialer:?}").contains('7'));
    }
}
