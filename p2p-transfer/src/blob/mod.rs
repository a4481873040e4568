//! Content-addressed blobs: names, geometry, and the verified on-disk store.
//!
//! A blob is named by its BLAKE3 root hash ([`BlobHash`]). Its bytes are verified in chunk
//! groups of [`CHUNK_GROUP_BYTES`] against that root using BLAKE3 verified streaming (the
//! `bao-tree` crate, [`BLOCK_SIZE`]), and moved between peers in pieces of
//! [`MIN_PIECE_BYTES`]..=[`MAX_PIECE_BYTES`] ([`Geometry`]). The two sizes are decoupled on
//! purpose: a bad peer is caught after at most one chunk group, while the scheduler only deals
//! with a few thousand pieces per blob.

mod bitfield;
mod outboard;
mod store;

use std::fmt;
use std::ops::Range;
use std::str::FromStr;

use bao_tree::{BaoTree, BlockSize, ChunkNum, ChunkRanges};

pub use bitfield::Bitfield;
pub use store::{
    BeginDownload, BlobStore, CompleteBlob, EncodePieceError, FinalizeError, GroupWriteError,
    ImportError, OpenError, PartialBlob, ReserveError, StoreConfig, StoreEvent, StoreUsage,
};

/// Chunk groups are 2^4 BLAKE3 chunks of 1 KiB: the verification unit.
pub const BLOCK_SIZE: BlockSize = BlockSize::from_chunk_log(4);
/// Bytes in one chunk group (the last group of a blob may be shorter).
pub const CHUNK_GROUP_BYTES: u64 = 16 * 1024;
/// Bytes in one BLAKE3 chunk.
const CHUNK_BYTES: u64 = 1024;
/// Smallest piece, the unit of scheduling and of have/bitfield messages.
pub const MIN_PIECE_BYTES: u64 = 256 * 1024;
/// Largest piece. Pieces grow from [`MIN_PIECE_BYTES`] in powers of two until a blob has at
/// most [`TARGET_MAX_PIECES`] pieces or this size is reached.
pub const MAX_PIECE_BYTES: u64 = 1024 * 1024;
/// Piece count above which pieces grow (see [`MAX_PIECE_BYTES`]).
pub const TARGET_MAX_PIECES: u64 = 4096;
/// Largest blob we accept: 64 GiB, i.e. at most 65,536 pieces (an 8 KiB bitfield).
pub const MAX_BLOB_BYTES: u64 = 64 * 1024 * 1024 * 1024;

/// The BLAKE3 root hash that names a blob.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BlobHash([u8; 32]);

impl BlobHash {
    /// Wraps 32 hash bytes.
    pub const fn from_bytes(bytes: [u8; 32]) -> BlobHash {
        BlobHash(bytes)
    }

    /// The hash of `data` (what [`BlobStore::import_bytes`] would name it).
    pub fn of(data: &[u8]) -> BlobHash {
        BlobHash(*blake3::hash(data).as_bytes())
    }

    /// The 32 hash bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Lower-case hex, 64 characters (also what `Display` prints).
    pub fn to_hex(&self) -> String {
        blake3::Hash::from_bytes(self.0).to_hex().to_string()
    }

    /// The first 12 hex characters: what `tracing` spans carry as `blob`.
    pub fn short(&self) -> String {
        let mut hex = self.to_hex();
        hex.truncate(12);
        hex
    }

    pub(crate) fn to_blake3(self) -> blake3::Hash {
        blake3::Hash::from_bytes(self.0)
    }
}

impl From<blake3::Hash> for BlobHash {
    fn from(hash: blake3::Hash) -> BlobHash {
        BlobHash(*hash.as_bytes())
    }
}

impl fmt::Display for BlobHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for BlobHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BlobHash({})", self.short())
    }
}

/// A string is not 64 hex characters.
#[derive(Debug, thiserror::Error)]
#[error("not a BLAKE3 hash (64 hex characters): {0:?}")]
pub struct ParseBlobHashError(String);

impl FromStr for BlobHash {
    type Err = ParseBlobHashError;

    fn from_str(s: &str) -> Result<BlobHash, ParseBlobHashError> {
        blake3::Hash::from_hex(s).map(BlobHash::from).map_err(|_| ParseBlobHashError(s.to_owned()))
    }
}

/// What a downloader must know about a blob before asking anyone for it: its name and size
/// (for a build, both come from the build's metadata). The size fixes the BLAKE3 tree, so a
/// wrong size fails verification like wrong bytes do.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct BlobSpec {
    pub hash: BlobHash,
    pub size: u64,
}

/// A blob size over [`MAX_BLOB_BYTES`].
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("blob of {size} bytes exceeds the {size_max}-byte limit")]
pub struct BlobTooLarge {
    pub size: u64,
    pub size_max: u64,
}

/// How a blob of a given size splits into pieces and chunk groups. Both sides of a transfer
/// derive it from the size alone, so it is never sent.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Geometry {
    size: u64,
    piece_bytes: u64,
}

impl Geometry {
    /// The geometry of a blob of `size` bytes.
    pub fn new(size: u64) -> Result<Geometry, BlobTooLarge> {
        if size > MAX_BLOB_BYTES {
            return Err(BlobTooLarge { size, size_max: MAX_BLOB_BYTES });
        }
        let mut piece_bytes = MIN_PIECE_BYTES;
        while size.div_ceil(piece_bytes) > TARGET_MAX_PIECES && piece_bytes < MAX_PIECE_BYTES {
            piece_bytes *= 2;
        }
        Ok(Geometry { size, piece_bytes })
    }

    /// Blob size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Bytes per piece (the last piece may be shorter).
    pub fn piece_bytes(&self) -> u64 {
        self.piece_bytes
    }

    /// Number of pieces; 0 for an empty blob.
    pub fn n_pieces(&self) -> u32 {
        u32::try_from(self.size.div_ceil(self.piece_bytes)).expect("bounded by MAX_BLOB_BYTES")
    }

    /// Number of chunk groups; 0 for an empty blob.
    pub fn n_groups(&self) -> u64 {
        self.size.div_ceil(CHUNK_GROUP_BYTES)
    }

    /// Chunk groups per full piece.
    pub fn groups_per_piece(&self) -> u64 {
        self.piece_bytes / CHUNK_GROUP_BYTES
    }

    /// The byte range of `piece`.
    pub fn piece_range(&self, piece: u32) -> Range<u64> {
        let start = u64::from(piece) * self.piece_bytes;
        assert!(start < self.size, "piece {piece} out of range");
        start..(start + self.piece_bytes).min(self.size)
    }

    /// Length of `piece` in bytes.
    pub fn piece_len(&self, piece: u32) -> u64 {
        let range = self.piece_range(piece);
        range.end - range.start
    }

    /// The chunk groups of `piece`.
    pub fn piece_groups(&self, piece: u32) -> Range<u64> {
        let range = self.piece_range(piece);
        range.start / CHUNK_GROUP_BYTES..range.end.div_ceil(CHUNK_GROUP_BYTES)
    }

    /// The piece holding chunk group `group`.
    pub fn group_piece(&self, group: u64) -> u32 {
        u32::try_from(group / self.groups_per_piece()).expect("bounded by MAX_BLOB_BYTES")
    }

    /// The group starting at byte `offset` (which must be group-aligned).
    pub(crate) fn group_at(&self, offset: u64) -> u64 {
        debug_assert_eq!(offset % CHUNK_GROUP_BYTES, 0);
        offset / CHUNK_GROUP_BYTES
    }

    /// The byte range of chunk group `group`.
    pub fn group_range(&self, group: u64) -> Range<u64> {
        let start = group * CHUNK_GROUP_BYTES;
        start..(start + CHUNK_GROUP_BYTES).min(self.size)
    }

    /// The BLAKE3 chunk ranges covering `piece`, as requested on the wire.
    pub(crate) fn piece_chunks(&self, piece: u32) -> ChunkRanges {
        let range = self.piece_range(piece);
        ChunkRanges::from(ChunkNum(range.start / CHUNK_BYTES)..ChunkNum::chunks(range.end))
    }

    /// The BLAKE3 chunk ranges covering the chunk groups `groups`.
    pub(crate) fn group_chunks(&self, groups: Range<u64>) -> ChunkRanges {
        let start = groups.start * CHUNK_GROUP_BYTES;
        let end = (groups.end * CHUNK_GROUP_BYTES).min(self.size);
        ChunkRanges::from(ChunkNum(start / CHUNK_BYTES)..ChunkNum::chunks(end))
    }

    /// The bao tree of the blob.
    pub(crate) fn tree(&self) -> BaoTree {
        BaoTree::new(self.size, BLOCK_SIZE)
    }

    /// Bytes of the pre-order outboard (64 bytes per parent node, about 0.4% of the data).
    pub fn outboard_bytes(&self) -> u64 {
        if self.size == 0 { 0 } else { self.tree().outboard_size() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn piece_size_grows_with_the_blob_and_stays_in_bounds() {
        let check = |size: u64, piece: u64, n_pieces: u32| {
            let g = Geometry::new(size).unwrap();
            assert_eq!((g.piece_bytes(), g.n_pieces()), (piece, n_pieces), "size {size}");
        };
        check(0, MIN_PIECE_BYTES, 0);
        check(1, MIN_PIECE_BYTES, 1);
        check(64 << 20, MIN_PIECE_BYTES, 256);
        check(1 << 30, MIN_PIECE_BYTES, 4096);
        check((1 << 30) + 1, 512 * 1024, 2049);
        check(MAX_BLOB_BYTES, MAX_PIECE_BYTES, 65_536);
        assert!(Geometry::new(MAX_BLOB_BYTES + 1).is_err());
    }

    #[test]
    fn pieces_and_groups_tile_the_blob() {
        let g = Geometry::new(3 * MIN_PIECE_BYTES + 5000).unwrap();
        assert_eq!(g.n_pieces(), 4);
        assert_eq!(g.piece_range(3), 3 * MIN_PIECE_BYTES..3 * MIN_PIECE_BYTES + 5000);
        assert_eq!(g.piece_groups(3), 48..49);
        assert_eq!(g.n_groups(), 49);
        assert_eq!(g.group_piece(47), 2);
        assert_eq!(g.group_range(48), 48 * CHUNK_GROUP_BYTES..g.size());
    }

    #[test]
    fn hash_round_trips_through_hex() {
        let hash = BlobHash::of(b"hello");
        assert_eq!(hash.to_hex().parse::<BlobHash>().unwrap(), hash);
        assert_eq!(hash.short().len(), 12);
        assert!("xyz".parse::<BlobHash>().is_err());
    }
}
