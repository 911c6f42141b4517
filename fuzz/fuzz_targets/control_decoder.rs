//! Arbitrary bytes through `ControlMessage::decode`: it may not panic, and whatever decodes
//! must encode and decode again to the same message.
#![no_main]

use libfuzzer_sys::fuzz_target;
use postbox_core::wire::control::MAX_CONTROL_LEN;
use postbox_core::ControlMessage;

fuzz_target!(|data: &[u8]| {
    let Ok(message) = ControlMessage::decode(data) else {
        return;
    };
    let mut buf = Vec::new();
    message.encode(&mut buf);
    assert!(buf.len() <= MAX_CONTROL_LEN);
    let again = ControlMessage::decode(&buf).expect("an encoded message decodes");
    match (&message, &again) {
        // The encoder cuts a refusal's detail to 1024 bytes (docs/wire-format.md §3), while the
        // decoder accepts any text field. A listing that decoded fits the size limit, so it
        // re-encodes whole.
        (ControlMessage::Refused { detail, .. }, ControlMessage::Refused { detail: cut, .. })
            if detail.len() > 1024 =>
        {
            assert!(cut.len() <= 1024 && detail.starts_with(cut.as_str()));
        }
        _ => assert_eq!(again, message),
    }
});
