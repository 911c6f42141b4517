//! The driver task of a QUIC host link: takes connections from the dialer or the acceptor,
//! writes each lane's frames to the lane's own QUIC stream (one write in flight per lane), runs
//! the session's timers, and ends the link.
//!
//! ```text
//!  dial task / accept loop (connector.rs) ── connection ──► driver: adopt (readers, link up)
//!  readers (reader.rs) ── handle_frame, broken ──► Core (mutex) ◄── send / close (handle)
//!  driver: poll_transmit_where(lane idle) ──► one write task per busy lane ──► QUIC stream
//!  driver and readers: poll_event ──► events ──► recv / try_recv_batch
//! ```
//!
//! The driver waits on `Shared::driver_task` (woken as the TCP driver is), its timer, the
//! writes in flight, the current connection's readers, and the dialer or acceptor. It never
//! awaits while holding the lock.
//!
//! A connection is dropped (and the session resumes on the next) when it breaks, a write
//! stalls, the peer stops one of this end's lane streams or a reader panics (either would
//! lose frames on a connection that stays up), the session gives the link up (a message
//! unacknowledged far too long, `Session::handle_timeout`), or the peer floods the readers.
//! Once the session ended, the driver lets the close frame leave and lingers for the peer's
//! close; a dropped handle cuts that short at once.

use std::collections::{BTreeMap, HashMap};
use std::future::{pending, Future};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use postbox_core::reliable::{Lane, LinkState};
use quinn::{Connection, Endpoint, SendStream, TransportConfig, VarInt, WriteError};
use tokio::sync::mpsc;
use tokio::task::{JoinError, JoinHandle, JoinSet};
use tokio::time::timeout;

use super::super::error::LinkError;
use super::super::security::TlsConfig;
use super::super::shared::{Core, Shared};
use super::connector::{accept_loop, dial, Arrival, DialFailure};
use super::reader::PartialBudget;
use super::{crypto, reader};

/// Which side of the pair this end is.
#[derive(Debug, Clone, Copy)]
pub(super) enum Role {
    /// Dials this address.
    Dial(SocketAddr),
    /// Accepts on the endpoint's socket.
    Listen,
}

/// The driver's state, owned by its task.
#[derive(Debug)]
pub(super) struct Driver {
    shared: Arc<Shared>,
    endpoint: Endpoint,
    tls: TlsConfig,
    transport: Arc<TransportConfig>,
    role: Role,
    current: Option<Current>,
    /// The dial in progress (dialing side).
    dialing: Option<JoinHandle<Result<Connection, DialFailure>>>,
    /// Connections the acceptor made, or why it could not (listening side).
    arrivals: Option<mpsc::UnboundedReceiver<Arrival>>,
    writes: JoinSet<Written>,
    /// A close frame was taken for the current connection after the session ended.
    close_sent: bool,
}

/// The current connection and its lanes.
#[derive(Debug)]
struct Current {
    connection: Connection,
    number: u64,
    /// Lanes whose stream is open: idle, or with a write in flight. A lane not here has no
    /// stream yet (idle; its first write opens one).
    lanes: HashMap<Lane, LaneState>,
    /// The connection's readers; dropped (so stopped) with it.
    readers: JoinSet<()>,
    /// A watcher per open lane stream, for the peer stopping it; dropped with the connection.
    watchers: JoinSet<()>,
}

#[derive(Debug)]
enum LaneState {
    Idle(SendStream),
    Busy,
}

/// What a lane's write task gives back.
#[derive(Debug)]
struct Written {
    number: u64,
    lane: Lane,
    /// The stream, to write on again, and how many bytes went; or why the connection broke.
    result: Result<(SendStream, u64), LinkError>,
    /// The write opened the lane's stream.
    opened: bool,
}

/// Frames taken from the session in one pass, for the lanes' writes.
#[derive(Debug, Default)]
struct Outgoing {
    lanes: BTreeMap<Lane, Vec<u8>>,
    datagrams: Vec<Vec<u8>>,
}

/// What woke the driver.
enum Wake {
    /// Woken, or the timer fired: look at everything again.
    LookAgain,
    Written(Result<Written, JoinError>),
    /// A reader of the current connection ended (its connection closed, or it panicked).
    ReaderEnded(Result<(), JoinError>),
    Dialed(Result<Result<Connection, DialFailure>, JoinError>),
    Arrived(Arrival),
}

/// Why the driver's loop stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Exit {
    /// The session ended: close politely.
    Ended,
    /// The handle was dropped: stop at once.
    Aborted,
}

impl Driver {
    pub(super) fn new(
        shared: Arc<Shared>,
        endpoint: Endpoint,
        tls: TlsConfig,
        transport: Arc<TransportConfig>,
        role: Role,
    ) -> Self {
        Self {
            shared,
            endpoint,
            tls,
            transport,
            role,
            current: None,
            dialing: None,
            arrivals: None,
            writes: JoinSet::new(),
            close_sent: false,
        }
    }

    pub(super) fn shared(&self) -> Arc<Shared> {
        Arc::clone(&self.shared)
    }

    /// Runs the link until the session ends or the handle is dropped, then ends it.
    pub(super) async fn run(mut self) {
        if let Role::Listen = self.role {
            let (arrivals, received) = mpsc::unbounded_channel();
            tokio::spawn(accept_loop(
                self.endpoint.clone(),
                self.tls.clone(),
                Arc::clone(&self.transport),
                self.shared.config.connect_timeout,
                arrivals,
            ));
            self.arrivals = Some(received);
        }
        let exit = self.drive().await;
        self.finish(exit).await;
    }

    async fn drive(&mut self) -> Exit {
        let mut scratch = Vec::new();
        loop {
            let mut out = Outgoing::default();
            let (deadline, finished) = {
                let shared = Arc::clone(&self.shared);
                let mut core = shared.lock();
                core.driver_waiting = None;
                if core.aborted {
                    return Exit::Aborted;
                }
                let now = Instant::now();
                if let Some(error) = core.broken.take() {
                    self.drop_connection(&mut core, error, now);
                }
                if core.session.poll_timeout().is_some_and(|at| at <= now) {
                    core.session.handle_timeout(now);
                    if self.current.is_some() && core.session.state() == LinkState::Down {
                        // The session gave the link up: a message went unacknowledged far too
                        // long on it. The next connection resends it.
                        self.drop_connection(&mut core, LinkError::Unacknowledged, now);
                    }
                }
                self.take_frames(&mut core, now, &mut out, &mut scratch);
                if core.collect_events(&shared.config) {
                    // Events from timers and link changes only (readers pass on what arrives).
                    shared.events_queued();
                }
                let ended = core.session.state() == LinkState::Ended;
                if ended {
                    self.close_sent |= out.lanes.contains_key(&Lane::Control);
                } else {
                    self.start_dialing(&mut core);
                }
                // A close frame still owed waits for the control lane's write in flight.
                let finished = ended && !core.session.has_transmit(now);
                // A timer still due after this pass waits for a lane with a write in flight
                // (an ack, when the control stream is held up by the send window): the write's
                // end wakes the driver; until then, look again now and then, not in a loop.
                let deadline =
                    core.session
                        .poll_timeout()
                        .map(|at| if at <= now { now + DUE_RECHECK } else { at });
                core.driver_waiting = Some(deadline);
                (deadline, finished)
            };
            self.start_writes(out);
            if finished {
                return Exit::Ended;
            }
            let wake = self.wait(deadline).await;
            match wake {
                Wake::LookAgain => {}
                Wake::Written(done) => self.written(done),
                Wake::ReaderEnded(ended) => self.reader_ended(ended),
                Wake::Dialed(result) => {
                    self.dialing = None;
                    self.dialed(result);
                }
                Wake::Arrived(arrival) => self.arrived(arrival),
            }
        }
    }

    /// Waits for a wake-up, the session's timer, a write that finished, or a connection.
    async fn wait(&mut self, deadline: Option<Instant>) -> Wake {
        let Self { shared, writes, dialing, arrivals, current, .. } = self;
        let timer = async {
            match deadline {
                Some(at) => tokio::time::sleep_until(at.into()).await,
                None => pending().await,
            }
        };
        let dialed = async {
            match dialing {
                Some(handle) => handle.await,
                None => pending().await,
            }
        };
        let arrived = async {
            match arrivals {
                Some(received) => received.recv().await,
                None => pending().await,
            }
        };
        let reader_ended = async {
            match current {
                Some(current) => current.readers.join_next().await,
                None => pending().await,
            }
        };
        tokio::select! {
            () = shared.driver_task.notified() => Wake::LookAgain,
            () = timer => Wake::LookAgain,
            Some(done) = writes.join_next() => Wake::Written(done),
            Some(ended) = reader_ended => Wake::ReaderEnded(ended),
            result = dialed => Wake::Dialed(result),
            Some(arrival) = arrived => Wake::Arrived(arrival),
        }
    }

    /// Takes the session's frames for every lane that can take more: one with no write in
    /// flight and less than a batch taken in this pass. A lane with a write in flight keeps
    /// its frames in the session (its timers have not started), and the others go on.
    fn take_frames(
        &self,
        core: &mut Core,
        now: Instant,
        out: &mut Outgoing,
        scratch: &mut Vec<u8>,
    ) {
        let Some(current) = &self.current else {
            // No connection to carry them (a close frame after the link dropped).
            while core.session.poll_transmit(now, scratch).is_some() {
                scratch.clear();
            }
            return;
        };
        loop {
            scratch.clear();
            let batches = &out.lanes;
            let ready = |lane: Lane| {
                lane == Lane::Datagram
                    || (!matches!(current.lanes.get(&lane), Some(LaneState::Busy))
                        && batches.get(&lane).is_none_or(|batch| batch.len() < MAX_BATCH))
            };
            let Some(transmit) = core.session.poll_transmit_where(now, scratch, ready) else {
                break;
            };
            if transmit.lane == Lane::Datagram {
                out.datagrams.push(scratch.clone());
            } else {
                out.lanes.entry(transmit.lane).or_default().extend_from_slice(scratch);
            }
        }
    }

    /// Starts a write task for each lane with frames, and sends the datagrams.
    fn start_writes(&mut self, out: Outgoing) {
        let Some(current) = &mut self.current else { return };
        let stall = self.shared.config.stall_timeout;
        for (lane, bytes) in out.lanes {
            let stream = match current.lanes.insert(lane, LaneState::Busy) {
                Some(LaneState::Idle(stream)) => Some(stream),
                None => None,
                // Not reached: frames are taken only for lanes without a write in flight, and
                // nothing starts one between taking them and here.
                Some(LaneState::Busy) => continue,
            };
            let connection = current.connection.clone();
            let number = current.number;
            let opened = stream.is_none();
            self.writes.spawn(async move {
                let len = bytes.len() as u64;
                let result = write_lane(&connection, stream, lane, &bytes, stall).await;
                Written { number, lane, result: result.map(|stream| (stream, len)), opened }
            });
        }
        if out.datagrams.is_empty() {
            return;
        }
        let (mut sent_bytes, mut unsent) = (0, 0);
        for datagram in out.datagrams {
            // Best effort: one the connection cannot take now (larger than its datagrams, or
            // no room without pushing out an older one) is dropped, as a lost one would be,
            // and counted. The session's payload limit keeps every datagram within QUIC's
            // smallest (`crypto::session_config`).
            let connection = &current.connection;
            let len = datagram.len();
            let fits = datagram_fits(
                len,
                connection.max_datagram_size(),
                connection.datagram_send_buffer_space(),
            );
            if fits && connection.send_datagram(Bytes::from(datagram)).is_ok() {
                sent_bytes += len as u64;
            } else {
                unsent += 1;
            }
        }
        let mut core = self.shared.lock();
        core.counters.bytes_sent += sent_bytes;
        core.counters.datagrams_unsent += unsent;
    }

    /// A lane's write finished: the lane is idle again, or its connection is broken.
    fn written(&mut self, done: Result<Written, JoinError>) {
        let shared = Arc::clone(&self.shared);
        let mut core = shared.lock();
        let Some(current) = &mut self.current else { return };
        let done = match done {
            Ok(done) => done,
            Err(_) => {
                // A write task that panicked leaves its lane busy for good: make the
                // connection again rather than stall that lane.
                core.report_broken(current.number, LinkError::QuicProtocol);
                return;
            }
        };
        if done.number != current.number {
            return;
        }
        match done.result {
            Ok((stream, len)) => {
                core.counters.bytes_sent += len;
                if done.opened {
                    let watch =
                        reader::watch_lane(Arc::clone(&shared), done.number, stream.stopped());
                    current.watchers.spawn(watch);
                }
                current.lanes.insert(done.lane, LaneState::Idle(stream));
            }
            Err(error) => core.report_broken(done.number, error),
        }
    }

    /// A reader of the current connection ended. One that panicked left frames of the peer
    /// unread on a connection that stays up: make the connection again.
    fn reader_ended(&mut self, ended: Result<(), JoinError>) {
        let Some(current) = &self.current else { return };
        if ended.is_err_and(|error| error.is_panic()) {
            self.shared.lock().report_broken(current.number, LinkError::QuicProtocol);
        }
    }

    /// Starts a dial after the current backoff, if this end dials and has no connection.
    fn start_dialing(&mut self, core: &mut Core) {
        let Role::Dial(addr) = self.role else { return };
        if self.current.is_some() || self.dialing.is_some() {
            return;
        }
        let wait = core.backoff;
        core.backoff = self.shared.config.next_backoff(wait);
        self.dialing = Some(tokio::spawn(dial(
            self.endpoint.clone(),
            addr,
            self.tls.clone(),
            Arc::clone(&self.transport),
            wait,
            self.shared.config.connect_timeout,
        )));
    }

    fn dialed(&mut self, result: Result<Result<Connection, DialFailure>, JoinError>) {
        let shared = Arc::clone(&self.shared);
        let mut core = shared.lock();
        match result {
            Ok(Ok(connection)) => {
                core.counters.connections += 1;
                self.adopt(&mut core, connection, Instant::now());
            }
            Ok(Err(DialFailure::Connect(error))) => {
                core.counters.connect_failures += 1;
                core.counters.last_error = Some(error);
            }
            Ok(Err(DialFailure::Handshake(error))) => {
                core.counters.handshake_failures += 1;
                core.counters.last_error = Some(error);
            }
            // The dial task panicked: the next pass dials again.
            Err(_) => core.counters.connect_failures += 1,
        }
    }

    fn arrived(&mut self, arrival: Arrival) {
        let shared = Arc::clone(&self.shared);
        let mut core = shared.lock();
        match arrival {
            Arrival::Connected(connection) => {
                core.counters.connections += 1;
                // A newer connection replaces the current one: the peer that made it has
                // given up on the old one.
                self.adopt(&mut core, connection, Instant::now());
            }
            Arrival::Failed(error) => {
                core.counters.handshake_failures += 1;
                core.counters.last_error = Some(error);
            }
            Arrival::Refused => core.counters.handshake_failures += 1,
        }
    }

    /// Makes `connection` the current one, replacing any earlier one.
    fn adopt(&mut self, core: &mut Core, connection: Connection, now: Instant) {
        if self.current.is_some() {
            self.drop_connection(core, LinkError::Replaced, now);
        }
        core.broken = None;
        core.connection += 1;
        let number = core.connection;
        let max_body = core.session.config().max_frame_body();
        let budget = Arc::new(PartialBudget::new(crypto::partial_budget(&self.shared.config)));
        let readers = reader::spawn(&self.shared, &connection, number, max_body, budget);
        let (lanes, watchers) = (HashMap::new(), JoinSet::new());
        self.current = Some(Current { connection, number, lanes, readers, watchers });
        core.session.handle_link_up(now);
    }

    /// Closes the current connection and tells the session; the dialer makes a new one.
    fn drop_connection(&mut self, core: &mut Core, error: LinkError, now: Instant) {
        let Some(current) = self.current.take() else { return };
        // Its readers stop (dropped with it); its writes fail and are ignored (stale number).
        current.connection.close(CODE_DROPPED, b"connection dropped");
        core.session.handle_link_down(now);
        core.counters.connections_lost += 1;
        core.counters.last_error = Some(error);
    }

    /// Ends the link: after a session end, lets the close frame leave and waits (briefly) for
    /// the peer to close the connection in turn, unless the handle is dropped meanwhile; then
    /// marks the link finished.
    async fn finish(mut self, exit: Exit) {
        let aborted = exit == Exit::Aborted || self.shared.lock().aborted;
        if let (false, Some(current)) = (aborted, self.current.take()) {
            let shared = Arc::clone(&self.shared);
            until_aborted(&shared, self.close_politely(current)).await;
        }
        mark_finished(&self.shared);
    }

    /// Lets the close frame (if one was taken) leave, waits for the peer to close the
    /// connection in turn, closes it and waits for that to go out: each wait bounded by the
    /// stall timeout or `CLOSE_LINGER`.
    async fn close_politely(&mut self, current: Current) {
        if self.close_sent {
            // The close frame is the control lane's last write: once it is written and the
            // peer's QUIC acknowledged the stream, the peer's session ends with it and its
            // link closes the connection. Closing first could discard the frame unread.
            let control_written = async {
                while let Some(done) = self.writes.join_next().await {
                    let Ok(done) = done else { continue };
                    if done.lane == Lane::Control && done.number == current.number {
                        if let Ok((mut stream, _)) = done.result {
                            if stream.finish().is_ok() {
                                let _ = stream.stopped().await;
                            }
                        }
                        return;
                    }
                }
            };
            let _ = timeout(self.shared.config.stall_timeout, control_written).await;
            let _ = timeout(CLOSE_LINGER, current.connection.closed()).await;
        }
        current.connection.close(CODE_CLOSED, b"session ended");
        // The connection's close goes out before the runtime stops.
        let _ = timeout(CLOSE_LINGER, self.endpoint.wait_idle()).await;
    }
}

/// Runs `work` to its end, or until the handle is dropped: then it is cut short, so that the
/// drop (which joins the link's thread) waits for no linger, whatever the stall timeout.
async fn until_aborted(shared: &Shared, work: impl Future<Output = ()>) {
    let aborted = async {
        loop {
            // Made before the check: an abort after it leaves a permit that wakes this wait.
            let notified = shared.driver_task.notified();
            if shared.lock().aborted {
                return;
            }
            notified.await;
        }
    };
    tokio::select! {
        () = work => {}
        () = aborted => {}
    }
}

/// Whether a datagram of `len` bytes can go on a connection whose datagrams carry at most
/// `max_size` bytes (`None`: the peer takes none) and whose datagram buffer has
/// `buffer_space` bytes free (quinn would push out older datagrams to make room).
fn datagram_fits(len: usize, max_size: Option<usize>, buffer_space: usize) -> bool {
    max_size.is_some_and(|max| len <= max) && len <= buffer_space
}

/// Closes the session if it has not ended (the handle was dropped) and tells every waiter
/// that no more events will come.
pub(super) fn mark_finished(shared: &Shared) {
    let mut core = shared.lock();
    core.session.close(Instant::now());
    core.collect_events(&shared.config);
    core.finished = true;
    drop(core);
    shared.events_queued();
    shared.wake_all();
}

/// Writes `bytes` to `lane`'s stream, opening it first if the lane has none; fails with
/// [`LinkError::Stalled`] when no byte moves for `stall`.
async fn write_lane(
    connection: &Connection,
    stream: Option<SendStream>,
    lane: Lane,
    mut bytes: &[u8],
    stall: Duration,
) -> Result<SendStream, LinkError> {
    let mut stream = match stream {
        Some(stream) => stream,
        None => {
            let opened =
                timeout(stall, connection.open_uni()).await.map_err(|_| LinkError::Stalled)?;
            let stream = opened.map_err(|e| crypto::connection_error(&e, None))?;
            if lane == Lane::Control {
                // Acknowledgements and heartbeats do not queue behind bulk data. A stream that
                // is already closed fails its write below.
                let _ = stream.set_priority(CONTROL_PRIORITY);
            }
            stream
        }
    };
    while !bytes.is_empty() {
        let written = timeout(stall, stream.write(bytes)).await.map_err(|_| LinkError::Stalled)?;
        let written = written.map_err(|e| match e {
            WriteError::ConnectionLost(e) => crypto::connection_error(&e, None),
            _ => LinkError::QuicProtocol,
        })?;
        bytes = &bytes[written..];
    }
    Ok(stream)
}

/// How soon the driver looks again at a timer that fell due while its lane was busy.
const DUE_RECHECK: Duration = Duration::from_millis(5);
/// Bytes of one lane gathered into one write; more wait for the next.
const MAX_BATCH: usize = 256 << 10;
/// The control lane's stream priority (data lanes have quinn's default, 0).
const CONTROL_PRIORITY: i32 = 1;
/// How long a politely ending link waits for the peer to close, and for its own close to go.
const CLOSE_LINGER: Duration = Duration::from_millis(250);
/// Application close codes: the session ended; the connection was dropped or replaced.
const CODE_CLOSED: VarInt = VarInt::from_u32(0);
const CODE_DROPPED: VarInt = VarInt::from_u32(1);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_datagram_goes_only_if_the_connection_carries_it_without_dropping_another() {
        assert!(datagram_fits(1150, Some(1150), 1 << 20));
        assert!(!datagram_fits(1151, Some(1150), 1 << 20), "larger than a QUIC datagram");
        assert!(!datagram_fits(10, None, 1 << 20), "the peer takes no datagrams");
        assert!(!datagram_fits(1000, Some(1150), 999), "would push out an older one");
    }
}
