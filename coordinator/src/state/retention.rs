//! Retention janitors (Teletraan's `DeployJanitor` and `BuildJanitor`, §4.12), as a pure plan
//! the leader proposes and an `apply` that re-checks safety.
//!
//! Deploys: a stage keeping more than `maxDeployNum` deploys loses up to the excess, oldest
//! first, among those older than `maxDeployDay` days. Builds: a build name with more than
//! [`BuildRetention::keep_per_name`] builds loses up to the excess, oldest first, among those
//! older than [`BuildRetention::max_age_days`] that no deploy references.
//!
//! **Invariant:** never deleted: a stage's current deploy, a deploy a current deploy names
//! (rollback alias, promoted-from deploy), a deploy an agent row still runs, a build any deploy
//! references. `apply` checks this again on the state of its moment and skips what became
//! protected since the plan.

use std::collections::BTreeSet;

use proto::beans::EnvironBean;
use proto::command::{Op, OpOutput, OpResult};
use proto::ids::{BuildId, DeployId};

use super::{Key, State};

/// Most records one retention operation deletes; the rest wait for the next round.
pub const MAX_PURGE_PER_OP: usize = 1000;
/// One day in milliseconds.
const DAY_MS: i64 = 86_400_000;

/// How many builds of one name to keep, and for how long (Teletraan's `maxBuildsToKeep` and
/// `maxDaysToKeep`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BuildRetention {
    pub keep_per_name: usize,
    pub max_age_days: i64,
}

impl BuildRetention {
    /// Teletraan's defaults: 1000 builds per name, 180 days.
    pub const TELETRAAN: BuildRetention = BuildRetention { keep_per_name: 1000, max_age_days: 180 };
}

impl State {
    /// Deploys that retention must never delete (see the module docs).
    fn protected_deploys(&self) -> BTreeSet<&DeployId> {
        let mut keep = BTreeSet::new();
        for env in self.envs.values() {
            if let Some(id) = &env.deploy_id {
                keep.insert(id);
                if let Some(d) = self.deploys.get(id) {
                    keep.extend(d.alias.iter());
                    keep.extend(d.from_deploy_id.iter());
                }
            }
        }
        keep.extend(self.agents.values().filter_map(|a| a.deploy_id.as_ref()));
        keep
    }

    /// What the janitors would delete at `now`: at most one `PurgeDeploys` and one
    /// `PurgeBuilds`, each of at most [`MAX_PURGE_PER_OP`] records.
    pub fn plan_retention(&self, now: i64, builds: &BuildRetention) -> Vec<Op> {
        let keep = self.protected_deploys();
        let mut deploys: Vec<DeployId> = Vec::new();
        for (env_id, env) in &self.envs {
            let max_num =
                env.max_deploy_num.unwrap_or(EnvironBean::DEFAULT_MAX_DEPLOY_NUM).max(1) as usize;
            let max_day =
                i64::from(env.max_deploy_day.unwrap_or(EnvironBean::DEFAULT_MAX_DEPLOY_DAY).max(1));
            let count = self.deploys_by_env.get(env_id).map_or(0, BTreeSet::len);
            if count <= max_num {
                continue;
            }
            let cutoff = now - max_day * DAY_MS;
            deploys.extend(
                self.deploys_of(env_id)
                    .filter(|d| d.start_date.unwrap_or(0) < cutoff)
                    .filter_map(|d| d.id.clone())
                    .filter(|id| !keep.contains(id))
                    .take(count - max_num)
                    .take(MAX_PURGE_PER_OP - deploys.len()),
            );
            if deploys.len() >= MAX_PURGE_PER_OP {
                break;
            }
        }
        let mut purged_builds: Vec<BuildId> = Vec::new();
        let cutoff = now - builds.max_age_days * DAY_MS;
        for name in self.build_names() {
            let named: Vec<_> = self.builds_newest_first(Some(name)).collect();
            if named.len() <= builds.keep_per_name {
                continue;
            }
            let excess = named.len() - builds.keep_per_name;
            purged_builds.extend(
                named
                    .iter()
                    .rev()
                    .filter(|b| b.publish_date.unwrap_or(0) < cutoff)
                    .filter_map(|b| b.id.clone())
                    .filter(|id| self.deploys_by_build.get(id).is_none_or(BTreeSet::is_empty))
                    .take(excess)
                    .take(MAX_PURGE_PER_OP - purged_builds.len()),
            );
            if purged_builds.len() >= MAX_PURGE_PER_OP {
                break;
            }
        }
        let mut ops = Vec::new();
        if !deploys.is_empty() {
            ops.push(Op::PurgeDeploys { ids: deploys });
        }
        if !purged_builds.is_empty() {
            ops.push(Op::PurgeBuilds { ids: purged_builds });
        }
        ops
    }

    pub(super) fn purge_deploys(&mut self, ids: &[DeployId]) -> OpResult {
        let keep: BTreeSet<DeployId> = self.protected_deploys().into_iter().cloned().collect();
        let mut purged = 0u32;
        for id in ids.iter().take(MAX_PURGE_PER_OP) {
            if keep.contains(id) {
                continue;
            }
            let Some(d) = self.deploys.remove(id) else { continue };
            if let Some(b) = &d.build_id
                && let Some(set) = self.deploys_by_build.get_mut(b)
            {
                set.remove(id);
                if set.is_empty() {
                    self.deploys_by_build.remove(b);
                }
            }
            if let Some(env) = &d.env_id
                && let Some(set) = self.deploys_by_env.get_mut(env)
            {
                set.remove(&(d.start_date.unwrap_or(0), id.clone()));
                if set.is_empty() {
                    self.deploys_by_env.remove(env);
                }
            }
            self.dirty.insert(Key::Deploy(id.clone()));
            self.purge_webhook_deliveries(id);
            purged += 1;
        }
        Ok(OpOutput::Purged(purged))
    }

    pub(super) fn purge_builds(&mut self, ids: &[BuildId]) -> OpResult {
        let mut purged = 0u32;
        for id in ids.iter().take(MAX_PURGE_PER_OP) {
            if self.builds.contains_key(id) && self.delete_build(id).is_ok() {
                purged += 1;
            }
        }
        Ok(OpOutput::Purged(purged))
    }
}
