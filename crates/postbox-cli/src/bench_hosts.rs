//! `postbox bench --measure hosts`: calls and one-way messages to ports on another host, through
//! two `postbox daemon` processes linked over loopback TCP, beside raw TCP measured in the same
//! run (docs/benchmarks.md, "Across hosts").
//!
//! ```text
//! this process ──Unix link── daemon a ══host link (TCP)══ daemon b ──Unix link── echo / sink
//!   (node on a)               (gateway)                    (gateway)            (workers on b)
//! this process ──────── direct link (TCP), made by daemons a2 and b ─────────── echo
//!   (node on a2)
//! this process ─────────────── TCP, TCP_NODELAY ─────────────────────────────── raw-tcp worker
//! ```
//!
//! Daemon `a2` is a second host linked to b with direct links allowed on both sides
//! (docs/network.md §15), so that the gateway rows and the direct row share one server.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::DirBuilderExt as _;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use postbox::{ConnectError, Connection, Message, Node};

use crate::bench::{rotate, THROUGHPUT_BATCH, THROUGHPUT_REPEATS};
use crate::latency::Samples;
use crate::placement::Placement;
use crate::spawner::{Spawner, Worker};

/// Two daemons linked over loopback TCP, the servers on host `b`, and this process's node on
/// host `a` with its connections, plus the raw TCP peers. Everything but this thread runs
/// with the placement's server pinning.
pub(crate) struct HostsRig {
    /// To `echo@b`, which answers every call with its body.
    echo: Connection,
    /// To `sink@b`, which takes one-way messages in batches (and answers the closing call).
    sink: Connection,
    /// To `echo@b` from a node on host `a2`: a direct link.
    direct_echo: Connection,
    /// A raw TCP echo, and a raw TCP sink answering one byte to a marked message.
    raw_echo: TcpStream,
    raw_sink: TcpStream,
    _node: Node,
    _direct_node: Node,
    _workers: Vec<Worker>,
    /// Last: the daemons outlive the connections and workers that use them.
    _daemons: [Daemon; 3],
}

impl HostsRig {
    /// Starts daemon `b` (listening on a free loopback port), daemon `a` (dialing it), the
    /// servers on `b` and the raw TCP workers, all pinned as `place` says for servers, then
    /// waits until `echo@b` answers a connect.
    pub(crate) fn start(place: Placement) -> Result<Self> {
        let (port, direct_port) = (free_port()?, free_port()?);
        let batch = THROUGHPUT_BATCH.to_string();
        let (a, a2, b, workers) = place.apply(|| -> Result<_> {
            let listen = format!("a=listen:127.0.0.1:{port}");
            let listen_direct = format!("a2=listen:127.0.0.1:{direct_port}");
            let b = Daemon::start(
                "b",
                &["--peer", &listen, "--peer", &listen_direct, "--direct-peer", "a2"],
                Some(POLICY_OF_B),
            )?;
            let a = Daemon::start("a", &["--peer", &format!("b=dial:127.0.0.1:{port}")], None)?;
            let dial_direct = format!("b=dial:127.0.0.1:{direct_port}");
            let a2 = Daemon::start("a2", &["--peer", &dial_direct, "--direct-peer", "b"], None)?;
            let on_b = Spawner { socket: b.socket.clone() };
            let workers = vec![
                on_b.worker(&["echo", "echo"])?,
                on_b.worker(&["echo", "sink", "--batch", &batch])?,
                on_b.worker(&["raw-tcp", "--size", "64"])?,
                on_b.worker(&["raw-tcp", "--size", "64", "--sink"])?,
            ];
            Ok((a, a2, b, workers))
        })??;
        let raw = |worker: &Worker| -> Result<TcpStream> {
            let stream = TcpStream::connect(worker.id.as_str())
                .with_context(|| format!("connect to the raw TCP worker at {}", worker.id))?;
            stream.set_nodelay(true)?;
            Ok(stream)
        };
        let raw_echo = raw(&workers[2])?;
        let raw_sink = raw(&workers[3])?;
        let node = Node::attach_to(&a.socket).context("attach to daemon a")?;
        let echo = connect_remote(&node, "echo@b")?;
        let sink = connect_remote(&node, "sink@b")?;
        let direct_node = Node::attach_to(&a2.socket).context("attach to daemon a2")?;
        let direct_echo = connect_remote(&direct_node, "echo@b")?;
        Ok(Self {
            echo,
            sink,
            direct_echo,
            raw_echo,
            raw_sink,
            _node: node,
            _direct_node: direct_node,
            _workers: workers,
            _daemons: [a, a2, b],
        })
    }

    /// 64-byte call round trips to `echo@b` through the gateways, to `echo@b` over the direct
    /// link, and raw TCP ping-pongs, taking turns in blocks: the samples of each, in that
    /// order.
    pub(crate) fn call_rtt(&self, rounds: usize) -> Result<Vec<Samples>> {
        let body = vec![0x5au8; MESSAGE_SIZE];
        let mut raw = self.raw_echo.try_clone()?;
        let mut buf = vec![0u8; MESSAGE_SIZE];
        rotate(
            rounds,
            &mut [
                &mut || {
                    let message = Message::new(body.clone());
                    let start = Instant::now();
                    self.echo.call(message)?;
                    Ok(start.elapsed())
                },
                &mut || {
                    let message = Message::new(body.clone());
                    let start = Instant::now();
                    self.direct_echo.call(message)?;
                    Ok(start.elapsed())
                },
                &mut || {
                    let start = Instant::now();
                    raw.write_all(&body)?;
                    raw.read_exact(&mut buf)?;
                    Ok(start.elapsed())
                },
            ],
        )
    }

    /// One-way throughput of 64-byte messages, the median of [`THROUGHPUT_REPEATS`] bursts of
    /// `burst` each: postbox to `sink@b` in batches of [`THROUGHPUT_BATCH`] (then one call,
    /// answered once the sink took everything before it), and raw TCP writes to a sink (the
    /// last one marked, answered with one byte). Messages per second, in that order.
    pub(crate) fn throughput(&self, burst: usize) -> Result<[f64; 2]> {
        let body = vec![0x5au8; MESSAGE_SIZE];
        let mut sink = self.raw_sink.try_clone()?;
        let postbox = || crate::bench::batched_rate(&self.sink, &body, burst);
        let mut raw = || crate::bench::raw_rate(&mut sink, &body, burst);
        let mut rates = [Vec::new(), Vec::new()];
        // One burst each to warm up (page faults, the session's windows, TCP's).
        postbox()?;
        raw()?;
        for _ in 0..THROUGHPUT_REPEATS {
            rates[0].push(postbox()?);
            rates[1].push(raw()?);
        }
        Ok(rates.map(|mut rates| {
            rates.sort_by(f64::total_cmp);
            rates[rates.len() / 2]
        }))
    }
}

/// A `postbox daemon` child with a socket in a directory of its own, killed and cleaned up
/// on drop.
struct Daemon {
    child: Child,
    dir: PathBuf,
    socket: PathBuf,
}

impl Daemon {
    /// Starts `postbox daemon --host-name NAME HOSTS…` (`hosts`: its peers and direct-link
    /// flags; with `policy` as its policy file) and waits until it accepts nodes.
    fn start(name: &str, hosts: &[&str], policy: Option<&str>) -> Result<Self> {
        let dir = std::env::temp_dir().join(format!(
            "postbox-bench-hosts-{}-{name}-{}",
            std::process::id(),
            crate::latency::monotonic_ns()
        ));
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .with_context(|| format!("create {}", dir.display()))?;
        let socket = dir.join("broker.sock");
        let mut command = Command::new(std::env::current_exe().context("find postbox")?);
        command.arg("--socket").arg(&socket).arg("daemon");
        command.args(["--host-name", name]).args(hosts);
        if hosts.contains(&"--direct-peer") {
            // Where b takes direct links (any free port; a2 learns it with each offer).
            command.args(["--direct-listen", "127.0.0.1:0"]);
        }
        if let Some(policy) = policy {
            let file = dir.join("policy.toml");
            std::fs::write(&file, policy)?;
            command.arg("--config").arg(file);
        }
        command.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
        let child = command.spawn().context("start postbox daemon")?;
        let mut daemon = Self { child, dir, socket };
        let deadline = Instant::now() + STARTUP_LIMIT;
        while Node::attach_to(&daemon.socket).is_err() {
            if let Some(status) = daemon.child.try_wait()? {
                bail!("daemon {name} exited at startup: {status}");
            }
            if Instant::now() >= deadline {
                bail!("daemon {name} did not accept nodes within {STARTUP_LIMIT:?}");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(daemon)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Connects to a remote port, retrying while the host link comes up.
fn connect_remote(node: &Node, name: &str) -> Result<Connection> {
    let deadline = Instant::now() + STARTUP_LIMIT;
    loop {
        match node.connect(name) {
            Ok(connection) => return Ok(connection),
            Err(ConnectError::Unreachable(_)) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(error) => return Err(error).with_context(|| format!("connect to {name}")),
        }
    }
}

/// A loopback TCP port nobody listened on a moment ago (the host link's, for daemon b).
fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Body size of every message here.
const MESSAGE_SIZE: usize = 64;
/// How long a daemon may take to accept nodes, and the host link to open.
const STARTUP_LIMIT: Duration = Duration::from_secs(10);
/// Daemon b lets host a send to and call its two ports (docs/network.md §5).
const POLICY_OF_B: &str = "[[allow]]\nnames = [\"echo\", \"sink\"]\nhosts = [\"a\", \"a2\"]\noperations = [\"send\", \"call\"]\n";
