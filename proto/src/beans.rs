//! Teletraan's beans: the JSON bodies of the `/v1` REST API and the rows of the data model.
//!
//! Field names on the wire are exactly Teletraan's `@JsonProperty` names (camelCase, with the
//! renames Teletraan makes, e.g. `stuckThreshold` for column `stuck_th`). Rust field names are
//! the snake_case of the JSON names, so a JSON key can be grepped back to its field.
//!
//! Nulls: Teletraan's beans hold boxed Java values and its Jackson mapper includes nulls, so
//! every field that is nullable in Teletraan is an `Option` that serializes as `null` when
//! unset, and every field accepts `null` or absence on input (`#[serde(default)]`). We never
//! skip fields when serializing: postcard (Raft log, agent protocol) is not self-describing and
//! needs every field present. Unknown JSON fields are ignored, as Teletraan's clients expect.
//!
//! Units: timestamps are [`EpochMillis`]; other units are named in each field's doc.
//!
//! Postcard encodes fields by position, so fields are never reordered or removed; new fields
//! go at the end and need a new command or message version wherever the bean is persisted.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::EpochMillis;
use crate::enums::{
    AcceptanceStatus, AcceptanceType, AgentState, AgentStatus, DeployConstraintType,
    DeployPriority, DeployStage, DeployState, DeployType, EnvState, EnvType, EnvironState,
    HostState, HotfixState, KnoxStatus, NormandieStatus, OverridePolicy, PromoteDisablePolicy,
    PromoteFailPolicy, PromoteType, ResourceType, ScheduleState, TagSyncState, TagTargetType,
    TagValue, TeletraanPrincipalRole, WebhookDeliveryState, WebhookPhase,
};
use crate::ids::{
    BuildId, ChangeId, ConstraintId, DataId, DeployId, EnvId, HostId, HotfixId, ScheduleId, TagId,
};
use crate::nulls::null_as_default;

/// `lastOperator` of changes made by the service itself.
pub const SYSTEM_OPERATOR: &str = "system";

/// Operator name of the auto-promoter; deploys it creates do not disable auto-promotion.
pub const AUTO_PROMOTER_OPERATOR: &str = "AutoPromoter";

/// A stage's configuration (`environs`; Teletraan's "env" usually means a stage).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct EnvironBean {
    /// The stage id (`env_id`).
    pub id: Option<EnvId>,
    /// Environment name, `^[A-Za-z0-9_\-]*$`.
    pub env_name: Option<String>,
    /// Stage name, `^[A-Za-z0-9_\-]*$`.
    pub stage_name: Option<String>,
    /// Deploy pause flag (PAUSE/RESUME actions).
    pub env_state: Option<EnvState>,
    pub description: Option<String>,
    /// A deployable build must have exactly this build name.
    pub build_name: Option<String>,
    /// Branch used by build auto-promotion.
    pub branch: Option<String>,
    /// Comma-separated chat channels.
    pub chatroom: Option<String>,
    /// The current deploy; `None` = never deployed.
    pub deploy_id: Option<DeployId>,
    /// Type of the current deploy (denormalized).
    pub deploy_type: Option<DeployType>,
    /// Max hosts deploying at once (absolute); 0 = not applicable.
    pub max_parallel: Option<i32>,
    pub priority: Option<DeployPriority>,
    /// If set (> 0), a sidecar/system stage; overrides `priority`.
    pub system_priority: Option<i32>,
    /// Seconds without success progress before the deploy becomes FAILING.
    pub stuck_threshold: Option<i32>,
    /// Basis points (0..=10000) of agents that must succeed.
    pub success_threshold: Option<i32>,
    /// Agent configs (a map in `datas`).
    pub advanced_config_id: Option<DataId>,
    /// Script configs (a map in `datas`).
    pub script_config_id: Option<DataId>,
    pub last_operator: Option<String>,
    pub last_update: Option<EpochMillis>,
    pub acceptance_type: Option<AcceptanceType>,
    /// Comma-separated emails notified on FAILING.
    pub email_recipients: Option<String>,
    pub notify_authors: Option<bool>,
    /// Comma-separated users notified on state changes.
    pub watch_recipients: Option<String>,
    pub group_mention_recipients: Option<String>,
    pub metrics_config_id: Option<DataId>,
    pub alarm_config_id: Option<DataId>,
    pub webhooks_config_id: Option<DataId>,
    /// Retention: deploys kept (> 0).
    pub max_deploy_num: Option<i32>,
    /// Retention: days kept (> 0).
    pub max_deploy_day: Option<i32>,
    pub is_docker: Option<bool>,
    /// Max hosts deploying at once as a percentage (0..=100) of existing hosts; 0 = not applicable.
    pub max_parallel_pct: Option<i32>,
    /// Stage enable/disable switch.
    pub state: Option<EnvironState>,
    /// The stage's own cluster: an implicit capacity group.
    pub cluster_name: Option<String>,
    /// Max parallel replacements; no service semantics.
    pub max_parallel_rp: Option<i32>,
    pub override_policy: Option<OverridePolicy>,
    pub schedule_id: Option<ScheduleId>,
    pub deploy_constraint_id: Option<ConstraintId>,
    /// External project UUID.
    pub external_id: Option<String>,
    pub allow_private_build: Option<bool>,
    pub ensure_trusted_build: Option<bool>,
    pub stage_type: Option<EnvType>,
    #[serde(rename = "isSOX")]
    pub is_sox: Option<bool>,
    /// 1..=100000; cluster manager only.
    pub termination_limit: Option<i32>,
    /// Column `external_project_name`.
    pub project_name: Option<String>,
    pub use_entitlements: Option<bool>,
}

/// Why a stage create or update request was refused (`normalizeEnvRequest` and the bean's
/// range annotations). The request changes nothing; the caller answers 400.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum InvalidEnviron {
    /// `successThreshold` is outside 0..=10000 (basis points; the UI sends percent × 100).
    #[error("successThreshold {0} is outside 0..=10000")]
    SuccessThreshold(i32),
    /// `maxDeployNum` is not positive.
    #[error("maxDeployNum {0} must be greater than 0")]
    MaxDeployNum(i32),
    /// `maxDeployDay` is not positive.
    #[error("maxDeployDay {0} must be greater than 0")]
    MaxDeployDay(i32),
    /// `maxParallelPct` is outside 0..=100.
    #[error("maxParallelPct {0} is outside 0..=100")]
    MaxParallelPct(i32),
}

/// Overwrites `field` with `patch` if `patch` is set; records whether the value changed.
fn overwrite<T: Clone + PartialEq>(field: &mut Option<T>, patch: &Option<T>, changed: &mut bool) {
    if let Some(value) = patch
        && field.as_ref() != Some(value)
    {
        *field = Some(value.clone());
        *changed = true;
    }
}

impl EnvironBean {
    /// Default `branch` of a new stage.
    pub const DEFAULT_BRANCH: &str = "master";
    /// Default `maxParallel` of a new stage (hosts).
    pub const DEFAULT_MAX_PARALLEL: i32 = 1;
    /// Default `stuckThreshold` of a new stage (seconds).
    pub const DEFAULT_STUCK_THRESHOLD_SECS: i32 = 600;
    /// Default `successThreshold` of a new stage (basis points).
    pub const DEFAULT_SUCCESS_THRESHOLD_BP: i32 = 10_000;
    /// Default `maxDeployNum` of a new stage (deploys).
    pub const DEFAULT_MAX_DEPLOY_NUM: i32 = 5000;
    /// Default `maxDeployDay` of a new stage (days).
    pub const DEFAULT_MAX_DEPLOY_DAY: i32 = 365;

    /// Applies a Teletraan update (`PUT /v1/envs/{e}/{s}`): every field set in `patch`
    /// overwrites this bean's, every `None` leaves it unchanged. The identity fields (`id`,
    /// `envName`, `stageName`) are never changed by an update. Returns whether any field
    /// changed, so an update that changes nothing need not be written.
    pub fn apply_update(&mut self, patch: &EnvironBean) -> bool {
        let mut changed = false;
        // The destructuring is exhaustive on purpose: a new field must be added here.
        macro_rules! overwrite_all {
            ($($field:ident),+ $(,)?) => {
                let EnvironBean { id: _, env_name: _, stage_name: _, $($field),+ } = patch;
                $(overwrite(&mut self.$field, $field, &mut changed);)+
            };
        }
        overwrite_all!(
            env_state,
            description,
            build_name,
            branch,
            chatroom,
            deploy_id,
            deploy_type,
            max_parallel,
            priority,
            system_priority,
            stuck_threshold,
            success_threshold,
            advanced_config_id,
            script_config_id,
            last_operator,
            last_update,
            acceptance_type,
            email_recipients,
            notify_authors,
            watch_recipients,
            group_mention_recipients,
            metrics_config_id,
            alarm_config_id,
            webhooks_config_id,
            max_deploy_num,
            max_deploy_day,
            is_docker,
            max_parallel_pct,
            state,
            cluster_name,
            max_parallel_rp,
            override_policy,
            schedule_id,
            deploy_constraint_id,
            external_id,
            allow_private_build,
            ensure_trusted_build,
            stage_type,
            is_sox,
            termination_limit,
            project_name,
            use_entitlements,
        );
        changed
    }

    /// The checks and rewrites Teletraan applies to every create or update request
    /// (`normalizeEnvRequest`, without the operator and time stamps): thresholds in range, and
    /// only one parallelism mode at a time — setting only `maxParallel` sets `maxParallelPct`
    /// to 0 and vice versa.
    pub fn normalize_request(&mut self) -> Result<(), InvalidEnviron> {
        if let Some(th) = self.success_threshold
            && !(0..=10_000).contains(&th)
        {
            return Err(InvalidEnviron::SuccessThreshold(th));
        }
        if let Some(n) = self.max_deploy_num
            && n <= 0
        {
            return Err(InvalidEnviron::MaxDeployNum(n));
        }
        if let Some(n) = self.max_deploy_day
            && n <= 0
        {
            return Err(InvalidEnviron::MaxDeployDay(n));
        }
        if let Some(pct) = self.max_parallel_pct
            && !(0..=100).contains(&pct)
        {
            return Err(InvalidEnviron::MaxParallelPct(pct));
        }
        match (self.max_parallel, self.max_parallel_pct) {
            (Some(_), None) => self.max_parallel_pct = Some(0),
            (None, Some(_)) => self.max_parallel = Some(0),
            _ => {}
        }
        Ok(())
    }

    /// Fills the defaults of a new stage (`updateEnvBeanDefault` plus the column defaults of
    /// `environs`); fields already set are kept. DEV stages always allow private builds.
    pub fn fill_create_defaults(&mut self) {
        let env = self.env_name.clone().unwrap_or_default();
        let stage = self.stage_name.clone().unwrap_or_default();
        self.env_state.get_or_insert(EnvState::Normal);
        self.description.get_or_insert_with(|| format!("{env} stage for env {stage}"));
        self.build_name.get_or_insert(env);
        self.branch.get_or_insert_with(|| Self::DEFAULT_BRANCH.to_owned());
        self.max_parallel.get_or_insert(Self::DEFAULT_MAX_PARALLEL);
        self.priority.get_or_insert(DeployPriority::Normal);
        self.stuck_threshold.get_or_insert(Self::DEFAULT_STUCK_THRESHOLD_SECS);
        self.success_threshold.get_or_insert(Self::DEFAULT_SUCCESS_THRESHOLD_BP);
        self.acceptance_type.get_or_insert(AcceptanceType::Auto);
        self.max_deploy_num.get_or_insert(Self::DEFAULT_MAX_DEPLOY_NUM);
        self.max_deploy_day.get_or_insert(Self::DEFAULT_MAX_DEPLOY_DAY);
        self.state.get_or_insert(EnvironState::Normal);
        self.override_policy.get_or_insert(OverridePolicy::Override);
        let stage_type = *self.stage_type.get_or_insert(EnvType::Default);
        // Column defaults of `environs`.
        self.is_docker.get_or_insert(false);
        self.max_parallel_pct.get_or_insert(0);
        self.max_parallel_rp.get_or_insert(1);
        self.allow_private_build.get_or_insert(false);
        self.ensure_trusted_build.get_or_insert(false);
        self.is_sox.get_or_insert(false);
        self.use_entitlements.get_or_insert(false);
        if stage_type == EnvType::Dev {
            self.allow_private_build = Some(true);
        }
    }
}

/// How a build's `artifactUrl` names an artifact stored in the cluster: the prefix, then the
/// artifact's BLAKE3 hash (hex).
pub const BLOB_URL_PREFIX: &str = "tt://blob/";

/// A published build (`builds`). Immutable once published.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct BuildBean {
    pub id: Option<BuildId>,
    /// Build name (required on publish).
    pub name: Option<String>,
    /// Where the tarball is (required on publish).
    pub artifact_url: Option<String>,
    /// The SCM, e.g. `Github` (column `scm`).
    #[serde(rename = "type")]
    pub scm: Option<String>,
    pub repo: Option<String>,
    pub branch: Option<String>,
    pub commit: Option<String>,
    /// Defaults to the first 7 characters of `commit`.
    pub commit_short: Option<String>,
    /// Commit URL.
    pub commit_info: Option<String>,
    pub commit_date: Option<EpochMillis>,
    /// E.g. a CI job URL; defaults to `"UNKNOWN"`.
    pub publish_info: Option<String>,
    /// The authenticated principal that published the build.
    pub publisher: Option<String>,
    pub publish_date: Option<EpochMillis>,
    /// BLAKE3 hash of the artifact, 64 lowercase hex digits (ours; Teletraan has none). Agents
    /// refuse to stage bytes that do not match it.
    pub artifact_blake3: Option<String>,
    /// Size of the artifact in bytes (ours), checked with the hash.
    pub artifact_size: Option<u64>,
}

impl BuildBean {
    /// The default `commitShort`: the first 7 characters of a commit.
    pub fn short_commit(commit: &str) -> &str {
        match commit.char_indices().nth(7) {
            Some((end, _)) => &commit[..end],
            None => commit,
        }
    }

    /// A private build has no branch or a branch starting with `private` (any case).
    pub fn is_private(&self) -> bool {
        match &self.branch {
            None => true,
            Some(branch) => {
                branch.len() >= 7 && branch.as_bytes()[..7].eq_ignore_ascii_case(b"private")
            }
        }
    }
}

/// One rollout of a build to a stage (`deploys`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct DeployBean {
    pub id: Option<DeployId>,
    /// ROLLBACK only: the deploy being rolled back to.
    pub alias: Option<DeployId>,
    pub env_id: Option<EnvId>,
    pub build_id: Option<BuildId>,
    #[serde(rename = "type")]
    pub deploy_type: Option<DeployType>,
    pub state: Option<DeployState>,
    pub start_date: Option<EpochMillis>,
    /// User, script or [`AUTO_PROMOTER_OPERATOR`].
    pub operator: Option<String>,
    /// Last time state or counters changed; the stuck timer reads this.
    pub last_update_date: Option<EpochMillis>,
    pub description: Option<String>,
    /// Agents of this deploy at SERVING_BUILD or STOPPED (not PAUSED_BY_USER).
    pub success_total: Option<i32>,
    /// Agents of this deploy at PAUSED_BY_SYSTEM.
    pub fail_total: Option<i32>,
    /// Agent rows of the stage at the last transition.
    pub total: Option<i32>,
    /// First time the success threshold was met.
    pub success_date: Option<EpochMillis>,
    pub acceptance_status: Option<AcceptanceStatus>,
    /// PROMOTE: the deploy in the previous stage this one came from.
    pub from_deploy_id: Option<DeployId>,
}

/// One agent row: a host's progress on a stage (`agents`, key host id + env id).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct AgentBean {
    pub host_id: Option<HostId>,
    pub host_name: Option<String>,
    pub env_id: Option<EnvId>,
    pub deploy_id: Option<DeployId>,
    pub deploy_stage: Option<DeployStage>,
    pub state: Option<AgentState>,
    pub status: Option<AgentStatus>,
    /// When the host started on this deploy (kept across stages).
    pub start_date: Option<EpochMillis>,
    /// Last time the row changed (not a heartbeat).
    pub last_update_date: Option<EpochMillis>,
    pub last_operator: Option<String>,
    /// The agent's error code (column `last_err_no`).
    pub last_errno: Option<i32>,
    /// Agent-side retry count.
    pub fail_count: Option<i32>,
    /// True while the host does its first deploy of this environment.
    pub first_deploy: Option<bool>,
    /// When the first deploy ended (column `first_deploy_time`).
    pub first_deploy_date: Option<EpochMillis>,
    pub stage_start_date: Option<EpochMillis>,
    pub container_health_status: Option<String>,
}

/// One group membership of a host (`hosts`; one row per group).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct HostBean {
    pub host_name: Option<String>,
    pub group_name: Option<String>,
    pub ip: Option<String>,
    pub host_id: Option<HostId>,
    pub account_id: Option<String>,
    pub create_date: Option<EpochMillis>,
    pub last_update_date: Option<EpochMillis>,
    pub state: Option<HostState>,
    /// 0 NEW, 1 TO_BE_REPLACED, 2 HEALTH_CHECK (cluster replacement data).
    pub can_retire: Option<i32>,
}

/// A host's heartbeat record (`hosts_and_agents`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct HostAgentBean {
    pub host_name: Option<String>,
    pub ip: Option<String>,
    pub host_id: Option<HostId>,
    pub create_date: Option<EpochMillis>,
    pub last_update_date: Option<EpochMillis>,
    pub agent_version: Option<String>,
    pub auto_scaling_group: Option<String>,
    pub normandie_status: Option<NormandieStatus>,
    pub knox_status: Option<KnoxStatus>,
}

/// Auto-promotion config of a stage (`promotes`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct PromoteBean {
    pub env_id: Option<EnvId>,
    pub last_operator: Option<String>,
    pub last_update: Option<EpochMillis>,
    #[serde(rename = "type")]
    pub promote_type: Option<PromoteType>,
    /// Stage name to promote from, or [`PromoteBean::PRED_STAGE_BUILD`].
    pub pred_stage: Option<String>,
    /// 1..=10 candidates needed; the N-th newest is promoted.
    pub queue_size: Option<i32>,
    /// Quartz cron expression: promote only inside its window.
    pub schedule: Option<String>,
    /// Minutes a candidate must bake before promotion.
    pub delay: Option<i32>,
    pub disable_policy: Option<PromoteDisablePolicy>,
    pub fail_policy: Option<PromoteFailPolicy>,
}

impl PromoteBean {
    /// `predStage` value meaning "promote newly published builds".
    pub const PRED_STAGE_BUILD: &str = "BUILD";
}

/// Staged rollout ("waves") of a stage (`schedules`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ScheduleBean {
    pub id: Option<ScheduleId>,
    pub total_sessions: Option<i32>,
    /// CSV of minutes per session; negative = wait for a manual override.
    pub cooldown_times: Option<String>,
    /// CSV per session: absolute increments (`"5,10"`) or cumulative percentages (`"10%,50%"`).
    pub host_numbers: Option<String>,
    /// 1-based.
    pub current_session: Option<i32>,
    pub state: Option<ScheduleState>,
    pub state_start_time: Option<EpochMillis>,
}

/// Teletraan's admission-count cache row (`agent_counts`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct AgentCountBean {
    pub env_id: Option<EnvId>,
    pub deploy_id: Option<DeployId>,
    /// Agents of the stage with `firstDeploy` false.
    pub existing_count: Option<i64>,
    /// Agents counted as deploying (occupying a parallelism slot).
    pub active_count: Option<i64>,
    pub last_refresh: Option<EpochMillis>,
}

/// One config change of a stage (`config_history`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ConfigHistoryBean {
    /// The stage the change applies to (column `config_id` = env id).
    pub id: Option<EnvId>,
    pub change_id: Option<ChangeId>,
    pub create_time: Option<EpochMillis>,
    pub operator: Option<String>,
    /// One of the `TYPE_*` constants.
    #[serde(rename = "type")]
    pub change_type: Option<String>,
    /// JSON of the request (≤ 8192 characters in Teletraan).
    pub config_change: Option<String>,
}

impl ConfigHistoryBean {
    pub const TYPE_ENV_GENERAL: &str = "Env General Config";
    pub const TYPE_ENV_PROMOTE: &str = "Env Promote Config";
    pub const TYPE_ENV_SCRIPT: &str = "Env Script Config";
    pub const TYPE_ENV_ADVANCED: &str = "Env Advanced Config";
    pub const TYPE_ENV_HOST_CAPACITY: &str = "Env Host Capacity Config";
    pub const TYPE_ENV_GROUP_CAPACITY: &str = "Env Group Capacity Config";
    pub const TYPE_ENV_METRICS: &str = "Env Metrics Config";
    pub const TYPE_ENV_ALARM: &str = "Env Alarm Config";
    pub const TYPE_ENV_WEBHOOK: &str = "Env Webhook Config";
    /// Body is the action name (PROMOTE, RESTART, ROLLBACK, PAUSE, RESUME).
    pub const TYPE_ENV_ACTION: &str = "Env Action";
    /// Body is `"STOP [ids]"`.
    pub const TYPE_HOST_ACTION: &str = "Host Action";
}

/// A tag on a build, a stage or the whole system (`tags`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct TagBean {
    pub id: Option<TagId>,
    pub value: Option<TagValue>,
    pub target_type: Option<TagTargetType>,
    /// A build name (BUILD tags, after rewriting), an env id, or a system target.
    pub target_id: Option<String>,
    pub operator: Option<String>,
    pub created_date: Option<EpochMillis>,
    pub comments: Option<String>,
    /// JSON, e.g. the tagged build.
    pub meta_info: Option<String>,
}

/// A hotfix pipeline run (`hotfixes`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct HotfixBean {
    pub id: Option<HotfixId>,
    pub env_name: Option<String>,
    pub state: Option<HotfixState>,
    pub job_num: Option<String>,
    pub job_name: Option<String>,
    pub ci_platform: Option<String>,
    /// Column `base_deploy`.
    pub base_deploy_id: Option<DeployId>,
    pub base_commit: Option<String>,
    pub repo: Option<String>,
    /// CSV of commits to cherry-pick.
    pub commits: Option<String>,
    /// Minutes.
    pub timeout: Option<i32>,
    pub operator: Option<String>,
    /// Column `start_time`.
    pub start_date: Option<EpochMillis>,
    /// Percent, 0..=100.
    pub progress: Option<i32>,
    pub error_message: Option<String>,
    pub last_worked_on: Option<EpochMillis>,
}

/// Tag-grouped parallelism of a stage (`deploy_constraints`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct DeployConstraintBean {
    pub id: Option<ConstraintId>,
    /// Host tag name, e.g. an availability-zone tag.
    pub constraint_key: Option<String>,
    /// Max hosts deploying at once per tag value.
    pub max_parallel: Option<i64>,
    pub constraint_type: Option<DeployConstraintType>,
    pub state: Option<TagSyncState>,
    pub start_date: Option<EpochMillis>,
    pub last_update: Option<EpochMillis>,
}

/// A host's value for a stage's constraint tag (`host_tags`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct HostTagBean {
    pub host_id: Option<HostId>,
    pub env_id: Option<EnvId>,
    pub tag_name: Option<String>,
    pub tag_value: Option<String>,
    pub create_date: Option<EpochMillis>,
}

/// The last error message an agent reported for a stage (`agent_errors`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct AgentErrorBean {
    pub host_id: Option<HostId>,
    pub host_name: Option<String>,
    pub env_id: Option<EnvId>,
    /// Column `error_msg`.
    pub error_message: Option<String>,
}

/// One webhook call.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct WebHookBean {
    /// GET, POST, PUT or DELETE.
    pub method: Option<String>,
    pub url: Option<String>,
    pub version: Option<String>,
    /// `"k:v;k2:v2"`.
    pub headers: Option<String>,
    pub body: Option<String>,
}

/// A stage's webhooks (`GET|PUT /v1/envs/{e}/{s}/web_hooks`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct EnvWebHookBean {
    /// Fired when a deploy is created.
    #[serde(deserialize_with = "null_as_default")]
    pub pre_deploy_hooks: Vec<WebHookBean>,
    /// Fired when a deploy first reaches SUCCEEDING.
    #[serde(deserialize_with = "null_as_default")]
    pub post_deploy_hooks: Vec<WebHookBean>,
}

/// One webhook call a deploy owes, and how it went (`GET /v1/deploys/{id}/webhooks`; ours).
///
/// The leader records it in the replicated state when the hook falls due (deploy creation for
/// pre-deploy hooks, the first SUCCEEDING for post-deploy hooks), with the hook as configured
/// at that moment and the deploy's state then; a later config change does not alter it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct WebhookDeliveryBean {
    pub deploy_id: Option<DeployId>,
    pub phase: Option<WebhookPhase>,
    /// Position of the hook in its list.
    pub index: u32,
    pub hook: WebHookBean,
    /// The deploy's state substituted as `$TELETRAAN_NUMERIC_DEPLOY_STATE`.
    pub deploy_state: Option<DeployState>,
    pub state: Option<WebhookDeliveryState>,
    /// HTTP attempts made (0 when the hook could not be rendered).
    pub attempts: u32,
    /// The last answer (`HTTP 503`) or error.
    pub detail: Option<String>,
    pub due_date: Option<i64>,
    pub completed_date: Option<i64>,
}

/// Answer of `PUT /v1/envs/{e}/{s}/deploys/current/progress`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct DeployProgressBean {
    #[serde(deserialize_with = "null_as_default")]
    pub agents: Vec<AgentBean>,
    /// Host names in the stage's capacity with no host row.
    #[serde(deserialize_with = "null_as_default")]
    pub missing_hosts: Vec<String>,
    /// Hosts in the stage's capacity with no agent row.
    #[serde(deserialize_with = "null_as_default")]
    pub provisioning_hosts: Vec<HostBean>,
}

/// Answer of `GET /v1/deploys`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct DeployQueryResultBean {
    #[serde(deserialize_with = "null_as_default")]
    pub deploys: Vec<DeployBean>,
    pub deploy_tags: Option<BTreeMap<String, TagBean>>,
    pub total: Option<i64>,
    pub truncated: Option<bool>,
}

/// A user's role on a resource (`users_and_roles`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct UserRolesBean {
    /// The user name.
    pub name: Option<String>,
    /// An env name for ENV, `"*"` for SYSTEM.
    pub resource: Option<String>,
    #[serde(rename = "type")]
    pub resource_type: Option<ResourceType>,
    pub role: Option<TeletraanPrincipalRole>,
}

/// A group's role on a resource (`groups_and_roles`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct GroupRolesBean {
    /// The group name.
    pub name: Option<String>,
    pub resource: Option<String>,
    #[serde(rename = "type")]
    pub resource_type: Option<ResourceType>,
    pub role: Option<TeletraanPrincipalRole>,
}

/// A script token's role on a resource (`tokens_and_roles`).
///
/// `token` is write-only in JSON: accepted on input, never written (a token is shown once, on
/// create, through [`CreatedTokenRolesBean`]). postcard always carries it, since the coordinator
/// must persist it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct TokenRolesBean {
    /// The script name.
    pub name: Option<String>,
    pub resource: Option<String>,
    #[serde(rename = "type")]
    pub resource_type: Option<ResourceType>,
    pub token: Option<String>,
    pub role: Option<TeletraanPrincipalRole>,
    pub expire_date: Option<EpochMillis>,
}

impl Serialize for TokenRolesBean {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let with_token = !serializer.is_human_readable();
        let mut s = serializer.serialize_struct("TokenRolesBean", 5 + usize::from(with_token))?;
        s.serialize_field("name", &self.name)?;
        s.serialize_field("resource", &self.resource)?;
        s.serialize_field("type", &self.resource_type)?;
        if with_token {
            s.serialize_field("token", &self.token)?;
        } else {
            s.skip_field("token")?;
        }
        s.serialize_field("role", &self.role)?;
        s.serialize_field("expireDate", &self.expire_date)?;
        s.end()
    }
}

/// Answer of creating a script token: the only response that carries the token.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct CreatedTokenRolesBean {
    pub name: Option<String>,
    pub resource: Option<String>,
    #[serde(rename = "type")]
    pub resource_type: Option<ResourceType>,
    pub token: Option<String>,
    pub role: Option<TeletraanPrincipalRole>,
    pub expire_date: Option<EpochMillis>,
}

#[cfg(test)]
mod tests {
    use serde::de::DeserializeOwned;
    use serde_json::{Value, json};

    use super::*;

    /// Parses a Teletraan-shaped JSON literal into `T` and checks that writing it back gives
    /// exactly the same object (same keys, same values, nulls included), and that postcard
    /// round-trips the bean. A misnamed or missing field fails the equality.
    fn check_round_trip<T>(literal: Value) -> T
    where
        T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug,
    {
        let bean: T = serde_json::from_value(literal.clone()).unwrap();
        let written = serde_json::to_value(&bean).unwrap();
        assert_eq!(written, literal);
        let bytes = postcard::to_stdvec(&bean).unwrap();
        assert_eq!(postcard::from_bytes::<T>(&bytes).unwrap(), bean);
        bean
    }

    fn keys(value: &Value) -> Vec<String> {
        value.as_object().unwrap().keys().cloned().collect()
    }

    /// A stage as `GET /v1/envs/{e}/{s}` returns it, every field set.
    const FULL_ENVIRON_JSON: &str = r##"{
        "id": "Ej5FZ-ibEtOkVkJmFBdAAA",
        "envName": "web",
        "stageName": "prod",
        "envState": "NORMAL",
        "description": "web stage for env prod",
        "buildName": "web",
        "branch": "master",
        "chatroom": "#web-deploys",
        "deployId": "xDk3mQ2bT0ePz9aQwE1r7g",
        "deployType": "REGULAR",
        "maxParallel": 10,
        "priority": "HIGH",
        "systemPriority": 5,
        "stuckThreshold": 600,
        "successThreshold": 9500,
        "advancedConfigId": "AdvCfg0000000000000000",
        "scriptConfigId": "ScCfg00000000000000000",
        "lastOperator": "alice",
        "lastUpdate": 1700000000000,
        "acceptanceType": "MANUAL",
        "emailRecipients": "web-oncall@example.com",
        "notifyAuthors": true,
        "watchRecipients": "bob,carol",
        "groupMentionRecipients": "S0123",
        "metricsConfigId": "Metrics000000000000000",
        "alarmConfigId": "Alarm00000000000000000",
        "webhooksConfigId": "Hooks00000000000000000",
        "maxDeployNum": 5000,
        "maxDeployDay": 365,
        "isDocker": false,
        "maxParallelPct": 0,
        "state": "DISABLED",
        "clusterName": "web-prod",
        "maxParallelRp": 1,
        "overridePolicy": "WARN",
        "scheduleId": "Sched00000000000000000",
        "deployConstraintId": "Constr0000000000000000",
        "externalId": "123e4567-e89b-12d3-a456-426614174000",
        "allowPrivateBuild": false,
        "ensureTrustedBuild": true,
        "stageType": "PRODUCTION",
        "isSOX": false,
        "terminationLimit": 100,
        "projectName": "web-project",
        "useEntitlements": false
    }"##;

    fn full_environ_json() -> Value {
        serde_json::from_str(FULL_ENVIRON_JSON).unwrap()
    }

    #[test]
    fn environ_bean_round_trips_every_teletraan_field() {
        let literal = full_environ_json();
        assert_eq!(keys(&literal).len(), 45, "every EnvironBean @JsonProperty");
        let bean: EnvironBean = check_round_trip(literal);
        assert_eq!(bean.id, Some(EnvId::new("Ej5FZ-ibEtOkVkJmFBdAAA")));
        assert_eq!(bean.stuck_threshold, Some(600));
        assert_eq!(bean.success_threshold, Some(9500));
        assert_eq!(bean.is_sox, Some(false));
        assert_eq!(bean.project_name.as_deref(), Some("web-project"));
        assert_eq!(bean.priority, Some(DeployPriority::High));
    }

    #[test]
    fn unset_fields_are_written_as_null_and_absent_fields_read_as_none() {
        let written = serde_json::to_value(EnvironBean::default()).unwrap();
        let mut expected_keys = keys(&full_environ_json());
        expected_keys.sort();
        let mut written_keys = keys(&written);
        written_keys.sort();
        assert_eq!(written_keys, expected_keys);
        assert!(written.as_object().unwrap().values().all(Value::is_null));

        let partial: EnvironBean =
            serde_json::from_str(r#"{"maxParallel": 5, "description": null, "unknownField": 1}"#)
                .unwrap();
        assert_eq!(partial, EnvironBean { max_parallel: Some(5), ..EnvironBean::default() });
    }

    #[test]
    fn apply_update_overwrites_only_set_fields() {
        let mut env: EnvironBean = serde_json::from_value(full_environ_json()).unwrap();
        let before = env.clone();
        let patch: EnvironBean =
            serde_json::from_str(r#"{"maxParallel": 3, "description": "new", "chatroom": null}"#)
                .unwrap();
        assert!(env.apply_update(&patch));
        assert_eq!(env.max_parallel, Some(3));
        assert_eq!(env.description.as_deref(), Some("new"));
        assert_eq!(env.chatroom, before.chatroom, "null leaves the field unchanged");
        assert_eq!(
            EnvironBean {
                max_parallel: before.max_parallel,
                description: before.description.clone(),
                ..env
            },
            before
        );
    }

    #[test]
    fn apply_update_reports_no_change_and_keeps_identity() {
        let mut env: EnvironBean = serde_json::from_value(full_environ_json()).unwrap();
        let before = env.clone();
        assert!(!env.apply_update(&EnvironBean::default()));
        assert!(!env.apply_update(&before), "same values are no change");
        let identity = EnvironBean {
            id: Some(EnvId::new("other")),
            env_name: Some("other".into()),
            stage_name: Some("other".into()),
            ..EnvironBean::default()
        };
        assert!(!env.apply_update(&identity));
        assert_eq!(env, before);
    }

    #[test]
    fn apply_update_covers_every_non_identity_field() {
        let patch: EnvironBean = serde_json::from_value(full_environ_json()).unwrap();
        let mut env = EnvironBean::default();
        assert!(env.apply_update(&patch));
        let mut expected = full_environ_json();
        for identity in ["id", "envName", "stageName"] {
            expected[identity] = Value::Null;
        }
        assert_eq!(serde_json::to_value(&env).unwrap(), expected);
    }

    #[test]
    fn normalize_request_keeps_one_parallelism_mode() {
        let mut only_num = EnvironBean { max_parallel: Some(4), ..EnvironBean::default() };
        only_num.normalize_request().unwrap();
        assert_eq!((only_num.max_parallel, only_num.max_parallel_pct), (Some(4), Some(0)));

        let mut only_pct = EnvironBean { max_parallel_pct: Some(20), ..EnvironBean::default() };
        only_pct.normalize_request().unwrap();
        assert_eq!((only_pct.max_parallel, only_pct.max_parallel_pct), (Some(0), Some(20)));

        let mut both = EnvironBean {
            max_parallel: Some(4),
            max_parallel_pct: Some(20),
            ..EnvironBean::default()
        };
        both.normalize_request().unwrap();
        assert_eq!((both.max_parallel, both.max_parallel_pct), (Some(4), Some(20)));

        let mut neither = EnvironBean::default();
        neither.normalize_request().unwrap();
        assert_eq!(neither, EnvironBean::default());
    }

    #[test]
    fn normalize_request_refuses_out_of_range_values() {
        let cases = [
            (
                EnvironBean { success_threshold: Some(10_001), ..Default::default() },
                InvalidEnviron::SuccessThreshold(10_001),
            ),
            (
                EnvironBean { success_threshold: Some(-1), ..Default::default() },
                InvalidEnviron::SuccessThreshold(-1),
            ),
            (
                EnvironBean { max_deploy_num: Some(0), ..Default::default() },
                InvalidEnviron::MaxDeployNum(0),
            ),
            (
                EnvironBean { max_deploy_day: Some(-3), ..Default::default() },
                InvalidEnviron::MaxDeployDay(-3),
            ),
            (
                EnvironBean { max_parallel_pct: Some(101), ..Default::default() },
                InvalidEnviron::MaxParallelPct(101),
            ),
        ];
        for (mut bean, expected) in cases {
            assert_eq!(bean.normalize_request(), Err(expected));
        }
        let mut edge = EnvironBean { success_threshold: Some(0), ..Default::default() };
        assert_eq!(edge.normalize_request(), Ok(()));
    }

    #[test]
    fn create_defaults_match_teletraan() {
        let mut env = EnvironBean {
            env_name: Some("web".into()),
            stage_name: Some("dev".into()),
            stage_type: Some(EnvType::Dev),
            max_parallel: Some(7),
            ..EnvironBean::default()
        };
        env.fill_create_defaults();
        assert_eq!(env.description.as_deref(), Some("web stage for env dev"));
        assert_eq!(env.build_name.as_deref(), Some("web"));
        assert_eq!(env.branch.as_deref(), Some("master"));
        assert_eq!(env.max_parallel, Some(7), "set fields are kept");
        assert_eq!(env.stuck_threshold, Some(600));
        assert_eq!(env.success_threshold, Some(10_000));
        assert_eq!(env.max_deploy_num, Some(5000));
        assert_eq!(env.max_deploy_day, Some(365));
        assert_eq!(env.priority, Some(DeployPriority::Normal));
        assert_eq!(env.acceptance_type, Some(AcceptanceType::Auto));
        assert_eq!(env.env_state, Some(EnvState::Normal));
        assert_eq!(env.state, Some(EnvironState::Normal));
        assert_eq!(env.override_policy, Some(OverridePolicy::Override));
        assert_eq!(env.allow_private_build, Some(true), "DEV stages allow private builds");
        assert_eq!(env.max_parallel_rp, Some(1));
        assert_eq!(env.deploy_id, None);

        let mut prod = EnvironBean { env_name: Some("web".into()), ..EnvironBean::default() };
        prod.fill_create_defaults();
        assert_eq!(prod.stage_type, Some(EnvType::Default));
        assert_eq!(prod.allow_private_build, Some(false));
    }

    #[test]
    fn build_bean_round_trip_and_helpers() {
        let build: BuildBean = check_round_trip(json!({
            "id": "Ej5FZ-ibEtOkVkJmFBdAAA_3f9a2c1",
            "name": "web",
            "artifactUrl": "https://artifacts.example.com/web/3f9a2c1.tar.gz",
            "type": "Github",
            "repo": "example/web",
            "branch": "master",
            "commit": "3f9a2c1d8e7b6a5f4e3d2c1b0a9f8e7d6c5b4a39",
            "commitShort": "3f9a2c1",
            "commitInfo": "https://github.com/example/web/commit/3f9a2c1",
            "commitDate": 1_699_990_000_000_i64,
            "publishInfo": "https://ci.example.com/job/web/42",
            "publisher": "ci-bot",
            "publishDate": 1_700_000_000_000_i64,
            "artifactBlake3": "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262",
            "artifactSize": 0
        }));
        assert_eq!(build.scm.as_deref(), Some("Github"));
        assert!(!build.is_private());
        assert_eq!(BuildBean::short_commit(build.commit.as_deref().unwrap()), "3f9a2c1");
        assert_eq!(BuildBean::short_commit("abc"), "abc");
        let private = BuildBean { branch: Some("PRIVATE-alice".into()), ..BuildBean::default() };
        assert!(private.is_private());
        assert!(BuildBean::default().is_private(), "no branch = private");
        let short = BuildBean { branch: Some("priv".into()), ..BuildBean::default() };
        assert!(!short.is_private());
    }

    #[test]
    fn deploy_bean_round_trip() {
        let deploy: DeployBean = check_round_trip(json!({
            "id": "xDk3mQ2bT0ePz9aQwE1r7g",
            "alias": null,
            "envId": "Ej5FZ-ibEtOkVkJmFBdAAA",
            "buildId": "Ej5FZ-ibEtOkVkJmFBdAAA_3f9a2c1",
            "type": "ROLLBACK",
            "state": "SUCCEEDING",
            "startDate": 1_700_000_000_000_i64,
            "operator": "alice",
            "lastUpdateDate": 1_700_000_060_000_i64,
            "description": "roll back",
            "successTotal": 9,
            "failTotal": 1,
            "total": 10,
            "successDate": 1_700_000_050_000_i64,
            "acceptanceStatus": "ACCEPTED",
            "fromDeployId": null
        }));
        assert_eq!(deploy.deploy_type, Some(DeployType::Rollback));
        assert_eq!(deploy.alias, None);
    }

    #[test]
    fn agent_bean_round_trip() {
        let agent: AgentBean = check_round_trip(json!({
            "hostId": "i-0abc",
            "hostName": "web-1",
            "envId": "Ej5FZ-ibEtOkVkJmFBdAAA",
            "deployId": "xDk3mQ2bT0ePz9aQwE1r7g",
            "deployStage": "RESTARTING",
            "state": "PAUSED_BY_SYSTEM",
            "status": "TOO_MANY_RETRY",
            "startDate": 1_700_000_000_000_i64,
            "lastUpdateDate": 1_700_000_010_000_i64,
            "lastOperator": "system",
            "lastErrno": 1,
            "failCount": 3,
            "firstDeploy": false,
            "firstDeployDate": null,
            "stageStartDate": 1_700_000_005_000_i64,
            "containerHealthStatus": ""
        }));
        assert_eq!(agent.last_errno, Some(1));
        assert_eq!(agent.status, Some(AgentStatus::TooManyRetry));
    }

    #[test]
    fn host_beans_round_trip() {
        let host: HostBean = check_round_trip(json!({
            "hostName": "web-1",
            "groupName": "web-prod",
            "ip": "10.1.2.3",
            "hostId": "i-0abc",
            "accountId": "123456789012",
            "createDate": 1_700_000_000_000_i64,
            "lastUpdateDate": 1_700_000_000_000_i64,
            "state": "PENDING_TERMINATE",
            "canRetire": 0
        }));
        assert_eq!(host.state, Some(HostState::PendingTerminate));
        let heartbeat: HostAgentBean = check_round_trip(json!({
            "hostName": "web-1",
            "ip": "10.1.2.3",
            "hostId": "i-0abc",
            "createDate": 1_700_000_000_000_i64,
            "lastUpdateDate": 1_700_000_030_000_i64,
            "agentVersion": "1.2.76",
            "autoScalingGroup": "web-prod",
            "normandieStatus": "OK",
            "knoxStatus": "UNKNOWN"
        }));
        assert_eq!(heartbeat.knox_status, Some(KnoxStatus::Unknown));
    }

    #[test]
    fn promote_and_schedule_beans_round_trip() {
        let promote: PromoteBean = check_round_trip(json!({
            "envId": "Ej5FZ-ibEtOkVkJmFBdAAA",
            "lastOperator": "alice",
            "lastUpdate": 1_700_000_000_000_i64,
            "type": "AUTO",
            "predStage": "BUILD",
            "queueSize": 1,
            "schedule": "0 0 9 ? * MON-FRI",
            "delay": 30,
            "disablePolicy": "AUTO",
            "failPolicy": "ROLLBACK"
        }));
        assert_eq!(promote.promote_type, Some(PromoteType::Auto));
        assert_eq!(promote.pred_stage.as_deref(), Some(PromoteBean::PRED_STAGE_BUILD));
        let schedule: ScheduleBean = check_round_trip(json!({
            "id": "Sched00000000000000000",
            "totalSessions": 2,
            "cooldownTimes": "10,-1",
            "hostNumbers": "10%,50%",
            "currentSession": 1,
            "state": "COOLING_DOWN",
            "stateStartTime": 1_700_000_000_000_i64
        }));
        assert_eq!(schedule.state, Some(ScheduleState::CoolingDown));
    }

    #[test]
    fn bookkeeping_beans_round_trip() {
        let count: AgentCountBean = check_round_trip(json!({
            "envId": "E1",
            "deployId": "D1",
            "existingCount": 100,
            "activeCount": 7,
            "lastRefresh": 1_700_000_000_000_i64
        }));
        assert_eq!(count.active_count, Some(7));
        let history: ConfigHistoryBean = check_round_trip(json!({
            "id": "E1",
            "changeId": "C1",
            "createTime": 1_700_000_000_000_i64,
            "operator": "alice",
            "type": "Env General Config",
            "configChange": "{\"maxParallel\":3}"
        }));
        assert_eq!(history.change_type.as_deref(), Some(ConfigHistoryBean::TYPE_ENV_GENERAL));
        let tag: TagBean = check_round_trip(json!({
            "id": "T1",
            "value": "BAD_BUILD",
            "targetType": "BUILD",
            "targetId": "web",
            "operator": "alice",
            "createdDate": 1_700_000_000_000_i64,
            "comments": "crashes on start",
            "metaInfo": "{}"
        }));
        assert_eq!(tag.value, Some(TagValue::BadBuild));
        let hotfix: HotfixBean = check_round_trip(json!({
            "id": "H1",
            "envName": "web",
            "state": "PUSHING",
            "jobNum": "42",
            "jobName": "web-hotfix-job",
            "ciPlatform": "Jenkins",
            "baseDeployId": "D1",
            "baseCommit": "3f9a2c1",
            "repo": "example/web",
            "commits": "abc1234,def5678",
            "timeout": 30,
            "operator": "alice",
            "startDate": 1_700_000_000_000_i64,
            "progress": 50,
            "errorMessage": null,
            "lastWorkedOn": 1_700_000_000_000_i64
        }));
        assert_eq!(hotfix.base_deploy_id, Some(DeployId::new("D1")));
    }

    #[test]
    fn constraint_and_tag_beans_round_trip() {
        let constraint: DeployConstraintBean = check_round_trip(json!({
            "id": "K1",
            "constraintKey": "availability-zone",
            "maxParallel": 2,
            "constraintType": "GROUP_BY_GROUP",
            "state": "FINISHED",
            "startDate": 1_700_000_000_000_i64,
            "lastUpdate": 1_700_000_000_000_i64
        }));
        assert_eq!(constraint.constraint_type, Some(DeployConstraintType::GroupByGroup));
        let host_tag: HostTagBean = check_round_trip(json!({
            "hostId": "i-0abc",
            "envId": "E1",
            "tagName": "availability-zone",
            "tagValue": "us-east-1a",
            "createDate": 1_700_000_000_000_i64
        }));
        assert_eq!(host_tag.tag_value.as_deref(), Some("us-east-1a"));
        let error: AgentErrorBean = check_round_trip(json!({
            "hostId": "i-0abc",
            "hostName": "web-1",
            "envId": "E1",
            "errorMessage": "RESTARTING exited 1"
        }));
        assert_eq!(error.error_message.as_deref(), Some("RESTARTING exited 1"));
    }

    #[test]
    fn container_beans_round_trip_and_accept_null_lists() {
        let hooks: EnvWebHookBean = check_round_trip(json!({
            "preDeployHooks": [{
                "method": "POST",
                "url": "https://hooks.example.com/$TELETRAAN_DEPLOY_ID",
                "version": null,
                "headers": "k:v;k2:v2",
                "body": "{}"
            }],
            "postDeployHooks": []
        }));
        assert_eq!(hooks.pre_deploy_hooks.len(), 1);
        let null_hooks: EnvWebHookBean =
            serde_json::from_str(r#"{"preDeployHooks": null}"#).unwrap();
        assert_eq!(null_hooks, EnvWebHookBean::default());

        let progress: DeployProgressBean = check_round_trip(json!({
            "agents": [serde_json::to_value(AgentBean::default()).unwrap()],
            "missingHosts": ["web-9"],
            "provisioningHosts": []
        }));
        assert_eq!(progress.missing_hosts, ["web-9"]);
        let null_progress: DeployProgressBean =
            serde_json::from_str(r#"{"agents": null, "missingHosts": null}"#).unwrap();
        assert_eq!(null_progress, DeployProgressBean::default());

        let result: DeployQueryResultBean = check_round_trip(json!({
            "deploys": [serde_json::to_value(DeployBean::default()).unwrap()],
            "deployTags": null,
            "total": 1,
            "truncated": false
        }));
        assert_eq!(result.total, Some(1));
    }

    #[test]
    fn role_beans_round_trip() {
        let user: UserRolesBean = check_round_trip(json!({
            "name": "alice", "resource": "web", "type": "ENV", "role": "ADMIN"
        }));
        assert_eq!(user.role, Some(TeletraanPrincipalRole::Admin));
        let group: GroupRolesBean = check_round_trip(json!({
            "name": "sre", "resource": "*", "type": "SYSTEM", "role": "OPERATOR"
        }));
        assert_eq!(group.resource_type, Some(ResourceType::System));
        let created: CreatedTokenRolesBean = check_round_trip(json!({
            "name": "deployd", "resource": "*", "type": "SYSTEM", "token": "Tok0000000000000000000",
            "role": "PINGER", "expireDate": 1_715_000_000_000_i64
        }));
        assert_eq!(created.token.as_deref(), Some("Tok0000000000000000000"));
    }

    #[test]
    fn token_is_write_only_in_json_but_kept_by_postcard() {
        let input = r#"{"name":"deployd","resource":"*","type":"SYSTEM",
            "token":"secret-token","role":"PINGER","expireDate":1715000000000}"#;
        let bean: TokenRolesBean = serde_json::from_str(input).unwrap();
        assert_eq!(bean.token.as_deref(), Some("secret-token"));

        let written = serde_json::to_value(&bean).unwrap();
        assert_eq!(
            written,
            json!({"name": "deployd", "resource": "*", "type": "SYSTEM", "role": "PINGER",
                   "expireDate": 1_715_000_000_000_i64})
        );
        assert!(!serde_json::to_string(&bean).unwrap().contains("secret-token"));

        let bytes = postcard::to_stdvec(&bean).unwrap();
        assert_eq!(postcard::from_bytes::<TokenRolesBean>(&bytes).unwrap(), bean);
    }
}
