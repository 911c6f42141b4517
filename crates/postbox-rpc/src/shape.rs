//! The shape of a value in serde's data model (what postcard puts on the wire), traced from a
//! type's serde implementation, and its canonical bytes, which method hashes cover.
//!
//! A shape names its structs and enums for people (and for `postbox call`'s JSON), but their
//! names do not count in the canonical bytes: renaming a type is harmless, changing one is
//! not. Field and variant names do count: swapping two fields of one type changes meaning.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use serde_reflection::{ContainerFormat, Format, Named, VariantFormat};

/// The shape of a value in serde's data model, which is what postcard puts on the wire.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Shape {
    /// `()`.
    Unit,
    /// `bool`.
    Bool,
    /// `i8`.
    I8,
    /// `i16`.
    I16,
    /// `i32`.
    I32,
    /// `i64`.
    I64,
    /// `i128`.
    I128,
    /// `u8`.
    U8,
    /// `u16`.
    U16,
    /// `u32`.
    U32,
    /// `u64`.
    U64,
    /// `u128`.
    U128,
    /// `f32`.
    F32,
    /// `f64`.
    F64,
    /// `char`.
    Char,
    /// A string.
    Str,
    /// Bytes (`serde_bytes`).
    Bytes,
    /// `Option<T>`.
    Option(#[serde(deserialize_with = "nested")] Box<Shape>),
    /// A sequence (`Vec<T>`, sets).
    Seq(#[serde(deserialize_with = "nested")] Box<Shape>),
    /// A map.
    Map {
        /// The keys' shape.
        #[serde(deserialize_with = "nested")]
        key: Box<Shape>,
        /// The values' shape.
        #[serde(deserialize_with = "nested")]
        value: Box<Shape>,
    },
    /// A tuple.
    Tuple(#[serde(deserialize_with = "nested")] Vec<Shape>),
    /// A fixed-size array.
    Array {
        /// The items' shape.
        #[serde(deserialize_with = "nested")]
        item: Box<Shape>,
        /// How many.
        len: u64,
    },
    /// A struct or an enum. Its name is for people and does not count in hashes.
    Named {
        /// The type's name.
        name: String,
        /// What it holds.
        #[serde(deserialize_with = "nested")]
        body: Box<Container>,
    },
    /// A named type met again inside its own definition (a recursive type), by name.
    Recursive(String),
}

impl Shape {
    /// True when serde could be made to recurse without bound (the shape is recursive) or
    /// to loop over values that take no bytes (a sequence or map of such) by a peer's bytes:
    /// such bytes must be checked ([`crate::json::check`]) before serde decodes them.
    #[must_use]
    pub fn needs_check(&self) -> bool {
        match self {
            Self::Recursive(_) => true,
            Self::Option(inner) | Self::Array { item: inner, .. } => inner.needs_check(),
            Self::Seq(item) => item.takes_no_bytes() || item.needs_check(),
            Self::Map { key, value } => {
                (key.takes_no_bytes() && value.takes_no_bytes())
                    || key.needs_check()
                    || value.needs_check()
            }
            Self::Tuple(items) => items.iter().any(Self::needs_check),
            Self::Named { body, .. } => match &**body {
                Container::UnitStruct => false,
                Container::NewType(inner) => inner.needs_check(),
                Container::TupleStruct(items) => items.iter().any(Self::needs_check),
                Container::Struct(fields) => fields.iter().any(|f| f.shape.needs_check()),
                Container::Enum(variants) => variants.iter().any(|v| match &v.body {
                    VariantBody::Unit => false,
                    VariantBody::NewType(inner) => inner.needs_check(),
                    VariantBody::Tuple(items) => items.iter().any(Self::needs_check),
                    VariantBody::Struct(fields) => fields.iter().any(|f| f.shape.needs_check()),
                }),
            },
            _ => false,
        }
    }

    /// True when a value of this shape takes no bytes at all.
    pub(crate) fn takes_no_bytes(&self) -> bool {
        match self {
            Self::Unit => true,
            Self::Tuple(items) => items.iter().all(Self::takes_no_bytes),
            Self::Array { item, len } => *len == 0 || item.takes_no_bytes(),
            Self::Named { body, .. } => match &**body {
                Container::UnitStruct => true,
                Container::NewType(inner) => inner.takes_no_bytes(),
                Container::TupleStruct(items) => items.iter().all(Self::takes_no_bytes),
                Container::Struct(fields) => fields.iter().all(|f| f.shape.takes_no_bytes()),
                Container::Enum(_) => false,
            },
            _ => false,
        }
    }
}

/// How deep shapes may nest when decoded (a describe answer comes from a peer): every
/// recursion of [`Shape`] passes a field decoded by `nested`, which counts.
pub const MAX_SHAPE_DEPTH: usize = 128;

/// Decodes a nested part of a shape, one level deeper, failing past [`MAX_SHAPE_DEPTH`] (a
/// peer's bytes must not overflow the stack).
fn nested<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    struct Level;
    impl Drop for Level {
        fn drop(&mut self) {
            DEPTH.with(|d| d.set(d.get().saturating_sub(1)));
        }
    }
    let depth = DEPTH.with(|d| {
        d.set(d.get() + 1);
        d.get()
    });
    let _level = Level;
    if depth > MAX_SHAPE_DEPTH {
        return Err(serde::de::Error::custom(format!(
            "shapes nest deeper than {MAX_SHAPE_DEPTH} levels"
        )));
    }
    T::deserialize(deserializer)
}

thread_local! {
    static DEPTH: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

impl std::fmt::Display for Shape {
    /// The shape as a Rust-like type: `i64`, `Option<String>`, `Vec<Point>`, `(u8, bool)`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let list = |f: &mut std::fmt::Formatter<'_>, items: &[Shape]| -> std::fmt::Result {
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    f.write_str(", ")?;
                }
                write!(f, "{item}")?;
            }
            Ok(())
        };
        match self {
            Self::Unit => f.write_str("()"),
            Self::Bool => f.write_str("bool"),
            Self::I8 => f.write_str("i8"),
            Self::I16 => f.write_str("i16"),
            Self::I32 => f.write_str("i32"),
            Self::I64 => f.write_str("i64"),
            Self::I128 => f.write_str("i128"),
            Self::U8 => f.write_str("u8"),
            Self::U16 => f.write_str("u16"),
            Self::U32 => f.write_str("u32"),
            Self::U64 => f.write_str("u64"),
            Self::U128 => f.write_str("u128"),
            Self::F32 => f.write_str("f32"),
            Self::F64 => f.write_str("f64"),
            Self::Char => f.write_str("char"),
            Self::Str => f.write_str("String"),
            Self::Bytes => f.write_str("Bytes"),
            Self::Option(inner) => write!(f, "Option<{inner}>"),
            Self::Seq(inner) => write!(f, "Vec<{inner}>"),
            Self::Map { key, value } => write!(f, "Map<{key}, {value}>"),
            Self::Tuple(items) => {
                f.write_str("(")?;
                list(f, items)?;
                f.write_str(if items.len() == 1 { ",)" } else { ")" })
            }
            Self::Array { item, len } => write!(f, "[{item}; {len}]"),
            Self::Named { name, .. } | Self::Recursive(name) => f.write_str(name),
        }
    }
}

/// What a named type holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Container {
    /// `struct A;`
    UnitStruct,
    /// `struct A(T);`
    NewType(Shape),
    /// `struct A(T, U);`
    TupleStruct(Vec<Shape>),
    /// `struct A { .. }`
    Struct(Vec<Field>),
    /// An enum's variants, in index order.
    Enum(Vec<Variant>),
}

/// A named field of a struct or variant, or a named argument.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Field {
    /// Its name.
    pub name: String,
    /// Its shape.
    pub shape: Shape,
}

/// One variant of an enum.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Variant {
    /// Its index (what postcard encodes).
    pub index: u32,
    /// Its name.
    pub name: String,
    /// What it holds.
    pub body: VariantBody,
}

/// What an enum variant holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum VariantBody {
    /// Nothing.
    Unit,
    /// One value.
    NewType(Shape),
    /// Several values.
    Tuple(Vec<Shape>),
    /// Named fields.
    Struct(Vec<Field>),
}

/// A traced format as a [`Shape`], named types expanded (a type within its own expansion
/// becomes [`Shape::Recursive`]).
pub(crate) fn shape_of(
    format: &Format,
    types: &BTreeMap<String, ContainerFormat>,
    open: &mut BTreeSet<String>,
) -> Result<Shape, String> {
    let mut sub = |f: &Format| shape_of(f, types, open).map(Box::new);
    Ok(match format {
        Format::Variable(_) => return Err("a type's shape stayed unknown".into()),
        Format::TypeName(name) => {
            if open.contains(name) {
                return Ok(Shape::Recursive(name.clone()));
            }
            let container = types.get(name).ok_or_else(|| format!("type {name} was not traced"))?;
            open.insert(name.clone());
            let body = container_of(container, types, open);
            open.remove(name);
            Shape::Named { name: name.clone(), body: Box::new(body?) }
        }
        Format::Unit => Shape::Unit,
        Format::Bool => Shape::Bool,
        Format::I8 => Shape::I8,
        Format::I16 => Shape::I16,
        Format::I32 => Shape::I32,
        Format::I64 => Shape::I64,
        Format::I128 => Shape::I128,
        Format::U8 => Shape::U8,
        Format::U16 => Shape::U16,
        Format::U32 => Shape::U32,
        Format::U64 => Shape::U64,
        Format::U128 => Shape::U128,
        Format::F32 => Shape::F32,
        Format::F64 => Shape::F64,
        Format::Char => Shape::Char,
        Format::Str => Shape::Str,
        Format::Bytes => Shape::Bytes,
        Format::Option(inner) => Shape::Option(sub(inner)?),
        Format::Seq(inner) => Shape::Seq(sub(inner)?),
        Format::Map { key, value } => {
            let key = sub(key)?;
            Shape::Map { key, value: sub(value)? }
        }
        Format::Tuple(items) => Shape::Tuple(shapes_of(items, types, open)?),
        Format::TupleArray { content, size } => {
            Shape::Array { item: sub(content)?, len: *size as u64 }
        }
    })
}

fn shapes_of(
    formats: &[Format],
    types: &BTreeMap<String, ContainerFormat>,
    open: &mut BTreeSet<String>,
) -> Result<Vec<Shape>, String> {
    formats.iter().map(|f| shape_of(f, types, open)).collect()
}

fn fields_of(
    named: &[Named<Format>],
    types: &BTreeMap<String, ContainerFormat>,
    open: &mut BTreeSet<String>,
) -> Result<Vec<Field>, String> {
    named
        .iter()
        .map(|n| Ok(Field { name: n.name.clone(), shape: shape_of(&n.value, types, open)? }))
        .collect()
}

fn container_of(
    container: &ContainerFormat,
    types: &BTreeMap<String, ContainerFormat>,
    open: &mut BTreeSet<String>,
) -> Result<Container, String> {
    Ok(match container {
        ContainerFormat::UnitStruct => Container::UnitStruct,
        ContainerFormat::NewTypeStruct(inner) => Container::NewType(shape_of(inner, types, open)?),
        ContainerFormat::TupleStruct(items) => {
            Container::TupleStruct(shapes_of(items, types, open)?)
        }
        ContainerFormat::Struct(named) => Container::Struct(fields_of(named, types, open)?),
        ContainerFormat::Enum(variants) => Container::Enum(
            variants
                .iter()
                .map(|(index, variant)| {
                    let body = match &variant.value {
                        VariantFormat::Variable(_) => {
                            return Err(format!("variant {} stayed unknown", variant.name))
                        }
                        VariantFormat::Unit => VariantBody::Unit,
                        VariantFormat::NewType(inner) => {
                            VariantBody::NewType(shape_of(inner, types, open)?)
                        }
                        VariantFormat::Tuple(items) => {
                            VariantBody::Tuple(shapes_of(items, types, open)?)
                        }
                        VariantFormat::Struct(named) => {
                            VariantBody::Struct(fields_of(named, types, open)?)
                        }
                    };
                    Ok(Variant { index: *index, name: variant.name.clone(), body })
                })
                .collect::<Result<_, String>>()?,
        ),
    })
}

/// Appends the canonical bytes of `shape` (what the hash covers): a tag per node, field and
/// variant names, no type names; a recursive reference by how many named types up it points.
pub(crate) fn shape_bytes<'a>(shape: &'a Shape, open: &mut Vec<&'a str>, out: &mut Vec<u8>) {
    let tag = |out: &mut Vec<u8>, t: u8| out.push(t);
    match shape {
        Shape::Unit => tag(out, 0),
        Shape::Bool => tag(out, 1),
        Shape::I8 => tag(out, 2),
        Shape::I16 => tag(out, 3),
        Shape::I32 => tag(out, 4),
        Shape::I64 => tag(out, 5),
        Shape::I128 => tag(out, 6),
        Shape::U8 => tag(out, 7),
        Shape::U16 => tag(out, 8),
        Shape::U32 => tag(out, 9),
        Shape::U64 => tag(out, 10),
        Shape::U128 => tag(out, 11),
        Shape::F32 => tag(out, 12),
        Shape::F64 => tag(out, 13),
        Shape::Char => tag(out, 14),
        Shape::Str => tag(out, 15),
        Shape::Bytes => tag(out, 16),
        Shape::Option(inner) => {
            tag(out, 17);
            shape_bytes(inner, open, out);
        }
        Shape::Seq(inner) => {
            tag(out, 18);
            shape_bytes(inner, open, out);
        }
        Shape::Map { key, value } => {
            tag(out, 19);
            shape_bytes(key, open, out);
            shape_bytes(value, open, out);
        }
        Shape::Tuple(items) => {
            tag(out, 20);
            count(out, items.len());
            items.iter().for_each(|s| shape_bytes(s, open, out));
        }
        Shape::Array { item, len } => {
            tag(out, 21);
            out.extend_from_slice(&len.to_le_bytes());
            shape_bytes(item, open, out);
        }
        Shape::Named { name, body } => {
            tag(out, 22);
            open.push(name);
            container_bytes(body, open, out);
            open.pop();
        }
        Shape::Recursive(name) => {
            tag(out, 23);
            let up = open.iter().rev().position(|n| n == name).unwrap_or(usize::MAX);
            count(out, up);
        }
    }
}

fn container_bytes<'a>(container: &'a Container, open: &mut Vec<&'a str>, out: &mut Vec<u8>) {
    match container {
        Container::UnitStruct => out.push(0),
        Container::NewType(inner) => {
            out.push(1);
            shape_bytes(inner, open, out);
        }
        Container::TupleStruct(items) => {
            out.push(2);
            count(out, items.len());
            items.iter().for_each(|s| shape_bytes(s, open, out));
        }
        Container::Struct(fields) => {
            out.push(3);
            fields_bytes(fields, open, out);
        }
        Container::Enum(variants) => {
            out.push(4);
            count(out, variants.len());
            for variant in variants {
                out.extend_from_slice(&variant.index.to_le_bytes());
                text(out, &variant.name);
                match &variant.body {
                    VariantBody::Unit => out.push(0),
                    VariantBody::NewType(inner) => {
                        out.push(1);
                        shape_bytes(inner, open, out);
                    }
                    VariantBody::Tuple(items) => {
                        out.push(2);
                        count(out, items.len());
                        items.iter().for_each(|s| shape_bytes(s, open, out));
                    }
                    VariantBody::Struct(fields) => {
                        out.push(3);
                        fields_bytes(fields, open, out);
                    }
                }
            }
        }
    }
}

fn fields_bytes<'a>(fields: &'a [Field], open: &mut Vec<&'a str>, out: &mut Vec<u8>) {
    count(out, fields.len());
    for field in fields {
        text(out, &field.name);
        shape_bytes(&field.shape, open, out);
    }
}

pub(crate) fn count(out: &mut Vec<u8>, n: usize) {
    out.extend_from_slice(&(n as u64).to_le_bytes());
}

pub(crate) fn text(out: &mut Vec<u8>, text: &str) {
    count(out, text.len());
    out.extend_from_slice(text.as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `Option<Option<…<()>>>`, `depth` options deep, as postcard writes it.
    fn options(depth: usize) -> Vec<u8> {
        let mut bytes = vec![17u8; depth];
        bytes.push(0);
        bytes
    }

    #[test]
    fn recursive_shapes_and_sequences_of_nothing_need_a_check_and_plain_ones_do_not() {
        let named =
            |name: &str, body: Container| Shape::Named { name: name.into(), body: Box::new(body) };
        let list = named(
            "List",
            Container::Enum(vec![
                Variant { index: 0, name: "Nil".into(), body: VariantBody::Unit },
                Variant {
                    index: 1,
                    name: "Cons".into(),
                    body: VariantBody::NewType(Shape::Recursive("List".into())),
                },
            ]),
        );
        assert!(list.needs_check());
        assert!(Shape::Seq(Box::new(Shape::Unit)).needs_check());
        assert!(Shape::Seq(Box::new(named("Empty", Container::UnitStruct))).needs_check());
        assert!(Shape::Tuple(vec![Shape::U8, Shape::Option(Box::new(list))]).needs_check());
        assert!(!Shape::Seq(Box::new(Shape::U8)).needs_check());
        assert!(!Shape::Tuple(vec![Shape::Str, Shape::Seq(Box::new(Shape::I64))]).needs_check());
        assert!(!named(
            "P",
            Container::Struct(vec![Field { name: "x".into(), shape: Shape::F64 }])
        )
        .needs_check());
    }

    #[test]
    fn shapes_from_a_peer_decode_up_to_the_depth_limit_and_fail_past_it() {
        let deep: Shape = postcard::from_bytes(&options(MAX_SHAPE_DEPTH)).unwrap();
        assert_eq!(deep.to_string().matches("Option<").count(), MAX_SHAPE_DEPTH);
        // A million levels would overflow the stack; it is an error instead.
        assert!(postcard::from_bytes::<Shape>(&options(1_000_000)).is_err());
        assert!(postcard::from_bytes::<Shape>(&options(MAX_SHAPE_DEPTH + 1)).is_err());
        // The count starts again for the next value.
        assert!(postcard::from_bytes::<Shape>(&options(3)).is_ok());
    }
}
