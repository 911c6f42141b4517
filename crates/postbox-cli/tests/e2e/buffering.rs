//! Buffering per link across processes: exact capacity by credits, rendezvous, confirmed
//! sends, the overflow policies, byte caps and message sizes.

use std::sync::mpsc::Receiver;
use std::time::Duration;

use postbox::{Message, Overflow, SendError, TrySendError};

use crate::util::{Daemon, WATCHDOG};

/// How long a sender that should be held back is watched for a step it must not take.
const HELD: Duration = Duration::from_millis(500);

fn next_line(lines: &Receiver<String>) -> String {
    lines.recv_timeout(WATCHDOG).expect("the worker reported in time")
}

fn assert_held(lines: &Receiver<String>) {
    if let Ok(line) = lines.recv_timeout(HELD) {
        panic!("the sender should be held back, but reported {line:?}");
    }
}

#[test]
fn a_bounded_port_lets_exactly_its_capacity_through_until_messages_are_taken() {
    let daemon = Daemon::start();
    let node = daemon.node();
    let port = node.port("three").capacity(3).open().unwrap();
    let mut sender = daemon.worker(&["send-many", "three", "6", "--report"]);
    let lines = sender.lines();
    for i in 0..3 {
        assert_eq!(next_line(&lines), format!("sent {i}"));
    }
    assert_held(&lines);
    for i in 0..3 {
        assert_eq!(port.recv_timeout(WATCHDOG).unwrap().body(), i.to_string().as_bytes());
        assert_eq!(next_line(&lines), format!("sent {}", i + 3), "one taken, one more let through");
    }
    sender.wait_success();
}

#[test]
fn try_send_counts_the_capacity_of_a_port_in_another_process() {
    let daemon = Daemon::start();
    let _holder = daemon.worker(&["hold", "quota", "--capacity", "5"]);
    let node = daemon.node();
    let connection = node.connect("quota").unwrap();
    for i in 0..5 {
        connection.try_send(format!("m{i}").as_str()).unwrap();
    }
    match connection.try_send("one too many") {
        Err(TrySendError::Full(m)) => assert_eq!(m.body(), b"one too many"),
        other => panic!("expected Full, got {other:?}"),
    }
    assert_eq!(connection.in_flight(), 5);
}

#[test]
fn a_rendezvous_send_returns_only_once_the_receiver_has_taken_the_message() {
    let daemon = Daemon::start();
    let node = daemon.node();
    let port = node.port("meet").capacity(0).open().unwrap();
    let mut sender = daemon.worker(&["send-many", "meet", "2", "--report"]);
    let lines = sender.lines();
    assert_held(&lines);
    assert_eq!(port.recv_timeout(WATCHDOG).unwrap().body(), b"0");
    assert_eq!(next_line(&lines), "sent 0");
    assert_held(&lines);
    assert_eq!(port.recv_timeout(WATCHDOG).unwrap().body(), b"1");
    assert_eq!(next_line(&lines), "sent 1");
    sender.wait_success();
}

#[test]
fn send_confirmed_waits_for_the_receiver_even_with_room_in_the_link() {
    let daemon = Daemon::start();
    let node = daemon.node();
    let port = node.port("roomy").capacity(100).open().unwrap();
    let mut sender = daemon.worker(&["send-many", "roomy", "1", "--report", "--confirmed"]);
    let lines = sender.lines();
    assert_held(&lines);
    assert_eq!(port.recv_timeout(WATCHDOG).unwrap().body(), b"0");
    assert_eq!(next_line(&lines), "sent 0");
    sender.wait_success();
}

#[test]
fn a_port_that_fails_when_full_hands_the_message_back_at_once() {
    let daemon = Daemon::start();
    let _holder = daemon.worker(&["hold", "strict", "--capacity", "2", "--overflow", "fail"]);
    let node = daemon.node();
    let connection = node.connect("strict").unwrap();
    assert_eq!(connection.spec().overflow, Overflow::Fail);
    connection.send("a").unwrap();
    connection.send("b").unwrap();
    // A blocking send, yet it returns: the port's policy is to fail.
    match connection.send("c") {
        Err(SendError::Full(m)) => assert_eq!(m.body(), b"c"),
        other => panic!("expected Full, got {other:?}"),
    }
}

#[test]
fn drop_oldest_keeps_the_newest_and_reports_the_gap_to_the_receiver() {
    let daemon = Daemon::start();
    let node = daemon.node();
    let port = node.port("latest").capacity(3).overflow(Overflow::DropOldest).open().unwrap();
    // The sender never waits, though nobody receives while it sends.
    let mut sender = daemon.worker(&["send-many", "latest", "10"]);
    sender.wait_success();
    let first = port.recv_timeout(WATCHDOG).unwrap();
    assert_eq!(first.body(), b"7");
    assert_eq!(first.lost(), 7, "0 to 6 were dropped");
    for expected in ["8", "9"] {
        let envelope = port.recv_timeout(WATCHDOG).unwrap();
        assert_eq!((envelope.body(), envelope.lost()), (expected.as_bytes(), 0));
    }
    assert_eq!(port.stats().lost, 7);
}

#[test]
fn an_unbounded_port_caps_bytes_and_refuses_what_could_never_fit() {
    let daemon = Daemon::start();
    let _holder = daemon.worker(&["hold", "bytes", "--unbounded", "1000"]);
    let node = daemon.node();
    let connection = node.connect("bytes").unwrap();
    for _ in 0..10 {
        connection.try_send(vec![0u8; 100]).unwrap();
    }
    assert!(matches!(connection.try_send(vec![0u8; 100]), Err(TrySendError::Full(_))));
    match connection.try_send(vec![0u8; 1001]) {
        Err(TrySendError::TooLarge { limit, .. }) => assert_eq!(limit, 1000),
        other => panic!("expected TooLarge, got {other:?}"),
    }
}

#[test]
fn a_port_with_a_message_size_refuses_larger_messages_clearly() {
    let daemon = Daemon::start();
    let _holder = daemon.worker(&["hold", "tiny", "--message-size", "16"]);
    let node = daemon.node();
    let connection = node.connect("tiny").unwrap();
    assert_eq!(connection.spec().message_size, Some(16));
    connection.send(Message::new(vec![1u8; 16])).unwrap();
    match connection.send(Message::new(vec![1u8; 17])) {
        Err(SendError::TooLarge { message, limit }) => {
            assert_eq!((message.body().len(), limit), (17, 16));
        }
        other => panic!("expected TooLarge, got {other:?}"),
    }
}

#[test]
fn stat_and_ls_show_queued_and_lost_counts_from_the_ports_owner() {
    let daemon = Daemon::start();
    let _holder = daemon.worker(&["hold", "gauge", "--capacity", "3", "--overflow", "drop-oldest"]);
    let node = daemon.node();
    let connection = node.connect("gauge").unwrap();
    for i in 0..10 {
        connection.send(format!("{i}").as_str()).unwrap();
    }
    let status = node.stat("gauge").unwrap();
    assert_eq!((status.counters.queued, status.counters.lost, status.counters.links), (3, 7, 1));
    let output = daemon.postbox(&["stat", "gauge"]);
    assert!(output.status.success(), "{}", crate::util::stderr_of(&output));
    let text = crate::util::stdout_of(&output);
    assert!(text.contains("queued    3") && text.contains("lost      7"), "{text}");
    assert!(text.contains("bounded 3, drop-oldest"), "{text}");
    let listing = crate::util::stdout_of(&daemon.postbox(&["ls"]));
    let row = listing.lines().find(|l| l.starts_with("gauge")).expect("a row for gauge");
    let columns: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(&columns[6..8], ["3", "7"], "{row}");
    assert!(node.stat("nothing-here").is_err());
}
