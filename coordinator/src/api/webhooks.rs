//! Webhooks: Teletraan's `GET|PUT /v1/envs/{e}/{s}/web_hooks`, the deliveries a deploy owes
//! (`GET /v1/deploys/{id}/webhooks`, ours), and the leader's delivery loop.
//!
//! What falls due when is decided in `apply` (`state/webhooks.rs`); what a hook becomes and
//! whether an attempt was final in `crate::webhooks`. The loop here only sends: on the leader,
//! every [`WEBHOOK_SCAN_INTERVAL`] it starts a task per pending delivery (at most
//! [`WEBHOOK_MAX_IN_FLIGHT`] at once) that attempts, backs off, and proposes the outcome. A task
//! whose node loses leadership stops without recording; the next leader sends again.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::routing::get;
use axum::{Extension, Json, Router};
use proto::beans::{EnvWebHookBean, WebhookDeliveryBean};
use proto::command::{Op, OpOutput};
use proto::enums::WebhookPhase;
use proto::ids::DeployId;

use tracing::Instrument;

use super::teletraan::{ANONYMOUS, JsonBody};
use super::{ApiError, App, AppState, ReadMode, env_id_of, propose, read_barrier};
use crate::auth::Principal;
use crate::state::webhooks::PendingWebhook;
use crate::webhooks::{Attempt, HookRequest, Next, WEBHOOK_REQUEST_TIMEOUT, next_step};

/// How often the leader looks for pending deliveries.
pub const WEBHOOK_SCAN_INTERVAL: Duration = Duration::from_millis(500);
/// Most deliveries being attempted at once by one leader.
pub const WEBHOOK_MAX_IN_FLIGHT: usize = 16;
/// Most bytes of a receiver's answer kept in the recorded detail.
pub const WEBHOOK_ANSWER_EXCERPT_BYTES: usize = 256;

pub fn routes() -> Router<App> {
    Router::new()
        .route("/v1/envs/{env}/{stage}/web_hooks", get(get_hooks).put(put_hooks))
        .route("/v1/deploys/{id}/webhooks", get(deliveries))
}

async fn get_hooks(
    State(app): State<App>,
    Path((env, stage)): Path<(String, String)>,
    Query(mode): Query<ReadMode>,
) -> Result<Json<EnvWebHookBean>, ApiError> {
    read_barrier(&app, &mode).await?;
    let id = env_id_of(&app, &env, &stage)?;
    let applied = app.applied.read().expect("applied lock poisoned");
    Ok(Json(applied.state.web_hooks(&id)))
}

/// Replaces the stage's hooks; an invalid hook (no url, a scheme other than http(s), an
/// unknown method, a malformed header) is refused with 400 naming it.
async fn put_hooks(
    State(app): State<App>,
    principal: Option<Extension<Principal>>,
    Path((env, stage)): Path<(String, String)>,
    JsonBody(hooks): JsonBody<EnvWebHookBean>,
) -> Result<Json<EnvWebHookBean>, ApiError> {
    let operator = principal.map_or_else(|| ANONYMOUS.to_string(), |p| p.0.name);
    let env_id = env_id_of(&app, &env, &stage)?;
    match propose(&app, Op::SetWebHooks { env_id, hooks, operator }).await? {
        OpOutput::WebHooks(h) => Ok(Json(h)),
        other => unreachable!("set_web_hooks answered {other:?}"),
    }
}

async fn deliveries(
    State(app): State<App>,
    Path(id): Path<String>,
    Query(mode): Query<ReadMode>,
) -> Result<Json<Vec<WebhookDeliveryBean>>, ApiError> {
    read_barrier(&app, &mode).await?;
    let id = DeployId::new(id);
    let applied = app.applied.read().expect("applied lock poisoned");
    if applied.state.deploy(&id).is_none() {
        return Err(ApiError::not_found(format!("deploy {id} not found")));
    }
    Ok(Json(applied.state.webhook_deliveries(&id)))
}

type InFlight = Arc<Mutex<HashSet<(DeployId, WebhookPhase, u32)>>>;

fn is_leader(app: &AppState) -> bool {
    super::known_leader(app).map(|(l, _)| l) == Some(app.node_id)
}

/// On the leader: sends every pending delivery (see the module docs).
pub async fn webhook_loop(app: App) {
    let client = match reqwest::Client::builder()
        .timeout(WEBHOOK_REQUEST_TIMEOUT)
        .redirect(reqwest::redirect::Policy::none())
        .build()
    {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "webhooks: no HTTP client; deliveries stay pending");
            return;
        }
    };
    let in_flight: InFlight = Arc::default();
    let mut every = tokio::time::interval(WEBHOOK_SCAN_INTERVAL);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        if !is_leader(&app) {
            continue;
        }
        let pending = app.applied.read().expect("applied lock poisoned").state.pending_webhooks();
        for p in pending {
            let key = (p.deploy_id.clone(), p.phase, p.index);
            {
                let mut set = in_flight.lock().expect("in-flight lock");
                if set.len() >= WEBHOOK_MAX_IN_FLIGHT || !set.insert(key.clone()) {
                    continue;
                }
            }
            let (app, client, in_flight) = (app.clone(), client.clone(), in_flight.clone());
            let span = tracing::info_span!(
                "webhook",
                deploy_id = %p.deploy_id,
                phase = %p.phase,
                index = p.index
            );
            tokio::spawn(
                async move {
                    deliver(&app, &client, p).await;
                    in_flight.lock().expect("in-flight lock").remove(&key);
                }
                .instrument(span),
            );
        }
    }
}

/// Attempts one delivery until [`next_step`] says it is final, then proposes the outcome.
async fn deliver(app: &AppState, client: &reqwest::Client, p: PendingWebhook) {
    let (succeeded, attempts, detail) = match &p.request {
        Err(invalid) => (false, 0, format!("not sent: {invalid}")),
        Ok(request) => {
            let mut attempts = 0;
            loop {
                attempts += 1;
                let result = send(client, request).await;
                match next_step(&result.0, attempts) {
                    Next::Record { succeeded } => break (succeeded, attempts, result.1),
                    Next::RetryAfter(wait) => {
                        tracing::info!(attempt = attempts, result = %result.1, ?wait, "webhook attempt failed; retrying");
                        tokio::time::sleep(wait).await;
                        if !is_leader(app) {
                            return;
                        }
                    }
                }
            }
        }
    };
    if succeeded {
        tracing::info!(attempts, "webhook delivered");
    } else {
        tracing::warn!(attempts, %detail, "webhook failed; the outcome is recorded on the deploy");
    }
    let op = Op::RecordWebhookOutcome {
        deploy_id: p.deploy_id.clone(),
        phase: p.phase,
        index: p.index,
        succeeded,
        attempts,
        detail,
    };
    if let Err(e) = propose(app, op).await {
        tracing::warn!(error = %e.message, "webhook outcome not recorded; the next leader sends again");
    }
}

/// One HTTP attempt: its classification and a line describing it.
async fn send(client: &reqwest::Client, r: &HookRequest) -> (Attempt, String) {
    let method = reqwest::Method::from_bytes(r.method.as_bytes()).expect("render checks methods");
    let mut req = client.request(method, &r.url);
    for (name, value) in &r.headers {
        req = req.header(name, value);
    }
    if let Some(body) = &r.body {
        req = req.body(body.clone());
    }
    match req.send().await {
        Ok(resp) => {
            let status = resp.status().as_u16();
            let text = resp.text().await.unwrap_or_default();
            let excerpt: String = text
                .char_indices()
                .take_while(|(i, _)| *i < WEBHOOK_ANSWER_EXCERPT_BYTES)
                .map(|(_, c)| c)
                .collect();
            let line = if excerpt.trim().is_empty() {
                format!("HTTP {status}")
            } else {
                format!("HTTP {status}: {}", excerpt.trim())
            };
            (Attempt::Status(status), line)
        }
        Err(e) => {
            let line = super::error::error_chain(&e);
            (Attempt::Error(line.clone()), line)
        }
    }
}
