//! Datagram ports across hosts (docs/network.md §13): two daemons linked over TCP, whose
//! datagrams go over UDP through `postbox_test::DatagramProxy` (loss, duplication, corruption,
//! reordering, delay, and a partition in the middle of the flood).
//!
//! A node on host a floods a datagram port on host b: its sends never block for good and never
//! fail; the port gets a subset, each message once, in the sender's order, and every message it
//! did not get is counted in the `lost` of the next one it did. A reliable port on the same link
//! gets everything, once and in order. Calls and confirmed sends to the datagram port fail with
//! a typed error on host a, and work as ever on host b.
//!
//! No privileges needed. The test process itself is the node on each host.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::{Duration, Instant};

use postbox::{CallError, Delivery, Port, RecvTimeoutError, SendError, SendTimeoutError};
use postbox_test::{DatagramCounters, DatagramFaults, DatagramProxy};

use crate::util::{
    connect_remote, free_port, free_udp_port, stderr_of, stdout_of, Daemon, WATCHDOG,
};

/// Host b listens for a (TCP) and takes a's datagrams on a UDP port of its own; a dials b and
/// sends its datagrams through the proxy in front of that port.
struct DatagramPair {
    a: Daemon,
    b: Daemon,
    proxy: DatagramProxy,
    _dir: tempfile::TempDir,
}

impl DatagramPair {
    fn start(faults: DatagramFaults) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let tcp = free_port();
        let udp: SocketAddr = format!("127.0.0.1:{}", free_udp_port()).parse().unwrap();
        let proxy = DatagramProxy::start(udp, faults, 7).unwrap();
        let write = |name: &str, text: String| {
            let path = dir.path().join(name);
            std::fs::write(&path, text).unwrap();
            path.to_str().unwrap().to_owned()
        };
        let timers = "heartbeat_interval_ms = 200\nmissed_heartbeats = 5\n";
        let b_hosts = write(
            "b.toml",
            format!(
                "name = 'b'\n{timers}[peers]\n\
                 a = {{ listen = '127.0.0.1:{tcp}', datagram = '{udp}' }}\n"
            ),
        );
        let a_hosts = write(
            "a.toml",
            format!(
                "name = 'a'\n{timers}[peers]\n\
                 b = {{ dial = '127.0.0.1:{tcp}', datagram = '{}' }}\n",
                proxy.addr()
            ),
        );
        let policy = write(
            "policy.toml",
            "[[allow]]\nnames = ['telemetry', 'reliable']\nhosts = ['a']\n\
             operations = ['send', 'call']\n"
                .to_owned(),
        );
        let b = Daemon::start_with(&["--hosts", &b_hosts, "--config", &policy]);
        let a = Daemon::start_with(&["--hosts", &a_hosts]);
        Self { a, b, proxy, _dir: dir }
    }
}

/// What a port received: each message's number and the `lost` it came with.
type Received = Vec<(u64, u64)>;

/// Receives numbered messages on `port`: `expected` of them, or (without) until nothing came
/// for `quiet` after `done` fired (a lower bound on the wait only; the queue is then empty).
fn receive(
    port: Port,
    done: mpsc::Receiver<()>,
    expected: Option<usize>,
    quiet: Duration,
) -> thread::JoinHandle<Received> {
    thread::spawn(move || {
        let mut got = Vec::new();
        let mut finished: Option<Instant> = None;
        let deadline = Instant::now() + WATCHDOG;
        while expected.is_none_or(|n| got.len() < n) {
            assert!(Instant::now() < deadline, "{} of {expected:?} arrived", got.len());
            if finished.is_none() && done.try_recv().is_ok() {
                finished = Some(Instant::now());
            }
            match port.recv_timeout(Duration::from_millis(20)) {
                Ok(envelope) => {
                    let text = String::from_utf8_lossy(envelope.body()).into_owned();
                    let number = text[..8].parse::<u64>().unwrap_or_else(|_| panic!("{text:?}"));
                    assert_eq!(text, body(number), "message {number} arrived damaged");
                    got.push((number, envelope.lost()));
                    finished = finished.map(|_| Instant::now());
                }
                Err(RecvTimeoutError::Timeout) => {
                    let quiet_now = finished.is_some_and(|since| since.elapsed() >= quiet);
                    if expected.is_none() && quiet_now {
                        break;
                    }
                }
                Err(_) => break,
            }
        }
        got
    })
}

/// Message `n`: its number, then a filler that shows damage.
fn body(n: u64) -> String {
    let mut text = format!("{n:08}");
    while text.len() < 100 {
        text.push(char::from(b'a' + ((text.len() as u64 + n) % 26) as u8));
    }
    text
}

#[test]
fn a_flood_to_a_datagram_port_never_blocks_and_arrives_as_a_counted_subset_once_in_order() {
    let faults = DatagramFaults {
        loss: 0.1,
        duplication: 0.05,
        corruption: 0.02,
        reordering: 0.05,
        delay: 0.05,
        delay_range: (Duration::from_millis(1), Duration::from_millis(10)),
        ..DatagramFaults::none()
    };
    const FLOOD: u64 = 3000;
    const RELIABLE: u64 = 300;
    let pair = DatagramPair::start(faults);
    let b_node = pair.b.node();
    let telemetry = b_node.port("telemetry").datagrams().open().unwrap();
    let reliable = b_node.port("reliable").open().unwrap();
    let a_node = pair.a.node();
    let to_telemetry = connect_remote(&a_node, "telemetry@b");
    let to_reliable = connect_remote(&a_node, "reliable@b");
    assert_eq!(to_telemetry.spec().delivery, Delivery::Datagrams);
    assert_eq!(to_reliable.spec().delivery, Delivery::Reliable);

    let (telemetry_done, telemetry_end) = mpsc::channel();
    let (reliable_done, reliable_end) = mpsc::channel();
    let quiet = Duration::from_millis(500);
    let telemetry_seen = receive(telemetry, telemetry_end, None, quiet);
    let reliable_seen = receive(reliable, reliable_end, Some(RELIABLE as usize), quiet);

    // The flood, with every datagram black-holed for its middle third: the sender must not
    // notice. A watchdog, not a time bound, catches a send that never returns.
    let sent = Arc::new(AtomicU64::new(0));
    // The flooding thread asks for the partition and for its end, and waits for each.
    let (ask, asked) = mpsc::channel::<mpsc::Sender<()>>();
    let progress = Arc::clone(&sent);
    let flood = thread::spawn(move || {
        for n in 0..FLOOD {
            if n == FLOOD / 3 || n == 2 * FLOOD / 3 {
                let (done, wait) = mpsc::channel();
                ask.send(done).unwrap();
                wait.recv().unwrap();
            }
            to_telemetry.send(body(n).as_str()).expect("a datagram send never fails");
            if n % 10 == 0 && n / 10 < RELIABLE {
                to_reliable.send(body(n / 10).as_str()).unwrap();
            }
            progress.store(n + 1, Ordering::SeqCst);
        }
    });
    let watchdog = |what: &str| {
        asked.recv_timeout(WATCHDOG).unwrap_or_else(|_| {
            panic!("{what}: a send blocked ({} sent)", sent.load(Ordering::SeqCst))
        })
    };
    let partitioned = watchdog("before the partition");
    pair.proxy.partition();
    partitioned.send(()).unwrap();
    let healed = watchdog("during the partition");
    // Some datagrams of the middle third met the partition (the gateway sends them soon).
    let deadline = Instant::now() + WATCHDOG;
    while pair.proxy.counters().black_holed == 0 {
        assert!(Instant::now() < deadline, "no datagram met the partition");
        thread::sleep(Duration::from_millis(1));
    }
    pair.proxy.heal();
    healed.send(()).unwrap();
    let deadline = Instant::now() + WATCHDOG;
    while !flood.is_finished() {
        assert!(Instant::now() < deadline, "a send blocked: {} sent", sent.load(Ordering::SeqCst));
        thread::sleep(Duration::from_millis(5));
    }
    flood.join().expect("the flooding thread failed");
    telemetry_done.send(()).unwrap();
    // The reliable receiver may have all it expects, and be gone.
    let _ = reliable_done.send(());
    let got = telemetry_seen.join().unwrap();
    let all = reliable_seen.join().unwrap();

    // The reliable port on the same link: everything, once, in order, nothing lost.
    let numbers: Vec<u64> = all.iter().map(|&(n, _)| n).collect();
    assert_eq!(numbers, (0..RELIABLE).collect::<Vec<_>>());
    assert!(all.iter().all(|&(_, lost)| lost == 0));

    // The datagram port: a subset, in the sender's order (so never twice), and every message
    // it did not get is counted: in total exactly, and each count no later than with the first
    // message taken after the loss was noticed (a message behind the gap; the port hands the
    // count out with the next message taken, which may be one queued before it).
    let counters: DatagramCounters = pair.proxy.counters();
    assert!(counters.black_holed > 0 && counters.dropped > 0, "{counters:?}");
    assert!(!got.is_empty(), "nothing arrived");
    assert!((got.len() as u64) < FLOOD, "all {FLOOD} arrived through the faults");
    let mut lost_so_far = 0;
    for (index, &(number, lost)) in got.iter().enumerate() {
        assert!(number < FLOOD);
        if index > 0 {
            assert!(number > got[index - 1].0, "out of order or twice: {number}");
        }
        lost_so_far += lost;
        let skipped = number - index as u64;
        assert!(lost_so_far >= skipped, "{skipped} lost before {number}, {lost_so_far} told");
    }
    let (last, _) = got[got.len() - 1];
    assert_eq!(lost_so_far, last + 1 - got.len() as u64, "every loss before {last} is counted");
    assert!(lost_so_far > 0);
    // The host status shows the losses too, and the link never broke.
    let hosts = b_node.hosts().unwrap();
    assert!(hosts[0].datagrams_lost > 0, "{hosts:?}");
    assert_eq!(hosts[0].sessions, 1, "{hosts:?}");
}

#[test]
fn calls_and_confirmed_sends_to_a_remote_datagram_port_fail_with_a_typed_error() {
    let pair = DatagramPair::start(DatagramFaults::none());
    let b_node = pair.b.node();
    let telemetry = b_node.port("telemetry").datagrams().open().unwrap();
    let server = thread::spawn(move || {
        // Answers calls of local clients; a remote client's one-way message ends it.
        loop {
            let envelope = telemetry.recv_timeout(WATCHDOG).expect("a message");
            if envelope.is_call() {
                let body = envelope.body().to_vec();
                envelope.reply(body).unwrap();
            } else {
                return String::from_utf8_lossy(envelope.body()).into_owned();
            }
        }
    });
    // On host b nothing changes: a local client calls and confirms as ever.
    let local = b_node.connect("telemetry").unwrap();
    assert_eq!(local.spec().delivery, Delivery::Reliable);
    assert_eq!(local.call_timeout("local call", WATCHDOG).unwrap().body(), b"local call");

    let a_node = pair.a.node();
    let remote = connect_remote(&a_node, "telemetry@b");
    assert_eq!(remote.spec().message_size, Some(postbox::MAX_DATAGRAM_MESSAGE));
    assert_eq!(remote.call("hi"), Err(CallError::DatagramsOnly("hi".into())));
    assert_eq!(remote.send_confirmed("hi"), Err(SendError::DatagramsOnly("hi".into())));
    assert_eq!(
        remote.send_confirmed_timeout("hi", WATCHDOG),
        Err(SendTimeoutError::DatagramsOnly("hi".into()))
    );
    let large = vec![b'x'; postbox::MAX_DATAGRAM_MESSAGE as usize + 1];
    assert!(matches!(remote.send(large), Err(SendError::TooLarge { .. })));
    // The CLI says so too.
    let call = pair.a.postbox(&["call", "telemetry@b", "x"]);
    assert!(!call.status.success());
    assert!(stderr_of(&call).contains("best-effort datagrams"), "{}", stderr_of(&call));
    remote.send("one way").unwrap();
    assert_eq!(server.join().unwrap(), "one way");

    // A rendezvous port cannot ask for datagrams; `stat` shows a port's mark.
    let rendezvous = b_node.port("meet").capacity(0).datagrams().open();
    assert!(matches!(rendezvous, Err(postbox::OpenError::Refused(_))), "{rendezvous:?}");
    let _port = b_node.port("stats").datagrams().open().unwrap();
    let stat = pair.b.postbox(&["stat", "stats"]);
    assert!(stdout_of(&stat).contains("datagrams from other hosts"), "{}", stdout_of(&stat));
}

#[test]
fn over_a_quic_link_a_datagram_port_takes_quic_datagrams_of_the_largest_size() {
    use crate::util::{free_udp_port, tls_hosts_file};
    let dir = tempfile::tempdir().unwrap();
    let ca = postbox_test::Authority::new("postbox test CA");
    let port = free_udp_port();
    let policy = dir.path().join("policy.toml");
    std::fs::write(
        &policy,
        "[[allow]]\nnames = ['telemetry']\nhosts = ['a']\noperations = ['send']\n",
    )
    .unwrap();
    let b_peer = format!("a = {{ listen = '127.0.0.1:{port}', transport = 'quic' }}");
    let b_hosts = tls_hosts_file(dir.path(), "b", &ca.issue("b"), &ca, &b_peer);
    let b = Daemon::start_with(&["--hosts", &b_hosts, "--config", policy.to_str().unwrap()]);
    let a_peer = format!("b = {{ dial = '127.0.0.1:{port}', transport = 'quic' }}");
    let a_hosts = tls_hosts_file(dir.path(), "a", &ca.issue("a"), &ca, &a_peer);
    let a = Daemon::start_with(&["--hosts", &a_hosts]);

    let b_node = b.node();
    let telemetry = b_node.port("telemetry").datagrams().open().unwrap();
    let a_node = a.node();
    let remote = connect_remote(&a_node, "telemetry@b");
    assert_eq!(remote.spec().delivery, Delivery::Datagrams);
    // Two of these fill a datagram to the byte; the largest goes alone. Were a datagram too
    // large for QUIC, it would be lost and the last one would never come (the watchdog).
    for (n, len) in [(0u64, 509usize), (1, 509), (2, 1024), (3, 509), (4, 509)] {
        let mut text = format!("{n:08}");
        text.push_str(&"q".repeat(len - 8));
        remote.send(text.as_str()).unwrap();
    }
    // Loopback loses nothing: every one arrives, in order, none counted lost on either host.
    let mut got = Vec::new();
    while got.len() < 5 {
        let envelope = telemetry.recv_timeout(WATCHDOG).expect("the datagrams crossed");
        let number: u64 = String::from_utf8_lossy(&envelope.body()[..8]).parse().unwrap();
        got.push((number, envelope.lost()));
    }
    assert_eq!(got, (0..5).map(|n| (n, 0)).collect::<Vec<_>>());
    assert_eq!(telemetry.stats().lost, 0);
    let hosts = a_node.hosts().unwrap();
    assert_eq!(hosts[0].datagrams_lost, 0, "{hosts:?}");
    let hosts = b_node.hosts().unwrap();
    assert_eq!(hosts[0].datagrams_lost, 0, "{hosts:?}");
}
