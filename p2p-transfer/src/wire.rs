//! The `tt-blob/1` wire format. Pure encoding and decoding; the IO is in [`crate::swarm`].
//!
//! One QUIC connection per peer pair carries every blob the two peers exchange:
//!
//! ```text
//! control (one unidirectional stream per direction, opened at connect):
//!   frame  = len: u32 BE | kind: u8 | body          len counts kind + body
//!   kind 1 Interested    hash[32] size:u64          "I want this blob; tell me what you have"
//!   kind 2 NotInterested hash[32]                   "stop telling me"
//!   kind 3 Bitfield      hash[32] size:u64 bits     every piece you hold (LSB-first bits)
//!   kind 4 Have          hash[32] piece:u32         one more piece, pushed as it completes
//!   kind 5 DontHave      hash[32]                   you hold none of it (or dropped it)
//!   kind 6 Incoming      hash[32] piece:u32         I am receiving this piece now and can
//!                                                   relay it as it verifies (cut-through)
//!
//! piece request (one bidirectional stream per request, opened by the requester):
//!   request  = len: u32 BE | kind 1 | hash[32] size:u64 piece:u32, then FIN
//!   response = status: u8, then for status 0 the piece's bao encoding (parents and
//!              16 KiB chunk groups, pre-order), then FIN
//!   status   0 ok, 1 not held, 2 busy, 3 refused (leech-only), 4 seeded (an origin sent
//!              this piece to another peer moments ago: fetch it from the swarm)
//!   cancel   = the requester stops the stream (STOP_SENDING); the server stops writing
//!   relay    = a piece announced Incoming is served as the server receives and verifies
//!              it; if its own transfer fails, the server resets the stream with
//!              STREAM_RELAY_LOST (the requester asks elsewhere and blames nobody)
//! ```
//!
//! Goals:
//! - Be paranoid about data integrity: the response carries the BLAKE3 proof for exactly the
//!   requested range, and the requester verifies each chunk group against the blob's root
//!   before it writes a byte. A response for another range cannot verify.
//! - Bound every frame ([`MAX_CONTROL_FRAME_BYTES`], [`MAX_REQUEST_FRAME_BYTES`]) before it is
//!   buffered. A malformed or oversized frame closes that connection and nothing else.
//!
//! Non-goals:
//! - Discovery: peers come from the caller (the coordinators' tracker).
//! - Other hash functions or chunk group sizes: both are fixed by the ALPN.

use bytes::{BufMut, Bytes, BytesMut};
use quinn::VarInt;

use crate::blob::{Bitfield, BlobHash, BlobSpec, Geometry};

/// ALPN of the blob protocol.
pub const ALPN: &[u8] = b"tt-blob/1";

/// Largest control frame, in bytes (kind and body): a bitfield of the largest blob's 65,536
/// pieces is 8 KiB plus 41 bytes of header.
pub const MAX_CONTROL_FRAME_BYTES: usize = 16 * 1024;
/// Largest piece request frame, in bytes (kind and body).
pub const MAX_REQUEST_FRAME_BYTES: usize = 64;

/// Connection close code: the node is shutting down.
pub const CLOSE_SHUTDOWN: VarInt = VarInt::from_u32(0);
/// Connection close code: the peer sent a malformed or oversized frame.
pub const CLOSE_PROTOCOL_VIOLATION: VarInt = VarInt::from_u32(1);
/// Connection close code: both peers connected at once; this one loses the tie-break.
pub const CLOSE_DUPLICATE: VarInt = VarInt::from_u32(2);
/// Stream code: the requester no longer wants the piece.
pub const STREAM_CANCELLED: VarInt = VarInt::from_u32(0);
/// Stream code: the server was relaying a piece it was receiving, and that transfer failed
/// before the piece was whole. Nobody's fault as far as the requester can tell.
pub const STREAM_RELAY_LOST: VarInt = VarInt::from_u32(1);

/// Bytes of the length prefix of every frame.
pub(crate) const FRAME_HEADER_BYTES: usize = 4;
const HASH_BYTES: usize = 32;

const KIND_INTERESTED: u8 = 1;
const KIND_NOT_INTERESTED: u8 = 2;
const KIND_BITFIELD: u8 = 3;
const KIND_HAVE: u8 = 4;
const KIND_DONT_HAVE: u8 = 5;
const KIND_INCOMING: u8 = 6;
const KIND_GET_PIECE: u8 = 1;

/// A control stream message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ControlMsg {
    Interested { spec: BlobSpec },
    NotInterested { hash: BlobHash },
    Bitfield { spec: BlobSpec, pieces: Bitfield },
    Have { hash: BlobHash, piece: u32 },
    DontHave { hash: BlobHash },
    Incoming { hash: BlobHash, piece: u32 },
}

/// A piece request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PieceRequest {
    pub spec: BlobSpec,
    pub piece: u32,
}

/// The first byte of a piece response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum ResponseStatus {
    /// The bao encoding of the piece follows.
    Ok = 0,
    /// The server does not hold the piece (or the blob at that size).
    NotHeld = 1,
    /// The server is at its upload limit; ask elsewhere or later.
    Busy = 2,
    /// The server does not upload at all (leech-only).
    Refused = 3,
    /// An origin sent this piece to another peer moments ago; fetch it from the swarm. Ask
    /// the origin for other pieces meanwhile.
    Seeded = 4,
}

impl ResponseStatus {
    pub(crate) fn from_byte(byte: u8) -> Option<ResponseStatus> {
        Some(match byte {
            0 => ResponseStatus::Ok,
            1 => ResponseStatus::NotHeld,
            2 => ResponseStatus::Busy,
            3 => ResponseStatus::Refused,
            4 => ResponseStatus::Seeded,
            _ => return None,
        })
    }
}

/// A frame that breaks the protocol. The connection it came on is closed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// The length prefix exceeds the limit for this stream; nothing was buffered.
    #[error("frame of {len} bytes exceeds the {len_max}-byte limit")]
    TooLarge { len: usize, len_max: usize },
    /// The kind byte is unknown.
    #[error("unknown frame kind {0}")]
    UnknownKind(u8),
    /// The body does not have the kind's shape.
    #[error("malformed frame: {0}")]
    Malformed(&'static str),
}

/// Checks a length prefix against `len_max` before anything is read.
pub(crate) fn check_len(
    header: [u8; FRAME_HEADER_BYTES],
    len_max: usize,
) -> Result<usize, WireError> {
    let len = u32::from_be_bytes(header) as usize;
    if len > len_max {
        return Err(WireError::TooLarge { len, len_max });
    }
    if len == 0 {
        return Err(WireError::Malformed("empty frame"));
    }
    Ok(len)
}

impl ControlMsg {
    /// The frame, length prefix included.
    pub fn encode(&self) -> Bytes {
        let mut body = BytesMut::new();
        match self {
            ControlMsg::Interested { spec } => {
                body.put_u8(KIND_INTERESTED);
                put_spec(&mut body, spec);
            }
            ControlMsg::NotInterested { hash } => {
                body.put_u8(KIND_NOT_INTERESTED);
                body.put_slice(hash.as_bytes());
            }
            ControlMsg::Bitfield { spec, pieces } => {
                body.put_u8(KIND_BITFIELD);
                put_spec(&mut body, spec);
                body.put_slice(&pieces.to_bytes());
            }
            ControlMsg::Have { hash, piece } => {
                body.put_u8(KIND_HAVE);
                body.put_slice(hash.as_bytes());
                body.put_u32(*piece);
            }
            ControlMsg::DontHave { hash } => {
                body.put_u8(KIND_DONT_HAVE);
                body.put_slice(hash.as_bytes());
            }
            ControlMsg::Incoming { hash, piece } => {
                body.put_u8(KIND_INCOMING);
                body.put_slice(hash.as_bytes());
                body.put_u32(*piece);
            }
        }
        frame(body)
    }

    /// Parses a frame's kind and body (without the length prefix).
    pub fn decode(frame: &[u8]) -> Result<ControlMsg, WireError> {
        let (&kind, body) = frame.split_first().ok_or(WireError::Malformed("empty frame"))?;
        let mut body = Reader(body);
        let msg = match kind {
            KIND_INTERESTED => ControlMsg::Interested { spec: body.spec()? },
            KIND_NOT_INTERESTED => ControlMsg::NotInterested { hash: body.hash()? },
            KIND_BITFIELD => {
                let spec = body.spec()?;
                let n_pieces = Geometry::new(spec.size)
                    .map_err(|_| WireError::Malformed("blob size over the limit"))?
                    .n_pieces();
                let pieces = Bitfield::from_bytes(n_pieces.into(), body.rest())
                    .ok_or(WireError::Malformed("bitfield length does not match the size"))?;
                return Ok(ControlMsg::Bitfield { spec, pieces });
            }
            KIND_HAVE => ControlMsg::Have { hash: body.hash()?, piece: body.u32()? },
            KIND_DONT_HAVE => ControlMsg::DontHave { hash: body.hash()? },
            KIND_INCOMING => ControlMsg::Incoming { hash: body.hash()?, piece: body.u32()? },
            other => return Err(WireError::UnknownKind(other)),
        };
        body.end()?;
        Ok(msg)
    }
}

impl PieceRequest {
    /// The frame, length prefix included.
    pub fn encode(&self) -> Bytes {
        let mut body = BytesMut::new();
        body.put_u8(KIND_GET_PIECE);
        put_spec(&mut body, &self.spec);
        body.put_u32(self.piece);
        frame(body)
    }

    /// Parses a request's kind and body. A piece outside the blob is malformed.
    pub fn decode(frame: &[u8]) -> Result<PieceRequest, WireError> {
        let (&kind, body) = frame.split_first().ok_or(WireError::Malformed("empty frame"))?;
        if kind != KIND_GET_PIECE {
            return Err(WireError::UnknownKind(kind));
        }
        let mut body = Reader(body);
        let spec = body.spec()?;
        let piece = body.u32()?;
        body.end()?;
        let geometry = Geometry::new(spec.size)
            .map_err(|_| WireError::Malformed("blob size over the limit"))?;
        if piece >= geometry.n_pieces() {
            return Err(WireError::Malformed("piece outside the blob"));
        }
        Ok(PieceRequest { spec, piece })
    }
}

fn put_spec(body: &mut BytesMut, spec: &BlobSpec) {
    body.put_slice(spec.hash.as_bytes());
    body.put_u64(spec.size);
}

fn frame(body: BytesMut) -> Bytes {
    let mut out = BytesMut::with_capacity(FRAME_HEADER_BYTES + body.len());
    out.put_u32(u32::try_from(body.len()).expect("frames are small"));
    out.put_slice(&body);
    out.freeze()
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        if self.0.len() < n {
            return Err(WireError::Malformed("frame too short"));
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Ok(head)
    }

    fn hash(&mut self) -> Result<BlobHash, WireError> {
        Ok(BlobHash::from_bytes(self.take(HASH_BYTES)?.try_into().expect("32 bytes")))
    }

    fn u32(&mut self) -> Result<u32, WireError> {
        Ok(u32::from_be_bytes(self.take(4)?.try_into().expect("4 bytes")))
    }

    fn u64(&mut self) -> Result<u64, WireError> {
        Ok(u64::from_be_bytes(self.take(8)?.try_into().expect("8 bytes")))
    }

    fn spec(&mut self) -> Result<BlobSpec, WireError> {
        Ok(BlobSpec { hash: self.hash()?, size: self.u64()? })
    }

    fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.0)
    }

    fn end(&self) -> Result<(), WireError> {
        if self.0.is_empty() { Ok(()) } else { Err(WireError::Malformed("trailing bytes")) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> BlobSpec {
        BlobSpec { hash: BlobHash::of(b"blob"), size: 3 * 256 * 1024 + 1 }
    }

    #[test]
    fn control_messages_round_trip() {
        let mut pieces = Bitfield::new(4);
        pieces.set(2);
        let hash = spec().hash;
        for msg in [
            ControlMsg::Interested { spec: spec() },
            ControlMsg::NotInterested { hash },
            ControlMsg::Bitfield { spec: spec(), pieces },
            ControlMsg::Have { hash, piece: 3 },
            ControlMsg::DontHave { hash },
            ControlMsg::Incoming { hash, piece: 2 },
        ] {
            let frame = msg.encode();
            let header: [u8; 4] = frame[..4].try_into().unwrap();
            assert_eq!(check_len(header, MAX_CONTROL_FRAME_BYTES).unwrap(), frame.len() - 4);
            assert_eq!(ControlMsg::decode(&frame[4..]).unwrap(), msg);
        }
        let request = PieceRequest { spec: spec(), piece: 3 };
        let frame = request.encode();
        assert!(frame.len() - 4 <= MAX_REQUEST_FRAME_BYTES);
        assert_eq!(PieceRequest::decode(&frame[4..]).unwrap(), request);
    }

    #[test]
    fn bad_frames_are_refused() {
        assert_eq!(
            check_len(u32::MAX.to_be_bytes(), MAX_CONTROL_FRAME_BYTES),
            Err(WireError::TooLarge { len: u32::MAX as usize, len_max: MAX_CONTROL_FRAME_BYTES })
        );
        assert!(matches!(ControlMsg::decode(&[9, 1, 2]), Err(WireError::UnknownKind(9))));
        assert!(matches!(ControlMsg::decode(&[KIND_HAVE, 1, 2]), Err(WireError::Malformed(_))));
        let mut frame = ControlMsg::DontHave { hash: spec().hash }.encode().to_vec();
        frame.push(0);
        assert!(matches!(ControlMsg::decode(&frame[4..]), Err(WireError::Malformed(_))));
        // A bitfield whose length does not match the size.
        let mut frame =
            ControlMsg::Bitfield { spec: spec(), pieces: Bitfield::new(4) }.encode().to_vec();
        frame.push(0);
        assert!(matches!(ControlMsg::decode(&frame[4..]), Err(WireError::Malformed(_))));
        let request = PieceRequest { spec: spec(), piece: 4 }.encode();
        assert!(matches!(PieceRequest::decode(&request[4..]), Err(WireError::Malformed(_))));
    }
}
