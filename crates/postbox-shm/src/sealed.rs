//! Sealed payloads: a memory object of its own per payload, written by the sender, then sealed
//! so that nobody (the sender included) can change or resize it, and passed to a receiver that
//! does not trust the sender. The receiver checks the seals before it maps the object
//! read-only: what it reads cannot change under it, so no copy is needed for safety.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::ptr::NonNull;

use crate::sys::{contents_are_sealed, create_sealable, memory_size, seal_contents, Mapping};

/// A payload being written: its memory object mapped writable, not sealed yet.
#[derive(Debug)]
pub struct SealedBuilder {
    fd: OwnedFd,
    mapping: Mapping,
    len: usize,
}

/// A sealed payload, mapped read-only.
#[derive(Debug)]
pub struct SealedPayload {
    fd: OwnedFd,
    mapping: Mapping,
    len: usize,
}

/// Failure to make or open a sealed payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SealedError {
    /// The memory object can still be written or resized: not a sealed payload.
    #[error("the payload's memory object is not sealed against writes and resizing")]
    NotSealed,
    /// The memory object is smaller than the payload it is said to hold.
    #[error("the payload's memory object is smaller than its length")]
    TooSmall,
    /// The operating system refused.
    #[error("the operating system refused: {0}")]
    Os(io::ErrorKind),
}

impl SealedBuilder {
    /// A zeroed payload of `len` bytes to write.
    ///
    /// # Errors
    /// [`SealedError::Os`] (out of memory or descriptors, or unsupported here).
    pub fn new(len: usize) -> Result<Self, SealedError> {
        let os = |e: io::Error| SealedError::Os(e.kind());
        let size = len.max(1);
        let fd = create_sealable(size as u64).map_err(os)?;
        let mapping = Mapping::map(&fd, size).map_err(os)?;
        Ok(Self { fd, mapping, len })
    }

    /// The bytes, to write in place.
    #[must_use]
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: the mapping spans `max(len, 1)` bytes, writable, and lives as long as
        // `self`; the memory object is new and not shared with anyone yet, so this process
        // alone can reach it, through this exclusive borrow.
        unsafe { std::slice::from_raw_parts_mut(self.mapping.as_ptr().as_ptr(), self.len) }
    }

    /// Unmaps the writable view, seals the object against writes, resizing and further seal
    /// changes, and maps it read-only.
    ///
    /// # Errors
    /// [`SealedError::Os`].
    pub fn seal(self) -> Result<SealedPayload, SealedError> {
        let os = |e: io::Error| SealedError::Os(e.kind());
        let Self { fd, mapping, len } = self;
        // A writable shared mapping must be gone before the write seal is accepted.
        drop(mapping);
        seal_contents(&fd).map_err(os)?;
        let mapping = Mapping::map_readonly(&fd, len.max(1)).map_err(os)?;
        Ok(SealedPayload { fd, mapping, len })
    }
}

impl SealedPayload {
    /// Opens a payload of `len` bytes another process sealed, checking its seals and size
    /// before mapping it read-only.
    ///
    /// # Errors
    /// [`SealedError::NotSealed`], [`SealedError::TooSmall`], [`SealedError::Os`].
    pub fn open(fd: OwnedFd, len: usize) -> Result<Self, SealedError> {
        let os = |e: io::Error| SealedError::Os(e.kind());
        if !contents_are_sealed(&fd).map_err(os)? {
            return Err(SealedError::NotSealed);
        }
        let size = memory_size(&fd).map_err(os)?;
        if size < len.max(1) as u64 {
            return Err(SealedError::TooSmall);
        }
        let mapping = Mapping::map_readonly(&fd, len.max(1)).map_err(os)?;
        Ok(Self { fd, mapping, len })
    }

    /// The payload.
    #[must_use]
    pub fn as_slice(&self) -> &[u8] {
        let ptr: NonNull<u8> = self.mapping.as_ptr();
        // SAFETY: the read-only mapping spans `max(len, 1)` bytes and lives as long as
        // `self`; the object is sealed against writes and resizing (checked by `open`, or done
        // by `seal`), so no process can change these bytes while they are borrowed.
        unsafe { std::slice::from_raw_parts(ptr.as_ptr(), self.len) }
    }

    /// Payload length in bytes.
    #[must_use]
    pub fn len(&self) -> usize {
        self.len
    }

    /// True for an empty payload.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The memory object, to pass to a receiver.
    #[must_use]
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[cfg_attr(miri, ignore = "Miri cannot map memory objects")]
    fn a_sealed_payload_opens_elsewhere_and_nobody_can_change_it() {
        let mut builder = SealedBuilder::new(10_000).unwrap();
        builder.as_mut_slice().fill(9);
        let sealed = builder.seal().unwrap();
        let fd = sealed.fd().try_clone_to_owned().unwrap();
        // A writable mapping or a resize is refused by the kernel from now on.
        assert!(Mapping::map(&fd, 10_000).is_err());
        assert!(rustix::fs::ftruncate(&fd, 0).is_err());
        let opened = SealedPayload::open(fd, 10_000).unwrap();
        assert!(opened.as_slice().iter().all(|&b| b == 9));
        assert_eq!(opened.len(), 10_000);
        let fd = sealed.fd().try_clone_to_owned().unwrap();
        assert_eq!(SealedPayload::open(fd, 20_000).unwrap_err(), SealedError::TooSmall);
    }

    #[test]
    #[cfg_attr(miri, ignore = "Miri cannot map memory objects")]
    fn an_unsealed_object_is_refused() {
        let builder = SealedBuilder::new(100).unwrap();
        let fd = builder.fd.try_clone().unwrap();
        assert_eq!(SealedPayload::open(fd, 100).unwrap_err(), SealedError::NotSealed);
    }
}
