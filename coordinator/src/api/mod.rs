//! The HTTP API every node serves: Teletraan's `/v1` surface, cluster administration, health
//! and metrics.
//!
//! Any node accepts any request. Writes (every method but GET/HEAD) are forwarded by a follower
//! to the leader ([`route_writes`]), once; the client never redirects by hand. Reads are
//! linearizable by default ([`ReadMode`]): the leader confirms its leadership with a quorum
//! (ReadIndex), and a follower asks the leader for that read index and waits until it has
//! applied it, then answers from its own state. `?stale=true` reads local state as it is.

pub mod blobs;
pub mod cluster;
pub mod deploy_query;
pub mod deploys;
pub mod error;
pub mod promotes;
pub mod roles;
pub mod schedules;
pub mod teletraan;
pub mod webhooks;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use proto::command::{Op, OpOutput};
use serde::Deserialize;
use telemetry::health::{self, Check};

pub use self::error::ApiError;
use self::error::error_chain;
use crate::metrics::{Metrics, RouteLabels};
use crate::proposer::{ProposeError, Proposer};
use crate::raft::{NodeId, NodeInfo, Raft};
use crate::store::sm::AppliedHandle;

/// Marks a request a follower forwarded, so that it is never forwarded twice.
pub const FORWARDED_HEADER: &str = "x-tt-forwarded-by";
/// How long a forwarded request may take at the leader.
pub const FORWARD_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a follower waits to apply up to the leader's read index.
pub const READ_INDEX_WAIT: Duration = Duration::from_secs(5);
/// `Retry-After` sent with 503 while no leader is known, in seconds.
pub const RETRY_AFTER_SECS: u64 = 1;

/// Shared by every handler.
pub struct AppState {
    pub node_id: NodeId,
    pub raft: Raft,
    pub applied: AppliedHandle,
    pub proposer: Proposer,
    pub metrics: Arc<Metrics>,
    pub committed: Arc<AtomicU64>,
    pub http: reqwest::Client,
    pub max_body_bytes: usize,
    /// Leader-side id generator state (not replicated: ids are chosen before proposing).
    pub ids: crate::ids::IdGen,
    /// When hosts last pinged (leader memory), for parallelism leases.
    pub liveness: deploys::Liveness,
    /// Wakes held (long-polled) pings when their stages change.
    pub feed: Arc<crate::feed::ChangeFeed>,
    /// The token agents must present, if any.
    pub agent_token: Option<String>,
    /// Build artifacts stored on this node.
    pub blobs: Arc<crate::blobs::BlobStore>,
    /// `anonymous` or `tokens` (see `crate::auth`).
    pub auth_mode: crate::auth::AuthMode,
    /// The bootstrap system-ADMIN token, if configured.
    pub admin_token: Option<String>,
    /// This node's blob origin (and, on the leader, the swarm tracker), if configured.
    pub swarm: Option<Arc<crate::swarm::Swarm>>,
    /// Directories `file://` blob pulls may read (`Config::pull_file_roots`).
    pub pull_file_roots: Vec<std::path::PathBuf>,
}

pub type App = Arc<AppState>;

/// Builds the router with every route and middleware.
pub fn router(app: App) -> Router {
    let max_body = app.max_body_bytes;
    Router::new()
        .route("/livez", get(livez))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .merge(cluster::routes())
        .merge(teletraan::routes())
        .merge(deploys::routes())
        .merge(promotes::routes())
        .merge(schedules::routes())
        .merge(roles::routes())
        .merge(webhooks::routes())
        // Inside write forwarding: a forwarded write is authorized by the leader.
        .layer(middleware::from_fn_with_state(app.clone(), crate::auth::authorize))
        .layer(middleware::from_fn_with_state(app.clone(), route_writes))
        .layer(middleware::from_fn_with_state(app.clone(), observe))
        .layer(DefaultBodyLimit::max(max_body))
        // Blobs: any node stores and serves them (not forwarded); the store enforces its own
        // size limit while streaming.
        .merge(
            blobs::routes()
                .layer(middleware::from_fn_with_state(app.clone(), crate::auth::authorize))
                .layer(DefaultBodyLimit::disable()),
        )
        // The dashboard (HTML under /ui); its login cookie stands in for a token everywhere.
        .merge(crate::dashboard::routes(app.clone()))
        .layer(middleware::from_fn(crate::dashboard::cookie_token))
        .with_state(app)
}

/// The readiness checks: Raft running (storage opened and no fatal error), a leader known,
/// and this node's state machine applied up to what it knows is committed.
fn readiness(app: &AppState) -> Vec<Check> {
    let m = app.raft.metrics().borrow().clone();
    let applied = m.last_applied.map_or(0, |l| l.index);
    let committed = app.committed.load(Ordering::Relaxed);
    vec![
        match &m.running_state {
            Ok(()) => Check::ok("storage"),
            Err(fatal) => Check::failed("storage", format!("Raft stopped: {fatal}")),
        },
        match m.current_leader {
            Some(_) => Check::ok("raft-leader-known"),
            None => Check::failed("raft-leader-known", "no leader known"),
        },
        if applied >= committed {
            Check::ok("applied-caught-up")
        } else {
            Check::failed("applied-caught-up", format!("applied {applied} < committed {committed}"))
        },
    ]
}

/// `/readyz` (`?verbose` for one line per check): 200 only if every check passes.
async fn readyz(State(app): State<App>, uri: axum::http::Uri) -> Response {
    health_response(&health::render("readyz", &readiness(&app), health::wants_verbose(uri.query())))
}

/// `/livez`: the process serves HTTP.
async fn livez(uri: axum::http::Uri) -> Response {
    let checks = [Check::ok("http")];
    health_response(&health::render("livez", &checks, health::wants_verbose(uri.query())))
}

fn health_response(h: &health::Health) -> Response {
    let status = StatusCode::from_u16(h.status()).expect("200 and 503 are statuses");
    (status, h.body.clone()).into_response()
}

async fn metrics(State(app): State<App>) -> Response {
    {
        let applied = app.applied.read().expect("applied lock poisoned");
        app.metrics.refresh(
            &app.raft.metrics().borrow(),
            app.committed.load(Ordering::Relaxed),
            &applied.state,
            app.swarm.as_ref().map(|s| s.stats().uploaded_bytes),
        );
    }
    ([(header::CONTENT_TYPE, telemetry::exposition::CONTENT_TYPE)], app.metrics.encode())
        .into_response()
}

async fn observe(State(app): State<App>, req: Request, next: Next) -> Response {
    let method = req.method().to_string();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_string(), |p| p.as_str().to_string());
    let started = Instant::now();
    let resp = next.run(req).await;
    let labels = RouteLabels { method, route, status: resp.status().as_u16() };
    app.metrics.requests.get_or_create(&labels).observe(started.elapsed().as_secs_f64());
    resp
}

/// The leader this node knows of, if any, with its address.
pub fn known_leader(app: &AppState) -> Option<(NodeId, Option<NodeInfo>)> {
    let m = app.raft.metrics().borrow().clone();
    let leader = m.current_leader?;
    let node = m.membership_config.membership().get_node(&leader).cloned();
    Some((leader, node))
}

async fn route_writes(State(app): State<App>, req: Request, next: Next) -> Response {
    if matches!(*req.method(), Method::GET | Method::HEAD) {
        return next.run(req).await;
    }
    match known_leader(&app) {
        Some((leader, _)) if leader == app.node_id => next.run(req).await,
        Some((leader, Some(node))) if !req.headers().contains_key(FORWARDED_HEADER) => {
            app.metrics.forwarded.inc();
            forward(&app, leader, &node, req).await.unwrap_or_else(IntoResponse::into_response)
        }
        Some((leader, _)) => ApiError::unavailable(format!(
            "node {} is not the leader (leader is {leader}) and cannot forward this request",
            app.node_id
        ))
        .into_response(),
        None => ApiError::no_leader().into_response(),
    }
}

async fn forward(
    app: &AppState,
    leader: NodeId,
    node: &NodeInfo,
    req: Request,
) -> Result<Response, ApiError> {
    let (parts, body) = req.into_parts();
    let body = axum::body::to_bytes(body, app.max_body_bytes)
        .await
        .map_err(|_| ApiError::too_large(app.max_body_bytes))?;
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let url = format!("http://{}{}", node.http_addr, path);
    let mut out = app.http.request(parts.method.clone(), &url).timeout(FORWARD_TIMEOUT).body(body);
    for name in [header::CONTENT_TYPE, header::AUTHORIZATION, header::ACCEPT] {
        if let Some(v) = parts.headers.get(&name) {
            out = out.header(name, v.clone());
        }
    }
    out = out.header(FORWARDED_HEADER, app.node_id.to_string());
    let resp = out
        .send()
        .await
        .map_err(|e| forward_failure(leader, &node.http_addr, !e.is_connect(), &error_chain(&e)))?;
    let status = resp.status();
    let mut headers = HeaderMap::new();
    for name in [header::CONTENT_TYPE, header::LOCATION, header::RETRY_AFTER] {
        if let Some(v) = resp.headers().get(&name) {
            headers.insert(name, v.clone());
        }
    }
    let bytes = resp
        .bytes()
        .await
        .map_err(|e| forward_failure(leader, &node.http_addr, true, &error_chain(&e)))?;
    let mut response = Response::new(Body::from(bytes));
    *response.status_mut() = status;
    *response.headers_mut() = headers;
    response.headers_mut().insert("x-tt-served-by", HeaderValue::from(leader));
    Ok(response)
}

/// The answer to a write whose forwarding to the leader failed. Once connected, the request
/// may have reached the leader and been applied (the answer timed out, the connection broke):
/// the outcome is unknown. Only a connection never made means nothing was written.
pub fn forward_failure(leader: NodeId, addr: &str, connected: bool, error: &str) -> ApiError {
    let outcome = if connected {
        "the write's outcome is unknown; read before retrying"
    } else {
        "nothing was written, retry"
    };
    ApiError::unavailable(format!(
        "forwarding to leader {leader} at {addr} failed ({error}); {outcome}"
    ))
}

/// `?stale=true` selects a local read; the default is linearizable.
#[derive(Debug, Default, Deserialize)]
pub struct ReadMode {
    #[serde(default)]
    pub stale: bool,
}

/// Waits until this node may answer a linearizable read (see the module docs).
pub async fn read_barrier(app: &AppState, mode: &ReadMode) -> Result<(), ApiError> {
    if mode.stale {
        return Ok(());
    }
    match known_leader(app) {
        None => Err(ApiError::no_leader()),
        Some((leader, _)) if leader == app.node_id => {
            app.raft.ensure_linearizable().await.map(|_| ()).map_err(|e| {
                ApiError::unavailable(format!("leadership could not be confirmed: {e}"))
            })
        }
        Some((leader, node)) => {
            let node = node.ok_or_else(ApiError::no_leader)?;
            let url = format!("http://{}/v1/cluster/read-index", node.http_addr);
            let index: cluster::ReadIndex = app
                .http
                .get(&url)
                .timeout(READ_INDEX_WAIT)
                .send()
                .await
                .and_then(reqwest::Response::error_for_status)
                .map_err(|e| {
                    ApiError::unavailable(format!("read index from leader {leader} failed: {e}"))
                })?
                .json()
                .await
                .map_err(|e| ApiError::unavailable(format!("bad read index from leader: {e}")))?;
            app.raft
                .wait(Some(READ_INDEX_WAIT))
                .applied_index_at_least(Some(index.index), "linearizable read")
                .await
                .map(|_| ())
                .map_err(|e| {
                    ApiError::unavailable(format!(
                        "this node did not apply up to the read index {} in time: {e}",
                        index.index
                    ))
                })
        }
    }
}

/// Proposes `op` through group commit and maps refusals to HTTP errors.
pub async fn propose(app: &AppState, op: Op) -> Result<OpOutput, ApiError> {
    match app.proposer.propose(op).await {
        Ok(Ok(out)) => Ok(out),
        Ok(Err(refused)) => Err(ApiError::from(refused)),
        Err(ProposeError::NotLeader { leader_id, .. }) => Err(ApiError::unavailable(format!(
            "leadership moved (new leader: {}); nothing was written, retry",
            leader_id.map_or_else(|| "unknown".to_string(), |l| l.to_string())
        ))),
        Err(ProposeError::Closed) => Err(ApiError::unavailable("node is shutting down".into())),
        Err(ProposeError::Unknown(e)) => Err(ApiError::unavailable(format!(
            "the write's outcome is unknown ({e}); read before retrying"
        ))),
    }
}

/// The id of stage `env`/`stage`, or 404.
pub(crate) fn env_id_of(
    app: &AppState,
    env: &str,
    stage: &str,
) -> Result<proto::ids::EnvId, ApiError> {
    let applied = app.applied.read().expect("applied lock poisoned");
    applied
        .state
        .env_id(env, stage)
        .cloned()
        .ok_or_else(|| ApiError::not_found(format!("stage {env}/{stage} not found")))
}

#[cfg(test)]
mod forward_tests {
    use super::*;

    #[test]
    fn a_forward_that_reached_the_leader_has_an_unknown_outcome() {
        let sent = forward_failure(1, "10.0.0.1:8080", true, "operation timed out");
        assert_eq!(sent.status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(sent.message.contains("outcome is unknown"), "{}", sent.message);
        assert!(!sent.message.contains("nothing was written"), "{}", sent.message);
        assert!(sent.message.contains("operation timed out"), "{}", sent.message);
        let never = forward_failure(1, "10.0.0.1:8080", false, "connection refused");
        assert!(never.message.contains("nothing was written"), "{}", never.message);
    }
}
