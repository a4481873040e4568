//! RocksDB persistence for one coordinator node: the Raft log, the vote, and the replicated
//! state machine, all in one database so that a single synced write orders them.
//!
//! Column families:
//! - `log`: Raft entries keyed by big-endian index (postcard-encoded `Entry`).
//! - `meta`: the vote, the last purged log id, the committed log id.
//! - `sm_meta`: `last_applied` and the last membership, written in the same `WriteBatch` as the
//!   state-machine records they describe.
//! - `sm_data`: the state machine's records (see [`crate::state`]).

pub mod log;
pub mod sm;
pub mod snapshot;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rocksdb::{ColumnFamilyDescriptor, DB, Options};

pub use self::log::LogStore;
pub use self::sm::StateMachineStore;

pub(crate) const CF_LOG: &str = "log";
pub(crate) const CF_META: &str = "meta";
pub(crate) const CF_SM_META: &str = "sm_meta";
pub(crate) const CF_SM_DATA: &str = "sm_data";

/// Typed error for opening a node's store.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("cannot create data directory {path}: {source}")]
    CreateDir { path: PathBuf, source: std::io::Error },
    #[error("cannot open RocksDB at {path}: {source}")]
    Rocks { path: PathBuf, source: rocksdb::Error },
    #[error("cannot load the state machine from {path}: {reason}")]
    Load { path: PathBuf, reason: String },
}

/// Opens (creating if needed) the node's RocksDB under `dir/raft.db` and returns the log store
/// and the state machine store that share it.
pub async fn open(dir: &Path) -> Result<(LogStore, StateMachineStore), OpenError> {
    std::fs::create_dir_all(dir)
        .map_err(|source| OpenError::CreateDir { path: dir.to_path_buf(), source })?;
    let db_path = dir.join("raft.db");
    let mut opts = Options::default();
    opts.create_if_missing(true);
    opts.create_missing_column_families(true);
    // Raft entries are written once and deleted in ranges; keep background work small on a
    // 2-core machine.
    opts.set_max_background_jobs(2);
    opts.set_keep_log_file_num(4);
    let cfs = [CF_LOG, CF_META, CF_SM_META, CF_SM_DATA]
        .into_iter()
        .map(|name| ColumnFamilyDescriptor::new(name, Options::default()));
    let db = DB::open_cf_descriptors(&opts, &db_path, cfs)
        .map_err(|source| OpenError::Rocks { path: db_path.clone(), source })?;
    let db = Arc::new(db);
    let snapshot_dir = dir.join("snapshots");
    std::fs::create_dir_all(&snapshot_dir)
        .map_err(|source| OpenError::CreateDir { path: snapshot_dir.clone(), source })?;
    let log = LogStore::new(db.clone());
    let sm = StateMachineStore::load(db, snapshot_dir)
        .await
        .map_err(|reason| OpenError::Load { path: db_path, reason })?;
    Ok((log, sm))
}

pub(crate) fn cf<'a>(db: &'a DB, name: &str) -> &'a rocksdb::ColumnFamily {
    // The column families are created at open; a missing one is a bug, not an input error.
    db.cf_handle(name).unwrap_or_else(|| panic!("column family {name} missing"))
}
