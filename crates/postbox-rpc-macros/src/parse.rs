//! From the tokens of `#[postbox::service] trait …` to a [`Service`], with an error at the
//! offending tokens for anything a service cannot have.

use proc_macro2::TokenStream;
use syn::spanned::Spanned;
use syn::{Error, FnArg, GenericArgument, Pat, PathArguments, ReturnType, TraitItem, Type};

use crate::model::{Method, Output, Service};

/// Parses the attribute's arguments (none) and the trait.
pub(crate) fn service(attr: TokenStream, item: TokenStream) -> syn::Result<Service> {
    if !attr.is_empty() {
        return Err(Error::new(attr.span(), "#[postbox::service] takes no arguments"));
    }
    let mut item: syn::ItemTrait = syn::parse2(item).map_err(|e| {
        Error::new(e.span(), "#[postbox::service] goes on a trait: `pub trait Calc { .. }`")
    })?;
    if !item.generics.params.is_empty() || item.generics.where_clause.is_some() {
        return Err(Error::new(
            item.generics.span(),
            "a service trait cannot be generic: its schema must be one fixed set of types",
        ));
    }
    let mut methods = Vec::new();
    for entry in &mut item.items {
        let TraitItem::Fn(function) = entry else {
            return Err(Error::new(
                entry.span(),
                "a service trait holds methods only (no associated types or constants)",
            ));
        };
        let oneway = take_oneway(&mut function.attrs)?;
        if let Some(cfg) = function.attrs.iter().find(|a| a.path().is_ident("cfg")) {
            return Err(Error::new(
                cfg.span(),
                "service methods cannot be #[cfg]-dependent: client and server must agree on them",
            ));
        }
        methods.push(method(&function.sig, oneway, &function.attrs)?);
    }
    check_names(&methods)?;
    Ok(Service { vis: item.vis.clone(), name: item.ident.clone(), item, methods })
}

/// Method names that would collide with what the generated client has of its own, or with
/// another method's `_async` form, or that are too long for a request to carry.
fn check_names(methods: &[Method]) -> syn::Result<()> {
    for method in methods {
        let name = method.name.to_string();
        if name.len() > MAX_METHOD_NAME {
            return Err(Error::new(
                method.name.span(),
                format!(
                    "a request carries method names of at most {} bytes (this one has {}): \
                     shorten it",
                    MAX_METHOD_NAME,
                    name.len()
                ),
            ));
        }
        if RESERVED.contains(&name.as_str()) {
            return Err(Error::new(
                method.name.span(),
                format!("`{name}` is a method of the generated client: rename this method"),
            ));
        }
        if let Some(base) = name.strip_suffix("_async") {
            if methods.iter().any(|m| m.name == base) {
                return Err(Error::new(
                    method.name.span(),
                    format!("the client's async form of `{base}` is already named `{name}`"),
                ));
            }
        }
    }
    Ok(())
}

/// What the generated `<Trait>Client` defines besides the methods.
const RESERVED: &[&str] =
    &["bind", "bind_async", "with_timeout", "with_retries", "client", "from_client", "schema"];

/// The longest method name a request carries (`postbox_rpc::MAX_METHOD_NAME`: its length is
/// one byte, docs/wire-format.md §6.1).
const MAX_METHOD_NAME: usize = 255;

/// Removes `#[oneway]` from a method's attributes; true if it was there.
fn take_oneway(attrs: &mut Vec<syn::Attribute>) -> syn::Result<bool> {
    let before = attrs.len();
    for attr in attrs.iter() {
        if attr.path().is_ident("oneway") && !matches!(attr.meta, syn::Meta::Path(_)) {
            return Err(Error::new(attr.span(), "#[oneway] takes no arguments"));
        }
    }
    attrs.retain(|a| !a.path().is_ident("oneway"));
    Ok(attrs.len() != before)
}

fn method(sig: &syn::Signature, oneway: bool, attrs: &[syn::Attribute]) -> syn::Result<Method> {
    if let Some(token) = &sig.asyncness {
        return Err(Error::new(
            token.span(),
            "service methods are not async: the generated client has `_async` forms of each",
        ));
    }
    if !sig.generics.params.is_empty() || sig.generics.where_clause.is_some() {
        return Err(Error::new(
            sig.generics.span(),
            "service methods cannot be generic: their schema must be fixed",
        ));
    }
    if let Some(variadic) = &sig.variadic {
        return Err(Error::new(variadic.span(), "service methods cannot be variadic"));
    }
    let mut inputs = sig.inputs.iter();
    match inputs.next() {
        Some(FnArg::Receiver(receiver))
            if receiver.reference.is_some() && receiver.mutability.is_none() => {}
        Some(other) => {
            return Err(Error::new(
                other.span(),
                "service methods take `&self` (the server calls them from many threads)",
            ))
        }
        None => {
            return Err(Error::new(
                sig.span(),
                "service methods take `&self` (the server calls them from many threads)",
            ))
        }
    }
    let mut args = Vec::new();
    for input in inputs {
        let FnArg::Typed(typed) = input else {
            return Err(Error::new(input.span(), "only the first argument may be `self`"));
        };
        let Pat::Ident(ident) = &*typed.pat else {
            return Err(Error::new(
                typed.pat.span(),
                "service arguments need plain names (they name the schema's fields)",
            ));
        };
        check_argument_type(&typed.ty)?;
        args.push((ident.ident.clone(), (*typed.ty).clone()));
    }
    let output = match &sig.output {
        ReturnType::Default => Output::Plain(Box::new(syn::parse_quote!(()))),
        ReturnType::Type(_, ty) => {
            check_argument_type(ty)?;
            output(ty)
        }
    };
    if oneway
        && !matches!(&output, Output::Plain(ty) if matches!(&**ty, Type::Tuple(t) if t.elems.is_empty()))
    {
        return Err(Error::new(
            sig.output.span(),
            "a #[oneway] method returns nothing: nobody waits for its result",
        ));
    }
    let docs = attrs.iter().filter(|a| a.path().is_ident("doc")).cloned().collect();
    Ok(Method { name: sig.ident.clone(), args, output, oneway, docs })
}

/// Arguments and results cross a process boundary by value.
fn check_argument_type(ty: &Type) -> syn::Result<()> {
    match ty {
        Type::Reference(_) => Err(Error::new(
            ty.span(),
            "service arguments and results travel by value: use an owned type (String, not &str; Vec<T>, not &[T])",
        )),
        Type::ImplTrait(_) | Type::TraitObject(_) => Err(Error::new(
            ty.span(),
            "service arguments and results need a concrete type that serde can encode",
        )),
        Type::Ptr(_) | Type::BareFn(_) => {
            Err(Error::new(ty.span(), "pointers and functions cannot cross a process boundary"))
        }
        _ => Ok(()),
    }
}

/// `Result<T, E>` (by the name of its last path segment) is fallible; anything else is plain.
fn output(ty: &Type) -> Output {
    if let Type::Path(path) = ty {
        if let Some(last) = path.path.segments.last() {
            if last.ident == "Result" {
                if let PathArguments::AngleBracketed(generics) = &last.arguments {
                    let types: Vec<&Type> = generics
                        .args
                        .iter()
                        .filter_map(|a| match a {
                            GenericArgument::Type(t) => Some(t),
                            _ => None,
                        })
                        .collect();
                    if let [ok, err] = types[..] {
                        return Output::Fallible {
                            ok: Box::new(ok.clone()),
                            err: Box::new(err.clone()),
                        };
                    }
                }
            }
        }
    }
    Output::Plain(Box::new(ty.clone()))
}
