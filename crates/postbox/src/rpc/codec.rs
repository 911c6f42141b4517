//! Postcard into and out of the buffers a typed call already holds: arguments and results
//! appended to the request or reply being built (in a buffer each thread keeps between
//! calls), and a result decoded from the reply that carries it, a byte buffer taken over
//! rather than copied.

use serde::de::{DeserializeOwned, DeserializeSeed, Deserializer, SeqAccess, Visitor};
use serde::Serialize;

use crate::body::Body;
use crate::{spare, Message};

/// A message of the bytes `body` holds: a small body is copied into the message (which then
/// holds it without an allocation) and the buffer kept for the thread's next request or
/// reply; a larger one is handed over as it is.
pub(crate) fn message_of(body: Vec<u8>) -> Message {
    if body.len() > crate::body::SMALL_BODY {
        return Message::new(body);
    }
    let message = Message::copied(&body);
    spare::keep(body);
    message
}

/// Appends `value` (postcard) to `buf`.
///
/// The buffer is borrowed, not moved through postcard and back: a vector moved in and out of
/// a `Result` is copied in pieces that the processor cannot forward to the loads that read it
/// back, which cost more than the encoding itself (17 ns against 1 ns for 64 bytes here).
///
/// # Errors
/// When serde refuses the value (`buf` may then hold part of it).
pub(crate) fn append<T: Serialize + ?Sized>(value: &T, buf: &mut Vec<u8>) -> postcard::Result<()> {
    postcard::serialize_with_flavor(value, Append(buf))
}

/// Writes `value` (postcard) at the front of `out` and returns its length, as
/// `postcard::to_slice` does, with a one-byte varint (most lengths) stored without a copy call.
///
/// # Errors
/// `SerializeBufferFull` when `value` does not fit, or serde's refusal.
pub(crate) fn encode_into<T: Serialize + ?Sized>(
    value: &T,
    out: &mut [u8],
) -> postcard::Result<usize> {
    postcard::serialize_with_flavor(value, Fill { out, len: 0 })
}

/// Decodes a `T` (postcard) from `message`'s body, from byte `at` on; bytes after the value are
/// ignored, as `postcard::from_bytes` does. The body's buffer then serves this thread again,
/// unless the value took it over (see [`decode_in`]).
///
/// # Errors
/// postcard's, when the bytes are not a `T`.
#[inline]
pub(crate) fn decode_at<T: DeserializeOwned>(
    message: &mut Message,
    at: usize,
) -> postcard::Result<T> {
    let value = decode_in(message, at);
    spare::keep_body_of(message);
    value
}

/// Decodes a `T` (postcard) from `message`'s body, from byte `at` on; bytes after the value are
/// ignored, as `postcard::from_bytes` does.
///
/// A `T` that is a byte buffer as a whole (`serde_bytes::ByteBuf`, whose `Deserialize` asks for
/// a `byte_buf`), or a tuple of one (the arguments of a method taking one), takes the body
/// over, its front cut off in place: no second allocation and copy. A body held in place
/// (small) is copied once, into a buffer this thread kept when it has one. Any other `T` is
/// decoded by postcard from the body, which stays in `message`.
///
/// # Errors
/// postcard's, when the bytes are not a `T`.
#[inline]
pub(crate) fn decode_in<T: DeserializeOwned>(
    message: &mut Message,
    at: usize,
) -> postcard::Result<T> {
    let mut taken = false;
    let value = T::deserialize(TakeBytes { message, at, taken: &mut taken });
    if taken {
        // The value holds the body: whatever `T` made of it stands.
        return value;
    }
    // `T` asked for something else (or the bytes are not a byte string): postcard decides,
    // whatever the attempt came to.
    postcard::from_bytes(message.body().get(at..).unwrap_or_default())
}

/// A postcard flavor that appends to a borrowed `Vec` a slice at a time (`postcard::to_extend`
/// goes byte by byte, and takes the `Vec` by value).
struct Append<'a>(&'a mut Vec<u8>);

impl postcard::ser_flavors::Flavor for Append<'_> {
    type Output = ();

    #[inline]
    fn try_extend(&mut self, data: &[u8]) -> postcard::Result<()> {
        match data {
            // A varint of one byte (most lengths and small numbers): no copy call for it.
            [byte] => self.0.push(*byte),
            _ => self.0.extend_from_slice(data),
        }
        Ok(())
    }

    #[inline]
    fn try_push(&mut self, data: u8) -> postcard::Result<()> {
        self.0.push(data);
        Ok(())
    }

    fn finalize(self) -> postcard::Result<()> {
        Ok(())
    }
}

/// A postcard flavor that fills a borrowed slice from its front (see [`encode_into`]).
struct Fill<'a> {
    out: &'a mut [u8],
    /// Bytes written so far.
    len: usize,
}

impl postcard::ser_flavors::Flavor for Fill<'_> {
    type Output = usize;

    #[inline]
    fn try_extend(&mut self, data: &[u8]) -> postcard::Result<()> {
        match data {
            [byte] => self.try_push(*byte),
            _ => {
                let end = self.len + data.len();
                let to = self.out.get_mut(self.len..end);
                to.ok_or(postcard::Error::SerializeBufferFull)?.copy_from_slice(data);
                self.len = end;
                Ok(())
            }
        }
    }

    #[inline]
    fn try_push(&mut self, data: u8) -> postcard::Result<()> {
        *self.out.get_mut(self.len).ok_or(postcard::Error::SerializeBufferFull)? = data;
        self.len += 1;
        Ok(())
    }

    fn finalize(self) -> postcard::Result<usize> {
        Ok(self.len)
    }
}

/// A deserializer that answers only a request for a byte buffer, with the message's body from
/// byte `at` on (a postcard byte string: its length, then its bytes), taken out of `message`
/// (and `taken` set). Anything else, or bytes that are not a byte string, it refuses without
/// taking the body.
struct TakeBytes<'a> {
    message: &'a mut Message,
    at: usize,
    taken: &'a mut bool,
}

impl<'de> Deserializer<'de> for TakeBytes<'_> {
    type Error = postcard::Error;

    fn deserialize_any<V: Visitor<'de>>(self, _: V) -> postcard::Result<V::Value> {
        Err(postcard::Error::WontImplement)
    }

    #[inline]
    fn deserialize_byte_buf<V: Visitor<'de>>(self, visitor: V) -> postcard::Result<V::Value> {
        let (start, end) = {
            let body = self.message.body();
            match body.get(self.at..).unwrap_or_default() {
                // A length below 128 is one byte of postcard's varint: the usual case, read
                // here at once.
                [len, bytes @ ..] if *len < 0x80 && usize::from(*len) <= bytes.len() => {
                    (self.at + 1, self.at + 1 + usize::from(*len))
                }
                // Any other, postcard reads, so that it is read exactly as the fallback would.
                payload => {
                    let Ok((bytes, rest)) = postcard::take_from_bytes::<&[u8]>(payload) else {
                        return Err(postcard::Error::WontImplement);
                    };
                    // The bytes come right before `rest`, which ends the body.
                    let end = body.len() - rest.len();
                    (end - bytes.len(), end)
                }
            }
        };
        *self.taken = true;
        let Body::Owned(owned) = &mut self.message.body else {
            // Held in place (small) or received in place: the bytes alone are copied once.
            return visitor.visit_byte_buf(spare::copy_of(&self.message.body()[start..end]));
        };
        // Owned bytes are taken as they are, moved to the front.
        let mut owned = std::mem::take(owned);
        owned.copy_within(start..end, 0);
        owned.truncate(end - start);
        visitor.visit_byte_buf(owned)
    }

    fn deserialize_tuple<V: Visitor<'de>>(
        self,
        len: usize,
        visitor: V,
    ) -> postcard::Result<V::Value> {
        // A tuple of one is its element (postcard writes no length): a method's one argument.
        if len != 1 {
            return Err(postcard::Error::WontImplement);
        }
        visitor.visit_seq(OneElement(Some(self)))
    }

    fn is_human_readable(&self) -> bool {
        // As postcard's deserializer: a type may pick its form by this.
        false
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes option unit
        unit_struct newtype_struct seq tuple_struct map struct enum identifier ignored_any
    }
}

/// The one element of a tuple of one, read by [`TakeBytes`].
struct OneElement<'a>(Option<TakeBytes<'a>>);

impl<'de> SeqAccess<'de> for OneElement<'_> {
    type Error = postcard::Error;

    fn next_element_seed<S: DeserializeSeed<'de>>(
        &mut self,
        seed: S,
    ) -> postcard::Result<Option<S::Value>> {
        self.0.take().map(|element| seed.deserialize(element)).transpose()
    }

    fn size_hint(&self) -> Option<usize> {
        Some(usize::from(self.0.is_some()))
    }
}

#[cfg(test)]
mod tests {
    use serde::de::Deserialize;
    use serde::Serializer;

    use super::*;
    use crate::spare::{keep, take as buffer};

    /// A byte buffer as `serde_bytes::ByteBuf` is: a byte string in, an owned one out.
    #[derive(Debug, PartialEq)]
    struct Bytes(Vec<u8>);

    impl Serialize for Bytes {
        fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
            serializer.serialize_bytes(&self.0)
        }
    }

    impl<'de> Deserialize<'de> for Bytes {
        fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
            struct Owned;
            impl Visitor<'_> for Owned {
                type Value = Bytes;
                fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                    f.write_str("bytes")
                }
                fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Bytes, E> {
                    Ok(Bytes(v.to_vec()))
                }
                fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<Bytes, E> {
                    Ok(Bytes(v))
                }
            }
            deserializer.deserialize_byte_buf(Owned)
        }
    }

    /// A type that makes up a value when the deserializer refuses it.
    #[derive(Debug, PartialEq)]
    struct Lenient(u32);

    impl<'de> Deserialize<'de> for Lenient {
        fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
            Ok(Lenient(u32::deserialize(deserializer).unwrap_or(7)))
        }
    }

    /// A reply-like body: two bytes of status, then `value`, then `trailing`.
    fn body_of<T: Serialize + ?Sized>(value: &T, trailing: &[u8]) -> Vec<u8> {
        let mut body = vec![1, 0];
        append(value, &mut body).unwrap();
        body.extend_from_slice(trailing);
        body
    }

    #[test]
    fn a_byte_buffer_takes_the_body_over_without_a_copy() {
        for len in [0, 1, 64, 127, 128, 300] {
            let payload: Vec<u8> = (0..len).map(|i| i as u8).collect();
            let body = body_of(&Bytes(payload.clone()), b"");
            let at = body.as_ptr() as usize;
            let decoded: Bytes = decode_at(&mut Message::new(body), 2).unwrap();
            assert_eq!(decoded.0, payload);
            assert_eq!(decoded.0.as_ptr() as usize, at, "the body's own allocation");
        }
    }

    #[test]
    fn a_single_byte_buffer_argument_takes_the_body_over() {
        for len in [0, 1, 64, 300] {
            let payload: Vec<u8> = (0..len).map(|i| i as u8).collect();
            let body = body_of(&(Bytes(payload.clone()),), b"");
            let at = body.as_ptr() as usize;
            let mut message = Message::new(body);
            let (decoded,): (Bytes,) = decode_in(&mut message, 2).unwrap();
            assert_eq!(decoded.0, payload);
            assert_eq!(decoded.0.as_ptr() as usize, at, "the body's own allocation");
            assert!(message.body().is_empty(), "the message gave its body up");
        }
    }

    #[test]
    fn arguments_that_are_not_one_byte_buffer_leave_the_body_where_it_is() {
        let body = body_of(&(Bytes(b"abc".to_vec()), 7u8), b"");
        let mut message = Message::new(body.clone());
        let decoded: (Bytes, u8) = decode_in(&mut message, 2).unwrap();
        assert_eq!(decoded, (Bytes(b"abc".to_vec()), 7));
        assert_eq!(message.body(), body, "decoded by postcard, the body untouched");
    }

    #[test]
    fn decoding_in_place_gives_what_postcard_gives() {
        let cases: Vec<Vec<u8>> = vec![
            body_of(&Bytes(b"abc".to_vec()), b"trailing"),
            body_of(&Bytes(Vec::new()), b""),
            vec![1, 0, 5, 1, 2],          // a length longer than the bytes
            vec![1, 0],                   // nothing at all
            vec![1, 0, 0xff, 0xff, 0xff], // a length that does not end
            body_of(&(3u32, "x"), b""),   // not a byte string
        ];
        for body in cases {
            let expected = postcard::from_bytes::<Bytes>(&body[2..]);
            assert_eq!(
                decode_at::<Bytes>(&mut Message::new(body.clone()), 2),
                expected,
                "{body:?}"
            );
            let expected = postcard::from_bytes::<Vec<u8>>(&body[2..]);
            assert_eq!(decode_at::<Vec<u8>>(&mut Message::new(body.clone()), 2), expected);
            let expected = postcard::from_bytes::<Option<Bytes>>(&body[2..]);
            assert_eq!(decode_at::<Option<Bytes>>(&mut Message::new(body.clone()), 2), expected);
            let expected = postcard::from_bytes::<(Bytes,)>(&body[2..]);
            assert_eq!(decode_at::<(Bytes,)>(&mut Message::new(body.clone()), 2), expected);
            let expected = postcard::from_bytes::<(Lenient,)>(&body[2..]);
            assert_eq!(decode_at::<(Lenient,)>(&mut Message::new(body.clone()), 2), expected);
            let expected = postcard::from_bytes::<(Bytes, Bytes)>(&body[2..]);
            assert_eq!(decode_at::<(Bytes, Bytes)>(&mut Message::new(body.clone()), 2), expected);
            let expected = postcard::from_bytes::<Lenient>(&body[2..]);
            assert_eq!(decode_at::<Lenient>(&mut Message::new(body), 2), expected);
        }
    }

    #[test]
    fn a_small_message_is_a_copy_and_the_buffer_stays_with_the_thread() {
        for len in [0, 1, crate::body::SMALL_BODY - 1, crate::body::SMALL_BODY] {
            let mut body = buffer(256);
            body.extend((0..len).map(|i| i as u8));
            let (expected, at) = (body.clone(), body.as_ptr() as usize);
            let message = message_of(body);
            assert_eq!(message.body(), expected, "{len} bytes");
            assert!(matches!(message.body, Body::Small(_)), "{len} bytes held in place");
            let again = buffer(1);
            assert_eq!(again.as_ptr() as usize, at, "the thread kept the buffer");
            keep(again);
        }
    }

    #[test]
    fn a_larger_message_takes_the_buffer_over() {
        let mut body = buffer(256);
        body.extend((0..=crate::body::SMALL_BODY).map(|i| i as u8));
        let (expected, at) = (body.clone(), body.as_ptr() as usize);
        let message = message_of(body);
        assert_eq!(message.body(), expected);
        assert_eq!(message.body().as_ptr() as usize, at, "the buffer itself");
    }

    #[test]
    fn a_byte_buffer_decodes_from_a_body_held_in_place() {
        for len in [0, 1, 40, 60] {
            let payload: Vec<u8> = (0..len).map(|i| i as u8).collect();
            let body = body_of(&Bytes(payload.clone()), b"x");
            let message = Message::copied(&body);
            assert!(matches!(message.body, Body::Small(_)));
            let decoded: Bytes = decode_at(&mut { message }, 2).unwrap();
            assert_eq!(decoded.0, payload);
        }
    }

    #[test]
    fn append_writes_what_postcard_writes_after_the_bytes_there() {
        let value = (Bytes(vec![9; 200]), "name", 300u32, Some(-1i8));
        let mut expected = vec![1, 2, 3];
        expected.extend_from_slice(&postcard::to_stdvec(&value).unwrap());
        let mut appended = vec![1, 2, 3];
        append(&value, &mut appended).unwrap();
        assert_eq!(appended, expected);
    }

    #[test]
    fn encoding_into_a_slice_writes_what_postcard_writes_or_says_it_does_not_fit() {
        let value = (Bytes(vec![9; 200]), "name", 300u32, Some(-1i8), 5u8);
        let expected = postcard::to_stdvec(&value).unwrap();
        let mut out = [0xeeu8; 300];
        assert_eq!(encode_into(&value, &mut out), Ok(expected.len()));
        assert_eq!(&out[..expected.len()], expected, "the value at the front");
        assert!(out[expected.len()..].iter().all(|&b| b == 0xee), "nothing after it");
        let mut exact = vec![0u8; expected.len()];
        assert_eq!(encode_into(&value, &mut exact), Ok(expected.len()));
        assert_eq!(exact, expected);
        // Every shorter slice, whether it ends in a one-byte varint, a string or the bytes.
        for len in 0..expected.len() {
            let mut short = vec![0u8; len];
            let result = encode_into(&value, &mut short);
            assert_eq!(result, Err(postcard::Error::SerializeBufferFull), "{len} bytes");
        }
    }
}
