//! Arbitrary bytes as the bodies of typed requests and replies (docs/wire-format.md §6), as a
//! server's handler and a client take them. `RequestHeader::decode`, `RequestFields::decode`
//! (the handler's reading, its method's name still bytes) and `ReplyStatus::decode` may not
//! panic, the two readings of a request agree, and whatever decodes encodes back to the same
//! bytes. The decoded requests
//! then drive a server's per-call bookkeeping as its handler does (the reply cache that makes
//! retries run at most once, the cancel table of the control lane), checked against a model.
//!
//! Input: the whole input is one body; then it is read again as requests, each a length byte,
//! a caller byte and that many bytes of body.
#![no_main]

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use postbox_core::ProcessId;
use postbox_rpc::cancel::EARLY_CANCELS;
use postbox_rpc::{
    CancelTable, Lookup, ReplyCache, ReplyStatus, RequestFields, RequestFlags, RequestHeader,
    RequestKind, MAX_WAITERS,
};

fuzz_target!(|data: &[u8]| {
    request(data);
    reply(data);

    let mut server = Server::new();
    let mut rest = data;
    while let [len, caller, tail @ ..] = rest {
        let (body, next) = tail.split_at(usize::from(*len).min(tail.len()));
        rest = next;
        // A few callers, so that call ids meet.
        let caller = ProcessId { pid: u32::from(caller % 4), generation: 1 };
        if let Some(header) = request(body) {
            server.handle(caller, &header, body);
        }
        reply(body);
        // Calls left running end, oldest first, as serving threads finish them.
        while server.running.len() > 4 {
            let run = server.running.remove(0);
            server.settle(run);
        }
    }
    while let Some(run) = server.running.pop() {
        server.settle(run);
    }
});

/// Decodes `body` as a request; checks that it encodes back to the same bytes and that the
/// fixed-offset accessors a client uses on its own requests agree with the decoder.
fn request(body: &[u8]) -> Option<RequestHeader<'_>> {
    let mut retried = body.to_vec();
    let has_field = RequestHeader::set_deadline(&mut retried, 0x0102_0304_0506_0708);
    let by_fields = RequestFields::decode(body).and_then(|(f, args)| Ok((f.into_header()?, args)));
    assert_eq!(by_fields, RequestHeader::decode(body), "the handler's reading agrees");
    let Ok((header, args)) = RequestHeader::decode(body) else {
        let _ = RequestHeader::call_id_of(body);
        return None;
    };
    let mut again = Vec::new();
    header.encode(&mut again);
    again.extend_from_slice(args);
    assert_eq!(again, body, "a decoded request encodes to the same bytes");
    assert_eq!(RequestHeader::call_id_of(body), Some(header.call_id));
    // Only a request with a deadline has the field a retry sets.
    assert_eq!(has_field, header.deadline_ns != 0, "the deadline field is there iff a deadline");
    if has_field {
        let (with_deadline, same_args) =
            RequestHeader::decode(&retried).expect("a new deadline keeps a request valid");
        assert_eq!(with_deadline.deadline_ns, 0x0102_0304_0506_0708);
        assert_eq!(RequestHeader { deadline_ns: header.deadline_ns, ..with_deadline }, header);
        assert_eq!(same_args, args);
    } else {
        assert_eq!(retried, body, "a request without the field is left as it is");
    }
    Some(header)
}

/// Decodes `body` as a reply; checks that it encodes back to the same bytes.
fn reply(body: &[u8]) {
    if let Ok((status, payload)) = ReplyStatus::decode(body) {
        assert_eq!(status.with_payload(payload), body, "a decoded reply encodes the same");
    }
}

/// Who called, and the call id it chose.
type Key = (ProcessId, u64);

/// A server's bookkeeping, and a model of what it must answer.
struct Server {
    cache: ReplyCache<u64>,
    cancels: CancelTable,
    /// Calls whose method runs, oldest first.
    running: Vec<Run>,
    next_waiter: u64,
    /// Model: retries waiting for each running call kept for retries.
    joined: HashMap<Key, usize>,
    /// Model: the last reply kept for each call (the cache may have forgotten it since).
    replies: HashMap<Key, Vec<u8>>,
    /// Model: the flags of the calls registered for cancels.
    registered: HashMap<Key, Arc<AtomicBool>>,
    /// Model: cancels that came before their calls, oldest first.
    early: VecDeque<Key>,
}

/// A call whose method runs.
struct Run {
    key: Key,
    /// Kept for retries (in the reply cache).
    kept: bool,
    cancellable: bool,
    /// Its method fails before running (a deadline passed): a retry may run it.
    abandon: bool,
    reply: Vec<u8>,
}

impl Server {
    fn new() -> Self {
        Self {
            cache: ReplyCache::new(CACHE_ENTRIES, CACHE_BYTES),
            cancels: CancelTable::new(),
            running: Vec::new(),
            next_waiter: 0,
            joined: HashMap::new(),
            replies: HashMap::new(),
            registered: HashMap::new(),
            early: VecDeque::new(),
        }
    }

    /// What the handler does with a decoded request.
    fn handle(&mut self, caller: ProcessId, header: &RequestHeader<'_>, body: &[u8]) {
        let key = (caller, header.call_id);
        match header.kind {
            RequestKind::Cancel => self.cancel(key),
            RequestKind::Describe => {}
            RequestKind::Call if header.flags & RequestFlags::RETRIES != 0 => {
                self.next_waiter += 1;
                let waiter = self.next_waiter;
                let kept_running = self.running.iter().any(|r| r.key == key && r.kept);
                match self.cache.begin(caller, header.call_id, waiter) {
                    Lookup::Run(w) => {
                        assert_eq!(w, waiter);
                        assert!(!kept_running, "a call kept running runs again");
                        self.run(key, header, body, true);
                    }
                    Lookup::Joined(pushed_out) => {
                        assert!(kept_running, "a retry joined a call that does not run");
                        let joined = self.joined.entry(key).or_default();
                        if *joined == MAX_WAITERS {
                            assert!(pushed_out.is_some(), "past MAX_WAITERS the oldest goes");
                        } else {
                            assert_eq!(pushed_out, None);
                            *joined += 1;
                        }
                    }
                    Lookup::Replay(w, bytes) => {
                        assert_eq!(w, waiter);
                        assert!(!kept_running, "a running call replayed");
                        assert_eq!(Some(&bytes), self.replies.get(&key), "another call's reply");
                    }
                }
            }
            RequestKind::Call | RequestKind::Oneway => self.run(key, header, body, false),
            _ => {}
        }
    }

    fn cancel(&mut self, key: Key) {
        self.cancels.cancel(key.0, key.1);
        match self.registered.get(&key) {
            Some(flag) => assert!(flag.load(Ordering::Acquire), "a cancel reached its call"),
            None => {
                if !self.early.contains(&key) {
                    self.early.push_back(key);
                }
                while self.early.len() > EARLY_CANCELS {
                    self.early.pop_front();
                }
            }
        }
    }

    fn run(&mut self, key: Key, header: &RequestHeader<'_>, body: &[u8], kept: bool) {
        let cancellable = header.flags & RequestFlags::CANCELLABLE != 0;
        let abandon = header.deadline_ns & 1 != 0;
        let run = Run { key, kept, cancellable, abandon, reply: body.to_vec() };
        if cancellable && !abandon {
            let cancelled_before = self.early.iter().position(|k| *k == key);
            match self.cancels.start(key.0, key.1) {
                Some(flag) => {
                    assert_eq!(cancelled_before, None, "a call cancelled before it started ran");
                    self.registered.insert(key, flag);
                }
                None => {
                    let at = cancelled_before.expect("a call not cancelled did not run");
                    self.early.remove(at);
                    // Not run: a retry may run it.
                    return self.settle(Run { abandon: true, cancellable: false, ..run });
                }
            }
        }
        if header.deadline_ns & 2 == 0 {
            self.settle(run);
        } else {
            // Still running when later requests come.
            self.running.push(run);
        }
    }

    /// The method ended (or never ran): answer the retries that waited.
    fn settle(&mut self, run: Run) {
        let (caller, id) = run.key;
        if run.cancellable {
            self.cancels.finish(caller, id);
            self.registered.remove(&run.key);
        }
        if !run.kept {
            return;
        }
        let waiters = if run.abandon {
            self.cache.abandon(caller, id)
        } else {
            self.replies.insert(run.key, run.reply.clone());
            self.cache.finish(caller, id, &run.reply)
        };
        let joined = self.joined.remove(&run.key).unwrap_or(0);
        assert_eq!(waiters.len(), joined, "every retry that waited is answered");
        assert!(self.cache.len() <= CACHE_ENTRIES);
    }
}

/// Small, so that the fuzzer reaches the cache's bounds.
const CACHE_ENTRIES: usize = 8;
const CACHE_BYTES: usize = 512;
