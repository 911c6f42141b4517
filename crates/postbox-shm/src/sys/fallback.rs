//! Systems without memfd: segments are not available yet.

use std::io;
use std::os::fd::OwnedFd;
use std::ptr::NonNull;
use std::sync::atomic::AtomicU32;
use std::time::Duration;

pub(crate) fn create_memory(_size: u64) -> io::Result<OwnedFd> {
    Err(io::Error::from(io::ErrorKind::Unsupported))
}

pub(crate) fn create_sealable(_size: u64) -> io::Result<OwnedFd> {
    Err(io::Error::from(io::ErrorKind::Unsupported))
}

pub(crate) fn seal_contents(_fd: &OwnedFd) -> io::Result<()> {
    Err(io::Error::from(io::ErrorKind::Unsupported))
}

pub(crate) fn contents_are_sealed(_fd: &OwnedFd) -> io::Result<bool> {
    Err(io::Error::from(io::ErrorKind::Unsupported))
}

pub(crate) fn size_is_sealed(_fd: &OwnedFd) -> io::Result<bool> {
    Err(io::Error::from(io::ErrorKind::Unsupported))
}

pub(crate) fn memory_size(_fd: &OwnedFd) -> io::Result<u64> {
    Err(io::Error::from(io::ErrorKind::Unsupported))
}

#[derive(Debug)]
pub(crate) struct Mapping;

impl Mapping {
    pub(crate) fn map(_fd: &OwnedFd, _len: usize) -> io::Result<Self> {
        Err(io::Error::from(io::ErrorKind::Unsupported))
    }

    pub(crate) fn map_readonly(_fd: &OwnedFd, _len: usize) -> io::Result<Self> {
        Err(io::Error::from(io::ErrorKind::Unsupported))
    }

    pub(crate) fn as_ptr(&self) -> NonNull<u8> {
        NonNull::dangling()
    }
}

/// Without futexes a sleeper naps briefly and re-checks its condition.
pub(crate) fn futex_wait(_word: &AtomicU32, _expected: u32, timeout: Duration) {
    std::thread::sleep(timeout.min(Duration::from_millis(1)));
}

pub(crate) fn futex_wake(_word: &AtomicU32) {}
