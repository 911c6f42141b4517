//! A TCP proxy that injects faults into host-link frames: loss, duplication, reordering,
//! corruption, delay, cuts and partitions.
//!
//! ```text
//! fault_proxy/
//! ├── mod.rs       FaultProxy: listener, proxied pairs, cut schedule, partition switch
//! ├── pump.rs      one direction of one pair: frames in, faults applied, frames out
//! ├── faults.rs    Faults: what to do to frames and how often
//! └── counters.rs  ProxyCounters: what was done
//! ```

mod counters;
mod faults;
mod pump;

use std::io;
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

pub use counters::ProxyCounters;
pub use faults::Faults;

use crate::rng::Rng;
use counters::{bump, Counters};

/// A fault-injecting TCP proxy for host links.
///
/// It listens on `127.0.0.1:0`; each client that connects is paired with a new connection to
/// the target. Each direction of a pair is cut into host-link frames (by the header's length,
/// see `postbox_core::reliable::frame`), and each frame, per [`Faults`] and a seeded
/// [`Rng`], is dropped, duplicated, held back behind its successor, bit-flipped or delayed.
/// On a schedule, or on [`cut_now`](Self::cut_now), both connections of every pair are shut
/// down; [`partition`](Self::partition) swallows every frame until [`heal`](Self::heal).
/// A byte stream that does not parse as frames gets its pair cut.
///
/// Dropping the proxy cuts every pair and joins its threads.
#[derive(Debug)]
pub struct FaultProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
}

impl FaultProxy {
    /// Starts a proxy on `127.0.0.1:0` in front of `target`, with its faults drawn from
    /// `seed`.
    ///
    /// # Errors
    /// The listener cannot be bound or a thread cannot be spawned.
    pub fn start(target: SocketAddr, faults: Faults, seed: u64) -> io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            target,
            faults,
            seed,
            counters: Counters::default(),
            partitioned: AtomicBool::new(false),
            stopped: AtomicBool::new(false),
            pairs: Mutex::new(Vec::new()),
            pair_threads: Mutex::new(Vec::new()),
            next_pair: AtomicU64::new(0),
        });
        let mut threads = Vec::new();
        let accepting = Arc::clone(&shared);
        threads.push(spawn("fault-proxy-accept", move || accepting.accept_loop(&listener))?);
        if let Some(range) = shared.faults.cut_every {
            let cutting = Arc::clone(&shared);
            threads.push(spawn("fault-proxy-cut", move || cutting.cut_loop(range))?);
        }
        Ok(Self { addr, shared, threads })
    }

    /// The address clients dial instead of the target.
    #[must_use]
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Cuts both connections of every live pair now.
    pub fn cut_now(&self) {
        self.shared.cut_all();
    }

    /// Starts a partition: every frame is swallowed (counted in
    /// [`ProxyCounters::black_holed`]) while the connections stay up, as when a network path
    /// dies without resetting anything.
    pub fn partition(&self) {
        self.shared.partitioned.store(true, Ordering::SeqCst);
    }

    /// Ends a partition: frames flow again.
    pub fn heal(&self) {
        self.shared.partitioned.store(false, Ordering::SeqCst);
    }

    /// What the proxy did so far.
    #[must_use]
    pub fn counters(&self) -> ProxyCounters {
        self.shared.counters.snapshot()
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.shared.stopped.store(true, Ordering::SeqCst);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
        // Pairs set up while the accept thread was stopping are cut here too.
        self.shared.cut_all();
        loop {
            let threads = std::mem::take(&mut *lock(&self.shared.pair_threads));
            if threads.is_empty() {
                break;
            }
            for thread in threads {
                let _ = thread.join();
            }
            self.shared.cut_all();
        }
    }
}

/// State shared by the proxy's threads.
#[derive(Debug)]
struct Shared {
    target: SocketAddr,
    faults: Faults,
    seed: u64,
    counters: Counters,
    partitioned: AtomicBool,
    stopped: AtomicBool,
    pairs: Mutex<Vec<Arc<Pair>>>,
    pair_threads: Mutex<Vec<JoinHandle<()>>>,
    next_pair: AtomicU64,
}

impl Shared {
    fn accept_loop(self: &Arc<Self>, listener: &TcpListener) {
        while !self.stopped.load(Ordering::SeqCst) {
            match listener.accept() {
                Ok((client, _)) => {
                    let shared = Arc::clone(self);
                    let setup = spawn("fault-proxy-pair", move || shared.run_pair(client));
                    if let Ok(handle) = setup {
                        lock(&self.pair_threads).push(handle);
                    }
                }
                // Non-blocking accept: poll again shortly (this is test support; a few
                // milliseconds of accept latency do not matter).
                Err(_) => thread::sleep(ACCEPT_POLL),
            }
        }
    }

    /// Connects `client` to the target and forwards both ways until the pair is cut.
    fn run_pair(self: &Arc<Self>, client: TcpStream) {
        bump(&self.counters.connections);
        let server = match TcpStream::connect_timeout(&self.target, TARGET_CONNECT_TIMEOUT) {
            Ok(server) => server,
            Err(_) => {
                bump(&self.counters.target_unreachable);
                return;
            }
        };
        let Ok(pair) = Pair::new(client, server) else { return };
        let pair = Arc::new(pair);
        {
            let mut pairs = lock(&self.pairs);
            pairs.retain(|p| !p.is_cut());
            pairs.push(Arc::clone(&pair));
        }
        if self.stopped.load(Ordering::SeqCst) {
            pair.cut(&self.counters);
            return;
        }
        let index = self.next_pair.fetch_add(1, Ordering::Relaxed);
        let seed = self.seed ^ index.wrapping_mul(0x9e37_79b9_7f4a_7c15);
        let directions = [
            (&pair.client, &pair.server, Rng::new(seed)),
            (&pair.server, &pair.client, Rng::new(seed ^ 0xd1b5_4a32_d192_ed03)),
        ];
        for (from, to, rng) in directions {
            match pump::spawn_direction(from, to, rng, Arc::clone(&pair), Arc::clone(self)) {
                Ok(handles) => lock(&self.pair_threads).extend(handles),
                Err(_) => {
                    pair.cut(&self.counters);
                }
            }
        }
    }

    fn cut_loop(&self, (low, high): (Duration, Duration)) {
        let mut rng = Rng::new(self.seed ^ 0x5eed_c0de);
        loop {
            let until = Instant::now() + rng.between(low, high);
            while Instant::now() < until {
                if self.stopped.load(Ordering::SeqCst) {
                    return;
                }
                thread::sleep(CUT_POLL.min(until.saturating_duration_since(Instant::now())));
            }
            self.cut_all();
        }
    }

    /// Cuts every live pair; counts them as injected cuts unless the proxy is stopping.
    fn cut_all(&self) {
        let pairs = std::mem::take(&mut *lock(&self.pairs));
        let injected = !self.stopped.load(Ordering::SeqCst);
        for pair in pairs {
            if pair.cut(&self.counters) && injected {
                bump(&self.counters.injected_cuts);
            }
        }
    }
}

/// The two connections of one proxied client.
#[derive(Debug)]
struct Pair {
    client: TcpStream,
    server: TcpStream,
    cut: AtomicBool,
}

impl Pair {
    fn new(client: TcpStream, server: TcpStream) -> io::Result<Self> {
        for stream in [&client, &server] {
            stream.set_nonblocking(false)?;
            stream.set_nodelay(true)?;
        }
        Ok(Self { client, server, cut: AtomicBool::new(false) })
    }

    /// Shuts down both connections; true the first time (later calls do nothing).
    fn cut(&self, counters: &Counters) -> bool {
        if self.cut.swap(true, Ordering::SeqCst) {
            return false;
        }
        bump(&counters.cuts);
        // Either may already be closed by its peer; nothing more to do then.
        let _ = self.client.shutdown(Shutdown::Both);
        let _ = self.server.shutdown(Shutdown::Both);
        true
    }

    fn is_cut(&self) -> bool {
        self.cut.load(Ordering::SeqCst)
    }
}

fn spawn(name: &str, run: impl FnOnce() + Send + 'static) -> io::Result<JoinHandle<()>> {
    thread::Builder::new().name(name.to_owned()).spawn(run)
}

/// Locks `mutex`, also after a panic in another proxy thread (the lists stay consistent: every
/// update is a single push, retain or take).
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

const ACCEPT_POLL: Duration = Duration::from_millis(2);
const CUT_POLL: Duration = Duration::from_millis(10);
const TARGET_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
