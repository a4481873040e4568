//! The replicated state machine on RocksDB (openraft `RaftStateMachine`, storage-v2).
//!
//! Every `apply` writes the changed records, `last_applied` and the membership in one
//! `WriteBatch`, so a restarted node resumes from where it stopped instead of replaying the
//! whole log (raft-anchors P7). The batch is not fsynced on its own: the log entries it comes
//! from are, and RocksDB's single WAL orders this batch before any later synced log write, so a
//! crash can only roll `last_applied` back to a point the log still covers.

use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{
    EntryPayload, LogId, OptionalSend, RaftSnapshotBuilder, SnapshotMeta, StorageError,
    StorageIOError, StoredMembership,
};
use proto::command::{OpResult, ProposalResponse};
use rocksdb::{DB, IteratorMode, WriteBatch};

use super::snapshot::{self, SnapshotFile};
use super::{CF_SM_DATA, CF_SM_META, cf};
use crate::raft::{NodeId, NodeInfo, TypeConfig};
use crate::state::State;

pub(crate) const KEY_LAST_APPLIED: &[u8] = b"last_applied";
pub(crate) const KEY_MEMBERSHIP: &[u8] = b"membership";

/// The applied state that readers (the HTTP API) see. Guarded by one lock so that a reader sees
/// the data and `last_applied` of the same apply.
pub struct Applied {
    pub state: State,
    pub last_applied: Option<LogId<NodeId>>,
    pub membership: StoredMembership<NodeId, NodeInfo>,
}

/// Shared read handle on the applied state.
pub type AppliedHandle = Arc<RwLock<Applied>>;

pub struct StateMachineStore {
    db: Arc<DB>,
    applied: AppliedHandle,
    snapshot_dir: PathBuf,
    feed: Arc<crate::feed::ChangeFeed>,
    apply_observer: Option<ApplyObserver>,
}

/// Told what each apply changed and how long it took, in seconds, from the first entry to
/// the state's write batch (see [`StateMachineStore::with_apply_observer`]).
pub type ApplyObserver = Arc<dyn Fn(&crate::feed::Changes, f64) + Send + Sync>;

impl StateMachineStore {
    pub(crate) async fn load(db: Arc<DB>, snapshot_dir: PathBuf) -> Result<Self, String> {
        let (db2, dir) = (db.clone(), snapshot_dir.clone());
        let applied = tokio::task::spawn_blocking(move || {
            let finished = snapshot::finish_interrupted_install(&db2, &dir)
                .map_err(|e| format!("finishing an interrupted snapshot install: {e}"))?;
            if let Some(last) = finished {
                tracing::warn!(%last, "installed a received snapshot a crash had interrupted");
            }
            load_applied(&db2)
        })
        .await
        .map_err(|e| e.to_string())??;
        snapshot::remove_partial_files(&snapshot_dir);
        Ok(Self {
            db,
            applied: Arc::new(RwLock::new(applied)),
            snapshot_dir,
            feed: Arc::new(crate::feed::ChangeFeed::default()),
            apply_observer: None,
        })
    }

    /// Calls `f` after every apply with what it changed and how long it took (metrics count
    /// admissions and time applies there).
    pub fn with_apply_observer(mut self, f: ApplyObserver) -> Self {
        self.apply_observer = Some(f);
        self
    }

    /// The feed that announces, after each apply, which stages changed (for long-polls).
    pub fn change_feed(&self) -> Arc<crate::feed::ChangeFeed> {
        self.feed.clone()
    }

    /// A handle readers use to see the applied state.
    pub fn applied(&self) -> AppliedHandle {
        self.applied.clone()
    }
}

fn read_meta<T: serde::de::DeserializeOwned>(db: &DB, key: &[u8]) -> Result<Option<T>, String> {
    match db.get_cf(cf(db, CF_SM_META), key).map_err(|e| e.to_string())? {
        None => Ok(None),
        Some(bytes) => postcard::from_bytes(&bytes)
            .map(Some)
            .map_err(|e| format!("sm_meta/{}: {e}", String::from_utf8_lossy(key))),
    }
}

fn load_applied(db: &DB) -> Result<Applied, String> {
    let last_applied = read_meta::<LogId<NodeId>>(db, KEY_LAST_APPLIED)?;
    let membership =
        read_meta::<StoredMembership<NodeId, NodeInfo>>(db, KEY_MEMBERSHIP)?.unwrap_or_default();
    let mut state = State::default();
    for item in db.iterator_cf(cf(db, CF_SM_DATA), IteratorMode::Start) {
        let (key, value) = item.map_err(|e| e.to_string())?;
        state.load_record(&key, &value)?;
    }
    state.finish_load();
    Ok(Applied { state, last_applied, membership })
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<NodeId>>, StoredMembership<NodeId, NodeInfo>), StorageError<NodeId>>
    {
        let applied = self.applied.read().expect("applied lock poisoned");
        Ok((applied.last_applied, applied.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<ProposalResponse>, StorageError<NodeId>>
    where
        I: IntoIterator<Item = openraft::Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let started = std::time::Instant::now();
        let mut responses = Vec::new();
        let mut batch = WriteBatch::default();
        let changes;
        {
            let mut applied = self.applied.write().expect("applied lock poisoned");
            let mut last = None;
            for entry in entries {
                last = Some(entry.log_id);
                let response = match entry.payload {
                    EntryPayload::Blank => ProposalResponse::default(),
                    EntryPayload::Normal(proposal) => {
                        let now_ms = proposal.now_ms;
                        let results: Vec<OpResult> = proposal
                            .ops
                            .into_iter()
                            .map(|op| applied.state.apply(now_ms, op))
                            .collect();
                        ProposalResponse { results }
                    }
                    EntryPayload::Membership(m) => {
                        applied.membership = StoredMembership::new(Some(entry.log_id), m);
                        let bytes = postcard::to_stdvec(&applied.membership)
                            .map_err(|e| StorageIOError::apply(entry.log_id, &e))?;
                        batch.put_cf(cf(&self.db, CF_SM_META), KEY_MEMBERSHIP, bytes);
                        ProposalResponse::default()
                    }
                };
                responses.push(response);
            }
            let Some(last) = last else { return Ok(responses) };
            applied.last_applied = Some(last);
            let data_cf = cf(&self.db, CF_SM_DATA);
            for (key, value) in applied.state.take_dirty() {
                match value {
                    Some(v) => batch.put_cf(data_cf, key, v),
                    None => batch.delete_cf(data_cf, key),
                }
            }
            let bytes = postcard::to_stdvec(&last).map_err(|e| StorageIOError::apply(last, &e))?;
            batch.put_cf(cf(&self.db, CF_SM_META), KEY_LAST_APPLIED, bytes);
            // Written under the lock so that readers never see memory ahead of disk ordering
            // across two applies; the write itself is a memtable insert (no fsync).
            self.db.write(batch).map_err(|e| StorageIOError::apply(last, &e))?;
            changes = applied.state.take_changes();
        }
        if let Some(observe) = &self.apply_observer {
            observe(&changes, started.elapsed().as_secs_f64());
        }
        self.feed.notify(changes);
        Ok(responses)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        SnapshotBuilder { db: self.db.clone(), snapshot_dir: self.snapshot_dir.clone() }
    }

    async fn begin_receiving_snapshot(
        &mut self,
    ) -> Result<Box<tokio::fs::File>, StorageError<NodeId>> {
        let file = snapshot::create_receiving(&self.snapshot_dir)
            .await
            .map_err(|e| StorageIOError::write_snapshot(None, &e))?;
        Ok(Box::new(file))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, NodeInfo>,
        snapshot: Box<tokio::fs::File>,
    ) -> Result<(), StorageError<NodeId>> {
        let signature = Some(meta.signature());
        let snap = SnapshotFile::finish_receiving(&self.snapshot_dir, *snapshot, meta)
            .await
            .map_err(|e| StorageIOError::write_snapshot(signature.clone(), &e))?;
        let db = self.db.clone();
        let dir = self.snapshot_dir.clone();
        // The state first, then the file becomes current: a crash in between leaves the new
        // state with the old snapshot (openraft rebuilds one if the log was purged), never a
        // current snapshot ahead of the applied state, which openraft refuses to start with.
        let fresh = tokio::task::spawn_blocking(move || {
            snapshot::install_into(&db, &snap.path)?;
            snap.make_current(&dir)?;
            load_applied(&db).map_err(std::io::Error::other)
        })
        .await
        .map_err(|e| StorageIOError::write_snapshot(signature.clone(), &e))?
        .map_err(|e| StorageIOError::write_snapshot(signature.clone(), &e))?;
        debug_assert_eq!(fresh.last_applied, meta.last_log_id);
        *self.applied.write().expect("applied lock poisoned") = fresh;
        // Anything may have changed: wake every held ping to re-plan.
        self.feed.notify(crate::feed::Changes { everyone: true, ..Default::default() });
        Ok(())
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<Snapshot<TypeConfig>>, StorageError<NodeId>> {
        snapshot::open_current(&self.snapshot_dir)
            .await
            .map_err(|e| StorageIOError::read_snapshot(None, &e).into())
    }
}

/// Builds a snapshot from a RocksDB point-in-time view, streaming records to a file.
pub struct SnapshotBuilder {
    db: Arc<DB>,
    snapshot_dir: PathBuf,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError<NodeId>> {
        let db = self.db.clone();
        let dir = self.snapshot_dir.clone();
        tokio::task::spawn_blocking(move || snapshot::build(&db, &dir))
            .await
            .map_err(|e| StorageIOError::write_snapshot(None, &e))?
            .map_err(|e| StorageIOError::write_snapshot(None, &e))?;
        snapshot::open_current(&self.snapshot_dir)
            .await
            .map_err(|e| StorageIOError::read_snapshot(None, &e))?
            .ok_or_else(|| {
                StorageIOError::read_snapshot(None, &std::io::Error::other("snapshot vanished"))
                    .into()
            })
    }
}
