//! A typed call's answer does not wait for what either side drops: the server answers before
//! it drops the method's result, and the client drops its arguments while it waits for the
//! reply. A dispatch that returns without answering, a drop that panics after the answer, or a
//! result serde refuses to encode leaves the caller a clear answer and the server serving.
//!
//! Each test makes the order observable without timing: a drop that blocks until the other
//! side has done its part would deadlock (and time out) in the old order.
#![allow(missing_docs)]

use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use postbox::rpc::{
    Answer, Args, CallContext, Client, Dispatch, MethodKind, Never, Outcome, RpcError,
    SchemaBuilder, ServiceSchema,
};
use postbox::Broker;
use serde::{Deserialize, Serialize};

/// Released by the test once its client has the reply.
static RESULT_MAY_DROP: AtomicBool = AtomicBool::new(false);
/// Set when a [`Token`] is dropped on a thread that serves no call (the client's).
static CLIENT_DROPPED_TOKEN: AtomicBool = AtomicBool::new(false);

/// A result whose drop on the server (inside the call) waits for [`RESULT_MAY_DROP`].
#[derive(Debug, PartialEq, Serialize, Deserialize)]
pub struct Held(u32);

impl Drop for Held {
    fn drop(&mut self) {
        if CallContext::current().is_some() {
            wait_for(&RESULT_MAY_DROP);
        }
    }
}

/// A result whose drop on the server (inside the call) panics.
#[derive(Debug, PartialEq, Serialize, Deserialize)]
pub struct Bomb(u32);

impl Drop for Bomb {
    fn drop(&mut self) {
        if CallContext::current().is_some() && !std::thread::panicking() {
            panic!("the result's drop panicked");
        }
    }
}

/// An argument whose drop on the client raises [`CLIENT_DROPPED_TOKEN`].
#[derive(Debug, Serialize, Deserialize)]
pub struct Token(u32);

impl Drop for Token {
    fn drop(&mut self) {
        if CallContext::current().is_none() {
            CLIENT_DROPPED_TOKEN.store(true, Ordering::Release);
        }
    }
}

/// An argument whose drop on the client panics when it holds 1.
#[derive(Debug, Serialize, Deserialize)]
pub struct Fuse(u32);

impl Drop for Fuse {
    fn drop(&mut self) {
        if CallContext::current().is_none() && self.0 == 1 && !std::thread::panicking() {
            panic!("{FUSE_PANIC}");
        }
    }
}

#[postbox::service]
pub trait Order {
    fn hold(&self, n: u32) -> Held;
    fn bomb(&self, n: u32) -> Bomb;
    fn fuse(&self, fuse: Fuse) -> u32;
    /// True when the client dropped `token` while this method ran.
    fn client_dropped(&self, token: Token) -> bool;
}

struct Server;

impl Order for Server {
    fn hold(&self, n: u32) -> Held {
        Held(n)
    }

    fn bomb(&self, n: u32) -> Bomb {
        Bomb(n)
    }

    fn client_dropped(&self, _token: Token) -> bool {
        wait_for(&CLIENT_DROPPED_TOKEN)
    }

    fn fuse(&self, mut fuse: Fuse) -> u32 {
        std::mem::replace(&mut fuse.0, 0)
    }
}

#[test]
fn the_server_answers_before_it_drops_the_result() {
    let served = serve("order/hold", WAIT / 2);
    let client = &served.client;
    // Dropped after the answer, the result cannot hold the reply back.
    assert_eq!(client.hold(7), Ok(Held(7)));
    RESULT_MAY_DROP.store(true, Ordering::Release);
    assert_eq!(client.hold(8), Ok(Held(8)), "the server goes on");
}

#[test]
fn a_panic_after_the_answer_leaves_the_caller_its_reply() {
    let served = serve("order/bomb", WAIT);
    let client = &served.client;
    for n in 0..3 {
        assert_eq!(client.bomb(n), Ok(Bomb(n)), "call {n}: the answer stands, the server serves");
    }
}

#[test]
fn the_client_drops_its_arguments_while_it_waits() {
    let served = serve("order/args", WAIT * 2);
    let client = &served.client;
    CLIENT_DROPPED_TOKEN.store(false, Ordering::Release);
    assert_eq!(client.client_dropped(Token(1)), Ok(true), "the server saw the drop while it ran");
}

#[test]
fn a_call_whose_arguments_panic_when_dropped_leaves_no_call_in_flight() {
    let served = serve("order/fuse", WAIT);
    let client = &served.client;
    // Those panics are expected: not one line each on the test's output.
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if !info.to_string().contains(FUSE_PANIC) {
            previous(info);
        }
    }));
    // More panics than a link lets calls be in flight (1024 by default).
    for call in 0..1100 {
        let result = std::panic::catch_unwind(AssertUnwindSafe(|| client.fuse(Fuse(1))));
        assert!(result.is_err(), "call {call}: the drop's panic reaches the caller");
    }
    assert_eq!(client.fuse(Fuse(2)), Ok(2), "every call that panicked was forgotten");
}

/// The order service on `name`, and a client of it whose calls wait at most `timeout`.
fn serve(name: &str, timeout: Duration) -> Served {
    let broker = Broker::embedded().unwrap();
    let server = broker.node().unwrap();
    let serving = OrderServer::new(Server).start(&server, name).unwrap();
    let node = broker.node().unwrap();
    let client = OrderClient::bind(&node, name).unwrap().with_timeout(timeout);
    Served { client, _node: node, _serving: serving, _server: server, _broker: broker }
}

/// The hand-written dispatch `make` makes of `schema` on `name`, and a client of it whose calls
/// wait at most [`WAIT`].
fn serve_by_hand<D: Dispatch>(
    name: &str,
    schema: ServiceSchema,
    make: impl FnOnce(&'static ServiceSchema) -> D,
) -> Served<Client> {
    let schema: &'static ServiceSchema = Box::leak(Box::new(schema));
    let broker = Broker::embedded().unwrap();
    let server = broker.node().unwrap();
    let serving = postbox::rpc::start(&server, name, Arc::new(make(schema)), 1).unwrap();
    let node = broker.node().unwrap();
    let client = Client::bind(&node, name, schema).unwrap().with_timeout(WAIT);
    Served { client, _node: node, _serving: serving, _server: server, _broker: broker }
}

/// What [`serve`] or [`serve_by_hand`] made, dropped in this order: the client first, the
/// broker last.
struct Served<C = OrderClient> {
    client: C,
    _node: postbox::Node,
    _serving: postbox::rpc::Serving,
    _server: postbox::Node,
    _broker: Broker,
}

/// A hand-written dispatch that answers nothing for method 0, and panics before answering for
/// method 1.
struct Mute(&'static ServiceSchema);

impl Dispatch for Mute {
    fn schema(&self) -> &'static ServiceSchema {
        self.0
    }

    fn dispatch(&self, method: usize, _args: Args<'_>, _answer: Answer<'_>) {
        if method == 1 {
            panic!("before any answer");
        }
    }
}

#[test]
fn a_dispatch_that_returns_without_answering_is_answered_as_a_panic() {
    let schema = SchemaBuilder::new("Mute")
        .method::<(), u32, Never>("quiet", MethodKind::Call, &[], false)
        .and_then(|b| b.method::<(), u32, Never>("loud", MethodKind::Call, &[], false))
        .unwrap()
        .finish();
    let served = serve_by_hand("order/mute", schema, Mute);
    let client = &served.client;
    match client.call::<_, u32, Never>(0, ()) {
        Err(RpcError::Panicked(what)) => assert!(what.contains("no answer"), "{what}"),
        other => panic!("expected a panic answer, got {other:?}"),
    }
    match client.call::<_, u32, Never>(1, ()) {
        Err(RpcError::Panicked(what)) => assert!(what.contains("before any answer"), "{what}"),
        other => panic!("expected the panic's message, got {other:?}"),
    }
    assert!(matches!(client.call::<_, u32, Never>(0, ()), Err(RpcError::Panicked(_))));
}

/// A value serde refuses to encode.
struct Refused;

impl Serialize for Refused {
    fn serialize<S: serde::Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
        Err(serde::ser::Error::custom("refused on purpose"))
    }
}

/// Answers method 0 with a result serde refuses, method 1 with an error it refuses, method 2
/// with 7, method 3 with `n` bytes.
struct Picky(&'static ServiceSchema);

impl Dispatch for Picky {
    fn schema(&self) -> &'static ServiceSchema {
        self.0
    }

    fn dispatch(&self, method: usize, args: Args<'_>, answer: Answer<'_>) {
        match method {
            0 => answer.ok(&Refused),
            1 => answer.result::<u32, _>(&Err(Refused)),
            2 => answer.ok(&7u32),
            _ => match Outcome::decode_args::<(u32,)>(args) {
                Ok((n,)) => answer.ok(&vec![3u8; n as usize]),
                Err(refusal) => answer.with(refusal),
            },
        }
    }
}

#[test]
fn a_result_serde_refuses_answers_as_a_panic_whether_sent_at_once_or_kept_for_retries() {
    let schema = SchemaBuilder::new("Picky")
        .method::<(), u32, Never>("result", MethodKind::Call, &[], false)
        .and_then(|b| b.method::<(), u32, u32>("error", MethodKind::Call, &[], true))
        .and_then(|b| b.method::<(), u32, Never>("seven", MethodKind::Call, &[], false))
        .and_then(|b| b.method::<(u32,), Vec<u8>, Never>("many", MethodKind::Call, &["n"], false))
        .unwrap()
        .finish();
    let served = serve_by_hand("order/picky", schema, Picky);
    // A client that retries has its replies kept by the server before they are sent.
    let kept = served.client.clone().with_retries(2, WAIT);
    for client in [&served.client, &kept] {
        match client.call::<_, u32, Never>(0, ()) {
            Err(RpcError::Panicked(what)) => {
                assert!(what.contains("cannot encode the result"), "{what}");
            }
            other => panic!("expected the encoding's failure, got {other:?}"),
        }
        match client.call::<_, u32, u32>(1, ()) {
            Err(RpcError::Panicked(what)) => {
                assert!(what.contains("cannot encode the error"), "{what}");
            }
            other => panic!("expected the encoding's failure, got {other:?}"),
        }
        assert_eq!(client.call::<_, u32, Never>(2, ()), Ok(7), "the server goes on");
        // Around the server's 256-byte stack: a reply is two bytes of status, the length
        // (two bytes from 128 on) and the bytes.
        for n in [250u32, 251, 252, 253, 1000] {
            let reply = client.call::<_, Vec<u8>, Never>(3, (n,));
            assert_eq!(reply, Ok(vec![3; n as usize]), "{n} bytes");
        }
    }
}

/// Waits up to [`WAIT`] for `flag`; says whether it was raised.
fn wait_for(flag: &AtomicBool) -> bool {
    let deadline = Instant::now() + WAIT;
    while !flag.load(Ordering::Acquire) {
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    true
}

/// The message of [`Fuse`]'s panic.
const FUSE_PANIC: &str = "the argument's drop panicked";

/// How long a side waits for the other before the test calls the order wrong.
const WAIT: Duration = Duration::from_secs(5);
