//! Zero-copy payloads: space lent by a shared-memory link, written in place, read in place by
//! the receiver, and handed back when the receiver drops it. Two nodes in this process, each
//! with its own link ends, as two processes would have.

use std::time::Duration;

use postbox::{Broker, LoanError, Message};

const WATCHDOG: Duration = Duration::from_secs(20);

#[test]
fn a_lent_payload_is_read_in_place_and_its_space_comes_back_when_dropped() {
    let broker = Broker::embedded().unwrap();
    let server = broker.node().unwrap();
    let port = server.port("zero/copy").read_in_place().open().unwrap();
    let client = broker.node().unwrap();
    let connection = client.connect("zero/copy").unwrap();

    let len = 9 << 20;
    let mut message = connection.loan(len).unwrap();
    assert!(message.is_zero_copy());
    for (i, byte) in message.body_mut().iter_mut().enumerate() {
        *byte = (i % 251) as u8;
    }
    connection.send(message).unwrap();
    let received = port.recv_timeout(WATCHDOG).unwrap();
    assert!(received.message().is_zero_copy(), "read in place, not copied");
    assert_eq!(received.body().len(), len);
    assert!(received.body().iter().enumerate().all(|(i, &b)| b == (i % 251) as u8));

    // The pool (16 MiB) cannot lend a second 9 MiB while the receiver holds the first.
    assert_eq!(connection.try_loan(len).unwrap_err(), LoanError::Full);
    assert_eq!(
        connection.loan_timeout(len, Duration::from_millis(50)).unwrap_err(),
        LoanError::Full
    );
    drop(received);
    let again = connection.loan_timeout(len, WATCHDOG).unwrap();
    assert_eq!(again.body().len(), len);
    // Dropped unsent, its space is free again at once.
    drop(again);
    assert!(connection.try_loan(len).is_ok());
}

#[test]
fn a_server_replies_in_place_and_the_caller_reads_the_reply_where_it_lies() {
    let broker = Broker::embedded().unwrap();
    let server = broker.node().unwrap();
    let port = server.port("zero/reply").open().unwrap();
    let serving = std::thread::spawn(move || {
        let mut call = port.recv_timeout(WATCHDOG).unwrap();
        let token = call.take_reply_token().unwrap();
        let mut reply = token.loan(call.body().len() * 2).unwrap();
        let (front, back) = reply.body_mut().split_at_mut(call.body().len());
        front.copy_from_slice(call.body());
        back.copy_from_slice(call.body());
        token.reply(reply).unwrap();
    });
    let client = broker.node().unwrap();
    let connection = client.connect("zero/reply").unwrap().read_replies_in_place();
    let mut request = connection.loan(1 << 20).unwrap();
    request.body_mut().fill(0xab);
    let reply = connection.call_timeout(request, WATCHDOG).unwrap();
    assert!(reply.is_zero_copy());
    assert_eq!(reply.body().len(), 2 << 20);
    assert!(reply.body().iter().all(|&b| b == 0xab));
    serving.join().unwrap();
}

#[test]
fn lent_space_is_refused_beyond_the_pool_and_on_unix_links_and_copied_elsewhere() {
    let broker = Broker::embedded().unwrap();
    let server = broker.node().unwrap();
    let first = server.port("zero/first").open().unwrap();
    let second = server.port("zero/second").read_in_place().open().unwrap();
    let client = broker.node().unwrap();
    let to_first = client.connect("zero/first").unwrap();
    let to_second = client.connect("zero/second").unwrap();
    assert!(matches!(to_first.loan(64 << 20), Err(LoanError::TooLarge { .. })));

    // Lent by one link, sent on another: the bytes are copied, the space goes back.
    let mut message = to_first.loan(10_000).unwrap();
    message.body_mut().fill(3);
    to_second.send(message).unwrap();
    let got = second.recv_timeout(WATCHDOG).unwrap();
    assert!(!got.message().is_zero_copy(), "a small body travels in the stream");
    assert!(got.body().iter().all(|&b| b == 3) && got.body().len() == 10_000);
    // A large body of this process is copied into the pool once and read in place.
    to_second.send(vec![4u8; 1 << 20]).unwrap();
    let got = second.recv_timeout(WATCHDOG).unwrap();
    assert!(got.message().is_zero_copy(), "a large body travels through the pool");
    assert!(got.body().iter().all(|&b| b == 4) && got.body().len() == 1 << 20);
    assert!(first.try_recv().is_err());
    // ... and the space it was lent went back to the first link's pool.
    let whole = to_first.try_loan(16 << 20).unwrap();
    drop(whole);

    let unix = Broker::embedded_with(|config| config.shared_memory(false)).unwrap();
    let unix_server = unix.node().unwrap();
    let _port = unix_server.port("zero/unix").open().unwrap();
    let unix_client = unix.node().unwrap();
    let connection = unix_client.connect("zero/unix").unwrap();
    assert_eq!(connection.loan(10).unwrap_err(), LoanError::NotSharedMemory);
    // Ordinary messages still work there.
    connection.send(Message::new("plain")).unwrap();
}

#[test]
fn a_sealed_payload_crosses_without_a_copy_and_nobody_can_change_it() {
    let broker = Broker::embedded().unwrap();
    let server = broker.node().unwrap();
    let port = server.port("zero/sealed").open().unwrap();
    let client = broker.node().unwrap();
    let connection = client.connect("zero/sealed").unwrap();
    // Large enough that an owned body would go through the pool: a sealed one must not.
    let message = Message::sealed(3 << 20, |bytes| bytes.fill(0x77)).unwrap();
    assert!(message.is_zero_copy());
    connection.send(message.clone()).unwrap();
    connection.send(message).unwrap();
    for _ in 0..2 {
        let got = port.recv_timeout(WATCHDOG).unwrap();
        assert!(got.message().is_sealed(), "mapped from the sealed object, not the pool");
        assert_eq!(got.body().len(), 3 << 20);
        assert!(got.body().iter().all(|&b| b == 0x77));
    }
    // Writing to a received sealed body gives a private copy.
    connection.send(Message::sealed(10, |b| b.fill(1)).unwrap()).unwrap();
    let mut own = port.recv_timeout(WATCHDOG).unwrap().into_message();
    own.body_mut()[0] = 2;
    assert!(!own.is_zero_copy());
    assert_eq!(own.body()[..2], [2, 1]);

    // Over a Unix link the bytes are copied.
    let unix = Broker::embedded_with(|config| config.shared_memory(false)).unwrap();
    let unix_server = unix.node().unwrap();
    let unix_port = unix_server.port("zero/sealed-unix").open().unwrap();
    let unix_client = unix.node().unwrap();
    let to_unix = unix_client.connect("zero/sealed-unix").unwrap();
    to_unix.send(Message::sealed(5000, |b| b.fill(5)).unwrap()).unwrap();
    let got = unix_port.recv_timeout(WATCHDOG).unwrap();
    assert!(!got.message().is_zero_copy());
    assert_eq!(got.body(), vec![5u8; 5000]);
}

#[test]
fn a_port_that_does_not_trust_its_senders_copies_pooled_payloads_out_and_frees_them_at_once() {
    let broker = Broker::embedded().unwrap();
    let server = broker.node().unwrap();
    let port = server.port("zero/untrusted").open().unwrap();
    let client = broker.node().unwrap();
    let connection = client.connect("zero/untrusted").unwrap();
    let mut message = connection.loan(9 << 20).unwrap();
    message.body_mut().fill(6);
    connection.send(message).unwrap();
    let got = port.recv_timeout(WATCHDOG).unwrap();
    assert!(!got.message().is_zero_copy(), "copied out: the sender could change it");
    assert!(got.body().iter().all(|&b| b == 6) && got.body().len() == 9 << 20);
    // The space went back on arrival, though the copy is still held.
    assert!(connection.loan_timeout(9 << 20, WATCHDOG).is_ok());
    // Sealed payloads cannot change: read in place even here.
    connection.send(Message::sealed(100_000, |b| b.fill(2)).unwrap()).unwrap();
    let sealed = port.recv_timeout(WATCHDOG).unwrap();
    assert!(sealed.message().is_sealed() && sealed.message().is_zero_copy());
    drop(got);
}
