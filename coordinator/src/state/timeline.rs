//! Each host's deploy-step timeline on a stage, for the dashboard's host page: the steps of
//! its current deploy with when each began (leader time), and where it said it got the build
//! from (the agent's `extraInfo.downloadSource`). Written with the agent row it follows, so
//! replicated and persisted like it; bounded per row.

use proto::beans::AgentBean;
use proto::enums::DeployStage;
use proto::ids::{DeployId, EnvId, HostId};
use serde::{Deserialize, Serialize};

use super::{Key, State};

/// Most steps kept per (stage, host) and deploy (a deploy walks about ten; retries repeat).
pub const MAX_TIMELINE_STEPS: usize = 32;
/// Longest download source kept, in characters.
pub const MAX_DOWNLOAD_SOURCE_CHARS: usize = 256;
pub use proto::ping::DOWNLOAD_SOURCE_KEY;

/// One host's steps on one stage for its current deploy.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostTimeline {
    pub deploy_id: Option<DeployId>,
    /// Each step the host entered, with the leader time it was recorded at (ms).
    pub steps: Vec<(DeployStage, i64)>,
    pub download_source: Option<String>,
}

impl State {
    /// The host's timeline on a stage, if it has one.
    pub fn timeline(&self, env: &EnvId, host: &HostId) -> Option<&HostTimeline> {
        self.timelines.get(&(env.clone(), host.clone()))
    }

    /// Follows an agent row write: a new deploy starts a new timeline, a new step is appended.
    pub(super) fn note_step(
        &mut self,
        key: &(EnvId, HostId),
        old: Option<&AgentBean>,
        new: Option<&AgentBean>,
    ) {
        let Some(new) = new else {
            if self.timelines.remove(key).is_some() {
                self.dirty.insert(Key::Timeline(key.0.clone(), key.1.clone()));
            }
            return;
        };
        let moved =
            old.is_none_or(|o| o.deploy_id != new.deploy_id || o.deploy_stage != new.deploy_stage);
        let Some(stage) = new.deploy_stage.filter(|_| moved) else { return };
        let t = self.timelines.entry(key.clone()).or_default();
        if t.deploy_id != new.deploy_id {
            *t = HostTimeline { deploy_id: new.deploy_id.clone(), ..Default::default() };
        }
        if t.steps.len() < MAX_TIMELINE_STEPS {
            t.steps.push((stage, new.last_update_date.unwrap_or_default()));
        }
        self.dirty.insert(Key::Timeline(key.0.clone(), key.1.clone()));
    }

    /// Records where the host got `deploy`'s build from, if its timeline is on that deploy.
    pub(super) fn note_download_source(
        &mut self,
        key: &(EnvId, HostId),
        deploy: Option<&DeployId>,
        source: &str,
    ) {
        let Some(t) = self.timelines.get_mut(key) else { return };
        if deploy.is_none() || t.deploy_id.as_ref() != deploy {
            return;
        }
        let source: String = source.chars().take(MAX_DOWNLOAD_SOURCE_CHARS).collect();
        if t.download_source.as_deref() != Some(source.as_str()) {
            t.download_source = Some(source);
            self.dirty.insert(Key::Timeline(key.0.clone(), key.1.clone()));
        }
    }
}
