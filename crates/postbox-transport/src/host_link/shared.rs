//! The state a host link's threads share: the session, the event queue and the connection
//! hand-over, behind one mutex; a condition variable per kind of waiter, so that each change
//! wakes only the thread that acts on it.

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use postbox_core::reliable::{Event, Session};

use super::config::HostLinkConfig;
use super::connection::Secured;
use super::error::LinkError;
use super::security::LinkSecurity;
use super::stats::ConnectionCounters;
use super::udp::{UdpSide, UdpState};
use crate::Waker;

/// Shared by the handle, the driver, the reader of the current connection, and the dialer or
/// acceptor (for QUIC: the driver task and the reader tasks).
#[derive(Debug)]
pub(super) struct Shared {
    pub(super) config: HostLinkConfig,
    /// How each new connection is secured before the driver takes it.
    pub(super) security: LinkSecurity,
    /// The UDP socket that carries the session's datagrams beside a TCP connection; `None`
    /// when they ride the connection (or QUIC carries them).
    pub(super) udp: Option<UdpSide>,
    core: Mutex<Core>,
    /// Wakes the driver (only it waits here): a send, a frame or timer due after bytes were
    /// read, a connection made or broken, a close.
    pub(super) driver_wake: Condvar,
    /// The same for a driver that is a task (QUIC): it waits here instead. Notified together
    /// with `driver_wake`; a notification with nobody waiting is kept for the next wait.
    pub(super) driver_task: tokio::sync::Notify,
    /// Wakes the dialer (only it waits here): a connection is wanted, or the link stopped.
    pub(super) dialer_wake: Condvar,
    /// Wakes `recv` and a blocked `send`: events queued, window room, or the link finished.
    pub(super) progress: Condvar,
    /// Interrupts the acceptor's wait for connections.
    pub(super) acceptor_waker: Waker,
    /// Woken whenever events are queued (see `HostLink::wake_on_events`).
    pub(super) event_waker: OnceLock<Arc<Waker>>,
}

/// Everything behind the mutex.
#[derive(Debug)]
pub(super) struct Core {
    pub(super) session: Session,
    /// Events for `recv`, in the session's order.
    pub(super) events: VecDeque<Event>,
    /// A connection made (and secured) by the dialer or acceptor, not yet taken by the
    /// driver.
    pub(super) incoming: Option<Secured>,
    /// Accepted connections whose handshake is still running (listening side).
    pub(super) handshakes: usize,
    /// Number of the driver's current connection; a reader whose number differs is stale.
    pub(super) connection: u64,
    /// Why the current connection broke, set by its reader.
    pub(super) broken: Option<LinkError>,
    /// The dialer should make a connection (dialing side only).
    pub(super) want_connection: bool,
    /// The dialer's wait before its next attempt.
    pub(super) backoff: Duration,
    /// The handle was dropped: every thread stops now, without a close frame.
    pub(super) aborted: bool,
    /// The driver exited: no more events will come.
    pub(super) finished: bool,
    /// While the driver waits on `driver_wake`: until when (`Some(None)`: no timer). `None`
    /// while it works; it looks at everything before it waits again, so it need not be woken.
    pub(super) driver_waiting: Option<Option<Instant>>,
    pub(super) counters: ConnectionCounters,
    /// The UDP side's key, peer address and probe timer (unused without one).
    pub(super) udp: UdpState,
}

impl Shared {
    pub(super) fn new(
        config: HostLinkConfig,
        security: LinkSecurity,
        session: Session,
        acceptor_waker: Waker,
        udp: Option<UdpSide>,
    ) -> Self {
        let core = Core {
            session,
            events: VecDeque::new(),
            incoming: None,
            handshakes: 0,
            connection: 0,
            broken: None,
            want_connection: true,
            backoff: Duration::ZERO,
            aborted: false,
            finished: false,
            driver_waiting: None,
            counters: ConnectionCounters::default(),
            udp: udp.as_ref().map(UdpSide::initial_state).unwrap_or_default(),
        };
        Self {
            config,
            security,
            udp,
            core: Mutex::new(core),
            driver_wake: Condvar::new(),
            driver_task: tokio::sync::Notify::new(),
            dialer_wake: Condvar::new(),
            progress: Condvar::new(),
            acceptor_waker,
            event_waker: OnceLock::new(),
        }
    }

    /// Locks the core. A panic in another host-link thread does not make it unusable: every
    /// critical section leaves the core consistent before it calls anything that could panic.
    pub(super) fn lock(&self) -> MutexGuard<'_, Core> {
        self.core.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Waits on `condvar` until `deadline` (or forever), returning the guard.
    pub(super) fn wait<'a>(
        &self,
        condvar: &Condvar,
        guard: MutexGuard<'a, Core>,
        deadline: Option<Instant>,
    ) -> MutexGuard<'a, Core> {
        match deadline {
            None => condvar.wait(guard).unwrap_or_else(PoisonError::into_inner),
            Some(at) => {
                let timeout = at.saturating_duration_since(Instant::now());
                condvar.wait_timeout(guard, timeout).unwrap_or_else(PoisonError::into_inner).0
            }
        }
    }

    /// Wakes the driver, after changing what it looks at; `waiting` is
    /// [`Core::driver_waiting`] as seen under the lock. Best called with the lock released, so
    /// that the driver does not wake only to wait for the lock.
    pub(super) fn wake_driver(&self, waiting: bool) {
        if waiting {
            self.driver_wake.notify_one();
            self.driver_task.notify_one();
        }
    }

    /// Tells whoever waits for events that there are some (or that the link finished):
    /// `recv`, a blocked `send`, and the event waker. Best called with the lock released.
    pub(super) fn events_queued(&self) {
        self.progress.notify_all();
        if let Some(waker) = self.event_waker.get() {
            waker.wake();
        }
    }

    /// Wakes every thread that waits for anything.
    pub(super) fn wake_all(&self) {
        self.driver_wake.notify_all();
        self.driver_task.notify_one();
        self.dialer_wake.notify_all();
        self.progress.notify_all();
        self.acceptor_waker.wake();
        if let Some(udp) = &self.udp {
            udp.waker.wake();
        }
    }
}

impl Core {
    /// Whether the driver waits on `driver_wake` (see [`Shared::wake_driver`]).
    pub(super) fn driver_waits(&self) -> bool {
        self.driver_waiting.is_some()
    }

    /// True once the dialer, acceptor and readers should stop.
    pub(super) fn stopping(&self) -> bool {
        self.aborted || self.finished
    }

    /// Moves the session's events to the queue; true when any arrived (`recv` and a blocked
    /// `send` should look). A link that opened resets the dialer's backoff.
    pub(super) fn collect_events(&mut self, config: &HostLinkConfig) -> bool {
        let mut any = false;
        while let Some(event) = self.session.poll_event() {
            if matches!(event, Event::LinkOpen { .. }) {
                self.backoff = config.reconnect_min;
            }
            self.events.push_back(event);
            any = true;
        }
        any
    }

    /// Records that connection `connection` broke because of `error`, unless it is no longer
    /// the current one.
    pub(super) fn report_broken(&mut self, connection: u64, error: LinkError) {
        if self.connection == connection && self.broken.is_none() {
            self.broken = Some(error);
        }
    }
}
