//! Why a session ended or a message failed, and why a send was refused.

/// Why pending messages failed or the session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
#[non_exhaustive]
pub enum SessionError {
    /// The link was open but the peer sent nothing for the configured number of heartbeat
    /// intervals: its broker hung or died without the transport noticing.
    #[error("the peer stopped answering on an open link; delivery of pending messages is unknown")]
    PeerDead,
    /// No open link to the peer for the configured number of heartbeat intervals (a partition,
    /// or the host is down).
    #[error("the peer has been unreachable too long; delivery of pending messages is unknown")]
    Unreachable,
    /// The peer came back as a new incarnation and lost what it had not acknowledged.
    #[error("the peer restarted; delivery of pending messages is unknown")]
    PeerRestarted,
    /// The peer's reports contradict this session's own record: it acknowledged messages that
    /// were never sent, or reported less delivered than it had already acknowledged. Either
    /// end restarted and reused a session id (ids must be random, see
    /// [`SessionId`](super::SessionId)), or the peer is broken. Nothing it says can be trusted,
    /// so the session ends rather than deliver or acknowledge wrongly.
    #[error("the peer's state contradicts this session (a reused session id?); delivery of pending messages is unknown")]
    ProtocolViolation,
    /// The peer closed the session.
    #[error("the peer closed the session; delivery of pending messages is unknown")]
    PeerClosed,
    /// This end closed the session.
    #[error("the session was closed locally")]
    Closed,
}

/// Failure of [`Session::send`](super::Session::send). Holds the payload so the caller can
/// retry or drop it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SendError {
    /// The stream's window or the session's byte budget is full; retry after an
    /// [`Event::Acked`](super::Event::Acked).
    #[error("the send window is full")]
    Full(Vec<u8>),
    /// The payload exceeds the configured maximum.
    #[error("payload of {} bytes exceeds the configured maximum", .0.len())]
    TooLarge(Vec<u8>),
    /// The stream would exceed the configured number of streams.
    #[error("too many streams")]
    TooManyStreams(Vec<u8>),
    /// The session ended; nothing more can be sent on it.
    #[error("the session ended: {1}")]
    Ended(Vec<u8>, SessionError),
}

/// Failure of [`Session::send_datagram`](super::Session::send_datagram). Holds the payload.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DatagramSendError {
    /// The datagram queue is full.
    #[error("the datagram queue is full")]
    Full(Vec<u8>),
    /// The payload exceeds the configured maximum for datagrams.
    #[error("datagram of {} bytes exceeds the configured maximum", .0.len())]
    TooLarge(Vec<u8>),
    /// No link is open: a best-effort datagram is not kept for later.
    #[error("no link is open")]
    LinkDown(Vec<u8>),
    /// The stream would exceed the configured number of streams.
    #[error("too many streams")]
    TooManyStreams(Vec<u8>),
    /// The session ended.
    #[error("the session ended: {1}")]
    Ended(Vec<u8>, SessionError),
}

/// Why [`Session::handle_best_effort`](super::Session::handle_best_effort) dropped a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BestEffortError {
    /// No link is open or awaited (the session is down or ended).
    #[error("no link is open")]
    NoLink,
    /// A frame of this kind never travels beside the link: only datagrams do.
    #[error("a frame of kind {0:#04x} beside the link")]
    NotADatagram(u8),
    /// The frame names another sender or receiver than the current peer and this session.
    #[error("the frame names other sessions")]
    OtherSessions,
}
