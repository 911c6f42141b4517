//! Readiness for the `_async` forms: one descriptor a tokio task can wait on, which turns
//! readable when any watched link has something to read or room to write, or when another
//! thread says the state changed (it filed a reply, queued messages, returned credit).
//!
//! An epoll instance holds the watched descriptors (edge-triggered) and an eventfd for
//! "changed"; tokio's [`AsyncFd`] watches the epoll descriptor. No thread is spent per
//! operation: a waiting task costs nothing until its descriptor fires.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};

use rustix::event::epoll;
use rustix::event::{eventfd, EventfdFlags};
use tokio::io::unix::AsyncFd;

/// One waitable descriptor for a set of links and a "changed" signal.
#[derive(Debug)]
pub(crate) struct Readiness {
    epoll: OwnedFd,
    changed: OwnedFd,
    /// Created on the first async wait, inside the caller's tokio runtime.
    async_fd: OnceLock<AsyncFd<EpollRef>>,
    /// Tasks waiting: "changed" is only signalled (a system call) when there are any.
    waiters: AtomicUsize,
    registration: Mutex<()>,
    /// Links are watched only once an async form is used: a watched socket costs the kernel
    /// an epoll callback on every message, which the blocking forms need not pay.
    active: std::sync::atomic::AtomicBool,
}

/// The epoll descriptor as tokio sees it (a duplicate, owned by the `AsyncFd`).
#[derive(Debug)]
struct EpollRef(OwnedFd);

impl AsRawFd for EpollRef {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

impl Readiness {
    pub(crate) fn new() -> io::Result<Self> {
        let epoll = epoll::create(epoll::CreateFlags::CLOEXEC)?;
        let changed = eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK)?;
        epoll::add(&epoll, &changed, epoll::EventData::new_u64(0), interest())?;
        Ok(Self {
            epoll,
            changed,
            async_fd: OnceLock::new(),
            waiters: AtomicUsize::new(0),
            registration: Mutex::new(()),
            active: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// Watches `fd` (a link) for reading and writing. A descriptor closed later leaves the
    /// set by itself.
    pub(crate) fn watch(&self, fd: BorrowedFd<'_>) {
        let _guard = self.registration.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        // A failure (out of memory) leaves async waiters to the "changed" signal.
        let _ = epoll::add(&self.epoll, fd, epoll::EventData::new_u64(1), interest());
    }

    /// Marks the set as used by async forms; true the first time (the caller then watches
    /// the links it has).
    pub(crate) fn activate(&self) -> bool {
        !self.active.swap(true, Ordering::AcqRel)
    }

    /// True once an async form has used this set (new links must then be watched).
    pub(crate) fn is_active(&self) -> bool {
        self.active.load(Ordering::Acquire)
    }

    /// Tells async waiters the state changed.
    pub(crate) fn signal(&self) {
        if self.waiters.load(Ordering::Acquire) > 0 {
            // Overflow of the counter means it is already readable: the signal is delivered.
            let _ = rustix::io::write(&self.changed, &1u64.to_ne_bytes());
        }
    }

    /// Waits until something watched happened since the last wait returned. Callers check
    /// their condition before each wait (and after it), in a loop.
    pub(crate) async fn wait(&self) -> io::Result<()> {
        self.waiters.fetch_add(1, Ordering::AcqRel);
        let _waiting = Waiting(&self.waiters);
        let async_fd = match self.async_fd.get() {
            Some(fd) => fd,
            None => {
                let dup = rustix::io::fcntl_dupfd_cloexec(&self.epoll, 0)?;
                // `AsyncFd::new` is deprecated because, for an arbitrary `T`, nothing ensures the
                // descriptor stays open and the same while registered. Here it does: `EpollRef`
                // owns its `OwnedFd`, never replaces it, and closes it only when dropped, after
                // the `AsyncFd` deregistered it. The safe constructor is used so that this
                // crate stays free of `unsafe`.
                #[allow(deprecated)]
                let fd = AsyncFd::new(EpollRef(dup))?;
                // Another task may have set it first; either is as good.
                let _ = self.async_fd.set(fd);
                self.async_fd.get().expect("set just above")
            }
        };
        let mut guard = async_fd.readable().await?;
        // Cleared before draining: an event after this point sets tokio's readiness again.
        guard.clear_ready();
        self.drain();
        Ok(())
    }

    /// Empties the epoll ready list and the "changed" counter.
    fn drain(&self) {
        let mut buf = [0u8; 8];
        let _ = rustix::io::read(&self.changed, &mut buf);
        let mut events: Vec<epoll::Event> = Vec::with_capacity(64);
        let zero = rustix::time::Timespec { tv_sec: 0, tv_nsec: 0 };
        loop {
            events.clear();
            match epoll::wait(&self.epoll, rustix::buffer::spare_capacity(&mut events), Some(&zero))
            {
                Ok(n) if n == events.capacity() => continue,
                _ => return,
            }
        }
    }
}

fn interest() -> epoll::EventFlags {
    epoll::EventFlags::IN | epoll::EventFlags::OUT | epoll::EventFlags::ET
}

/// Counts a waiting task for as long as it waits (also when its future is dropped).
struct Waiting<'a>(&'a AtomicUsize);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}
