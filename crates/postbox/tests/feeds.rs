//! Feeds between two nodes of one process (each with its own links through the broker): what
//! opening, sending and receiving do, and how either end hears that the other is gone.

use std::thread;
use std::time::{Duration, Instant};

use postbox::{
    Broker, Connection, FeedRecvError, FeedSendError, FeedSender, Message, OpenFeedError, Port,
    FEED_MAX_LEN, FEED_MSG_TYPE,
};

/// A port and a connection to it, from two nodes of `broker` (kept by the broker's test for
/// as long as it runs: a port closes with its node).
fn pair(broker: &Broker, name: &str) -> (Port, Connection) {
    let owner = Box::leak(Box::new(broker.node().unwrap()));
    let port = owner.port(name).open().unwrap();
    let client = Box::leak(Box::new(broker.node().unwrap()));
    let connection = client.connect(name).unwrap();
    (port, connection)
}

/// Opens the feed of `connection`, accepted by a thread receiving on `port`.
fn open(port: Port, connection: &Connection) -> (FeedSender, postbox::FeedReceiver, Port) {
    let accepting = thread::spawn(move || {
        let request = port.recv().unwrap();
        assert!(request.is_feed_request());
        (request.accept_feed().unwrap(), port)
    });
    let sender = connection.open_feed().unwrap();
    let (receiver, port) = accepting.join().unwrap();
    (sender, receiver, port)
}

#[test]
fn a_feed_delivers_every_message_in_order_and_names_its_ends() {
    let broker = Broker::embedded().unwrap();
    let (port, connection) = pair(&broker, "feeds/order");
    let (mut sender, mut receiver, _port) = open(port, &connection);
    assert_eq!(sender.server(), connection.server());
    let count = 10_000u32;
    let receiving = thread::spawn(move || {
        let mut out = Vec::new();
        for i in 0..count {
            receiver.recv_into(&mut out).unwrap();
            assert_eq!(out, i.to_le_bytes(), "message {i}");
        }
        receiver
    });
    // Far more than the ring holds: the sender waits for room again and again.
    for i in 0..count {
        sender.send(&i.to_le_bytes()).unwrap();
    }
    let receiver = receiving.join().unwrap();
    assert_eq!(receiver.sender_identity().process_id, receiver.sender());
    assert_ne!(receiver.sender(), connection.server());
}

#[test]
fn a_full_feed_an_oversized_message_and_an_empty_feed_are_told_apart() {
    let broker = Broker::embedded().unwrap();
    let (port, connection) = pair(&broker, "feeds/limits");
    let (mut sender, mut receiver, _port) = open(port, &connection);
    assert_eq!(receiver.try_recv(), Err(FeedRecvError::Empty));
    assert_eq!(receiver.recv_timeout(Duration::from_millis(30)), Err(FeedRecvError::Timeout));
    let too_large = vec![1u8; FEED_MAX_LEN + 1];
    assert_eq!(
        sender.try_send(&too_large),
        Err(FeedSendError::TooLarge { len: FEED_MAX_LEN + 1, max: FEED_MAX_LEN })
    );
    sender.try_send(&[2u8; FEED_MAX_LEN]).unwrap();
    let mut sent = 1;
    while sender.try_send(b"fill").is_ok() {
        sent += 1;
    }
    assert_eq!(sender.try_send(b"fill"), Err(FeedSendError::Full));
    assert_eq!(
        sender.send_timeout(b"late", Duration::from_millis(30)),
        Err(FeedSendError::Timeout)
    );
    assert_eq!(receiver.try_recv().unwrap(), vec![2u8; FEED_MAX_LEN]);
    for _ in 1..sent {
        assert_eq!(receiver.try_recv().unwrap(), b"fill");
    }
    assert_eq!(receiver.try_recv(), Err(FeedRecvError::Empty));
}

#[test]
fn a_sender_waiting_for_room_goes_on_once_the_receiver_takes_a_message() {
    let broker = Broker::embedded().unwrap();
    let (port, connection) = pair(&broker, "feeds/room");
    let (mut sender, mut receiver, _port) = open(port, &connection);
    while sender.try_send(b"fill").is_ok() {}
    let taking = thread::spawn(move || {
        thread::sleep(Duration::from_millis(100));
        receiver.try_recv().unwrap();
        receiver
    });
    let started = Instant::now();
    sender.send(b"last").unwrap();
    assert!(started.elapsed() >= Duration::from_millis(50), "it waited for the receiver");
    let mut receiver = taking.join().unwrap();
    let mut last = Vec::new();
    while let Ok(message) = receiver.try_recv() {
        last = message;
    }
    assert_eq!(last, b"last");
}

#[test]
fn a_connection_has_one_feed_and_another_connection_its_own() {
    let broker = Broker::embedded().unwrap();
    let (port, connection) = pair(&broker, "feeds/one");
    let (mut first, mut first_in, port) = open(port, &connection);
    assert_eq!(connection.clone().open_feed().unwrap_err(), OpenFeedError::Taken);
    let third = broker.node().unwrap();
    let other = third.connect("feeds/one").unwrap();
    let (mut second, mut second_in, _port) = open(port, &other);
    first.send(b"one").unwrap();
    second.send(b"two").unwrap();
    assert_eq!(first_in.recv().unwrap(), b"one");
    assert_eq!(second_in.recv().unwrap(), b"two");
    assert_ne!(first_in.sender(), second_in.sender());
}

#[test]
fn a_server_that_does_not_accept_refuses_and_the_feed_can_be_asked_for_again() {
    let broker = Broker::embedded().unwrap();
    let (port, connection) = pair(&broker, "feeds/refused");
    let serving = thread::spawn(move || {
        // An echo server that knows nothing of feeds answers with the request's own body.
        let request = port.recv().unwrap();
        let body = request.body().to_vec();
        request.reply(Message::new(body)).unwrap();
        // One that drops the request unanswered.
        drop(port.recv().unwrap());
        // A one-way message of the feed type is no request.
        let oneway = port.recv().unwrap();
        assert!(!oneway.is_feed_request());
        assert_eq!(oneway.accept_feed().unwrap_err(), OpenFeedError::NotAFeedRequest);
        port
    });
    assert_eq!(connection.open_feed().unwrap_err(), OpenFeedError::Refused);
    assert_eq!(connection.open_feed().unwrap_err(), OpenFeedError::Refused);
    connection.send(Message::new(Vec::new()).with_type(FEED_MSG_TYPE)).unwrap();
    let port = serving.join().unwrap();
    let (mut sender, mut receiver, _port) = open(port, &connection);
    sender.send(b"third time").unwrap();
    assert_eq!(receiver.recv().unwrap(), b"third time");
}

#[test]
fn a_feed_keeps_its_connection_open() {
    let broker = Broker::embedded().unwrap();
    let (port, connection) = pair(&broker, "feeds/kept");
    let (mut sender, mut receiver, _port) = open(port, &connection);
    drop(connection);
    // Long enough for the link's socket to be asked whether its peer hung up.
    for i in 0..2000u32 {
        sender.send(&i.to_le_bytes()).unwrap();
        assert_eq!(receiver.recv().unwrap(), i.to_le_bytes());
        if i % 100 == 0 {
            thread::sleep(Duration::from_millis(1));
        }
    }
}

#[test]
fn a_dropped_sender_leaves_its_messages_then_disconnects() {
    let broker = Broker::embedded().unwrap();
    let (port, connection) = pair(&broker, "feeds/sender-gone");
    let (mut sender, mut receiver, _port) = open(port, &connection);
    sender.send(b"a").unwrap();
    sender.send(b"b").unwrap();
    drop(sender);
    assert_eq!(receiver.try_recv().unwrap(), b"a");
    assert_eq!(receiver.recv().unwrap(), b"b");
    assert_eq!(receiver.try_recv(), Err(FeedRecvError::Disconnected));
    assert_eq!(receiver.recv(), Err(FeedRecvError::Disconnected));
    // The connection's feed stays closed: its end went with the sender.
    assert_eq!(connection.open_feed().unwrap_err(), OpenFeedError::Taken);
}

#[test]
fn a_dropped_receiver_disconnects_a_sender_even_one_waiting_for_room() {
    let broker = Broker::embedded().unwrap();
    let (port, connection) = pair(&broker, "feeds/receiver-gone");
    let (mut sender, receiver, _port) = open(port, &connection);
    while sender.try_send(b"fill").is_ok() {}
    let dropping = thread::spawn(move || {
        thread::sleep(Duration::from_millis(50));
        drop(receiver);
    });
    assert_eq!(sender.send(b"more"), Err(FeedSendError::Disconnected));
    assert_eq!(sender.try_send(b"more"), Err(FeedSendError::Disconnected));
    dropping.join().unwrap();
}

#[test]
fn a_receiver_waiting_hears_of_a_sender_dropped_meanwhile() {
    let broker = Broker::embedded().unwrap();
    let (port, connection) = pair(&broker, "feeds/wait-gone");
    let (sender, mut receiver, _port) = open(port, &connection);
    let dropping = thread::spawn(move || {
        thread::sleep(Duration::from_millis(50));
        drop(sender);
    });
    assert_eq!(receiver.recv(), Err(FeedRecvError::Disconnected));
    dropping.join().unwrap();
}

#[test]
fn a_closed_server_port_disconnects_its_feeds_though_their_receivers_live() {
    let broker = Broker::embedded().unwrap();
    let (port, connection) = pair(&broker, "feeds/port-closed");
    let (mut sender, mut receiver, port) = open(port, &connection);
    sender.send(b"before").unwrap();
    drop(port);
    // The link's socket tells both ends; a sender finds out at the latest when the ring is
    // full (the watchdog: 10 s of waiting for room).
    let mut outcome = Ok(());
    for _ in 0..10_000 {
        outcome = sender.send_timeout(b"after", Duration::from_secs(10));
        if outcome.is_err() {
            break;
        }
    }
    assert_eq!(outcome, Err(FeedSendError::Disconnected));
    let mut received = 0;
    let ended = loop {
        match receiver.recv_timeout(Duration::from_secs(10)) {
            Ok(_) => received += 1,
            Err(end) => break end,
        }
    };
    assert_eq!(ended, FeedRecvError::Disconnected, "after {received} messages");
    assert!(received >= 1, "what was sent before stays readable");
}

#[test]
fn a_unix_link_has_no_feed() {
    let broker = Broker::embedded_with(|c| c.shared_memory(false)).unwrap();
    let (port, connection) = pair(&broker, "feeds/unix");
    let serving = thread::spawn(move || {
        let request = port.recv().unwrap();
        assert!(request.is_feed_request());
        assert_eq!(request.accept_feed().unwrap_err(), OpenFeedError::NotShared);
    });
    // Refused locally: nothing reaches the server for it.
    assert_eq!(connection.open_feed().unwrap_err(), OpenFeedError::NotShared);
    // A feed request written by hand meets a server end that has none either.
    let asked = connection.call(Message::new(Vec::new()).with_type(FEED_MSG_TYPE));
    assert!(asked.is_err(), "the server dropped it unanswered");
    serving.join().unwrap();
}

#[test]
fn async_ends_wait_on_descriptors_and_meet_blocking_ones() {
    let broker = Broker::embedded().unwrap();
    let (port, connection) = pair(&broker, "feeds/async");
    let (mut sender, mut receiver, _port) = open(port, &connection);
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let count = 3000u32;
    // An async receiver and a blocking sender that fills the ring again and again.
    let sending = thread::spawn(move || {
        for i in 0..count {
            thread::sleep(Duration::from_micros(if i % 500 == 0 { 2000 } else { 0 }));
            sender.send(&i.to_le_bytes()).unwrap();
        }
        sender
    });
    runtime.block_on(within_watchdog(async {
        let mut out = Vec::new();
        for i in 0..count {
            receiver.recv_into_async(&mut out).await.unwrap();
            assert_eq!(out, i.to_le_bytes(), "message {i}");
        }
    }));
    let mut sender = sending.join().unwrap();
    // An async sender waiting for room that a blocking receiver frees, many times over
    // (more signals than the wake-up socket holds unread).
    let receiving = thread::spawn(move || {
        let mut out = Vec::new();
        for i in 0..count * 100 {
            receiver.recv_into(&mut out).unwrap();
            assert_eq!(out, i.to_le_bytes(), "message {i}");
            if i % 1000 == 0 {
                thread::sleep(Duration::from_millis(1));
            }
        }
        receiver
    });
    runtime.block_on(within_watchdog(async {
        for i in 0..count * 100 {
            sender.send_async(&i.to_le_bytes()).await.unwrap();
        }
    }));
    let mut receiver = receiving.join().unwrap();
    // The end of the sender reaches an async receiver that waits for it.
    let dropping = thread::spawn(move || {
        thread::sleep(Duration::from_millis(30));
        drop(sender);
    });
    let ended = runtime.block_on(within_watchdog(receiver.recv_async()));
    assert_eq!(ended, Err(FeedRecvError::Disconnected));
    dropping.join().unwrap();
}

#[test]
fn an_async_receiver_takes_more_wake_ups_than_its_socket_holds() {
    let broker = Broker::embedded().unwrap();
    let (port, connection) = pair(&broker, "feeds/async-many");
    let (mut sender, mut receiver, _port) = open(port, &connection);
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    // Each message after a pause: the receiver is armed and waiting, so every send writes
    // the wake-up socket once (far more bytes than it holds, were they never read).
    let count = 300_000u32;
    let sending = thread::spawn(move || {
        for i in 0..count {
            sender.send(&i.to_le_bytes()).unwrap();
            for _ in 0..200 {
                std::hint::spin_loop();
            }
        }
    });
    runtime.block_on(within_watchdog(async {
        let mut out = Vec::new();
        for i in 0..count {
            receiver.recv_into_async(&mut out).await.unwrap();
            assert_eq!(out, i.to_le_bytes(), "message {i}");
        }
    }));
    sending.join().unwrap();
}

/// `work`, or a panic if it has not ended after 60 s (a missed wake-up would hang forever).
async fn within_watchdog<T>(work: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(60), work).await.expect("watchdog: a wait never ended")
}
