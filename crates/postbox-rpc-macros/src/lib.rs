//! `#[postbox::service]`: turns a trait into a typed postbox service, with a client stub and a
//! server dispatcher.
//!
//! ```text
//!   trait tokens ──parse.rs──► model::Service ──expand.rs──► trait + <Trait>Client + <Trait>Server
//! ```
//!
//! Use it through the facade (`#[postbox::service]`); the generated code refers to
//! `::postbox::rpc`. What it accepts and generates: the facade's `rpc` module documentation.

mod expand;
mod model;
mod parse;

use proc_macro::TokenStream;

/// Declares a typed service: on a trait whose methods take `&self` and arguments by value
/// (anything serde can encode), returning a value, `()`, or `Result<T, E>`; `#[oneway]` on a
/// method returning `()` makes callers not wait.
///
/// Generates, beside the trait: `<Trait>Client` (`bind`, `bind_async`, and per method a
/// blocking and an `_async` form returning `Result<T, RpcError<E>>`) and `<Trait>Server`
/// (`new(impl)`, `threads(n)`, `serve`, `start`).
#[proc_macro_attribute]
pub fn service(attr: TokenStream, item: TokenStream) -> TokenStream {
    let result = parse::service(attr.into(), item.into()).map(|service| expand::service(&service));
    match result {
        Ok(tokens) => tokens.into(),
        Err(error) => error.to_compile_error().into(),
    }
}
