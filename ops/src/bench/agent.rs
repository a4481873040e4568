//! `tt bench agent`: what a real `deploy-agent` costs when idle, and how long after a deploy is
//! created the first hook starts on a host — with long-poll (ours) and with Teletraan's 30 s
//! polling, side by side in one run.
//!
//! Each mode starts its own three-node cluster and N real agents. Every build's PRE_DOWNLOAD hook
//! appends the wall-clock time it starts to a per-host file; PRE_DOWNLOAD runs from the build a
//! host already serves, so every deploy after the first one measures "deploy created → first hook
//! started" on every host.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use serde::Serialize;
use serde_json::{Value, json};

use super::percentile;
use crate::client::Client;
use crate::devcluster::{DevCluster, Spec, find_coordinator_bin};
use crate::devfleet::{AgentSpec, DevAgent, find_agent_bin};

/// Longest one deploy may take before the benchmark gives up.
const DEPLOY_TIMEOUT: Duration = Duration::from_secs(180);
const POLL: Duration = Duration::from_millis(50);

#[derive(Debug, Clone, Serialize)]
pub struct AgentBenchReport {
    pub mode: String,
    pub agents: usize,
    pub deploys: usize,
    /// Deploy created → first hook started, one sample per host per deploy.
    pub first_hook_ms: Vec<f64>,
    pub first_hook_p50_ms: f64,
    pub first_hook_p99_ms: f64,
    pub first_hook_max_ms: f64,
    pub idle_secs: u64,
    /// Mean resident set size of one idle agent.
    pub idle_rss_mib: f64,
    /// CPU time one idle agent uses per hour (user + system), extrapolated from `idle_secs`.
    pub idle_cpu_secs_per_hour: f64,
}

fn now_ns() -> u128 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or_default()
}

/// (user + system CPU seconds, resident MiB) of a process, from /proc.
pub(crate) fn cpu_and_rss(pid: u32) -> anyhow::Result<(f64, f64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let after = &stat[stat.rfind(')').context("malformed stat")? + 2..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    // Fields 14 and 15 of stat (utime, stime) are 12 and 13 after the state field.
    let ticks: f64 = fields[11].parse::<f64>()? + fields[12].parse::<f64>()?;
    let hz = USER_HZ;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let rss_kb: f64 = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    Ok((ticks / hz, rss_kb / 1024.0))
}

/// Clock ticks per second in /proc (USER_HZ, fixed at 100 by the Linux ABI).
const USER_HZ: f64 = 100.0;

const STAMP_HOOK: &[u8] = b"#!/bin/sh\necho \"$(date +%s%N) $DEPLOY_ID\" >> \"$BENCH_STAMPS\"\n";

/// Runs one mode: `long_poll_ms` 0 means Teletraan-style polling every `poll_secs`.
pub async fn run_mode(
    dir: &Path,
    mode: &str,
    agents: usize,
    deploys: usize,
    idle_secs: u64,
    long_poll_ms: u64,
    poll_secs: u64,
) -> anyhow::Result<AgentBenchReport> {
    std::fs::create_dir_all(dir)?;
    let mut cluster = DevCluster::start(Spec {
        nodes: 3,
        dir: dir.join("cluster"),
        base_http_port: None,
        base_raft_port: None,
        advertise: None,
        coordinator_bin: find_coordinator_bin()?,
        env: vec![("TT_LOG".into(), "warn".into())],
    })?;
    let leader = cluster.wait_leader(&cluster.ids(), Duration::from_secs(30)).await?;
    let client = Client::new(&cluster.base_url(leader), None);
    client
        .post::<_, Value>(
            "/v1/envs",
            &json!({"envName": "bench", "stageName": "prod", "buildName": "bench", "maxParallel": agents}),
        )
        .await?;
    client.put("/v1/envs/bench/prod/capacity?capacityType=GROUP", &["bench"]).await?;
    let bin = find_agent_bin()?;
    let mut fleet = Vec::new();
    for i in 0..agents {
        let root = dir.join(format!("agent-{i}"));
        fleet.push(DevAgent::start(
            &bin,
            AgentSpec {
                hostname: format!("bench-{i}"),
                groups: vec!["bench".into()],
                root: root.clone(),
                coordinators: cluster.agent_addrs(),
                ca_file: cluster.ca_file(),
                token: None,
                hook_env: vec![("BENCH_STAMPS".into(), root.join("stamps").display().to_string())],
                extra_config: format!(
                    "long_poll_ms = {long_poll_ms}\ndaemon_sleep_time_ms = {}\n",
                    poll_secs * 1000
                ),
            },
        )?);
    }
    let mut samples = Vec::new();
    // Deploy 0 puts the hook on every host; deploys 1..=N are measured.
    for n in 0..=deploys {
        let path = dir.join(format!("build-{n}.tar.gz"));
        let version = format!("{n}\n");
        let digest = crate::publish::write_tarball(
            &path,
            &[
                ("VERSION", 0o644, version.as_bytes()),
                ("teletraan/PRE_DOWNLOAD", 0o755, STAMP_HOOK),
                ("teletraan/RESTARTING", 0o755, b"#!/bin/sh\n"),
            ],
        )?;
        let b: Option<Value> = client
            .post(
                "/v1/builds",
                &json!({"name": "bench", "artifactUrl": crate::publish::file_url(&path)?,
                        "commit": format!("{n:040x}"), "branch": "main", "repo": "bench",
                        "artifactBlake3": digest.blake3_hex, "artifactSize": digest.size}),
            )
            .await?;
        let build = b.and_then(|b| b["id"].as_str().map(str::to_string)).context("build id")?;
        let created_ns = now_ns();
        let d: Option<Value> = client
            .post(&format!("/v1/envs/bench/prod/deploys?buildId={build}"), &Value::Null)
            .await?;
        let deploy = d.and_then(|d| d["id"].as_str().map(str::to_string)).context("deploy id")?;
        let started = Instant::now();
        loop {
            let p: Value = client
                .put_json("/v1/envs/bench/prod/deploys/current/progress", &Value::Null)
                .await?;
            let done = p["agents"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|a| a["deployId"] == deploy.as_str() && a["deployStage"] == "SERVING_BUILD")
                .count();
            if done >= agents {
                break;
            }
            if started.elapsed() > DEPLOY_TIMEOUT {
                bail!("{mode}: deploy {n} did not finish in {DEPLOY_TIMEOUT:?}");
            }
            tokio::time::sleep(POLL).await;
        }
        if n == 0 {
            continue;
        }
        for a in &fleet {
            let stamps = std::fs::read_to_string(a.spec.root.join("stamps")).unwrap_or_default();
            let first = stamps
                .lines()
                .filter(|l| l.ends_with(deploy.as_str()))
                .filter_map(|l| l.split_whitespace().next()?.parse::<u128>().ok())
                .min()
                .with_context(|| {
                    format!("{}: no PRE_DOWNLOAD stamp for {deploy}", a.spec.hostname)
                })?;
            samples.push(first.saturating_sub(created_ns) as f64 / 1e6);
        }
        println!(
            "  {mode}: deploy {n}/{deploys}: first hook after {:.1} ms (slowest host)",
            samples[samples.len() - agents..].iter().cloned().fold(0.0, f64::max)
        );
    }
    let before: Vec<(f64, f64)> =
        fleet.iter().map(|a| cpu_and_rss(a.pid().unwrap_or_default())).collect::<Result<_, _>>()?;
    tokio::time::sleep(Duration::from_secs(idle_secs)).await;
    let after: Vec<(f64, f64)> =
        fleet.iter().map(|a| cpu_and_rss(a.pid().unwrap_or_default())).collect::<Result<_, _>>()?;
    let cpu: f64 = before.iter().zip(&after).map(|(b, a)| a.0 - b.0).sum::<f64>() / agents as f64;
    let rss: f64 = after.iter().map(|a| a.1).sum::<f64>() / agents as f64;
    for a in &mut fleet {
        a.stop();
    }
    cluster.stop_all();
    samples.sort_by(f64::total_cmp);
    Ok(AgentBenchReport {
        mode: mode.to_string(),
        agents,
        deploys,
        first_hook_p50_ms: percentile(&samples, 50.0),
        first_hook_p99_ms: percentile(&samples, 99.0),
        first_hook_max_ms: samples.last().copied().unwrap_or(f64::NAN),
        first_hook_ms: samples,
        idle_secs,
        idle_rss_mib: rss,
        idle_cpu_secs_per_hour: cpu / idle_secs as f64 * 3600.0,
    })
}

/// Both modes, printed side by side.
pub async fn run(
    dir: PathBuf,
    agents: usize,
    deploys: usize,
    poll_deploys: usize,
    idle_secs: u64,
    poll_secs: u64,
) -> anyhow::Result<Vec<AgentBenchReport>> {
    let long_poll = run_mode(
        &dir.join("long-poll"),
        "long-poll",
        agents,
        deploys,
        idle_secs,
        30_000,
        poll_secs,
    )
    .await?;
    let poll =
        run_mode(&dir.join("poll"), "poll", agents, poll_deploys, idle_secs, 0, poll_secs).await?;
    println!(
        "\n{:<10} {:>7} {:>8} {:>12} {:>12} {:>12} {:>10} {:>14}",
        "mode",
        "agents",
        "deploys",
        "hook p50 ms",
        "hook p99 ms",
        "hook max ms",
        "idle RSS",
        "idle CPU s/h"
    );
    for r in [&long_poll, &poll] {
        println!(
            "{:<10} {:>7} {:>8} {:>12.1} {:>12.1} {:>12.1} {:>8.1} MiB {:>14.2}",
            r.mode,
            r.agents,
            r.deploys,
            r.first_hook_p50_ms,
            r.first_hook_p99_ms,
            r.first_hook_max_ms,
            r.idle_rss_mib,
            r.idle_cpu_secs_per_hour
        );
    }
    println!("(poll = Teletraan's cadence: an idle agent pings every {poll_secs} s)");
    Ok(vec![long_poll, poll])
}
