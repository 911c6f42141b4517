//! Across hosts, on loopback: two daemons with different host names, linked over TCP; nodes
//! on host `a` reach ports on host `b` as `port@b` through their broker (docs/network.md).
//!
//! No privileges needed: each daemon has its own socket, the host link its own free port.

use std::time::Duration;

use postbox::{CallError, ConnectError, Message};

use crate::util::{
    call_cut_by, calls_are_answered_in_upper_case, connect_remote, stdout_of, wait_until, HostPair,
    WATCHDOG,
};

/// Host `a` dials host `b`, which lets `a`'s nodes send to and call `echo`, `slow`, `sink`.
fn start_pair() -> HostPair {
    HostPair::start(
        "[[allow]]\nnames = ['echo', 'slow', 'sink']\nhosts = ['a']\n\
         operations = ['send', 'call']\n",
        None,
    )
}

#[test]
fn a_call_and_a_send_to_port_at_host_cross_to_the_other_daemon_and_ls_shows_the_link() {
    let pair = start_pair();
    let mut server = pair.b.worker(&["echo", "echo", "--upper", "--print"]);
    let printed = server.lines();
    let node = pair.a.node();
    let connection = connect_remote(&node, "echo@b");
    assert_eq!(connection.call_timeout("hello", WATCHDOG).unwrap().body(), b"HELLO");
    calls_are_answered_in_upper_case(&connection, 200);
    connection.send("one way").unwrap();
    let line = printed.recv_timeout(WATCHDOG).unwrap();
    assert!(line.ends_with(": one way"), "{line}");
    // The receiving side sees the remote sender under its stand-in (pid 0, docs/network.md §5).
    assert!(line.starts_with("0."), "{line}");

    // The CLI resolves the same names through its node.
    let output = pair.a.postbox(&["call", "echo@b", "from the shell"]);
    assert!(output.status.success(), "{output:?}");
    assert_eq!(stdout_of(&output).trim(), "FROM THE SHELL");

    let output = pair.a.postbox(&["ls"]);
    let listing = stdout_of(&output);
    let row = listing.lines().find(|l| l.starts_with("b ")).unwrap_or_else(|| panic!("{listing}"));
    assert!(row.contains("open") && row.contains("dial 127.0.0.1:"), "{row}");
    let hosts = node.hosts().unwrap();
    assert_eq!(hosts.len(), 1);
    assert!(hosts[0].rtt.is_some() && hosts[0].channels >= 1, "{hosts:?}");
}

#[test]
fn a_large_reply_written_just_before_the_server_closes_its_port_arrives_whole_at_the_other_host() {
    let pair = start_pair();
    let server_node = pair.b.node();
    let port = server_node.port("echo").open().unwrap();
    // More than the caller's socket takes at once (and under the 1 MiB that crosses hosts).
    let big: Vec<u8> = (0..900u32 << 10).map(|i| (i % 251) as u8).collect();
    let serving = {
        let big = big.clone();
        std::thread::spawn(move || {
            let mut call = port.recv_timeout(WATCHDOG).unwrap();
            let sent = call.take_reply_token().unwrap().reply(Message::new(big));
            assert!(sent.is_ok(), "{}", sent.unwrap_err());
            drop(port);
        })
    };
    let node = pair.a.node();
    let connection = connect_remote(&node, "echo@b");
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let reply = runtime.block_on(async {
        let mut call = Box::pin(connection.call_async("all of it"));
        // Polled once (the request goes out); then the caller reads nothing for a while, so
        // its broker still holds part of the reply when the server's close arrives.
        let early = tokio::time::timeout(Duration::ZERO, &mut call).await;
        assert!(early.is_err(), "no reply before the caller reads");
        std::thread::sleep(Duration::from_millis(500));
        tokio::time::timeout(WATCHDOG, call).await.expect("the call ends")
    });
    serving.join().unwrap();
    let reply = reply.unwrap_or_else(|e| panic!("the reply written before the close: {e}"));
    assert!(reply.body() == big.as_slice(), "{} of {} bytes", reply.body().len(), big.len());
}

#[test]
fn an_unknown_or_forbidden_port_at_a_host_gives_a_typed_error() {
    let pair = start_pair();
    let _secret = pair.b.worker(&["echo", "secret"]);
    let node = pair.a.node();
    // The link may still be coming up: an unreachable answer is retried, the others are not.
    let mut result = node.connect("nope@b");
    wait_until("host b answers", || {
        if matches!(result, Err(ConnectError::Unreachable(_))) {
            result = node.connect("nope@b");
            false
        } else {
            true
        }
    });
    assert!(
        matches!(result, Err(ConnectError::NoSuchPort(ref d)) if d.contains("nope")),
        "{result:?}"
    );
    let denied = node.connect("secret@b");
    assert!(matches!(denied, Err(ConnectError::AccessDenied(_))), "{denied:?}");
    // A host nobody configured is no host: the name is an ordinary (missing) local one.
    assert!(matches!(node.connect("echo@nowhere"), Err(ConnectError::NoSuchPort(_))));
    let output = pair.a.postbox(&["send", "nope@b", "x"]);
    assert!(!output.status.success());
}

#[test]
fn killing_the_remote_daemon_fails_a_pending_call_with_peer_died_within_the_bound() {
    let mut pair = start_pair();
    let _server = pair.b.worker(&["echo", "slow", "--delay-ms", "60000"]);
    let node = pair.a.node();
    let connection = connect_remote(&node, "slow@b");
    // No deadline: only the host link's death detection can end this call.
    let (result, _, connection) =
        call_cut_by(connection, || pair.b.kill9()).expect("the call ended (no hang)");
    assert_eq!(result, Err(CallError::PeerDied));
    assert_eq!(connection.call("again"), Err(CallError::Disconnected("again".into())));
    // New connections to the dead host fail with a typed error, not a hang.
    let again = node.connect("slow@b");
    assert!(matches!(again, Err(ConnectError::Unreachable(_))), "{again:?}");
    let output = pair.a.postbox(&["ls"]);
    let listing = stdout_of(&output);
    let row = listing.lines().find(|l| l.starts_with("b ")).unwrap_or_else(|| panic!("{listing}"));
    assert!(!row.contains("open"), "{row}");
}
