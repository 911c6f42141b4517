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
    // Each request its own call id (the same id would be answered from the reply cache).
    let ids = std::cell::Cell::new(100);
    let ask = |method: &str, hash: u64, args: &[u8], msg_type: u32| {
        ids.set(ids.get() + 1);
        let mut body = Vec::new();
        RequestHeader {
            kind: RequestKind::Call,
            flags: 0,
            call_id: ids.get(),
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
    // A method name that is not UTF-8 (the server compares names as bytes first): "ad" and a
    // byte that starts a sequence it does not finish.
    let mut body = Vec::new();
    RequestHeader {
        kind: RequestKind::Call,
        flags: 0,
        call_id: 1,
        method_hash: 0,
        deadline_ns: 0,
        method: "add".into(),
    }
    .encode(&mut body);
    let name_end = body.len();
    body[name_end - 1] = 0xc3;
    body.extend_from_slice(&args);
    let reply = raw.call(Message::new(body).with_type(RPC_MSG_TYPE)).unwrap();
    let (status, payload) = ReplyStatus::decode(reply.body()).unwrap();
    assert_eq!(status, ReplyStatus::BadRequest);
    assert!(String::from_utf8_lossy(payload).contains("UTF-8"), "{payload:?}");
}

#[test]
fn a_service_is_listed_as_one_and_can_be_called_from_its_described_schema() {
    let broker = Broker::embedded().unwrap();
    let (_server, _serving) = calc(&broker, "rpc/listed", 1);
    let node = broker.node().unwrap();
    let _plain = node.port("rpc/plain").open().unwrap();
    let listing = node.list().unwrap();
    let kind = |name: &str| listing.ports.iter().find(|p| p.name.as_str() == name).map(|p| p.kind);
    assert_eq!(kind("rpc/listed"), Some(postbox::EndpointKind::Service));
    assert_eq!(kind("rpc/plain"), Some(postbox::EndpointKind::Port));

    // A tool that knows nothing of Calc's types: the schema comes from the server.
    let any = postbox::rpc::Client::describe(&node, "rpc/listed").unwrap();
    assert_eq!(any.schema().name, "Calc");
    let names: Vec<&str> = any.schema().methods.iter().map(|m| m.name.as_str()).collect();
    assert_eq!(names, ["add", "div", "note", "stats", "boom", "sleep"]);
    assert_eq!(any.schema(), CalcClient::schema().unwrap());
    let sum = any.call_encoded("add", &postcard::to_stdvec(&(40i64, 2i64)).unwrap()).unwrap();
    assert_eq!(postcard::from_bytes::<i64>(&sum).unwrap(), 42);
    match any.call_encoded("div", &postcard::to_stdvec(&(1i64, 0i64)).unwrap()) {
        Err(RpcError::Remote(bytes)) => {
            assert_eq!(postcard::from_bytes::<CalcError>(&bytes).unwrap(), CalcError::DivByZero)
        }
        other => panic!("expected the method's error, got {other:?}"),
    }
    assert_eq!(any.call_encoded("nope", &[]), Err(RpcError::UnknownMethod("nope".into())));
    assert!(matches!(any.call_encoded("add", &[0xff]), Err(RpcError::BadRequest(_))));
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
trait Padded {
    /// `body`, back, with whether the call came with a deadline.
    fn echo(&self, body: Vec<u8>) -> (Vec<u8>, bool);
}

struct PaddedEcho;

impl Padded for PaddedEcho {
    fn echo(&self, body: Vec<u8>) -> (Vec<u8>, bool) {
        let deadline = CallContext::current().expect("served").deadline;
        (body, deadline.is_some())
    }
}

/// Small requests and replies travel in a message of their own (their buffer stays with the
/// thread): every size around where that stops (64 bytes of body) arrives whole, with its
/// deadline or without one, and so does the next call of the same thread.
#[test]
fn requests_and_replies_around_the_inline_size_arrive_whole_with_their_deadlines() {
    let echoes = PaddedEchoes::start("rpc/padded");
    // The request's header is 24 bytes with this method name (32 with a deadline): bodies of
    // 0..=120 bytes make requests and replies on both sides of 64 bytes.
    echoes.echo_each(0..=120);
    // A retrying call carries the deadline field; attempts without a time limit say so in it.
    let patient = echoes.plain.clone().with_retries(2, Duration::MAX);
    assert_eq!(patient.echo(vec![7; 64]).unwrap(), (vec![7; 64], false));
    let retrying = echoes.plain.clone().with_retries(2, Duration::from_secs(60));
    assert_eq!(retrying.echo(vec![7; 64]).unwrap(), (vec![7; 64], true));
}

#[test]
fn requests_around_and_beyond_the_callers_stack_buffer_arrive_whole_with_their_deadlines() {
    // A call's request is built on the caller's stack when it fits in 256 bytes (a header of 24
    // bytes, 32 with a deadline, then the body's length and the body), else in a buffer; from
    // 32 KiB on, its body goes through the link's payload pool. The reply (two bytes of
    // status, the body's length and the body, then a flag) crosses the server's 256-byte stack
    // the same way.
    PaddedEchoes::start("rpc/stacked").echo_each((180..=260).chain([1000, 4096, 40_000, 300_000]));
}

#[postbox::service]
trait Filler {
    /// `len` bytes.
    fn fill(&self, len: u64) -> Vec<u8>;
}

struct Fill;

impl Filler for Fill {
    fn fill(&self, len: u64) -> Vec<u8> {
        vec![9; usize::try_from(len).unwrap()]
    }
}

/// A result larger than the links carry fails its call with the server's word on it, never a
/// hang, and the server goes on: a reply written from the server's buffer (below 32 KiB) and
/// one written as a message alike.
#[test]
fn a_result_over_the_size_limit_fails_its_call_saying_so_and_the_server_goes_on() {
    let broker = Broker::embedded_with(|config| config.max_message_size(4096)).unwrap();
    let server_node = broker.node().unwrap();
    let _serving = FillerServer::new(Fill).start(&server_node, "rpc/fill").unwrap();
    let node = broker.node().unwrap();
    let filler = FillerClient::bind(&node, "rpc/fill").unwrap();
    // The reply holds two bytes of status and two of length before the bytes.
    assert_eq!(filler.fill(4092).unwrap(), vec![9; 4092]);
    for len in [4093, 5000, 40_000] {
        match filler.fill(len) {
            Err(RpcError::Decode(text)) => {
                assert!(text.contains("exceeds the limit of 4096"), "{len} bytes: {text}");
            }
            other => panic!("{len} bytes: expected the limit's error, got {other:?}"),
        }
        assert_eq!(filler.fill(3).unwrap(), vec![9; 3], "after {len} bytes");
    }
}

/// A `Padded` echo served on port `name` of a broker of its own, and a client bound to it.
struct PaddedEchoes {
    plain: PaddedClient,
    _serving: postbox::rpc::Serving,
    _nodes: [postbox::Node; 2],
    _broker: Broker,
}

impl PaddedEchoes {
    fn start(name: &str) -> Self {
        let broker = Broker::embedded().unwrap();
        let server_node = broker.node().unwrap();
        let serving = PaddedServer::new(PaddedEcho).start(&server_node, name).unwrap();
        let node = broker.node().unwrap();
        let plain = PaddedClient::bind(&node, name).unwrap();
        Self { plain, _serving: serving, _nodes: [node, server_node], _broker: broker }
    }

    /// Echoes a body of each length in `lens`, without a deadline and with one, and checks
    /// what comes back.
    fn echo_each(&self, lens: impl IntoIterator<Item = usize>) {
        let hurried = self.plain.clone().with_timeout(Duration::from_secs(60));
        for len in lens {
            let body: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            assert_eq!(
                self.plain.echo(body.clone()).unwrap(),
                (body.clone(), false),
                "{len} bytes"
            );
            assert_eq!(hurried.echo(body.clone()).unwrap(), (body, true), "{len} bytes");
        }
    }
}

/// Counts how often its method really ran, and lets a test wait until a run started.
#[postbox::service]
pub trait Once {
    fn slow_count(&self, ms: u64) -> u64;
}

#[derive(Default)]
struct Counting {
    runs: AtomicU64,
    started: std::sync::Mutex<u64>,
    started_changed: std::sync::Condvar,
}

impl Once for Counting {
    fn slow_count(&self, ms: u64) -> u64 {
        let runs = self.runs.fetch_add(1, Ordering::SeqCst) + 1;
        *self.started.lock().unwrap() += 1;
        self.started_changed.notify_all();
        std::thread::sleep(Duration::from_millis(ms));
        runs
    }
}

impl Counting {
    fn wait_started(&self, runs: u64) {
        let started = self.started.lock().unwrap();
        let (started, timeout) = self
            .started_changed
            .wait_timeout_while(started, Duration::from_secs(10), |n| *n < runs)
            .unwrap();
        assert!(!timeout.timed_out(), "the method never started");
        drop(started);
    }
}

/// The server's implementation: the test keeps another handle to count runs.
struct Shared(Arc<Counting>);

impl Once for Shared {
    fn slow_count(&self, ms: u64) -> u64 {
        self.0.slow_count(ms)
    }
}

#[test]
fn a_call_retried_after_its_answer_was_late_runs_once() {
    let broker = Broker::embedded().unwrap();
    let server_node = broker.node().unwrap();
    let counting = Arc::new(Counting::default());
    let _serving = OnceServer::new(Shared(Arc::clone(&counting)))
        .threads(2)
        .start(&server_node, "rpc/once")
        .unwrap();
    let node = broker.node().unwrap();
    // Each attempt waits 60 ms; the method takes 250: the third or fourth attempt gets the
    // answer of the one run, which the retries waited for.
    let once = OnceClient::bind(&node, "rpc/once").unwrap();
    let retrying = OnceClient::bind(&node, "rpc/once").unwrap();
    let retrying = OnceClient::from_client(
        retrying.client().clone().with_retries(10, Duration::from_millis(60)),
    );
    assert_eq!(retrying.slow_count(250).unwrap(), 1);
    assert_eq!(counting.runs.load(Ordering::SeqCst), 1, "ran once for every attempt");
    // Without retries the same wait is a timeout.
    let hurried = once.with_timeout(Duration::from_millis(60));
    assert_eq!(hurried.slow_count(250), Err(RpcError::Timeout));
}

#[test]
fn a_call_retried_after_its_link_was_cut_runs_once_and_the_retry_gets_the_answer() {
    let broker = Broker::embedded().unwrap();
    let server_node = broker.node().unwrap();
    let counting = Arc::new(Counting::default());
    let _serving = OnceServer::new(Shared(Arc::clone(&counting)))
        .threads(2)
        .start(&server_node, "rpc/cut")
        .unwrap();
    let node = broker.node().unwrap();
    let once = OnceClient::bind(&node, "rpc/cut").unwrap();
    let once =
        OnceClient::from_client(once.client().clone().with_retries(3, Duration::from_secs(10)));
    let first_link = once.client().connection();
    let cutter = {
        let counting = Arc::clone(&counting);
        std::thread::spawn(move || {
            // Between request and reply: the method runs, then the link goes.
            counting.wait_started(1);
            first_link.close();
        })
    };
    assert_eq!(once.slow_count(300).unwrap(), 1);
    cutter.join().unwrap();
    assert_eq!(counting.runs.load(Ordering::SeqCst), 1, "the retry did not run it again");
    assert!(!once.client().connection().is_closed(), "the client connected again");
    assert_eq!(once.slow_count(0).unwrap(), 2, "a new call runs");
}

#[test]
fn a_retrying_client_reaches_a_server_restarted_on_the_same_name() {
    let broker = Broker::embedded().unwrap();
    let (server, serving) = calc(&broker, "rpc/restart", 1);
    let node = broker.node().unwrap();
    let calc = CalcClient::bind(&node, "rpc/restart")
        .unwrap()
        .with_retries(40, Duration::from_millis(200));
    assert_eq!(calc.add(1, 1).unwrap(), 2);
    drop(serving);
    drop(server);
    // The same service comes back 300 ms later; a call made meanwhile waits for it.
    let restarted = {
        let broker_node = broker.node().unwrap();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(300));
            let serving =
                CalcServer::new(Calculator::default()).start(&broker_node, "rpc/restart").unwrap();
            (broker_node, serving)
        })
    };
    let started = Instant::now();
    assert_eq!(calc.add(2, 3).unwrap(), 5);
    assert!(started.elapsed() >= Duration::from_millis(200), "{:?}", started.elapsed());
    let _kept = restarted.join().unwrap();
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

/// A method that waits for its caller's cancel (or its time), and counts the cancels it saw.
#[postbox::service]
pub trait Patient {
    fn wait(&self, ms: u64) -> bool;
    fn cancels_seen(&self) -> u64;
}

#[derive(Default)]
struct Waiter {
    seen: AtomicU64,
}

impl Patient for Waiter {
    fn wait(&self, ms: u64) -> bool {
        let context = CallContext::current().expect("served");
        let end = Instant::now() + Duration::from_millis(ms);
        while Instant::now() < end {
            if context.is_cancelled() {
                self.seen.fetch_add(1, Ordering::SeqCst);
                return false;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        true
    }

    fn cancels_seen(&self) -> u64 {
        self.seen.load(Ordering::SeqCst)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_an_async_call_cancels_it_at_the_server() {
    let broker = Broker::embedded().unwrap();
    let server_node = broker.node().unwrap();
    // One thread: the cancel comes on the control lane while that thread runs the call.
    let _serving = PatientServer::new(Waiter::default())
        .threads(1)
        .start(&server_node, "rpc/patient")
        .unwrap();
    let node = broker.node().unwrap();
    let patient = PatientClient::bind_async(&node, "rpc/patient").await.unwrap();
    assert!(patient.wait_async(1).await.unwrap(), "an uncancelled call runs to its end");
    // The caller stops waiting after 100 ms: the future is dropped.
    let gave_up =
        tokio::time::timeout(Duration::from_millis(100), patient.wait_async(20_000)).await;
    assert!(gave_up.is_err());
    // The method hears of it and stops, far before its 20 s.
    let deadline = Instant::now() + Duration::from_secs(10);
    while patient.cancels_seen_async().await.unwrap() != 1 {
        assert!(Instant::now() < deadline, "the server never saw the cancel");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // A call that completes sends no cancel.
    assert!(patient.wait_async(1).await.unwrap());
    assert_eq!(patient.cancels_seen_async().await.unwrap(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_served_from_tokio_answers_many_calls_at_once() {
    let broker = Broker::embedded().unwrap();
    let server_node = broker.node().unwrap();
    let serving = tokio::spawn(async move {
        CalcServer::new(Calculator::default())
            .threads(8)
            .serve_async(&server_node, "rpc/tasks")
            .await
    });
    let node = broker.node().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let calc = loop {
        match CalcClient::bind_async(&node, "rpc/tasks").await {
            Ok(calc) => break calc,
            Err(BindError::NoSuchService(_)) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            Err(e) => panic!("{e}"),
        }
    };
    // Eight slow calls at once finish in about the time of one: they run concurrently.
    let started = Instant::now();
    let sleeps = futures_join_all((0..8).map(|_| calc.sleep_async(300))).await;
    assert!(sleeps.iter().all(Result::is_ok), "{sleeps:?}");
    assert!(started.elapsed() < Duration::from_millis(1_500), "{:?}", started.elapsed());
    assert_eq!(calc.add_async(1, 2).await.unwrap(), 3);
    assert_eq!(
        calc.boom_async("in a task".into()).await,
        Err(RpcError::Panicked("in a task".into()))
    );
    serving.abort();
}

/// A recursive argument type: a hostile client may nest it as deep as its bytes allow.
#[derive(Debug, Serialize, Deserialize)]
pub enum List {
    Nil,
    Cons(Box<List>),
}

#[postbox::service]
pub trait Lists {
    fn len(&self, list: List) -> u64;
}

struct Counter;

impl Lists for Counter {
    fn len(&self, list: List) -> u64 {
        let mut n = 0;
        let mut at = &list;
        while let List::Cons(next) = at {
            n += 1;
            at = next;
        }
        n
    }
}

#[test]
fn arguments_nested_past_the_limit_are_refused_and_the_server_lives() {
    use postbox_rpc::{ReplyStatus, RequestHeader, RequestKind, RPC_MSG_TYPE};
    let broker = Broker::embedded().unwrap();
    let server_node = broker.node().unwrap();
    let _serving = ListsServer::new(Counter).start(&server_node, "rpc/lists").unwrap();
    let node = broker.node().unwrap();
    let lists = ListsClient::bind(&node, "rpc/lists").unwrap();
    let mut list = List::Nil;
    for _ in 0..50 {
        list = List::Cons(Box::new(list));
    }
    assert_eq!(lists.len(list).unwrap(), 50);
    // A million levels (a million bytes): serde would overflow the serving thread's stack.
    let mut body = Vec::new();
    let request = RequestHeader {
        kind: RequestKind::Call,
        flags: 0,
        call_id: 1,
        method_hash: 0,
        deadline_ns: 0,
        method: "len".into(),
    };
    request.encode(&mut body);
    body.extend(std::iter::repeat_n(1u8, 1_000_000));
    body.push(0);
    let raw = node.connect("rpc/lists").unwrap();
    let reply = raw.call(Message::new(body).with_type(RPC_MSG_TYPE)).unwrap();
    assert_eq!(ReplyStatus::decode(reply.body()).unwrap().0, ReplyStatus::BadRequest);
    assert_eq!(lists.len(List::Cons(Box::new(List::Nil))).unwrap(), 1, "still serving");
}

#[test]
fn a_busy_server_still_describes_itself_and_counts_deadlines_from_arrival() {
    let broker = Broker::embedded().unwrap();
    let server_node = broker.node().unwrap();
    let counting = Arc::new(Counting::default());
    let _serving = OnceServer::new(Shared(Arc::clone(&counting)))
        .threads(1)
        .start(&server_node, "rpc/busy")
        .unwrap();
    let node = broker.node().unwrap();
    let once = OnceClient::bind(&node, "rpc/busy").unwrap();
    let busy = {
        let once = once.clone();
        std::thread::spawn(move || once.slow_count(700))
    };
    counting.wait_started(1);
    // Its only worker is busy: binding is answered on the control lane all the same.
    let started = Instant::now();
    let other = OnceClient::bind(&node, "rpc/busy").unwrap();
    assert!(started.elapsed() < Duration::from_millis(500), "{:?}", started.elapsed());
    // A call with 100 ms waits in the queue longer than that: it times out, and when the
    // worker gets to it, its deadline (counted from arrival) has passed: it does not run.
    let hurried = other.with_timeout(Duration::from_millis(100));
    assert_eq!(hurried.slow_count(0), Err(RpcError::Timeout));
    assert_eq!(busy.join().unwrap().unwrap(), 1);
    assert_eq!(once.slow_count(0).unwrap(), 2, "the hurried call never ran");
    // A timeout too long for the clock is no timeout, not a panic.
    assert_eq!(once.clone().with_timeout(Duration::MAX).slow_count(0).unwrap(), 3);
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

#[test]
fn the_brokers_policy_decides_who_may_bind_and_which_methods_go_through() {
    use postbox::{AccessDenied, Operation, Policy, Rights};
    use std::os::unix::fs::MetadataExt;
    // The policy belongs to another user, so this process is a stranger to it.
    let me = std::fs::metadata("/proc/self").unwrap().uid();
    let rules = |operations: &str| {
        let text = format!(
            "[[allow]]\nnames = [\"calc\"]\nuids = [{me}]\noperations = [\"register\"{operations}]"
        );
        Policy::from_toml(&text, 4_000_000_000).unwrap()
    };
    let policy = rules("");
    let broker = Broker::embedded_with(|config| config.policy(policy)).unwrap();
    let (server, _serving) = calc(&broker, "calc", 1);
    let client = broker.node().unwrap();
    let denied = AccessDenied::new(Operation::Call, "calc");
    assert_eq!(CalcClient::bind(&client, "calc").unwrap_err(), BindError::AccessDenied(denied));

    // Calls only: the methods answer, the one-way method is refused by name.
    broker.reload_policy(rules(", \"call\""));
    let deadline = Instant::now() + Duration::from_secs(20);
    let calc = loop {
        match CalcClient::bind(&client, "calc") {
            Ok(calc) => break calc,
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(5)),
            Err(e) => panic!("{e}"),
        }
    };
    assert_eq!(calc.add(1, 2).unwrap(), 3);
    assert_eq!(
        calc.note("x".into()),
        Err(RpcError::AccessDenied(AccessDenied::new(Operation::Send, "calc")))
    );

    // A grant from the service's owner lets another node in without a rule of its own.
    broker.reload_policy(rules(""));
    let friend = broker.node().unwrap();
    server.grant("calc", friend.process_id(), Rights::ALL).unwrap();
    let calc = CalcClient::bind(&friend, "calc").unwrap();
    calc.note("granted".into()).unwrap();
    assert_eq!(calc.stats().unwrap().last.as_deref(), Some("granted"));
}
