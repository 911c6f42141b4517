//! Nodes attached to a daemon over TCP (docs/network.md §14): the daemon listens for nodes on
//! a loopback port with a pre-shared key named `app`; child processes attach with
//! `POSTBOX_BROKER=tcp://…` and `POSTBOX_BROKER_KEY` (their `POSTBOX_SOCKET` points nowhere,
//! so nothing reaches the daemon but the tunnel), and use the ordinary CLI and workers.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use postbox::{AttachSecurity, CallError, ConnectError, Node, PreSharedKey};

use crate::util::{
    calls_are_answered_in_upper_case, exe, free_port, stderr_of, stdout_of, wait_until, Daemon,
    Worker, WATCHDOG,
};

/// A daemon that accepts nodes holding `app.psk` over TCP, and lets them do anything.
struct RemoteDaemon {
    daemon: Daemon,
    address: String,
    dir: tempfile::TempDir,
}

impl RemoteDaemon {
    fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        write_key(dir.path(), "app.psk", "app-key-0123456789abcdef");
        write_key(dir.path(), "wrong.psk", "not-the-key-0123456789abcdef");
        let policy = dir.path().join("policy.toml");
        std::fs::write(
            &policy,
            "[[allow]]\nnames = ['**', '#inbox/**']\nremote_nodes = ['app']\n\
             operations = ['register', 'send', 'call', 'receive', 'subscribe', 'manage']\n",
        )
        .unwrap();
        let address = format!("127.0.0.1:{}", free_port());
        let key = format!("app={}", dir.path().join("app.psk").display());
        let daemon = Daemon::start_with(&[
            "--config",
            policy.to_str().unwrap(),
            "--listen-tcp",
            &address,
            "--tcp-key",
            &key,
        ]);
        Self { daemon, address, dir }
    }

    fn key(&self, file: &str) -> PathBuf {
        self.dir.path().join(file)
    }

    /// `postbox ARGS` attached over TCP with key file `key`.
    fn remote_command(&self, args: &[&str], key: &str) -> Command {
        let mut command = Command::new(exe());
        command
            .args(args)
            .env("POSTBOX_BROKER", format!("tcp://{}", self.address))
            .env("POSTBOX_BROKER_KEY", self.key(key))
            .env("POSTBOX_SOCKET", self.dir.path().join("no-broker-here.sock"))
            .stdin(Stdio::null());
        command
    }

    fn remote(&self, args: &[&str]) -> std::process::Output {
        self.remote_command(args, "app.psk").output().unwrap()
    }

    /// `postbox worker ARGS` attached over TCP.
    fn remote_worker(&self, args: &[&str]) -> Worker {
        let mut full = vec!["worker"];
        full.extend_from_slice(args);
        Worker::start(self.remote_command(&full, "app.psk"))
    }

    /// This test process as a node attached over TCP.
    fn remote_node(&self) -> Node {
        let key = PreSharedKey::from_file(&self.key("app.psk")).unwrap();
        Node::attach_tcp(&self.address, &AttachSecurity::PreSharedKey(key)).unwrap()
    }
}

fn write_key(dir: &Path, file: &str, key: &str) {
    std::fs::write(dir.join(file), format!("{key}\n")).unwrap();
}

#[test]
fn a_node_over_tcp_calls_a_local_service_and_serves_one_that_a_local_node_calls() {
    let remote = RemoteDaemon::start();
    let _local_echo = remote.daemon.worker(&["echo", "local-echo"]);

    // A remote process calls the local service.
    let output = remote.remote(&["call", "local-echo", "over the tunnel"]);
    assert!(output.status.success(), "{}", stderr_of(&output));
    assert_eq!(stdout_of(&output).trim(), "over the tunnel");

    // A remote process serves a port; local nodes call it, by API and by CLI.
    let server = remote.remote_worker(&["echo", "remote-echo", "--upper"]);
    assert_eq!(server.process_id().pid, 0, "a remote node has no local pid");
    let local = remote.daemon.node();
    let connection = local.connect("remote-echo").unwrap();
    calls_are_answered_in_upper_case(&connection, 100);
    let output = remote.daemon.postbox(&["call", "remote-echo", "from the shell"]);
    assert!(output.status.success(), "{}", stderr_of(&output));
    assert_eq!(stdout_of(&output).trim(), "FROM THE SHELL");

    // send and recv over TCP: a remote receiver, a local sender; then the other way round.
    let mut receiver = remote
        .remote_command(&["recv", "remote-queue", "--count", "1", "--timeout", "20s"], "app.psk")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    wait_until("the remote receiver's port exists", || local.connect("remote-queue").is_ok());
    let output = remote.daemon.postbox(&["send", "remote-queue", "to a remote port"]);
    assert!(output.status.success(), "{}", stderr_of(&output));
    let mut printed = String::new();
    receiver.stdout.take().unwrap().read_to_string(&mut printed).unwrap();
    assert!(receiver.wait().unwrap().success());
    assert_eq!(printed.trim(), "to a remote port");

    let queue = local.port("local-queue").open().unwrap();
    let output = remote.remote(&["send", "local-queue", "from a remote process"]);
    assert!(output.status.success(), "{}", stderr_of(&output));
    assert_eq!(queue.recv_timeout(WATCHDOG).unwrap().body(), b"from a remote process");

    // ls over TCP lists what both sides opened.
    let output = remote.remote(&["ls"]);
    assert!(output.status.success(), "{}", stderr_of(&output));
    let listing = stdout_of(&output);
    assert!(listing.contains("remote-echo") && listing.contains("local-echo"), "{listing}");
}

#[test]
fn everything_a_remote_process_sent_before_it_exited_arrives_in_order() {
    let remote = RemoteDaemon::start();
    let local = remote.daemon.node();
    // Room for every message: the sender never waits for the receiver, and exits as soon as
    // its last send returns, many messages still in its process. Its node waits for the
    // tunnel to pass them on first.
    let sink = local.port("sink").capacity(4000).open().unwrap();
    let mut sender =
        Worker::start(remote.remote_command(&["worker", "send-many", "sink", "3000"], "app.psk"));
    for i in 0..3000 {
        let got = sink.recv_timeout(WATCHDOG).unwrap();
        assert_eq!(got.body(), i.to_string().as_bytes());
    }
    assert!(wait_for_exit(&mut sender).success());
}

#[test]
fn a_wrong_or_missing_key_is_refused_with_a_typed_error_and_nothing_is_served() {
    let remote = RemoteDaemon::start();
    let _local_echo = remote.daemon.worker(&["echo", "local-echo"]);
    let output =
        remote.remote_command(&["call", "local-echo", "hi"], "wrong.psk").output().unwrap();
    assert!(!output.status.success());
    let error = stderr_of(&output);
    assert!(error.contains("authentication with the broker at tcp://"), "{error}");
    assert!(error.contains("refused this host's credentials"), "{error}");
    assert!(stdout_of(&output).is_empty());

    let output = remote
        .remote_command(&["call", "local-echo", "hi"], "app.psk")
        .env_remove("POSTBOX_BROKER_KEY")
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(stderr_of(&output).contains("POSTBOX_BROKER_KEY"), "{}", stderr_of(&output));

    // A plain client that does not speak the handshake is dropped, and the daemon serves on.
    let mut stranger = std::net::TcpStream::connect(&remote.address).unwrap();
    std::io::Write::write_all(&mut stranger, &[0u8; 64]).unwrap();
    stranger.set_read_timeout(Some(WATCHDOG)).unwrap();
    let mut rest = Vec::new();
    let _ = stranger.read_to_end(&mut rest);
    assert!(rest.len() <= 40, "only the daemon's greeting, never an answer: {rest:?}");
    let output = remote.remote(&["call", "local-echo", "still here"]);
    assert_eq!(stdout_of(&output).trim(), "still here", "{}", stderr_of(&output));
}

#[test]
fn killing_the_daemon_fails_the_remote_nodes_operations_with_typed_errors_not_a_hang() {
    let mut remote = RemoteDaemon::start();
    let _echo = remote.daemon.worker(&["echo", "echo"]);
    let local = remote.daemon.node();
    let slow = local.port("slow").open().unwrap();
    let node = remote.remote_node();
    let to_slow = node.connect("slow").unwrap();
    let mut looping = {
        let mut command = remote.remote_command(&["worker", "call-loop", "echo"], "app.psk");
        command.stderr(Stdio::piped());
        Worker::start(command)
    };
    std::thread::scope(|s| {
        // No deadline: only the daemon's death can end this call.
        let pending = s.spawn(|| to_slow.call("anyone?"));
        let _held = slow.recv_timeout(WATCHDOG).unwrap();
        remote.daemon.kill9();
        assert_eq!(pending.join().unwrap().unwrap_err(), CallError::PeerDied);
    });
    wait_until("the node sees its broker gone", || node.is_broker_gone());
    assert_eq!(node.connect("echo").unwrap_err(), ConnectError::BrokerGone);
    // The remote process calling in a loop ends with the typed error of its call.
    let status = wait_for_exit(&mut looping);
    assert!(!status.success());
    let mut said = String::new();
    looping.child.stderr.take().unwrap().read_to_string(&mut said).unwrap();
    // In flight when the daemon died (PeerDied), or made just after (the link was gone).
    assert!(
        said.contains("the server died before replying")
            || said.contains("the server is gone; the request was not sent"),
        "{said}"
    );
    // A new remote process finds nobody there.
    let output = remote.remote(&["call", "echo", "hi"]);
    assert!(!output.status.success());
    let error = stderr_of(&output);
    assert!(error.contains("no broker reachable at tcp://"), "{error}");
}

#[test]
fn a_killed_remote_node_is_a_dead_peer_to_its_callers_and_its_names_are_freed() {
    let remote = RemoteDaemon::start();
    let mut server =
        remote.remote_worker(&["echo", "remote-slow", "--delay-ms", "600000", "--print-calls"]);
    let printed = server.lines();
    let local = remote.daemon.node();
    let connection = local.connect("remote-slow").unwrap();
    std::thread::scope(|s| {
        let pending = s.spawn(|| connection.call("anyone?"));
        let line = printed.recv_timeout(WATCHDOG).unwrap();
        assert!(line.ends_with(": anyone?"), "the remote server took the call: {line}");
        server.kill9();
        assert_eq!(pending.join().unwrap().unwrap_err(), CallError::PeerDied);
    });
    wait_until("the remote node's port is free again", || local.port("remote-slow").open().is_ok());
}

/// Waits for `worker` to exit, polling (a hang fails the test after the watchdog).
fn wait_for_exit(worker: &mut Worker) -> std::process::ExitStatus {
    let mut status = None;
    wait_until("the worker exits", || {
        status = worker.child.try_wait().unwrap();
        status.is_some()
    });
    status.unwrap()
}

#[test]
fn a_node_with_a_certificate_attaches_over_mutual_tls_and_one_from_another_ca_is_refused() {
    use postbox_test::Authority;

    let dir = tempfile::tempdir().unwrap();
    let write = |file: &str, text: &str| {
        let path = dir.path().join(file);
        std::fs::write(&path, text).unwrap();
        path.to_str().unwrap().to_owned()
    };
    let ca = Authority::new("postbox test CA");
    let rogue = Authority::new("rogue CA");
    let broker = ca.issue("127.0.0.1");
    let node = ca.issue("app-node");
    let impostor = rogue.issue("app-node");
    let ca_file = write("ca.pem", &ca.pem());
    let policy = write(
        "policy.toml",
        "[[allow]]\nnames = ['**']\nremote_nodes = ['app-node']\noperations = ['call']\n",
    );
    let address = format!("127.0.0.1:{}", free_port());
    let daemon = Daemon::start_with(&[
        "--config",
        &policy,
        "--listen-tcp",
        &address,
        "--tcp-tls-cert",
        &write("broker.pem", &broker.cert),
        "--tcp-tls-key",
        &write("broker.key", &broker.key),
        "--tcp-tls-ca",
        &ca_file,
    ]);
    let _echo = daemon.worker(&["echo", "echo", "--upper"]);
    let call = |cert: &str, key: &str| {
        Command::new(exe())
            .args(["call", "echo", "over tls"])
            .env("POSTBOX_BROKER", format!("tcp://{address}"))
            .env("POSTBOX_BROKER_CERT", cert)
            .env("POSTBOX_BROKER_CERT_KEY", key)
            .env("POSTBOX_BROKER_CA", &ca_file)
            .env("POSTBOX_SOCKET", dir.path().join("no-broker-here.sock"))
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };
    // The broker's certificate names 127.0.0.1, the host the node dials.
    let output = call(&write("node.pem", &node.cert), &write("node.key", &node.key));
    assert!(output.status.success(), "{}", stderr_of(&output));
    assert_eq!(stdout_of(&output).trim(), "OVER TLS");

    let output = call(&write("rogue.pem", &impostor.cert), &write("rogue.key", &impostor.key));
    assert!(!output.status.success());
    let error = stderr_of(&output);
    assert!(error.contains("authentication with the broker at tcp://"), "{error}");
}
