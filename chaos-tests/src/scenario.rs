//! Scenarios: named fault schedules with their workload settings, defined in TOML files an SRE
//! can copy and change (`chaos-tests/scenarios/*.toml`).
//!
//! ```toml
//! name = "leader-kill-mid-deploy"
//! description = "kill -9 the leader while a rolling deploy is under way"
//! seed = 1
//! duration_s = 12.0
//!
//! [[faults]]
//! at_s = 2.0
//! fault = "kill-node"
//! node = "leader"
//! for_s = 3.0        # then restart it; without for_s it comes back when the window ends
//! ```

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::lab::LinkClass;
use crate::proxy::LinkFaults;

/// Defaults, each overridable per scenario.
pub const DEFAULT_AGENTS: usize = 4;
pub const DEFAULT_MAX_PARALLEL: u32 = 2;
pub const DEFAULT_HOOK_MS: u64 = 300;
pub const DEFAULT_CONVERGENCE_BOUND_S: f64 = 60.0;
pub const DEFAULT_REGISTER_WORKERS: u32 = 3;
pub const DEFAULT_REGISTER_KEYS: u32 = 3;
pub const DEFAULT_SIM_MAX_PARALLEL: u32 = 10;
pub const DEFAULT_SIM_STEP_MS: u64 = 20;
pub const DEFAULT_ACTION_EVERY_S: f64 = 2.0;
pub const DEFAULT_HOLD_S: f64 = 1.0;

/// One scenario file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    pub name: String,
    pub description: String,
    /// Seeds the fault proxies, target choices and the workload.
    pub seed: u64,
    /// Length of the fault window, in seconds; the workload runs through it.
    pub duration_s: f64,
    #[serde(default = "default_agents")]
    pub agents: usize,
    /// The deploy stage's `maxParallel`.
    #[serde(default = "default_max_parallel")]
    pub max_parallel: u32,
    /// How long each hook takes.
    #[serde(default = "default_hook_ms")]
    pub hook_ms: u64,
    /// How parallelism is observed: `spans` (a host's whole deploy, first hook start to last
    /// hook end; sound only while no agent's lease can expire mid-deploy) or `steps` (each
    /// hook run).
    #[serde(default)]
    pub parallelism: Observation,
    /// How long after the faults end every host must have settled.
    #[serde(default = "default_bound")]
    pub convergence_bound_s: f64,
    /// Clients reading and writing the registers (stage descriptions).
    #[serde(default = "default_workers")]
    pub register_workers: u32,
    #[serde(default = "default_keys")]
    pub register_keys: u32,
    /// The coordinators' `TT_LEASE_TTL_MS`, if not their default.
    #[serde(default)]
    pub lease_ttl_ms: Option<u64>,
    /// The agents' `lease_ms`, if not their default (must be below `lease_ttl_ms`).
    #[serde(default)]
    pub agent_lease_ms: Option<u64>,
    /// The agents' `process_timeout` (how long one hook run may take, in seconds), if not
    /// their default: what stops a hanging hook.
    #[serde(default)]
    pub hook_timeout_s: Option<u64>,
    /// The coordinators' `TT_SNAPSHOT_EVERY_ENTRIES`, if not their default (small values make
    /// snapshots happen within a run).
    #[serde(default)]
    pub snapshot_every_entries: Option<u64>,
    /// The coordinators' `TT_KEEP_ENTRIES_AFTER_SNAPSHOT`, if not their default (small values
    /// make a lagging follower need a snapshot).
    #[serde(default)]
    pub keep_entries_after_snapshot: Option<u64>,
    /// The coordinators' `TT_PURGE_BATCH_ENTRIES`, if not their default: the log is purged
    /// only once this many entries can go at once, so with the default (256) a short run never
    /// purges, and a lagging follower is sent entries instead of a snapshot.
    #[serde(default)]
    pub purge_batch_entries: Option<u64>,
    /// Whether the agents fetch `tt://blob/` builds through the blob swarm (each behind a
    /// proxy of its own, link class `swarm`) rather than from the coordinators.
    #[serde(default = "default_swarm")]
    pub swarm: bool,
    /// Incompressible bytes added to every build (`payload.bin`), so that a download spans
    /// many swarm pieces (256 KiB each); 0 keeps the builds a few KiB.
    #[serde(default)]
    pub build_payload_bytes: u64,
    /// What the operator does besides rolling deploys and register traffic (`[workload]`);
    /// without the table, only new-build deploys.
    #[serde(default)]
    pub workload: WorkloadSpec,
    /// Simulated hosts (one extra process, `chaos simagents`) in a stage of their own; 0: none.
    #[serde(default)]
    pub sim_hosts: usize,
    /// The simulated stage's `maxParallel`.
    #[serde(default = "default_sim_max_parallel")]
    pub sim_max_parallel: u32,
    /// How long each simulated deploy step takes.
    #[serde(default = "default_sim_step_ms")]
    pub sim_step_ms: u64,
    #[serde(default)]
    pub faults: Vec<ScheduledFault>,
}

fn default_agents() -> usize {
    DEFAULT_AGENTS
}
fn default_max_parallel() -> u32 {
    DEFAULT_MAX_PARALLEL
}
fn default_hook_ms() -> u64 {
    DEFAULT_HOOK_MS
}
fn default_bound() -> f64 {
    DEFAULT_CONVERGENCE_BOUND_S
}
fn default_swarm() -> bool {
    true
}
fn default_workers() -> u32 {
    DEFAULT_REGISTER_WORKERS
}
fn default_keys() -> u32 {
    DEFAULT_REGISTER_KEYS
}
fn default_sim_max_parallel() -> u32 {
    DEFAULT_SIM_MAX_PARALLEL
}
fn default_sim_step_ms() -> u64 {
    DEFAULT_SIM_STEP_MS
}
fn default_build_weight() -> u32 {
    1
}
fn default_action_every() -> f64 {
    DEFAULT_ACTION_EVERY_S
}
fn default_hold() -> f64 {
    DEFAULT_HOLD_S
}

/// The operator's workload beyond register traffic (the `[workload]` table):
///
/// ```toml
/// [workload]
/// next_deploy = { build = 2, rollback = 1, promote = 1 }  # what follows a settled deploy
/// actions = { pause-stage = 1, pause-host = 1, reset-host = 1, config = 1, max-parallel = 1 }
/// action_every_s = 2.0   # one action per 0.5x..1.5x this; kinds by weight, in rounds
/// hold_s = 1.0           # how long a stage or host stays paused before it is resumed
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkloadSpec {
    #[serde(default)]
    pub next_deploy: DeployMix,
    #[serde(default)]
    pub actions: ActionMix,
    #[serde(default = "default_action_every")]
    pub action_every_s: f64,
    #[serde(default = "default_hold")]
    pub hold_s: f64,
}

impl Default for WorkloadSpec {
    fn default() -> Self {
        WorkloadSpec {
            next_deploy: DeployMix::default(),
            actions: ActionMix::default(),
            action_every_s: DEFAULT_ACTION_EVERY_S,
            hold_s: DEFAULT_HOLD_S,
        }
    }
}

/// Weights of what the deploy driver starts once a deploy settled: a deploy of a new build, a
/// rollback to the previous deploy, or a promotion of a new build from the staging stage.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeployMix {
    #[serde(default = "default_build_weight")]
    pub build: u32,
    #[serde(default)]
    pub rollback: u32,
    #[serde(default)]
    pub promote: u32,
}

impl Default for DeployMix {
    fn default() -> Self {
        DeployMix { build: 1, rollback: 0, promote: 0 }
    }
}

/// Weights of the operator actions issued beside the deploys (all 0: none).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ActionMix {
    /// PAUSE the deploy stage's deploy, RESUME it `hold_s` later.
    #[serde(default)]
    pub pause_stage: u32,
    /// Pause one host (`PAUSED_BY_USER`), set it back to `NORMAL` `hold_s` later.
    #[serde(default)]
    pub pause_host: u32,
    /// RESET one host: it deploys the current deploy again from the start.
    #[serde(default)]
    pub reset_host: u32,
    /// Change the deploy stage's settings (`chatroom`, `emailRecipients`).
    #[serde(default)]
    pub config: u32,
    /// Set the deploy stage's `maxParallel` to another value, back to the scenario's
    /// `max_parallel` `hold_s` later.
    #[serde(default)]
    pub max_parallel: u32,
}

impl ActionMix {
    pub fn total(&self) -> u32 {
        self.pause_stage + self.pause_host + self.reset_host + self.config + self.max_parallel
    }
}

/// How the parallelism checker sees a host as deploying.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Observation {
    #[default]
    Spans,
    Steps,
}

/// A fault at an offset into the window, optionally undone `for_s` later. In TOML its fields
/// sit beside the fault's own (`at_s`, `for_s`, `fault = "kill-node"`, `node = "leader"`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ScheduledFault {
    pub at_s: f64,
    /// Undo after this long; without it the fault lasts until the window ends.
    pub for_s: Option<f64>,
    #[serde(flatten)]
    pub fault: Fault,
}

impl<'de> Deserialize<'de> for ScheduledFault {
    // serde's `flatten` cannot deny unknown fields, and a typo in a fault must not pass
    // silently: take the timing out of the table, then parse the rest strictly.
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let mut table = toml::Table::deserialize(d)?;
        let secs = |v: toml::Value, name: &str| match v {
            toml::Value::Float(f) => Ok(f),
            toml::Value::Integer(i) => Ok(i as f64),
            other => Err(D::Error::custom(format!("{name} must be a number, not {other}"))),
        };
        let at_s =
            secs(table.remove("at_s").ok_or_else(|| D::Error::missing_field("at_s"))?, "at_s")?;
        let for_s = table.remove("for_s").map(|v| secs(v, "for_s")).transpose()?;
        let fault = Fault::deserialize(toml::Value::Table(table)).map_err(D::Error::custom)?;
        Ok(ScheduledFault { at_s, for_s, fault })
    }
}

/// Which coordinator nodes a fault hits, chosen when it is injected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum NodeSel {
    Leader,
    /// One node that is not the leader (chosen with the run's seed).
    Follower,
    /// The leader and one follower: two of three.
    Majority,
    All,
    #[serde(rename = "node-1")]
    Node1,
    #[serde(rename = "node-2")]
    Node2,
    #[serde(rename = "node-3")]
    Node3,
}

/// Which agents a fault hits: `"all"`, `"host-N"`, or a number chosen with the run's seed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum AgentSel {
    Count(usize),
    Named(String),
}

/// How a faulty hook misbehaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum HookMode {
    /// Exits 1 at once.
    Fail,
    /// Sleeps until it is stopped.
    Hang,
}

impl HookMode {
    /// What the lab writes into a host's switch file (the hook script reads it).
    pub fn switch_word(self) -> &'static str {
        match self {
            HookMode::Fail => "fail",
            HookMode::Hang => "hang",
        }
    }
}

/// What is done.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "fault", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Fault {
    /// `kill -9`; restarted when undone.
    KillNode { node: NodeSel },
    /// SIGSTOP; SIGCONT when undone.
    PauseNode { node: NodeSel },
    /// Cut from the other nodes both ways.
    IsolateNode { node: NodeSel },
    /// Hears nothing from the other nodes (they still hear it).
    DeafenNode { node: NodeSel },
    /// The other nodes hear nothing from it (it still hears them).
    MuteNode { node: NodeSel },
    /// `kill -9` every node at once; all restarted when undone (at once).
    KillAll,
    /// Cut agents from every coordinator.
    IsolateAgents { agents: AgentSel },
    /// `kill -9` agents; restarted when undone (at once without `for_s`).
    KillAgents { agents: AgentSel },
    /// SIGSTOP agents; SIGCONT when undone.
    PauseAgents { agents: AgentSel },
    /// While in force: `kill -9` the agents once in the middle of every step of every deploy,
    /// restarting them at once.
    KillAgentsAtEveryStep { agents: AgentSel },
    /// Restarts the node with storage failpoints armed (`failpoints = "log-write=enospc@20"`:
    /// the disk fills up after 20 more log writes; see the coordinator's `failpoints.rs`);
    /// restarted without them when undone. With `wipe = true` its data directory is deleted
    /// first (a replaced disk): it rejoins with nothing and catches up from its peers.
    DiskFault {
        node: NodeSel,
        failpoints: String,
        #[serde(default)]
        wipe: bool,
    },
    /// `kill -9` the simulated-agent process (`sim_hosts`); restarted when undone (at the
    /// window's end without `for_s`): its hosts ping again under the same names with no local
    /// state.
    KillSim,
    /// SIGSTOP the simulated-agent process; SIGCONT when undone.
    PauseSim,
    /// Make the agents' deploy hooks fail (exit 1) or hang (until the agent's
    /// `process_timeout`, `hook_timeout_s`, stops them) from their next run on; they work again
    /// when undone. The agents report the failure; the hosts stop on it.
    HookFault { agents: AgentSel, mode: HookMode },
    /// Degrade every link of a class (delay, loss, duplication, reordering, a bandwidth cap,
    /// corruption: `link = { delay_ms = 50, drop_rate = 0.1 }`); perfect again when undone.
    Link { class: LinkClass, link: LinkFaults },
    /// Start a bad peer (`chaos bad-peer`) that the tracker lists for every build: it serves
    /// corrupt pieces (`mode = "flip-byte"` or `"wrong-piece"`), advertises pieces it lacks
    /// (`"lie-about-pieces"`) or crawls (`"crawl"`, uploads capped at `upload_bytes_per_s`);
    /// killed when undone. Needs `swarm`.
    BadPeer {
        mode: crate::badpeer::BadPeerMode,
        #[serde(default)]
        upload_bytes_per_s: Option<u64>,
    },
}

impl Fault {
    /// Short human label.
    pub fn label(&self) -> String {
        let sel = |n: &NodeSel| serde_json::to_value(n).unwrap().as_str().unwrap().to_string();
        let agents = |a: &AgentSel| match a {
            AgentSel::Count(n) => format!("{n} agent(s)"),
            AgentSel::Named(s) => s.clone(),
        };
        match self {
            Fault::KillNode { node } => format!("kill -9 {}", sel(node)),
            Fault::PauseNode { node } => format!("SIGSTOP {}", sel(node)),
            Fault::IsolateNode { node } => format!("isolate {}", sel(node)),
            Fault::DeafenNode { node } => format!("deafen {} (one-way)", sel(node)),
            Fault::MuteNode { node } => format!("mute {} (one-way)", sel(node)),
            Fault::KillAll => "kill -9 all nodes".into(),
            Fault::DiskFault { node, failpoints, wipe } => {
                let wiped = if *wipe { " (data wiped)" } else { "" };
                format!("disk fault on {}{wiped}: {failpoints}", sel(node))
            }
            Fault::IsolateAgents { agents: a } => format!("isolate {}", agents(a)),
            Fault::KillAgents { agents: a } => format!("kill -9 {}", agents(a)),
            Fault::PauseAgents { agents: a } => format!("SIGSTOP {}", agents(a)),
            Fault::KillAgentsAtEveryStep { agents: a } => {
                format!("kill -9 {} at every step", agents(a))
            }
            Fault::KillSim => "kill -9 the simulated agents".into(),
            Fault::PauseSim => "SIGSTOP the simulated agents".into(),
            Fault::HookFault { agents: a, mode } => {
                format!("hooks {} on {}", mode.switch_word(), agents(a))
            }
            Fault::Link { class, link: faults } => {
                let mut parts = Vec::new();
                if faults.delay_ms > 0 || faults.jitter_ms > 0 {
                    parts.push(format!("delay {}±{} ms", faults.delay_ms, faults.jitter_ms));
                }
                for (name, p) in [
                    ("drop", faults.drop_rate),
                    ("duplicate", faults.duplicate_rate),
                    ("reorder", faults.reorder_rate),
                    ("corrupt", faults.corrupt_rate),
                ] {
                    if p > 0.0 {
                        parts.push(format!("{name} {:.0}%", p * 100.0));
                    }
                }
                if let Some(b) = faults.bandwidth_bytes_per_s {
                    parts.push(format!("cap {} KiB/s", b / 1024));
                }
                format!("{class:?} links: {}", parts.join(", ")).to_lowercase()
            }
            Fault::BadPeer { mode, upload_bytes_per_s } => match upload_bytes_per_s {
                Some(b) => format!("bad peer: {} (upload {} KiB/s)", mode.label(), b / 1024),
                None => format!("bad peer: {}", mode.label()),
            },
        }
    }
}

/// Errors loading scenarios.
#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path} is not a valid scenario: {message}")]
    Invalid { path: PathBuf, message: String },
    #[error("no scenario named {name:?} in {dir} (try `chaos list`)")]
    NotFound { name: String, dir: PathBuf },
}

/// The scenarios shipped with the crate.
pub fn default_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios")
}

/// Parses and validates one scenario.
pub fn parse(path: &Path, text: &str) -> Result<Scenario, ScenarioError> {
    let invalid = |message: String| ScenarioError::Invalid { path: path.to_path_buf(), message };
    let s: Scenario = toml::from_str(text).map_err(|e| invalid(e.to_string()))?;
    if s.duration_s <= 0.0 || s.agents == 0 || s.max_parallel == 0 {
        return Err(invalid("duration_s, agents and max_parallel must be above 0".into()));
    }
    let w = &s.workload;
    if w.next_deploy.build + w.next_deploy.rollback + w.next_deploy.promote == 0 {
        return Err(invalid("[workload] next_deploy needs a weight above 0".into()));
    }
    if w.action_every_s <= 0.0 || w.hold_s < 0.0 {
        return Err(invalid("[workload] action_every_s must be above 0, hold_s not below".into()));
    }
    if s.sim_hosts > 0 && s.sim_max_parallel == 0 {
        return Err(invalid("sim_max_parallel must be above 0".into()));
    }
    if let (Some(agent), Some(ttl)) = (s.agent_lease_ms, s.lease_ttl_ms)
        && agent >= ttl
    {
        return Err(invalid(format!(
            "agent_lease_ms ({agent}) must be below lease_ttl_ms ({ttl})"
        )));
    }
    for f in &s.faults {
        if f.at_s < 0.0 || f.at_s > s.duration_s || f.for_s.is_some_and(|d| d <= 0.0) {
            return Err(invalid(format!(
                "fault {:?} at {} s must start within the window (0..{} s) and last > 0 s",
                f.fault.label(),
                f.at_s,
                s.duration_s
            )));
        }
        if let Fault::Link { link: faults, .. } = &f.fault {
            faults.validate().map_err(|e| invalid(e.to_string()))?;
        }
        if matches!(f.fault, Fault::BadPeer { .. }) && !s.swarm {
            return Err(invalid("a bad-peer fault needs swarm = true".into()));
        }
        if matches!(f.fault, Fault::KillSim | Fault::PauseSim) && s.sim_hosts == 0 {
            return Err(invalid(format!("{:?} needs sim_hosts above 0", f.fault.label())));
        }
        // A simulated host whose lease expired while the process was stopped waits to be
        // admitted again with its run of steps still open in the file, so the parallelism
        // checker would count it while it holds no slot: keep the pause within the lease.
        if let (Fault::PauseSim, Some(ttl)) = (&f.fault, s.lease_ttl_ms)
            && f.for_s.is_none_or(|d| d * 1000.0 >= ttl as f64)
        {
            return Err(invalid(format!(
                "pause-sim must be undone (for_s) within lease_ttl_ms ({ttl} ms)"
            )));
        }
        if let Fault::DiskFault { failpoints, .. } = &f.fault {
            coordinator::failpoints::parse(failpoints).map_err(|e| invalid(e.to_string()))?;
        }
    }
    Ok(s)
}

/// Every scenario in `dir`, sorted by name.
pub fn load_all(dir: &Path) -> Result<Vec<Scenario>, ScenarioError> {
    let read = |path: &Path| -> Result<String, ScenarioError> {
        std::fs::read_to_string(path)
            .map_err(|source| ScenarioError::Read { path: path.to_path_buf(), source })
    };
    let entries = std::fs::read_dir(dir)
        .map_err(|source| ScenarioError::Read { path: dir.to_path_buf(), source })?;
    let mut out = Vec::new();
    for e in entries.flatten() {
        let path = e.path();
        if path.extension().is_some_and(|x| x == "toml") {
            out.push(parse(&path, &read(&path)?)?);
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// The scenario called `name` in `dir`.
pub fn load(dir: &Path, name: &str) -> Result<Scenario, ScenarioError> {
    load_all(dir)?
        .into_iter()
        .find(|s| s.name == name)
        .ok_or_else(|| ScenarioError::NotFound { name: name.into(), dir: dir.to_path_buf() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_scenarios_parse_and_have_unique_names() {
        let all = load_all(&default_dir()).unwrap();
        assert!(all.len() >= 6, "{} scenarios", all.len());
        let mut names: Vec<&str> = all.iter().map(|s| s.name.as_str()).collect();
        names.dedup();
        assert_eq!(names.len(), all.len(), "names are unique");
        for s in &all {
            let file = default_dir().join(format!("{}.toml", s.name));
            assert!(file.exists(), "{} lives in a file named after it", s.name);
        }
    }

    #[test]
    fn bad_peer_faults_parse_and_need_the_swarm() {
        let text = r#"
            name = "x"
            description = "d"
            seed = 3
            duration_s = 10.0
            build_payload_bytes = 1024
            [[faults]]
            at_s = 0.0
            fault = "bad-peer"
            mode = "crawl"
            upload_bytes_per_s = 8192
            [[faults]]
            at_s = 1.0
            fault = "link"
            class = "swarm"
            link = { drop_rate = 0.1 }
        "#;
        let s = parse(Path::new("x.toml"), text).unwrap();
        assert!(s.swarm, "the swarm is on by default");
        assert_eq!(s.build_payload_bytes, 1024);
        assert_eq!(
            s.faults[0].fault,
            Fault::BadPeer {
                mode: crate::badpeer::BadPeerMode::Crawl,
                upload_bytes_per_s: Some(8192)
            }
        );
        assert_eq!(s.faults[0].fault.label(), "bad peer: crawl (upload 8 KiB/s)");
        assert_eq!(s.faults[1].fault.label(), "swarm links: drop 10%");
        let off = format!("swarm = false\n{text}");
        let err = parse(Path::new("x.toml"), &off).unwrap_err().to_string();
        assert!(err.contains("needs swarm = true"), "{err}");
        let typo = text.replace("\"crawl\"", "\"sulk\"");
        assert!(parse(Path::new("x.toml"), &typo).is_err());
    }

    #[test]
    fn the_workload_table_defaults_to_new_build_deploys_only() {
        let head = "name = \"x\"\ndescription = \"d\"\nseed = 1\nduration_s = 5.0\n";
        let s = parse(Path::new("x.toml"), head).unwrap();
        assert_eq!(s.workload, WorkloadSpec::default());
        assert_eq!((s.workload.next_deploy.build, s.workload.actions.total()), (1, 0));
        assert_eq!(s.sim_hosts, 0);
        let text = format!(
            "{head}sim_hosts = 50\n[workload]\nnext_deploy = {{ rollback = 2 }}\nactions = {{ pause-host = 3, config = 1 }}\nhold_s = 0.5\n"
        );
        let s = parse(Path::new("x.toml"), &text).unwrap();
        let w = &s.workload;
        assert_eq!((w.next_deploy.build, w.next_deploy.rollback, w.next_deploy.promote), (1, 2, 0));
        assert_eq!((w.actions.pause_host, w.actions.config, w.actions.total()), (3, 1, 4));
        assert_eq!((w.hold_s, w.action_every_s), (0.5, DEFAULT_ACTION_EVERY_S));
        assert_eq!((s.sim_hosts, s.sim_max_parallel), (50, DEFAULT_SIM_MAX_PARALLEL));
        let typo = text.replace("pause-host", "pause-hosts");
        assert!(parse(Path::new("x.toml"), &typo).is_err(), "unknown actions are refused");
        let nothing = format!("{head}[workload]\nnext_deploy = {{ build = 0 }}\n");
        assert!(parse(Path::new("x.toml"), &nothing).is_err(), "the driver needs something to do");
    }

    #[test]
    fn faults_parse_and_bad_ones_are_refused() {
        let text = r#"
            name = "x"
            description = "d"
            seed = 3
            duration_s = 10.0
            [[faults]]
            at_s = 1.0
            for_s = 2.0
            fault = "kill-node"
            node = "leader"
            [[faults]]
            at_s = 2.0
            fault = "link"
            class = "raft"
            link = { delay_ms = 50, drop_rate = 0.1 }
            [[faults]]
            at_s = 3.0
            fault = "isolate-agents"
            agents = 2
            [[faults]]
            at_s = 4.0
            fault = "kill-agents"
            agents = "host-1"
            [[faults]]
            at_s = 5.0
            fault = "disk-fault"
            node = "follower"
            wipe = true
            failpoints = "snapshot-install=abort"
        "#;
        let s = parse(Path::new("x.toml"), text).unwrap();
        assert_eq!(s.faults[0].fault, Fault::KillNode { node: NodeSel::Leader });
        assert_eq!(s.faults[0].for_s, Some(2.0));
        let Fault::Link { class, link: faults } = &s.faults[1].fault else { panic!() };
        assert_eq!((*class, faults.delay_ms, faults.drop_rate), (LinkClass::Raft, 50, 0.1));
        assert_eq!(s.faults[2].fault, Fault::IsolateAgents { agents: AgentSel::Count(2) });
        assert_eq!(
            s.faults[3].fault,
            Fault::KillAgents { agents: AgentSel::Named("host-1".into()) }
        );
        let Fault::DiskFault { wipe, .. } = &s.faults[4].fault else { panic!() };
        assert!(wipe, "a disk fault can wipe the node's data first");
        assert_eq!(s.agents, DEFAULT_AGENTS);
        assert_eq!(s.faults[1].fault.label(), "raft links: delay 50±0 ms, drop 10%");

        let late = text.replace("at_s = 4.0", "at_s = 40.0");
        assert!(parse(Path::new("x.toml"), &late).is_err());
        let bad_rate = text.replace("drop_rate = 0.1", "drop_rate = 1.1");
        assert!(parse(Path::new("x.toml"), &bad_rate).is_err());
        let unknown = text.replace("node = \"leader\"", "node = \"boss\"");
        assert!(parse(Path::new("x.toml"), &unknown).is_err());
        let typo = text.replace("node = \"leader\"", "node = \"leader\"\nnodes = 2");
        assert!(parse(Path::new("x.toml"), &typo).is_err(), "unknown fields are refused");
        let typo = text.replace("delay_ms = 50", "delay = 50");
        assert!(parse(Path::new("x.toml"), &typo).is_err());
        let lease = format!("lease_ttl_ms = 1000\nagent_lease_ms = 2000\n{text}");
        assert!(parse(Path::new("x.toml"), &lease).is_err());
        let sim = "name = \"x\"\ndescription = \"d\"\nseed = 1\nduration_s = 9.0\n[[faults]]\nat_s = 1.0\nfor_s = 2.0\nfault = \"kill-sim\"\n[[faults]]\nat_s = 5.0\nfor_s = 2.0\nfault = \"pause-sim\"\n";
        assert!(parse(Path::new("x.toml"), sim).is_err(), "sim faults need simulated hosts");
        let s = parse(Path::new("x.toml"), &format!("sim_hosts = 5\n{sim}")).unwrap();
        assert_eq!((&s.faults[0].fault, &s.faults[1].fault), (&Fault::KillSim, &Fault::PauseSim));
        let short_lease = format!("sim_hosts = 5\nlease_ttl_ms = 1500\n{sim}");
        assert!(parse(Path::new("x.toml"), &short_lease).is_err(), "a pause past the lease");
    }
}
