//! Control messages between a node and its broker, one per seqpacket (`docs/wire-format.md` §3).
//!
//! ```text
//! 0 version u8 | 1 kind u8 | 2 reserved u16 (0) | 4 request u32 | 8 payload …
//! ```
//!
//! Requests carry a request number chosen by the node; the broker's answer repeats it. Notices
//! from the broker carry request 0. File descriptors (the two ends of a link) travel beside
//! [`ControlMessage::Connected`] and [`ControlMessage::IncomingConnection`] as `SCM_RIGHTS`.

use super::{put_text, DecodeError, Reader};
use crate::access::{Operation, Quota, Rights};
use crate::buffering::PortSpec;
use crate::identity::{PeerIdentity, ProcessId};
use crate::name::PortName;

/// The control protocol version this build speaks.
pub const CONTROL_VERSION: u8 = 1;
/// The largest control message, in bytes.
pub const MAX_CONTROL_LEN: usize = 64 * 1024;
/// Size of the control header in bytes.
pub const CONTROL_HEADER_LEN: usize = 8;

/// Identifies one link (connection) on a broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LinkId(pub u64);

/// What a node asks to connect to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Target {
    /// A named port (indirect addressing).
    Port(PortName),
    /// The inbox of a node (direct addressing).
    Inbox(ProcessId),
}

/// Which of the server's receive endpoints a new link feeds.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ListenTarget {
    /// One of the server's named ports.
    Port(PortName),
    /// The server's own inbox.
    Inbox,
}

/// Why the broker refused a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ControlErrorCode {
    /// Another live node holds that name.
    NameTaken,
    /// No port (or node) by that name or id.
    NoSuchPort,
    /// The name breaks the naming rules.
    InvalidName,
    /// A request before `Hello`, or a second `Hello`.
    OutOfOrder,
    /// The request could not be decoded.
    Malformed,
    /// The node does not own the port it tried to close.
    NotOwner,
    /// A per-node limit (ports, connections) was reached.
    LimitExceeded,
    /// The node the broker asked on the requester's behalf did not answer in time.
    Unanswered,
    /// A code this build does not know.
    Unknown(u8),
}

impl ControlErrorCode {
    fn to_u8(self) -> u8 {
        match self {
            Self::NameTaken => 1,
            Self::NoSuchPort => 2,
            Self::InvalidName => 3,
            Self::OutOfOrder => 4,
            Self::Malformed => 5,
            Self::NotOwner => 6,
            Self::LimitExceeded => 7,
            Self::Unanswered => 8,
            Self::Unknown(code) => code,
        }
    }

    fn from_u8(code: u8) -> Self {
        match code {
            1 => Self::NameTaken,
            2 => Self::NoSuchPort,
            3 => Self::InvalidName,
            4 => Self::OutOfOrder,
            5 => Self::Malformed,
            6 => Self::NotOwner,
            7 => Self::LimitExceeded,
            8 => Self::Unanswered,
            other => Self::Unknown(other),
        }
    }
}

/// One row of a [`ControlMessage::Listing`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortEntry {
    /// The port's name.
    pub name: PortName,
    /// The node that owns it.
    pub owner: PeerIdentity,
    /// Links currently open to it.
    pub connections: u32,
    /// What the name is.
    pub kind: EndpointKind,
}

/// What a listed name is: the three share one namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EndpointKind {
    /// A port of a node.
    Port,
    /// A mailbox, owned by the broker.
    Mailbox,
    /// A topic, owned by the broker.
    Topic,
    /// A port served by a typed service (`#[postbox::service]`): it answers describe requests
    /// with its schema.
    Service,
}

impl EndpointKind {
    /// The kind's name, as `postbox ls` prints it.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Port => "port",
            Self::Mailbox => "mailbox",
            Self::Topic => "topic",
            Self::Service => "service",
        }
    }
}

/// A control message with its request number.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ControlMessage {
    /// Node → broker, first message: admit me.
    Hello {
        /// Request number.
        request: u32,
    },
    /// Broker → node: admitted.
    Welcome {
        /// Request number of the `Hello`.
        request: u32,
        /// The node's identity as the broker saw it.
        identity: PeerIdentity,
        /// The largest message body links on this host accept.
        max_message_size: u32,
    },
    /// Node → broker: register a port name.
    OpenPort {
        /// Request number.
        request: u32,
        /// The name.
        name: PortName,
        /// How the port buffers; told to every client at connect time.
        spec: PortSpec,
        /// The port is a typed service's (listed as [`EndpointKind::Service`]).
        service: bool,
    },
    /// Node → broker: release a port name.
    ClosePort {
        /// Request number.
        request: u32,
        /// The name.
        name: PortName,
    },
    /// Node → broker: make a link to a port or an inbox.
    Connect {
        /// Request number.
        request: u32,
        /// Where to.
        target: Target,
        /// What the link should carry; the broker grants what policy allows of it.
        rights: Rights,
    },
    /// Node → broker: a link this node held is closed (for the broker's bookkeeping).
    LinkClosed {
        /// Request number (0: no answer wanted).
        request: u32,
        /// Which link.
        link: LinkId,
    },
    /// Node → broker: list the ports.
    List {
        /// Request number.
        request: u32,
    },
    /// Broker → node: the request succeeded.
    Ok {
        /// Request number answered.
        request: u32,
    },
    /// Broker → node: the link is made; its client end travels beside this message.
    Connected {
        /// Request number answered.
        request: u32,
        /// The new link.
        link: LinkId,
        /// Who serves the other end.
        server: PeerIdentity,
        /// How the port buffers: the client enforces it.
        spec: PortSpec,
        /// What the link may carry (never empty).
        rights: Rights,
        /// What the client may have waiting at the server on it.
        quota: Quota,
    },
    /// Broker → node: the ports, in name order.
    Listing {
        /// Request number answered.
        request: u32,
        /// Nodes admitted.
        nodes: u32,
        /// The ports (cut short when the message would exceed the size limit).
        ports: Vec<PortEntry>,
        /// True when `ports` was cut short.
        truncated: bool,
    },
    /// Broker → node: the request failed.
    Refused {
        /// Request number answered.
        request: u32,
        /// Why.
        code: ControlErrorCode,
        /// A human-readable detail.
        detail: String,
    },
    /// Broker → node (notice): a client connected to one of your ports; the server end of the
    /// link travels beside this message.
    IncomingConnection {
        /// The new link.
        link: LinkId,
        /// Which endpoint it feeds.
        target: ListenTarget,
        /// Who the client is (kernel credentials, broker-assigned id).
        client: PeerIdentity,
        /// What the client may send on it; the server drops a link that carries more.
        rights: Rights,
        /// What the client may have waiting here on it; the server reads no further.
        quota: Quota,
    },
    /// Broker → node: the policy does not allow the request (DESIGN.md §4).
    Denied {
        /// Request number answered.
        request: u32,
        /// What was denied.
        operation: Operation,
        /// On which name (or pattern, or `inbox/<uid>`).
        name: String,
    },
    /// Node → broker: let the node `to` connect to port `name` with `rights` whatever the
    /// policy says of it (a capability). The port's owner may grant any rights; another node
    /// only rights it holds itself.
    Grant {
        /// Request number.
        request: u32,
        /// The port.
        name: PortName,
        /// The node that receives the right.
        to: ProcessId,
        /// What its links to the port may carry.
        rights: Rights,
    },
    /// Broker → node (notice): a grant was revoked and this link was made under it. Both ends
    /// hear it; each shuts its end down at once (unlike [`LinkClosed`](Self::LinkClosed), what
    /// is still unread is not delivered).
    LinkRevoked {
        /// Which link.
        link: LinkId,
    },
    /// Node → broker: take back what was granted to `from` on port `name`, and close the links
    /// it made under the grant. Only the port's owner, or the node that granted, may revoke.
    Revoke {
        /// Request number.
        request: u32,
        /// The port.
        name: PortName,
        /// The node whose grant ends.
        from: ProcessId,
    },
    /// Node → broker: create a mailbox (a queue the broker owns, outliving its creator).
    CreateMailbox {
        /// Request number.
        request: u32,
        /// The mailbox's name.
        name: PortName,
        /// Messages it holds at most, across all senders.
        capacity: u32,
        /// Succeed if it exists already (with whatever capacity it has).
        open_existing: bool,
    },
    /// Node → broker: remove a mailbox; its queued messages are discarded.
    UnlinkMailbox {
        /// Request number.
        request: u32,
        /// The mailbox's name.
        name: PortName,
    },
    /// Node → broker: make a receiving link from a mailbox (answered by `Connected`).
    ReceiveMailbox {
        /// Request number.
        request: u32,
        /// The mailbox's name.
        name: PortName,
    },
    /// Node → broker: make a publishing link to a topic (answered by `Connected`). The topic
    /// is created if it does not exist.
    Publish {
        /// Request number.
        request: u32,
        /// The topic.
        topic: PortName,
    },
    /// Node → broker: make a subscribing link (answered by `Connected`): the broker sends
    /// every message published to a topic matching `pattern`.
    Subscribe {
        /// Request number.
        request: u32,
        /// A topic name, or a pattern: `*` stands for one `/`-separated segment, a final `**`
        /// for any number of further segments.
        pattern: String,
        /// Messages the broker keeps for this subscriber when it does not keep up.
        capacity: u32,
        /// Beyond that: drop the oldest (false) or the newest (true); either way counted.
        drop_newest: bool,
    },
    /// Node → broker: create a topic that keeps its last `history` messages for late
    /// subscribers (or change how many an existing topic keeps).
    CreateTopic {
        /// Request number.
        request: u32,
        /// The topic.
        topic: PortName,
        /// Messages kept for subscribers that join later.
        history: u32,
    },
    /// Node → broker: the live counters of a port (asked of its owner).
    Stat {
        /// Request number.
        request: u32,
        /// The port.
        name: PortName,
    },
    /// Broker → node (notice): report the counters of your port `name` for `query`.
    StatQuery {
        /// The broker's query number, repeated in the report.
        query: u32,
        /// The port.
        name: PortName,
    },
    /// Node → broker: the answer to a [`StatQuery`](Self::StatQuery); `None` when the node has
    /// no such port (any more).
    StatReport {
        /// The query answered.
        query: u32,
        /// The counters.
        counters: Option<PortCounters>,
    },
    /// Node → broker: the process id by which this host addresses node `process` of host
    /// `host` (its stand-in, docs/network.md §5), answered by [`Resolved`](Self::Resolved).
    ResolveProcess {
        /// Request number.
        request: u32,
        /// The host the node is on, as this host's configuration names it.
        host: String,
        /// The node's process id on that host.
        process: ProcessId,
    },
    /// Broker → node: the answer to [`ResolveProcess`](Self::ResolveProcess).
    Resolved {
        /// Request number answered.
        request: u32,
        /// The process id to use on this host (`send_to`, `recv_from`).
        process: ProcessId,
    },
    /// Broker → node: the answer to [`Stat`](Self::Stat).
    Stats {
        /// Request number answered.
        request: u32,
        /// The port's owner.
        owner: PeerIdentity,
        /// How the port buffers.
        spec: PortSpec,
        /// Its counters, as its owner reported them.
        counters: PortCounters,
    },
}

/// A port's live counters, as its owner reports them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PortCounters {
    /// Messages queued and not yet received (read from the links).
    pub queued: u64,
    /// Messages dropped by the drop-oldest policy since the port opened.
    pub lost: u64,
    /// Links open to the port.
    pub links: u32,
}

const HELLO: u8 = 0x01;
const OPEN_PORT: u8 = 0x02;
const CLOSE_PORT: u8 = 0x03;
const CONNECT: u8 = 0x04;
const LINK_CLOSED: u8 = 0x05;
const LIST: u8 = 0x06;
const STAT: u8 = 0x07;
const CREATE_MAILBOX: u8 = 0x09;
const PUBLISH: u8 = 0x0c;
const SUBSCRIBE: u8 = 0x0d;
const CREATE_TOPIC: u8 = 0x0e;
const UNLINK_MAILBOX: u8 = 0x0a;
const RECEIVE_MAILBOX: u8 = 0x0b;
const STAT_REPORT: u8 = 0x08;
const STATS: u8 = 0x86;
const STAT_QUERY: u8 = 0xc2;
const WELCOME: u8 = 0x81;
const OK: u8 = 0x82;
const CONNECTED: u8 = 0x83;
const LISTING: u8 = 0x84;
const REFUSED: u8 = 0x85;
const INCOMING_CONNECTION: u8 = 0xc1;
const DENIED: u8 = 0x87;
const GRANT: u8 = 0x0f;
const REVOKE: u8 = 0x10;
const LINK_REVOKED: u8 = 0xc3;
const RESOLVE_PROCESS: u8 = 0x11;
const RESOLVED: u8 = 0x88;

/// Bytes of an encoded [`PeerIdentity`].
const IDENTITY_LEN: usize = 16;
/// The longest host name a [`ControlMessage::ResolveProcess`] carries (host names are at most
/// 63 bytes; a longer one is cut when encoded and refused when decoded).
const MAX_HOST_LEN: usize = 255;

impl ControlMessage {
    /// The request number this message carries (0 for notices).
    #[must_use]
    pub fn request(&self) -> u32 {
        match self {
            Self::Hello { request }
            | Self::Welcome { request, .. }
            | Self::OpenPort { request, .. }
            | Self::ClosePort { request, .. }
            | Self::Connect { request, .. }
            | Self::LinkClosed { request, .. }
            | Self::List { request }
            | Self::Ok { request }
            | Self::Connected { request, .. }
            | Self::Listing { request, .. }
            | Self::Refused { request, .. }
            | Self::Stat { request, .. }
            | Self::CreateMailbox { request, .. }
            | Self::UnlinkMailbox { request, .. }
            | Self::ReceiveMailbox { request, .. }
            | Self::Publish { request, .. }
            | Self::Subscribe { request, .. }
            | Self::CreateTopic { request, .. }
            | Self::Stats { request, .. }
            | Self::Denied { request, .. }
            | Self::Grant { request, .. }
            | Self::Revoke { request, .. }
            | Self::ResolveProcess { request, .. }
            | Self::Resolved { request, .. } => *request,
            Self::IncomingConnection { .. }
            | Self::StatQuery { .. }
            | Self::StatReport { .. }
            | Self::LinkRevoked { .. } => 0,
        }
    }

    /// True for the two messages that carry a file descriptor beside them.
    #[must_use]
    pub fn carries_fd(&self) -> bool {
        matches!(self, Self::Connected { .. } | Self::IncomingConnection { .. })
    }

    /// Appends the encoded message to `buf`. The result never exceeds [`MAX_CONTROL_LEN`]
    /// (a listing is cut short and marked truncated instead).
    pub fn encode(&self, buf: &mut Vec<u8>) {
        let start = buf.len();
        let (kind, request) = (self.kind(), self.request());
        buf.extend_from_slice(&[CONTROL_VERSION, kind, 0, 0]);
        buf.extend_from_slice(&request.to_le_bytes());
        match self {
            Self::Hello { .. } | Self::List { .. } | Self::Ok { .. } => {}
            Self::Welcome { identity, max_message_size, .. } => {
                put_identity(buf, identity);
                buf.extend_from_slice(&max_message_size.to_le_bytes());
            }
            Self::OpenPort { name, spec, service, .. } => {
                put_text(buf, name.as_str());
                spec.encode(buf);
                buf.push(u8::from(*service));
            }
            Self::ClosePort { name, .. } => put_text(buf, name.as_str()),
            Self::Connect { target, rights, .. } => {
                match target {
                    Target::Port(name) => {
                        buf.push(0);
                        put_text(buf, name.as_str());
                    }
                    Target::Inbox(id) => {
                        buf.push(1);
                        put_process_id(buf, *id);
                    }
                }
                buf.push(rights.to_u8());
            }
            Self::LinkClosed { link, .. } | Self::LinkRevoked { link } => {
                buf.extend_from_slice(&link.0.to_le_bytes());
            }
            Self::Connected { link, server, spec, rights, quota, .. } => {
                buf.extend_from_slice(&link.0.to_le_bytes());
                put_identity(buf, server);
                spec.encode(buf);
                buf.push(rights.to_u8());
                put_quota(buf, quota);
            }
            Self::Denied { operation, name, .. } => {
                buf.push(operation.to_u8());
                let mut end = name.len().min(PortName::MAX_LEN + 16);
                while !name.is_char_boundary(end) {
                    end -= 1;
                }
                put_text(buf, &name[..end]);
            }
            Self::Grant { name, to, rights, .. } => {
                put_text(buf, name.as_str());
                put_process_id(buf, *to);
                buf.push(rights.to_u8());
            }
            Self::Revoke { name, from, .. } => {
                put_text(buf, name.as_str());
                put_process_id(buf, *from);
            }
            Self::ResolveProcess { host, process, .. } => {
                let mut end = host.len().min(MAX_HOST_LEN);
                while !host.is_char_boundary(end) {
                    end -= 1;
                }
                put_text(buf, &host[..end]);
                put_process_id(buf, *process);
            }
            Self::Resolved { process, .. } => put_process_id(buf, *process),
            Self::Listing { nodes, ports, truncated, .. } => {
                buf.extend_from_slice(&nodes.to_le_bytes());
                let flag_at = buf.len();
                buf.push(u8::from(*truncated));
                let count_at = buf.len();
                buf.extend_from_slice(&[0, 0]);
                // Rows are added while the whole message stays within the size limit.
                let room = MAX_CONTROL_LEN - (buf.len() - start);
                let (mut shown, mut used) = (0u16, 0usize);
                for entry in ports {
                    let row = 2 + entry.name.as_str().len() + IDENTITY_LEN + 4 + 1;
                    if used + row > room || shown == u16::MAX {
                        buf[flag_at] = 1;
                        break;
                    }
                    put_text(buf, entry.name.as_str());
                    put_identity(buf, &entry.owner);
                    buf.extend_from_slice(&entry.connections.to_le_bytes());
                    buf.push(match entry.kind {
                        EndpointKind::Port => 0,
                        EndpointKind::Mailbox => 1,
                        EndpointKind::Topic => 2,
                        EndpointKind::Service => 3,
                    });
                    used += row;
                    shown += 1;
                }
                buf[count_at..count_at + 2].copy_from_slice(&shown.to_le_bytes());
            }
            Self::Refused { code, detail, .. } => {
                buf.push(code.to_u8());
                let mut end = detail.len().min(1024);
                while !detail.is_char_boundary(end) {
                    end -= 1;
                }
                put_text(buf, &detail[..end]);
            }
            Self::Stat { name, .. }
            | Self::UnlinkMailbox { name, .. }
            | Self::ReceiveMailbox { name, .. } => put_text(buf, name.as_str()),
            Self::Publish { topic, .. } => put_text(buf, topic.as_str()),
            Self::Subscribe { pattern, capacity, drop_newest, .. } => {
                put_text(buf, pattern);
                buf.extend_from_slice(&capacity.to_le_bytes());
                buf.push(u8::from(*drop_newest));
            }
            Self::CreateTopic { topic, history, .. } => {
                put_text(buf, topic.as_str());
                buf.extend_from_slice(&history.to_le_bytes());
            }
            Self::CreateMailbox { name, capacity, open_existing, .. } => {
                put_text(buf, name.as_str());
                buf.extend_from_slice(&capacity.to_le_bytes());
                buf.push(u8::from(*open_existing));
            }
            Self::StatQuery { query, name } => {
                buf.extend_from_slice(&query.to_le_bytes());
                put_text(buf, name.as_str());
            }
            Self::StatReport { query, counters } => {
                buf.extend_from_slice(&query.to_le_bytes());
                match counters {
                    None => buf.push(0),
                    Some(counters) => {
                        buf.push(1);
                        put_counters(buf, counters);
                    }
                }
            }
            Self::Stats { owner, spec, counters, .. } => {
                put_identity(buf, owner);
                spec.encode(buf);
                put_counters(buf, counters);
            }
            Self::IncomingConnection { link, target, client, rights, quota } => {
                buf.extend_from_slice(&link.0.to_le_bytes());
                match target {
                    ListenTarget::Port(name) => {
                        buf.push(0);
                        put_text(buf, name.as_str());
                    }
                    ListenTarget::Inbox => buf.push(1),
                }
                put_identity(buf, client);
                buf.push(rights.to_u8());
                put_quota(buf, quota);
            }
        }
    }

    /// Decodes one whole control message, rejecting trailing bytes.
    ///
    /// # Errors
    /// Any [`DecodeError`]; never panics on any input.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        if bytes.len() > MAX_CONTROL_LEN {
            return Err(DecodeError::TooLong {
                declared: u32::try_from(bytes.len()).unwrap_or(u32::MAX),
                limit: MAX_CONTROL_LEN as u32,
            });
        }
        let mut r = Reader::new(bytes);
        let version = r.u8()?;
        if version != CONTROL_VERSION {
            return Err(DecodeError::UnsupportedVersion(version));
        }
        let kind = r.u8()?;
        if r.u16()? != 0 {
            return Err(DecodeError::ReservedNotZero);
        }
        let request = r.u32()?;
        let message = match kind {
            HELLO => Self::Hello { request },
            LIST => Self::List { request },
            OK => Self::Ok { request },
            WELCOME => Self::Welcome {
                request,
                identity: read_identity(&mut r)?,
                max_message_size: r.u32()?,
            },
            OPEN_PORT => Self::OpenPort {
                request,
                name: read_name(&mut r)?,
                spec: PortSpec::decode(&mut r)?,
                service: match r.u8()? {
                    0 => false,
                    1 => true,
                    value => return Err(DecodeError::UnknownValue { field: "service", value }),
                },
            },
            CLOSE_PORT => Self::ClosePort { request, name: read_name(&mut r)? },
            CONNECT => {
                let target = match r.u8()? {
                    0 => Target::Port(read_name(&mut r)?),
                    1 => Target::Inbox(read_process_id(&mut r)?),
                    value => return Err(DecodeError::UnknownValue { field: "target", value }),
                };
                Self::Connect { request, target, rights: read_rights(&mut r)? }
            }
            LINK_CLOSED => Self::LinkClosed { request, link: LinkId(r.u64()?) },
            CONNECTED => Self::Connected {
                request,
                link: LinkId(r.u64()?),
                server: read_identity(&mut r)?,
                spec: PortSpec::decode(&mut r)?,
                rights: read_rights(&mut r)?,
                quota: read_quota(&mut r)?,
            },
            DENIED => {
                let code = r.u8()?;
                let operation = Operation::from_u8(code)
                    .ok_or(DecodeError::UnknownValue { field: "operation", value: code })?;
                Self::Denied { request, operation, name: r.text()?.to_owned() }
            }
            GRANT => Self::Grant {
                request,
                name: read_name(&mut r)?,
                to: read_process_id(&mut r)?,
                rights: read_rights(&mut r)?,
            },
            REVOKE => {
                Self::Revoke { request, name: read_name(&mut r)?, from: read_process_id(&mut r)? }
            }
            RESOLVE_PROCESS => {
                let host = r.text()?;
                if host.len() > MAX_HOST_LEN {
                    return Err(DecodeError::TooLong {
                        declared: u32::try_from(host.len()).unwrap_or(u32::MAX),
                        limit: MAX_HOST_LEN as u32,
                    });
                }
                Self::ResolveProcess {
                    request,
                    host: host.to_owned(),
                    process: read_process_id(&mut r)?,
                }
            }
            RESOLVED => Self::Resolved { request, process: read_process_id(&mut r)? },
            LISTING => {
                let nodes = r.u32()?;
                let truncated = match r.u8()? {
                    0 => false,
                    1 => true,
                    value => return Err(DecodeError::UnknownValue { field: "truncated", value }),
                };
                let count = r.u16()?;
                let mut ports = Vec::with_capacity(
                    usize::from(count).min(r.remaining() / (2 + 1 + IDENTITY_LEN + 4 + 1)),
                );
                for _ in 0..count {
                    ports.push(PortEntry {
                        name: read_name(&mut r)?,
                        owner: read_identity(&mut r)?,
                        connections: r.u32()?,
                        kind: match r.u8()? {
                            0 => EndpointKind::Port,
                            1 => EndpointKind::Mailbox,
                            2 => EndpointKind::Topic,
                            3 => EndpointKind::Service,
                            value => {
                                return Err(DecodeError::UnknownValue { field: "kind", value })
                            }
                        },
                    });
                }
                Self::Listing { request, nodes, ports, truncated }
            }
            REFUSED => Self::Refused {
                request,
                code: ControlErrorCode::from_u8(r.u8()?),
                detail: r.text()?.to_owned(),
            },
            INCOMING_CONNECTION => {
                let link = LinkId(r.u64()?);
                let target = match r.u8()? {
                    0 => ListenTarget::Port(read_name(&mut r)?),
                    1 => ListenTarget::Inbox,
                    value => return Err(DecodeError::UnknownValue { field: "target", value }),
                };
                if request != 0 {
                    return Err(DecodeError::ReservedNotZero);
                }
                Self::IncomingConnection {
                    link,
                    target,
                    client: read_identity(&mut r)?,
                    rights: read_rights(&mut r)?,
                    quota: read_quota(&mut r)?,
                }
            }
            STAT => Self::Stat { request, name: read_name(&mut r)? },
            CREATE_MAILBOX => Self::CreateMailbox {
                request,
                name: read_name(&mut r)?,
                capacity: r.u32()?,
                open_existing: match r.u8()? {
                    0 => false,
                    1 => true,
                    value => {
                        return Err(DecodeError::UnknownValue { field: "open_existing", value })
                    }
                },
            },
            UNLINK_MAILBOX => Self::UnlinkMailbox { request, name: read_name(&mut r)? },
            RECEIVE_MAILBOX => Self::ReceiveMailbox { request, name: read_name(&mut r)? },
            PUBLISH => Self::Publish { request, topic: read_name(&mut r)? },
            SUBSCRIBE => Self::Subscribe {
                request,
                pattern: r.text()?.to_owned(),
                capacity: r.u32()?,
                drop_newest: match r.u8()? {
                    0 => false,
                    1 => true,
                    value => return Err(DecodeError::UnknownValue { field: "drop_newest", value }),
                },
            },
            CREATE_TOPIC => {
                Self::CreateTopic { request, topic: read_name(&mut r)?, history: r.u32()? }
            }
            STAT_QUERY | STAT_REPORT | LINK_REVOKED if request != 0 => {
                return Err(DecodeError::ReservedNotZero)
            }
            LINK_REVOKED => Self::LinkRevoked { link: LinkId(r.u64()?) },
            STAT_QUERY => Self::StatQuery { query: r.u32()?, name: read_name(&mut r)? },
            STAT_REPORT => {
                let query = r.u32()?;
                let counters = match r.u8()? {
                    0 => None,
                    1 => Some(read_counters(&mut r)?),
                    value => return Err(DecodeError::UnknownValue { field: "found", value }),
                };
                Self::StatReport { query, counters }
            }
            STATS => Self::Stats {
                request,
                owner: read_identity(&mut r)?,
                spec: PortSpec::decode(&mut r)?,
                counters: read_counters(&mut r)?,
            },
            other => return Err(DecodeError::UnknownKind(other)),
        };
        r.finish()?;
        Ok(message)
    }

    fn kind(&self) -> u8 {
        match self {
            Self::Hello { .. } => HELLO,
            Self::OpenPort { .. } => OPEN_PORT,
            Self::ClosePort { .. } => CLOSE_PORT,
            Self::Connect { .. } => CONNECT,
            Self::LinkClosed { .. } => LINK_CLOSED,
            Self::List { .. } => LIST,
            Self::Welcome { .. } => WELCOME,
            Self::Ok { .. } => OK,
            Self::Connected { .. } => CONNECTED,
            Self::Listing { .. } => LISTING,
            Self::Refused { .. } => REFUSED,
            Self::IncomingConnection { .. } => INCOMING_CONNECTION,
            Self::Denied { .. } => DENIED,
            Self::Grant { .. } => GRANT,
            Self::Revoke { .. } => REVOKE,
            Self::LinkRevoked { .. } => LINK_REVOKED,
            Self::Stat { .. } => STAT,
            Self::CreateMailbox { .. } => CREATE_MAILBOX,
            Self::UnlinkMailbox { .. } => UNLINK_MAILBOX,
            Self::ReceiveMailbox { .. } => RECEIVE_MAILBOX,
            Self::Publish { .. } => PUBLISH,
            Self::Subscribe { .. } => SUBSCRIBE,
            Self::CreateTopic { .. } => CREATE_TOPIC,
            Self::StatReport { .. } => STAT_REPORT,
            Self::Stats { .. } => STATS,
            Self::StatQuery { .. } => STAT_QUERY,
            Self::ResolveProcess { .. } => RESOLVE_PROCESS,
            Self::Resolved { .. } => RESOLVED,
        }
    }
}

fn put_counters(buf: &mut Vec<u8>, counters: &PortCounters) {
    buf.extend_from_slice(&counters.queued.to_le_bytes());
    buf.extend_from_slice(&counters.lost.to_le_bytes());
    buf.extend_from_slice(&counters.links.to_le_bytes());
}

fn read_counters(r: &mut Reader<'_>) -> Result<PortCounters, DecodeError> {
    Ok(PortCounters { queued: r.u64()?, lost: r.u64()?, links: r.u32()? })
}

fn put_process_id(buf: &mut Vec<u8>, id: ProcessId) {
    buf.extend_from_slice(&id.pid.to_le_bytes());
    buf.extend_from_slice(&id.generation.to_le_bytes());
}

fn put_identity(buf: &mut Vec<u8>, identity: &PeerIdentity) {
    put_process_id(buf, identity.process_id);
    buf.extend_from_slice(&identity.uid.to_le_bytes());
    buf.extend_from_slice(&identity.gid.to_le_bytes());
}

fn put_quota(buf: &mut Vec<u8>, quota: &Quota) {
    buf.extend_from_slice(&quota.calls_in_flight.to_le_bytes());
    buf.extend_from_slice(&quota.queued_bytes.to_le_bytes());
}

fn read_quota(r: &mut Reader<'_>) -> Result<Quota, DecodeError> {
    Ok(Quota { calls_in_flight: r.u32()?, queued_bytes: r.u64()? })
}

fn read_rights(r: &mut Reader<'_>) -> Result<Rights, DecodeError> {
    let bits = r.u8()?;
    Rights::from_u8(bits).ok_or(DecodeError::UnknownValue { field: "rights", value: bits })
}

fn read_process_id(r: &mut Reader<'_>) -> Result<ProcessId, DecodeError> {
    Ok(ProcessId { pid: r.u32()?, generation: r.u32()? })
}

fn read_identity(r: &mut Reader<'_>) -> Result<PeerIdentity, DecodeError> {
    Ok(PeerIdentity { process_id: read_process_id(r)?, uid: r.u32()?, gid: r.u32()? })
}

fn read_name(r: &mut Reader<'_>) -> Result<PortName, DecodeError> {
    PortName::new(r.text()?).map_err(|_| DecodeError::InvalidName)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity() -> PeerIdentity {
        PeerIdentity { process_id: ProcessId::new(10, 2), uid: 1000, gid: 100 }
    }

    fn samples() -> Vec<ControlMessage> {
        let name = PortName::new("calc").unwrap();
        vec![
            ControlMessage::Hello { request: 1 },
            ControlMessage::Welcome { request: 1, identity: identity(), max_message_size: 1 << 24 },
            ControlMessage::OpenPort {
                request: 2,
                name: name.clone(),
                spec: PortSpec::default(),
                service: false,
            },
            ControlMessage::ClosePort { request: 3, name: name.clone() },
            ControlMessage::Connect {
                request: 4,
                target: Target::Port(name.clone()),
                rights: Rights::ALL,
            },
            ControlMessage::Connect {
                request: 5,
                target: Target::Inbox(ProcessId::new(7, 1)),
                rights: Rights::SEND,
            },
            ControlMessage::LinkClosed { request: 0, link: LinkId(9) },
            ControlMessage::List { request: 6 },
            ControlMessage::Ok { request: 2 },
            ControlMessage::Connected {
                request: 4,
                link: LinkId(9),
                server: identity(),
                spec: PortSpec::default(),
                rights: Rights::CALL,
                quota: Quota::default(),
            },
            ControlMessage::Denied { request: 4, operation: Operation::Call, name: "calc".into() },
            ControlMessage::Grant {
                request: 14,
                name: name.clone(),
                to: ProcessId::new(8, 3),
                rights: Rights::SEND,
            },
            ControlMessage::Revoke { request: 15, name: name.clone(), from: ProcessId::new(8, 3) },
            ControlMessage::LinkRevoked { link: LinkId(11) },
            ControlMessage::ResolveProcess {
                request: 16,
                host: "b".into(),
                process: ProcessId::new(1234, 5),
            },
            ControlMessage::Resolved { request: 16, process: ProcessId::new(0, 3) },
            ControlMessage::Listing {
                request: 6,
                nodes: 3,
                ports: vec![PortEntry {
                    name: name.clone(),
                    owner: identity(),
                    connections: 2,
                    kind: EndpointKind::Mailbox,
                }],
                truncated: false,
            },
            ControlMessage::Refused {
                request: 4,
                code: ControlErrorCode::NoSuchPort,
                detail: "no port named calc".into(),
            },
            ControlMessage::IncomingConnection {
                link: LinkId(9),
                target: ListenTarget::Port(name.clone()),
                client: identity(),
                rights: Rights::ALL,
                quota: Quota { calls_in_flight: 3, queued_bytes: 1 << 40 },
            },
            ControlMessage::IncomingConnection {
                link: LinkId(10),
                target: ListenTarget::Inbox,
                client: identity(),
                rights: Rights::SEND,
                quota: Quota::default(),
            },
            ControlMessage::Stat { request: 7, name: name.clone() },
            ControlMessage::CreateMailbox {
                request: 8,
                name: name.clone(),
                capacity: 1000,
                open_existing: true,
            },
            ControlMessage::UnlinkMailbox { request: 9, name: name.clone() },
            ControlMessage::Publish { request: 11, topic: name.clone() },
            ControlMessage::Subscribe {
                request: 12,
                pattern: "/sensors/*".into(),
                capacity: 16,
                drop_newest: false,
            },
            ControlMessage::CreateTopic { request: 13, topic: name.clone(), history: 3 },
            ControlMessage::ReceiveMailbox { request: 10, name: name.clone() },
            ControlMessage::StatQuery { query: 3, name: name.clone() },
            ControlMessage::StatReport { query: 3, counters: None },
            ControlMessage::StatReport {
                query: 3,
                counters: Some(PortCounters { queued: 3, lost: 7, links: 1 }),
            },
            ControlMessage::Stats {
                request: 7,
                owner: identity(),
                spec: PortSpec::default(),
                counters: PortCounters { queued: 3, lost: 7, links: 1 },
            },
        ]
    }

    #[test]
    fn every_control_message_round_trips() {
        for message in samples() {
            let mut buf = Vec::new();
            message.encode(&mut buf);
            assert_eq!(ControlMessage::decode(&buf), Ok(message));
        }
    }

    #[test]
    fn every_prefix_of_a_control_message_is_rejected_without_panicking() {
        for message in samples() {
            let mut buf = Vec::new();
            message.encode(&mut buf);
            for cut in 0..buf.len() {
                assert!(ControlMessage::decode(&buf[..cut]).is_err(), "{message:?} cut at {cut}");
            }
            buf.push(0);
            assert_eq!(ControlMessage::decode(&buf), Err(DecodeError::TrailingBytes(1)));
        }
    }

    #[test]
    fn open_port_matches_the_example_of_the_wire_format_document() {
        let name = PortName::new("calc").unwrap();
        let mut buf = Vec::new();
        ControlMessage::OpenPort { request: 2, name, spec: PortSpec::default(), service: false }
            .encode(&mut buf);
        let expected = [
            0x01, 0x02, 0x00, 0x00, 0x02, 0x00, 0x00, 0x00, 0x04, 0x00, 0x63, 0x61, 0x6c, 0x63,
            0x01, 0x00, 0x04, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
            0x00, 0x00,
        ];
        assert_eq!(buf, expected, "docs/wire-format.md §3.3");
    }

    #[test]
    fn bad_names_and_kinds_are_named_in_the_error() {
        let mut buf = Vec::new();
        let name = PortName::new("ab").unwrap();
        ControlMessage::OpenPort { request: 1, name, spec: PortSpec::default(), service: false }
            .encode(&mut buf);
        // Header, then the name's u16 length, then "ab": break its last character.
        buf[CONTROL_HEADER_LEN + 3] = b' ';
        assert_eq!(ControlMessage::decode(&buf), Err(DecodeError::InvalidName));
        buf[1] = 0x7f;
        assert_eq!(ControlMessage::decode(&buf), Err(DecodeError::UnknownKind(0x7f)));
    }

    #[test]
    fn a_huge_listing_is_cut_to_fit_and_marked_truncated() {
        let ports: Vec<PortEntry> = (0..1000)
            .map(|i| PortEntry {
                name: PortName::new(&format!("{i:0>250}")).unwrap(),
                owner: identity(),
                connections: 0,
                kind: EndpointKind::Port,
            })
            .collect();
        let mut buf = Vec::new();
        ControlMessage::Listing { request: 1, nodes: 1, ports, truncated: false }.encode(&mut buf);
        assert!(buf.len() <= MAX_CONTROL_LEN);
        match ControlMessage::decode(&buf).unwrap() {
            ControlMessage::Listing { truncated, ports, .. } => {
                assert!(truncated);
                assert!(!ports.is_empty());
            }
            other => panic!("unexpected {other:?}"),
        }
    }
}
