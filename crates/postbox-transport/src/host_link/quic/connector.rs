//! Where a QUIC host link's connections come from: a dial task (one at a time, after the
//! backoff) or an accept loop with a handshake task per incoming connection. Either checks the
//! peer's certificate inside the handshake (`crypto.rs`); the driver gets only connections
//! that passed, or why they did not.
//!
//! The accept loop first makes every client prove its address (a QUIC Retry: the client must
//! echo a token sent to the address it claims), so that packets from a forged or non-reading
//! source never take one of the few handshake slots. Then it gives each address at most
//! `MAX_HANDSHAKES_PER_ADDRESS` of them, so that one host cannot take all.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use quinn::{Connection, Endpoint, Incoming, TransportConfig};
use tokio::sync::{mpsc, Semaphore};
use tokio::time::timeout;

use super::super::error::LinkError;
use super::super::security::TlsConfig;
use super::crypto;

/// Why a dial gave no connection.
#[derive(Debug)]
pub(super) enum DialFailure {
    /// No QUIC connection came about: no answer, refused, reset.
    Connect(LinkError),
    /// The peer answered but the handshake failed: authentication.
    Handshake(LinkError),
}

/// What the acceptor hands the driver.
#[derive(Debug)]
pub(super) enum Arrival {
    /// An authenticated connection.
    Connected(Connection),
    /// A handshake that failed, and why.
    Failed(LinkError),
    /// A connection attempt refused because too many handshakes were running (in all, or
    /// from its address).
    Refused,
}

/// Dials `addr` after `wait`: a QUIC connection whose handshake checked the listener's
/// certificate (CA and name), within `connect_timeout`.
pub(super) async fn dial(
    endpoint: Endpoint,
    addr: SocketAddr,
    tls: TlsConfig,
    transport: Arc<TransportConfig>,
    wait: Duration,
    connect_timeout: Duration,
) -> Result<Connection, DialFailure> {
    tokio::time::sleep(wait).await;
    let (config, verdict) =
        crypto::client_config(&tls, &transport).map_err(DialFailure::Handshake)?;
    let connecting = endpoint
        .connect_with(config, addr, &tls.peer_name())
        .map_err(|_| DialFailure::Connect(LinkError::Connect(io::ErrorKind::InvalidInput)))?;
    match timeout(connect_timeout, connecting).await {
        Err(_) => Err(DialFailure::Connect(LinkError::Connect(io::ErrorKind::TimedOut))),
        Ok(Ok(connection)) => Ok(connection),
        Ok(Err(error)) => Err(match crypto::connection_error(&error, Some(&verdict)) {
            error @ LinkError::Authentication(_) => DialFailure::Handshake(error),
            LinkError::TimedOut => {
                DialFailure::Connect(LinkError::Connect(io::ErrorKind::TimedOut))
            }
            error => DialFailure::Connect(error),
        }),
    }
}

/// Accepts connections on `endpoint` until it closes, each with a handshake task of its own;
/// hands the results to the driver. A client whose address is not validated yet gets a Retry
/// and takes nothing; a validated one takes a handshake slot (at most `MAX_HANDSHAKES` at
/// once, `MAX_HANDSHAKES_PER_ADDRESS` per IP address, so that slow or hostile clients cannot
/// hold up the peer's).
pub(super) async fn accept_loop(
    endpoint: Endpoint,
    tls: TlsConfig,
    transport: Arc<TransportConfig>,
    connect_timeout: Duration,
    arrivals: mpsc::UnboundedSender<Arrival>,
) {
    let handshakes = Arc::new(Semaphore::new(MAX_HANDSHAKES));
    let per_address = Arc::new(Mutex::new(HashMap::new()));
    while let Some(incoming) = endpoint.accept().await {
        if !incoming.remote_address_validated() {
            // The client gets a token at the address it claims and must come back with it (one
            // round trip). An unvalidated client may always be sent a Retry, so this does not
            // fail; were it to, the attempt is dropped like the forged one it would be.
            let _ = incoming.retry();
            continue;
        }
        let address = incoming.remote_address().ip();
        let slot = AddressSlot::take(&per_address, address);
        let permit = Arc::clone(&handshakes).try_acquire_owned();
        let (Some(slot), Ok(permit)) = (slot, permit) else {
            incoming.refuse();
            if arrivals.send(Arrival::Refused).is_err() {
                return;
            }
            continue;
        };
        let (tls, transport, arrivals) = (tls.clone(), Arc::clone(&transport), arrivals.clone());
        tokio::spawn(async move {
            let arrival = accept(incoming, &tls, &transport, connect_timeout).await;
            drop((permit, slot));
            // The driver is gone only when the link stops.
            let _ = arrivals.send(arrival);
        });
    }
}

/// One of the handshake slots of an IP address; given back when dropped.
#[derive(Debug)]
struct AddressSlot {
    counts: Arc<Mutex<HashMap<IpAddr, usize>>>,
    address: IpAddr,
}

impl AddressSlot {
    /// A slot for `address`, unless it holds `MAX_HANDSHAKES_PER_ADDRESS` already.
    fn take(counts: &Arc<Mutex<HashMap<IpAddr, usize>>>, address: IpAddr) -> Option<Self> {
        let mut held = counts.lock().unwrap_or_else(PoisonError::into_inner);
        let count = held.entry(address).or_insert(0);
        if *count >= MAX_HANDSHAKES_PER_ADDRESS {
            return None;
        }
        *count += 1;
        Some(Self { counts: Arc::clone(counts), address })
    }
}

impl Drop for AddressSlot {
    fn drop(&mut self) {
        let mut held = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(count) = held.get_mut(&self.address) {
            *count -= 1;
            if *count == 0 {
                held.remove(&self.address);
            }
        }
    }
}

/// One incoming connection's handshake, with a configuration of its own whose check of the
/// client's certificate (CA and name) says why it refused.
async fn accept(
    incoming: Incoming,
    tls: &TlsConfig,
    transport: &Arc<TransportConfig>,
    connect_timeout: Duration,
) -> Arrival {
    let (config, verdict) = match crypto::server_config(tls, transport) {
        Ok(made) => made,
        Err(error) => {
            incoming.refuse();
            return Arrival::Failed(error);
        }
    };
    let connecting = match incoming.accept_with(Arc::new(config)) {
        Ok(connecting) => connecting,
        Err(error) => return Arrival::Failed(crypto::connection_error(&error, Some(&verdict))),
    };
    match timeout(connect_timeout, connecting).await {
        Err(_) => Arrival::Failed(LinkError::HandshakeTimeout),
        Ok(Ok(connection)) => Arrival::Connected(connection),
        Ok(Err(error)) => Arrival::Failed(crypto::connection_error(&error, Some(&verdict))),
    }
}

/// Handshakes of incoming connections running at once, at most.
const MAX_HANDSHAKES: usize = 8;
/// Handshakes from one IP address running at once, at most. The peer dials one connection at a
/// time; a second covers an attempt it gave up on whose handshake still runs here.
const MAX_HANDSHAKES_PER_ADDRESS: usize = 2;
