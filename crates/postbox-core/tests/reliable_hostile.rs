//! Hostile frames against a session that has reliable messages in flight on several streams,
//! so that forged acks and hellos name ids near what was really sent and reach the sender's
//! paths (acknowledgement, held ranges, resume, restart detection), over both a byte stream
//! and datagrams. Deterministic: each seed fixes every frame.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use postbox_core::reliable::body::{Ack, AckRange, Data, Heartbeat, Hello};
use postbox_core::reliable::frame::{Frame, FrameBody};
use postbox_core::reliable::{
    Event, LinkState, MessageId, Session, SessionConfig, SessionError, SessionId, StreamId,
};

#[path = "support/rng.rs"]
mod rng;
use rng::Rng;

fn sid(n: u64) -> SessionId {
    SessionId::new(n).unwrap()
}

fn enc(sender: SessionId, receiver: Option<SessionId>, body: FrameBody) -> Vec<u8> {
    let mut buf = Vec::new();
    Frame { sender, receiver, body }.encode(&mut buf);
    buf
}

fn config() -> SessionConfig {
    SessionConfig {
        heartbeat_interval: Duration::from_millis(200),
        missed_heartbeats: 10,
        initial_rto: Duration::from_millis(200),
        min_rto: Duration::from_millis(50),
        max_rto: Duration::from_millis(800),
        stream_window: 8,
        max_payload: 64,
        ..SessionConfig::default()
    }
}

#[test]
fn hostile_acks_and_hellos_near_the_ids_in_flight_never_break_the_laws() {
    let mut totals = Totals::default();
    for seed in 0..3000u64 {
        let outcome = run(seed);
        totals.steps += outcome.steps;
        totals.acks += outcome.acks;
        totals.restarts += outcome.restarts;
        match outcome.ended {
            Some(SessionError::ProtocolViolation) => totals.violations += 1,
            Some(_) => totals.other_ends += 1,
            None => totals.survived += 1,
        }
    }
    // The forged frames reached deep into the sender: acknowledgements, restarts, and runs
    // that went on, besides the liars caught.
    assert!(totals.survived > 1000 && totals.violations > 1000, "{totals:?}");
    assert!(totals.acks > 10_000 && totals.restarts > 100, "{totals:?}");
}

/// What one run reached, so that the test can check the forged frames did not merely end
/// every session at once.
#[derive(Debug, Default)]
struct Outcome {
    steps: u64,
    acks: u64,
    restarts: u64,
    ended: Option<SessionError>,
}

#[derive(Debug, Default)]
struct Totals {
    steps: u64,
    acks: u64,
    restarts: u64,
    violations: u64,
    other_ends: u64,
    survived: u64,
}

fn run(seed: u64) -> Outcome {
    let mut outcome = Outcome::default();
    let mut rng = Rng(seed);
    let t0 = Instant::now();
    let mut now = t0;
    let me = sid(1);
    let mut peer = sid(2);
    let mut a = Session::new(me, config(), now);
    a.handle_link_up(now);
    let as_stream = seed % 2 == 0;
    // A liar also acknowledges ids never sent and, in hellos written after A's, reports less
    // than it acknowledged: the session must end cleanly. Otherwise the peer's reports are
    // forged but possible (late, duplicated, held ranges anywhere), and the session goes on.
    let liar = seed % 4 < 2;
    let feed = |a: &mut Session, now: Instant, bytes: &[u8]| {
        if as_stream {
            if a.handle_bytes(now, bytes).is_err() {
                a.handle_link_up(now);
            }
        } else {
            let _ = a.handle_datagram(now, bytes);
        }
    };
    let hello = |peer, echo, delivered: Vec<(StreamId, MessageId)>| {
        let (first, last) = (StreamId(0), StreamId(u32::MAX));
        let hello = Hello { reply_wanted: true, link: 1, echo, first, last, delivered };
        enc(peer, Some(me), FrameBody::Hello(hello))
    };
    // A's link number, read from its hellos: echoing it makes a forged hello count as written
    // after A's, so that a report below what was acknowledged ends the session.
    let mut a_link = 0;
    feed(&mut a, now, &hello(peer, 0, vec![]));
    // Per stream: highest id A put on the wire (the peer could have received it).
    let mut sent: BTreeMap<u32, u64> = BTreeMap::new();
    let mut accepted: BTreeMap<u32, u64> = BTreeMap::new();
    let mut acked: BTreeMap<u32, u64> = BTreeMap::new();
    let mut next_recv: BTreeMap<u32, u64> = BTreeMap::new();
    let mut next_peer = 100u64;
    for _step in 0..200 {
        outcome.steps += 1;
        match rng.below(12) {
            0 | 1 => {
                let s = rng.below(4) as u32;
                let len = rng.below(8) as usize;
                if let Ok(id) = a.send(StreamId(s), vec![7; len]) {
                    accepted.insert(s, id.0);
                }
            }
            2 | 3 => {
                let s = rng.below(5) as u32;
                let top = sent.get(&s).copied().unwrap_or(0);
                let delivered = match rng.below(4) {
                    0 if liar => rng.next_u64(),
                    _ if liar => rng.below(top + 3),
                    _ => rng.below(top + 1),
                };
                let held = (0..rng.below(4))
                    .map(|_| {
                        let f = rng.below(top + 4);
                        let l = if rng.below(5) == 0 { rng.next_u64() } else { f + rng.below(4) };
                        AckRange { first: MessageId(f), last: MessageId(l) }
                    })
                    .collect();
                let ack = Ack { stream: StreamId(s), delivered: MessageId(delivered), held };
                feed(&mut a, now, &enc(peer, Some(me), FrameBody::Ack(ack)));
            }
            4 => {
                let echo = if rng.below(2) == 0 { a_link } else { rng.below(3) as u32 };
                let mut list = Vec::new();
                for s in 0..5u32 {
                    let top = sent.get(&s).copied().unwrap_or(0);
                    let low = if echo == a_link { acked.get(&s).copied().unwrap_or(0) } else { 0 };
                    // A hello written after A's must name what was acknowledged before.
                    if (low == 0 || liar) && rng.below(2) == 0 {
                        continue;
                    }
                    let id = match rng.below(4) {
                        0 if liar => rng.next_u64(),
                        _ if liar => rng.below(top + 3),
                        _ => low + rng.below(top + 1 - low.min(top)),
                    };
                    list.push((StreamId(s), MessageId(id)));
                }
                let recv = if rng.below(4) == 0 { None } else { Some(me) };
                let first = StreamId(if rng.below(4) == 0 { rng.below(5) as u32 } else { 0 });
                let last = StreamId(if rng.below(4) == 0 { rng.below(5) as u32 } else { u32::MAX });
                let hello = Hello {
                    reply_wanted: rng.below(2) == 0,
                    link: rng.below(3) as u32,
                    echo,
                    first,
                    last,
                    delivered: list,
                };
                feed(&mut a, now, &enc(peer, recv, FrameBody::Hello(hello)));
            }
            5 => {
                let s = rng.below(3) as u32;
                let id = rng.below(12);
                let data = Data { stream: StreamId(s), id: MessageId(id), payload: vec![1] };
                feed(&mut a, now, &enc(peer, Some(me), FrameBody::Data(data)));
            }
            6 => {
                a.handle_link_down(now);
                now += Duration::from_millis(rng.below(300));
                a.handle_link_up(now);
                feed(&mut a, now, &hello(peer, 0, vec![]));
            }
            7 if rng.below(10) == 0 => {
                // The peer restarts.
                peer = sid(next_peer);
                next_peer += 1;
                let (first, last) = (StreamId(0), StreamId(u32::MAX));
                let unaddressed =
                    Hello { reply_wanted: true, link: 1, echo: 0, first, last, delivered: vec![] };
                feed(&mut a, now, &enc(peer, None, FrameBody::Hello(unaddressed)));
                feed(&mut a, now, &hello(peer, 0, vec![]));
            }
            8 => {
                let nonce = rng.below(5);
                let body = if rng.below(2) == 0 {
                    FrameBody::Heartbeat(Heartbeat { nonce })
                } else {
                    FrameBody::HeartbeatAck(Heartbeat { nonce })
                };
                feed(&mut a, now, &enc(peer, Some(me), body));
            }
            _ => {
                now += Duration::from_millis(rng.below(400));
            }
        }
        if let Some(at) = a.poll_timeout() {
            if at <= now {
                a.handle_timeout(now);
            }
        }
        let mut buf = Vec::new();
        let mut guard = 0;
        while a.poll_transmit(now, &mut buf).is_some() {
            guard += 1;
            assert!(guard < 10_000, "seed {seed}: poll_transmit never returns None");
        }
        // What went on the wire.
        let mut rest = &buf[..];
        while !rest.is_empty() {
            let len = 32 + u32::from_le_bytes(rest[4..8].try_into().unwrap()) as usize;
            let frame = Frame::decode(&rest[..len], u32::MAX).unwrap();
            match frame.body {
                FrameBody::Data(d) => {
                    let e = sent.entry(d.stream.0).or_insert(0);
                    *e = (*e).max(d.id.0);
                }
                FrameBody::Hello(h) => a_link = h.link,
                _ => {}
            }
            rest = &rest[len..];
        }
        if let Some(at) = a.poll_timeout() {
            assert!(at > now, "seed {seed}: timer in the past after handling it: {:?}", now - at);
        }
        while let Some(event) = a.poll_event() {
            match event {
                Event::Delivered { stream, id, .. } => {
                    let e = next_recv.entry(stream.0).or_insert(1);
                    assert_eq!(id.0, *e, "seed {seed}: out of order");
                    *e += 1;
                }
                Event::Acked { stream, through } => {
                    outcome.acks += 1;
                    let top = sent.get(&stream.0).copied().unwrap_or(0);
                    assert!(through.0 <= top, "seed {seed}: acked {through:?} beyond sent {top}");
                    let prev = acked.insert(stream.0, through.0).unwrap_or(0);
                    assert!(through.0 > prev, "seed {seed}: ack went backwards");
                }
                Event::PeerRestarted { .. } => {
                    outcome.restarts += 1;
                    next_recv.clear();
                    sent.clear();
                    acked.clear();
                    accepted.clear();
                }
                Event::Ended(error) => {
                    // Reports that a correct peer could send never count as a violation.
                    let violation = error == SessionError::ProtocolViolation;
                    assert!(liar || !violation, "seed {seed}: a possible peer taken for a liar");
                    outcome.ended = Some(error);
                    return outcome;
                }
                _ => {}
            }
        }
        assert_ne!(a.state(), LinkState::Ended, "seed {seed}: ended without an Ended event");
    }
    outcome
}
