//! What a session reports to its driver: deliveries, acknowledgements, failures, and frames to
//! send.

use super::error::SessionError;
use super::ids::{MessageId, SessionId, StreamId};

/// Something the application or the broker must act on, from
/// [`Session::poll_event`](super::Session::poll_event).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// A reliable message, delivered exactly once and in order within its stream.
    Delivered {
        /// The stream.
        stream: StreamId,
        /// Its number in the stream.
        id: MessageId,
        /// The message bytes.
        payload: Vec<u8>,
    },
    /// A best-effort datagram, delivered at most once, possibly out of order.
    DatagramDelivered {
        /// The datagram stream.
        stream: StreamId,
        /// Its number in the stream.
        id: MessageId,
        /// The message bytes.
        payload: Vec<u8>,
    },
    /// Every reliable message on `stream` up to and including `through` was delivered by the
    /// peer.
    Acked {
        /// The stream.
        stream: StreamId,
        /// The highest id delivered, in order, so far.
        through: MessageId,
    },
    /// A reliable message will never be acknowledged. It may or may not have been delivered
    /// (its acknowledgement may be what was lost); the payload comes back.
    Failed {
        /// The stream.
        stream: StreamId,
        /// Its number in the stream.
        id: MessageId,
        /// The message bytes.
        payload: Vec<u8>,
        /// Why.
        error: SessionError,
    },
    /// A link opened and both ends exchanged their state (for the first time, or resuming).
    LinkOpen {
        /// The peer's session.
        peer: SessionId,
    },
    /// The peer is a new incarnation: its old state is gone. Everything pending failed (see
    /// [`Event::Failed`]) and the streams start over; the session goes on with the new peer.
    PeerRestarted {
        /// The incarnation that is gone.
        previous: SessionId,
        /// The one now on the link.
        current: SessionId,
    },
    /// The session is over; this is its last event. Everything pending failed before it. A
    /// new session (with a new id) is needed to talk to the peer again.
    Ended(SessionError),
}

/// One frame written by [`Session::poll_transmit`](super::Session::poll_transmit).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transmit {
    /// Bytes appended to the buffer.
    pub len: usize,
    /// A best-effort datagram frame: the driver may send it on an unreliable path (a UDP
    /// socket, QUIC datagrams) instead of the link's byte stream.
    pub best_effort: bool,
    /// Which lane the frame belongs to. A driver with one byte stream (TCP, TLS) ignores it; a
    /// driver with an ordered byte stream per lane (QUIC) writes the frame to that lane's, so
    /// that a loss on one stream's lane never holds back another's.
    pub lane: Lane,
}

/// The lanes of a session's outgoing frames: everything that must stay in order relative to
/// itself, and nothing more. Frames of different lanes may be carried independently and
/// arrive in any order relative to each other; the session accepts them so.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Lane {
    /// Session control: hellos, acknowledgements, heartbeats and their answers, close.
    Control,
    /// The reliable messages of one stream (retransmissions included), in id order.
    Stream(StreamId),
    /// Best-effort datagrams, of every datagram stream.
    Datagram,
}
