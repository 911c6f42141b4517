//! The sending half of one reliable stream: messages kept until acknowledged, retransmission
//! on timeout and on resume, a bounded window.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::body::AckRange;
use super::ids::MessageId;
use super::rtt::RttEstimator;

/// Messages of one stream from the first unacknowledged one to the last accepted one.
///
/// Ids are consecutive from 1. A message leaves only when the peer reports it delivered (a
/// cumulative ack, or the delivered count in a hello); a held range (selective ack) only stops
/// its retransmission, because what a receiver holds beyond a gap is not yet delivered.
#[derive(Debug)]
pub(crate) struct SendStream {
    /// The id of `slots[0]`; everything below was delivered.
    base: u64,
    /// The id the next pushed message gets.
    next_id: u64,
    /// The first id never transmitted.
    next_unsent: u64,
    slots: VecDeque<Slot>,
    /// Ids due for retransmission, lowest first: exactly the slots with `queued` set (an ack
    /// that delivers or holds a queued message takes it out, so `has_transmit` is exact).
    retransmit: VecDeque<u64>,
    bytes: usize,
    /// What the peer had acknowledged (delivered through) when the current link came up.
    acked_at_link_up: u64,
    /// When an acknowledgement last moved the delivered point.
    progress_at: Option<Instant>,
}

#[derive(Debug)]
struct Slot {
    payload: Vec<u8>,
    /// The receiver reported holding it: no retransmission.
    held: bool,
    /// The last transmission on the current link; `None` before the first and after a resume.
    sent_at: Option<Instant>,
    transmissions: u32,
    /// Timeouts since the last resume: the exponent of the retransmission backoff.
    backoff: u32,
    /// In `retransmit`.
    queued: bool,
}

/// A message to put on the wire.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Outgoing<'a> {
    /// Its id.
    pub(crate) id: MessageId,
    /// Its bytes.
    pub(crate) payload: &'a [u8],
    /// Sent before (after a timeout, or on a new link).
    pub(crate) retransmission: bool,
}

/// What an acknowledgement changed.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct AckOutcome {
    /// The new delivered-through id, if it moved.
    pub(crate) delivered: Option<MessageId>,
    /// A round-trip sample from a message sent only once (Karn's rule).
    pub(crate) rtt_sample: Option<Duration>,
    /// The peer acknowledged a message that was never sent: ignored.
    pub(crate) invalid: bool,
}

impl SendStream {
    /// An empty stream whose first message gets id 1.
    pub(crate) fn new() -> Self {
        Self {
            base: 1,
            next_id: 1,
            next_unsent: 1,
            slots: VecDeque::new(),
            retransmit: VecDeque::new(),
            bytes: 0,
            acked_at_link_up: 0,
            progress_at: None,
        }
    }

    /// Accepts a message if fewer than `window` are unacknowledged; hands it back otherwise.
    pub(crate) fn push(&mut self, payload: Vec<u8>, window: usize) -> Result<MessageId, Vec<u8>> {
        if self.slots.len() >= window {
            return Err(payload);
        }
        let id = self.next_id;
        self.next_id += 1;
        self.bytes += payload.len();
        self.slots.push_back(Slot {
            payload,
            held: false,
            sent_at: None,
            transmissions: 0,
            backoff: 0,
            queued: false,
        });
        Ok(MessageId(id))
    }

    /// The next message to put on the wire (retransmissions first), recorded as sent at `now`.
    pub(crate) fn poll_transmit(&mut self, now: Instant) -> Option<Outgoing<'_>> {
        let (id, retransmission) = loop {
            match self.retransmit.pop_front() {
                Some(id) => {
                    let Some(slot) = self.slot_mut(id) else { continue };
                    slot.queued = false;
                    if slot.held {
                        continue;
                    }
                    break (id, true);
                }
                None if self.next_unsent < self.next_id => {
                    self.next_unsent += 1;
                    break (self.next_unsent - 1, false);
                }
                None => return None,
            }
        };
        // Invariant: `id` names a slot: either it was just found by `slot_mut`, or it is below
        // `next_id` and not below `base` (nothing unsent was ever acknowledged).
        let slot = self.slot_mut(id).expect("transmitted id has a slot");
        slot.sent_at = Some(now);
        slot.transmissions += 1;
        Some(Outgoing { id: MessageId(id), payload: &slot.payload, retransmission })
    }

    /// Applies an acknowledgement: everything up to `delivered` leaves, `held` ranges stop
    /// being retransmitted.
    pub(crate) fn handle_ack(
        &mut self,
        now: Instant,
        delivered: MessageId,
        held: &[AckRange],
    ) -> AckOutcome {
        let mut outcome = AckOutcome::default();
        if delivered.0 >= self.next_unsent {
            outcome.invalid = true;
            return outcome;
        }
        let mut sample = None;
        let mut newly_held = false;
        while self.base <= delivered.0 {
            // Invariant: `base <= delivered < next_unsent <= next_id`, so a slot remains.
            let slot = self.slots.pop_front().expect("unacknowledged slot below next_id");
            self.bytes -= slot.payload.len();
            self.base += 1;
            sample = sample.or(karn_sample(&slot, now));
            outcome.delivered = Some(MessageId(self.base - 1));
        }
        for range in held {
            let first = range.first.0.max(self.base);
            let last = range.last.0.min(self.next_unsent.saturating_sub(1));
            for id in first..=last {
                if let Some(slot) = self.slot_mut(id) {
                    if !slot.held {
                        slot.held = true;
                        newly_held |= slot.queued;
                        sample = sample.or(karn_sample(slot, now));
                    }
                }
            }
        }
        if outcome.delivered.is_some() {
            self.progress_at = Some(now);
        }
        if outcome.delivered.is_some() || newly_held {
            self.forget_settled_retransmissions();
        }
        outcome.rtt_sample = sample;
        outcome
    }

    /// Takes out of the retransmission queue what was delivered or is held since it was queued.
    fn forget_settled_retransmissions(&mut self) {
        let (base, slots) = (self.base, &mut self.slots);
        self.retransmit.retain(|&id| {
            let index = id.checked_sub(base).and_then(|i| usize::try_from(i).ok());
            match index.and_then(|i| slots.get_mut(i)) {
                Some(slot) if !slot.held => true,
                Some(slot) => {
                    slot.queued = false;
                    false
                }
                None => false,
            }
        });
    }

    /// A new link came up: remembers what the peer had acknowledged so far, the least its
    /// hello on this link may report (see [`acked_at_link_up`](Self::acked_at_link_up)).
    pub(crate) fn handle_link_up(&mut self) {
        self.acked_at_link_up = self.base - 1;
    }

    /// What the peer had acknowledged (delivered through) when the current link came up. A
    /// hello the peer wrote after seeing this end's hello of the current link reports at least
    /// this much, since delivery never goes back within one incarnation.
    pub(crate) fn acked_at_link_up(&self) -> MessageId {
        MessageId(self.acked_at_link_up)
    }

    /// The first id never transmitted: an ack at or above it names a message never sent.
    pub(crate) fn next_unsent(&self) -> MessageId {
        MessageId(self.next_unsent)
    }

    /// A new link opened and the peer reported `delivered`: everything beyond it that the peer
    /// does not hold goes out again (the old link's transmissions are lost), with fresh timers.
    pub(crate) fn handle_resume(&mut self, now: Instant, delivered: MessageId) -> AckOutcome {
        let outcome = self.handle_ack(now, delivered, &[]);
        self.retransmit.clear();
        let sent = self.next_unsent - self.base;
        for (id, slot) in (self.base..).zip(self.slots.iter_mut()).take(sent as usize) {
            slot.sent_at = None;
            slot.backoff = 0;
            slot.queued = !slot.held;
            if slot.queued {
                self.retransmit.push_back(id);
            }
        }
        outcome
    }

    /// When the earliest retransmission timer fires, if any message is in flight.
    pub(crate) fn poll_timeout(&self, rtt: &RttEstimator) -> Option<Instant> {
        self.slots
            .iter()
            .filter(|slot| !slot.held && !slot.queued)
            .filter_map(|slot| Some(slot.sent_at? + rtt.backed_off(slot.backoff)))
            .min()
    }

    /// Since when the stream's oldest unacknowledged message has waited for its
    /// acknowledgement on the current link: from its transmission, or from the last time an
    /// acknowledgement moved the stream on, whichever is later. `None` when it is not in
    /// flight (not sent on this link yet, or nothing is unacknowledged).
    pub(crate) fn unacknowledged_since(&self) -> Option<Instant> {
        let sent_at = self.slots.front()?.sent_at?;
        Some(self.progress_at.map_or(sent_at, |progress| progress.max(sent_at)))
    }

    /// Queues for retransmission every message whose timer expired at `now`, doubling its
    /// timeout. Returns whether any did.
    pub(crate) fn handle_timeout(&mut self, now: Instant, rtt: &RttEstimator) -> bool {
        let mut any = false;
        for (id, slot) in (self.base..).zip(self.slots.iter_mut()) {
            let Some(sent_at) = slot.sent_at else { continue };
            if slot.held || slot.queued || sent_at + rtt.backed_off(slot.backoff) > now {
                continue;
            }
            slot.queued = true;
            slot.backoff += 1;
            self.retransmit.push_back(id);
            any = true;
        }
        if any {
            self.retransmit.make_contiguous().sort_unstable();
        }
        any
    }

    /// Takes every unacknowledged message out (the session failed); the stream is empty after.
    pub(crate) fn drain(&mut self) -> impl Iterator<Item = (MessageId, Vec<u8>)> + '_ {
        let base = self.base;
        self.base = self.next_id;
        self.next_unsent = self.next_id;
        self.bytes = 0;
        self.retransmit.clear();
        (base..).map(MessageId).zip(self.slots.drain(..).map(|slot| slot.payload))
    }

    /// Messages accepted and not yet delivered.
    pub(crate) fn unacknowledged(&self) -> usize {
        self.slots.len()
    }

    /// Payload bytes accepted and not yet delivered.
    pub(crate) fn unacknowledged_bytes(&self) -> usize {
        self.bytes
    }

    /// Whether a message is waiting to be (re)transmitted: then
    /// [`poll_transmit`](Self::poll_transmit) returns one.
    pub(crate) fn has_transmit(&self) -> bool {
        !self.retransmit.is_empty() || self.next_unsent < self.next_id
    }

    fn slot_mut(&mut self, id: u64) -> Option<&mut Slot> {
        let index = usize::try_from(id.checked_sub(self.base)?).ok()?;
        self.slots.get_mut(index)
    }
}

fn karn_sample(slot: &Slot, now: Instant) -> Option<Duration> {
    match slot.sent_at {
        Some(sent_at) if slot.transmissions == 1 => Some(now.saturating_duration_since(sent_at)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn rtt() -> RttEstimator {
        RttEstimator::new(ms(100), ms(100), ms(1000))
    }

    fn sent_ids(stream: &mut SendStream, now: Instant) -> Vec<u64> {
        std::iter::from_fn(|| stream.poll_transmit(now).map(|out| out.id.0)).collect()
    }

    #[test]
    fn a_full_window_hands_the_message_back() {
        let mut s = SendStream::new();
        assert_eq!(s.push(b"a".to_vec(), 2), Ok(MessageId(1)));
        assert_eq!(s.push(b"b".to_vec(), 2), Ok(MessageId(2)));
        assert_eq!(s.push(b"c".to_vec(), 2), Err(b"c".to_vec()));
        assert_eq!(s.unacknowledged_bytes(), 2);
    }

    #[test]
    fn acked_messages_leave_and_unacked_ones_are_retransmitted_with_backoff() {
        let t0 = Instant::now();
        let rtt = rtt();
        let mut s = SendStream::new();
        for _ in 0..3 {
            s.push(vec![0; 10], 8).unwrap();
        }
        assert_eq!(sent_ids(&mut s, t0), vec![1, 2, 3]);
        let outcome = s.handle_ack(t0 + ms(30), MessageId(1), &[]);
        assert_eq!(outcome.delivered, Some(MessageId(1)));
        assert_eq!(outcome.rtt_sample, Some(ms(30)));
        assert_eq!(s.poll_timeout(&rtt), Some(t0 + ms(100)));
        assert!(!s.handle_timeout(t0 + ms(99), &rtt));
        assert!(s.handle_timeout(t0 + ms(100), &rtt));
        let again = s.poll_transmit(t0 + ms(100)).unwrap();
        assert_eq!((again.id, again.retransmission), (MessageId(2), true));
        assert_eq!(sent_ids(&mut s, t0 + ms(100)), vec![3]);
        // Doubled after one timeout.
        assert_eq!(s.poll_timeout(&rtt), Some(t0 + ms(300)));
        // A retransmitted message gives no RTT sample.
        let outcome = s.handle_ack(t0 + ms(150), MessageId(3), &[]);
        assert_eq!(outcome, AckOutcome { delivered: Some(MessageId(3)), ..Default::default() });
        assert_eq!(s.unacknowledged(), 0);
        assert_eq!(s.poll_timeout(&rtt), None);
    }

    #[test]
    fn held_ranges_are_not_retransmitted_but_stay_until_delivered() {
        let t0 = Instant::now();
        let rtt = rtt();
        let mut s = SendStream::new();
        for _ in 0..4 {
            s.push(vec![1], 8).unwrap();
        }
        sent_ids(&mut s, t0);
        let held = [AckRange { first: MessageId(3), last: MessageId(4) }];
        s.handle_ack(t0 + ms(10), MessageId(1), &held);
        assert_eq!(s.unacknowledged(), 3);
        s.handle_timeout(t0 + ms(500), &rtt);
        assert_eq!(sent_ids(&mut s, t0 + ms(500)), vec![2]);
    }

    #[test]
    fn an_ack_for_queued_messages_takes_them_out_of_the_retransmission_queue() {
        let t0 = Instant::now();
        let rtt = rtt();
        let mut s = SendStream::new();
        for _ in 0..3 {
            s.push(vec![1], 8).unwrap();
        }
        sent_ids(&mut s, t0);
        assert!(s.handle_timeout(t0 + ms(100), &rtt));
        assert!(s.has_transmit());
        // The originals were only late: 1 is delivered, 3 held.
        let held = [AckRange { first: MessageId(3), last: MessageId(3) }];
        s.handle_ack(t0 + ms(110), MessageId(1), &held);
        assert!(s.has_transmit());
        assert_eq!(sent_ids(&mut s, t0 + ms(110)), vec![2]);
        // Everything times out again and then turns out delivered: nothing is left to send.
        assert!(s.handle_timeout(t0 + ms(400), &rtt));
        assert!(s.has_transmit());
        s.handle_ack(t0 + ms(410), MessageId(3), &[]);
        assert!(!s.has_transmit());
        assert_eq!(s.poll_transmit(t0 + ms(410)), None);
    }

    #[test]
    fn acks_for_unsent_messages_are_ignored() {
        let mut s = SendStream::new();
        s.push(vec![1], 8).unwrap();
        let outcome = s.handle_ack(Instant::now(), MessageId(1), &[]);
        assert!(outcome.invalid);
        assert_eq!(s.unacknowledged(), 1);
        // Ranges far outside what is in flight name nothing.
        let wild = [AckRange { first: MessageId(0), last: MessageId(u64::MAX) }];
        assert!(!s.handle_ack(Instant::now(), MessageId(0), &wild).invalid);
    }

    #[test]
    fn resume_retransmits_exactly_what_was_not_delivered_or_held() {
        let t0 = Instant::now();
        let mut s = SendStream::new();
        for _ in 0..5 {
            s.push(vec![2], 8).unwrap();
        }
        sent_ids(&mut s, t0);
        s.handle_ack(t0, MessageId(0), &[AckRange { first: MessageId(4), last: MessageId(4) }]);
        s.push(vec![3], 8).unwrap();
        let outcome = s.handle_resume(t0 + ms(5), MessageId(2));
        assert_eq!(outcome.delivered, Some(MessageId(2)));
        assert_eq!(sent_ids(&mut s, t0 + ms(5)), vec![3, 5, 6]);
        let failed: Vec<_> = s.drain().map(|(id, _)| id.0).collect();
        assert_eq!(failed, vec![3, 4, 5, 6]);
        assert_eq!(s.push(vec![4], 8), Ok(MessageId(7)));
    }
}
