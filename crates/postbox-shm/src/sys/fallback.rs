//! Systems without memfd: segments are not available yet.

use std::io;
use std::os::fd::OwnedFd;
use std::ptr::NonNull;

pub(crate) fn create_memory(_size: u64) -> io::Result<OwnedFd> {
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

    pub(crate) fn as_ptr(&self) -> NonNull<u8> {
        NonNull::dangling()
    }
}
