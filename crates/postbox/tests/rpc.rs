//! Typed services (`#[postbox::service]`): binding with the schema check, calls and their
//! typed errors, one-way methods, panics, deadlines inherited by nested calls, and many calls
//! in flight. Server and client nodes in this process, each with its own links, as two
//! processes would have.
#![allow(missing_docs)]

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use postbox::rpc::{BindError, CallContext, Mismatch, RpcError};
use postbox::{Broker, Message};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CalcError {
    DivByZero,
    Overflow { a: i64, b: i64 },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Stats {
    pub calls: u64,
    pub last: Option<String>,
}

#[postbox::service]
pub trait Calc {
    /// Adds.
    fn add(&self, a: i64, b: i64) -> i64;
    fn div(&self, a: i64, b: i64) -> Result<i64, CalcError>;
    #[oneway]
    fn note(&self, line: String);
    fn stats(&self) -> Stats;
    fn boom(&self, why: String) -> u8;
    fn sleep(&self, ms: u64) -> Option<u64>;
}

#[derive(Default)]
struct Calculator {
    calls: AtomicU64,
    last: std::sync::Mutex<Option<String>>,
}

impl Calc for Calculator {
    fn add(&self, a: i64, b: i64) -> i64 {
        self.calls.fetch_add(1, Ordering::Relaxed);
        a + b
    }

    fn div(&self, a: i64, b: i64) -> Result<i64, CalcError> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        match b {
            0 => Err(CalcError::DivByZero),
            -1 if a == i64::MIN => Err(CalcError::Overflow { a, b }),
            _ => Ok(a / b),
        }
    }

    fn note(&self, line: String) {
        *self.last.lock().unwrap() = Some(line);
    }

    fn stats(&self) -> Stats {
        Stats { calls: self.calls.load(Ordering::Relaxed), last: self.last.lock().unwrap().clone() }
    }

    fn boom(&self, why: String) -> u8 {
        panic!("{why}")
    }

    /// Sleeps, then says how much of the caller's deadline was left (ms) when it started.
    fn sleep(&self, ms: u64) -> Option<u64> {
        let left = CallContext::current().and_then(|c| c.remaining()).map(|d| d.as_millis() as u64);
        std::thread::sleep(Duration::from_millis(ms));
        left
    }
}

/// A server node serving Calc on `name` (the node must outlive the serving: its port is the
/// node's).
fn calc(broker: &Broker, name: &str, threads: usize) -> (postbox::Node, postbox::rpc::Serving) {
    let node = broker.node().unwrap();
    let serving =
        CalcServer::new(Calculator::default()).threads(threads).start(&node, name).unwrap();
    (node, serving)
}

#[test]
fn typed_calls_return_values_and_application_errors() {
    let broker = Broker::embedded().unwrap();
    let (_server, _serving) = calc(&broker, "rpc/calc", 1);
    let node = broker.node().unwrap();
    let calc = CalcClient::bind(&node, "rpc/calc").unwrap();
    assert_eq!(calc.add(2, 40).unwrap(), 42);
    assert_eq!(calc.div(84, 2).unwrap(), 42);
    assert_eq!(calc.div(1, 0), Err(RpcError::Remote(CalcError::DivByZero)));
    assert_eq!(
        calc.div(i64::MIN, -1),
        Err(RpcError::Remote(CalcError::Overflow { a: i64::MIN, b: -1 }))
    );
    calc.note("hello".into()).unwrap();
    // One-way requests and calls share the link, in order: the note is in before the stats.
    assert_eq!(calc.stats().unwrap(), Stats { calls: 4, last: Some("hello".into()) });
}

#[test]
fn a_method_that_panics_is_answered_with_the_panic_and_the_server_goes_on() {
    let broker = Broker::embedded().unwrap();
    let (_server, _serving) = calc(&broker, "rpc/panic", 1);
    let node = broker.node().unwrap();
    let calc = CalcClient::bind(&node, "rpc/panic").unwrap();
    assert_eq!(calc.boom("on purpose".into()), Err(RpcError::Panicked("on purpose".into())));
    assert_eq!(calc.add(1, 1).unwrap(), 2, "the same single server thread still serves");
}

#[allow(unreachable_pub, dead_code)]
mod other_definition {
    /// Another build's idea of `Calc`: `add` takes i32s, `mul` does not exist on the server.
    #[postbox::service]
    pub trait Calc {
        fn add(&self, a: i32, b: i32) -> i64;
    }

    #[postbox::service]
    pub trait Bigger {
        fn mul(&self, a: i64, b: i64) -> i64;
    }

    pub mod calc_with_mul {
        #[postbox::service]
        pub trait Calc {
            fn add(&self, a: i64, b: i64) -> i64;
            fn mul(&self, a: i64, b: i64) -> i64;
        }
    }

    pub mod calc_subset {
        /// A client that knows only some of the server's methods binds fine.
        #[postbox::service]
        pub trait Calc {
            fn div(&self, a: i64, b: i64) -> Result<i64, super::super::CalcError>;
        }
    }
}

#[test]
fn a_client_built_from_another_definition_fails_to_bind_naming_the_method() {
    let broker = Broker::embedded().unwrap();
    let (_server, _serving) = calc(&broker, "rpc/types", 1);
    let node = broker.node().unwrap();
    match other_definition::CalcClient::bind(&node, "rpc/types") {
        Err(BindError::TypeMismatch(Mismatch::Signature { method, what })) => {
            assert_eq!(method, "add");
            assert_eq!(what, "arguments");
        }
        other => panic!("expected a type mismatch on add, got {other:?}"),
    }
    match other_definition::calc_with_mul::CalcClient::bind(&node, "rpc/types") {
        Err(BindError::TypeMismatch(Mismatch::Missing { method })) => assert_eq!(method, "mul"),
        other => panic!("expected mul missing, got {other:?}"),
    }
    assert!(matches!(
        other_definition::BiggerClient::bind(&node, "rpc/types"),
        Err(BindError::TypeMismatch(Mismatch::Service { .. }))
    ));
    let subset = other_definition::calc_subset::CalcClient::bind(&node, "rpc/types").unwrap();
    assert_eq!(subset.div(9, 3).unwrap(), 3);
}

#[test]
fn binding_to_nothing_or_to_an_untyped_port_says_so() {
    let broker = Broker::embedded().unwrap();
    let node = broker.node().unwrap();
    assert_eq!(
        CalcClient::bind(&node, "rpc/nobody").unwrap_err(),
        BindError::NoSuchService("rpc/nobody".into())
    );
    // A plain echo port answers the describe request with its own bytes: not a schema.
    let echo_node = broker.node().unwrap();
    let port = echo_node.port("rpc/echo").open().unwrap();
    let echoing = std::thread::spawn(move || {
        let mut call = port.recv_timeout(Duration::from_secs(10)).unwrap();
        let token = call.take_reply_token().unwrap();
        token.reply(Message::new(call.body().to_vec())).unwrap();
    });
    assert!(matches!(CalcClient::bind(&node, "rpc/echo"), Err(BindError::Describe(_))));
    echoing.join().unwrap();
}

#[test]
fn a_server_rebuilt_after_binding_rejects_calls_of_the_old_definition() {
    let broker = Broker::embedded().unwrap();
    let (server, serving) = calc(&broker, "rpc/rebuilt", 1);
    let node = broker.node().unwrap();
    let calc = CalcClient::bind(&node, "rpc/rebuilt").unwrap();
    drop(serving);
    drop(server);
    // The same name, now served by another definition of Calc.
    struct Small;
    impl other_definition::Calc for Small {
        fn add(&self, a: i32, b: i32) -> i64 {
            i64::from(a) + i64::from(b)
        }
    }
    let server_node = broker.node().unwrap();
    let _serving =
        other_definition::CalcServer::new(Small).start(&server_node, "rpc/rebuilt").unwrap();
    // The old client's link was to the old server.
    assert_eq!(calc.add(1, 2), Err(RpcError::PeerDied));
    // Binding again says what changed before any call.
    assert!(matches!(
        CalcClient::bind(&node, "rpc/rebuilt"),
        Err(BindError::TypeMismatch(Mismatch::Signature { .. }))
    ));
}

#[test]
fn every_request_is_checked_against_the_servers_definition() {
    use postbox_rpc::{ReplyStatus, RequestHeader, RequestKind, RPC_MSG_TYPE};
    let broker = Broker::embedded().unwrap();
    let (_server, _serving) = calc(&broker, "rpc/checked", 1);
    let node = broker.node().unwrap();
    let raw = node.connect("rpc/checked").unwrap();
    let add_hash = CalcClient::schema().unwrap().method("add").unwrap().hash;
    let ask = |method: &str, hash: u64, args: &[u8], msg_type: u32| {
        let mut body = Vec::new();
        RequestHeader {
            kind: RequestKind::Call,
            call_id: 1,
            method_hash: hash,
            deadline_ns: 0,
            method: method.into(),
        }
        .encode(&mut body);
        body.extend_from_slice(args);
        let reply = raw.call(Message::new(body).with_type(msg_type)).unwrap();
        let (status, payload) = ReplyStatus::decode(reply.body()).unwrap();
        (status, payload.to_vec())
    };
    let args = postcard::to_stdvec(&(20i64, 22i64)).unwrap();
    let (status, payload) = ask("add", add_hash, &args, RPC_MSG_TYPE);
    assert_eq!((status, postcard::from_bytes::<i64>(&payload).unwrap()), (ReplyStatus::Ok, 42));
    // A caller from another definition (another hash) is refused, naming the method.
    let (status, payload) = ask("add", add_hash ^ 1, &args, RPC_MSG_TYPE);
    assert_eq!(status, ReplyStatus::TypeMismatch);
    assert!(String::from_utf8_lossy(&payload).contains("add"));
    // Hash 0 (the command line's untyped calls) skips the check.
    assert_eq!(ask("add", 0, &args, RPC_MSG_TYPE).0, ReplyStatus::Ok);
    assert_eq!(ask("sub", 0, &args, RPC_MSG_TYPE), (ReplyStatus::UnknownMethod, b"sub".to_vec()));
    assert_eq!(ask("add", 0, &[0xff], RPC_MSG_TYPE).0, ReplyStatus::BadRequest);
    assert_eq!(ask("add", 0, &args, 0).0, ReplyStatus::BadRequest);
    // Bytes that are no request at all are answered too.
    let reply = raw.call(Message::new(vec![9, 9]).with_type(RPC_MSG_TYPE)).unwrap();
    assert_eq!(ReplyStatus::decode(reply.body()).unwrap().0, ReplyStatus::BadRequest);
}

#[test]
fn deadlines_bound_calls_and_nested_calls_inherit_them() {
    let broker = Broker::embedded().unwrap();
    let (_server, _serving) = calc(&broker, "rpc/slow", 2);
    let node = broker.node().unwrap();
    let calc = CalcClient::bind(&node, "rpc/slow").unwrap();
    // No deadline: the method sees none.
    assert_eq!(calc.sleep(0).unwrap(), None);
    let hurried = calc.clone().with_timeout(Duration::from_millis(100));
    let started = Instant::now();
    assert_eq!(hurried.sleep(800), Err(RpcError::Timeout));
    assert!(started.elapsed() < Duration::from_millis(600), "the caller stopped waiting");
    let left = hurried.sleep(0).unwrap().expect("the server sees the deadline");
    assert!(left <= 100, "{left} ms left of 100");

    // A relay service calls Calc from inside its own method: the inner call inherits the
    // outer deadline, so the server of the inner call sees no more time than the outer had.
    struct Relay(CalcClient);
    impl Relayed for Relay {
        fn relay(&self, ms: u64) -> Option<u64> {
            self.0.sleep(ms).unwrap()
        }
    }
    let relay_node = broker.node().unwrap();
    let _relay = RelayedServer::new(Relay(calc.clone())).start(&relay_node, "rpc/relay").unwrap();
    let relay =
        RelayedClient::bind(&node, "rpc/relay").unwrap().with_timeout(Duration::from_millis(300));
    let inner_left = relay.relay(0).unwrap().expect("the inner call inherited a deadline");
    assert!(inner_left <= 300, "{inner_left} ms left of 300");
    assert!(inner_left > 0);
}

#[postbox::service]
pub trait Relayed {
    fn relay(&self, ms: u64) -> Option<u64>;
}

#[test]
fn many_calls_in_flight_from_many_threads_each_get_their_own_answer() {
    let broker = Broker::embedded().unwrap();
    let (_server, _serving) = calc(&broker, "rpc/many", 4);
    let node = broker.node().unwrap();
    let calc = Arc::new(CalcClient::bind(&node, "rpc/many").unwrap());
    let threads: Vec<_> = (0..8i64)
        .map(|t| {
            let calc = Arc::clone(&calc);
            std::thread::spawn(move || {
                for i in 0..200i64 {
                    assert_eq!(calc.add(t * 1_000, i).unwrap(), t * 1_000 + i);
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().unwrap();
    }
    assert_eq!(calc.stats().unwrap().calls, 1_600);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_async_forms_bind_call_and_pipeline() {
    let broker = Broker::embedded().unwrap();
    let (_server, _serving) = calc(&broker, "rpc/async", 2);
    let node = broker.node().unwrap();
    let calc = CalcClient::bind_async(&node, "rpc/async").await.unwrap();
    // Many calls in flight on one client, answered in any order, matched by correlation.
    let calls = (0..50i64).map(|i| calc.add_async(i, i));
    let sums = futures_join_all(calls).await;
    assert_eq!(sums, (0..50i64).map(|i| Ok(2 * i)).collect::<Vec<_>>());
    assert_eq!(calc.div_async(1, 0).await, Err(RpcError::Remote(CalcError::DivByZero)));
    calc.note_async("async".into()).await.unwrap();
    // Two server threads: the note may still be running when the next call is served.
    let deadline = Instant::now() + Duration::from_secs(10);
    while calc.stats_async().await.unwrap().last.as_deref() != Some("async") {
        assert!(Instant::now() < deadline, "the one-way note never ran");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Awaits every future concurrently (each on its own task would need 'static).
async fn futures_join_all<F: std::future::Future>(
    futures: impl Iterator<Item = F>,
) -> Vec<F::Output> {
    let mut pinned: Vec<_> = futures.map(Box::pin).collect();
    let mut out: Vec<Option<F::Output>> = pinned.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (future, slot) in pinned.iter_mut().zip(out.iter_mut()) {
            if slot.is_none() {
                match future.as_mut().poll(cx) {
                    std::task::Poll::Ready(value) => *slot = Some(value),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    out.into_iter().map(|v| v.expect("every future finished")).collect()
}
