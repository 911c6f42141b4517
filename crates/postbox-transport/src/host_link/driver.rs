//! The driver thread of a host link: timers, writes and connection changes for its session,
//! plus one reader thread per connection (plain TCP or TLS, see `connection.rs`). With a UDP
//! side (`udp.rs`) the driver sends the session's best-effort datagrams there instead of on
//! the connection, and a reader thread of the UDP socket hands in what arrives.
//!
//! ```text
//!  dialer / acceptor ── incoming ──►┐
//!  reader (per connection) ─ handle_bytes, broken ─►┤ Core (mutex) ◄── send / close (handle)
//!                                   └─► driver: handle_timeout, poll_transmit ──► write
//!  reader and driver: poll_event ──► events ──► recv / try_recv_batch (handle, event waker)
//! ```
//!
//! The reader passes deliveries and acks on itself and wakes the driver only when it has
//! work (see `driver_work`); each waiter has a condition variable of its own.
//!
//! The driver never writes while holding the lock, so reads, sends and `recv` go on while a
//! write waits for the socket.

use std::net::UdpSocket;
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use postbox_core::reliable::LinkState;

use super::connection::{Connection, ConnectionReader, Secured};
use super::error::LinkError;
use super::shared::{Core, Shared};
use super::udp::Outgoing;

/// Runs the driver until the session ends or the handle is dropped; the UDP side's datagrams
/// (if the link has one) go out on `udp_socket`.
pub(super) fn run(shared: &Arc<Shared>, udp_socket: Option<Arc<UdpSocket>>) {
    let mut driver = Driver {
        shared: Arc::clone(shared),
        connection: None,
        readers: Vec::new(),
        udp_socket,
        datagrams: Outgoing::default(),
        datagram_counter: 0,
        datagram_buf: Vec::new(),
    };
    let mut buf = Vec::new();
    while driver.step(&mut buf) {
        driver.write(&mut buf);
    }
    driver.finish();
}

/// The driver's own state, outside the lock.
struct Driver {
    shared: Arc<Shared>,
    /// The current connection and its number.
    connection: Option<(Connection, u64)>,
    readers: Vec<JoinHandle<()>>,
    /// The UDP side's socket, with a link that has one.
    udp_socket: Option<Arc<UdpSocket>>,
    /// Datagrams for the UDP side, taken from the session under the lock.
    datagrams: Outgoing,
    /// The number of the last UDP datagram sent: never repeats for the link's life, so no
    /// sealing nonce is used twice under a key.
    datagram_counter: u64,
    datagram_buf: Vec<u8>,
}

impl Driver {
    /// Does everything due under the lock, waiting as long as nothing is; returns with frames
    /// to write in `buf` (true) or when the driver must exit (false).
    fn step(&mut self, buf: &mut Vec<u8>) -> bool {
        let shared = Arc::clone(&self.shared);
        let mut core = shared.lock();
        loop {
            if core.aborted {
                return false;
            }
            let now = Instant::now();
            if let Some(stream) = core.incoming.take() {
                self.adopt(&mut core, stream, now);
            }
            if let Some(error) = core.broken.take() {
                self.drop_connection(&mut core, error, now);
            }
            if core.session.poll_timeout().is_some_and(|at| at <= now) {
                core.session.handle_timeout(now);
                if self.connection.is_some() && core.session.state() == LinkState::Down {
                    // The session gave the link up (without timeout retransmission, a message
                    // went unacknowledged far too long): the next connection resends it.
                    self.drop_connection(&mut core, LinkError::Unacknowledged, now);
                }
            }
            self.take_transmits(&mut core, now, buf);
            if self.connection.is_none() {
                // No connection to carry them (a close frame after the link dropped).
                buf.clear();
            }
            if core.collect_events(&shared.config) {
                // Events from timers and link changes only (the reader passes on what
                // arrives): rare enough to signal under the lock.
                shared.events_queued();
            }
            if !buf.is_empty() || !self.datagrams.is_empty() {
                return true;
            }
            if core.session.state() == LinkState::Ended {
                return false;
            }
            let probe = shared.udp.as_ref().and_then(|udp| udp.next_probe(&core));
            let deadline = core.session.poll_timeout().into_iter().chain(probe).min();
            core.driver_waiting = Some(deadline);
            core = shared.wait(&shared.driver_wake, core, deadline);
            core.driver_waiting = None;
        }
    }

    /// Takes the session's frames: into `buf` for the connection, and with a UDP side the
    /// best-effort datagrams (one frame each) and a probe that is due into `self.datagrams`.
    fn take_transmits(&mut self, core: &mut Core, now: Instant, buf: &mut Vec<u8>) {
        let Some(udp) = &self.shared.udp else {
            while buf.len() < MAX_BATCH && core.session.poll_transmit(now, buf).is_some() {}
            return;
        };
        while buf.len() < MAX_BATCH && self.datagrams.frames.len() < MAX_DATAGRAMS {
            let start = buf.len();
            let Some(transmit) = core.session.poll_transmit(now, buf) else { break };
            if transmit.best_effort {
                self.datagrams.frames.push(buf.split_off(start));
            }
        }
        let interval = self.shared.config.session.heartbeat_interval;
        udp.prepare(core, now, interval, &mut self.datagrams);
    }

    /// Sends the datagrams taken, then writes `buf` to the current connection, outside the
    /// lock.
    fn write(&mut self, buf: &mut Vec<u8>) {
        if let (Some(udp), Some(socket)) = (&self.shared.udp, &self.udp_socket) {
            if !self.datagrams.is_empty() {
                let (out, counter) = (&mut self.datagrams, &mut self.datagram_counter);
                let (sent, unsent) = udp.send(socket, out, counter, &mut self.datagram_buf);
                let mut core = self.shared.lock();
                core.counters.datagrams_sent += sent;
                core.counters.datagrams_unsent += unsent;
            }
        }
        let Some((connection, number)) = &mut self.connection else {
            buf.clear();
            return;
        };
        let result = connection.write_all(buf, self.shared.config.stall_timeout);
        let mut core = self.shared.lock();
        match result {
            Ok(()) => core.counters.bytes_sent += buf.len() as u64,
            Err(error) => core.report_broken(*number, error),
        }
        buf.clear();
    }

    /// Makes `connection` the current one, replacing any earlier one; its datagram key seals
    /// the UDP side's datagrams from now on.
    fn adopt(&mut self, core: &mut Core, secured: Secured, now: Instant) {
        if self.connection.is_some() {
            self.drop_connection(core, LinkError::Replaced, now);
        }
        let Secured { connection, datagram_key } = secured;
        if let Some(udp) = &self.shared.udp {
            udp.connection_up(core, datagram_key, now);
        }
        core.broken = None;
        core.connection += 1;
        let number = core.connection;
        let reader = connection
            .configure(self.shared.config.stall_timeout)
            .map_err(|e| LinkError::io("set up connection", &e))
            .and_then(|reader| self.spawn_reader(reader, number));
        match reader {
            Ok(handle) => {
                self.readers.retain(|r| !r.is_finished());
                self.readers.push(handle);
                self.connection = Some((connection, number));
                core.session.handle_link_up(now);
            }
            Err(error) => {
                core.counters.last_error = Some(error);
                core.counters.connections_lost += 1;
                core.want_connection = true;
                connection.shutdown();
                self.shared.dialer_wake.notify_all();
            }
        }
    }

    /// Closes the current connection and tells the session; the dialer makes a new one.
    fn drop_connection(&mut self, core: &mut Core, error: LinkError, now: Instant) {
        let Some((connection, _)) = self.connection.take() else { return };
        // Also wakes its reader, which then sees that it is stale.
        connection.shutdown();
        core.session.handle_link_down(now);
        core.udp.key = None;
        core.counters.connections_lost += 1;
        core.counters.last_error = Some(error);
        core.want_connection = true;
        self.shared.dialer_wake.notify_all();
    }

    fn spawn_reader(
        &self,
        reader: ConnectionReader,
        number: u64,
    ) -> Result<JoinHandle<()>, LinkError> {
        let shared = Arc::clone(&self.shared);
        thread::Builder::new()
            .name("postbox-host-link-read".to_owned())
            .spawn(move || read_loop(&shared, reader, number))
            .map_err(|e| LinkError::io("spawn host-link reader", &e))
    }

    /// Waits (briefly) for the current reader to see the peer hang up.
    fn linger(&self) {
        let until = Instant::now() + CLOSE_LINGER;
        while Instant::now() < until && self.readers.iter().any(|r| !r.is_finished()) {
            if self.shared.lock().aborted {
                return;
            }
            thread::sleep(LINGER_POLL);
        }
    }

    /// Closes the connection, ends the session if it has not ended (the handle was dropped),
    /// and tells every waiter that no more events will come.
    fn finish(mut self) {
        if let Some((connection, _)) = self.connection.take() {
            if !self.shared.lock().aborted {
                // A polite end: send FIN after the close frame and read until the peer hangs
                // up, so that no unread input turns the close into a reset that could destroy
                // the close frame on its way.
                connection.shutdown_write();
                self.linger();
            }
            connection.shutdown();
        }
        let mut core = self.shared.lock();
        let now = Instant::now();
        core.session.close(now);
        core.collect_events(&self.shared.config);
        core.finished = true;
        drop(core);
        self.shared.events_queued();
        self.shared.wake_all();
        for reader in self.readers.drain(..) {
            let _ = reader.join();
        }
    }
}

impl Drop for Driver {
    /// Should the driver ever panic, the handle still learns that the link is over.
    fn drop(&mut self) {
        if thread::panicking() {
            let mut core = self.shared.lock();
            core.session.close(Instant::now());
            core.collect_events(&self.shared.config);
            core.finished = true;
            drop(core);
            self.shared.events_queued();
            self.shared.wake_all();
        }
    }
}

/// Reads connection `number` into the session until it breaks or is replaced.
fn read_loop(shared: &Shared, mut reader: ConnectionReader, number: u64) {
    let mut chunk = vec![0u8; READ_CHUNK];
    // When a timer the waiting driver does not know of yet falls due (see `driver_work`).
    let mut deadline = None;
    loop {
        let result = reader.read_until(&mut chunk, deadline);
        let mut core = shared.lock();
        if core.connection != number || core.stopping() {
            return;
        }
        let now = Instant::now();
        let broken = match result {
            Ok(None) => None,
            Ok(Some(n)) => {
                core.counters.bytes_received += n as u64;
                match core.session.handle_bytes(now, &chunk[..n]) {
                    Ok(()) => None,
                    Err(e) => Some(LinkError::Corrupt(e)),
                }
            }
            Err(error) => Some(error),
        };
        // Deliveries and acks go to `recv` from here, not through the driver; the driver is
        // woken only when it has something to do: frames to write, or a timer earlier than
        // the one it waits for (a delayed ack's).
        let queued = core.collect_events(&shared.config);
        let done = broken.is_some();
        if let Some(error) = broken {
            core.report_broken(number, error);
        }
        let (wake_driver, timer) = driver_work(&core, now);
        deadline = timer;
        // Signalled with the lock released: a woken thread on this CPU must not find it held.
        drop(core);
        if queued {
            shared.events_queued();
        }
        shared.wake_driver(wake_driver);
        if done {
            return;
        }
    }
}

/// Whether the waiting driver must wake now, after the reader handed bytes to the session:
/// a broken connection, frames to write, a timer due (a probe of the UDP side's included), or
/// the end. Not for deliveries and acks alone: the reader passes those on itself. Also the
/// session's next timer if it is earlier than the one the driver waits for (a delayed ack's,
/// set by an arrival): the reader waits for it in its read and wakes the driver then, so that
/// an ack which rides with a reply (the usual case) costs the driver no extra wake-up.
pub(super) fn driver_work(core: &Core, now: Instant) -> (bool, Option<Instant>) {
    let Some(waiting_until) = core.driver_waiting else { return (false, None) };
    let session = &core.session;
    // A link that just opened owes the dialer's first probe (the driver waits for no timer of
    // the UDP side while no link is open).
    let probe_due =
        core.udp.next_probe.is_some_and(|at| at <= now) && session.state() == LinkState::Open;
    let earlier_timer = session.poll_timeout().filter(|&timer| match waiting_until {
        Some(until) => timer < until,
        None => true,
    });
    let wake = core.broken.is_some()
        || probe_due
        || earlier_timer.is_some_and(|timer| timer <= now)
        || session.state() == LinkState::Ended
        || session.has_transmit(now);
    (wake, if wake { None } else { earlier_timer })
}

/// Frames gathered into one write; more wait for the next.
const MAX_BATCH: usize = 256 << 10;
/// Datagrams taken for the UDP side in one step.
const MAX_DATAGRAMS: usize = 256;
const READ_CHUNK: usize = 64 << 10;
/// How long a politely ending link waits for the peer to hang up.
const CLOSE_LINGER: Duration = Duration::from_millis(250);
const LINGER_POLL: Duration = Duration::from_millis(2);
