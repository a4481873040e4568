//! A run's report: what was injected, what the workload did, a verdict per invariant,
//! recovery times; as JSON for machines and as a short text for people.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::checkers::{Status, Verdict};
use crate::history::{Op, OpKind, Outcome};
use crate::lab::LinkClass;
use crate::proxy::ProxyStats;
use crate::run::Timing;
use crate::scenario::Scenario;
use crate::tcp_proxy::TcpProxyStats;

/// One injected fault.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FaultEvent {
    /// Offset into the window.
    pub at_ms: u64,
    /// The same instant on the run's clock.
    pub at_us: u64,
    /// When it was undone (the window's end if not before).
    pub until_ms: Option<u64>,
    pub label: String,
    /// What it hit (`node 2`, `host-3`).
    pub targets: Vec<String>,
    pub leader_before: Option<u64>,
    /// Whether the leader was among the nodes it hit.
    pub hits_leader: bool,
    /// For a disk fault: how often its failpoints fired on the nodes it hit (from their logs,
    /// read when it is undone). Zero means the fault was armed but never exercised.
    #[serde(default)]
    pub failpoint_fired: Option<u64>,
    /// For a fault on the simulated-agent process: what it hit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sim_hit: Option<SimHit>,
}

/// What a fault on the simulated-agent process hit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SimHit {
    /// The process was not running: the fault never fired.
    NotRunning,
    /// The process, with this many simulated hosts mid-deploy (runs of steps open in its last
    /// flush of the intervals file).
    Process { hosts_mid_deploy: u64 },
}

/// How quickly the cluster came back from a fault that hit its leader.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Recovery {
    pub fault: String,
    pub at_ms: u64,
    /// Until a leader was back (status samples every 200 ms): a node of a newer term calling
    /// itself leader, or, when the fault hit every node, any node (a restarted leader may keep
    /// its term: openraft re-establishes a committed vote of its own without an election).
    pub leader_ms: Option<u64>,
    /// Until the first write invoked after the fault was acknowledged.
    pub writes_ms: Option<u64>,
}

/// Counts of recorded operations.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpCounts {
    pub total: u64,
    pub ok: u64,
    pub failed: u64,
    pub unknown: u64,
    pub reads: u64,
    pub writes: u64,
    pub builds: u64,
    pub deploys: u64,
    /// Acknowledged operations per kind (`OpKind::name`: `rollback`, `pause-stage`, …).
    #[serde(default)]
    pub ok_by_kind: BTreeMap<String, u64>,
}

impl OpCounts {
    fn of(ops: &[Op]) -> OpCounts {
        let mut c = OpCounts::default();
        for o in ops {
            c.total += 1;
            match o.outcome {
                Outcome::Ok => c.ok += 1,
                Outcome::Failed => c.failed += 1,
                Outcome::Unknown => c.unknown += 1,
            }
            match o.kind {
                OpKind::Read { .. } => c.reads += 1,
                OpKind::Write { .. } => c.writes += 1,
                OpKind::CreateBuild { .. } => c.builds += 1,
                OpKind::CreateDeploy { .. } => c.deploys += 1,
                _ => {}
            }
            if o.outcome == Outcome::Ok {
                *c.ok_by_kind.entry(o.kind.name()).or_default() += 1;
            }
        }
        c
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    pub scenario: String,
    pub description: String,
    pub seed: u64,
    pub duration_s: f64,
    /// The command that repeats this run.
    pub command: String,
    pub passed: bool,
    pub violations: u64,
    pub faults: Vec<FaultEvent>,
    pub operations: OpCounts,
    /// The first deploy (every host at once, before the window; exempt from parallelism).
    pub first_deploy: String,
    /// Deploys started in the window, in order; the last is the goal.
    pub deploys: Vec<String>,
    pub goal: String,
    pub verdicts: Vec<Verdict>,
    pub recovery: Vec<Recovery>,
    /// Per host: time from the faults' end until it settled (`None`: never).
    pub convergence_ms: BTreeMap<String, Option<u64>>,
    /// Datagram counters per link class.
    pub links: BTreeMap<LinkClass, ProxyStats>,
    /// What the TCP proxies in front of the nodes' HTTP ports did (coordinator → coordinator
    /// HTTP): connections, bytes, bytes held by cuts.
    #[serde(default)]
    pub http_links: TcpProxyStats,
    /// Hosts the coordinators marked UNREACHABLE at some point (their lease expired).
    pub unreachable_hosts: Vec<String>,
    /// Where the every-step killer struck (`host:STEP`).
    pub agent_kills_at_steps: Vec<String>,
    /// Deploys the simulated stage's driver started in the window (0 without simulated hosts).
    #[serde(default)]
    pub sim_deploys: usize,
    pub timing: Timing,
    /// `/proc/loadavg` at the end (a starved machine explains slow recoveries).
    pub loadavg: String,
    /// The run's files (logs of every process).
    pub work_dir: PathBuf,
    /// What the blob swarm did (with the swarm on): bytes by source, bans, bad peers.
    #[serde(default)]
    pub swarm: Option<crate::swarm_lab::SwarmReport>,
}

impl Report {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        scenario: &Scenario,
        seed: u64,
        duration_s: f64,
        faults: Vec<FaultEvent>,
        ops: &[Op],
        first_deploy: String,
        deploys: Vec<String>,
        goal: String,
        verdicts: Vec<Verdict>,
        recovery: Vec<Recovery>,
        convergence_us: BTreeMap<String, Option<u64>>,
        links: BTreeMap<LinkClass, ProxyStats>,
        unreachable_hosts: Vec<String>,
        agent_kills_at_steps: Vec<String>,
        timing: Timing,
        work_dir: PathBuf,
    ) -> Report {
        let violations = verdicts.iter().map(|v| v.violation_count).sum();
        let passed = verdicts.iter().all(Verdict::passed);
        Report {
            scenario: scenario.name.clone(),
            description: scenario.description.clone(),
            seed,
            duration_s,
            command: repeat_command(&scenario.name, seed, duration_s),
            passed,
            violations,
            faults,
            operations: OpCounts::of(ops),
            deploys: deploys.into_iter().filter(|d| *d != first_deploy).collect(),
            first_deploy,
            goal,
            verdicts,
            recovery,
            convergence_ms: convergence_us
                .into_iter()
                .map(|(h, t)| (h, t.map(|us| us / 1000)))
                .collect(),
            links,
            http_links: TcpProxyStats::default(),
            unreachable_hosts,
            agent_kills_at_steps,
            sim_deploys: 0,
            timing,
            loadavg: std::fs::read_to_string("/proc/loadavg")
                .unwrap_or_default()
                .trim()
                .to_string(),
            work_dir,
            swarm: None,
        }
    }

    /// Adds verdicts (of checks run after the report was made), keeping the totals true.
    pub fn add_verdicts(&mut self, verdicts: Vec<Verdict>) {
        for v in verdicts {
            self.violations += v.violation_count;
            self.passed &= v.passed();
            self.verdicts.push(v);
        }
    }

    /// The summary people read.
    pub fn summary(&self) -> String {
        let mut s = String::new();
        let ms = |v: Option<u64>| v.map_or("never".to_string(), |v| format!("{v} ms"));
        let _ = writeln!(
            s,
            "== {} (seed {}, {:.1} s window) ==\n{}",
            self.scenario, self.seed, self.duration_s, self.description
        );
        let _ = writeln!(s, "faults injected: {}", self.faults.len());
        for f in &self.faults {
            let until =
                f.until_ms.map_or(String::new(), |u| format!(" until +{:.2}s", u as f64 / 1e3));
            let targets = if f.targets.is_empty() {
                String::new()
            } else {
                format!(" → {}", f.targets.join(", "))
            };
            let fired = f.failpoint_fired.map_or(String::new(), |n| match n {
                0 => ", failpoint never fired (the fault was not exercised)".to_string(),
                n => format!(", failpoint fired {n}×"),
            });
            let fired = fired
                + &f.sim_hit.map_or(String::new(), |h| match h {
                    SimHit::NotRunning => ", never fired (the process was not running)".into(),
                    SimHit::Process { hosts_mid_deploy } => {
                        format!(
                            ", hit the process with {hosts_mid_deploy} simulated hosts mid-deploy"
                        )
                    }
                });
            let _ =
                writeln!(s, "  +{:.2}s {}{targets}{until}{fired}", f.at_ms as f64 / 1e3, f.label);
        }
        if !self.agent_kills_at_steps.is_empty() {
            let _ = writeln!(
                s,
                "  agents killed mid-step {} times: {}",
                self.agent_kills_at_steps.len(),
                self.agent_kills_at_steps.join(" ")
            );
        }
        if !self.unreachable_hosts.is_empty() {
            let _ = writeln!(
                s,
                "  leases expired (hosts marked UNREACHABLE): {}",
                self.unreachable_hosts.join(", ")
            );
        }
        let o = &self.operations;
        let _ = writeln!(
            s,
            "operations: {} (ok {}, failed {}, unknown {}): {} reads, {} writes, {} builds, {} deploy starts; {} deploys in the window",
            o.total,
            o.ok,
            o.failed,
            o.unknown,
            o.reads,
            o.writes,
            o.builds,
            o.deploys,
            self.deploys.len()
        );
        let actions: Vec<String> = o
            .ok_by_kind
            .iter()
            .filter(|(k, _)| {
                !matches!(k.as_str(), "read" | "write" | "create-build" | "create-deploy")
            })
            .map(|(k, n)| format!("{n} {k}"))
            .collect();
        if !actions.is_empty() {
            let _ = writeln!(s, "operator actions acknowledged: {}", actions.join(", "));
        }
        if self.sim_deploys > 0 {
            let _ = writeln!(s, "simulated stage: {} deploys in the window", self.sim_deploys);
        }
        let _ = writeln!(s, "invariants:");
        for v in &self.verdicts {
            let tag = match v.status {
                Status::Pass => "PASS",
                Status::Fail => "FAIL",
                Status::Inconclusive => "????",
            };
            let _ = writeln!(s, "  {tag} {:<20} {}", v.invariant, v.summary);
            for x in &v.violations {
                let _ = writeln!(s, "       {x}");
            }
        }
        if !self.recovery.is_empty() {
            let _ = writeln!(s, "recovery:");
            for r in &self.recovery {
                let _ = writeln!(
                    s,
                    "  {} at +{:.2}s: leader back after {}, writes accepted after {}",
                    r.fault,
                    r.at_ms as f64 / 1e3,
                    ms(r.leader_ms),
                    ms(r.writes_ms)
                );
            }
        }
        for (class, st) in &self.links {
            let _ = writeln!(
                s,
                "{:?} links: {} datagrams forwarded, {} dropped, {} delayed, {} duplicated, {} reordered, {} corrupted",
                class,
                st.to_upstream + st.to_client,
                st.dropped(),
                st.delayed,
                st.duplicated,
                st.reordered,
                st.corrupted
            )
            .map(|_| ());
        }
        let h = &self.http_links;
        let _ = writeln!(
            s,
            "Http links: {} connections ({} held opening), {} bytes forwarded, {} held by cuts ({} on a cut node's own connections), {} chunks delayed, {} retransmitted, {} corrupted",
            h.connections,
            h.held_connections,
            h.to_upstream + h.to_client,
            h.held(),
            h.held_process,
            h.delayed_chunks,
            h.retransmitted_chunks,
            h.corrupted_chunks
        );
        if let Some(swarm) = &self.swarm {
            s.push_str(&swarm.summary());
        }
        let _ = writeln!(
            s,
            "verdict: {} ({} violations); load average {}",
            if self.passed { "PASS" } else { "FAIL" },
            self.violations,
            self.loadavg
        );
        let _ = writeln!(s, "repeat: {}", self.command);
        s
    }
}

/// The command that repeats a run.
pub fn repeat_command(name: &str, seed: u64, duration_s: f64) -> String {
    format!("chaos run {name} --seed {seed} --duration {duration_s}")
}
