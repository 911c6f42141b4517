//! Across hosts, regressions from the review of branch remote-names (each test's comment says
//! what went wrong before): two embedded brokers in this process, `a` dials `b` over loopback
//! TCP; or `a` and a hostile peer that speaks the host protocol by hand.

use std::net::SocketAddr;
use std::os::unix::fs::MetadataExt;
use std::time::{Duration, Instant};

use postbox::{Broker, ConnectError, Delivery, Node, Port, ProcessId, SendError};
use postbox_broker::{HostsConfig, Policy};
use postbox_core::wire::control::MAX_CONTROL_LEN;
use postbox_core::{
    ControlMessage, FrameDecoder, FrameHeader, FrameKind, Placement, PortName, PortSpec, Rights,
    Target,
};
use postbox_test::free_port;
use postbox_transport::host_link::{Event, HostLink, HostLinkConfig, StreamId};
use postbox_transport::{ControlSocket, Link, LinkSide, TransportError, Wait};

const WATCHDOG: Duration = Duration::from_secs(20);
/// A uid that is not this process's: the owner of policies whose rules must apply here.
const OTHER_OWNER: u32 = 4_000_000_000;
/// b lets host a do everything with everything.
const B_OPEN_TO_A: &str = "[[allow]]\nnames = ['**']\nhosts = ['a']\n\
    operations = ['send', 'call', 'receive', 'subscribe', 'manage']\n";

fn me() -> u32 {
    std::fs::metadata("/proc/self").unwrap().uid()
}

fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + WATCHDOG;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn host(name: &str, peer: &str) -> HostsConfig {
    let mut hosts = HostsConfig::new(name).unwrap();
    hosts.add_peer_flag(peer).unwrap();
    hosts.heartbeat_interval = Duration::from_millis(200);
    hosts.missed_heartbeats = 5;
    hosts
}

fn broker(name: &str, peer: &str, policy: Policy) -> Broker {
    let hosts = host(name, peer);
    Broker::embedded_with(|config| config.policy(policy).hosts(hosts)).unwrap()
}

/// Brokers a and b (a dials b on `port`), with these policies.
fn pair_on(port: u16, a_policy: Policy, b_policy: Policy) -> (Broker, Broker) {
    let b = broker("b", &format!("a=listen:127.0.0.1:{port}"), b_policy);
    let a = broker("a", &format!("b=dial:127.0.0.1:{port}"), a_policy);
    (a, b)
}

fn own(rules: &str) -> Policy {
    Policy::from_toml(rules, me()).unwrap()
}

/// Retries `attempt` while the host link comes up (`Unreachable`).
fn reachable<T>(mut attempt: impl FnMut() -> Result<T, ConnectError>) -> Result<T, ConnectError> {
    let deadline = Instant::now() + WATCHDOG;
    loop {
        match attempt() {
            Err(ConnectError::Unreachable(_)) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(50));
            }
            other => return other,
        }
    }
}

/// a's policy allows subscribing to `/sensors/<one level>` only; locally `/sensors/**` is
/// denied, yet `/sensors/**@b` passes a's check (the pattern text is matched like a name, and
/// the rule's `*` matches the segment `**@b`), and the node receives `/sensors/x/y` of b.
#[test]
fn a_single_level_rule_does_not_let_a_node_subscribe_recursively_on_a_peer() {
    let a_rules = format!(
        "[[allow]]\nnames = ['/sensors/*']\nuids = [{}]\noperations = ['subscribe']\n",
        me()
    );
    let a_policy = Policy::from_toml(&a_rules, OTHER_OWNER).unwrap();
    let (a, b) = pair_on(free_port(), a_policy, own(B_OPEN_TO_A));
    let node_a = a.node().unwrap();
    let local = node_a.subscribe("/sensors/**");
    assert!(matches!(local, Err(ConnectError::AccessDenied(_))), "{local:?}");

    let remote = reachable(|| node_a.subscribe("/sensors/**@b"));
    if let Ok(subscription) = &remote {
        let node_b = b.node().unwrap();
        node_b.publish("/sensors/deep/inside", "x").unwrap();
        let got = subscription.recv_timeout(Duration::from_secs(5));
        panic!("a's policy was bypassed: subscribed to /sensors/**@b and received {got:?}");
    }
    assert!(matches!(remote, Err(ConnectError::AccessDenied(_))), "{remote:?}");
}

/// Publications too large to cross are dropped by b's relay, but b's topic counted them as
/// sent and a's subscriber never credits them: each one leaks a slot of the subscriber's
/// window for good. With capacity 2, two of them stop the subscription forever (no `Closed`,
/// no more messages, `lost` never reported).
#[test]
fn publications_too_large_to_cross_do_not_starve_a_remote_subscriber() {
    let (a, b) = pair_on(free_port(), own(""), own(B_OPEN_TO_A));
    let node_a = a.node().unwrap();
    let node_b = b.node().unwrap();
    let subscription = reachable(|| node_a.subscription("news@b").capacity(2).open()).unwrap();
    node_b.publish("news", "first").unwrap();
    assert_eq!(subscription.recv_timeout(WATCHDOG).unwrap().body(), b"first");

    let big = vec![7u8; 2 << 20];
    node_b.publish("news", big.clone()).unwrap();
    node_b.publish("news", big).unwrap();
    node_b.publish("news", "after").unwrap();
    let after = subscription.recv_timeout(Duration::from_secs(5));
    let after = after.expect("the subscription starved after two dropped publications");
    assert_eq!((after.body(), after.lost()), (&b"after"[..], 2));
}

/// A message in b's mailbox that is too large to cross (b's own nodes may send up to b's
/// 64 MiB limit) is delivered to a remote receiver's relay, which closes the channel; the
/// mailbox queues it again ahead of the others, so every remote receiver fails with `Closed`
/// for as long as it is there, and the small message behind it never reaches host a.
#[test]
fn a_message_too_large_to_cross_does_not_block_remote_receivers_of_a_mailbox() {
    let (a, b) = pair_on(free_port(), own(""), own(B_OPEN_TO_A));
    let node_b = b.node().unwrap();
    node_b.mailbox("jobs").capacity(10).create().unwrap();
    let jobs = node_b.connect("jobs").unwrap();
    jobs.send(vec![1u8; 2 << 20]).unwrap();
    jobs.send("small").unwrap();
    wait_until("both are queued", || node_b.stat("jobs").is_ok_and(|s| s.counters.queued == 2));

    let node_a = a.node().unwrap();
    let mut results = Vec::new();
    for _ in 0..3 {
        let receiver = reachable(|| {
            node_a.mailbox("jobs@b").open().map_err(|e| match e {
                postbox::OpenError::Unreachable(d) => ConnectError::Unreachable(d),
                other => ConnectError::Refused(other.to_string()),
            })
        })
        .unwrap();
        let got = receiver.recv_timeout(Duration::from_secs(3));
        let done = got.as_ref().is_ok_and(|e| e.body() == b"small");
        results.push(got.map(|e| e.body().len()).map_err(|e| format!("{e:?}")));
        if done {
            return;
        }
    }
    let queued = node_b.stat("jobs").unwrap().counters.queued;
    panic!("no remote receiver got past the large message: {results:?}, still queued: {queued}");
}

/// `has_link_room` counts relays but not remote opens still waiting for the peer's answer,
/// so a node that asks for many remote links at once gets them all, past its `connections`
/// quota.
#[test]
fn remote_opens_in_flight_count_against_the_link_quota() {
    let a_policy = own("[limits]\nconnections = 3\n");
    let (a, b) = pair_on(free_port(), a_policy, own(B_OPEN_TO_A));
    let node_b = b.node().unwrap();
    node_b.mailbox("jobs").create().unwrap();
    let node_a = a.node().unwrap();
    drop(reachable(|| node_a.connect("jobs@b")).unwrap());

    let opened: Vec<_> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..16).map(|_| s.spawn(|| node_a.connect("jobs@b"))).collect();
        handles.into_iter().map(|h| h.join().unwrap()).filter_map(Result::ok).collect()
    });
    assert!(opened.len() <= 3, "{} links with a quota of 3", opened.len());
}

/// After b's broker restarts, `process_on("b", id)` still gives the stand-in bound to b's
/// earlier run (learnt when a reached the old node), so the node with that id in b's new run
/// can never be reached from a by `process_on` (`NoSuchPort` forever).
#[test]
fn process_on_after_the_peer_restarted_reaches_the_node_of_its_new_run() {
    let port = free_port();
    let (a, b) = pair_on(port, own(""), own(B_OPEN_TO_A));
    let node_a = a.node().unwrap();
    let old_b = b.node().unwrap();
    let old_id = old_b.process_id();
    let peer = node_a.process_on("b", old_id).unwrap();
    wait_until("b is reachable", || match node_a.send_to(peer, "hi") {
        Ok(()) => true,
        Err(SendError::Unreachable(_)) => false,
        Err(other) => panic!("{other:?}"),
    });
    assert_eq!(old_b.inbox().recv_timeout(WATCHDOG).unwrap().body(), b"hi");
    drop(old_b);
    b.stop().unwrap();

    let b = broker("b", &format!("a=listen:127.0.0.1:{port}"), own(B_OPEN_TO_A));
    // Generations start again at 1 in the new run: attach until a node has the old id.
    let mut kept = Vec::new();
    let new_b = loop {
        let node = b.node().unwrap();
        if node.process_id() == old_id {
            break node;
        }
        assert!(kept.len() < 100, "no node of the new run got id {old_id}");
        kept.push(node);
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut last = None;
    while Instant::now() < deadline {
        let peer = node_a.process_on("b", old_id).unwrap();
        match node_a.send_to(peer, "hello, new run") {
            Ok(()) => {
                let got = new_b.inbox().recv_timeout(WATCHDOG).unwrap();
                assert_eq!(got.body(), b"hello, new run");
                return;
            }
            Err(error) => last = Some(format!("{error:?} via {peer}")),
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("node {old_id} of b's new run stays unreachable: {last:?}");
}

/// A peer's `Opened` may name any node as the server: naming a node of host a itself makes
/// a's client see that local node's real identity (uid and gid included) as the server of a
/// remote port. `Open`'s client is checked for exactly this; `Opened`'s server is not.
#[test]
fn a_peer_cannot_pass_itself_off_as_a_node_of_this_host() {
    let port = free_port();
    let a = broker("a", &format!("evil=listen:127.0.0.1:{port}"), own(""));
    let victim = a.node().unwrap();
    let client = a.node().unwrap();
    let mut config = HostLinkConfig::default();
    config.session.max_payload = (1 << 20) + 64;
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let evil = HostLink::dial(addr, config).unwrap();

    std::thread::scope(|s| {
        let connecting = s.spawn(|| reachable(|| client.connect("echo@evil")));
        // Wait for a's Open; answer it with Opened naming a's own node as the server.
        let (channel, stream) = loop {
            match evil.recv().unwrap() {
                Event::Delivered { payload, stream, .. } if payload[0] == 1 => {
                    break (u64::from_le_bytes(payload[2..10].try_into().unwrap()), stream);
                }
                _ => {}
            }
        };
        let mut opened = vec![2u8, 1];
        opened.extend_from_slice(&channel.to_le_bytes());
        PortSpec::default().encode(&mut opened);
        opened.push(3); // rights: send and call
        opened.extend_from_slice(&16u32.to_le_bytes());
        opened.extend_from_slice(&(1u64 << 20).to_le_bytes());
        opened.extend_from_slice(&1u16.to_le_bytes());
        opened.push(b'a'); // host: a itself
        opened.extend_from_slice(&0u64.to_le_bytes()); // incarnation: "whichever"
        let victim_id: ProcessId = victim.process_id();
        opened.extend_from_slice(&victim_id.pid.to_le_bytes());
        opened.extend_from_slice(&victim_id.generation.to_le_bytes());
        evil.send(stream, opened).unwrap();

        match connecting.join().unwrap() {
            Ok(connection) => {
                let server = connection.server_identity();
                assert_ne!(server.process_id, victim_id, "the peer posed as a's node: {server:?}");
                assert_eq!(server.uid, u32::MAX, "{server:?}");
            }
            Err(error) => eprintln!("refused (as it should be): {error:?}"),
        }
    });
}

/// Nothing bounds the channels one peer opens: every `Open` of a topic (or mailbox) costs a
/// Unix link pair, a relay (which may buffer up to 64 MiB towards its local end) and a
/// subscriber queue, and none is counted against any quota. Local nodes are held to
/// `connections`; a peer (or all of a peer's nodes together) is not.
#[test]
fn a_peer_cannot_open_unbounded_channels() {
    let port = free_port();
    let rules = "[limits]\nconnections = 16\n[[allow]]\nnames = ['**']\nhosts = ['evil']\n\
                 operations = ['subscribe']\n";
    let a = broker("a", &format!("evil=listen:127.0.0.1:{port}"), own(rules));
    let node = a.node().unwrap();
    node.publish("news", "x").unwrap();
    let mut config = HostLinkConfig::default();
    config.session.max_payload = (1 << 20) + 64;
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let evil = HostLink::dial(addr, config).unwrap();
    let fds = || std::fs::read_dir("/proc/self/fd").unwrap().count();
    let before = fds();
    const OPENS: u64 = 300;
    for number in 1..=OPENS {
        let mut open = vec![1u8, 0];
        open.extend_from_slice(&number.to_le_bytes());
        open.push(3); // target: subscribe
        open.extend_from_slice(&4u16.to_le_bytes());
        open.extend_from_slice(b"news");
        open.extend_from_slice(&16u32.to_le_bytes());
        open.push(0);
        open.push(3); // rights
        open.extend_from_slice(&0u16.to_le_bytes()); // client: a node of evil itself
        open.extend_from_slice(&1u64.to_le_bytes());
        open.extend_from_slice(&100u32.to_le_bytes());
        open.extend_from_slice(&(number as u32).to_le_bytes());
        let stream = postbox_core::reliable::StreamId(1 + ((2 * number + 1) % 64) as u32);
        evil.send(stream, open).unwrap();
    }
    let (mut opened, mut refused) = (0, 0);
    while opened + refused < OPENS {
        if let Event::Delivered { payload, .. } = evil.recv().unwrap() {
            match payload[0] {
                2 => opened += 1,
                3 => refused += 1,
                _ => {}
            }
        }
    }
    let grown = fds() - before;
    assert!(opened <= 16, "{opened} channels opened for one peer ({grown} more descriptors)");
}

/// An `Open` host message for the port `name`, channel `number` opened by the sender, for a
/// node of the sender itself, asking to send (docs/network.md §4).
fn open_port(number: u64, name: &str) -> Vec<u8> {
    let mut open = vec![1u8, 0];
    open.extend_from_slice(&number.to_le_bytes());
    open.push(0); // target: a port
    open.extend_from_slice(&(name.len() as u16).to_le_bytes());
    open.extend_from_slice(name.as_bytes());
    open.push(1); // rights: send
    open.extend_from_slice(&0u16.to_le_bytes()); // client: a node of the sender itself
    open.extend_from_slice(&1u64.to_le_bytes());
    open.extend_from_slice(&100u32.to_le_bytes());
    open.extend_from_slice(&(number as u32).to_le_bytes());
    open
}

/// One frame of `kind` with `body`, header first (docs/wire-format.md §2).
fn frame(kind: FrameKind, body: &[u8]) -> Vec<u8> {
    let header = FrameHeader {
        kind,
        priority: 0,
        msg_type: 0,
        id: 1,
        correlation: u64::from(kind == FrameKind::Call),
        body_len: body.len() as u32,
        placement: Placement::Inline,
    };
    let mut bytes = header.encode(body).to_vec();
    bytes.extend_from_slice(body);
    bytes
}

/// A `Datagram` host message on channel `number` (opened by the sender): `frames` numbered
/// from `seq`.
fn datagram(number: u64, seq: u64, frames: &[u8]) -> Vec<u8> {
    let mut message = vec![7u8, 0];
    message.extend_from_slice(&number.to_le_bytes());
    message.extend_from_slice(&seq.to_le_bytes());
    message.extend_from_slice(frames);
    message
}

/// Review of the datagram ports (finding 3): the receiving gateway trusted the peer's frame
/// numbers. A first datagram numbered `u64::MAX` counted 2^64 − 2 lost: a second such one
/// overflowed the per-peer count (the broker's event loop panicked in a debug build), and in
/// a release build the channel's count saturated, a message arrived with `lost` ≈ 2^64 and
/// the port's own sum could overflow.
#[test]
fn datagram_numbers_near_the_end_of_u64_neither_crash_the_broker_nor_report_absurd_losses() {
    let (_a, node, telemetry, evil) = evil_peer_with_telemetry_channels(3);
    for (number, seq, body) in [(1, u64::MAX, "first"), (2, u64::MAX, "second"), (3, 1, "third")] {
        let message = datagram(number, seq, &frame(FrameKind::Oneway, body.as_bytes()));
        evil.send_datagram(StreamId(10), message).unwrap();
    }
    loop {
        let envelope = telemetry.recv_timeout(WATCHDOG).expect("the broker still works");
        assert!(envelope.lost() < 1 << 40, "{} lost before {:?}", envelope.lost(), envelope.body());
        if envelope.body() == b"third" {
            break;
        }
    }
    assert!(telemetry.stats().lost < 1 << 40, "{:?}", telemetry.stats());
    let hosts = node.hosts().unwrap();
    assert!(hosts[0].datagrams_lost < 1 << 40, "{hosts:?}");
}

/// The gateway itself holds a datagram channel to one-way messages: a client that skips the
/// library's check (`CallError::DatagramsOnly`) and writes a call or a confirmed send loses
/// its link, and nothing reaches the port.
#[test]
fn the_gateway_refuses_calls_and_confirmed_sends_of_a_raw_client_on_a_datagram_channel() {
    let (a, b) = pair_on(free_port(), own(""), own(B_OPEN_TO_A));
    let node_b = b.node().unwrap();
    let telemetry = node_b.port("telemetry").datagrams().open().unwrap();
    let node_a = a.node().unwrap();
    let honest = reachable(|| node_a.connect("telemetry@b")).unwrap();
    assert_eq!(honest.spec().delivery, Delivery::Datagrams);

    let control = ControlSocket::connect(a.socket_path()).unwrap();
    let mut buf = vec![0u8; MAX_CONTROL_LEN];
    let mut request = |message: ControlMessage| {
        let mut packet = Vec::new();
        message.encode(&mut packet);
        control.send(&packet, &[], Wait::Forever).unwrap();
        let (len, fds) = control.recv(&mut buf, Wait::timeout(WATCHDOG)).unwrap();
        (ControlMessage::decode(&buf[..len]).unwrap(), fds)
    };
    let (welcome, _) = request(ControlMessage::Hello { request: 1 });
    assert!(matches!(welcome, ControlMessage::Welcome { .. }), "{welcome:?}");
    for (request_number, kind) in [(2, FrameKind::Call), (3, FrameKind::Confirmed)] {
        let target = Target::Port(PortName::new("telemetry@b").unwrap());
        let connect =
            ControlMessage::Connect { request: request_number, target, rights: Rights::ALL };
        let (connected, fds) = request(connect);
        let ControlMessage::Connected { spec, .. } = connected else { panic!("{connected:?}") };
        assert_eq!(spec.delivery, Delivery::Datagrams);
        let link = Link::from_fds(fds, LinkSide::Client).unwrap();
        let bytes = frame(kind, b"not one way");
        link.write_frame(&bytes[..32], &bytes[32..], Wait::Forever).unwrap();
        let mut decoder = FrameDecoder::new(1 << 20);
        loop {
            match link.read_into(&mut decoder, Wait::timeout(WATCHDOG)) {
                Ok(_) => {}
                Err(TransportError::Closed) => break,
                Err(error) => panic!("{kind:?}: expected the gateway to close the link: {error:?}"),
            }
        }
    }
    honest.send("one way").unwrap();
    let first = telemetry.recv_timeout(WATCHDOG).unwrap();
    assert_eq!(first.body(), b"one way", "a call or confirmed send reached the port");
}

/// Review of the datagram ports (finding 5): the client's side closes a datagram channel with
/// `Close` on the reliable session, which may overtake the last datagrams (UDP); the port's
/// side closed at once and dropped them, and nobody counted them. Now `Close` says the last
/// number sent: datagrams up to it that come after the close still go in, and those that never
/// come are counted as lost. (A hostile peer plays the client's side, its datagrams on the
/// connection, so that the order is exactly this.)
#[test]
fn datagrams_overtaken_by_the_close_of_their_channel_are_delivered_or_counted() {
    let (_a, node, telemetry, evil) = evil_peer_with_telemetry_channels(2);
    let close = |number: u64, last: u64| {
        let mut close = vec![5u8, 0];
        close.extend_from_slice(&number.to_le_bytes());
        close.extend_from_slice(&last.to_le_bytes());
        evil.send(StreamId(1 + number as u32), close).unwrap();
    };
    let send = |number: u64, seq: u64, body: &str| {
        let message = datagram(number, seq, &frame(FrameKind::Oneway, body.as_bytes()));
        evil.send_datagram(StreamId(1 + number as u32), message).unwrap();
    };
    // Channel 1: its last two datagrams come after its close.
    send(1, 1, "one");
    close(1, 3);
    send(1, 2, "two");
    send(1, 3, "three");
    // Channel 2: four datagrams announced, one came.
    send(2, 1, "four");
    close(2, 5);
    let mut got = Vec::new();
    while got.len() < 4 {
        let envelope = telemetry.recv_timeout(WATCHDOG).expect("every datagram that came");
        got.push((String::from_utf8(envelope.body().to_vec()).unwrap(), envelope.lost()));
    }
    got.sort();
    let lost_none = |body: &str| (body.to_owned(), 0);
    assert_eq!(got, ["four", "one", "three", "two"].map(lost_none));
    wait_until("the four that never came are counted", || {
        node.hosts().unwrap()[0].datagrams_lost == 4
    });
    wait_until("both channels closed", || node.hosts().unwrap()[0].channels == 0);
}

/// Broker a with a datagram port `telemetry` that host `evil` may send to, and a host link
/// playing `evil` that has opened `channels` channels to it (numbered from 1, each on stream
/// 1 + its number), all answered `Opened`.
fn evil_peer_with_telemetry_channels(channels: u64) -> (Broker, Node, Port, HostLink) {
    let port = free_port();
    let rules = "[[allow]]\nnames = ['telemetry']\nhosts = ['evil']\noperations = ['send']\n";
    let a = broker("a", &format!("evil=listen:127.0.0.1:{port}"), own(rules));
    let node = a.node().unwrap();
    let telemetry = node.port("telemetry").datagrams().open().unwrap();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let evil = HostLink::dial(addr, HostLinkConfig::default()).unwrap();
    for number in 1..=channels {
        evil.send(StreamId(1 + number as u32), open_port(number, "telemetry")).unwrap();
    }
    let mut opened = 0;
    while opened < channels {
        let event = evil.recv_timeout(WATCHDOG).expect("a's answers");
        if let Event::Delivered { payload, .. } = event {
            // Opened (2), not refused (3); a's run (8) comes first.
            assert_ne!(payload[0], 3, "refused: {payload:?}");
            opened += u64::from(payload[0] == 2);
        }
    }
    (a, node, telemetry, evil)
}
