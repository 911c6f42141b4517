//! One direction of a proxied pair: cut the byte stream into frames, apply faults, forward.
//!
//! A reader thread parses frames and decides each one's fate; a writer thread sends what
//! survived, each frame at its due time, in order (a delayed frame holds up those behind it,
//! as on a real TCP connection).

use std::io::{self, ErrorKind, Read, Write};
use std::net::TcpStream;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use postbox_core::reliable::frame::{FrameHeader, HEADER_LEN};

use super::counters::bump;
use super::{Pair, Shared};
use crate::rng::Rng;

/// Starts forwarding `from` → `to`; returns the reader and writer threads.
pub(super) fn spawn_direction(
    from: &TcpStream,
    to: &TcpStream,
    rng: Rng,
    pair: Arc<Pair>,
    shared: Arc<Shared>,
) -> io::Result<Vec<JoinHandle<()>>> {
    let (source, sink) = (from.try_clone()?, to.try_clone()?);
    source.set_read_timeout(Some(shared.faults.reorder_hold.max(MIN_READ_TIMEOUT)))?;
    let (tx, rx) = mpsc::channel();
    let (writer_pair, writer_shared) = (Arc::clone(&pair), Arc::clone(&shared));
    let writer = thread::Builder::new()
        .name("fault-proxy-write".to_owned())
        .spawn(move || write_loop(&sink, &rx, &writer_pair, &writer_shared))?;
    let mut reader = Reader { rng, pair, shared, tx, held: None, last_due: Instant::now() };
    let reader = thread::Builder::new().name("fault-proxy-read".to_owned()).spawn(move || {
        reader.run(source);
    })?;
    Ok(vec![reader, writer])
}

/// What the reader hands the writer.
enum Outgoing {
    /// Send `bytes` no earlier than `due`.
    Frame { due: Instant, bytes: Vec<u8> },
    /// The source closed cleanly: send what is queued, then cut the pair.
    End,
}

struct Reader {
    rng: Rng,
    pair: Arc<Pair>,
    shared: Arc<Shared>,
    tx: Sender<Outgoing>,
    /// A frame held back to go out after its successor.
    held: Option<Vec<u8>>,
    /// The due time of the last frame queued: frames never overtake one another.
    last_due: Instant,
}

impl Reader {
    fn run(&mut self, mut source: TcpStream) {
        let mut pending: Vec<u8> = Vec::new();
        let mut chunk = vec![0u8; READ_CHUNK];
        loop {
            if self.pair.is_cut() {
                return;
            }
            match source.read(&mut chunk) {
                Ok(0) => {
                    self.release_held();
                    let _ = self.tx.send(Outgoing::End);
                    return;
                }
                Ok(n) => {
                    pending.extend_from_slice(&chunk[..n]);
                    if self.split_frames(&mut pending).is_err() {
                        bump(&self.shared.counters.unparsable);
                        self.pair.cut(&self.shared.counters);
                        return;
                    }
                }
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    // Nothing arrived for a while: a held frame waited long enough.
                    self.release_held();
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => {
                    self.pair.cut(&self.shared.counters);
                    return;
                }
            }
        }
    }

    /// Takes every complete frame off the front of `pending`. Fails on a header that does not
    /// parse: the rest of the stream cannot be cut into frames.
    fn split_frames(&mut self, pending: &mut Vec<u8>) -> Result<(), ()> {
        let mut start = 0;
        while let Some(header) = pending[start..].first_chunk::<HEADER_LEN>() {
            let header = FrameHeader::decode(header, self.shared.faults.max_frame_body);
            let header = header.map_err(|_| ())?;
            let end = start + HEADER_LEN + header.body_len as usize;
            if pending.len() < end {
                break;
            }
            let frame = pending[start..end].to_vec();
            self.handle_frame(frame);
            start = end;
        }
        pending.drain(..start);
        Ok(())
    }

    fn handle_frame(&mut self, frame: Vec<u8>) {
        let faults = &self.shared.faults;
        let counters = &self.shared.counters;
        bump(&counters.frames);
        if self.shared.partitioned.load(Ordering::SeqCst) {
            bump(&counters.black_holed);
            return;
        }
        if self.rng.chance(faults.loss) {
            bump(&counters.dropped);
            return;
        }
        let mut copies = vec![frame];
        if self.rng.chance(faults.duplication) {
            bump(&counters.duplicated);
            copies.push(copies[0].clone());
        }
        for copy in &mut copies {
            if self.rng.chance(faults.corruption) {
                let bit = self.rng.below(copy.len() as u64 * 8) as usize;
                copy[bit / 8] ^= 1 << (bit % 8);
                if bit / 8 < HEADER_LEN {
                    bump(&counters.corrupted_headers);
                } else {
                    bump(&counters.corrupted_bodies);
                }
            }
        }
        if let Some(held) = self.held.take() {
            bump(&counters.reordered);
            copies.push(held);
        } else if self.rng.chance(faults.reordering) {
            self.held = Some(copies.remove(0));
        }
        for bytes in copies {
            self.queue(bytes);
        }
    }

    fn release_held(&mut self) {
        if let Some(held) = self.held.take() {
            self.queue(held);
        }
    }

    fn queue(&mut self, bytes: Vec<u8>) {
        let faults = &self.shared.faults;
        let mut due = Instant::now();
        if self.rng.chance(faults.delay) {
            bump(&self.shared.counters.delayed);
            due += self.rng.between(faults.delay_range.0, faults.delay_range.1);
        }
        self.last_due = self.last_due.max(due);
        // The writer is gone only after the pair was cut; the frame would be lost anyway.
        let _ = self.tx.send(Outgoing::Frame { due: self.last_due, bytes });
    }
}

/// Sends each frame at its due time; cuts the pair when the source ended or the sink failed.
fn write_loop(mut sink: &TcpStream, rx: &Receiver<Outgoing>, pair: &Pair, shared: &Shared) {
    while let Ok(outgoing) = rx.recv() {
        match outgoing {
            Outgoing::Frame { due, bytes } => {
                let wait = due.saturating_duration_since(Instant::now());
                if !wait.is_zero() {
                    thread::sleep(wait);
                }
                if pair.is_cut() || sink.write_all(&bytes).is_err() {
                    break;
                }
            }
            // Every frame queued before the end was written above, in order.
            Outgoing::End => break,
        }
    }
    pair.cut(&shared.counters);
}

const READ_CHUNK: usize = 64 << 10;
const MIN_READ_TIMEOUT: Duration = Duration::from_millis(1);
