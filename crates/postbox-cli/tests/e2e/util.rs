//! Process harness: a daemon per test, workers that announce `ready <process id>`, free ports
//! and hosts files.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Output, Stdio};
use std::time::{Duration, Instant};

use postbox::{Connection, Node, ProcessId};
/// Loopback ports, never the same number twice in this test binary.
pub(crate) use postbox_test::{free_port, free_udp_port};
use postbox_test::{Authority, Identity};

/// Path of the binary under test.
pub(crate) fn exe() -> &'static str {
    env!("CARGO_BIN_EXE_postbox")
}

/// A `postbox daemon` child with its own socket; killed when dropped. What it logged is
/// printed when it is dropped by a failing test.
pub(crate) struct Daemon {
    child: Option<Child>,
    pub(crate) socket: PathBuf,
    dir: tempfile::TempDir,
}

impl Daemon {
    pub(crate) fn start() -> Self {
        Self::start_with(&[])
    }

    pub(crate) fn start_with(args: &[&str]) -> Self {
        raise_descriptor_limit();
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("broker.sock");
        let log = std::fs::File::create(dir.path().join(LOG)).unwrap();
        let child = Command::new(exe())
            .arg("--socket")
            .arg(&socket)
            .arg("daemon")
            .args(args)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let daemon = Self { child: Some(child), socket, dir };
        wait_until("the daemon accepts nodes", || Node::attach_to(&daemon.socket).is_ok());
        daemon
    }

    pub(crate) fn node(&self) -> Node {
        Node::attach_to(&self.socket).unwrap()
    }

    /// Runs `postbox ARGS` to completion against this daemon.
    pub(crate) fn postbox(&self, args: &[&str]) -> Output {
        self.command(args).output().unwrap()
    }

    pub(crate) fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(exe());
        command.args(args).env("POSTBOX_SOCKET", &self.socket).stdin(Stdio::null());
        command
    }

    /// Starts `postbox worker ARGS` and waits for its `ready` line.
    pub(crate) fn worker(&self, args: &[&str]) -> Worker {
        let mut full = vec!["worker"];
        full.extend_from_slice(args);
        Worker::start(self.command(&full))
    }

    /// SIGKILLs the daemon and waits until it is gone.
    pub(crate) fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }

    pub(crate) fn socket(&self) -> &Path {
        &self.socket
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill9();
        if std::thread::panicking() {
            let log = std::fs::read_to_string(self.dir.path().join(LOG)).unwrap_or_default();
            eprintln!("--- daemon {} logged:\n{log}--- end of its log", self.socket.display());
        }
    }
}

/// The daemon's stderr, in its directory.
const LOG: &str = "daemon.log";

/// A child process that printed `ready [process id]`; killed when dropped.
pub(crate) struct Worker {
    pub(crate) child: Child,
    pub(crate) id: Option<ProcessId>,
    /// Kept open so the worker never gets EPIPE on later prints (or handed to a line reader).
    stdout: Option<BufReader<ChildStdout>>,
}

impl Worker {
    pub(crate) fn start(mut command: Command) -> Self {
        let mut child = command.stdout(Stdio::piped()).spawn().unwrap();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        let rest = line.trim().strip_prefix("ready").unwrap_or_else(|| {
            let _ = child.kill();
            panic!("worker did not start: {line:?}")
        });
        let id = rest.trim().parse().ok();
        Self { child, id, stdout: Some(stdout) }
    }

    pub(crate) fn process_id(&self) -> ProcessId {
        self.id.expect("a node worker announces its process id")
    }

    /// SIGKILL; returns the instant the signal was sent.
    pub(crate) fn kill9(&mut self) -> Instant {
        let at = Instant::now();
        self.child.kill().unwrap();
        self.child.wait().unwrap();
        at
    }

    /// The worker's further stdout lines, as they come, read on a thread of their own.
    pub(crate) fn lines(&mut self) -> std::sync::mpsc::Receiver<String> {
        let stdout = self.stdout.take().expect("lines taken once");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in stdout.lines() {
                let Ok(line) = line else { return };
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        rx
    }

    pub(crate) fn wait_success(&mut self) {
        let status = self.child.wait().unwrap();
        assert!(status.success(), "worker exited with {status}");
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The tests of this binary run in parallel in one process, each with nodes, links and
/// hostile floods of links: the soft descriptor limit (often 1024) is raised to the hard one,
/// so that one test's flood does not make another's descriptor passing fail.
fn raise_descriptor_limit() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
        let limit = getrlimit(Resource::Nofile);
        let _ =
            setrlimit(Resource::Nofile, Rlimit { current: limit.maximum, maximum: limit.maximum });
    });
}

/// Polls `condition` until it holds; panics after a generous watchdog (never a hang).
pub(crate) fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + WATCHDOG;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Generous bound for anything that should happen "soon": only a hang reaches it.
pub(crate) const WATCHDOG: Duration = Duration::from_secs(20);

pub(crate) fn stdout_of(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

pub(crate) fn stderr_of(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Connects to `name` (a remote port, `port@host`), retrying while the host link comes up.
pub(crate) fn connect_remote(node: &Node, name: &str) -> postbox::Connection {
    let mut connection = None;
    wait_until(&format!("{name} is reachable"), || {
        connection = node.connect(name).ok();
        connection.is_some()
    });
    connection.unwrap()
}

/// Makes `count` calls on `connection` to an `echo --upper` server and checks each answer.
pub(crate) fn calls_are_answered_in_upper_case(connection: &Connection, count: usize) {
    for i in 0..count {
        let body = format!("call {i}");
        let reply = connection.call_timeout(body.as_str(), WATCHDOG).unwrap();
        assert_eq!(reply.body(), body.to_uppercase().as_bytes());
    }
}

/// A call ended by cutting what it runs over: what it ended with, how long after the cut, and
/// the connection it was made on.
pub(crate) type CutCall = (Result<postbox::Message, postbox::CallError>, Duration, Connection);

/// Calls `connection` without a deadline on a thread of its own (so only the end of its link
/// can end the call), runs `cut` 300 ms later, and waits for the call to end. `Err` if it had
/// not ended after [`WATCHDOG`] (a hang).
pub(crate) fn call_cut_by(
    connection: Connection,
    cut: impl FnOnce(),
) -> Result<CutCall, std::sync::mpsc::RecvTimeoutError> {
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    let caller = std::thread::spawn(move || {
        done_tx.send(connection.call("are you there?")).unwrap();
        connection
    });
    std::thread::sleep(Duration::from_millis(300));
    cut();
    let cut_at = Instant::now();
    let result = done_rx.recv_timeout(WATCHDOG)?;
    let took = cut_at.elapsed();
    let connection = caller.join().unwrap();
    Ok((result, took, connection))
}

/// Hosts `a` and `b`, one daemon each, on loopback: `a` dials `b` over TCP, with heartbeats
/// every 200 ms and 5 missed allowed. `b` runs with the policy `b_policy` (TOML text), `a` with
/// `a_policy`, or with none.
pub(crate) struct HostPair {
    pub(crate) a: Daemon,
    pub(crate) b: Daemon,
    /// The daemons' policy (or hosts) files, kept as long as the daemons run.
    pub(crate) _files: tempfile::TempDir,
}

impl HostPair {
    pub(crate) fn start(b_policy: &str, a_policy: Option<&str>) -> Self {
        Self::start_with(b_policy, a_policy, &[], &[])
    }

    /// The same, with `b_args` added to b's flags and `a_args` to a's.
    pub(crate) fn start_with(
        b_policy: &str,
        a_policy: Option<&str>,
        b_args: &[&str],
        a_args: &[&str],
    ) -> Self {
        let port = free_port();
        let policy = tempfile::tempdir().unwrap();
        let write = |file: &str, text: &str| {
            let path = policy.path().join(file);
            std::fs::write(&path, text).unwrap();
            path.to_str().unwrap().to_owned()
        };
        let b_path = write("b.toml", b_policy);
        let a_path = a_policy.map(|text| write("a.toml", text));
        let listen = format!("a=listen:127.0.0.1:{port}");
        let dial = format!("b=dial:127.0.0.1:{port}");
        let timers = ["--heartbeat", "200ms", "--missed-heartbeats", "5"];
        let mut all_b = vec!["--host-name", "b", "--peer", &listen, "--config", &b_path];
        all_b.extend_from_slice(b_args);
        all_b.extend_from_slice(&timers);
        let b = Daemon::start_with(&all_b);
        let mut all_a = vec!["--host-name", "a", "--peer", &dial];
        if let Some(a_path) = &a_path {
            all_a.extend_from_slice(&["--config", a_path]);
        }
        all_a.extend_from_slice(a_args);
        all_a.extend_from_slice(&timers);
        let a = Daemon::start_with(&all_a);
        Self { a, b, _files: policy }
    }
}

/// Writes `identity` and the CA `trusted` into `dir`, and a hosts file for host `name` with a
/// `[tls]` table and `peers` (TOML lines of the `[peers]` table); returns the file's path.
pub(crate) fn tls_hosts_file(
    dir: &Path,
    name: &str,
    identity: &Identity,
    trusted: &Authority,
    peers: &str,
) -> String {
    let write = |file: &str, text: &str| {
        let path = dir.join(format!("{name}-{file}"));
        std::fs::write(&path, text).unwrap();
        path.to_str().unwrap().to_owned()
    };
    let (cert, key, ca) = (
        write("cert.pem", &identity.cert),
        write("key.pem", &identity.key),
        write("ca.pem", &trusted.pem()),
    );
    write(
        "hosts.toml",
        &format!(
            "name = '{name}'\nheartbeat_interval_ms = 200\nmissed_heartbeats = 5\n\
             [tls]\ncert = '{cert}'\nkey = '{key}'\nca = '{ca}'\n[peers]\n{peers}\n"
        ),
    )
}
