//! Ports (named receive endpoints, indirect addressing) and the inbox (direct addressing).

use std::sync::Arc;
use std::time::{Duration, Instant};

use postbox_core::{Capacity, Delivery, Overflow, PortName, PortSpec, Selector};
use postbox_transport::Wait;

use crate::error::{OpenError, RecvError, RecvTimeoutError, TryRecvError};
use crate::node::NodeShared;
use crate::receiver::{PortStats, ReceiveFailure, Receiver};
use crate::{Envelope, ProcessId};

/// Opens a named port: `node.port("calc").capacity(16).open()?`.
///
/// Without settings a port holds [`PortSpec::DEFAULT_CAPACITY`] one-way messages per link
/// and makes senders wait when a link is full.
#[derive(Debug)]
#[must_use = "a builder does nothing until open() is called"]
pub struct PortBuilder {
    node: Arc<NodeShared>,
    name: String,
    spec: PortSpec,
    read_in_place: bool,
    /// Listed as a typed service's port.
    service: bool,
}

/// A named receive endpoint owned by this node. Several threads may receive from it at once
/// (share it by reference or in an `Arc`). Dropping it releases the name and closes its links.
#[derive(Debug)]
pub struct Port {
    name: PortName,
    receiver: Arc<Receiver>,
    node: Arc<NodeShared>,
    /// Closed already (by [`close`](Self::close)).
    closed: std::sync::atomic::AtomicBool,
}

/// This node's own receive endpoint, addressed by its [`ProcessId`].
#[derive(Debug)]
pub struct Inbox {
    receiver: Arc<Receiver>,
    node: Arc<NodeShared>,
}

impl PortBuilder {
    pub(crate) fn new(node: Arc<NodeShared>, name: &str) -> Self {
        Self {
            node,
            name: name.to_owned(),
            spec: PortSpec::default(),
            read_in_place: false,
            service: false,
        }
    }

    /// Each link holds at most `messages` one-way messages not yet received; 0 makes the
    /// port a rendezvous: a send returns only once the receiver has taken the message.
    pub fn capacity(mut self, messages: u32) -> Self {
        self.spec.capacity = match messages {
            0 => Capacity::Rendezvous,
            n => Capacity::Bounded(n),
        };
        self
    }

    /// Links hold any number of messages up to `max_bytes` of bodies; past that, sends fail
    /// (or wait, or drop, by the overflow policy) instead of exhausting memory.
    pub fn unbounded(mut self, max_bytes: u64) -> Self {
        self.spec.capacity = Capacity::Unbounded { max_bytes };
        self
    }

    /// What a send does when its link is full: wait (the default), fail, or drop the link's
    /// oldest message (counted, and reported by [`Envelope::lost`]).
    pub fn overflow(mut self, overflow: Overflow) -> Self {
        self.spec.overflow = overflow;
        self
    }

    /// The largest message body the port takes; larger sends fail with `TooLarge`.
    pub fn message_size(mut self, bytes: u32) -> Self {
        self.spec.message_size = Some(bytes);
        self
    }

    /// Senders on other hosts reach the port with best-effort datagrams (telemetry): UDP
    /// beside a TCP host link, QUIC datagrams over QUIC; never resent, checksummed, never
    /// delivered twice, in each sender's order but with gaps. What is lost on the way, or
    /// dropped because the port's link from the gateway is full, is counted and reported with
    /// the next message taken ([`Envelope::lost`], [`PortStats::lost`]). Remote senders never
    /// wait for the port: their host's broker credits them itself. They may only send one-way
    /// messages, of at most [`MAX_DATAGRAM_MESSAGE`](crate::MAX_DATAGRAM_MESSAGE) bytes: calls and confirmed sends fail
    /// with `DatagramsOnly`. Nothing changes for senders on this host (docs/network.md §13).
    /// Not for a rendezvous port (`capacity(0)`), which `open` refuses.
    pub fn datagrams(mut self) -> Self {
        self.spec.delivery = Delivery::Datagrams;
        self
    }

    /// Reads large payloads that senders lend or pass through the link's pool where they lie,
    /// without copying them (see [`Connection::loan`](crate::Connection::loan)). Only for a
    /// port whose senders are trusted: a sender can still change those bytes while they are
    /// read. Without it such payloads are copied out on arrival (one copy). Sealed payloads
    /// ([`Message::sealed`](crate::Message::sealed)) are always read in place: nobody can
    /// change them.
    pub fn read_in_place(mut self) -> Self {
        self.read_in_place = true;
        self
    }

    /// The port is a typed service's: `postbox ls` lists it as a service (and describes it).
    pub(crate) fn service(mut self) -> Self {
        self.service = true;
        self
    }

    /// Registers the name with the broker and opens the port.
    ///
    /// # Errors
    /// [`OpenError::NameTaken`] when another live node holds the name,
    /// [`OpenError::InvalidName`], [`OpenError::BrokerGone`]; [`OpenError::Refused`] for a
    /// rendezvous port that asks for datagrams.
    pub fn open(self) -> Result<Port, OpenError> {
        let name = PortName::new(&self.name)?;
        if self.spec.delivery == Delivery::Datagrams && self.spec.capacity == Capacity::Rendezvous {
            return Err(OpenError::Refused(RENDEZVOUS_DATAGRAMS.to_owned()));
        }
        let receiver = Receiver::new(self.spec, self.read_in_place)
            .map_err(|e| OpenError::Refused(e.to_string()))?;
        let receiver = Arc::new(receiver);
        self.node.open_port(&name, &receiver, self.service)?;
        Ok(Port {
            name,
            receiver,
            node: self.node,
            closed: std::sync::atomic::AtomicBool::new(false),
        })
    }
}

macro_rules! receive_methods {
    () => {
        /// Waits for the next message from any sender.
        ///
        /// # Errors
        /// [`RecvError::Closed`] when the endpoint was closed.
        pub fn recv(&self) -> Result<Envelope, RecvError> {
            self.receive(Selector::ANY, Wait::Forever).map_err(|_| RecvError::Closed)
        }

        /// Takes a waiting message, if any, without blocking.
        ///
        /// # Errors
        /// [`TryRecvError::Empty`] or [`TryRecvError::Closed`].
        pub fn try_recv(&self) -> Result<Envelope, TryRecvError> {
            self.receive(Selector::ANY, Wait::NonBlocking).map_err(|f| match f {
                ReceiveFailure::Empty => TryRecvError::Empty,
                ReceiveFailure::Closed => TryRecvError::Closed,
            })
        }

        /// Waits at most `timeout` for the next message.
        ///
        /// # Errors
        /// [`RecvTimeoutError::Timeout`] or [`RecvTimeoutError::Closed`].
        pub fn recv_timeout(&self, timeout: Duration) -> Result<Envelope, RecvTimeoutError> {
            self.receive(Selector::ANY, Wait::timeout(timeout)).map_err(timeout_error)
        }

        /// Waits until `deadline` at most for the next message.
        ///
        /// # Errors
        /// [`RecvTimeoutError::Timeout`] or [`RecvTimeoutError::Closed`].
        pub fn recv_deadline(&self, deadline: Instant) -> Result<Envelope, RecvTimeoutError> {
            self.receive(Selector::ANY, Wait::Until(deadline)).map_err(timeout_error)
        }

        /// Waits for the next message from `sender` only (symmetric addressing); messages from
        /// others stay queued in their order.
        ///
        /// # Errors
        /// [`RecvError::Closed`].
        pub fn recv_from(&self, sender: ProcessId) -> Result<Envelope, RecvError> {
            self.receive(Selector::from_sender(sender), Wait::Forever)
                .map_err(|_| RecvError::Closed)
        }

        /// Like [`recv_from`](Self::recv_from), waiting at most `timeout`.
        ///
        /// # Errors
        /// [`RecvTimeoutError::Timeout`] or [`RecvTimeoutError::Closed`].
        pub fn recv_from_timeout(
            &self,
            sender: ProcessId,
            timeout: Duration,
        ) -> Result<Envelope, RecvTimeoutError> {
            self.receive(Selector::from_sender(sender), Wait::timeout(timeout))
                .map_err(timeout_error)
        }

        /// Waits for the next message `selector` picks: by sender, by type (exact, or the
        /// lowest type up to a bound, as SysV `msgrcv`), highest priority first. Messages it
        /// does not pick stay queued in their order.
        ///
        /// # Errors
        /// [`RecvError::Closed`].
        pub fn recv_matching(&self, selector: Selector) -> Result<Envelope, RecvError> {
            self.receive(selector, Wait::Forever).map_err(|_| RecvError::Closed)
        }

        /// Like [`recv_matching`](Self::recv_matching), without blocking.
        ///
        /// # Errors
        /// [`TryRecvError::Empty`] or [`TryRecvError::Closed`].
        pub fn try_recv_matching(&self, selector: Selector) -> Result<Envelope, TryRecvError> {
            self.receive(selector, Wait::NonBlocking).map_err(|f| match f {
                ReceiveFailure::Empty => TryRecvError::Empty,
                ReceiveFailure::Closed => TryRecvError::Closed,
            })
        }

        /// Like [`recv_matching`](Self::recv_matching), waiting at most `timeout`.
        ///
        /// # Errors
        /// [`RecvTimeoutError::Timeout`] or [`RecvTimeoutError::Closed`].
        pub fn recv_matching_timeout(
            &self,
            selector: Selector,
            timeout: Duration,
        ) -> Result<Envelope, RecvTimeoutError> {
            self.receive(selector, Wait::timeout(timeout)).map_err(timeout_error)
        }

        /// Waits for the next message, then takes up to `max` waiting ones (at least one)
        /// into `out` in one go; returns how many. With [`Connection::send_batch`] on the
        /// other side, the way to move many small messages (docs/benchmarks.md).
        ///
        /// [`Connection::send_batch`]: crate::Connection::send_batch
        ///
        /// # Errors
        /// [`RecvError::Closed`].
        pub fn recv_batch(&self, out: &mut Vec<Envelope>, max: usize) -> Result<usize, RecvError> {
            self.receive_batch(Wait::Forever, out, max).map_err(|_| RecvError::Closed)
        }

        /// Like [`recv_batch`](Self::recv_batch), without blocking.
        ///
        /// # Errors
        /// [`TryRecvError::Empty`] or [`TryRecvError::Closed`].
        pub fn try_recv_batch(
            &self,
            out: &mut Vec<Envelope>,
            max: usize,
        ) -> Result<usize, TryRecvError> {
            self.receive_batch(Wait::NonBlocking, out, max).map_err(|f| match f {
                ReceiveFailure::Empty => TryRecvError::Empty,
                ReceiveFailure::Closed => TryRecvError::Closed,
            })
        }

        /// Like [`recv_batch`](Self::recv_batch), waiting at most `timeout` for the first.
        ///
        /// # Errors
        /// [`RecvTimeoutError::Timeout`] or [`RecvTimeoutError::Closed`].
        pub fn recv_batch_timeout(
            &self,
            out: &mut Vec<Envelope>,
            max: usize,
            timeout: Duration,
        ) -> Result<usize, RecvTimeoutError> {
            self.receive_batch(Wait::timeout(timeout), out, max).map_err(timeout_error)
        }

        /// Like [`recv_batch`](Self::recv_batch), without blocking the thread (tokio).
        ///
        /// # Errors
        /// [`RecvError::Closed`].
        pub async fn recv_batch_async(
            &self,
            out: &mut Vec<Envelope>,
            max: usize,
        ) -> Result<usize, RecvError> {
            let node = &self.node;
            self.receiver
                .recv_batch_async(Selector::ANY, &|link| node.report_link_closed(link), max, out)
                .await
                .map_err(|_| RecvError::Closed)
        }

        /// Waits for the next message without blocking the thread (tokio): readiness of the
        /// links is awaited, no thread is spent. Usable beside the blocking forms.
        ///
        /// # Errors
        /// [`RecvError::Closed`].
        pub async fn recv_async(&self) -> Result<Envelope, RecvError> {
            self.recv_matching_async(Selector::ANY).await
        }

        /// Like [`recv_matching`](Self::recv_matching), without blocking the thread (tokio).
        ///
        /// # Errors
        /// [`RecvError::Closed`].
        pub async fn recv_matching_async(&self, selector: Selector) -> Result<Envelope, RecvError> {
            let node = &self.node;
            self.receiver
                .recv_async(selector, &|link| node.report_link_closed(link))
                .await
                .map_err(|_| RecvError::Closed)
        }

        /// The endpoint's counters: queued messages, messages lost to drop-oldest, links.
        #[must_use]
        pub fn stats(&self) -> PortStats {
            self.receiver.stats()
        }

        /// Links currently open to this endpoint (one per connected sender).
        #[must_use]
        pub fn connection_count(&self) -> usize {
            self.receiver.link_count()
        }

        fn receive_batch(
            &self,
            wait: Wait,
            out: &mut Vec<Envelope>,
            max: usize,
        ) -> Result<usize, ReceiveFailure> {
            let node = &self.node;
            self.receiver.recv_batch(
                Selector::ANY,
                wait,
                &|link| node.report_link_closed(link),
                max,
                out,
            )
        }

        fn receive(&self, selector: Selector, wait: Wait) -> Result<Envelope, ReceiveFailure> {
            let node = &self.node;
            self.receiver.recv(selector, wait, &|link| node.report_link_closed(link))
        }
    };
}

impl Port {
    receive_methods!();

    /// How the port buffers.
    #[must_use]
    pub fn spec(&self) -> PortSpec {
        self.receiver.spec()
    }

    /// The port's name.
    #[must_use]
    pub fn name(&self) -> &str {
        self.name.as_str()
    }

    /// Closes the port now, as dropping it would: receivers blocked on it wake with `Closed`,
    /// its links close, and the name is released. (For a typed server stopping its threads.)
    pub(crate) fn close(&self) {
        if self.closed.swap(true, std::sync::atomic::Ordering::AcqRel) {
            return;
        }
        for link in self.receiver.close() {
            self.node.report_link_closed(link);
        }
        let mut receivers = self.node.lock_receivers();
        if receivers
            .get(&self.name)
            .is_some_and(|w| std::ptr::eq(w.as_ptr(), Arc::as_ptr(&self.receiver)))
        {
            receivers.remove(&self.name);
        }
        drop(receivers);
        self.node.close_port(&self.name);
    }
}

impl Inbox {
    pub(crate) fn new(receiver: Arc<Receiver>, node: Arc<NodeShared>) -> Self {
        Self { receiver, node }
    }

    receive_methods!();
}

impl Drop for Port {
    fn drop(&mut self) {
        self.close();
    }
}

fn timeout_error(failure: ReceiveFailure) -> RecvTimeoutError {
    match failure {
        ReceiveFailure::Empty => RecvTimeoutError::Timeout,
        ReceiveFailure::Closed => RecvTimeoutError::Closed,
    }
}

/// Why a rendezvous port cannot ask for datagrams.
const RENDEZVOUS_DATAGRAMS: &str =
    "a rendezvous port cannot take datagrams: a best-effort send cannot wait for the receiver";
