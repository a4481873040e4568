//! A three-member etcd cluster on loopback, and puts through its v3 JSON gateway.
//!
//! etcd is the baseline our Raft write path is compared against (`reference/baselines.md`). It
//! runs with its defaults, fsync included, so that both sides pay for durable writes.
//!
//! Facts about etcd 3.4.23's gateway that the code below relies on (checked against the Debian
//! build):
//! - The paths are `/v3/...`; `/v3beta/...` still works, `/v3alpha/...` is gone (404).
//! - `bytes` fields (keys, values) are base64 in both directions, and 64-bit integers
//!   (`member_id`, `leader`, `revision`) are JSON strings, not numbers.
//! - gRPC errors come back as HTTP errors with `{"error", "message", "code"}` bodies, for example
//!   400 with code 3 for a key that is not valid base64.
//! - `GET /health` answers `{"health":"true"}`, a string, once the member sees a leader.

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use futures::future::BoxFuture;

use super::loadgen::{self, WriteTarget};

/// Where Debian's `etcd-server` package puts the binary.
const ETCD_BIN: &str = "/usr/bin/etcd";

const MEMBER_COUNT: u16 = 3;

/// etcd 3.4 elects a leader within about two election timeouts (1 s each by default); the bound
/// leaves room for a loaded 2-core machine.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
const READY_POLL_INTERVAL: Duration = Duration::from_millis(100);

/// Three etcd processes on 127.0.0.1, killed when this value is dropped.
///
/// Member `i` listens for clients on `base_port + 2i` and for peers on `base_port + 2i + 1`, keeps
/// its data in `dir/member-{i}` and logs to `dir/member-{i}.log`.
pub struct EtcdCluster {
    members: Vec<Member>,
}

struct Member {
    client_url: String,
    log_path: PathBuf,
    process: Child,
}

impl EtcdCluster {
    /// Process ids of the members (to pause them while the other system is measured).
    pub fn pids(&self) -> Vec<u32> {
        self.members.iter().map(|m| m.process.id()).collect()
    }

    /// Launches the members and waits until every one reports itself healthy.
    ///
    /// Fails if etcd is not installed, if a member's data directory already exists (a stale
    /// member would ignore `--initial-cluster` and rejoin its old cluster), or if the cluster is
    /// not healthy within `READY_TIMEOUT`; the members started so far are killed.
    pub async fn start(dir: &Path, base_port: u16) -> anyhow::Result<EtcdCluster> {
        if !Path::new(ETCD_BIN).exists() {
            bail!("{ETCD_BIN} not found; install it with `apt-get install -y etcd-server`");
        }
        assert!(
            base_port.checked_add(2 * MEMBER_COUNT).is_some(),
            "etcd base port {base_port} leaves no room for {MEMBER_COUNT} members"
        );
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;

        let client_port = |i: u16| base_port + 2 * i;
        let peer_url = |i: u16| format!("http://127.0.0.1:{}", base_port + 2 * i + 1);
        let initial_cluster = (0..MEMBER_COUNT)
            .map(|i| format!("member-{i}={}", peer_url(i)))
            .collect::<Vec<_>>()
            .join(",");

        let mut cluster = EtcdCluster { members: Vec::new() };
        for i in 0..MEMBER_COUNT {
            let name = format!("member-{i}");
            let data_dir = dir.join(&name);
            if data_dir.exists() {
                bail!("{} already exists; pass a fresh directory", data_dir.display());
            }
            let log_path = dir.join(format!("{name}.log"));
            let log = File::create(&log_path)
                .with_context(|| format!("creating {}", log_path.display()))?;
            let client_url = format!("http://127.0.0.1:{}", client_port(i));

            let mut command = Command::new(ETCD_BIN);
            command
                .arg("--name")
                .arg(&name)
                .arg("--data-dir")
                .arg(&data_dir)
                .args(["--listen-client-urls", &client_url])
                .args(["--advertise-client-urls", &client_url])
                .args(["--listen-peer-urls", &peer_url(i)])
                .args(["--initial-advertise-peer-urls", &peer_url(i)])
                .args(["--initial-cluster", &initial_cluster])
                .args(["--initial-cluster-state", "new"])
                .args(["--initial-cluster-token", &format!("tt-bench-{base_port}")])
                // capnslog, 3.4's default, prints a deprecation warning on every start.
                .args(["--logger", "zap", "--log-outputs", "stderr"])
                .stdin(Stdio::null())
                .stdout(log.try_clone().context("duplicating the log file handle")?)
                .stderr(log);
            // etcd reads every flag from an ETCD_* variable too; one left in the environment
            // would silently change what is measured.
            for (key, _) in std::env::vars_os() {
                if key.to_string_lossy().starts_with("ETCD_") {
                    command.env_remove(key);
                }
            }
            let process = command.spawn().with_context(|| format!("starting {ETCD_BIN}"))?;
            tracing::info!(member = %name, pid = process.id(), %client_url, "etcd member started");
            cluster.members.push(Member { client_url, log_path, process });
        }

        cluster.wait_healthy().await?;
        Ok(cluster)
    }

    /// Client URLs of the members, in member order.
    pub fn client_urls(&self) -> Vec<String> {
        self.members.iter().map(|member| member.client_url.clone()).collect()
    }

    /// The client URL of the member that is currently leader.
    ///
    /// Asks every member for `POST /v3/maintenance/status` and picks the one whose own
    /// `header.member_id` equals the `leader` it reports. Retries until `READY_TIMEOUT` while an
    /// election is in progress.
    pub async fn leader_client_url(&self) -> anyhow::Result<String> {
        let client = loadgen::http_client();
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            for member in &self.members {
                match member_status(&client, &member.client_url).await {
                    Ok(status) if status.member_id == status.leader => {
                        return Ok(member.client_url.clone());
                    }
                    Ok(_) => {}
                    Err(error) => {
                        tracing::debug!(url = %member.client_url, "etcd status failed: {error:#}");
                    }
                }
            }
            if Instant::now() >= deadline {
                bail!("no etcd member reports itself leader after {READY_TIMEOUT:?}");
            }
            tokio::time::sleep(READY_POLL_INTERVAL).await;
        }
    }

    async fn wait_healthy(&mut self) -> anyhow::Result<()> {
        let client = loadgen::http_client();
        let deadline = Instant::now() + READY_TIMEOUT;
        for member in &mut self.members {
            let url = format!("{}/health", member.client_url);
            loop {
                if let Some(exit) = member.process.try_wait().context("polling etcd")? {
                    bail!(
                        "etcd exited with {exit} during start-up; see {}",
                        member.log_path.display()
                    );
                }
                let health = async {
                    let response = client.get(&url).send().await?.error_for_status()?;
                    response.json::<serde_json::Value>().await
                };
                if let Ok(body) = health.await
                    && body["health"] == "true"
                {
                    break;
                }
                if Instant::now() >= deadline {
                    bail!(
                        "{url} not healthy after {READY_TIMEOUT:?}; see {}",
                        member.log_path.display()
                    );
                }
                tokio::time::sleep(READY_POLL_INTERVAL).await;
            }
        }
        tracing::info!(members = self.members.len(), "etcd cluster healthy");
        Ok(())
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for member in &mut self.members {
            // SIGKILL: nothing etcd would do on a graceful stop matters to a throwaway cluster.
            // Errors mean the process is already gone, which is the goal.
            let _ = member.process.kill();
            let _ = member.process.wait();
        }
    }
}

struct MemberStatus {
    member_id: String,
    leader: String,
}

async fn member_status(client: &reqwest::Client, client_url: &str) -> anyhow::Result<MemberStatus> {
    let body: serde_json::Value = client
        .post(format!("{client_url}/v3/maintenance/status"))
        .json(&serde_json::json!({}))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    // The gateway prints uint64 as strings; accept numbers too in case a later version does not.
    let id = |value: &serde_json::Value| match value {
        serde_json::Value::String(text) => Some(text.clone()),
        serde_json::Value::Number(number) => Some(number.to_string()),
        _ => None,
    };
    let member_id = id(&body["header"]["member_id"]).context("status has no header.member_id")?;
    let leader = id(&body["leader"]).context("status has no leader")?;
    Ok(MemberStatus { member_id, leader })
}

/// Puts through the v3 JSON gateway: `POST {base_url}/v3/kv/put`.
///
/// Keys are `{key_prefix}w{worker}/{seq}`, so every (worker, seq) writes a distinct key; give each
/// run its own prefix to keep keys distinct across runs too.
#[derive(Debug, Clone)]
pub struct EtcdPut {
    /// Client URL of the leader, e.g. `http://127.0.0.1:23790`. A follower would forward the
    /// proposal to the leader, adding a hop that the baseline does not have.
    pub base_url: String,
    pub key_prefix: String,
}

impl EtcdPut {
    /// The JSON body of write `seq` of `worker`.
    pub(crate) fn body(&self, worker: usize, seq: u64, value: &[u8]) -> serde_json::Value {
        let key = format!("{}w{worker}/{seq}", self.key_prefix);
        serde_json::json!({ "key": BASE64.encode(key), "value": BASE64.encode(value) })
    }
}

impl WriteTarget for EtcdPut {
    fn request(
        &self,
        client: &reqwest::Client,
        worker: usize,
        seq: u64,
        value: &[u8],
    ) -> BoxFuture<'static, Result<(), String>> {
        let request = client
            .post(format!("{}/v3/kv/put", self.base_url))
            .json(&self.body(worker, seq, value));
        Box::pin(async move {
            loadgen::expect_status(request.send().await, &[reqwest::StatusCode::OK]).await
        })
    }

    fn name(&self) -> String {
        super::ETCD_TARGET.to_owned()
    }
}
