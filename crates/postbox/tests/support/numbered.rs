//! Numbered messages for the batch tests: each body starts with its index, so a receiver can
//! check order and a sender can tell which messages came back.

use std::time::Duration;

use postbox::Message;

/// How long any one wait may take before the test fails instead of hanging.
pub(crate) const WATCHDOG: Duration = Duration::from_secs(20);

/// Messages of `size` bytes (at least 4), the first four bytes holding their index.
pub(crate) fn numbered(range: std::ops::Range<u32>, size: usize) -> Vec<Message> {
    range
        .map(|i| {
            let mut body = vec![(i % 251) as u8; size.max(4)];
            body[..4].copy_from_slice(&i.to_le_bytes());
            Message::new(body)
        })
        .collect()
}

/// The index a [`numbered`] message carries.
pub(crate) fn number(body: &[u8]) -> u32 {
    u32::from_le_bytes(body[..4].try_into().unwrap())
}
