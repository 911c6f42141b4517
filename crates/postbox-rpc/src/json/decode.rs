//! Postcard in, JSON out: [`Decoder`] walks untrusted bytes and their shape together.

use serde_json::{Map, Value};

use super::error::shape_word;
use super::integer::{IntShape, IntValue};
use super::trail::{Step, Trail};
use super::{JsonError, JsonErrorKind};
use crate::shape::{Container, Field, Shape, Variant, VariantBody};

/// Postcard in, JSON out.
pub(super) struct Decoder<'b, 's> {
    pub(super) input: &'b [u8],
    pub(super) trail: Trail<'s>,
    /// How many values that take no bytes the input may decode to ([`MAX_EMPTY_VALUES`]).
    ///
    /// [`MAX_EMPTY_VALUES`]: super::MAX_EMPTY_VALUES
    pub(super) empty_limit: u64,
    /// How many more of them may be decoded.
    pub(super) empty_left: u64,
}

impl<'b, 's> Decoder<'b, 's> {
    /// Decodes a value of `shape`. Composite shapes are walked here, scalars in
    /// [`Decoder::scalar`], which keeps the frames of this recursion small.
    pub(super) fn value(&mut self, shape: &'s Shape) -> Step<Value> {
        let shape = match shape {
            Shape::Recursive(name) => self.trail.resolve(name)?,
            other => other,
        };
        match shape {
            // An option counts as a level: a described shape may nest options in a cycle.
            Shape::Option(inner) => {
                if self.flag("option")? {
                    self.trail.nest()?;
                    let value = self.value(inner)?;
                    self.trail.unnest();
                    Ok(value)
                } else {
                    Ok(Value::Null)
                }
            }
            Shape::Seq(item) => {
                self.trail.nest()?;
                let count = self.varint(64, "a length")? as u64;
                let count = self.reserve(count, item.takes_no_bytes())?;
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
                let count = self.reserve(*len, item.takes_no_bytes())?;
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

    pub(super) fn variant(&mut self, variants: &'s [Variant]) -> Step<&'s Variant> {
        let index = self.varint(32, "a variant index")? as u32;
        variants
            .iter()
            .find(|v| v.index == index)
            .ok_or_else(|| self.trail.error(JsonErrorKind::UnknownVariantIndex(index)))
    }

    fn map(&mut self, key: &'s Shape, item: &'s Shape) -> Step<Value> {
        self.trail.nest()?;
        let count = self.varint(64, "a length")? as u64;
        let count = self.reserve(count, key.takes_no_bytes() && item.takes_no_bytes())?;
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

    /// Checks a declared count of items against the bytes left (each item takes one at
    /// least) or, when the items take no bytes, against what is left of [`MAX_EMPTY_VALUES`]
    /// (each spends from it as it is decoded); returns it as a `usize`.
    ///
    /// [`MAX_EMPTY_VALUES`]: super::MAX_EMPTY_VALUES
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
    ///
    /// [`MAX_EMPTY_VALUES`]: super::MAX_EMPTY_VALUES
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

    pub(super) fn integer(&mut self, int: IntShape) -> Step<IntValue> {
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

    pub(super) fn flag(&mut self, what: &'static str) -> Step<bool> {
        match self.byte()? {
            0 => Ok(false),
            1 => Ok(true),
            byte => Err(self.trail.error(JsonErrorKind::InvalidTag { what, byte })),
        }
    }

    pub(super) fn char(&mut self) -> Step<char> {
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

    pub(super) fn str(&mut self) -> Step<&'b str> {
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

    pub(super) fn fixed<const N: usize>(&mut self) -> Step<[u8; N]> {
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

    pub(super) fn unsupported_key(&self, shape: &Shape) -> Box<JsonError> {
        self.trail.error(JsonErrorKind::UnsupportedKey(shape_word(shape)))
    }
}
