//! Mailbox edge cases and hostile receivers: slots reused by new links, receivers that die in
//! the middle of a frame or never read, reused pull numbers, messages of the largest size.

use std::time::Duration;

use postbox_core::wire::control::MAX_CONTROL_LEN;
use postbox_core::{ControlMessage, FrameDecoder, FrameHeader, FrameKind, PortName};
use postbox_transport::{ControlSocket, TransportError, UnixLink, Wait};

use crate::util::{wait_until, Daemon, WATCHDOG};

/// A receiving link made by hand, as a hostile receiver would.
fn raw_receiver(daemon: &Daemon, mailbox: &str) -> (ControlSocket, UnixLink) {
    let control = ControlSocket::connect(daemon.socket()).unwrap();
    let mut buf = vec![0u8; MAX_CONTROL_LEN];
    let mut ask = |message: ControlMessage| {
        let mut packet = Vec::new();
        message.encode(&mut packet);
        control.send(&packet, &[], Wait::Forever).unwrap();
        control.recv(&mut buf, Wait::timeout(WATCHDOG)).unwrap().1
    };
    ask(ControlMessage::Hello { request: 1 });
    let name = PortName::new(mailbox).unwrap();
    let fd = ask(ControlMessage::ReceiveMailbox { request: 2, name });
    let fd = fd.into_iter().next().expect("a receiving link");
    (control, UnixLink::from_fd(fd))
}

fn pull(link: &UnixLink, correlation: u64, body: &[u8]) -> Result<(), TransportError> {
    let header = FrameHeader {
        kind: FrameKind::Call,
        priority: 0,
        msg_type: 0,
        id: correlation,
        correlation,
        body_len: body.len() as u32,
        placement: postbox_core::Placement::Inline,
    };
    link.write_frame(&header.encode(body), body, Wait::timeout(Duration::from_secs(2)))
}

#[test]
fn credit_for_a_departed_senders_message_does_not_go_to_the_link_that_took_its_place() {
    let daemon = Daemon::start();
    let node = daemon.node();
    let mailbox = node.mailbox("/slots").capacity(4).create().unwrap();
    let mut early = daemon.worker(&["send-many", "/slots", "1"]);
    early.wait_success();
    wait_until("the message is in the mailbox", || {
        node.stat("/slots").unwrap().counters.queued == 1
    });
    wait_until("the departed sender's link is gone", || {
        node.stat("/slots").unwrap().counters.links == 0
    });
    let late = node.connect("/slots").unwrap();
    assert_eq!(mailbox.recv_timeout(WATCHDOG).unwrap().body(), b"0");
    late.send("late").expect("the new sender's window is its own");
    assert_eq!(mailbox.recv_timeout(WATCHDOG).unwrap().body(), b"late");
}

#[test]
fn a_receiver_that_dies_in_the_middle_of_a_frame_gives_its_message_back() {
    let daemon = Daemon::start();
    let node = daemon.node();
    let mailbox = node.mailbox("/midframe").create().unwrap();
    node.connect("/midframe").unwrap().send("job").unwrap();
    {
        let (_control, link) = raw_receiver(&daemon, "/midframe");
        pull(&link, 1, &[]).unwrap();
        let mut decoder = FrameDecoder::new(1 << 20);
        let reply = loop {
            link.read_into(&mut decoder, Wait::timeout(WATCHDOG)).unwrap();
            if let Some(frame) = decoder.poll_frame().unwrap() {
                break frame;
            }
        };
        assert_eq!(&reply.body[16..], b"job", "the message is in flight to this receiver");
        // Five bytes of a header, then gone.
        link.write_frame(&[1, 0, 0, 0, 0], &[], Wait::Forever).unwrap();
    }
    assert_eq!(mailbox.recv_timeout(WATCHDOG).unwrap().body(), b"job");
}

#[test]
fn a_receiver_that_never_reads_its_answers_is_not_read_either() {
    let daemon = Daemon::start();
    let node = daemon.node();
    let _mailbox = node.mailbox("/deaf").create().unwrap();
    let (_control, link) = raw_receiver(&daemon, "/deaf");
    // Pulls that are answered at once ("empty"), never read: the broker stops reading them
    // once its answers pile up, so this writer is held back instead of growing the broker.
    let answer_now = 0u64.to_le_bytes();
    let mut written = 0u64;
    while pull(&link, written + 1, &answer_now).is_ok() {
        written += 1;
        assert!(written < 100_000, "the broker kept reading pulls nobody collected answers to");
    }
    // The broker still serves others.
    assert!(node.list().is_ok());
}

#[test]
fn a_pull_number_already_in_use_costs_the_receiver_its_link() {
    let daemon = Daemon::start();
    let node = daemon.node();
    let mailbox = node.mailbox("/reuse").create().unwrap();
    let (_control, link) = raw_receiver(&daemon, "/reuse");
    pull(&link, 7, &[]).unwrap();
    pull(&link, 7, &[]).unwrap();
    let mut decoder = FrameDecoder::new(1 << 20);
    let end = loop {
        match link.read_into(&mut decoder, Wait::timeout(WATCHDOG)) {
            Ok(_) => continue,
            Err(e) => break e,
        }
    };
    assert_eq!(end, TransportError::Closed);
    // Nothing was lost on the way: a message sent now goes to an honest receiver.
    node.connect("/reuse").unwrap().send("kept").unwrap();
    assert_eq!(mailbox.recv_timeout(WATCHDOG).unwrap().body(), b"kept");
}

#[test]
fn the_largest_message_a_mailbox_accepts_is_delivered() {
    let daemon = Daemon::start_with(&["--max-message-size", "4096"]);
    let node = daemon.node();
    let mailbox = node.mailbox("/big").create().unwrap();
    let sender = node.connect("/big").unwrap();
    let largest = sender.spec().message_size.unwrap();
    assert!(largest < 4096, "room is left for the sender's identity in a delivery");
    assert!(matches!(
        sender.send(vec![1u8; largest as usize + 1]),
        Err(postbox::SendError::TooLarge { .. })
    ));
    sender.send(vec![7u8; largest as usize]).unwrap();
    sender.send("small").unwrap();
    assert_eq!(mailbox.recv_timeout(WATCHDOG).unwrap().body().len(), largest as usize);
    assert_eq!(mailbox.recv_timeout(WATCHDOG).unwrap().body(), b"small");
}
