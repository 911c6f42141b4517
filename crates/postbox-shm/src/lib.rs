//! Shared-memory building blocks for postbox's fast local path: bounded single-producer,
//! single-consumer rings of byte messages and byte streams, the doorbells that wake a side of
//! a link (futex, or a wake-up descriptor the caller polls), the link segment that holds them,
//! payload pools and sealed payloads. This is the crate where postbox's `unsafe` lives (every
//! other crate forbids it); each block carries a `SAFETY` argument.
//!
//! A [`Ring`] is ring *logic* over a [`RingMemory`]: [`HeapRing`] keeps the memory in this
//! process (tests, Miri and loom run the same logic on it), [`RegionRing`] lays it out in a
//! region of memory another process can also write (a mapped segment). Memory another process
//! can write is untrusted: indices and lengths are loaded once, checked, and a ring whose
//! peer broke the rules reports [`RingError::Corrupt`] instead of reading out of bounds.
//!
//! ```
//! use postbox_shm::{HeapRing, Ring};
//!
//! let ring = Ring::new(HeapRing::new(4, 64));
//! let (mut producer, mut consumer) = ring.split();
//! producer.push(b"hello").unwrap();
//! let mut out = Vec::new();
//! assert!(consumer.pop(&mut out).unwrap());
//! assert_eq!(out, b"hello");
//! ```
#![deny(unsafe_op_in_unsafe_fn)]

#[cfg(not(loom))]
mod baseline;
#[cfg(not(loom))]
mod doorbell;
#[cfg(not(loom))]
mod feed;
#[cfg(not(loom))]
mod link_segment;
#[cfg(not(loom))]
mod pool;
mod ring;
#[cfg(not(loom))]
mod scribble;
#[cfg(not(loom))]
mod sealed;
#[cfg(not(loom))]
mod segment;
mod stream;
mod sync;
#[cfg(not(loom))]
mod sys;

#[cfg(not(loom))]
pub use baseline::{PingPong, PingWait};
#[cfg(not(loom))]
pub use doorbell::{Doorbell, Rung};
#[cfg(not(loom))]
pub use feed::{FeedConsumer, FeedEnd, FeedProducer, FEED_MAX_LEN};
#[cfg(not(loom))]
pub use link_segment::{
    create_link_segment, open_link_segment, LinkMemory, LinkSegmentError, LinkShape, LinkSide,
};
#[cfg(not(loom))]
pub use pool::{PoolError, PoolLayout, PoolLoan, PoolReader, PoolRun, PoolView, PoolWriter};
#[cfg(not(loom))]
pub use ring::RegionRing;
pub use ring::{
    Consumer, HeapRing, Popped, Producer, PushError, Ring, RingError, RingLayout, RingMemory,
};
#[cfg(not(loom))]
pub use scribble::Scribbler;
#[cfg(not(loom))]
pub use sealed::{SealedBuilder, SealedError, SealedPayload};
#[cfg(not(loom))]
pub use segment::{Segment, SegmentCreateError, SegmentOpenError, SegmentRing};
#[cfg(not(loom))]
pub use stream::RegionStream;
pub use stream::{
    HeapStream, Stream, StreamConsumer, StreamError, StreamLayout, StreamMemory, StreamProducer,
    StreamWatch,
};

#[cfg(all(any(fuzzing, test), not(loom)))]
#[doc(hidden)]
pub mod fuzzing;
