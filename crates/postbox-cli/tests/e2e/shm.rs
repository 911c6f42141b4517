//! Shared-memory links against hostile peers and crashes: a peer that scribbles over its link
//! segment costs only its own link, and a peer killed at any moment leaves its survivor a
//! clear error, a working link to anyone else and no segment behind.
//!
//! The test process plays the hostile peer: it takes a raw link (the four descriptors beside
//! `Connected` or `IncomingConnection`), keeps a copy of the segment's descriptor, and writes
//! random words all over the segment through a second mapping ([`Scribbler`]) while it speaks
//! the protocol on the link. Random choices come from a seed printed by each test;
//! `POSTBOX_TEST_SEED` sets it (timing still varies from run to run).

use std::collections::BTreeMap;
use std::io::Read;
use std::os::fd::OwnedFd;
use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use postbox::CallError;
use postbox_core::wire::control::MAX_CONTROL_LEN;
use postbox_core::{
    ControlMessage, FrameDecoder, FrameHeader, FrameKind, PortName, PortSpec, Target,
};
use postbox_shm::Scribbler;
use postbox_transport::{ControlSocket, Link, LinkSide, TransportError, Wait};

use crate::util::{wait_until, Daemon, Worker, WATCHDOG};

#[test]
fn a_client_scribbling_over_its_segment_loses_its_link_and_the_server_serves_everyone_else() {
    let daemon = Daemon::start();
    let mut server = daemon.worker(&["echo", "target"]);
    let node = daemon.node();
    let honest = node.connect("target").unwrap();
    assert_eq!(honest.call_timeout("before", WATCHDOG).unwrap().body(), b"before");
    let baseline = segments_of(server.child.id());
    assert!(baseline.descriptors >= 1, "the server holds the segment of the honest link");

    let seed = seed("a_client_scribbling");
    let control = raw_node(daemon.socket());
    let hostile = std::thread::spawn(move || {
        let mut rng = seed;
        let started = Instant::now();
        let (mut links, mut longest) = (0u32, Duration::ZERO);
        while links < MIN_HOSTILE_LINKS || started.elapsed() < SCRIBBLE_FOR {
            let (link, scribbler) = raw_link(&control, "target", 10 + links);
            let opened = Instant::now();
            scribble_until_the_server_hangs_up(&link, &scribbler, &mut rng);
            longest = longest.max(opened.elapsed());
            assert_link_ended(&link);
            links += 1;
        }
        (links, longest)
    });

    // Meanwhile an honest client's calls all succeed, with their own replies.
    let mut calls = 0u64;
    let mut slowest = Duration::ZERO;
    while !hostile.is_finished() {
        let body = format!("honest call {calls}");
        let started = Instant::now();
        let reply = honest.call_timeout(body.as_str(), WATCHDOG);
        slowest = slowest.max(started.elapsed());
        assert_eq!(reply.unwrap().body(), body.as_bytes(), "seed {seed}");
        calls += 1;
    }
    let (links, longest) = hostile.join().expect("every hostile link was closed by the server");
    eprintln!(
        "{links} scribbled links closed by the server (the longest lived {longest:?}); \
         {calls} honest calls, the slowest {slowest:?}"
    );

    assert!(server.child.try_wait().unwrap().is_none(), "the server survived (seed {seed})");
    assert_eq!(honest.call_timeout("after", WATCHDOG).unwrap().body(), b"after");
    let fresh = node.connect("target").unwrap();
    assert_eq!(fresh.call_timeout("new link", WATCHDOG).unwrap().body(), b"new link");
    drop(fresh);
    wait_until("the server let go of every scribbled segment", || {
        segments_of(server.child.id()) == baseline
    });
}

#[test]
fn a_server_scribbling_over_its_segment_fails_its_clients_calls_with_a_clear_error() {
    let daemon = Daemon::start();
    let control = raw_node(daemon.socket());
    open_port(&control, "evil");
    let node = daemon.node();
    let seed = seed("a_server_scribbling");
    let mut rng = seed;
    let mut outcomes = BTreeMap::<&str, u32>::new();
    let started = Instant::now();
    let (mut rounds, mut longest) = (0, Duration::ZERO);
    while rounds < MIN_HOSTILE_LINKS || started.elapsed() < SCRIBBLE_FOR {
        let connection = node.connect("evil").unwrap();
        let server = HostileServer::start(incoming_link(&control), next_random(&mut rng));
        let opened = Instant::now();
        // Calls until the first failure.
        let error = within_watchdog(&format!("the calls on a scribbled link (seed {seed})"), {
            move || {
                for i in 0u64.. {
                    let body = format!("call {i}");
                    match connection.call(body.as_str()) {
                        Ok(reply) => assert_eq!(reply.body(), body.as_bytes(), "an intact reply"),
                        Err(error) => return error,
                    }
                }
                unreachable!("calls until one fails")
            }
        });
        longest = longest.max(opened.elapsed());
        server.stop();
        let outcome = match error {
            CallError::ProtocolViolation(_) => "ProtocolViolation",
            CallError::PeerDied => "PeerDied",
            // The client found the stream it writes to corrupt before the request went out.
            CallError::Disconnected(_) => "Disconnected",
            other => panic!("expected a clear error, got {other:?} (seed {seed})"),
        };
        *outcomes.entry(outcome).or_default() += 1;
        rounds += 1;
    }
    eprintln!(
        "{rounds} scribbling servers (the longest until an error {longest:?}); \
         first errors of their clients: {outcomes:?}"
    );

    // A client in a process of its own ends with its error: no panic, no signal, no hang.
    let mut client = worker_with_stderr(&daemon, &["call-loop", "evil"]);
    let server = HostileServer::start(incoming_link(&control), next_random(&mut rng));
    let status = exit_status(&mut client);
    server.stop();
    let mut stderr = String::new();
    client.child.stderr.take().unwrap().read_to_string(&mut stderr).unwrap();
    assert_eq!(status.code(), Some(1), "exit status {status}; stderr: {stderr}");
    assert!(
        ["protocol violation by the server", "the server died", "the server is gone"]
            .iter()
            .any(|clear| stderr.contains(clear)),
        "stderr: {stderr}"
    );
}

#[test]
fn killing_either_side_of_shared_memory_links_at_random_leaves_no_segment_behind() {
    kill_either_side_at_random(50);
}

#[test]
#[ignore = "stress: a thousand kills; run with --ignored"]
fn killing_either_side_a_thousand_times_leaves_no_segment_behind() {
    kill_either_side_at_random(1000);
}

/// Kills a call-loop client or an echo server with SIGKILL after a random delay, `iterations`
/// times, checking each time that the survivor noticed, that a new link works at once, and
/// that the long-lived server holds exactly the segments of its live links again.
fn kill_either_side_at_random(iterations: u32) {
    let daemon = Daemon::start();
    let steady = daemon.worker(&["echo", "steady"]);
    let steady_pid = steady.child.id();
    let node = daemon.node();
    let link = node.connect("steady").unwrap();
    assert_eq!(link.call_timeout("hello", WATCHDOG).unwrap().body(), b"hello");
    let baseline = segments_of(steady_pid);
    assert!(baseline.descriptors >= 1, "the server holds the segment of our link");
    let seed = seed("kill_either_side_at_random");
    let mut rng = seed;
    let (mut clients_killed, mut servers_killed) = (0, 0);
    for i in 0..iterations {
        let delay = Duration::from_micros(next_random(&mut rng) % MAX_KILL_DELAY_US);
        let context = format!("iteration {i}, seed {seed}");
        if next_random(&mut rng) % 2 == 0 {
            let mut client = daemon.worker(&["call-loop", "steady"]);
            std::thread::sleep(delay);
            client.kill9();
            clients_killed += 1;
        } else {
            let name = format!("doomed-{i}");
            let mut server = daemon.worker(&["echo", &name]);
            let mut client = worker_with_stderr(&daemon, &["call-loop", &name]);
            let connection = node.connect(&name).unwrap();
            let caller = std::thread::spawn(move || loop {
                if let Err(error) = connection.call("ping") {
                    return error;
                }
            });
            std::thread::sleep(delay);
            server.kill9();
            servers_killed += 1;
            // A call in flight fails with PeerDied; one started after the link was seen
            // closed is not sent and fails with Disconnected.
            match join_within_watchdog("the call to a killed server", caller) {
                CallError::PeerDied | CallError::Disconnected(_) => {}
                other => panic!("expected PeerDied, got {other:?} ({context})"),
            }
            let status = exit_status(&mut client);
            let mut stderr = String::new();
            client.child.stderr.take().unwrap().read_to_string(&mut stderr).unwrap();
            assert_eq!(status.code(), Some(1), "client status {status}: {stderr} ({context})");
            assert!(
                stderr.contains("the server died") || stderr.contains("the server is gone"),
                "client stderr: {stderr} ({context})"
            );
        }
        // The long-lived server answers on an old link and on a new one, at once.
        assert_eq!(link.call_timeout("still there?", WATCHDOG).unwrap().body(), b"still there?");
        let fresh = node.connect("steady").unwrap();
        assert_eq!(fresh.call_timeout("new link", WATCHDOG).unwrap().body(), b"new link");
        drop(fresh);
        wait_until(&format!("the server holds its baseline segments ({context})"), || {
            segments_of(steady_pid) == baseline
        });
    }
    eprintln!("{clients_killed} clients and {servers_killed} servers killed");
    assert!(clients_killed > 0 && servers_killed > 0, "both sides were killed (seed {seed})");
}

/// Runs `f` on a thread of its own and returns what it returns: a hang fails the test at the
/// watchdog instead of stalling it.
fn within_watchdog<T: Send + 'static>(what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    join_within_watchdog(what, std::thread::spawn(f))
}

pub(crate) fn join_within_watchdog<T>(what: &str, thread: std::thread::JoinHandle<T>) -> T {
    let deadline = Instant::now() + WATCHDOG;
    while !thread.is_finished() {
        assert!(Instant::now() < deadline, "{what} hung");
        std::thread::sleep(Duration::from_millis(1));
    }
    match thread.join() {
        Ok(value) => value,
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

/// Scribbles over a raw client link's segment in bursts, writing valid calls between them
/// (so that the server reads what was scribbled) and reading its replies, until the server
/// hangs up; a link the server never gives up fails the test at the watchdog.
fn scribble_until_the_server_hangs_up(link: &Link, scribbler: &Scribbler, rng: &mut u64) {
    let Link::Shm(shm) = link else { panic!("links between nodes use shared memory") };
    let bursts = Bursts::new(rng);
    let mut decoder = FrameDecoder::new(1 << 20);
    let deadline = Instant::now() + WATCHDOG;
    let mut call = inline_header();
    call.kind = FrameKind::Call;
    for i in 0u64.. {
        scribbler.scribble(rng, bursts.size());
        let body = format!("hostile call {i}");
        (call.id, call.correlation, call.body_len) = (i, i, body.len() as u32);
        let header = call.encode(body.as_bytes());
        // Our own end may find the segment corrupt too: that is the point.
        let _ = link.write_frame(&header, body.as_bytes(), Wait::NonBlocking);
        drain(link, &mut decoder);
        if shm.peer_gone(true) == Ok(true) {
            return;
        }
        assert!(Instant::now() < deadline, "the server never dropped a scribbled link");
        std::thread::sleep(PACE);
    }
}

/// The header of a one-way frame with an inline body, all else zero: decoded from its wire
/// form (docs/wire-format.md: version, then zeros), so that fields this test does not set keep
/// the value meaning "nothing special".
fn inline_header() -> FrameHeader {
    let mut bytes = [0u8; postbox_core::wire::frame::HEADER_LEN];
    bytes[0] = postbox_core::wire::frame::VERSION;
    FrameHeader::decode(&bytes, 0).expect("a plain header").0
}

/// A link the server dropped reads as closed, or as corrupt (it was scribbled on).
fn assert_link_ended(link: &Link) {
    let mut decoder = FrameDecoder::new(1 << 20);
    loop {
        match link.read_into(&mut decoder, Wait::timeout(WATCHDOG)) {
            Ok(_) => {
                while let Ok(Some(_)) = decoder.poll_frame() {}
                if decoder.poll_frame().is_err() {
                    decoder = FrameDecoder::new(1 << 20);
                }
            }
            Err(TransportError::Closed | TransportError::Corrupt) => return,
            Err(other) => panic!("expected the link to end, got {other:?}"),
        }
    }
}

/// Reads what a link holds now and discards the frames, starting over after garbage.
fn drain(link: &Link, decoder: &mut FrameDecoder) {
    if link.read_into(decoder, Wait::NonBlocking).is_ok() {
        while let Ok(Some(_)) = decoder.poll_frame() {}
        if decoder.poll_frame().is_err() {
            *decoder = FrameDecoder::new(1 << 20);
        }
    }
}

/// The raw server end of one link: answers every call with its body while scribbling over
/// the segment, until stopped.
struct HostileServer {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<()>,
}

impl HostileServer {
    fn start((link, scribbler): (Link, Scribbler), seed: u64) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            let mut rng = seed;
            let bursts = Bursts::new(&mut rng);
            let mut decoder = FrameDecoder::new(1 << 20);
            // Until this end finds its own view of the segment broken.
            let mut serving = true;
            while !stopped.load(Ordering::Acquire) {
                scribbler.scribble(&mut rng, bursts.size());
                if serving {
                    serving = serve_calls(&link, &mut decoder);
                }
                std::thread::sleep(PACE);
            }
        });
        Self { stop, thread }
    }

    fn stop(self) {
        self.stop.store(true, Ordering::Release);
        self.thread.join().expect("the hostile server's thread");
    }
}

/// Answers the calls a link holds now with their bodies; false once the link is unusable.
fn serve_calls(link: &Link, decoder: &mut FrameDecoder) -> bool {
    match link.read_into(decoder, Wait::NonBlocking) {
        Ok(_) | Err(TransportError::WouldBlock) => {}
        Err(_) => return false,
    }
    loop {
        match decoder.poll_frame() {
            Ok(Some(frame)) if frame.header.kind == FrameKind::Call => {
                let header = FrameHeader {
                    kind: FrameKind::Reply,
                    correlation: frame.header.correlation,
                    ..frame.header
                }
                .encode(&frame.body);
                if link.write_frame(&header, &frame.body, Wait::NonBlocking).is_err() {
                    return false;
                }
            }
            Ok(Some(_)) => {}
            Ok(None) => return true,
            Err(_) => return false,
        }
    }
}

/// How many words a scribbler writes per burst: from one to 64 at first (some links are
/// wrecked at once, others slowly), doubling every [`ESCALATE_EVERY`], so that every link
/// is wrecked soon whatever the machine's speed.
struct Bursts {
    first: usize,
    started: Instant,
}

impl Bursts {
    fn new(rng: &mut u64) -> Self {
        Self { first: 1 << (next_random(rng) % 7), started: Instant::now() }
    }

    fn size(&self) -> usize {
        let doublings = self.started.elapsed().as_millis() / ESCALATE_EVERY.as_millis();
        self.first << doublings.min(12)
    }
}

/// Link segments a process holds: descriptors of, and mappings of, postbox memory objects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Segments {
    pub(crate) descriptors: usize,
    pub(crate) mappings: usize,
}

pub(crate) fn segments_of(pid: u32) -> Segments {
    let descriptors = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|entry| std::fs::read_link(entry.ok()?.path()).ok())
        .filter(|target| target.to_string_lossy().starts_with(SEGMENT_NAME))
        .count();
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
    let mappings = maps.lines().filter(|line| line.contains(SEGMENT_NAME)).count();
    Segments { descriptors, mappings }
}

/// `postbox worker ARGS` with its stderr captured (read it once it exited).
pub(crate) fn worker_with_stderr(daemon: &Daemon, args: &[&str]) -> Worker {
    let mut full = vec!["worker"];
    full.extend_from_slice(args);
    let mut command = daemon.command(&full);
    command.stderr(Stdio::piped());
    Worker::start(command)
}

/// Waits (up to the watchdog) for a worker to exit.
pub(crate) fn exit_status(worker: &mut Worker) -> ExitStatus {
    let mut status = None;
    wait_until("the worker exits", || {
        status = worker.child.try_wait().unwrap();
        status.is_some()
    });
    status.expect("wait_until returned, so the worker exited")
}

fn packet(message: &ControlMessage) -> Vec<u8> {
    let mut bytes = Vec::new();
    message.encode(&mut bytes);
    bytes
}

fn recv_with_fds(control: &ControlSocket) -> (ControlMessage, Vec<OwnedFd>) {
    let mut buf = vec![0u8; MAX_CONTROL_LEN];
    let (len, fds) = control.recv(&mut buf, Wait::timeout(WATCHDOG)).unwrap();
    (ControlMessage::decode(&buf[..len]).unwrap(), fds)
}

/// Attaches with raw control messages, as a hand-written node would.
fn raw_node(socket: &Path) -> ControlSocket {
    let control = ControlSocket::connect(socket).unwrap();
    control.send(&packet(&ControlMessage::Hello { request: 1 }), &[], Wait::Forever).unwrap();
    assert!(matches!(recv_with_fds(&control).0, ControlMessage::Welcome { .. }));
    control
}

/// Registers port `name` for a raw node.
fn open_port(control: &ControlSocket, name: &str) {
    let open = ControlMessage::OpenPort {
        request: 2,
        name: PortName::new(name).unwrap(),
        spec: PortSpec::default(),
        service: false,
    };
    control.send(&packet(&open), &[], Wait::Forever).unwrap();
    assert_eq!(recv_with_fds(control).0, ControlMessage::Ok { request: 2 });
}

/// A raw client link to port `name`, and a scribbler over its segment.
fn raw_link(control: &ControlSocket, name: &str, request: u32) -> (Link, Scribbler) {
    let target = Target::Port(PortName::new(name).unwrap());
    control
        .send(
            &packet(&ControlMessage::Connect {
                request,
                target,
                rights: postbox_core::Rights::ALL,
            }),
            &[],
            Wait::Forever,
        )
        .unwrap();
    let (answer, fds) = recv_with_fds(control);
    assert!(matches!(answer, ControlMessage::Connected { .. }), "got {answer:?}");
    link_and_scribbler(fds, LinkSide::Client)
}

/// The next link a client made to a raw node's port, and a scribbler over its segment.
fn incoming_link(control: &ControlSocket) -> (Link, Scribbler) {
    let (notice, fds) = recv_with_fds(control);
    assert!(matches!(notice, ControlMessage::IncomingConnection { .. }), "got {notice:?}");
    link_and_scribbler(fds, LinkSide::Server)
}

fn link_and_scribbler(fds: Vec<OwnedFd>, side: LinkSide) -> (Link, Scribbler) {
    assert_eq!(fds.len(), 3, "a shared-memory link: socket, segment and wake-up socket");
    let scribbler = Scribbler::open(fds[1].try_clone().unwrap()).unwrap();
    (Link::from_fds(fds, side).unwrap(), scribbler)
}

/// The seed of a test's random choices: `POSTBOX_TEST_SEED`, else the clock. Printed.
pub(crate) fn seed(test: &str) -> u64 {
    let seed =
        std::env::var("POSTBOX_TEST_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
            SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap().as_nanos() as u64
        });
    eprintln!("{test}: seed {seed}");
    seed
}

/// xorshift64*.
pub(crate) fn next_random(state: &mut u64) -> u64 {
    if *state == 0 {
        *state = 0x9e37_79b9_7f4a_7c15;
    }
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    state.wrapping_mul(0x2545_f491_4f6c_dd1d)
}

/// How long each hostile test keeps making scribbled links (and at least how many).
const SCRIBBLE_FOR: Duration = Duration::from_secs(3);
const MIN_HOSTILE_LINKS: u32 = 10;
/// Between bursts of scribbling: leaves the victim time to run on a small machine.
const PACE: Duration = Duration::from_micros(200);
/// How often bursts of scribbling double.
const ESCALATE_EVERY: Duration = Duration::from_millis(250);
/// Kills come this long (at most) after the worker said it was ready.
pub(crate) const MAX_KILL_DELAY_US: u64 = 30_000;
/// How a link segment's memory object shows in `/proc/PID/fd` and `/proc/PID/maps`.
const SEGMENT_NAME: &str = "/memfd:postbox-segment";
