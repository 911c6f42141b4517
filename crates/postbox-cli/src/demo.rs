//! `postbox demo`: an embedded broker, real child processes, every core primitive, a killed
//! server, and a latency table against raw Unix sockets measured in the same run.

use crate::output::outln;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::process::Stdio;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use postbox::HostsConfig;
use postbox::{Broker, CallError, Message};

use crate::latency::{micros, Samples};
use crate::placement::{self, Placement};
use crate::spawner::Spawner;

pub(crate) fn run(rounds: usize, placement: &str) -> Result<()> {
    let placements = match placement {
        "both" => Placement::available(),
        one => vec![Placement::parse(one).context("--placement: same-core, cross-core or both")?],
    };
    let broker = Broker::embedded().context("start the embedded broker")?;
    let socket = broker.socket_path().to_owned();
    outln!("postbox demo")?;
    outln!("  embedded broker listening on {}", socket.display())?;
    let node = broker.node()?;
    outln!("  this process is node {}\n", node.process_id())?;
    let spawner = Spawner { socket: socket.clone() };

    heading("1. send / recv between processes (indirect addressing: a named port)")?;
    let log = node.port("demo/log").open()?;
    for i in 1..=3 {
        let text = format!("hello #{i} from a child process");
        spawner.run_to_end(&["send", "demo/log", &text])?;
    }
    for _ in 0..3 {
        let envelope = log.recv_timeout(Duration::from_secs(10))?;
        outln!("  received {:?} from node {}", text(envelope.body()), envelope.sender())?;
    }

    heading("2. call / reply (RPC) with a server in another process")?;
    let mut upper = spawner.worker(&["echo", "demo/upper", "--upper"])?;
    let connection = node.connect("demo/upper")?;
    let started = Instant::now();
    let reply = connection.call("make me loud")?;
    outln!(
        "  call(\"make me loud\") -> {:?} from node {} in {}",
        text(reply.body()),
        connection.server(),
        micros(started.elapsed())
    )?;

    heading("3. direct addressing: inboxes by process id, recv_from a chosen sender")?;
    let me = node.process_id().to_string();
    let mut first =
        spawner.worker(&["send-to", &me, "first child, message 1", "first child, message 2"])?;
    first.wait_for_exit()?;
    let mut second = spawner.worker(&["send-to", &me, "second child, its only message"])?;
    second.wait_for_exit()?;
    outln!("  children {} and {} sent to inbox {me}, the first child first", first.id, second.id)?;
    let picked = node.inbox().recv_from(second.process_id()?)?;
    outln!("  inbox.recv_from({}) -> {:?}", picked.sender(), text(picked.body()))?;
    for _ in 0..2 {
        let e = node.inbox().recv_timeout(Duration::from_secs(10))?;
        outln!("  inbox.recv()            -> {:?} from {}", text(e.body()), e.sender())?;
    }

    heading("4. buffering: rendezvous, priorities, drop-oldest")?;
    buffering(&node, &spawner)?;

    heading("5. a mailbox (owned by the broker) shared by three worker processes, one killed")?;
    mailbox(&node, &spawner)?;

    heading("6. a topic: every subscriber process gets every message")?;
    topic(&node, &spawner)?;

    heading("7. a server killed (SIGKILL) in the middle of a call")?;
    let mut slow = spawner.worker(&["echo", "demo/slow", "--delay-ms", "60000"])?;
    let victim = node.connect("demo/slow")?;
    let (killed_tx, killed_rx) = mpsc::channel();
    let pid = slow.child.id();
    let killer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(300));
        let at = Instant::now();
        let _ = slow.child.kill();
        let _ = slow.child.wait();
        let _ = killed_tx.send(at);
    });
    let result = victim.call("will you answer?");
    let noticed = Instant::now();
    killer.join().map_err(|_| anyhow::anyhow!("killer thread panicked"))?;
    let killed_at = killed_rx.recv()?;
    match result {
        Err(CallError::PeerDied) => outln!(
            "  kill -9 {pid}: the pending call failed with PeerDied {} after the kill (no timeout)",
            micros(noticed.saturating_duration_since(killed_at))
        )?,
        other => bail!("expected PeerDied, got {other:?}"),
    }

    heading("8. postbox ls")?;
    for port in node.list()?.ports {
        outln!(
            "  {:<14} owner {:<10} connections {}",
            port.name.as_str(),
            port.owner.process_id.to_string(),
            port.connections
        )?;
    }

    heading("9. shared memory: large payloads read in place (4 MiB each)")?;
    zero_copy(&node, &spawner)?;

    heading("10. typed services: a trait served by another process, checked at bind")?;
    typed(&node, &spawner)?;

    heading(
        "11. access control: a policy per name and operation, a capability granted and revoked",
    )?;
    access()?;

    heading("12. across hosts: a second broker (host b) on loopback TCP, reached as port@b")?;
    hosts()?;

    heading(&format!("13. latency: call round trip, 64-byte messages, {rounds} rounds each"))?;
    outln!("  client and servers are pinned alike for both rows of a table (docs/benchmarks.md)")?;
    let all_cpus = placement::allowed_cpus();
    for (index, placement) in placements.into_iter().enumerate() {
        let name = format!("demo/latency-{index}");
        let (theirs_raw, ours_raw) = UnixStream::pair().context("create the raw socketpair")?;
        let (server, raw_server) = placement.apply(|| {
            let server = spawner.worker(&["echo", &name]);
            let raw = spawner.worker_with_stdin(&["raw-echo", "--size", "64"], theirs_raw);
            (server, raw)
        })?;
        let (_server, mut raw_server) = (server?, raw_server?);
        let mut raw = ours_raw;
        let echo = node.connect(&name)?;
        let measured = measure(&echo, &mut raw, rounds);
        placement::unpin_current_thread(&all_cpus)?;
        let (postbox_samples, raw_samples) = measured?;
        drop(raw);
        raw_server.wait_for_exit()?;
        outln!("\n  {}:", placement.label())?;
        print_table(&postbox_samples, &raw_samples)?;
    }

    drop(connection);
    upper.kill();
    outln!("\ndemo finished: every step above ran across real processes.")?;
    Ok(())
}

/// A rendezvous port, priority order, and a drop-oldest port, each fed by a child process.
fn buffering(node: &postbox::Node, spawner: &Spawner) -> Result<()> {
    let meet = node.port("demo/meet").capacity(0).open()?;
    let mut sender = spawner.worker(&["send-many", "demo/meet", "2", "--report"])?;
    for i in 0..2 {
        std::thread::sleep(Duration::from_millis(300));
        let started = Instant::now();
        let envelope = meet.recv_timeout(Duration::from_secs(10))?;
        let line = sender.read_line()?;
        outln!(
            "  rendezvous: took {:?} after 300 ms; the sender's send returned only then ({line:?}, {} later)",
            text(envelope.body()),
            micros(started.elapsed())
        )?;
        if line != format!("sent {i}") {
            bail!("the rendezvous sender reported {line:?} out of turn");
        }
    }
    sender.wait_for_exit()?;

    let prio = node.port("demo/prio").open()?;
    let specs = ["0/0/low", "31/0/urgent", "5/0/normal", "0/0/low again"];
    let mut args = vec!["send-spec", "demo/prio"];
    args.extend(specs);
    spawner.worker(&args)?.wait_for_exit()?;
    let order: Vec<String> = (0..specs.len())
        .map(|_| prio.recv_timeout(Duration::from_secs(10)).map(|e| text(e.body())))
        .collect::<Result<_, _>>()?;
    outln!(
        "  priorities: sent {:?} with priorities 0, 31, 5, 0; received {order:?}",
        ["low", "urgent", "normal", "low again"]
    )?;

    let latest =
        node.port("demo/latest").capacity(3).overflow(postbox::Overflow::DropOldest).open()?;
    spawner.worker(&["send-many", "demo/latest", "10"])?.wait_for_exit()?;
    let first = latest.recv_timeout(Duration::from_secs(10))?;
    let rest: Vec<String> = (0..2)
        .map(|_| latest.recv_timeout(Duration::from_secs(10)).map(|e| text(e.body())))
        .collect::<Result<_, _>>()?;
    outln!(
        "  drop-oldest, capacity 3: a child sent 0..9 without waiting; received {:?} (lost {} before it), then {rest:?}",
        text(first.body()),
        first.lost()
    )?;
    Ok(())
}

/// Three workers share a mailbox; a fourth takes a job and is killed before taking it in, and
/// one of the three is killed half-way: every job no worker took in is done by another.
fn mailbox(node: &postbox::Node, spawner: &Spawner) -> Result<()> {
    let jobs = node.mailbox("/demo/jobs").capacity(100).create()?;
    let sender = node.connect("/demo/jobs")?;
    sender.send("job 0")?;
    let mut hog = spawner.worker(&["mailbox-hog", "/demo/jobs"])?;
    let held = hog.read_line()?;
    hog.kill();
    outln!(
        "  a worker took {:?} off the mailbox, then was killed before taking it in",
        held.trim_start_matches("holding ")
    )?;
    let (tx, rx) = mpsc::channel();
    let mut workers = Vec::new();
    for index in 0..3 {
        let mut worker = spawner.worker(&["mailbox-worker", "/demo/jobs"])?;
        let mut stdout = worker.stdout.take().context("worker output")?;
        let tx = tx.clone();
        std::thread::spawn(move || {
            let mut line = String::new();
            while stdout.read_line(&mut line).is_ok_and(|n| n > 0) {
                if tx.send((index, line.trim_end().to_owned())).is_err() {
                    return;
                }
                line.clear();
            }
        });
        workers.push(worker);
    }
    for i in 1..30 {
        sender.send(format!("job {i}").as_str())?;
    }
    let mut done = std::collections::BTreeMap::new();
    let mut per_worker = [0usize; 3];
    let mut killed = false;
    while done.len() < 30 {
        // A job is the receiver's once it is taken: the killed worker may have taken one more
        // job than it printed, which is then done by nobody (quiet for a while says so).
        let line = match rx.recv_timeout(Duration::from_secs(if killed { 2 } else { 10 })) {
            Ok(line) => line,
            Err(_) if killed && done.len() == 29 => break,
            Err(_) => anyhow::bail!("workers stalled after {} jobs", done.len()),
        };
        let (index, line) = line;
        let job = line.rsplit_once(' ').map_or(line.clone(), |(_, n)| n.to_owned());
        *done.entry(job).or_insert(0usize) += 1;
        per_worker[index] += 1;
        if !killed && per_worker[0] == 5 {
            workers[0].kill();
            killed = true;
            outln!("  worker 1 killed (SIGKILL) after 5 jobs")?;
        }
    }
    let twice = done.values().filter(|&&n| n > 1).count();
    outln!(
        "  {} jobs done: {per_worker:?} by the three workers, {twice} done twice; job 0 among them: {}",
        done.len(),
        done.contains_key("0")
    )?;
    if done.len() < 30 {
        outln!("  (the killed worker had taken one more job: a taken job is the receiver's)")?;
    }
    drop(workers);
    jobs.unlink()?;
    Ok(())
}

/// Two subscriber processes (`postbox sub`) on a pattern; this process publishes.
fn topic(node: &postbox::Node, spawner: &Spawner) -> Result<()> {
    let mut subscribers = Vec::new();
    for _ in 0..2 {
        let mut child = spawner
            .command(&[
                "sub",
                "/demo/sensors/*",
                "--count",
                "3",
                "--show-topic",
                "--timeout",
                "10s",
            ])?
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        let mut stderr = BufReader::new(child.stderr.take().context("subscriber stderr")?);
        let mut line = String::new();
        stderr.read_line(&mut line)?;
        if !line.contains("subscribed") {
            bail!("subscriber did not start: {line:?}");
        }
        subscribers.push(child);
    }
    for (topic, reading) in [
        ("/demo/sensors/imu", "ax=0.10"),
        ("/demo/sensors/gps", "48.85N"),
        ("/demo/sensors/imu", "ax=0.12"),
    ] {
        node.publish(topic, reading)?;
    }
    outln!("  published 3 readings to /demo/sensors/imu and /demo/sensors/gps")?;
    for (index, child) in subscribers.into_iter().enumerate() {
        let output = child.wait_with_output()?;
        let lines: Vec<String> =
            String::from_utf8_lossy(&output.stdout).lines().map(str::to_owned).collect();
        outln!("  subscriber {} (pattern /demo/sensors/*) got {lines:?}", index + 1)?;
    }
    Ok(())
}

/// Sends 4 MiB three ways to a worker that describes what it received: space lent by the link
/// and written in place, an ordinary body (copied once into the link's pool), and a sealed
/// memory object (for a receiver that does not trust the sender).
fn zero_copy(node: &postbox::Node, spawner: &Spawner) -> Result<()> {
    const LEN: usize = 4 << 20;
    // This worker trusts its senders: pooled payloads are read in place (by default they are
    // copied out on arrival; sealed ones never need to be).
    let _server = spawner.worker(&["echo", "demo/describe", "--describe", "--read-in-place"])?;
    let connection = node.connect("demo/describe")?;
    let fill = |bytes: &mut [u8]| {
        for (i, byte) in bytes.iter_mut().enumerate() {
            *byte = (i % 251) as u8;
        }
    };
    let mut lent = connection.loan(LEN)?;
    fill(lent.body_mut());
    let mut owned = vec![0u8; LEN];
    fill(&mut owned);
    let sealed = Message::sealed(LEN, fill)?;
    for (how, message) in [
        ("loaned, written in place", lent),
        ("an ordinary Vec<u8> body", Message::new(owned)),
        ("sealed memory object", sealed),
    ] {
        let reply = connection.call(message)?;
        outln!("  {how:<26} -> worker: {}", text(reply.body()))?;
    }
    Ok(())
}

/// Alternates blocks of postbox calls and raw ping-pongs so drift affects both alike.
fn measure(
    connection: &postbox::Connection,
    raw: &mut UnixStream,
    rounds: usize,
) -> Result<(Samples, Samples)> {
    let body = vec![0x5au8; 64];
    let mut buf = [0u8; 64];
    let warmup = (rounds / 10).max(100);
    for _ in 0..warmup {
        connection.call(Message::new(body.clone()))?;
        raw.write_all(&body)?;
        raw.read_exact(&mut buf)?;
    }
    let (mut ours, mut theirs) = (Vec::with_capacity(rounds), Vec::with_capacity(rounds));
    let block = (rounds / 4).max(1);
    while ours.len() < rounds {
        for _ in 0..block.min(rounds - ours.len()) {
            let message = Message::new(body.clone());
            let start = Instant::now();
            connection.call(message)?;
            ours.push(start.elapsed());
        }
        for _ in 0..block.min(rounds - theirs.len()) {
            let start = Instant::now();
            raw.write_all(&body)?;
            raw.read_exact(&mut buf)?;
            theirs.push(start.elapsed());
        }
    }
    Ok((Samples::new(ours), Samples::new(theirs)))
}

fn print_table(ours: &Samples, raw: &Samples) -> Result<()> {
    outln!("  {:<34} {:>10} {:>10} {:>10}", "", "p50", "p99", "p99.9")?;
    for (label, s) in
        [("postbox call (shared memory)", ours), ("raw unix socketpair ping-pong", raw)]
    {
        outln!(
            "  {:<34} {:>10} {:>10} {:>10}",
            label,
            micros(s.percentile(50.0)),
            micros(s.percentile(99.0)),
            micros(s.percentile(99.9))
        )?;
    }
    let ratio = |p| ours.percentile(p).as_secs_f64() / raw.percentile(p).as_secs_f64().max(1e-9);
    outln!(
        "  {:<34} {:>9.2}x {:>9.2}x {:>9.2}x",
        "ratio postbox / raw",
        ratio(50.0),
        ratio(99.0),
        ratio(99.9)
    )?;
    Ok(())
}

/// The typed `Calc` service (crates/postbox-cli/src/services.rs) in a worker process: calls
/// with values, structs, the method's own error, a one-way method; then a client built from
/// another definition of `Calc`, refused at bind.
fn typed(node: &postbox::Node, spawner: &Spawner) -> Result<()> {
    use crate::services::{CalcClient, Point};
    let _calc = spawner.worker(&["typed-calc", "demo/calc"])?;
    let calc = CalcClient::bind(node, "demo/calc")?;
    let started = Instant::now();
    let sum = calc.add(40, 2)?;
    outln!("  calc.add(40, 2) = {sum}  ({}, the first call)", micros(started.elapsed()))?;
    outln!(
        "  calc.scale(Point {{ x: 1.5, y: -2.0 }}, 2.0) = {:?}",
        calc.scale(Point { x: 1.5, y: -2.0 }, 2.0)?
    )?;
    outln!("  calc.div(1, 0) = {:?}", calc.div(1, 0))?;
    calc.note("a one-way note".into())?;
    outln!("  calc.note(..) returned at once; calc.stats() = {:?}", calc.stats()?)?;
    match other::CalcClient::bind(node, "demo/calc") {
        Err(e) => outln!("  a client whose Calc::add takes i32s: bind failed: {e}")?,
        Ok(_) => bail!("a client built from another definition of Calc was let in"),
    }
    outln!(
        "  from a shell: postbox call demo/calc add '[40, 2]'  (and postbox ls lists the methods)"
    )?;
    Ok(())
}

/// Another build's idea of `Calc`, for the type check (only its client is used).
#[allow(dead_code)]
mod other {
    #[postbox::service]
    pub(crate) trait Calc {
        fn add(&self, a: i32, b: i32) -> i64;
    }
}

/// A second embedded broker whose policy lets this process's user register `demo/**` and call
/// `demo/public/*`, nothing else: the policy is made out as if the broker ran as another user
/// (root, say), so that its rules apply to this one (its own user could do everything). Child
/// processes try what the policy allows and what it does not; then the owner of a private port
/// grants one node the right to send there, and revokes it.
fn access() -> Result<()> {
    let me = rustix::process::getuid().as_raw();
    let rules = format!(
        "[[allow]]\nnames = [\"demo/**\"]\nuids = [{me}]\noperations = [\"register\"]\n\n\
         [[allow]]\nnames = [\"demo/public/*\"]\neveryone = true\noperations = [\"call\"]\n"
    );
    let as_if_another_user = if me == 0 { 1 } else { 0 };
    let policy = postbox::Policy::from_toml(&rules, as_if_another_user)?;
    let broker = Broker::embedded_with(|config| config.policy(policy))?;
    let spawner = Spawner { socket: broker.socket_path().to_owned() };
    outln!("  policy: uid {me} may register demo/**, everyone may call demo/public/*")?;
    let owner = broker.node()?;
    let _echo = spawner.worker(&["echo", "demo/public/echo", "--upper"])?;
    let private = owner.port("demo/private").open()?;
    let tries: [&[&str]; 3] = [
        &["call", "demo/public/echo", "allowed"],
        &["send", "demo/public/echo", "one-way"],
        &["send", "demo/private", "let me in"],
    ];
    for args in tries {
        let output = spawner.command(args)?.output()?;
        let said = if output.status.success() { &output.stdout } else { &output.stderr };
        let said = String::from_utf8_lossy(said);
        let said = said.trim().trim_start_matches("postbox: ");
        outln!("  postbox {:<34} -> {said}", args.join(" "))?;
    }
    let guest = broker.node()?;
    owner.grant("demo/private", guest.process_id(), postbox::Rights::SEND)?;
    let connection = guest.connect("demo/private")?;
    connection.send("granted")?;
    let envelope = private.recv_timeout(Duration::from_secs(10))?;
    outln!(
        "  the owner granted node {} send on demo/private: received {:?} from uid {}",
        guest.process_id(),
        text(envelope.body()),
        envelope.sender_identity().uid
    )?;
    owner.revoke("demo/private", guest.process_id())?;
    // The guest's end hears of it shortly; until then its sends go nowhere (the owner's end
    // reads nothing more).
    let deadline = Instant::now() + Duration::from_secs(10);
    let after = loop {
        match connection.send("after the revocation") {
            Ok(()) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(1)),
            Ok(()) => anyhow::bail!("the revoked link was not cut"),
            Err(error) => break error,
        }
    };
    outln!("  revoked: the guest's link is cut, its next send fails: {after}")?;
    if private.recv_timeout(Duration::from_millis(100)).is_ok() {
        anyhow::bail!("a message sent after the revocation was delivered");
    }
    Ok(())
}

/// Two more brokers in this process, hosts `a` and `b`, linked over loopback TCP as separate
/// hosts would be (docs/network.md): a node on `a` calls a server process attached to `b`.
fn hosts() -> Result<()> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let uid = rustix::process::getuid().as_raw();
    // Host b lets host a's nodes send to and call one name; nothing else crosses.
    let rule = "[[allow]]\nnames = ['demo/remote']\nhosts = ['a']\noperations = ['send', 'call']\n";
    let policy = postbox::Policy::from_toml(rule, uid)?;
    let mut b_hosts = HostsConfig::new("b")?;
    b_hosts.add_peer_flag(&format!("a=listen:127.0.0.1:{port}"))?;
    let b = Broker::embedded_with(|mut config| {
        config.policy = policy;
        config.hosts = Some(b_hosts);
        config
    })?;
    let mut a_hosts = HostsConfig::new("a")?;
    a_hosts.add_peer_flag(&format!("b=dial:127.0.0.1:{port}"))?;
    let a = Broker::embedded_with(|mut config| {
        config.hosts = Some(a_hosts);
        config
    })?;
    outln!("  host a's broker dials host b's on 127.0.0.1:{port} (one reliable session)")?;
    let on_b = Spawner { socket: b.socket_path().to_owned() };
    let mut server = on_b.worker(&["echo", "demo/remote", "--upper"])?;
    outln!("  a server process attached to host b serves demo/remote")?;
    let node = a.node()?;
    let started = Instant::now();
    let connection = loop {
        match node.connect("demo/remote@b") {
            Ok(connection) => break connection,
            // The host link is still coming up.
            Err(_) if started.elapsed() < Duration::from_secs(10) => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(error) => return Err(error).context("connect to demo/remote@b"),
        }
    };
    let started = Instant::now();
    let reply = connection.call("hello from host a")?;
    outln!(
        "  node on a: call(\"demo/remote@b\", \"hello from host a\") -> {:?} in {}",
        text(reply.body()),
        micros(started.elapsed())
    )?;
    match node.connect("elsewhere@b") {
        Err(error) => outln!("  connect(\"elsewhere@b\") -> {error}")?,
        Ok(_) => bail!("a port host b does not have was found"),
    }
    for host in node.hosts()? {
        let rtt = host.rtt.map_or_else(|| "-".to_owned(), micros);
        outln!(
            "  ls on a: host {} ({}) {:?}, rtt {rtt}, {} channel(s), {} retransmission(s)",
            host.name,
            host.connect,
            host.state,
            host.channels,
            host.retransmissions
        )?;
    }
    drop(connection);
    server.kill();
    Ok(())
}

fn heading(title: &str) -> Result<()> {
    outln!("\n== {title}")?;
    Ok(())
}

fn text(body: &[u8]) -> String {
    String::from_utf8_lossy(body).into_owned()
}
