//! The replicated state: Teletraan's stages, builds and deploys, and the deterministic `apply`
//! of [`Op`]s to them.
//!
//! **Invariant:** `apply` is a pure function of the state and the operation: no clock (time is
//! `now_ms`, stamped by the leader), no randomness (ids come in the operation), and only
//! ordered maps, so every replica reaches byte-identical state. A refused operation changes
//! nothing.
//!
//! Persistence: every record `apply` touches is marked dirty; the store drains
//! [`State::take_dirty`] into the same RocksDB `WriteBatch` as `last_applied`. Keys are a
//! one-letter table prefix and the record id (`e/`, `b/`, `d/`); values are postcard beans.

pub mod auth;
pub mod cron;
pub mod deploy;
pub mod history;
pub mod prefetch;
pub mod promote;
pub mod retention;
pub mod schedule;
pub mod tags;
pub mod timeline;
pub mod webhooks;

use std::collections::{BTreeMap, BTreeSet};

use proto::beans::{
    AgentBean, BuildBean, DeployBean, DeployConstraintBean, EnvironBean, HostTagBean, PromoteBean,
    ScheduleBean, TagBean,
};
use proto::command::{EnvConfigKind, Op, OpError, OpOutput, OpResult};
use proto::ids::{BuildId, DeployId, EnvId, HostId, TagId};

use self::deploy::{Capacity, HostRecord, Progress, StageCounters};

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Key {
    Env(EnvId),
    Build(BuildId),
    Deploy(DeployId),
    Agent(EnvId, HostId),
    Host(String),
    Capacity(EnvId),
    Config(EnvId, EnvConfigKind),
    History(EnvId, u64),
    HistorySeq,
    /// The last error output a host reported for a stage (Teletraan's `agent_errors`).
    AgentError(EnvId, String),
    /// A stage's promote config (Teletraan's `promotes`).
    Promote(EnvId),
    Tag(TagId),
    /// A token record, by the token's BLAKE3 hash.
    Token(String),
    /// A user's role binding.
    UserRole(auth::BindingKey),
    /// A stage's schedule (waves).
    Schedule(EnvId),
    /// A stage's deploy constraint.
    Constraint(EnvId),
    /// A host's value for its stage's constraint key (Teletraan's `host_tags`).
    HostTag(EnvId, HostId),
    /// A stage's webhooks.
    WebHooks(EnvId),
    /// One webhook delivery of a deploy.
    WebhookDelivery(webhooks::DeliveryKey),
    /// A host's step timeline on a stage.
    Timeline(EnvId, HostId),
}

impl Key {
    fn encode(&self) -> Vec<u8> {
        match self {
            Key::Env(id) => format!("e/{id}").into_bytes(),
            Key::Build(id) => format!("b/{id}").into_bytes(),
            Key::Deploy(id) => format!("d/{id}").into_bytes(),
            // Stage ids never contain '/', so the first '/' after the prefix splits the pair.
            Key::Agent(env, host) => format!("a/{env}/{host}").into_bytes(),
            Key::Host(name) => format!("h/{name}").into_bytes(),
            Key::Capacity(id) => format!("c/{id}").into_bytes(),
            Key::Config(id, EnvConfigKind::Script) => format!("s/{id}").into_bytes(),
            Key::Config(id, EnvConfigKind::Agent) => format!("g/{id}").into_bytes(),
            // Zero-padded hex keeps a stage's entries in order on disk.
            Key::History(id, seq) => format!("y/{id}/{seq:016x}").into_bytes(),
            Key::HistorySeq => b"z/history_seq".to_vec(),
            Key::AgentError(env, host) => format!("x/{env}/{host}").into_bytes(),
            Key::Promote(id) => format!("p/{id}").into_bytes(),
            Key::Tag(id) => format!("t/{id}").into_bytes(),
            Key::Token(hash) => format!("k/{hash}").into_bytes(),
            Key::UserRole(key) => auth::binding_key(key),
            Key::Schedule(id) => format!("w/{id}").into_bytes(),
            Key::Constraint(id) => format!("q/{id}").into_bytes(),
            Key::HostTag(env, host) => format!("v/{env}/{host}").into_bytes(),
            Key::WebHooks(id) => format!("n/{id}").into_bytes(),
            Key::WebhookDelivery(key) => format!("o/{}", webhooks::delivery_key(key)).into_bytes(),
            Key::Timeline(env, host) => format!("l/{env}/{host}").into_bytes(),
        }
    }
}

/// Stage, build and deploy records with their secondary indexes.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct State {
    envs: BTreeMap<EnvId, EnvironBean>,
    env_by_name: BTreeMap<(String, String), EnvId>,
    builds: BTreeMap<BuildId, BuildBean>,
    /// (name, publish date, id): builds of a name in publish order.
    builds_by_name: BTreeSet<(String, i64, BuildId)>,
    deploys: BTreeMap<DeployId, DeployBean>,
    deploys_by_build: BTreeMap<BuildId, BTreeSet<DeployId>>,
    /// stage -> (start date, id) of its deploys, oldest first.
    deploys_by_env: BTreeMap<EnvId, BTreeSet<(i64, DeployId)>>,
    /// Agent rows, one per (stage, host).
    agents: BTreeMap<(EnvId, HostId), AgentBean>,
    /// host name -> keys of its agent rows.
    agents_by_host: BTreeMap<String, BTreeSet<(EnvId, HostId)>>,
    /// host name -> what it last reported about itself.
    hosts: BTreeMap<String, HostRecord>,
    capacity: BTreeMap<EnvId, Capacity>,
    capacity_by_host: BTreeMap<String, BTreeSet<EnvId>>,
    capacity_by_group: BTreeMap<String, BTreeSet<EnvId>>,
    /// Script variables and agent configs per stage.
    configs: BTreeMap<(EnvId, EnvConfigKind), BTreeMap<String, String>>,
    /// Config history, by stage and replicated sequence number.
    history: BTreeMap<(EnvId, u64), proto::beans::ConfigHistoryBean>,
    history_seq: u64,
    /// (stage, host name) -> the last error output the host reported there.
    agent_errors: BTreeMap<(EnvId, String), String>,
    /// Promote configs of the stages that have one.
    promotes: BTreeMap<EnvId, PromoteBean>,
    tags: BTreeMap<TagId, TagBean>,
    /// build name -> its BUILD tags in effective-tag order (derived from `tags`).
    build_tags: BTreeMap<String, BTreeSet<tags::TagOrder>>,
    /// BUILD tag -> the build it was placed on, from `metaInfo` (derived from `tags`).
    tagged_builds: BTreeMap<TagId, BuildBean>,
    /// Teletraan's per-stage counts, maintained on every agent write (derived, not persisted).
    counters: BTreeMap<EnvId, StageCounters>,
    /// The current deploy's progress per stage (derived, not persisted).
    progress: BTreeMap<EnvId, Progress>,
    /// Stages changed by the last applies in ways that may give a waiting host a goal, and
    /// whether capacity moved (may concern any host). Drained by [`State::take_changes`].
    changed: BTreeSet<EnvId>,
    capacity_changed: bool,
    /// Parallelism slots freed per stage by the last applies (wakes that many waiters).
    freed: BTreeMap<EnvId, u32>,
    /// Admissions and lease expiries of the last applies, per stage name (for metrics).
    admitted: BTreeMap<crate::feed::StageName, u32>,
    leases_expired: BTreeMap<crate::feed::StageName, u32>,
    dirty: BTreeSet<Key>,
    /// Tokens and role bindings.
    auth: auth::AuthState,
    // ----- schedules and deploy constraints (`schedule.rs`) -----
    schedules: BTreeMap<EnvId, ScheduleBean>,
    constraints: BTreeMap<EnvId, DeployConstraintBean>,
    /// (stage, host) -> the host's value for the stage's constraint key.
    host_tags: BTreeMap<(EnvId, HostId), HostTagBean>,
    /// (stage, tag value) -> counts over agent rows (derived, not persisted).
    tag_counts: BTreeMap<(EnvId, String), schedule::TagCounts>,
    // ----- webhooks (`webhooks.rs`) -----
    web_hooks: BTreeMap<EnvId, proto::beans::EnvWebHookBean>,
    webhook_deliveries: BTreeMap<webhooks::DeliveryKey, proto::beans::WebhookDeliveryBean>,
    /// Deliveries not yet recorded as done (derived from `webhook_deliveries`).
    pending_webhooks: BTreeSet<webhooks::DeliveryKey>,
    /// (stage, host) -> its steps on the current deploy (`timeline.rs`).
    timelines: BTreeMap<(EnvId, HostId), timeline::HostTimeline>,
}

fn invalid(reason: impl Into<String>) -> OpError {
    OpError::Invalid { reason: reason.into() }
}

fn env_key(env: &EnvironBean) -> Option<(String, String)> {
    Some((env.env_name.clone()?, env.stage_name.clone()?))
}

impl State {
    // ----- apply -------------------------------------------------------------------------

    /// Applies one operation at leader time `now_ms`.
    pub fn apply(&mut self, now_ms: i64, op: Op) -> OpResult {
        match op {
            Op::Noop => Ok(OpOutput::Done),
            Op::CreateEnv { env } => self.create_env(now_ms, env),
            Op::UpdateEnv { env_name, stage_name, patch, operator } => {
                self.update_env(now_ms, &env_name, &stage_name, &patch, operator)
            }
            Op::DeleteEnv { env_name, stage_name } => self.delete_env(&env_name, &stage_name),
            Op::PublishBuild { build } => self.publish_build(now_ms, build),
            Op::DeleteBuild { build_id } => self.delete_build(&BuildId::new(build_id)),
            Op::SetCapacity { env_id, hosts, groups } => self.set_capacity(
                now_ms,
                &env_id,
                Capacity {
                    hosts: hosts.into_iter().collect(),
                    groups: groups.into_iter().collect(),
                },
            ),
            Op::CreateDeploy { env_id, deploy, expected } => {
                self.create_deploy(now_ms, &env_id, deploy, expected)
            }
            Op::Ping { request } => self.apply_ping(now_ms, &request),
            Op::HostAction { env_id, hosts, state } => {
                self.host_action(now_ms, &env_id, &hosts, state)
            }
            Op::Tick => self.tick(now_ms),
            Op::ExpireLeases { keys } => self.expire_leases(now_ms, &keys),
            Op::SetEnvConfig { env_id, kind, values, operator } => {
                self.set_env_config(now_ms, &env_id, kind, values, operator)
            }
            Op::UpdateDeploy { deploy_id, acceptance_status, description } => {
                self.update_deploy(now_ms, &deploy_id, acceptance_status, description)
            }
            Op::UpdatePromote { env_id, patch, operator } => {
                self.update_promote(now_ms, &env_id, patch, operator)
            }
            Op::PromoteFailed { env_id, failed, rollback } => {
                self.promote_failed(now_ms, &env_id, &failed, rollback)
            }
            Op::CreateTag { tag } => self.create_tag(now_ms, tag),
            Op::DeleteTag { tag_id } => self.delete_tag(&tag_id),
            Op::PurgeDeploys { ids } => self.purge_deploys(&ids),
            Op::PurgeBuilds { ids } => self.purge_builds(&ids),
            Op::RecordLiveness { seen, unreachable } => {
                self.record_liveness(now_ms, &seen, &unreachable)
            }
            Op::StopHosts { env_id, hosts } => self.stop_hosts(now_ms, &env_id, &hosts),
            Op::CreateToken { token } => self.create_token(now_ms, token),
            Op::DeleteToken { hash } => self.delete_token(&hash),
            Op::SetTokenRole { hash, role } => self.set_token_role(&hash, role),
            Op::SetUserRole { resource_type, resource_id, user, role } => {
                self.set_user_role((resource_type, resource_id, user), role)
            }
            Op::DeleteUserRole { resource_type, resource_id, user } => {
                self.delete_user_role((resource_type, resource_id, user))
            }
            Op::CreateEnvOwned { env, creator } => self.create_env_owned(now_ms, env, creator),
            Op::SetSchedule { env_id, schedule } => self.set_schedule(now_ms, &env_id, schedule),
            Op::OverrideSchedule { env_id, session } => {
                self.override_schedule(now_ms, &env_id, session)
            }
            Op::SetConstraint { env_id, constraint } => {
                self.set_constraint(now_ms, &env_id, constraint)
            }
            Op::SetWebHooks { env_id, hooks, operator } => {
                self.set_web_hooks(now_ms, &env_id, hooks, operator)
            }
            Op::RecordWebhookOutcome { deploy_id, phase, index, succeeded, attempts, detail } => {
                let key = (deploy_id, phase, index);
                self.record_webhook_outcome(now_ms, key, succeeded, attempts, detail)
            }
        }
    }

    fn create_env(&mut self, now_ms: i64, mut env: EnvironBean) -> OpResult {
        let id = env.id.clone().ok_or_else(|| invalid("a new stage needs an id"))?;
        let name = env_key(&env).ok_or_else(|| invalid("envName and stageName are required"))?;
        if self.env_by_name.contains_key(&name) {
            return Err(OpError::Conflict {
                reason: format!("stage {}/{} already exists", name.0, name.1),
            });
        }
        if self.envs.contains_key(&id) {
            return Err(OpError::Conflict { reason: format!("stage id {id} already exists") });
        }
        env.last_update = Some(now_ms);
        self.env_by_name.insert(name, id.clone());
        self.envs.insert(id.clone(), env.clone());
        self.dirty.insert(Key::Env(id));
        Ok(OpOutput::Env(env))
    }

    fn update_env(
        &mut self,
        now_ms: i64,
        env_name: &str,
        stage_name: &str,
        patch: &EnvironBean,
        operator: String,
    ) -> OpResult {
        let id = self
            .env_id(env_name, stage_name)
            .cloned()
            .ok_or_else(|| OpError::NotFound { what: format!("stage {env_name}/{stage_name}") })?;
        let env = self.envs.get(&id).expect("env_by_name points at a stage");
        let mut next = env.clone();
        // The current-deploy pointer moves only through `CreateDeploy`.
        let mut patch = patch.clone();
        patch.deploy_id = None;
        patch.deploy_type = None;
        if next.apply_update(&patch) {
            self.changed.insert(id.clone());
            let change = serde_json::to_string(&patch).expect("beans serialize");
            self.record_history(
                now_ms,
                &id,
                proto::beans::ConfigHistoryBean::TYPE_ENV_GENERAL,
                &operator,
                change,
            );
            let env = self.envs.get_mut(&id).expect("env_by_name points at a stage");
            next.last_operator = Some(operator);
            next.last_update = Some(now_ms);
            *env = next.clone();
            self.dirty.insert(Key::Env(id));
        }
        Ok(OpOutput::Env(next))
    }

    fn delete_env(&mut self, env_name: &str, stage_name: &str) -> OpResult {
        let key = (env_name.to_string(), stage_name.to_string());
        let id =
            self.env_by_name.get(&key).cloned().ok_or_else(|| OpError::NotFound {
                what: format!("stage {env_name}/{stage_name}"),
            })?;
        if self.capacity.contains_key(&id) || self.agents_of(&id).next().is_some() {
            return Err(OpError::Conflict {
                reason: format!(
                    "stage {env_name}/{stage_name} still has capacity or agents; remove its hosts and groups first"
                ),
            });
        }
        self.env_by_name.remove(&key);
        self.envs.remove(&id);
        self.counters.remove(&id);
        self.progress.remove(&id);
        for kind in [EnvConfigKind::Script, EnvConfigKind::Agent] {
            if self.configs.remove(&(id.clone(), kind)).is_some() {
                self.dirty.insert(Key::Config(id.clone(), kind));
            }
        }
        if self.promotes.remove(&id).is_some() {
            self.dirty.insert(Key::Promote(id.clone()));
        }
        if self.schedules.remove(&id).is_some() {
            self.dirty.insert(Key::Schedule(id.clone()));
        }
        if self.constraints.remove(&id).is_some() {
            self.dirty.insert(Key::Constraint(id.clone()));
        }
        if self.web_hooks.remove(&id).is_some() {
            self.dirty.insert(Key::WebHooks(id.clone()));
        }
        let tags: Vec<(EnvId, HostId)> = self
            .host_tags_of(&id)
            .filter_map(|t| Some((t.env_id.clone()?, t.host_id.clone()?)))
            .collect();
        for k in tags {
            self.host_tags.remove(&k);
            self.dirty.insert(Key::HostTag(k.0, k.1));
        }
        self.reset_tag_counts(&id);
        self.dirty.insert(Key::Env(id));
        Ok(OpOutput::Done)
    }

    fn publish_build(&mut self, now_ms: i64, mut build: BuildBean) -> OpResult {
        let id = build.id.clone().ok_or_else(|| invalid("a new build needs an id"))?;
        let name = build.name.clone().ok_or_else(|| invalid("name is required"))?;
        if self.builds.contains_key(&id) {
            return Err(OpError::Conflict { reason: format!("build {id} already exists") });
        }
        let published = *build.publish_date.get_or_insert(now_ms);
        build.commit_date.get_or_insert(now_ms);
        self.builds_by_name.insert((name, published, id.clone()));
        self.builds.insert(id.clone(), build.clone());
        self.dirty.insert(Key::Build(id));
        Ok(OpOutput::Build(build))
    }

    fn delete_build(&mut self, id: &BuildId) -> OpResult {
        let build =
            self.builds.get(id).ok_or_else(|| OpError::NotFound { what: format!("build {id}") })?;
        if let Some(deploys) = self.deploys_by_build.get(id).filter(|d| !d.is_empty()) {
            return Err(OpError::Conflict {
                reason: format!(
                    "build {id} is referenced by {} deploy(s), e.g. {}; builds that were ever deployed cannot be deleted",
                    deploys.len(),
                    deploys.iter().next().expect("non-empty")
                ),
            });
        }
        let index = (
            build.name.clone().unwrap_or_default(),
            build.publish_date.unwrap_or_default(),
            id.clone(),
        );
        self.builds_by_name.remove(&index);
        self.builds.remove(id);
        self.dirty.insert(Key::Build(id.clone()));
        Ok(OpOutput::Done)
    }

    /// Stamps a config change on the stage (`lastOperator`, `lastUpdate`), or 404.
    fn touch_env(&mut self, now_ms: i64, env_id: &EnvId, operator: &str) -> Result<(), OpError> {
        let env = self
            .envs
            .get_mut(env_id)
            .ok_or_else(|| OpError::NotFound { what: format!("stage {env_id}") })?;
        env.last_operator = Some(operator.to_string());
        env.last_update = Some(now_ms);
        self.dirty.insert(Key::Env(env_id.clone()));
        Ok(())
    }

    fn set_env_config(
        &mut self,
        now_ms: i64,
        env_id: &EnvId,
        kind: EnvConfigKind,
        values: BTreeMap<String, String>,
        operator: String,
    ) -> OpResult {
        self.touch_env(now_ms, env_id, &operator)?;
        let change_type = match kind {
            EnvConfigKind::Script => proto::beans::ConfigHistoryBean::TYPE_ENV_SCRIPT,
            EnvConfigKind::Agent => proto::beans::ConfigHistoryBean::TYPE_ENV_ADVANCED,
        };
        let change = serde_json::to_string(&values).expect("maps serialize");
        self.record_history(now_ms, env_id, change_type, &operator, change);
        let key = (env_id.clone(), kind);
        if values.is_empty() {
            self.configs.remove(&key);
        } else {
            self.configs.insert(key, values);
        }
        self.dirty.insert(Key::Config(env_id.clone(), kind));
        Ok(OpOutput::Done)
    }

    /// A stage's script variables or agent configs (empty if never set).
    pub fn env_config(&self, env_id: &EnvId, kind: EnvConfigKind) -> BTreeMap<String, String> {
        self.configs.get(&(env_id.clone(), kind)).cloned().unwrap_or_default()
    }

    fn update_deploy(
        &mut self,
        now_ms: i64,
        id: &DeployId,
        acceptance: Option<proto::enums::AcceptanceStatus>,
        description: Option<String>,
    ) -> OpResult {
        let d = self
            .deploys
            .get_mut(id)
            .ok_or_else(|| OpError::NotFound { what: format!("deploy {id}") })?;
        if let Some(a) = acceptance {
            d.acceptance_status = Some(a);
        }
        if let Some(text) = description {
            d.description = Some(text);
        }
        d.last_update_date = Some(now_ms);
        let out = d.clone();
        self.dirty.insert(Key::Deploy(id.clone()));
        Ok(OpOutput::Deploy(out))
    }

    // ----- persistence ---------------------------------------------------------------------

    /// What the last applies changed for held pings (see `feed`).
    pub fn take_changes(&mut self) -> crate::feed::Changes {
        crate::feed::Changes {
            stages: std::mem::take(&mut self.changed),
            everyone: std::mem::take(&mut self.capacity_changed),
            freed_slots: std::mem::take(&mut self.freed),
            admitted: std::mem::take(&mut self.admitted),
            leases_expired: std::mem::take(&mut self.leases_expired),
        }
    }

    /// Records changed since the last call, encoded for RocksDB (`None` = deleted).
    pub fn take_dirty(&mut self) -> Vec<(Vec<u8>, Option<Vec<u8>>)> {
        let dirty = std::mem::take(&mut self.dirty);
        dirty
            .into_iter()
            .map(|key| {
                let value = match &key {
                    Key::Env(id) => self.envs.get(id).map(encode),
                    Key::Build(id) => self.builds.get(id).map(encode),
                    Key::Deploy(id) => self.deploys.get(id).map(encode),
                    Key::Agent(e, h) => self.agents.get(&(e.clone(), h.clone())).map(encode),
                    Key::Host(name) => self.hosts.get(name).map(encode),
                    Key::Capacity(id) => self.capacity.get(id).map(encode),
                    Key::Config(id, kind) => self.configs.get(&(id.clone(), *kind)).map(encode),
                    Key::History(id, seq) => self.history.get(&(id.clone(), *seq)).map(encode),
                    Key::HistorySeq => Some(encode(&self.history_seq)),
                    Key::AgentError(e, h) => {
                        self.agent_errors.get(&(e.clone(), h.clone())).map(encode)
                    }
                    Key::Promote(id) => self.promotes.get(id).map(encode),
                    Key::Tag(id) => self.tags.get(id).map(encode),
                    Key::Token(hash) => self.auth.tokens.get(hash).map(encode),
                    Key::UserRole(key) => self.auth.bindings.get(key).map(encode),
                    Key::Schedule(id) => self.schedules.get(id).map(encode),
                    Key::Constraint(id) => self.constraints.get(id).map(encode),
                    Key::HostTag(e, h) => self.host_tags.get(&(e.clone(), h.clone())).map(encode),
                    Key::WebHooks(id) => self.web_hooks.get(id).map(encode),
                    Key::WebhookDelivery(key) => self.webhook_deliveries.get(key).map(encode),
                    Key::Timeline(e, h) => self.timelines.get(&(e.clone(), h.clone())).map(encode),
                };
                (key.encode(), value)
            })
            .collect()
    }

    /// Loads one persisted record (at start-up or after installing a snapshot).
    pub fn load_record(&mut self, key: &[u8], value: &[u8]) -> Result<(), String> {
        let bad = |e: postcard::Error| format!("record {}: {e}", String::from_utf8_lossy(key));
        let id = std::str::from_utf8(key.get(2..).unwrap_or_default())
            .map_err(|_| format!("record key {key:?} is not UTF-8"))?;
        match key.get(..2) {
            Some(b"e/") => {
                self.envs.insert(EnvId::new(id), postcard::from_bytes(value).map_err(bad)?);
            }
            Some(b"b/") => {
                self.builds.insert(BuildId::new(id), postcard::from_bytes(value).map_err(bad)?);
            }
            Some(b"d/") => {
                self.deploys.insert(DeployId::new(id), postcard::from_bytes(value).map_err(bad)?);
            }
            Some(b"a/") => {
                let (env, host) =
                    id.split_once('/').ok_or_else(|| format!("agent key {id:?} lacks a host"))?;
                self.agents.insert(
                    (EnvId::new(env), HostId::new(host)),
                    postcard::from_bytes(value).map_err(bad)?,
                );
            }
            Some(b"h/") => {
                self.hosts.insert(id.to_string(), postcard::from_bytes(value).map_err(bad)?);
            }
            Some(b"c/") => {
                self.capacity.insert(EnvId::new(id), postcard::from_bytes(value).map_err(bad)?);
            }
            Some(b"s/") => {
                let v = postcard::from_bytes(value).map_err(bad)?;
                self.configs.insert((EnvId::new(id), EnvConfigKind::Script), v);
            }
            Some(b"y/") => {
                let (env, seq) = id
                    .split_once('/')
                    .ok_or_else(|| format!("history key {id:?} lacks a sequence"))?;
                let seq =
                    u64::from_str_radix(seq, 16).map_err(|e| format!("history key {id:?}: {e}"))?;
                self.history
                    .insert((EnvId::new(env), seq), postcard::from_bytes(value).map_err(bad)?);
            }
            Some(b"z/") if id == "history_seq" => {
                self.history_seq = postcard::from_bytes(value).map_err(bad)?;
            }
            Some(b"x/") => {
                let (env, host) =
                    id.split_once('/').ok_or_else(|| format!("error key {id:?} lacks a host"))?;
                self.agent_errors.insert(
                    (EnvId::new(env), host.to_string()),
                    postcard::from_bytes(value).map_err(bad)?,
                );
            }
            Some(b"g/") => {
                let v = postcard::from_bytes(value).map_err(bad)?;
                self.configs.insert((EnvId::new(id), EnvConfigKind::Agent), v);
            }
            Some(b"p/") => {
                self.promotes.insert(EnvId::new(id), postcard::from_bytes(value).map_err(bad)?);
            }
            Some(b"t/") => {
                self.tags.insert(TagId::new(id), postcard::from_bytes(value).map_err(bad)?);
            }
            Some(b"k/") => {
                self.auth.tokens.insert(id.to_string(), postcard::from_bytes(value).map_err(bad)?);
            }
            Some(b"u/") => {
                let key = auth::parse_binding_key(id)?;
                self.auth.bindings.insert(key, postcard::from_bytes(value).map_err(bad)?);
            }
            Some(b"w/") => {
                self.schedules.insert(EnvId::new(id), postcard::from_bytes(value).map_err(bad)?);
            }
            Some(b"q/") => {
                self.constraints.insert(EnvId::new(id), postcard::from_bytes(value).map_err(bad)?);
            }
            Some(b"v/") => {
                let (env, host) = id
                    .split_once('/')
                    .ok_or_else(|| format!("host tag key {id:?} lacks a host"))?;
                self.host_tags.insert(
                    (EnvId::new(env), HostId::new(host)),
                    postcard::from_bytes(value).map_err(bad)?,
                );
            }
            Some(b"n/") => {
                self.web_hooks.insert(EnvId::new(id), postcard::from_bytes(value).map_err(bad)?);
            }
            Some(b"o/") => {
                let key = webhooks::parse_delivery_key(id)?;
                self.webhook_deliveries.insert(key, postcard::from_bytes(value).map_err(bad)?);
            }
            Some(b"l/") => {
                let (env, host) = id
                    .split_once('/')
                    .ok_or_else(|| format!("timeline key {id:?} lacks a host"))?;
                self.timelines.insert(
                    (EnvId::new(env), HostId::new(host)),
                    postcard::from_bytes(value).map_err(bad)?,
                );
            }
            _ => return Err(format!("unknown record key {}", String::from_utf8_lossy(key))),
        }
        Ok(())
    }

    /// Rebuilds the secondary indexes after [`State::load_record`] calls.
    pub fn finish_load(&mut self) {
        self.pending_webhooks = self
            .webhook_deliveries
            .iter()
            .filter(|(_, d)| d.state == Some(proto::enums::WebhookDeliveryState::Pending))
            .map(|(k, _)| k.clone())
            .collect();
        self.env_by_name =
            self.envs.iter().filter_map(|(id, env)| Some((env_key(env)?, id.clone()))).collect();
        self.builds_by_name = self
            .builds
            .iter()
            .map(|(id, b)| {
                (b.name.clone().unwrap_or_default(), b.publish_date.unwrap_or_default(), id.clone())
            })
            .collect();
        self.deploys_by_build.clear();
        self.deploys_by_env.clear();
        for (id, d) in &self.deploys {
            if let Some(b) = &d.build_id {
                self.deploys_by_build.entry(b.clone()).or_default().insert(id.clone());
            }
            if let Some(e) = &d.env_id {
                let at = (d.start_date.unwrap_or(0), id.clone());
                self.deploys_by_env.entry(e.clone()).or_default().insert(at);
            }
        }
        self.build_tags.clear();
        self.tagged_builds.clear();
        let tagged: Vec<(TagBean, BuildBean)> =
            self.tags.values().filter_map(|t| Some((t.clone(), tags::tagged_build(t)?))).collect();
        for (tag, build) in tagged {
            self.index_tag(&tag, build);
        }
        self.agents_by_host.clear();
        self.counters.clear();
        for (key, a) in &self.agents {
            if let Some(name) = &a.host_name {
                self.agents_by_host.entry(name.clone()).or_default().insert(key.clone());
            }
            let c = deploy::contribution(a);
            let total = self.counters.entry(key.0.clone()).or_default();
            total.existing += c.existing;
            total.active += c.active;
        }
        // Like `put_agent`: no all-zero entries (a stage whose rows are all first deploys).
        self.counters.retain(|_, c| *c != StageCounters::default());
        self.progress = self
            .envs
            .keys()
            .map(|id| (id.clone(), self.recount_progress(id)))
            .filter(|(_, p)| *p != Progress::default())
            .collect();
        self.tag_counts.clear();
        let staged: Vec<EnvId> = self.constraints.keys().cloned().collect();
        for id in staged {
            self.reset_tag_counts(&id);
        }
        self.capacity_by_host.clear();
        self.capacity_by_group.clear();
        for (id, cap) in &self.capacity {
            for h in &cap.hosts {
                self.capacity_by_host.entry(h.clone()).or_default().insert(id.clone());
            }
            for g in &cap.groups {
                self.capacity_by_group.entry(g.clone()).or_default().insert(id.clone());
            }
        }
    }

    // ----- queries ---------------------------------------------------------------------------

    pub fn env_id(&self, env_name: &str, stage_name: &str) -> Option<&EnvId> {
        self.env_by_name.get(&(env_name.to_string(), stage_name.to_string()))
    }

    pub fn env(&self, env_name: &str, stage_name: &str) -> Option<&EnvironBean> {
        self.envs.get(self.env_id(env_name, stage_name)?)
    }

    pub fn env_by_id(&self, id: &EnvId) -> Option<&EnvironBean> {
        self.envs.get(id)
    }

    /// Stages ordered by (env, stage) name.
    pub fn envs(&self) -> impl Iterator<Item = &EnvironBean> {
        self.env_by_name.values().filter_map(|id| self.envs.get(id))
    }

    pub fn build(&self, id: &BuildId) -> Option<&BuildBean> {
        self.builds.get(id)
    }

    /// The BLAKE3 hashes of the blobs builds live in (`tt://blob/<hash>` artifacts), each once.
    pub fn build_blob_hashes(&self) -> std::collections::BTreeSet<String> {
        self.builds
            .values()
            .filter(|b| {
                b.artifact_url
                    .as_deref()
                    .is_some_and(|u| u.starts_with(proto::beans::BLOB_URL_PREFIX))
            })
            .filter_map(|b| b.artifact_blake3.clone())
            .collect()
    }

    /// Builds, newest first, optionally of one name.
    pub fn builds_newest_first(
        &self,
        name: Option<&str>,
    ) -> Box<dyn Iterator<Item = &BuildBean> + '_> {
        match name {
            Some(name) => {
                let lo = (name.to_string(), i64::MIN, BuildId::new(""));
                Box::new(
                    self.builds_by_name
                        .range(lo..)
                        .take_while(move |(n, _, _)| n == name)
                        .collect::<Vec<_>>()
                        .into_iter()
                        .rev()
                        .filter_map(|(_, _, id)| self.builds.get(id)),
                )
            }
            None => {
                let mut all: Vec<&BuildBean> = self.builds.values().collect();
                all.sort_by(|a, b| b.publish_date.cmp(&a.publish_date).then(b.id.cmp(&a.id)));
                Box::new(all.into_iter())
            }
        }
    }

    /// Distinct build names, in order.
    pub fn build_names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self.builds_by_name.iter().map(|(n, _, _)| n.as_str()).collect();
        names.dedup();
        names
    }

    pub fn deploy(&self, id: &DeployId) -> Option<&DeployBean> {
        self.deploys.get(id)
    }

    /// Every deploy of `build`, in id order.
    pub fn deploys_of_build(&self, build: &BuildId) -> impl Iterator<Item = &DeployBean> {
        self.deploys_by_build.get(build).into_iter().flatten().filter_map(|d| self.deploys.get(d))
    }

    pub fn deploys(&self) -> impl Iterator<Item = &DeployBean> {
        self.deploys.values()
    }

    /// A stage's deploys, oldest first (by start date).
    pub fn deploys_of(&self, env: &EnvId) -> impl DoubleEndedIterator<Item = &DeployBean> {
        self.deploys_by_env
            .get(env)
            .into_iter()
            .flatten()
            .filter_map(|(_, id)| self.deploys.get(id))
    }

    pub fn counts(&self) -> (usize, usize, usize) {
        (self.envs.len(), self.builds.len(), self.deploys.len())
    }
}

fn encode<T: serde::Serialize>(v: &T) -> Vec<u8> {
    postcard::to_stdvec(v).expect("beans always encode")
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod deploy_tests;

#[cfg(test)]
mod promote_tests;

#[cfg(test)]
mod retention_tests;
