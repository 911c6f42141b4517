//! Host links over QUIC (quinn), over real loopback UDP: messages both ways exactly once and in
//! order, also through a proxy that drops, duplicates, corrupts, reorders and delays datagrams
//! and partitions the path long enough for the QUIC connection to die (the session resumes on
//! the next); certificates from another CA or for another name are refused with their typed
//! errors; a stream whose bytes are held up does not hold up another's (a test that fails over
//! one ordered byte stream).
//!
//! Certificates are made here by `postbox_test::Authority`. Every wait is bounded by a watchdog,
//! never by a timing assertion.

use std::net::{SocketAddr, UdpSocket};
use std::thread;
use std::time::Duration;

use postbox_test::{Authority, DatagramFaults, DatagramProxy};
use postbox_transport::host_link::{
    AuthenticationError, Event, HostLink, HostLinkConfig, LinkError, MessageId, SessionConfig,
    SessionError, StreamId, TlsConfig,
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
// Harness
// ---------------------------------------------------------------------------------------------

/// Heartbeats every 200 ms, dead after 10 s: the QUIC idle timeout is 400 ms, so a partition of
/// a second kills the connection but not the session.
fn config() -> HostLinkConfig {
    HostLinkConfig {
        session: SessionConfig {
            heartbeat_interval: Duration::from_millis(200),
            missed_heartbeats: 50,
            initial_rto: Duration::from_millis(200),
            min_rto: Duration::from_millis(50),
            max_rto: Duration::from_millis(1000),
            ..SessionConfig::default()
        },
        connect_timeout: Duration::from_secs(2),
        reconnect_min: Duration::from_millis(10),
        reconnect_max: Duration::from_millis(200),
        stall_timeout: Duration::from_secs(5),
    }
}

/// Host b listening on a fresh loopback UDP port for host a, and that port.
fn listen_on_loopback(tls: TlsConfig) -> (HostLink, SocketAddr) {
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = socket.local_addr().unwrap();
    (HostLink::listen_quic(socket, tls, config()).unwrap(), addr)
}

/// Hosts a and b, each with a certificate from one CA: b listens, a dials `via(b's address)`.
fn pair_via(via: impl FnOnce(SocketAddr) -> SocketAddr) -> (HostLink, HostLink) {
    let ca = Authority::new("postbox test CA");
    let (a, b) = (ca.issue("a"), ca.issue("b"));
    let (listening, addr) = listen_on_loopback(tls_config(&b, &ca, "a"));
    let dialing = HostLink::dial_quic(via(addr), tls_config(&a, &ca, "b"), config()).unwrap();
    (listening, dialing)
}

fn next_event(link: &HostLink) -> Event {
    link.recv_timeout(EVENT_WATCHDOG)
        .unwrap_or_else(|e| panic!("no event: {e}; {:?}", link.stats()))
}

fn payload(from: u8, stream: u32, id: u64) -> Vec<u8> {
    let mut out = vec![from];
    out.extend_from_slice(&stream.to_le_bytes());
    out.extend_from_slice(&id.to_le_bytes());
    out.resize(out.len() + (id % 300) as usize, from);
    out
}

const STREAMS: u32 = 3;
const TRAFFIC: Traffic = Traffic { streams: STREAMS, payload, next_event };
const PER_STREAM: u64 = 300;
const EVENT_WATCHDOG: Duration = Duration::from_secs(30);
const TEST_WATCHDOG: Duration = Duration::from_secs(90);

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

#[test]
fn messages_cross_quic_both_ways_exactly_once_in_order_and_a_close_reaches_the_peer() {
    with_watchdog(TEST_WATCHDOG, || {
        let (listening, dialing) = pair_via(|addr| addr);
        let [listening, dialing] = TRAFFIC.exchange(listening, dialing, PER_STREAM, || {});
        let stats = dialing.stats();
        assert_eq!((stats.connections, stats.session.links_opened), (1, 1), "{stats:?}");
        assert!(stats.bytes_sent > 0 && stats.bytes_received > 0);
        dialing.close();
        loop {
            match next_event(&listening) {
                Event::Ended(reason) => {
                    assert_eq!(reason, SessionError::PeerClosed);
                    break;
                }
                Event::Acked { .. } => {}
                other => panic!("unexpected event: {other:?}"),
            }
        }
    });
}

#[test]
fn through_loss_duplication_corruption_reordering_and_a_partition_every_message_arrives_once() {
    with_watchdog(TEST_WATCHDOG, || {
        // POSTBOX_FAULT_SEED=N replays (the datagram faults of) a failed run.
        let seed = std::env::var("POSTBOX_FAULT_SEED").map_or(0x0007_0111, |s| s.parse().unwrap());
        let mut proxy = None;
        let (listening, dialing) = pair_via(|addr| {
            let started = DatagramProxy::start(addr, DatagramFaults::harsh(), seed).unwrap();
            let via = started.addr();
            proxy = Some(started);
            via
        });
        let proxy = proxy.unwrap();
        let [listening, dialing] = TRAFFIC.exchange(listening, dialing, PER_STREAM, || {
            // Longer than the QUIC idle timeout (400 ms), far shorter than the session's
            // silence bound (10 s): the connection dies, the session lives.
            proxy.partition();
            thread::sleep(Duration::from_millis(1200));
            proxy.heal();
        });
        let counters = proxy.counters();
        assert!(counters.dropped > 0, "{counters:?}");
        assert!(counters.duplicated > 0, "{counters:?}");
        assert!(counters.corrupted > 0, "{counters:?}");
        assert!(counters.reordered > 0, "{counters:?}");
        assert!(counters.delayed > 0, "{counters:?}");
        assert!(counters.black_holed > 0, "{counters:?}");
        let stats = dialing.stats();
        assert!(stats.connections >= 2, "the partition forced a new connection: {stats:?}");
        assert!(stats.session.links_opened >= 2, "and the session resumed on it: {stats:?}");
        assert_eq!(stats.session.state, postbox_transport::host_link::LinkState::Open);
        drop(listening);
    });
}

#[test]
fn a_dialer_seen_from_a_new_address_keeps_its_connection() {
    with_watchdog(TEST_WATCHDOG, || {
        let mut proxy = None;
        let (listening, dialing) = pair_via(|addr| {
            let started = DatagramProxy::start(addr, DatagramFaults::none(), 5).unwrap();
            let via = started.addr();
            proxy = Some(started);
            via
        });
        let proxy = proxy.unwrap();
        // As after a NAT rebinding: QUIC migrates the connection to the new address.
        let [_listening, dialing] =
            TRAFFIC.exchange(listening, dialing, PER_STREAM, || proxy.rebind_now());
        let counters = proxy.counters();
        assert_eq!((counters.rebinds, counters.flows), (1, 2), "{counters:?}");
        let stats = dialing.stats();
        assert_eq!((stats.connections, stats.session.links_opened), (1, 1), "{stats:?}");
    });
}

#[test]
fn a_stream_held_up_by_a_large_message_does_not_hold_up_another() {
    with_watchdog(TEST_WATCHDOG, || {
        // A path with 25 ms of latency each way: a megabyte takes many round trips (the
        // congestion window grows from about ten packets), a small message one.
        let faults =
            DatagramFaults { latency: Duration::from_millis(25), ..DatagramFaults::none() };
        let mut proxy = None;
        let (listening, dialing) = pair_via(|addr| {
            let started = DatagramProxy::start(addr, faults, 0x401b).unwrap();
            let via = started.addr();
            proxy = Some(started);
            via
        });
        while !matches!(next_event(&dialing), Event::LinkOpen { .. }) {}
        // Stream 1 gets two messages of a megabyte, then stream 2 small ones. Over one ordered
        // byte stream (TCP, or a single QUIC stream) nothing of stream 2 could arrive before
        // the first megabyte had arrived whole.
        const LARGE: usize = 1 << 20;
        const SMALL: u64 = 50;
        for n in 0..2u8 {
            dialing.send(StreamId(1), vec![n; LARGE]).unwrap();
        }
        for id in 1..=SMALL {
            dialing.send(StreamId(2), id.to_le_bytes().to_vec()).unwrap();
        }
        let mut small_before_large = 0;
        let mut large = 0;
        let mut next_small = 1;
        while large < 2 || next_small <= SMALL {
            match next_event(&listening) {
                Event::Delivered { stream: StreamId(1), id, payload } => {
                    assert_eq!(id, MessageId(large + 1));
                    assert_eq!(payload, vec![large as u8; LARGE]);
                    large += 1;
                }
                Event::Delivered { stream: StreamId(2), id, payload } => {
                    assert_eq!(id, MessageId(next_small));
                    assert_eq!(payload, next_small.to_le_bytes());
                    next_small += 1;
                    if large == 0 {
                        small_before_large += 1;
                    }
                }
                Event::LinkOpen { .. } | Event::Acked { .. } => {}
                other => panic!("unexpected event: {other:?}"),
            }
        }
        assert_eq!(
            small_before_large, SMALL,
            "every small message arrived while the first large one was still on its way"
        );
        let stats = dialing.stats();
        assert_eq!(stats.session.retransmissions, 0, "nothing went twice: {stats:?}");
        drop(proxy);
    });
}

#[test]
fn a_client_certificate_from_another_ca_is_refused_and_nothing_is_delivered() {
    with_watchdog(TEST_WATCHDOG, || {
        let ca = Authority::new("postbox test CA");
        let rogue_ca = Authority::new("rogue CA");
        let (rogue_a, b) = (rogue_ca.issue("a"), ca.issue("b"));
        let (listening, addr) = listen_on_loopback(tls_config(&b, &ca, "a"));
        // The rogue trusts the real CA, so it accepts b; b must refuse it.
        let dialing = HostLink::dial_quic(addr, tls_config(&rogue_a, &ca, "b"), config()).unwrap();
        dialing.send(StreamId(1), b"must not arrive".to_vec()).unwrap();

        let refused = LinkError::Authentication(AuthenticationError::UntrustedCertificate);
        let stats = wait_stats(&listening, |s| s.handshake_failures >= 2);
        assert_eq!(stats.last_error, Some(refused));
        assert_eq!(stats.connections, 0, "no refused connection reaches the session");
        // In TLS 1.3 the client's handshake is done before the server checks its certificate:
        // the dialer learns of the refusal from the alert that closes the connection.
        let by_peer = LinkError::Authentication(AuthenticationError::RefusedByPeer);
        let stats = wait_stats(&dialing, |s| s.last_error == Some(by_peer));
        assert!(stats.connections >= 1, "{stats:?}");
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
        let (listening, addr) = listen_on_loopback(tls_config(&b, &ca, "a"));
        let dialing = HostLink::dial_quic(addr, tls_config(&c, &ca, "b"), config()).unwrap();
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
        let (listening, addr) = listen_on_loopback(tls_config(&b, &ca, "a"));
        // a means to reach c, but b answers.
        let dialing = HostLink::dial_quic(addr, tls_config(&a, &ca, "c"), config()).unwrap();
        dialing.send(StreamId(1), b"must not arrive".to_vec()).unwrap();
        let stats = wait_stats(&dialing, |s| s.handshake_failures >= 2);
        assert_eq!(
            stats.last_error,
            Some(LinkError::Authentication(AuthenticationError::WrongName))
        );
        assert_eq!(stats.connections, 0);
        // The listener hears why from the dialer's alert.
        let stats = wait_stats(&listening, |s| s.handshake_failures >= 1);
        assert_eq!(
            stats.last_error,
            Some(LinkError::Authentication(AuthenticationError::RefusedByPeer))
        );
        assert_never_opened(&listening);
        assert_never_opened(&dialing);
    });
}
