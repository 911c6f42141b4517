//! Mailboxes: owned by the broker, outliving their creators, many senders and receivers,
//! each message to exactly one receiver, redelivery when a receiver dies holding one.

use std::collections::BTreeMap;
use std::time::Duration;

use postbox::{OpenError, RecvTimeoutError};

use crate::util::{stderr_of, stdout_of, wait_until, Daemon, WATCHDOG};

#[test]
fn a_mailbox_outlives_its_creator_and_gives_each_message_to_exactly_one_receiver() {
    let daemon = Daemon::start();
    let created = daemon.postbox(&["mailbox", "create", "/jobs", "--capacity", "50"]);
    assert!(created.status.success(), "{}", stderr_of(&created));
    // The creating process has exited; the mailbox is still there.
    let mut receivers: Vec<_> =
        (0..3).map(|_| daemon.worker(&["mailbox-worker", "/jobs"])).collect();
    let lines: Vec<_> = receivers.iter_mut().map(|r| r.lines()).collect();
    let mut senders: Vec<_> =
        (0..2).map(|_| daemon.worker(&["send-many", "/jobs", "100"])).collect();
    for sender in &mut senders {
        sender.wait_success();
    }
    let mut seen: BTreeMap<(String, String), usize> = BTreeMap::new();
    let mut per_receiver = vec![0; 3];
    let deadline = std::time::Instant::now() + WATCHDOG;
    while seen.values().sum::<usize>() < 200 {
        assert!(std::time::Instant::now() < deadline, "receivers stalled: {per_receiver:?}");
        for (index, lines) in lines.iter().enumerate() {
            while let Ok(line) = lines.recv_timeout(Duration::from_millis(20)) {
                let mut parts = line.splitn(3, ' ');
                let (_, sender, body) =
                    (parts.next(), parts.next().unwrap(), parts.next().unwrap());
                *seen.entry((sender.to_owned(), body.to_owned())).or_default() += 1;
                per_receiver[index] += 1;
            }
        }
    }
    assert_eq!(seen.len(), 200, "every message of both senders");
    assert!(seen.values().all(|&n| n == 1), "each delivered exactly once");
    for sender in &senders {
        for i in 0..100 {
            assert!(seen.contains_key(&(sender.process_id().to_string(), i.to_string())));
        }
    }
}

#[test]
fn a_message_held_by_a_receiver_killed_before_taking_it_goes_to_another() {
    let daemon = Daemon::start();
    let node = daemon.node();
    let jobs = node.mailbox("/precious").create().unwrap();
    node.connect("/precious").unwrap().send("only copy").unwrap();
    let mut hog = daemon.worker(&["mailbox-hog", "/precious"]);
    let lines = hog.lines();
    assert_eq!(lines.recv_timeout(WATCHDOG).unwrap(), "holding only copy");
    assert_eq!(jobs.try_recv().unwrap_err(), postbox::TryRecvError::Empty, "it is in flight");
    hog.kill9();
    let envelope = jobs.recv_timeout(WATCHDOG).unwrap();
    assert_eq!(envelope.body(), b"only copy");
    assert_eq!(envelope.sender(), node.process_id());
}

#[test]
fn a_mailbox_holds_at_most_its_capacity_across_senders() {
    let daemon = Daemon::start();
    let node = daemon.node();
    let small = node.mailbox("/small").capacity(3).create().unwrap();
    let (a, b) = (node.connect("/small").unwrap(), daemon.node().connect("/small").unwrap());
    a.send("1").unwrap();
    b.send("2").unwrap();
    a.send("3").unwrap();
    wait_until("the broker has read the three", || {
        node.stat("/small").unwrap().counters.queued == 3
    });
    // The fourth message waits at the broker's door: it is not taken in.
    b.send("4").unwrap();
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(node.stat("/small").unwrap().counters.queued, 3);
    let bodies: Vec<Vec<u8>> =
        (0..4).map(|_| small.recv_timeout(WATCHDOG).unwrap().body().to_vec()).collect();
    assert_eq!(bodies.len(), 4);
    assert!(bodies.contains(&b"4".to_vec()), "let in once there was room");
}

#[test]
fn unlinking_a_mailbox_closes_it_for_receivers_and_frees_the_name() {
    let daemon = Daemon::start();
    let node = daemon.node();
    let doomed = node.mailbox("/doomed").create().unwrap();
    assert_eq!(
        node.mailbox("/doomed").create().unwrap_err(),
        OpenError::NameTaken("/doomed".into())
    );
    assert!(node.port("/doomed").open().is_err(), "a port cannot take a mailbox's name");
    let receiver = daemon.node();
    let reader = receiver.mailbox("/doomed").open().unwrap();
    std::thread::scope(|s| {
        let waiting = s.spawn(|| reader.recv_timeout(WATCHDOG));
        std::thread::sleep(Duration::from_millis(200));
        node.unlink_mailbox("/doomed").unwrap();
        assert_eq!(waiting.join().unwrap().unwrap_err(), RecvTimeoutError::Closed);
    });
    drop(doomed);
    assert!(matches!(node.mailbox("/doomed").open(), Err(OpenError::NotFound(_))));
    node.mailbox("/doomed").create().unwrap();
}

#[test]
fn the_cli_creates_sends_to_receives_from_lists_and_unlinks_mailboxes() {
    let daemon = Daemon::start();
    assert!(daemon.postbox(&["mailbox", "create", "/cli", "--capacity", "10"]).status.success());
    assert!(daemon.postbox(&["send", "/cli", "first"]).status.success());
    assert!(daemon.postbox(&["send", "/cli", "second"]).status.success());
    let listing = stdout_of(&daemon.postbox(&["ls"]));
    let row = listing.lines().find(|l| l.starts_with("/cli")).expect("the mailbox is listed");
    let columns: Vec<&str> = row.split_whitespace().collect();
    assert_eq!((columns[1], columns[6]), ("mailbox", "2"), "two queued: {row}");
    let received = daemon.postbox(&["recv", "/cli", "--count", "2", "--timeout", "5s"]);
    assert!(received.status.success(), "{}", stderr_of(&received));
    assert_eq!(stdout_of(&received), "first\nsecond\n");
    assert!(daemon.postbox(&["mailbox", "unlink", "/cli"]).status.success());
    let gone = daemon.postbox(&["send", "/cli", "late"]);
    assert!(!gone.status.success());
}
