//! Frames of a remote node's tunnel: one TCP connection that carries the node's control packets
//! and the bytes of every link the broker would otherwise have passed it as a descriptor
//! (`docs/network.md` §14).
//!
//! ```text
//! 0 kind u8 | 1 channel u32 | 5 payload_len u32 | 9 payload
//!
//! Control (1)  channel 0   | count u8 (≤ 4) | count × channel u32 (≠ 0) | control packet
//! Data    (2)  channel ≠ 0 | 1 to 64 KiB of the link's byte stream
//! Credit  (3)  channel ≠ 0 | bytes u32: the receiver passed that many more on; send them
//! Eof     (4)  any channel | empty: the sender's direction is over (its local writer is done)
//! Reset   (5)  channel ≠ 0 | empty: the sender's local reader went away: stop sending, end
//!                            your direction with Eof
//! Ping    (6)  channel 0   | empty: keeps a quiet tunnel alive
//! ```
//!
//! Channel 0 is the control channel; the broker's side numbers the links' channels from 1, as
//! it passes them. A control packet names the channels that stand in for the descriptors
//! passed beside it, in order. All integers are little-endian. A declared length over the
//! limit is refused from the header alone, before the payload is read.

use super::{DecodeError, Reader};

/// One channel of a tunnel: 0 is the control channel, links count from 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChannelId(pub u32);

impl ChannelId {
    /// The control channel.
    pub const CONTROL: Self = Self(0);
}

/// One decoded tunnel frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TunnelFrame {
    /// A control packet, and the channels standing in for the descriptors passed beside it.
    Control {
        /// New channels, one per descriptor, in order.
        channels: Vec<ChannelId>,
        /// The control packet (`ControlMessage` bytes, not decoded here).
        packet: Vec<u8>,
    },
    /// Bytes of a link's stream.
    Data {
        /// The link's channel.
        channel: ChannelId,
        /// The bytes, in stream order.
        bytes: Vec<u8>,
    },
    /// The receiver of a channel's data passed `bytes` more of it on: the sender may send that
    /// many more.
    Credit {
        /// The channel.
        channel: ChannelId,
        /// Bytes returned to the sender's window.
        bytes: u32,
    },
    /// The sender's direction of the channel is over (its local writer is done, or it was
    /// asked to stop); on channel 0, its control socket closed.
    Eof {
        /// The channel.
        channel: ChannelId,
    },
    /// The sender's local reader went away: the receiver stops sending on the channel (and
    /// ends its direction with `Eof`).
    Reset {
        /// The channel.
        channel: ChannelId,
    },
    /// Nothing: a tunnel that has been quiet says it is alive.
    Ping,
}

/// A streaming decoder: bytes in as they arrive from the connection, whole frames out.
///
/// After a decode error the stream cannot be resynchronised: every later call returns
/// [`DecodeError::Poisoned`].
#[derive(Debug, Default)]
pub struct TunnelDecoder {
    buffer: Vec<u8>,
    start: usize,
    poisoned: bool,
}

impl TunnelFrame {
    /// Appends the encoded frame to `buf`.
    ///
    /// The caller keeps within the limits ([`MAX_DATA_LEN`], [`MAX_PASSED`],
    /// [`MAX_PACKET_LEN`]); a frame beyond them encodes, but its receiver refuses it.
    pub fn encode(&self, buf: &mut Vec<u8>) {
        match self {
            Self::Control { channels, packet } => {
                let len = 1 + 4 * channels.len() + packet.len();
                put_header(buf, KIND_CONTROL, ChannelId::CONTROL, len);
                // More than 255 channels cannot be told; the receiver then refuses the frame
                // for its length, never misreads it.
                buf.push(u8::try_from(channels.len()).unwrap_or(u8::MAX));
                for channel in channels {
                    buf.extend_from_slice(&channel.0.to_le_bytes());
                }
                buf.extend_from_slice(packet);
            }
            Self::Data { channel, bytes } => encode_data(buf, *channel, bytes),
            Self::Credit { channel, bytes } => {
                put_header(buf, KIND_CREDIT, *channel, 4);
                buf.extend_from_slice(&bytes.to_le_bytes());
            }
            Self::Eof { channel } => put_header(buf, KIND_EOF, *channel, 0),
            Self::Reset { channel } => put_header(buf, KIND_RESET, *channel, 0),
            Self::Ping => put_header(buf, KIND_PING, ChannelId::CONTROL, 0),
        }
    }

    /// Decodes exactly one whole frame; trailing bytes are an error.
    ///
    /// # Errors
    /// [`DecodeError`]: `Truncated`, `UnknownKind`, `TooLong`, `TrailingBytes`,
    /// `ReservedNotZero` (a control or ping frame off channel 0), `UnknownValue` (a link frame
    /// on channel 0, or a control frame passing channel 0).
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut reader = Reader::new(bytes);
        let header = Header::decode(&mut reader)?;
        let payload = reader.take(header.len as usize)?;
        reader.finish()?;
        header.frame(payload)
    }
}

impl TunnelDecoder {
    /// An empty decoder.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds bytes read from the connection.
    pub fn handle_bytes(&mut self, bytes: &[u8]) {
        if self.start > 0 && self.start == self.buffer.len() {
            self.buffer.clear();
            self.start = 0;
        }
        self.buffer.extend_from_slice(bytes);
    }

    /// The next whole frame, if one has arrived. Call after every
    /// [`handle_bytes`](Self::handle_bytes) until it returns `Ok(None)`.
    ///
    /// # Errors
    /// As [`TunnelFrame::decode`], as soon as a header shows the error (a length over the
    /// limit is refused before its payload arrives); then `Poisoned` for good.
    pub fn poll_frame(&mut self) -> Result<Option<TunnelFrame>, DecodeError> {
        if self.poisoned {
            return Err(DecodeError::Poisoned);
        }
        let pending = &self.buffer[self.start..];
        if pending.len() < HEADER_LEN {
            return Ok(None);
        }
        let mut reader = Reader::new(pending);
        let result = Header::decode(&mut reader).and_then(|header| {
            let end = HEADER_LEN + header.len as usize;
            match pending.get(HEADER_LEN..end) {
                Some(payload) => header.frame(payload).map(|frame| Some((frame, end))),
                None => Ok(None),
            }
        });
        match result {
            Ok(Some((frame, used))) => {
                self.start += used;
                if self.start >= COMPACT_AT {
                    self.buffer.drain(..self.start);
                    self.start = 0;
                }
                Ok(Some(frame))
            }
            Ok(None) => Ok(None),
            Err(error) => {
                self.poisoned = true;
                self.buffer = Vec::new();
                self.start = 0;
                Err(error)
            }
        }
    }
}

/// Appends a [`TunnelFrame::Data`] frame of `bytes` without building the frame first.
pub fn encode_data(buf: &mut Vec<u8>, channel: ChannelId, bytes: &[u8]) {
    put_header(buf, KIND_DATA, channel, bytes.len());
    buf.extend_from_slice(bytes);
}

/// A frame's header, checked against the limits of its kind.
#[derive(Debug, Clone, Copy)]
struct Header {
    kind: u8,
    channel: ChannelId,
    len: u32,
}

impl Header {
    fn decode(reader: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let kind = reader.u8()?;
        let channel = ChannelId(reader.u32()?);
        let len = reader.u32()?;
        let limit = match kind {
            KIND_CONTROL => MAX_CONTROL_PAYLOAD,
            KIND_DATA => MAX_DATA_LEN,
            KIND_CREDIT => 4,
            KIND_EOF | KIND_RESET | KIND_PING => 0,
            other => return Err(DecodeError::UnknownKind(other)),
        };
        if len > limit {
            return Err(match kind {
                KIND_CREDIT | KIND_EOF | KIND_RESET | KIND_PING => {
                    DecodeError::TrailingBytes((len - limit) as usize)
                }
                _ => DecodeError::TooLong { declared: len, limit },
            });
        }
        let on_control = channel == ChannelId::CONTROL;
        match kind {
            KIND_CONTROL | KIND_PING if !on_control => Err(DecodeError::ReservedNotZero),
            KIND_DATA | KIND_CREDIT | KIND_RESET if on_control => {
                Err(DecodeError::UnknownValue { field: "channel", value: 0 })
            }
            _ => Ok(Self { kind, channel, len }),
        }
    }

    /// The frame of this header with `payload` (exactly `len` bytes).
    fn frame(self, payload: &[u8]) -> Result<TunnelFrame, DecodeError> {
        let channel = self.channel;
        let mut reader = Reader::new(payload);
        let frame = match self.kind {
            KIND_CONTROL => {
                let count = reader.u8()?;
                if usize::from(count) > MAX_PASSED {
                    return Err(DecodeError::TooLong {
                        declared: u32::from(count),
                        limit: MAX_PASSED as u32,
                    });
                }
                let channels = (0..count)
                    .map(|_| match reader.u32()? {
                        0 => Err(DecodeError::UnknownValue { field: "channel", value: 0 }),
                        id => Ok(ChannelId(id)),
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                let packet = reader.take(reader.remaining())?;
                if packet.is_empty() {
                    return Err(DecodeError::Truncated);
                }
                TunnelFrame::Control { channels, packet: packet.to_vec() }
            }
            KIND_DATA => {
                let bytes = reader.take(reader.remaining())?;
                if bytes.is_empty() {
                    return Err(DecodeError::Truncated);
                }
                TunnelFrame::Data { channel, bytes: bytes.to_vec() }
            }
            KIND_CREDIT => TunnelFrame::Credit { channel, bytes: reader.u32()? },
            KIND_EOF => TunnelFrame::Eof { channel },
            KIND_RESET => TunnelFrame::Reset { channel },
            KIND_PING => TunnelFrame::Ping,
            other => return Err(DecodeError::UnknownKind(other)),
        };
        reader.finish()?;
        Ok(frame)
    }
}

fn put_header(buf: &mut Vec<u8>, kind: u8, channel: ChannelId, len: usize) {
    buf.push(kind);
    buf.extend_from_slice(&channel.0.to_le_bytes());
    // A payload past u32::MAX cannot be built by this crate's callers (they keep to the
    // limits); saturating makes the receiver refuse it rather than misread it.
    buf.extend_from_slice(&u32::try_from(len).unwrap_or(u32::MAX).to_le_bytes());
}

/// Bytes of a frame header.
pub const HEADER_LEN: usize = 9;
/// The most bytes of a link's stream one data frame carries.
pub const MAX_DATA_LEN: u32 = 64 * 1024;
/// The most descriptors (channels) one control packet passes.
pub const MAX_PASSED: usize = 4;
/// The longest control packet a tunnel carries (as the control socket's).
pub const MAX_PACKET_LEN: usize = super::control::MAX_CONTROL_LEN;

const MAX_CONTROL_PAYLOAD: u32 = (1 + 4 * MAX_PASSED + MAX_PACKET_LEN) as u32;
/// Consumed bytes are dropped from the decoder's buffer once this many have piled up.
const COMPACT_AT: usize = 256 * 1024;

const KIND_CONTROL: u8 = 1;
const KIND_DATA: u8 = 2;
const KIND_CREDIT: u8 = 3;
const KIND_EOF: u8 = 4;
const KIND_RESET: u8 = 5;
const KIND_PING: u8 = 6;

#[cfg(test)]
mod tests {
    use super::*;

    fn every_kind() -> Vec<TunnelFrame> {
        vec![
            TunnelFrame::Control {
                channels: vec![ChannelId(1), ChannelId(7)],
                packet: b"control packet".to_vec(),
            },
            TunnelFrame::Control { channels: Vec::new(), packet: vec![0x42] },
            TunnelFrame::Data { channel: ChannelId(3), bytes: vec![9; 300] },
            TunnelFrame::Credit { channel: ChannelId(3), bytes: 65_536 },
            TunnelFrame::Eof { channel: ChannelId(0) },
            TunnelFrame::Eof { channel: ChannelId(5) },
            TunnelFrame::Reset { channel: ChannelId(5) },
            TunnelFrame::Ping,
        ]
    }

    #[test]
    fn every_frame_kind_decodes_to_what_was_encoded() {
        for frame in every_kind() {
            let mut buf = Vec::new();
            frame.encode(&mut buf);
            assert_eq!(TunnelFrame::decode(&buf), Ok(frame.clone()));
            buf.push(0);
            assert_eq!(TunnelFrame::decode(&buf), Err(DecodeError::TrailingBytes(1)));
        }
    }

    #[test]
    fn a_stream_cut_anywhere_decodes_the_same_frames() {
        let frames = every_kind();
        let mut stream = Vec::new();
        for frame in &frames {
            frame.encode(&mut stream);
        }
        for piece in [1, 2, 5, 9, 10, 64, stream.len()] {
            let mut decoder = TunnelDecoder::new();
            let mut out = Vec::new();
            for chunk in stream.chunks(piece) {
                decoder.handle_bytes(chunk);
                while let Some(frame) = decoder.poll_frame().unwrap() {
                    out.push(frame);
                }
            }
            assert_eq!(out, frames, "pieces of {piece} bytes");
        }
    }

    #[test]
    fn an_oversized_length_is_refused_from_the_header_alone() {
        let mut decoder = TunnelDecoder::new();
        let mut header = vec![KIND_DATA];
        header.extend_from_slice(&1u32.to_le_bytes());
        header.extend_from_slice(&(MAX_DATA_LEN + 1).to_le_bytes());
        decoder.handle_bytes(&header);
        assert_eq!(
            decoder.poll_frame(),
            Err(DecodeError::TooLong { declared: MAX_DATA_LEN + 1, limit: MAX_DATA_LEN })
        );
        decoder.handle_bytes(&[0; 64]);
        assert_eq!(decoder.poll_frame(), Err(DecodeError::Poisoned));
        let mut huge = vec![KIND_CONTROL, 0, 0, 0, 0];
        huge.extend_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(TunnelFrame::decode(&huge), Err(DecodeError::TooLong { .. })));
    }

    #[test]
    fn frames_on_the_wrong_channel_or_with_bad_contents_are_refused() {
        let raw = |kind: u8, channel: u32, payload: &[u8]| {
            let mut buf = vec![kind];
            buf.extend_from_slice(&channel.to_le_bytes());
            buf.extend_from_slice(&(payload.len() as u32).to_le_bytes());
            buf.extend_from_slice(payload);
            TunnelFrame::decode(&buf)
        };
        let zero_channel = DecodeError::UnknownValue { field: "channel", value: 0 };
        assert_eq!(raw(KIND_CONTROL, 1, &[0, 1]), Err(DecodeError::ReservedNotZero));
        assert_eq!(raw(KIND_PING, 2, &[]), Err(DecodeError::ReservedNotZero));
        assert_eq!(raw(KIND_DATA, 0, &[1]), Err(zero_channel));
        assert_eq!(raw(KIND_RESET, 0, &[]), Err(zero_channel));
        assert_eq!(raw(KIND_DATA, 1, &[]), Err(DecodeError::Truncated));
        assert_eq!(raw(KIND_CONTROL, 0, &[0]), Err(DecodeError::Truncated), "no packet");
        assert_eq!(raw(KIND_CONTROL, 0, &[]), Err(DecodeError::Truncated));
        assert_eq!(raw(KIND_CONTROL, 0, &[1, 0, 0, 0, 0, 9]), Err(zero_channel));
        assert_eq!(raw(KIND_CONTROL, 0, &[2, 1, 0, 0, 0]), Err(DecodeError::Truncated));
        assert_eq!(
            raw(KIND_CONTROL, 0, &[5, 1, 0, 0, 0, 2, 0, 0, 0, 3, 0, 0, 0, 4, 0, 0, 0, 5, 0, 0, 0]),
            Err(DecodeError::TooLong { declared: 5, limit: 4 })
        );
        assert_eq!(raw(KIND_CREDIT, 1, &[1, 2]), Err(DecodeError::Truncated));
        assert_eq!(raw(KIND_CREDIT, 1, &[1, 2, 3, 4, 5]), Err(DecodeError::TrailingBytes(1)));
        assert_eq!(raw(KIND_EOF, 1, &[1]), Err(DecodeError::TrailingBytes(1)));
        assert_eq!(raw(0, 0, &[]), Err(DecodeError::UnknownKind(0)));
        assert_eq!(raw(0xff, 0, &[]), Err(DecodeError::UnknownKind(0xff)));
    }

    #[test]
    fn every_single_byte_change_decodes_or_errs_and_never_panics() {
        for frame in every_kind() {
            let mut buf = Vec::new();
            frame.encode(&mut buf);
            for index in 0..buf.len() {
                for value in [0u8, 1, 0x7f, 0x80, 0xff] {
                    let mut changed = buf.clone();
                    changed[index] = value;
                    let _ = TunnelFrame::decode(&changed);
                    let mut decoder = TunnelDecoder::new();
                    decoder.handle_bytes(&changed);
                    while let Ok(Some(_)) = decoder.poll_frame() {}
                }
            }
            for cut in 0..buf.len() {
                assert!(TunnelFrame::decode(&buf[..cut]).is_err());
            }
        }
    }
}
