//! The reliable session between two hosts: many streams over one link, resumed across
//! reconnects, watched by heartbeats.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use super::body::{Ack, Data, Heartbeat, Hello, HELLO_ENTRY_LEN, HELLO_FIXED_LEN};
use super::config::SessionConfig;
use super::datagram::ReplayWindow;
use super::decoder::StreamDecoder;
use super::error::{BestEffortError, DatagramSendError, SendError, SessionError};
use super::event::{Event, Lane, Transmit};
use super::frame::{self, Frame, FrameBody, HEADER_LEN};
use super::ids::{MessageId, SessionId, StreamId};
use super::receiver::{held_cost, Arrival, RecvStream};
use super::rtt::RttEstimator;
use super::sender::{AckOutcome, SendStream};
use super::stats::{LinkState, SessionStats};
use crate::wire::DecodeError;

/// One end of the reliable protocol between two brokers (sans-IO).
///
/// A session outlives the transport links under it: the driver reports each link with
/// [`handle_link_up`](Self::handle_link_up) and [`handle_link_down`](Self::handle_link_down),
/// and the session resumes where the last link left off. Each message is delivered exactly
/// once and in order within its stream; a loss on one stream never delays another.
///
/// ```text
///   driver                                   Session
///   connect ──────────────────────────────► handle_link_up(now)
///   bytes read (TCP, TLS) ────────────────► handle_bytes(now, bytes)
///   frame decoded from a QUIC stream ─────► handle_frame(now, frame)
///   UDP or QUIC datagram read ────────────► handle_datagram(now, bytes)
///   frame beside the link (UDP) ──────────► handle_best_effort(now, frame)
///   timer fired ──────────────────────────► handle_timeout(now)
///   connection lost ──────────────────────► handle_link_down(now)
///   write(buf) ◄── poll_transmit(now, buf) ◄┘ until None
///     (per lane: poll_transmit_where(now, buf, |lane| lane's stream can take more))
///   deliver / fail / ack ◄── poll_event() ◄─┘ until None
///   arm timer ◄──────────── poll_timeout()
/// ```
///
/// Every frame belongs to a [`Lane`]: control, one per reliable stream, or datagrams. Over
/// one byte stream the lanes share it; a driver with an ordered byte stream per lane (QUIC)
/// writes each frame to its lane's ([`Transmit::lane`]) and feeds what arrives on each through
/// a decoder of its own, so that a loss on one lane never holds back another. The session
/// needs order within a lane only.
///
/// A new link opens with a hello each way: it names both sessions and says, per stream, the
/// highest message delivered, so each side retransmits exactly what the other lacks. A hello
/// from a different peer session means the peer restarted: what it had not acknowledged
/// fails with [`SessionError::PeerRestarted`] and the streams start over. No valid frame from
/// the peer for [`SessionConfig::dead_after`] ends the session with
/// [`SessionError::PeerDead`] or [`SessionError::Unreachable`]; pending messages fail. A peer
/// whose reports contradict what it acknowledged before (a restart that reused its session
/// id, or a broken peer) ends the session with [`SessionError::ProtocolViolation`].
#[derive(Debug)]
pub struct Session {
    config: SessionConfig,
    id: SessionId,
    peer: Option<SessionId>,
    /// Earlier incarnations of the peer, newest last: their late frames are stale.
    retired: VecDeque<SessionId>,
    state: State,
    decoder: StreamDecoder,
    rtt: RttEstimator,
    sends: BTreeMap<StreamId, SendStream>,
    recvs: BTreeMap<StreamId, RecvStream>,
    datagrams_out: VecDeque<Data>,
    datagram_ids: BTreeMap<StreamId, u64>,
    datagrams_in: BTreeMap<StreamId, ReplayWindow>,
    acks_owed: VecDeque<StreamId>,
    /// When the owed acks go out at the latest (see [`SessionConfig::ack_delay`]).
    ack_due: Option<Instant>,
    /// Arrivals in order since the last ack frame went out.
    arrivals_unacked: u32,
    events: VecDeque<Event>,
    last_heard: Instant,
    /// This end's link number (see [`Hello::link`]): 0 before the first link.
    link: u32,
    /// The highest link number of the current peer's hellos seen (see [`Hello::echo`]).
    echo: u32,
    /// A hello is owed: its fragments go out from stream `hello_next` on.
    hello_owed: bool,
    hello_next: u32,
    hello_due: Instant,
    heartbeat: Heartbeats,
    close_owed: bool,
    /// The stream whose data goes next (round robin, so no stream starves another).
    next_stream: u32,
    datagram_turn: bool,
    unacknowledged_bytes: usize,
    held_bytes: usize,
    /// Acks from the current peer for messages never sent.
    false_acks: u32,
    /// Without timeout retransmission: how long a message may wait for its acknowledgement
    /// on an open link before the link is given up (see [`Session::handle_timeout`]).
    stall_bound: Duration,
    stats: SessionStats,
}

/// The link's state; data flows only when `Open`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Down,
    ExpectHello,
    Open,
    Ended(SessionError),
}

#[derive(Debug, Default)]
struct Heartbeats {
    next_at: Option<Instant>,
    owed: Option<u64>,
    outstanding: Option<(u64, Instant)>,
    answer_owed: Option<u64>,
    nonce: u64,
}

impl Session {
    /// A session with id `id` (fresh for every incarnation, see [`SessionId`]) and no link yet.
    /// The silence bound starts now: without an open link for
    /// [`SessionConfig::dead_after`], the session ends as `Unreachable`.
    #[must_use]
    pub fn new(id: SessionId, config: SessionConfig, now: Instant) -> Self {
        let config = config.normalized();
        let stall_bound = config.dead_after();
        let rtt = RttEstimator::new(config.initial_rto, config.min_rto, config.max_rto);
        let stats = SessionStats {
            state: LinkState::Down,
            peer: None,
            smoothed_rtt: None,
            latest_rtt: None,
            rto: rtt.rto(),
            links_opened: 0,
            frames_sent: 0,
            frames_received: 0,
            retransmissions: 0,
            duplicates_dropped: 0,
            datagrams_dropped: 0,
            corrupt_frames: 0,
            malformed_frames: 0,
            stale_frames: 0,
            unacknowledged: 0,
            stalled_links: 0,
        };
        Self {
            decoder: StreamDecoder::new(config.max_frame_body()),
            config,
            id,
            peer: None,
            retired: VecDeque::new(),
            state: State::Down,
            rtt,
            sends: BTreeMap::new(),
            recvs: BTreeMap::new(),
            datagrams_out: VecDeque::new(),
            datagram_ids: BTreeMap::new(),
            datagrams_in: BTreeMap::new(),
            acks_owed: VecDeque::new(),
            ack_due: None,
            arrivals_unacked: 0,
            events: VecDeque::new(),
            last_heard: now,
            link: 0,
            echo: 0,
            hello_owed: false,
            hello_next: 0,
            hello_due: now,
            heartbeat: Heartbeats::default(),
            close_owed: false,
            next_stream: 0,
            datagram_turn: false,
            unacknowledged_bytes: 0,
            held_bytes: 0,
            false_acks: 0,
            stall_bound,
            stats,
        }
    }

    /// This session's id.
    #[must_use]
    pub fn id(&self) -> SessionId {
        self.id
    }

    /// The peer's session, once heard from: the sender every frame must name (a driver that
    /// checks frames before it hands them over, a UDP path learning its peer's address, asks).
    #[must_use]
    pub fn peer(&self) -> Option<SessionId> {
        self.peer
    }

    /// The settings in force (out-of-range values brought into range).
    #[must_use]
    pub fn config(&self) -> &SessionConfig {
        &self.config
    }

    /// Where the link is.
    #[must_use]
    pub fn state(&self) -> LinkState {
        match self.state {
            State::Down => LinkState::Down,
            State::ExpectHello => LinkState::ExpectHello,
            State::Open => LinkState::Open,
            State::Ended(_) => LinkState::Ended,
        }
    }

    /// A snapshot of the counters, RTT and link state.
    #[must_use]
    pub fn stats(&self) -> SessionStats {
        SessionStats {
            state: self.state(),
            peer: self.peer,
            smoothed_rtt: self.rtt.smoothed(),
            latest_rtt: self.rtt.latest(),
            rto: self.rtt.rto(),
            unacknowledged: self.sends.values().map(|s| s.unacknowledged() as u64).sum(),
            ..self.stats.clone()
        }
    }

    /// Queues a reliable message on `stream`; it goes out when the link is open, again after
    /// every loss, until the peer acknowledges it ([`Event::Acked`]) or the session fails it
    /// ([`Event::Failed`]). Accepted while the link is down.
    ///
    /// # Errors
    /// [`SendError`], holding the payload: the stream's window or the byte budget is full, the
    /// payload is too large (above [`SessionConfig::max_payload`], which also keeps its frame
    /// within [`SessionConfig::max_frame_len`]), too many streams, or the session ended.
    pub fn send(&mut self, stream: StreamId, payload: Vec<u8>) -> Result<MessageId, SendError> {
        if let State::Ended(error) = self.state {
            return Err(SendError::Ended(payload, error));
        }
        if payload.len() > self.config.max_payload as usize {
            return Err(SendError::TooLarge(payload));
        }
        if self.unacknowledged_bytes + payload.len() > self.config.max_unacknowledged_bytes {
            return Err(SendError::Full(payload));
        }
        if !self.sends.contains_key(&stream) && self.sends.len() >= self.stream_limit() {
            return Err(SendError::TooManyStreams(payload));
        }
        let len = payload.len();
        let send = self.sends.entry(stream).or_insert_with(SendStream::new);
        let id = send.push(payload, self.config.stream_window).map_err(SendError::Full)?;
        self.unacknowledged_bytes += len;
        Ok(id)
    }

    /// Queues a best-effort datagram on datagram stream `stream`: sent once if the link stays
    /// open, never retransmitted; the peer delivers it at most once.
    ///
    /// # Errors
    /// [`DatagramSendError`], holding the payload: no open link, the queue is full, the
    /// payload is too large, too many streams, or the session ended.
    pub fn send_datagram(
        &mut self,
        stream: StreamId,
        payload: Vec<u8>,
    ) -> Result<MessageId, DatagramSendError> {
        match self.state {
            State::Ended(error) => return Err(DatagramSendError::Ended(payload, error)),
            State::Open => {}
            State::Down | State::ExpectHello => return Err(DatagramSendError::LinkDown(payload)),
        }
        if payload.len() > self.config.max_datagram_payload as usize {
            return Err(DatagramSendError::TooLarge(payload));
        }
        if self.datagrams_out.len() >= self.config.datagram_queue {
            return Err(DatagramSendError::Full(payload));
        }
        let limit = self.stream_limit();
        if !self.datagram_ids.contains_key(&stream) && self.datagram_ids.len() >= limit {
            return Err(DatagramSendError::TooManyStreams(payload));
        }
        let last = self.datagram_ids.entry(stream).or_insert(0);
        *last += 1;
        let id = MessageId(*last);
        self.datagrams_out.push_back(Data { stream, id, payload });
        Ok(id)
    }

    /// Ends the session: pending messages fail with [`SessionError::Closed`] and, if the link
    /// is open, the peer is told with a close frame (take it from
    /// [`poll_transmit`](Self::poll_transmit) before dropping the link).
    pub fn close(&mut self, _now: Instant) {
        if matches!(self.state, State::Ended(_)) {
            return;
        }
        self.close_owed = self.state == State::Open;
        self.end(SessionError::Closed);
    }

    /// A transport link to the peer is up (connected, TLS handshake done). Any earlier link is
    /// considered gone. The session sends its hello and waits for the peer's.
    pub fn handle_link_up(&mut self, now: Instant) {
        if matches!(self.state, State::Ended(_)) {
            return;
        }
        self.drop_link();
        self.state = State::ExpectHello;
        // Link numbers only need to differ within this incarnation; 0 means "none".
        self.link = self.link.wrapping_add(1).max(1);
        for send in self.sends.values_mut() {
            send.handle_link_up();
        }
        self.hello_owed = true;
        self.hello_due = now + self.hello_interval();
    }

    /// The transport link broke. Nothing pending is lost: it goes out again on the next link.
    pub fn handle_link_down(&mut self, _now: Instant) {
        if matches!(self.state, State::Ended(_)) {
            return;
        }
        self.drop_link();
        self.state = State::Down;
    }

    /// Bytes read from the link's byte stream (TCP, TLS, a QUIC stream), in order, any split.
    ///
    /// A frame with a damaged or malformed body is dropped and counted; the stream goes on.
    ///
    /// # Errors
    /// The [`DecodeError`] of a damaged frame header: the stream cannot be resynchronised. The
    /// session has already treated the link as down; close the transport and reconnect.
    pub fn handle_bytes(&mut self, now: Instant, bytes: &[u8]) -> Result<(), DecodeError> {
        if !matches!(self.state, State::ExpectHello | State::Open) {
            return Ok(());
        }
        self.decoder.handle_bytes(bytes);
        loop {
            match self.decoder.poll_frame() {
                Ok(Some(frame)) => self.process_frame(now, frame),
                Ok(None) => return Ok(()),
                Err(e) if self.decoder.is_poisoned() => {
                    self.stats.corrupt_frames += 1;
                    self.handle_link_down(now);
                    return Err(e);
                }
                Err(e) => self.count_bad_frame(e),
            }
            if !matches!(self.state, State::ExpectHello | State::Open) {
                return Ok(());
            }
        }
    }

    /// One UDP datagram (or QUIC datagram) holding one frame. A damaged or malformed frame is
    /// dropped and counted; the link goes on.
    ///
    /// # Errors
    /// Why the frame was dropped, for diagnostics only.
    pub fn handle_datagram(&mut self, now: Instant, bytes: &[u8]) -> Result<(), DecodeError> {
        if !matches!(self.state, State::ExpectHello | State::Open) {
            return Ok(());
        }
        match Frame::decode(bytes, self.config.max_frame_body()) {
            Ok(frame) => {
                self.process_frame(now, frame);
                Ok(())
            }
            Err(e) => {
                self.count_bad_frame(e);
                Err(e)
            }
        }
    }

    /// A frame that came on a path for best-effort datagrams only (a UDP socket beside a TCP
    /// link), decoded by the driver: delivered if it is a [`FrameBody::Datagram`] from the
    /// current peer to this session while a link is open or awaited. Anything else is dropped
    /// and counted (`stale_frames` for other sessions, `malformed_frames` for another kind), so
    /// that nothing arriving on that path can restart the peer, acknowledge, close or time the
    /// session: only the link itself, which the driver secures, carries those.
    ///
    /// # Errors
    /// Why the frame was dropped, for the driver's counters.
    pub fn handle_best_effort(
        &mut self,
        now: Instant,
        frame: Frame,
    ) -> Result<(), BestEffortError> {
        if !matches!(self.state, State::ExpectHello | State::Open) {
            return Err(BestEffortError::NoLink);
        }
        let FrameBody::Datagram(data) = frame.body else {
            self.stats.malformed_frames += 1;
            return Err(BestEffortError::NotADatagram(frame.body.kind()));
        };
        if self.peer.is_none() || Some(frame.sender) != self.peer || frame.receiver != Some(self.id)
        {
            self.stats.stale_frames += 1;
            return Err(BestEffortError::OtherSessions);
        }
        self.last_heard = now;
        self.stats.frames_received += 1;
        self.handle_datagram_frame(data);
        Ok(())
    }

    /// One frame already decoded by the driver, from one of several byte streams that carry
    /// the link together (a QUIC stream per lane, each cut into frames by its own
    /// [`StreamDecoder`]). Frames of different lanes may come in any order relative to each
    /// other; those of one lane must come in the order they were sent.
    pub fn handle_frame(&mut self, now: Instant, frame: Frame) {
        if matches!(self.state, State::ExpectHello | State::Open) {
            self.process_frame(now, frame);
        }
    }

    /// A frame the driver's decoder dropped (see [`handle_frame`](Self::handle_frame)):
    /// counted as corrupt or malformed, like one dropped by [`handle_bytes`](Self::handle_bytes).
    /// A damaged header breaks its byte stream; the driver resets the link then.
    pub fn handle_frame_error(&mut self, error: DecodeError) {
        if matches!(self.state, State::ExpectHello | State::Open) {
            self.count_bad_frame(error);
        }
    }

    /// The time [`poll_timeout`](Self::poll_timeout) returned has come (or passed): resends
    /// what timed out, schedules heartbeats, and ends the session after too long a silence.
    ///
    /// With [`SessionConfig::retransmit_on_timeout`] off, nothing is resent on the same link;
    /// as a backstop, a message that stays unacknowledged on an open link for
    /// [`SessionConfig::dead_after`] (counted from its transmission or the last
    /// acknowledgement on its stream, whichever is later) gives the link up: the session goes
    /// [`LinkState::Down`], as after [`handle_link_down`](Self::handle_link_down), and counts
    /// it in [`SessionStats::stalled_links`]. The driver must then drop the transport link
    /// and make a new one, on which everything unacknowledged is resent. Each time this
    /// happens the bound doubles for the rest of the session, so that a link merely slower
    /// than the bound is given up a few times, not forever.
    pub fn handle_timeout(&mut self, now: Instant) {
        if matches!(self.state, State::Ended(_)) {
            return;
        }
        if self.dead_at().is_some_and(|at| now >= at) {
            let error = match self.state {
                State::Open => SessionError::PeerDead,
                _ => SessionError::Unreachable,
            };
            self.end(error);
            return;
        }
        match self.state {
            State::ExpectHello if now >= self.hello_due => {
                self.hello_owed = true;
                self.hello_due = now + self.hello_interval();
            }
            State::Open => {
                if self.heartbeat.next_at.is_some_and(|at| now >= at) {
                    self.heartbeat.nonce += 1;
                    self.heartbeat.owed = Some(self.heartbeat.nonce);
                    self.heartbeat.next_at = Some(now + self.config.heartbeat_interval);
                }
                if self.config.retransmit_on_timeout {
                    for send in self.sends.values_mut() {
                        send.handle_timeout(now, &self.rtt);
                    }
                } else if self.stalled_at().is_some_and(|at| now >= at) {
                    self.stats.stalled_links += 1;
                    self.stall_bound = self.stall_bound.saturating_mul(2);
                    self.handle_link_down(now);
                }
            }
            _ => {}
        }
    }

    /// Appends the next frame to send to `buf` and says how long it is and whether it is a
    /// best-effort datagram; `None` when there is nothing to send.
    ///
    /// Call after every `handle_*` call, [`send`](Self::send), [`send_datagram`](Self::send_datagram)
    /// and [`close`](Self::close), repeatedly, until it returns `None`. On a byte stream,
    /// frames may be appended to one buffer and written together; on UDP, send each frame as
    /// its own datagram.
    #[must_use]
    pub fn poll_transmit(&mut self, now: Instant, buf: &mut Vec<u8>) -> Option<Transmit> {
        self.poll_transmit_where(now, buf, |_| true)
    }

    /// Like [`poll_transmit`](Self::poll_transmit), but only a frame of a [`Lane`] for which
    /// `ready` says true; the others stay queued, in order, until a later call lets them out.
    ///
    /// For a driver that carries each lane on a byte stream of its own (QUIC streams): while a
    /// lane's stream cannot take more (a write in flight, flow control), its frames wait here,
    /// and other lanes' go on, so a stalled stream holds back no other. The session's timers
    /// run from the moment a frame is taken, so take frames only when they can be written.
    ///
    /// Call as [`poll_transmit`](Self::poll_transmit), and again whenever a lane becomes ready.
    #[must_use]
    pub fn poll_transmit_where(
        &mut self,
        now: Instant,
        buf: &mut Vec<u8>,
        mut ready: impl FnMut(Lane) -> bool,
    ) -> Option<Transmit> {
        let (id, peer) = (self.id, self.peer);
        let start = buf.len();
        let lane = match self.state {
            State::Ended(_) if self.close_owed && ready(Lane::Control) => {
                self.close_owed = false;
                frame::encode_with(frame::KIND_CLOSE, id, peer, buf, |_| {});
                Lane::Control
            }
            State::Ended(_) | State::Down => return None,
            State::ExpectHello if self.hello_owed && ready(Lane::Control) => {
                self.write_hello(buf);
                Lane::Control
            }
            State::ExpectHello => return None,
            State::Open => self.write_open(now, buf, &mut ready)?,
        };
        self.stats.frames_sent += 1;
        Some(Transmit { len: buf.len() - start, best_effort: lane == Lane::Datagram, lane })
    }

    /// When [`handle_timeout`](Self::handle_timeout) must be called next; `None` once the
    /// session ended (or when nothing is due within the clock's range).
    ///
    /// Call after every `handle_*` call, [`send`](Self::send) and
    /// [`poll_transmit`](Self::poll_transmit), and re-arm the timer with the answer.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        let dead_at = self.dead_at();
        let next = match self.state {
            State::Ended(_) => return None,
            State::Down => None,
            State::ExpectHello => Some(self.hello_due),
            State::Open => {
                let sends = self.sends.values().filter(|_| self.config.retransmit_on_timeout);
                let retransmit = sends.filter_map(|s| s.poll_timeout(&self.rtt));
                let ack = self.ack_due.filter(|_| !self.acks_owed.is_empty());
                let stalled = self.stalled_at().filter(|_| !self.config.retransmit_on_timeout);
                retransmit.chain(self.heartbeat.next_at).chain(ack).chain(stalled).min()
            }
        };
        next.into_iter().chain(dead_at).min()
    }

    /// Whether [`poll_transmit`](Self::poll_transmit) would return a frame at `now`. A driver
    /// that learns of arrivals on another thread wakes its writer only then (or when
    /// [`poll_timeout`](Self::poll_timeout) moved earlier).
    #[must_use]
    pub fn has_transmit(&self, now: Instant) -> bool {
        match self.state {
            State::Ended(_) => self.close_owed,
            State::Down => false,
            State::ExpectHello => self.hello_owed,
            State::Open => {
                self.hello_owed
                    || self.heartbeat.answer_owed.is_some()
                    || self.heartbeat.owed.is_some()
                    || self.has_data_transmit()
                    || (!self.acks_owed.is_empty() && self.ack_due.is_some_and(|at| now >= at))
            }
        }
    }

    /// The next delivery, acknowledgement, failure or state change.
    ///
    /// Call after every `handle_*` call and [`close`](Self::close), repeatedly, until it
    /// returns `None`.
    #[must_use]
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    fn process_frame(&mut self, now: Instant, frame: Frame) {
        if self.retired.contains(&frame.sender) {
            self.stats.stale_frames += 1;
            return;
        }
        if let FrameBody::Hello(hello) = frame.body {
            self.handle_hello(now, frame.sender, frame.receiver, hello);
            return;
        }
        if Some(frame.sender) != self.peer || frame.receiver != Some(self.id) {
            self.stats.stale_frames += 1;
            return;
        }
        self.last_heard = now;
        self.stats.frames_received += 1;
        match frame.body {
            FrameBody::Data(data) => self.handle_data(now, data),
            FrameBody::Ack(ack) => self.handle_ack(now, &ack),
            FrameBody::Datagram(data) => self.handle_datagram_frame(data),
            FrameBody::Heartbeat(beat) => self.heartbeat.answer_owed = Some(beat.nonce),
            FrameBody::HeartbeatAck(beat) => {
                if let Some((nonce, sent_at)) = self.heartbeat.outstanding {
                    if nonce == beat.nonce {
                        self.heartbeat.outstanding = None;
                        self.rtt.handle_sample(now.saturating_duration_since(sent_at));
                    }
                }
            }
            FrameBody::Close => self.end(SessionError::PeerClosed),
            // Handled before the address check above.
            FrameBody::Hello(_) => {}
        }
    }

    fn handle_hello(
        &mut self,
        now: Instant,
        sender: SessionId,
        receiver: Option<SessionId>,
        hello: Hello,
    ) {
        if receiver.is_some_and(|r| r != self.id) {
            // Written for an earlier incarnation of this end; the peer learns the new id from
            // this end's own hello.
            self.stats.stale_frames += 1;
            return;
        }
        match self.peer {
            Some(previous) if previous != sender => self.restart_peer(now, previous, sender),
            Some(_) => {}
            None => self.peer = Some(sender),
        }
        self.last_heard = now;
        self.stats.frames_received += 1;
        self.echo = self.echo.max(hello.link);
        self.hello_owed |= hello.reply_wanted;
        if receiver != Some(self.id) {
            return;
        }
        let covered = hello.first..=hello.last;
        let delivered: BTreeMap<StreamId, MessageId> =
            hello.delivered.into_iter().filter(|(stream, _)| covered.contains(stream)).collect();
        if self.hello_contradicts(hello.echo, (hello.first, hello.last), &delivered) {
            self.end_for_violation();
            return;
        }
        let opening = self.state == State::ExpectHello;
        if opening {
            // Every stream resumes on the new link; one this fragment does not cover resends
            // from what was acknowledged, and the fragment covering it acks the rest.
            let streams: Vec<StreamId> = self.sends.keys().copied().collect();
            for stream in streams {
                let through = delivered.get(&stream).copied().unwrap_or(MessageId(0));
                self.apply_ack(now, stream, |send, now| send.handle_resume(now, through));
            }
            self.state = State::Open;
            self.stats.links_opened += 1;
            self.heartbeat.next_at = Some(now + self.config.heartbeat_interval);
            self.events.push_back(Event::LinkOpen { peer: sender });
        } else {
            for (stream, through) in delivered {
                self.apply_ack(now, stream, |send, now| send.handle_ack(now, through, &[]));
            }
        }
    }

    /// Whether a hello from the current peer contradicts what it told before: it claims
    /// delivery of a message never sent, or (written after this end's hello of the current
    /// link, so not a late one) reports less delivered than it had acknowledged before the
    /// link came up. Either means one end restarted with a reused session id, or a broken peer.
    fn hello_contradicts(
        &self,
        echo: u32,
        (first, last): (StreamId, StreamId),
        delivered: &BTreeMap<StreamId, MessageId>,
    ) -> bool {
        let claims_unsent =
            delivered.iter().any(|(stream, &through)| match self.sends.get(stream) {
                Some(send) => through >= send.next_unsent(),
                None => through.0 > 0,
            });
        if claims_unsent || echo != self.link || first > last {
            return claims_unsent;
        }
        self.sends.range(first..=last).any(|(stream, send)| {
            delivered.get(stream).copied().unwrap_or(MessageId(0)) < send.acked_at_link_up()
        })
    }

    fn restart_peer(&mut self, now: Instant, previous: SessionId, current: SessionId) {
        self.fail_pending(SessionError::PeerRestarted);
        self.recvs.clear();
        self.held_bytes = 0;
        self.acks_owed.clear();
        self.clear_ack_timer();
        self.datagram_ids.clear();
        self.datagrams_in.clear();
        self.datagrams_out.clear();
        self.heartbeat = Heartbeats::default();
        self.echo = 0;
        self.false_acks = 0;
        if self.retired.len() == RETIRED_PEERS {
            self.retired.pop_front();
        }
        self.retired.push_back(previous);
        self.peer = Some(current);
        if self.state == State::Open {
            self.state = State::ExpectHello;
            self.hello_due = now + self.hello_interval();
        }
        self.hello_owed = true;
        self.events.push_back(Event::PeerRestarted { previous, current });
    }

    fn handle_data(&mut self, now: Instant, data: Data) {
        if !self.recvs.contains_key(&data.stream) && self.recvs.len() >= self.stream_limit() {
            self.stats.malformed_frames += 1;
            return;
        }
        let may_hold =
            self.held_bytes + held_cost(data.payload.len()) <= self.config.max_held_bytes;
        let window = self.config.stream_window as u64;
        let recv = self.recvs.entry(data.stream).or_insert_with(RecvStream::new);
        let queued = recv.is_ack_owed();
        let held_before = recv.held_bytes();
        let arrival = recv.handle_data(data.id, data.payload, window, may_hold);
        self.held_bytes = self.held_bytes + recv.held_bytes() - held_before;
        if !queued {
            self.acks_owed.push_back(data.stream);
        }
        // An arrival in order may wait for company (see `SessionConfig::ack_delay`); anything
        // else tells the sender about a loss or a lost ack, and goes at once.
        let in_order = matches!(arrival, Arrival::Delivered(_));
        self.arrivals_unacked += u32::from(in_order);
        let delay = if in_order && self.arrivals_unacked < SessionConfig::ACK_EVERY {
            self.config.ack_delay
        } else {
            Duration::ZERO
        };
        let due = now + delay;
        self.ack_due = Some(self.ack_due.map_or(due, |at| at.min(due)));
        match arrival {
            Arrival::Delivered(list) => {
                let stream = data.stream;
                self.events.extend(list.into_iter().map(|(id, payload)| Event::Delivered {
                    stream,
                    id,
                    payload,
                }));
            }
            Arrival::Duplicate => self.stats.duplicates_dropped += 1,
            Arrival::Held | Arrival::BeyondWindow => {}
        }
    }

    fn handle_ack(&mut self, now: Instant, ack: &Ack) {
        if !self.sends.contains_key(&ack.stream) {
            if ack.delivered.0 != 0 {
                self.handle_false_ack();
            }
            return;
        }
        self.apply_ack(now, ack.stream, |send, now| send.handle_ack(now, ack.delivered, &ack.held));
    }

    /// The current peer acknowledged a message never sent: dropped, and after a few the
    /// session ends (see [`SessionError::ProtocolViolation`]).
    fn handle_false_ack(&mut self) {
        self.stats.malformed_frames += 1;
        self.false_acks += 1;
        if self.false_acks >= FALSE_ACKS_TOLERATED {
            self.end_for_violation();
        }
    }

    /// Ends the session because the peer contradicted itself; the peer is told with a close
    /// frame if a link is up.
    fn end_for_violation(&mut self) {
        self.stats.malformed_frames += 1;
        self.close_owed = matches!(self.state, State::ExpectHello | State::Open);
        self.end(SessionError::ProtocolViolation);
    }

    /// Runs an acknowledgement against `stream` and reports what it changed.
    fn apply_ack(
        &mut self,
        now: Instant,
        stream: StreamId,
        ack: impl FnOnce(&mut SendStream, Instant) -> AckOutcome,
    ) {
        let Some(send) = self.sends.get_mut(&stream) else { return };
        let bytes_before = send.unacknowledged_bytes();
        let outcome = ack(send, now);
        self.unacknowledged_bytes -= bytes_before - send.unacknowledged_bytes();
        if let Some(sample) = outcome.rtt_sample {
            self.rtt.handle_sample(sample);
        }
        if let Some(through) = outcome.delivered {
            self.events.push_back(Event::Acked { stream, through });
        }
        if outcome.invalid {
            self.handle_false_ack();
        }
    }

    fn handle_datagram_frame(&mut self, data: Data) {
        let limit = self.stream_limit();
        if !self.datagrams_in.contains_key(&data.stream) && self.datagrams_in.len() >= limit {
            self.stats.malformed_frames += 1;
            return;
        }
        let window = self.datagrams_in.entry(data.stream).or_default();
        match window.check_and_record(data.id.0) {
            Ok(()) => self.events.push_back(Event::DatagramDelivered {
                stream: data.stream,
                id: data.id,
                payload: data.payload,
            }),
            Err(_) => self.stats.datagrams_dropped += 1,
        }
    }

    /// Writes the next frame of an open link on a lane `ready` accepts: control first, then
    /// data and datagrams in turn.
    fn write_open(
        &mut self,
        now: Instant,
        buf: &mut Vec<u8>,
        ready: &mut impl FnMut(Lane) -> bool,
    ) -> Option<Lane> {
        if ready(Lane::Control) && self.write_control(now, buf) {
            return Some(Lane::Control);
        }
        let datagrams = ready(Lane::Datagram);
        self.datagram_turn = !self.datagram_turn;
        if datagrams && self.datagram_turn && self.write_datagram(buf) {
            return Some(Lane::Datagram);
        }
        if let Some(stream) = self.write_data(now, buf, ready) {
            return Some(Lane::Stream(stream));
        }
        (datagrams && self.write_datagram(buf)).then_some(Lane::Datagram)
    }

    /// Writes the next control frame of an open link, if one is owed: a hello, a heartbeat's
    /// answer, a heartbeat, an acknowledgement that is due.
    fn write_control(&mut self, now: Instant, buf: &mut Vec<u8>) -> bool {
        let (id, peer) = (self.id, self.peer);
        if self.hello_owed {
            self.write_hello(buf);
            return true;
        }
        if let Some(nonce) = self.heartbeat.answer_owed.take() {
            let beat = Heartbeat { nonce };
            frame::encode_with(frame::KIND_HEARTBEAT_ACK, id, peer, buf, |b| beat.encode(b));
            return true;
        }
        if let Some(nonce) = self.heartbeat.owed.take() {
            self.heartbeat.outstanding = Some((nonce, now));
            let beat = Heartbeat { nonce };
            frame::encode_with(frame::KIND_HEARTBEAT, id, peer, buf, |b| beat.encode(b));
            return true;
        }
        // Owed acks go when due, or else with the data this end is writing anyway.
        let acks_due = self.ack_due.is_some_and(|at| now >= at) || self.has_data_transmit();
        if acks_due {
            while let Some(stream) = self.acks_owed.pop_front() {
                let Some(recv) = self.recvs.get_mut(&stream) else { continue };
                if recv.take_ack_owed() {
                    let ack = Ack { stream, delivered: recv.delivered(), held: recv.held_ranges() };
                    frame::encode_with(frame::KIND_ACK, id, peer, buf, |b| ack.encode(b));
                    if self.acks_owed.is_empty() {
                        self.clear_ack_timer();
                    }
                    return true;
                }
            }
        }
        if self.acks_owed.is_empty() {
            self.clear_ack_timer();
        }
        false
    }

    /// Whether a data frame or datagram waits to be written.
    fn has_data_transmit(&self) -> bool {
        !self.datagrams_out.is_empty() || self.sends.values().any(SendStream::has_transmit)
    }

    fn clear_ack_timer(&mut self) {
        self.ack_due = None;
        self.arrivals_unacked = 0;
    }

    /// Writes the next message of the first stream, round robin from `next_stream`, that has
    /// one to send and whose lane `ready` accepts; returns that stream.
    fn write_data(
        &mut self,
        now: Instant,
        buf: &mut Vec<u8>,
        ready: &mut impl FnMut(Lane) -> bool,
    ) -> Option<StreamId> {
        let (id, peer) = (self.id, self.peer);
        let from = StreamId(self.next_stream);
        let (stream, retransmission) =
            write_first_ready(self.sends.range_mut(from..), now, (id, peer), buf, ready).or_else(
                || write_first_ready(self.sends.range_mut(..from), now, (id, peer), buf, ready),
            )?;
        if retransmission {
            self.stats.retransmissions += 1;
        }
        self.next_stream = stream.0.wrapping_add(1);
        Some(stream)
    }

    fn write_datagram(&mut self, buf: &mut Vec<u8>) -> bool {
        let Some(data) = self.datagrams_out.pop_front() else { return false };
        frame::encode_with(frame::KIND_DATAGRAM, self.id, self.peer, buf, |b| data.encode(b));
        true
    }

    /// Writes the next fragment of the owed hello: as many streams from `hello_next` on as fit
    /// in [`SessionConfig::max_frame_len`]; the last fragment covers up to `u32::MAX`.
    fn write_hello(&mut self, buf: &mut Vec<u8>) {
        let room = self.config.max_frame_len as usize - HEADER_LEN - HELLO_FIXED_LEN;
        let max_entries = (room / HELLO_ENTRY_LEN).min(usize::from(u16::MAX));
        let first = StreamId(self.hello_next);
        let mut delivered = Vec::new();
        let mut last = StreamId(u32::MAX);
        let streams = self.recvs.range(first..).filter(|(_, recv)| recv.delivered().0 > 0);
        for (&stream, recv) in streams {
            if delivered.len() == max_entries {
                // Invariant: `max_entries > 0` (the frame limit is at least 512 bytes), so an
                // entry was pushed; its stream is below `stream`, so the increment below fits.
                last = delivered.last().map_or(first, |&(stream, _)| stream);
                break;
            }
            delivered.push((stream, recv.delivered()));
        }
        if last.0 == u32::MAX {
            self.hello_owed = false;
            self.hello_next = 0;
        } else {
            self.hello_next = last.0 + 1;
        }
        let hello = Hello {
            reply_wanted: self.state != State::Open,
            link: self.link,
            echo: self.echo,
            first,
            last,
            delivered,
        };
        frame::encode_with(frame::KIND_HELLO, self.id, self.peer, buf, |b| hello.encode(b));
    }

    /// Forgets everything that belonged to the current transport link.
    fn drop_link(&mut self) {
        self.decoder = StreamDecoder::new(self.config.max_frame_body());
        self.hello_owed = false;
        self.hello_next = 0;
        self.datagrams_out.clear();
        let nonce = self.heartbeat.nonce;
        self.heartbeat = Heartbeats { nonce, ..Heartbeats::default() };
    }

    fn end(&mut self, error: SessionError) {
        self.fail_pending(error);
        self.drop_link();
        self.recvs.clear();
        self.acks_owed.clear();
        self.clear_ack_timer();
        self.state = State::Ended(error);
        self.events.push_back(Event::Ended(error));
    }

    /// Fails every unacknowledged message and forgets the send streams (ids start over).
    fn fail_pending(&mut self, error: SessionError) {
        for (&stream, send) in &mut self.sends {
            self.events.extend(send.drain().map(|(id, payload)| Event::Failed {
                stream,
                id,
                payload,
                error,
            }));
        }
        self.sends.clear();
        self.unacknowledged_bytes = 0;
    }

    fn count_bad_frame(&mut self, error: DecodeError) {
        match error {
            DecodeError::ChecksumMismatch { .. } => self.stats.corrupt_frames += 1,
            _ => self.stats.malformed_frames += 1,
        }
    }

    /// When silence ends the session; `None` if that lies beyond the clock's range (never).
    fn dead_at(&self) -> Option<Instant> {
        self.last_heard.checked_add(self.config.dead_after())
    }

    /// When the oldest message in flight has waited too long for its acknowledgement and the
    /// link is given up (without timeout retransmission, see
    /// [`handle_timeout`](Self::handle_timeout)); `None` when nothing is in flight.
    fn stalled_at(&self) -> Option<Instant> {
        let since = self.sends.values().filter_map(SendStream::unacknowledged_since).min()?;
        since.checked_add(self.stall_bound)
    }

    fn hello_interval(&self) -> Duration {
        self.rtt.rto().min(self.config.heartbeat_interval)
    }

    fn stream_limit(&self) -> usize {
        self.config.max_streams as usize
    }
}

/// Writes the next message of the first stream in `streams` that has one and whose lane
/// `ready` accepts; returns the stream and whether it was a retransmission.
fn write_first_ready<'a>(
    streams: impl Iterator<Item = (&'a StreamId, &'a mut SendStream)>,
    now: Instant,
    (id, peer): (SessionId, Option<SessionId>),
    buf: &mut Vec<u8>,
    ready: &mut impl FnMut(Lane) -> bool,
) -> Option<(StreamId, bool)> {
    for (&stream, send) in streams {
        if !send.has_transmit() || !ready(Lane::Stream(stream)) {
            continue;
        }
        let Some(out) = send.poll_transmit(now) else { continue };
        frame::encode_with(frame::KIND_DATA, id, peer, buf, |b| {
            Data::encode_parts(stream, out.id, out.payload, b);
        });
        return Some((stream, out.retransmission));
    }
    None
}

/// How many earlier incarnations of the peer are remembered as stale.
const RETIRED_PEERS: usize = 8;
/// Acks for messages never sent that end the session: a correct peer sends none, so a few
/// mean a reused session id or a broken peer, not bad luck (frames are checksummed).
const FALSE_ACKS_TOLERATED: u32 = 3;

#[cfg(test)]
mod lane_tests;
#[cfg(test)]
mod tests;
