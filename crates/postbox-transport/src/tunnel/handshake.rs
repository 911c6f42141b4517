//! Authentication of a new tunnel, before any tunnel frame: the pre-shared key exchange or a
//! TLS handshake, ending with the broker's verdict. Blocking, within one deadline for the
//! whole handshake ([`Deadlined`]).
//!
//! The pre-shared key exchange (both sides write their greeting before they read, so it
//! cannot deadlock; the broker learns which of its keys the node holds from the node's proof):
//!
//! ```text
//! each side → greeting "PBNODE01" [u8; 8] | nonce [u8; 32]       (fresh, system RNG)
//! node      → proof = HMAC-SHA256(key, "postbox-remote-node" | 1 | node nonce | broker nonce)
//! broker    → verdict u8: 0 (no key of mine makes that proof; the connection closes)
//!             or 1 | HMAC-SHA256(key, "postbox-remote-node" | 2 | node nonce | broker nonce)
//! ```
//!
//! The broker tries every key it has (each in constant time, all of them every time). The
//! node checks the broker's proof before it sends anything else, so a server that does not
//! know the key learns nothing of the node's requests. As with host links (§10 of
//! `docs/network.md`): fresh nonces on both sides make recorded proofs useless, the role byte
//! stops reflection, and the label keeps a host link's proof from passing for a node's.
//!
//! With TLS the handshake authenticates both ends (TLS 1.3, client certificate required);
//! then the broker sends the verdict byte `1` inside TLS, so that a node whose certificate the
//! broker refused learns it while attaching, not at its first request.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};

use super::error::AttachError;
use super::security::{check_principal, NamedKey, NodeTlsConfig};
use super::stream::TunnelStream;
use crate::host_link::handshake::tls_error;
use crate::host_link::{AuthenticationError, LinkError, PreSharedKey, TlsConfig};

/// A blocking socket whose reads and writes all end by one deadline: each waits at most the
/// time left, so a peer that trickles its bytes (each read alone would be quick) holds the
/// handshake no longer than a silent one.
#[derive(Debug)]
pub(super) struct Deadlined<'a> {
    socket: &'a TcpStream,
    deadline: Instant,
}

impl<'a> Deadlined<'a> {
    /// `socket`, for I/O that must be over by `deadline`.
    pub(super) fn new(socket: &'a TcpStream, deadline: Instant) -> Self {
        Self { socket, deadline }
    }

    /// The time left; a timeout error once there is none.
    fn left(&self) -> io::Result<Duration> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            Err(io::ErrorKind::TimedOut.into())
        } else {
            Ok(left)
        }
    }
}

impl Read for Deadlined<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.socket.set_read_timeout(Some(self.left()?))?;
        (&mut &*self.socket).read(buf)
    }
}

impl Write for Deadlined<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.socket.set_write_timeout(Some(self.left()?))?;
        (&mut &*self.socket).write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The node's side of the key exchange.
pub(super) fn prove_key(
    socket: &mut (impl Read + Write),
    key: &PreSharedKey,
) -> Result<(), AttachError> {
    let (node_nonce, broker_nonce) = exchange_greetings(socket)?;
    let key = hmac::Key::new(hmac::HMAC_SHA256, key.as_bytes());
    let proof = hmac::sign(&key, &proof_message(NODE, &node_nonce, &broker_nonce));
    write(socket, proof.as_ref())?;
    let mut verdict = [0u8; 1];
    match socket.read_exact(&mut verdict) {
        Ok(()) if verdict[0] == ACCEPTED => {}
        Ok(()) if verdict[0] == REFUSED => return Err(refused_by_peer()),
        Ok(()) => return Err(AttachError::Authentication(AuthenticationError::UnexpectedGreeting)),
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Err(refused_by_peer()),
        Err(e) => return Err(AttachError::handshake_io(&e)),
    }
    let mut theirs = [0u8; PROOF_LEN];
    socket.read_exact(&mut theirs).map_err(|e| AttachError::handshake_io(&e))?;
    let message = proof_message(BROKER, &node_nonce, &broker_nonce);
    hmac::verify(&key, &message, &theirs)
        .map_err(|_| AttachError::Authentication(AuthenticationError::WrongKey))
}

/// The broker's side of the key exchange: the name of the key the node proved it holds.
pub(super) fn check_key(
    socket: &mut (impl Read + Write),
    keys: &[NamedKey],
) -> Result<String, AttachError> {
    let (broker_nonce, node_nonce) = exchange_greetings(socket)?;
    let mut proof = [0u8; PROOF_LEN];
    socket.read_exact(&mut proof).map_err(|e| AttachError::handshake_io(&e))?;
    let message = proof_message(NODE, &node_nonce, &broker_nonce);
    // Every key is tried, whichever matches: the time taken says nothing about which one did.
    let mut matched = None;
    for named in keys {
        let key = hmac::Key::new(hmac::HMAC_SHA256, named.key().as_bytes());
        if hmac::verify(&key, &message, &proof).is_ok() && matched.is_none() {
            matched = Some((named.name().to_owned(), key));
        }
    }
    let Some((name, key)) = matched else {
        // The node hears the refusal; it may have gone already.
        let _ = socket.write_all(&[REFUSED]);
        return Err(AttachError::Authentication(AuthenticationError::WrongKey));
    };
    let ours = hmac::sign(&key, &proof_message(BROKER, &node_nonce, &broker_nonce));
    let mut answer = Vec::with_capacity(1 + PROOF_LEN);
    answer.push(ACCEPTED);
    answer.extend_from_slice(ours.as_ref());
    write(socket, &answer)?;
    Ok(name)
}

/// The node's TLS handshake on the blocking `socket`, then the broker's verdict.
pub(super) fn tls_as_node(
    socket: TcpStream,
    tls: &TlsConfig,
    deadline: Instant,
) -> Result<TunnelStream, AttachError> {
    let mut connection =
        rustls::ClientConnection::new(Arc::clone(&tls.client), tls.peer_name.clone())
            .map_err(|e| tls_failure(&e))?;
    let mut io = Deadlined::new(&socket, deadline);
    while connection.is_handshaking() {
        connection.complete_io(&mut io).map_err(|e| tls_io(&e))?;
    }
    let mut verdict = [0u8; 1];
    match rustls::Stream::new(&mut connection, &mut io).read_exact(&mut verdict) {
        Ok(()) if verdict[0] == ACCEPTED => {}
        Ok(()) => return Err(refused_by_peer()),
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Err(refused_by_peer()),
        Err(e) => return Err(tls_io(&e)),
    }
    Ok(TunnelStream::Tls { socket, tls: Box::new(connection.into()) })
}

/// The broker's TLS handshake on the blocking `socket`; the stream and the node's principal
/// (the first DNS name of its certificate).
pub(super) fn tls_as_broker(
    socket: TcpStream,
    tls: &NodeTlsConfig,
    deadline: Instant,
) -> Result<(TunnelStream, String), AttachError> {
    let mut connection =
        rustls::ServerConnection::new(Arc::clone(&tls.server)).map_err(|e| tls_failure(&e))?;
    let mut io = Deadlined::new(&socket, deadline);
    while connection.is_handshaking() {
        connection.complete_io(&mut io).map_err(|e| tls_io(&e))?;
    }
    let name = connection
        .peer_certificates()
        .and_then(|chain| chain.first())
        .and_then(|leaf| {
            webpki::EndEntityCert::try_from(leaf)
                .ok()
                .and_then(|cert| cert.valid_dns_names().next().map(str::to_owned))
        })
        .filter(|name| check_principal(name).is_ok());
    let mut stream = rustls::Stream::new(&mut connection, &mut io);
    let Some(name) = name else {
        let _ = stream.write_all(&[REFUSED]).and_then(|()| stream.flush());
        return Err(AttachError::Authentication(AuthenticationError::BadCertificate));
    };
    stream.write_all(&[ACCEPTED]).and_then(|()| stream.flush()).map_err(|e| tls_io(&e))?;
    Ok((TunnelStream::Tls { socket, tls: Box::new(connection.into()) }, name))
}

/// Writes this side's greeting and reads the other's; returns (our nonce, their nonce).
fn exchange_greetings(
    socket: &mut (impl Read + Write),
) -> Result<([u8; NONCE_LEN], [u8; NONCE_LEN]), AttachError> {
    let mut ours = [0u8; NONCE_LEN];
    SystemRandom::new()
        .fill(&mut ours)
        .map_err(|_| AttachError::Os { operation: "draw a nonce", kind: io::ErrorKind::Other })?;
    let mut greeting = [0u8; GREETING.len() + NONCE_LEN];
    greeting[..GREETING.len()].copy_from_slice(GREETING);
    greeting[GREETING.len()..].copy_from_slice(&ours);
    write(socket, &greeting)?;
    let mut theirs = [0u8; GREETING.len() + NONCE_LEN];
    socket.read_exact(&mut theirs).map_err(|e| AttachError::handshake_io(&e))?;
    let (magic, nonce) = theirs.split_at(GREETING.len());
    if magic != GREETING {
        return Err(AttachError::Authentication(AuthenticationError::UnexpectedGreeting));
    }
    let mut nonce_out = [0u8; NONCE_LEN];
    nonce_out.copy_from_slice(nonce);
    Ok((ours, nonce_out))
}

fn write(socket: &mut impl Write, bytes: &[u8]) -> Result<(), AttachError> {
    socket.write_all(bytes).and_then(|()| socket.flush()).map_err(|e| AttachError::handshake_io(&e))
}

/// What `prover` signs: the label, its role, and both nonces.
fn proof_message(prover: u8, node_nonce: &[u8], broker_nonce: &[u8]) -> Vec<u8> {
    let mut message = Vec::with_capacity(PROOF_LABEL.len() + 1 + 2 * NONCE_LEN);
    message.extend_from_slice(PROOF_LABEL);
    message.push(prover);
    message.extend_from_slice(node_nonce);
    message.extend_from_slice(broker_nonce);
    message
}

fn refused_by_peer() -> AttachError {
    AttachError::Authentication(AuthenticationError::RefusedByPeer)
}

/// A rustls failure, as the host links classify it.
fn tls_failure(error: &rustls::Error) -> AttachError {
    match tls_error(error) {
        LinkError::Authentication(reason) => AttachError::Authentication(reason),
        _ => AttachError::Authentication(AuthenticationError::Handshake),
    }
}

/// An I/O error of a TLS handshake: the TLS failure it carries, or an OS error.
fn tls_io(error: &io::Error) -> AttachError {
    match error.get_ref().and_then(|inner| inner.downcast_ref::<rustls::Error>()) {
        Some(tls) => tls_failure(tls),
        None => AttachError::handshake_io(error),
    }
}

const GREETING: &[u8; 8] = b"PBNODE01";
const NONCE_LEN: usize = 32;
const PROOF_LEN: usize = 32;
const PROOF_LABEL: &[u8] = b"postbox-remote-node";
const NODE: u8 = 1;
const BROKER: u8 = 2;
const ACCEPTED: u8 = 1;
const REFUSED: u8 = 0;

#[cfg(test)]
mod tests {
    use super::*;

    /// Peer bytes from a script; what this end writes is kept.
    struct Scripted {
        input: io::Cursor<Vec<u8>>,
        output: Vec<u8>,
    }

    impl Scripted {
        fn new(input: Vec<u8>) -> Self {
            Self { input: io::Cursor::new(input), output: Vec::new() }
        }
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

    fn keys() -> Vec<NamedKey> {
        vec![
            NamedKey::new("one", PreSharedKey::new(&[1; 32]).unwrap()).unwrap(),
            NamedKey::new("two", PreSharedKey::new(&[2; 32]).unwrap()).unwrap(),
        ]
    }

    #[test]
    fn the_broker_learns_which_key_the_node_holds_and_both_accept() {
        let (mut a, mut b) = std::os::unix::net::UnixStream::pair().unwrap();
        let node =
            std::thread::spawn(move || prove_key(&mut a, &PreSharedKey::new(&[2; 32]).unwrap()));
        assert_eq!(check_key(&mut b, &keys()), Ok("two".to_owned()));
        assert_eq!(node.join().unwrap(), Ok(()));
    }

    #[test]
    fn a_key_the_broker_does_not_have_is_refused_on_both_sides() {
        let (mut a, mut b) = std::os::unix::net::UnixStream::pair().unwrap();
        let node =
            std::thread::spawn(move || prove_key(&mut a, &PreSharedKey::new(&[3; 32]).unwrap()));
        let wrong = AttachError::Authentication(AuthenticationError::WrongKey);
        assert_eq!(check_key(&mut b, &keys()), Err(wrong));
        drop(b);
        assert_eq!(node.join().unwrap(), Err(refused_by_peer()));
    }

    #[test]
    fn hostile_or_truncated_exchanges_fail_with_a_reason_and_never_panic() {
        let unexpected = AttachError::Authentication(AuthenticationError::UnexpectedGreeting);
        let mut garbage = Scripted::new(vec![0x50; 100]);
        assert_eq!(check_key(&mut garbage, &keys()), Err(unexpected));
        assert_eq!(check_key(&mut Scripted::new(Vec::new()), &keys()), Err(AttachError::Closed));
        // A right greeting and a forged proof.
        let mut forged = GREETING.to_vec();
        forged.extend_from_slice(&[7; NONCE_LEN + PROOF_LEN]);
        let mut peer = Scripted::new(forged.clone());
        let wrong = AttachError::Authentication(AuthenticationError::WrongKey);
        assert_eq!(check_key(&mut peer, &keys()), Err(wrong));
        assert_eq!(peer.output.last(), Some(&REFUSED), "the node is told");
        // A broker that accepts but cannot prove it knows the key.
        let mut accepting = GREETING.to_vec();
        accepting.extend_from_slice(&[7; NONCE_LEN]);
        accepting.push(ACCEPTED);
        accepting.extend_from_slice(&[9; PROOF_LEN]);
        let key = PreSharedKey::new(&[1; 32]).unwrap();
        assert_eq!(prove_key(&mut Scripted::new(accepting.clone()), &key), Err(wrong));
        accepting.truncate(accepting.len() - 1);
        assert_eq!(prove_key(&mut Scripted::new(accepting), &key), Err(AttachError::Closed));
        let mut odd_verdict = GREETING.to_vec();
        odd_verdict.extend_from_slice(&[7; NONCE_LEN]);
        odd_verdict.push(9);
        assert_eq!(prove_key(&mut Scripted::new(odd_verdict), &key), Err(unexpected));
        forged.truncate(GREETING.len() + NONCE_LEN + 3);
        assert_eq!(check_key(&mut Scripted::new(forged), &keys()), Err(AttachError::Closed));
    }
}
