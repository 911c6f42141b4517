//! Across hosts, regressions from the review of branch remote-names (each test's comment says
//! what went wrong before): two embedded brokers in this process, `a` dials `b` over loopback
//! TCP; or `a` and a hostile peer that speaks the host protocol by hand.

use std::net::{SocketAddr, TcpListener};
use std::os::unix::fs::MetadataExt;
use std::time::{Duration, Instant};

use postbox::{Broker, ConnectError, ProcessId, SendError};
use postbox_broker::{HostsConfig, Policy};
use postbox_core::PortSpec;
use postbox_transport::host_link::{Event, HostLink, HostLinkConfig};

const WATCHDOG: Duration = Duration::from_secs(20);
/// A uid that is not this process's: the owner of policies whose rules must apply here.
const OTHER_OWNER: u32 = 4_000_000_000;
/// b lets host a do everything with everything.
const B_OPEN_TO_A: &str = "[[allow]]\nnames = ['**']\nhosts = ['a']\n\
    operations = ['send', 'call', 'receive', 'subscribe', 'manage']\n";

fn me() -> u32 {
    std::fs::metadata("/proc/self").unwrap().uid()
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
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
