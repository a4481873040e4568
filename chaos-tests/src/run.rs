//! Runs one scenario: the lab, the setup and first deploy, the fault window with the workload,
//! the heal, convergence, a full restart, the final reads, and the checkers.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::checkers::{self, HostBuilds, Verdict};
use crate::history::{JournalEntry, Op, OpKind, ProgressSample, StatusSample, parse_journal};
use crate::lab::{Lab, LabError, LabSpec, LinkClass, sub_seed};
use crate::proxy::{LinkFaults, ProxyStats};
use crate::report::{FaultEvent, Recovery, Report};
use crate::scenario::{AgentSel, Fault, NodeSel, Observation, Scenario};
use crate::workload::{self, Api, Clock, Driver, PreparedBuild, Recorder, WorkloadError};

/// How long the first deploy (all hosts at once, outside the window) may take.
pub const FIRST_DEPLOY_WAIT: Duration = Duration::from_secs(120);
/// How often cuts are re-applied while in force (restarted processes have new ports).
pub const CUT_REFRESH: Duration = Duration::from_millis(100);
/// How often the every-step killer looks at its agents' status files.
pub const STEP_WATCH_EVERY: Duration = Duration::from_millis(20);
/// Longest the cluster may take to elect a leader after the full restart.
pub const RESTART_LEADER_WAIT: Duration = Duration::from_secs(60);
/// Longest the nodes may take to apply the same index after the full restart.
pub const CATCH_UP_WAIT: Duration = Duration::from_secs(30);
/// Grace between SIGTERM and SIGKILL for a hook past `hook_timeout_s`, in seconds.
pub const HOOK_TERMINATION_S: u64 = 1;
/// The group every agent of a run is in (the deploy stage's capacity).
pub const GROUP: &str = "chaos-hosts";
/// The group of the simulated hosts (the simulated stage's capacity).
pub const SIM_GROUP: &str = "chaos-sim";
/// The simulated hosts' name prefix.
pub const SIM_PREFIX: &str = "sim-";
/// How often the simulated stage's progress is sampled (hundreds of rows each time).
pub const SIM_PROGRESS_EVERY: Duration = Duration::from_secs(1);
/// Agent settings every run uses: quick hook retries and heartbeats, long-poll on.
pub const AGENT_CONFIG: &str = "process_wait_interval = 1\nmin_running_time = 1\n";

/// Errors that stop a run (violations do not: they are verdicts).
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Lab(#[from] LabError),
    #[error(transparent)]
    Workload(#[from] WorkloadError),
    #[error("{0}")]
    Harness(String),
}

/// How to run.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Replaces the scenario's seed.
    pub seed: Option<u64>,
    /// Replaces the scenario's window length (faults past it are skipped).
    pub duration_s: Option<f64>,
    /// Where the run's processes keep their files.
    pub work_dir: PathBuf,
    pub coordinator_bin: PathBuf,
    pub agent_bin: PathBuf,
}

/// Everything recorded, for the report's companion file.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Recorded {
    pub ops: Vec<Op>,
    pub status: Vec<StatusSample>,
    pub progress: Vec<ProgressSample>,
    pub journal: Vec<crate::history::JournalEntry>,
    /// The simulated stage's progress samples (scenarios with `sim_hosts`).
    #[serde(default)]
    pub sim_progress: Vec<ProgressSample>,
    /// The simulated hosts' runs of deploy steps, on the run's clock.
    #[serde(default)]
    pub sim_intervals: Vec<checkers::Interval>,
}

/// What a fault was resolved to when injected.
#[derive(Debug, Clone)]
enum Targets {
    Nodes(Vec<u64>),
    Agents(Vec<usize>),
    /// A bad peer the lab started (its index).
    BadPeer(usize),
    /// The simulated-agent process, and what the fault hit there.
    Sim(crate::report::SimHit),
    None,
}

struct Faults {
    lab: Arc<tokio::sync::Mutex<Lab>>,
    api: Api,
    rng: StdRng,
    clock: Clock,
    hook_ms: u64,
    step_killers: BTreeMap<usize, watch::Sender<bool>>,
    kills_at_steps: Arc<Mutex<Vec<String>>>,
}

impl Faults {
    /// The leader now: the highest-term node that calls itself leader.
    async fn leader(&self) -> Option<u64> {
        let mut best: Option<(u64, u64)> = None;
        for n in self.api.nodes() {
            if let workload::Answer::Ok(v) = self
                .api
                .call(n, reqwest::Method::GET, "/v1/cluster", None, workload::SAMPLE_TIMEOUT)
                .await
                && v["state"] == "Leader"
            {
                let term = v["term"].as_u64().unwrap_or(0);
                if best.is_none_or(|(t, _)| term > t) {
                    best = Some((term, n));
                }
            }
        }
        best.map(|(_, n)| n)
    }

    async fn nodes(&mut self, sel: NodeSel) -> (Vec<u64>, Option<u64>) {
        let leader = self.leader().await;
        let mut up = Vec::new();
        {
            let mut lab = self.lab.lock().await;
            for id in lab.ids() {
                if lab.is_running(id) && !lab.paused().contains(&id) {
                    up.push(id);
                }
            }
        }
        let mut followers: Vec<u64> = up.iter().copied().filter(|&n| Some(n) != leader).collect();
        let follower = |rng: &mut StdRng, f: &mut Vec<u64>| {
            (!f.is_empty()).then(|| f.remove(rng.random_range(0..f.len())))
        };
        let chosen = match sel {
            NodeSel::Leader => leader.into_iter().collect(),
            NodeSel::Follower => follower(&mut self.rng, &mut followers).into_iter().collect(),
            NodeSel::Majority => {
                let mut v: Vec<u64> = leader.into_iter().collect();
                while v.len() < 2 {
                    match follower(&mut self.rng, &mut followers) {
                        Some(f) => v.push(f),
                        None => break,
                    }
                }
                v
            }
            NodeSel::All => vec![1, 2, 3],
            NodeSel::Node1 => vec![1],
            NodeSel::Node2 => vec![2],
            NodeSel::Node3 => vec![3],
        };
        (chosen, leader)
    }

    fn agents(&mut self, sel: &AgentSel, n: usize) -> Vec<usize> {
        match sel {
            AgentSel::Named(s) if s == "all" => (0..n).collect(),
            AgentSel::Named(s) => s
                .strip_prefix("host-")
                .and_then(|i| i.parse::<usize>().ok())
                .filter(|i| (1..=n).contains(i))
                .map(|i| vec![i - 1])
                .unwrap_or_default(),
            AgentSel::Count(k) => {
                let mut all: Vec<usize> = (0..n).collect();
                let mut out = Vec::new();
                while out.len() < *k && !all.is_empty() {
                    out.push(all.remove(self.rng.random_range(0..all.len())));
                }
                out.sort();
                out
            }
        }
    }

    async fn inject(&mut self, fault: &Fault) -> Result<(Targets, Option<u64>), RunError> {
        let n_agents = self.lab.lock().await.agents.len();
        let (targets, leader) = match fault {
            Fault::KillNode { node } => {
                let (ids, leader) = self.nodes(*node).await;
                let mut lab = self.lab.lock().await;
                for &id in &ids {
                    lab.kill_node(id);
                }
                (Targets::Nodes(ids), leader)
            }
            Fault::DiskFault { node, failpoints, wipe } => {
                let (ids, leader) = self.nodes(*node).await;
                let mut lab = self.lab.lock().await;
                for &id in &ids {
                    if *wipe {
                        lab.wipe_node_with_failpoints(id, Some(failpoints))?;
                    } else {
                        lab.restart_node_with_failpoints(id, Some(failpoints))?;
                    }
                }
                (Targets::Nodes(ids), leader)
            }
            Fault::PauseNode { node } => {
                let (ids, leader) = self.nodes(*node).await;
                let mut lab = self.lab.lock().await;
                for &id in &ids {
                    lab.pause_node(id)?;
                }
                (Targets::Nodes(ids), leader)
            }
            Fault::IsolateNode { node } | Fault::DeafenNode { node } | Fault::MuteNode { node } => {
                let (ids, leader) = self.nodes(*node).await;
                let mut lab = self.lab.lock().await;
                let mut cuts = lab.cuts().clone();
                let set = match fault {
                    Fault::IsolateNode { .. } => &mut cuts.isolated,
                    Fault::DeafenNode { .. } => &mut cuts.deaf,
                    _ => &mut cuts.mute,
                };
                set.extend(ids.iter().copied());
                lab.set_cuts(cuts)?;
                (Targets::Nodes(ids), leader)
            }
            Fault::KillAll => {
                let leader = self.leader().await;
                let mut lab = self.lab.lock().await;
                for id in lab.ids() {
                    lab.kill_node(id);
                }
                (Targets::Nodes(lab.ids()), leader)
            }
            Fault::IsolateAgents { agents } => {
                let ids = self.agents(agents, n_agents);
                let mut lab = self.lab.lock().await;
                let mut cuts = lab.cuts().clone();
                cuts.agents.extend(ids.iter().copied());
                lab.set_cuts(cuts)?;
                (Targets::Agents(ids), None)
            }
            Fault::KillAgents { agents } => {
                let ids = self.agents(agents, n_agents);
                let mut lab = self.lab.lock().await;
                for &a in &ids {
                    lab.kill_agent(a);
                }
                (Targets::Agents(ids), None)
            }
            Fault::PauseAgents { agents } => {
                let ids = self.agents(agents, n_agents);
                let mut lab = self.lab.lock().await;
                for &a in &ids {
                    lab.pause_agent(a)?;
                }
                (Targets::Agents(ids), None)
            }
            Fault::KillAgentsAtEveryStep { agents } => {
                let ids = self.agents(agents, n_agents);
                for &a in &ids {
                    let (tx, rx) = watch::channel(false);
                    self.step_killers.insert(a, tx);
                    tokio::spawn(kill_at_every_step(
                        self.lab.clone(),
                        a,
                        self.hook_ms,
                        self.kills_at_steps.clone(),
                        rx,
                    ));
                }
                (Targets::Agents(ids), None)
            }
            Fault::KillSim | Fault::PauseSim => {
                let mut lab = self.lab.lock().await;
                let mid_deploy = match fault {
                    Fault::KillSim => lab.kill_sim()?,
                    _ => lab.pause_sim()?,
                };
                let hit = mid_deploy.map_or(crate::report::SimHit::NotRunning, |n| {
                    crate::report::SimHit::Process { hosts_mid_deploy: n }
                });
                (Targets::Sim(hit), None)
            }
            Fault::HookFault { agents, mode } => {
                let ids = self.agents(agents, n_agents);
                let mut lab = self.lab.lock().await;
                for &a in &ids {
                    lab.add_hook_fault(a, *mode)?;
                }
                (Targets::Agents(ids), None)
            }
            Fault::Link { class, link } => {
                self.lab.lock().await.set_quality(*class, link.clone())?;
                (Targets::None, None)
            }
            Fault::BadPeer { mode, upload_bytes_per_s } => {
                let mut lab = self.lab.lock().await;
                (Targets::BadPeer(lab.start_bad_peer(*mode, *upload_bytes_per_s).await?), None)
            }
        };
        Ok((targets, leader))
    }

    /// Undoes `fault`; for a disk fault, answers how often its failpoints fired.
    async fn undo(&mut self, fault: &Fault, targets: &Targets) -> Result<Option<u64>, RunError> {
        let nodes = match targets {
            Targets::Nodes(n) => n.clone(),
            _ => Vec::new(),
        };
        let agents = match targets {
            Targets::Agents(a) => a.clone(),
            _ => Vec::new(),
        };
        let mut lab = self.lab.lock().await;
        match fault {
            Fault::KillNode { .. } | Fault::KillAll => {
                for id in nodes {
                    lab.restart_node(id)?;
                }
            }
            Fault::PauseNode { .. } => {
                for id in nodes {
                    lab.resume_node(id)?;
                }
            }
            Fault::DiskFault { .. } => {
                let mut fired = 0;
                for id in nodes {
                    fired += lab.failpoint_fires(id);
                    lab.restart_node_with_failpoints(id, None)?;
                }
                return Ok(Some(fired));
            }
            Fault::IsolateNode { .. } | Fault::DeafenNode { .. } | Fault::MuteNode { .. } => {
                let mut cuts = lab.cuts().clone();
                for id in &nodes {
                    match fault {
                        Fault::IsolateNode { .. } => cuts.isolated.remove(id),
                        Fault::DeafenNode { .. } => cuts.deaf.remove(id),
                        _ => cuts.mute.remove(id),
                    };
                }
                lab.set_cuts(cuts)?;
            }
            Fault::IsolateAgents { .. } => {
                let mut cuts = lab.cuts().clone();
                for a in &agents {
                    cuts.agents.remove(a);
                }
                lab.set_cuts(cuts)?;
            }
            Fault::KillAgents { .. } => {
                for a in agents {
                    lab.restart_agent(a)?;
                }
            }
            Fault::PauseAgents { .. } => {
                for a in agents {
                    lab.resume_agent(a)?;
                }
            }
            Fault::KillAgentsAtEveryStep { .. } => {
                for a in agents {
                    if let Some(tx) = self.step_killers.remove(&a) {
                        let _ = tx.send(true);
                    }
                }
            }
            Fault::HookFault { mode, .. } => {
                for a in agents {
                    lab.clear_hook_fault(a, *mode)?;
                }
            }
            Fault::KillSim => lab.restart_sim()?,
            Fault::PauseSim => lab.resume_sim()?,
            Fault::Link { class, .. } => lab.set_quality(*class, LinkFaults::default())?,
            Fault::BadPeer { .. } => {
                if let Targets::BadPeer(i) = targets {
                    lab.stop_bad_peer(*i);
                }
            }
        }
        Ok(None)
    }

    fn stop_step_killers(&mut self) {
        for (_, tx) in std::mem::take(&mut self.step_killers) {
            let _ = tx.send(true);
        }
    }
}

/// While not stopped: `kill -9` agent `a` once in the middle of every step of every deploy it
/// runs (a step is "mid" when its status file says UNKNOWN), restarting it at once.
async fn kill_at_every_step(
    lab: Arc<tokio::sync::Mutex<Lab>>,
    a: usize,
    hook_ms: u64,
    log: Arc<Mutex<Vec<String>>>,
    stop: watch::Receiver<bool>,
) {
    let (status_file, host) = {
        let lab = lab.lock().await;
        let agent = &lab.agents[a].agent;
        (agent.spec.root.join("agent").join("env_status"), agent.spec.hostname.clone())
    };
    let mut done: BTreeSet<(String, String)> = BTreeSet::new();
    while !*stop.borrow() {
        let st: serde_json::Value = std::fs::read(&status_file)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        let r = &st[workload::ENV]["report"];
        let deploy = r["deployId"].as_str().unwrap_or_default().to_string();
        let step = r["deployStage"].as_str().unwrap_or_default().to_string();
        if r["status"] == "UNKNOWN" && !deploy.is_empty() && done.insert((deploy, step.clone())) {
            // Into the step's work (hooks take hook_ms; built-in steps are quicker).
            tokio::time::sleep(Duration::from_millis(hook_ms / 2)).await;
            if *stop.borrow() {
                return;
            }
            let mut lab = lab.lock().await;
            lab.kill_agent(a);
            if lab.restart_agent(a).is_ok() {
                log.lock().unwrap().push(format!("{host}:{step}"));
            }
        }
        tokio::time::sleep(STEP_WATCH_EVERY).await;
    }
}

/// Re-applies the cuts while any is in force, so that restarted processes' new ports are cut.
async fn refresh_cuts(lab: Arc<tokio::sync::Mutex<Lab>>, stop: watch::Receiver<bool>) {
    while !*stop.borrow() {
        {
            let mut lab = lab.lock().await;
            if !lab.cuts().is_empty() {
                let _ = lab.apply();
            }
        }
        tokio::time::sleep(CUT_REFRESH).await;
    }
}

fn wall_clock_ns() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default()
}

/// Runs `scenario` and judges it.
pub async fn run(scenario: &Scenario, opts: &RunOptions) -> Result<(Report, Recorded), RunError> {
    let ctx = Ctx::start(scenario, opts).await?;
    let builds = ctx.prepare(opts).await?;
    let first = ctx.first_deploy(&builds[0]).await?;
    let sim_first = ctx.sim_first_deploy(&builds[0]).await?;
    let window = ctx.window(&builds[1..], &first).await?;
    let restart_at_us = ctx.clock.now_us();
    ctx.full_restart().await?;
    let config = scenario.workload.actions.config > 0;
    let finals = final_state(&ctx.api, &ctx.rec, scenario.register_keys, config).await?;
    let (journal, host_builds) = ctx.collect_disk().await;
    let run_end_us = ctx.clock.now_us();
    let sim_intervals = ctx.sim_intervals(run_end_us).await?;
    let timing = Timing {
        window_start_us: window.start_us,
        faults_end_us: window.faults_end_us,
        restart_at_us,
        run_end_us,
    };
    let ops = ctx.rec.ops();
    let mut report =
        ctx.judge(opts, &first, &window, &ops, &finals, &journal, &host_builds, timing).await;
    if let Some(sim_first) = &sim_first {
        ctx.judge_sim(&mut report, sim_first, &window, &sim_intervals);
    }
    let Window { status, progress, sim_progress, .. } = window;
    let recorded = Recorded { ops, status, progress, journal, sim_progress, sim_intervals };
    Ok((report, recorded))
}

/// What a run shares between its phases.
struct Ctx {
    scenario: Scenario,
    seed: u64,
    duration_s: f64,
    clock: Clock,
    /// The run's start on the wall clock (hooks stamp their journals with it).
    epoch_ns: u128,
    lab: Arc<tokio::sync::Mutex<Lab>>,
    api: Api,
    rec: Recorder,
    hosts: Vec<String>,
    driver: Driver,
    /// The simulated stage's driver and hosts, if the scenario has simulated hosts.
    sim: Option<(Driver, Vec<String>)>,
}

/// What the fault window left.
struct Window {
    start_us: u64,
    faults_end_us: u64,
    events: Vec<FaultEvent>,
    goal: String,
    status: Vec<StatusSample>,
    progress: Vec<ProgressSample>,
    kills_at_steps: Vec<String>,
    /// The simulated stage's goal and progress samples.
    sim_goal: Option<String>,
    sim_progress: Vec<ProgressSample>,
}

impl Ctx {
    /// Starts the lab.
    async fn start(scenario: &Scenario, opts: &RunOptions) -> Result<Ctx, RunError> {
        let seed = opts.seed.unwrap_or(scenario.seed);
        let clock = Clock::new(Instant::now());
        let epoch_ns = wall_clock_ns();
        let mut coordinator_env = vec![("TT_LOG".to_string(), "info".to_string())];
        if let Some(every) = scenario.snapshot_every_entries {
            coordinator_env.push(("TT_SNAPSHOT_EVERY_ENTRIES".into(), every.to_string()));
        }
        if let Some(keep) = scenario.keep_entries_after_snapshot {
            coordinator_env.push(("TT_KEEP_ENTRIES_AFTER_SNAPSHOT".into(), keep.to_string()));
        }
        if let Some(batch) = scenario.purge_batch_entries {
            coordinator_env.push(("TT_PURGE_BATCH_ENTRIES".into(), batch.to_string()));
        }
        if let Some(ttl) = scenario.lease_ttl_ms {
            coordinator_env.push(("TT_LEASE_TTL_MS".into(), ttl.to_string()));
        }
        let mut agent_config = AGENT_CONFIG.to_string();
        if let Some(l) = scenario.agent_lease_ms {
            agent_config.push_str(&format!("lease_ms = {l}\n"));
        }
        if let Some(t) = scenario.hook_timeout_s {
            agent_config.push_str(&format!(
                "process_timeout = {t}\ntermination_timeout = {HOOK_TERMINATION_S}\n"
            ));
        }
        let mut lab = Lab::start(LabSpec {
            dir: opts.work_dir.clone(),
            seed,
            coordinator_bin: opts.coordinator_bin.clone(),
            agent_bin: opts.agent_bin.clone(),
            agents: scenario.agents,
            group: GROUP.into(),
            coordinator_env,
            agent_config,
            swarm: scenario.swarm,
        })
        .await?;
        if scenario.sim_hosts > 0 {
            let step = Duration::from_millis(scenario.sim_step_ms);
            lab.start_sim(scenario.sim_hosts, SIM_PREFIX, SIM_GROUP, step).await?;
        }
        let urls = lab.ids().into_iter().map(|id| (id, lab.cluster.base_url(id))).collect();
        let hosts: Vec<String> = lab.agents.iter().map(|a| a.agent.spec.hostname.clone()).collect();
        let api = Api::new(urls);
        let rec = Recorder::new(clock);
        let mut driver = Driver::new(api.clone(), rec.clone(), workload::STAGE, hosts.len(), 0);
        driver.mix = scenario.workload.next_deploy.clone();
        let sim = lab.sim.as_ref().map(|s| {
            let d = Driver::new(api.clone(), rec.clone(), workload::SIM_STAGE, s.hosts, 1);
            (d, s.host_names())
        });
        Ok(Ctx {
            scenario: scenario.clone(),
            seed,
            duration_s: opts.duration_s.unwrap_or(scenario.duration_s),
            clock,
            epoch_ns,
            lab: Arc::new(tokio::sync::Mutex::new(lab)),
            api,
            rec,
            hosts,
            driver,
            sim,
        })
    }

    /// Creates the stages and uploads enough builds for the window.
    async fn prepare(&self, opts: &RunOptions) -> Result<Vec<PreparedBuild>, RunError> {
        let s = &self.scenario;
        workload::setup_stages(&self.api, &self.rec, GROUP, s.max_parallel, s.register_keys)
            .await?;
        if s.workload.next_deploy.promote > 0 {
            workload::create_stage(&self.api, workload::STAGING, None, 1).await?;
        }
        if s.sim_hosts > 0 {
            let (api, stage) = (&self.api, workload::SIM_STAGE);
            workload::create_stage(api, stage, Some(SIM_GROUP), s.sim_max_parallel).await?;
        }
        // A deploy takes a couple of seconds at least; one build per two seconds suffices.
        let n_builds = 2 + (self.duration_s / 2.0).ceil() as u32;
        let dir = opts.work_dir.join("builds");
        std::fs::create_dir_all(&dir)
            .map_err(|e| RunError::Harness(format!("creating {}: {e}", dir.display())))?;
        let mut builds = Vec::new();
        for n in 0..n_builds {
            let payload = s.build_payload_bytes;
            builds
                .push(workload::prepare_build_sized(&self.api, &dir, n, s.hook_ms, payload).await?);
        }
        let archives = (0..n_builds).map(|n| workload::build_archive(&dir, n)).collect();
        self.lab.lock().await.set_blob_files(archives);
        Ok(builds)
    }

    /// The first deploy runs on every host at once (Teletraan's first-deploy bypass): before
    /// the window, and exempt from the parallelism check.
    async fn first_deploy(&self, build: &PreparedBuild) -> Result<String, RunError> {
        let (_never_tx, never) = watch::channel(false);
        let mut rng = StdRng::seed_from_u64(sub_seed(self.seed, "driver", 0));
        let first = self
            .driver
            .deploy_once(&mut rng, build, &never)
            .await
            .ok_or_else(|| RunError::Harness("the first deploy was never started".into()))?;
        self.wait_first_settled(workload::STAGE, &first, self.hosts.len()).await?;
        Ok(first)
    }

    /// Waits until every one of `hosts` hosts of `stage` settled on its first deploy `first`.
    async fn wait_first_settled(
        &self,
        stage: &str,
        first: &str,
        hosts: usize,
    ) -> Result<(), RunError> {
        let deadline = Instant::now() + FIRST_DEPLOY_WAIT;
        while !workload::hosts_of(&self.api, stage)
            .await
            .is_some_and(|r| workload::settled(&r, first, hosts))
        {
            if Instant::now() > deadline {
                return Err(RunError::Harness(format!(
                    "the first deploy {first} of stage {stage} did not settle within {FIRST_DEPLOY_WAIT:?}"
                )));
            }
            tokio::time::sleep(workload::PROGRESS_EVERY).await;
        }
        Ok(())
    }

    /// The simulated stage's first deploy (every host at once), like [`Ctx::first_deploy`].
    async fn sim_first_deploy(&self, build: &PreparedBuild) -> Result<Option<String>, RunError> {
        let Some((driver, hosts)) = &self.sim else { return Ok(None) };
        let (_never_tx, never) = watch::channel(false);
        let mut rng = StdRng::seed_from_u64(sub_seed(self.seed, "sim-driver", 0));
        let first = driver
            .deploy_once(&mut rng, build, &never)
            .await
            .ok_or_else(|| RunError::Harness("the simulated first deploy never started".into()))?;
        self.wait_first_settled(workload::SIM_STAGE, &first, hosts.len()).await?;
        Ok(Some(first))
    }

    /// The simulated hosts' runs of deploy steps, from the process's file.
    async fn sim_intervals(&self, run_end_us: u64) -> Result<Vec<checkers::Interval>, RunError> {
        let lab = self.lab.lock().await;
        let Some(sim) = &lab.sim else { return Ok(Vec::new()) };
        sim.intervals(self.epoch_ns, run_end_us).map_err(|e| RunError::Harness(e.to_string()))
    }

    /// The simulated stage's parallelism (its own limit) and convergence, added to `report`.
    fn judge_sim(
        &self,
        report: &mut Report,
        first: &str,
        w: &Window,
        intervals: &[checkers::Interval],
    ) {
        let Some((driver, hosts)) = &self.sim else { return };
        let s = &self.scenario;
        let exempt: BTreeSet<String> = [first.to_string()].into();
        let mut par = checkers::parallelism(intervals, s.sim_max_parallel as usize, &exempt);
        par.invariant = format!("parallelism-{}", workload::SIM_STAGE);
        let goal = w.sim_goal.clone().unwrap_or_else(|| first.to_string());
        let bound_us = (s.convergence_bound_s * 1e6) as u64;
        let (mut conv, _) =
            checkers::convergence(&w.sim_progress, &goal, hosts, w.faults_end_us, bound_us);
        conv.invariant = format!("convergence-{}", workload::SIM_STAGE);
        let deploys = driver.log.lock().unwrap().deploys.len().saturating_sub(1);
        report.add_verdicts(vec![par, conv]);
        report.sim_deploys = deploys;
    }

    /// The fault window with the workload running, the heal, and convergence.
    async fn window(&self, builds: &[PreparedBuild], first: &str) -> Result<Window, RunError> {
        let (clock, api, seed) = (self.clock, &self.api, self.seed);
        let start_us = clock.now_us();
        let (stop_tx, stop) = watch::channel(false);
        let (stop_driver_tx, stop_driver) = watch::channel(false);
        let status: Arc<Mutex<Vec<StatusSample>>> = Arc::default();
        let progress: Arc<Mutex<Vec<ProgressSample>>> = Arc::default();
        let mut tasks = vec![
            tokio::spawn(workload::status_sampler(
                api.clone(),
                clock,
                status.clone(),
                stop.clone(),
            )),
            tokio::spawn(workload::progress_sampler(
                api.clone(),
                clock,
                progress.clone(),
                stop.clone(),
            )),
            tokio::spawn(refresh_cuts(self.lab.clone(), stop.clone())),
        ];
        for p in 1..=self.scenario.register_workers {
            tasks.push(tokio::spawn(workload::register_client(
                api.clone(),
                self.rec.clone(),
                p,
                sub_seed(seed, "client", u64::from(p)),
                self.scenario.register_keys,
                stop.clone(),
            )));
        }
        let driver = tokio::spawn(self.driver.clone().run(
            sub_seed(seed, "driver", 1),
            builds.to_vec(),
            stop_driver.clone(),
        ));
        let operator = crate::actions::Operator {
            api: api.clone(),
            rec: self.rec.clone(),
            spec: self.scenario.workload.clone(),
            hosts: self.hosts.clone(),
            max_parallel: self.scenario.max_parallel,
        };
        let operator =
            tokio::spawn(operator.run(sub_seed(seed, "operator", 1), stop_driver.clone()));
        let sim_progress: Arc<Mutex<Vec<ProgressSample>>> = Arc::default();
        let sim_driver = self.sim.as_ref().map(|(d, _)| {
            tasks.push(tokio::spawn(workload::progress_sampler_of(
                api.clone(),
                workload::SIM_STAGE,
                SIM_PROGRESS_EVERY,
                clock,
                sim_progress.clone(),
                stop.clone(),
            )));
            tokio::spawn(d.clone().run(
                sub_seed(seed, "sim-driver", 1),
                builds.to_vec(),
                stop_driver,
            ))
        });
        let mut faults = Faults {
            lab: self.lab.clone(),
            api: api.clone(),
            rng: StdRng::seed_from_u64(sub_seed(seed, "faults", 0)),
            clock,
            hook_ms: self.scenario.hook_ms,
            step_killers: BTreeMap::new(),
            kills_at_steps: Arc::default(),
        };
        let events = run_schedule(&mut faults, &self.scenario, self.duration_s, start_us).await?;
        faults.stop_step_killers();
        let _ = stop_driver_tx.send(true);
        self.lab.lock().await.heal_all()?;
        let faults_end_us = clock.now_us();
        let _ = driver.await;
        // The operator resumes whatever it paused before it ends.
        let _ = operator.await;
        if let Some(d) = sim_driver {
            let _ = d.await;
        }
        let log = self.driver.log.lock().unwrap().clone();
        let goal = log.deploys.last().cloned().unwrap_or_else(|| first.to_string());
        let sim_goal =
            self.sim.as_ref().and_then(|(d, _)| d.log.lock().unwrap().deploys.last().cloned());

        // Convergence: until every host settled on the goal, or the bound.
        let bound_us = (self.scenario.convergence_bound_s * 1e6) as u64;
        loop {
            let done = progress.lock().unwrap().last().is_some_and(|s| {
                s.t_us > faults_end_us && workload::settled(&s.rows, &goal, self.hosts.len())
            });
            let sim_done = match (&self.sim, &sim_goal) {
                (Some((_, hosts)), Some(g)) => {
                    sim_progress.lock().unwrap().last().is_some_and(|s| {
                        s.t_us > faults_end_us && workload::settled(&s.rows, g, hosts.len())
                    })
                }
                _ => true,
            };
            if (done && sim_done) || clock.now_us() > faults_end_us + bound_us {
                break;
            }
            tokio::time::sleep(workload::PROGRESS_EVERY).await;
        }
        let _ = stop_tx.send(true);
        for t in tasks {
            let _ = t.await;
        }
        let kills_at_steps = faults.kills_at_steps.lock().unwrap().clone();
        let status = status.lock().unwrap().clone();
        let progress = progress.lock().unwrap().clone();
        let sim_progress = sim_progress.lock().unwrap().clone();
        Ok(Window {
            start_us,
            faults_end_us,
            events,
            goal,
            status,
            progress,
            kills_at_steps,
            sim_goal,
            sim_progress,
        })
    }

    /// Durability's premise: every node killed and restarted at once.
    async fn full_restart(&self) -> Result<(), RunError> {
        let mut lab = self.lab.lock().await;
        for id in lab.ids() {
            lab.kill_node(id);
        }
        for id in lab.ids() {
            lab.restart_node(id)?;
        }
        lab.cluster
            .wait_leader(&lab.ids(), RESTART_LEADER_WAIT)
            .await
            .map_err(|e| RunError::Harness(format!("after the full restart: {e:#}")))?;
        Ok(())
    }

    /// The hooks' journals and what each host has under its builds directory.
    async fn collect_disk(&self) -> (Vec<JournalEntry>, Vec<HostBuilds>) {
        let lab = self.lab.lock().await;
        let mut journal = Vec::new();
        let mut host_builds = Vec::new();
        for a in &lab.agents {
            let host = &a.agent.spec.hostname;
            let text = std::fs::read_to_string(&a.journal).unwrap_or_default();
            journal.extend(parse_journal(host, &text, self.epoch_ns));
            host_builds.push(scan_builds(host, &a.agent.spec.root.join("builds")));
        }
        (journal, host_builds)
    }

    /// Every checker's verdict, and the report.
    #[allow(clippy::too_many_arguments)]
    async fn judge(
        &self,
        opts: &RunOptions,
        first: &str,
        w: &Window,
        ops: &[Op],
        finals: &Finals,
        journal: &[JournalEntry],
        host_builds: &[HostBuilds],
        timing: Timing,
    ) -> Report {
        let s = &self.scenario;
        let hooks = checkers::hook_intervals(journal, timing.run_end_us);
        let acts = checkers::host_actions(ops);
        let intervals = match s.parallelism {
            Observation::Spans => checkers::deploy_spans_with(&hooks, &acts),
            Observation::Steps => checkers::steps_in_runs(&hooks, &acts),
        };
        let limits = checkers::Limits::from_history(s.max_parallel as usize, ops);
        let intervals = checkers::without_paused(&intervals, &acts);
        let exempt: BTreeSet<String> = [first.to_string()].into();
        let bound_us = (s.convergence_bound_s * 1e6) as u64;
        let (conv, conv_times) =
            checkers::convergence(&w.progress, &w.goal, &self.hosts, w.faults_end_us, bound_us);
        let log = self.driver.log.lock().unwrap().clone();
        let verdicts: Vec<Verdict> = vec![
            checkers::parallelism_over(&intervals, &limits, &exempt),
            conv,
            checkers::integrity(host_builds, &log.published),
            checkers::durability(ops, &finals.values, &finals.builds, &finals.deploys),
            checkers::linearizable(ops),
            checkers::one_leader_per_term(&w.status),
            checkers::replicas_agree(&finals.by_node),
        ];
        let (links, http_links, swarm): (BTreeMap<LinkClass, ProxyStats>, _, _) = {
            let lab = self.lab.lock().await;
            let slowest = crate::swarm_lab::slowest_download(&w.progress);
            let swarm = lab
                .swarm_report()
                .map(|r| crate::swarm_lab::SwarmReport { slowest_download: slowest, ..r });
            (lab.proxy_stats(), lab.http_stats(), swarm)
        };
        let unreachable: BTreeSet<String> = w
            .progress
            .iter()
            .flat_map(|s| &s.rows)
            .filter(|r| r.state == "UNREACHABLE")
            .map(|r| r.host.clone())
            .collect();
        let mut report = Report::new(
            s,
            self.seed,
            self.duration_s,
            w.events.clone(),
            ops,
            first.to_string(),
            log.deploys,
            w.goal.clone(),
            verdicts,
            recoveries(&w.events, &w.status, ops),
            conv_times,
            links,
            unreachable.into_iter().collect(),
            w.kills_at_steps.clone(),
            timing,
            opts.work_dir.clone(),
        );
        report.swarm = swarm;
        report.http_links = http_links;
        report
    }
}

/// Where the run's phases fell, in microseconds since its start.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct Timing {
    pub window_start_us: u64,
    pub faults_end_us: u64,
    pub restart_at_us: u64,
    pub run_end_us: u64,
}

/// Injects (and undoes) the scenario's faults on schedule until the window ends.
async fn run_schedule(
    faults: &mut Faults,
    scenario: &Scenario,
    duration_s: f64,
    window_start_us: u64,
) -> Result<Vec<FaultEvent>, RunError> {
    // (time in the window, fault index, is_undo)
    let mut plan: Vec<(f64, usize, bool)> = Vec::new();
    for (i, f) in scenario.faults.iter().enumerate() {
        if f.at_s >= duration_s {
            continue;
        }
        plan.push((f.at_s, i, false));
        if let Some(d) = f.for_s
            && f.at_s + d < duration_s
        {
            plan.push((f.at_s + d, i, true));
        }
    }
    plan.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.2.cmp(&b.2)));
    let clock = faults.clock;
    let at = |s: f64| window_start_us + (s * 1e6) as u64;
    let mut events: Vec<FaultEvent> = Vec::new();
    let mut targets: BTreeMap<usize, (Targets, usize)> = BTreeMap::new();
    for (t, i, undo) in plan {
        let wait = at(t).saturating_sub(clock.now_us());
        tokio::time::sleep(Duration::from_micros(wait)).await;
        let fault = &scenario.faults[i].fault;
        if undo {
            if let Some((tg, ev)) = targets.remove(&i) {
                events[ev].failpoint_fired = faults.undo(fault, &tg).await?;
                events[ev].until_ms = Some(clock.now_us().saturating_sub(window_start_us) / 1000);
            }
            continue;
        }
        let injected_us = clock.now_us();
        let (tg, leader) = faults.inject(fault).await?;
        let names = match &tg {
            Targets::Nodes(n) => n.iter().map(|n| format!("node {n}")).collect(),
            Targets::Agents(a) => a.iter().map(|a| format!("host-{}", a + 1)).collect(),
            Targets::BadPeer(i) => vec![format!("bad-peer-{}", i + 1)],
            Targets::Sim(_) => vec!["simagents".to_string()],
            Targets::None => Vec::new(),
        };
        let hits_leader =
            matches!(&tg, Targets::Nodes(n) if leader.is_some_and(|l| n.contains(&l)));
        events.push(FaultEvent {
            at_ms: injected_us.saturating_sub(window_start_us) / 1000,
            at_us: injected_us,
            until_ms: None,
            label: fault.label(),
            targets: names,
            leader_before: leader,
            hits_leader,
            failpoint_fired: None,
            sim_hit: match &tg {
                Targets::Sim(hit) => Some(*hit),
                _ => None,
            },
        });
        targets.insert(i, (tg, events.len() - 1));
    }
    let end = at(duration_s);
    tokio::time::sleep(Duration::from_micros(end.saturating_sub(clock.now_us()))).await;
    for e in &mut events {
        if e.until_ms.is_none() {
            e.until_ms = Some((duration_s * 1000.0) as u64);
        }
    }
    Ok(events)
}

/// The state after the full restart.
struct Finals {
    values: BTreeMap<String, Option<String>>,
    by_node: BTreeMap<u64, BTreeMap<String, Option<String>>>,
    builds: BTreeSet<String>,
    deploys: BTreeSet<String>,
}

/// After the full restart: each register read (linearizably, and recorded: the history's last
/// reads), each node's own copy once it caught up, and which acknowledged creations exist.
/// With `config`, the deploy stage's setting the operator writes is a register too.
async fn final_state(
    api: &Api,
    rec: &Recorder,
    keys: u32,
    config: bool,
) -> Result<Finals, RunError> {
    // (register key, stage path, field)
    let mut registers: Vec<(String, String, &str)> = (1..=keys)
        .map(|k| {
            let path = format!("/v1/envs/{}/{}", workload::ENV, workload::register_stage(k));
            (workload::register_key(k), path, "description")
        })
        .collect();
    if config {
        let path = format!("/v1/envs/{}/{}", workload::ENV, workload::STAGE);
        registers.push((crate::actions::config_key(), path, crate::actions::CONFIG_FIELD));
    }
    let mut values = BTreeMap::new();
    for (key, path, field) in &registers {
        let invoke_us = rec.clock.now_us();
        let v = api.until_ok("reading a register", reqwest::Method::GET, path, None).await?;
        let value = v[*field].as_str().map(str::to_string);
        rec.record(Op {
            process: 0,
            node: 0,
            kind: OpKind::Read { key: key.clone(), value: value.clone() },
            invoke_us,
            complete_us: rec.clock.now_us(),
            outcome: crate::history::Outcome::Ok,
            error: None,
        });
        values.insert(key.clone(), value);
    }
    let ops = rec.ops();
    // Every node applies at least what the leader had when the registers were read, then
    // answers from its own state.
    let target = leader_applied(api).await;
    let deadline = Instant::now() + CATCH_UP_WAIT;
    let mut by_node = BTreeMap::new();
    for n in api.nodes() {
        loop {
            let a =
                api.call(n, reqwest::Method::GET, "/v1/cluster", None, workload::OP_TIMEOUT).await;
            let applied = match &a {
                workload::Answer::Ok(v) => v["appliedIndex"].as_u64().unwrap_or(0),
                _ => 0,
            };
            if applied >= target || Instant::now() > deadline {
                break;
            }
            tokio::time::sleep(workload::RETRY_PAUSE).await;
        }
        let mut m = BTreeMap::new();
        for (key, path, field) in &registers {
            let path = format!("{path}?stale=true");
            if let workload::Answer::Ok(v) =
                api.call(n, reqwest::Method::GET, &path, None, workload::OP_TIMEOUT).await
            {
                m.insert(key.clone(), v[*field].as_str().map(str::to_string));
            }
        }
        by_node.insert(n, m);
    }
    let mut builds = BTreeSet::new();
    let mut deploys = BTreeSet::new();
    for op in ops.iter().filter(|o| o.outcome == crate::history::Outcome::Ok) {
        match &op.kind {
            OpKind::CreateBuild { id: Some(id) }
                if api.get_opt("reading a build", &format!("/v1/builds/{id}")).await?.is_some() =>
            {
                builds.insert(id.clone());
            }
            kind => {
                if let Some(id) = kind.created_deploy()
                    && api
                        .get_opt("reading a deploy", &format!("/v1/deploys/{id}"))
                        .await?
                        .is_some()
                {
                    deploys.insert(id.to_string());
                }
            }
        }
    }
    Ok(Finals { values, by_node, builds, deploys })
}

async fn leader_applied(api: &Api) -> u64 {
    for n in api.nodes() {
        if let workload::Answer::Ok(v) =
            api.call(n, reqwest::Method::GET, "/v1/cluster", None, workload::OP_TIMEOUT).await
            && v["state"] == "Leader"
        {
            return v["appliedIndex"].as_u64().unwrap_or(0);
        }
    }
    0
}

/// Archives (`<env>-<id>.<ext>`, verified downloads only: partial ones end in `.part`) and
/// extracted trees (`<id>/` with its `<id>.extracted` marker) under a host's builds directory.
fn scan_builds(host: &str, dir: &Path) -> HostBuilds {
    let mut out = HostBuilds { host: host.to_string(), ..HostBuilds::default() };
    let Ok(entries) = std::fs::read_dir(dir) else { return out };
    let prefix = format!("{}-", workload::ENV);
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let path = e.path();
        if path.is_file()
            && let Some(rest) = name.strip_prefix(&prefix)
            && let Some(id) = [".tar.gz", ".tgz", ".tar.zst", ".tar", ".zip"]
                .iter()
                .find_map(|ext| rest.strip_suffix(ext))
            && let Ok(bytes) = std::fs::read(&path)
        {
            out.archives.push((id.to_string(), blake3::hash(&bytes).to_hex().to_string()));
        } else if path.is_dir() && dir.join(format!("{name}.extracted")).exists() {
            let mut files = BTreeMap::new();
            walk(&path, &path, &mut files);
            out.trees.push((name, files));
        }
    }
    out
}

fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, String>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for e in entries.flatten() {
        let p = e.path();
        let Ok(meta) = std::fs::symlink_metadata(&p) else { continue };
        if meta.is_dir() {
            walk(root, &p, out);
        } else if meta.is_file()
            && let Ok(bytes) = std::fs::read(&p)
            && let Ok(rel) = p.strip_prefix(root)
        {
            out.insert(rel.display().to_string(), blake3::hash(&bytes).to_hex().to_string());
        }
    }
}

/// For each fault that hit the leader: when a new leader appeared and when writes were
/// acknowledged again.
fn recoveries(events: &[FaultEvent], status: &[StatusSample], ops: &[Op]) -> Vec<Recovery> {
    events
        .iter()
        .filter(|e| e.hits_leader)
        .map(|e| {
            let term_before =
                status.iter().filter(|s| s.t_us <= e.at_us).map(|s| s.term).max().unwrap_or(0);
            let every_node = e.targets.len() >= 3;
            let leader_ms = status
                .iter()
                .filter(|s| s.t_us >= e.at_us && s.state == "Leader")
                .filter(|s| s.term > term_before || every_node)
                .map(|s| (s.t_us - e.at_us) / 1000)
                .min();
            let writes_ms = ops
                .iter()
                .filter(|o| {
                    o.invoke_us >= e.at_us
                        && o.outcome == crate::history::Outcome::Ok
                        && !matches!(o.kind, OpKind::Read { .. })
                })
                .map(|o| (o.complete_us - e.at_us) / 1000)
                .min();
            Recovery { fault: e.label.clone(), at_ms: e.at_ms, leader_ms, writes_ms }
        })
        .collect()
}
