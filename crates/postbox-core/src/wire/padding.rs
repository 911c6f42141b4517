//! Padding between frames: how a shared-memory writer starts its frames on cache lines.
//!
//! A frame cut at an arbitrary offset of a stream spans one cache line more than it needs
//! about as often as not, and each line a frame spans crosses between the two cores twice
//! (the writer takes it, then the reader). A writer that knows where a frame ends in the
//! stream may follow it with padding up to the next multiple of [`FRAME_ALIGN`] bytes, so the
//! next frame starts on a line of its own (docs/wire-format.md §2.5, §5.6).
//!
//! Padding is 1 to 64 bytes where a frame would start. Its first byte is
//! `PADDING_MARK | (length - 1)` (`0x80..=0xbf`, never a frame's version byte); the rest
//! must be zero, which the frame decoder checks. A decoder accepts padding on any stream:
//! writers that do not align (sockets) simply never send it.

use super::DecodeError;

/// Where a writer that aligns its frames starts each of them: a multiple of this many bytes
/// of the stream (a cache line).
pub const FRAME_ALIGN: usize = 64;

/// Padding of `len` bytes (1 to [`FRAME_ALIGN`]) starts with this byte plus `len - 1`.
pub const PADDING_MARK: u8 = 0x80;

/// The bytes that take a stream whose writer has reached `position` to the next multiple of
/// [`FRAME_ALIGN`]: empty when it is there already.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Padding {
    bytes: [u8; FRAME_ALIGN],
    len: usize,
}

impl Padding {
    /// The padding after a frame that ends at byte `position` of its stream.
    #[must_use]
    pub fn after(position: u64) -> Self {
        // The remainder is below FRAME_ALIGN (64), so it fits any integer type.
        let len = (FRAME_ALIGN - (position % FRAME_ALIGN as u64) as usize) % FRAME_ALIGN;
        let mut bytes = [0u8; FRAME_ALIGN];
        if len > 0 {
            // `len - 1` is at most 62 here: it fits the mark's six low bits.
            bytes[0] = PADDING_MARK | (len - 1) as u8;
        }
        Self { bytes, len }
    }

    /// The padding's bytes (none when the stream is aligned already).
    #[must_use]
    pub fn as_slice(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

/// The length of the padding that starts with `first`, or `None` when `first` starts no
/// padding (a frame's version byte, or garbage the frame decoder reports).
#[must_use]
pub fn padding_len(first: u8) -> Option<usize> {
    (first & 0xc0 == PADDING_MARK).then(|| usize::from(first & 0x3f) + 1)
}

/// What the bytes where a frame would start begin with, as far as padding goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Lead {
    /// No padding: a frame (or nothing yet, or garbage for the frame decoder to report).
    Frame,
    /// Whole padding of this many bytes, to skip.
    Padding(usize),
    /// Padding whose end has not arrived yet.
    PartialPadding,
}

/// What `staged` (bytes where a frame would start) begins with.
///
/// # Errors
/// `ReservedNotZero` when whole padding has a byte after its first that is not zero (a
/// damaged frame whose first byte happens to start padding, most likely).
pub(crate) fn lead(staged: &[u8]) -> Result<Lead, DecodeError> {
    let Some(len) = staged.first().and_then(|&b| padding_len(b)) else { return Ok(Lead::Frame) };
    match staged.get(1..len) {
        None => Ok(Lead::PartialPadding),
        Some(rest) if rest.iter().any(|&b| b != 0) => Err(DecodeError::ReservedNotZero),
        Some(_) => Ok(Lead::Padding(len)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn padding_reaches_the_next_line_and_says_how_long_it_is() {
        assert!(Padding::after(0).as_slice().is_empty());
        assert!(Padding::after(128).as_slice().is_empty());
        for position in [1u64, 31, 63, 64 + 7, 1 << 40 | 5] {
            let padding = Padding::after(position);
            let bytes = padding.as_slice();
            assert_eq!((position + bytes.len() as u64) % FRAME_ALIGN as u64, 0);
            assert_eq!(padding_len(bytes[0]), Some(bytes.len()));
            assert!(bytes[1..].iter().all(|&b| b == 0));
        }
    }

    #[test]
    fn only_marked_bytes_start_padding() {
        assert_eq!(padding_len(PADDING_MARK), Some(1));
        assert_eq!(padding_len(0xbf), Some(64));
        for first in [0u8, 1, 2, 0x7f, 0xc0, 0xff] {
            assert_eq!(padding_len(first), None, "{first:#04x}");
        }
    }
}
