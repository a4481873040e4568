//! Teletraan's agent ping and deploy operations: `POST /v1/system/ping`, capacity, creating
//! deploys (a compare-and-set on the stage's current deploy), actions, host actions, agents and
//! the progress view.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use proto::beans::{AgentBean, DeployBean, EnvironBean, HostBean};
use proto::command::{EnvConfigKind, Op, OpOutput};
use proto::enums::{AgentState, DeployActionType, DeployType, EnvState, HostActionType};
use proto::ids::{BuildId, DeployId, EnvId, HostId};
use proto::ping::{DeployCandidatesResponse, PingRequestBean, PingResponseBean};
use serde::{Deserialize, Serialize};

use super::teletraan::{ANONYMOUS, JsonBody};
use super::{ApiError, App, AppState, ReadMode, propose, read_barrier};
use crate::auth::Principal;
use crate::metrics::PingProtocol;
use crate::state::prefetch::PrefetchBlob;

/// How often the leader checks whether a deploy's state should move with time (stuck timer).
pub const TICK_INTERVAL: Duration = Duration::from_secs(5);
/// Most hosts one capacity or host-action request may name.
pub const MAX_NAMES_PER_REQUEST: usize = 10_000;

pub fn routes() -> Router<App> {
    Router::new()
        .route("/v1/system/ping", post(ping))
        .route("/v1/system/ping/alldeploycandidates", post(all_deploy_candidates))
        .route(
            "/v1/envs/{env}/{stage}/capacity",
            get(get_capacity).put(put_capacity).post(add_capacity).delete(remove_capacity),
        )
        .route("/v1/envs/{env}/{stage}/deploys", post(create_deploy))
        .route("/v1/envs/{env}/{stage}/deploys/current/actions", post(deploy_action))
        .route("/v1/envs/{env}/{stage}/deploys/hostactions", put(host_actions))
        .route("/v1/envs/{env}/{stage}/hosts", axum::routing::delete(stop_hosts))
        .route("/v1/envs/{env}/{stage}/deploys/current/progress", put(progress))
        .route("/v1/envs/{env}/{stage}/agents", get(agents))
        .route("/v1/envs/{env}/{stage}/agents/errors/{host}", get(agent_error))
        .route("/v1/envs/{env}/{stage}/script_configs", config_route(EnvConfigKind::Script))
        .route("/v1/envs/{env}/{stage}/agent_configs", config_route(EnvConfigKind::Agent))
        .route("/v1/deploys/{id}", put(update_deploy))
        .route("/v1/envs/{env}/{stage}/history", get(history))
}

fn env_of(app: &AppState, env: &str, stage: &str) -> Result<EnvironBean, ApiError> {
    let applied = app.applied.read().expect("applied lock poisoned");
    applied
        .state
        .env(env, stage)
        .cloned()
        .ok_or_else(|| ApiError::not_found(format!("stage {env}/{stage} not found")))
}

/// The JSON agent ping (Teletraan's `POST /v1/system/ping`): never held.
async fn ping(
    State(app): State<App>,
    headers: axum::http::HeaderMap,
    JsonBody(req): JsonBody<PingRequestBean>,
) -> Result<Json<PingResponseBean>, ApiError> {
    check_agent_token(&app, &headers)?;
    ping_core(&app, PingProtocol::Json, req, Duration::ZERO).await.map(Json)
}

/// `POST /v1/system/ping/alldeploycandidates` (§3.11): every install candidate of this ping,
/// each with its build. Read-only (a linearizable read of the plan); nothing is written.
async fn all_deploy_candidates(
    State(app): State<App>,
    headers: axum::http::HeaderMap,
    JsonBody(req): JsonBody<PingRequestBean>,
) -> Result<Json<DeployCandidatesResponse>, ApiError> {
    check_agent_token(&app, &headers)?;
    if req.host_id.as_str().is_empty() {
        return Err(ApiError::bad_request("hostId is required"));
    }
    read_barrier(&app, &ReadMode::default()).await?;
    let now = crate::node::now_ms();
    let applied = app.applied.read().expect("applied lock poisoned");
    Ok(Json(DeployCandidatesResponse { candidates: applied.state.deploy_candidates(now, &req) }))
}

fn check_agent_token(app: &AppState, headers: &axum::http::HeaderMap) -> Result<(), ApiError> {
    // In `tokens` mode the auth middleware checked PINGER (the agent token is one).
    if let Some(want) =
        app.agent_token.as_ref().filter(|_| app.auth_mode == crate::auth::AuthMode::Anonymous)
    {
        let given = headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("token "));
        if given != Some(want.as_str()) {
            return Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "missing or wrong agent token (Authorization: token ...)",
            ));
        }
    }
    Ok(())
}

/// One ping, on the leader. It is planned on the applied state first: a ping that changes
/// nothing is answered without touching the Raft log; one that does is proposed, and `apply`
/// decides again on the state of that moment (so admission cannot over-admit). If the answer is
/// NOOP and `wait` allows, the ping is held until something concerning this host changes (see
/// `feed`), then planned again.
pub async fn ping_core(
    app: &AppState,
    protocol: PingProtocol,
    req: PingRequestBean,
    wait: Duration,
) -> Result<PingResponseBean, ApiError> {
    ping_core_with_prefetch(app, protocol, req, wait, None).await.map(|(response, _)| response)
}

/// [`ping_core`] for a host that runs a blob node and holds (or fetches) the blobs in
/// `holding`: when the answer is NOOP because the host waits for a parallelism slot, and its
/// stage prefetches a cluster build not in `holding`, the ping is answered at once (not held)
/// with that build, so the host fetches it before it is admitted.
pub async fn ping_core_with_prefetch(
    app: &AppState,
    protocol: PingProtocol,
    req: PingRequestBean,
    wait: Duration,
    holding: Option<&[String]>,
) -> Result<(PingResponseBean, Option<PrefetchBlob>), ApiError> {
    let started = tokio::time::Instant::now();
    let mut held = Duration::ZERO;
    let answer = plan_and_hold(app, req, wait, holding, &mut held).await;
    let service = started.elapsed().saturating_sub(held).as_secs_f64();
    let op_code = answer.as_ref().ok().map(|(response, _)| response.op_code);
    app.metrics.ping_answered(protocol, op_code, service);
    answer
}

/// Counts a held ping in `pings_held` for as long as it lives (a dropped connection drops it).
struct HeldPing<'a>(&'a crate::metrics::Metrics);

impl<'a> HeldPing<'a> {
    fn new(metrics: &'a crate::metrics::Metrics) -> HeldPing<'a> {
        metrics.pings_held.inc();
        HeldPing(metrics)
    }
}

impl Drop for HeldPing<'_> {
    fn drop(&mut self) {
        self.0.pings_held.dec();
    }
}

/// The body of [`ping_core_with_prefetch`]; `held` adds up the time spent waiting for a change.
async fn plan_and_hold(
    app: &AppState,
    req: PingRequestBean,
    wait: Duration,
    holding: Option<&[String]>,
    held: &mut Duration,
) -> Result<(PingResponseBean, Option<PrefetchBlob>), ApiError> {
    if req.host_id.as_str().is_empty() {
        return Err(ApiError::bad_request("hostId is required"));
    }
    let deadline = tokio::time::Instant::now() + wait;
    let mut told_to_wait = false;
    let ping = app.liveness.begin_ping(&req.host_id);
    loop {
        // A held ping is planned again with the report it arrived with. If its host pinged
        // since (a restarted agent pings at once, while the dead process's pings may still be
        // held), that report is older than the host's rows: planning it again would rewrite a
        // deploying host's row to what it reported before, free its slot and over-admit.
        if !app.liveness.is_latest_ping(&req.host_id, ping) {
            return Err(ApiError::conflict(format!(
                "host {} pinged again while this ping was held; this one is superseded",
                req.host_id.as_str()
            )));
        }
        let name = req.host_name.as_deref().filter(|h| !h.is_empty());
        app.liveness.seen(&req.host_id, name.unwrap_or(req.host_id.as_str()));
        let now = crate::node::now_ms();
        // Plan, subscribe and (if it must wait for a slot) queue under one read lock: no apply
        // runs in between, and a change applied after it is announced to this ping.
        let (plan, subscription, prefetch) = {
            let applied = app.applied.read().expect("applied lock poisoned");
            let plan = applied.state.plan_ping(now, &req);
            let prefetch = holding.filter(|_| plan.is_read_only()).and_then(|held| {
                let blob = applied.state.prefetch_blob(plan.waiting_for_slot.as_ref()?)?;
                let have = held.iter().any(|h| h.eq_ignore_ascii_case(&blob.blake3));
                (!have).then_some(blob)
            });
            let mut subscription = app.feed.subscribe(&plan.stages);
            if !wait.is_zero()
                && plan.is_read_only()
                && let Some(env) = &plan.waiting_for_slot
            {
                app.feed.queue_for_slot(&mut subscription, env);
            }
            // Counted once per ping, however often a held ping is planned again.
            let waiting_on =
                plan.waiting_for_slot.as_ref().and_then(|e| applied.state.env_by_id(e));
            if !told_to_wait
                && let Some(env) = waiting_on
                && let (Some(name), Some(stage)) = (&env.env_name, &env.stage_name)
            {
                told_to_wait = true;
                app.metrics.admission_wait(&(name.clone(), stage.clone()));
            }
            (plan, subscription, prefetch)
        };
        let proposed = !plan.is_read_only();
        let response = if plan.is_read_only() {
            plan.response
        } else {
            match propose(app, Op::Ping { request: req.clone() }).await? {
                OpOutput::Ping(resp) => resp,
                other => unreachable!("ping answered {other:?}"),
            }
        };
        if response.op_code != proto::enums::OpCode::Noop
            || tokio::time::Instant::now() >= deadline
            || prefetch.is_some()
        {
            return Ok((response, prefetch));
        }
        if proposed {
            // The state moved under this ping (e.g. another host took the slot it saw free):
            // plan again on the new state before deciding what to wait for.
            continue;
        }
        let _held = HeldPing::new(&app.metrics);
        let from = tokio::time::Instant::now();
        tokio::select! {
            _ = subscription.changed() => {}
            _ = tokio::time::sleep_until(deadline) => {}
        }
        *held += from.elapsed();
    }
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct CapacityQuery {
    capacity_type: Option<String>,
    #[serde(default)]
    stale: bool,
}

#[derive(Clone, Copy, PartialEq)]
enum CapKind {
    Host,
    Group,
}

fn cap_kind(q: &CapacityQuery) -> Result<CapKind, ApiError> {
    match q.capacity_type.as_deref() {
        None | Some("GROUP") => Ok(CapKind::Group),
        Some("HOST") => Ok(CapKind::Host),
        Some(other) => {
            Err(ApiError::bad_request(format!("capacityType {other:?} is not GROUP or HOST")))
        }
    }
}

async fn get_capacity(
    State(app): State<App>,
    Path((env, stage)): Path<(String, String)>,
    Query(q): Query<CapacityQuery>,
) -> Result<Json<Vec<String>>, ApiError> {
    let kind = cap_kind(&q)?;
    read_barrier(&app, &ReadMode { stale: q.stale }).await?;
    let e = env_of(&app, &env, &stage)?;
    let applied = app.applied.read().expect("applied lock poisoned");
    let cap = applied.state.capacity(e.id.as_ref().expect("stages have ids"));
    let names = if kind == CapKind::Host { cap.hosts } else { cap.groups };
    Ok(Json(names.into_iter().collect()))
}

async fn change_capacity(
    app: &AppState,
    env: &str,
    stage: &str,
    q: &CapacityQuery,
    change: impl FnOnce(&mut BTreeSet<String>),
) -> Result<Response, ApiError> {
    let kind = cap_kind(q)?;
    let e = env_of(app, env, stage)?;
    let env_id = e.id.clone().expect("stages have ids");
    let mut cap = app.applied.read().expect("applied lock poisoned").state.capacity(&env_id);
    change(if kind == CapKind::Host { &mut cap.hosts } else { &mut cap.groups });
    if cap.hosts.len() + cap.groups.len() > MAX_NAMES_PER_REQUEST {
        return Err(ApiError::bad_request(format!(
            "capacity may name at most {MAX_NAMES_PER_REQUEST} hosts and groups"
        )));
    }
    let op = Op::SetCapacity {
        env_id,
        hosts: cap.hosts.into_iter().collect(),
        groups: cap.groups.into_iter().collect(),
    };
    propose(app, op).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn put_capacity(
    State(app): State<App>,
    Path((env, stage)): Path<(String, String)>,
    Query(q): Query<CapacityQuery>,
    JsonBody(names): JsonBody<Vec<String>>,
) -> Result<Response, ApiError> {
    change_capacity(&app, &env, &stage, &q, |set| *set = names.into_iter().collect()).await
}

async fn add_capacity(
    State(app): State<App>,
    Path((env, stage)): Path<(String, String)>,
    Query(q): Query<CapacityQuery>,
    JsonBody(name): JsonBody<String>,
) -> Result<Response, ApiError> {
    change_capacity(&app, &env, &stage, &q, |set| {
        set.insert(name);
    })
    .await
}

async fn remove_capacity(
    State(app): State<App>,
    Path((env, stage)): Path<(String, String)>,
    Query(q): Query<CapacityQuery>,
    JsonBody(name): JsonBody<String>,
) -> Result<Response, ApiError> {
    change_capacity(&app, &env, &stage, &q, |set| {
        set.remove(&name);
    })
    .await
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct DeployQuery {
    build_id: Option<String>,
    description: Option<String>,
    /// Deploy even a build tagged BAD_BUILD.
    #[serde(default)]
    force: bool,
}

/// Proposes a new deploy of `build_id` on the stage, expecting its current deploy to be
/// `env.deploy_id` (refused with 409 if another deploy got there first).
#[allow(clippy::too_many_arguments, reason = "one parameter per DeployBean field set here")]
async fn start_deploy(
    app: &AppState,
    operator: &Principal,
    env: &EnvironBean,
    build_id: BuildId,
    deploy_type: DeployType,
    alias: Option<DeployId>,
    from: Option<DeployId>,
    description: Option<String>,
) -> Result<Response, ApiError> {
    let deploy = DeployBean {
        id: Some(DeployId::new(app.ids.next())),
        build_id: Some(build_id),
        deploy_type: Some(deploy_type),
        alias,
        from_deploy_id: from,
        operator: Some(operator.name.clone()),
        description,
        ..Default::default()
    };
    let op = Op::CreateDeploy {
        env_id: env.id.clone().expect("stages have ids"),
        deploy,
        expected: env.deploy_id.clone(),
    };
    match propose(app, op).await? {
        OpOutput::Deploy(d) => {
            let location = format!("/v1/deploys/{}", d.id.as_ref().expect("deploys have ids"));
            Ok((StatusCode::CREATED, [(axum::http::header::LOCATION, location)], Json(d))
                .into_response())
        }
        other => unreachable!("create_deploy answered {other:?}"),
    }
}

async fn create_deploy(
    State(app): State<App>,
    principal: Option<axum::Extension<Principal>>,
    Path((env, stage)): Path<(String, String)>,
    Query(q): Query<DeployQuery>,
) -> Result<Response, ApiError> {
    let principal = principal.map_or_else(Principal::anonymous, |p| p.0);
    let build_id = q
        .build_id
        .filter(|b| !b.is_empty())
        .ok_or_else(|| ApiError::bad_request("buildId is required"))?;
    let e = env_of(&app, &env, &stage)?;
    let build_id = BuildId::new(build_id);
    super::promotes::refuse_bad_build(&app, &build_id, q.force)?;
    start_deploy(&app, &principal, &e, build_id, DeployType::Regular, None, None, q.description)
        .await
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ActionQuery {
    action_type: String,
    from_deploy_id: Option<String>,
    to_deploy_id: Option<String>,
    description: Option<String>,
    /// PROMOTE even a build tagged BAD_BUILD.
    #[serde(default)]
    force: bool,
}

async fn deploy_action(
    State(app): State<App>,
    principal: Option<axum::Extension<Principal>>,
    Path((env, stage)): Path<(String, String)>,
    Query(q): Query<ActionQuery>,
) -> Result<Response, ApiError> {
    let principal = principal.map_or_else(Principal::anonymous, |p| p.0);
    let action: DeployActionType =
        q.action_type.parse().map_err(|e| ApiError::bad_request(format!("actionType: {e}")))?;
    let e = env_of(&app, &env, &stage)?;
    let current = || {
        let applied = app.applied.read().expect("applied lock poisoned");
        e.deploy_id.as_ref().and_then(|d| applied.state.deploy(d).cloned())
    };
    match action {
        DeployActionType::Pause | DeployActionType::Resume => {
            let env_state =
                if action == DeployActionType::Pause { EnvState::Paused } else { EnvState::Normal };
            let patch = EnvironBean { env_state: Some(env_state), ..Default::default() };
            propose(
                &app,
                Op::UpdateEnv {
                    env_name: env,
                    stage_name: stage,
                    patch,
                    operator: principal.name.clone(),
                },
            )
            .await?;
            Ok((StatusCode::CREATED, Json(e.id)).into_response())
        }
        DeployActionType::Restart => {
            let cur = current().ok_or_else(|| {
                ApiError::not_found(format!("stage {env}/{stage} has no current deploy"))
            })?;
            let build = cur.build_id.clone().expect("deploys have builds");
            start_deploy(
                &app,
                &principal,
                &e,
                build,
                DeployType::Restart,
                None,
                None,
                q.description,
            )
            .await
        }
        DeployActionType::Rollback => {
            let applied_target = {
                let applied = app.applied.read().expect("applied lock poisoned");
                match &q.to_deploy_id {
                    Some(id) => applied.state.deploy(&DeployId::new(id.clone())).cloned(),
                    // Quirk fixed: without a target, the newest SUCCEEDED deploy of the stage is
                    // used *and* becomes the alias (Teletraan dropped the alias here).
                    None => e.id.as_ref().and_then(|id| applied.state.rollback_target(id)).cloned(),
                }
            };
            let target =
                applied_target.ok_or_else(|| ApiError::not_found("no deploy to roll back to"))?;
            let build = target.build_id.clone().expect("deploys have builds");
            start_deploy(
                &app,
                &principal,
                &e,
                build,
                DeployType::Rollback,
                target.id.clone(),
                None,
                q.description,
            )
            .await
        }
        DeployActionType::Promote => {
            let from = q
                .from_deploy_id
                .ok_or_else(|| ApiError::bad_request("fromDeployId is required to promote"))?;
            let source = {
                let applied = app.applied.read().expect("applied lock poisoned");
                applied.state.deploy(&DeployId::new(from.clone())).cloned()
            }
            .ok_or_else(|| ApiError::not_found(format!("deploy {from} not found")))?;
            let build = source.build_id.clone().expect("deploys have builds");
            super::promotes::refuse_bad_build(&app, &build, q.force)?;
            start_deploy(
                &app,
                &principal,
                &e,
                build,
                DeployType::Regular,
                None,
                source.id,
                q.description,
            )
            .await
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct HostActionQuery {
    action_type: String,
}

async fn host_actions(
    State(app): State<App>,
    Path((env, stage)): Path<(String, String)>,
    Query(q): Query<HostActionQuery>,
    JsonBody(hosts): JsonBody<Vec<String>>,
) -> Result<Response, ApiError> {
    let action: HostActionType =
        q.action_type.parse().map_err(|e| ApiError::bad_request(format!("actionType: {e}")))?;
    if hosts.len() > MAX_NAMES_PER_REQUEST {
        return Err(ApiError::bad_request(format!(
            "at most {MAX_NAMES_PER_REQUEST} hosts per request"
        )));
    }
    let state = match action {
        HostActionType::PausedByUser => AgentState::PausedByUser,
        HostActionType::Reset => AgentState::Reset,
        HostActionType::Normal => AgentState::Normal,
    };
    let e = env_of(&app, &env, &stage)?;
    let op = Op::HostAction {
        env_id: e.id.expect("stages have ids"),
        hosts: hosts.into_iter().map(HostId::new).collect(),
        state,
    };
    propose(&app, op).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct StopHostsQuery {
    /// Teletraan asks its cluster manager for a replacement; we have none, so it is accepted
    /// and ignored.
    #[allow(dead_code)]
    replace_host: Option<bool>,
}

/// `DELETE /v1/envs/{e}/{s}/hosts` with `[hostIds]`: stop the service on these hosts
/// (Teletraan's "terminate hosts"): all their agent rows turn STOP, and their pings walk
/// STOPPING → STOPPED.
async fn stop_hosts(
    State(app): State<App>,
    Path((env, stage)): Path<(String, String)>,
    Query(_q): Query<StopHostsQuery>,
    JsonBody(hosts): JsonBody<Vec<String>>,
) -> Result<Response, ApiError> {
    if hosts.is_empty() || hosts.len() > MAX_NAMES_PER_REQUEST {
        return Err(ApiError::bad_request(format!(
            "name between 1 and {MAX_NAMES_PER_REQUEST} host ids"
        )));
    }
    let e = env_of(&app, &env, &stage)?;
    let op = Op::StopHosts {
        env_id: e.id.expect("stages have ids"),
        hosts: hosts.into_iter().map(HostId::new).collect(),
    };
    propose(&app, op).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn agents(
    State(app): State<App>,
    Path((env, stage)): Path<(String, String)>,
    Query(mode): Query<ReadMode>,
) -> Result<Json<Vec<AgentBean>>, ApiError> {
    read_barrier(&app, &mode).await?;
    let e = env_of(&app, &env, &stage)?;
    let applied = app.applied.read().expect("applied lock poisoned");
    Ok(Json(applied.state.agents_of(e.id.as_ref().expect("stages have ids")).cloned().collect()))
}

/// Teletraan's `AgentErrorBean`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct AgentErrorBean {
    host_name: String,
    env_id: EnvId,
    error_message: String,
}

/// The last error output a host reported on a stage (its hook's output tail).
async fn agent_error(
    State(app): State<App>,
    Path((env, stage, host)): Path<(String, String, String)>,
    Query(mode): Query<ReadMode>,
) -> Result<Json<AgentErrorBean>, ApiError> {
    read_barrier(&app, &mode).await?;
    let e = env_of(&app, &env, &stage)?;
    let env_id = e.id.clone().expect("stages have ids");
    let applied = app.applied.read().expect("applied lock poisoned");
    let message = applied.state.agent_error(&env_id, &host).ok_or_else(|| {
        ApiError::not_found(format!("host {host} reported no error on {env}/{stage}"))
    })?;
    Ok(Json(AgentErrorBean { host_name: host, env_id, error_message: message.to_string() }))
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Progress {
    agents: Vec<AgentBean>,
    missing_hosts: Vec<String>,
    provisioning_hosts: Vec<HostBean>,
}

/// Runs a state transition (as Teletraan's UI poll does), then reports the stage's agents and
/// the capacity hosts that never pinged.
async fn progress(
    State(app): State<App>,
    Path((env, stage)): Path<(String, String)>,
) -> Result<Json<Progress>, ApiError> {
    let e = env_of(&app, &env, &stage)?;
    let env_id: EnvId = e.id.clone().expect("stages have ids");
    let needed = {
        let applied = app.applied.read().expect("applied lock poisoned");
        applied.state.plan_transition(crate::node::now_ms(), &env_id).is_some()
    };
    if needed {
        propose(&app, Op::Tick).await?;
    }
    let applied = app.applied.read().expect("applied lock poisoned");
    let state = &applied.state;
    let agents: Vec<AgentBean> = state.agents_of(&env_id).cloned().collect();
    let with_rows: BTreeSet<&str> = agents.iter().filter_map(|a| a.host_name.as_deref()).collect();
    let cap = state.capacity(&env_id);
    let missing_hosts = cap.hosts.iter().filter(|h| state.host(h).is_none()).cloned().collect();
    let provisioning_hosts = cap
        .hosts
        .iter()
        .filter(|h| !with_rows.contains(h.as_str()))
        .filter_map(|h| {
            let rec = state.host(h)?;
            Some(HostBean {
                host_name: Some(h.clone()),
                host_id: Some(rec.host_id.clone()),
                ip: rec.ip.clone(),
                ..Default::default()
            })
        })
        .collect();
    Ok(Json(Progress { agents, missing_hosts, provisioning_hosts }))
}

/// On the leader, proposes a tick whenever some deploy's state would move with time.
pub async fn tick_loop(app: App) {
    let mut every = tokio::time::interval(TICK_INTERVAL);
    loop {
        every.tick().await;
        if super::known_leader(&app).map(|(l, _)| l) != Some(app.node_id) {
            continue;
        }
        let needed = app
            .applied
            .read()
            .expect("applied lock poisoned")
            .state
            .tick_needed(crate::node::now_ms());
        if needed && let Err(e) = propose(&app, Op::Tick).await {
            tracing::warn!(error = %e.message, "deploy state tick failed");
        }
    }
}

/// How often the leader looks for expired leases.
pub const LEASE_CHECK_INTERVAL: Duration = Duration::from_millis(500);

/// Leader-memory liveness (etcd's lessor rule): when each host last pinged this leader. Not
/// replicated: a new leader starts every holder with a full lease TTL from its election.
pub struct Liveness {
    pub lease_ttl: Duration,
    /// Rows of hosts silent this long (and holding no slot) become UNREACHABLE.
    pub host_stale: Duration,
    seen: std::sync::Mutex<std::collections::HashMap<HostId, std::time::Instant>>,
    /// By host name: last ping (monotonic, and wall-clock ms for replication).
    seen_by_name: std::sync::Mutex<std::collections::HashMap<String, (std::time::Instant, i64)>>,
    /// Per host, how many pings this node has begun: a held ping whose host has pinged again
    /// since is stale (the host restarted, or gave up on it) and must not be planned again.
    pings: std::sync::Mutex<std::collections::HashMap<HostId, u64>>,
    leader_since: std::sync::Mutex<Option<(u64, std::time::Instant)>>,
    last_replicated: std::sync::Mutex<Option<std::time::Instant>>,
}

impl Liveness {
    pub fn new(lease_ttl: Duration, host_stale: Duration) -> Self {
        Self {
            lease_ttl,
            host_stale,
            seen: Default::default(),
            seen_by_name: Default::default(),
            pings: Default::default(),
            leader_since: Default::default(),
            last_replicated: Default::default(),
        }
    }

    /// A ping from `host` begins; returns its number, which [`Liveness::is_latest_ping`] checks.
    pub fn begin_ping(&self, host: &HostId) -> u64 {
        let mut pings = self.pings.lock().expect("liveness lock");
        let n = pings.entry(host.clone()).or_default();
        *n += 1;
        *n
    }

    /// Whether ping number `n` of `host` is still its newest.
    pub fn is_latest_ping(&self, host: &HostId, n: u64) -> bool {
        self.pings.lock().expect("liveness lock").get(host).copied() == Some(n)
    }

    pub fn seen(&self, host: &HostId, name: &str) {
        let now = std::time::Instant::now();
        self.seen.lock().expect("liveness lock").insert(host.clone(), now);
        self.seen_by_name
            .lock()
            .expect("liveness lock")
            .insert(name.to_string(), (now, crate::node::now_ms()));
    }

    /// Whether `host`'s lease of `ttl` has expired, counting from its last ping or from the
    /// start of this leadership, whichever is later.
    fn expired(&self, host: &HostId, leader_since: std::time::Instant, ttl: Duration) -> bool {
        let last = self.seen.lock().expect("liveness lock").get(host).copied();
        let from = last.map_or(leader_since, |l| l.max(leader_since));
        from.elapsed() > ttl
    }
}

/// On the leader, expires the leases of slot holders that stopped pinging, so a dead host no
/// longer blocks a rollout (Teletraan needs an operator for that).
pub async fn lease_loop(app: App) {
    let mut every = tokio::time::interval(LEASE_CHECK_INTERVAL);
    loop {
        every.tick().await;
        let m = app.raft.metrics().borrow().clone();
        if m.current_leader != Some(app.node_id) {
            *app.liveness.leader_since.lock().expect("liveness lock") = None;
            continue;
        }
        let since = {
            let mut guard = app.liveness.leader_since.lock().expect("liveness lock");
            match *guard {
                Some((term, at)) if term == m.current_term => at,
                _ => {
                    let now = std::time::Instant::now();
                    *guard = Some((m.current_term, now));
                    now
                }
            }
        };
        let keys: Vec<(EnvId, HostId)> = {
            let applied = app.applied.read().expect("applied lock poisoned");
            let state = &applied.state;
            state
                .slot_holders()
                .filter(|((env, host), _)| {
                    let ttl = state
                        .stage_lease_ttl_ms(env)
                        .map_or(app.liveness.lease_ttl, Duration::from_millis);
                    app.liveness.expired(host, since, ttl)
                })
                .map(|(k, _)| k.clone())
                .collect()
        };
        if !keys.is_empty() {
            tracing::info!(hosts = keys.len(), ttl = ?app.liveness.lease_ttl, "expiring parallelism leases of silent hosts");
            if let Err(e) = propose(&app, Op::ExpireLeases { keys }).await {
                tracing::warn!(error = %e.message, "lease expiry failed");
            }
        }
        replicate_liveness(&app, since).await;
    }
}

/// How often the leader replicates liveness and marks stale hosts (more often when the stale
/// threshold is under four times this).
pub const LIVENESS_REPLICATE_INTERVAL: Duration = Duration::from_secs(10);
/// A host's replicated last-seen is refreshed only when it moved by at least this much, which
/// bounds the write volume of a large idle fleet.
pub const LIVENESS_GRANULARITY_MS: i64 = 60_000;
/// Most hosts one liveness batch carries (one Raft entry).
pub const MAX_LIVENESS_BATCH: usize = 20_000;

/// Replicates leader-memory liveness in one coalesced batch, and marks the slot-less rows of
/// hosts silent past `host_stale` UNREACHABLE (counting from this leadership's start for hosts
/// this leader never heard from: a new leader gives every host a full grace period).
async fn replicate_liveness(app: &App, leader_since: std::time::Instant) {
    {
        let mut last = app.liveness.last_replicated.lock().expect("liveness lock");
        let every = LIVENESS_REPLICATE_INTERVAL.min(app.liveness.host_stale / 4);
        if last.is_some_and(|l| l.elapsed() < every) {
            return;
        }
        *last = Some(std::time::Instant::now());
    }
    let (seen, unreachable) = {
        let memory = app.liveness.seen_by_name.lock().expect("liveness lock").clone();
        let applied = app.applied.read().expect("applied lock poisoned");
        let state = &applied.state;
        let mut seen = Vec::new();
        for (name, (_, wall)) in &memory {
            let replicated = state.host(name).and_then(|h| h.last_seen_ms);
            if state.host(name).is_some()
                && replicated.is_none_or(|r| wall - r >= LIVENESS_GRANULARITY_MS)
                && seen.len() < MAX_LIVENESS_BATCH
            {
                seen.push((name.clone(), *wall));
            }
        }
        let mut unreachable = Vec::new();
        for (name, _) in state.hosts_with_rows() {
            let last = memory.get(name).map_or(leader_since, |(at, _)| (*at).max(leader_since));
            if last.elapsed() > app.liveness.host_stale
                && state.has_markable_rows(name)
                && unreachable.len() < MAX_LIVENESS_BATCH
            {
                unreachable.push(name.clone());
            }
        }
        (seen, unreachable)
    };
    if seen.is_empty() && unreachable.is_empty() {
        return;
    }
    if !unreachable.is_empty() {
        tracing::info!(hosts = unreachable.len(), stale = ?app.liveness.host_stale, "marking silent hosts UNREACHABLE");
    }
    if let Err(e) = propose(app, Op::RecordLiveness { seen, unreachable }).await {
        tracing::warn!(error = %e.message, "replicating liveness failed");
    }
}

/// Most entries one script or agent config map may hold.
pub const MAX_CONFIG_ENTRIES: usize = 1000;

async fn get_config(
    app: &AppState,
    env: &str,
    stage: &str,
    mode: &ReadMode,
    kind: EnvConfigKind,
) -> Result<Json<BTreeMap<String, String>>, ApiError> {
    read_barrier(app, mode).await?;
    let e = env_of(app, env, stage)?;
    let applied = app.applied.read().expect("applied lock poisoned");
    Ok(Json(applied.state.env_config(e.id.as_ref().expect("stages have ids"), kind)))
}

async fn put_config(
    app: &AppState,
    operator: String,
    env: &str,
    stage: &str,
    values: BTreeMap<String, String>,
    kind: EnvConfigKind,
) -> Result<Response, ApiError> {
    if values.len() > MAX_CONFIG_ENTRIES {
        return Err(ApiError::bad_request(format!("at most {MAX_CONFIG_ENTRIES} entries")));
    }
    if let Some(k) = values.keys().find(|k| k.is_empty() || k.contains(['=', '\0'])) {
        return Err(ApiError::bad_request(format!(
            "config key {k:?} is empty or contains '=' or NUL"
        )));
    }
    if kind == EnvConfigKind::Agent
        && let Some(v) = values.get(proto::agent::STAGE_LEASE_TTL_CONFIG_KEY)
        && proto::agent::parse_stage_lease_ttl_ms(v).is_none()
    {
        return Err(ApiError::bad_request(format!(
            "{} must be a number of milliseconds from {} to {}, not {v:?}",
            proto::agent::STAGE_LEASE_TTL_CONFIG_KEY,
            proto::agent::MIN_STAGE_LEASE_TTL_MS,
            proto::agent::MAX_STAGE_LEASE_TTL_MS
        )));
    }
    let e = env_of(app, env, stage)?;
    let op = Op::SetEnvConfig { env_id: e.id.expect("stages have ids"), kind, values, operator };
    propose(app, op).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// GET and PUT of one of a stage's config maps.
fn config_route(kind: EnvConfigKind) -> axum::routing::MethodRouter<App> {
    get(
        move |State(app): State<App>,
              Path((env, stage)): Path<(String, String)>,
              Query(mode): Query<ReadMode>| async move {
            get_config(&app, &env, &stage, &mode, kind).await
        },
    )
    .put(
        move |State(app): State<App>,
              principal: Option<axum::Extension<Principal>>,
              Path((env, stage)): Path<(String, String)>,
              JsonBody(values): JsonBody<BTreeMap<String, String>>| async move {
            let operator = principal.map_or_else(|| ANONYMOUS.to_string(), |p| p.0.name);
            put_config(&app, operator, &env, &stage, values, kind).await
        },
    )
}

/// `PUT /v1/deploys/{id}`: only `acceptanceStatus` and `description` may change (Teletraan
/// accepted any field; other fields are refused here with 400).
async fn update_deploy(
    State(app): State<App>,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<DeployBean>,
) -> Result<Json<DeployBean>, ApiError> {
    let allowed = DeployBean {
        id: body.id.clone(),
        acceptance_status: body.acceptance_status,
        description: body.description.clone(),
        ..Default::default()
    };
    if body != allowed {
        return Err(ApiError::bad_request(
            "only acceptanceStatus and description of a deploy can be changed",
        ));
    }
    if body.id.as_ref().is_some_and(|b| b.as_str() != id) {
        return Err(ApiError::bad_request("the body's id differs from the path's"));
    }
    let op = Op::UpdateDeploy {
        deploy_id: DeployId::new(id),
        acceptance_status: body.acceptance_status,
        description: body.description,
    };
    match propose(&app, op).await? {
        OpOutput::Deploy(d) => Ok(Json(d)),
        other => unreachable!("update_deploy answered {other:?}"),
    }
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct HistoryQuery {
    page_index: Option<usize>,
    page_size: Option<usize>,
    #[serde(default)]
    stale: bool,
}

/// Config history of a stage, newest first (Teletraan: pageIndex from 1, pageSize 30).
async fn history(
    State(app): State<App>,
    Path((env, stage)): Path<(String, String)>,
    Query(q): Query<HistoryQuery>,
) -> Result<Json<Vec<proto::beans::ConfigHistoryBean>>, ApiError> {
    let index = q.page_index.unwrap_or(1).max(1);
    let size = q.page_size.unwrap_or(30).clamp(1, super::teletraan::MAX_PAGE_SIZE);
    read_barrier(&app, &ReadMode { stale: q.stale }).await?;
    let e = env_of(&app, &env, &stage)?;
    let applied = app.applied.read().expect("applied lock poisoned");
    let page = applied
        .state
        .history_of(e.id.as_ref().expect("stages have ids"))
        .skip((index - 1) * size)
        .take(size)
        .cloned()
        .collect();
    Ok(Json(page))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ping_is_superseded_by_the_host_s_next_ping_and_only_by_its_own() {
        let liveness = Liveness::new(Duration::from_secs(10), Duration::from_secs(60));
        let (a, b) = (HostId::new("i-a"), HostId::new("i-b"));
        let held = liveness.begin_ping(&a);
        assert!(liveness.is_latest_ping(&a, held));
        let other = liveness.begin_ping(&b);
        assert!(liveness.is_latest_ping(&a, held), "another host's ping changes nothing");
        let again = liveness.begin_ping(&a);
        assert!(!liveness.is_latest_ping(&a, held), "the restarted host pinged again");
        assert!(liveness.is_latest_ping(&a, again));
        assert!(liveness.is_latest_ping(&b, other));
    }
}
