//! Unit tests of the session over a perfect link: delivery, loss, resume, restart and damage.

use super::*;

pub(super) fn id(n: u64) -> SessionId {
    SessionId::new(n).unwrap()
}

pub(super) fn ms(n: u64) -> Duration {
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

pub(super) fn settle(a: &mut Session, b: &mut Session, now: Instant) {
    while pump(a, b, now) + pump(b, a, now) > 0 {}
}

pub(super) fn events(s: &mut Session) -> Vec<Event> {
    std::iter::from_fn(|| s.poll_event()).collect()
}

/// The default settings with every arrival acknowledged at once, so that one `settle` at one
/// instant completes an exchange; delayed acks have tests of their own (at the bottom).
pub(super) fn immediate_acks() -> SessionConfig {
    SessionConfig { ack_delay: Duration::ZERO, ..SessionConfig::default() }
}

pub(super) fn open_pair(now: Instant) -> (Session, Session) {
    let mut a = Session::new(id(1), immediate_acks(), now);
    let mut b = Session::new(id(2), immediate_acks(), now);
    a.handle_link_up(now);
    b.handle_link_up(now);
    settle(&mut a, &mut b, now);
    assert_eq!((a.state(), b.state()), (LinkState::Open, LinkState::Open));
    assert_eq!(events(&mut a), vec![Event::LinkOpen { peer: id(2) }]);
    assert_eq!(events(&mut b), vec![Event::LinkOpen { peer: id(1) }]);
    (a, b)
}

pub(super) fn delivered(s: &mut Session) -> Vec<(u32, u64, Vec<u8>)> {
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

pub(super) fn open_pair_with(config: SessionConfig, now: Instant) -> (Session, Session) {
    let mut a = Session::new(id(1), config.clone(), now);
    let mut b = Session::new(id(2), config, now);
    a.handle_link_up(now);
    b.handle_link_up(now);
    settle(&mut a, &mut b, now);
    assert_eq!((a.state(), b.state()), (LinkState::Open, LinkState::Open));
    events(&mut a);
    events(&mut b);
    (a, b)
}

/// Moves every frame `from` has to send into `to`, one datagram each; returns the longest.
fn pump_datagrams(from: &mut Session, to: &mut Session, now: Instant) -> Option<usize> {
    let mut longest = None;
    loop {
        let mut buf = Vec::new();
        let Some(transmit) = from.poll_transmit(now, &mut buf) else { return longest };
        longest = longest.max(Some(transmit.len));
        to.handle_datagram(now, &buf).unwrap();
    }
}

/// Review finding 1: a stream whose retransmission queue held only ids acknowledged meanwhile
/// made `poll_transmit` return `None` although another stream had a message ready.
#[test]
fn stale_retransmission_entries_do_not_hide_another_streams_message() {
    let t0 = Instant::now();
    let (mut a, mut b) = open_pair(t0);
    a.send(StreamId(1), b"x".to_vec()).unwrap();
    a.send(StreamId(7), b"y".to_vec()).unwrap();
    let mut delayed = Vec::new();
    while a.poll_transmit(t0, &mut delayed).is_some() {}
    // Both time out and are queued; the driver cannot write right now (backpressure).
    let rto = t0 + a.config().initial_rto;
    a.handle_timeout(rto);
    // The originals were only late: B delivers and acknowledges them.
    b.handle_bytes(rto, &delayed).unwrap();
    pump(&mut b, &mut a, rto);
    events(&mut a);
    events(&mut b);
    // A new message on a third stream.
    a.send(StreamId(5), b"z".to_vec()).unwrap();
    // The driver writes until `None`, as documented.
    let mut buf = Vec::new();
    while a.poll_transmit(rto, &mut buf).is_some() {}
    b.handle_bytes(rto, &buf).unwrap();
    assert_eq!(delivered(&mut b), vec![(5, 1, b"z".to_vec())]);
    assert_eq!(b.stats().duplicates_dropped, 0, "the acknowledged ones were not sent again");
}

/// Runs the review's scenario of finding 2: B restarts reusing its session id while A's link
/// is down; `a_sends` and `b_sends` say which directions carried messages before. Returns
/// both sessions' events after the new link had every chance to settle.
fn restart_with_the_same_id(a_sends: bool, b_sends: bool) -> (Session, Session, [Vec<Event>; 2]) {
    let t0 = Instant::now();
    let (mut a, mut b) = open_pair(t0);
    for n in 0..3u8 {
        if a_sends {
            a.send(StreamId(1), vec![n]).unwrap();
        }
        if b_sends {
            b.send(StreamId(1), vec![n]).unwrap();
        }
    }
    settle(&mut a, &mut b, t0);
    events(&mut a);
    // B restarts with the same id; A was down meanwhile.
    a.handle_link_down(t0);
    let mut b2 = Session::new(id(2), immediate_acks(), t0);
    a.send(StreamId(1), b"after".to_vec()).unwrap();
    b2.send(StreamId(1), b"fresh".to_vec()).unwrap();
    a.handle_link_up(t0 + ms(10));
    b2.handle_link_up(t0 + ms(10));
    let mut now = t0 + ms(10);
    settle(&mut a, &mut b2, now);
    for _ in 0..20 {
        now += ms(500);
        a.handle_timeout(now);
        b2.handle_timeout(now);
        settle(&mut a, &mut b2, now);
    }
    let got = [events(&mut a), events(&mut b2)];
    (a, b2, got)
}

/// Review finding 2: a peer restarted with the same session id used to hang both directions
/// (its messages taken for duplicates, ours held behind a gap, nothing failed). Its reports
/// contradict what it acknowledged before, so the session ends and fails what was pending.
#[test]
fn a_peer_restarted_with_the_same_id_ends_both_sessions_and_fails_what_was_pending() {
    for (a_sends, b_sends) in [(true, true), (true, false), (false, true)] {
        let case = format!("a_sends {a_sends}, b_sends {b_sends}");
        let (a, b2, [a_events, b_events]) = restart_with_the_same_id(a_sends, b_sends);
        assert_eq!((a.state(), b2.state()), (LinkState::Ended, LinkState::Ended), "{case}");
        let violation = Event::Ended(SessionError::ProtocolViolation);
        assert!(a_events.contains(&violation) || b_events.contains(&violation), "{case}");
        for (got, payload) in [(&a_events, b"after".to_vec()), (&b_events, b"fresh".to_vec())] {
            assert!(!got.iter().any(|e| matches!(e, Event::Delivered { .. })), "{case}: {got:?}");
            let failed =
                got.iter().any(|e| matches!(e, Event::Failed { payload: p, .. } if *p == payload));
            assert!(failed, "{case}: pending message not failed: {got:?}");
            assert!(
                matches!(
                    got.last(),
                    Some(Event::Ended(SessionError::ProtocolViolation | SessionError::PeerClosed))
                ),
                "{case}: {got:?}"
            );
        }
        // A peer that acknowledged only from the old incarnation is caught by its own hello:
        // it names the end that was acknowledged before and reports less.
        if a_sends && !b_sends {
            assert_eq!(a_events.last(), Some(&violation), "{case}");
        }
    }
}

#[test]
fn repeated_acks_for_messages_never_sent_end_the_session() {
    let t0 = Instant::now();
    let (mut a, _b) = open_pair(t0);
    a.send(StreamId(1), b"x".to_vec()).unwrap();
    while a.poll_transmit(t0, &mut Vec::new()).is_some() {}
    let ack = |delivered| {
        let mut buf = Vec::new();
        let ack = Ack { stream: StreamId(1), delivered: MessageId(delivered), held: vec![] };
        frame::encode_with(frame::KIND_ACK, id(2), Some(id(1)), &mut buf, |b| ack.encode(b));
        buf
    };
    for n in 1..FALSE_ACKS_TOLERATED {
        a.handle_datagram(t0, &ack(5)).unwrap();
        assert_eq!(a.state(), LinkState::Open, "after {n}");
    }
    a.handle_datagram(t0, &ack(5)).unwrap();
    let got = events(&mut a);
    assert_eq!(got.last(), Some(&Event::Ended(SessionError::ProtocolViolation)));
    assert!(matches!(got[0], Event::Failed { error: SessionError::ProtocolViolation, .. }));
    // The peer is told.
    let mut buf = Vec::new();
    assert!(a.poll_transmit(t0, &mut buf).is_some());
    assert_eq!(Frame::decode(&buf, 1024).unwrap().body, FrameBody::Close);
}

/// Review finding 5: `normalized` clamped only the low end of the timers, and a huge heartbeat
/// interval overflowed `Instant + Duration` in `poll_timeout`.
#[test]
fn a_huge_timer_setting_is_clamped_and_never_overflows_the_clock() {
    let t0 = Instant::now();
    let huge = SessionConfig {
        heartbeat_interval: Duration::MAX,
        missed_heartbeats: u32::MAX,
        initial_rto: Duration::MAX,
        max_rto: Duration::MAX,
        ..SessionConfig::default()
    };
    let mut a = Session::new(id(1), huge.clone(), t0);
    let mut b = Session::new(id(2), huge, t0);
    assert_eq!(a.config().heartbeat_interval, SessionConfig::MAX_TIMER);
    assert!(a.poll_timeout().is_some());
    a.handle_link_up(t0);
    b.handle_link_up(t0);
    settle(&mut a, &mut b, t0);
    a.send(StreamId(0), b"x".to_vec()).unwrap();
    let _ = a.poll_transmit(t0, &mut Vec::new());
    let next = a.poll_timeout().expect("a retransmission is due");
    a.handle_timeout(next);
    assert_eq!(a.state(), LinkState::Open);
}

/// Review finding 4: empty payloads cost nothing against `max_held_bytes`, so a peer could make
/// the receiver hold `stream_window × max_streams` entries with a held budget of zero.
#[test]
fn empty_payloads_are_charged_against_the_held_budget() {
    let t0 = Instant::now();
    for (budget, most) in [(0, 0), (10 * crate::reliable::receiver::HELD_OVERHEAD, 10)] {
        let config = SessionConfig { max_held_bytes: budget, ..SessionConfig::default() };
        let (mut a, _b) = open_pair_with(config, t0);
        let mut bytes = Vec::new();
        for stream in 0..64u32 {
            for msg in 2..=256u64 {
                frame::encode_with(frame::KIND_DATA, id(2), Some(id(1)), &mut bytes, |buf| {
                    Data::encode_parts(StreamId(stream), MessageId(msg), &[], buf);
                });
            }
        }
        a.handle_bytes(t0, &bytes).unwrap();
        let held: usize = a.recvs.values().map(RecvStream::held_count).sum();
        assert_eq!(held, most, "held {held} messages with a budget of {budget} bytes");
        assert_eq!(a.held_bytes, most * crate::reliable::receiver::HELD_OVERHEAD);
    }
}

/// Review finding 3: over UDP nothing kept a reliable frame or a hello within one datagram (a
/// default-sized message made a 1 MiB frame, and a hello grew 12 bytes per stream).
#[test]
fn with_the_datagram_preset_every_frame_fits_one_datagram_and_hellos_are_split() {
    let t0 = Instant::now();
    let config = SessionConfig::datagram();
    let limit = config.max_frame_len as usize;
    let (mut a, mut b) = open_pair_with(config, t0);
    let big = vec![0; 1 << 20];
    assert_eq!(a.send(StreamId(0), big.clone()), Err(SendError::TooLarge(big)));
    let largest = vec![1; a.config().max_payload as usize];
    a.send(StreamId(0), largest.clone()).unwrap();
    assert!(pump_datagrams(&mut a, &mut b, t0).unwrap() <= limit);
    assert_eq!(delivered(&mut b), vec![(0, 1, largest)]);
    // B delivers on 300 streams: its hello names them all, in several fragments.
    for s in 0..300u32 {
        a.send(StreamId(s), vec![2]).unwrap();
    }
    for _ in 0..3 {
        pump_datagrams(&mut a, &mut b, t0);
        pump_datagrams(&mut b, &mut a, t0);
    }
    assert_eq!(delivered(&mut b).len(), 300);
    assert_eq!(a.stats().unacknowledged, 0);
    // A new link: every frame, hello fragments included, fits; nothing is sent again.
    let now = t0 + ms(10);
    a.handle_link_up(now);
    b.handle_link_up(now);
    let mut hello_frames = 0;
    for _ in 0..4 {
        // A's hello first, so that B's (echoing A's link) is checked against what B acked.
        assert!(pump_datagrams(&mut a, &mut b, now).unwrap_or(0) <= limit);
        let mut buf = Vec::new();
        while let Some(t) = b.poll_transmit(now, &mut buf) {
            assert!(t.len <= limit, "a frame of {} bytes", t.len);
            if matches!(Frame::decode(&buf, u32::MAX).unwrap().body, FrameBody::Hello(_)) {
                hello_frames += 1;
            }
            a.handle_datagram(now, &buf).unwrap();
            buf.clear();
        }
    }
    assert!(hello_frames >= 3, "{hello_frames} hello frames for 300 streams");
    assert_eq!((a.state(), b.state()), (LinkState::Open, LinkState::Open));
    assert_eq!(b.stats().duplicates_dropped, 0, "nothing delivered was sent again");
    a.send(StreamId(299), vec![3]).unwrap();
    pump_datagrams(&mut a, &mut b, now);
    assert_eq!(delivered(&mut b), vec![(299, 2, vec![3])]);
}

/// Counts the ack frames in `bytes` (a run of whole frames).
fn ack_frames(bytes: &[u8]) -> usize {
    let mut decoder = StreamDecoder::new(u32::MAX);
    decoder.handle_bytes(bytes);
    std::iter::from_fn(|| decoder.poll_frame().unwrap())
        .filter(|frame| matches!(frame.body, FrameBody::Ack(_)))
        .count()
}

/// Writes everything `from` has at `now` into one buffer, as a driver does, and hands it to
/// `to`; returns the number of ack frames in it.
fn pump_counting_acks(from: &mut Session, to: &mut Session, now: Instant) -> usize {
    let mut buf = Vec::new();
    while from.poll_transmit(now, &mut buf).is_some() {}
    to.handle_bytes(now, &buf).unwrap();
    ack_frames(&buf)
}

#[test]
fn delayed_acks_ride_with_replies_and_cover_several_arrivals() {
    let t0 = Instant::now();
    let mut a = Session::new(id(1), SessionConfig::default(), t0);
    let mut b = Session::new(id(2), SessionConfig::default(), t0);
    a.handle_link_up(t0);
    b.handle_link_up(t0);
    settle(&mut a, &mut b, t0);
    events(&mut a);
    events(&mut b);
    let delay = SessionConfig::default().ack_delay;

    // 100 calls: each request's ack goes out with its reply, each reply's with the next
    // request. Immediate acks would have written 200 ack frames, each its own write.
    let mut now = t0;
    let mut lone_acks = 0;
    for n in 0..100u8 {
        now += Duration::from_micros(50);
        a.send(StreamId(1), vec![n]).unwrap();
        assert_eq!(pump_counting_acks(&mut a, &mut b, now), usize::from(n > 0));
        assert_eq!(delivered(&mut b).len(), 1);
        // Nothing to write until the reply: the ack waits.
        assert!(!b.has_transmit(now));
        assert_eq!(b.poll_timeout(), Some(now + delay));
        now += Duration::from_micros(50);
        b.send(StreamId(1), vec![n]).unwrap();
        assert!(b.has_transmit(now));
        assert_eq!(pump_counting_acks(&mut b, &mut a, now), 1);
        assert_eq!(delivered(&mut a).len(), 1);
    }
    // The last reply's ack goes alone once the delay is over.
    assert!(!a.has_transmit(now));
    now += delay;
    assert_eq!(a.poll_timeout(), Some(now));
    a.handle_timeout(now);
    assert!(a.has_transmit(now));
    lone_acks += pump_counting_acks(&mut a, &mut b, now);
    assert_eq!(lone_acks, 1);
    let acked = events(&mut b);
    assert!(acked.contains(&Event::Acked { stream: StreamId(1), through: MessageId(100) }));
    assert_eq!((a.stats().unacknowledged, b.stats().unacknowledged), (0, 0));
    // Every sample included at most the ack delay: the RTT estimate stays near the truth.
    assert!(a.stats().smoothed_rtt.is_some_and(|rtt| rtt <= Duration::from_micros(100)));
    assert!(b.stats().smoothed_rtt.is_some_and(|rtt| rtt <= delay + Duration::from_micros(50)));

    // A one-way burst of 64: acks every ACK_EVERY arrivals, not 64.
    for n in 0..64u8 {
        a.send(StreamId(2), vec![n]).unwrap();
    }
    assert_eq!(pump_counting_acks(&mut a, &mut b, now), 0);
    assert_eq!(delivered(&mut b).len(), 64);
    let acks = pump_counting_acks(&mut b, &mut a, now);
    assert_eq!(acks, 1, "one ack frame covers the burst");
    assert!(events(&mut a).contains(&Event::Acked { stream: StreamId(2), through: MessageId(64) }));
    assert_eq!(a.stats().retransmissions, 0);
}

#[test]
fn duplicates_and_arrivals_out_of_order_are_acknowledged_at_once() {
    let t0 = Instant::now();
    let mut a = Session::new(id(1), SessionConfig::default(), t0);
    let mut b = Session::new(id(2), SessionConfig::default(), t0);
    a.handle_link_up(t0);
    b.handle_link_up(t0);
    settle(&mut a, &mut b, t0);
    a.send(StreamId(1), b"lost".to_vec()).unwrap();
    a.send(StreamId(1), b"held".to_vec()).unwrap();
    let mut first = Vec::new();
    a.poll_transmit(t0, &mut first).unwrap();
    let mut second = Vec::new();
    a.poll_transmit(t0, &mut second).unwrap();
    // The first is lost: the second arrives out of order and is acknowledged (held) at once.
    b.handle_bytes(t0, &second).unwrap();
    assert!(b.has_transmit(t0));
    assert_eq!(pump_counting_acks(&mut b, &mut a, t0), 1);
    // A retransmission of a delivered message is a duplicate: acknowledged at once as well.
    b.handle_bytes(t0, &first).unwrap();
    b.handle_bytes(t0, &first).unwrap();
    assert!(b.has_transmit(t0));
    assert_eq!(pump_counting_acks(&mut b, &mut a, t0), 1);
    assert!(events(&mut a).contains(&Event::Acked { stream: StreamId(1), through: MessageId(2) }));
}

/// Review of the datagram ports (finding 1): over a plain UDP path beside the link, one hello
/// from a made-up sender, naming no receiver, restarted the peer (every channel dropped, the
/// real peer locked out). Beside the link only datagrams between the two sessions count.
#[test]
fn beside_the_link_only_datagrams_between_the_two_sessions_are_taken() {
    let t0 = Instant::now();
    let (_a, mut b) = open_pair(t0);
    let hello = Hello {
        reply_wanted: true,
        link: 1,
        echo: 0,
        first: StreamId(0),
        last: StreamId(0),
        delivered: Vec::new(),
    };
    let datagram = |sender: u64, receiver: Option<u64>, id: u64| Frame {
        sender: self::id(sender),
        receiver: receiver.map(self::id),
        body: FrameBody::Datagram(Data {
            stream: StreamId(3),
            id: MessageId(id),
            payload: b"telemetry".to_vec(),
        }),
    };
    let refused = [
        (Frame { sender: id(66), receiver: None, body: FrameBody::Hello(hello.clone()) }, 0),
        (Frame { sender: id(1), receiver: Some(id(2)), body: FrameBody::Hello(hello) }, 0),
        (Frame { sender: id(1), receiver: Some(id(2)), body: FrameBody::Close }, 0),
        (datagram(66, Some(2), 1), 1),
        (datagram(1, Some(66), 1), 1),
        (datagram(1, None, 1), 1),
    ];
    for (frame, stale) in refused {
        let before = b.stats();
        let kind = frame.body.kind();
        let result = b.handle_best_effort(t0, frame);
        if stale == 1 {
            assert_eq!(result, Err(BestEffortError::OtherSessions));
            assert_eq!(b.stats().stale_frames, before.stale_frames + 1);
        } else {
            assert_eq!(result, Err(BestEffortError::NotADatagram(kind)));
            assert_eq!(b.stats().malformed_frames, before.malformed_frames + 1);
        }
    }
    assert!(events(&mut b).is_empty(), "nothing restarted, closed or delivered");
    assert_eq!((b.peer(), b.state()), (Some(id(1)), LinkState::Open));

    assert_eq!(b.handle_best_effort(t0, datagram(1, Some(2), 1)), Ok(()));
    let got = events(&mut b);
    assert_eq!(
        got,
        vec![Event::DatagramDelivered {
            stream: StreamId(3),
            id: MessageId(1),
            payload: b"telemetry".to_vec()
        }]
    );
    // A copy is dropped by the duplicate window, as over the link.
    assert_eq!(b.handle_best_effort(t0, datagram(1, Some(2), 1)), Ok(()));
    assert!(events(&mut b).is_empty());
    assert_eq!(b.stats().datagrams_dropped, 1);

    b.close(t0);
    assert_eq!(b.handle_best_effort(t0, datagram(1, Some(2), 2)), Err(BestEffortError::NoLink));
}
