//! The fault proxy itself: frames pass intact without faults, faults are applied and counted,
//! partitions swallow, cuts close both sides, and bytes that are not frames cut the pair.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::Duration;

use postbox_core::reliable::body::Data;
use postbox_core::reliable::frame::{Frame, FrameBody};
use postbox_core::reliable::{MessageId, SessionId, StreamId};
use postbox_test::{FaultProxy, Faults};

/// A proxy in front of a fresh listener, a client connected through it, and the server side
/// of that connection.
fn proxied(faults: Faults) -> (FaultProxy, TcpStream, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let proxy = FaultProxy::start(listener.local_addr().unwrap(), faults, 9).unwrap();
    let client = TcpStream::connect(proxy.addr()).unwrap();
    let (server, _) = listener.accept().unwrap();
    server.set_read_timeout(Some(READ_WATCHDOG)).unwrap();
    client.set_read_timeout(Some(READ_WATCHDOG)).unwrap();
    (proxy, client, server)
}

fn frames(count: u64) -> Vec<u8> {
    let mut bytes = Vec::new();
    for id in 1..=count {
        let data = Data { stream: StreamId(1), id: MessageId(id), payload: vec![id as u8; 40] };
        let frame = Frame {
            sender: SessionId::new(1).unwrap(),
            receiver: SessionId::new(2),
            body: FrameBody::Data(data),
        };
        frame.encode(&mut bytes);
    }
    bytes
}

/// Reads until the connection closes (the proxy cut it) or the watchdog timeout.
fn read_to_close(stream: &mut TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    let _ = stream.read_to_end(&mut out);
    out
}

#[test]
fn without_faults_every_frame_passes_intact_and_in_order_both_ways() {
    let (proxy, mut client, mut server) = proxied(Faults::none());
    let sent = frames(200);
    client.write_all(&sent).unwrap();
    let mut got = vec![0; sent.len()];
    server.read_exact(&mut got).unwrap();
    assert_eq!(got, sent);
    server.write_all(&sent[..500]).unwrap(); // a partial frame waits for its rest
    server.write_all(&sent[500..]).unwrap();
    client.read_exact(&mut got).unwrap();
    assert_eq!(got, sent);
    let counters = proxy.counters();
    assert_eq!((counters.frames, counters.dropped, counters.corrupted()), (400, 0, 0));
}

#[test]
fn total_loss_drops_every_frame_and_a_cut_closes_both_sides() {
    let (proxy, mut client, mut server) = proxied(Faults { loss: 1.0, ..Faults::none() });
    client.write_all(&frames(50)).unwrap();
    // Let the proxy read them before the cut.
    while proxy.counters().frames < 50 {
        std::thread::sleep(Duration::from_millis(1));
    }
    proxy.cut_now();
    assert_eq!(read_to_close(&mut server), Vec::<u8>::new());
    assert_eq!(read_to_close(&mut client), Vec::<u8>::new());
    let counters = proxy.counters();
    assert_eq!((counters.dropped, counters.cuts, counters.injected_cuts), (50, 1, 1));
}

#[test]
fn corruption_duplication_and_reordering_are_applied_and_counted() {
    let faults = Faults { duplication: 0.2, corruption: 0.2, reordering: 0.2, ..Faults::none() };
    let (proxy, mut client, mut server) = proxied(faults);
    client.write_all(&frames(300)).unwrap();
    drop(client); // the proxy forwards what it has, then cuts
    let got = read_to_close(&mut server);
    let counters = proxy.counters();
    assert!(counters.duplicated > 0 && counters.corrupted() > 0 && counters.reordered > 0);
    assert_ne!(got, frames(300));
    assert!(got.len() > frames(300).len(), "duplicates add bytes; nothing was dropped");
}

#[test]
fn a_partition_swallows_frames_until_healed() {
    let (proxy, mut client, mut server) = proxied(Faults::none());
    proxy.partition();
    client.write_all(&frames(10)).unwrap();
    while proxy.counters().black_holed < 10 {
        std::thread::sleep(Duration::from_millis(1));
    }
    proxy.heal();
    let after = frames(3);
    client.write_all(&after).unwrap();
    let mut got = vec![0; after.len()];
    server.read_exact(&mut got).unwrap();
    assert_eq!(got, after);
}

#[test]
fn bytes_that_are_not_frames_cut_the_pair() {
    let (proxy, mut client, mut server) = proxied(Faults::none());
    client.write_all(&[0x55; 64]).unwrap();
    assert_eq!(read_to_close(&mut server), Vec::<u8>::new());
    assert_eq!(proxy.counters().unparsable, 1);
}

/// The longest any read here waits before the test calls it hung.
const READ_WATCHDOG: Duration = Duration::from_secs(20);
