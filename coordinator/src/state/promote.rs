//! Auto-promotion (Teletraan's `PromoteBean` and `AutoPromoter`, §1.3 and §4.6): a stage's
//! promote config, and [`State::plan_auto_promotions`], which decides from the applied state
//! and a leader-stamped time which deploys the auto-promoter starts.
//!
//! The planner is pure. The leader runs it periodically and proposes what it returns; every
//! operation carries a compare-and-set on the stage's current deploy (`Op::CreateDeploy {
//! expected }`, `Op::PromoteFailed { failed }`), so a plan made on a state that has moved since,
//! or by a deposed leader, changes nothing. `apply` also refuses an auto-promoter deploy of a
//! BAD build or on a stage whose auto-promotion was turned off in between.

use proto::beans::{AUTO_PROMOTER_OPERATOR, BuildBean, DeployBean, PromoteBean};
use proto::command::{Op, OpError, OpOutput, OpResult};
use proto::enums::{
    AcceptanceStatus, DeployState, DeployType, EnvState, EnvironState, PromoteDisablePolicy,
    PromoteFailPolicy, PromoteType,
};
use proto::ids::{DeployId, EnvId};

use super::cron::Cron;
use super::{Key, State};

/// Fewest candidates a promote config may wait for (`queueSize`).
pub const MIN_QUEUE_SIZE: i32 = 1;
/// Most candidates a promote config may wait for (`queueSize`).
pub const MAX_QUEUE_SIZE: i32 = 10;
/// `queueSize` of a stage without a promote config, and of a new one that does not say
/// (Teletraan: 1 on GET, 10 on the first PUT; we use 1 for both).
pub const DEFAULT_QUEUE_SIZE: i32 = 1;
/// Longest bake time (`delay`), in minutes: a year.
pub const MAX_DELAY_MINUTES: i32 = 525_600;
/// How long after a schedule's fire time promotion may still start, in milliseconds
/// (Teletraan's `bufferTimeMinutes`, 2). The promote loop must run more often than this.
pub const SCHEDULE_WINDOW_MS: i64 = 120_000;
/// Most candidate builds or deploys looked at per stage and round (Teletraan's
/// `maxCheckBuildsOrDeploys`).
pub const MAX_CANDIDATES: usize = 100;
/// Longest `schedule` accepted, in characters.
pub const MAX_SCHEDULE_LEN: usize = super::cron::MAX_EXPRESSION_LEN;

/// Why a promote config was refused. Each message starts with the JSON field it is about; the
/// request changes nothing and is answered 400.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidPromote {
    #[error("queueSize {0} is outside {MIN_QUEUE_SIZE}-{MAX_QUEUE_SIZE}")]
    QueueSize(i32),
    #[error("delay {0} must be 0-{MAX_DELAY_MINUTES} minutes")]
    Delay(i32),
    #[error("schedule {text:?} {reason}")]
    Schedule { text: String, reason: String },
    #[error("predStage {0:?} must be \"BUILD\" or a stage name (1-64 of A-Z a-z 0-9 _ -)")]
    PredStageName(String),
    #[error("predStage {0:?} is this stage; promote from another stage or from BUILD")]
    PredStageSelf(String),
    #[error("predStage {stage:?}: env {env} has no such stage")]
    PredStageMissing { env: String, stage: String },
    #[error("predStage {stage:?} would make a promotion cycle: {cycle}")]
    PredStageCycle { stage: String, cycle: String },
    #[error("predStage is required when type is AUTO (a stage name, or BUILD)")]
    PredStageRequired,
}

impl From<InvalidPromote> for OpError {
    fn from(e: InvalidPromote) -> Self {
        OpError::Invalid { reason: e.to_string() }
    }
}

/// Checks the fields of a promote config or patch on their own (no state needed).
pub fn check_promote_fields(p: &PromoteBean) -> Result<(), InvalidPromote> {
    if let Some(q) = p.queue_size
        && !(MIN_QUEUE_SIZE..=MAX_QUEUE_SIZE).contains(&q)
    {
        return Err(InvalidPromote::QueueSize(q));
    }
    if let Some(d) = p.delay
        && !(0..=MAX_DELAY_MINUTES).contains(&d)
    {
        return Err(InvalidPromote::Delay(d));
    }
    if let Some(s) = p.schedule.as_deref().filter(|s| !s.trim().is_empty()) {
        Cron::parse(s).map_err(|e| InvalidPromote::Schedule {
            text: s.chars().take(MAX_SCHEDULE_LEN).collect(),
            reason: e.to_string(),
        })?;
    }
    if let Some(pred) = p.pred_stage.as_deref().filter(|s| !s.is_empty())
        && pred != PromoteBean::PRED_STAGE_BUILD
    {
        let ok = pred.len() <= 64
            && pred.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
        if !ok {
            return Err(InvalidPromote::PredStageName(pred.to_string()));
        }
    }
    Ok(())
}

/// The promote config of a stage that has none (Teletraan's `genDefaultEnvPromote`).
pub fn default_promote(env_id: &EnvId) -> PromoteBean {
    PromoteBean {
        env_id: Some(env_id.clone()),
        promote_type: Some(PromoteType::Manual),
        queue_size: Some(DEFAULT_QUEUE_SIZE),
        delay: Some(0),
        disable_policy: Some(PromoteDisablePolicy::Auto),
        fail_policy: Some(PromoteFailPolicy::Continue),
        ..Default::default()
    }
}

/// Whether the auto-promoter may replace this current deploy (`isCurrentDeployRetirable`):
/// none, or a final acceptance, or FAILING. A RUNNING deploy, or one succeeding but awaiting
/// acceptance, blocks promotion.
fn retirable(current: Option<&DeployBean>) -> bool {
    let Some(d) = current else { return true };
    let state = d.state.unwrap_or(DeployState::Running);
    if state.is_final() {
        return false;
    }
    d.acceptance_status.is_some_and(AcceptanceStatus::is_final) || state == DeployState::Failing
}

/// `isDeployFailed`: REJECTED by acceptance tests, or FAILING.
fn failed(d: &DeployBean) -> bool {
    d.acceptance_status == Some(AcceptanceStatus::Rejected) || d.state == Some(DeployState::Failing)
}

impl State {
    /// A stage's promote config, if one was ever set.
    pub fn promote(&self, env_id: &EnvId) -> Option<&PromoteBean> {
        self.promotes.get(env_id)
    }

    /// A stage's promote config, or the default one (Teletraan's GET).
    pub fn promote_or_default(&self, env_id: &EnvId) -> PromoteBean {
        self.promote(env_id).cloned().unwrap_or_else(|| default_promote(env_id))
    }

    /// `PUT .../promotes`: merges `patch` into the stage's config (or the default), validates
    /// the result against the state, records it in the config history.
    pub(super) fn update_promote(
        &mut self,
        now: i64,
        env_id: &EnvId,
        patch: PromoteBean,
        operator: String,
    ) -> OpResult {
        let env = self
            .envs
            .get(env_id)
            .ok_or_else(|| OpError::NotFound { what: format!("stage {env_id}") })?;
        check_promote_fields(&patch)?;
        let mut next = self.promote_or_default(env_id);
        macro_rules! merge {
            ($($field:ident),*) => { $( if patch.$field.is_some() { next.$field = patch.$field.clone(); } )* };
        }
        merge!(promote_type, pred_stage, queue_size, schedule, delay, disable_policy, fail_policy);
        // An empty string clears a text field.
        next.pred_stage = next.pred_stage.filter(|s| !s.is_empty());
        next.schedule = next.schedule.filter(|s| !s.trim().is_empty());
        let env_name = env.env_name.clone().unwrap_or_default();
        let stage_name = env.stage_name.clone().unwrap_or_default();
        if let Some(pred) = next.pred_stage.clone()
            && pred != PromoteBean::PRED_STAGE_BUILD
        {
            if pred == stage_name {
                return Err(InvalidPromote::PredStageSelf(pred).into());
            }
            if self.env_id(&env_name, &pred).is_none() {
                return Err(InvalidPromote::PredStageMissing { env: env_name, stage: pred }.into());
            }
            // Walk the predecessors: a cycle would promote deploys around it forever.
            let mut chain = vec![stage_name.clone(), pred.clone()];
            let mut at = pred.clone();
            while let Some(up) = self
                .env_id(&env_name, &at)
                .and_then(|id| self.promotes.get(id))
                .and_then(|p| p.pred_stage.clone())
                .filter(|p| p != PromoteBean::PRED_STAGE_BUILD)
            {
                chain.push(up.clone());
                if up == stage_name {
                    chain.reverse();
                    return Err(InvalidPromote::PredStageCycle {
                        stage: pred,
                        cycle: chain.join(" -> "),
                    }
                    .into());
                }
                if chain.len() > self.envs.len() + 1 {
                    break; // an older cycle not through this stage; it is not ours to judge
                }
                at = up;
            }
        }
        if next.promote_type == Some(PromoteType::Auto) && next.pred_stage.is_none() {
            return Err(InvalidPromote::PredStageRequired.into());
        }
        next.env_id = Some(env_id.clone());
        next.last_operator = Some(operator.clone());
        next.last_update = Some(now);
        let change = serde_json::to_string(&patch).expect("beans serialize");
        use proto::beans::ConfigHistoryBean as H;
        self.record_history(now, env_id, H::TYPE_ENV_PROMOTE, &operator, change);
        self.promotes.insert(env_id.clone(), next.clone());
        self.dirty.insert(Key::Promote(env_id.clone()));
        Ok(OpOutput::Promote(next))
    }

    /// `disableAutoPromote`: turns an AUTO stage MANUAL and records it. Unless `forced` (the
    /// fail policy), only the disable policy AUTO allows it, and never for the auto-promoter.
    pub(super) fn disable_auto_promote(
        &mut self,
        now: i64,
        env_id: &EnvId,
        operator: &str,
        forced: bool,
    ) {
        let Some(p) = self.promotes.get_mut(env_id) else { return };
        if p.promote_type != Some(PromoteType::Auto) {
            return;
        }
        let policy = p.disable_policy.unwrap_or(PromoteDisablePolicy::Auto);
        if !forced && (operator == AUTO_PROMOTER_OPERATOR || policy == PromoteDisablePolicy::Manual)
        {
            return;
        }
        p.promote_type = Some(PromoteType::Manual);
        p.last_operator = Some(operator.to_string());
        p.last_update = Some(now);
        let change = serde_json::json!({ "type": PromoteType::Manual }).to_string();
        use proto::beans::ConfigHistoryBean as H;
        self.record_history(now, env_id, H::TYPE_ENV_PROMOTE, operator, change);
        self.dirty.insert(Key::Promote(env_id.clone()));
    }

    /// Checks an auto-promoter deploy at apply time: auto-promotion is still on and the build
    /// is not BAD (the plan was made on an earlier state).
    pub(super) fn check_auto_promotion(&self, env_id: &EnvId, deploy: &DeployBean) -> OpResult {
        if deploy.deploy_type.unwrap_or(DeployType::Regular) == DeployType::Rollback {
            return Ok(OpOutput::Done); // the fail policy's rollback
        }
        if self.promote(env_id).and_then(|p| p.promote_type) != Some(PromoteType::Auto) {
            return Err(OpError::Conflict {
                reason: format!("auto-promotion of stage {env_id} was turned off"),
            });
        }
        if let Some(b) = &deploy.build_id
            && let Some(tag) = self.bad_build_tag(b)
        {
            return Err(OpError::Conflict {
                reason: format!(
                    "build {b} is tagged BAD_BUILD (tag {}); it is never auto-promoted",
                    tag.id.as_ref().map_or("-", |t| t.as_str())
                ),
            });
        }
        Ok(OpOutput::Done)
    }

    /// The fail policy: roll back (if `rollback` is given) and turn auto-promotion off, if the
    /// stage's current deploy is still `failed`.
    pub(super) fn promote_failed(
        &mut self,
        now: i64,
        env_id: &EnvId,
        failed: &DeployId,
        rollback: Option<DeployBean>,
    ) -> OpResult {
        let env = self
            .envs
            .get(env_id)
            .ok_or_else(|| OpError::NotFound { what: format!("stage {env_id}") })?;
        if env.deploy_id.as_ref() != Some(failed) {
            return Err(OpError::Conflict {
                reason: format!("deploy {failed} is no longer the current deploy of {env_id}"),
            });
        }
        let out = match rollback {
            Some(d) => self.create_deploy(now, env_id, d, Some(failed.clone()))?,
            None => OpOutput::Done,
        };
        self.disable_auto_promote(now, env_id, AUTO_PROMOTER_OPERATOR, true);
        Ok(out)
    }

    /// The newest SUCCEEDED deploy of a stage: the target of a rollback without one.
    pub fn rollback_target(&self, env_id: &EnvId) -> Option<&DeployBean> {
        self.deploys_of(env_id).rev().find(|d| d.state == Some(DeployState::Succeeded))
    }

    /// What the auto-promoter does at `now` (§4.6): at most one operation per stage with an
    /// AUTO promote config, in stage-id order. `new_id` names the deploys it would create.
    pub fn plan_auto_promotions(&self, now: i64, new_id: &mut dyn FnMut() -> DeployId) -> Vec<Op> {
        let mut ops = Vec::new();
        for (env_id, promote) in &self.promotes {
            if let Some(op) = self.plan_stage(now, env_id, promote, new_id) {
                ops.push(op);
            }
        }
        ops
    }

    fn plan_stage(
        &self,
        now: i64,
        env_id: &EnvId,
        promote: &PromoteBean,
        new_id: &mut dyn FnMut() -> DeployId,
    ) -> Option<Op> {
        let env = self.envs.get(env_id)?;
        if env.env_state.unwrap_or(EnvState::Normal) != EnvState::Normal
            || env.state.unwrap_or(EnvironState::Normal) != EnvironState::Normal
            || promote.promote_type != Some(PromoteType::Auto)
        {
            return None;
        }
        let pred = promote.pred_stage.as_deref().filter(|p| !p.is_empty())?;
        let current = env.deploy_id.as_ref().and_then(|d| self.deploys.get(d));
        if !retirable(current) {
            return None;
        }
        if let Some(curr) = current.filter(|d| failed(d)) {
            let policy = promote.fail_policy.unwrap_or(PromoteFailPolicy::Continue);
            if policy != PromoteFailPolicy::Continue {
                // Quirk fixed: with no SUCCEEDED deploy to go back to, Teletraan's rollback
                // throws and auto-promotion stays on; we still turn it off.
                let rollback = (policy == PromoteFailPolicy::Rollback)
                    .then(|| self.rollback_target(env_id))
                    .flatten()
                    .map(|target| DeployBean {
                        id: Some(new_id()),
                        build_id: target.build_id.clone(),
                        deploy_type: Some(DeployType::Rollback),
                        alias: target.id.clone(),
                        operator: Some(AUTO_PROMOTER_OPERATOR.to_string()),
                        description: Some(format!(
                            "Auto rollback of failed deploy {}",
                            curr.id.as_ref().map_or("-", |d| d.as_str())
                        )),
                        ..Default::default()
                    });
                return Some(Op::PromoteFailed {
                    env_id: env_id.clone(),
                    failed: curr.id.clone()?,
                    rollback,
                });
            }
        }
        let size = promote.queue_size.unwrap_or(DEFAULT_QUEUE_SIZE).clamp(1, MAX_QUEUE_SIZE);
        let delay_ms = i64::from(promote.delay.unwrap_or(0).max(0)) * 60_000;
        let end = now - delay_ms;
        let schedule = match promote.schedule.as_deref().filter(|s| !s.trim().is_empty()) {
            Some(s) => Some(Cron::parse(s).ok()?),
            None => None,
        };
        // Quirk fixed: Teletraan checks the window only when promoting builds; a schedule
        // limits promotion from a stage to its window too.
        if let Some(cron) = &schedule
            && !cron.fired_within(now, SCHEDULE_WINDOW_MS)
        {
            return None;
        }
        // Quirk fixed: Teletraan discards the delay when it asks the schedule about a
        // candidate; a candidate is due at the first fire time after it has baked.
        let due = |t: i64| match &schedule {
            Some(cron) => cron.next_after(t + delay_ms).is_some_and(|fire| fire <= now),
            None => true,
        };
        let pick = |n: usize| if schedule.is_some() { 0 } else { n - 1 };
        let expected = env.deploy_id.clone();
        if pred == PromoteBean::PRED_STAGE_BUILD {
            let start = current
                .and_then(|d| d.build_id.as_ref())
                .and_then(|b| self.builds.get(b))
                .and_then(|b| b.publish_date)
                .unwrap_or(0);
            if end < start {
                return None;
            }
            let branch = env.branch.as_deref().filter(|b| !b.is_empty());
            let candidates: Vec<&BuildBean> = self
                .builds_newest_first(Some(env.build_name.as_deref()?))
                .filter(|b| branch.is_none_or(|br| b.branch.as_deref() == Some(br)))
                .filter(|b| b.publish_date.is_some_and(|p| start < p && p < end))
                .take(MAX_CANDIDATES)
                .filter(|b| b.id.as_ref().is_some_and(|id| self.bad_build_tag(id).is_none()))
                .collect();
            if candidates.len() < size as usize {
                return None;
            }
            let build = candidates
                .iter()
                .skip(pick(size as usize))
                .find(|b| due(b.publish_date.unwrap_or(0)))?;
            let build_id = build.id.clone()?;
            let deploy = DeployBean {
                id: Some(new_id()),
                description: Some(format!("Auto promote build {build_id}")),
                build_id: Some(build_id),
                deploy_type: Some(DeployType::Regular),
                operator: Some(AUTO_PROMOTER_OPERATOR.to_string()),
                ..Default::default()
            };
            return Some(Op::CreateDeploy { env_id: env_id.clone(), deploy, expected });
        }
        let pred_env = self.env(env.env_name.as_deref()?, pred)?;
        let pred_id = pred_env.id.clone()?;
        pred_env.deploy_id.as_ref()?;
        // Candidates are newer than what this stage last took from the predecessor (or than
        // its current deploy, if that did not come from there).
        let start = current.map_or(0, |c| {
            match c.from_deploy_id.as_ref().and_then(|f| self.deploys.get(f)) {
                Some(from) if from.env_id.as_ref() == Some(&pred_id) => {
                    from.start_date.unwrap_or(0)
                }
                _ => c.start_date.unwrap_or(0),
            }
        });
        if end < start {
            return None;
        }
        let candidates: Vec<&DeployBean> = self
            .deploys_of(&pred_id)
            .rev()
            .filter(|d| matches!(d.deploy_type, Some(DeployType::Regular | DeployType::Hotfix)))
            .filter(|d| d.acceptance_status == Some(AcceptanceStatus::Accepted))
            .filter(|d| d.start_date.is_some_and(|s| start < s && s < end))
            // Builds of another name could not be deployed here (`validateBuild`).
            .filter(|d| {
                d.build_id
                    .as_ref()
                    .and_then(|b| self.builds.get(b))
                    .is_some_and(|b| b.name == env.build_name)
            })
            .take(MAX_CANDIDATES)
            .filter(|d| d.build_id.as_ref().is_some_and(|b| self.bad_build_tag(b).is_none()))
            .collect();
        if candidates.len() < size as usize {
            return None;
        }
        let from =
            candidates.iter().skip(pick(size as usize)).find(|d| due(d.start_date.unwrap_or(0)))?;
        let from_id = from.id.clone()?;
        let deploy = DeployBean {
            id: Some(new_id()),
            description: Some(format!("Auto promote deploy {from_id}")),
            build_id: from.build_id.clone(),
            deploy_type: Some(DeployType::Regular),
            from_deploy_id: Some(from_id),
            operator: Some(AUTO_PROMOTER_OPERATOR.to_string()),
            ..Default::default()
        };
        Some(Op::CreateDeploy { env_id: env_id.clone(), deploy, expected })
    }
}
