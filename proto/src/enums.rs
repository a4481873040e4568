//! Every Teletraan enum, with the exact strings Teletraan puts on the wire.
//!
//! In JSON each value is its Teletraan name (`"PRE_DOWNLOAD"`), case-sensitive as Jackson and
//! Jersey parse them. postcard encodes the *declaration index* instead, so variants are declared
//! in Teletraan's Java order (which also keeps `ordinal()` values such as
//! `$TELETRAAN_NUMERIC_DEPLOY_STATE` right) and are **never reordered or removed**; a new value
//! is appended at the end.
//!
//! The enums are deliberately not `#[non_exhaustive]`: the coordinator and agent match on them
//! exhaustively, and a new variant should break those matches at compile time.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A string that names no value of a Teletraan enum.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown {kind} value {value:?}; expected one of: {}", .allowed.join(", "))]
pub struct UnknownVariant {
    /// The enum's name, e.g. `"DeployStage"`.
    pub kind: &'static str,
    /// The string that was given.
    pub value: String,
    /// Every accepted string, in declaration order.
    pub allowed: &'static [&'static str],
}

/// Implemented by every enum in this module, for code generic over them (query parameters,
/// listings of allowed values).
pub trait WireEnum: Copy + Eq + fmt::Display + FromStr<Err = UnknownVariant> + 'static {
    /// Every value, in declaration (postcard index) order.
    const ALL: &'static [Self];
    /// Every wire string, in declaration order.
    const NAMES: &'static [&'static str];
    /// The Teletraan name of this value.
    fn as_str(self) -> &'static str;
}

/// Declares a Teletraan enum: the variants with their wire strings, serde (by name in JSON, by
/// index in postcard), `ALL`, `NAMES`, `as_str`, `Display` and `FromStr`.
macro_rules! wire_enum {
    (
        $(#[$meta:meta])*
        pub enum $name:ident {
            $( $(#[$vmeta:meta])* $variant:ident = $wire:tt, )+
        }
    ) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
        pub enum $name {
            $( $(#[$vmeta])* #[serde(rename = $wire)] $variant, )+
        }

        impl $name {
            /// Every value, in declaration (postcard index) order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// Every wire string, in declaration order.
            pub const NAMES: &'static [&'static str] = &[$($wire),+];

            /// The Teletraan name of this value.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $wire,)+
                }
            }
        }

        impl WireEnum for $name {
            const ALL: &'static [$name] = $name::ALL;
            const NAMES: &'static [&'static str] = $name::NAMES;

            fn as_str(self) -> &'static str {
                $name::as_str(self)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $name {
            type Err = UnknownVariant;

            fn from_str(s: &str) -> Result<Self, UnknownVariant> {
                match s {
                    $($wire => Ok($name::$variant),)+
                    _ => Err(UnknownVariant {
                        kind: stringify!($name),
                        value: s.to_owned(),
                        allowed: Self::NAMES,
                    }),
                }
            }
        }
    };
}

wire_enum! {
    /// A step of the agent's pipeline (`DeployStage`). Not a stage of an environment.
    #[derive(PartialOrd, Ord)]
    pub enum DeployStage {
        Unknown = "UNKNOWN",
        PreDownload = "PRE_DOWNLOAD",
        Downloading = "DOWNLOADING",
        PostDownload = "POST_DOWNLOAD",
        Staging = "STAGING",
        PreRestart = "PRE_RESTART",
        Restarting = "RESTARTING",
        PostRestart = "POST_RESTART",
        ServingBuild = "SERVING_BUILD",
        Stopping = "STOPPING",
        Stopped = "STOPPED",
    }
}

impl DeployStage {
    /// The first stage of every deploy.
    pub const FIRST: DeployStage = DeployStage::PreDownload;

    /// The stage whose goal carries the build.
    pub const DOWNLOAD: DeployStage = DeployStage::Downloading;

    /// Teletraan's transition map (the same for every deploy type): `UNKNOWN → PRE_DOWNLOAD →
    /// … → SERVING_BUILD` and `STOPPING → STOPPED`. `None` after `SERVING_BUILD` and `STOPPED`.
    pub const fn next(self) -> Option<DeployStage> {
        use DeployStage::*;
        match self {
            Unknown => Some(PreDownload),
            PreDownload => Some(Downloading),
            Downloading => Some(PostDownload),
            PostDownload => Some(Staging),
            Staging => Some(PreRestart),
            PreRestart => Some(Restarting),
            Restarting => Some(PostRestart),
            PostRestart => Some(ServingBuild),
            Stopping => Some(Stopped),
            ServingBuild | Stopped => None,
        }
    }
}

wire_enum! {
    /// State of a deploy. The current deploy of a stage moves between the ACTIVE states; the
    /// FINAL states are reached only when it is superseded.
    pub enum DeployState {
        Running = "RUNNING",
        Failing = "FAILING",
        Succeeding = "SUCCEEDING",
        Succeeded = "SUCCEEDED",
        Aborted = "ABORTED",
    }
}

impl DeployState {
    /// RUNNING, FAILING or SUCCEEDING.
    pub const fn is_active(self) -> bool {
        matches!(self, Self::Running | Self::Failing | Self::Succeeding)
    }

    /// RUNNING or FAILING.
    pub const fn is_ongoing(self) -> bool {
        matches!(self, Self::Running | Self::Failing)
    }

    /// SUCCEEDED or ABORTED.
    pub const fn is_final(self) -> bool {
        matches!(self, Self::Succeeded | Self::Aborted)
    }

    /// The state a superseded deploy ends in (`FINAL_STATE_TRANSITION_MAP`).
    pub const fn final_state(self) -> DeployState {
        match self {
            Self::Running | Self::Failing | Self::Aborted => Self::Aborted,
            Self::Succeeding | Self::Succeeded => Self::Succeeded,
        }
    }
}

wire_enum! {
    /// Kind of deploy. The server only creates REGULAR, ROLLBACK and RESTART.
    pub enum DeployType {
        Regular = "REGULAR",
        Hotfix = "HOTFIX",
        Rollback = "ROLLBACK",
        Restart = "RESTART",
        Stop = "STOP",
    }
}

impl DeployType {
    /// The op code a goal of this deploy type carries (`DEPLOY_TYPE_OPCODE_MAP`).
    pub const fn op_code(self) -> OpCode {
        match self {
            Self::Regular | Self::Hotfix => OpCode::Deploy,
            Self::Rollback => OpCode::Rollback,
            Self::Restart => OpCode::Restart,
            Self::Stop => OpCode::Stop,
        }
    }

    /// REGULAR or HOTFIX: deploys the auto-promoter may promote.
    pub const fn is_auto_promotable(self) -> bool {
        matches!(self, Self::Regular | Self::Hotfix)
    }
}

wire_enum! {
    /// What a ping response tells the agent to do. WAIT is never sent (a waiting host gets
    /// NOOP). A missing or null op code means NOOP to the agent.
    #[derive(Default)]
    pub enum OpCode {
        #[default]
        Noop = "NOOP",
        Deploy = "DEPLOY",
        Restart = "RESTART",
        Delete = "DELETE",
        Wait = "WAIT",
        Rollback = "ROLLBACK",
        Stop = "STOP",
    }
}

wire_enum! {
    /// Server-side control state of an agent row.
    pub enum AgentState {
        Normal = "NORMAL",
        /// Fatal failure; stop retrying.
        PausedBySystem = "PAUSED_BY_SYSTEM",
        PausedByUser = "PAUSED_BY_USER",
        /// User asked to retry from scratch.
        Reset = "RESET",
        /// The agent asked for a redeploy because its container was unhealthy.
        ResetBySystem = "RESET_BY_SYSTEM",
        /// The stage was removed from the host.
        Delete = "DELETE",
        /// The janitor found no pings.
        Unreachable = "UNREACHABLE",
        /// Shut the service down before termination.
        Stop = "STOP",
    }
}

wire_enum! {
    /// Result of the last stage an agent ran.
    pub enum AgentStatus {
        Succeeded = "SUCCEEDED",
        Unknown = "UNKNOWN",
        AgentFailed = "AGENT_FAILED",
        RetryableAgentFailed = "RETRYABLE_AGENT_FAILED",
        ScriptFailed = "SCRIPT_FAILED",
        AbortedByService = "ABORTED_BY_SERVICE",
        ScriptTimeout = "SCRIPT_TIMEOUT",
        TooManyRetry = "TOO_MANY_RETRY",
        RuntimeMismatch = "RUNTIME_MISMATCH",
    }
}

impl AgentStatus {
    /// SCRIPT_TIMEOUT, TOO_MANY_RETRY, AGENT_FAILED or RUNTIME_MISMATCH: the agent row goes to
    /// PAUSED_BY_SYSTEM. Every other non-SUCCEEDED status is retryable.
    pub const fn is_fatal(self) -> bool {
        matches!(
            self,
            Self::ScriptTimeout | Self::TooManyRetry | Self::AgentFailed | Self::RuntimeMismatch
        )
    }
}

wire_enum! {
    /// Acceptance of a deploy; starts at PENDING_DEPLOY.
    pub enum AcceptanceStatus {
        PendingDeploy = "PENDING_DEPLOY",
        /// Succeeded under MANUAL acceptance, waiting for tests.
        Outstanding = "OUTSTANDING",
        /// Tests running (set externally).
        PendingAccept = "PENDING_ACCEPT",
        Accepted = "ACCEPTED",
        Rejected = "REJECTED",
        /// Superseded before a final acceptance.
        Terminated = "TERMINATED",
    }
}

impl AcceptanceStatus {
    /// ACCEPTED, REJECTED or TERMINATED.
    pub const fn is_final(self) -> bool {
        matches!(self, Self::Accepted | Self::Rejected | Self::Terminated)
    }
}

wire_enum! {
    /// How a deploy becomes ACCEPTED.
    pub enum AcceptanceType {
        Auto = "AUTO",
        Manual = "MANUAL",
    }
}

wire_enum! {
    /// A stage's deploy pause flag (`environs.env_state`). Only NORMAL lets deploys progress;
    /// DISABLED is never set by Teletraan.
    pub enum EnvState {
        Normal = "NORMAL",
        Paused = "PAUSED",
        Disabled = "DISABLED",
    }
}

wire_enum! {
    /// A stage's enable/disable switch (`environs.state`).
    pub enum EnvironState {
        Normal = "NORMAL",
        Disabled = "DISABLED",
    }
}

wire_enum! {
    /// Stage type (`environs.stage_type`, JSON `stageType`).
    pub enum EnvType {
        Default = "DEFAULT",
        Production = "PRODUCTION",
        Control = "CONTROL",
        Canary = "CANARY",
        Latest = "LATEST",
        Dev = "DEV",
        Staging = "STAGING",
    }
}

impl EnvType {
    /// DEFAULT, PRODUCTION, CONTROL or CANARY. A production stage may not become a
    /// non-production one.
    pub const fn is_production(self) -> bool {
        matches!(self, Self::Default | Self::Production | Self::Control | Self::Canary)
    }

    /// The type used to name sharded ping groups: DEV and STAGING map to LATEST.
    pub const fn for_group_sharding(self) -> EnvType {
        match self {
            Self::Dev | Self::Staging => Self::Latest,
            other => other,
        }
    }
}

wire_enum! {
    /// Host-level priority of a stage; a lower [`value`](Self::value) deploys first.
    pub enum DeployPriority {
        Normal = "NORMAL",
        High = "HIGH",
        Low = "LOW",
        Higher = "HIGHER",
        Lower = "LOWER",
    }
}

impl DeployPriority {
    /// Priority value GoalAnalyst gives a HOTFIX deploy (not a variant; never on the wire).
    pub const HOTFIX_VALUE: i32 = 980;

    /// Priority value GoalAnalyst gives a ROLLBACK deploy (not a variant; never on the wire).
    pub const ROLLBACK_VALUE: i32 = 990;

    /// Teletraan's numeric value: HIGHER 1000, HIGH 2000, NORMAL 3000, LOW 4000, LOWER 5000.
    pub const fn value(self) -> i32 {
        match self {
            Self::Higher => 1000,
            Self::High => 2000,
            Self::Normal => 3000,
            Self::Low => 4000,
            Self::Lower => 5000,
        }
    }
}

wire_enum! {
    /// Whether a stage auto-promotes.
    pub enum PromoteType {
        Manual = "MANUAL",
        Auto = "AUTO",
    }
}

wire_enum! {
    /// MANUAL: auto-promotion is only disabled by hand. AUTO: a manual deploy by anyone but
    /// the auto-promoter switches the stage's promote type to MANUAL.
    pub enum PromoteDisablePolicy {
        Manual = "MANUAL",
        Auto = "AUTO",
    }
}

wire_enum! {
    /// What auto-promotion does after a failed deploy.
    pub enum PromoteFailPolicy {
        Continue = "CONTINUE",
        Disable = "DISABLE",
        /// Roll back to the last SUCCEEDED deploy and disable auto-promotion.
        Rollback = "ROLLBACK",
    }
}

wire_enum! {
    /// UI-only warning policy when deploying over an active deploy.
    pub enum OverridePolicy {
        Override = "OVERRIDE",
        Warn = "WARN",
    }
}

wire_enum! {
    /// Lifecycle of a host row.
    pub enum HostState {
        Provisioned = "PROVISIONED",
        Active = "ACTIVE",
        /// Stop, then terminate with replacement.
        PendingTerminate = "PENDING_TERMINATE",
        Terminating = "TERMINATING",
        Terminated = "TERMINATED",
        PendingTerminateNoReplace = "PENDING_TERMINATE_NO_REPLACE",
    }
}

impl HostState {
    /// PENDING_TERMINATE or PENDING_TERMINATE_NO_REPLACE.
    pub const fn is_pending_terminate(self) -> bool {
        matches!(self, Self::PendingTerminate | Self::PendingTerminateNoReplace)
    }
}

wire_enum! {
    /// State of a hotfix pipeline run.
    pub enum HotfixState {
        Initial = "INITIAL",
        Pushing = "PUSHING",
        Building = "BUILDING",
        Succeeded = "SUCCEEDED",
        Failed = "FAILED",
        Aborted = "ABORTED",
    }
}

impl HotfixState {
    /// INITIAL, PUSHING or BUILDING.
    pub const fn is_ongoing(self) -> bool {
        matches!(self, Self::Initial | Self::Pushing | Self::Building)
    }
}

wire_enum! {
    /// State of a staged rollout (waves).
    pub enum ScheduleState {
        NotStarted = "NOT_STARTED",
        Running = "RUNNING",
        CoolingDown = "COOLING_DOWN",
        /// Deploying to all remaining hosts.
        Final = "FINAL",
    }
}

wire_enum! {
    /// How a deploy constraint groups hosts by tag value.
    pub enum DeployConstraintType {
        GroupByGroup = "GROUP_BY_GROUP",
        AllGroupsInParallel = "ALL_GROUPS_IN_PARALLEL",
    }
}

wire_enum! {
    /// Host-tag sync state of a deploy constraint; only FINISHED admits non-first deploys.
    pub enum TagSyncState {
        Init = "INIT",
        Processing = "PROCESSING",
        Error = "ERROR",
        Finished = "FINISHED",
    }
}

wire_enum! {
    /// Value of a tag on a build or an environment.
    pub enum TagValue {
        BadBuild = "BAD_BUILD",
        GoodBuild = "GOOD_BUILD",
        CertifiedBuild = "CERTIFIED_BUILD",
        EnableEnv = "ENABLE_ENV",
        DisableEnv = "DISABLE_ENV",
    }
}

wire_enum! {
    /// What a tag is attached to.
    pub enum TagTargetType {
        Build = "BUILD",
        Environment = "ENVIRONMENT",
        Teletraan = "TELETRAAN",
    }
}

wire_enum! {
    /// Role of a user, group or script token. Compared with
    /// [`is_equal_or_superior`](Self::is_equal_or_superior), not by declaration order.
    pub enum TeletraanPrincipalRole {
        Read = "READ",
        Reader = "READER",
        Pinger = "PINGER",
        Publisher = "PUBLISHER",
        Execute = "EXECUTE",
        Write = "WRITE",
        Delete = "DELETE",
        ManageScriptToken = "MANAGE_SCRIPT_TOKEN",
        Operator = "OPERATOR",
        Admin = "ADMIN",
    }
}

impl TeletraanPrincipalRole {
    /// Teletraan's numeric value (`ValueBasedRole`).
    pub const fn value(self) -> i32 {
        match self {
            Self::Read => -1,
            Self::Reader => 0,
            Self::Pinger | Self::Publisher => 1,
            Self::Execute | Self::Write | Self::Delete => 9,
            Self::Operator => 10,
            Self::ManageScriptToken => 15,
            Self::Admin => 20,
        }
    }

    /// Teletraan's `isEqualOrSuperior`: the same role, or a strictly greater value. Roles of
    /// equal value do not satisfy each other (PINGER does not grant PUBLISHER; WRITE, EXECUTE
    /// and DELETE are mutually exclusive).
    pub fn is_equal_or_superior(self, required: TeletraanPrincipalRole) -> bool {
        self == required || self.value() > required.value()
    }
}

wire_enum! {
    /// Normandie identity daemon status reported in pings (Pinterest-specific).
    pub enum NormandieStatus {
        Ok = "OK",
        Error = "ERROR",
        Unknown = "UNKNOWN",
    }
}

wire_enum! {
    /// Knox secret daemon status reported in pings (Pinterest-specific).
    pub enum KnoxStatus {
        Ok = "OK",
        Error = "ERROR",
        Unknown = "UNKNOWN",
    }
}

wire_enum! {
    /// Kind of resource a role binding applies to (`AuthZResource.Type`).
    pub enum ResourceType {
        Env = "ENV",
        Group = "GROUP",
        System = "SYSTEM",
        EnvStage = "ENV_STAGE",
        Placement = "PLACEMENT",
        BaseImage = "BASE_IMAGE",
        SecurityZone = "SECURITY_ZONE",
        IamRole = "IAM_ROLE",
        Build = "BUILD",
        Deploy = "DEPLOY",
        Hotfix = "HOTFIX",
        Host = "HOST",
        ProvisionPrefix = "PROVISION_PREFIX",
        DeploySchedule = "DEPLOY_SCHEDULE",
        InstanceTypeMapping = "INSTANCE_TYPE_MAPPING",
        SoxProperty = "SOX_PROPERTY",
        Unspecified = "UNSPECIFIED",
    }
}

wire_enum! {
    /// `actionType` of `POST /v1/envs/{e}/{s}/deploys/current/actions` (`EnvDeploys.ActionType`).
    pub enum DeployActionType {
        Promote = "PROMOTE",
        Restart = "RESTART",
        Rollback = "ROLLBACK",
        Pause = "PAUSE",
        Resume = "RESUME",
    }
}

wire_enum! {
    /// `actionType` of `PUT /v1/envs/{e}/{s}/deploys/hostactions` (`EnvDeploys.HostActions`).
    pub enum HostActionType {
        PausedByUser = "PAUSED_BY_USER",
        Reset = "RESET",
        Normal = "NORMAL",
    }
}

wire_enum! {
    /// `actionType` of the stage and global enable/disable actions
    /// (`EnvStages.ActionType`, `Environs.ActionType`).
    pub enum StageActionType {
        Enable = "ENABLE",
        Disable = "DISABLE",
    }
}

wire_enum! {
    /// `actionType` of `GET /v1/envs/{e}/{s}/agents/count` (`EnvAgents.CountActionType`).
    pub enum AgentCountType {
        Serving = "SERVING",
        ServingAndNormal = "SERVING_AND_NORMAL",
        FirstDeploy = "FIRST_DEPLOY",
        FailedFirstDeploy = "FAILED_FIRST_DEPLOY",
    }
}

wire_enum! {
    /// `capacityType` of `/v1/envs/{e}/{s}/capacity` (`EnvCapacities.CapacityType`).
    pub enum CapacityType {
        Group = "GROUP",
        Host = "HOST",
    }
}

wire_enum! {
    /// When a stage's webhook fires (ours; Teletraan has the two lists but no name for them).
    pub enum WebhookPhase {
        /// On deploy creation.
        Pre = "PRE",
        /// On the deploy's first SUCCEEDING.
        Post = "POST",
    }
}

wire_enum! {
    /// Where one webhook delivery stands (ours: Teletraan fires and forgets).
    pub enum WebhookDeliveryState {
        /// Due or being attempted by the leader.
        Pending = "PENDING",
        /// A 2xx answer was received.
        Succeeded = "SUCCEEDED",
        /// The attempts ran out, the receiver refused the request, or the hook is invalid.
        Failed = "FAILED",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Checks, for every value of one enum: `as_str`, `Display`, `FromStr`, JSON and postcard
    /// agree and round-trip; the postcard index is the declaration index; and an unknown string
    /// is refused by both `FromStr` and JSON with a message naming it and the allowed values.
    fn check_enum<T>(expected_names: &[&str])
    where
        T: WireEnum + fmt::Debug + Serialize + for<'de> Deserialize<'de>,
    {
        let names: Vec<&str> = T::ALL.iter().map(|v| v.as_str()).collect();
        assert_eq!(names, expected_names, "wire strings or declaration order changed");
        assert_eq!(T::NAMES, expected_names);
        for (index, &value) in T::ALL.iter().enumerate() {
            let name = value.to_string();
            assert_eq!(name, value.as_str());
            assert_eq!(name.parse::<T>().unwrap(), value);
            let json = serde_json::to_string(&value).unwrap();
            assert_eq!(json, format!("\"{name}\""));
            assert_eq!(serde_json::from_str::<T>(&json).unwrap(), value);
            let bytes = postcard::to_stdvec(&value).unwrap();
            assert_eq!(bytes, vec![index as u8], "postcard index of {name}");
            assert_eq!(postcard::from_bytes::<T>(&bytes).unwrap(), value);
        }

        let err = "NOT_A_VALUE".parse::<T>().unwrap_err();
        assert_eq!(err.value, "NOT_A_VALUE");
        assert_eq!(err.allowed, expected_names);
        let msg = err.to_string();
        assert!(msg.contains("\"NOT_A_VALUE\""), "{msg}");
        assert!(msg.contains(&expected_names.join(", ")), "{msg}");

        // Teletraan's names are case-sensitive.
        assert!(expected_names[0].to_lowercase().parse::<T>().is_err());

        let json_err = serde_json::from_str::<T>("\"NOT_A_VALUE\"").unwrap_err().to_string();
        assert!(json_err.contains("NOT_A_VALUE"), "{json_err}");
        assert!(json_err.contains(expected_names[0]), "{json_err}");

        // An index past the last variant is refused by postcard.
        assert!(postcard::from_bytes::<T>(&[T::ALL.len() as u8]).is_err());
    }

    // The expected lists are written out literally (copied from Teletraan's Java sources) so a
    // typo or a reordering in the declarations above fails here.
    #[test]
    fn deploy_and_agent_enums() {
        check_enum::<DeployStage>(&[
            "UNKNOWN",
            "PRE_DOWNLOAD",
            "DOWNLOADING",
            "POST_DOWNLOAD",
            "STAGING",
            "PRE_RESTART",
            "RESTARTING",
            "POST_RESTART",
            "SERVING_BUILD",
            "STOPPING",
            "STOPPED",
        ]);
        check_enum::<DeployState>(&["RUNNING", "FAILING", "SUCCEEDING", "SUCCEEDED", "ABORTED"]);
        check_enum::<DeployType>(&["REGULAR", "HOTFIX", "ROLLBACK", "RESTART", "STOP"]);
        check_enum::<OpCode>(&["NOOP", "DEPLOY", "RESTART", "DELETE", "WAIT", "ROLLBACK", "STOP"]);
        check_enum::<AgentState>(&[
            "NORMAL",
            "PAUSED_BY_SYSTEM",
            "PAUSED_BY_USER",
            "RESET",
            "RESET_BY_SYSTEM",
            "DELETE",
            "UNREACHABLE",
            "STOP",
        ]);
        check_enum::<AgentStatus>(&[
            "SUCCEEDED",
            "UNKNOWN",
            "AGENT_FAILED",
            "RETRYABLE_AGENT_FAILED",
            "SCRIPT_FAILED",
            "ABORTED_BY_SERVICE",
            "SCRIPT_TIMEOUT",
            "TOO_MANY_RETRY",
            "RUNTIME_MISMATCH",
        ]);
        check_enum::<AcceptanceStatus>(&[
            "PENDING_DEPLOY",
            "OUTSTANDING",
            "PENDING_ACCEPT",
            "ACCEPTED",
            "REJECTED",
            "TERMINATED",
        ]);
        check_enum::<AcceptanceType>(&["AUTO", "MANUAL"]);
    }

    #[test]
    fn stage_config_enums() {
        check_enum::<EnvState>(&["NORMAL", "PAUSED", "DISABLED"]);
        check_enum::<EnvironState>(&["NORMAL", "DISABLED"]);
        check_enum::<EnvType>(&[
            "DEFAULT",
            "PRODUCTION",
            "CONTROL",
            "CANARY",
            "LATEST",
            "DEV",
            "STAGING",
        ]);
        check_enum::<DeployPriority>(&["NORMAL", "HIGH", "LOW", "HIGHER", "LOWER"]);
        check_enum::<PromoteType>(&["MANUAL", "AUTO"]);
        check_enum::<PromoteDisablePolicy>(&["MANUAL", "AUTO"]);
        check_enum::<PromoteFailPolicy>(&["CONTINUE", "DISABLE", "ROLLBACK"]);
        check_enum::<OverridePolicy>(&["OVERRIDE", "WARN"]);
        check_enum::<ScheduleState>(&["NOT_STARTED", "RUNNING", "COOLING_DOWN", "FINAL"]);
        check_enum::<DeployConstraintType>(&["GROUP_BY_GROUP", "ALL_GROUPS_IN_PARALLEL"]);
        check_enum::<TagSyncState>(&["INIT", "PROCESSING", "ERROR", "FINISHED"]);
        check_enum::<WebhookPhase>(&["PRE", "POST"]);
        check_enum::<WebhookDeliveryState>(&["PENDING", "SUCCEEDED", "FAILED"]);
    }

    #[test]
    fn host_tag_and_auth_enums() {
        check_enum::<HostState>(&[
            "PROVISIONED",
            "ACTIVE",
            "PENDING_TERMINATE",
            "TERMINATING",
            "TERMINATED",
            "PENDING_TERMINATE_NO_REPLACE",
        ]);
        check_enum::<HotfixState>(&[
            "INITIAL",
            "PUSHING",
            "BUILDING",
            "SUCCEEDED",
            "FAILED",
            "ABORTED",
        ]);
        check_enum::<TagValue>(&[
            "BAD_BUILD",
            "GOOD_BUILD",
            "CERTIFIED_BUILD",
            "ENABLE_ENV",
            "DISABLE_ENV",
        ]);
        check_enum::<TagTargetType>(&["BUILD", "ENVIRONMENT", "TELETRAAN"]);
        check_enum::<TeletraanPrincipalRole>(&[
            "READ",
            "READER",
            "PINGER",
            "PUBLISHER",
            "EXECUTE",
            "WRITE",
            "DELETE",
            "MANAGE_SCRIPT_TOKEN",
            "OPERATOR",
            "ADMIN",
        ]);
        check_enum::<NormandieStatus>(&["OK", "ERROR", "UNKNOWN"]);
        check_enum::<KnoxStatus>(&["OK", "ERROR", "UNKNOWN"]);
        check_enum::<ResourceType>(&[
            "ENV",
            "GROUP",
            "SYSTEM",
            "ENV_STAGE",
            "PLACEMENT",
            "BASE_IMAGE",
            "SECURITY_ZONE",
            "IAM_ROLE",
            "BUILD",
            "DEPLOY",
            "HOTFIX",
            "HOST",
            "PROVISION_PREFIX",
            "DEPLOY_SCHEDULE",
            "INSTANCE_TYPE_MAPPING",
            "SOX_PROPERTY",
            "UNSPECIFIED",
        ]);
    }

    #[test]
    fn resource_action_enums() {
        check_enum::<DeployActionType>(&["PROMOTE", "RESTART", "ROLLBACK", "PAUSE", "RESUME"]);
        check_enum::<HostActionType>(&["PAUSED_BY_USER", "RESET", "NORMAL"]);
        check_enum::<StageActionType>(&["ENABLE", "DISABLE"]);
        check_enum::<AgentCountType>(&[
            "SERVING",
            "SERVING_AND_NORMAL",
            "FIRST_DEPLOY",
            "FAILED_FIRST_DEPLOY",
        ]);
        check_enum::<CapacityType>(&["GROUP", "HOST"]);
    }

    #[test]
    fn unknown_variant_message_names_value_and_allowed() {
        let err = "FINISH".parse::<TagSyncState>().unwrap_err();
        assert_eq!(
            err.to_string(),
            "unknown TagSyncState value \"FINISH\"; expected one of: \
             INIT, PROCESSING, ERROR, FINISHED"
        );
    }

    #[test]
    fn deploy_stage_transitions() {
        let mut stage = DeployStage::Unknown;
        let mut walked = vec![stage];
        while let Some(next) = stage.next() {
            walked.push(next);
            stage = next;
        }
        assert_eq!(walked, DeployStage::ALL[..9]);
        assert_eq!(DeployStage::Stopping.next(), Some(DeployStage::Stopped));
        assert_eq!(DeployStage::Stopped.next(), None);
        assert_eq!(DeployStage::FIRST, DeployStage::Unknown.next().unwrap());
    }

    #[test]
    fn deploy_state_sets_and_final_map() {
        use DeployState::*;
        let active: Vec<_> = DeployState::ALL.iter().filter(|s| s.is_active()).collect();
        assert_eq!(active, [&Running, &Failing, &Succeeding]);
        let ongoing: Vec<_> = DeployState::ALL.iter().filter(|s| s.is_ongoing()).collect();
        assert_eq!(ongoing, [&Running, &Failing]);
        let finals: Vec<_> = DeployState::ALL.iter().filter(|s| s.is_final()).collect();
        assert_eq!(finals, [&Succeeded, &Aborted]);
        let mapped: Vec<_> = DeployState::ALL.iter().map(|s| s.final_state()).collect();
        assert_eq!(mapped, [Aborted, Aborted, Succeeded, Succeeded, Aborted]);
    }

    #[test]
    fn deploy_type_op_codes() {
        let ops: Vec<_> = DeployType::ALL.iter().map(|t| t.op_code()).collect();
        use OpCode::*;
        assert_eq!(ops, [Deploy, Deploy, Rollback, Restart, Stop]);
        let promotable: Vec<_> =
            DeployType::ALL.iter().filter(|t| t.is_auto_promotable()).copied().collect();
        assert_eq!(promotable, [DeployType::Regular, DeployType::Hotfix]);
        assert_eq!(OpCode::default(), OpCode::Noop);
    }

    #[test]
    fn status_and_type_predicates() {
        let fatal: Vec<_> = AgentStatus::ALL.iter().filter(|s| s.is_fatal()).copied().collect();
        use AgentStatus::*;
        assert_eq!(fatal, [AgentFailed, ScriptTimeout, TooManyRetry, RuntimeMismatch]);
        let final_acc: Vec<_> =
            AcceptanceStatus::ALL.iter().filter(|s| s.is_final()).copied().collect();
        use AcceptanceStatus::*;
        assert_eq!(final_acc, [Accepted, Rejected, Terminated]);
        let prod: Vec<_> = EnvType::ALL.iter().filter(|t| t.is_production()).copied().collect();
        assert_eq!(
            prod,
            [EnvType::Default, EnvType::Production, EnvType::Control, EnvType::Canary]
        );
        assert_eq!(EnvType::Dev.for_group_sharding(), EnvType::Latest);
        assert_eq!(EnvType::Staging.for_group_sharding(), EnvType::Latest);
        assert_eq!(EnvType::Canary.for_group_sharding(), EnvType::Canary);
        let ongoing: Vec<_> = HotfixState::ALL.iter().filter(|s| s.is_ongoing()).copied().collect();
        assert_eq!(ongoing, [HotfixState::Initial, HotfixState::Pushing, HotfixState::Building]);
        assert!(HostState::PendingTerminateNoReplace.is_pending_terminate());
        assert!(!HostState::Terminating.is_pending_terminate());
    }

    #[test]
    fn priority_values() {
        let values: Vec<_> = DeployPriority::ALL.iter().map(|p| p.value()).collect();
        assert_eq!(values, [3000, 2000, 4000, 1000, 5000]);
        assert_eq!((DeployPriority::HOTFIX_VALUE, DeployPriority::ROLLBACK_VALUE), (980, 990));
    }

    #[test]
    fn role_comparison_is_by_identity_or_greater_value() {
        use TeletraanPrincipalRole::*;
        assert!(Admin.is_equal_or_superior(ManageScriptToken));
        assert!(Operator.is_equal_or_superior(Write));
        assert!(Write.is_equal_or_superior(Write));
        assert!(!Write.is_equal_or_superior(Execute));
        assert!(!Pinger.is_equal_or_superior(Publisher));
        assert!(!Operator.is_equal_or_superior(ManageScriptToken));
        assert!(Reader.is_equal_or_superior(Read));
    }
}
