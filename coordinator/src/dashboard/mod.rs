//! The live deploy dashboard every node serves on its HTTP port: server-rendered HTML
//! ([`render`], pure), two embedded assets (no CDN), live updates of a stage's host grid over
//! server-sent events, and a token login kept in an HttpOnly cookie.
//!
//! Pages read state like the `/v1` handlers: after the read barrier (linearizable). When no
//! leader is known they still answer from this node's state, under a banner saying so.
//!
//! Actions are not dashboard routes: the page's script calls the `/v1` API itself, so the API's
//! rules and handlers decide. [`cookie_token`] turns the login cookie into the
//! `Authorization` header the API expects — for reads always, for writes only when the request
//! carries [`DASHBOARD_HEADER`]. CSRF: the cookie is `SameSite=Strict` (a cross-site request
//! carries no cookie at all), and a write authenticated by the cookie must also carry a custom
//! header, which a cross-origin page can only send after a CORS preflight that this server never
//! grants. A plain cross-site form post therefore reaches the API without credentials (401).

pub mod pages;
pub mod render;

use std::convert::Infallible;
use std::time::Duration;

use axum::Router;
use axum::extract::{Form, Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use futures::Stream;
use proto::ids::EnvId;
use serde::Deserialize;

use self::render::Ctx;
use crate::api::{App, AppState, ReadMode, read_barrier};
use crate::auth::{AuthMode, Principal};

/// The cookie that holds the signed-in token.
pub const TOKEN_COOKIE: &str = "tt_token";
/// How long the login cookie lives, in seconds (the token itself may expire sooner).
pub const TOKEN_COOKIE_MAX_AGE_SECS: u64 = 12 * 3600;
/// Writes authenticated by the cookie must carry this header (see the module docs).
pub const DASHBOARD_HEADER: &str = "x-tt-dashboard";
/// Longest token the login form accepts, in bytes.
pub const MAX_TOKEN_BYTES: usize = 512;
/// The live stream re-renders at least this often even without a change (ages move on).
pub const LIVE_FALLBACK_TICK: Duration = Duration::from_secs(5);
/// After a change, the live stream waits this long so that a burst of applies is one update.
pub const LIVE_COALESCE: Duration = Duration::from_millis(150);

const CSS: &str = include_str!("assets/dashboard.css");
const JS: &str = include_str!("assets/dashboard.js");

/// The dashboard's routes, with the API's authorization (reads need READ; the login page and
/// assets are public, see `auth::RULES`). Not under write forwarding: login and logout are
/// answered by the node that receives them.
pub fn routes(app: App) -> Router<App> {
    Router::new()
        .route("/", get(|| async { Redirect::to("/ui/envs") }))
        .route("/ui", get(|| async { Redirect::to("/ui/envs") }))
        .route("/ui/assets/{file}", get(asset))
        .route("/ui/login", get(login_form).post(login))
        .route("/ui/logout", post(logout))
        .route("/ui/envs", get(envs))
        .route("/ui/env/{env}/{stage}", get(stage))
        .route("/ui/env/{env}/{stage}/events", get(events))
        .route("/ui/env/{env}/{stage}/history", get(history))
        .route("/ui/env/{env}/{stage}/config", get(config))
        .route("/ui/compare", get(compare))
        .route("/ui/host/{host}", get(host))
        .route("/ui/cluster", get(cluster))
        .layer(middleware::from_fn_with_state(app, crate::auth::authorize))
}

async fn asset(Path(file): Path<String>) -> Response {
    let (body, kind) = match file.as_str() {
        "dashboard.css" => (CSS, "text/css; charset=utf-8"),
        "dashboard.js" => (JS, "text/javascript; charset=utf-8"),
        _ => return (StatusCode::NOT_FOUND, "no such asset\n").into_response(),
    };
    ([(header::CONTENT_TYPE, kind), (header::CACHE_CONTROL, "max-age=300")], body).into_response()
}

/// The value of cookie `name` in the request's `Cookie` headers.
pub fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .and_then(|(_, v)| percent_decode(v))
}

fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Outermost middleware: the login cookie stands in for `Authorization` on reads, and on
/// writes that carry [`DASHBOARD_HEADER`]; a dashboard page asked for without valid
/// credentials redirects to the login form.
pub async fn cookie_token(mut req: Request, next: Next) -> Response {
    let read = matches!(*req.method(), Method::GET | Method::HEAD);
    if !req.headers().contains_key(header::AUTHORIZATION)
        && (read || req.headers().contains_key(DASHBOARD_HEADER))
        && let Some(token) = cookie(req.headers(), TOKEN_COOKIE)
        && let Ok(v) = HeaderValue::from_str(&format!("token {token}"))
    {
        req.headers_mut().insert(header::AUTHORIZATION, v);
    }
    let path = req.uri().path().to_string();
    let page = read && path.starts_with("/ui/") && !path.ends_with("/events");
    let resp = next.run(req).await;
    if page && resp.status() == StatusCode::UNAUTHORIZED {
        return Redirect::to(&format!("/ui/login?next={}", render::seg(&path))).into_response();
    }
    resp
}

/// The shell's context: clock, leader, term, who is signed in.
fn ctx(app: &AppState, principal: Option<&Principal>, banner: Option<String>) -> Ctx {
    let m = app.raft.metrics().borrow().clone();
    let banner = match (m.current_leader, banner) {
        (_, Some(b)) => Some(b),
        (None, None) => Some(
            "This node knows no leader (election in progress or quorum lost): pages show its \
             own, possibly stale, state and actions will fail."
                .to_string(),
        ),
        (Some(_), None) => None,
    };
    Ctx {
        now_ms: crate::node::now_ms(),
        node_id: app.node_id,
        leader: m.current_leader,
        term: m.current_term,
        banner,
        who: principal.filter(|_| app.auth_mode == AuthMode::Tokens).map(|p| p.name.clone()),
        tokens_mode: app.auth_mode == AuthMode::Tokens,
    }
}

/// The read barrier of a linearizable read; when it cannot be had, the page is served from
/// local state with a banner instead of failing.
async fn barrier(app: &AppState) -> Option<String> {
    match read_barrier(app, &ReadMode::default()).await {
        Ok(()) => None,
        Err(e) => Some(format!(
            "Could not confirm this node's state is current ({}): showing possibly stale data.",
            e.message
        )),
    }
}

type MaybePrincipal = Option<axum::Extension<Principal>>;

fn html(status: StatusCode, body: String) -> Response {
    (status, [(header::CACHE_CONTROL, "no-store")], Html(body)).into_response()
}

fn not_found(c: &Ctx, message: &str) -> Response {
    html(StatusCode::NOT_FOUND, render::error_page(c, 404, message))
}

#[derive(Debug, Default, Deserialize)]
struct EnvsQuery {
    #[serde(default)]
    q: String,
}

async fn envs(State(app): State<App>, p: MaybePrincipal, Query(q): Query<EnvsQuery>) -> Response {
    let banner = barrier(&app).await;
    let c = ctx(&app, p.as_deref(), banner);
    let applied = app.applied.read().expect("applied lock poisoned");
    html(StatusCode::OK, render::envs_page(&c, &applied.state, q.q.trim()))
}

/// A page of one stage: `render` after the read barrier, or 404 if the stage is unknown.
async fn stage_scoped(
    app: &AppState,
    p: Option<&Principal>,
    env: &str,
    stage: &str,
    render: fn(&Ctx, &crate::state::State, &str, &str) -> Option<String>,
) -> Response {
    let banner = barrier(app).await;
    let c = ctx(app, p, banner);
    let applied = app.applied.read().expect("applied lock poisoned");
    match render(&c, &applied.state, env, stage) {
        Some(page) => html(StatusCode::OK, page),
        None => not_found(&c, &format!("stage {env}/{stage} not found")),
    }
}

async fn stage(
    State(app): State<App>,
    p: MaybePrincipal,
    Path((e, s)): Path<(String, String)>,
) -> Response {
    stage_scoped(&app, p.as_deref(), &e, &s, render::stage_page).await
}

async fn history(
    State(app): State<App>,
    p: MaybePrincipal,
    Path((e, s)): Path<(String, String)>,
) -> Response {
    stage_scoped(&app, p.as_deref(), &e, &s, render::history_page).await
}

async fn config(
    State(app): State<App>,
    p: MaybePrincipal,
    Path((e, s)): Path<(String, String)>,
) -> Response {
    stage_scoped(&app, p.as_deref(), &e, &s, pages::config_page).await
}

#[derive(Debug, Deserialize)]
struct CompareQuery {
    a: String,
    b: String,
}

async fn compare(
    State(app): State<App>,
    p: MaybePrincipal,
    Query(q): Query<CompareQuery>,
) -> Response {
    let banner = barrier(&app).await;
    let c = ctx(&app, p.as_deref(), banner);
    let applied = app.applied.read().expect("applied lock poisoned");
    match pages::compare_page(&c, &applied.state, &q.a, &q.b) {
        Some(page) => html(StatusCode::OK, page),
        None => not_found(&c, &format!("build {} or {} not found", q.a, q.b)),
    }
}

/// Most tracked blobs listed on the cluster page.
pub const CLUSTER_PAGE_BLOBS: usize = 20;

/// This node's swarm figures, with the builds that name each tracked blob.
fn swarm_figures(app: &AppState) -> Option<pages::SwarmFigures> {
    let swarm = app.swarm.as_ref()?;
    let origin = swarm.stats();
    let tracked = swarm.tracked(std::time::Instant::now(), CLUSTER_PAGE_BLOBS);
    let applied = app.applied.read().expect("applied lock poisoned");
    // One pass over the builds: the ids and size of those naming a tracked blob.
    let mut named: std::collections::HashMap<&str, (Vec<String>, Option<u64>)> =
        tracked.iter().map(|t| (t.blake3.as_str(), (Vec::new(), None))).collect();
    for b in applied.state.builds_newest_first(None) {
        if let Some(entry) = b.artifact_blake3.as_deref().and_then(|h| named.get_mut(h)) {
            entry.0.extend(b.id.as_ref().map(|i| i.to_string()));
            entry.1 = entry.1.or(b.artifact_size);
        }
    }
    let blobs = tracked
        .iter()
        .map(|t| {
            let (builds, size) = named.remove(t.blake3.as_str()).unwrap_or_default();
            pages::SwarmBlob {
                builds,
                size,
                blake3: t.blake3.clone(),
                seeders: t.seeders,
                fetching: t.fetching,
            }
        })
        .collect();
    Some(pages::SwarmFigures {
        origin_sent_bytes: origin.uploaded_bytes,
        pieces_served: origin.pieces_served,
        declined_as_seeded: origin.repeats_declined,
        busy_answers: origin.busy_answers,
        blobs,
    })
}

async fn host(State(app): State<App>, p: MaybePrincipal, Path(host): Path<String>) -> Response {
    let banner = barrier(&app).await;
    let c = ctx(&app, p.as_deref(), banner);
    let applied = app.applied.read().expect("applied lock poisoned");
    match render::host_page(&c, &applied.state, &host) {
        Some(page) => html(StatusCode::OK, page),
        None => not_found(&c, &format!("host {host} has no agent row on any stage")),
    }
}

async fn cluster(State(app): State<App>, p: MaybePrincipal) -> Response {
    let status = crate::api::cluster::status(State(app.clone())).await.0;
    let c = ctx(&app, p.as_deref(), None);
    let is_leader = status.leader_id == Some(app.node_id);
    let swarm = swarm_figures(&app).map(|f| pages::swarm_section(&f, is_leader));
    html(StatusCode::OK, render::cluster_page(&c, &status, swarm.as_deref()))
}

/// Server-sent events for one stage: an `live` event with the re-rendered summary and host
/// grid whenever it changed. Woken by the change feed of the stage (goals), by this node
/// applying anything (agent reports), and at least every [`LIVE_FALLBACK_TICK`]; a render
/// identical to the last one sent is not sent. A `gone` event ends the stream if the stage is
/// deleted. Reads this node's applied state (the page's first render was linearizable).
async fn events(
    State(app): State<App>,
    Path((env, stage)): Path<(String, String)>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, Response> {
    let env_id = {
        let applied = app.applied.read().expect("applied lock poisoned");
        applied.state.env_id(&env, &stage).cloned()
    };
    let Some(env_id) = env_id else {
        let c = ctx(&app, None, None);
        return Err(not_found(&c, &format!("stage {env}/{stage} not found")));
    };
    tracing::debug!(env = %env, stage = %stage, "dashboard live stream opened");
    let init = Live { app, env_id, last: None, rendered_at: None, done: false };
    let stream = futures::stream::unfold(init, |mut s| async move {
        if s.done {
            return None;
        }
        loop {
            if let Some(at) = s.rendered_at {
                wait_for_change(&s.app, &s.env_id, at).await;
            }
            let (fragment, index) = {
                let applied = s.app.applied.read().expect("applied lock poisoned");
                let index = applied.last_applied.map_or(0, |l| l.index);
                (render::live_fragment(crate::node::now_ms(), &applied.state, &s.env_id), index)
            };
            s.rendered_at = Some(index);
            let Some(fragment) = fragment else {
                s.done = true;
                return Some((Ok(Event::default().event("gone").data("stage deleted")), s));
            };
            if s.last.as_deref() != Some(fragment.as_str()) {
                s.last = Some(fragment.clone());
                return Some((Ok(Event::default().event("live").data(fragment)), s));
            }
        }
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}

struct Live {
    app: App,
    env_id: EnvId,
    last: Option<String>,
    /// The applied index the last render saw.
    rendered_at: Option<u64>,
    done: bool,
}

/// Returns when the stage may have changed since the state at `rendered_at` was rendered.
async fn wait_for_change(app: &AppState, env_id: &EnvId, rendered_at: u64) {
    let goals = app.feed.subscribe([env_id]);
    let mut metrics = app.raft.metrics();
    let applied_moved = async {
        loop {
            let index = metrics.borrow_and_update().last_applied.map_or(0, |l| l.index);
            if index > rendered_at {
                return;
            }
            if metrics.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        () = goals.changed() => {}
        () = applied_moved => {}
        () = tokio::time::sleep(LIVE_FALLBACK_TICK) => {}
    }
    tokio::time::sleep(LIVE_COALESCE).await;
}

#[derive(Debug, Default, Deserialize)]
struct NextQuery {
    next: Option<String>,
}

/// Only local dashboard paths are followed after login (no open redirect).
fn safe_next(next: Option<&str>) -> String {
    match next {
        Some(n)
            if n.starts_with("/ui/") && !n.starts_with("//") && !n.contains(['\\', '\r', '\n']) =>
        {
            n.to_string()
        }
        _ => "/ui/envs".to_string(),
    }
}

async fn login_form(State(app): State<App>, Query(q): Query<NextQuery>) -> Response {
    let c = ctx(&app, None, None);
    html(StatusCode::OK, render::login_page(&c, &safe_next(q.next.as_deref()), None))
}

#[derive(Debug, Deserialize)]
struct LoginForm {
    token: String,
    next: Option<String>,
}

/// Rejects a form post whose `Origin` is another site (login CSRF).
fn same_origin(headers: &HeaderMap) -> bool {
    let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) else {
        return true; // not a browser form, or an old browser: nothing to compare
    };
    let host = headers.get(header::HOST).and_then(|v| v.to_str().ok()).unwrap_or("");
    origin.split_once("://").is_some_and(|(_, h)| h == host)
}

async fn login(State(app): State<App>, headers: HeaderMap, Form(f): Form<LoginForm>) -> Response {
    let next = safe_next(f.next.as_deref());
    let c = ctx(&app, None, None);
    if !same_origin(&headers) {
        return html(
            StatusCode::FORBIDDEN,
            render::login_page(&c, &next, Some("cross-site login refused")),
        );
    }
    let token = f.token.trim();
    if token.is_empty() || token.len() > MAX_TOKEN_BYTES || token.chars().any(|ch| ch.is_control())
    {
        let why = format!("a token is 1-{MAX_TOKEN_BYTES} printable characters");
        return html(StatusCode::BAD_REQUEST, render::login_page(&c, &next, Some(&why)));
    }
    if app.auth_mode == AuthMode::Tokens
        && crate::auth::identify(&app, token, crate::node::now_ms()).is_none()
    {
        return html(
            StatusCode::UNAUTHORIZED,
            render::login_page(&c, &next, Some("unknown or expired token")),
        );
    }
    let cookie = format!(
        "{TOKEN_COOKIE}={}; Path=/; HttpOnly; SameSite=Strict; Max-Age={TOKEN_COOKIE_MAX_AGE_SECS}",
        render::seg(token)
    );
    (StatusCode::SEE_OTHER, [(header::SET_COOKIE, cookie), (header::LOCATION, next)])
        .into_response()
}

async fn logout(headers: HeaderMap) -> Response {
    if !same_origin(&headers) {
        return (StatusCode::FORBIDDEN, "cross-site logout refused\n").into_response();
    }
    let cookie = format!("{TOKEN_COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0");
    (StatusCode::SEE_OTHER, [(header::SET_COOKIE, cookie), (header::LOCATION, "/ui/login".into())])
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cookie_is_found_among_others_and_decoded() {
        let mut h = HeaderMap::new();
        h.insert(header::COOKIE, HeaderValue::from_static("a=1; tt_token=tt_ab%2Fc; b=2"));
        assert_eq!(cookie(&h, TOKEN_COOKIE).as_deref(), Some("tt_ab/c"));
        assert_eq!(cookie(&h, "missing"), None);
        h.insert(header::COOKIE, HeaderValue::from_static("tt_token=%zz"));
        assert_eq!(cookie(&h, TOKEN_COOKIE), None, "malformed encoding is no token");
    }

    #[test]
    fn login_only_returns_to_dashboard_paths() {
        assert_eq!(safe_next(Some("/ui/env/a/b")), "/ui/env/a/b");
        assert_eq!(safe_next(Some("https://evil.example/")), "/ui/envs");
        assert_eq!(safe_next(Some("//evil.example/ui/")), "/ui/envs");
        assert_eq!(safe_next(None), "/ui/envs");
    }

    #[test]
    fn a_foreign_origin_is_not_same_origin() {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_static("127.0.0.1:8080"));
        assert!(same_origin(&h), "no Origin header");
        h.insert(header::ORIGIN, HeaderValue::from_static("http://127.0.0.1:8080"));
        assert!(same_origin(&h));
        h.insert(header::ORIGIN, HeaderValue::from_static("http://evil.example"));
        assert!(!same_origin(&h));
    }
}
