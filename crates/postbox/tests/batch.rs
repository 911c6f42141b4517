//! Batches: `Connection::send_batch` and its forms write many one-way messages at once (on a
//! shared-memory link, published together; on a Unix link, a blocking batch in one write),
//! `Port::recv_batch` and its forms take many at once. Order, flow control, the messages
//! handed back on failure, and every wait form. Two nodes in this process, each with its own
//! link ends, as two processes would have. (A Unix link that fills: `batch_unix_link.rs`.)

use std::time::Duration;

use postbox::{
    Broker, BrokerConfig, Message, Overflow, RecvTimeoutError, SendBatchError, TryRecvError,
};

#[path = "support/numbered.rs"]
mod numbered;
use numbered::{number, numbered, WATCHDOG};

/// Receives `count` messages in batches of at most `max`, checking they are 0, 1, … in order.
fn receive_in_order(port: &postbox::Port, count: u32, max: usize) -> usize {
    let mut out = Vec::new();
    let mut next = 0;
    let mut batches = 0;
    while next < count {
        let taken = port.recv_batch_timeout(&mut out, max, WATCHDOG).unwrap();
        assert!((1..=max).contains(&taken), "took {taken} with at most {max}");
        assert_eq!(out.len(), taken, "appended to the vector given");
        for envelope in out.drain(..) {
            assert_eq!(number(envelope.body()), next);
            next += 1;
        }
        batches += 1;
    }
    batches
}

fn both_links(test: impl Fn(&Broker)) {
    for shared_memory in [true, false] {
        let broker =
            Broker::embedded_with(|c: BrokerConfig| c.shared_memory(shared_memory)).unwrap();
        test(&broker);
    }
}

#[test]
fn a_batch_arrives_whole_and_in_order_and_is_taken_in_batches() {
    both_links(|broker| {
        let server = broker.node().unwrap();
        let port = server.port("batch/order").open().unwrap();
        let client = broker.node().unwrap();
        let connection = client.connect("batch/order").unwrap();
        let mut batch = numbered(0..200, 64);
        connection.send_batch(&mut batch).unwrap();
        assert!(batch.is_empty(), "every message sent is drained");
        // All 200 wait in the queue: batches of up to 64 take them in four looks.
        assert_eq!(receive_in_order(&port, 200, 64), 4);
        let mut out = Vec::new();
        assert_eq!(port.try_recv_batch(&mut out, 8), Err(TryRecvError::Empty));
        assert_eq!(
            port.recv_batch_timeout(&mut out, 8, Duration::from_millis(20)),
            Err(RecvTimeoutError::Timeout)
        );
        assert!(out.is_empty());
    });
}

#[test]
fn a_batch_larger_than_the_link_and_the_capacity_flows_while_the_receiver_takes() {
    // 4 MiB of 1 KiB messages: far beyond the shared-memory stream and the port's capacity of
    // 16, so the batch must publish what it wrote before each wait for room or credit.
    both_links(|broker| {
        let server = broker.node().unwrap();
        let port = server.port("batch/flow").capacity(16).open().unwrap();
        let client = broker.node().unwrap();
        let connection = client.connect("batch/flow").unwrap();
        let count = 4096;
        let receiving = std::thread::spawn(move || receive_in_order(&port, count, 100));
        let mut batch = numbered(0..count, 1024);
        connection.send_batch(&mut batch).unwrap();
        assert!(batch.is_empty());
        receiving.join().unwrap();
    });
}

#[test]
fn a_full_link_leaves_the_unsent_messages_in_the_batch_in_order() {
    both_links(|broker| {
        let server = broker.node().unwrap();
        let port = server.port("batch/full").capacity(4).open().unwrap();
        let client = broker.node().unwrap();
        let connection = client.connect("batch/full").unwrap();
        let mut batch = numbered(0..10, 16);
        assert_eq!(connection.try_send_batch(&mut batch), Err(SendBatchError::Full));
        assert_eq!(batch.len(), 6, "the capacity took four");
        assert_eq!(number(batch[0].body()), 4, "the one that failed comes first");
        assert_eq!(
            connection.send_batch_timeout(&mut batch, Duration::from_millis(30)),
            Err(SendBatchError::Timeout)
        );
        assert_eq!(batch.len(), 6);
        // Taken, the first four make room for the rest: nothing lost, nothing twice.
        let receiving = std::thread::spawn(move || receive_in_order(&port, 10, 3));
        connection.send_batch_timeout(&mut batch, WATCHDOG).unwrap();
        assert!(batch.is_empty());
        receiving.join().unwrap();
    });
}

#[test]
fn a_port_that_fails_when_full_fails_a_blocking_batch_part_way() {
    let broker = Broker::embedded().unwrap();
    let server = broker.node().unwrap();
    let _port = server.port("batch/fail").capacity(3).overflow(Overflow::Fail).open().unwrap();
    let client = broker.node().unwrap();
    let connection = client.connect("batch/fail").unwrap();
    let mut batch = numbered(0..5, 16);
    assert_eq!(connection.send_batch(&mut batch), Err(SendBatchError::Full));
    assert_eq!(batch.iter().map(|m| number(m.body())).collect::<Vec<_>>(), [3, 4]);
}

#[test]
fn an_oversized_message_stops_the_batch_after_the_ones_before_it() {
    both_links(|broker| {
        let server = broker.node().unwrap();
        let port = server.port("batch/large").message_size(100).open().unwrap();
        let client = broker.node().unwrap();
        let connection = client.connect("batch/large").unwrap();
        let mut batch = numbered(0..3, 16);
        batch.insert(1, Message::new(vec![7u8; 101]));
        assert_eq!(connection.send_batch(&mut batch), Err(SendBatchError::TooLarge { limit: 100 }));
        assert_eq!(batch.len(), 3, "the oversized one and the two after it stay");
        assert_eq!(batch[0].body().len(), 101);
        let mut out = Vec::new();
        assert_eq!(port.recv_batch_timeout(&mut out, 10, WATCHDOG).unwrap(), 1);
        assert_eq!(number(out[0].body()), 0);
    });
}

#[test]
fn a_batch_to_a_receiver_that_left_is_handed_back_whole() {
    both_links(|broker| {
        let server = broker.node().unwrap();
        let port = server.port("batch/gone").open().unwrap();
        let client = broker.node().unwrap();
        let connection = client.connect("batch/gone").unwrap();
        drop(port);
        drop(server);
        let mut batch;
        let deadline = std::time::Instant::now() + WATCHDOG;
        // The departure reaches the link shortly after; until then sends may still go out.
        loop {
            batch = numbered(0..5, 16);
            match connection.send_batch(&mut batch) {
                Err(SendBatchError::Disconnected) => break,
                Ok(()) => assert!(std::time::Instant::now() < deadline, "never disconnected"),
                Err(other) => panic!("unexpected {other:?}"),
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(batch.len(), 5, "nothing of a failed batch is lost");
    });
}

#[test]
fn a_rendezvous_port_takes_a_batch_one_by_one() {
    let broker = Broker::embedded().unwrap();
    let server = broker.node().unwrap();
    let port = server.port("batch/rendezvous").capacity(0).open().unwrap();
    let client = broker.node().unwrap();
    let connection = client.connect("batch/rendezvous").unwrap();
    let mut batch = numbered(0..3, 16);
    // Nobody receives: the first message is written but not taken in time.
    assert_eq!(
        connection.send_batch_timeout(&mut batch, Duration::from_millis(30)),
        Err(SendBatchError::NotTaken)
    );
    assert_eq!(batch.len(), 2, "the one not taken is in the link, not in the batch");
    let receiving = std::thread::spawn(move || receive_in_order(&port, 3, 1));
    connection.send_batch_timeout(&mut batch, WATCHDOG).unwrap();
    receiving.join().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_async_batch_to_a_rendezvous_port_waits_for_each_message_to_be_taken() {
    let broker = Broker::embedded().unwrap();
    let server = broker.node().unwrap();
    let port = server.port("batch/async-rendezvous").capacity(0).open().unwrap();
    let client = broker.node().unwrap();
    let connection = client.connect("batch/async-rendezvous").unwrap();
    let receiving = tokio::spawn(async move {
        let mut out = Vec::new();
        for next in 0..3 {
            assert_eq!(port.recv_batch_async(&mut out, 10).await.unwrap(), 1);
            assert_eq!(number(out.remove(0).body()), next);
        }
    });
    let mut batch = numbered(0..3, 16);
    tokio::time::timeout(WATCHDOG, connection.send_batch_async(&mut batch))
        .await
        .expect("each message was taken")
        .unwrap();
    assert!(batch.is_empty());
    tokio::time::timeout(WATCHDOG, receiving).await.expect("all received").unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_async_forms_move_batches_without_blocking_a_thread() {
    let broker = Broker::embedded().unwrap();
    let server = broker.node().unwrap();
    let port = server.port("batch/async").capacity(8).open().unwrap();
    let client = broker.node().unwrap();
    let connection = client.connect("batch/async").unwrap();
    let count = 1000u32;
    let receiving = tokio::spawn(async move {
        let mut out = Vec::new();
        let mut next = 0;
        while next < count {
            let taken = port.recv_batch_async(&mut out, 50).await.unwrap();
            assert!((1..=50).contains(&taken));
            for envelope in out.drain(..) {
                assert_eq!(number(envelope.body()), next);
                next += 1;
            }
        }
    });
    let mut batch = numbered(0..count, 32);
    tokio::time::timeout(WATCHDOG, connection.send_batch_async(&mut batch))
        .await
        .expect("the batch went out")
        .unwrap();
    assert!(batch.is_empty());
    tokio::time::timeout(WATCHDOG, receiving).await.expect("all received").unwrap();
}
