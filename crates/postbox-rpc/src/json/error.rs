//! The error of a JSON conversion, [`JsonError`], and the words its messages are made of.

use serde_json::Value;

use crate::shape::{Container, Shape};

/// A JSON value that does not fit a shape, or bytes that do not decode as one: where, and what
/// went wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("at {}: {kind}", location(.path))]
pub struct JsonError {
    /// Where: a path such as `args.p.x`, `[2]` or `scores["7"]`; empty at the top level.
    pub path: String,
    /// What went wrong there.
    pub kind: JsonErrorKind,
}

/// What went wrong, in a [`JsonError`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum JsonErrorKind {
    /// The JSON value has the wrong type.
    #[error("expected {expected}, found {found}")]
    Expected {
        /// What the shape wants.
        expected: String,
        /// What the JSON holds.
        found: String,
    },
    /// An integer does not fit its type.
    #[error("{value} is out of range for {shape}")]
    OutOfRange {
        /// The integer type.
        shape: &'static str,
        /// The integer, as written.
        value: String,
    },
    /// A decoded integer does not fit a JSON number (serde_json holds at most 64 bits).
    #[error("the {shape} {value} does not fit a JSON number")]
    TooLargeForJson {
        /// The integer type.
        shape: &'static str,
        /// The integer.
        value: String,
    },
    /// An array holds another number of items than the tuple, array or struct wants.
    #[error("expected an array of {expected} items, found {found}")]
    Length {
        /// How many the shape wants.
        expected: u64,
        /// How many the array holds.
        found: u64,
    },
    /// An enum has no variant of this name.
    #[error("unknown variant `{name}`, expected one of {expected}")]
    UnknownVariant {
        /// The name given.
        name: String,
        /// The variants there are.
        expected: String,
    },
    /// An enum has no variant of this index.
    #[error("unknown variant index {0}")]
    UnknownVariantIndex(u32),
    /// An object lacks a field (or an argument).
    #[error("missing field `{0}`")]
    MissingField(String),
    /// An object has a field (or an argument) the shape lacks.
    #[error("unknown field `{name}`, expected one of {expected}")]
    UnknownField {
        /// The field given.
        name: String,
        /// The fields there are.
        expected: String,
    },
    /// Two object keys stand for the same map key (`"1"` and `"1.0"` for a float key).
    #[error("duplicate map key {0:?}")]
    DuplicateKey(String),
    /// Values of this shape cannot be JSON object keys.
    #[error("{0} cannot be a JSON object key")]
    UnsupportedKey(String),
    /// The bytes end before the value does.
    #[error("the bytes end before the value does")]
    Truncated,
    /// Bytes are left over after the value.
    #[error("{0} trailing bytes after the value")]
    TrailingBytes(usize),
    /// A bool or option tag other than 0 or 1.
    #[error("invalid {what} byte {byte:#04x}")]
    InvalidTag {
        /// `"bool"` or `"option"`.
        what: &'static str,
        /// The byte.
        byte: u8,
    },
    /// A varint longer than its type allows, or with bits beyond it.
    #[error("invalid varint for {0}")]
    InvalidVarint(&'static str),
    /// A string that is not UTF-8.
    #[error("a string is not valid UTF-8")]
    InvalidUtf8,
    /// A char that is not exactly one UTF-8 character of at most 4 bytes.
    #[error("invalid char encoding")]
    InvalidChar,
    /// A declared length exceeds what the bytes left can hold.
    #[error("a length of {declared} exceeds the {left} bytes left")]
    LengthExceedsInput {
        /// The length declared.
        declared: u64,
        /// The bytes left.
        left: usize,
    },
    /// More values that take no bytes (units, unit structs, empty tuples) than the input may
    /// hold ([`MAX_EMPTY_VALUES`](super::MAX_EMPTY_VALUES)).
    #[error("more than {limit} values that take no bytes")]
    TooManyEmptyValues {
        /// The limit for this input.
        limit: u64,
    },
    /// The value nests deeper than [`MAX_DEPTH`](super::MAX_DEPTH) levels.
    #[error("nested deeper than {limit} levels")]
    TooDeep {
        /// The limit.
        limit: usize,
    },
    /// The shape refers to a type outside that type's definition (a malformed shape).
    #[error("the shape refers to type `{0}` outside its definition")]
    UnresolvedRecursive(String),
}

fn location(path: &str) -> &str {
    if path.is_empty() {
        "the top level"
    } else {
        path
    }
}

/// A short description of a JSON value, for errors.
pub(super) fn describe(value: &Value) -> String {
    match value {
        Value::Null => "null".to_owned(),
        Value::Bool(flag) => flag.to_string(),
        Value::Number(number) => format!("the number {number}"),
        Value::String(text) => {
            let mut shown: String = text.chars().take(40).collect();
            if shown.len() < text.len() {
                shown.push('…');
            }
            format!("the string {shown:?}")
        }
        Value::Array(values) => format!("an array of {}", items(values.len())),
        Value::Object(map) => format!("an object with {} keys", map.len()),
    }
}

/// A shape in a few words, for errors.
pub(super) fn shape_word(shape: &Shape) -> String {
    match shape {
        Shape::Unit => "unit".to_owned(),
        Shape::Bytes => "bytes".to_owned(),
        Shape::Option(_) => "an option".to_owned(),
        Shape::Seq(_) => "a sequence".to_owned(),
        Shape::Map { .. } => "a map".to_owned(),
        Shape::Tuple(_) => "a tuple".to_owned(),
        Shape::Array { .. } => "an array".to_owned(),
        Shape::Named { name, body } => match &**body {
            Container::UnitStruct => format!("unit struct {name}"),
            Container::NewType(_) => format!("newtype struct {name}"),
            Container::TupleStruct(_) => format!("tuple struct {name}"),
            Container::Struct(_) => format!("struct {name}"),
            Container::Enum(_) => format!("enum {name}"),
        },
        Shape::Recursive(name) => name.clone(),
        scalar => format!("{scalar:?}").to_lowercase(),
    }
}

pub(super) fn names<'a>(names: impl Iterator<Item = &'a str>) -> String {
    names.map(|name| format!("`{name}`")).collect::<Vec<_>>().join(", ")
}

pub(super) fn items(count: usize) -> String {
    items_u64(count as u64)
}

pub(super) fn items_u64(count: u64) -> String {
    if count == 1 {
        "1 item".to_owned()
    } else {
        format!("{count} items")
    }
}
