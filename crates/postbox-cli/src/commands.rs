//! The shell commands: daemon, ls, send, recv, call.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use postbox::default_socket_path;
use postbox_broker::{HostsConfig, Policy, PolicyReloader};

use crate::buffering::Buffering;
use postbox::{BrokerConfig, CallError, Message, Node, RecvTimeoutError};

/// The daemon's host settings from its flags (docs/network.md).
#[derive(Debug, Default)]
pub(crate) struct HostsOptions {
    pub(crate) file: Option<PathBuf>,
    pub(crate) name: Option<String>,
    pub(crate) peers: Vec<String>,
    pub(crate) heartbeat: Option<Duration>,
    pub(crate) missed_heartbeats: Option<u32>,
    pub(crate) direct_peers: Vec<String>,
    pub(crate) direct_listen: Option<String>,
    pub(crate) direct_advertise: Option<String>,
}

impl HostsOptions {
    /// The host configuration the flags describe; `None` when they name no host.
    fn config(&self) -> Result<Option<HostsConfig>> {
        let mut config = match (&self.file, &self.name) {
            (Some(path), _) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("cannot read {}", path.display()))?;
                HostsConfig::from_toml(&text).with_context(|| format!("{}", path.display()))?
            }
            (None, Some(name)) => HostsConfig::new(name)?,
            (None, None) if self.peers.is_empty() => return Ok(None),
            (None, None) => bail!("--peer needs --host-name (or --hosts) to name this host"),
        };
        if let Some(name) = &self.name {
            config.name = postbox_broker::hosts::HostName::new(name)?;
        }
        for peer in &self.peers {
            config.add_peer_flag(peer)?;
        }
        if let Some(interval) = self.heartbeat {
            config.heartbeat_interval = interval.max(Duration::from_millis(1));
        }
        if let Some(missed) = self.missed_heartbeats {
            config.missed_heartbeats = missed.max(1);
        }
        for peer in &self.direct_peers {
            config.allow_direct(peer).with_context(|| format!("--direct-peer {peer}"))?;
        }
        if let Some(address) = &self.direct_listen {
            config.direct_listen = Some(socket_address("--direct-listen", address)?);
        }
        if let Some(address) = &self.direct_advertise {
            config.direct_advertise = Some(socket_address("--direct-advertise", address)?);
        }
        Ok(Some(config))
    }
}

/// The address `text` names (the first it resolves to), for the flag `flag`.
fn socket_address(flag: &str, text: &str) -> Result<std::net::SocketAddr> {
    std::net::ToSocketAddrs::to_socket_addrs(text)
        .ok()
        .and_then(|mut addresses| addresses.next())
        .with_context(|| format!("{flag} {text}: not an address"))
}

pub(crate) fn daemon(
    max_message_size: u32,
    policy_file: Option<&Path>,
    hosts: &HostsOptions,
    remote_nodes: &crate::remote_nodes::RemoteNodesArgs,
) -> Result<()> {
    // Denials and reloads are logged to stderr.
    let colour = std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(colour)
        .with_target(false)
        .init();
    let uid = rustix::process::getuid().as_raw();
    let policy = match policy_file {
        Some(path) => Policy::load(path, uid).with_context(|| format!("{}", path.display()))?,
        None => Policy::own_user_only(uid),
    };
    let mut config =
        BrokerConfig::new(default_socket_path()).max_message_size(max_message_size).policy(policy);
    config.hosts = hosts.config()?;
    config.remote_nodes = remote_nodes.config()?;
    // Every node holds a descriptor in the broker: use what the hard limit allows, and keep
    // the node limit below it so that accepting never runs out of descriptors first.
    let descriptors = raise_descriptor_limit();
    config.max_nodes = config.max_nodes.min(descriptors.saturating_sub(64).max(16));
    let socket = config.socket_path.clone();
    let broker = postbox_broker::Broker::bind(config).context("cannot start the broker")?;
    if let Some(path) = policy_file {
        reload_on_hangup(path.to_owned(), uid, broker.policy_reloader())?;
    }
    eprintln!("postbox daemon listening on {}", socket.display());
    if let Some(address) = broker.remote_address() {
        eprintln!("postbox daemon accepting nodes on tcp://{address}");
    }
    broker.run().context("broker stopped")
}

/// Re-reads the policy file at every `SIGHUP`; a file that does not parse leaves the policy in
/// force as it was (and says why).
fn reload_on_hangup(path: PathBuf, uid: u32, reloader: PolicyReloader) -> Result<()> {
    let mut signals = signal_hook::iterator::Signals::new([signal_hook::consts::SIGHUP])
        .context("cannot watch SIGHUP")?;
    std::thread::Builder::new().name("policy-reload".into()).spawn(move || {
        for _ in signals.forever() {
            match Policy::load(&path, uid) {
                Ok(policy) => reloader.reload(policy),
                Err(error) => eprintln!("postbox daemon: policy not reloaded, {error}"),
            }
        }
    })?;
    Ok(())
}

/// Raises the soft descriptor limit to the hard one; returns the limit now in force.
fn raise_descriptor_limit() -> usize {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let limit = getrlimit(Resource::Nofile);
    let raised = Rlimit { current: limit.maximum, maximum: limit.maximum };
    let current = match setrlimit(Resource::Nofile, raised) {
        Ok(()) => limit.maximum,
        Err(_) => limit.current,
    };
    current.map_or(usize::MAX, |c| usize::try_from(c).unwrap_or(usize::MAX))
}

pub(crate) fn ls() -> Result<()> {
    let node = Node::attach()?;
    let listing = node.list()?;
    let mut out = crate::output::stdout();
    writeln!(
        out,
        "{:<32} {:<8} {:<14} {:>6} {:>6} {:>11} {:>8} {:>8} BUFFERING",
        "NAME", "KIND", "OWNER", "UID", "GID", "CONNECTIONS", "QUEUED", "LOST"
    )?;
    for port in &listing.ports {
        // Counters come from each port's owner; one that does not answer shows dashes.
        let (queued, lost, buffering) = match node.stat(port.name.as_str()) {
            Ok(status) => (
                status.counters.queued.to_string(),
                status.counters.lost.to_string(),
                describe(&status.spec),
            ),
            Err(_) => ("-".into(), "-".into(), "-".into()),
        };
        writeln!(
            out,
            "{:<32} {:<8} {:<14} {:>6} {:>6} {:>11} {:>8} {:>8} {}",
            port.name.as_str(),
            port.kind.as_str(),
            port.owner.process_id.to_string(),
            port.owner.uid,
            port.owner.gid,
            port.connections,
            queued,
            lost,
            buffering
        )?;
        if port.kind == postbox::EndpointKind::Service {
            for method in crate::typed::methods(&node, port.name.as_str()) {
                writeln!(out, "    {method}")?;
            }
        }
    }
    // This `ls` is itself one of the attached nodes.
    writeln!(out, "{} ports, {} nodes attached", listing.ports.len(), listing.nodes)?;
    if listing.truncated {
        writeln!(out, "(list cut short by the broker)")?;
    }
    // A broker from before host links has no status port: no hosts to show.
    let hosts = node.hosts().unwrap_or_default();
    if !hosts.is_empty() {
        writeln!(out)?;
        writeln!(
            out,
            "{:<16} {:<10} {:<28} {:>10} {:>11} {:>10} {:>7} {:>8} {:>8} {:>6} {:>9}",
            "HOST",
            "STATE",
            "LINK",
            "RTT",
            "RETRANSMITS",
            "DUPLICATES",
            "CORRUPT",
            "SESSIONS",
            "CHANNELS",
            "DIRECT",
            "DGRAMLOST"
        )?;
        for host in &hosts {
            let rtt = host.rtt.map_or_else(|| "-".to_owned(), |d| format!("{d:.1?}"));
            writeln!(
                out,
                "{:<16} {:<10} {:<28} {:>10} {:>11} {:>10} {:>7} {:>8} {:>8} {:>6} {:>9}",
                host.name,
                host.state.as_str(),
                host.connect,
                rtt,
                host.retransmissions,
                host.duplicates,
                host.corrupt_frames,
                host.sessions,
                host.channels,
                host.direct_links,
                host.datagrams_lost
            )?;
        }
    }
    Ok(())
}

pub(crate) fn publish(topic: &str, text: &str) -> Result<()> {
    let body = body_of(text)?;
    let node = Node::attach()?;
    node.publish(topic, body).map_err(|e| anyhow::anyhow!("publish to {topic}: {e}"))?;
    Ok(())
}

pub(crate) fn subscribe(
    pattern: &str,
    count: Option<u64>,
    timeout: Option<Duration>,
    show_topic: bool,
) -> Result<()> {
    let node = Node::attach()?;
    let subscription = node.subscribe(pattern)?;
    // Subscribed: a script may start publishing now.
    eprintln!("postbox: subscribed to {pattern}");
    let mut out = crate::output::stdout();
    let mut received = 0u64;
    while count.is_none_or(|c| received < c) {
        let envelope = match timeout {
            Some(t) => match subscription.recv_timeout(t) {
                Ok(e) => e,
                Err(RecvTimeoutError::Timeout) => {
                    bail!("nothing on {pattern} within {t:?} ({received} received)")
                }
                Err(e) => return Err(e.into()),
            },
            None => subscription.recv()?,
        };
        if envelope.lost() > 0 {
            eprintln!(
                "postbox: {} messages lost (slow subscriber) before the next one",
                envelope.lost()
            );
        }
        if show_topic {
            write!(out, "{}: ", envelope.topic().unwrap_or_default())?;
        }
        out.write_all(envelope.body())?;
        writeln!(out)?;
        out.flush()?;
        received += 1;
    }
    Ok(())
}

pub(crate) fn topic_create(name: &str, history: u32) -> Result<()> {
    let node = Node::attach()?;
    node.create_topic(name, history)?;
    Ok(())
}

pub(crate) fn mailbox_create(name: &str, capacity: u32) -> Result<()> {
    let node = Node::attach()?;
    node.mailbox(name).capacity(capacity).create()?;
    Ok(())
}

pub(crate) fn mailbox_unlink(name: &str) -> Result<()> {
    let node = Node::attach()?;
    node.unlink_mailbox(name)?;
    Ok(())
}

pub(crate) fn stat(name: &str) -> Result<()> {
    let node = Node::attach()?;
    let status = node.stat(name).map_err(|e| anyhow::anyhow!("stat {name}: {e}"))?;
    let mut out = crate::output::stdout();
    writeln!(out, "port      {name}")?;
    writeln!(out, "owner     {}", status.owner)?;
    writeln!(out, "buffering {}", describe(&status.spec))?;
    writeln!(out, "queued    {}", status.counters.queued)?;
    writeln!(out, "lost      {}", status.counters.lost)?;
    writeln!(out, "links     {}", status.counters.links)?;
    Ok(())
}

/// A port spec in a few words: `bounded 1024, block, max 64 MiB`.
fn describe(spec: &postbox::PortSpec) -> String {
    let capacity = match spec.capacity {
        postbox::Capacity::Rendezvous => "rendezvous".to_owned(),
        postbox::Capacity::Bounded(n) => format!("bounded {n}"),
        postbox::Capacity::Unbounded { max_bytes } => format!("unbounded ≤{max_bytes} B"),
    };
    let overflow = match spec.overflow {
        postbox::Overflow::Block => "block",
        postbox::Overflow::Fail => "fail",
        postbox::Overflow::DropOldest => "drop-oldest",
    };
    let delivery = match spec.delivery {
        postbox::Delivery::Datagrams => ", datagrams from other hosts",
        _ => "",
    };
    match spec.message_size {
        Some(size) => format!("{capacity}, {overflow}, max {size} B{delivery}"),
        None => format!("{capacity}, {overflow}{delivery}"),
    }
}

pub(crate) fn send(
    name: &str,
    text: &str,
    msg_type: u32,
    priority: u8,
    confirmed: bool,
) -> Result<()> {
    let body = body_of(text)?;
    let node = Node::attach()?;
    let connection = node.connect(name)?;
    let message = Message::new(body).with_type(msg_type).with_priority(priority);
    let sent =
        if confirmed { connection.send_confirmed(message) } else { connection.send(message) };
    sent.map_err(|e| anyhow::anyhow!("send to {name}: {e}"))?;
    Ok(())
}

pub(crate) fn recv(
    name: &str,
    count: Option<u64>,
    timeout: Option<Duration>,
    show_sender: bool,
    buffering: &Buffering,
) -> Result<()> {
    let node = Node::attach()?;
    // A mailbox by that name is received from; otherwise the name is opened as a port.
    let mailbox = match node.mailbox(name).open() {
        Ok(mailbox) => Some(mailbox),
        Err(error @ (postbox::OpenError::AccessDenied(_) | postbox::OpenError::Unreachable(_))) => {
            return Err(error.into())
        }
        Err(_) => None,
    };
    if let Some(mailbox) = mailbox {
        return recv_loop(name, count, timeout, show_sender, |t| match t {
            Some(t) => mailbox.recv_timeout(t),
            None => mailbox.recv().map_err(|_| RecvTimeoutError::Closed),
        });
    }
    let port = buffering.apply(node.port(name))?.open()?;
    recv_loop(name, count, timeout, show_sender, |t| match t {
        Some(t) => port.recv_timeout(t),
        None => port.recv().map_err(|_| RecvTimeoutError::Closed),
    })
}

/// Prints what `next` receives, one message per line.
fn recv_loop(
    name: &str,
    count: Option<u64>,
    timeout: Option<Duration>,
    show_sender: bool,
    next: impl Fn(Option<Duration>) -> Result<postbox::Envelope, RecvTimeoutError>,
) -> Result<()> {
    let mut out = crate::output::stdout();
    let mut received = 0u64;
    while count.is_none_or(|c| received < c) {
        let envelope = match next(timeout) {
            Ok(e) => e,
            Err(RecvTimeoutError::Timeout) => {
                bail!("no message on {name} within {timeout:?} ({received} received)")
            }
            Err(e) => return Err(e.into()),
        };
        if envelope.lost() > 0 {
            eprintln!(
                "postbox: {} messages lost (drop-oldest, or datagrams from another host) before the next one",
                envelope.lost()
            );
        }
        if show_sender {
            write!(out, "{}: ", envelope.sender())?;
        }
        out.write_all(envelope.body())?;
        writeln!(out)?;
        out.flush()?;
        received += 1;
    }
    Ok(())
}

pub(crate) fn call(name: &str, text: &str, timeout: Option<Duration>) -> Result<()> {
    let body = body_of(text)?;
    let node = Node::attach()?;
    let connection = node.connect(name)?;
    let reply = match timeout {
        Some(t) => connection.call_timeout(body, t),
        None => connection.call(body),
    };
    match reply {
        Ok(reply) => {
            let mut out = crate::output::stdout();
            out.write_all(reply.body())?;
            writeln!(out)?;
            Ok(())
        }
        Err(CallError::Remote(error)) => {
            bail!("{name} answered with an error: {}", String::from_utf8_lossy(error.body()))
        }
        Err(e) => bail!("call to {name}: {e}"),
    }
}

fn body_of(text: &str) -> Result<Vec<u8>> {
    if text == "-" {
        let mut body = Vec::new();
        std::io::stdin().read_to_end(&mut body).context("reading the body from stdin")?;
        Ok(body)
    } else {
        Ok(text.as_bytes().to_vec())
    }
}
