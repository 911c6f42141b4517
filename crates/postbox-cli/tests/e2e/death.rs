//! Peer death: servers, clients and the daemon killed with SIGKILL.

use std::time::{Duration, Instant};

use postbox::{CallError, ConnectError, OpenError};

use crate::util::{wait_until, Daemon, WATCHDOG};

#[test]
fn killing_the_server_mid_call_fails_the_caller_with_peer_died_without_a_timeout() {
    let daemon = Daemon::start();
    let mut server = daemon.worker(&["echo", "doomed", "--delay-ms", "60000"]);
    let node = daemon.node();
    let connection = node.connect("doomed").unwrap();
    let (killed_tx, killed_rx) = std::sync::mpsc::channel();
    let killer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(200));
        killed_tx.send(server.kill9()).unwrap();
    });
    // No deadline: only peer-death detection can end this call.
    let result = connection.call("are you there?");
    let noticed = Instant::now();
    killer.join().unwrap();
    let killed_at = killed_rx.recv().unwrap();
    assert_eq!(result, Err(CallError::PeerDied));
    let delay = noticed.saturating_duration_since(killed_at);
    eprintln!("PeerDied noticed {delay:?} after SIGKILL");
    // The call had no deadline at all; bound only against a hang.
    assert!(delay < WATCHDOG);
    // Later calls on the dead link fail at once, handing the request back.
    assert_eq!(connection.call("again"), Err(CallError::Disconnected("again".into())));
}

#[test]
fn a_dead_servers_name_is_free_again_at_once() {
    let daemon = Daemon::start();
    let mut holder = daemon.worker(&["hold", "phoenix"]);
    let node = daemon.node();
    assert!(matches!(node.port("phoenix").open(), Err(OpenError::NameTaken(_))));
    holder.kill9();
    // The broker learns of the death from the control socket hang-up, asynchronously.
    let mut port = None;
    wait_until("the name is free", || {
        port = node.port("phoenix").open().ok();
        port.is_some()
    });
}

#[test]
fn killing_a_client_leaves_the_server_serving_the_others() {
    let daemon = Daemon::start();
    let _server = daemon.worker(&["echo", "sturdy"]);
    let mut doomed_client = daemon.worker(&["call-loop", "sturdy"]);
    let node = daemon.node();
    let connection = node.connect("sturdy").unwrap();
    assert_eq!(connection.call_timeout("one", WATCHDOG).unwrap().body(), b"one");
    doomed_client.kill9();
    for i in 0..100 {
        let body = format!("after the kill {i}");
        assert_eq!(
            connection.call_timeout(body.as_str(), WATCHDOG).unwrap().body(),
            body.as_bytes()
        );
    }
    wait_until("the dead client's link is gone from ls", || {
        let listing = node.list().unwrap();
        listing.ports.iter().find(|p| p.name.as_str() == "sturdy").map(|p| p.connections) == Some(1)
    });
}

#[test]
fn killing_the_daemon_gives_broker_gone_and_existing_links_keep_working() {
    let mut daemon = Daemon::start();
    let _server = daemon.worker(&["echo", "survivor", "--upper"]);
    let node = daemon.node();
    let connection = node.connect("survivor").unwrap();
    let other = daemon.node();
    let inbox_link = other.connect_inbox(node.process_id()).unwrap();
    daemon.kill9();
    wait_until("the node notices", || node.is_broker_gone());
    assert_eq!(node.connect("survivor").unwrap_err(), ConnectError::BrokerGone);
    assert_eq!(node.port("new").open().unwrap_err(), OpenError::BrokerGone);
    assert_eq!(node.list().unwrap_err(), postbox::BrokerRequestError::BrokerGone);
    match node.send_to(postbox::ProcessId::new(1, 1), "x") {
        Err(postbox::SendError::BrokerGone(m)) => assert_eq!(m.body(), b"x"),
        other => panic!("expected BrokerGone, got {other:?}"),
    }
    // The direct links made before the daemon died still carry data both ways.
    assert_eq!(connection.call_timeout("still here", WATCHDOG).unwrap().body(), b"STILL HERE");
    inbox_link.send("inbox too").unwrap();
    assert_eq!(node.inbox().recv_timeout(WATCHDOG).unwrap().body(), b"inbox too");
}
