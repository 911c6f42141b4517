//! Direct links across hosts (docs/network.md §15): the brokers prepare the connection as for
//! a relayed one (name, policy, quota), then hand each node one end of a TCP connection
//! between the two and step off the data path.
//!
//! ```text
//! a: Open { direct }  ──host link──▶  b: port and policy checked, token issued
//! a: ◀── OpenedDirect { address, token } ──
//! a: dial_direct (thread) ──TCP──▶ b's DirectListener ──▶ b: token matched (once), proof checked
//! a: Connected + socket to the caller       b: IncomingConnection + socket to the server
//! ```
//!
//! The opener's side keeps its `PendingOpen` until the dial ends, so the connect's deadline
//! and the node's quota hold while it runs; the serving side forgets a token once used, when
//! the opener closes the channel, or after the same deadline.
//!
//! A dial that fails without the serving broker deciding (no listener, a dropped SYN, a
//! timeout, a listener too busy to answer) falls back to the gateway: the opener closes the
//! channel and asks for the port again on it, relayed, within the connect's wait. Only a
//! verdict of 0 (the serving broker decided: token spent or out of time, wrong proof, port
//! gone) fails the connect.

use std::collections::{HashMap, HashSet};
use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use postbox_core::{
    ControlErrorCode, ControlMessage, LinkId, ListenTarget, PeerIdentity, PortName, PortSpec,
    ProcessId, Quota, Rights,
};
use postbox_transport::direct_link::{
    dial_direct, DirectDialError, DirectHello, DirectListener, DirectTimers, DirectToken,
};
use postbox_transport::host_link::{LinkSecurity, PreSharedKey};
use postbox_transport::{TransportError, Waker};

use super::gateway::{close, PendingOpen};
use super::log_budget::LogBudget;
use super::EventLoop;
use crate::hosts::identity::NodeRef;
use crate::hosts::protocol::{Channel, HostMessage, OpenTarget};
use crate::hosts::{HostsConfig, PeerConnect};
use crate::registry::NodeKey;

/// The gateway's direct links in the making, on both sides.
#[derive(Debug)]
pub(super) struct Directs {
    /// Where peers dial this broker's direct links (the serving side), if anywhere; held
    /// for its threads (dropping it stops them).
    _listener: Option<DirectListener>,
    /// What peers are told to dial: the listener's address, or the one configured.
    advertised: Option<std::net::SocketAddr>,
    timers: DirectTimers,
    /// Greetings the listener's threads took, for the event loop.
    hellos: Arc<Mutex<Vec<DirectHello>>>,
    /// Dials that ended, for the event loop.
    dialed: Arc<Mutex<Vec<Dialed>>>,
    /// Tokens this broker issued to peers, not yet used.
    offers: HashMap<DirectToken, Offer>,
    /// Opener's side: what the node is told once the dial of its channel succeeded.
    dialing: HashMap<(usize, Channel), ControlMessage>,
    /// The direct links handed to local nodes, on either side, and not reported closed: a
    /// caller's count against its `connections` quota, a server's against its peer's
    /// `channels_per_host`, and all are cut when their host link is declared dead.
    links: HashMap<LinkId, DirectEnd>,
    /// Opener's side: peers whose last dial failed (and went through the gateway), so that
    /// it is logged once until a dial to them works again.
    failing: HashSet<usize>,
    /// Those lines, within a budget should peers flap.
    failing_log: LogBudget,
}

/// A local node's end of a direct link to peer `host`.
#[derive(Debug, Clone, Copy)]
struct DirectEnd {
    /// The peer at the other end.
    host: usize,
    /// The node holding this end, by key and (to tell a reused key) by process.
    node: NodeKey,
    process: ProcessId,
    /// True on the serving side (the node took the link on a port of its).
    serving: bool,
}

/// A token issued to peer `host` for a link to `owner`'s port `port`.
#[derive(Debug)]
struct Offer {
    host: usize,
    /// The peer's channel it answered (the peer closing it withdraws the token).
    channel: Channel,
    owner: NodeKey,
    port: PortName,
    client: PeerIdentity,
    rights: Rights,
    deadline: Instant,
}

/// A dial of the opener's side that ended.
#[derive(Debug)]
struct Dialed {
    host: usize,
    channel: Channel,
    result: Result<OwnedFd, DirectDialError>,
}

impl Directs {
    /// Direct links for `config`: a listener when it names `direct_listen` and some peer may
    /// make direct links; greetings and dials wake `waker`.
    pub(super) fn new(config: &HostsConfig, waker: &Arc<Waker>) -> Result<Self, TransportError> {
        let timers = DirectTimers {
            heartbeat_interval: config.heartbeat_interval,
            missed_heartbeats: config.missed_heartbeats,
        };
        let hellos = Arc::new(Mutex::new(Vec::new()));
        let listener = match config.direct_listen {
            Some(address) if config.peers.iter().any(|p| p.direct) => {
                let (queue, waker) = (Arc::clone(&hellos), Arc::clone(waker));
                let on_hello = move |hello: DirectHello| {
                    let mut waiting = queue.lock().unwrap_or_else(PoisonError::into_inner);
                    if waiting.len() >= MAX_WAITING_HELLOS {
                        // The event loop is behind: each greeting holds a socket, so no more.
                        // Nothing is decided: the dialer goes through the gateway instead.
                        drop(waiting);
                        return hello.turn_away();
                    }
                    waiting.push(hello);
                    waker.wake();
                };
                let listener = DirectListener::bind(address, timers, on_hello)?;
                tracing::info!(address = %listener.local_address(), "direct links accepted");
                Some(listener)
            }
            _ => None,
        };
        let advertised =
            listener.as_ref().map(|l| config.direct_advertise.unwrap_or(l.local_address()));
        Ok(Self {
            _listener: listener,
            advertised,
            timers,
            hellos,
            dialed: Arc::default(),
            offers: HashMap::new(),
            dialing: HashMap::new(),
            links: HashMap::new(),
            failing: HashSet::new(),
            failing_log: LogBudget::new(
                "direct-link fallbacks",
                FALLBACKS_LOGGED_PER_SECOND,
                Instant::now(),
            ),
        })
    }

    /// True while the opener's side dials `channel` of `host`.
    pub(super) fn is_dialing(&self, host: usize, channel: Channel) -> bool {
        self.dialing.contains_key(&(host, channel))
    }

    /// Forgets the dial of `channel` (its connect ended otherwise); a late result is dropped.
    pub(super) fn forget_dial(&mut self, host: usize, channel: Channel) {
        self.dialing.remove(&(host, channel));
    }

    /// Direct links node `node` opened and holds, as far as this broker knows.
    pub(super) fn links_of(&self, node: ProcessId) -> usize {
        self.links.values().filter(|end| end.process == node && !end.serving).count()
    }

    /// What peer `host` holds here through direct links: tokens waiting for their dial and
    /// links its nodes took (held to `channels_per_host` with its relayed channels).
    pub(super) fn held_for(&self, host: usize) -> usize {
        let offers = self.offers.values().filter(|o| o.host == host).count();
        offers + self.links.values().filter(|end| end.host == host && end.serving).count()
    }

    /// Direct links between nodes of this host and of peer `host`, either way (`postbox ls`).
    pub(super) fn links_with(&self, host: usize) -> usize {
        self.links.values().filter(|end| end.host == host).count()
    }

    /// The host link to `host` was declared dead: every direct link to it is forgotten, and
    /// returned so that its node is told to cut it.
    fn host_lost(&mut self, host: usize) -> Vec<(LinkId, DirectEnd)> {
        let lost: Vec<_> =
            self.links.iter().filter(|(_, end)| end.host == host).map(|(l, e)| (*l, *e)).collect();
        for (link, _) in &lost {
            self.links.remove(link);
        }
        lost
    }

    /// A node reported `link` closed.
    pub(super) fn link_closed(&mut self, link: LinkId) {
        self.links.remove(&link);
    }

    /// Node `node` left: its direct links went with it.
    pub(super) fn node_left(&mut self, node: ProcessId) {
        self.links.retain(|_, end| end.process != node);
    }

    /// Peer `host` closed `channel`: a token offered for it is not used now.
    pub(super) fn withdraw(&mut self, host: usize, channel: Channel) {
        self.offers.retain(|_, offer| offer.host != host || offer.channel != channel);
    }

    /// Forgets tokens whose time is up.
    pub(super) fn expire(&mut self, now: Instant) {
        self.offers.retain(|_, offer| offer.deadline > now);
    }

    /// The earliest token deadline.
    pub(super) fn next_deadline(&self) -> Option<Instant> {
        self.offers.values().map(|o| o.deadline).min()
    }
}

impl EventLoop {
    /// Serving side: a direct link to `owner`'s port `port` for peer `host`'s node `client`
    /// (already allowed `rights` by the policy): a token and the address to present it at, or
    /// `None` when this broker takes no direct links (the channel is then relayed).
    pub(super) fn offer_direct(
        &mut self,
        host: usize,
        channel: Channel,
        (owner, port): (NodeKey, &PortName),
        (spec, rights, client): (PortSpec, Rights, PeerIdentity),
    ) -> Option<HostMessage> {
        let gateway = self.gateway.as_mut()?;
        let address = gateway.directs.advertised?;
        if !gateway.peers.get(host).is_some_and(|p| p.config.direct) {
            return None;
        }
        // The peer's `channels_per_host` was checked with its offers and direct links counted
        // (`Gateway::opened_by_peer`).
        let token = match DirectToken::generate() {
            Ok(token) => token,
            Err(error) => {
                tracing::warn!(%error, "no direct link: no token");
                return None;
            }
        };
        let deadline = Instant::now() + gateway.open_timeout();
        let server = self.registry.identity(owner)?.process_id;
        let server = gateway.stand_ins.node_ref(server);
        let offer = Offer { host, channel, owner, port: port.clone(), client, rights, deadline };
        gateway.directs.offers.insert(token.clone(), offer);
        let quota = self.config.policy.quota();
        Some(HostMessage::OpenedDirect { channel, spec, rights, quota, server, address, token })
    }

    /// Opener's side: the peer offered a direct link for `channel`; it is dialed on a thread
    /// of its own, and the node is answered when that ends.
    pub(super) fn dial_offered(
        &mut self,
        host: usize,
        channel: Channel,
        (spec, rights, quota): (PortSpec, Rights, Quota),
        server: &NodeRef,
        (address, token): (std::net::SocketAddr, DirectToken),
    ) {
        let Some(gateway) = &mut self.gateway else { return };
        let Some(pending) = gateway.opening.get(&(host, channel)) else { return };
        // Only for an `Open` this broker sent asking for a direct link.
        let wanted =
            pending.direct.is_some() && gateway.peers.get(host).is_some_and(|p| p.config.direct);
        // Half of what is left of the connect's wait, so that a dial that times out leaves the
        // other half for the relayed open it falls back to.
        let dial_wait =
            (pending.deadline.saturating_duration_since(Instant::now()) / 2).max(MIN_DIAL_WAIT);
        if gateway.directs.is_dialing(host, channel) {
            return;
        }
        let (node, request) = (pending.node, pending.request);
        let peer = gateway.peers[host].config.name.clone();
        let named_elsewhere = server.host.as_ref().is_some_and(|h| *h != peer);
        let alive = self.registry.identity(node).is_some_and(|i| i.process_id == pending.process);
        let rights = rights.intersection(pending.rights);
        if !wanted || named_elsewhere || !alive || rights.is_empty() {
            // Not asked for, or from a peer that names another host's node as the server (as
            // for `Opened`): the token is left to expire at the peer.
            gateway.opening.remove(&(host, channel));
            let detail = format!("host {peer} offered a direct link that cannot be taken");
            return self.refuse(node, request, ControlErrorCode::Malformed, &detail);
        }
        let key = peer_key(&gateway.peers[host].config.security);
        let address = match gateway.peers[host].config.connect {
            // A listener on every address (0.0.0.0) is reached where the host link is.
            PeerConnect::Dial(link) if address.ip().is_unspecified() => {
                std::net::SocketAddr::new(link.ip(), address.port())
            }
            _ => address,
        };
        let timers = gateway.directs.timers;
        let (results, waker) = (Arc::clone(&gateway.directs.dialed), Arc::clone(&gateway.waker));
        let server = self.identity_from(host, server);
        let mut spec = super::gateway::remote_spec(spec, self.config.max_message_size);
        spec.delivery = postbox_core::Delivery::Reliable;
        let link = self.registry.allocate_link_id();
        let connected = ControlMessage::Connected { request, link, server, spec, rights, quota };
        let Some(gateway) = &mut self.gateway else { return };
        gateway.directs.dialing.insert((host, channel), connected);
        let dial = move || {
            let result = dial_direct(address, &token, key.as_ref(), timers, dial_wait);
            results.lock().unwrap_or_else(PoisonError::into_inner).push(Dialed {
                host,
                channel,
                result,
            });
            waker.wake();
        };
        if let Err(error) =
            std::thread::Builder::new().name("postbox-direct-dial".into()).spawn(dial)
        {
            gateway.directs.dialing.remove(&(host, channel));
            if let Some(pending) = gateway.opening.remove(&(host, channel)) {
                let why = format!("cannot start the dial: {error}");
                self.relay_instead(host, channel, pending, &why);
            }
        }
    }

    /// Handles the greetings and dials that ended since the last call.
    pub(super) fn service_directs(&mut self) {
        let Some(gateway) = &self.gateway else { return };
        let hellos = std::mem::take(
            &mut *gateway.directs.hellos.lock().unwrap_or_else(PoisonError::into_inner),
        );
        let dialed = std::mem::take(
            &mut *gateway.directs.dialed.lock().unwrap_or_else(PoisonError::into_inner),
        );
        for hello in hellos {
            self.hello_received(hello);
        }
        for dial in dialed {
            self.dial_ended(dial);
        }
    }

    /// Serving side: a peer's broker presented a token; when it is one this broker issued
    /// (and not used yet) and the port's owner is still there, the socket goes to the owner.
    fn hello_received(&mut self, hello: DirectHello) {
        let Some(gateway) = &mut self.gateway else { return };
        let Some(host) = gateway.directs.offers.get(hello.token()).map(|o| o.host) else {
            tracing::debug!("a direct link presented an unknown or used token");
            return hello.refuse();
        };
        let key = peer_key(&gateway.peers[host].config.security);
        if !hello.proves(key.as_ref()) {
            // Whoever saw the token without the key does not use it up for the peer.
            tracing::debug!("a direct link's proof did not match the host link's key");
            return hello.refuse();
        }
        let Some(offer) = gateway.directs.offers.remove(hello.token()) else { return };
        let owner_holds = self.registry.port(&offer.port).is_some_and(|(o, _, _)| o == offer.owner);
        let owner = self.registry.identity(offer.owner).map(|i| i.process_id);
        let Some(process) = owner.filter(|_| owner_holds) else { return hello.refuse() };
        if offer.deadline <= Instant::now() || !self.has_room(offer.owner) {
            return hello.refuse();
        }
        // The proof was checked above; only a failed verdict write can fail here.
        let Ok(fd) = hello.accept(key.as_ref()) else { return };
        let link = self.registry.allocate_link_id();
        let quota = self.config.policy.quota();
        let incoming = ControlMessage::IncomingConnection {
            link,
            target: ListenTarget::Port(offer.port),
            client: offer.client,
            rights: offer.rights,
            quota,
        };
        if let Some(gateway) = &mut self.gateway {
            let end = DirectEnd { host, node: offer.owner, process, serving: true };
            gateway.directs.links.insert(link, end);
        }
        self.queue(offer.owner, &incoming, vec![fd]);
        self.flush(offer.owner);
    }

    /// Opener's side: a dial ended; the node gets its link, or hears why not.
    fn dial_ended(&mut self, Dialed { host, channel, result }: Dialed) {
        let Some(gateway) = &mut self.gateway else { return };
        let connected = gateway.directs.dialing.remove(&(host, channel));
        let (Some(connected), Some(pending)) =
            (connected, gateway.opening.remove(&(host, channel)))
        else {
            // The connect ended meanwhile: the socket closes, which the server sees.
            return;
        };
        let peer = gateway.peers[host].config.name.clone();
        if result.is_ok() {
            gateway.directs.failing.remove(&host);
        }
        match result {
            Ok(fd)
                if self
                    .registry
                    .identity(pending.node)
                    .is_some_and(|i| i.process_id == pending.process) =>
            {
                if let (ControlMessage::Connected { link, .. }, Some(gateway)) =
                    (&connected, &mut self.gateway)
                {
                    let end = DirectEnd {
                        host,
                        node: pending.node,
                        process: pending.process,
                        serving: false,
                    };
                    gateway.directs.links.insert(*link, end);
                }
                self.queue(pending.node, &connected, vec![fd]);
            }
            Ok(_) => {}
            Err(DirectDialError::Refused) => {
                // The peer decided: its verdict stands (a relayed open would be refused too,
                // or would go around a check of the greeting's proof).
                if let Some(gateway) = &mut self.gateway {
                    gateway.peers[host].send_or_keep(channel.stream(), close(channel));
                }
                let detail = format!("host {peer} refused the direct link (port gone?)");
                self.refuse(pending.node, pending.request, ControlErrorCode::NoSuchPort, &detail);
            }
            Err(error) => self.relay_instead(host, channel, pending, &error),
        }
    }

    /// Opener's side: the dial of `channel` failed (`why`) without the peer deciding against
    /// it, so the port is asked for again on the same channel, relayed, as for a peer without
    /// `direct`, within what is left of the connect's wait. The peer forgets its token on the
    /// `Close` (which goes first on the channel's stream), so the relayed channel is the only
    /// one counted against `channels_per_host` there; the new `Open` does not ask for a direct
    /// link, and an `OpenedDirect` answering it is refused (`dial_offered`), so the fallback
    /// cannot loop.
    fn relay_instead(
        &mut self,
        host: usize,
        channel: Channel,
        mut pending: PendingOpen,
        why: &dyn std::fmt::Display,
    ) {
        let Some(gateway) = &mut self.gateway else { return };
        gateway.peers[host].send_or_keep(channel.stream(), close(channel));
        let alive =
            self.registry.identity(pending.node).is_some_and(|i| i.process_id == pending.process);
        let Some(port) = pending.direct.take().filter(|_| alive) else { return };
        let peer = gateway.peers[host].config.name.clone();
        if gateway.directs.failing.insert(host) && gateway.directs.failing_log.admit(Instant::now())
        {
            tracing::warn!(
                host = %peer,
                error = %why,
                "direct links to this host fail to be made; its calls are relayed by the gateway"
            );
        } else {
            tracing::debug!(host = %peer, error = %why, "direct link not made; relayed instead");
        }
        let client = gateway.stand_ins.node_ref(pending.process);
        let target = OpenTarget::Port(port);
        let open =
            HostMessage::Open { channel, target, rights: pending.rights, client, direct: false };
        gateway.peers[host].send_or_keep(channel.stream(), open.encode());
        gateway.opening.insert((host, channel), pending);
    }
}

impl EventLoop {
    /// The host link to `host` was declared dead (heartbeats missed, or it broke): each local
    /// node holding a direct link to it is told to cut the link, so a call pending on it
    /// fails with `PeerDied` within the heartbeat bound, as a relayed one does. (The sockets
    /// carry no user timeout, so back-pressure alone never ends them.)
    pub(super) fn cut_direct_links(&mut self, host: usize) {
        let Some(gateway) = &mut self.gateway else { return };
        for (link, end) in gateway.directs.host_lost(host) {
            if self.registry.identity(end.node).is_some_and(|i| i.process_id == end.process) {
                self.queue(end.node, &ControlMessage::LinkRevoked { link }, Vec::new());
                self.flush(end.node);
            }
        }
    }
}

/// The host link's pre-shared key, which proves a direct link's token, if it has one.
fn peer_key(security: &LinkSecurity) -> Option<PreSharedKey> {
    match security {
        LinkSecurity::PreSharedKey(key) => Some(key.clone()),
        _ => None,
    }
}

/// Greetings waiting for the event loop at most; more are turned away at once.
const MAX_WAITING_HELLOS: usize = 64;
/// The shortest wait a dial gets (should the connect's wait be nearly over).
const MIN_DIAL_WAIT: Duration = Duration::from_millis(100);
/// Lines a second saying that direct links to a peer fail and its calls are relayed.
const FALLBACKS_LOGGED_PER_SECOND: u32 = 4;
