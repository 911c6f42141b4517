//! How long an operation may block, readiness of several descriptors, and a waker.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::{Duration, Instant};

use rustix::event::{eventfd, poll, EventfdFlags, PollFd, PollFlags};
use rustix::time::Timespec;
use smallvec::SmallVec;

use crate::TransportError;

/// How long an operation may block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    /// Not at all (`try_` operations).
    NonBlocking,
    /// Until this instant (`_timeout` / `_deadline` operations).
    Until(Instant),
    /// As long as it takes (blocking operations).
    Forever,
}

impl Wait {
    /// A wait that ends `timeout` from now.
    #[must_use]
    pub fn timeout(timeout: Duration) -> Self {
        Instant::now().checked_add(timeout).map_or(Self::Forever, Self::Until)
    }

    /// A wait that ends at `deadline`, or never.
    #[must_use]
    pub fn deadline(deadline: Option<Instant>) -> Self {
        deadline.map_or(Self::Forever, Self::Until)
    }

    /// The instant the wait ends, if any (`NonBlocking` ends now).
    #[must_use]
    pub fn ends_at(self) -> Option<Instant> {
        match self {
            Self::NonBlocking => Some(Instant::now()),
            Self::Until(at) => Some(at),
            Self::Forever => None,
        }
    }

    /// The time left, `None` for forever.
    fn remaining(self) -> Option<Duration> {
        self.ends_at().map(|at| at.saturating_duration_since(Instant::now()))
    }

    /// True once the wait has ended.
    #[must_use]
    pub fn expired(self) -> bool {
        match self {
            Self::NonBlocking => true,
            Self::Until(at) => Instant::now() >= at,
            Self::Forever => false,
        }
    }
}

/// The indices of the descriptors a wait found ready, in order (a slice). A wait on a few
/// descriptors (up to [`FEW_FDS`]) allocates nothing: a receiver that sleeps between calls
/// waits on every call.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReadyFds(SmallVec<[usize; FEW_FDS]>);

impl std::ops::Deref for ReadyFds {
    type Target = [usize];

    fn deref(&self) -> &[usize] {
        &self.0
    }
}

/// Waits until at least one of `fds` is readable (or hung up), or `wait` ends.
///
/// Returns the indices of the ready descriptors; empty when the wait ended first.
///
/// # Errors
/// [`TransportError::Os`] when `poll` fails for a reason other than a signal.
pub fn wait_readable(fds: &[BorrowedFd<'_>], wait: Wait) -> Result<ReadyFds, TransportError> {
    wait_for(fds, PollFlags::IN, wait)
}

/// Waits until `fd` can be written to, or `wait` ends. Returns false when the wait ended.
pub(crate) fn wait_writable(fd: BorrowedFd<'_>, wait: Wait) -> Result<bool, TransportError> {
    Ok(!wait_ready(&[(fd, Interest::WRITE)], wait)?.is_empty())
}

/// True when the peer of stream socket `fd` closed its sending side (it closed its end, or
/// shut it down for writing): what is left to read ends with the end of the stream. A peer
/// that only shut its reading side down has not. A failed look counts as closed.
pub(crate) fn peer_closed_writing(fd: BorrowedFd<'_>) -> bool {
    let mut pollfds = [PollFd::from_borrowed_fd(fd, PollFlags::RDHUP)];
    match poll(&mut pollfds, Some(&Timespec { tv_sec: 0, tv_nsec: 0 })) {
        Ok(_) => pollfds[0].revents().intersects(PollFlags::RDHUP | PollFlags::HUP),
        Err(_) => true,
    }
}

/// What a [`wait_ready`] caller waits for on one descriptor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Interest {
    /// Wake when readable (or hung up).
    pub read: bool,
    /// Wake when writable.
    pub write: bool,
}

impl Interest {
    /// Readable only.
    pub const READ: Self = Self { read: true, write: false };
    /// Writable only.
    pub const WRITE: Self = Self { read: false, write: true };
    /// Either.
    pub const BOTH: Self = Self { read: true, write: true };
}

fn wait_for(
    fds: &[BorrowedFd<'_>],
    events: PollFlags,
    wait: Wait,
) -> Result<ReadyFds, TransportError> {
    let interest = Interest { read: events.contains(PollFlags::IN), write: false };
    let set: SmallVec<[(BorrowedFd<'_>, Interest); FEW_FDS]> =
        fds.iter().map(|fd| (*fd, interest)).collect();
    wait_ready(&set, wait)
}

/// Waits until at least one descriptor is ready for what its [`Interest`] names (a hang-up or
/// error counts as ready), or `wait` ends. Returns the indices of the ready ones.
///
/// # Errors
/// [`TransportError::Os`] when `poll` fails for a reason other than a signal.
pub fn wait_ready(
    fds: &[(BorrowedFd<'_>, Interest)],
    wait: Wait,
) -> Result<ReadyFds, TransportError> {
    let mut pollfds: SmallVec<[PollFd<'_>; FEW_FDS]> = fds
        .iter()
        .map(|(fd, interest)| {
            let mut events = PollFlags::empty();
            if interest.read {
                events |= PollFlags::IN;
            }
            if interest.write {
                events |= PollFlags::OUT;
            }
            PollFd::from_borrowed_fd(*fd, events)
        })
        .collect();
    loop {
        let timeout = wait.remaining().map(|left| Timespec {
            tv_sec: i64::try_from(left.as_secs()).unwrap_or(i64::MAX),
            tv_nsec: i64::from(left.subsec_nanos()),
        });
        match poll(&mut pollfds, timeout.as_ref()) {
            Ok(_) => break,
            Err(rustix::io::Errno::INTR) => {
                if wait.expired() {
                    return Ok(ReadyFds::default());
                }
            }
            Err(errno) => return Err(TransportError::os("poll", errno)),
        }
    }
    let ready = PollFlags::IN | PollFlags::OUT | PollFlags::HUP | PollFlags::ERR | PollFlags::NVAL;
    Ok(ReadyFds(
        pollfds
            .iter()
            .enumerate()
            .filter(|(_, p)| p.revents().intersects(ready))
            .map(|(i, _)| i)
            .collect(),
    ))
}

/// Interrupts a [`wait_readable`] from another thread: include [`Waker::as_fd`] in the set,
/// call [`Waker::wake`] to make it ready and [`Waker::reset`] after it fired.
#[derive(Debug)]
pub struct Waker {
    fd: OwnedFd,
}

impl Waker {
    /// A new, unfired waker (an eventfd).
    ///
    /// # Errors
    /// [`TransportError::Os`] when the eventfd cannot be created.
    pub fn new() -> Result<Self, TransportError> {
        let fd = eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK)
            .map_err(|e| TransportError::os("eventfd", e))?;
        Ok(Self { fd })
    }

    /// Makes the waker readable until the next [`reset`](Self::reset).
    pub fn wake(&self) {
        // An eventfd counter only fails to add when it would overflow, which means it is
        // already readable: the wake-up is delivered either way.
        let _ = rustix::io::write(&self.fd, &1u64.to_ne_bytes());
    }

    /// Clears a fired waker.
    pub fn reset(&self) {
        let mut buf = [0u8; 8];
        // EAGAIN means it was not fired; nothing to clear.
        let _ = rustix::io::read(&self.fd, &mut buf);
    }

    /// The descriptor to poll.
    #[must_use]
    pub fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// How many descriptors a wait holds without an allocation.
pub const FEW_FDS: usize = 16;
