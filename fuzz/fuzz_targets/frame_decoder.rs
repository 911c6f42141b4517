//! Arbitrary bytes through `FrameDecoder`, in reads whose size the first byte picks, and
//! through `Frame::decode`: nothing may panic, and both ways of feeding the decoder must agree.
#![no_main]

use libfuzzer_sys::fuzz_target;
use postbox_core::{DecodeError, Frame, FrameDecoder};

/// Above the decoder's 64 KiB staging buffer, so that large declared bodies take the
/// read-in-place path.
const MAX_BODY: u32 = 1 << 17;

fuzz_target!(|data: &[u8]| {
    let Some((&selector, stream)) = data.split_first() else {
        return;
    };
    // Reads of 1, 2, 4, … 64 KiB bytes: every way a header or a body can be split.
    let chunk = 1usize << (selector % 17);
    let by_copy = feed(stream, chunk, |decoder, bytes| {
        decoder.handle_bytes(bytes);
        bytes.len()
    });
    let in_place = feed(stream, chunk, |decoder, bytes| {
        let buf = decoder.read_buffer();
        let n = buf.len().min(bytes.len());
        buf[..n].copy_from_slice(&bytes[..n]);
        decoder.commit(n);
        n
    });
    assert_eq!(by_copy, in_place);

    if let Ok(frame) = Frame::decode(stream, MAX_BODY) {
        assert_eq!(frame.to_bytes(), stream);
    }
});

/// Feeds `stream` `chunk` bytes at a time through `read` (which returns how many it took),
/// polling until `Ok(None)` after each read; stops at the first error.
fn feed(
    stream: &[u8],
    chunk: usize,
    read: impl Fn(&mut FrameDecoder, &[u8]) -> usize,
) -> (Vec<Frame>, Option<DecodeError>) {
    let mut decoder = FrameDecoder::new(MAX_BODY);
    let mut frames = Vec::new();
    let mut pos = 0;
    while pos < stream.len() {
        let end = stream.len().min(pos + chunk);
        pos += read(&mut decoder, &stream[pos..end]);
        loop {
            match decoder.poll_frame() {
                Ok(Some(frame)) => {
                    assert_eq!(frame.body.len(), frame.header.body_len as usize);
                    frames.push(frame);
                }
                Ok(None) => break,
                Err(e) => {
                    assert_eq!(decoder.poll_frame(), Err(DecodeError::Poisoned));
                    return (frames, Some(e));
                }
            }
        }
    }
    (frames, None)
}
