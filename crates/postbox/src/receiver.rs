//! The receiving side shared by ports and inboxes: the links feeding one endpoint, its queue,
//! and the leader/follower loop by which receiving threads read those links themselves.
//!
//! One receiving thread at a time (the leader) polls every link of the endpoint plus a waker,
//! reads what is ready, queues the envelopes and wakes the others; each thread then takes the
//! first envelope its [`Selector`] accepts. New links arrive from the node's control thread,
//! which fires the waker so the leader polls the new set.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use postbox_core::{
    FrameDecoder, FrameKind, LinkId, PeerIdentity, PortQueue, QueuedMeta, Selector,
};
use postbox_transport::{wait_readable, TransportError, UnixLink, Wait, Waker};

use crate::condvar::wait_until;
use crate::envelope::{Envelope, ReplyToken};
use crate::link::LinkEnd;
use crate::Message;

/// The server end of one link.
#[derive(Debug)]
pub(crate) struct ServerLink {
    pub(crate) end: LinkEnd,
    pub(crate) id: LinkId,
    pub(crate) client: PeerIdentity,
    decoder: Mutex<FrameDecoder>,
    dead: AtomicBool,
    /// Messages from this link waiting in the endpoint's queue, and their bytes: a link at its
    /// limit is not read (its sender feels the back-pressure of the socket) until they drop.
    queued_messages: AtomicUsize,
    queued_bytes: AtomicUsize,
}

/// A queued envelope and the link it came from.
#[derive(Debug)]
struct Queued {
    link: Arc<ServerLink>,
    envelope: Envelope,
}

/// One receive endpoint (a port or an inbox).
#[derive(Debug)]
pub(crate) struct Receiver {
    state: Mutex<ReceiverState>,
    arrived: Condvar,
    waker: Waker,
}

#[derive(Debug)]
struct ReceiverState {
    queue: PortQueue<Queued>,
    links: Vec<Arc<ServerLink>>,
    polling: bool,
    closed: bool,
    /// Threads blocked on `arrived`: notifying costs a system call, so only when there are any.
    waiting: usize,
}

/// Why a receive returned without a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ReceiveFailure {
    /// The wait ended.
    Empty,
    /// The endpoint was closed.
    Closed,
}

impl Receiver {
    pub(crate) fn new() -> Result<Self, TransportError> {
        Ok(Self {
            state: Mutex::new(ReceiverState {
                queue: PortQueue::new(),
                links: Vec::new(),
                polling: false,
                closed: false,
                waiting: 0,
            }),
            arrived: Condvar::new(),
            waker: Waker::new()?,
        })
    }

    fn lock(&self) -> MutexGuard<'_, ReceiverState> {
        // The state is consistent between statements; a panicking holder leaves it usable.
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Adds a link the broker made to this endpoint. Returns false when the endpoint is
    /// closed (the link is then dropped, which the client sees as a close).
    pub(crate) fn add_link(
        &self,
        link: UnixLink,
        id: LinkId,
        client: PeerIdentity,
        max: u32,
    ) -> bool {
        let mut state = self.lock();
        if state.closed {
            return false;
        }
        state.links.push(Arc::new(ServerLink {
            end: LinkEnd::new(link, max),
            id,
            client,
            decoder: Mutex::new(FrameDecoder::new(max)),
            dead: AtomicBool::new(false),
            queued_messages: AtomicUsize::new(0),
            queued_bytes: AtomicUsize::new(0),
        }));
        drop(state);
        self.waker.wake();
        true
    }

    /// Closes the endpoint: queued and future messages are dropped, links shut down, and
    /// receivers return `Closed`. Returns the ids of the links that were open.
    pub(crate) fn close(&self) -> Vec<LinkId> {
        let mut state = self.lock();
        state.closed = true;
        let links = std::mem::take(&mut state.links);
        state.queue = PortQueue::new();
        drop(state);
        self.waker.wake();
        self.arrived.notify_all();
        links
            .iter()
            .map(|link| {
                link.end.close();
                link.id
            })
            .collect()
    }

    /// Number of links currently feeding the endpoint.
    pub(crate) fn link_count(&self) -> usize {
        self.lock().links.len()
    }

    /// Takes the first envelope `selector` accepts, waiting up to `wait`. `on_dead` is told of
    /// every link found closed.
    pub(crate) fn recv(
        &self,
        selector: Selector,
        wait: Wait,
        on_dead: &dyn Fn(LinkId),
    ) -> Result<Envelope, ReceiveFailure> {
        let mut state = self.lock();
        loop {
            if let Some((_, queued)) = state.queue.pop(selector) {
                return Ok(self.release(queued));
            }
            if state.closed {
                return Err(ReceiveFailure::Closed);
            }
            if state.polling {
                if wait.expired() {
                    return Err(ReceiveFailure::Empty);
                }
                state.waiting += 1;
                state = wait_until(&self.arrived, state, wait.ends_at());
                state.waiting -= 1;
                continue;
            }
            state.polling = true;
            let links = state.links.clone();
            drop(state);
            let (arrived, dead) = self.poll_links(&links, wait);
            state = self.lock();
            state.polling = false;
            for queued in arrived {
                let message = &queued.envelope.message;
                let meta = QueuedMeta {
                    sender: queued.envelope.sender.process_id,
                    msg_type: message.msg_type,
                    priority: message.priority,
                };
                state.queue.push(meta, queued);
            }
            if !dead.is_empty() {
                state.links.retain(|l| !dead.contains(&l.id));
            }
            if state.waiting > 0 {
                self.arrived.notify_all();
            }
            for id in dead {
                on_dead(id);
            }
            if wait.expired() {
                // The wait is over: one last look for a message this receiver may take.
                return match state.queue.pop(selector) {
                    Some((_, queued)) => Ok(self.release(queued)),
                    None if state.closed => Err(ReceiveFailure::Closed),
                    None => Err(ReceiveFailure::Empty),
                };
            }
        }
    }

    /// Polls the links (and the waker) once, reading every ready link.
    fn poll_links(&self, links: &[Arc<ServerLink>], wait: Wait) -> (Vec<Queued>, Vec<LinkId>) {
        let links: Vec<&Arc<ServerLink>> = links.iter().filter(|l| !l.is_full()).collect();
        let mut fds = Vec::with_capacity(links.len() + 1);
        fds.push(self.waker.as_fd());
        fds.extend(links.iter().map(|l| l.end.link().as_fd()));
        let ready = match wait_readable(&fds, wait) {
            Ok(ready) => ready,
            Err(_) => return (Vec::new(), Vec::new()),
        };
        let mut arrived = Vec::new();
        let mut dead = Vec::new();
        for index in ready {
            if index == 0 {
                self.waker.reset();
                continue;
            }
            let link = links[index - 1];
            if !read_link(link, &mut arrived) {
                link.dead.store(true, Ordering::Release);
                link.end.close();
                dead.push(link.id);
            }
        }
        (arrived, dead)
    }
}

impl ServerLink {
    /// True when this link's queued messages reached the per-link limit.
    fn is_full(&self) -> bool {
        self.queued_messages.load(Ordering::Relaxed) >= LINK_QUEUE_MESSAGES
            || self.queued_bytes.load(Ordering::Relaxed) >= LINK_QUEUE_BYTES
    }
}

impl Receiver {
    /// Hands a queued envelope out, and lets its link be read again if it was at its limit.
    fn release(&self, queued: Queued) -> Envelope {
        let Queued { link, envelope } = queued;
        let was_full = link.is_full();
        link.queued_messages.fetch_sub(1, Ordering::Relaxed);
        link.queued_bytes.fetch_sub(envelope.message.body.len(), Ordering::Relaxed);
        if was_full && !link.is_full() {
            // The leader may be polling without this link; make it look again.
            self.waker.wake();
        }
        envelope
    }
}

/// Reads what one ready link holds into envelopes; false when the link is finished (closed by
/// the peer, or the peer broke the protocol).
fn read_link(link: &Arc<ServerLink>, out: &mut Vec<Queued>) -> bool {
    let mut decoder = link.decoder.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    // Keep reading while a frame is incomplete and the link has more of it (a large body
    // arrives in socket-buffer-sized pieces), then hand over what is complete.
    for _ in 0..MAX_READS_PER_TURN {
        match link.end.link().read_into(&mut decoder, Wait::NonBlocking) {
            Ok(_) => {}
            Err(TransportError::WouldBlock) => break,
            Err(_) => return false,
        }
        if !decode_frames(link, &mut decoder, out) {
            return false;
        }
        if !decoder.is_mid_frame() || link.is_full() {
            break;
        }
    }
    true
}

/// Moves every complete frame out of `decoder`; false when the peer broke the protocol.
fn decode_frames(
    link: &Arc<ServerLink>,
    decoder: &mut FrameDecoder,
    out: &mut Vec<Queued>,
) -> bool {
    loop {
        match decoder.poll_frame() {
            Ok(Some(frame)) => {
                let header = frame.header;
                let message = Message::from_frame(frame);
                let reply = match header.kind {
                    FrameKind::Oneway => None,
                    FrameKind::Call => Some(ReplyToken::new(Arc::clone(link), header.correlation)),
                    // Replies never travel towards a server: the client broke the protocol.
                    FrameKind::Reply | FrameKind::ErrorReply => return false,
                };
                link.queued_messages.fetch_add(1, Ordering::Relaxed);
                link.queued_bytes.fetch_add(message.body.len(), Ordering::Relaxed);
                let envelope = Envelope { message, sender: link.client, reply };
                out.push(Queued { link: Arc::clone(link), envelope });
            }
            Ok(None) => return true,
            // Garbage, a bad checksum or an oversized frame: drop this link only.
            Err(_) => return false,
        }
    }
}

/// Messages from one link that may wait in an endpoint's queue before the link is left unread.
const LINK_QUEUE_MESSAGES: usize = 1024;
/// Bytes from one link that may wait in an endpoint's queue before the link is left unread.
const LINK_QUEUE_BYTES: usize = 16 * 1024 * 1024;

/// Reads from one link before the others get a turn.
const MAX_READS_PER_TURN: usize = 64;
