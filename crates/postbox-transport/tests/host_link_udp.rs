//! Best-effort datagrams of TCP host links over real UDP (`host_link/udp.rs`): they travel in
//! UDP datagrams beside the connection, never on it; each is delivered at most once and intact;
//! through `postbox_test::DatagramProxy`'s loss, duplication and corruption nothing arrives twice
//! or damaged, and what was damaged or repeated is counted; on a link secured by a pre-shared
//! key or TLS a forged, damaged or plain datagram is rejected, a replayed one rejected (and it
//! never moves the listener's address), one sealed for an earlier connection refused, and the
//! path never sees a payload; on a plain link a hello over UDP cannot restart the peer.
//!
//! Every wait is bounded by a watchdog, never by a timing assertion.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use postbox_core::reliable::body::{Data, Hello};
use postbox_core::reliable::frame::{Frame, FrameBody};
use postbox_test::{Authority, DatagramFaults, DatagramProxy};
use postbox_transport::host_link::{
    DatagramSendError, Event, HostLink, HostLinkConfig, HostLinkStats, LinkSecurity, LinkState,
    MessageId, PreSharedKey, SessionConfig, SessionId, StreamId, TlsConfig,
};

#[path = "support/watchdog.rs"]
mod watchdog;
use watchdog::with_watchdog;

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

/// Two linked ends, each knowing the other's datagrams.
struct Pair {
    listening: HostLink,
    dialing: HostLink,
    /// The listener's UDP address.
    datagrams: SocketAddr,
}

/// A listener on loopback with a UDP socket of its own, and a dialer that reaches the TCP
/// side at `via_tcp(listener address)` and sends its datagrams to `via_udp(listener's UDP)`.
fn pair(
    security: &LinkSecurity,
    via_tcp: impl FnOnce(SocketAddr) -> SocketAddr,
    via_udp: impl FnOnce(SocketAddr) -> SocketAddr,
) -> Pair {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    let (tcp, datagrams) = (listener.local_addr().unwrap(), socket.local_addr().unwrap());
    let listening =
        HostLink::listen_with_udp(listener, socket, config(), security.clone()).unwrap();
    let dialing =
        HostLink::dial_with_udp(via_tcp(tcp), via_udp(datagrams), config(), security.clone())
            .unwrap();
    for link in [&listening, &dialing] {
        wait_for(link, |e| matches!(e, Event::LinkOpen { .. }));
    }
    Pair { listening, dialing, datagrams }
}

/// Receives until `wanted` holds for an event; other events are dropped.
fn wait_for(link: &HostLink, mut wanted: impl FnMut(&Event) -> bool) {
    loop {
        let event = link.recv_timeout(WATCHDOG).unwrap_or_else(|e| panic!("no event: {e}"));
        if wanted(&event) {
            return;
        }
    }
}

fn wait_stats(link: &HostLink, what: &str, done: impl Fn(&HostLinkStats) -> bool) -> HostLinkStats {
    let deadline = Instant::now() + WATCHDOG;
    loop {
        let stats = link.stats();
        if done(&stats) {
            return stats;
        }
        assert!(Instant::now() < deadline, "timed out waiting until {what}: {stats:?}");
        thread::sleep(Duration::from_millis(5));
    }
}

/// Datagram `n` from the side tagged `from`: its identity, then a filler that shows damage.
fn payload(from: u8, n: u64, len: usize) -> Vec<u8> {
    let mut out = vec![from];
    out.extend_from_slice(&n.to_le_bytes());
    while out.len() < len {
        out.push((out.len() as u64 * 31 + n) as u8 ^ from);
    }
    out
}

/// The number of a datagram if it is exactly what side `from` sent; panics otherwise.
fn checked(from: u8, bytes: &[u8]) -> u64 {
    assert!(bytes.len() >= 9 && bytes[0] == from, "not from {from}: {bytes:?}");
    let n = u64::from_le_bytes(bytes[1..9].try_into().unwrap());
    assert_eq!(bytes, payload(from, n, bytes.len()), "datagram {n} arrived damaged");
    n
}

/// Sends datagrams `0..count` of `len` bytes, waiting briefly whenever the queue is full.
fn send_datagrams(link: &HostLink, from: u8, count: u64, len: usize) {
    for n in 0..count {
        let mut bytes = payload(from, n, len);
        loop {
            match link.send_datagram(StreamId(3), bytes) {
                Ok(_) => break,
                Err(DatagramSendError::Full(back)) => {
                    bytes = back;
                    thread::sleep(Duration::from_millis(1));
                }
                Err(other) => panic!("datagram {n}: {other}"),
            }
        }
        if n % 16 == 15 {
            // Paced, so that no socket buffer on the way overflows.
            thread::sleep(Duration::from_millis(1));
        }
    }
}

/// Takes every datagram delivered to `link` until nothing came for `quiet` (a lower bound on
/// the wait, never an upper one); returns their numbers, checking each is intact and new.
fn collect(link: &HostLink, from: u8, quiet: Duration) -> BTreeSet<u64> {
    collect_ids(link, from, quiet).into_keys().collect()
}

/// As [`collect`], with the session's id of each datagram.
fn collect_ids(link: &HostLink, from: u8, quiet: Duration) -> BTreeMap<u64, MessageId> {
    let mut seen = BTreeMap::new();
    let deadline = Instant::now() + WATCHDOG;
    while let Ok(event) = link.recv_timeout(quiet) {
        assert!(Instant::now() < deadline, "datagrams never stopped coming");
        if let Event::DatagramDelivered { stream, id, payload } = event {
            assert_eq!(stream, StreamId(3));
            let n = checked(from, &payload);
            assert!(seen.insert(n, id).is_none(), "datagram {n} delivered twice");
        }
    }
    seen
}

/// A session frame carrying a datagram, as a forger would write it.
fn forged_frame(sender: u64, receiver: u64, payload: &[u8]) -> Vec<u8> {
    let frame = Frame {
        sender: SessionId::new(sender).unwrap(),
        receiver: SessionId::new(receiver),
        body: FrameBody::Datagram(Data {
            stream: StreamId(3),
            id: MessageId(1_000_000),
            payload: payload.to_vec(),
        }),
    };
    let mut bytes = Vec::new();
    frame.encode(&mut bytes);
    bytes
}

/// The UDP envelope before a body (`host_link/udp.rs`).
fn envelope(sealed: bool, counter: u64) -> Vec<u8> {
    let mut bytes = b"PD\x01\x01".to_vec();
    bytes.extend_from_slice(&[u8::from(sealed), 0, 0, 0]);
    bytes.extend_from_slice(&counter.to_le_bytes());
    bytes
}

/// A UDP relay in front of the listener's socket that keeps what the dialer sent and can send
/// it again from the same address (a replay).
struct Tap {
    addr: SocketAddr,
    upstream: Arc<UdpSocket>,
    recorded: Arc<Mutex<Vec<Vec<u8>>>>,
    stopped: Arc<AtomicBool>,
}

impl Tap {
    fn start(target: SocketAddr) -> Self {
        let front = Arc::new(UdpSocket::bind("127.0.0.1:0").unwrap());
        let upstream = Arc::new(UdpSocket::bind("127.0.0.1:0").unwrap());
        upstream.connect(target).unwrap();
        for socket in [&front, &upstream] {
            socket.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
        }
        let recorded = Arc::new(Mutex::new(Vec::new()));
        let stopped = Arc::new(AtomicBool::new(false));
        let client = Arc::new(Mutex::new(None::<SocketAddr>));
        let (f, u, r, s, c) = (
            Arc::clone(&front),
            Arc::clone(&upstream),
            Arc::clone(&recorded),
            Arc::clone(&stopped),
            Arc::clone(&client),
        );
        thread::spawn(move || {
            let mut buf = vec![0u8; 65_536];
            while !s.load(Ordering::SeqCst) {
                let Ok((len, from)) = f.recv_from(&mut buf) else { continue };
                *c.lock().unwrap() = Some(from);
                r.lock().unwrap().push(buf[..len].to_vec());
                let _ = u.send(&buf[..len]);
            }
        });
        let (f, u, s) = (Arc::clone(&front), Arc::clone(&upstream), Arc::clone(&stopped));
        thread::spawn(move || {
            let mut buf = vec![0u8; 65_536];
            while !s.load(Ordering::SeqCst) {
                let Ok(len) = u.recv(&mut buf) else { continue };
                if let Some(to) = *client.lock().unwrap() {
                    let _ = f.send_to(&buf[..len], to);
                }
            }
        });
        Self { addr: front.local_addr().unwrap(), upstream, recorded, stopped }
    }

    fn recorded(&self) -> Vec<Vec<u8>> {
        self.recorded.lock().unwrap().clone()
    }

    /// Sends `datagram` to the target from the relay's address, as the dialer's would come.
    fn inject(&self, datagram: &[u8]) {
        self.upstream.send(datagram).unwrap();
    }
}

impl Drop for Tap {
    fn drop(&mut self) {
        self.stopped.store(true, Ordering::SeqCst);
    }
}

/// A TCP relay in front of the listener that can cut its connections (so the dialer makes a
/// new one, with a new datagram key).
struct CutRelay {
    addr: SocketAddr,
    connections: Arc<Mutex<Vec<TcpStream>>>,
}

impl CutRelay {
    fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let connections = Arc::new(Mutex::new(Vec::new()));
        let held = Arc::clone(&connections);
        thread::spawn(move || {
            for client in listener.incoming() {
                let (Ok(client), Ok(server)) = (client, TcpStream::connect(target)) else {
                    continue;
                };
                let mut held = held.lock().unwrap();
                held.push(client.try_clone().unwrap());
                held.push(server.try_clone().unwrap());
                let (c2, s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
                thread::spawn(move || pump(client, server));
                thread::spawn(move || pump(s2, c2));
            }
        });
        Self { addr, connections }
    }

    fn cut_now(&self) {
        for stream in self.connections.lock().unwrap().drain(..) {
            let _ = stream.shutdown(Shutdown::Both);
        }
    }
}

impl Drop for CutRelay {
    fn drop(&mut self) {
        self.cut_now();
    }
}

fn pump(mut from: TcpStream, mut to: TcpStream) {
    let _ = std::io::copy(&mut from, &mut to);
    let _ = to.shutdown(Shutdown::Write);
}

fn psk() -> LinkSecurity {
    LinkSecurity::PreSharedKey(PreSharedKey::new(b"a key both hosts were given").unwrap())
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

#[test]
fn datagrams_cross_a_plain_link_over_udp_both_ways_and_never_ride_the_connection() {
    with_watchdog(TEST_WATCHDOG, || {
        let pair = pair(&LinkSecurity::Plain, |tcp| tcp, |udp| udp);
        send_datagrams(&pair.dialing, 1, 100, 1000);
        let got = collect(&pair.listening, 1, QUIET);
        assert!(!got.is_empty() && got.iter().all(|&n| n < 100), "{got:?}");
        let dialer = pair.dialing.stats();
        assert!(dialer.datagrams_sent >= 100, "{dialer:?}");
        // 100 kB of datagrams went out; the connection carried a few small frames only.
        assert!(dialer.bytes_sent < 20_000, "datagrams rode the connection: {dialer:?}");

        // The listener answers where the dialer's datagrams (and probes) come from.
        let listener =
            wait_stats(&pair.listening, "the listener knows the dialer's address", |s| {
                s.datagram_peer.is_some()
            });
        assert_eq!(listener.datagrams_rejected, 0);
        send_datagrams(&pair.listening, 2, 100, 1000);
        let back = collect(&pair.dialing, 2, QUIET);
        assert!(!back.is_empty() && back.iter().all(|&n| n < 100), "{back:?}");
        assert!(pair.listening.stats().bytes_sent < 20_000);

        // Frames naming other sessions are dropped as stale, whoever sends them; numbered
        // beyond anything the dialer sent, they take no number from it (a plain number is not
        // authentic: only a taken datagram's counts).
        let forger = UdpSocket::bind("127.0.0.1:0").unwrap();
        let peer = pair.listening.stats().session.peer.unwrap().get();
        let ours = pair.listening.session_id().get();
        for (sender, receiver) in [(peer ^ 1, ours), (peer, ours ^ 1), (77, 0)] {
            let mut datagram = envelope(false, u64::MAX);
            datagram.extend(forged_frame(sender, receiver, &payload(1, 999, 50)));
            forger.send_to(&datagram, pair.datagrams).unwrap();
        }
        wait_stats(&pair.listening, "three stale frames", |s| s.session.stale_frames >= 3);
        assert!(collect(&pair.listening, 1, QUIET).is_empty());
        send_datagrams(&pair.dialing, 1, 20, 100);
        assert!(!collect(&pair.listening, 1, QUIET).is_empty());
    });
}

#[test]
fn through_a_lossy_proxy_no_datagram_arrives_twice_or_damaged_and_the_faults_are_counted() {
    with_watchdog(TEST_WATCHDOG, || {
        let faults = DatagramFaults {
            loss: 0.1,
            duplication: 0.1,
            corruption: 0.1,
            reordering: 0.05,
            delay: 0.05,
            delay_range: (Duration::from_millis(1), Duration::from_millis(10)),
            ..DatagramFaults::none()
        };
        for security in [LinkSecurity::Plain, psk()] {
            let mut proxy = None;
            let pair = pair(
                &security,
                |tcp| tcp,
                |udp| {
                    let started = DatagramProxy::start(udp, faults.clone(), 11).unwrap();
                    let addr = started.addr();
                    proxy = Some(started);
                    addr
                },
            );
            let proxy = proxy.unwrap();
            send_datagrams(&pair.dialing, 1, 400, 200);
            let got = collect_ids(&pair.listening, 1, QUIET);
            let counters = proxy.counters();
            assert!(counters.dropped > 0 && counters.duplicated > 0 && counters.corrupted > 0);
            assert!(got.len() < 400 && !got.is_empty(), "{} of 400 arrived", got.len());
            // Each datagram keeps its number in the stream (1, 2, …, in the order sent), so a
            // receiver counts exactly what it never got: here 400 less what arrived.
            assert!(got.iter().all(|(&n, &id)| n < 400 && id == MessageId(n + 1)), "{got:?}");
            let stats = pair.listening.stats();
            // Copies were suppressed by their numbers before the session (the UDP side's
            // window), damage caught by the crc32c (plain) or the key (sealed) before delivery.
            assert!(stats.datagrams_replayed > 0, "{security:?}: {stats:?}");
            let damaged = stats.session.corrupt_frames
                + stats.session.malformed_frames
                + stats.session.stale_frames
                + stats.datagrams_rejected;
            assert!(damaged > 0, "{security:?}: {stats:?}");
            assert_eq!(stats.session.state, LinkState::Open);
        }
    });
}

#[test]
fn a_sealed_link_rejects_forged_and_stale_datagrams_and_replays() {
    with_watchdog(TEST_WATCHDOG, || {
        let mut relay = None;
        let mut tap = None;
        let pair = pair(
            &psk(),
            |tcp| {
                let started = CutRelay::start(tcp);
                let addr = started.addr;
                relay = Some(started);
                addr
            },
            |udp| {
                let started = Tap::start(udp);
                let addr = started.addr;
                tap = Some(started);
                addr
            },
        );
        let (relay, tap) = (relay.unwrap(), tap.unwrap());
        send_datagrams(&pair.dialing, 1, 50, 300);
        let got = collect(&pair.listening, 1, QUIET);
        assert!(!got.is_empty());
        let recorded = tap.recorded();
        // Sealed: the path never sees a payload.
        let marker = &payload(1, 7, 300)[..40];
        assert!(recorded.iter().all(|d| !d.windows(marker.len()).any(|w| w == marker)));

        // Replayed: authentic, but numbered as datagrams taken before, so every one is
        // rejected before the session sees it.
        let before = pair.listening.stats();
        for datagram in &recorded {
            tap.inject(datagram);
        }
        let count = recorded.len() as u64;
        let after = wait_stats(&pair.listening, "the replays rejected", |s| {
            s.datagrams_rejected >= before.datagrams_rejected + count
                && s.datagrams_replayed >= before.datagrams_replayed + count
        });
        assert!(collect(&pair.listening, 1, QUIET).is_empty(), "a replay was delivered");
        assert_eq!(after.session.datagrams_dropped, before.session.datagrams_dropped);

        // Forged: plain on a sealed link, sealed with a made-up tag, or damaged: rejected.
        let peer = pair.listening.stats().session.peer.unwrap().get();
        let ours = pair.listening.session_id().get();
        let frame = forged_frame(peer, ours, &payload(1, 999, 50));
        let mut plain = envelope(false, 1);
        plain.extend_from_slice(&frame);
        let mut made_up = envelope(true, 1);
        made_up.extend_from_slice(&frame);
        made_up.extend_from_slice(&[0; 16]);
        let mut damaged = recorded.last().unwrap().clone();
        *damaged.last_mut().unwrap() ^= 0x20;
        for datagram in [plain, made_up, damaged] {
            tap.inject(&datagram);
        }
        let rejected = before.datagrams_rejected + 3;
        wait_stats(&pair.listening, "three rejections", |s| s.datagrams_rejected >= rejected);

        // A new connection has a new key: what was sealed for the old one is refused.
        relay.cut_now();
        wait_stats(&pair.listening, "a second link open", |s| {
            s.session.links_opened >= 2 && s.session.state == LinkState::Open
        });
        let before = pair.listening.stats();
        for datagram in &recorded {
            tap.inject(datagram);
        }
        wait_stats(&pair.listening, "the old datagrams refused", |s| {
            s.datagrams_rejected >= before.datagrams_rejected + count
        });
        assert!(collect(&pair.listening, 1, QUIET).is_empty());
        // And new datagrams still cross.
        send_datagrams(&pair.dialing, 1, 20, 300);
        assert!(!collect(&pair.listening, 1, QUIET).is_empty());
    });
}

#[test]
fn a_tls_link_seals_its_datagrams_with_a_key_from_the_handshake() {
    with_watchdog(TEST_WATCHDOG, || {
        let ca = Authority::new("test CA");
        let tls = |name: &str, peer: &str| {
            let identity = ca.issue(name);
            let config = TlsConfig::from_pem(
                identity.cert.as_bytes(),
                identity.key.as_bytes(),
                ca.pem().as_bytes(),
                peer,
            )
            .unwrap();
            LinkSecurity::Tls(config)
        };
        let (a, b) = (tls("a", "b"), tls("b", "a"));
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        let tap = Tap::start(socket.local_addr().unwrap());
        let tcp = listener.local_addr().unwrap();
        let listening = HostLink::listen_with_udp(listener, socket, config(), b).unwrap();
        let dialing = HostLink::dial_with_udp(tcp, tap.addr, config(), a).unwrap();
        for link in [&listening, &dialing] {
            wait_for(link, |e| matches!(e, Event::LinkOpen { .. }));
        }
        send_datagrams(&dialing, 1, 50, 300);
        assert!(!collect(&listening, 1, QUIET).is_empty());
        wait_stats(&listening, "the dialer's address", |s| s.datagram_peer.is_some());
        send_datagrams(&listening, 2, 50, 300);
        assert!(!collect(&dialing, 2, QUIET).is_empty());
        let marker = &payload(1, 7, 300)[..40];
        assert!(tap.recorded().iter().all(|d| !d.windows(marker.len()).any(|w| w == marker)));
        assert_eq!(listening.stats().datagrams_rejected, 0);
    });
}

/// Review of the datagram ports (finding 1): every plain UDP frame went to the session whole,
/// and the session handles a hello before it checks the session ids. One datagram from anybody
/// who knows the listener's UDP address, a hello from a made-up sender naming no receiver,
/// restarted the peer: every channel dropped, the real peer locked out until `dead_after`.
#[test]
fn an_off_path_hello_over_udp_does_not_restart_the_peer() {
    with_watchdog(TEST_WATCHDOG, || {
        let pair = pair(&LinkSecurity::Plain, |tcp| tcp, |udp| udp);
        let peer = pair.listening.stats().session.peer;
        assert!(peer.is_some());
        let hello = Frame {
            sender: SessionId::new(0x5eed_5eed).unwrap(),
            receiver: None,
            body: FrameBody::Hello(Hello {
                reply_wanted: true,
                link: 1,
                echo: 0,
                first: StreamId(0),
                last: StreamId(0),
                delivered: Vec::new(),
            }),
        };
        let mut datagram = envelope(false, 1);
        hello.encode(&mut datagram);
        let stranger = UdpSocket::bind("127.0.0.1:0").unwrap();
        stranger.send_to(&datagram, pair.datagrams).unwrap();
        thread::sleep(Duration::from_millis(300));

        let stats = pair.listening.stats();
        assert_eq!(stats.session.peer, peer, "{stats:?}");
        assert_eq!(stats.session.state, LinkState::Open);
        while let Ok(event) = pair.listening.try_recv() {
            assert!(!matches!(event, Event::PeerRestarted { .. }), "{event:?}");
        }
        wait_stats(&pair.listening, "the hello rejected", |s| s.datagrams_rejected >= 1);
        // The link goes on: datagrams still cross.
        send_datagrams(&pair.dialing, 1, 20, 100);
        assert!(!collect(&pair.listening, 1, QUIET).is_empty());
    });
}

/// Review of the datagram ports (finding 2): the listener sent its datagrams wherever the
/// latest authentic datagram came from, and a replayed one is authentic. Anyone who saw one
/// sealed probe could replay it from another address and have the listener's datagrams sent
/// there (lost for the dialer, and a reflection at a victim).
#[test]
fn a_replayed_sealed_datagram_does_not_move_the_listeners_peer_address() {
    with_watchdog(TEST_WATCHDOG, || {
        let mut tap = None;
        let pair = pair(
            &psk(),
            |tcp| tcp,
            |udp| {
                let started = Tap::start(udp);
                let addr = started.addr;
                tap = Some(started);
                addr
            },
        );
        let tap = tap.unwrap();
        let heard =
            wait_stats(&pair.listening, "the dialer's address", |s| s.datagram_peer.is_some());
        let first = tap.recorded()[0].clone();
        let victim = UdpSocket::bind("127.0.0.1:0").unwrap();
        victim.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
        let before = pair.listening.stats();
        let mut reflected = 0;
        let mut buf = vec![0u8; 65_536];
        for round in 0..20u64 {
            victim.send_to(&first, pair.datagrams).unwrap();
            thread::sleep(Duration::from_millis(5));
            for n in 0..5 {
                // Numbered apart from the datagrams sent below; a full queue loses one, fine.
                let _ = pair
                    .listening
                    .send_datagram(StreamId(3), payload(2, 1000 + round * 5 + n, 100));
            }
            while victim.recv_from(&mut buf).is_ok() {
                reflected += 1;
            }
        }
        assert_eq!(reflected, 0, "the listener sent {reflected} datagrams to the replayer");
        let after = wait_stats(&pair.listening, "the replays rejected", |s| {
            s.datagrams_replayed >= before.datagrams_replayed + 20
        });
        assert_eq!(after.datagram_peer, heard.datagram_peer);
        // The dialer still gets the listener's datagrams.
        send_datagrams(&pair.listening, 2, 20, 100);
        assert!(!collect(&pair.dialing, 2, QUIET).is_empty());
    });
}

/// How long no datagram must arrive before a collection ends (a lower bound only).
const QUIET: Duration = Duration::from_millis(300);
const WATCHDOG: Duration = Duration::from_secs(20);
const TEST_WATCHDOG: Duration = Duration::from_secs(60);
