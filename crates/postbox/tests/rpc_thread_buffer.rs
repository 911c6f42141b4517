//! The buffer each thread keeps for its typed requests and replies, on the paths that could
//! find it taken or gone: a typed call from a thread-local's destructor (the thread's buffer
//! already destroyed), a nested typed call in the middle of encoding, a panic while encoding.
#![allow(missing_docs)]

use std::cell::RefCell;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Mutex};

use postbox::Broker;

#[postbox::service]
pub trait Adder {
    fn add(&self, a: i64, b: i64) -> i64;
}

struct Sum;

impl Adder for Sum {
    fn add(&self, a: i64, b: i64) -> i64 {
        a + b
    }
}

/// What the typed call made from a thread-local's destructor came to.
type Outcome = Arc<Mutex<Option<Result<i64, String>>>>;

/// Makes a typed call when dropped (as a thread-local is at thread exit), and records how it
/// went (a panic included, caught here so that the process does not abort).
struct CallOnDrop {
    client: Option<AdderClient>,
    outcome: Outcome,
}

impl Drop for CallOnDrop {
    fn drop(&mut self) {
        let client = self.client.take().expect("a client");
        let result = catch_unwind(AssertUnwindSafe(|| client.add(2, 40)));
        let recorded = match result {
            Ok(Ok(sum)) => Ok(sum),
            Ok(Err(e)) => Err(format!("error: {e:?}")),
            Err(panic) => Err(format!(
                "panic: {}",
                panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                    .unwrap_or_default()
            )),
        };
        *self.outcome.lock().unwrap() = Some(recorded);
    }
}

thread_local! {
    static ON_EXIT: RefCell<Option<CallOnDrop>> = const { RefCell::new(None) };
}

/// A typed call made while the calling thread's thread-locals are destroyed (from the
/// destructor of a thread-local set up before the thread's first typed call) works: the
/// thread's buffer is gone by then, and the call builds its request in a new one.
#[test]
fn a_typed_call_from_a_thread_local_destructor_works() {
    let broker = Broker::embedded().unwrap();
    let server_node = broker.node().unwrap();
    let _serving = AdderServer::new(Sum).start(&server_node, "buffer/adder").unwrap();
    let node = broker.node().unwrap();
    let client = AdderClient::bind(&node, "buffer/adder").unwrap();
    let outcome: Outcome = Arc::default();
    let recorded = Arc::clone(&outcome);
    std::thread::spawn(move || {
        // Registered first, so destroyed after the thread-locals the call below registers.
        ON_EXIT.with(|slot| {
            *slot.borrow_mut() =
                Some(CallOnDrop { client: Some(client.clone()), outcome: recorded });
        });
        assert_eq!(client.add(1, 1).unwrap(), 2);
    })
    .join()
    .unwrap();
    assert_eq!(outcome.lock().unwrap().take(), Some(Ok(42)));
}

use std::sync::OnceLock;

/// A value whose encoding makes a nested typed call (while the thread's buffer is out), or
/// panics, as `MODE` says.
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
pub struct Tricky(pub i64);

static NESTED: OnceLock<AdderClient> = OnceLock::new();
static MODE: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(0);

impl serde::Serialize for Tricky {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match MODE.load(std::sync::atomic::Ordering::SeqCst) {
            1 => {
                // A nested typed call in the middle of encoding: 30 bytes of padding make
                // its request small, so its buffer is kept; then the outer one goes on.
                let sum = NESTED.get().unwrap().add(self.0, 1).unwrap();
                s.serialize_i64(sum - 1)
            }
            2 => panic!("encoding panics"),
            _ => s.serialize_i64(self.0),
        }
    }
}

#[postbox::service]
pub trait Tricks {
    fn pass(&self, t: Tricky, pad: Vec<u8>) -> (Tricky, Vec<u8>);
}

struct Passer;

impl Tricks for Passer {
    fn pass(&self, t: Tricky, pad: Vec<u8>) -> (Tricky, Vec<u8>) {
        (t, pad)
    }
}

#[test]
fn nested_calls_and_panics_while_encoding_leave_the_threads_buffer_sound() {
    let broker = Broker::embedded().unwrap();
    let adder_node = broker.node().unwrap();
    let _adder = AdderServer::new(Sum).start(&adder_node, "buffer/nested-adder").unwrap();
    let tricks_node = broker.node().unwrap();
    let _tricks =
        TricksServer::new(Passer).threads(1).start(&tricks_node, "buffer/tricks").unwrap();
    let node = broker.node().unwrap();
    NESTED.get_or_init(|| AdderClient::bind(&node, "buffer/nested-adder").unwrap());
    let tricks = TricksClient::bind(&node, "buffer/tricks").unwrap();
    for mode in [1u8, 2, 0, 1, 0] {
        for pad in [0usize, 5, 20, 40, 100] {
            let padding: Vec<u8> = (0..pad).map(|i| i as u8 ^ 0x5a).collect();
            MODE.store(mode, std::sync::atomic::Ordering::SeqCst);
            let result = catch_unwind(AssertUnwindSafe(|| tricks.pass(Tricky(7), padding.clone())));
            MODE.store(0, std::sync::atomic::Ordering::SeqCst);
            match mode {
                2 => assert!(result.is_err(), "the client's encoding panicked"),
                _ => assert_eq!(result.unwrap().unwrap(), (Tricky(7), padding.clone())),
            }
            // The next call of this thread, plain, arrives whole.
            assert_eq!(tricks.pass(Tricky(9), padding.clone()).unwrap(), (Tricky(9), padding));
        }
    }
}
