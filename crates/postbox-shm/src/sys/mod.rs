//! Operating-system primitives for segments. Required items: `create_memory(size) ->
//! io::Result<OwnedFd>` (an anonymous memory object whose size is then sealed),
//! `size_is_sealed(fd) -> io::Result<bool>`, `memory_size(fd) -> io::Result<u64>`,
//! `create_sealable(size)`, `seal_contents(fd)` and `contents_are_sealed(fd)` for sealed
//! payloads, `Mapping` (`map(fd, len)`, `map_readonly(fd, len)`, `as_ptr`, unmapped on drop),
//! and `futex_wait(word, expected, timeout)` /
//! `futex_wake(word)` on a word any process may share. Linux uses memfd, seals, mmap and
//! futex; other systems get a fallback that reports `Unsupported` for memory and naps instead
//! of sleeping on a futex.

#[cfg(target_os = "linux")]
#[path = "linux.rs"]
mod imp;

#[cfg(not(target_os = "linux"))]
#[path = "fallback.rs"]
mod imp;

pub(crate) use imp::{
    contents_are_sealed, create_memory, create_sealable, futex_wait, futex_wake, memory_size,
    seal_contents, size_is_sealed, Mapping,
};
