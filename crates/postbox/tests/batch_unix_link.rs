//! Batches on a Unix link that fills: `try_send_batch`, `send_batch_timeout` and
//! `send_batch_async` leave the connection open as one-by-one sends do, honour their wait, and
//! hand back unsent messages as they were (id 0). Two nodes in this process, without shared
//! memory, so the link is a Unix socketpair.

use std::time::{Duration, Instant};

use postbox::{Broker, BrokerConfig, Message, RecvTimeoutError};

#[path = "support/numbered.rs"]
mod numbered;
use numbered::{number, numbered, WATCHDOG};

fn receive_in_order(port: &postbox::Port, count: u32, max: usize) {
    let mut out = Vec::new();
    let mut next = 0;
    while next < count {
        port.recv_batch_timeout(&mut out, max, WATCHDOG).unwrap();
        for envelope in out.drain(..) {
            assert_eq!(number(envelope.body()), next);
            next += 1;
        }
    }
}

/// The reference: the same messages offered one by one with `try_send`.
#[test]
fn try_send_one_by_one_to_a_receiver_not_taking_yet_keeps_the_connection() {
    let broker = Broker::embedded_with(|c: BrokerConfig| c.shared_memory(false)).unwrap();
    let server = broker.node().unwrap();
    let port = server.port("batch-unix/one-by-one").open().unwrap();
    let client = broker.node().unwrap();
    let connection = client.connect("batch-unix/one-by-one").unwrap();
    let mut messages = numbered(0..1000, 1021).into_iter();
    let mut sent = 0;
    let started = Instant::now();
    let mut rest = Vec::new();
    for message in messages.by_ref() {
        match connection.try_send(message) {
            Ok(()) => sent += 1,
            Err(error) => {
                let message = error.into_message();
                assert_eq!(message.id(), 0, "handed back unsent, without an id");
                rest.push(message);
                break;
            }
        }
    }
    rest.extend(messages);
    let took = started.elapsed();
    std::thread::sleep(Duration::from_millis(600));
    let receiving = std::thread::spawn(move || receive_in_order(&port, 1000, 100));
    let result = connection.send_batch_timeout(&mut rest, WATCHDOG);
    assert_eq!(result, Ok(()), "try_send sent {sent} in {took:?}");
    receiving.join().unwrap();
}

#[test]
fn try_send_batch_to_a_receiver_not_taking_yet_keeps_the_connection() {
    let broker = Broker::embedded_with(|c: BrokerConfig| c.shared_memory(false)).unwrap();
    let server = broker.node().unwrap();
    let port = server.port("batch-unix/batch").open().unwrap();
    let client = broker.node().unwrap();
    let connection = client.connect("batch-unix/batch").unwrap();
    let mut batch = numbered(0..1000, 1021);
    let started = Instant::now();
    let result = connection.try_send_batch(&mut batch);
    let took = started.elapsed();
    let sent = 1000 - batch.len();
    std::thread::sleep(Duration::from_millis(600));
    // The receiver takes what came, then the rest goes.
    let receiving = std::thread::spawn(move || receive_in_order(&port, 1000, 100));
    let rest = connection.send_batch_timeout(&mut batch, WATCHDOG);
    assert_eq!(
        rest,
        Ok(()),
        "try_send_batch returned {result:?} after {took:?} with {sent} sent; the rest then failed"
    );
    receiving.join().unwrap();
}

/// A receiver that takes 20 messages every 50 ms (about 400 KiB/s) until stopped; returns how
/// many it took, checking they are in order.
fn slow_receiver(
    port: postbox::Port,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<u32> {
    std::thread::spawn(move || {
        let mut out = Vec::new();
        let mut next = 0;
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            let _ = port.recv_batch_timeout(&mut out, 20, Duration::from_millis(10));
            for envelope in out.drain(..) {
                assert_eq!(number(envelope.body()), next);
                next += 1;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        next
    })
}

/// The reference: the same messages one by one with `send_timeout`, sharing one 100 ms deadline.
#[test]
fn send_timeout_one_by_one_to_a_slow_receiver_keeps_the_connection() {
    let broker = Broker::embedded_with(|c: BrokerConfig| c.shared_memory(false)).unwrap();
    let server = broker.node().unwrap();
    let port = server.port("batch-unix/slow-single").open().unwrap();
    let client = broker.node().unwrap();
    let connection = client.connect("batch-unix/slow-single").unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let receiving = slow_receiver(port, stop.clone());
    let mut messages = numbered(0..1000, 1021).into_iter();
    let started = Instant::now();
    let deadline = started + Duration::from_millis(100);
    let mut rest = Vec::new();
    for message in messages.by_ref() {
        let left = deadline.saturating_duration_since(Instant::now());
        if let Err(error) = connection.send_timeout(message, left) {
            rest.push(error.into_message());
            break;
        }
    }
    rest.extend(messages);
    let took = started.elapsed();
    let left = rest.len();
    let result = connection.send_batch_timeout(&mut rest, WATCHDOG);
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let taken = receiving.join().unwrap();
    assert_eq!(result, Ok(()), "one by one: {left} left after {took:?}; {taken} taken");
    eprintln!("CONTROL one by one: {left} left after {took:?}; the rest {result:?}; {taken} taken");
}

#[test]
fn send_batch_timeout_to_a_slow_receiver_keeps_the_connection() {
    let broker = Broker::embedded_with(|c: BrokerConfig| c.shared_memory(false)).unwrap();
    let server = broker.node().unwrap();
    let port = server.port("batch-unix/slow").open().unwrap();
    let client = broker.node().unwrap();
    let connection = client.connect("batch-unix/slow").unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let receiving = slow_receiver(port, stop.clone());
    let mut batch = numbered(0..1000, 1021);
    let started = Instant::now();
    let result = connection.send_batch_timeout(&mut batch, Duration::from_millis(100));
    let took = started.elapsed();
    let left = batch.len();
    // The rest, without a bound, while the receiver goes on taking.
    let rest = connection.send_batch_timeout(&mut batch, WATCHDOG);
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let taken = receiving.join().unwrap();
    assert_eq!(
        rest,
        Ok(()),
        "send_batch_timeout(100 ms) returned {result:?} after {took:?} with {left} left; \
         {taken} taken"
    );
}

#[test]
fn messages_reported_sent_by_a_try_send_batch_to_a_full_link_all_reach_the_receiver() {
    let broker = Broker::embedded_with(|c: BrokerConfig| c.shared_memory(false)).unwrap();
    let server = broker.node().unwrap();
    let port = server.port("batch-unix/full").open().unwrap();
    let client = broker.node().unwrap();
    let connection = client.connect("batch-unix/full").unwrap();
    let mut batch = numbered(0..1000, 1021);
    let result = connection.try_send_batch(&mut batch);
    let sent = 1000 - batch.len() as u32;
    let mut out = Vec::new();
    let mut next = 0;
    while next < sent {
        port.recv_batch_timeout(&mut out, 100, WATCHDOG).unwrap();
        for envelope in out.drain(..) {
            assert_eq!(number(envelope.body()), next);
            next += 1;
        }
    }
    assert_eq!(
        port.recv_batch_timeout(&mut out, 100, Duration::from_millis(100)),
        Err(RecvTimeoutError::Timeout),
        "nothing beyond the ones reported sent"
    );
    assert_eq!(next, sent, "try_send_batch: {result:?}, {sent} reported sent, {next} received");
}

#[test]
fn a_batch_and_single_sends_from_another_thread_never_interleave() {
    let broker = Broker::embedded_with(|c: BrokerConfig| c.shared_memory(false)).unwrap();
    let server = broker.node().unwrap();
    let port = server.port("batch-unix/two-writers").open().unwrap();
    let client = broker.node().unwrap();
    let connection = std::sync::Arc::new(client.connect("batch-unix/two-writers").unwrap());
    let count = 3000u32;
    let receiving = std::thread::spawn(move || {
        let mut out = Vec::new();
        let (mut batched, mut single) = (0u32, 0u32);
        while batched < count || single < count {
            port.recv_batch_timeout(&mut out, 64, WATCHDOG).unwrap();
            for envelope in out.drain(..) {
                let body = envelope.body();
                let n = number(body);
                if body.len() == 700 {
                    assert_eq!(n, batched);
                    assert!(body[4..].iter().all(|&b| b == (n % 251) as u8));
                    batched += 1;
                } else {
                    assert_eq!(body.len(), 333);
                    assert_eq!(n, single);
                    single += 1;
                }
            }
        }
    });
    let singles = {
        let connection = connection.clone();
        std::thread::spawn(move || {
            for message in numbered(0..count, 333) {
                connection.send(message).unwrap();
            }
        })
    };
    let mut batch = numbered(0..count, 700);
    for chunk in batch.chunks(500).map(<[Message]>::to_vec) {
        let mut chunk = chunk;
        connection.send_batch(&mut chunk).unwrap();
    }
    batch.clear();
    singles.join().unwrap();
    receiving.join().unwrap();
}

#[test]
fn messages_handed_back_unsent_keep_id_zero() {
    // Message::id: "The id the sending process gave it (0 until sent)".
    let broker = Broker::embedded_with(|c: BrokerConfig| c.shared_memory(false)).unwrap();
    let server = broker.node().unwrap();
    let _port = server.port("batch-unix/ids").open().unwrap();
    let client = broker.node().unwrap();
    let connection = client.connect("batch-unix/ids").unwrap();
    let mut batch = numbered(0..1000, 1021);
    let result = connection.try_send_batch(&mut batch);
    // batch[0] is the one that failed (it was tried); the ones after it were never written.
    let given: Vec<u32> =
        batch[1..].iter().filter(|m| m.id() != 0).map(|m| number(m.body())).collect();
    assert!(
        given.is_empty(),
        "{result:?}: {} never-written messages handed back with an id, numbers {:?}..{:?}",
        given.len(),
        given.first(),
        given.last()
    );
}

#[test]
fn send_batch_timeout_writes_nothing_new_once_its_time_is_up() {
    let broker = Broker::embedded_with(|c: BrokerConfig| c.shared_memory(false)).unwrap();
    let server = broker.node().unwrap();
    let port = server.port("batch-unix/deadline").open().unwrap();
    let client = broker.node().unwrap();
    let connection = client.connect("batch-unix/deadline").unwrap();
    // The receiver starts taking 150 ms in, well after the sender's 50 ms.
    let receiving = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(150));
        receive_in_order(&port, 1000, 100);
    });
    let mut batch = numbered(0..1000, 1021);
    let started = Instant::now();
    let result = connection.send_batch_timeout(&mut batch, Duration::from_millis(50));
    let took = started.elapsed();
    let sent = 1000 - batch.len();
    connection.send_batch_timeout(&mut batch, WATCHDOG).unwrap();
    receiving.join().unwrap();
    assert!(
        sent < 300,
        "send_batch_timeout(50 ms) returned {result:?} after {took:?} having sent {sent}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_batch_async_to_a_receiver_that_starts_late_delivers_all() {
    let broker = Broker::embedded_with(|c: BrokerConfig| c.shared_memory(false)).unwrap();
    let server = broker.node().unwrap();
    let port = server.port("batch-unix/async").open().unwrap();
    let client = broker.node().unwrap();
    let connection = client.connect("batch-unix/async").unwrap();
    // The receiver starts taking after 700 ms.
    let receiving = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(700));
        receive_in_order(&port, 1000, 100);
    });
    let mut batch = numbered(0..1000, 1021);
    let result = tokio::time::timeout(WATCHDOG, connection.send_batch_async(&mut batch))
        .await
        .expect("within the watchdog");
    assert_eq!(result, Ok(()), "{} messages handed back", batch.len());
    receiving.join().unwrap();
}
