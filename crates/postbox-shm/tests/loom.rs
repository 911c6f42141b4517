//! Memory ordering of the ring under every interleaving loom explores:
//! `RUSTFLAGS="--cfg loom" cargo test -p postbox-shm --test loom --release` (ci/loom.sh).
#![cfg(loom)]

use postbox_shm::{HeapRing, HeapStream, PushError, Ring, Stream};

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

#[test]
fn a_stream_reader_sees_every_byte_in_order_across_the_wrap() {
    loom::model(|| {
        let (mut producer, mut consumer) = Stream::new(HeapStream::new(4)).split();
        let writer = loom::thread::spawn(move || {
            let bytes = [1u8, 2, 3, 4, 5, 6];
            let mut sent = 0;
            while sent < bytes.len() {
                match producer.write(&bytes[sent..(sent + 3).min(bytes.len())]).unwrap() {
                    0 => loom::thread::yield_now(),
                    n => sent += n,
                }
            }
        });
        let mut got = Vec::new();
        let mut buf = [0u8; 3];
        while got.len() < 6 {
            match consumer.read(&mut buf).unwrap() {
                0 => loom::thread::yield_now(),
                n => got.extend_from_slice(&buf[..n]),
            }
        }
        assert_eq!(got, [1, 2, 3, 4, 5, 6]);
        writer.join().unwrap();
    });
}

#[test]
fn a_stream_reader_sees_a_staged_batch_only_whole_after_its_publication() {
    loom::model(|| {
        let (mut producer, mut consumer) = Stream::new(HeapStream::new(8)).split();
        let writer = loom::thread::spawn(move || {
            assert!(producer.stage(&[&[1, 2], &[3]]).unwrap());
            assert!(producer.stage(&[&[4]]).unwrap());
            producer.publish();
        });
        let mut buf = [0u8; 8];
        let n = consumer.read(&mut buf).unwrap();
        // Nothing, or the whole batch: never part of it.
        assert!(n == 0 || buf[..n] == [1, 2, 3, 4], "read {:?}", &buf[..n]);
        writer.join().unwrap();
    });
}
