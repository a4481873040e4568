//! The agent's stage machine: the deterministic core. It takes the coordinator's answers and
//! the results of steps, keeps every env's status, and says what to do next; it does no IO and
//! reads no clock (time comes in as arguments). The daemon (`daemon.rs`) is the IO shell.
//!
//! Like Teletraan's agent it does not plan: the coordinator names one step of one env per ping,
//! the agent runs exactly that step and reports.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use proto::agent::{STAGE_LEASE_SHARE_PERCENT, STAGE_LEASE_TTL_CONFIG_KEY};
use proto::enums::{AgentStatus, DeployStage, EnvType, OpCode};
use proto::ping::{PingRequestBean, PingResponseBean};

use crate::hostinfo::HostInfo;
use crate::status::{BuildInfo, EnvStatus, EnvStatuses};

/// Steps before the new build is in place: a missing `teletraan/` directory is fine there (a
/// new host has no old build); later it is a broken tarball.
pub const PRE_STAGE_STEPS: [DeployStage; 4] = [
    DeployStage::PreDownload,
    DeployStage::Downloading,
    DeployStage::PostDownload,
    DeployStage::Staging,
];

/// How a step is carried out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StepKind {
    /// The user's hook script named after the step, if the build has one.
    Hook,
    /// Built in: fetch, verify and extract the build.
    Download(BuildInfo),
    /// Built in: switch the service symlink to the build and render templates.
    Stage { build_id: String },
}

/// One step to run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Step {
    pub env: String,
    pub stage: DeployStage,
    pub op_code: OpCode,
    pub kind: StepKind,
    /// `Some(vars)`: rewrite the env's script config file (empty: delete it). `None`: leave it.
    pub script_config: Option<BTreeMap<String, String>>,
}

/// What the agent should do after an answer from the coordinator.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Nothing to do: wait for the next goal (long-poll).
    Idle,
    Run(Step),
    /// The host left the env's capacity: forget it (and clean up what it left).
    Delete {
        env: String,
    },
    /// The goal cannot be run as given; report this failure for `env` (AGENT_FAILED).
    Reject {
        env: String,
        message: String,
    },
}

/// The outcome of a step, as the executor or a built-in step reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StepResult {
    pub status: AgentStatus,
    pub error_code: i32,
    pub message: Option<String>,
    pub fail_count: i32,
}

impl StepResult {
    pub fn succeeded(fail_count: i32) -> Self {
        Self { status: AgentStatus::Succeeded, error_code: 0, message: None, fail_count }
    }
    pub fn agent_failed(message: impl Into<String>) -> Self {
        Self {
            status: AgentStatus::AgentFailed,
            error_code: 1,
            message: Some(message.into()),
            fail_count: 1,
        }
    }
}

/// Teletraan's `plan_changed`: whether a heartbeat's answer differs from the goal being run
/// (op code, deploy or step). A NOOP while a step runs (env paused, host paused) counts as a
/// change and aborts the step, as in Teletraan.
pub fn plan_changed(old: &PingResponseBean, new: &PingResponseBean) -> bool {
    if old.op_code != new.op_code {
        return true;
    }
    match (&old.deploy_goal, &new.deploy_goal) {
        (None, None) => false,
        (None, Some(_)) | (Some(_), None) => true,
        (Some(a), Some(b)) => a.deploy_id != b.deploy_id || a.deploy_stage != b.deploy_stage,
    }
}

/// Whether an answer received at `received_ms` may still start a step at `now_ms`: the agent
/// honours its parallelism lease and never acts on a goal older than the lease.
pub fn lease_allows(received_ms: u64, now_ms: u64, lease_ms: u64) -> bool {
    now_ms.saturating_sub(received_ms) < lease_ms
}

/// The lease the agent counts on for a goal: its own `lease_ms`, or less when the goal's
/// stage sets a shorter lease TTL on the coordinators ([`STAGE_LEASE_TTL_CONFIG_KEY`]): then
/// [`STAGE_LEASE_SHARE_PERCENT`] of that TTL, so the agent stops starting steps before the
/// coordinators give its slot away.
pub fn effective_lease_ms(lease_ms: u64, goal: &PingResponseBean) -> u64 {
    let stage_ttl = goal
        .deploy_goal
        .as_ref()
        .and_then(|g| g.agent_configs.as_ref())
        .and_then(|c| c.get(STAGE_LEASE_TTL_CONFIG_KEY))
        .and_then(|v| proto::agent::parse_stage_lease_ttl_ms(v));
    match stage_ttl {
        Some(ttl) => lease_ms.min(ttl * STAGE_LEASE_SHARE_PERCENT / 100),
        None => lease_ms,
    }
}

/// Teletraan's `DEPLOY_TYPE` for an op code (HOTFIX shows as REGULAR, as in Teletraan).
pub fn deploy_type_var(op: OpCode) -> &'static str {
    match op {
        OpCode::Restart => "RESTART",
        OpCode::Rollback => "ROLLBACK",
        OpCode::Stop => "STOP",
        _ => "REGULAR",
    }
}

/// The stage machine's state: every env's status.
#[derive(Clone, Debug, Default)]
pub struct Machine {
    pub envs: EnvStatuses,
}

impl Machine {
    pub fn new(envs: EnvStatuses) -> Self {
        Self { envs }
    }

    /// The ping for this host: one report per env the agent knows.
    pub fn ping_request(&self, host: &HostInfo) -> PingRequestBean {
        let mut req = host.ping_request();
        req.reports = self.envs.values().map(|s| s.report.to_ping_report()).collect();
        req
    }

    /// Takes the coordinator's answer and says what to do. Updates the env's status to the new
    /// goal (status UNKNOWN) when it names a step.
    pub fn on_response(&mut self, resp: &PingResponseBean) -> Action {
        let Some(goal) = &resp.deploy_goal else { return Action::Idle };
        match resp.op_code {
            // WAIT is never sent by Teletraan; its agent would have run it (quirk 8). We wait.
            OpCode::Noop | OpCode::Wait => return Action::Idle,
            OpCode::Delete => {
                let env = goal.env_name.clone().or_else(|| {
                    self.envs
                        .iter()
                        .find(|(_, s)| s.report.env_id.is_some() && s.report.env_id == goal.env_id)
                        .map(|(name, _)| name.clone())
                });
                return match env {
                    Some(env) if self.envs.contains_key(&env) => Action::Delete { env },
                    // Nothing known about it: nothing to forget (Teletraan crashed: quirk 17).
                    _ => Action::Idle,
                };
            }
            OpCode::Deploy | OpCode::Restart | OpCode::Rollback | OpCode::Stop => {}
        }
        let Some(env) = goal.env_name.clone().filter(|e| !e.is_empty()) else {
            return Action::Idle;
        };
        let Some(stage) = goal.deploy_stage else {
            return Action::Reject { env, message: "the goal names no deployStage".into() };
        };
        let st = self.envs.entry(env.clone()).or_default();
        st.op_code = Some(resp.op_code);
        st.report.env_id = goal.env_id.clone();
        st.report.deploy_id = goal.deploy_id.clone();
        st.report.deploy_alias = goal.deploy_alias.clone();
        st.report.deploy_stage = Some(stage);
        st.report.env_name = Some(env.clone());
        st.report.stage_name = goal.stage_name.clone();
        st.report.stage_type = goal.stage_type;
        st.report.status = Some(AgentStatus::Unknown);
        st.report.error_code = Some(0);
        st.report.error_message = None;
        st.report.fail_count = Some(0);
        st.report.state = None;
        if let Some(build) = &goal.build {
            st.build_info = Some(BuildInfo::from_bean(build));
        }
        if let Some(vars) = &goal.script_variables {
            st.script_variables = vars.clone();
        }
        // Replaced on every goal: a config removed on the server is removed here (quirk 7).
        st.runtime_config = goal.agent_configs.clone().unwrap_or_default();
        if let Some(first) = goal.first_deploy {
            st.first_deploy = first;
        }
        if let Some(docker) = goal.is_docker {
            st.is_docker = docker;
        }
        let kind = match stage {
            DeployStage::Downloading => match &st.build_info {
                Some(b) if b.build_id.is_some() && b.build_url.is_some() => {
                    StepKind::Download(b.clone())
                }
                _ => {
                    return Action::Reject {
                        env,
                        message: "DOWNLOADING goal without a build (id and artifactUrl)".into(),
                    };
                }
            },
            DeployStage::Staging => match st.build_info.as_ref().and_then(|b| b.build_id.clone()) {
                Some(build_id) => StepKind::Stage { build_id },
                None => {
                    return Action::Reject {
                        env,
                        message: "STAGING goal but no build was downloaded for this deploy".into(),
                    };
                }
            },
            DeployStage::Unknown => {
                return Action::Reject { env, message: "the goal's deployStage is UNKNOWN".into() };
            }
            _ => StepKind::Hook,
        };
        Action::Run(Step {
            env,
            stage,
            op_code: resp.op_code,
            kind,
            script_config: goal.script_variables.clone(),
        })
    }

    /// Records the outcome of `env`'s current step. An aborted step is reported as UNKNOWN
    /// (the coordinator re-sends the step if it still wants it).
    pub fn record(&mut self, env: &str, result: &StepResult) {
        let Some(st) = self.envs.get_mut(env) else { return };
        st.report.status = Some(result.status);
        st.report.error_code = Some(result.error_code);
        st.report.error_message =
            if result.status == AgentStatus::Succeeded { None } else { result.message.clone() };
        st.report.fail_count = Some(result.fail_count);
    }

    /// The in-progress report during a running step (heartbeats).
    pub fn progress(&mut self, env: &str, status: AgentStatus, fail_count: i32) {
        if let Some(st) = self.envs.get_mut(env) {
            st.report.status = Some(status);
            st.report.fail_count = Some(fail_count);
        }
    }

    pub fn forget(&mut self, env: &str) -> Option<EnvStatus> {
        self.envs.remove(env)
    }

    /// Every build id any env refers to (never cleaned up).
    pub fn builds_in_use(&self) -> BTreeSet<String> {
        self.envs.values().filter_map(|s| s.build_info.as_ref()?.build_id.clone()).collect()
    }

    /// The service symlink of `env`: the goal's `target` agent config, else
    /// `<target_default_dir>/<env>`.
    pub fn target(&self, env: &str, default_dir: &Path) -> PathBuf {
        self.envs
            .get(env)
            .and_then(|s| s.runtime_config.get("target"))
            .filter(|t| !t.trim().is_empty())
            .map(PathBuf::from)
            .unwrap_or_else(|| default_dir.join(env))
    }

    /// The environment contract of Teletraan's hooks (§A.3.3) for `env`'s current step.
    /// Script variables come first; the built-in names win over a script variable of the same
    /// name.
    pub fn hook_env(
        &self,
        env: &str,
        target: &Path,
        builds_dir: &Path,
    ) -> BTreeMap<String, String> {
        let mut vars = BTreeMap::new();
        let Some(st) = self.envs.get(env) else { return vars };
        vars.extend(st.script_variables.clone());
        let r = &st.report;
        let mut set = |k: &str, v: Option<String>| {
            if let Some(v) = v {
                vars.insert(k.to_string(), v);
            }
        };
        set("DEPLOY_ID", r.deploy_id.as_ref().map(|d| d.as_str().to_string()));
        set("DEPLOY_STEP", r.deploy_stage.map(|s| s.as_str().to_string()));
        let op = st.op_code.unwrap_or(OpCode::Noop);
        set("OPCODE", Some(op.as_str().to_string()));
        set("DEPLOY_TYPE", Some(deploy_type_var(op).to_string()));
        set("ENV_NAME", r.env_name.clone());
        set("STAGE_NAME", r.stage_name.clone());
        set(
            "COMPUTE_ENV_TYPE",
            r.stage_type.map(|t| {
                if t == EnvType::Default { "PRODUCTION".into() } else { t.as_str().to_string() }
            }),
        );
        set("FIRST_DEPLOY", st.first_deploy.then(|| "True".to_string()));
        set("IS_DOCKER", st.is_docker.then(|| "True".to_string()));
        set("TARGET", Some(target.display().to_string()));
        set("BUILDS_DIR", Some(builds_dir.display().to_string()));
        if let Some(b) = &st.build_info {
            set("BUILD_COMMIT", b.build_commit.clone());
            set("BUILD_NAME", b.build_name.clone());
            set("BUILD_REPO", b.build_repo.clone());
            set("BUILD_BRANCH", b.build_branch.clone());
            set("BUILD_ID", b.build_id.clone());
            set("BUILD_URL", b.build_url.clone());
        }
        vars
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::beans::BuildBean;
    use proto::ids::{BuildId, DeployId, EnvId};
    use proto::ping::DeployGoalBean;

    fn goal(op: OpCode, deploy: &str, stage: DeployStage) -> PingResponseBean {
        PingResponseBean {
            op_code: op,
            deploy_goal: Some(DeployGoalBean {
                deploy_id: Some(DeployId::new(deploy)),
                env_id: Some(EnvId::new("E1")),
                env_name: Some("web".into()),
                stage_name: Some("prod".into()),
                stage_type: Some(EnvType::Default),
                deploy_stage: Some(stage),
                ..Default::default()
            }),
        }
    }

    fn host() -> HostInfo {
        HostInfo { host_id: "h1".into(), hostname: "h1".into(), ..Default::default() }
    }

    #[test]
    fn a_deploy_walks_the_steps_the_coordinator_names() {
        let mut m = Machine::default();
        assert!(m.ping_request(&host()).reports.is_empty(), "a new host reports nothing");

        let mut pre = goal(OpCode::Deploy, "D1", DeployStage::PreDownload);
        pre.deploy_goal.as_mut().unwrap().script_variables =
            Some([("PORT".to_string(), "8080".to_string())].into());
        let Action::Run(step) = m.on_response(&pre) else { panic!("runs PRE_DOWNLOAD") };
        assert_eq!((step.stage, step.kind.clone()), (DeployStage::PreDownload, StepKind::Hook));
        assert_eq!(step.script_config.as_ref().unwrap()["PORT"], "8080");
        assert_eq!(m.envs["web"].report.status, Some(AgentStatus::Unknown));
        m.record("web", &StepResult::succeeded(0));
        let req = m.ping_request(&host());
        assert_eq!(req.reports[0].deploy_stage, Some(DeployStage::PreDownload));
        assert_eq!(req.reports[0].agent_status, Some(AgentStatus::Succeeded));

        let mut dl = goal(OpCode::Deploy, "D1", DeployStage::Downloading);
        dl.deploy_goal.as_mut().unwrap().build = Some(BuildBean {
            id: Some(BuildId::new("B1")),
            artifact_url: Some("file:///x.tar.gz".into()),
            artifact_blake3: Some("ab".repeat(32)),
            ..Default::default()
        });
        let Action::Run(step) = m.on_response(&dl) else { panic!("runs DOWNLOADING") };
        let StepKind::Download(b) = step.kind else { panic!("built-in download") };
        assert_eq!(b.build_blake3, Some("ab".repeat(32)));
        assert_eq!(step.script_config, None, "variables untouched when the goal has none");
        assert_eq!(m.envs["web"].script_variables["PORT"], "8080", "kept (Teletraan lost them)");

        let Action::Run(step) = m.on_response(&goal(OpCode::Deploy, "D1", DeployStage::Staging))
        else {
            panic!("runs STAGING")
        };
        assert_eq!(step.kind, StepKind::Stage { build_id: "B1".into() });

        let env = m.hook_env("web", Path::new("/srv/web"), Path::new("/b"));
        assert_eq!(env["DEPLOY_ID"], "D1");
        assert_eq!(env["DEPLOY_STEP"], "STAGING");
        assert_eq!(env["DEPLOY_TYPE"], "REGULAR");
        assert_eq!(env["COMPUTE_ENV_TYPE"], "PRODUCTION");
        assert_eq!(env["BUILD_ID"], "B1");
        assert_eq!(env["TARGET"], "/srv/web");
        assert_eq!(env["PORT"], "8080");
        assert!(!env.contains_key("FIRST_DEPLOY"));

        m.record("web", &StepResult::agent_failed("boom"));
        let r = &m.ping_request(&host()).reports[0];
        assert_eq!(r.agent_status, Some(AgentStatus::AgentFailed));
        assert_eq!(r.error_message.as_deref(), Some("boom"));
    }

    #[test]
    fn noop_wait_delete_and_bad_goals() {
        let mut m = Machine::default();
        assert_eq!(m.on_response(&PingResponseBean::default()), Action::Idle);
        assert_eq!(
            m.on_response(&goal(OpCode::Wait, "D1", DeployStage::PreDownload)),
            Action::Idle
        );
        assert_eq!(
            m.on_response(&goal(OpCode::Delete, "D1", DeployStage::PreDownload)),
            Action::Idle,
            "deleting an env the agent does not know is nothing"
        );
        let Action::Reject { .. } =
            m.on_response(&goal(OpCode::Deploy, "D1", DeployStage::Staging))
        else {
            panic!("STAGING without a build is refused")
        };
        assert!(matches!(
            m.on_response(&goal(OpCode::Deploy, "D1", DeployStage::Downloading)),
            Action::Reject { .. }
        ));
        let mut del = goal(OpCode::Delete, "D1", DeployStage::PreDownload);
        del.deploy_goal.as_mut().unwrap().env_name = None;
        assert_eq!(m.on_response(&del), Action::Delete { env: "web".into() }, "found by env id");
        m.forget("web");
        assert!(m.ping_request(&host()).reports.is_empty());
    }

    #[test]
    fn agent_configs_are_replaced_and_target_follows_them() {
        let mut m = Machine::default();
        let mut g = goal(OpCode::Restart, "D1", DeployStage::PreDownload);
        g.deploy_goal.as_mut().unwrap().agent_configs =
            Some([("target".to_string(), "/srv/custom".to_string())].into());
        m.on_response(&g);
        assert_eq!(m.target("web", Path::new("/tmp")), PathBuf::from("/srv/custom"));
        assert_eq!(m.hook_env("web", Path::new("/x"), Path::new("/b"))["DEPLOY_TYPE"], "RESTART");
        m.on_response(&goal(OpCode::Restart, "D1", DeployStage::PostDownload));
        assert_eq!(m.target("web", Path::new("/tmp")), PathBuf::from("/tmp/web"), "quirk 7 fixed");
    }

    #[test]
    fn plan_changes_and_leases() {
        let a = goal(OpCode::Deploy, "D1", DeployStage::Restarting);
        assert!(!plan_changed(&a, &a.clone()));
        assert!(plan_changed(&a, &goal(OpCode::Deploy, "D1", DeployStage::PostRestart)));
        assert!(plan_changed(&a, &goal(OpCode::Deploy, "D2", DeployStage::Restarting)));
        assert!(plan_changed(&a, &goal(OpCode::Rollback, "D1", DeployStage::Restarting)));
        assert!(plan_changed(&a, &PingResponseBean::default()), "a pause aborts the step");
        assert!(lease_allows(1_000, 2_000, 5_000));
        assert!(!lease_allows(1_000, 6_000, 5_000));
        // A stage with a shorter lease TTL on the coordinators: 80% of it; a longer one or a
        // malformed value changes nothing.
        let with = |v: &str| PingResponseBean {
            deploy_goal: Some(proto::ping::DeployGoalBean {
                agent_configs: Some(
                    [(STAGE_LEASE_TTL_CONFIG_KEY.to_string(), v.to_string())].into(),
                ),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(effective_lease_ms(240_000, &with("10000")), 8_000);
        assert_eq!(effective_lease_ms(240_000, &with("600000")), 240_000);
        assert_eq!(effective_lease_ms(240_000, &with("soon")), 240_000);
        assert_eq!(effective_lease_ms(240_000, &PingResponseBean::default()), 240_000);
    }
}
