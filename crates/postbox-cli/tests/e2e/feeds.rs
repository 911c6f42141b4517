//! Feeds between processes: an end killed with SIGKILL at any moment leaves the other end
//! every message that was in the ring, then `Disconnected` (never a hang or a panic), a new
//! feed that works at once, and no segment behind.
//!
//! The ends are `postbox worker feed-send`, `feed-recv` and `feed-sink`, which carry numbered
//! 8-byte messages (0, 1, … as little-endian u64) and print what they sent or received; the
//! test process plays one end where it must watch a send or a receive itself.

use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use postbox::{FeedReceiver, FeedRecvError, FeedSendError, FeedSender, Port};

use crate::shm::{join_within_watchdog, next_random, seed, segments_of, MAX_KILL_DELAY_US};
use crate::util::{wait_until, Daemon, WATCHDOG};

#[test]
fn killing_a_feed_sender_waiting_for_room_leaves_the_receiver_every_message_then_disconnected() {
    let daemon = Daemon::start();
    let node = daemon.node();
    let port = node.port("feed-full").open().unwrap();
    let mut sender = daemon.worker(&["feed-send", "feed-full", "--every", "1"]);
    let feed = accept(&port);
    let lines = sender.lines();
    assert_eq!(next_line(&lines, "the feed opened"), "opened");
    // Nobody receives: the sender fills the ring, then waits for room and prints no more.
    let mut last = None;
    let deadline = Instant::now() + WATCHDOG;
    loop {
        match lines.recv_timeout(QUIET) {
            Ok(line) => last = Some(line),
            Err(RecvTimeoutError::Timeout) => break,
            Err(RecvTimeoutError::Disconnected) => panic!("the sender ended after {last:?}"),
        }
        assert!(Instant::now() < deadline, "the sender never waited for room");
    }
    sender.kill9();
    let mut printed = vec![last.expect("the sender sent something")];
    printed.extend(rest_of(&lines));
    let sent = last_sent(&printed);
    assert!(sent > 0);
    let (received, end, mut feed) = join_within_watchdog("the drain", receiving(feed, 0));
    assert_eq!(end, FeedRecvError::Disconnected, "after {received} of {sent}");
    // A kill between a push and its line leaves one message more than printed.
    assert!(received == sent || received == sent + 1, "received {received}, sent {sent}");
    assert_eq!(feed.recv_timeout(WATCHDOG), Err(FeedRecvError::Disconnected));
}

/// A killed sender, unlike a dropped one, never marks its doorbell closed, and
/// `FeedReceiver::try_recv_into` asks the link only on every 1024th empty look: once `recv`
/// said `Disconnected`, `try_recv` must go on saying so (it said `Empty` 1023 times out of
/// 1024 before the receiver remembered it).
#[test]
fn a_receiver_told_its_killed_sender_is_gone_keeps_saying_disconnected() {
    let daemon = Daemon::start();
    let node = daemon.node();
    let port = node.port("feed-sticky").open().unwrap();
    let mut sender = daemon.worker(&["feed-send", "feed-sticky", "--count", "1000000000"]);
    let receiver = receiving(accept(&port), 0);
    let lines = sender.lines();
    assert_eq!(line_starting(&lines, "sent 1000"), "sent 1000");
    sender.kill9();
    let (_, end, mut feed) = join_within_watchdog("receiving until the end", receiver);
    assert_eq!(end, FeedRecvError::Disconnected);
    let looks: Vec<_> = (0..2000).map(|_| feed.try_recv()).collect();
    let empty = looks.iter().filter(|look| **look == Err(FeedRecvError::Empty)).count();
    assert_eq!(empty, 0, "{empty} of 2000 try_recv calls after Disconnected said Empty");
}

#[test]
fn killing_a_feed_sender_mid_stream_leaves_the_receiver_every_message_in_order_then_disconnected() {
    let daemon = Daemon::start();
    let node = daemon.node();
    let port = node.port("feed-stream").open().unwrap();
    let mut sender = daemon.worker(&["feed-send", "feed-stream", "--every", "1000"]);
    let receiver = receiving(accept(&port), 0);
    let lines = sender.lines();
    assert_eq!(next_line(&lines, "the feed opened"), "opened");
    // Well into the stream: the receiver keeps up, so the ring is anywhere from empty to full.
    assert_eq!(line_starting(&lines, "sent 20000"), "sent 20000");
    sender.kill9();
    let sent = last_sent(&rest_of(&lines)).max(20_000);
    let (received, end, _feed) = join_within_watchdog("receiving until the end", receiver);
    assert_eq!(end, FeedRecvError::Disconnected, "after {received} of {sent}");
    // Lines are printed every 1000 messages, after the send.
    assert!((sent..=sent + 1000).contains(&received), "received {received}, sent {sent}");
}

/// The async forms wait on the link's descriptors, which a killed process never writes:
/// the hang-up of its socket wakes them, once, and they must look at the socket then (found
/// by a review: a look rate-limited to one per interval could miss it and wait for good).
#[test]
fn async_ends_hear_of_a_peer_killed_while_they_wait() {
    let daemon = Daemon::start();
    let node = daemon.node();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    // An async receiver waiting on an empty feed whose sender is killed.
    let port = node.port("feed-async-recv").open().unwrap();
    let mut sender =
        daemon.worker(&["feed-send", "feed-async-recv", "--count", "10", "--every", "10"]);
    let mut feed = accept(&port);
    assert_eq!(line_starting(&sender.lines(), "done 10"), "done 10");
    let ended = runtime.block_on(async {
        let mut out = Vec::new();
        for i in 0..10u64 {
            feed.recv_into_async(&mut out).await.unwrap();
            assert_eq!(out, i.to_le_bytes());
        }
        let waiting = feed.recv_into_async(&mut out);
        let kill = async {
            tokio::time::sleep(Duration::from_millis(50)).await;
            sender.kill9();
        };
        let (ended, ()) = tokio::join!(tokio::time::timeout(WATCHDOG, waiting), kill);
        ended
    });
    assert_eq!(
        ended.expect("watchdog: the receiver never heard"),
        Err(FeedRecvError::Disconnected)
    );
    // An async sender waiting for room in a feed whose receiver is killed.
    let mut receiver = daemon.worker(&["feed-recv", "feed-async-send", "--stall"]);
    let mut feed = node.connect("feed-async-send").unwrap().open_feed_timeout(WATCHDOG).unwrap();
    assert!(fill(&mut feed) > 0);
    let ended = runtime.block_on(async {
        let waiting = feed.send_async(b"more");
        let kill = async {
            tokio::time::sleep(Duration::from_millis(50)).await;
            receiver.kill9();
        };
        let (ended, ()) = tokio::join!(tokio::time::timeout(WATCHDOG, waiting), kill);
        ended
    });
    assert_eq!(ended.expect("watchdog: the sender never heard"), Err(FeedSendError::Disconnected));
}

#[test]
fn killing_a_feed_receiver_disconnects_a_sender_waiting_for_room_and_one_trying_to_send() {
    let daemon = Daemon::start();
    let node = daemon.node();
    let mut first = daemon.worker(&["feed-recv", "stalled-a", "--stall"]);
    let mut second = daemon.worker(&["feed-recv", "stalled-b", "--stall"]);
    let (to_first, to_second) =
        (node.connect("stalled-a").unwrap(), node.connect("stalled-b").unwrap());
    let mut waiting = to_first.open_feed_timeout(WATCHDOG).unwrap();
    let mut trying = to_second.open_feed_timeout(WATCHDOG).unwrap();
    assert!(fill(&mut waiting) > 0 && fill(&mut trying) > 0);
    let waiting = thread::spawn(move || (waiting.send(b"more"), waiting));
    let trying = thread::spawn(move || {
        let mut full = 0u64;
        loop {
            match trying.try_send(b"more") {
                Err(FeedSendError::Full) => full += 1,
                other => return (other, full, trying),
            }
        }
    });
    thread::sleep(QUIET);
    assert!(!waiting.is_finished() && !trying.is_finished(), "the receivers live: both wait");
    first.kill9();
    second.kill9();
    let (sent, mut waiting) = join_within_watchdog("a send waiting for room", waiting);
    assert_eq!(sent, Err(FeedSendError::Disconnected));
    assert_eq!(waiting.try_send(b"again"), Err(FeedSendError::Disconnected));
    let (sent, full, mut trying) = join_within_watchdog("try_send in a loop", trying);
    assert_eq!(sent, Err(FeedSendError::Disconnected), "after {full} times full");
    assert!(full > 0, "it found the feed full first");
    assert_eq!(trying.send_timeout(b"again", WATCHDOG), Err(FeedSendError::Disconnected));
}

#[test]
fn after_a_killed_feed_peer_a_new_connection_and_feed_work_at_once() {
    let daemon = Daemon::start();
    let node = daemon.node();

    // The receiver killed: a new connection from the same node feeds a fresh receiver.
    let mut doomed = daemon.worker(&["feed-recv", "renewed-doomed", "--stall"]);
    let old = node.connect("renewed-doomed").unwrap();
    let mut feed = old.open_feed_timeout(WATCHDOG).unwrap();
    fill(&mut feed);
    doomed.kill9();
    let sending = thread::spawn(move || feed.send(b"more"));
    let sent = join_within_watchdog("a send to a dead receiver", sending);
    assert_eq!(sent, Err(FeedSendError::Disconnected));
    let mut fresh = daemon.worker(&["feed-recv", "renewed-fresh", "--every", "500"]);
    let lines = fresh.lines();
    let connection = node.connect("renewed-fresh").unwrap();
    let mut feed = connection.open_feed_timeout(WATCHDOG).unwrap();
    assert_eq!(next_line(&lines, "the feed accepted"), "accepted");
    send_counters(&mut feed, 0..1000);
    drop(feed);
    assert_eq!(rest_of(&lines), ["received 500", "received 1000", "ended 1000 Disconnected"]);
    fresh.wait_success();

    // The sender killed: the same port takes a feed from a fresh sender.
    let port = node.port("renewed-port").open().unwrap();
    let mut doomed = daemon.worker(&["feed-send", "renewed-port"]);
    let feed = accept(&port);
    let receiver = receiving(feed, 0);
    let lines = doomed.lines();
    assert_eq!(line_starting(&lines, "sent 5000"), "sent 5000");
    doomed.kill9();
    let (received, end, _feed) = join_within_watchdog("receiving from a killed sender", receiver);
    assert_eq!(end, FeedRecvError::Disconnected);
    assert!(received >= 5000);
    let mut fresh = daemon.worker(&["feed-send", "renewed-port", "--count", "1000"]);
    let (received, end, _feed) = join_within_watchdog("a fresh feed", receiving(accept(&port), 0));
    assert_eq!((received, end), (1000, FeedRecvError::Disconnected));
    fresh.wait_success();
}

#[test]
fn killed_feed_peers_leave_no_segment_behind() {
    let daemon = Daemon::start();
    // A node without links: what a survivor should hold once its peer's link is gone.
    let idle = daemon.worker(&["hold", "segments-idle"]);
    let none = segments_of(idle.child.id());

    // A receiving process lets go of the segment of a killed sender's link.
    let mut sink = daemon.worker(&["feed-sink", "segments-sink"]);
    let sink_lines = sink.lines();
    assert_eq!(segments_of(sink.child.id()), none);
    let mut sender = daemon.worker(&["feed-send", "segments-sink"]);
    let lines = sender.lines();
    assert_eq!(line_starting(&lines, "sent 1000"), "sent 1000");
    assert!(segments_of(sink.child.id()).descriptors >= 1, "the sink holds the feed's link");
    let pid = sender.process_id();
    sender.kill9();
    let ended = next_line(&sink_lines, "the feed's end");
    assert!(ended.starts_with(&format!("ended {pid} ")), "{ended}");
    assert!(ended.ends_with(" Disconnected"), "{ended}");
    wait_until("the sink lets go of the killed sender's segment", || {
        segments_of(sink.child.id()) == none
    });

    // A sending process (one waiting for room, one trying) lets go of a killed receiver's.
    for mode in [None, Some("--try-send")] {
        let name = format!("segments-stalled-{}", mode.is_some());
        let mut receiver = daemon.worker(&["feed-recv", &name, "--stall"]);
        let mut args = vec!["feed-send", &name, "--linger"];
        args.extend(mode);
        let mut sender = daemon.worker(&args);
        let lines = sender.lines();
        assert_eq!(next_line(&lines, "the feed opened"), "opened");
        assert!(segments_of(sender.child.id()).descriptors >= 1, "the sender holds its link");
        receiver.kill9();
        let error = line_starting(&lines, "error ");
        assert!(error.ends_with(" Disconnected"), "{error} ({mode:?})");
        wait_until(&format!("the sender lets go of its segment ({mode:?})"), || {
            segments_of(sender.child.id()) == none
        });
        assert!(sender.child.try_wait().unwrap().is_none(), "it lingers as told");
    }
}

#[test]
fn a_feed_between_two_processes_delivers_a_hundred_thousand_messages_in_order() {
    let daemon = Daemon::start();
    let mut receiver = daemon.worker(&["feed-recv", "feed-bulk", "--every", "10000"]);
    let received = receiver.lines();
    let mut sender =
        daemon.worker(&["feed-send", "feed-bulk", "--count", "100000", "--every", "10000"]);
    let sent = sender.lines();
    let started = Instant::now();
    let mut expected: Vec<String> = (1..=10).map(|i| format!("sent {}", i * 10_000)).collect();
    expected.insert(0, "opened".into());
    expected.push("done 100000".into());
    assert_eq!(rest_of(&sent), expected);
    sender.wait_success();
    let mut expected: Vec<String> = (1..=10).map(|i| format!("received {}", i * 10_000)).collect();
    expected.insert(0, "accepted".into());
    // The receiver checks each message's number (one out of order ends it with status 1).
    expected.push("ended 100000 Disconnected".into());
    assert_eq!(rest_of(&received), expected);
    receiver.wait_success();
    eprintln!("100 000 feed messages between two processes in {:?}", started.elapsed());
}

#[test]
fn killing_either_end_of_feeds_at_random_leaves_the_survivor_working_and_no_segment_behind() {
    kill_either_end_at_random(50);
}

#[test]
#[ignore = "stress: a thousand kills; run with --ignored"]
fn killing_either_end_of_feeds_a_thousand_times_leaves_no_segment_behind() {
    kill_either_end_at_random(1000);
}

/// Kills a feed's sender (feeding a long-lived sink) or its receiver (fed by a sender that
/// lingers) with SIGKILL after a random delay, `iterations` times, checking each time that
/// the survivor got every message sent and then `Disconnected`, that it let go of the link's
/// segment, and that the sink takes a new feed at once.
fn kill_either_end_at_random(iterations: u32) {
    let daemon = Daemon::start();
    let idle = daemon.worker(&["hold", "random-idle"]);
    let none = segments_of(idle.child.id());
    let mut sink = daemon.worker(&["feed-sink", "random-sink"]);
    let sink_pid = sink.child.id();
    let sink_lines = sink.lines();
    let node = daemon.node();
    let seed = seed("kill_either_end_of_feeds_at_random");
    let mut rng = seed;
    let (mut senders_killed, mut receivers_killed) = (0, 0);
    for i in 0..iterations {
        let delay = Duration::from_micros(next_random(&mut rng) % MAX_KILL_DELAY_US);
        let context = format!("iteration {i}, seed {seed}");
        if next_random(&mut rng) % 2 == 0 {
            let mut sender = daemon.worker(&["feed-send", "random-sink", "--every", "100"]);
            let lines = sender.lines();
            assert_eq!(next_line(&lines, "the feed opened"), "opened", "{context}");
            thread::sleep(delay);
            let pid = sender.process_id();
            sender.kill9();
            senders_killed += 1;
            let sent = last_sent(&rest_of(&lines));
            let ended = next_line(&sink_lines, "the sink's feed's end");
            let received = ended
                .strip_prefix(&format!("ended {pid} "))
                .and_then(|rest| rest.strip_suffix(" Disconnected"))
                .and_then(|count| count.parse::<u64>().ok())
                .unwrap_or_else(|| panic!("{ended:?} ({context})"));
            assert!((sent..=sent + 100).contains(&received), "{received}/{sent} ({context})");
        } else {
            let name = format!("random-doomed-{i}");
            let mut receiver = daemon.worker(&["feed-recv", &name, "--every", "100"]);
            let mut args = vec!["feed-send", &name, "--every", "100", "--linger"];
            if next_random(&mut rng) % 2 == 0 {
                args.push("--try-send");
            }
            let mut sender = daemon.worker(&args);
            let lines = sender.lines();
            assert_eq!(next_line(&lines, "the feed opened"), "opened", "{context}");
            thread::sleep(delay);
            receiver.kill9();
            receivers_killed += 1;
            let error = line_starting(&lines, "error ");
            assert!(error.ends_with(" Disconnected"), "{error} ({context})");
            wait_until(&format!("the sender lets go of its segment ({context})"), || {
                segments_of(sender.child.id()) == none
            });
        }
        // The sink takes a new feed at once, and holds no segment once it ends.
        let connection = node.connect("random-sink").unwrap();
        let mut feed = connection.open_feed_timeout(WATCHDOG).unwrap();
        send_counters(&mut feed, 0..300);
        drop(feed);
        drop(connection);
        let ended = next_line(&sink_lines, "the test's feed's end");
        assert_eq!(ended, format!("ended {} 300 Disconnected", node.process_id()), "{context}");
        wait_until(&format!("the sink holds no segment ({context})"), || {
            segments_of(sink_pid) == none
        });
    }
    assert!(sink.child.try_wait().unwrap().is_none(), "the sink lives (seed {seed})");
    eprintln!("{senders_killed} senders and {receivers_killed} receivers killed");
    assert!(senders_killed > 0 && receivers_killed > 0, "both ends were killed (seed {seed})");
}

/// Takes the next feed request on `port` and accepts it.
fn accept(port: &Port) -> FeedReceiver {
    let request = port.recv_timeout(WATCHDOG).expect("a feed request");
    assert!(request.is_feed_request());
    request.accept_feed().unwrap()
}

/// Receives numbered messages on `feed` from `next` on, on a thread, until the feed ends:
/// the count then reached, the error that ended the feed, and the feed. A message out of
/// order fails the test.
fn receiving(
    mut feed: FeedReceiver,
    mut next: u64,
) -> JoinHandle<(u64, FeedRecvError, FeedReceiver)> {
    thread::spawn(move || {
        let mut out = Vec::new();
        loop {
            match feed.recv_into(&mut out) {
                Ok(()) => assert_eq!(out, next.to_le_bytes(), "message {next}"),
                Err(end) => return (next, end, feed),
            }
            next += 1;
        }
    })
}

/// Sends the numbers of `range` on `feed`, on a thread, within the watchdog.
fn send_counters(feed: &mut FeedSender, range: std::ops::Range<u64>) {
    thread::scope(|s| {
        let sending = s.spawn(|| range.map(|i| feed.send(&i.to_le_bytes())).collect::<Vec<_>>());
        let deadline = Instant::now() + WATCHDOG;
        while !sending.is_finished() {
            assert!(Instant::now() < deadline, "sending hung");
            thread::sleep(Duration::from_millis(1));
        }
        assert!(sending.join().unwrap().iter().all(Result::is_ok), "every send succeeded");
    });
}

/// Fills `feed` with `try_send`; returns how many it took.
fn fill(feed: &mut FeedSender) -> u64 {
    let mut sent = 0;
    while feed.try_send(b"fill").is_ok() {
        sent += 1;
    }
    assert_eq!(feed.try_send(b"fill"), Err(FeedSendError::Full));
    sent
}

/// The next line a worker prints; a silence as long as the watchdog fails the test.
fn next_line(lines: &Receiver<String>, what: &str) -> String {
    lines.recv_timeout(WATCHDOG).unwrap_or_else(|e| panic!("waiting for {what}: {e:?}"))
}

/// Skips a worker's lines up to the first starting with `prefix`, and returns that one.
fn line_starting(lines: &Receiver<String>, prefix: &str) -> String {
    let deadline = Instant::now() + WATCHDOG;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match lines.recv_timeout(left) {
            Ok(line) if line.starts_with(prefix) => return line,
            Ok(_) => {}
            Err(e) => panic!("waiting for a line starting {prefix:?}: {e:?}"),
        }
    }
}

/// Every line a worker prints until its output ends (it exited or was killed).
fn rest_of(lines: &Receiver<String>) -> Vec<String> {
    let deadline = Instant::now() + WATCHDOG;
    let mut rest = Vec::new();
    loop {
        match lines.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(line) => rest.push(line),
            Err(RecvTimeoutError::Disconnected) => return rest,
            Err(RecvTimeoutError::Timeout) => panic!("the output never ended: {rest:?}"),
        }
    }
}

/// The count of the last `sent N` line among `lines`, or 0.
fn last_sent(lines: &[String]) -> u64 {
    let mut counts = lines.iter().filter_map(|line| line.strip_prefix("sent ")?.parse().ok());
    counts.next_back().unwrap_or(0)
}

/// A silence this long from a sender that prints after every message: it waits for room.
const QUIET: Duration = Duration::from_millis(300);
