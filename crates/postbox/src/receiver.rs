//! The receiving side shared by ports and inboxes: the links feeding one endpoint, its queue,
//! its flow control, and the leader/follower loop by which receiving threads read those links
//! themselves.
//!
//! One receiving thread at a time (the leader) polls every link of the endpoint plus a waker
//! and reads what is ready. When one link alone held input and the leader takes any envelope,
//! it hands them to itself as they are decoded; otherwise it queues them and wakes the
//! others, and each thread takes the envelope its [`Selector`] picks. A leader leaving with
//! an envelope wakes a waiting thread to read in its place only when the endpoint's threads
//! stay away longer than a wake-up takes (`promotion.rs`). New links arrive from the node's
//! control thread, which fires the waker so the leader polls the new set.
//!
//! Flow control: every one-way message taken (or dropped by drop-oldest) is released on its
//! link, and the link's [`ReleaseCounter`] decides when the sender hears of it (a credit
//! frame): when a batch is due, when the sender waits for confirmation, and always before the
//! leader goes to sleep.

use std::borrow::Borrow;
use std::os::fd::BorrowedFd;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use postbox_core::{
    FrameDecoder, FrameKind, LinkId, Overflow, PeerIdentity, Placement, PortSpec, QueuedMeta,
    Quota, ReleaseCounter, Rights, Selector,
};
use postbox_transport::{wait_readable, Link, Spin, TransportError, Wait, Waker, FEW_FDS};
use smallvec::SmallVec;

use crate::body::Body;
use crate::condvar::wait_until;
use crate::envelope::{Envelope, ReplyToken};
use crate::fair_queue::{FairQueue, Shared, FAIR_SHARE, PRIORITIES};
use crate::link::LinkEnd;
use crate::promotion::{self, Promote, Promotion};
use crate::readiness::Readiness;
use crate::Message;

/// The server end of one link.
#[derive(Debug)]
pub(crate) struct ServerLink {
    pub(crate) end: LinkEnd,
    pub(crate) id: LinkId,
    pub(crate) client: PeerIdentity,
    /// What the broker granted the client: a frame beyond it closes the link.
    rights: Rights,
    /// Its envelopes in the endpoint's queue, per priority (changed under the endpoint's
    /// lock; see `fair_queue.rs`).
    in_queue: [AtomicUsize; PRIORITIES],
    /// The decoder (in its [`LinkReader`]) may hold complete frames not decoded yet (a
    /// receiver took only what it could hand out): the link is to be read even when its
    /// transport holds nothing new.
    undecoded: AtomicBool,
    /// The largest payload the port accepts.
    max_payload: u32,
    /// Pooled payloads are read in place (the port trusts its senders), not copied out.
    read_in_place: bool,
    flow: Mutex<LinkFlow>,
    /// [`LinkFlow::is_full`] of `flow`, stored under its lock on every change of its counts,
    /// so that a look at the link takes no lock. Counts grow only under the endpoint's lock
    /// (in `settle`), so a reader holding it never sees a stale "not full"; a stale "full"
    /// can only race a release, which wakes the receivers once it stored "not full".
    full: AtomicBool,
    /// The endpoint's readiness (it watches this link for reading and writing), for replies
    /// written by async tasks.
    pub(crate) readiness: Arc<Readiness>,
}

/// What one link has in the endpoint's queue, and what its sender has been told.
#[derive(Debug)]
struct LinkFlow {
    /// One-way messages queued (they count against the capacity).
    messages: u64,
    /// Their body bytes.
    bytes: u64,
    /// Calls queued (not counted against the capacity; bounded by the quota).
    calls: u64,
    release: ReleaseCounter,
    /// What the client may have waiting here (the broker's policy): beyond it, the link is
    /// not read, so a flooding client slows only itself.
    quota: Quota,
}

/// What only the reader of one link touches: its frame decoder. Owned by whoever reads the
/// links (see `ReceiverState::readers`) rather than locked per read: a link is read only by
/// the leader (the thread that set `polling`) or, while nobody polls, by a thread holding the
/// endpoint's lock, and both own the readers for as long as they read.
#[derive(Debug)]
struct LinkReader {
    id: LinkId,
    decoder: FrameDecoder,
}

/// The readers of an endpoint's links, in the order the links were added.
#[derive(Debug, Default)]
struct Readers {
    readers: Vec<LinkReader>,
    /// Where the next look starts: links are read in the order of `links`, so the next one
    /// asked for is usually here.
    next: usize,
}

/// A queued envelope, the link it came from, and how it counts.
#[derive(Debug)]
struct Queued {
    link: Arc<ServerLink>,
    /// Boxed: a queued envelope moves about ten times between its decoding and its
    /// receiver (into what arrived, into the queue, out of it), and 8 bytes move faster than
    /// its 176.
    envelope: Box<Envelope>,
    /// A one-way message (counted against capacity) rather than a call.
    counted: bool,
    /// Its sender waits for it to be taken.
    confirm: bool,
}

/// A polling receiver that takes any envelope, handed frames as they are decoded, while nothing
/// is queued and one link is read (the only link, or the only one holding input when it was
/// looked at): the queue could only have handed it those envelopes in the same order. It takes
/// one only when no frame still in the decoder outranks it, and none after the first it could
/// not take (that one and the rest are queued).
struct Taker<'a> {
    sink: &'a mut dyn FnMut(Envelope),
    /// Most it may still take.
    left: usize,
    /// False from the first envelope it could not take.
    open: bool,
    took: Took,
}

/// What [`Receiver::take_direct`] did.
enum Direct {
    /// It handed out this many envelopes (at least one).
    Taken(usize),
    /// It read the link but handed nothing out (frames were queued, or the link died).
    Progress,
    /// The shortest receive does not apply: receive the usual way.
    NotHere,
}

/// What a [`Taker`] took, to be accounted under the endpoint's lock.
#[derive(Debug, Clone, Copy, Default)]
struct Took {
    taken: usize,
    /// The link read (the one the taken envelopes came from).
    link: Option<LinkId>,
    /// One-way messages and their body bytes (released on the link at once).
    messages: u64,
    bytes: u64,
    /// A confirmed sender waits: credit goes at once.
    urgent: bool,
    /// Drops not reported yet when the poll began (reported with the first envelope taken),
    /// and the drops senders reported on the frames taken.
    lost_pending: u64,
    sender_dropped: u64,
}

impl<'a> Taker<'a> {
    fn new(sink: &'a mut dyn FnMut(Envelope), max: usize, lost_pending: u64) -> Self {
        Self { sink, left: max, open: true, took: Took { lost_pending, ..Took::default() } }
    }

    /// Takes `envelope` if it may, else hands it back (to be queued).
    fn offer(
        &mut self,
        mut envelope: Envelope,
        counted: bool,
        confirm: bool,
        sender_dropped: u64,
        decoder: &mut FrameDecoder,
    ) -> Option<Envelope> {
        let outranked =
            decoder.staged_priority().is_some_and(|top| top > envelope.message.priority);
        if !self.open || self.left == 0 || outranked {
            self.open = false;
            return Some(envelope);
        }
        if counted {
            self.took.messages += 1;
            self.took.bytes += envelope.message.body.len() as u64;
            self.took.urgent |= confirm;
        }
        // A sender's count is peer input (any u64): the sums saturate rather than wrap.
        self.took.sender_dropped = self.took.sender_dropped.saturating_add(sender_dropped);
        envelope.lost = std::mem::take(&mut self.took.lost_pending).saturating_add(sender_dropped);
        (self.sink)(envelope);
        self.left -= 1;
        self.took.taken += 1;
        None
    }

    fn done(self) -> Took {
        self.took
    }
}

/// Envelopes of one link handed out together, to be released on it.
#[derive(Debug)]
struct Released {
    link: Arc<ServerLink>,
    /// One-way messages, and their body bytes.
    messages: u64,
    bytes: u64,
    calls: u64,
    /// A confirmed sender waits: credit goes at once.
    urgent: bool,
}

impl Released {
    fn new(link: Arc<ServerLink>) -> Self {
        Self { link, messages: 0, bytes: 0, calls: 0, urgent: false }
    }

    fn add(&mut self, counted: bool, confirm: bool, len: u64) {
        if counted {
            self.messages += 1;
            self.bytes += len;
            self.urgent |= confirm;
        } else {
            self.calls += 1;
        }
    }
}

/// One receive endpoint (a port or an inbox).
#[derive(Debug)]
pub(crate) struct Receiver {
    spec: PortSpec,
    /// Pooled payloads are read in place (see `PortBuilder::read_in_place`).
    read_in_place: bool,
    state: Mutex<ReceiverState>,
    arrived: Condvar,
    /// The one waiting thread that keeps the looks waits here (see `standby_kept`).
    keeper: Condvar,
    waker: Waker,
    readiness: Arc<Readiness>,
    /// The leader's spin over shared-memory links before it polls.
    spin: Spin,
    /// The last envelope [`recv`](Self::recv) or [`recv_batch`](Self::recv_batch) handed out
    /// was a call: its caller waits for the reply, so the next request (of that caller at
    /// least) comes after it, and the spin looks for it often ([`Spin::run_for_answer`]). A
    /// one-way stream gets the thinning spin, which leaves its sender's index alone.
    answering: AtomicBool,
    /// When the endpoint opened, and when its links were last polled (µs after that).
    created: Instant,
    polled_at_us: AtomicU64,
    /// Looks at the links without a poll, by which the clock is sampled (see `count_look`).
    idle_looks: AtomicU32,
}

#[derive(Debug)]
struct ReceiverState {
    /// The envelopes waiting to be received, with a fair share per link (`fair_queue.rs`).
    queue: FairQueue<Queued>,
    /// Envelopes taken since the links were last read: while some are held back, the links
    /// are read again every [`FAIR_SHARE`] takes, or a quiet link's message would wait until
    /// the held ones are all taken (the queue never empties meanwhile).
    taken_since_poll: usize,
    /// Shared with the leader's poll: changed by copy on write, so a poll takes it with one
    /// reference count.
    links: Arc<Vec<Arc<ServerLink>>>,
    polling: bool,
    closed: bool,
    /// Threads blocked on `arrived`: notifying costs a system call, so only when there are any.
    waiting: usize,
    /// The vector the leader reads links into, kept between polls (see `settle`).
    scratch: Vec<(Queued, u64)>,
    /// The links' decoders: taken by the thread that reads the links (the leader for its
    /// poll, as `scratch`; the shortest receive under this lock) and given back before it
    /// settles. While a leader holds them, links added meanwhile put theirs here, and
    /// [`Readers::give_back`] keeps both.
    readers: Readers,
    /// How long threads stay away with an envelope: whether one leaving wakes another.
    promotion: Promotion,
    /// A waiting thread looks now and then whether the links lost their reader (see
    /// `promotion`); the others wait to be woken.
    standby_kept: bool,
    /// Messages lost (drop-oldest) since the last envelope was handed out.
    lost_pending: u64,
    /// Messages lost since the endpoint opened.
    lost_total: u64,
}

/// A snapshot of an endpoint's counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PortStats {
    /// Messages waiting in the endpoint's queue (read from links, not yet received).
    pub queued: usize,
    /// Messages lost since the endpoint opened: dropped by the drop-oldest policy, or (on a
    /// datagram port) lost on the way from another host, as [`Envelope::lost`] reports them.
    pub lost: u64,
    /// Links open to the endpoint.
    pub links: usize,
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
    pub(crate) fn new(spec: PortSpec, read_in_place: bool) -> Result<Self, TransportError> {
        Ok(Self {
            spec,
            read_in_place,
            state: Mutex::new(ReceiverState {
                queue: FairQueue::new(),
                taken_since_poll: 0,
                scratch: Vec::new(),
                readers: Readers::default(),
                links: Arc::new(Vec::new()),
                polling: false,
                closed: false,
                waiting: 0,
                promotion: Promotion::default(),
                standby_kept: false,
                lost_pending: 0,
                lost_total: 0,
            }),
            arrived: Condvar::new(),
            keeper: Condvar::new(),
            waker: Waker::new()?,
            spin: Spin::new(),
            answering: AtomicBool::new(false),
            created: Instant::now(),
            polled_at_us: AtomicU64::new(0),
            idle_looks: AtomicU32::new(0),
            readiness: Arc::new(
                Readiness::new().map_err(|e| TransportError::Os {
                    operation: "create epoll",
                    kind: e.kind(),
                })?,
            ),
        })
    }

    fn lock(&self) -> MutexGuard<'_, ReceiverState> {
        // The state is consistent between statements; a panicking holder leaves it usable.
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub(crate) fn spec(&self) -> PortSpec {
        self.spec
    }

    /// Adds a link the broker made to this endpoint; returns a handle on it, or `None` when
    /// the endpoint is closed (the link is then dropped, which the client sees as a close).
    pub(crate) fn add_link(
        &self,
        link: Link,
        id: LinkId,
        client: PeerIdentity,
        (rights, quota): (Rights, Quota),
        host_max: u32,
    ) -> Option<std::sync::Weak<Link>> {
        let mut state = self.lock();
        if state.closed {
            return None;
        }
        let max = self.spec.message_size.map_or(host_max, |n| n.min(host_max));
        let flow = LinkFlow {
            messages: 0,
            bytes: 0,
            calls: 0,
            release: ReleaseCounter::new(&self.spec),
            quota,
        };
        let full = flow.is_full(&self.spec);
        Arc::make_mut(&mut state.links).push(Arc::new(ServerLink {
            end: LinkEnd::new(link, host_max),
            id,
            client,
            rights,
            in_queue: std::array::from_fn(|_| AtomicUsize::new(0)),
            undecoded: AtomicBool::new(false),
            max_payload: max,
            read_in_place: self.read_in_place,
            flow: Mutex::new(flow),
            full: AtomicBool::new(full),
            readiness: Arc::clone(&self.readiness),
        }));
        state.readers.add(id, max);
        if let Some(link) = state.links.last().filter(|_| self.readiness.is_active()) {
            link.end.watch(&self.readiness);
        }
        let handle = state.links.last().map(|link| link.end.link_handle());
        drop(state);
        self.waker.wake();
        self.readiness.signal();
        handle
    }

    /// Closes the endpoint: queued and future messages are dropped, links shut down, and
    /// receivers return `Closed`. Returns the ids of the links that were open.
    pub(crate) fn close(&self) -> Vec<LinkId> {
        let mut state = self.lock();
        state.closed = true;
        let links = std::mem::take(&mut state.links);
        let links = Arc::unwrap_or_clone(links);
        state.queue.clear();
        state.readers = Readers::default();
        drop(state);
        self.waker.wake();
        self.arrived.notify_all();
        self.keeper.notify_all();
        self.readiness.signal();
        links
            .iter()
            .map(|link| {
                link.end.close();
                link.id
            })
            .collect()
    }

    /// The endpoint's counters now.
    pub(crate) fn stats(&self) -> PortStats {
        let state = self.lock();
        PortStats { queued: state.queue.len(), lost: state.lost_total, links: state.links.len() }
    }

    /// Number of links currently feeding the endpoint.
    pub(crate) fn link_count(&self) -> usize {
        self.lock().links.len()
    }

    /// Takes the envelope `selector` picks, waiting up to `wait`. `on_dead` is told of every
    /// link found closed.
    pub(crate) fn recv(
        &self,
        selector: Selector,
        wait: Wait,
        on_dead: &dyn Fn(LinkId),
    ) -> Result<Envelope, ReceiveFailure> {
        let mut taken = None;
        self.recv_into(selector, wait, on_dead, 1, &mut |envelope| taken = Some(envelope))?;
        let envelope = taken.ok_or(ReceiveFailure::Empty)?;
        self.note_answering(envelope.is_call());
        Ok(envelope)
    }

    /// Takes up to `max` (at least one) envelopes `selector` picks into `out`, waiting up to
    /// `wait` for the first; returns how many.
    pub(crate) fn recv_batch(
        &self,
        selector: Selector,
        wait: Wait,
        on_dead: &dyn Fn(LinkId),
        max: usize,
        out: &mut Vec<Envelope>,
    ) -> Result<usize, ReceiveFailure> {
        let taken = self
            .recv_into(selector, wait, on_dead, max.max(1), &mut |envelope| out.push(envelope))?;
        self.note_answering(out.last().is_some_and(Envelope::is_call));
        Ok(taken)
    }

    /// Hands up to `max` envelopes `selector` picks to `sink` once there is one, waiting up
    /// to `wait`; returns how many.
    fn recv_into(
        &self,
        selector: Selector,
        wait: Wait,
        on_dead: &dyn Fn(LinkId),
        max: usize,
        sink: &mut dyn FnMut(Envelope),
    ) -> Result<usize, ReceiveFailure> {
        let mut state = self.lock();
        if let Some(away) = promotion::returning(self.address(), Instant::now) {
            state.promotion.on_return(away);
        }
        // This receive read the links as their leader: leaving empty-handed, it wakes a
        // waiting thread to take them over (see `hand_over`).
        let mut led = false;
        loop {
            if state.taken_since_poll >= FAIR_SHARE && !state.polling && state.queue.holds_back() {
                state.polling = true;
                led = true;
                let links = Arc::clone(&state.links);
                let scratch = std::mem::take(&mut state.scratch);
                let mut readers = std::mem::take(&mut state.readers);
                drop(state);
                let (arrived, dead) = self.poll_links(
                    &links,
                    Wait::NonBlocking,
                    usize::MAX,
                    &mut readers,
                    scratch,
                    None,
                );
                state = self.lock();
                state.readers.give_back(readers);
                self.settle(&mut state, arrived, dead, on_dead, false);
            }
            let taken = self.take(&mut state, selector, max, sink);
            if taken > 0 {
                self.leave(&mut state);
                return Ok(taken);
            }
            if state.closed {
                return Err(ReceiveFailure::Closed);
            }
            if state.polling {
                if wait.expired() {
                    return Err(ReceiveFailure::Empty);
                }
                // Woken when there is something to take or a leader left for long (see
                // `promotion`). One waiting thread at a time also looks now and then whether
                // a leader left the links unread; the others wait to be woken.
                let standby = (!state.standby_kept).then(|| {
                    state.standby_kept = true;
                    Instant::now() + state.promotion.standby()
                });
                let until = match (wait.ends_at(), standby) {
                    (Some(end), Some(look)) => Some(end.min(look)),
                    (end, look) => end.or(look),
                };
                state.waiting += 1;
                let condvar = if standby.is_some() { &self.keeper } else { &self.arrived };
                state = wait_until(condvar, state, until);
                state.waiting -= 1;
                if let Some(look) = standby {
                    state.standby_kept = false;
                    let now = Instant::now();
                    if now >= look {
                        state.promotion.on_look(now);
                    }
                }
                continue;
            }
            if wait == Wait::NonBlocking && self.nothing_to_read(&state) {
                if led {
                    self.hand_over(&state);
                }
                return Err(ReceiveFailure::Empty);
            }
            if wait == Wait::NonBlocking {
                match self.take_direct(&mut state, selector, max, sink, on_dead) {
                    Direct::Taken(taken) => {
                        self.leave(&mut state);
                        return Ok(taken);
                    }
                    Direct::Progress => continue,
                    Direct::NotHere => {}
                }
            }
            state.polling = true;
            led = true;
            let links = Arc::clone(&state.links);
            let scratch = std::mem::take(&mut state.scratch);
            let mut readers = std::mem::take(&mut state.readers);
            // A receiver of any envelope takes frames as they are decoded when the queue could
            // only have handed them to it in the same order (see `Taker`); it then reports the
            // drops not reported yet.
            let taking = (selector == Selector::ANY
                && state.queue.len() == 0
                && self.spec.overflow != Overflow::DropOldest)
                .then(|| std::mem::take(&mut state.lost_pending));
            drop(state);
            if wait != Wait::NonBlocking {
                // About to sleep: every sender hears of every release first, so none waits on
                // credit that was only held back for batching.
                for link in links.iter() {
                    link.flush_credit(true);
                }
            }
            // A receiver that takes any envelope from a port of one link decodes little more
            // than it can take (a poll costs more than queueing a few): the rest stay in the
            // link's decoder. With several links, a frame left in one decoder could be
            // outranked by what another link brings, and everything read is decoded.
            let limit = if selector == Selector::ANY
                && links.len() == 1
                && self.spec.overflow != Overflow::DropOldest
            {
                max.max(ARRIVED_CAPACITY)
            } else {
                usize::MAX
            };
            let (arrived, dead, took) = match taking {
                Some(lost) => {
                    let mut taker = Taker::new(&mut *sink, max, lost);
                    let (arrived, dead) = self.poll_links(
                        &links,
                        wait,
                        limit,
                        &mut readers,
                        scratch,
                        Some(&mut taker),
                    );
                    (arrived, dead, Some(taker.done()))
                }
                None => {
                    let (arrived, dead) =
                        self.poll_links(&links, wait, limit, &mut readers, scratch, None);
                    (arrived, dead, None)
                }
            };
            let progress =
                !arrived.is_empty() || !dead.is_empty() || took.is_some_and(|t| t.taken > 0);
            state = self.lock();
            state.readers.give_back(readers);
            let taken = took.map_or(0, |took| self.took(&mut state, &links, took));
            // What the taker left may go on as a run of the queue (a receiver of any envelope
            // takes it next). Once the taker handed some out, nothing more goes into this
            // receive: a frame read after them may outrank them.
            self.settle(&mut state, arrived, dead, on_dead, selector == Selector::ANY);
            state.taken_since_poll += taken;
            if taken > 0 {
                self.leave(&mut state);
                return Ok(taken);
            }
            if wait == Wait::NonBlocking && progress {
                // Read to exhaustion before answering "empty": a link may hold more than one
                // read takes (async receivers wait for new data, not for data left behind).
                continue;
            }
            if wait.expired() {
                // The wait is over: one last look for a message this receiver may take.
                let taken = self.take(&mut state, selector, max, sink);
                if taken > 0 {
                    self.leave(&mut state);
                    return Ok(taken);
                }
                self.hand_over(&state);
                return Err(if state.closed {
                    ReceiveFailure::Closed
                } else {
                    ReceiveFailure::Empty
                });
            }
        }
    }

    /// The shortest receive: a non-blocking receive of any envelope on a port whose links are
    /// all shared memory and one of them alone holds input, with nothing queued, nobody
    /// polling and no async receiver. That link is read under the endpoint's lock, with no
    /// poll and no hand-over of the lock (what [`poll_links`](Self::poll_links) would do for
    /// it, less its bookkeeping); the frames decoded are handed out as the [`Taker`] hands
    /// them. A port served by many callers takes this way whenever their messages do not
    /// arrive at once.
    fn take_direct(
        &self,
        state: &mut ReceiverState,
        selector: Selector,
        max: usize,
        sink: &mut dyn FnMut(Envelope),
        on_dead: &dyn Fn(LinkId),
    ) -> Direct {
        if state.polling
            || selector != Selector::ANY
            || state.queue.len() != 0
            || self.spec.overflow == Overflow::DropOldest
            || self.readiness.is_active()
        {
            return Direct::NotHere;
        }
        let Some(link) = lone_input(&state.links) else { return Direct::NotHere };
        if link.is_full() || self.poll_due_sampled() {
            return Direct::NotHere;
        }
        let mut arrived = std::mem::take(&mut state.scratch);
        let mut taker = Taker::new(&mut *sink, max, std::mem::take(&mut state.lost_pending));
        let limit = max.max(ARRIVED_CAPACITY);
        // Nobody polls and this thread holds the lock: the readers are here, and its own.
        let alive = read_link(link, &mut state.readers, &mut arrived, limit, Some(&mut taker));
        let took = taker.done();
        state.lost_total = state.lost_total.saturating_add(took.sender_dropped);
        state.lost_pending = state.lost_pending.saturating_add(took.lost_pending);
        if took.messages > 0 {
            let mut flow = link.flow.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            flow.release.on_release_many(took.messages, took.bytes);
            link.send_credit(&mut flow, took.urgent);
        }
        if arrived.is_empty() && alive {
            state.scratch = arrived;
            state.taken_since_poll += took.taken;
        } else {
            // Frames beyond what was taken, or a dead link: as after any poll.
            let dead = if alive { Vec::new() } else { vec![link.id] };
            self.settle(state, arrived, dead, on_dead, true);
        }
        match took.taken {
            0 => Direct::Progress,
            taken => Direct::Taken(taken),
        }
    }

    /// Hands up to `max` queued envelopes `selector` picks to `sink`; returns how many.
    fn take(
        &self,
        state: &mut ReceiverState,
        selector: Selector,
        max: usize,
        sink: &mut dyn FnMut(Envelope),
    ) -> usize {
        let mut taken = 0;
        // Consecutive envelopes of one link are released on it together (one lock, at most
        // one credit).
        let mut run: Option<Released> = None;
        let mut refilled = false;
        while taken < max {
            let Some((queued, moved)) = state.queue.pop(selector) else { break };
            refilled |= moved;
            let Queued { link, mut envelope, counted, confirm } = queued;
            let len = envelope.message.body.len() as u64;
            match &mut run {
                Some(r) if Arc::ptr_eq(&r.link, &link) => r.add(counted, confirm, len),
                _ => {
                    if let Some(done) = run.replace(Released::new(link)) {
                        self.release(done);
                    }
                    if let Some(r) = &mut run {
                        r.add(counted, confirm, len);
                    }
                }
            }
            envelope.lost = std::mem::take(&mut state.lost_pending);
            sink(*envelope);
            taken += 1;
        }
        if let Some(done) = run {
            self.release(done);
        }
        state.taken_since_poll += taken;
        if refilled {
            // What moved into the queue may be what another receiver waits for.
            self.wake_receivers(state);
        }
        taken
    }

    /// This thread leaves with envelopes: a waiting thread is woken to read the links when
    /// the endpoint's threads stay away longer than a wake-up takes, and this thread notes
    /// when it left (see `promotion`).
    fn leave(&self, state: &mut ReceiverState) {
        if state.waiting == 0 || state.polling {
            return;
        }
        let now = Instant::now();
        match state.promotion.on_leave(now) {
            // Nobody keeps the looks (the thread that kept them left its wait): one is woken
            // to keep them.
            Promote::Later if !state.standby_kept => self.wake_one(state),
            Promote::Later => {}
            Promote::Now => self.wake_one(state),
            // Only the keeper waits with a timeout, as long as the looks were apart when it
            // began: it alone is woken (and reads the links or waits the short while).
            Promote::NowAndLookOften => self.keeper.notify_one(),
        }
        promotion::note_leaving(self.address(), now);
    }

    /// A thread that read the links leaves without an envelope, maybe for good: a waiting
    /// thread takes the links over.
    fn hand_over(&self, state: &ReceiverState) {
        if state.waiting > 0 && !state.polling {
            self.wake_one(state);
        }
    }

    /// Wakes one waiting thread: one that waits to be woken if any, else the keeper.
    fn wake_one(&self, state: &ReceiverState) {
        if state.waiting > usize::from(state.standby_kept) {
            self.arrived.notify_one();
        } else {
            self.keeper.notify_one();
        }
    }

    /// This endpoint's address, which tells it apart from the others a thread receives on.
    fn address(&self) -> usize {
        std::ptr::from_ref(self) as usize
    }

    /// Tells receivers waiting (blocked, polling or async) that the queue changed.
    fn wake_receivers(&self, state: &ReceiverState) {
        if state.waiting > 0 {
            self.arrived.notify_all();
            if state.standby_kept {
                self.keeper.notify_one();
            }
        }
        if state.polling {
            self.waker.wake();
        }
        self.readiness.signal();
    }

    /// Reads whatever the links hold now into the queue, without taking anything (so that
    /// counters reflect what was sent), unless a receiver is reading them already.
    pub(crate) fn absorb(&self, on_dead: &dyn Fn(LinkId)) {
        let mut state = self.lock();
        if state.polling || state.closed {
            return;
        }
        state.polling = true;
        let links = Arc::clone(&state.links);
        let scratch = std::mem::take(&mut state.scratch);
        let mut readers = std::mem::take(&mut state.readers);
        drop(state);
        let (arrived, dead) =
            self.poll_links(&links, Wait::NonBlocking, usize::MAX, &mut readers, scratch, None);
        let mut state = self.lock();
        state.readers.give_back(readers);
        self.settle(&mut state, arrived, dead, on_dead, false);
        self.hand_over(&state);
    }

    /// Ends a poll: queues what arrived, forgets dead links, and wakes waiting receivers when
    /// something is queued for them (a leader leaving wakes one as `leave` and `hand_over`
    /// say).
    ///
    /// With `may_run` (the polling receiver takes any envelope), what arrived is queued as a
    /// run (see `FairQueue::push_run`) when the queue could only hand it out in the same
    /// order: nothing queued, one link, one priority, no drop-oldest.
    fn settle(
        &self,
        state: &mut ReceiverState,
        mut arrived: Vec<(Queued, u64)>,
        mut dead: Vec<LinkId>,
        on_dead: &dyn Fn(LinkId),
        may_run: bool,
    ) {
        state.polling = false;
        state.taken_since_poll = 0;
        if state.closed {
            // A leader that polled through the close gave back the readers of links gone.
            state.readers = Readers::default();
        }
        let priority = arrived.first().map(|(q, _)| q.envelope.message.priority);
        // Drop-oldest ports keep the newest of what arrived: it all goes through the queue.
        let run = may_run
            && dead.is_empty()
            && self.spec.overflow != Overflow::DropOldest
            && state.links.len() == 1
            && state.queue.len() == 0
            && arrived.iter().all(|(q, _)| Some(q.envelope.message.priority) == priority);
        let mut drained = arrived.drain(..);
        let mut rest = drained.by_ref().peekable();
        while let Some(first) = rest.next() {
            // One lock of a link's flow for each run of its envelopes.
            let link = Arc::clone(&first.0.link);
            let mut flow = link.flow.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            let mut next = Some(first);
            while let Some((queued, sender_dropped)) = next {
                state.lost_pending = state.lost_pending.saturating_add(sender_dropped);
                state.lost_total = state.lost_total.saturating_add(sender_dropped);
                if let Err(link) = self.accept(state, &mut flow, queued, run) {
                    dead.push(link);
                }
                next = rest.next_if(|(q, _)| Arc::ptr_eq(&q.link, &link));
            }
        }
        drop(rest);
        drop(drained);
        if arrived.capacity() <= SCRATCH_CAPACITY {
            // Kept for the next poll: warm in the cache, and no allocation per poll.
            state.scratch = arrived;
        }
        if !dead.is_empty() {
            Arc::make_mut(&mut state.links).retain(|l| !dead.contains(&l.id));
            state.readers.remove(&dead);
            // One-way messages a departed sender sent are still delivered (the ones held back
            // for fairness too); its calls can no longer be answered.
            state.queue.links_gone(&dead, |q| q.counted);
        }
        if state.waiting > 0 && state.queue.len() > 0 {
            // Something to take. A leader that takes what it read wakes nobody here: see
            // `leave`.
            self.arrived.notify_all();
            if state.standby_kept {
                self.keeper.notify_one();
            }
        }
        self.readiness.signal();
        for id in dead {
            on_dead(id);
        }
    }

    /// Accounts for what a [`Taker`] took during a poll of `links`: drops, and the credit the
    /// sender of the link it read is owed (never counted as queued). Returns how many it took.
    fn took(&self, state: &mut ReceiverState, links: &[Arc<ServerLink>], took: Took) -> usize {
        state.lost_total = state.lost_total.saturating_add(took.sender_dropped);
        // Not handed out with an envelope: still to be reported.
        state.lost_pending = state.lost_pending.saturating_add(took.lost_pending);
        if took.messages > 0 {
            if let Some(link) = links.iter().find(|l| Some(l.id) == took.link) {
                let mut flow = link.flow.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                flow.release.on_release_many(took.messages, took.bytes);
                link.send_credit(&mut flow, took.urgent);
            }
        }
        took.taken
    }

    /// Like [`recv`](Self::recv) with no wait, awaiting readiness (tokio) in between.
    pub(crate) async fn recv_async(
        &self,
        selector: Selector,
        on_dead: &(dyn Fn(LinkId) + Sync),
    ) -> Result<Envelope, ReceiveFailure> {
        self.watch_links();
        loop {
            match self.recv(selector, Wait::NonBlocking, on_dead) {
                Err(ReceiveFailure::Empty) => {}
                done => return done,
            }
            self.readiness.wait().await.map_err(|_| ReceiveFailure::Closed)?;
        }
    }

    /// Like [`recv_batch`](Self::recv_batch) with no wait, awaiting readiness (tokio) in
    /// between.
    pub(crate) async fn recv_batch_async(
        &self,
        selector: Selector,
        on_dead: &(dyn Fn(LinkId) + Sync),
        max: usize,
        out: &mut Vec<Envelope>,
    ) -> Result<usize, ReceiveFailure> {
        self.watch_links();
        loop {
            match self.recv_batch(selector, Wait::NonBlocking, on_dead, max, out) {
                Err(ReceiveFailure::Empty) => {}
                done => return done,
            }
            self.readiness.wait().await.map_err(|_| ReceiveFailure::Closed)?;
        }
    }

    /// From now on every link of this endpoint is watched by the readiness the async forms
    /// await (under the lock that `add_link` takes, so none is missed).
    fn watch_links(&self) {
        let state = self.lock();
        if self.readiness.activate() {
            for link in state.links.iter() {
                link.end.watch(&self.readiness);
            }
        }
    }

    /// Queues an arrived envelope under the port's capacity and overflow policy. Fails with
    /// the link's id when its sender exceeded the capacity it was told (the link is closed).
    /// `flow` is the envelope's link's, locked by the caller. With `run`, it goes on the
    /// queue's run (one link, one priority, nothing else queued: the caller checked).
    fn accept(
        &self,
        state: &mut ReceiverState,
        flow: &mut LinkFlow,
        queued: Queued,
        run: bool,
    ) -> Result<(), LinkId> {
        let link = &queued.link;
        let len = queued.envelope.message.body.len() as u64;
        if !queued.counted {
            flow.calls += 1;
        } else if flow.messages >= self.spec.message_window()
            || flow.bytes + len > self.spec.byte_window()
        {
            if self.spec.overflow != Overflow::DropOldest {
                link.end.close();
                return Err(link.id);
            }
            // Drop-oldest: make room by dropping this link's oldest one-way messages.
            while flow.messages > 0
                && (flow.messages >= self.spec.message_window()
                    || flow.bytes + len > self.spec.byte_window())
            {
                let oldest = state.queue.remove_oldest(|_, q| q.counted && q.link.id == link.id);
                let Some(old) = oldest else { break };
                let old_len = old.envelope.message.body.len() as u64;
                flow.messages -= 1;
                flow.bytes -= old_len;
                flow.release.on_release(old_len);
                state.lost_pending = state.lost_pending.saturating_add(1);
                state.lost_total = state.lost_total.saturating_add(1);
            }
        }
        if queued.counted {
            flow.messages += 1;
            flow.bytes += len;
        }
        link.full.store(flow.is_full(&self.spec), Ordering::Release);
        if run {
            state.queue.push_run(queued);
            return Ok(());
        }
        // Drop-oldest ports drop from the queue itself: they hold nothing back.
        let shared = state.links.len() > 1 && self.spec.overflow != Overflow::DropOldest;
        state.queue.push(queued, shared);
        Ok(())
    }

    /// Releases envelopes handed out on their link: credit to its sender, and the link may be
    /// read again if it was at its limit.
    fn release(&self, released: Released) {
        let Released { link, messages, bytes, calls, urgent } = released;
        let was_full = {
            // One lock for the counts, the limit and the credit.
            let mut flow = link.flow.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            let was_full = flow.is_full(&self.spec);
            flow.calls -= calls;
            if messages > 0 {
                flow.messages -= messages;
                flow.bytes -= bytes;
                flow.release.on_release_many(messages, bytes);
                link.send_credit(&mut flow, urgent);
            }
            let full = flow.is_full(&self.spec);
            link.full.store(full, Ordering::Release);
            was_full && !full
        };
        if was_full {
            // The leader may be polling without this link, and async receivers may have
            // missed its data while it was left unread: make them look again.
            self.waker.wake();
            self.readiness.signal();
        }
    }

    /// Polls the links (and the waker) once, reading every ready link that is not at its
    /// limit, and decoding at most `limit` frames of each. Returns what arrived (with the
    /// drops its sender reported) and the dead links.
    fn poll_links(
        &self,
        links: &[Arc<ServerLink>],
        wait: Wait,
        limit: usize,
        readers: &mut Readers,
        arrived: Vec<(Queued, u64)>,
        taker: Option<&mut Taker<'_>>,
    ) -> (Vec<(Queued, u64)>, Vec<LinkId>) {
        // One shared-memory link (a busy receiver's usual case): the same as below, without
        // gathering the links, and reading the clock on every few looks only.
        if let [link] = links {
            if link.end.link().is_shared_memory() && !self.readiness.is_active() && !link.is_full()
            {
                if wait != Wait::NonBlocking {
                    self.spin_until(|| link.has_input());
                }
                let input = link.has_input();
                if (input || wait == Wait::NonBlocking) && !self.poll_due_sampled() {
                    return read_links(&[link], &[input], limit, readers, arrived, taker);
                }
                return self.poll_fds(&[link], wait, limit, readers, arrived, taker);
            }
        }
        // A few shared-memory links (a server's callers): the same as below, without
        // gathering the links, and reading the clock on every few looks only.
        if links.len() <= SPIN_LINKS
            && !self.readiness.is_active()
            && links.iter().all(|l| l.end.link().is_shared_memory())
        {
            let ready = |l: &Arc<ServerLink>| !l.is_full() && l.has_input();
            // Links all full are not read: nothing to spin for (the queue must empty first).
            if wait != Wait::NonBlocking && !links.iter().all(|l| l.is_full()) {
                self.spin_until(|| links.iter().any(ready));
            }
            let mut to_read = [false; SPIN_LINKS];
            for (read, link) in to_read.iter_mut().zip(links) {
                *read = ready(link);
            }
            let to_read = &to_read[..links.len()];
            if (to_read.contains(&true) || wait == Wait::NonBlocking) && !self.poll_due_sampled() {
                return read_links(links, to_read, limit, readers, arrived, taker);
            }
            let links: FewLinks<'_> = links.iter().filter(|l| !l.is_full()).collect();
            return self.poll_fds(&links, wait, limit, readers, arrived, taker);
        }
        let links: FewLinks<'_> = links.iter().filter(|l| !l.is_full()).collect();
        // Shared-memory links can be looked at without a system call: first a short spin,
        // and when they hold input, no poll at all (new links and hang-ups wait for the next
        // poll, which a link set of shared-memory links alone still makes every interval).
        let shared = links.iter().any(|l| l.end.link().is_shared_memory());
        if shared {
            let all_shared = links.iter().all(|l| l.end.link().is_shared_memory());
            if wait != Wait::NonBlocking && links.len() <= SPIN_LINKS {
                self.spin_until(|| links.iter().any(|l| l.has_input()));
            }
            // Async receivers were woken by an edge-triggered epoll set: a hang-up it
            // reported once must be looked for now, so they always poll.
            if all_shared && !self.readiness.is_active() && !self.poll_due() {
                let to_read: SmallVec<[bool; FEW_LINKS]> =
                    links.iter().map(|l| l.has_input()).collect();
                if to_read.contains(&true) || wait == Wait::NonBlocking {
                    return read_links(&links, &to_read, limit, readers, arrived, taker);
                }
            }
        }
        self.poll_fds(&links, wait, limit, readers, arrived, taker)
    }

    /// Polls the descriptors of `links` and the waker (waiting as `wait` says when no link
    /// holds input already), then reads the ready links as [`poll_links`](Self::poll_links).
    /// With a few links (up to [`FEW_LINKS`]) it allocates nothing: a receiver whose calls come
    /// slower than it spins polls on every call.
    fn poll_fds(
        &self,
        links: &[&Arc<ServerLink>],
        wait: Wait,
        limit: usize,
        readers: &mut Readers,
        arrived: Vec<(Queued, u64)>,
        taker: Option<&mut Taker<'_>>,
    ) -> (Vec<(Queued, u64)>, Vec<LinkId>) {
        self.polled();
        let mut fds: SmallVec<[BorrowedFd<'_>; FEW_FDS]> = SmallVec::new();
        fds.push(self.waker.as_fd());
        // Which link each descriptor belongs to, and which links hold input already.
        let mut owner: SmallVec<[usize; FEW_FDS]> = SmallVec::from_elem(usize::MAX, 1);
        let mut first_fd: SmallVec<[usize; FEW_LINKS]> = SmallVec::new();
        let mut to_read: SmallVec<[bool; FEW_LINKS]> = SmallVec::from_elem(false, links.len());
        for (i, link) in links.iter().enumerate() {
            first_fd.push(fds.len());
            link.end.link().poll_fds(&mut fds);
            owner.resize(fds.len(), i);
            to_read[i] = link.end.link().prepare_poll() || link.undecoded.load(Ordering::Acquire);
        }
        let wait = if to_read.contains(&true) { Wait::NonBlocking } else { wait };
        let ready = wait_readable(&fds, wait);
        for link in links {
            link.end.link().finish_poll();
        }
        let Ok(ready) = ready else { return (arrived, Vec::new()) };
        for &index in ready.iter() {
            if index == 0 {
                self.waker.reset();
            } else {
                let i = owner[index];
                links[i].end.link().note_ready(index - first_fd[i]);
                to_read[i] = true;
            }
        }
        read_links(links, &to_read, limit, readers, arrived, taker)
    }

    /// True when a look without a poll shows that no link has anything to read: every link is
    /// shared memory with nothing in it, and no poll is due (which notices hang-ups). A
    /// receiver that does not wait then answers at once, without the leader's machinery.
    fn nothing_to_read(&self, state: &ReceiverState) -> bool {
        !self.readiness.is_active()
            && state.links.iter().all(|l| l.end.link().is_shared_memory() && !l.has_input())
            // The clock is read on every few looks only: a look costs less than reading it.
            && (self.count_look() % CLOCK_EVERY_LOOKS != 0 || !self.poll_due())
    }

    /// Like [`poll_due`](Self::poll_due), reading the clock on one look in
    /// [`CLOCK_EVERY_LOOKS`] only (false on the others): for looks that find input, which a
    /// due poll would only delay.
    fn poll_due_sampled(&self) -> bool {
        self.count_look() % CLOCK_EVERY_LOOKS == 0 && self.poll_due()
    }

    /// Counts a look; returns the count before it. A load and a store, not the locked
    /// instruction a `fetch_add` costs on every look of a busy receiver: looks are counted
    /// only by a thread that holds the endpoint's lock while nobody polls
    /// ([`nothing_to_read`](Self::nothing_to_read) and the shortest receive), or by the
    /// leader while it polls (`state.polling`, set and cleared under that lock), so no two
    /// count at once, and the lock orders one's count before the next's. (A count lost
    /// anyway would only move the next clock reading by a look.)
    fn count_look(&self) -> u32 {
        let looks = self.idle_looks.load(Ordering::Relaxed);
        self.idle_looks.store(looks.wrapping_add(1), Ordering::Relaxed);
        looks
    }

    /// Records whether the last envelope handed out was a call (see `answering`), writing the
    /// flag only when it changes: serving threads of one port would otherwise pass its cache
    /// line around on every receive.
    fn note_answering(&self, call: bool) {
        if self.answering.load(Ordering::Relaxed) != call {
            self.answering.store(call, Ordering::Relaxed);
        }
    }

    /// Spins until `ready`, looking as often as a caller waiting on this side needs (see
    /// `answering`).
    fn spin_until(&self, ready: impl FnMut() -> bool) -> bool {
        if self.answering.load(Ordering::Relaxed) {
            self.spin.run_for_answer(ready)
        } else {
            self.spin.run(ready)
        }
    }

    /// True when the last poll of the links is older than [`POLL_INTERVAL`].
    fn poll_due(&self) -> bool {
        let elapsed = self.created.elapsed().as_micros() as u64;
        elapsed.saturating_sub(self.polled_at_us.load(Ordering::Relaxed))
            >= POLL_INTERVAL.as_micros() as u64
    }

    /// Records a poll of the links now.
    fn polled(&self) {
        let elapsed = self.created.elapsed().as_micros() as u64;
        self.polled_at_us.store(elapsed, Ordering::Relaxed);
    }
}

/// The link holding input when it is the only one and every link is shared memory (looked at
/// without a system call); `None` otherwise.
fn lone_input(links: &[Arc<ServerLink>]) -> Option<&Arc<ServerLink>> {
    let mut found = None;
    for link in links {
        if !link.end.link().is_shared_memory() {
            return None;
        }
        if link.has_input() {
            if found.is_some() {
                return None;
            }
            found = Some(link);
        }
    }
    found
}

/// Reads the links marked in `to_read`, decoding at most `limit` frames of each; a `taker` is
/// handed frames only when one link is read. Returns what arrived and the links found dead.
fn read_links<L: Borrow<Arc<ServerLink>>>(
    links: &[L],
    to_read: &[bool],
    limit: usize,
    readers: &mut Readers,
    mut arrived: Vec<(Queued, u64)>,
    mut taker: Option<&mut Taker<'_>>,
) -> (Vec<(Queued, u64)>, Vec<LinkId>) {
    let mut dead = Vec::new();
    if to_read.iter().filter(|read| **read).count() > 1 {
        // Frames of one link could be outranked by another's: all of them go to the queue.
        taker = None;
    }
    for (link, _) in links.iter().zip(to_read).filter(|(_, read)| **read) {
        let link = link.borrow();
        if let Some(taker) = taker.as_deref_mut() {
            taker.took.link = Some(link.id);
        }
        if !read_link(link, readers, &mut arrived, limit, taker.as_deref_mut()) {
            link.end.close();
            dead.push(link.id);
        }
    }
    (arrived, dead)
}

impl ServerLink {
    /// What the broker granted the client.
    pub(crate) fn rights(&self) -> Rights {
        self.rights
    }

    /// True when the link has input: on its transport, or frames left in its decoder.
    fn has_input(&self) -> bool {
        self.undecoded.load(Ordering::Acquire) || self.end.link().has_input()
    }

    /// True when this link is not to be read now: its one-way messages fill the capacity
    /// (unless drop-oldest, which must read to drop), or its queued calls or bytes reached the
    /// limits that protect memory. No lock: the answer [`LinkFlow::is_full`] gave at the last
    /// change of the counts (see `full`).
    fn is_full(&self) -> bool {
        self.full.load(Ordering::Acquire)
    }

    /// Sends the link's credit if one is due (or anything unreported, when `urgent`). Never
    /// blocks: a credit that does not fit now goes with a later one (they are cumulative).
    pub(crate) fn flush_credit(&self, urgent: bool) {
        let mut flow = self.flow.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        self.send_credit(&mut flow, urgent);
    }

    /// [`flush_credit`](Self::flush_credit) under the flow lock the caller holds.
    fn send_credit(&self, flow: &mut LinkFlow, urgent: bool) {
        let Some(credit) = flow.release.poll_credit(urgent) else { return };
        let Some(guard) = self.end.enter(Wait::NonBlocking) else { return };
        let mut message = Message::new(credit.to_bytes().to_vec());
        if guard.write(FrameKind::Credit, &mut message, 0, Wait::NonBlocking).is_ok() {
            flow.release.credit_sent(credit);
        }
    }
}

impl Readers {
    /// Adds a reader for a new link `id` whose frames are at most `max` bytes.
    fn add(&mut self, id: LinkId, max: u32) {
        self.readers.push(LinkReader { id, decoder: FrameDecoder::new(max) });
    }

    /// The reader of `link`; a fresh one if it has none (which `add_link` prevents: it adds
    /// one with every link, under the lock the reader of the links holds or gives them back
    /// under).
    fn of(&mut self, link: &ServerLink) -> &mut LinkReader {
        let len = self.readers.len();
        let found =
            (0..len).map(|i| (self.next + i) % len).find(|&i| self.readers[i].id == link.id);
        let index = found.unwrap_or_else(|| {
            self.add(link.id, link.max_payload);
            len
        });
        self.next = index + 1;
        &mut self.readers[index]
    }

    /// Takes back the readers a reader of the links took, keeping those added meanwhile
    /// (links added during its poll).
    fn give_back(&mut self, taken: Readers) {
        let added = std::mem::replace(self, taken);
        self.readers.extend(added.readers);
    }

    /// Forgets the readers of links gone.
    fn remove(&mut self, gone: &[LinkId]) {
        self.readers.retain(|r| !gone.contains(&r.id));
        self.next = 0;
    }
}

impl LinkFlow {
    /// See [`ServerLink::is_full`].
    fn is_full(&self, spec: &PortSpec) -> bool {
        let at_capacity = spec.overflow != Overflow::DropOldest
            && (self.messages >= spec.message_window()
                || self.bytes >= spec.byte_window().min(self.quota.queued_bytes));
        at_capacity || self.calls >= u64::from(self.quota.calls_in_flight)
    }
}

impl Shared for Queued {
    fn link(&self) -> LinkId {
        self.link.id
    }

    fn meta(&self) -> QueuedMeta {
        meta_of(self)
    }

    fn in_queue(&self) -> &[AtomicUsize; PRIORITIES] {
        &self.link.in_queue
    }
}

/// The queue's view of an envelope.
fn meta_of(queued: &Queued) -> QueuedMeta {
    let message = &queued.envelope.message;
    QueuedMeta {
        sender: queued.envelope.sender.process_id,
        msg_type: message.msg_type,
        priority: message.priority,
    }
}

/// Reads what one ready link holds into envelopes, at most `limit` of them (the rest stay in
/// its decoder); false when the link is finished (closed by the peer, or the peer broke the
/// protocol).
fn read_link(
    link: &Arc<ServerLink>,
    readers: &mut Readers,
    out: &mut Vec<(Queued, u64)>,
    limit: usize,
    mut taker: Option<&mut Taker<'_>>,
) -> bool {
    if link.end.link().is_cut() {
        // Cut here (its grant was revoked): whatever the client still writes is not read.
        return false;
    }
    // No lock: whoever reads owns the readers (see `LinkReader`).
    let decoder = &mut readers.of(link).decoder;
    let mut budget = limit;
    let first = out.len();
    if link.undecoded.load(Ordering::Acquire) {
        // Frames read before come first; the transport is read once they are all out.
        match decode_ranked(link, decoder, out, first, &mut budget, taker.as_deref_mut()) {
            Decoded::Broken => return false,
            Decoded::Limit => return true,
            Decoded::All => link.undecoded.store(false, Ordering::Release),
        }
    }
    // Keep reading while a frame is incomplete and the link has more of it (a large body
    // arrives in socket-buffer-sized pieces), then hand over what is complete.
    for _ in 0..MAX_READS_PER_TURN {
        if budget == 0 {
            link.undecoded.store(true, Ordering::Release);
            break;
        }
        if let Some(taker) = taker.as_deref_mut() {
            // What this read brings may outrank what was handed out already in this poll.
            if taker.took.taken > 0 {
                taker.open = false;
            }
        }
        match link.end.link().read_into(decoder, Wait::NonBlocking) {
            Ok(_) => {}
            Err(TransportError::WouldBlock) => break,
            Err(_) => return false,
        }
        match decode_ranked(link, decoder, out, first, &mut budget, taker.as_deref_mut()) {
            Decoded::Broken => return false,
            Decoded::Limit => {
                link.undecoded.store(true, Ordering::Release);
                break;
            }
            Decoded::All => {}
        }
        if !decoder.is_mid_frame() || link.is_full() {
            break;
        }
    }
    true
}

/// [`decode_frames`], going on past the budget when a frame left in the decoder has a higher
/// priority than one decoded since `out[first]`: what is left must never outrank what a
/// receiver is handed.
fn decode_ranked(
    link: &Arc<ServerLink>,
    decoder: &mut FrameDecoder,
    out: &mut Vec<(Queued, u64)>,
    first: usize,
    budget: &mut usize,
    mut taker: Option<&mut Taker<'_>>,
) -> Decoded {
    match decode_frames(link, decoder, out, budget, taker.as_deref_mut()) {
        Decoded::Limit => {
            let lowest = out[first..].iter().map(|(q, _)| q.envelope.message.priority).min();
            match (decoder.staged_priority(), lowest) {
                (Some(top), Some(lowest)) if top > lowest => {
                    *budget = usize::MAX;
                    decode_frames(link, decoder, out, budget, taker)
                }
                _ => Decoded::Limit,
            }
        }
        done => done,
    }
}

/// How far [`decode_frames`] went.
enum Decoded {
    /// Every complete frame is out.
    All,
    /// The budget ran out; complete frames may be left.
    Limit,
    /// The peer broke the protocol.
    Broken,
}

/// Moves complete frames out of `decoder` while `budget` lasts (each envelope takes one).
fn decode_frames(
    link: &Arc<ServerLink>,
    decoder: &mut FrameDecoder,
    out: &mut Vec<(Queued, u64)>,
    budget: &mut usize,
    mut taker: Option<&mut Taker<'_>>,
) -> Decoded {
    // Read off the link now: one clock reading for the calls of this read.
    let mut arrived = None;
    loop {
        if *budget == 0 {
            return Decoded::Limit;
        }
        match decoder.poll_frame_with(|header, body| (header, Body::received(body))) {
            Ok(Some((header, body))) => {
                let needs = match header.kind {
                    FrameKind::Oneway | FrameKind::Confirmed => Rights::SEND,
                    FrameKind::Call => Rights::CALL,
                    _ => Rights::NONE,
                };
                if !link.rights.contains(needs) {
                    // The broker did not grant this: an honest client never sends it.
                    return Decoded::Broken;
                }
                let message = if header.placement == Placement::Inline {
                    Message::received(&header, body)
                } else {
                    if !matches!(
                        header.kind,
                        FrameKind::Oneway | FrameKind::Confirmed | FrameKind::Call
                    ) {
                        return Decoded::Broken;
                    }
                    // A payload outside the client's pool, or a sealed one that is not
                    // sealed, breaks the protocol.
                    let described =
                        link.end.described(&header, &body, link.max_payload, link.read_in_place);
                    let Some(message) = described else {
                        return Decoded::Broken;
                    };
                    message
                };
                let (reply, counted, confirm, sender_dropped) = match header.kind {
                    // For one-way frames, the correlation field carries the messages the
                    // sender itself dropped since its previous frame (docs/wire-format.md).
                    FrameKind::Oneway => (None, true, false, header.correlation),
                    FrameKind::Confirmed => (None, true, true, header.correlation),
                    FrameKind::Call => (
                        Some(ReplyToken::new(
                            Arc::clone(link),
                            header.correlation,
                            *arrived.get_or_insert_with(Instant::now),
                        )),
                        false,
                        false,
                        0,
                    ),
                    // An empty credit frame from a client asks for the credit it is owed.
                    FrameKind::Credit if message.body.is_empty() => {
                        link.flush_credit(true);
                        continue;
                    }
                    // Replies and real credits never travel towards a server: the client
                    // broke the protocol.
                    FrameKind::Reply | FrameKind::ErrorReply | FrameKind::Credit => {
                        return Decoded::Broken
                    }
                };
                let envelope =
                    Envelope { message, sender: link.client, reply, lost: 0, topic: None };
                let envelope = match taker.as_deref_mut() {
                    Some(taker) => {
                        match taker.offer(envelope, counted, confirm, sender_dropped, decoder) {
                            None => {
                                *budget -= 1;
                                continue;
                            }
                            Some(envelope) => envelope,
                        }
                    }
                    None => envelope,
                };
                if out.capacity() == 0 {
                    // Room for what this poll may decode, once (an empty poll allocates none).
                    out.reserve((*budget).min(ARRIVED_CAPACITY));
                }
                out.push((
                    Queued {
                        link: Arc::clone(link),
                        envelope: Box::new(envelope),
                        counted,
                        confirm,
                    },
                    sender_dropped,
                ));
                *budget -= 1;
            }
            Ok(None) => return Decoded::All,
            // Garbage, a bad checksum or an oversized frame: drop this link only.
            Err(_) => return Decoded::Broken,
        }
    }
}

/// How long a receiver that finds its shared-memory links busy may go without polling them
/// (which notices new links and hang-ups).
const POLL_INTERVAL: Duration = Duration::from_millis(1);

/// Most links the leader spins over before polling. A look at a link costs about 15 ns, so
/// a look at 64 costs about 1 µs; a poll's wake-up costs 6 µs between threads and 50 µs
/// between processes on the VM of docs/benchmarks.md.
const SPIN_LINKS: usize = 64;

/// Links a poll gathers without an allocation: each shared-memory link has two descriptors,
/// and the waker one more.
const FEW_LINKS: usize = (FEW_FDS - 1) / 2;

/// The links a poll gathers.
type FewLinks<'a> = SmallVec<[&'a Arc<ServerLink>; FEW_LINKS]>;

/// Reads from one link before the others get a turn.
const MAX_READS_PER_TURN: usize = 64;

/// Envelopes one poll makes room for at once: a receiver taking any envelope decodes this many
/// (or as many as it takes, if more) per poll.
const ARRIVED_CAPACITY: usize = 64;

/// A receiver that does not wait and finds nothing reads the clock (for a due poll) on one
/// look in this many.
const CLOCK_EVERY_LOOKS: u32 = 16;

/// Largest read vector kept between polls (a burst that needed more gives it back).
const SCRATCH_CAPACITY: usize = 256;
