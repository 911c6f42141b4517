//! A UDP proxy that injects faults into datagrams (QUIC packets, for host links over QUIC):
//! loss, duplication, reordering, corruption, delay, latency, partitions and rebinding.
//!
//! ```text
//! datagram_proxy/
//! ├── mod.rs     DatagramProxy: the client-facing socket, one upstream socket per client,
//! │              the faults of each direction, the timer for held-back datagrams
//! └── faults.rs  DatagramFaults: what to do and how often; DatagramCounters: what was done
//! ```

mod faults;

use std::collections::{BinaryHeap, HashMap};
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

pub use faults::{DatagramCounters, DatagramFaults};

use crate::rng::Rng;
use faults::{bump, Counters};

/// A fault-injecting UDP proxy.
///
/// It listens on `127.0.0.1:0`; each client address that sends to it gets an upstream socket
/// of its own towards the target (a NAT mapping), and the target's answers go back to that
/// client. Every datagram, each direction with its own seeded [`Rng`], is dropped, duplicated,
/// held back behind its successor, bit-flipped or delayed per [`DatagramFaults`].
/// [`partition`](Self::partition) swallows every datagram until [`heal`](Self::heal);
/// [`rebind_now`](Self::rebind_now) (or a schedule) gives every client a new upstream socket,
/// so the target sees it come from a new address.
///
/// Dropping the proxy stops its threads and closes its sockets.
///
/// ```no_run
/// use std::net::UdpSocket;
/// use postbox_test::{DatagramFaults, DatagramProxy};
///
/// # fn main() -> std::io::Result<()> {
/// let server = UdpSocket::bind("127.0.0.1:0")?;
/// let proxy = DatagramProxy::start(server.local_addr()?, DatagramFaults::harsh(), 7)?;
/// // Clients send to `proxy.addr()` instead of the server.
/// proxy.partition(); // every datagram is swallowed from now on
/// proxy.heal();
/// println!("{:?}", proxy.counters());
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct DatagramProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
}

impl DatagramProxy {
    /// Starts a proxy on `127.0.0.1:0` in front of `target`, with its faults drawn from
    /// `seed`.
    ///
    /// # Errors
    /// A socket cannot be bound or configured, or a thread cannot be spawned.
    pub fn start(target: SocketAddr, faults: DatagramFaults, seed: u64) -> io::Result<Self> {
        let front = UdpSocket::bind("127.0.0.1:0")?;
        front.set_read_timeout(Some(POLL))?;
        let addr = front.local_addr()?;
        let shared = Arc::new(Shared {
            target,
            faults,
            seed,
            front,
            counters: Counters::default(),
            partitioned: AtomicBool::new(false),
            stopped: AtomicBool::new(false),
            flows: Mutex::new(HashMap::new()),
            flow_threads: Mutex::new(Vec::new()),
            next_flow: AtomicU64::new(0),
            timer: Timer::default(),
        });
        let mut threads = Vec::new();
        let reading = Arc::clone(&shared);
        threads.push(spawn("datagram-proxy-front", move || reading.front_loop())?);
        let timing = Arc::clone(&shared);
        threads.push(spawn("datagram-proxy-timer", move || timing.timer_loop())?);
        if let Some(range) = shared.faults.rebind_every {
            let rebinding = Arc::clone(&shared);
            threads.push(spawn("datagram-proxy-rebind", move || rebinding.rebind_loop(range))?);
        }
        Ok(Self { addr, shared, threads })
    }

    /// The address clients send to instead of the target.
    #[must_use]
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Starts a partition: every datagram, either way, is swallowed (counted in
    /// [`DatagramCounters::black_holed`]), as when a network path dies.
    pub fn partition(&self) {
        self.shared.partitioned.store(true, Ordering::SeqCst);
    }

    /// Ends a partition: datagrams flow again.
    pub fn heal(&self) {
        self.shared.partitioned.store(false, Ordering::SeqCst);
    }

    /// Gives every client a new upstream socket: the target sees each one come from a new
    /// address from its next datagram on, and answers to the old one are lost.
    pub fn rebind_now(&self) {
        self.shared.rebind();
    }

    /// What the proxy did so far.
    #[must_use]
    pub fn counters(&self) -> DatagramCounters {
        self.shared.counters.snapshot()
    }
}

impl Drop for DatagramProxy {
    fn drop(&mut self) {
        self.shared.stopped.store(true, Ordering::SeqCst);
        self.shared.timer.wake.notify_all();
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
        let threads = std::mem::take(&mut *lock(&self.shared.flow_threads));
        for thread in threads {
            let _ = thread.join();
        }
    }
}

/// State shared by the proxy's threads.
#[derive(Debug)]
struct Shared {
    target: SocketAddr,
    faults: DatagramFaults,
    seed: u64,
    /// The socket clients send to; answers go back from it.
    front: UdpSocket,
    counters: Counters,
    partitioned: AtomicBool,
    stopped: AtomicBool,
    /// The current upstream socket of each client address.
    flows: Mutex<HashMap<SocketAddr, Arc<Flow>>>,
    flow_threads: Mutex<Vec<JoinHandle<()>>>,
    next_flow: AtomicU64,
    timer: Timer,
}

/// One client's upstream socket, connected to the target.
#[derive(Debug)]
struct Flow {
    client: SocketAddr,
    upstream: UdpSocket,
    /// Replaced by a rebind: its reader stops and the socket closes.
    retired: AtomicBool,
}

/// Where a datagram goes.
#[derive(Debug, Clone)]
enum Route {
    /// Back to a client, from the front socket.
    ToClient(SocketAddr),
    /// To the target, from a client's upstream socket.
    ToTarget(Arc<Flow>),
}

/// The faults of one direction: its generator and the datagram it holds back.
#[derive(Debug)]
struct Direction {
    rng: Rng,
    held: Option<(Route, Vec<u8>, Instant)>,
}

/// Datagrams waiting for their time.
#[derive(Debug, Default)]
struct Timer {
    queue: Mutex<BinaryHeap<Scheduled>>,
    wake: Condvar,
}

#[derive(Debug)]
struct Scheduled {
    due: Instant,
    /// Ties go in the order scheduled.
    order: u64,
    route: Route,
    bytes: Vec<u8>,
}

impl Shared {
    /// Reads what clients send and forwards it to the target, each client through its flow.
    fn front_loop(self: &Arc<Self>) {
        let mut direction = Direction { rng: Rng::new(self.seed), held: None };
        let mut buf = vec![0u8; MAX_DATAGRAM];
        while !self.stopped.load(Ordering::SeqCst) {
            direction.release_expired(self);
            let Ok((len, client)) = self.front.recv_from(&mut buf) else { continue };
            let Some(flow) = self.flow_of(client) else { continue };
            direction.forward(self, Route::ToTarget(flow), &buf[..len]);
        }
    }

    /// The current flow of `client`, made (with its reader) if it has none.
    fn flow_of(self: &Arc<Self>, client: SocketAddr) -> Option<Arc<Flow>> {
        let mut flows = lock(&self.flows);
        if let Some(flow) = flows.get(&client) {
            return Some(Arc::clone(flow));
        }
        let unspecified: SocketAddr = if self.target.is_ipv4() {
            (Ipv4Addr::UNSPECIFIED, 0).into()
        } else {
            (Ipv6Addr::UNSPECIFIED, 0).into()
        };
        let upstream = UdpSocket::bind(unspecified).ok()?;
        upstream.connect(self.target).ok()?;
        upstream.set_read_timeout(Some(POLL)).ok()?;
        let flow = Arc::new(Flow { client, upstream, retired: AtomicBool::new(false) });
        let index = self.next_flow.fetch_add(1, Ordering::Relaxed);
        let seed = self.seed ^ 0xd1b5_4a32_d192_ed03 ^ index.wrapping_mul(0x9e37_79b9_7f4a_7c15);
        let (shared, reading) = (Arc::clone(self), Arc::clone(&flow));
        let reader = spawn("datagram-proxy-flow", move || shared.flow_loop(&reading, seed)).ok()?;
        lock(&self.flow_threads).push(reader);
        bump(&self.counters.flows);
        flows.insert(client, Arc::clone(&flow));
        Some(flow)
    }

    /// Reads what the target sends to one flow and forwards it to that flow's client.
    fn flow_loop(&self, flow: &Flow, seed: u64) {
        let mut direction = Direction { rng: Rng::new(seed), held: None };
        let mut buf = vec![0u8; MAX_DATAGRAM];
        while !self.stopped.load(Ordering::SeqCst) && !flow.retired.load(Ordering::SeqCst) {
            direction.release_expired(self);
            let Ok(len) = flow.upstream.recv(&mut buf) else { continue };
            direction.forward(self, Route::ToClient(flow.client), &buf[..len]);
        }
    }

    /// Sends scheduled datagrams when their time comes.
    fn timer_loop(&self) {
        let mut queue = lock(&self.timer.queue);
        while !self.stopped.load(Ordering::SeqCst) {
            let now = Instant::now();
            match queue.peek() {
                Some(next) if next.due <= now => {
                    // Invariant: `peek` just returned an item.
                    let next = queue.pop().expect("a peeked item");
                    drop(queue);
                    self.send(&next.route, &next.bytes);
                    queue = lock(&self.timer.queue);
                }
                Some(next) => {
                    let wait = next.due - now;
                    queue = self
                        .timer
                        .wake
                        .wait_timeout(queue, wait)
                        .unwrap_or_else(PoisonError::into_inner)
                        .0;
                }
                None => {
                    queue = self
                        .timer
                        .wake
                        .wait_timeout(queue, POLL)
                        .unwrap_or_else(PoisonError::into_inner)
                        .0;
                }
            }
        }
    }

    fn rebind_loop(&self, (low, high): (Duration, Duration)) {
        let mut rng = Rng::new(self.seed ^ 0x5eed_c0de);
        loop {
            let until = Instant::now() + rng.between(low, high);
            while Instant::now() < until {
                if self.stopped.load(Ordering::SeqCst) {
                    return;
                }
                thread::sleep(POLL.min(until.saturating_duration_since(Instant::now())));
            }
            self.rebind();
        }
    }

    fn rebind(&self) {
        let flows = std::mem::take(&mut *lock(&self.flows));
        for flow in flows.values() {
            flow.retired.store(true, Ordering::SeqCst);
        }
        bump(&self.counters.rebinds);
    }

    fn schedule(&self, due: Instant, route: Route, bytes: Vec<u8>) {
        static ORDER: AtomicU64 = AtomicU64::new(0);
        let order = ORDER.fetch_add(1, Ordering::Relaxed);
        lock(&self.timer.queue).push(Scheduled { due, order, route, bytes });
        self.timer.wake.notify_all();
    }

    fn send(&self, route: &Route, bytes: &[u8]) {
        // A datagram that cannot be sent is lost, as on a network.
        let _ = match route {
            Route::ToClient(client) => self.front.send_to(bytes, client),
            Route::ToTarget(flow) => flow.upstream.send(bytes),
        };
    }
}

impl Direction {
    /// Applies the faults to one datagram read from one side and sends what is left.
    fn forward(&mut self, shared: &Shared, route: Route, bytes: &[u8]) {
        let faults = &shared.faults;
        let counters = &shared.counters;
        bump(&counters.datagrams);
        if shared.partitioned.load(Ordering::SeqCst) {
            bump(&counters.black_holed);
            return;
        }
        if self.rng.chance(faults.loss) {
            bump(&counters.dropped);
            return;
        }
        let mut bytes = bytes.to_vec();
        if !bytes.is_empty() && self.rng.chance(faults.corruption) {
            let bit = self.rng.below(bytes.len() as u64 * 8);
            bytes[(bit / 8) as usize] ^= 1 << (bit % 8);
            bump(&counters.corrupted);
        }
        let copies = if self.rng.chance(faults.duplication) {
            bump(&counters.duplicated);
            2
        } else {
            1
        };
        for _ in 0..copies {
            if self.held.is_none() && self.rng.chance(faults.reordering) {
                bump(&counters.reordered);
                self.held = Some((route.clone(), bytes.clone(), Instant::now()));
                continue;
            }
            self.emit(shared, route.clone(), bytes.clone());
            if let Some((route, bytes, _)) = self.held.take() {
                self.emit(shared, route, bytes);
            }
        }
    }

    /// Sends a held-back datagram whose successor did not come in time.
    fn release_expired(&mut self, shared: &Shared) {
        let expired = self
            .held
            .as_ref()
            .is_some_and(|(_, _, since)| since.elapsed() >= shared.faults.reorder_hold);
        if expired {
            if let Some((route, bytes, _)) = self.held.take() {
                self.emit(shared, route, bytes);
            }
        }
    }

    /// Sends `bytes` now, or after the path's latency and any delay drawn for it.
    fn emit(&mut self, shared: &Shared, route: Route, bytes: Vec<u8>) {
        let faults = &shared.faults;
        let mut wait = faults.latency;
        if self.rng.chance(faults.delay) {
            bump(&shared.counters.delayed);
            wait += self.rng.between(faults.delay_range.0, faults.delay_range.1);
        }
        if wait.is_zero() {
            shared.send(&route, &bytes);
        } else {
            shared.schedule(Instant::now() + wait, route, bytes);
        }
    }
}

impl PartialEq for Scheduled {
    fn eq(&self, other: &Self) -> bool {
        (self.due, self.order) == (other.due, other.order)
    }
}

impl Eq for Scheduled {}

impl PartialOrd for Scheduled {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Scheduled {
    /// Reversed: the heap's top is the earliest.
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (other.due, other.order).cmp(&(self.due, self.order))
    }
}

fn spawn(name: &str, run: impl FnOnce() + Send + 'static) -> io::Result<JoinHandle<()>> {
    thread::Builder::new().name(name.to_owned()).spawn(run)
}

/// Locks `mutex`, also after a panic in another proxy thread (every update is a single insert,
/// push, pop or take).
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// How often the threads look at the stop flag and at held-back datagrams.
const POLL: Duration = Duration::from_millis(5);
/// Larger than any UDP payload.
const MAX_DATAGRAM: usize = 65_536;

#[cfg(test)]
mod tests {
    use super::*;

    /// Sends `count` numbered datagrams through `proxy` to `server` and collects what arrives
    /// until a short quiet time.
    fn through(proxy: &DatagramProxy, server: &UdpSocket, count: u32) -> Vec<Vec<u8>> {
        let server = server.try_clone().unwrap();
        server.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
        // Read while sending, so that the server's socket buffer never overflows.
        let reader = thread::spawn(move || {
            let mut got = Vec::new();
            let mut buf = [0u8; 64];
            while let Ok((len, _)) = server.recv_from(&mut buf) {
                got.push(buf[..len].to_vec());
            }
            got
        });
        let client = UdpSocket::bind("127.0.0.1:0").unwrap();
        for n in 0..count {
            client.send_to(&n.to_le_bytes(), proxy.addr()).unwrap();
            if n % 10 == 9 {
                // Paced, so that the proxy's socket buffer never overflows either.
                thread::sleep(Duration::from_millis(1));
            }
        }
        reader.join().unwrap()
    }

    #[test]
    fn a_faultless_proxy_forwards_both_ways_and_a_partition_swallows_everything() {
        let server = UdpSocket::bind("127.0.0.1:0").unwrap();
        let proxy =
            DatagramProxy::start(server.local_addr().unwrap(), DatagramFaults::none(), 1).unwrap();
        let client = UdpSocket::bind("127.0.0.1:0").unwrap();
        client.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        client.send_to(b"ping", proxy.addr()).unwrap();
        server.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut buf = [0u8; 16];
        let (len, from) = server.recv_from(&mut buf).unwrap();
        assert_eq!(&buf[..len], b"ping");
        server.send_to(b"pong", from).unwrap();
        let (len, _) = client.recv_from(&mut buf).unwrap();
        assert_eq!(&buf[..len], b"pong");

        proxy.partition();
        assert!(through(&proxy, &server, 10).is_empty());
        assert_eq!(proxy.counters().black_holed, 10);
        proxy.heal();
        assert_eq!(through(&proxy, &server, 10).len(), 10);
    }

    #[test]
    fn every_fault_happens_and_the_counts_add_up() {
        let server = UdpSocket::bind("127.0.0.1:0").unwrap();
        let faults = DatagramFaults {
            loss: 0.1,
            duplication: 0.1,
            corruption: 0.1,
            reordering: 0.1,
            delay: 0.1,
            delay_range: (Duration::from_millis(1), Duration::from_millis(5)),
            ..DatagramFaults::none()
        };
        let proxy = DatagramProxy::start(server.local_addr().unwrap(), faults, 42).unwrap();
        let got = through(&proxy, &server, 500);
        let counters = proxy.counters();
        assert_eq!(counters.datagrams, 500);
        assert!(counters.dropped > 0 && counters.duplicated > 0 && counters.corrupted > 0);
        assert!(counters.reordered > 0 && counters.delayed > 0);
        assert_eq!(got.len() as u64, 500 - counters.dropped + counters.duplicated);
        let numbers: Vec<u32> =
            got.iter().map(|d| u32::from_le_bytes(d[..4].try_into().unwrap())).collect();
        assert!(numbers.windows(2).any(|w| w[0] > w[1]), "some arrive out of order");
    }

    #[test]
    fn a_rebind_gives_the_client_a_new_address_at_the_target() {
        let server = UdpSocket::bind("127.0.0.1:0").unwrap();
        server.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let proxy =
            DatagramProxy::start(server.local_addr().unwrap(), DatagramFaults::none(), 3).unwrap();
        let client = UdpSocket::bind("127.0.0.1:0").unwrap();
        let mut buf = [0u8; 16];
        client.send_to(b"one", proxy.addr()).unwrap();
        let (_, before) = server.recv_from(&mut buf).unwrap();
        proxy.rebind_now();
        client.send_to(b"two", proxy.addr()).unwrap();
        let (_, after) = server.recv_from(&mut buf).unwrap();
        assert_ne!(before, after);
        assert_eq!((proxy.counters().flows, proxy.counters().rebinds), (2, 1));
    }
}
