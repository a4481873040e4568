//! The workload: operator traffic through the HTTP API, each operation recorded with its invoke
//! and completion times and its outcome; samplers of the cluster's status and the stage's
//! progress; and the builds whose hooks journal where each host is.
//!
//! Registers for the linearizability checker are stage descriptions (`PUT /v1/envs/{env}/{stage}`
//! writes `description`, `GET` reads it) of stages without hosts, so they never disturb deploys.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use serde_json::{Value, json};
use tokio::sync::watch;

use crate::checkers::Published;
use crate::history::{
    Edge, HostRow, Op, OpKind, Outcome, ProgressSample, StatusSample, journal_line,
};
use crate::scenario::DeployMix;

/// The environment every stage of a run lives in.
pub const ENV: &str = "chaos";
/// The stage the rolling deploys target.
pub const STAGE: &str = "prod";
/// The hostless stage whose deploys are promoted to [`STAGE`].
pub const STAGING: &str = "staging";
/// The simulated hosts' stage.
pub const SIM_STAGE: &str = "sim";
/// Timeout of one recorded operation; past it the outcome is unknown.
pub const OP_TIMEOUT: Duration = Duration::from_secs(3);
/// Pause between a register client's operations (uniform in this range, milliseconds).
pub const OP_GAP_MS: std::ops::Range<u64> = 20..80;
/// Timeout of one sample request.
pub const SAMPLE_TIMEOUT: Duration = Duration::from_millis(500);
/// How often the cluster's status is sampled (each node).
pub const STATUS_EVERY: Duration = Duration::from_millis(200);
/// How often the stage's progress is sampled.
pub const PROGRESS_EVERY: Duration = Duration::from_millis(250);
/// How long the deploy driver waits for one deploy to settle before starting the next.
pub const DEPLOY_SETTLE_WAIT: Duration = Duration::from_secs(90);
/// Pause between attempts of a setup or driver request that found no leader.
pub const RETRY_PAUSE: Duration = Duration::from_millis(200);
/// Attempts of a setup request before the run is abandoned.
pub const SETUP_ATTEMPTS: u32 = 150;
/// The hook steps every build carries (each journals its start and end).
pub const HOOK_STEPS: [&str; 5] =
    ["PRE_DOWNLOAD", "POST_DOWNLOAD", "PRE_RESTART", "RESTARTING", "POST_RESTART"];

/// Errors of the workload's setup (recorded operations never fail the run: they are history).
#[derive(Debug, thiserror::Error)]
pub enum WorkloadError {
    #[error("{what} failed after {attempts} attempts; last answer: {last}")]
    Setup { what: String, attempts: u32, last: String },
    #[error("writing build {path}: {message}")]
    Build { path: String, message: String },
}

/// The run's clock: microseconds since its start.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    start: Instant,
}

impl Clock {
    pub fn new(start: Instant) -> Self {
        Self { start }
    }
    pub fn now_us(&self) -> u64 {
        self.start.elapsed().as_micros() as u64
    }
}

/// What one HTTP call got.
#[derive(Debug, Clone)]
pub enum Answer {
    /// 2xx, with the body (JSON, `Null` when empty).
    Ok(Value),
    /// An error status with the server's message.
    Status(u16, String),
    /// The request never reached a server (connection refused).
    NotSent(String),
    /// No answer (timeout, reset after sending).
    NoAnswer(String),
}

impl Answer {
    /// What a write's answer says about whether it took effect.
    pub fn write_outcome(&self) -> Outcome {
        match self {
            Answer::Ok(_) => Outcome::Ok,
            Answer::Status(s, _) if (400..500).contains(s) => Outcome::Failed,
            // The coordinator says when nothing was written; everything else may have been.
            Answer::Status(503, m)
                if m.contains("nothing was written")
                    || m.contains("no Raft leader is known")
                    || m.contains("no leader known")
                    || m.contains("cannot forward")
                    || m.contains("shutting down") =>
            {
                Outcome::Failed
            }
            Answer::Status(..) | Answer::NoAnswer(_) => Outcome::Unknown,
            Answer::NotSent(_) => Outcome::Failed,
        }
    }

    /// What a read's answer says (a read that did not succeed observed nothing).
    pub fn read_outcome(&self) -> Outcome {
        match self {
            Answer::Ok(_) => Outcome::Ok,
            _ => Outcome::Failed,
        }
    }

    pub fn error(&self) -> Option<String> {
        match self {
            Answer::Ok(_) => None,
            Answer::Status(s, m) => Some(format!("{s}: {m}")),
            Answer::NotSent(e) => Some(format!("not sent: {e}")),
            Answer::NoAnswer(e) => Some(format!("no answer: {e}")),
        }
    }
}

/// The cluster's HTTP API on every node.
#[derive(Clone)]
pub struct Api {
    http: reqwest::Client,
    urls: BTreeMap<u64, String>,
}

impl Api {
    pub fn new(urls: BTreeMap<u64, String>) -> Self {
        ops::ensure_crypto_provider();
        Self { http: reqwest::Client::new(), urls }
    }

    pub fn nodes(&self) -> Vec<u64> {
        self.urls.keys().copied().collect()
    }

    pub fn url(&self, node: u64) -> &str {
        &self.urls[&node]
    }

    /// One call to `node`.
    pub async fn call(
        &self,
        node: u64,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
        timeout: Duration,
    ) -> Answer {
        let mut req =
            self.http.request(method, format!("{}{path}", self.urls[&node])).timeout(timeout);
        if let Some(b) = body {
            req = req.json(b);
        }
        let resp = match req.send().await {
            Ok(r) => r,
            Err(e) if e.is_connect() => return Answer::NotSent(e.to_string()),
            Err(e) => return Answer::NoAnswer(e.to_string()),
        };
        let status = resp.status();
        let bytes = match resp.bytes().await {
            Ok(b) => b,
            Err(e) => return Answer::NoAnswer(e.to_string()),
        };
        if !status.is_success() {
            let message = serde_json::from_slice::<Value>(&bytes)
                .ok()
                .and_then(|v| v["message"].as_str().map(str::to_string))
                .unwrap_or_else(|| String::from_utf8_lossy(&bytes).trim().to_string());
            return Answer::Status(status.as_u16(), message);
        }
        Answer::Ok(serde_json::from_slice(&bytes).unwrap_or(Value::Null))
    }

    /// Calls nodes in turn until one answers with success or a definite refusal (4xx other
    /// than 404 when `retry_404`), up to [`SETUP_ATTEMPTS`] attempts: for setup and final
    /// checks, not for recorded operations.
    pub async fn until_ok(
        &self,
        what: &str,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value, WorkloadError> {
        let nodes = self.nodes();
        let mut last = String::new();
        for attempt in 0..SETUP_ATTEMPTS {
            let node = nodes[attempt as usize % nodes.len()];
            match self.call(node, method.clone(), path, body, OP_TIMEOUT).await {
                Answer::Ok(v) => return Ok(v),
                a @ Answer::Status(400 | 404 | 409, _) => {
                    return Err(WorkloadError::Setup {
                        what: what.into(),
                        attempts: attempt + 1,
                        last: a.error().unwrap_or_default(),
                    });
                }
                a => last = a.error().unwrap_or_default(),
            }
            tokio::time::sleep(RETRY_PAUSE).await;
        }
        Err(WorkloadError::Setup { what: what.into(), attempts: SETUP_ATTEMPTS, last })
    }

    /// Like [`Api::until_ok`], but a 404 is an answer (`None`).
    pub async fn get_opt(&self, what: &str, path: &str) -> Result<Option<Value>, WorkloadError> {
        let nodes = self.nodes();
        let mut last = String::new();
        for attempt in 0..SETUP_ATTEMPTS {
            let node = nodes[attempt as usize % nodes.len()];
            match self.call(node, reqwest::Method::GET, path, None, OP_TIMEOUT).await {
                Answer::Ok(v) => return Ok(Some(v)),
                Answer::Status(404, _) => return Ok(None),
                a => last = a.error().unwrap_or_default(),
            }
            tokio::time::sleep(RETRY_PAUSE).await;
        }
        Err(WorkloadError::Setup { what: what.into(), attempts: SETUP_ATTEMPTS, last })
    }
}

/// The recorded operations.
#[derive(Clone)]
pub struct Recorder {
    pub clock: Clock,
    ops: Arc<Mutex<Vec<Op>>>,
}

impl Recorder {
    pub fn new(clock: Clock) -> Self {
        Self { clock, ops: Arc::new(Mutex::new(Vec::new())) }
    }

    pub fn record(&self, op: Op) {
        self.ops.lock().unwrap().push(op);
    }

    pub fn ops(&self) -> Vec<Op> {
        self.ops.lock().unwrap().clone()
    }
}

/// A register key's stage name.
pub fn register_stage(k: u32) -> String {
    format!("reg-{k}")
}

/// A register key as the history names it.
pub fn register_key(k: u32) -> String {
    format!("{ENV}/{}", register_stage(k))
}

/// Creates the deploy stage (with `max_parallel` and the agents' group as capacity) and the
/// register stages, recording each register's initial value as an acknowledged write.
pub async fn setup_stages(
    api: &Api,
    rec: &Recorder,
    group: &str,
    max_parallel: u32,
    keys: u32,
) -> Result<(), WorkloadError> {
    use reqwest::Method;
    create_stage(api, STAGE, Some(group), max_parallel).await?;
    for k in 1..=keys {
        let value = format!("initial-{k}");
        let body = json!({"envName": ENV, "stageName": register_stage(k), "description": value});
        let invoke_us = rec.clock.now_us();
        api.until_ok("creating a register stage", Method::POST, "/v1/envs", Some(&body)).await?;
        rec.record(Op {
            process: 0,
            node: 0,
            kind: OpKind::Write { key: register_key(k), value },
            invoke_us,
            complete_us: rec.clock.now_us(),
            outcome: Outcome::Ok,
            error: None,
        });
    }
    Ok(())
}

/// Creates a deploy stage with `max_parallel`, and `group` as its capacity if given.
pub async fn create_stage(
    api: &Api,
    stage: &str,
    group: Option<&str>,
    max_parallel: u32,
) -> Result<(), WorkloadError> {
    use reqwest::Method;
    let body = json!({"envName": ENV, "stageName": stage, "maxParallel": max_parallel, "buildName": "svc"});
    api.until_ok(&format!("creating stage {stage}"), Method::POST, "/v1/envs", Some(&body)).await?;
    if let Some(group) = group {
        api.until_ok(
            &format!("setting the capacity of stage {stage}"),
            Method::PUT,
            &format!("/v1/envs/{ENV}/{stage}/capacity?capacityType=GROUP"),
            Some(&json!([group])),
        )
        .await?;
    }
    Ok(())
}

/// A build uploaded to the cluster, not yet published as a build record.
#[derive(Debug, Clone)]
pub struct PreparedBuild {
    pub number: u32,
    pub url: String,
    pub blake3: String,
    pub size: u64,
    pub files: BTreeMap<String, String>,
}

/// A hook that journals its start and end around `hook_ms` of work.
/// The hooks' environment variable naming the host's hook-fault switch file: holding `fail`
/// the hook exits 1, holding `hang` it sleeps until the agent's `process_timeout` stops it
/// (journaling its end when it is sent SIGTERM); absent or empty, the hook does its work.
pub const HOOK_FAULT_ENV: &str = "HOOK_FAULT";
/// How long a hanging hook sleeps if nobody stops it.
pub const HOOK_HANG_S: u64 = 3600;

fn hook_script(step: &str, hook_ms: u64) -> String {
    let (start, end) = (journal_line(step, Edge::Start), journal_line(step, Edge::End));
    format!(
        "#!/bin/sh\nset -eu\n{start}\n\
         case \"$(cat \"${HOOK_FAULT_ENV}\" 2>/dev/null || true)\" in\n\
         fail) {end}; exit 1 ;;\n\
         hang) sleep {HOOK_HANG_S} & pid=$!\n\
         trap 'kill \"$pid\" 2>/dev/null || true; {end}; exit 143' TERM\n\
         wait \"$pid\"; exit 1 ;;\n\
         esac\n\
         sleep {}.{:03}\n{end}\n",
        hook_ms / 1000,
        hook_ms % 1000,
    )
}

/// Writes build `number` (a `VERSION` file and journaling hooks) into `dir` and uploads it.
pub async fn prepare_build(
    api: &Api,
    dir: &Path,
    number: u32,
    hook_ms: u64,
) -> Result<PreparedBuild, WorkloadError> {
    prepare_build_sized(api, dir, number, hook_ms, 0).await
}

/// The archive of build `number` in `dir` (see [`prepare_build`]).
pub fn build_archive(dir: &Path, number: u32) -> std::path::PathBuf {
    dir.join(format!("build-{number}.tar.gz"))
}

/// [`prepare_build`] with a `payload.bin` of `payload_bytes` incompressible bytes (none for
/// 0), so that the archive spans many swarm pieces.
pub async fn prepare_build_sized(
    api: &Api,
    dir: &Path,
    number: u32,
    hook_ms: u64,
    payload_bytes: u64,
) -> Result<PreparedBuild, WorkloadError> {
    let path = build_archive(dir, number);
    let mut files: Vec<(String, u32, Vec<u8>)> =
        vec![("VERSION".into(), 0o644, format!("{number}\n").into_bytes())];
    for step in HOOK_STEPS {
        files.push((format!("teletraan/{step}"), 0o755, hook_script(step, hook_ms).into_bytes()));
    }
    if payload_bytes > 0 {
        files.push((
            "payload.bin".into(),
            0o644,
            ops::bench::swarm::build_bytes(payload_bytes, number.into()),
        ));
    }
    let refs: Vec<(&str, u32, &[u8])> =
        files.iter().map(|(n, m, b)| (n.as_str(), *m, b.as_slice())).collect();
    let build_err = |e: anyhow::Error| WorkloadError::Build {
        path: path.display().to_string(),
        message: format!("{e:#}"),
    };
    ops::publish::write_tarball(&path, &refs).map_err(build_err)?;
    let mut last = String::new();
    for attempt in 0..SETUP_ATTEMPTS {
        let node = api.nodes()[attempt as usize % api.nodes().len()];
        let client = ops::client::Client::new(api.url(node), None);
        match ops::publish::upload(&client, &path, false).await {
            Ok(up) => {
                let files = files
                    .iter()
                    .map(|(n, _, b)| (n.clone(), blake3::hash(b).to_hex().to_string()))
                    .collect();
                return Ok(PreparedBuild {
                    number,
                    url: up.url,
                    blake3: up.blake3,
                    size: up.size,
                    files,
                });
            }
            Err(e) => last = format!("{e:#}"),
        }
        tokio::time::sleep(RETRY_PAUSE).await;
    }
    Err(WorkloadError::Setup { what: "uploading a build".into(), attempts: SETUP_ATTEMPTS, last })
}

/// Publishes `build` as a build record, recording each attempt, until acknowledged (an
/// unknown outcome is resolved by looking the commit up). Returns the build id, or `None` if
/// `stop` was raised first. `salt` tells apart the commits of publishers of the same builds.
async fn publish(
    api: &Api,
    rec: &Recorder,
    rng: &mut StdRng,
    build: &PreparedBuild,
    salt: u128,
    stop: &watch::Receiver<bool>,
) -> Option<String> {
    let commit = format!("{:040x}", u128::from(build.number) + 0xc4a05 + (salt << 64));
    let body = json!({"name": "svc", "artifactUrl": build.url, "commit": commit, "branch": "main",
                      "repo": "chaos/svc", "artifactBlake3": build.blake3, "artifactSize": build.size});
    while !*stop.borrow() {
        let node = pick(rng, &api.nodes());
        let invoke_us = rec.clock.now_us();
        let a = api.call(node, reqwest::Method::POST, "/v1/builds", Some(&body), OP_TIMEOUT).await;
        let outcome = a.write_outcome();
        let id = match &a {
            Answer::Ok(v) => v["id"].as_str().map(str::to_string),
            _ => None,
        };
        rec.record(Op {
            process: 0,
            node,
            kind: OpKind::CreateBuild { id: id.clone() },
            invoke_us,
            complete_us: rec.clock.now_us(),
            outcome,
            error: a.error(),
        });
        if id.is_some() {
            return id;
        }
        if outcome == Outcome::Unknown
            && let Ok(Some(found)) =
                api.get_opt("looking a build up", &format!("/v1/builds?commit={commit}")).await
            && let Some(id) =
                found.as_array().and_then(|a| a.first()).and_then(|b| b["id"].as_str())
        {
            return Some(id.to_string());
        }
        tokio::time::sleep(RETRY_PAUSE).await;
    }
    None
}

/// Starts a deploy of `build_id` on `stage`, recording each attempt, until acknowledged (an
/// unknown outcome is resolved by reading the stage's current deploy).
pub(crate) async fn start_deploy(
    api: &Api,
    rec: &Recorder,
    rng: &mut StdRng,
    stage: &str,
    build_id: &str,
    stop: &watch::Receiver<bool>,
) -> Option<String> {
    let path = format!("/v1/envs/{ENV}/{stage}/deploys?buildId={build_id}");
    while !*stop.borrow() {
        let node = pick(rng, &api.nodes());
        let invoke_us = rec.clock.now_us();
        let a = api.call(node, reqwest::Method::POST, &path, Some(&Value::Null), OP_TIMEOUT).await;
        let outcome = a.write_outcome();
        let id = match &a {
            Answer::Ok(v) => v["id"].as_str().map(str::to_string),
            _ => None,
        };
        rec.record(Op {
            process: 0,
            node,
            kind: OpKind::CreateDeploy { build: build_id.into(), id: id.clone() },
            invoke_us,
            complete_us: rec.clock.now_us(),
            outcome,
            error: a.error(),
        });
        if id.is_some() {
            return id;
        }
        if outcome != Outcome::Failed
            && let Ok(Some(cur)) = api
                .get_opt(
                    "reading the current deploy",
                    &format!("/v1/envs/{ENV}/{stage}/deploys/current"),
                )
                .await
            && cur["buildId"] == build_id
            && let Some(id) = cur["id"].as_str()
        {
            return Some(id.to_string());
        }
        tokio::time::sleep(RETRY_PAUSE).await;
    }
    None
}

pub(crate) fn pick(rng: &mut StdRng, nodes: &[u64]) -> u64 {
    nodes[rng.random_range(0..nodes.len())]
}

/// The deploy stage's hosts now (a linearizable read from any node that answers).
pub async fn hosts_now(api: &Api) -> Option<Vec<HostRow>> {
    hosts_of(api, STAGE).await
}

/// `stage`'s hosts now (a linearizable read from any node that answers).
pub async fn hosts_of(api: &Api, stage: &str) -> Option<Vec<HostRow>> {
    for node in api.nodes() {
        let path = format!("/v1/envs/{ENV}/{stage}/agents");
        if let Answer::Ok(v) =
            api.call(node, reqwest::Method::GET, &path, None, SAMPLE_TIMEOUT).await
        {
            return Some(rows(&v));
        }
    }
    None
}

fn rows(v: &Value) -> Vec<HostRow> {
    let s = |a: &Value, k: &str| a[k].as_str().unwrap_or_default().to_string();
    v.as_array()
        .map(|a| {
            a.iter()
                .map(|r| HostRow {
                    host: s(r, "hostName"),
                    deploy: r["deployId"].as_str().map(str::to_string),
                    step: s(r, "deployStage"),
                    state: s(r, "state"),
                    status: s(r, "status"),
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Whether every one of `hosts` is serving `deploy` or stopped on it with a failure.
pub fn settled(rows: &[HostRow], deploy: &str, hosts: usize) -> bool {
    rows.iter().filter(|r| r.serving(deploy) || r.failed(deploy)).count() >= hosts
}

/// What the deploy driver did.
#[derive(Debug, Clone, Default)]
pub struct DriverLog {
    /// Deploys it started, in order.
    pub deploys: Vec<String>,
    /// Build ids by build number.
    pub builds: BTreeMap<u32, String>,
    /// What each published build holds, by build id.
    pub published: BTreeMap<String, Published>,
}

/// Publishes builds and deploys them to a stage, one at a time.
#[derive(Clone)]
pub struct Driver {
    pub api: Api,
    pub rec: Recorder,
    /// The stage it deploys to.
    pub stage: String,
    /// Hosts in the stage.
    pub hosts: usize,
    /// What follows a settled deploy (a new build, a rollback, a promotion).
    pub mix: DeployMix,
    /// Tells apart this driver's build commits from another driver's of the same builds.
    pub commit_salt: u128,
    pub log: Arc<Mutex<DriverLog>>,
}

impl Driver {
    /// A driver of `stage`'s `hosts` with only new-build deploys.
    pub fn new(api: Api, rec: Recorder, stage: &str, hosts: usize, commit_salt: u128) -> Self {
        Driver {
            api,
            rec,
            stage: stage.to_string(),
            hosts,
            mix: DeployMix::default(),
            commit_salt,
            log: Arc::default(),
        }
    }

    /// Publishes one build and deploys it, waiting until every host settled or `stop`.
    /// Returns the deploy id.
    pub async fn deploy_once(
        &self,
        rng: &mut StdRng,
        build: &PreparedBuild,
        stop: &watch::Receiver<bool>,
    ) -> Option<String> {
        let build_id = self.publish(rng, build, stop).await?;
        let deploy = start_deploy(&self.api, &self.rec, rng, &self.stage, &build_id, stop).await?;
        self.settle(deploy, stop).await
    }

    /// Publishes `build` and notes what it holds; answers its id.
    pub(crate) async fn publish(
        &self,
        rng: &mut StdRng,
        build: &PreparedBuild,
        stop: &watch::Receiver<bool>,
    ) -> Option<String> {
        let build_id = publish(&self.api, &self.rec, rng, build, self.commit_salt, stop).await?;
        let mut log = self.log.lock().unwrap();
        let p = Published { blake3: build.blake3.clone(), files: build.files.clone() };
        log.published.insert(build_id.clone(), p);
        log.builds.insert(build.number, build_id.clone());
        Some(build_id)
    }

    /// Notes `deploy` as the stage's newest and waits until every host settled on it, up to
    /// [`DEPLOY_SETTLE_WAIT`] or `stop`.
    pub(crate) async fn settle(
        &self,
        deploy: String,
        stop: &watch::Receiver<bool>,
    ) -> Option<String> {
        self.log.lock().unwrap().deploys.push(deploy.clone());
        let deadline = Instant::now() + DEPLOY_SETTLE_WAIT;
        while !*stop.borrow() && Instant::now() < deadline {
            if hosts_of(&self.api, &self.stage)
                .await
                .is_some_and(|r| settled(&r, &deploy, self.hosts))
            {
                break;
            }
            tokio::time::sleep(PROGRESS_EVERY).await;
        }
        Some(deploy)
    }

    /// Deploys back to back until `stop` or the builds run out: after each settled deploy, a
    /// new build, a rollback to the previous deploy or a promotion of a new build from the
    /// staging stage, drawn by the mix's weights.
    pub async fn run(self, seed: u64, builds: Vec<PreparedBuild>, stop: watch::Receiver<bool>) {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut builds = builds.iter();
        while !*stop.borrow() {
            let previous = {
                let log = self.log.lock().unwrap();
                log.deploys.len().checked_sub(2).map(|i| log.deploys[i].clone())
            };
            let m = &self.mix;
            let rollback = if previous.is_some() { m.rollback } else { 0 };
            let total = m.build + rollback + m.promote;
            let roll = if total == 0 { 0 } else { rng.random_range(0..total) };
            let done = if roll < m.build || total == 0 {
                let Some(build) = builds.next() else { return };
                self.deploy_once(&mut rng, build, &stop).await
            } else if roll < m.build + rollback {
                let to = previous.expect("weighted only with a previous deploy");
                crate::actions::rollback(&self, &mut rng, &to, &stop).await
            } else {
                let Some(build) = builds.next() else { return };
                crate::actions::promote(&self, &mut rng, build, &stop).await
            };
            if done.is_none() {
                return;
            }
        }
    }
}

/// One register client: random reads and writes of random keys on random nodes until `stop`.
pub async fn register_client(
    api: Api,
    rec: Recorder,
    process: u32,
    seed: u64,
    keys: u32,
    stop: watch::Receiver<bool>,
) {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut seq = 0u64;
    while !*stop.borrow() {
        let k = rng.random_range(1..=keys);
        let key = register_key(k);
        let path = format!("/v1/envs/{ENV}/{}", register_stage(k));
        let node = pick(&mut rng, &api.nodes());
        let invoke_us = rec.clock.now_us();
        let op = if rng.random_bool(0.5) {
            seq += 1;
            let value = format!("c{process}-{seq}");
            let body = json!({"description": value});
            let a = api.call(node, reqwest::Method::PUT, &path, Some(&body), OP_TIMEOUT).await;
            Op {
                process,
                node,
                kind: OpKind::Write { key, value },
                invoke_us,
                complete_us: rec.clock.now_us(),
                outcome: a.write_outcome(),
                error: a.error(),
            }
        } else {
            let a = api.call(node, reqwest::Method::GET, &path, None, OP_TIMEOUT).await;
            let value = match &a {
                Answer::Ok(v) => v["description"].as_str().map(str::to_string),
                _ => None,
            };
            Op {
                process,
                node,
                kind: OpKind::Read { key, value },
                invoke_us,
                complete_us: rec.clock.now_us(),
                outcome: a.read_outcome(),
                error: a.error(),
            }
        };
        rec.record(op);
        tokio::time::sleep(Duration::from_millis(rng.random_range(OP_GAP_MS))).await;
    }
}

/// Samples every node's `GET /v1/cluster` until `stop`.
pub async fn status_sampler(
    api: Api,
    clock: Clock,
    out: Arc<Mutex<Vec<StatusSample>>>,
    stop: watch::Receiver<bool>,
) {
    while !*stop.borrow() {
        let calls = api.nodes().into_iter().map(|n| {
            let api = api.clone();
            async move {
                let t_us = clock.now_us();
                match api.call(n, reqwest::Method::GET, "/v1/cluster", None, SAMPLE_TIMEOUT).await {
                    // Only an answer from the node asked counts: another process on its
                    // address (a port drawn twice, or reused by another cluster on this
                    // machine while the node was down) says nothing about this cluster.
                    Answer::Ok(v) if v["nodeId"].as_u64() == Some(n) => Some(StatusSample {
                        t_us,
                        node: n,
                        term: v["term"].as_u64().unwrap_or(0),
                        state: v["state"].as_str().unwrap_or_default().to_string(),
                        leader: v["leaderId"].as_u64(),
                        applied_index: v["appliedIndex"].as_u64().unwrap_or(0),
                    }),
                    _ => None,
                }
            }
        });
        let got: Vec<StatusSample> = futures_join_all(calls).await.into_iter().flatten().collect();
        out.lock().unwrap().extend(got);
        tokio::time::sleep(STATUS_EVERY).await;
    }
}

/// Runs futures concurrently and collects their outputs in order.
async fn futures_join_all<F>(fs: impl IntoIterator<Item = F>) -> Vec<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    let handles: Vec<_> = fs.into_iter().map(tokio::spawn).collect();
    let mut out = Vec::new();
    for h in handles {
        out.push(h.await.expect("sampler task"));
    }
    out
}

/// Samples the deploy stage's hosts until `stop`.
pub async fn progress_sampler(
    api: Api,
    clock: Clock,
    out: Arc<Mutex<Vec<ProgressSample>>>,
    stop: watch::Receiver<bool>,
) {
    progress_sampler_of(api, STAGE, PROGRESS_EVERY, clock, out, stop).await
}

/// Samples `stage`'s hosts `every` so often until `stop`.
pub async fn progress_sampler_of(
    api: Api,
    stage: &str,
    every: Duration,
    clock: Clock,
    out: Arc<Mutex<Vec<ProgressSample>>>,
    stop: watch::Receiver<bool>,
) {
    while !*stop.borrow() {
        let t_us = clock.now_us();
        if let Some(rows) = hosts_of(&api, stage).await {
            out.lock().unwrap().push(ProgressSample { t_us, rows });
        }
        tokio::time::sleep(every).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::{Command, Stdio};

    /// Runs a hook script with its journal and switch in `dir`; `mode` goes into the switch.
    fn spawn_hook(dir: &Path, mode: Option<&str>) -> std::process::Child {
        let script = dir.join("hook");
        std::fs::write(&script, hook_script("PRE_RESTART", 10)).unwrap();
        let switch = dir.join("switch");
        match mode {
            Some(m) => std::fs::write(&switch, m).unwrap(),
            None => {
                let _ = std::fs::remove_file(&switch);
            }
        }
        Command::new("sh")
            .arg(&script)
            .env("JOURNAL", dir.join("journal"))
            .env(HOOK_FAULT_ENV, &switch)
            .env("DEPLOY_ID", "d1")
            .stdin(Stdio::null())
            .spawn()
            .unwrap()
    }

    fn journal(dir: &Path) -> Vec<String> {
        let text = std::fs::read_to_string(dir.join("journal")).unwrap_or_default();
        text.lines().map(|l| l.split(' ').take(2).collect::<Vec<_>>().join(" ")).collect()
    }

    #[test]
    fn hooks_work_fail_or_hang_as_their_switch_says() {
        let dir = tempfile::tempdir().unwrap();
        let ok = spawn_hook(dir.path(), None).wait().unwrap();
        assert!(ok.success());
        assert_eq!(journal(dir.path()), ["PRE_RESTART start", "PRE_RESTART end"]);

        let failed = spawn_hook(dir.path(), Some("fail")).wait().unwrap();
        assert_eq!(failed.code(), Some(1));
        assert_eq!(journal(dir.path()).len(), 4, "a failing hook journals its end too");

        // A hanging hook runs until it is sent SIGTERM (the agent's process_timeout), then
        // journals its end and exits 143.
        let mut hung = spawn_hook(dir.path(), Some("hang"));
        while journal(dir.path()).len() < 5 {
            std::thread::sleep(Duration::from_millis(10));
        }
        std::thread::sleep(Duration::from_millis(200));
        assert!(hung.try_wait().unwrap().is_none(), "it hangs");
        let pid = nix::unistd::Pid::from_raw(hung.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
        assert_eq!(hung.wait().unwrap().code(), Some(143));
        assert_eq!(journal(dir.path()).last().map(String::as_str), Some("PRE_RESTART end"));
    }
}
