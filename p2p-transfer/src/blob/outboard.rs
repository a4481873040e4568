//! Adapters between our files and `bao-tree`'s sync traits.
//!
//! The outboard is kept in pre-order (parent pairs of 64 bytes at fixed offsets), so a partial
//! blob can fill it in any order as verified parents arrive; nodes not yet received read as
//! zeros, which never verify.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

use bao_tree::io::sync::{Outboard, OutboardMut, ReadAt};
use bao_tree::{BaoTree, TreeNode, blake3};

/// Bytes of one parent node in the outboard: two BLAKE3 hashes.
const PARENT_PAIR_BYTES: u64 = 64;

/// A pre-order outboard in a file.
pub(crate) struct FileOutboard<'a> {
    pub root: blake3::Hash,
    pub tree: BaoTree,
    pub file: &'a File,
}

impl Outboard for FileOutboard<'_> {
    fn root(&self) -> blake3::Hash {
        self.root
    }

    fn tree(&self) -> BaoTree {
        self.tree
    }

    fn load(&self, node: TreeNode) -> io::Result<Option<(blake3::Hash, blake3::Hash)>> {
        let Some(index) = self.tree.pre_order_offset(node) else {
            return Ok(None);
        };
        let mut pair = [0u8; PARENT_PAIR_BYTES as usize];
        match FileExt::read_exact_at(self.file, &mut pair, index * PARENT_PAIR_BYTES) {
            Ok(()) => {}
            // A short outboard reads as unknown nodes, like bao-tree's own implementation.
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(Some(zero_pair())),
            Err(e) => return Err(e),
        }
        let left: [u8; 32] = pair[..32].try_into().expect("32 bytes");
        let right: [u8; 32] = pair[32..].try_into().expect("32 bytes");
        Ok(Some((blake3::Hash::from_bytes(left), blake3::Hash::from_bytes(right))))
    }
}

impl OutboardMut for FileOutboard<'_> {
    fn save(&mut self, node: TreeNode, pair: &(blake3::Hash, blake3::Hash)) -> io::Result<()> {
        write_parent(self.file, self.tree, node, pair)
    }

    fn sync(&mut self) -> io::Result<()> {
        self.file.sync_data()
    }
}

fn zero_pair() -> (blake3::Hash, blake3::Hash) {
    (blake3::Hash::from_bytes([0; 32]), blake3::Hash::from_bytes([0; 32]))
}

/// Writes one parent pair at its pre-order position. Nodes below the chunk-group level are not
/// stored and are ignored.
pub(crate) fn write_parent(
    file: &File,
    tree: BaoTree,
    node: TreeNode,
    pair: &(blake3::Hash, blake3::Hash),
) -> io::Result<()> {
    let Some(index) = tree.pre_order_offset(node) else {
        return Ok(());
    };
    let mut bytes = [0u8; PARENT_PAIR_BYTES as usize];
    bytes[..32].copy_from_slice(pair.0.as_bytes());
    bytes[32..].copy_from_slice(pair.1.as_bytes());
    file.write_all_at(&bytes, index * PARENT_PAIR_BYTES)
}

/// A data file as bao-tree's positioned reader.
pub(crate) struct DataFile<'a>(pub &'a File);

impl ReadAt for DataFile<'_> {
    fn read_at(&self, pos: u64, buf: &mut [u8]) -> io::Result<usize> {
        FileExt::read_at(self.0, buf, pos)
    }
}

/// A `std::io::Read` over a file from offset 0 using positioned reads, so the shared file's
/// cursor is never moved.
pub(crate) struct SequentialReader<'a> {
    pub file: &'a File,
    pub pos: u64,
}

impl io::Read for SequentialReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = FileExt::read_at(self.file, buf, self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
}
