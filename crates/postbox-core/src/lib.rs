//! Sans-IO core of postbox: the wire codec, the broker's control protocol, the port queue and
//! the call table.
//!
//! This crate does **no I/O and reads no clock**. Bytes come in through `handle_*` methods,
//! results come out through `poll_*` methods, and time arrives as a `now: Instant` argument, so
//! every rule can be tested deterministically (the model is `quinn-proto`).
//!
//! ```text
//!   socket bytes ──► FrameDecoder::read_buffer / commit ──► poll_frame() ──► Frame
//!   Frame ──► FrameHeader::encode(body) ──► [header bytes] + body ──► socket (writev)
//!   control packet ──► ControlMessage::decode ──► broker / node logic
//!   call(now, deadline) ──► CallTable::begin ──► handle_reply / handle_timeout(now) ──► take
//! ```
//!
//! The formats are specified in `docs/wire-format.md` of the repository.
#![forbid(unsafe_code)]

pub mod access;
pub mod buffering;
pub mod call_table;
pub mod flow;
pub mod identity;
pub mod name;
pub mod pattern;
pub mod queue;
pub mod reliable;
pub mod wire;

pub use access::{AccessDenied, Operation, Quota, Rights};
pub use buffering::{Capacity, Delivery, Overflow, PortSpec};
pub use call_table::{CallId, CallTable};
pub use flow::{Admission, Credit, CreditViolation, ReleaseCounter, SendWindow};
pub use identity::{PeerIdentity, ProcessId};
pub use name::{NameError, PortName};
pub use pattern::{NamePattern, PatternError};
pub use queue::{PortQueue, QueuedMeta, Selector, TypeFilter};
pub use wire::control::{
    ControlErrorCode, ControlMessage, EndpointKind, LinkId, ListenTarget, PortCounters, PortEntry,
    Target,
};
pub use wire::frame::{
    Frame, FrameBody, FrameDecoder, FrameHeader, FrameKind, Placement, PoolRef, ReplyErrorCode,
    SealedRef,
};
pub use wire::{DecodeError, Reader};
