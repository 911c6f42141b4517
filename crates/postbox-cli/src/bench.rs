//! `postbox bench`: postbox over shared-memory and Unix links beside the raw OS primitives it
//! is built on, all measured in one run with the same CPU placement, printed as percentiles
//! and ratios (methodology: docs/benchmarks.md).
//!
//! Measures, each at 64 B, 4 KiB, 64 KiB, 1 MiB and 4 MiB unless noted:
//! - call round trip with blocking waits: postbox `call` to an echo port (shared memory, Unix
//!   link) beside a raw socketpair echo and a raw futex ping-pong over shared memory;
//! - one-way latency with busy-waiting receivers (cross-core only): postbox from send to
//!   receipt, the send time carried in the message on the system-wide monotonic clock, with
//!   copied and with loaned (zero-copy) payloads, and at 64 B through a connection's feed
//!   (from send to receipt, and as half the round trip of a ping-pong over two feeds); the raw
//!   baseline is half the round trip of a ping-pong spinning on a shared word;
//! - one-way throughput at 64 B: a burst of one-way messages, then one round trip; sent one
//!   by one to a receiver taking one at a time, and in batches to one taking batches;
//! - flood fairness at 64 B over shared memory (`--measure flood`, not in the default set):
//!   the call round trip of a well-behaved client (this process) to an echo server process,
//!   alone, then while another client process floods the same port: one-way messages in
//!   batches (sleeping while the link is full), one-way messages with `try_send` spinning,
//!   calls from many threads, and, as a control, a process that only spins on the CPU. The
//!   figure is the p99 beside the flood over the p99 alone (the baseline is postbox alone,
//!   not a raw primitive), with how many flood messages got through;
//! - across hosts at 64 B (`--measure hosts`, not in the default set; `bench_hosts.rs`): two
//!   daemons of this process's own linked over loopback TCP, the call round trip to `echo@b`
//!   through them and over a direct link (a third daemon's) beside a raw TCP ping-pong, and one-way throughput in batches to `sink@b` beside raw TCP
//!   writes.

use crate::output::outln;
use std::io::{IsTerminal, Read, Write};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use postbox::{Broker, Connection, Message, Node, TryRecvError, TrySendError};
use postbox_shm::{PingPong, PingWait};

use crate::bench_hosts::HostsRig;
use crate::latency::{micros, monotonic_ns, Samples};
use crate::placement::{self, Placement};
use crate::spawner::{Spawner, Worker};

/// What `postbox bench` was asked for.
#[derive(Debug, Clone)]
pub(crate) struct Options {
    /// Print JSON instead of tables.
    pub(crate) json: bool,
    /// Round trips per latency measurement of a small message (fewer for large ones).
    pub(crate) rounds: usize,
    /// `same-core`, `cross-core` or `both`.
    pub(crate) placement: String,
    /// Fewer sizes and rounds: a smoke run.
    pub(crate) quick: bool,
    /// Which measures to run: `call`, `busy`, `throughput`, `flood`, `hosts`.
    pub(crate) measures: Vec<String>,
}

/// What was measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Measure {
    CallRtt,
    OneWayBusy,
    Throughput,
    /// A well-behaved client's call round trip beside a flooding one.
    Flood,
    /// Call round trip to a port on another host (two daemons on loopback TCP).
    HostsCallRtt,
    /// One-way throughput to a port on another host.
    HostsThroughput,
}

/// Who carried the messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Carrier {
    Shm,
    ShmZeroCopy,
    /// A connection's feed ([`postbox::FeedSender`]): small messages only.
    ShmFeed,
    /// Two feeds, one each way, in a ping-pong: half a round trip, measured as the raw
    /// ping-pongs are.
    ShmFeedPingPong,
    /// Shared memory, [`Connection::send_batch`] to a receiver taking batches.
    ShmBatch,
    Unix,
    RawSocketpair,
    RawFutex,
    /// The ping-pong of [`Carrier::RawFutex`], each side giving the CPU up between looks
    /// instead of sleeping: on one core, the floor of any round trip between two processes.
    RawYield,
    RawSpin,
    /// The well-behaved client with nobody else on the port (flood measure's baseline).
    Alone,
    /// ... while another client floods the port with one-way messages in batches.
    OneWayFlood,
    /// ... while another client floods the port with one-way messages, `try_send` spinning.
    TrySendFlood,
    /// ... while another client floods the port with calls from several threads.
    CallFlood,
    /// ... while another process spins on the same CPU, sending nothing (a control).
    Spinner,
    /// Through two daemons linked over loopback TCP (`port@b`).
    Gateway,
    /// The same, messages sent with [`Connection::send_batch`] to a receiver taking batches.
    GatewayBatch,
    /// To the same server over a direct link: a TCP connection between the two nodes, made
    /// by a third daemon (`a2`) and daemon b (docs/network.md §15).
    Direct,
    /// A raw TCP connection over loopback with `TCP_NODELAY`.
    RawTcp,
}

/// One line of the results.
#[derive(Debug)]
struct Record {
    placement: Placement,
    measure: Measure,
    size: usize,
    carrier: Carrier,
    /// Latency samples (latency measures).
    samples: Option<Samples>,
    /// Messages per second (throughput).
    rate: Option<f64>,
    /// Flood measure only.
    flood: Option<FloodCounts>,
}

/// What a flood measurement counted besides the well-behaved client's latency.
#[derive(Debug, Clone, Copy)]
struct FloodCounts {
    /// The well-behaved client's calls measured.
    calls: usize,
    /// The flooder's messages that got through (one-way messages the server took, or calls
    /// answered) and their rate per second, for the flooded variants.
    through: Option<(u64, f64)>,
}

pub(crate) fn run(options: &Options) -> Result<()> {
    let placements = match options.placement.as_str() {
        "both" => Placement::available(),
        other => vec![Placement::parse(other).with_context(|| {
            format!("unknown placement {other:?}: same-core, cross-core or both")
        })?],
    };
    let sizes: &[usize] =
        if options.quick { &[64, 4096, 1 << 20] } else { &[64, 4096, 64 << 10, 1 << 20, 4 << 20] };
    let wanted = Measure::parse_list(&options.measures)?;
    let shm = Broker::embedded_with(|c| c.shared_memory(true))?;
    let unix = Broker::embedded_with(|c| c.shared_memory(false))?;
    let size_steps = |measure| if wanted.contains(&measure) { sizes.len() } else { 0 };
    let busy_steps = if placements.contains(&Placement::CrossCore) {
        size_steps(Measure::OneWayBusy)
    } else {
        0
    };
    let hosts = wanted.contains(&Measure::HostsCallRtt);
    let per_placement = size_steps(Measure::CallRtt)
        + usize::from(wanted.contains(&Measure::Throughput))
        + if wanted.contains(&Measure::Flood) { FLOOD_VARIANTS.len() + 1 } else { 0 }
        + if hosts { 2 } else { 0 };
    let steps = placements.len() * per_placement + busy_steps;
    let mut progress = Progress::new(steps);
    let mut records = Vec::new();
    let cpus = placement::allowed_cpus();
    for &place in &placements {
        if hosts {
            records.extend(measure_hosts(place, options, &mut progress)?);
            placement::unpin_current_thread(&cpus)?;
        }
        if wanted.iter().all(|m| matches!(m, Measure::HostsCallRtt | Measure::HostsThroughput)) {
            continue;
        }
        let rig = Rig::start(&shm, &unix, place, sizes)?;
        for &size in sizes.iter().filter(|_| wanted.contains(&Measure::CallRtt)) {
            progress.step(&format!("{}, call round trip, {}", place.label(), size_label(size)));
            records.extend(rig.call_rtt(place, size, rounds_for(options.rounds, size))?);
        }
        // Busy-waiting on the core the peer needs only measures the scheduler's time slice.
        if place == Placement::CrossCore && wanted.contains(&Measure::OneWayBusy) {
            for &size in sizes {
                progress.step(&format!(
                    "{}, one-way busy-wait, {}",
                    place.label(),
                    size_label(size)
                ));
                records.extend(rig.one_way_busy(place, size, rounds_for(options.rounds, size))?);
            }
        }
        if wanted.contains(&Measure::Throughput) {
            progress.step(&format!("{}, one-way throughput, 64 B", place.label()));
            let burst = if options.quick { 20_000 } else { 200_000 };
            records.extend(rig.throughput(place, burst)?);
        }
        if wanted.contains(&Measure::Flood) {
            records.extend(rig.flood(place, options.rounds, &mut progress)?);
        }
        drop(rig);
        placement::unpin_current_thread(&cpus)?;
    }
    progress.finish();
    if options.json {
        print_json(&records)?;
    } else {
        print_tables(&records)?;
    }
    Ok(())
}

/// The across-hosts measures of one placement, with daemons and workers of their own
/// (`bench_hosts.rs`), stopped before the other measures start.
fn measure_hosts(
    place: Placement,
    options: &Options,
    progress: &mut Progress,
) -> Result<Vec<Record>> {
    progress.step(&format!("{}, across hosts: call round trip, 64 B", place.label()));
    let rig = HostsRig::start(place)?;
    let record = |measure, carrier, samples, rate| Record {
        placement: place,
        measure,
        size: 64,
        carrier,
        samples,
        rate,
        flood: None,
    };
    let mut records = Vec::new();
    let samples = rig.call_rtt(options.rounds)?;
    let carriers = [Carrier::Gateway, Carrier::Direct, Carrier::RawTcp];
    records.extend(latency_records(place, Measure::HostsCallRtt, 64, &carriers, samples));
    progress.step(&format!("{}, across hosts: one-way throughput, 64 B", place.label()));
    let burst = if options.quick { 20_000 } else { 200_000 };
    let [batched, raw] = rig.throughput(burst)?;
    records.push(record(Measure::HostsThroughput, Carrier::GatewayBatch, None, Some(batched)));
    records.push(record(Measure::HostsThroughput, Carrier::RawTcp, None, Some(raw)));
    Ok(records)
}

/// The workers and connections of one placement. The servers here sleep when idle; the
/// busy-waiting ones are started only for their own measurement (two spinning processes on a
/// two-core machine would distort everything else).
struct Rig {
    place: Placement,
    shm_node: Node,
    unix_node: Node,
    on_shm: Spawner,
    on_unix: Spawner,
    tag: &'static str,
    /// Every CPU this process may use (a pinned thread sees only its own).
    cpus: Vec<usize>,
    shm_echo: Connection,
    unix_echo: Connection,
    /// To an echo server on shared memory that receives in batches.
    shm_batch_echo: Connection,
    /// Per size: a raw socketpair echo and a raw futex ping-pong.
    raw: Vec<(usize, UnixStream, PingPong)>,
    raw_sink: UnixStream,
    _workers: Vec<Worker>,
}

impl Rig {
    fn start(shm: &Broker, unix: &Broker, place: Placement, sizes: &[usize]) -> Result<Self> {
        let shm_node = shm.node()?;
        let unix_node = unix.node()?;
        // Names of their own per placement: the previous placement's workers may not have
        // released theirs yet.
        let tag = match place {
            Placement::SameCore => "same",
            Placement::CrossCore => "cross",
        };
        let echo = format!("bench/echo-{tag}");
        let batch_echo = format!("bench/batch-echo-{tag}");
        let batch = THROUGHPUT_BATCH.to_string();
        let on_shm = Spawner { socket: shm.socket_path().to_owned() };
        let on_unix = Spawner { socket: unix.socket_path().to_owned() };
        let cpus = placement::allowed_cpus();
        let mut raw = Vec::new();
        let mut ends = Vec::new();
        let workers = place.apply(|| -> Result<Vec<Worker>> {
            let mut workers =
                // The echo servers and this client trust each other (one program's processes):
                // pooled payloads are read in place both ways. Untrusting ports copy them out
                // on arrival (docs/benchmarks.md).
                vec![
                    on_shm.worker(&["echo", &echo, "--read-in-place"])?,
                    on_unix.worker(&["echo", &echo, "--read-in-place"])?,
                    on_shm.worker(&["echo", &batch_echo, "--read-in-place", "--batch", &batch])?,
                ];
            for &size in sizes {
                let text = size.to_string();
                let (theirs, ours) = UnixStream::pair()?;
                workers.push(on_shm.worker_with_stdin(&["raw-echo", "--size", &text], theirs)?);
                let futex = PingPong::create(size)?;
                let fd = futex.fd().try_clone_to_owned()?;
                workers.push(on_shm.worker_with_fd(&["raw-ping-pong", "--size", &text], fd)?);
                raw.push((size, ours, futex));
            }
            let (theirs, ours) = UnixStream::pair()?;
            workers.push(on_shm.worker_with_stdin(&["raw-sink", "--size", "64"], theirs)?);
            ends.push(ours);
            Ok(workers)
        })??;
        Ok(Self {
            place,
            shm_echo: shm_node.connect(&echo)?.read_replies_in_place(),
            unix_echo: unix_node.connect(&echo)?,
            shm_batch_echo: shm_node.connect(&batch_echo)?,
            shm_node,
            unix_node,
            on_shm,
            on_unix,
            tag,
            cpus,
            raw,
            raw_sink: ends.pop().context("raw sink")?,
            _workers: workers,
        })
    }

    fn call_rtt(&self, place: Placement, size: usize, rounds: usize) -> Result<Vec<Record>> {
        let body = vec![0x5au8; size];
        let (_, raw_stream, raw_futex) =
            self.raw.iter().find(|(s, ..)| *s == size).context("raw peers for this size")?;
        let mut raw_stream = raw_stream.try_clone()?;
        let mut buf = vec![0u8; size];
        let mut futex_buf = vec![0u8; size];
        let call = |connection: &Connection| -> Result<Duration> {
            let message = Message::new(body.clone());
            let start = Instant::now();
            connection.call(message)?;
            Ok(start.elapsed())
        };
        let samples = rotate(
            rounds,
            &mut [
                &mut || call(&self.shm_echo),
                &mut || call(&self.unix_echo),
                &mut || {
                    let start = Instant::now();
                    raw_stream.write_all(&body)?;
                    raw_stream.read_exact(&mut buf)?;
                    Ok(start.elapsed())
                },
                &mut || {
                    let start = Instant::now();
                    raw_futex.ping(&body, &mut futex_buf, PingWait::Futex);
                    Ok(start.elapsed())
                },
            ],
        )?;
        let mut records = latency_records(
            place,
            Measure::CallRtt,
            size,
            &[Carrier::Shm, Carrier::Unix, Carrier::RawSocketpair, Carrier::RawFutex],
            samples,
        );
        let floor = self.raw_ping_pong(size, rounds, PingWait::Yield, 1)?;
        records.extend(latency_records(place, Measure::CallRtt, size, &[Carrier::RawYield], floor));
        Ok(records)
    }

    /// Starts a server process with this placement's pinning.
    fn spawn(&self, start: impl FnOnce() -> Result<Worker>) -> Result<Worker> {
        placement::unpin_current_thread(&self.cpus)?;
        self.place.apply(start)?
    }

    fn one_way_busy(&self, place: Placement, size: usize, rounds: usize) -> Result<Vec<Record>> {
        let busy = format!("bench/busy-{}-{size}", self.tag);
        let back = format!("bench/busy-back-{}-{size}", self.tag);
        let mut samples = Vec::new();
        let postbox = [
            (&self.shm_node, &self.on_shm, false),
            (&self.shm_node, &self.on_shm, true),
            (&self.unix_node, &self.on_unix, false),
        ];
        for (index, (node, spawner, zero_copy)) in postbox.into_iter().enumerate() {
            let busy = format!("{busy}-{index}");
            let back = format!("{back}-{index}");
            let back_port = node.port(&back).open()?;
            let mut worker = self.spawn(|| spawner.worker(&["busy-echo", &busy, &back]))?;
            let to = node.connect(&busy)?;
            let mut ping = || -> Result<Duration> {
                let mut message = if zero_copy {
                    let mut lent = to.loan(size)?;
                    lent.body_mut().fill(0x5a);
                    lent
                } else {
                    Message::new(vec![0x5au8; size])
                };
                // The send time goes in last: the receiver measures from it.
                let stamp = monotonic_ns().to_le_bytes();
                message.body_mut()[..8].copy_from_slice(&stamp);
                loop {
                    match to.try_send(message) {
                        Ok(()) => break,
                        Err(TrySendError::Full(m)) => message = m,
                        Err(e) => return Err(e.into()),
                    }
                }
                loop {
                    match back_port.try_recv() {
                        Ok(answer) => {
                            let nanos =
                                answer.body().first_chunk::<8>().map(|b| u64::from_le_bytes(*b));
                            return Ok(Duration::from_nanos(nanos.unwrap_or(0)));
                        }
                        Err(TryRecvError::Empty) => std::hint::spin_loop(),
                        Err(e) => return Err(e.into()),
                    }
                }
            };
            samples.extend(rotate(rounds, &mut [&mut ping])?);
            // Ends the busy receiver (it never sleeps, so it must not outlive its measurement).
            let _ = to.send(Message::new(vec![0u8; 8]).with_type(1));
            worker.wait_for_exit()?;
        }
        let mut carriers = vec![Carrier::Shm, Carrier::ShmZeroCopy, Carrier::Unix];
        if size <= postbox::FEED_MAX_LEN {
            samples.push(self.feed_busy(size, rounds, false)?);
            samples.push(self.feed_busy(size, rounds, true)?);
            carriers.extend([Carrier::ShmFeed, Carrier::ShmFeedPingPong]);
        }
        samples.extend(self.raw_ping_pong(size, rounds, PingWait::Spin, 2)?);
        carriers.push(Carrier::RawSpin);
        Ok(latency_records(place, Measure::OneWayBusy, size, &carriers, samples))
    }

    /// One-way latency through a connection's feed to a busy-waiting receiver, which answers
    /// on a feed of its own (the answer's way is not measured). Without `ping_pong`, measured
    /// as [`one_way_busy`](Self::one_way_busy) measures the other carriers, from the send time
    /// the message carries to its receipt, which the receiver answers; with it, as the raw
    /// ping-pongs are: half the round trip of the message and its echo, clock reads outside.
    fn feed_busy(&self, size: usize, rounds: usize, ping_pong: bool) -> Result<Samples> {
        let how = if ping_pong { "ping" } else { "busy" };
        let name = format!("bench/feed-{how}-{}-{size}", self.tag);
        let back = format!("bench/feed-{how}-back-{}-{size}", self.tag);
        let back_port = self.shm_node.port(&back).open()?;
        let mut args = vec!["busy-feed-echo", name.as_str(), back.as_str()];
        if ping_pong {
            args.push("--ping-pong");
        }
        let mut worker = self.spawn(|| self.on_shm.worker(&args))?;
        let mut feed = self.shm_node.connect(&name)?.open_feed()?;
        let mut answers = back_port.recv()?.accept_feed()?;
        let mut body = vec![0x5au8; size];
        let mut answer = Vec::with_capacity(size);
        let mut round = || -> Result<Duration> {
            // A ping-pong times the round trip here; otherwise the send time goes in last, and
            // the receiver measures from it.
            let start = ping_pong.then(Instant::now);
            if !ping_pong {
                body[..8].copy_from_slice(&monotonic_ns().to_le_bytes());
            }
            send_spinning(&mut feed, &body)?;
            recv_spinning(&mut answers, &mut answer)?;
            if let Some(start) = start {
                return Ok(start.elapsed() / 2);
            }
            let nanos = answer.first_chunk::<8>().map(|b| u64::from_le_bytes(*b));
            Ok(Duration::from_nanos(nanos.unwrap_or(0)))
        };
        let samples = rotate(rounds, &mut [&mut round])?;
        // Ends the busy receiver: the end of its feed.
        drop(feed);
        worker.wait_for_exit()?;
        samples.into_iter().next().context("one feed measurement")
    }

    /// A raw ping-pong whose server never sleeps, started for this measurement only: `rounds`
    /// round trips of `size` bytes, each sample the round trip divided by `divisor`.
    fn raw_ping_pong(
        &self,
        size: usize,
        rounds: usize,
        wait: PingWait,
        divisor: u32,
    ) -> Result<Vec<Samples>> {
        let body = vec![0x5au8; size];
        let text = size.to_string();
        let flag = match wait {
            PingWait::Spin => "--spin",
            PingWait::Yield => "--yield",
            PingWait::Futex => anyhow::bail!("a futex ping-pong server is started with the rig"),
        };
        let pair = PingPong::create(size)?;
        let fd = pair.fd().try_clone_to_owned()?;
        let worker = self
            .spawn(|| self.on_shm.worker_with_fd(&["raw-ping-pong", "--size", &text, flag], fd))?;
        let mut answer = vec![0u8; size];
        let mut ping = || -> Result<Duration> {
            let start = Instant::now();
            pair.ping(&body, &mut answer, wait);
            Ok(start.elapsed() / divisor)
        };
        let samples = rotate(rounds, &mut [&mut ping]);
        pair.stop();
        drop(worker);
        samples
    }

    fn throughput(&self, place: Placement, burst: usize) -> Result<Vec<Record>> {
        let body = vec![0x5au8; 64];
        let mut sink = self.raw_sink.try_clone()?;
        let postbox = |connection: &Connection| -> Result<f64> {
            let start = Instant::now();
            for _ in 0..burst {
                connection.send(Message::new(body.clone()))?;
            }
            connection.call(Message::new(body.clone()))?;
            Ok(burst as f64 / start.elapsed().as_secs_f64())
        };
        let batched = |connection: &Connection| batched_rate(connection, &body, burst);
        let mut raw = || raw_rate(&mut sink, &body, burst);
        let mut feed = FeedBurst::start(self, place)?;
        let mut rates = [Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new()];
        for _ in 0..THROUGHPUT_REPEATS {
            rates[0].push(postbox(&self.shm_echo)?);
            rates[1].push(batched(&self.shm_batch_echo)?);
            rates[2].push(feed.rate(&body, burst)?);
            rates[3].push(postbox(&self.unix_echo)?);
            rates[4].push(raw()?);
        }
        feed.stop()?;
        let carriers = [
            Carrier::Shm,
            Carrier::ShmBatch,
            Carrier::ShmFeed,
            Carrier::Unix,
            Carrier::RawSocketpair,
        ];
        Ok(carriers
            .into_iter()
            .zip(rates)
            .map(|(carrier, mut rates)| {
                rates.sort_by(f64::total_cmp);
                Record {
                    placement: place,
                    measure: Measure::Throughput,
                    size: 64,
                    carrier,
                    samples: None,
                    rate: Some(rates[rates.len() / 2]),
                    flood: None,
                }
            })
            .collect())
    }

    /// The flood measure: an echo server of its own, the well-behaved client on this thread
    /// (64-byte calls one at a time), and for each flooded variant a flooding client process
    /// (`postbox worker flood`) on the same port, stopped through its stdin afterwards.
    fn flood(
        &self,
        place: Placement,
        rounds: usize,
        progress: &mut Progress,
    ) -> Result<Vec<Record>> {
        let name = format!("bench/flood-{}", self.tag);
        let _server = self.spawn(|| self.on_shm.worker(&["echo", &name, "--read-in-place"]))?;
        let good = self.shm_node.connect(&name)?.read_replies_in_place();
        let body = vec![0x5au8; FLOOD_SIZE];
        let size = FLOOD_SIZE.to_string();
        let threads = FLOOD_CALL_THREADS.to_string();
        let mut records = Vec::new();
        // The raw primitive in the same run: a socketpair ping-pong with an echo process.
        progress.step(&format!("{}, flood: raw socketpair", place.label()));
        let (_, raw_stream, _) =
            self.raw.iter().find(|(s, ..)| *s == FLOOD_SIZE).context("raw peer for 64 B")?;
        let mut raw_stream = raw_stream.try_clone()?;
        let mut buf = vec![0u8; FLOOD_SIZE];
        let samples = timed_samples(rounds, FLOOD_TIME, || {
            let start = Instant::now();
            raw_stream.write_all(&body)?;
            raw_stream.read_exact(&mut buf)?;
            Ok(start.elapsed())
        })?;
        records.push(Record {
            placement: place,
            measure: Measure::Flood,
            size: FLOOD_SIZE,
            carrier: Carrier::RawSocketpair,
            flood: Some(FloodCounts { calls: samples.len(), through: None }),
            samples: Some(Samples::new(samples)),
            rate: None,
        });
        for (carrier, mode) in FLOOD_VARIANTS {
            progress.step(&format!("{}, flood: {}", place.label(), carrier.label()));
            let mut flooder = None;
            if let Some(mode) = mode {
                let (theirs, ours) = UnixStream::pair()?;
                let mut args = vec!["flood", name.as_str(), "--size", &size, "--mode", mode];
                if mode == "calls" {
                    args.extend(["--threads", &threads]);
                }
                let worker = self.spawn_flooder(|| self.on_shm.worker_with_stdin(&args, theirs))?;
                flooder = Some((worker, ours));
            }
            let samples = timed_samples(rounds, FLOOD_TIME, || {
                let message = Message::new(body.clone());
                let start = Instant::now();
                good.call(message)?;
                Ok(start.elapsed())
            })?;
            let calls = samples.len();
            let through = match flooder {
                None => None,
                Some((mut worker, mut stop)) => {
                    stop.write_all(b"stop")?;
                    let line = worker.read_line()?;
                    worker.wait_for_exit()?;
                    Some(parse_flooded(&line)?)
                }
            };
            records.push(Record {
                placement: place,
                measure: Measure::Flood,
                size: FLOOD_SIZE,
                carrier,
                samples: Some(Samples::new(samples)),
                rate: None,
                flood: Some(FloodCounts { calls, through }),
            });
        }
        Ok(records)
    }

    /// Starts a flooding client: on the client's CPU (this thread's, inherited) or, with
    /// `POSTBOX_BENCH_FLOOD_CPU=server`, on the server's.
    fn spawn_flooder(&self, start: impl FnOnce() -> Result<Worker>) -> Result<Worker> {
        if flood_cpu() == FloodCpu::Server {
            self.spawn(start)
        } else {
            start()
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FloodCpu {
    Client,
    Server,
}

fn flood_cpu() -> FloodCpu {
    match std::env::var("POSTBOX_BENCH_FLOOD_CPU").as_deref() {
        Ok("server") => FloodCpu::Server,
        _ => FloodCpu::Client,
    }
}

/// Parses a flooder's last line, `flooded N in SECONDS`, into (N, N per second).
fn parse_flooded(line: &str) -> Result<(u64, f64)> {
    let parsed = line.strip_prefix("flooded ").and_then(|rest| rest.split_once(" in ")).and_then(
        |(count, seconds)| Some((count.parse::<u64>().ok()?, seconds.parse::<f64>().ok()?)),
    );
    let (count, seconds) = parsed.with_context(|| format!("flooder said {line:?}"))?;
    Ok((count, count as f64 / seconds.max(1e-9)))
}

/// Runs `run` a tenth of `rounds` times to warm up, then records it until it has `rounds`
/// samples or `limit` has passed (at least [`MIN_TIMED_SAMPLES`], whatever the time).
fn timed_samples(
    rounds: usize,
    limit: Duration,
    mut run: impl FnMut() -> Result<Duration>,
) -> Result<Vec<Duration>> {
    let start = Instant::now();
    for _ in 0..(rounds / 10).max(5) {
        run()?;
        if start.elapsed() >= limit / 10 {
            break;
        }
    }
    let start = Instant::now();
    let mut samples = Vec::with_capacity(rounds);
    while samples.len() < rounds && (samples.len() < MIN_TIMED_SAMPLES || start.elapsed() < limit) {
        samples.push(run()?);
    }
    Ok(samples)
}

impl Drop for Rig {
    fn drop(&mut self) {
        for (_, _, futex) in &self.raw {
            futex.stop();
        }
    }
}

/// Runs every measurement in turn, in blocks, so drift affects them alike; a tenth of the
/// rounds warm up first. Returns each one's samples.
pub(crate) fn rotate(
    rounds: usize,
    runs: &mut [&mut dyn FnMut() -> Result<Duration>],
) -> Result<Vec<Samples>> {
    for run in runs.iter_mut() {
        for _ in 0..(rounds / 10).max(5) {
            run()?;
        }
    }
    let mut samples: Vec<Vec<Duration>> = runs.iter().map(|_| Vec::with_capacity(rounds)).collect();
    let block = (rounds / 8).max(1);
    while samples[0].len() < rounds {
        for (run, out) in runs.iter_mut().zip(&mut samples) {
            for _ in 0..block.min(rounds - out.len()) {
                out.push(run()?);
            }
        }
    }
    Ok(samples.into_iter().map(Samples::new).collect())
}

/// A feed to a receiving worker (`postbox worker feed-recv`) for the throughput measure: each
/// burst is numbered on from the last, and ends when the worker says it received all of it.
struct FeedBurst {
    feed: postbox::FeedSender,
    worker: Worker,
    sent: u64,
}

impl FeedBurst {
    fn start(rig: &Rig, place: Placement) -> Result<Self> {
        let name = format!("bench/feed-sink-{}-{}", rig.tag, place.label().replace(' ', "-"));
        let every = THROUGHPUT_FEED_EVERY.to_string();
        let mut worker =
            rig.spawn(|| rig.on_shm.worker(&["feed-recv", &name, "--every", &every]))?;
        let feed = rig.shm_node.connect(&name)?.open_feed()?;
        let accepted = worker.read_line()?;
        anyhow::ensure!(accepted == "accepted", "feed-recv said {accepted:?}");
        Ok(Self { feed, worker, sent: 0 })
    }

    /// Messages per second of `burst` sends of `body` (numbered in its first 8 bytes, each
    /// built inside the timed region as the other carriers' are), waiting while the feed is
    /// full, until the receiver has them all.
    fn rate(&mut self, body: &[u8], burst: usize) -> Result<f64> {
        anyhow::ensure!(burst as u64 % THROUGHPUT_FEED_EVERY == 0, "bursts of whole reports");
        let mut message = body.to_vec();
        let start = Instant::now();
        for _ in 0..burst {
            message[..8].copy_from_slice(&self.sent.to_le_bytes());
            self.feed.send(&message)?;
            self.sent += 1;
        }
        let expected = format!("received {}", self.sent);
        loop {
            let line = self.worker.read_line()?;
            if line == expected {
                return Ok(burst as f64 / start.elapsed().as_secs_f64());
            }
            anyhow::ensure!(line.starts_with("received "), "feed-recv said {line:?}");
        }
    }

    /// Ends the feed; the worker reports its end and exits.
    fn stop(self) -> Result<()> {
        let Self { feed, mut worker, .. } = self;
        drop(feed);
        worker.wait_for_exit()
    }
}

/// Sends `bytes` on `feed`, trying again at once while it is full.
fn send_spinning(feed: &mut postbox::FeedSender, bytes: &[u8]) -> Result<()> {
    loop {
        match feed.try_send(bytes) {
            Ok(()) => return Ok(()),
            Err(postbox::FeedSendError::Full) => std::hint::spin_loop(),
            Err(e) => return Err(e.into()),
        }
    }
}

/// Receives the next message of `feed` into `out`, looking again at once while none waits.
fn recv_spinning(feed: &mut postbox::FeedReceiver, out: &mut Vec<u8>) -> Result<()> {
    loop {
        match feed.try_recv_into(out) {
            Ok(()) => return Ok(()),
            Err(postbox::FeedRecvError::Empty) => std::hint::spin_loop(),
            Err(e) => return Err(e.into()),
        }
    }
}

fn latency_records(
    placement: Placement,
    measure: Measure,
    size: usize,
    carriers: &[Carrier],
    samples: Vec<Samples>,
) -> Vec<Record> {
    carriers
        .iter()
        .zip(samples)
        .map(|(&carrier, samples)| Record {
            placement,
            measure,
            size,
            carrier,
            samples: Some(samples),
            rate: None,
            flood: None,
        })
        .collect()
}

/// Fewer rounds for large messages: each takes longer, and the percentiles need fewer.
fn rounds_for(rounds: usize, size: usize) -> usize {
    let scaled = match size {
        0..=4096 => rounds,
        4097..=65536 => rounds / 4,
        65537..=1048576 => rounds / 50,
        _ => rounds / 200,
    };
    scaled.max(20)
}

/// A progress bar on stderr (one line per step when stderr is not a terminal).
struct Progress {
    total: usize,
    done: usize,
    terminal: bool,
}

impl Progress {
    fn new(total: usize) -> Self {
        Self { total, done: 0, terminal: std::io::stderr().is_terminal() }
    }

    fn step(&mut self, what: &str) {
        self.done += 1;
        let width = 24;
        let filled = width * (self.done - 1) / self.total.max(1);
        let bar: String = (0..width).map(|i| if i < filled { '#' } else { '.' }).collect();
        let line = format!("[{bar}] {}/{} {what}", self.done, self.total);
        let mut err = std::io::stderr().lock();
        let _ =
            if self.terminal { write!(err, "\r\x1b[2K{line}") } else { writeln!(err, "{line}") };
        let _ = err.flush();
    }

    fn finish(&self) {
        if self.terminal {
            let _ = writeln!(std::io::stderr(), "\r\x1b[2K[{}] done", "#".repeat(24));
        }
    }
}

impl Measure {
    /// The measures named on the command line (`call`, `busy`, `throughput`, `flood`,
    /// `hosts`: both measures across hosts).
    fn parse_list(names: &[String]) -> Result<Vec<Self>> {
        let mut measures = Vec::new();
        for name in names {
            match name.trim() {
                "call" => measures.push(Self::CallRtt),
                "busy" => measures.push(Self::OneWayBusy),
                "throughput" => measures.push(Self::Throughput),
                "flood" => measures.push(Self::Flood),
                "hosts" => measures.extend([Self::HostsCallRtt, Self::HostsThroughput]),
                other => anyhow::bail!(
                    "unknown measure {other:?}: call, busy, throughput, flood or hosts"
                ),
            }
        }
        Ok(measures)
    }

    fn key(self) -> &'static str {
        match self {
            Self::CallRtt => "call_rtt",
            Self::OneWayBusy => "one_way_busy",
            Self::Throughput => "throughput",
            Self::Flood => "flood",
            Self::HostsCallRtt => "hosts_call_rtt",
            Self::HostsThroughput => "hosts_throughput",
        }
    }

    fn title(self) -> &'static str {
        match self {
            Self::CallRtt => "call round trip, blocking waits",
            Self::OneWayBusy => {
                "one-way latency, busy-waiting receivers (postbox: send to receipt; raw: half a round trip)"
            }
            Self::Throughput => "one-way throughput, 64 B messages",
            Self::Flood => {
                "call round trip of a well-behaved client beside a flooding one, postbox shm (ratio: p99 / p99 alone)"
            }
            Self::HostsCallRtt => {
                "call round trip across hosts: node on a -> daemon a -> TCP -> daemon b -> echo@b"
            }
            Self::HostsThroughput => {
                "one-way throughput across hosts, 64 B messages to sink@b in batches of 64"
            }
        }
    }

    /// The raw primitive the ratios compare against.
    fn baseline(self) -> Carrier {
        match self {
            Self::CallRtt | Self::Throughput => Carrier::RawSocketpair,
            Self::OneWayBusy => Carrier::RawSpin,
            Self::Flood => Carrier::Alone,
            Self::HostsCallRtt | Self::HostsThroughput => Carrier::RawTcp,
        }
    }

    /// The percentile the ratios of a latency measure compare: the p99 for the flood (its
    /// question is the tail), the p50 otherwise.
    fn compared_percentile(self) -> f64 {
        if self == Self::Flood {
            99.0
        } else {
            50.0
        }
    }
}

impl Carrier {
    fn key(self) -> &'static str {
        match self {
            Self::Shm => "postbox_shm",
            Self::ShmZeroCopy => "postbox_shm_zero_copy",
            Self::ShmFeed => "postbox_shm_feed",
            Self::ShmFeedPingPong => "postbox_shm_feed_ping_pong",
            Self::ShmBatch => "postbox_shm_batch",
            Self::Unix => "postbox_unix",
            Self::RawSocketpair => "raw_socketpair",
            Self::RawFutex => "raw_futex",
            Self::RawYield => "raw_yield",
            Self::RawSpin => "raw_spin",
            Self::Alone => "alone",
            Self::OneWayFlood => "one_way_flood",
            Self::TrySendFlood => "try_send_flood",
            Self::CallFlood => "call_flood",
            Self::Spinner => "spinner",
            Self::Gateway => "postbox_hosts",
            Self::GatewayBatch => "postbox_hosts_batch",
            Self::Direct => "postbox_hosts_direct",
            Self::RawTcp => "raw_tcp",
        }
    }

    fn label(self) -> &'static str {
        match self {
            Self::Shm => "postbox shm",
            Self::ShmZeroCopy => "postbox shm loan",
            Self::ShmFeed => "postbox shm feed",
            Self::ShmFeedPingPong => "feed ping-pong",
            Self::ShmBatch => "postbox shm batch",
            Self::Unix => "postbox unix",
            Self::RawSocketpair => "raw socketpair",
            Self::RawFutex => "raw futex",
            Self::RawYield => "raw yield",
            Self::RawSpin => "raw spin",
            Self::Alone => "alone",
            Self::OneWayFlood => "+ one-way flood",
            Self::TrySendFlood => "+ try_send flood",
            Self::CallFlood => "+ call flood",
            Self::Spinner => "+ spinner, no msg",
            Self::Gateway => "postbox @b",
            Self::GatewayBatch => "postbox @b batch",
            Self::Direct => "postbox @b direct",
            Self::RawTcp => "raw tcp",
        }
    }
}

fn size_label(size: usize) -> String {
    match size {
        s if s >= 1 << 20 && s % (1 << 20) == 0 => format!("{} MiB", s >> 20),
        s if s >= 1024 && s % 1024 == 0 => format!("{} KiB", s >> 10),
        s => format!("{s} B"),
    }
}

/// The record's comparison figure (p50, p99 for the flood, or the rate) and its ratio to the
/// baseline's.
fn ratio(records: &[Record], record: &Record) -> Option<f64> {
    let base = records.iter().find(|r| {
        r.placement == record.placement
            && r.measure == record.measure
            && r.size == record.size
            && r.carrier == record.measure.baseline()
    })?;
    match (&record.samples, &base.samples, record.rate, base.rate) {
        (Some(ours), Some(theirs), ..) => {
            let p = record.measure.compared_percentile();
            Some(ours.percentile(p).as_secs_f64() / theirs.percentile(p).as_secs_f64().max(1e-12))
        }
        (.., Some(ours), Some(theirs)) => Some(ours / theirs.max(1e-12)),
        _ => None,
    }
}

fn print_tables(records: &[Record]) -> Result<()> {
    let mut placements: Vec<Placement> = Vec::new();
    for r in records {
        if !placements.contains(&r.placement) {
            placements.push(r.placement);
        }
    }
    for place in placements {
        for measure in [
            Measure::CallRtt,
            Measure::OneWayBusy,
            Measure::Throughput,
            Measure::Flood,
            Measure::HostsCallRtt,
            Measure::HostsThroughput,
        ] {
            let rows: Vec<&Record> =
                records.iter().filter(|r| r.placement == place && r.measure == measure).collect();
            if rows.is_empty() {
                continue;
            }
            outln!("\n== {}, {}", measure.title(), place.label())?;
            let versus = format!("vs {}", measure.baseline().label());
            if measure == Measure::Flood {
                print_flood_rows(records, &rows)?;
                continue;
            }
            if matches!(measure, Measure::Throughput | Measure::HostsThroughput) {
                outln!("  {:<8} {:<17} {:>13} {:>18}", "size", "carrier", "msgs/s", versus)?;
            } else {
                outln!(
                    "  {:<8} {:<17} {:>11} {:>11} {:>11} {:>18}",
                    "size",
                    "carrier",
                    "p50",
                    "p99",
                    "p99.9",
                    versus
                )?;
            }
            for r in rows {
                let ratio = ratio(records, r).map_or("-".into(), |x| format!("{x:.2}x"));
                match (&r.samples, r.rate) {
                    (Some(s), _) => outln!(
                        "  {:<8} {:<17} {:>11} {:>11} {:>11} {:>18}",
                        size_label(r.size),
                        r.carrier.label(),
                        micros(s.percentile(50.0)),
                        micros(s.percentile(99.0)),
                        micros(s.percentile(99.9)),
                        ratio
                    )?,
                    (None, Some(rate)) => outln!(
                        "  {:<8} {:<17} {:>13} {:>18}",
                        size_label(r.size),
                        r.carrier.label(),
                        format!("{:.2} M", rate / 1e6),
                        ratio
                    )?,
                    _ => {}
                }
            }
        }
    }
    let targets = targets(records);
    if !targets.is_empty() {
        outln!("\n== targets")?;
    }
    for target in targets {
        outln!(
            "  #{} {:<62} {:>9} (goal {}) {}",
            target.issue,
            target.what,
            target.reached,
            target.goal,
            if target.met { "met" } else { "NOT met" }
        )?;
    }
    Ok(())
}

/// The flood table: the well-behaved client's percentiles, the p99 ratio to its p99 alone and
/// to the raw socketpair's measured in the same run, how many calls it made, and what got
/// through of the flood.
fn print_flood_rows(records: &[Record], rows: &[&Record]) -> Result<()> {
    outln!(
        "  {:<8} {:<17} {:>11} {:>11} {:>11} {:>10} {:>10} {:>8} {:>22}",
        "size",
        "client",
        "p50",
        "p99",
        "p99.9",
        "p99 ratio",
        "vs raw",
        "calls",
        "flood through (msgs/s)"
    )?;
    for r in rows {
        let (Some(s), Some(counts)) = (&r.samples, r.flood) else { continue };
        let ratio = ratio(records, r).map_or("-".into(), |x| format!("{x:.2}x"));
        let raw = records
            .iter()
            .find(|b| {
                b.placement == r.placement
                    && b.measure == Measure::Flood
                    && b.carrier == Carrier::RawSocketpair
            })
            .and_then(|b| b.samples.as_ref())
            .map_or("-".into(), |b| {
                let p99 = |x: &Samples| x.percentile(99.0).as_secs_f64();
                format!("{:.2}x", p99(s) / p99(b).max(1e-12))
            });
        let through =
            counts.through.map_or("-".into(), |(n, rate)| format!("{n} ({:.2} M/s)", rate / 1e6));
        outln!(
            "  {:<8} {:<17} {:>11} {:>11} {:>11} {:>10} {:>10} {:>8} {:>22}",
            size_label(r.size),
            r.carrier.label(),
            micros(s.percentile(50.0)),
            micros(s.percentile(99.0)),
            micros(s.percentile(99.9)),
            ratio,
            raw,
            counts.calls,
            through
        )?;
    }
    let how = match flood_cpu() {
        FloodCpu::Client => "the client's",
        FloodCpu::Server => "the server's",
    };
    outln!(
        "  (flooder on {how} CPU; call flood from {FLOOD_CALL_THREADS} threads on one connection)"
    )?;
    Ok(())
}

/// One of the issues' targets and where this run got.
struct Target {
    /// The tracker issue that set it.
    issue: u32,
    what: String,
    reached: String,
    goal: String,
    met: bool,
}

impl Target {
    /// A ratio `x` whose goal is at most `limit`.
    fn at_most(issue: u32, what: String, x: f64, limit: f64) -> Self {
        let goal = format!("<= {limit}x");
        Self { issue, what, reached: format!("{x:.2}x"), goal, met: x <= limit }
    }

    /// A rate in messages per second whose goal is at least `millions` M/s.
    fn at_least_rate(issue: u32, what: String, rate: f64, millions: f64) -> Self {
        let goal = format!(">= {millions} M/s");
        let reached = format!("{:.2} M/s", rate / 1e6);
        Self { issue, what, reached, goal, met: rate >= millions * 1e6 }
    }
}

fn targets(records: &[Record]) -> Vec<Target> {
    let find = |place: Placement, measure: Measure, size: usize, carrier: Carrier| {
        records.iter().find(|r| {
            r.placement == place && r.measure == measure && r.size == size && r.carrier == carrier
        })
    };
    let p50 = |r: &Record| r.samples.as_ref().map(|s| s.percentile(50.0).as_secs_f64());
    let mut out = Vec::new();
    for place in [Placement::SameCore, Placement::CrossCore] {
        let label = place.label();
        for (carrier, how) in
            [(Carrier::ShmFeed, "shm feed"), (Carrier::ShmFeedPingPong, "feed ping-pong")]
        {
            if let Some(x) =
                find(place, Measure::OneWayBusy, 64, carrier).and_then(|r| ratio(records, r))
            {
                out.push(Target::at_most(
                    4,
                    format!("{label}: one-way 64 B busy-wait, {how} / raw spin"),
                    x,
                    1.5,
                ));
            }
        }
        if let Some(r) = find(place, Measure::OneWayBusy, 64, Carrier::Shm) {
            if let Some(x) = ratio(records, r) {
                out.push(Target::at_most(
                    4,
                    format!("{label}: one-way 64 B busy-wait, shm / raw spin"),
                    x,
                    1.5,
                ));
            }
            let big = find(place, Measure::OneWayBusy, 4 << 20, Carrier::ShmZeroCopy);
            if let (Some(small), Some(big)) = (p50(r), big.and_then(p50)) {
                let x = big / small.max(1e-12);
                out.push(Target::at_most(
                    4,
                    format!("{label}: one-way latency, 4 MiB loaned / 64 B shm"),
                    x,
                    2.0,
                ));
            }
        }
        if let Some(r) = find(place, Measure::CallRtt, 64, Carrier::Shm) {
            if let Some(x) = ratio(records, r) {
                out.push(Target::at_most(
                    4,
                    format!("{label}: call RTT 64 B, shm / raw socketpair"),
                    x,
                    0.6,
                ));
            }
        }
        let ways = [
            (Carrier::Shm, "one by one"),
            (Carrier::ShmBatch, "batches"),
            (Carrier::ShmFeed, "feed"),
        ];
        for (carrier, how) in ways {
            if let Some(rate) = find(place, Measure::Throughput, 64, carrier).and_then(|r| r.rate) {
                out.push(Target::at_least_rate(
                    4,
                    format!("{label}: one-way 64 B throughput, shm, {how}"),
                    rate,
                    10.0,
                ));
            }
        }
        if let Some(r) = find(place, Measure::HostsCallRtt, 64, Carrier::Gateway) {
            if let Some(x) = ratio(records, r) {
                out.push(Target::at_most(
                    7,
                    format!("{label}: call RTT 64 B across hosts, postbox / raw tcp"),
                    x,
                    1.3,
                ));
            }
        }
        if let Some(r) = find(place, Measure::HostsCallRtt, 64, Carrier::Direct) {
            if let Some(x) = ratio(records, r) {
                out.push(Target::at_most(
                    7,
                    format!("{label}: call RTT 64 B across hosts, direct link / raw tcp"),
                    x,
                    1.3,
                ));
            }
        }
        let batched = find(place, Measure::HostsThroughput, 64, Carrier::GatewayBatch);
        if let Some(rate) = batched.and_then(|r| r.rate) {
            out.push(Target::at_least_rate(
                7,
                format!("{label}: one-way 64 B throughput across hosts, batches"),
                rate,
                1.0,
            ));
        }
    }
    out
}

fn print_json(records: &[Record]) -> Result<()> {
    let mut out = String::from("{\"results\":[");
    for (i, r) in records.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        let placement = match r.placement {
            Placement::SameCore => "same-core",
            Placement::CrossCore => "cross-core",
        };
        out.push_str(&format!(
            "{{\"placement\":\"{placement}\",\"measure\":\"{}\",\"size\":{},\"carrier\":\"{}\"",
            r.measure.key(),
            r.size,
            r.carrier.key()
        ));
        if let Some(s) = &r.samples {
            for (key, p) in [("p50_ns", 50.0), ("p99_ns", 99.0), ("p999_ns", 99.9)] {
                out.push_str(&format!(",\"{key}\":{}", s.percentile(p).as_nanos()));
            }
        }
        if let Some(rate) = r.rate {
            out.push_str(&format!(",\"msgs_per_s\":{rate:.0}"));
        }
        if let Some(counts) = r.flood {
            out.push_str(&format!(",\"calls\":{}", counts.calls));
            if let Some((n, rate)) = counts.through {
                out.push_str(&format!(",\"flood_through\":{n},\"flood_per_s\":{rate:.0}"));
            }
        }
        if let Some(x) = ratio(records, r) {
            out.push_str(&format!(",\"vs\":\"{}\",\"ratio\":{x:.4}", r.measure.baseline().key()));
        }
        out.push('}');
    }
    out.push_str("],\"targets\":[");
    for (i, t) in targets(records).iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&format!(
            "{{\"issue\":{},\"what\":\"{}\",\"reached\":\"{}\",\"goal\":\"{}\",\"met\":{}}}",
            t.issue, t.what, t.reached, t.goal, t.met
        ));
    }
    out.push_str("]}");
    outln!("{out}")?;
    Ok(())
}

/// Messages per second of `burst` copies of `body` sent on `connection` in batches of
/// [`THROUGHPUT_BATCH`], then one call (answered once the receiver took everything before it).
pub(crate) fn batched_rate(connection: &Connection, body: &[u8], burst: usize) -> Result<f64> {
    let mut batch = Vec::with_capacity(THROUGHPUT_BATCH);
    let start = Instant::now();
    for sent in (0..burst).step_by(THROUGHPUT_BATCH) {
        let n = THROUGHPUT_BATCH.min(burst - sent);
        batch.extend((0..n).map(|_| Message::new(body.to_vec())));
        connection.send_batch(&mut batch)?;
    }
    connection.call(Message::new(body.to_vec()))?;
    Ok(burst as f64 / start.elapsed().as_secs_f64())
}

/// Messages per second of `burst` raw writes of `body` to a sink, the last one marked (its
/// first byte 1) and answered with one byte once all are read.
pub(crate) fn raw_rate(sink: &mut (impl Read + Write), body: &[u8], burst: usize) -> Result<f64> {
    let mut ack = [0u8; 1];
    let start = Instant::now();
    for _ in 0..burst {
        sink.write_all(body)?;
    }
    let mut last = body.to_vec();
    last[0] = 1;
    sink.write_all(&last)?;
    sink.read_exact(&mut ack)?;
    Ok(burst as f64 / start.elapsed().as_secs_f64())
}

/// Messages per [`Connection::send_batch`] (and most per receive) in the batched throughput.
pub(crate) const THROUGHPUT_BATCH: usize = 64;
/// How often the feed's receiver reports in the throughput measure (bursts are multiples).
const THROUGHPUT_FEED_EVERY: u64 = 1000;
/// Bursts per throughput figure; the median is reported.
pub(crate) const THROUGHPUT_REPEATS: usize = 5;
/// The flood measure's variants, in order: alone, then beside each kind of flooder (its
/// `postbox worker flood --mode`).
const FLOOD_VARIANTS: [(Carrier, Option<&str>); 5] = [
    (Carrier::Alone, None),
    (Carrier::OneWayFlood, Some("batch")),
    (Carrier::TrySendFlood, Some("try-send")),
    (Carrier::CallFlood, Some("calls")),
    (Carrier::Spinner, Some("spin")),
];
/// Message size of the flood measure (the well-behaved client's calls and the flood).
const FLOOD_SIZE: usize = 64;
/// Threads of the call flooder, each with one call in flight at a time.
const FLOOD_CALL_THREADS: usize = 64;
/// Longest a flood variant records for (after a warm-up of at most a tenth of it), unless it
/// has fewer than [`MIN_TIMED_SAMPLES`] by then.
const FLOOD_TIME: Duration = Duration::from_secs(2);
/// Samples a flood variant records however long they take.
const MIN_TIMED_SAMPLES: usize = 100;
