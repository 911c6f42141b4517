//! A connection that never says Hello is disconnected after the configured time, so that
//! silent connections cannot hold the broker's slots and descriptors forever.

use std::time::Duration;

use postbox_broker::{Broker, BrokerConfig};
use postbox_core::ControlMessage;
use postbox_transport::{ControlSocket, TransportError, Wait};

#[test]
fn a_connection_without_hello_is_refused_and_closed_after_the_hello_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = BrokerConfig::new(dir.path().join("broker.sock"));
    config.hello_timeout = Duration::from_millis(200);
    let broker = Broker::bind(config).unwrap().spawn().unwrap();
    let silent = ControlSocket::connect(broker.socket_path()).unwrap();
    let mut buf = vec![0u8; 65536];
    let (len, _) = silent.recv(&mut buf, Wait::timeout(Duration::from_secs(20))).unwrap();
    assert!(matches!(ControlMessage::decode(&buf[..len]), Ok(ControlMessage::Refused { .. })));
    let end = silent.recv(&mut buf, Wait::timeout(Duration::from_secs(20)));
    assert_eq!(end.unwrap_err(), TransportError::Closed);

    // A connection that says Hello in time stays.
    let polite = ControlSocket::connect(broker.socket_path()).unwrap();
    let mut hello = Vec::new();
    ControlMessage::Hello { request: 1 }.encode(&mut hello);
    polite.send(&hello, &[], Wait::Forever).unwrap();
    let (len, _) = polite.recv(&mut buf, Wait::timeout(Duration::from_secs(20))).unwrap();
    assert!(matches!(ControlMessage::decode(&buf[..len]), Ok(ControlMessage::Welcome { .. })));
    let idle = polite.recv(&mut buf, Wait::timeout(Duration::from_millis(500)));
    assert_eq!(idle.unwrap_err(), TransportError::TimedOut, "an admitted node is not timed out");
}
