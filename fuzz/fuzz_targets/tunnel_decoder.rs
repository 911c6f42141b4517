//! Arbitrary bytes through a remote node's tunnel decoder, fed in pieces the first byte picks:
//! it may not panic, whatever decodes must encode to bytes that decode to the same frame, and
//! after an error it only ever says the stream is unusable.
#![no_main]

use libfuzzer_sys::fuzz_target;
use postbox_core::wire::tunnel::{TunnelDecoder, TunnelFrame};
use postbox_core::wire::DecodeError;

fuzz_target!(|data: &[u8]| {
    let Some((&piece, bytes)) = data.split_first() else {
        return;
    };
    let piece = usize::from(piece).max(1);
    let mut decoder = TunnelDecoder::new();
    let mut failed = false;
    for chunk in bytes.chunks(piece) {
        decoder.handle_bytes(chunk);
        loop {
            match decoder.poll_frame() {
                Ok(Some(frame)) => {
                    assert!(!failed, "a frame after an error");
                    let mut buf = Vec::new();
                    frame.encode(&mut buf);
                    assert_eq!(TunnelFrame::decode(&buf), Ok(frame));
                }
                Ok(None) => break,
                Err(DecodeError::Poisoned) => {
                    assert!(failed, "poisoned before any error");
                    break;
                }
                Err(_) => {
                    assert!(!failed, "a second error that is not Poisoned");
                    failed = true;
                }
            }
        }
    }
});
