//! Service schemas: the structure of every method's arguments, result and error, traced from
//! their serde implementations, and a hash of each method's structure.
//!
//! A client and a server compare hashes at bind time (and the server again on every call), so a
//! client built against another definition of a method — another argument, a field changed in
//! a struct it passes, a reordered enum — fails with a type mismatch naming the method instead
//! of decoding garbage. Names of types do not count, only their shape as serde sees it: the
//! bytes postcard puts on the wire.

use std::collections::{BTreeMap, BTreeSet};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_reflection::{ContainerFormat, Format, FormatHolder, Samples, Tracer, TracerConfig};

use crate::shape::{count, shape_bytes, shape_of, text, Field, Shape};

/// Version of the schema format itself (the describe answer).
pub const SCHEMA_VERSION: u32 = 1;

/// What a service offers: its name and methods.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceSchema {
    /// [`SCHEMA_VERSION`] of the build that made it.
    pub version: u32,
    /// The service's trait name.
    pub name: String,
    /// Its methods, in declaration order.
    pub methods: Vec<MethodSchema>,
}

/// One method: its signature as serde shapes, and their hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MethodSchema {
    /// The method's name.
    pub name: String,
    /// Whether callers wait for an answer.
    pub kind: MethodKind,
    /// The arguments, in order.
    pub args: Vec<Field>,
    /// The result's shape (of `T` for a method returning `Result<T, E>`).
    pub ok: Shape,
    /// The application error's shape (`E`), for methods returning `Result<T, E>`.
    pub err: Option<Shape>,
    /// Hash of everything above but the names of types ([`MethodSchema::compute_hash`]).
    pub hash: u64,
}

/// Whether callers of a method wait for an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum MethodKind {
    /// A call: the caller waits for the result.
    Call,
    /// One-way: the caller does not wait and gets no result.
    Oneway,
}

/// The formats of a method's argument tuple `A`, result `T` and (if `fallible`) error `E`, and
/// the named types they use, every enum with all its variants.
///
/// The tracer explores one variant of an enum each time it meets it (by deserializing), and
/// completes only the enum at the top of a trace by itself. So the three types are traced
/// again and again, each time telling the tracer to go on with the enums still incomplete
/// (whose names its error gives), until every enum is complete. An enum met only inside a
/// later variant of another enum can stay incomplete: that is an error naming it.
#[allow(clippy::type_complexity)]
fn trace<A, T, E>(
    fallible: bool,
) -> Result<(Format, Format, Option<Format>, BTreeMap<String, ContainerFormat>), String>
where
    A: DeserializeOwned,
    T: DeserializeOwned,
    E: DeserializeOwned,
{
    let samples = Samples::new();
    let mut enums: BTreeSet<String> = BTreeSet::new();
    for _ in 0..TRACE_ROUNDS {
        let mut tracer = Tracer::new(TracerConfig::default());
        let mut formats = None;
        for _ in 0..TRACE_PASSES {
            let args = tracer.trace_type_once::<A>(&samples).map_err(|e| e.to_string())?.0;
            let ok = tracer.trace_type_once::<T>(&samples).map_err(|e| e.to_string())?.0;
            let err = if fallible {
                Some(tracer.trace_type_once::<E>(&samples).map_err(|e| e.to_string())?.0)
            } else {
                None
            };
            formats.get_or_insert((args, ok, err));
            // Every name must be asked (no short cut): asking is what lets it go on.
            let going_on =
                enums.iter().filter(|name| tracer.check_incomplete_enum(name).is_some()).count();
            if going_on == 0 {
                break;
            }
        }
        let Some((args, ok, err)) = formats else { break };
        match tracer.registry() {
            Ok(types) => {
                // A variant whose index was never found keeps a provisional one (near
                // u32::MAX): that enum was not met often enough.
                let partial: Vec<&String> = types
                    .iter()
                    .filter(|(_, c)| {
                        matches!(c, ContainerFormat::Enum(v) if v.keys().any(|&i| i > u32::MAX / 2))
                    })
                    .map(|(name, _)| name)
                    .collect();
                if partial.is_empty() {
                    return Ok((args, ok, err, types));
                }
                return Err(format!(
                    "enum {} is met only inside a later variant of another enum, and its \
                     variants could not all be traced",
                    partial.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
                ));
            }
            Err(serde_reflection::Error::MissingVariants(names)) => {
                let before = enums.len();
                enums.extend(names.iter().cloned());
                if enums.len() == before {
                    return Err(format!(
                        "the variants of enum {} could not all be traced",
                        names.join(", ")
                    ));
                }
            }
            Err(other) => return Err(other.to_string()),
        }
    }
    Err("tracing did not finish".into())
}

/// Rounds of tracing, each discovering more incomplete enums by name.
const TRACE_ROUNDS: usize = 16;
/// Traces per round (each enum met explores one more variant per trace).
const TRACE_PASSES: usize = 1024;

/// A type whose serde shape could not be traced (a hand-written `Deserialize` that validates
/// what it reads, for example).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("method {method}: cannot trace the shape of its types: {reason}")]
pub struct SchemaError {
    /// The method.
    pub method: String,
    /// What the tracer said.
    pub reason: String,
}

/// Where a client's idea of a service differs from the server's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Mismatch {
    /// The server serves another service.
    #[error("expected service {expected}, the server serves {found}")]
    Service {
        /// The client's service.
        expected: String,
        /// The server's.
        found: String,
    },
    /// The server has no such method.
    #[error("method {method}: the server has no method of that name")]
    Missing {
        /// The method.
        method: String,
    },
    /// The method exists with another signature.
    #[error("method {method}: {what} differ between client and server")]
    Signature {
        /// The method.
        method: String,
        /// What differs first: "kind", "arguments", "result" or "error type".
        what: &'static str,
    },
}

impl Mismatch {
    /// The method concerned, if any.
    #[must_use]
    pub fn method(&self) -> Option<&str> {
        match self {
            Self::Service { .. } => None,
            Self::Missing { method } | Self::Signature { method, .. } => Some(method),
        }
    }
}

impl ServiceSchema {
    /// The method named `name`.
    #[must_use]
    pub fn method(&self, name: &str) -> Option<&MethodSchema> {
        self.methods.iter().find(|m| m.name == name)
    }

    /// Checks that `server` offers every method of `self` (the client's view) with the same
    /// shape. Methods only the server has are fine.
    ///
    /// # Errors
    /// The first [`Mismatch`] found, in the client's method order.
    pub fn check_against(&self, server: &ServiceSchema) -> Result<(), Mismatch> {
        if self.name != server.name {
            return Err(Mismatch::Service {
                expected: self.name.clone(),
                found: server.name.clone(),
            });
        }
        for mine in &self.methods {
            let Some(theirs) = server.method(&mine.name) else {
                return Err(Mismatch::Missing { method: mine.name.clone() });
            };
            if mine.hash != theirs.hash {
                return Err(Mismatch::Signature {
                    method: mine.name.clone(),
                    what: mine.first_difference(theirs),
                });
            }
        }
        Ok(())
    }
}

impl MethodSchema {
    /// The hash of the method: FNV-1a (64 bits) over a canonical encoding of its name, kind,
    /// argument names and shapes, result and error shapes, with field and variant names but
    /// without type names, so that renaming a type changes nothing and changing one does.
    #[must_use]
    pub fn compute_hash(&self) -> u64 {
        let mut out = Vec::new();
        text(&mut out, &self.name);
        out.push(match self.kind {
            MethodKind::Call => 0,
            MethodKind::Oneway => 1,
        });
        self.args_bytes(&mut out);
        shape_bytes(&self.ok, &mut Vec::new(), &mut out);
        self.err_bytes(&mut out);
        fnv1a(&out)
    }

    /// The method as a line of Rust: `add(a: i64, b: i64) -> Result<i64, CalcError>`, with
    /// `#[oneway]` in front of a one-way method.
    #[must_use]
    pub fn signature(&self) -> String {
        let args: Vec<String> =
            self.args.iter().map(|a| format!("{}: {}", a.name, a.shape)).collect();
        let oneway = if self.kind == MethodKind::Oneway { "#[oneway] " } else { "" };
        let result = match (&self.err, &self.ok) {
            (Some(err), ok) => format!(" -> Result<{ok}, {err}>"),
            (None, Shape::Unit) => String::new(),
            (None, ok) => format!(" -> {ok}"),
        };
        format!("{oneway}{}({}){result}", self.name, args.join(", "))
    }

    fn args_bytes(&self, out: &mut Vec<u8>) {
        count(out, self.args.len());
        for arg in &self.args {
            text(out, &arg.name);
            shape_bytes(&arg.shape, &mut Vec::new(), out);
        }
    }

    fn err_bytes(&self, out: &mut Vec<u8>) {
        match &self.err {
            None => out.push(0),
            Some(err) => {
                out.push(1);
                shape_bytes(err, &mut Vec::new(), out);
            }
        }
    }

    fn first_difference(&self, other: &MethodSchema) -> &'static str {
        let bytes = |f: &dyn Fn(&mut Vec<u8>)| {
            let mut out = Vec::new();
            f(&mut out);
            out
        };
        let ok = |m: &MethodSchema, out: &mut Vec<u8>| shape_bytes(&m.ok, &mut Vec::new(), out);
        if self.kind != other.kind {
            "kind"
        } else if bytes(&|o| self.args_bytes(o)) != bytes(&|o| other.args_bytes(o)) {
            "arguments"
        } else if bytes(&|o| ok(self, o)) != bytes(&|o| ok(other, o)) {
            "result"
        } else {
            "error type"
        }
    }
}

/// Builds a [`ServiceSchema`] method by method (the `#[postbox::service]` macro calls it).
#[derive(Debug)]
pub struct SchemaBuilder {
    schema: ServiceSchema,
}

impl SchemaBuilder {
    /// A schema for the service `name`.
    #[must_use]
    pub fn new(name: &str) -> Self {
        Self {
            schema: ServiceSchema {
                version: SCHEMA_VERSION,
                name: name.to_owned(),
                methods: Vec::new(),
            },
        }
    }

    /// Adds a method whose arguments are the tuple `A` (named `arg_names`), whose result is
    /// `T`, and whose application error is `E` when `fallible`.
    ///
    /// # Errors
    /// [`SchemaError`] when a type's shape cannot be traced.
    pub fn method<A, T, E>(
        mut self,
        name: &str,
        kind: MethodKind,
        arg_names: &[&str],
        fallible: bool,
    ) -> Result<Self, SchemaError>
    where
        A: DeserializeOwned,
        T: DeserializeOwned,
        E: DeserializeOwned,
    {
        let failed = |reason: String| SchemaError { method: name.to_owned(), reason };
        let traced = |e: serde_reflection::Error| failed(e.to_string());
        let (mut args, mut ok, mut err, types) =
            trace::<A, T, E>(fallible).map_err(|e| failed(e.to_string()))?;
        for format in std::iter::once(&mut args).chain(Some(&mut ok)).chain(err.as_mut()) {
            format.normalize().map_err(traced)?;
        }
        let shape =
            |format: &Format| shape_of(format, &types, &mut BTreeSet::new()).map_err(failed);
        let arg_shapes = match shape(&args)? {
            Shape::Tuple(shapes) if shapes.len() == arg_names.len() => shapes,
            // The tracer writes a tuple of one type as an array (postcard encodes both alike).
            Shape::Array { item, len } if len == arg_names.len() as u64 => {
                vec![*item; arg_names.len()]
            }
            Shape::Unit if arg_names.is_empty() => Vec::new(),
            single if arg_names.len() == 1 => vec![single],
            other => return Err(failed(format!("arguments traced as {other:?}, not a tuple"))),
        };
        let args = arg_names
            .iter()
            .zip(arg_shapes)
            .map(|(name, shape)| Field { name: (*name).to_owned(), shape })
            .collect();
        let err = err.as_ref().map(shape).transpose()?;
        let mut method =
            MethodSchema { name: name.to_owned(), kind, args, ok: shape(&ok)?, err, hash: 0 };
        method.hash = method.compute_hash();
        self.schema.methods.push(method);
        Ok(self)
    }

    /// The schema.
    #[must_use]
    pub fn finish(self) -> ServiceSchema {
        self.schema
    }
}

/// FNV-1a, 64 bits: stable across builds and platforms (unlike `std`'s hasher).
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325_u64, |hash, &byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    mod v1 {
        #[derive(serde::Serialize, serde::Deserialize)]
        pub(super) struct Point {
            pub(super) x: i32,
            pub(super) y: i32,
        }
    }

    mod v2 {
        #[derive(serde::Serialize, serde::Deserialize)]
        pub(super) struct Point {
            pub(super) x: i64,
            pub(super) y: i32,
        }

        #[derive(serde::Serialize, serde::Deserialize)]
        pub(super) struct Spot {
            pub(super) x: i32,
            pub(super) y: i32,
        }
    }

    #[derive(serde::Serialize, serde::Deserialize)]
    enum Tree {
        Leaf(u8),
        Node(Box<Tree>, Box<Tree>),
    }

    fn one(
        name: &str,
        build: impl FnOnce(SchemaBuilder) -> Result<SchemaBuilder, SchemaError>,
    ) -> ServiceSchema {
        build(SchemaBuilder::new(name)).unwrap().finish()
    }

    #[test]
    fn the_same_shapes_match_and_a_renamed_type_still_does() {
        let a = one("Geo", |b| {
            b.method::<(v1::Point, String), u64, String>(
                "put",
                MethodKind::Call,
                &["at", "label"],
                true,
            )
        });
        let b = one("Geo", |b| {
            b.method::<(v2::Spot, String), u64, String>(
                "put",
                MethodKind::Call,
                &["at", "label"],
                true,
            )
        });
        assert_eq!(a.check_against(&b), Ok(()));
        assert_ne!(a.methods[0].args, b.methods[0].args, "the names differ, the shapes do not");
    }

    #[test]
    fn a_changed_field_a_missing_method_or_another_service_is_a_named_mismatch() {
        let client = one("Geo", |b| {
            b.method::<(v1::Point,), (), ()>("put", MethodKind::Call, &["at"], false)?
                .method::<(), u32, ()>("count", MethodKind::Call, &[], false)
        });
        let changed = one("Geo", |b| {
            b.method::<(v2::Point,), (), ()>("put", MethodKind::Call, &["at"], false)?
                .method::<(), u32, ()>("count", MethodKind::Call, &[], false)
        });
        assert_eq!(
            client.check_against(&changed),
            Err(Mismatch::Signature { method: "put".into(), what: "arguments" })
        );
        let fewer = one("Geo", |b| {
            b.method::<(v1::Point,), (), ()>("put", MethodKind::Call, &["at"], false)
        });
        let err = client.check_against(&fewer).unwrap_err();
        assert_eq!(err.method(), Some("count"));
        let oneway = one("Geo", |b| {
            b.method::<(v1::Point,), (), ()>("put", MethodKind::Oneway, &["at"], false)?
                .method::<(), u32, ()>("count", MethodKind::Call, &[], false)
        });
        assert_eq!(
            client.check_against(&oneway),
            Err(Mismatch::Signature { method: "put".into(), what: "kind" })
        );
        let result = one("Geo", |b| {
            b.method::<(v1::Point,), (), ()>("put", MethodKind::Call, &["at"], false)?
                .method::<(), u64, ()>("count", MethodKind::Call, &[], false)
        });
        assert_eq!(
            client.check_against(&result),
            Err(Mismatch::Signature { method: "count".into(), what: "result" })
        );
        let other = one("Calc", Ok);
        assert!(matches!(client.check_against(&other), Err(Mismatch::Service { .. })));
        // More methods on the server are fine.
        assert_eq!(fewer.check_against(&client), Ok(()));
    }

    #[derive(serde::Serialize, serde::Deserialize)]
    enum Color {
        Red,
        Green,
        Blue(u8),
        Custom { r: u8, g: u8, b: u8 },
    }

    #[derive(serde::Serialize, serde::Deserialize)]
    struct Pen {
        color: Color,
        width: Option<Color>,
    }

    #[derive(serde::Serialize, serde::Deserialize)]
    enum Command {
        Draw(Color),
        Stop,
    }

    #[derive(serde::Serialize, serde::Deserialize)]
    enum Late {
        Nothing,
        Paint(Color),
    }

    #[test]
    fn an_enum_met_only_inside_a_later_variant_of_another_is_a_named_error() {
        // A known limit of tracing by deserialization: `Paint(Color)` is met twice, too few
        // times to learn Color's four variants. The error says which enum, at bind time.
        let error = SchemaBuilder::new("L")
            .method::<(Late,), (), ()>("late", MethodKind::Call, &["l"], false)
            .unwrap_err();
        assert_eq!(error.method, "late");
        assert!(error.reason.contains("enum Color"), "{}", error.reason);
    }

    #[test]
    fn enums_anywhere_in_arguments_results_and_errors_are_traced_whole() {
        let schema = one("Paint", |b| {
            b.method::<(Color,), Vec<Color>, Color>("mix", MethodKind::Call, &["c"], true)?
                .method::<(Pen, Option<Color>, (Color, u8)), (), ()>(
                    "draw",
                    MethodKind::Call,
                    &["pen", "fill", "pair"],
                    false,
                )?
                .method::<(Vec<Command>,), Command, ()>("run", MethodKind::Call, &["script"], false)
        });
        let variants = |shape: &Shape| match shape {
            Shape::Named { body, .. } => match &**body {
                crate::Container::Enum(v) => {
                    v.iter().map(|v| (v.index, v.name.clone())).collect::<Vec<_>>()
                }
                _ => Vec::new(),
            },
            _ => Vec::new(),
        };
        let all = vec![
            (0, "Red".to_owned()),
            (1, "Green".to_owned()),
            (2, "Blue".to_owned()),
            (3, "Custom".to_owned()),
        ];
        assert_eq!(variants(&schema.methods[0].args[0].shape), all);
        let Shape::Seq(item) = &schema.methods[0].ok else { panic!("a Vec") };
        assert_eq!(variants(item), all);
        let Shape::Option(fill) = &schema.methods[1].args[1].shape else { panic!("an Option") };
        assert_eq!(variants(fill), all);
        let Shape::Named { body, .. } = &schema.methods[2].ok else { panic!("an enum") };
        let crate::Container::Enum(command) = &**body else { panic!("an enum") };
        let crate::VariantBody::NewType(inner) = &command[0].body else { panic!("Draw(Color)") };
        assert_eq!(variants(inner), all, "an enum inside the first variant of another");
    }

    #[test]
    fn a_method_prints_as_its_signature() {
        let schema = one("Geo", |b| {
            b.method::<(v1::Point, Vec<Option<String>>), u64, String>(
                "put",
                MethodKind::Call,
                &["at", "labels"],
                true,
            )?
            .method::<(u8, u8), (), ()>("note", MethodKind::Oneway, &["a", "b"], false)?
            .method::<(), (bool,), ()>("one", MethodKind::Call, &[], false)
        });
        let lines: Vec<String> = schema.methods.iter().map(MethodSchema::signature).collect();
        assert_eq!(
            lines,
            [
                "put(at: Point, labels: Vec<Option<String>>) -> Result<u64, String>",
                "#[oneway] note(a: u8, b: u8)",
                "one() -> (bool,)",
            ]
        );
    }

    #[test]
    fn recursive_types_and_every_argument_count_trace_and_hash() {
        let schema = one("T", |b| {
            b.method::<(Tree,), Tree, ()>("mirror", MethodKind::Call, &["tree"], false)?
                .method::<(), (), ()>("ping", MethodKind::Call, &[], false)?
                .method::<(u8, u8), (), ()>("same", MethodKind::Call, &["a", "b"], false)?
                .method::<(u8, u16, u32), Option<Vec<u8>>, String>(
                    "three",
                    MethodKind::Oneway,
                    &["a", "b", "c"],
                    true,
                )
        });
        assert_eq!(schema.methods.len(), 4);
        assert_eq!(schema.methods[2].args.len(), 2, "a tuple of one type is still two arguments");
        assert_eq!(schema.methods[3].args.len(), 3);
        let hashes: BTreeSet<u64> = schema.methods.iter().map(|m| m.hash).collect();
        assert_eq!(hashes.len(), 4);
        // The schema travels as postcard and comes back equal (hashes included).
        let bytes = postcard::to_stdvec(&schema).unwrap();
        let back: ServiceSchema = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(back, schema);
        assert_eq!(back.methods[0].compute_hash(), schema.methods[0].hash);
    }
}
