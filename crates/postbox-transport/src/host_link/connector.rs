//! Where a host link's TCP connections come from: a dialer with bounded exponential backoff,
//! or an acceptor on a listener.
//!
//! Either secures each new connection (`handshake.rs`: TLS or the pre-shared key, nothing for
//! plain TCP) and hands it to the driver through `Core::incoming`; the driver decides what
//! replaces what. A connection that fails its handshake never reaches the driver.

use std::io::ErrorKind;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::connection::Secured;
use super::error::LinkError;
use super::handshake::{self, Role};
use super::security::LinkSecurity;
use super::shared::Shared;
use crate::wait::{wait_readable, Wait};

/// Dials `addr` whenever the driver wants a connection, waiting the current backoff first.
///
/// The backoff starts at zero, doubles (within the configured bounds) after every attempt that
/// fails or whose link breaks before the session opens, and drops back to the minimum once a
/// session link opens.
pub(super) fn dial_loop(shared: &Shared, addr: SocketAddr) {
    let config = &shared.config;
    let mut core = shared.lock();
    loop {
        while !core.stopping() && !core.want_connection {
            core = shared.wait(&shared.dialer_wake, core, None);
        }
        let until = Instant::now() + core.backoff;
        while !core.stopping() && Instant::now() < until {
            core = shared.wait(&shared.dialer_wake, core, Some(until));
        }
        if core.stopping() {
            return;
        }
        core.backoff = config.next_backoff(core.backoff);
        drop(core);
        let result = match TcpStream::connect_timeout(&addr, config.connect_timeout) {
            Ok(stream) => {
                let timeout = config.connect_timeout;
                handshake::secure(stream, Role::Dialer, &shared.security, timeout)
                    .map_err(Failure::Handshake)
            }
            Err(e) => Err(Failure::Connect(LinkError::Connect(e.kind()))),
        };
        core = shared.lock();
        match result {
            Ok(connection) if !core.stopping() => {
                core.counters.connections += 1;
                core.want_connection = false;
                core.incoming = Some(connection);
                shared.wake_driver(core.driver_waits());
            }
            Ok(_) => return,
            Err(Failure::Connect(error)) => {
                core.counters.connect_failures += 1;
                core.counters.last_error = Some(error);
            }
            Err(Failure::Handshake(error)) => {
                core.counters.handshake_failures += 1;
                core.counters.last_error = Some(error);
            }
        }
    }
}

/// Accepts connections on `listener` (non-blocking) until the link finishes; each one
/// replaces the current connection, since a peer that reconnects has given up on the old one.
pub(super) fn accept_loop(shared: &Arc<Shared>, listener: &TcpListener) {
    loop {
        let ready =
            wait_readable(&[listener.as_fd(), shared.acceptor_waker.as_fd()], Wait::Forever);
        shared.acceptor_waker.reset();
        if shared.lock().stopping() {
            return;
        }
        if ready.is_err() {
            // `poll` itself failed (out of memory): try again shortly rather than spin.
            std::thread::sleep(ACCEPT_RETRY);
            continue;
        }
        loop {
            match listener.accept() {
                Ok((stream, _)) => hand_over(shared, stream),
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => {
                    // Out of descriptors, or the connection died in the backlog: note it, let
                    // the condition pass.
                    shared.lock().counters.last_error = Some(LinkError::io("accept", &e));
                    std::thread::sleep(ACCEPT_RETRY);
                    break;
                }
            }
        }
    }
}

/// Secures an accepted connection and hands it to the driver: at once for plain TCP, on a
/// short-lived thread of its own otherwise, so that a slow or hostile client cannot hold up
/// the acceptor (at most `MAX_HANDSHAKES` at a time; more are closed at once).
fn hand_over(shared: &Arc<Shared>, stream: TcpStream) {
    // Accepted sockets do not inherit the listener's non-blocking mode on every platform.
    if let Err(e) = stream.set_nonblocking(false) {
        shared.lock().counters.last_error = Some(LinkError::io("accept", &e));
        return;
    }
    if shared.security == LinkSecurity::Plain {
        deliver(shared, Ok(Secured::plain(stream)));
        return;
    }
    {
        let mut core = shared.lock();
        if core.handshakes >= MAX_HANDSHAKES {
            core.counters.handshake_failures += 1;
            return;
        }
        core.handshakes += 1;
    }
    let secured = Arc::clone(shared);
    let spawned = std::thread::Builder::new().name("postbox-host-link-handshake".to_owned()).spawn(
        move || {
            let timeout = secured.config.connect_timeout;
            let result = handshake::secure(stream, Role::Listener, &secured.security, timeout);
            secured.lock().handshakes -= 1;
            deliver(&secured, result);
        },
    );
    if let Err(e) = spawned {
        let mut core = shared.lock();
        core.handshakes -= 1;
        core.counters.last_error = Some(LinkError::io("spawn host-link handshake", &e));
    }
}

/// Gives the driver an accepted connection that passed its handshake, or records why it
/// did not.
fn deliver(shared: &Shared, result: Result<Secured, LinkError>) {
    let mut core = shared.lock();
    if core.stopping() {
        return;
    }
    match result {
        Ok(connection) => {
            core.counters.connections += 1;
            // An accepted connection the driver has not taken yet is superseded by the newer
            // one.
            core.incoming = Some(connection);
            shared.wake_driver(core.driver_waits());
        }
        Err(error) => {
            core.counters.handshake_failures += 1;
            core.counters.last_error = Some(error);
        }
    }
}

/// Why a dial attempt gave no connection.
enum Failure {
    /// The TCP connect failed.
    Connect(LinkError),
    /// The handshake on the new connection failed.
    Handshake(LinkError),
}

const ACCEPT_RETRY: Duration = Duration::from_millis(10);
/// Handshakes of accepted connections running at once, at most.
const MAX_HANDSHAKES: usize = 8;
