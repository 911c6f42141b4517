//! One link a tunnel relays: its local socket, the bytes from the other end waiting for that
//! socket, and the credit each way.
//!
//! Credit keeps one slow reader from holding up the tunnel: a sender sends at most the
//! window's worth of bytes the receiver has not yet passed on, so the receiver never holds
//! more than that for one channel, and never has to stop reading the connection for it.
//!
//! Each direction ends on its own, as a socketpair's do. The writer's end of stream (the local
//! socket read its end, or failed) travels as `Eof`; the local reader shuts the socket's
//! sending side once everything before it is written. A reader that went away (writing to the
//! local socket fails) travels as `Reset`: the other end sends nothing more from its local
//! socket, ends its direction with `Eof`, and shuts the socket's receiving side (so the writer
//! there hears that nobody reads, as it would locally). A channel is forgotten once both
//! directions ended.
//!
//! A `Reset` keeps the order a socketpair gives. A process that closes its end makes the
//! other's writes fail only when everything it wrote is already in the other's socket, so a
//! reader that gives up its link when a write fails still reads all of it. Across the tunnel,
//! the reset is therefore sent after the local writer's bytes when that writer closed (its
//! `Eof` goes first), and at once when it only stopped reading; and the other end shuts its
//! socket's receiving side only once nothing waits for that socket any more. Until then it
//! reads and drops what its local writer writes, so that writer never blocks on a socket
//! nobody reads (it may be writing before it reads on). The same holds for every channel once
//! the connection ended: what arrived is written, the writers' bytes are dropped, and they
//! hear that nobody reads once nothing waits.

use std::collections::VecDeque;
use std::io::{ErrorKind, Read, Write};
use std::net::Shutdown;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::UnixStream;

use super::error::TunnelError;
use crate::wait::{peer_closed_writing, wait_ready, Interest, Wait};

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
    /// Bytes written to the socket (or dropped) and not yet credited to the other end.
    unreported: u32,
    /// This end's direction is over (the socket's stream ended, or the other end's reader
    /// went away) and the other end was told with `Eof`.
    sent_eof: bool,
    /// The other end's reader went away: what this end sent may not have been passed on.
    refused: bool,
    /// The other end's direction is over: once `inbound` is written, the socket's sending
    /// side is shut down. Everything it sent was credited back at once (no more will come).
    peer_eof: bool,
    /// The local reader went away: what the other end sends is dropped (and credited).
    reader_gone: bool,
    /// The local reader went away and the other end is not told yet (see the module doc).
    reset_owed: bool,
    /// The socket's receiving side is to be shut once `inbound` is written (nobody at the
    /// other end reads); until then, what the local writer writes is read and dropped, so
    /// that it never blocks.
    read_shut_owed: bool,
    /// While `read_shut_owed`: the local writer's stream ended, nothing more to drop.
    dropped_all: bool,
    write_shut: bool,
}

/// What reading the local socket gave.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum LocalRead {
    /// Bytes, this many.
    Bytes(usize),
    /// Nothing now.
    WouldBlock,
    /// The local stream ended (the link's end was closed or shut down, or failed): the other
    /// end is to be told.
    End,
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
            refused: false,
            peer_eof: false,
            reader_gone: false,
            reset_owed: false,
            read_shut_owed: false,
            dropped_all: false,
            write_shut: false,
        })
    }

    /// Takes bytes the other end sent; returns credit to give back at once when they were
    /// dropped (the local reader went away).
    pub(super) fn handle_data(
        &mut self,
        bytes: Vec<u8>,
        window: u32,
    ) -> Result<Option<u32>, TunnelError> {
        if self.peer_eof {
            return Err(TunnelError::Protocol("data after the end of a channel's stream"));
        }
        let held = self.inbound_len + self.unreported as usize + bytes.len();
        if held > window as usize {
            return Err(TunnelError::Protocol("data beyond the credit given"));
        }
        if self.reader_gone {
            // At most the window (a u32), checked above.
            return Ok(Some(bytes.len() as u32));
        }
        self.inbound_len += bytes.len();
        self.inbound.push_back(bytes);
        Ok(None)
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

    /// Notes that the other end's direction is over; returns the credit for everything it
    /// sent that was not credited yet. The sender learns that all its bytes arrived (it may
    /// be waiting for that before its process exits); flow control no longer matters, since
    /// nothing more will come.
    pub(super) fn handle_eof(&mut self) -> Option<u32> {
        self.peer_eof = true;
        // At most the window (a u32) is ever held.
        let all = self.unreported + self.inbound_len as u32;
        self.unreported = 0;
        (all > 0).then_some(all)
    }

    /// Notes that the other end's reader went away: this end sends nothing more from its
    /// socket (what the local writer writes is dropped) and, once nothing waits for the
    /// socket, shuts its receiving side, so the local writer learns it. Returns true when the
    /// other end is to be told that this direction is over (`Eof`).
    pub(super) fn handle_reset(&mut self) -> bool {
        self.refused = true;
        self.read_shut_owed = true;
        self.shut_reading_if_due();
        if self.sent_eof {
            return false;
        }
        self.sent_eof = true;
        true
    }

    /// Notes that the connection ended: nothing more comes, and nothing can be sent. What
    /// waits for the socket is still written; the local writer is treated as after a reset
    /// (its bytes dropped, then its receiving side shut).
    pub(super) fn handle_connection_end(&mut self) {
        let _ = self.handle_eof();
        // Nobody can be told any more.
        self.reset_owed = false;
        let _ = self.handle_reset();
    }

    /// Shuts the socket's receiving side after a reset, once nothing waits for the socket.
    fn shut_reading_if_due(&mut self) {
        if self.read_shut_owed && self.inbound.is_empty() {
            let _ = self.socket.shutdown(Shutdown::Read);
            self.read_shut_owed = false;
        }
    }

    /// True (once) when the other end is to be told now that the local reader went away:
    /// the local writer's stream ended and its `Eof` went first, or the writer did not close
    /// its sending side (it only stopped reading, and may write on).
    pub(super) fn take_reset(&mut self) -> bool {
        if self.reset_owed && (self.sent_eof || !peer_closed_writing(self.socket.as_fd())) {
            self.reset_owed = false;
            return true;
        }
        false
    }

    /// Writes what waits to the socket, as far as it takes it; says when the local reader
    /// just went away (what waited is then dropped).
    pub(super) fn write_local(&mut self) -> WriteOutcome {
        while let Some(front) = self.inbound.front() {
            match self.socket.write(&front[self.written_of_front..]) {
                Ok(n) => {
                    self.written_of_front += n;
                    self.inbound_len -= n;
                    if !self.peer_eof {
                        // At most the window (a u32) is ever held.
                        self.unreported += n as u32;
                    }
                    if self.written_of_front == front.len() {
                        self.inbound.pop_front();
                        self.written_of_front = 0;
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => {
                    // Nobody reads here any more: drop what waits, and credit it so that the
                    // other end never stalls on bytes nobody will take.
                    let dropped = if self.peer_eof { 0 } else { self.inbound_len as u32 };
                    self.inbound.clear();
                    self.written_of_front = 0;
                    self.inbound_len = 0;
                    self.reader_gone = true;
                    self.reset_owed = true;
                    self.shut_reading_if_due();
                    return WriteOutcome::ReaderGone { dropped };
                }
            }
        }
        self.shut_reading_if_due();
        if self.inbound.is_empty() && self.peer_eof && !self.write_shut {
            // The local reader sees the end of the stream, as it would the peer's close.
            let _ = self.socket.shutdown(Shutdown::Write);
            self.write_shut = true;
        }
        WriteOutcome::Written
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
                Ok(n) if n > 0 => {
                    // `n <= room <= send_credit`.
                    self.send_credit -= n as u32;
                    return LocalRead::Bytes(n);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return LocalRead::WouldBlock,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                // The end of the stream; or a reset, which a Unix socket reports (after all
                // that was written) when its peer closed with bytes of its own unread: the
                // writer is done either way, and everything it wrote was read.
                _ => {
                    self.sent_eof = true;
                    return LocalRead::End;
                }
            }
        }
    }

    /// True while what the local writer writes is read and dropped (see `read_shut_owed`):
    /// the socket is worth polling for reading even when nothing can be sent.
    pub(super) fn is_dropping(&self) -> bool {
        self.read_shut_owed && !self.dropped_all
    }

    /// Reads what the local writer wrote after the other end's reader went away, and drops
    /// it (a few buffers' worth per call, so that other sockets get their turn).
    pub(super) fn drop_local(&mut self, buf: &mut [u8]) {
        for _ in 0..DROP_READS {
            match self.socket.read(buf) {
                Ok(n) if n > 0 => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                _ => {
                    self.dropped_all = true;
                    return;
                }
            }
        }
    }

    /// True when the socket is worth polling to send what it has: its stream goes on, and
    /// the other end gave credit.
    pub(super) fn wants_read(&self) -> bool {
        !self.sent_eof && self.send_credit > 0
    }

    /// True when bytes wait for the socket.
    pub(super) fn wants_write(&self) -> bool {
        !self.inbound.is_empty()
    }

    /// Bytes from the other end waiting for the socket.
    pub(super) fn inbound_len(&self) -> usize {
        self.inbound_len
    }

    /// True when this end's direction is over (and the other end was told).
    pub(super) fn has_ended_locally(&self) -> bool {
        self.sent_eof
    }

    /// True when the other end took everything this end sent: its credit is back in full,
    /// or its reader went away (and nothing could be passed on).
    pub(super) fn is_acknowledged(&self, window: u32) -> bool {
        self.send_credit == window || self.refused
    }

    /// True when the local socket has bytes (or its end) waiting to be read now.
    pub(super) fn is_readable_now(&self) -> bool {
        wait_ready(&[(self.socket.as_fd(), Interest::READ)], Wait::NonBlocking)
            .map_or(true, |ready| !ready.is_empty())
    }

    /// True when both directions are over: nothing more can pass either way.
    pub(super) fn is_done(&self) -> bool {
        self.sent_eof && self.peer_eof && self.inbound.is_empty() && !self.reset_owed
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

/// What writing to the local socket gave.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum WriteOutcome {
    /// What the socket took is written; the rest waits.
    Written,
    /// The local reader went away: what waited was dropped, `dropped` bytes of it not yet
    /// credited. The other end is to be told (`Reset`) when [`Channel::take_reset`] says.
    ReaderGone {
        /// Bytes to credit back.
        dropped: u32,
    },
}

/// Reads of a socket whose bytes are dropped, at most, per turn.
const DROP_READS: usize = 4;
