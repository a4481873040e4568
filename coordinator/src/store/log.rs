//! The Raft log store (openraft `RaftLogStorage`, storage-v2).
//!
//! Durability rules (raft-anchors P3):
//! - `append` returns after a synced write; the flush callback is called only then.
//! - `save_vote` is synced before it returns: a node never acts on a vote it could forget.
//! - `purge` writes `last_purged` durably *before* deleting the entries, so a crash between
//!   the two leaves a consistent `get_log_state`.

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use openraft::storage::{LogFlushed, LogState, RaftLogReader, RaftLogStorage};
use openraft::{Entry, LogId, OptionalSend, StorageError, StorageIOError, Vote};
use rocksdb::{DB, Direction, IteratorMode, WriteBatch, WriteOptions};

use super::{CF_LOG, CF_META, cf};
use crate::raft::{NodeId, TypeConfig};

const KEY_VOTE: &[u8] = b"vote";
const KEY_LAST_PURGED: &[u8] = b"last_purged";
const KEY_COMMITTED: &[u8] = b"committed";

/// The Raft log in RocksDB. Cheap to clone; clones share the database.
#[derive(Clone)]
pub struct LogStore {
    db: Arc<DB>,
    /// Highest committed index openraft reported (`save_committed`), for status and metrics.
    committed: Arc<AtomicU64>,
    /// Observes the duration of each synced append, in seconds.
    fsync_observer: Option<Arc<dyn Fn(f64) + Send + Sync>>,
}

fn index_key(index: u64) -> [u8; 8] {
    index.to_be_bytes()
}

fn key_index(key: &[u8]) -> u64 {
    let bytes: [u8; 8] = key.try_into().expect("log keys are 8 bytes");
    u64::from_be_bytes(bytes)
}

fn synced() -> WriteOptions {
    let mut w = WriteOptions::default();
    w.set_sync(true);
    w
}

impl LogStore {
    pub(crate) fn new(db: Arc<DB>) -> Self {
        Self { db, committed: Arc::new(AtomicU64::new(0)), fsync_observer: None }
    }

    /// Reports each synced append's duration to `f`.
    pub fn with_fsync_observer(mut self, f: Arc<dyn Fn(f64) + Send + Sync>) -> Self {
        self.fsync_observer = Some(f);
        self
    }

    /// Shared view of the committed index.
    pub fn committed_index(&self) -> Arc<AtomicU64> {
        self.committed.clone()
    }

    fn get_meta<T: serde::de::DeserializeOwned>(
        &self,
        key: &[u8],
    ) -> Result<Option<T>, StorageError<NodeId>> {
        let raw =
            self.db.get_cf(cf(&self.db, CF_META), key).map_err(|e| StorageIOError::read(&e))?;
        match raw {
            None => Ok(None),
            Some(bytes) => {
                postcard::from_bytes(&bytes).map(Some).map_err(|e| StorageIOError::read(&e).into())
            }
        }
    }

    fn put_meta_synced<T: serde::Serialize>(&self, key: &[u8], value: &T) -> std::io::Result<()> {
        let bytes = postcard::to_stdvec(value).map_err(std::io::Error::other)?;
        self.db
            .put_cf_opt(cf(&self.db, CF_META), key, bytes, &synced())
            .map_err(std::io::Error::other)
    }

    fn last_entry_log_id(&self) -> Result<Option<LogId<NodeId>>, StorageError<NodeId>> {
        let mut it = self.db.iterator_cf(cf(&self.db, CF_LOG), IteratorMode::End);
        match it.next() {
            None => Ok(None),
            Some(Err(e)) => Err(StorageIOError::read_logs(&e).into()),
            Some(Ok((_, value))) => {
                let entry: Entry<TypeConfig> =
                    postcard::from_bytes(&value).map_err(|e| StorageIOError::read_logs(&e))?;
                Ok(Some(entry.log_id))
            }
        }
    }

    /// Writes entries in one synced batch; returns once they are durable. `append` is this
    /// plus openraft's flush callback.
    pub async fn write_entries<I>(&self, entries: I) -> Result<(), StorageError<NodeId>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + Send,
        I::IntoIter: Send,
    {
        let mut batch = WriteBatch::default();
        let log_cf = cf(&self.db, CF_LOG);
        for entry in entries {
            let bytes = postcard::to_stdvec(&entry)
                .map_err(|e| StorageIOError::write_log_entry(entry.log_id, &e))?;
            batch.put_cf(log_cf, index_key(entry.log_id.index), bytes);
        }
        let db = self.db.clone();
        let started = std::time::Instant::now();
        let result = tokio::task::spawn_blocking(move || {
            match crate::failpoints::check(crate::failpoints::LOG_WRITE) {
                None => db.write_opt(batch, &synced()).map_err(std::io::Error::other),
                Some(crate::failpoints::Action::Abort) => {
                    // A crash between write and fsync: the batch reached the OS, not the disk's
                    // guarantee, and nobody was told it is durable.
                    let _ = db.write(batch);
                    std::process::abort()
                }
                Some(action) => Err(action.io_error(crate::failpoints::LOG_WRITE)),
            }
        })
        .await
        .map_err(|e| StorageIOError::write_logs(&e))?;
        if let Some(observe) = &self.fsync_observer {
            observe(started.elapsed().as_secs_f64());
        }
        result.map_err(|e| StorageIOError::write_logs(&e).into())
    }

    /// Number of entries currently stored (for tests and metrics).
    pub fn entry_count(&self) -> usize {
        self.db.iterator_cf(cf(&self.db, CF_LOG), IteratorMode::Start).count()
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>, StorageError<NodeId>> {
        let start = match range.start_bound() {
            Bound::Included(&i) => i,
            Bound::Excluded(&i) => i + 1,
            Bound::Unbounded => 0,
        };
        let end_inclusive = match range.end_bound() {
            Bound::Included(&i) => Some(i),
            Bound::Excluded(&0) => return Ok(Vec::new()),
            Bound::Excluded(&i) => Some(i - 1),
            Bound::Unbounded => None,
        };
        let mode = IteratorMode::From(&index_key(start), Direction::Forward);
        let mut out = Vec::new();
        for item in self.db.iterator_cf(cf(&self.db, CF_LOG), mode) {
            let (key, value) = item.map_err(|e| StorageIOError::read_logs(&e))?;
            let index = key_index(&key);
            if end_inclusive.is_some_and(|end| index > end) {
                break;
            }
            let entry: Entry<TypeConfig> =
                postcard::from_bytes(&value).map_err(|e| StorageIOError::read_logs(&e))?;
            debug_assert_eq!(entry.log_id.index, index, "log key and entry index disagree");
            out.push(entry);
        }
        Ok(out)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError<NodeId>> {
        let last_purged_log_id = self.get_meta::<LogId<NodeId>>(KEY_LAST_PURGED)?;
        let last_log_id = self.last_entry_log_id()?.or(last_purged_log_id);
        Ok(LogState { last_purged_log_id, last_log_id })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), StorageError<NodeId>> {
        let this = self.clone();
        let vote = *vote;
        tokio::task::spawn_blocking(move || this.put_meta_synced(KEY_VOTE, &vote))
            .await
            .map_err(|e| StorageIOError::write_vote(&e))?
            .map_err(|e| StorageIOError::write_vote(&e).into())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageError<NodeId>> {
        self.get_meta(KEY_VOTE)
    }

    async fn save_committed(
        &mut self,
        committed: Option<LogId<NodeId>>,
    ) -> Result<(), StorageError<NodeId>> {
        // Not synced: losing it only means re-applying from `last_applied` after a crash.
        if let Some(c) = committed {
            self.committed.fetch_max(c.index, Ordering::Relaxed);
        }
        let bytes = postcard::to_stdvec(&committed).map_err(|e| StorageIOError::write(&e))?;
        self.db
            .put_cf(cf(&self.db, CF_META), KEY_COMMITTED, bytes)
            .map_err(|e| StorageIOError::write(&e).into())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<NodeId>>, StorageError<NodeId>> {
        Ok(self.get_meta::<Option<LogId<NodeId>>>(KEY_COMMITTED)?.flatten())
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError<NodeId>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        match self.write_entries(entries).await {
            Ok(()) => {
                callback.log_io_completed(Ok(()));
                Ok(())
            }
            Err(e) => {
                callback.log_io_completed(Err(std::io::Error::other(e.to_string())));
                Err(e)
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        // Delete [log_id.index, +inf). Synced: a truncated suffix must not reappear after a
        // crash next to entries appended later.
        let mut batch = WriteBatch::default();
        batch.delete_range_cf(cf(&self.db, CF_LOG), index_key(log_id.index), index_key(u64::MAX));
        batch.delete_cf(cf(&self.db, CF_LOG), index_key(u64::MAX));
        self.db.write_opt(batch, &synced()).map_err(|e| StorageIOError::write_logs(&e).into())
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        // 1. last_purged durable first (P3), 2. then delete [0, log_id.index].
        self.put_meta_synced(KEY_LAST_PURGED, &log_id)
            .map_err(|e| StorageIOError::write_logs(&e))?;
        let log_cf = cf(&self.db, CF_LOG);
        self.db
            .delete_range_cf(log_cf, index_key(0), index_key(log_id.index + 1))
            .map_err(|e| StorageIOError::write_logs(&e))?;
        Ok(())
    }
}
