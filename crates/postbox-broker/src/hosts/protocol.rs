//! What two brokers say to each other on a host link: opening and closing a remote
//! connection (to a port, a mailbox, a topic or a node's inbox), and the data frames it
//! carries, one or a batch at a time (docs/network.md §4).
//!
//! Every message but one names one remote connection (a *channel*): the broker that opened
//! it numbered it, and a flag says whether that was the sender or the receiver of the
//! message, so the two brokers' numbers never collide. The exception, `Run`, tells the peer
//! which run of the sender's broker it talks to. Every message but `Datagram` is one reliable
//! message of the session; a `Datagram` is one best-effort datagram (docs/network.md §13).

use std::net::SocketAddr;

use postbox_core::wire::{put_text, DecodeError, Reader};
use postbox_core::{PortName, PortSpec, ProcessId, Quota, Rights};
use postbox_transport::direct_link::{DirectToken, TOKEN_LEN};
use postbox_transport::host_link::StreamId;

use super::identity::NodeRef;

/// One remote connection, as this broker names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct Channel {
    /// This broker opened it (for one of its nodes); otherwise the peer did.
    pub(crate) opened_here: bool,
    /// The opener's number for it.
    pub(crate) number: u64,
}

/// What a channel is opened to, on the peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum OpenTarget {
    /// A port, or a mailbox to send to (the name says which, as for a local `Connect`).
    Port(PortName),
    /// A mailbox to receive from.
    Mailbox(PortName),
    /// A topic to publish to.
    Publish(PortName),
    /// Topics to subscribe to, with the subscriber's queue at the peer.
    Subscribe { pattern: String, capacity: u32, drop_newest: bool },
    /// The inbox of one of the peer's nodes, admitted by the peer's run `incarnation` (0:
    /// whichever run is current).
    Inbox { incarnation: u64, process: ProcessId },
}

/// What travels on a channel, which decides the frames allowed each way and the senders
/// named inside them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ChannelKind {
    /// A port's, an inbox's, or a link into a mailbox or a topic: calls and messages to the
    /// server; replies and credits back.
    Port,
    /// A mailbox's receiving link: pulls and acknowledgements to the mailbox; deliveries
    /// (which name their sender) back.
    Mailbox,
    /// A subscription: credits to the topics; publications (which name their publisher)
    /// back.
    Subscription,
}

/// One message between brokers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum HostMessage {
    /// Opener → peer: connect `target` for my node `client`, with these rights; with
    /// `direct`, by a direct link if the peer agrees (docs/network.md §15).
    Open { channel: Channel, target: OpenTarget, rights: Rights, client: NodeRef, direct: bool },
    /// Peer → opener: connected; the endpoint buffers as `spec`, the link carries `rights`,
    /// and `server` is at the other end.
    Opened { channel: Channel, spec: PortSpec, rights: Rights, quota: Quota, server: NodeRef },
    /// Peer → opener, for an `Open` with `direct`: dial `address` and present `token` for a
    /// direct link to the endpoint (which buffers as `spec`, with `rights`, served by
    /// `server`); the channel itself is done with (docs/network.md §15).
    OpenedDirect {
        channel: Channel,
        spec: PortSpec,
        rights: Rights,
        quota: Quota,
        server: NodeRef,
        address: SocketAddr,
        token: DirectToken,
    },
    /// Peer → opener: not connected, and why.
    Refused { channel: Channel, reason: Refusal, detail: String },
    /// Either way: one data frame (header and body, docs/wire-format.md §2) of the link.
    Frame { channel: Channel, frame: Vec<u8> },
    /// Either way: consecutive data frames of the link, back to back (each one delimited by
    /// its header's body length), so that a batch crosses as one host message and leaves
    /// the far gateway in one write.
    Frames { channel: Channel, frames: Vec<u8> },
    /// Either way: the link closed at this end; the other end closes too. On a channel to a
    /// datagram port the client's side says the number of the last frame it sent (`last`), so
    /// that the port's side waits briefly for datagrams the close overtook and counts those
    /// that never come.
    Close { channel: Channel, last: Option<u64> },
    /// Client → server, on a channel to a datagram port, as a best-effort datagram: one-way
    /// frames back to back, numbered `seq`, `seq + 1`, … in the channel's order, so that the
    /// receiver drops what comes late or twice and counts the numbers it never saw.
    Datagram { channel: Channel, seq: u64, frames: Vec<u8> },
    /// Either way, first in every session (and again when the peer restarted): the sender
    /// broker's run, its `incarnation` (docs/network.md §5). About no channel.
    Run { incarnation: u64 },
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
    /// The name is held by something else (a port or mailbox, for a topic).
    NameTaken,
    /// The name or pattern breaks the naming rules.
    InvalidName,
}

impl OpenTarget {
    /// What the channel carries.
    pub(crate) fn kind(&self) -> ChannelKind {
        match self {
            Self::Mailbox(_) => ChannelKind::Mailbox,
            Self::Subscribe { .. } => ChannelKind::Subscription,
            Self::Port(_) | Self::Publish(_) | Self::Inbox { .. } => ChannelKind::Port,
        }
    }
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
    /// The stream `Run` travels on.
    pub(crate) const RUN_STREAM: StreamId = StreamId(1);

    /// The channel the message is about (every one but `Run`).
    pub(crate) fn channel(&self) -> Option<Channel> {
        match self {
            Self::Open { channel, .. }
            | Self::Opened { channel, .. }
            | Self::OpenedDirect { channel, .. }
            | Self::Refused { channel, .. }
            | Self::Frame { channel, .. }
            | Self::Frames { channel, .. }
            | Self::Close { channel, .. }
            | Self::Datagram { channel, .. } => Some(*channel),
            Self::Run { .. } => None,
        }
    }

    /// The message as this broker sends it.
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut buf = Vec::with_capacity(32);
        let (kind, channel) = match self {
            Self::Open { channel, direct: false, .. } => (OPEN, channel),
            Self::Open { channel, direct: true, .. } => (OPEN_DIRECT, channel),
            Self::Opened { channel, .. } => (OPENED, channel),
            Self::OpenedDirect { channel, .. } => (OPENED_DIRECT, channel),
            Self::Refused { channel, .. } => (REFUSED, channel),
            Self::Frame { channel, frame } => {
                buf.reserve(frame.len());
                (FRAME, channel)
            }
            Self::Frames { channel, frames } => {
                buf.reserve(frames.len());
                (FRAMES, channel)
            }
            Self::Close { channel, .. } => (CLOSE, channel),
            Self::Datagram { channel, frames, .. } => {
                buf.reserve(8 + frames.len());
                (DATAGRAM, channel)
            }
            // About no channel: origin and channel 0.
            Self::Run { .. } => (RUN, &Channel { opened_here: true, number: 0 }),
        };
        buf.push(kind);
        // From the receiver's point of view: 0 when the sender (this broker) opened it.
        buf.push(u8::from(!channel.opened_here));
        buf.extend_from_slice(&channel.number.to_le_bytes());
        match self {
            Self::Open { target, rights, client, .. } => {
                match target {
                    OpenTarget::Port(name) => {
                        buf.push(TARGET_PORT);
                        put_text(&mut buf, name.as_str());
                    }
                    OpenTarget::Mailbox(name) => {
                        buf.push(TARGET_MAILBOX);
                        put_text(&mut buf, name.as_str());
                    }
                    OpenTarget::Publish(topic) => {
                        buf.push(TARGET_PUBLISH);
                        put_text(&mut buf, topic.as_str());
                    }
                    OpenTarget::Subscribe { pattern, capacity, drop_newest } => {
                        buf.push(TARGET_SUBSCRIBE);
                        put_text(&mut buf, pattern);
                        buf.extend_from_slice(&capacity.to_le_bytes());
                        buf.push(u8::from(*drop_newest));
                    }
                    OpenTarget::Inbox { incarnation, process } => {
                        buf.push(TARGET_INBOX);
                        buf.extend_from_slice(&incarnation.to_le_bytes());
                        buf.extend_from_slice(&process.pid.to_le_bytes());
                        buf.extend_from_slice(&process.generation.to_le_bytes());
                    }
                }
                buf.push(rights.to_u8());
                client.encode(&mut buf);
            }
            Self::Opened { spec, rights, quota, server, .. } => {
                spec.encode(&mut buf);
                buf.push(rights.to_u8());
                buf.extend_from_slice(&quota.calls_in_flight.to_le_bytes());
                buf.extend_from_slice(&quota.queued_bytes.to_le_bytes());
                server.encode(&mut buf);
            }
            Self::OpenedDirect { spec, rights, quota, server, address, token, .. } => {
                spec.encode(&mut buf);
                buf.push(rights.to_u8());
                buf.extend_from_slice(&quota.calls_in_flight.to_le_bytes());
                buf.extend_from_slice(&quota.queued_bytes.to_le_bytes());
                server.encode(&mut buf);
                put_text(&mut buf, &address.to_string());
                buf.extend_from_slice(token.as_bytes());
            }
            Self::Refused { reason, detail, .. } => {
                buf.push(*reason as u8);
                put_text(&mut buf, truncated(detail));
            }
            Self::Frame { frame, .. } => buf.extend_from_slice(frame),
            Self::Frames { frames, .. } => buf.extend_from_slice(frames),
            Self::Close { last, .. } => {
                if let Some(last) = last {
                    buf.extend_from_slice(&last.to_le_bytes());
                }
            }
            Self::Datagram { seq, frames, .. } => {
                buf.extend_from_slice(&seq.to_le_bytes());
                buf.extend_from_slice(frames);
            }
            Self::Run { incarnation } => buf.extend_from_slice(&incarnation.to_le_bytes()),
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
            OPEN | OPEN_DIRECT => {
                let name = |r: &mut Reader<'_>| {
                    PortName::new(r.text()?).map_err(|_| DecodeError::InvalidName)
                };
                let target = match r.u8()? {
                    TARGET_PORT => OpenTarget::Port(name(&mut r)?),
                    TARGET_MAILBOX => OpenTarget::Mailbox(name(&mut r)?),
                    TARGET_PUBLISH => OpenTarget::Publish(name(&mut r)?),
                    TARGET_SUBSCRIBE => OpenTarget::Subscribe {
                        pattern: r.text()?.to_owned(),
                        capacity: r.u32()?,
                        drop_newest: match r.u8()? {
                            0 => false,
                            1 => true,
                            value => {
                                return Err(DecodeError::UnknownValue {
                                    field: "drop_newest",
                                    value,
                                })
                            }
                        },
                    },
                    TARGET_INBOX => OpenTarget::Inbox {
                        incarnation: r.u64()?,
                        process: ProcessId::new(r.u32()?, r.u32()?),
                    },
                    value => return Err(DecodeError::UnknownValue { field: "target", value }),
                };
                let rights = rights(r.u8()?)?;
                let client = NodeRef::decode(&mut r)?;
                Self::Open { channel, target, rights, client, direct: kind == OPEN_DIRECT }
            }
            OPENED => {
                let spec = PortSpec::decode(&mut r)?;
                let rights = rights(r.u8()?)?;
                let quota = Quota { calls_in_flight: r.u32()?, queued_bytes: r.u64()? };
                Self::Opened { channel, spec, rights, quota, server: NodeRef::decode(&mut r)? }
            }
            OPENED_DIRECT => {
                let spec = PortSpec::decode(&mut r)?;
                let rights = rights(r.u8()?)?;
                let quota = Quota { calls_in_flight: r.u32()?, queued_bytes: r.u64()? };
                let server = NodeRef::decode(&mut r)?;
                let address = r.text()?.parse().map_err(|_| DecodeError::UnknownValue {
                    field: "direct-link address",
                    value: 0,
                })?;
                let token: [u8; TOKEN_LEN] =
                    r.take(TOKEN_LEN)?.try_into().map_err(|_| DecodeError::Truncated)?;
                let token = DirectToken::from_bytes(token);
                Self::OpenedDirect { channel, spec, rights, quota, server, address, token }
            }
            REFUSED => {
                let reason = match r.u8()? {
                    0 => Refusal::NoSuchPort,
                    1 => Refusal::Denied,
                    2 => Refusal::LimitExceeded,
                    3 => Refusal::NameTaken,
                    4 => Refusal::InvalidName,
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
            CLOSE => {
                let last = if r.remaining() > 0 { Some(r.u64()?) } else { None };
                Self::Close { channel, last }
            }
            DATAGRAM => {
                let seq = r.u64()?;
                Self::Datagram { channel, seq, frames: r.take(r.remaining())?.to_vec() }
            }
            RUN => Self::Run { incarnation: r.u64()? },
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
pub(crate) const STREAMS: u32 = 64;

const OPEN: u8 = 1;
const OPENED: u8 = 2;
const REFUSED: u8 = 3;
const FRAME: u8 = 4;
const CLOSE: u8 = 5;
const FRAMES: u8 = 6;
const DATAGRAM: u8 = 7;
const RUN: u8 = 8;
const OPEN_DIRECT: u8 = 9;
const OPENED_DIRECT: u8 = 10;
/// Bytes of a `Datagram` message before its frames: kind, origin, channel, first number.
pub(crate) const DATAGRAM_HEADER: usize = 1 + 1 + 8 + 8;

const TARGET_PORT: u8 = 0;
const TARGET_MAILBOX: u8 = 1;
const TARGET_PUBLISH: u8 = 2;
const TARGET_SUBSCRIBE: u8 = 3;
const TARGET_INBOX: u8 = 4;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hosts::HostName;

    /// What the peer decodes from what this broker encodes: the same message with the
    /// channel's origin seen from the other side.
    fn across(message: &HostMessage) -> HostMessage {
        HostMessage::decode(&message.encode()).unwrap()
    }

    fn node(host: Option<&str>) -> NodeRef {
        NodeRef {
            host: host.map(|h| HostName::new(h).unwrap()),
            incarnation: 77,
            process: ProcessId::new(1234, 5),
        }
    }

    fn targets() -> Vec<OpenTarget> {
        let name = PortName::new("jobs").unwrap();
        vec![
            OpenTarget::Port(name.clone()),
            OpenTarget::Mailbox(name.clone()),
            OpenTarget::Publish(name),
            OpenTarget::Subscribe { pattern: "/sensors/*".into(), capacity: 9, drop_newest: true },
            OpenTarget::Inbox { incarnation: 3, process: ProcessId::new(8, 2) },
        ]
    }

    #[test]
    fn messages_survive_the_trip_with_the_origin_flipped() {
        let mine = Channel { opened_here: true, number: 7 };
        let theirs = Channel { opened_here: false, number: 7 };
        for target in targets() {
            let open = HostMessage::Open {
                channel: mine,
                target: target.clone(),
                rights: Rights::CALL,
                client: node(None),
                direct: target.kind() == ChannelKind::Port,
            };
            assert_eq!(
                across(&open),
                HostMessage::Open {
                    channel: theirs,
                    direct: target.kind() == ChannelKind::Port,
                    target,
                    rights: Rights::CALL,
                    client: node(None),
                }
            );
        }
        let token = DirectToken::generate().unwrap();
        let opened_direct = HostMessage::OpenedDirect {
            channel: theirs,
            spec: PortSpec::default(),
            rights: Rights::CALL,
            quota: Quota::default(),
            server: node(None),
            address: "[::1]:7410".parse().unwrap(),
            token: token.clone(),
        };
        let HostMessage::OpenedDirect { channel, address, token: got, .. } = across(&opened_direct)
        else {
            panic!()
        };
        assert_eq!((channel, address, got), (mine, "[::1]:7410".parse().unwrap(), token));
        let opened = HostMessage::Opened {
            channel: theirs,
            spec: PortSpec::default(),
            rights: Rights::ALL,
            quota: Quota::default(),
            server: node(Some("c")),
        };
        let HostMessage::Opened { channel, server, .. } = across(&opened) else { panic!() };
        assert_eq!((channel, server), (mine, node(Some("c"))));
        for reason in [
            Refusal::NoSuchPort,
            Refusal::Denied,
            Refusal::LimitExceeded,
            Refusal::NameTaken,
            Refusal::InvalidName,
        ] {
            let refused =
                HostMessage::Refused { channel: theirs, reason, detail: "é".repeat(600) };
            let HostMessage::Refused { reason: got, detail, .. } = across(&refused) else {
                panic!()
            };
            assert_eq!((got, detail.len()), (reason, 1024));
        }
        let frame = HostMessage::Frame { channel: mine, frame: vec![1, 2, 3] };
        assert_eq!(across(&frame), HostMessage::Frame { channel: theirs, frame: vec![1, 2, 3] });
        let frames = HostMessage::Frames { channel: mine, frames: vec![4; 70] };
        assert_eq!(across(&frames), HostMessage::Frames { channel: theirs, frames: vec![4; 70] });
        assert_eq!(
            across(&HostMessage::Close { channel: mine, last: None }),
            HostMessage::Close { channel: theirs, last: None }
        );
        let close = HostMessage::Close { channel: mine, last: Some(u64::MAX - 1) };
        let bytes = close.encode();
        assert_eq!(bytes.len(), 18);
        assert_eq!(
            HostMessage::decode(&bytes).unwrap(),
            HostMessage::Close { channel: theirs, last: Some(u64::MAX - 1) }
        );
        for len in [11, 17, 19] {
            let mut cut = bytes.clone();
            cut.resize(len, 0);
            assert!(HostMessage::decode(&cut).is_err(), "close of {len} bytes");
        }
        let datagram = HostMessage::Datagram { channel: mine, seq: 9, frames: vec![5; 40] };
        let bytes = datagram.encode();
        assert_eq!(bytes.len(), DATAGRAM_HEADER + 40);
        assert_eq!(
            HostMessage::decode(&bytes).unwrap(),
            HostMessage::Datagram { channel: theirs, seq: 9, frames: vec![5; 40] }
        );
        for len in 0..DATAGRAM_HEADER {
            assert!(HostMessage::decode(&bytes[..len]).is_err(), "cut at {len}");
        }
        let run = HostMessage::Run { incarnation: 0x1234_5678_9abc };
        assert_eq!(across(&run), run);
        assert_eq!(run.channel(), None);
        assert_eq!(run.encode().len(), 18);
    }

    #[test]
    fn each_target_says_what_its_channel_carries() {
        let kinds: Vec<ChannelKind> = targets().iter().map(OpenTarget::kind).collect();
        use ChannelKind::{Mailbox, Port, Subscription};
        assert_eq!(kinds, [Port, Mailbox, Port, Subscription, Port]);
    }

    #[test]
    fn malformed_messages_are_errors_never_panics() {
        let channel = Channel { opened_here: true, number: 1 };
        let opened = HostMessage::Opened {
            channel,
            spec: PortSpec::default(),
            rights: Rights::ALL,
            quota: Quota::default(),
            server: node(Some("b")),
        };
        let valid = opened.encode();
        for len in 0..valid.len() {
            assert!(HostMessage::decode(&valid[..len]).is_err(), "prefix of {len} bytes");
        }
        let mut trailing = valid.clone();
        trailing.push(0);
        assert!(HostMessage::decode(&trailing).is_err());
        // Kind, origin, rights, and a character of the server's host name.
        let rights_at = valid.len() - 2 - 1 - 16 - 12 - 1;
        let host_at = valid.len() - 16 - 1;
        // (Kind 11 is unknown.)
        for (index, value) in [(0, 11u8), (1, 2), (rights_at, 0xff), (host_at, b' ')] {
            let mut bad = valid.clone();
            bad[index] = value;
            assert!(HostMessage::decode(&bad).is_err(), "byte {index} = {value}");
        }
        let mut samples = vec![valid];
        for target in targets() {
            let client = node(None);
            let open =
                HostMessage::Open { channel, target, rights: Rights::SEND, client, direct: false };
            let bytes = open.encode();
            for len in 0..bytes.len() {
                assert!(HostMessage::decode(&bytes[..len]).is_err(), "{open:?} cut at {len}");
            }
            samples.push(bytes);
        }
        let run = HostMessage::Run { incarnation: 5 }.encode();
        for len in 0..run.len() {
            assert!(HostMessage::decode(&run[..len]).is_err(), "run cut at {len}");
        }
        samples.push(run);
        let direct = HostMessage::OpenedDirect {
            channel,
            spec: PortSpec::default(),
            rights: Rights::ALL,
            quota: Quota::default(),
            server: node(None),
            address: "127.0.0.1:7410".parse().unwrap(),
            token: DirectToken::from_bytes([3; TOKEN_LEN]),
        }
        .encode();
        for len in 0..direct.len() {
            assert!(HostMessage::decode(&direct[..len]).is_err(), "direct cut at {len}");
        }
        samples.push(direct);
        // An unknown target.
        let mut bad = samples[1].clone();
        bad[10] = 9;
        assert!(HostMessage::decode(&bad).is_err());
        // Every single byte value at every position: an error or a message, never a panic.
        for valid in samples {
            for index in 0..valid.len() {
                for value in 0..=255u8 {
                    let mut bytes = valid.clone();
                    bytes[index] = value;
                    let _ = HostMessage::decode(&bytes);
                }
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
