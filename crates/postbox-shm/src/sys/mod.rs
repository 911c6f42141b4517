//! Operating-system primitives for segments. Required items: `create_memory(size) ->
//! io::Result<OwnedFd>` (an anonymous, sealable memory object), `memory_size(fd) ->
//! io::Result<u64>`, and `Mapping` (`map(fd, len)`, `as_ptr`, unmapped on drop).
//! Linux uses memfd and mmap; other systems get a fallback that reports `Unsupported`.

#[cfg(target_os = "linux")]
#[path = "linux.rs"]
mod imp;

#[cfg(not(target_os = "linux"))]
#[path = "fallback.rs"]
mod imp;

pub(crate) use imp::{create_memory, memory_size, Mapping};
