//! Arbitrary bytes as the contents of a stream's region and of a whole link segment, and as a
//! hostile peer's writes between operations. The stream ends may report the stream corrupt,
//! but never panic or touch memory outside it, and what they report must match the memory: a
//! read returns exactly the bytes at the consumer's index, as many as `available` said. The
//! bytes read go through a `FrameDecoder`, which may reject them but not panic.
//!
//! Input: `mode`, a little-endian `u16` length, that many bytes of contents, then operations.
//! `mode` bit 7 picks the link segment (else a bare stream region on the heap, where
//! AddressSanitizer sees any stray access); the other bits pick the size and, for a segment,
//! the side opened. A segment's payload pools are exercised too: views of runs the peer
//! claims, and loans after releases the peer claims; and its feed, whose consumer must never
//! hand out more than a slot holds.
#![no_main]

use libfuzzer_sys::fuzz_target;
use postbox_core::{DecodeError, FrameDecoder};
use postbox_shm::fuzzing::ExposedStream;
use postbox_shm::{
    open_link_segment, FeedEnd, LinkSide, PoolLayout, PoolRun, PushError, RegionStream,
    Scribbler, Segment, StreamConsumer, StreamError, StreamProducer, FEED_MAX_LEN,
};

/// Above the decoder's 64 KiB staging buffer, so that large declared bodies are read in place.
const MAX_BODY: u32 = 1 << 17;

fuzz_target!(|data: &[u8]| {
    let [mode, low, high, rest @ ..] = data else {
        return;
    };
    let len = usize::from(u16::from_le_bytes([*low, *high]));
    let (contents, ops) = rest.split_at(len.min(rest.len()));
    let ops = Ops(ops);
    if mode & 0x80 == 0 {
        bare_region(*mode, contents, ops);
    } else {
        link_segment(*mode, contents, ops);
    }
});

/// A stream region of 8 B to 4 KiB of data on the heap; the fuzzer pokes any word of it.
fn bare_region(mode: u8, contents: &[u8], mut ops: Ops<'_>) {
    let mut stream = ExposedStream::new(8 << (mode % 10), contents);
    let capacity = stream.capacity();
    let words = stream.size() / 8;
    // The ends' private indices, as they loaded them: pokes never change these.
    let mut head = stream.peek(64);
    let mut tail = stream.peek(0);
    let mut decoder = Decoder::new();
    while let Some(op) = ops.byte() {
        match op % 7 {
            0 => {
                let before = stream.region();
                let size = ops.read_size();
                if let Some(read) = decoder.read(stream.consumer(), size, capacity) {
                    for (i, byte) in read.iter().enumerate() {
                        let at = 128 + (head.wrapping_add(i as u64) & (capacity as u64 - 1));
                        assert_eq!(*byte, before[at as usize], "read the byte at the index");
                    }
                    head = head.wrapping_add(read.len() as u64);
                }
            }
            1 => check_available(stream.consumer(), capacity),
            2 => {
                let (word, value) = (ops.u32() as usize % words, ops.u64());
                stream.poke(word * 8, value);
            }
            3 => {
                let bytes = ops.bytes();
                if let Some(n) = write_checked(stream.producer(), bytes, capacity) {
                    let region = stream.region();
                    for (i, byte) in bytes[..n].iter().enumerate() {
                        let at = 128 + (tail.wrapping_add(i as u64) & (capacity as u64 - 1));
                        assert_eq!(region[at as usize], *byte, "wrote the byte at the index");
                    }
                    tail = tail.wrapping_add(n as u64);
                }
            }
            4 => {
                if let Ok(free) = stream.producer().free() {
                    assert!(free <= capacity);
                }
            }
            5 => {
                // A producer publishing bytes it never wrote (or taking some back).
                let published = stream.peek(0).wrapping_add(ops.byte().unwrap_or(0).into());
                stream.poke(0, published);
            }
            _ => {
                let consumed = stream.peek(64).wrapping_add(ops.byte().unwrap_or(0).into());
                stream.poke(64, consumed);
            }
        }
    }
    for _ in 0..16 {
        if decoder.read(stream.consumer(), usize::MAX, capacity).is_none_or(|r| r.is_empty()) {
            break;
        }
    }
}

/// A whole link segment whose data (shape, doorbells, streams, payload pools) is the
/// contents, opened as one side; the other side writes honestly, a scribbler pokes words.
fn link_segment(mode: u8, contents: &[u8], mut ops: Ops<'_>) {
    let size = usize::from(mode & 0x1f);
    let data_size = if mode & 0x40 == 0 {
        // Small: too small for any shape the contents may claim, or just large enough.
        8 * (1 + size * size * 4)
    } else {
        // 96 KiB to about 1 MiB: room for streams, pools and the feed.
        (size + 3) * 32 * 1024
    };
    let Ok(segment) = Segment::create(data_size) else {
        return;
    };
    let fd = || segment.fd().try_clone_to_owned().expect("dup a segment descriptor");
    let scribbler = Scribbler::open(fd()).expect("open a segment just created");
    scribbler.fill(contents);
    let (side, other) = if mode & 0x20 == 0 {
        (LinkSide::Client, LinkSide::Server)
    } else {
        (LinkSide::Server, LinkSide::Client)
    };
    let Ok(mut ours) = open_link_segment(fd(), side) else {
        return;
    };
    let mut theirs = open_link_segment(fd(), other).expect("the other side opens what one did");
    let capacity = theirs.outbound.capacity();
    let words = scribbler.data_size() / 8;
    let mut decoder = Decoder::new();
    let mut scratch = vec![0u8; 64 * 1024];
    // Loans not yet sent, and views not yet dropped, on either side.
    let mut loans = Vec::new();
    let mut views = Vec::new();
    let mut popped = Vec::new();
    while let Some(op) = ops.byte() {
        match op % 14 {
            0 => {
                let size = ops.read_size();
                let _ = decoder.read(&mut ours.inbound, size, capacity);
            }
            12 | 13 => {
                // Either side's end of the feed: the client's pushes, the server's pops.
                let end = if op % 14 == 12 { &mut ours.feed } else { &mut theirs.feed };
                match end {
                    FeedEnd::Producer(producer) => {
                        let len = usize::from(ops.byte().unwrap_or(0));
                        let pushed = producer.push(&[0x3c; 255][..len]);
                        let too_large = matches!(pushed, Err(PushError::TooLarge { .. }));
                        assert_eq!(too_large, len > FEED_MAX_LEN, "the size is checked first");
                    }
                    FeedEnd::Consumer(consumer) => {
                        if let Ok(Some(_)) = consumer.pop(&mut popped) {
                            assert!(popped.len() <= FEED_MAX_LEN, "no more than a slot holds");
                        }
                        let _ = (consumer.is_empty(), consumer.peer_closed());
                    }
                }
            }
            1 => check_available(&mut ours.inbound, capacity),
            2 => {
                let (word, value) = (ops.u32() as usize % words, ops.u64());
                scribbler.poke(word * 8, value);
            }
            3 => {
                let _ = write_checked(&mut theirs.outbound, ops.bytes(), capacity);
            }
            4 => {
                let outbound = ours.outbound.capacity();
                let _ = write_checked(&mut ours.outbound, ops.bytes(), outbound);
            }
            5 => {
                let size = ops.read_size().min(scratch.len());
                if let Ok(n) = theirs.inbound.read(&mut scratch[..size]) {
                    assert!(n <= size);
                }
            }
            6 => {
                let _ = ours.peer.ring();
                let _ = (ours.peer.is_closed(), ours.mine.is_closed());
                ours.mine.arm();
                // Ready at once: never sleeps, only announces and withdraws the sleeper.
                ours.mine.sleep(std::time::Duration::ZERO, || true);
                ours.mine.disarm();
            }
            7 => {
                let mut rng = ops.u64();
                scribbler.scribble(&mut rng, usize::from(ops.byte().unwrap_or(1)));
            }
            8 => {
                // A run the peer claims to have sent: in blocks, or any offset at all.
                let offset = match ops.byte() {
                    Some(b) if b & 1 == 0 => u64::from(b >> 1) * PoolLayout::BLOCK as u64,
                    _ => ops.u64(),
                };
                let run = PoolRun { offset, len: ops.u64() % (1 << 24) };
                if let Ok(view) = ours.inbound_pool.view(run) {
                    let bytes = view.as_slice();
                    assert_eq!(bytes.len() as u64, run.len);
                    let _ = (bytes.first(), bytes.last());
                    keep(&mut views, view, ops.byte());
                }
            }
            9 => {
                // This side lends space, after whatever releases the peer claims.
                let len = (ops.u32() % (1 << 22)) as usize;
                if let Ok(Some(mut loan)) = ours.outbound_pool.lend(len) {
                    assert_eq!(loan.run().len, len as u64);
                    loan.as_mut_slice().fill(0xa5);
                    keep(&mut loans, loan, ops.byte());
                }
            }
            10 => {
                // The honest peer sends a pooled payload this side reads in place.
                let len = (ops.u32() % (1 << 18)) as usize;
                if let Ok(Some(mut loan)) = theirs.outbound_pool.lend(len) {
                    loan.as_mut_slice().fill(0x5a);
                    if let Ok(view) = ours.inbound_pool.view(loan.run()) {
                        assert_eq!(view.as_slice().len(), len);
                        keep(&mut views, view, ops.byte());
                    }
                }
            }
            _ => {
                if let Some(loan) = loans.pop() {
                    ours.outbound_pool.cancel(loan);
                }
                views.pop();
            }
        }
    }
    for _ in 0..16 {
        if decoder.read(&mut ours.inbound, usize::MAX, capacity).is_none_or(|r| r.is_empty()) {
            break;
        }
    }
}

/// Keeps `item` for later (up to a few), or drops it now, as `choice` says.
fn keep<T>(kept: &mut Vec<T>, item: T, choice: Option<u8>) {
    if choice.is_some_and(|c| c & 1 == 1) && kept.len() < 4 {
        kept.push(item);
    }
}

/// Reads from a consumer into a frame decoder and polls every frame out of it.
struct Decoder(FrameDecoder);

impl Decoder {
    fn new() -> Self {
        Self(FrameDecoder::new(MAX_BODY))
    }

    /// Reads up to `size` bytes; returns them, or `None` when the stream reported corruption.
    /// The read must return exactly what `available` promised, up to the room given.
    fn read(
        &mut self,
        consumer: &mut StreamConsumer<RegionStream>,
        size: usize,
        capacity: usize,
    ) -> Option<Vec<u8>> {
        let available = consumer.available();
        let buf = self.0.read_buffer();
        let room = buf.len().min(size);
        let result = consumer.read(&mut buf[..room]);
        match (available, result) {
            (Ok(available), Ok(n)) => {
                assert!(available <= capacity, "available within the capacity");
                assert_eq!(n, available.min(room), "read what was available");
            }
            (Err(StreamError::Corrupt), Err(StreamError::Corrupt)) => return None,
            (available, result) => panic!("available {available:?} but read {result:?}"),
        }
        let n = result.expect("matched Ok above");
        let read = buf[..n].to_vec();
        self.0.commit(n);
        loop {
            match self.0.poll_frame() {
                Ok(Some(frame)) => assert_eq!(frame.body.len(), frame.header.body_len as usize),
                Ok(None) => break,
                Err(_) => {
                    assert_eq!(self.0.poll_frame(), Err(DecodeError::Poisoned));
                    // A new link would start over: keep feeding the bytes that follow.
                    self.0 = FrameDecoder::new(MAX_BODY);
                    break;
                }
            }
        }
        Some(read)
    }
}

/// `available` is within the capacity, or the stream is corrupt.
fn check_available(consumer: &mut StreamConsumer<RegionStream>, capacity: usize) {
    if let Ok(available) = consumer.available() {
        assert!(available <= capacity);
    }
}

/// Writes `bytes`: exactly as many as `free` said there was room for. `None` when corrupt.
fn write_checked(
    producer: &mut StreamProducer<RegionStream>,
    bytes: &[u8],
    capacity: usize,
) -> Option<usize> {
    let free = producer.free();
    let written = producer.write(bytes);
    match (free, written) {
        (Ok(free), Ok(n)) => {
            assert!(free <= capacity, "free within the capacity");
            assert_eq!(n, free.min(bytes.len()), "wrote what fit");
            Some(n)
        }
        (Err(StreamError::Corrupt), Err(StreamError::Corrupt)) => None,
        // A write that the room seen at the last good look covers does not look again.
        (Err(StreamError::Corrupt), Ok(n)) => {
            assert!(n <= capacity, "wrote within the capacity");
            Some(n)
        }
        (free, written) => panic!("free {free:?} but wrote {written:?}"),
    }
}

/// The operations part of the input, consumed from the front.
struct Ops<'a>(&'a [u8]);

impl<'a> Ops<'a> {
    fn byte(&mut self) -> Option<u8> {
        let (&first, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(first)
    }

    /// A read size: 1, 2, 4, … 64 Ki, or anything.
    fn read_size(&mut self) -> usize {
        match self.byte() {
            Some(b) if b < 17 * 8 => 1 << (b % 17),
            _ => usize::MAX,
        }
    }

    fn u32(&mut self) -> u32 {
        let mut word = [0u8; 4];
        for byte in &mut word {
            *byte = self.byte().unwrap_or(0);
        }
        u32::from_le_bytes(word)
    }

    fn u64(&mut self) -> u64 {
        u64::from(self.u32()) | (u64::from(self.u32()) << 32)
    }

    /// A length byte, then up to that many bytes.
    fn bytes(&mut self) -> &'a [u8] {
        let n = usize::from(self.byte().unwrap_or(0)).min(self.0.len());
        let (taken, rest) = self.0.split_at(n);
        self.0 = rest;
        taken
    }
}
