//! `tt webhooks ENV/STAGE [--set FILE | --clear] [--deploy ID|current]`: a stage's webhooks
//! (Teletraan's `EnvWebHookBean`), replacing them from a JSON file, and the deliveries a
//! deploy made with their outcomes (`GET /v1/deploys/{id}/webhooks`).

use anyhow::Context;
use clap::Args;
use ops::client::{Client, table};
use serde_json::{Value, json};

use crate::{Output, print_json, s, split_stage};

/// Show a stage's webhooks, replace them, or show a deploy's deliveries.
#[derive(Args)]
pub struct WebhooksArgs {
    /// ENV/STAGE, e.g. myservice/prod.
    pub stage: String,
    /// Replace the hooks with a JSON file (`-` reads stdin):
    /// {"preDeployHooks": [{"method": "POST", "url": "https://…", "headers": "K:V;K2:V2",
    /// "body": "…"}], "postDeployHooks": [...]}. `$TELETRAAN_DEPLOY_ID`,
    /// `$TELETRAAN_DEPLOY_START`, `$TELETRAAN_NUMERIC_DEPLOY_STATE` and
    /// `$TELETRAAN_DEPLOY_TYPE` are substituted in url, headers and body.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["clear", "deploy"])]
    pub set: Option<String>,
    /// Remove every hook of the stage.
    #[arg(long, conflicts_with = "deploy")]
    pub clear: bool,
    /// Show the deliveries of this deploy (an id, or `current`) instead.
    #[arg(long, value_name = "ID")]
    pub deploy: Option<String>,
}

/// Rows of the hooks table: phase, position, method, url, header names (values may be secrets).
fn hook_rows(hooks: &Value) -> Vec<Vec<String>> {
    let mut rows = Vec::new();
    for (phase, key) in [("PRE", "preDeployHooks"), ("POST", "postDeployHooks")] {
        for (i, h) in hooks[key].as_array().into_iter().flatten().enumerate() {
            let headers: Vec<String> = h["headers"]
                .as_str()
                .unwrap_or("")
                .split(';')
                .filter_map(|e| Some(e.split_once(':')?.0.trim().to_string()))
                .filter(|n| !n.is_empty())
                .collect();
            rows.push(vec![
                phase.to_string(),
                i.to_string(),
                h["method"].as_str().unwrap_or("POST").to_string(),
                s(h, "url"),
                if headers.is_empty() { "-".into() } else { headers.join(", ") },
            ]);
        }
    }
    rows
}

/// Rows of the deliveries table.
fn delivery_rows(deliveries: &[Value]) -> Vec<Vec<String>> {
    deliveries
        .iter()
        .map(|d| {
            vec![
                s(d, "phase"),
                s(d, "index"),
                s(d, "state"),
                s(d, "attempts"),
                s(&d["hook"], "url"),
                s(d, "detail"),
            ]
        })
        .collect()
}

pub const HOOK_HEADERS: &[&str] = &["PHASE", "#", "METHOD", "URL", "HEADERS"];

/// The hooks table, for `tt env config` too.
pub fn hooks_table(hooks: &Value) -> String {
    table(HOOK_HEADERS, &hook_rows(hooks))
}

pub async fn webhooks(client: &Client, out: Output, a: WebhooksArgs) -> anyhow::Result<()> {
    let (e, st) = split_stage(&a.stage)?;
    let base = format!("/v1/envs/{e}/{st}");
    if let Some(deploy) = &a.deploy {
        let id = if deploy == "current" {
            let d: Value = client.get(&format!("{base}/deploys/current")).await?;
            d["id"].as_str().context("the stage's current deploy has no id")?.to_string()
        } else {
            deploy.clone()
        };
        let deliveries: Vec<Value> = client.get(&format!("/v1/deploys/{id}/webhooks")).await?;
        if out.json() {
            print_json(&deliveries);
        } else if deliveries.is_empty() {
            println!("deploy {id} owes no webhooks (the stage had none when they fell due)");
        } else {
            let headers = ["PHASE", "#", "STATE", "ATTEMPTS", "URL", "LAST ANSWER"];
            print!("{}", table(&headers, &delivery_rows(&deliveries)));
        }
        return Ok(());
    }
    let url = format!("{base}/web_hooks");
    if a.clear || a.set.is_some() {
        let hooks: Value = match &a.set {
            None => json!({"preDeployHooks": [], "postDeployHooks": []}),
            Some(path) => {
                let text = if path == "-" {
                    std::io::read_to_string(std::io::stdin()).context("reading hooks from stdin")?
                } else {
                    std::fs::read_to_string(path).with_context(|| format!("reading {path}"))?
                };
                serde_json::from_str(&text)
                    .with_context(|| format!("{path} is not JSON hooks (see --help)"))?
            }
        };
        let stored: Value = client.put_json(&url, &hooks).await?;
        if out.json() {
            print_json(&stored);
        } else {
            println!("webhooks of {} replaced", a.stage);
            print!("{}", hooks_table(&stored));
        }
        return Ok(());
    }
    let hooks: Value = client.get(&url).await?;
    if out.json() {
        print_json(&hooks);
    } else {
        print!("{}", hooks_table(&hooks));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hook_rows_show_header_names_not_values() {
        let hooks = json!({
            "preDeployHooks": [{"url": "http://a", "headers": "Authorization: Basic c2VjcmV0; X-Id:$TELETRAAN_DEPLOY_ID"}],
            "postDeployHooks": [{"method": "PUT", "url": "http://b"}]
        });
        let rows = hook_rows(&hooks);
        assert_eq!(rows[0], ["PRE", "0", "POST", "http://a", "Authorization, X-Id"]);
        assert_eq!(rows[1], ["POST", "0", "PUT", "http://b", "-"]);
        assert!(!hooks_table(&hooks).contains("c2VjcmV0"), "header values are not printed");
    }

    #[test]
    fn delivery_rows_carry_outcomes() {
        let d = json!({"phase": "PRE", "index": 1, "state": "FAILED", "attempts": 5,
            "hook": {"url": "http://x"}, "detail": "error sending request"});
        assert_eq!(
            delivery_rows(&[d]),
            [["PRE", "1", "FAILED", "5", "http://x", "error sending request"]]
        );
    }
}
