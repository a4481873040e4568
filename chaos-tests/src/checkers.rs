//! Checkers: pure functions from a recorded run to a [`Verdict`] per invariant of DESIGN §5.
//!
//! Each one is shown violating histories in its tests and must say so; a checker that never
//! fails proves nothing.
//!
//! - [`parallelism`]: hosts of a stage deploying at once, from the hooks' own journals (or the
//!   simulated hosts' runs of steps), with the host actions of the history ([`host_actions`]).
//! - [`convergence`]: every live host reaches the stage's last deploy or a reported failure in
//!   time.
//! - [`integrity`]: every archive and staged tree on every host matches the published build.
//! - [`durability`]: every acknowledged write is still there after every node restarted.
//! - [`one_leader_per_term`] and [`replicas_agree`]: the cluster itself.
//! - [`linearizable`]: a WGL search (Wing & Gong, with Lowe's memoisation) over per-key
//!   registers of the recorded operator history.

use std::collections::{BTreeMap, BTreeSet, HashSet};

use serde::{Deserialize, Serialize};

use crate::history::{Edge, JournalEntry, Op, OpKind, Outcome, ProgressSample, StatusSample};

/// Violations listed in a verdict (the count is always exact).
pub const MAX_LISTED_VIOLATIONS: usize = 10;
/// Search steps the linearizability checker may take per key before it gives up
/// (inconclusive, never a pass).
pub const MAX_WGL_STEPS: u64 = 20_000_000;

/// Pass, fail, or could not tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Pass,
    Fail,
    /// The checker could not decide (a search budget ran out); not a pass.
    Inconclusive,
}

/// One invariant's verdict.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Verdict {
    pub invariant: String,
    pub status: Status,
    /// How many things were checked (intervals, hosts, operations, …).
    pub checked: u64,
    /// One line on what was found.
    pub summary: String,
    pub violation_count: u64,
    /// The first [`MAX_LISTED_VIOLATIONS`] violations.
    pub violations: Vec<String>,
}

impl Verdict {
    fn new(invariant: &str, checked: u64, summary: String, violations: Vec<String>) -> Verdict {
        Verdict {
            invariant: invariant.to_string(),
            status: if violations.is_empty() { Status::Pass } else { Status::Fail },
            checked,
            summary,
            violation_count: violations.len() as u64,
            violations: violations.into_iter().take(MAX_LISTED_VIOLATIONS).collect(),
        }
    }

    pub fn passed(&self) -> bool {
        self.status == Status::Pass
    }
}

fn secs(us: u64) -> String {
    format!("{:.3}s", us as f64 / 1e6)
}

// ---------------------------------------------------------------------------------------------
// Parallelism

/// A time a host spent on a deploy (one hook, or a whole deploy's span).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Interval {
    pub host: String,
    pub deploy: String,
    pub start_us: u64,
    pub end_us: u64,
    /// When the run of deploy steps this interval belongs to began (its host's admission), if
    /// earlier than its own start: a hook run after the first of a deploy ([`steps_in_runs`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_start_us: Option<u64>,
}

/// Each hook run as an interval. A start without its end (the hook or its agent was killed)
/// lasts until the host's next journal line after it, or `run_end_us`.
pub fn hook_intervals(entries: &[JournalEntry], run_end_us: u64) -> Vec<Interval> {
    let mut by_host: BTreeMap<&str, Vec<&JournalEntry>> = BTreeMap::new();
    for e in entries {
        by_host.entry(&e.host).or_default().push(e);
    }
    let mut out = Vec::new();
    for (host, mut es) in by_host {
        es.sort_by_key(|e| e.t_us);
        let mut open: BTreeMap<(&str, &str), u64> = BTreeMap::new();
        let mut unmatched: Vec<(&str, u64)> = Vec::new();
        for e in &es {
            let key = (e.deploy.as_str(), e.step.as_str());
            match e.edge {
                Edge::Start => {
                    if let Some(prev) = open.insert(key, e.t_us) {
                        unmatched.push((key.0, prev));
                    }
                }
                // An end whose start was re-run closes nothing: the earlier start is
                // already among the unmatched ones.
                Edge::End => {
                    if let Some(start) = open.remove(&key) {
                        out.push(Interval {
                            host: host.to_string(),
                            deploy: e.deploy.clone(),
                            start_us: start,
                            end_us: e.t_us,
                            run_start_us: None,
                        });
                    }
                }
            }
        }
        unmatched.extend(open.iter().map(|((d, _), t)| (*d, *t)));
        for (deploy, start) in unmatched {
            let end = es.iter().map(|e| e.t_us).find(|&t| t > start).unwrap_or(run_end_us);
            out.push(Interval {
                host: host.to_string(),
                deploy: deploy.to_string(),
                start_us: start,
                end_us: end,
                run_start_us: None,
            });
        }
    }
    out.sort_by(|a, b| (a.start_us, &a.host).cmp(&(b.start_us, &b.host)));
    out
}

/// Each host's whole time on each deploy: from its first hook's start to its last hook's end.
/// Tighter than [`hook_intervals`] (a host holds its slot between steps too), but only sound
/// while no host's lease can expire mid-deploy.
pub fn deploy_spans(hooks: &[Interval]) -> Vec<Interval> {
    deploy_spans_with(hooks, &HostActions::default())
}

/// What host actions in the history say about the hosts' slots. A host paused by the user
/// holds no slot (Teletraan's "deploying" predicate leaves PAUSED_BY_USER out) although the hook
/// it was running goes on, and the stage may admit another host meanwhile; a reset host deploys
/// the same deploy again from the start, after holding no slot since it finished.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostActions {
    /// Per host: from a pause's invocation until the completion of the acknowledged NORMAL
    /// that ended it (`u64::MAX`: none did). A pause of unknown outcome may take effect late,
    /// so it lasts until the host's last acknowledged NORMAL.
    pub paused: BTreeMap<String, Vec<(u64, u64)>>,
    /// Per host: when resets that may have taken effect were invoked.
    pub resets: BTreeMap<String, Vec<u64>>,
}

/// The host actions of a history (failed ones changed nothing and are left out).
pub fn host_actions(ops: &[Op]) -> HostActions {
    let mut by_host: BTreeMap<&str, Vec<(&Op, &str)>> = BTreeMap::new();
    for op in ops.iter().filter(|o| o.outcome != Outcome::Failed) {
        if let OpKind::HostAction { host, action } = &op.kind {
            by_host.entry(host).or_default().push((op, action));
        }
    }
    let mut out = HostActions::default();
    for (host, mut acts) in by_host {
        acts.sort_by_key(|(o, _)| o.invoke_us);
        let resumes: Vec<&Op> = acts
            .iter()
            .filter(|(o, a)| *a == "NORMAL" && o.outcome == Outcome::Ok)
            .map(|(o, _)| *o)
            .collect();
        for (op, action) in &acts {
            match *action {
                "PAUSED_BY_USER" => {
                    let mut later = resumes.iter().filter(|r| r.invoke_us >= op.invoke_us);
                    let end =
                        if op.outcome == Outcome::Ok { later.next() } else { later.next_back() };
                    let until = end.map_or(u64::MAX, |r| r.complete_us);
                    out.paused.entry(host.to_string()).or_default().push((op.invoke_us, until));
                }
                "RESET" => out.resets.entry(host.to_string()).or_default().push(op.invoke_us),
                _ => {}
            }
        }
    }
    out
}

/// A hook's run: its host, deploy, and how many resets of the host were invoked before it
/// started (a hook belongs to the run begun by the last of them).
type RunKey<'a> = (&'a str, &'a str, usize);

/// Each run's first start and last end, by [`RunKey`].
fn runs<'a>(hooks: &'a [Interval], acts: &HostActions) -> BTreeMap<RunKey<'a>, (u64, u64)> {
    let mut spans: BTreeMap<RunKey<'_>, (u64, u64)> = BTreeMap::new();
    for i in hooks {
        let s = spans.entry(run_key(i, acts)).or_insert((i.start_us, i.end_us));
        s.0 = s.0.min(i.start_us);
        s.1 = s.1.max(i.end_us);
    }
    spans
}

fn run_key<'a>(i: &'a Interval, acts: &HostActions) -> RunKey<'a> {
    let resets =
        acts.resets.get(&i.host).map_or(0, |r| r.iter().filter(|&&t| t <= i.start_us).count());
    (&i.host, &i.deploy, resets)
}

/// Like [`deploy_spans`], but a host's hooks on one deploy make a new span after each reset of
/// the host (a hook belongs to the run begun by the last reset invoked before it started).
pub fn deploy_spans_with(hooks: &[Interval], acts: &HostActions) -> Vec<Interval> {
    runs(hooks, acts)
        .into_iter()
        .map(|((host, deploy, _), (start_us, end_us))| Interval {
            host: host.to_string(),
            deploy: deploy.to_string(),
            start_us,
            end_us,
            run_start_us: None,
        })
        .collect()
}

/// The hook runs, each marked with the start of the run (span) it belongs to: a host admitted
/// under a higher limit goes on with its later steps after a decrease, so a later step's start
/// is judged against the limits in effect since its run began ([`parallelism_over`]).
pub fn steps_in_runs(hooks: &[Interval], acts: &HostActions) -> Vec<Interval> {
    let spans = runs(hooks, acts);
    hooks
        .iter()
        .map(|i| {
            let run_start = spans.get(&run_key(i, acts)).map_or(i.start_us, |s| s.0);
            Interval { run_start_us: (run_start < i.start_us).then_some(run_start), ..i.clone() }
        })
        .collect()
}

/// The intervals without the times their host was paused by the user (an interval a pause
/// cuts in two becomes two).
pub fn without_paused(intervals: &[Interval], acts: &HostActions) -> Vec<Interval> {
    let mut out = Vec::new();
    for i in intervals {
        let mut windows: Vec<(u64, u64)> = acts.paused.get(&i.host).cloned().unwrap_or_default();
        windows.sort();
        let mut from = i.start_us;
        for (a, b) in windows {
            if b <= from || a >= i.end_us {
                continue;
            }
            if a > from {
                out.push(Interval { start_us: from, end_us: a, ..i.clone() });
            }
            from = from.max(b);
        }
        if from < i.end_us {
            out.push(Interval { start_us: from, ..i.clone() });
        }
    }
    out
}

/// How much earlier than its first hook's journal line a host may have been admitted to a
/// slot. The coordinator admits a host when it answers the host's ping (the admission is
/// applied on commit, a Raft round trip of a few milliseconds on loopback); the agent then
/// starts the step's hook, a `sh` that first runs `date` for its journal line: a fork and two
/// execs, tens of milliseconds on an idle machine and a few hundred on this 2-core VM at load
/// average 5. A simulated host's run begins when the answer arrives, with no process at all.
pub const ADMISSION_SLACK_US: u64 = 500_000;

/// One write of a stage's `maxParallel`, as the history recorded it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LimitWrite {
    pub value: usize,
    pub invoke_us: u64,
    /// `u64::MAX` for a write of unknown outcome (it may take effect at any later time).
    pub complete_us: u64,
}

/// What the history says a stage's parallelism limit was over time: the limit it was created
/// with, then every acknowledged or unknown-outcome write of it (failed ones changed nothing).
/// A write may take effect anywhere between its invocation and its completion, an unknown one
/// from its invocation on (or never), so at an instant several limits may be in effect as far
/// as the history can tell; the checker allows the largest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    pub initial: usize,
    pub writes: Vec<LimitWrite>,
}

impl Limits {
    /// One limit throughout.
    pub fn fixed(limit: usize) -> Limits {
        Limits { initial: limit, writes: Vec::new() }
    }

    /// `initial` (set before the history began), then the history's `maxParallel` writes.
    pub fn from_history(initial: usize, ops: &[Op]) -> Limits {
        let writes = ops
            .iter()
            .filter_map(|o| match (&o.kind, o.outcome) {
                (_, Outcome::Failed) => None,
                (OpKind::SetMaxParallel { value }, outcome) => Some(LimitWrite {
                    value: *value as usize,
                    invoke_us: o.invoke_us,
                    complete_us: if outcome == Outcome::Unknown { u64::MAX } else { o.complete_us },
                }),
                _ => None,
            })
            .collect();
        Limits { initial, writes }
    }

    /// Every write with the initial one first, as (value, invoke, complete).
    fn all(&self) -> impl Iterator<Item = (usize, u64, u64)> + '_ {
        std::iter::once((self.initial, 0, 0))
            .chain(self.writes.iter().map(|w| (w.value, w.invoke_us, w.complete_us)))
    }

    /// The largest limit that may be in effect at some instant of `[from_us, to_us]`. A write
    /// may be in effect from its invocation until an acknowledged write invoked after it
    /// completed has completed (that one took effect after it, and by its completion).
    pub fn max_in(&self, from_us: u64, to_us: u64) -> usize {
        let all: Vec<(usize, u64, u64)> = self.all().collect();
        all.iter()
            .filter(|&&(_, invoke, complete)| {
                let superseded = all
                    .iter()
                    .filter(|&&(_, i, c)| c != u64::MAX && i > complete)
                    .map(|&(_, _, c)| c)
                    .min()
                    .unwrap_or(u64::MAX);
                invoke <= to_us && superseded > from_us
            })
            .map(|&(v, _, _)| v)
            .max()
            .unwrap_or(self.initial)
    }

    fn describe(&self) -> String {
        let values: BTreeSet<usize> = self.all().map(|(v, _, _)| v).collect();
        match (values.first(), values.last()) {
            (Some(lo), Some(hi)) if lo != hi => {
                format!("limit {lo}-{hi} over time, {} changes", self.writes.len())
            }
            _ => format!("limit {}", self.initial),
        }
    }
}

/// At no instant are more than `limit` hosts inside an interval (deploys in `exempt`, e.g.
/// first deploys, which bypass the limit in Teletraan, are ignored). Touching intervals do not
/// overlap.
pub fn parallelism(intervals: &[Interval], limit: usize, exempt: &BTreeSet<String>) -> Verdict {
    parallelism_over(intervals, &Limits::fixed(limit), exempt)
}

/// The coordinator's rule (`State::can_admit`): a host is admitted only while fewer hosts than
/// the limit then in effect are deploying, and a host admitted goes on to the end of its
/// deploy whatever the limit becomes (a lowered limit preempts nobody). So the number of hosts
/// inside an interval may exceed the limit only through a decrease, never through a start: no
/// host starts (becomes one more host inside an interval) while the hosts inside, counting it,
/// exceed the largest limit that may have been in effect since it was admitted, that is during
/// `[run start - ADMISSION_SLACK_US, start]` (the run start is the interval's own start for a
/// whole span, its span's start for a later hook run). With one fixed limit this is "at no
/// instant more than `limit`". Deploys in `exempt` (first deploys, which bypass the limit) are
/// ignored; touching intervals do not overlap.
pub fn parallelism_over(
    intervals: &[Interval],
    limits: &Limits,
    exempt: &BTreeSet<String>,
) -> Verdict {
    // Events: (time, is_start, host, admitted since); ends sort before starts at one instant.
    let mut events: Vec<(u64, bool, &str, u64)> = Vec::new();
    let mut checked = 0u64;
    for i in intervals.iter().filter(|i| !exempt.contains(&i.deploy)) {
        checked += 1;
        let since = i.run_start_us.unwrap_or(i.start_us).saturating_sub(ADMISSION_SLACK_US);
        events.push((i.start_us, true, &i.host, since));
        events.push((i.end_us, false, &i.host, 0));
    }
    events.sort();
    let mut active: BTreeMap<&str, u32> = BTreeMap::new();
    let mut max = 0usize;
    let mut violations = Vec::new();
    for (t, is_start, host, since) in events {
        if is_start {
            let n = active.entry(host).or_default();
            *n += 1;
            let limit = limits.max_in(since, t);
            if *n == 1 && active.len() > limit {
                let hosts: Vec<&str> = active.keys().copied().collect();
                violations.push(format!(
                    "at {}: {host} started with {} hosts deploying (limit {limit}): {}",
                    secs(t),
                    hosts.len(),
                    hosts.join(", ")
                ));
            }
        } else if let Some(n) = active.get_mut(host) {
            *n -= 1;
            if *n == 0 {
                active.remove(host);
            }
        }
        max = max.max(active.len());
    }
    let summary =
        format!("{checked} intervals; at most {max} hosts at once ({})", limits.describe());
    Verdict::new("parallelism", checked, summary, violations)
}

// ---------------------------------------------------------------------------------------------
// Convergence

/// Every host in `hosts` is, from some sample on and in every later one, serving `goal` or
/// stopped on it with a reported failure, and got there within `bound_us` of `faults_end_us`.
/// Returns the verdict and each host's time to converge after the faults ended.
pub fn convergence(
    samples: &[ProgressSample],
    goal: &str,
    hosts: &[String],
    faults_end_us: u64,
    bound_us: u64,
) -> (Verdict, BTreeMap<String, Option<u64>>) {
    let mut times = BTreeMap::new();
    let mut violations = Vec::new();
    for host in hosts {
        let settled = |s: &ProgressSample| {
            s.rows.iter().any(|r| &r.host == host && (r.serving(goal) || r.failed(goal)))
        };
        // The first sample after the last unsettled one.
        let at = match samples.iter().rposition(|s| !settled(s)) {
            None => samples.first().map(|s| s.t_us),
            Some(i) => samples.get(i + 1).map(|s| s.t_us),
        };
        let after = at.map(|t| t.saturating_sub(faults_end_us));
        match after {
            None => violations.push(format!("{host} never reached deploy {goal} or a failure")),
            Some(d) if d > bound_us => violations.push(format!(
                "{host} settled {} after the faults ended (bound {})",
                secs(d),
                secs(bound_us)
            )),
            Some(_) => {}
        }
        times.insert(host.clone(), after);
    }
    let worst = times.values().flatten().max().copied().unwrap_or(0);
    let summary = format!(
        "{} hosts; slowest settled {} after the faults ended (bound {})",
        hosts.len(),
        secs(worst),
        secs(bound_us)
    );
    (Verdict::new("convergence", hosts.len() as u64, summary, violations), times)
}

// ---------------------------------------------------------------------------------------------
// Integrity

/// A published build: the archive's BLAKE3 and each file's BLAKE3 (path inside the archive).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Published {
    pub blake3: String,
    pub files: BTreeMap<String, String>,
}

/// What one host has on disk: archives (build id, BLAKE3 of the file) and extracted trees
/// (build id, BLAKE3 of each regular file by relative path).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostBuilds {
    pub host: String,
    pub archives: Vec<(String, String)>,
    pub trees: Vec<(String, BTreeMap<String, String>)>,
}

/// Every archive a host kept hashes to its build's published BLAKE3, and every staged tree
/// holds exactly the published bytes of every published file.
pub fn integrity(hosts: &[HostBuilds], published: &BTreeMap<String, Published>) -> Verdict {
    let mut violations = Vec::new();
    let mut checked = 0u64;
    for h in hosts {
        for (build, hash) in &h.archives {
            checked += 1;
            match published.get(build) {
                None => violations.push(format!("{}: archive of unknown build {build}", h.host)),
                Some(p) if &p.blake3 != hash => violations.push(format!(
                    "{}: archive of build {build} hashes to {hash}, published {}",
                    h.host, p.blake3
                )),
                Some(_) => {}
            }
        }
        for (build, files) in &h.trees {
            checked += 1;
            let Some(p) = published.get(build) else {
                violations.push(format!("{}: staged tree of unknown build {build}", h.host));
                continue;
            };
            for (path, hash) in &p.files {
                match files.get(path) {
                    None => violations.push(format!("{}: build {build} lacks {path}", h.host)),
                    Some(got) if got != hash => violations.push(format!(
                        "{}: build {build}'s {path} differs from the published file",
                        h.host
                    )),
                    Some(_) => {}
                }
            }
        }
    }
    let summary = format!("{checked} archives and staged trees on {} hosts", hosts.len());
    Verdict::new("integrity", checked, summary, violations)
}

// ---------------------------------------------------------------------------------------------
// Durability

/// After every node restarted: every acknowledged build and deploy is present, and each
/// register's value was written by a write that no acknowledged write strictly follows (else
/// that acknowledged write was lost).
pub fn durability(
    ops: &[Op],
    final_values: &BTreeMap<String, Option<String>>,
    present_builds: &BTreeSet<String>,
    present_deploys: &BTreeSet<String>,
) -> Verdict {
    let mut violations = Vec::new();
    let mut checked = 0u64;
    for op in ops.iter().filter(|o| o.outcome == Outcome::Ok) {
        match &op.kind {
            OpKind::CreateBuild { id: Some(id) } => {
                checked += 1;
                if !present_builds.contains(id) {
                    violations.push(format!("acknowledged build {id} is gone"));
                }
            }
            kind => {
                if let Some(id) = kind.created_deploy() {
                    checked += 1;
                    if !present_deploys.contains(id) {
                        violations.push(format!("acknowledged deploy {id} is gone"));
                    }
                }
            }
        }
    }
    for (key, value) in final_values {
        let writes: Vec<&Op> =
            ops.iter().filter(|o| o.kind.register_write().is_some_and(|(k, _)| k == key)).collect();
        let acked: Vec<&Op> = writes.iter().copied().filter(|o| o.outcome == Outcome::Ok).collect();
        checked += acked.len() as u64;
        let Some(value) = value else {
            if let Some(w) = acked.first() {
                violations.push(format!(
                    "{key} is unset although a write was acknowledged at {}",
                    secs(w.complete_us)
                ));
            }
            continue;
        };
        let source = writes.iter().find(|o| {
            o.outcome != Outcome::Failed && o.kind.register_write().is_some_and(|(_, v)| v == value)
        });
        let Some(source) = source else {
            violations.push(format!("{key} holds {value:?}, which no write wrote"));
            continue;
        };
        // An unknown write may have taken effect arbitrarily late.
        let source_done = if source.outcome == Outcome::Ok { source.complete_us } else { u64::MAX };
        if let Some(lost) = acked.iter().find(|w| source_done < w.invoke_us) {
            let (_, lost_value) = lost.kind.register_write().expect("a register write");
            violations.push(format!(
                "{key} holds {value:?}, written before the acknowledged write of {lost_value:?} at {}: that write was lost",
                secs(lost.invoke_us)
            ));
        }
    }
    let summary =
        format!("{checked} acknowledged writes and creations checked after a full restart");
    Verdict::new("durability", checked, summary, violations)
}

// ---------------------------------------------------------------------------------------------
// The cluster

/// No term has two leaders: nodes that call themselves leader, and the leader each node names,
/// agree per term.
pub fn one_leader_per_term(samples: &[StatusSample]) -> Verdict {
    let mut claims: BTreeMap<u64, BTreeMap<u64, Vec<u64>>> = BTreeMap::new();
    for s in samples {
        let leader = if s.state == "Leader" { Some(s.node) } else { s.leader };
        if let Some(l) = leader {
            claims.entry(s.term).or_default().entry(l).or_default().push(s.node);
        }
    }
    let mut violations = Vec::new();
    for (term, leaders) in &claims {
        if leaders.len() > 1 {
            let who: Vec<String> =
                leaders.iter().map(|(l, by)| format!("{l} (named by nodes {by:?})")).collect();
            violations.push(format!("term {term} has leaders {}", who.join(" and ")));
        }
    }
    let summary = format!("{} status samples over {} terms", samples.len(), claims.len());
    Verdict::new("one-leader-per-term", samples.len() as u64, summary, violations)
}

/// Every node answers every key with the same value (stale reads, taken once the nodes have
/// applied the same index).
pub fn replicas_agree(by_node: &BTreeMap<u64, BTreeMap<String, Option<String>>>) -> Verdict {
    let mut violations = Vec::new();
    let keys: BTreeSet<&String> = by_node.values().flat_map(|m| m.keys()).collect();
    for key in &keys {
        let values: BTreeMap<u64, Option<&Option<String>>> =
            by_node.iter().map(|(n, m)| (*n, m.get(*key))).collect();
        let distinct: BTreeSet<&Option<&Option<String>>> = values.values().collect();
        if distinct.len() > 1 {
            violations.push(format!("{key}: nodes disagree: {values:?}"));
        }
    }
    let summary = format!("{} keys on {} nodes", keys.len(), by_node.len());
    Verdict::new("replicas-agree", (keys.len() * by_node.len()) as u64, summary, violations)
}

// ---------------------------------------------------------------------------------------------
// Linearizability

/// One register operation for the search. `complete_us == u64::MAX` marks an operation whose
/// outcome is unknown: it may take effect any time after its invocation, or never.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct RegOp {
    invoke_us: u64,
    complete_us: u64,
    /// `Some(v)` writes value id `v`; reads carry what they returned.
    write: Option<u32>,
    read: Option<Option<u32>>,
}

/// Result of searching one key's history.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Search {
    Linearizable,
    /// No order exists; the operation (index) the deepest attempt could not place.
    Not {
        stuck_at: usize,
        linearized: usize,
    },
    GaveUp,
}

/// The recorded register history (writes and reads of each key) is linearizable: for each key
/// there is one order of its operations that respects real time (an operation that completed
/// before another was invoked comes first) in which every read returns the latest write.
/// Failed operations are left out; unknown writes may or may not have happened; unknown and
/// failed reads say nothing. Every register starts unset.
pub fn linearizable(ops: &[Op]) -> Verdict {
    let mut by_key: BTreeMap<&str, Vec<&Op>> = BTreeMap::new();
    for op in ops {
        match &op.kind {
            OpKind::Write { key, .. } | OpKind::Read { key, .. } | OpKind::Config { key, .. } => {
                by_key.entry(key).or_default().push(op)
            }
            _ => {}
        }
    }
    let mut violations = Vec::new();
    let mut inconclusive = Vec::new();
    let mut checked = 0u64;
    for (key, kops) in &by_key {
        let mut values: BTreeMap<&str, u32> = BTreeMap::new();
        let mut reg: Vec<(RegOp, &Op)> = Vec::new();
        for op in kops {
            let unknown = op.outcome == Outcome::Unknown;
            let complete_us = if unknown { u64::MAX } else { op.complete_us };
            let r = match (&op.kind, op.outcome) {
                (_, Outcome::Failed) => continue,
                (OpKind::Write { value, .. } | OpKind::Config { value, .. }, _) => {
                    let n = values.len() as u32;
                    let id = *values.entry(value).or_insert(n);
                    RegOp { invoke_us: op.invoke_us, complete_us, write: Some(id), read: None }
                }
                (OpKind::Read { .. }, Outcome::Unknown) => continue,
                (OpKind::Read { value, .. }, _) => {
                    let id = value.as_deref().map(|v| {
                        let n = values.len() as u32;
                        // A value no write wrote gets an id no write has: unexplainable.
                        *values.entry(v).or_insert(n)
                    });
                    RegOp { invoke_us: op.invoke_us, complete_us, write: None, read: Some(id) }
                }
                _ => continue,
            };
            reg.push((r, op));
        }
        checked += reg.len() as u64;
        // An unknown write whose value no read returned can be left out: if it took effect,
        // no read saw it, so the history has a linearization with it iff it has one without.
        // Without this, every write lost in a leaderless window doubles the search.
        let read_values: BTreeSet<u32> = reg.iter().filter_map(|(r, _)| r.read.flatten()).collect();
        reg.retain(|(r, _)| {
            r.complete_us != u64::MAX || r.write.is_some_and(|v| read_values.contains(&v))
        });
        let regops: Vec<RegOp> = reg.iter().map(|(r, _)| *r).collect();
        match search(&regops, MAX_WGL_STEPS) {
            Search::Linearizable => {}
            Search::GaveUp => inconclusive.push(key.to_string()),
            Search::Not { stuck_at, linearized } => {
                let op = reg[stuck_at].1;
                violations.push(format!(
                    "{key}: not linearizable; after {linearized} of {} operations none fits; stuck at {:?} [{}, {}] on node {} ({:?})",
                    reg.len(),
                    op.kind,
                    secs(op.invoke_us),
                    secs(op.complete_us),
                    op.node,
                    op.outcome,
                ));
            }
        }
    }
    let summary = format!("{checked} register operations over {} keys", by_key.len());
    let mut v = Verdict::new("linearizability", checked, summary, violations);
    if v.status == Status::Pass && !inconclusive.is_empty() {
        v.status = Status::Inconclusive;
        v.summary += &format!("; search budget exhausted on {}", inconclusive.join(", "));
    }
    v
}

/// Wing & Gong's search with Lowe's cache of (linearized set, state) pairs.
fn search(ops: &[RegOp], max_steps: u64) -> Search {
    let n = ops.len();
    if n == 0 {
        return Search::Linearizable;
    }
    // Entries: calls and returns, in time order; at equal times calls first (so that
    // operations touching in time count as concurrent). Entry 0 is the head sentinel.
    let mut entries: Vec<(u64, bool, usize)> = Vec::with_capacity(2 * n);
    for (i, o) in ops.iter().enumerate() {
        entries.push((o.invoke_us, false, i));
        entries.push((o.complete_us, true, i));
    }
    entries.sort();
    let len = entries.len() + 1;
    let mut next: Vec<usize> = (1..=len).collect();
    let mut prev: Vec<usize> = (0..len).map(|i| i.saturating_sub(1)).collect();
    const END: usize = usize::MAX;
    next[len - 1] = END;
    let mut call_at = vec![0; n];
    let mut ret_at = vec![0; n];
    for (k, &(_, is_ret, i)) in entries.iter().enumerate() {
        if is_ret {
            ret_at[i] = k + 1;
        } else {
            call_at[i] = k + 1;
        }
    }
    let entry = |k: usize| entries[k - 1];
    let unlink = |next: &mut Vec<usize>, prev: &mut Vec<usize>, k: usize| {
        let (p, nx) = (prev[k], next[k]);
        next[p] = nx;
        if nx != END {
            prev[nx] = p;
        }
    };
    let relink = |next: &mut Vec<usize>, prev: &mut Vec<usize>, k: usize| {
        let (p, nx) = (prev[k], next[k]);
        next[p] = k;
        if nx != END {
            prev[nx] = k;
        }
    };
    let definite = |i: usize| ops[i].complete_us != u64::MAX;
    let mut remaining = (0..n).filter(|&i| definite(i)).count();
    let words = n.div_ceil(64);
    let mut linearized = vec![0u64; words];
    let mut cache: HashSet<(Vec<u64>, Option<u32>)> = HashSet::new();
    let mut stack: Vec<(usize, Option<u32>)> = Vec::new();
    let mut state: Option<u32> = None;
    let mut deepest = (0usize, 0usize);
    let mut steps = 0u64;
    let mut cur = next[0];
    while remaining > 0 {
        steps += 1;
        if steps > max_steps {
            return Search::GaveUp;
        }
        let is_call = cur != END && !entry(cur).1;
        if is_call {
            let i = entry(cur).2;
            let o = ops[i];
            let (fits, new_state) = match (o.write, o.read) {
                (Some(v), _) => (true, Some(v)),
                (None, Some(r)) => (r == state, state),
                (None, None) => unreachable!("an op reads or writes"),
            };
            let mut lin = linearized.clone();
            lin[i / 64] |= 1 << (i % 64);
            if fits && cache.insert((lin.clone(), new_state)) {
                stack.push((i, state));
                state = new_state;
                linearized = lin;
                unlink(&mut next, &mut prev, call_at[i]);
                unlink(&mut next, &mut prev, ret_at[i]);
                if definite(i) {
                    remaining -= 1;
                }
                cur = next[0];
            } else {
                cur = next[cur];
            }
        } else {
            // A return (or the end): the operation it closes was not placed before it.
            if cur != END && stack.len() >= deepest.1 {
                deepest = (entry(cur).2, stack.len());
            }
            let Some((i, old)) = stack.pop() else {
                return Search::Not { stuck_at: deepest.0, linearized: deepest.1 };
            };
            state = old;
            linearized[i / 64] &= !(1 << (i % 64));
            relink(&mut next, &mut prev, ret_at[i]);
            relink(&mut next, &mut prev, call_at[i]);
            if definite(i) {
                remaining += 1;
            }
            cur = next[call_at[i]];
        }
    }
    Search::Linearizable
}

#[cfg(test)]
mod tests;
