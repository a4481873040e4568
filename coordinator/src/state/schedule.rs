//! Schedules ("waves", §1.9, §4.8) and deploy constraints (tag-grouped parallelism, §1.10,
//! §4.9) over the replicated state.
//!
//! Both are extra admission rules for hosts that are not on their first deploy (first deploys
//! bypass them, as in Teletraan), checked inside `apply` with the parallelism limit, so
//! admission stays one atomic compare-and-increment. The schedule's state machine moves in
//! [`State::plan_schedule`], run by every deploy transition (after agent writes and on
//! `Op::Tick`) at the leader-stamped time; nothing here reads a clock.
//!
//! Host tags come only from the agents' pings (`ec2Tags`, a JSON string of a tag map); there is
//! no cloud inventory. A host's value for its stage's constraint key is stored per (stage,
//! host) and written only when it changes. A constraint is FINISHED once every agent row of the
//! stage has a value; until then it blocks every non-first deploy (Teletraan's rule), so a host
//! that never reports the key holds the stage up rather than deploying outside its group.

use std::collections::BTreeMap;

use proto::beans::{AgentBean, DeployConstraintBean, HostTagBean, ScheduleBean};
use proto::command::{OpError, OpOutput, OpResult};
use proto::enums::{
    AgentState, DeployConstraintType, DeployStage, DeployState, ScheduleState, TagSyncState,
};
use proto::ids::{DeployId, EnvId, HostId};
use proto::ping::PingRequestBean;

use super::deploy::contribution;
use super::{Key, State};

/// Most sessions (waves) a schedule may have.
pub const MAX_SCHEDULE_SESSIONS: i32 = 100;
/// Longest cooldown of a session, in minutes (a week).
pub const MAX_COOLDOWN_MINUTES: i64 = 7 * 24 * 60;
/// Largest absolute host number of one session.
pub const MAX_SESSION_HOSTS: u32 = 1_000_000;
/// Longest constraint key (a tag name), in bytes.
pub const MAX_CONSTRAINT_KEY_BYTES: usize = 128;
/// Largest `maxParallel` of a constraint.
pub const MAX_CONSTRAINT_PARALLEL: i64 = 10_000;
/// Longest tag value kept, in bytes; longer values are refused (the host counts as untagged).
pub const MAX_TAG_VALUE_BYTES: usize = 256;
/// Milliseconds per minute (cooldowns are in minutes).
const MS_PER_MINUTE: i64 = 60_000;

/// Why a schedule or constraint was refused. Each message starts with the JSON field it is
/// about; the request changes nothing and is answered 400.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidRollout {
    #[error("totalSessions {0} is outside 1-{MAX_SCHEDULE_SESSIONS}")]
    TotalSessions(i32),
    #[error("hostNumbers {text:?} {reason}")]
    HostNumbers { text: String, reason: String },
    #[error("cooldownTimes {text:?} {reason}")]
    CooldownTimes { text: String, reason: String },
    #[error("constraintKey is required (1-{MAX_CONSTRAINT_KEY_BYTES} bytes, a host tag name)")]
    ConstraintKey,
    #[error("maxParallel {0} is outside 1-{MAX_CONSTRAINT_PARALLEL}")]
    MaxParallel(i64),
}

impl From<InvalidRollout> for OpError {
    fn from(e: InvalidRollout) -> Self {
        OpError::Invalid { reason: e.to_string() }
    }
}

/// A schedule's sessions, parsed: the cumulative host count of each session (absolute, or a
/// percentage of the stage's agents) and its cooldown in minutes (negative = until override).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sessions {
    pub percent: bool,
    /// Cumulative: absolute increments already summed, or cumulative percentages.
    pub cumulative: Vec<u32>,
    pub cooldown_minutes: Vec<i64>,
}

impl Sessions {
    /// Parses and validates a schedule's `totalSessions`, `hostNumbers` and `cooldownTimes`.
    pub fn parse(s: &ScheduleBean) -> Result<Sessions, InvalidRollout> {
        let total = s.total_sessions.unwrap_or(0);
        if !(1..=MAX_SCHEDULE_SESSIONS).contains(&total) {
            return Err(InvalidRollout::TotalSessions(total));
        }
        let n = total as usize;
        let hosts_text = s.host_numbers.clone().unwrap_or_default();
        let hosts_err =
            |reason: String| InvalidRollout::HostNumbers { text: hosts_text.clone(), reason };
        let entries: Vec<&str> = hosts_text.split(',').map(str::trim).collect();
        if entries.len() != n {
            return Err(hosts_err(format!("has {} entries; totalSessions is {n}", entries.len())));
        }
        let percent = entries[0].ends_with('%');
        let mut cumulative = Vec::with_capacity(n);
        let mut sum: u32 = 0;
        for e in &entries {
            if e.ends_with('%') != percent {
                return Err(hosts_err("mixes percentages and host numbers".into()));
            }
            let v: u32 = e
                .trim_end_matches('%')
                .parse()
                .map_err(|_| hosts_err(format!("entry {e:?} is not a whole number")))?;
            if percent {
                if !(1..=100).contains(&v) {
                    return Err(hosts_err(format!("entry {e:?} is outside 1%-100%")));
                }
                if v < sum {
                    return Err(hosts_err(
                        "percentages are cumulative and must not decrease".into(),
                    ));
                }
                sum = v;
            } else {
                if !(1..=MAX_SESSION_HOSTS).contains(&v) {
                    return Err(hosts_err(format!("entry {e:?} is outside 1-{MAX_SESSION_HOSTS}")));
                }
                sum = sum.saturating_add(v);
            }
            cumulative.push(sum);
        }
        let cool_text = s.cooldown_times.clone().unwrap_or_default();
        let cool_err =
            |reason: String| InvalidRollout::CooldownTimes { text: cool_text.clone(), reason };
        let cooldowns: Vec<&str> = cool_text.split(',').map(str::trim).collect();
        if cooldowns.len() != n {
            return Err(cool_err(format!("has {} entries; totalSessions is {n}", cooldowns.len())));
        }
        let mut cooldown_minutes = Vec::with_capacity(n);
        for c in cooldowns {
            let v: i64 = c
                .parse()
                .map_err(|_| cool_err(format!("entry {c:?} is not a whole number of minutes")))?;
            if v > MAX_COOLDOWN_MINUTES {
                return Err(cool_err(format!("entry {v} is over {MAX_COOLDOWN_MINUTES} minutes")));
            }
            cooldown_minutes.push(v);
        }
        Ok(Sessions { percent, cumulative, cooldown_minutes })
    }

    /// `hostsInSession`: how many hosts session `session` (1-based) admits in all, for a stage
    /// of `agents` agent rows (percentages round up).
    pub fn hosts_in_session(&self, session: i32, agents: u32) -> u32 {
        let i = (session.max(1) as usize).min(self.cumulative.len()) - 1;
        let v = self.cumulative[i];
        if self.percent { (u64::from(v) * u64::from(agents)).div_ceil(100) as u32 } else { v }
    }
}

/// Validates a constraint request and fills the default type.
pub fn validate_constraint(c: &mut DeployConstraintBean) -> Result<(), InvalidRollout> {
    let key = c.constraint_key.as_deref().map(str::trim).unwrap_or_default();
    if key.is_empty() || key.len() > MAX_CONSTRAINT_KEY_BYTES {
        return Err(InvalidRollout::ConstraintKey);
    }
    c.constraint_key = Some(key.to_string());
    let max = c.max_parallel.unwrap_or(0);
    if !(1..=MAX_CONSTRAINT_PARALLEL).contains(&max) {
        return Err(InvalidRollout::MaxParallel(max));
    }
    c.constraint_type.get_or_insert(DeployConstraintType::AllGroupsInParallel);
    Ok(())
}

/// Per (stage, tag value) counts over agent rows, maintained on every agent-row and host-tag
/// write (derived, not persisted).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TagCounts {
    /// Agent rows of hosts with this value.
    pub rows: u32,
    /// Of those, "deploying" (the parallelism predicate, [`contribution`]).
    pub deploying: u32,
    /// Of those, not finished for the stage's current deploy (GROUP_BY_GROUP's order).
    pub unfinished: u32,
}

/// Finished for the current deploy (GROUP_BY_GROUP, and the schedule's wave count): on it, and
/// at SERVING_BUILD or paused by the user or the system.
pub fn finished_on(a: &AgentBean, current: Option<&DeployId>) -> bool {
    current.is_some()
        && a.deploy_id.as_ref() == current
        && (a.deploy_stage == Some(DeployStage::ServingBuild)
            || matches!(a.state, Some(AgentState::PausedByUser | AgentState::PausedBySystem)))
}

/// This row's contribution to its tag value's [`TagCounts`].
pub fn tag_contribution(a: &AgentBean, current: Option<&DeployId>) -> TagCounts {
    TagCounts {
        rows: 1,
        deploying: contribution(a).active,
        unfinished: u32::from(!finished_on(a, current)),
    }
}

/// The value of `key` in a ping's `ec2Tags` (a JSON string of a tag map): `Ok(None)` if the
/// map lacks it, `Err` if the string is not a JSON object (then nothing is recorded).
fn tag_value(ec2_tags: &str, key: &str) -> Result<Option<String>, ()> {
    let map: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(ec2_tags).map_err(|_| ())?;
    Ok(match map.get(key) {
        None | Some(serde_json::Value::Null) => None,
        Some(serde_json::Value::String(s)) => Some(s.clone()),
        Some(other) => Some(other.to_string()),
    }
    .filter(|v| !v.is_empty() && v.len() <= MAX_TAG_VALUE_BYTES))
}

impl State {
    // ----- queries -------------------------------------------------------------------------

    pub fn schedule(&self, env: &EnvId) -> Option<&ScheduleBean> {
        self.schedules.get(env)
    }

    /// The stage's constraint with its tag-sync state (FINISHED once every agent row of the
    /// stage has a value for the key, PROCESSING before).
    pub fn constraint(&self, env: &EnvId) -> Option<DeployConstraintBean> {
        let mut c = self.constraints.get(env)?.clone();
        c.state = Some(if self.constraint_finished(env) {
            TagSyncState::Finished
        } else {
            TagSyncState::Processing
        });
        Some(c)
    }

    pub fn host_tag(&self, env: &EnvId, host: &HostId) -> Option<&HostTagBean> {
        self.host_tags.get(&(env.clone(), host.clone()))
    }

    /// Host tags of a stage, by host id.
    pub fn host_tags_of(&self, env: &EnvId) -> impl Iterator<Item = &HostTagBean> {
        let lo = (env.clone(), HostId::new(""));
        self.host_tags.range(lo..).take_while(move |((e, _), _)| e == env).map(|(_, t)| t)
    }

    /// The per-value counts of a stage, by tag value.
    pub fn tag_counts(&self, env: &EnvId) -> BTreeMap<String, TagCounts> {
        let lo = (env.clone(), String::new());
        self.tag_counts
            .range(lo..)
            .take_while(|((e, _), _)| e == env)
            .map(|((_, v), c)| (v.clone(), *c))
            .collect()
    }

    /// [`State::tag_counts`] recomputed from scratch (the naive recount).
    pub fn recount_tags(&self, env: &EnvId) -> BTreeMap<String, TagCounts> {
        let current = self.envs.get(env).and_then(|e| e.deploy_id.clone());
        let mut out: BTreeMap<String, TagCounts> = BTreeMap::new();
        for a in self.agents_of(env) {
            let Some(host) = &a.host_id else { continue };
            let Some(value) = self.tag_value_of(env, host) else { continue };
            let c = tag_contribution(a, current.as_ref());
            let t = out.entry(value.to_string()).or_default();
            t.rows += c.rows;
            t.deploying += c.deploying;
            t.unfinished += c.unfinished;
        }
        out
    }

    fn tag_value_of(&self, env: &EnvId, host: &HostId) -> Option<&str> {
        self.host_tags.get(&(env.clone(), host.clone())).and_then(|t| t.tag_value.as_deref())
    }

    fn constraint_finished(&self, env: &EnvId) -> bool {
        let tagged: u32 = self.tag_counts(env).values().map(|c| c.rows).sum();
        tagged >= self.progress(env).total
    }

    /// `hostsInSession` of the stage's schedule at its current session, if it limits admission
    /// (RUNNING or COOLING_DOWN).
    pub fn session_cap(&self, env: &EnvId) -> Option<u32> {
        let s = self.schedules.get(env)?;
        if !matches!(s.state, Some(ScheduleState::Running | ScheduleState::CoolingDown)) {
            return None;
        }
        let sessions = Sessions::parse(s).ok()?;
        Some(sessions.hosts_in_session(s.current_session.unwrap_or(1), self.progress(env).total))
    }

    /// `canDeploywithSchedule`: COOLING_DOWN admits nobody; RUNNING admits while fewer hosts
    /// are on the current deploy than the session's cumulative count; FINAL, NOT_STARTED or no
    /// schedule admit everyone.
    pub(super) fn schedule_admits(&self, env: &EnvId) -> bool {
        let Some(s) = self.schedules.get(env) else { return true };
        match s.state.unwrap_or(ScheduleState::NotStarted) {
            ScheduleState::CoolingDown => false,
            ScheduleState::Running => {
                self.session_cap(env).is_none_or(|cap| self.progress(env).on_deploy < cap)
            }
            ScheduleState::Final | ScheduleState::NotStarted => true,
        }
    }

    /// `canDeployWithConstraint`: the constraint is FINISHED, the host has a value, fewer than
    /// `maxParallel` hosts with that value are deploying, and (GROUP_BY_GROUP) every host with
    /// a smaller value (string order) is finished for the current deploy.
    pub(super) fn constraint_admits(&self, env: &EnvId, host: &HostId) -> bool {
        let Some(c) = self.constraints.get(env) else { return true };
        if !self.constraint_finished(env) {
            return false;
        }
        let Some(value) = self.tag_value_of(env, host) else { return false };
        let counts = self.tag_counts(env);
        let mine = counts.get(value).copied().unwrap_or_default();
        if i64::from(mine.deploying) >= c.max_parallel.unwrap_or(1) {
            return false;
        }
        if c.constraint_type == Some(DeployConstraintType::GroupByGroup) {
            return counts.range(..value.to_string()).all(|(_, t)| t.unfinished == 0);
        }
        true
    }

    /// Whether resuming these rows (host actions) keeps every tag value within `maxParallel`:
    /// `resumed` maps each row to the slots it would take.
    pub(super) fn constraint_allows_resume(&self, env: &EnvId, resumed: &[(HostId, u32)]) -> bool {
        let Some(c) = self.constraints.get(env) else { return true };
        let mut extra: BTreeMap<&str, u32> = BTreeMap::new();
        for (h, n) in resumed {
            if let Some(v) = self.tag_value_of(env, h) {
                *extra.entry(v).or_default() += n;
            }
        }
        let counts = self.tag_counts(env);
        extra.into_iter().all(|(v, n)| {
            n == 0
                || i64::from(counts.get(v).map_or(0, |t| t.deploying) + n)
                    <= c.max_parallel.unwrap_or(1)
        })
    }

    /// The schedule's next state (§4.8), if it changes: RUNNING → COOLING_DOWN once the hosts
    /// finished on the current deploy reach the session's count; COOLING_DOWN → the next
    /// session (or FINAL after the last) once its cooldown has passed (a negative cooldown
    /// waits for an override). Only while the stage's current deploy is active.
    pub fn plan_schedule(&self, now: i64, env: &EnvId) -> Option<ScheduleBean> {
        let s = self.schedules.get(env)?;
        let deploy = self.envs.get(env)?.deploy_id.as_ref().and_then(|d| self.deploys.get(d))?;
        if !deploy.state.unwrap_or(DeployState::Running).is_active() {
            return None;
        }
        let sessions = Sessions::parse(s).ok()?;
        let current = s.current_session.unwrap_or(1);
        let mut next = s.clone();
        match s.state.unwrap_or(ScheduleState::NotStarted) {
            ScheduleState::Running => {
                let p = self.progress(env);
                if p.finished < sessions.hosts_in_session(current, p.total) {
                    return None;
                }
                next.state = Some(ScheduleState::CoolingDown);
                next.state_start_time = Some(now);
            }
            ScheduleState::CoolingDown => {
                let i = (current.max(1) as usize).min(sessions.cooldown_minutes.len()) - 1;
                let cooldown = sessions.cooldown_minutes[i];
                let since = s.state_start_time.unwrap_or(now);
                if cooldown < 0 || now - since <= cooldown * MS_PER_MINUTE {
                    return None;
                }
                advance(&mut next, now, current);
            }
            ScheduleState::Final | ScheduleState::NotStarted => return None,
        }
        Some(next)
    }

    // ----- writes (called from apply) ---------------------------------------------------------

    /// Applies [`State::plan_schedule`] (the start of every deploy transition).
    pub(super) fn transition_schedule(&mut self, now: i64, env: &EnvId) {
        if let Some(next) = self.plan_schedule(now, env) {
            tracing::debug!(env = %env, state = ?next.state, session = ?next.current_session, "schedule moves");
            self.schedules.insert(env.clone(), next);
            self.dirty.insert(Key::Schedule(env.clone()));
            // A new session (or FINAL) may admit waiting hosts.
            self.changed.insert(env.clone());
        }
    }

    /// `resetSchedule` on every new deploy: RUNNING, session 1, from `now`.
    pub(super) fn reset_schedule(&mut self, now: i64, env: &EnvId) {
        if let Some(s) = self.schedules.get_mut(env) {
            s.state = Some(ScheduleState::Running);
            s.current_session = Some(1);
            s.state_start_time = Some(now);
            self.dirty.insert(Key::Schedule(env.clone()));
        }
    }

    pub(super) fn set_schedule(
        &mut self,
        now: i64,
        env_id: &EnvId,
        schedule: Option<ScheduleBean>,
    ) -> OpResult {
        if !self.envs.contains_key(env_id) {
            return Err(OpError::NotFound { what: format!("stage {env_id}") });
        }
        let Some(req) = schedule else {
            self.schedules.remove(env_id);
            self.dirty.insert(Key::Schedule(env_id.clone()));
            self.set_env_pointers(now, env_id, |e| e.schedule_id = None);
            self.changed.insert(env_id.clone());
            return Ok(OpOutput::Done);
        };
        let sessions = Sessions::parse(&req)?;
        let total = sessions.cumulative.len() as i32;
        let next = match self.schedules.get(env_id) {
            Some(old) => ScheduleBean {
                total_sessions: Some(total),
                host_numbers: req.host_numbers.clone(),
                cooldown_times: req.cooldown_times.clone(),
                current_session: Some(old.current_session.unwrap_or(1).clamp(1, total)),
                ..old.clone()
            },
            None => ScheduleBean {
                id: Some(req.id.clone().ok_or_else(|| OpError::Invalid {
                    reason: "a new schedule needs an id".into(),
                })?),
                total_sessions: Some(total),
                host_numbers: req.host_numbers.clone(),
                cooldown_times: req.cooldown_times.clone(),
                current_session: Some(1),
                state: Some(ScheduleState::NotStarted),
                state_start_time: Some(now),
            },
        };
        let id = next.id.clone();
        self.schedules.insert(env_id.clone(), next.clone());
        self.dirty.insert(Key::Schedule(env_id.clone()));
        self.set_env_pointers(now, env_id, |e| e.schedule_id = id);
        self.changed.insert(env_id.clone());
        Ok(OpOutput::Schedule(next))
    }

    /// Manual override: only for the current session; the next session starts now (or FINAL).
    pub(super) fn override_schedule(&mut self, now: i64, env_id: &EnvId, session: i32) -> OpResult {
        let s = self
            .schedules
            .get(env_id)
            .ok_or_else(|| OpError::NotFound { what: format!("schedule of stage {env_id}") })?;
        let state = s.state.unwrap_or(ScheduleState::NotStarted);
        let current = s.current_session.unwrap_or(1);
        if matches!(state, ScheduleState::NotStarted | ScheduleState::Final) {
            return Err(OpError::Conflict {
                reason: format!(
                    "the schedule is {state}; only a running or cooling-down session can be overridden"
                ),
            });
        }
        if session != current {
            return Err(OpError::Conflict {
                reason: format!(
                    "sessionNumber {session} is not the current session {current}; nothing changed"
                ),
            });
        }
        let mut next = s.clone();
        advance(&mut next, now, current);
        self.schedules.insert(env_id.clone(), next.clone());
        self.dirty.insert(Key::Schedule(env_id.clone()));
        self.changed.insert(env_id.clone());
        Ok(OpOutput::Schedule(next))
    }

    pub(super) fn set_constraint(
        &mut self,
        now: i64,
        env_id: &EnvId,
        constraint: Option<DeployConstraintBean>,
    ) -> OpResult {
        if !self.envs.contains_key(env_id) {
            return Err(OpError::NotFound { what: format!("stage {env_id}") });
        }
        let old = self.constraints.get(env_id).cloned();
        let next = match constraint {
            None => None,
            Some(mut c) => {
                validate_constraint(&mut c)?;
                let id = match &old {
                    Some(o) => o.id.clone(),
                    None => Some(c.id.clone().ok_or_else(|| OpError::Invalid {
                        reason: "a new constraint needs an id".into(),
                    })?),
                };
                Some(DeployConstraintBean {
                    id,
                    start_date: Some(old.as_ref().and_then(|o| o.start_date).unwrap_or(now)),
                    last_update: Some(now),
                    state: None,
                    ..c
                })
            }
        };
        // Host tags are kept for the constraint's key only; another key starts over.
        if old.as_ref().map(|o| &o.constraint_key) != next.as_ref().map(|n| &n.constraint_key) {
            let keys: Vec<(EnvId, HostId)> = self
                .host_tags
                .range((env_id.clone(), HostId::new(""))..)
                .take_while(|((e, _), _)| e == env_id)
                .map(|(k, _)| k.clone())
                .collect();
            for k in keys {
                self.host_tags.remove(&k);
                self.dirty.insert(Key::HostTag(k.0, k.1));
            }
        }
        let id = next.as_ref().and_then(|c| c.id.clone());
        match &next {
            Some(c) => self.constraints.insert(env_id.clone(), c.clone()),
            None => self.constraints.remove(env_id),
        };
        self.dirty.insert(Key::Constraint(env_id.clone()));
        self.set_env_pointers(now, env_id, |e| e.deploy_constraint_id = id);
        self.reset_tag_counts(env_id);
        self.changed.insert(env_id.clone());
        Ok(match next {
            Some(_) => OpOutput::Constraint(self.constraint(env_id).expect("just set")),
            None => OpOutput::Done,
        })
    }

    fn set_env_pointers(
        &mut self,
        now: i64,
        env_id: &EnvId,
        f: impl FnOnce(&mut proto::beans::EnvironBean),
    ) {
        if let Some(env) = self.envs.get_mut(env_id) {
            f(env);
            env.last_update = Some(now);
            self.dirty.insert(Key::Env(env_id.clone()));
        }
    }

    /// Recounts one stage's [`TagCounts`] (a new current deploy, a new constraint).
    pub(super) fn reset_tag_counts(&mut self, env: &EnvId) {
        let keys: Vec<(EnvId, String)> = self
            .tag_counts
            .range((env.clone(), String::new())..)
            .take_while(|((e, _), _)| e == env)
            .map(|(k, _)| k.clone())
            .collect();
        for k in keys {
            self.tag_counts.remove(&k);
        }
        for (v, c) in self.recount_tags(env) {
            self.tag_counts.insert((env.clone(), v), c);
        }
    }

    /// Moves a row's contribution into (`add`) or out of its tag value's counts.
    pub(super) fn count_tag(&mut self, key: &(EnvId, HostId), row: &AgentBean, add: bool) {
        let Some(value) = self.tag_value_of(&key.0, &key.1).map(str::to_string) else { return };
        let current = self.envs.get(&key.0).and_then(|e| e.deploy_id.clone());
        let c = tag_contribution(row, current.as_ref());
        let k = (key.0.clone(), value);
        let t = self.tag_counts.entry(k.clone()).or_default();
        if add {
            t.rows += c.rows;
            t.deploying += c.deploying;
            t.unfinished += c.unfinished;
        } else {
            t.rows -= c.rows;
            t.deploying -= c.deploying;
            t.unfinished -= c.unfinished;
        }
        if *t == TagCounts::default() {
            self.tag_counts.remove(&k);
        }
    }

    /// The host-tag writes a ping implies: for each stage of the host with a constraint, the
    /// host's value for the key when the ping carries `ec2Tags` and the value changed.
    pub(super) fn plan_host_tags(
        &self,
        now: i64,
        req: &PingRequestBean,
        stages: impl Iterator<Item = EnvId>,
    ) -> Vec<((EnvId, HostId), Option<HostTagBean>)> {
        let Some(tags) = req.ec2_tags.as_deref() else { return Vec::new() };
        let mut out = Vec::new();
        for env in stages {
            let Some(c) = self.constraints.get(&env) else { continue };
            let Some(name) = c.constraint_key.as_deref() else { continue };
            let Ok(value) = tag_value(tags, name) else { continue };
            let key = (env.clone(), req.host_id.clone());
            let old = self.host_tags.get(&key);
            if old.and_then(|t| t.tag_value.as_ref()) == value.as_ref() {
                continue;
            }
            let bean = value.map(|v| HostTagBean {
                host_id: Some(req.host_id.clone()),
                env_id: Some(env.clone()),
                tag_name: Some(name.to_string()),
                tag_value: Some(v),
                create_date: Some(old.and_then(|t| t.create_date).unwrap_or(now)),
            });
            out.push((key, bean));
        }
        out
    }

    /// Writes or deletes a host's tag, moving its row's contribution between values.
    pub(super) fn put_host_tag(&mut self, key: (EnvId, HostId), tag: Option<HostTagBean>) {
        let row = self.agents.get(&key).cloned();
        if let Some(row) = &row {
            self.count_tag(&key, row, false);
        }
        match tag {
            Some(t) => self.host_tags.insert(key.clone(), t),
            None => self.host_tags.remove(&key),
        };
        if let Some(row) = &row {
            self.count_tag(&key, row, true);
        }
        self.changed.insert(key.0.clone());
        self.dirty.insert(Key::HostTag(key.0, key.1));
    }
}

/// The session after `current`: RUNNING `current + 1` from `now`, or FINAL after the last.
fn advance(s: &mut ScheduleBean, now: i64, current: i32) {
    if current >= s.total_sessions.unwrap_or(1) {
        s.state = Some(ScheduleState::Final);
    } else {
        s.state = Some(ScheduleState::Running);
        s.current_session = Some(current + 1);
    }
    s.state_start_time = Some(now);
}
