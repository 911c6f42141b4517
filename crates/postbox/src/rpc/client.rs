//! The client side of a typed service: binding (the schema check) and calls, for the stubs
//! `#[postbox::service]` generates.

use std::borrow::Cow;
use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock, Weak};
use std::time::{Duration, Instant};

use postbox_core::{AccessDenied, Operation, PortName, Rights, Target};

use postbox_rpc::{
    BindError, ReplyStatus, RequestFlags, RequestHeader, RequestKind, RpcError, ServiceSchema,
    MAX_METHOD_NAME, NO_DEADLINE, RPC_CONTROL_MSG_TYPE, RPC_MSG_TYPE,
};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::client_link::{CallRequest, RequestBytes};
use crate::error::{CallError, ConnectError, SendError};
use crate::node::NodeShared;
use crate::rpc::{codec, context};
use crate::{spare, Connection, Message, Node};

/// A connection to a typed service whose schema matched the client's at bind time. Cheap to
/// clone; usable from many threads, with many calls in flight (each matched to its reply).
#[derive(Debug, Clone)]
pub struct Client {
    /// The link in use; replaced when a retry finds it broken.
    slot: Arc<LinkSlot>,
    schema: Arc<ServiceSchema>,
    /// Per method: whether its result, and its error, must be checked before serde decodes
    /// them (shapes that could make serde recurse or loop without bound), found once here.
    reply_checks: Arc<[[bool; 2]]>,
    timeout: Option<Duration>,
    retry: Option<Retry>,
    /// To connect again: the node, and the service's port name.
    node: Weak<NodeShared>,
    name: String,
}

/// The link a client calls on, shared by its clones: the one it bound with, until a retry
/// replaces it.
///
/// Every call reads it, so the link bound with is read without a lock or a reference count
/// (one load of `replaced`); only after a replacement do calls take the lock and a clone.
#[derive(Debug)]
struct LinkSlot {
    /// The link bound with: the one in use while `replaced` is false.
    first: Connection,
    /// Set, for good, once a retry replaced the link (after `current` holds the new one).
    replaced: AtomicBool,
    /// The link in use (`first` until replaced).
    current: RwLock<Connection>,
}

/// How calls are retried when their answer does not come.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Retry {
    attempts: u32,
    per_attempt: Duration,
}

impl Client {
    /// Connects to the service served on port `name` and checks that it offers every method
    /// of `schema` with the same shapes.
    ///
    /// # Errors
    /// [`BindError`]: `NoSuchService`, `TypeMismatch` naming the method, `Describe` when the
    /// port does not answer as a typed service.
    pub fn bind(node: &Node, name: &str, schema: &ServiceSchema) -> Result<Self, BindError> {
        let client = Self::connect(node, name, schema)?;
        let reply = client.link().call_timeout(describe_request(), DESCRIBE_TIMEOUT);
        client.finish_bind(reply.map_err(call_error))
    }

    /// Like [`bind`](Self::bind), without blocking the thread (tokio).
    ///
    /// # Errors
    /// As [`bind`](Self::bind).
    pub async fn bind_async(
        node: &Node,
        name: &str,
        schema: &ServiceSchema,
    ) -> Result<Self, BindError> {
        let client = Self::connect(node, name, schema)?;
        let link = client.link();
        let call = link.call_async(describe_request());
        let reply = match tokio::time::timeout(DESCRIBE_TIMEOUT, call).await {
            Ok(reply) => reply.map_err(call_error),
            Err(_) => Err(RpcError::Timeout),
        };
        client.finish_bind(reply)
    }

    /// Every call waits at most `timeout` for its answer (by default there is no limit,
    /// except a deadline inherited from the call being served, see [`context`]).
    ///
    /// [`context`]: crate::rpc::context
    #[must_use]
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Retries a call whose answer does not come — an attempt that times out, a link that
    /// breaks (connecting again) — until `attempts` attempts in all, each waiting at most
    /// `per_attempt` (and all within the call's deadline). Every attempt carries the same call
    /// id, and the server answers a retry from its reply cache, or when the first attempt,
    /// still running, ends: the method runs at most once (unless the server restarted, or
    /// forgot the call among more than 4096 later ones).
    #[must_use]
    pub fn with_retries(mut self, attempts: u32, per_attempt: Duration) -> Self {
        self.retry = Some(Retry { attempts: attempts.max(1), per_attempt });
        self
    }

    /// The connection in use (a retry may replace it).
    #[must_use]
    pub fn connection(&self) -> Connection {
        self.link()
    }

    fn link(&self) -> Connection {
        self.slot.link().into_owned()
    }

    fn connect(node: &Node, name: &str, schema: &ServiceSchema) -> Result<Self, BindError> {
        let port = PortName::new(name).map_err(|e| BindError::Refused(e.to_string()))?;
        let connection = node
            .shared()
            .connect(Target::Port(port), Rights::ALL)
            .map_err(|e| connect_error(e, name))?;
        Ok(Self {
            slot: Arc::new(LinkSlot::new(connection)),
            reply_checks: reply_checks(schema),
            schema: Arc::new(schema.clone()),
            timeout: Some(DESCRIBE_TIMEOUT),
            retry: None,
            node: Arc::downgrade(node.shared()),
            name: name.to_owned(),
        })
    }

    /// After `broken` (a link in use) failed: the link for the next attempt, connecting again
    /// if it is closed (unless another thread did already).
    fn reconnect(&self, broken: &Connection) -> Option<Connection> {
        let mut current = self.slot.current.write().unwrap_or_else(PoisonError::into_inner);
        if !current.is_closed() || !Connection::same_link(&current, broken) {
            return Some(current.clone());
        }
        let node = self.node.upgrade()?;
        let name = PortName::new(&self.name).ok()?;
        *current = node.connect(Target::Port(name), Rights::ALL).ok()?;
        self.slot.replaced.store(true, Ordering::Release);
        Some(current.clone())
    }

    /// After an attempt on `link` failed with `error`: the error to return, or (counting the
    /// next attempt) the link to try again on, or `None` when nobody serves the name just now
    /// (a server restarting) and the next attempt should come after [`backoff`](Self::backoff).
    fn retry_after<E>(
        &self,
        error: CallError,
        attempt: &mut u32,
        deadline: Option<Instant>,
        link: &Connection,
    ) -> Result<Option<Connection>, RpcError<E>> {
        if *attempt >= self.attempts() || !retryable(&error, deadline) {
            return Err(call_error(error).map_remote(|n| match n {}));
        }
        *attempt += 1;
        Ok(self.reconnect(link))
    }

    /// How long to wait before an attempt after connecting again failed: a tenth of an
    /// attempt's time, at most 100 ms, and never past the call's deadline.
    fn backoff(&self, deadline: Option<Instant>) -> Duration {
        let wait =
            self.retry.map_or(Duration::ZERO, |r| (r.per_attempt / 10).min(RECONNECT_BACKOFF));
        deadline.map_or(wait, |d| wait.min(d.saturating_duration_since(Instant::now())))
    }

    /// How many attempts a call makes.
    fn attempts(&self) -> u32 {
        self.retry.map_or(1, |r| r.attempts)
    }

    /// The deadline of an attempt starting now, within the call's.
    fn attempt_deadline(&self, deadline: Option<Instant>) -> Option<Instant> {
        let Some(retry) = self.retry else { return deadline };
        // A wait too long for the clock is no limit at all.
        let Some(attempt) = Instant::now().checked_add(retry.per_attempt) else { return deadline };
        Some(deadline.map_or(attempt, |d| d.min(attempt)))
    }

    /// Calls the `method`-th method of the schema with `args` (a tuple) and decodes its
    /// result: `T`, or the application error `E`.
    ///
    /// The arguments are dropped while the reply is awaited, and the thread's spare buffers
    /// refilled then (see `spare`): neither delays the call.
    ///
    /// # Errors
    /// [`RpcError`].
    pub fn call<A, T, E>(&self, method: usize, args: A) -> Result<T, RpcError<E>>
    where
        A: Serialize,
        T: DeserializeOwned,
        E: DeserializeOwned,
    {
        let (deadline, with_deadline) = self.call_deadline();
        let room = self.request_room(method);
        let on_reply = |reply: &mut Message| {
            self.check_reply(method, reply)?;
            decode_reply(reply)
        };
        if self.retry.is_none() {
            // One attempt, the usual case: a request that fits is built on the stack and
            // written from there (no buffer, no message).
            let mut stack = [0u8; STACK_REQUEST];
            if let Some(len) = self.request_on_stack(method, with_deadline, &args, &mut stack)? {
                set_deadline(&mut stack[..len], deadline);
                let request = RequestBytes { msg_type: RPC_MSG_TYPE, body: &stack[..len] };
                let while_waiting = move || {
                    drop(args);
                    // One buffer for the reply.
                    spare::stock(1, room);
                };
                return self.exchange_once(request, deadline, while_waiting, on_reply);
            }
        }
        let body =
            self.request(RequestKind::Call, method, self.call_flags(), with_deadline, &args)?;
        let while_waiting = move || {
            drop(args);
            // One buffer for the reply, one for the next request.
            spare::stock(2, room);
        };
        self.exchange(body, deadline, while_waiting, on_reply)
    }

    /// Like [`call`](Self::call), without blocking the thread (tokio). Dropping the future
    /// forgets the call.
    ///
    /// # Errors
    /// [`RpcError`].
    pub async fn call_async<A, T, E>(&self, method: usize, args: A) -> Result<T, RpcError<E>>
    where
        A: Serialize,
        T: DeserializeOwned,
        E: DeserializeOwned,
    {
        // Dropped before its answer, an async call sends a cancel: the server registers it.
        let flags = self.call_flags() | RequestFlags::CANCELLABLE;
        let (deadline, with_deadline) = self.call_deadline();
        let body = self.request(RequestKind::Call, method, flags, with_deadline, &args)?;
        drop(args);
        let mut reply = self.exchange_async(body, deadline).await?;
        self.check_reply(method, &reply)?;
        decode_reply(&mut reply)
    }

    /// Calls the method named `method` with arguments already encoded (postcard, as the
    /// schema's shapes say) and returns its result encoded: for tools that build values from
    /// the schema, such as `postbox call`. An application error comes back as
    /// `Remote(bytes)`.
    ///
    /// # Errors
    /// [`RpcError`]; `UnknownMethod` when the schema has no such method, `BadRequest` when its
    /// name is longer than a request carries ([`MAX_METHOD_NAME`]).
    pub fn call_encoded(&self, method: &str, args: &[u8]) -> Result<Vec<u8>, RpcError<Vec<u8>>> {
        let Some(index) = self.schema.methods.iter().position(|m| m.name == method) else {
            return Err(RpcError::UnknownMethod(method.to_owned()));
        };
        let (deadline, with_deadline) = self.call_deadline();
        let mut body = self.header(RequestKind::Call, index, self.call_flags(), with_deadline)?;
        body.extend_from_slice(args);
        self.exchange(
            body,
            deadline,
            || {},
            |reply| {
                let (status, payload) = ReplyStatus::decode(reply.body())
                    .map_err(|e| RpcError::Decode(e.to_string()))?;
                match status {
                    ReplyStatus::Ok => Ok(payload.to_vec()),
                    ReplyStatus::Err => Err(RpcError::Remote(payload.to_vec())),
                    _ => decode_reply::<(), Vec<u8>>(reply).map(|()| Vec::new()),
                }
            },
        )
    }

    /// The service's schema: the client's own definition, or the server's for a client made
    /// by [`describe`](Self::describe).
    #[must_use]
    pub fn schema(&self) -> &ServiceSchema {
        &self.schema
    }

    /// Connects to the typed service served on `name` and takes its schema as the server
    /// describes it, without checking it against any definition: for tools that build
    /// arguments from the schema ([`call_encoded`](Self::call_encoded)).
    ///
    /// # Errors
    /// As [`bind`](Self::bind), without `TypeMismatch`.
    pub fn describe(node: &Node, name: &str) -> Result<Self, BindError> {
        let empty = ServiceSchema { version: 0, name: String::new(), methods: Vec::new() };
        let client = Self::connect(node, name, &empty)?;
        let reply = client.link().call_timeout(describe_request(), DESCRIBE_TIMEOUT);
        let server = server_schema(reply.map_err(call_error))?;
        Ok(Self {
            reply_checks: reply_checks(&server),
            schema: Arc::new(server),
            timeout: None,
            ..client
        })
    }

    /// Sends the request `body` (its deadline field, if any, still to be set) as a call that
    /// ends at `deadline`, with retries (each attempt with the deadline it has), and returns
    /// what `on_reply` makes of the reply. `while_waiting` runs once, while the reply of the
    /// first attempt written is awaited; it is only dropped when no attempt is written.
    ///
    /// The reply is read where it was received (`on_reply` borrows it): a message moved right
    /// after it was built is read back before the processor can forward its stores.
    fn exchange<R, E>(
        &self,
        body: Vec<u8>,
        deadline: Option<Instant>,
        while_waiting: impl FnOnce(),
        on_reply: impl FnOnce(&mut Message) -> Result<R, RpcError<E>>,
    ) -> Result<R, RpcError<E>> {
        if self.retry.is_none() {
            // One attempt, the usual case: nothing kept for a retry.
            return self.exchange_once(
                request_message(body, deadline),
                deadline,
                while_waiting,
                on_reply,
            );
        }
        let mut link = self.slot.link();
        let mut attempt = 1;
        let mut body = Some(body);
        let mut while_waiting = Some(while_waiting);
        loop {
            let attempt_deadline = self.attempt_deadline(deadline);
            let request = self.attempt(&mut body, attempt, attempt_deadline);
            let mut reply = link.call_while(request, attempt_deadline, || {
                if let Some(f) = while_waiting.take() {
                    f();
                }
            });
            match reply {
                Ok(ref mut reply) => return on_reply(reply),
                Err(error) => match self.retry_after(error, &mut attempt, deadline, &link)? {
                    Some(next) => link = Cow::Owned(next),
                    None => std::thread::sleep(self.backoff(deadline)),
                },
            }
        }
    }

    /// One attempt of [`exchange`](Self::exchange), with `request` as it is (its deadline
    /// field set), on the link in use.
    #[inline]
    fn exchange_once<R, E>(
        &self,
        request: impl CallRequest,
        deadline: Option<Instant>,
        while_waiting: impl FnOnce(),
        on_reply: impl FnOnce(&mut Message) -> Result<R, RpcError<E>>,
    ) -> Result<R, RpcError<E>> {
        let replaced;
        let link = match self.slot.first_link() {
            Some(first) => first,
            None => {
                replaced = self.slot.link();
                &*replaced
            }
        };
        match link.call_while(request, deadline, while_waiting) {
            Ok(ref mut reply) => on_reply(reply),
            Err(error) => Err(call_error(error).map_remote(|n| match n {})),
        }
    }

    /// Like [`exchange`](Self::exchange), without blocking the thread (tokio).
    /// Dropped before it ends, it tells the server (the call is cancelled).
    async fn exchange_async<E>(
        &self,
        body: Vec<u8>,
        deadline: Option<Instant>,
    ) -> Result<Message, RpcError<E>> {
        let mut link = self.link();
        let mut attempt = 1;
        let mut cancel = CancelOnDrop {
            link: Some(link.clone()),
            call_id: RequestHeader::call_id_of(&body).unwrap_or(0),
        };
        let mut body = Some(body);
        loop {
            let attempt_deadline = self.attempt_deadline(deadline);
            let request = self.attempt(&mut body, attempt, attempt_deadline);
            let call = link.call_async(request);
            let reply = match attempt_deadline {
                Some(deadline) => match tokio::time::timeout_at(deadline.into(), call).await {
                    Ok(reply) => reply,
                    Err(_) => Err(CallError::Timeout(None)),
                },
                None => call.await,
            };
            match reply {
                Ok(reply) => {
                    cancel.link = None;
                    return Ok(reply);
                }
                Err(error) => {
                    let next = self.retry_after(error, &mut attempt, deadline, &link);
                    match next.inspect_err(|_| cancel.link = None)? {
                        Some(next) => link = next,
                        None => tokio::time::sleep(self.backoff(deadline)).await,
                    }
                    cancel.link = Some(link.clone());
                }
            }
        }
    }

    /// The message of attempt `attempt`: the request body with its deadline; the body itself
    /// on the last attempt, a copy before (a retry sends it again).
    fn attempt(
        &self,
        body: &mut Option<Vec<u8>>,
        attempt: u32,
        deadline: Option<Instant>,
    ) -> Message {
        let bytes = if attempt < self.attempts() {
            body.clone().unwrap_or_default()
        } else {
            body.take().unwrap_or_default()
        };
        request_message(bytes, deadline)
    }

    /// Sends the `method`-th method (a one-way method) with `args`: returns once the request
    /// is in the link; nothing answers.
    ///
    /// # Errors
    /// [`RpcError::PeerDied`] when the server is gone, [`RpcError::TooLarge`];
    /// [`RpcError::BadRequest`] when the request cannot be built (arguments serde refuses, a
    /// method name longer than a request carries): nothing is sent.
    pub fn send<A: Serialize + ?Sized>(&self, method: usize, args: &A) -> Result<(), RpcError> {
        let request = self.oneway(method, args)?;
        self.link().send(request).map_err(send_error)
    }

    /// Like [`send`](Self::send), without blocking the thread (tokio).
    ///
    /// # Errors
    /// As [`send`](Self::send).
    pub async fn send_async<A: Serialize + ?Sized>(
        &self,
        method: usize,
        args: &A,
    ) -> Result<(), RpcError> {
        let request = self.oneway(method, args)?;
        self.link().send_async(request).await.map_err(send_error)
    }

    /// The deadline of a call made now: the client's timeout, or the deadline of the call
    /// this thread is serving, whichever comes first.
    fn deadline(&self) -> Option<Instant> {
        let own = self.timeout.and_then(|t| Instant::now().checked_add(t));
        match (own, context::inherited_deadline()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// The deadline of a call made now ([`deadline`](Self::deadline)), and whether its
    /// requests carry a deadline field: when the call has a deadline, or its attempts have one
    /// each (a one-way request, never retried, carries it only with a deadline).
    fn call_deadline(&self) -> (Option<Instant>, bool) {
        let deadline = self.deadline();
        (deadline, deadline.is_some() || self.retry.is_some())
    }

    /// The body of a request for the `method`-th method with `args`, its deadline field (when
    /// `with_deadline`) still to be set ([`request_message`]).
    fn request<A, E>(
        &self,
        kind: RequestKind,
        method: usize,
        flags: u8,
        with_deadline: bool,
        args: &A,
    ) -> Result<Vec<u8>, RpcError<E>>
    where
        A: Serialize + ?Sized,
    {
        let mut body = self.header(kind, method, flags, with_deadline)?;
        match codec::append(args, &mut body) {
            Ok(()) => Ok(body),
            Err(e) => Err(RpcError::BadRequest(e.to_string())),
        }
    }

    /// The request of a call of the `method`-th method with `args`, written at the front of
    /// `stack` (its deadline field, when `with_deadline`, still to be set); its length, or
    /// `None` when it does not fit (it is then built in a buffer, [`request`](Self::request)).
    ///
    /// # Errors
    /// As [`header`](Self::header), and `BadRequest` for arguments serde refuses.
    #[inline]
    fn request_on_stack<A, E>(
        &self,
        method: usize,
        with_deadline: bool,
        args: &A,
        stack: &mut [u8],
    ) -> Result<Option<usize>, RpcError<E>>
    where
        A: Serialize + ?Sized,
    {
        let header =
            self.request_header(RequestKind::Call, method, self.call_flags(), with_deadline)?;
        let Some(at) = header.encode_into(stack) else { return Ok(None) };
        match codec::encode_into(args, &mut stack[at..]) {
            Ok(encoded) => Ok(Some(at + encoded)),
            Err(postcard::Error::SerializeBufferFull) => Ok(None),
            Err(e) => Err(RpcError::BadRequest(e.to_string())),
        }
    }

    /// A one-way request for the `method`-th method, with the deadline of now.
    fn oneway<A: Serialize + ?Sized>(&self, method: usize, args: &A) -> Result<Message, RpcError> {
        let deadline = self.deadline();
        let body = self.request(RequestKind::Oneway, method, 0, deadline.is_some(), args)?;
        Ok(self.attempt(&mut Some(body), u32::MAX, deadline))
    }

    /// The flags of a call of this client: whether it may retry (the server keeps the reply).
    fn call_flags(&self) -> u8 {
        if self.attempts() > 1 {
            RequestFlags::RETRIES
        } else {
            0
        }
    }

    /// The room a request for the `method`-th method is built in: its header and small
    /// arguments (a buffer that grows while the arguments are encoded costs a reallocation and
    /// a copy on every call).
    fn request_room(&self, method: usize) -> usize {
        HEADER_ROOM + self.schema.methods[method].name.len() + SMALL_ARGUMENTS
    }

    /// The request header for the `method`-th method, with a new call id, and a deadline field
    /// (1 ns until [`request_message`] sets it) when `with_deadline`.
    ///
    /// A method whose name is too long for a request (only a schema built by hand, or one a
    /// server described, can have one: `#[postbox::service]` refuses them) cannot be called:
    /// `BadRequest` says so.
    #[inline]
    fn header<E>(
        &self,
        kind: RequestKind,
        method: usize,
        flags: u8,
        with_deadline: bool,
    ) -> Result<Vec<u8>, RpcError<E>> {
        let header = self.request_header(kind, method, flags, with_deadline)?;
        // A buffer the thread kept when it has one (see `spare`).
        let mut body = spare::take(self.request_room(method));
        header.encode(&mut body);
        Ok(body)
    }

    /// The request header for the `method`-th method, with a new call id, and a deadline field
    /// (1 ns until it is set) when `with_deadline`; `BadRequest` for a name too long (see
    /// [`header`](Self::header)).
    #[inline]
    fn request_header<E>(
        &self,
        kind: RequestKind,
        method: usize,
        flags: u8,
        with_deadline: bool,
    ) -> Result<RequestHeader<'_>, RpcError<E>> {
        let schema = &self.schema.methods[method];
        if schema.name.len() > MAX_METHOD_NAME {
            return Err(name_too_long(&schema.name));
        }
        Ok(RequestHeader {
            kind,
            flags,
            call_id: next_call_id(),
            method_hash: schema.hash,
            deadline_ns: u64::from(with_deadline),
            method: schema.name.as_str().into(),
        })
    }

    /// Checks a reply's payload against the `method`-th method's result or error shape, when
    /// that shape could make serde recurse or loop without bound on a hostile server's bytes.
    fn check_reply<E>(&self, method: usize, reply: &Message) -> Result<(), RpcError<E>> {
        let [check_ok, check_err] = self.reply_checks[method];
        if !check_ok && !check_err {
            return Ok(());
        }
        let schema = &self.schema.methods[method];
        let Ok((status, payload)) = ReplyStatus::decode(reply.body()) else { return Ok(()) };
        let shape = match status {
            ReplyStatus::Ok if check_ok => Some(&schema.ok),
            ReplyStatus::Err if check_err => schema.err.as_ref(),
            _ => None,
        };
        shape.map_or(Ok(()), |shape| {
            postbox_rpc::json::check(payload, shape).map_err(|e| RpcError::Decode(e.to_string()))
        })
    }

    fn finish_bind(self, reply: Result<Message, RpcError>) -> Result<Self, BindError> {
        let server = server_schema(reply)?;
        self.schema.check_against(&server).map_err(BindError::TypeMismatch)?;
        Ok(Self { timeout: None, ..self })
    }
}

impl LinkSlot {
    fn new(link: Connection) -> Self {
        Self { current: RwLock::new(link.clone()), first: link, replaced: AtomicBool::new(false) }
    }

    /// The link bound with, while it is the one in use (no reference count, no lock).
    #[inline]
    fn first_link(&self) -> Option<&Connection> {
        (!self.replaced.load(Ordering::Acquire)).then_some(&self.first)
    }

    /// The link in use.
    fn link(&self) -> Cow<'_, Connection> {
        if !self.replaced.load(Ordering::Acquire) {
            return Cow::Borrowed(&self.first);
        }
        Cow::Owned(self.current.read().unwrap_or_else(PoisonError::into_inner).clone())
    }
}

/// An async call in flight: dropped while it still holds its link (the caller stopped waiting),
/// it sends the server a cancel request for the call (best effort, never waiting).
struct CancelOnDrop {
    link: Option<Connection>,
    call_id: u64,
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        let Some(link) = self.link.take() else { return };
        let _ = link.try_send(control_request(RequestKind::Cancel, self.call_id));
    }
}

/// The message of a request `body` sent now, with the time left before `deadline` in its
/// deadline field. The field is there when the call has a deadline (`call_deadline`); an
/// attempt without one after all (a per-attempt time too long for the clock) sends
/// [`NO_DEADLINE`], which the server reads as none.
fn request_message(mut body: Vec<u8>, deadline: Option<Instant>) -> Message {
    set_deadline(&mut body, deadline);
    // A small request is copied into the message, and the buffer kept for the next.
    codec::message_of(body).with_type(RPC_MSG_TYPE)
}

/// Sets the deadline field of the request `body`, when it has one: the time left before
/// `deadline` (see [`request_message`]).
fn set_deadline(body: &mut [u8], deadline: Option<Instant>) {
    let left = deadline.map_or(NO_DEADLINE, |d| {
        // A deadline already passed still says "there is one" (1 ns).
        d.saturating_duration_since(Instant::now()).as_nanos().clamp(1, (NO_DEADLINE - 1).into())
            as u64
    });
    let set = RequestHeader::set_deadline(body, left);
    debug_assert!(set || deadline.is_none(), "a request with a deadline has its field");
}

/// A describe or cancel request (for call `call_id`): on the control lane, which a server
/// answers while its workers are busy, ahead of the calls queued.
fn control_request(kind: RequestKind, call_id: u64) -> Message {
    let mut body = Vec::new();
    RequestHeader { kind, flags: 0, call_id, method_hash: 0, deadline_ns: 0, method: "".into() }
        .encode(&mut body);
    Message::new(body).with_type(RPC_CONTROL_MSG_TYPE).with_priority(CONTROL_PRIORITY)
}

/// A request for the service's schema.
fn describe_request() -> Message {
    control_request(RequestKind::Describe, next_call_id())
}

/// The schema a describe `reply` carries.
fn server_schema(reply: Result<Message, RpcError>) -> Result<ServiceSchema, BindError> {
    decode_reply(&mut reply.map_err(BindError::Describe)?)
        .map_err(|e: RpcError| BindError::Describe(e))
}

/// Which results and errors of `schema`'s methods must be checked before serde decodes them.
fn reply_checks(schema: &ServiceSchema) -> Arc<[[bool; 2]]> {
    schema
        .methods
        .iter()
        .map(|m| [m.ok.needs_check(), m.err.as_ref().is_some_and(|e| e.needs_check())])
        .collect()
}

/// Decodes a reply body into the method's result or its error.
#[inline]
pub(crate) fn decode_reply<T, E>(reply: &mut Message) -> Result<T, RpcError<E>>
where
    T: DeserializeOwned,
    E: DeserializeOwned,
{
    let body = reply.body();
    let (status, payload) =
        ReplyStatus::decode(body).map_err(|e| RpcError::Decode(e.to_string()))?;
    // Where the payload starts: the value may take the body over from there.
    let at = body.len() - payload.len();
    let decode_error = |e: postcard::Error| RpcError::Decode(e.to_string());
    let text = || String::from_utf8_lossy(&reply.body()[at..]).into_owned();
    match status {
        ReplyStatus::Ok => codec::decode_at(reply, at).map_err(decode_error),
        ReplyStatus::Err => {
            Err(RpcError::Remote(codec::decode_at(reply, at).map_err(decode_error)?))
        }
        ReplyStatus::TypeMismatch => Err(RpcError::TypeMismatch(text())),
        ReplyStatus::UnknownMethod => Err(RpcError::UnknownMethod(text())),
        ReplyStatus::Panicked => Err(RpcError::Panicked(text())),
        ReplyStatus::BadRequest => Err(RpcError::BadRequest(text())),
        ReplyStatus::DeadlineExceeded => Err(RpcError::DeadlineExceeded),
        ReplyStatus::Cancelled => Err(RpcError::Cancelled),
        _ => Err(RpcError::Decode(format!("unknown reply status {status:?}"))),
    }
}

/// Why a method named `name`, longer than a request's name field holds, cannot be called.
#[cold]
fn name_too_long<E>(name: &str) -> RpcError<E> {
    RpcError::BadRequest(format!(
        "a request carries method names of at most {MAX_METHOD_NAME} bytes ({name:?} has {})",
        name.len()
    ))
}

/// True when a call that failed with `error` may be tried again before `deadline`: its answer
/// did not come (the attempt timed out, or the link broke), and time is left.
fn retryable(error: &CallError, deadline: Option<Instant>) -> bool {
    let lost = matches!(
        error,
        CallError::Timeout(_)
            | CallError::PeerDied
            | CallError::NoReply
            | CallError::Disconnected(_)
    );
    lost && deadline.is_none_or(|d| Instant::now() < d)
}

fn call_error(error: CallError) -> RpcError {
    match error {
        CallError::Timeout(_) => RpcError::Timeout,
        CallError::Disconnected(_) | CallError::PeerDied | CallError::NoReply => RpcError::PeerDied,
        CallError::TooLarge { message, limit } => {
            RpcError::TooLarge { len: message.body().len(), limit }
        }
        // A typed server answers every call with a reply, or (when its reply could not go
        // out, as one over the size limit) with an error message that says why; an error
        // reply may also mean the port is served by something else.
        CallError::Remote(message) => {
            let text = message.body().get(..ERROR_TEXT).unwrap_or(message.body());
            RpcError::Decode(format!(
                "the server answered with an error message of {} bytes, not a typed reply: {}",
                message.body().len(),
                String::from_utf8_lossy(text)
            ))
        }
        CallError::ProtocolViolation(what) => RpcError::Protocol(what),
        CallError::AccessDenied { denied, .. } => RpcError::AccessDenied(denied),
        CallError::TooManyCalls { limit, .. } => RpcError::TooManyCalls { limit },
        CallError::DatagramsOnly(_) => RpcError::Protocol(
            "the service's port takes best-effort datagrams from this host: no calls".to_owned(),
        ),
    }
}

fn send_error(error: SendError) -> RpcError {
    match error {
        SendError::TooLarge { message, limit } => {
            RpcError::TooLarge { len: message.body().len(), limit }
        }
        SendError::AccessDenied { denied, .. } => RpcError::AccessDenied(denied),
        _ => RpcError::PeerDied,
    }
}

fn connect_error(error: ConnectError, name: &str) -> BindError {
    match error {
        ConnectError::NoSuchPort(_) => BindError::NoSuchService(name.to_owned()),
        ConnectError::BrokerGone => BindError::BrokerGone,
        // A typed client connects to call (and to cancel calls with one-way messages).
        ConnectError::AccessDenied(denied) => {
            BindError::AccessDenied(AccessDenied::new(Operation::Call, denied.name))
        }
        other => BindError::Refused(other.to_string()),
    }
}

/// Ids of calls: unique within this process, never reused (at-most-once).
///
/// Each thread takes a block of [`CALL_ID_BLOCK`] ids at a time: a counter every call wrote
/// would be a cache line that calling threads (and whatever shares its line, such as the
/// schema a server in this process reads for every call) take from each other on every call.
fn next_call_id() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    thread_local! {
        /// The ids this thread may still hand out: `next..end`.
        static BLOCK: Cell<(u64, u64)> = const { Cell::new((0, 0)) };
    }
    BLOCK.with(|block| {
        let (mut next, mut end) = block.get();
        if next == end {
            next = NEXT.fetch_add(CALL_ID_BLOCK, Ordering::Relaxed);
            end = next + CALL_ID_BLOCK;
        }
        block.set((next + 1, end));
        next
    })
}

/// Call ids a thread takes at a time (see [`next_call_id`]).
const CALL_ID_BLOCK: u64 = 1024;

/// The longest wait before trying to connect again during retries.
const RECONNECT_BACKOFF: Duration = Duration::from_millis(100);

/// The priority of control requests (the highest).
const CONTROL_PRIORITY: u8 = 31;

/// How long binding waits for the service to describe itself.
const DESCRIBE_TIMEOUT: Duration = Duration::from_secs(10);

/// At most this many bytes of an error message that answers a typed call are quoted in its
/// error.
const ERROR_TEXT: usize = 200;

/// The most bytes a call's request built on the stack has (`Client::request_on_stack`):
/// the header and small arguments, as a request built in a buffer reserves.
const STACK_REQUEST: usize = 256;

/// Bytes reserved for a request's header (its method name apart).
const HEADER_ROOM: usize = 40;
/// Bytes reserved for a request's arguments before they are encoded: small ones fit. With
/// the header and a name of up to 40 bytes, the buffer is small enough for the reply to be
/// received into it (`spare::copy_of`).
const SMALL_ARGUMENTS: usize = 176;
