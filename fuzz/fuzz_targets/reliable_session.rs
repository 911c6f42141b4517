//! Arbitrary bytes from a peer into a `reliable::Session` that has messages in flight on a few
//! streams, as a byte stream (TCP) or as datagrams, with time moving on: it may not panic, hang
//! in `poll_transmit`, or deliver a stream's messages out of order or twice.
#![no_main]

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use postbox_core::reliable::{Event, Session, SessionConfig, SessionId, StreamId};

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else { return };
    let datagrams = mode & 1 == 1;
    let config = if datagrams { SessionConfig::datagram() } else { SessionConfig::default() };
    let start = Instant::now();
    let mut now = start;
    let mut session = Session::new(SessionId::new(7).expect("non-zero"), config, now);
    session.handle_link_up(now);
    for stream in 0..3 {
        for i in 0..4u8 {
            let _ = session.send(StreamId(stream), vec![i; 8]);
        }
    }
    let mut delivered: BTreeMap<u32, u64> = BTreeMap::new();
    let mut out = Vec::new();
    // Chunks: a length byte, then that many bytes; time moves by the length in milliseconds.
    let mut input = rest;
    while let Some((&len, tail)) = input.split_first() {
        let n = usize::from(len).min(tail.len());
        let (chunk, tail) = tail.split_at(n);
        input = tail;
        now += Duration::from_millis(u64::from(len));
        let _ = if datagrams {
            session.handle_datagram(now, chunk)
        } else {
            session.handle_bytes(now, chunk)
        };
        if session.poll_timeout().is_some_and(|t| t <= now) {
            session.handle_timeout(now);
        }
        // Frames out are bounded: a session never has endless frames to send at one instant.
        let mut frames = 0;
        out.clear();
        while session.poll_transmit(now, &mut out).is_some() {
            frames += 1;
            assert!(frames < 100_000, "poll_transmit does not end");
        }
        while let Some(event) = session.poll_event() {
            match event {
                Event::Delivered { stream, id, .. } => {
                    let last = delivered.entry(stream.0).or_insert(0);
                    assert!(id.0 > *last, "stream {} delivered {} after {last}", stream.0, id.0);
                    *last = id.0;
                }
                // A new incarnation of the peer numbers its streams from 1 again.
                Event::PeerRestarted { .. } => delivered.clear(),
                _ => {}
            }
        }
    }
});
