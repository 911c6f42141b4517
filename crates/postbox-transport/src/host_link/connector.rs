//! Where a host link's TCP connections come from: a dialer with bounded exponential backoff,
//! or an acceptor on a listener.
//!
//! Either hands each new connection to the driver through `Core::incoming`; the driver decides
//! what replaces what.

use std::io::ErrorKind;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use super::error::LinkError;
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
            core = shared.wait(&shared.changed, core, None);
        }
        let until = Instant::now() + core.backoff;
        while !core.stopping() && Instant::now() < until {
            core = shared.wait(&shared.changed, core, Some(until));
        }
        if core.stopping() {
            return;
        }
        core.backoff = config.next_backoff(core.backoff);
        drop(core);
        let result = TcpStream::connect_timeout(&addr, config.connect_timeout);
        core = shared.lock();
        match result {
            Ok(stream) if !core.stopping() => {
                core.counters.connections += 1;
                core.want_connection = false;
                core.incoming = Some(stream);
                shared.changed.notify_all();
            }
            Ok(_) => return,
            Err(e) => {
                core.counters.connect_failures += 1;
                core.counters.last_error = Some(LinkError::Connect(e.kind()));
            }
        }
    }
}

/// Accepts connections on `listener` (non-blocking) until the link finishes; each one
/// replaces the current connection, since a peer that reconnects has given up on the old one.
pub(super) fn accept_loop(shared: &Shared, listener: &TcpListener) {
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

fn hand_over(shared: &Shared, stream: TcpStream) {
    // Accepted sockets do not inherit the listener's non-blocking mode on every platform.
    if let Err(e) = stream.set_nonblocking(false) {
        shared.lock().counters.last_error = Some(LinkError::io("accept", &e));
        return;
    }
    let mut core = shared.lock();
    if core.stopping() {
        return;
    }
    core.counters.connections += 1;
    // An accepted connection the driver has not taken yet is superseded by the newer one.
    core.incoming = Some(stream);
    shared.changed.notify_all();
}

const ACCEPT_RETRY: Duration = Duration::from_millis(10);
