//! Property tests for the codecs: round trips, stream cutting, hostile input, corruption.
//!
//! The laws checked here are the ones `docs/wire-format.md` states: a frame or control message
//! decodes to what was encoded, a stream is cut into the same frames whatever the read sizes,
//! no input makes a decoder panic, and a damaged frame is never delivered.

use postbox_core::wire::control::{CONTROL_HEADER_LEN, MAX_CONTROL_LEN};
use postbox_core::wire::frame::{HEADER_LEN, MAX_PRIORITY};
use postbox_core::wire::padding::Padding;
use postbox_core::{
    Capacity, ControlErrorCode, ControlMessage, DecodeError, Delivery, EndpointKind, Frame,
    FrameDecoder, FrameHeader, FrameKind, LinkId, ListenTarget, Operation, Overflow, PeerIdentity,
    PortCounters, PortEntry, PortName, PortSpec, ProcessId, Quota, Rights, Target,
};
use proptest::collection::vec;
use proptest::prelude::*;

/// The body limit used where the test does not vary it; above the 64 KiB staging buffer.
const LIMIT: u32 = 1 << 20;

// ---------------------------------------------------------------------------------------------
// §2 Data frames
// ---------------------------------------------------------------------------------------------

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn any_frame_decodes_to_itself(frame in frame(body_up_to_70_kib()), slack in any::<u32>()) {
        let bytes = frame.to_bytes();
        prop_assert_eq!(bytes.len(), HEADER_LEN + frame.body.len());
        let limit = frame.header.body_len.saturating_add(slack);
        prop_assert_eq!(Frame::decode(&bytes, limit), Ok(frame));
    }

    #[test]
    fn a_body_one_byte_over_the_limit_is_rejected_as_too_long(
        frame in frame(vec(any::<u8>(), 1..2048)),
    ) {
        let declared = frame.header.body_len;
        prop_assert_eq!(
            Frame::decode(&frame.to_bytes(), declared - 1),
            Err(DecodeError::TooLong { declared, limit: declared - 1 })
        );
    }

    #[test]
    fn a_stream_of_frames_is_cut_into_the_same_frames_whatever_the_chunk_sizes(
        frames in vec(frame(stream_body()), 1..6),
        chunks in chunk_sizes(),
    ) {
        let stream: Vec<u8> = frames.iter().flat_map(Frame::to_bytes).collect();

        let (out, end, decoder) = feed_with_handle_bytes(&stream, &chunks, LIMIT);
        prop_assert_eq!(end, None);
        prop_assert_eq!(&out, &frames);
        prop_assert_eq!(decoder.buffered(), 0);
        prop_assert!(!decoder.is_mid_frame());

        let (out, end, decoder) = feed_with_read_buffer(&stream, &chunks, LIMIT);
        prop_assert_eq!(end, None);
        prop_assert_eq!(&out, &frames);
        prop_assert_eq!(decoder.buffered(), 0);
        prop_assert!(!decoder.is_mid_frame());
    }

    #[test]
    fn padding_after_any_of_the_frames_leaves_the_stream_cut_into_the_same_frames(
        frames in vec(frame(stream_body()), 1..6),
        padded in vec(any::<bool>(), 6),
        chunks in chunk_sizes(),
    ) {
        let mut stream = Vec::new();
        for (frame, pad) in frames.iter().zip(&padded) {
            stream.extend_from_slice(&frame.to_bytes());
            if *pad {
                stream.extend_from_slice(Padding::after(stream.len() as u64).as_slice());
            }
        }

        let (out, end, decoder) = feed_with_handle_bytes(&stream, &chunks, LIMIT);
        prop_assert_eq!(end, None);
        prop_assert_eq!(&out, &frames);
        prop_assert_eq!(decoder.buffered(), 0);

        let (out, end, decoder) = feed_with_read_buffer(&stream, &chunks, LIMIT);
        prop_assert_eq!(end, None);
        prop_assert_eq!(&out, &frames);
        prop_assert_eq!(decoder.buffered(), 0);
    }

    #[test]
    fn a_stream_cut_short_leaves_the_decoder_mid_frame(
        frames in vec(frame(stream_body()), 1..4),
        chunks in chunk_sizes(),
        cut in any::<prop::sample::Index>(),
    ) {
        let stream: Vec<u8> = frames.iter().flat_map(Frame::to_bytes).collect();
        let cut = cut.index(stream.len());
        for (out, end, decoder) in [
            feed_with_handle_bytes(&stream[..cut], &chunks, LIMIT),
            feed_with_read_buffer(&stream[..cut], &chunks, LIMIT),
        ] {
            prop_assert_eq!(end, None);
            prop_assert!(out.len() < frames.len());
            prop_assert_eq!(&out[..], &frames[..out.len()]);
            let consumed: usize = out.iter().map(|f| HEADER_LEN + f.body.len()).sum();
            prop_assert_eq!(decoder.buffered(), cut - consumed);
            prop_assert_eq!(decoder.is_mid_frame(), cut > consumed);
        }
    }

    #[test]
    fn flipping_any_byte_of_a_frame_makes_decode_fail(
        frame in frame(vec(any::<u8>(), 0..512)),
        position in any::<prop::sample::Index>(),
        mask in 1..=u8::MAX,
    ) {
        let mut bytes = frame.to_bytes();
        let position = position.index(bytes.len());
        bytes[position] ^= mask;
        let decoded = Frame::decode(&bytes, LIMIT);
        prop_assert!(
            decoded.is_err(),
            "byte {} ^ {:#04x} decoded to {:?}", position, mask, decoded
        );
    }

    #[test]
    fn a_damaged_frame_in_a_stream_is_never_delivered_nor_anything_after_it(
        frames in vec(frame(vec(any::<u8>(), 0..300)), 1..5),
        victim in any::<prop::sample::Index>(),
        offset in any::<prop::sample::Index>(),
        mask in 1..=u8::MAX,
        chunks in chunk_sizes(),
    ) {
        let victim = victim.index(frames.len());
        let mut stream = Vec::new();
        for (i, frame) in frames.iter().enumerate() {
            let mut bytes = frame.to_bytes();
            if i == victim {
                let position = offset.index(bytes.len());
                bytes[position] ^= mask;
            }
            stream.extend_from_slice(&bytes);
        }
        for (out, end, decoder) in [
            feed_with_handle_bytes(&stream, &chunks, LIMIT),
            feed_with_read_buffer(&stream, &chunks, LIMIT),
        ] {
            // A damaged length field may make the decoder wait for bytes that never come;
            // otherwise the damage is an error. Either way nothing from the victim on arrives.
            prop_assert_eq!(&out[..], &frames[..victim]);
            if end.is_none() {
                prop_assert!(decoder.is_mid_frame());
            }
        }
    }

    #[test]
    fn frame_decode_of_arbitrary_bytes_returns_instead_of_panicking(
        bytes in vec(any::<u8>(), 0..2048),
        limit in limit(),
    ) {
        if let Ok(frame) = Frame::decode(&bytes, limit) {
            prop_assert_eq!(frame.to_bytes(), bytes);
        }
    }

    #[test]
    fn frame_decode_of_damaged_frames_returns_instead_of_panicking(
        bytes in damaged_stream(),
        limit in limit(),
    ) {
        if let Ok(frame) = Frame::decode(&bytes, limit) {
            prop_assert_eq!(frame.to_bytes(), bytes);
        }
    }

    #[test]
    fn the_decoder_returns_on_arbitrary_bytes_and_both_feeding_paths_agree(
        bytes in prop_oneof![vec(any::<u8>(), 0..2048), damaged_stream()],
        chunks in chunk_sizes(),
        limit in limit(),
    ) {
        let by_copy = feed_with_handle_bytes(&bytes, &chunks, limit);
        let in_place = feed_with_read_buffer(&bytes, &chunks, limit);
        for (out, end, decoder) in [&by_copy, &in_place] {
            for frame in out {
                prop_assert_eq!(frame.body.len(), frame.header.body_len as usize);
                prop_assert!(frame.header.body_len <= limit);
                prop_assert!(frame.header.priority <= MAX_PRIORITY);
            }
            // The first error is the real one; `Poisoned` only ever follows it.
            prop_assert_ne!(end, &Some(DecodeError::Poisoned));
            prop_assert!(decoder.buffered() <= bytes.len());
        }
        prop_assert_eq!(&by_copy.0, &in_place.0);
        prop_assert_eq!(by_copy.1, in_place.1);
    }
}

/// Every single-byte corruption of one small frame, exhaustively: 8 bit masks would already
/// do for a CRC, but all 255 values also cover the field checks that run before it.
#[test]
fn every_single_byte_corruption_of_a_small_frame_is_an_error() {
    for kind in [
        FrameKind::Oneway,
        FrameKind::Confirmed,
        FrameKind::Credit,
        FrameKind::Call,
        FrameKind::Reply,
        FrameKind::ErrorReply,
    ] {
        let body = b"postbox".to_vec();
        let frame = Frame {
            header: FrameHeader {
                kind,
                priority: 31,
                msg_type: 0xdead_beef,
                id: u64::MAX,
                correlation: 1,
                body_len: body.len() as u32,
                placement: postbox_core::Placement::Inline,
            },
            body,
        };
        let bytes = frame.to_bytes();
        for position in 0..bytes.len() {
            for mask in 1..=u8::MAX {
                let mut bad = bytes.clone();
                bad[position] ^= mask;
                let decoded = Frame::decode(&bad, LIMIT);
                assert!(
                    decoded.is_err(),
                    "{kind:?}: byte {position} ^ {mask:#04x} decoded to {decoded:?}"
                );
            }
        }
    }
}

/// After the first error every later poll says `Poisoned`, whatever arrives next.
#[test]
fn after_any_decode_error_later_polls_return_poisoned() {
    let good = frame_of(FrameKind::Oneway, b"fine").to_bytes();
    let mut damaged = good.clone();
    damaged[HEADER_LEN] ^= 1;
    let mut decoder = FrameDecoder::new(LIMIT);
    decoder.handle_bytes(&good);
    decoder.handle_bytes(&damaged);
    assert_eq!(decoder.poll_frame(), Ok(Some(frame_of(FrameKind::Oneway, b"fine"))));
    assert!(matches!(decoder.poll_frame(), Err(DecodeError::ChecksumMismatch { .. })));
    decoder.handle_bytes(&good);
    assert_eq!(decoder.poll_frame(), Err(DecodeError::Poisoned));
    assert_eq!(decoder.poll_frame(), Err(DecodeError::Poisoned));
}

// ---------------------------------------------------------------------------------------------
// §3 Control messages
// ---------------------------------------------------------------------------------------------

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn any_control_message_decodes_to_itself(message in control_message()) {
        let mut buf = Vec::new();
        message.encode(&mut buf);
        prop_assert!(buf.len() <= MAX_CONTROL_LEN);
        prop_assert!(buf.len() >= CONTROL_HEADER_LEN);
        prop_assert_eq!(ControlMessage::decode(&buf), Ok(message));
    }

    #[test]
    fn control_messages_append_to_what_the_buffer_already_holds(
        message in control_message(),
        prefix in vec(any::<u8>(), 0..16),
    ) {
        let mut alone = Vec::new();
        message.encode(&mut alone);
        let mut buf = prefix.clone();
        message.encode(&mut buf);
        prop_assert_eq!(&buf[..prefix.len()], &prefix[..]);
        prop_assert_eq!(&buf[prefix.len()..], &alone[..]);
    }

    #[test]
    fn a_refusal_detail_is_cut_to_1024_bytes_on_a_character_boundary(
        request in any::<u32>(),
        code in control_error_code(),
        detail in "\\PC{0,700}",
    ) {
        let message = ControlMessage::Refused { request, code, detail: detail.clone() };
        let mut buf = Vec::new();
        message.encode(&mut buf);
        match ControlMessage::decode(&buf) {
            Ok(ControlMessage::Refused { request: r, code: c, detail: d }) => {
                prop_assert_eq!(r, request);
                prop_assert_eq!(c, code);
                prop_assert!(d.len() <= 1024);
                prop_assert!(detail.starts_with(&d));
                if detail.len() <= 1024 {
                    prop_assert_eq!(d, detail);
                } else {
                    // At most the three trailing bytes of a split character are dropped.
                    prop_assert!(d.len() > 1024 - 4);
                }
            }
            other => prop_assert!(false, "decoded to {:?}", other),
        }
    }

    #[test]
    fn control_decode_of_arbitrary_bytes_returns_instead_of_panicking(
        bytes in prop_oneof![vec(any::<u8>(), 0..512), damaged_control_message()],
    ) {
        if let Ok(message) = ControlMessage::decode(&bytes) {
            prop_assert_reencodes(&message)?;
        }
    }
}

#[test]
fn control_decode_rejects_a_message_over_64_kib_before_reading_it() {
    let bytes = vec![0u8; MAX_CONTROL_LEN + 1];
    assert_eq!(
        ControlMessage::decode(&bytes),
        Err(DecodeError::TooLong {
            declared: (MAX_CONTROL_LEN + 1) as u32,
            limit: MAX_CONTROL_LEN as u32,
        })
    );
}

/// A listing is cut only when it would exceed 64 KiB, not by a worst-case row count.
/// Regression: the first encoder stopped at 236 rows (room for 255-byte names) even when the
/// rows were short.
#[test]
fn a_listing_that_fits_in_64_kib_is_not_truncated() {
    let owner = PeerIdentity { process_id: ProcessId::new(1, 1), uid: 0, gid: 0 };
    let ports: Vec<PortEntry> = (0..300)
        .map(|i| PortEntry {
            name: PortName::new(&format!("p{i:03}")).unwrap(),
            owner,
            connections: 0,
            kind: EndpointKind::Port,
        })
        .collect();
    let message = ControlMessage::Listing { request: 1, nodes: 1, ports, truncated: false };
    let mut buf = Vec::new();
    message.encode(&mut buf);
    assert!(buf.len() < MAX_CONTROL_LEN / 2);
    match ControlMessage::decode(&buf) {
        Ok(ControlMessage::Listing { ports, truncated, .. }) => {
            assert_eq!((ports.len(), truncated), (300, false));
        }
        other => panic!("decoded to {other:?}"),
    }
}

// ---------------------------------------------------------------------------------------------
// Strategies and drivers
// ---------------------------------------------------------------------------------------------

fn frame_kind() -> impl Strategy<Value = FrameKind> {
    prop_oneof![
        Just(FrameKind::Oneway),
        Just(FrameKind::Confirmed),
        Just(FrameKind::Credit),
        Just(FrameKind::Call),
        Just(FrameKind::Reply),
        Just(FrameKind::ErrorReply),
    ]
}

/// A frame with arbitrary header fields and a body from `body`; `body_len` matches the body.
fn frame(body: impl Strategy<Value = Vec<u8>>) -> impl Strategy<Value = Frame> {
    (frame_kind(), 0..=MAX_PRIORITY, any::<u32>(), any::<u64>(), any::<u64>(), body).prop_map(
        |(kind, priority, msg_type, id, correlation, body)| Frame {
            header: FrameHeader {
                kind,
                priority,
                msg_type,
                id,
                correlation,
                body_len: body.len() as u32,
                placement: postbox_core::Placement::Inline,
            },
            body,
        },
    )
}

fn frame_of(kind: FrameKind, body: &[u8]) -> Frame {
    Frame {
        header: FrameHeader {
            kind,
            priority: 0,
            msg_type: 0,
            id: 1,
            correlation: 0,
            body_len: body.len() as u32,
            placement: postbox_core::Placement::Inline,
        },
        body: body.to_vec(),
    }
}

/// Bodies from empty to about 70 KiB, so some are larger than the decoder's 64 KiB staging
/// buffer and take the read-in-place path.
fn body_up_to_70_kib() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        3 => vec(any::<u8>(), 0..256),
        1 => vec(any::<u8>(), 0..=70 * 1024),
    ]
}

/// Bodies for multi-frame streams: mostly small, sometimes around and above 64 KiB.
fn stream_body() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        6 => vec(any::<u8>(), 0..64),
        3 => vec(any::<u8>(), 0..4096),
        1 => vec(any::<u8>(), 60 * 1024..=70 * 1024),
    ]
}

/// Read sizes, used in turn: single bytes, small reads, and reads larger than any frame.
fn chunk_sizes() -> impl Strategy<Value = Vec<usize>> {
    vec(prop_oneof![1..=4usize, 1..=200usize, 1..=80_000usize], 1..8)
}

/// Body limits for hostile input, kept small enough that no declared length makes the test
/// allocate much (the decoder allocates a declared body up to the limit).
fn limit() -> impl Strategy<Value = u32> {
    prop_oneof![Just(0u32), 0..=64u32, 0..=(1u32 << 17)]
}

/// Valid frame streams with a few bytes overwritten, then maybe cut short: garbage that gets
/// past the version check, unlike most arbitrary bytes.
fn damaged_stream() -> impl Strategy<Value = Vec<u8>> {
    (
        vec(frame(vec(any::<u8>(), 0..200)), 1..4),
        vec((any::<prop::sample::Index>(), any::<u8>()), 0..4),
        any::<prop::sample::Index>(),
        any::<bool>(),
    )
        .prop_map(|(frames, edits, cut, cut_short)| {
            let mut bytes: Vec<u8> = frames.iter().flat_map(Frame::to_bytes).collect();
            for (position, value) in edits {
                let position = position.index(bytes.len());
                bytes[position] = value;
            }
            if cut_short {
                bytes.truncate(cut.index(bytes.len() + 1));
            }
            bytes
        })
}

fn port_name() -> impl Strategy<Value = PortName> {
    prop_oneof![
        8 => "[a-zA-Z0-9_./@:-]{1,40}",
        1 => "[a-z0-9_./-]{200,255}",
    ]
    .prop_map(|name| PortName::new(&name).unwrap())
}

fn process_id() -> impl Strategy<Value = ProcessId> {
    (any::<u32>(), any::<u32>()).prop_map(|(pid, generation)| ProcessId::new(pid, generation))
}

fn identity() -> impl Strategy<Value = PeerIdentity> {
    (process_id(), any::<u32>(), any::<u32>()).prop_map(|(process_id, uid, gid)| PeerIdentity {
        process_id,
        uid,
        gid,
    })
}

/// Every code, with `Unknown` only for values that no named code uses (`Unknown(3)` would
/// come back as `InvalidName`).
fn control_error_code() -> impl Strategy<Value = ControlErrorCode> {
    prop_oneof![
        Just(ControlErrorCode::NameTaken),
        Just(ControlErrorCode::NoSuchPort),
        Just(ControlErrorCode::InvalidName),
        Just(ControlErrorCode::OutOfOrder),
        Just(ControlErrorCode::Malformed),
        Just(ControlErrorCode::NotOwner),
        Just(ControlErrorCode::LimitExceeded),
        Just(ControlErrorCode::Unanswered),
        prop_oneof![Just(0u8), 9..=u8::MAX].prop_map(ControlErrorCode::Unknown),
    ]
}

/// Every capacity and overflow policy; message sizes 0 (none) or any.
fn port_spec() -> impl Strategy<Value = PortSpec> {
    let capacity = prop_oneof![
        Just(Capacity::Rendezvous),
        (1..=u32::MAX).prop_map(Capacity::Bounded),
        any::<u64>().prop_map(|max_bytes| Capacity::Unbounded { max_bytes }),
    ];
    let overflow =
        prop_oneof![Just(Overflow::Block), Just(Overflow::Fail), Just(Overflow::DropOldest)];
    let message_size = prop_oneof![Just(None), (1..=u32::MAX).prop_map(Some)];
    let delivery = prop_oneof![Just(Delivery::Reliable), Just(Delivery::Datagrams)];
    (capacity, overflow, message_size, delivery).prop_map(
        |(capacity, overflow, message_size, delivery)| PortSpec {
            capacity,
            overflow,
            message_size,
            delivery,
        },
    )
}

fn port_entry() -> impl Strategy<Value = PortEntry> {
    let kind = prop_oneof![
        Just(EndpointKind::Port),
        Just(EndpointKind::Mailbox),
        Just(EndpointKind::Topic),
        Just(EndpointKind::Service)
    ];
    (port_name(), identity(), any::<u32>(), kind)
        .prop_map(|(name, owner, connections, kind)| PortEntry { name, owner, connections, kind })
}

/// Every variant, with fields inside what the encoder carries unchanged (a refusal detail of
/// at most 1024 bytes, a listing well under the row cap).
fn control_message() -> impl Strategy<Value = ControlMessage> {
    let request = any::<u32>;
    prop_oneof![
        request().prop_map(|request| ControlMessage::Hello { request }),
        (request(), identity(), any::<u32>()).prop_map(|(request, identity, max_message_size)| {
            ControlMessage::Welcome { request, identity, max_message_size }
        }),
        (request(), port_name(), port_spec(), any::<bool>()).prop_map(
            |(request, name, spec, service)| ControlMessage::OpenPort {
                request,
                name,
                spec,
                service
            }
        ),
        (request(), port_name())
            .prop_map(|(request, name)| ControlMessage::ClosePort { request, name }),
        (
            request(),
            prop_oneof![port_name().prop_map(Target::Port), process_id().prop_map(Target::Inbox),],
            rights(),
        )
            .prop_map(|(request, target, rights)| ControlMessage::Connect {
                request,
                target,
                rights
            }),
        (request(), operation(), "[a-z0-9/*]{0,200}").prop_map(|(request, operation, name)| {
            ControlMessage::Denied { request, operation, name }
        }),
        (request(), port_name(), process_id(), rights()).prop_map(|(request, name, to, rights)| {
            ControlMessage::Grant { request, name, to, rights }
        }),
        (request(), port_name(), process_id())
            .prop_map(|(request, name, from)| ControlMessage::Revoke { request, name, from }),
        any::<u64>().prop_map(|link| ControlMessage::LinkRevoked { link: LinkId(link) }),
        (request(), any::<u64>())
            .prop_map(|(request, link)| ControlMessage::LinkClosed { request, link: LinkId(link) }),
        request().prop_map(|request| ControlMessage::List { request }),
        request().prop_map(|request| ControlMessage::Ok { request }),
        (request(), any::<u64>(), identity(), port_spec(), rights(), quota()).prop_map(
            |(request, link, server, spec, rights, quota)| ControlMessage::Connected {
                request,
                link: LinkId(link),
                server,
                spec,
                rights,
                quota
            }
        ),
        (request(), any::<u32>(), vec(port_entry(), 0..20), any::<bool>()).prop_map(
            |(request, nodes, ports, truncated)| ControlMessage::Listing {
                request,
                nodes,
                ports,
                truncated,
            }
        ),
        (request(), control_error_code(), "\\PC{0,200}").prop_map(|(request, code, detail)| {
            ControlMessage::Refused { request, code, detail }
        }),
        (
            any::<u64>(),
            prop_oneof![port_name().prop_map(ListenTarget::Port), Just(ListenTarget::Inbox),],
            identity(),
            rights(),
            quota(),
        )
            .prop_map(|(link, target, client, rights, quota)| {
                let link = LinkId(link);
                ControlMessage::IncomingConnection { link, target, client, rights, quota }
            }),
        (request(), port_name()).prop_map(|(request, name)| ControlMessage::Stat { request, name }),
        (request(), port_name(), any::<u32>(), any::<bool>()).prop_map(
            |(request, name, capacity, open_existing)| ControlMessage::CreateMailbox {
                request,
                name,
                capacity,
                open_existing
            }
        ),
        (request(), port_name())
            .prop_map(|(request, name)| ControlMessage::UnlinkMailbox { request, name }),
        (request(), port_name())
            .prop_map(|(request, name)| ControlMessage::ReceiveMailbox { request, name }),
        (request(), port_name())
            .prop_map(|(request, topic)| ControlMessage::Publish { request, topic }),
        (request(), "[a-z0-9/*]{1,40}", any::<u32>(), any::<bool>()).prop_map(
            |(request, pattern, capacity, drop_newest)| ControlMessage::Subscribe {
                request,
                pattern,
                capacity,
                drop_newest
            }
        ),
        (request(), port_name(), any::<u32>()).prop_map(|(request, topic, history)| {
            ControlMessage::CreateTopic { request, topic, history }
        }),
        (any::<u32>(), port_name())
            .prop_map(|(query, name)| ControlMessage::StatQuery { query, name }),
        (any::<u32>(), prop::option::of(counters()))
            .prop_map(|(query, counters)| ControlMessage::StatReport { query, counters }),
        (request(), identity(), port_spec(), counters()).prop_map(
            |(request, owner, spec, counters)| ControlMessage::Stats {
                request,
                owner,
                spec,
                counters
            }
        ),
        (request(), "[a-z0-9.-]{1,63}", process_id()).prop_map(|(request, host, process)| {
            ControlMessage::ResolveProcess { request, host, process }
        }),
        (request(), process_id())
            .prop_map(|(request, process)| ControlMessage::Resolved { request, process }),
    ]
}

fn counters() -> impl Strategy<Value = PortCounters> {
    (any::<u64>(), any::<u64>(), any::<u32>()).prop_map(|(queued, lost, links)| PortCounters {
        queued,
        lost,
        links,
    })
}

/// A valid control message with a few bytes overwritten, then maybe cut short.
fn damaged_control_message() -> impl Strategy<Value = Vec<u8>> {
    (
        control_message(),
        vec((any::<prop::sample::Index>(), any::<u8>()), 0..4),
        any::<prop::sample::Index>(),
        any::<bool>(),
    )
        .prop_map(|(message, edits, cut, cut_short)| {
            let mut bytes = Vec::new();
            message.encode(&mut bytes);
            for (position, value) in edits {
                let position = position.index(bytes.len());
                bytes[position] = value;
            }
            if cut_short {
                bytes.truncate(cut.index(bytes.len() + 1));
            }
            bytes
        })
}

/// Checks that a decoded message survives encode and decode again: unchanged, except where
/// the encoder cuts on purpose (a refusal detail over 1024 bytes, a listing over its row cap),
/// and then only by shortening.
fn prop_assert_reencodes(message: &ControlMessage) -> Result<(), TestCaseError> {
    let mut buf = Vec::new();
    message.encode(&mut buf);
    prop_assert!(buf.len() <= MAX_CONTROL_LEN);
    let again = ControlMessage::decode(&buf);
    match (message, &again) {
        (
            ControlMessage::Refused { detail, .. },
            Ok(ControlMessage::Refused { detail: cut, .. }),
        ) if detail.len() > 1024 => {
            prop_assert!(cut.len() <= 1024 && detail.starts_with(cut.as_str()));
        }
        (
            ControlMessage::Listing { request, nodes, ports, truncated },
            Ok(ControlMessage::Listing { request: r, nodes: n, ports: shown, truncated: t }),
        ) if shown.len() < ports.len() => {
            prop_assert_eq!((request, nodes), (r, n));
            prop_assert_eq!(&ports[..shown.len()], &shown[..]);
            prop_assert!(*t);
        }
        _ => prop_assert_eq!(again, Ok(message.clone())),
    }
    Ok(())
}

/// What a decoder gave back: the frames in order, the error that stopped it (if any), and the
/// decoder itself for inspection.
type Fed = (Vec<Frame>, Option<DecodeError>, FrameDecoder);

/// Feeds `stream` through [`FrameDecoder::handle_bytes`], `chunks` bytes at a time (in turn),
/// polling until `Ok(None)` after each; stops at the first error.
fn feed_with_handle_bytes(stream: &[u8], chunks: &[usize], limit: u32) -> Fed {
    let mut decoder = FrameDecoder::new(limit);
    let mut out = Vec::new();
    let mut pos = 0;
    for &chunk in chunks.iter().cycle() {
        if pos == stream.len() {
            break;
        }
        let n = chunk.min(stream.len() - pos);
        decoder.handle_bytes(&stream[pos..pos + n]);
        pos += n;
        if let Err(e) = drain(&mut decoder, &mut out) {
            return (out, Some(e), decoder);
        }
    }
    (out, None, decoder)
}

/// Feeds `stream` through [`FrameDecoder::read_buffer`] and [`FrameDecoder::commit`], as a
/// socket read would: each read takes at most `chunk` bytes and at most what the buffer holds.
fn feed_with_read_buffer(stream: &[u8], chunks: &[usize], limit: u32) -> Fed {
    let mut decoder = FrameDecoder::new(limit);
    let mut out = Vec::new();
    let mut pos = 0;
    for &chunk in chunks.iter().cycle() {
        if pos == stream.len() {
            break;
        }
        let buf = decoder.read_buffer();
        assert!(!buf.is_empty(), "read_buffer is empty after poll_frame returned None");
        let n = chunk.min(buf.len()).min(stream.len() - pos);
        buf[..n].copy_from_slice(&stream[pos..pos + n]);
        decoder.commit(n);
        pos += n;
        if let Err(e) = drain(&mut decoder, &mut out) {
            return (out, Some(e), decoder);
        }
    }
    (out, None, decoder)
}

/// Polls until `Ok(None)`; on an error checks that the decoder stays poisoned.
fn drain(decoder: &mut FrameDecoder, out: &mut Vec<Frame>) -> Result<(), DecodeError> {
    loop {
        match decoder.poll_frame() {
            Ok(Some(frame)) => out.push(frame),
            Ok(None) => return Ok(()),
            Err(e) => {
                assert_eq!(decoder.poll_frame(), Err(DecodeError::Poisoned));
                return Err(e);
            }
        }
    }
}

fn quota() -> impl Strategy<Value = Quota> {
    (any::<u32>(), any::<u64>())
        .prop_map(|(calls_in_flight, queued_bytes)| Quota { calls_in_flight, queued_bytes })
}

fn rights() -> impl Strategy<Value = Rights> {
    (0u8..=3).prop_map(|bits| Rights::from_u8(bits).unwrap())
}

fn operation() -> impl Strategy<Value = Operation> {
    proptest::sample::select(Operation::ALL.to_vec())
}
