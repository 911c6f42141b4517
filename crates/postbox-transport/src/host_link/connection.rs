//! One connection of a host link as the driver and its reader use it: plain TCP, or a TLS
//! connection shared by the two threads.
//!
//! A rustls connection cannot be split into a read half and a write half, and the driver's
//! writer and the per-connection reader must never wait for each other (the peer may be
//! waiting for our bytes before it sends any). So the TLS state sits behind a mutex that is
//! held only for non-blocking work: moving records between rustls and a **non-blocking**
//! socket, encrypting, decrypting. Every wait for the socket (`poll`, readable or writable)
//! happens with the mutex released. A single I/O thread owning the connection would do as
//! well, but would need a queue and a waker between it and the driver; this way the driver
//! and the reader work the same for plain TCP and TLS.

use std::io::{self, ErrorKind, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::os::fd::AsFd;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use super::datagram_key::DatagramKey;
use super::error::LinkError;
use super::handshake::tls_error;
use crate::wait::{wait_readable, wait_writable, Wait};

/// A connection the driver owns; its reader half comes from [`reader`](Self::reader).
#[derive(Debug)]
pub(super) enum Connection {
    /// Plain TCP, blocking, with the stall timeout as its write timeout.
    Plain(TcpStream),
    /// TLS over a non-blocking socket.
    Tls(Arc<TlsStream>),
}

/// A connection that passed its handshake, with the key of its UDP datagrams (none for plain
/// TCP: its datagrams carry the session ids instead, see `udp.rs`).
#[derive(Debug)]
pub(super) struct Secured {
    pub(super) connection: Connection,
    pub(super) datagram_key: Option<DatagramKey>,
}

impl Secured {
    /// A plain TCP connection.
    pub(super) fn plain(stream: TcpStream) -> Self {
        Self { connection: Connection::plain(stream), datagram_key: None }
    }
}

/// The reading half of a [`Connection`], for the connection's reader thread.
#[derive(Debug)]
pub(super) enum ConnectionReader {
    /// A clone of the plain socket.
    Plain(TcpStream),
    /// The shared TLS connection.
    Tls(Arc<TlsStream>),
}

/// A TLS connection shared by the writer and the reader (see the module docs).
#[derive(Debug)]
pub(super) struct TlsStream {
    socket: TcpStream,
    tls: Mutex<rustls::Connection>,
}

impl Connection {
    /// A plain TCP connection.
    pub(super) fn plain(stream: TcpStream) -> Self {
        Self::Plain(stream)
    }

    /// A TLS connection whose handshake is complete; makes the socket non-blocking.
    pub(super) fn tls(socket: TcpStream, tls: rustls::Connection) -> io::Result<Self> {
        socket.set_nonblocking(true)?;
        Ok(Self::Tls(Arc::new(TlsStream { socket, tls: Mutex::new(tls) })))
    }

    /// Sets the socket up for the session (no Nagle delay, the stall bound on plain writes)
    /// and returns the reader half.
    pub(super) fn configure(&self, stall: Duration) -> io::Result<ConnectionReader> {
        match self {
            Self::Plain(stream) => {
                stream.set_nodelay(true)?;
                stream.set_write_timeout(Some(stall))?;
                stream.try_clone().map(ConnectionReader::Plain)
            }
            Self::Tls(tls) => {
                tls.socket.set_nodelay(true)?;
                Ok(ConnectionReader::Tls(Arc::clone(tls)))
            }
        }
    }

    /// Writes all of `bytes`; fails with [`LinkError::Stalled`] when no byte moves for
    /// `stall`.
    pub(super) fn write_all(&mut self, bytes: &[u8], stall: Duration) -> Result<(), LinkError> {
        match self {
            Self::Plain(stream) => {
                stream.write_all(bytes).map_err(|e| LinkError::io("write to peer", &e))
            }
            Self::Tls(tls) => tls.write_all(bytes, stall),
        }
    }

    /// Ends the connection politely after what was written: TLS's close_notify, then a FIN.
    pub(super) fn shutdown_write(&self) {
        if let Self::Tls(tls) = self {
            let mut state = tls.lock();
            state.send_close_notify();
            let _ = tls.flush_nonblocking(&mut state);
        }
        let _ = self.socket().shutdown(Shutdown::Write);
    }

    /// Closes both directions now; wakes the reader, which then sees the connection end.
    pub(super) fn shutdown(&self) {
        let _ = self.socket().shutdown(Shutdown::Both);
    }

    fn socket(&self) -> &TcpStream {
        match self {
            Self::Plain(stream) => stream,
            Self::Tls(tls) => &tls.socket,
        }
    }
}

impl ConnectionReader {
    /// Reads the next bytes of the session into `buf` (at least one), waiting until
    /// `deadline` at most (`Ok(None)` then) or as long as it takes; the connection's end is
    /// `Err(LinkError::Closed)`.
    pub(super) fn read_until(
        &mut self,
        buf: &mut [u8],
        deadline: Option<Instant>,
    ) -> Result<Option<usize>, LinkError> {
        let wait = deadline.map_or(Wait::Forever, Wait::Until);
        match self {
            Self::Plain(stream) => {
                if let Wait::Until(_) = wait {
                    // A failed poll (out of memory) falls through to the blocking read.
                    if wait_readable(&[stream.as_fd()], wait).is_ok_and(|ready| ready.is_empty()) {
                        return Ok(None);
                    }
                }
                self.read(buf).map(Some)
            }
            Self::Tls(tls) => tls.read(buf, wait),
        }
    }

    /// Reads the next bytes of the session into `buf` (at least one), waiting as long as it
    /// takes; the connection's end is `Err(LinkError::Closed)`.
    fn read(&mut self, buf: &mut [u8]) -> Result<usize, LinkError> {
        match self {
            Self::Plain(stream) => loop {
                match stream.read(buf) {
                    Ok(0) => return Err(LinkError::Closed),
                    Ok(n) => return Ok(n),
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    Err(e) => return Err(LinkError::io("read from peer", &e)),
                }
            },
            Self::Tls(tls) => tls.read(buf, Wait::Forever).map(|n| n.unwrap_or(0)),
        }
    }
}

impl TlsStream {
    fn lock(&self) -> MutexGuard<'_, rustls::Connection> {
        self.tls.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn write_all(&self, mut bytes: &[u8], stall: Duration) -> Result<(), LinkError> {
        let mut progress_at = Instant::now();
        loop {
            {
                let mut state = self.lock();
                // rustls takes what fits its buffer limit and encrypts it at once.
                let taken = if bytes.is_empty() {
                    0
                } else {
                    state.writer().write(bytes).map_err(|e| tls_io("write to peer", &e))?
                };
                bytes = &bytes[taken..];
                let moved = self.flush_nonblocking(&mut state)?;
                if moved {
                    progress_at = Instant::now();
                }
                if !state.wants_write() {
                    if bytes.is_empty() {
                        return Ok(());
                    }
                    if taken == 0 && !moved {
                        // Nothing queued, yet rustls takes nothing: it never will again (the
                        // connection was closed on our side).
                        return Err(LinkError::Closed);
                    }
                    continue;
                }
            }
            let until = progress_at + stall;
            match wait_writable(self.socket.as_fd(), Wait::Until(until)) {
                Ok(true) => {}
                Ok(false) => return Err(LinkError::Stalled),
                Err(_) => return Err(LinkError::Os { operation: "poll", kind: ErrorKind::Other }),
            }
        }
    }

    /// Reads decrypted bytes into `buf`, waiting for the socket as `wait` says (`Ok(None)`
    /// when that wait ended first).
    fn read(&self, buf: &mut [u8], wait: Wait) -> Result<Option<usize>, LinkError> {
        loop {
            {
                let mut state = self.lock();
                match state.reader().read(buf) {
                    Ok(0) => return Err(LinkError::Closed), // close_notify
                    Ok(n) => return Ok(Some(n)),
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                    Err(e) => return Err(tls_io("read from peer", &e)),
                }
                match state.read_tls(&mut &self.socket) {
                    Ok(0) => return Err(LinkError::Closed),
                    Ok(_) => {
                        let processed = state.process_new_packets();
                        // Whatever rustls wants to say (an alert, a key update) goes out now
                        // if the socket takes it, else with the next write.
                        let _ = self.flush_nonblocking(&mut state);
                        if let Err(error) = processed {
                            return Err(tls_error(&error));
                        }
                        continue;
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                    Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                    Err(e) => return Err(LinkError::io("read from peer", &e)),
                }
            }
            // A shutdown of the socket (the driver dropping this connection) wakes the wait.
            match wait_readable(&[self.socket.as_fd()], wait) {
                Ok(ready) if ready.is_empty() && matches!(wait, Wait::Until(_)) => return Ok(None),
                Ok(_) => {}
                Err(_) => std::thread::sleep(POLL_RETRY),
            }
        }
    }

    /// Writes queued records until the socket would block; true when any byte moved.
    fn flush_nonblocking(&self, state: &mut rustls::Connection) -> Result<bool, LinkError> {
        let mut moved = false;
        while state.wants_write() {
            match state.write_tls(&mut &self.socket) {
                Ok(0) => return Err(LinkError::Closed),
                Ok(_) => moved = true,
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(LinkError::io("write to peer", &e)),
            }
        }
        Ok(moved)
    }
}

/// An I/O error from rustls: the TLS failure it carries (rustls refuses to go on after one,
/// and says so through `io::Error`), or an OS error.
fn tls_io(operation: &'static str, error: &io::Error) -> LinkError {
    match error.get_ref().and_then(|inner| inner.downcast_ref::<rustls::Error>()) {
        Some(tls) => tls_error(tls),
        None => LinkError::io(operation, error),
    }
}

/// The pause before polling again when `poll` itself failed (out of memory).
const POLL_RETRY: Duration = Duration::from_millis(10);
