//! Simulated Teletraan agents over the JSON ping (`POST /v1/system/ping`), for tests and load:
//! each walks every goal it gets through the deploy stages, "running" each stage's hook for a
//! fixed time, and records when it ran deploy steps so an observer can check parallelism.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Per-request timeout of one ping.
pub const PING_TIMEOUT: Duration = Duration::from_secs(2);
/// Pause after a failed ping before trying the next coordinator.
pub const RETRY_PAUSE: Duration = Duration::from_millis(50);

#[derive(Debug, Clone)]
pub struct FleetSpec {
    pub hosts: usize,
    /// Host names are `{prefix}{i}`; host ids are `id-{prefix}{i}`.
    pub prefix: String,
    /// Groups every host reports (capacity by group).
    pub groups: Vec<String>,
    /// Coordinator base URLs; each agent starts at a different one and moves on after errors.
    pub coordinators: Vec<String>,
    /// How long each deploy stage's hook "runs".
    pub hook: Duration,
    /// Pause after a NOOP answer (Teletraan agents use 30-90 s). Unused with `long_poll`.
    pub idle_ping: Duration,
    /// Ping over the native protocol instead, held by the leader up to `wait` when idle.
    pub long_poll: Option<LongPoll>,
    /// If set, host `i` reports `ec2Tags` `{"az": zones[i % len]}` (deploy constraints).
    pub zones: Vec<String>,
}

impl FleetSpec {
    /// The zone host `i` reports, if any.
    pub fn zone(&self, i: usize) -> Option<&str> {
        (!self.zones.is_empty()).then(|| self.zones[i % self.zones.len()].as_str())
    }
}

/// Native-protocol settings of a simulated fleet.
#[derive(Debug, Clone)]
pub struct LongPoll {
    pub ca: rustls_pki_types::CertificateDer<'static>,
    pub agent_addrs: Vec<std::net::SocketAddr>,
    pub token: Option<String>,
    pub wait: Duration,
    /// One UDP endpoint shared by the fleet's connections (set by [`Fleet::start`]).
    pub endpoint: Option<quinn::Endpoint>,
}

/// One host's run of deploy steps for one deploy: from the first goal (PRE_DOWNLOAD) until it
/// finished POST_RESTART.
#[derive(Debug, Clone)]
pub struct StepInterval {
    pub host: String,
    pub deploy_id: String,
    pub start: Instant,
    pub end: Option<Instant>,
}

#[derive(Default)]
struct Shared {
    /// Hosts cut off from every coordinator (by index).
    cut_off: Mutex<std::collections::BTreeSet<usize>>,
    intervals: Mutex<Vec<StepInterval>>,
    serving: Mutex<std::collections::BTreeMap<String, String>>,
    ping_errors: std::sync::atomic::AtomicU64,
}

pub struct Fleet {
    shared: Arc<Shared>,
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Fleet {
    pub fn start(mut spec: FleetSpec) -> Fleet {
        crate::ensure_crypto_provider();
        if let Some(lp) = &mut spec.long_poll
            && lp.endpoint.is_none()
        {
            lp.endpoint = Some(
                agent::coordinator_client::CoordinatorClient::endpoint(&lp.ca)
                    .expect("QUIC endpoint"),
            );
        }
        let shared = Arc::new(Shared::default());
        let stop = Arc::new(AtomicBool::new(false));
        let client = reqwest::Client::builder().timeout(PING_TIMEOUT).build().expect("HTTP client");
        let tasks = (0..spec.hosts)
            .map(|i| {
                let host = format!("{}{i}", spec.prefix);
                tokio::spawn(agent(
                    spec.clone(),
                    i,
                    host,
                    client.clone(),
                    shared.clone(),
                    stop.clone(),
                ))
            })
            .collect();
        Fleet { shared, stop, tasks }
    }

    /// Every recorded interval of deploy steps.
    pub fn intervals(&self) -> Vec<StepInterval> {
        self.shared.intervals.lock().expect("lock").clone()
    }

    /// How many hosts serve `deploy_id` (reported SERVING_BUILD for it).
    pub fn serving(&self, deploy_id: &str) -> usize {
        self.shared.serving.lock().expect("lock").values().filter(|d| *d == deploy_id).count()
    }

    /// Cuts host `i` off from the coordinators: it finishes the step it runs, then neither
    /// pings nor starts another step until [`Fleet::restore`].
    pub fn cut_off(&self, i: usize) {
        self.shared.cut_off.lock().expect("lock").insert(i);
    }

    pub fn restore(&self, i: usize) {
        self.shared.cut_off.lock().expect("lock").remove(&i);
    }

    /// Indexes of hosts currently running deploy steps of `deploy_id`.
    pub fn running(&self, deploy_id: &str) -> Vec<String> {
        self.shared
            .intervals
            .lock()
            .expect("lock")
            .iter()
            .filter(|i| i.deploy_id == deploy_id && i.end.is_none())
            .map(|i| i.host.clone())
            .collect()
    }

    pub fn ping_errors(&self) -> u64 {
        self.shared.ping_errors.load(Ordering::Relaxed)
    }

    pub async fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

/// The largest number of intervals of `deploy_id` open at one instant.
pub fn max_overlap(intervals: &[StepInterval], deploy_id: &str) -> usize {
    let far = Instant::now() + Duration::from_secs(3600);
    let mut edges: Vec<(Instant, i32)> = intervals
        .iter()
        .filter(|i| i.deploy_id == deploy_id)
        .flat_map(|i| [(i.start, 1), (i.end.unwrap_or(far), -1)])
        .collect();
    // Ends sort before starts at the same instant.
    edges.sort_by(|a, b| a.0.cmp(&b.0).then(a.1.cmp(&b.1)));
    let (mut open, mut max) = (0i32, 0i32);
    for (_, d) in edges {
        open += d;
        max = max.max(open);
    }
    max as usize
}

async fn agent(
    spec: FleetSpec,
    index: usize,
    host: String,
    client: reqwest::Client,
    shared: Arc<Shared>,
    stop: Arc<AtomicBool>,
) {
    use proto::enums::{AgentStatus, DeployStage, OpCode};
    use proto::ids::HostId;
    use proto::ping::{PingReportBean, PingRequestBean, PingResponseBean};

    let mut coordinator = index % spec.coordinators.len().max(1);
    let mut report: Option<PingReportBean> = None;
    let mut open: Option<usize> = None;
    let quic = spec.long_poll.as_ref().map(|lp| {
        let endpoint = lp.endpoint.clone().expect("Fleet::start sets the shared endpoint");
        agent::coordinator_client::CoordinatorClient::with_endpoint(
            endpoint,
            lp.agent_addrs.clone(),
            lp.token.clone(),
        )
    });
    while !stop.load(Ordering::Relaxed) {
        if shared.cut_off.lock().expect("lock").contains(&index) {
            // Cut off: no coordinator answers, so no new step starts.
            if let Some(i) = open.take() {
                shared.intervals.lock().expect("lock")[i].end = Some(Instant::now());
            }
            tokio::time::sleep(RETRY_PAUSE).await;
            continue;
        }
        let mut req = PingRequestBean::new(HostId::new(format!("id-{host}")));
        req.host_name = Some(host.clone());
        req.host_ip = Some("127.0.0.1".into());
        req.groups = spec.groups.iter().cloned().collect();
        req.agent_version = Some("simfleet".into());
        req.ec2_tags = spec.zone(index).map(|z| serde_json::json!({ "az": z }).to_string());
        req.reports = report.iter().cloned().collect();
        let resp: Option<PingResponseBean> = match (&quic, &spec.long_poll) {
            (Some(q), Some(lp)) => q.ping(&req, lp.wait).await.ok(),
            _ => {
                let url = format!("{}/v1/system/ping", spec.coordinators[coordinator]);
                match client.post(&url).json(&req).send().await {
                    Ok(r) if r.status().is_success() => r.json().await.ok(),
                    _ => None,
                }
            }
        };
        let Some(resp) = resp else {
            shared.ping_errors.fetch_add(1, Ordering::Relaxed);
            coordinator = (coordinator + 1) % spec.coordinators.len().max(1);
            tokio::time::sleep(RETRY_PAUSE).await;
            continue;
        };
        match (resp.op_code, &resp.deploy_goal) {
            (OpCode::Noop, _) | (_, None) => {
                if spec.long_poll.is_none() {
                    tokio::time::sleep(spec.idle_ping).await;
                }
                continue;
            }
            (OpCode::Delete, _) => {
                report = None;
                continue;
            }
            _ => {}
        }
        let goal = resp.deploy_goal.expect("checked above");
        let stage = goal.deploy_stage.unwrap_or(DeployStage::Unknown);
        let deploy_id = goal.deploy_id.clone().map(|d| d.into_string()).unwrap_or_default();
        if stage == DeployStage::ServingBuild {
            shared.serving.lock().expect("lock").insert(host.clone(), deploy_id.clone());
        } else {
            if open.is_none() {
                let mut all = shared.intervals.lock().expect("lock");
                all.push(StepInterval {
                    host: host.clone(),
                    deploy_id: deploy_id.clone(),
                    start: Instant::now(),
                    end: None,
                });
                open = Some(all.len() - 1);
            }
            tokio::time::sleep(spec.hook).await;
            if stage == DeployStage::PostRestart
                && let Some(i) = open.take()
            {
                shared.intervals.lock().expect("lock")[i].end = Some(Instant::now());
            }
        }
        report = Some(PingReportBean {
            deploy_id: goal.deploy_id.clone(),
            env_id: goal.env_id.clone(),
            deploy_stage: Some(stage),
            agent_status: Some(AgentStatus::Succeeded),
            error_code: Some(0),
            fail_count: Some(0),
            deploy_alias: goal.deploy_alias.clone(),
            ..Default::default()
        });
    }
}
