//! A link's frame decoder is owned by whoever reads the link (the leader of a poll, or the
//! shortest receive under the endpoint's lock), not locked per read: a frame that arrives in
//! pieces is still decoded whole whichever receive reads each piece, and a link that connects
//! while the leader has the decoders is read with its own.

use std::time::{Duration, Instant};

use postbox::{Broker, BrokerConfig, Message};

const WATCHDOG: Duration = Duration::from_secs(20);

/// Streams of this many bytes each way: a body of [`LARGE`] bytes crosses in several pieces.
const STREAM: usize = 4096;
/// Larger than the stream, smaller than the size that goes through the payload pool.
const LARGE: usize = 10_000;

fn small_streams() -> Broker {
    Broker::embedded_with(|mut c: BrokerConfig| {
        c.shared_memory_links = Some(STREAM);
        c
    })
    .unwrap()
}

/// A body of `size` bytes: its number, then bytes that depend on it and on their place.
fn numbered(i: u32, size: usize) -> Message {
    let mut body: Vec<u8> = (0..size.max(4)).map(|k| (k as u32 ^ i) as u8).collect();
    body[..4].copy_from_slice(&i.to_le_bytes());
    Message::new(body)
}

/// The number of a body made by [`numbered`], after checking every byte of it.
fn checked(body: &[u8], size: usize) -> u32 {
    assert_eq!(body.len(), size.max(4), "a body cut or merged");
    let i = u32::from_le_bytes(body[..4].try_into().unwrap());
    for (k, &b) in body.iter().enumerate().skip(4) {
        assert_eq!(b, (k as u32 ^ i) as u8, "byte {k} of message {i}");
    }
    i
}

fn size_of(i: u32) -> usize {
    [10, LARGE, 100, LARGE, 3][i as usize % 5]
}

/// Receives that do not wait (the shortest receive) and receives that wait (the leader's
/// poll) take turns on one link whose frames are often larger than its stream: the decoder
/// holding a frame's first pieces passes between them, and every message arrives whole, once,
/// in order.
#[test]
fn frames_larger_than_the_stream_arrive_whole_when_both_kinds_of_receive_read_their_pieces() {
    let broker = small_streams();
    let server = broker.node().unwrap();
    let port = server.port("readers/pieces").open().unwrap();
    let client = broker.node().unwrap();
    let conn = client.connect("readers/pieces").unwrap();
    const COUNT: u32 = 200;
    let sender = std::thread::spawn(move || {
        for i in 0..COUNT {
            conn.send(numbered(i, size_of(i))).unwrap();
        }
        conn
    });
    let deadline = Instant::now() + WATCHDOG;
    for i in 0..COUNT {
        let envelope = if i % 2 == 0 {
            loop {
                if let Ok(envelope) = port.try_recv() {
                    break envelope;
                }
                assert!(Instant::now() < deadline, "message {i} never came");
                std::thread::yield_now();
            }
        } else {
            port.recv_timeout(WATCHDOG).unwrap()
        };
        assert_eq!(checked(envelope.body(), size_of(i)), i);
    }
    drop(sender.join().unwrap());
}

/// A receiver waits (the leader, holding the decoders of the links it polls) when a second
/// link connects and sends a frame larger than its stream: the new link's decoder, added
/// while the leader held the others, is kept when they are given back, and the frame arrives
/// whole; the first link is still read with its own.
#[test]
fn a_link_that_connects_while_a_receiver_waits_is_read_whole() {
    let broker = small_streams();
    let server = broker.node().unwrap();
    let port = std::sync::Arc::new(server.port("readers/late").open().unwrap());
    let first_node = broker.node().unwrap();
    let first = first_node.connect("readers/late").unwrap();
    // A frame larger than the stream is written only as the receiver reads its pieces: the
    // sends go from other threads.
    let first = std::thread::spawn(move || {
        first.send(numbered(0, LARGE)).unwrap();
        first
    });
    assert_eq!(checked(port.recv_timeout(WATCHDOG).unwrap().body(), LARGE), 0);
    let first = first.join().unwrap();
    let waiting = std::thread::spawn({
        let port = std::sync::Arc::clone(&port);
        move || {
            let mut got: Vec<u32> = (0..3)
                .map(|_| checked(port.recv_timeout(WATCHDOG).unwrap().body(), LARGE))
                .collect();
            got.sort_unstable();
            got
        }
    });
    // Let the receiver start waiting (not needed for the outcome, only to make it likely).
    std::thread::sleep(Duration::from_millis(50));
    let late_node = broker.node().unwrap();
    let late = late_node.connect("readers/late").unwrap();
    let late = std::thread::spawn(move || {
        late.send(numbered(1, LARGE)).unwrap();
        late.send(numbered(3, LARGE)).unwrap();
        late
    });
    first.send(numbered(2, LARGE)).unwrap();
    assert_eq!(waiting.join().unwrap(), vec![1, 2, 3]);
    drop(late.join().unwrap());
}

/// A receiver that only ever looks without waiting (the shortest receive and the empty
/// look, which count their looks without a locked instruction) notices a client that left,
/// after delivering everything it sent.
#[test]
fn a_receiver_that_never_waits_notices_a_client_that_left() {
    let broker = small_streams();
    let server = broker.node().unwrap();
    let port = server.port("readers/gone").open().unwrap();
    let client = broker.node().unwrap();
    let conn = client.connect("readers/gone").unwrap();
    for i in 0..10 {
        conn.send(numbered(i, 100)).unwrap();
    }
    let deadline = Instant::now() + WATCHDOG;
    while port.connection_count() == 0 {
        assert!(Instant::now() < deadline, "the link never reached the port");
        std::thread::yield_now();
    }
    drop(conn);
    drop(client);
    let mut next = 0;
    while port.connection_count() > 0 || next < 10 {
        assert!(Instant::now() < deadline, "the hang-up was never noticed ({next} received)");
        if let Ok(envelope) = port.try_recv() {
            assert_eq!(checked(envelope.body(), 100), next);
            next += 1;
        }
    }
    assert!(port.try_recv().is_err());
}
