//! Loopback ports for daemons a test starts: never the same number twice in a process.

use std::collections::BTreeSet;
use std::net::{TcpListener, UdpSocket};
use std::sync::{Mutex, PoisonError};

/// A loopback TCP port that was free a moment ago and whose number no earlier call (of this
/// or [`free_udp_port`]) in this process returned.
///
/// The kernel picks it (a listener bound to port 0, then closed), and may well pick the same
/// one again soon after: two tests running at once that both asked it for a port could then
/// start their daemons on one port, and one test's host would dial the other test's. Handing
/// each number out once per process rules that out for the tests of one binary.
///
/// # Panics
/// When no loopback port can be bound, or after many picks all handed out before.
#[must_use]
pub fn free_port() -> u16 {
    pick(|| TcpListener::bind("127.0.0.1:0")?.local_addr())
}

/// The same as [`free_port`] for a UDP port (a QUIC host link, a datagram route).
///
/// # Panics
/// As [`free_port`].
#[must_use]
pub fn free_udp_port() -> u16 {
    pick(|| UdpSocket::bind("127.0.0.1:0")?.local_addr())
}

fn pick(bind: impl Fn() -> std::io::Result<std::net::SocketAddr>) -> u16 {
    let mut handed_out = HANDED_OUT.lock().unwrap_or_else(PoisonError::into_inner);
    for _ in 0..PICKS {
        let port = bind().expect("bind a loopback port").port();
        if handed_out.insert(port) {
            return port;
        }
    }
    panic!("no loopback port that was not handed out before, after {PICKS} picks");
}

/// Every port number [`free_port`] and [`free_udp_port`] returned in this process.
static HANDED_OUT: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());

/// Picks before giving up.
const PICKS: usize = 1000;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_port_number_is_handed_out_twice() {
        let ports: Vec<u16> =
            (0..2000).map(|i| if i % 3 == 0 { free_udp_port() } else { free_port() }).collect();
        let distinct: BTreeSet<u16> = ports.iter().copied().collect();
        assert_eq!(distinct.len(), ports.len());
        assert!(ports.iter().all(|&port| port != 0));
    }
}
