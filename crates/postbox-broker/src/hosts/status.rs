//! What `postbox ls` shows of each peer host: link state, RTT, retransmissions, and how the
//! broker's status port carries it.

use std::time::Duration;

use postbox_core::wire::{put_text, DecodeError, Reader};

/// The name of the port every broker serves itself to report its host links: a call with an
/// empty body is answered with the list of [`HostStatus`]es ([`HostStatus::decode_list`]).
/// Nodes cannot open a port by this name.
pub const HOSTS_PORT: &str = "postbox/hosts";

/// One peer host as its broker sees it now.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct HostStatus {
    /// The peer's name.
    pub name: String,
    /// How the link is made: `dial ADDR` or `listen ADDR`, then the carrier or security when
    /// not plain TCP: ` (tls)`, ` (psk)`, ` (quic)`.
    pub connect: String,
    /// Where the link is.
    pub state: HostState,
    /// Smoothed round-trip time, once measured.
    pub rtt: Option<Duration>,
    /// Messages sent again (timeout or resume) in the current session.
    pub retransmissions: u64,
    /// Duplicates received and dropped in the current session.
    pub duplicates: u64,
    /// Frames that failed their checksum in the current session.
    pub corrupt_frames: u64,
    /// Connections (TCP or QUIC) made or accepted in the current session.
    pub connections: u64,
    /// Sessions started with this peer (a new one after each peer death or restart).
    pub sessions: u64,
    /// Remote connections open over the link, either way.
    pub channels: u32,
    /// Direct links (docs/network.md §15) between nodes of this host and nodes of the peer,
    /// either way, handed over and not reported closed.
    pub direct_links: u32,
    /// One-way messages of datagram ports lost on the way to or from this peer, as far as
    /// this broker can tell, since it started: not sent (no open link, a full queue), missing
    /// when later ones arrived, or dropped because the receiving port's link was full
    /// (docs/network.md §13).
    pub datagrams_lost: u64,
}

/// Where a host link is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum HostState {
    /// No connection: dialing, or waiting for the peer to dial.
    Down,
    /// Connected; waiting for the peer's hello.
    Connecting,
    /// Messages flow.
    Open,
    /// The session ended (the peer died or stayed unreachable); a new one is starting.
    Ended,
}

impl HostState {
    /// Lowercase, for tables.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Down => "down",
            Self::Connecting => "connecting",
            Self::Open => "open",
            Self::Ended => "ended",
        }
    }
}

impl HostStatus {
    /// Encodes a list of statuses: the status port's reply body.
    #[must_use]
    pub fn encode_list(hosts: &[Self]) -> Vec<u8> {
        let mut buf = Vec::with_capacity(64 * hosts.len() + 2);
        let count = u16::try_from(hosts.len()).unwrap_or(u16::MAX);
        buf.extend_from_slice(&count.to_le_bytes());
        for host in hosts.iter().take(usize::from(count)) {
            put_text(&mut buf, &host.name);
            put_text(&mut buf, &host.connect);
            buf.push(host.state as u8);
            let rtt = host.rtt.map_or(u64::MAX, |d| u64::try_from(d.as_micros()).unwrap_or(0));
            for word in [
                rtt,
                host.retransmissions,
                host.duplicates,
                host.corrupt_frames,
                host.connections,
                host.sessions,
                host.datagrams_lost,
            ] {
                buf.extend_from_slice(&word.to_le_bytes());
            }
            buf.extend_from_slice(&host.channels.to_le_bytes());
            buf.extend_from_slice(&host.direct_links.to_le_bytes());
        }
        buf
    }

    /// Decodes the status port's reply body.
    ///
    /// # Errors
    /// [`DecodeError`] for a body that is not such a list.
    pub fn decode_list(bytes: &[u8]) -> Result<Vec<Self>, DecodeError> {
        let mut r = Reader::new(bytes);
        let count = r.u16()?;
        let mut hosts = Vec::with_capacity(usize::from(count).min(r.remaining() / 8));
        for _ in 0..count {
            let name = r.text()?.to_owned();
            let connect = r.text()?.to_owned();
            let state = match r.u8()? {
                0 => HostState::Down,
                1 => HostState::Connecting,
                2 => HostState::Open,
                3 => HostState::Ended,
                value => return Err(DecodeError::UnknownValue { field: "host state", value }),
            };
            let rtt = match r.u64()? {
                u64::MAX => None,
                micros => Some(Duration::from_micros(micros)),
            };
            hosts.push(Self {
                name,
                connect,
                state,
                rtt,
                retransmissions: r.u64()?,
                duplicates: r.u64()?,
                corrupt_frames: r.u64()?,
                connections: r.u64()?,
                sessions: r.u64()?,
                datagrams_lost: r.u64()?,
                channels: r.u32()?,
                direct_links: r.u32()?,
            });
        }
        r.finish()?;
        Ok(hosts)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_status_list_survives_the_trip_and_garbage_is_an_error() {
        let hosts = vec![
            HostStatus {
                name: "b".into(),
                connect: "dial 127.0.0.1:7401".into(),
                state: HostState::Open,
                rtt: Some(Duration::from_micros(250)),
                retransmissions: 3,
                duplicates: 1,
                corrupt_frames: 2,
                connections: 4,
                sessions: 1,
                channels: 9,
                direct_links: 5,
                datagrams_lost: 12,
            },
            HostStatus {
                name: "c".into(),
                connect: "listen 0.0.0.0:7402".into(),
                state: HostState::Down,
                rtt: None,
                retransmissions: 0,
                duplicates: 0,
                corrupt_frames: 0,
                connections: 0,
                sessions: 2,
                channels: 0,
                direct_links: 0,
                datagrams_lost: 0,
            },
        ];
        let bytes = HostStatus::encode_list(&hosts);
        assert_eq!(HostStatus::decode_list(&bytes).unwrap(), hosts);
        for len in 0..bytes.len() {
            assert!(HostStatus::decode_list(&bytes[..len]).is_err());
        }
        assert_eq!(HostStatus::decode_list(&[0, 0]).unwrap(), Vec::new());
    }
}
