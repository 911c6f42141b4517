//! Typed RPC over postbox, the sans-IO part: the envelopes a typed call and its reply carry
//! (docs/wire-format.md §6), service schemas traced from serde and their hashes, and the error
//! types. The facade (`postbox::rpc`) drives them over ports and connections; the
//! `#[postbox::service]` macro generates clients and servers that use both.
//!
//! ```text
//!   client stub ──► RequestHeader + postcard(args) ──► call ──► server dispatcher
//!   bind: describe ──► ServiceSchema ──► check_against (method hashes) ──► TypeMismatch?
//!   server: ReplyStatus + postcard(result | error) ──► reply ──► RpcError<E> / T
//! ```
#![forbid(unsafe_code)]

pub mod cancel;
pub mod envelope;
pub mod error;
pub mod json;
pub mod reply_cache;
pub mod schema;
pub mod shape;

pub use cancel::CancelTable;
pub use envelope::{
    ReplyStatus, RequestFields, RequestFlags, RequestHeader, RequestKind, MAX_METHOD_NAME,
    NO_DEADLINE, RPC_CONTROL_MSG_TYPE, RPC_MSG_TYPE, RPC_VERSION,
};
pub use error::{BindError, Never, RpcError};
pub use json::{JsonError, JsonErrorKind};
pub use reply_cache::{Lookup, ReplyCache, MAX_WAITERS};
pub use schema::{
    MethodKind, MethodSchema, Mismatch, SchemaBuilder, SchemaError, ServiceSchema, SCHEMA_VERSION,
};
pub use shape::{Container, Field, Shape, Variant, VariantBody, MAX_SHAPE_DEPTH};
