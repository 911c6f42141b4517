//! Stress of the threads serving one port taking turns (`promotion.rs`): handlers from 0 to
//! 15 ms, quiet gaps up to 90 ms, threads receiving with short deadlines (some working
//! between receives), a batch receiver, a counter query now and then. There are fewer callers
//! than serving threads, so every call comes while some serving thread waits: none should
//! wait much longer than a look (1 ms) beyond its handler. Each test runs 6 s and measures
//! times on a shared machine, so they are left to `--ignored` runs.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use postbox::{Broker, Message};

const WATCHDOG: Duration = Duration::from_secs(20);

/// Sleeps as long as the call's first 4 bytes say (µs), then answers with the request.
fn handle(envelope: postbox::Envelope) {
    let us = u32::from_le_bytes(envelope.body()[..4].try_into().unwrap());
    if us > 0 {
        std::thread::sleep(Duration::from_micros(u64::from(us)));
    }
    let body = envelope.body().to_vec();
    let _ = envelope.reply(Message::new(body));
}

/// The next number of a xorshift sequence.
fn rng(seed: &mut u64) -> u64 {
    *seed ^= *seed << 13;
    *seed ^= *seed >> 7;
    *seed ^= *seed << 17;
    *seed
}

/// Serves port `name` with one thread per entry of `kinds` (`recv`, `short`: 300 µs
/// deadlines, `short_work`: the same with 200 µs of work after an empty receive, `batch`),
/// and calls it from `callers` threads for `secs` seconds, with a counter query every few
/// milliseconds if `stat`. Returns the worst time a call took beyond its handler, how many
/// took over 3 ms more, and how many calls were made.
fn run(
    name: &str,
    kinds: &[&str],
    callers: usize,
    secs: u64,
    stat: bool,
) -> (Duration, usize, usize) {
    let broker = Broker::embedded().unwrap();
    let server = broker.node().unwrap();
    let port = Arc::new(server.port(name).open().unwrap());
    let stop = Arc::new(AtomicBool::new(false));
    for kind in kinds {
        let port = Arc::clone(&port);
        let stop = Arc::clone(&stop);
        let kind = kind.to_string();
        std::thread::spawn(move || loop {
            if stop.load(Ordering::Relaxed) {
                return;
            }
            match kind.as_str() {
                "recv" => match port.recv() {
                    Ok(e) => handle(e),
                    Err(_) => return,
                },
                "short" => {
                    if let Ok(e) = port.recv_timeout(Duration::from_micros(300)) {
                        handle(e);
                    }
                }
                "short_work" => {
                    if let Ok(e) = port.recv_timeout(Duration::from_micros(300)) {
                        handle(e);
                    } else {
                        std::thread::sleep(Duration::from_micros(200));
                    }
                }
                "batch" => {
                    let mut out = Vec::new();
                    match port.recv_batch(&mut out, 1) {
                        Ok(_) => out.into_iter().for_each(handle),
                        Err(_) => return,
                    }
                }
                other => panic!("{other}"),
            }
        });
    }
    let monitor = stat.then(|| {
        let m = broker.node().unwrap();
        let stop = Arc::clone(&stop);
        let name = name.to_string();
        std::thread::spawn(move || {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let _ = m.stat(&name);
                n += 1;
                std::thread::sleep(Duration::from_micros(3_000 + (n % 5) * 1_700));
            }
        })
    });
    let nodes: Vec<_> = (0..callers).map(|_| broker.node().unwrap()).collect();
    let links: Vec<_> = nodes.iter().map(|n| n.connect(name).unwrap()).collect();
    let threads: Vec<_> = links
        .into_iter()
        .enumerate()
        .map(|(i, link)| {
            std::thread::spawn(move || {
                let mut seed = 0x9E37_79B9_7F4A_7C15u64 ^ ((i as u64 + 1) * 7919);
                let started = Instant::now();
                let mut worst = Duration::ZERO;
                let mut slow = 0;
                let mut calls = 0;
                while started.elapsed() < Duration::from_secs(secs) {
                    let handler_us: u32 = match rng(&mut seed) % 8 {
                        0..=3 => 0,
                        4 => 50,
                        5 => 2_000,
                        6 => 300,
                        _ => 15_000,
                    };
                    let gap_us = match rng(&mut seed) % 8 {
                        0..=3 => 0,
                        4 => 100,
                        5 => 3_000,
                        6 => 12_000,
                        _ => 90_000,
                    };
                    std::thread::sleep(Duration::from_micros(gap_us));
                    let t = Instant::now();
                    link.call_timeout(Message::new(handler_us.to_le_bytes().to_vec()), WATCHDOG)
                        .unwrap();
                    let over =
                        t.elapsed().saturating_sub(Duration::from_micros(u64::from(handler_us)));
                    worst = worst.max(over);
                    if over > Duration::from_millis(3) {
                        slow += 1;
                    }
                    calls += 1;
                }
                (worst, slow, calls)
            })
        })
        .collect();
    let mut worst = Duration::ZERO;
    let (mut slow, mut calls) = (0, 0);
    for t in threads {
        let (w, s, c) = t.join().unwrap();
        worst = worst.max(w);
        slow += s;
        calls += c;
    }
    stop.store(true, Ordering::Relaxed);
    if let Some(m) = monitor {
        m.join().unwrap();
    }
    (worst, slow, calls)
}

fn check(name: &str, kinds: &[&str], callers: usize, stat: bool) {
    let (worst, slow, calls) = run(name, kinds, callers, 6, stat);
    eprintln!("{name}: calls {calls}, over 3 ms {slow}, worst overhead {worst:?}");
    assert!(worst < Duration::from_millis(10), "{name}: {slow} slow calls, worst {worst:?}");
}

#[test]
#[ignore]
fn stress_recv_only() {
    check("stress/recv", &["recv"; 4], 3, false);
}

#[test]
#[ignore]
fn stress_mixed_short_deadlines() {
    check("stress/mixed", &["recv", "recv", "short", "short", "batch"], 3, true);
}

#[test]
#[ignore]
fn stress_short_deadlines_with_work() {
    check("stress/work", &["recv", "short_work", "short_work", "recv"], 2, true);
}
