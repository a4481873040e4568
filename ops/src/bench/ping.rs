//! Agent pings against our coordinator: `POST /v1/system/ping` from many simulated hosts that
//! are all at SERVING_BUILD, so every ping is Teletraan's steady state (answer NOOP, write
//! nothing). Measures the read-only ping path of the leader.

use std::sync::Arc;

use futures::future::BoxFuture;
use proto::enums::{AgentStatus, DeployStage, OpCode};
use proto::ids::{DeployId, EnvId, HostId};
use proto::ping::{PingReportBean, PingRequestBean, PingResponseBean};
use serde_json::{Value, json};

use super::loadgen::WriteTarget;

/// Host names of the simulated fleet: `{prefix}{i}`, ids `id-{prefix}{i}`.
pub fn host_name(prefix: &str, i: usize) -> String {
    format!("{prefix}{i}")
}

/// Which simulated hosts a steady-state ping run cycles through, and what they report.
#[derive(Debug, Clone)]
pub struct SteadyFleet {
    pub hosts: usize,
    pub concurrency: usize,
    pub prefix: String,
    pub group: String,
    pub env_id: String,
    pub deploy_id: String,
}

impl SteadyFleet {
    /// Write `seq` of `worker`: a ping of host `(worker + seq × concurrency) mod hosts`, which
    /// reports SERVING_BUILD of the current deploy.
    pub fn request(&self, worker: usize, seq: u64) -> PingRequestBean {
        let i = (worker + (seq as usize) * self.concurrency) % self.hosts;
        let host = host_name(&self.prefix, i);
        let mut req = PingRequestBean::new(HostId::new(format!("id-{host}")));
        req.host_name = Some(host);
        req.host_ip = Some("127.0.0.1".into());
        req.groups.insert(self.group.clone());
        req.agent_version = Some("bench".into());
        req.reports = vec![PingReportBean {
            deploy_id: Some(DeployId::new(self.deploy_id.clone())),
            env_id: Some(EnvId::new(self.env_id.clone())),
            deploy_stage: Some(DeployStage::ServingBuild),
            agent_status: Some(AgentStatus::Succeeded),
            error_code: Some(0),
            fail_count: Some(0),
            ..Default::default()
        }];
        req
    }
}

fn expect_noop(resp: &PingResponseBean) -> Result<(), String> {
    if resp.op_code == OpCode::Noop {
        Ok(())
    } else {
        Err(format!("expected NOOP, got {}", resp.op_code))
    }
}

/// Steady-state pings as Teletraan's JSON (`POST /v1/system/ping`).
pub struct SteadyPing {
    pub base_url: String,
    pub fleet: SteadyFleet,
}

impl WriteTarget for SteadyPing {
    fn request(
        &self,
        client: &reqwest::Client,
        worker: usize,
        seq: u64,
        _value: &[u8],
    ) -> BoxFuture<'static, Result<(), String>> {
        let body = self.fleet.request(worker, seq);
        let req = client.post(format!("{}/v1/system/ping", self.base_url)).json(&body);
        Box::pin(async move {
            let resp = req.send().await.map_err(|e| e.to_string())?;
            if !resp.status().is_success() {
                return Err(format!("status {}", resp.status()));
            }
            expect_noop(&resp.json().await.map_err(|e| e.to_string())?)
        })
    }

    fn name(&self) -> String {
        "ping".into()
    }
}

/// Brings `hosts` simulated hosts through their first deploy of the stage's current deploy, with
/// `concurrency` workers, so that every later ping is steady state. Returns the pings sent.
pub async fn bring_to_steady_state(
    base_url: &str,
    hosts: usize,
    concurrency: usize,
    prefix: &str,
    group: &str,
) -> anyhow::Result<u64> {
    crate::ensure_crypto_provider();
    let client = reqwest::Client::new();
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let sent = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (client, next, sent) = (client.clone(), next.clone(), sent.clone());
        let (base, prefix, group) = (base_url.to_string(), prefix.to_string(), group.to_string());
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= hosts {
                    return Ok::<(), anyhow::Error>(());
                }
                let host = host_name(&prefix, i);
                let mut report: Option<Value> = None;
                for _ in 0..20 {
                    let body = json!({"hostId": format!("id-{host}"), "hostName": host, "groups": [group], "reports": report.iter().collect::<Vec<_>>()});
                    let v: Value = client.post(format!("{base}/v1/system/ping")).json(&body).send().await?.error_for_status()?.json().await?;
                    sent.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let goal = &v["deployGoal"];
                    let stage = goal["deployStage"].as_str().unwrap_or("");
                    if v["opCode"] == "NOOP" && report.as_ref().is_some_and(|r| r["deployStage"] == "SERVING_BUILD") {
                        break;
                    }
                    if v["opCode"] == "NOOP" {
                        anyhow::bail!("host {host} got NOOP before serving: {v}");
                    }
                    report = Some(json!({"deployId": goal["deployId"], "envId": goal["envId"], "deployStage": stage, "agentStatus": "SUCCEEDED", "errorCode": 0, "failCount": 0}));
                }
            }
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(sent.load(std::sync::atomic::Ordering::Relaxed))
}

/// The same steady-state ping over the native protocol (`tt-agent/1`, QUIC, no long-poll):
/// worker `w` uses client `w mod clients` (one QUIC connection each).
pub struct QuicSteadyPing {
    pub clients: Vec<Arc<agent::coordinator_client::CoordinatorClient>>,
    pub fleet: SteadyFleet,
}

impl WriteTarget for QuicSteadyPing {
    fn request(
        &self,
        _http: &reqwest::Client,
        worker: usize,
        seq: u64,
        _value: &[u8],
    ) -> BoxFuture<'static, Result<(), String>> {
        let req = self.fleet.request(worker, seq);
        let client = self.clients[worker % self.clients.len()].clone();
        Box::pin(async move {
            expect_noop(
                &client.ping(&req, std::time::Duration::ZERO).await.map_err(|e| e.to_string())?,
            )
        })
    }

    fn name(&self) -> String {
        "ping-quic".into()
    }
}
