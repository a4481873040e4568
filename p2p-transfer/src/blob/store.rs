//! The on-disk blob store: complete blobs, partial blobs being downloaded, and their outboards.
//!
//! Layout under [`StoreConfig::dir`]:
//!
//! ```text
//! complete/<hash>/data       the blob's bytes
//! complete/<hash>/outboard   its pre-order BLAKE3 outboard (64 bytes per parent node)
//! complete/<hash>/pin        present if the blob is pinned
//! partial/<hash>/data        preallocated to the blob's size, filled at group offsets
//! partial/<hash>/outboard    preallocated, filled as verified parents arrive
//! partial/<hash>/groups      GROUPS_MAGIC | size: u64 LE | hash | chunk-group bitfield
//! tmp/                       imports being written; emptied on open
//! ```
//!
//! **Invariant:** a chunk group is marked valid in `groups` only after it was verified against
//! the blob's root hash and written; a piece is served only after it is verified again against
//! the outboard on its way out; a blob moves to `complete/` (one directory rename) only after
//! its whole data has been hashed again and matched the root. A reader therefore never sees a
//! `complete/` blob whose bytes differ from its name.
//!
//! **Invariant:** the `groups` bitfield is a hint. It is written after every finished piece
//! without fsync; on resume the groups it claims are re-validated against data and outboard,
//! so a crash loses at most what was in flight and never admits a bad byte.
//!
//! Disk accounting counts only this store's own files ([`StoreUsage::used_bytes`]); partial
//! blobs count at their full preallocated size from the moment they are reserved.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bao_tree::ChunkRanges;
use bao_tree::io::sync::{encode_ranges_validated, outboard, valid_ranges};
use bao_tree::io::{EncodeError, Parent};
use tokio::sync::broadcast;
use tracing::{debug, error, info, warn};

use super::outboard::{DataFile, FileOutboard, SequentialReader, write_parent};
use super::{Bitfield, BlobHash, BlobSpec, BlobTooLarge, CHUNK_GROUP_BYTES, Geometry};

/// Capacity of the store's event channel, in events. A subscriber that falls further behind
/// gets `Lagged` and must re-read state (the blob server then re-sends full bitfields).
pub const STORE_EVENT_QUEUE: usize = 4096;

const COMPLETE_DIR: &str = "complete";
const PARTIAL_DIR: &str = "partial";
const TMP_DIR: &str = "tmp";
const DATA_FILE: &str = "data";
const OUTBOARD_FILE: &str = "outboard";
const OUTBOARD_NEW_FILE: &str = "outboard.new";
const GROUPS_FILE: &str = "groups";
const PIN_FILE: &str = "pin";
/// First bytes of a `groups` file; a file without them is not ours and is discarded.
const GROUPS_MAGIC: &[u8; 8] = b"ttgroup1";
/// Bytes before the bitfield in a `groups` file: magic, size, hash.
const GROUPS_HEADER_BYTES: u64 = 8 + 8 + 32;

/// Limits for a [`BlobStore`]. All sizes count only the store's own files.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// Directory holding `complete/`, `partial/` and `tmp/`. Created if missing.
    pub dir: PathBuf,
    /// Hard cap on the store's usage. A download or import that would exceed it even after
    /// evicting everything evictable is refused with [`ReserveError::QuotaExceeded`].
    pub max_bytes: u64,
    /// When usage rises above this after a blob completes, unpinned blobs are evicted, least
    /// recently used first, until usage is at most [`StoreConfig::low_watermark_bytes`].
    pub high_watermark_bytes: u64,
    /// Target of eviction; see [`StoreConfig::high_watermark_bytes`].
    pub low_watermark_bytes: u64,
    /// Free space the file system must keep beyond a new blob; below it the blob is refused
    /// with [`ReserveError::DiskFull`] (after evicting what can be evicted).
    pub min_free_bytes: u64,
    /// The most recently used complete blobs that are never evicted, in addition to pinned
    /// ones (for a deploy host: the current and previous builds).
    pub keep_newest: usize,
}

/// Something happened to a blob in the store. Blob servers forward these to interested peers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreEvent {
    /// A piece of a partial blob was verified and written.
    PieceComplete { hash: BlobHash, piece: u32 },
    /// A piece turned out corrupt on disk and is no longer held.
    PieceLost { hash: BlobHash, piece: u32 },
    /// A blob was verified whole and moved to `complete/` (or imported).
    BlobComplete { hash: BlobHash },
    /// A blob (complete or partial) was removed: evicted, discarded or found corrupt.
    BlobRemoved { hash: BlobHash },
}

/// A snapshot of the store's own disk usage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreUsage {
    /// Bytes of complete blobs and outboards plus the full reserved size of partial blobs.
    pub used_bytes: u64,
    pub complete_blobs: usize,
    pub partial_blobs: usize,
    pub pinned_blobs: usize,
}

/// Opening a store failed.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The limits contradict each other; fix the configuration.
    #[error("invalid store config: {0}")]
    InvalidConfig(&'static str),
    /// Creating or scanning the store's directories failed.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Reserving space for a new blob (download or import) failed. Nothing was left on disk.
#[derive(Debug, thiserror::Error)]
pub enum ReserveError {
    /// The blob is larger than the protocol allows.
    #[error(transparent)]
    TooLarge(#[from] BlobTooLarge),
    /// The store holds this hash with another size: the caller's size is wrong (or the
    /// store's copy is); the download would never verify.
    #[error("blob {hash} is stored with size {stored}, not {requested}")]
    SizeMismatch { hash: BlobHash, stored: u64, requested: u64 },
    /// The blob does not fit under [`StoreConfig::max_bytes`] even after evicting every
    /// unpinned, unused blob. Unpin blobs or raise the quota.
    #[error(
        "quota exceeded: need {needed} bytes, the store uses {used} of its {max} bytes and \
         nothing more can be evicted"
    )]
    QuotaExceeded { needed: u64, used: u64, max: u64 },
    /// The file system lacks the space (plus [`StoreConfig::min_free_bytes`]), even after
    /// evicting what could be evicted. Free disk space.
    #[error(
        "disk full: need {needed} bytes plus {min_free} bytes kept free, {available} bytes \
         available"
    )]
    DiskFull { needed: u64, available: u64, min_free: u64 },
    /// Creating or preallocating the blob's files failed.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Importing a local file or buffer as a complete blob failed. Nothing was left on disk.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error(transparent)]
    Reserve(#[from] ReserveError),
    /// Reading the source or writing the store failed.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Writing a verified chunk group or parent of a partial blob failed.
#[derive(Debug, thiserror::Error)]
pub enum GroupWriteError {
    /// The write failed (for example ENOSPC on a file system that does not honour
    /// preallocation, or an injected fault). The download should stop; discard the blob.
    #[error("writing {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The partial blob was discarded or completed by someone else meanwhile.
    #[error("partial blob {0} is no longer open")]
    Closed(BlobHash),
}

/// Turning a partial blob into a complete one failed.
#[derive(Debug, thiserror::Error)]
pub enum FinalizeError {
    /// Not every chunk group is held yet (the value is how many are missing).
    #[error("{0} chunk groups are still missing")]
    Incomplete(u64),
    /// The whole-blob hash differs from the name although every group was verified: the
    /// disk changed under us or there is a bug. The groups are marked missing again.
    #[error("whole-blob verification failed: data hashes to {actual}, expected {expected}")]
    HashMismatch { expected: BlobHash, actual: BlobHash },
    /// Reading, syncing or renaming failed.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The partial blob was discarded meanwhile.
    #[error("partial blob {0} is no longer open")]
    Closed(BlobHash),
}

/// Encoding a piece for a peer failed.
#[derive(Debug, thiserror::Error)]
pub enum EncodePieceError {
    /// We do not hold this blob at this size, or not this piece of it.
    #[error("piece not held")]
    NotHeld,
    /// The piece failed verification on its way out: our copy is corrupt. It is dropped
    /// (the piece for a partial blob, the whole blob for a complete one).
    #[error("stored piece {piece} failed verification; dropped")]
    Corrupt { piece: u32 },
    /// Reading the store failed.
    #[error("reading blob: {0}")]
    Io(#[source] io::Error),
}

/// The result of [`BlobStore::begin_download`].
#[derive(Debug)]
pub enum BeginDownload {
    /// The store already holds the whole blob.
    Complete(CompleteBlob),
    /// A partial blob to fill; possibly resumed with some groups already held.
    Partial(Arc<PartialBlob>),
}

/// A content-addressed store of verified blobs. Cheap to share (`Arc`); all methods are
/// blocking file IO and are called from `spawn_blocking` in async code when they may hash
/// a whole blob ([`BlobStore::import_file`], [`BlobStore::finalize`],
/// [`BlobStore::begin_download`] when it resumes).
pub struct BlobStore {
    config: StoreConfig,
    state: Mutex<State>,
    events: broadcast::Sender<StoreEvent>,
    fault: Arc<WriteFault>,
}

impl std::fmt::Debug for BlobStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlobStore").field("dir", &self.config.dir).finish_non_exhaustive()
    }
}

struct State {
    complete: HashMap<BlobHash, Arc<CompleteEntry>>,
    partial: HashMap<BlobHash, Arc<PartialBlob>>,
    /// Reserved bytes of partial blobs that are on disk but not open.
    dormant_partial: HashMap<BlobHash, u64>,
    used_bytes: u64,
    /// Monotonic use counter for LRU ordering.
    use_seq: u64,
    /// Counter for unique `tmp/` names.
    tmp_seq: u64,
}

struct CompleteEntry {
    spec: BlobSpec,
    dir: PathBuf,
    data: File,
    outboard: File,
    pinned: std::sync::atomic::AtomicBool,
    last_used: AtomicU64,
}

impl CompleteEntry {
    fn disk_bytes(&self) -> u64 {
        disk_bytes_complete(self.spec.size)
    }
}

fn disk_bytes_complete(size: u64) -> u64 {
    size + Geometry::new(size).map(|g| g.outboard_bytes()).unwrap_or(0)
}

fn disk_bytes_partial(geometry: &Geometry) -> u64 {
    geometry.size() + geometry.outboard_bytes() + GROUPS_HEADER_BYTES + geometry.n_groups() / 8 + 1
}

/// A verified blob on disk. Holding one keeps the blob from being evicted.
#[derive(Clone)]
pub struct CompleteBlob(Arc<CompleteEntry>);

impl std::fmt::Debug for CompleteBlob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CompleteBlob").field("spec", &self.0.spec).finish()
    }
}

impl CompleteBlob {
    /// Name and size.
    pub fn spec(&self) -> BlobSpec {
        self.0.spec
    }

    /// Path of the blob's bytes. Read-only: the store owns the file.
    pub fn data_path(&self) -> PathBuf {
        self.0.dir.join(DATA_FILE)
    }

    /// Reads the whole blob into memory (for tests and small blobs).
    pub fn read_to_vec(&self) -> io::Result<Vec<u8>> {
        let mut buf = vec![0; usize::try_from(self.0.spec.size).expect("fits memory")];
        self.0.data.read_exact_at(&mut buf, 0)?;
        Ok(buf)
    }
}

/// Test and chaos fault: after `remaining` more bytes, group writes fail with ENOSPC.
struct WriteFault {
    remaining: Mutex<Option<u64>>,
}

impl WriteFault {
    fn charge(&self, len: u64) -> io::Result<()> {
        let mut remaining = self.remaining.lock().expect("fault lock");
        match remaining.as_mut() {
            None => Ok(()),
            Some(left) if *left >= len => {
                *left -= len;
                Ok(())
            }
            Some(_) => Err(io::Error::from_raw_os_error(nix::libc::ENOSPC)),
        }
    }
}

impl BlobStore {
    /// Opens (creating if needed) the store in `config.dir`. Complete blobs are trusted as
    /// named (every piece is verified again before it is served); partial blobs are only
    /// accounted here and re-validated when a download resumes them. Leftovers in `tmp/` and
    /// unreadable entries are deleted.
    pub fn open(config: StoreConfig) -> Result<Arc<BlobStore>, OpenError> {
        if config.low_watermark_bytes > config.high_watermark_bytes {
            return Err(OpenError::InvalidConfig("low_watermark_bytes > high_watermark_bytes"));
        }
        if config.high_watermark_bytes > config.max_bytes {
            return Err(OpenError::InvalidConfig("high_watermark_bytes > max_bytes"));
        }
        let io_err = |path: &Path| {
            let path = path.to_owned();
            move |source| OpenError::Io { path, source }
        };
        let tmp = config.dir.join(TMP_DIR);
        if tmp.exists() {
            fs::remove_dir_all(&tmp).map_err(io_err(&tmp))?;
        }
        for sub in [COMPLETE_DIR, PARTIAL_DIR, TMP_DIR] {
            let dir = config.dir.join(sub);
            fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        }

        let mut state = State {
            complete: HashMap::new(),
            partial: HashMap::new(),
            dormant_partial: HashMap::new(),
            used_bytes: 0,
            use_seq: 0,
            tmp_seq: 0,
        };

        let complete_dir = config.dir.join(COMPLETE_DIR);
        let mut found = Vec::new();
        for entry in fs::read_dir(&complete_dir).map_err(io_err(&complete_dir))? {
            let entry = entry.map_err(io_err(&complete_dir))?;
            let dir = entry.path();
            match load_complete(&dir) {
                Some((entry, mtime)) => found.push((mtime, entry)),
                None => {
                    warn!(path = %dir.display(), "unreadable complete blob; removing");
                    let _ = fs::remove_dir_all(&dir);
                }
            }
        }
        // Oldest first, so the newest get the highest use sequence numbers.
        found.sort_by_key(|(mtime, _)| *mtime);
        for (_, entry) in found {
            state.use_seq += 1;
            entry.last_used.store(state.use_seq, Ordering::Relaxed);
            state.used_bytes += entry.disk_bytes();
            state.complete.insert(entry.spec.hash, Arc::new(entry));
        }

        let partial_dir = config.dir.join(PARTIAL_DIR);
        for entry in fs::read_dir(&partial_dir).map_err(io_err(&partial_dir))? {
            let entry = entry.map_err(io_err(&partial_dir))?;
            let dir = entry.path();
            match read_groups_header(&dir.join(GROUPS_FILE)) {
                Some(spec)
                    if dir.file_name().and_then(|n| n.to_str()) == Some(&spec.hash.to_hex())
                        && !state.complete.contains_key(&spec.hash) =>
                {
                    let geometry = Geometry::new(spec.size).expect("header size checked");
                    let bytes = disk_bytes_partial(&geometry);
                    state.used_bytes += bytes;
                    state.dormant_partial.insert(spec.hash, bytes);
                }
                _ => {
                    warn!(path = %dir.display(), "unreadable partial blob; removing");
                    let _ = fs::remove_dir_all(&dir);
                }
            }
        }
        info!(
            dir = %config.dir.display(),
            complete = state.complete.len(),
            partial = state.dormant_partial.len(),
            used_bytes = state.used_bytes,
            "blob store opened"
        );

        let (events, _) = broadcast::channel(STORE_EVENT_QUEUE);
        Ok(Arc::new(BlobStore {
            config,
            state: Mutex::new(state),
            events,
            fault: Arc::new(WriteFault { remaining: Mutex::new(None) }),
        }))
    }

    /// The store's configuration.
    pub fn config(&self) -> &StoreConfig {
        &self.config
    }

    /// Subscribes to [`StoreEvent`]s.
    pub fn subscribe(&self) -> broadcast::Receiver<StoreEvent> {
        self.events.subscribe()
    }

    /// Fault injection for tests and chaos experiments: after `bytes` more bytes of chunk
    /// group data, writes to partial blobs fail with ENOSPC. `None` turns it off.
    pub fn set_write_fault(&self, bytes: Option<u64>) {
        *self.fault.remaining.lock().expect("fault lock") = bytes;
    }

    /// Current usage.
    pub fn usage(&self) -> StoreUsage {
        let state = self.lock();
        StoreUsage {
            used_bytes: state.used_bytes,
            complete_blobs: state.complete.len(),
            partial_blobs: state.partial.len() + state.dormant_partial.len(),
            pinned_blobs: state
                .complete
                .values()
                .filter(|e| e.pinned.load(Ordering::Relaxed))
                .count(),
        }
    }

    /// The complete blob named `hash`, if held. Marks it as recently used.
    pub fn get(&self, hash: &BlobHash) -> Option<CompleteBlob> {
        let mut state = self.lock();
        state.use_seq += 1;
        let seq = state.use_seq;
        let entry = state.complete.get(hash)?;
        entry.last_used.store(seq, Ordering::Relaxed);
        Some(CompleteBlob(entry.clone()))
    }

    /// The size of `hash` if we hold it, complete or as an open partial blob.
    pub fn size_of(&self, hash: &BlobHash) -> Option<u64> {
        let state = self.lock();
        state
            .complete
            .get(hash)
            .map(|e| e.spec.size)
            .or_else(|| state.partial.get(hash).map(|p| p.spec.size))
    }

    /// Which pieces of `hash` we hold, if we hold any part of it (the partial blob must be
    /// open, i.e. being downloaded). `None` also when `size` differs from ours.
    pub fn pieces(&self, hash: &BlobHash, size: u64) -> Option<Bitfield> {
        let state = self.lock();
        if let Some(entry) = state.complete.get(hash) {
            let geometry = Geometry::new(entry.spec.size).ok()?;
            return (entry.spec.size == size).then(|| Bitfield::full(geometry.n_pieces().into()));
        }
        let partial = state.partial.get(hash)?;
        (partial.spec.size == size).then(|| partial.pieces())
    }

    /// Pins a complete blob: it is never evicted until unpinned. The pin survives restarts.
    /// Returns false if the blob is not held.
    pub fn pin(&self, hash: &BlobHash) -> io::Result<bool> {
        let state = self.lock();
        let Some(entry) = state.complete.get(hash) else { return Ok(false) };
        File::create(entry.dir.join(PIN_FILE))?;
        entry.pinned.store(true, Ordering::Relaxed);
        Ok(true)
    }

    /// Removes a pin. Returns false if the blob is not held.
    pub fn unpin(&self, hash: &BlobHash) -> io::Result<bool> {
        let state = self.lock();
        let Some(entry) = state.complete.get(hash) else { return Ok(false) };
        match fs::remove_file(entry.dir.join(PIN_FILE)) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        entry.pinned.store(false, Ordering::Relaxed);
        Ok(true)
    }

    /// Imports `data` as a complete blob (e.g. on the origin). Idempotent.
    pub fn import_bytes(&self, data: &[u8]) -> Result<CompleteBlob, ImportError> {
        self.import_with(data.len() as u64, |path| {
            let mut file = File::create(path)?;
            file.write_all(data)?;
            Ok(())
        })
    }

    /// Imports a local file as a complete blob (the file is copied). Idempotent.
    pub fn import_file(&self, source: &Path) -> Result<CompleteBlob, ImportError> {
        let size = fs::metadata(source)
            .map_err(|e| ImportError::Io { path: source.to_owned(), source: e })?
            .len();
        self.import_with(size, |path| fs::copy(source, path).map(|_| ()))
    }

    fn import_with(
        &self,
        size: u64,
        write_data: impl FnOnce(&Path) -> io::Result<()>,
    ) -> Result<CompleteBlob, ImportError> {
        let geometry = Geometry::new(size).map_err(ReserveError::from)?;
        let reserved = disk_bytes_complete(size);
        let tmp = {
            let mut state = self.lock();
            self.make_room(&mut state, reserved)?;
            state.used_bytes += reserved;
            state.tmp_seq += 1;
            self.config.dir.join(TMP_DIR).join(format!("import-{}", state.tmp_seq))
        };
        let result = self.import_into(&tmp, geometry, write_data);
        let mut state = self.lock();
        state.used_bytes -= reserved;
        let (spec, dir) = match result {
            Ok(spec) => (spec, self.complete_dir(&spec.hash)),
            Err(error) => {
                let _ = fs::remove_dir_all(&tmp);
                return Err(error);
            }
        };
        if let Some(entry) = state.complete.get(&spec.hash) {
            let _ = fs::remove_dir_all(&tmp);
            return Ok(CompleteBlob(entry.clone()));
        }
        let io_err = |path: &Path| {
            let path = path.to_owned();
            move |source| ImportError::Io { path, source }
        };
        fs::rename(&tmp, &dir).map_err(io_err(&dir))?;
        sync_dir(&self.config.dir.join(COMPLETE_DIR)).map_err(io_err(&dir))?;
        let entry = load_complete(&dir).map(|(entry, _)| entry).ok_or_else(|| ImportError::Io {
            path: dir.clone(),
            source: io::Error::other("imported blob unreadable"),
        })?;
        let entry = self.insert_complete(&mut state, entry);
        debug!(blob = %spec.hash.short(), size, "imported");
        let _ = self.events.send(StoreEvent::BlobComplete { hash: spec.hash });
        Ok(entry)
    }

    /// Writes data and outboard into `tmp`, hashing as it goes; returns the spec.
    fn import_into(
        &self,
        tmp: &Path,
        geometry: Geometry,
        write_data: impl FnOnce(&Path) -> io::Result<()>,
    ) -> Result<BlobSpec, ImportError> {
        let io_err = |path: &Path| {
            let path = path.to_owned();
            move |source| ImportError::Io { path, source }
        };
        fs::create_dir_all(tmp).map_err(io_err(tmp))?;
        let data_path = tmp.join(DATA_FILE);
        write_data(&data_path).map_err(io_err(&data_path))?;
        let data = File::open(&data_path).map_err(io_err(&data_path))?;
        let actual_size = data.metadata().map_err(io_err(&data_path))?.len();
        if actual_size != geometry.size() {
            return Err(ImportError::Io {
                path: data_path,
                source: io::Error::other(format!(
                    "source changed size while importing ({} then {actual_size} bytes)",
                    geometry.size()
                )),
            });
        }
        let outboard_path = tmp.join(OUTBOARD_FILE);
        let outboard_file = File::create(&outboard_path).map_err(io_err(&outboard_path))?;
        outboard_file.set_len(geometry.outboard_bytes()).map_err(io_err(&outboard_path))?;
        let hash = compute_outboard(&data, &outboard_file, geometry).map_err(io_err(tmp))?;
        data.sync_all().map_err(io_err(&data_path))?;
        outboard_file.sync_all().map_err(io_err(&outboard_path))?;
        Ok(BlobSpec { hash, size: geometry.size() })
    }

    /// Starts or resumes downloading `spec`: returns the complete blob if held, else a
    /// partial blob, reserving its full size first (evicting if needed) and preallocating
    /// its files. A partial blob left by an earlier run is re-validated, which hashes the
    /// groups it claims.
    pub fn begin_download(&self, spec: BlobSpec) -> Result<BeginDownload, ReserveError> {
        let geometry = Geometry::new(spec.size)?;
        let mut state = self.lock();
        if let Some(entry) = state.complete.get(&spec.hash) {
            if entry.spec.size != spec.size {
                return Err(ReserveError::SizeMismatch {
                    hash: spec.hash,
                    stored: entry.spec.size,
                    requested: spec.size,
                });
            }
            return Ok(BeginDownload::Complete(CompleteBlob(entry.clone())));
        }
        if let Some(partial) = state.partial.get(&spec.hash) {
            if partial.spec.size != spec.size {
                return Err(ReserveError::SizeMismatch {
                    hash: spec.hash,
                    stored: partial.spec.size,
                    requested: spec.size,
                });
            }
            return Ok(BeginDownload::Partial(partial.clone()));
        }
        let dir = self.partial_dir(&spec.hash);
        if let Some(bytes) = state.dormant_partial.remove(&spec.hash) {
            match self.resume_partial(&dir, spec, geometry) {
                Ok(partial) => {
                    let partial = Arc::new(partial);
                    state.partial.insert(spec.hash, partial.clone());
                    return Ok(BeginDownload::Partial(partial));
                }
                Err(error) => {
                    warn!(blob = %spec.hash.short(), %error, "cannot resume partial blob; restarting");
                    let _ = fs::remove_dir_all(&dir);
                    state.used_bytes -= bytes;
                }
            }
        }
        if spec.size == 0 {
            drop(state);
            return self.begin_empty(spec);
        }

        let reserved = disk_bytes_partial(&geometry);
        self.make_room(&mut state, reserved)?;
        let partial = match self.create_partial(&dir, spec, geometry) {
            Ok(partial) => Arc::new(partial),
            Err(error) => {
                let _ = fs::remove_dir_all(&dir);
                return Err(error);
            }
        };
        state.used_bytes += reserved;
        state.partial.insert(spec.hash, partial.clone());
        debug!(blob = %spec.hash.short(), size = spec.size, "partial blob reserved");
        Ok(BeginDownload::Partial(partial))
    }

    fn begin_empty(&self, spec: BlobSpec) -> Result<BeginDownload, ReserveError> {
        if spec.hash != BlobHash::of(&[]) {
            // An empty blob with another name can never verify; the caller's spec is wrong.
            return Err(ReserveError::SizeMismatch {
                hash: spec.hash,
                stored: u64::MAX,
                requested: 0,
            });
        }
        self.import_bytes(&[]).map(BeginDownload::Complete).map_err(|error| match error {
            ImportError::Reserve(error) => error,
            ImportError::Io { path, source } => ReserveError::Io { path, source },
        })
    }

    fn create_partial(
        &self,
        dir: &Path,
        spec: BlobSpec,
        geometry: Geometry,
    ) -> Result<PartialBlob, ReserveError> {
        let io_err = |path: &Path| {
            let path = path.to_owned();
            move |source: io::Error| ReserveError::Io { path, source }
        };
        let _ = fs::remove_dir_all(dir);
        fs::create_dir_all(dir).map_err(io_err(dir))?;
        let data_path = dir.join(DATA_FILE);
        let data = create_rw(&data_path).map_err(io_err(&data_path))?;
        preallocate(&data, geometry.size()).map_err(|source| {
            if source.raw_os_error() == Some(nix::libc::ENOSPC) {
                ReserveError::DiskFull {
                    needed: geometry.size(),
                    available: 0,
                    min_free: self.config.min_free_bytes,
                }
            } else {
                ReserveError::Io { path: data_path.clone(), source }
            }
        })?;
        let outboard_path = dir.join(OUTBOARD_FILE);
        let outboard = create_rw(&outboard_path).map_err(io_err(&outboard_path))?;
        preallocate(&outboard, geometry.outboard_bytes()).map_err(io_err(&outboard_path))?;
        let groups_path = dir.join(GROUPS_FILE);
        let groups_file = create_rw(&groups_path).map_err(io_err(&groups_path))?;
        let groups = Bitfield::new(geometry.n_groups());
        write_groups_file(&groups_file, spec, &groups).map_err(io_err(&groups_path))?;
        Ok(PartialBlob::new(spec, geometry, dir, data, outboard, groups_file, groups, self))
    }

    fn resume_partial(
        &self,
        dir: &Path,
        spec: BlobSpec,
        geometry: Geometry,
    ) -> io::Result<PartialBlob> {
        let open = |name: &str| OpenOptions::new().read(true).write(true).open(dir.join(name));
        let data = open(DATA_FILE)?;
        let outboard = open(OUTBOARD_FILE)?;
        let groups_file = open(GROUPS_FILE)?;
        if data.metadata()?.len() != geometry.size() {
            return Err(io::Error::other("data file has the wrong length"));
        }
        let claimed = read_groups(&groups_file, spec, geometry)
            .ok_or_else(|| io::Error::other("groups file unreadable"))?;
        let valid = revalidate(&data, &outboard, spec, geometry, &claimed)?;
        info!(
            blob = %spec.hash.short(),
            claimed = claimed.count(),
            valid = valid.count(),
            n_groups = geometry.n_groups(),
            "resuming partial blob"
        );
        write_groups_file(&groups_file, spec, &valid)?;
        Ok(PartialBlob::new(spec, geometry, dir, data, outboard, groups_file, valid, self))
    }

    /// Verifies a partial blob whole and moves it to `complete/`. Call when
    /// [`PartialBlob::is_complete`]; hashes the whole blob once more.
    pub fn finalize(&self, partial: &Arc<PartialBlob>) -> Result<CompleteBlob, FinalizeError> {
        let spec = partial.spec;
        let missing = {
            let inner = partial.lock();
            if inner.closed {
                return Err(FinalizeError::Closed(spec.hash));
            }
            partial.geometry.n_groups() - inner.groups.count()
        };
        if missing > 0 {
            return Err(FinalizeError::Incomplete(missing));
        }
        let io_err = |path: &Path| {
            let path = path.to_owned();
            move |source| FinalizeError::Io { path, source }
        };
        // Recompute the outboard from the data rather than trusting the one assembled from
        // many peers' proofs: one pass gives both the whole-blob check and a clean outboard.
        let new_outboard_path = partial.dir.join(OUTBOARD_NEW_FILE);
        let new_outboard = create_rw(&new_outboard_path).map_err(io_err(&new_outboard_path))?;
        new_outboard
            .set_len(partial.geometry.outboard_bytes())
            .map_err(io_err(&new_outboard_path))?;
        let actual = compute_outboard(&partial.data, &new_outboard, partial.geometry)
            .map_err(io_err(&partial.dir))?;
        if actual != spec.hash {
            error!(blob = %spec.hash.short(), %actual, "whole-blob verification failed");
            let _ = fs::remove_file(&new_outboard_path);
            partial.reset();
            return Err(FinalizeError::HashMismatch { expected: spec.hash, actual });
        }
        partial.data.sync_all().map_err(io_err(&partial.dir))?;
        new_outboard.sync_all().map_err(io_err(&new_outboard_path))?;
        let outboard_path = partial.dir.join(OUTBOARD_FILE);
        fs::rename(&new_outboard_path, &outboard_path).map_err(io_err(&outboard_path))?;
        fs::remove_file(partial.dir.join(GROUPS_FILE)).map_err(io_err(&partial.dir))?;
        sync_dir(&partial.dir).map_err(io_err(&partial.dir))?;

        let mut state = self.lock();
        {
            let mut inner = partial.lock();
            if inner.closed {
                return Err(FinalizeError::Closed(spec.hash));
            }
            inner.closed = true;
        }
        let dir = self.complete_dir(&spec.hash);
        fs::rename(&partial.dir, &dir).map_err(io_err(&dir))?;
        sync_dir(&self.config.dir.join(COMPLETE_DIR)).map_err(io_err(&dir))?;
        sync_dir(&self.config.dir.join(PARTIAL_DIR)).map_err(io_err(&dir))?;
        state.partial.remove(&spec.hash);
        state.used_bytes -= disk_bytes_partial(&partial.geometry);
        let entry = load_complete(&dir).map(|(entry, _)| entry).ok_or_else(|| {
            FinalizeError::Io { path: dir.clone(), source: io::Error::other("blob unreadable") }
        })?;
        let blob = self.insert_complete(&mut state, entry);
        info!(blob = %spec.hash.short(), size = spec.size, "blob complete and verified");
        let _ = self.events.send(StoreEvent::BlobComplete { hash: spec.hash });
        if state.used_bytes > self.config.high_watermark_bytes {
            let target = self.config.low_watermark_bytes;
            self.evict_until(&mut state, |used, _| used <= target);
        }
        Ok(blob)
    }

    /// Deletes a partial blob (after a failed download, e.g. disk full), releasing its space.
    pub fn discard(&self, hash: &BlobHash) {
        let mut state = self.lock();
        let dir = self.partial_dir(hash);
        if let Some(partial) = state.partial.remove(hash) {
            partial.lock().closed = true;
            state.used_bytes -= disk_bytes_partial(&partial.geometry);
        } else if let Some(bytes) = state.dormant_partial.remove(hash) {
            state.used_bytes -= bytes;
        } else {
            return;
        }
        let _ = fs::remove_dir_all(&dir);
        debug!(blob = %hash.short(), "partial blob discarded");
        let _ = self.events.send(StoreEvent::BlobRemoved { hash: *hash });
    }

    /// Closes an open partial blob without deleting it (a download stopped); a later
    /// [`BlobStore::begin_download`] resumes it.
    pub fn suspend(&self, hash: &BlobHash) {
        let mut state = self.lock();
        if let Some(partial) = state.partial.remove(hash) {
            let mut inner = partial.lock();
            inner.closed = true;
            let _ = write_groups_file(&partial.groups_file, partial.spec, &inner.groups);
            state.dormant_partial.insert(*hash, disk_bytes_partial(&partial.geometry));
        }
    }

    /// Evicts unpinned blobs down to the low watermark if usage is above the high one.
    /// Returns the number of blobs evicted.
    pub fn evict_to_watermark(&self) -> usize {
        let mut state = self.lock();
        if state.used_bytes <= self.config.high_watermark_bytes {
            return 0;
        }
        let target = self.config.low_watermark_bytes;
        self.evict_until(&mut state, |used, _| used <= target)
    }

    /// Encodes `piece` of `spec` with its BLAKE3 proof for a peer, verifying it against our
    /// outboard first. A piece that fails is dropped from the store and not sent.
    pub fn encode_piece(&self, spec: BlobSpec, piece: u32) -> Result<Vec<u8>, EncodePieceError> {
        let source = {
            let state = self.lock();
            if let Some(entry) = state.complete.get(&spec.hash) {
                PieceSource::Complete(entry.clone())
            } else if let Some(partial) = state.partial.get(&spec.hash) {
                PieceSource::Partial(partial.clone())
            } else {
                return Err(EncodePieceError::NotHeld);
            }
        };
        let (data, outboard_file, size) = match &source {
            PieceSource::Complete(entry) => (&entry.data, &entry.outboard, entry.spec.size),
            PieceSource::Partial(partial) => {
                if partial.spec.size == spec.size && !partial.has_piece(piece) {
                    return Err(EncodePieceError::NotHeld);
                }
                (&partial.data, &partial.outboard, partial.spec.size)
            }
        };
        let geometry = Geometry::new(size).map_err(|_| EncodePieceError::NotHeld)?;
        if size != spec.size || piece >= geometry.n_pieces() {
            return Err(EncodePieceError::NotHeld);
        }
        let outboard = FileOutboard {
            root: spec.hash.to_blake3(),
            tree: geometry.tree(),
            file: outboard_file,
        };
        let mut encoded = Vec::with_capacity(
            (geometry.piece_len(piece) + geometry.piece_len(piece) / 128) as usize,
        );
        match encode_ranges_validated(
            DataFile(data),
            outboard,
            &geometry.piece_chunks(piece),
            &mut encoded,
        ) {
            Ok(()) => Ok(encoded),
            Err(EncodeError::LeafHashMismatch(_) | EncodeError::ParentHashMismatch(_)) => {
                error!(blob = %spec.hash.short(), piece, "stored piece is corrupt; dropping it");
                match source {
                    PieceSource::Partial(partial) => {
                        partial.drop_piece(piece);
                        let _ = self.events.send(StoreEvent::PieceLost { hash: spec.hash, piece });
                    }
                    PieceSource::Complete(entry) => self.remove_complete(&entry.spec.hash),
                }
                Err(EncodePieceError::Corrupt { piece })
            }
            Err(error) => Err(EncodePieceError::Io(error.into())),
        }
    }

    fn remove_complete(&self, hash: &BlobHash) {
        let mut state = self.lock();
        if let Some(entry) = state.complete.remove(hash) {
            state.used_bytes -= entry.disk_bytes();
            let _ = fs::remove_dir_all(&entry.dir);
            let _ = self.events.send(StoreEvent::BlobRemoved { hash: *hash });
        }
    }

    /// Ensures `needed` more bytes fit under the quota and on the file system, evicting
    /// least recently used, unpinned, unused complete blobs if needed.
    fn make_room(&self, state: &mut State, needed: u64) -> Result<(), ReserveError> {
        let max = self.config.max_bytes;
        if state.used_bytes + needed > max {
            self.evict_until(state, |used, _| used + needed <= max);
            if state.used_bytes + needed > max {
                return Err(ReserveError::QuotaExceeded { needed, used: state.used_bytes, max });
            }
        }
        let min_free = self.config.min_free_bytes;
        let available = self
            .free_bytes()
            .map_err(|source| ReserveError::Io { path: self.config.dir.clone(), source })?;
        if available < needed + min_free {
            self.evict_until(state, |_, freed| available + freed >= needed + min_free);
            let available = self
                .free_bytes()
                .map_err(|source| ReserveError::Io { path: self.config.dir.clone(), source })?;
            if available < needed + min_free {
                return Err(ReserveError::DiskFull { needed, available, min_free });
            }
        }
        Ok(())
    }

    /// Evicts blobs in LRU order until `done(used_bytes, freed_bytes)` or nothing is left
    /// to evict. Returns how many were evicted.
    fn evict_until(&self, state: &mut State, done: impl Fn(u64, u64) -> bool) -> usize {
        let mut by_age: Vec<(u64, BlobHash)> = state
            .complete
            .values()
            .map(|e| (e.last_used.load(Ordering::Relaxed), e.spec.hash))
            .collect();
        by_age.sort();
        let n_protected = self.config.keep_newest.min(by_age.len());
        by_age.truncate(by_age.len() - n_protected);
        let mut freed = 0;
        let mut evicted = 0;
        for (_, hash) in by_age {
            if done(state.used_bytes, freed) {
                break;
            }
            let entry = &state.complete[&hash];
            // The map holds one reference; any other is a reader or server using it.
            if entry.pinned.load(Ordering::Relaxed) || Arc::strong_count(entry) > 1 {
                continue;
            }
            let entry = state.complete.remove(&hash).expect("present");
            let bytes = entry.disk_bytes();
            if let Err(error) = fs::remove_dir_all(&entry.dir) {
                warn!(blob = %hash.short(), %error, "evicting blob failed");
            }
            state.used_bytes -= bytes;
            freed += bytes;
            evicted += 1;
            info!(blob = %hash.short(), bytes, "evicted");
            let _ = self.events.send(StoreEvent::BlobRemoved { hash });
        }
        evicted
    }

    fn free_bytes(&self) -> io::Result<u64> {
        let stat = nix::sys::statvfs::statvfs(&self.config.dir).map_err(io::Error::from)?;
        // Both are u64 on the 64-bit Linux targets we build for.
        Ok(stat.blocks_available().saturating_mul(stat.fragment_size()))
    }

    fn insert_complete(&self, state: &mut State, entry: CompleteEntry) -> CompleteBlob {
        state.use_seq += 1;
        entry.last_used.store(state.use_seq, Ordering::Relaxed);
        state.used_bytes += entry.disk_bytes();
        let entry = Arc::new(entry);
        state.complete.insert(entry.spec.hash, entry.clone());
        CompleteBlob(entry)
    }

    fn complete_dir(&self, hash: &BlobHash) -> PathBuf {
        self.config.dir.join(COMPLETE_DIR).join(hash.to_hex())
    }

    fn partial_dir(&self, hash: &BlobHash) -> PathBuf {
        self.config.dir.join(PARTIAL_DIR).join(hash.to_hex())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("blob store lock poisoned")
    }
}

enum PieceSource {
    Complete(Arc<CompleteEntry>),
    Partial(Arc<PartialBlob>),
}

/// A blob being downloaded: preallocated data and outboard files plus the set of verified
/// chunk groups. Shared by every request of one download (`Arc`); writes take verified items
/// only, so the order in which peers deliver them does not matter.
pub struct PartialBlob {
    spec: BlobSpec,
    geometry: Geometry,
    dir: PathBuf,
    data: File,
    outboard: File,
    groups_file: File,
    inner: Mutex<PartialInner>,
    events: broadcast::Sender<StoreEvent>,
    fault: Arc<WriteFault>,
}

struct PartialInner {
    groups: Bitfield,
    pieces: Bitfield,
    /// Completed, discarded or suspended: no more writes.
    closed: bool,
}

impl std::fmt::Debug for PartialBlob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PartialBlob").field("spec", &self.spec).finish_non_exhaustive()
    }
}

impl PartialBlob {
    #[allow(clippy::too_many_arguments)]
    fn new(
        spec: BlobSpec,
        geometry: Geometry,
        dir: &Path,
        data: File,
        outboard: File,
        groups_file: File,
        groups: Bitfield,
        store: &BlobStore,
    ) -> PartialBlob {
        let mut pieces = Bitfield::new(geometry.n_pieces().into());
        for piece in 0..geometry.n_pieces() {
            if groups.all_in(geometry.piece_groups(piece)) {
                pieces.set(piece.into());
            }
        }
        PartialBlob {
            spec,
            geometry,
            dir: dir.to_owned(),
            data,
            outboard,
            groups_file,
            inner: Mutex::new(PartialInner { groups, pieces, closed: false }),
            events: store.events.clone(),
            fault: store.fault.clone(),
        }
    }

    /// Name and size.
    pub fn spec(&self) -> BlobSpec {
        self.spec
    }

    /// Pieces and groups.
    pub fn geometry(&self) -> Geometry {
        self.geometry
    }

    /// The pieces held (every group verified and written).
    pub fn pieces(&self) -> Bitfield {
        self.lock().pieces.clone()
    }

    /// Whether every group of `piece` is held.
    pub fn has_piece(&self, piece: u32) -> bool {
        self.lock().pieces.get(piece.into())
    }

    /// Number of verified chunk groups held.
    pub fn groups_held(&self) -> u64 {
        self.lock().groups.count()
    }

    /// True when every chunk group is held; then call [`BlobStore::finalize`].
    pub fn is_complete(&self) -> bool {
        self.lock().groups.is_full()
    }

    /// Stores a parent node that a verifying decoder yielded.
    pub(crate) fn write_verified_parent(&self, parent: &Parent) -> Result<(), GroupWriteError> {
        if self.lock().closed {
            return Err(GroupWriteError::Closed(self.spec.hash));
        }
        write_parent(&self.outboard, self.geometry.tree(), parent.node, &parent.pair)
            .map_err(|source| GroupWriteError::Io { path: self.dir.join(OUTBOARD_FILE), source })
    }

    /// Stores a chunk group that a verifying decoder yielded, then marks it valid. Returns
    /// the piece this group completed, if any.
    pub(crate) fn write_verified_group(
        &self,
        offset: u64,
        data: &[u8],
    ) -> Result<Option<u32>, GroupWriteError> {
        let group = self.geometry.group_at(offset);
        let expected = self.geometry.group_range(group);
        assert_eq!(expected.end - expected.start, data.len() as u64, "verified group length");
        if self.lock().closed {
            return Err(GroupWriteError::Closed(self.spec.hash));
        }
        let data_path = || self.dir.join(DATA_FILE);
        self.fault
            .charge(data.len() as u64)
            .and_then(|()| self.data.write_all_at(data, offset))
            .map_err(|source| GroupWriteError::Io { path: data_path(), source })?;

        let mut inner = self.lock();
        if inner.closed {
            return Err(GroupWriteError::Closed(self.spec.hash));
        }
        if !inner.groups.set(group) {
            return Ok(None);
        }
        let piece = self.geometry.group_piece(group);
        if !inner.groups.all_in(self.geometry.piece_groups(piece))
            || !inner.pieces.set(piece.into())
        {
            return Ok(None);
        }
        // Persist the hint after each piece; it is re-validated on resume, so no fsync.
        if let Err(error) = write_groups_bits(&self.groups_file, &inner.groups) {
            warn!(blob = %self.spec.hash.short(), %error, "writing groups file failed");
        }
        drop(inner);
        let _ = self.events.send(StoreEvent::PieceComplete { hash: self.spec.hash, piece });
        Ok(Some(piece))
    }

    fn drop_piece(&self, piece: u32) {
        let mut inner = self.lock();
        for group in self.geometry.piece_groups(piece) {
            inner.groups.clear(group);
        }
        inner.pieces.clear(piece.into());
        let _ = write_groups_bits(&self.groups_file, &inner.groups);
    }

    fn reset(&self) {
        let mut inner = self.lock();
        inner.groups = Bitfield::new(self.geometry.n_groups());
        inner.pieces = Bitfield::new(self.geometry.n_pieces().into());
        let _ = write_groups_bits(&self.groups_file, &inner.groups);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, PartialInner> {
        self.inner.lock().expect("partial blob lock poisoned")
    }
}

/// Re-validates the groups `claimed` against data and outboard; returns those that verify.
fn revalidate(
    data: &File,
    outboard_file: &File,
    spec: BlobSpec,
    geometry: Geometry,
    claimed: &Bitfield,
) -> io::Result<Bitfield> {
    let mut valid = Bitfield::new(geometry.n_groups());
    if claimed.count() == 0 {
        return Ok(valid);
    }
    let mut ranges = ChunkRanges::empty();
    for group in claimed.ones() {
        ranges |= geometry.group_chunks(group..group + 1);
    }
    let outboard =
        FileOutboard { root: spec.hash.to_blake3(), tree: geometry.tree(), file: outboard_file };
    for range in valid_ranges(outboard, DataFile(data), &ranges) {
        let range = range?;
        let start = range.start.to_bytes();
        let end = range.end.to_bytes().min(geometry.size());
        let mut group = start.div_ceil(CHUNK_GROUP_BYTES);
        while group < geometry.n_groups() && geometry.group_range(group).end <= end {
            if claimed.get(group) {
                valid.set(group);
            }
            group += 1;
        }
    }
    Ok(valid)
}

/// Computes the pre-order outboard of `data` into `outboard_file`; returns the root hash.
fn compute_outboard(data: &File, outboard_file: &File, geometry: Geometry) -> io::Result<BlobHash> {
    let tree = geometry.tree();
    let target =
        FileOutboard { root: blake3::Hash::from_bytes([0; 32]), tree, file: outboard_file };
    let root = outboard(SequentialReader { file: data, pos: 0 }, tree, target)?;
    Ok(root.into())
}

fn load_complete(dir: &Path) -> Option<(CompleteEntry, std::time::SystemTime)> {
    let hash: BlobHash = dir.file_name()?.to_str()?.parse().ok()?;
    let data = File::open(dir.join(DATA_FILE)).ok()?;
    let outboard = File::open(dir.join(OUTBOARD_FILE)).ok()?;
    let size = data.metadata().ok()?.len();
    let geometry = Geometry::new(size).ok()?;
    if outboard.metadata().ok()?.len() != geometry.outboard_bytes() {
        return None;
    }
    let mtime = fs::metadata(dir).and_then(|m| m.modified()).ok()?;
    let entry = CompleteEntry {
        spec: BlobSpec { hash, size },
        dir: dir.to_owned(),
        data,
        outboard,
        pinned: std::sync::atomic::AtomicBool::new(dir.join(PIN_FILE).exists()),
        last_used: AtomicU64::new(0),
    };
    Some((entry, mtime))
}

fn create_rw(path: &Path) -> io::Result<File> {
    OpenOptions::new().read(true).write(true).create(true).truncate(true).open(path)
}

/// Reserves `len` bytes for `file` so later writes cannot fail for lack of space. Falls back
/// to a sparse `set_len` on file systems without `fallocate`.
fn preallocate(file: &File, len: u64) -> io::Result<()> {
    if len == 0 {
        return Ok(());
    }
    let off_len = nix::libc::off_t::try_from(len).map_err(io::Error::other)?;
    match nix::fcntl::posix_fallocate(file, 0, off_len) {
        Ok(()) => Ok(()),
        Err(nix::errno::Errno::EOPNOTSUPP | nix::errno::Errno::EINVAL) => file.set_len(len),
        Err(errno) => Err(errno.into()),
    }
}

fn write_groups_file(file: &File, spec: BlobSpec, groups: &Bitfield) -> io::Result<()> {
    let mut header = Vec::with_capacity(GROUPS_HEADER_BYTES as usize);
    header.extend_from_slice(GROUPS_MAGIC);
    header.extend_from_slice(&spec.size.to_le_bytes());
    header.extend_from_slice(spec.hash.as_bytes());
    file.write_all_at(&header, 0)?;
    write_groups_bits(file, groups)
}

fn write_groups_bits(file: &File, groups: &Bitfield) -> io::Result<()> {
    file.write_all_at(&groups.to_bytes(), GROUPS_HEADER_BYTES)
}

fn read_groups_header(path: &Path) -> Option<BlobSpec> {
    let file = File::open(path).ok()?;
    let mut header = [0u8; GROUPS_HEADER_BYTES as usize];
    file.read_exact_at(&mut header, 0).ok()?;
    if &header[..8] != GROUPS_MAGIC {
        return None;
    }
    let size = u64::from_le_bytes(header[8..16].try_into().ok()?);
    let hash = BlobHash::from_bytes(header[16..48].try_into().ok()?);
    Geometry::new(size).ok()?;
    Some(BlobSpec { hash, size })
}

fn read_groups(file: &File, spec: BlobSpec, geometry: Geometry) -> Option<Bitfield> {
    let mut header = [0u8; GROUPS_HEADER_BYTES as usize];
    file.read_exact_at(&mut header, 0).ok()?;
    if &header[..8] != GROUPS_MAGIC
        || header[8..16] != spec.size.to_le_bytes()
        || &header[16..48] != spec.hash.as_bytes()
    {
        return None;
    }
    let mut bits = vec![0u8; geometry.n_groups().div_ceil(8) as usize];
    file.read_exact_at(&mut bits, GROUPS_HEADER_BYTES).ok()?;
    Bitfield::from_bytes(geometry.n_groups(), &bits)
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests;
