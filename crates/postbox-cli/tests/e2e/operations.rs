//! The operations and their error forms, between this test process and worker processes.

use std::collections::BTreeSet;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use postbox::{
    CallError, ConnectError, Message, OpenError, RecvTimeoutError, Selector, SendTimeoutError,
    TryRecvError, TrySendError,
};

use crate::util::{wait_until, Daemon, WATCHDOG};

#[test]
fn direct_addressing_reports_the_true_sender_and_recv_from_selects_it() {
    let daemon = Daemon::start();
    let node = daemon.node();
    let me = node.process_id().to_string();
    let mut first = daemon.worker(&["send-to", &me, "a1", "a2"]);
    first.wait_success();
    let mut second = daemon.worker(&["send-to", &me, "b1"]);
    second.wait_success();
    let (a, b) = (first.process_id(), second.process_id());
    assert_ne!(a, b);
    let picked = node.inbox().recv_from_timeout(b, WATCHDOG).unwrap();
    assert_eq!((picked.sender(), picked.body()), (b, &b"b1"[..]));
    let rest: Vec<_> = (0..2)
        .map(|_| {
            let e = node.inbox().recv_timeout(WATCHDOG).unwrap();
            (e.sender(), e.body().to_vec())
        })
        .collect();
    assert_eq!(rest, vec![(a, b"a1".to_vec()), (a, b"a2".to_vec())]);
    assert_eq!(node.inbox().try_recv().unwrap_err(), TryRecvError::Empty);
    assert_eq!(picked.sender_identity().uid, rustix::process::getuid().as_raw());
}

#[test]
fn send_to_a_process_that_is_not_attached_hands_the_message_back() {
    let daemon = Daemon::start();
    let node = daemon.node();
    let ghost = postbox::ProcessId::new(1, 999_999);
    match node.send_to(ghost, "anyone?") {
        Err(postbox::SendError::NoSuchPort(m)) => assert_eq!(m.body(), b"anyone?"),
        other => panic!("expected NoSuchPort, got {other:?}"),
    }
}

#[test]
fn a_name_held_by_a_live_process_cannot_be_taken() {
    let daemon = Daemon::start();
    let _holder = daemon.worker(&["hold", "taken"]);
    let node = daemon.node();
    assert_eq!(node.port("taken").open().unwrap_err(), OpenError::NameTaken("taken".into()));
    assert!(matches!(node.port("no spaces").open(), Err(OpenError::InvalidName(_))));
}

#[test]
fn unknown_names_fail_connect_with_no_such_port() {
    let daemon = Daemon::start();
    let node = daemon.node();
    assert!(matches!(node.connect("missing"), Err(ConnectError::NoSuchPort(_))));
}

#[test]
fn calls_from_many_threads_share_one_connection_and_get_their_own_replies() {
    let daemon = Daemon::start();
    let _server = daemon.worker(&["echo", "svc/pipe", "--threads", "2"]);
    let node = daemon.node();
    let connection = node.connect("svc/pipe").unwrap();
    std::thread::scope(|s| {
        for t in 0..8 {
            let connection = &connection;
            s.spawn(move || {
                for i in 0..200 {
                    let body = format!("thread {t} call {i}");
                    let reply = connection.call_timeout(body.as_str(), WATCHDOG).unwrap();
                    assert_eq!(reply.body(), body.as_bytes());
                }
            });
        }
    });
}

#[test]
fn several_threads_receive_from_one_port_and_each_message_is_taken_once() {
    let daemon = Daemon::start();
    let node = daemon.node();
    let port = node.port("work").open().unwrap();
    let mut senders: Vec<_> =
        (0..2).map(|_| daemon.worker(&["send-many", "work", "500"])).collect();
    let seen = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| loop {
                match port.recv_timeout(Duration::from_millis(1500)) {
                    Ok(e) => seen.lock().unwrap().push((e.sender(), e.body().to_vec())),
                    Err(RecvTimeoutError::Timeout) => return,
                    Err(e) => panic!("{e}"),
                }
            });
        }
    });
    for sender in &mut senders {
        sender.wait_success();
    }
    let seen = seen.into_inner().unwrap();
    assert_eq!(seen.len(), 1000);
    for sender in &senders {
        let bodies: BTreeSet<u64> = seen
            .iter()
            .filter(|(s, _)| *s == sender.process_id())
            .map(|(_, b)| String::from_utf8_lossy(b).parse().unwrap())
            .collect();
        assert_eq!(
            bodies,
            (0..500).collect(),
            "every message of {} exactly once",
            sender.process_id()
        );
    }
}

#[test]
fn a_full_link_makes_try_send_and_send_timeout_hand_the_message_back() {
    let daemon = Daemon::start();
    let _holder = daemon.worker(&["hold", "stuck"]);
    let node = daemon.node();
    let connection = node.connect("stuck").unwrap();
    let body = vec![7u8; 8192];
    let mut sent = 0;
    let refused = loop {
        match connection.try_send(Message::new(body.clone()).with_type(sent)) {
            Ok(()) => sent += 1,
            Err(e) => break e,
        }
        assert!(sent < 100_000, "the link never filled");
    };
    match refused {
        TrySendError::Full(m) => {
            assert_eq!(m.body(), &body[..]);
            assert_eq!(m.msg_type(), sent);
        }
        other => panic!("expected Full, got {other:?}"),
    }
    let started = Instant::now();
    match connection.send_timeout(Message::new(body.clone()), Duration::from_millis(200)) {
        Err(SendTimeoutError::Timeout(m)) => assert_eq!(m.body(), &body[..]),
        other => panic!("expected Timeout, got {other:?}"),
    }
    assert!(started.elapsed() >= Duration::from_millis(200));
}

#[test]
fn an_oversized_message_is_refused_with_the_message_handed_back() {
    let daemon = Daemon::start_with(&["--max-message-size", "1024"]);
    let _server = daemon.worker(&["echo", "small"]);
    let node = daemon.node();
    assert_eq!(node.max_message_size(), 1024);
    let connection = node.connect("small").unwrap();
    match connection.send(vec![0u8; 1025]) {
        Err(postbox::SendError::TooLarge { message, limit }) => {
            assert_eq!((message.body().len(), limit), (1025, 1024));
        }
        other => panic!("expected TooLarge, got {other:?}"),
    }
    match connection.call(vec![1u8; 2000]) {
        Err(CallError::TooLarge { message, .. }) => assert_eq!(message.body().len(), 2000),
        other => panic!("expected TooLarge, got {other:?}"),
    }
    let reply = connection.call(vec![2u8; 1024]).unwrap();
    assert_eq!(reply.body().len(), 1024);
}

#[test]
fn call_errors_distinguish_timeout_no_reply_and_remote_failure() {
    let daemon = Daemon::start();
    let _slow = daemon.worker(&["echo", "slow", "--delay-ms", "2000"]);
    let _mute = daemon.worker(&["echo", "mute", "--no-reply"]);
    let _failing = daemon.worker(&["echo", "failing", "--fail"]);
    let node = daemon.node();
    let slow = node.connect("slow").unwrap();
    assert_eq!(slow.call_timeout("x", Duration::from_millis(100)), Err(CallError::Timeout(None)));
    // The late reply to the abandoned call is discarded; the next call gets its own reply.
    assert_eq!(slow.call_timeout("y", WATCHDOG).unwrap().body(), b"y");
    let mute = node.connect("mute").unwrap();
    assert_eq!(mute.call_timeout("x", WATCHDOG), Err(CallError::NoReply));
    let failing = node.connect("failing").unwrap();
    match failing.call_timeout("why", WATCHDOG) {
        Err(CallError::Remote(m)) => assert_eq!(m.body(), b"why"),
        other => panic!("expected Remote, got {other:?}"),
    }
}

#[test]
fn receive_forms_time_out_and_report_empty() {
    let daemon = Daemon::start();
    let node = daemon.node();
    let port = node.port("idle").open().unwrap();
    assert_eq!(port.try_recv().unwrap_err(), TryRecvError::Empty);
    let started = Instant::now();
    assert_eq!(
        port.recv_timeout(Duration::from_millis(100)).unwrap_err(),
        RecvTimeoutError::Timeout
    );
    assert!(started.elapsed() >= Duration::from_millis(100));
    let deadline = Instant::now() + Duration::from_millis(50);
    assert_eq!(port.recv_deadline(deadline).unwrap_err(), RecvTimeoutError::Timeout);
}

#[test]
fn a_closed_port_releases_its_name_and_fails_its_clients() {
    let daemon = Daemon::start();
    let node = daemon.node();
    let port = node.port("short-lived").open().unwrap();
    let client_node = daemon.node();
    let connection = client_node.connect("short-lived").unwrap();
    connection.send("before close").unwrap();
    assert_eq!(port.recv_timeout(WATCHDOG).unwrap().body(), b"before close");
    drop(port);
    wait_until("the client sees the link closed", || connection.send("after").is_err());
    let again = node.port("short-lived").open();
    assert!(again.is_ok(), "{again:?}");
}

#[test]
fn large_messages_cross_intact() {
    let daemon = Daemon::start();
    let _server = daemon.worker(&["echo", "big"]);
    let node = daemon.node();
    let connection = node.connect("big").unwrap();
    let body: Vec<u8> = (0..4 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
    let reply = connection.call_timeout(body.clone(), WATCHDOG).unwrap();
    assert!(reply.body() == body, "4 MiB echoed intact");
}

#[test]
fn a_try_send_does_not_wait_behind_a_send_blocked_on_a_full_link() {
    let daemon = Daemon::start();
    let mut holder = daemon.worker(&["hold", "clogged"]);
    let node = daemon.node();
    let connection = node.connect("clogged").unwrap();
    let sent = std::sync::atomic::AtomicUsize::new(0);
    std::thread::scope(|s| {
        let blocked = s.spawn(|| {
            // Fills the link, then blocks in send until the holder dies.
            loop {
                if connection.send(vec![0u8; 64 * 1024]).is_err() {
                    return;
                }
                sent.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
        });
        // Full for a while, not just between two of the blocked sender's writes: the blocked
        // sender has sent nothing for 300 ms (on a loaded machine a sender preempted in the
        // middle of a write holds the gate, and a probe alone would take that for "full").
        // Probes as large as the blocked sender's messages: a smaller one could fit in what
        // the link's byte quota has left.
        let big = |fill: u8| vec![fill; 64 * 1024];
        let full = || matches!(connection.try_send(big(1)), Err(TrySendError::Full(_)));
        wait_until("the link is full", || {
            let before = sent.load(std::sync::atomic::Ordering::SeqCst);
            full() && {
                std::thread::sleep(Duration::from_millis(300));
                full() && sent.load(std::sync::atomic::Ordering::SeqCst) == before
            }
        });
        let late = connection.send_timeout(big(2), Duration::from_millis(100));
        // Unblock the sender before judging, so that a failure fails instead of hanging.
        holder.kill9();
        blocked.join().unwrap();
        match late {
            Err(SendTimeoutError::Timeout(m)) => assert_eq!(m.body(), big(2)),
            other => panic!("expected Timeout, got {other:?}"),
        }
    });
}

#[test]
fn a_reply_over_the_size_limit_fails_the_call_instead_of_leaving_it_waiting() {
    let daemon = Daemon::start_with(&["--max-message-size", "4096"]);
    let _server = daemon.worker(&["echo", "verbose", "--reply-size", "5000"]);
    let node = daemon.node();
    let connection = node.connect("verbose").unwrap();
    // No deadline: only the server's error reply can end this call.
    match connection.call("short question") {
        Err(CallError::Remote(m)) => {
            let text = String::from_utf8_lossy(m.body()).into_owned();
            assert!(text.contains("exceeds the limit of 4096"), "{text}");
        }
        other => panic!("expected Remote, got {other:?}"),
    }
}

#[test]
fn opening_a_name_this_node_already_holds_leaves_the_open_port_working() {
    let daemon = Daemon::start();
    let node = daemon.node();
    let port = node.port("mine").open().unwrap();
    assert_eq!(node.port("mine").open().unwrap_err(), OpenError::NameTaken("mine".into()));
    let output = daemon.postbox(&["send", "mine", "still delivered"]);
    assert!(output.status.success());
    assert_eq!(port.recv_timeout(WATCHDOG).unwrap().body(), b"still delivered");
}

#[test]
fn a_receiver_waiting_for_one_sender_leaves_a_flooding_sender_blocked_not_buffered() {
    let daemon = Daemon::start();
    let node = daemon.node();
    let inbox_sender = daemon.node();
    let port = node.port("flooded").open().unwrap();
    let mut flood = daemon.worker(&["send-many", "flooded", "200000"]);
    let quiet = inbox_sender.process_id();
    // Waiting only for `quiet` must not pull the whole flood into this process.
    assert_eq!(
        port.recv_from_timeout(quiet, Duration::from_millis(1500)).unwrap_err(),
        RecvTimeoutError::Timeout
    );
    assert!(flood.child.try_wait().unwrap().is_none(), "the flooding sender is held back");
    for expected in 0..200_000u64 {
        let envelope = port.recv_timeout(WATCHDOG).unwrap();
        assert_eq!(envelope.body(), expected.to_string().as_bytes());
    }
    flood.wait_success();
}

#[test]
fn a_port_delivers_highest_priority_first_and_selects_by_type_like_msgrcv() {
    let daemon = Daemon::start();
    let node = daemon.node();
    let port = node.port("ordered").open().unwrap();
    let specs = ["0/1/a", "5/2/b", "5/1/c", "31/3/d", "0/2/e", "5/1/f"];
    let mut args = vec!["send-spec", "ordered"];
    args.extend(specs);
    let mut sender = daemon.worker(&args);
    sender.wait_success();
    // Everything is in the link now; the first receive reads it all into the port's queue.
    let take = |selector: Selector| {
        let envelope = port.recv_matching_timeout(selector, WATCHDOG).unwrap();
        String::from_utf8(envelope.body().to_vec()).unwrap()
    };
    assert_eq!(take(Selector::ANY.of_type(2)), "b", "type 2, priority 5 before priority 0");
    assert_eq!(take(Selector::ANY.type_at_most(2)), "c", "lowest type ≤ 2 is 1; priority 5 first");
    assert_eq!(take(Selector::from_sender(sender.process_id())), "d", "priority 31 first");
    let rest: Vec<String> = (0..3).map(|_| take(Selector::ANY)).collect();
    assert_eq!(rest, ["f", "a", "e"], "priority 5, then priority 0 in arrival order");
    assert_eq!(port.try_recv().unwrap_err(), TryRecvError::Empty);
}

#[test]
fn what_a_sender_sent_before_it_exited_is_delivered_even_after_a_selective_poll() {
    let daemon = Daemon::start();
    let node = daemon.node();
    let port = node.port("leftovers").open().unwrap();
    let mut sender = daemon.worker(&["send-many", "leftovers", "2"]);
    sender.wait_success();
    // Looking for someone else reads the departed sender's messages and its end of stream.
    let nobody = Selector::from_sender(node.process_id());
    let looked = port.recv_matching_timeout(nobody, Duration::from_millis(300));
    assert_eq!(looked.unwrap_err(), RecvTimeoutError::Timeout);
    assert_eq!(port.recv_timeout(WATCHDOG).unwrap().body(), b"0");
    assert_eq!(port.recv_timeout(WATCHDOG).unwrap().body(), b"1");
}
