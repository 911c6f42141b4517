//! Bodies of host-link frames: one encode/decode pair per frame kind.
//!
//! ```text
//! Hello         flags u8 (bit 0: reply wanted) | link u32 | echo u32 | first u32 | last u32 |
//!               count u16 | count × (stream u32, delivered u64)
//! Data          stream u32 | id u64 | payload (the rest of the body)
//! Datagram      same layout as Data
//! Ack           stream u32 | delivered u64 | count u8 (≤ 16) | count × (first u64, last u64)
//! Heartbeat     nonce u64
//! HeartbeatAck  nonce u64 (echoed)
//! Close         empty
//! ```
//!
//! Every decoder reads from a [`Reader`] over untrusted bytes; the whole-frame decoder in
//! `frame.rs` rejects what is left over.

use super::ids::{MessageId, StreamId};
use crate::wire::{DecodeError, Reader};

/// The most held ranges one [`Ack`] carries; a receiver holding more reports the lowest.
pub const MAX_ACK_RANGES: usize = 16;
/// Bytes of a [`Hello`] body before its entries.
pub const HELLO_FIXED_LEN: usize = 19;
/// Bytes of one entry (stream, delivered) of a [`Hello`].
pub const HELLO_ENTRY_LEN: usize = 12;

/// The sender's delivery state, sent on every new link before anything else.
///
/// A hello covers the streams `first..=last`; one that would not fit in a frame is split into
/// several, each covering a part (the whole range: `StreamId(0)..=StreamId(u32::MAX)`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    /// The sender has not yet received a hello naming it on this link: answer with one.
    pub reply_wanted: bool,
    /// The sender's link number in its incarnation: 1 on its first link, one more per link.
    pub link: u32,
    /// The `link` of the receiver's latest hello the sender has seen on this link (0: none
    /// yet). A hello echoing the receiver's current link was written after that hello arrived,
    /// so it reports at least what the sender had acknowledged before it.
    pub echo: u32,
    /// The first stream this hello covers.
    pub first: StreamId,
    /// The last stream this hello covers.
    pub last: StreamId,
    /// For each covered stream it has delivered on: the highest message delivered in order (a
    /// covered stream not listed has delivered nothing). Only meaningful if the frame names
    /// the receiver (the peer knew whom it was resuming with).
    pub delivered: Vec<(StreamId, MessageId)>,
}

impl Hello {
    /// Appends the body.
    ///
    /// # Panics
    /// If `delivered` has more than `u16::MAX` entries; the session caps its streams below.
    pub fn encode(&self, buf: &mut Vec<u8>) {
        buf.push(u8::from(self.reply_wanted));
        buf.extend_from_slice(&self.link.to_le_bytes());
        buf.extend_from_slice(&self.echo.to_le_bytes());
        buf.extend_from_slice(&self.first.0.to_le_bytes());
        buf.extend_from_slice(&self.last.0.to_le_bytes());
        let count = u16::try_from(self.delivered.len()).expect("stream count is capped at u16");
        buf.extend_from_slice(&count.to_le_bytes());
        for (stream, id) in &self.delivered {
            buf.extend_from_slice(&stream.0.to_le_bytes());
            buf.extend_from_slice(&id.0.to_le_bytes());
        }
    }

    /// Decodes the body.
    ///
    /// # Errors
    /// `InvalidFlags` for unknown flag bits, `Truncated`.
    pub fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let flags = r.u8()?;
        if flags & !1 != 0 {
            return Err(DecodeError::InvalidFlags(flags));
        }
        let (link, echo) = (r.u32()?, r.u32()?);
        let (first, last) = (StreamId(r.u32()?), StreamId(r.u32()?));
        let count = usize::from(r.u16()?);
        let mut delivered = Vec::with_capacity(count.min(r.remaining() / HELLO_ENTRY_LEN));
        for _ in 0..count {
            delivered.push((StreamId(r.u32()?), MessageId(r.u64()?)));
        }
        Ok(Self { reply_wanted: flags == 1, link, echo, first, last, delivered })
    }
}

/// One message: the body of a `Data` or a `Datagram` frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Data {
    /// The stream it belongs to.
    pub stream: StreamId,
    /// Its number in the stream.
    pub id: MessageId,
    /// The message bytes.
    pub payload: Vec<u8>,
}

impl Data {
    /// Appends the body.
    pub fn encode(&self, buf: &mut Vec<u8>) {
        Self::encode_parts(self.stream, self.id, &self.payload, buf);
    }

    /// Appends the body of a message held elsewhere (no copy into a `Data` first).
    pub fn encode_parts(stream: StreamId, id: MessageId, payload: &[u8], buf: &mut Vec<u8>) {
        buf.extend_from_slice(&stream.0.to_le_bytes());
        buf.extend_from_slice(&id.0.to_le_bytes());
        buf.extend_from_slice(payload);
    }

    /// Decodes the body; the payload is everything after the id.
    ///
    /// # Errors
    /// `Truncated`.
    pub fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let stream = StreamId(r.u32()?);
        let id = MessageId(r.u64()?);
        let payload = r.take(r.remaining())?.to_vec();
        Ok(Self { stream, id, payload })
    }
}

/// A receiver's state on one stream: delivered in order, and held beyond a gap.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ack {
    /// The stream.
    pub stream: StreamId,
    /// Every message up to and including this one was delivered (0: none yet).
    pub delivered: MessageId,
    /// Ranges above `delivered + 1` the receiver holds, lowest first; the sender need not
    /// retransmit them. At most [`MAX_ACK_RANGES`].
    pub held: Vec<AckRange>,
}

/// An inclusive range of message ids.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AckRange {
    /// The first id in the range.
    pub first: MessageId,
    /// The last id in the range (not below `first` when sent by a correct peer).
    pub last: MessageId,
}

impl Ack {
    /// Appends the body; ranges past [`MAX_ACK_RANGES`] are left out.
    pub fn encode(&self, buf: &mut Vec<u8>) {
        buf.extend_from_slice(&self.stream.0.to_le_bytes());
        buf.extend_from_slice(&self.delivered.0.to_le_bytes());
        let held = &self.held[..self.held.len().min(MAX_ACK_RANGES)];
        // The cast cannot truncate: `held.len() <= MAX_ACK_RANGES` (16).
        buf.push(held.len() as u8);
        for range in held {
            buf.extend_from_slice(&range.first.0.to_le_bytes());
            buf.extend_from_slice(&range.last.0.to_le_bytes());
        }
    }

    /// Decodes the body. Range order is not checked here: the sender ignores ranges that name
    /// nothing it has in flight.
    ///
    /// # Errors
    /// `TooLong` for more than [`MAX_ACK_RANGES`] ranges, `Truncated`.
    pub fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let stream = StreamId(r.u32()?);
        let delivered = MessageId(r.u64()?);
        let count = r.u8()?;
        if usize::from(count) > MAX_ACK_RANGES {
            return Err(DecodeError::TooLong {
                declared: u32::from(count),
                limit: MAX_ACK_RANGES as u32,
            });
        }
        let mut held = Vec::with_capacity(usize::from(count));
        for _ in 0..count {
            held.push(AckRange { first: MessageId(r.u64()?), last: MessageId(r.u64()?) });
        }
        Ok(Self { stream, delivered, held })
    }
}

/// The body of a heartbeat and of its answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Heartbeat {
    /// Chosen by the prober, echoed by the answer.
    pub nonce: u64,
}

impl Heartbeat {
    /// Appends the body.
    pub fn encode(&self, buf: &mut Vec<u8>) {
        buf.extend_from_slice(&self.nonce.to_le_bytes());
    }

    /// Decodes the body.
    ///
    /// # Errors
    /// `Truncated`.
    pub fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(Self { nonce: r.u64()? })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hello_rejects_unknown_flags_and_short_lists() {
        let mut buf = Vec::new();
        let hello = Hello {
            reply_wanted: false,
            link: 3,
            echo: 2,
            first: StreamId(0),
            last: StreamId(9),
            delivered: vec![(StreamId(1), MessageId(2))],
        };
        hello.encode(&mut buf);
        assert_eq!(buf.len(), HELLO_FIXED_LEN + HELLO_ENTRY_LEN);
        assert_eq!(Hello::decode(&mut Reader::new(&buf)), Ok(hello));
        let mut bad = buf.clone();
        bad[0] = 0x02;
        assert_eq!(Hello::decode(&mut Reader::new(&bad)), Err(DecodeError::InvalidFlags(2)));
        assert_eq!(Hello::decode(&mut Reader::new(&buf[..25])), Err(DecodeError::Truncated));
        // A count far above what the body holds fails without allocating for it.
        let mut huge = buf[..HELLO_FIXED_LEN].to_vec();
        huge[17..19].copy_from_slice(&[0xff, 0xff]);
        assert_eq!(Hello::decode(&mut Reader::new(&huge)), Err(DecodeError::Truncated));
    }

    #[test]
    fn ack_caps_its_ranges_on_both_sides() {
        let range = AckRange { first: MessageId(3), last: MessageId(4) };
        let ack = Ack { stream: StreamId(1), delivered: MessageId(1), held: vec![range; 20] };
        let mut buf = Vec::new();
        ack.encode(&mut buf);
        let decoded = Ack::decode(&mut Reader::new(&buf)).unwrap();
        assert_eq!(decoded.held.len(), MAX_ACK_RANGES);
        let mut bad = buf.clone();
        bad[12] = 17;
        assert_eq!(
            Ack::decode(&mut Reader::new(&bad)),
            Err(DecodeError::TooLong { declared: 17, limit: 16 })
        );
    }

    #[test]
    fn data_takes_the_rest_of_the_body_as_payload() {
        let mut buf = Vec::new();
        Data::encode_parts(StreamId(2), MessageId(5), b"abc", &mut buf);
        let data = Data::decode(&mut Reader::new(&buf)).unwrap();
        assert_eq!(data, Data { stream: StreamId(2), id: MessageId(5), payload: b"abc".to_vec() });
        assert_eq!(Data::decode(&mut Reader::new(&buf[..11])), Err(DecodeError::Truncated));
    }
}
