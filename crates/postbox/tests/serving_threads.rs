//! Threads serving one port take turns reading its links: one reads while the others wait,
//! and one that leaves with a call wakes another only when calls keep threads away for
//! longer than a wake-up takes. Whatever the calls so far, a call that comes while every
//! thread that read is busy is taken by a waiting thread within about a millisecond (one
//! waiting thread looks that often while calls come), and a thread that read the links for a
//! counter query leaves them to a waiting one.

use std::sync::Arc;
use std::time::{Duration, Instant};

use postbox::{Broker, Connection, Message, Node};

const WATCHDOG: Duration = Duration::from_secs(20);

/// A port served by threads of [`serve`], and links to it, each from a node of its own.
struct Pool {
    links: Vec<Connection>,
    _nodes: Vec<Node>,
    _server: Node,
    _broker: Broker,
}

/// Port `name` served by `threads` threads, and `callers` links to it.
fn pool(name: &str, threads: usize, callers: usize) -> Pool {
    let broker = Broker::embedded().unwrap();
    let server = broker.node().unwrap();
    serve(server.port(name).open().unwrap(), threads);
    let nodes: Vec<_> = (0..callers).map(|_| broker.node().unwrap()).collect();
    let links = nodes.iter().map(|n| n.connect(name).unwrap()).collect();
    Pool { links, _nodes: nodes, _server: server, _broker: broker }
}

/// Serves `port` with `threads` threads: each call's first byte says how many tens of
/// milliseconds it takes; the reply is the request.
fn serve(port: postbox::Port, threads: usize) {
    let port = Arc::new(port);
    for _ in 0..threads {
        let port = Arc::clone(&port);
        std::thread::spawn(move || {
            while let Ok(envelope) = port.recv() {
                let tens = u64::from(envelope.body()[0]);
                std::thread::sleep(Duration::from_millis(10 * tens));
                let body = envelope.body().to_vec();
                let _ = envelope.reply(Message::new(body));
            }
        });
    }
}

/// After 500 short calls, four calls of 400 ms from four callers, the last three sent while
/// the first runs: the three waiting threads take them at once (about 450 ms for all), not
/// once the first is done (800 ms).
#[test]
fn a_pool_used_to_short_calls_runs_long_ones_at_once() {
    let mut pool = pool("pool/long", 4, 4);
    let links = std::mem::take(&mut pool.links);
    for i in 0..500u32 {
        let request = Message::new(vec![0, (i % 256) as u8]);
        let reply = links[0].call_timeout(request, WATCHDOG).unwrap();
        assert_eq!(reply.body(), [0, (i % 256) as u8]);
    }
    let started = Instant::now();
    let callers: Vec<_> = links
        .into_iter()
        .enumerate()
        .map(|(caller, link)| {
            let thread = std::thread::spawn(move || {
                link.call_timeout(Message::new(vec![40, caller as u8]), WATCHDOG).unwrap()
            });
            if caller == 0 {
                std::thread::sleep(Duration::from_millis(50));
            }
            thread
        })
        .collect();
    for (caller, thread) in callers.into_iter().enumerate() {
        assert_eq!(thread.join().unwrap().body(), [40, caller as u8]);
    }
    let took = started.elapsed();
    assert!(took < Duration::from_millis(700), "four 400 ms calls took {took:?}");
}

/// Two callers in step, each sending its next 30 ms call as soon as its last is answered, to
/// two threads: while one thread runs a call, the other takes the next one, so the twenty
/// calls take about 300 ms, not 600 (threads that stay away long wake a waiting one as they
/// leave).
#[test]
fn a_pool_of_long_calls_keeps_a_reader_while_its_threads_work() {
    let mut pool = pool("pool/steady", 2, 2);
    let links = std::mem::take(&mut pool.links);
    let started = Instant::now();
    let callers: Vec<_> = links
        .into_iter()
        .map(|link| {
            std::thread::spawn(move || {
                for i in 0..10u8 {
                    let reply = link.call_timeout(Message::new(vec![3, i]), WATCHDOG).unwrap();
                    assert_eq!(reply.body(), [3, i]);
                }
            })
        })
        .collect();
    for caller in callers {
        caller.join().unwrap();
    }
    let took = started.elapsed();
    assert!(took < Duration::from_millis(500), "twenty 30 ms calls took {took:?}");
}

/// Three threads, idle long enough for the waiting ones' looks to thin out to one per 64 ms.
/// Call 1 (300 ms): the leader takes it and, after the quiet spell, wakes the thread that
/// keeps the looks, which looks often again. Call 2 (300 ms), 10 ms later: a second thread
/// takes it and wakes nobody. Call 3 (short), 10 ms later: the third thread must take it
/// within a few milliseconds, not when a 64 ms wait begun before call 1 runs out. Returns
/// how long call 3 took.
fn one_trial(name: &str, extra: Duration) -> Duration {
    let mut pool = pool(name, 3, 3);
    let mut links = std::mem::take(&mut pool.links);
    // Every link used once (a first call sets things up).
    for link in &links {
        link.call_timeout(Message::new(vec![0, 0]), WATCHDOG).unwrap();
    }
    // A quiet spell: the waiting threads' looks thin out to 64 ms.
    std::thread::sleep(Duration::from_millis(400) + extra);
    let third = links.pop().unwrap();
    let long: Vec<_> = links
        .into_iter()
        .enumerate()
        .map(|(i, link)| {
            let t = std::thread::spawn(move || {
                link.call_timeout(Message::new(vec![30, i as u8]), WATCHDOG).unwrap();
            });
            std::thread::sleep(Duration::from_millis(10));
            t
        })
        .collect();
    let started = Instant::now();
    let reply = third.call_timeout(Message::new(vec![0, 9]), WATCHDOG).unwrap();
    let took = started.elapsed();
    assert_eq!(reply.body(), [0, 9]);
    for t in long {
        t.join().unwrap();
    }
    took
}

#[test]
fn a_call_while_two_of_three_threads_are_busy_is_taken_within_a_few_ms() {
    // Quiet spells 16 ms apart: the calls come at four phases of the third thread's 64 ms
    // wait, and at least one early in it.
    let took: Vec<Duration> = (0..4)
        .map(|i| one_trial(&format!("pool/three{i}"), Duration::from_millis(16 * i)))
        .collect();
    eprintln!("took {took:?}");
    let worst = *took.iter().max().unwrap();
    assert!(
        worst < Duration::from_millis(10),
        "a short call with a thread free took {took:?} (the third thread slept its 64 ms standby)"
    );
}

/// One serving thread; a monitor asks for the port's counters now and then (`Node::stat`,
/// which makes the owner read the links without taking anything). A serving thread that
/// comes back while that read runs waits behind it; the read must leave the links to it, or
/// it sleeps until its next look while calls sit in the link. Calls in a loop for a few
/// seconds: none takes anywhere near a look's 64 ms. Left to `--ignored` runs: the serving
/// thread comes back during such a read about once in 250 queries (seen with a trace),
/// and the worst call took 11.4 ms before the fix.
#[test]
#[ignore]
fn a_stat_query_does_not_leave_the_serving_thread_asleep() {
    let broker = Broker::embedded().unwrap();
    let server = broker.node().unwrap();
    let port = server.port("pool/stat").open().unwrap();
    std::thread::spawn(move || {
        while let Ok(envelope) = port.recv() {
            // A short handler: the thread is away often, and comes back often.
            std::thread::sleep(Duration::from_micros(50));
            let body = envelope.body().to_vec();
            let _ = envelope.reply(Message::new(body));
        }
    });
    let caller_node = broker.node().unwrap();
    let link = caller_node.connect("pool/stat").unwrap();
    let monitor = broker.node().unwrap();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stopper = Arc::clone(&stop);
    let stats = std::thread::spawn(move || {
        let mut n = 0u32;
        while !stopper.load(std::sync::atomic::Ordering::Relaxed) {
            let _ = monitor.stat("pool/stat");
            n += 1;
            // Sparse enough that the next query does not rescue a sleeping thread at once.
            std::thread::sleep(Duration::from_micros(5_000 + u64::from(n % 7) * 1_000));
        }
        n
    });
    let started = Instant::now();
    let mut worst = Duration::ZERO;
    let mut slow = 0;
    let mut calls = 0;
    while started.elapsed() < Duration::from_secs(4) {
        let t = Instant::now();
        link.call_timeout(Message::new(vec![0, 1]), WATCHDOG).unwrap();
        let took = t.elapsed();
        worst = worst.max(took);
        if took > Duration::from_millis(5) {
            slow += 1;
        }
        calls += 1;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let queries = stats.join().unwrap();
    eprintln!("calls {calls}, stat queries {queries}, slow (>5 ms) {slow}, worst {worst:?}");
    assert!(worst < Duration::from_millis(20), "{slow} calls over 5 ms, worst {worst:?}");
}
