//! The RPC envelopes: what a typed call puts in front of its marshalled arguments, and what its
//! reply puts in front of the marshalled result (docs/wire-format.md §6).
//!
//! A request travels as the body of a postbox call (or of a one-way message) whose type is
//! [`RPC_MSG_TYPE`]; its reply is the body of the call's reply. Arguments and results are
//! postcard (little-endian, varint integers: the same bytes on every architecture).

use postbox_core::wire::{DecodeError, Reader};

/// The message type of every RPC call and one-way request.
pub const RPC_MSG_TYPE: u32 = 0x7270_6301;

/// The message type of describe and cancel requests (the control lane): a server takes them
/// on a receiver of their own, so that they are answered while its workers are busy. A
/// server also accepts them with [`RPC_MSG_TYPE`].
pub const RPC_CONTROL_MSG_TYPE: u32 = 0x7270_6302;

/// The envelope version this build speaks.
pub const RPC_VERSION: u8 = 2;

/// The longest method name a request carries (its length is one byte).
pub const MAX_METHOD_NAME: usize = 255;

/// A deadline field holding this says there is no deadline after all: what a caller sends in
/// a request that has the field (it may retry) when an attempt has no time limit.
pub const NO_DEADLINE: u64 = u64::MAX;

/// What a request asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RequestKind {
    /// Run a method and answer.
    Call,
    /// Run a method; nobody waits for an answer.
    Oneway,
    /// Answer with the service's schema.
    Describe,
    /// The caller stopped waiting for call `call_id`: tell the method (one-way).
    Cancel,
}

/// The fixed part of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestHeader<'a> {
    /// What is asked.
    pub kind: RequestKind,
    /// [`RequestFlags`]: what the caller may do about this call later.
    pub flags: u8,
    /// The caller's id for this call: the same on every retry of it (at-most-once).
    pub call_id: u64,
    /// The hash of the method's schema as the caller was built ([`MethodSchema::hash`]);
    /// 0 asks the server not to check it (`postbox call` from the command line).
    ///
    /// [`MethodSchema::hash`]: crate::MethodSchema::hash
    pub method_hash: u64,
    /// Nanoseconds the caller had left when it sent the request; 0 for no deadline (the
    /// request then carries no deadline field), and [`NO_DEADLINE`] for none either.
    pub deadline_ns: u64,
    /// The method's name (empty for [`RequestKind::Describe`]): at most [`MAX_METHOD_NAME`]
    /// bytes (a longer one is sent empty).
    pub method: std::borrow::Cow<'a, str>,
}

/// A request's header as read off the wire, its method's name still bytes: what a server reads
/// first. A server that finds the name among its own methods' needs no UTF-8 check (theirs are
/// UTF-8); [`into_header`](Self::into_header) makes the [`RequestHeader`], with that check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestFields<'a> {
    /// What is asked.
    pub kind: RequestKind,
    /// [`RequestFlags`].
    pub flags: u8,
    /// The caller's id for this call.
    pub call_id: u64,
    /// The hash of the method's schema as the caller was built; 0 for unchecked.
    pub method_hash: u64,
    /// Nanoseconds the caller had left when it sent the request; 0 for no deadline.
    pub deadline_ns: u64,
    /// The method's name, as sent: not checked as UTF-8.
    pub method: &'a [u8],
}

/// The bits of [`RequestHeader::flags`].
#[derive(Debug)]
pub struct RequestFlags;

impl RequestFlags {
    /// The caller may send this call again (same id) if its answer is late: the server keeps
    /// the reply for retries (at most once). Without it, nothing is kept.
    pub const RETRIES: u8 = 0x01;
    /// The caller may cancel this call: the server registers it for cancel requests.
    pub const CANCELLABLE: u8 = 0x02;
}

/// The flag bit that says a request carries a deadline field: set by the encoder when
/// [`RequestHeader::deadline_ns`] is not 0, and taken out of [`RequestHeader::flags`] by the
/// decoder.
const DEADLINE_FLAG: u8 = 0x04;

/// How a request ended, as its reply says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ReplyStatus {
    /// The method's result follows (postcard), or the schema for a describe.
    Ok,
    /// The method's application error follows (postcard).
    Err,
    /// The method exists but with another signature: text follows.
    TypeMismatch,
    /// No method of that name: text follows.
    UnknownMethod,
    /// The method panicked; the server goes on serving. The panic message follows.
    Panicked,
    /// The arguments did not decode as the method's: text follows.
    BadRequest,
    /// The deadline passed before the method could run.
    DeadlineExceeded,
    /// The caller cancelled the call before the method ran.
    Cancelled,
}

impl<'a> RequestHeader<'a> {
    /// Appends the header; the arguments follow it. A name longer than [`MAX_METHOD_NAME`]
    /// bytes is sent empty: no method has that name, so a server answers `UnknownMethod`
    /// (a name cut short could have been another method's).
    #[inline]
    pub fn encode(&self, buf: &mut Vec<u8>) {
        let (first, name) = self.first_word();
        // The fixed part as whole words, each appended as it is made: an array filled field by
        // field and then copied at once is read back before the processor can forward its
        // stores (a stall of several nanoseconds).
        buf.reserve(FIXED_LEN + DEADLINE_LEN + name.len());
        buf.extend_from_slice(&first.to_le_bytes());
        buf.extend_from_slice(&self.call_id.to_le_bytes());
        buf.extend_from_slice(&self.method_hash.to_le_bytes());
        if self.deadline_ns != 0 {
            buf.extend_from_slice(&self.deadline_ns.to_le_bytes());
        }
        buf.extend_from_slice(name);
    }

    /// Writes the header at the front of `out`, as [`encode`](Self::encode) appends it, and
    /// returns its length; `None` (and `out` untouched) when `out` is too short for it.
    #[inline]
    pub fn encode_into(&self, out: &mut [u8]) -> Option<usize> {
        let (first, name) = self.first_word();
        let deadline = if self.deadline_ns != 0 { DEADLINE_LEN } else { 0 };
        let len = FIXED_LEN + deadline + name.len();
        let out = out.get_mut(..len)?;
        out[..4].copy_from_slice(&first.to_le_bytes());
        out[4..12].copy_from_slice(&self.call_id.to_le_bytes());
        out[12..FIXED_LEN].copy_from_slice(&self.method_hash.to_le_bytes());
        if deadline != 0 {
            out[FIXED_LEN..FIXED_LEN + DEADLINE_LEN]
                .copy_from_slice(&self.deadline_ns.to_le_bytes());
        }
        out[FIXED_LEN + deadline..].copy_from_slice(name);
        Some(len)
    }

    /// The header's first word (version, kind, flags with the deadline bit, the name's length)
    /// and the name it is sent with.
    #[inline]
    fn first_word(&self) -> (u32, &[u8]) {
        let kind: u8 = match self.kind {
            RequestKind::Call => 1,
            RequestKind::Oneway => 2,
            RequestKind::Describe => 3,
            RequestKind::Cancel => 4,
        };
        let name = match self.method.as_bytes() {
            name if name.len() <= MAX_METHOD_NAME => name,
            _ => &[],
        };
        let deadline = if self.deadline_ns != 0 { DEADLINE_FLAG } else { 0 };
        let flags = (self.flags & !DEADLINE_FLAG) | deadline;
        // The cast cannot truncate (the match above).
        (u32::from_le_bytes([RPC_VERSION, kind, flags, name.len() as u8]), name)
    }

    /// Sets the deadline field of the encoded request `body` (a retry sends the same request
    /// with the time left then); 0 is written as 1 ns, since a request that has the field has
    /// a deadline. False, and `body` untouched, when the request was encoded without a
    /// deadline (and so without the field) or `body` is too short to be a request.
    pub fn set_deadline(body: &mut [u8], deadline_ns: u64) -> bool {
        if body.get(2).is_none_or(|flags| flags & DEADLINE_FLAG == 0) {
            return false;
        }
        let Some(field) = body.get_mut(FIXED_LEN..FIXED_LEN + DEADLINE_LEN) else {
            return false;
        };
        field.copy_from_slice(&deadline_ns.max(1).to_le_bytes());
        true
    }

    /// The call id of the encoded request `body` (`None` for a body too short).
    #[must_use]
    pub fn call_id_of(body: &[u8]) -> Option<u64> {
        body.get(CALL_ID_AT..CALL_ID_AT + 8)?.try_into().ok().map(u64::from_le_bytes)
    }

    /// Decodes the header at the front of `body`; returns it and the argument bytes after it.
    ///
    /// # Errors
    /// [`DecodeError`] for a short, foreign or malformed header.
    #[inline]
    pub fn decode(body: &'a [u8]) -> Result<(Self, &'a [u8]), DecodeError> {
        let (fields, args) = RequestFields::decode(body)?;
        Ok((fields.into_header()?, args))
    }
}

impl<'a> RequestFields<'a> {
    /// Decodes the header at the front of `body` as [`RequestHeader::decode`] does, all but
    /// the UTF-8 check of the method's name (the last check it makes); returns it and the
    /// argument bytes after it.
    ///
    /// # Errors
    /// [`DecodeError`] for a short, foreign or malformed header.
    #[inline]
    pub fn decode(body: &'a [u8]) -> Result<(Self, &'a [u8]), DecodeError> {
        // Every request is read here, on the server's critical path: a header that holds at
        // least its fixed part is read straight from the slice (with the checks, and errors,
        // of the field-by-field reading below, in the same order).
        let Some((fixed, rest)) = body.split_first_chunk::<FIXED_LEN>() else {
            return Self::decode_by_fields(body);
        };
        if fixed[0] != RPC_VERSION {
            return Err(DecodeError::UnsupportedVersion(fixed[0]));
        }
        let kind = kind_of(fixed[1])?;
        let flags = flags_of(fixed[2])?;
        let u64_at = |at: usize| {
            let mut bytes = [0u8; 8];
            bytes.copy_from_slice(&fixed[at..at + 8]);
            u64::from_le_bytes(bytes)
        };
        let (deadline_ns, rest) = if flags & DEADLINE_FLAG == 0 {
            (0, rest)
        } else {
            let Some((deadline, rest)) = rest.split_first_chunk::<DEADLINE_LEN>() else {
                return Err(DecodeError::Truncated);
            };
            (deadline_of(fixed[2], *deadline)?, rest)
        };
        let Some((method, args)) = rest.split_at_checked(usize::from(fixed[NAME_LEN_AT])) else {
            return Err(DecodeError::Truncated);
        };
        let fields = Self {
            kind,
            flags: flags & !DEADLINE_FLAG,
            call_id: u64_at(CALL_ID_AT),
            method_hash: u64_at(HASH_AT),
            deadline_ns,
            method,
        };
        Ok((fields, args))
    }

    /// The header, its method's name checked as UTF-8.
    ///
    /// # Errors
    /// [`DecodeError::InvalidUtf8`].
    #[inline]
    pub fn into_header(self) -> Result<RequestHeader<'a>, DecodeError> {
        let method = std::str::from_utf8(self.method).map_err(|_| DecodeError::InvalidUtf8)?;
        Ok(RequestHeader {
            kind: self.kind,
            flags: self.flags,
            call_id: self.call_id,
            method_hash: self.method_hash,
            deadline_ns: self.deadline_ns,
            method: method.into(),
        })
    }

    /// [`decode`](Self::decode), field by field: for bodies too short for its direct reading,
    /// which all fail, each with the error of the first field missing or wrong.
    fn decode_by_fields(body: &'a [u8]) -> Result<(Self, &'a [u8]), DecodeError> {
        let mut r = Reader::new(body);
        let version = r.u8()?;
        if version != RPC_VERSION {
            return Err(DecodeError::UnsupportedVersion(version));
        }
        let kind = kind_of(r.u8()?)?;
        let raw_flags = r.u8()?;
        let flags = flags_of(raw_flags)?;
        let name_len = r.u8()?;
        let call_id = r.u64()?;
        let method_hash = r.u64()?;
        let deadline_ns =
            if flags & DEADLINE_FLAG == 0 { 0 } else { deadline_of(raw_flags, r.array()?)? };
        let method = r.take(usize::from(name_len))?;
        let args = r.take(r.remaining())?;
        let flags = flags & !DEADLINE_FLAG;
        Ok((Self { kind, flags, call_id, method_hash, deadline_ns, method }, args))
    }
}

/// The request kind a header's byte names.
#[inline]
fn kind_of(byte: u8) -> Result<RequestKind, DecodeError> {
    match byte {
        1 => Ok(RequestKind::Call),
        2 => Ok(RequestKind::Oneway),
        3 => Ok(RequestKind::Describe),
        4 => Ok(RequestKind::Cancel),
        other => Err(DecodeError::UnknownKind(other)),
    }
}

/// A header's flags byte, when it holds only known flags.
#[inline]
fn flags_of(byte: u8) -> Result<u8, DecodeError> {
    if byte & !(RequestFlags::RETRIES | RequestFlags::CANCELLABLE | DEADLINE_FLAG) != 0 {
        return Err(DecodeError::InvalidFlags(byte));
    }
    Ok(byte)
}

/// The deadline a request's deadline field holds, under the flags byte `flags`: a field that
/// is there says there is a deadline, so 0 contradicts the flag (`InvalidFlags`).
#[inline]
fn deadline_of(flags: u8, field: [u8; DEADLINE_LEN]) -> Result<u64, DecodeError> {
    match u64::from_le_bytes(field) {
        0 => Err(DecodeError::InvalidFlags(flags)),
        ns => Ok(ns),
    }
}

impl ReplyStatus {
    /// Appends the reply's header (version, status); the payload follows it.
    pub fn encode(self, buf: &mut Vec<u8>) {
        buf.extend_from_slice(&self.header());
    }

    /// The reply's header (version, status), as [`encode`](Self::encode) appends it.
    #[must_use]
    pub fn header(self) -> [u8; 2] {
        [
            RPC_VERSION,
            match self {
                Self::Ok => 0,
                Self::Err => 1,
                Self::TypeMismatch => 2,
                Self::UnknownMethod => 3,
                Self::Panicked => 4,
                Self::BadRequest => 5,
                Self::DeadlineExceeded => 6,
                Self::Cancelled => 7,
            },
        ]
    }

    /// Decodes the status at the front of a reply body; returns it and the payload.
    ///
    /// # Errors
    /// [`DecodeError`] for a short, foreign or unknown status.
    #[inline]
    pub fn decode(body: &[u8]) -> Result<(Self, &[u8]), DecodeError> {
        let (status, payload) = match body {
            [] => return Err(DecodeError::Truncated),
            [version, ..] if *version != RPC_VERSION => {
                return Err(DecodeError::UnsupportedVersion(*version))
            }
            [_] => return Err(DecodeError::Truncated),
            [_, status, payload @ ..] => (*status, payload),
        };
        let status = match status {
            0 => Self::Ok,
            1 => Self::Err,
            2 => Self::TypeMismatch,
            3 => Self::UnknownMethod,
            4 => Self::Panicked,
            5 => Self::BadRequest,
            6 => Self::DeadlineExceeded,
            7 => Self::Cancelled,
            other => return Err(DecodeError::UnknownKind(other)),
        };
        Ok((status, payload))
    }

    /// A reply body: this status, then `payload`.
    #[must_use]
    pub fn with_payload(self, payload: &[u8]) -> Vec<u8> {
        let mut buf = Vec::with_capacity(2 + payload.len());
        self.encode(&mut buf);
        buf.extend_from_slice(payload);
        buf
    }
}

/// Where the method name's length (one byte) is in an encoded request.
const NAME_LEN_AT: usize = 3;
/// Where the call id field starts in an encoded request.
const CALL_ID_AT: usize = 4;
/// Where the method hash field starts in an encoded request.
const HASH_AT: usize = 12;
/// The length of a request's fixed part: the deadline field (when the flags say there is
/// one), the method's name and the arguments follow it.
const FIXED_LEN: usize = 20;
/// The length of the deadline field.
const DEADLINE_LEN: usize = 8;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_header_round_trips_and_leaves_the_arguments() {
        let header = RequestHeader {
            kind: RequestKind::Call,
            flags: RequestFlags::RETRIES,
            call_id: 7,
            method_hash: 0xdead_beef,
            deadline_ns: 1_000_000,
            method: "add".into(),
        };
        let mut buf = Vec::new();
        header.encode(&mut buf);
        buf.extend_from_slice(&[1, 2, 3]);
        assert_eq!(buf.len(), FIXED_LEN + DEADLINE_LEN + 3 + 3);
        let (decoded, args) = RequestHeader::decode(&buf).unwrap();
        assert_eq!(decoded, header);
        assert_eq!(args, [1, 2, 3]);
        assert_eq!(RequestHeader::call_id_of(&buf), Some(7));
        assert!(RequestHeader::set_deadline(&mut buf, 5));
        assert_eq!(RequestHeader::decode(&buf).unwrap().0.deadline_ns, 5);
        // Once there, the field keeps saying there is a deadline.
        assert!(RequestHeader::set_deadline(&mut buf, 0));
        assert_eq!(RequestHeader::decode(&buf).unwrap().0.deadline_ns, 1);
    }

    #[test]
    fn a_header_written_into_a_slice_is_the_one_appended_and_never_overruns() {
        let long = "m".repeat(MAX_METHOD_NAME + 1);
        for (deadline_ns, method) in [(0, "echo"), (1_000, "echo"), (0, ""), (5, long.as_str())] {
            let header = RequestHeader {
                kind: RequestKind::Oneway,
                flags: RequestFlags::CANCELLABLE,
                call_id: 0x0102_0304_0506_0708,
                method_hash: 0x1112_1314_1516_1718,
                deadline_ns,
                method: method.into(),
            };
            let mut appended = Vec::new();
            header.encode(&mut appended);
            let mut out = [0xffu8; FIXED_LEN + DEADLINE_LEN + 8];
            let len = header.encode_into(&mut out).expect("room for the header");
            assert_eq!(&out[..len], appended.as_slice(), "{deadline_ns} {method:?}");
            assert!(out[len..].iter().all(|&b| b == 0xff), "bytes after the header written");
            let mut short = vec![0xffu8; appended.len() - 1];
            assert_eq!(header.encode_into(&mut short), None);
            assert!(short.iter().all(|&b| b == 0xff), "a short slice was written");
        }
    }

    #[test]
    fn a_request_without_a_deadline_carries_no_deadline_field() {
        let header = RequestHeader {
            kind: RequestKind::Call,
            // A deadline flag given by the caller means nothing: the field decides.
            flags: RequestFlags::CANCELLABLE | DEADLINE_FLAG,
            call_id: 9,
            method_hash: 3,
            deadline_ns: 0,
            method: "echo".into(),
        };
        let mut buf = Vec::new();
        header.encode(&mut buf);
        buf.push(42);
        assert_eq!(buf.len(), FIXED_LEN + 4 + 1);
        assert_eq!(buf[2], RequestFlags::CANCELLABLE);
        let (decoded, args) = RequestHeader::decode(&buf).unwrap();
        assert_eq!(decoded, RequestHeader { flags: RequestFlags::CANCELLABLE, ..header });
        assert_eq!(args, [42]);
        let before = buf.clone();
        assert!(!RequestHeader::set_deadline(&mut buf, 5), "no field to set");
        assert_eq!(buf, before);
        assert!(!RequestHeader::set_deadline(&mut [], 5));
    }

    #[test]
    fn a_method_name_longer_than_a_request_carries_is_sent_empty() {
        let name = "m".repeat(MAX_METHOD_NAME + 1);
        let header = RequestHeader {
            kind: RequestKind::Call,
            flags: 0,
            call_id: 1,
            method_hash: 0,
            deadline_ns: 0,
            method: name.as_str().into(),
        };
        let mut buf = Vec::new();
        header.encode(&mut buf);
        let (decoded, args) = RequestHeader::decode(&buf).unwrap();
        assert_eq!(decoded.method, "");
        assert!(args.is_empty());
        let longest = RequestHeader { method: name[..MAX_METHOD_NAME].into(), ..header };
        buf.clear();
        longest.encode(&mut buf);
        assert_eq!(RequestHeader::decode(&buf).unwrap().0, longest);
    }

    #[test]
    fn foreign_and_truncated_envelopes_are_errors_not_panics() {
        let mut buf = Vec::new();
        RequestHeader {
            kind: RequestKind::Describe,
            flags: 0,
            call_id: 1,
            method_hash: 0,
            deadline_ns: 0,
            method: "".into(),
        }
        .encode(&mut buf);
        for len in 0..buf.len() {
            assert!(RequestHeader::decode(&buf[..len]).is_err(), "{len} bytes");
        }
        let mut other = buf.clone();
        other[0] = 9;
        assert_eq!(RequestHeader::decode(&other), Err(DecodeError::UnsupportedVersion(9)));
        let mut other = buf.clone();
        other[1] = 0;
        assert_eq!(RequestHeader::decode(&other), Err(DecodeError::UnknownKind(0)));
        let mut other = buf.clone();
        other[2] = 0x08;
        assert_eq!(RequestHeader::decode(&other), Err(DecodeError::InvalidFlags(0x08)));
        // A deadline flag without its field, and with a field that says none.
        let mut other = buf.clone();
        other[2] = DEADLINE_FLAG;
        assert_eq!(RequestHeader::decode(&other), Err(DecodeError::Truncated));
        other.extend_from_slice(&[0; DEADLINE_LEN]);
        assert_eq!(RequestHeader::decode(&other), Err(DecodeError::InvalidFlags(DEADLINE_FLAG)));
        // A name longer than the body.
        let mut other = buf;
        other[NAME_LEN_AT] = 1;
        assert_eq!(RequestHeader::decode(&other), Err(DecodeError::Truncated));
        assert_eq!(ReplyStatus::decode(&[]), Err(DecodeError::Truncated));
        assert_eq!(ReplyStatus::decode(&[9]), Err(DecodeError::UnsupportedVersion(9)));
        assert_eq!(ReplyStatus::decode(&[1, 0]), Err(DecodeError::UnsupportedVersion(1)));
        assert_eq!(ReplyStatus::decode(&[RPC_VERSION]), Err(DecodeError::Truncated));
        assert_eq!(ReplyStatus::decode(&[RPC_VERSION, 99]), Err(DecodeError::UnknownKind(99)));
    }

    #[test]
    fn a_method_name_that_is_not_utf8_is_read_as_bytes_and_refused_by_the_check() {
        let mut buf = Vec::new();
        RequestHeader {
            kind: RequestKind::Call,
            flags: 0,
            call_id: 3,
            method_hash: 4,
            deadline_ns: 0,
            method: "add".into(),
        }
        .encode(&mut buf);
        buf.push(42);
        let (fields, args) = RequestFields::decode(&buf).unwrap();
        assert_eq!((fields.method, args), (&b"add"[..], &[42][..]));
        assert_eq!(fields.into_header().unwrap().method, "add");
        // The name's last byte replaced by one that starts a sequence it does not finish.
        buf[FIXED_LEN + 2] = 0xc3;
        let (fields, args) = RequestFields::decode(&buf).unwrap();
        assert_eq!((fields.method, args), (&b"ad\xc3"[..], &[42][..]));
        assert_eq!((fields.call_id, fields.method_hash), (3, 4));
        assert_eq!(fields.into_header(), Err(DecodeError::InvalidUtf8));
        assert_eq!(RequestHeader::decode(&buf), Err(DecodeError::InvalidUtf8));
    }

    /// The direct reading of a request header must agree with the field-by-field one on
    /// every input: the same header and arguments, or the same error.
    #[test]
    fn the_direct_header_read_agrees_with_the_field_by_field_one() {
        let mut buf = Vec::new();
        RequestHeader {
            kind: RequestKind::Call,
            flags: RequestFlags::CANCELLABLE,
            call_id: 0x0102_0304_0506_0708,
            method_hash: 0x1122_3344_5566_7788,
            deadline_ns: 9,
            method: "échö".into(),
        }
        .encode(&mut buf);
        buf.extend_from_slice(&[7, 8, 9]);
        let agree = |body: &[u8]| {
            let by_fields = RequestFields::decode_by_fields(body);
            assert_eq!(RequestFields::decode(body), by_fields, "{body:?}");
        };
        for len in 0..=buf.len() {
            agree(&buf[..len]);
        }
        for at in 0..buf.len() {
            for byte in [0, 1, 2, 3, 4, 5, 0x80, 0xff] {
                let mut damaged = buf.clone();
                damaged[at] = byte;
                for len in [at + 1, damaged.len()] {
                    agree(&damaged[..len]);
                }
            }
        }
    }

    proptest::proptest! {
        #[test]
        fn any_bytes_decode_alike_both_ways(body in proptest::collection::vec(
            proptest::prelude::any::<u8>(), 0..64)) {
            let mut body = body;
            // Mostly plausible headers: the right version, kind and flags, short names.
            if body.len() > FIXED_LEN {
                body[0] = RPC_VERSION;
                body[1] %= 5;
                body[2] %= 8;
                body[NAME_LEN_AT] %= 16;
            }
            proptest::prop_assert_eq!(
                RequestFields::decode(&body),
                RequestFields::decode_by_fields(&body)
            );
        }
    }

    #[test]
    fn every_reply_status_round_trips_with_its_payload() {
        for status in [
            ReplyStatus::Ok,
            ReplyStatus::Err,
            ReplyStatus::TypeMismatch,
            ReplyStatus::UnknownMethod,
            ReplyStatus::Panicked,
            ReplyStatus::BadRequest,
            ReplyStatus::DeadlineExceeded,
            ReplyStatus::Cancelled,
        ] {
            let body = status.with_payload(b"xyz");
            assert_eq!(ReplyStatus::decode(&body).unwrap(), (status, &b"xyz"[..]));
        }
    }
}
