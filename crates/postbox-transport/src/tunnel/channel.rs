//! One link a tunnel relays: its local socket, the bytes from the other end waiting for that
//! socket, and the credit each way.
//!
//! Credit keeps one slow reader from holding up the tunnel: a sender sends at most the
//! window's worth of bytes the receiver has not yet passed on, so the receiver never holds
//! more than that for one channel, and never has to stop reading the connection for it.

use std::collections::VecDeque;
use std::io::{ErrorKind, Read, Write};
use std::net::Shutdown;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::UnixStream;

use super::error::TunnelError;

/// A relayed link's state at one end of the tunnel.
#[derive(Debug)]
pub(super) struct Channel {
    socket: UnixStream,
    /// Bytes from the other end, in order, not yet written to the socket.
    inbound: VecDeque<Vec<u8>>,
    /// How much of `inbound`'s first piece was written already.
    written_of_front: usize,
    inbound_len: usize,
    /// Bytes of this end's stream the other end may still be sent.
    send_credit: u32,
    /// Bytes written to the socket and not yet credited to the other end.
    unreported: u32,
    /// The socket's stream ended and the other end was told.
    sent_eof: bool,
    /// The other end's stream ended: once `inbound` is written, the socket's sending side
    /// is shut down.
    peer_eof: bool,
    write_shut: bool,
}

/// What reading the local socket gave.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum LocalRead {
    /// Bytes, this many.
    Bytes(usize),
    /// Nothing now.
    WouldBlock,
    /// The local stream ended (the link's end was closed or shut down).
    End,
    /// The socket failed: the channel is gone.
    Gone,
}

impl Channel {
    /// A channel over `socket`, with the full window of credit.
    pub(super) fn new(socket: UnixStream, window: u32) -> std::io::Result<Self> {
        socket.set_nonblocking(true)?;
        Ok(Self {
            socket,
            inbound: VecDeque::new(),
            written_of_front: 0,
            inbound_len: 0,
            send_credit: window,
            unreported: 0,
            sent_eof: false,
            peer_eof: false,
            write_shut: false,
        })
    }

    /// Takes bytes the other end sent.
    pub(super) fn handle_data(&mut self, bytes: Vec<u8>, window: u32) -> Result<(), TunnelError> {
        if self.peer_eof {
            return Err(TunnelError::Protocol("data after the end of a channel's stream"));
        }
        let held = self.inbound_len + self.unreported as usize + bytes.len();
        if held > window as usize {
            return Err(TunnelError::Protocol("data beyond the credit given"));
        }
        self.inbound_len += bytes.len();
        self.inbound.push_back(bytes);
        Ok(())
    }

    /// Takes credit the other end returned.
    pub(super) fn handle_credit(&mut self, bytes: u32, window: u32) -> Result<(), TunnelError> {
        self.send_credit = self
            .send_credit
            .checked_add(bytes)
            .filter(|credit| *credit <= window)
            .ok_or(TunnelError::Protocol("credit beyond the window"))?;
        Ok(())
    }

    /// Notes that the other end's stream ended.
    pub(super) fn handle_eof(&mut self) {
        self.peer_eof = true;
    }

    /// Writes what waits to the socket, as far as it takes it; false when the socket is gone
    /// (its reader closed it).
    pub(super) fn write_local(&mut self) -> bool {
        while let Some(front) = self.inbound.front() {
            match self.socket.write(&front[self.written_of_front..]) {
                Ok(n) => {
                    self.written_of_front += n;
                    self.inbound_len -= n;
                    // At most the window (a u32) is ever held.
                    self.unreported += n as u32;
                    if self.written_of_front == front.len() {
                        self.inbound.pop_front();
                        self.written_of_front = 0;
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => return false,
            }
        }
        if self.inbound.is_empty() && self.peer_eof && !self.write_shut {
            // The local reader sees the end of the stream, as it would the peer's close.
            let _ = self.socket.shutdown(Shutdown::Write);
            self.write_shut = true;
        }
        true
    }

    /// The credit to return to the other end, once enough was passed on to be worth a frame.
    pub(super) fn take_credit_report(&mut self, window: u32) -> Option<u32> {
        if self.unreported >= (window / 4).max(1) {
            Some(std::mem::take(&mut self.unreported))
        } else {
            None
        }
    }

    /// Reads from the socket into `buf`, at most the credit left.
    pub(super) fn read_local(&mut self, buf: &mut [u8]) -> LocalRead {
        let room = buf.len().min(self.send_credit as usize);
        if room == 0 || self.sent_eof {
            return LocalRead::WouldBlock;
        }
        loop {
            match self.socket.read(&mut buf[..room]) {
                Ok(0) => {
                    self.sent_eof = true;
                    return LocalRead::End;
                }
                Ok(n) => {
                    // `n <= room <= send_credit`.
                    self.send_credit -= n as u32;
                    return LocalRead::Bytes(n);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return LocalRead::WouldBlock,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => return LocalRead::Gone,
            }
        }
    }

    /// True when the socket is worth polling for reading: its stream goes on, and the other
    /// end gave credit.
    pub(super) fn wants_read(&self) -> bool {
        !self.sent_eof && self.send_credit > 0
    }

    /// True when bytes wait for the socket.
    pub(super) fn wants_write(&self) -> bool {
        !self.inbound.is_empty()
    }

    /// True when both directions are over: nothing more can pass either way.
    pub(super) fn is_done(&self) -> bool {
        self.sent_eof && self.write_shut
    }

    /// True when everything from the other end was written (or there was nothing).
    pub(super) fn is_drained(&self) -> bool {
        self.inbound.is_empty()
    }

    /// The descriptor to poll.
    pub(super) fn as_fd(&self) -> BorrowedFd<'_> {
        self.socket.as_fd()
    }
}
