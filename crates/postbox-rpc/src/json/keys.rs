//! Map keys, which JSON holds as strings: read and written as serde_json does, sorted as a
//! `BTreeMap` sorts them.

use serde_json::Value;

use super::decode::Decoder;
use super::encode::Encoder;
use super::integer::{write_integer, write_varint, IntShape, IntValue};
use super::trail::Step;
use super::JsonErrorKind;
use crate::shape::{Container, Shape, VariantBody};

impl<'s> Encoder<'s> {
    /// Encodes an object key read as `shape`, as serde_json reads keys, and returns its order.
    pub(super) fn key(&mut self, text: &str, shape: &'s Shape) -> Step<KeyOrder> {
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
}

impl<'b, 's> Decoder<'b, 's> {
    /// A map key as serde_json writes it: strings as they are, numbers and bools as text,
    /// unit variants by name, newtypes as their inner value; nothing else.
    pub(super) fn key(&mut self, shape: &'s Shape) -> Step<String> {
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
}

/// How map keys of one shape sort: the order their Rust types have (numbers by value, strings
/// by bytes, unit variants by index), so a `BTreeMap` gets the bytes postcard gives it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum KeyOrder {
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

fn key_value(text: &str) -> Value {
    Value::String(text.to_owned())
}
