//! Random values and random damage, against serde_json and postcard.

use proptest::prelude::*;

use super::*;

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
        (point(), any::<(u16, u16)>()).prop_map(|(corner, size)| Figure::Frame { corner, size }),
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
