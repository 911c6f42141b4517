//! JSON for typed calls from the command line: arguments from JSON to postcard bytes, results
//! from postcard bytes to JSON, guided only by their [`Shape`]s (no Rust types at hand).
//!
//! The mapping is serde_json's for the same Rust types: what [`from_postcard`] makes of
//! `postcard::to_stdvec(&v)` is `serde_json::to_value(&v)`, and [`to_postcard`] accepts it.
//!
//! | shape | JSON |
//! |---|---|
//! | unit, unit struct | `null` |
//! | bool | `true`, `false` |
//! | integers | numbers, range-checked; `u128`/`i128` within `u64`/`i64` (serde_json's limit) |
//! | `f32`, `f64` | numbers (NaN and infinities come out as `null`, as serde_json writes them) |
//! | char, string | strings (a char is one character) |
//! | bytes | arrays of numbers (a string is taken as its UTF-8 bytes) |
//! | `Option` | `null` or the value |
//! | sequence, tuple, tuple struct, array | arrays |
//! | newtype struct | the inner value |
//! | struct | an object by field name (or an array in field order) |
//! | enum | `"Unit"`, or `{"Variant": content}` with content as above |
//! | map | an object; keys that are not strings are written as strings (`"7"`, `"true"`) |
//!
//! Like serde_json, [`to_postcard`] also takes a struct as an array in field order, a missing
//! `Option` field as `None`, a unit variant as `{"Unit": null}`, and bytes as a string. Where
//! serde is lenient or leaves the order open, this module is strict or canonical: an object
//! with a field the struct lacks is an error (serde ignores it), two object keys that read as
//! one map key are an error, and map entries are encoded in key order (numbers by value), so a
//! `BTreeMap` gets the bytes postcard gives it. A `null` for `Option<()>` or
//! `Option<Option<T>>` is the outer `None`, as in serde_json.
//!
//! Postcard bytes are untrusted. Decoding never panics, rejects truncated input and trailing
//! bytes, stops at [`MAX_DEPTH`] nested levels, and checks every declared length against the
//! bytes left before allocating for it.
//!
//! ```
//! use postbox_rpc::{json, MethodKind, SchemaBuilder};
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let schema = SchemaBuilder::new("Calc")
//!     .method::<(i32, i32), i64, ()>("add", MethodKind::Call, &["a", "b"], false)?
//!     .finish();
//! let add = &schema.methods[0];
//! let args = json::args_to_postcard(&serde_json::json!({"a": 2, "b": -3}), &add.args)?;
//! assert_eq!(args, postcard::to_stdvec(&(2_i32, -3_i32))?);
//! let result = json::from_postcard(&postcard::to_stdvec(&-1_i64)?, &add.ok)?;
//! assert_eq!(result, serde_json::json!(-1));
//! # Ok(())
//! # }
//! ```

mod decode; // postcard in, JSON out
mod encode; // JSON in, postcard out
mod error; // JsonError, and the words its messages are made of
mod integer; // integer types, values and varints
mod keys; // map keys: as strings, and in order
mod trail; // the path, depth and named types of a walk through a shape

use serde_json::Value;

use self::decode::Decoder;
use self::encode::Encoder;
use self::trail::Trail;
use crate::shape::{Field, Shape};

pub use self::error::{JsonError, JsonErrorKind};

/// Checks that `bytes` are one value of `shape`, within the same limits as
/// [`from_postcard`] (depth, values that take no bytes, lengths against the bytes left), so
/// that serde can then decode them without recursing or looping without bound. For shapes
/// that [`Shape::needs_check`].
///
/// # Errors
/// [`JsonError`] saying where the bytes go wrong.
pub fn check(bytes: &[u8], shape: &Shape) -> Result<(), JsonError> {
    from_postcard(bytes, shape).map(drop)
}

/// The JSON for postcard `bytes` holding one value of `shape`.
///
/// # Errors
/// A [`JsonError`] when the bytes do not decode as `shape` (truncated, trailing bytes, an
/// invalid tag, varint, UTF-8 or length, nesting beyond [`MAX_DEPTH`]), or hold an integer
/// that no JSON number can carry (a `u128` above `u64::MAX`, as for serde_json).
pub fn from_postcard(bytes: &[u8], shape: &Shape) -> Result<Value, JsonError> {
    let empty_limit = empty_limit(bytes.len());
    let mut decoder =
        Decoder { input: bytes, trail: Trail::new(""), empty_limit, empty_left: empty_limit };
    let value = decoder.value(shape).map_err(|error| *error)?;
    match decoder.input.len() {
        0 => Ok(value),
        left => Err(*decoder.trail.error(JsonErrorKind::TrailingBytes(left))),
    }
}

/// The postcard bytes of `value` read as `shape`.
///
/// # Errors
/// A [`JsonError`] naming where `value` does not fit `shape`: a JSON type, an integer range,
/// an array length, a variant name, a missing or unknown field.
pub fn to_postcard(value: &Value, shape: &Shape) -> Result<Vec<u8>, JsonError> {
    let mut encoder = Encoder { out: Vec::new(), trail: Trail::new("") };
    encoder.value(value, shape).map_err(|error| *error)?;
    Ok(encoder.out)
}

/// The postcard bytes of a method's arguments (the tuple of them), given as a JSON array in
/// order or a JSON object keyed by argument name. Every argument is required. No arguments:
/// `[]`, `{}` or `null`, and no bytes.
///
/// # Errors
/// A [`JsonError`] under the path `args`: another number of arguments, an unknown or missing
/// one, or an argument that does not fit its shape (`args.p.x`).
pub fn args_to_postcard(value: &Value, args: &[Field]) -> Result<Vec<u8>, JsonError> {
    let mut encoder = Encoder { out: Vec::new(), trail: Trail::new("args") };
    encoder.args(value, args).map_err(|error| *error)?;
    Ok(encoder.out)
}

/// How many values that take no bytes an input of `len` bytes may decode to.
fn empty_limit(len: usize) -> u64 {
    MAX_EMPTY_VALUES.saturating_add(EMPTY_VALUES_PER_BYTE.saturating_mul(len as u64))
}

/// How deeply a value may nest: every struct, enum, sequence, map, tuple and array counts one
/// level (options do not). serde_json's parser stops at 128 levels too.
pub const MAX_DEPTH: usize = 128;

/// How many values that take no bytes on the wire (units, unit structs, empty tuples) the
/// value [`from_postcard`] decodes may hold, plus [`EMPTY_VALUES_PER_BYTE`] per input byte:
/// without a limit, a few bytes could declare a `Vec<()>` of billions.
pub const MAX_EMPTY_VALUES: u64 = 1 << 16;

/// How many more values that take no bytes each input byte allows ([`MAX_EMPTY_VALUES`]), for
/// long values of maps to `()` and structs with unit fields.
pub const EMPTY_VALUES_PER_BYTE: u64 = 16;

#[cfg(test)]
mod tests;
