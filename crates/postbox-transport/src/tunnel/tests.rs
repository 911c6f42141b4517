//! Tunnels over loopback TCP, both ends in this process: control packets and links cross,
//! credit keeps slow readers from holding others up, and hostile or broken connections end
//! the tunnel with every local end closed, never a hang.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use super::*;
use crate::host_link::{AuthenticationError, PreSharedKey};
use crate::{TransportError, Wait};

const WATCHDOG: Duration = Duration::from_secs(20);

fn key(byte: u8) -> PreSharedKey {
    PreSharedKey::new(&[byte; 32]).unwrap()
}

fn listener(config: TunnelConfig) -> AttachListener {
    let keys = vec![NamedKey::new("app", key(1)).unwrap()];
    AttachListener::bind(
        "127.0.0.1:0".parse().unwrap(),
        AcceptSecurity::PreSharedKeys(keys),
        config,
    )
    .unwrap()
}

/// The next listener event, waiting at most the watchdog.
fn next_event(listener: &AttachListener) -> AttachEvent {
    let deadline = Instant::now() + WATCHDOG;
    loop {
        if let Some(event) = listener.try_next() {
            return event;
        }
        assert!(Instant::now() < deadline, "no listener event");
        let _ = crate::wait_readable(&[listener.as_fd()], Wait::timeout(WATCHDOG));
    }
}

fn attached(listener: &AttachListener) -> AttachedNode {
    match next_event(listener) {
        AttachEvent::Attached(node) => node,
        other => panic!("expected a node, got {other:?}"),
    }
}

fn recv(control: &ControlSocket) -> Result<(Vec<u8>, Vec<OwnedFd>), TransportError> {
    let mut buf = vec![0u8; 65_536];
    let (len, fds) = control.recv(&mut buf, Wait::timeout(WATCHDOG))?;
    Ok((buf[..len].to_vec(), fds))
}

fn stream_of(fd: OwnedFd) -> UnixStream {
    let stream = UnixStream::from(fd);
    stream.set_read_timeout(Some(WATCHDOG)).unwrap();
    stream
}

fn dial_app(address: SocketAddr, config: TunnelConfig) -> ControlSocket {
    dial(&address.to_string(), &AttachSecurity::PreSharedKey(key(1)), config).unwrap().0
}

#[test]
fn control_packets_and_a_link_cross_the_tunnel_both_ways() {
    let listener = listener(TunnelConfig::default());
    let address = listener.local_addr().to_string();
    let (node, tunnel) =
        dial(&address, &AttachSecurity::PreSharedKey(key(1)), TunnelConfig::default()).unwrap();
    let broker = attached(&listener);
    assert_eq!(broker.principal, "app");

    node.send(b"hello", &[], Wait::Forever).unwrap();
    assert_eq!(recv(&broker.control).unwrap().0, b"hello");

    let (ours, theirs) = UnixStream::pair().unwrap();
    broker.control.send(b"a link", &[theirs.as_fd()], Wait::Forever).unwrap();
    drop(theirs);
    let (packet, mut fds) = recv(&node).unwrap();
    assert_eq!((packet.as_slice(), fds.len()), (&b"a link"[..], 1));
    let mut node_end = stream_of(fds.remove(0));
    let mut broker_end = ours;
    broker_end.set_read_timeout(Some(WATCHDOG)).unwrap();

    node_end.write_all(b"ping").unwrap();
    let mut buf = [0u8; 4];
    broker_end.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"ping");
    broker_end.write_all(b"pong").unwrap();
    node_end.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"pong");

    // Closing one end of the link is seen at the other, as on a local socketpair.
    drop(broker_end);
    assert_eq!(node_end.read(&mut buf).unwrap(), 0);
    // So is the node leaving: the broker reads the end of its control socket.
    drop(node);
    assert_eq!(recv(&broker.control).unwrap_err(), TransportError::Closed);
    // The broker closes its end of the control connection: the tunnel settles (the link the
    // node still holds open does not count), but runs on for that link.
    drop(broker.control);
    assert!(tunnel.wait_settled(WATCHDOG));
    assert_eq!(tunnel.wait_ended(Duration::ZERO), None, "a link end is still open");
    // Once everything is closed on both sides, the tunnel ends in order.
    drop(node_end);
    assert_eq!(tunnel.wait_ended(WATCHDOG), Some(Ok(())));
    match next_event(&listener) {
        AttachEvent::Ended { principal, result, .. } => {
            assert_eq!((principal.as_str(), result), ("app", Ok(())));
        }
        other => panic!("expected the tunnel's end, got {other:?}"),
    }
}

#[test]
fn a_slow_reader_holds_up_neither_its_writer_beyond_the_window_nor_other_links() {
    let config = TunnelConfig { window: 16 * 1024, ..TunnelConfig::default() };
    let listener = listener(config);
    let node = dial_app(listener.local_addr(), config);
    let broker = attached(&listener);
    let (slow_broker, slow_theirs) = UnixStream::pair().unwrap();
    let (quick_broker, quick_theirs) = UnixStream::pair().unwrap();
    broker
        .control
        .send(b"two links", &[slow_theirs.as_fd(), quick_theirs.as_fd()], Wait::Forever)
        .unwrap();
    drop((slow_theirs, quick_theirs));
    let (_, mut fds) = recv(&node).unwrap();
    let mut quick_node = stream_of(fds.pop().unwrap());
    let mut slow_node = stream_of(fds.pop().unwrap());

    // Far more than the window and the socket buffers hold, sent while nobody reads.
    let total = 4 * 1024 * 1024;
    let data: Vec<u8> = (0..total).map(|i| (i % 251) as u8).collect();
    let writer = {
        let data = data.clone();
        let mut slow_broker = slow_broker.try_clone().unwrap();
        std::thread::spawn(move || slow_broker.write_all(&data).unwrap())
    };
    // The other link is not held up by the one whose reader sleeps.
    let mut quick_broker = quick_broker;
    quick_broker.set_read_timeout(Some(WATCHDOG)).unwrap();
    for round in 0..20u8 {
        quick_node.write_all(&[round]).unwrap();
        let mut echo = [0u8; 1];
        quick_broker.read_exact(&mut echo).unwrap();
        assert_eq!(echo[0], round);
    }
    let mut received = vec![0u8; total];
    slow_node.read_exact(&mut received).unwrap();
    assert!(received == data, "every byte, in order");
    writer.join().unwrap();
    drop(slow_broker);
}

/// A tunnel with one link passed; returns the node's end and the broker's end of the link
/// (and what keeps the tunnel up).
fn tunnel_with_link() -> (UnixStream, UnixStream, AttachListener, ControlSocket, AttachedNode) {
    let listener = listener(TunnelConfig::default());
    let node = dial_app(listener.local_addr(), TunnelConfig::default());
    let broker = attached(&listener);
    let (ours, theirs) = UnixStream::pair().unwrap();
    broker.control.send(b"a link", &[theirs.as_fd()], Wait::Forever).unwrap();
    drop(theirs);
    let (_, mut fds) = recv(&node).unwrap();
    ours.set_read_timeout(Some(WATCHDOG)).unwrap();
    ours.set_write_timeout(Some(WATCHDOG)).unwrap();
    (stream_of(fds.remove(0)), ours, listener, node, broker)
}

#[test]
fn everything_written_before_a_close_arrives_even_with_input_left_unread() {
    let (mut node_end, mut broker_end, _listener, _node, _broker) = tunnel_with_link();
    // The node's end leaves these unread: its close then reads as a reset at the tunnel.
    broker_end.write_all(b"never read").unwrap();
    let sent: Vec<u8> = (0..200_000u32).map(|i| (i % 253) as u8).collect();
    node_end.write_all(&sent).unwrap();
    let arrived = crate::wait_readable(&[node_end.as_fd()], Wait::timeout(WATCHDOG)).unwrap();
    assert_eq!(arrived, [0], "the unread bytes reached the node's end");
    drop(node_end);
    let mut got = Vec::new();
    broker_end.read_to_end(&mut got).unwrap();
    assert!(got == sent, "all {} bytes, then the end ({} came)", sent.len(), got.len());
}

#[test]
fn a_reader_going_away_is_heard_by_the_writer_across_and_the_other_direction_goes_on() {
    let (mut node_end, mut broker_end, _listener, _node, _broker) = tunnel_with_link();
    node_end.shutdown(std::net::Shutdown::Read).unwrap();
    // The broker's side writes until it hears that nobody reads (never a hang: the watchdog
    // is the socket's write timeout).
    let deadline = Instant::now() + WATCHDOG;
    let refused = loop {
        assert!(Instant::now() < deadline, "the writer never heard");
        match broker_end.write_all(&[7; 4096]) {
            Ok(()) => std::thread::sleep(Duration::from_millis(1)),
            Err(e) => break e.kind(),
        }
    };
    assert_eq!(refused, std::io::ErrorKind::BrokenPipe);
    node_end.write_all(b"still flows").unwrap();
    let mut buf = [0u8; 11];
    broker_end.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"still flows");
}

#[test]
fn a_wrong_key_is_refused_on_both_sides_before_any_frame() {
    let listener = listener(TunnelConfig::default());
    let address = listener.local_addr().to_string();
    let error =
        dial(&address, &AttachSecurity::PreSharedKey(key(2)), TunnelConfig::default()).unwrap_err();
    assert_eq!(error, AttachError::Authentication(AuthenticationError::RefusedByPeer));
    match next_event(&listener) {
        AttachEvent::Refused { error, .. } => {
            assert_eq!(error, AttachError::Authentication(AuthenticationError::WrongKey));
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[test]
fn nothing_listening_is_a_connect_error() {
    let free = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let error =
        dial(&free.to_string(), &AttachSecurity::PreSharedKey(key(1)), TunnelConfig::default())
            .unwrap_err();
    assert_eq!(error, AttachError::Connect(std::io::ErrorKind::ConnectionRefused));
    let unresolved = dial(
        "no-such-host.invalid:1",
        &AttachSecurity::PreSharedKey(key(1)),
        TunnelConfig::default(),
    );
    assert!(matches!(unresolved, Err(AttachError::Unresolved | AttachError::Connect(_))));
}

/// A broker played by the test: it passes the key exchange, then does what `script` says with
/// the raw connection. Returns the node's control socket and the broker's connection.
fn scripted_broker(config: TunnelConfig) -> (ControlSocket, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let (mut socket, _) = listener.accept().unwrap();
        let keys = [NamedKey::new("app", key(1)).unwrap()];
        handshake::check_key(&mut socket, &keys).unwrap();
        tx.send(socket).unwrap();
    });
    let node = dial_app(address, config);
    let socket = rx.recv_timeout(WATCHDOG).unwrap();
    (node, socket)
}

/// Passes a link to the node through the raw connection (as channel 1); returns the node's end.
fn pass_link(node: &ControlSocket, socket: &mut TcpStream) -> UnixStream {
    let mut frame = Vec::new();
    postbox_core::wire::tunnel::TunnelFrame::Control {
        channels: vec![postbox_core::wire::tunnel::ChannelId(1)],
        packet: b"link".to_vec(),
    }
    .encode(&mut frame);
    socket.write_all(&frame).unwrap();
    let (packet, mut fds) = recv(node).unwrap();
    assert_eq!((packet.as_slice(), fds.len()), (&b"link"[..], 1));
    stream_of(fds.remove(0))
}

#[test]
fn malformed_bytes_from_the_network_end_the_tunnel_and_close_every_local_end() {
    let (node, mut socket) = scripted_broker(TunnelConfig::default());
    let mut link = pass_link(&node, &mut socket);
    socket.write_all(&[0xEE; 64]).unwrap();
    let mut buf = [0u8; 8];
    assert_eq!(link.read(&mut buf).unwrap(), 0, "the node's link closes");
    assert_eq!(recv(&node).unwrap_err(), TransportError::Closed, "and its control socket");
    // The connection was dropped.
    socket.set_read_timeout(Some(WATCHDOG)).unwrap();
    let mut rest = Vec::new();
    if let Err(e) = socket.read_to_end(&mut rest) {
        assert_ne!(e.kind(), std::io::ErrorKind::WouldBlock, "the node keeps the connection");
    }
}

#[test]
fn an_oversized_frame_is_refused_from_its_header() {
    let (node, mut socket) = scripted_broker(TunnelConfig::default());
    let mut header = vec![2u8];
    header.extend_from_slice(&1u32.to_le_bytes());
    header.extend_from_slice(&u32::MAX.to_le_bytes());
    socket.write_all(&header).unwrap();
    assert_eq!(recv(&node).unwrap_err(), TransportError::Closed);
}

#[test]
fn data_beyond_the_credit_given_ends_the_tunnel() {
    let config = TunnelConfig { window: 1024, ..TunnelConfig::default() };
    let (node, mut socket) = scripted_broker(config);
    let _link = pass_link(&node, &mut socket);
    // One frame more than the whole window: no credit could have allowed it.
    let mut frames = Vec::new();
    postbox_core::wire::tunnel::encode_data(
        &mut frames,
        postbox_core::wire::tunnel::ChannelId(1),
        &[0; 4096],
    );
    socket.write_all(&frames).unwrap();
    assert_eq!(recv(&node).unwrap_err(), TransportError::Closed);
}

#[test]
fn a_broken_connection_closes_the_nodes_links_and_control_socket() {
    let (node, mut socket) = scripted_broker(TunnelConfig::default());
    let mut link = pass_link(&node, &mut socket);
    socket.shutdown(std::net::Shutdown::Both).unwrap();
    let mut buf = [0u8; 8];
    assert_eq!(link.read(&mut buf).unwrap(), 0);
    assert_eq!(recv(&node).unwrap_err(), TransportError::Closed);
}

#[test]
fn a_silent_broker_is_given_up() {
    let config = TunnelConfig {
        heartbeat_interval: Duration::from_millis(50),
        dead_after: Duration::from_millis(300),
        ..TunnelConfig::default()
    };
    let (node, socket) = scripted_broker(config);
    // The broker's connection stays open but says nothing.
    assert_eq!(recv(&node).unwrap_err(), TransportError::Closed);
    drop(socket);
}

mod tls {
    use postbox_test::{Authority, Identity};

    use super::*;
    use crate::host_link::TlsConfig;

    fn tls_listener(broker: &Identity, ca: &Authority) -> AttachListener {
        let tls = NodeTlsConfig::from_pem(
            broker.cert.as_bytes(),
            broker.key.as_bytes(),
            ca.pem().as_bytes(),
        )
        .unwrap();
        AttachListener::bind(
            "127.0.0.1:0".parse().unwrap(),
            AcceptSecurity::Tls(tls),
            TunnelConfig::default(),
        )
        .unwrap()
    }

    fn node_tls(node: &Identity, ca: &Authority, broker_name: &str) -> AttachSecurity {
        let tls = TlsConfig::from_pem(
            node.cert.as_bytes(),
            node.key.as_bytes(),
            ca.pem().as_bytes(),
            broker_name,
        )
        .unwrap();
        AttachSecurity::Tls(tls)
    }

    #[test]
    fn mutual_tls_attaches_a_node_known_by_its_certificates_name() {
        let ca = Authority::new("postbox test CA");
        let listener = tls_listener(&ca.issue("broker.test"), &ca);
        let address = listener.local_addr().to_string();
        let security = node_tls(&ca.issue("app-node"), &ca, "broker.test");
        let (node, _tunnel) = dial(&address, &security, TunnelConfig::default()).unwrap();
        let broker = attached(&listener);
        assert_eq!(broker.principal, "app-node");

        node.send(b"hello over tls", &[], Wait::Forever).unwrap();
        assert_eq!(recv(&broker.control).unwrap().0, b"hello over tls");
        let (ours, theirs) = UnixStream::pair().unwrap();
        broker.control.send(b"a link", &[theirs.as_fd()], Wait::Forever).unwrap();
        drop(theirs);
        let (_, mut fds) = recv(&node).unwrap();
        let mut node_end = stream_of(fds.remove(0));
        let mut broker_end = ours;
        broker_end.set_read_timeout(Some(WATCHDOG)).unwrap();
        let big = vec![0x42; 300_000];
        let writer = {
            let big = big.clone();
            let mut node_end = node_end.try_clone().unwrap();
            std::thread::spawn(move || node_end.write_all(&big).unwrap())
        };
        let mut got = vec![0; big.len()];
        broker_end.read_exact(&mut got).unwrap();
        assert!(got == big);
        writer.join().unwrap();
        broker_end.write_all(b"back").unwrap();
        let mut buf = [0u8; 4];
        node_end.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"back");
    }

    #[test]
    fn a_node_certificate_from_another_ca_is_refused_on_both_sides() {
        let ca = Authority::new("postbox test CA");
        let rogue = Authority::new("rogue CA");
        let listener = tls_listener(&ca.issue("broker.test"), &ca);
        let address = listener.local_addr().to_string();
        let security = node_tls(&rogue.issue("app-node"), &ca, "broker.test");
        let error = dial(&address, &security, TunnelConfig::default()).unwrap_err();
        assert!(
            matches!(
                error,
                AttachError::Authentication(AuthenticationError::RefusedByPeer)
                    | AttachError::Closed
            ),
            "{error:?}"
        );
        match next_event(&listener) {
            AttachEvent::Refused { error, .. } => assert_eq!(
                error,
                AttachError::Authentication(AuthenticationError::UntrustedCertificate)
            ),
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn a_broker_certificate_for_another_name_is_refused_by_the_node() {
        let ca = Authority::new("postbox test CA");
        let listener = tls_listener(&ca.issue("impostor.test"), &ca);
        let address = listener.local_addr().to_string();
        let security = node_tls(&ca.issue("app-node"), &ca, "broker.test");
        let error = dial(&address, &security, TunnelConfig::default()).unwrap_err();
        assert_eq!(error, AttachError::Authentication(AuthenticationError::WrongName));
    }
}
