//! The pump: one thread per tunnel end that relays the local control socket and every link's
//! local socket over the tunnel's connection, and back, with `poll` over all of them.
//!
//! On the broker's side the local control socket is the one the broker's event loop serves
//! as this node's; each descriptor the broker passes beside a control packet (a link's
//! socket) becomes a channel. On the node's side each new channel becomes a socketpair: one
//! end passed to the node with the control packet, the other relayed here. Only stream
//! sockets can be relayed; any other descriptor (a shared-memory segment) is closed and the
//! packet goes on without it, so the node refuses that link rather than misusing it.

use std::collections::{BTreeMap, VecDeque};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::time::Instant;

use postbox_core::wire::tunnel::{
    encode_data, ChannelId, TunnelDecoder, TunnelFrame, MAX_DATA_LEN, MAX_PACKET_LEN,
};
use rustix::net::SocketType;

use super::channel::{Channel, LocalRead, WriteOutcome};
use super::error::TunnelError;
use super::stream::{ReadOutcome, TunnelStream};
use super::{Tunnel, TunnelConfig};
use crate::wait::{wait_ready, Interest, Wait};
use crate::{ControlSocket, TransportError};

/// Which end of the tunnel this pump is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Side {
    /// The node's process: channels arrive from the broker.
    Node,
    /// The broker's process: the broker passes descriptors, which become channels.
    Broker,
}

/// One end of a tunnel, served by [`run`](Self::run) on its own thread.
#[derive(Debug)]
pub(crate) struct Pump {
    side: Side,
    stream: TunnelStream,
    config: TunnelConfig,
    control: Option<ControlSocket>,
    /// The local control socket's stream goes on (its end was not read).
    control_reading: bool,
    /// The other end's control stream goes on (no `Eof` on channel 0 yet).
    control_peer_open: bool,
    /// Control packets from the other end, waiting for the local control socket.
    to_control: VecDeque<(Vec<u8>, Vec<OwnedFd>)>,
    channels: BTreeMap<ChannelId, Channel>,
    /// Broker side: the next channel to open. Node side: the lowest not yet opened.
    next_channel: u32,
    decoder: TunnelDecoder,
    /// Encoded frames not yet taken by the connection, from `out_start` on.
    out: Vec<u8>,
    out_start: usize,
    /// The connection's receiving direction ended cleanly: what was received is delivered,
    /// nothing more is read locally.
    draining_since: Option<Instant>,
    last_received: Instant,
    last_sent: Instant,
    /// When the connection last took a byte, or when bytes began to wait for it.
    last_write_progress: Instant,
    /// The last read of the connection stopped before it would block: bytes may wait inside
    /// TLS, where `poll` cannot see them.
    read_pending: bool,
    scratch: Vec<u8>,
    control_buf: Vec<u8>,
    /// Told once the tunnel settled (node side).
    tunnel: Option<Tunnel>,
}

/// What one entry of the poll set is.
#[derive(Debug, Clone, Copy)]
enum Slot {
    Connection,
    Control,
    Channel(ChannelId),
}

impl Pump {
    /// A pump for a connection whose authentication is done, relaying `control`.
    pub(crate) fn new(
        side: Side,
        stream: TunnelStream,
        control: ControlSocket,
        config: TunnelConfig,
    ) -> Self {
        let now = Instant::now();
        Self {
            side,
            stream,
            config,
            control: Some(control),
            control_reading: true,
            control_peer_open: true,
            to_control: VecDeque::new(),
            channels: BTreeMap::new(),
            next_channel: 1,
            decoder: TunnelDecoder::new(),
            out: Vec::new(),
            out_start: 0,
            draining_since: None,
            last_received: now,
            last_sent: now,
            last_write_progress: now,
            read_pending: true,
            scratch: vec![0; MAX_DATA_LEN as usize],
            control_buf: vec![0; MAX_PACKET_LEN],
            tunnel: None,
        }
    }

    /// Tells `tunnel` when this end settles: see [`Tunnel::wait_settled`].
    pub(crate) fn reporting_to(mut self, tunnel: Tunnel) -> Self {
        self.tunnel = Some(tunnel);
        self
    }

    /// Relays until both ends are done, or the connection fails. Everything local is closed
    /// on return: the node's links and control socket see their ends.
    pub(crate) fn run(mut self) -> Result<(), TunnelError> {
        let result = self.serve();
        if result.is_ok() {
            self.linger();
        }
        result
    }

    fn serve(&mut self) -> Result<(), TunnelError> {
        loop {
            if self.read_pending && self.to_control.len() < CONTROL_BACKLOG {
                // Bytes the handshake or an earlier round left inside TLS.
                self.read_connection()?;
                self.flush_out()?;
            }
            let now = Instant::now();
            self.check_timers(now)?;
            self.close_control_if_done();
            if self.is_finished() {
                return Ok(());
            }
            if self.tunnel.is_some() && self.is_settled() {
                if let Some(tunnel) = self.tunnel.take() {
                    tunnel.settle();
                }
            }
            let ready = self.wait(now)?;
            for slot in ready {
                match slot {
                    Slot::Connection => {
                        self.flush_out()?;
                        self.read_connection()?;
                    }
                    Slot::Control => {
                        self.deliver_control();
                        self.read_control()?;
                    }
                    Slot::Channel(id) => self.serve_channel(id),
                }
            }
            self.flush_out()?;
        }
    }

    /// Fails the tunnel when the other end fell silent or stopped reading; sends a ping when
    /// this end has been quiet.
    fn check_timers(&mut self, now: Instant) -> Result<(), TunnelError> {
        if self.draining_since.is_some() {
            // Nothing more comes, and nothing is sent: what is left waits for the local readers
            // however slow they are, until each took it or closed (a closed reader's socket
            // polls writable and fails the write). Their number and bytes are bounded by
            // `max_channels` and `inbound_budget`.
            return Ok(());
        }
        if self.to_control.len() >= CONTROL_BACKLOG {
            // The connection is not read while the local end catches up: what the other end
            // sends meanwhile waits unread, so its silence cannot be told from its talk.
            self.last_received = now;
        }
        if now >= self.last_received + self.config.dead_after {
            return Err(TunnelError::Silent);
        }
        if self.out_len() > 0 && now >= self.last_write_progress + self.config.dead_after {
            return Err(TunnelError::Stalled);
        }
        if now >= self.last_sent + self.config.heartbeat_interval {
            self.queue(&TunnelFrame::Ping);
        }
        Ok(())
    }

    /// True when there is nothing left to do: everything closed and sent, or everything the
    /// ended connection brought delivered.
    fn is_finished(&self) -> bool {
        match self.draining_since {
            Some(_) => {
                self.to_control.is_empty() && self.channels.values().all(Channel::is_drained)
            }
            None => {
                self.control.is_none()
                    && self.channels.is_empty()
                    && self.out_len() == 0
                    && !self.stream.wants_write()
            }
        }
    }

    /// True when nothing this end's process wrote can be lost any more: both control
    /// directions ended, everything queued went out, every link whose local end closed had all
    /// its bytes received by the other end (its credit is back in full, which the other end
    /// does at once on the end of the stream), and links still open have nothing waiting.
    fn is_settled(&self) -> bool {
        let window = self.config.window;
        !self.control_reading
            && !self.control_peer_open
            && self.to_control.is_empty()
            && self.out_len() == 0
            && !self.stream.wants_write()
            && self.channels.values().all(|c| {
                if c.has_ended_locally() {
                    c.is_acknowledged(window)
                } else {
                    !c.is_readable_now()
                }
            })
    }

    /// Polls what can make progress; returns the ready slots (none when a timer is due).
    fn wait(&self, now: Instant) -> Result<Vec<Slot>, TunnelError> {
        let open = self.draining_since.is_none();
        let room = self.out_len() < OUT_HIGH_WATER;
        let mut set: Vec<(BorrowedFd<'_>, Interest)> = Vec::with_capacity(2 + self.channels.len());
        let mut slots = Vec::with_capacity(set.capacity());
        let read = open && self.to_control.len() < CONTROL_BACKLOG;
        // Nothing is sent once draining (what is queued then stays queued): write interest
        // would make every poll return at once.
        let write = open && (self.out_len() > 0 || self.stream.wants_write());
        if read || write {
            set.push((self.stream.as_fd(), Interest { read, write }));
            slots.push(Slot::Connection);
        }
        if let Some(control) = &self.control {
            let read = open && room && self.control_reading;
            let write = !self.to_control.is_empty();
            if read || write {
                set.push((control.as_fd(), Interest { read, write }));
                slots.push(Slot::Control);
            }
        }
        for (id, channel) in &self.channels {
            // A channel dropping its writer's bytes is read even while draining: that writer
            // must not block.
            let read = channel.is_dropping() || (open && room && channel.wants_read());
            let write = channel.wants_write();
            if read || write {
                set.push((channel.as_fd(), Interest { read, write }));
                slots.push(Slot::Channel(*id));
            }
        }
        let wait = match self.draining_since {
            // No timer runs while draining (`check_timers`).
            Some(_) => Wait::Forever,
            None => {
                let mut deadline = (self.last_received + self.config.dead_after)
                    .min(self.last_sent + self.config.heartbeat_interval);
                if self.out_len() > 0 {
                    deadline = deadline.min(self.last_write_progress + self.config.dead_after);
                }
                Wait::Until(deadline.max(now))
            }
        };
        match wait_ready(&set, wait) {
            Ok(ready) => Ok(ready.iter().map(|&index| slots[index]).collect()),
            Err(TransportError::Os { kind, .. }) => {
                Err(TunnelError::Os { operation: "poll", kind })
            }
            Err(_) => Err(TunnelError::Os { operation: "poll", kind: std::io::ErrorKind::Other }),
        }
    }

    /// Reads what the connection has, and acts on every whole frame in it.
    fn read_connection(&mut self) -> Result<(), TunnelError> {
        if self.draining_since.is_some() {
            return Ok(());
        }
        let mut budget = READ_BUDGET;
        self.read_pending = true;
        while budget > 0 && self.to_control.len() < CONTROL_BACKLOG {
            let read = match self.stream.read(&mut self.scratch) {
                // A reset (the other process died, or closed with bytes unread) ends the
                // connection like a clean close: what already arrived is still delivered, as
                // a socket's buffer outlives its writer.
                Err(TunnelError::Broken) => ReadOutcome::End,
                other => other?,
            };
            match read {
                ReadOutcome::Bytes(n) => {
                    budget = budget.saturating_sub(n);
                    self.last_received = Instant::now();
                    self.decoder.handle_bytes(&self.scratch[..n]);
                    while let Some(frame) =
                        self.decoder.poll_frame().map_err(TunnelError::Malformed)?
                    {
                        self.handle_frame(frame)?;
                    }
                }
                ReadOutcome::WouldBlock => {
                    self.read_pending = false;
                    return Ok(());
                }
                ReadOutcome::End => {
                    self.read_pending = false;
                    self.draining_since = Some(Instant::now());
                    // The other end is done: nothing this end sends matters any more.
                    self.out.clear();
                    self.out_start = 0;
                    self.control_peer_open = false;
                    let ids: Vec<ChannelId> = self.channels.keys().copied().collect();
                    for id in ids {
                        if let Some(channel) = self.channels.get_mut(&id) {
                            // Nothing can be sent any more: the credit is not told.
                            channel.handle_connection_end();
                        }
                        self.settle_channel(id);
                    }
                    return Ok(());
                }
            }
        }
        Ok(())
    }

    fn handle_frame(&mut self, frame: TunnelFrame) -> Result<(), TunnelError> {
        let window = self.config.window;
        match frame {
            TunnelFrame::Ping => Ok(()),
            TunnelFrame::Control { channels, packet } => self.handle_control(channels, packet),
            TunnelFrame::Data { channel, bytes } => match self.channels.get_mut(&channel) {
                Some(open) => {
                    if let Some(bytes) = open.handle_data(bytes, window)? {
                        self.queue(&TunnelFrame::Credit { channel, bytes });
                    }
                    let waiting: usize = self.channels.values().map(Channel::inbound_len).sum();
                    if waiting > self.config.inbound_budget {
                        return Err(TunnelError::OverBudget);
                    }
                    // Straight on to the local reader, without waiting for a poll round.
                    self.settle_channel(channel);
                    Ok(())
                }
                None => self.check_was_open(channel),
            },
            TunnelFrame::Credit { channel, bytes } => match self.channels.get_mut(&channel) {
                Some(open) => open.handle_credit(bytes, window),
                None => self.check_was_open(channel),
            },
            TunnelFrame::Eof { channel: ChannelId::CONTROL } => {
                self.control_peer_open = false;
                Ok(())
            }
            TunnelFrame::Eof { channel } => match self.channels.get_mut(&channel) {
                Some(open) => {
                    if let Some(bytes) = open.handle_eof() {
                        self.queue(&TunnelFrame::Credit { channel, bytes });
                    }
                    self.settle_channel(channel);
                    Ok(())
                }
                None => self.check_was_open(channel),
            },
            TunnelFrame::Reset { channel } => match self.channels.get_mut(&channel) {
                Some(open) => {
                    if open.handle_reset() {
                        self.queue(&TunnelFrame::Eof { channel });
                    }
                    self.settle_channel(channel);
                    Ok(())
                }
                None => self.check_was_open(channel),
            },
        }
    }

    /// A frame for a channel that is not open is fine if the channel was opened once (it was
    /// reset or finished here while the frame travelled); otherwise the other end is broken.
    fn check_was_open(&self, channel: ChannelId) -> Result<(), TunnelError> {
        if channel.0 < self.next_channel {
            Ok(())
        } else {
            Err(TunnelError::Protocol("a frame for a channel that was never opened"))
        }
    }

    /// A control packet from the other end: queued for the local control socket, with a new
    /// socketpair end for each channel it opens (node side).
    fn handle_control(
        &mut self,
        channels: Vec<ChannelId>,
        packet: Vec<u8>,
    ) -> Result<(), TunnelError> {
        if !self.control_peer_open {
            return Err(TunnelError::Protocol("a control packet after the control channel ended"));
        }
        if self.side == Side::Broker && !channels.is_empty() {
            return Err(TunnelError::Protocol("a node passed descriptors"));
        }
        if self.channels.len() + channels.len() > self.config.max_channels {
            return Err(TunnelError::TooManyChannels);
        }
        let mut fds = Vec::with_capacity(channels.len());
        for id in channels {
            if id.0 < self.next_channel {
                return Err(TunnelError::Protocol("a channel opened twice"));
            }
            self.next_channel = id.0.saturating_add(1);
            if self.control.is_none() {
                // Nobody here takes the link: its other end goes.
                self.refuse_channel(id);
                continue;
            }
            let opened = UnixStream::pair().and_then(|(ours, theirs)| {
                Channel::new(ours, self.config.window).map(|channel| (channel, theirs))
            });
            match opened {
                Ok((channel, theirs)) => {
                    self.channels.insert(id, channel);
                    fds.push(OwnedFd::from(theirs));
                }
                // Out of descriptors: the node gets fewer than it expects and refuses the
                // link; the broker's end goes.
                Err(_) => self.refuse_channel(id),
            }
        }
        if self.control.is_some() {
            self.to_control.push_back((packet, fds));
            self.deliver_control();
        }
        Ok(())
    }

    /// Passes queued control packets to the local control socket, as far as it takes them.
    fn deliver_control(&mut self) {
        let Some(control) = &self.control else {
            self.to_control.clear();
            return;
        };
        while let Some((packet, fds)) = self.to_control.front() {
            let borrowed: Vec<BorrowedFd<'_>> = fds.iter().map(AsFd::as_fd).collect();
            match control.send(packet, &borrowed, Wait::NonBlocking) {
                Ok(()) => {
                    self.to_control.pop_front();
                }
                Err(TransportError::WouldBlock) => return,
                Err(_) => {
                    // The local end is gone: so is this end of the control channel.
                    self.to_control.clear();
                    if self.control_reading {
                        self.control_reading = false;
                        self.queue(&TunnelFrame::Eof { channel: ChannelId::CONTROL });
                    }
                    self.control = None;
                    return;
                }
            }
        }
    }

    /// Relays the control packets the local end sent (broker side: opening a channel for
    /// each descriptor beside them).
    ///
    /// # Errors
    /// [`TunnelError::TooManyChannels`] when the local end passes more links than allowed.
    fn read_control(&mut self) -> Result<(), TunnelError> {
        for _ in 0..CONTROL_PACKETS_PER_ROUND {
            let Some(control) = self.control.as_ref().filter(|_| self.control_reading) else {
                return Ok(());
            };
            if self.out_len() >= OUT_HIGH_WATER {
                return Ok(());
            }
            match control.recv(&mut self.control_buf, Wait::NonBlocking) {
                Ok((len, fds)) => {
                    let channels = match self.side {
                        Side::Broker => self.open_channels(fds)?,
                        // A node passes no descriptors; any it did are closed here.
                        Side::Node => Vec::new(),
                    };
                    let packet = self.control_buf[..len].to_vec();
                    self.queue(&TunnelFrame::Control { channels, packet });
                }
                Err(TransportError::WouldBlock) => return Ok(()),
                // A packet too large for the control protocol is dropped, as the broker
                // would refuse it.
                Err(TransportError::Oversized(_)) => {}
                Err(_) => {
                    self.control_reading = false;
                    self.queue(&TunnelFrame::Eof { channel: ChannelId::CONTROL });
                    return Ok(());
                }
            }
        }
        Ok(())
    }

    /// Opens a channel for each passed descriptor when all are stream sockets; otherwise
    /// closes them all and opens none. More links than allowed end the tunnel.
    fn open_channels(&mut self, fds: Vec<OwnedFd>) -> Result<Vec<ChannelId>, TunnelError> {
        if self.channels.len() + fds.len() > self.config.max_channels {
            return Err(TunnelError::TooManyChannels);
        }
        let streams = fds.iter().all(|fd| {
            rustix::net::sockopt::socket_type(fd).is_ok_and(|kind| kind == SocketType::STREAM)
        });
        if !streams || self.next_channel.checked_add(fds.len() as u32).is_none() {
            return Ok(Vec::new());
        }
        let mut opened = Vec::with_capacity(fds.len());
        for fd in fds {
            let id = ChannelId(self.next_channel);
            self.next_channel += 1;
            // A socket that cannot be made non-blocking is dropped: the node sees that link
            // close at once.
            if let Ok(channel) = Channel::new(UnixStream::from(fd), self.config.window) {
                self.channels.insert(id, channel);
            }
            opened.push(id);
        }
        Ok(opened)
    }

    /// Writes what waits for a channel's socket, and gives credit back as it goes; tells the
    /// other end when the local reader went away (once the local writer's bytes went first).
    fn write_channel(&mut self, id: ChannelId) {
        let window = self.config.window;
        let Some(channel) = self.channels.get_mut(&id) else { return };
        match channel.write_local() {
            WriteOutcome::Written => {
                if let Some(bytes) = channel.take_credit_report(window) {
                    self.queue(&TunnelFrame::Credit { channel: id, bytes });
                }
            }
            WriteOutcome::ReaderGone { dropped } => {
                if dropped > 0 {
                    self.queue(&TunnelFrame::Credit { channel: id, bytes: dropped });
                }
            }
        }
        self.tell_reset_if_due(id);
    }

    /// Sends the `Reset` a channel owes, when its local writer's bytes went before it.
    fn tell_reset_if_due(&mut self, id: ChannelId) {
        if self.channels.get_mut(&id).is_some_and(Channel::take_reset) {
            self.queue(&TunnelFrame::Reset { channel: id });
        }
    }

    /// Writes what waits for a channel's socket (and shuts its sending side after the other
    /// end's last byte); forgets the channel once both directions are over.
    fn settle_channel(&mut self, id: ChannelId) {
        self.write_channel(id);
        if self.channels.get(&id).is_some_and(Channel::is_done) {
            self.channels.remove(&id);
        }
    }

    /// Tells the other end that a channel it opened has nobody here: no reader, no writer.
    fn refuse_channel(&mut self, id: ChannelId) {
        self.queue(&TunnelFrame::Reset { channel: id });
        self.queue(&TunnelFrame::Eof { channel: id });
    }

    /// Writes what waits for a channel's socket, and reads what it has (or drops it).
    fn serve_channel(&mut self, id: ChannelId) {
        self.write_channel(id);
        if let Some(channel) = self.channels.get_mut(&id).filter(|c| c.is_dropping()) {
            channel.drop_local(&mut self.scratch);
        }
        let mut chunks = 0;
        while self.draining_since.is_none()
            && chunks < CHUNKS_PER_ROUND
            && self.out_len() < OUT_HIGH_WATER
        {
            let Some(channel) = self.channels.get_mut(&id) else { return };
            match channel.read_local(&mut self.scratch) {
                LocalRead::Bytes(n) => {
                    encode_data(&mut self.out, id, &self.scratch[..n]);
                    self.last_sent = Instant::now();
                    chunks += 1;
                }
                LocalRead::WouldBlock => break,
                LocalRead::End => {
                    self.queue(&TunnelFrame::Eof { channel: id });
                    break;
                }
            }
        }
        self.tell_reset_if_due(id);
        if self.channels.get(&id).is_some_and(Channel::is_done) {
            self.channels.remove(&id);
        }
    }

    /// Shuts the local control socket once the other end's control stream ended and all it
    /// sent was delivered; forgets it once both directions are over.
    fn close_control_if_done(&mut self) {
        let Some(control) = &self.control else { return };
        if !self.control_peer_open && self.to_control.is_empty() {
            if self.draining_since.is_some() {
                self.control = None;
                return;
            }
            // The local end reads the close; its own close comes back as a read of the end.
            control.shutdown();
            if !self.control_reading {
                self.control = None;
            }
        }
    }

    fn queue(&mut self, frame: &TunnelFrame) {
        if self.draining_since.is_some() {
            // Nothing is sent any more (`flush_out`).
            return;
        }
        if self.out_len() == 0 {
            self.last_write_progress = Instant::now();
        }
        frame.encode(&mut self.out);
        self.last_sent = Instant::now();
    }

    fn out_len(&self) -> usize {
        self.out.len() - self.out_start
    }

    /// Writes what waits for the connection, as far as it takes it.
    fn flush_out(&mut self) -> Result<(), TunnelError> {
        if self.draining_since.is_some() {
            return Ok(());
        }
        self.stream.flush()?;
        while self.out_len() > 0 {
            let taken = self.stream.write(&self.out[self.out_start..])?;
            if taken == 0 {
                break;
            }
            self.out_start += taken;
            self.last_write_progress = Instant::now();
        }
        if self.out_len() == 0 {
            self.out.clear();
            self.out_start = 0;
        } else if self.out_start >= OUT_HIGH_WATER {
            self.out.drain(..self.out_start);
            self.out_start = 0;
        }
        Ok(())
    }

    /// After a clean finish: ends the sending direction and waits (bounded) for the other
    /// end's, so that closing never resets bytes the other end still sends.
    fn linger(&mut self) {
        self.stream.finish_sending();
        if self.draining_since.is_some() {
            return;
        }
        let until = Instant::now() + self.config.dead_after;
        loop {
            match wait_ready(&[(self.stream.as_fd(), Interest::READ)], Wait::Until(until)) {
                Ok(ready) if !ready.is_empty() => {}
                _ => return,
            }
            match self.stream.read(&mut self.scratch) {
                Ok(ReadOutcome::Bytes(_) | ReadOutcome::WouldBlock) => {}
                Ok(ReadOutcome::End) | Err(_) => return,
            }
        }
    }
}

/// Encoded bytes waiting for the connection past which local sockets are not read.
const OUT_HIGH_WATER: usize = 1024 * 1024;
/// Control packets waiting for the local control socket past which the connection is not
/// read (the local end is slow; it always reads in the end).
const CONTROL_BACKLOG: usize = 256;
/// Bytes read from the connection before local sockets get a turn.
const READ_BUDGET: usize = 1024 * 1024;
/// Data frames read from one channel before the others get a turn.
const CHUNKS_PER_ROUND: usize = 4;
/// Control packets read from the local end before the others get a turn.
const CONTROL_PACKETS_PER_ROUND: usize = 64;
