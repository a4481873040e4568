//! Deploy verbs: `tt deploy`, `tt status -w`, `tt history`, `tt rollback`, `tt promote`,
//! `tt pause|resume|restart`, `tt hosts`, `tt host pause|reset|resume`, `tt capacity`.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use anyhow::Context;

use clap::{Args, Subcommand};
use ops::client::{Client, urlencode};
use ops::format::View;
use serde_json::{Value, json};

use crate::{Output, print_json, s, split_stage};

/// How often `tt status -w` polls.
const WATCH_INTERVAL: Duration = Duration::from_secs(1);

/// Exit code of `tt status -w` when the deploy is FAILING or ABORTED.
pub const EXIT_FAILED: i32 = 1;
/// Exit code of `tt status -w` when `--timeout` passed first.
pub const EXIT_TIMEOUT: i32 = 3;

#[derive(Args)]
pub struct StageArg {
    /// ENV/STAGE, e.g. myservice/prod.
    pub stage: String,
}

#[derive(Subcommand)]
pub enum HostCmd {
    /// Stop giving these hosts goals on the stage (they keep what they run).
    Pause { stage: String, hosts: Vec<String> },
    /// Redeploy the current deploy on these hosts from the first step.
    Reset { stage: String, hosts: Vec<String> },
    /// Resume paused hosts.
    Resume { stage: String, hosts: Vec<String> },
    /// Stop the service on these hosts, on every stage (STOPPING, then STOPPED).
    Stop { stage: String, hosts: Vec<String> },
}

fn print_deploy(out: Output, d: &Value) {
    if out.json() {
        print_json(d);
    } else {
        print!("{}", ops::format::deploys(std::slice::from_ref(d), &out.view));
    }
}

pub async fn deploy(
    client: &Client,
    out: Output,
    stage: &str,
    build: &str,
    description: Option<String>,
    force: bool,
) -> anyhow::Result<()> {
    let (e, st) = split_stage(stage)?;
    let mut path = format!("/v1/envs/{e}/{st}/deploys?buildId={build}");
    if let Some(d) = description {
        path.push_str(&format!("&description={}", urlencode(&d)));
    }
    if force {
        path.push_str("&force=true");
    }
    let d: Option<Value> = client.post(&path, &Value::Null).await?;
    let d = d.unwrap_or_default();
    print_deploy(out, &d);
    if !out.json() {
        println!("watch it: tt status {stage} -w");
    }
    Ok(())
}

/// Prints the stage's current deploy; with `watch`, follows it until it settles and returns the
/// exit code (0 SUCCEEDING/SUCCEEDED, 1 FAILING/ABORTED, 3 timeout).
pub async fn status(
    client: &Client,
    out: Output,
    stage: &str,
    watch: bool,
    timeout: Duration,
) -> anyhow::Result<i32> {
    let (e, st) = split_stage(stage)?;
    let started = Instant::now();
    // On a terminal the watch redraws one block in place; otherwise (a pipe, a CI log) it
    // prints one line per change, which stays readable when captured.
    let redraw = watch && std::io::stdout().is_terminal();
    let mut last = String::new();
    loop {
        // The progress call also runs a state transition, as Teletraan's UI poll does.
        let progress: Value = client
            .put_json(&format!("/v1/envs/{e}/{st}/deploys/current/progress"), &Value::Null)
            .await?;
        let d: Value = client.get(&format!("/v1/envs/{e}/{st}/deploys/current")).await?;
        let state = s(&d, "state");
        if !watch {
            if out.json() {
                print_json(&json!({"deploy": d, "progress": progress}));
            } else {
                print_deploy(out, &d);
                print_agents(out, &progress["agents"]);
            }
            return Ok(0);
        }
        if out.json() {
            let line = json!({"deploy": d}).to_string();
            if line != last {
                println!("{line}");
                last = line;
            }
        } else if redraw {
            let view = View { now_ms: crate::now_ms(), ..out.view };
            let agents = progress["agents"].as_array().map_or(&[][..], Vec::as_slice);
            let frame = ops::format::watch_frame(stage, &d, agents, &view);
            if frame != last {
                print!("{}{frame}", ops::format::erase_lines(last.lines().count()));
                std::io::stdout().flush().context("writing to stdout")?;
                last = frame;
            }
        } else {
            let line = ops::format::watch_line(&d, out.view.color);
            if line != last {
                println!("{line}");
                last = line;
            }
        }
        match state.as_str() {
            "SUCCEEDING" | "SUCCEEDED" => return Ok(0),
            "FAILING" | "ABORTED" => return Ok(EXIT_FAILED),
            _ => {}
        }
        if started.elapsed() >= timeout {
            eprintln!("timed out after {timeout:?} with the deploy {state}");
            return Ok(EXIT_TIMEOUT);
        }
        tokio::time::sleep(WATCH_INTERVAL).await;
    }
}

fn print_agents(out: Output, agents: &Value) {
    let agents = agents.as_array().map_or(&[][..], Vec::as_slice);
    print!("{}", ops::format::agents(agents, &out.view));
}

pub async fn history(
    client: &Client,
    out: Output,
    stage: &str,
    limit: usize,
) -> anyhow::Result<()> {
    let (e, st) = split_stage(stage)?;
    let env: Value = client.get(&format!("/v1/envs/{e}/{st}")).await?;
    let v: Value =
        client.get(&format!("/v1/deploys?envId={}&pageSize={limit}", s(&env, "id"))).await?;
    if out.json() {
        print_json(&v);
    } else {
        let deploys = v["deploys"].as_array().map_or(&[][..], Vec::as_slice);
        print!("{}", ops::format::deploys(deploys, &out.view));
    }
    Ok(())
}

pub async fn action(
    client: &Client,
    out: Output,
    stage: &str,
    action: &str,
    extra: &str,
) -> anyhow::Result<()> {
    let (e, st) = split_stage(stage)?;
    let v: Option<Value> = client
        .post(
            &format!("/v1/envs/{e}/{st}/deploys/current/actions?actionType={action}{extra}"),
            &Value::Null,
        )
        .await?;
    match (action, v) {
        ("PAUSE" | "RESUME", _) => println!("{stage}: {}", action.to_lowercase()),
        (_, Some(d)) => print_deploy(out, &d),
        (_, None) => {}
    }
    Ok(())
}

pub async fn hosts(client: &Client, out: Output, stage: &str) -> anyhow::Result<()> {
    let (e, st) = split_stage(stage)?;
    let agents: Value = client.get(&format!("/v1/envs/{e}/{st}/agents")).await?;
    if out.json() {
        print_json(&agents);
    } else {
        print_agents(out, &agents);
    }
    Ok(())
}

pub async fn host(client: &Client, cmd: HostCmd) -> anyhow::Result<()> {
    if let HostCmd::Stop { stage, hosts } = &cmd {
        anyhow::ensure!(!hosts.is_empty(), "name at least one host id");
        let (e, st) = split_stage(stage)?;
        client.delete_json(&format!("/v1/envs/{e}/{st}/hosts"), hosts).await?;
        println!("{stage}: STOP for {} host(s)", hosts.len());
        return Ok(());
    }
    let (stage, hosts, action) = match cmd {
        HostCmd::Stop { .. } => unreachable!("handled above"),
        HostCmd::Pause { stage, hosts } => (stage, hosts, "PAUSED_BY_USER"),
        HostCmd::Reset { stage, hosts } => (stage, hosts, "RESET"),
        HostCmd::Resume { stage, hosts } => (stage, hosts, "NORMAL"),
    };
    anyhow::ensure!(!hosts.is_empty(), "name at least one host id");
    let (e, st) = split_stage(&stage)?;
    client
        .put(&format!("/v1/envs/{e}/{st}/deploys/hostactions?actionType={action}"), &hosts)
        .await?;
    println!("{stage}: {action} for {} host(s)", hosts.len());
    Ok(())
}

pub async fn capacity(
    client: &Client,
    out: Output,
    stage: &str,
    groups: Vec<String>,
    hosts: Vec<String>,
) -> anyhow::Result<()> {
    let (e, st) = split_stage(stage)?;
    if !groups.is_empty() {
        client.put(&format!("/v1/envs/{e}/{st}/capacity?capacityType=GROUP"), &groups).await?;
    }
    if !hosts.is_empty() {
        client.put(&format!("/v1/envs/{e}/{st}/capacity?capacityType=HOST"), &hosts).await?;
    }
    let g: Value = client.get(&format!("/v1/envs/{e}/{st}/capacity?capacityType=GROUP")).await?;
    let h: Value = client.get(&format!("/v1/envs/{e}/{st}/capacity?capacityType=HOST")).await?;
    if out.json() {
        print_json(&json!({"groups": g, "hosts": h}));
    } else {
        println!(
            "groups: {}",
            g.as_array()
                .map(|a| a.iter().map(|x| s(&json!({"x": x}), "x")).collect::<Vec<_>>().join(", "))
                .unwrap_or_default()
        );
        println!(
            "hosts:  {}",
            h.as_array()
                .map(|a| a.iter().map(|x| s(&json!({"x": x}), "x")).collect::<Vec<_>>().join(", "))
                .unwrap_or_default()
        );
    }
    Ok(())
}
