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

use serde_json::{Map, Value};

use crate::shape::{Container, Field, Shape, Variant, VariantBody};

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
    /// hold ([`MAX_EMPTY_VALUES`]).
    #[error("more than {limit} values that take no bytes")]
    TooManyEmptyValues {
        /// The limit for this input.
        limit: u64,
    },
    /// The value nests deeper than [`MAX_DEPTH`] levels.
    #[error("nested deeper than {limit} levels")]
    TooDeep {
        /// The limit.
        limit: usize,
    },
    /// The shape refers to a type outside that type's definition (a malformed shape).
    #[error("the shape refers to type `{0}` outside its definition")]
    UnresolvedRecursive(String),
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

/// The result of one step of a walk. The error is boxed to keep the stack frames of the
/// recursive walk small (a deep value is many frames deep).
type Step<T> = Result<T, Box<JsonError>>;

/// The path, depth and enclosing named types of a walk through a shape.
struct Trail<'s> {
    path: String,
    depth: usize,
    /// The `Shape::Named` being walked, outermost first: what `Shape::Recursive` refers to.
    named: Vec<&'s Shape>,
}

impl<'s> Trail<'s> {
    fn new(path: &str) -> Self {
        Self { path: path.to_owned(), depth: 0, named: Vec::new() }
    }

    fn error(&self, kind: JsonErrorKind) -> Box<JsonError> {
        Box::new(JsonError { path: self.path.clone(), kind })
    }

    /// Appends `.name` to the path; returns the mark to [`Trail::leave`] with.
    fn field(&mut self, name: &str) -> usize {
        let mark = self.path.len();
        if !self.path.is_empty() {
            self.path.push('.');
        }
        self.path.push_str(name);
        mark
    }

    fn index(&mut self, index: usize) -> usize {
        let mark = self.path.len();
        self.path.push_str(&format!("[{index}]"));
        mark
    }

    fn key(&mut self, key: &str) -> usize {
        let mark = self.path.len();
        self.path.push_str(&format!("[{}]", Value::String(key.to_owned())));
        mark
    }

    fn leave(&mut self, mark: usize) {
        self.path.truncate(mark);
    }

    fn nest(&mut self) -> Step<()> {
        if self.depth >= MAX_DEPTH {
            return Err(self.error(JsonErrorKind::TooDeep { limit: MAX_DEPTH }));
        }
        self.depth += 1;
        Ok(())
    }

    fn unnest(&mut self) {
        self.depth = self.depth.saturating_sub(1);
    }

    fn enter_named(&mut self, named: &'s Shape) -> Step<()> {
        self.nest()?;
        self.named.push(named);
        Ok(())
    }

    fn leave_named(&mut self) {
        self.named.pop();
        self.unnest();
    }

    /// The innermost enclosing named type called `name`.
    fn resolve(&self, name: &str) -> Step<&'s Shape> {
        self.named
            .iter()
            .rev()
            .find(|shape| matches!(shape, Shape::Named { name: n, .. } if n == name))
            .copied()
            .ok_or_else(|| self.error(JsonErrorKind::UnresolvedRecursive(name.to_owned())))
    }
}

/// JSON in, postcard out.
struct Encoder<'s> {
    out: Vec<u8>,
    trail: Trail<'s>,
}

impl<'s> Encoder<'s> {
    /// Encodes a method's arguments from an array in order or an object by name.
    fn args(&mut self, value: &Value, args: &'s [Field]) -> Step<()> {
        match value {
            Value::Null if args.is_empty() => Ok(()),
            Value::Array(items) => {
                self.check_length(items.len(), args.len() as u64)?;
                for (item, arg) in items.iter().zip(args) {
                    let mark = self.trail.field(&arg.name);
                    self.value(item, &arg.shape)?;
                    self.trail.leave(mark);
                }
                Ok(())
            }
            Value::Object(map) => self.object_fields(map, args, false),
            other => {
                let expected = format!("{} as an array or an object by name", items(args.len()));
                Err(self.expected(expected, other))
            }
        }
    }

    /// Encodes `value` as `shape`. Composite shapes are walked here, scalars in
    /// [`Encoder::scalar`], which keeps the frames of this recursion small.
    fn value(&mut self, value: &Value, shape: &'s Shape) -> Step<()> {
        let shape = match shape {
            Shape::Recursive(name) => self.trail.resolve(name)?,
            other => other,
        };
        match shape {
            Shape::Option(inner) => {
                if value.is_null() {
                    self.out.push(0);
                    Ok(())
                } else {
                    self.out.push(1);
                    self.value(value, inner)
                }
            }
            Shape::Seq(item) => {
                let Value::Array(items) = value else {
                    return Err(self.expected("an array", value));
                };
                self.trail.nest()?;
                write_varint(&mut self.out, items.len() as u128);
                self.items(items, std::iter::repeat(&**item))?;
                self.trail.unnest();
                Ok(())
            }
            Shape::Map { key, value: item } => self.map(value, key, item),
            Shape::Tuple(shapes) => {
                let items = self.array(value, shapes.len() as u64)?;
                self.trail.nest()?;
                self.items(items, shapes.iter())?;
                self.trail.unnest();
                Ok(())
            }
            Shape::Array { item, len } => {
                let items = self.array(value, *len)?;
                self.trail.nest()?;
                self.items(items, std::iter::repeat(&**item))?;
                self.trail.unnest();
                Ok(())
            }
            Shape::Named { name, body } => {
                self.trail.enter_named(shape)?;
                self.container(value, name, body)?;
                self.trail.leave_named();
                Ok(())
            }
            scalar => self.scalar(value, scalar),
        }
    }

    /// Encodes a value of a shape that holds no other shape.
    fn scalar(&mut self, value: &Value, shape: &'s Shape) -> Step<()> {
        match shape {
            Shape::Unit => self.null(value, "null"),
            Shape::Bool => match value {
                Value::Bool(flag) => {
                    self.out.push(u8::from(*flag));
                    Ok(())
                }
                other => Err(self.expected("true or false", other)),
            },
            Shape::I8 => self.integer(value, IntShape::I8),
            Shape::I16 => self.integer(value, IntShape::I16),
            Shape::I32 => self.integer(value, IntShape::I32),
            Shape::I64 => self.integer(value, IntShape::I64),
            Shape::I128 => self.integer(value, IntShape::I128),
            Shape::U8 => self.integer(value, IntShape::U8),
            Shape::U16 => self.integer(value, IntShape::U16),
            Shape::U32 => self.integer(value, IntShape::U32),
            Shape::U64 => self.integer(value, IntShape::U64),
            Shape::U128 => self.integer(value, IntShape::U128),
            Shape::F32 => {
                // serde's f32 from a JSON number is `number as f32`, out-of-range included.
                let float = self.float(value, "f32")? as f32;
                self.out.extend_from_slice(&float.to_le_bytes());
                Ok(())
            }
            Shape::F64 => {
                let float = self.float(value, "f64")?;
                self.out.extend_from_slice(&float.to_le_bytes());
                Ok(())
            }
            Shape::Char => match value {
                Value::String(text) if text.chars().count() == 1 => {
                    write_bytes(&mut self.out, text.as_bytes());
                    Ok(())
                }
                other => Err(self.expected("a string of one character", other)),
            },
            Shape::Str => match value {
                Value::String(text) => {
                    write_bytes(&mut self.out, text.as_bytes());
                    Ok(())
                }
                other => Err(self.expected("a string", other)),
            },
            Shape::Bytes => self.bytes(value),
            // Composite shapes: `value` walks them (and passes none here).
            Shape::Option(_)
            | Shape::Seq(_)
            | Shape::Map { .. }
            | Shape::Tuple(_)
            | Shape::Array { .. }
            | Shape::Named { .. }
            | Shape::Recursive(_) => self.value(value, shape),
        }
    }

    fn container(&mut self, value: &Value, name: &str, body: &'s Container) -> Step<()> {
        match body {
            Container::UnitStruct => self.null(value, &format!("null (unit struct {name})")),
            Container::NewType(inner) => self.value(value, inner),
            Container::TupleStruct(shapes) => {
                let items = self.array(value, shapes.len() as u64)?;
                self.items(items, shapes.iter())
            }
            Container::Struct(fields) => self.fields(value, fields, name),
            Container::Enum(variants) => self.variant(value, variants, name),
        }
    }

    /// Encodes `items` as `shapes`, one each (the caller has checked the counts match).
    fn items(&mut self, items: &[Value], shapes: impl Iterator<Item = &'s Shape>) -> Step<()> {
        for (index, (item, shape)) in items.iter().zip(shapes).enumerate() {
            let mark = self.trail.index(index);
            self.value(item, shape)?;
            self.trail.leave(mark);
        }
        Ok(())
    }

    /// A struct's fields, from an object by name or, as serde also accepts, an array in order.
    fn fields(&mut self, value: &Value, fields: &'s [Field], name: &str) -> Step<()> {
        match value {
            Value::Object(map) => self.object_fields(map, fields, true),
            Value::Array(items) => {
                self.check_length(items.len(), fields.len() as u64)?;
                for (item, field) in items.iter().zip(fields) {
                    let mark = self.trail.field(&field.name);
                    self.value(item, &field.shape)?;
                    self.trail.leave(mark);
                }
                Ok(())
            }
            other => Err(self.expected(format!("an object with the fields of {name}"), other)),
        }
    }

    /// Fields from an object: no unknown keys; a missing field is an error, unless it is an
    /// option and `missing_is_none` (serde's derive reads a missing option as `None`).
    fn object_fields(
        &mut self,
        map: &Map<String, Value>,
        fields: &'s [Field],
        missing_is_none: bool,
    ) -> Step<()> {
        if let Some(unknown) = map.keys().find(|key| !fields.iter().any(|f| &f.name == *key)) {
            return Err(self.trail.error(JsonErrorKind::UnknownField {
                name: unknown.clone(),
                expected: names(fields.iter().map(|f| f.name.as_str())),
            }));
        }
        for field in fields {
            match map.get(&field.name) {
                Some(item) => {
                    let mark = self.trail.field(&field.name);
                    self.value(item, &field.shape)?;
                    self.trail.leave(mark);
                }
                None if missing_is_none && matches!(field.shape, Shape::Option(_)) => {
                    self.out.push(0);
                }
                None => {
                    let missing = JsonErrorKind::MissingField(field.name.clone());
                    return Err(self.trail.error(missing));
                }
            }
        }
        Ok(())
    }

    /// `"Unit"` or `{"Variant": content}` (`{"Unit": null}` too, as serde_json accepts it).
    fn variant(&mut self, value: &Value, variants: &'s [Variant], name: &str) -> Step<()> {
        let (variant_name, content) = match value {
            Value::String(variant_name) => (variant_name, None),
            Value::Object(map) if map.len() == 1 => match map.iter().next() {
                Some((variant_name, content)) => (variant_name, Some(content)),
                None => return Err(self.expected_variant(name, value)),
            },
            other => return Err(self.expected_variant(name, other)),
        };
        let variant = self.variant_named(variants, variant_name)?;
        write_varint(&mut self.out, u128::from(variant.index));
        let Some(content) = content else {
            return match variant.body {
                VariantBody::Unit => Ok(()),
                _ => Err(self.expected(format!("{{{variant_name:?}: content}}"), value)),
            };
        };
        let mark = self.trail.field(variant_name);
        match &variant.body {
            VariantBody::Unit => self.null(content, "null")?,
            VariantBody::NewType(inner) => self.value(content, inner)?,
            VariantBody::Tuple(shapes) => {
                let items = self.array(content, shapes.len() as u64)?;
                self.items(items, shapes.iter())?;
            }
            // serde_json takes a struct variant's fields from an object only.
            VariantBody::Struct(fields) => match content {
                Value::Object(map) => self.object_fields(map, fields, true)?,
                other => {
                    let expected = format!("an object with the fields of {variant_name}");
                    return Err(self.expected(expected, other));
                }
            },
        }
        self.trail.leave(mark);
        Ok(())
    }

    fn variant_named(&self, variants: &'s [Variant], name: &str) -> Step<&'s Variant> {
        variants.iter().find(|v| v.name == name).ok_or_else(|| {
            self.trail.error(JsonErrorKind::UnknownVariant {
                name: name.to_owned(),
                expected: names(variants.iter().map(|v| v.name.as_str())),
            })
        })
    }

    /// A map: entries sorted by key (the order a `BTreeMap` has), no two keys alike.
    fn map(&mut self, value: &Value, key: &'s Shape, item: &'s Shape) -> Step<()> {
        let Value::Object(map) = value else {
            return Err(self.expected("an object", value));
        };
        self.trail.nest()?;
        let start = self.out.len();
        let mut entries = Vec::with_capacity(map.len());
        for (text, item_value) in map {
            let mark = self.trail.key(text);
            let order = self.key(text, key)?;
            self.value(item_value, item)?;
            entries.push((order, text, self.out.split_off(start)));
            self.trail.leave(mark);
        }
        entries.sort_by(|a, b| a.0.cmp(&b.0));
        if let Some(pair) = entries.windows(2).find(|pair| pair[0].0 == pair[1].0) {
            return Err(self.trail.error(JsonErrorKind::DuplicateKey(pair[1].1.clone())));
        }
        write_varint(&mut self.out, entries.len() as u128);
        for (_, _, bytes) in entries {
            self.out.extend_from_slice(&bytes);
        }
        self.trail.unnest();
        Ok(())
    }

    /// Encodes an object key read as `shape`, as serde_json reads keys, and returns its order.
    fn key(&mut self, text: &str, shape: &'s Shape) -> Step<KeyOrder> {
        match shape {
            Shape::Str | Shape::Char | Shape::Bytes => {
                self.value(&Value::String(text.to_owned()), shape)?;
                Ok(KeyOrder::Text(text.to_owned()))
            }
            Shape::Bool => {
                let flag = match text {
                    "true" => true,
                    "false" => false,
                    _ => return Err(self.expected("\"true\" or \"false\"", &key_value(text))),
                };
                self.out.push(u8::from(flag));
                Ok(KeyOrder::Unsigned(u128::from(flag)))
            }
            Shape::I8 => self.integer_key(text, IntShape::I8),
            Shape::I16 => self.integer_key(text, IntShape::I16),
            Shape::I32 => self.integer_key(text, IntShape::I32),
            Shape::I64 => self.integer_key(text, IntShape::I64),
            Shape::I128 => self.integer_key(text, IntShape::I128),
            Shape::U8 => self.integer_key(text, IntShape::U8),
            Shape::U16 => self.integer_key(text, IntShape::U16),
            Shape::U32 => self.integer_key(text, IntShape::U32),
            Shape::U64 => self.integer_key(text, IntShape::U64),
            Shape::U128 => self.integer_key(text, IntShape::U128),
            Shape::F32 => {
                let float = self.float(&self.numeric_key(text, "f32")?, "f32")? as f32;
                self.out.extend_from_slice(&float.to_le_bytes());
                Ok(KeyOrder::float(f64::from(float)))
            }
            Shape::F64 => {
                let float = self.float(&self.numeric_key(text, "f64")?, "f64")?;
                self.out.extend_from_slice(&float.to_le_bytes());
                Ok(KeyOrder::float(float))
            }
            // A key is never null: serde_json reads it as `Some`.
            Shape::Option(inner) => {
                self.out.push(1);
                self.key(text, inner)
            }
            Shape::Named { body, .. } => {
                self.trail.enter_named(shape)?;
                let order = match &**body {
                    Container::NewType(inner) => self.key(text, inner)?,
                    Container::Enum(variants) => {
                        let variant = self.variant_named(variants, text)?;
                        if variant.body != VariantBody::Unit {
                            let expected = "a variant without content";
                            return Err(self.expected(expected, &key_value(text)));
                        }
                        write_varint(&mut self.out, u128::from(variant.index));
                        KeyOrder::Unsigned(u128::from(variant.index))
                    }
                    _ => return Err(self.unsupported_key(shape)),
                };
                self.trail.leave_named();
                Ok(order)
            }
            Shape::Recursive(name) => {
                let named = self.trail.resolve(name)?;
                self.key(text, named)
            }
            Shape::Unit
            | Shape::Seq(_)
            | Shape::Map { .. }
            | Shape::Tuple(_)
            | Shape::Array { .. } => Err(self.unsupported_key(shape)),
        }
    }

    /// An integer key: a JSON integer in a string. 128-bit keys may use all 128 bits.
    fn integer_key(&mut self, text: &str, int: IntShape) -> Step<KeyOrder> {
        let value = if int.bits == 128 {
            let digits = text.strip_prefix('-').unwrap_or(text);
            let canonical = !digits.is_empty()
                && digits.bytes().all(|b| b.is_ascii_digit())
                && (digits == "0" || !digits.starts_with('0'));
            if !canonical {
                return Err(self.expected(format!("an integer ({})", int.name), &key_value(text)));
            }
            let out_of_range =
                || JsonErrorKind::OutOfRange { shape: int.name, value: text.to_owned() };
            if int.signed {
                let signed = text.parse::<i128>().map_err(|_| self.trail.error(out_of_range()))?;
                IntValue::Signed(signed)
            } else {
                let unsigned =
                    text.parse::<u128>().map_err(|_| self.trail.error(out_of_range()))?;
                IntValue::Unsigned(unsigned)
            }
        } else {
            let number = self.numeric_key(text, int.name)?;
            self.integer_value(&number, int)?
        };
        write_integer(&mut self.out, value, int);
        Ok(match value {
            IntValue::Signed(signed) => KeyOrder::Signed(signed),
            IntValue::Unsigned(unsigned) => KeyOrder::Unsigned(unsigned),
        })
    }

    /// A key read as a number: serde_json wants a JSON number starting with a digit or `-`,
    /// with nothing around it.
    fn numeric_key(&self, text: &str, name: &str) -> Step<Value> {
        let bare = text.starts_with(|c: char| c.is_ascii_digit() || c == '-')
            && !text.ends_with([' ', '\t', '\n', '\r']);
        match serde_json::from_str::<Value>(text) {
            Ok(number @ Value::Number(_)) if bare => Ok(number),
            _ => Err(self.expected(format!("a number in a string ({name})"), &key_value(text))),
        }
    }

    fn integer(&mut self, value: &Value, int: IntShape) -> Step<()> {
        let integer = self.integer_value(value, int)?;
        write_integer(&mut self.out, integer, int);
        Ok(())
    }

    /// A JSON integer within `int`'s range (serde_json numbers hold at most 64 bits).
    fn integer_value(&self, value: &Value, int: IntShape) -> Step<IntValue> {
        let expected = || format!("an integer ({})", int.name);
        let Value::Number(number) = value else {
            return Err(self.expected(expected(), value));
        };
        let integer = match (number.as_u64(), number.as_i64()) {
            (Some(unsigned), _) => i128::from(unsigned),
            (None, Some(signed)) => i128::from(signed),
            (None, None) => return Err(self.expected(expected(), value)),
        };
        if integer < int.min() || integer > int.max() {
            return Err(self
                .trail
                .error(JsonErrorKind::OutOfRange { shape: int.name, value: integer.to_string() }));
        }
        Ok(match u128::try_from(integer) {
            Ok(unsigned) if !int.signed => IntValue::Unsigned(unsigned),
            _ => IntValue::Signed(integer),
        })
    }

    fn float(&self, value: &Value, name: &str) -> Step<f64> {
        match value {
            Value::Number(number) => {
                number.as_f64().ok_or_else(|| self.expected(format!("a number ({name})"), value))
            }
            other => Err(self.expected(format!("a number ({name})"), other)),
        }
    }

    /// Bytes: an array of integers 0 to 255 or, as serde_json allows, a string's UTF-8.
    fn bytes(&mut self, value: &Value) -> Step<()> {
        match value {
            Value::String(text) => write_bytes(&mut self.out, text.as_bytes()),
            Value::Array(items) => {
                let mut bytes = Vec::with_capacity(items.len());
                for (index, item) in items.iter().enumerate() {
                    let mark = self.trail.index(index);
                    match self.integer_value(item, IntShape::U8)? {
                        IntValue::Unsigned(byte) => bytes.push(byte as u8),
                        IntValue::Signed(byte) => bytes.push(byte as u8),
                    }
                    self.trail.leave(mark);
                }
                write_bytes(&mut self.out, &bytes);
            }
            other => return Err(self.expected("an array of bytes", other)),
        }
        Ok(())
    }

    fn null(&self, value: &Value, expected: &str) -> Step<()> {
        match value {
            Value::Null => Ok(()),
            other => Err(self.expected(expected, other)),
        }
    }

    /// The items of an array of exactly `len` items.
    fn array<'v>(&self, value: &'v Value, len: u64) -> Step<&'v [Value]> {
        match value {
            Value::Array(items) => {
                self.check_length(items.len(), len)?;
                Ok(items)
            }
            other => Err(self.expected(format!("an array of {}", items_u64(len)), other)),
        }
    }

    fn check_length(&self, found: usize, expected: u64) -> Step<()> {
        if found as u64 == expected {
            Ok(())
        } else {
            Err(self.trail.error(JsonErrorKind::Length { expected, found: found as u64 }))
        }
    }

    fn expected(&self, expected: impl Into<String>, found: &Value) -> Box<JsonError> {
        self.trail
            .error(JsonErrorKind::Expected { expected: expected.into(), found: describe(found) })
    }

    fn expected_variant(&self, name: &str, found: &Value) -> Box<JsonError> {
        self.expected(format!("a variant of {name}: \"Name\" or {{\"Name\": content}}"), found)
    }

    fn unsupported_key(&self, shape: &Shape) -> Box<JsonError> {
        self.trail.error(JsonErrorKind::UnsupportedKey(shape_word(shape)))
    }
}

/// Postcard in, JSON out.
struct Decoder<'b, 's> {
    input: &'b [u8],
    trail: Trail<'s>,
    /// How many values that take no bytes the input may decode to ([`MAX_EMPTY_VALUES`]).
    empty_limit: u64,
    /// How many more of them may be decoded.
    empty_left: u64,
}

impl<'b, 's> Decoder<'b, 's> {
    /// Decodes a value of `shape`. Composite shapes are walked here, scalars in
    /// [`Decoder::scalar`], which keeps the frames of this recursion small.
    fn value(&mut self, shape: &'s Shape) -> Step<Value> {
        let shape = match shape {
            Shape::Recursive(name) => self.trail.resolve(name)?,
            other => other,
        };
        match shape {
            Shape::Option(inner) => {
                if self.flag("option")? {
                    self.value(inner)
                } else {
                    Ok(Value::Null)
                }
            }
            Shape::Seq(item) => {
                self.trail.nest()?;
                let count = self.varint(64, "a length")? as u64;
                let count = self.reserve(count, takes_no_bytes(item))?;
                let items = self.items(count, std::iter::repeat(&**item))?;
                self.trail.unnest();
                Ok(items)
            }
            Shape::Map { key, value } => self.map(key, value),
            Shape::Tuple(shapes) => {
                self.trail.nest()?;
                let items = self.tuple(shapes)?;
                self.trail.unnest();
                Ok(items)
            }
            Shape::Array { item, len } => {
                self.trail.nest()?;
                let count = self.reserve(*len, takes_no_bytes(item))?;
                if count == 0 {
                    self.spend_empty()?;
                }
                let items = self.items(count, std::iter::repeat(&**item))?;
                self.trail.unnest();
                Ok(items)
            }
            Shape::Named { body, .. } => {
                self.trail.enter_named(shape)?;
                let value = self.container(body)?;
                self.trail.leave_named();
                Ok(value)
            }
            scalar => self.scalar(scalar),
        }
    }

    /// Decodes a value of a shape that holds no other shape.
    fn scalar(&mut self, shape: &'s Shape) -> Step<Value> {
        Ok(match shape {
            Shape::Unit => {
                self.spend_empty()?;
                Value::Null
            }
            Shape::Bool => Value::Bool(self.flag("bool")?),
            Shape::I8 => self.integer_value(IntShape::I8)?,
            Shape::I16 => self.integer_value(IntShape::I16)?,
            Shape::I32 => self.integer_value(IntShape::I32)?,
            Shape::I64 => self.integer_value(IntShape::I64)?,
            Shape::I128 => self.integer_value(IntShape::I128)?,
            Shape::U8 => self.integer_value(IntShape::U8)?,
            Shape::U16 => self.integer_value(IntShape::U16)?,
            Shape::U32 => self.integer_value(IntShape::U32)?,
            Shape::U64 => self.integer_value(IntShape::U64)?,
            Shape::U128 => self.integer_value(IntShape::U128)?,
            // `Value::from` turns NaN and infinities into null, as `serde_json::to_value` does.
            Shape::F32 => Value::from(f32::from_le_bytes(self.fixed()?)),
            Shape::F64 => Value::from(f64::from_le_bytes(self.fixed()?)),
            Shape::Char => Value::String(self.char()?.to_string()),
            Shape::Str => Value::String(self.str()?.to_owned()),
            Shape::Bytes => {
                let len = self.varint(64, "a length")? as u64;
                let bytes = self.take(len)?;
                Value::Array(bytes.iter().map(|&byte| Value::from(byte)).collect())
            }
            // Composite shapes: `value` walks them (and passes none here).
            Shape::Option(_)
            | Shape::Seq(_)
            | Shape::Map { .. }
            | Shape::Tuple(_)
            | Shape::Array { .. }
            | Shape::Named { .. }
            | Shape::Recursive(_) => self.value(shape)?,
        })
    }

    fn container(&mut self, body: &'s Container) -> Step<Value> {
        match body {
            Container::UnitStruct => {
                self.spend_empty()?;
                Ok(Value::Null)
            }
            Container::NewType(inner) => self.value(inner),
            Container::TupleStruct(shapes) => self.tuple(shapes),
            Container::Struct(fields) => {
                if fields.is_empty() {
                    self.spend_empty()?;
                }
                self.fields(fields)
            }
            Container::Enum(variants) => {
                let variant = self.variant(variants)?;
                let content = match &variant.body {
                    VariantBody::Unit => return Ok(Value::String(variant.name.clone())),
                    VariantBody::NewType(inner) => {
                        let mark = self.trail.field(&variant.name);
                        let content = self.value(inner)?;
                        self.trail.leave(mark);
                        content
                    }
                    VariantBody::Tuple(shapes) => {
                        let mark = self.trail.field(&variant.name);
                        let content = self.items(shapes.len(), shapes.iter())?;
                        self.trail.leave(mark);
                        content
                    }
                    VariantBody::Struct(fields) => {
                        let mark = self.trail.field(&variant.name);
                        let content = self.fields(fields)?;
                        self.trail.leave(mark);
                        content
                    }
                };
                let mut map = Map::new();
                map.insert(variant.name.clone(), content);
                Ok(Value::Object(map))
            }
        }
    }

    /// A tuple or tuple struct (an empty one takes no bytes).
    fn tuple(&mut self, shapes: &'s [Shape]) -> Step<Value> {
        if shapes.is_empty() {
            self.spend_empty()?;
        }
        self.items(shapes.len(), shapes.iter())
    }

    /// `count` items of `shapes`, one each. The caller has checked `count`
    /// ([`Decoder::reserve`]) or taken it from the shape.
    fn items(&mut self, count: usize, shapes: impl Iterator<Item = &'s Shape>) -> Step<Value> {
        let mut items = Vec::with_capacity(count);
        for (index, shape) in shapes.take(count).enumerate() {
            let mark = self.trail.index(index);
            items.push(self.value(shape)?);
            self.trail.leave(mark);
        }
        Ok(Value::Array(items))
    }

    fn fields(&mut self, fields: &'s [Field]) -> Step<Value> {
        let mut map = Map::new();
        for field in fields {
            let mark = self.trail.field(&field.name);
            let value = self.value(&field.shape)?;
            self.trail.leave(mark);
            map.insert(field.name.clone(), value);
        }
        Ok(Value::Object(map))
    }

    fn variant(&mut self, variants: &'s [Variant]) -> Step<&'s Variant> {
        let index = self.varint(32, "a variant index")? as u32;
        variants
            .iter()
            .find(|v| v.index == index)
            .ok_or_else(|| self.trail.error(JsonErrorKind::UnknownVariantIndex(index)))
    }

    fn map(&mut self, key: &'s Shape, item: &'s Shape) -> Step<Value> {
        self.trail.nest()?;
        let count = self.varint(64, "a length")? as u64;
        let count = self.reserve(count, takes_no_bytes(key) && takes_no_bytes(item))?;
        let mut map = Map::new();
        for _ in 0..count {
            let text = self.key(key)?;
            let mark = self.trail.key(&text);
            let value = self.value(item)?;
            self.trail.leave(mark);
            map.insert(text, value);
        }
        self.trail.unnest();
        Ok(Value::Object(map))
    }

    /// A map key as serde_json writes it: strings as they are, numbers and bools as text,
    /// unit variants by name, newtypes as their inner value; nothing else.
    fn key(&mut self, shape: &'s Shape) -> Step<String> {
        match shape {
            Shape::Str => Ok(self.str()?.to_owned()),
            Shape::Char => Ok(self.char()?.to_string()),
            Shape::Bool => Ok(self.flag("bool")?.to_string()),
            Shape::I8 => Ok(self.integer(IntShape::I8)?.to_string()),
            Shape::I16 => Ok(self.integer(IntShape::I16)?.to_string()),
            Shape::I32 => Ok(self.integer(IntShape::I32)?.to_string()),
            Shape::I64 => Ok(self.integer(IntShape::I64)?.to_string()),
            Shape::I128 => Ok(self.integer(IntShape::I128)?.to_string()),
            Shape::U8 => Ok(self.integer(IntShape::U8)?.to_string()),
            Shape::U16 => Ok(self.integer(IntShape::U16)?.to_string()),
            Shape::U32 => Ok(self.integer(IntShape::U32)?.to_string()),
            Shape::U64 => Ok(self.integer(IntShape::U64)?.to_string()),
            Shape::U128 => Ok(self.integer(IntShape::U128)?.to_string()),
            Shape::F32 => {
                let float = f32::from_le_bytes(self.fixed()?);
                self.float_key(float.is_finite(), serde_json::to_string(&float))
            }
            Shape::F64 => {
                let float = f64::from_le_bytes(self.fixed()?);
                self.float_key(float.is_finite(), serde_json::to_string(&float))
            }
            Shape::Named { body, .. } => {
                self.trail.enter_named(shape)?;
                let text = match &**body {
                    Container::NewType(inner) => self.key(inner)?,
                    Container::Enum(variants) => {
                        let variant = self.variant(variants)?;
                        if variant.body != VariantBody::Unit {
                            let what = format!("variant {} with content", variant.name);
                            return Err(self.trail.error(JsonErrorKind::UnsupportedKey(what)));
                        }
                        variant.name.clone()
                    }
                    _ => return Err(self.unsupported_key(shape)),
                };
                self.trail.leave_named();
                Ok(text)
            }
            Shape::Recursive(name) => {
                let named = self.trail.resolve(name)?;
                self.key(named)
            }
            Shape::Unit
            | Shape::Bytes
            | Shape::Option(_)
            | Shape::Seq(_)
            | Shape::Map { .. }
            | Shape::Tuple(_)
            | Shape::Array { .. } => Err(self.unsupported_key(shape)),
        }
    }

    /// A float key, written as serde_json writes one (finite floats only).
    fn float_key(&self, finite: bool, text: Result<String, serde_json::Error>) -> Step<String> {
        match text {
            Ok(text) if finite => Ok(text),
            _ => Err(self.trail.error(JsonErrorKind::UnsupportedKey("a non-finite float".into()))),
        }
    }

    /// Checks a declared count of items against the bytes left (each item takes one at
    /// least) or, when the items take no bytes, against what is left of [`MAX_EMPTY_VALUES`]
    /// (each spends from it as it is decoded); returns it as a `usize`.
    fn reserve(&mut self, count: u64, take_no_bytes: bool) -> Step<usize> {
        if take_no_bytes {
            if count > self.empty_left {
                return Err(self.too_many_empty());
            }
        } else if count > self.input.len() as u64 {
            return Err(self.length_exceeds(count));
        }
        usize::try_from(count).map_err(|_| self.length_exceeds(count))
    }

    /// Counts one value that takes no bytes (a unit, an empty tuple) against
    /// [`MAX_EMPTY_VALUES`]: bytes that declare many such values cannot make a huge value.
    fn spend_empty(&mut self) -> Step<()> {
        match self.empty_left.checked_sub(1) {
            Some(left) => {
                self.empty_left = left;
                Ok(())
            }
            None => Err(self.too_many_empty()),
        }
    }

    fn too_many_empty(&self) -> Box<JsonError> {
        self.trail.error(JsonErrorKind::TooManyEmptyValues { limit: self.empty_limit })
    }

    fn integer_value(&mut self, int: IntShape) -> Step<Value> {
        let integer = self.integer(int)?;
        let json = match integer {
            IntValue::Unsigned(unsigned) => u64::try_from(unsigned).ok().map(Value::from),
            IntValue::Signed(signed) => u64::try_from(signed)
                .ok()
                .map(Value::from)
                .or_else(|| i64::try_from(signed).ok().map(Value::from)),
        };
        json.ok_or_else(|| {
            self.trail.error(JsonErrorKind::TooLargeForJson {
                shape: int.name,
                value: integer.to_string(),
            })
        })
    }

    fn integer(&mut self, int: IntShape) -> Step<IntValue> {
        if int.bits == 8 {
            let byte = self.byte()?;
            return Ok(if int.signed {
                IntValue::Signed(i128::from(byte as i8))
            } else {
                IntValue::Unsigned(u128::from(byte))
            });
        }
        let raw = self.varint(int.bits, int.name)?;
        Ok(if int.signed {
            // Zigzag: 0, -1, 1, -2, … are 0, 1, 2, 3, …
            IntValue::Signed((raw >> 1) as i128 ^ -((raw & 1) as i128))
        } else {
            IntValue::Unsigned(raw)
        })
    }

    /// A LEB128 varint of a `bits`-wide integer, checked as postcard checks it: at most
    /// `ceil(bits / 7)` bytes, the last holding no bits beyond the width.
    fn varint(&mut self, bits: u32, name: &'static str) -> Step<u128> {
        let max_len = bits.div_ceil(7);
        let spare_bits = bits % 7;
        let last_max: u8 = if spare_bits == 0 { 0x7f } else { (1 << spare_bits) - 1 };
        let mut value = 0_u128;
        for position in 0..max_len {
            let byte = self.byte()?;
            value |= u128::from(byte & 0x7f) << (7 * position);
            if byte & 0x80 == 0 {
                if position == max_len - 1 && byte > last_max {
                    break;
                }
                return Ok(value);
            }
        }
        Err(self.trail.error(JsonErrorKind::InvalidVarint(name)))
    }

    fn flag(&mut self, what: &'static str) -> Step<bool> {
        match self.byte()? {
            0 => Ok(false),
            1 => Ok(true),
            byte => Err(self.trail.error(JsonErrorKind::InvalidTag { what, byte })),
        }
    }

    fn char(&mut self) -> Step<char> {
        let len = self.varint(64, "a length")? as u64;
        if len > 4 {
            return Err(self.trail.error(JsonErrorKind::InvalidChar));
        }
        let bytes = self.take(len)?;
        let mut chars = std::str::from_utf8(bytes).map(str::chars).into_iter().flatten();
        match (chars.next(), chars.next()) {
            (Some(one), None) => Ok(one),
            _ => Err(self.trail.error(JsonErrorKind::InvalidChar)),
        }
    }

    fn str(&mut self) -> Step<&'b str> {
        let len = self.varint(64, "a length")? as u64;
        let bytes = self.take(len)?;
        std::str::from_utf8(bytes).map_err(|_| self.trail.error(JsonErrorKind::InvalidUtf8))
    }

    fn byte(&mut self) -> Step<u8> {
        let (&first, rest) =
            self.input.split_first().ok_or_else(|| self.trail.error(JsonErrorKind::Truncated))?;
        self.input = rest;
        Ok(first)
    }

    fn fixed<const N: usize>(&mut self) -> Step<[u8; N]> {
        let Some((bytes, rest)) = self.input.split_first_chunk::<N>() else {
            return Err(self.trail.error(JsonErrorKind::Truncated));
        };
        self.input = rest;
        Ok(*bytes)
    }

    /// The next `len` bytes, `len` being declared by the input.
    fn take(&mut self, len: u64) -> Step<&'b [u8]> {
        match usize::try_from(len) {
            Ok(len) if len <= self.input.len() => {
                let (bytes, rest) = self.input.split_at(len);
                self.input = rest;
                Ok(bytes)
            }
            _ => Err(self.length_exceeds(len)),
        }
    }

    fn length_exceeds(&self, declared: u64) -> Box<JsonError> {
        self.trail.error(JsonErrorKind::LengthExceedsInput { declared, left: self.input.len() })
    }

    fn unsupported_key(&self, shape: &Shape) -> Box<JsonError> {
        self.trail.error(JsonErrorKind::UnsupportedKey(shape_word(shape)))
    }
}

/// What postcard and JSON need to know of an integer type.
#[derive(Debug, Clone, Copy)]
struct IntShape {
    name: &'static str,
    bits: u32,
    signed: bool,
}

impl IntShape {
    const I8: Self = Self { name: "i8", bits: 8, signed: true };
    const I16: Self = Self { name: "i16", bits: 16, signed: true };
    const I32: Self = Self { name: "i32", bits: 32, signed: true };
    const I64: Self = Self { name: "i64", bits: 64, signed: true };
    const I128: Self = Self { name: "i128", bits: 128, signed: true };
    const U8: Self = Self { name: "u8", bits: 8, signed: false };
    const U16: Self = Self { name: "u16", bits: 16, signed: false };
    const U32: Self = Self { name: "u32", bits: 32, signed: false };
    const U64: Self = Self { name: "u64", bits: 64, signed: false };
    const U128: Self = Self { name: "u128", bits: 128, signed: false };

    fn min(self) -> i128 {
        if self.signed {
            i128::MIN >> (128 - self.bits)
        } else {
            0
        }
    }

    /// The largest value, capped at `i128::MAX` (JSON numbers stop at `u64::MAX` anyway).
    fn max(self) -> i128 {
        match (self.signed, self.bits) {
            (true, bits) => i128::MAX >> (128 - bits),
            (false, bits) if bits < 127 => (1 << bits) - 1,
            (false, _) => i128::MAX,
        }
    }
}

/// An integer of any width and signedness.
#[derive(Debug, Clone, Copy)]
enum IntValue {
    Signed(i128),
    Unsigned(u128),
}

impl std::fmt::Display for IntValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Signed(signed) => signed.fmt(f),
            Self::Unsigned(unsigned) => unsigned.fmt(f),
        }
    }
}

/// How map keys of one shape sort: the order their Rust types have (numbers by value, strings
/// by bytes, unit variants by index), so a `BTreeMap` gets the bytes postcard gives it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum KeyOrder {
    Signed(i128),
    Unsigned(u128),
    /// A float's bits, flipped so that integer order is `f64::total_cmp`'s.
    Float(i64),
    Text(String),
}

impl KeyOrder {
    fn float(float: f64) -> Self {
        let bits = float.to_bits() as i64;
        Self::Float(bits ^ (((bits >> 63) as u64) >> 1) as i64)
    }
}

fn write_integer(out: &mut Vec<u8>, value: IntValue, int: IntShape) {
    match (value, int.bits) {
        // Both are in range for `int`: the low byte is the value (two's complement for i8).
        (IntValue::Signed(signed), 8) => out.push(signed as u8),
        (IntValue::Unsigned(unsigned), 8) => out.push(unsigned as u8),
        (IntValue::Signed(signed), _) => {
            write_varint(out, ((signed << 1) ^ (signed >> 127)) as u128)
        }
        (IntValue::Unsigned(unsigned), _) => write_varint(out, unsigned),
    }
}

fn write_varint(out: &mut Vec<u8>, mut value: u128) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

fn write_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    write_varint(out, bytes.len() as u128);
    out.extend_from_slice(bytes);
}

/// Whether every value of `shape` encodes to no bytes at all (units and what holds only them).
fn takes_no_bytes(shape: &Shape) -> bool {
    match shape {
        Shape::Unit => true,
        Shape::Tuple(shapes) => shapes.iter().all(takes_no_bytes),
        Shape::Array { item, len } => *len == 0 || takes_no_bytes(item),
        Shape::Named { body, .. } => match &**body {
            Container::UnitStruct => true,
            Container::NewType(inner) => takes_no_bytes(inner),
            Container::TupleStruct(shapes) => shapes.iter().all(takes_no_bytes),
            Container::Struct(fields) => fields.iter().all(|f| takes_no_bytes(&f.shape)),
            Container::Enum(_) => false,
        },
        _ => false,
    }
}

/// A short description of a JSON value, for errors.
fn describe(value: &Value) -> String {
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
fn shape_word(shape: &Shape) -> String {
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

fn key_value(text: &str) -> Value {
    Value::String(text.to_owned())
}

fn names<'a>(names: impl Iterator<Item = &'a str>) -> String {
    names.map(|name| format!("`{name}`")).collect::<Vec<_>>().join(", ")
}

fn items(count: usize) -> String {
    items_u64(count as u64)
}

fn items_u64(count: u64) -> String {
    if count == 1 {
        "1 item".to_owned()
    } else {
        format!("{count} items")
    }
}

/// How many values that take no bytes an input of `len` bytes may decode to.
fn empty_limit(len: usize) -> u64 {
    MAX_EMPTY_VALUES.saturating_add(EMPTY_VALUES_PER_BYTE.saturating_mul(len as u64))
}

fn location(path: &str) -> &str {
    if path.is_empty() {
        "the top level"
    } else {
        path
    }
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
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use proptest::prelude::*;
    use serde::de::DeserializeOwned;
    use serde::{Deserialize, Serialize};
    use serde_json::json;
    use serde_reflection::{FormatHolder, Tracer, TracerConfig};

    use super::*;
    use crate::{MethodKind, SchemaBuilder};

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    struct Point {
        x: i32,
        y: i32,
    }

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    struct Meters(f64);

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    struct Marker;

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    struct Pair(u8, String);

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    enum Figure {
        Empty,
        Circle(f32),
        Segment(Point, Point),
        Frame { corner: Point, size: (u16, u16) },
    }

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    enum Tree {
        Leaf(u32),
        Node(Box<Tree>, Box<Tree>),
    }

    #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
    enum Color {
        Red,
        Green,
        Blue,
    }

    #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
    struct Id(i16);

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    struct Profile {
        name: String,
        nickname: Option<String>,
        age: u8,
    }

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    struct Record {
        id: u64,
        name: String,
        letter: char,
        score: Option<i32>,
        figures: Vec<Figure>,
        by_name: BTreeMap<String, i16>,
        by_id: BTreeMap<u32, Marker>,
        grid: [u8; 3],
        mixed: (i64, bool, char),
        meters: Meters,
        pair: Pair,
        big: u128,
        small: i128,
        tiny: i8,
        tree: Tree,
        nothing: (),
    }

    /// A float map key with the order `f64::total_cmp` gives.
    #[derive(Debug, Clone, Copy, Serialize, Deserialize)]
    struct FloatKey(f32);

    impl PartialEq for FloatKey {
        fn eq(&self, other: &Self) -> bool {
            self.cmp(other).is_eq()
        }
    }

    impl Eq for FloatKey {}

    impl PartialOrd for FloatKey {
        fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
            Some(self.cmp(other))
        }
    }

    impl Ord for FloatKey {
        fn cmp(&self, other: &Self) -> std::cmp::Ordering {
            self.0.total_cmp(&other.0)
        }
    }

    /// Bytes serialized as serde bytes (what `serde_bytes` does), for `Shape::Bytes`.
    struct RawBytes(Vec<u8>);

    impl Serialize for RawBytes {
        fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
            serializer.serialize_bytes(&self.0)
        }
    }

    /// The shape of `T`, traced as [`SchemaBuilder`] traces it, except that the test enums are
    /// traced on their own first: one trace of a type meets only one variant of each enum
    /// nested in it, and the builder's tracer then reports the others missing.
    fn shape_of<T: DeserializeOwned>() -> Shape {
        let mut tracer = Tracer::new(TracerConfig::default());
        tracer.trace_simple_type::<Figure>().unwrap();
        tracer.trace_simple_type::<Tree>().unwrap();
        tracer.trace_simple_type::<Color>().unwrap();
        let (mut format, _) = tracer.trace_simple_type::<T>().unwrap();
        format.normalize().unwrap();
        let types = tracer.registry().unwrap();
        crate::shape::shape_of(&format, &types, &mut BTreeSet::new()).unwrap()
    }

    fn built_shape_of<T: DeserializeOwned>() -> Shape {
        let schema = SchemaBuilder::new("T")
            .method::<(), T, ()>("m", MethodKind::Call, &[], false)
            .unwrap()
            .finish();
        schema.methods[0].ok.clone()
    }

    fn args_of<A: DeserializeOwned>(names: &[&str]) -> Vec<Field> {
        let schema = SchemaBuilder::new("T")
            .method::<A, (), ()>("m", MethodKind::Call, names, false)
            .unwrap()
            .finish();
        schema.methods[0].args.clone()
    }

    /// Checks both directions against serde_json and postcard for one value of a shape.
    fn check_with<T: Serialize>(value: &T, shape: &Shape) {
        let json = serde_json::to_value(value).unwrap();
        let bytes = postcard::to_stdvec(value).unwrap();
        assert_eq!(to_postcard(&json, shape), Ok(bytes.clone()), "to postcard: {json}");
        assert_eq!(from_postcard(&bytes, shape), Ok(json), "from postcard: {bytes:02x?}");
    }

    fn check<T: Serialize + DeserializeOwned>(value: &T) {
        check_with(value, &shape_of::<T>());
    }

    fn kind_of<T>(result: Result<T, JsonError>) -> JsonErrorKind {
        match result {
            Ok(_) => panic!("expected an error"),
            Err(error) => error.kind,
        }
    }

    fn tree(depth: usize) -> Tree {
        (0..depth)
            .fold(Tree::Leaf(7), |inner, _| Tree::Node(Box::new(inner), Box::new(Tree::Leaf(1))))
    }

    fn record() -> Record {
        Record {
            id: 42,
            name: "Ada".into(),
            letter: 'λ',
            score: Some(-3),
            figures: vec![
                Figure::Empty,
                Figure::Circle(1.5),
                Figure::Segment(Point { x: 1, y: -1 }, Point { x: i32::MIN, y: i32::MAX }),
                Figure::Frame { corner: Point { x: 0, y: 0 }, size: (640, 480) },
            ],
            by_name: [("b".to_owned(), -1), ("a".to_owned(), 300)].into(),
            by_id: [(10, Marker), (9, Marker), (100_000, Marker)].into(),
            grid: [1, 2, 255],
            mixed: (-5, true, '🦀'),
            meters: Meters(-0.25),
            pair: Pair(7, "seven".into()),
            big: u128::from(u64::MAX),
            small: i128::from(i64::MIN),
            tiny: -128,
            tree: tree(3),
            nothing: (),
        }
    }

    #[test]
    fn the_test_shapes_are_the_schema_builders() {
        assert_eq!(shape_of::<Figure>(), built_shape_of::<Figure>());
        assert_eq!(shape_of::<Tree>(), built_shape_of::<Tree>());
        assert_eq!(shape_of::<Profile>(), built_shape_of::<Profile>());
        assert_eq!(shape_of::<(u8, u8)>(), built_shape_of::<(u8, u8)>());
    }

    #[test]
    fn scalars_match_serde_json_and_postcard() {
        check(&());
        check(&true);
        check(&false);
        for n in [i8::MIN, -1, 0, 1, i8::MAX] {
            check(&n);
        }
        for n in [u8::MIN, 1, 127, 128, u8::MAX] {
            check(&n);
        }
        for n in [i16::MIN, -129, -64, -1, 0, 63, 64, i16::MAX] {
            check(&n);
        }
        for n in [0_u16, 127, 128, 16_383, 16_384, u16::MAX] {
            check(&n);
        }
        for n in [i32::MIN, -1, 0, 1, i32::MAX] {
            check(&n);
        }
        for n in [0, 1 << 21, u32::MAX] {
            check(&n);
        }
        for n in [i64::MIN, -1, 0, i64::MAX] {
            check(&n);
        }
        for n in [0, u64::from(u32::MAX) + 1, u64::MAX] {
            check(&n);
        }
        for n in [0, 1, u128::from(u64::MAX)] {
            check(&n);
        }
        for n in [i128::from(i64::MIN), -1, 0, i128::from(u64::MAX)] {
            check(&n);
        }
        for x in [0.0_f32, -0.0, 1.1, -3.5e-20, f32::MAX, f32::MIN_POSITIVE] {
            check(&x);
        }
        for x in [0.0_f64, 0.1, -1e300, f64::EPSILON, 12_345.678_9] {
            check(&x);
        }
        for c in ['a', '\0', 'é', '€', '🦀'] {
            check(&c);
        }
        for s in ["", "hello", "naïve ☃ 🦀", "quote \" and \\"] {
            check(&s.to_owned());
        }
    }

    #[test]
    fn structs_tuples_newtypes_and_unit_structs_match() {
        check(&Point { x: -7, y: 1 << 20 });
        check(&Meters(2.5));
        check(&Marker);
        check(&Pair(255, "pair".into()));
        check(&(1_u8, -2_i64, 'x', "mixed".to_owned(), true));
        check(&(3_u16, 4_u16, 5_u16));
        check(&[Point { x: 1, y: 2 }, Point { x: 3, y: 4 }]);
        check(&[0_u8; 0]);
        check(&Profile { name: "Bo".into(), nickname: None, age: 9 });
        check(&record());
    }

    #[test]
    fn every_enum_variant_kind_and_a_recursive_enum_match() {
        check(&Figure::Empty);
        check(&Figure::Circle(-0.5));
        check(&Figure::Segment(Point { x: 1, y: 2 }, Point { x: 3, y: 4 }));
        check(&Figure::Frame { corner: Point { x: 5, y: 6 }, size: (7, 8) });
        check(&vec![Color::Blue, Color::Red]);
        check(&tree(0));
        check(&tree(20));
        check(&Tree::Node(Box::new(tree(2)), Box::new(tree(3))));
        assert_eq!(serde_json::to_value(Figure::Empty).unwrap(), json!("Empty"));
        assert_eq!(serde_json::to_value(Figure::Circle(1.0)).unwrap(), json!({"Circle": 1.0}));
    }

    #[test]
    fn options_sequences_maps_and_arrays_match() {
        check(&Some(5_u32));
        check(&None::<u32>);
        check(&Some(Some(false)));
        check(&vec![Some(1_i8), None]);
        check(&Vec::<String>::new());
        check(&vec![vec![1_u64, 2], vec![], vec![u64::MAX]]);
        check(&BTreeMap::<String, u8>::new());
        check(&BTreeMap::from([("z".to_owned(), 1_u8), ("a".to_owned(), 2), ("é".to_owned(), 3)]));
        check(&BTreeMap::from([(9_u32, "nine".to_owned()), (10, "ten".into()), (0, "".into())]));
        check(&BTreeMap::from([(-1_i8, ()), (0, ()), (-128, ()), (127, ())]));
        check(&BTreeMap::from([(u128::MAX, 1_u8), (0, 2)]));
        check(&BTreeMap::from([(i128::MIN, 1_u8), (i128::MAX, 2)]));
        check(&BTreeMap::from([(true, 1_u8), (false, 0)]));
        check(&BTreeMap::from([('b', 1_u8), ('a', 2), ('🦀', 3)]));
        check(&BTreeMap::from([(Color::Blue, 1_u8), (Color::Red, 2), (Color::Green, 3)]));
        check(&BTreeMap::from([(Id(-3), 1_u8), (Id(20), 2), (Id(-40), 3)]));
        check(&BTreeMap::from([(FloatKey(1.1), 1_u8), (FloatKey(-2.5), 2), (FloatKey(1e30), 3)]));
        check(&BTreeMap::from([(1_u16, BTreeMap::from([(2_u16, vec![Marker])]))]));
    }

    #[test]
    fn bytes_are_arrays_of_numbers_and_strings_are_taken_as_utf8() {
        for bytes in [vec![], vec![0, 1, 255], vec![7; 300]] {
            check_with(&RawBytes(bytes), &Shape::Bytes);
        }
        let from_text = to_postcard(&json!("hi"), &Shape::Bytes).unwrap();
        assert_eq!(from_text, postcard::to_stdvec(&RawBytes(b"hi".to_vec())).unwrap());
        let err = to_postcard(&json!([1, 256]), &Shape::Bytes).unwrap_err();
        assert_eq!(err.path, "[1]");
    }

    #[test]
    fn arguments_come_as_an_array_or_an_object_by_name() {
        let args = args_of::<(Point, String, Option<u8>)>(&["p", "label", "limit"]);
        let expected = postcard::to_stdvec(&(Point { x: 1, y: 2 }, "here", Some(3_u8))).unwrap();
        let positional = json!([{"x": 1, "y": 2}, "here", 3]);
        assert_eq!(args_to_postcard(&positional, &args), Ok(expected.clone()));
        let named = json!({"label": "here", "limit": 3, "p": {"x": 1, "y": 2}});
        assert_eq!(args_to_postcard(&named, &args), Ok(expected));

        // A tuple of one type traces as an array; it is still two arguments.
        let same = args_of::<(u8, u8)>(&["a", "b"]);
        assert_eq!(same.len(), 2);
        let bytes = postcard::to_stdvec(&(1_u8, 2_u8)).unwrap();
        assert_eq!(args_to_postcard(&json!({"a": 1, "b": 2}), &same), Ok(bytes.clone()));
        assert_eq!(args_to_postcard(&json!([1, 2]), &same), Ok(bytes));

        for none in [json!(null), json!([]), json!({})] {
            assert_eq!(args_to_postcard(&none, &[]), Ok(Vec::new()));
        }
    }

    #[test]
    fn argument_errors_name_the_argument() {
        let args = args_of::<(Point, String, Option<u8>)>(&["p", "label", "limit"]);
        let err = args_to_postcard(&json!([{"x": "1", "y": 2}, "here", 3]), &args).unwrap_err();
        assert_eq!(err.path, "args.p.x");
        assert_eq!(
            err.kind,
            JsonErrorKind::Expected {
                expected: "an integer (i32)".into(),
                found: "the string \"1\"".into()
            }
        );
        assert_eq!(
            err.to_string(),
            "at args.p.x: expected an integer (i32), found the string \"1\""
        );
        // Every argument is required, options included; no unknown ones.
        let err = args_to_postcard(&json!({"p": {"x": 1, "y": 2}, "label": "l"}), &args);
        assert_eq!(kind_of(err), JsonErrorKind::MissingField("limit".into()));
        let err = args_to_postcard(&json!({"p": [1, 2], "label": "l", "limit": 1, "x": 0}), &args);
        assert!(matches!(kind_of(err), JsonErrorKind::UnknownField { name, .. } if name == "x"));
        let err = args_to_postcard(&json!([[1, 2], "l"]), &args).unwrap_err();
        assert_eq!(
            (err.path.as_str(), err.kind),
            ("args", JsonErrorKind::Length { expected: 3, found: 2 })
        );
        assert!(matches!(
            kind_of(args_to_postcard(&json!(null), &args)),
            JsonErrorKind::Expected { .. }
        ));
        assert!(matches!(
            kind_of(args_to_postcard(&json!(5), &[])),
            JsonErrorKind::Expected { .. }
        ));
    }

    /// Whether `to_postcard` takes `json` exactly when serde_json reads it as a `T`, and then
    /// gives the bytes of what serde_json read.
    fn accepts_like_serde_json<T: Serialize + DeserializeOwned>(json: Value) {
        let ours = to_postcard(&json, &shape_of::<T>());
        let theirs = serde_json::from_value::<T>(json.clone());
        match (ours, theirs) {
            (Ok(bytes), Ok(value)) => assert_eq!(bytes, postcard::to_stdvec(&value).unwrap()),
            (Err(_), Err(_)) => {}
            (ours, theirs) => panic!("{json}: ours {ours:?}, serde_json {:?}", theirs.err()),
        }
    }

    #[test]
    fn json_is_accepted_exactly_when_serde_json_accepts_it() {
        for json in [json!({"name": "Bo", "age": 9}), json!(["Bo", "B", 9]), json!(["Bo", 9])] {
            accepts_like_serde_json::<Profile>(json);
        }
        for json in [json!({"name": "Bo", "age": 256}), json!({"name": 1, "age": 1})] {
            accepts_like_serde_json::<Profile>(json);
        }
        for json in [
            json!("Empty"),
            json!({"Empty": null}),
            json!({"Empty": 0}),
            json!("Circle"),
            json!({"Circle": 2}),
            json!({"Segment": [[1, 2], {"x": 3, "y": 4}]}),
            json!({"Segment": [[1, 2]]}),
            json!({"Frame": [[1, 2], [3, 4]]}),
            json!({"Frame": {"corner": [1, 2], "size": [3, 4]}}),
            json!({"Frame": {"corner": [1, 2]}}),
            json!({"Empty": null, "Circle": 1}),
            json!({}),
            json!(["Empty"]),
            json!("empty"),
        ] {
            accepts_like_serde_json::<Figure>(json);
        }
        for json in [json!(null), json!(1), json!(255), json!(256), json!(-1), json!(1.0)] {
            accepts_like_serde_json::<Option<Option<u8>>>(json);
        }
        for json in [json!(1e39), json!(-0.0), json!(3), json!(u64::MAX), json!("1")] {
            accepts_like_serde_json::<f32>(json);
        }
        for json in [json!(u64::MAX), json!(i64::MIN), json!(-1), json!(0.5)] {
            accepts_like_serde_json::<u128>(json.clone());
            accepts_like_serde_json::<i128>(json);
        }
        for json in [json!("é"), json!("ab"), json!(""), json!(1)] {
            accepts_like_serde_json::<char>(json);
        }
        for key in ["0", "9", "10", "-1", "-0", "01", "1.0", "1e2", " 1", "1 ", "+1", "x", ""] {
            accepts_like_serde_json::<BTreeMap<u32, u8>>(json!({ key: 1 }));
            accepts_like_serde_json::<BTreeMap<i8, u8>>(json!({ key: 1 }));
            accepts_like_serde_json::<BTreeMap<u128, u8>>(json!({ key: 1 }));
            accepts_like_serde_json::<BTreeMap<i128, u8>>(json!({ key: 1 }));
        }
        let beyond_u64 = "340282366920938463463374607431768211455";
        accepts_like_serde_json::<BTreeMap<u128, u8>>(json!({ beyond_u64: 1 }));
        for key in ["true", "false", "True", "1"] {
            accepts_like_serde_json::<BTreeMap<bool, u8>>(json!({ key: 1 }));
        }
        for key in ["Red", "Blue", "red", ""] {
            accepts_like_serde_json::<BTreeMap<Color, u8>>(json!({ key: 1 }));
        }
        accepts_like_serde_json::<BTreeMap<u16, u8>>(json!({"10": 1, "9": 2, "65535": 3}));
        accepts_like_serde_json::<BTreeMap<Id, u8>>(json!({"-5": 1, "3": 2}));
        accepts_like_serde_json::<BTreeMap<Option<u8>, u8>>(json!({"5": 1}));
    }

    #[test]
    fn wrong_json_types_and_out_of_range_integers_are_errors_with_a_path() {
        let shape = shape_of::<Record>();
        let mut json = serde_json::to_value(record()).unwrap();
        json["figures"][2]["Segment"][1]["y"] = json!(1.5);
        let err = to_postcard(&json, &shape).unwrap_err();
        assert_eq!(err.path, "figures[2].Segment[1].y");
        assert!(matches!(err.kind, JsonErrorKind::Expected { .. }));

        let out_of_range = |value: Value, shape: Shape, name: &'static str, text: &str| {
            let expected = JsonErrorKind::OutOfRange { shape: name, value: text.into() };
            assert_eq!(kind_of(to_postcard(&value, &shape)), expected, "{value} as {name}");
        };
        out_of_range(json!(256), Shape::U8, "u8", "256");
        out_of_range(json!(-1), Shape::U8, "u8", "-1");
        out_of_range(json!(-129), Shape::I8, "i8", "-129");
        out_of_range(json!(65_536), Shape::U16, "u16", "65536");
        out_of_range(json!(-1), Shape::U128, "u128", "-1");
        out_of_range(json!(u64::MAX), Shape::I64, "i64", "18446744073709551615");
        out_of_range(json!(i64::MIN), Shape::I32, "i32", "-9223372036854775808");
        for (value, shape) in [
            (json!("x"), Shape::Bool),
            (json!(1), Shape::Str),
            (json!("ab"), Shape::Char),
            (json!(""), Shape::Char),
            (json!(null), Shape::F64),
            (json!(1.0), Shape::U32),
            (json!(false), Shape::Unit),
            (json!({}), Shape::Seq(Box::new(Shape::U8))),
            (json!([]), Shape::Map { key: Box::new(Shape::Str), value: Box::new(Shape::U8) }),
        ] {
            let kind = kind_of(to_postcard(&value, &shape));
            assert!(matches!(kind, JsonErrorKind::Expected { .. }), "{value} as {shape:?}: {kind}");
        }
        let err = to_postcard(&json!([1, 2]), &shape_of::<(u8, u8, u8)>()).unwrap_err();
        assert_eq!(err.kind, JsonErrorKind::Length { expected: 3, found: 2 });
    }

    #[test]
    fn unknown_variants_and_missing_or_extra_fields_are_errors() {
        let figure = shape_of::<Figure>();
        let err = to_postcard(&json!("Square"), &figure).unwrap_err();
        assert_eq!(
            err.kind,
            JsonErrorKind::UnknownVariant {
                name: "Square".into(),
                expected: "`Empty`, `Circle`, `Segment`, `Frame`".into()
            }
        );
        // A variant with content needs it; a unit variant has none.
        assert!(matches!(
            kind_of(to_postcard(&json!("Circle"), &figure)),
            JsonErrorKind::Expected { .. }
        ));
        assert!(matches!(
            kind_of(to_postcard(&json!({"Empty": 1}), &figure)),
            JsonErrorKind::Expected { .. }
        ));
        let two_keys = json!({"Empty": null, "Circle": 1.0});
        assert!(matches!(kind_of(to_postcard(&two_keys, &figure)), JsonErrorKind::Expected { .. }));

        let frame = json!({"Frame": {"corner": {"x": 1}, "size": [1, 2]}});
        let err = to_postcard(&frame, &figure).unwrap_err();
        assert_eq!(
            (err.path.as_str(), err.kind),
            ("Frame.corner", JsonErrorKind::MissingField("y".into()))
        );
        let frame = json!({"Frame": {"corner": {"x": 1, "y": 2, "z": 3}, "size": [1, 2]}});
        let err = to_postcard(&frame, &figure).unwrap_err();
        assert_eq!(
            err.kind,
            JsonErrorKind::UnknownField { name: "z".into(), expected: "`x`, `y`".into() }
        );
    }

    #[test]
    fn map_keys_are_read_as_serde_json_reads_them() {
        let by_id = shape_of::<BTreeMap<u32, u8>>();
        for bad in ["x", "1.0", " 1", "1 ", "+1", "01", "-0", "4294967296"] {
            let err = to_postcard(&json!({ bad: 1 }), &by_id).unwrap_err();
            assert_eq!(err.path, format!("[{}]", json!(bad)), "{bad}");
        }
        let by_flag = shape_of::<BTreeMap<bool, u8>>();
        assert!(to_postcard(&json!({"yes": 1}), &by_flag).is_err());
        let by_color = shape_of::<BTreeMap<Color, u8>>();
        assert!(matches!(
            kind_of(to_postcard(&json!({"Purple": 1}), &by_color)),
            JsonErrorKind::UnknownVariant { .. }
        ));
        // Two spellings of one float key are one key twice.
        let by_float = shape_of::<BTreeMap<FloatKey, u8>>();
        let twice = json!({"1": 1, "1.0": 2});
        assert_eq!(
            kind_of(to_postcard(&twice, &by_float)),
            JsonErrorKind::DuplicateKey("1.0".into())
        );
        // Keys that serde_json cannot write as strings.
        let by_pair = shape_of::<BTreeMap<(u8, u8), u8>>();
        let bytes = postcard::to_stdvec(&BTreeMap::from([((1_u8, 2_u8), 3_u8)])).unwrap();
        assert!(serde_json::to_value(BTreeMap::from([((1_u8, 2_u8), 3_u8)])).is_err());
        assert!(matches!(
            kind_of(from_postcard(&bytes, &by_pair)),
            JsonErrorKind::UnsupportedKey(_)
        ));
        assert!(matches!(
            kind_of(to_postcard(&json!({"[1,2]": 3}), &by_pair)),
            JsonErrorKind::UnsupportedKey(_)
        ));
        let by_float = Shape::Map { key: Box::new(Shape::F64), value: Box::new(Shape::Unit) };
        let nan = [1, 0, 0, 0, 0, 0, 0, 0xf8, 0x7f];
        assert!(matches!(
            kind_of(from_postcard(&nan, &by_float)),
            JsonErrorKind::UnsupportedKey(_)
        ));
    }

    #[test]
    fn trailing_and_truncated_bytes_are_errors() {
        let shape = shape_of::<Record>();
        let bytes = postcard::to_stdvec(&record()).unwrap();
        let mut longer = bytes.clone();
        longer.extend_from_slice(&[0, 0]);
        assert_eq!(kind_of(from_postcard(&longer, &shape)), JsonErrorKind::TrailingBytes(2));
        for len in 0..bytes.len() {
            let kind = kind_of(from_postcard(&bytes[..len], &shape));
            assert!(
                matches!(kind, JsonErrorKind::Truncated | JsonErrorKind::LengthExceedsInput { .. }),
                "{len}: {kind}"
            );
        }
        let err = from_postcard(&[5], &Shape::Str).unwrap_err();
        assert_eq!(err.kind, JsonErrorKind::LengthExceedsInput { declared: 5, left: 0 });
        assert_eq!(kind_of(from_postcard(&[1, 2, 3], &Shape::F32)), JsonErrorKind::Truncated);
    }

    #[test]
    fn invalid_tags_utf8_chars_and_variant_indexes_are_errors_as_in_postcard() {
        let cases: [(&[u8], Shape, JsonErrorKind); 7] = [
            (&[2], Shape::Bool, JsonErrorKind::InvalidTag { what: "bool", byte: 2 }),
            (&[0xff], Shape::Bool, JsonErrorKind::InvalidTag { what: "bool", byte: 0xff }),
            (
                &[2, 0],
                shape_of::<Option<u8>>(),
                JsonErrorKind::InvalidTag { what: "option", byte: 2 },
            ),
            (&[2, 0xc3, 0x28], Shape::Str, JsonErrorKind::InvalidUtf8),
            (&[2, b'a', b'b'], Shape::Char, JsonErrorKind::InvalidChar),
            (&[5, b'a', b'a', b'a', b'a', b'a'], Shape::Char, JsonErrorKind::InvalidChar),
            (&[4], shape_of::<Figure>(), JsonErrorKind::UnknownVariantIndex(4)),
        ];
        for (bytes, shape, kind) in cases {
            assert_eq!(kind_of(from_postcard(bytes, &shape)), kind, "{bytes:02x?}");
        }
        assert!(postcard::from_bytes::<bool>(&[2]).is_err());
        assert!(postcard::from_bytes::<Option<u8>>(&[2, 0]).is_err());
        assert!(postcard::from_bytes::<String>(&[2, 0xc3, 0x28]).is_err());
        assert!(postcard::from_bytes::<char>(&[2, b'a', b'b']).is_err());
        assert!(postcard::from_bytes::<Figure>(&[4]).is_err());
    }

    #[test]
    fn varints_are_checked_as_postcard_checks_them() {
        fn agrees<T: DeserializeOwned + Serialize>(bytes: &[u8]) {
            let ours = from_postcard(bytes, &shape_of::<T>());
            let theirs = match postcard::take_from_bytes::<T>(bytes) {
                Ok((value, [])) => serde_json::to_value(value).map_err(|err| err.to_string()),
                Ok((_, rest)) => Err(format!("{} trailing", rest.len())),
                Err(err) => Err(err.to_string()),
            };
            assert_eq!(ours.is_ok(), theirs.is_ok(), "{bytes:02x?}: {ours:?} vs {theirs:?}");
            if let (Ok(ours), Ok(theirs)) = (ours, theirs) {
                assert_eq!(ours, theirs, "{bytes:02x?}");
            }
        }
        // Longest valid encodings, one bit too many, one byte too many.
        agrees::<u16>(&[0xff, 0xff, 0x03]);
        agrees::<u16>(&[0xff, 0xff, 0x04]);
        agrees::<u16>(&[0x80, 0x80, 0x80, 0x00]);
        agrees::<i16>(&[0xff, 0xff, 0x03]);
        agrees::<u32>(&[0xff, 0xff, 0xff, 0xff, 0x0f]);
        agrees::<u32>(&[0xff, 0xff, 0xff, 0xff, 0x10]);
        agrees::<u64>(&[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01]);
        agrees::<u64>(&[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02]);
        agrees::<u64>(&[0x80; 11]);
        // 128-bit integers beyond 64 bits fit no JSON number, but fit map keys.
        let key = |varint: &[u8]| [&[1], varint].concat();
        agrees::<BTreeMap<i128, ()>>(&key(&[[0xfe].as_slice(), &[0xff; 17], &[0x03]].concat()));
        agrees::<BTreeMap<i128, ()>>(&key(&[[0xff].as_slice(), &[0xff; 17], &[0x03]].concat()));
        agrees::<BTreeMap<u128, ()>>(&key(&[[0xff].as_slice(), &[0xff; 17], &[0x03]].concat()));
        agrees::<BTreeMap<u128, ()>>(&key(&[[0xff].as_slice(), &[0xff; 17], &[0x04]].concat()));
        agrees::<BTreeMap<u128, ()>>(&key(&[0x80; 20]));
        agrees::<u128>(&[0xff, 0xff, 0x03]);
        // Postcard reads padded (non-minimal) encodings; so does this module.
        agrees::<u32>(&[0x81, 0x80, 0x00]);
        agrees::<Vec<u8>>(&[0x82, 0x00, 1, 2]);
        let err = from_postcard(&[0xff, 0xff, 0x04], &Shape::U16).unwrap_err();
        assert_eq!(err.kind, JsonErrorKind::InvalidVarint("u16"));
        // A u128 beyond u64 decodes but fits no JSON number, as with serde_json::to_value.
        let big = postcard::to_stdvec(&(u128::from(u64::MAX) + 1)).unwrap();
        assert!(serde_json::to_value(u128::from(u64::MAX) + 1).is_err());
        assert!(matches!(
            kind_of(from_postcard(&big, &Shape::U128)),
            JsonErrorKind::TooLargeForJson { .. }
        ));
    }

    #[test]
    fn absurd_lengths_fail_without_allocating() {
        let huge = postcard::to_stdvec(&u64::MAX).unwrap();
        for shape in
            [shape_of::<Vec<u64>>(), shape_of::<BTreeMap<u8, u8>>(), Shape::Str, Shape::Bytes]
        {
            let kind = kind_of(from_postcard(&huge, &shape));
            assert_eq!(kind, JsonErrorKind::LengthExceedsInput { declared: u64::MAX, left: 0 });
        }
        // Units take no bytes: their count is limited instead, by the input's length.
        let units = shape_of::<Vec<()>>();
        let most = postcard::to_stdvec(&vec![(); 1 << 16]).unwrap();
        let limit = MAX_EMPTY_VALUES + EMPTY_VALUES_PER_BYTE * most.len() as u64;
        assert_eq!(
            from_postcard(&most, &units).map(|v| v.as_array().map(Vec::len)),
            Ok(Some(1 << 16))
        );
        let over = postcard::to_stdvec(&(limit + 1)).unwrap();
        assert_eq!(
            kind_of(from_postcard(&over, &units)),
            JsonErrorKind::TooManyEmptyValues { limit }
        );
        assert!(from_postcard(&huge, &units).is_err());
        // Long maps to units are fine: each key takes a byte at least.
        let set: BTreeMap<u32, Marker> = (0..100_000).map(|key| (key, Marker)).collect();
        check(&set);
        // Nested: each outer item takes a byte, each holds many units; the limit is for all.
        let nested = shape_of::<Vec<Vec<()>>>();
        let mut bytes = postcard::to_stdvec(&200_u64).unwrap();
        for _ in 0..200 {
            bytes.extend(postcard::to_stdvec(&60_000_u64).unwrap());
        }
        assert!(matches!(
            kind_of(from_postcard(&bytes, &nested)),
            JsonErrorKind::TooManyEmptyValues { .. }
        ));
        // A hostile shape: an array of a billion billion items.
        let array = |item: Shape| Shape::Array { item: Box::new(item), len: u64::MAX };
        assert!(matches!(
            kind_of(from_postcard(&[], &array(Shape::U64))),
            JsonErrorKind::LengthExceedsInput { .. }
        ));
        assert!(matches!(
            kind_of(from_postcard(&[], &array(Shape::Unit))),
            JsonErrorKind::TooManyEmptyValues { .. }
        ));
        let empty_tuples = array(Shape::Tuple(Vec::new()));
        assert!(matches!(
            kind_of(from_postcard(&[], &empty_tuples)),
            JsonErrorKind::TooManyEmptyValues { .. }
        ));
    }

    #[test]
    fn nesting_beyond_the_limit_is_an_error_not_a_stack_overflow() {
        let shape = shape_of::<Tree>();
        let deep_enough = tree(MAX_DEPTH - 1);
        check_with(&deep_enough, &shape);
        let too_deep = postcard::to_stdvec(&tree(MAX_DEPTH)).unwrap();
        assert_eq!(
            kind_of(from_postcard(&too_deep, &shape)),
            JsonErrorKind::TooDeep { limit: MAX_DEPTH }
        );
        // Hostile bytes: Node, Node, Node, … without end.
        assert_eq!(
            kind_of(from_postcard(&[1; 100_000], &shape)),
            JsonErrorKind::TooDeep { limit: MAX_DEPTH }
        );
        let json =
            (0..300).fold(json!({"Leaf": 0}), |inner, _| json!({"Node": [inner, {"Leaf": 1}]}));
        assert_eq!(
            kind_of(to_postcard(&json, &shape)),
            JsonErrorKind::TooDeep { limit: MAX_DEPTH }
        );
        let json = (0..300).fold(json!([]), |inner, _| json!([inner]));
        let mut shape = Shape::Seq(Box::new(Shape::U8));
        for _ in 0..300 {
            shape = Shape::Seq(Box::new(shape));
        }
        assert_eq!(
            kind_of(to_postcard(&json, &shape)),
            JsonErrorKind::TooDeep { limit: MAX_DEPTH }
        );
        // A hostile shape that recurses without taking bytes.
        let endless = Shape::Named {
            name: "Loop".into(),
            body: Box::new(Container::NewType(Shape::Recursive("Loop".into()))),
        };
        assert_eq!(
            kind_of(from_postcard(&[], &endless)),
            JsonErrorKind::TooDeep { limit: MAX_DEPTH }
        );
        assert_eq!(
            kind_of(to_postcard(&json!(null), &endless)),
            JsonErrorKind::TooDeep { limit: MAX_DEPTH }
        );
        let stray = Shape::Recursive("Nowhere".into());
        assert_eq!(
            kind_of(from_postcard(&[], &stray)),
            JsonErrorKind::UnresolvedRecursive("Nowhere".into())
        );
    }

    fn point() -> impl Strategy<Value = Point> {
        (any::<i32>(), any::<i32>()).prop_map(|(x, y)| Point { x, y })
    }

    fn finite_f32() -> impl Strategy<Value = f32> {
        any::<f32>().prop_filter("finite", |x| x.is_finite())
    }

    fn figure() -> impl Strategy<Value = Figure> {
        prop_oneof![
            Just(Figure::Empty),
            finite_f32().prop_map(Figure::Circle),
            (point(), point()).prop_map(|(a, b)| Figure::Segment(a, b)),
            (point(), any::<(u16, u16)>())
                .prop_map(|(corner, size)| Figure::Frame { corner, size }),
        ]
    }

    fn tree_strategy() -> impl Strategy<Value = Tree> {
        any::<u32>().prop_map(Tree::Leaf).prop_recursive(5, 32, 2, |inner| {
            (inner.clone(), inner).prop_map(|(a, b)| Tree::Node(Box::new(a), Box::new(b)))
        })
    }

    fn record_strategy() -> impl Strategy<Value = Record> {
        use proptest::collection::{btree_map, vec};
        let head = (
            any::<u64>(),
            any::<String>(),
            any::<char>(),
            any::<Option<i32>>(),
            vec(figure(), 0..4),
            btree_map(any::<String>(), any::<i16>(), 0..4),
        );
        let middle = (
            btree_map(any::<u32>(), Just(Marker), 0..6),
            any::<[u8; 3]>(),
            any::<(i64, bool, char)>(),
            any::<f64>().prop_filter("finite", |x| x.is_finite()),
            (any::<u8>(), any::<String>()),
            any::<u64>(),
        );
        let tail = (any::<i64>(), any::<i8>(), tree_strategy());
        (head, middle, tail).prop_map(
            |(
                (id, name, letter, score, figures, by_name),
                (by_id, grid, mixed, meters, (byte, text), big),
                (small, tiny, tree),
            )| Record {
                id,
                name,
                letter,
                score,
                figures,
                by_name,
                by_id,
                grid,
                mixed,
                meters: Meters(meters),
                pair: Pair(byte, text),
                big: u128::from(big),
                small: i128::from(small),
                tiny,
                tree,
                nothing: (),
            },
        )
    }

    proptest! {
        #[test]
        fn random_records_match_serde_json_and_postcard(record in record_strategy()) {
            check(&record);
        }

        #[test]
        fn random_float_keyed_maps_match(map in proptest::collection::btree_map(
            finite_f32().prop_map(FloatKey), any::<i8>(), 0..8)
        ) {
            check(&map);
        }

        #[test]
        fn damaged_bytes_decode_exactly_when_postcard_decodes_them(
            figures in proptest::collection::vec(figure(), 0..4),
            at in any::<usize>(),
            byte in any::<u8>(),
            cut in any::<bool>(),
        ) {
            type Damaged = (Vec<Figure>, Option<char>, String);
            let shape = shape_of::<Damaged>();
            let mut bytes = postcard::to_stdvec(&(figures, Some('é'), "end")).unwrap();
            let at = at % bytes.len();
            if cut {
                bytes.truncate(at);
            } else {
                bytes[at] = byte;
            }
            let ours = from_postcard(&bytes, &shape).ok();
            let theirs = match postcard::take_from_bytes::<Damaged>(&bytes) {
                Ok((value, [])) => serde_json::to_value(value).ok(),
                _ => None,
            };
            prop_assert_eq!(ours, theirs);
        }

        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = from_postcard(&bytes, &shape_of::<Record>());
        }
    }
}
