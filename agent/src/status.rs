//! The agent's local state: `env_status`, in Teletraan's JSON shape (so an operator's tools and
//! an old agent can read it) plus what Teletraan forgot to persist (script variables, first
//! deploy, the build's hash). Written atomically: temp file, fsync, rename, fsync of the dir.
//!
//! Also the single-instance lock.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use proto::beans::BuildBean;
use proto::enums::{AgentStatus, DeployStage, EnvType, OpCode};
use proto::ids::{DeployId, EnvId};
use proto::ping::PingReportBean;
use serde::{Deserialize, Serialize};

/// The status file's name inside the agent directory.
pub const ENV_STATUS_FILE: &str = "env_status";
/// The single-instance lock's name inside the agent directory.
pub const LOCK_FILE: &str = ".deploy-agent.lock";

/// What the agent knows about the build of an env's current deploy (`build_info`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct BuildInfo {
    pub build_id: Option<String>,
    pub build_name: Option<String>,
    pub build_commit: Option<String>,
    pub build_branch: Option<String>,
    pub build_repo: Option<String>,
    pub build_url: Option<String>,
    /// Ours: the BLAKE3 hash (hex) the artifact must have.
    pub build_blake3: Option<String>,
    /// Ours: the artifact's size in bytes.
    pub build_size: Option<u64>,
}

impl BuildInfo {
    pub fn from_bean(b: &BuildBean) -> Self {
        Self {
            build_id: b.id.as_ref().map(|id| id.as_str().to_string()),
            build_name: b.name.clone(),
            build_commit: b.commit.clone(),
            build_branch: b.branch.clone(),
            build_repo: b.repo.clone(),
            build_url: b.artifact_url.clone(),
            build_blake3: b.artifact_blake3.clone(),
            build_size: b.artifact_size,
        }
    }
}

/// The report part of an env's status (Teletraan's `DeployReport` + `PingReport` fields).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct EnvReport {
    pub deploy_id: Option<DeployId>,
    pub env_id: Option<EnvId>,
    pub env_name: Option<String>,
    pub stage_name: Option<String>,
    pub stage_type: Option<EnvType>,
    pub deploy_stage: Option<DeployStage>,
    pub status: Option<AgentStatus>,
    pub error_code: Option<i32>,
    pub error_message: Option<String>,
    pub fail_count: Option<i32>,
    pub deploy_alias: Option<DeployId>,
    pub container_health_status: Option<String>,
    pub extra_info: Option<BTreeMap<String, String>>,
    pub state: Option<String>,
    pub redeploy: Option<i32>,
    pub wait: Option<i32>,
}

impl EnvReport {
    /// The wire report for this env.
    pub fn to_ping_report(&self) -> PingReportBean {
        PingReportBean {
            deploy_id: self.deploy_id.clone(),
            env_id: self.env_id.clone(),
            deploy_stage: self.deploy_stage,
            agent_status: self.status,
            error_code: self.error_code,
            error_message: self.error_message.clone(),
            fail_count: self.fail_count,
            extra_info: self.extra_info.clone(),
            deploy_alias: self.deploy_alias.clone(),
            container_health_status: self.container_health_status.clone(),
            agent_state: self.state.clone(),
        }
    }
}

/// One env's entry in `env_status`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct EnvStatus {
    pub report: EnvReport,
    pub build_info: Option<BuildInfo>,
    pub op_code: Option<OpCode>,
    /// The goal's agent configs, replaced on every goal (Teletraan kept stale ones: quirk 7).
    pub runtime_config: BTreeMap<String, String>,
    /// Persisted, unlike Teletraan (quirk 6): hooks keep their variables across restarts.
    pub script_variables: BTreeMap<String, String>,
    /// Persisted, unlike Teletraan (quirk 6).
    pub first_deploy: bool,
    pub is_docker: bool,
}

/// Every env's status, keyed by env name (sorted, as Teletraan writes it).
pub type EnvStatuses = BTreeMap<String, EnvStatus>;

#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    #[error("cannot write {path}: {source} (is the disk full or read-only?)")]
    Write { path: PathBuf, source: std::io::Error },
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("another deploy-agent already runs with {dir} (lock {lock} is held); stop it first")]
    Locked { dir: PathBuf, lock: PathBuf },
}

/// Loads `env_status` from `dir`. A missing file is an empty map; a corrupt one is set aside as
/// `env_status.corrupt` and read as empty (Teletraan does the same minus the backup): the
/// coordinator then restarts each deploy from PRE_DOWNLOAD, which is safe.
pub fn load(dir: &Path) -> Result<EnvStatuses, StatusError> {
    let path = dir.join(ENV_STATUS_FILE);
    match std::fs::read(&path) {
        Ok(bytes) => match serde_json::from_slice(&bytes) {
            Ok(map) => Ok(map),
            Err(e) => {
                let aside = dir.join(format!("{ENV_STATUS_FILE}.corrupt"));
                tracing::error!(
                    path = %path.display(), error = %e, aside = %aside.display(),
                    "env_status is corrupt; set aside, starting from empty (deploys restart from PRE_DOWNLOAD)"
                );
                let _ = std::fs::rename(&path, &aside);
                Ok(EnvStatuses::new())
            }
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(EnvStatuses::new()),
        Err(source) => Err(StatusError::Read { path, source }),
    }
}

/// Writes `env_status` atomically: a crash leaves either the old or the new file.
pub fn save(dir: &Path, statuses: &EnvStatuses) -> Result<(), StatusError> {
    let bytes = serde_json::to_vec_pretty(statuses).expect("env status serializes");
    write_atomically(&dir.join(ENV_STATUS_FILE), &bytes)
}

/// Writes `path` via a temp file beside it, fsync, rename, fsync of the directory.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), StatusError> {
    let werr = |source| StatusError::Write { path: path.to_path_buf(), source };
    let tmp = path.with_extension("tmp");
    let mut f = File::create(&tmp).map_err(werr)?;
    f.write_all(bytes).map_err(werr)?;
    f.sync_all().map_err(werr)?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(werr)?;
    if let Some(parent) = path.parent() {
        File::open(parent).and_then(|d| d.sync_all()).map_err(werr)?;
    }
    Ok(())
}

/// The single-instance lock: held for the life of the process (released by the kernel when it
/// dies, even by `kill -9`).
pub struct InstanceLock {
    _lock: nix::fcntl::Flock<File>,
}

impl InstanceLock {
    pub fn acquire(dir: &Path) -> Result<Self, StatusError> {
        let path = dir.join(LOCK_FILE);
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|source| StatusError::Write { path: path.clone(), source })?;
        match nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock) {
            Ok(lock) => Ok(Self { _lock: lock }),
            Err(_) => Err(StatusError::Locked { dir: dir.to_path_buf(), lock: path }),
        }
    }
}

/// The script variables file of an env (`<env>_SCRIPT_CONFIG`), the templates' input.
pub fn script_config_path(dir: &Path, env_name: &str) -> PathBuf {
    dir.join(format!("{env_name}_SCRIPT_CONFIG"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_in_teletraans_shape_and_survives_corruption() {
        let dir = tempfile::tempdir().unwrap();
        assert!(load(dir.path()).unwrap().is_empty(), "no file is empty");
        let mut map = EnvStatuses::new();
        let mut st = EnvStatus::default();
        st.report.deploy_id = Some(DeployId::new("D2"));
        st.report.deploy_stage = Some(DeployStage::PreRestart);
        st.report.status = Some(AgentStatus::Succeeded);
        st.op_code = Some(OpCode::Deploy);
        st.script_variables.insert("PORT".into(), "8080".into());
        st.first_deploy = true;
        map.insert("web".into(), st);
        save(dir.path(), &map).unwrap();
        let text = std::fs::read_to_string(dir.path().join(ENV_STATUS_FILE)).unwrap();
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["web"]["report"]["deployStage"], "PRE_RESTART");
        assert_eq!(v["web"]["report"]["status"], "SUCCEEDED");
        assert_eq!(v["web"]["op_code"], "DEPLOY");
        assert_eq!(v["web"]["script_variables"]["PORT"], "8080");
        assert_eq!(load(dir.path()).unwrap(), map);
        assert!(!dir.path().join("env_status.tmp").exists(), "no temp file lingers");

        std::fs::write(dir.path().join(ENV_STATUS_FILE), b"{not json").unwrap();
        assert!(load(dir.path()).unwrap().is_empty());
        assert!(dir.path().join("env_status.corrupt").exists(), "the corrupt file is kept aside");
    }

    #[test]
    fn a_second_instance_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let first = InstanceLock::acquire(dir.path()).unwrap();
        let err = InstanceLock::acquire(dir.path()).err().expect("second lock refused");
        assert!(err.to_string().contains("already runs"), "{err}");
        drop(first);
        InstanceLock::acquire(dir.path()).expect("free again after release");
    }
}
