//! Flow control of one link by credits (sans-IO): the sender counts what it sent, the receiver
//! reports, cumulatively, what left its queue (taken by the application or dropped), and the
//! sender never has more than the port's capacity in flight.
//!
//! ```text
//!   sender: SendWindow::admit(len) ─ Now ─► write frame ─► on_sent(len)
//!   receiver: message taken ─► ReleaseCounter::on_release(len)
//!             poll_credit(urgent) ─► Credit frame ─► SendWindow::handle_credit
//! ```
//! Counters are cumulative, so a lost or merged credit frame loses nothing.

use crate::buffering::PortSpec;
use crate::wire::{DecodeError, Reader};

/// What the receiver has released so far on one link: cumulative counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Credit {
    /// Messages released.
    pub messages: u64,
    /// Body bytes released.
    pub bytes: u64,
}

impl Credit {
    /// Encoded size in bytes (the body of a credit frame).
    pub const LEN: usize = 16;

    /// Encodes the credit as a frame body.
    #[must_use]
    pub fn to_bytes(&self) -> [u8; Self::LEN] {
        let mut out = [0u8; Self::LEN];
        out[..8].copy_from_slice(&self.messages.to_le_bytes());
        out[8..].copy_from_slice(&self.bytes.to_le_bytes());
        out
    }

    /// Decodes a credit frame body.
    ///
    /// # Errors
    /// `Truncated` or `TrailingBytes`.
    pub fn decode(body: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(body);
        let credit = Self { messages: r.u64()?, bytes: r.u64()? };
        r.finish()?;
        Ok(credit)
    }
}

/// Whether a one-way message may go out now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Admission {
    /// The link has room.
    Now,
    /// The link is at capacity; wait for credit (or, under drop-oldest, send anyway).
    Full,
    /// The message alone exceeds the link's byte capacity: it can never be sent.
    Never,
}

/// A credit that does not fit what was sent: the receiver broke the protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("credit for {credited} messages / {credited_bytes} bytes, but {sent} / {sent_bytes} sent")]
pub struct CreditViolation {
    /// Messages credited.
    pub credited: u64,
    /// Bytes credited.
    pub credited_bytes: u64,
    /// Messages sent.
    pub sent: u64,
    /// Bytes sent.
    pub sent_bytes: u64,
}

/// The sender's side of a link's flow control.
#[derive(Debug, Clone)]
pub struct SendWindow {
    message_window: u64,
    byte_window: u64,
    sent: u64,
    sent_bytes: u64,
    released: Credit,
}

impl SendWindow {
    /// A window for a link to a port with `spec`.
    #[must_use]
    pub fn new(spec: &PortSpec) -> Self {
        Self {
            message_window: spec.message_window(),
            byte_window: spec.byte_window(),
            sent: 0,
            sent_bytes: 0,
            released: Credit::default(),
        }
    }

    /// Whether a message of `len` body bytes may be sent now.
    #[must_use]
    pub fn admit(&self, len: u64) -> Admission {
        if len > self.byte_window {
            return Admission::Never;
        }
        let (messages, bytes) = self.in_flight();
        if messages >= self.message_window || bytes.saturating_add(len) > self.byte_window {
            Admission::Full
        } else {
            Admission::Now
        }
    }

    /// Records a message of `len` bytes written to the link; returns its number on this link
    /// (1, 2, …), which [`is_released`](Self::is_released) takes.
    pub fn on_sent(&mut self, len: u64) -> u64 {
        self.sent += 1;
        self.sent_bytes += len;
        self.sent
    }

    /// Takes back the last [`on_sent`](Self::on_sent) of a message of `len` bytes that was
    /// counted before it was written and then not written (its number is given again).
    pub fn on_unsent(&mut self, len: u64) {
        self.sent = self.sent.saturating_sub(1).max(self.released.messages);
        self.sent_bytes = self.sent_bytes.saturating_sub(len).max(self.released.bytes);
    }

    /// Applies a credit from the receiver. Older credits than the last one are ignored.
    ///
    /// # Errors
    /// [`CreditViolation`] when it credits more than was sent.
    pub fn handle_credit(&mut self, credit: Credit) -> Result<(), CreditViolation> {
        if credit.messages > self.sent || credit.bytes > self.sent_bytes {
            return Err(CreditViolation {
                credited: credit.messages,
                credited_bytes: credit.bytes,
                sent: self.sent,
                sent_bytes: self.sent_bytes,
            });
        }
        if credit.messages >= self.released.messages {
            self.released = credit;
        }
        Ok(())
    }

    /// Messages and bytes sent and not yet released.
    #[must_use]
    pub fn in_flight(&self) -> (u64, u64) {
        (self.sent - self.released.messages, self.sent_bytes.saturating_sub(self.released.bytes))
    }

    /// True once message number `number` (from [`on_sent`](Self::on_sent)) has left the
    /// receiver's queue.
    #[must_use]
    pub fn is_released(&self, number: u64) -> bool {
        self.released.messages >= number
    }
}

/// The receiver's side of a link's flow control: what to report, and when.
#[derive(Debug, Clone)]
pub struct ReleaseCounter {
    released: Credit,
    reported: Credit,
    batch_messages: u64,
    batch_bytes: u64,
}

impl ReleaseCounter {
    /// A counter for a link of a port with `spec`. Small capacities (under 16) report every
    /// release; larger ones batch up to a quarter of the capacity, so a sender is never told
    /// the link is fuller than it is by more than that.
    #[must_use]
    pub fn new(spec: &PortSpec) -> Self {
        let batch = |window: u64| if window < 16 { 1 } else { (window / 4).max(1) };
        Self {
            released: Credit::default(),
            reported: Credit::default(),
            batch_messages: batch(spec.message_window()),
            batch_bytes: batch(spec.byte_window()),
        }
    }

    /// Records that a message of `len` bytes left the queue (taken or dropped).
    pub fn on_release(&mut self, len: u64) {
        self.on_release_many(1, len);
    }

    /// Records that `messages` messages of `bytes` body bytes in all left the queue.
    pub fn on_release_many(&mut self, messages: u64, bytes: u64) {
        self.released.messages += messages;
        self.released.bytes += bytes;
    }

    /// The credit to send now, if any: always when `urgent` and something is unreported,
    /// otherwise once a batch is due. Call [`credit_sent`](Self::credit_sent) after writing it.
    #[must_use]
    pub fn poll_credit(&self, urgent: bool) -> Option<Credit> {
        let messages = self.released.messages - self.reported.messages;
        let bytes = self.released.bytes - self.reported.bytes;
        let due = messages >= self.batch_messages || bytes >= self.batch_bytes;
        (messages > 0 && (urgent || due)).then_some(self.released)
    }

    /// Records that `credit` reached the link.
    pub fn credit_sent(&mut self, credit: Credit) {
        if credit.messages >= self.reported.messages {
            self.reported = credit;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::buffering::Capacity;

    fn spec(capacity: Capacity) -> PortSpec {
        PortSpec { capacity, ..PortSpec::default() }
    }

    #[test]
    fn a_bounded_window_admits_exactly_its_capacity_until_credit_returns() {
        let mut window = SendWindow::new(&spec(Capacity::Bounded(3)));
        let mut receiver = ReleaseCounter::new(&spec(Capacity::Bounded(3)));
        for _ in 0..3 {
            assert_eq!(window.admit(10), Admission::Now);
            window.on_sent(10);
        }
        assert_eq!(window.admit(10), Admission::Full);
        receiver.on_release(10);
        let credit = receiver.poll_credit(false).expect("small windows report every release");
        receiver.credit_sent(credit);
        window.handle_credit(credit).unwrap();
        assert_eq!(window.admit(10), Admission::Now);
        assert_eq!(window.in_flight(), (2, 20));
        assert!(window.is_released(1) && !window.is_released(2));
    }

    #[test]
    fn rendezvous_has_one_message_in_flight_and_bytes_cap_unbounded_links() {
        let mut window = SendWindow::new(&spec(Capacity::Rendezvous));
        window.on_sent(0);
        assert_eq!(window.admit(0), Admission::Full);
        let mut window = SendWindow::new(&spec(Capacity::Unbounded { max_bytes: 100 }));
        assert_eq!(window.admit(101), Admission::Never);
        window.on_sent(60);
        assert_eq!(window.admit(40), Admission::Now);
        assert_eq!(window.admit(41), Admission::Full);
    }

    #[test]
    fn large_windows_report_in_batches_of_a_quarter_unless_urgent() {
        let mut receiver = ReleaseCounter::new(&spec(Capacity::Bounded(100)));
        for _ in 0..24 {
            receiver.on_release(1);
        }
        assert_eq!(receiver.poll_credit(false), None);
        assert_eq!(receiver.poll_credit(true).map(|c| c.messages), Some(24));
        receiver.on_release(1);
        let credit = receiver.poll_credit(false).unwrap();
        receiver.credit_sent(credit);
        assert_eq!(receiver.poll_credit(true), None, "nothing unreported");
    }

    #[test]
    fn a_message_counted_then_not_written_gives_its_number_and_room_back() {
        let mut window = SendWindow::new(&spec(Capacity::Bounded(2)));
        assert_eq!(window.on_sent(7), 1);
        assert_eq!(window.on_sent(9), 2);
        assert_eq!(window.admit(1), Admission::Full);
        window.on_unsent(9);
        assert_eq!(window.in_flight(), (1, 7));
        assert_eq!(window.admit(1), Admission::Now);
        assert_eq!(window.on_sent(4), 2, "the number is given again");
        // Never below what the receiver already released.
        window.handle_credit(Credit { messages: 2, bytes: 11 }).unwrap();
        window.on_unsent(100);
        assert_eq!(window.in_flight(), (0, 0));
    }

    #[test]
    fn credits_are_cumulative_and_checked() {
        let mut window = SendWindow::new(&spec(Capacity::Bounded(8)));
        window.on_sent(5);
        window.on_sent(5);
        window.handle_credit(Credit { messages: 2, bytes: 10 }).unwrap();
        window.handle_credit(Credit { messages: 1, bytes: 5 }).unwrap(); // stale, ignored
        assert_eq!(window.in_flight(), (0, 0));
        assert!(window.handle_credit(Credit { messages: 3, bytes: 15 }).is_err());
        assert_eq!(
            Credit::decode(&Credit { messages: 7, bytes: 9 }.to_bytes()).unwrap().messages,
            7
        );
        assert!(Credit::decode(&[0; 15]).is_err());
    }
}
