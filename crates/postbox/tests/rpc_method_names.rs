//! Method names at the envelope's limit: the longest name `#[postbox::service]` accepts is
//! the longest a request carries (`MAX_METHOD_NAME`), and a method of a schema built by hand
//! whose name is longer is refused by the client, naming it, before anything is sent.
#![allow(missing_docs)]

use std::sync::Arc;
use std::time::Duration;

use postbox::rpc::{
    Answer, Args, Client, Dispatch, MethodKind, Never, Outcome, RpcError, SchemaBuilder,
    ServiceSchema, MAX_METHOD_NAME,
};
use postbox::Broker;

/// A service whose one method's name is exactly [`MAX_METHOD_NAME`] bytes long.
#[postbox::service]
pub trait Longest {
    fn a_method_whose_name_is_as_long_as_a_request_carries_xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx(
        &self,
        x: u32,
    ) -> u32;
}

struct Doubler;

impl Longest for Doubler {
    fn a_method_whose_name_is_as_long_as_a_request_carries_xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx(
        &self,
        x: u32,
    ) -> u32 {
        x * 2
    }
}

#[test]
fn a_method_named_with_as_many_bytes_as_a_request_carries_is_called_by_name() {
    let name = &LongestClient::schema().unwrap().methods[0].name;
    assert_eq!(name.len(), MAX_METHOD_NAME, "the macro's limit is the envelope's");
    let broker = Broker::embedded().unwrap();
    let server = broker.node().unwrap();
    let _serving = LongestServer::new(Doubler).start(&server, "names/longest").unwrap();
    let node = broker.node().unwrap();
    let client = LongestClient::bind(&node, "names/longest").unwrap().with_timeout(WAIT);
    assert_eq!(client.a_method_whose_name_is_as_long_as_a_request_carries_xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx(21), Ok(42));
    // The same method found by its name in the schema the server describes.
    let any = Client::describe(&node, "names/longest").unwrap();
    let reply = any.call_encoded(name, &postcard::to_stdvec(&(4u32,)).unwrap()).unwrap();
    assert_eq!(postcard::from_bytes::<u32>(&reply).unwrap(), 8);
}

/// Answers every call with its method's index (a `u32`).
struct Index(&'static ServiceSchema);

impl Dispatch for Index {
    fn schema(&self) -> &'static ServiceSchema {
        self.0
    }

    fn dispatch(&self, method: usize, _args: Args<'_>, answer: Answer<'_>) {
        answer.with(Outcome::ok(&(method as u32)));
    }
}

/// The `Names` service on `name`: method 0 `short`, a call; method 1, a call, and method 2,
/// one-way, both named with [`MAX_METHOD_NAME`]` + 1` bytes (that name, returned).
fn serve_long_names(broker: &Broker, name: &str) -> (postbox::Node, postbox::rpc::Serving, String) {
    let long = "n".repeat(MAX_METHOD_NAME + 1);
    let oneway = "o".repeat(MAX_METHOD_NAME + 1);
    let schema = SchemaBuilder::new("Names")
        .method::<(), u32, Never>("short", MethodKind::Call, &[], false)
        .and_then(|b| b.method::<(), u32, Never>(&long, MethodKind::Call, &[], false))
        .and_then(|b| b.method::<(), (), Never>(&oneway, MethodKind::Oneway, &[], false))
        .unwrap()
        .finish();
    let schema: &'static ServiceSchema = Box::leak(Box::new(schema));
    let server = broker.node().unwrap();
    let serving = postbox::rpc::start(&server, name, Arc::new(Index(schema)), 1).unwrap();
    (server, serving, long)
}

/// Asserts that `result` is the client's refusal of the over-long name `long`.
fn assert_refused<T: std::fmt::Debug>(
    result: Result<T, RpcError<impl std::fmt::Debug>>,
    long: &str,
) {
    let has = format!("({long:?} has {})", MAX_METHOD_NAME + 1);
    match result {
        Err(RpcError::BadRequest(what)) => assert!(what.contains(&has), "{what}"),
        other => panic!("expected the long name refused, got {other:?}"),
    }
}

#[test]
fn a_method_named_longer_than_a_request_carries_is_refused_by_the_client_naming_it() {
    let broker = Broker::embedded().unwrap();
    let (_server, _serving, long) = serve_long_names(&broker, "names/long");
    let node = broker.node().unwrap();
    let schema = Client::describe(&node, "names/long").unwrap().schema().clone();
    let schema: &'static ServiceSchema = Box::leak(Box::new(schema));

    let client = Client::bind(&node, "names/long", schema).unwrap().with_timeout(WAIT);
    assert_refused(client.call::<_, u32, Never>(1, ()), &long);
    // Refused before anything was sent: a one-way request would otherwise be lost silently.
    let oneway = &schema.methods[2].name;
    assert_refused(client.send(2, &()), oneway);
    // The link is fine, and so is the other method.
    assert_eq!(client.call::<_, u32, Never>(0, ()), Ok(0));

    let any = Client::describe(&node, "names/long").unwrap();
    assert_refused(any.call_encoded(&long, &[]), &long);
    assert_eq!(any.call_encoded("short", &[]).unwrap(), postcard::to_stdvec(&0u32).unwrap());
}

#[tokio::test]
async fn an_async_call_or_send_of_a_method_named_too_long_is_refused_as_well() {
    let broker = Broker::embedded().unwrap();
    let (_server, _serving, long) = serve_long_names(&broker, "names/long-async");
    let node = broker.node().unwrap();
    let client = Client::describe(&node, "names/long-async").unwrap().with_timeout(WAIT);
    let oneway = client.schema().methods[2].name.clone();
    assert_refused(client.call_async::<_, u32, Never>(1, ()).await, &long);
    assert_refused(client.send_async(2, &()).await, &oneway);
    assert_eq!(client.call_async::<_, u32, Never>(0, ()).await, Ok(0));
}

/// How long a call waits before the test calls it lost.
const WAIT: Duration = Duration::from_secs(10);
