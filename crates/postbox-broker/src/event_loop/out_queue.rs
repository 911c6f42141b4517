//! Frames waiting for room in a link that the event loop writes without ever blocking.

use std::collections::VecDeque;

use postbox_transport::UnixLink;

/// The frames for one link, oldest first, and how much of the first is written.
#[derive(Debug, Default)]
pub(super) struct OutQueue {
    frames: VecDeque<Vec<u8>>,
    /// Bytes of the first frame already written.
    offset: usize,
    /// Bytes of every queued frame, the first counted whole.
    bytes: usize,
}

/// The link failed on a write: nothing more can reach its peer (the queue was emptied).
#[derive(Debug)]
pub(super) struct LinkGone;

impl OutQueue {
    /// Queues `frame` after the others.
    pub(super) fn push(&mut self, frame: Vec<u8>) {
        self.bytes += frame.len();
        self.frames.push_back(frame);
    }

    /// True when nothing waits.
    pub(super) fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }

    /// Bytes of the frames waiting, the one being written counted whole (the bound on what a
    /// peer that does not read may hold in the broker).
    pub(super) fn bytes(&self) -> usize {
        self.bytes
    }

    /// Bytes not written yet.
    pub(super) fn unwritten(&self) -> usize {
        self.bytes - self.offset
    }

    /// Writes what `link` takes now, oldest first, without blocking.
    ///
    /// # Errors
    /// [`LinkGone`] when the write failed; the queue is then empty.
    pub(super) fn flush(&mut self, link: &UnixLink) -> Result<(), LinkGone> {
        while let Some(front) = self.frames.front() {
            match link.write_available(&front[self.offset..]) {
                Ok(0) => return Ok(()),
                Ok(n) => {
                    self.offset += n;
                    if self.offset == front.len() {
                        self.bytes -= front.len();
                        self.frames.pop_front();
                        self.offset = 0;
                    }
                }
                Err(_) => {
                    *self = Self::default();
                    return Err(LinkGone);
                }
            }
        }
        Ok(())
    }
}
