use std::os::unix::fs::FileExt;

use bao_tree::io::BaoContentItem;
use bao_tree::io::DecodeError;
use bao_tree::io::sync::DecodeResponseIter;

use super::*;
use crate::blob::MIN_PIECE_BYTES;

const MIB: u64 = 1024 * 1024;

/// Deterministic pseudo-random bytes.
pub(crate) fn test_data(len: u64, seed: u8) -> Vec<u8> {
    let mut out = vec![0; len as usize];
    blake3::Hasher::new().update(&[seed]).finalize_xof().fill(&mut out);
    out
}

fn config(dir: &Path) -> StoreConfig {
    StoreConfig {
        dir: dir.to_owned(),
        max_bytes: 64 * MIB,
        high_watermark_bytes: 48 * MIB,
        low_watermark_bytes: 32 * MIB,
        min_free_bytes: 0,
        keep_newest: 0,
    }
}

/// Decodes one encoded piece the way a downloader does and writes its verified items.
fn apply(partial: &PartialBlob, piece: u32, encoded: &[u8]) -> Result<(), DecodeError> {
    let geometry = partial.geometry();
    let ranges = geometry.piece_chunks(piece);
    let root = partial.spec().hash.to_blake3();
    for item in DecodeResponseIter::new(root, geometry.tree(), encoded, &ranges) {
        match item? {
            BaoContentItem::Parent(parent) => partial.write_verified_parent(&parent).unwrap(),
            BaoContentItem::Leaf(leaf) => {
                partial.write_verified_group(leaf.offset, &leaf.data).unwrap();
            }
        }
    }
    Ok(())
}

fn partial_of(store: &BlobStore, spec: BlobSpec) -> Arc<PartialBlob> {
    match store.begin_download(spec).unwrap() {
        BeginDownload::Partial(partial) => partial,
        BeginDownload::Complete(_) => panic!("expected a partial blob"),
    }
}

#[test]
fn pieces_move_between_stores_verified_and_complete_whole() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let source = BlobStore::open(config(a.path())).unwrap();
    let target = BlobStore::open(config(b.path())).unwrap();
    let data = test_data(3 * MIN_PIECE_BYTES + 12_345, 1);
    let blob = source.import_bytes(&data).unwrap();
    let spec = blob.spec();
    assert_eq!(spec.hash, BlobHash::of(&data));

    let partial = partial_of(&target, spec);
    let mut events = target.subscribe();
    // Out of order, and the last (short) piece first.
    for piece in [3, 1, 0, 2] {
        assert!(!partial.has_piece(piece));
        apply(&partial, piece, &source.encode_piece(spec, piece).unwrap()).unwrap();
        assert!(partial.has_piece(piece));
        assert_eq!(
            events.try_recv().unwrap(),
            StoreEvent::PieceComplete { hash: spec.hash, piece }
        );
        // A partial blob serves what it has, verified.
        assert!(target.encode_piece(spec, piece).is_ok());
    }
    assert!(partial.is_complete());
    let complete = target.finalize(&partial).unwrap();
    assert_eq!(complete.read_to_vec().unwrap(), data);
    assert_eq!(events.try_recv().unwrap(), StoreEvent::BlobComplete { hash: spec.hash });
    assert!(matches!(target.begin_download(spec).unwrap(), BeginDownload::Complete(_)));
    let usage = target.usage();
    assert_eq!((usage.complete_blobs, usage.partial_blobs), (1, 0));
    assert_eq!(usage.used_bytes, disk_bytes_complete(spec.size));
}

#[test]
fn a_flipped_byte_fails_verification_and_nothing_of_that_group_is_marked() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let source = BlobStore::open(config(a.path())).unwrap();
    let target = BlobStore::open(config(b.path())).unwrap();
    let data = test_data(2 * MIN_PIECE_BYTES, 2);
    let spec = source.import_bytes(&data).unwrap().spec();
    let partial = partial_of(&target, spec);
    let mut encoded = source.encode_piece(spec, 1).unwrap();
    let last = encoded.len() - 1;
    encoded[last] ^= 1; // in the piece's last chunk group
    let error = apply(&partial, 1, &encoded).unwrap_err();
    assert!(matches!(error, DecodeError::LeafHashMismatch(_)), "{error:?}");
    // The groups before the bad one were verified and kept; the bad one was not.
    let per_piece = partial.geometry().groups_per_piece();
    assert_eq!(partial.groups_held(), per_piece - 1);
    assert!(!partial.has_piece(1));
}

#[test]
fn resume_revalidates_claimed_groups_against_data_and_outboard() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let source = BlobStore::open(config(a.path())).unwrap();
    let data = test_data(4 * MIN_PIECE_BYTES, 3);
    let spec = source.import_bytes(&data).unwrap().spec();
    {
        let target = BlobStore::open(config(b.path())).unwrap();
        let partial = partial_of(&target, spec);
        for piece in [0, 2, 3] {
            apply(&partial, piece, &source.encode_piece(spec, piece).unwrap()).unwrap();
        }
        // The store is dropped without suspend: like a killed process.
    }
    // Corrupt one held group behind the store's back.
    let data_path = b.path().join(PARTIAL_DIR).join(spec.hash.to_hex()).join(DATA_FILE);
    let file = OpenOptions::new().write(true).open(&data_path).unwrap();
    file.write_all_at(b"X", 2 * MIN_PIECE_BYTES + 5).unwrap();

    let target = BlobStore::open(config(b.path())).unwrap();
    assert_eq!(target.usage().partial_blobs, 1);
    let partial = partial_of(&target, spec);
    let per_piece = partial.geometry().groups_per_piece();
    assert_eq!(partial.groups_held(), 3 * per_piece - 1);
    assert_eq!(partial.pieces().ones().collect::<Vec<_>>(), vec![0, 3]);
    for piece in [1, 2] {
        apply(&partial, piece, &source.encode_piece(spec, piece).unwrap()).unwrap();
    }
    assert_eq!(target.finalize(&partial).unwrap().read_to_vec().unwrap(), data);
}

#[test]
fn quota_refuses_a_blob_that_does_not_fit_and_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path());
    config.max_bytes = 2 * MIB;
    config.high_watermark_bytes = 2 * MIB;
    config.low_watermark_bytes = MIB;
    let store = BlobStore::open(config).unwrap();
    let spec = BlobSpec { hash: BlobHash::of(b"x"), size: 3 * MIB };
    let error = store.begin_download(spec).unwrap_err();
    assert!(matches!(error, ReserveError::QuotaExceeded { .. }), "{error}");
    assert!(error.to_string().contains("quota exceeded"), "{error}");
    assert_eq!(fs::read_dir(dir.path().join(PARTIAL_DIR)).unwrap().count(), 0);
    assert_eq!(store.usage().used_bytes, 0);
}

#[test]
fn disk_full_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path());
    config.min_free_bytes = u64::MAX / 4; // no real disk has this much free
    let store = BlobStore::open(config).unwrap();
    let spec = BlobSpec { hash: BlobHash::of(b"x"), size: MIB };
    let error = store.begin_download(spec).unwrap_err();
    assert!(matches!(error, ReserveError::DiskFull { .. }), "{error}");
    assert_eq!(fs::read_dir(dir.path().join(PARTIAL_DIR)).unwrap().count(), 0);
}

#[test]
fn a_failing_write_stops_the_download_and_discard_leaves_nothing_staged() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let source = BlobStore::open(config(a.path())).unwrap();
    let target = BlobStore::open(config(b.path())).unwrap();
    let data = test_data(2 * MIN_PIECE_BYTES, 4);
    let spec = source.import_bytes(&data).unwrap().spec();
    let partial = partial_of(&target, spec);
    target.set_write_fault(Some(CHUNK_GROUP_BYTES * 3));
    let encoded = source.encode_piece(spec, 0).unwrap();
    let ranges = partial.geometry().piece_chunks(0);
    let mut failure = None;
    for item in DecodeResponseIter::new(
        spec.hash.to_blake3(),
        partial.geometry().tree(),
        &encoded[..],
        &ranges,
    ) {
        if let BaoContentItem::Leaf(leaf) = item.unwrap()
            && let Err(error) = partial.write_verified_group(leaf.offset, &leaf.data)
        {
            failure = Some(error);
            break;
        }
    }
    let failure = failure.expect("the fourth group write fails");
    assert!(failure.to_string().contains("No space left"), "{failure}");
    assert_eq!(partial.groups_held(), 3);
    target.discard(&spec.hash);
    assert!(partial.write_verified_group(0, &data[..CHUNK_GROUP_BYTES as usize]).is_err());
    assert!(target.get(&spec.hash).is_none());
    assert_eq!(fs::read_dir(b.path().join(PARTIAL_DIR)).unwrap().count(), 0);
    assert_eq!(fs::read_dir(b.path().join(COMPLETE_DIR)).unwrap().count(), 0);
    assert_eq!(target.usage().used_bytes, 0);
}

#[test]
fn eviction_respects_watermarks_pins_use_and_the_newest() {
    let dir = tempfile::tempdir().unwrap();
    let evicting = |max_bytes| StoreConfig {
        max_bytes,
        high_watermark_bytes: 3 * MIB,
        low_watermark_bytes: 2 * MIB,
        keep_newest: 1,
        ..config(dir.path())
    };
    let store = BlobStore::open(evicting(12 * MIB)).unwrap();
    let blobs: Vec<BlobHash> =
        (0..4).map(|i| store.import_bytes(&test_data(MIB, i)).unwrap().spec().hash).collect();
    assert_eq!(store.usage().complete_blobs, 4);
    assert!(store.pin(&blobs[0]).unwrap());
    let in_use = store.get(&blobs[1]).unwrap();
    drop(store.get(&blobs[3]).unwrap()); // blob 3 is now the most recently used

    // Above the high watermark: only blob 2 may go (0 is pinned, 1 in use, 3 the newest),
    // so eviction stops above the low watermark rather than break a rule.
    assert_eq!(store.evict_to_watermark(), 1);
    let held: Vec<bool> = blobs.iter().map(|h| store.get(h).is_some()).collect();
    assert_eq!(held, [true, true, false, true]);
    assert!(store.usage().used_bytes > 3 * MIB);

    // A blob that needs room under the quota evicts what may go (blob 1, no longer in use).
    drop(in_use);
    drop(store.get(&blobs[3]).unwrap());
    let big = store.import_bytes(&test_data(9 * MIB, 9)).unwrap();
    let held: Vec<bool> = blobs.iter().map(|h| store.get(h).is_some()).collect();
    assert_eq!(held, [true, false, false, true]);
    assert!(store.usage().used_bytes <= 12 * MIB);
    let error = store.import_bytes(&test_data(9 * MIB, 10)).unwrap_err();
    assert!(matches!(error, ImportError::Reserve(ReserveError::QuotaExceeded { .. })), "{error}");

    // Pins survive a restart.
    drop(big);
    drop(store);
    let store = BlobStore::open(evicting(12 * MIB)).unwrap();
    assert_eq!(store.usage().pinned_blobs, 1);
    assert_eq!(fs::read_dir(dir.path().join(TMP_DIR)).unwrap().count(), 0);
}

#[test]
fn a_corrupt_complete_blob_is_never_served_and_is_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let store = BlobStore::open(config(dir.path())).unwrap();
    let blob = store.import_bytes(&test_data(MIN_PIECE_BYTES + 100, 5)).unwrap();
    let spec = blob.spec();
    let file = OpenOptions::new().write(true).open(blob.data_path()).unwrap();
    file.write_all_at(b"Z", 10).unwrap();
    drop(blob);
    assert!(store.encode_piece(spec, 1).is_ok(), "the other piece is intact");
    let error = store.encode_piece(spec, 0).unwrap_err();
    assert!(matches!(error, EncodePieceError::Corrupt { piece: 0 }), "{error}");
    assert!(store.get(&spec.hash).is_none());
    assert_eq!(store.usage().used_bytes, 0);
}

#[test]
fn empty_blobs_and_tiny_blobs_work() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let source = BlobStore::open(config(a.path())).unwrap();
    let target = BlobStore::open(config(b.path())).unwrap();
    let empty = BlobSpec { hash: BlobHash::of(&[]), size: 0 };
    assert!(matches!(target.begin_download(empty).unwrap(), BeginDownload::Complete(_)));
    let tiny = test_data(100, 6);
    let spec = source.import_bytes(&tiny).unwrap().spec();
    let partial = partial_of(&target, spec);
    apply(&partial, 0, &source.encode_piece(spec, 0).unwrap()).unwrap();
    assert_eq!(target.finalize(&partial).unwrap().read_to_vec().unwrap(), tiny);
}
