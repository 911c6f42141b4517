//! Publications a subscription's relay drops on the way to a peer (too large to cross), and
//! the credits that account for them (docs/network.md §5a).
//!
//! The topic counts every publication it sends in the subscription's window; the remote
//! subscriber credits only those it received. Credits are cumulative counts, so the relay
//! adds the publications it dropped to every credit it passes from the peer to the topic, and
//! gives the topic such a credit itself at each drop: without it, a window full of dropped
//! publications would never be credited and the subscription would stall for good.

use postbox_core::wire::frame::HEADER_LEN;
use postbox_core::{Credit, FrameKind};

use super::encode;
use super::gateway::frame_at_start;

/// What a subscription's relay (this host's side, facing the topic) dropped, and the peer's
/// last credit.
#[derive(Debug, Default)]
pub(super) struct DroppedPublications {
    /// Publications dropped since the channel opened.
    dropped: u64,
    /// The latest cumulative credit the peer's subscriber sent.
    from_peer: Credit,
}

impl DroppedPublications {
    /// Counts `count` more dropped publications; the credit frame that releases them to the
    /// topic.
    pub(super) fn on_dropped(&mut self, count: u64) -> Vec<u8> {
        self.dropped = self.dropped.saturating_add(count);
        self.credit_frame()
    }

    /// The peer's frames towards the topic (checked to be whole and intact), each credit with
    /// the dropped publications added; `None` when one is not a credit.
    pub(super) fn credits_from_peer(&mut self, mut frames: &[u8]) -> Option<Vec<u8>> {
        let mut out = Vec::with_capacity(frames.len());
        while !frames.is_empty() {
            let (header, len) = frame_at_start(frames, u32::MAX)?;
            if header.kind != FrameKind::Credit {
                return None;
            }
            // A body that is no credit goes on as it came; the topic closes the link on it.
            match Credit::decode(&frames[HEADER_LEN..len]) {
                Ok(credit) => {
                    if credit.messages >= self.from_peer.messages {
                        self.from_peer = credit;
                    }
                    out.extend(self.credit_frame());
                }
                Err(_) => out.extend_from_slice(&frames[..len]),
            }
            frames = &frames[len..];
        }
        Some(out)
    }

    /// The credit the topic is owed now: the peer's, plus what was dropped.
    fn credit_frame(&self) -> Vec<u8> {
        let credit = Credit {
            messages: self.from_peer.messages.saturating_add(self.dropped),
            bytes: self.from_peer.bytes,
        };
        encode(FrameKind::Credit, 0, 0, 0, &credit.to_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use postbox_core::{Frame, FrameDecoder};

    fn credit(messages: u64) -> Vec<u8> {
        encode(FrameKind::Credit, 0, 0, 0, &Credit { messages, bytes: 0 }.to_bytes())
    }

    fn credits_in(frames: &[u8]) -> Vec<u64> {
        let mut decoder = FrameDecoder::new(1024);
        decoder.handle_bytes(frames);
        let mut out = Vec::new();
        while let Ok(Some(Frame { header, body })) = decoder.poll_frame() {
            assert_eq!(header.kind, FrameKind::Credit);
            out.push(Credit::decode(&body).unwrap().messages);
        }
        out
    }

    #[test]
    fn dropped_publications_are_credited_at_once_and_in_every_later_credit() {
        let mut dropped = DroppedPublications::default();
        assert_eq!(credits_in(&dropped.credits_from_peer(&credit(3)).unwrap()), [3]);
        assert_eq!(credits_in(&dropped.on_dropped(1)), [4]);
        assert_eq!(credits_in(&dropped.on_dropped(1)), [5]);
        let mut two = credit(4);
        two.extend(credit(6));
        assert_eq!(credits_in(&dropped.credits_from_peer(&two).unwrap()), [6, 8]);
        // A credit older than the last one does not move the count back.
        assert_eq!(credits_in(&dropped.credits_from_peer(&credit(5)).unwrap()), [8]);
        let publication = encode(FrameKind::Oneway, 0, 0, 0, b"x");
        assert!(dropped.credits_from_peer(&publication).is_none());
    }
}
