//! The dashboard's pages as pure functions: applied state (and a little context) in, HTML out.
//! No IO, no clock (the caller passes `now_ms`). Every string that comes from a user, an agent
//! or the URL goes through [`esc`] (text and attributes) or [`seg`] (URL path segments).

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt::Write as _;

use proto::beans::{AgentBean, BuildBean, DeployBean, EnvironBean};
use proto::enums::{AgentState, DeployStage, DeployState, EnvState};
use proto::ids::{DeployId, EnvId};

use crate::api::cluster::ClusterStatus;
use crate::state::State as Replicated;

/// Most builds offered in the stage page's Deploy picker.
pub const BUILD_CHOICES: usize = 30;
/// Most deploys shown on a stage's history page.
pub const HISTORY_ROWS: usize = 50;

/// Escapes text for HTML element content and quoted attribute values.
pub fn esc(s: &str) -> Cow<'_, str> {
    if !s.contains(['&', '<', '>', '"', '\'', '\r']) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 16);
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            // Server-sent events split data on CR; keep fragments single-line-safe.
            '\r' => out.push_str("&#13;"),
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// Percent-encodes one URL path segment (or query value): everything but unreserved characters.
pub fn seg(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// "5s", "3m", "2h", "4d": how long ago `then` was (or how long since), never negative.
pub fn ago(now_ms: i64, then_ms: i64) -> String {
    let s = (now_ms - then_ms).max(0) / 1000;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m", s / 60),
        3600..86_400 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86_400),
    }
}

/// What a host cell shows: Teletraan's `agentButton` semantics with an icon and a word for
/// each colour (colour-blind safe; the word is also the cell's `data-state`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum HostKind {
    Failed,
    Unreachable,
    Deploying,
    Pending,
    Paused,
    Stopped,
    Done,
}

impl HostKind {
    pub const ALL: [HostKind; 7] = [
        HostKind::Failed,
        HostKind::Unreachable,
        HostKind::Deploying,
        HostKind::Pending,
        HostKind::Paused,
        HostKind::Stopped,
        HostKind::Done,
    ];

    /// The `data-state` value and CSS class suffix.
    pub fn name(self) -> &'static str {
        match self {
            HostKind::Failed => "failed",
            HostKind::Unreachable => "unreachable",
            HostKind::Deploying => "deploying",
            HostKind::Pending => "pending",
            HostKind::Paused => "paused",
            HostKind::Stopped => "stopped",
            HostKind::Done => "done",
        }
    }

    pub fn icon(self) -> &'static str {
        match self {
            HostKind::Failed => "\u{2717}",    // ✗
            HostKind::Unreachable => "?",      //
            HostKind::Deploying => "\u{21bb}", // ↻
            HostKind::Pending => "\u{25f7}",   // ◷
            HostKind::Paused => "\u{2016}",    // ‖
            HostKind::Stopped => "\u{25a0}",   // ■
            HostKind::Done => "\u{2713}",      // ✓
        }
    }

    fn sentence(self) -> &'static str {
        match self {
            HostKind::Failed => "failed on the current deploy; click to see its error output",
            HostKind::Unreachable => "has not pinged recently (unreachable)",
            HostKind::Deploying => "is deploying the current build",
            HostKind::Pending => "is waiting to deploy the current build",
            HostKind::Paused => "is paused or reset by an operator",
            HostKind::Stopped => "is stopping or stopped",
            HostKind::Done => "serves the current build",
        }
    }
}

/// Classifies one agent row against the stage's current deploy.
pub fn classify(a: &AgentBean, current: Option<&DeployId>) -> HostKind {
    let on_current = current.is_some() && a.deploy_id.as_ref() == current;
    match a.state {
        Some(AgentState::PausedBySystem) => return HostKind::Failed,
        Some(AgentState::Unreachable) => return HostKind::Unreachable,
        Some(
            AgentState::PausedByUser
            | AgentState::Reset
            | AgentState::ResetBySystem
            | AgentState::Delete,
        ) => return HostKind::Paused,
        Some(AgentState::Stop) => return HostKind::Stopped,
        _ => {}
    }
    if matches!(a.deploy_stage, Some(DeployStage::Stopping | DeployStage::Stopped)) {
        return HostKind::Stopped;
    }
    if !on_current {
        return HostKind::Pending;
    }
    if a.status.is_some_and(|s| s.is_fatal()) {
        return HostKind::Failed;
    }
    if a.deploy_stage == Some(DeployStage::ServingBuild) {
        HostKind::Done
    } else {
        HostKind::Deploying
    }
}

/// Whether a stage's current deploy needs an operator: FAILING, ABORTED, or hosts stuck.
pub fn needs_attention(deploy: Option<&DeployBean>, stuck_hosts: u32) -> bool {
    stuck_hosts > 0
        || deploy
            .and_then(|d| d.state)
            .is_some_and(|s| matches!(s, DeployState::Failing | DeployState::Aborted))
}

/// Per-page context the shell shows: who is signed in, the leader, and a banner if any.
#[derive(Debug, Clone, Default)]
pub struct Ctx {
    pub now_ms: i64,
    pub node_id: u64,
    pub leader: Option<u64>,
    pub term: u64,
    /// Shown on top of the page (no leader known, stale data).
    pub banner: Option<String>,
    /// The signed-in principal's name (`None` when nobody is signed in).
    pub who: Option<String>,
    /// Whether the cluster requires tokens (shows the login link).
    pub tokens_mode: bool,
}

/// The page shell: head, navigation, banner, body, footer.
pub fn page(ctx: &Ctx, title: &str, body: &str) -> String {
    let mut out = String::with_capacity(body.len() + 2048);
    let _ = write!(
        out,
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{} · tt</title><link rel=\"stylesheet\" href=\"/ui/assets/dashboard.css\">\
         <script src=\"/ui/assets/dashboard.js\" defer></script></head><body>\
         <nav><a class=\"brand\" href=\"/ui/envs\">tt</a><a href=\"/ui/envs\">Environments</a>\
         <a href=\"/ui/cluster\">Cluster</a><span class=\"spacer\"></span>",
        esc(title)
    );
    match &ctx.who {
        Some(who) => {
            let _ = write!(
                out,
                "<span class=\"who\" id=\"who\">{}</span><form method=\"post\" \
                 action=\"/ui/logout\" class=\"inline\"><button type=\"submit\">Log out</button>\
                 </form>",
                esc(who)
            );
        }
        None if ctx.tokens_mode => out.push_str("<a href=\"/ui/login\">Log in</a>"),
        None => {}
    }
    out.push_str("</nav>");
    if let Some(b) = &ctx.banner {
        let _ = write!(out, "<div class=\"banner\" id=\"banner\" role=\"alert\">{}</div>", esc(b));
    }
    let _ = write!(out, "<main>{body}</main><footer>node {} · ", ctx.node_id);
    match ctx.leader {
        Some(l) => {
            let _ = write!(out, "leader {l} · term {}", ctx.term);
        }
        None => out.push_str("no leader known"),
    }
    out.push_str("</footer></body></html>");
    out
}

fn state_badge(state: Option<DeployState>) -> String {
    match state {
        Some(s) => format!("<span class=\"badge s-{}\">{s}</span>", s.as_str().to_lowercase()),
        None => "<span class=\"badge\">no deploy</span>".to_string(),
    }
}

fn progress_bar(state: Option<DeployState>, succeeded: u32, total: u32) -> String {
    let pct = (succeeded * 100).checked_div(total).unwrap_or(0);
    let bad = matches!(state, Some(DeployState::Failing | DeployState::Aborted));
    format!(
        "<span class=\"bar{}\" title=\"{succeeded} of {total} hosts\"><span style=\"width:{pct}%\">\
         </span></span> <span class=\"pct\">{pct}% ({succeeded}/{total})</span>",
        if bad { " bad" } else { "" }
    )
}

fn build_label(b: Option<&BuildBean>) -> String {
    match b {
        None => "–".to_string(),
        Some(b) => {
            let name = b.name.as_deref().unwrap_or("?");
            let commit = b.commit_short.as_deref().or(b.commit.as_deref()).unwrap_or("");
            let commit = BuildBean::short_commit(commit);
            let mut s = format!("{}@{}", esc(name), esc(commit));
            if let Some(branch) = &b.branch {
                let _ = write!(s, " <span class=\"dim\">({})</span>", esc(branch));
            }
            s
        }
    }
}

fn stage_href(env: &str, stage: &str) -> String {
    format!("/ui/env/{}/{}", seg(env), seg(stage))
}

/// One row of the environments page.
struct EnvRow<'a> {
    env: &'a EnvironBean,
    deploy: Option<&'a DeployBean>,
    build: Option<&'a BuildBean>,
    succeeded: u32,
    total: u32,
    stuck: u32,
}

/// The environments page: every stage with its current build, deploy state and progress;
/// stages needing attention first in their own group. `filter` keeps rows whose
/// `env/stage` contains it (the page's filter box does the same without a reload).
pub fn envs_page(ctx: &Ctx, state: &Replicated, filter: &str) -> String {
    let rows: Vec<EnvRow<'_>> = state
        .envs()
        .filter(|e| {
            let name = format!(
                "{}/{}",
                e.env_name.as_deref().unwrap_or(""),
                e.stage_name.as_deref().unwrap_or("")
            );
            filter.is_empty() || name.contains(filter)
        })
        .map(|env| {
            let deploy = env.deploy_id.as_ref().and_then(|d| state.deploy(d));
            let build = deploy.and_then(|d| d.build_id.as_ref()).and_then(|b| state.build(b));
            let p = env.id.as_ref().map(|id| state.progress(id)).unwrap_or_default();
            EnvRow { env, deploy, build, succeeded: p.succeeded, total: p.total, stuck: p.stuck }
        })
        .collect();
    let (attention, rest): (Vec<_>, Vec<_>) =
        rows.into_iter().partition(|r| needs_attention(r.deploy, r.stuck));
    let mut body = String::new();
    let _ = write!(
        body,
        "<h1>Environments</h1><form class=\"filter\" method=\"get\" action=\"/ui/envs\">\
         <input type=\"search\" id=\"env-filter\" name=\"q\" value=\"{}\" \
         placeholder=\"filter env/stage\" autocomplete=\"off\"></form>",
        esc(filter)
    );
    if !attention.is_empty() {
        body.push_str("<h2 class=\"attention\">Needs attention</h2>");
        env_table(&mut body, ctx, &attention, "attention-table");
    }
    body.push_str("<h2>All stages</h2>");
    if rest.is_empty() && attention.is_empty() {
        body.push_str(
            "<p class=\"dim\">No stages yet. Create one with <code>tt env create</code>.</p>",
        );
    } else {
        env_table(&mut body, ctx, &rest, "env-table");
    }
    page(ctx, "Environments", &body)
}

fn env_table(out: &mut String, ctx: &Ctx, rows: &[EnvRow<'_>], id: &str) {
    let _ = write!(
        out,
        "<table class=\"envs\" id=\"{id}\"><thead><tr><th>ENV/STAGE</th><th>BUILD</th>\
         <th>STATE</th><th>PROGRESS</th><th>AGE</th><th>OPERATOR</th></tr></thead><tbody>"
    );
    for r in rows {
        let env = r.env.env_name.as_deref().unwrap_or("");
        let stage = r.env.stage_name.as_deref().unwrap_or("");
        let state = r.deploy.and_then(|d| d.state);
        let paused = if r.env.env_state == Some(EnvState::Paused) {
            " <span class=\"badge s-paused\">PAUSED</span>"
        } else {
            ""
        };
        let _ = write!(
            out,
            "<tr data-name=\"{}/{}\"><td><a href=\"{}\">{}/{}</a></td><td>{}</td><td>{}{paused}</td>\
             <td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(env),
            esc(stage),
            esc(&stage_href(env, stage)),
            esc(env),
            esc(stage),
            build_label(r.build),
            state_badge(state),
            progress_bar(state, r.succeeded, r.total),
            r.deploy.and_then(|d| d.start_date).map_or("–".into(), |t| ago(ctx.now_ms, t)),
            esc(r.deploy.and_then(|d| d.operator.as_deref()).unwrap_or("–")),
        );
    }
    out.push_str("</tbody></table>");
}

/// The part of the stage page that live updates replace: the deploy summary, the legend with
/// per-state counts and the host grid. Returns `None` if the stage does not exist.
pub fn live_fragment(now_ms: i64, state: &Replicated, env_id: &EnvId) -> Option<String> {
    let env = state.env_by_id(env_id)?;
    let current = env.deploy_id.as_ref();
    let deploy = current.and_then(|d| state.deploy(d));
    let build = deploy.and_then(|d| d.build_id.as_ref()).and_then(|b| state.build(b));
    let p = state.progress(env_id);
    let dstate = deploy.and_then(|d| d.state);
    let mut out = String::with_capacity(4096);
    let _ = write!(
        out,
        "<div class=\"summary\" id=\"summary\" data-deploy-id=\"{}\" data-deploy-state=\"{}\" \
         data-deploy-type=\"{}\" data-env-state=\"{}\"><dl>",
        esc(current.map_or("", |d| d.as_str())),
        dstate.map_or("", |s| s.as_str()),
        deploy.and_then(|d| d.deploy_type).map_or("", |t| t.as_str()),
        env.env_state.map_or("NORMAL", |s| s.as_str()),
    );
    let _ = write!(out, "<dt>Build</dt><dd id=\"build\">{}</dd>", build_label(build));
    let _ = write!(
        out,
        "<dt>Deploy</dt><dd>{} <span class=\"dim\">{}</span></dd>",
        deploy.and_then(|d| d.deploy_type).map_or("–".to_string(), |t| t.to_string()),
        esc(current.map_or("", |d| d.as_str())),
    );
    let paused = if env.env_state == Some(EnvState::Paused) {
        " <span class=\"badge s-paused\">PAUSED</span>"
    } else {
        ""
    };
    let _ =
        write!(out, "<dt>State</dt><dd id=\"deploy-state\">{}{paused}</dd>", state_badge(dstate));
    let _ = write!(out, "<dt>Progress</dt><dd>{}</dd>", progress_bar(dstate, p.succeeded, p.total));
    let elapsed = deploy.and_then(|d| d.start_date).map(|start| {
        let end = if dstate.is_some_and(|s| s.is_final()) {
            deploy.and_then(|d| d.last_update_date).unwrap_or(now_ms)
        } else {
            now_ms
        };
        ago(end, start)
    });
    let _ = write!(out, "<dt>Elapsed</dt><dd>{}</dd>", elapsed.as_deref().unwrap_or("–"));
    let _ = write!(
        out,
        "<dt>Operator</dt><dd>{}</dd></dl></div>",
        esc(deploy.and_then(|d| d.operator.as_deref()).unwrap_or("–"))
    );
    let mut agents: Vec<(HostKind, &AgentBean)> =
        state.agents_of(env_id).map(|a| (classify(a, current), a)).collect();
    agents.sort_by(|(ka, a), (kb, b)| ka.cmp(kb).then(a.host_name.cmp(&b.host_name)));
    let mut counts: BTreeMap<HostKind, usize> = BTreeMap::new();
    for (k, _) in &agents {
        *counts.entry(*k).or_default() += 1;
    }
    let _ = write!(out, "<div class=\"legend\" id=\"legend\" data-hosts=\"{}\">", agents.len());
    for k in HostKind::ALL {
        let n = counts.get(&k).copied().unwrap_or(0);
        let _ = write!(
            out,
            "<span class=\"key k-{0}\" data-count-for=\"{0}\" data-count=\"{n}\"><span \
             class=\"icon\">{1}</span> {0} {n}</span>",
            k.name(),
            k.icon()
        );
    }
    out.push_str("</div><div class=\"grid\" id=\"grid\">");
    if agents.is_empty() {
        out.push_str("<p class=\"dim\">No host has pinged this stage yet.</p>");
    }
    for (k, a) in agents {
        let name = a.host_name.as_deref().or(a.host_id.as_ref().map(|h| h.as_str())).unwrap_or("?");
        let stage = a.deploy_stage.map_or("", |s| s.as_str());
        let title = format!(
            "{name} {} ({stage}, {}, {})",
            k.sentence(),
            a.state.map_or("", |s| s.as_str()),
            a.status.map_or("", |s| s.as_str())
        );
        let _ = write!(
            out,
            "<a class=\"cell k-{0}\" data-state=\"{0}\" data-stage=\"{1}\" data-agent-state=\"{2}\" \
             data-host=\"{3}\" href=\"/ui/host/{4}\" title=\"{5}\"><span class=\"icon\">{6}</span> \
             {3}</a>",
            k.name(),
            stage,
            a.state.map_or("", |s| s.as_str()),
            esc(name),
            esc(&seg(name)),
            esc(&title),
            k.icon()
        );
    }
    out.push_str("</div>");
    Some(out)
}

/// The stage page: the live part (summary + grid, refreshed over server-sent events), the
/// action buttons with their confirmation dialog, and links to history.
pub fn stage_page(
    ctx: &Ctx,
    state: &Replicated,
    env_name: &str,
    stage_name: &str,
) -> Option<String> {
    let env = state.env(env_name, stage_name)?;
    let env_id = env.id.as_ref()?;
    let live = live_fragment(ctx.now_ms, state, env_id)?;
    let href = stage_href(env_name, stage_name);
    let api = format!("/v1/envs/{}/{}", seg(env_name), seg(stage_name));
    let current = env.deploy_id.as_ref();
    let deploy = current.and_then(|d| state.deploy(d));
    let mut body = String::with_capacity(live.len() + 4096);
    let _ = write!(
        body,
        "<h1>{}/{} <a class=\"small\" href=\"{2}/history\">history</a> \
         <a class=\"small\" href=\"{2}/config\">config</a></h1>",
        esc(env_name),
        esc(stage_name),
        esc(&href)
    );
    if let Some(d) = env.description.as_deref().filter(|d| !d.is_empty()) {
        let _ = write!(body, "<p class=\"description\">{}</p>", esc(d));
    }
    // Actions. Each button names its API call; the script asks for confirmation first.
    body.push_str("<section class=\"actions\" id=\"actions\">");
    let build_name = deploy
        .and_then(|d| d.build_id.as_ref())
        .and_then(|b| state.build(b))
        .and_then(|b| b.name.clone())
        .or_else(|| env.build_name.clone());
    let builds: Vec<&BuildBean> =
        state.builds_newest_first(build_name.as_deref()).take(BUILD_CHOICES).collect();
    body.push_str("<select id=\"build-select\" aria-label=\"build to deploy\">");
    for b in &builds {
        let id = b.id.as_ref().map_or("", |i| i.as_str());
        let _ = write!(
            body,
            "<option value=\"{}\">{} {}</option>",
            esc(id),
            build_label(Some(b)),
            esc(id)
        );
    }
    body.push_str("</select>");
    action_button(
        &mut body,
        "deploy",
        "Deploy",
        &format!("{api}/deploys?buildId={{v}}"),
        Some("build-select"),
        &format!("Deploy build {{v}} to {env_name}/{stage_name}?"),
    );
    action_button(
        &mut body,
        "rollback",
        "Rollback",
        &format!("{api}/deploys/current/actions?actionType=ROLLBACK"),
        None,
        &format!("Roll {env_name}/{stage_name} back to its last successful deploy?"),
    );
    let paused = env.env_state == Some(EnvState::Paused);
    let (verb, label) = if paused { ("RESUME", "Resume") } else { ("PAUSE", "Pause") };
    action_button(
        &mut body,
        &verb.to_lowercase(),
        label,
        &format!("{api}/deploys/current/actions?actionType={verb}"),
        None,
        &format!("{label} deploys on {env_name}/{stage_name}?"),
    );
    action_button(
        &mut body,
        "restart",
        "Restart",
        &format!("{api}/deploys/current/actions?actionType=RESTART"),
        None,
        &format!("Restart the current build on every host of {env_name}/{stage_name}?"),
    );
    let others: Vec<&str> = state
        .envs()
        .filter(|e| e.env_name.as_deref() == Some(env_name))
        .filter_map(|e| e.stage_name.as_deref())
        .filter(|s| *s != stage_name)
        .collect();
    if let (Some(cur), false) = (current, others.is_empty()) {
        body.push_str("<select id=\"promote-select\" aria-label=\"stage to promote to\">");
        for s in &others {
            let _ = write!(body, "<option value=\"{}\">{}</option>", esc(&seg(s)), esc(s));
        }
        body.push_str("</select>");
        action_button(
            &mut body,
            "promote",
            "Promote",
            &format!(
                "/v1/envs/{}/{{v}}/deploys/current/actions?actionType=PROMOTE&fromDeployId={}",
                seg(env_name),
                seg(cur.as_str())
            ),
            Some("promote-select"),
            &format!("Promote deploy {cur} of {env_name}/{stage_name} to stage {{v}}?"),
        );
    }
    body.push_str(
        "<label class=\"check\"><input type=\"checkbox\" id=\"failed-only\"> failed only</label>\
         </section><div id=\"action-result\" role=\"status\"></div>",
    );
    let _ =
        write!(body, "<section id=\"live\" data-events=\"{}/events\">{live}</section>", esc(&href));
    body.push_str(CONFIRM_DIALOG);
    Some(page(ctx, &format!("{env_name}/{stage_name}"), &body))
}

const CONFIRM_DIALOG: &str = "<dialog id=\"confirm\"><p id=\"confirm-text\"></p><form \
     method=\"dialog\"><button value=\"no\" id=\"confirm-no\">Cancel</button> <button \
     value=\"yes\" id=\"confirm-yes\" class=\"primary\">Confirm</button></form></dialog>";

/// A button the script turns into a confirmed API call: `{v}` in the URL and the question is
/// replaced by the value of the `param` select.
fn action_button(
    out: &mut String,
    id: &str,
    label: &str,
    url: &str,
    param: Option<&str>,
    question: &str,
) {
    let _ = write!(
        out,
        "<button type=\"button\" id=\"btn-{id}\" data-action=\"POST\" data-url=\"{}\" \
         data-confirm=\"{}\"{}>{label}</button>",
        esc(url),
        esc(question),
        param.map_or(String::new(), |p| format!(" data-param=\"{p}\"")),
    );
}

/// A stage's deploys, newest first, each SUCCEEDED one with "roll back to this".
pub fn history_page(
    ctx: &Ctx,
    state: &Replicated,
    env_name: &str,
    stage_name: &str,
) -> Option<String> {
    let env = state.env(env_name, stage_name)?;
    let env_id = env.id.as_ref()?;
    let api = format!("/v1/envs/{}/{}", seg(env_name), seg(stage_name));
    let mut body = String::new();
    let _ = write!(
        body,
        "<h1><a href=\"{}\">{}/{}</a> · history</h1><div id=\"action-result\" role=\"status\">\
         </div><table class=\"history\" id=\"history\"><thead><tr><th>DEPLOY</th><th>BUILD</th>\
         <th>TYPE</th><th>STATE</th><th>STARTED</th><th>OPERATOR</th><th>HOSTS</th><th></th>\
         </tr></thead><tbody>",
        esc(&stage_href(env_name, stage_name)),
        esc(env_name),
        esc(stage_name)
    );
    for d in state.deploys_of(env_id).rev().take(HISTORY_ROWS) {
        let id = d.id.as_ref().map_or("", |i| i.as_str());
        let build = d.build_id.as_ref().and_then(|b| state.build(b));
        let is_current = d.id.as_ref() == env.deploy_id.as_ref();
        let _ = write!(
            body,
            "<tr data-deploy-id=\"{}\"{}><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td>\
             <td>{}</td><td>{}/{}</td><td>",
            esc(id),
            if is_current { " class=\"current\"" } else { "" },
            esc(id),
            build_label(build),
            d.deploy_type.map_or("", |t| t.as_str()),
            state_badge(d.state),
            d.start_date.map_or("–".into(), |t| format!("{} ago", ago(ctx.now_ms, t))),
            esc(d.operator.as_deref().unwrap_or("–")),
            d.success_total.unwrap_or(0),
            d.total.unwrap_or(0),
        );
        let current_build = env.deploy_id.as_ref().and_then(|c| state.deploy(c)?.build_id.as_ref());
        if let (Some(this), Some(current)) = (d.build_id.as_ref(), current_build)
            && this != current
        {
            let _ = write!(
                body,
                "<a class=\"small\" href=\"/ui/compare?a={}&amp;b={}\">compare with current</a> ",
                seg(this.as_str()),
                seg(current.as_str())
            );
        }
        if !is_current && d.state == Some(DeployState::Succeeded) {
            action_button(
                &mut body,
                &format!("rollback-{}", seg(id)),
                "roll back to this",
                &format!(
                    "{api}/deploys/current/actions?actionType=ROLLBACK&toDeployId={}",
                    seg(id)
                ),
                None,
                &format!("Roll {env_name}/{stage_name} back to deploy {id}?"),
            );
        }
        body.push_str("</td></tr>");
    }
    body.push_str("</tbody></table>");
    body.push_str(CONFIRM_DIALOG);
    Some(page(ctx, &format!("{env_name}/{stage_name} history"), &body))
}

/// One host across every stage it has a row on: stage, deploy stage, state, status and the
/// last error output it reported.
pub fn host_page(ctx: &Ctx, state: &Replicated, host: &str) -> Option<String> {
    let mut rows = Vec::new();
    for env in state.envs() {
        let Some(env_id) = env.id.as_ref() else { continue };
        for a in state.agents_of(env_id) {
            if a.host_name.as_deref() == Some(host)
                || a.host_id.as_ref().map(|h| h.as_str()) == Some(host)
            {
                rows.push((env, a, state.agent_error(env_id, host)));
            }
        }
    }
    if rows.is_empty() {
        return None;
    }
    let mut body = String::new();
    let _ = write!(body, "<h1>Host {}</h1>", esc(host));
    for (env, a, error) in rows {
        let env_name = env.env_name.as_deref().unwrap_or("");
        let stage = env.stage_name.as_deref().unwrap_or("");
        let kind = classify(a, env.deploy_id.as_ref());
        let _ = write!(
            body,
            "<section class=\"host-stage\" data-state=\"{0}\"><h2><a href=\"{1}\">{2}/{3}</a> \
             <span class=\"key k-{0}\"><span class=\"icon\">{4}</span> {0}</span></h2><dl>\
             <dt>Deploy</dt><dd>{5}</dd><dt>Stage</dt><dd>{6}</dd><dt>State</dt><dd>{7}</dd>\
             <dt>Status</dt><dd>{8}</dd><dt>Failures</dt><dd>{9}</dd><dt>Updated</dt><dd>{10}</dd>\
             </dl>",
            kind.name(),
            esc(&stage_href(env_name, stage)),
            esc(env_name),
            esc(stage),
            kind.icon(),
            esc(a.deploy_id.as_ref().map_or("–", |d| d.as_str())),
            a.deploy_stage.map_or("–", |s| s.as_str()),
            a.state.map_or("–", |s| s.as_str()),
            a.status.map_or("–", |s| s.as_str()),
            a.fail_count.unwrap_or(0),
            a.last_update_date.map_or("–".into(), |t| format!("{} ago", ago(ctx.now_ms, t))),
        );
        if let Some(t) =
            env.id.as_ref().zip(a.host_id.as_ref()).and_then(|(e, h)| state.timeline(e, h))
        {
            body.push_str(&timeline_html(ctx.now_ms, t));
        }
        match error {
            Some(e) => {
                let _ =
                    write!(body, "<h3>Last error output</h3><pre class=\"error\">{}</pre>", esc(e));
            }
            None => body.push_str("<p class=\"dim\">No error reported.</p>"),
        }
        body.push_str("</section>");
    }
    Some(page(ctx, &format!("host {host}"), &body))
}

/// A host's steps on its current deploy with how long each took (the last one until now if
/// it is not final), and where it got the build from.
fn timeline_html(now_ms: i64, t: &crate::state::timeline::HostTimeline) -> String {
    let mut out = String::from(
        "<h3>Steps of this deploy</h3><table class=\"timeline\"><thead><tr><th>STEP</th><th>BEGAN</th><th>TOOK</th></tr></thead><tbody>",
    );
    for (i, (stage, at)) in t.steps.iter().enumerate() {
        let took = match t.steps.get(i + 1) {
            Some((_, next)) => ago(*next, *at),
            None if matches!(stage, DeployStage::ServingBuild | DeployStage::Stopped) => "–".into(),
            None => format!("{} so far", ago(now_ms, *at)),
        };
        let _ = write!(
            out,
            "<tr data-step=\"{0}\"><td>{0}</td><td>{1} ago</td><td>{2}</td></tr>",
            stage.as_str(),
            ago(now_ms, *at),
            took
        );
    }
    out.push_str("</tbody></table>");
    if let Some(src) = &t.download_source {
        let _ = write!(out, "<p class=\"download-source\">Build from: {}</p>", esc(src));
    }
    out
}

/// The cluster page: members with their roles, the leader, the term and this node's indices;
/// then `swarm`, the swarm section if this node runs an origin.
pub fn cluster_page(ctx: &Ctx, s: &ClusterStatus, swarm: Option<&str>) -> String {
    let mut body = String::new();
    let _ = write!(
        body,
        "<h1>Cluster</h1><dl class=\"cluster\" id=\"cluster\" data-leader=\"{}\"><dt>This node</dt>\
         <dd>{} ({})</dd><dt>Leader</dt><dd>{}</dd><dt>Term</dt><dd>{}</dd><dt>Commit index</dt>\
         <dd>{}</dd><dt>Applied index</dt><dd>{}</dd><dt>Last log index</dt><dd>{}</dd>\
         <dt>Snapshot index</dt><dd>{}</dd></dl>",
        s.leader_id.map_or(String::new(), |l| l.to_string()),
        s.node_id,
        esc(&s.state),
        s.leader_id.map_or("none known".into(), |l| l.to_string()),
        s.term,
        s.commit_index,
        s.applied_index,
        s.last_log_index,
        s.snapshot_index.map_or("–".into(), |i| i.to_string()),
    );
    body.push_str(
        "<table class=\"members\" id=\"members\"><thead><tr><th>NODE</th><th>ROLE</th>\
         <th>HTTP</th><th>RAFT</th><th>AGENTS</th><th>MATCHED</th></tr></thead><tbody>",
    );
    for m in &s.members {
        let _ = write!(
            body,
            "<tr data-role=\"{1}\"><td>{0}</td><td>{1}</td><td><a href=\"http://{2}/ui/cluster\">\
             {2}</a></td><td>{3}</td><td>{4}</td><td>{5}</td></tr>",
            m.id,
            esc(&m.role),
            esc(&m.http_addr),
            esc(&m.raft_addr),
            esc(&m.agent_addr),
            m.matched_index.map_or("–".into(), |i| i.to_string()),
        );
    }
    body.push_str("</tbody></table>");
    body.push_str(swarm.unwrap_or(""));
    page(ctx, "Cluster", &body)
}

/// The login form; `next` is where to go afterwards, `error` why the last try failed.
pub fn login_page(ctx: &Ctx, next: &str, error: Option<&str>) -> String {
    let mut body = String::from("<h1>Log in</h1>");
    if let Some(e) = error {
        let _ = write!(body, "<p class=\"error\" id=\"login-error\">{}</p>", esc(e));
    }
    if !ctx.tokens_mode {
        body.push_str(
            "<p class=\"dim\">This cluster runs without authentication (<code>auth = \
             \"anonymous\"</code>): no token is needed.</p>",
        );
    }
    let _ = write!(
        body,
        "<form method=\"post\" action=\"/ui/login\" class=\"login\"><input type=\"hidden\" \
         name=\"next\" value=\"{}\"><label>Token <input type=\"password\" id=\"token\" \
         name=\"token\" autocomplete=\"off\" required></label> <button type=\"submit\" \
         id=\"login-submit\" class=\"primary\">Log in</button></form><p class=\"dim\">A user or \
         script token (<code>tt token create</code>), or the cluster's admin token. It is kept in \
         an HttpOnly cookie for this site only.</p>",
        esc(next)
    );
    page(ctx, "Log in", &body)
}

/// An error page (404, 503) that names what was asked for.
pub fn error_page(ctx: &Ctx, status: u16, message: &str) -> String {
    let body = format!(
        "<h1>{status}</h1><p class=\"error\" id=\"error\">{}</p><p><a href=\"/ui/envs\">All \
         environments</a></p>",
        esc(message)
    );
    page(ctx, &status.to_string(), &body)
}

#[cfg(test)]
mod tests {
    use proto::enums::AgentStatus;

    use super::*;

    #[test]
    fn esc_escapes_markup_and_quotes() {
        assert_eq!(
            esc("<a href=\"x\">'&'</a>"),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;"
        );
        assert!(matches!(esc("plain-name_1"), Cow::Borrowed(_)));
        assert_eq!(esc("a\r\nb"), "a&#13;\nb");
    }

    #[test]
    fn seg_percent_encodes_everything_but_unreserved() {
        assert_eq!(seg("svc-1_a.b~"), "svc-1_a.b~");
        assert_eq!(seg("a/b c<"), "a%2Fb%20c%3C");
    }

    #[test]
    fn ago_picks_the_largest_unit() {
        assert_eq!(ago(10_000, 0), "10s");
        assert_eq!(ago(125_000, 0), "2m");
        assert_eq!(ago(7_200_000, 0), "2h");
        assert_eq!(ago(3 * 86_400_000, 0), "3d");
        assert_eq!(ago(0, 5_000), "0s", "a clock behind the record shows 0, not a negative");
    }

    fn row(deploy: &str, stage: DeployStage, state: AgentState, status: AgentStatus) -> AgentBean {
        AgentBean {
            deploy_id: Some(DeployId::new(deploy)),
            deploy_stage: Some(stage),
            state: Some(state),
            status: Some(status),
            ..Default::default()
        }
    }

    #[test]
    fn classify_follows_teletraan_button_semantics() {
        let cur = DeployId::new("d2");
        let cur = Some(&cur);
        use AgentState as S;
        use AgentStatus as St;
        use DeployStage as D;
        let cases = [
            (row("d2", D::ServingBuild, S::Normal, St::Succeeded), HostKind::Done),
            (row("d2", D::Downloading, S::Normal, St::Unknown), HostKind::Deploying),
            (row("d1", D::ServingBuild, S::Normal, St::Succeeded), HostKind::Pending),
            (row("d2", D::Staging, S::PausedBySystem, St::ScriptFailed), HostKind::Failed),
            (row("d2", D::Staging, S::Normal, St::TooManyRetry), HostKind::Failed),
            (row("d2", D::Staging, S::Unreachable, St::Unknown), HostKind::Unreachable),
            (row("d2", D::Staging, S::PausedByUser, St::Unknown), HostKind::Paused),
            (row("d2", D::Stopped, S::Normal, St::Succeeded), HostKind::Stopped),
            (row("d2", D::Staging, S::Stop, St::Unknown), HostKind::Stopped),
        ];
        for (a, want) in cases {
            assert_eq!(classify(&a, cur), want, "{a:?}");
        }
        assert_eq!(
            classify(&row("d2", D::ServingBuild, S::Normal, St::Succeeded), None),
            HostKind::Pending,
            "no current deploy: nothing is done"
        );
    }

    #[test]
    fn every_kind_has_a_distinct_icon_and_name() {
        let icons: std::collections::BTreeSet<_> = HostKind::ALL.iter().map(|k| k.icon()).collect();
        let names: std::collections::BTreeSet<_> = HostKind::ALL.iter().map(|k| k.name()).collect();
        assert_eq!(icons.len(), HostKind::ALL.len());
        assert_eq!(names.len(), HostKind::ALL.len());
    }

    #[test]
    fn failing_aborted_and_stuck_need_attention() {
        let d = |s| DeployBean { state: Some(s), ..Default::default() };
        assert!(needs_attention(Some(&d(DeployState::Failing)), 0));
        assert!(needs_attention(Some(&d(DeployState::Aborted)), 0));
        assert!(needs_attention(Some(&d(DeployState::Running)), 2));
        assert!(!needs_attention(Some(&d(DeployState::Running)), 0));
        assert!(!needs_attention(None, 0));
    }

    #[test]
    fn the_shell_escapes_the_principal_and_banner() {
        let ctx = Ctx {
            who: Some("<b>eve</b>".into()),
            banner: Some("no leader <now>".into()),
            ..Default::default()
        };
        let html = page(&ctx, "t<", "");
        assert!(html.contains("&lt;b&gt;eve&lt;/b&gt;"));
        assert!(html.contains("no leader &lt;now&gt;"));
        assert!(html.contains("<title>t&lt; · tt</title>"));
        assert!(!html.contains("<b>eve"));
    }

    #[test]
    fn the_error_page_escapes_the_message() {
        let html = error_page(&Ctx::default(), 404, "stage <script>x</script>/p not found");
        assert!(html.contains("&lt;script&gt;"));
        assert!(!html.contains("<script>x"));
    }
}
