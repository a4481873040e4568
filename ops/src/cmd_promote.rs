//! Auto-promotion and build tags: `tt promote-config ENV/STAGE [...]`, `tt build tag`,
//! `tt build tags`, `tt build untag`.

use clap::{Args, ValueEnum};
use ops::client::{Client, table};
use serde_json::{Map, Value, json};

use crate::{Output, print_json, s, split_stage};

#[derive(Clone, Copy, ValueEnum)]
pub enum PromoteType {
    Manual,
    Auto,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum FailPolicy {
    /// Keep promoting after a failed deploy.
    Continue,
    /// Turn auto-promotion off.
    Disable,
    /// Roll back to the last SUCCEEDED deploy and turn auto-promotion off.
    Rollback,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum DisablePolicy {
    /// Only an operator turns auto-promotion off.
    Manual,
    /// A manual deploy on the stage turns auto-promotion off.
    Auto,
}

/// Show a stage's promote config, or change it with any of the options (others stay).
#[derive(Args)]
pub struct PromoteConfigArgs {
    /// ENV/STAGE, e.g. myservice/prod.
    pub stage: String,
    /// AUTO promotes on its own; MANUAL only by hand.
    #[arg(long = "type", value_enum)]
    pub promote_type: Option<PromoteType>,
    /// The stage of the same env to promote from, or BUILD for newly published builds.
    #[arg(long)]
    pub from: Option<String>,
    /// Minutes a candidate must bake before it is promoted.
    #[arg(long)]
    pub delay_minutes: Option<i32>,
    /// Wait for this many candidates (1-10) and promote the N-th newest.
    #[arg(long)]
    pub queue: Option<i32>,
    /// Cron (UTC; 5 fields, or Quartz's 6-7): promote only in the 2 minutes after a fire time.
    /// An empty string removes the schedule.
    #[arg(long)]
    pub schedule: Option<String>,
    #[arg(long, value_enum)]
    pub fail_policy: Option<FailPolicy>,
    #[arg(long, value_enum)]
    pub disable_policy: Option<DisablePolicy>,
}

fn upper(v: impl clap::ValueEnum) -> Value {
    let name = v.to_possible_value().expect("no skipped variants").get_name().to_string();
    json!(name.to_ascii_uppercase())
}

pub async fn promote_config(
    client: &Client,
    out: Output,
    a: PromoteConfigArgs,
) -> anyhow::Result<()> {
    let (e, st) = split_stage(&a.stage)?;
    let path = format!("/v1/envs/{e}/{st}/promotes");
    let mut patch = Map::new();
    let mut set = |k: &str, v: Option<Value>| {
        if let Some(v) = v {
            patch.insert(k.to_string(), v);
        }
    };
    set("type", a.promote_type.map(upper));
    set("predStage", a.from.map(|f| json!(f)));
    set("delay", a.delay_minutes.map(|d| json!(d)));
    set("queueSize", a.queue.map(|q| json!(q)));
    set("schedule", a.schedule.map(|s| json!(s)));
    set("failPolicy", a.fail_policy.map(upper));
    set("disablePolicy", a.disable_policy.map(upper));
    let changed = !patch.is_empty();
    if changed {
        client.put(&path, &Value::Object(patch)).await?;
    }
    let p: Value = client.get(&path).await?;
    if out.json() {
        print_json(&p);
        return Ok(());
    }
    if changed {
        println!("updated the promote config of {}", a.stage);
    }
    let rows: Vec<Vec<String>> = [
        ("type", "type"),
        ("from", "predStage"),
        ("delay (min)", "delay"),
        ("queue", "queueSize"),
        ("schedule (UTC)", "schedule"),
        ("fail policy", "failPolicy"),
        ("disable policy", "disablePolicy"),
        ("last operator", "lastOperator"),
    ]
    .iter()
    .map(|(label, key)| vec![label.to_string(), s(&p, key)])
    .collect();
    print!("{}", table(&["SETTING", "VALUE"], &rows));
    Ok(())
}

fn tag_rows(tags: &[Value], view: &ops::format::View) -> Vec<Vec<String>> {
    tags.iter()
        .map(|t| {
            let build = t
                .get("metaInfo")
                .and_then(Value::as_str)
                .and_then(|m| serde_json::from_str::<Value>(m).ok())
                .map_or_else(|| "-".to_string(), |b| s(&b, "id"));
            vec![
                s(t, "id"),
                s(t, "value"),
                s(t, "targetId"),
                build,
                s(t, "operator"),
                ops::format::time_cell(t, "createdDate", view),
                s(t, "comments"),
            ]
        })
        .collect()
}

const TAG_HEADERS: &[&str] =
    &["TAG", "VALUE", "TARGET", "ON BUILD", "OPERATOR", "CREATED", "COMMENTS"];

/// `tt build tag BUILD_ID --value BAD_BUILD --reason ...`.
pub async fn tag(
    client: &Client,
    out: Output,
    build: &str,
    value: &str,
    reason: Option<String>,
) -> anyhow::Result<()> {
    let body = json!({
        "targetType": "BUILD", "targetId": build, "value": value.to_ascii_uppercase(),
        "comments": reason,
    });
    let t: Option<Value> = client.post("/v1/tags", &body).await?;
    let t = t.unwrap_or_default();
    if out.json() {
        print_json(&t);
    } else {
        print!("{}", table(TAG_HEADERS, &tag_rows(std::slice::from_ref(&t), &out.view)));
    }
    Ok(())
}

/// `tt build tags BUILD_ID`: the tag in effect for the build (which may sit on an earlier build
/// of its branch) and the tags placed on it.
pub async fn tags(client: &Client, out: Output, build: &str) -> anyhow::Result<()> {
    let effective: Value = client.get(&format!("/v1/builds/{build}/tags")).await?;
    let placed: Vec<Value> = client.get(&format!("/v1/tags/targets/{build}")).await?;
    if out.json() {
        print_json(
            &json!({"build": effective["build"], "effective": effective["tag"], "tags": placed}),
        );
        return Ok(());
    }
    match effective.get("tag").filter(|t| !t.is_null()) {
        Some(t) => println!(
            "in effect: {} (tag {} by {}{})",
            s(t, "value"),
            s(t, "id"),
            s(t, "operator"),
            t.get("comments").and_then(Value::as_str).map(|c| format!(": {c}")).unwrap_or_default()
        ),
        None => println!("in effect: no tag"),
    }
    if !placed.is_empty() {
        print!("{}", table(TAG_HEADERS, &tag_rows(&placed, &out.view)));
    }
    Ok(())
}

/// `tt build untag TAG_ID`.
pub async fn untag(client: &Client, tag: &str) -> anyhow::Result<()> {
    client.delete(&format!("/v1/tags/{tag}")).await?;
    println!("deleted tag {tag}");
    Ok(())
}
