//! Auto-promotion, build tags and retention: `GET|PUT /v1/envs/{e}/{s}/promotes`, Teletraan's
//! `/v1/tags` and `GET /v1/builds/{id}/tags`, and the leader's promote and janitor loops.
//!
//! The loops only plan on the applied state (`State::plan_auto_promotions`,
//! `State::plan_retention`) and propose what the plan says; every operation re-checks at apply
//! time, so a loop running on a deposed leader, or racing an operator, changes nothing wrong.

use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use proto::beans::{BuildBean, PromoteBean, TagBean};
use proto::command::{Op, OpError, OpOutput};
use proto::enums::{TagTargetType, TagValue};
use proto::ids::{BuildId, DeployId, TagId};
use serde::Serialize;

use super::teletraan::{ANONYMOUS, JsonBody};
use super::{ApiError, App, AppState, ReadMode, env_id_of, propose, read_barrier};
use crate::state::promote::check_promote_fields;
use crate::state::retention::BuildRetention;

/// Default interval of the promote loop (Teletraan's AutoPromoter runs every 30 s).
pub const DEFAULT_PROMOTE_INTERVAL: Duration = Duration::from_secs(30);
/// Default interval of the retention janitors (Teletraan runs them once a day).
pub const DEFAULT_JANITOR_INTERVAL: Duration = Duration::from_secs(3600);

pub fn routes() -> Router<App> {
    Router::new()
        .route("/v1/envs/{env}/{stage}/promotes", get(get_promote).put(put_promote))
        .route("/v1/tags", axum::routing::post(create_tag))
        .route("/v1/tags/{id}", get(get_tag).delete(delete_tag))
        .route("/v1/tags/targets/{id}", get(tags_of_target))
        .route("/v1/tags/targets/{id}/latest", get(latest_tag_of_target))
        .route("/v1/tags/values/{value}", get(tags_with_value))
        .route("/v1/builds/{id}/tags", get(build_tags))
}

/// The stage's promote config, or Teletraan's default one if it never had one.
async fn get_promote(
    State(app): State<App>,
    Path((env, stage)): Path<(String, String)>,
    Query(mode): Query<ReadMode>,
) -> Result<Json<PromoteBean>, ApiError> {
    read_barrier(&app, &mode).await?;
    let id = env_id_of(&app, &env, &stage)?;
    let applied = app.applied.read().expect("applied lock poisoned");
    Ok(Json(applied.state.promote_or_default(&id)))
}

/// Updates the promote config: fields given replace the stored ones; `envId`,
/// `lastOperator` and `lastUpdate` are the server's.
async fn put_promote(
    State(app): State<App>,
    principal: Option<axum::Extension<crate::auth::Principal>>,
    Path((env, stage)): Path<(String, String)>,
    JsonBody(mut patch): JsonBody<PromoteBean>,
) -> Result<Response, ApiError> {
    check_promote_fields(&patch).map_err(|e| ApiError::bad_request(e.to_string()))?;
    patch.env_id = None;
    patch.last_operator = None;
    patch.last_update = None;
    let env_id = env_id_of(&app, &env, &stage)?;
    let operator = principal.map_or_else(|| ANONYMOUS.to_string(), |p| p.0.name);
    propose(&app, Op::UpdatePromote { env_id, patch, operator }).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// Refuses (409) a manual deploy of a build whose effective tag is BAD_BUILD unless `force`:
/// Teletraan only warns in its UI; an API caller should have to say it means it.
pub fn refuse_bad_build(app: &AppState, build: &BuildId, force: bool) -> Result<(), ApiError> {
    if force {
        return Ok(());
    }
    let applied = app.applied.read().expect("applied lock poisoned");
    let Some(tag) = applied.state.bad_build_tag(build) else { return Ok(()) };
    Err(ApiError::conflict(format!(
        "build {build} is tagged BAD_BUILD (tag {} by {}{}); pass force=true to deploy it anyway",
        tag.id.as_ref().map_or("-", |t| t.as_str()),
        tag.operator.as_deref().unwrap_or("-"),
        tag.comments.as_deref().map(|c| format!(": {c}")).unwrap_or_default(),
    )))
}

/// `POST /v1/tags`: tag a build (`targetType` BUILD, the default; `targetId` = build id) or a
/// stage or the system. 201 with the stored tag (a BUILD tag's `targetId` becomes the build's
/// name, Teletraan's rewrite).
async fn create_tag(
    State(app): State<App>,
    principal: Option<axum::Extension<crate::auth::Principal>>,
    JsonBody(mut tag): JsonBody<TagBean>,
) -> Result<Response, ApiError> {
    if tag.value.is_none() {
        return Err(ApiError::bad_request(format!(
            "value is required: one of {}",
            TagValue::NAMES.join(", ")
        )));
    }
    if tag.target_id.as_deref().is_none_or(str::is_empty) {
        return Err(ApiError::bad_request("targetId is required (for BUILD tags: the build id)"));
    }
    tag.id = Some(TagId::new(app.ids.next()));
    tag.operator = Some(principal.map_or_else(|| ANONYMOUS.to_string(), |p| p.0.name));
    tag.created_date = None;
    tag.meta_info = None;
    tag.target_type.get_or_insert(TagTargetType::Build);
    match propose(&app, Op::CreateTag { tag }).await {
        Ok(OpOutput::Tag(t)) => {
            let location = format!("/v1/tags/{}", t.id.as_ref().expect("tags have ids"));
            Ok((StatusCode::CREATED, [(header::LOCATION, location)], Json(t)).into_response())
        }
        Ok(other) => unreachable!("create_tag answered {other:?}"),
        // An unknown build is bad input here, not a missing resource of this path.
        Err(e) if e.status == StatusCode::NOT_FOUND => {
            Err(ApiError::bad_request(format!("targetId: {}", e.message)))
        }
        Err(e) => Err(e),
    }
}

async fn get_tag(
    State(app): State<App>,
    Path(id): Path<String>,
    Query(mode): Query<ReadMode>,
) -> Result<Json<TagBean>, ApiError> {
    read_barrier(&app, &mode).await?;
    let applied = app.applied.read().expect("applied lock poisoned");
    applied
        .state
        .tag(&TagId::new(id.clone()))
        .cloned()
        .map(Json)
        .ok_or_else(|| ApiError::not_found(format!("tag {id} not found")))
}

async fn delete_tag(State(app): State<App>, Path(id): Path<String>) -> Result<Response, ApiError> {
    propose(&app, Op::DeleteTag { tag_id: TagId::new(id) }).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// Tags on a target, newest first: a build name (BUILD tags), a build id (the tags placed on
/// that build), or a stage id.
async fn tags_of_target(
    State(app): State<App>,
    Path(id): Path<String>,
    Query(mode): Query<ReadMode>,
) -> Result<Json<Vec<TagBean>>, ApiError> {
    read_barrier(&app, &mode).await?;
    let applied = app.applied.read().expect("applied lock poisoned");
    Ok(Json(applied.state.tags_of_target(&id).into_iter().cloned().collect()))
}

async fn latest_tag_of_target(
    State(app): State<App>,
    Path(id): Path<String>,
    Query(mode): Query<ReadMode>,
) -> Result<Json<TagBean>, ApiError> {
    read_barrier(&app, &mode).await?;
    let applied = app.applied.read().expect("applied lock poisoned");
    let tags = applied.state.tags_of_target(&id);
    tags.first()
        .map(|t| Json((*t).clone()))
        .ok_or_else(|| ApiError::not_found(format!("no tags on {id}")))
}

async fn tags_with_value(
    State(app): State<App>,
    Path(value): Path<String>,
    Query(mode): Query<ReadMode>,
) -> Result<Json<Vec<TagBean>>, ApiError> {
    let value: TagValue = value
        .to_ascii_uppercase()
        .parse()
        .map_err(|e| ApiError::bad_request(format!("value: {e}")))?;
    read_barrier(&app, &mode).await?;
    let applied = app.applied.read().expect("applied lock poisoned");
    Ok(Json(applied.state.tags_with_value(value).into_iter().cloned().collect()))
}

/// Teletraan's `BuildTagBean`: a build and the tag in effect for it (`null` if none).
#[derive(Debug, Serialize)]
struct BuildTagBean {
    build: BuildBean,
    tag: Option<TagBean>,
}

/// `GET /v1/builds/{id}/tags`: the build with its effective tag (which may sit on an earlier
/// build of its branch).
async fn build_tags(
    State(app): State<App>,
    Path(id): Path<String>,
    Query(mode): Query<ReadMode>,
) -> Result<Json<BuildTagBean>, ApiError> {
    read_barrier(&app, &mode).await?;
    let applied = app.applied.read().expect("applied lock poisoned");
    let build = applied
        .state
        .build(&BuildId::new(id.clone()))
        .cloned()
        .ok_or_else(|| ApiError::not_found(format!("build {id} not found")))?;
    let tag = applied.state.effective_tag(&build).cloned();
    Ok(Json(BuildTagBean { build, tag }))
}

fn is_leader(app: &AppState) -> bool {
    super::known_leader(app).map(|(l, _)| l) == Some(app.node_id)
}

/// On the leader, every `interval`: plans auto-promotions on the applied state and proposes
/// them (Teletraan's AutoPromoter). A plan that lost a race is refused by `apply` (409) and
/// simply planned again next round.
pub async fn promote_loop(app: App, interval: Duration) {
    let mut every = tokio::time::interval(interval);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        if !is_leader(&app) {
            continue;
        }
        let ops = {
            let applied = app.applied.read().expect("applied lock poisoned");
            let mut new_id = || DeployId::new(app.ids.next());
            applied.state.plan_auto_promotions(crate::node::now_ms(), &mut new_id)
        };
        for op in ops {
            let (kind, env_id) = match &op {
                Op::CreateDeploy { env_id, .. } => ("auto-promotion", env_id.clone()),
                Op::PromoteFailed { env_id, .. } => ("promote fail policy", env_id.clone()),
                other => unreachable!("the promote planner proposed {other:?}"),
            };
            match app.proposer.propose(op).await {
                Ok(Ok(OpOutput::Deploy(d))) => tracing::info!(
                    env_id = %env_id,
                    deploy_id = %d.id.as_ref().map_or("-", |d| d.as_str()),
                    build_id = %d.build_id.as_ref().map_or("-", |b| b.as_str()),
                    description = d.description.as_deref().unwrap_or(""),
                    "{kind}: deploy started"
                ),
                Ok(Ok(_)) => tracing::info!(env_id = %env_id, "{kind}: auto-promotion turned off"),
                Ok(Err(OpError::Conflict { reason })) => {
                    tracing::debug!(env_id = %env_id, %reason, "{kind} lost a race; planning again")
                }
                Ok(Err(e)) => tracing::warn!(env_id = %env_id, error = %e, "{kind} refused"),
                Err(e) => tracing::warn!(env_id = %env_id, error = %e, "{kind} not proposed"),
            }
        }
    }
}

/// On the leader, every `interval`: plans and proposes the retention janitors' deletions.
pub async fn janitor_loop(app: App, interval: Duration) {
    let mut every = tokio::time::interval(interval);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        if !is_leader(&app) {
            continue;
        }
        let ops = {
            let applied = app.applied.read().expect("applied lock poisoned");
            applied.state.plan_retention(crate::node::now_ms(), &BuildRetention::TELETRAAN)
        };
        for op in ops {
            let kind = op.kind();
            match app.proposer.propose(op).await {
                Ok(Ok(OpOutput::Purged(n))) => tracing::info!(records = n, "retention: {kind}"),
                Ok(other) => tracing::warn!(result = ?other, "retention: {kind} answered"),
                Err(e) => tracing::warn!(error = %e, "retention: {kind} not proposed"),
            }
        }
    }
}
