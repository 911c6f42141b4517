//! Nodes attached over TCP (`Node::attach_tcp`) to an embedded broker that listens for them on
//! loopback: the whole node API works through the tunnel, the broker knows the node by its
//! key's name, and failures are typed. Real processes and a killed daemon are in
//! `postbox-cli/tests/e2e/remote_attach.rs`.
#![allow(missing_docs)]

use std::time::{Duration, Instant};

use postbox::{
    AccessDenied, AttachSecurity, AuthenticationError, Broker, CallError, ConnectError, NamedKey,
    Node, NodeError, Operation, Policy, PreSharedKey, RemoteNodesConfig,
};
use serde::{Deserialize, Serialize};

const WATCHDOG: Duration = Duration::from_secs(20);

/// Every operation on every name for the remote node `app`.
const APP_MAY_DO_ANYTHING: &str = r##"
    [[allow]]
    names = ["**", "#inbox/**"]
    remote_nodes = ["app"]
    operations = ["register", "send", "call", "receive", "subscribe", "manage"]
"##;

fn key(byte: u8) -> PreSharedKey {
    PreSharedKey::new(&[byte; 24]).unwrap()
}

/// An embedded broker (shared-memory links for local nodes, the default) that accepts nodes
/// holding `key(1)` as `app` on a loopback port.
fn broker(rules: &str) -> Broker {
    let policy = Policy::from_toml(rules, rustix_uid()).unwrap();
    let keys = vec![NamedKey::new("app", key(1)).unwrap()];
    let remote = RemoteNodesConfig::with_keys("127.0.0.1:0".parse().unwrap(), keys).unwrap();
    Broker::embedded_with(|config| config.policy(policy).remote_nodes(remote)).unwrap()
}

fn rustix_uid() -> u32 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").unwrap().uid()
}

fn remote_node(broker: &Broker) -> Node {
    let address = broker.remote_address().unwrap().to_string();
    Node::attach_tcp(&address, &AttachSecurity::PreSharedKey(key(1))).unwrap()
}

fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + WATCHDOG;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[postbox::service]
pub trait Adder {
    fn add(&self, a: i64, b: i64) -> i64;
}

struct Adding;

impl Adder for Adding {
    fn add(&self, a: i64, b: i64) -> i64 {
        a + b
    }
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct Job {
    id: u32,
}

#[test]
fn a_remote_node_calls_and_serves_ports_and_uses_inboxes_mailboxes_topics_and_typed_rpc() {
    let broker = broker(APP_MAY_DO_ANYTHING);
    let local = broker.node().unwrap();
    let remote = remote_node(&broker);
    // No process of this host: pid 0, and a user and group no account has.
    let id = remote.identity();
    assert_eq!((id.process_id.pid, id.uid, id.gid), (0, u32::MAX, u32::MAX));

    std::thread::scope(|s| {
        // A local port, called by the remote node.
        let echo = local.port("echo").open().unwrap();
        s.spawn(move || {
            let call = echo.recv_timeout(WATCHDOG).unwrap();
            assert_eq!(call.sender(), id.process_id, "the server sees the remote caller");
            let body = call.body().to_vec();
            call.reply(body).unwrap();
        });
        let reply = remote.connect("echo").unwrap().call_timeout("over tcp", WATCHDOG).unwrap();
        assert_eq!(reply.body(), b"over tcp");

        // A port of the remote node, called by a local node.
        let served = remote.port("svc").open().unwrap();
        let local_id = local.process_id();
        s.spawn(move || {
            let call = served.recv_timeout(WATCHDOG).unwrap();
            assert_eq!(call.sender(), local_id);
            call.reply("served remotely").unwrap();
        });
        let reply = local.connect("svc").unwrap().call_timeout("hi", WATCHDOG).unwrap();
        assert_eq!(reply.body(), b"served remotely");
    });

    // Inboxes, both ways.
    local.send_to(remote.process_id(), "to the remote inbox").unwrap();
    assert_eq!(remote.inbox().recv_timeout(WATCHDOG).unwrap().body(), b"to the remote inbox");
    remote.send_to(local.process_id(), "to the local inbox").unwrap();
    let got = local.inbox().recv_timeout(WATCHDOG).unwrap();
    assert_eq!((got.body(), got.sender()), (&b"to the local inbox"[..], remote.process_id()));

    // A mailbox the remote node creates and reads, filled by a local node.
    let jobs = remote.mailbox("/jobs").capacity(16).create().unwrap();
    let job = postbox::Message::encode(&Job { id: 7 }).unwrap();
    local.connect("/jobs").unwrap().send(job).unwrap();
    let taken = jobs.recv_timeout(WATCHDOG).unwrap();
    assert_eq!(taken.message().decode::<Job>().unwrap(), Job { id: 7 });

    // A topic the remote node subscribes to.
    let sensors = remote.subscribe("/sensors/*").unwrap();
    local.publish("/sensors/t", "21.5").unwrap();
    assert_eq!(sensors.recv_timeout(WATCHDOG).unwrap().body(), b"21.5");

    // A typed service served remotely, called locally.
    let _serving = AdderServer::new(Adding).start(&remote, "rpc/add").unwrap();
    let adder = AdderClient::bind(&local, "rpc/add").unwrap();
    assert_eq!(adder.add(40, 2).unwrap(), 42);
}

#[test]
fn many_messages_cross_in_order_in_both_directions_at_once() {
    let broker = broker(APP_MAY_DO_ANYTHING);
    let local = broker.node().unwrap();
    let remote = remote_node(&broker);
    let at_local = local.port("sink").capacity(8).open().unwrap();
    let at_remote = remote.port("sink-remote").capacity(8).open().unwrap();
    let to_local = remote.connect("sink").unwrap();
    let to_remote = local.connect("sink-remote").unwrap();
    let count = 2_000u32;
    let body = vec![0x5a; 1500];
    std::thread::scope(|s| {
        s.spawn(|| {
            for i in 0..count {
                to_local.send(postbox::Message::new(body.clone()).with_type(i)).unwrap();
            }
        });
        s.spawn(|| {
            for i in 0..count {
                to_remote.send(postbox::Message::new(body.clone()).with_type(i)).unwrap();
            }
        });
        for i in 0..count {
            assert_eq!(at_local.recv_timeout(WATCHDOG).unwrap().message().msg_type(), i);
            assert_eq!(at_remote.recv_timeout(WATCHDOG).unwrap().message().msg_type(), i);
        }
    });
}

#[test]
fn a_wrong_key_is_refused_with_a_typed_error_before_any_request() {
    let broker = broker(APP_MAY_DO_ANYTHING);
    let address = broker.remote_address().unwrap().to_string();
    let error = Node::attach_tcp(&address, &AttachSecurity::PreSharedKey(key(2))).unwrap_err();
    assert_eq!(
        error,
        NodeError::AuthenticationFailed {
            address: address.clone(),
            reason: AuthenticationError::RefusedByPeer
        }
    );
    // The broker still serves the right key.
    remote_node(&broker);
}

#[test]
fn a_remote_node_gets_nothing_no_rule_names_it_for() {
    let broker = broker(
        r#"
        [[allow]]
        names = ["open/*"]
        remote_nodes = ["someone-else"]
        operations = ["call", "register"]
        "#,
    );
    let local = broker.node().unwrap();
    let _port = local.port("open/echo").open().unwrap();
    let remote = remote_node(&broker);
    assert_eq!(
        remote.connect("open/echo").unwrap_err(),
        ConnectError::AccessDenied(AccessDenied::new(Operation::Send, "open/echo"))
    );
    assert!(remote.port("open/mine").open().is_err());
}

#[test]
fn a_remote_node_that_leaves_loses_its_ports_and_its_callers_hear_it() {
    let broker = broker(APP_MAY_DO_ANYTHING);
    let local = broker.node().unwrap();
    let remote = remote_node(&broker);
    let served = remote.port("remote-svc").open().unwrap();
    let connection = local.connect("remote-svc").unwrap();
    // The remote node's port and node go; the local caller's link closes.
    drop(served);
    drop(remote);
    assert_eq!(connection.call_timeout("hello?", WATCHDOG).unwrap_err(), CallError::PeerDied);
    wait_until("the remote node's port name is free", || local.port("remote-svc").open().is_ok());
}
