//! What can go wrong with a typed call, and with binding to a service.

use serde::{Deserialize, Serialize};

use crate::schema::{Mismatch, SchemaError};

/// The error type of a method that cannot fail by itself (its trait method returns a plain
/// value): no value of it exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Never {}

impl std::fmt::Display for Never {
    fn fmt(&self, _: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match *self {}
    }
}

/// Why a typed call failed. `E` is the method's application error (for methods returning
/// `Result<T, E>`), [`Never`] otherwise.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RpcError<E = Never> {
    /// The method ran and returned this error.
    #[error("the method failed: {0:?}")]
    Remote(E),
    /// No answer before the deadline. The method may or may not have run.
    #[error("the call timed out")]
    Timeout,
    /// The deadline had passed when the server got the request: the method did not run.
    #[error("the deadline passed before the server could run the method")]
    DeadlineExceeded,
    /// The call was cancelled (by this caller, from another attempt) before the method ran.
    #[error("the call was cancelled before the method ran")]
    Cancelled,
    /// The server died or left before answering.
    #[error("the server died before answering")]
    PeerDied,
    /// The server's method of this name has another signature (it was rebuilt from another
    /// definition after this client bound to it).
    #[error("type mismatch: {0}")]
    TypeMismatch(String),
    /// The server has no method of this name.
    #[error("the server has no method {0}")]
    UnknownMethod(String),
    /// The method panicked; the server goes on serving.
    #[error("the method panicked: {0}")]
    Panicked(String),
    /// The request was refused: the server could not decode its arguments, or the client could
    /// not build it (arguments serde refuses, a method name longer than a request carries).
    #[error("bad request: {0}")]
    BadRequest(String),
    /// The answer could not be decoded as the method's result.
    #[error("the answer does not decode as the method's result: {0}")]
    Decode(String),
    /// The arguments exceed the largest message the link carries.
    #[error("the request of {len} bytes exceeds the limit of {limit}")]
    TooLarge {
        /// The encoded request's size.
        len: usize,
        /// The limit.
        limit: u32,
    },
    /// The server broke the protocol; the link was dropped.
    #[error("protocol violation by the server: {0}")]
    Protocol(String),
    /// The broker's policy, or the rights it granted the link, do not allow this call.
    #[error(transparent)]
    AccessDenied(postbox_core::AccessDenied),
    /// The link already has as many calls waiting for answers as the broker's quota allows.
    #[error("{limit} calls already wait for answers on this link (the quota)")]
    TooManyCalls {
        /// The quota.
        limit: u32,
    },
}

/// Why binding a client to a service failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BindError {
    /// No port by that name.
    #[error("no such service: {0}")]
    NoSuchService(String),
    /// The server's definition of the service differs from the client's.
    #[error("type mismatch: {0}")]
    TypeMismatch(Mismatch),
    /// The client's own types could not be traced into a schema.
    #[error(transparent)]
    Schema(#[from] SchemaError),
    /// The broker is gone.
    #[error("the broker is gone")]
    BrokerGone,
    /// The name is not a valid port name, or the broker refused the connection.
    #[error("cannot connect: {0}")]
    Refused(String),
    /// The broker's policy does not allow calling the service.
    #[error(transparent)]
    AccessDenied(postbox_core::AccessDenied),
    /// Asking the server for its schema failed (it is not a typed service, or it did not
    /// answer).
    #[error("the service did not describe itself: {0}")]
    Describe(RpcError),
}

impl<E> RpcError<E> {
    /// The same failure for a method with another application error type; `Remote` values are
    /// converted with `f`.
    pub fn map_remote<F>(self, f: impl FnOnce(E) -> F) -> RpcError<F> {
        match self {
            Self::Remote(e) => RpcError::Remote(f(e)),
            Self::Timeout => RpcError::Timeout,
            Self::DeadlineExceeded => RpcError::DeadlineExceeded,
            Self::Cancelled => RpcError::Cancelled,
            Self::PeerDied => RpcError::PeerDied,
            Self::TypeMismatch(s) => RpcError::TypeMismatch(s),
            Self::UnknownMethod(s) => RpcError::UnknownMethod(s),
            Self::Panicked(s) => RpcError::Panicked(s),
            Self::BadRequest(s) => RpcError::BadRequest(s),
            Self::Decode(s) => RpcError::Decode(s),
            Self::TooLarge { len, limit } => RpcError::TooLarge { len, limit },
            Self::Protocol(s) => RpcError::Protocol(s),
            Self::AccessDenied(denied) => RpcError::AccessDenied(denied),
            Self::TooManyCalls { limit } => RpcError::TooManyCalls { limit },
        }
    }
}
