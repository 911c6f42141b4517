//! JSON in, postcard out: [`Encoder`] walks a JSON value and its shape together.

use serde_json::{Map, Value};

use super::error::{describe, items, items_u64, names, shape_word};
use super::integer::{write_integer, write_varint, IntShape, IntValue};
use super::trail::{Step, Trail};
use super::{JsonError, JsonErrorKind};
use crate::shape::{Container, Field, Shape, Variant, VariantBody};

/// JSON in, postcard out.
pub(super) struct Encoder<'s> {
    pub(super) out: Vec<u8>,
    pub(super) trail: Trail<'s>,
}

impl<'s> Encoder<'s> {
    /// Encodes a method's arguments from an array in order or an object by name.
    pub(super) fn args(&mut self, value: &Value, args: &'s [Field]) -> Step<()> {
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
    pub(super) fn value(&mut self, value: &Value, shape: &'s Shape) -> Step<()> {
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
                    self.trail.nest()?;
                    self.value(value, inner)?;
                    self.trail.unnest();
                    Ok(())
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

    pub(super) fn variant_named(&self, variants: &'s [Variant], name: &str) -> Step<&'s Variant> {
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

    fn integer(&mut self, value: &Value, int: IntShape) -> Step<()> {
        let integer = self.integer_value(value, int)?;
        write_integer(&mut self.out, integer, int);
        Ok(())
    }

    /// A JSON integer within `int`'s range (serde_json numbers hold at most 64 bits).
    pub(super) fn integer_value(&self, value: &Value, int: IntShape) -> Step<IntValue> {
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

    pub(super) fn float(&self, value: &Value, name: &str) -> Step<f64> {
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

    pub(super) fn expected(&self, expected: impl Into<String>, found: &Value) -> Box<JsonError> {
        self.trail
            .error(JsonErrorKind::Expected { expected: expected.into(), found: describe(found) })
    }

    fn expected_variant(&self, name: &str, found: &Value) -> Box<JsonError> {
        self.expected(format!("a variant of {name}: \"Name\" or {{\"Name\": content}}"), found)
    }

    pub(super) fn unsupported_key(&self, shape: &Shape) -> Box<JsonError> {
        self.trail.error(JsonErrorKind::UnsupportedKey(shape_word(shape)))
    }
}

fn write_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    write_varint(out, bytes.len() as u128);
    out.extend_from_slice(bytes);
}
