//! The receive path keeps its promises when it decodes only part of what arrived and hands frames
//! straight to a receiver: priority order across links and within a batch, drop-oldest over
//! everything that arrived, and several receivers losing and duplicating nothing.

use std::time::Duration;

use postbox::{Broker, BrokerConfig, Message, Overflow, Selector};

const WATCHDOG: Duration = Duration::from_secs(20);

fn numbered(i: u32, size: usize, priority: u8) -> Message {
    let mut body = vec![0u8; size.max(4)];
    body[..4].copy_from_slice(&i.to_le_bytes());
    Message::new(body).with_priority(priority)
}

fn number(body: &[u8]) -> u32 {
    u32::from_le_bytes(body[..4].try_into().unwrap())
}

/// Two links: 64 frames of link A decoded (32 at p5, 32 at p4: no share exceeded, nothing held
/// back), 10 at p3 left in A's decoder; link B's p1 queued in the same poll. The p1 must not be
/// handed out before A's p3s, which had arrived (they were read off the link) before it.
#[test]
fn frames_left_in_one_decoder_are_not_outranked_by_another_links_message() {
    let broker = Broker::embedded().unwrap();
    let server = broker.node().unwrap();
    let port = server.port("review/prio").open().unwrap();
    let a_node = broker.node().unwrap();
    let b_node = broker.node().unwrap();
    let a = a_node.connect("review/prio").unwrap();
    let b = b_node.connect("review/prio").unwrap();
    let mut i = 0;
    for (count, priority) in [(32, 5), (32, 4), (10, 3)] {
        for _ in 0..count {
            a.send(numbered(i, 8, priority)).unwrap();
            i += 1;
        }
    }
    b.send(numbered(1000, 8, 1)).unwrap();
    // Both links known to the port before the first receive.
    let deadline = std::time::Instant::now() + WATCHDOG;
    while port.connection_count() < 2 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    std::thread::sleep(Duration::from_millis(50));
    let priorities: Vec<u8> =
        (0..75).map(|_| port.recv_timeout(WATCHDOG).unwrap().message().priority()).collect();
    let mut sorted = priorities.clone();
    sorted.sort_by(|x, y| y.cmp(x));
    assert_eq!(priorities, sorted, "handed out out of priority order");
}

/// One link, a batch receiver (the Taker): 504 frames of 130 bytes at p0 fill the 64 KiB
/// staging area but for 16 bytes of the next frame (its header cut), which is at p5. The
/// second read of the same poll completes it: the batch must not hand it out after the p0s.
#[test]
fn a_batch_never_puts_a_higher_priority_after_lower_ones() {
    let broker = Broker::embedded().unwrap();
    let server = broker.node().unwrap();
    let port = server.port("review/batch").open().unwrap();
    let node = broker.node().unwrap();
    let c = node.connect("review/batch").unwrap();
    // Frame = 32-byte header + body; 65536 = 504 * 130 + 16.
    for i in 0..504 {
        c.send(numbered(i, 98, 0)).unwrap();
    }
    c.send(numbered(504, 98, 5)).unwrap();
    std::thread::sleep(Duration::from_millis(50));
    let mut out = Vec::new();
    let mut got = 0;
    while got < 505 {
        let taken = port.recv_batch_timeout(&mut out, 1000, WATCHDOG).unwrap();
        got += taken;
        // Within one batch, highest priority first (as the queue would hand them out).
        let priorities: Vec<u8> = out.drain(..).map(|e| e.message().priority()).collect();
        let mut sorted = priorities.clone();
        sorted.sort_by(|x, y| y.cmp(x));
        assert!(
            priorities == sorted,
            "a batch of {taken} out of priority order: p5 at {:?}",
            priorities.iter().position(|p| *p == 5)
        );
    }
}

/// Drop-oldest, capacity 3: a sender writes 100 messages without waiting, all of them on the
/// link before the first receive. The receiver must get the newest three (97, 98, 99), with 97
/// lost before them: the policy keeps the newest of what arrived.
#[test]
fn drop_oldest_keeps_the_newest_of_everything_that_arrived() {
    for shared_memory in [true, false] {
        let broker =
            Broker::embedded_with(|c: BrokerConfig| c.shared_memory(shared_memory)).unwrap();
        let server = broker.node().unwrap();
        let port =
            server.port("review/latest").capacity(3).overflow(Overflow::DropOldest).open().unwrap();
        let node = broker.node().unwrap();
        let c = node.connect("review/latest").unwrap();
        for i in 0..100 {
            c.send(numbered(i, 8, 0)).unwrap();
        }
        std::thread::sleep(Duration::from_millis(50));
        let first = port.recv_timeout(WATCHDOG).unwrap();
        let rest: Vec<u32> =
            (0..2).map(|_| number(port.recv_timeout(WATCHDOG).unwrap().body())).collect();
        assert_eq!(
            (number(first.body()), first.lost(), rest),
            (97, 97, vec![98, 99]),
            "shared memory: {shared_memory}"
        );
    }
}

/// Several receiving threads (blocking, batch, non-blocking) on one port, one then two senders:
/// every message exactly once.
#[test]
fn several_receivers_lose_and_duplicate_nothing() {
    use std::sync::{Arc, Mutex};
    for shared_memory in [true, false] {
        let broker =
            Broker::embedded_with(|c: BrokerConfig| c.shared_memory(shared_memory)).unwrap();
        let server = broker.node().unwrap();
        let port = Arc::new(server.port("review/many").capacity(50).open().unwrap());
        const PER: u32 = 3000;
        let seen = Arc::new(Mutex::new(vec![0u32; 2 * PER as usize]));
        let total = Arc::new(std::sync::atomic::AtomicU32::new(0));
        let mut receivers = Vec::new();
        for kind in 0..3 {
            let (port, seen, total) = (Arc::clone(&port), Arc::clone(&seen), Arc::clone(&total));
            receivers.push(std::thread::spawn(move || {
                let mut out = Vec::new();
                while total.load(std::sync::atomic::Ordering::SeqCst) < 2 * PER {
                    match kind {
                        0 => {
                            if let Ok(e) = port.recv_timeout(Duration::from_millis(20)) {
                                out.push(e)
                            }
                        }
                        1 => {
                            let _ = port.recv_batch_timeout(&mut out, 7, Duration::from_millis(20));
                        }
                        _ => match port.try_recv() {
                            Ok(e) => out.push(e),
                            Err(_) => std::thread::yield_now(),
                        },
                    }
                    for e in out.drain(..) {
                        seen.lock().unwrap()[number(e.body()) as usize] += 1;
                        total.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    }
                }
            }));
        }
        let n1 = broker.node().unwrap();
        let c1 = n1.connect("review/many").unwrap();
        let s1 = std::thread::spawn(move || {
            for i in 0..PER {
                c1.send(numbered(i, 8 + (i as usize % 100), (i % 3) as u8)).unwrap();
            }
            c1
        });
        let n2 = broker.node().unwrap();
        let c2 = n2.connect("review/many").unwrap();
        for i in PER..2 * PER {
            c2.send(numbered(i, 8, (i % 5) as u8)).unwrap();
        }
        let _c1 = s1.join().unwrap();
        let deadline = std::time::Instant::now() + WATCHDOG;
        while total.load(std::sync::atomic::Ordering::SeqCst) < 2 * PER {
            assert!(
                std::time::Instant::now() < deadline,
                "hang: {}",
                total.load(std::sync::atomic::Ordering::SeqCst)
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        for r in receivers {
            r.join().unwrap();
        }
        let seen = seen.lock().unwrap();
        let bad: Vec<_> = seen.iter().enumerate().filter(|(_, n)| **n != 1).take(10).collect();
        assert!(bad.is_empty(), "shm {shared_memory}: not exactly once: {bad:?}");
        assert_eq!(port.stats().queued, 0);
    }
}

/// Capacity 4, one shared-memory link. A receive by type queues the four messages it does not
/// want: the link is at capacity and is not read past it (the port holds four, never five),
/// and the sender's fifth waits for credit. A receive that takes one of the four frees a place:
/// the receiver still waiting by type must be woken, read the link again and get the fifth,
/// though it looked at the link while it was full (the link's "full" is read without a lock).
#[test]
fn a_link_at_capacity_is_not_read_past_it_and_is_read_again_once_a_place_is_free() {
    let broker = Broker::embedded().unwrap();
    let server = broker.node().unwrap();
    let port = std::sync::Arc::new(server.port("review/full").capacity(4).open().unwrap());
    let client = broker.node().unwrap();
    let conn = client.connect("review/full").unwrap();
    for i in 0..4 {
        conn.send(numbered(i, 64, 0).with_type(1)).unwrap();
    }
    let waiting = std::thread::spawn({
        let port = std::sync::Arc::clone(&port);
        move || port.recv_matching_timeout(Selector::ANY.of_type(2), WATCHDOG).unwrap()
    });
    let sender = std::thread::spawn(move || {
        conn.send(numbered(4, 64, 0).with_type(2)).unwrap();
        conn
    });
    let deadline = std::time::Instant::now() + WATCHDOG;
    while port.stats().queued < 4 {
        assert!(std::time::Instant::now() < deadline, "the four were never queued");
        std::thread::sleep(Duration::from_millis(1));
    }
    for _ in 0..50 {
        assert_eq!(port.stats().queued, 4, "the link was read past the port's capacity");
        std::thread::sleep(Duration::from_millis(1));
    }
    assert!(!waiting.is_finished(), "the fifth got through a full link");
    let first = port.try_recv().unwrap();
    assert_eq!((number(first.body()), first.message().msg_type()), (0, 1));
    let fifth = waiting.join().unwrap();
    assert_eq!((number(fifth.body()), fifth.message().msg_type()), (4, 2));
    drop(sender.join().unwrap());
    for i in 1..4 {
        assert_eq!(number(port.recv_timeout(WATCHDOG).unwrap().body()), i);
    }
}

/// Waits until `port` knows `links` links.
fn until_linked(port: &postbox::Port, links: usize) {
    let deadline = std::time::Instant::now() + WATCHDOG;
    while port.connection_count() < links {
        assert!(std::time::Instant::now() < deadline, "the links never reached the port");
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Receives the next envelope: blocking, or with `try_recv` in a loop (the shortest receive).
fn next(port: &postbox::Port, blocking: bool) -> postbox::Envelope {
    if blocking {
        return port.recv_timeout(WATCHDOG).unwrap();
    }
    let deadline = std::time::Instant::now() + WATCHDOG;
    loop {
        match port.try_recv() {
            Ok(envelope) => return envelope,
            Err(postbox::TryRecvError::Empty) => {
                assert!(std::time::Instant::now() < deadline, "nothing arrived");
                std::hint::spin_loop();
            }
            Err(e) => panic!("try_recv: {e}"),
        }
    }
}

/// Three links, the two quiet ones connected first: the busy one is the lone link with input
/// at every receive, and its messages are handed out straight from its decoder, blocking
/// receives and non-blocking ones in turns. The credit of each goes back to the link it came
/// from: its sender, held to 4 messages in flight, never stalls, and nothing is reordered.
#[test]
fn the_lone_busy_link_among_quiet_ones_gets_the_credit_of_its_messages() {
    let broker = Broker::embedded().unwrap();
    let server = broker.node().unwrap();
    let port = server.port("review/lone").capacity(4).open().unwrap();
    let quiet: Vec<_> = (0..2).map(|_| broker.node().unwrap()).collect();
    let _quiet: Vec<_> = quiet.iter().map(|n| n.connect("review/lone").unwrap()).collect();
    until_linked(&port, 2);
    let busy_node = broker.node().unwrap();
    let busy = busy_node.connect("review/lone").unwrap();
    until_linked(&port, 3);
    let sender = std::thread::spawn(move || {
        for i in 0..400 {
            busy.send(numbered(i, 64, 0)).unwrap();
        }
        busy
    });
    for i in 0..400 {
        assert_eq!(number(next(&port, i % 2 == 0).body()), i);
    }
    drop(sender.join().unwrap());
}

/// Two links holding input at once: the higher priority is handed out first, though its link
/// was connected last, for a blocking receive and for a non-blocking one.
#[test]
fn with_input_on_two_links_the_higher_priority_goes_first() {
    for blocking in [false, true] {
        let broker = Broker::embedded().unwrap();
        let server = broker.node().unwrap();
        let port = server.port("review/two").open().unwrap();
        let (a_node, b_node) = (broker.node().unwrap(), broker.node().unwrap());
        let a = a_node.connect("review/two").unwrap();
        until_linked(&port, 1);
        let b = b_node.connect("review/two").unwrap();
        until_linked(&port, 2);
        // A send returns once its frame is in the link.
        a.send(numbered(1, 8, 0)).unwrap();
        b.send(numbered(2, 8, 7)).unwrap();
        let order: Vec<u32> = (0..2).map(|_| number(next(&port, blocking).body())).collect();
        assert_eq!(order, [2, 1], "blocking: {blocking}");
    }
}

/// Ten links sending at once, each from its own thread: receives that find one link with
/// input and receives that find several (the queue) alternate at random, blocking and not.
/// Every message arrives once, each link's in order.
#[test]
fn ten_links_sending_at_once_lose_and_reorder_nothing() {
    const LINKS: usize = 10;
    const EACH: u32 = 300;
    let broker = Broker::embedded().unwrap();
    let server = broker.node().unwrap();
    let port = server.port("review/ten").capacity(8).open().unwrap();
    let nodes: Vec<_> = (0..LINKS).map(|_| broker.node().unwrap()).collect();
    let links: Vec<_> = nodes.iter().map(|n| n.connect("review/ten").unwrap()).collect();
    until_linked(&port, LINKS);
    let senders: Vec<_> = links
        .into_iter()
        .enumerate()
        .map(|(link, connection)| {
            std::thread::spawn(move || {
                for i in 0..EACH {
                    let mut message = numbered(i, 16, 0);
                    message.body_mut()[4] = link as u8;
                    connection.send(message).unwrap();
                }
                connection
            })
        })
        .collect();
    let mut expected = [0u32; LINKS];
    for i in 0..LINKS * EACH as usize {
        let envelope = next(&port, i % 3 == 0);
        let link = usize::from(envelope.body()[4]);
        assert_eq!(number(envelope.body()), expected[link], "link {link} out of order");
        expected[link] += 1;
    }
    assert_eq!(expected, [EACH; LINKS]);
    for sender in senders {
        drop(sender.join().unwrap());
    }
}
