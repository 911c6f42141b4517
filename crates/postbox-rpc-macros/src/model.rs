//! What a service declaration means, once parsed: the trait as it is emitted, and each
//! method's arguments, result and kind.

use syn::{Ident, ItemTrait, Type, Visibility};

/// A service: one trait.
pub(crate) struct Service {
    /// The trait as it is emitted (with the macro's own attributes removed).
    pub(crate) item: ItemTrait,
    pub(crate) vis: Visibility,
    pub(crate) name: Ident,
    pub(crate) methods: Vec<Method>,
}

/// One method of the service.
pub(crate) struct Method {
    pub(crate) name: Ident,
    pub(crate) args: Vec<(Ident, Type)>,
    pub(crate) output: Output,
    /// Callers do not wait for it (`#[oneway]`).
    pub(crate) oneway: bool,
    /// The method's doc comments, repeated on the client's methods.
    pub(crate) docs: Vec<syn::Attribute>,
}

/// What a method returns.
pub(crate) enum Output {
    /// A value (`()` when the method returns nothing).
    Plain(Box<Type>),
    /// `Result<T, E>`: the value, or an application error the caller receives as
    /// `RpcError::Remote(E)`.
    Fallible { ok: Box<Type>, err: Box<Type> },
}
