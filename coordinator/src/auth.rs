//! Authentication and authorization of the HTTP API: who the caller is ([`Principal`], from
//! `Authorization: token <T>`) and what each route needs ([`rule`], a table from method and
//! route pattern to a role and the scope it must hold in).
//!
//! Modes: `anonymous` (everyone may do everything, Teletraan's `anonymous` auth type; the
//! default for now) and `tokens`. In `tokens` mode a request without a valid token gets 401,
//! one whose principal lacks the role gets 403 naming the role and scope; nothing changes.
//!
//! Principals: the bootstrap `admin_token` (system ADMIN), the `agent_token` (system PINGER,
//! for JSON agents), script tokens (their own role on one env or the system) and user tokens
//! (the user's role bindings). Role comparison is Teletraan's [`Role::satisfies`]; an env-scoped
//! grant covers every stage of the env, a system grant every env.
//!
//! The middleware runs after write forwarding: a follower forwards a write with its
//! `Authorization` header and the leader, whose state is current, decides. Reads are decided on
//! the node that serves them.

use axum::extract::{MatchedPath, Request, State};
use axum::http::{Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use proto::auth::{ResourceType, Role, SYSTEM_RESOURCE, TokenKind, TokenRecord};
use serde::Deserialize;

use crate::api::{ApiError, App};
use crate::state::State as Replicated;

/// How long a new token is valid (Teletraan: 180 days).
pub const TOKEN_TTL_MS: i64 = 180 * 24 * 3600 * 1000;
/// Random bytes in a token.
pub const TOKEN_BYTES: usize = 24;
/// Prefix of every token we issue (recognisable in logs and secret scanners).
pub const TOKEN_PREFIX: &str = "tt_";

/// `auth = "anonymous" | "tokens"`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum AuthMode {
    /// No authentication: every request may do everything (development, the demo).
    #[default]
    Anonymous,
    /// Every request but health checks needs a token with the route's role.
    Tokens,
}

/// Where a grant applies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    System,
    Env(String),
}

impl std::fmt::Display for Scope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Scope::System => f.write_str("the system"),
            Scope::Env(e) => write!(f, "env {e}"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    pub role: Role,
    pub scope: Scope,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PrincipalKind {
    Anonymous,
    /// The bootstrap `admin_token`.
    Admin,
    /// The `agent_token`.
    Agent,
    Script,
    User,
}

/// The caller of a request, put in the request's extensions by [`authorize`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub name: String,
    pub kind: PrincipalKind,
    pub grants: Vec<Grant>,
}

impl Principal {
    pub fn anonymous() -> Self {
        Principal { name: "anonymous".into(), kind: PrincipalKind::Anonymous, grants: vec![] }
    }

    /// Whether the principal holds `role` (or a superior one) on `scope`.
    pub fn allows(&self, role: Role, scope: &Scope) -> bool {
        self.kind == PrincipalKind::Anonymous
            || self
                .grants
                .iter()
                .any(|g| g.role.satisfies(role) && (g.scope == Scope::System || g.scope == *scope))
    }

    /// Whether the principal holds `role` on any scope at all.
    pub fn allows_somewhere(&self, role: Role) -> bool {
        self.kind == PrincipalKind::Anonymous || self.grants.iter().any(|g| g.role.satisfies(role))
    }

    pub fn is_user(&self) -> bool {
        self.kind == PrincipalKind::User
    }

    /// A 403 naming what was needed.
    pub fn require(&self, role: Role, scope: &Scope) -> Result<(), ApiError> {
        if self.allows(role, scope) {
            return Ok(());
        }
        Err(forbidden(&self.name, role, &scope.to_string()))
    }
}

fn forbidden(who: &str, role: Role, on: &str) -> ApiError {
    ApiError::new(StatusCode::FORBIDDEN, format!("{who} needs role {role} on {on}"))
}

fn unauthorized(message: &str) -> ApiError {
    ApiError::new(StatusCode::UNAUTHORIZED, message)
}

/// Which scope a route's role is checked on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    System,
    /// The env named by the `{env}` path segment.
    PathEnv,
    /// The env of the deploy named by the `{id}` path segment.
    DeployEnv,
    /// Any scope (builds, blobs and tags belong to no env).
    Anywhere,
}

/// What a route needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// Health, metrics and the read index followers ask the leader for.
    Public,
    /// A valid principal; the handler checks the rest (the env comes from the body).
    Authenticated,
    Role(Role, Target),
}

use Need::{Authenticated, Public};
use Target::{Anywhere, DeployEnv, PathEnv};

const fn on(role: Role, target: Target) -> Need {
    Need::Role(role, target)
}

/// Every route that needs more than READ, or less than a token. Reads not listed need READ
/// anywhere (any valid token); writes not listed need system ADMIN (fail closed).
pub const RULES: &[(&str, &str, Need)] = &[
    ("GET", "/livez", Public),
    ("GET", "/readyz", Public),
    ("GET", "/metrics", Public),
    ("GET", "/v1/cluster/read-index", Public),
    // Who leads and how far each node got, like `/readyz` (load balancers, `tt cluster`).
    ("GET", "/v1/cluster", Public),
    // The dashboard's entry, login form and assets; its pages are reads like any other.
    ("GET", "/", Public),
    ("GET", "/ui", Public),
    ("GET", "/ui/assets/{file}", Public),
    ("GET", "/ui/login", Public),
    ("POST", "/ui/login", Public),
    ("POST", "/ui/logout", Public),
    ("POST", "/v1/cluster/nodes", on(Role::Admin, Target::System)),
    ("DELETE", "/v1/cluster/nodes/{id}", on(Role::Admin, Target::System)),
    ("POST", "/v1/system/ping", on(Role::Pinger, Target::System)),
    // WRITE on the body's env; creating a new env is open to users (handler).
    ("POST", "/v1/envs", Authenticated),
    ("PUT", "/v1/envs/{env}/{stage}", on(Role::Write, PathEnv)),
    ("DELETE", "/v1/envs/{env}/{stage}", on(Role::Delete, PathEnv)),
    ("PUT", "/v1/envs/{env}/{stage}/capacity", on(Role::Write, PathEnv)),
    ("POST", "/v1/envs/{env}/{stage}/capacity", on(Role::Write, PathEnv)),
    ("DELETE", "/v1/envs/{env}/{stage}/capacity", on(Role::Write, PathEnv)),
    ("PUT", "/v1/envs/{env}/{stage}/script_configs", on(Role::Write, PathEnv)),
    ("PUT", "/v1/envs/{env}/{stage}/agent_configs", on(Role::Write, PathEnv)),
    ("PUT", "/v1/envs/{env}/{stage}/promotes", on(Role::Write, PathEnv)),
    // Teletraan: READ. Hook headers and bodies carry receivers' credentials, so reading
    // them (or a deploy's deliveries, which copy them) needs WRITE on the stage.
    ("GET", "/v1/envs/{env}/{stage}/web_hooks", on(Role::Write, PathEnv)),
    ("PUT", "/v1/envs/{env}/{stage}/web_hooks", on(Role::Write, PathEnv)),
    ("GET", "/v1/deploys/{id}/webhooks", on(Role::Write, DeployEnv)),
    // Schedules: EXECUTE (Teletraan also wants DEPLOY_SCHEDULE, not ported); constraints:
    // WRITE/DELETE, as in Teletraan.
    ("PUT", "/v1/schedules/{env}/{stage}/schedules", on(Role::Execute, PathEnv)),
    ("PUT", "/v1/schedules/{env}/{stage}/override", on(Role::Execute, PathEnv)),
    ("POST", "/v1/envs/{env}/{stage}/deploy_constraint", on(Role::Write, PathEnv)),
    ("DELETE", "/v1/envs/{env}/{stage}/deploy_constraint", on(Role::Delete, PathEnv)),
    ("POST", "/v1/envs/{env}/{stage}/deploys", on(Role::Execute, PathEnv)),
    ("POST", "/v1/envs/{env}/{stage}/deploys/current/actions", on(Role::Execute, PathEnv)),
    ("PUT", "/v1/envs/{env}/{stage}/deploys/hostactions", on(Role::Execute, PathEnv)),
    ("DELETE", "/v1/envs/{env}/{stage}/hosts", on(Role::Execute, PathEnv)),
    // Teletraan: READ (it runs a state transition); like every read, any valid token.
    ("PUT", "/v1/envs/{env}/{stage}/deploys/current/progress", on(Role::Read, Anywhere)),
    ("PUT", "/v1/deploys/{id}", on(Role::Write, DeployEnv)),
    ("POST", "/v1/builds", on(Role::Publisher, Anywhere)),
    ("DELETE", "/v1/builds/{id}", on(Role::Delete, Anywhere)),
    ("POST", "/v1/blobs", on(Role::Publisher, Anywhere)),
    ("POST", "/v1/blobs/pull", on(Role::Publisher, Anywhere)),
    ("PUT", "/v1/blobs/{hash}", on(Role::Publisher, Anywhere)),
    // Teletraan: READ only (§6.4's gap). A BAD_BUILD tag stops deploys, so: EXECUTE.
    ("POST", "/v1/tags", on(Role::Execute, Anywhere)),
    ("DELETE", "/v1/tags/{id}", on(Role::Execute, Anywhere)),
    // Env ACLs: ADMIN of the env (Teletraan); listing them too, they say who holds power.
    ("GET", "/v1/envs/{env}/user_roles", on(Role::Admin, PathEnv)),
    ("POST", "/v1/envs/{env}/user_roles", on(Role::Admin, PathEnv)),
    ("GET", "/v1/envs/{env}/user_roles/{user}", on(Role::Admin, PathEnv)),
    ("PUT", "/v1/envs/{env}/user_roles/{user}", on(Role::Admin, PathEnv)),
    ("DELETE", "/v1/envs/{env}/user_roles/{user}", on(Role::Admin, PathEnv)),
    ("GET", "/v1/envs/{env}/token_roles", on(Role::ManageScriptToken, PathEnv)),
    ("POST", "/v1/envs/{env}/token_roles", on(Role::ManageScriptToken, PathEnv)),
    ("GET", "/v1/envs/{env}/token_roles/{script}", on(Role::ManageScriptToken, PathEnv)),
    ("PUT", "/v1/envs/{env}/token_roles/{script}", on(Role::ManageScriptToken, PathEnv)),
    ("DELETE", "/v1/envs/{env}/token_roles/{script}", on(Role::ManageScriptToken, PathEnv)),
    // System ACLs: Teletraan needs only WRITE/DELETE on SYSTEM for user roles, which lets a
    // system WRITE holder make itself ADMIN; here they need ADMIN.
    ("GET", "/v1/system/user_roles", on(Role::Admin, Target::System)),
    ("POST", "/v1/system/user_roles", on(Role::Admin, Target::System)),
    ("GET", "/v1/system/user_roles/{user}", on(Role::Admin, Target::System)),
    ("PUT", "/v1/system/user_roles/{user}", on(Role::Admin, Target::System)),
    ("DELETE", "/v1/system/user_roles/{user}", on(Role::Admin, Target::System)),
    ("GET", "/v1/system/token_roles", on(Role::ManageScriptToken, Target::System)),
    ("POST", "/v1/system/token_roles", on(Role::ManageScriptToken, Target::System)),
    ("GET", "/v1/system/token_roles/{script}", on(Role::ManageScriptToken, Target::System)),
    ("PUT", "/v1/system/token_roles/{script}", on(Role::ManageScriptToken, Target::System)),
    ("DELETE", "/v1/system/token_roles/{script}", on(Role::ManageScriptToken, Target::System)),
    // User tokens: system ADMIN, or the user for their own (handler).
    ("GET", "/v1/users/{user}/tokens", Authenticated),
    ("POST", "/v1/users/{user}/tokens", Authenticated),
    ("DELETE", "/v1/users/{user}/tokens/{id}", Authenticated),
];

/// What `method` on the route `pattern` needs (see [`RULES`]).
pub fn rule(method: &Method, pattern: &str) -> Need {
    let m = if *method == Method::HEAD { "GET" } else { method.as_str() };
    if let Some((_, _, need)) = RULES.iter().find(|(rm, rp, _)| *rm == m && *rp == pattern) {
        return *need;
    }
    if m == "GET" { on(Role::Read, Anywhere) } else { on(Role::Admin, Target::System) }
}

/// The value of the path segment that `name` (e.g. `{env}`) stands for in `pattern`.
pub fn path_param<'a>(pattern: &str, path: &'a str, name: &str) -> Option<&'a str> {
    let i = pattern.split('/').position(|s| s == name)?;
    path.split('/').nth(i).filter(|s| !s.is_empty())
}

/// A new random token and its hash (hex).
pub fn new_token() -> (String, String) {
    let bytes: [u8; TOKEN_BYTES] = rand::random();
    let token = format!("{TOKEN_PREFIX}{}", hex(&bytes));
    let hash = hash_token(&token);
    (token, hash)
}

pub fn hash_token(token: &str) -> String {
    blake3::hash(token.as_bytes()).to_hex().to_string()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The grants a stored token gives, or `None` if it expired.
pub fn principal_of(state: &Replicated, token: &TokenRecord, now_ms: i64) -> Option<Principal> {
    if token.expire_date <= now_ms {
        return None;
    }
    let scope = |t: ResourceType, r: &str| match t {
        ResourceType::System => Scope::System,
        ResourceType::Env => Scope::Env(r.to_string()),
    };
    Some(match token.kind {
        TokenKind::Script => Principal {
            name: token.name.clone(),
            kind: PrincipalKind::Script,
            grants: vec![Grant {
                role: token.role,
                scope: scope(token.resource_type, &token.resource_id),
            }],
        },
        TokenKind::User => Principal {
            name: token.name.clone(),
            kind: PrincipalKind::User,
            grants: state
                .bindings_of(&token.name)
                .map(|(t, r, role)| Grant { role, scope: scope(t, r) })
                .collect(),
        },
    })
}

/// The token in `Authorization: token <T>` (Teletraan's format; `Bearer <T>` is accepted too).
fn bearer(req: &Request) -> Option<&str> {
    let v = req.headers().get(header::AUTHORIZATION)?.to_str().ok()?;
    v.strip_prefix("token ").or_else(|| v.strip_prefix("Bearer ")).map(str::trim)
}

/// Who presents `token`, in `tokens` mode.
pub fn identify(app: &App, token: &str, now_ms: i64) -> Option<Principal> {
    let hash = blake3::hash(token.as_bytes());
    let system = |name: &str, kind, role| Principal {
        name: name.into(),
        kind,
        grants: vec![Grant { role, scope: Scope::System }],
    };
    // blake3::Hash compares in constant time.
    if app.admin_token.as_deref().is_some_and(|a| blake3::hash(a.as_bytes()) == hash) {
        return Some(system("admin", PrincipalKind::Admin, Role::Admin));
    }
    if app.agent_token.as_deref().is_some_and(|a| blake3::hash(a.as_bytes()) == hash) {
        return Some(system("agent", PrincipalKind::Agent, Role::Pinger));
    }
    let applied = app.applied.read().expect("applied lock poisoned");
    let record = applied.state.token(hash.to_hex().as_str())?;
    principal_of(&applied.state, record, now_ms)
}

/// The env a route's target names, if it names one.
fn target_scope(app: &App, target: Target, pattern: &str, path: &str) -> Option<Scope> {
    match target {
        Target::System => Some(Scope::System),
        Target::Anywhere => None,
        Target::PathEnv => path_param(pattern, path, "{env}").map(|e| Scope::Env(e.to_string())),
        Target::DeployEnv => {
            let id = path_param(pattern, path, "{id}")?;
            let applied = app.applied.read().expect("applied lock poisoned");
            let s = &applied.state;
            let deploy = s.deploy(&proto::ids::DeployId::new(id))?;
            let env = s.env_by_id(deploy.env_id.as_ref()?)?;
            Some(Scope::Env(env.env_name.clone()?))
        }
    }
}

/// The middleware: authenticates, checks the route's rule, and hands the [`Principal`] to the
/// handler in the request's extensions.
pub async fn authorize(State(app): State<App>, mut req: Request, next: Next) -> Response {
    let Some(pattern) = req.extensions().get::<MatchedPath>().map(|p| p.as_str().to_string())
    else {
        return next.run(req).await; // unrouted: 404
    };
    let need = rule(req.method(), &pattern);
    if need == Public {
        return next.run(req).await;
    }
    let principal = match app.auth_mode {
        AuthMode::Anonymous => Principal::anonymous(),
        AuthMode::Tokens => {
            let Some(token) = bearer(&req) else {
                return unauthorized("authentication required: send Authorization: token <T>")
                    .into_response();
            };
            match identify(&app, token, crate::node::now_ms()) {
                Some(p) => p,
                None => return unauthorized("unknown or expired token").into_response(),
            }
        }
    };
    if let Need::Role(role, target) = need {
        let path = req.uri().path().to_string();
        let allowed = match target_scope(&app, target, &pattern, &path) {
            Some(scope) => principal.require(role, &scope).map_err(|e| e.into_response()),
            // An unknown deploy: the handler answers 404 to anyone who could act somewhere.
            None if principal.allows_somewhere(role) => Ok(()),
            None => Err(forbidden(&principal.name, role, "any env").into_response()),
        };
        if let Err(refused) = allowed {
            return refused;
        }
    }
    req.extensions_mut().insert(principal);
    next.run(req).await
}

/// The resource of a role binding or script token: an env, or the system (`*`).
pub fn resource_scope(resource_type: ResourceType, resource_id: &str) -> Scope {
    match resource_type {
        ResourceType::System => Scope::System,
        ResourceType::Env => Scope::Env(resource_id.to_string()),
    }
}

/// The resource id of a scope.
pub fn resource_of(scope: &Scope) -> (ResourceType, String) {
    match scope {
        Scope::System => (ResourceType::System, SYSTEM_RESOURCE.to_string()),
        Scope::Env(e) => (ResourceType::Env, e.clone()),
    }
}

#[cfg(test)]
mod tests;
