//! Across real hosts: two network namespaces joined by a veth pair, each with its own address
//! and its own `postbox daemon`; the host link crosses the veth, and a partition is the veth
//! going down (docs/network.md §7).
//!
//! Needs root (`ip netns add`, `ip link add … type veth`). Without root, or where namespaces
//! or veths cannot be made, the test prints why and passes without checking anything (CI runs
//! as root). Namespaces and links are removed by a guard, also when the test panics.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use postbox::{CallError, Node};

use crate::util::{
    call_cut_by, calls_are_answered_in_upper_case, connect_remote, exe, stderr_of, stdout_of,
    wait_until, Worker, WATCHDOG,
};

/// Two namespaces `a` and `b` with a veth pair between them, addressed in a private /30.
/// Dropping it deletes both namespaces (and with them the veth ends inside).
struct Net {
    a: String,
    b: String,
    /// The veth end in `a`.
    link_a: String,
    /// Root-namespace leftovers to delete if moving a veth end failed half way.
    stray_links: Vec<String>,
    address_a: String,
    address_b: String,
}

impl Net {
    /// Makes the namespaces and the link; `Err` says why they cannot be made here.
    fn create() -> Result<Self, String> {
        if rustix::process::getuid().as_raw() != 0 {
            return Err("needs root to create network namespaces".into());
        }
        // Unique per process and per call: parallel runs and tests never share names or
        // subnets (10.231.P.Q/30 with P from the pid, Q from a counter).
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let pid = std::process::id();
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let tag = format!("{pid}x{n}");
        let mut net = Self {
            a: format!("pbtest-a-{tag}"),
            b: format!("pbtest-b-{tag}"),
            // Interface names are at most 15 bytes: "pb" + up to 7 pid digits + "a" + counter.
            link_a: format!("pb{}a{n}", pid % 10_000_000),
            stray_links: Vec::new(),
            address_a: String::new(),
            address_b: String::new(),
        };
        let link_b = format!("pb{}b{n}", pid % 10_000_000);
        let (third, fourth) = (pid % 256, ((pid >> 8) + n) % 64 * 4);
        net.address_a = format!("10.231.{third}.{}", fourth + 1);
        net.address_b = format!("10.231.{third}.{}", fourth + 2);

        ip(&["netns", "add", &net.a])?;
        ip(&["netns", "add", &net.b])?;
        // Made in the root namespace, then moved: works with every iproute2.
        net.stray_links.push(net.link_a.clone());
        ip(&["link", "add", &net.link_a, "type", "veth", "peer", "name", &link_b])?;
        ip(&["link", "set", &net.link_a, "netns", &net.a])?;
        ip(&["link", "set", &link_b, "netns", &net.b])?;
        net.stray_links.clear();
        for (ns, link, address) in
            [(&net.a, &net.link_a, &net.address_a), (&net.b, &link_b, &net.address_b)]
        {
            ip(&["-n", ns, "addr", "add", &format!("{address}/30"), "dev", link])?;
            ip(&["-n", ns, "link", "set", link, "up"])?;
            ip(&["-n", ns, "link", "set", "lo", "up"])?;
        }
        Ok(net)
    }

    /// Takes namespace `a`'s veth end down (`up = false`) or up again.
    fn set_link(&self, up: bool) {
        let state = if up { "up" } else { "down" };
        ip(&["-n", &self.a, "link", "set", &self.link_a, state]).unwrap();
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for link in &self.stray_links {
            let _ = ip(&["link", "del", link]);
        }
        // Deleting a namespace deletes the veth end in it, and with it the pair.
        let _ = ip(&["netns", "del", &self.a]);
        let _ = ip(&["netns", "del", &self.b]);
    }
}

/// Runs `ip ARGS`; `Err` carries its complaint.
fn ip(args: &[&str]) -> Result<(), String> {
    let output = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("ip {}: {e}", args.join(" ")))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!("ip {}: {}", args.join(" "), stderr_of(&output).trim()))
    }
}

/// `postbox ARGS` run inside namespace `ns` (`ip netns exec` execs it: the child is postbox).
fn in_namespace(ns: &str, args: &[&str]) -> Command {
    let mut command = Command::new("ip");
    command.args(["netns", "exec", ns, exe()]).args(args).stdin(Stdio::null());
    command
}

/// A `postbox daemon` inside a namespace, with its socket and log in a temporary directory
/// (Unix sockets are paths: nodes in any network namespace can attach).
struct NsDaemon {
    child: Child,
    socket: PathBuf,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl NsDaemon {
    fn start(ns: &str, args: &[&str]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("broker.sock");
        let log = dir.path().join("daemon.log");
        let mut full = vec!["--socket", socket.to_str().unwrap(), "daemon"];
        full.extend_from_slice(args);
        let child = in_namespace(ns, &full)
            .stdout(Stdio::null())
            .stderr(fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let daemon = Self { child, socket, log, _dir: dir };
        wait_until("the daemon accepts nodes", || Node::attach_to(&daemon.socket).is_ok());
        daemon
    }

    fn socket(&self) -> &Path {
        &self.socket
    }

    fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for NsDaemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `postbox ARGS` inside namespace `ns`, against the daemon at `socket`, to completion.
fn postbox_in(ns: &str, socket: &Path, args: &[&str]) -> Output {
    in_namespace(ns, args).env("POSTBOX_SOCKET", socket).output().unwrap()
}

/// Daemons `a` and `b`, each in its own namespace of a [`Net`]: a dials the host link to b's veth
/// address, and b's policy lets host a send to and call `names`. Dropping it stops the daemons,
/// then deletes the namespaces.
struct NsPair {
    daemon_a: NsDaemon,
    daemon_b: NsDaemon,
    _policy: tempfile::TempDir,
    net: Net,
}

impl NsPair {
    /// Starts both daemons with `timers` (heartbeat flags), b with `b_args` and a with `a_args`
    /// after their host flags. `None`, after a `SKIPPED` line saying why, where the namespaces
    /// cannot be made.
    fn start(names: &[&str], timers: &[&str], b_args: &[&str], a_args: &[&str]) -> Option<Self> {
        let net = match Net::create() {
            Ok(net) => net,
            Err(why) => {
                eprintln!("SKIPPED: network namespace test: {why}");
                return None;
            }
        };
        let policy = tempfile::tempdir().unwrap();
        let policy_file = policy.path().join("policy.toml");
        let names: Vec<String> = names.iter().map(|name| format!("'{name}'")).collect();
        fs::write(
            &policy_file,
            format!(
                "[[allow]]\nnames = [{}]\nhosts = ['a']\noperations = ['send', 'call']\n",
                names.join(", ")
            ),
        )
        .unwrap();
        // b listens on its own veth address only: a's link cannot take any other path.
        let listen = format!("a=listen:{}:7401", net.address_b);
        let dial = format!("b=dial:{}:7401", net.address_b);
        let mut all_b = vec!["--host-name", "b", "--peer", &listen];
        all_b.extend_from_slice(b_args);
        all_b.extend_from_slice(&["--config", policy_file.to_str().unwrap()]);
        all_b.extend_from_slice(timers);
        let daemon_b = NsDaemon::start(&net.b, &all_b);
        let mut all_a = vec!["--host-name", "a", "--peer", &dial];
        all_a.extend_from_slice(a_args);
        all_a.extend_from_slice(timers);
        let daemon_a = NsDaemon::start(&net.a, &all_a);
        Some(Self { daemon_a, daemon_b, _policy: policy, net })
    }

    /// A real `postbox worker ARGS` inside namespace b, attached to b's daemon.
    fn worker_in_b(&self, args: &[&str]) -> Worker {
        let mut full = vec!["worker"];
        full.extend_from_slice(args);
        let mut command = in_namespace(&self.net.b, &full);
        command.env("POSTBOX_SOCKET", self.daemon_b.socket());
        Worker::start(command)
    }

    /// Calls `connection` on its own thread (no deadline), takes a's veth end down 300 ms
    /// later, and returns what the call ended with and how long after the cut it ended; panics,
    /// with both daemons' logs, if the call hangs.
    fn partition_during_a_call(
        &self,
        connection: postbox::Connection,
    ) -> (Result<postbox::Message, CallError>, Duration) {
        let (result, took, _) = call_cut_by(connection, || self.net.set_link(false))
            .unwrap_or_else(|_| {
                panic!(
                    "the pending call hung; a's log:\n{}\nb's log:\n{}",
                    self.daemon_a.log(),
                    self.daemon_b.log()
                )
            });
        (result, took)
    }
}

#[test]
fn hosts_in_separate_network_namespaces_talk_over_veth_and_survive_a_partition() {
    let timers = ["--heartbeat", "200ms", "--missed-heartbeats", "5"];
    let Some(pair) = NsPair::start(&["echo", "slow"], &timers, &[], &[]) else { return };
    let (net, daemon_a) = (&pair.net, &pair.daemon_a);

    // Real workers inside namespace b, attached to b's daemon.
    let mut echo = pair.worker_in_b(&["echo", "echo", "--upper", "--print"]);
    let printed = echo.lines();
    let _slow = pair.worker_in_b(&["echo", "slow", "--delay-ms", "60000"]);

    // The test process stays in the root namespace and attaches to a's socket by its path.
    let node = Node::attach_to(daemon_a.socket()).unwrap();
    let connection = connect_remote(&node, "echo@b");
    calls_are_answered_in_upper_case(&connection, 50);
    connection.send("one way").unwrap();
    let line = printed.recv_timeout(WATCHDOG).unwrap();
    assert!(line.starts_with("0.") && line.ends_with(": one way"), "{line}");

    // The CLI inside namespace a resolves the same name; `ls` shows the link over the veth.
    let output = postbox_in(&net.a, daemon_a.socket(), &["call", "echo@b", "from ns a"]);
    assert!(output.status.success(), "{output:?}");
    assert_eq!(stdout_of(&output).trim(), "FROM NS A");
    let output = postbox_in(&net.a, daemon_a.socket(), &["ls"]);
    let listing = stdout_of(&output);
    let row = listing.lines().find(|l| l.starts_with("b ")).unwrap_or_else(|| panic!("{listing}"));
    assert!(row.contains("open") && row.contains(&format!("dial {}", net.address_b)), "{row}");

    // Partition: a call pending on the slow server fails (no deadline: only the host link's
    // death detection can end it), and never hangs.
    let (result, _) = pair.partition_during_a_call(connect_remote(&node, "slow@b"));
    assert_eq!(result, Err(CallError::PeerDied));
    // The old connection's channel closed with the session.
    let old = connection.call_timeout("old", WATCHDOG);
    assert!(matches!(old, Err(CallError::Disconnected(_) | CallError::PeerDied)), "{old:?}");
    let hosts = node.hosts().unwrap();
    assert_ne!(hosts[0].state, postbox_broker::HostState::Open, "{hosts:?}");

    // Healed: a new session opens, and new connections and calls work again.
    net.set_link(true);
    let connection = connect_remote(&node, "echo@b");
    assert_eq!(connection.call_timeout("back", WATCHDOG).unwrap().body(), b"BACK");
    connection.send("again").unwrap();
    let line = printed.recv_timeout(WATCHDOG).unwrap();
    assert!(line.ends_with(": again"), "{line}");
    let hosts = node.hosts().unwrap();
    assert!(hosts[0].sessions >= 2, "{hosts:?}");
}

#[test]
fn a_direct_links_partition_fails_its_pending_call_with_peer_died_within_the_heartbeat_bound() {
    // Both hosts allow direct links. b takes them on every address of its namespace
    // (0.0.0.0), which a reaches where it dials the host link (docs/network.md §15): the
    // direct link crosses the veth as the host link does.
    let b_direct = ["--direct-peer", "a", "--direct-listen", "0.0.0.0:7410"];
    // Heartbeat bound: 100 ms × 5 = 500 ms (HostsConfig::dead_after), what a relayed call gets.
    let timers = ["--heartbeat", "100ms", "--missed-heartbeats", "5"];
    let bound = Duration::from_millis(500);
    let Some(pair) = NsPair::start(&["echo", "slow"], &timers, &b_direct, &["--direct-peer", "b"])
    else {
        return;
    };
    let (net, daemon_a) = (&pair.net, &pair.daemon_a);
    let _echo = pair.worker_in_b(&["echo", "echo", "--upper"]);
    let _slow = pair.worker_in_b(&["echo", "slow", "--delay-ms", "60000"]);

    // The test process (root namespace) gets a socket daemon a made in namespace a: the
    // link runs over the veth, not through either broker.
    let node = Node::attach_to(daemon_a.socket()).unwrap();
    let connection = connect_remote(&node, "echo@b");
    assert_eq!(connection.call_timeout("direct", WATCHDOG).unwrap().body(), b"DIRECT");
    assert_eq!(node.hosts().unwrap()[0].channels, 0, "no channel crosses the host link");

    // Partition: no FIN, no reset. A call pending on the slow server ends when broker a
    // declares the host link to b dead and tells the node to cut its direct links to b: with
    // PeerDied, within the heartbeat bound (and never hangs).
    let (result, took) = pair.partition_during_a_call(connect_remote(&node, "slow@b"));
    assert_eq!(result, Err(CallError::PeerDied));
    // The one timed check here: the bound this test is about, with slack for scheduling.
    let slack = Duration::from_millis(500);
    assert!(
        took <= bound + slack,
        "a call pending on a direct link failed {took:?} after the partition; the heartbeat \
         bound is {bound:?} (+{slack:?} slack)"
    );
    // Not resumed: the idle link is given up as well, and a new connection is needed.
    let old = connection.call_timeout("old", WATCHDOG);
    assert!(matches!(old, Err(CallError::Disconnected(_) | CallError::PeerDied)), "{old:?}");

    // Healed: a new direct link works.
    net.set_link(true);
    let connection = connect_remote(&node, "echo@b");
    assert_eq!(connection.call_timeout("back", WATCHDOG).unwrap().body(), b"BACK");
}

#[test]
fn a_direct_listener_on_every_address_is_dialed_where_the_host_link_is() {
    let timers = ["--heartbeat", "200ms", "--missed-heartbeats", "5"];
    // Listening on every interface of b, the usual way to take connections on a server; no
    // --direct-advertise (b is not behind NAT): b offers 0.0.0.0, which a must not dial.
    let b_direct = ["--direct-peer", "a", "--direct-listen", "0.0.0.0:7410"];
    let Some(pair) = NsPair::start(&["echo"], &timers, &b_direct, &["--direct-peer", "b"]) else {
        return;
    };
    let _echo = pair.worker_in_b(&["echo", "echo", "--upper"]);

    let node = Node::attach_to(pair.daemon_a.socket()).unwrap();
    let connection = connect_remote(&node, "echo@b");
    assert_eq!(connection.call_timeout("hi", WATCHDOG).unwrap().body(), b"HI");
    assert_eq!(node.hosts().unwrap()[0].channels, 0, "the link is direct");
}
