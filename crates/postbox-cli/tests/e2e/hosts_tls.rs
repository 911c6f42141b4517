//! Two daemons linked over mutual TLS, configured by their hosts files (docs/network.md §10):
//! a call to `echo@b` crosses, `ls` shows the link as TLS; a broker that trusts another CA
//! never opens the link, so nothing crosses.

use std::path::Path;
use std::time::{Duration, Instant};

use postbox::HostState;
use postbox_test::Authority;

use crate::util::{
    connect_remote, free_port, stderr_of, stdout_of, tls_hosts_file, Daemon, WATCHDOG,
};

/// Host b (listening) and host a (dialing it), each with its certificate; a trusts `a_trusts`.
fn pair(dir: &Path, ca: &Authority, a_trusts: &Authority) -> (Daemon, Daemon) {
    let port = free_port();
    let policy = dir.join("policy.toml");
    std::fs::write(
        &policy,
        "[[allow]]\nnames = ['echo']\nhosts = ['a']\noperations = ['send', 'call']\n",
    )
    .unwrap();
    let b_hosts = tls_hosts_file(
        dir,
        "b",
        &ca.issue("b"),
        ca,
        &format!("a = {{ listen = '127.0.0.1:{port}' }}"),
    );
    let a_hosts = tls_hosts_file(
        dir,
        "a",
        &ca.issue("a"),
        a_trusts,
        &format!("b = {{ dial = '127.0.0.1:{port}' }}"),
    );
    let b = Daemon::start_with(&["--hosts", &b_hosts, "--config", policy.to_str().unwrap()]);
    let a = Daemon::start_with(&["--hosts", &a_hosts]);
    (a, b)
}

#[test]
fn a_call_crosses_a_mutual_tls_host_link_and_ls_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Authority::new("postbox test CA");
    let (a, b) = pair(dir.path(), &ca, &ca);
    let _server = b.worker(&["echo", "echo", "--upper"]);
    let node = a.node();
    let connection = connect_remote(&node, "echo@b");
    for i in 0..20 {
        let body = format!("over tls {i}");
        let reply = connection.call_timeout(body.as_str(), WATCHDOG).unwrap();
        assert_eq!(reply.body(), body.to_uppercase().as_bytes());
    }
    let ls = a.postbox(&["ls"]);
    assert!(ls.status.success(), "{}", stderr_of(&ls));
    let listing = stdout_of(&ls);
    assert!(listing.contains("(tls)"), "{listing}");
}

#[test]
fn a_broker_that_trusts_another_ca_never_opens_the_link() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Authority::new("postbox test CA");
    let rogue = Authority::new("another CA");
    let (a, b) = pair(dir.path(), &ca, &rogue);
    let _server = b.worker(&["echo", "echo", "--upper"]);
    let node = a.node();
    // Several handshakes' worth of tries: every one refused, none a hang.
    let until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < until {
        assert!(node.connect("echo@b").is_err(), "a link that b's certificate cannot open");
        std::thread::sleep(Duration::from_millis(100));
    }
    let hosts = node.hosts().unwrap();
    assert_eq!(hosts.len(), 1, "{hosts:?}");
    assert_ne!(hosts[0].state, HostState::Open, "{hosts:?}");
}
