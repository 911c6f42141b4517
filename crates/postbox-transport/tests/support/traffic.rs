//! Numbered messages on every stream of a host link, checked as they arrive (exactly once, in
//! order, intact), and the waits and checks the host-link tests share.

use std::collections::BTreeMap;
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::Duration;

use postbox_transport::host_link::{
    Event, HostLink, HostLinkStats, MessageId, StreamId, TryRecvError,
};

/// The messages a test sends: ids from 1 on each of streams `0..streams`, with the payload
/// `payload(tag, stream, id)`; events are taken with `next_event`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Traffic {
    pub(crate) streams: u32,
    pub(crate) payload: fn(u8, u32, u64) -> Vec<u8>,
    pub(crate) next_event: fn(&HostLink) -> Event,
}

impl Traffic {
    /// Both links exchange `per_stream` messages per stream each way; `midway` runs once the
    /// dialing side has received the first half (and before it sends the second). Gives the
    /// links back, listening first.
    pub(crate) fn exchange(
        self,
        listening: HostLink,
        dialing: HostLink,
        per_stream: u64,
        midway: impl FnOnce(),
    ) -> [HostLink; 2] {
        let (listening, dialing) = (Arc::new(listening), Arc::new(dialing));
        let half = per_stream / 2;
        let side = |link: &Arc<HostLink>, tag: u8, peer: u8, signal: Option<mpsc::Sender<()>>| {
            let link = Arc::clone(link);
            thread::spawn(move || {
                let mut next: BTreeMap<u32, u64> = (0..self.streams).map(|s| (s, 1)).collect();
                self.send_range(&link, tag, 1..=half);
                self.receive_through(&link, peer, half, &mut next);
                if let Some(signal) = signal {
                    signal.send(()).unwrap();
                }
                self.send_range(&link, tag, half + 1..=per_stream);
                self.receive_through(&link, peer, per_stream, &mut next);
            })
        };
        let (signal, midway_reached) = mpsc::channel();
        let a = side(&dialing, b'a', b'b', Some(signal));
        let b = side(&listening, b'b', b'a', None);
        midway_reached.recv().unwrap();
        midway();
        a.join().unwrap();
        b.join().unwrap();
        let unwrap = |link: Arc<HostLink>| Arc::into_inner(link).expect("the sides are done");
        [unwrap(listening), unwrap(dialing)]
    }

    /// Sends `ids` on every stream.
    pub(crate) fn send_range(&self, link: &HostLink, tag: u8, ids: std::ops::RangeInclusive<u64>) {
        for id in ids {
            for stream in 0..self.streams {
                let sent = link.send(StreamId(stream), (self.payload)(tag, stream, id));
                assert_eq!(sent, Ok(MessageId(id)), "ids are consecutive per stream");
            }
        }
    }

    /// Receives until messages `..=through` from the peer arrived (exactly once, in order,
    /// intact; later ones may come too, the peer does not wait) and this side's `..=through`
    /// are acknowledged.
    pub(crate) fn receive_through(
        &self,
        link: &HostLink,
        peer_tag: u8,
        through: u64,
        next: &mut BTreeMap<u32, u64>,
    ) {
        let mut acked: BTreeMap<u32, u64> = (0..self.streams).map(|s| (s, 0)).collect();
        let done = |next: &BTreeMap<u32, u64>, acked: &BTreeMap<u32, u64>| {
            next.values().all(|&n| n > through) && acked.values().all(|&a| a >= through)
        };
        while !done(next, &acked) {
            match (self.next_event)(link) {
                Event::Delivered { stream, id, payload: bytes } => {
                    let expected = next.get_mut(&stream.0).expect("a stream this test uses");
                    assert_eq!(id, MessageId(*expected), "in order, no gap, no duplicate");
                    assert_eq!(bytes, (self.payload)(peer_tag, stream.0, id.0), "intact payload");
                    *expected += 1;
                }
                Event::Acked { stream, through: id } => {
                    let entry = acked.get_mut(&stream.0).expect("a stream this test uses");
                    *entry = (*entry).max(id.0);
                }
                Event::LinkOpen { .. } => {}
                other => panic!("unexpected event: {other:?}"),
            }
        }
    }
}

/// Waits (polling, without a time limit of its own: the test's watchdog bounds it) until
/// `done` holds for the link's stats, and returns them.
pub(crate) fn wait_stats(link: &HostLink, done: impl Fn(&HostLinkStats) -> bool) -> HostLinkStats {
    loop {
        let stats = link.stats();
        if done(&stats) {
            return stats;
        }
        thread::sleep(Duration::from_millis(5));
    }
}

/// Asserts that `link` never opened its session and received no session frame.
pub(crate) fn assert_never_opened(link: &HostLink) {
    match link.try_recv() {
        Err(TryRecvError::Empty) => {}
        other => panic!("a refused link must have no event, got {other:?}"),
    }
    let stats = link.stats().session;
    assert_eq!((stats.links_opened, stats.frames_received), (0, 0), "{stats:?}");
}
