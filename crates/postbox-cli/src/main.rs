//! The `postbox` command: runs the broker daemon, talks to ports from the shell, and shows the
//! system working (`postbox demo`).
#![forbid(unsafe_code)]

mod bench;
mod bench_hosts;
mod buffering;
mod commands;
mod demo;
mod duration;
mod latency;
mod output;
mod placement;
mod remote_nodes;
mod services;
mod spawner;
mod typed;
mod worker;

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};

/// Message passing between processes: ports, inboxes, send / recv / call / reply.
#[derive(Debug, Parser)]
#[command(name = "postbox", version, about)]
struct Cli {
    /// Broker control socket (default: $POSTBOX_SOCKET, $XDG_RUNTIME_DIR/postbox/broker.sock,
    /// or /tmp/postbox-$UID/broker.sock).
    #[arg(long, global = true, value_name = "PATH")]
    socket: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the broker in the foreground.
    Daemon {
        /// Largest message body accepted on this host, in bytes.
        #[arg(long, default_value_t = postbox::DEFAULT_MAX_MESSAGE_SIZE)]
        max_message_size: u32,
        /// Access policy (TOML, see docs/security.md); re-read on SIGHUP. Without it only
        /// this user may use the broker.
        #[arg(long, value_name = "FILE")]
        config: Option<std::path::PathBuf>,
        /// Links to other hosts (TOML: name, peers; see docs/network.md).
        #[command(flatten)]
        hosts: Box<HostsArgs>,
        /// Nodes of other hosts attaching over TCP.
        #[command(flatten)]
        remote_nodes: remote_nodes::RemoteNodesArgs,
    },
    /// List ports with their owners and open connections.
    Ls,
    /// Send one message to a port (TEXT, or `-` to read the body from stdin).
    Send {
        /// Port name.
        name: String,
        /// Message text, or `-` for stdin.
        text: String,
        /// Message type tag.
        #[arg(long = "type", default_value_t = 0)]
        msg_type: u32,
        /// Priority 0-31.
        #[arg(long, default_value_t = 0)]
        priority: u8,
        /// Return only once the receiver has taken the message.
        #[arg(long)]
        confirmed: bool,
    },
    /// Open a port and print the messages it receives, one per line.
    Recv {
        /// Port name to open.
        name: String,
        /// Stop after this many messages.
        #[arg(long)]
        count: Option<u64>,
        /// Give up when no message arrives for this long (e.g. 500ms, 2s).
        #[arg(long, value_parser = duration::parse)]
        timeout: Option<Duration>,
        /// Prefix each line with the sender's process id.
        #[arg(long)]
        show_sender: bool,
        /// How the port buffers.
        #[command(flatten)]
        buffering: buffering::Buffering,
    },
    /// Publish one message to a topic (TEXT, or `-` for stdin).
    Pub {
        /// Topic name, e.g. /sensors/imu.
        topic: String,
        /// Message text, or `-` for stdin.
        text: String,
    },
    /// Subscribe to a topic pattern (`*` one segment, final `**` the rest) and print what
    /// arrives, one message per line.
    Sub {
        /// Topic or pattern.
        pattern: String,
        /// Stop after this many messages.
        #[arg(long)]
        count: Option<u64>,
        /// Give up when nothing arrives for this long.
        #[arg(long, value_parser = duration::parse)]
        timeout: Option<Duration>,
        /// Prefix each line with the topic.
        #[arg(long)]
        show_topic: bool,
    },
    /// Make a topic keep its last N messages for late subscribers.
    #[command(subcommand)]
    Topic(TopicCommand),
    /// Create or unlink a mailbox (a queue the broker owns; send and recv work on it).
    #[command(subcommand)]
    Mailbox(MailboxCommand),
    /// Show a port's owner, buffering and live counters (queued, lost, links).
    Stat {
        /// Port name.
        name: String,
    },
    /// Call a port with TEXT and print the reply; or, with three arguments, call METHOD of the
    /// typed service NAME with JSON arguments (an array, or an object by argument name) and
    /// print the result as JSON.
    Call {
        /// Port name.
        name: String,
        /// Request text, or `-` for stdin; for a typed service, the method.
        text: String,
        /// A typed service's arguments, as JSON.
        json: Option<String>,
        /// Give up after this long (e.g. 500ms, 2s).
        #[arg(long, value_parser = duration::parse)]
        timeout: Option<Duration>,
    },
    /// Show postbox working: an embedded broker, child processes, a killed server, and a
    /// latency table against raw Unix sockets.
    Demo {
        /// Round trips per latency measurement.
        #[arg(long, default_value_t = 20_000)]
        rounds: usize,
        /// CPU placement of the latency table: same-core, cross-core, or both.
        #[arg(long, default_value = "both")]
        placement: String,
    },
    /// Measure postbox over shared-memory and Unix links beside raw socketpair, futex and
    /// spin ping-pongs, in one run: call round trip, one-way latency and throughput, printed
    /// as percentiles and ratios (docs/benchmarks.md).
    Bench {
        /// Print one JSON object instead of tables.
        #[arg(long)]
        json: bool,
        /// Round trips per latency measurement of a small message (fewer for large ones).
        #[arg(long, default_value_t = 20_000)]
        rounds: usize,
        /// CPU placement: same-core, cross-core, or both.
        #[arg(long, default_value = "both")]
        placement: String,
        /// Fewer sizes, rounds and messages: a smoke run of every measure.
        #[arg(long)]
        quick: bool,
        /// Only these measures (comma-separated): call, busy, throughput, flood, hosts (flood
        /// and hosts, two daemons linked over loopback TCP, are not in the default set).
        #[arg(long, value_delimiter = ',', default_value = "call,busy,throughput")]
        measure: Vec<String>,
    },
    /// Helper processes used by the demo, the tests and the benches.
    #[command(hide = true, subcommand)]
    Worker(worker::Role),
}

/// The daemon's links to brokers on other hosts (docs/network.md).
#[derive(Debug, clap::Args)]
struct HostsArgs {
    /// Host configuration (TOML: `name`, `heartbeat_interval_ms`, `missed_heartbeats`,
    /// `[tls]`, `[peers]` with `NAME = { dial = "ADDR:PORT" }` or `{ listen = "ADDR:PORT" }`,
    /// optionally `transport = "quic"`).
    #[arg(long, value_name = "FILE")]
    hosts: Option<PathBuf>,
    /// This host's name (instead of, or overriding, the file's).
    #[arg(long, value_name = "NAME")]
    host_name: Option<String>,
    /// A peer host: NAME=dial:ADDR:PORT or NAME=listen:ADDR:PORT (plain TCP), or
    /// NAME=quic-dial:ADDR:PORT or NAME=quic-listen:ADDR:PORT (QUIC, with the TLS settings of
    /// the --hosts file's [tls] table) (repeatable).
    #[arg(long = "peer", value_name = "NAME=[quic-]dial|listen:ADDR")]
    peers: Vec<String>,
    /// How often host links send heartbeats (e.g. 200ms, 1s).
    #[arg(long, value_parser = duration::parse)]
    heartbeat: Option<Duration>,
    /// Heartbeats missed before a silent host's calls fail.
    #[arg(long)]
    missed_heartbeats: Option<u32>,
    /// Connections to and from this peer's nodes may be direct TCP links between the two
    /// nodes, without the brokers on the data path (docs/network.md §15; both hosts must say
    /// so) (repeatable).
    #[arg(long = "direct-peer", value_name = "NAME")]
    direct_peers: Vec<String>,
    /// Where this broker accepts direct links from its direct peers (ADDR:PORT; port 0 for
    /// any free port). Without it, this host's ports are reached through the gateway.
    #[arg(long, value_name = "ADDR:PORT")]
    direct_listen: Option<String>,
    /// The address peers are told to dial for direct links, when not the --direct-listen
    /// address (behind NAT or a relay).
    #[arg(long, value_name = "ADDR:PORT")]
    direct_advertise: Option<String>,
}

impl From<HostsArgs> for commands::HostsOptions {
    fn from(args: HostsArgs) -> Self {
        Self {
            file: args.hosts,
            name: args.host_name,
            peers: args.peers,
            heartbeat: args.heartbeat,
            missed_heartbeats: args.missed_heartbeats,
            direct_peers: args.direct_peers,
            direct_listen: args.direct_listen,
            direct_advertise: args.direct_advertise,
        }
    }
}

#[derive(Debug, Subcommand)]
enum TopicCommand {
    /// Create a topic (or change its history).
    Create {
        /// Topic name.
        name: String,
        /// Messages kept for subscribers that join later.
        #[arg(long, default_value_t = 0)]
        history: u32,
    },
}

#[derive(Debug, Subcommand)]
enum MailboxCommand {
    /// Create a mailbox; it lives until unlinked.
    Create {
        /// Mailbox name, e.g. /jobs.
        name: String,
        /// Messages it holds at most.
        #[arg(long, default_value_t = 1024)]
        capacity: u32,
    },
    /// Remove a mailbox and discard what it holds.
    Unlink {
        /// Mailbox name.
        name: String,
    },
}

fn main() {
    let cli = Cli::parse();
    if let Some(path) = &cli.socket {
        // Children started by this process (demo workers) find the same broker.
        std::env::set_var("POSTBOX_SOCKET", path);
    }
    let result = match cli.command {
        Command::Daemon { max_message_size, config, hosts, remote_nodes } => {
            let hosts = commands::HostsOptions::from(*hosts);
            commands::daemon(max_message_size, config.as_deref(), &hosts, &remote_nodes)
        }
        Command::Ls => commands::ls(),
        Command::Send { name, text, msg_type, priority, confirmed } => {
            commands::send(&name, &text, msg_type, priority, confirmed)
        }
        Command::Recv { name, count, timeout, show_sender, buffering } => {
            commands::recv(&name, count, timeout, show_sender, &buffering)
        }
        Command::Stat { name } => commands::stat(&name),
        Command::Pub { topic, text } => commands::publish(&topic, &text),
        Command::Sub { pattern, count, timeout, show_topic } => {
            commands::subscribe(&pattern, count, timeout, show_topic)
        }
        Command::Topic(TopicCommand::Create { name, history }) => {
            commands::topic_create(&name, history)
        }
        Command::Mailbox(MailboxCommand::Create { name, capacity }) => {
            commands::mailbox_create(&name, capacity)
        }
        Command::Mailbox(MailboxCommand::Unlink { name }) => commands::mailbox_unlink(&name),
        Command::Call { name, text, json: None, timeout } => commands::call(&name, &text, timeout),
        Command::Call { name, text, json: Some(json), timeout } => {
            typed::call(&name, &text, &json, timeout)
        }
        Command::Demo { rounds, placement } => demo::run(rounds, &placement),
        Command::Bench { json, rounds, placement, quick, measure } => {
            let rounds = if quick { rounds.min(2_000) } else { rounds };
            bench::run(&bench::Options { json, rounds, placement, quick, measures: measure })
        }
        Command::Worker(role) => worker::run(role),
    };
    if let Err(error) = result {
        if output::is_closed_output(&error) {
            // Whoever read the output has what they wanted (`postbox ls | head`).
            std::process::exit(0);
        }
        eprintln!("postbox: {error:#}");
        std::process::exit(1);
    }
}
