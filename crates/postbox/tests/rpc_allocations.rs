//! A warm typed call whose arguments and result own no heap memory allocates nothing, on the
//! caller's thread or on the server's, although its request and reply are too large to be
//! held in place: the caller builds its request on its stack, and each thread's other bodies
//! (replies built and received, requests received) take turns in the buffers the thread kept
//! (docs/benchmarks.md, "Buffers that take turns, answers looked for often").
//! Nor does one whose caller and server wait longer than they spin, and sleep: their polls
//! keep their descriptor sets on the stack.
#![allow(missing_docs)]

use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use postbox::Broker;
use stats_alloc::{Region, StatsAlloc, INSTRUMENTED_SYSTEM};

#[global_allocator]
static ALLOCATOR: &StatsAlloc<std::alloc::System> = &INSTRUMENTED_SYSTEM;

#[postbox::service]
pub trait Mixer {
    /// Twelve words in (a request of about 150 bytes), eight out (a reply of about 80).
    fn mix(&self, words: [u64; 12]) -> [u64; 8];
}

struct Xor {
    /// How long each call takes.
    takes: Duration,
}

impl Mixer for Xor {
    fn mix(&self, words: [u64; 12]) -> [u64; 8] {
        if !self.takes.is_zero() {
            std::thread::sleep(self.takes);
        }
        std::array::from_fn(|i| words[i] ^ words[i + 4] ^ u64::MAX)
    }
}

#[test]
fn a_warm_typed_call_with_requests_and_replies_over_64_bytes_allocates_nothing() {
    assert_calls_allocate_nothing(Duration::ZERO, CALLS);
}

#[test]
fn a_warm_typed_call_allocates_nothing_when_both_sides_wait_long_enough_to_sleep() {
    // Longer than any spin (at most 50 µs): the caller sleeps until its reply, and the
    // server's receiver until the next call.
    assert_calls_allocate_nothing(Duration::from_micros(300), SLOW_CALLS);
}

/// Makes `calls` warm calls, `pause` apart, to a method that takes `pause`; asserts that they
/// allocated nothing. The allocator's counts are the whole process's: one test at a time.
fn assert_calls_allocate_nothing(pause: Duration, calls: u64) {
    static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());
    let _alone = ONE_AT_A_TIME.lock().unwrap_or_else(PoisonError::into_inner);
    let broker = Broker::embedded().unwrap();
    let server_node = broker.node().unwrap();
    let name = format!("alloc/mixer-{}", pause.as_micros());
    let _serving = MixerServer::new(Xor { takes: pause }).start(&server_node, &name).unwrap();
    let node = broker.node().unwrap();
    let client = MixerClient::bind(&node, &name).unwrap();
    // Large values: every word takes 9 or 10 bytes as a varint.
    let words: [u64; 12] = std::array::from_fn(|i| u64::MAX - i as u64);
    let expected: [u64; 8] = std::array::from_fn(|i| words[i] ^ words[i + 4] ^ u64::MAX);
    let call = || {
        if !pause.is_zero() {
            std::thread::sleep(pause);
        }
        client.mix(words)
    };
    for _ in 0..WARM_UP {
        assert_eq!(call().unwrap(), expected);
    }
    let region = Region::new(ALLOCATOR);
    for _ in 0..calls {
        let mixed = call();
        assert!(matches!(mixed, Ok(m) if m == expected));
    }
    let change = region.change();
    let allocations = (change.allocations + change.reallocations) as u64;
    // Before the buffers took turns, each call allocated at least three times (the request
    // on both sides, the reply on both sides): 10 063 allocations in 2000 calls. Since polls
    // keep their descriptor sets on the stack, neither the calls nor the server's control
    // lane (a look every 5 ms, 6 or 7 allocations each before) allocate: 0 in both tests
    // here. Other threads (the broker) may still allocate at their own pace: fewer than one
    // allocation every other call means the calls themselves allocate nothing (one that
    // allocated would allocate on every call).
    assert!(
        allocations < calls / 2,
        "{allocations} allocations in {calls} calls: a warm typed call allocates"
    );
}

const WARM_UP: u64 = 200;
const CALLS: u64 = 2000;
/// Calls that sleep on both sides: 300 of them take about 0.2 s.
const SLOW_CALLS: u64 = 300;
