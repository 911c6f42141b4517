//! Fairness between the links of one port: a busy sender's backlog does not stand between a
//! quiet sender's message and the receiver (each link has a bounded share of the port's
//! queue; the rest of its messages wait, in order, for their turn).

use std::time::Duration;

use postbox::{Broker, Message, Selector};

/// Generous bound for what should happen soon: only a hang reaches it.
const WATCHDOG: Duration = Duration::from_secs(20);

#[test]
fn a_quiet_senders_message_is_not_queued_behind_a_busy_senders_whole_backlog() {
    let broker = Broker::embedded().unwrap();
    let server = broker.node().unwrap();
    let port = server.port("fair").open().unwrap();
    let (busy_node, quiet_node) = (broker.node().unwrap(), broker.node().unwrap());
    let busy = busy_node.connect("fair").unwrap();
    let quiet = quiet_node.connect("fair").unwrap();
    const BACKLOG: usize = 500;
    for i in 0..BACKLOG {
        busy.send(format!("busy {i}").into_bytes()).unwrap();
    }
    quiet.send("quiet").unwrap();
    // A link reaches its port's owner after `connect` returns: both links known to the port
    // before the first receive (else the busy link's messages are all there is to take).
    let deadline = std::time::Instant::now() + WATCHDOG;
    while port.connection_count() < 2 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(1));
    }
    // Everything was written before the first receive: one read of both links queues it all.
    let mut busy_before_quiet = 0;
    let mut next_busy = 0;
    for _ in 0..=BACKLOG {
        let envelope = port.recv().unwrap();
        if envelope.body() == b"quiet" {
            assert_eq!(envelope.sender(), quiet_node.process_id());
            busy_before_quiet = next_busy;
        } else {
            // The busy sender's messages still come in the order it sent them.
            assert_eq!(envelope.body(), format!("busy {next_busy}").as_bytes());
            next_busy += 1;
        }
    }
    assert_eq!(next_busy, BACKLOG, "nothing lost");
    assert!(
        busy_before_quiet <= 32,
        "the quiet message waited behind {busy_before_quiet} of the busy sender's"
    );
}

/// A port with two senders connected, the second quiet so far: shares are in force.
fn two_senders() -> (Broker, postbox::Node, postbox::Port, postbox::Connection, postbox::Connection)
{
    let broker = Broker::embedded().unwrap();
    let server = broker.node().unwrap();
    let port = server.port("fair").open().unwrap();
    let a = broker.node().unwrap().connect("fair").unwrap();
    let b = broker.node().unwrap().connect("fair").unwrap();
    (broker, server, port, a, b)
}

#[test]
fn a_receive_by_type_sees_a_message_behind_a_share_of_its_senders_others() {
    let (_broker, _server, port, a, b) = two_senders();
    b.send(Message::from("b is here").with_type(5)).unwrap();
    for i in 0..40 {
        a.send(Message::from(format!("note {i}").into_bytes()).with_type(1)).unwrap();
    }
    a.send(Message::from("the one").with_type(2)).unwrap();
    a.send(Message::from("lowest").with_type(0)).unwrap();
    let wanted = port.recv_matching_timeout(Selector::ANY.of_type(2), WATCHDOG).unwrap();
    assert_eq!(wanted.body(), b"the one");
    // The lowest type first, as msgrcv does, whatever was held back.
    let lowest = port.recv_matching_timeout(Selector::ANY.type_at_most(9), WATCHDOG).unwrap();
    assert_eq!(lowest.body(), b"lowest");
}

#[test]
fn an_urgent_message_never_waits_behind_its_own_senders_lower_priority_share() {
    let (_broker, _server, port, a, b) = two_senders();
    for i in 0..40 {
        a.send(Message::from(format!("low {i}").into_bytes()).with_priority(0)).unwrap();
    }
    a.send(Message::from("urgent").with_priority(31)).unwrap();
    for i in 0..200 {
        b.send(Message::from(format!("mid {i}").into_bytes()).with_priority(10)).unwrap();
    }
    assert_eq!(port.recv_timeout(WATCHDOG).unwrap().body(), b"urgent");
}

#[test]
fn an_urgent_message_behind_a_long_run_of_its_senders_is_received_first() {
    // One link: the receiver decodes only some of what it reads per receive, yet a message
    // of higher priority further on in the same read is never left behind.
    let broker = Broker::embedded().unwrap();
    let server = broker.node().unwrap();
    let port = server.port("urgent").open().unwrap();
    let sender = broker.node().unwrap().connect("urgent").unwrap();
    for i in 0..300 {
        sender.send(Message::from(format!("low {i}").into_bytes()).with_priority(0)).unwrap();
    }
    sender.send(Message::from("urgent").with_priority(31)).unwrap();
    assert_eq!(port.recv_timeout(WATCHDOG).unwrap().body(), b"urgent");
    let mut batch = Vec::new();
    port.recv_batch(&mut batch, 10).unwrap();
    let bodies: Vec<&[u8]> = batch.iter().map(|e| e.body()).collect();
    assert_eq!(bodies[0], b"low 0", "the rest follow in order");
    assert!(bodies.windows(2).all(|w| w[0] != w[1]));
}
