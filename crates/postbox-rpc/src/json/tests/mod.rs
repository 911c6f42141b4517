//! Tests of the JSON conversions: the fixtures they share here, the cases by concern below.

mod decode_errors;
mod encode_errors;
mod properties;
mod roundtrip;

use std::collections::{BTreeMap, BTreeSet};

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
    (0..depth).fold(Tree::Leaf(7), |inner, _| Tree::Node(Box::new(inner), Box::new(Tree::Leaf(1))))
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
