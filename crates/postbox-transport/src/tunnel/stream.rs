//! The tunnel's connection as its pump uses it: plain TCP or TLS, non-blocking, read and written
//! by one thread only (so a TLS connection needs no lock).

use std::io::{self, ErrorKind, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::os::fd::{AsFd, BorrowedFd};

use super::error::TunnelError;

/// A connection whose authentication is done.
#[derive(Debug)]
pub(super) enum TunnelStream {
    /// Plain TCP (the pre-shared key mode).
    Plain(TcpStream),
    /// TLS 1.3 (the certificate mode).
    Tls {
        /// The socket under the TLS records.
        socket: TcpStream,
        /// The TLS state, its handshake complete.
        tls: Box<rustls::Connection>,
    },
}

/// What a read brought.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ReadOutcome {
    /// Bytes, this many.
    Bytes(usize),
    /// Nothing now.
    WouldBlock,
    /// The other end finished sending.
    End,
}

impl TunnelStream {
    /// Makes the socket non-blocking and without Nagle delay: the pump waits with `poll`.
    pub(super) fn configure(&self) -> io::Result<()> {
        let socket = self.socket();
        socket.set_read_timeout(None)?;
        socket.set_write_timeout(None)?;
        socket.set_nodelay(true)?;
        socket.set_nonblocking(true)
    }

    /// Reads decrypted bytes into `buf`, without blocking.
    pub(super) fn read(&mut self, buf: &mut [u8]) -> Result<ReadOutcome, TunnelError> {
        match self {
            Self::Plain(socket) => loop {
                match socket.read(buf) {
                    Ok(0) => return Ok(ReadOutcome::End),
                    Ok(n) => return Ok(ReadOutcome::Bytes(n)),
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {
                        return Ok(ReadOutcome::WouldBlock)
                    }
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    Err(e) => return Err(TunnelError::io("read from the tunnel", &e)),
                }
            },
            Self::Tls { socket, tls } => loop {
                match tls.reader().read(buf) {
                    // close_notify, after everything before it was read.
                    Ok(0) => return Ok(ReadOutcome::End),
                    Ok(n) => return Ok(ReadOutcome::Bytes(n)),
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                    // The socket ended without close_notify: the other end is gone all the same.
                    Err(e) if e.kind() == ErrorKind::UnexpectedEof => return Ok(ReadOutcome::End),
                    Err(_) => return Err(TunnelError::Tls),
                }
                match tls.read_tls(&mut &*socket) {
                    Ok(_) => {
                        // At the socket's end rustls records it, and the next plaintext read
                        // says so once what came before is read.
                        let processed = tls.process_new_packets();
                        if processed.is_err() {
                            // Tell the other end why, if it still listens.
                            let _ = flush_tls(socket, tls);
                            return Err(TunnelError::Tls);
                        }
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {
                        return Ok(ReadOutcome::WouldBlock)
                    }
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    Err(e) => return Err(TunnelError::io("read from the tunnel", &e)),
                }
            },
        }
    }

    /// Writes what the connection takes of `bytes` now; returns how many it took (TLS takes
    /// them into its records, and sends what the socket takes).
    pub(super) fn write(&mut self, bytes: &[u8]) -> Result<usize, TunnelError> {
        match self {
            Self::Plain(socket) => loop {
                match socket.write(bytes) {
                    Ok(n) => return Ok(n),
                    Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(0),
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    Err(e) => return Err(TunnelError::io("write to the tunnel", &e)),
                }
            },
            Self::Tls { socket, tls } => {
                let taken = if bytes.is_empty() {
                    0
                } else {
                    tls.writer().write(bytes).map_err(|_| TunnelError::Tls)?
                };
                flush_tls(socket, tls)?;
                Ok(taken)
            }
        }
    }

    /// True when written bytes wait inside (TLS records the socket did not take yet).
    pub(super) fn wants_write(&self) -> bool {
        match self {
            Self::Plain(_) => false,
            Self::Tls { tls, .. } => tls.wants_write(),
        }
    }

    /// Sends what waits inside, as far as the socket takes it.
    pub(super) fn flush(&mut self) -> Result<(), TunnelError> {
        match self {
            Self::Plain(_) => Ok(()),
            Self::Tls { socket, tls } => flush_tls(socket, tls),
        }
    }

    /// Ends the sending direction after what was written: TLS's close_notify, then a FIN.
    pub(super) fn finish_sending(&mut self) {
        if let Self::Tls { socket, tls } = self {
            tls.send_close_notify();
            let _ = flush_tls(socket, tls);
        }
        let _ = self.socket().shutdown(Shutdown::Write);
    }

    /// The descriptor to poll.
    pub(super) fn as_fd(&self) -> BorrowedFd<'_> {
        self.socket().as_fd()
    }

    fn socket(&self) -> &TcpStream {
        match self {
            Self::Plain(socket) | Self::Tls { socket, .. } => socket,
        }
    }
}

/// Writes queued TLS records until the socket would block.
fn flush_tls(socket: &TcpStream, tls: &mut rustls::Connection) -> Result<(), TunnelError> {
    while tls.wants_write() {
        match tls.write_tls(&mut &*socket) {
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(TunnelError::io("write to the tunnel", &e)),
        }
    }
    Ok(())
}
