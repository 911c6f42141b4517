//! Topics across processes: every matching subscriber gets every message, patterns select
//! topics, a slow subscriber loses its oldest (counted) and holds up nobody, late joiners get
//! only new messages unless the topic keeps a history.

use std::io::Read;
use std::process::Stdio;

use postbox::{Overflow, TryRecvError};

use crate::util::{stderr_of, stdout_of, Daemon, WATCHDOG};

fn bodies(subscription: &postbox::Subscription, count: usize) -> Vec<String> {
    (0..count)
        .map(|_| {
            let envelope = subscription.recv_timeout(WATCHDOG).expect("a publication in time");
            String::from_utf8(envelope.body().to_vec()).unwrap()
        })
        .collect()
}

#[test]
fn every_matching_subscriber_gets_every_message_in_order() {
    let daemon = Daemon::start();
    let node = daemon.node();
    let all = node.subscribe("/s/*").unwrap();
    let imu = node.subscribe("/s/imu").unwrap();
    let other = node.subscribe("/other/**").unwrap();
    let mut imu_publisher = daemon.worker(&["publish-many", "/s/imu", "100"]);
    let mut gps_publisher = daemon.worker(&["publish-many", "/s/gps", "50"]);
    imu_publisher.wait_success();
    gps_publisher.wait_success();
    let expected: Vec<String> = (0..100).map(|i| i.to_string()).collect();
    assert_eq!(bodies(&imu, 100), expected);
    let mut from_all: Vec<(String, String)> = (0..150)
        .map(|_| {
            let e = all.recv_timeout(WATCHDOG).unwrap();
            (e.topic().unwrap().to_owned(), String::from_utf8(e.body().to_vec()).unwrap())
        })
        .collect();
    let imu_order: Vec<&String> =
        from_all.iter().filter(|(t, _)| t == "/s/imu").map(|(_, b)| b).collect();
    assert_eq!(imu_order, expected.iter().collect::<Vec<_>>(), "per topic, in publication order");
    from_all.sort();
    from_all.dedup();
    assert_eq!(from_all.len(), 150);
    assert_eq!(other.try_recv().unwrap_err(), TryRecvError::Empty);
    let listing = stdout_of(&daemon.postbox(&["ls"]));
    let row = listing.lines().find(|l| l.starts_with("/s/imu")).expect("the topic is listed");
    assert_eq!(row.split_whitespace().nth(1), Some("topic"), "{row}");
}

#[test]
fn a_slow_subscriber_loses_its_oldest_and_holds_up_nobody() {
    let daemon = Daemon::start();
    let node = daemon.node();
    let slow =
        node.subscription("/fast").capacity(8).overflow(Overflow::DropOldest).open().unwrap();
    // Room for the whole burst: this one loses nothing, however the threads are scheduled.
    let fast = daemon.node().subscription("/fast").capacity(8192).open().unwrap();
    let mut publisher = daemon.worker(&["publish-many", "/fast", "5000"]);
    std::thread::scope(|s| {
        let reader = s.spawn(|| bodies(&fast, 5000));
        // The publisher finishes though one subscriber reads nothing.
        publisher.wait_success();
        let got = reader.join().unwrap();
        assert_eq!(got, (0..5000).map(|i| i.to_string()).collect::<Vec<_>>());
    });
    // Everything the slow subscriber gets, and the gaps it is told of, add up to all 5000.
    let mut received = Vec::new();
    let mut lost = 0;
    while let Ok(envelope) = slow.recv_timeout(std::time::Duration::from_millis(500)) {
        lost += envelope.lost();
        received.push(String::from_utf8(envelope.body().to_vec()).unwrap());
    }
    assert!(lost > 0, "the slow subscriber is told what it lost");
    assert_eq!(received.len() as u64 + lost, 5000, "every message received or counted lost");
    assert!(received.len() <= 16, "at most its queue and its window: {}", received.len());
    assert_eq!(received.last().map(String::as_str), Some("4999"), "the newest survives");
}

#[test]
fn late_subscribers_get_only_new_messages_unless_the_topic_keeps_history() {
    let daemon = Daemon::start();
    let node = daemon.node();
    node.create_topic("/kept", 3).unwrap();
    for i in 0..5 {
        node.publish("/kept", i.to_string().as_str()).unwrap();
        node.publish("/plain", i.to_string().as_str()).unwrap();
    }
    // Publications are asynchronous: a probe subscriber marks when the broker has them all.
    let probe = node.subscribe("/probe").unwrap();
    node.publish("/probe", "after").unwrap();
    assert_eq!(bodies(&probe, 1), ["after"]);
    let kept = daemon.node().subscribe("/kept").unwrap();
    let plain = daemon.node().subscribe("/plain").unwrap();
    assert_eq!(bodies(&kept, 3), ["2", "3", "4"]);
    node.publish("/kept", "5").unwrap();
    node.publish("/plain", "5").unwrap();
    assert_eq!(bodies(&kept, 1), ["5"]);
    assert_eq!(bodies(&plain, 1), ["5"], "nothing from before it joined");
}

#[test]
fn the_cli_publishes_and_subscribes() {
    let daemon = Daemon::start();
    let mut sub = daemon
        .command(&["sub", "/t/*", "--count", "2", "--timeout", "20s", "--show-topic"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait for "subscribed" before publishing.
    let mut stderr = sub.stderr.take().unwrap();
    let mut seen = Vec::new();
    let mut byte = [0u8; 1];
    while !String::from_utf8_lossy(&seen).contains("subscribed") {
        assert_eq!(stderr.read(&mut byte).unwrap(), 1, "the subscriber started");
        seen.push(byte[0]);
    }
    assert!(daemon.postbox(&["pub", "/t/a", "hello"]).status.success());
    let published = daemon.postbox(&["pub", "/t/b", "there"]);
    assert!(published.status.success(), "{}", stderr_of(&published));
    let output = sub.wait_with_output().unwrap();
    assert!(output.status.success());
    assert_eq!(String::from_utf8_lossy(&output.stdout), "/t/a: hello\n/t/b: there\n");
}
