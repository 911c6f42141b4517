use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize)]
pub enum Error {
    Nope,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Point {
    x: f64,
    y: f64,
}

#[postbox::service]
pub trait Everything {
    /// A documented call.
    fn plain(&self, a: i64, b: String) -> Vec<u8>;
    fn fallible(&self, p: Point) -> Result<Point, Error>;
    fn nothing(&self);
    fn no_args(&self) -> u32;
    #[oneway]
    fn fire(&self, what: Option<String>);
    fn qualified(&self) -> std::result::Result<(), Error>;
    /// Arguments named as the generated dispatch's own parameters once were.
    fn named(&self, answer: u32, args: u32, method: u32, outcome: u32) -> u32;
}

fn main() {
    fn _client_forms(c: &EverythingClient) {
        let _: Result<Vec<u8>, postbox::rpc::RpcError> = c.plain(1, String::new());
        let _: Result<Point, postbox::rpc::RpcError<Error>> = c.fallible(Point { x: 0.0, y: 0.0 });
        let _: Result<(), postbox::rpc::RpcError> = c.nothing();
        let _: Result<(), postbox::rpc::RpcError> = c.fire(None);
        let _ = c.no_args_async();
    }
    struct Impl;
    impl Everything for Impl {
        fn plain(&self, _: i64, b: String) -> Vec<u8> {
            b.into_bytes()
        }
        fn fallible(&self, p: Point) -> Result<Point, Error> {
            Ok(p)
        }
        fn nothing(&self) {}
        fn no_args(&self) -> u32 {
            0
        }
        fn fire(&self, _: Option<String>) {}
        fn qualified(&self) -> std::result::Result<(), Error> {
            Err(Error::Nope)
        }
        fn named(&self, answer: u32, args: u32, method: u32, outcome: u32) -> u32 {
            answer + args + method + outcome
        }
    }
    let _server = EverythingServer::new(Impl).threads(2);
    assert_eq!(EverythingClient::schema().unwrap().methods.len(), 7);
}
