//! Values that convert both ways exactly as serde_json and postcard convert them.

use super::*;

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

/// Found by the `rpc_schema` fuzz target: floats (as values and as map keys, which JSON keeps
/// as text) came back one ulp off until serde_json parsed them exactly (`float_roundtrip`).
#[test]
fn floats_come_back_exactly_as_values_and_as_map_keys() {
    let hard =
        [1.071_566_039_146_582_6e-75_f64, -1.819_967_304_027_17e-179, -9.643_915_712_060_552e-234];
    for x in hard {
        check(&x);
    }
    let shape = Shape::Map { key: Box::new(Shape::F64), value: Box::new(Shape::U8) };
    for key in hard.into_iter().chain([0.1, -1e300, f64::MIN_POSITIVE]) {
        let mut bytes = vec![1];
        bytes.extend_from_slice(&key.to_le_bytes());
        bytes.push(7);
        let json = from_postcard(&bytes, &shape).unwrap();
        assert_eq!(to_postcard(&json, &shape).unwrap(), bytes, "{key:e} as {json}");
    }
}
