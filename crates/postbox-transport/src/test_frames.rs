//! Frames for the link tests of this crate.

use postbox_core::{FrameHeader, FrameKind, Placement};

/// The header of a one-way frame with a body of `len` bytes.
pub(crate) fn header(len: usize) -> FrameHeader {
    FrameHeader {
        kind: FrameKind::Oneway,
        priority: 0,
        msg_type: 0,
        id: 1,
        correlation: 0,
        body_len: len as u32,
        placement: Placement::Inline,
    }
}
