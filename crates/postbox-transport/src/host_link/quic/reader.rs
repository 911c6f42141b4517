//! The readers of one QUIC connection: a task per incoming QUIC stream, each cutting its bytes
//! into frames with a decoder of its own (outside the lock), and a task for datagrams. What
//! they read goes straight to the session; the driver is woken only when it has work. Also the
//! watchers of this end's lane streams, which break the connection when the peer stops one.
//!
//! The decoders of one connection share a budget of partly received bytes
//! ([`PartialBudget`]): the peer cannot have more unacknowledged, so a peer that leaves more
//! in half-sent frames is not following the protocol, and its connection is dropped.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use postbox_core::reliable::decoder::StreamDecoder;
use postbox_core::reliable::frame::Frame;
use postbox_core::reliable::{LinkState, Session};
use postbox_core::wire::DecodeError;
use quinn::{Connection, ReadError, RecvStream, StoppedError, VarInt};
use tokio::task::JoinSet;

use super::super::error::LinkError;
use super::super::shared::{Core, Shared};
use super::crypto;

/// What the readers of one connection may hold in partly received frames, over all its
/// streams, and what they hold now.
#[derive(Debug)]
pub(super) struct PartialBudget {
    limit: usize,
    held: AtomicUsize,
}

impl PartialBudget {
    /// A budget of `limit` bytes, none held.
    pub(super) fn new(limit: usize) -> Self {
        Self { limit, held: AtomicUsize::new(0) }
    }
}

/// Starts the readers of connection `number`, whose decoders share `budget`; dropping the set
/// stops them. A reader that panics breaks the connection (see [`accept_lanes`]).
pub(super) fn spawn(
    shared: &Arc<Shared>,
    connection: &Connection,
    number: u64,
    max_body: u32,
    budget: Arc<PartialBudget>,
) -> JoinSet<()> {
    let mut tasks = JoinSet::new();
    let lanes = accept_lanes(Arc::clone(shared), connection.clone(), number, max_body, budget);
    tasks.spawn(lanes);
    tasks.spawn(read_datagrams(Arc::clone(shared), connection.clone(), number));
    tasks
}

/// Watches one of this end's lane streams of connection `number` (`stopped` is its
/// [`quinn::SendStream::stopped`]): a peer that stops it (STOP_SENDING) will never read what
/// was written after its last frame, nor what comes next, so the connection is broken and the
/// session resends everything unacknowledged on the next one. Without this, a message written
/// last on a stream the peer stopped would wait for an acknowledgement on a live connection
/// forever.
pub(super) async fn watch_lane(
    shared: Arc<Shared>,
    number: u64,
    stopped: impl Future<Output = Result<Option<VarInt>, StoppedError>>,
) {
    // `None`: this end finished the stream and the peer read it all (a polite close). An
    // error: the connection is gone, which its readers report.
    if let Ok(Some(_code)) = stopped.await {
        report_broken(&shared, number, LinkError::QuicProtocol);
    }
}

/// Records that connection `number` broke, unless it is no longer the current one, and wakes
/// the driver.
pub(super) fn report_broken(shared: &Shared, number: u64, error: LinkError) {
    hand_over(shared, number, 0, |_, _| {}, Some(error));
}

/// Takes the peer's lane streams as it opens them, a reader each, until the connection ends;
/// reports why it ended.
async fn accept_lanes(
    shared: Arc<Shared>,
    connection: Connection,
    number: u64,
    max_body: u32,
    budget: Arc<PartialBudget>,
) {
    let mut lanes = JoinSet::new();
    loop {
        tokio::select! {
            accepted = connection.accept_uni() => match accepted {
                Ok(stream) => {
                    let partial = Partial { budget: Arc::clone(&budget), held: 0 };
                    lanes.spawn(read_lane(Arc::clone(&shared), stream, number, max_body, partial));
                }
                Err(error) => {
                    let error = crypto::connection_error(&error, None);
                    report_broken(&shared, number, error);
                    return;
                }
            },
            // Reaps the readers of lanes that ended. One that panicked dropped its stream
            // (which stops it), so the peer's frames on that lane would be lost on a
            // connection that stays up: break it, as for a stream the peer stopped.
            Some(joined) = lanes.join_next() => {
                if joined.is_err_and(|error| error.is_panic()) {
                    report_broken(&shared, number, LinkError::QuicProtocol);
                    return;
                }
            }
        }
    }
}

/// Reads one lane's stream: cuts it into frames and hands them to the session.
async fn read_lane(
    shared: Arc<Shared>,
    mut stream: RecvStream,
    number: u64,
    max_body: u32,
    mut partial: Partial,
) {
    let mut decoder = StreamDecoder::new(max_body);
    let mut frames = Vec::new();
    loop {
        let (read, mut broken) = match stream.read_chunk(READ_CHUNK, true).await {
            Ok(Some(chunk)) => {
                decoder.handle_bytes(&chunk.bytes);
                (chunk.bytes.len(), None)
            }
            // The peer finished the lane: it does so only as the connection ends.
            Ok(None) => return,
            Err(error) => (0, Some(read_error(&error))),
        };
        loop {
            match decoder.poll_frame() {
                Ok(Some(frame)) => frames.push(Ok(frame)),
                Ok(None) => break,
                Err(error) => {
                    frames.push(Err(error));
                    if decoder.is_poisoned() {
                        // A damaged header: the stream cannot be resynchronised.
                        broken = broken.or(Some(LinkError::Corrupt(error)));
                        break;
                    }
                }
            }
        }
        if !partial.hold(decoder.buffered()) {
            broken = broken.or(Some(LinkError::Flooded));
        }
        let done = broken.is_some();
        let current = hand_over(
            &shared,
            number,
            read,
            |session, now| deliver(session, now, &mut frames),
            broken,
        );
        frames.clear();
        if done || !current {
            return;
        }
    }
}

/// Reads the connection's datagrams, one frame each, until it ends.
async fn read_datagrams(shared: Arc<Shared>, connection: Connection, number: u64) {
    // The connection's end is reported by `accept_lanes`.
    while let Ok(datagram) = connection.read_datagram().await {
        let handle = |session: &mut Session, now| {
            // A damaged or stale frame is counted by the session; nothing else to do.
            let _ = session.handle_datagram(now, &datagram);
        };
        if !hand_over(&shared, number, datagram.len(), handle, None) {
            return;
        }
    }
}

/// One reader's share of its connection's [`PartialBudget`]; given back when dropped.
#[derive(Debug)]
struct Partial {
    budget: Arc<PartialBudget>,
    held: usize,
}

impl Partial {
    /// Records that this reader's decoder now holds `bytes` of a partly received frame; false
    /// when that takes the connection's readers over their budget.
    fn hold(&mut self, bytes: usize) -> bool {
        let total = if bytes >= self.held {
            let more = bytes - self.held;
            self.budget.held.fetch_add(more, Ordering::Relaxed) + more
        } else {
            let less = self.held - bytes;
            self.budget.held.fetch_sub(less, Ordering::Relaxed) - less
        };
        self.held = bytes;
        total <= self.budget.limit
    }
}

impl Drop for Partial {
    fn drop(&mut self) {
        self.budget.held.fetch_sub(self.held, Ordering::Relaxed);
    }
}

fn deliver(session: &mut Session, now: Instant, frames: &mut Vec<Result<Frame, DecodeError>>) {
    for frame in frames.drain(..) {
        match frame {
            Ok(frame) => session.handle_frame(now, frame),
            Err(error) => session.handle_frame_error(error),
        }
    }
}

/// Gives the session what a reader of connection `number` got (`read` bytes, handled by
/// `handle`), records a break, passes events on, and wakes the driver if it has work now.
/// False when the connection is no longer the current one, or the link stops: the reader
/// should stop too.
fn hand_over(
    shared: &Shared,
    number: u64,
    read: usize,
    handle: impl FnOnce(&mut Session, Instant),
    broken: Option<LinkError>,
) -> bool {
    let mut core = shared.lock();
    if core.connection != number || core.stopping() {
        return false;
    }
    let now = Instant::now();
    core.counters.bytes_received += read as u64;
    handle(&mut core.session, now);
    let queued = core.collect_events(&shared.config);
    if let Some(error) = broken {
        core.report_broken(number, error);
    }
    let wake = driver_has_work(&core, now);
    // Signalled with the lock released.
    drop(core);
    if queued {
        shared.events_queued();
    }
    shared.wake_driver(wake);
    true
}

/// Whether the waiting driver must wake: a broken connection, frames to write, the end, or a
/// timer earlier than the one it waits for (a delayed ack's). Deliveries and acks alone do
/// not wake it: the reader passed them on.
fn driver_has_work(core: &Core, now: Instant) -> bool {
    let Some(waiting_until) = core.driver_waiting else { return false };
    let session = &core.session;
    let earlier_timer = session.poll_timeout().is_some_and(|timer| match waiting_until {
        Some(until) => timer < until,
        None => true,
    });
    core.broken.is_some()
        || earlier_timer
        || session.state() == LinkState::Ended
        || session.has_transmit(now)
}

fn read_error(error: &ReadError) -> LinkError {
    match error {
        ReadError::ConnectionLost(error) => crypto::connection_error(error, None),
        // The peer reset a lane: a peer that follows the protocol never does.
        _ => LinkError::QuicProtocol,
    }
}

/// The most bytes taken from a stream at once.
const READ_CHUNK: usize = 64 << 10;
