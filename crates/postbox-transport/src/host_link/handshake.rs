//! What happens on a new TCP connection before the session sees it: nothing (plain), a TLS
//! handshake with mutual certificate checks, or the pre-shared key challenge-response.
//!
//! Runs on the dialer's thread or on a short-lived thread per accepted connection, with
//! blocking I/O bounded by the connect timeout; the driver gets only connections that passed.
//!
//! The pre-shared key exchange (both sides write before they read, so it cannot deadlock):
//!
//! ```text
//! each side → greeting "PBHLPSK1" [u8; 8] | nonce [u8; 32]   (fresh, from the system's RNG)
//! each side → proof = HMAC-SHA256(key, "postbox-host-link" | role u8 | dialer nonce | listener nonce)
//!             role: 1 when the dialer proves, 2 when the listener does
//! each side → verdict u8 (1: your proof is right, 0: it is not, and the connection closes)
//! ```
//!
//! Both nonces are in every proof, so a recorded proof is worthless on another connection, and
//! the role byte keeps one side's proof from being reflected back as the other's. The session
//! then runs over the same plain TCP connection: this mode authenticates the peer at connect
//! time but does not encrypt, and an attacker on the path could take over the connection
//! afterwards. Use TLS where the path is not trusted.
//!
//! A secured connection also yields the key of its UDP datagrams (`datagram_key.rs`): from the
//! TLS exporter, or from the pre-shared key and both nonces.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};
use rustls::{AlertDescription, CertificateError};

use super::connection::{Connection, Secured};
use super::datagram_key::DatagramKey;
use super::error::{AuthenticationError, LinkError};
use super::security::{LinkSecurity, PreSharedKey, TlsConfig};

/// Which end of the link this connection is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Role {
    /// Made the connection: the TLS client.
    Dialer,
    /// Accepted it: the TLS server.
    Listener,
}

/// Secures `stream` as `security` says, within `timeout`; the connection the driver can use
/// (with its datagram key, unless plain), or why there is none (the stream is then dropped,
/// which closes it).
pub(super) fn secure(
    stream: TcpStream,
    role: Role,
    security: &LinkSecurity,
    timeout: Duration,
) -> Result<Secured, LinkError> {
    match security {
        LinkSecurity::Plain => Ok(Secured::plain(stream)),
        LinkSecurity::Tls(tls) => tls_handshake(stream, role, tls, timeout),
        LinkSecurity::PreSharedKey(key) => {
            with_timeouts(&stream, Some(timeout))?;
            let datagram_key = prove_key(&mut &stream, role, key)?;
            with_timeouts(&stream, None)?;
            Ok(Secured { connection: Connection::plain(stream), datagram_key: Some(datagram_key) })
        }
    }
}

/// Converts a rustls failure into the reason a connection was lost or refused.
pub(crate) fn tls_error(error: &rustls::Error) -> LinkError {
    use AuthenticationError as Auth;
    let auth =
        match error {
            rustls::Error::InvalidCertificate(certificate) => match certificate {
                CertificateError::UnknownIssuer => Auth::UntrustedCertificate,
                CertificateError::NotValidForName
                | CertificateError::NotValidForNameContext { .. } => Auth::WrongName,
                CertificateError::Expired
                | CertificateError::ExpiredContext { .. }
                | CertificateError::NotValidYet
                | CertificateError::NotValidYetContext { .. } => Auth::OutsideValidity,
                _ => Auth::BadCertificate,
            },
            rustls::Error::NoCertificatesPresented => Auth::NoCertificate,
            rustls::Error::AlertReceived(
                AlertDescription::BadCertificate
                | AlertDescription::UnsupportedCertificate
                | AlertDescription::CertificateRevoked
                | AlertDescription::CertificateExpired
                | AlertDescription::CertificateUnknown
                | AlertDescription::CertificateRequired
                | AlertDescription::UnknownCA
                | AlertDescription::AccessDenied
                | AlertDescription::HandshakeFailure,
            ) => Auth::RefusedByPeer,
            rustls::Error::InvalidMessage(_)
            | rustls::Error::InappropriateHandshakeMessage { .. } => Auth::UnexpectedGreeting,
            rustls::Error::PeerIncompatible(_)
            | rustls::Error::PeerMisbehaved(_)
            | rustls::Error::HandshakeNotComplete => Auth::Handshake,
            _ => return LinkError::TlsProtocol,
        };
    LinkError::Authentication(auth)
}

/// A full TLS 1.3 handshake on the blocking `stream`; the certificates are checked inside it
/// (`security.rs`), so a connection that comes out is authenticated.
fn tls_handshake(
    stream: TcpStream,
    role: Role,
    tls: &TlsConfig,
    timeout: Duration,
) -> Result<Secured, LinkError> {
    let mut tls_connection: rustls::Connection = match role {
        Role::Dialer => {
            rustls::ClientConnection::new(Arc::clone(&tls.client), tls.peer_name.clone())
                .map(Into::into)
        }
        Role::Listener => rustls::ServerConnection::new(Arc::clone(&tls.server)).map(Into::into),
    }
    .map_err(|e| tls_error(&e))?;
    with_timeouts(&stream, Some(timeout))?;
    let deadline = Instant::now() + timeout;
    let mut socket = &stream;
    while tls_connection.is_handshaking() {
        if Instant::now() >= deadline {
            return Err(LinkError::HandshakeTimeout);
        }
        flush(&mut tls_connection, &mut socket)?;
        if !tls_connection.is_handshaking() || !tls_connection.wants_read() {
            continue;
        }
        match tls_connection.read_tls(&mut socket) {
            Ok(0) => return Err(LinkError::Closed),
            Ok(_) => {
                if let Err(error) = tls_connection.process_new_packets() {
                    // Tell the peer why (rustls queued an alert); it may already be gone.
                    let _ = flush(&mut tls_connection, &mut socket);
                    return Err(tls_error(&error));
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(handshake_io(&e)),
        }
    }
    // The client's last flight (its certificate and Finished) leaves after the handshake is
    // complete on its side.
    flush(&mut tls_connection, &mut socket)?;
    with_timeouts(&stream, None)?;
    let datagram_key = DatagramKey::from_tls(&tls_connection, role)?;
    let connection = Connection::tls(stream, tls_connection)
        .map_err(|e| LinkError::io("set up connection", &e))?;
    Ok(Secured { connection, datagram_key: Some(datagram_key) })
}

/// Writes everything rustls has queued, blocking (within the socket's timeout).
fn flush(
    tls_connection: &mut rustls::Connection,
    socket: &mut &TcpStream,
) -> Result<(), LinkError> {
    while tls_connection.wants_write() {
        match tls_connection.write_tls(socket) {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(handshake_io(&e)),
        }
    }
    Ok(())
}

/// Proves knowledge of `key` to the peer and checks the peer's proof (see the module docs);
/// the connection's datagram key once both proofs are accepted. Each step is bounded by the
/// socket's timeouts.
fn prove_key(
    socket: &mut (impl Read + Write),
    role: Role,
    key: &PreSharedKey,
) -> Result<DatagramKey, LinkError> {
    let mut ours = [0u8; NONCE_LEN];
    SystemRandom::new()
        .fill(&mut ours)
        .map_err(|_| LinkError::Os { operation: "draw a nonce", kind: io::ErrorKind::Other })?;
    let mut greeting = [0u8; GREETING.len() + NONCE_LEN];
    greeting[..GREETING.len()].copy_from_slice(GREETING);
    greeting[GREETING.len()..].copy_from_slice(&ours);
    socket.write_all(&greeting).map_err(|e| handshake_io(&e))?;
    let mut theirs = [0u8; GREETING.len() + NONCE_LEN];
    socket.read_exact(&mut theirs).map_err(|e| handshake_io(&e))?;
    let (magic, theirs) = theirs.split_at(GREETING.len());
    if magic != GREETING {
        return Err(LinkError::Authentication(AuthenticationError::UnexpectedGreeting));
    }
    let (dialer_nonce, listener_nonce) = match role {
        Role::Dialer => (&ours[..], theirs),
        Role::Listener => (theirs, &ours[..]),
    };
    let datagram_key = DatagramKey::from_pre_shared_key(key, dialer_nonce, listener_nonce, role);
    let key = hmac::Key::new(hmac::HMAC_SHA256, key.as_bytes());
    let ours = hmac::sign(&key, &proof_message(role, dialer_nonce, listener_nonce));
    socket.write_all(ours.as_ref()).map_err(|e| handshake_io(&e))?;
    let mut their_proof = [0u8; PROOF_LEN];
    socket.read_exact(&mut their_proof).map_err(|e| handshake_io(&e))?;
    let peer = match role {
        Role::Dialer => Role::Listener,
        Role::Listener => Role::Dialer,
    };
    // `verify` compares in constant time.
    let message = proof_message(peer, dialer_nonce, listener_nonce);
    let accepted = hmac::verify(&key, &message, &their_proof).is_ok();
    socket.write_all(&[u8::from(accepted)]).map_err(|e| handshake_io(&e))?;
    if !accepted {
        return Err(LinkError::Authentication(AuthenticationError::WrongKey));
    }
    let mut verdict = [0u8; 1];
    match socket.read_exact(&mut verdict) {
        Ok(()) if verdict[0] == 1 => Ok(datagram_key),
        // A refusal, or a peer that hung up instead of answering.
        Ok(()) => Err(LinkError::Authentication(AuthenticationError::RefusedByPeer)),
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
            Err(LinkError::Authentication(AuthenticationError::RefusedByPeer))
        }
        Err(e) => Err(handshake_io(&e)),
    }
}

/// What `prover` signs: the label, its role, and both nonces.
fn proof_message(prover: Role, dialer_nonce: &[u8], listener_nonce: &[u8]) -> Vec<u8> {
    let mut message = Vec::with_capacity(PROOF_LABEL.len() + 1 + 2 * NONCE_LEN);
    message.extend_from_slice(PROOF_LABEL);
    message.push(match prover {
        Role::Dialer => 1,
        Role::Listener => 2,
    });
    message.extend_from_slice(dialer_nonce);
    message.extend_from_slice(listener_nonce);
    message
}

/// Sets (or clears) the blocking timeouts of both directions.
fn with_timeouts(stream: &TcpStream, timeout: Option<Duration>) -> Result<(), LinkError> {
    stream
        .set_read_timeout(timeout)
        .and_then(|()| stream.set_write_timeout(timeout))
        .map_err(|e| LinkError::io("set up connection", &e))
}

/// An I/O failure during a handshake: a timeout is the handshake's, not a stall of the session.
fn handshake_io(error: &io::Error) -> LinkError {
    match error.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => LinkError::HandshakeTimeout,
        _ => LinkError::io("handshake", error),
    }
}

const GREETING: &[u8; 8] = b"PBHLPSK1";
const NONCE_LEN: usize = 32;
const PROOF_LEN: usize = 32;
const PROOF_LABEL: &[u8] = b"postbox-host-link";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alerts_about_certificates_mean_the_peer_refused_us() {
        let refused = tls_error(&rustls::Error::AlertReceived(AlertDescription::UnknownCA));
        assert_eq!(refused, LinkError::Authentication(AuthenticationError::RefusedByPeer));
        let unknown = rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer);
        assert_eq!(
            tls_error(&unknown),
            LinkError::Authentication(AuthenticationError::UntrustedCertificate)
        );
        assert_eq!(tls_error(&rustls::Error::DecryptError), LinkError::TlsProtocol);
    }

    /// Peer bytes from a script; what this end writes is kept.
    struct Scripted {
        input: io::Cursor<Vec<u8>>,
        output: Vec<u8>,
    }

    impl Read for Scripted {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            self.input.read(buf)
        }
    }

    impl Write for Scripted {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.output.extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn hostile_or_truncated_key_exchanges_fail_with_a_reason_and_never_panic() {
        let key = PreSharedKey::new(&[9; 32]).unwrap();
        let run = |input: Vec<u8>| {
            let mut peer = Scripted { input: io::Cursor::new(input), output: Vec::new() };
            prove_key(&mut peer, Role::Listener, &key).map(|_| ())
        };
        let unexpected = LinkError::Authentication(AuthenticationError::UnexpectedGreeting);
        assert_eq!(run(vec![0x50; 100]), Err(unexpected));
        assert_eq!(run(Vec::new()), Err(LinkError::Closed));
        // A right greeting with a forged proof.
        let mut forged = GREETING.to_vec();
        forged.extend_from_slice(&[1; NONCE_LEN + PROOF_LEN]);
        let wrong = LinkError::Authentication(AuthenticationError::WrongKey);
        assert_eq!(run(forged.clone()), Err(wrong));
        forged.truncate(GREETING.len() + NONCE_LEN + 3);
        assert_eq!(run(forged), Err(LinkError::Closed));
    }
}
