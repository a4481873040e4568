//! Snapshot files: built by streaming a RocksDB point-in-time view to disk, sent by openraft in
//! chunks, received into a file and installed in one atomic `WriteBatch`.
//!
//! Layout: the magic `TTSNAP01`, then length-prefixed postcard frames: one [`Frame::Header`]
//! carrying the `SnapshotMeta`, one [`Frame::Record`] per state-machine record, and a final
//! [`Frame::End`] with the record count, so a truncated file is detected, not installed.
//! Only one snapshot is kept: `current.snap`. Files being written end in `.partial` and are
//! removed at start-up.

use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use openraft::storage::Snapshot;
use openraft::{LogId, SnapshotMeta, StoredMembership};
use rocksdb::{DB, IteratorMode, WriteBatch, WriteOptions};
use serde::{Deserialize, Serialize};

use super::sm::{KEY_LAST_APPLIED, KEY_MEMBERSHIP};
use super::{CF_SM_DATA, CF_SM_META, cf};
use crate::raft::{NodeId, NodeInfo, TypeConfig};

const MAGIC: &[u8; 8] = b"TTSNAP01";
const CURRENT: &str = "current.snap";
const RECEIVING: &str = "receiving.partial";
const BUILDING: &str = "building.partial";
const INSTALLING: &str = "installing.partial";
/// Largest single frame in a snapshot file: one state-machine record.
pub const MAX_SNAPSHOT_FRAME_BYTES: usize = 64 * 1024 * 1024;
/// Records per `WriteBatch` are not limited: install is one atomic batch by design (the state
/// machine is small: ~300 bytes per agent row, tens of MiB for 100,000 hosts).
const IO_BUFFER_BYTES: usize = 256 * 1024;

#[derive(Serialize, Deserialize)]
enum Frame {
    Header { meta: SnapshotMeta<NodeId, NodeInfo> },
    Record { key: Vec<u8>, value: Vec<u8> },
    End { records: u64 },
}

fn write_frame(w: &mut impl Write, frame: &Frame) -> io::Result<()> {
    let bytes = postcard::to_stdvec(frame).map_err(io::Error::other)?;
    let len = u32::try_from(bytes.len()).map_err(io::Error::other)?;
    w.write_all(&len.to_be_bytes())?;
    w.write_all(&bytes)
}

fn read_frame(r: &mut impl Read) -> io::Result<Frame> {
    let mut len = [0u8; 4];
    r.read_exact(&mut len)?;
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_SNAPSHOT_FRAME_BYTES {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("snapshot frame of {len} bytes exceeds {MAX_SNAPSHOT_FRAME_BYTES}"),
        ));
    }
    let mut buf = vec![0u8; len];
    r.read_exact(&mut buf)?;
    postcard::from_bytes(&buf).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

fn read_header(r: &mut impl Read) -> io::Result<SnapshotMeta<NodeId, NodeInfo>> {
    let mut magic = [0u8; 8];
    r.read_exact(&mut magic)?;
    if &magic != MAGIC {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "not a snapshot file (bad magic)"));
    }
    match read_frame(r)? {
        Frame::Header { meta } => Ok(meta),
        _ => Err(io::Error::new(io::ErrorKind::InvalidData, "snapshot lacks its header")),
    }
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Removes files left by a build or receive that a crash interrupted.
pub(crate) fn remove_partial_files(dir: &Path) {
    for name in [RECEIVING, BUILDING, INSTALLING] {
        let _ = std::fs::remove_file(dir.join(name));
    }
}

/// Finishes an install that a crash interrupted, at start-up. openraft purges a follower's log
/// up to a received snapshot as soon as it hands the snapshot to the state machine, without
/// waiting for the install; after a crash in between, the log no longer covers what the state
/// lacks and openraft refuses to start ("purged beyond committed"). A received file that still
/// verifies (whole: its end frame and record count; synced before it was verified) is
/// installed now, as the interrupted call would have done, and made current. Returns the
/// snapshot's last log id if it installed one.
pub(crate) fn finish_interrupted_install(db: &DB, dir: &Path) -> io::Result<Option<LogId<NodeId>>> {
    let path = dir.join(INSTALLING);
    if !path.exists() {
        return Ok(None);
    }
    let Ok(meta) = verify(&path) else {
        // Cut short while it was copied: not received yet, removed with the partial files.
        return Ok(None);
    };
    let applied: Option<LogId<NodeId>> =
        match db.get_cf(cf(db, CF_SM_META), KEY_LAST_APPLIED).map_err(io::Error::other)? {
            Some(b) => Some(postcard::from_bytes(&b).map_err(io::Error::other)?),
            None => None,
        };
    if meta.last_log_id < applied {
        return Ok(None);
    }
    if meta.last_log_id > applied {
        install_into(db, &path)?;
    }
    SnapshotFile { path }.make_current(dir)?;
    Ok(meta.last_log_id)
}

/// Writes `current.snap` from a consistent view of the state machine.
pub(crate) fn build(db: &DB, dir: &Path) -> io::Result<()> {
    let view = db.snapshot();
    let get = |key: &[u8]| view.get_cf(cf(db, CF_SM_META), key).map_err(io::Error::other);
    let last_log_id: Option<LogId<NodeId>> = match get(KEY_LAST_APPLIED)? {
        Some(b) => Some(postcard::from_bytes(&b).map_err(io::Error::other)?),
        None => None,
    };
    let last_membership: StoredMembership<NodeId, NodeInfo> = match get(KEY_MEMBERSHIP)? {
        Some(b) => postcard::from_bytes(&b).map_err(io::Error::other)?,
        None => StoredMembership::default(),
    };
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);
    let snapshot_id = match last_log_id {
        Some(id) => format!("{}-{}-{stamp}", id.leader_id.term, id.index),
        None => format!("0-0-{stamp}"),
    };
    let meta = SnapshotMeta { last_log_id, last_membership, snapshot_id };

    let tmp = dir.join(BUILDING);
    let file = File::create(&tmp)?;
    let mut w = BufWriter::with_capacity(IO_BUFFER_BYTES, file);
    w.write_all(MAGIC)?;
    write_frame(&mut w, &Frame::Header { meta })?;
    let mut records = 0u64;
    for item in view.iterator_cf(cf(db, CF_SM_DATA), IteratorMode::Start) {
        let (key, value) = item.map_err(io::Error::other)?;
        write_frame(&mut w, &Frame::Record { key: key.to_vec(), value: value.to_vec() })?;
        records += 1;
        if records == 1 {
            // Half-way through the file, as far as a crash is concerned: header and a record
            // written, no end frame, not synced, not renamed.
            w.flush()?;
            crate::failpoints::fail_io(crate::failpoints::SNAPSHOT_BUILD)?;
        }
    }
    write_frame(&mut w, &Frame::End { records })?;
    let file = w.into_inner().map_err(|e| e.into_error())?;
    file.sync_all()?;
    std::fs::rename(&tmp, dir.join(CURRENT))?;
    sync_dir(dir)
}

/// Opens `current.snap`, if any, as openraft's snapshot handle.
pub(crate) async fn open_current(dir: &Path) -> io::Result<Option<Snapshot<TypeConfig>>> {
    let path = dir.join(CURRENT);
    let meta = {
        let path = path.clone();
        tokio::task::spawn_blocking(move || -> io::Result<Option<_>> {
            match File::open(&path) {
                Ok(f) => Ok(Some(read_header(&mut BufReader::new(f))?)),
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(e),
            }
        })
        .await
        .map_err(io::Error::other)??
    };
    let Some(meta) = meta else { return Ok(None) };
    let file = tokio::fs::File::open(&path).await?;
    Ok(Some(Snapshot { meta, snapshot: Box::new(file) }))
}

/// Creates (truncating) the file openraft streams a leader's snapshot into.
pub(crate) async fn create_receiving(dir: &Path) -> io::Result<tokio::fs::File> {
    tokio::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(dir.join(RECEIVING))
        .await
}

/// A complete snapshot file on disk.
pub(crate) struct SnapshotFile {
    pub path: PathBuf,
}

impl SnapshotFile {
    /// Copies the received snapshot data (whatever file openraft hands back) into a new file,
    /// syncs it and checks it is whole and matches `meta`. It is not current yet: it becomes
    /// current ([`SnapshotFile::make_current`]) only once the state machine holds its state, so
    /// that a crash in between never leaves a current snapshot ahead of the applied state.
    pub(crate) async fn finish_receiving(
        dir: &Path,
        mut file: tokio::fs::File,
        meta: &SnapshotMeta<NodeId, NodeInfo>,
    ) -> io::Result<SnapshotFile> {
        use tokio::io::{AsyncSeekExt, AsyncWriteExt};
        file.flush().await?;
        file.seek(io::SeekFrom::Start(0)).await?;
        let installing = dir.join(INSTALLING);
        let mut out = tokio::fs::File::create(&installing).await?;
        tokio::io::copy(&mut file, &mut out).await?;
        out.sync_all().await?;
        drop(out);
        drop(file);
        let expected = meta.clone();
        tokio::task::spawn_blocking(move || {
            let got = verify(&installing)?;
            if got.last_log_id != expected.last_log_id || got.snapshot_id != expected.snapshot_id {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "received snapshot {} does not match the announced {}",
                        got.snapshot_id, expected.snapshot_id
                    ),
                ));
            }
            Ok(SnapshotFile { path: installing })
        })
        .await
        .map_err(io::Error::other)?
    }

    /// Makes this (installed) snapshot the current one, durably.
    pub(crate) fn make_current(self, dir: &Path) -> io::Result<SnapshotFile> {
        let current = dir.join(CURRENT);
        std::fs::rename(&self.path, &current)?;
        let _ = std::fs::remove_file(dir.join(RECEIVING));
        sync_dir(dir)?;
        Ok(SnapshotFile { path: current })
    }
}

/// Reads a whole snapshot file, checking its frames and end marker; returns its meta.
pub(crate) fn verify(path: &Path) -> io::Result<SnapshotMeta<NodeId, NodeInfo>> {
    let mut r = BufReader::with_capacity(IO_BUFFER_BYTES, File::open(path)?);
    let meta = read_header(&mut r)?;
    let mut records = 0u64;
    loop {
        match read_frame(&mut r)? {
            Frame::Record { .. } => records += 1,
            Frame::End { records: n } if n == records => return Ok(meta),
            Frame::End { records: n } => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("snapshot claims {n} records but holds {records}"),
                ));
            }
            Frame::Header { .. } => {
                return Err(io::Error::new(io::ErrorKind::InvalidData, "second snapshot header"));
            }
        }
    }
}

/// Replaces the state machine's records and `last_applied`/membership with the snapshot's, in
/// one synced `WriteBatch`: after a crash the node has either the old state or the new one.
pub(crate) fn install_into(db: &DB, path: &Path) -> io::Result<()> {
    let mut r = BufReader::with_capacity(IO_BUFFER_BYTES, File::open(path)?);
    let meta = read_header(&mut r)?;
    crate::failpoints::fail_io(crate::failpoints::SNAPSHOT_INSTALL)?;
    let data_cf = cf(db, CF_SM_DATA);
    let meta_cf = cf(db, CF_SM_META);
    let mut batch = WriteBatch::default();
    for item in db.iterator_cf(data_cf, IteratorMode::Start) {
        let (key, _) = item.map_err(io::Error::other)?;
        batch.delete_cf(data_cf, key);
    }
    loop {
        match read_frame(&mut r)? {
            Frame::Record { key, value } => batch.put_cf(data_cf, key, value),
            Frame::End { .. } => break,
            Frame::Header { .. } => {
                return Err(io::Error::new(io::ErrorKind::InvalidData, "second snapshot header"));
            }
        }
    }
    match meta.last_log_id {
        Some(id) => batch.put_cf(
            meta_cf,
            KEY_LAST_APPLIED,
            postcard::to_stdvec(&id).map_err(io::Error::other)?,
        ),
        None => batch.delete_cf(meta_cf, KEY_LAST_APPLIED),
    }
    batch.put_cf(
        meta_cf,
        KEY_MEMBERSHIP,
        postcard::to_stdvec(&meta.last_membership).map_err(io::Error::other)?,
    );
    let mut opts = WriteOptions::default();
    opts.set_sync(true);
    db.write_opt(batch, &opts).map_err(io::Error::other)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncated_snapshot_is_detected() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.snap");
        let meta = SnapshotMeta::<NodeId, NodeInfo>::default();
        let mut bytes = MAGIC.to_vec();
        write_frame(&mut bytes, &Frame::Header { meta }).unwrap();
        write_frame(&mut bytes, &Frame::Record { key: b"k".to_vec(), value: b"v".to_vec() })
            .unwrap();
        std::fs::write(&path, &bytes).unwrap();
        assert!(verify(&path).is_err(), "a file without its end marker must not verify");
        write_frame(&mut bytes, &Frame::End { records: 2 }).unwrap();
        std::fs::write(&path, &bytes).unwrap();
        let err = verify(&path).unwrap_err();
        assert!(err.to_string().contains("claims 2 records"), "{err}");
    }
}
