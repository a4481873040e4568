//! Raft command payloads: what a coordinator leader proposes and what `apply` answers.
//!
//! Encoded with postcard inside Raft log entries, so the rules of a persisted format hold:
//! variants are only ever appended (postcard encodes the variant index), never reordered or
//! removed; a field change means a new variant. `Proposal::version` names the layout.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::auth::{ResourceType, Role, TokenRecord};
use crate::beans::{
    BuildBean, DeployBean, DeployConstraintBean, EnvWebHookBean, EnvironBean, PromoteBean,
    ScheduleBean, TagBean,
};
use crate::enums::{AcceptanceStatus, AgentState, WebhookPhase};
use crate::ids::{BuildId, DeployId, EnvId, HostId, TagId};
use crate::ping::{PingRequestBean, PingResponseBean};

/// Layout version of [`Proposal`]; bumped when a variant's fields change meaning.
pub const PROPOSAL_VERSION: u16 = 1;

/// Upper bound on operations the leader packs into one proposal (one Raft entry, one fsync).
pub const MAX_OPS_PER_PROPOSAL: usize = 1024;

/// One Raft entry's payload: a batch of operations stamped with the leader's clock.
///
/// `apply` must be deterministic: it reads time only from `now_ms` and ids only from the
/// operations, which the leader generated before proposing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Proposal {
    pub version: u16,
    /// Leader wall clock, milliseconds since the Unix epoch.
    pub now_ms: i64,
    pub ops: Vec<Op>,
}

/// A state change. Append-only enum (see the module docs).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Op {
    /// Does nothing; used to probe the write path and by benchmarks.
    Noop,
    /// Create a stage. The bean carries the leader-generated id and normalized defaults.
    CreateEnv { env: EnvironBean },
    /// Update a stage: fields of `patch` that are `None` stay unchanged (Teletraan's PUT).
    UpdateEnv { env_name: String, stage_name: String, patch: EnvironBean, operator: String },
    /// Delete a stage (refused while it has capacity or agents, or a current deploy).
    DeleteEnv { env_name: String, stage_name: String },
    /// Publish a build. The bean carries the leader-generated id and defaults.
    PublishBuild { build: BuildBean },
    /// Delete a build that no deploy references.
    DeleteBuild { build_id: String },
    /// Replace a stage's capacity: host names and group names.
    SetCapacity { env_id: EnvId, hosts: Vec<String>, groups: Vec<String> },
    /// Start a deploy if the stage's current deploy is still `expected` (compare-and-set).
    CreateDeploy { env_id: EnvId, deploy: DeployBean, expected: Option<DeployId> },
    /// An agent's ping; `apply` re-runs the decision so admission is atomic.
    Ping { request: PingRequestBean },
    /// Set the state of some hosts' rows on a stage (pause, reset, resume).
    HostAction { env_id: EnvId, hosts: Vec<HostId>, state: AgentState },
    /// Re-evaluate deploy states at `now_ms` (the stuck timer).
    Tick,
    /// Leases the leader saw expire: these rows give their parallelism slot back.
    ExpireLeases { keys: Vec<(EnvId, HostId)> },
    /// Replace a stage's script variables or agent configs (Teletraan's `script_configs`,
    /// `agent_configs`).
    SetEnvConfig {
        env_id: EnvId,
        kind: EnvConfigKind,
        values: BTreeMap<String, String>,
        operator: String,
    },
    /// Update a deploy's acceptance status and/or description (the only fields that may change).
    UpdateDeploy {
        deploy_id: DeployId,
        acceptance_status: Option<AcceptanceStatus>,
        description: Option<String>,
    },
    /// Update a stage's promote config (`PUT .../promotes`): fields of `patch` that are `None`
    /// stay unchanged (a stage without one starts from the defaults). `apply` validates the
    /// result (the predecessor stage exists and forms no cycle).
    UpdatePromote { env_id: EnvId, patch: PromoteBean, operator: String },
    /// The auto-promoter's fail policy for the stage's failed current deploy `failed`: start
    /// `rollback` (ROLLBACK policy, if there is a deploy to go back to), then turn auto-promotion
    /// off. Refused if the current deploy is no longer `failed`.
    PromoteFailed { env_id: EnvId, failed: DeployId, rollback: Option<DeployBean> },
    /// Tag a build (or a stage, or the system). The bean carries the leader-generated id; for
    /// BUILD tags `target_id` is the build id, rewritten by `apply` to the build's name with
    /// the build's JSON in `meta_info` (Teletraan's `BuildTagHandler`).
    CreateTag { tag: TagBean },
    /// Delete a tag.
    DeleteTag { tag_id: TagId },
    /// Retention (deploy janitor): delete these deploys. `apply` skips any that became a
    /// stage's current deploy, or that a current deploy or an agent row still references.
    PurgeDeploys { ids: Vec<DeployId> },
    /// Retention (build janitor): delete these builds, skipping any that a deploy references.
    PurgeBuilds { ids: Vec<BuildId> },
    /// Liveness from the leader's memory, in one coalesced batch: when each host (by name) was
    /// last heard from; and hosts silent past the stale threshold, whose rows that hold no
    /// parallelism slot become UNREACHABLE (slot holders lose their slot only through
    /// [`Op::ExpireLeases`], at the lease TTL).
    RecordLiveness { seen: Vec<(String, i64)>, unreachable: Vec<String> },
    /// Store a token (its hash only; the leader generated the token). A script token is refused
    /// if its resource already has a token of that script name.
    CreateToken { token: TokenRecord },
    /// Delete the token with this hash.
    DeleteToken { hash: String },
    /// Change a script token's role.
    SetTokenRole { hash: String, role: Role },
    /// Bind `user` to `role` on a resource (replacing an earlier binding there).
    SetUserRole { resource_type: ResourceType, resource_id: String, user: String, role: Role },
    /// Remove a user's binding on a resource.
    DeleteUserRole { resource_type: ResourceType, resource_id: String, user: String },
    /// [`Op::CreateEnv`] by a user: if this is the env's first stage, `creator` becomes the
    /// env's ADMIN in the same apply (Teletraan's first-creator rule).
    CreateEnvOwned { env: EnvironBean, creator: String },
    /// Stop the service on these hosts (Teletraan's "terminate hosts"): every agent row of
    /// each host, on every stage, turns STOP; pings then drive STOPPING → STOPPED. Each host
    /// must have a row on `env_id` (the stage the operator names).
    StopHosts { env_id: EnvId, hosts: Vec<HostId> },
    // ----- schedules (waves) and deploy constraints -----
    /// Create, replace (`Some`, keeping the state and session of an existing schedule) or
    /// delete (`None`) a stage's schedule. A new schedule carries the leader-generated id.
    SetSchedule { env_id: EnvId, schedule: Option<ScheduleBean> },
    /// Manual override of the schedule's session `session` (it must be the current one): the
    /// next session starts at once (or FINAL after the last).
    OverrideSchedule { env_id: EnvId, session: i32 },
    /// Create, replace (`Some`) or delete (`None`) a stage's deploy constraint. A new
    /// constraint carries the leader-generated id.
    SetConstraint { env_id: EnvId, constraint: Option<DeployConstraintBean> },
    // ----- webhooks -----
    /// Replace a stage's webhooks (`PUT .../web_hooks`).
    SetWebHooks { env_id: EnvId, hooks: EnvWebHookBean, operator: String },
    /// The leader's final word on one delivery: it succeeded or failed after `attempts`.
    /// Ignored (not an error) when the delivery is no longer pending or no longer exists.
    RecordWebhookOutcome {
        deploy_id: DeployId,
        phase: WebhookPhase,
        index: u32,
        succeeded: bool,
        attempts: u32,
        detail: String,
    },
}

/// Which per-stage map [`Op::SetEnvConfig`] replaces. Append-only.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum EnvConfigKind {
    /// Environment variables for the hook scripts, sent at PRE_DOWNLOAD.
    Script,
    /// Agent settings, sent with every goal (stage-prefixed keys are scoped).
    Agent,
}

impl Op {
    /// Short name for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Op::Noop => "noop",
            Op::CreateEnv { .. } => "create_env",
            Op::UpdateEnv { .. } => "update_env",
            Op::DeleteEnv { .. } => "delete_env",
            Op::PublishBuild { .. } => "publish_build",
            Op::DeleteBuild { .. } => "delete_build",
            Op::SetCapacity { .. } => "set_capacity",
            Op::CreateDeploy { .. } => "create_deploy",
            Op::Ping { .. } => "ping",
            Op::HostAction { .. } => "host_action",
            Op::Tick => "tick",
            Op::ExpireLeases { .. } => "expire_leases",
            Op::SetEnvConfig { .. } => "set_env_config",
            Op::UpdateDeploy { .. } => "update_deploy",
            Op::UpdatePromote { .. } => "update_promote",
            Op::PromoteFailed { .. } => "promote_failed",
            Op::CreateTag { .. } => "create_tag",
            Op::DeleteTag { .. } => "delete_tag",
            Op::PurgeDeploys { .. } => "purge_deploys",
            Op::PurgeBuilds { .. } => "purge_builds",
            Op::RecordLiveness { .. } => "record_liveness",
            Op::CreateToken { .. } => "create_token",
            Op::DeleteToken { .. } => "delete_token",
            Op::SetTokenRole { .. } => "set_token_role",
            Op::SetUserRole { .. } => "set_user_role",
            Op::DeleteUserRole { .. } => "delete_user_role",
            Op::CreateEnvOwned { .. } => "create_env_owned",
            Op::StopHosts { .. } => "stop_hosts",
            Op::SetSchedule { .. } => "set_schedule",
            Op::OverrideSchedule { .. } => "override_schedule",
            Op::SetConstraint { .. } => "set_constraint",
            Op::SetWebHooks { .. } => "set_web_hooks",
            Op::RecordWebhookOutcome { .. } => "record_webhook_outcome",
        }
    }
}

/// What `apply` returns for one Raft entry: one result per operation, in order.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ProposalResponse {
    pub results: Vec<OpResult>,
}

/// The outcome of one operation.
pub type OpResult = Result<OpOutput, OpError>;

/// What a successful operation produced.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum OpOutput {
    Done,
    Env(EnvironBean),
    Build(BuildBean),
    Deploy(DeployBean),
    Ping(PingResponseBean),
    Promote(PromoteBean),
    Tag(TagBean),
    /// How many records a retention operation deleted.
    Purged(u32),
    Schedule(ScheduleBean),
    Constraint(DeployConstraintBean),
    WebHooks(EnvWebHookBean),
}

/// Why an operation was refused. Refusals change nothing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum OpError {
    #[error("{what} not found")]
    NotFound { what: String },
    #[error("conflict: {reason}")]
    Conflict { reason: String },
    #[error("invalid: {reason}")]
    Invalid { reason: String },
}
