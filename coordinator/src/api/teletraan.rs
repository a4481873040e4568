//! Teletraan's `/v1` endpoints for stages, builds and deploys, with Teletraan's JSON shapes
//! and status codes (201 + `Location` for creates, 204 for updates and deletes).

use axum::body::Bytes;
use axum::extract::{FromRequest, Path, Query, Request, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use proto::beans::{BuildBean, DeployBean, EnvironBean};
use proto::command::{Op, OpOutput};
use proto::ids::{BuildId, DeployId, EnvId};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::deploy_query::DeployQuery;
use super::{ApiError, App, ReadMode, propose, read_barrier};
use crate::auth::{Principal, Scope};
use crate::state::State as Replicated;
use proto::auth::Role;

/// Largest page a list endpoint returns.
pub const MAX_PAGE_SIZE: usize = 1000;
/// Longest env, stage or build name (Teletraan's VARCHAR(64)).
pub const MAX_NAME_LEN: usize = 64;
/// Operator recorded for changes in `auth = "anonymous"` mode (the principal's name).
pub const ANONYMOUS: &str = "anonymous";

pub fn routes() -> Router<App> {
    Router::new()
        .route("/v1/envs", get(list_envs).post(create_env))
        .route("/v1/envs/names", get(env_names))
        .route("/v1/envs/{env_id}", get(get_env_by_id))
        .route("/v1/envs/{env}/{stage}", get(get_env).put(update_env).delete(delete_env))
        .route("/v1/envs/{env}/{stage}/deploys/current", get(current_deploy))
        .route("/v1/builds", get(list_builds).post(publish_build))
        .route("/v1/builds/names", get(build_names))
        .route("/v1/builds/{id}", get(get_build).delete(delete_build))
        .route("/v1/deploys", get(list_deploys))
        .route("/v1/deploys/{id}", get(get_deploy))
}

/// A JSON body whose errors name the offending field (`maxParallel: invalid type ...`).
pub struct JsonBody<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let bytes = Bytes::from_request(req, state).await.map_err(|rejection| {
            let status = rejection.status();
            if status == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::new(status, format!("request body too large: {}", rejection.body_text()))
            } else {
                ApiError::new(status, rejection.body_text())
            }
        })?;
        parse_json(&bytes).map(JsonBody)
    }
}

pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        if path == "." || path.is_empty() {
            ApiError::bad_request(format!("malformed JSON body: {}", e.inner()))
        } else {
            ApiError::bad_request(format!("malformed JSON body at `{path}`: {}", e.inner()))
        }
    })
}

fn check_name(what: &str, value: &str, extra: &str) -> Result<(), ApiError> {
    let ok = !value.is_empty()
        && value.len() <= MAX_NAME_LEN
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || extra.contains(c));
    if ok {
        Ok(())
    } else {
        Err(ApiError::bad_request(format!(
            "{what} {value:?} must be 1-{MAX_NAME_LEN} characters of A-Z a-z 0-9 _ -{extra}"
        )))
    }
}

/// Runs `f` on the applied state after the read barrier of `mode`.
async fn read_state<T>(
    app: &App,
    mode: &ReadMode,
    f: impl FnOnce(&Replicated) -> Result<T, ApiError>,
) -> Result<T, ApiError> {
    read_barrier(app, mode).await?;
    let applied = app.applied.read().expect("applied lock poisoned");
    f(&applied.state)
}

fn created<T: Serialize>(location: String, body: &T) -> Response {
    (StatusCode::CREATED, [(header::LOCATION, location)], Json(body)).into_response()
}

// ----- stages ------------------------------------------------------------------------------

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct EnvFilter {
    env_name: Option<String>,
    stage_type: Option<String>,
    /// Stages whose capacity names this group.
    group_name: Option<String>,
    #[serde(default)]
    stale: bool,
}

async fn list_envs(
    State(app): State<App>,
    Query(f): Query<EnvFilter>,
) -> Result<Json<Vec<EnvironBean>>, ApiError> {
    read_state(&app, &ReadMode { stale: f.stale }, |state| {
        let envs = state
            .envs()
            .filter(|e| f.env_name.as_deref().is_none_or(|n| e.env_name.as_deref() == Some(n)))
            .filter(|e| {
                f.stage_type
                    .as_deref()
                    .is_none_or(|t| e.stage_type.map(|s| s.to_string()).as_deref() == Some(t))
            })
            .filter(|e| {
                f.group_name.as_ref().is_none_or(|g| {
                    e.id.as_ref().is_some_and(|id| state.capacity(id).groups.contains(g))
                })
            })
            .cloned()
            .collect();
        Ok(Json(envs))
    })
    .await
}

async fn env_names(
    State(app): State<App>,
    Query(mode): Query<ReadMode>,
) -> Result<Json<Vec<String>>, ApiError> {
    read_state(&app, &mode, |state| {
        let mut names: Vec<String> = state.envs().filter_map(|e| e.env_name.clone()).collect();
        names.dedup();
        Ok(Json(names))
    })
    .await
}

async fn get_env_by_id(
    State(app): State<App>,
    Path(id): Path<String>,
    Query(mode): Query<ReadMode>,
) -> Result<Json<EnvironBean>, ApiError> {
    read_state(&app, &mode, |state| {
        state
            .env_by_id(&EnvId::new(id.clone()))
            .cloned()
            .map(Json)
            .ok_or_else(|| ApiError::not_found(format!("stage with id {id} not found")))
    })
    .await
}

async fn get_env(
    State(app): State<App>,
    Path((env, stage)): Path<(String, String)>,
    Query(mode): Query<ReadMode>,
) -> Result<Json<EnvironBean>, ApiError> {
    read_state(&app, &mode, |state| {
        state
            .env(&env, &stage)
            .cloned()
            .map(Json)
            .ok_or_else(|| ApiError::not_found(format!("stage {env}/{stage} not found")))
    })
    .await
}

async fn create_env(
    State(app): State<App>,
    principal: Option<axum::Extension<Principal>>,
    JsonBody(mut env): JsonBody<EnvironBean>,
) -> Result<Response, ApiError> {
    let principal = principal.map_or_else(Principal::anonymous, |p| p.0);
    let name = env.env_name.clone().ok_or_else(|| ApiError::bad_request("envName is required"))?;
    let stage =
        env.stage_name.clone().ok_or_else(|| ApiError::bad_request("stageName is required"))?;
    check_name("envName", &name, "")?;
    check_name("stageName", &stage, "")?;
    if let Some(b) = &env.build_name {
        check_name("buildName", b, "./")?;
    }
    env.normalize_request().map_err(|e| ApiError::bad_request(e.to_string()))?;
    env.fill_create_defaults();
    env.id = Some(EnvId::new(app.ids.next()));
    env.deploy_id = None;
    env.deploy_type = None;
    // WRITE on the env; a user may create a new env and becomes its ADMIN (Teletraan).
    // A positive systemPriority (a sidecar, which runs on other envs' hosts) needs system
    // ADMIN: Teletraan asks ADMIN of the env, which a new env's creator always is.
    let exists = app.applied.read().expect("applied lock poisoned").state.env_exists(&name);
    if exists || !principal.is_user() {
        principal.require(Role::Write, &Scope::Env(name.clone()))?;
    }
    if env.system_priority.is_some_and(|p| p > 0) {
        principal.require(Role::Admin, &Scope::System)?;
    }
    env.last_operator = Some(principal.name.clone());
    let op = if principal.is_user() {
        Op::CreateEnvOwned { env, creator: principal.name.clone() }
    } else {
        Op::CreateEnv { env }
    };
    match propose(&app, op).await? {
        OpOutput::Env(env) => Ok(created(format!("/v1/envs/{name}/{stage}"), &env)),
        other => unreachable!("create_env answered {other:?}"),
    }
}

async fn update_env(
    State(app): State<App>,
    principal: Option<axum::Extension<Principal>>,
    Path((env_name, stage_name)): Path<(String, String)>,
    JsonBody(mut patch): JsonBody<EnvironBean>,
) -> Result<Response, ApiError> {
    let principal = principal.map_or_else(Principal::anonymous, |p| p.0);
    if patch.system_priority.is_some_and(|p| p > 0) {
        principal.require(Role::Admin, &Scope::System)?;
    }
    patch.normalize_request().map_err(|e| ApiError::bad_request(e.to_string()))?;
    if let Some(b) = &patch.build_name {
        check_name("buildName", b, "./")?;
    }
    // The current-deploy pointer moves only through deploy operations.
    patch.deploy_id = None;
    patch.deploy_type = None;
    patch.is_sox = None;
    let op = Op::UpdateEnv { env_name, stage_name, patch, operator: principal.name };
    propose(&app, op).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn delete_env(
    State(app): State<App>,
    Path((env_name, stage_name)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    propose(&app, Op::DeleteEnv { env_name, stage_name }).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn current_deploy(
    State(app): State<App>,
    Path((env, stage)): Path<(String, String)>,
    Query(mode): Query<ReadMode>,
) -> Result<Json<DeployBean>, ApiError> {
    read_state(&app, &mode, |state| {
        let e = state
            .env(&env, &stage)
            .ok_or_else(|| ApiError::not_found(format!("stage {env}/{stage} not found")))?;
        let id = e.deploy_id.as_ref().ok_or_else(|| {
            ApiError::not_found(format!("stage {env}/{stage} has no current deploy"))
        })?;
        state
            .deploy(id)
            .cloned()
            .map(Json)
            .ok_or_else(|| ApiError::not_found(format!("deploy {id} not found")))
    })
    .await
}

// ----- builds ------------------------------------------------------------------------------

async fn publish_build(
    State(app): State<App>,
    principal: Option<axum::Extension<Principal>>,
    JsonBody(mut b): JsonBody<BuildBean>,
) -> Result<Response, ApiError> {
    let required = |v: &Option<String>, field: &str| match v.as_deref() {
        Some(s) if !s.trim().is_empty() => Ok(()),
        _ => Err(ApiError::bad_request(format!("{field} is required"))),
    };
    required(&b.name, "name")?;
    required(&b.artifact_url, "artifactUrl")?;
    required(&b.repo, "repo")?;
    required(&b.branch, "branch")?;
    required(&b.commit, "commit")?;
    check_name("name", b.name.as_deref().unwrap_or_default(), "./")?;
    if let Some(hash) = &mut b.artifact_blake3 {
        *hash = hash.trim().to_ascii_lowercase();
        if hash.len() != 64 || !hash.bytes().all(|c| c.is_ascii_hexdigit()) {
            return Err(ApiError::bad_request(
                "artifactBlake3 must be 64 hex digits (the BLAKE3 hash of the artifact)",
            ));
        }
    }
    let commit = b.commit.clone().unwrap_or_default();
    let short =
        b.commit_short.get_or_insert_with(|| BuildBean::short_commit(&commit).to_string()).clone();
    b.publish_info.get_or_insert_with(|| "UNKNOWN".to_string());
    b.publisher = Some(principal.map_or_else(|| ANONYMOUS.to_string(), |p| p.0.name));
    b.id = Some(BuildId::from_uuid_bytes(app.ids.uuid_bytes(), &short));
    match propose(&app, Op::PublishBuild { build: b }).await? {
        OpOutput::Build(b) => {
            let id = b.id.clone().expect("published builds have ids");
            Ok(created(format!("/v1/builds/{id}"), &b))
        }
        other => unreachable!("publish_build answered {other:?}"),
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct BuildFilter {
    name: Option<String>,
    branch: Option<String>,
    commit: Option<String>,
    /// Published before this time (ms).
    before: Option<i64>,
    /// Published after this time (ms).
    after: Option<i64>,
    page_index: Option<usize>,
    page_size: Option<usize>,
    #[serde(default)]
    stale: bool,
}

fn page(
    index: Option<usize>,
    size: Option<usize>,
    default_size: usize,
) -> Result<(usize, usize), ApiError> {
    let index = index.unwrap_or(1);
    let size = size.unwrap_or(default_size);
    if index == 0 {
        return Err(ApiError::bad_request("pageIndex starts at 1"));
    }
    if size == 0 || size > MAX_PAGE_SIZE {
        return Err(ApiError::bad_request(format!("pageSize must be 1-{MAX_PAGE_SIZE}")));
    }
    Ok(((index - 1) * size, size))
}

async fn list_builds(
    State(app): State<App>,
    Query(f): Query<BuildFilter>,
) -> Result<Json<Vec<BuildBean>>, ApiError> {
    let (skip, size) = page(f.page_index, f.page_size, 100)?;
    read_state(&app, &ReadMode { stale: f.stale }, |state| {
        let builds = state
            .builds_newest_first(f.name.as_deref())
            .filter(|b| f.branch.as_deref().is_none_or(|x| b.branch.as_deref() == Some(x)))
            .filter(|b| {
                f.commit
                    .as_deref()
                    .is_none_or(|x| b.commit.as_deref().is_some_and(|c| c.starts_with(x)))
            })
            .filter(|b| f.before.is_none_or(|t| b.publish_date.is_some_and(|p| p < t)))
            .filter(|b| f.after.is_none_or(|t| b.publish_date.is_some_and(|p| p > t)))
            .skip(skip)
            .take(size)
            .cloned()
            .collect();
        Ok(Json(builds))
    })
    .await
}

async fn build_names(
    State(app): State<App>,
    Query(mode): Query<ReadMode>,
) -> Result<Json<Vec<String>>, ApiError> {
    read_state(&app, &mode, |state| {
        Ok(Json(state.build_names().into_iter().map(str::to_string).collect()))
    })
    .await
}

async fn get_build(
    State(app): State<App>,
    Path(id): Path<String>,
    Query(mode): Query<ReadMode>,
) -> Result<Json<BuildBean>, ApiError> {
    read_state(&app, &mode, |state| {
        state
            .build(&BuildId::new(id.clone()))
            .cloned()
            .map(Json)
            .ok_or_else(|| ApiError::not_found(format!("build {id} not found")))
    })
    .await
}

async fn delete_build(
    State(app): State<App>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    propose(&app, Op::DeleteBuild { build_id: id }).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

// ----- deploys -----------------------------------------------------------------------------

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct DeployQueryResult {
    deploys: Vec<DeployBean>,
    total: usize,
    truncated: bool,
}

/// `GET /v1/deploys` with Teletraan's filters (`super::deploy_query`), newest first.
async fn list_deploys(
    State(app): State<App>,
    Query(pairs): Query<Vec<(String, String)>>,
) -> Result<Json<DeployQueryResult>, ApiError> {
    let f = DeployQuery::parse(&pairs).map_err(ApiError::bad_request)?;
    let (skip, size) = page(f.page_index, f.page_size, 30)?;
    read_state(&app, &ReadMode { stale: f.stale }, |state| {
        let mut matching: Vec<&DeployBean> = state
            .deploys()
            .filter(|d| f.matches(d, d.build_id.as_ref().and_then(|b| state.build(b))))
            .collect();
        matching.sort_by_key(|d| d.start_date);
        if !f.oldest_first {
            matching.reverse();
        }
        let total = matching.len();
        let deploys: Vec<DeployBean> =
            matching.into_iter().skip(skip).take(size).cloned().collect();
        let truncated = skip + deploys.len() < total;
        Ok(Json(DeployQueryResult { deploys, total, truncated }))
    })
    .await
}

async fn get_deploy(
    State(app): State<App>,
    Path(id): Path<String>,
    Query(mode): Query<ReadMode>,
) -> Result<Json<DeployBean>, ApiError> {
    read_state(&app, &mode, |state| {
        state
            .deploy(&DeployId::new(id.clone()))
            .cloned()
            .map(Json)
            .ok_or_else(|| ApiError::not_found(format!("deploy {id} not found")))
    })
    .await
}
