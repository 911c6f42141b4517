//! A warm typed call whose arguments and result own no heap memory allocates nothing, on the
//! caller's thread or on the server's, although its request and reply are too large to be
//! held in place: each thread's request, reply and received bodies take turns in the buffers
//! the thread kept (docs/benchmarks.md, "Buffers that take turns, answers looked for often").
#![allow(missing_docs)]

use postbox::Broker;
use stats_alloc::{Region, StatsAlloc, INSTRUMENTED_SYSTEM};

#[global_allocator]
static ALLOCATOR: &StatsAlloc<std::alloc::System> = &INSTRUMENTED_SYSTEM;

#[postbox::service]
pub trait Mixer {
    /// Twelve words in (a request of about 150 bytes), eight out (a reply of about 80).
    fn mix(&self, words: [u64; 12]) -> [u64; 8];
}

struct Xor;

impl Mixer for Xor {
    fn mix(&self, words: [u64; 12]) -> [u64; 8] {
        std::array::from_fn(|i| words[i] ^ words[i + 4] ^ u64::MAX)
    }
}

#[test]
fn a_warm_typed_call_with_requests_and_replies_over_64_bytes_allocates_nothing() {
    let broker = Broker::embedded().unwrap();
    let server_node = broker.node().unwrap();
    let _serving = MixerServer::new(Xor).start(&server_node, "alloc/mixer").unwrap();
    let node = broker.node().unwrap();
    let client = MixerClient::bind(&node, "alloc/mixer").unwrap();
    // Large values: every word takes 9 or 10 bytes as a varint.
    let words: [u64; 12] = std::array::from_fn(|i| u64::MAX - i as u64);
    let expected: [u64; 8] = std::array::from_fn(|i| words[i] ^ words[i + 4] ^ u64::MAX);
    for _ in 0..WARM_UP {
        assert_eq!(client.mix(words).unwrap(), expected);
    }
    let region = Region::new(ALLOCATOR);
    for _ in 0..CALLS {
        let mixed = client.mix(words);
        assert!(matches!(mixed, Ok(m) if m == expected));
    }
    let change = region.change();
    let allocations = (change.allocations + change.reallocations) as u64;
    // Before the buffers took turns, each call allocated at least three times (the request
    // on both sides, the reply on both sides): 10 063 allocations in 2000 calls. Other
    // threads allocate meanwhile at their own pace, whatever the calls do: the server's
    // control lane (a look every 5 ms, 6 or 7 allocations each), the broker. Fewer than one
    // allocation every other call means the calls themselves allocate nothing (one that
    // allocated would allocate on every call); about 30 in a release build, 150 in a debug one.
    assert!(
        allocations < CALLS / 2,
        "{allocations} allocations in {CALLS} calls: a warm typed call allocates"
    );
}

const WARM_UP: u64 = 200;
const CALLS: u64 = 2000;
