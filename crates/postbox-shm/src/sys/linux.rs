//! Linux: memfd objects mapped shared, and futex wake-ups on words inside them.

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::atomic::AtomicU32;
use std::time::Duration;

use rustix::fs::{
    fcntl_add_seals, fcntl_get_seals, fstat, ftruncate, memfd_create, MemfdFlags, SealFlags,
};
use rustix::mm::{mmap, munmap, MapFlags, ProtFlags};
use rustix::thread::futex;
use rustix::time::Timespec;

/// A new anonymous memory object of `size` bytes, zero-filled, closed on exec, its size sealed.
pub(crate) fn create_memory(size: u64) -> io::Result<OwnedFd> {
    let fd = memfd_create("postbox-segment", MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING)?;
    ftruncate(&fd, size)?;
    // Its size never changes: a peer that could shrink it would make the other side fault
    // (SIGBUS) on memory it mapped.
    fcntl_add_seals(&fd, SealFlags::SHRINK | SealFlags::GROW)?;
    Ok(fd)
}

/// A new anonymous memory object of `size` bytes for one sealed payload (sealable, not
/// sealed yet).
pub(crate) fn create_sealable(size: u64) -> io::Result<OwnedFd> {
    let fd = memfd_create("postbox-payload", MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING)?;
    ftruncate(&fd, size)?;
    Ok(fd)
}

/// Seals the memory object behind `fd` for good: no writes (there must be no writable
/// mapping left), no resizing, no further seal changes.
pub(crate) fn seal_contents(fd: &OwnedFd) -> io::Result<()> {
    let seals = SealFlags::WRITE | SealFlags::SHRINK | SealFlags::GROW | SealFlags::SEAL;
    Ok(fcntl_add_seals(fd, seals)?)
}

/// True when nobody can write to or resize the memory object behind `fd` any more.
pub(crate) fn contents_are_sealed(fd: &OwnedFd) -> io::Result<bool> {
    let needed = SealFlags::WRITE | SealFlags::SHRINK | SealFlags::GROW;
    Ok(fcntl_get_seals(fd)?.contains(needed))
}

/// True when the size of the memory object behind `fd` can no longer change.
pub(crate) fn size_is_sealed(fd: &OwnedFd) -> io::Result<bool> {
    Ok(fcntl_get_seals(fd)?.contains(SealFlags::SHRINK))
}

/// The size of the memory object behind `fd`.
pub(crate) fn memory_size(fd: &OwnedFd) -> io::Result<u64> {
    let stat = fstat(fd)?;
    u64::try_from(stat.st_size).map_err(|_| io::Error::from(io::ErrorKind::InvalidData))
}

/// Sleeps while `word` holds `expected`, at most `timeout`; returns early on a wake-up, a
/// signal or a changed value (callers re-check their condition). The word may be shared with
/// other processes (no `FUTEX_PRIVATE_FLAG`).
pub(crate) fn futex_wait(word: &AtomicU32, expected: u32, timeout: Duration) {
    let timeout = Timespec {
        tv_sec: i64::try_from(timeout.as_secs()).unwrap_or(i64::MAX),
        tv_nsec: i64::from(timeout.subsec_nanos()),
    };
    // Every outcome (woken, timed out, value changed, interrupted) sends the caller back to
    // its condition.
    let _ = futex::wait(word, futex::Flags::empty(), expected, Some(&timeout));
}

/// Wakes every thread, in any process, sleeping in [`futex_wait`] on `word`.
pub(crate) fn futex_wake(word: &AtomicU32) {
    // Failure (a word that is not mapped) cannot happen for a reference.
    let _ = futex::wake(word, futex::Flags::empty(), u32::MAX);
}

/// A shared, read-write mapping of a memory object, unmapped on drop.
#[derive(Debug)]
pub(crate) struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
}

impl Mapping {
    /// Maps the first `len` bytes of `fd` shared, readable and writable.
    pub(crate) fn map(fd: &OwnedFd, len: usize) -> io::Result<Self> {
        Self::map_with(fd, len, ProtFlags::READ | ProtFlags::WRITE)
    }

    /// Maps the first `len` bytes of `fd` shared and read-only.
    pub(crate) fn map_readonly(fd: &OwnedFd, len: usize) -> io::Result<Self> {
        Self::map_with(fd, len, ProtFlags::READ)
    }

    fn map_with(fd: &OwnedFd, len: usize, protection: ProtFlags) -> io::Result<Self> {
        // SAFETY: a fresh mapping at an address the kernel chooses (null hint, no MAP_FIXED)
        // aliases no Rust object; `len` is the caller's checked size of the object.
        let ptr = unsafe {
            mmap(std::ptr::null_mut(), len, protection, MapFlags::SHARED, fd.as_fd(), 0)?
        };
        let ptr =
            NonNull::new(ptr.cast::<u8>()).ok_or_else(|| io::Error::from(io::ErrorKind::Other))?;
        Ok(Self { ptr, len })
    }

    pub(crate) fn as_ptr(&self) -> NonNull<u8> {
        self.ptr
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: `ptr`/`len` are exactly what `mmap` returned, mapped once; users of the
        // memory borrow the `Mapping` (through the segment), so none outlives it.
        let _ = unsafe { munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

// SAFETY: the mapping is plain memory shared with other processes; the pointer may move to
// or be shared with other threads, all access to its contents going through the types that
// lay out and check it (segment header atomics, rings).
unsafe impl Send for Mapping {}
// SAFETY: as for `Send`.
unsafe impl Sync for Mapping {}
