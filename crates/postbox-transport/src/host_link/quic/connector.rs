//! Where a QUIC host link's connections come from: a dial task (one at a time, after the
//! backoff) or an accept loop with a handshake task per incoming connection. Either checks the
//! peer's certificate inside the handshake (`crypto.rs`); the driver gets only connections
//! that passed, or why they did not.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
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
    /// A connection attempt refused because too many handshakes were running.
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

/// Accepts connections on `endpoint` until it closes, each with a handshake task of its own (at
/// most `MAX_HANDSHAKES` at once, so that slow or hostile clients cannot hold up the peer's);
/// hands the results to the driver.
pub(super) async fn accept_loop(
    endpoint: Endpoint,
    tls: TlsConfig,
    transport: Arc<TransportConfig>,
    connect_timeout: Duration,
    arrivals: mpsc::UnboundedSender<Arrival>,
) {
    let handshakes = Arc::new(Semaphore::new(MAX_HANDSHAKES));
    while let Some(incoming) = endpoint.accept().await {
        let Ok(permit) = Arc::clone(&handshakes).try_acquire_owned() else {
            incoming.refuse();
            if arrivals.send(Arrival::Refused).is_err() {
                return;
            }
            continue;
        };
        let (tls, transport, arrivals) = (tls.clone(), Arc::clone(&transport), arrivals.clone());
        tokio::spawn(async move {
            let arrival = accept(incoming, &tls, &transport, connect_timeout).await;
            drop(permit);
            // The driver is gone only when the link stops.
            let _ = arrivals.send(arrival);
        });
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
