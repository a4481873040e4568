//! The agent's IO shell: pings the coordinators (long-poll), feeds their answers to the stage
//! machine, runs the steps it asks for (hooks through the executor, download and staging built
//! in), persists the status before every report, and heartbeats while a step runs.
//!
//! Crash safety: before a step starts, `env_status` says "step X, UNKNOWN"; after it ends, "step
//! X, <result>"; the report is sent only after that write. A restart therefore re-runs an
//! interrupted step (hooks must be idempotent, as in Teletraan) and never skips one or reports
//! one it did not finish.

use std::collections::BTreeMap;
use std::future::Future;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use proto::enums::{AgentStatus, DeployStage};
use proto::ping::{PingRequestBean, PingResponseBean};
use tracing::{Instrument, info, info_span, warn};

use crate::config::Protocol;
use crate::config::{AgentConfig, ConfigError, MAX_PING_BACKOFF_MS, MIN_PING_BACKOFF_MS};
use crate::coordinator_client::{ClientError, CoordinatorClient};
use crate::download::{Downloader, Expected};
use crate::executor::{self, ExecLimits, ExecReport, HookCommand, Verdict};
use crate::hostinfo::{HOST_INFO_FILE, HostInfo, Overrides};
use crate::json_client::JsonClient;
use crate::machine::{Action, Machine, PRE_STAGE_STEPS, Step, StepKind, StepResult, plan_changed};
use crate::metrics::{AgentMetrics, PingKind};
use crate::status::{self, InstanceLock, StatusError};
use crate::{staging, template};

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Status(#[from] StatusError),
    #[error("cannot create {path}: {source}")]
    Dir { path: PathBuf, source: std::io::Error },
    #[error("cannot load the cluster CA from {path}: {message}")]
    Ca { path: PathBuf, message: String },
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("download setup: {0}")]
    Download(String),
}

/// Where a running hook's process group is recorded (inside the agent directory).
pub const HOOK_PGID_FILE: &str = "hook.pgid";

/// How a step ended.
#[derive(Debug)]
enum Outcome {
    Done(StepResult),
    /// The coordinator changed its mind mid-step; the step was stopped.
    Aborted,
}

pub struct Daemon {
    cfg: AgentConfig,
    overrides: Overrides,
    /// The resolved identity and the `host_info` modification time it was resolved at.
    host: Option<(HostInfo, Option<std::time::SystemTime>)>,
    machine: Machine,
    client: Pinger,
    downloader: Downloader,
    epoch: Instant,
    metrics: Arc<AgentMetrics>,
    _lock: InstanceLock,
}

impl Daemon {
    /// Takes the single-instance lock, loads `env_status` and connects nothing yet.
    pub fn new(cfg: AgentConfig, overrides: Overrides) -> Result<Self, DaemonError> {
        for dir in [&cfg.deploy_agent_dir, &cfg.builds_dir, &cfg.log_directory] {
            std::fs::create_dir_all(dir)
                .map_err(|source| DaemonError::Dir { path: dir.clone(), source })?;
        }
        let lock = InstanceLock::acquire(&cfg.deploy_agent_dir)?;
        let machine = Machine::new(status::load(&cfg.deploy_agent_dir)?);
        let extra_ca =
            match &cfg.download_ca_file {
                Some(p) => vec![std::fs::read(p).map_err(|e| {
                    DaemonError::Download(format!("cannot read {}: {e}", p.display()))
                })?],
                None => Vec::new(),
            };
        let limits = crate::download::DownloadLimits {
            allow_plain_http: cfg.allow_plain_http,
            ..Default::default()
        };
        let downloader =
            Downloader::new(&extra_ca, limits).map_err(|e| DaemonError::Download(e.to_string()))?;
        if cfg.protocol == Protocol::Json {
            if cfg.service_urls.is_empty() {
                return Err(DaemonError::Config(ConfigError::Invalid {
                    path: PathBuf::from("(config)"),
                    message: "protocol = \"json\" needs service_urls".into(),
                }));
            }
            let json = JsonClient::new(cfg.service_urls.clone(), cfg.token.clone())?;
            info!(urls = ?cfg.service_urls, every_ms = cfg.daemon_sleep_time_ms, "pinging over Teletraan's JSON ping (polling)");
            return Ok(Self {
                cfg,
                overrides,
                host: None,
                machine,
                client: Pinger::Json(json),
                downloader,
                epoch: Instant::now(),
                metrics: AgentMetrics::new(),
                _lock: lock,
            });
        }
        let ca_path = cfg.ca_file.clone().unwrap_or_else(|| PathBuf::from("ca.pem"));
        let ca_dir = ca_path.parent().map(Path::to_path_buf).unwrap_or_default();
        let ca = if ca_path.file_name().is_some_and(|n| n == "ca.pem") {
            crate::ca_cert(&ca_dir)
                .map_err(|e| DaemonError::Ca { path: ca_path.clone(), message: e.to_string() })?
        } else {
            let pem = std::fs::read(&ca_path)
                .map_err(|e| DaemonError::Ca { path: ca_path.clone(), message: e.to_string() })?;
            rustls_pki_types::pem::PemObject::from_pem_slice(&pem)
                .map_err(|e| DaemonError::Ca { path: ca_path.clone(), message: e.to_string() })?
        };
        let client = std::sync::Arc::new(CoordinatorClient::new(
            &ca,
            cfg.coordinator_addrs()?,
            cfg.token.clone(),
        )?);
        // Builds in the cluster (`tt://blob/`): through the swarm if this host runs a blob
        // node, else piece by piece from the coordinators.
        let metrics = AgentMetrics::new();
        let downloader = match crate::swarm::SwarmSource::start(&cfg, client.clone())
            .map_err(|e| DaemonError::Download(e.to_string()))?
        {
            Some(swarm) => {
                metrics.watch_swarm(swarm.clone());
                downloader.with_blob_source(swarm)
            }
            None => downloader.with_blob_source(client.clone()),
        };
        info!(coordinators = ?cfg.coordinators, long_poll_ms = cfg.long_poll_ms, "pinging over tt-agent/1 (QUIC, long-poll)");
        Ok(Self {
            cfg,
            overrides,
            host: None,
            machine,
            client: Pinger::Quic(client),
            downloader,
            epoch: Instant::now(),
            metrics,
            _lock: lock,
        })
    }

    /// The daemon's metrics (served by [`crate::metrics::serve`] when `metrics_listen` is set).
    pub fn metrics(&self) -> Arc<AgentMetrics> {
        self.metrics.clone()
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// The host's identity. Teletraan re-read it on every ping; we re-resolve only when the
    /// `host_info` file changed (an operator may fix it live), because resolving the address
    /// is a DNS lookup that can take seconds.
    fn host(&mut self) -> HostInfo {
        let stamp = std::fs::metadata(self.cfg.deploy_agent_dir.join(HOST_INFO_FILE))
            .and_then(|m| m.modified())
            .ok();
        match &self.host {
            Some((info, seen)) if *seen == stamp => info.clone(),
            _ => {
                let info = HostInfo::resolve(&self.cfg.deploy_agent_dir, &self.overrides);
                info!(host_id = info.host_id, hostname = info.hostname, ip = ?info.ip, groups = ?info.groups, "host identity");
                self.host = Some((info.clone(), stamp));
                info
            }
        }
    }

    /// Runs until `shutdown` resolves. Steps in progress when it does are re-run after a
    /// restart (the status file says so).
    pub async fn run(mut self, shutdown: impl Future<Output = ()>) -> Result<(), DaemonError> {
        tokio::select! {
            r = self.serve(false) => r,
            () = shutdown => {
                info!("shutting down");
                Ok(())
            }
        }
    }

    /// Serves goals until the coordinator answers NOOP once (Teletraan's cron mode).
    pub async fn run_once(mut self) -> Result<(), DaemonError> {
        self.serve(true).await
    }

    async fn serve(&mut self, once: bool) -> Result<(), DaemonError> {
        // A hook the previous agent process left running (it crashed mid-step) is stopped
        // before the step runs again.
        let grace = Duration::from_secs(self.cfg.termination_timeout);
        let pgid_file = self.cfg.deploy_agent_dir.join(HOOK_PGID_FILE);
        if let Some(pgid) = executor::stop_orphaned_group(&pgid_file, grace).await {
            warn!(pgid, "stopped a hook left running by a previous agent process");
        }
        let long_poll = if once || matches!(self.client, Pinger::Json(_)) {
            Duration::ZERO
        } else {
            Duration::from_millis(self.cfg.long_poll_ms)
        };
        let mut idle_pause = Duration::ZERO;
        loop {
            tokio::time::sleep(std::mem::take(&mut idle_pause)).await;
            let resp = self.ping_until_answered(long_poll).await;
            let received = self.now_ms();
            match self.machine.on_response(&resp) {
                Action::Idle => {
                    self.clean_stale_builds();
                    if once {
                        return Ok(());
                    }
                    if long_poll.is_zero() {
                        // Teletraan's polling: without long-poll, wait before asking again.
                        idle_pause = Duration::from_millis(self.cfg.daemon_sleep_time_ms);
                    }
                }
                Action::Delete { env } => self.delete_env(&env)?,
                Action::Reject { env, message } => {
                    warn!(env, message, "refusing the goal");
                    self.env_log(&env, &format!("goal refused: {message}"));
                    self.machine.record(&env, &StepResult::agent_failed(message));
                    self.persist();
                }
                Action::Run(step) => {
                    let lease_ms = crate::machine::effective_lease_ms(self.cfg.lease_ms, &resp);
                    if !crate::machine::lease_allows(received, self.now_ms(), lease_ms) {
                        warn!(env = step.env, "the goal is older than the lease; asking again");
                        continue;
                    }
                    self.run_step(step, resp).await;
                }
            }
        }
    }

    /// Pings until some coordinator answers, backing off while none does.
    async fn ping_until_answered(&mut self, wait: Duration) -> PingResponseBean {
        let mut backoff = Duration::from_millis(MIN_PING_BACKOFF_MS);
        loop {
            let host = self.host();
            let req = self.machine.ping_request(&host);
            let sent = Instant::now();
            let answer = self.client.ping(&req, wait).await;
            self.metrics.ping(PingKind::Goal, answer.is_ok(), sent.elapsed().as_secs_f64());
            match answer {
                Ok(resp) => return resp,
                Err(e) => {
                    warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "ping failed; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_millis(MAX_PING_BACKOFF_MS));
                }
            }
        }
    }

    /// Writes `env_status`. A failed write turns the current step's report into AGENT_FAILED
    /// (as Teletraan does): the coordinator must not believe a step result the agent could not
    /// keep.
    fn persist(&mut self) -> bool {
        match status::save(&self.cfg.deploy_agent_dir, &self.machine.envs) {
            Ok(()) => true,
            Err(e) => {
                warn!(error = %e, "cannot persist env_status");
                let envs: Vec<String> = self.machine.envs.keys().cloned().collect();
                for env in envs {
                    if self.machine.envs[&env].report.status != Some(AgentStatus::Succeeded) {
                        self.machine.record(
                            &env,
                            &StepResult::agent_failed(format!(
                                "Failed to dump status to the disk: {e}"
                            )),
                        );
                    }
                }
                false
            }
        }
    }

    async fn run_step(&mut self, step: Step, goal: PingResponseBean) {
        let span = info_span!("step", env = %step.env, stage = step.stage.as_str(),
            deploy_id = goal.deploy_goal.as_ref().and_then(|g| g.deploy_id.as_ref()).map(|d| d.as_str().to_string()).unwrap_or_default());
        async {
            if let Some(vars) = &step.script_config {
                self.write_script_config(&step.env, vars);
            }
            // "Step X, UNKNOWN" is on disk before the step starts.
            if !self.persist() {
                return;
            }
            info!("step starts");
            let outcome = self.execute(&step, &goal).await;
            match outcome {
                Outcome::Done(result) => {
                    self.metrics.step(step.stage.as_str(), result.status.as_str());
                    info!(status = result.status.as_str(), "step ends");
                    self.env_log(
                        &step.env,
                        &format!("{} ended: {}", step.stage.as_str(), result.status.as_str()),
                    );
                    self.machine.record(&step.env, &result);
                }
                Outcome::Aborted => {
                    self.metrics.step(step.stage.as_str(), "ABORTED");
                    info!("step aborted: the coordinator changed the goal");
                    self.env_log(
                        &step.env,
                        &format!("{} aborted by the coordinator", step.stage.as_str()),
                    );
                    self.machine.progress(&step.env, AgentStatus::Unknown, 0);
                }
            }
            self.persist();
        }
        .instrument(span)
        .await;
    }

    fn write_script_config(&mut self, env: &str, vars: &BTreeMap<String, String>) {
        let path = status::script_config_path(&self.cfg.deploy_agent_dir, env);
        let res = if vars.is_empty() {
            match std::fs::remove_file(&path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.to_string()),
                _ => Ok(()),
            }
        } else {
            status::write_atomically(&path, template::format_script_config(vars).as_bytes())
                .map_err(|e| e.to_string())
        };
        if let Err(e) = res {
            warn!(env, error = %e, "cannot write the script config");
        }
    }

    async fn execute(&mut self, step: &Step, goal: &PingResponseBean) -> Outcome {
        let target = self.machine.target(&step.env, &self.cfg.target_default_dir);
        let runtime =
            self.machine.envs.get(&step.env).map(|s| s.runtime_config.clone()).unwrap_or_default();
        let limits = self.cfg.exec_limits(&runtime);
        let host = self.host();
        let mut hb = Heartbeat {
            client: &self.client,
            metrics: &self.metrics,
            request: self.machine.ping_request(&host),
            env_id: self.machine.envs.get(&step.env).and_then(|s| s.report.env_id.clone()),
            goal,
        };
        match &step.kind {
            StepKind::Hook => {
                let env_vars = self.hook_env(&step.env, &target);
                let pgid_file = self.cfg.deploy_agent_dir.join(HOOK_PGID_FILE);
                let log = self.log_path(&step.env);
                run_hook(step, &target, &log, &pgid_file, env_vars, &limits, &mut hb).await
            }
            StepKind::Download(build) => {
                let Some(url) = build.build_url.clone() else {
                    return Outcome::Done(StepResult::agent_failed("the build has no artifactUrl"));
                };
                let build_id = build.build_id.clone().unwrap_or_default();
                let blake3 = match build.build_blake3.as_deref().map(blake3::Hash::from_hex) {
                    Some(Ok(h)) => Some(h),
                    Some(Err(e)) => {
                        return Outcome::Done(StepResult::agent_failed(format!(
                            "build {build_id} has a malformed artifactBlake3: {e}"
                        )));
                    }
                    None if self.cfg.require_build_hash => {
                        return Outcome::Done(StepResult::agent_failed(format!(
                            "build {build_id} was published without artifactBlake3; this agent \
                             refuses unverified builds (publish with `tt build publish --file`, \
                             or set require_build_hash = false)"
                        )));
                    }
                    None => None,
                };
                let expected = Expected { blake3, size: build.build_size };
                let (builds_dir, env) = (self.cfg.builds_dir.clone(), step.env.clone());
                let dl = &self.downloader;
                let metrics = &self.metrics;
                let log = self.log_path(&step.env);
                let before = metrics.swarm_stats();
                let outcome = retry_builtin(&limits, &mut hb, &log, "DOWNLOADING", || {
                    let (builds_dir, env, url, build_id, expected) = (
                        builds_dir.clone(),
                        env.clone(),
                        url.clone(),
                        build_id.clone(),
                        expected.clone(),
                    );
                    async move {
                        let limits = crate::extract::ExtractLimits::default();
                        let started = Instant::now();
                        let fetched = crate::download::ensure_build(
                            dl,
                            &builds_dir,
                            &env,
                            &build_id,
                            &url,
                            &expected,
                            &limits,
                        )
                        .await;
                        metrics.download(fetched.is_ok(), started.elapsed().as_secs_f64());
                        fetched
                            .map(|dir| format!("build {build_id} ready in {}", dir.display()))
                            .map_err(|e| e.to_string())
                    }
                })
                .await;
                let source = crate::download::describe_source(
                    &url,
                    before.as_ref(),
                    metrics.swarm_stats().as_ref(),
                );
                if let Some(s) = self.machine.envs.get_mut(&step.env) {
                    let extra = s.report.extra_info.get_or_insert_with(Default::default);
                    extra.insert(proto::ping::DOWNLOAD_SOURCE_KEY.to_string(), source);
                }
                outcome
            }
            StepKind::Stage { build_id } => {
                let vars = self
                    .machine
                    .envs
                    .get(&step.env)
                    .map(|s| s.script_variables.clone())
                    .unwrap_or_default();
                let builds_dir = self.cfg.builds_dir.clone();
                let log = self.log_path(&step.env);
                retry_builtin(&limits, &mut hb, &log, "STAGING", || {
                    let (builds_dir, build_id, target, vars) =
                        (builds_dir.clone(), build_id.clone(), target.clone(), vars.clone());
                    async move {
                        tokio::task::spawn_blocking(move || {
                            staging::stage(&builds_dir, &build_id, &target, &vars)
                                .map(|_| format!("{} -> build {build_id}", target.display()))
                                .map_err(|e| e.to_string())
                        })
                        .await
                        .unwrap_or_else(|e| Err(format!("staging task failed: {e}")))
                    }
                })
                .await
            }
        }
    }

    fn hook_env(&self, env: &str, target: &Path) -> BTreeMap<String, String> {
        let mut vars = self.cfg.hook_env.clone();
        vars.extend(self.machine.hook_env(env, target, &self.cfg.builds_dir));
        vars
    }

    fn log_path(&self, env: &str) -> PathBuf {
        self.cfg.log_directory.join(format!("{env}.log"))
    }

    /// Appends one line to the env's log (the same file hooks write to).
    fn env_log(&self, env: &str, line: &str) {
        append_log(&self.log_path(env), line);
    }

    /// Removes builds no env needs any more (every env, not only the last one: quirk 18).
    fn clean_stale_builds(&self) {
        let mut in_use = self.machine.builds_in_use();
        for env in self.machine.envs.keys() {
            let target = self.machine.target(env, &self.cfg.target_default_dir);
            in_use.extend(staging::current_build(&target));
        }
        for env in self.machine.envs.keys() {
            if let Err(e) = staging::clean_stale_builds(
                &self.cfg.builds_dir,
                env,
                self.cfg.num_builds_to_retain,
                &in_use,
            ) {
                warn!(env, error = %e, "cannot clean stale builds");
            }
        }
    }

    /// DELETE: forget the env; unless configured not to, also remove its symlink, script
    /// config and builds no other env uses (Teletraan left them behind: quirk 17).
    fn delete_env(&mut self, env: &str) -> Result<(), DaemonError> {
        info!(env, "the host left this env's capacity; forgetting it");
        let target = self.machine.target(env, &self.cfg.target_default_dir);
        self.machine.forget(env);
        if self.cfg.delete_cleans_up {
            if let Err(e) = staging::remove_env(&target, &self.cfg.builds_dir) {
                warn!(env, error = %e, "cannot remove the env's symlink");
            }
            let _ =
                std::fs::remove_file(status::script_config_path(&self.cfg.deploy_agent_dir, env));
            let mut in_use = self.machine.builds_in_use();
            for other in self.machine.envs.keys() {
                let t = self.machine.target(other, &self.cfg.target_default_dir);
                in_use.extend(staging::current_build(&t));
            }
            if let Err(e) = staging::clean_stale_builds(&self.cfg.builds_dir, env, 0, &in_use) {
                warn!(env, error = %e, "cannot remove the env's builds");
            }
        }
        self.env_log(env, "env deleted from this host");
        self.persist();
        Ok(())
    }
}

fn append_log(path: &Path, line: &str) {
    let ts = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default();
    if let Ok(mut f) = std::fs::OpenOptions::new().create(true).append(true).open(path) {
        let _ = writeln!(f, "[deploy-agent {ts}] {line}");
    }
}

/// The ping transport: native QUIC (long-poll) or Teletraan's JSON.
enum Pinger {
    Quic(std::sync::Arc<CoordinatorClient>),
    Json(JsonClient),
}

impl Pinger {
    async fn ping(
        &self,
        req: &PingRequestBean,
        wait: Duration,
    ) -> Result<PingResponseBean, ClientError> {
        match self {
            Pinger::Quic(c) => c.ping(req, wait).await,
            Pinger::Json(c) => c.ping(req).await,
        }
    }
}

/// Heartbeats during a step: a ping (no long-poll) carrying the step's progress. It renews the
/// host's lease; an answer naming another goal aborts the step. A failed heartbeat does not:
/// the agent keeps working while no coordinator answers.
struct Heartbeat<'a> {
    client: &'a Pinger,
    metrics: &'a AgentMetrics,
    request: PingRequestBean,
    env_id: Option<proto::ids::EnvId>,
    goal: &'a PingResponseBean,
}

impl Heartbeat<'_> {
    async fn beat_with(&mut self, status: AgentStatus, fail_count: i32) -> Verdict {
        let mut req = self.request.clone();
        for r in &mut req.reports {
            if r.env_id.is_some() && r.env_id == self.env_id {
                r.agent_status = Some(status);
                r.fail_count = Some(fail_count);
            }
        }
        let sent = Instant::now();
        let answer = self.client.ping(&req, Duration::ZERO).await;
        self.metrics.ping(PingKind::Heartbeat, answer.is_ok(), sent.elapsed().as_secs_f64());
        match answer {
            Ok(resp) if plan_changed(self.goal, &resp) => Verdict::Abort,
            Ok(_) => Verdict::Continue,
            Err(e) => {
                warn!(error = %e, "heartbeat failed; the step continues");
                Verdict::Continue
            }
        }
    }
}

impl executor::Heartbeat for Heartbeat<'_> {
    async fn beat(&mut self, progress: &ExecReport) -> Verdict {
        let status = progress.status.agent_status();
        self.beat_with(status, i32::try_from(progress.retry_times).unwrap_or(i32::MAX)).await
    }
}

fn exec_to_result(r: ExecReport) -> Outcome {
    if r.status == executor::ExecStatus::Aborted {
        return Outcome::Aborted;
    }
    Outcome::Done(StepResult {
        status: r.status.agent_status(),
        error_code: r.error_code,
        message: r.output,
        fail_count: i32::try_from(r.retry_times).unwrap_or(i32::MAX),
    })
}

/// Runs the step's hook script, if the build has one.
async fn run_hook(
    step: &Step,
    target: &Path,
    log: &Path,
    pgid_file: &Path,
    env: BTreeMap<String, String>,
    limits: &ExecLimits,
    hb: &mut Heartbeat<'_>,
) -> Outcome {
    let stage = step.stage;
    let Some(dir) = staging::script_dir(target, &step.env) else {
        if PRE_STAGE_STEPS.contains(&stage)
            || matches!(stage, DeployStage::Stopping | DeployStage::Stopped)
        {
            // A new host has no build yet; a host being stopped may never have had one.
            return Outcome::Done(StepResult::succeeded(0));
        }
        return Outcome::Done(StepResult::agent_failed(format!(
            "teletraan directory cannot be found in the tarball in step {}",
            stage.as_str()
        )));
    };
    let script = dir.join(stage.as_str());
    if !script.exists() {
        if stage == DeployStage::Restarting {
            return Outcome::Done(StepResult::agent_failed(format!(
                "RESTARTING script does not exist: {} (it is required once a teletraan directory exists)",
                script.display()
            )));
        }
        return Outcome::Done(StepResult::succeeded(0));
    }
    let cmd = HookCommand {
        program: script,
        args: Vec::new(),
        cwd: dir,
        env,
        log_file: log.to_path_buf(),
        label: stage.as_str().to_string(),
        pgid_file: Some(pgid_file.to_path_buf()),
    };
    let started = Instant::now();
    let report = executor::run(&cmd, limits, hb).await;
    let outcome = match report.status {
        executor::ExecStatus::Aborted => "ABORTED",
        status => status.agent_status().as_str(),
    };
    hb.metrics.hook(stage.as_str(), outcome, started.elapsed().as_secs_f64());
    exec_to_result(report)
}

/// Runs a built-in step with Teletraan's retry and backoff and with heartbeats; the error of
/// the last attempt becomes the report's message.
async fn retry_builtin<F, Fut>(
    limits: &ExecLimits,
    hb: &mut Heartbeat<'_>,
    log: &Path,
    label: &str,
    mut attempt: F,
) -> Outcome
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<String, String>>,
{
    let mut backoff = limits.process_wait_interval;
    let mut failures: i32 = 0;
    loop {
        let fut = attempt();
        tokio::pin!(fut);
        let mut ticker = tokio::time::interval(limits.heartbeat_interval);
        ticker.tick().await;
        let res = loop {
            tokio::select! {
                r = &mut fut => break r,
                _ = ticker.tick() => {
                    if let Verdict::Abort = hb.beat_with(AgentStatus::Unknown, failures).await {
                        return Outcome::Aborted;
                    }
                }
            }
        };
        match res {
            Ok(msg) => {
                append_log(log, &format!("{label}: {msg}"));
                return Outcome::Done(StepResult::succeeded(failures));
            }
            Err(msg) => {
                failures += 1;
                append_log(log, &format!("{label} attempt {failures} failed: {msg}"));
                warn!(attempt = failures, error = %msg, "{label} failed");
                if u32::try_from(failures).unwrap_or(u32::MAX) >= limits.max_retry {
                    return Outcome::Done(StepResult {
                        status: AgentStatus::TooManyRetry,
                        error_code: 1,
                        message: Some(msg),
                        fail_count: failures,
                    });
                }
                tokio::time::sleep(backoff).await;
                if let Verdict::Abort = hb.beat_with(AgentStatus::ScriptFailed, failures).await {
                    return Outcome::Aborted;
                }
                backoff = (backoff * limits.back_off_factor).min(limits.max_sleep_interval);
            }
        }
    }
}
