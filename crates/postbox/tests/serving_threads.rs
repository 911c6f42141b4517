//! Threads serving one port take turns reading its links: one reads while the others wait,
//! and one that leaves with a call wakes another only when calls keep threads away for
//! longer than a wake-up takes. Whatever the calls so far, a call that comes while every
//! thread that read is busy is taken by a waiting thread at once.

use std::sync::Arc;
use std::time::{Duration, Instant};

use postbox::{Broker, Message};

const WATCHDOG: Duration = Duration::from_secs(20);

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
    let broker = Broker::embedded().unwrap();
    let server = broker.node().unwrap();
    serve(server.port("pool/long").open().unwrap(), 4);
    let nodes: Vec<_> = (0..4).map(|_| broker.node().unwrap()).collect();
    let links: Vec<_> = nodes.iter().map(|n| n.connect("pool/long").unwrap()).collect();
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
    let broker = Broker::embedded().unwrap();
    let server = broker.node().unwrap();
    serve(server.port("pool/steady").open().unwrap(), 2);
    let nodes: Vec<_> = (0..2).map(|_| broker.node().unwrap()).collect();
    let links: Vec<_> = nodes.iter().map(|n| n.connect("pool/steady").unwrap()).collect();
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
