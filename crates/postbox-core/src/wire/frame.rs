//! Data frames: the unit a link carries, and the decoder that cuts a byte stream into frames.
//!
//! A frame is a 32-byte little-endian header followed by the body (`docs/wire-format.md` §2):
//!
//! ```text
//! 0 version u8 | 1 flags u8 | 2 priority u8 | 3 reserved u8 | 4 msg_type u32
//! 8 id u64 | 16 correlation u64 | 24 body_len u32 | 28 crc32c u32 (header 0..28, then body)
//! ```
//!
//! The sender is deliberately not a header field: the receiver knows who is at the other end
//! of each link from the broker, so a peer cannot claim to be someone else.

use super::padding::{lead, Lead};
use super::{DecodeError, Reader};

/// The wire version this build writes and accepts.
pub const VERSION: u8 = 1;
/// Size of the frame header in bytes.
pub const HEADER_LEN: usize = 32;
/// The highest priority a message may carry.
pub const MAX_PRIORITY: u8 = 31;
/// Body length of a pooled frame (a [`PoolRef`]).
pub const POOL_RUN_LEN: usize = 16;
/// Body length of a sealed frame (a [`SealedRef`]).
pub const SEALED_LEN: usize = 16;

const FLAG_CALL: u8 = 0x01;
const FLAG_REPLY: u8 = 0x02;
const FLAG_ERROR: u8 = 0x04;
const FLAG_CREDIT: u8 = 0x08;
const FLAG_CONFIRM: u8 = 0x10;
/// Staging buffer for small frames; bodies larger than what it holds are read in place.
const STAGING_LEN: usize = 64 * 1024;

/// What a frame is for, carried in its flags byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FrameKind {
    /// A one-way message: no reply expected.
    Oneway,
    /// A one-way message whose sender waits until the receiver has taken it (rendezvous,
    /// `send_confirmed`): the receiver reports its credit as soon as it is taken.
    Confirmed,
    /// Receiver → sender: the link's cumulative release counts (body: [`Credit`]).
    ///
    /// [`Credit`]: crate::flow::Credit
    Credit,
    /// A call: the receiver owes one reply with the same correlation.
    Call,
    /// The successful reply to a call.
    Reply,
    /// A failed reply to a call; `msg_type` holds the [`ReplyErrorCode`] and the body may
    /// explain.
    ErrorReply,
}

impl FrameKind {
    fn flags(self) -> u8 {
        match self {
            Self::Oneway => 0,
            Self::Confirmed => FLAG_CONFIRM,
            Self::Credit => FLAG_CREDIT,
            Self::Call => FLAG_CALL,
            Self::Reply => FLAG_REPLY,
            Self::ErrorReply => FLAG_REPLY | FLAG_ERROR,
        }
    }

    fn from_flags(flags: u8) -> Result<Self, DecodeError> {
        match flags {
            0 => Ok(Self::Oneway),
            FLAG_CONFIRM => Ok(Self::Confirmed),
            FLAG_CREDIT => Ok(Self::Credit),
            FLAG_CALL => Ok(Self::Call),
            FLAG_REPLY => Ok(Self::Reply),
            x if x == FLAG_REPLY | FLAG_ERROR => Ok(Self::ErrorReply),
            other => Err(DecodeError::InvalidFlags(other)),
        }
    }
}

/// Why a call was answered with an [`FrameKind::ErrorReply`] (its `msg_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ReplyErrorCode {
    /// The receiver dropped its reply token without answering.
    NoReply,
    /// The receiver's handler failed; the body says how.
    Failed,
    /// A mailbox had nothing for a pull before its deadline.
    Empty,
    /// The mailbox (or port) was closed.
    Closed,
    /// A code this build does not know.
    Unknown(u32),
}

impl ReplyErrorCode {
    /// The code as carried in `msg_type`.
    #[must_use]
    pub fn to_u32(self) -> u32 {
        match self {
            Self::NoReply => 1,
            Self::Failed => 2,
            Self::Empty => 3,
            Self::Closed => 4,
            Self::Unknown(code) => code,
        }
    }

    /// Reads a code from `msg_type`.
    #[must_use]
    pub fn from_u32(code: u32) -> Self {
        match code {
            1 => Self::NoReply,
            2 => Self::Failed,
            3 => Self::Empty,
            4 => Self::Closed,
            other => Self::Unknown(other),
        }
    }
}

/// The fixed-size header in front of every frame body.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FrameHeader {
    /// What the frame is for.
    pub kind: FrameKind,
    /// 0 (lowest) to 31 (highest).
    pub priority: u8,
    /// Application type tag, for selective receive.
    pub msg_type: u32,
    /// Unique per sending process.
    pub id: u64,
    /// For calls and replies: the call this frame belongs to. Zero otherwise.
    pub correlation: u64,
    /// Body length in bytes.
    pub body_len: u32,
    /// Where the payload is: in the body, or described by it (shared-memory links only;
    /// docs/wire-format.md).
    pub placement: Placement,
}

impl FrameHeader {
    /// Encodes this header for `body`, computing the checksum over both.
    ///
    /// `self.body_len` is taken from `body`, not from the field.
    ///
    /// # Panics
    /// If `body` is longer than `u32::MAX` bytes; callers check the configured maximum (far
    /// smaller) first.
    #[must_use]
    pub fn encode(&self, body: &[u8]) -> [u8; HEADER_LEN] {
        let body_len = u32::try_from(body.len()).expect("body length checked against the limit");
        let mut out = [0u8; HEADER_LEN];
        out[0] = VERSION;
        out[1] = self.kind.flags();
        out[2] = self.priority.min(MAX_PRIORITY);
        out[3] = self.placement as u8;
        out[4..8].copy_from_slice(&self.msg_type.to_le_bytes());
        out[8..16].copy_from_slice(&self.id.to_le_bytes());
        out[16..24].copy_from_slice(&self.correlation.to_le_bytes());
        out[24..28].copy_from_slice(&body_len.to_le_bytes());
        let crc = crc32c::crc32c_append(crc32c::crc32c(&out[..28]), body);
        out[28..32].copy_from_slice(&crc.to_le_bytes());
        out
    }

    /// Decodes a header and checks every field but the checksum (which needs the body).
    /// Returns the header and the declared checksum.
    ///
    /// # Errors
    /// Any [`DecodeError`] but `TrailingBytes`; `TooLong` when the body exceeds `max_body`.
    pub fn decode(bytes: &[u8; HEADER_LEN], max_body: u32) -> Result<(Self, u32), DecodeError> {
        let mut r = Reader::new(bytes);
        let version = r.u8()?;
        if version != VERSION {
            return Err(DecodeError::UnsupportedVersion(version));
        }
        let kind = FrameKind::from_flags(r.u8()?)?;
        let priority = r.u8()?;
        if priority > MAX_PRIORITY {
            return Err(DecodeError::InvalidPriority(priority));
        }
        let placement = match r.u8()? {
            0 => Placement::Inline,
            1 => Placement::Pooled,
            2 => Placement::Sealed,
            _ => return Err(DecodeError::ReservedNotZero),
        };
        let header = Self {
            placement,
            kind,
            priority,
            msg_type: r.u32()?,
            id: r.u64()?,
            correlation: r.u64()?,
            body_len: r.u32()?,
        };
        let described = match header.placement {
            Placement::Inline => None,
            Placement::Pooled => Some(POOL_RUN_LEN),
            Placement::Sealed => Some(SEALED_LEN),
        };
        if let Some(limit) = described.filter(|&n| header.body_len as usize != n) {
            return Err(DecodeError::TooLong { declared: header.body_len, limit: limit as u32 });
        }
        // A described payload's length is checked by the receiver against the same limit.
        if described.is_none() && header.body_len > max_body {
            return Err(DecodeError::TooLong { declared: header.body_len, limit: max_body });
        }
        Ok((header, r.u32()?))
    }
}

/// Where a frame's payload is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[repr(u8)]
pub enum Placement {
    /// In the body.
    #[default]
    Inline = 0,
    /// In the sender's payload pool; the body is a [`PoolRef`].
    Pooled = 1,
    /// In a sealed memory object passed beside the frame; the body is a [`SealedRef`].
    Sealed = 2,
}

/// Where a pooled frame's payload lies in the sender's payload pool: the frame's whole body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolRef {
    /// Byte offset in the pool.
    pub offset: u64,
    /// Payload length in bytes.
    pub len: u64,
}

impl PoolRef {
    /// The 16-byte body that carries it (offset, then length, little-endian).
    #[must_use]
    pub fn to_bytes(&self) -> [u8; POOL_RUN_LEN] {
        two_words(self.offset, self.len)
    }

    /// Decodes a pooled frame's body.
    ///
    /// # Errors
    /// [`DecodeError::Truncated`] or [`DecodeError::TrailingBytes`] for a body that is not 16
    /// bytes.
    pub fn decode(body: &[u8]) -> Result<Self, DecodeError> {
        let (offset, len) = decode_two_words(body)?;
        Ok(Self { offset, len })
    }
}

/// Which sealed memory object, passed beside the stream, holds a sealed frame's payload: the
/// frame's whole body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SealedRef {
    /// Payload length in bytes.
    pub len: u64,
    /// The sequence number the memory object travelled with.
    pub seq: u64,
}

impl SealedRef {
    /// The 16-byte body that carries it (length, then sequence number, little-endian).
    #[must_use]
    pub fn to_bytes(&self) -> [u8; SEALED_LEN] {
        two_words(self.len, self.seq)
    }

    /// Decodes a sealed frame's body.
    ///
    /// # Errors
    /// [`DecodeError::Truncated`] or [`DecodeError::TrailingBytes`] for a body that is not 16
    /// bytes.
    pub fn decode(body: &[u8]) -> Result<Self, DecodeError> {
        let (len, seq) = decode_two_words(body)?;
        Ok(Self { len, seq })
    }
}

/// The 16-byte body of a pooled or sealed frame: two little-endian `u64`s.
fn two_words(first: u64, second: u64) -> [u8; 16] {
    let mut out = [0u8; 16];
    out[..8].copy_from_slice(&first.to_le_bytes());
    out[8..].copy_from_slice(&second.to_le_bytes());
    out
}

/// Decodes [`two_words`], rejecting a body of any other length.
fn decode_two_words(body: &[u8]) -> Result<(u64, u64), DecodeError> {
    let mut r = Reader::new(body);
    let words = (r.u64()?, r.u64()?);
    r.finish()?;
    Ok(words)
}

/// A whole frame: header and body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// The header, with `body_len == body.len()`.
    pub header: FrameHeader,
    /// The body bytes.
    pub body: Vec<u8>,
}

impl Frame {
    /// Encodes the frame into one contiguous buffer (header, then body).
    #[must_use]
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER_LEN + self.body.len());
        out.extend_from_slice(&self.header.encode(&self.body));
        out.extend_from_slice(&self.body);
        out
    }

    /// Decodes exactly one frame from `bytes`, rejecting trailing bytes.
    ///
    /// # Errors
    /// Any [`DecodeError`].
    pub fn decode(bytes: &[u8], max_body: u32) -> Result<Self, DecodeError> {
        // Checked in the decoder's order (header, then the body's length, then its checksum)
        // without the decoder, which would skip padding (§2.5) around the frame.
        let header_bytes = bytes.first_chunk::<HEADER_LEN>().ok_or(DecodeError::Truncated)?;
        let (header, declared_crc) = FrameHeader::decode(header_bytes, max_body)?;
        let rest = &bytes[HEADER_LEN..];
        let body = rest.get(..header.body_len as usize).ok_or(DecodeError::Truncated)?;
        check(declared_crc, header_bytes, body)?;
        match rest.len() - body.len() {
            0 => Ok(Self { header, body: body.to_vec() }),
            n => Err(DecodeError::TrailingBytes(n)),
        }
    }
}

/// The body of a frame [`FrameDecoder::poll_frame_with`] hands out: still in the decoder's
/// buffer, or in an allocation of its own (a large body read in place).
#[derive(Debug, PartialEq, Eq)]
pub enum FrameBody<'a> {
    /// Bytes in the decoder's buffer, valid until the decoder is next used.
    Borrowed(&'a [u8]),
    /// A body that had its own allocation already.
    Owned(Vec<u8>),
}

impl FrameBody<'_> {
    /// The body bytes.
    #[must_use]
    pub fn as_slice(&self) -> &[u8] {
        match self {
            Self::Borrowed(bytes) => bytes,
            Self::Owned(bytes) => bytes,
        }
    }

    /// The body as a vector (copied when borrowed).
    #[must_use]
    pub fn into_vec(self) -> Vec<u8> {
        match self {
            Self::Borrowed(bytes) => bytes.to_vec(),
            Self::Owned(bytes) => bytes,
        }
    }
}

/// Cuts a byte stream into frames (sans-IO).
///
/// Feed it with [`read_buffer`](Self::read_buffer) + [`commit`](Self::commit) (zero-copy:
/// large bodies are read straight into their final allocation) or with
/// [`handle_bytes`](Self::handle_bytes), then call [`poll_frame`](Self::poll_frame) until it
/// returns `Ok(None)`. After an error the stream cannot be trusted: every later call returns
/// [`DecodeError::Poisoned`].
#[derive(Debug)]
pub struct FrameDecoder {
    max_body: u32,
    staging: Box<[u8]>,
    start: usize,
    end: usize,
    partial: Option<PartialBody>,
    /// Staged frames up to here had their headers looked at by
    /// [`staged_priority`](FrameDecoder::staged_priority), which found at most `staged_top`.
    scanned: usize,
    staged_top: u8,
    poisoned: bool,
    input: Vec<u8>,
    input_pos: usize,
}

#[derive(Debug)]
struct PartialBody {
    header: FrameHeader,
    declared_crc: u32,
    header_bytes: [u8; HEADER_LEN],
    body: Vec<u8>,
    filled: usize,
}

impl FrameDecoder {
    /// A decoder that rejects bodies larger than `max_body` bytes.
    #[must_use]
    pub fn new(max_body: u32) -> Self {
        Self {
            max_body,
            staging: vec![0u8; STAGING_LEN].into_boxed_slice(),
            start: 0,
            end: 0,
            partial: None,
            scanned: 0,
            staged_top: 0,
            poisoned: false,
            input: Vec::new(),
            input_pos: 0,
        }
    }

    /// Where the next read from the stream should land. Never empty once
    /// [`poll_frame`](Self::poll_frame) has returned `Ok(None)`.
    ///
    /// Call [`commit`](Self::commit) with the number of bytes the read produced.
    pub fn read_buffer(&mut self) -> &mut [u8] {
        if self.partial.is_none() && self.end == self.staging.len() {
            self.compact();
        }
        match &mut self.partial {
            // The staging area is drained into a partial body before it is created, so reading
            // into the body keeps the stream's order.
            Some(partial) => &mut partial.body[partial.filled..],
            None => &mut self.staging[self.end..],
        }
    }

    /// Records that `n` bytes were written into the last [`read_buffer`](Self::read_buffer).
    ///
    /// # Panics
    /// If `n` is larger than that buffer was (a caller bug, not a peer's).
    pub fn commit(&mut self, n: usize) {
        if let Some(partial) = &mut self.partial {
            assert!(partial.filled + n <= partial.body.len(), "commit past the read buffer");
            partial.filled += n;
        } else {
            assert!(self.end + n <= self.staging.len(), "commit past the read buffer");
            self.end += n;
        }
    }

    /// Copies `bytes` into the decoder (for callers that already hold the bytes); they are
    /// cut into frames by the following [`poll_frame`](Self::poll_frame) calls.
    pub fn handle_bytes(&mut self, bytes: &[u8]) {
        self.input.extend_from_slice(bytes);
    }

    /// The next complete frame, `Ok(None)` when more bytes are needed.
    ///
    /// Call after every [`commit`](Self::commit) or [`handle_bytes`](Self::handle_bytes),
    /// repeatedly, until it returns `Ok(None)`.
    ///
    /// # Errors
    /// A [`DecodeError`] when the stream holds an invalid frame; the decoder is then poisoned.
    pub fn poll_frame(&mut self) -> Result<Option<Frame>, DecodeError> {
        self.poll_frame_with(|header, body| Frame { header, body: body.into_vec() })
    }

    /// Like [`poll_frame`](Self::poll_frame), handing the next complete frame's header and
    /// checked body to `take`, which keeps what it needs: a small body need not be copied
    /// into an allocation of its own.
    ///
    /// # Errors
    /// A [`DecodeError`] when the stream holds an invalid frame; the decoder is then poisoned.
    pub fn poll_frame_with<R>(
        &mut self,
        take: impl FnOnce(FrameHeader, FrameBody<'_>) -> R,
    ) -> Result<Option<R>, DecodeError> {
        if self.poisoned {
            return Err(DecodeError::Poisoned);
        }
        loop {
            let absorbed = self.absorb_input();
            match self.next_frame() {
                Ok(None) if absorbed > 0 => continue,
                Ok(None) => return Ok(None),
                Ok(Some(Located::Owned(frame))) => {
                    return Ok(Some(take(frame.header, FrameBody::Owned(frame.body))));
                }
                Ok(Some(Located::Staged { header, at })) => {
                    let body = &self.staging[at..at + header.body_len as usize];
                    return Ok(Some(take(header, FrameBody::Borrowed(body))));
                }
                Err(e) => {
                    self.poisoned = true;
                    return Err(e);
                }
            }
        }
    }

    /// Bytes received but not yet returned as frames.
    #[must_use]
    pub fn buffered(&self) -> usize {
        let staged = self.end - self.start + self.input.len() - self.input_pos;
        staged + self.partial.as_ref().map_or(0, |p| HEADER_LEN + p.filled)
    }

    /// True when the decoder holds part of a frame (a stream that ends now ended mid-frame).
    #[must_use]
    pub fn is_mid_frame(&self) -> bool {
        self.buffered() > 0
    }

    /// The highest priority of the frames buffered and not handed out yet, at least (it may
    /// count some handed out already); `None` when no frame header is buffered. Frame headers
    /// are looked at once each, however often this is asked.
    #[must_use]
    pub fn staged_priority(&mut self) -> Option<u8> {
        if self.partial.is_some() {
            return Some(MAX_PRIORITY);
        }
        match self.skip_padding() {
            Ok(true) => {}
            // Padding alone is no frame.
            Ok(false) => {
                self.scanned = self.start;
                self.staged_top = 0;
                return None;
            }
            // Bad bytes: the next poll reports them.
            Err(_) => return Some(MAX_PRIORITY),
        }
        let mut at = self.scanned.max(self.start);
        loop {
            let staged = &self.staging[at..self.end];
            match lead(staged) {
                Ok(Lead::Frame) => {}
                Ok(Lead::Padding(len)) => {
                    at += len;
                    continue;
                }
                // Not whole yet, or bad (which a poll reports).
                Ok(Lead::PartialPadding) | Err(_) => break,
            }
            let Some(header) = staged.first_chunk::<HEADER_LEN>() else { break };
            self.staged_top = self.staged_top.max(header[2].min(MAX_PRIORITY));
            let body_len = u32::from_le_bytes([header[24], header[25], header[26], header[27]]);
            let next = at.saturating_add(HEADER_LEN).saturating_add(body_len as usize);
            if next > self.end {
                break;
            }
            at = next;
        }
        self.scanned = at;
        (self.start < self.end).then_some(self.staged_top)
    }

    /// Moves the staged bytes to the front of the staging area.
    fn compact(&mut self) {
        self.staging.copy_within(self.start..self.end, 0);
        self.end -= self.start;
        self.scanned = self.scanned.saturating_sub(self.start);
        self.start = 0;
    }

    /// Every staged byte was handed out: the staging area starts over.
    fn empty_staging(&mut self) {
        self.start = 0;
        self.end = 0;
        self.scanned = 0;
        self.staged_top = 0;
    }

    /// Finds the next complete frame and checks it; a staged body stays where it is (the
    /// bytes stay valid until the next read or input, though `start` has moved past them).
    fn next_frame(&mut self) -> Result<Option<Located>, DecodeError> {
        if let Some(partial) = &self.partial {
            if partial.filled < partial.body.len() {
                return Ok(None);
            }
            // Invariant: `partial` is Some (checked just above).
            let p = self.partial.take().expect("partial body present");
            check(p.declared_crc, &p.header_bytes, &p.body)?;
            return Ok(Some(Located::Owned(Frame { header: p.header, body: p.body })));
        }
        if !self.skip_padding()? {
            return Ok(None);
        }
        let staged = &self.staging[self.start..self.end];
        let Some(header_bytes) = staged.first_chunk::<HEADER_LEN>() else {
            return Ok(None);
        };
        let (header, declared_crc) = FrameHeader::decode(header_bytes, self.max_body)?;
        let body_len = header.body_len as usize;
        if staged.len() >= HEADER_LEN + body_len {
            check(declared_crc, header_bytes, &staged[HEADER_LEN..HEADER_LEN + body_len])?;
            let at = self.start + HEADER_LEN;
            self.start += HEADER_LEN + body_len;
            // The padding that follows goes now: a stream that ends after it ends between
            // frames. Bad padding stays, for the next poll to report.
            let _ = self.skip_padding();
            return Ok(Some(Located::Staged { header, at }));
        }
        if HEADER_LEN + body_len > self.staging.len() - self.start {
            // The body does not fit in staging: move it to its own allocation and read the
            // rest of it in place.
            self.promote()?;
        } else if self.end == self.staging.len() {
            self.compact();
        }
        Ok(None)
    }

    /// Skips the padding staged where a frame would start (docs/wire-format.md §2.5); false
    /// when padding is only partly here (it is skipped once whole: the read buffer makes room
    /// for the rest). Starts the staging area over when nothing follows. Moves no bytes.
    ///
    /// # Errors
    /// `ReservedNotZero` when a padding byte after the first is not zero (a damaged frame
    /// whose first byte happens to start padding, most likely); nothing of it is skipped.
    fn skip_padding(&mut self) -> Result<bool, DecodeError> {
        let whole = loop {
            match lead(&self.staging[self.start..self.end])? {
                Lead::Padding(len) => self.start += len,
                Lead::PartialPadding => break false,
                Lead::Frame => break true,
            }
        };
        if self.start == self.end {
            self.empty_staging();
        }
        Ok(whole)
    }

    /// Moves a staged header (and the start of its body) into a [`PartialBody`].
    fn promote(&mut self) -> Result<(), DecodeError> {
        let staged = &self.staging[self.start..self.end];
        let Some(header_bytes) = staged.first_chunk::<HEADER_LEN>() else {
            return Ok(());
        };
        let header_bytes = *header_bytes;
        let (header, declared_crc) = FrameHeader::decode(&header_bytes, self.max_body)?;
        let body_len = header.body_len as usize;
        let have = (staged.len() - HEADER_LEN).min(body_len);
        let mut body = vec![0u8; body_len];
        body[..have].copy_from_slice(&staged[HEADER_LEN..HEADER_LEN + have]);
        self.start += HEADER_LEN + have;
        if self.start == self.end {
            self.empty_staging();
        }
        self.partial = Some(PartialBody { header, declared_crc, header_bytes, body, filled: have });
        Ok(())
    }

    /// Moves bytes given to `handle_bytes` into the read buffer; returns how many.
    fn absorb_input(&mut self) -> usize {
        if self.input_pos == self.input.len() {
            return 0;
        }
        if self.partial.is_none() && self.end == self.staging.len() {
            self.compact();
        }
        let pending = &self.input[self.input_pos..];
        let buf = match &mut self.partial {
            Some(p) => &mut p.body[p.filled..],
            None => &mut self.staging[self.end..],
        };
        let n = buf.len().min(pending.len());
        buf[..n].copy_from_slice(&pending[..n]);
        self.commit(n);
        self.input_pos += n;
        if self.input_pos == self.input.len() {
            self.input.clear();
            self.input_pos = 0;
        }
        n
    }
}

/// Where [`FrameDecoder::next_frame`] found a complete, checked frame.
enum Located {
    /// A body of its own allocation (read in place).
    Owned(Frame),
    /// A body in the staging buffer, at this offset.
    Staged { header: FrameHeader, at: usize },
}

/// Checks a frame's declared checksum against its header and body bytes.
fn check(
    declared_crc: u32,
    header_bytes: &[u8; HEADER_LEN],
    body: &[u8],
) -> Result<(), DecodeError> {
    let computed = crc32c::crc32c_append(crc32c::crc32c(&header_bytes[..28]), body);
    if computed != declared_crc {
        return Err(DecodeError::ChecksumMismatch { declared: declared_crc, computed });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::padding::{Padding, FRAME_ALIGN};

    fn frame(kind: FrameKind, body: &[u8]) -> Frame {
        let header = FrameHeader {
            kind,
            priority: 3,
            msg_type: 7,
            id: 99,
            correlation: 5,
            body_len: body.len() as u32,
            placement: Placement::Inline,
        };
        Frame { header, body: body.to_vec() }
    }

    /// Feeds `bytes` through the decoder's read buffer, as a link does.
    fn read_in(decoder: &mut FrameDecoder, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            let buf = decoder.read_buffer();
            let n = buf.len().min(bytes.len());
            buf[..n].copy_from_slice(&bytes[..n]);
            decoder.commit(n);
            bytes = &bytes[n..];
        }
    }

    #[test]
    fn small_bodies_are_lent_from_the_buffer_and_large_ones_handed_over() {
        let mut decoder = FrameDecoder::new(1 << 20);
        let small = frame(FrameKind::Oneway, b"hello");
        let large = frame(FrameKind::Oneway, &vec![7u8; STAGING_LEN + 10]);
        read_in(&mut decoder, &small.to_bytes());
        let seen =
            decoder.poll_frame_with(|h, b| (h, matches!(b, FrameBody::Borrowed(_)), b.into_vec()));
        assert_eq!(seen, Ok(Some((small.header, true, small.body.clone()))));
        let bytes = large.to_bytes();
        read_in(&mut decoder, &bytes[..100]);
        assert_eq!(decoder.poll_frame_with(|_, _| ()), Ok(None));
        read_in(&mut decoder, &bytes[100..]);
        let seen = decoder.poll_frame_with(|_, b| (matches!(b, FrameBody::Owned(_)), b.into_vec()));
        assert_eq!(seen, Ok(Some((true, large.body))));
    }

    #[test]
    fn staged_priority_is_the_highest_of_the_frames_not_handed_out() {
        let mut decoder = FrameDecoder::new(1 << 20);
        assert_eq!(decoder.staged_priority(), None);
        for priority in [1, 7, 3] {
            let mut f = frame(FrameKind::Oneway, b"body");
            f.header.priority = priority;
            read_in(&mut decoder, &f.to_bytes());
        }
        assert_eq!(decoder.staged_priority(), Some(7));
        // Looked at once: asking again (or after more input) costs no second look.
        assert_eq!(decoder.staged_priority(), Some(7));
        let mut urgent = frame(FrameKind::Oneway, b"late");
        urgent.header.priority = 30;
        read_in(&mut decoder, &urgent.to_bytes()[..10]);
        assert_eq!(decoder.staged_priority(), Some(7), "a header not whole yet is not counted");
        read_in(&mut decoder, &urgent.to_bytes()[10..]);
        assert_eq!(decoder.staged_priority(), Some(30));
        while decoder.poll_frame().unwrap().is_some() {}
        assert_eq!(decoder.staged_priority(), None, "everything was handed out");
    }

    #[test]
    fn padding_between_frames_is_skipped_however_the_bytes_arrive() {
        let bodies: [&[u8]; 4] = [b"a", &[5; 90], b"", &[9; 63]];
        let frames: Vec<Frame> = bodies.iter().map(|b| frame(FrameKind::Call, b)).collect();
        let mut stream = Vec::new();
        for f in &frames {
            stream.extend_from_slice(&f.to_bytes());
            stream.extend_from_slice(Padding::after(stream.len() as u64).as_slice());
        }
        assert_eq!(stream.len() % FRAME_ALIGN, 0);
        for piece in [1, 7, 64, stream.len()] {
            let mut decoder = FrameDecoder::new(1 << 20);
            let mut got = Vec::new();
            for chunk in stream.chunks(piece) {
                read_in(&mut decoder, chunk);
                while let Some(f) = decoder.poll_frame().unwrap() {
                    got.push(f);
                }
            }
            assert_eq!(got, frames, "in pieces of {piece}");
            assert!(!decoder.is_mid_frame(), "the stream ends between frames");
            assert_eq!(decoder.staged_priority(), None);
        }
    }

    #[test]
    fn staged_priority_looks_past_padding() {
        let mut decoder = FrameDecoder::new(1 << 20);
        read_in(&mut decoder, Padding::after(3).as_slice());
        assert_eq!(decoder.staged_priority(), None, "padding alone is no frame");
        let mut urgent = frame(FrameKind::Oneway, b"x");
        urgent.header.priority = 20;
        let mut bytes = urgent.to_bytes();
        bytes.extend_from_slice(Padding::after(bytes.len() as u64).as_slice());
        let mut late = frame(FrameKind::Oneway, b"y");
        late.header.priority = 25;
        bytes.extend_from_slice(&late.to_bytes());
        read_in(&mut decoder, &bytes);
        assert_eq!(decoder.staged_priority(), Some(25), "the frame after the padding counts");
        assert_eq!(decoder.poll_frame().unwrap(), Some(urgent));
        assert_eq!(decoder.poll_frame().unwrap(), Some(late));
    }

    #[test]
    fn one_frame_alone_has_no_padding_around_it() {
        let bytes = frame(FrameKind::Oneway, b"x").to_bytes();
        let mut padded = Padding::after(1).as_slice().to_vec();
        padded.extend_from_slice(&bytes);
        assert_eq!(Frame::decode(&padded, 1024), Err(DecodeError::UnsupportedVersion(0xbe)));
        let mut padded = bytes.clone();
        padded.extend_from_slice(Padding::after(bytes.len() as u64).as_slice());
        assert_eq!(Frame::decode(&padded, 1024), Err(DecodeError::TrailingBytes(64 - 33)));
    }

    #[test]
    fn bytes_past_the_padding_marks_are_still_unsupported_versions() {
        for first in [0u8, 2, 0x7f, 0xc0, 0xff] {
            let mut bytes = frame(FrameKind::Oneway, b"x").to_bytes();
            bytes[0] = first;
            assert_eq!(Frame::decode(&bytes, 1024), Err(DecodeError::UnsupportedVersion(first)));
            let mut decoder = FrameDecoder::new(1024);
            read_in(&mut decoder, &bytes);
            assert_eq!(decoder.poll_frame(), Err(DecodeError::UnsupportedVersion(first)));
        }
    }

    #[test]
    fn the_longest_padding_is_skipped_and_padding_that_is_not_zero_is_refused() {
        let next = frame(FrameKind::Oneway, b"after");
        let mut longest = vec![0u8; FRAME_ALIGN];
        longest[0] = 0xbf;
        let mut bytes = longest.clone();
        bytes.extend_from_slice(&next.to_bytes());
        let mut decoder = FrameDecoder::new(1024);
        read_in(&mut decoder, &bytes);
        assert_eq!(decoder.poll_frame().unwrap(), Some(next.clone()));

        // A damaged frame whose version byte reads as padding of its own length is not
        // skipped: its other bytes are not zero.
        let mut damaged = frame(FrameKind::Oneway, b"").to_bytes();
        damaged[0] = 0x80 | (HEADER_LEN as u8 - 1);
        damaged.extend_from_slice(&next.to_bytes());
        let mut decoder = FrameDecoder::new(1024);
        read_in(&mut decoder, &damaged);
        assert_eq!(decoder.staged_priority(), Some(MAX_PRIORITY), "looked at by the next poll");
        assert_eq!(decoder.poll_frame(), Err(DecodeError::ReservedNotZero));
        assert_eq!(decoder.poll_frame(), Err(DecodeError::Poisoned), "nothing after it");
    }

    #[test]
    fn a_frame_followed_by_part_of_its_padding_leaves_no_frame_staged() {
        let mut urgent = frame(FrameKind::Oneway, b"x");
        urgent.header.priority = 20;
        let mut bytes = urgent.to_bytes();
        let padding = Padding::after(bytes.len() as u64);
        bytes.push(padding.as_slice()[0]);
        let mut decoder = FrameDecoder::new(1024);
        read_in(&mut decoder, &bytes);
        assert_eq!(decoder.staged_priority(), Some(20));
        assert_eq!(decoder.poll_frame().unwrap(), Some(urgent));
        assert_eq!(decoder.staged_priority(), None, "only padding is left");
        read_in(&mut decoder, &padding.as_slice()[1..]);
        assert_eq!(decoder.poll_frame().unwrap(), None);
        assert!(!decoder.is_mid_frame());
    }

    #[test]
    fn a_frame_round_trips_and_trailing_bytes_are_rejected() {
        let f = frame(FrameKind::Call, b"hello");
        let bytes = f.to_bytes();
        assert_eq!(Frame::decode(&bytes, 1024), Ok(f));
        let mut longer = bytes.clone();
        longer.push(0);
        assert_eq!(Frame::decode(&longer, 1024), Err(DecodeError::TrailingBytes(1)));
        assert_eq!(Frame::decode(&bytes[..10], 1024), Err(DecodeError::Truncated));
    }

    #[test]
    fn corrupted_fields_give_precise_errors() {
        let bytes = frame(FrameKind::Oneway, b"abc").to_bytes();
        let mut bad = bytes.clone();
        bad[0] = 9;
        assert_eq!(Frame::decode(&bad, 1024), Err(DecodeError::UnsupportedVersion(9)));
        let mut bad = bytes.clone();
        bad[1] = 0x03;
        assert_eq!(Frame::decode(&bad, 1024), Err(DecodeError::InvalidFlags(3)));
        let mut bad = bytes.clone();
        bad[2] = 32;
        assert_eq!(Frame::decode(&bad, 1024), Err(DecodeError::InvalidPriority(32)));
        let mut bad = bytes.clone();
        bad[3] = 3;
        assert_eq!(Frame::decode(&bad, 1024), Err(DecodeError::ReservedNotZero));
        // A sealed frame's body is a 16-byte sealed reference, nothing else.
        let mut bad = bytes.clone();
        bad[3] = 2;
        assert_eq!(Frame::decode(&bad, 1024), Err(DecodeError::TooLong { declared: 3, limit: 16 }));
        let sealed = SealedRef { len: 5, seq: 9 };
        assert_eq!(SealedRef::decode(&sealed.to_bytes()), Ok(sealed));
        // A pooled frame's body is a 16-byte pool reference, nothing else.
        let mut bad = bytes.clone();
        bad[3] = 1;
        assert_eq!(Frame::decode(&bad, 1024), Err(DecodeError::TooLong { declared: 3, limit: 16 }));
        let pool_ref = PoolRef { offset: 65536, len: 3 };
        let pooled = FrameHeader {
            kind: FrameKind::Oneway,
            priority: 0,
            msg_type: 0,
            id: 1,
            correlation: 0,
            body_len: 16,
            placement: Placement::Pooled,
        };
        let body = pool_ref.to_bytes();
        let mut encoded = pooled.encode(&body).to_vec();
        encoded.extend_from_slice(&body);
        let decoded = Frame::decode(&encoded, 1024).unwrap();
        assert_eq!(decoded.header.placement, Placement::Pooled);
        assert_eq!(PoolRef::decode(&decoded.body), Ok(pool_ref));
        assert_eq!(PoolRef::decode(&body[..15]), Err(DecodeError::Truncated));
        let mut bad = bytes.clone();
        bad[33] ^= 0xff;
        assert!(matches!(Frame::decode(&bad, 1024), Err(DecodeError::ChecksumMismatch { .. })));
        assert_eq!(Frame::decode(&bytes, 2), Err(DecodeError::TooLong { declared: 3, limit: 2 }));
    }

    #[test]
    fn the_decoder_cuts_a_stream_fed_one_byte_at_a_time() {
        let frames: Vec<Frame> =
            (0..5).map(|i| frame(FrameKind::Oneway, &vec![i as u8; i * 1000])).collect();
        let stream: Vec<u8> = frames.iter().flat_map(Frame::to_bytes).collect();
        let mut decoder = FrameDecoder::new(1 << 20);
        let mut out = Vec::new();
        for byte in stream {
            decoder.handle_bytes(&[byte]);
            while let Some(f) = decoder.poll_frame().unwrap() {
                out.push(f);
            }
        }
        assert_eq!(out, frames);
        assert!(!decoder.is_mid_frame());
    }

    #[test]
    fn large_bodies_are_read_in_place_through_read_buffer() {
        let big = frame(FrameKind::Reply, &vec![0xab; 1 << 20]);
        let small = frame(FrameKind::Oneway, b"after");
        let mut stream = big.to_bytes();
        stream.extend_from_slice(&small.to_bytes());
        let mut decoder = FrameDecoder::new(2 << 20);
        let mut out = Vec::new();
        let mut pos = 0;
        while pos < stream.len() {
            let buf = decoder.read_buffer();
            let n = buf.len().min(stream.len() - pos).min(50_000);
            buf[..n].copy_from_slice(&stream[pos..pos + n]);
            decoder.commit(n);
            pos += n;
            while let Some(f) = decoder.poll_frame().unwrap() {
                out.push(f);
            }
        }
        assert_eq!(out, vec![big, small]);
    }

    #[test]
    fn after_an_error_the_decoder_stays_poisoned() {
        let mut decoder = FrameDecoder::new(16);
        decoder.handle_bytes(&[0xff; 40]);
        assert_eq!(decoder.poll_frame(), Err(DecodeError::UnsupportedVersion(0xff)));
        decoder.handle_bytes(&frame(FrameKind::Oneway, b"ok").to_bytes());
        assert_eq!(decoder.poll_frame(), Err(DecodeError::Poisoned));
    }
}
