//! `tt env config ENV/STAGE [--set field=value ...] [--history]`: a stage's whole config as an
//! operator wants to see it (settings, capacity, script and agent configs, promote config,
//! webhooks), changes to its settings through `PUT /v1/envs/{e}/{s}`, and its config history.

use anyhow::{Context, bail};
use clap::Args;
use ops::client::{Client, ClientError, table};
use serde_json::{Map, Value, json};

use crate::{Output, print_json, s, split_stage};

/// Show a stage's config, change its settings with `--set`, or show its config history.
#[derive(Args)]
pub struct EnvConfigArgs {
    /// ENV/STAGE, e.g. myservice/prod.
    pub stage: String,
    /// Change a setting: FIELD=VALUE (JSON names, e.g. maxParallel=3, successThreshold=9000,
    /// acceptanceType=MANUAL). Repeatable; all are sent in one update.
    #[arg(long = "set", value_name = "FIELD=VALUE")]
    pub set: Vec<String>,
    /// Show the config history (newest first) instead.
    #[arg(long, conflicts_with = "set")]
    pub history: bool,
    /// With --history: how many changes.
    #[arg(long, default_value_t = 30)]
    pub limit: usize,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Int,
    Bool,
    Text,
}

/// The stage settings `--set` may change, as `PUT /v1/envs/{e}/{s}` names them, in the order
/// `tt env config` shows them. Identity, the current deploy, audit stamps and `isSOX` are not
/// settable; config blobs have their own verbs.
const SETTINGS: &[(&str, Kind, &str)] = &[
    ("description", Kind::Text, "description"),
    ("buildName", Kind::Text, "builds deployable here must have this name"),
    ("branch", Kind::Text, "branch for build auto-promotion"),
    ("stageType", Kind::Text, "DEV, LATEST, CANARY, CONTROL, PRODUCTION, STAGING, DEFAULT, ..."),
    ("envState", Kind::Text, "NORMAL or PAUSED (deploys frozen)"),
    ("state", Kind::Text, "NORMAL or DISABLED (stage switched off)"),
    ("maxParallel", Kind::Int, "hosts deploying at once (0 = use maxParallelPct)"),
    ("maxParallelPct", Kind::Int, "hosts deploying at once, % of hosts (0 = use maxParallel)"),
    ("maxParallelRp", Kind::Int, "parallel replacements (no service semantics)"),
    ("successThreshold", Kind::Int, "basis points of hosts that must succeed (0-10000)"),
    ("stuckThreshold", Kind::Int, "seconds without progress before FAILING"),
    ("acceptanceType", Kind::Text, "AUTO or MANUAL"),
    ("priority", Kind::Text, "host-level deploy priority (NORMAL, HIGH, ...)"),
    ("systemPriority", Kind::Int, "> 0 makes a sidecar stage (needs system ADMIN)"),
    ("overridePolicy", Kind::Text, "OVERRIDE or WARN"),
    ("maxDeployNum", Kind::Int, "retention: deploys kept"),
    ("maxDeployDay", Kind::Int, "retention: days kept"),
    ("allowPrivateBuild", Kind::Bool, "allow builds of private branches"),
    ("ensureTrustedBuild", Kind::Bool, "require trusted artifact URLs"),
    ("isDocker", Kind::Bool, "passed to the agent"),
    ("clusterName", Kind::Text, "the stage's own cluster (implicit capacity group)"),
    ("chatroom", Kind::Text, "comma-separated chat channels"),
    ("emailRecipients", Kind::Text, "comma-separated emails notified on FAILING"),
    ("notifyAuthors", Kind::Bool, "mention commit authors; gates failure emails"),
    ("watchRecipients", Kind::Text, "comma-separated users notified on state changes"),
    ("groupMentionRecipients", Kind::Text, "chat groups mentioned"),
    ("terminationLimit", Kind::Int, "1-100000 (cluster manager only)"),
    ("externalId", Kind::Text, "external project UUID"),
    ("projectName", Kind::Text, "external project name"),
    ("useEntitlements", Kind::Bool, "capacity-entitlements flag"),
];

/// Parses `--set FIELD=VALUE` arguments into the JSON body of the update; unknown fields and
/// values of the wrong type are errors naming the argument.
fn parse_sets(sets: &[String]) -> anyhow::Result<Map<String, Value>> {
    let mut body = Map::new();
    for arg in sets {
        let (field, value) = arg
            .split_once('=')
            .with_context(|| format!("--set {arg:?}: expected FIELD=VALUE, e.g. maxParallel=3"))?;
        let field = field.trim();
        let Some((name, kind, _)) = SETTINGS.iter().find(|(n, _, _)| *n == field) else {
            let names: Vec<&str> = SETTINGS.iter().map(|(n, _, _)| *n).collect();
            bail!("--set {arg:?}: unknown field {field:?}; settable fields: {}", names.join(", "));
        };
        let v = match kind {
            Kind::Int => json!(
                value
                    .trim()
                    .parse::<i64>()
                    .with_context(|| format!("--set {arg:?}: {name} takes a whole number"))?
            ),
            Kind::Bool => json!(
                value
                    .trim()
                    .parse::<bool>()
                    .with_context(|| format!("--set {arg:?}: {name} takes true or false"))?
            ),
            Kind::Text => json!(value),
        };
        if body.insert((*name).to_string(), v).is_some() {
            bail!("--set names {name} twice");
        }
    }
    Ok(body)
}

fn map_rows(v: &Value) -> Vec<Vec<String>> {
    v.as_object()
        .into_iter()
        .flatten()
        .map(|(k, v)| vec![k.clone(), v.as_str().map_or_else(|| v.to_string(), str::to_string)])
        .collect()
}

fn section(title: &str) {
    println!("\n{title}");
}

pub async fn env_config(client: &Client, out: Output, a: EnvConfigArgs) -> anyhow::Result<()> {
    let (e, st) = split_stage(&a.stage)?;
    let base = format!("/v1/envs/{e}/{st}");
    if a.history {
        let h: Vec<Value> = client.get(&format!("{base}/history?pageSize={}", a.limit)).await?;
        if out.json() {
            print_json(&h);
        } else {
            let rows: Vec<Vec<String>> = h
                .iter()
                .map(|c| {
                    vec![
                        s(c, "changeId"),
                        ops::format::time_cell(c, "createTime", &out.view),
                        s(c, "operator"),
                        s(c, "type"),
                        s(c, "configChange"),
                    ]
                })
                .collect();
            print!("{}", table(&["CHANGE", "TIME", "OPERATOR", "TYPE", "CHANGE BODY"], &rows));
        }
        return Ok(());
    }
    if !a.set.is_empty() {
        let body = parse_sets(&a.set)?;
        let fields: Vec<String> = body.keys().cloned().collect();
        client.put(&base, &Value::Object(body)).await?;
        if !out.json() {
            println!("updated {} of {}", fields.join(", "), a.stage);
        }
    }
    let env: Value = client.get(&base).await?;
    let hosts: Value = client.get(&format!("{base}/capacity?capacityType=HOST")).await?;
    let groups: Value = client.get(&format!("{base}/capacity?capacityType=GROUP")).await?;
    let script: Value = client.get(&format!("{base}/script_configs")).await?;
    let agent: Value = client.get(&format!("{base}/agent_configs")).await?;
    let promote: Value = client.get(&format!("{base}/promotes")).await?;
    // Reading hooks needs WRITE on the stage (their headers carry credentials); a reader
    // still sees the rest.
    let hooks: Option<Value> = match client.get(&format!("{base}/web_hooks")).await {
        Ok(h) => Some(h),
        Err(ClientError::Api { status: 403, .. }) => None,
        Err(e) => return Err(e.into()),
    };
    if out.json() {
        print_json(&json!({
            "env": env,
            "capacity": {"hosts": hosts, "groups": groups},
            "scriptConfigs": script,
            "agentConfigs": agent,
            "promote": promote,
            "webHooks": hooks,
        }));
        return Ok(());
    }
    println!(
        "{} (id {}), current deploy {}, last changed by {} {}",
        a.stage,
        s(&env, "id"),
        s(&env, "deployId"),
        s(&env, "lastOperator"),
        ops::format::time_cell(&env, "lastUpdate", &out.view)
    );
    section("SETTINGS");
    let rows: Vec<Vec<String>> = SETTINGS
        .iter()
        .map(|(name, _, about)| vec![name.to_string(), s(&env, name), about.to_string()])
        .collect();
    print!("{}", table(&["FIELD", "VALUE", "MEANING"], &rows));
    section("CAPACITY");
    let names = |v: &Value| {
        let list: Vec<&str> =
            v.as_array().into_iter().flatten().filter_map(Value::as_str).collect();
        if list.is_empty() { "-".to_string() } else { list.join(", ") }
    };
    print!(
        "{}",
        table(
            &["KIND", "NAMES"],
            &[vec!["hosts".into(), names(&hosts)], vec!["groups".into(), names(&groups)]]
        )
    );
    section("SCRIPT CONFIGS (environment of the hook scripts)");
    print!("{}", table(&["KEY", "VALUE"], &map_rows(&script)));
    section("AGENT CONFIGS");
    print!("{}", table(&["KEY", "VALUE"], &map_rows(&agent)));
    section("PROMOTE");
    let rows: Vec<Vec<String>> =
        ["type", "predStage", "queueSize", "delay", "schedule", "failPolicy", "disablePolicy"]
            .iter()
            .map(|k| vec![k.to_string(), s(&promote, k)])
            .collect();
    print!("{}", table(&["FIELD", "VALUE"], &rows));
    section("WEBHOOKS (change with `tt webhooks`)");
    match hooks {
        Some(h) => print!("{}", crate::cmd_webhooks::hooks_table(&h)),
        None => println!("(hidden: reading webhooks needs WRITE on the stage)"),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sets_are_typed_and_unknown_fields_refused() {
        let sets = |a: &[&str]| parse_sets(&a.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        let body = sets(&["maxParallel=3", "notifyAuthors=true", "description=a=b"]).unwrap();
        assert_eq!(
            Value::Object(body),
            json!({"maxParallel": 3, "notifyAuthors": true, "description": "a=b"})
        );
        let cases: &[(&[&str], &str)] = &[
            (&["maxParalel=3"], "unknown field \"maxParalel\""),
            (&["maxParallel"], "expected FIELD=VALUE"),
            (&["maxParallel=many"], "whole number"),
            (&["notifyAuthors=yes"], "true or false"),
            (&["deployId=x"], "unknown field"),
            (&["maxParallel=1", "maxParallel=2"], "twice"),
        ];
        for (args, want) in cases {
            let err = sets(args).unwrap_err().to_string();
            assert!(err.contains(want), "{args:?}: {err}");
        }
    }
}
