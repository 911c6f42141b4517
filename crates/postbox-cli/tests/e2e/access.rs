//! Access control with real users: the daemon runs as this test's user (root), clients run as
//! users made with `useradd`, and the broker tells them apart by their kernel credentials.
//! Without root the tests print why and pass without checking anything (CI runs as root).

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use postbox::{Node, PeerIdentity};

use crate::util::{exe, stderr_of, wait_until};

/// The test users: two in the socket's group, one outside it.
struct Users {
    alice: u32,
    bob: u32,
    carol: u32,
    /// The group that may reach the socket (alice's and bob's primary group).
    group: u32,
    /// Carol's own group.
    carol_group: u32,
    /// A copy of the `postbox` binary every user may run (the build directory may not be).
    binary: PathBuf,
    _dir: tempfile::TempDir,
}

/// The users, made once per test run; `None` (with the reason printed) when not root.
fn users() -> Option<&'static Users> {
    static USERS: OnceLock<Option<Users>> = OnceLock::new();
    USERS
        .get_or_init(|| {
            if rustix::process::getuid().as_raw() != 0 {
                eprintln!("SKIPPED: access tests need root to create users (useradd)");
                return None;
            }
            let group = ensure_group("postbox-test");
            let carol_group = ensure_group("postbox-carol");
            let alice = ensure_user("postbox-alice", "postbox-test");
            let bob = ensure_user("postbox-bob", "postbox-test");
            let carol = ensure_user("postbox-carol", "postbox-carol");
            let dir = tempfile::tempdir().unwrap();
            fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
            let binary = dir.path().join("postbox");
            fs::copy(exe(), &binary).unwrap();
            fs::set_permissions(&binary, fs::Permissions::from_mode(0o755)).unwrap();
            Some(Users { alice, bob, carol, group, carol_group, binary, _dir: dir })
        })
        .as_ref()
}

fn ensure_group(name: &str) -> u32 {
    let status = Command::new("groupadd").args(["-f", name]).status().unwrap();
    assert!(status.success(), "groupadd {name}: {status}");
    id_of("/etc/group", name)
}

fn ensure_user(name: &str, group: &str) -> u32 {
    if !fs::read_to_string("/etc/passwd")
        .unwrap()
        .lines()
        .any(|l| l.starts_with(&format!("{name}:")))
    {
        let output = Command::new("useradd")
            .args(["--no-create-home", "--shell", "/usr/sbin/nologin", "-g", group, name])
            .output()
            .unwrap();
        // 9: made meanwhile by a parallel run.
        assert!(
            output.status.success() || output.status.code() == Some(9),
            "useradd {name}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    id_of("/etc/passwd", name)
}

fn id_of(database: &str, name: &str) -> u32 {
    fs::read_to_string(database)
        .unwrap()
        .lines()
        .find_map(|line| {
            let fields: Vec<&str> = line.split(':').collect();
            (fields.first() == Some(&name)).then(|| fields[2].parse().unwrap())
        })
        .unwrap_or_else(|| panic!("{name} not in {database}"))
}

/// A `postbox daemon --config FILE` of root's, with its socket open to the test group and
/// its log in a file.
struct PolicyDaemon {
    child: Child,
    socket: PathBuf,
    policy: PathBuf,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl PolicyDaemon {
    fn start(users: &Users, rules: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        // Others may pass through to the socket directory, whose own mode the broker sets.
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
        let socket = dir.path().join("run").join("broker.sock");
        let policy = dir.path().join("policy.toml");
        fs::write(&policy, policy_text(users, rules)).unwrap();
        let log = dir.path().join("daemon.log");
        let child = Command::new(exe())
            .arg("--socket")
            .arg(&socket)
            .args(["daemon", "--config"])
            .arg(&policy)
            .stdout(Stdio::null())
            .stderr(fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let daemon = Self { child, socket, policy, log, _dir: dir };
        wait_until("the daemon accepts nodes", || Node::attach_to(&daemon.socket).is_ok());
        daemon
    }

    /// Runs `postbox ARGS` as user `uid` (primary group `gid`) against this daemon.
    fn run_as(&self, users: &Users, uid: u32, gid: u32, args: &[&str], stdin: &[u8]) -> Output {
        let mut child = Command::new(&users.binary)
            .args(args)
            .env("POSTBOX_SOCKET", &self.socket)
            .uid(uid)
            .gid(gid)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        {
            use std::io::Write;
            let mut input = child.stdin.take().unwrap();
            input.write_all(stdin).unwrap();
        }
        child.wait_with_output().unwrap()
    }

    fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap()
    }

    fn hang_up(&self, users: &Users, rules: &str) {
        fs::write(&self.policy, policy_text(users, rules)).unwrap();
        self.signal_hang_up();
    }

    fn signal_hang_up(&self) {
        let pid = rustix::process::Pid::from_child(&self.child);
        rustix::process::kill_process(pid, rustix::process::Signal::HUP).unwrap();
    }

    fn socket(&self) -> &Path {
        &self.socket
    }
}

impl Drop for PolicyDaemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The policy file: the socket group, then `rules` with ALICE and BOB replaced by uids.
fn policy_text(users: &Users, rules: &str) -> String {
    let rules =
        rules.replace("ALICE", &users.alice.to_string()).replace("BOB", &users.bob.to_string());
    format!("[socket]\ngroup = {}\n\n{rules}", users.group)
}

const ALICE_SENDS: &str = r#"
[[allow]]
names = ["calc", "jobs"]
uids = [ALICE]
operations = ["send"]
"#;

#[test]
fn clients_are_told_apart_by_their_kernel_uid_and_denials_are_typed_and_logged() {
    let Some(users) = users() else { return };
    let daemon = PolicyDaemon::start(users, ALICE_SENDS);
    let root = Node::attach_to(daemon.socket()).unwrap();
    let calc = root.port("calc").open().unwrap();

    let sent = daemon.run_as(users, users.alice, users.group, &["send", "calc", "from alice"], b"");
    assert!(sent.status.success(), "{}", stderr_of(&sent));
    let envelope = calc.recv_timeout(Duration::from_secs(20)).unwrap();
    assert_eq!(envelope.body(), b"from alice");
    assert_eq!(
        (envelope.sender_identity().uid, envelope.sender_identity().gid),
        (users.alice, users.group)
    );

    let call = daemon.run_as(users, users.alice, users.group, &["call", "calc", "1+1"], b"");
    assert!(!call.status.success());
    assert!(stderr_of(&call).contains("access denied: call on calc"), "{}", stderr_of(&call));

    let bob = daemon.run_as(users, users.bob, users.group, &["send", "calc", "from bob"], b"");
    assert!(!bob.status.success());
    assert!(stderr_of(&bob).contains("access denied: send on calc"), "{}", stderr_of(&bob));

    let register = daemon.run_as(
        users,
        users.bob,
        users.group,
        &["recv", "secret", "--timeout", "100ms"],
        b"",
    );
    assert!(
        stderr_of(&register).contains("access denied: register on secret"),
        "{}",
        stderr_of(&register)
    );

    // Carol is not in the socket's group: the kernel keeps her from the socket at all.
    let carol = daemon.run_as(users, users.carol, users.carol_group, &["send", "calc", "x"], b"");
    assert!(!carol.status.success());
    assert!(stderr_of(&carol).contains("ermission denied"), "{}", stderr_of(&carol));

    wait_until("the denials are logged", || {
        let log = daemon.log();
        log.contains(&format!("access denied uid={}", users.bob)) && log.contains("\"secret\"")
    });
    assert!(calc.try_recv().is_err(), "nothing denied was delivered");
}

#[test]
fn a_client_cannot_forge_its_sender_identity() {
    let Some(users) = users() else { return };
    let daemon = PolicyDaemon::start(users, ALICE_SENDS);
    let root = Node::attach_to(daemon.socket()).unwrap();
    let calc = root.port("calc").open().unwrap();
    let jobs = root.mailbox("jobs").create().unwrap();
    // What a delivery's identity prefix looks like (docs/wire-format.md §2.8), claiming to be
    // root's pid 1: the system puts the true sender in front, so it stays mere body bytes.
    let forged: Vec<u8> = [1u32, 1, 0, 0].iter().flat_map(|w| w.to_le_bytes()).collect();
    for name in ["calc", "jobs"] {
        let sent = daemon.run_as(users, users.alice, users.group, &["send", name, "-"], &forged);
        assert!(sent.status.success(), "{}", stderr_of(&sent));
    }
    let direct = calc.recv_timeout(Duration::from_secs(20)).unwrap();
    let queued = jobs.recv_timeout(Duration::from_secs(20)).unwrap();
    for envelope in [direct, queued] {
        let sender: PeerIdentity = envelope.sender_identity();
        assert_eq!((sender.uid, sender.gid), (users.alice, users.group));
        assert_ne!(sender.process_id.pid, 1);
        assert_eq!(envelope.body(), forged.as_slice());
    }
}

#[test]
fn sighup_reloads_the_policy_and_a_broken_file_keeps_the_one_in_force() {
    let Some(users) = users() else { return };
    let daemon = PolicyDaemon::start(users, "");
    let root = Node::attach_to(daemon.socket()).unwrap();
    let calc = root.port("calc").open().unwrap();
    let send_as_bob = || daemon.run_as(users, users.bob, users.group, &["send", "calc", "hi"], b"");
    assert!(!send_as_bob().status.success());

    daemon.hang_up(users, "[[allow]]\nnames = [\"calc\"]\nuids = [BOB]\noperations = [\"send\"]");
    wait_until("bob may send after the reload", || send_as_bob().status.success());
    assert_eq!(
        calc.recv_timeout(Duration::from_secs(20)).unwrap().sender_identity().uid,
        users.bob
    );

    fs::write(&daemon.policy, "[[allow]\nthis is not toml").unwrap();
    daemon.signal_hang_up();
    wait_until("the broken file is reported", || daemon.log().contains("policy not reloaded"));
    assert!(send_as_bob().status.success(), "the policy in force stays");
}

#[test]
fn a_node_refuses_a_broker_run_by_a_user_it_does_not_trust() {
    let Some(users) = users() else { return };
    // Alice runs something that answers on a broker socket (here a real daemon of hers).
    let dir = tempfile::tempdir().unwrap();
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let run = dir.path().join("run");
    fs::create_dir(&run).unwrap();
    std::os::unix::fs::chown(&run, Some(users.alice), Some(users.group)).unwrap();
    fs::set_permissions(&run, fs::Permissions::from_mode(0o755)).unwrap();
    let socket = run.join("broker.sock");
    let mut daemon = Command::new(&users.binary)
        .arg("--socket")
        .arg(&socket)
        .arg("daemon")
        .uid(users.alice)
        .gid(users.group)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_until("alice's daemon listens", || socket.exists());
    // Root does not take alice's process for its broker.
    let refused = || match Node::attach_to(&socket) {
        Err(postbox::NodeError::UntrustedBroker { uid, .. }) => Some(uid),
        _ => None,
    };
    wait_until("root is refused", || refused().is_some());
    assert_eq!(refused(), Some(users.alice));
    // Told to trust her ($POSTBOX_BROKER_UID, as for a broker run by a service user), it
    // attaches; her policy decides the rest (listing names is not checked).
    let trusting = Command::new(exe())
        .args(["ls"])
        .env("POSTBOX_SOCKET", &socket)
        .env("POSTBOX_BROKER_UID", users.alice.to_string())
        .output()
        .unwrap();
    assert!(trusting.status.success(), "{}", stderr_of(&trusting));
    let _ = daemon.kill();
    let _ = daemon.wait();
}
