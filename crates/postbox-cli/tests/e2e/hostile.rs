//! Hostile peers: garbage, truncated, oversized and out-of-order input on links and on the
//! broker's control socket (typed requests too), silent clients, floods of connections and of
//! requests, and peers that stop reading. This test process plays the hostile peer with raw
//! sockets; the server is a real worker.

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
    control.send(&packet(&ControlMessage::Hello { request: 1 }), &[], Wait::Forever).unwrap();
    assert!(matches!(recv_message(&control).unwrap(), ControlMessage::Welcome { .. }));
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
    assert!(matches!(ControlMessage::decode(&buf[..len]), Ok(ControlMessage::Connected { .. })));
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
    garbage.write_frame(&[0xde; 40], &[0xad; 100], Wait::Forever).unwrap();
    assert_closed_by_server(&garbage);

    let bad_checksum = raw_link(&control, "target");
    let mut h = header(FrameKind::Call, b"hello");
    h[28] ^= 0xff;
    bad_checksum.write_frame(&h, b"hello", Wait::Forever).unwrap();
    assert_closed_by_server(&bad_checksum);

    let oversized = raw_link(&control, "target");
    let mut h = header(FrameKind::Oneway, b"");
    h[24..28].copy_from_slice(&u32::MAX.to_le_bytes());
    oversized.write_frame(&h, &[], Wait::Forever).unwrap();
    assert_closed_by_server(&oversized);

    let reply_to_server = raw_link(&control, "target");
    reply_to_server.write_frame(&header(FrameKind::Reply, b"x"), b"x", Wait::Forever).unwrap();
    assert_closed_by_server(&reply_to_server);

    // A truncated frame, then silence: the server must not wait on this link alone.
    let truncated = raw_link(&control, "target");
    let body = vec![1u8; 1000];
    let h = header(FrameKind::Call, &body);
    truncated.write_frame(&h, &body[..10], Wait::Forever).unwrap();

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
    before_hello.send(&packet(&ControlMessage::List { request: 3 }), &[], Wait::Forever).unwrap();
    match recv_message(&before_hello).unwrap() {
        ControlMessage::Refused { code, .. } => assert_eq!(code, ControlErrorCode::OutOfOrder),
        other => panic!("expected Refused, got {other:?}"),
    }

    let oversized = ControlSocket::connect(daemon.socket()).unwrap();
    oversized.send(&vec![1u8; MAX_CONTROL_LEN + 100], &[], Wait::Forever).unwrap();
    assert!(matches!(recv_message(&oversized).unwrap(), ControlMessage::Refused { .. }));

    // A broker-to-node message sent to the broker.
    let confused = raw_node(daemon.socket());
    confused.send(&packet(&ControlMessage::Ok { request: 9 }), &[], Wait::Forever).unwrap();
    assert!(matches!(recv_message(&confused).unwrap(), ControlMessage::Refused { .. }));

    // Clients that connect and say nothing, before and after Hello.
    let _mute = ControlSocket::connect(daemon.socket()).unwrap();
    let _mute_admitted = raw_node(daemon.socket());

    let node = daemon.node();
    let listing = node.list().unwrap();
    assert!(listing.ports.iter().any(|p| p.name.as_str() == "steady"));
    let connection = node.connect("steady").unwrap();
    assert_eq!(connection.call_timeout("ok?", WATCHDOG).unwrap().body(), b"ok?");
    let output = daemon.postbox(&["call", "steady", "from the cli"]);
    assert!(output.status.success());
}

#[test]
fn a_second_hello_is_refused_without_losing_the_node() {
    let daemon = Daemon::start();
    let control = raw_node(daemon.socket());
    control.send(&packet(&ControlMessage::Hello { request: 5 }), &[], Wait::Forever).unwrap();
    match recv_message(&control).unwrap() {
        ControlMessage::Refused { request, code, .. } => {
            assert_eq!((request, code), (5, ControlErrorCode::OutOfOrder));
        }
        other => panic!("expected Refused, got {other:?}"),
    }
    control.send(&packet(&ControlMessage::List { request: 6 }), &[], Wait::Forever).unwrap();
    assert!(matches!(recv_message(&control).unwrap(), ControlMessage::Listing { request: 6, .. }));
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
    let owner = node.list().unwrap().ports.into_iter().find(|p| p.name.as_str() == "victim");
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
            ControlMessage::LinkClosed { request: 0, link: closed } => {
                assert_eq!(closed, link);
                break;
            }
            ControlMessage::Listing { .. } | ControlMessage::Ok { .. } => {}
            other => panic!("expected LinkClosed, got {other:?}"),
        }
    }
}

// ---- Floods, peers that stop reading, out-of-order and truncated input -------------------

/// Control connections one hostile peer opens at once: more than a broker admits, so that it
/// must refuse some and still serve the nodes it has.
const FLOOD_CONNECTIONS: usize = 10_000;

/// Nodes a broker admits at once by default (`BrokerConfig::max_nodes`).
const BROKER_MAX_NODES: usize = 4096;

/// Descriptors this test process keeps for everything but a flood (other tests run beside it).
const SPARE_DESCRIPTORS: u64 = 2048;

/// Raises this process's descriptor limit so that `wanted` more fit (the hard limit too, where
/// the process may); returns how many fit.
fn descriptors_for(wanted: usize) -> usize {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let needed = wanted as u64 + SPARE_DESCRIPTORS;
    let limit = getrlimit(Resource::Nofile);
    if limit.current.is_some_and(|current| current < needed) {
        let maximum = limit.maximum.map(|maximum| maximum.max(needed));
        let raised = setrlimit(Resource::Nofile, Rlimit { current: Some(needed), maximum });
        if raised.is_err() {
            // Not privileged: as far as the hard limit goes.
            let _ = setrlimit(
                Resource::Nofile,
                Rlimit { current: limit.maximum, maximum: limit.maximum },
            );
        }
    }
    getrlimit(Resource::Nofile)
        .current
        .map_or(wanted, |current| current.saturating_sub(SPARE_DESCRIPTORS) as usize)
        .min(wanted)
}

/// Runs `work` on a thread of its own and waits for it at most [`WATCHDOG`]: a hang fails the
/// test instead of stalling it.
fn within_watchdog<T: Send + 'static>(what: &str, work: impl FnOnce() -> T + Send + 'static) -> T {
    let (done, result) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = done.send(work());
    });
    match result.recv_timeout(WATCHDOG) {
        Ok(value) => value,
        Err(_) => panic!("timed out waiting until {what}"),
    }
}

/// Attaches a fresh node, retrying while the broker is still busy with a flood's aftermath.
fn attach_soon(socket: &Path) -> postbox::Node {
    let deadline = std::time::Instant::now() + WATCHDOG;
    loop {
        match postbox::Node::attach_to(socket) {
            Ok(node) => return node,
            Err(e) => {
                assert!(std::time::Instant::now() < deadline, "a fresh node could not attach: {e}")
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// One call on `connection`, answered by an echo server.
fn assert_echoes(connection: &postbox::Connection, text: &str) {
    let reply = connection.call_timeout(text, WATCHDOG).unwrap();
    assert_eq!(reply.body(), text.as_bytes());
}

#[test]
fn ten_thousand_control_connections_neither_stop_the_broker_nor_lock_out_nodes_for_good() {
    let count = descriptors_for(FLOOD_CONNECTIONS);
    let daemon = Daemon::start();
    let _server = daemon.worker(&["echo", "steady"]);
    let node = daemon.node();
    let before = node.connect("steady").unwrap();
    assert_echoes(&before, "before the flood");

    let socket = daemon.socket().to_owned();
    let (flood, failed) = within_watchdog("the broker took a flood of connections", move || {
        let mut flood = Vec::with_capacity(count);
        let mut failed = 0_usize;
        for i in 0..count {
            match ControlSocket::connect(&socket) {
                Ok(connection) => {
                    // Some say Hello and never read the answer; most say nothing at all.
                    if i % 8 == 0 {
                        let hello = packet(&ControlMessage::Hello { request: 1 });
                        let _ = connection.send(&hello, &[], Wait::NonBlocking);
                    }
                    flood.push(connection);
                }
                // Out of descriptors, or a refused connect: a flood keeps trying.
                Err(_) => failed += 1,
            }
        }
        (flood, failed)
    });
    eprintln!("flood: {} connections open, {failed} failed to connect", flood.len());

    // The node attached before the flood keeps its connection and its control channel.
    assert_echoes(&before, "during the flood");
    assert!(node.list().unwrap().ports.iter().any(|p| p.name.as_str() == "steady"));
    // A node attaching now is admitted or refused, never left hanging.
    let socket = daemon.socket().to_owned();
    let admitted = within_watchdog("the broker answered a node during the flood", move || {
        postbox::Node::attach_to(&socket).map(drop).map_err(|e| e.to_string())
    });
    eprintln!("a node attaching during the flood: {admitted:?}");

    // Whatever the broker said to the flood was a welcome or a refusal for lack of room (or
    // of a Hello in time).
    let mut buf = vec![0u8; MAX_CONTROL_LEN];
    let mut refused = 0_usize;
    for connection in &flood {
        let Ok((len, _)) = connection.recv(&mut buf, Wait::NonBlocking) else { continue };
        match ControlMessage::decode(&buf[..len]).unwrap() {
            ControlMessage::Welcome { .. } => {}
            ControlMessage::Refused { code, .. } => {
                assert!(
                    matches!(code, ControlErrorCode::LimitExceeded | ControlErrorCode::OutOfOrder),
                    "refused with {code:?}"
                );
                refused += 1;
            }
            other => panic!("the broker told a flood connection {other:?}"),
        }
    }
    if flood.len() > BROKER_MAX_NODES {
        assert!(refused > 0, "{} connections and none refused", flood.len());
    }
    drop(flood);

    let fresh = attach_soon(daemon.socket());
    let connection = fresh.connect("steady").unwrap();
    assert_echoes(&connection, "after the flood");
    assert_echoes(&before, "after the flood, from before it");
}

#[test]
// See the ECONNRESET note in postbox-transport control_socket.rs `recv`.
fn a_node_refused_by_a_full_broker_is_told_that_the_broker_is_full() {
    let count = descriptors_for(BROKER_MAX_NODES + 64);
    let daemon = Daemon::start();
    if count < BROKER_MAX_NODES + 64 {
        eprintln!("only {count} descriptors: the broker cannot be filled from here");
        return;
    }
    // Silent connections fill every slot (they would be dropped after the Hello timeout).
    let socket = daemon.socket().to_owned();
    let _flood = within_watchdog("the broker took a flood of connections", move || {
        (0..count).filter_map(|_| ControlSocket::connect(&socket).ok()).collect::<Vec<_>>()
    });
    let socket = daemon.socket().to_owned();
    let refused = within_watchdog("a full broker answered a node", move || {
        postbox::Node::attach_to(&socket).map(drop)
    });
    match refused {
        Err(postbox::NodeError::Refused(detail)) => assert!(detail.contains("full"), "{detail}"),
        other => panic!("expected a refusal saying the broker is full, got {other:?}"),
    }
}

#[test]
fn a_node_that_floods_requests_and_never_reads_the_answers_is_cut_off_and_others_are_served() {
    let daemon = Daemon::start();
    let _server = daemon.worker(&["echo", "steady"]);
    let node = daemon.node();
    let honest = node.connect("steady").unwrap();
    // Many ports make every listing long: the hog's socket fills sooner.
    let _ports: Vec<postbox::Port> =
        (0..64).map(|i| node.port(&format!("bulk-{i:02}")).open().unwrap()).collect();

    let hog = raw_node(daemon.socket());
    let list = packet(&ControlMessage::List { request: 7 });
    let mut sent = 0_usize;
    let cut = loop {
        match hog.send(&list, &[], Wait::timeout(WATCHDOG)) {
            Ok(()) => sent += 1,
            Err(e) => break e,
        }
        if sent % 200 == 0 {
            assert_echoes(&honest, &format!("while the hog sent {sent} requests"));
        }
        assert!(sent < 1_000_000, "the broker went on answering a node that never reads");
    };
    assert_eq!(cut, TransportError::Closed, "the hog's requests stopped with {cut:?}");

    // What the hog can still read is what the broker managed to send before cutting it off.
    let mut answers = 0_usize;
    loop {
        match recv_message(&hog) {
            Ok(ControlMessage::Listing { .. }) => answers += 1,
            Ok(other) => panic!("the hog was told {other:?}"),
            Err(TransportError::Closed) => break,
            Err(e) => panic!("expected the broker to close the hog's socket, got {e:?}"),
        }
    }
    assert!(answers < sent, "{answers} answers to {sent} requests: nothing was dropped");

    assert_echoes(&honest, "after the hog was cut off");
    assert_eq!(node.list().unwrap().ports.len(), 65);
    let fresh = daemon.node();
    assert_echoes(&fresh.connect("steady").unwrap(), "from a node attached afterwards");
}

/// How many refusals, each with `code`, the broker sends a connection that sent `bytes` (after
/// its Hello when `admitted`) before it hangs up, which it must. One packet only: the broker
/// reads all of it before it hangs up (see the ignored test below for more).
fn refusals_until_closed(
    socket: &Path,
    admitted: bool,
    bytes: &[u8],
    code: ControlErrorCode,
) -> usize {
    let control = if admitted { raw_node(socket) } else { ControlSocket::connect(socket).unwrap() };
    control.send(bytes, &[], Wait::timeout(WATCHDOG)).unwrap();
    let mut refusals = 0;
    loop {
        match recv_message(&control) {
            Ok(ControlMessage::Refused { code: got, .. }) => {
                assert_eq!(got, code, "after {bytes:02x?}");
                refusals += 1;
            }
            Ok(other) => panic!("after {bytes:02x?} the broker answered {other:?}"),
            Err(TransportError::Closed) => return refusals,
            Err(e) => panic!("after {bytes:02x?} expected the broker to hang up, got {e:?}"),
        }
    }
}

/// Every message a broker sends and never takes, in a form it would send.
fn broker_to_node_messages() -> Vec<ControlMessage> {
    let identity = postbox_core::PeerIdentity {
        process_id: postbox_core::ProcessId::new(1, 1),
        uid: 0,
        gid: 0,
    };
    let name = PortName::new("steady").unwrap();
    vec![
        ControlMessage::Welcome { request: 1, identity, max_message_size: 4096 },
        ControlMessage::Ok { request: 1 },
        ControlMessage::Connected {
            request: 1,
            link: postbox_core::LinkId(1),
            server: identity,
            spec: postbox_core::PortSpec::default(),
            rights: postbox_core::Rights::ALL,
            quota: postbox_core::Quota::default(),
        },
        ControlMessage::Listing { request: 1, nodes: 1, ports: Vec::new(), truncated: false },
        ControlMessage::Refused {
            request: 1,
            code: ControlErrorCode::Malformed,
            detail: "you too".into(),
        },
        ControlMessage::IncomingConnection {
            link: postbox_core::LinkId(1),
            target: postbox_core::ListenTarget::Port(name.clone()),
            client: identity,
            rights: postbox_core::Rights::ALL,
            quota: postbox_core::Quota::default(),
        },
        ControlMessage::StatQuery { query: 1, name },
    ]
}

#[test]
fn control_messages_out_of_order_truncated_or_oversized_cost_only_their_sender() {
    let daemon = Daemon::start();
    let _server = daemon.worker(&["echo", "steady"]);
    let node = daemon.node();
    let honest = node.connect("steady").unwrap();
    let socket = daemon.socket();
    let hello = packet(&ControlMessage::Hello { request: 1 });
    let connect = packet(&ControlMessage::Connect {
        request: 2,
        target: Target::Port(PortName::new("steady").unwrap()),
        rights: postbox_core::Rights::ALL,
    });

    // Before Hello: the broker's own messages, and requests.
    for message in broker_to_node_messages() {
        let bytes = packet(&message);
        let refusals = refusals_until_closed(socket, false, &bytes, ControlErrorCode::OutOfOrder);
        assert_eq!(refusals, 1, "{message:?} before Hello");
    }
    assert_eq!(refusals_until_closed(socket, false, &connect, ControlErrorCode::OutOfOrder), 1);
    // After Hello: the broker's own messages sent back to it.
    for message in broker_to_node_messages() {
        let bytes = packet(&message);
        let refusals = refusals_until_closed(socket, true, &bytes, ControlErrorCode::Malformed);
        assert_eq!(refusals, 1, "{message:?} after Hello");
    }
    assert_echoes(&honest, "after the broker's messages came back to it");

    // Truncated packets: every prefix of a Hello, and of a Connect after Hello. An empty
    // packet reads as a hang-up, which the broker takes as one.
    for len in 0..hello.len() {
        let refusals =
            refusals_until_closed(socket, false, &hello[..len], ControlErrorCode::Malformed);
        assert_eq!(refusals, usize::from(len > 0), "a Hello cut to {len} bytes");
    }
    for len in 0..connect.len() {
        let refusals =
            refusals_until_closed(socket, true, &connect[..len], ControlErrorCode::Malformed);
        assert_eq!(refusals, usize::from(len > 0), "a Connect cut to {len} bytes");
    }
    // Trailing bytes after a valid message, before and after Hello.
    let mut long_hello = hello.clone();
    long_hello.push(0);
    assert_eq!(refusals_until_closed(socket, false, &long_hello, ControlErrorCode::Malformed), 1);
    let mut long_connect = connect.clone();
    long_connect.extend_from_slice(&[0; 7]);
    assert_eq!(refusals_until_closed(socket, true, &long_connect, ControlErrorCode::Malformed), 1);
    // Oversized after Hello, and garbage of exactly the largest size.
    let oversized = vec![0x42u8; MAX_CONTROL_LEN + 1];
    assert_eq!(refusals_until_closed(socket, true, &oversized, ControlErrorCode::Malformed), 1);
    let largest = vec![0x42u8; MAX_CONTROL_LEN];
    assert_eq!(refusals_until_closed(socket, true, &largest, ControlErrorCode::Malformed), 1);
    assert_echoes(&honest, "after truncated and oversized packets");
    assert_eq!(node.list().unwrap().ports.len(), 1);
    assert_echoes(&daemon.node().connect("steady").unwrap(), "from a fresh node");
}

/// The daemon serving `socket`, stopped (`SIGSTOP`) until dropped: what is sent to it
/// meanwhile waits, all of it, in its sockets.
struct Paused(rustix::process::Pid);

impl Paused {
    fn daemon(socket: &Path) -> Self {
        use rustix::process::{kill_process, Pid, Signal};
        // Only the daemon names the socket on its command line (the others get it from the
        // environment).
        let needle = socket.as_os_str().as_encoded_bytes();
        for entry in std::fs::read_dir("/proc").unwrap().flatten() {
            let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse().ok()) else {
                continue;
            };
            let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else { continue };
            if cmdline.split(|&b| b == 0).any(|arg| arg == needle) {
                let pid = Pid::from_raw(pid).unwrap();
                kill_process(pid, Signal::STOP).unwrap();
                return Self(pid);
            }
        }
        panic!("no daemon serving {}", socket.display());
    }
}

impl Drop for Paused {
    fn drop(&mut self) {
        let _ = rustix::process::kill_process(self.0, rustix::process::Signal::CONT);
    }
}

#[test]
// See the ECONNRESET note in postbox-transport control_socket.rs `recv`.
fn a_node_cut_off_for_a_bad_packet_reads_what_was_answered_before_and_why() {
    use rustix::event::{PollFd, PollFlags, Timespec};

    let daemon = Daemon::start();
    let control = raw_node(daemon.socket());
    // A request, garbage, then a request the broker will never read (a client that
    // pipelines), all waiting for the broker when it looks.
    let paused = Paused::daemon(daemon.socket());
    let list = packet(&ControlMessage::List { request: 3 });
    for bytes in [&list[..], &[0xff; 9], &list] {
        control.send(bytes, &[], Wait::timeout(WATCHDOG)).unwrap();
    }
    drop(paused);
    // Once the broker has hung up (poll says so whatever is queued), read what it sent.
    let mut hang_up = [PollFd::from_borrowed_fd(control.as_fd(), PollFlags::empty())];
    let watchdog = Timespec { tv_sec: WATCHDOG.as_secs() as i64, tv_nsec: 0 };
    rustix::event::poll(&mut hang_up, Some(&watchdog)).unwrap();
    assert!(hang_up[0].revents().contains(PollFlags::HUP), "the broker did not hang up");
    match recv_message(&control) {
        Ok(ControlMessage::Listing { request: 3, .. }) => {}
        other => panic!("expected the answer to the request before the garbage, got {other:?}"),
    }
    match recv_message(&control) {
        Ok(ControlMessage::Refused { code, .. }) => assert_eq!(code, ControlErrorCode::Malformed),
        other => panic!("expected the refusal that says why, got {other:?}"),
    }
    assert_eq!(recv_message(&control).unwrap_err(), TransportError::Closed);
}

#[test]
fn descriptors_sent_to_the_broker_are_closed_whatever_they_came_with() {
    use std::os::fd::AsFd;

    use rustix::net::{socketpair, AddressFamily, SocketFlags, SocketType};
    let daemon = Daemon::start();
    let socket = daemon.socket();
    let hello = packet(&ControlMessage::Hello { request: 1 });
    let list = packet(&ControlMessage::List { request: 2 });
    // Beside a Hello, beside a request, and beside garbage (which costs the connection).
    let carriers: [(&[u8], bool); 3] = [(&hello, false), (&list, true), (&[0xee; 5], true)];
    for (bytes, admitted) in carriers {
        let control =
            if admitted { raw_node(socket) } else { ControlSocket::connect(socket).unwrap() };
        let pairs: Vec<_> = (0..3)
            .map(|_| {
                socketpair(AddressFamily::UNIX, SocketType::STREAM, SocketFlags::CLOEXEC, None)
                    .unwrap()
            })
            .collect();
        let sent: Vec<_> = pairs.iter().map(|(ours, _)| ours.as_fd()).collect();
        control.send(bytes, &sent, Wait::timeout(WATCHDOG)).unwrap();
        drop(sent);
        // Only the broker holds the sent ends now: each pair's other end sees them close.
        for (sent_end, kept_end) in pairs {
            drop(sent_end);
            let readable =
                within_watchdog("the broker closed a descriptor sent to it", move || {
                    let ready =
                        postbox_transport::wait_readable(&[kept_end.as_fd()], Wait::Forever);
                    let mut byte = [0u8; 1];
                    (ready.map(|r| r.len()), rustix::io::read(&kept_end, &mut byte))
                });
            assert_eq!(readable, (Ok(1), Ok(0)), "the far end reads end-of-file");
        }
        drop(control);
    }
    assert!(daemon.node().list().is_ok());
}

/// A frame header for `body`, declaring its length, with the checksum over both.
fn frame_header(
    kind: FrameKind,
    correlation: u64,
    placement: postbox_core::Placement,
    body: &[u8],
) -> [u8; 32] {
    FrameHeader {
        kind,
        priority: 0,
        msg_type: 0,
        id: correlation,
        correlation,
        body_len: body.len() as u32,
        placement,
    }
    .encode(body)
}

/// Calls over a raw link and reads the reply (skipping the credits a server sends).
fn raw_call(link: &Link, decoder: &mut FrameDecoder, correlation: u64, body: &[u8]) -> Vec<u8> {
    let inline = postbox_core::Placement::Inline;
    let h = frame_header(FrameKind::Call, correlation, inline, body);
    link.write_frame(&h, body, Wait::timeout(WATCHDOG)).unwrap();
    loop {
        while let Some(frame) = decoder.poll_frame().unwrap() {
            if frame.header.kind == FrameKind::Credit {
                continue;
            }
            assert_eq!(frame.header.kind, FrameKind::Reply);
            assert_eq!(frame.header.correlation, correlation);
            return frame.body;
        }
        link.read_into(decoder, Wait::timeout(WATCHDOG)).unwrap();
    }
}

#[test]
fn truncated_oversized_and_out_of_order_frames_cost_only_their_link() {
    const MAX: usize = 4096;
    let daemon = Daemon::start_with(&["--max-message-size", &MAX.to_string()]);
    let _server = daemon.worker(&["echo", "target"]);
    let node = daemon.node();
    let honest = node.connect("target").unwrap();
    let control = raw_node(daemon.socket());
    let inline = postbox_core::Placement::Inline;

    // The largest body is taken, on a raw link as on any: the frames below differ from it
    // only in what they break.
    let steady = raw_link(&control, "target");
    let mut decoder = FrameDecoder::new(1 << 20);
    let largest = vec![7u8; MAX];
    assert_eq!(raw_call(&steady, &mut decoder, 1, &largest), largest);

    // One byte over the largest body, declared by a header whose checksum is right, with the
    // whole body and with none of it.
    let over = vec![8u8; MAX + 1];
    let h = frame_header(FrameKind::Call, 2, inline, &over);
    let oversized = raw_link(&control, "target");
    oversized.write_frame(&h, &over, Wait::timeout(WATCHDOG)).unwrap();
    assert_closed_by_server(&oversized);
    let declared_only = raw_link(&control, "target");
    declared_only.write_frame(&h, &[], Wait::timeout(WATCHDOG)).unwrap();
    assert_closed_by_server(&declared_only);

    // Answers to calls never made: an error reply, and a credit with a body (only an empty
    // credit, asking for the credit owed, goes towards a server).
    let error_reply = raw_link(&control, "target");
    let h = frame_header(FrameKind::ErrorReply, 99, inline, b"no");
    error_reply.write_frame(&h, b"no", Wait::timeout(WATCHDOG)).unwrap();
    assert_closed_by_server(&error_reply);
    let credit = raw_link(&control, "target");
    let h = frame_header(FrameKind::Credit, 0, inline, &[1; 16]);
    credit.write_frame(&h, &[1; 16], Wait::timeout(WATCHDOG)).unwrap();
    assert_closed_by_server(&credit);

    // A payload said to lie in a pool, at an offset no pool has.
    let pooled = raw_link(&control, "target");
    let mut reference = Vec::new();
    reference.extend_from_slice(&u64::MAX.to_le_bytes());
    reference.extend_from_slice(&64u64.to_le_bytes());
    let h = frame_header(FrameKind::Call, 3, postbox_core::Placement::Pooled, &reference);
    pooled.write_frame(&h, &reference, Wait::timeout(WATCHDOG)).unwrap();
    assert_closed_by_server(&pooled);

    // Frames cut short, then a hang-up: in the header, and in the body.
    let cut_header = raw_link(&control, "target");
    let h = frame_header(FrameKind::Call, 4, inline, b"cut");
    cut_header.write_available(&h[..10]).unwrap();
    drop(cut_header);
    let cut_body = raw_link(&control, "target");
    let body = vec![9u8; 1000];
    let h = frame_header(FrameKind::Call, 5, inline, &body);
    cut_body.write_frame(&h, &body[..10], Wait::timeout(WATCHDOG)).unwrap();
    drop(cut_body);

    // A frame in pieces of one byte, and an empty credit before it, are answered.
    let mut bytes = frame_header(FrameKind::Credit, 0, inline, &[]).to_vec();
    let h = frame_header(FrameKind::Call, 6, inline, b"slowly");
    bytes.extend_from_slice(&h);
    bytes.extend_from_slice(b"slowly");
    let slow = raw_link(&control, "target");
    for byte in &bytes {
        let mut written = 0;
        while written == 0 {
            written = slow.write_available(std::slice::from_ref(byte)).unwrap();
        }
    }
    let mut slow_decoder = FrameDecoder::new(1 << 20);
    loop {
        match slow_decoder.poll_frame().unwrap() {
            Some(frame) if frame.header.kind == FrameKind::Credit => {}
            Some(frame) => {
                assert_eq!((frame.header.correlation, &frame.body[..]), (6, &b"slowly"[..]));
                break;
            }
            None => {
                slow.read_into(&mut slow_decoder, Wait::timeout(WATCHDOG)).unwrap();
            }
        }
    }

    assert_eq!(raw_call(&steady, &mut decoder, 7, b"still here"), b"still here");
    for i in 0..20 {
        assert_echoes(&honest, &format!("honest call {i}"));
    }
}

/// A typed request: the envelope (docs/wire-format.md §6), then `args`.
fn rpc_request(kind: postbox_rpc::RequestKind, flags: u8, method: &str, args: &[u8]) -> Vec<u8> {
    let mut body = Vec::new();
    postbox_rpc::RequestHeader {
        kind,
        flags,
        call_id: 1,
        method_hash: 0,
        deadline_ns: 0,
        method: method.into(),
    }
    .encode(&mut body);
    body.extend_from_slice(args);
    body
}

/// Calls a typed server with a hand-made request; its answer's status and payload.
fn rpc_call(
    connection: &postbox::Connection,
    msg_type: u32,
    body: Vec<u8>,
) -> (postbox_rpc::ReplyStatus, Vec<u8>) {
    let request = postbox::Message::new(body).with_type(msg_type);
    let reply = connection.call_timeout(request, WATCHDOG).unwrap();
    let (status, payload) = postbox_rpc::ReplyStatus::decode(reply.body()).unwrap();
    (status, payload.to_vec())
}

#[test]
fn malformed_typed_requests_are_answered_and_the_typed_server_keeps_serving() {
    use postbox_rpc::{ReplyStatus, RequestKind, RPC_CONTROL_MSG_TYPE, RPC_MSG_TYPE};
    let daemon = Daemon::start();
    let _calc = daemon.worker(&["typed-calc", "calc"]);
    let node = daemon.node();
    let calc = node.connect("calc").unwrap();
    let args = postbox::Message::encode(&(40_i64, 2_i64)).unwrap().into_body();
    let add = rpc_request(RequestKind::Call, 0, "add", &args);
    let forty_two = postbox::Message::encode(&42_i64).unwrap().into_body();
    assert_eq!(rpc_call(&calc, RPC_MSG_TYPE, add.clone()), (ReplyStatus::Ok, forty_two.clone()));

    let bad_request = |body: Vec<u8>, msg_type: u32| {
        let (status, _) = rpc_call(&calc, msg_type, body.clone());
        assert_eq!(status, ReplyStatus::BadRequest, "{body:02x?}");
    };
    // Not a typed request at all; every cut of the envelope; a foreign version, an unknown
    // kind or flag, a name longer than the body, a deadline flag without its field.
    bad_request(add.clone(), 0);
    let envelope_len = add.len() - args.len();
    for len in 0..envelope_len {
        bad_request(add[..len].to_vec(), RPC_MSG_TYPE);
    }
    for (at, value) in [(0, 1), (0, 9), (1, 0), (1, 99), (2, 0x80), (2, 0x08), (3, 200)] {
        let mut body = add.clone();
        body[at] = value;
        bad_request(body, RPC_MSG_TYPE);
    }
    // Arguments cut short, or of another type.
    bad_request(rpc_request(RequestKind::Call, 0, "add", &args[..1]), RPC_MSG_TYPE);
    bad_request(rpc_request(RequestKind::Call, 0, "add", &[]), RPC_MSG_TYPE);
    // A method it does not have, and one it has with another signature.
    let (status, _) =
        rpc_call(&calc, RPC_MSG_TYPE, rpc_request(RequestKind::Call, 0, "sub", &args));
    assert_eq!(status, ReplyStatus::UnknownMethod);
    let mut mismatched = add.clone();
    mismatched[12..20].copy_from_slice(&1_u64.to_le_bytes());
    assert_eq!(rpc_call(&calc, RPC_MSG_TYPE, mismatched).0, ReplyStatus::TypeMismatch);

    // Cancels of calls never made, far more than a server remembers, on the control lane and
    // on the main one; one-way garbage.
    for call_id in 0..3000_u64 {
        let mut cancel = rpc_request(RequestKind::Cancel, 0, "", &[]);
        cancel[4..12].copy_from_slice(&call_id.to_le_bytes());
        let msg_type = if call_id % 2 == 0 { RPC_CONTROL_MSG_TYPE } else { RPC_MSG_TYPE };
        calc.send(postbox::Message::new(cancel).with_type(msg_type)).unwrap();
    }
    calc.send(postbox::Message::new(vec![0xff; 64]).with_type(RPC_MSG_TYPE)).unwrap();
    calc.send(postbox::Message::new(add[..5].to_vec()).with_type(RPC_CONTROL_MSG_TYPE)).unwrap();
    let mut no_deadline_field = rpc_request(RequestKind::Cancel, 0, "", &[]);
    no_deadline_field[2] = 0x04;
    calc.send(postbox::Message::new(no_deadline_field).with_type(RPC_CONTROL_MSG_TYPE)).unwrap();

    // Still a typed service: it describes itself and adds.
    let describe = rpc_request(RequestKind::Describe, 0, "", &[]);
    let (status, schema) = rpc_call(&calc, RPC_CONTROL_MSG_TYPE, describe);
    assert_eq!(status, ReplyStatus::Ok);
    let schema: postbox_rpc::ServiceSchema = postbox::Message::new(schema).decode().unwrap();
    assert!(schema.method("add").is_some());
    assert_eq!(rpc_call(&calc, RPC_MSG_TYPE, add), (ReplyStatus::Ok, forty_two));
    let output = daemon.postbox(&["call", "calc", "add", "[1, 2]"]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert_eq!(String::from_utf8_lossy(&output.stdout), "3\n");
}
