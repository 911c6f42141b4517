//! A described schema from a hostile server, as a client takes it (`Client::describe`,
//! `postbox call`, `postbox ls`): arbitrary bytes decoded as a postcard `ServiceSchema` or
//! `Shape` may not panic or overflow the stack, nor may what a client then does with the
//! decoded shapes: print and hash them, compare schemas, check reply bytes against them and
//! turn reply bytes into JSON and JSON into postcard by them.
//!
//! Input: a mode byte; a postcard `ServiceSchema` (mode bit 0 clear) or `Shape` (bit 0 set);
//! then the postcard bytes of one value of the shape the mode's other bits pick.
#![no_main]

use libfuzzer_sys::fuzz_target;
use postbox_rpc::{json, JsonErrorKind, MethodSchema, ServiceSchema, Shape};

fuzz_target!(|data: &[u8]| {
    let [mode, rest @ ..] = data else {
        return;
    };
    if mode & 1 == 0 {
        let Ok((schema, value)) = postcard::take_from_bytes::<ServiceSchema>(rest) else {
            return;
        };
        described(&schema);
        let Some(method) = schema.methods.get(usize::from(mode >> 3)) else {
            return;
        };
        let args = Shape::Tuple(method.args.iter().map(|a| a.shape.clone()).collect());
        match (mode >> 1) & 3 {
            0 => {
                let _ = convert(&method.ok, value);
            }
            1 => {
                if let Some(err) = &method.err {
                    let _ = convert(err, value);
                }
            }
            _ => {
                if let Some(json) = convert(&args, value) {
                    // What `postbox call` does with JSON arguments: the same bytes as the
                    // arguments' tuple, when both take the value.
                    let by_args = json::args_to_postcard(&json, &method.args);
                    if let (Ok(by_args), Ok(by_tuple)) = (by_args, json::to_postcard(&json, &args))
                    {
                        assert_eq!(by_args, by_tuple);
                    }
                }
            }
        }
    } else {
        let Ok((shape, value)) = postcard::take_from_bytes::<Shape>(rest) else {
            return;
        };
        let again = postcard::to_stdvec(&shape).expect("a shape encodes");
        assert_eq!(postcard::from_bytes::<Shape>(&again).as_ref(), Ok(&shape));
        let _ = convert(&shape, value);
    }
});

/// What a client does with a schema it was given: signatures for `postbox ls`, hashes, the
/// comparison at bind time, and the reply checks it decides on.
fn described(schema: &ServiceSchema) {
    let again = postcard::to_stdvec(schema).expect("a schema encodes");
    assert_eq!(postcard::from_bytes::<ServiceSchema>(&again).as_ref(), Ok(schema));
    for method in &schema.methods {
        let _ = method.signature();
        let _ = method.compute_hash();
        let _ = (method.ok.needs_check(), method.err.as_ref().map(Shape::needs_check));
        let _ = schema.method(&method.name);
    }
    let _ = schema.check_against(schema);
    let hashed = ServiceSchema {
        methods: schema
            .methods
            .iter()
            .map(|m| MethodSchema { hash: m.compute_hash(), ..m.clone() })
            .collect(),
        ..schema.clone()
    };
    let _ = hashed.check_against(schema);
    let _ = schema.check_against(&hashed);
}

/// Postcard bytes of `shape` to JSON and back. Returns the JSON when the bytes decoded.
fn convert(shape: &Shape, bytes: &[u8]) -> Option<serde_json::Value> {
    let _ = (shape.to_string(), shape.needs_check());
    let value = json::from_postcard(bytes, shape).ok()?;
    // Not every value goes back (NaN came out as null), but what does must read the same,
    // unless its canonical bytes are too few for its empty values (the limit grows with the
    // input, which may have held over-long varints).
    if let Ok(encoded) = json::to_postcard(&value, shape) {
        match json::from_postcard(&encoded, shape) {
            Err(e) if matches!(e.kind, JsonErrorKind::TooManyEmptyValues { .. }) => {}
            again => assert_eq!(again.as_ref(), Ok(&value), "JSON round trip"),
        }
    }
    Some(value)
}
