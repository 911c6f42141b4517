//! Host-link frames: a 32-byte checksummed header, then a body whose layout depends on the kind.
//!
//! ```text
//! 0  magic "PH" [u8; 2] | 2 version u8 | 3 kind u8 | 4 body_len u32
//! 8  sender session u64 | 16 receiver session u64 (0 = not known yet)
//! 24 header_crc u32 = crc32c(bytes 0..24) | 28 frame_crc u32 = crc32c(bytes 0..24 ++ body)
//! 32 body (body_len bytes; layouts in `body.rs`)
//! ```
//!
//! All integers are little-endian. The header has its own checksum so that a reader of a byte
//! stream (TCP, TLS, a QUIC stream) can trust `body_len` before it waits for the body: a damaged
//! header breaks the stream (the link must be reset), a damaged body only loses its frame. Over
//! UDP each datagram carries exactly one frame.

use super::body::{Ack, Data, Heartbeat, Hello};
use super::ids::SessionId;
use crate::wire::{DecodeError, Reader};

/// The first two bytes of every host-link frame.
pub const MAGIC: [u8; 2] = *b"PH";
/// The host-link version this build writes and accepts (2: hellos carry link numbers and
/// may be split).
pub const VERSION: u8 = 2;
/// Size of the frame header in bytes.
pub const HEADER_LEN: usize = 32;

/// One host-link frame: who sent it, to whom, and what it says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// The sending session.
    pub sender: SessionId,
    /// The receiving session as the sender knows it; `None` only in a [`Hello`] to a peer not
    /// heard from yet. Every other frame is dropped unless it names the receiver.
    pub receiver: Option<SessionId>,
    /// The kind and its fields.
    pub body: FrameBody,
}

/// The kind of a frame, with its fields.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum FrameBody {
    /// Sent on every new link: the sender's delivery state, so the peer retransmits what is
    /// missing.
    Hello(Hello),
    /// A reliable message.
    Data(Data),
    /// What a receiver has delivered and holds on one stream.
    Ack(Ack),
    /// A best-effort message: never retransmitted, still checksummed and deduplicated.
    Datagram(Data),
    /// Liveness probe; the peer answers with [`FrameBody::HeartbeatAck`].
    Heartbeat(Heartbeat),
    /// The answer to a heartbeat, echoing its nonce (an RTT sample).
    HeartbeatAck(Heartbeat),
    /// The sender ends the session; what it had not acknowledged will never be.
    Close,
}

impl FrameBody {
    /// The kind byte.
    #[must_use]
    pub fn kind(&self) -> u8 {
        match self {
            Self::Hello(_) => KIND_HELLO,
            Self::Data(_) => KIND_DATA,
            Self::Ack(_) => KIND_ACK,
            Self::Datagram(_) => KIND_DATAGRAM,
            Self::Heartbeat(_) => KIND_HEARTBEAT,
            Self::HeartbeatAck(_) => KIND_HEARTBEAT_ACK,
            Self::Close => KIND_CLOSE,
        }
    }

    fn encode(&self, buf: &mut Vec<u8>) {
        match self {
            Self::Hello(hello) => hello.encode(buf),
            Self::Data(data) | Self::Datagram(data) => data.encode(buf),
            Self::Ack(ack) => ack.encode(buf),
            Self::Heartbeat(beat) | Self::HeartbeatAck(beat) => beat.encode(buf),
            Self::Close => {}
        }
    }

    fn decode(kind: u8, r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(match kind {
            KIND_HELLO => Self::Hello(Hello::decode(r)?),
            KIND_DATA => Self::Data(Data::decode(r)?),
            KIND_ACK => Self::Ack(Ack::decode(r)?),
            KIND_DATAGRAM => Self::Datagram(Data::decode(r)?),
            KIND_HEARTBEAT => Self::Heartbeat(Heartbeat::decode(r)?),
            KIND_HEARTBEAT_ACK => Self::HeartbeatAck(Heartbeat::decode(r)?),
            KIND_CLOSE => Self::Close,
            other => return Err(DecodeError::UnknownKind(other)),
        })
    }
}

impl Frame {
    /// Appends the encoded frame to `buf`.
    ///
    /// # Panics
    /// If the body is longer than `u32::MAX` bytes; the session refuses payloads above its
    /// configured maximum (far smaller) before they get here.
    pub fn encode(&self, buf: &mut Vec<u8>) {
        encode_with(self.body.kind(), self.sender, self.receiver, buf, |buf| self.body.encode(buf));
    }

    /// Decodes exactly one frame from `bytes` (a UDP datagram), rejecting trailing bytes and
    /// bodies longer than `max_body`.
    ///
    /// # Errors
    /// Any [`DecodeError`]; a damaged frame gives `ChecksumMismatch`.
    pub fn decode(bytes: &[u8], max_body: u32) -> Result<Self, DecodeError> {
        let header_bytes = bytes.first_chunk::<HEADER_LEN>().ok_or(DecodeError::Truncated)?;
        let header = FrameHeader::decode(header_bytes, max_body)?;
        let body = &bytes[HEADER_LEN..];
        let body_len = header.body_len as usize;
        if body.len() < body_len {
            return Err(DecodeError::Truncated);
        }
        if body.len() > body_len {
            return Err(DecodeError::TrailingBytes(body.len() - body_len));
        }
        header.decode_body(header_bytes, body)
    }
}

/// The checked header of a frame whose body has not been read yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    /// The kind byte (checked only with the body, so an unknown kind costs one frame, not the
    /// stream).
    pub kind: u8,
    /// Length of the body that follows the header.
    pub body_len: u32,
    /// The sending session.
    pub sender: SessionId,
    /// The receiving session, if the sender knows it.
    pub receiver: Option<SessionId>,
    /// The checksum over header and body, checked by [`decode_body`](Self::decode_body).
    pub frame_crc: u32,
}

impl FrameHeader {
    /// Decodes and checks a header: magic, version, header checksum, sender and length.
    ///
    /// # Errors
    /// `UnknownValue` for a wrong magic, `UnsupportedVersion`, `ChecksumMismatch` for a
    /// damaged header, `UnknownValue` for a zero sender, `TooLong` above `max_body`.
    pub fn decode(bytes: &[u8; HEADER_LEN], max_body: u32) -> Result<Self, DecodeError> {
        let mut r = Reader::new(bytes);
        let magic = r.array::<2>()?;
        if magic != MAGIC {
            let value = if magic[0] == MAGIC[0] { magic[1] } else { magic[0] };
            return Err(DecodeError::UnknownValue { field: "magic", value });
        }
        let version = r.u8()?;
        if version != VERSION {
            return Err(DecodeError::UnsupportedVersion(version));
        }
        let kind = r.u8()?;
        let body_len = r.u32()?;
        let sender = r.u64()?;
        let receiver = r.u64()?;
        let declared = r.u32()?;
        let computed = crc32c::crc32c(&bytes[..24]);
        if declared != computed {
            return Err(DecodeError::ChecksumMismatch { declared, computed });
        }
        let sender = SessionId::new(sender)
            .ok_or(DecodeError::UnknownValue { field: "sender", value: 0 })?;
        if body_len > max_body {
            return Err(DecodeError::TooLong { declared: body_len, limit: max_body });
        }
        Ok(Self { kind, body_len, sender, receiver: SessionId::new(receiver), frame_crc: r.u32()? })
    }

    /// Checks the frame checksum over `header_bytes` and `body` (exactly `body_len` bytes) and
    /// decodes the body.
    ///
    /// # Errors
    /// `ChecksumMismatch` for a damaged body, `UnknownKind`, or any error of the kind's decoder
    /// (including `TrailingBytes`).
    pub fn decode_body(
        &self,
        header_bytes: &[u8; HEADER_LEN],
        body: &[u8],
    ) -> Result<Frame, DecodeError> {
        let computed = crc32c::crc32c_append(crc32c::crc32c(&header_bytes[..24]), body);
        if computed != self.frame_crc {
            return Err(DecodeError::ChecksumMismatch { declared: self.frame_crc, computed });
        }
        let mut r = Reader::new(body);
        let body = FrameBody::decode(self.kind, &mut r)?;
        r.finish()?;
        Ok(Frame { sender: self.sender, receiver: self.receiver, body })
    }
}

/// Appends a frame of `kind` whose body `write_body` appends, then fills in the length and
/// checksums. The session uses it to encode a payload straight from its send buffer.
///
/// # Panics
/// If the body is longer than `u32::MAX` bytes (see [`Frame::encode`]).
pub(crate) fn encode_with(
    kind: u8,
    sender: SessionId,
    receiver: Option<SessionId>,
    buf: &mut Vec<u8>,
    write_body: impl FnOnce(&mut Vec<u8>),
) {
    let start = buf.len();
    buf.extend_from_slice(&MAGIC);
    buf.push(VERSION);
    buf.push(kind);
    buf.extend_from_slice(&[0; 4]);
    buf.extend_from_slice(&sender.get().to_le_bytes());
    buf.extend_from_slice(&receiver.map_or(0, SessionId::get).to_le_bytes());
    buf.extend_from_slice(&[0; 8]);
    write_body(buf);
    let body_len = buf.len() - start - HEADER_LEN;
    let body_len = u32::try_from(body_len).expect("payloads are limited far below 4 GiB");
    buf[start + 4..start + 8].copy_from_slice(&body_len.to_le_bytes());
    let header_crc = crc32c::crc32c(&buf[start..start + 24]);
    buf[start + 24..start + 28].copy_from_slice(&header_crc.to_le_bytes());
    // The frame checksum continues from the header checksum's state over the same 24 bytes.
    let frame_crc = crc32c::crc32c_append(header_crc, &buf[start + HEADER_LEN..]);
    buf[start + 28..start + 32].copy_from_slice(&frame_crc.to_le_bytes());
}

pub(crate) const KIND_HELLO: u8 = 0x01;
pub(crate) const KIND_DATA: u8 = 0x02;
pub(crate) const KIND_ACK: u8 = 0x03;
pub(crate) const KIND_DATAGRAM: u8 = 0x04;
pub(crate) const KIND_HEARTBEAT: u8 = 0x05;
pub(crate) const KIND_HEARTBEAT_ACK: u8 = 0x06;
pub(crate) const KIND_CLOSE: u8 = 0x07;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reliable::body::AckRange;
    use crate::reliable::ids::{MessageId, StreamId};

    fn id(n: u64) -> SessionId {
        SessionId::new(n).unwrap()
    }

    fn all_kinds() -> Vec<Frame> {
        let bodies = vec![
            FrameBody::Hello(Hello {
                reply_wanted: true,
                link: 2,
                echo: 1,
                first: StreamId(0),
                last: StreamId(u32::MAX),
                delivered: vec![(StreamId(1), MessageId(9)), (StreamId(4), MessageId(2))],
            }),
            FrameBody::Data(Data {
                stream: StreamId(3),
                id: MessageId(77),
                payload: b"hi".to_vec(),
            }),
            FrameBody::Ack(Ack {
                stream: StreamId(3),
                delivered: MessageId(5),
                held: vec![AckRange { first: MessageId(7), last: MessageId(9) }],
            }),
            FrameBody::Datagram(Data { stream: StreamId(0), id: MessageId(1), payload: vec![] }),
            FrameBody::Heartbeat(Heartbeat { nonce: 42 }),
            FrameBody::HeartbeatAck(Heartbeat { nonce: 42 }),
            FrameBody::Close,
        ];
        bodies
            .into_iter()
            .map(|body| Frame { sender: id(1), receiver: Some(id(2)), body })
            .collect()
    }

    #[test]
    fn every_kind_round_trips_and_trailing_bytes_are_rejected() {
        for frame in all_kinds() {
            let mut buf = Vec::new();
            frame.encode(&mut buf);
            assert_eq!(Frame::decode(&buf, 1024), Ok(frame.clone()));
            buf.push(0);
            assert_eq!(Frame::decode(&buf, 1024), Err(DecodeError::TrailingBytes(1)));
            buf.truncate(buf.len() - 2);
            assert_eq!(Frame::decode(&buf, 1024), Err(DecodeError::Truncated));
        }
    }

    #[test]
    fn every_flipped_bit_is_detected() {
        for frame in all_kinds() {
            let mut buf = Vec::new();
            frame.encode(&mut buf);
            for bit in 0..buf.len() * 8 {
                let mut bad = buf.clone();
                bad[bit / 8] ^= 1 << (bit % 8);
                assert!(Frame::decode(&bad, 1024).is_err(), "bit {bit} of {frame:?}");
            }
        }
    }

    #[test]
    fn header_errors_are_precise() {
        let mut buf = Vec::new();
        all_kinds()[1].encode(&mut buf);
        let header: [u8; HEADER_LEN] = buf[..HEADER_LEN].try_into().unwrap();
        let mut bad = header;
        bad[0] = b'X';
        assert_eq!(
            FrameHeader::decode(&bad, 1024),
            Err(DecodeError::UnknownValue { field: "magic", value: b'X' })
        );
        let mut bad = header;
        bad[2] = 9;
        assert_eq!(FrameHeader::decode(&bad, 1024), Err(DecodeError::UnsupportedVersion(9)));
        assert_eq!(
            FrameHeader::decode(&header, 4),
            Err(DecodeError::TooLong { declared: 14, limit: 4 })
        );
        let mut zero_sender = Vec::new();
        encode_with(KIND_CLOSE, id(1), None, &mut zero_sender, |_| {});
        zero_sender[8..16].fill(0);
        let crc = crc32c::crc32c(&zero_sender[..24]);
        zero_sender[24..28].copy_from_slice(&crc.to_le_bytes());
        assert_eq!(
            Frame::decode(&zero_sender, 1024),
            Err(DecodeError::UnknownValue { field: "sender", value: 0 })
        );
    }

    #[test]
    fn an_unknown_kind_with_valid_checksums_is_reported_as_such() {
        let mut buf = Vec::new();
        encode_with(0x7f, id(1), Some(id(2)), &mut buf, |b| b.push(1));
        assert_eq!(Frame::decode(&buf, 1024), Err(DecodeError::UnknownKind(0x7f)));
    }
}
