//! Operator actions beside the rolling deploys, through the `/v1` API on random nodes, each
//! recorded with invoke and completion times and ok / failed / unknown:
//!
//! - deploy actions the deploy driver takes in turn with new builds ([`rollback`] to the
//!   previous deploy, [`promote`] a new build from the hostless staging stage), after which it
//!   waits for the fleet to settle as after any deploy;
//! - [`Operator`]: stage pauses and resumes, host pauses and resets, stage setting changes and
//!   changes of the stage's parallelism limit (`maxParallel`) at random times, drawn by the scenario's weights (in rounds: every enabled kind runs once
//!   in each round of as many actions as the weights sum to). Whatever it paused it resumes before it
//!   stops ([`Operator::resume_everything`]), so convergence is judged on a running rollout.

use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use serde_json::{Value, json};
use tokio::sync::watch;

use crate::history::{Op, OpKind, Outcome};
use crate::scenario::WorkloadSpec;
use crate::workload::{
    self, Answer, Api, Driver, ENV, OP_TIMEOUT, PreparedBuild, RETRY_PAUSE, Recorder, STAGE,
    STAGING, pick,
};

/// Longest the operator keeps trying to resume what it paused once it was told to stop (the
/// faults are healed by then; a resume of a host mid-deploy waits for a free slot).
pub const RESUME_WAIT: Duration = Duration::from_secs(60);
/// The stage setting written as a register (with `emailRecipients` beside it).
pub const CONFIG_FIELD: &str = "chatroom";
/// How often a stopping operator looks again whether the stage or a host is still paused.
pub const RESUME_CHECK_EVERY: Duration = Duration::from_millis(250);
/// The `maxParallel` values the operator sets the deploy stage to (one other than the
/// scenario's, drawn with the run's seed): from one host at a time to one fewer than the four
/// real agents, so a change is felt by a rolling deploy in both directions.
pub const MAX_PARALLEL_CHOICES: std::ops::RangeInclusive<u32> = 1..=3;

/// The register key of the deploy stage's [`CONFIG_FIELD`].
pub fn config_key() -> String {
    format!("{ENV}/{STAGE}:{CONFIG_FIELD}")
}

/// Runs one recorded call of `kind` at a random node.
async fn recorded(
    api: &Api,
    rec: &Recorder,
    rng: &mut StdRng,
    method: reqwest::Method,
    path: &str,
    body: Option<&Value>,
    kind: impl FnOnce(&Answer) -> OpKind,
) -> (Outcome, Answer) {
    let node = pick(rng, &api.nodes());
    let invoke_us = rec.clock.now_us();
    let a = api.call(node, method, path, body, OP_TIMEOUT).await;
    let outcome = a.write_outcome();
    rec.record(Op {
        process: 0,
        node,
        kind: kind(&a),
        invoke_us,
        complete_us: rec.clock.now_us(),
        outcome,
        error: a.error(),
    });
    (outcome, a)
}

fn deploy_id(a: &Answer) -> Option<String> {
    match a {
        Answer::Ok(v) => v["id"].as_str().map(str::to_string),
        _ => None,
    }
}

/// A deploy action that creates a deploy on the driver's stage, tried until acknowledged. An
/// unknown outcome is resolved by reading the stage's current deploy: deploy creation is a
/// compare-and-set on it and only the driver creates deploys there, so a current deploy other
/// than the driver's last is this action's.
async fn create_by_action(
    driver: &Driver,
    rng: &mut StdRng,
    path: &str,
    kind: impl Fn(Option<String>) -> OpKind,
    stop: &watch::Receiver<bool>,
) -> Option<String> {
    let expected = driver.log.lock().unwrap().deploys.last().cloned();
    while !*stop.borrow() {
        let (outcome, a) = recorded(
            &driver.api,
            &driver.rec,
            rng,
            reqwest::Method::POST,
            path,
            Some(&Value::Null),
            |a| kind(deploy_id(a)),
        )
        .await;
        if let Some(id) = deploy_id(&a) {
            return driver.settle(id, stop).await;
        }
        if outcome != Outcome::Failed
            && let Ok(Some(cur)) = driver
                .api
                .get_opt(
                    "reading the current deploy",
                    &format!("/v1/envs/{ENV}/{}/deploys/current", driver.stage),
                )
                .await
            && let Some(id) = cur["id"].as_str()
            && Some(id) != expected.as_deref()
        {
            return driver.settle(id.to_string(), stop).await;
        }
        tokio::time::sleep(RETRY_PAUSE).await;
    }
    None
}

/// Rolls the driver's stage back to deploy `to` (its build again, as a new ROLLBACK deploy)
/// and waits for the fleet to settle on it. Returns the new deploy, `None` if stopped first.
pub async fn rollback(
    driver: &Driver,
    rng: &mut StdRng,
    to: &str,
    stop: &watch::Receiver<bool>,
) -> Option<String> {
    let path = format!(
        "/v1/envs/{ENV}/{}/deploys/current/actions?actionType=ROLLBACK&toDeployId={to}",
        driver.stage
    );
    let kind = |id| OpKind::Rollback { to: to.to_string(), id };
    create_by_action(driver, rng, &path, kind, stop).await
}

/// Publishes `build`, deploys it to the hostless staging stage and promotes that deploy to the
/// driver's stage, then waits for the fleet to settle. Returns the promoted deploy.
pub async fn promote(
    driver: &Driver,
    rng: &mut StdRng,
    build: &PreparedBuild,
    stop: &watch::Receiver<bool>,
) -> Option<String> {
    let build_id = driver.publish(rng, build, stop).await?;
    let from =
        workload::start_deploy(&driver.api, &driver.rec, rng, STAGING, &build_id, stop).await?;
    let path = format!(
        "/v1/envs/{ENV}/{}/deploys/current/actions?actionType=PROMOTE&fromDeployId={from}",
        driver.stage
    );
    let kind = |id| OpKind::Promote { from: from.clone(), id };
    create_by_action(driver, rng, &path, kind, stop).await
}

/// One kind of [`Operator`] action.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    PauseStage,
    PauseHost,
    ResetHost,
    Config,
    MaxParallel,
}

/// Stage pauses, host pauses and resets, stage setting changes and `maxParallel` changes on the
/// deploy stage.
pub struct Operator {
    pub api: Api,
    pub rec: Recorder,
    pub spec: WorkloadSpec,
    /// The deploy stage's host names (their host ids too).
    pub hosts: Vec<String>,
    /// The deploy stage's `maxParallel` as the scenario set it: what a change is undone to.
    pub max_parallel: u32,
}

impl Operator {
    /// Acts until `stop`, then resumes whatever it paused.
    pub async fn run(self, seed: u64, mut stop: watch::Receiver<bool>) {
        let mut rng = StdRng::seed_from_u64(seed);
        let a = &self.spec.actions;
        let weighted = [
            (Action::PauseStage, a.pause_stage),
            (Action::PauseHost, a.pause_host),
            (Action::ResetHost, a.reset_host),
            (Action::Config, a.config),
            (Action::MaxParallel, a.max_parallel),
        ];
        // Drawn without replacement from a deck of `weight` cards per kind, dealt again when
        // empty: every enabled kind runs within each round of `total` actions.
        let mut deck: Vec<Action> = Vec::new();
        let mut configs = 0u64;
        while a.total() > 0 && !*stop.borrow() {
            let gap = self.spec.action_every_s * rng.random_range(0.5..1.5);
            if wait_or_stop(&mut stop, Duration::from_secs_f64(gap)).await {
                break;
            }
            if deck.is_empty() {
                for (kind, w) in weighted {
                    deck.extend(std::iter::repeat_n(kind, w as usize));
                }
            }
            let action = deck.swap_remove(rng.random_range(0..deck.len()));
            let hold = Duration::from_secs_f64(self.spec.hold_s);
            match action {
                Action::PauseStage => {
                    self.stage_state(&mut rng, true).await;
                    wait_or_stop(&mut stop, hold).await;
                    let deadline = Instant::now() + RESUME_WAIT;
                    while self.stage_state(&mut rng, false).await != Outcome::Ok
                        && Instant::now() < deadline
                    {
                        tokio::time::sleep(RETRY_PAUSE).await;
                    }
                }
                Action::PauseHost => {
                    let host = self.hosts[rng.random_range(0..self.hosts.len())].clone();
                    self.host_action(&mut rng, &host, "PAUSED_BY_USER").await;
                    wait_or_stop(&mut stop, hold).await;
                    // Refused (409) while the stage has no free slot for a host mid-deploy.
                    let deadline = Instant::now() + RESUME_WAIT;
                    while self.host_action(&mut rng, &host, "NORMAL").await != Outcome::Ok
                        && Instant::now() < deadline
                    {
                        tokio::time::sleep(RETRY_PAUSE).await;
                    }
                }
                Action::ResetHost => {
                    let host = self.hosts[rng.random_range(0..self.hosts.len())].clone();
                    self.host_action(&mut rng, &host, "RESET").await;
                }
                Action::Config => {
                    configs += 1;
                    self.config(&mut rng, configs).await;
                }
                Action::MaxParallel => {
                    let others: Vec<u32> =
                        MAX_PARALLEL_CHOICES.filter(|&v| v != self.max_parallel).collect();
                    let value = others[rng.random_range(0..others.len())];
                    self.set_max_parallel(&mut rng, value).await;
                    wait_or_stop(&mut stop, hold).await;
                    let deadline = Instant::now() + RESUME_WAIT;
                    while self.set_max_parallel(&mut rng, self.max_parallel).await != Outcome::Ok
                        && Instant::now() < deadline
                    {
                        tokio::time::sleep(RETRY_PAUSE).await;
                    }
                }
            }
        }
        self.resume_everything(&mut rng).await;
    }

    /// PAUSE or RESUME the deploy stage's deploy.
    async fn stage_state(&self, rng: &mut StdRng, paused: bool) -> Outcome {
        let action = if paused { "PAUSE" } else { "RESUME" };
        let path = format!("/v1/envs/{ENV}/{STAGE}/deploys/current/actions?actionType={action}");
        let kind = |_: &Answer| OpKind::StageState { paused };
        recorded(&self.api, &self.rec, rng, reqwest::Method::POST, &path, Some(&Value::Null), kind)
            .await
            .0
    }

    /// One host action (`PAUSED_BY_USER`, `NORMAL`, `RESET`) on `host`.
    async fn host_action(&self, rng: &mut StdRng, host: &str, action: &str) -> Outcome {
        let path = format!("/v1/envs/{ENV}/{STAGE}/deploys/hostactions?actionType={action}");
        let kind =
            |_: &Answer| OpKind::HostAction { host: host.to_string(), action: action.to_string() };
        let body = json!([host]);
        recorded(&self.api, &self.rec, rng, reqwest::Method::PUT, &path, Some(&body), kind).await.0
    }

    /// Writes the deploy stage's settings: [`CONFIG_FIELD`] (the register) and
    /// `emailRecipients`.
    async fn config(&self, rng: &mut StdRng, n: u64) -> Outcome {
        let value = format!("cfg-{n}");
        let body = json!({ CONFIG_FIELD: value, "emailRecipients": format!("ops-{n}@chaos.test") });
        let kind = |_: &Answer| OpKind::Config { key: config_key(), value: value.clone() };
        recorded(&self.api, &self.rec, rng, reqwest::Method::PUT, &stage_path(), Some(&body), kind)
            .await
            .0
    }

    /// Sets the deploy stage's `maxParallel` (Teletraan's update: fields left out are kept).
    async fn set_max_parallel(&self, rng: &mut StdRng, value: u32) -> Outcome {
        let body = json!({ "maxParallel": value });
        let kind = |_: &Answer| OpKind::SetMaxParallel { value };
        recorded(&self.api, &self.rec, rng, reqwest::Method::PUT, &stage_path(), Some(&body), kind)
            .await
            .0
    }

    /// Resumes the stage and every host still paused, as the cluster reports them (a pause
    /// whose outcome was unknown may have taken effect late), and sets the stage's
    /// `maxParallel` back if a change of unknown outcome landed late, until nothing is paused
    /// or changed or [`RESUME_WAIT`] passed.
    pub async fn resume_everything(&self, rng: &mut StdRng) {
        let deadline = Instant::now() + RESUME_WAIT;
        while Instant::now() < deadline {
            let stage = self.api.get_opt("reading the deploy stage", &stage_path()).await;
            let stage_paused =
                matches!(&stage, Ok(Some(v)) if v["envState"].as_str() == Some("PAUSED"));
            let limit_changed = matches!(&stage, Ok(Some(v))
                if v["maxParallel"].as_u64().is_some_and(|m| m != u64::from(self.max_parallel)));
            let rows = workload::hosts_now(&self.api).await;
            let paused_hosts: Vec<String> = rows
                .iter()
                .flatten()
                .filter(|r| r.state == "PAUSED_BY_USER")
                .map(|r| r.host.clone())
                .collect();
            if stage.is_ok()
                && rows.is_some()
                && !stage_paused
                && !limit_changed
                && paused_hosts.is_empty()
            {
                return;
            }
            if stage_paused {
                self.stage_state(rng, false).await;
            }
            if limit_changed {
                self.set_max_parallel(rng, self.max_parallel).await;
            }
            for host in &paused_hosts {
                self.host_action(rng, host, "NORMAL").await;
            }
            tokio::time::sleep(RESUME_CHECK_EVERY).await;
        }
        tracing::warn!(env = ENV, stage = STAGE, "the operator could not resume everything");
    }
}

fn stage_path() -> String {
    format!("/v1/envs/{ENV}/{STAGE}")
}

/// Sleeps `d`, or less if `stop` is raised; answers whether it was.
async fn wait_or_stop(stop: &mut watch::Receiver<bool>, d: Duration) -> bool {
    if *stop.borrow() {
        return true;
    }
    tokio::select! {
        _ = tokio::time::sleep(d) => *stop.borrow(),
        _ = stop.changed() => true,
    }
}
