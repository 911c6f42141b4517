//! How a port buffers: capacity per link, what happens when a link is full, the largest
//! message it takes, and how messages from other hosts reach it. Chosen when the port is
//! opened; every client learns it at connect time.

use crate::wire::{DecodeError, Reader};

/// How many one-way messages a link may hold that the receiver has not taken yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Capacity {
    /// Capacity 0: a send returns only once the receiver has taken the message.
    Rendezvous,
    /// At most this many messages (at least 1).
    Bounded(u32),
    /// Any number of messages, but at most this many bytes of bodies.
    Unbounded {
        /// The byte cap.
        max_bytes: u64,
    },
}

/// What a send does when its link is at capacity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Overflow {
    /// Wait for room (`try_send` says `Full`, `send_timeout` times out).
    #[default]
    Block,
    /// Fail at once with `Full`, even for a blocking send.
    Fail,
    /// Never wait: the oldest message of the link is dropped to make room, counted, and
    /// reported to the receiver with the next message it takes.
    DropOldest,
}

/// How one-way messages from senders on other hosts reach a port (docs/network.md §13).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Delivery {
    /// Exactly once and in order, calls included: the host link's reliable session.
    #[default]
    Reliable,
    /// Best-effort datagrams (UDP beside a TCP host link, QUIC datagrams over QUIC): never
    /// retransmitted, checksummed, never delivered twice, in the sender's order with gaps;
    /// what is lost is counted and reported to the receiver. Senders on other hosts may send
    /// one-way messages only. Links on one host are lossless and stay reliable.
    Datagrams,
}

/// A port's buffering, as its clients must respect it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PortSpec {
    /// Capacity of each link to the port.
    pub capacity: Capacity,
    /// Overflow policy.
    pub overflow: Overflow,
    /// The largest body the port takes (`None`: the host's maximum).
    pub message_size: Option<u32>,
    /// How messages from other hosts reach the port. In the spec a client gets with its
    /// link, how that link delivers: `Reliable` for every link within one host.
    pub delivery: Delivery,
}

impl Default for PortSpec {
    /// Bounded to [`PortSpec::DEFAULT_CAPACITY`] messages per link, blocking when full.
    fn default() -> Self {
        Self {
            capacity: Capacity::Bounded(Self::DEFAULT_CAPACITY),
            overflow: Overflow::Block,
            message_size: None,
            delivery: Delivery::Reliable,
        }
    }
}

impl PortSpec {
    /// Messages per link of a port opened without a capacity.
    pub const DEFAULT_CAPACITY: u32 = 1024;
    /// Encoded size in bytes.
    pub const LEN: usize = 1 + 8 + 1 + 4 + 1;

    /// Appends the spec (`docs/wire-format.md` §3).
    pub fn encode(&self, buf: &mut Vec<u8>) {
        let (tag, amount) = match self.capacity {
            Capacity::Rendezvous => (0u8, 0u64),
            Capacity::Bounded(n) => (1, u64::from(n)),
            Capacity::Unbounded { max_bytes } => (2, max_bytes),
        };
        buf.push(tag);
        buf.extend_from_slice(&amount.to_le_bytes());
        buf.push(match self.overflow {
            Overflow::Block => 0,
            Overflow::Fail => 1,
            Overflow::DropOldest => 2,
        });
        buf.extend_from_slice(&self.message_size.unwrap_or(0).to_le_bytes());
        buf.push(match self.delivery {
            Delivery::Reliable => 0,
            Delivery::Datagrams => 1,
        });
    }

    /// Reads a spec.
    ///
    /// # Errors
    /// `Truncated`, or `UnknownValue` for an unknown tag, a bounded capacity of 0 or above
    /// `u32::MAX`, or an unknown delivery.
    pub fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let tag = r.u8()?;
        let amount = r.u64()?;
        let capacity = match tag {
            0 => Capacity::Rendezvous,
            1 => match u32::try_from(amount) {
                Ok(n) if n > 0 => Capacity::Bounded(n),
                _ => return Err(DecodeError::UnknownValue { field: "capacity", value: tag }),
            },
            2 => Capacity::Unbounded { max_bytes: amount },
            value => return Err(DecodeError::UnknownValue { field: "capacity", value }),
        };
        let overflow = match r.u8()? {
            0 => Overflow::Block,
            1 => Overflow::Fail,
            2 => Overflow::DropOldest,
            value => return Err(DecodeError::UnknownValue { field: "overflow", value }),
        };
        let message_size = Some(r.u32()?).filter(|&n| n > 0);
        let delivery = match r.u8()? {
            0 => Delivery::Reliable,
            1 => Delivery::Datagrams,
            value => return Err(DecodeError::UnknownValue { field: "delivery", value }),
        };
        Ok(Self { capacity, overflow, message_size, delivery })
    }

    /// Messages a link may hold untaken (rendezvous: 1 in flight).
    #[must_use]
    pub fn message_window(&self) -> u64 {
        match self.capacity {
            Capacity::Rendezvous => 1,
            Capacity::Bounded(n) => u64::from(n),
            Capacity::Unbounded { .. } => u64::MAX,
        }
    }

    /// Body bytes a link may hold untaken.
    #[must_use]
    pub fn byte_window(&self) -> u64 {
        match self.capacity {
            Capacity::Unbounded { max_bytes } => max_bytes,
            _ => u64::MAX,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_round_trip_and_bad_values_are_rejected() {
        let specs = [
            PortSpec::default(),
            PortSpec {
                capacity: Capacity::Rendezvous,
                overflow: Overflow::Fail,
                message_size: Some(64),
                delivery: Delivery::Reliable,
            },
            PortSpec {
                capacity: Capacity::Unbounded { max_bytes: 1 << 30 },
                overflow: Overflow::DropOldest,
                message_size: None,
                delivery: Delivery::Datagrams,
            },
        ];
        for spec in specs {
            let mut buf = Vec::new();
            spec.encode(&mut buf);
            assert_eq!(buf.len(), PortSpec::LEN);
            let mut r = Reader::new(&buf);
            assert_eq!(PortSpec::decode(&mut r), Ok(spec));
            assert_eq!(r.finish(), Ok(()));
        }
        let mut bad = Vec::new();
        PortSpec { capacity: Capacity::Bounded(1), ..PortSpec::default() }.encode(&mut bad);
        bad[1..9].copy_from_slice(&0u64.to_le_bytes());
        assert!(PortSpec::decode(&mut Reader::new(&bad)).is_err(), "bounded 0 is not a capacity");
        bad[0] = 9;
        assert!(PortSpec::decode(&mut Reader::new(&bad)).is_err());
        let mut bad = Vec::new();
        PortSpec::default().encode(&mut bad);
        bad[PortSpec::LEN - 1] = 2;
        assert!(PortSpec::decode(&mut Reader::new(&bad)).is_err(), "an unknown delivery");
    }
}
