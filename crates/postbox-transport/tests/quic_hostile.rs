//! QUIC host links against hostile or broken peers, over real loopback UDP: forged handshakes
//! from a source that never answers do not keep the real peer out; a peer that stops one of
//! this end's lane streams (or loses a message on a lane without stopping it) does not leave
//! the message unacknowledged forever; an authenticated peer that leaves a frame half-sent on
//! many streams cannot make this end buffer without bound; a link whose session ended and
//! that lingers for its close is dropped without waiting for the linger.
//!
//! The peers here are raw quinn endpoints. The fake peer runs postbox-core's own `Session`
//! over them as a QUIC host link does (a QUIC stream per lane, a decoder per incoming
//! stream), so that a test can misbehave in exactly one way. Every wait is bounded by a
//! watchdog, never by a timing assertion; the tests of this file run one at a time (one of
//! them measures the process's memory).

use std::collections::hash_map::{Entry, HashMap};
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex, MutexGuard, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use bytes::Bytes;
use postbox_core::reliable::body::{Ack, Data};
use postbox_core::reliable::decoder::StreamDecoder;
use postbox_core::reliable::frame::{Frame, FrameBody};
use postbox_core::reliable::{Lane, Session, SessionId};
use postbox_test::{Authority, Identity};
use postbox_transport::host_link::{
    Event, HostLink, HostLinkConfig, HostLinkStats, LinkError, MessageId, SessionConfig,
    SessionError, StreamId, TlsConfig,
};
use quinn::crypto::rustls::QuicClientConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::runtime::Runtime;

#[path = "support/watchdog.rs"]
mod watchdog;
use watchdog::with_watchdog;
#[path = "support/tls.rs"]
mod tls;
use tls::tls_config;

// ---------------------------------------------------------------------------------------------
// Harness
// ---------------------------------------------------------------------------------------------

/// Heartbeats every 200 ms, dead after 60 s: only what a test provokes ends a connection.
fn config() -> HostLinkConfig {
    HostLinkConfig {
        session: SessionConfig {
            heartbeat_interval: Duration::from_millis(200),
            missed_heartbeats: 300,
            initial_rto: Duration::from_millis(200),
            min_rto: Duration::from_millis(50),
            max_rto: Duration::from_millis(1000),
            ..SessionConfig::default()
        },
        connect_timeout: Duration::from_secs(2),
        reconnect_min: Duration::from_millis(10),
        reconnect_max: Duration::from_millis(200),
        stall_timeout: Duration::from_secs(5),
    }
}

/// Host a's and b's certificates from one CA; b listens for a.
struct Hosts {
    ca: Authority,
    a: Identity,
    b: Identity,
}

impl Hosts {
    fn new() -> Self {
        let ca = Authority::new("postbox test CA");
        let (a, b) = (ca.issue("a"), ca.issue("b"));
        Self { ca, a, b }
    }

    fn tls_a(&self) -> TlsConfig {
        tls_config(&self.a, &self.ca, "b")
    }

    /// b listening for a on a fresh loopback UDP port, and that port.
    fn listen_b(&self, config: HostLinkConfig) -> (HostLink, SocketAddr) {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = socket.local_addr().unwrap();
        (HostLink::listen_quic(socket, tls_config(&self.b, &self.ca, "a"), config).unwrap(), addr)
    }

    /// A raw quinn configuration for dialing b as a (a's certificate, b's CA and name).
    fn raw_client_a(&self) -> quinn::ClientConfig {
        let certs = CertificateDer::pem_slice_iter(self.a.cert.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        let key = PrivateKeyDer::from_pem_slice(self.a.key.as_bytes()).unwrap();
        raw_client(&self.ca, Some((certs, key)))
    }
}

/// A quinn client configuration that trusts `ca`, speaks the host links' protocol (ALPN) and
/// presents `identity`, if any.
fn raw_client(
    ca: &Authority,
    identity: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
) -> quinn::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca.pem().as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots);
    let mut client = match identity {
        Some((certs, key)) => builder.with_client_auth_cert(certs, key).unwrap(),
        None => builder.with_no_client_auth(),
    };
    client.alpn_protocols = vec![ALPN.to_vec()];
    let mut config =
        quinn::ClientConfig::new(Arc::new(QuicClientConfig::try_from(client).unwrap()));
    let mut transport = quinn::TransportConfig::default();
    transport.max_idle_timeout(Some(Duration::from_secs(600).try_into().unwrap()));
    // Keeps the attacker's own buffers (this process's memory) small.
    transport.send_window(2 << 20);
    config.transport_config(Arc::new(transport));
    config
}

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

fn next_event(link: &HostLink) -> Event {
    link.recv_timeout(EVENT_WATCHDOG)
        .unwrap_or_else(|e| panic!("no event: {e}; {:?}", link.stats()))
}

/// Waits for `wanted` among `link`'s events, passing over acknowledgements and link openings.
fn wait_for(link: &HostLink, wanted: impl Fn(&Event) -> bool) -> Event {
    loop {
        let event = next_event(link);
        if wanted(&event) {
            return event;
        }
        assert!(
            matches!(event, Event::Acked { .. } | Event::LinkOpen { .. }),
            "unexpected event: {event:?}"
        );
    }
}

/// The tests of this file one at a time: one measures the process's memory.
fn one_at_a_time() -> MutexGuard<'static, ()> {
    static SERIAL: Mutex<()> = Mutex::new(());
    SERIAL.lock().unwrap_or_else(PoisonError::into_inner)
}

const ALPN: &[u8] = b"postbox-host-link/2";
const EVENT_WATCHDOG: Duration = Duration::from_secs(30);
const TEST_WATCHDOG: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------------------------------------
// A fake peer: postbox-core's session over raw quinn
// ---------------------------------------------------------------------------------------------

/// How the fake peer misbehaves on its first connection (later ones it handles correctly).
#[derive(Debug, Clone, Copy)]
enum Fault {
    /// None.
    Honest,
    /// Stops (STOP_SENDING) the incoming QUIC stream that carries this session stream,
    /// without handing its frames to the session.
    StopLane(StreamId),
    /// Reads the stream that carries this session stream but drops its frames, as a broken
    /// peer would: the stream stays open.
    DropLane(StreamId),
}

/// What the test tells the fake peer.
enum Command {
    /// Writes these bytes (whole frames) on the control lane of the current connection.
    Control(Vec<u8>),
}

/// A fake peer running on a thread of its own: dials `addr` as host a, runs its session over
/// the connection (a QUIC stream per lane, a decoder per incoming stream), and dials again
/// when the connection ends, as a dialing host link does.
struct FakePeer {
    id: SessionId,
    events: mpsc::Receiver<Event>,
    commands: tokio::sync::mpsc::UnboundedSender<Command>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl FakePeer {
    fn dial(
        addr: SocketAddr,
        client: quinn::ClientConfig,
        config: SessionConfig,
        fault: Fault,
    ) -> Self {
        let id = SessionId::new(0x00fa_4e00).unwrap();
        let (events_in, events) = mpsc::channel();
        let (commands, received) = tokio::sync::mpsc::unbounded_channel();
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = Arc::clone(&stop);
        let thread = thread::spawn(move || {
            let config = SessionConfig { retransmit_on_timeout: false, ..config };
            let session = Session::new(id, config, Instant::now());
            let run = FakeRun { session, events: events_in, commands: received, stop: stopping };
            runtime().block_on(run.dial_loop(addr, client, fault));
        });
        Self { id, events, commands, stop, thread: Some(thread) }
    }

    fn next_event(&self) -> Event {
        self.events.recv_timeout(EVENT_WATCHDOG).expect("an event from the fake peer")
    }

    fn send_control(&self, bytes: Vec<u8>) {
        assert!(self.commands.send(Command::Control(bytes)).is_ok(), "the fake peer runs");
    }
}

impl Drop for FakePeer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

struct FakeRun {
    session: Session,
    events: mpsc::Sender<Event>,
    commands: tokio::sync::mpsc::UnboundedReceiver<Command>,
    stop: Arc<AtomicBool>,
}

impl FakeRun {
    async fn dial_loop(mut self, addr: SocketAddr, client: quinn::ClientConfig, fault: Fault) {
        let endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
        let mut fault = fault;
        while !self.stop.load(Ordering::Relaxed) {
            let connecting = endpoint.connect_with(client.clone(), addr, "b").unwrap();
            let Ok(Ok(connection)) = tokio::time::timeout(Duration::from_secs(1), connecting).await
            else {
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            };
            self.session.handle_link_up(Instant::now());
            self.run_connection(&connection, fault).await;
            self.session.handle_link_down(Instant::now());
            connection.close(0u32.into(), b"");
            fault = Fault::Honest;
        }
        endpoint.close(0u32.into(), b"");
    }

    async fn run_connection(&mut self, connection: &quinn::Connection, fault: Fault) {
        let (frames_in, mut frames) = tokio::sync::mpsc::unbounded_channel();
        let mut readers = tokio::task::JoinSet::new();
        let mut lanes: HashMap<Lane, quinn::SendStream> = HashMap::new();
        let max_body = self.session.config().max_frame_body();
        loop {
            if self.stop.load(Ordering::Relaxed) {
                return;
            }
            let now = Instant::now();
            let mut buf = Vec::new();
            while let Some(transmit) = self.session.poll_transmit(now, &mut buf) {
                if transmit.lane != Lane::Datagram
                    && write_on(connection, &mut lanes, transmit.lane, &buf).await.is_err()
                {
                    return;
                }
                buf.clear();
            }
            while let Some(event) = self.session.poll_event() {
                let _ = self.events.send(event);
            }
            let deadline = self.session.poll_timeout().unwrap_or(now + Duration::from_secs(1));
            let tick = deadline.min(now + Duration::from_millis(50));
            tokio::select! {
                accepted = connection.accept_uni() => {
                    let Ok(stream) = accepted else { return };
                    readers.spawn(read_stream(stream, frames_in.clone(), fault, max_body));
                }
                Some(frame) = frames.recv() => self.session.handle_frame(Instant::now(), frame),
                Some(Command::Control(bytes)) = self.commands.recv() => {
                    if write_on(connection, &mut lanes, Lane::Control, &bytes).await.is_err() {
                        return;
                    }
                }
                () = tokio::time::sleep_until(tick.into()) => {
                    if self.session.poll_timeout().is_some_and(|at| at <= Instant::now()) {
                        self.session.handle_timeout(Instant::now());
                    }
                }
                _ = connection.closed() => return,
            }
        }
    }
}

async fn write_on(
    connection: &quinn::Connection,
    lanes: &mut HashMap<Lane, quinn::SendStream>,
    lane: Lane,
    bytes: &[u8],
) -> Result<(), ()> {
    let stream = match lanes.entry(lane) {
        Entry::Occupied(open) => open.into_mut(),
        Entry::Vacant(new) => new.insert(connection.open_uni().await.map_err(|_| ())?),
    };
    stream.write_all(bytes).await.map_err(|_| ())
}

/// Cuts one incoming stream into frames for the session, unless `fault` says otherwise for the
/// session stream it turns out to carry.
async fn read_stream(
    mut stream: quinn::RecvStream,
    frames: tokio::sync::mpsc::UnboundedSender<Frame>,
    fault: Fault,
    max_body: u32,
) {
    let mut decoder = StreamDecoder::new(max_body);
    let mut dropping = false;
    while let Ok(Some(chunk)) = stream.read_chunk(64 << 10, true).await {
        decoder.handle_bytes(&chunk.bytes);
        while let Ok(Some(frame)) = decoder.poll_frame() {
            if let FrameBody::Data(Data { stream: carried, .. }) = &frame.body {
                match fault {
                    Fault::StopLane(stopped) if *carried == stopped => {
                        let _ = stream.stop(0u32.into());
                        return;
                    }
                    Fault::DropLane(dropped) if *carried == dropped => dropping = true,
                    _ => {}
                }
            }
            if !dropping && frames.send(frame).is_err() {
                return;
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

/// The ClientHello Initial packets of `count` connection attempts by a client that presents
/// no certificate, captured by a socket that never answers.
fn capture_client_initials(ca: &Authority, count: usize) -> Vec<Vec<u8>> {
    let sink = UdpSocket::bind("127.0.0.1:0").unwrap();
    sink.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let sink_addr = sink.local_addr().unwrap();
    let runtime = runtime();
    let _entered = runtime.enter();
    let endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    let config = raw_client(ca, None);
    let attempts: Vec<_> = (0..count)
        .map(|_| endpoint.connect_with(config.clone(), sink_addr, "b").unwrap())
        .collect();
    let capture = thread::spawn(move || {
        let mut buf = [0u8; 2048];
        (0..count)
            .map(|_| {
                let (len, _) = sink.recv_from(&mut buf).expect("a client Initial");
                buf[..len].to_vec()
            })
            .collect::<Vec<_>>()
    });
    let initials = runtime.block_on(async {
        // The endpoint sends while this runtime runs.
        while !capture.is_finished() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        capture.join().unwrap()
    });
    drop(attempts);
    initials
}

#[test]
fn forged_handshakes_from_a_source_that_never_answers_do_not_keep_the_peer_out() {
    let _serial = one_at_a_time();
    with_watchdog(TEST_WATCHDOG, || {
        let hosts = Hosts::new();
        let initials = capture_client_initials(&hosts.ca, 1000);
        let (listening, addr) = hosts.listen_b(config());
        // A socket that never reads replays one captured Initial every 3 ms: each would start
        // a handshake that waits for the connect timeout.
        let flooding = Arc::new(AtomicBool::new(true));
        let flood = {
            let flooding = Arc::clone(&flooding);
            thread::spawn(move || {
                let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
                let mut sent = 0usize;
                for initial in initials.iter().cycle() {
                    if !flooding.load(Ordering::Relaxed) {
                        break;
                    }
                    socket.send_to(initial, addr).unwrap();
                    sent += 1;
                    thread::sleep(Duration::from_millis(3));
                }
                sent
            })
        };
        thread::sleep(Duration::from_millis(100));
        // The real peer gives up (`Unreachable`) unless it gets in within 2.5 s.
        let mut short = config();
        short.session.heartbeat_interval = Duration::from_millis(250);
        short.session.missed_heartbeats = 10;
        let dialing = HostLink::dial_quic(addr, hosts.tls_a(), short).unwrap();
        let first = next_event(&dialing);
        flooding.store(false, Ordering::Relaxed);
        let sent = flood.join().unwrap();
        assert!(sent > 30, "the flood ran: {sent} forged Initials");
        assert!(
            matches!(first, Event::LinkOpen { .. }),
            "the peer got in during the flood: {first:?}; {:?}",
            dialing.stats()
        );
        drop(listening);
    });
}

/// b sends one message on stream 5 (whose QUIC stream the fake peer mishandles) and one on
/// stream 6; both must end up delivered once and acknowledged.
fn a_lost_lane_is_recovered(fault: Fault, config: HostLinkConfig) -> HostLinkStats {
    let hosts = Hosts::new();
    let (listening, addr) = hosts.listen_b(config.clone());
    let peer = FakePeer::dial(addr, hosts.raw_client_a(), config.session, fault);
    wait_for(&listening, |e| matches!(e, Event::LinkOpen { .. }));
    listening.send(StreamId(5), b"on a mishandled stream".to_vec()).unwrap();
    listening.send(StreamId(6), b"on a good stream".to_vec()).unwrap();
    let mut acked = Vec::new();
    while acked.len() < 2 {
        match wait_for(&listening, |e| matches!(e, Event::Acked { .. })) {
            Event::Acked { stream, through } => {
                assert_eq!(through, MessageId(1));
                acked.push(stream);
            }
            other => unreachable!("{other:?}"),
        }
    }
    acked.sort();
    assert_eq!(acked, vec![StreamId(5), StreamId(6)]);
    let mut delivered = Vec::new();
    while delivered.len() < 2 {
        if let Event::Delivered { stream, id, .. } = peer.next_event() {
            delivered.push((stream, id));
        }
    }
    delivered.sort();
    assert_eq!(delivered, vec![(StreamId(5), MessageId(1)), (StreamId(6), MessageId(1))]);
    let stats = listening.stats();
    assert_eq!(stats.session.unacknowledged, 0);
    stats
}

#[test]
fn a_message_on_a_lane_the_peer_stopped_is_resent_on_a_new_connection() {
    let _serial = one_at_a_time();
    with_watchdog(TEST_WATCHDOG, || {
        // The silence bound (60 s) is past the watchdog: only noticing the stop helps.
        let stats = a_lost_lane_is_recovered(Fault::StopLane(StreamId(5)), config());
        assert!(stats.connections_lost >= 1, "{stats:?}");
        assert_eq!(stats.last_error, Some(LinkError::QuicProtocol), "{stats:?}");
    });
}

#[test]
fn a_message_a_peer_loses_on_a_working_lane_is_resent_after_the_silence_bound() {
    let _serial = one_at_a_time();
    with_watchdog(TEST_WATCHDOG, || {
        // The peer reads stream 5's QUIC stream but loses its frames; heartbeats go on. After
        // the silence bound (2 s) without an acknowledgement, b gives the connection up.
        let mut config = config();
        config.session.missed_heartbeats = 10;
        let stats = a_lost_lane_is_recovered(Fault::DropLane(StreamId(5)), config);
        assert!(stats.connections_lost >= 1, "{stats:?}");
        assert_eq!(stats.last_error, Some(LinkError::Unacknowledged), "{stats:?}");
        assert_eq!(stats.session.stalled_links, 1, "{stats:?}");
    });
}

/// The process's resident memory, in bytes (Linux).
fn resident_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    let pages: u64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4096
}

#[test]
fn half_sent_frames_on_many_streams_cannot_make_the_listener_buffer_without_bound() {
    let _serial = one_at_a_time();
    with_watchdog(TEST_WATCHDOG, || {
        const STREAMS: usize = 128;
        const PAYLOAD: usize = 1 << 20;
        let hosts = Hosts::new();
        let mut config = config();
        config.session.max_unacknowledged_bytes = 16 << 20;
        let (listening, addr) = hosts.listen_b(config);
        // One data frame of a megabyte; every stream gets all of it but its last byte.
        let mut frame = Vec::new();
        Frame {
            sender: SessionId::new(7).unwrap(),
            receiver: Some(listening.session_id()),
            body: FrameBody::Data(Data {
                stream: StreamId(1),
                id: MessageId(1),
                payload: vec![7; PAYLOAD],
            }),
        }
        .encode(&mut frame);
        let partial = Bytes::from(frame);
        let partial = partial.slice(..partial.len() - 1);
        let client = hosts.raw_client_a();
        let runtime = runtime();
        let connection = runtime.block_on(async {
            let endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
            endpoint.connect_with(client, addr, "b").unwrap().await.unwrap()
        });
        let before = resident_bytes();
        let attack = thread::spawn(move || {
            runtime.block_on(async move {
                let mut writes = tokio::task::JoinSet::new();
                for _ in 0..STREAMS {
                    let Ok(mut stream) = connection.open_uni().await else { break };
                    let partial = partial.clone();
                    writes.spawn(async move {
                        let _ = stream.write_chunk(partial).await;
                        // Kept open: a stream dropped is finished, and its reader lets go.
                        stream
                    });
                }
                let mut streams = Vec::new();
                while let Some(Ok(stream)) = writes.join_next().await {
                    streams.push(stream);
                }
                connection.closed().await;
            });
        });
        // Until the listener drops the connection, or stops taking more.
        let mut peak = before;
        let mut last_received = (0, Instant::now());
        loop {
            peak = peak.max(resident_bytes());
            let stats = listening.stats();
            if stats.connections_lost > 0 {
                break;
            }
            if stats.bytes_received != last_received.0 {
                last_received = (stats.bytes_received, Instant::now());
            } else if last_received.1.elapsed() > Duration::from_secs(3) {
                break;
            }
            thread::sleep(Duration::from_millis(10));
        }
        let grown = peak.saturating_sub(before);
        let stats = listening.stats();
        assert!(grown < 64 << 20, "the listener took {grown} bytes more: {stats:?}");
        assert_eq!(stats.last_error, Some(LinkError::Flooded), "{stats:?}");
        drop(listening);
        attack.join().unwrap();
    });
}

/// A UDP relay whose way back (target to client) can be cut.
struct OneWayRelay {
    addr: SocketAddr,
    cut: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl OneWayRelay {
    fn start(target: SocketAddr) -> Self {
        let front = Arc::new(UdpSocket::bind("127.0.0.1:0").unwrap());
        let back = Arc::new(UdpSocket::bind("127.0.0.1:0").unwrap());
        back.connect(target).unwrap();
        for socket in [&front, &back] {
            socket.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
        }
        let addr = front.local_addr().unwrap();
        let (cut, stop) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicBool::new(false)));
        let client = Arc::new(Mutex::new(None));
        let forth = {
            let (front, back, stop, client) =
                (Arc::clone(&front), Arc::clone(&back), Arc::clone(&stop), Arc::clone(&client));
            thread::spawn(move || {
                let mut buf = [0u8; 2048];
                while !stop.load(Ordering::Relaxed) {
                    if let Ok((len, from)) = front.recv_from(&mut buf) {
                        *client.lock().unwrap() = Some(from);
                        let _ = back.send(&buf[..len]);
                    }
                }
            })
        };
        let back_thread = {
            let (cut, stop) = (Arc::clone(&cut), Arc::clone(&stop));
            thread::spawn(move || {
                let mut buf = [0u8; 2048];
                while !stop.load(Ordering::Relaxed) {
                    if let Ok(len) = back.recv(&mut buf) {
                        let to = *client.lock().unwrap();
                        if let (false, Some(to)) = (cut.load(Ordering::Relaxed), to) {
                            let _ = front.send_to(&buf[..len], to);
                        }
                    }
                }
            })
        };
        Self { addr, cut, stop, threads: vec![forth, back_thread] }
    }

    /// From now on nothing goes back to the client.
    fn cut_the_way_back(&self) {
        self.cut.store(true, Ordering::Relaxed);
    }
}

impl Drop for OneWayRelay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

#[test]
fn dropping_a_link_that_lingers_for_its_close_does_not_wait_for_the_linger() {
    let _serial = one_at_a_time();
    with_watchdog(TEST_WATCHDOG, || {
        // A linger as long as the stall timeout (an hour) and the QUIC idle timeout (a
        // minute): the close frame b sends never gets through.
        let hosts = Hosts::new();
        let mut config = config();
        config.session.heartbeat_interval = Duration::from_secs(30);
        config.session.missed_heartbeats = 10;
        config.stall_timeout = Duration::from_secs(3600);
        let (listening, addr) = hosts.listen_b(config.clone());
        let relay = OneWayRelay::start(addr);
        let peer = FakePeer::dial(relay.addr, hosts.raw_client_a(), config.session, Fault::Honest);
        wait_for(&listening, |e| matches!(e, Event::LinkOpen { .. }));
        while !matches!(peer.next_event(), Event::LinkOpen { .. }) {}
        relay.cut_the_way_back();
        // Acknowledgements for messages b never sent: b ends the session and owes a close.
        let mut false_acks = Vec::new();
        for _ in 0..3 {
            Frame {
                sender: peer.id,
                receiver: Some(listening.session_id()),
                body: FrameBody::Ack(Ack {
                    stream: StreamId(9),
                    delivered: MessageId(5),
                    held: Vec::new(),
                }),
            }
            .encode(&mut false_acks);
        }
        peer.send_control(false_acks);
        let end = wait_for(&listening, |e| matches!(e, Event::Ended(_)));
        assert_eq!(end, Event::Ended(SessionError::ProtocolViolation));
        // The broker drops an ended link on its event loop: that must not wait for the
        // linger (the watchdog fails the test if it does).
        drop(listening);
        drop(peer);
    });
}
