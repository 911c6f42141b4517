//! A node attached over TCP to a broker that also links to another host: it uses `name@host`
//! like a local node, and its id `0.<n>` never collides with the stand-ins (also `0.<n>`)
//! that its broker gives other hosts' nodes (docs/network.md §5, §14). Two embedded brokers
//! in this process: `a` dials `b` over loopback TCP and accepts nodes over TCP.
#![allow(missing_docs)]

use std::os::unix::fs::MetadataExt;
use std::time::{Duration, Instant};

use postbox::{
    AttachSecurity, Broker, ConnectError, HostsConfig, NamedKey, Node, Policy, PreSharedKey,
    ProcessId, RemoteNodesConfig,
};
use postbox_test::free_port;

const WATCHDOG: Duration = Duration::from_secs(20);
/// b lets host a do everything with everything.
const B_OPEN_TO_A: &str = "[[allow]]\nnames = ['**']\nhosts = ['a']\n\
    operations = ['send', 'call', 'receive', 'subscribe', 'manage']\n";
/// a lets the node attached over TCP as `app` do everything with everything (other hosts'
/// names included; its own user's nodes may anyway), and b's nodes send to inboxes.
const A_OPEN_TO_APP: &str = "[[allow]]\nnames = ['**', '#inbox/**']\nremote_nodes = ['app']\n\
    operations = ['register', 'send', 'call', 'receive', 'subscribe', 'manage']\n\
    [[allow]]\nnames = ['#inbox/**']\nhosts = ['b']\noperations = ['send']\n";

fn me() -> u32 {
    std::fs::metadata("/proc/self").unwrap().uid()
}

fn key() -> PreSharedKey {
    PreSharedKey::new(&[1; 24]).unwrap()
}

fn hosts(name: &str, peer: &str) -> HostsConfig {
    let mut hosts = HostsConfig::new(name).unwrap();
    hosts.add_peer_flag(peer).unwrap();
    hosts.heartbeat_interval = Duration::from_millis(200);
    hosts.missed_heartbeats = 5;
    hosts
}

/// Brokers a (dials b, accepts `app` over TCP) and b.
fn pair() -> (Broker, Broker) {
    let port = free_port();
    let b_hosts = hosts("b", &format!("a=listen:127.0.0.1:{port}"));
    let b_policy = Policy::from_toml(B_OPEN_TO_A, me()).unwrap();
    let b = Broker::embedded_with(|config| config.policy(b_policy).hosts(b_hosts)).unwrap();
    let a_hosts = hosts("a", &format!("b=dial:127.0.0.1:{port}"));
    let a_policy = Policy::from_toml(A_OPEN_TO_APP, me()).unwrap();
    let keys = vec![NamedKey::new("app", key()).unwrap()];
    let remote = RemoteNodesConfig::with_keys("127.0.0.1:0".parse().unwrap(), keys).unwrap();
    let a =
        Broker::embedded_with(|config| config.policy(a_policy).hosts(a_hosts).remote_nodes(remote))
            .unwrap();
    (a, b)
}

/// Retries `attempt` while the host link comes up.
fn reachable<T, E: std::fmt::Debug>(
    mut attempt: impl FnMut() -> Result<T, E>,
    unreachable: impl Fn(&E) -> bool,
) -> T {
    let deadline = Instant::now() + WATCHDOG;
    loop {
        match attempt() {
            Ok(value) => return value,
            Err(error) if unreachable(&error) && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(error) => panic!("{error:?}"),
        }
    }
}

fn link_down(error: &ConnectError) -> bool {
    matches!(error, ConnectError::Unreachable(_))
}

#[test]
fn a_node_attached_over_tcp_uses_other_hosts_and_never_shares_an_id_with_a_stand_in() {
    let (a, b) = pair();
    let local_a = a.node().unwrap();
    let node_b = b.node().unwrap();
    // Stand-ins first: with ids from two counters that both start at 1, the node attached next
    // would have the id of one of them.
    let stand_ins: Vec<ProcessId> =
        (1..=4).map(|n| local_a.process_on("b", ProcessId::new(4242, n)).unwrap()).collect();
    assert!(stand_ins.iter().all(|s| s.pid == 0));

    let address = a.remote_address().unwrap().to_string();
    let remote = Node::attach_tcp(&address, &AttachSecurity::PreSharedKey(key())).unwrap();
    let id = remote.process_id();
    assert_eq!(id.pid, 0);
    assert!(!stand_ins.contains(&id), "{id} is also a stand-in: {stand_ins:?}");
    // Its inbox is its own, not a node of b's.
    local_a.send_to(id, "local to tcp").unwrap();
    assert_eq!(remote.inbox().recv_timeout(WATCHDOG).unwrap().body(), b"local to tcp");

    // A port of b, called from the node attached over TCP; b answers its stand-in's inbox.
    let echo = node_b.port("echo").open().unwrap();
    let caller = std::thread::scope(|s| {
        let server = s.spawn(move || {
            let call = echo.recv_timeout(WATCHDOG).unwrap();
            let caller = call.sender();
            let body = call.body().to_vec();
            call.reply(body).unwrap();
            caller
        });
        let port = reachable(|| remote.connect("echo@b"), link_down);
        let reply = port.call_timeout("over tcp, then to b", WATCHDOG).unwrap();
        assert_eq!(reply.body(), b"over tcp, then to b");
        server.join().unwrap()
    });
    assert_eq!(caller.pid, 0, "b sees its stand-in");
    node_b.send_to(caller, "b to tcp").unwrap();
    let got = remote.inbox().recv_timeout(WATCHDOG).unwrap();
    assert_eq!(got.body(), b"b to tcp");

    // A mailbox of b, filled by the node attached over TCP and read on a: the delivery names
    // the sender as a's own node again (not a stand-in of it), and it is answerable.
    node_b.mailbox("jobs").capacity(8).create().unwrap();
    let jobs = reachable(|| remote.connect("jobs@b"), link_down);
    jobs.send("from tcp via b").unwrap();
    let receiver = local_a.mailbox("jobs@b").open().unwrap();
    let delivery = receiver.recv_timeout(WATCHDOG).unwrap();
    assert_eq!((delivery.body(), delivery.sender()), (&b"from tcp via b"[..], id));
    local_a.send_to(delivery.sender(), "answer").unwrap();
    assert_eq!(remote.inbox().recv_timeout(WATCHDOG).unwrap().body(), b"answer");
}
