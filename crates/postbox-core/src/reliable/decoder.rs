//! Cuts a byte stream (TCP, TLS, a QUIC stream) into host-link frames, skipping damaged bodies.

use super::frame::{Frame, FrameHeader, HEADER_LEN};
use crate::wire::DecodeError;

/// Cuts a byte stream into frames (sans-IO).
///
/// A frame whose body is damaged or malformed is skipped and reported, and the stream stays
/// usable: its header checksum vouched for the length. A damaged header cannot be skipped
/// (its length is unknown), so the decoder is then poisoned and the link must be reset.
#[derive(Debug)]
pub struct StreamDecoder {
    max_body: u32,
    buf: Vec<u8>,
    start: usize,
    poisoned: bool,
}

impl StreamDecoder {
    /// A decoder that rejects bodies longer than `max_body`.
    #[must_use]
    pub fn new(max_body: u32) -> Self {
        Self { max_body, buf: Vec::new(), start: 0, poisoned: false }
    }

    /// Copies `bytes` read from the stream into the decoder; call [`poll_frame`](Self::poll_frame)
    /// after it.
    pub fn handle_bytes(&mut self, bytes: &[u8]) {
        if self.poisoned {
            return;
        }
        if self.start > 0 && self.start >= self.buf.len() / 2 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    /// The next frame, `Ok(None)` when more bytes are needed.
    ///
    /// Call after every [`handle_bytes`](Self::handle_bytes), repeatedly, until it returns
    /// `Ok(None)` or the decoder [`is_poisoned`](Self::is_poisoned).
    ///
    /// # Errors
    /// A [`DecodeError`] for a frame that was skipped (the next call continues after it), or,
    /// once [`is_poisoned`](Self::is_poisoned) is true, for the header that broke the stream;
    /// after that every call returns [`DecodeError::Poisoned`].
    pub fn poll_frame(&mut self) -> Result<Option<Frame>, DecodeError> {
        if self.poisoned {
            return Err(DecodeError::Poisoned);
        }
        let pending = &self.buf[self.start..];
        let Some(header_bytes) = pending.first_chunk::<HEADER_LEN>() else {
            return Ok(None);
        };
        let header = match FrameHeader::decode(header_bytes, self.max_body) {
            Ok(header) => header,
            Err(e) => {
                self.poisoned = true;
                self.buf = Vec::new();
                self.start = 0;
                return Err(e);
            }
        };
        let end = HEADER_LEN + header.body_len as usize;
        let Some(body) = pending.get(HEADER_LEN..end) else {
            return Ok(None);
        };
        let frame = header.decode_body(header_bytes, body);
        self.start += end;
        if self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        }
        frame.map(Some)
    }

    /// True after a damaged header: nothing more can be read from this stream.
    #[must_use]
    pub fn is_poisoned(&self) -> bool {
        self.poisoned
    }

    /// Bytes received but not yet returned as frames (non-zero: the stream ended mid-frame).
    #[must_use]
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.start
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reliable::body::{Data, Heartbeat};
    use crate::reliable::frame::FrameBody;
    use crate::reliable::ids::{MessageId, SessionId, StreamId};

    fn frames() -> Vec<Frame> {
        (0..4u8)
            .map(|i| Frame {
                sender: SessionId::new(1).unwrap(),
                receiver: SessionId::new(2),
                body: if i % 2 == 0 {
                    FrameBody::Data(Data {
                        stream: StreamId(1),
                        id: MessageId(u64::from(i)),
                        payload: vec![i; usize::from(i) * 100],
                    })
                } else {
                    FrameBody::Heartbeat(Heartbeat { nonce: u64::from(i) })
                },
            })
            .collect()
    }

    fn drain(decoder: &mut StreamDecoder, out: &mut Vec<Result<Frame, DecodeError>>) {
        loop {
            match decoder.poll_frame() {
                Ok(None) => return,
                Ok(Some(frame)) => out.push(Ok(frame)),
                Err(e) => {
                    out.push(Err(e));
                    if decoder.is_poisoned() {
                        return;
                    }
                }
            }
        }
    }

    #[test]
    fn a_stream_fed_one_byte_at_a_time_gives_every_frame() {
        let mut stream = Vec::new();
        frames().iter().for_each(|f| f.encode(&mut stream));
        let mut decoder = StreamDecoder::new(1024);
        let mut out = Vec::new();
        for byte in stream {
            decoder.handle_bytes(&[byte]);
            drain(&mut decoder, &mut out);
        }
        assert_eq!(out, frames().into_iter().map(Ok).collect::<Vec<_>>());
        assert_eq!(decoder.buffered(), 0);
    }

    #[test]
    fn a_damaged_body_costs_one_frame_and_the_stream_goes_on() {
        let mut stream = Vec::new();
        let mut ends = Vec::new();
        for f in frames() {
            f.encode(&mut stream);
            ends.push(stream.len());
        }
        // Flip a payload byte of the third frame (index 2).
        stream[ends[1] + HEADER_LEN + 20] ^= 0x10;
        let mut decoder = StreamDecoder::new(1024);
        decoder.handle_bytes(&stream);
        let mut out = Vec::new();
        drain(&mut decoder, &mut out);
        assert_eq!(out.len(), 4);
        assert!(matches!(out[2], Err(DecodeError::ChecksumMismatch { .. })));
        assert_eq!(out[3], Ok(frames()[3].clone()));
        assert!(!decoder.is_poisoned());
    }

    #[test]
    fn a_damaged_header_poisons_the_stream() {
        let mut stream = Vec::new();
        frames().iter().for_each(|f| f.encode(&mut stream));
        stream[5] ^= 0x01;
        let mut decoder = StreamDecoder::new(1024);
        decoder.handle_bytes(&stream);
        assert!(matches!(decoder.poll_frame(), Err(DecodeError::ChecksumMismatch { .. })));
        assert!(decoder.is_poisoned());
        assert_eq!(decoder.poll_frame(), Err(DecodeError::Poisoned));
    }
}
