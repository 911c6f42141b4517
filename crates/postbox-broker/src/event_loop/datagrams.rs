//! Channels to datagram ports (docs/network.md §13): a remote client's one-way frames cross as
//! best-effort session datagrams instead of reliable messages, and no lost datagram can hold a
//! sender back.
//!
//! ```text
//! client ──link── gateway a ~~~ datagrams (UDP, QUIC) ~~~► gateway b ──link── port
//!    ▲ credits: a credits what it took at once         window: the port's spec, its credits;
//!                                                       a full link drops, counted as lost
//! ```
//!
//! The sending gateway reads its client's frames, numbers them in the channel's order, packs
//! consecutive ones into a datagram (`HostMessage::Datagram`), and credits the client for them
//! itself, whether the datagram leaves, is lost, or could not be sent: the client's window
//! never waits for the peer. The receiving gateway delivers a datagram's frames only if they
//! are newer than any delivered before (so nothing arrives twice, and the port sees each
//! sender's order with gaps), within the window of the port's own credits; every number it
//! never saw and every frame the port had no room for is counted, and the count travels in the
//! next delivered frame's `correlation` (the sender-dropped count of docs/wire-format.md §2.1),
//! which the port adds to what `Envelope::lost` reports. Losses at the end of a burst are
//! reported with the next message that arrives.
//!
//! Numbers are the peer's: one more than `MAX_GAP` ahead of what came before is no sender's
//! (it would have sent four billion datagrams in between) and closes the channel, so no count
//! can run away. When the client's side closes, its `Close` says the last number it sent; the
//! close travels on the reliable session and may overtake the last datagrams, so the port's
//! side waits for them a few round trips (until the last arrived), then closes and counts
//! what never came in the peer's `datagrams_lost`.

use std::time::{Duration, Instant};

use postbox_core::wire::frame::HEADER_LEN;
use postbox_core::{Admission, Credit, FrameKind, Placement, PortSpec, SendWindow};

use super::gateway::{frame_at_start, relayed_frames, RelayKey, HOST_OUT_LIMIT, RELAY_OUT_LIMIT};
use super::{encode, EventLoop};
use crate::hosts::protocol::{Channel, HostMessage, DATAGRAM_HEADER};
use crate::hosts::{MAX_DATAGRAM_MESSAGE, MAX_DATAGRAM_PAYLOAD};

/// A relay's part in a channel to a datagram port.
#[derive(Debug)]
pub(super) enum DatagramRelay {
    /// This host faces the client: its frames leave as datagrams, credited here.
    Sending(Sending),
    /// This host faces the port: datagrams' frames go in within the port's window.
    Receiving(Receiving),
}

/// The sending gateway's count of what it took from its client.
#[derive(Debug, Default)]
pub(super) struct Sending {
    /// The number of the last frame taken (the first is 1).
    taken: u64,
    /// Messages and bytes taken, cumulative: the client's credit.
    released: Credit,
    /// The credit last written to the client.
    reported: Credit,
}

/// The receiving gateway's view of the port's link.
#[derive(Debug)]
pub(super) struct Receiving {
    /// The port's window on this link, from its credits.
    window: SendWindow,
    /// The highest frame number delivered or passed over: only later ones go in.
    through: u64,
    /// Frames lost since the last delivered one, told with the next.
    lost: u64,
    /// A credit request is out while the window is full; none again until a credit comes.
    credit_requested: bool,
    /// The client's side closed after its frame with this number: the relay closes once that
    /// one was delivered or passed over, or when its wait ends (`Gateway::datagrams_closing`).
    last: Option<u64>,
}

/// What the sending gateway made of one frame of its client.
enum Taken {
    /// A one-way message: the frame's bytes and its body's length.
    Message(Vec<u8>, u64),
    /// An empty credit frame: the client waits for credit.
    CreditRequest,
    /// Anything else breaks the channel's rules.
    Refused,
}

impl DatagramRelay {
    /// The sending side of a new channel.
    pub(super) fn sending() -> Self {
        Self::Sending(Sending::default())
    }

    /// The receiving side of a new channel to a port that buffers as `spec`.
    pub(super) fn receiving(spec: &PortSpec) -> Self {
        Self::Receiving(Receiving {
            window: SendWindow::new(spec),
            through: 0,
            lost: 0,
            credit_requested: false,
            last: None,
        })
    }
}

/// The spec a client on this host gets for its link to a datagram port on another host:
/// one-way messages that fit a datagram, and a capacity this gateway serves at once (a
/// rendezvous, which a datagram port never is through the library, would wait on nothing).
pub(super) fn client_spec(mut spec: PortSpec) -> PortSpec {
    spec.message_size =
        Some(spec.message_size.map_or(MAX_DATAGRAM_MESSAGE, |n| n.min(MAX_DATAGRAM_MESSAGE)));
    if spec.capacity == postbox_core::Capacity::Rendezvous {
        spec.capacity = postbox_core::Capacity::Bounded(1);
    }
    spec
}

impl EventLoop {
    /// Forwards what a sending relay's client wrote: its one-way frames as datagrams, numbered
    /// and packed; then the client's credit for all of them. Closes the relay when the client
    /// broke the channel's rules, or finished and everything it sent went.
    pub(super) fn forward_datagrams(&mut self, key: RelayKey) {
        let Some(relay) = self.relays.get_mut(key.0).and_then(Option::as_mut) else { return };
        let Some((host, channel)) = relay.remote() else { return };
        let Some(DatagramRelay::Sending(sending)) = &mut relay.datagrams else { return };
        // Each pack: its first frame's number, its frames, how many.
        let mut packs: Vec<(u64, Vec<u8>, u64)> = Vec::new();
        let (mut broken, mut urgent) = (false, false);
        loop {
            let polled = relay.decoder.poll_frame_with(|header, body| {
                let body = body.as_slice();
                match header.kind {
                    _ if header.placement != Placement::Inline => Taken::Refused,
                    FrameKind::Oneway if body.len() <= MAX_DATAGRAM_MESSAGE as usize => {
                        let mut frame = header.encode(body).to_vec();
                        frame.extend_from_slice(body);
                        Taken::Message(frame, body.len() as u64)
                    }
                    FrameKind::Credit if body.is_empty() => Taken::CreditRequest,
                    _ => Taken::Refused,
                }
            });
            match polled {
                Ok(None) => break,
                Ok(Some(Taken::Message(frame, len))) => {
                    sending.taken += 1;
                    sending.released.messages += 1;
                    sending.released.bytes += len;
                    let room = (MAX_DATAGRAM_PAYLOAD as usize) - DATAGRAM_HEADER;
                    match packs.last_mut() {
                        Some((_, pack, count)) if pack.len() + frame.len() <= room => {
                            pack.extend_from_slice(&frame);
                            *count += 1;
                        }
                        _ => packs.push((sending.taken, frame, 1)),
                    }
                }
                Ok(Some(Taken::CreditRequest)) => urgent = true,
                Ok(Some(Taken::Refused)) | Err(_) => {
                    broken = true;
                    break;
                }
            }
        }
        let (credit, last) = (sending.released, sending.taken);
        let report = credit.messages > sending.reported.messages || urgent;
        if report {
            sending.reported = credit;
            relay.enqueue(encode(FrameKind::Credit, 0, 0, 0, &credit.to_bytes()));
        }
        let finished = relay.finished;
        let Some(peer) = self.gateway.as_mut().and_then(|g| g.peers.get_mut(host)) else {
            return self.close_relay(key, false);
        };
        for (seq, frames, count) in packs {
            let datagram = HostMessage::Datagram { channel, seq, frames }.encode();
            if peer.send_datagram(channel.stream(), datagram).is_err() {
                // No open link, or its queue is full: lost, and the receiver sees the gap.
                peer.datagrams_lost = peer.datagrams_lost.saturating_add(count);
            }
        }
        if broken || finished {
            // The close may overtake the datagrams just sent: it says how many there were.
            let close = HostMessage::Close { channel, last: Some(last) }.encode();
            peer.send_or_keep(channel.stream(), close);
            return self.close_relay(key, false);
        }
        self.flush_relay(key);
    }

    /// Takes what the port sent on a receiving relay's link: its credits, which open the
    /// window; anything else breaks the channel's rules and closes it.
    pub(super) fn take_port_credits(&mut self, key: RelayKey) {
        let Some(relay) = self.relays.get_mut(key.0).and_then(Option::as_mut) else { return };
        let Some(DatagramRelay::Receiving(receiving)) = &mut relay.datagrams else { return };
        let mut broken = false;
        loop {
            let polled = relay.decoder.poll_frame_with(|header, body| {
                let credit =
                    header.placement == Placement::Inline && header.kind == FrameKind::Credit;
                credit.then(|| Credit::decode(body.as_slice()).ok()).flatten()
            });
            match polled {
                Ok(None) => break,
                Ok(Some(Some(credit))) if receiving.window.handle_credit(credit).is_ok() => {
                    receiving.credit_requested = false;
                }
                Ok(Some(_)) | Err(_) => {
                    broken = true;
                    break;
                }
            }
        }
        if broken || relay.finished {
            self.close_relay(key, true);
        }
    }

    /// A datagram from the peer for `channel`, its frames numbered from `seq`: delivered into
    /// the port's link if newer than what went before and within the port's window; what was
    /// skipped or had no room is counted and told with the next frame that goes in.
    pub(super) fn datagram_from_peer(
        &mut self,
        host: usize,
        channel: Channel,
        seq: u64,
        frames: &[u8],
    ) {
        // A datagram that outlived its channel (or came before it) is dropped.
        let Some(key) = self.relay_of(host, channel) else { return };
        let Some(relay) = self.relays.get_mut(key.0).and_then(Option::as_mut) else { return };
        let (max_body, host_queued) = (relay.max_body, relay.host_out());
        let Some(DatagramRelay::Receiving(receiving)) = &mut relay.datagrams else {
            // Datagrams on a reliable channel, or towards a client: not this protocol.
            return self.close_relay(key, true);
        };
        let valid = |h: &postbox_core::FrameHeader| {
            h.placement == Placement::Inline && h.kind == FrameKind::Oneway
        };
        let Some(count) = relayed_frames(frames, max_body, valid).filter(|&n| n > 0) else {
            return self.close_relay(key, true);
        };
        if seq <= receiving.through {
            // Late (counted lost when a later one came first) or a copy (delivered).
            return;
        }
        let skipped = seq - receiving.through - 1;
        let end = seq
            .checked_add(count as u64 - 1)
            .filter(|&end| skipped <= MAX_GAP && receiving.last.is_none_or(|last| end <= last));
        let Some(end) = end else {
            // Numbers no sender reaches, or beyond the last its side announced.
            if let Some(gateway) = &self.gateway {
                let name = &gateway.peers[host].config.name;
                tracing::warn!(host = %name, seq, "datagram numbers out of range; channel closed");
            }
            return self.close_relay(key, true);
        };
        receiving.through = end;
        receiving.lost = receiving.lost.saturating_add(skipped);
        let mut dropped = skipped;
        let (mut queued, mut host_queued) = (relay.out.bytes(), host_queued);
        let mut delivered = Vec::with_capacity(frames.len());
        let mut rest = frames;
        while let Some((mut header, len)) = frame_at_start(rest, max_body) {
            let body = &rest[HEADER_LEN..len];
            rest = &rest[len..];
            let body_len = body.len() as u64;
            let admitted = receiving.window.admit(body_len) == Admission::Now
                && queued + len <= RELAY_OUT_LIMIT
                && host_queued + len <= HOST_OUT_LIMIT;
            if !admitted {
                // The frame's own count of what its sender dropped is lost with it: told later.
                receiving.lost = receiving.lost.saturating_add(1 + header.correlation);
                dropped += 1;
                continue;
            }
            header.correlation = header.correlation.saturating_add(receiving.lost);
            receiving.lost = 0;
            receiving.window.on_sent(body_len);
            delivered.extend_from_slice(&header.encode(body));
            delivered.extend_from_slice(body);
            queued += len;
            host_queued += len;
        }
        let ask_credit = dropped > skipped && !receiving.credit_requested;
        receiving.credit_requested |= ask_credit;
        let complete = receiving.last.is_some_and(|last| receiving.through >= last);
        if !delivered.is_empty() {
            relay.enqueue(delivered);
        }
        if ask_credit {
            // The port reports what it took at once (docs/wire-format.md §2.7).
            relay.enqueue(encode(FrameKind::Credit, 0, 0, 0, &[]));
        }
        if let Some(peer) = self.gateway.as_mut().and_then(|g| g.peers.get_mut(host)) {
            peer.datagrams_lost = peer.datagrams_lost.saturating_add(dropped);
        }
        self.flush_relay(key);
        if complete {
            // The client's side closed, and everything it sent is in (or was passed over).
            self.close_relay(key, false);
        }
    }

    /// The client's side closed `channel` after its frame numbered `last`. True when the
    /// port's side waits for datagrams the close overtook (a few round trips at most); false
    /// when there are none to wait for (or `last` is no sender's, or this is no receiving
    /// datagram channel): the channel closes now.
    pub(super) fn datagrams_closing(&mut self, host: usize, channel: Channel, last: u64) -> bool {
        let Some(key) = self.relay_of(host, channel) else { return false };
        let Some(relay) = self.relays.get_mut(key.0).and_then(Option::as_mut) else {
            return false;
        };
        let Some(DatagramRelay::Receiving(receiving)) = &mut relay.datagrams else { return false };
        let missing = last.saturating_sub(receiving.through);
        if missing == 0 || missing > MAX_GAP || receiving.last.is_some() {
            return false;
        }
        receiving.last = Some(last);
        let Some(gateway) = &mut self.gateway else { return false };
        let rtt = gateway.peers.get(host).and_then(|peer| peer.smoothed_rtt());
        let wait = rtt.map_or(CLOSE_WAIT_MAX, |rtt| {
            rtt.saturating_mul(4).clamp(CLOSE_WAIT_MIN, CLOSE_WAIT_MAX)
        });
        gateway.datagrams_closing.push((host, channel, Instant::now() + wait));
        true
    }

    /// Closes the datagram channels whose wait for their last datagrams is over; what never
    /// came is counted as lost.
    pub(super) fn run_datagram_timers(&mut self, now: Instant) {
        let Some(gateway) = &mut self.gateway else { return };
        let mut due = Vec::new();
        gateway.datagrams_closing.retain(|&(host, channel, at)| {
            let expired = at <= now;
            if expired {
                due.push((host, channel));
            }
            !expired
        });
        for (host, channel) in due {
            let Some(key) = self.relay_of(host, channel) else { continue };
            let Some(relay) = self.relays.get(key.0).and_then(Option::as_ref) else { continue };
            let Some(DatagramRelay::Receiving(receiving)) = &relay.datagrams else { continue };
            // A channel that reused the number and was not closed: not this one's wait.
            let Some(last) = receiving.last else { continue };
            let never_came = last.saturating_sub(receiving.through);
            if let Some(peer) = self.gateway.as_mut().and_then(|g| g.peers.get_mut(host)) {
                peer.datagrams_lost = peer.datagrams_lost.saturating_add(never_came);
            }
            self.close_relay(key, false);
        }
    }
}

/// How far ahead of what came before a datagram's number may be: a sender that lost more
/// than this in one gap is no sender (it takes hours at millions of datagrams a second).
const MAX_GAP: u64 = 1 << 32;
/// How long the port's side of a closed datagram channel waits for datagrams the close
/// overtook: four round trips, within these bounds (the most while no RTT is known).
const CLOSE_WAIT_MIN: Duration = Duration::from_millis(50);
const CLOSE_WAIT_MAX: Duration = Duration::from_secs(1);

#[cfg(test)]
mod tests {
    use super::*;
    use postbox_core::{Capacity, Delivery, Overflow};

    #[test]
    fn a_client_of_a_datagram_port_gets_small_messages_and_never_a_rendezvous() {
        let spec = PortSpec {
            capacity: Capacity::Rendezvous,
            overflow: Overflow::Block,
            message_size: Some(1 << 20),
            delivery: Delivery::Datagrams,
        };
        let client = client_spec(spec);
        assert_eq!(client.capacity, Capacity::Bounded(1));
        assert_eq!(client.message_size, Some(MAX_DATAGRAM_MESSAGE));
        assert_eq!(client.delivery, Delivery::Datagrams);
        let small = client_spec(PortSpec { message_size: Some(100), ..PortSpec::default() });
        assert_eq!(small.message_size, Some(100));
        // The largest message fits one datagram with its headers.
        let largest = DATAGRAM_HEADER + HEADER_LEN + MAX_DATAGRAM_MESSAGE as usize;
        assert!(largest <= MAX_DATAGRAM_PAYLOAD as usize);
    }
}
