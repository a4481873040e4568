//! What a run records: operator operations with invoke and completion times and outcomes,
//! cluster status samples, deploy progress samples, and the hooks' journal lines.
//!
//! Times are microseconds since the run's start (`t_us`), on the harness's monotonic clock,
//! except journal lines, which hooks stamp with the wall clock (`date +%s%N`) and
//! [`parse_journal`] shifts by the run's wall-clock start.

use serde::{Deserialize, Serialize};

/// How an operation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// Acknowledged: it took effect (a write) or returned this value (a read).
    Ok,
    /// Refused: it certainly did not take effect.
    Failed,
    /// No answer, or an answer saying the outcome is unknown: it may take effect at any time
    /// after it was invoked, or never.
    Unknown,
}

/// What an operation did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum OpKind {
    /// Set register `key` to `value` (a stage's `description`).
    Write { key: String, value: String },
    /// Read register `key`; `value` is what an acknowledged read returned.
    Read { key: String, value: Option<String> },
    /// Publish a build; `id` is what the cluster acknowledged.
    CreateBuild { id: Option<String> },
    /// Start a deploy of `build`; `id` is what the cluster acknowledged.
    CreateDeploy { build: String, id: Option<String> },
    /// Roll the deploy stage back to deploy `to` (`actionType=ROLLBACK`); `id` is the new
    /// deploy the cluster acknowledged.
    Rollback { to: String, id: Option<String> },
    /// Promote deploy `from` (of the staging stage) to the deploy stage
    /// (`actionType=PROMOTE`); `id` is the new deploy.
    Promote { from: String, id: Option<String> },
    /// Pause (`paused`) or resume the deploy stage's deploy (`actionType=PAUSE|RESUME`).
    StageState { paused: bool },
    /// A host action on one host of the deploy stage: `PAUSED_BY_USER`, `NORMAL` or `RESET`.
    HostAction { host: String, action: String },
    /// Set a stage setting (`key` is `env/stage:field`), a register written by one client and
    /// read after the full restart.
    Config { key: String, value: String },
    /// Set the deploy stage's parallelism limit (`maxParallel`).
    SetMaxParallel { value: u32 },
}

impl OpKind {
    /// The kind's name in counts and reports.
    pub fn name(&self) -> String {
        match self {
            OpKind::Write { .. } => "write".into(),
            OpKind::Read { .. } => "read".into(),
            OpKind::CreateBuild { .. } => "create-build".into(),
            OpKind::CreateDeploy { .. } => "create-deploy".into(),
            OpKind::Rollback { .. } => "rollback".into(),
            OpKind::Promote { .. } => "promote".into(),
            OpKind::StageState { paused: true } => "pause-stage".into(),
            OpKind::StageState { paused: false } => "resume-stage".into(),
            OpKind::HostAction { action, .. } => format!("host-{}", action.to_lowercase()),
            OpKind::Config { .. } => "config".into(),
            OpKind::SetMaxParallel { .. } => "max-parallel".into(),
        }
    }

    /// The deploy this operation created, if the cluster acknowledged one.
    pub fn created_deploy(&self) -> Option<&str> {
        match self {
            OpKind::CreateDeploy { id, .. }
            | OpKind::Rollback { id, .. }
            | OpKind::Promote { id, .. } => id.as_deref(),
            _ => None,
        }
    }

    /// A register write: its key and value (stage descriptions and stage settings).
    pub fn register_write(&self) -> Option<(&str, &str)> {
        match self {
            OpKind::Write { key, value } | OpKind::Config { key, value } => Some((key, value)),
            _ => None,
        }
    }
}

/// One operator operation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Op {
    /// The client that issued it (operations of one client never overlap).
    pub process: u32,
    /// The node it was sent to.
    pub node: u64,
    pub kind: OpKind,
    pub invoke_us: u64,
    pub complete_us: u64,
    pub outcome: Outcome,
    /// The error, when not `Ok`.
    pub error: Option<String>,
}

/// One `GET /v1/cluster` answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusSample {
    pub t_us: u64,
    pub node: u64,
    pub term: u64,
    /// The node's own Raft role (`Leader`, `Follower`, …).
    pub state: String,
    pub leader: Option<u64>,
    pub applied_index: u64,
}

/// Where one host is, from the stage's progress view.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostRow {
    pub host: String,
    pub deploy: Option<String>,
    /// The deploy step (`PRE_DOWNLOAD` … `SERVING_BUILD`).
    pub step: String,
    /// Agent state (`NORMAL`, `PAUSED_BY_SYSTEM`, `UNREACHABLE`, …).
    pub state: String,
    /// Step status (`SUCCEEDED`, `UNKNOWN`, `TOO_MANY_RETRY`, …).
    pub status: String,
}

impl HostRow {
    /// At `deploy`'s goal: serving its build.
    pub fn serving(&self, deploy: &str) -> bool {
        self.deploy.as_deref() == Some(deploy)
            && self.step == "SERVING_BUILD"
            && self.status == "SUCCEEDED"
    }

    /// Stopped on `deploy` with a failure the coordinator reports.
    pub fn failed(&self, deploy: &str) -> bool {
        self.deploy.as_deref() == Some(deploy) && self.state == "PAUSED_BY_SYSTEM"
    }
}

/// The stage's hosts at one moment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProgressSample {
    pub t_us: u64,
    pub rows: Vec<HostRow>,
}

/// Whether a journal line marks a hook's start or end.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Edge {
    Start,
    End,
}

/// One journal line: `STEP start|end DEPLOY_ID EPOCH_NS`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JournalEntry {
    pub host: String,
    pub step: String,
    pub edge: Edge,
    pub deploy: String,
    pub t_us: u64,
}

/// The shell line a hook runs to journal `edge` of itself (appending to `$JOURNAL`).
pub fn journal_line(step: &str, edge: Edge) -> String {
    let e = match edge {
        Edge::Start => "start",
        Edge::End => "end",
    };
    format!("echo \"{step} {e} $DEPLOY_ID $(date +%s%N)\" >> \"$JOURNAL\"")
}

/// Parses a host's journal; `start_epoch_ns` is the run's start on the wall clock. Lines that
/// do not parse (a hook killed mid-write) are skipped; lines from before the run are clamped
/// to 0.
pub fn parse_journal(host: &str, text: &str, start_epoch_ns: u128) -> Vec<JournalEntry> {
    text.lines()
        .filter_map(|line| {
            let mut f = line.split_whitespace();
            let step = f.next()?.to_string();
            let edge = match f.next()? {
                "start" => Edge::Start,
                "end" => Edge::End,
                _ => return None,
            };
            let deploy = f.next()?.to_string();
            let ns: u128 = f.next()?.parse().ok()?;
            if f.next().is_some() {
                return None;
            }
            let t_us = (ns.saturating_sub(start_epoch_ns) / 1000) as u64;
            Some(JournalEntry { host: host.to_string(), step, edge, deploy, t_us })
        })
        .collect()
}
