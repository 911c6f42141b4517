//! Typed call round trip: what `#[postbox::service]` adds to an untyped call of the same size,
//! and how postbox's typed calls compare with tarpc over a Unix socket.
//!
//! Scenarios (every server is a separate process, pinned like the others):
//! - `typed_vs_untyped/{postbox_untyped,postbox_typed}/{64,4096}`: one request, one reply of
//!   the same size, over a shared-memory link of the same embedded broker. Untyped:
//!   `Connection::call` to `postbox worker echo`, which answers with the request's body.
//!   Typed: `EchoClient::echo(body)` to `postbox worker typed-echo` (the `Echo` service of
//!   `src/services.rs`, defined again below with the same shape), which returns its argument.
//!   The typed figure adds encoding and decoding (postcard), the request header, the server's
//!   checks and reply cache, and the reply status.
//! - `vs_tarpc/{postbox_typed,tarpc_unix}/64`: the same typed echo beside tarpc's: a
//!   `#[tarpc::service]` with `echo(body: Vec<u8>) -> Vec<u8>`, bincode over a Unix domain
//!   socket (tarpc's serde transport), its server this bench binary again, run as a child with
//!   `POSTBOX_BENCH_TARPC_SOCKET` set. Both tarpc sides run a single-threaded tokio runtime
//!   (the server answers each request inline), which spares tarpc any wake-up across threads;
//!   `POSTBOX_BENCH_TARPC_RUNTIME=multi-thread` gives both sides tokio's multi-threaded
//!   runtime instead, as `#[tokio::main]` would.
//!
//! Each call's argument (the `Message`, or the `Vec<u8>` to move into the call) is built
//! outside the timed region, and each reply is dropped outside it. Client and servers run with
//! the same CPU placement: by default one core for all; `POSTBOX_BENCH_PLACEMENT=cross-core`
//! puts the servers on a second core. At the end the bench prints the median of each
//! benchmark's samples (per-call means, as criterion's median) and the ratios the goals speak
//! of (issue 5: typed / untyped ≤ 1.10 at 64 B; tarpc / postbox ≥ 10).
//!
//! Run with `cargo bench -p postbox-cli --bench rpc`. Figures: `docs/benchmarks.md`.
//!
//! criterion's ratios move with the machine's mood (a small VM switches between a fast and a
//! slow mode during a run). `POSTBOX_BENCH_ALTERNATE=<rounds>x<calls>` (e.g. `10x30000`)
//! runs the alternating probe instead: in one process, rounds of `calls` 64 B echo calls of
//! each of three kinds (the order rotated every round), printing each round's medians (of
//! batches of 100 calls) and their ratios, then the medians over the rounds. The kinds:
//! untyped; typed; and `server-only`, the typed server's half of a typed call alone: each
//! request encoded as the client stub encodes it, but before the call is timed, and sent with
//! `Connection::call`, its reply not decoded. What `server-only` adds to the untyped call is
//! the typed server's work and the typed frames' sizes; what `typed` adds to `server-only` is
//! the client stub's work. `POSTBOX_BENCH_ALTERNATE_ONLY=typed` (or `untyped`, or
//! `server-only`) makes only those calls, for profiles. After each round the probe also times
//! a fixed piece of typed work (1000 request headers and 64 B arguments encoded and decoded,
//! the best of 5 tries) on the client's CPU and on the servers': the machine's speed for plain
//! work beside each round's ratios.
//! `POSTBOX_BENCH_WORKER=<path>` serves with another build's `postbox` binary (to compare
//! builds: run each build's bench binary with its own worker).

// The generated service items and criterion's plumbing carry no docs.
#![allow(missing_docs)]

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::hint::black_box;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use criterion::{BenchmarkGroup, BenchmarkId, Criterion, Throughput};
use postbox::{Broker, Message};

#[path = "../src/placement.rs"]
#[allow(dead_code)]
mod placement;

/// Set (to the socket's path) in the child that serves tarpc's echo.
const TARPC_SOCKET_ENV: &str = "POSTBOX_BENCH_TARPC_SOCKET";

/// `<rounds>x<calls>`: run the alternating probe instead of criterion.
const ALTERNATE_ENV: &str = "POSTBOX_BENCH_ALTERNATE";

/// The `postbox` binary to run the workers with, when not this build's.
const WORKER_ENV: &str = "POSTBOX_BENCH_WORKER";

fn main() {
    // The child serving tarpc: this binary again, before criterion sees any argument.
    if let Some(socket) = std::env::var_os(TARPC_SOCKET_ENV) {
        if let Err(e) = tarpc_echo::serve(Path::new(&socket)) {
            eprintln!("tarpc echo server: {e}");
            std::process::exit(1);
        }
        return;
    }
    if let Ok(shape) = std::env::var(ALTERNATE_ENV) {
        let Some((rounds, calls)) = alternate::parse(&shape) else {
            eprintln!("{ALTERNATE_ENV}={shape:?}: expected <rounds>x<calls>, both at least 1, e.g. 10x30000");
            std::process::exit(2);
        };
        alternate::run(rounds, calls);
        return;
    }
    let mut criterion = Criterion::default().configure_from_args();
    benches(&mut criterion);
    criterion.final_summary();
}

fn benches(c: &mut Criterion) {
    let placement = placement::Placement::from_bench_env();
    let tarpc_runtime = std::env::var(tarpc_echo::RUNTIME_ENV);
    eprintln!(
        "tarpc runtime: {} ({}=current-thread|multi-thread)",
        tarpc_runtime.as_deref().unwrap_or("current-thread"),
        tarpc_echo::RUNTIME_ENV,
    );
    let broker = Broker::embedded().expect("embedded broker");
    let socket_dir = tempfile::tempdir().expect("a directory for tarpc's socket");
    let socket = socket_dir.path().join("tarpc-echo.sock");
    let _servers = placement
        .apply(|| {
            [
                spawn_worker(&broker, &["echo", "bench/echo"]),
                spawn_worker(&broker, &["typed-echo", "bench/typed-echo"]),
                spawn_tarpc_server(&socket),
            ]
        })
        .expect("pin to the chosen CPUs");
    let node = broker.node().expect("node");
    let untyped = node.connect("bench/echo").expect("connect to the echo port");
    let typed = typed::EchoClient::bind(&node, "bench/typed-echo").expect("bind the typed echo");
    let tarpc = tarpc_echo::Caller::connect(&socket).expect("connect to tarpc's echo");
    let samples = Samples::default();

    let mut group = c.benchmark_group("typed_vs_untyped");
    for size in SIZES {
        configure(&mut group, size);
        let body = vec![0xa5u8; size];
        let key = Samples::key("typed_vs_untyped", "postbox_untyped", size);
        group.bench_function(BenchmarkId::new("postbox_untyped", size), |b| {
            b.iter_custom(|iters| {
                timed_calls(
                    iters,
                    &samples,
                    &key,
                    || Message::new(body.clone()),
                    |request| untyped.call(request).expect("untyped echo"),
                )
            });
        });
        let key = Samples::key("typed_vs_untyped", "postbox_typed", size);
        group.bench_function(BenchmarkId::new("postbox_typed", size), |b| {
            b.iter_custom(|iters| {
                timed_calls(
                    iters,
                    &samples,
                    &key,
                    || serde_bytes::ByteBuf::from(body.clone()),
                    |body| typed.echo(body).expect("typed echo"),
                )
            });
        });
    }
    group.finish();

    let mut group = c.benchmark_group("vs_tarpc");
    configure(&mut group, TARPC_SIZE);
    let body = vec![0xa5u8; TARPC_SIZE];
    let key = Samples::key("vs_tarpc", "postbox_typed", TARPC_SIZE);
    group.bench_function(BenchmarkId::new("postbox_typed", TARPC_SIZE), |b| {
        b.iter_custom(|iters| {
            timed_calls(
                iters,
                &samples,
                &key,
                || serde_bytes::ByteBuf::from(body.clone()),
                |body| typed.echo(body).expect("typed echo"),
            )
        });
    });
    let key = Samples::key("vs_tarpc", "tarpc_unix", TARPC_SIZE);
    group.bench_function(BenchmarkId::new("tarpc_unix", TARPC_SIZE), |b| {
        b.iter_custom(|iters| {
            timed_calls(iters, &samples, &key, || body.clone(), |body| tarpc.echo(body))
        });
    });
    group.finish();

    report(&samples, placement);
}

/// The alternating probe (`POSTBOX_BENCH_ALTERNATE`): untyped and typed 64 B calls in turns,
/// so both see the same machine.
mod alternate {
    use std::hint::black_box;
    use std::time::Instant;

    use postbox::{Broker, Message};
    use postbox_rpc::{ReplyStatus, RequestFields, RequestHeader, RequestKind, RPC_MSG_TYPE};

    use super::{placement, spawn_worker, typed};

    /// `<rounds>x<calls>`.
    pub(crate) fn parse(shape: &str) -> Option<(usize, usize)> {
        let (rounds, calls) = shape.split_once('x')?;
        let (rounds, calls): (usize, usize) = (rounds.parse().ok()?, calls.parse().ok()?);
        // A round of no calls has no median.
        (rounds > 0 && calls > 0).then_some((rounds, calls))
    }

    /// Runs `rounds` rounds of `calls` 64 B echo calls of each [`Kind`], and prints the
    /// per-round medians and ratios.
    pub(crate) fn run(rounds: usize, calls: usize) {
        let placement = placement::Placement::from_bench_env();
        // Read before this thread is pinned to one of them.
        let (client_cpu, server_cpu) = placement.cpus().expect("CPUs for the placement");
        let broker = Broker::embedded().expect("embedded broker");
        let _servers = placement
            .apply(|| {
                [
                    spawn_worker(&broker, &["echo", "bench/echo"]),
                    spawn_worker(&broker, &["typed-echo", "bench/typed-echo"]),
                ]
            })
            .expect("pin to the chosen CPUs");
        let node = broker.node().expect("node");
        let untyped = node.connect("bench/echo").expect("connect to the echo port");
        let typed =
            typed::EchoClient::bind(&node, "bench/typed-echo").expect("bind the typed echo");
        // A link of its own to the typed server, as the stub's is.
        let server_only = node.connect("bench/typed-echo").expect("connect to the typed echo");
        let body = vec![0xa5u8; SIZE];
        let mut requests = TypedRequests::new(&body);
        // The server must answer these requests as it answers the stub's (not, say, with a
        // type mismatch), or `server-only` would time an error path.
        let reply = server_only.call(requests.next()).expect("typed request");
        assert_eq!(
            ReplyStatus::decode(reply.body()),
            Ok((ReplyStatus::Ok, requests.arguments.as_slice())),
            "the typed echo did not answer a request built as the stub builds it"
        );
        let mut round = |kind: Kind| match kind {
            Kind::Untyped => {
                batches(calls, || Message::new(body.clone()), |m| untyped.call(m).expect("untyped"))
            }
            Kind::ServerOnly => {
                batches(calls, || requests.next(), |m| server_only.call(m).expect("typed request"))
            }
            Kind::Typed => batches(
                calls,
                || serde_bytes::ByteBuf::from(body.clone()),
                |b| typed.echo(b).expect("typed echo"),
            ),
        };
        let only = match std::env::var(ONLY_ENV).as_deref() {
            Ok("untyped") => Some(Kind::Untyped),
            Ok("server-only") => Some(Kind::ServerOnly),
            Ok("typed") => Some(Kind::Typed),
            _ => None,
        };
        // A round of each first, not counted: caches, branch predictors, the links' spinners.
        for kind in Kind::ALL {
            round(kind);
        }
        eprintln!(
            "alternating probe, {SIZE} B, {} ({rounds} rounds of {calls} calls)",
            placement.label()
        );
        eprintln!(
            "round  untyped ns  server-only ns  typed ns  server-only / untyped  typed / untyped  \
             client cpu µs  server cpu µs"
        );
        let mut ns: [Vec<f64>; 3] = Default::default();
        let mut ratios: [Vec<f64>; 2] = Default::default();
        let mut cpus: [Vec<f64>; 2] = Default::default();
        for n in 0..rounds {
            let mut medians = [f64::NAN; 3];
            // Each kind goes first, second and last in turn.
            for i in 0..Kind::ALL.len() {
                let kind = Kind::ALL[(n + i) % Kind::ALL.len()];
                if only.is_none_or(|only| only == kind) {
                    medians[kind as usize] = round(kind);
                }
            }
            let [u, s, t] = medians;
            let cpu = [client_cpu, server_cpu].map(reference_work_us);
            eprintln!(
                "{n:>5}  {u:>10.0}  {s:>14.0}  {t:>8.0}  {:>21.3}  {:>15.3}  {:>13.1}  {:>13.1}",
                s / u,
                t / u,
                cpu[0],
                cpu[1]
            );
            for (values, us) in cpus.iter_mut().zip(cpu) {
                values.push(us);
            }
            for (values, median) in ns.iter_mut().zip(medians) {
                values.push(median);
            }
            ratios[0].push(s / u);
            ratios[1].push(t / u);
        }
        let summary = |values: &mut Vec<f64>| {
            values.sort_by(f64::total_cmp);
            (median(values), values[0], values[values.len() - 1])
        };
        let [u, s, t] = ns.each_mut().map(summary);
        let [rs, rt] = ratios.each_mut().map(summary);
        let [cc, cs] = cpus.each_mut().map(summary);
        eprintln!(
            "median of rounds: untyped {:.0} ns ({:.0}–{:.0}), server-only {:.0} ns ({:.0}–{:.0}), \
             typed {:.0} ns ({:.0}–{:.0})",
            u.0, u.1, u.2, s.0, s.1, s.2, t.0, t.1, t.2
        );
        eprintln!(
            "server-only / untyped {:.3} ({:.3}–{:.3}); typed / untyped {:.3} ({:.3}–{:.3}, \
             goal ≤ 1.10)",
            rs.0, rs.1, rs.2, rt.0, rt.1, rt.2
        );
        eprintln!(
            "reference work: client cpu {:.1} µs ({:.1}–{:.1}), server cpu {:.1} µs ({:.1}–{:.1})",
            cc.0, cc.1, cc.2, cs.0, cs.1, cs.2
        );
    }

    /// Microseconds that [`REFERENCE_CALLS`] typed requests' encoding and decoding take on
    /// `cpu` (the best of 5 tries, on a thread pinned there): the machine's speed for typed
    /// work at the time, beside the round's figures.
    fn reference_work_us(cpu: usize) -> f64 {
        let work = || {
            placement::pin_current_thread(cpu).expect("pin the reference work");
            let arguments = (serde_bytes::ByteBuf::from(vec![0xa5u8; SIZE]),);
            let mut body = Vec::with_capacity(256);
            let best = (0..5)
                .map(|_| {
                    let start = Instant::now();
                    for call_id in 0..REFERENCE_CALLS {
                        body.clear();
                        echo_request_header(call_id, 0x5eed).encode(&mut body);
                        let encoded = Message::encode(&arguments).expect("encode");
                        body.extend_from_slice(encoded.body());
                        let (fields, args) =
                            RequestFields::decode(black_box(&body)).expect("decode");
                        let decoded: (serde_bytes::ByteBuf,) =
                            Message::new(args.to_vec()).decode().expect("decode the arguments");
                        black_box((fields.call_id, decoded));
                    }
                    start.elapsed()
                })
                .min()
                .unwrap_or_default();
            best.as_secs_f64() * 1e6
        };
        std::thread::scope(|s| s.spawn(work).join().expect("the reference work"))
    }

    /// The probe's kinds of call, indexing its figures.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum Kind {
        Untyped = 0,
        ServerOnly = 1,
        Typed = 2,
    }

    impl Kind {
        const ALL: [Self; 3] = [Self::Untyped, Self::ServerOnly, Self::Typed];
    }

    /// Requests for the typed echo, each as `EchoClient::echo` encodes one (a new call id, the
    /// method's name and hash, no deadline, the argument in postcard), built outside the timed
    /// calls.
    struct TypedRequests {
        method_hash: u64,
        arguments: Vec<u8>,
        call_id: u64,
    }

    impl TypedRequests {
        fn new(body: &[u8]) -> Self {
            let schema = typed::EchoClient::schema().expect("the echo's schema");
            let method = schema.methods.iter().find(|m| m.name == "echo").expect("echo");
            let arguments = (serde_bytes::ByteBuf::from(body.to_vec()),);
            Self {
                method_hash: method.hash,
                arguments: Message::encode(&arguments).expect("encode").into_body(),
                // Far from the ids this process's client stub hands out.
                call_id: 1 << 48,
            }
        }

        fn next(&mut self) -> Message {
            self.call_id += 1;
            let mut body = Vec::new();
            echo_request_header(self.call_id, self.method_hash).encode(&mut body);
            body.extend_from_slice(&self.arguments);
            Message::new(body).with_type(RPC_MSG_TYPE)
        }
    }

    /// The header of an `echo` call as the client stub writes it: no retries, no deadline.
    fn echo_request_header(call_id: u64, method_hash: u64) -> RequestHeader<'static> {
        RequestHeader {
            kind: RequestKind::Call,
            flags: 0,
            call_id,
            method_hash,
            deadline_ns: 0,
            method: "echo".into(),
        }
    }

    /// The median time per call (ns) over batches of [`BATCH`] calls, `calls` calls in all:
    /// each batch's arguments are built before it is timed, its replies dropped after.
    fn batches<A, R>(
        calls: usize,
        mut make: impl FnMut() -> A,
        mut call: impl FnMut(A) -> R,
    ) -> f64 {
        let mut means = Vec::with_capacity(calls / BATCH + 1);
        let mut replies = Vec::with_capacity(BATCH);
        for _ in 0..calls.div_ceil(BATCH) {
            let arguments: Vec<A> = (0..BATCH).map(|_| make()).collect();
            let start = Instant::now();
            for argument in arguments {
                replies.push(call(argument));
            }
            means.push(start.elapsed().as_nanos() as f64 / BATCH as f64);
            black_box(&replies);
            replies.clear();
        }
        means.sort_by(f64::total_cmp);
        median(&means)
    }

    /// The median of sorted `values`.
    fn median(values: &[f64]) -> f64 {
        let middle = values.len() / 2;
        if values.len() % 2 == 0 {
            (values[middle - 1] + values[middle]) / 2.0
        } else {
            values[middle]
        }
    }

    /// `typed`, `untyped` or `server-only`: the probe makes only those calls (for profiles of
    /// one kind).
    const ONLY_ENV: &str = "POSTBOX_BENCH_ALTERNATE_ONLY";

    /// The body size of the probe's calls (issue 5's goal is at 64 B).
    const SIZE: usize = 64;
    /// Calls per timed batch.
    const BATCH: usize = 100;
    /// Requests encoded and decoded by [`reference_work_us`].
    const REFERENCE_CALLS: u64 = 1000;
}

/// What `postbox worker typed-echo` serves: the same shape as `src/services.rs`'s `Echo` (a
/// client binds by shape, not by Rust path).
#[allow(dead_code, unreachable_pub)]
mod typed {
    #[postbox::service]
    pub(crate) trait Echo {
        /// `body`, back.
        fn echo(&self, body: serde_bytes::ByteBuf) -> serde_bytes::ByteBuf;
    }
}

/// tarpc's side of the comparison: the service, its server (run in a child process) and a
/// blocking caller for the bench loop.
mod tarpc_echo {
    use std::io::{self, Write};
    use std::path::Path;

    use futures::StreamExt;
    use tarpc::server::{BaseChannel, Channel};
    use tarpc::tokio_serde::formats::Bincode;
    use tarpc::{client, context};
    use tokio::runtime::Runtime;

    #[tarpc::service]
    trait TarpcEcho {
        /// `body`, back.
        async fn echo(body: Vec<u8>) -> Vec<u8>;
    }

    #[derive(Clone)]
    struct Echoer;

    impl TarpcEcho for Echoer {
        async fn echo(self, _: context::Context, body: Vec<u8>) -> Vec<u8> {
            body
        }
    }

    /// Serves the echo on a Unix socket at `socket` for the first client that connects, until
    /// it hangs up. Prints `ready` once listening.
    pub(crate) fn serve(socket: &Path) -> io::Result<()> {
        runtime()?.block_on(async {
            let mut incoming =
                tarpc::serde_transport::unix::listen(socket, Bincode::default).await?;
            let mut out = io::stdout().lock();
            writeln!(out, "ready {}", std::process::id())?;
            out.flush()?;
            drop(out);
            if let Some(transport) = incoming.next().await {
                // One call at a time arrives: answering inline spares a task spawn per call.
                BaseChannel::with_defaults(transport?)
                    .execute(Echoer.serve())
                    .for_each(|response| response)
                    .await;
            }
            Ok(())
        })
    }

    /// A tarpc client and the runtime that drives it, on the calling thread.
    pub(crate) struct Caller {
        runtime: Runtime,
        client: TarpcEchoClient,
    }

    impl Caller {
        pub(crate) fn connect(socket: &Path) -> io::Result<Self> {
            let runtime = runtime()?;
            let client = runtime.block_on(async {
                let transport =
                    tarpc::serde_transport::unix::connect(socket, Bincode::default).await?;
                // The dispatch task runs whenever the runtime does: inside `echo`'s block_on.
                io::Result::Ok(TarpcEchoClient::new(client::Config::default(), transport).spawn())
            })?;
            Ok(Self { runtime, client })
        }

        pub(crate) fn echo(&self, body: Vec<u8>) -> Vec<u8> {
            self.runtime.block_on(self.client.echo(context::current(), body)).expect("tarpc echo")
        }
    }

    /// A single-threaded runtime (no wake-up crosses threads, as in postbox's blocking calls),
    /// or tokio's default multi-threaded one when `POSTBOX_BENCH_TARPC_RUNTIME=multi-thread`
    /// (the child serving tarpc inherits the variable).
    fn runtime() -> io::Result<Runtime> {
        let multi_thread = std::env::var(RUNTIME_ENV).is_ok_and(|r| r == "multi-thread");
        let mut builder = if multi_thread {
            tokio::runtime::Builder::new_multi_thread()
        } else {
            tokio::runtime::Builder::new_current_thread()
        };
        builder.enable_all().build()
    }

    /// `current-thread` (the default) or `multi-thread`: the tokio runtime of both tarpc sides.
    pub(crate) const RUNTIME_ENV: &str = "POSTBOX_BENCH_TARPC_RUNTIME";
}

/// Per-sample mean call times (ns) of each benchmark, as criterion collects them, so the
/// medians and ratios can be printed at the end.
#[derive(Default)]
struct Samples(RefCell<BTreeMap<String, Vec<f64>>>);

impl Samples {
    /// The key of a benchmark: `group/function/size`.
    fn key(group: &str, function: &str, size: usize) -> String {
        format!("{group}/{function}/{size}")
    }

    fn record(&self, key: &str, mean_ns: f64) {
        self.0.borrow_mut().entry(key.to_owned()).or_default().push(mean_ns);
    }

    /// The median of the measured samples of `key`: criterion calls the routine once per
    /// sample after the warm-up, so they are the last `SAMPLE_SIZE` recorded. `None` when the
    /// benchmark did not run in full (filtered out, or `--test`).
    fn median(&self, key: &str) -> Option<f64> {
        let samples = self.0.borrow();
        let all = samples.get(key)?;
        let start = all.len().checked_sub(SAMPLE_SIZE)?;
        let mut measured = all[start..].to_vec();
        measured.sort_by(f64::total_cmp);
        let middle = measured.len() / 2;
        Some((measured[middle - 1] + measured[middle]) / 2.0)
    }
}

/// Prints each benchmark's median and the ratios against issue 5's goals.
fn report(samples: &Samples, placement: placement::Placement) {
    let micros = |ns: f64| ns / 1000.0;
    eprintln!("\nmedians ({}):", placement.label());
    for size in SIZES {
        let untyped = samples.median(&Samples::key("typed_vs_untyped", "postbox_untyped", size));
        let typed = samples.median(&Samples::key("typed_vs_untyped", "postbox_typed", size));
        if let (Some(untyped), Some(typed)) = (untyped, typed) {
            eprintln!(
                "  {size} B: untyped {:.2} µs, typed {:.2} µs: typed / untyped = {:.3}{}",
                micros(untyped),
                micros(typed),
                typed / untyped,
                if size == 64 { " (goal ≤ 1.10)" } else { "" },
            );
        }
    }
    let postbox = samples.median(&Samples::key("vs_tarpc", "postbox_typed", TARPC_SIZE));
    let tarpc = samples.median(&Samples::key("vs_tarpc", "tarpc_unix", TARPC_SIZE));
    if let (Some(postbox), Some(tarpc)) = (postbox, tarpc) {
        eprintln!(
            "  {TARPC_SIZE} B: postbox typed {:.2} µs, tarpc over a Unix socket {:.2} µs: \
             tarpc / postbox = {:.1}× (goal ≥ 10×)",
            micros(postbox),
            micros(tarpc),
            tarpc / postbox,
        );
    }
}

/// Times `iters` calls one by one: `make` builds each argument outside the timed region, and
/// each reply is dropped outside it. Records the sample's mean under `key`.
fn timed_calls<A, R>(
    iters: u64,
    samples: &Samples,
    key: &str,
    mut make: impl FnMut() -> A,
    mut call: impl FnMut(A) -> R,
) -> Duration {
    let mut total = Duration::ZERO;
    for _ in 0..iters {
        let argument = make();
        let start = Instant::now();
        let reply = call(argument);
        total += start.elapsed();
        drop(black_box(reply));
    }
    samples.record(key, total.as_nanos() as f64 / iters.max(1) as f64);
    total
}

fn configure(group: &mut BenchmarkGroup<'_, criterion::measurement::WallTime>, size: usize) {
    group.throughput(Throughput::Bytes(size as u64));
    group.sample_size(SAMPLE_SIZE);
}

struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn_worker(broker: &Broker, args: &[&str]) -> ChildGuard {
    // Another build's worker, to compare builds (see the module's docs).
    let exe = std::env::var_os(WORKER_ENV).unwrap_or_else(|| env!("CARGO_BIN_EXE_postbox").into());
    let mut command = Command::new(exe);
    command.arg("worker").args(args).env("POSTBOX_SOCKET", broker.socket_path());
    spawn_ready(command, &format!("postbox worker {args:?}"))
}

/// This binary again, as tarpc's echo server on `socket`.
fn spawn_tarpc_server(socket: &Path) -> ChildGuard {
    let exe = std::env::current_exe().expect("the bench binary's path");
    let mut command = Command::new(exe);
    command.env(TARPC_SOCKET_ENV, socket);
    spawn_ready(command, "tarpc echo server")
}

/// Spawns `command` and waits for its `ready` line.
fn spawn_ready(mut command: Command, what: &str) -> ChildGuard {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {what}: {e}"));
    let mut line = String::new();
    let stdout = child.stdout.take().expect("piped stdout");
    BufReader::new(stdout).read_line(&mut line).expect("ready line");
    assert!(line.starts_with("ready"), "{what} did not start: {line:?}");
    ChildGuard(child)
}

const SIZES: [usize; 2] = [64, 4096];

const TARPC_SIZE: usize = 64;

/// Samples per benchmark (criterion's default, fixed here so the medians know which
/// recorded samples are the measured ones).
const SAMPLE_SIZE: usize = 100;
