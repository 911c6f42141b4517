//! The shell commands against a real daemon: send, recv, call, ls.

use std::io::Write;
use std::process::Stdio;

use crate::util::{stderr_of, stdout_of, wait_until, Daemon};

fn port_is_listed(daemon: &Daemon, name: &str) -> bool {
    let node = daemon.node();
    node.list().unwrap().ports.iter().any(|p| p.name.as_str() == name)
}

#[test]
fn cli_send_reaches_a_cli_recv_in_another_process() {
    let daemon = Daemon::start();
    let recv = daemon
        .command(&["recv", "inbox/q", "--count", "2", "--timeout", "20s"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    wait_until("recv has opened its port", || port_is_listed(&daemon, "inbox/q"));
    assert!(daemon.postbox(&["send", "inbox/q", "first"]).status.success());
    let mut send = daemon.command(&["send", "inbox/q", "-"]).stdin(Stdio::piped()).spawn().unwrap();
    send.stdin.take().unwrap().write_all(b"second, from stdin").unwrap();
    assert!(send.wait().unwrap().success());
    let output = recv.wait_with_output().unwrap();
    assert!(output.status.success(), "{}", stderr_of(&output));
    assert_eq!(stdout_of(&output), "first\nsecond, from stdin\n");
}

#[test]
fn cli_call_prints_the_reply_of_a_server_process() {
    let daemon = Daemon::start();
    let _server = daemon.worker(&["echo", "svc/upper", "--upper"]);
    let output = daemon.postbox(&["call", "svc/upper", "shout this"]);
    assert!(output.status.success(), "{}", stderr_of(&output));
    assert_eq!(stdout_of(&output), "SHOUT THIS\n");
}

#[test]
fn cli_call_reports_a_remote_error_and_fails() {
    let daemon = Daemon::start();
    let _server = daemon.worker(&["echo", "svc/fail", "--fail"]);
    let output = daemon.postbox(&["call", "svc/fail", "bad request"]);
    assert!(!output.status.success());
    assert!(
        stderr_of(&output).contains("answered with an error: bad request"),
        "{}",
        stderr_of(&output)
    );
}

#[test]
fn cli_recv_with_timeout_fails_clearly_when_nothing_arrives() {
    let daemon = Daemon::start();
    let output = daemon.postbox(&["recv", "quiet", "--timeout", "200ms"]);
    assert!(!output.status.success());
    assert!(stderr_of(&output).contains("no message on quiet"), "{}", stderr_of(&output));
}

#[test]
fn ls_shows_names_owners_and_connection_counts() {
    let daemon = Daemon::start();
    let server = daemon.worker(&["echo", "svc/listed"]);
    let _client = daemon.worker(&["call-loop", "svc/listed"]);
    let output = daemon.postbox(&["ls"]);
    assert!(output.status.success(), "{}", stderr_of(&output));
    let text = stdout_of(&output);
    let row = text.lines().find(|l| l.starts_with("svc/listed")).expect("port row");
    let columns: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(columns[1], "port");
    assert_eq!(columns[2], server.process_id().to_string());
    assert_eq!(columns[3], rustix::process::getuid().as_raw().to_string());
    assert_eq!(columns[5], "1", "one client connected: {row}");
    assert!(text.contains("1 ports"), "{text}");
}

#[test]
fn cli_reports_an_unknown_name_and_a_missing_broker_clearly() {
    let daemon = Daemon::start();
    let output = daemon.postbox(&["send", "nobody/here", "x"]);
    assert!(!output.status.success());
    assert!(stderr_of(&output).contains("no such port"), "{}", stderr_of(&output));
    let output = daemon.postbox(&["call", "bad name", "x"]);
    assert!(!output.status.success());
    assert!(stderr_of(&output).contains("invalid port name"), "{}", stderr_of(&output));
    let missing = daemon.socket().with_file_name("absent.sock");
    let output = std::process::Command::new(crate::util::exe())
        .arg("--socket")
        .arg(&missing)
        .arg("ls")
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(stderr_of(&output).contains("no broker at"), "{}", stderr_of(&output));
}

#[test]
fn a_second_daemon_on_a_live_socket_refuses_and_a_stale_socket_is_replaced() {
    let mut daemon = Daemon::start();
    let output = daemon.postbox(&["--socket", daemon.socket().to_str().unwrap(), "daemon"]);
    assert!(!output.status.success());
    assert!(stderr_of(&output).contains("already running"), "{}", stderr_of(&output));
    daemon.kill9();
    assert!(daemon.socket().exists(), "kill -9 leaves the socket file behind");
    let mut second = daemon
        .command(&["--socket", daemon.socket().to_str().unwrap(), "daemon"])
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_until("the new daemon serves the old path", || {
        postbox::Node::attach_to(daemon.socket()).is_ok()
    });
    second.kill().unwrap();
    second.wait().unwrap();
}
