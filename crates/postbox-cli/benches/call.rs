//! Call round trip and one-way throughput of postbox over shared-memory links (the default),
//! beside a raw Unix socketpair measured in the same run.
//!
//! Scenarios (every server is a separate `postbox worker` process):
//! - `call_rtt/{postbox,raw_socketpair}/{64,4096,1048576}`: one request, one reply of the
//!   same size. postbox: `Connection::call` to an echo port; raw: write N bytes on a socketpair,
//!   the child writes them back.
//! - `call_rtt_callers/postbox/{1,2,4}`: 64 B calls to the same echo port over 1, 2 or 4
//!   links (one node each), taking turns: what a server with several callers pays per call
//!   when their calls do not arrive at once.
//! - `call_rtt_serving_threads/postbox/{1,2,4}`: 64 B calls from one caller to an echo port
//!   served by 1, 2 or 4 threads of one worker process.
//! - `oneway/{postbox,raw_socketpair}/{64,4096,1048576}`: a batch of one-way messages, then
//!   one synchronising round trip (postbox: a call, which the server answers only after the
//!   batch because a link is FIFO; raw: the last message asks for a one-byte ack).
//!
//! Both sides of every comparison run with the same CPU placement: by default client and
//! servers share one core; `POSTBOX_BENCH_PLACEMENT=cross-core` puts them on two cores.
//! Building a message (copying the body into it) is outside the timed region, as the raw
//! baseline reuses its buffer.
//!
//! Run with `cargo bench -p postbox-cli --bench call`. Methodology: `docs/benchmarks.md`.

// criterion_group! generates an undocumented public function.
#![allow(missing_docs)]

use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion, Throughput};
use postbox::{Broker, Message};

#[path = "../src/placement.rs"]
#[allow(dead_code)]
mod placement;

const SIZES: [usize; 3] = [64, 4096, 1 << 20];

/// Threads serving the echo ports of `call_rtt_serving_threads`.
const POOLS: [usize; 3] = [1, 2, 4];

fn benches(c: &mut Criterion) {
    let placement = placement::Placement::from_bench_env();
    let broker = Broker::embedded().expect("embedded broker");
    let spawned = placement
        .apply(|| {
            let server = spawn(&broker, &["echo", "bench/echo"], Stdio::null());
            let pools: Vec<_> = POOLS
                .iter()
                .map(|threads| {
                    let name = format!("bench/pool-{threads}");
                    let threads = threads.to_string();
                    spawn(&broker, &["echo", &name, "--threads", &threads], Stdio::null())
                })
                .collect();
            let raw: Vec<_> = SIZES
                .iter()
                .flat_map(|&size| {
                    [raw_peer(&broker, "raw-echo", size), raw_peer(&broker, "raw-sink", size)]
                })
                .collect();
            (server, pools, raw)
        })
        .expect("pin to the chosen CPUs");
    let (_server, _pools, mut raw_peers) = spawned;
    let node = broker.node().expect("node");
    let connection = node.connect("bench/echo").expect("connect");

    let mut rtt = c.benchmark_group("call_rtt");
    for size in SIZES {
        configure(&mut rtt, size);
        let body = vec![0xa5u8; size];
        rtt.bench_with_input(BenchmarkId::new("postbox", size), &body, |b, body| {
            b.iter_batched(
                || Message::new(body.clone()),
                |request| connection.call(request).unwrap(),
                BatchSize::PerIteration,
            );
        });
        let (raw, _) = &mut raw_peers[peer_index(size, "raw-echo")];
        let mut echo = vec![0u8; size];
        rtt.bench_with_input(BenchmarkId::new("raw_socketpair", size), &body, |b, body| {
            b.iter_custom(|iters| {
                timed(iters, || {
                    raw.write_all(body).unwrap();
                    raw.read_exact(&mut echo).unwrap();
                })
            });
        });
    }
    rtt.finish();

    // Callers in turn: 64 B calls to the echo port over 1, 2 or 4 links (one node each), one
    // call at a time, each on the next link; the server's port has that many links, and at
    // each receive one of them holds input.
    let mut callers = c.benchmark_group("call_rtt_callers");
    configure(&mut callers, 64);
    let nodes: Vec<_> = (0..4).map(|_| broker.node().expect("node")).collect();
    let links: Vec<_> = nodes.iter().map(|n| n.connect("bench/echo").expect("connect")).collect();
    for count in [1, 2, 4] {
        let links = &links[..count];
        let mut next = 0;
        callers.bench_function(BenchmarkId::new("postbox", count), |b| {
            b.iter_batched(
                || Message::new(vec![0xa5u8; 64]),
                |request| {
                    next = (next + 1) % links.len();
                    links[next].call(request).unwrap()
                },
                BatchSize::PerIteration,
            );
        });
    }
    callers.finish();
    drop((links, nodes));

    // Serving threads: 64 B calls from one caller to an echo port served by 1, 2 or 4
    // threads of one process (`postbox worker echo --threads`).
    let mut pool = c.benchmark_group("call_rtt_serving_threads");
    configure(&mut pool, 64);
    for threads in POOLS {
        let link = node.connect(&format!("bench/pool-{threads}")).expect("connect");
        pool.bench_function(BenchmarkId::new("postbox", threads), |b| {
            b.iter_batched(
                || Message::new(vec![0xa5u8; 64]),
                |request| link.call(request).unwrap(),
                BatchSize::PerIteration,
            );
        });
    }
    pool.finish();

    let mut oneway = c.benchmark_group("oneway");
    for size in SIZES {
        configure(&mut oneway, size);
        let body = vec![0u8; size];
        oneway.bench_with_input(BenchmarkId::new("postbox", size), &body, |b, body| {
            b.iter_custom(|iters| {
                let mut elapsed = Duration::ZERO;
                let mut left = iters;
                while left > 0 {
                    let chunk = left.min((64 << 20) / body.len().max(1) as u64).max(1);
                    let batch: Vec<Message> =
                        (0..chunk).map(|_| Message::new(body.clone())).collect();
                    let start = Instant::now();
                    for message in batch {
                        connection.send(message).unwrap();
                    }
                    elapsed += start.elapsed();
                    left -= chunk;
                }
                let start = Instant::now();
                connection.call(Message::new(Vec::new())).unwrap();
                elapsed + start.elapsed()
            });
        });
        let (raw, _) = &mut raw_peers[peer_index(size, "raw-sink")];
        oneway.bench_with_input(BenchmarkId::new("raw_socketpair", size), &body, |b, body| {
            let mut last = body.clone();
            last[0] = 1;
            let mut ack = [0u8; 1];
            b.iter_custom(|iters| {
                let start = Instant::now();
                for _ in 1..iters {
                    raw.write_all(body).unwrap();
                }
                raw.write_all(&last).unwrap();
                raw.read_exact(&mut ack).unwrap();
                start.elapsed()
            });
        });
    }
    oneway.finish();
}

fn configure(
    group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    size: usize,
) {
    group.throughput(Throughput::Bytes(size as u64));
    let large = size >= 1 << 20;
    group.sample_size(if large { 20 } else { 50 });
    group.measurement_time(Duration::from_secs(if large { 4 } else { 3 }));
    group.warm_up_time(Duration::from_secs(1));
}

/// Position of a raw peer in the list built at start (two per size: echo, then sink).
fn peer_index(size: usize, role: &str) -> usize {
    let position = SIZES.iter().position(|&s| s == size).expect("a benchmarked size");
    position * 2 + usize::from(role == "raw-sink")
}

fn timed(iters: u64, mut f: impl FnMut()) -> Duration {
    let start = Instant::now();
    for _ in 0..iters {
        f();
    }
    start.elapsed()
}

/// A raw baseline child on one end of a fresh socketpair (its stdin).
fn raw_peer(broker: &Broker, role: &str, size: usize) -> (UnixStream, ChildGuard) {
    let (ours, theirs) = UnixStream::pair().expect("socketpair");
    let size = size.to_string();
    let child = spawn(broker, &[role, "--size", &size], Stdio::from(OwnedFd::from(theirs)));
    (ours, child)
}

struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn(broker: &Broker, args: &[&str], stdin: Stdio) -> ChildGuard {
    let mut child = Command::new(env!("CARGO_BIN_EXE_postbox"))
        .arg("worker")
        .args(args)
        .env("POSTBOX_SOCKET", broker.socket_path())
        .stdin(stdin)
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn worker");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout")).read_line(&mut line).expect("ready line");
    assert!(line.starts_with("ready"), "worker {args:?} did not start: {line:?}");
    ChildGuard(child)
}

criterion_group!(call_benches, benches);
criterion_main!(call_benches);
