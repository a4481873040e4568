//! Webhooks in the replicated state: each stage's hook lists, and the deliveries each deploy
//! owes (Teletraan §4.5, with outcomes recorded instead of fire-and-forget).
//!
//! A delivery is written when its hook falls due — the pre-deploy hooks inside the
//! `CreateDeploy` that creates the deploy, the post-deploy hooks inside the apply that first
//! moves it to SUCCEEDING — so a leader change cannot lose one: the next leader finds it
//! pending and sends it. Delivery is therefore at least once; a receiver may see a repeat when
//! a leader dies between the HTTP answer and `RecordWebhookOutcome`.

use proto::beans::{ConfigHistoryBean, EnvWebHookBean, WebHookBean, WebhookDeliveryBean};
use proto::command::{OpError, OpOutput, OpResult};
use proto::enums::{DeployState, DeployType, WebhookDeliveryState, WebhookPhase};
use proto::ids::{DeployId, EnvId};

use super::{Key, State, invalid};
use crate::webhooks::{HookRequest, HookVars, InvalidHook, render};

/// Most hooks in one list (pre or post) of a stage.
pub const MAX_WEBHOOKS_PER_PHASE: usize = 16;
/// Longest hook body, in bytes (after substitution it grows by at most a few dozen bytes).
pub const MAX_WEBHOOK_BODY_BYTES: usize = 64 * 1024;
/// Longest recorded outcome detail, in characters.
pub const MAX_WEBHOOK_DETAIL_CHARS: usize = 1024;

/// A delivery's key: deploy, phase (0 pre, 1 post), position in the list.
pub(super) type DeliveryKey = (DeployId, u8, u32);

pub(super) fn phase_code(phase: WebhookPhase) -> u8 {
    match phase {
        WebhookPhase::Pre => 0,
        WebhookPhase::Post => 1,
    }
}

/// The persisted key suffix of a delivery: `{deploy}/{phase}/{index}`.
pub(super) fn delivery_key(key: &DeliveryKey) -> String {
    format!("{}/{}/{:08x}", key.0, key.1, key.2)
}

pub(super) fn parse_delivery_key(id: &str) -> Result<DeliveryKey, String> {
    let mut parts = id.rsplitn(3, '/');
    let (Some(index), Some(phase), Some(deploy)) = (parts.next(), parts.next(), parts.next())
    else {
        return Err(format!("webhook delivery key {id:?} is not deploy/phase/index"));
    };
    let index = u32::from_str_radix(index, 16).map_err(|e| format!("delivery key {id:?}: {e}"))?;
    let phase: u8 = phase.parse().map_err(|e| format!("delivery key {id:?}: {e}"))?;
    Ok((DeployId::new(deploy), phase, index))
}

/// A delivery the leader still has to make.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingWebhook {
    pub deploy_id: DeployId,
    pub phase: WebhookPhase,
    pub index: u32,
    /// The request to send, or why the hook cannot be sent.
    pub request: Result<HookRequest, InvalidHook>,
}

/// Checks a hook list before it is stored: each hook renders, bodies are bounded.
fn validate(hooks: &EnvWebHookBean) -> Result<(), OpError> {
    let probe = HookVars {
        deploy_id: "probe".into(),
        deploy_start_ms: 0,
        deploy_state: DeployState::Running,
        deploy_type: DeployType::Regular,
    };
    for (name, list) in
        [("preDeployHooks", &hooks.pre_deploy_hooks), ("postDeployHooks", &hooks.post_deploy_hooks)]
    {
        if list.len() > MAX_WEBHOOKS_PER_PHASE {
            return Err(invalid(format!(
                "{name} has {} hooks; at most {MAX_WEBHOOKS_PER_PHASE} are allowed",
                list.len()
            )));
        }
        for (i, hook) in list.iter().enumerate() {
            if hook.body.as_ref().is_some_and(|b| b.len() > MAX_WEBHOOK_BODY_BYTES) {
                return Err(invalid(format!(
                    "{name}[{i}]: body is longer than {MAX_WEBHOOK_BODY_BYTES} bytes"
                )));
            }
            render(hook, &probe).map_err(|e| invalid(format!("{name}[{i}]: {e}")))?;
        }
    }
    Ok(())
}

impl State {
    /// A stage's webhooks (empty lists when none are set).
    pub fn web_hooks(&self, env_id: &EnvId) -> EnvWebHookBean {
        self.web_hooks.get(env_id).cloned().unwrap_or_default()
    }

    /// The deliveries of one deploy: pre-deploy hooks first, each list in order.
    pub fn webhook_deliveries(&self, deploy_id: &DeployId) -> Vec<WebhookDeliveryBean> {
        let lo = (deploy_id.clone(), 0, 0);
        let hi = (deploy_id.clone(), u8::MAX, u32::MAX);
        self.webhook_deliveries.range(lo..=hi).map(|(_, d)| d.clone()).collect()
    }

    /// Every pending delivery with the request it becomes, in key order.
    pub fn pending_webhooks(&self) -> Vec<PendingWebhook> {
        self.pending_webhooks
            .iter()
            .filter_map(|key| {
                let d = self.webhook_deliveries.get(key)?;
                let deploy = self.deploys.get(&key.0)?;
                let vars = HookVars {
                    deploy_id: key.0.to_string(),
                    deploy_start_ms: deploy.start_date.unwrap_or_default(),
                    deploy_state: d.deploy_state.unwrap_or(DeployState::Running),
                    deploy_type: deploy.deploy_type.unwrap_or(DeployType::Regular),
                };
                Some(PendingWebhook {
                    deploy_id: key.0.clone(),
                    phase: d.phase.unwrap_or(WebhookPhase::Pre),
                    index: key.2,
                    request: render(&d.hook, &vars),
                })
            })
            .collect()
    }

    pub(super) fn set_web_hooks(
        &mut self,
        now: i64,
        env_id: &EnvId,
        hooks: EnvWebHookBean,
        operator: String,
    ) -> OpResult {
        if !self.envs.contains_key(env_id) {
            return Err(OpError::NotFound { what: format!("stage {env_id}") });
        }
        validate(&hooks)?;
        self.touch_env(now, env_id, &operator)?;
        let change = serde_json::to_string(&hooks).expect("beans serialize");
        self.record_history(now, env_id, ConfigHistoryBean::TYPE_ENV_WEBHOOK, &operator, change);
        if hooks == EnvWebHookBean::default() {
            self.web_hooks.remove(env_id);
        } else {
            self.web_hooks.insert(env_id.clone(), hooks.clone());
        }
        self.dirty.insert(Key::WebHooks(env_id.clone()));
        Ok(OpOutput::WebHooks(hooks))
    }

    /// Records the stage's `phase` hooks as due for `deploy_id`, whose state is `state` now.
    pub(super) fn webhooks_due(
        &mut self,
        now: i64,
        env_id: &EnvId,
        deploy_id: &DeployId,
        phase: WebhookPhase,
        state: DeployState,
    ) {
        let hooks: Vec<WebHookBean> = match (self.web_hooks.get(env_id), phase) {
            (None, _) => return,
            (Some(h), WebhookPhase::Pre) => h.pre_deploy_hooks.clone(),
            (Some(h), WebhookPhase::Post) => h.post_deploy_hooks.clone(),
        };
        for (index, hook) in (0u32..).zip(hooks) {
            let key = (deploy_id.clone(), phase_code(phase), index);
            let bean = WebhookDeliveryBean {
                deploy_id: Some(deploy_id.clone()),
                phase: Some(phase),
                index,
                hook,
                deploy_state: Some(state),
                state: Some(WebhookDeliveryState::Pending),
                attempts: 0,
                detail: None,
                due_date: Some(now),
                completed_date: None,
            };
            self.webhook_deliveries.insert(key.clone(), bean);
            self.pending_webhooks.insert(key.clone());
            self.dirty.insert(Key::WebhookDelivery(key));
        }
    }

    /// Records the final outcome of the delivery `(deploy, phase, index)`.
    pub(super) fn record_webhook_outcome(
        &mut self,
        now: i64,
        (deploy_id, phase, index): (DeployId, WebhookPhase, u32),
        succeeded: bool,
        attempts: u32,
        detail: String,
    ) -> OpResult {
        let key = (deploy_id, phase_code(phase), index);
        if !self.pending_webhooks.remove(&key) {
            // Already recorded (a leader before this one finished it) or purged with its deploy.
            return Ok(OpOutput::Done);
        }
        let d = self.webhook_deliveries.get_mut(&key).expect("pending deliveries exist");
        d.state = Some(if succeeded {
            WebhookDeliveryState::Succeeded
        } else {
            WebhookDeliveryState::Failed
        });
        d.attempts = attempts;
        d.detail = Some(detail.chars().take(MAX_WEBHOOK_DETAIL_CHARS).collect());
        d.completed_date = Some(now);
        self.dirty.insert(Key::WebhookDelivery(key));
        Ok(OpOutput::Done)
    }

    /// Drops a purged deploy's deliveries.
    pub(super) fn purge_webhook_deliveries(&mut self, deploy_id: &DeployId) {
        let lo = (deploy_id.clone(), 0, 0);
        let hi = (deploy_id.clone(), u8::MAX, u32::MAX);
        let keys: Vec<DeliveryKey> =
            self.webhook_deliveries.range(lo..=hi).map(|(k, _)| k.clone()).collect();
        for key in keys {
            self.webhook_deliveries.remove(&key);
            self.pending_webhooks.remove(&key);
            self.dirty.insert(Key::WebhookDelivery(key));
        }
    }
}
