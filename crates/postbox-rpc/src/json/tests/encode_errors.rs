//! JSON that does not fit its shape: errors that say where and what, as serde_json would reject it.

use super::*;

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
    assert_eq!(err.to_string(), "at args.p.x: expected an integer (i32), found the string \"1\"");
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
    assert!(matches!(kind_of(args_to_postcard(&json!(5), &[])), JsonErrorKind::Expected { .. }));
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
    assert_eq!(kind_of(to_postcard(&twice, &by_float)), JsonErrorKind::DuplicateKey("1.0".into()));
    // Keys that serde_json cannot write as strings.
    let by_pair = shape_of::<BTreeMap<(u8, u8), u8>>();
    let bytes = postcard::to_stdvec(&BTreeMap::from([((1_u8, 2_u8), 3_u8)])).unwrap();
    assert!(serde_json::to_value(BTreeMap::from([((1_u8, 2_u8), 3_u8)])).is_err());
    assert!(matches!(kind_of(from_postcard(&bytes, &by_pair)), JsonErrorKind::UnsupportedKey(_)));
    assert!(matches!(
        kind_of(to_postcard(&json!({"[1,2]": 3}), &by_pair)),
        JsonErrorKind::UnsupportedKey(_)
    ));
    let by_float = Shape::Map { key: Box::new(Shape::F64), value: Box::new(Shape::Unit) };
    let nan = [1, 0, 0, 0, 0, 0, 0, 0xf8, 0x7f];
    assert!(matches!(kind_of(from_postcard(&nan, &by_float)), JsonErrorKind::UnsupportedKey(_)));
}
