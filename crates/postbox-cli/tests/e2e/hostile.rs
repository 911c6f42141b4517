//! Hostile peers: garbage on links and on the broker's control socket, silent clients.
//! This test process plays the hostile peer with raw sockets; the server is a real worker.

use std::path::Path;

use postbox_core::wire::control::MAX_CONTROL_LEN;
use postbox_core::{
    ControlErrorCode, ControlMessage, FrameDecoder, FrameHeader, FrameKind, PortName, Target,
};
use postbox_transport::{ControlSocket, Link, LinkSide, TransportError, Wait};

use crate::util::{Daemon, WATCHDOG};

fn packet(message: &ControlMessage) -> Vec<u8> {
    let mut bytes = Vec::new();
    message.encode(&mut bytes);
    bytes
}

fn recv_message(socket: &ControlSocket) -> Result<ControlMessage, TransportError> {
    let mut buf = vec![0u8; MAX_CONTROL_LEN];
    let (len, _) = socket.recv(&mut buf, Wait::timeout(WATCHDOG))?;
    Ok(ControlMessage::decode(&buf[..len]).unwrap())
}

/// Attaches with raw control messages, as a hand-written client would.
fn raw_node(socket: &Path) -> ControlSocket {
    let control = ControlSocket::connect(socket).unwrap();
    control
        .send(
            &packet(&ControlMessage::Hello { request: 1 }),
            &[],
            Wait::Forever,
        )
        .unwrap();
    assert!(matches!(
        recv_message(&control).unwrap(),
        ControlMessage::Welcome { .. }
    ));
    control
}

/// Gets a raw link to port `name`.
fn raw_link(control: &ControlSocket, name: &str) -> Link {
    let target = Target::Port(PortName::new(name).unwrap());
    control
        .send(
            &packet(&ControlMessage::Connect {
                request: 2,
                target,
                rights: postbox_core::Rights::ALL,
            }),
            &[],
            Wait::Forever,
        )
        .unwrap();
    let mut buf = vec![0u8; MAX_CONTROL_LEN];
    let (len, fd) = control.recv(&mut buf, Wait::timeout(WATCHDOG)).unwrap();
    assert!(matches!(
        ControlMessage::decode(&buf[..len]),
        Ok(ControlMessage::Connected { .. })
    ));
    Link::from_fds(fd, LinkSide::Client).expect("the link's descriptors travel beside Connected")
}

fn header(kind: FrameKind, body: &[u8]) -> [u8; 32] {
    FrameHeader {
        kind,
        priority: 0,
        msg_type: 0,
        id: 1,
        correlation: 1,
        body_len: body.len() as u32,
        placement: postbox_core::Placement::Inline,
    }
    .encode(body)
}

/// The server closes a link that carried garbage: reading it ends with `Closed`.
fn assert_closed_by_server(link: &Link) {
    let mut decoder = FrameDecoder::new(1 << 20);
    loop {
        match link.read_into(&mut decoder, Wait::timeout(WATCHDOG)) {
            Ok(_) => continue,
            Err(TransportError::Closed) => return,
            Err(e) => panic!("expected the server to close the link, got {e:?}"),
        }
    }
}

#[test]
fn garbage_and_invalid_frames_cost_the_sender_its_link_and_nobody_else_anything() {
    let daemon = Daemon::start();
    let _server = daemon.worker(&["echo", "target"]);
    let node = daemon.node();
    let honest = node.connect("target").unwrap();
    let control = raw_node(daemon.socket());

    let garbage = raw_link(&control, "target");
    garbage
        .write_frame(&[0xde; 40], &[0xad; 100], Wait::Forever)
        .unwrap();
    assert_closed_by_server(&garbage);

    let bad_checksum = raw_link(&control, "target");
    let mut h = header(FrameKind::Call, b"hello");
    h[28] ^= 0xff;
    bad_checksum
        .write_frame(&h, b"hello", Wait::Forever)
        .unwrap();
    assert_closed_by_server(&bad_checksum);

    let oversized = raw_link(&control, "target");
    let mut h = header(FrameKind::Oneway, b"");
    h[24..28].copy_from_slice(&u32::MAX.to_le_bytes());
    oversized.write_frame(&h, &[], Wait::Forever).unwrap();
    assert_closed_by_server(&oversized);

    let reply_to_server = raw_link(&control, "target");
    reply_to_server
        .write_frame(&header(FrameKind::Reply, b"x"), b"x", Wait::Forever)
        .unwrap();
    assert_closed_by_server(&reply_to_server);

    // A truncated frame, then silence: the server must not wait on this link alone.
    let truncated = raw_link(&control, "target");
    let body = vec![1u8; 1000];
    let h = header(FrameKind::Call, &body);
    truncated
        .write_frame(&h, &body[..10], Wait::Forever)
        .unwrap();

    // A link that is opened and never written to.
    let _silent = raw_link(&control, "target");

    for i in 0..50 {
        let body = format!("honest call {i}");
        let reply = honest.call_timeout(body.as_str(), WATCHDOG).unwrap();
        assert_eq!(reply.body(), body.as_bytes());
    }
}

#[test]
fn garbage_control_packets_are_refused_and_the_broker_serves_everyone_else() {
    let daemon = Daemon::start();
    let _server = daemon.worker(&["echo", "steady"]);

    let garbage = ControlSocket::connect(daemon.socket()).unwrap();
    garbage.send(&[0xff; 17], &[], Wait::Forever).unwrap();
    match recv_message(&garbage).unwrap() {
        ControlMessage::Refused { code, .. } => assert_eq!(code, ControlErrorCode::Malformed),
        other => panic!("expected Refused, got {other:?}"),
    }
    assert_eq!(recv_message(&garbage).unwrap_err(), TransportError::Closed);

    let before_hello = ControlSocket::connect(daemon.socket()).unwrap();
    before_hello
        .send(
            &packet(&ControlMessage::List { request: 3 }),
            &[],
            Wait::Forever,
        )
        .unwrap();
    match recv_message(&before_hello).unwrap() {
        ControlMessage::Refused { code, .. } => assert_eq!(code, ControlErrorCode::OutOfOrder),
        other => panic!("expected Refused, got {other:?}"),
    }

    let oversized = ControlSocket::connect(daemon.socket()).unwrap();
    oversized
        .send(&vec![1u8; MAX_CONTROL_LEN + 100], &[], Wait::Forever)
        .unwrap();
    assert!(matches!(
        recv_message(&oversized).unwrap(),
        ControlMessage::Refused { .. }
    ));

    // A broker-to-node message sent to the broker.
    let confused = raw_node(daemon.socket());
    confused
        .send(
            &packet(&ControlMessage::Ok { request: 9 }),
            &[],
            Wait::Forever,
        )
        .unwrap();
    assert!(matches!(
        recv_message(&confused).unwrap(),
        ControlMessage::Refused { .. }
    ));

    // Clients that connect and say nothing, before and after Hello.
    let _mute = ControlSocket::connect(daemon.socket()).unwrap();
    let _mute_admitted = raw_node(daemon.socket());

    let node = daemon.node();
    let listing = node.list().unwrap();
    assert!(listing.ports.iter().any(|p| p.name.as_str() == "steady"));
    let connection = node.connect("steady").unwrap();
    assert_eq!(
        connection.call_timeout("ok?", WATCHDOG).unwrap().body(),
        b"ok?"
    );
    let output = daemon.postbox(&["call", "steady", "from the cli"]);
    assert!(output.status.success());
}

#[test]
fn a_second_hello_is_refused_without_losing_the_node() {
    let daemon = Daemon::start();
    let control = raw_node(daemon.socket());
    control
        .send(
            &packet(&ControlMessage::Hello { request: 5 }),
            &[],
            Wait::Forever,
        )
        .unwrap();
    match recv_message(&control).unwrap() {
        ControlMessage::Refused { request, code, .. } => {
            assert_eq!((request, code), (5, ControlErrorCode::OutOfOrder));
        }
        other => panic!("expected Refused, got {other:?}"),
    }
    control
        .send(
            &packet(&ControlMessage::List { request: 6 }),
            &[],
            Wait::Forever,
        )
        .unwrap();
    assert!(matches!(
        recv_message(&control).unwrap(),
        ControlMessage::Listing { request: 6, .. }
    ));
}

#[test]
fn a_flood_of_connects_to_one_server_does_not_cost_that_server_its_name() {
    let daemon = Daemon::start();
    let victim = daemon.worker(&["hold", "victim"]);
    let flooders: Vec<ControlSocket> = (0..20).map(|_| raw_node(daemon.socket())).collect();
    let target = Target::Port(PortName::new("victim").unwrap());
    for flooder in &flooders {
        for request in 0..200 {
            let connect = ControlMessage::Connect {
                request: 10 + request,
                target: target.clone(),
                rights: postbox_core::Rights::ALL,
            };
            flooder.send(&packet(&connect), &[], Wait::Forever).unwrap();
        }
    }
    // Every request is answered: a link, or a refusal when the server's queue was full.
    for flooder in &flooders {
        for _ in 0..200 {
            match recv_message(flooder).unwrap() {
                ControlMessage::Connected { .. } => {}
                ControlMessage::Refused { code, .. } => {
                    assert_eq!(code, ControlErrorCode::LimitExceeded)
                }
                other => panic!("unexpected {other:?}"),
            }
        }
    }
    drop(flooders);
    let node = daemon.node();
    let owner = node
        .list()
        .unwrap()
        .ports
        .into_iter()
        .find(|p| p.name.as_str() == "victim");
    assert_eq!(owner.map(|p| p.owner.process_id), Some(victim.process_id()));
}

#[test]
fn the_broker_tells_a_node_when_the_node_at_the_other_end_of_its_link_leaves() {
    let daemon = Daemon::start();
    let mut server = daemon.worker(&["echo", "leaving"]);
    let control = raw_node(daemon.socket());
    let target = Target::Port(PortName::new("leaving").unwrap());
    control
        .send(
            &packet(&ControlMessage::Connect {
                request: 2,
                target,
                rights: postbox_core::Rights::ALL,
            }),
            &[],
            Wait::Forever,
        )
        .unwrap();
    let link = match recv_message(&control).unwrap() {
        ControlMessage::Connected { link, .. } => link,
        other => panic!("expected Connected, got {other:?}"),
    };
    server.kill9();
    // A thread asleep on a shared-memory link's futex watches no descriptor: this notice is
    // how it hears of the death before its sleep slice ends.
    loop {
        match recv_message(&control).unwrap() {
            ControlMessage::LinkClosed {
                request: 0,
                link: closed,
            } => {
                assert_eq!(closed, link);
                break;
            }
            ControlMessage::Listing { .. } | ControlMessage::Ok { .. } => {}
            other => panic!("expected LinkClosed, got {other:?}"),
        }
    }
}
