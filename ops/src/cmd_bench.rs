//! `tt bench ...`: benchmarks that start what they measure, print figures and write JSON.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Subcommand;
use ops::bench::{self, LoadSpec, percentile};
use ops::devcluster::{DevCluster, Spec, find_coordinator_bin};
use serde::Serialize;
use serde_json::json;

/// Per-attempt timeout of a write while the cluster fails over.
const FAILOVER_WRITE_TIMEOUT: Duration = Duration::from_millis(500);
/// Give up on one failover after this long.
const FAILOVER_LIMIT: Duration = Duration::from_secs(30);

#[derive(Subcommand)]
pub enum BenchCmd {
    /// Raft write path: commits/s and latency at N concurrent clients, ours and etcd side by side.
    Write {
        /// Client counts, comma-separated.
        #[arg(long, value_delimiter = ',', default_values_t = vec![1usize, 64, 256])]
        clients: Vec<usize>,
        /// Warm-up per run, seconds.
        #[arg(long, default_value_t = 2)]
        warmup: u64,
        /// Measured time per run, seconds.
        #[arg(long, default_value_t = 12)]
        duration: u64,
        /// Size of each written value, bytes.
        #[arg(long, default_value_t = 256)]
        value_bytes: usize,
        /// Skip the etcd baseline.
        #[arg(long)]
        no_etcd: bool,
        /// Working directory (data of both clusters); a fresh one under /var/tmp by default.
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Write the reports here as JSON.
        #[arg(long)]
        json: Option<PathBuf>,
    },
    /// Agent pings: N simulated hosts at steady state ping the leader over JSON; pings/s and
    /// latency of the read-only path (no Raft write per ping).
    Ping {
        /// Simulated hosts.
        #[arg(long, default_value_t = 10_000)]
        hosts: usize,
        /// Concurrent connections.
        #[arg(long, value_delimiter = ',', default_values_t = vec![64usize, 256])]
        clients: Vec<usize>,
        #[arg(long, default_value_t = 2)]
        warmup: u64,
        #[arg(long, default_value_t = 10)]
        duration: u64,
        /// QUIC connections for the native-protocol runs.
        #[arg(long, default_value_t = 64)]
        quic_connections: usize,
        #[arg(long)]
        dir: Option<PathBuf>,
        #[arg(long)]
        json: Option<PathBuf>,
    },
    /// A rolling deploy of N simulated hosts with real waits per hook: total time against the
    /// ideal (waves × steps × hook), with long-polling agents and with Teletraan-style polling.
    Rollout {
        #[arg(long, default_value_t = 1000)]
        hosts: usize,
        /// maxParallelPct of the stage.
        #[arg(long, default_value_t = 10)]
        parallel_pct: u32,
        /// Duration of each of the 7 hook steps, milliseconds.
        #[arg(long, default_value_t = 1000)]
        hook_ms: u64,
        /// Idle ping interval of the polling agents, seconds (Teletraan's default is 30).
        #[arg(long, default_value_t = 30)]
        poll_secs: u64,
        /// Which agents to run: long-poll, poll, or both.
        #[arg(long, value_delimiter = ',', default_values_t = vec!["long-poll".to_string(), "poll".to_string()])]
        modes: Vec<String>,
        #[arg(long)]
        dir: Option<PathBuf>,
        #[arg(long)]
        json: Option<PathBuf>,
    },
    /// Real deploy agents: time from a deploy's creation to the first hook on each host, and
    /// idle RSS and CPU; long-poll (ours) and Teletraan-style 30 s polling side by side.
    Agent {
        #[arg(long, default_value_t = 5)]
        agents: usize,
        /// Measured deploys with long-poll.
        #[arg(long, default_value_t = 10)]
        deploys: usize,
        /// Measured deploys with polling (each waits up to a poll interval).
        #[arg(long, default_value_t = 3)]
        poll_deploys: usize,
        /// Idle time over which RSS and CPU are measured, seconds.
        #[arg(long, default_value_t = 60)]
        idle_secs: u64,
        /// Idle ping interval of the polling agents, seconds (Teletraan's default is 30).
        #[arg(long, default_value_t = 30)]
        poll_secs: u64,
        #[arg(long)]
        dir: Option<PathBuf>,
        #[arg(long)]
        json: Option<PathBuf>,
    },
    /// Build distribution: simulated hosts on loopback (each its own QUIC endpoint and caps)
    /// fetch one build; ours, origin-only and BitTorrent (aria2) side by side.
    Swarm {
        /// Scenarios, comma-separated: n50 (50 hosts, 4 MiB/s, 64 MiB), n100 (100 at 2 MiB/s),
        /// faults (n50 with 10% corrupt, 10% slow, 10% killed), small (1 MiB to 50 hosts,
        /// unthrottled), pair (one unthrottled pair, 256 MiB).
        #[arg(long, value_delimiter = ',', default_values_t = ops::bench::swarm::STANDARD_RUNS.map(String::from))]
        runs: Vec<String>,
        /// Skip the origin-only and BitTorrent baselines.
        #[arg(long)]
        no_baselines: bool,
        /// Hosts forward pieces only once whole (store-and-forward), for comparison.
        #[arg(long)]
        no_cut_through: bool,
        /// Seed of the build bytes, peer lists and fault placement.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Working directory (every host's store); under /dev/shm by default.
        #[arg(long)]
        dir: Option<PathBuf>,
        #[arg(long)]
        json: Option<PathBuf>,
    },
    /// Failover: kill -9 the leader repeatedly; time until a write is accepted again.
    Failover {
        #[arg(long, default_value_t = 20)]
        kills: usize,
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Keep the working directory (node logs) afterwards.
        #[arg(long)]
        keep_dir: bool,
        #[arg(long)]
        json: Option<PathBuf>,
    },
}

fn work_dir(dir: Option<PathBuf>, what: &str) -> anyhow::Result<PathBuf> {
    let dir = dir.unwrap_or_else(|| {
        PathBuf::from(format!("/var/tmp/tt-bench-{what}-{}", std::process::id()))
    });
    if dir.exists() {
        std::fs::remove_dir_all(&dir).with_context(|| format!("clearing {}", dir.display()))?;
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

/// A node's metrics, or `None` (with a note) if the scrape failed: the breakdown is extra.
async fn scrape(base: &str) -> Option<Vec<telemetry::exposition::Sample>> {
    let text = reqwest::get(format!("{base}/metrics")).await.ok()?.text().await.ok()?;
    telemetry::exposition::parse(&text).map_err(|e| eprintln!("metrics of {base}: {e}")).ok()
}

/// The upper bound of the bucket holding quantile `q` of the histogram `name`'s observations
/// between two scrapes (`None` without observations).
fn quantile_bound(
    a: &[telemetry::exposition::Sample],
    b: &[telemetry::exposition::Sample],
    name: &str,
    q: f64,
) -> Option<f64> {
    let bucket = format!("{name}_bucket");
    let mut buckets: Vec<(f64, f64)> = b
        .iter()
        .filter(|s| s.name == bucket)
        .filter_map(|s| {
            let le = s.labels.get("le")?;
            let le = if le == "+Inf" { f64::INFINITY } else { le.parse().ok()? };
            let earlier = a
                .iter()
                .find(|x| x.name == bucket && x.labels == s.labels)
                .map_or(0.0, |x| x.value);
            Some((le, s.value - earlier))
        })
        .collect();
    buckets.sort_by(|x, y| x.0.total_cmp(&y.0));
    let total = buckets.last()?.1;
    (total > 0.0).then_some(())?;
    buckets.into_iter().find(|(_, n)| *n >= q * total).map(|(le, _)| le)
}

/// Where the leader's write time went during the runs: group-commit batches and their size,
/// the time from proposing a batch to its apply result, and the synced log appends on the
/// leader and a follower (bucket upper bounds: the histograms double per bucket).
fn write_breakdown(
    l0: &[telemetry::exposition::Sample],
    l1: &[telemetry::exposition::Sample],
    f0: &[telemetry::exposition::Sample],
    f1: &[telemetry::exposition::Sample],
) -> String {
    use telemetry::exposition::sum;
    let delta = |a, b, name: &str| sum(b, name, &[]) - sum(a, name, &[]);
    let proposals = delta(l0, l1, "tt_coordinator_proposals_total");
    let ops = delta(l0, l1, "tt_coordinator_proposed_ops_total");
    let ms = |v: Option<f64>| v.map_or("-".to_string(), |s| format!("≤{:.1}", s * 1000.0));
    let hist = |a, b, name: &str| {
        let n = delta(a, b, &format!("{name}_count"));
        let mean = if n > 0.0 { delta(a, b, &format!("{name}_sum")) / n * 1000.0 } else { 0.0 };
        format!(
            "{n:.0} obs, mean {mean:.2} ms, p50 {} ms, p99 {} ms",
            ms(quantile_bound(a, b, name, 0.5)),
            ms(quantile_bound(a, b, name, 0.99))
        )
    };
    format!(
        "leader breakdown (all runs): {proposals:.0} batches, {:.1} ops per batch\n  \
         batch proposed -> applied: {}\n  leader log fsync: {}\n  follower log fsync: {}\n  \
         leader apply: {}\n",
        if proposals > 0.0 { ops / proposals } else { 0.0 },
        hist(l0, l1, "tt_coordinator_proposal_seconds"),
        hist(l0, l1, "tt_coordinator_log_fsync_seconds"),
        hist(f0, f1, "tt_coordinator_log_fsync_seconds"),
        hist(l0, l1, "tt_coordinator_apply_seconds"),
    )
}

fn start_cluster(dir: PathBuf) -> anyhow::Result<DevCluster> {
    DevCluster::start(Spec {
        nodes: 3,
        dir,
        base_http_port: None,
        base_raft_port: None,
        advertise: None,
        coordinator_bin: find_coordinator_bin()?,
        env: vec![(
            "TT_LOG".into(),
            std::env::var("TT_BENCH_NODE_LOG").unwrap_or_else(|_| "warn".into()),
        )],
    })
}

pub async fn run(cmd: BenchCmd) -> anyhow::Result<()> {
    match cmd {
        BenchCmd::Write { clients, warmup, duration, value_bytes, no_etcd, dir, json } => {
            let dir = work_dir(dir, "write")?;
            let mut cluster = start_cluster(dir.join("ours"))?;
            let leader = cluster.wait_leader(&cluster.ids(), Duration::from_secs(30)).await?;
            println!("ours: 3 nodes up, leader {leader}; writes go to the leader");
            let spec = LoadSpec {
                concurrency: 1,
                warmup: Duration::from_secs(warmup),
                duration: Duration::from_secs(duration),
                value_bytes,
            };
            let etcd_dir = (!no_etcd).then(|| dir.join("etcd"));
            let follower = cluster.ids().into_iter().find(|i| *i != leader).expect("3 nodes");
            let scrape_all = || async {
                (scrape(&cluster.base_url(leader)).await, scrape(&cluster.base_url(follower)).await)
            };
            let before = scrape_all().await;
            let reports = bench::write_path_compare(
                Some(cluster.base_url(leader)),
                etcd_dir,
                &clients,
                &spec,
            )
            .await?;
            let after = scrape_all().await;
            if let ((Some(l0), Some(f0)), (Some(l1), Some(f1))) = (before, after) {
                print!("{}", write_breakdown(&l0, &l1, &f0, &f1));
            }
            cluster.stop_all();
            if let Some(path) = json {
                bench::write_json(&path, &reports)?;
                println!("wrote {}", path.display());
            }
            let _ = std::fs::remove_dir_all(&dir);
        }
        BenchCmd::Ping { hosts, clients, warmup, duration, quic_connections, dir, json } => {
            let dir = work_dir(dir, "ping")?;
            let mut cluster = start_cluster(dir.join("ours"))?;
            let leader = cluster.wait_leader(&cluster.ids(), Duration::from_secs(30)).await?;
            let base = cluster.base_url(leader);
            let c = reqwest::Client::new();
            let post = |path: &str, body: serde_json::Value| {
                let req = c.post(format!("{base}{path}")).json(&body);
                async move {
                    let v: serde_json::Value = req.send().await?.error_for_status()?.json().await?;
                    anyhow::Ok(v)
                }
            };
            let env = post(
                "/v1/envs",
                json!({"envName": "bench", "stageName": "prod", "maxParallel": 100}),
            )
            .await?;
            c.put(format!("{base}/v1/envs/bench/prod/capacity?capacityType=GROUP"))
                .json(&json!(["bench"]))
                .send()
                .await?
                .error_for_status()?;
            let b = post("/v1/builds", json!({"name": "bench", "artifactUrl": "file:///bench.tgz", "repo": "r", "branch": "main", "commit": "0123456789"})).await?;
            let d = post(
                &format!(
                    "/v1/envs/bench/prod/deploys?buildId={}",
                    b["id"].as_str().unwrap_or_default()
                ),
                serde_json::Value::Null,
            )
            .await?;
            let started = std::time::Instant::now();
            let sent = bench::ping::bring_to_steady_state(&base, hosts, 64, "bench-host-", "bench")
                .await?;
            println!(
                "{hosts} hosts through their first deploy in {:.1} s ({sent} pings, most of them Raft writes)",
                started.elapsed().as_secs_f64()
            );
            let fleet = |concurrency| bench::ping::SteadyFleet {
                hosts,
                concurrency,
                prefix: "bench-host-".into(),
                group: "bench".into(),
                env_id: env["id"].as_str().unwrap_or_default().into(),
                deploy_id: d["id"].as_str().unwrap_or_default().into(),
            };
            let ca = p2p_transfer_ca(&cluster)?;
            let agent_addr = cluster.node(leader).agent_addr;
            let quic: Vec<_> = (0..quic_connections)
                .map(|_| {
                    agent::coordinator_client::CoordinatorClient::new(&ca, vec![agent_addr], None)
                        .map(std::sync::Arc::new)
                })
                .collect::<Result<_, _>>()?;
            let mut reports = Vec::new();
            for quic_run in [false, true] {
                for &concurrency in &clients {
                    let spec = LoadSpec {
                        concurrency,
                        warmup: Duration::from_secs(warmup),
                        duration: Duration::from_secs(duration),
                        value_bytes: 0,
                    };
                    let (target, label): (std::sync::Arc<dyn bench::WriteTarget>, String) =
                        if quic_run {
                            let t = bench::ping::QuicSteadyPing {
                                clients: quic.clone(),
                                fleet: fleet(concurrency),
                            };
                            (
                                std::sync::Arc::new(t),
                                format!(
                                    "native QUIC ({quic_connections} connections), {concurrency} in flight"
                                ),
                            )
                        } else {
                            let t = bench::ping::SteadyPing {
                                base_url: base.clone(),
                                fleet: fleet(concurrency),
                            };
                            (
                                std::sync::Arc::new(t),
                                format!("JSON over HTTP, {concurrency} clients"),
                            )
                        };
                    let r = bench::loadgen::run(&spec, target).await;
                    println!(
                        "steady-state pings, {label}: {:.0}/s, p50 {:.2} ms, p99 {:.2} ms, errors {}",
                        r.ops_per_sec, r.p50_ms, r.p99_ms, r.errors
                    );
                    reports.push(r);
                }
            }
            let metrics = c.get(format!("{base}/metrics")).send().await?.text().await?;
            let proposals = metrics
                .lines()
                .find(|l| l.starts_with("tt_coordinator_proposals_total"))
                .unwrap_or("")
                .to_string();
            println!(
                "leader {proposals} (Raft proposals over the whole run, first deploys included)"
            );
            cluster.stop_all();
            if let Some(path) = json {
                bench::write_json(&path, &reports)?;
                println!("wrote {}", path.display());
            }
            let _ = std::fs::remove_dir_all(&dir);
        }
        BenchCmd::Rollout { hosts, parallel_pct, hook_ms, poll_secs, modes, dir, json } => {
            let dir = work_dir(dir, "rollout")?;
            let mut reports = Vec::new();
            for mode in &modes {
                let r =
                    rollout(dir.join(mode), mode, hosts, parallel_pct, hook_ms, poll_secs).await?;
                println!(
                    "{mode:>9}: {} hosts, {}% at a time, {} ms hooks: {:.1} s (ideal {:.1} s, {:.2}x), at most {} hosts deploying at once",
                    r.hosts,
                    r.parallel_pct,
                    r.hook_ms,
                    r.total_s,
                    r.ideal_s,
                    r.total_s / r.ideal_s,
                    r.max_parallel_seen
                );
                reports.push(r);
            }
            if let Some(path) = json {
                std::fs::write(&path, serde_json::to_vec_pretty(&reports)?)?;
                println!("wrote {}", path.display());
            }
            let _ = std::fs::remove_dir_all(&dir);
        }
        BenchCmd::Agent { agents, deploys, poll_deploys, idle_secs, poll_secs, dir, json } => {
            let dir = work_dir(dir, "agent")?;
            let reports =
                bench::agent::run(dir.clone(), agents, deploys, poll_deploys, idle_secs, poll_secs)
                    .await?;
            if let Some(path) = json {
                std::fs::write(&path, serde_json::to_vec_pretty(&reports)?)?;
                println!("wrote {}", path.display());
            }
            let _ = std::fs::remove_dir_all(&dir);
        }
        BenchCmd::Swarm { runs, no_baselines, no_cut_through, seed, dir, json } => {
            swarm(&runs, !no_baselines, !no_cut_through, seed, dir, json).await?;
        }
        BenchCmd::Failover { kills, dir, json, keep_dir } => {
            let dir = work_dir(dir, "failover")?;
            let report = failover(dir.clone(), kills).await?;
            println!(
                "failover over {} kills: p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms (target p99 <= 1500 ms)",
                report.kills, report.p50_ms, report.p99_ms, report.max_ms
            );
            if let Some(path) = json {
                std::fs::write(&path, serde_json::to_vec_pretty(&report)?)?;
                println!("wrote {}", path.display());
            }
            if keep_dir {
                println!("node logs kept in {}", dir.display());
            } else {
                let _ = std::fs::remove_dir_all(&dir);
            }
        }
    }
    Ok(())
}

async fn swarm(
    runs: &[String],
    baselines: bool,
    cut_through: bool,
    seed: u64,
    dir: Option<PathBuf>,
    json: Option<PathBuf>,
) -> anyhow::Result<()> {
    use ops::bench::swarm;
    let specs = runs
        .iter()
        .map(|name| {
            let spec = swarm::standard_run(name).with_context(|| {
                format!("unknown run {name:?}; one of {}", swarm::STANDARD_RUNS.join(", "))
            })?;
            Ok(swarm::RunSpec { cut_through, ..spec })
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let dir = dir.unwrap_or_else(swarm::default_dir);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    println!("hosts' stores under {}", dir.display());
    let reports = swarm::run(&specs, &dir, seed, baselines).await;
    let _ = std::fs::remove_dir_all(&dir);
    let reports = reports?;
    if let Some(path) = json {
        let command = std::env::args().collect::<Vec<_>>().join(" ");
        let body = json!({ "command": command, "scenarios": reports });
        std::fs::write(&path, serde_json::to_vec_pretty(&body)?)?;
        println!("wrote {}", path.display());
    }
    swarm::check(&reports)
}

#[derive(Serialize)]
struct FailoverReport {
    kills: usize,
    samples_ms: Vec<f64>,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    election_timeout_ms: String,
}

async fn try_write(c: &reqwest::Client, base: &str, n: u64) -> bool {
    let body = json!({"name": "failover", "artifactUrl": format!("file:///f/{n}"), "repo": "r", "branch": "main", "commit": format!("{n:040x}")});
    matches!(
        c.post(format!("{base}/v1/builds")).json(&body).timeout(FAILOVER_WRITE_TIMEOUT).send().await,
        Ok(r) if r.status().as_u16() == 201
    )
}

async fn failover(dir: PathBuf, kills: usize) -> anyhow::Result<FailoverReport> {
    let mut cluster = start_cluster(dir)?;
    let c = reqwest::Client::new();
    let mut samples = Vec::new();
    let mut n = 0u64;
    for k in 1..=kills {
        let all = cluster.ids();
        let leader = cluster.wait_leader(&all, FAILOVER_LIMIT).await?;
        // Make sure the cluster takes writes before the kill.
        n += 1;
        anyhow::ensure!(
            try_write(&c, &cluster.base_url(leader), n).await,
            "cluster does not take writes before kill {k}"
        );
        let survivors: Vec<String> =
            all.iter().filter(|i| **i != leader).map(|i| cluster.base_url(*i)).collect();
        let killed_at = Instant::now();
        cluster.kill9(leader);
        let elapsed = loop {
            n += 1;
            let base = &survivors[(n as usize) % survivors.len()];
            if try_write(&c, base, n).await {
                break killed_at.elapsed();
            }
            anyhow::ensure!(
                killed_at.elapsed() < FAILOVER_LIMIT,
                "no write accepted within {FAILOVER_LIMIT:?} after kill {k}"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        let ms = elapsed.as_secs_f64() * 1000.0;
        println!("kill {k:>2}: leader {leader} killed; writes accepted again after {ms:.0} ms");
        samples.push(ms);
        cluster.restart(leader)?;
        cluster.wait_leader(&all, FAILOVER_LIMIT).await?;
        // Let the restarted node catch up before the next kill.
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    cluster.stop_all();
    let mut sorted = samples.clone();
    sorted.sort_by(f64::total_cmp);
    Ok(FailoverReport {
        kills,
        p50_ms: percentile(&sorted, 50.0),
        p99_ms: percentile(&sorted, 99.0),
        max_ms: sorted.last().copied().unwrap_or(f64::NAN),
        samples_ms: samples,
        election_timeout_ms: format!(
            "{}-{}",
            std::env::var("TT_ELECTION_TIMEOUT_MIN_MS").unwrap_or_else(|_| "250".into()),
            std::env::var("TT_ELECTION_TIMEOUT_MAX_MS").unwrap_or_else(|_| "500".into())
        ),
    })
}

/// The cluster CA certificate of a dev cluster.
fn p2p_transfer_ca(
    cluster: &DevCluster,
) -> anyhow::Result<rustls_pki_types::CertificateDer<'static>> {
    let dir = cluster.dir().join("ca");
    agent::ca_cert(&dir).with_context(|| format!("loading the cluster CA from {}", dir.display()))
}

#[derive(Serialize)]
struct RolloutReport {
    mode: String,
    hosts: usize,
    parallel_pct: u32,
    hook_ms: u64,
    idle_poll_s: Option<u64>,
    total_s: f64,
    ideal_s: f64,
    max_parallel_seen: usize,
}

/// Deploy steps a simulated host runs per deploy (PRE_DOWNLOAD .. POST_RESTART).
const STEPS_PER_DEPLOY: u64 = 7;
/// Give up on a rollout after this long.
const ROLLOUT_LIMIT: Duration = Duration::from_secs(1800);

async fn rollout(
    dir: PathBuf,
    mode: &str,
    hosts: usize,
    pct: u32,
    hook_ms: u64,
    poll_secs: u64,
) -> anyhow::Result<RolloutReport> {
    use ops::simfleet::{Fleet, FleetSpec, LongPoll, max_overlap};
    anyhow::ensure!(
        mode == "long-poll" || mode == "poll",
        "unknown mode {mode:?}: long-poll or poll"
    );
    let mut cluster = start_cluster(dir)?;
    let leader = cluster.wait_leader(&cluster.ids(), Duration::from_secs(30)).await?;
    let base = cluster.base_url(leader);
    let c = reqwest::Client::new();
    let post = |path: String, body: serde_json::Value| {
        let req = c.post(format!("{base}{path}")).json(&body);
        async move {
            let v: serde_json::Value = req.send().await?.error_for_status()?.json().await?;
            anyhow::Ok(v)
        }
    };
    post("/v1/envs".into(), json!({"envName": "roll", "stageName": "prod", "maxParallelPct": pct}))
        .await?;
    c.put(format!("{base}/v1/envs/roll/prod/capacity?capacityType=GROUP"))
        .json(&json!(["roll"]))
        .send()
        .await?
        .error_for_status()?;
    let mut builds = Vec::new();
    for commit in ["1111111aaaa", "2222222bbbb"] {
        let b = post("/v1/builds".into(), json!({"name": "roll", "artifactUrl": "file:///roll.tgz", "repo": "r", "branch": "main", "commit": commit})).await?;
        builds.push(b["id"].as_str().unwrap_or_default().to_string());
    }
    let long_poll = (mode == "long-poll")
        .then(|| -> anyhow::Result<LongPoll> {
            Ok(LongPoll {
                ca: p2p_transfer_ca(&cluster)?,
                agent_addrs: cluster.nodes.iter().map(|n| n.agent_addr).collect(),
                token: None,
                wait: Duration::from_secs(30),
                endpoint: None,
            })
        })
        .transpose()?;
    let fleet = Fleet::start(FleetSpec {
        hosts,
        prefix: "roll-".into(),
        groups: vec!["roll".into()],
        coordinators: cluster.nodes.iter().map(|n| format!("http://{}", n.http_addr)).collect(),
        hook: Duration::from_millis(hook_ms),
        idle_ping: Duration::from_secs(poll_secs),
        long_poll,
        zones: vec![],
    });
    let wait_all = |deploy: String| {
        let fleet = &fleet;
        async move {
            let started = std::time::Instant::now();
            while fleet.serving(&deploy) < hosts {
                anyhow::ensure!(
                    started.elapsed() < ROLLOUT_LIMIT,
                    "rollout stuck at {} of {hosts}",
                    fleet.serving(&deploy)
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            anyhow::Ok(started.elapsed())
        }
    };
    let d1 =
        post(format!("/v1/envs/roll/prod/deploys?buildId={}", builds[0]), serde_json::Value::Null)
            .await?;
    wait_all(d1["id"].as_str().unwrap_or_default().to_string()).await?;
    // Let polling agents settle into their idle rhythm (as a fleet would be between deploys).
    if mode == "poll" {
        tokio::time::sleep(Duration::from_secs(poll_secs)).await;
    }
    let d2 =
        post(format!("/v1/envs/roll/prod/deploys?buildId={}", builds[1]), serde_json::Value::Null)
            .await?;
    let d2 = d2["id"].as_str().unwrap_or_default().to_string();
    let total = wait_all(d2.clone()).await?;
    let max_parallel_seen = max_overlap(&fleet.intervals(), &d2);
    fleet.stop().await;
    cluster.stop_all();
    let per_wave = (hosts as u64 * u64::from(pct)).div_ceil(100).max(1);
    let waves = (hosts as u64).div_ceil(per_wave);
    Ok(RolloutReport {
        mode: mode.to_string(),
        hosts,
        parallel_pct: pct,
        hook_ms,
        idle_poll_s: (mode == "poll").then_some(poll_secs),
        total_s: total.as_secs_f64(),
        ideal_s: (waves * STEPS_PER_DEPLOY * hook_ms) as f64 / 1000.0,
        max_parallel_seen,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scrape_of(text: &str) -> Vec<telemetry::exposition::Sample> {
        telemetry::exposition::parse(text).unwrap()
    }

    #[test]
    fn the_breakdown_reads_histogram_deltas_between_scrapes() {
        let before = scrape_of(
            "tt_coordinator_proposals_total 10\ntt_coordinator_proposed_ops_total 100\n\
             tt_coordinator_proposal_seconds_bucket{le=\"0.001\"} 5\n\
             tt_coordinator_proposal_seconds_bucket{le=\"0.002\"} 10\n\
             tt_coordinator_proposal_seconds_bucket{le=\"+Inf\"} 10\n\
             tt_coordinator_proposal_seconds_sum 0.01\ntt_coordinator_proposal_seconds_count 10\n",
        );
        // 100 more batches of 10 ops: 98 within 2 ms, 2 above.
        let after = scrape_of(
            "tt_coordinator_proposals_total 110\ntt_coordinator_proposed_ops_total 1100\n\
             tt_coordinator_proposal_seconds_bucket{le=\"0.001\"} 5\n\
             tt_coordinator_proposal_seconds_bucket{le=\"0.002\"} 108\n\
             tt_coordinator_proposal_seconds_bucket{le=\"+Inf\"} 110\n\
             tt_coordinator_proposal_seconds_sum 0.21\ntt_coordinator_proposal_seconds_count 110\n",
        );
        let name = "tt_coordinator_proposal_seconds";
        assert_eq!(quantile_bound(&before, &after, name, 0.5), Some(0.002));
        assert_eq!(quantile_bound(&before, &after, name, 0.99), Some(f64::INFINITY));
        assert_eq!(quantile_bound(&before, &before, name, 0.5), None, "no observations");
        let text = write_breakdown(&before, &after, &before, &before);
        assert!(text.contains("100 batches, 10.0 ops per batch"), "{text}");
        assert!(text.contains("100 obs, mean 2.00 ms, p50 ≤2.0 ms"), "{text}");
    }
}
