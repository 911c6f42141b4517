//! Direct links across hosts: one TCP connection between a caller and a server on two hosts,
//! made by their brokers and then handed to the two nodes (docs/network.md §15).
//!
//! ```text
//! broker a                                                   broker b
//!  dial_direct(address, token) ──TCP── DirectListener ── DirectHello ── accept() → verdict 1
//!  → the socket to the caller node                        → the socket to the server node
//! ```
//!
//! The serving broker issues a one-time [`DirectToken`] over the host link; the opening broker
//! dials the serving broker's listener and says `PBDIRECT`, the token and a proof (an
//! HMAC-SHA256 of the token under the host link's pre-shared key, zeros without one); the
//! serving broker matches the token, checks the proof, answers one verdict byte and passes the
//! socket on. After that byte the connection carries the link's frames as a Unix link does
//! (docs/wire-format.md §2), so the nodes read and write it as one ([`UnixLink`](crate::UnixLink)
//! uses only stream-socket calls). Both ends get `TCP_NODELAY` and keepalive from the host
//! link's heartbeat settings ([`DirectTimers`]), so an idle link's silent peer ends it; no user
//! timeout, so a busy receiver does not (a partition is the brokers' to tell, §15).

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};
use rustix::net::sockopt;

use crate::host_link::PreSharedKey;
use crate::{wait_readable, TransportError, Wait, Waker};

/// A one-time secret naming one direct link in the making. `Debug` does not show it.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct DirectToken([u8; TOKEN_LEN]);

/// How quickly an idle direct link's silent peer is given up: the host link's heartbeat
/// settings, applied as TCP keepalive (a link with data in flight across a partition is cut by
/// the brokers when the host link is declared dead, docs/network.md §15).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DirectTimers {
    /// The host link's heartbeat interval: idle time before the first keepalive probe, and
    /// between probes (rounded up to whole seconds, 1 to 32767: TCP counts keepalive in
    /// seconds, so a sub-second interval probes every second).
    pub heartbeat_interval: Duration,
    /// Probes unanswered before an idle connection ends (1 to 127, what TCP takes).
    pub missed_heartbeats: u32,
}

/// Why [`dial_direct`] made no link.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DirectDialError {
    /// The serving broker's listener could not be reached or the connection broke.
    #[error("cannot reach the direct-link listener: {0}")]
    Unreachable(std::io::ErrorKind),
    /// The serving broker's listener closed the connection without a verdict: it was busy
    /// (too many greetings at once), so nothing was decided about the link.
    #[error("the direct-link listener closed the connection without a verdict (busy)")]
    TurnedAway,
    /// The serving broker answered its verdict: no (the token unknown, used or out of time, a
    /// wrong proof, or the port's owner gone).
    #[error("the serving broker refused the direct link")]
    Refused,
}

/// A broker's listener for direct links: it reads each connection's greeting on a thread of
/// its own (at most [`MAX_HANDSHAKES`] at once) and hands it on as a [`DirectHello`].
#[derive(Debug)]
pub struct DirectListener {
    address: SocketAddr,
    stop: Arc<Waker>,
    thread: Option<JoinHandle<()>>,
}

/// A connection that greeted a [`DirectListener`] properly: its token and proof, to be
/// [`accept`](Self::accept)ed or [`refuse`](Self::refuse)d.
#[derive(Debug)]
pub struct DirectHello {
    token: DirectToken,
    proof: [u8; PROOF_LEN],
    stream: TcpStream,
    timers: DirectTimers,
}

impl DirectToken {
    /// A fresh token from the system's secure random source.
    ///
    /// # Errors
    /// [`TransportError::Os`] when the random source fails.
    pub fn generate() -> Result<Self, TransportError> {
        let mut bytes = [0u8; TOKEN_LEN];
        SystemRandom::new().fill(&mut bytes).map_err(|_| TransportError::Os {
            operation: "draw a direct-link token",
            kind: std::io::ErrorKind::Other,
        })?;
        Ok(Self(bytes))
    }

    /// The token whose bytes are `bytes` (as received from the serving broker).
    #[must_use]
    pub fn from_bytes(bytes: [u8; TOKEN_LEN]) -> Self {
        Self(bytes)
    }

    /// The token's bytes (to send to the opening broker).
    #[must_use]
    pub fn as_bytes(&self) -> &[u8; TOKEN_LEN] {
        &self.0
    }
}

impl std::fmt::Debug for DirectToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DirectToken(..)")
    }
}

impl DirectTimers {
    /// Sets `TCP_NODELAY` and keepalive on `socket`, and clears its user timeout: the options
    /// stay with the socket when it is passed to a node.
    fn apply(self, socket: &TcpStream) -> Result<(), TransportError> {
        let os = |e| TransportError::os("set direct-link socket options", e);
        let fd = socket.as_fd();
        // Whole seconds within what TCP takes (the host config accepts more).
        let seconds = self.heartbeat_interval.as_millis().div_ceil(1000);
        let interval = Duration::from_secs(seconds.clamp(1, MAX_KEEPALIVE_SECONDS) as u64);
        let missed = self.missed_heartbeats.clamp(1, MAX_KEEPALIVE_PROBES);
        sockopt::set_tcp_nodelay(fd, true).map_err(os)?;
        sockopt::set_socket_keepalive(fd, true).map_err(os)?;
        sockopt::set_tcp_keepidle(fd, interval).map_err(os)?;
        sockopt::set_tcp_keepintvl(fd, interval).map_err(os)?;
        sockopt::set_tcp_keepcnt(fd, missed).map_err(os)?;
        // No user timeout: one would end a link whose receiver is merely busy (a zero window
        // is probed, and the probes are answered, yet Linux ≥ 5.11 counts them against it).
        // A partition ends the link through the brokers instead: when the host link is
        // declared dead, each broker cuts its nodes' direct links to that host.
        sockopt::set_tcp_user_timeout(fd, 0).map_err(os)?;
        Ok(())
    }
}

/// Dials the serving broker's direct-link listener at `address` with `token` (proved with
/// `key` when the host link has one), within `timeout`; returns the connected socket, ready
/// to be passed to the caller node, with `timers` applied.
///
/// # Errors
/// [`DirectDialError::Unreachable`] when the connection fails or breaks before the verdict,
/// [`DirectDialError::TurnedAway`] when the listener closes it without one (busy), and
/// [`DirectDialError::Refused`] only when the serving broker answers its verdict no.
pub fn dial_direct(
    address: SocketAddr,
    token: &DirectToken,
    key: Option<&PreSharedKey>,
    timers: DirectTimers,
    timeout: Duration,
) -> Result<OwnedFd, DirectDialError> {
    let unreachable = |e: std::io::Error| DirectDialError::Unreachable(e.kind());
    let mut stream = TcpStream::connect_timeout(&address, timeout).map_err(unreachable)?;
    timers.apply(&stream).map_err(|_| DirectDialError::Unreachable(std::io::ErrorKind::Other))?;
    stream.set_read_timeout(Some(timeout)).map_err(unreachable)?;
    let mut hello = Vec::with_capacity(HELLO_LEN);
    hello.extend_from_slice(GREETING);
    hello.extend_from_slice(token.as_bytes());
    hello.extend_from_slice(&proof(token, key));
    stream.write_all(&hello).map_err(unreachable)?;
    // Exactly one byte: what follows it is the server's first frames, for the caller node.
    let mut verdict = [0u8; 1];
    match stream.read_exact(&mut verdict) {
        Ok(()) if verdict[0] == ACCEPTED => {}
        Ok(()) => return Err(DirectDialError::Refused),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
            return Err(DirectDialError::TurnedAway)
        }
        Err(e) => return Err(unreachable(e)),
    }
    stream.set_read_timeout(None).map_err(unreachable)?;
    Ok(OwnedFd::from(stream))
}

impl DirectListener {
    /// Listens at `address` (port 0: any free port), applying `timers` to each accepted
    /// connection and handing each proper greeting to `on_hello` (from the listener's
    /// threads).
    ///
    /// # Errors
    /// [`TransportError::Os`] when the address cannot be bound.
    pub fn bind(
        address: SocketAddr,
        timers: DirectTimers,
        on_hello: impl Fn(DirectHello) + Send + Sync + 'static,
    ) -> Result<Self, TransportError> {
        let io =
            |operation| move |e: std::io::Error| TransportError::Os { operation, kind: e.kind() };
        let listener = TcpListener::bind(address).map_err(io("bind the direct-link listener"))?;
        let address = listener.local_addr().map_err(io("bind the direct-link listener"))?;
        listener.set_nonblocking(true).map_err(io("bind the direct-link listener"))?;
        let stop = Arc::new(Waker::new()?);
        let thread_stop = Arc::clone(&stop);
        let on_hello = Arc::new(on_hello);
        let thread = std::thread::Builder::new()
            .name("postbox-direct-listen".into())
            .spawn(move || accept_loop(&listener, &thread_stop, timers, &on_hello))
            .map_err(io("start the direct-link listener"))?;
        Ok(Self { address, stop, thread: Some(thread) })
    }

    /// The address it listens at (with the port bound for port 0).
    #[must_use]
    pub fn local_address(&self) -> SocketAddr {
        self.address
    }
}

impl Drop for DirectListener {
    fn drop(&mut self) {
        self.stop.wake();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl DirectHello {
    /// The token the dialer presented.
    #[must_use]
    pub fn token(&self) -> &DirectToken {
        &self.token
    }

    /// True when the greeting proves `key` (always without one: the token alone then
    /// authorises, docs/network.md §15).
    #[must_use]
    pub fn proves(&self, key: Option<&PreSharedKey>) -> bool {
        key.is_none_or(|key| {
            let key = hmac::Key::new(hmac::HMAC_SHA256, key.as_bytes());
            // `verify` compares in constant time.
            hmac::verify(&key, &proof_message(&self.token), &self.proof).is_ok()
        })
    }

    /// Checks the proof against `key` (see [`proves`](Self::proves)), answers the verdict and
    /// gives up the socket, ready to be passed to the server node. Refuses (as
    /// [`refuse`](Self::refuse)) a wrong proof.
    ///
    /// # Errors
    /// [`TransportError::Closed`] when the proof is wrong (the dialer was refused) or the
    /// verdict cannot be written.
    pub fn accept(mut self, key: Option<&PreSharedKey>) -> Result<OwnedFd, TransportError> {
        if !self.proves(key) {
            self.refuse();
            return Err(TransportError::Closed);
        }
        self.timers.apply(&self.stream)?;
        self.stream.write_all(&[ACCEPTED]).map_err(|_| TransportError::Closed)?;
        Ok(OwnedFd::from(self.stream))
    }

    /// Tells the dialer no and closes the connection: the serving broker decided (the dialer
    /// fails its connect).
    pub fn refuse(mut self) {
        let _ = self.stream.write_all(&[REFUSED]);
    }

    /// Closes the connection without a verdict, as a listener too busy to decide: the dialer
    /// takes it as a failed dial ([`DirectDialError::TurnedAway`]), not as a refusal.
    pub fn turn_away(self) {
        drop(self.stream);
    }
}

/// Accepts until `stop` is woken; each connection's greeting is read on a thread of its own.
fn accept_loop(
    listener: &TcpListener,
    stop: &Waker,
    timers: DirectTimers,
    on_hello: &Arc<impl Fn(DirectHello) + Send + Sync + 'static>,
) {
    let slots = HandshakeSlots::default();
    let stopped = Arc::new(AtomicBool::new(false));
    loop {
        let fds = [listener.as_fd(), stop.as_fd()];
        match wait_readable(&fds, Wait::Forever) {
            Ok(ready) if ready.contains(&1) => break,
            Ok(_) => {}
            Err(_) => std::thread::sleep(Duration::from_millis(10)),
        }
        loop {
            let (stream, from) = match listener.accept() {
                Ok(accepted) => accepted,
                Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(_) => {
                    // Out of descriptors, say: the listener stays readable, so wait a little
                    // instead of spinning.
                    std::thread::sleep(ACCEPT_BACKOFF);
                    break;
                }
            };
            let Some(slot) = slots.take(from.ip()) else {
                // Too many greetings at once, in all or from this address: turned away.
                continue;
            };
            let (stopped, on_hello) = (Arc::clone(&stopped), Arc::clone(on_hello));
            // A failed spawn drops the closure, and the slot with it.
            let _ =
                std::thread::Builder::new().name("postbox-direct-hello".into()).spawn(move || {
                    let _slot = slot;
                    if let Some(hello) = read_hello(stream, timers) {
                        if !stopped.load(Ordering::Acquire) {
                            on_hello(hello);
                        }
                    }
                });
        }
    }
    stopped.store(true, Ordering::Release);
}

/// The greeting of a fresh connection, all of it within [`HANDSHAKE_TIMEOUT`] (however it is
/// dripped); `None` for anything else.
fn read_hello(mut stream: TcpStream, timers: DirectTimers) -> Option<DirectHello> {
    stream.set_nonblocking(false).ok()?;
    let deadline = Instant::now() + HANDSHAKE_TIMEOUT;
    let mut hello = [0u8; HELLO_LEN];
    let mut read = 0;
    while read < HELLO_LEN {
        let left = deadline.checked_duration_since(Instant::now()).filter(|d| !d.is_zero())?;
        stream.set_read_timeout(Some(left)).ok()?;
        match stream.read(&mut hello[read..]) {
            Ok(0) => return None,
            Ok(n) => read += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return None,
        }
    }
    stream.set_read_timeout(None).ok()?;
    let (greeting, rest) = hello.split_at(GREETING.len());
    if greeting != GREETING {
        return None;
    }
    let (token, proof) = rest.split_at(TOKEN_LEN);
    Some(DirectHello {
        token: DirectToken(token.try_into().ok()?),
        proof: proof.try_into().ok()?,
        stream,
        timers,
    })
}

/// The greetings a listener reads at once: at most [`MAX_HANDSHAKES`] in all and
/// [`MAX_HANDSHAKES_PER_ADDRESS`] from one address, so one dialer cannot take every slot.
#[derive(Debug, Default, Clone)]
struct HandshakeSlots(Arc<Mutex<HashMap<IpAddr, usize>>>);

/// One slot of [`HandshakeSlots`], given back when dropped.
#[derive(Debug)]
struct HandshakeSlot {
    slots: HandshakeSlots,
    address: IpAddr,
}

impl HandshakeSlots {
    /// A slot for a greeting from `address`, if one is free.
    fn take(&self, address: IpAddr) -> Option<HandshakeSlot> {
        let mut busy = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let total: usize = busy.values().sum();
        let mine = busy.entry(address).or_default();
        if total >= MAX_HANDSHAKES || *mine >= MAX_HANDSHAKES_PER_ADDRESS {
            return None;
        }
        *mine += 1;
        Some(HandshakeSlot { slots: self.clone(), address })
    }
}

impl Drop for HandshakeSlot {
    fn drop(&mut self) {
        let mut busy = self.slots.0.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(count) = busy.get_mut(&self.address) {
            *count -= 1;
            if *count == 0 {
                busy.remove(&self.address);
            }
        }
    }
}

/// What proves that the dialer holds the host link's key: an HMAC-SHA256 of the token under
/// it (zeros without a key).
fn proof(token: &DirectToken, key: Option<&PreSharedKey>) -> [u8; PROOF_LEN] {
    let mut out = [0u8; PROOF_LEN];
    if let Some(key) = key {
        let key = hmac::Key::new(hmac::HMAC_SHA256, key.as_bytes());
        out.copy_from_slice(hmac::sign(&key, &proof_message(token)).as_ref());
    }
    out
}

/// The signed message: a label of its own (so no other proof of postbox's passes for it),
/// then the token.
fn proof_message(token: &DirectToken) -> Vec<u8> {
    let mut message = Vec::with_capacity(LABEL.len() + TOKEN_LEN);
    message.extend_from_slice(LABEL);
    message.extend_from_slice(token.as_bytes());
    message
}

/// The length of a [`DirectToken`] in bytes.
pub const TOKEN_LEN: usize = 32;
/// Greetings read at once by one listener; more connections are closed at once.
pub const MAX_HANDSHAKES: usize = 8;
/// Greetings read at once from one address (of [`MAX_HANDSHAKES`]).
pub const MAX_HANDSHAKES_PER_ADDRESS: usize = MAX_HANDSHAKES / 2;
const PROOF_LEN: usize = 32;
const GREETING: &[u8; 8] = b"PBDIRECT";
const HELLO_LEN: usize = 8 + TOKEN_LEN + PROOF_LEN;
const LABEL: &[u8] = b"postbox-direct-link";
const ACCEPTED: u8 = 1;
const REFUSED: u8 = 0;
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
const ACCEPT_BACKOFF: Duration = Duration::from_millis(10);
/// The most `TCP_KEEPIDLE` and `TCP_KEEPINTVL` take, in seconds.
const MAX_KEEPALIVE_SECONDS: u128 = 32767;
/// The most `TCP_KEEPCNT` takes.
const MAX_KEEPALIVE_PROBES: u32 = 127;

#[cfg(test)]
mod tests {
    use std::sync::mpsc;

    use super::*;

    const TIMERS: DirectTimers =
        DirectTimers { heartbeat_interval: Duration::from_secs(1), missed_heartbeats: 3 };

    fn listener() -> (DirectListener, mpsc::Receiver<DirectHello>) {
        let (tx, rx) = mpsc::channel();
        let tx = std::sync::Mutex::new(tx);
        let on_hello = move |hello| {
            let _ = tx.lock().unwrap().send(hello);
        };
        let listener = DirectListener::bind("127.0.0.1:0".parse().unwrap(), TIMERS, on_hello);
        (listener.unwrap(), rx)
    }

    #[test]
    fn a_token_proved_with_the_key_is_accepted_with_keepalive_set_and_carries_bytes_both_ways() {
        let key = PreSharedKey::new(&[7u8; 32]).unwrap();
        let (listener, hellos) = listener();
        let token = DirectToken::generate().unwrap();
        let address = listener.local_address();
        let (dial_token, dial_key) = (token.clone(), key.clone());
        let dialer = std::thread::spawn(move || {
            dial_direct(address, &dial_token, Some(&dial_key), TIMERS, Duration::from_secs(10))
        });
        let hello = hellos.recv_timeout(Duration::from_secs(10)).unwrap();
        assert_eq!(hello.token(), &token);
        let server = TcpStream::from(hello.accept(Some(&key)).unwrap());
        let client = TcpStream::from(dialer.join().unwrap().unwrap());
        for end in [&server, &client] {
            // What makes a partition end the link: set on both ends, kept when passed on.
            assert!(sockopt::tcp_nodelay(end).unwrap());
            assert!(sockopt::socket_keepalive(end).unwrap());
            assert_eq!(sockopt::tcp_keepidle(end).unwrap(), Duration::from_secs(1));
            assert_eq!(sockopt::tcp_keepintvl(end).unwrap(), Duration::from_secs(1));
            assert_eq!(sockopt::tcp_keepcnt(end).unwrap(), 3);
            assert_eq!(sockopt::tcp_user_timeout(end).unwrap(), 0, "back-pressure is no death");
        }
        (&server).write_all(b"pong").unwrap();
        (&client).write_all(b"ping").unwrap();
        let mut got = [0u8; 4];
        (&client).read_exact(&mut got).unwrap();
        assert_eq!(&got, b"pong");
        (&server).read_exact(&mut got).unwrap();
        assert_eq!(&got, b"ping");
    }

    #[test]
    fn a_proof_under_another_key_is_refused() {
        let (listener, hellos) = listener();
        let token = DirectToken::generate().unwrap();
        let address = listener.local_address();
        let wrong = PreSharedKey::new(&[1u8; 32]).unwrap();
        let dial_token = token.clone();
        let dialer = std::thread::spawn(move || {
            dial_direct(address, &dial_token, Some(&wrong), TIMERS, Duration::from_secs(10))
        });
        let hello = hellos.recv_timeout(Duration::from_secs(10)).unwrap();
        let key = PreSharedKey::new(&[7u8; 32]).unwrap();
        assert_eq!(hello.accept(Some(&key)).unwrap_err(), TransportError::Closed);
        assert_eq!(dialer.join().unwrap().unwrap_err(), DirectDialError::Refused);
    }

    #[test]
    fn a_greeting_turned_away_without_a_verdict_is_a_failed_dial_not_a_refusal() {
        // A busy listener decides nothing: the opening broker goes through the gateway instead
        // (docs/network.md §15), where a verdict of 0 fails the connect.
        let (listener, hellos) = listener();
        let address = listener.local_address();
        let token = DirectToken::generate().unwrap();
        let dial_token = token.clone();
        let dialer = std::thread::spawn(move || {
            dial_direct(address, &dial_token, None, TIMERS, Duration::from_secs(10))
        });
        hellos.recv_timeout(Duration::from_secs(10)).unwrap().turn_away();
        assert_eq!(dialer.join().unwrap().unwrap_err(), DirectDialError::TurnedAway);
        let dialer = std::thread::spawn(move || {
            dial_direct(address, &token, None, TIMERS, Duration::from_secs(10))
        });
        hellos.recv_timeout(Duration::from_secs(10)).unwrap().refuse();
        assert_eq!(dialer.join().unwrap().unwrap_err(), DirectDialError::Refused);
    }

    #[test]
    fn a_connection_that_does_not_greet_is_never_handed_on() {
        let (listener, hellos) = listener();
        let mut stream = TcpStream::connect(listener.local_address()).unwrap();
        stream.write_all(&[b'X'; HELLO_LEN]).unwrap();
        let mut byte = [0u8; 1];
        // The listener closes it without a verdict.
        assert_eq!(stream.read(&mut byte).unwrap_or(0), 0);
        assert!(hellos.try_recv().is_err());
    }

    #[test]
    fn a_greeting_dripped_byte_by_byte_is_cut_off_within_the_handshake_timeout() {
        let (listener, hellos) = listener();
        let address = listener.local_address();
        // MAX_HANDSHAKES slow dialers, each sending one byte of a greeting every second:
        // every single read finishes well within HANDSHAKE_TIMEOUT.
        let stop = Arc::new(AtomicBool::new(false));
        let mut drips = Vec::new();
        for _ in 0..MAX_HANDSHAKES {
            let stop = Arc::clone(&stop);
            drips.push(std::thread::spawn(move || {
                let mut stream = TcpStream::connect(address).unwrap();
                for byte in GREETING.iter().chain([0u8; TOKEN_LEN + PROOF_LEN].iter()) {
                    if stop.load(Ordering::Relaxed) || stream.write_all(&[*byte]).is_err() {
                        return;
                    }
                    std::thread::sleep(Duration::from_secs(1));
                }
            }));
        }
        std::thread::sleep(HANDSHAKE_TIMEOUT + Duration::from_secs(2));
        // Past the handshake timeout: the slow greetings must have been cut off, and an honest
        // dialer's greeting must reach the broker.
        let token = DirectToken::generate().unwrap();
        let dial_token = token.clone();
        let dialer = std::thread::spawn(move || {
            dial_direct(address, &dial_token, None, TIMERS, Duration::from_secs(10))
        });
        let hello = hellos.recv_timeout(Duration::from_secs(3));
        stop.store(true, Ordering::Relaxed);
        let hello = hello.expect("an honest greeting was handed on despite slow dialers");
        assert_eq!(hello.token(), &token);
        hello.accept(None).unwrap();
        dialer.join().unwrap().unwrap();
    }

    #[test]
    fn a_direct_link_is_made_with_any_missed_heartbeats_the_host_config_accepts() {
        // HostsConfig takes any `missed_heartbeats >= 1` (u32); TCP_KEEPCNT takes at most 127,
        // TCP_KEEPIDLE and TCP_KEEPINTVL at most 32767 s.
        for timers in [
            DirectTimers { heartbeat_interval: Duration::from_secs(1), missed_heartbeats: 200 },
            DirectTimers {
                heartbeat_interval: Duration::from_secs(100_000),
                missed_heartbeats: u32::MAX,
            },
        ] {
            let (tx, rx) = mpsc::channel();
            let tx = std::sync::Mutex::new(tx);
            let on_hello = move |hello| {
                let _ = tx.lock().unwrap().send(hello);
            };
            let listener =
                DirectListener::bind("127.0.0.1:0".parse().unwrap(), timers, on_hello).unwrap();
            let address = listener.local_address();
            let token = DirectToken::generate().unwrap();
            let dial_token = token.clone();
            let dialer = std::thread::spawn(move || {
                dial_direct(address, &dial_token, None, timers, Duration::from_secs(5))
            });
            if let Ok(hello) = rx.recv_timeout(Duration::from_secs(5)) {
                hello.accept(None).expect("serving side accepts");
            }
            dialer.join().unwrap().expect("the dial succeeds");
        }
    }

    #[test]
    fn a_server_that_reads_slowly_does_not_kill_a_live_direct_link() {
        // Back-pressure: a full link blocks the sender (DESIGN.md §2); the peer is alive and
        // answers every probe, for longer than the heartbeat bound (TIMERS: 1 s × 3).
        let (listener, hellos) = listener();
        let token = DirectToken::generate().unwrap();
        let address = listener.local_address();
        let dial_token = token.clone();
        let dialer = std::thread::spawn(move || {
            dial_direct(address, &dial_token, None, TIMERS, Duration::from_secs(10))
        });
        let hello = hellos.recv_timeout(Duration::from_secs(10)).unwrap();
        let server = TcpStream::from(hello.accept(None).unwrap());
        let client = TcpStream::from(dialer.join().unwrap().unwrap());
        client.set_nonblocking(true).unwrap();
        let chunk = [0x5au8; 65536];
        let mut sent = 0usize;
        loop {
            match (&client).write(&chunk) {
                Ok(n) => sent += n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => panic!("write: {e}"),
            }
        }
        // The server is busy for twice the heartbeat bound, then reads everything.
        std::thread::sleep(Duration::from_secs(7));
        server.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut got = 0usize;
        let mut buf = vec![0u8; 65536];
        while got < sent {
            match (&server).read(&mut buf) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) => panic!("the server lost the link after {got} of {sent} bytes: {e}"),
            }
        }
        assert_eq!(got, sent);
        assert!(client.take_error().unwrap().is_none(), "{:?}", client.take_error());
        client.set_nonblocking(false).unwrap();
        (&client).write_all(b"still here").expect("the client's link is alive");
    }

    #[test]
    fn one_address_takes_at_most_its_share_of_the_handshake_slots_and_gives_them_back() {
        let slots = HandshakeSlots::default();
        let (one, two): (IpAddr, IpAddr) = ([10, 0, 0, 1].into(), [10, 0, 0, 2].into());
        let mine: Vec<_> = (0..MAX_HANDSHAKES_PER_ADDRESS).map_while(|_| slots.take(one)).collect();
        assert_eq!(mine.len(), MAX_HANDSHAKES_PER_ADDRESS);
        assert!(slots.take(one).is_none(), "one address holds its share");
        let theirs = slots.take(two).expect("another address still gets a slot");
        drop(mine);
        assert!(slots.take(one).is_some(), "slots are given back");
        drop(theirs);
    }
}
