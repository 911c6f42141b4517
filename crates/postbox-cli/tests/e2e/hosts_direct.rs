//! Direct links across hosts (docs/network.md §15), on loopback: two daemons linked over TCP
//! that both allow direct links, so that a connection from a node on host `a` to a port on
//! host `b` is one TCP connection between the caller and the server, set up by the brokers.
//!
//! The test process is the caller (a node on daemon a) and, where a test needs it, the
//! hostile dialer of b's direct-link listener.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::mpsc;
use std::time::Duration;

use postbox::{CallError, ConnectError};

use crate::util::{
    call_cut_by, calls_are_answered_in_upper_case, connect_remote, free_port, wait_until, Daemon,
    HostPair, WATCHDOG,
};

/// Host `a` dials host `b`; both allow direct links to each other; `b` takes them at
/// `direct_listen` and tells `a` to dial `advertise` (itself, or a relay of the test's).
struct DirectPair {
    hosts: HostPair,
    direct_listen: SocketAddr,
}

impl DirectPair {
    fn start(advertise: Option<SocketAddr>) -> Self {
        Self::start_with(advertise, None)
    }

    /// The same, with `a_policy` as daemon a's policy file.
    fn start_with(advertise: Option<SocketAddr>, a_policy: Option<&str>) -> Self {
        Self::start_with_policies(
            advertise,
            "[[allow]]\nnames = ['echo', 'slow']\nhosts = ['a']\noperations = ['send', 'call']\n",
            a_policy,
        )
    }

    /// The same, with `b_policy` as daemon b's policy file.
    fn start_with_policies(
        advertise: Option<SocketAddr>,
        b_policy: &str,
        a_policy: Option<&str>,
    ) -> Self {
        let direct_listen: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let direct_at = direct_listen.to_string();
        let advertised = advertise.map(|a| a.to_string());
        let mut b_args = vec!["--direct-peer", "a", "--direct-listen", &direct_at];
        if let Some(advertised) = &advertised {
            b_args.extend_from_slice(&["--direct-advertise", advertised]);
        }
        let hosts = HostPair::start_with(b_policy, a_policy, &b_args, &["--direct-peer", "b"]);
        Self { hosts, direct_listen }
    }

    /// The same from hosts files, with a pre-shared key on the host link (so each greeting
    /// must prove the key), `b` telling `a` to dial `advertise`.
    fn start_with_key(advertise: SocketAddr) -> Self {
        let port = free_port();
        let direct_listen: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let write = |file: &str, text: &str| {
            let path = dir.path().join(file);
            std::fs::write(&path, text).unwrap();
            path.to_str().unwrap().to_owned()
        };
        let key = write("link.psk", "a key both hosts hold, long enough\n");
        let policy = write(
            "policy.toml",
            "[[allow]]\nnames = ['echo']\nhosts = ['a']\noperations = ['send', 'call']\n",
        );
        let timers = "heartbeat_interval_ms = 200\nmissed_heartbeats = 5\n";
        let b_hosts = write(
            "b.toml",
            &format!(
                "name = 'b'\n{timers}direct_listen = '{direct_listen}'\n\
                 direct_advertise = '{advertise}'\n[peers]\n\
                 a = {{ listen = '127.0.0.1:{port}', psk_file = '{key}', direct = true }}\n"
            ),
        );
        let a_hosts = write(
            "a.toml",
            &format!(
                "name = 'a'\n{timers}[peers]\n\
                 b = {{ dial = '127.0.0.1:{port}', psk_file = '{key}', direct = true }}\n"
            ),
        );
        let b = Daemon::start_with(&["--hosts", &b_hosts, "--config", &policy]);
        let a = Daemon::start_with(&["--hosts", &a_hosts]);
        Self { hosts: HostPair { a, b, _files: dir }, direct_listen }
    }
}

#[test]
fn a_call_over_a_direct_link_is_answered_and_the_one_way_message_arrives() {
    let pair = DirectPair::start(None);
    let mut server = pair.hosts.b.worker(&["echo", "echo", "--upper", "--print"]);
    let printed = server.lines();
    let node = pair.hosts.a.node();
    let connection = connect_remote(&node, "echo@b");
    calls_are_answered_in_upper_case(&connection, 200);
    connection.send("one way").unwrap();
    let line = printed.recv_timeout(WATCHDOG).unwrap();
    // The server sees the remote caller under its stand-in, as through the gateway.
    assert!(line.starts_with("0.") && line.ends_with(": one way"), "{line}");
    // No channel crosses the host link: the brokers are off the data path.
    let hosts = node.hosts().unwrap();
    assert_eq!(hosts[0].channels, 0, "{hosts:?}");
    // Both brokers list the direct link with the peer host (`postbox ls`'s DIRECT), until the
    // caller closes it.
    assert_eq!(hosts[0].direct_links, 1, "{hosts:?}");
    let b_node = pair.hosts.b.node();
    assert_eq!(b_node.hosts().unwrap()[0].direct_links, 1);
    let listing = String::from_utf8_lossy(&pair.hosts.a.postbox(&["ls"]).stdout).into_owned();
    let header = listing.lines().find(|l| l.starts_with("HOST")).expect("a host table");
    let row = listing.lines().find(|l| l.starts_with("b ")).expect("a row for host b");
    // The link column holds spaces: count from the right (DIRECT, then DGRAMLOST).
    assert_eq!(header.split_whitespace().rev().nth(1), Some("DIRECT"), "{listing}");
    assert_eq!(row.split_whitespace().rev().nth(1), Some("1"), "{listing}");
    drop(connection);
    wait_until("a forgets the closed direct link", || {
        node.hosts().is_ok_and(|h| h[0].direct_links == 0)
    });
    wait_until("b forgets it too", || b_node.hosts().is_ok_and(|h| h[0].direct_links == 0));
}

#[test]
fn a_port_host_a_may_not_use_is_refused_with_access_denied_before_any_direct_link() {
    let pair = DirectPair::start(None);
    let _secret = pair.hosts.b.worker(&["echo", "secret"]);
    let _echo = pair.hosts.b.worker(&["echo", "echo"]);
    let node = pair.hosts.a.node();
    // Once the host link is up (echo@b connects), the refusal is b's policy speaking.
    drop(connect_remote(&node, "echo@b"));
    let denied = node.connect("secret@b");
    assert!(matches!(denied, Err(ConnectError::AccessDenied(_))), "{denied:?}");
    let missing = node.connect("nope@b");
    assert!(matches!(missing, Err(ConnectError::NoSuchPort(_))), "{missing:?}");
}

#[test]
fn killing_the_server_during_a_call_over_a_direct_link_fails_the_call_with_peer_died() {
    let pair = DirectPair::start(None);
    let mut slow = pair.hosts.b.worker(&["echo", "slow", "--delay-ms", "60000"]);
    let node = pair.hosts.a.node();
    let connection = connect_remote(&node, "slow@b");
    // No deadline: only the link's end can end this call.
    let (result, _, connection) = call_cut_by(connection, || {
        slow.kill9();
    })
    .expect("the call ended (no hang)");
    assert_eq!(result, Err(CallError::PeerDied));
    assert_eq!(connection.call("again"), Err(CallError::Disconnected("again".into())));
}

#[test]
fn a_made_up_token_and_a_replayed_greeting_are_refused_by_the_serving_broker() {
    // b tells a to dial a relay of the test's, which records a's greeting on its way to b.
    let relay = TcpListener::bind("127.0.0.1:0").unwrap();
    let pair = DirectPair::start(Some(relay.local_addr().unwrap()));
    let target = pair.direct_listen;
    let (greeting_tx, greeting_rx) = mpsc::channel();
    std::thread::spawn(move || {
        let (mut from_a, _) = relay.accept().unwrap();
        let mut greeting = [0u8; GREETING_LEN];
        from_a.read_exact(&mut greeting).unwrap();
        let mut to_b = TcpStream::connect(target).unwrap();
        to_b.write_all(&greeting).unwrap();
        greeting_tx.send(greeting).unwrap();
        let (mut a_in, mut b_out) = (from_a.try_clone().unwrap(), to_b.try_clone().unwrap());
        std::thread::spawn(move || std::io::copy(&mut a_in, &mut b_out));
        let _ = std::io::copy(&mut to_b, &mut from_a);
    });
    let _echo = pair.hosts.b.worker(&["echo", "echo", "--upper"]);
    let node = pair.hosts.a.node();
    let connection = connect_remote(&node, "echo@b");
    assert_eq!(connection.call_timeout("through", WATCHDOG).unwrap().body(), b"THROUGH");
    let greeting = greeting_rx.recv_timeout(WATCHDOG).unwrap();
    assert_eq!(&greeting[..8], b"PBDIRECT");

    // The same greeting again: its token was used once, and is not accepted twice.
    assert_ne!(verdict(target, &greeting), Some(ACCEPTED));
    // A token nobody issued.
    let mut made_up = greeting;
    made_up[8..40].copy_from_slice(&[0x41; 32]);
    assert_ne!(verdict(target, &made_up), Some(ACCEPTED));
    // Not a greeting at all.
    assert_ne!(verdict(target, &[0u8; GREETING_LEN]), Some(ACCEPTED));
    // The link that was made is unharmed.
    assert_eq!(connection.call_timeout("still", WATCHDOG).unwrap().body(), b"STILL");
}

#[test]
fn with_a_pre_shared_key_the_token_alone_does_not_make_a_direct_link() {
    // A relay of the test's between a and b plays the host that saw the token (plain host
    // links carry it in clear) but lacks the key: it changes the first greeting's proof.
    let relay = TcpListener::bind("127.0.0.1:0").unwrap();
    let pair = DirectPair::start_with_key(relay.local_addr().unwrap());
    let target = pair.direct_listen;
    std::thread::spawn(move || {
        for (index, from_a) in relay.incoming().enumerate() {
            let mut from_a = from_a.unwrap();
            let mut greeting = [0u8; GREETING_LEN];
            if from_a.read_exact(&mut greeting).is_err() {
                continue;
            }
            if index == 0 {
                greeting[GREETING_LEN - 1] ^= 1;
            }
            let mut to_b = TcpStream::connect(target).unwrap();
            to_b.write_all(&greeting).unwrap();
            let (mut a_in, mut b_out) = (from_a.try_clone().unwrap(), to_b.try_clone().unwrap());
            std::thread::spawn(move || std::io::copy(&mut a_in, &mut b_out));
            std::thread::spawn(move || std::io::copy(&mut to_b, &mut from_a));
        }
    });
    let _echo = pair.hosts.b.worker(&["echo", "echo", "--upper"]);
    let node = pair.hosts.a.node();
    // The host link may still be coming up (Unreachable, no dial yet); the first dial is the
    // one whose proof was changed, and b refuses it.
    let mut first = node.connect("echo@b");
    wait_until("host b answers", || {
        if matches!(first, Err(ConnectError::Unreachable(_))) {
            first = node.connect("echo@b");
            false
        } else {
            true
        }
    });
    assert!(matches!(first, Err(ConnectError::NoSuchPort(_))), "{first:?}");
    // The next greeting, proved with the key, makes the link.
    let connection = connect_remote(&node, "echo@b");
    assert_eq!(connection.call_timeout("keyed", WATCHDOG).unwrap().body(), b"KEYED");
    assert_eq!(node.hosts().unwrap()[0].channels, 0, "the call took the direct link");
}

#[test]
fn direct_links_count_against_the_callers_connection_quota_until_closed() {
    let pair = DirectPair::start_with(None, Some("[limits]\nconnections = 2\n"));
    let _echo = pair.hosts.b.worker(&["echo", "echo", "--upper"]);
    let node = pair.hosts.a.node();
    let first = connect_remote(&node, "echo@b");
    let second = node.connect("echo@b").unwrap();
    let third = node.connect("echo@b");
    assert!(matches!(third, Err(ConnectError::LimitExceeded(_))), "{third:?}");
    // Closing one gives its place back (once the broker heard of it).
    drop(first);
    let mut again = node.connect("echo@b");
    wait_until("a closed direct link no longer counts", || {
        if matches!(again, Err(ConnectError::LimitExceeded(_))) {
            again = node.connect("echo@b");
            false
        } else {
            true
        }
    });
    let again = again.unwrap();
    assert_eq!(again.call_timeout("again", WATCHDOG).unwrap().body(), b"AGAIN");
    assert_eq!(second.call_timeout("second", WATCHDOG).unwrap().body(), b"SECOND");
}

#[test]
fn a_direct_link_whose_dial_fails_goes_through_the_gateway_instead() {
    // b tells a to dial a port nobody listens on: the dial fails, b decided nothing, so a
    // asks for the port again relayed (docs/network.md §15, "Set-up" step 5).
    let nowhere: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let pair = DirectPair::start(Some(nowhere));
    let _echo = pair.hosts.b.worker(&["echo", "echo", "--upper"]);
    let node = pair.hosts.a.node();
    let connection = connect_remote(&node, "echo@b");
    calls_are_answered_in_upper_case(&connection, 20);
    let hosts = node.hosts().unwrap();
    assert_eq!((hosts[0].channels, hosts[0].direct_links), (1, 0), "relayed: {hosts:?}");
    // Every connect falls back alike (the warning is logged once), and each is answered.
    let again = connect_remote(&node, "echo@b");
    assert_eq!(again.call_timeout("again", WATCHDOG).unwrap().body(), b"AGAIN");
    let hosts = node.hosts().unwrap();
    assert_eq!((hosts[0].channels, hosts[0].direct_links), (2, 0), "{hosts:?}");
}

#[test]
fn a_fallen_back_connection_counts_once_against_channels_per_host() {
    // With room for one channel at b, the relayed open after a failed dial must find the
    // unredeemed token withdrawn (a closes the channel first), or it would be refused.
    let nowhere: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let pair = DirectPair::start_with_policies(
        Some(nowhere),
        "[limits]\nchannels_per_host = 1\n\
         [[allow]]\nnames = ['echo']\nhosts = ['a']\noperations = ['send', 'call']\n",
        None,
    );
    let _echo = pair.hosts.b.worker(&["echo", "echo", "--upper"]);
    let node = pair.hosts.a.node();
    let connection = connect_remote(&node, "echo@b");
    assert_eq!(connection.call_timeout("once", WATCHDOG).unwrap().body(), b"ONCE");
    let b_node = pair.hosts.b.node();
    let b_hosts = b_node.hosts().unwrap();
    assert_eq!((b_hosts[0].channels, b_hosts[0].direct_links), (1, 0), "{b_hosts:?}");
    let second = node.connect("echo@b");
    assert!(matches!(second, Err(ConnectError::LimitExceeded(_))), "{second:?}");
    drop(connection);
    wait_until("the closed channel gives its place back", || {
        node.connect("echo@b").is_ok_and(|c| c.call_timeout("x", WATCHDOG).is_ok())
    });
}

#[test]
fn without_direct_on_the_serving_host_the_connection_goes_through_the_gateways() {
    // a asks for direct links; b does not take them: b answers as before, with a channel.
    let pair = HostPair::start_with(
        "[[allow]]\nnames = ['echo']\nhosts = ['a']\noperations = ['send', 'call']\n",
        None,
        &[],
        &["--direct-peer", "b"],
    );
    let (a, b) = (&pair.a, &pair.b);
    let _echo = b.worker(&["echo", "echo", "--upper"]);
    let node = a.node();
    let connection = connect_remote(&node, "echo@b");
    assert_eq!(connection.call_timeout("relayed", WATCHDOG).unwrap().body(), b"RELAYED");
    assert_eq!(node.hosts().unwrap()[0].channels, 1, "a channel on the host link");
}

#[test]
fn a_peer_host_is_held_to_channels_per_host_over_direct_links_too() {
    // docs/network.md §5 "Limits", docs/security.md §5: a peer host, all its nodes together,
    // may have at most `channels_per_host` connections open here; beyond, LimitExceeded.
    let pair = DirectPair::start_with_policies(
        None,
        "[limits]\nchannels_per_host = 2\n\
         [[allow]]\nnames = ['echo']\nhosts = ['a']\noperations = ['send', 'call']\n",
        None,
    );
    let (a, b) = (&pair.hosts.a, &pair.hosts.b);
    let _echo = b.worker(&["echo", "echo", "--upper"]);
    let node = a.node();
    let mut open = vec![connect_remote(&node, "echo@b")];
    let mut refused = None;
    for _ in 0..8 {
        match node.connect("echo@b") {
            Ok(connection) => open.push(connection),
            Err(error) => {
                refused = Some(error);
                break;
            }
        }
    }
    for connection in &open {
        assert_eq!(connection.call_timeout("x", WATCHDOG).unwrap().body(), b"X");
    }
    assert_eq!(node.hosts().unwrap()[0].channels, 0, "the links are direct");
    assert!(
        open.len() <= 2 && matches!(refused, Some(ConnectError::LimitExceeded(_))),
        "host a holds {} links to b's port with channels_per_host = 2 ({refused:?})",
        open.len()
    );
    // A link closed gives its place back once the server's node reports it closed.
    drop(open.pop());
    wait_until("a closed direct link gives its place back", || node.connect("echo@b").is_ok());
}

#[test]
fn a_peer_host_cannot_make_b_hold_more_direct_link_tokens_than_channels_per_host() {
    use postbox_core::reliable::SessionConfig;
    use postbox_transport::host_link::{Event, HostLink, HostLinkConfig, StreamId};
    // b takes host a on `port` (plain TCP) and allows it direct links; a is played by the
    // test: a peer broker that sends `Open { direct }` for b's port and never dials.
    let port = free_port();
    let direct_listen = format!("127.0.0.1:{}", free_port());
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.toml");
    std::fs::write(
        &policy,
        "[limits]\nchannels_per_host = 2\n\
         [[allow]]\nnames = ['echo']\nhosts = ['a']\noperations = ['send', 'call']\n",
    )
    .unwrap();
    let listen = format!("a=listen:127.0.0.1:{port}");
    let mut b_args = vec!["--host-name", "b", "--peer", &listen, "--direct-peer", "a"];
    b_args.extend_from_slice(&["--direct-listen", &direct_listen]);
    b_args.extend_from_slice(&["--config", policy.to_str().unwrap()]);
    b_args.extend_from_slice(&["--heartbeat", "200ms", "--missed-heartbeats", "5"]);
    let b = Daemon::start_with(&b_args);
    let _echo = b.worker(&["echo", "echo"]);
    let session = SessionConfig {
        heartbeat_interval: Duration::from_millis(100),
        missed_heartbeats: 10,
        ..SessionConfig::default()
    };
    let config = HostLinkConfig { session, ..HostLinkConfig::default() };
    let link = HostLink::dial(format!("127.0.0.1:{port}").parse().unwrap(), config).unwrap();
    const OPENS: u64 = 100;
    for number in 1..=OPENS {
        // docs/network.md §4: Open (kind 9 with `direct`), opened by the sender.
        let mut open = vec![9u8, 0];
        open.extend_from_slice(&number.to_le_bytes());
        open.push(0); // target: a port
        open.extend_from_slice(&4u16.to_le_bytes());
        open.extend_from_slice(b"echo");
        open.push(2); // Rights::CALL
        open.extend_from_slice(&0u16.to_le_bytes()); // client: no host (a's own node)
        open.extend_from_slice(&0u64.to_le_bytes()); // incarnation: whichever run
        open.extend_from_slice(&(1000 + number as u32).to_le_bytes()); // pid
        open.extend_from_slice(&0u32.to_le_bytes()); // generation
        let stream = StreamId(1 + ((number * 2 + 1) % 64) as u32);
        link.send_timeout(stream, open, WATCHDOG).unwrap();
    }
    let (mut offered, mut refused) = (0u64, 0u64);
    // Every open is answered (the watchdog only guards a hang).
    let deadline = std::time::Instant::now() + WATCHDOG;
    while offered + refused < OPENS && std::time::Instant::now() < deadline {
        if let Ok(Event::Delivered { payload, .. }) = link.recv_timeout(Duration::from_millis(200))
        {
            match payload.first() {
                Some(10) => offered += 1, // OpenedDirect: a live token
                Some(3) => refused += 1,  // Refused
                _ => {}
            }
        }
    }
    assert_eq!(offered + refused, OPENS, "every open was answered");
    assert_eq!(offered, 2, "b issued {offered} live tokens with channels_per_host = 2");
}

#[test]
fn a_busy_server_does_not_cost_its_callers_their_direct_link() {
    // A server busy for 4 s on one call (heartbeat bound: 200 ms × 5 = 1 s) while its caller
    // keeps sending one-way messages: back-pressure (DESIGN.md §2: a full link blocks the
    // sender), not a dead peer. The server is alive throughout and answers in the end.
    let pair = DirectPair::start(None);
    let _slow = pair.hosts.b.worker(&["echo", "slow", "--delay-ms", "4000"]);
    let node = pair.hosts.a.node();
    let connection = std::sync::Arc::new(connect_remote(&node, "slow@b"));
    assert_eq!(node.hosts().unwrap()[0].channels, 0, "the link is direct");
    let sender = std::sync::Arc::clone(&connection);
    let flood = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(200));
        for _ in 0..64 {
            if sender.send_timeout(vec![0x5au8; 1 << 20], Duration::from_secs(8)).is_err() {
                break;
            }
        }
    });
    let reply = connection.call_timeout("are you there?", WATCHDOG);
    flood.join().unwrap();
    assert_eq!(reply.map(|r| r.body().to_vec()), Ok(b"are you there?".to_vec()));
}

#[test]
fn a_tls_or_quic_host_link_is_refused_direct_links_at_start_rather_than_losing_its_encryption() {
    // Direct links are plain TCP (docs/network.md §15): allowed over a mutual-TLS or QUIC host
    // link, calls and replies would cross the network in the clear, so the daemon refuses
    // the configuration, from the hosts file or from the flag, and says why.
    let dir = tempfile::tempdir().unwrap();
    let ca = postbox_test::Authority::new("postbox test CA");
    let port = free_port();
    let peer = format!("a = {{ listen = '127.0.0.1:{port}', direct = true }}");
    let tls_direct = crate::util::tls_hosts_file(dir.path(), "b", &ca.issue("b"), &ca, &peer);
    let stderr = refused_start(&["--hosts", &tls_direct]);
    assert!(stderr.contains("direct links are plain TCP"), "{stderr}");

    let peer = format!("a = {{ listen = '127.0.0.1:{port}' }}");
    let tls = crate::util::tls_hosts_file(dir.path(), "c", &ca.issue("c"), &ca, &peer);
    let stderr = refused_start(&["--hosts", &tls, "--direct-peer", "a"]);
    assert!(stderr.contains("direct links are plain TCP"), "{stderr}");

    // QUIC always runs TLS: a QUIC peer given by flag is refused direct links too.
    let quic = format!("d=quic-listen:127.0.0.1:{}", crate::util::free_udp_port());
    let stderr = refused_start(&["--hosts", &tls, "--peer", &quic, "--direct-peer", "d"]);
    assert!(stderr.contains("direct links are plain TCP"), "{stderr}");
}

#[test]
fn an_offer_of_a_direct_link_for_an_open_not_sent_as_direct_is_not_dialed() {
    use postbox_core::reliable::SessionConfig;
    use postbox_core::PortSpec;
    use postbox_transport::host_link::{Event, HostLink, HostLinkConfig};
    // b is played by the test: a peer broker that answers a's subscription (a channel a never
    // asks to be direct, docs/network.md §15) with `OpenedDirect`, naming an address of the
    // test's. a must not dial it: the peer chooses what a dials only for a direct open.
    let host_listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let dial = format!("b=dial:{}", host_listener.local_addr().unwrap());
    let bait = TcpListener::bind("127.0.0.1:0").unwrap();
    bait.set_nonblocking(true).unwrap();
    let bait_address = bait.local_addr().unwrap().to_string();
    let session = SessionConfig {
        heartbeat_interval: Duration::from_millis(100),
        missed_heartbeats: 10,
        ..SessionConfig::default()
    };
    let config = HostLinkConfig { session, ..HostLinkConfig::default() };
    let link = HostLink::listen(host_listener, config).unwrap();
    let a = Daemon::start_with(&[
        "--host-name",
        "a",
        "--peer",
        &dial,
        "--direct-peer",
        "b",
        "--heartbeat",
        "200ms",
        "--missed-heartbeats",
        "5",
    ]);
    let fake_b = std::thread::spawn(move || {
        let deadline = std::time::Instant::now() + WATCHDOG;
        while std::time::Instant::now() < deadline {
            let Ok(Event::Delivered { stream, payload, .. }) =
                link.recv_timeout(Duration::from_millis(100))
            else {
                continue;
            };
            // docs/network.md §4: Open (1) of a subscription (target tag 3).
            if payload.len() > 10 && payload[0] == 1 && payload[10] == 3 {
                let mut offer = vec![10u8, 1]; // OpenedDirect; the receiver opened the channel
                offer.extend_from_slice(&payload[2..10]);
                PortSpec::default().encode(&mut offer);
                offer.push(1); // Rights::SEND
                offer.extend_from_slice(&64u32.to_le_bytes());
                offer.extend_from_slice(&(1u64 << 20).to_le_bytes());
                offer.extend_from_slice(&0u16.to_le_bytes()); // server: b's own node
                offer.extend_from_slice(&0u64.to_le_bytes());
                offer.extend_from_slice(&4321u32.to_le_bytes());
                offer.extend_from_slice(&0u32.to_le_bytes());
                offer.extend_from_slice(&(bait_address.len() as u16).to_le_bytes());
                offer.extend_from_slice(bait_address.as_bytes());
                offer.extend_from_slice(&[7u8; 32]);
                link.send_timeout(stream, offer, WATCHDOG).unwrap();
                return link;
            }
        }
        panic!("a never opened the subscription's channel");
    });
    let node = a.node();
    let mut subscribed = node.subscribe("/news@b");
    // The host link may still be coming up: the subscription's open is retried until it gets
    // through (the fake b answers the first it sees).
    while matches!(subscribed, Err(ConnectError::Unreachable(_))) && !fake_b.is_finished() {
        std::thread::sleep(Duration::from_millis(50));
        subscribed = node.subscribe("/news@b");
    }
    let _link = fake_b.join().unwrap();
    assert!(subscribed.is_err(), "the offer was taken for a subscription");
    let dialed = bait.accept();
    assert!(
        matches!(&dialed, Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "a dialed the address b named for a channel it did not ask to be direct: {dialed:?}"
    );
}

/// Runs `postbox daemon` with `args`, which it must refuse; its standard error.
fn refused_start(args: &[&str]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let mut child = std::process::Command::new(crate::util::exe())
        .arg("--socket")
        .arg(dir.path().join("broker.sock"))
        .arg("daemon")
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let started = std::time::Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > WATCHDOG {
            let _ = child.kill();
            panic!("the daemon started with {args:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    child.stderr.take().unwrap().read_to_string(&mut stderr).unwrap();
    assert!(!status.success(), "{args:?}: {stderr}");
    stderr
}

/// Dials b's direct-link listener at `target`, says `greeting`, and returns the verdict byte
/// (`None` when the connection closes without one).
fn verdict(target: SocketAddr, greeting: &[u8]) -> Option<u8> {
    let mut stream = TcpStream::connect(target).unwrap();
    stream.set_read_timeout(Some(WATCHDOG)).unwrap();
    stream.write_all(greeting).unwrap();
    let mut byte = [0u8; 1];
    match stream.read(&mut byte) {
        Ok(1) => Some(byte[0]),
        Ok(_) => None,
        Err(error) if error.kind() == std::io::ErrorKind::ConnectionReset => None,
        Err(error) => panic!("no verdict and no close: {error}"),
    }
}

/// `PBDIRECT`, a 32-byte token and a 32-byte proof (docs/network.md §15).
const GREETING_LEN: usize = 8 + 32 + 32;
/// The verdict byte of an accepted direct link.
const ACCEPTED: u8 = 1;
