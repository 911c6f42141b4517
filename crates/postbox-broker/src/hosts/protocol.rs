//! What two brokers say to each other on a host link: opening and closing a remote
//! connection, and the data frames it carries, one or a batch at a time (docs/network.md §4).
//!
//! Every message names one remote connection (a *channel*): the broker that opened it
//! numbered it, and a flag says whether that was the sender or the receiver of the message,
//! so the two brokers' numbers never collide.

use postbox_core::wire::{put_text, DecodeError, Reader};
use postbox_core::{PortName, PortSpec, Quota, Rights};
use postbox_transport::host_link::StreamId;

/// One remote connection, as this broker names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct Channel {
    /// This broker opened it (for one of its nodes); otherwise the peer did.
    pub(crate) opened_here: bool,
    /// The opener's number for it.
    pub(crate) number: u64,
}

/// One message between brokers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum HostMessage {
    /// Opener → peer: connect to your port `port` for one of my nodes, with these rights.
    Open { channel: Channel, port: PortName, rights: Rights },
    /// Peer → opener: connected; the port buffers as `spec`, the link carries `rights`.
    Opened { channel: Channel, spec: PortSpec, rights: Rights, quota: Quota },
    /// Peer → opener: not connected, and why.
    Refused { channel: Channel, reason: Refusal, detail: String },
    /// Either way: one data frame (header and body, docs/wire-format.md §2) of the link.
    Frame { channel: Channel, frame: Vec<u8> },
    /// Either way: consecutive data frames of the link, back to back (each one delimited by
    /// its header's body length), so that a batch crosses as one host message and leaves
    /// the far gateway in one write.
    Frames { channel: Channel, frames: Vec<u8> },
    /// Either way: the link closed at this end; the other end closes too.
    Close { channel: Channel },
}

/// Why a remote connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// No port by that name on the peer.
    NoSuchPort,
    /// The peer's policy does not let this host use the port.
    Denied,
    /// A limit of the peer's was reached.
    LimitExceeded,
}

impl Channel {
    /// The stream of the host link its messages travel on: always the same one for a channel
    /// (so they stay in order), spread over a fixed set (so the session never runs out of
    /// streams, and a loss delays only the channels that share a stream).
    pub(crate) fn stream(self) -> StreamId {
        let spread = self.number.wrapping_mul(2) + u64::from(self.opened_here);
        // The remainder is below STREAMS, a u32.
        StreamId(1 + (spread % u64::from(STREAMS)) as u32)
    }
}

impl HostMessage {
    /// The channel the message is about.
    pub(crate) fn channel(&self) -> Channel {
        match self {
            Self::Open { channel, .. }
            | Self::Opened { channel, .. }
            | Self::Refused { channel, .. }
            | Self::Frame { channel, .. }
            | Self::Frames { channel, .. }
            | Self::Close { channel } => *channel,
        }
    }

    /// The message as this broker sends it.
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut buf = Vec::with_capacity(32);
        let (kind, channel) = match self {
            Self::Open { channel, .. } => (OPEN, channel),
            Self::Opened { channel, .. } => (OPENED, channel),
            Self::Refused { channel, .. } => (REFUSED, channel),
            Self::Frame { channel, frame } => {
                buf.reserve(frame.len());
                (FRAME, channel)
            }
            Self::Frames { channel, frames } => {
                buf.reserve(frames.len());
                (FRAMES, channel)
            }
            Self::Close { channel } => (CLOSE, channel),
        };
        buf.push(kind);
        // From the receiver's point of view: 0 when the sender (this broker) opened it.
        buf.push(u8::from(!channel.opened_here));
        buf.extend_from_slice(&channel.number.to_le_bytes());
        match self {
            Self::Open { port, rights, .. } => {
                put_text(&mut buf, port.as_str());
                buf.push(rights.to_u8());
            }
            Self::Opened { spec, rights, quota, .. } => {
                spec.encode(&mut buf);
                buf.push(rights.to_u8());
                buf.extend_from_slice(&quota.calls_in_flight.to_le_bytes());
                buf.extend_from_slice(&quota.queued_bytes.to_le_bytes());
            }
            Self::Refused { reason, detail, .. } => {
                buf.push(*reason as u8);
                put_text(&mut buf, truncated(detail));
            }
            Self::Frame { frame, .. } => buf.extend_from_slice(frame),
            Self::Frames { frames, .. } => buf.extend_from_slice(frames),
            Self::Close { .. } => {}
        }
        buf
    }

    /// Decodes a message from the peer (untrusted bytes: every malformed input is an error).
    pub(crate) fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(bytes);
        let kind = r.u8()?;
        let opened_here = match r.u8()? {
            0 => false,
            1 => true,
            value => return Err(DecodeError::UnknownValue { field: "channel origin", value }),
        };
        let channel = Channel { opened_here, number: r.u64()? };
        let message = match kind {
            OPEN => {
                let port = PortName::new(r.text()?).map_err(|_| DecodeError::InvalidName)?;
                Self::Open { channel, port, rights: rights(r.u8()?)? }
            }
            OPENED => {
                let spec = PortSpec::decode(&mut r)?;
                let rights = rights(r.u8()?)?;
                let quota = Quota { calls_in_flight: r.u32()?, queued_bytes: r.u64()? };
                Self::Opened { channel, spec, rights, quota }
            }
            REFUSED => {
                let reason = match r.u8()? {
                    0 => Refusal::NoSuchPort,
                    1 => Refusal::Denied,
                    2 => Refusal::LimitExceeded,
                    value => return Err(DecodeError::UnknownValue { field: "refusal", value }),
                };
                Self::Refused { channel, reason, detail: r.text()?.to_owned() }
            }
            FRAME => {
                let frame = r.take(r.remaining())?.to_vec();
                Self::Frame { channel, frame }
            }
            FRAMES => {
                let frames = r.take(r.remaining())?.to_vec();
                Self::Frames { channel, frames }
            }
            CLOSE => Self::Close { channel },
            value => return Err(DecodeError::UnknownValue { field: "host message kind", value }),
        };
        r.finish()?;
        Ok(message)
    }
}

fn rights(bits: u8) -> Result<Rights, DecodeError> {
    Rights::from_u8(bits).ok_or(DecodeError::UnknownValue { field: "rights", value: bits })
}

/// At most 1024 bytes of a detail, cut at a character boundary.
fn truncated(detail: &str) -> &str {
    let mut end = detail.len().min(1024);
    while !detail.is_char_boundary(end) {
        end -= 1;
    }
    &detail[..end]
}

/// Streams the channels of one host link are spread over.
const STREAMS: u32 = 64;

const OPEN: u8 = 1;
const OPENED: u8 = 2;
const REFUSED: u8 = 3;
const FRAME: u8 = 4;
const CLOSE: u8 = 5;
const FRAMES: u8 = 6;

#[cfg(test)]
mod tests {
    use super::*;

    /// What the peer decodes from what this broker encodes: the same message with the
    /// channel's origin seen from the other side.
    fn across(message: &HostMessage) -> HostMessage {
        HostMessage::decode(&message.encode()).unwrap()
    }

    #[test]
    fn messages_survive_the_trip_with_the_origin_flipped() {
        let mine = Channel { opened_here: true, number: 7 };
        let theirs = Channel { opened_here: false, number: 7 };
        let open = HostMessage::Open {
            channel: mine,
            port: PortName::new("echo").unwrap(),
            rights: Rights::CALL,
        };
        assert_eq!(
            across(&open),
            HostMessage::Open {
                channel: theirs,
                port: PortName::new("echo").unwrap(),
                rights: Rights::CALL
            }
        );
        let opened = HostMessage::Opened {
            channel: theirs,
            spec: PortSpec::default(),
            rights: Rights::ALL,
            quota: Quota::default(),
        };
        assert_eq!(across(&opened).channel(), mine);
        let refused = HostMessage::Refused {
            channel: theirs,
            reason: Refusal::Denied,
            detail: "é".repeat(600),
        };
        let HostMessage::Refused { reason, detail, .. } = across(&refused) else { panic!() };
        assert_eq!((reason, detail.len()), (Refusal::Denied, 1024));
        let frame = HostMessage::Frame { channel: mine, frame: vec![1, 2, 3] };
        assert_eq!(across(&frame), HostMessage::Frame { channel: theirs, frame: vec![1, 2, 3] });
        let frames = HostMessage::Frames { channel: mine, frames: vec![4; 70] };
        assert_eq!(across(&frames), HostMessage::Frames { channel: theirs, frames: vec![4; 70] });
        assert_eq!(
            across(&HostMessage::Close { channel: mine }),
            HostMessage::Close { channel: theirs }
        );
    }

    #[test]
    fn malformed_messages_are_errors_never_panics() {
        let valid = HostMessage::Opened {
            channel: Channel { opened_here: true, number: 1 },
            spec: PortSpec::default(),
            rights: Rights::ALL,
            quota: Quota::default(),
        }
        .encode();
        for len in 0..valid.len() {
            assert!(HostMessage::decode(&valid[..len]).is_err(), "prefix of {len} bytes");
        }
        let mut trailing = valid.clone();
        trailing.push(0);
        assert!(HostMessage::decode(&trailing).is_err());
        for (index, value) in [(0, 9u8), (1, 2), (valid.len() - 13, 0xff)] {
            let mut bad = valid.clone();
            bad[index] = value;
            assert!(HostMessage::decode(&bad).is_err(), "byte {index} = {value}");
        }
        // Every single byte value at every position: an error or a message, never a panic.
        for index in 0..valid.len() {
            for value in 0..=255u8 {
                let mut bytes = valid.clone();
                bytes[index] = value;
                let _ = HostMessage::decode(&bytes);
            }
        }
    }

    #[test]
    fn a_channel_always_uses_the_same_stream_within_the_set() {
        for number in [0, 1, 63, 64, u64::MAX] {
            for opened_here in [false, true] {
                let stream = Channel { opened_here, number }.stream();
                assert!((1..=STREAMS).contains(&stream.0));
                assert_eq!(stream, Channel { opened_here, number }.stream());
            }
        }
    }
}
