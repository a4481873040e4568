//! Teletraan's deploy semantics over the replicated state: capacity, deploy creation, the ping
//! (GoalAnalyst, candidate ordering, admission) and the deploy-state transition.
//!
//! Everything here is deterministic: time is the `now_ms` argument, and iteration is over
//! ordered maps. The ping is one pure function, [`State::plan_ping`], that computes the
//! response and the writes it implies from the state as it is. The leader runs it on its applied
//! state: a plan with no writes is answered at once and touches no log ("pings that change
//! nothing write nothing"); otherwise the ping is proposed and `apply` runs the same function
//! again on the state it then holds, so admission is an atomic compare-and-increment.

use std::collections::{BTreeMap, BTreeSet};

use proto::beans::{AgentBean, DeployBean, EnvironBean, SYSTEM_OPERATOR};
use proto::command::{OpError, OpOutput, OpResult};
use proto::enums::{
    AcceptanceStatus, AcceptanceType, AgentState, AgentStatus, DeployPriority, DeployStage,
    DeployState, DeployType, EnvState, OpCode, WebhookPhase,
};
use proto::ids::{DeployId, EnvId, HostId};
use proto::ping::{DeployGoalBean, PingReportBean, PingRequestBean, PingResponseBean};
use serde::{Deserialize, Serialize};

use super::{Key, State};

/// Group name recorded for a host that reports none (Teletraan's `"NULL"`).
pub const NULL_GROUP: &str = "NULL";
/// Global cap on hosts of one stage deploying at once (Teletraan's `maxParallelThreshold`).
pub const GLOBAL_MAX_PARALLEL: u32 = 10_000;
/// Most hosts or groups one capacity list may hold.
pub const MAX_CAPACITY_ENTRIES: usize = 100_000;

/// What a host told us about itself, as last recorded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostRecord {
    pub host_id: HostId,
    pub ip: Option<String>,
    pub groups: BTreeSet<String>,
    pub agent_version: Option<String>,
    /// When the host last pinged, as last replicated by the leader ([`Op::RecordLiveness`]);
    /// the leader's memory is fresher.
    pub last_seen_ms: Option<i64>,
}

/// Which hosts belong to a stage: by name and by group.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Capacity {
    pub hosts: BTreeSet<String>,
    pub groups: BTreeSet<String>,
}

/// Per-stage counts with Teletraan's predicates (`canDeploy`), maintained incrementally.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StageCounters {
    /// Agent rows not on their first deploy.
    pub existing: u32,
    /// Rows "deploying": not at SERVING_BUILD, not paused by the user, not a first deploy, not
    /// UNREACHABLE (its lease expired); or stopping (state STOP, not yet STOPPED). Failed hosts
    /// (PAUSED_BY_SYSTEM) keep their slot.
    pub active: u32,
}

/// The current deploy's progress on a stage, maintained like [`StageCounters`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Progress {
    /// All agent rows of the stage (any deploy).
    pub total: u32,
    /// Rows of the current deploy at SERVING_BUILD or STOPPED, not paused by the user.
    pub succeeded: u32,
    /// Rows of the current deploy that failed fatally (PAUSED_BY_SYSTEM).
    pub stuck: u32,
    /// Rows on the current deploy (admitted to it): what a schedule's session caps.
    pub on_deploy: u32,
    /// Rows finished for the current deploy ([`super::schedule::finished_on`]): what ends a
    /// schedule's session.
    pub finished: u32,
}

/// This row's contribution to its stage's [`Progress`] for the stage's current deploy.
pub fn progress_contribution(a: &AgentBean, current: Option<&DeployId>) -> Progress {
    let mine = current.is_some() && a.deploy_id.as_ref() == current;
    let state = a.state.unwrap_or(AgentState::Normal);
    let done = matches!(a.deploy_stage, Some(DeployStage::ServingBuild | DeployStage::Stopped))
        && state != AgentState::PausedByUser;
    Progress {
        total: 1,
        succeeded: u32::from(mine && done),
        stuck: u32::from(mine && state == AgentState::PausedBySystem),
        on_deploy: u32::from(mine),
        finished: u32::from(super::schedule::finished_on(a, current)),
    }
}

/// This row's contribution to its stage's counters.
pub fn contribution(a: &AgentBean) -> StageCounters {
    let first = a.first_deploy.unwrap_or(false);
    let state = a.state.unwrap_or(AgentState::Normal);
    let stage = a.deploy_stage.unwrap_or(DeployStage::Unknown);
    // Quirk fixed: Teletraan counts STOPPED hosts until its terminator deletes their rows; a
    // stopped host here holds no slot.
    let stopped = state == AgentState::Stop && stage == DeployStage::Stopped;
    let deploying = ((stage != DeployStage::ServingBuild
        && !matches!(state, AgentState::PausedByUser | AgentState::Unreachable)
        && !first)
        || state == AgentState::Stop)
        && !stopped;
    StageCounters { existing: u32::from(!first), active: u32::from(deploying) }
}

/// Whether the row is stopping work: STOP, or a stop that failed (PAUSED_BY_SYSTEM at
/// STOPPING). Such rows bypassed admission (Teletraan's rule): they take slots from the
/// rollout but are not bound by the limit, and a host action that turns one back into a
/// deploying row needs a free slot like a resume.
pub fn is_stop_work(a: &AgentBean) -> bool {
    a.state == Some(AgentState::Stop)
        || (a.state == Some(AgentState::PausedBySystem)
            && a.deploy_stage == Some(DeployStage::Stopping))
}

/// `finalMaxParallel`: the stage's parallelism limit for `existing` hosts.
///
/// Quirk fixed: Teletraan clamps the limit to `existing`, which is 0 for a stage whose only
/// hosts are on their first deploy and then blocks every other host; we keep at least 1.
pub fn max_parallel(env: &EnvironBean, existing: u32) -> u32 {
    let num = env.max_parallel.unwrap_or(0).max(0) as u32;
    let pct = env.max_parallel_pct.unwrap_or(0).clamp(0, 100) as u32;
    let by_pct = (u64::from(existing) * u64::from(pct) / 100) as u32;
    let limit = match (num > 0, pct > 0) {
        (true, false) => num,
        (false, true) => by_pct,
        (true, true) => num.min(by_pct),
        (false, false) => 1,
    };
    limit.clamp(1, existing.max(1)).min(GLOBAL_MAX_PARALLEL)
}

/// An agent row to write (`Some`) or delete (`None`), keyed by stage and host.
pub type AgentWrite = ((EnvId, HostId), Option<AgentBean>);

/// The outcome of a ping: the answer, and what must be written for it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PingPlan {
    pub response: PingResponseBean,
    pub host: Option<(String, HostRecord)>,
    pub agents: Vec<AgentWrite>,
    /// The stage whose parallelism limit kept this host waiting, if any.
    pub waiting_for_slot: Option<EnvId>,
    /// Every stage this ping concerns (capacity, agent rows, reports): what a held ping waits on.
    pub stages: BTreeSet<EnvId>,
    /// New error output reported for (stage, host name).
    pub errors: Vec<((EnvId, String), String)>,
    /// Every install candidate's answer, in candidate order, each with its build (only when
    /// planned by [`State::deploy_candidates`]).
    pub candidates: Vec<PingResponseBean>,
    /// The ping changes a host tag (a constraint's key); `apply` writes it before planning.
    pub tags: bool,
    /// The stage this ping admits the host to: it leaves steady state and takes a slot.
    pub admitted: Option<EnvId>,
}

impl PingPlan {
    /// Whether this ping changes nothing (and so needs no Raft entry).
    pub fn is_read_only(&self) -> bool {
        self.host.is_none() && self.agents.is_empty() && self.errors.is_empty() && !self.tags
    }
}

#[derive(Debug, Clone)]
struct Candidate {
    env_id: EnvId,
    bean: AgentBean,
    need_wait: bool,
    priority: i32,
    report: Option<PingReportBean>,
}

fn is_first_deploy(
    agent: Option<&AgentBean>,
    env_name: &str,
    host_env_names: &BTreeSet<String>,
) -> bool {
    match agent {
        None => !host_env_names.contains(env_name),
        Some(a) => a.first_deploy.unwrap_or(false),
    }
}

fn priority(env: &EnvironBean, first_deploy: bool) -> i32 {
    if let Some(p) = env.system_priority {
        return p;
    }
    let env_priority = env.priority.unwrap_or(DeployPriority::Normal).value();
    if first_deploy {
        return env_priority;
    }
    match env.deploy_type {
        None => DeployPriority::Normal.value(),
        Some(DeployType::Hotfix) => DeployPriority::HOTFIX_VALUE,
        Some(DeployType::Rollback) => DeployPriority::ROLLBACK_VALUE,
        Some(_) => env_priority,
    }
}

/// `proposeNewAgentState`.
fn propose_state(report: &PingReportBean, agent: Option<&AgentBean>) -> AgentState {
    let status = report.agent_status.unwrap_or(AgentStatus::Unknown);
    if let Some(a) = agent {
        if report.agent_state.as_deref() == Some("RESET_BY_SYSTEM") {
            return AgentState::ResetBySystem;
        }
        match a.state.unwrap_or(AgentState::Normal) {
            AgentState::Stop => {
                return if report.deploy_stage == Some(DeployStage::Stopping) && status.is_fatal() {
                    AgentState::PausedBySystem
                } else {
                    AgentState::Stop
                };
            }
            s @ (AgentState::PausedByUser | AgentState::Reset | AgentState::ResetBySystem) => {
                return s;
            }
            // A host whose lease expired holds no slot; it stays UNREACHABLE until it is
            // admitted again (or reports steady state, which needs no slot).
            AgentState::Unreachable if report.deploy_stage != Some(DeployStage::ServingBuild) => {
                return AgentState::Unreachable;
            }
            _ => {}
        }
    }
    if status == AgentStatus::Succeeded {
        AgentState::Normal
    } else if status.is_fatal() {
        AgentState::PausedBySystem
    } else {
        agent.and_then(|a| a.state).unwrap_or(AgentState::Normal)
    }
}

/// Longest error output kept per (stage, host); longer reports keep their end.
pub const MAX_AGENT_ERROR_BYTES: usize = 16 * 1024;

/// The last [`MAX_AGENT_ERROR_BYTES`] of `message`, cut at a character boundary.
fn error_tail(message: &str) -> &str {
    let mut start = message.len().saturating_sub(MAX_AGENT_ERROR_BYTES);
    while !message.is_char_boundary(start) {
        start += 1;
    }
    &message[start..]
}

/// `genUpdateBeanByReport`.
fn bean_from_report(
    now: i64,
    host: &str,
    host_id: &HostId,
    report: &PingReportBean,
    agent: Option<&AgentBean>,
) -> AgentBean {
    let state = propose_state(report, agent);
    let mut bean = AgentBean {
        host_id: Some(host_id.clone()),
        host_name: Some(host.to_string()),
        env_id: report.env_id.clone(),
        deploy_id: report.deploy_id.clone(),
        deploy_stage: report.deploy_stage,
        state: Some(state),
        status: report.agent_status,
        start_date: Some(agent.and_then(|a| a.start_date).unwrap_or(now)),
        last_update_date: Some(now),
        last_operator: Some(SYSTEM_OPERATOR.to_string()),
        last_errno: Some(report.error_code.unwrap_or(0)),
        fail_count: Some(report.fail_count.unwrap_or(0)),
        first_deploy: Some(agent.and_then(|a| a.first_deploy).unwrap_or(false)),
        first_deploy_date: agent.and_then(|a| a.first_deploy_date),
        stage_start_date: Some(now),
        container_health_status: Some(report.container_health_status.clone().unwrap_or_default()),
    };
    if bean.first_deploy == Some(true)
        && (report.deploy_stage == Some(DeployStage::ServingBuild)
            || state == AgentState::PausedBySystem)
    {
        bean.first_deploy = Some(false);
        bean.first_deploy_date = Some(now);
    }
    bean
}

/// `shouldUpdateAgentRecord`: false when nothing that matters changed.
fn differs(old: Option<&AgentBean>, new: &AgentBean) -> bool {
    let Some(old) = old else { return true };
    old.host_id != new.host_id
        || old.deploy_id != new.deploy_id
        || old.env_id != new.env_id
        || old.fail_count != new.fail_count
        || old.status != new.status
        || old.last_errno != new.last_errno
        || old.state != new.state
        || old.deploy_stage != new.deploy_stage
        || old.container_health_status != new.container_health_status
        || old.first_deploy != new.first_deploy
}

/// `genNewUpdateBean`: start `env`'s current deploy on this host at PRE_DOWNLOAD.
fn new_deploy_bean(
    now: i64,
    host: &str,
    host_id: &HostId,
    env: &EnvironBean,
    agent: Option<&AgentBean>,
    first: bool,
) -> AgentBean {
    AgentBean {
        host_id: Some(host_id.clone()),
        host_name: Some(host.to_string()),
        env_id: env.id.clone(),
        deploy_id: env.deploy_id.clone(),
        deploy_stage: Some(DeployStage::PreDownload),
        state: Some(AgentState::Normal),
        status: Some(AgentStatus::Unknown),
        start_date: Some(now),
        last_update_date: Some(now),
        last_operator: Some(SYSTEM_OPERATOR.to_string()),
        last_errno: Some(0),
        fail_count: Some(0),
        first_deploy: Some(first),
        first_deploy_date: agent.and_then(|a| a.first_deploy_date),
        stage_start_date: Some(now),
        container_health_status: agent.and_then(|a| a.container_health_status.clone()),
    }
}

/// `genAgentStopBean` / the next stop stage: the row at `stage` (STOPPING or STOPPED), state STOP.
fn stop_bean(now: i64, row: &AgentBean, env: &EnvironBean, stage: DeployStage) -> AgentBean {
    AgentBean {
        deploy_id: env.deploy_id.clone(),
        deploy_stage: Some(stage),
        state: Some(AgentState::Stop),
        status: Some(AgentStatus::Unknown),
        last_update_date: Some(now),
        last_operator: Some(SYSTEM_OPERATOR.to_string()),
        last_errno: Some(0),
        fail_count: Some(0),
        stage_start_date: Some(now),
        ..row.clone()
    }
}

impl State {
    // ----- queries -------------------------------------------------------------------------

    pub fn agent(&self, env: &EnvId, host: &HostId) -> Option<&AgentBean> {
        self.agents.get(&(env.clone(), host.clone()))
    }

    /// Agent rows of one stage, by host id.
    pub fn agents_of(&self, env: &EnvId) -> impl Iterator<Item = &AgentBean> {
        let lo = (env.clone(), HostId::new(""));
        self.agents.range(lo..).take_while(move |((e, _), _)| e == env).map(|(_, a)| a)
    }

    /// The last error output `host` reported on stage `env` (Teletraan's `agent_errors`).
    pub fn agent_error(&self, env: &EnvId, host: &str) -> Option<&str> {
        self.agent_errors.get(&(env.clone(), host.to_string())).map(String::as_str)
    }

    pub fn capacity(&self, env: &EnvId) -> Capacity {
        self.capacity.get(env).cloned().unwrap_or_default()
    }

    pub fn host(&self, name: &str) -> Option<&HostRecord> {
        self.hosts.get(name)
    }

    pub fn counters(&self, env: &EnvId) -> StageCounters {
        self.counters.get(env).copied().unwrap_or_default()
    }

    pub fn progress(&self, env: &EnvId) -> Progress {
        self.progress.get(env).copied().unwrap_or_default()
    }

    /// [`Progress`] recomputed from scratch.
    pub fn recount_progress(&self, env: &EnvId) -> Progress {
        let current = self.envs.get(env).and_then(|e| e.deploy_id.clone());
        self.agents_of(env).map(|a| progress_contribution(a, current.as_ref())).fold(
            Progress::default(),
            |acc, p| Progress {
                total: acc.total + p.total,
                succeeded: acc.succeeded + p.succeeded,
                stuck: acc.stuck + p.stuck,
                on_deploy: acc.on_deploy + p.on_deploy,
                finished: acc.finished + p.finished,
            },
        )
    }

    /// Counters recomputed from scratch (the naive recount the incremental ones must equal).
    pub fn recount(&self, env: &EnvId) -> StageCounters {
        self.agents_of(env).map(contribution).fold(StageCounters::default(), |acc, c| {
            StageCounters { existing: acc.existing + c.existing, active: acc.active + c.active }
        })
    }

    /// Every stage a ping concerns: by capacity, by agent row and by report.
    fn ping_stages(&self, req: &PingRequestBean) -> BTreeSet<EnvId> {
        let host = req
            .host_name
            .clone()
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| req.host_id.to_string());
        let mut groups = req.groups.clone();
        if groups.is_empty() {
            groups.insert(NULL_GROUP.to_string());
        }
        let mut ids: BTreeSet<EnvId> = self.stages_for_host(&host, &groups).into_keys().collect();
        ids.extend(
            self.agents_by_host
                .get(&host)
                .into_iter()
                .flatten()
                .filter(|(_, h)| *h == req.host_id)
                .map(|k| k.0.clone()),
        );
        ids.extend(req.reports.iter().filter_map(|r| r.env_id.clone()));
        ids
    }

    /// Stages whose capacity includes `host` by name or one of `groups` (Teletraan's tiers:
    /// a stage found by host name wins over one of the same env found by group).
    fn stages_for_host(
        &self,
        host: &str,
        groups: &BTreeSet<String>,
    ) -> BTreeMap<EnvId, &EnvironBean> {
        let mut by_env_name: BTreeMap<String, EnvId> = BTreeMap::new();
        let by_host = self.capacity_by_host.get(host).into_iter().flatten();
        let by_group = groups.iter().filter_map(|g| self.capacity_by_group.get(g)).flatten();
        for id in by_host.chain(by_group) {
            if let Some(env) = self.envs.get(id)
                && let Some(name) = &env.env_name
            {
                by_env_name.entry(name.clone()).or_insert_with(|| id.clone());
            }
        }
        by_env_name.into_values().filter_map(|id| Some((id.clone(), self.envs.get(&id)?))).collect()
    }

    // ----- writes (called from apply) ---------------------------------------------------------

    /// Writes or deletes an agent row, keeping the counters and the host index in step.
    pub(super) fn put_agent(&mut self, key: (EnvId, HostId), row: Option<AgentBean>) {
        let old = match &row {
            Some(r) => self.agents.insert(key.clone(), r.clone()),
            None => self.agents.remove(&key),
        };
        let current = self.envs.get(&key.0).and_then(|e| e.deploy_id.clone());
        let p = self.progress.entry(key.0.clone()).or_default();
        if let Some(old) = &old {
            let o = progress_contribution(old, current.as_ref());
            p.total -= o.total;
            p.succeeded -= o.succeeded;
            p.stuck -= o.stuck;
            p.on_deploy -= o.on_deploy;
            p.finished -= o.finished;
        }
        if let Some(new) = &row {
            let n = progress_contribution(new, current.as_ref());
            p.total += n.total;
            p.succeeded += n.succeeded;
            p.stuck += n.stuck;
            p.on_deploy += n.on_deploy;
            p.finished += n.finished;
        }
        let c = self.counters.entry(key.0.clone()).or_default();
        if let Some(old) = &old {
            let o = contribution(old);
            c.existing -= o.existing;
            c.active -= o.active;
            if let Some(name) = &old.host_name
                && let Some(keys) = self.agents_by_host.get_mut(name)
            {
                keys.remove(&key);
                if keys.is_empty() {
                    self.agents_by_host.remove(name);
                }
            }
        }
        if let Some(new) = &row {
            let n = contribution(new);
            c.existing += n.existing;
            c.active += n.active;
        }
        if old.as_ref().is_some_and(|o| {
            contribution(o).active > row.as_ref().map_or(0, |r| contribution(r).active)
        }) {
            // A slot was freed: one host waiting on this stage may be admitted now.
            *self.freed.entry(key.0.clone()).or_default() += 1;
        }
        // Derived maps hold no all-zero entries, so a reloaded state compares equal.
        if *c == StageCounters::default() {
            self.counters.remove(&key.0);
        }
        if self.progress.get(&key.0) == Some(&Progress::default()) {
            self.progress.remove(&key.0);
        }
        if let Some(new) = &row
            && let Some(name) = &new.host_name
        {
            self.agents_by_host.entry(name.clone()).or_default().insert(key.clone());
        }
        if let Some(old) = &old {
            self.count_tag(&key, old, false);
        }
        if let Some(new) = &row {
            self.count_tag(&key, new, true);
        }
        self.note_step(&key, old.as_ref(), row.as_ref());
        self.dirty.insert(Key::Agent(key.0, key.1));
    }

    pub(super) fn set_capacity(
        &mut self,
        now: i64,
        env_id: &EnvId,
        capacity: Capacity,
    ) -> OpResult {
        if !self.envs.contains_key(env_id) {
            return Err(OpError::NotFound { what: format!("stage {env_id}") });
        }
        if capacity.hosts.len() + capacity.groups.len() > MAX_CAPACITY_ENTRIES {
            return Err(OpError::Invalid {
                reason: format!("capacity holds more than {MAX_CAPACITY_ENTRIES} entries"),
            });
        }
        let old = self.capacity(env_id);
        use proto::beans::ConfigHistoryBean as H;
        if old.hosts != capacity.hosts {
            let change = serde_json::to_string(&capacity.hosts).expect("sets serialize");
            self.record_history(now, env_id, H::TYPE_ENV_HOST_CAPACITY, "anonymous", change);
        }
        if old.groups != capacity.groups {
            let change = serde_json::to_string(&capacity.groups).expect("sets serialize");
            self.record_history(now, env_id, H::TYPE_ENV_GROUP_CAPACITY, "anonymous", change);
        }
        for h in &old.hosts {
            if let Some(s) = self.capacity_by_host.get_mut(h) {
                s.remove(env_id);
            }
        }
        for g in &old.groups {
            if let Some(s) = self.capacity_by_group.get_mut(g) {
                s.remove(env_id);
            }
        }
        for h in &capacity.hosts {
            self.capacity_by_host.entry(h.clone()).or_default().insert(env_id.clone());
        }
        for g in &capacity.groups {
            self.capacity_by_group.entry(g.clone()).or_default().insert(env_id.clone());
        }
        self.capacity_changed = true;
        self.changed.insert(env_id.clone());
        if capacity == Capacity::default() {
            self.capacity.remove(env_id);
        } else {
            self.capacity.insert(env_id.clone(), capacity);
        }
        self.dirty.insert(Key::Capacity(env_id.clone()));
        Ok(OpOutput::Done)
    }

    /// Creates a deploy if the stage's current deploy is still `expected` (compare-and-set).
    pub(super) fn create_deploy(
        &mut self,
        now: i64,
        env_id: &EnvId,
        mut deploy: DeployBean,
        expected: Option<DeployId>,
    ) -> OpResult {
        let env = self
            .envs
            .get(env_id)
            .ok_or_else(|| OpError::NotFound { what: format!("stage {env_id}") })?;
        if env.deploy_id != expected {
            return Err(OpError::Conflict {
                reason: format!(
                    "the stage's current deploy is {}, not {}; another deploy started first",
                    env.deploy_id.as_ref().map_or("none", |d| d.as_str()),
                    expected.as_ref().map_or("none", |d| d.as_str())
                ),
            });
        }
        let id = deploy
            .id
            .clone()
            .ok_or_else(|| OpError::Invalid { reason: "a new deploy needs an id".into() })?;
        if self.deploys.contains_key(&id) {
            return Err(OpError::Conflict { reason: format!("deploy {id} already exists") });
        }
        let build_id = deploy
            .build_id
            .clone()
            .ok_or_else(|| OpError::Invalid { reason: "buildId is required".into() })?;
        let build = self
            .builds
            .get(&build_id)
            .ok_or_else(|| OpError::NotFound { what: format!("build {build_id}") })?;
        let deploy_type = deploy.deploy_type.unwrap_or(DeployType::Regular);
        if deploy_type != DeployType::Rollback && build.name != env.build_name {
            return Err(OpError::Invalid {
                reason: format!(
                    "build {build_id} is named {:?} but stage {}/{} deploys builds named {:?}",
                    build.name.as_deref().unwrap_or(""),
                    env.env_name.as_deref().unwrap_or(""),
                    env.stage_name.as_deref().unwrap_or(""),
                    env.build_name.as_deref().unwrap_or("")
                ),
            });
        }
        let operator = deploy.operator.clone().unwrap_or_default();
        if operator == proto::beans::AUTO_PROMOTER_OPERATOR {
            self.check_auto_promotion(env_id, &deploy)?;
        }
        deploy.env_id = Some(env_id.clone());
        deploy.deploy_type = Some(deploy_type);
        deploy.state = Some(DeployState::Running);
        deploy.acceptance_status = Some(AcceptanceStatus::PendingDeploy);
        deploy.start_date = Some(now);
        deploy.last_update_date = Some(now);
        deploy.success_total = Some(0);
        deploy.fail_total = Some(0);
        deploy.total = Some(self.agents_of(env_id).count() as i32);
        deploy.success_date = None;
        // Supersede the previous deploy.
        if let Some(prev_id) = expected
            && let Some(prev) = self.deploys.get_mut(&prev_id)
        {
            let state = prev.state.unwrap_or(DeployState::Running);
            prev.state = Some(state.final_state());
            if !prev.acceptance_status.is_some_and(|a| a.is_final()) {
                prev.acceptance_status = Some(AcceptanceStatus::Terminated);
            }
            prev.last_update_date = Some(now);
            self.dirty.insert(Key::Deploy(prev_id));
        }
        let env = self.envs.get_mut(env_id).expect("checked above");
        env.deploy_id = Some(id.clone());
        env.deploy_type = Some(deploy_type);
        env.last_update = Some(now);
        self.dirty.insert(Key::Env(env_id.clone()));
        self.deploys_by_build.entry(build_id).or_default().insert(id.clone());
        self.deploys_by_env.entry(env_id.clone()).or_default().insert((now, id.clone()));
        self.deploys.insert(id.clone(), deploy.clone());
        self.dirty.insert(Key::Deploy(id.clone()));
        // The current deploy changed: its progress is counted afresh (once per deploy).
        self.changed.insert(env_id.clone());
        let fresh = self.recount_progress(env_id);
        if fresh == Progress::default() {
            self.progress.remove(env_id);
        } else {
            self.progress.insert(env_id.clone(), fresh);
        }
        self.reset_tag_counts(env_id);
        // Quirk fixed: every new deploy (also promote and rollback) starts the waves again.
        self.reset_schedule(now, env_id);
        self.webhooks_due(now, env_id, &id, WebhookPhase::Pre, DeployState::Running);
        self.transition(now, env_id);
        // A deploy by anyone but the auto-promoter may turn auto-promotion off (disable policy).
        self.disable_auto_promote(now, env_id, &operator, false);
        let deploy = self.deploys.get(deploy.id.as_ref().expect("set")).cloned().expect("inserted");
        Ok(OpOutput::Deploy(deploy))
    }

    /// Sets `state` on the given hosts' rows of a stage (host actions: pause, reset, resume).
    ///
    /// Resuming a user-paused host that is mid-deploy gives it a parallelism slot back, so it is
    /// refused as a whole (409, nothing changes) when the stage has fewer free slots than such
    /// hosts: the parallelism limit holds even against operator actions.
    pub(super) fn host_action(
        &mut self,
        now: i64,
        env_id: &EnvId,
        hosts: &[HostId],
        state: AgentState,
    ) -> OpResult {
        let env = self
            .envs
            .get(env_id)
            .ok_or_else(|| OpError::NotFound { what: format!("stage {env_id}") })?;
        let mut resumed = StageCounters::default();
        let mut resumed_hosts = Vec::new();
        let mut seen = BTreeSet::new();
        for h in hosts {
            if !seen.insert(h) {
                continue;
            }
            if let Some(row) = self.agents.get(&(env_id.clone(), h.clone())) {
                let mut after = row.clone();
                after.state = Some(state);
                let held = if is_stop_work(row) { 0 } else { contribution(row).active };
                let takes = contribution(&after).active.saturating_sub(held);
                resumed.active += takes;
                resumed_hosts.push((h.clone(), takes));
            }
        }
        let c = self.counters(env_id);
        let limit = max_parallel(env, c.existing);
        if !self.constraint_allows_resume(env_id, &resumed_hosts) {
            return Err(OpError::Conflict {
                reason: "resuming these hosts mid-deploy would exceed the deploy constraint's maxParallel for their tag value; retry when hosts finish".into(),
            });
        }
        if resumed.active > 0 && c.active + resumed.active > limit {
            return Err(OpError::Conflict {
                reason: format!(
                    "{} host(s) would resume mid-deploy but only {} of {limit} parallelism slots are free; retry when hosts finish",
                    resumed.active,
                    limit.saturating_sub(c.active)
                ),
            });
        }
        self.changed.insert(env_id.clone());
        let change = serde_json::json!({"hosts": hosts, "state": state}).to_string();
        self.record_history(
            now,
            env_id,
            proto::beans::ConfigHistoryBean::TYPE_HOST_ACTION,
            "anonymous",
            change,
        );
        for h in hosts {
            let key = (env_id.clone(), h.clone());
            if let Some(mut row) = self.agents.get(&key).cloned() {
                row.state = Some(state);
                row.last_update_date = Some(now);
                self.put_agent(key, Some(row));
            }
        }
        self.transition(now, env_id);
        Ok(OpOutput::Done)
    }

    /// Stops the service on `hosts` (Teletraan's "terminate hosts", §4.12): every agent row of
    /// each host, on every stage, turns STOP, and pings then drive it through STOPPING to
    /// STOPPED (GoalAnalyst case 0.4). Each host must have a row on `env_id`, or nothing
    /// changes (404). STOP bypasses admission, as in Teletraan: stopping is never throttled.
    pub(super) fn stop_hosts(&mut self, now: i64, env_id: &EnvId, hosts: &[HostId]) -> OpResult {
        if !self.envs.contains_key(env_id) {
            return Err(OpError::NotFound { what: format!("stage {env_id}") });
        }
        let mut names = BTreeMap::new();
        for h in hosts {
            let row = self
                .agents
                .get(&(env_id.clone(), h.clone()))
                .ok_or_else(|| OpError::NotFound { what: format!("host {h} on stage {env_id}") })?;
            names.insert(h.clone(), row.host_name.clone().unwrap_or_else(|| h.to_string()));
        }
        let change = serde_json::json!({"hosts": hosts, "state": AgentState::Stop}).to_string();
        self.record_history(
            now,
            env_id,
            proto::beans::ConfigHistoryBean::TYPE_HOST_ACTION,
            "anonymous",
            change,
        );
        let mut touched = BTreeSet::new();
        for (id, name) in names {
            let keys: Vec<(EnvId, HostId)> = self
                .agents_by_host
                .get(&name)
                .into_iter()
                .flatten()
                .filter(|k| k.1 == id)
                .cloned()
                .collect();
            for key in keys {
                let Some(row) = self.agents.get(&key) else { continue };
                if row.state == Some(AgentState::Stop) {
                    continue;
                }
                let mut row = row.clone();
                row.state = Some(AgentState::Stop);
                row.last_update_date = Some(now);
                row.last_operator = Some("anonymous".to_string());
                self.put_agent(key.clone(), Some(row));
                touched.insert(key.0);
            }
        }
        for env in touched {
            self.changed.insert(env.clone());
            self.transition(now, &env);
        }
        Ok(OpOutput::Done)
    }

    /// Rows holding a parallelism slot: the ones whose lease the leader tracks.
    pub fn slot_holders(&self) -> impl Iterator<Item = (&(EnvId, HostId), &AgentBean)> {
        self.agents
            .iter()
            .filter(|(_, a)| contribution(a).active == 1 && a.state != Some(AgentState::Stop))
    }

    /// Expires the leases of the given rows: each that still holds a slot becomes UNREACHABLE
    /// and gives its slot back. The leader proposes this for hosts silent past the lease TTL.
    pub(super) fn expire_leases(&mut self, now: i64, keys: &[(EnvId, HostId)]) -> OpResult {
        let mut touched = BTreeSet::new();
        for key in keys {
            let Some(row) = self.agents.get(key) else { continue };
            if contribution(row).active == 0 || row.state == Some(AgentState::Stop) {
                continue;
            }
            let mut row = row.clone();
            row.state = Some(AgentState::Unreachable);
            row.last_update_date = Some(now);
            self.put_agent(key.clone(), Some(row));
            if let Some(name) = self.envs.get(&key.0).and_then(super::env_key) {
                *self.leases_expired.entry(name).or_default() += 1;
            }
            touched.insert(key.0.clone());
        }
        for env in touched {
            self.transition(now, &env);
        }
        Ok(OpOutput::Done)
    }

    /// Records replicated liveness, and marks the slot-less rows of stale hosts UNREACHABLE.
    pub(super) fn record_liveness(
        &mut self,
        now: i64,
        seen: &[(String, i64)],
        unreachable: &[String],
    ) -> OpResult {
        for (host, at) in seen {
            if let Some(rec) = self.hosts.get_mut(host)
                && rec.last_seen_ms.is_none_or(|old| old < *at)
            {
                rec.last_seen_ms = Some(*at);
                self.dirty.insert(Key::Host(host.clone()));
            }
        }
        let mut touched = BTreeSet::new();
        for host in unreachable {
            let keys: Vec<(EnvId, HostId)> =
                self.agents_by_host.get(host).into_iter().flatten().cloned().collect();
            for key in keys {
                let Some(row) = self.agents.get(&key) else { continue };
                if contribution(row).active > 0
                    || matches!(
                        row.state,
                        Some(AgentState::Unreachable | AgentState::Stop | AgentState::Delete)
                    )
                {
                    continue;
                }
                let mut row = row.clone();
                row.state = Some(AgentState::Unreachable);
                row.last_update_date = Some(now);
                self.put_agent(key.clone(), Some(row));
                touched.insert(key.0);
            }
        }
        for env in touched {
            self.transition(now, &env);
        }
        Ok(OpOutput::Done)
    }

    /// Every host with agent rows, and its replicated last-seen.
    pub fn hosts_with_rows(&self) -> impl Iterator<Item = (&String, Option<i64>)> {
        self.agents_by_host.keys().map(|h| (h, self.hosts.get(h).and_then(|r| r.last_seen_ms)))
    }

    /// Whether any row of `host` could still be marked UNREACHABLE (holds no slot, is not
    /// already UNREACHABLE, stopping or deleted).
    pub fn has_markable_rows(&self, host: &str) -> bool {
        self.agents_by_host.get(host).into_iter().flatten().any(|key| {
            self.agents.get(key).is_some_and(|row| {
                contribution(row).active == 0
                    && !matches!(
                        row.state,
                        Some(AgentState::Unreachable | AgentState::Stop | AgentState::Delete)
                    )
            })
        })
    }

    // ----- the ping ----------------------------------------------------------------------------

    /// Applies a ping: plans it on the current state and performs the plan's writes.
    /// Host tags are written first, so admission sees the value this ping reports.
    pub(super) fn apply_ping(&mut self, now: i64, req: &PingRequestBean) -> OpResult {
        let stages = self.ping_stages(req);
        for (key, tag) in self.plan_host_tags(now, req, stages.into_iter()) {
            self.put_host_tag(key, tag);
        }
        let plan = self.plan_ping(now, req);
        if let Some(name) =
            plan.admitted.as_ref().and_then(|e| self.envs.get(e)).and_then(super::env_key)
        {
            *self.admitted.entry(name).or_default() += 1;
        }
        if let Some((name, record)) = plan.host.clone() {
            self.hosts.insert(name.clone(), record);
            self.dirty.insert(Key::Host(name));
        }
        let mut touched = BTreeSet::new();
        for (key, row) in plan.agents.clone() {
            touched.insert(key.0.clone());
            self.put_agent(key, row);
        }
        for (key, message) in plan.errors {
            self.dirty.insert(Key::AgentError(key.0.clone(), key.1.clone()));
            self.agent_errors.insert(key, message);
        }
        for r in &req.reports {
            let source =
                r.extra_info.as_ref().and_then(|x| x.get(super::timeline::DOWNLOAD_SOURCE_KEY));
            if let (Some(env), Some(source)) = (&r.env_id, source) {
                let key = (env.clone(), req.host_id.clone());
                self.note_download_source(&key, r.deploy_id.as_ref(), source);
            }
        }
        for env in touched {
            self.transition(now, &env);
        }
        Ok(OpOutput::Ping(plan.response))
    }

    /// Teletraan's `PingHandler.ping`, as a pure function of the state (§3.2–§3.9).
    pub fn plan_ping(&self, now: i64, req: &PingRequestBean) -> PingPlan {
        self.plan_ping_with(now, req, false)
    }

    /// `POST /v1/system/ping/alldeploycandidates` (§3.11): the answer for every install
    /// candidate of this ping, in candidate order, each with its build. Read-only: unlike
    /// Teletraan, which runs the whole ping with its writes, this only reports.
    pub fn deploy_candidates(&self, now: i64, req: &PingRequestBean) -> Vec<PingResponseBean> {
        self.plan_ping_with(now, req, true).candidates
    }

    fn plan_ping_with(&self, now: i64, req: &PingRequestBean, all: bool) -> PingPlan {
        let host_id = req.host_id.clone();
        let host =
            req.host_name.clone().filter(|h| !h.is_empty()).unwrap_or_else(|| host_id.to_string());
        let mut groups = req.groups.clone();
        if groups.is_empty() {
            groups.insert(NULL_GROUP.to_string());
        }
        let mut plan = PingPlan::default();
        let record = HostRecord {
            host_id: host_id.clone(),
            ip: req.host_ip.clone(),
            groups: groups.clone(),
            agent_version: req.agent_version.clone(),
            // Liveness is replicated in batches, never by a ping itself.
            last_seen_ms: self.hosts.get(&host).and_then(|h| h.last_seen_ms),
        };
        if self.hosts.get(&host) != Some(&record) {
            plan.host = Some((host.clone(), record));
        }

        let envs = self.stages_for_host(&host, &groups);
        let agents: BTreeMap<EnvId, &AgentBean> = self
            .agents_by_host
            .get(&host)
            .into_iter()
            .flatten()
            .filter(|(_, h)| *h == host_id)
            .filter_map(|k| Some((k.0.clone(), self.agents.get(k)?)))
            .collect();
        let reports: BTreeMap<EnvId, &PingReportBean> =
            req.reports.iter().filter_map(|r| Some((r.env_id.clone()?, r))).collect();
        for (env_id, r) in &reports {
            if r.error_code.unwrap_or(0) == 0 {
                continue;
            }
            let Some(message) = r.error_message.as_deref().filter(|m| !m.is_empty()) else {
                continue;
            };
            let message = error_tail(message);
            let key = ((*env_id).clone(), host.clone());
            if self.agent_errors.get(&key).map(String::as_str) != Some(message) {
                plan.errors.push((key, message.to_string()));
            }
        }
        let host_env_names: BTreeSet<String> = agents
            .keys()
            .filter_map(|id| self.envs.get(id).and_then(|e| e.env_name.clone()))
            .collect();

        let mut ids: BTreeSet<EnvId> = envs.keys().cloned().collect();
        ids.extend(agents.keys().cloned());
        ids.extend(reports.keys().cloned());
        plan.stages = ids.clone();
        plan.tags = !self.plan_host_tags(now, req, ids.iter().cloned()).is_empty();

        let mut updates: BTreeMap<EnvId, AgentBean> = BTreeMap::new();
        let mut installs: Vec<Candidate> = Vec::new();
        let mut uninstalls: Vec<Candidate> = Vec::new();
        let mut deletes: Vec<EnvId> = Vec::new();

        for env_id in &ids {
            let env = envs.get(env_id).copied();
            let transformed = reports.get(env_id).map(|r| self.transform_rollback(env, r));
            let report = transformed.as_ref();
            let agent = agents.get(env_id).copied();
            let mut update = None;
            if let Some(r) = report {
                let bean = bean_from_report(now, &host, &host_id, r, agent);
                if differs(agent, &bean) {
                    updates.insert(env_id.clone(), bean.clone());
                }
                update = Some(bean);
            }
            let cand = |bean: AgentBean, need_wait: bool, env: &EnvironBean| Candidate {
                env_id: env_id.clone(),
                priority: priority(env, bean.first_deploy.unwrap_or(false)),
                bean,
                need_wait,
                report: report.cloned(),
            };
            match (env, report) {
                // 0.1 never deployed
                (Some(e), _) if e.deploy_id.is_none() => {}
                // 0.2 paused: only first deploys proceed
                (Some(e), _)
                    if e.env_state.unwrap_or(EnvState::Normal) != EnvState::Normal
                        && !is_first_deploy(
                            agent,
                            e.env_name.as_deref().unwrap_or(""),
                            &host_env_names,
                        ) => {}
                // 0.3 paused by the user
                _ if agent.is_some_and(|a| a.state == Some(AgentState::PausedByUser)) => {}
                // 0.4 stopping: STOPPING, then STOPPED, then nothing. (A stage the host left
                // falls through to cases 3 and 4.)
                (Some(e), _) if agent.is_some_and(|a| a.state == Some(AgentState::Stop)) => {
                    let row = agent.expect("guarded");
                    let status = report.and_then(|r| r.agent_status);
                    match row.deploy_stage {
                        Some(DeployStage::Stopped) => {}
                        Some(DeployStage::Stopping) if status.is_some_and(|s| s.is_fatal()) => {}
                        Some(DeployStage::Stopping)
                            if status == Some(AgentStatus::Succeeded)
                                && report.and_then(|r| r.deploy_stage)
                                    == Some(DeployStage::Stopping) =>
                        {
                            installs.push(cand(
                                stop_bean(now, row, e, DeployStage::Stopped),
                                false,
                                e,
                            ));
                        }
                        // Retry STOPPING (also for an agent that lost its status: a fix, as
                        // Teletraan then never finishes the stop).
                        Some(DeployStage::Stopping) => installs.push(cand(row.clone(), false, e)),
                        _ => installs.push(cand(
                            stop_bean(now, row, e, DeployStage::Stopping),
                            false,
                            e,
                        )),
                    }
                }
                // 1: stage and report
                (Some(e), Some(r)) => {
                    let bean = update.clone().expect("report present");
                    let same = r.deploy_id == e.deploy_id;
                    let state = bean.state.unwrap_or(AgentState::Normal);
                    if same && matches!(state, AgentState::Reset | AgentState::ResetBySystem) {
                        installs.push(self.install_new(
                            now,
                            &host,
                            &host_id,
                            e,
                            Some(r),
                            agent,
                            &host_env_names,
                            report,
                        ));
                    } else if same && r.deploy_stage == Some(DeployStage::ServingBuild) {
                        // 1.1 steady state
                    } else if same
                        && state != AgentState::PausedBySystem
                        && matches!(
                            r.deploy_stage,
                            Some(DeployStage::Stopping | DeployStage::Stopped)
                        )
                    {
                        // An operator resumed a stopped host: it deploys again from the start
                        // (Teletraan would walk past STOPPED into no stage at all).
                        installs.push(self.install_new(
                            now,
                            &host,
                            &host_id,
                            e,
                            Some(r),
                            agent,
                            &host_env_names,
                            report,
                        ));
                    } else if same && r.agent_status == Some(AgentStatus::Succeeded) {
                        let mut next = bean;
                        next.deploy_stage = r.deploy_stage.and_then(DeployStage::next);
                        next.status = Some(AgentStatus::Unknown);
                        next.state = Some(AgentState::Normal);
                        next.last_errno = Some(0);
                        next.fail_count = Some(0);
                        installs.push(cand(next, false, e));
                    } else if same && state == AgentState::PausedBySystem {
                        // 1.3 failed on this deploy: stays failed
                    } else if same {
                        installs.push(cand(bean, false, e)); // 1.4 retry the stage
                    } else {
                        installs.push(self.install_new(
                            now,
                            &host,
                            &host_id,
                            e,
                            Some(r),
                            agent,
                            &host_env_names,
                            report,
                        ));
                    }
                }
                // 2: stage without report
                (Some(e), None) => {
                    let first = is_first_deploy(
                        agent,
                        e.env_name.as_deref().unwrap_or(""),
                        &host_env_names,
                    );
                    let bean = new_deploy_bean(now, &host, &host_id, e, agent, first);
                    let need_wait =
                        agent.is_none_or(|a| a.deploy_stage == Some(DeployStage::ServingBuild));
                    installs.push(cand(bean, need_wait, e));
                }
                // 3: removed from capacity (or stage deleted) while the agent still reports it
                (None, Some(_)) => {
                    let mut bean = update.clone().expect("report present");
                    bean.state = Some(AgentState::Delete);
                    let p = self
                        .envs
                        .get(env_id)
                        .map_or(DeployPriority::Normal.value(), |e| priority(e, false));
                    uninstalls.push(Candidate {
                        env_id: env_id.clone(),
                        bean,
                        need_wait: false,
                        priority: p,
                        report: report.cloned(),
                    });
                }
                // 4: a row nobody reports for a stage the host left
                (None, None) => {
                    if agent.is_some() {
                        deletes.push(env_id.clone());
                    }
                }
            }
        }

        // A host back from an expired lease continues only once admitted again.
        for c in &mut installs {
            if agents.get(&c.env_id).is_some_and(|a| a.state == Some(AgentState::Unreachable))
                && c.bean.first_deploy != Some(true)
            {
                c.need_wait = true;
                c.bean.state = Some(AgentState::Normal);
            }
        }
        // Candidate order (§3.6): STOP first (among them the larger priority value first, so
        // apps stop before their sidecars); then lower priority value first; in-progress before
        // waiting.
        let stopping = |c: &Candidate| c.bean.state == Some(AgentState::Stop);
        installs.sort_by(|a, b| {
            stopping(b)
                .cmp(&stopping(a))
                .then_with(|| {
                    if stopping(a) && stopping(b) {
                        b.priority.cmp(&a.priority)
                    } else {
                        a.priority.cmp(&b.priority).then(a.need_wait.cmp(&b.need_wait))
                    }
                })
                .then(a.env_id.cmp(&b.env_id))
        });
        uninstalls.sort_by(|a, b| b.priority.cmp(&a.priority).then(a.env_id.cmp(&b.env_id)));
        if all {
            plan.candidates = installs
                .iter()
                .map(|c| {
                    let env =
                        envs.get(&c.env_id).copied().expect("install candidates have a stage");
                    self.install_response(env, c, true)
                })
                .collect();
        }

        let mut chosen: Option<Candidate> = None;
        for c in installs {
            let env = envs.get(&c.env_id).copied().expect("install candidates have a stage");
            if !c.need_wait || c.bean.first_deploy == Some(true) || self.can_admit(env, &c) {
                chosen = Some(c);
                break;
            }
            plan.waiting_for_slot.get_or_insert_with(|| c.env_id.clone());
        }
        for u in &uninstalls {
            updates.insert(u.env_id.clone(), u.bean.clone());
        }
        if let Some(c) = &chosen {
            let old = agents.get(&c.env_id).copied();
            if differs(old, &c.bean) || old.is_none() {
                updates.insert(c.env_id.clone(), c.bean.clone());
                if c.need_wait {
                    plan.admitted = Some(c.env_id.clone());
                }
            } else {
                updates.remove(&c.env_id);
            }
        }
        for (env_id, bean) in updates {
            let old = agents.get(&env_id).copied();
            if differs(old, &bean) {
                plan.agents.push(((env_id, host_id.clone()), Some(bean)));
            }
        }
        for env_id in deletes {
            plan.agents.push(((env_id, host_id.clone()), None));
        }

        plan.response = match (chosen, uninstalls.first()) {
            (Some(c), _) => {
                self.install_response(envs.get(&c.env_id).copied().expect("stage"), &c, false)
            }
            (None, None) => PingResponseBean { op_code: OpCode::Noop, deploy_goal: None },
            (None, Some(u)) => self.delete_response(u),
        };
        plan
    }

    /// `transformRollbackDeployId` (§4.7): during a rollback to deploy T, a host still serving T
    /// (it never left it) is recorded under the rollback deploy, with T as its alias, so it
    /// counts as done without redeploying; its goals swap the ids back.
    fn transform_rollback(&self, env: Option<&EnvironBean>, r: &PingReportBean) -> PingReportBean {
        let mut r = r.clone();
        if let Some(env) = env
            && env.deploy_type == Some(DeployType::Rollback)
            && r.deploy_id != env.deploy_id
            && let Some(current) = env.deploy_id.as_ref().and_then(|d| self.deploys.get(d))
            && current.alias.is_some()
            && r.deploy_id == current.alias
        {
            r.deploy_alias = r.deploy_id.take();
            r.deploy_id = env.deploy_id.clone();
        }
        r
    }

    #[allow(clippy::too_many_arguments)]
    fn install_new(
        &self,
        now: i64,
        host: &str,
        host_id: &HostId,
        env: &EnvironBean,
        report: Option<&PingReportBean>,
        agent: Option<&AgentBean>,
        host_env_names: &BTreeSet<String>,
        report_owned: Option<&PingReportBean>,
    ) -> Candidate {
        let first = is_first_deploy(agent, env.env_name.as_deref().unwrap_or(""), host_env_names);
        let bean = new_deploy_bean(now, host, host_id, env, agent, first);
        // Waits for a slot only from steady state; a host the rows show mid-deploy (admitted,
        // but the answer was lost) continues without queueing again.
        // A failed stop held its slot outside the limit (see `is_stop_work`): it queues again.
        let need_wait = (report.is_some_and(|r| r.deploy_stage == Some(DeployStage::ServingBuild))
            && agent.is_none_or(|a| a.deploy_stage == Some(DeployStage::ServingBuild)))
            || agent.is_some_and(is_stop_work);
        Candidate {
            env_id: env.id.clone().expect("stages have ids"),
            priority: priority(env, first),
            bean,
            need_wait,
            report: report_owned.cloned(),
        }
    }

    /// `canDeploy` for a host that is not on its first deploy: a slot is free under the stage's
    /// limit. Atomic because `apply` runs it on the state it is about to change.
    /// The stage's schedule and deploy constraint must admit it too (`schedule.rs`).
    fn can_admit(&self, env: &EnvironBean, c: &Candidate) -> bool {
        let counters = self.counters(&c.env_id);
        let host = c.bean.host_id.as_ref().expect("candidates have a host");
        counters.active < max_parallel(env, counters.existing)
            && self.schedule_admits(&c.env_id)
            && self.constraint_admits(&c.env_id, host)
    }

    /// `generateInstallResponse`; the build goes with DOWNLOADING goals, or with every goal
    /// when `with_build` is set.
    fn install_response(
        &self,
        env: &EnvironBean,
        c: &Candidate,
        with_build: bool,
    ) -> PingResponseBean {
        let stage = c.bean.deploy_stage;
        let op_code =
            if c.bean.state == Some(AgentState::Stop) && stage == Some(DeployStage::Stopping) {
                OpCode::Stop
            } else {
                env.deploy_type.unwrap_or(DeployType::Regular).op_code()
            };
        let mut deploy_id = env.deploy_id.clone();
        let mut deploy_alias = None;
        if let Some(alias) = c.report.as_ref().and_then(|r| r.deploy_alias.clone()) {
            deploy_alias = deploy_id.replace(alias);
        }
        let build = if with_build || stage == Some(DeployStage::Downloading) {
            env.deploy_id
                .as_ref()
                .and_then(|d| self.deploys.get(d))
                .and_then(|d| d.build_id.as_ref())
                .and_then(|b| self.builds.get(b))
                .cloned()
        } else {
            None
        };
        let env_id = env.id.clone().expect("stages have ids");
        // Script variables only at PRE_DOWNLOAD; an explicit empty map means "clear".
        let script_variables = (stage == Some(DeployStage::PreDownload))
            .then(|| self.env_config(&env_id, proto::command::EnvConfigKind::Script));
        // Agent configs: keys prefixed "<stage>." are this stage's, with the prefix stripped;
        // other keys pass unchanged (Teletraan's rule); none means the field is omitted.
        let prefix = format!("{}.", env.stage_name.as_deref().unwrap_or_default());
        let agent_configs: BTreeMap<String, String> = self
            .env_config(&env_id, proto::command::EnvConfigKind::Agent)
            .into_iter()
            .map(|(k, v)| (k.strip_prefix(&prefix).map(str::to_string).unwrap_or(k), v))
            .collect();
        let agent_configs = (!agent_configs.is_empty()).then_some(agent_configs);
        PingResponseBean {
            op_code,
            deploy_goal: Some(DeployGoalBean {
                deploy_id,
                deploy_type: env.deploy_type,
                env_id: env.id.clone(),
                env_name: env.env_name.clone(),
                stage_name: env.stage_name.clone(),
                stage_type: env.stage_type,
                deploy_stage: stage,
                build,
                deploy_alias,
                agent_configs,
                script_variables,
                first_deploy: c.bean.first_deploy,
                is_docker: env.is_docker,
            }),
        }
    }

    fn delete_response(&self, u: &Candidate) -> PingResponseBean {
        let env = self.envs.get(&u.env_id);
        let report = u.report.as_ref();
        PingResponseBean {
            op_code: OpCode::Delete,
            deploy_goal: Some(DeployGoalBean {
                deploy_id: report.and_then(|r| r.deploy_id.clone()),
                deploy_type: env.and_then(|e| e.deploy_type),
                env_id: Some(u.env_id.clone()),
                env_name: env.and_then(|e| e.env_name.clone()),
                stage_name: env.and_then(|e| e.stage_name.clone()),
                stage_type: env.and_then(|e| e.stage_type),
                deploy_stage: report.and_then(|r| r.deploy_stage),
                build: None,
                deploy_alias: None,
                agent_configs: None,
                script_variables: None,
                first_deploy: Some(false),
                is_docker: None,
            }),
        }
    }

    // ----- deploy state ------------------------------------------------------------------------

    /// `transitionDeployState` (§4.3) for the stage's current deploy; writes only on change.
    /// The schedule moves first (§4.3 step 4).
    pub(super) fn transition(&mut self, now: i64, env_id: &EnvId) {
        self.transition_schedule(now, env_id);
        if let Some((id, next)) = self.plan_transition(now, env_id) {
            let first_success = next.success_date.is_some()
                && self.deploys.get(&id).is_some_and(|d| d.success_date.is_none());
            let state = next.state.unwrap_or(DeployState::Running);
            self.deploys.insert(id.clone(), next);
            self.dirty.insert(Key::Deploy(id.clone()));
            if first_success {
                self.webhooks_due(now, env_id, &id, WebhookPhase::Post, state);
            }
        }
    }

    /// Applies [`State::plan_transition`] to every stage (the periodic tick: the stuck timer).
    pub(super) fn tick(&mut self, now: i64) -> OpResult {
        let ids: Vec<EnvId> = self.envs.keys().cloned().collect();
        for id in ids {
            self.transition(now, &id);
        }
        Ok(OpOutput::Done)
    }

    /// Whether a tick at `now` would change any deploy (the leader proposes one only then).
    pub fn tick_needed(&self, now: i64) -> bool {
        self.envs.keys().any(|id| {
            self.plan_schedule(now, id).is_some() || self.plan_transition(now, id).is_some()
        })
    }

    /// The next state of the stage's current deploy, if it changes.
    pub fn plan_transition(&self, now: i64, env_id: &EnvId) -> Option<(DeployId, DeployBean)> {
        let env = self.envs.get(env_id)?;
        let id = env.deploy_id.clone()?;
        let old = self.deploys.get(&id)?;
        let state = old.state.unwrap_or(DeployState::Running);
        if !state.is_active() {
            return None;
        }
        let p = self.progress(env_id);
        let (total, succeeded, stuck) =
            (i64::from(p.total), i64::from(p.succeeded), i64::from(p.stuck));
        let th = i64::from(env.success_threshold.unwrap_or(10_000).clamp(0, 10_000));
        let stuck_ms = i64::from(env.stuck_threshold.unwrap_or(600)).max(0) * 1000;
        let old_succeeded = i64::from(old.success_total.unwrap_or(0));
        let last = old.last_update_date.unwrap_or(now);
        let mut next = old.clone();
        let mut keep_last_update = false;
        let new_state = if succeeded * 10_000 >= th * total {
            if next.success_date.is_none() {
                next.success_date = Some(now);
                next.acceptance_status =
                    Some(match env.acceptance_type.unwrap_or(AcceptanceType::Auto) {
                        AcceptanceType::Auto => AcceptanceStatus::Accepted,
                        AcceptanceType::Manual => AcceptanceStatus::Outstanding,
                    });
            }
            DeployState::Succeeding
        } else if stuck * 10_000 > (10_000 - th) * total {
            DeployState::Failing
        } else if succeeded <= old_succeeded && now - last >= stuck_ms {
            if state == DeployState::Succeeding {
                DeployState::Running
            } else if self.schedule(env_id).and_then(|s| s.state)
                == Some(proto::enums::ScheduleState::CoolingDown)
            {
                // A wave cooling down makes no progress on purpose: not stuck.
                state
            } else {
                keep_last_update = true;
                DeployState::Failing
            }
        } else {
            DeployState::Running
        };
        let changed = new_state != state
            || succeeded != old_succeeded
            || stuck != i64::from(old.fail_total.unwrap_or(0))
            || total != i64::from(old.total.unwrap_or(0));
        if !changed {
            return None;
        }
        next.state = Some(new_state);
        next.success_total = Some(succeeded as i32);
        next.fail_total = Some(stuck as i32);
        next.total = Some(total as i32);
        if !keep_last_update {
            next.last_update_date = Some(now);
        }
        Some((id, next))
    }
}
