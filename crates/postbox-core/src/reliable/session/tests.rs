//! Unit tests of the session over a perfect link: delivery, loss, resume, restart and damage.

use super::*;

fn id(n: u64) -> SessionId {
    SessionId::new(n).unwrap()
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// Moves every frame `from` has to send into `to` over a perfect byte stream.
fn pump(from: &mut Session, to: &mut Session, now: Instant) -> usize {
    let mut buf = Vec::new();
    let mut frames = 0;
    while from.poll_transmit(now, &mut buf).is_some() {
        frames += 1;
    }
    to.handle_bytes(now, &buf).unwrap();
    frames
}

fn settle(a: &mut Session, b: &mut Session, now: Instant) {
    while pump(a, b, now) + pump(b, a, now) > 0 {}
}

fn events(s: &mut Session) -> Vec<Event> {
    std::iter::from_fn(|| s.poll_event()).collect()
}

fn open_pair(now: Instant) -> (Session, Session) {
    let mut a = Session::new(id(1), SessionConfig::default(), now);
    let mut b = Session::new(id(2), SessionConfig::default(), now);
    a.handle_link_up(now);
    b.handle_link_up(now);
    settle(&mut a, &mut b, now);
    assert_eq!((a.state(), b.state()), (LinkState::Open, LinkState::Open));
    assert_eq!(events(&mut a), vec![Event::LinkOpen { peer: id(2) }]);
    assert_eq!(events(&mut b), vec![Event::LinkOpen { peer: id(1) }]);
    (a, b)
}

fn delivered(s: &mut Session) -> Vec<(u32, u64, Vec<u8>)> {
    events(s)
        .into_iter()
        .filter_map(|e| match e {
            Event::Delivered { stream, id, payload } => Some((stream.0, id.0, payload)),
            _ => None,
        })
        .collect()
}

#[test]
fn messages_are_delivered_in_order_and_acknowledged() {
    let t0 = Instant::now();
    let (mut a, mut b) = open_pair(t0);
    assert_eq!(a.send(StreamId(5), b"one".to_vec()), Ok(MessageId(1)));
    assert_eq!(a.send(StreamId(5), b"two".to_vec()), Ok(MessageId(2)));
    assert_eq!(a.send(StreamId(6), b"other".to_vec()), Ok(MessageId(1)));
    pump(&mut a, &mut b, t0 + ms(10));
    let got = delivered(&mut b);
    assert_eq!(got.len(), 3);
    let on_five: Vec<_> = got.iter().filter(|m| m.0 == 5).map(|m| m.2.clone()).collect();
    assert_eq!(on_five, vec![b"one".to_vec(), b"two".to_vec()]);
    pump(&mut b, &mut a, t0 + ms(20));
    let acked = events(&mut a);
    assert!(acked.contains(&Event::Acked { stream: StreamId(5), through: MessageId(2) }));
    assert!(acked.contains(&Event::Acked { stream: StreamId(6), through: MessageId(1) }));
    let stats = a.stats();
    // Sent at 10 ms, acknowledged at 20 ms.
    assert_eq!(stats.smoothed_rtt, Some(ms(10)));
    assert_eq!((stats.unacknowledged, stats.retransmissions), (0, 0));
}

#[test]
fn a_lost_message_is_retransmitted_after_the_timeout() {
    let t0 = Instant::now();
    let (mut a, mut b) = open_pair(t0);
    a.send(StreamId(1), b"x".to_vec()).unwrap();
    let mut lost = Vec::new();
    assert!(a.poll_transmit(t0, &mut lost).is_some());
    let rto = a.poll_timeout().unwrap();
    assert_eq!(rto, t0 + a.config().initial_rto);
    a.handle_timeout(rto);
    pump(&mut a, &mut b, rto);
    assert_eq!(delivered(&mut b), vec![(1, 1, b"x".to_vec())]);
    assert_eq!(a.stats().retransmissions, 1);
}

#[test]
fn a_resumed_link_resends_only_what_was_not_delivered() {
    let t0 = Instant::now();
    let (mut a, mut b) = open_pair(t0);
    for n in 0..3u8 {
        a.send(StreamId(1), vec![n]).unwrap();
    }
    pump(&mut a, &mut b, t0);
    assert_eq!(delivered(&mut b).len(), 3);
    // B's acks are lost with the link; a message sent while down waits for the next one.
    a.handle_link_down(t0);
    b.handle_link_down(t0);
    a.send(StreamId(1), vec![3]).unwrap();
    assert_eq!(a.poll_transmit(t0, &mut Vec::new()), None);
    a.handle_link_up(t0 + ms(100));
    b.handle_link_up(t0 + ms(100));
    settle(&mut a, &mut b, t0 + ms(100));
    assert_eq!(delivered(&mut b), vec![(1, 4, vec![3])]);
    assert_eq!(b.stats().duplicates_dropped, 0, "nothing delivered was sent again");
    let acked = events(&mut a);
    assert!(acked.contains(&Event::Acked { stream: StreamId(1), through: MessageId(4) }));
    assert_eq!(a.stats().links_opened, 2);
}

#[test]
fn a_restarted_peer_fails_what_is_pending_and_a_late_hello_from_the_old_one_is_stale() {
    let t0 = Instant::now();
    let (mut a, mut b) = open_pair(t0);
    // The old B's hello, as it would arrive late from the network.
    b.handle_link_up(t0);
    let mut old_hello = Vec::new();
    assert!(b.poll_transmit(t0, &mut old_hello).is_some());
    a.send(StreamId(2), b"lost".to_vec()).unwrap();
    a.handle_link_down(t0);
    let mut b2 = Session::new(id(3), SessionConfig::default(), t0);
    a.handle_link_up(t0 + ms(5));
    b2.handle_link_up(t0 + ms(5));
    settle(&mut a, &mut b2, t0 + ms(5));
    let got = events(&mut a);
    let failed = Event::Failed {
        stream: StreamId(2),
        id: MessageId(1),
        payload: b"lost".to_vec(),
        error: SessionError::PeerRestarted,
    };
    assert_eq!(got[0], failed);
    assert_eq!(got[1], Event::PeerRestarted { previous: id(2), current: id(3) });
    assert_eq!(a.send(StreamId(2), b"new".to_vec()), Ok(MessageId(1)), "ids start over");
    a.handle_bytes(t0 + ms(6), &old_hello).unwrap();
    assert_eq!(a.stats().peer, Some(id(3)));
    assert_eq!(a.stats().stale_frames, 1);
    assert!(events(&mut a).is_empty());
}

#[test]
fn frames_for_an_earlier_incarnation_of_this_end_are_stale() {
    let t0 = Instant::now();
    let (_a, mut b) = open_pair(t0);
    let mut frame = Vec::new();
    frame::encode_with(frame::KIND_DATA, id(1), Some(id(99)), &mut frame, |buf| {
        Data::encode_parts(StreamId(0), MessageId(1), b"old", buf);
    });
    b.handle_datagram(t0, &frame).unwrap();
    assert!(events(&mut b).is_empty());
    assert_eq!(b.stats().stale_frames, 1);
}

#[test]
fn a_damaged_header_takes_the_link_down_and_a_damaged_body_costs_one_frame() {
    let t0 = Instant::now();
    let (mut a, mut b) = open_pair(t0);
    a.send(StreamId(0), b"first".to_vec()).unwrap();
    a.send(StreamId(0), b"second".to_vec()).unwrap();
    let mut buf = Vec::new();
    let first = a.poll_transmit(t0, &mut buf).unwrap().len;
    assert!(a.poll_transmit(t0, &mut buf).is_some());
    let mut body_damaged = buf.clone();
    body_damaged[first - 1] ^= 0x40;
    b.handle_bytes(t0, &body_damaged).unwrap();
    assert_eq!(b.stats().corrupt_frames, 1);
    assert!(delivered(&mut b).is_empty(), "the second waits for the first");
    let mut header_damaged = buf.clone();
    header_damaged[4] ^= 0x01;
    assert!(matches!(
        b.handle_bytes(t0, &header_damaged),
        Err(DecodeError::ChecksumMismatch { .. })
    ));
    assert_eq!(b.state(), LinkState::Down);
}

#[test]
fn heartbeats_keep_an_idle_link_alive_and_silence_ends_it() {
    let t0 = Instant::now();
    let (mut a, mut b) = open_pair(t0);
    let interval = a.config().heartbeat_interval;
    let mut now = t0;
    for _ in 0..10 {
        now += interval;
        a.handle_timeout(now);
        b.handle_timeout(now);
        settle(&mut a, &mut b, now);
    }
    assert_eq!(a.state(), LinkState::Open);
    assert_eq!(a.stats().smoothed_rtt, Some(Duration::ZERO));
    a.send(StreamId(0), b"unanswered".to_vec()).unwrap();
    let dead_at = now + a.config().dead_after();
    while let Some(at) = a.poll_timeout() {
        assert!(at <= dead_at);
        a.handle_timeout(at);
        while a.poll_transmit(at, &mut Vec::new()).is_some() {}
    }
    let got = events(&mut a);
    assert_eq!(got.last(), Some(&Event::Ended(SessionError::PeerDead)));
    assert!(matches!(got[0], Event::Failed { error: SessionError::PeerDead, .. }));
}

#[test]
fn sends_are_refused_with_the_payload_when_they_cannot_be_taken() {
    let t0 = Instant::now();
    let config = SessionConfig { stream_window: 1, max_payload: 4, ..SessionConfig::default() };
    let mut s = Session::new(id(1), config, t0);
    assert_eq!(s.send(StreamId(0), vec![0; 5]), Err(SendError::TooLarge(vec![0; 5])));
    assert_eq!(s.send(StreamId(0), vec![1]), Ok(MessageId(1)));
    assert_eq!(s.send(StreamId(0), vec![2]), Err(SendError::Full(vec![2])));
    assert_eq!(s.send_datagram(StreamId(0), vec![3]), Err(DatagramSendError::LinkDown(vec![3])));
    s.handle_timeout(t0 + s.config().dead_after());
    assert_eq!(s.state(), LinkState::Ended);
    assert_eq!(
        s.send(StreamId(0), vec![4]),
        Err(SendError::Ended(vec![4], SessionError::Unreachable))
    );
}
