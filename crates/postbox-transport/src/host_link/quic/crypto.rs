//! QUIC's TLS and settings: per-connection configurations made from a host link's
//! [`TlsConfig`], whose certificate checks record why they refused, so that a failed handshake
//! gets the same typed reason as over TCP; the QUIC transport settings; QUIC errors as
//! [`LinkError`]s.
//!
//! quinn reports a handshake this end refused only as a TLS alert code and a text. The checks
//! are the link's own (CA and host name, both ways, `security.rs`), wrapped so that the
//! `rustls::Error` they return is kept in a [`Verdict`] made for that one connection.

use std::io;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::{ConnectionError, IdleTimeout, TransportConfig, TransportErrorCode, VarInt};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{AlertDescription, DigitallySignedStruct, DistinguishedName, SignatureScheme};

use super::super::config::HostLinkConfig;
use super::super::error::{AuthenticationError, LinkError};
use super::super::handshake::tls_error;
use super::super::security::TlsConfig;
use postbox_core::reliable::frame::HEADER_LEN;
use postbox_core::reliable::SessionConfig;

/// Why this end's certificate check refused the peer on one connection, if it did.
#[derive(Debug, Default)]
pub(super) struct Verdict(Mutex<Option<rustls::Error>>);

impl Verdict {
    /// Keeps the error of a failed check; passes the result on.
    fn record<T>(&self, result: Result<T, rustls::Error>) -> Result<T, rustls::Error> {
        if let Err(error) = &result {
            *self.0.lock().unwrap_or_else(PoisonError::into_inner) = Some(error.clone());
        }
        result
    }

    fn refusal(&self) -> Option<rustls::Error> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }
}

/// A dialer's configuration for one connection, and the verdict of its check of the listener.
pub(super) fn client_config(
    tls: &TlsConfig,
    transport: &Arc<TransportConfig>,
) -> Result<(quinn::ClientConfig, Arc<Verdict>), LinkError> {
    let verdict = Arc::new(Verdict::default());
    let mut client = (*tls.client).clone();
    client.alpn_protocols = vec![ALPN.to_vec()];
    client.dangerous().set_certificate_verifier(Arc::new(RecordingServerVerifier {
        inner: Arc::clone(&tls.server_verifier),
        verdict: Arc::clone(&verdict),
    }));
    let crypto = QuicClientConfig::try_from(client).map_err(|_| no_quic_suite())?;
    let mut config = quinn::ClientConfig::new(Arc::new(crypto));
    config.transport_config(Arc::clone(transport));
    Ok((config, verdict))
}

/// A listener's configuration for one connection, and the verdict of its check of the dialer.
pub(super) fn server_config(
    tls: &TlsConfig,
    transport: &Arc<TransportConfig>,
) -> Result<(quinn::ServerConfig, Arc<Verdict>), LinkError> {
    let verdict = Arc::new(Verdict::default());
    let verifier = Arc::new(RecordingClientVerifier {
        inner: Arc::clone(&tls.client_verifier),
        verdict: Arc::clone(&verdict),
    });
    let provider = Arc::clone(tls.server.crypto_provider());
    let mut server = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|_| no_quic_suite())?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(Arc::clone(&tls.server.cert_resolver));
    // As over TCP: every connection authenticates afresh, nothing outlives a restart.
    server.send_tls13_tickets = 0;
    server.alpn_protocols = vec![ALPN.to_vec()];
    let crypto = QuicServerConfig::try_from(server).map_err(|_| no_quic_suite())?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    config.transport_config(Arc::clone(transport));
    Ok((config, verdict))
}

/// The QUIC settings of a host link, from its session's.
///
/// - Streams: the peer may open one per session stream plus the control lane
///   (`max_streams + 1`, unidirectional only); a lane's stream stays open for the connection's
///   life. Set `max_streams` to the streams the link really uses (the broker uses 64).
/// - Windows: a stream's receive window holds at least its largest frame, so one message never
///   waits for window updates; the connection's window (and this end's send buffer) four of
///   those. The windows bound what waits unread in quinn, not what the readers hold: they take
///   everything at once, and what they keep in partly received frames is bounded by
///   [`partial_budget`].
/// - Idle timeout: twice the heartbeat interval, at most the session's silence bound, so a
///   broken connection is dropped and made again before the session gives up on the peer
///   (the session then resumes on the new one); keep-alives at a quarter of it.
pub(super) fn transport_config(config: &HostLinkConfig) -> TransportConfig {
    let session = &config.session;
    let mut transport = TransportConfig::default();
    let lanes = session.max_streams.clamp(1, u32::from(u16::MAX)) + 1;
    transport.max_concurrent_uni_streams(VarInt::from_u32(lanes));
    transport.max_concurrent_bidi_streams(VarInt::from_u32(0));
    let frame = u64::from(session.max_frame_body()) + HEADER_LEN as u64;
    let stream_window = frame.clamp(MIN_STREAM_WINDOW, MAX_STREAM_WINDOW);
    transport.stream_receive_window(VarInt::from_u32(stream_window as u32));
    transport.receive_window(VarInt::from_u32(4 * stream_window as u32));
    transport.send_window(4 * stream_window);
    let heartbeat = session.heartbeat_interval.max(Duration::from_millis(1));
    let idle = heartbeat.saturating_mul(2).min(session.dead_after()).max(MIN_IDLE);
    let idle_timeout = IdleTimeout::try_from(idle).unwrap_or_else(|_| VarInt::MAX.into());
    transport.max_idle_timeout(Some(idle_timeout));
    transport.keep_alive_interval(Some(idle / 4));
    transport
}

/// What the readers of one connection may hold in partly received frames, over all its
/// streams: what the peer can have sent and not had acknowledged (its payloads, each in a frame
/// of its own with a data frame's overhead, on at most one lane per stream), plus a control
/// frame. The peer's session is taken to have this end's sizes, as both ends should.
pub(super) fn partial_budget(config: &HostLinkConfig) -> usize {
    let session = &config.session;
    let data_overhead = (SessionConfig::DATA_FRAME_OVERHEAD as usize)
        .saturating_mul(session.max_streams.clamp(1, u32::from(u16::MAX)) as usize);
    let control = session.max_frame_body() as usize + HEADER_LEN;
    session.max_unacknowledged_bytes.saturating_add(data_overhead).saturating_add(control)
}

/// The session settings a QUIC link runs with: the caller's, with timeout retransmission off
/// (each lane's QUIC stream delivers every frame intact and in order, or the connection
/// breaks and the next one resends: a timeout would only send a slow message twice) and the
/// datagram payload capped so that a datagram frame fits in one QUIC datagram at QUIC's
/// smallest packet size, whatever connection ids the peer picks.
pub(super) fn session_config(session: &mut SessionConfig) {
    session.retransmit_on_timeout = false;
    let fits = DATAGRAM_FRAME_LEN - SessionConfig::DATA_FRAME_OVERHEAD;
    session.max_datagram_payload = session.max_datagram_payload.min(fits);
}

/// Why a QUIC connection failed or ended, as a [`LinkError`]. `verdict` is this end's
/// certificate check on that connection, when there was one.
pub(super) fn connection_error(error: &ConnectionError, verdict: Option<&Verdict>) -> LinkError {
    use AuthenticationError as Auth;
    match error {
        // This end refused the handshake: its own check says why, else the alert it sent.
        ConnectionError::TransportError(error) => match alert(error.code) {
            Some(sent) => match verdict.and_then(Verdict::refusal) {
                Some(refusal) => match tls_error(&refusal) {
                    LinkError::Authentication(reason) => LinkError::Authentication(reason),
                    _ => LinkError::Authentication(Auth::Handshake),
                },
                None => LinkError::Authentication(alert_sent(sent)),
            },
            None => LinkError::QuicProtocol,
        },
        // The listener turned the connection away before its handshake (too many at once).
        ConnectionError::ConnectionClosed(close)
            if close.error_code == TransportErrorCode::CONNECTION_REFUSED =>
        {
            LinkError::Connect(io::ErrorKind::ConnectionRefused)
        }
        // The peer refused it, with a TLS alert.
        ConnectionError::ConnectionClosed(close) => match alert(close.error_code) {
            Some(received) => match tls_error(&rustls::Error::AlertReceived(received)) {
                LinkError::Authentication(reason) => LinkError::Authentication(reason),
                _ => LinkError::Authentication(Auth::Handshake),
            },
            None => LinkError::QuicProtocol,
        },
        // The peer closed it (it was replaced, or the peer's session ended), or lost its state.
        ConnectionError::ApplicationClosed(_)
        | ConnectionError::Reset
        | ConnectionError::LocallyClosed => LinkError::Closed,
        ConnectionError::TimedOut => LinkError::TimedOut,
        ConnectionError::VersionMismatch => LinkError::Authentication(Auth::UnexpectedGreeting),
        ConnectionError::CidsExhausted => LinkError::QuicProtocol,
    }
}

/// The protocol name both ends announce: a QUIC peer of another kind does not get in.
pub(super) const ALPN: &[u8] = b"postbox-host-link/2";

/// The TLS alert a QUIC crypto error code carries (codes 0x100 to 0x1ff, RFC 9001 §4.8).
fn alert(code: TransportErrorCode) -> Option<AlertDescription> {
    let code = u64::from(code);
    // The mask keeps the low byte, which is the alert.
    (0x100..=0x1ff).contains(&code).then(|| AlertDescription::from((code & 0xff) as u8))
}

/// The reason behind an alert this end sent without its certificate check refusing (rustls
/// refused before any check: no certificate, no common protocol).
fn alert_sent(alert: AlertDescription) -> AuthenticationError {
    match alert {
        AlertDescription::CertificateRequired => AuthenticationError::NoCertificate,
        AlertDescription::UnknownCA => AuthenticationError::UntrustedCertificate,
        AlertDescription::CertificateExpired => AuthenticationError::OutsideValidity,
        AlertDescription::BadCertificate | AlertDescription::UnsupportedCertificate => {
            AuthenticationError::BadCertificate
        }
        AlertDescription::NoApplicationProtocol => AuthenticationError::UnexpectedGreeting,
        _ => AuthenticationError::Handshake,
    }
}

/// The link's TLS settings cannot make a QUIC configuration: the provider lacks QUIC's initial
/// cipher suite. Never with the ring provider that `TlsConfig` uses.
fn no_quic_suite() -> LinkError {
    LinkError::Authentication(AuthenticationError::Handshake)
}

/// The dialer's check of the listener's certificate, recording why it refused.
#[derive(Debug)]
struct RecordingServerVerifier {
    inner: Arc<dyn ServerCertVerifier>,
    verdict: Arc<Verdict>,
}

impl ServerCertVerifier for RecordingServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.verdict.record(self.inner.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        ))
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.verdict.record(self.inner.verify_tls12_signature(message, cert, dss))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.verdict.record(self.inner.verify_tls13_signature(message, cert, dss))
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// The listener's check of the dialer's certificate, recording why it refused.
#[derive(Debug)]
struct RecordingClientVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    verdict: Arc<Verdict>,
}

impl ClientCertVerifier for RecordingClientVerifier {
    fn offer_client_auth(&self) -> bool {
        self.inner.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.inner.client_auth_mandatory()
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
        self.verdict.record(self.inner.verify_client_cert(end_entity, intermediates, now))
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.verdict.record(self.inner.verify_tls12_signature(message, cert, dss))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.verdict.record(self.inner.verify_tls13_signature(message, cert, dss))
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// The smallest stream receive window: quinn's default (1.25 MB, 100 ms at 100 Mbit/s).
const MIN_STREAM_WINDOW: u64 = 1_250_000;
/// The largest: frames are at most a few MiB in any host-link configuration postbox uses.
const MAX_STREAM_WINDOW: u64 = 16 << 20;
/// The shortest idle timeout, whatever the heartbeat.
const MIN_IDLE: Duration = Duration::from_millis(100);
/// The longest session frame that always fits in one QUIC datagram: QUIC's smallest packet
/// (1200 bytes, RFC 9000 §14) less a short header with the longest connection id and packet
/// number (1 + 20 + 4), the AEAD tag (16) and the DATAGRAM frame's type and length (quinn
/// reserves 1 + 8, RFC 9221 §4).
pub(super) const DATAGRAM_FRAME_LEN: u32 = 1200 - (1 + 20 + 4) - 16 - (1 + 8);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crypto_codes_carry_alerts_and_errors_map_to_their_reasons() {
        assert_eq!(alert(TransportErrorCode::crypto(48)), Some(AlertDescription::UnknownCA));
        assert_eq!(alert(TransportErrorCode::PROTOCOL_VIOLATION), None);
        let refused = ConnectionError::ConnectionClosed(quinn::ConnectionClose {
            error_code: TransportErrorCode::crypto(u8::from(AlertDescription::BadCertificate)),
            frame_type: None,
            reason: Default::default(),
        });
        assert_eq!(
            connection_error(&refused, None),
            LinkError::Authentication(AuthenticationError::RefusedByPeer)
        );
        let turned_away = ConnectionError::ConnectionClosed(quinn::ConnectionClose {
            error_code: TransportErrorCode::CONNECTION_REFUSED,
            frame_type: None,
            reason: Default::default(),
        });
        assert_eq!(
            connection_error(&turned_away, None),
            LinkError::Connect(io::ErrorKind::ConnectionRefused)
        );
        assert_eq!(connection_error(&ConnectionError::TimedOut, None), LinkError::TimedOut);
        assert_eq!(connection_error(&ConnectionError::Reset, None), LinkError::Closed);
        assert_eq!(
            alert_sent(AlertDescription::CertificateRequired),
            AuthenticationError::NoCertificate
        );
    }

    #[test]
    fn the_idle_timeout_stays_within_the_sessions_silence_bound() {
        let mut config = HostLinkConfig::default();
        config.session.heartbeat_interval = Duration::from_millis(200);
        config.session.missed_heartbeats = 1;
        let transport = format!("{:?}", transport_config(&config));
        assert!(transport.contains("max_idle_timeout: Some(200)"), "{transport}");
        config.session.missed_heartbeats = 10;
        let transport = format!("{:?}", transport_config(&config));
        assert!(transport.contains("max_idle_timeout: Some(400)"), "{transport}");
    }

    #[test]
    fn the_peer_may_open_a_stream_per_session_stream_and_one_for_control() {
        let mut config = HostLinkConfig::default();
        config.session.max_streams = 64;
        let transport = format!("{:?}", transport_config(&config));
        assert!(transport.contains("max_concurrent_uni_streams: 65"), "{transport}");
        assert!(transport.contains("max_concurrent_bidi_streams: 0"), "{transport}");
    }

    #[test]
    fn partial_frames_may_hold_what_the_peer_can_have_unacknowledged() {
        let mut config = HostLinkConfig::default();
        config.session.max_streams = 64;
        config.session.max_unacknowledged_bytes = 16 << 20;
        let frame = config.session.max_frame_body() as usize + HEADER_LEN;
        assert_eq!(partial_budget(&config), (16 << 20) + 64 * 44 + frame);
    }

    #[test]
    fn over_quic_a_session_does_not_resend_on_timeout_and_its_datagrams_fit_in_one() {
        let mut session = SessionConfig::default();
        session_config(&mut session);
        assert!(!session.retransmit_on_timeout);
        assert_eq!(session.max_datagram_payload, 1150 - SessionConfig::DATA_FRAME_OVERHEAD);
        // A smaller limit stays.
        let mut small = SessionConfig { max_datagram_payload: 100, ..SessionConfig::default() };
        session_config(&mut small);
        assert_eq!(small.max_datagram_payload, 100);
    }
}
