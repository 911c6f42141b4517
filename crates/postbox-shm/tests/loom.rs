//! Memory ordering of the ring under every interleaving loom explores:
//! `RUSTFLAGS="--cfg loom" cargo test -p postbox-shm --test loom --release` (ci/loom.sh).
#![cfg(loom)]

use postbox_shm::{HeapRing, PushError, Ring};

#[test]
fn a_consumer_sees_every_message_whole_and_in_order() {
    loom::model(|| {
        let (mut producer, mut consumer) = Ring::new(HeapRing::new(2, 8)).split();
        let writer = loom::thread::spawn(move || {
            for i in 0..3u8 {
                while producer.push(&[i; 4]) == Err(PushError::Full) {
                    loom::thread::yield_now();
                }
            }
        });
        let mut out = Vec::new();
        let mut next = 0u8;
        while next < 3 {
            if consumer.pop(&mut out).unwrap() {
                assert_eq!(out, [next; 4]);
                next += 1;
            } else {
                loom::thread::yield_now();
            }
        }
        writer.join().unwrap();
    });
}
