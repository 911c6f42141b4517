//! Unit tests of the session over one ordered byte stream per lane (as a QUIC driver carries
//! it): a lane that cannot take more holds back no other, lanes may overtake each other, and a
//! new link resumes with data overtaking the hello.

use std::collections::BTreeMap;

use super::tests::{delivered, events, id, immediate_acks, ms, open_pair, open_pair_with, settle};
use super::*;

/// Takes every frame `from` has for the lanes `ready` accepts, each lane's bytes in order;
/// checks that each frame's lane matches what it carries.
fn take_lanes(
    from: &mut Session,
    now: Instant,
    mut ready: impl FnMut(Lane) -> bool,
) -> BTreeMap<Lane, Vec<u8>> {
    let mut lanes: BTreeMap<Lane, Vec<u8>> = BTreeMap::new();
    let mut buf = Vec::new();
    while let Some(transmit) = from.poll_transmit_where(now, &mut buf, &mut ready) {
        assert!(ready(transmit.lane), "a frame of a lane that was not ready: {transmit:?}");
        assert_eq!(transmit.len, buf.len());
        let frame = Frame::decode(&buf, u32::MAX).unwrap();
        let expected = match &frame.body {
            FrameBody::Data(data) => Lane::Stream(data.stream),
            FrameBody::Datagram(_) => Lane::Datagram,
            _ => Lane::Control,
        };
        assert_eq!(transmit.lane, expected, "{frame:?}");
        assert_eq!(transmit.best_effort, expected == Lane::Datagram);
        lanes.entry(transmit.lane).or_default().extend_from_slice(&buf);
        buf.clear();
    }
    lanes
}

/// Feeds one lane's bytes to `to` through a decoder of its own, as a QUIC reader does.
fn feed(to: &mut Session, now: Instant, bytes: &[u8]) {
    let mut decoder = StreamDecoder::new(to.config().max_frame_body());
    decoder.handle_bytes(bytes);
    while let Some(frame) = decoder.poll_frame().unwrap() {
        to.handle_frame(now, frame);
    }
}

fn ids_on(got: &[(u32, u64, Vec<u8>)], stream: u32) -> Vec<u64> {
    got.iter().filter(|m| m.0 == stream).map(|m| m.1).collect()
}

#[test]
fn a_lane_that_cannot_take_more_keeps_its_frames_and_the_others_go_on() {
    let t0 = Instant::now();
    let (mut a, mut b) = open_pair(t0);
    for n in 0..3u8 {
        a.send(StreamId(1), vec![1, n]).unwrap();
        a.send(StreamId(2), vec![2, n]).unwrap();
    }
    let blocked = Lane::Stream(StreamId(1));
    let first = take_lanes(&mut a, t0, |lane| lane != blocked);
    assert_eq!(first.keys().copied().collect::<Vec<_>>(), vec![Lane::Stream(StreamId(2))]);
    assert!(a.has_transmit(t0), "stream 1 still waits");
    feed(&mut b, t0, &first[&Lane::Stream(StreamId(2))]);
    assert_eq!(ids_on(&delivered(&mut b), 2), vec![1, 2, 3]);

    // The blocked lane opens: its messages come out in order, never sent before.
    let second = take_lanes(&mut a, t0, |_| true);
    assert_eq!(second.keys().copied().collect::<Vec<_>>(), vec![blocked]);
    feed(&mut b, t0, &second[&blocked]);
    assert_eq!(ids_on(&delivered(&mut b), 1), vec![1, 2, 3]);
    assert_eq!(a.stats().retransmissions, 0);

    // The acknowledgements travel on the control lane, and nothing else is owed.
    let acks = take_lanes(&mut b, t0, |_| true);
    assert_eq!(acks.keys().copied().collect::<Vec<_>>(), vec![Lane::Control]);
    feed(&mut a, t0, &acks[&Lane::Control]);
    let acked = events(&mut a);
    for stream in [1, 2] {
        let event = Event::Acked { stream: StreamId(stream), through: MessageId(3) };
        assert!(acked.contains(&event), "{acked:?}");
    }
    assert_eq!(a.stats().unacknowledged, 0);
}

#[test]
fn control_frames_wait_for_the_control_lane_and_data_does_not() {
    let t0 = Instant::now();
    let (mut a, mut b) = open_pair(t0);
    b.send(StreamId(4), b"reply".to_vec()).unwrap();
    a.send(StreamId(4), b"request".to_vec()).unwrap();
    let lanes = take_lanes(&mut a, t0, |_| true);
    feed(&mut b, t0, &lanes[&Lane::Stream(StreamId(4))]);
    assert_eq!(delivered(&mut b), vec![(4, 1, b"request".to_vec())]);
    // b owes an ack; with its control lane blocked only its data leaves.
    let data_only = take_lanes(&mut b, t0, |lane| lane != Lane::Control);
    assert_eq!(data_only.keys().copied().collect::<Vec<_>>(), vec![Lane::Stream(StreamId(4))]);
    assert!(b.has_transmit(t0), "the ack is still owed");
    let control = take_lanes(&mut b, t0, |_| true);
    assert_eq!(control.keys().copied().collect::<Vec<_>>(), vec![Lane::Control]);
    feed(&mut a, t0, &control[&Lane::Control]);
    assert!(events(&mut a).contains(&Event::Acked { stream: StreamId(4), through: MessageId(1) }));
    // A heartbeat due while the control lane is blocked waits for it too.
    let beat_at = t0 + a.config().heartbeat_interval;
    a.handle_timeout(beat_at);
    assert!(take_lanes(&mut a, beat_at, |lane| lane != Lane::Control).is_empty());
    assert!(take_lanes(&mut a, beat_at, |_| true).contains_key(&Lane::Control));
}

#[test]
fn lanes_may_overtake_each_other_and_each_stream_stays_in_order_exactly_once() {
    let t0 = Instant::now();
    let (mut a, mut b) = open_pair(t0);
    for n in 0..20u8 {
        for stream in 0..4 {
            a.send(StreamId(stream), vec![n]).unwrap();
        }
    }
    let mut lanes = take_lanes(&mut a, t0, |_| true);
    // Stream 0's lane is the one held up by a loss underneath: the others arrive first.
    let held = lanes.remove(&Lane::Stream(StreamId(0))).unwrap();
    for bytes in lanes.values().rev() {
        feed(&mut b, t0, bytes);
    }
    let early = delivered(&mut b);
    assert!(ids_on(&early, 0).is_empty());
    for stream in 1..4 {
        assert_eq!(ids_on(&early, stream), (1..=20).collect::<Vec<_>>());
    }
    // The held lane arrives in two pieces, split mid-frame.
    let (front, back) = held.split_at(held.len() / 2 + 3);
    let mut decoder = StreamDecoder::new(b.config().max_frame_body());
    for piece in [front, back] {
        decoder.handle_bytes(piece);
        while let Some(frame) = decoder.poll_frame().unwrap() {
            b.handle_frame(t0, frame);
        }
    }
    assert_eq!(ids_on(&delivered(&mut b), 0), (1..=20).collect::<Vec<_>>());
    settle(&mut a, &mut b, t0);
    assert_eq!(b.stats().duplicates_dropped, 0);
    assert_eq!(a.stats().unacknowledged, 0);
}

#[test]
fn a_new_link_resumes_even_when_data_overtakes_the_hello() {
    let t0 = Instant::now();
    let (mut a, mut b) = open_pair(t0);
    for n in 0..3u8 {
        b.send(StreamId(9), vec![n]).unwrap();
    }
    // Everything b sent is lost with the link.
    let lost = take_lanes(&mut b, t0, |_| true);
    assert!(lost.contains_key(&Lane::Stream(StreamId(9))));
    a.handle_link_down(t0);
    b.handle_link_down(t0);
    let t1 = t0 + ms(50);
    a.handle_link_up(t1);
    b.handle_link_up(t1);
    // a's hello reaches b, which opens and resends; its data overtakes its hello to a.
    let from_a = take_lanes(&mut a, t1, |_| true);
    feed(&mut b, t1, &from_a[&Lane::Control]);
    assert_eq!(b.state(), LinkState::Open);
    let from_b = take_lanes(&mut b, t1, |_| true);
    assert_eq!(a.state(), LinkState::ExpectHello);
    feed(&mut a, t1, &from_b[&Lane::Stream(StreamId(9))]);
    assert_eq!(ids_on(&delivered(&mut a), 9), vec![1, 2, 3], "delivered before the hello");
    feed(&mut a, t1, &from_b[&Lane::Control]);
    assert_eq!(a.state(), LinkState::Open);
    assert_eq!(events(&mut a), vec![Event::LinkOpen { peer: id(2) }]);
    settle(&mut a, &mut b, t1);
    assert!(events(&mut b).contains(&Event::Acked { stream: StreamId(9), through: MessageId(3) }));
    assert_eq!(a.stats().duplicates_dropped, 0);
    assert_eq!(b.stats().links_opened, 2);
}

#[test]
fn frames_a_lane_decoder_dropped_are_counted_and_ignored_before_a_link() {
    let t0 = Instant::now();
    let mut idle = Session::new(id(5), immediate_acks(), t0);
    idle.handle_frame_error(DecodeError::ChecksumMismatch { declared: 1, computed: 2 });
    assert_eq!(idle.stats().corrupt_frames, 0, "no link: nothing is read");
    let (_a, mut b) = open_pair(t0);
    b.handle_frame_error(DecodeError::ChecksumMismatch { declared: 1, computed: 2 });
    b.handle_frame_error(DecodeError::UnknownKind(0x7f));
    let stats = b.stats();
    assert_eq!((stats.corrupt_frames, stats.malformed_frames), (1, 1));
    assert_eq!(b.state(), LinkState::Open);
}

#[test]
fn without_timeout_retransmission_a_slow_message_goes_once_and_a_new_link_resends_it() {
    let t0 = Instant::now();
    let config = SessionConfig {
        retransmit_on_timeout: false,
        heartbeat_interval: Duration::from_secs(10),
        ..immediate_acks()
    };
    let mut a = Session::new(id(1), config.clone(), t0);
    let mut b = Session::new(id(2), config, t0);
    a.handle_link_up(t0);
    b.handle_link_up(t0);
    settle(&mut a, &mut b, t0);
    events(&mut a);
    a.send(StreamId(3), vec![7; 1000]).unwrap();
    let in_flight = take_lanes(&mut a, t0, |_| true);
    assert!(in_flight.contains_key(&Lane::Stream(StreamId(3))));
    // Long past any retransmission timeout (and before the first heartbeat), nothing is due.
    let later = t0 + a.config().max_rto * 4;
    assert_eq!(a.poll_timeout(), Some(t0 + a.config().heartbeat_interval));
    a.handle_timeout(later);
    let again = take_lanes(&mut a, later, |_| true);
    assert!(!again.contains_key(&Lane::Stream(StreamId(3))), "not sent twice on one link");
    assert_eq!(a.stats().retransmissions, 0);
    // The link breaks before it arrived: the next one resends it.
    a.handle_link_down(later);
    b.handle_link_down(later);
    a.handle_link_up(later);
    b.handle_link_up(later);
    settle(&mut a, &mut b, later);
    assert_eq!(delivered(&mut b), vec![(3, 1, vec![7; 1000])]);
    assert_eq!(a.stats().retransmissions, 1);
}

#[test]
fn without_timeout_retransmission_a_message_lost_on_a_working_link_gives_the_link_up() {
    let t0 = Instant::now();
    let (mut a, mut b, bound) = open_without_timeout_retransmission(t0);
    // Stream 5's message vanishes on its way (on a lane the peer stopped reading, say);
    // stream 6's arrives, and heartbeats keep the link alive.
    a.send(StreamId(5), b"lost".to_vec()).unwrap();
    a.send(StreamId(6), b"kept".to_vec()).unwrap();
    let mut lanes = take_lanes(&mut a, t0, |_| true);
    lanes.remove(&Lane::Stream(StreamId(5))).unwrap();
    for bytes in lanes.values() {
        feed(&mut b, t0, bytes);
    }
    assert_eq!(delivered(&mut b), vec![(6, 1, b"kept".to_vec())]);
    let run_until_down = |a: &mut Session, b: &mut Session| {
        let mut now = t0;
        while a.state() == LinkState::Open {
            now = a.poll_timeout().expect("a timer while a message is in flight");
            a.handle_timeout(now);
            b.handle_timeout(now);
            settle(a, b, now);
        }
        now
    };
    let now = run_until_down(&mut a, &mut b);
    // Given up exactly the bound after stream 5's message went out; the peer was never
    // silent, and the other stream's message was acknowledged.
    assert_eq!(now, t0 + bound);
    assert_eq!((a.state(), b.state()), (LinkState::Down, LinkState::Open));
    assert_eq!(a.stats().stalled_links, 1);
    assert!(events(&mut a).contains(&Event::Acked { stream: StreamId(6), through: MessageId(1) }));
    // The driver drops the link and makes a new one: the message goes again, once.
    b.handle_link_down(now);
    a.handle_link_up(now);
    b.handle_link_up(now);
    settle(&mut a, &mut b, now);
    assert_eq!(delivered(&mut b), vec![(5, 1, b"lost".to_vec())]);
    assert_eq!(a.stats().unacknowledged, 0);
    // The bound doubled: a link merely slower than it is not given up forever.
    a.send(StreamId(5), b"lost again".to_vec()).unwrap();
    assert!(take_lanes(&mut a, now, |_| true).contains_key(&Lane::Stream(StreamId(5))));
    let sent_at = now;
    let now = run_until_down(&mut a, &mut b);
    assert_eq!(now, sent_at + bound * 2);
    assert_eq!(a.stats().stalled_links, 2);
}

#[test]
fn an_acknowledgement_on_a_stream_restarts_its_stall_bound() {
    let t0 = Instant::now();
    let (mut a, mut b, bound) = open_without_timeout_retransmission(t0);
    // Two slow messages on one stream: the first arrives after most of the bound, the second
    // as long after that. Neither gives the link up.
    a.send(StreamId(1), b"first".to_vec()).unwrap();
    a.send(StreamId(1), b"second".to_vec()).unwrap();
    let lane = take_lanes(&mut a, t0, |_| true).remove(&Lane::Stream(StreamId(1))).unwrap();
    let mut decoder = StreamDecoder::new(b.config().max_frame_body());
    decoder.handle_bytes(&lane);
    let first = decoder.poll_frame().unwrap().unwrap();
    let second = decoder.poll_frame().unwrap().unwrap();
    for (frame, at) in [(first, t0 + bound - ms(50)), (second, t0 + bound * 2 - ms(100))] {
        while let Some(now) = a.poll_timeout().filter(|&timer| timer <= at) {
            a.handle_timeout(now);
            b.handle_timeout(now);
            settle(&mut a, &mut b, now);
        }
        b.handle_frame(at, frame);
        settle(&mut a, &mut b, at);
    }
    assert_eq!(a.state(), LinkState::Open);
    assert_eq!((a.stats().stalled_links, a.stats().unacknowledged), (0, 0));
    assert_eq!(delivered(&mut b).len(), 2);
}

/// Two sessions with timeout retransmission off (silence bound 500 ms), their link open at
/// `t0` and its events taken; and that bound.
fn open_without_timeout_retransmission(t0: Instant) -> (Session, Session, Duration) {
    let config = SessionConfig {
        retransmit_on_timeout: false,
        heartbeat_interval: ms(100),
        missed_heartbeats: 5,
        ..immediate_acks()
    };
    let bound = config.dead_after();
    let (a, b) = open_pair_with(config, t0);
    (a, b, bound)
}
