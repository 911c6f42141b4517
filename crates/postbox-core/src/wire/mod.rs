//! The byte formats: data frames on links, control messages to and from the broker, and the
//! frames of a remote node's tunnel.
//!
//! Every decoder takes untrusted bytes and returns a value or a precise [`DecodeError`]; none
//! panics. All integers are little-endian. The normative description is `docs/wire-format.md`.

pub mod control;
pub mod frame;
pub mod padding;
pub mod tunnel;

/// Why bytes could not be decoded. Peer bytes are untrusted: this is the normal answer to
/// garbage, never a panic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The input ended before the value did.
    #[error("input ended before the value did")]
    Truncated,
    /// The version byte is not one this build speaks.
    #[error("unsupported wire version {0}")]
    UnsupportedVersion(u8),
    /// A kind byte names no known frame or control message.
    #[error("unknown message kind {0:#04x}")]
    UnknownKind(u8),
    /// A flags byte has bits set that mean nothing, or a combination that is invalid.
    #[error("invalid flags {0:#04x}")]
    InvalidFlags(u8),
    /// A priority above 31.
    #[error("priority {0} is above 31")]
    InvalidPriority(u8),
    /// A field reserved for later versions is not zero.
    #[error("reserved field is not zero")]
    ReservedNotZero,
    /// A declared length exceeds the configured limit.
    #[error("declared length {declared} exceeds limit {limit}")]
    TooLong {
        /// The length the input declared.
        declared: u32,
        /// The largest length accepted.
        limit: u32,
    },
    /// The crc32c in the frame does not match its contents.
    #[error("checksum mismatch: frame says {declared:#010x}, contents give {computed:#010x}")]
    ChecksumMismatch {
        /// The checksum carried by the frame.
        declared: u32,
        /// The checksum of what arrived.
        computed: u32,
    },
    /// Bytes remain after a complete value.
    #[error("{0} trailing bytes after the message")]
    TrailingBytes(usize),
    /// A text field is not UTF-8.
    #[error("text field is not UTF-8")]
    InvalidUtf8,
    /// A port name breaks the naming rules.
    #[error("invalid port name")]
    InvalidName,
    /// An enumerated field has a value outside its range.
    #[error("field {field} has unknown value {value}")]
    UnknownValue {
        /// Which field.
        field: &'static str,
        /// The value found.
        value: u8,
    },
    /// The stream already failed to decode earlier and cannot be resynchronised.
    #[error("stream is unusable after an earlier decode error")]
    Poisoned,
}

/// A cursor over untrusted bytes. Every read checks the length first.
#[derive(Debug)]
pub struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    /// Starts reading at the first byte.
    #[must_use]
    pub fn new(bytes: &'a [u8]) -> Self {
        Self { bytes, pos: 0 }
    }

    /// Takes the next `n` bytes.
    ///
    /// # Errors
    /// [`DecodeError::Truncated`] when fewer remain.
    pub fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        let end = self.pos.checked_add(n).ok_or(DecodeError::Truncated)?;
        let slice = self.bytes.get(self.pos..end).ok_or(DecodeError::Truncated)?;
        self.pos = end;
        Ok(slice)
    }

    /// Takes a fixed-size array.
    ///
    /// # Errors
    /// [`DecodeError::Truncated`] when fewer bytes remain.
    pub fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    /// Reads a `u8`.
    ///
    /// # Errors
    /// [`DecodeError::Truncated`].
    pub fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.array::<1>()?[0])
    }

    /// Reads a little-endian `u16`.
    ///
    /// # Errors
    /// [`DecodeError::Truncated`].
    pub fn u16(&mut self) -> Result<u16, DecodeError> {
        Ok(u16::from_le_bytes(self.array()?))
    }

    /// Reads a little-endian `u32`.
    ///
    /// # Errors
    /// [`DecodeError::Truncated`].
    pub fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    /// Reads a little-endian `u64`.
    ///
    /// # Errors
    /// [`DecodeError::Truncated`].
    pub fn u64(&mut self) -> Result<u64, DecodeError> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    /// Reads a text: a `u16` byte length, then UTF-8.
    ///
    /// # Errors
    /// [`DecodeError::Truncated`] or [`DecodeError::InvalidUtf8`].
    pub fn text(&mut self) -> Result<&'a str, DecodeError> {
        let len = self.u16()?;
        std::str::from_utf8(self.take(usize::from(len))?).map_err(|_| DecodeError::InvalidUtf8)
    }

    /// How many bytes are left.
    #[must_use]
    pub fn remaining(&self) -> usize {
        self.bytes.len() - self.pos
    }

    /// Succeeds only if every byte was read.
    ///
    /// # Errors
    /// [`DecodeError::TrailingBytes`] with the count left over.
    pub fn finish(&self) -> Result<(), DecodeError> {
        match self.remaining() {
            0 => Ok(()),
            n => Err(DecodeError::TrailingBytes(n)),
        }
    }
}

/// Appends a text field (`u16` length, then the bytes). Texts longer than `u16::MAX` bytes are
/// cut at a character boundary; every text the protocol carries is far shorter.
pub fn put_text(buf: &mut Vec<u8>, text: &str) {
    let mut end = text.len().min(usize::from(u16::MAX));
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    // The cast cannot truncate: `end <= u16::MAX` by the line above.
    buf.extend_from_slice(&(end as u16).to_le_bytes());
    buf.extend_from_slice(&text.as_bytes()[..end]);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reader_reports_truncation_instead_of_panicking() {
        let mut r = Reader::new(&[1, 2, 3]);
        assert_eq!(r.u16(), Ok(0x0201));
        assert_eq!(r.u16(), Err(DecodeError::Truncated));
        assert_eq!(r.u8(), Ok(3));
        assert_eq!(r.finish(), Ok(()));
        assert_eq!(Reader::new(&[5, 0, b'a']).text(), Err(DecodeError::Truncated));
        assert_eq!(Reader::new(&[1, 0, 0xff]).text(), Err(DecodeError::InvalidUtf8));
        assert_eq!(Reader::new(&[0; 4]).take(usize::MAX), Err(DecodeError::Truncated));
    }

    #[test]
    fn long_texts_are_cut_on_a_character_boundary() {
        let mut buf = Vec::new();
        put_text(&mut buf, &"é".repeat(40_000));
        let text = Reader::new(&buf).text().unwrap();
        assert!(text.len() <= usize::from(u16::MAX));
        assert!(text.chars().all(|c| c == 'é'));
    }
}
