//! Two daemons linked over QUIC (docs/network.md §12): b from its hosts file's `[tls]` and the
//! flag `--peer a=quic-listen:…`, a from a hosts file whose peer says `transport = "quic"`.
//! Calls to `echo@b` cross, and `ls` shows the link as QUIC; a daemon asked for QUIC without
//! TLS refuses to start.

use std::process::Command;

use postbox::HostState;
use postbox_test::Authority;

use crate::util::{
    connect_remote, exe, free_udp_port, stderr_of, stdout_of, tls_hosts_file, Daemon, WATCHDOG,
};

#[test]
fn a_call_crosses_a_quic_host_link_and_ls_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Authority::new("postbox test CA");
    let port = free_udp_port();
    let policy = dir.path().join("policy.toml");
    std::fs::write(
        &policy,
        "[[allow]]\nnames = ['echo']\nhosts = ['a']\noperations = ['send', 'call']\n",
    )
    .unwrap();
    // b: the peer comes from the flag, its TLS settings from the file's [tls].
    let b_hosts = tls_hosts_file(dir.path(), "b", &ca.issue("b"), &ca, "");
    let listen = format!("a=quic-listen:127.0.0.1:{port}");
    let b = Daemon::start_with(&[
        "--hosts",
        &b_hosts,
        "--peer",
        &listen,
        "--config",
        policy.to_str().unwrap(),
    ]);
    let a_peer = format!("b = {{ dial = '127.0.0.1:{port}', transport = 'quic' }}");
    let a_hosts = tls_hosts_file(dir.path(), "a", &ca.issue("a"), &ca, &a_peer);
    let a = Daemon::start_with(&["--hosts", &a_hosts]);

    let _server = b.worker(&["echo", "echo", "--upper"]);
    let node = a.node();
    let connection = connect_remote(&node, "echo@b");
    for i in 0..20 {
        let body = format!("over quic {i}");
        let reply = connection.call_timeout(body.as_str(), WATCHDOG).unwrap();
        assert_eq!(reply.body(), body.to_uppercase().as_bytes());
    }
    let call = a.postbox(&["call", "echo@b", "from the cli"]);
    assert!(call.status.success(), "{}", stderr_of(&call));
    assert!(stdout_of(&call).contains("FROM THE CLI"), "{}", stdout_of(&call));

    let hosts = node.hosts().unwrap();
    assert_eq!(hosts.len(), 1, "{hosts:?}");
    assert_eq!(hosts[0].state, HostState::Open, "{hosts:?}");
    assert_eq!(hosts[0].connect, format!("dial 127.0.0.1:{port} (quic)"));
    let ls = a.postbox(&["ls"]);
    assert!(ls.status.success(), "{}", stderr_of(&ls));
    let listing = stdout_of(&ls);
    assert!(listing.contains("(quic)"), "{listing}");
    let ls = b.postbox(&["ls"]);
    assert!(
        stdout_of(&ls).contains(&format!("listen 127.0.0.1:{port} (quic)")),
        "{}",
        stdout_of(&ls)
    );
}

#[test]
fn a_daemon_asked_for_quic_without_tls_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let output = Command::new(exe())
        .arg("--socket")
        .arg(dir.path().join("broker.sock"))
        .args(["daemon", "--host-name", "a", "--peer", "b=quic-dial:127.0.0.1:9"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = stderr_of(&output);
    assert!(stderr.contains("QUIC needs TLS"), "{stderr}");
}
