//! Damaged and hostile postcard bytes, and values nested too deep: precise errors, no panics,
//! no huge allocations, no stack overflow.

use super::*;
use crate::shape::Container;

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
        (&[2, 0], shape_of::<Option<u8>>(), JsonErrorKind::InvalidTag { what: "option", byte: 2 }),
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
    for shape in [shape_of::<Vec<u64>>(), shape_of::<BTreeMap<u8, u8>>(), Shape::Str, Shape::Bytes]
    {
        let kind = kind_of(from_postcard(&huge, &shape));
        assert_eq!(kind, JsonErrorKind::LengthExceedsInput { declared: u64::MAX, left: 0 });
    }
    // Units take no bytes: their count is limited instead, by the input's length.
    let units = shape_of::<Vec<()>>();
    let most = postcard::to_stdvec(&vec![(); 1 << 16]).unwrap();
    let limit = MAX_EMPTY_VALUES + EMPTY_VALUES_PER_BYTE * most.len() as u64;
    assert_eq!(from_postcard(&most, &units).map(|v| v.as_array().map(Vec::len)), Ok(Some(1 << 16)));
    let over = postcard::to_stdvec(&(limit + 1)).unwrap();
    assert_eq!(kind_of(from_postcard(&over, &units)), JsonErrorKind::TooManyEmptyValues { limit });
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
    let json = (0..300).fold(json!({"Leaf": 0}), |inner, _| json!({"Node": [inner, {"Leaf": 1}]}));
    assert_eq!(kind_of(to_postcard(&json, &shape)), JsonErrorKind::TooDeep { limit: MAX_DEPTH });
    let json = (0..300).fold(json!([]), |inner, _| json!([inner]));
    let mut shape = Shape::Seq(Box::new(Shape::U8));
    for _ in 0..300 {
        shape = Shape::Seq(Box::new(shape));
    }
    assert_eq!(kind_of(to_postcard(&json, &shape)), JsonErrorKind::TooDeep { limit: MAX_DEPTH });
    // A hostile shape that recurses without taking bytes.
    let endless = Shape::Named {
        name: "Loop".into(),
        body: Box::new(Container::NewType(Shape::Recursive("Loop".into()))),
    };
    assert_eq!(kind_of(from_postcard(&[], &endless)), JsonErrorKind::TooDeep { limit: MAX_DEPTH });
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

/// Found by the `rpc_schema` fuzz target: a described shape whose cycle goes through many
/// options (`struct A(Option<Option<…<A>>>)`) recursed 60 frames per level before options
/// counted as levels; a debug build overflowed its stack.
#[test]
fn options_in_a_cycle_count_towards_the_depth_limit() {
    let mut inner = Shape::Recursive("A".into());
    for _ in 0..60 {
        inner = Shape::Option(Box::new(inner));
    }
    let shape = Shape::Named { name: "A".into(), body: Box::new(Container::NewType(inner)) };
    let deep = vec![1u8; 12_200];
    assert_eq!(kind_of(from_postcard(&deep, &shape)), JsonErrorKind::TooDeep { limit: MAX_DEPTH });
    // The encoder too: a non-null value walks the same cycle without end.
    let json = serde_json::json!(5);
    assert_eq!(kind_of(to_postcard(&json, &shape)), JsonErrorKind::TooDeep { limit: MAX_DEPTH });
}
