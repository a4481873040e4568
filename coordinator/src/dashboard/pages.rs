//! More dashboard pages, pure like [`super::render`]: a stage's configuration with its
//! history, two builds side by side, and the swarm figures of the cluster page.

use std::fmt::Write as _;

use proto::beans::BuildBean;
use proto::command::EnvConfigKind;
use proto::ids::BuildId;

use super::render::{Ctx, ago, esc, page, seg};
use crate::state::State as Replicated;

/// Most config history entries shown on a stage's config page.
pub const CONFIG_HISTORY_ROWS: usize = 30;
/// Most deploys of each build shown on the compare page.
pub const COMPARE_DEPLOY_ROWS: usize = 20;
/// Longest config change body shown before it is cut (the full text is in the API).
pub const CHANGE_PREVIEW_CHARS: usize = 300;

fn dl(out: &mut String, id: &str, rows: &[(&str, String)]) {
    let _ = write!(out, "<dl class=\"config\" id=\"{id}\">");
    for (k, v) in rows {
        let _ = write!(out, "<dt>{}</dt><dd>{}</dd>", esc(k), esc(v));
    }
    out.push_str("</dl>");
}

fn or_dash(v: Option<impl ToString>) -> String {
    v.map_or_else(|| "–".to_string(), |v| v.to_string())
}

fn map_table(out: &mut String, id: &str, map: &std::collections::BTreeMap<String, String>) {
    if map.is_empty() {
        let _ = write!(out, "<p class=\"dim\" id=\"{id}\">none</p>");
        return;
    }
    let _ =
        write!(out, "<table id=\"{id}\"><thead><tr><th>KEY</th><th>VALUE</th></tr></thead><tbody>");
    for (k, v) in map {
        let _ = write!(out, "<tr><td>{}</td><td>{}</td></tr>", esc(k), esc(v));
    }
    out.push_str("</tbody></table>");
}

/// A stage's configuration: settings, capacity, script and agent configs, promotion, webhooks
/// (urls and header names only: header values and bodies carry credentials), schedule,
/// constraint, and the newest config changes.
pub fn config_page(
    ctx: &Ctx,
    state: &Replicated,
    env_name: &str,
    stage_name: &str,
) -> Option<String> {
    let env = state.env(env_name, stage_name)?;
    let env_id = env.id.as_ref()?;
    let mut body = String::new();
    let _ = write!(
        body,
        "<h1><a href=\"/ui/env/{}/{}\">{}/{}</a> · config</h1>",
        seg(env_name),
        seg(stage_name),
        esc(env_name),
        esc(stage_name)
    );
    body.push_str("<h2>Settings</h2>");
    let parallel = match (env.max_parallel, env.max_parallel_pct) {
        (_, Some(pct)) if pct > 0 => format!("{pct}% of hosts"),
        (Some(n), _) => format!("{n} hosts"),
        _ => "–".into(),
    };
    dl(
        &mut body,
        "settings",
        &[
            ("Build name", or_dash(env.build_name.as_deref())),
            ("Stage type", or_dash(env.stage_type)),
            ("State", format!("{} / {}", or_dash(env.env_state), or_dash(env.state))),
            ("Parallelism", parallel),
            (
                "Success threshold",
                env.success_threshold
                    .map_or("–".into(), |t| format!("{:.2}%", f64::from(t) / 100.0)),
            ),
            ("Stuck threshold", env.stuck_threshold.map_or("–".into(), |t| format!("{t} s"))),
            ("Acceptance", or_dash(env.acceptance_type)),
            (
                "Retention",
                format!(
                    "{} deploys, {} days",
                    or_dash(env.max_deploy_num),
                    or_dash(env.max_deploy_day)
                ),
            ),
            (
                "Last change",
                format!(
                    "{} by {}",
                    env.last_update.map_or("–".into(), |t| format!("{} ago", ago(ctx.now_ms, t))),
                    env.last_operator.as_deref().unwrap_or("–")
                ),
            ),
        ],
    );
    let capacity = state.capacity(env_id);
    body.push_str("<h2>Capacity</h2>");
    let list = |names: Vec<&String>| {
        if names.is_empty() {
            "–".to_string()
        } else {
            names.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
        }
    };
    dl(
        &mut body,
        "capacity",
        &[
            ("Groups", list(capacity.groups.iter().collect())),
            ("Hosts", list(capacity.hosts.iter().collect())),
        ],
    );
    body.push_str("<h2>Script configs</h2>");
    map_table(&mut body, "script-configs", &state.env_config(env_id, EnvConfigKind::Script));
    body.push_str("<h2>Agent configs</h2>");
    map_table(&mut body, "agent-configs", &state.env_config(env_id, EnvConfigKind::Agent));
    body.push_str("<h2>Promotion</h2>");
    match state.promote(env_id) {
        None => body.push_str("<p class=\"dim\" id=\"promote\">manual (no promote config)</p>"),
        Some(p) => dl(
            &mut body,
            "promote",
            &[
                ("Type", or_dash(p.promote_type)),
                ("From", or_dash(p.pred_stage.as_deref())),
                ("Delay", p.delay.map_or("–".into(), |d| format!("{d} min"))),
                ("Queue size", or_dash(p.queue_size)),
                ("Schedule", or_dash(p.schedule.as_deref())),
                ("Fail policy", or_dash(p.fail_policy)),
                ("Disable policy", or_dash(p.disable_policy)),
            ],
        ),
    }
    body.push_str("<h2>Webhooks</h2>");
    let hooks = state.web_hooks(env_id);
    if hooks.pre_deploy_hooks.is_empty() && hooks.post_deploy_hooks.is_empty() {
        body.push_str("<p class=\"dim\" id=\"webhooks\">none</p>");
    } else {
        body.push_str(
            "<table id=\"webhooks\"><thead><tr><th>WHEN</th><th>METHOD</th><th>URL</th>\
             <th>HEADERS</th></tr></thead><tbody>",
        );
        let lists = [("before", &hooks.pre_deploy_hooks), ("after", &hooks.post_deploy_hooks)];
        for (when, list) in lists {
            for h in list {
                // Stored hooks passed `render`'s checks, so their headers parse.
                let names: Vec<String> =
                    crate::webhooks::parse_headers(h.headers.as_deref().unwrap_or(""))
                        .unwrap_or_default()
                        .into_iter()
                        .map(|(name, _)| name)
                        .collect();
                let _ = write!(
                    body,
                    "<tr><td>{when}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                    esc(h.method.as_deref().unwrap_or("POST")),
                    esc(h.url.as_deref().unwrap_or("")),
                    esc(&names.join(", "))
                );
            }
        }
        body.push_str("</tbody></table>");
    }
    body.push_str("<h2>Schedule and constraint</h2>");
    let schedule = state.schedule(env_id).map(|s| {
        format!(
            "{} sessions: hosts {}, cooldowns {} min ({} at session {})",
            or_dash(s.total_sessions),
            s.host_numbers.as_deref().unwrap_or("–"),
            s.cooldown_times.as_deref().unwrap_or("–"),
            or_dash(s.state),
            or_dash(s.current_session)
        )
    });
    let constraint = state.constraint(env_id).map(|c| {
        format!(
            "at most {} per {} ({}, {})",
            or_dash(c.max_parallel),
            c.constraint_key.as_deref().unwrap_or("–"),
            or_dash(c.constraint_type),
            or_dash(c.state)
        )
    });
    dl(
        &mut body,
        "schedule",
        &[
            ("Schedule", schedule.unwrap_or_else(|| "none".into())),
            ("Constraint", constraint.unwrap_or_else(|| "none".into())),
        ],
    );
    body.push_str(
        "<h2>History</h2><table id=\"config-history\"><thead><tr><th>WHEN</th><th>OPERATOR</th>\
         <th>WHAT</th><th>CHANGE</th></tr></thead><tbody>",
    );
    for h in state.history_of(env_id).take(CONFIG_HISTORY_ROWS) {
        let change = h.config_change.as_deref().unwrap_or("");
        let mut preview: String = change.chars().take(CHANGE_PREVIEW_CHARS).collect();
        if preview.len() < change.len() {
            preview.push('…');
        }
        let _ = write!(
            body,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td><code>{}</code></td></tr>",
            h.create_time.map_or("–".into(), |t| format!("{} ago", ago(ctx.now_ms, t))),
            esc(h.operator.as_deref().unwrap_or("–")),
            esc(h.change_type.as_deref().unwrap_or("–")),
            esc(&preview)
        );
    }
    body.push_str("</tbody></table>");
    Some(page(ctx, &format!("{env_name}/{stage_name} config"), &body))
}

fn build_rows(b: &BuildBean) -> Vec<(&'static str, String)> {
    vec![
        ("Id", or_dash(b.id.as_ref())),
        ("Name", or_dash(b.name.as_deref())),
        ("Branch", or_dash(b.branch.as_deref())),
        ("Commit", or_dash(b.commit.as_deref())),
        ("Repo", or_dash(b.repo.as_deref())),
        ("Committed", or_dash(b.commit_date)),
        ("Published", or_dash(b.publish_date)),
        ("Artifact", or_dash(b.artifact_url.as_deref())),
        ("Size (bytes)", or_dash(b.artifact_size)),
        ("BLAKE3", or_dash(b.artifact_blake3.as_deref())),
        ("Publisher", or_dash(b.publisher.as_deref())),
    ]
}

/// Two builds side by side (differing fields marked), each with its tag and where it was
/// deployed. `None` when either build does not exist.
pub fn compare_page(ctx: &Ctx, state: &Replicated, a: &str, b: &str) -> Option<String> {
    let ba = state.build(&BuildId::new(a))?;
    let bb = state.build(&BuildId::new(b))?;
    let mut body = String::from(
        "<h1>Compare builds</h1><table class=\"compare\" id=\"compare\"><thead><tr><th></th>\
         <th>A</th><th>B</th></tr></thead><tbody>",
    );
    let (ra, rb) = (build_rows(ba), build_rows(bb));
    for ((field, va), (_, vb)) in ra.iter().zip(&rb) {
        let differs = va != vb;
        let _ = write!(
            body,
            "<tr data-field=\"{0}\"{1}><th>{0}</th><td>{2}</td><td>{3}</td></tr>",
            esc(field),
            if differs { " class=\"differs\" data-differs=\"true\"" } else { "" },
            esc(va),
            esc(vb)
        );
    }
    let tag = |b: &BuildBean| {
        state.effective_tag(b).map_or("–".to_string(), |t| {
            format!(
                "{}{}",
                or_dash(t.value),
                t.comments.as_deref().map_or(String::new(), |c| format!(": {c}"))
            )
        })
    };
    let _ = write!(
        body,
        "<tr data-field=\"Tag\"><th>Tag</th><td>{}</td><td>{}</td></tr></tbody></table>",
        esc(&tag(ba)),
        esc(&tag(bb))
    );
    for (label, build) in [("A", ba), ("B", bb)] {
        let _ = write!(
            body,
            "<h2>Deploys of {label}</h2><table id=\"deploys-{}\"><thead><tr><th>STAGE</th>\
             <th>DEPLOY</th><th>STATE</th><th>STARTED</th></tr></thead><tbody>",
            label.to_lowercase()
        );
        let id = build.id.as_ref().expect("stored builds have ids");
        let mut deploys: Vec<_> = state.deploys_of_build(id).collect();
        deploys.sort_by_key(|d| std::cmp::Reverse(d.start_date));
        for d in deploys.into_iter().take(COMPARE_DEPLOY_ROWS) {
            let stage = d
                .env_id
                .as_ref()
                .and_then(|e| state.env_by_id(e))
                .map(|e| {
                    format!(
                        "{}/{}",
                        e.env_name.as_deref().unwrap_or(""),
                        e.stage_name.as_deref().unwrap_or("")
                    )
                })
                .unwrap_or_else(|| "–".into());
            let _ = write!(
                body,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                esc(&stage),
                esc(d.id.as_ref().map_or("", |i| i.as_str())),
                d.state.map_or("–", |s| s.as_str()),
                d.start_date.map_or("–".into(), |t| format!("{} ago", ago(ctx.now_ms, t)))
            );
        }
        body.push_str("</tbody></table>");
    }
    Some(page(ctx, "Compare builds", &body))
}

/// The swarm as one node sees it (its origin's counters; the tracker's view on the leader).
#[derive(Debug, Clone, Default)]
pub struct SwarmFigures {
    pub origin_sent_bytes: u64,
    pub pieces_served: u64,
    pub declined_as_seeded: u64,
    pub busy_answers: u64,
    /// Per blob: hash, the builds that name it, its size, seeders and fetching hosts.
    pub blobs: Vec<SwarmBlob>,
}

#[derive(Debug, Clone, Default)]
pub struct SwarmBlob {
    pub blake3: String,
    pub builds: Vec<String>,
    pub size: Option<u64>,
    pub seeders: usize,
    pub fetching: usize,
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / 1_048_576.0)
}

/// The cluster page's swarm section: what this node's origin sent, and, per tracked blob, how
/// many hosts hold it — bytes held by hosts against bytes the origin sent is how much the
/// swarm carried.
pub fn swarm_section(f: &SwarmFigures, is_leader: bool) -> String {
    let held: u64 = f.blobs.iter().map(|b| b.size.unwrap_or(0) * b.seeders as u64).sum();
    let mut out = String::from("<h2>Swarm</h2>");
    dl(
        &mut out,
        "swarm",
        &[
            ("Origin sent (this node)", mib(f.origin_sent_bytes)),
            ("Pieces served", f.pieces_served.to_string()),
            ("Declined as seeded", f.declined_as_seeded.to_string()),
            ("Busy answers", f.busy_answers.to_string()),
            ("Held by hosts (tracked)", mib(held)),
        ],
    );
    if !is_leader {
        out.push_str(
            "<p class=\"dim\">The tracker lives on the leader; its page lists the blobs.</p>",
        );
        return out;
    }
    out.push_str(
        "<table id=\"swarm-blobs\"><thead><tr><th>BLOB</th><th>BUILDS</th><th>SIZE</th>\
         <th>SEEDERS</th><th>FETCHING</th></tr></thead><tbody>",
    );
    for b in &f.blobs {
        let _ = write!(
            out,
            "<tr><td title=\"{0}\">{1}</td><td>{2}</td><td>{3}</td><td>{4}</td><td>{5}</td></tr>",
            esc(&b.blake3),
            esc(b.blake3.get(..12).unwrap_or(&b.blake3)),
            esc(&b.builds.join(", ")),
            b.size.map_or("–".into(), mib),
            b.seeders,
            b.fetching
        );
    }
    out.push_str("</tbody></table>");
    out
}

#[cfg(test)]
mod tests {
    use proto::beans::{DeployBean, EnvWebHookBean, EnvironBean, WebHookBean};
    use proto::command::Op;
    use proto::ids::{DeployId, EnvId};

    use super::*;

    /// Stage `svc/prod` with configs, a hook whose header carries a secret, and builds `b1`
    /// (deployed) and `b2`.
    fn state() -> Replicated {
        let mut s = Replicated::default();
        let id = EnvId::new("e1");
        let mut env = EnvironBean {
            id: Some(id.clone()),
            env_name: Some("svc".into()),
            stage_name: Some("prod".into()),
            max_parallel: Some(3),
            ..Default::default()
        };
        env.normalize_request().unwrap();
        env.fill_create_defaults();
        s.apply(0, Op::CreateEnv { env }).unwrap();
        let hosts = vec!["web-1".into()];
        s.apply(0, Op::SetCapacity { env_id: id.clone(), hosts, groups: vec!["g<1>".into()] })
            .unwrap();
        let values = [("PORT".to_string(), "8080".to_string())].into();
        let op = Op::SetEnvConfig {
            env_id: id.clone(),
            kind: EnvConfigKind::Script,
            values,
            operator: "ann".into(),
        };
        s.apply(1, op).unwrap();
        let hooks = EnvWebHookBean {
            pre_deploy_hooks: vec![WebHookBean {
                url: Some("https://hooks.example/pre".into()),
                headers: Some("Authorization: Bearer s3cret; X-Team: web".into()),
                body: Some("token=hunter2".into()),
                ..Default::default()
            }],
            ..Default::default()
        };
        s.apply(2, Op::SetWebHooks { env_id: id.clone(), hooks, operator: "bob".into() }).unwrap();
        for (b, commit) in [("b1", "aaaaaaa111"), ("b2", "bbbbbbb222")] {
            let build = BuildBean {
                id: Some(BuildId::new(b)),
                name: Some("svc".into()),
                commit: Some(commit.into()),
                branch: Some("main".into()),
                artifact_url: Some(format!("file:///{b}")),
                ..Default::default()
            };
            s.apply(3, Op::PublishBuild { build }).unwrap();
        }
        let deploy = DeployBean {
            id: Some(DeployId::new("d1")),
            build_id: Some(BuildId::new("b1")),
            ..Default::default()
        };
        s.apply(4, Op::CreateDeploy { env_id: id, deploy, expected: None }).unwrap();
        s
    }

    fn ctx() -> Ctx {
        Ctx { now_ms: 60_000, ..Default::default() }
    }

    #[test]
    fn the_config_page_shows_every_section_escaped_and_no_hook_secrets() {
        let html = config_page(&ctx(), &state(), "svc", "prod").unwrap();
        for want in [
            "id=\"settings\"",
            "3 hosts",
            "g&lt;1&gt;",
            "web-1",
            "PORT",
            "8080",
            "manual (no promote config)",
            "https://hooks.example/pre",
            "Authorization, X-Team",
            "Env Webhook Config",
            "Env Script Config",
            "bob",
        ] {
            assert!(html.contains(want), "{want} missing");
        }
        assert!(!html.contains("g<1>"), "capacity names are escaped");
        // The history preview carries the stored change; the hooks table never shows values.
        let table =
            &html[html.find("id=\"webhooks\"").unwrap()..html.find("<h2>Schedule").unwrap()];
        assert!(!table.contains("s3cret") && !table.contains("hunter2"), "{table}");
        assert!(config_page(&ctx(), &state(), "svc", "nope").is_none());
    }

    #[test]
    fn the_compare_page_marks_differences_and_lists_deploys() {
        let s = state();
        let html = compare_page(&ctx(), &s, "b1", "b2").unwrap();
        assert!(html.contains("data-field=\"Commit\" class=\"differs\""), "{html}");
        assert!(html.contains("data-field=\"Branch\"><th>"), "same branch is not marked");
        let a =
            &html[html.find("id=\"deploys-a\"").unwrap()..html.find("id=\"deploys-b\"").unwrap()];
        assert!(a.contains("svc/prod") && a.contains("d1"), "{a}");
        let b = &html[html.find("id=\"deploys-b\"").unwrap()..];
        assert!(!b.contains("d1"), "b2 was never deployed");
        assert!(compare_page(&ctx(), &s, "b1", "nope").is_none());
    }

    #[test]
    fn the_swarm_section_sums_bytes_held_by_hosts() {
        let f = SwarmFigures {
            origin_sent_bytes: 2 * 1_048_576,
            pieces_served: 8,
            blobs: vec![SwarmBlob {
                blake3: "ab".repeat(32),
                builds: vec!["b1".into()],
                size: Some(1_048_576),
                seeders: 10,
                fetching: 2,
            }],
            ..Default::default()
        };
        let html = swarm_section(&f, true);
        assert!(html.contains("2.0 MiB") && html.contains("10.0 MiB"), "{html}");
        assert!(html.contains("id=\"swarm-blobs\"") && html.contains(">10<"), "{html}");
        assert!(!swarm_section(&f, false).contains("swarm-blobs"), "followers have no tracker");
    }
}
