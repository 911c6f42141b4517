//! The UDP side of a TCP host link: the session's best-effort datagrams travel beside the
//! connection, one session frame per UDP datagram, and never on the TCP stream (which would
//! make them reliable, and late, underneath).
//!
//! ```text
//! 0  magic "PD" [u8; 2] | 2 version u8 (1) | 3 kind u8 (1 frame, 2 probe) | 4 sealed u8 (0, 1)
//! 5  reserved [u8; 3] (0) | 8 counter u64 (the sender's datagram number)
//! 16 body: kind 1, one session frame (reliable/frame.rs, whose header names both sessions and
//!    has a crc32c); kind 2, sender session u64 | receiver session u64
//!    sealed: the body encrypted with the connection's datagram key (datagram_key.rs), bytes
//!    0..16 authenticated with it, then the 16-byte tag
//! ```
//!
//! **Authentication.** A link secured by TLS or a pre-shared key seals every datagram with the
//! key of its current TCP connection: a datagram that is not authentic under it (forged,
//! damaged, meant for an earlier connection, plain) is rejected before the session sees it,
//! and nobody else can read one. A plain TCP link's datagrams are plain too: only frames that
//! name this session and its peer, two random 64-bit numbers that an off-path sender would
//! have to guess, are taken; anybody on the path can read, forge or redirect them, as they can
//! the TCP connection. In every mode the session gets nothing from UDP but datagram frames
//! (`Session::handle_best_effort`): hellos, acks, closes and heartbeats travel on the
//! connection only, so no UDP datagram can restart, close or steer the session. A datagram
//! longer than the largest this link sends is dropped before anything else.
//!
//! **Replays.** The counter numbers every datagram an end sends. Each end remembers which of
//! the peer's numbers it took under the current connection (`udp_window.rs`, reset with each
//! new key): a copy, or a datagram older than that window, is rejected before the session.
//!
//! **Addresses.** The dialer sends from a socket of its own to a fixed address (by default the
//! listener's TCP address and port, over UDP). The listener answers where the dialer's latest
//! datagram came from: authentic (sealed) or naming both sessions (plain), and numbered above
//! every one taken before, so that a replayed datagram cannot move it. A dialer behind NAT is
//! found this way; so that the listener learns the address even when the dialer has nothing
//! to send, the dialer sends a probe as soon as a link opens and every heartbeat interval
//! after. Until then the listener's datagrams are not sent (counted as `datagrams_unsent`).

use std::io::{self, ErrorKind};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::ops::Range;
use std::os::fd::AsFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use postbox_core::reliable::frame::{Frame, HEADER_LEN as FRAME_HEADER_LEN};
use postbox_core::reliable::{LinkState, SessionConfig, SessionId};

use super::datagram_key::{DatagramKey, TAG_LEN};
use super::driver::driver_work;
use super::shared::{Core, Shared};
use super::udp_window::{Arrival, CounterWindow};
use crate::wait::{wait_readable, Wait};
use crate::Waker;

/// How a TCP host link uses its UDP socket. The socket itself is held by the driver and the
/// UDP reader only, so that it closes when they stop, even while a handshake thread still
/// holds the link's shared state (a new link may then bind the same address at once).
#[derive(Debug)]
pub(super) struct UdpSide {
    /// Where the dialer sends; `None` on the listening side, which answers the dialer where
    /// its datagrams come from.
    target: Option<SocketAddr>,
    /// Whether datagrams are sealed (TLS or pre-shared key) or carry the session ids in clear.
    sealed: bool,
    /// Interrupts the reader's wait.
    pub(super) waker: Waker,
}

/// What the UDP side keeps under the link's lock.
#[derive(Debug, Default)]
pub(super) struct UdpState {
    /// The current connection's datagram key (sealed links); `None` between connections.
    pub(super) key: Option<Arc<DatagramKey>>,
    /// Where datagrams go: the dialer's target, or where the listener last heard the dialer.
    pub(super) peer: Option<SocketAddr>,
    /// When the dialer sends its next probe.
    pub(super) next_probe: Option<Instant>,
    /// The peer's datagram numbers taken under the current key.
    pub(super) window: CounterWindow,
}

/// What the driver sends on UDP after a step, outside the lock.
#[derive(Debug, Default)]
pub(super) struct Outgoing {
    /// Session frames, one per datagram.
    pub(super) frames: Vec<Vec<u8>>,
    /// A probe: this session and the peer's.
    probe: Option<(SessionId, SessionId)>,
    key: Option<Arc<DatagramKey>>,
    to: Option<SocketAddr>,
}

impl UdpSide {
    /// The dialing side, with a socket of its own (any port) that sends to `target`.
    pub(super) fn dial(target: SocketAddr, sealed: bool) -> io::Result<(Self, UdpSocket)> {
        let unspecified: SocketAddr = if target.is_ipv4() {
            (Ipv4Addr::UNSPECIFIED, 0).into()
        } else {
            (Ipv6Addr::UNSPECIFIED, 0).into()
        };
        Self::new(UdpSocket::bind(unspecified)?, Some(target), sealed)
    }

    /// The listening side: the dialer's datagrams arrive on `socket`.
    pub(super) fn listen(socket: UdpSocket, sealed: bool) -> io::Result<(Self, UdpSocket)> {
        Self::new(socket, None, sealed)
    }

    fn new(
        socket: UdpSocket,
        target: Option<SocketAddr>,
        sealed: bool,
    ) -> io::Result<(Self, UdpSocket)> {
        socket.set_nonblocking(true)?;
        let waker = Waker::new().map_err(|_| io::Error::from(ErrorKind::Other))?;
        Ok((Self { target, sealed, waker }, socket))
    }

    /// The state a new link starts with: the dialer knows where to send.
    pub(super) fn initial_state(&self) -> UdpState {
        UdpState { peer: self.target, ..UdpState::default() }
    }

    /// A new connection is the current one: its key seals the datagrams from now on, and the
    /// dialer's first probe goes as soon as the link opens.
    pub(super) fn connection_up(&self, core: &mut Core, key: Option<DatagramKey>, now: Instant) {
        core.udp.key = key.map(Arc::new);
        core.udp.window = CounterWindow::default();
        if self.target.is_some() {
            core.udp.next_probe = Some(now);
        }
    }

    /// Under the lock, after the driver took the session's frames into `out`: adds a probe
    /// when one is due, and notes the key and address to send with.
    pub(super) fn prepare(
        &self,
        core: &mut Core,
        now: Instant,
        interval: Duration,
        out: &mut Outgoing,
    ) {
        if self.next_probe(core).is_some_and(|at| at <= now) {
            if let Some(peer) = core.session.peer() {
                out.probe = Some((core.session.id(), peer));
            }
            core.udp.next_probe = Some(now + interval);
        }
        if !out.is_empty() {
            out.key = core.udp.key.clone();
            out.to = core.udp.peer;
        }
    }

    /// When the driver must wake to send the dialer's next probe: only while a link is open.
    pub(super) fn next_probe(&self, core: &Core) -> Option<Instant> {
        let open = core.session.state() == LinkState::Open;
        core.udp.next_probe.filter(|_| self.target.is_some() && open)
    }

    /// Sends what `out` holds, outside the lock, numbering each datagram from `counter`;
    /// returns how many went and how many could not (no key or address yet, or the socket
    /// refused: a best-effort datagram is not kept).
    pub(super) fn send(
        &self,
        socket: &UdpSocket,
        out: &mut Outgoing,
        counter: &mut u64,
        buf: &mut Vec<u8>,
    ) -> (u64, u64) {
        let (mut sent, mut unsent) = (0, 0);
        let probe = out.probe.take().map(|(ours, theirs)| {
            let mut body = Vec::with_capacity(16);
            body.extend_from_slice(&ours.get().to_le_bytes());
            body.extend_from_slice(&theirs.get().to_le_bytes());
            (KIND_PROBE, body)
        });
        let frames = out.frames.drain(..).map(|frame| (KIND_FRAME, frame));
        for (kind, body) in probe.into_iter().chain(frames) {
            let key = out.key.as_deref();
            let (Some(to), true) = (out.to, !self.sealed || key.is_some()) else {
                unsent += 1;
                continue;
            };
            *counter += 1;
            buf.clear();
            buf.extend_from_slice(&envelope(kind, self.sealed, *counter));
            let mut body = body;
            if let Some(key) = key.filter(|_| self.sealed) {
                key.seal(*counter, &buf[..ENVELOPE_LEN], &mut body);
            }
            buf.extend_from_slice(&body);
            match socket.send_to(buf, to) {
                Ok(_) => sent += 1,
                Err(_) => unsent += 1,
            }
        }
        out.key = None;
        (sent, unsent)
    }

    /// Opens one datagram in place: its kind, its number and where its body lies, or `None`
    /// when it is not one of this link's (malformed, the wrong mode, or not authentic under
    /// `key`).
    fn open(&self, datagram: &mut [u8], key: Option<&DatagramKey>) -> Option<Opened> {
        let header: [u8; ENVELOPE_LEN] = datagram.get(..ENVELOPE_LEN)?.try_into().ok()?;
        let kind = header[3];
        let valid = header[..3] == [MAGIC[0], MAGIC[1], VERSION]
            && matches!(kind, KIND_FRAME | KIND_PROBE)
            && header[4] == u8::from(self.sealed)
            && header[5..8] == [0; 3];
        if !valid {
            return None;
        }
        let counter = u64::from_le_bytes(header[8..16].try_into().ok()?);
        if !self.sealed {
            return Some(Opened { kind, counter, body: ENVELOPE_LEN..datagram.len() });
        }
        let body = key?.open(counter, &header, &mut datagram[ENVELOPE_LEN..])?;
        Some(Opened { kind, counter, body: ENVELOPE_LEN..ENVELOPE_LEN + body.len() })
    }

    /// The longest datagram this link's peer sends with `config`: the envelope, a datagram
    /// frame of the largest payload and (sealed) the tag. Probes are shorter.
    fn max_datagram_len(&self, config: &SessionConfig) -> usize {
        let frame = FRAME_HEADER_LEN + DATA_FIELDS + config.max_datagram_payload as usize;
        ENVELOPE_LEN + frame + if self.sealed { TAG_LEN } else { 0 }
    }

    /// Takes one opened datagram (`body` is its plaintext) if it is new and from the peer:
    /// a probe naming both sessions, or a datagram frame the session takes. Moves the
    /// listener's address only for the peer's latest datagram. False when rejected.
    fn take(
        &self,
        core: &mut Core,
        now: Instant,
        opened: &Opened,
        body: &[u8],
        from: SocketAddr,
    ) -> bool {
        let Some(arrival) = core.udp.window.check(opened.counter) else {
            // A copy (a replay), or too old to tell from one.
            core.counters.datagrams_replayed += 1;
            return false;
        };
        let session = &mut core.session;
        let taken = if opened.kind == KIND_PROBE {
            let ours = session.peer().map(|peer| (Some(peer), Some(session.id())));
            ours.is_some() && probe_sessions(body) == ours
        } else {
            match Frame::decode(body, session.config().max_frame_body()) {
                // Anything but a datagram between the two sessions is refused (and counted).
                Ok(frame) => session.handle_best_effort(now, frame).is_ok(),
                Err(error) => {
                    session.handle_frame_error(error);
                    false
                }
            }
        };
        if !taken {
            return false;
        }
        core.udp.window.take(opened.counter);
        if arrival == Arrival::Latest && self.target.is_none() {
            core.udp.peer = Some(from);
        }
        true
    }
}

/// What [`UdpSide::open`] found in an envelope.
#[derive(Debug)]
struct Opened {
    kind: u8,
    /// The sender's number for the datagram.
    counter: u64,
    /// Where the (plaintext) body lies.
    body: Range<usize>,
}

impl Outgoing {
    /// True when there is nothing to send.
    pub(super) fn is_empty(&self) -> bool {
        self.frames.is_empty() && self.probe.is_none()
    }
}

/// Reads the link's UDP datagrams from `socket` until it stops; each one that passes the
/// envelope's checks goes to the session, a batch at a time.
pub(super) fn read_loop(shared: &Shared, side: &UdpSide, socket: &UdpSocket) {
    let longest = side.max_datagram_len(shared.lock().session.config());
    // One byte more than the longest, so that a longer datagram shows (the rest is cut off).
    let mut buf = vec![0u8; longest + 1];
    let mut batch: Vec<(Vec<u8>, SocketAddr)> = Vec::with_capacity(BATCH);
    let mut too_long = 0;
    loop {
        let ready = wait_readable(&[socket.as_fd(), side.waker.as_fd()], Wait::Forever);
        side.waker.reset();
        if shared.lock().stopping() {
            return;
        }
        if ready.is_err() {
            // `poll` itself failed (out of memory): try again shortly rather than spin.
            std::thread::sleep(RETRY);
            continue;
        }
        loop {
            let mut drained = false;
            while batch.len() < BATCH {
                match socket.recv_from(&mut buf) {
                    // Longer than any of the peer's: dropped before any crypto or decoding.
                    Ok((len, _)) if len > longest => too_long += 1,
                    Ok((len, from)) => batch.push((buf[..len].to_vec(), from)),
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    // Would block, or an error some systems report for an earlier send.
                    Err(_) => {
                        drained = true;
                        break;
                    }
                }
            }
            if !hand_over(shared, side, &mut batch, &mut too_long) || drained {
                break;
            }
        }
    }
}

/// Opens the datagrams of `batch` (outside the lock, with the current key), then gives the
/// session what passed, passes its events on and wakes the driver if it has work; counts
/// `too_long` (dropped unread) as rejected. False when the link stops.
fn hand_over(
    shared: &Shared,
    side: &UdpSide,
    batch: &mut Vec<(Vec<u8>, SocketAddr)>,
    too_long: &mut u64,
) -> bool {
    let key = shared.lock().udp.key.clone();
    let opened: Vec<_> = batch
        .iter_mut()
        .map(|(datagram, from)| (side.open(datagram, key.as_deref()), *from))
        .collect();
    let mut core = shared.lock();
    if core.stopping() {
        return false;
    }
    core.counters.datagrams_rejected += std::mem::take(too_long);
    // A new connection (a new key, a new window) may have come up meanwhile: what was opened
    // with the old key belongs to the old one, and is rejected.
    let key_current = match (&key, &core.udp.key) {
        (Some(opened_with), Some(current)) => Arc::ptr_eq(opened_with, current),
        (Some(_), None) => false,
        (None, _) => true,
    };
    let now = Instant::now();
    for ((datagram, _), (opened, from)) in batch.iter().zip(opened) {
        let taken = opened.filter(|_| key_current).is_some_and(|opened| {
            let body = &datagram[opened.body.clone()];
            side.take(&mut core, now, &opened, body, from)
        });
        if taken {
            core.counters.datagrams_received += 1;
        } else {
            core.counters.datagrams_rejected += 1;
        }
    }
    batch.clear();
    let queued = core.collect_events(&shared.config);
    let (wake, _) = driver_work(&core, now);
    drop(core);
    if queued {
        shared.events_queued();
    }
    shared.wake_driver(wake);
    true
}

/// The sessions a probe names: its sender's (the peer) and its receiver's (this end).
fn probe_sessions(body: &[u8]) -> Option<(Option<SessionId>, Option<SessionId>)> {
    let body: &[u8; 16] = body.try_into().ok()?;
    let word = |range: Range<usize>| {
        body[range].try_into().ok().map(u64::from_le_bytes).and_then(SessionId::new)
    };
    Some((word(0..8), word(8..16)))
}

/// The 16 bytes before a datagram's body.
fn envelope(kind: u8, sealed: bool, counter: u64) -> [u8; ENVELOPE_LEN] {
    let mut header = [0u8; ENVELOPE_LEN];
    header[..4].copy_from_slice(&[MAGIC[0], MAGIC[1], VERSION, kind]);
    header[4] = u8::from(sealed);
    header[8..].copy_from_slice(&counter.to_le_bytes());
    header
}

const ENVELOPE_LEN: usize = 16;
const MAGIC: [u8; 2] = *b"PD";
const VERSION: u8 = 1;
const KIND_FRAME: u8 = 1;
const KIND_PROBE: u8 = 2;
/// A datagram frame's body before its payload: stream u32 | id u64 (docs/network.md §6).
const DATA_FIELDS: usize = 12;
/// Datagrams read before the session gets them (one lock for all).
const BATCH: usize = 64;
const RETRY: Duration = Duration::from_millis(10);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host_link::handshake::Role;
    use crate::host_link::security::PreSharedKey;

    fn side(sealed: bool) -> UdpSide {
        UdpSide::listen(UdpSocket::bind("127.0.0.1:0").unwrap(), sealed).unwrap().0
    }

    #[test]
    fn only_well_formed_envelopes_of_the_link_s_mode_open() {
        let plain = side(false);
        let mut frame = envelope(KIND_FRAME, false, 7).to_vec();
        frame.extend_from_slice(b"a frame");
        let opened = plain.open(&mut frame.clone(), None).unwrap();
        assert_eq!((opened.kind, opened.counter, opened.body), (KIND_FRAME, 7, 16..23));
        // Too short, another magic or version, an unknown kind, reserved bytes, sealed.
        for (index, value) in [(0, b'X'), (2, 2), (3, 9), (6, 1), (4, 1)] {
            let mut bad = frame.clone();
            bad[index] = value;
            assert!(plain.open(&mut bad, None).is_none(), "byte {index} = {value}");
        }
        assert!(plain.open(&mut frame[..15].to_vec(), None).is_none());

        let sealed = side(true);
        let psk = PreSharedKey::new(&[3; 32]).unwrap();
        let ours = DatagramKey::from_pre_shared_key(&psk, &[1; 32], &[2; 32], Role::Listener);
        let theirs = DatagramKey::from_pre_shared_key(&psk, &[1; 32], &[2; 32], Role::Dialer);
        let header = envelope(KIND_PROBE, true, 5);
        let mut body = vec![9; 16];
        theirs.seal(5, &header, &mut body);
        let mut datagram = header.to_vec();
        datagram.extend_from_slice(&body);
        let opened = sealed.open(&mut datagram.clone(), Some(&ours)).unwrap();
        assert_eq!((opened.kind, opened.counter, opened.body), (KIND_PROBE, 5, 16..32));
        // Without a key, plain, or with its counter changed: refused.
        assert!(sealed.open(&mut datagram.clone(), None).is_none());
        assert!(sealed.open(&mut frame.clone(), Some(&ours)).is_none());
        datagram[8] ^= 1;
        assert!(sealed.open(&mut datagram, Some(&ours)).is_none());
    }

    #[test]
    fn the_longest_datagram_is_the_envelope_a_full_datagram_frame_and_the_tag() {
        let config = SessionConfig { max_datagram_payload: 1100, ..SessionConfig::default() };
        // docs/network.md §13: 16 + 32 + 12 + 1100 + 16.
        assert_eq!(side(true).max_datagram_len(&config), 1176);
        assert_eq!(side(false).max_datagram_len(&config), 1160);
    }

    #[test]
    fn a_probe_names_both_sessions() {
        let mut body = 5u64.to_le_bytes().to_vec();
        body.extend_from_slice(&6u64.to_le_bytes());
        assert_eq!(probe_sessions(&body), Some((SessionId::new(5), SessionId::new(6))));
        assert_eq!(probe_sessions(&body[..15]), None);
    }
}
