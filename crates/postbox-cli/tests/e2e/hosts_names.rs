//! Mailboxes, topics and inboxes across hosts, on loopback: two daemons linked over TCP (host
//! `a` dials host `b`); nodes of either host use `jobs@b`, `news@b` and `b`'s nodes' inboxes
//! with the same API as on one host (docs/network.md §1, §5).

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::sync::mpsc;
use std::time::Duration;

use postbox::{
    ConnectError, Message, Node, OpenError, ProcessId, RecvError, SendError, Subscription,
};

use crate::util::{connect_remote, stdout_of, wait_until, HostPair, WATCHDOG};

/// Hosts `a` and `b`, each letting the other's nodes use what the tests need: on b the
/// mailbox `jobs`, the topics `news` and `/sensors/**`, and its nodes' inboxes; on a its
/// nodes' inboxes (for answers). Nothing else: `secret` and `private` stay b's own.
fn start_pair() -> HostPair {
    HostPair::start(
        "[[allow]]\nnames = ['jobs', 'news', '/sensors/**']\nhosts = ['a']\n\
         operations = ['send', 'receive', 'subscribe', 'manage']\n\
         [[allow]]\nnames = ['#inbox/*']\nhosts = ['a']\noperations = ['send', 'call']\n",
        Some("[[allow]]\nnames = ['#inbox/*']\nhosts = ['b']\noperations = ['send', 'call']\n"),
    )
}

/// Subscribes to `pattern` (of another host), retrying while the host link comes up.
fn subscribe_remote(node: &Node, pattern: &str) -> Subscription {
    let mut subscription = None;
    wait_until(&format!("{pattern} is reachable"), || {
        subscription = node.subscribe(pattern).ok();
        subscription.is_some()
    });
    subscription.unwrap()
}

fn text(body: &[u8]) -> String {
    String::from_utf8_lossy(body).into_owned()
}

#[test]
fn a_mailbox_on_b_takes_from_senders_on_both_hosts_and_gives_each_message_to_one_receiver() {
    let pair = start_pair();
    let (node_a, node_b) = (pair.a.node(), pair.b.node());
    node_b.mailbox("jobs").capacity(100).create().unwrap();
    // No receiver yet: the mailbox keeps what both hosts send.
    let from_a = connect_remote(&node_a, "jobs@b");
    let from_b = node_b.connect("jobs").unwrap();
    for i in 0..10 {
        from_a.send(format!("a{i}").as_str()).unwrap();
        from_b.send(format!("b{i}").as_str()).unwrap();
    }
    let output = pair.a.postbox(&["send", "jobs@b", "shell"]);
    assert!(output.status.success(), "{output:?}");
    wait_until("b's mailbox holds all 21", || {
        node_b.stat("jobs").is_ok_and(|s| s.counters.queued == 21)
    });

    // One receiver on each host; each message goes to exactly one of them.
    let receiver_node_a = pair.a.node();
    let at_a = receiver_node_a.mailbox("jobs@b").open().unwrap();
    let at_b = node_b.mailbox("jobs").open().unwrap();
    let (mut got_a, mut got_b) = (Vec::new(), Vec::new());
    for _ in 0..10 {
        got_a.push(at_a.recv_timeout(WATCHDOG).unwrap());
        got_b.push(at_b.recv_timeout(WATCHDOG).unwrap());
    }
    got_a.push(at_a.recv_timeout(WATCHDOG).unwrap());
    let bodies: Vec<String> = got_a.iter().chain(&got_b).map(|e| text(e.body())).collect();
    let distinct: BTreeSet<&String> = bodies.iter().collect();
    let mut expected: BTreeSet<String> =
        (0..10).flat_map(|i| [format!("a{i}"), format!("b{i}")]).collect();
    expected.insert("shell".into());
    assert_eq!(distinct.len(), bodies.len(), "a message was delivered twice: {bodies:?}");
    assert_eq!(distinct.into_iter().cloned().collect::<BTreeSet<_>>(), expected);
    assert_eq!(at_a.try_recv().err(), Some(postbox::TryRecvError::Empty));

    // The true sender comes with each message, named as each host knows it: a's node by its
    // own id on a and by its stand-in on b; b's node by its stand-in on a, the same id
    // `process_on` gives.
    let b_as_seen_on_a = node_a.process_on("b", node_b.process_id()).unwrap();
    assert_eq!(b_as_seen_on_a.pid, 0);
    for envelope in &got_a {
        let body = text(envelope.body());
        if body.starts_with('a') {
            assert_eq!(envelope.sender(), node_a.process_id(), "{body}");
        } else if body.starts_with('b') {
            assert_eq!(envelope.sender(), b_as_seen_on_a, "{body}");
        }
    }
    for envelope in got_b.iter().filter(|e| e.body().starts_with(b"a")) {
        let sender = envelope.sender();
        assert_eq!(sender.pid, 0, "a stand-in on b: {sender}");
        // Answerable: b's node reaches a's sender through its stand-in.
        node_b.send_to(sender, "thanks").unwrap();
        let thanks = node_a.inbox().recv_timeout(WATCHDOG).unwrap();
        assert_eq!((thanks.body(), thanks.sender()), (&b"thanks"[..], b_as_seen_on_a));
    }

    // A receiver on a waits for what is sent later, from either host.
    let (tx, rx) = mpsc::channel();
    std::thread::scope(|s| {
        s.spawn(|| tx.send(at_a.recv().map(|e| text(e.body()))).unwrap());
        std::thread::sleep(Duration::from_millis(100));
        from_b.send("late").unwrap();
        assert_eq!(rx.recv_timeout(WATCHDOG).unwrap(), Ok("late".to_owned()));
    });
}

#[test]
fn a_topic_on_b_fans_out_at_b_to_subscribers_on_both_hosts_each_message_once() {
    let pair = start_pair();
    let (node_a, node_b) = (pair.a.node(), pair.b.node());
    let at_a = subscribe_remote(&node_a, "news@b");
    let sensors_at_a = subscribe_remote(&node_a, "/sensors/*@b");
    let at_b = node_b.subscribe("news").unwrap();
    let publisher_b = pair.b.node();
    for i in 0..20 {
        node_a.publish("news@b", format!("a{i}").as_str()).unwrap();
        publisher_b.publish("news", format!("b{i}").as_str()).unwrap();
    }
    node_a.publish("news@b", "end a").unwrap();
    publisher_b.publish("news", "end b").unwrap();
    node_a.publish("/sensors/imu@b", "from a").unwrap();
    publisher_b.publish("/sensors/imu", "from b").unwrap();

    // Each subscriber gets every message once, in each publisher's order.
    let b_on_a = node_a.process_on("b", publisher_b.process_id()).unwrap();
    for (subscription, topic) in [(&at_a, "news@b"), (&at_b, "news")] {
        let (mut from_a, mut from_b) = (Vec::new(), Vec::new());
        while !(from_a.last().is_some_and(|t: &String| t == "end a")
            && from_b.last().is_some_and(|t: &String| t == "end b"))
        {
            let envelope = subscription.recv_timeout(WATCHDOG).unwrap();
            assert_eq!(envelope.topic(), Some(topic));
            assert_eq!(envelope.lost(), 0);
            let body = text(envelope.body());
            if body.starts_with('a') || body == "end a" {
                from_a.push(body);
                if topic == "news@b" {
                    assert_eq!(envelope.sender(), node_a.process_id(), "a's publisher on a");
                } else {
                    assert_eq!(envelope.sender().pid, 0, "a's publisher on b: a stand-in");
                }
            } else {
                from_b.push(body);
                if topic == "news@b" {
                    assert_eq!(envelope.sender(), b_on_a, "b's publisher on a");
                }
            }
        }
        let expected = |p: &str| {
            let mut all: Vec<String> = (0..20).map(|i| format!("{p}{i}")).collect();
            all.push(format!("end {p}"));
            all
        };
        assert_eq!((from_a, from_b), (expected("a"), expected("b")), "{topic}");
    }
    let mut sensors = BTreeSet::new();
    for _ in 0..2 {
        let envelope = sensors_at_a.recv_timeout(WATCHDOG).unwrap();
        assert_eq!(envelope.topic(), Some("/sensors/imu@b"));
        sensors.insert(text(envelope.body()));
    }
    assert_eq!(sensors, BTreeSet::from(["from a".to_owned(), "from b".to_owned()]));
    for subscription in [&at_a, &sensors_at_a] {
        let extra = subscription.recv_timeout(Duration::from_millis(200));
        assert!(extra.is_err(), "a message came twice: {extra:?}");
    }

    // The CLI's pub and sub take the same names.
    let mut sub = pair.a.command(&["sub", "news@b", "--count", "1", "--show-topic"]);
    let mut sub = sub.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let mut said = String::new();
    BufReader::new(sub.stderr.take().unwrap()).read_line(&mut said).unwrap();
    assert!(said.contains("subscribed to news@b"), "{said}");
    assert!(pair.b.postbox(&["pub", "news", "to the shell"]).status.success());
    let output = sub.wait_with_output().unwrap();
    let printed = stdout_of(&output);
    assert!(printed.contains("news@b") && printed.contains("to the shell"), "{output:?}");
}

#[test]
fn an_inbox_on_b_is_reached_by_process_id_at_host_and_answers_reach_the_sender() {
    let pair = start_pair();
    let (node_a, node_b) = (pair.a.node(), pair.b.node());
    assert_eq!(node_a.process_on("a", node_a.process_id()).unwrap(), node_a.process_id());
    let peer = node_a.process_on("b", node_b.process_id()).unwrap();
    assert_eq!(peer.pid, 0, "a stand-in: {peer}");
    assert_eq!(node_a.process_on("b", node_b.process_id()).unwrap(), peer, "always the same");
    wait_until("b's node is reachable", || match node_a.send_to(peer, "hello b") {
        Ok(()) => true,
        Err(SendError::Unreachable(_)) => false,
        Err(other) => panic!("{other:?}"),
    });
    let hello = node_b.inbox().recv_timeout(WATCHDOG).unwrap();
    assert_eq!(hello.body(), b"hello b");
    let a_on_b = hello.sender();
    assert_eq!(a_on_b.pid, 0, "a stand-in: {a_on_b}");
    assert_eq!(node_b.process_on("a", node_a.process_id()).unwrap(), a_on_b);

    // Sending to the sender answers it; recv_from picks it by the id `process_on` gave.
    node_b.send_to(a_on_b, "hello a").unwrap();
    let answer = node_a.inbox().recv_from_timeout(peer, WATCHDOG).unwrap();
    assert_eq!((answer.body(), answer.sender()), (&b"hello a"[..], peer));

    // Calls to an inbox across hosts, answered with the reply token.
    let calls = node_a.connect_inbox(peer).unwrap();
    std::thread::scope(|s| {
        s.spawn(|| {
            let call = node_b.inbox().recv_timeout(WATCHDOG).unwrap();
            assert_eq!(call.sender(), a_on_b);
            let body = format!("re: {}", text(call.body()));
            call.reply(body.as_str()).unwrap();
        });
        assert_eq!(calls.call_timeout("ping", WATCHDOG).unwrap().body(), b"re: ping");
    });

    // Unknown names give the same typed errors as on one host.
    let nobody = node_a.process_on("b", ProcessId::new(u32::MAX, 1)).unwrap();
    let result = node_a.send_to(nobody, "anyone?");
    assert!(matches!(result, Err(SendError::NoSuchPort(_))), "{result:?}");
    let result = node_a.process_on("nowhere", node_b.process_id());
    assert!(matches!(result, Err(ConnectError::NoSuchPort(_))), "{result:?}");
    let result = node_a.send_to(ProcessId::new(0, 999_999), "stand-in of nobody");
    assert!(matches!(result, Err(SendError::NoSuchPort(_))), "{result:?}");
}

#[test]
fn b_policy_and_b_names_decide_what_host_a_may_use_with_typed_errors() {
    let pair = start_pair();
    let (node_a, node_b) = (pair.a.node(), pair.b.node());
    node_b.mailbox("secret").create().unwrap();
    node_b.mailbox("jobs").create().unwrap();
    connect_remote(&node_a, "jobs@b");

    let denied = node_a.connect("secret@b");
    assert!(matches!(denied, Err(ConnectError::AccessDenied(_))), "{denied:?}");
    let denied = node_a.mailbox("secret@b").open();
    assert!(matches!(denied, Err(OpenError::AccessDenied(_))), "{denied:?}");
    let denied = node_a.publish("private@b", "x");
    assert!(matches!(denied, Err(SendError::AccessDenied { .. })), "{denied:?}");
    let denied = node_a.subscribe("private@b");
    assert!(matches!(denied, Err(ConnectError::AccessDenied(_))), "{denied:?}");
    let denied = node_a.subscribe("/**@b");
    assert!(matches!(denied, Err(ConnectError::AccessDenied(_))), "{denied:?}");
    // Names b does not have.
    let missing = node_a.connect("nope@b");
    assert!(matches!(missing, Err(ConnectError::NoSuchPort(_))), "{missing:?}");
    let missing = node_a.mailbox("nope@b").open();
    assert!(matches!(missing, Err(OpenError::NotFound(_))), "{missing:?}");
    // A mailbox takes messages, not calls, across hosts as on one host.
    let jobs = node_a.connect("jobs@b").unwrap();
    assert!(matches!(jobs.call_timeout("work?", WATCHDOG), Err(postbox::CallError::Remote(_))));
    // Nothing was let through.
    assert_eq!(node_b.stat("secret").unwrap().counters.queued, 0);
    assert!(!node_b.list().unwrap().ports.iter().any(|p| p.name.as_str() == "private"));
}

#[test]
fn killing_b_ends_remote_mailbox_topic_and_inbox_use_with_typed_errors_never_a_hang() {
    let mut pair = start_pair();
    let (node_a, node_b) = (pair.a.node(), pair.b.node());
    node_b.mailbox("jobs").create().unwrap();
    let sender = connect_remote(&node_a, "jobs@b");
    let receiver_node = pair.a.node();
    let mailbox = receiver_node.mailbox("jobs@b").open().unwrap();
    let subscription = subscribe_remote(&node_a, "news@b");
    let peer = node_a.process_on("b", node_b.process_id()).unwrap();
    let inbox = node_a.connect_inbox(peer).unwrap();
    inbox.send("still there?").unwrap();
    assert_eq!(node_b.inbox().recv_timeout(WATCHDOG).unwrap().body(), b"still there?");

    let (tx, rx) = mpsc::channel();
    std::thread::scope(|s| {
        let (mailbox_tx, topic_tx) = (tx.clone(), tx);
        // No deadlines: only the host link's death detection can end these.
        s.spawn(move || mailbox_tx.send(("mailbox", mailbox.recv().err())).unwrap());
        s.spawn(move || topic_tx.send(("topic", subscription.recv().err())).unwrap());
        std::thread::sleep(Duration::from_millis(300));
        pair.b.kill9();
        let mut ended: Vec<_> =
            (0..2).map(|_| rx.recv_timeout(WATCHDOG).expect("no hang")).collect();
        ended.sort_by_key(|(what, _)| *what);
        assert_eq!(
            ended,
            [("mailbox", Some(RecvError::Closed)), ("topic", Some(RecvError::Closed))]
        );
    });
    wait_until("the links to b closed", || {
        sender.send("lost?").is_err() && inbox.send("lost?").is_err()
    });
    assert!(matches!(sender.send("x"), Err(SendError::Disconnected(_))));

    // New links to b's names fail as unreachable, each within the bound.
    let result = node_a.connect("jobs@b");
    assert!(matches!(result, Err(ConnectError::Unreachable(_))), "{result:?}");
    let result = node_a.mailbox("jobs@b").open();
    assert!(matches!(result, Err(OpenError::Unreachable(_))), "{result:?}");
    let result = node_a.publish("news@b", "anyone?");
    assert!(matches!(result, Err(SendError::Unreachable(_))), "{result:?}");
    let result = node_a.subscribe("news@b");
    assert!(matches!(result, Err(ConnectError::Unreachable(_))), "{result:?}");
    let result = node_a.send_to(peer, Message::new(b"anyone?".to_vec()));
    assert!(matches!(result, Err(SendError::Unreachable(_))), "{result:?}");
}
