//! The readers of one QUIC connection: a task per incoming QUIC stream, each cutting its bytes
//! into frames with a decoder of its own (outside the lock), and a task for datagrams. What
//! they read goes straight to the session; the driver is woken only when it has work.

use std::sync::Arc;
use std::time::Instant;

use postbox_core::reliable::decoder::StreamDecoder;
use postbox_core::reliable::frame::Frame;
use postbox_core::reliable::{LinkState, Session};
use postbox_core::wire::DecodeError;
use quinn::{Connection, ReadError, RecvStream};
use tokio::task::JoinSet;

use super::super::error::LinkError;
use super::super::shared::{Core, Shared};
use super::crypto;

/// Starts the readers of connection `number`; dropping the set stops them.
pub(super) fn spawn(
    shared: &Arc<Shared>,
    connection: &Connection,
    number: u64,
    max_body: u32,
) -> JoinSet<()> {
    let mut tasks = JoinSet::new();
    tasks.spawn(accept_lanes(Arc::clone(shared), connection.clone(), number, max_body));
    tasks.spawn(read_datagrams(Arc::clone(shared), connection.clone(), number));
    tasks
}

/// Takes the peer's lane streams as it opens them, a reader each, until the connection ends;
/// reports why it ended.
async fn accept_lanes(shared: Arc<Shared>, connection: Connection, number: u64, max_body: u32) {
    let mut lanes = JoinSet::new();
    loop {
        tokio::select! {
            accepted = connection.accept_uni() => match accepted {
                Ok(stream) => {
                    lanes.spawn(read_lane(Arc::clone(&shared), stream, number, max_body));
                }
                Err(error) => {
                    let error = crypto::connection_error(&error, None);
                    hand_over(&shared, number, 0, |_, _| {}, Some(error));
                    return;
                }
            },
            // Reaps the readers of lanes that ended.
            Some(_) = lanes.join_next() => {}
        }
    }
}

/// Reads one lane's stream: cuts it into frames and hands them to the session.
async fn read_lane(shared: Arc<Shared>, mut stream: RecvStream, number: u64, max_body: u32) {
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
