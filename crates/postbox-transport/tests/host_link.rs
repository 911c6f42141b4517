//! Host links over real TCP through a fault-injecting proxy: exactly-once, in-order delivery
//! under loss, duplication, corruption, reordering, delay and cuts; partitions that end in
//! `PeerDead` / `Unreachable`; a restarted peer; a polite close.
//!
//! Every wait is bounded by a generous watchdog, never by a timing assertion: on a loaded
//! machine a run is slower, not wrong.

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use postbox_test::{FaultProxy, Faults};
use postbox_transport::host_link::{
    Event, HostLink, HostLinkConfig, MessageId, RecvError, SendError, SessionConfig, SessionError,
    SessionId, StreamId,
};

#[path = "support/watchdog.rs"]
mod watchdog;
use watchdog::with_watchdog;

// ---------------------------------------------------------------------------------------------
// Harness
// ---------------------------------------------------------------------------------------------

/// A link configuration with a heartbeat of `heartbeat` × `misses` and quick reconnects.
fn config(heartbeat: Duration, misses: u32) -> HostLinkConfig {
    HostLinkConfig {
        session: SessionConfig {
            heartbeat_interval: heartbeat,
            missed_heartbeats: misses,
            initial_rto: Duration::from_millis(100),
            min_rto: Duration::from_millis(20),
            max_rto: Duration::from_millis(500),
            stream_window: 64,
            max_payload: 4096,
            ..SessionConfig::default()
        },
        connect_timeout: Duration::from_secs(1),
        reconnect_min: Duration::from_millis(10),
        reconnect_max: Duration::from_millis(200),
        stall_timeout: Duration::from_secs(1),
    }
}

/// A listening link, a proxy in front of it, and a link dialing the proxy.
fn linked_pair(
    faults: Faults,
    seed: u64,
    config: &HostLinkConfig,
) -> (HostLink, HostLink, FaultProxy) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let proxy = FaultProxy::start(listener.local_addr().unwrap(), faults, seed).unwrap();
    let listening = HostLink::listen(listener, config.clone()).unwrap();
    let dialing = HostLink::dial(proxy.addr(), config.clone()).unwrap();
    (listening, dialing, proxy)
}

/// The next event, failing the test after a generous silence.
fn next_event(link: &HostLink) -> Event {
    link.recv_timeout(EVENT_WATCHDOG).unwrap_or_else(|e| panic!("no event: {e}"))
}

/// Receives until `wanted` returns a value; every other event goes to `other`.
fn recv_until<T>(
    link: &HostLink,
    mut wanted: impl FnMut(&Event) -> Option<T>,
    mut other: impl FnMut(Event),
) -> T {
    loop {
        let event = next_event(link);
        match wanted(&event) {
            Some(out) => return out,
            None => other(event),
        }
    }
}

/// A local address where nobody listens: bound, then released (the kernel does not hand a
/// released ephemeral port out again at once).
fn closed_port() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap()
}

fn wait_open(link: &HostLink) -> SessionId {
    recv_until(
        link,
        |e| match e {
            Event::LinkOpen { peer } => Some(*peer),
            _ => None,
        },
        |e| panic!("unexpected before the link opened: {e:?}"),
    )
}

/// Receives until the link's `Ended` event, and returns its reason.
fn wait_end(link: &HostLink, other: impl FnMut(Event)) -> SessionError {
    let ended = |e: &Event| match e {
        Event::Ended(error) => Some(*error),
        _ => None,
    };
    recv_until(link, ended, other)
}

/// Message `id` on `stream` from the side tagged `from`: its identity, then filler of a varying
/// length, so that a mix-up or damage shows.
fn payload(from: u8, stream: u32, id: u64) -> Vec<u8> {
    let mut out = vec![from];
    out.extend_from_slice(&stream.to_le_bytes());
    out.extend_from_slice(&id.to_le_bytes());
    let filler = ((id * 37 + u64::from(stream) * 11) % 300) as usize;
    out.resize(out.len() + filler, (id as u8) ^ from);
    out
}

// ---------------------------------------------------------------------------------------------
// Exactly once through faults
// ---------------------------------------------------------------------------------------------

const STREAMS: u32 = 4;
/// Messages per stream and direction: 4 × 500 × 2 = 4000 in all.
const PER_STREAM: u64 = 500;
/// The sender's pause after each round over the streams, so the run spans several cuts.
const PACE: Duration = Duration::from_millis(6);

/// What one side saw of the run.
#[derive(Debug, Default)]
struct Seen {
    delivered: u64,
    links_opened: u64,
}

/// Sends `PER_STREAM` messages per stream, paced; checks the returned ids. Halfway, waits
/// until `midway` says to go on.
fn send_all(link: &HostLink, tag: u8, midway: &dyn Fn() -> bool) {
    for id in 1..=PER_STREAM {
        if id == PER_STREAM / 2 {
            // The cuts come from the proxy's clock: on a loaded machine the links may be down
            // (after corruption) each time it strikes, so the run waits for one that landed.
            while !midway() {
                thread::sleep(Duration::from_millis(20));
            }
        }
        for stream in 0..STREAMS {
            let sent = link.send(StreamId(stream), payload(tag, stream, id));
            assert_eq!(sent, Ok(MessageId(id)), "ids are consecutive per stream");
        }
        thread::sleep(PACE);
    }
}

/// Receives until everything from the peer arrived (exactly once, in order per stream,
/// intact) and everything sent was acknowledged. Any failure or end fails the test.
fn receive_all(link: &HostLink, peer_tag: u8) -> Seen {
    let mut next: BTreeMap<u32, u64> = (0..STREAMS).map(|s| (s, 1)).collect();
    let mut acked: BTreeMap<u32, u64> = (0..STREAMS).map(|s| (s, 0)).collect();
    let mut seen = Seen::default();
    let done = |next: &BTreeMap<u32, u64>, acked: &BTreeMap<u32, u64>| {
        next.values().all(|&n| n == PER_STREAM + 1) && acked.values().all(|&a| a == PER_STREAM)
    };
    while !done(&next, &acked) {
        match next_event(link) {
            Event::Delivered { stream, id, payload: bytes } => {
                let expected = next.get_mut(&stream.0).expect("a stream this test uses");
                assert_eq!(id, MessageId(*expected), "in order, no gap, no duplicate");
                assert_eq!(bytes, payload(peer_tag, stream.0, id.0), "intact payload");
                *expected += 1;
                seen.delivered += 1;
            }
            Event::Acked { stream, through } => {
                let entry = acked.get_mut(&stream.0).expect("a stream this test uses");
                assert!(through.0 >= *entry, "acks never go back");
                *entry = through.0;
            }
            Event::LinkOpen { .. } => seen.links_opened += 1,
            other => panic!("unexpected event under faults: {other:?}"),
        }
    }
    seen
}

#[test]
fn every_message_arrives_exactly_once_in_order_through_loss_duplication_corruption_and_cuts() {
    with_watchdog(Duration::from_secs(120), || {
        let faults = Faults {
            cut_every: Some((Duration::from_millis(800), Duration::from_millis(1600))),
            ..Faults::harsh()
        };
        let config = config(Duration::from_millis(100), 20);
        let (listening, dialing, proxy) = linked_pair(faults, 0x5eed, &config);
        let (listening, dialing, proxy) = (Arc::new(listening), Arc::new(dialing), Arc::new(proxy));
        let start = Instant::now();
        let mut threads = Vec::new();
        for (link, tag, peer_tag) in [(&listening, b'L', b'D'), (&dialing, b'D', b'L')] {
            let sender = Arc::clone(link);
            let proxy = Arc::clone(&proxy);
            threads.push(thread::spawn(move || {
                // Messages in flight both ways when a cut lands: half sent, half to come.
                send_all(&sender, tag, &|| proxy.counters().injected_cuts > 0);
                Seen::default()
            }));
            let receiver = Arc::clone(link);
            threads.push(thread::spawn(move || receive_all(&receiver, peer_tag)));
        }
        let seen: Vec<Seen> = threads.into_iter().map(|t| t.join().unwrap()).collect();
        let elapsed = start.elapsed();

        let delivered: u64 = seen.iter().map(|s| s.delivered).sum();
        assert_eq!(delivered, 2 * u64::from(STREAMS) * PER_STREAM);
        let counters = proxy.counters();
        let stats = [listening.stats(), dialing.stats()];
        eprintln!("{delivered} messages in {elapsed:?}; proxy {counters:#?}");
        eprintln!("listening {:#?}\ndialing {:#?}", stats[0], stats[1]);
        // The faults happened, and the sessions worked around them.
        assert!(counters.dropped > 0, "{counters:?}");
        assert!(counters.duplicated > 0, "{counters:?}");
        assert!(counters.corrupted() > 0, "{counters:?}");
        assert!(counters.reordered > 0, "{counters:?}");
        assert!(counters.delayed > 0, "{counters:?}");
        assert!(counters.injected_cuts > 0, "{counters:?}");
        assert!(stats.iter().all(|s| s.session.links_opened >= 2), "reconnected after cuts");
        assert!(stats.iter().any(|s| s.session.retransmissions > 0));
        assert!(stats.iter().any(|s| s.session.duplicates_dropped > 0));
        assert!(seen.iter().any(|s| s.links_opened >= 2));
        listening.close();
        dialing.close();
    });
}

// ---------------------------------------------------------------------------------------------
// Partitions, restarts, close
// ---------------------------------------------------------------------------------------------

#[test]
fn a_partition_ends_both_sides_with_peer_dead_or_unreachable_and_fails_pending_messages() {
    with_watchdog(Duration::from_secs(30), || {
        let config = config(Duration::from_millis(50), 4);
        let (listening, dialing, proxy) = linked_pair(Faults::none(), 1, &config);
        wait_open(&listening);
        wait_open(&dialing);

        proxy.partition();
        let partitioned_at = Instant::now();
        let pending: Vec<Vec<u8>> = (1..=3).map(|id| payload(b'D', 7, id)).collect();
        for bytes in &pending {
            dialing.send(StreamId(7), bytes.clone()).unwrap();
        }
        let mut failed = Vec::new();
        let dialing_end = wait_end(&dialing, |e| match e {
            Event::Failed { payload, error, .. } => failed.push((payload, error)),
            other => panic!("unexpected during a partition: {other:?}"),
        });
        let listening_end =
            wait_end(&listening, |e| panic!("unexpected during a partition: {e:?}"));
        eprintln!("both ends gave up {:?} after the partition began", partitioned_at.elapsed());

        for end in [dialing_end, listening_end] {
            assert!(matches!(end, SessionError::PeerDead | SessionError::Unreachable), "{end:?}");
        }
        let failed_payloads: Vec<Vec<u8>> = failed.iter().map(|(p, _)| p.clone()).collect();
        assert_eq!(failed_payloads, pending, "every pending message fails with its payload");
        assert!(failed.iter().all(|(_, error)| *error == dialing_end));
        // The end is final: sends hand the payload back, receives report the end.
        let refused = dialing.send(StreamId(7), b"late".to_vec());
        assert_eq!(refused, Err(SendError::Ended(b"late".to_vec(), dialing_end)));
        assert_eq!(dialing.recv(), Err(RecvError));
        assert_eq!(listening.recv(), Err(RecvError));
        assert!(proxy.counters().black_holed > 0);
    });
}

#[test]
fn a_restarted_peer_is_reported_and_messages_it_never_acknowledged_fail_with_their_payload() {
    with_watchdog(Duration::from_secs(30), || {
        // A long heartbeat bound: the survivor must see a restart, not a dead peer.
        let config = config(Duration::from_millis(100), 30);
        let (survivor, crashing, proxy) = linked_pair(Faults::none(), 2, &config);
        let first = crashing.session_id();
        assert_eq!(wait_open(&survivor), first);
        wait_open(&crashing);
        for id in 1..=5 {
            survivor.send(StreamId(2), payload(b'S', 2, id)).unwrap();
        }
        recv_until(
            &survivor,
            |e| match e {
                Event::Acked { through, .. } if *through == MessageId(5) => Some(()),
                _ => None,
            },
            |_| {},
        );

        // These stay unacknowledged: the partition swallows them, then their receiver dies.
        proxy.partition();
        let pending: Vec<Vec<u8>> = (6..=15).map(|id| payload(b'S', 2, id)).collect();
        for bytes in &pending {
            survivor.send(StreamId(2), bytes.clone()).unwrap();
        }
        drop(crashing);
        proxy.heal();
        let restarted = HostLink::dial(proxy.addr(), config.clone()).unwrap();
        let second = restarted.session_id();
        assert_ne!(first, second);

        let mut failed = Vec::new();
        let (previous, current) = recv_until(
            &survivor,
            |e| match e {
                Event::PeerRestarted { previous, current } => Some((*previous, *current)),
                _ => None,
            },
            |e| match e {
                Event::Failed { payload, error, .. } => {
                    assert_eq!(error, SessionError::PeerRestarted);
                    failed.push(payload);
                }
                other => panic!("unexpected before the restart: {other:?}"),
            },
        );
        assert_eq!((previous, current), (first, second));
        assert_eq!(failed, pending, "every unacknowledged message fails with its payload");

        // The streams start over with the new incarnation.
        assert_eq!(wait_open(&survivor), second);
        assert_eq!(survivor.send(StreamId(2), b"again".to_vec()), Ok(MessageId(1)));
        let delivered = recv_until(
            &restarted,
            |e| match e {
                Event::Delivered { stream, id, payload } => Some((*stream, *id, payload.clone())),
                _ => None,
            },
            |_| {},
        );
        assert_eq!(delivered, (StreamId(2), MessageId(1), b"again".to_vec()));
    });
}

#[test]
fn close_tells_the_peer_which_ends_with_peer_closed() {
    with_watchdog(Duration::from_secs(30), || {
        let config = config(Duration::from_millis(100), 30);
        let (listening, dialing, _proxy) = linked_pair(Faults::none(), 3, &config);
        wait_open(&listening);
        wait_open(&dialing);
        dialing.close();
        let end = wait_end(&listening, |e| panic!("unexpected before the close: {e:?}"));
        assert_eq!(end, SessionError::PeerClosed);
        assert_eq!(dialing.recv(), Ok(Event::Ended(SessionError::Closed)));
        assert_eq!(dialing.recv(), Err(RecvError));
        assert_eq!(
            dialing.try_send(StreamId(1), b"x".to_vec()),
            Err(SendError::Ended(b"x".to_vec(), SessionError::Closed))
        );
    });
}

#[test]
fn close_fails_pending_messages_with_their_payload() {
    with_watchdog(Duration::from_secs(30), || {
        // Nobody listens there, and the bound is long: the message stays pending until close.
        let link = HostLink::dial(closed_port(), config(Duration::from_secs(1), 30)).unwrap();
        assert_eq!(link.send(StreamId(4), b"pending".to_vec()), Ok(MessageId(1)));
        link.close();
        let events: Vec<Event> = std::iter::from_fn(|| link.recv().ok()).collect();
        assert_eq!(
            events,
            [
                Event::Failed {
                    stream: StreamId(4),
                    id: MessageId(1),
                    payload: b"pending".to_vec(),
                    error: SessionError::Closed,
                },
                Event::Ended(SessionError::Closed),
            ]
        );
    });
}

#[test]
fn dialing_an_address_where_nobody_listens_ends_unreachable_instead_of_hanging() {
    with_watchdog(Duration::from_secs(30), || {
        let link = HostLink::dial(closed_port(), config(Duration::from_millis(50), 4)).unwrap();
        let pending = link.send(StreamId(3), b"nowhere".to_vec());
        assert_eq!(pending, Ok(MessageId(1)));
        let events: Vec<Event> = std::iter::from_fn(|| link.recv().ok()).collect();
        assert_eq!(
            events,
            [
                Event::Failed {
                    stream: StreamId(3),
                    id: MessageId(1),
                    payload: b"nowhere".to_vec(),
                    error: SessionError::Unreachable,
                },
                Event::Ended(SessionError::Unreachable),
            ]
        );
        let stats = link.stats();
        assert!(stats.connect_failures > 0, "{stats:?}");
        assert_eq!(stats.connections, 0);
    });
}

/// The longest a test waits for any single event before it calls the run hung.
const EVENT_WATCHDOG: Duration = Duration::from_secs(20);
