//! Typed RPC: services declared as traits with `#[postbox::service]`, served by a pool of
//! threads on a port and called through generated clients, with schema checks at bind time,
//! deadlines that nested calls inherit, and typed errors.
//!
//! ```ignore
//! #[postbox::service]
//! pub trait Calc {
//!     fn add(&self, a: i64, b: i64) -> i64;
//!     fn div(&self, a: i64, b: i64) -> Result<i64, DivByZero>;
//!     #[oneway]
//!     fn log(&self, line: String);
//! }
//!
//! let serving = CalcServer::new(MyCalc).threads(4).start(&node, "calc")?;
//! let calc = CalcClient::bind(&node, "calc")?;
//! assert_eq!(calc.add(2, 3)?, 5);
//! ```
//!
//! Arguments and results travel as postcard. Byte payloads are best typed
//! `serde_bytes::ByteBuf` (one length, one copy; a `ByteBuf` result takes over the reply's
//! buffer, a method's one `ByteBuf` argument the request's): a `Vec<u8>` goes through serde
//! byte by byte.
//!
//! A server answers as soon as a method returns, before it drops the result; a client drops
//! the arguments while it waits for the reply.
//! A schema is traced from the types' serde implementations when a client binds or a server
//! starts; an enum met only inside a later variant of another enum cannot be traced (a
//! `SchemaError` names it).
//!
//! The envelopes and the schema format: docs/wire-format.md §6.

mod client;
mod codec;
pub mod context;
mod dispatch;
mod handler;
mod server;

pub use client::Client;
pub use context::CallContext;
pub use dispatch::{Answer, Args, Dispatch, Outcome};
pub use postbox_rpc::{
    BindError, Container, Field, MethodKind, MethodSchema, Mismatch, Never, RpcError,
    SchemaBuilder, SchemaError, ServiceSchema, Shape, Variant, VariantBody, MAX_METHOD_NAME,
};
pub use server::{serve, serve_async, start, ServeError, Serving};

/// What the code `#[postbox::service]` generates uses; not an API.
#[doc(hidden)]
pub mod __private {
    /// Compiles only for types that can cross a link (serde, both ways): the macro calls it
    /// at each argument's and result's own tokens, so that a type that cannot is reported
    /// there.
    pub fn assert_wire<T: serde::Serialize + serde::de::DeserializeOwned>() {}
}
