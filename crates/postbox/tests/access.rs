//! Access control, against an embedded broker whose policy belongs to another user: this
//! process is a stranger to it, so every rule applies to its nodes (the broker's own user may
//! do anything). Real processes under other uids are in `postbox-cli/tests/e2e/access.rs`.

use std::os::unix::fs::MetadataExt;
use std::time::{Duration, Instant};

use postbox::{
    AccessDenied, Broker, BrokerRequestError, CallError, ConnectError, Message, OpenError,
    Operation, Policy, Rights, SendBatchError, SendError, TrySendError,
};

/// A uid that is not this process's: the owner of the test brokers' policies.
const OWNER: u32 = 4_000_000_000;

fn me() -> u32 {
    std::fs::metadata("/proc/self").unwrap().uid()
}

/// A policy whose rules say `ME` for this process's uid.
fn policy(rules: &str) -> Policy {
    Policy::from_toml(&rules.replace("ME", &me().to_string()), OWNER).unwrap()
}

fn broker(rules: &str) -> Broker {
    let policy = policy(rules);
    Broker::embedded_with(|config| config.policy(policy)).unwrap()
}

fn denied(operation: Operation, name: &str) -> AccessDenied {
    AccessDenied::new(operation, name)
}

/// Generous bound for what should happen soon: only a hang reaches it.
const WATCHDOG: Duration = Duration::from_secs(20);

/// Waits for `condition`, failing the test after the watchdog.
fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + WATCHDOG;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

const SERVE_CALC: &str = r#"
    [[allow]]
    names = ["calc"]
    uids = [ME]
    operations = ["register"]
"#;

#[test]
fn every_operation_is_denied_by_default_with_a_typed_error_naming_it() {
    let broker = broker("");
    let node = broker.node().unwrap();
    assert_eq!(
        node.port("calc").open().unwrap_err(),
        OpenError::AccessDenied(denied(Operation::Register, "calc"))
    );
    assert_eq!(
        node.mailbox("jobs").create().unwrap_err(),
        OpenError::AccessDenied(denied(Operation::Manage, "jobs"))
    );
    assert_eq!(
        node.create_topic("/t/a", 1).unwrap_err(),
        BrokerRequestError::AccessDenied(denied(Operation::Manage, "/t/a"))
    );
    assert_eq!(
        node.subscribe("/t/*").unwrap_err(),
        ConnectError::AccessDenied(denied(Operation::Subscribe, "/t/*"))
    );
    match node.publish("/t/a", "news").unwrap_err() {
        SendError::AccessDenied { denied: d, message } => {
            assert_eq!(d, denied(Operation::Send, "/t/a"));
            assert_eq!(message.body(), b"news", "the message comes back");
        }
        other => panic!("expected a denial, got {other:?}"),
    }
    let other = broker.node().unwrap();
    match node.send_to(other.process_id(), "hi").unwrap_err() {
        SendError::AccessDenied { denied: d, .. } => {
            assert_eq!(d, denied(Operation::Send, &format!("#inbox/{}", me())));
        }
        other => panic!("expected a denial, got {other:?}"),
    }
}

#[test]
fn a_send_grant_lets_messages_through_and_refuses_calls_on_that_link() {
    let broker = broker(&format!(
        "{SERVE_CALC}\n[[allow]]\nnames = [\"calc\"]\nuids = [ME]\noperations = [\"send\"]"
    ));
    let server = broker.node().unwrap();
    let port = server.port("calc").open().unwrap();
    let client = broker.node().unwrap();
    let calc = client.connect("calc").unwrap();
    calc.send("one way").unwrap();
    let envelope = port.recv().unwrap();
    assert_eq!(envelope.body(), b"one way");
    assert_eq!(envelope.sender_identity().uid, me());
    assert_eq!(envelope.sender(), client.process_id());
    match calc.call("2+2").unwrap_err() {
        CallError::AccessDenied { denied: d, message } => {
            assert_eq!(d, denied(Operation::Call, "calc"));
            assert_eq!(message.body(), b"2+2");
        }
        other => panic!("expected a denial, got {other:?}"),
    }
}

#[test]
fn a_call_grant_carries_calls_and_refuses_one_way_sends_handing_them_back() {
    let broker = broker(&format!(
        "{SERVE_CALC}\n[[allow]]\nnames = [\"calc\"]\nuids = [ME]\noperations = [\"call\"]"
    ));
    let server = broker.node().unwrap();
    let port = server.port("calc").open().unwrap();
    let serving = std::thread::spawn(move || {
        let envelope = port.recv().unwrap();
        let answer = format!("re: {}", String::from_utf8_lossy(envelope.body()));
        envelope.reply(answer.into_bytes()).unwrap();
    });
    let client = broker.node().unwrap();
    let calc = client.connect("calc").unwrap();
    assert!(matches!(
        calc.send("x").unwrap_err(),
        SendError::AccessDenied { ref denied, .. } if denied.operation == Operation::Send
    ));
    assert!(matches!(calc.try_send("y").unwrap_err(), TrySendError::AccessDenied { .. }));
    let mut batch = vec![Message::from("a"), Message::from("b")];
    assert_eq!(calc.send_batch(&mut batch), Err(SendBatchError::AccessDenied));
    assert_eq!(batch.len(), 2, "nothing was taken from the batch");
    assert_eq!(calc.call("ping").unwrap().body(), b"re: ping");
    serving.join().unwrap();
}

#[test]
fn a_reloaded_policy_applies_to_the_next_request() {
    let broker = broker(SERVE_CALC);
    let server = broker.node().unwrap();
    let _port = server.port("calc").open().unwrap();
    let client = broker.node().unwrap();
    assert!(matches!(client.connect("calc"), Err(ConnectError::AccessDenied(_))));
    broker.reload_policy(policy(&format!(
        "{SERVE_CALC}\n[[allow]]\nnames = [\"calc\"]\neveryone = true\noperations = [\"send\"]"
    )));
    wait_until("the new policy is in force", || client.connect("calc").is_ok());
}

#[test]
fn the_owner_grants_a_capability_and_revoking_it_closes_the_link() {
    let broker = broker(SERVE_CALC);
    let owner = broker.node().unwrap();
    let port = owner.port("calc").open().unwrap();
    let friend = broker.node().unwrap();
    assert!(matches!(friend.connect("calc"), Err(ConnectError::AccessDenied(_))));

    owner.grant("calc", friend.process_id(), Rights::SEND).unwrap();
    let calc = friend.connect("calc").unwrap();
    calc.send("thanks").unwrap();
    assert_eq!(port.recv().unwrap().body(), b"thanks");
    assert!(matches!(calc.call("more?"), Err(CallError::AccessDenied { .. })));

    owner.revoke("calc", friend.process_id()).unwrap();
    wait_until("the revoked link closes", || {
        matches!(calc.send("still there?"), Err(SendError::Disconnected(_)))
    });
    assert!(matches!(friend.connect("calc"), Err(ConnectError::AccessDenied(_))));
}

#[test]
fn a_node_cannot_grant_what_it_does_not_hold_nor_revoke_what_it_did_not_grant() {
    let broker = broker(SERVE_CALC);
    let owner = broker.node().unwrap();
    let _port = owner.port("calc").open().unwrap();
    let (stranger, friend) = (broker.node().unwrap(), broker.node().unwrap());
    assert_eq!(
        stranger.grant("calc", friend.process_id(), Rights::SEND).unwrap_err(),
        BrokerRequestError::AccessDenied(denied(Operation::Send, "calc"))
    );
    owner.grant("calc", friend.process_id(), Rights::ALL).unwrap();
    // The friend may pass on what it holds; the stranger may not take it back.
    friend.grant("calc", stranger.process_id(), Rights::CALL).unwrap();
    assert!(matches!(
        owner.revoke("calc", owner.process_id()),
        Err(BrokerRequestError::Refused(_))
    ));
    assert!(matches!(
        stranger.revoke("calc", friend.process_id()),
        Err(BrokerRequestError::Refused(_))
    ));
    assert!(stranger.connect("calc").is_ok());
}

#[test]
fn a_mailbox_may_be_created_by_one_user_and_received_from_only_by_those_allowed() {
    let broker = broker(
        r#"
        [[allow]]
        names = ["jobs"]
        uids = [ME]
        operations = ["manage", "send"]
        "#,
    );
    let node = broker.node().unwrap();
    let _jobs = node.mailbox("jobs").create().unwrap();
    node.connect("jobs").unwrap().send("job 1").unwrap();
    assert_eq!(
        node.mailbox("jobs").open().unwrap_err(),
        OpenError::AccessDenied(denied(Operation::Receive, "jobs"))
    );
}

/// Everything allowed to this process's user, with `limits` as the quotas.
fn everything_with(limits: &str) -> String {
    format!(
        "{limits}\n[[allow]]\nnames = [\"**\"]\nuids = [ME]\noperations = [\"register\", \
         \"send\", \"call\", \"receive\", \"subscribe\", \"manage\"]"
    )
}

#[test]
fn ports_and_links_beyond_the_quota_are_refused_with_a_typed_error() {
    let broker = broker(&everything_with("[limits]\nports = 1\nconnections = 2"));
    let server = broker.node().unwrap();
    let _calc = server.port("calc").open().unwrap();
    assert!(matches!(server.port("more").open(), Err(OpenError::LimitExceeded(_))));
    let client = broker.node().unwrap();
    let _first = client.connect("calc").unwrap();
    let _jobs = client.mailbox("jobs").create().unwrap();
    // A link to the broker (a mailbox, a topic) counts as much as one to a node.
    let _second = client.connect("jobs").unwrap();
    assert!(matches!(client.connect("calc"), Err(ConnectError::LimitExceeded(_))));
    assert!(matches!(client.subscribe("/t"), Err(ConnectError::LimitExceeded(_))));
}

#[test]
fn calls_beyond_the_quota_are_refused_at_once_and_handed_back() {
    let broker = broker(&everything_with("[limits]\ncalls_in_flight = 2"));
    let server = broker.node().unwrap();
    let port = server.port("slow").open().unwrap();
    let client = broker.node().unwrap();
    let slow = client.connect("slow").unwrap();
    let waiting: Vec<_> = (0..2)
        .map(|i| {
            let slow = slow.clone();
            std::thread::spawn(move || slow.call(format!("call {i}").into_bytes()).unwrap())
        })
        .collect();
    let held = [port.recv().unwrap(), port.recv().unwrap()];
    match slow.call("one more").unwrap_err() {
        CallError::TooManyCalls { message, limit } => {
            assert_eq!((message.body(), limit), (&b"one more"[..], 2));
        }
        other => panic!("expected the quota, got {other:?}"),
    }
    for envelope in held {
        envelope.reply("done").unwrap();
    }
    for thread in waiting {
        assert_eq!(thread.join().unwrap().body(), b"done");
    }
    // Answered calls free the quota.
    let serving = std::thread::spawn(move || port.recv().unwrap().reply("again").unwrap());
    assert_eq!(slow.call("once more").unwrap().body(), b"again");
    serving.join().unwrap();
}

#[test]
fn a_mailbox_holds_no_more_of_one_senders_bytes_than_its_quota_and_loses_nothing() {
    let broker = broker(&everything_with("[limits]\nqueued_bytes = 1000"));
    let node = broker.node().unwrap();
    let jobs = node.mailbox("jobs").capacity(100).create().unwrap();
    let sender = node.connect("jobs").unwrap();
    for i in 0..10u8 {
        sender.send(vec![i; 400]).unwrap();
    }
    // 3 × 400 bytes reach the quota: the broker reads no more of this sender until some leave.
    wait_until("the broker holds what the quota allows", || {
        node.stat("jobs").is_ok_and(|s| s.counters.queued == 3)
    });
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(node.stat("jobs").unwrap().counters.queued, 3);
    for i in 0..10u8 {
        assert_eq!(jobs.recv_timeout(Duration::from_secs(20)).unwrap().body(), vec![i; 400]);
    }
}

/// A hand-written client: attaches, and asks for a link to `name` with every right.
struct RawClient {
    control: postbox_transport::ControlSocket,
    buf: Vec<u8>,
}

impl RawClient {
    fn attach(broker: &Broker) -> (Self, postbox::ProcessId) {
        let control = postbox_transport::ControlSocket::connect(broker.socket_path()).unwrap();
        let buf = vec![0u8; postbox_core::wire::control::MAX_CONTROL_LEN];
        let mut client = Self { control, buf };
        match client.ask(postbox_core::ControlMessage::Hello { request: 1 }) {
            (postbox_core::ControlMessage::Welcome { identity, .. }, _) => {
                (client, identity.process_id)
            }
            (other, _) => panic!("expected a welcome, got {other:?}"),
        }
    }

    fn ask(
        &mut self,
        message: postbox_core::ControlMessage,
    ) -> (postbox_core::ControlMessage, Vec<std::os::fd::OwnedFd>) {
        use postbox_transport::Wait;
        let mut packet = Vec::new();
        message.encode(&mut packet);
        self.control.send(&packet, &[], Wait::Forever).unwrap();
        let (len, fds) = self.control.recv(&mut self.buf, Wait::timeout(WATCHDOG)).unwrap();
        (postbox_core::ControlMessage::decode(&self.buf[..len]).unwrap(), fds)
    }

    /// A link to `name` and the rights the broker granted it.
    fn link(&mut self, name: &str) -> (postbox_transport::Link, Rights) {
        use postbox_core::{ControlMessage, Target};
        let target = Target::Port(postbox_core::PortName::new(name).unwrap());
        match self.ask(ControlMessage::Connect { request: 2, target, rights: Rights::ALL }) {
            (ControlMessage::Connected { rights, .. }, fds) => {
                let link =
                    postbox_transport::Link::from_fds(fds, postbox_transport::LinkSide::Client);
                (link.unwrap(), rights)
            }
            (other, _) => panic!("expected a link, got {other:?}"),
        }
    }
}

/// Writes one inline frame of `kind`; false once the link is closed.
fn write_frame(link: &postbox_transport::Link, kind: postbox_core::FrameKind, body: &[u8]) -> bool {
    let header = postbox_core::FrameHeader {
        kind,
        priority: 0,
        msg_type: 0,
        id: 1,
        correlation: 1,
        body_len: body.len() as u32,
        placement: postbox_core::Placement::Inline,
    };
    link.write_frame(&header.encode(body), body, postbox_transport::Wait::NonBlocking).is_ok()
}

/// Reads `link` until the server closes it (the watchdog fails the test otherwise).
fn assert_closed_by_server(link: &postbox_transport::Link) {
    use postbox_transport::{TransportError, Wait};
    let mut decoder = postbox_core::FrameDecoder::new(1 << 20);
    loop {
        match link.read_into(&mut decoder, Wait::timeout(WATCHDOG)) {
            Ok(_) => continue,
            Err(TransportError::Closed) => return,
            Err(e) => panic!("expected the server to close the link, got {e:?}"),
        }
    }
}

/// A client that ignores the rights of its link (sends a call on a link granted one-way
/// messages only) loses the link: the server enforces the grant too, not only the client.
#[test]
fn a_server_closes_a_link_that_carries_what_the_broker_did_not_grant() {
    use postbox_core::FrameKind;
    let broker = broker(&format!(
        "{SERVE_CALC}\n[[allow]]\nnames = [\"calc\"]\nuids = [ME]\noperations = [\"send\"]"
    ));
    let server = broker.node().unwrap();
    let port = server.port("calc").open().unwrap();
    let (link, rights) = RawClient::attach(&broker).0.link("calc");
    assert_eq!(rights, Rights::SEND, "asked for everything, granted what the policy allows");
    assert!(write_frame(&link, FrameKind::Oneway, b"allowed"));
    assert_eq!(port.recv().unwrap().body(), b"allowed");
    assert!(write_frame(&link, FrameKind::Call, b"not allowed"));
    // The server reads its links while it receives.
    let receiving = std::thread::spawn(move || port.recv_timeout(Duration::from_secs(1)));
    assert_closed_by_server(&link);
    assert!(receiving.join().unwrap().is_err(), "the call was not delivered");
}

/// A revoked client that ignores the broker's notice and goes on writing is cut off by the
/// port owner's end, on a shared-memory link and on a Unix link alike.
#[test]
fn a_revoked_client_that_ignores_the_notice_delivers_nothing_more() {
    use postbox_core::FrameKind;
    for shared_memory in [true, false] {
        let policy = policy(SERVE_CALC);
        let broker =
            Broker::embedded_with(|c| c.policy(policy).shared_memory(shared_memory)).unwrap();
        let owner = broker.node().unwrap();
        let port = owner.port("calc").open().unwrap();
        let (mut raw, raw_id) = RawClient::attach(&broker);
        owner.grant("calc", raw_id, Rights::SEND).unwrap();
        let (link, _) = raw.link("calc");
        assert!(write_frame(&link, FrameKind::Oneway, b"before"));
        assert_eq!(port.recv().unwrap().body(), b"before");

        // The owner's end is shut by the time revoke returns (the notice comes first).
        owner.revoke("calc", raw_id).unwrap();
        let mut written = 0;
        while written < 100 && write_frame(&link, FrameKind::Oneway, b"after") {
            written += 1;
        }
        assert!(
            port.recv_timeout(Duration::from_millis(200)).is_err(),
            "nothing written after the revocation is delivered ({written} frames written, \
             shared memory: {shared_memory})"
        );
        assert_closed_by_server(&link);
    }
}

/// A subscriber that asks for an enormous queue and does not read costs the broker its byte
/// quota (plus what is already on the way), not every message published: the rest are
/// dropped, counted, as for any slow subscriber.
#[test]
fn a_subscriber_that_does_not_read_is_held_to_its_byte_quota() {
    let broker = broker(&everything_with("[limits]\nqueued_bytes = 65536"));
    let node = broker.node().unwrap();
    let subscription = node.subscription("/news").capacity(u32::MAX).open().unwrap();
    const PUBLISHED: u64 = 4000;
    for i in 0..PUBLISHED {
        node.publish("/news", vec![(i % 251) as u8; 1024]).unwrap();
    }
    // Everything published reached the broker once a later request is answered.
    node.list().unwrap();
    std::thread::sleep(Duration::from_millis(100));
    let (mut received, mut lost) = (0u64, 0u64);
    while let Ok(envelope) = subscription.recv_timeout(Duration::from_millis(500)) {
        received += 1;
        lost += envelope.lost();
    }
    assert_eq!(received + lost, PUBLISHED, "every message is received or counted lost");
    assert!(lost > 0, "the broker did not hold all {PUBLISHED} KiB for a subscriber");
}
