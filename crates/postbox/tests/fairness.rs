//! Fairness between the links of one port: a busy sender's backlog does not stand between a
//! quiet sender's message and the receiver (each link has a bounded share of the port's
//! queue; the rest of its messages wait, in order, for their turn).

use postbox::Broker;

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
