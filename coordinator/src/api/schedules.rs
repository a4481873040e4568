//! Schedules (waves) and deploy constraints: Teletraan's `/v1/schedules/{e}/{s}/...` and
//! `GET|POST|DELETE /v1/envs/{e}/{s}/deploy_constraint`. The semantics are in
//! `state/schedule.rs`; these handlers validate (400 naming the field), propose and answer.

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use axum::{Json, Router};
use proto::beans::{DeployConstraintBean, HostTagBean, ScheduleBean};
use proto::command::{Op, OpOutput};
use proto::ids::{ConstraintId, ScheduleId};
use serde::Deserialize;

use super::teletraan::JsonBody;
use super::{ApiError, App, ReadMode, env_id_of, propose, read_barrier};
use crate::state::schedule::{Sessions, validate_constraint};

pub fn routes() -> Router<App> {
    Router::new()
        .route("/v1/schedules/{env}/{stage}", get(get_stage_schedule))
        .route("/v1/schedules/{env}/{stage}/schedules", put(put_schedule))
        .route("/v1/schedules/{env}/{stage}/override", put(override_session))
        .route("/v1/schedules/{env}/{stage}/{id}", get(get_schedule))
        .route(
            "/v1/envs/{env}/{stage}/deploy_constraint",
            get(get_constraint).post(post_constraint).delete(delete_constraint),
        )
        .route("/v1/envs/{env}/{stage}/host_tags", get(host_tags))
}

/// The stage's schedule (a convenience beside Teletraan's by-id read).
async fn get_stage_schedule(
    State(app): State<App>,
    Path((env, stage)): Path<(String, String)>,
    Query(mode): Query<ReadMode>,
) -> Result<Json<ScheduleBean>, ApiError> {
    read_barrier(&app, &mode).await?;
    let id = env_id_of(&app, &env, &stage)?;
    let applied = app.applied.read().expect("applied lock poisoned");
    applied
        .state
        .schedule(&id)
        .cloned()
        .map(Json)
        .ok_or_else(|| ApiError::not_found(format!("stage {env}/{stage} has no schedule")))
}

/// `GET /v1/schedules/{e}/{s}/{id}`: the stage's schedule if its id is `id`.
async fn get_schedule(
    State(app): State<App>,
    Path((env, stage, schedule)): Path<(String, String, String)>,
    Query(mode): Query<ReadMode>,
) -> Result<Json<ScheduleBean>, ApiError> {
    read_barrier(&app, &mode).await?;
    let id = env_id_of(&app, &env, &stage)?;
    let applied = app.applied.read().expect("applied lock poisoned");
    applied
        .state
        .schedule(&id)
        .filter(|s| s.id.as_ref().map(ScheduleId::as_str) == Some(schedule.as_str()))
        .cloned()
        .map(Json)
        .ok_or_else(|| ApiError::not_found(format!("schedule {schedule} of {env}/{stage}")))
}

/// `PUT .../schedules` with `{totalSessions, hostNumbers, cooldownTimes}`: creates or updates
/// the stage's schedule (200 with it); `totalSessions` ≤ 0 deletes it (204).
async fn put_schedule(
    State(app): State<App>,
    Path((env, stage)): Path<(String, String)>,
    JsonBody(req): JsonBody<ScheduleBean>,
) -> Result<Response, ApiError> {
    let env_id = env_id_of(&app, &env, &stage)?;
    if req.total_sessions.unwrap_or(0) <= 0 {
        propose(&app, Op::SetSchedule { env_id, schedule: None }).await?;
        return Ok(StatusCode::NO_CONTENT.into_response());
    }
    Sessions::parse(&req).map_err(|e| ApiError::bad_request(e.to_string()))?;
    let schedule = ScheduleBean {
        id: Some(ScheduleId::new(app.ids.next())),
        total_sessions: req.total_sessions,
        host_numbers: req.host_numbers,
        cooldown_times: req.cooldown_times,
        ..Default::default()
    };
    match propose(&app, Op::SetSchedule { env_id, schedule: Some(schedule) }).await? {
        OpOutput::Schedule(s) => Ok(Json(s).into_response()),
        _ => Ok(StatusCode::NO_CONTENT.into_response()),
    }
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct OverrideQuery {
    session_number: Option<i32>,
}

/// `PUT .../override?sessionNumber=N`: ends session N (the current one) at once.
async fn override_session(
    State(app): State<App>,
    Path((env, stage)): Path<(String, String)>,
    Query(q): Query<OverrideQuery>,
) -> Result<Response, ApiError> {
    let session = q.session_number.ok_or_else(|| {
        ApiError::bad_request("sessionNumber is required (the current session, 1-based)")
    })?;
    let env_id = env_id_of(&app, &env, &stage)?;
    match propose(&app, Op::OverrideSchedule { env_id, session }).await? {
        OpOutput::Schedule(s) => Ok(Json(s).into_response()),
        _ => Ok(StatusCode::NO_CONTENT.into_response()),
    }
}

async fn get_constraint(
    State(app): State<App>,
    Path((env, stage)): Path<(String, String)>,
    Query(mode): Query<ReadMode>,
) -> Result<Json<DeployConstraintBean>, ApiError> {
    read_barrier(&app, &mode).await?;
    let id = env_id_of(&app, &env, &stage)?;
    let applied = app.applied.read().expect("applied lock poisoned");
    applied
        .state
        .constraint(&id)
        .map(Json)
        .ok_or_else(|| ApiError::not_found(format!("stage {env}/{stage} has no deploy constraint")))
}

/// `POST .../deploy_constraint` with `{constraintKey, maxParallel, constraintType}`.
async fn post_constraint(
    State(app): State<App>,
    Path((env, stage)): Path<(String, String)>,
    JsonBody(mut req): JsonBody<DeployConstraintBean>,
) -> Result<Response, ApiError> {
    validate_constraint(&mut req).map_err(|e| ApiError::bad_request(e.to_string()))?;
    let env_id = env_id_of(&app, &env, &stage)?;
    let constraint = DeployConstraintBean {
        id: Some(ConstraintId::new(app.ids.next())),
        constraint_key: req.constraint_key,
        max_parallel: req.max_parallel,
        constraint_type: req.constraint_type,
        ..Default::default()
    };
    match propose(&app, Op::SetConstraint { env_id, constraint: Some(constraint) }).await? {
        OpOutput::Constraint(c) => Ok(Json(c).into_response()),
        _ => Ok(StatusCode::NO_CONTENT.into_response()),
    }
}

async fn delete_constraint(
    State(app): State<App>,
    Path((env, stage)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let env_id = env_id_of(&app, &env, &stage)?;
    propose(&app, Op::SetConstraint { env_id, constraint: None }).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// The stage's host tags (each host's value for the constraint key).
async fn host_tags(
    State(app): State<App>,
    Path((env, stage)): Path<(String, String)>,
    Query(mode): Query<ReadMode>,
) -> Result<Json<Vec<HostTagBean>>, ApiError> {
    read_barrier(&app, &mode).await?;
    let id = env_id_of(&app, &env, &stage)?;
    let applied = app.applied.read().expect("applied lock poisoned");
    Ok(Json(applied.state.host_tags_of(&id).cloned().collect()))
}
