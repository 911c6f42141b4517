//! Helper processes for the demo, the end-to-end tests and the benches (`postbox worker …`).
//! Each prints `ready` on stdout once it can be used, followed by its process id when it is a
//! node (`ready 1234.5`).

use crate::output::outln;
use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Subcommand;
use postbox::{Message, Node, ProcessId};

#[derive(Debug, Subcommand)]
pub(crate) enum Role {
    /// Serve a port: answer calls with their body (upper-cased with --upper), after --delay-ms.
    Echo {
        /// Port name.
        name: String,
        /// Upper-case replies.
        #[arg(long)]
        upper: bool,
        /// Wait this long before each reply.
        #[arg(long, default_value_t = 0)]
        delay_ms: u64,
        /// Drop the reply token instead of answering (callers get NoReply).
        #[arg(long)]
        no_reply: bool,
        /// Answer every call with an error reply carrying the request's body.
        #[arg(long)]
        fail: bool,
        /// Answer with a body of this many bytes instead of the request's.
        #[arg(long)]
        reply_size: Option<usize>,
        /// Print each one-way message received.
        #[arg(long)]
        print: bool,
        /// Print `call SENDER: BODY` for each call as it is taken (before any delay).
        #[arg(long)]
        print_calls: bool,
        /// Threads receiving on the port.
        #[arg(long, default_value_t = 1)]
        threads: usize,
        /// Answer each call with a description of its payload (length, whether it was read in
        /// place or sealed, a checksum) instead of the payload.
        #[arg(long)]
        describe: bool,
        /// Read pooled payloads in place (trust the senders) instead of copying them out.
        #[arg(long)]
        read_in_place: bool,
        /// Take up to this many waiting messages per receive (`recv_batch`).
        #[arg(long, default_value_t = 1)]
        batch: usize,
    },
    /// Serve the typed `Calc` service on port NAME (add, div, scale, stats, note).
    TypedCalc {
        /// Port name.
        name: String,
        /// Threads serving it.
        #[arg(long, default_value_t = 1)]
        threads: usize,
    },
    /// Serve the typed `Echo` service on port NAME (echo(body) -> body).
    TypedEcho {
        /// Port name.
        name: String,
    },
    /// Send each TEXT to the inbox of process PID (`pid.generation`).
    SendTo {
        /// The receiving node's process id.
        process: ProcessId,
        /// Bodies to send, in order.
        texts: Vec<String>,
    },
    /// Send COUNT one-way messages with bodies "0", "1", … to port NAME.
    SendMany {
        /// Port name.
        name: String,
        /// How many.
        count: u64,
        /// Print `sent N` after each send returns.
        #[arg(long)]
        report: bool,
        /// Use send_confirmed (returns once the receiver took the message).
        #[arg(long)]
        confirmed: bool,
    },
    /// Send one-way messages described as `priority/type/text` to port NAME, in order.
    SendSpec {
        /// Port name.
        name: String,
        /// Messages as `priority/type/text`.
        specs: Vec<String>,
    },
    /// Receive from mailbox NAME forever, printing `got SENDER BODY` per message.
    MailboxWorker {
        /// Mailbox name.
        name: String,
    },
    /// Take one message from mailbox NAME with the raw protocol and never acknowledge it:
    /// prints `holding BODY`, then waits to be killed.
    MailboxHog {
        /// Mailbox name.
        name: String,
    },
    /// Publish COUNT messages with bodies "0", "1", … to TOPIC.
    PublishMany {
        /// Topic name.
        topic: String,
        /// How many.
        count: u64,
    },
    /// Open port NAME and never receive from it (a receiver that stopped reading).
    Hold {
        /// Port name.
        name: String,
        /// How the port buffers.
        #[command(flatten)]
        buffering: crate::buffering::Buffering,
    },
    /// Connect to port NAME, then call it in a loop until killed.
    CallLoop {
        /// Port name.
        name: String,
    },
    /// Raw baseline: stdin is one end of a Unix socketpair; read fixed-size messages from it
    /// and write each back.
    RawEcho {
        /// Message size in bytes.
        #[arg(long, default_value_t = 64)]
        size: usize,
    },
    /// Raw baseline: stdin is one end of a Unix socketpair; read fixed-size messages and
    /// answer one byte to each whose first byte is 1.
    RawSink {
        /// Message size in bytes.
        #[arg(long, default_value_t = 64)]
        size: usize,
    },
    /// Raw baseline over loopback TCP: listen on 127.0.0.1 (a free port), say `ready ADDR`,
    /// accept one connection (`TCP_NODELAY`), then read fixed-size messages from it and write
    /// each back, or with --sink answer one byte to each whose first byte is 1.
    RawTcp {
        /// Message size in bytes.
        #[arg(long, default_value_t = 64)]
        size: usize,
        /// Answer only marked messages, with one byte (a sink), instead of echoing each.
        #[arg(long)]
        sink: bool,
    },
    /// Raw baseline: stdin is a ping-pong memory object (a sequence word and a buffer each
    /// way, no framing); answer every ping with its bytes until the client stops.
    RawPingPong {
        /// Message size in bytes.
        #[arg(long, default_value_t = 64)]
        size: usize,
        /// Busy-wait instead of sleeping on a futex.
        #[arg(long, conflicts_with = "yield_cpu")]
        spin: bool,
        /// Give the CPU up between looks (`sched_yield`) instead of sleeping on a futex.
        #[arg(long = "yield")]
        yield_cpu: bool,
    },
    /// Flood port NAME with SIZE-byte messages as MODE says until stdin says stop (a byte, or
    /// end of file). Says `ready` once the flood started. On stop, makes one more call
    /// (answered only after every one-way message sent before it was taken) and prints
    /// `flooded N in SECONDS`: the one-way messages the server took, or the calls answered.
    Flood {
        /// Port name.
        name: String,
        /// How to flood.
        #[arg(long, value_enum)]
        mode: FloodMode,
        /// Threads flooding, sharing one connection.
        #[arg(long, default_value_t = 1)]
        threads: usize,
        /// Body size in bytes.
        #[arg(long, default_value_t = 64)]
        size: usize,
    },
    /// Busy-waiting receiver for one-way latency: open port NAME, connect to REPLY_TO, and
    /// answer every message with its one-way latency (from the send time in its first 8
    /// bytes), polling with the `try_` forms only (never sleeping). A message of type 1 ends
    /// it.
    BusyEcho {
        /// Port to open.
        name: String,
        /// Port to send the messages back to.
        reply_to: String,
    },
    /// Busy-waiting feed receiver for one-way latency: open port NAME, accept the first feed
    /// asked for, open a feed to REPLY_TO, and answer every message on it with its one-way
    /// latency, as [`Role::BusyEcho`] does. The end of the feed ends it.
    BusyFeedEcho {
        /// Port to open.
        name: String,
        /// Port to send the latencies to.
        reply_to: String,
        /// Send every message back as it came (a ping-pong of two feeds, for half a round
        /// trip), instead of answering with latencies.
        #[arg(long)]
        ping_pong: bool,
    },
    /// Connect to port NAME, open its feed (printing `opened`) and send numbered 8-byte
    /// messages (0, 1, … as little-endian u64), printing `sent N` whenever the count N of
    /// messages sent reaches a multiple of --every. After --count messages prints `done N` and
    /// ends; without it sends forever. A failed send prints `error N ERROR` (the error's debug
    /// form) and ends the worker with status 1, or with --linger drops the feed and the
    /// connection, prints the line and waits to be killed (to show what it let go of).
    FeedSend {
        /// Port name.
        name: String,
        /// Stop after this many messages.
        #[arg(long)]
        count: Option<u64>,
        /// Print `sent N` after every this many messages.
        #[arg(long, default_value_t = 1000)]
        every: u64,
        /// Send with `try_send`, trying again at once while the feed is full.
        #[arg(long)]
        try_send: bool,
        /// After an error, let go of the feed and the connection and wait to be killed.
        #[arg(long)]
        linger: bool,
    },
    /// Open port NAME, accept the first feed asked for (printing `accepted`), and receive the
    /// numbered messages of [`Role::FeedSend`] with blocking receives, printing `received N`
    /// whenever the count N received reaches a multiple of --every, then `ended N ERROR` when
    /// the feed ends. A message out of order ends the worker with status 1.
    FeedRecv {
        /// Port name.
        name: String,
        /// Print `received N` after every this many messages.
        #[arg(long, default_value_t = 1000)]
        every: u64,
        /// Accept the feed, then never receive from it (a receiver that stopped reading).
        #[arg(long)]
        stall: bool,
    },
    /// Open port NAME and accept every feed asked for, each received on a thread of its own
    /// as [`Role::FeedRecv`] does; prints `ended SENDER N ERROR` as each feed ends. A message
    /// out of order ends the worker with status 1. Never ends by itself.
    FeedSink {
        /// Port name.
        name: String,
    },
}

pub(crate) fn run(role: Role) -> Result<()> {
    match role {
        Role::Echo {
            name,
            upper,
            delay_ms,
            no_reply,
            fail,
            reply_size,
            print,
            print_calls,
            threads,
            describe,
            read_in_place,
            batch,
        } => {
            let behaviour = Behaviour {
                upper,
                delay_ms,
                no_reply,
                fail,
                reply_size,
                print,
                print_calls,
                describe,
                batch,
            };
            let node = Node::attach()?;
            let builder = node.port(&name);
            let builder = if read_in_place { builder.read_in_place() } else { builder };
            let port = builder.open()?;
            ready(Some(node.process_id()));
            std::thread::scope(|s| {
                let serving: Vec<_> =
                    (0..threads.max(1)).map(|_| s.spawn(|| serve(&port, behaviour))).collect();
                // Each thread serves until the port closes or its output is closed; the
                // first error is the worker's.
                serving.into_iter().try_for_each(|thread| {
                    thread.join().map_err(|_| anyhow::anyhow!("a serving thread panicked"))?
                })
            })
        }
        Role::SendTo { process, texts } => {
            let node = Node::attach()?;
            ready(Some(node.process_id()));
            for text in texts {
                node.send_to(process, text.as_str())
                    .map_err(|e| anyhow::anyhow!("send to {process}: {e}"))?;
            }
            Ok(())
        }
        Role::CallLoop { name } => {
            let node = Node::attach()?;
            let connection = node.connect(&name)?;
            ready(Some(node.process_id()));
            loop {
                connection.call("ping").map_err(|e| anyhow::anyhow!("call {name}: {e}"))?;
            }
        }
        Role::SendMany { name, count, report, confirmed } => {
            let node = Node::attach()?;
            let connection = node.connect(&name)?;
            ready(Some(node.process_id()));
            for i in 0..count {
                let body = i.to_string();
                let sent = if confirmed {
                    connection.send_confirmed(body.as_str())
                } else {
                    connection.send(body.as_str())
                };
                sent.map_err(|e| anyhow::anyhow!("send to {name}: {e}"))?;
                if report {
                    let mut out = std::io::stdout().lock();
                    writeln!(out, "sent {i}")?;
                    out.flush()?;
                }
            }
            Ok(())
        }
        Role::SendSpec { name, specs } => {
            let node = Node::attach()?;
            let connection = node.connect(&name)?;
            ready(Some(node.process_id()));
            for spec in specs {
                let mut parts = spec.splitn(3, '/');
                let (Some(priority), Some(msg_type), Some(text)) =
                    (parts.next(), parts.next(), parts.next())
                else {
                    anyhow::bail!("not priority/type/text: {spec:?}");
                };
                let message = Message::new(text)
                    .with_priority(priority.parse().context("priority")?)
                    .with_type(msg_type.parse().context("type")?);
                connection.send(message).map_err(|e| anyhow::anyhow!("send to {name}: {e}"))?;
            }
            Ok(())
        }
        Role::Hold { name, buffering } => {
            let node = Node::attach()?;
            let _port = buffering.apply(node.port(&name))?.open()?;
            ready(Some(node.process_id()));
            loop {
                std::thread::park();
            }
        }
        Role::MailboxWorker { name } => {
            let node = Node::attach()?;
            let mailbox = node.mailbox(&name).open()?;
            ready(Some(node.process_id()));
            while let Ok(envelope) = mailbox.recv() {
                let mut out = std::io::stdout().lock();
                writeln!(
                    out,
                    "got {} {}",
                    envelope.sender(),
                    String::from_utf8_lossy(envelope.body())
                )?;
                out.flush()?;
            }
            Ok(())
        }
        Role::MailboxHog { name } => mailbox_hog(&name),
        Role::PublishMany { topic, count } => {
            let node = Node::attach()?;
            ready(Some(node.process_id()));
            for i in 0..count {
                node.publish(&topic, i.to_string().as_str())
                    .map_err(|e| anyhow::anyhow!("publish to {topic}: {e}"))?;
            }
            Ok(())
        }
        Role::RawEcho { size } => raw_stdin_loop(size, true),
        Role::RawSink { size } => raw_stdin_loop(size, false),
        Role::RawTcp { size, sink } => raw_tcp(size, !sink),
        Role::RawPingPong { size, spin, yield_cpu } => {
            let fd = std::io::stdin().as_fd().try_clone_to_owned().context("take stdin")?;
            let ping = postbox_shm::PingPong::open(fd, size)?;
            ready(None);
            let wait = match (spin, yield_cpu) {
                (true, _) => postbox_shm::PingWait::Spin,
                (false, true) => postbox_shm::PingWait::Yield,
                (false, false) => postbox_shm::PingWait::Futex,
            };
            ping.serve(wait);
            Ok(())
        }
        Role::BusyEcho { name, reply_to } => busy_echo(&name, &reply_to),
        Role::BusyFeedEcho { name, reply_to, ping_pong } => {
            busy_feed_echo(&name, &reply_to, ping_pong)
        }
        Role::FeedSend { name, count, every, try_send, linger } => {
            feed_send(&name, count, every.max(1), try_send, linger)
        }
        Role::FeedRecv { name, every, stall } => feed_recv(&name, every.max(1), stall),
        Role::FeedSink { name } => feed_sink(&name),
        Role::Flood { name, mode, threads, size } => flood(&name, mode, threads, size),
        Role::TypedCalc { name, threads } => {
            use crate::services::{CalcServer, Calculator};
            let node = Node::attach()?;
            let serving =
                CalcServer::new(Calculator::default()).threads(threads).start(&node, &name);
            serve_until_killed(&node, serving)
        }
        Role::TypedEcho { name } => {
            use crate::services::{EchoServer, Echoer};
            let node = Node::attach()?;
            serve_until_killed(&node, EchoServer::new(Echoer).start(&node, &name))
        }
    }
}

/// Answers every message at once without ever sleeping (see [`Role::BusyEcho`]): the reply
/// is the message's one-way latency in nanoseconds, from the send time in its first 8 bytes
/// (the system-wide monotonic clock) to the moment it was received.
fn busy_echo(name: &str, reply_to: &str) -> Result<()> {
    let node = Node::attach()?;
    // The bench's own process sends here: a trusted sender, so payloads are read in place.
    let port = node.port(name).read_in_place().open()?;
    let back = node.connect(reply_to)?;
    ready(Some(node.process_id()));
    loop {
        let envelope = match port.try_recv() {
            Ok(envelope) => envelope,
            Err(postbox::TryRecvError::Empty) => {
                std::hint::spin_loop();
                continue;
            }
            Err(e) => return Err(anyhow::anyhow!("receive on {name}: {e}")),
        };
        let received = crate::latency::monotonic_ns();
        if envelope.message().msg_type() == 1 {
            return Ok(());
        }
        let sent = envelope.body().first_chunk::<8>().map_or(received, |b| u64::from_le_bytes(*b));
        // The payload goes back to its sender's pool before the answer leaves.
        drop(envelope);
        let mut message = Message::new(received.saturating_sub(sent).to_le_bytes().to_vec());
        loop {
            match back.try_send(message) {
                Ok(()) => break,
                Err(postbox::TrySendError::Full(m)) => {
                    message = m;
                    std::hint::spin_loop();
                }
                Err(e) => return Err(anyhow::anyhow!("send to {reply_to}: {e}")),
            }
        }
    }
}

/// Answers every feed message at once without ever sleeping (see [`Role::BusyFeedEcho`]).
fn busy_feed_echo(name: &str, reply_to: &str, ping_pong: bool) -> Result<()> {
    let node = Node::attach()?;
    let port = node.port(name).open()?;
    let back = node.connect(reply_to)?;
    ready(Some(node.process_id()));
    let request = port.recv().map_err(|e| anyhow::anyhow!("receive on {name}: {e}"))?;
    let mut feed = request.accept_feed().map_err(|e| anyhow::anyhow!("accept a feed: {e}"))?;
    // The answers go back on a feed too: the measuring thread's wait for them stays off the
    // port path, whose caches and queues the next message's trip would otherwise share.
    let mut back = back.open_feed().map_err(|e| anyhow::anyhow!("open a feed back: {e}"))?;
    let mut body = Vec::with_capacity(postbox::FEED_MAX_LEN);
    loop {
        match feed.try_recv_into(&mut body) {
            Ok(()) => {}
            Err(postbox::FeedRecvError::Empty) => {
                std::hint::spin_loop();
                continue;
            }
            Err(postbox::FeedRecvError::Disconnected) => return Ok(()),
            Err(e) => return Err(anyhow::anyhow!("feed on {name}: {e}")),
        }
        if !ping_pong {
            // The answer is the one-way latency instead of the message.
            let received = crate::latency::monotonic_ns();
            let sent = body.first_chunk::<8>().map_or(received, |b| u64::from_le_bytes(*b));
            body.clear();
            body.extend_from_slice(&received.saturating_sub(sent).to_le_bytes());
        }
        loop {
            match back.try_send(&body) {
                Ok(()) => break,
                Err(postbox::FeedSendError::Full) => std::hint::spin_loop(),
                Err(e) => return Err(anyhow::anyhow!("feed to {reply_to}: {e}")),
            }
        }
    }
}

/// Sends numbered messages on a feed to `name` (see [`Role::FeedSend`]).
fn feed_send(
    name: &str,
    count: Option<u64>,
    every: u64,
    try_send: bool,
    linger: bool,
) -> Result<()> {
    let node = Node::attach()?;
    let connection = node.connect(name)?;
    ready(Some(node.process_id()));
    let mut feed = connection.open_feed().map_err(|e| anyhow::anyhow!("open a feed: {e}"))?;
    outln!("opened")?;
    let mut sent = 0u64;
    let error = loop {
        if count == Some(sent) {
            outln!("done {sent}")?;
            return Ok(());
        }
        let bytes = sent.to_le_bytes();
        let result = if try_send {
            loop {
                match feed.try_send(&bytes) {
                    Err(postbox::FeedSendError::Full) => std::hint::spin_loop(),
                    other => break other,
                }
            }
        } else {
            feed.send(&bytes)
        };
        if let Err(error) = result {
            break error;
        }
        sent += 1;
        if sent % every == 0 {
            outln!("sent {sent}")?;
        }
    };
    if linger {
        drop(feed);
        drop(connection);
        outln!("error {sent} {error:?}")?;
        loop {
            std::thread::park();
        }
    }
    outln!("error {sent} {error:?}")?;
    anyhow::bail!("feed to {name}: {error}")
}

/// Receives the first feed asked of port `name` (see [`Role::FeedRecv`]).
fn feed_recv(name: &str, every: u64, stall: bool) -> Result<()> {
    let node = Node::attach()?;
    let port = node.port(name).open()?;
    ready(Some(node.process_id()));
    let request = loop {
        let envelope = port.recv().map_err(|e| anyhow::anyhow!("receive on {name}: {e}"))?;
        if envelope.is_feed_request() {
            break envelope;
        }
    };
    let mut feed = request.accept_feed().map_err(|e| anyhow::anyhow!("accept a feed: {e}"))?;
    outln!("accepted")?;
    if stall {
        loop {
            std::thread::park();
        }
    }
    let (received, end) = receive_counters(&mut feed, |received| {
        if received % every == 0 {
            outln!("received {received}")?;
        }
        Ok(())
    })?;
    outln!("ended {received} {end:?}")?;
    Ok(())
}

/// Receives every feed asked of port `name`, each on a thread (see [`Role::FeedSink`]).
fn feed_sink(name: &str) -> Result<()> {
    let node = Node::attach()?;
    let port = node.port(name).open()?;
    ready(Some(node.process_id()));
    loop {
        let envelope = port.recv().map_err(|e| anyhow::anyhow!("receive on {name}: {e}"))?;
        if !envelope.is_feed_request() {
            continue;
        }
        // A sender killed before the answer: its feed is not ours to count.
        let Ok(mut feed) = envelope.accept_feed() else { continue };
        std::thread::spawn(move || {
            let sender = feed.sender();
            let ended = receive_counters(&mut feed, |_| Ok(()))
                .and_then(|(received, end)| Ok(outln!("ended {sender} {received} {end:?}")?));
            if let Err(error) = ended {
                eprintln!("postbox: feed from {sender}: {error:#}");
                std::process::exit(1);
            }
        });
    }
}

/// Receives the numbered messages of [`Role::FeedSend`] until the feed ends, calling
/// `report` with the count after each; returns the count and the error that ended the feed.
fn receive_counters(
    feed: &mut postbox::FeedReceiver,
    mut report: impl FnMut(u64) -> Result<()>,
) -> Result<(u64, postbox::FeedRecvError)> {
    let mut body = Vec::with_capacity(postbox::FEED_MAX_LEN);
    let mut received = 0u64;
    loop {
        if let Err(end) = feed.recv_into(&mut body) {
            return Ok((received, end));
        }
        // The number comes first; longer messages (a throughput run's) carry more after it.
        if body.first_chunk::<8>() != Some(&received.to_le_bytes()) {
            anyhow::bail!("message {received} out of order: {body:?}");
        }
        received += 1;
        report(received)?;
    }
}

/// How [`Role::Flood`] floods.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum FloodMode {
    /// One-way messages with `try_send` in a loop; `Full` means try again at once (spinning).
    TrySend,
    /// One-way messages in batches of 64 with `send_batch`, which sleeps while the link is full.
    Batch,
    /// Calls, each thread waiting for its answer before the next.
    Calls,
    /// Nothing sent: spin only (a control for the CPU time a spinning flooder takes).
    Spin,
}

/// Floods `name` until stdin says stop (see [`Role::Flood`]).
fn flood(name: &str, mode: FloodMode, threads: usize, size: usize) -> Result<()> {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

    let node = Node::attach()?;
    let connection = node.connect(name)?;
    let stop = AtomicBool::new(false);
    let running = AtomicBool::new(false);
    let through = AtomicU64::new(0);
    let start = std::time::Instant::now();
    let flood_one = || -> Result<()> {
        let body = vec![0x5au8; size];
        let mut batch = Vec::with_capacity(64);
        while !stop.load(Ordering::Relaxed) {
            let sent = match mode {
                FloodMode::TrySend => match connection.try_send(Message::new(body.clone())) {
                    Ok(()) => 1,
                    Err(postbox::TrySendError::Full(_)) => 0,
                    Err(e) => anyhow::bail!("send to {name}: {e}"),
                },
                FloodMode::Batch => {
                    batch.extend((0..64).map(|_| Message::new(body.clone())));
                    connection
                        .send_batch(&mut batch)
                        .map_err(|e| anyhow::anyhow!("send to {name}: {e}"))?;
                    64
                }
                FloodMode::Calls => {
                    connection
                        .call(Message::new(body.clone()))
                        .map_err(|e| anyhow::anyhow!("call {name}: {e}"))?;
                    1
                }
                FloodMode::Spin => {
                    std::hint::spin_loop();
                    0
                }
            };
            if sent > 0 {
                through.fetch_add(sent, Ordering::Relaxed);
            }
            running.store(true, Ordering::Relaxed);
        }
        Ok(())
    };
    let elapsed = std::thread::scope(|s| -> Result<Duration> {
        let flooders: Vec<_> = (0..threads.max(1)).map(|_| s.spawn(flood_one)).collect();
        while !running.load(Ordering::Relaxed) && !flooders.iter().any(|f| f.is_finished()) {
            std::thread::yield_now();
        }
        if running.load(Ordering::Relaxed) {
            ready(Some(node.process_id()));
            // Any byte, or the end of stdin, stops the flood.
            let _ = std::io::stdin().read(&mut [0u8; 1]);
        }
        stop.store(true, Ordering::Relaxed);
        for flooder in flooders {
            flooder.join().map_err(|_| anyhow::anyhow!("a flooding thread panicked"))??;
        }
        Ok(start.elapsed())
    })?;
    // Calls were counted as answered; one-way messages as sent: all taken once this returns.
    connection
        .call(Message::new(vec![0u8; size]))
        .map_err(|e| anyhow::anyhow!("call {name}: {e}"))?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "flooded {} in {:.3}", through.load(Ordering::Relaxed), elapsed.as_secs_f64())?;
    out.flush()?;
    Ok(())
}

/// How an echo worker answers.
#[derive(Debug, Clone, Copy)]
struct Behaviour {
    upper: bool,
    delay_ms: u64,
    no_reply: bool,
    fail: bool,
    reply_size: Option<usize>,
    print: bool,
    print_calls: bool,
    describe: bool,
    batch: usize,
}

/// Serves `port` until it closes, or until the output the worker prints to is closed.
fn serve(port: &postbox::Port, b: Behaviour) -> Result<()> {
    if b.batch <= 1 {
        while let Ok(envelope) = port.recv() {
            answer(envelope, b)?;
        }
        return Ok(());
    }
    let mut envelopes = Vec::with_capacity(b.batch);
    while port.recv_batch(&mut envelopes, b.batch).is_ok() {
        for envelope in envelopes.drain(..) {
            answer(envelope, b)?;
        }
    }
    Ok(())
}

/// Answers one message as `b` says.
fn answer(mut envelope: postbox::Envelope, b: Behaviour) -> Result<()> {
    let Behaviour {
        upper,
        delay_ms,
        no_reply,
        fail,
        reply_size,
        print,
        print_calls,
        describe,
        batch: _,
    } = b;
    let Some(token) = envelope.take_reply_token() else {
        if print {
            outln!("{}: {}", envelope.sender(), String::from_utf8_lossy(envelope.body()))?;
        }
        return Ok(());
    };
    if print_calls {
        outln!("call {}: {}", envelope.sender(), String::from_utf8_lossy(envelope.body()))?;
    }
    if delay_ms > 0 {
        std::thread::sleep(Duration::from_millis(delay_ms));
    }
    if no_reply {
        drop(token);
        return Ok(());
    }
    let body = match reply_size {
        Some(size) => vec![b'r'; size],
        None if describe => {
            let message = envelope.message();
            let sum = message.body().iter().fold(0u64, |a, &b| a.wrapping_add(u64::from(b)));
            format!(
                "{} bytes, read in place: {}, sealed: {}, byte sum {sum}",
                message.body().len(),
                message.is_zero_copy(),
                message.is_sealed()
            )
            .into_bytes()
        }
        None => envelope.into_message().into_body(),
    };
    if fail {
        let _ = token.fail(Message::new(body));
        return Ok(());
    }
    let body = if upper { body.to_ascii_uppercase() } else { body };
    // A caller that gave up or died is not this server's problem.
    let _ = token.reply(Message::new(body));
    Ok(())
}

/// Pulls one message from a mailbox by hand (docs/wire-format.md §2.8) and holds it unacknowledged.
fn mailbox_hog(name: &str) -> Result<()> {
    use postbox_core::wire::control::MAX_CONTROL_LEN;
    use postbox_core::{ControlMessage, FrameDecoder, FrameHeader, FrameKind, PortName};
    use postbox_transport::{ControlSocket, UnixLink, Wait};

    let control = ControlSocket::connect(&postbox::default_socket_path())?;
    let mut buf = vec![0u8; MAX_CONTROL_LEN];
    let mut request =
        |message: ControlMessage| -> Result<(ControlMessage, Vec<std::os::fd::OwnedFd>)> {
            let mut packet = Vec::new();
            message.encode(&mut packet);
            control.send(&packet, &[], Wait::Forever)?;
            let (len, fd) = control.recv(&mut buf, Wait::Forever)?;
            Ok((ControlMessage::decode(&buf[..len])?, fd))
        };
    request(ControlMessage::Hello { request: 1 })?;
    let name = PortName::new(name)?;
    let (answer, fd) = request(ControlMessage::ReceiveMailbox { request: 2, name })?;
    let (ControlMessage::Connected { .. }, Some([fd])) = (answer, <[_; 1]>::try_from(fd).ok())
    else {
        anyhow::bail!("no receiving link");
    };
    let link = UnixLink::from_fd(fd);
    ready(None);
    let pull = FrameHeader {
        kind: FrameKind::Call,
        priority: 0,
        msg_type: 0,
        id: 1,
        correlation: 1,
        body_len: 0,
        placement: postbox_core::Placement::Inline,
    };
    link.write_frame(&pull.encode(&[]), &[], Wait::Forever)?;
    let mut decoder = FrameDecoder::new(u32::MAX);
    let frame = loop {
        link.read_into(&mut decoder, Wait::Forever)?;
        if let Some(frame) = decoder.poll_frame()? {
            break frame;
        }
    };
    let body = frame.body.get(16..).unwrap_or_default();
    let mut out = std::io::stdout().lock();
    writeln!(out, "holding {}", String::from_utf8_lossy(body))?;
    out.flush()?;
    drop(out);
    loop {
        std::thread::park();
    }
}

/// Serves the raw baselines on the socketpair end passed as stdin.
fn raw_stdin_loop(size: usize, echo: bool) -> Result<()> {
    let fd = std::io::stdin().as_fd().try_clone_to_owned().context("take the socket on stdin")?;
    let socket = std::fs::File::from(fd);
    ready(None);
    raw_serve(socket, size, echo);
    Ok(())
}

/// Serves the raw baselines on one loopback TCP connection (see [`Role::RawTcp`]).
fn raw_tcp(size: usize, echo: bool) -> Result<()> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").context("listen on loopback")?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "ready {}", listener.local_addr()?)?;
    out.flush()?;
    drop(out);
    let (socket, _) = listener.accept().context("accept the bench's connection")?;
    // As the host links do: every write leaves at once, no Nagle delay.
    socket.set_nodelay(true)?;
    raw_serve(socket, size, echo);
    Ok(())
}

/// Reads `size`-byte messages until the peer closes; echoes each, or (a sink) answers one
/// byte to each whose first byte is 1.
fn raw_serve(mut socket: impl Read + Write, size: usize, echo: bool) {
    let mut buf = vec![0u8; size.max(1)];
    while socket.read_exact(&mut buf).is_ok() {
        let answer = if echo {
            socket.write_all(&buf)
        } else if buf[0] == 1 {
            socket.write_all(&[1])
        } else {
            Ok(())
        };
        if answer.is_err() {
            break;
        }
    }
}

/// Says ready once `serving` serves, then serves until the process is killed.
fn serve_until_killed(
    node: &Node,
    serving: Result<postbox::rpc::Serving, postbox::rpc::ServeError>,
) -> Result<()> {
    let _serving = serving?;
    ready(Some(node.process_id()));
    loop {
        std::thread::park();
    }
}

fn ready(process: Option<ProcessId>) {
    let mut out = std::io::stdout().lock();
    let _ = match process {
        Some(id) => writeln!(out, "ready {id}"),
        None => writeln!(out, "ready"),
    };
    let _ = out.flush();
}
