//! Tunnels over loopback TCP, both ends in this process: control packets and links cross,
//! credit keeps slow readers from holding others up, and hostile or broken connections end
//! the tunnel with every local end closed, never a hang.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use postbox_core::wire::tunnel::{ChannelId, TunnelFrame};
use postbox_core::wire::DecodeError;

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

    let (mut node_end, mut broker_end) = link_from_broker(&broker, &node);

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

/// A tunnel set up with `config`, with one link passed; returns the node's end and the
/// broker's end of the link (and what keeps the tunnel up).
fn tunnel_with_link(
    config: TunnelConfig,
) -> (UnixStream, UnixStream, AttachListener, ControlSocket, AttachedNode) {
    let listener = listener(config);
    let node = dial_app(listener.local_addr(), config);
    let broker = attached(&listener);
    let (node_end, broker_end) = link_from_broker(&broker, &node);
    (node_end, broker_end, listener, node, broker)
}

/// The broker passes `node` one link; returns the node's end and the broker's end (both with
/// the watchdog as their read and write timeouts).
fn link_from_broker(broker: &AttachedNode, node: &ControlSocket) -> (UnixStream, UnixStream) {
    let (ours, theirs) = UnixStream::pair().unwrap();
    broker.control.send(b"a link", &[theirs.as_fd()], Wait::Forever).unwrap();
    drop(theirs);
    let (packet, mut fds) = recv(node).unwrap();
    assert_eq!((packet.as_slice(), fds.len()), (&b"a link"[..], 1));
    ours.set_read_timeout(Some(WATCHDOG)).unwrap();
    ours.set_write_timeout(Some(WATCHDOG)).unwrap();
    (stream_of(fds.remove(0)), ours)
}

#[test]
fn everything_written_before_a_close_arrives_even_with_input_left_unread() {
    let (mut node_end, mut broker_end, _listener, _node, _broker) =
        tunnel_with_link(TunnelConfig::default());
    // The node's end leaves these unread: its close then reads as a reset at the tunnel.
    broker_end.write_all(b"never read").unwrap();
    let sent: Vec<u8> = (0..200_000u32).map(|i| (i % 253) as u8).collect();
    node_end.write_all(&sent).unwrap();
    let arrived = crate::wait_readable(&[node_end.as_fd()], Wait::timeout(WATCHDOG)).unwrap();
    assert_eq!(*arrived, [0], "the unread bytes reached the node's end");
    drop(node_end);
    let mut got = Vec::new();
    broker_end.read_to_end(&mut got).unwrap();
    assert!(got == sent, "all {} bytes, then the end ({} came)", sent.len(), got.len());
}

/// A writer that closes while much of what it wrote is still on its way leaves its reader all
/// of it, even a reader that gives the link up as soon as one of its own writes fails (as a
/// postbox receiver does when its credit cannot be sent): the reset that the writer's close
/// causes reaches the reader's socket only after the last byte. A local socketpair gives that
/// order; the tunnel used to send the reset ahead of the bytes still waiting in the writer's
/// socket, and the reader lost them.
#[test]
fn a_reader_that_gives_up_when_its_writes_fail_still_gets_all_a_closed_writer_sent() {
    // A small window keeps most of what the node's end writes on the node's side.
    let config = TunnelConfig { window: 8 * 1024, ..TunnelConfig::default() };
    let (node_end, mut broker_end, _listener, _node, _broker) = tunnel_with_link(config);

    // The node's end writes until everything is full (its socket, the tunnel, the broker's
    // end's socket), then closes with its own bytes still waiting in its socket.
    node_end.set_nonblocking(true).unwrap();
    let mut sent: u64 = 0;
    let mut chunk = [0u8; 4096];
    let mut stable = 0;
    while stable < 3 {
        match (&node_end).write(&chunk) {
            Ok(n) => {
                sent += n as u64;
                chunk.rotate_left(1);
                stable = 0;
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                stable += 1;
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => panic!("write: {e}"),
        }
    }
    drop(node_end);

    // The broker's end writes: the node's side finds nobody reading there. Long enough for a
    // reset sent at once to have arrived before the reader reads anything.
    broker_end.write_all(b"credit").unwrap();
    std::thread::sleep(Duration::from_millis(200));

    // The reader: reads what is there, and writes now and then; once a write fails, it
    // shuts its end down (as a postbox link end does) and reads what is left.
    broker_end.set_nonblocking(true).unwrap();
    let mut got: u64 = 0;
    let mut gave_up = false;
    let mut buf = vec![0u8; 65_536];
    let deadline = Instant::now() + WATCHDOG;
    loop {
        assert!(Instant::now() < deadline, "{got} of {sent} bytes, and no end");
        if !gave_up {
            match (&broker_end).write(b"c") {
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(_) => {
                    broker_end.shutdown(std::net::Shutdown::Both).unwrap();
                    gave_up = true;
                }
            }
        }
        match broker_end.read(&mut buf) {
            // The end of the stream; or a reset, which a Unix socket reports after everything
            // queued when its peer closed with bytes of this end's unread (the reader's last
            // writes): postbox reads both as the link's close.
            Ok(0) => break,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
            Ok(n) => got += n as u64,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(1));
            }
            Err(e) => panic!("read: {e}"),
        }
    }
    assert_eq!(got, sent, "every byte the writer sent before it closed");
    if !gave_up {
        // The end of the stream came before the reset's effect: the writes fail soon after.
        assert_eq!(first_failed_write(&broker_end), std::io::ErrorKind::BrokenPipe);
    }
}

/// Writes to `end` until a write fails (within the watchdog); returns how it failed.
fn first_failed_write(mut end: &UnixStream) -> std::io::ErrorKind {
    let deadline = Instant::now() + WATCHDOG;
    loop {
        assert!(Instant::now() < deadline, "the writer never heard");
        match end.write(b"after") {
            Ok(_) => std::thread::sleep(Duration::from_millis(1)),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(1));
            }
            Err(e) => return e.kind(),
        }
    }
}

#[test]
fn a_reader_going_away_is_heard_by_the_writer_across_and_the_other_direction_goes_on() {
    let (mut node_end, mut broker_end, _listener, _node, _broker) =
        tunnel_with_link(TunnelConfig::default());
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
    let (node, socket, _tunnel) = scripted_broker_with_tunnel(config);
    (node, socket)
}

/// [`scripted_broker`], with the node's tunnel handle to learn how it ended.
fn scripted_broker_with_tunnel(config: TunnelConfig) -> (ControlSocket, TcpStream, Tunnel) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let (mut socket, _) = listener.accept().unwrap();
        let keys = [NamedKey::new("app", key(1)).unwrap()];
        handshake::check_key(&mut socket, &keys).unwrap();
        tx.send(socket).unwrap();
    });
    let (node, tunnel) =
        dial(&address.to_string(), &AttachSecurity::PreSharedKey(key(1)), config).unwrap();
    let socket = rx.recv_timeout(WATCHDOG).unwrap();
    (node, socket, tunnel)
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

/// Far beyond [`ENDS_WITHIN`]: a hostile-input test whose tunnel ended within that did not end
/// by falling silent, but because its check refused the input.
fn patient() -> TunnelConfig {
    TunnelConfig { dead_after: Duration::from_secs(60), ..TunnelConfig::default() }
}

/// How long a tunnel that met hostile input may take to end.
const ENDS_WITHIN: Duration = Duration::from_secs(3);

#[test]
fn malformed_bytes_from_the_network_end_the_tunnel_and_close_every_local_end() {
    let (node, mut socket, tunnel) = scripted_broker_with_tunnel(patient());
    let mut link = pass_link(&node, &mut socket);
    socket.write_all(&[0xEE; 64]).unwrap();
    let ended = tunnel.wait_ended(ENDS_WITHIN);
    assert!(matches!(ended, Some(Err(TunnelError::Malformed(_)))), "{ended:?}");
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
    let (node, mut socket, tunnel) = scripted_broker_with_tunnel(patient());
    let mut header = vec![2u8];
    header.extend_from_slice(&1u32.to_le_bytes());
    header.extend_from_slice(&u32::MAX.to_le_bytes());
    socket.write_all(&header).unwrap();
    let ended = tunnel.wait_ended(ENDS_WITHIN);
    assert!(
        matches!(ended, Some(Err(TunnelError::Malformed(DecodeError::TooLong { .. })))),
        "{ended:?}"
    );
    assert_eq!(recv(&node).unwrap_err(), TransportError::Closed);
}

#[test]
fn data_beyond_the_credit_given_ends_the_tunnel() {
    let config = TunnelConfig { window: 1024, ..patient() };
    let (node, mut socket, tunnel) = scripted_broker_with_tunnel(config);
    let _link = pass_link(&node, &mut socket);
    // One frame more than the whole window: no credit could have allowed it.
    let mut frames = Vec::new();
    postbox_core::wire::tunnel::encode_data(
        &mut frames,
        postbox_core::wire::tunnel::ChannelId(1),
        &[0; 4096],
    );
    socket.write_all(&frames).unwrap();
    assert_eq!(
        tunnel.wait_ended(ENDS_WITHIN),
        Some(Err(TunnelError::Protocol("data beyond the credit given")))
    );
    assert_eq!(recv(&node).unwrap_err(), TransportError::Closed);
}

#[test]
fn a_broken_connection_closes_the_nodes_links_and_control_socket() {
    let (node, mut socket, tunnel) = scripted_broker_with_tunnel(patient());
    let mut link = pass_link(&node, &mut socket);
    socket.shutdown(std::net::Shutdown::Both).unwrap();
    // The close ends it, long before silence could.
    assert!(tunnel.wait_ended(ENDS_WITHIN).is_some(), "the tunnel runs on");
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

/// Writes `bytes` to channel `id` through the raw connection, in frames as large as allowed.
fn send_data(socket: &mut TcpStream, id: u32, bytes: &[u8]) {
    let mut frames = Vec::new();
    for piece in bytes.chunks(postbox_core::wire::tunnel::MAX_DATA_LEN as usize) {
        postbox_core::wire::tunnel::encode_data(
            &mut frames,
            postbox_core::wire::tunnel::ChannelId(id),
            piece,
        );
    }
    socket.write_all(&frames).unwrap();
}

#[test]
fn a_slow_reader_gets_every_byte_after_the_connection_ended() {
    let config = TunnelConfig {
        heartbeat_interval: Duration::from_millis(100),
        dead_after: Duration::from_secs(1),
        ..TunnelConfig::default()
    };
    let (node, mut socket) = scripted_broker(config);
    let mut link = pass_link(&node, &mut socket);
    let sent: Vec<u8> = (0..config.window).map(|i| (i % 251) as u8).collect();
    send_data(&mut socket, 1, &sent);
    socket.shutdown(std::net::Shutdown::Write).unwrap();
    // Longer than `dead_after` before the reader starts: it is alive, only slow.
    std::thread::sleep(Duration::from_millis(1500));
    let mut got = Vec::new();
    link.read_to_end(&mut got).unwrap();
    assert!(got == sent, "all {} bytes ({} came)", sent.len(), got.len());
}

/// While a reset waits for the bytes that came before it to be written to the local reader,
/// that reader's own writes never block (nobody would ever read them): the pump takes and
/// drops them. Once it has read up to the reset, its writes fail, as they would locally.
#[test]
fn a_reader_writing_without_reading_is_never_blocked_by_a_reset_held_back() {
    reader_writing_without_reading_after_a_reset(false);
}

/// The same when the connection ends right after the reset: the pump drains what it holds
/// for the reader and still drops what the reader writes, then ends.
#[test]
fn a_reader_writing_without_reading_is_never_blocked_while_the_tunnel_drains() {
    reader_writing_without_reading_after_a_reset(true);
}

fn reader_writing_without_reading_after_a_reset(then_end_the_connection: bool) {
    // The broker played here never pings: the tunnel must outlive the write's watchdog.
    let config = TunnelConfig {
        window: 4 * 1024 * 1024,
        dead_after: 3 * WATCHDOG,
        ..TunnelConfig::default()
    };
    let (node, mut socket, tunnel) = scripted_broker_with_tunnel(config);
    let mut link = pass_link(&node, &mut socket);
    // More than the link's socket holds, then the reset: the rest waits in the pump.
    let sent: Vec<u8> = (0..2 * 1024 * 1024).map(|i| (i % 251) as u8).collect();
    send_data(&mut socket, 1, &sent);
    let mut reset = Vec::new();
    TunnelFrame::Reset { channel: ChannelId(1) }.encode(&mut reset);
    socket.write_all(&reset).unwrap();
    if then_end_the_connection {
        socket.shutdown(std::net::Shutdown::Write).unwrap();
    }

    // Far more than a socket holds, without reading; the watchdog is the write timeout.
    link.set_write_timeout(Some(WATCHDOG)).unwrap();
    link.write_all(&vec![7u8; 4 * 1024 * 1024]).unwrap();

    let mut got = vec![0u8; sent.len()];
    link.read_exact(&mut got).unwrap();
    assert!(got == sent, "every byte from before the reset");
    assert_eq!(first_failed_write(&link), std::io::ErrorKind::BrokenPipe);
    if then_end_the_connection {
        drop((link, node));
        assert!(tunnel.wait_ended(WATCHDOG).is_some(), "the drained tunnel ends");
    }
}

/// Clock ticks this process spent on a CPU so far (user and system).
fn cpu_ticks() -> u64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    // After the command name, in parentheses: fields 3 on; utime and stime are 14 and 15.
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = after.split(' ').collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

#[test]
fn a_draining_tunnel_waits_for_its_readers_without_spinning() {
    let (node, mut socket) = scripted_broker(TunnelConfig::default());
    let mut frame = Vec::new();
    postbox_core::wire::tunnel::TunnelFrame::Control {
        channels: vec![
            postbox_core::wire::tunnel::ChannelId(1),
            postbox_core::wire::tunnel::ChannelId(2),
        ],
        packet: b"links".to_vec(),
    }
    .encode(&mut frame);
    socket.write_all(&frame).unwrap();
    let (_, mut fds) = recv(&node).unwrap();
    let kept = stream_of(fds.pop().unwrap());
    let dropped = stream_of(fds.pop().unwrap());
    let window = TunnelConfig::default().window as usize;
    send_data(&mut socket, 1, &vec![1; window]);
    send_data(&mut socket, 2, &vec![2; window]);
    socket.shutdown(std::net::Shutdown::Write).unwrap();
    // The node's pump is draining: one reader goes (a reset to send, which nobody takes), the
    // other sleeps.
    std::thread::sleep(Duration::from_millis(200));
    drop(dropped);
    std::thread::sleep(Duration::from_millis(200));
    let before = cpu_ticks();
    std::thread::sleep(Duration::from_secs(2));
    let spent = cpu_ticks() - before;
    assert!(spent < 50, "{spent} ticks in 2 s while waiting");
    drop((kept, node, socket));
}

#[test]
fn slow_handshakes_hold_up_nobody_for_longer_than_the_handshake_timeout() {
    let config =
        TunnelConfig { handshake_timeout: Duration::from_millis(500), ..TunnelConfig::default() };
    let listener = listener(config);
    let address = listener.local_addr();
    let mut greeting = b"PBNODE01".to_vec();
    greeting.extend_from_slice(&[0; 32]);
    let trickling: Vec<_> = (0..8)
        .map(|_| {
            let greeting = greeting.clone();
            std::thread::spawn(move || {
                let Ok(mut socket) = TcpStream::connect(address) else { return };
                for byte in greeting {
                    if socket.write_all(&[byte]).is_err() {
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(300));
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs(2));
    let attached = dial(&address.to_string(), &AttachSecurity::PreSharedKey(key(1)), config);
    assert!(attached.is_ok(), "{:?}", attached.err());
    drop(trickling);
}

#[test]
fn a_control_backlog_is_not_mistaken_for_silence() {
    let config = TunnelConfig {
        heartbeat_interval: Duration::from_millis(100),
        dead_after: Duration::from_millis(500),
        ..TunnelConfig::default()
    };
    let (node, socket) = scripted_broker(config);
    // Far more than the control socket buffers: the pump holds a backlog and stops reading.
    let packets = 400;
    let mut frames = Vec::new();
    for i in 0..packets {
        postbox_core::wire::tunnel::TunnelFrame::Control {
            channels: Vec::new(),
            packet: vec![(i % 251) as u8; 16 * 1024],
        }
        .encode(&mut frames);
    }
    let mut writer = socket.try_clone().unwrap();
    let writing = std::thread::spawn(move || writer.write_all(&frames));
    // Longer than `dead_after` before the node reads anything.
    std::thread::sleep(Duration::from_millis(1500));
    for i in 0..packets {
        let (packet, _) = recv(&node).unwrap_or_else(|e| panic!("packet {i}: {e:?}"));
        assert_eq!(packet, vec![(i % 251) as u8; 16 * 1024]);
    }
    writing.join().unwrap().unwrap();
    drop(socket);
}

#[test]
fn a_node_passed_more_channels_than_allowed_ends_its_tunnel() {
    let config = TunnelConfig { max_channels: 2, ..patient() };
    let (node, mut socket, tunnel) = scripted_broker_with_tunnel(config);
    let mut frame = Vec::new();
    postbox_core::wire::tunnel::TunnelFrame::Control {
        channels: (1..=3).map(postbox_core::wire::tunnel::ChannelId).collect(),
        packet: b"links".to_vec(),
    }
    .encode(&mut frame);
    socket.write_all(&frame).unwrap();
    assert_eq!(tunnel.wait_ended(ENDS_WITHIN), Some(Err(TunnelError::TooManyChannels)));
    assert_eq!(recv(&node).unwrap_err(), TransportError::Closed);
}

#[test]
fn a_broker_passing_more_channels_than_allowed_ends_the_tunnel() {
    let config = TunnelConfig { max_channels: 2, ..patient() };
    let listener = listener(config);
    let (node, tunnel) =
        dial(&listener.local_addr().to_string(), &AttachSecurity::PreSharedKey(key(1)), config)
            .unwrap();
    let broker = attached(&listener);
    let pairs: Vec<_> = (0..3).map(|_| UnixStream::pair().unwrap()).collect();
    let fds: Vec<_> = pairs.iter().map(|(_, theirs)| theirs.as_fd()).collect();
    broker.control.send(b"links", &fds, Wait::Forever).unwrap();
    match next_event(&listener) {
        AttachEvent::Ended { result, .. } => assert_eq!(result, Err(TunnelError::TooManyChannels)),
        other => panic!("expected the tunnel's end, got {other:?}"),
    }
    assert!(tunnel.wait_ended(ENDS_WITHIN).is_some());
    drop(node);
}

#[test]
fn inbound_bytes_beyond_the_tunnels_budget_end_it() {
    let window = 1024 * 1024;
    let config = TunnelConfig { window: window as u32, inbound_budget: window, ..patient() };
    let (node, mut socket, tunnel) = scripted_broker_with_tunnel(config);
    let mut frame = Vec::new();
    postbox_core::wire::tunnel::TunnelFrame::Control {
        channels: (1..=3).map(postbox_core::wire::tunnel::ChannelId).collect(),
        packet: b"links".to_vec(),
    }
    .encode(&mut frame);
    socket.write_all(&frame).unwrap();
    let (_, _links) = recv(&node).unwrap();
    // Nobody reads the links: within each window, but far beyond the budget together (the
    // links' socket buffers take only a part).
    let mut writer = socket.try_clone().unwrap();
    std::thread::spawn(move || {
        for id in 1..=3 {
            let mut frames = Vec::new();
            for _ in 0..window / postbox_core::wire::tunnel::MAX_DATA_LEN as usize {
                postbox_core::wire::tunnel::encode_data(
                    &mut frames,
                    postbox_core::wire::tunnel::ChannelId(id),
                    &[0; postbox_core::wire::tunnel::MAX_DATA_LEN as usize],
                );
            }
            // The node may have given up already.
            let _ = writer.write_all(&frames);
        }
    });
    assert_eq!(tunnel.wait_ended(ENDS_WITHIN), Some(Err(TunnelError::OverBudget)));
    drop(socket);
}

#[test]
fn the_listener_turns_away_nodes_beyond_its_tunnels() {
    let config = TunnelConfig { max_tunnels: 1, ..TunnelConfig::default() };
    let listener = listener(config);
    let address = listener.local_addr().to_string();
    let (_first, _tunnel) = dial(&address, &AttachSecurity::PreSharedKey(key(1)), config).unwrap();
    let _broker = attached(&listener);
    assert!(dial(&address, &AttachSecurity::PreSharedKey(key(1)), config).is_err());
    match next_event(&listener) {
        AttachEvent::Refused { error, .. } => assert_eq!(error, AttachError::TooManyTunnels),
        other => panic!("expected a refusal, got {other:?}"),
    }
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
        let (mut node_end, mut broker_end) = link_from_broker(&broker, &node);
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
