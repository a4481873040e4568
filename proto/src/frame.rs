//! Length-prefixed postcard frames over a byte stream, without IO.
//!
//! A frame is a 4-byte big-endian payload length followed by exactly one postcard-encoded
//! value. The caller owns the socket: it passes [`encode`]'s bytes to a stream, and feeds what
//! it reads into a [`FrameDecoder`], which yields whole values.
//!
//! Goals: refuse an oversized frame from its header alone, before buffering its payload; never
//! buffer more than one maximum-size frame plus one header beyond the frames already complete.
//! Non-goals: versioning (each message type carries its own), integrity (QUIC and TLS do that).

use serde::Serialize;
use serde::de::DeserializeOwned;

/// Bytes of the length prefix.
pub const FRAME_HEADER_BYTES: usize = 4;

/// Default maximum payload of one frame, in bytes (16 MiB). Both ends of a connection must use
/// the same limit; a receiver refuses anything larger before buffering it.
pub const MAX_FRAME_BYTES: usize = 16 * 1024 * 1024;

/// Why a frame could not be encoded or decoded.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// A payload is longer than the limit (or than a `u32` can say). When decoding, the stream
    /// is unusable from this frame on: close the connection.
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge { len: usize, max: usize },
    /// A frame's payload is not exactly one valid postcard value of the expected type. The
    /// decoder has skipped the frame; the peer speaks another protocol or version.
    #[error("malformed frame: {0}")]
    Malformed(postcard::Error),
    /// A buffer given to [`decode`] is shorter than a frame header.
    #[error("buffer of {len} bytes is shorter than the {FRAME_HEADER_BYTES}-byte frame header")]
    Truncated { len: usize },
    /// A buffer given to [`decode`] is not exactly one frame.
    #[error("frame header declares {declared} payload bytes but {actual} follow")]
    LengthMismatch { declared: usize, actual: usize },
    /// The value could not be serialized (e.g. a sequence of unknown length).
    #[error("cannot encode frame: {0}")]
    Encode(postcard::Error),
}

/// The largest payload `max` allows that a `u32` prefix can express.
fn effective_max(max: usize) -> usize {
    max.min(u32::MAX as usize)
}

/// Encodes `value` as one frame: a 4-byte big-endian length, then the postcard bytes.
/// Refuses payloads longer than `max` bytes.
pub fn encode<T: Serialize + ?Sized>(value: &T, max: usize) -> Result<Vec<u8>, FrameError> {
    let mut out = Vec::new();
    encode_into(value, max, &mut out)?;
    Ok(out)
}

/// Like [`encode`], appending the frame to `out`. On error `out` is left as it was.
pub fn encode_into<T: Serialize + ?Sized>(
    value: &T,
    max: usize,
    out: &mut Vec<u8>,
) -> Result<(), FrameError> {
    let start = out.len();
    out.extend_from_slice(&[0; FRAME_HEADER_BYTES]);
    if let Err(err) = postcard::to_extend(value, Append(out)) {
        out.truncate(start);
        return Err(FrameError::Encode(err));
    }
    let len = out.len() - start - FRAME_HEADER_BYTES;
    let max = effective_max(max);
    if len > max {
        out.truncate(start);
        return Err(FrameError::TooLarge { len, max });
    }
    out[start..start + FRAME_HEADER_BYTES].copy_from_slice(&(len as u32).to_be_bytes());
    Ok(())
}

/// Lets postcard append to a borrowed buffer, so a failed encode can be rolled back.
struct Append<'a>(&'a mut Vec<u8>);

impl Extend<u8> for Append<'_> {
    fn extend<I: IntoIterator<Item = u8>>(&mut self, iter: I) {
        self.0.extend(iter);
    }
}

/// Decodes a buffer that holds exactly one frame (e.g. a whole QUIC stream).
pub fn decode<T: DeserializeOwned>(frame: &[u8], max: usize) -> Result<T, FrameError> {
    let Some((header, payload)) = frame.split_first_chunk::<FRAME_HEADER_BYTES>() else {
        return Err(FrameError::Truncated { len: frame.len() });
    };
    let declared = u32::from_be_bytes(*header) as usize;
    let max = effective_max(max);
    if declared > max {
        return Err(FrameError::TooLarge { len: declared, max });
    }
    if declared != payload.len() {
        return Err(FrameError::LengthMismatch { declared, actual: payload.len() });
    }
    decode_payload(payload)
}

/// Decodes one payload, which must hold exactly one value.
fn decode_payload<T: DeserializeOwned>(payload: &[u8]) -> Result<T, FrameError> {
    match postcard::take_from_bytes::<T>(payload) {
        Ok((value, [])) => Ok(value),
        // Trailing bytes: the payload was written for a different type.
        Ok((_, _rest)) => Err(FrameError::Malformed(postcard::Error::DeserializeBadEncoding)),
        Err(err) => Err(FrameError::Malformed(err)),
    }
}

/// Splits a byte stream into frames. Feed it bytes as they arrive with
/// [`extend`](Self::extend); take complete values with [`next`](Self::next).
///
/// Each header is checked as soon as its 4 bytes arrive; an oversized one stops the decoder
/// before any of that frame's payload is buffered, and every later call to `next` (after the
/// complete frames before it) returns [`FrameError::TooLarge`].
#[derive(Debug)]
pub struct FrameDecoder {
    max: usize,
    /// Received bytes not yet returned; `buf[read..]` is live.
    buf: Vec<u8>,
    read: usize,
    /// Offset in `buf` where the next unchecked header starts. Everything before it belongs to
    /// frames whose header was checked.
    next_header: usize,
    /// Set once a header declares more than `max`; no byte is buffered after that.
    refused: Option<FrameError>,
}

impl FrameDecoder {
    /// A decoder accepting payloads of at most `max` bytes (see [`MAX_FRAME_BYTES`]).
    pub fn new(max: usize) -> Self {
        Self { max: effective_max(max), buf: Vec::new(), read: 0, next_header: 0, refused: None }
    }

    /// Bytes received and not yet returned as frames.
    pub fn buffered_len(&self) -> usize {
        self.buf.len() - self.read
    }

    /// Whether an oversized header stopped the decoder.
    pub fn is_refused(&self) -> bool {
        self.refused.is_some()
    }

    /// Appends received bytes. After an oversized header, bytes are dropped.
    pub fn extend(&mut self, mut input: &[u8]) {
        while !input.is_empty() && self.refused.is_none() {
            if self.buf.len() < self.next_header {
                // Inside a checked frame's payload: take up to its end.
                let take = (self.next_header - self.buf.len()).min(input.len());
                self.buf.extend_from_slice(&input[..take]);
                input = &input[take..];
                continue;
            }
            // Inside the next header: take up to its end, then check it.
            let header_end = self.next_header + FRAME_HEADER_BYTES;
            let take = (header_end - self.buf.len()).min(input.len());
            self.buf.extend_from_slice(&input[..take]);
            input = &input[take..];
            if self.buf.len() == header_end {
                let header: [u8; FRAME_HEADER_BYTES] =
                    self.buf[self.next_header..header_end].try_into().expect("4-byte header");
                let len = u32::from_be_bytes(header) as usize;
                if len > self.max {
                    self.buf.truncate(self.next_header);
                    self.refused = Some(FrameError::TooLarge { len, max: self.max });
                } else {
                    self.next_header = header_end + len;
                }
            }
        }
    }

    /// The next complete value, `Ok(None)` if more bytes are needed.
    ///
    /// A malformed payload is consumed and reported once; decoding can continue with the next
    /// frame. An oversized header is reported on every call once the frames before it are taken.
    #[allow(
        clippy::should_implement_trait,
        reason = "generic over the frame type, so it cannot be Iterator::next"
    )]
    pub fn next<T: DeserializeOwned>(&mut self) -> Result<Option<T>, FrameError> {
        let live = &self.buf[self.read..];
        let Some((header, rest)) = live.split_first_chunk::<FRAME_HEADER_BYTES>() else {
            return match &self.refused {
                Some(err) => Err(err.clone()),
                None => Ok(None),
            };
        };
        let len = u32::from_be_bytes(*header) as usize;
        if rest.len() < len {
            return Ok(None);
        }
        let result = decode_payload(&rest[..len]);
        self.read += FRAME_HEADER_BYTES + len;
        self.compact();
        result.map(Some)
    }

    /// Drops returned bytes once they are at least half the buffer, so that a long stream of
    /// small frames costs amortized O(1) copying per byte.
    fn compact(&mut self) {
        if self.read == self.buf.len() {
            self.next_header -= self.read;
            self.buf.clear();
            self.read = 0;
        } else if self.read >= self.buf.len() / 2 {
            self.buf.drain(..self.read);
            self.next_header -= self.read;
            self.read = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use serde::Deserialize;

    use super::*;
    use crate::enums::DeployStage;
    use crate::ping::{PingReportBean, PingRequestBean};

    #[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
    struct Msg {
        id: u64,
        name: String,
        data: Vec<u8>,
    }

    fn msg(id: u64, len: usize) -> Msg {
        Msg { id, name: format!("m{id}"), data: vec![id as u8; len] }
    }

    #[test]
    fn encode_writes_big_endian_length_then_postcard() {
        let frame = encode(&msg(1, 3), MAX_FRAME_BYTES).unwrap();
        let payload = postcard::to_stdvec(&msg(1, 3)).unwrap();
        assert_eq!(frame[..4], (payload.len() as u32).to_be_bytes());
        assert_eq!(frame[4..], payload[..]);
        assert_eq!(decode::<Msg>(&frame, MAX_FRAME_BYTES).unwrap(), msg(1, 3));
    }

    #[test]
    fn round_trips_a_ping_through_the_decoder() {
        let mut ping = PingRequestBean::new("i-0abc".into());
        ping.reports.push(PingReportBean {
            deploy_stage: Some(DeployStage::Staging),
            ..PingReportBean::default()
        });
        let mut decoder = FrameDecoder::new(MAX_FRAME_BYTES);
        decoder.extend(&encode(&ping, MAX_FRAME_BYTES).unwrap());
        assert_eq!(decoder.next::<PingRequestBean>().unwrap(), Some(ping));
        assert_eq!(decoder.next::<PingRequestBean>().unwrap(), None);
        assert_eq!(decoder.buffered_len(), 0);
    }

    #[test]
    fn byte_by_byte_feed_yields_each_frame_once_complete() {
        let msgs: Vec<Msg> = (0..5).map(|i| msg(i, i as usize * 7)).collect();
        let mut stream = Vec::new();
        for m in &msgs {
            encode_into(m, MAX_FRAME_BYTES, &mut stream).unwrap();
        }
        let mut decoder = FrameDecoder::new(MAX_FRAME_BYTES);
        let mut got = Vec::new();
        for byte in &stream {
            assert_eq!(decoder.next::<Msg>().unwrap(), None, "no frame before its last byte");
            decoder.extend(std::slice::from_ref(byte));
            if let Some(m) = decoder.next::<Msg>().unwrap() {
                got.push(m);
            }
        }
        assert_eq!(got, msgs);
        assert_eq!(decoder.buffered_len(), 0);
    }

    #[test]
    fn empty_payload_frames_decode() {
        let frame = encode(&(), MAX_FRAME_BYTES).unwrap();
        assert_eq!(frame, [0, 0, 0, 0]);
        let mut decoder = FrameDecoder::new(MAX_FRAME_BYTES);
        decoder.extend(&frame);
        decoder.extend(&frame);
        assert_eq!(decoder.next::<()>().unwrap(), Some(()));
        assert_eq!(decoder.next::<()>().unwrap(), Some(()));
        assert_eq!(decoder.next::<()>().unwrap(), None);
    }

    #[test]
    fn encode_refuses_oversized_payload_and_leaves_buffer_intact() {
        let mut out = vec![9, 9];
        let err = encode_into(&msg(1, 100), 50, &mut out).unwrap_err();
        assert!(matches!(err, FrameError::TooLarge { max: 50, len } if len > 100));
        assert_eq!(out, [9, 9]);
        assert!(encode(&msg(1, 100), 200).is_ok());
    }

    #[test]
    fn encode_error_leaves_buffer_intact() {
        /// A sequence whose length postcard cannot know up front.
        struct UnknownLength;
        impl Serialize for UnknownLength {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_seq((0u8..3).filter(|_| true))
            }
        }
        let mut out = vec![1, 2, 3];
        let err = encode_into(&UnknownLength, MAX_FRAME_BYTES, &mut out).unwrap_err();
        assert_eq!(err, FrameError::Encode(postcard::Error::SerializeSeqLengthUnknown));
        assert_eq!(out, [1, 2, 3]);
    }

    #[test]
    fn decoder_refuses_oversized_header_before_buffering_payload() {
        let max = 1024;
        let good = encode(&msg(1, 10), max).unwrap();
        let mut stream = good.clone();
        stream.extend_from_slice(&(max as u32 + 1).to_be_bytes());
        stream.extend_from_slice(&vec![0xAA; 4096]);

        let mut decoder = FrameDecoder::new(max);
        decoder.extend(&stream);
        assert!(decoder.is_refused());
        assert_eq!(decoder.buffered_len(), good.len(), "nothing of the oversized frame kept");
        assert_eq!(decoder.next::<Msg>().unwrap(), Some(msg(1, 10)));
        let err = FrameError::TooLarge { len: max + 1, max };
        assert_eq!(decoder.next::<Msg>(), Err(err.clone()));
        decoder.extend(&good);
        assert_eq!(decoder.buffered_len(), 0, "bytes after a refusal are dropped");
        assert_eq!(decoder.next::<Msg>(), Err(err));
    }

    #[test]
    fn decoder_refuses_a_four_gigabyte_header() {
        let mut decoder = FrameDecoder::new(MAX_FRAME_BYTES);
        decoder.extend(&[0xff, 0xff]);
        assert!(!decoder.is_refused());
        decoder.extend(&[0xff, 0xff, 1, 2, 3]);
        assert_eq!(
            decoder.next::<Msg>(),
            Err(FrameError::TooLarge { len: u32::MAX as usize, max: MAX_FRAME_BYTES })
        );
        assert_eq!(decoder.buffered_len(), 0);
    }

    #[test]
    fn decode_refuses_oversized_and_mismatched_buffers() {
        let frame = encode(&msg(1, 10), MAX_FRAME_BYTES).unwrap();
        assert!(matches!(decode::<Msg>(&frame, 5), Err(FrameError::TooLarge { max: 5, .. })));
        assert!(matches!(
            decode::<Msg>(&frame[..frame.len() - 1], MAX_FRAME_BYTES),
            Err(FrameError::LengthMismatch { .. })
        ));
        assert_eq!(decode::<Msg>(&[0, 0], MAX_FRAME_BYTES), Err(FrameError::Truncated { len: 2 }));
    }

    #[test]
    fn garbage_payload_is_malformed_and_skipped() {
        // A frame whose payload is not a valid `Msg`: the string length runs past the payload.
        let garbage = [0, 0, 0, 3, 0x01, 0xff, 0x7f];
        let mut decoder = FrameDecoder::new(MAX_FRAME_BYTES);
        decoder.extend(&garbage);
        decoder.extend(&encode(&msg(2, 1), MAX_FRAME_BYTES).unwrap());
        assert!(matches!(decoder.next::<Msg>(), Err(FrameError::Malformed(_))));
        assert_eq!(decoder.next::<Msg>().unwrap(), Some(msg(2, 1)), "stream stays in sync");
        assert!(matches!(decode::<Msg>(&garbage, MAX_FRAME_BYTES), Err(FrameError::Malformed(_))));
    }

    #[test]
    fn trailing_bytes_in_a_payload_are_malformed() {
        let mut payload = postcard::to_stdvec(&7u8).unwrap();
        payload.push(0);
        let mut frame = (payload.len() as u32).to_be_bytes().to_vec();
        frame.extend_from_slice(&payload);
        assert!(matches!(decode::<u8>(&frame, MAX_FRAME_BYTES), Err(FrameError::Malformed(_))));
    }

    #[test]
    fn unknown_enum_index_is_malformed() {
        let frame = [0, 0, 0, 1, 200];
        assert!(matches!(
            decode::<DeployStage>(&frame, MAX_FRAME_BYTES),
            Err(FrameError::Malformed(_))
        ));
    }

    proptest! {
        #[test]
        fn frames_round_trip_under_any_split(
            msgs in proptest::collection::vec(
                (any::<u64>(), ".{0,16}", proptest::collection::vec(any::<u8>(), 0..64)),
                0..8,
            ),
            cuts in proptest::collection::vec(1usize..32, 1..16),
        ) {
            let msgs: Vec<Msg> =
                msgs.into_iter().map(|(id, name, data)| Msg { id, name, data }).collect();
            let mut stream = Vec::new();
            for m in &msgs {
                encode_into(m, MAX_FRAME_BYTES, &mut stream).unwrap();
            }
            let mut decoder = FrameDecoder::new(MAX_FRAME_BYTES);
            let mut got = Vec::new();
            let mut rest = &stream[..];
            let mut cut = cuts.iter().cycle();
            while !rest.is_empty() {
                let n = (*cut.next().unwrap()).min(rest.len());
                decoder.extend(&rest[..n]);
                rest = &rest[n..];
                while let Some(m) = decoder.next::<Msg>().unwrap() {
                    got.push(m);
                }
            }
            prop_assert_eq!(got, msgs);
            prop_assert_eq!(decoder.buffered_len(), 0);
        }

        #[test]
        fn arbitrary_bytes_never_panic_or_overbuffer(
            bytes in proptest::collection::vec(any::<u8>(), 0..512),
        ) {
            let max = 64;
            let mut decoder = FrameDecoder::new(max);
            decoder.extend(&bytes);
            prop_assert!(decoder.buffered_len() <= bytes.len());
            for _ in 0..bytes.len() + 1 {
                match decoder.next::<Msg>() {
                    Ok(Some(_)) | Err(FrameError::Malformed(_)) => {}
                    Ok(None) | Err(_) => break,
                }
            }
            // Never more than one maximum-size frame plus one header stays buffered.
            prop_assert!(decoder.buffered_len() <= max + FRAME_HEADER_BYTES);
        }
    }
}
