//! Host links over mutual TLS and with a pre-shared key, over real loopback TCP: messages both
//! ways exactly once and in order, across a cut connection; certificates from another CA, for
//! another host, or a wrong key are refused with a typed error, and no session frame flows.
//!
//! Certificates are made here with rcgen: a CA, hosts `a` and `b`, and a rogue CA. Every wait is
//! bounded by a watchdog, never by a timing assertion.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use postbox_test::{Authority, Identity};
use postbox_transport::host_link::{
    AuthenticationError, Event, HostLink, HostLinkConfig, LinkError, LinkSecurity, PreSharedKey,
    SessionConfig, StreamId, TlsConfig,
};

#[path = "support/watchdog.rs"]
mod watchdog;
use watchdog::with_watchdog;
#[path = "support/tls.rs"]
mod tls;
use tls::tls_config;
#[path = "support/traffic.rs"]
mod traffic;
use traffic::{assert_never_opened, wait_stats, Traffic};

// ---------------------------------------------------------------------------------------------
// Certificates
// ---------------------------------------------------------------------------------------------

/// A link listening on a fresh loopback port with `security`, and that port.
fn listen_on_loopback(security: LinkSecurity) -> (HostLink, SocketAddr) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    (HostLink::listen_secured(listener, config(), security).unwrap(), addr)
}

/// TLS settings as a broker loads them: from PEM files.
fn tls_from_files(identity: &Identity, ca: &Authority, peer: &str) -> LinkSecurity {
    let dir = tempfile::tempdir().unwrap();
    let path = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path
    };
    let (cert, key, ca) = (
        path("cert.pem", &identity.cert),
        path("key.pem", &identity.key),
        path("ca.pem", &ca.pem()),
    );
    LinkSecurity::Tls(TlsConfig::from_pem_files(&cert, &key, &ca, peer).unwrap())
}

/// TLS settings for a host holding `identity`, trusting `ca`, talking to `peer`.
fn tls(identity: &Identity, ca: &Authority, peer: &str) -> LinkSecurity {
    LinkSecurity::Tls(tls_config(identity, ca, peer))
}

// ---------------------------------------------------------------------------------------------
// Harness
// ---------------------------------------------------------------------------------------------

fn config() -> HostLinkConfig {
    HostLinkConfig {
        session: SessionConfig {
            heartbeat_interval: Duration::from_millis(100),
            missed_heartbeats: 100,
            initial_rto: Duration::from_millis(100),
            min_rto: Duration::from_millis(20),
            max_rto: Duration::from_millis(500),
            ..SessionConfig::default()
        },
        connect_timeout: Duration::from_secs(5),
        reconnect_min: Duration::from_millis(10),
        reconnect_max: Duration::from_millis(100),
        stall_timeout: Duration::from_secs(5),
    }
}

/// A TCP relay in front of a listener that can cut its connections and keeps what the dialer
/// sent. (`postbox_test::FaultProxy` cannot carry TLS: it parses the stream as session frames.)
struct CutRelay {
    addr: SocketAddr,
    connections: Arc<Mutex<Vec<TcpStream>>>,
    /// Everything the dialing side sent through the relay.
    sent: Arc<Mutex<Vec<u8>>>,
    stopped: Arc<AtomicBool>,
}

impl CutRelay {
    fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let connections = Arc::new(Mutex::new(Vec::new()));
        let sent = Arc::new(Mutex::new(Vec::new()));
        let stopped = Arc::new(AtomicBool::new(false));
        let (held, captured, stop) =
            (Arc::clone(&connections), Arc::clone(&sent), Arc::clone(&stopped));
        thread::spawn(move || {
            for client in listener.incoming() {
                if stop.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(client) = client else { continue };
                let Ok(server) = TcpStream::connect(target) else { continue };
                let mut held = held.lock().unwrap();
                held.push(client.try_clone().unwrap());
                held.push(server.try_clone().unwrap());
                let (c2, s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
                let captured = Arc::clone(&captured);
                thread::spawn(move || pump(client, server, Some(&captured)));
                thread::spawn(move || pump(s2, c2, None));
            }
        });
        Self { addr, connections, sent, stopped }
    }

    /// Cuts every connection through the relay now.
    fn cut_now(&self) {
        for stream in self.connections.lock().unwrap().drain(..) {
            let _ = stream.shutdown(Shutdown::Both);
        }
    }
}

impl Drop for CutRelay {
    fn drop(&mut self) {
        self.stopped.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr);
        self.cut_now();
    }
}

/// Copies `from` to `to` until either ends, keeping a copy in `capture`.
fn pump(mut from: TcpStream, mut to: TcpStream, capture: Option<&Mutex<Vec<u8>>>) {
    let mut buf = [0u8; 16 << 10];
    loop {
        match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if let Some(capture) = capture {
                    capture.lock().unwrap().extend_from_slice(&buf[..n]);
                }
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}

fn next_event(link: &HostLink) -> Event {
    link.recv_timeout(EVENT_WATCHDOG).unwrap_or_else(|e| panic!("no event: {e}"))
}

fn payload(from: u8, stream: u32, id: u64) -> Vec<u8> {
    let mut out = b"postbox-plaintext-marker".to_vec();
    out.push(from);
    out.extend_from_slice(&stream.to_le_bytes());
    out.extend_from_slice(&id.to_le_bytes());
    out.resize(out.len() + (id % 200) as usize, from);
    out
}

/// Both links exchange `PER_STREAM` messages per stream each way, with the connection cut
/// once the dialing side has received the first half; the dialer must have reconnected.
fn exchange_across_a_cut(listening: HostLink, dialing: HostLink, relay: &CutRelay) {
    let [_listening, dialing] =
        TRAFFIC.exchange(listening, dialing, PER_STREAM, || relay.cut_now());
    let stats = dialing.stats();
    assert!(stats.connections >= 2, "the cut forced a reconnect: {stats:?}");
}

const STREAMS: u32 = 3;
const TRAFFIC: Traffic = Traffic { streams: STREAMS, payload, next_event };
const PER_STREAM: u64 = 200;
const EVENT_WATCHDOG: Duration = Duration::from_secs(30);
const TEST_WATCHDOG: Duration = Duration::from_secs(90);

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

#[test]
fn messages_cross_mutual_tls_both_ways_exactly_once_in_order_across_a_cut() {
    with_watchdog(TEST_WATCHDOG, || {
        let ca = Authority::new("postbox test CA");
        let (a, b) = (ca.issue("a"), ca.issue("b"));
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let relay = CutRelay::start(listener.local_addr().unwrap());
        let listening =
            HostLink::listen_secured(listener, config(), tls_from_files(&b, &ca, "a")).unwrap();
        let dialing = HostLink::dial_secured(relay.addr, config(), tls(&a, &ca, "b")).unwrap();
        exchange_across_a_cut(listening, dialing, &relay);
        let wire = relay.sent.lock().unwrap();
        assert!(!wire.is_empty());
        let marker = b"postbox-plaintext-marker";
        assert!(!wire.windows(marker.len()).any(|w| w == marker), "the payloads are encrypted");
    });
}

#[test]
fn a_client_certificate_from_another_ca_is_refused_and_nothing_is_delivered() {
    with_watchdog(TEST_WATCHDOG, || {
        let ca = Authority::new("postbox test CA");
        let rogue_ca = Authority::new("rogue CA");
        let (rogue_a, b) = (rogue_ca.issue("a"), ca.issue("b"));
        let (listening, addr) = listen_on_loopback(tls(&b, &ca, "a"));
        // The rogue trusts the real CA, so it accepts b; b must refuse it.
        let dialing = HostLink::dial_secured(addr, config(), tls(&rogue_a, &ca, "b")).unwrap();
        dialing.send(StreamId(1), b"must not arrive".to_vec()).unwrap();

        let refused = LinkError::Authentication(AuthenticationError::UntrustedCertificate);
        let stats = wait_stats(&listening, |s| s.handshake_failures >= 2);
        assert_eq!(stats.last_error, Some(refused));
        assert_eq!(stats.connections, 0, "no refused connection reaches the session");
        // The dialer learns of the refusal by the server's alert (or, should the reset beat the
        // alert, by the connection closing).
        let stats = wait_stats(&dialing, |s| s.last_error.is_some() && s.connections >= 2);
        let by_peer = LinkError::Authentication(AuthenticationError::RefusedByPeer);
        assert!(
            matches!(stats.last_error, Some(e) if e == by_peer || e == LinkError::Closed),
            "{stats:?}"
        );
        assert_never_opened(&listening);
        assert_never_opened(&dialing);
    });
}

#[test]
fn a_client_certificate_for_another_host_is_refused() {
    with_watchdog(TEST_WATCHDOG, || {
        let ca = Authority::new("postbox test CA");
        let (c, b) = (ca.issue("c"), ca.issue("b"));
        // b's address for a serves a only: c, although signed by the same CA, is refused.
        let (listening, addr) = listen_on_loopback(tls(&b, &ca, "a"));
        let dialing = HostLink::dial_secured(addr, config(), tls(&c, &ca, "b")).unwrap();
        let stats = wait_stats(&listening, |s| s.handshake_failures >= 1);
        assert_eq!(
            stats.last_error,
            Some(LinkError::Authentication(AuthenticationError::WrongName))
        );
        assert_never_opened(&listening);
        drop(dialing);
    });
}

#[test]
fn a_server_certificate_for_another_name_is_refused_by_the_dialer() {
    with_watchdog(TEST_WATCHDOG, || {
        let ca = Authority::new("postbox test CA");
        let (a, b) = (ca.issue("a"), ca.issue("b"));
        let (listening, addr) = listen_on_loopback(tls(&b, &ca, "a"));
        // a means to reach c, but b answers.
        let dialing = HostLink::dial_secured(addr, config(), tls(&a, &ca, "c")).unwrap();
        dialing.send(StreamId(1), b"must not arrive".to_vec()).unwrap();
        let stats = wait_stats(&dialing, |s| s.handshake_failures >= 2);
        assert_eq!(
            stats.last_error,
            Some(LinkError::Authentication(AuthenticationError::WrongName))
        );
        assert_eq!(stats.connections, 0);
        // The listener hears why from the dialer's alert (or sees the connection close, should
        // a reset overtake it).
        let stats = wait_stats(&listening, |s| s.handshake_failures >= 1);
        let by_peer = LinkError::Authentication(AuthenticationError::RefusedByPeer);
        assert!(
            matches!(stats.last_error, Some(e) if e == by_peer || e == LinkError::Closed),
            "{stats:?}"
        );
        assert_never_opened(&listening);
        assert_never_opened(&dialing);
    });
}

#[test]
fn a_pre_shared_key_authenticates_and_messages_cross_a_cut() {
    with_watchdog(TEST_WATCHDOG, || {
        let key =
            LinkSecurity::PreSharedKey(PreSharedKey::new(b"0123456789abcdef-shared").unwrap());
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let relay = CutRelay::start(listener.local_addr().unwrap());
        let listening = HostLink::listen_secured(listener, config(), key.clone()).unwrap();
        let dialing = HostLink::dial_secured(relay.addr, config(), key).unwrap();
        exchange_across_a_cut(listening, dialing, &relay);
    });
}

#[test]
fn a_wrong_pre_shared_key_is_refused_on_both_sides() {
    with_watchdog(TEST_WATCHDOG, || {
        let right = PreSharedKey::new(b"0123456789abcdef-right").unwrap();
        let wrong = PreSharedKey::new(b"0123456789abcdef-wrong").unwrap();
        let (listening, addr) = listen_on_loopback(LinkSecurity::PreSharedKey(right));
        let dialing =
            HostLink::dial_secured(addr, config(), LinkSecurity::PreSharedKey(wrong)).unwrap();
        dialing.send(StreamId(1), b"must not arrive".to_vec()).unwrap();
        let wrong_key = Some(LinkError::Authentication(AuthenticationError::WrongKey));
        let stats = wait_stats(&listening, |s| s.handshake_failures >= 2);
        assert_eq!(stats.last_error, wrong_key);
        let stats = wait_stats(&dialing, |s| s.handshake_failures >= 2);
        assert_eq!(stats.last_error, wrong_key);
        assert_never_opened(&listening);
        assert_never_opened(&dialing);
    });
}

#[test]
fn a_plain_dialer_is_refused_by_a_pre_shared_key_listener() {
    with_watchdog(TEST_WATCHDOG, || {
        let key = PreSharedKey::new(b"0123456789abcdef").unwrap();
        let (listening, addr) = listen_on_loopback(LinkSecurity::PreSharedKey(key));
        let dialing = HostLink::dial(addr, config()).unwrap();
        let stats = wait_stats(&listening, |s| s.handshake_failures >= 1);
        assert_eq!(
            stats.last_error,
            Some(LinkError::Authentication(AuthenticationError::UnexpectedGreeting))
        );
        assert_never_opened(&listening);
        drop(dialing);
    });
}
