//! A local coordinator cluster of real processes: TLS material, data directories, ports, and
//! the operations tests and benchmarks need (kill -9, restart, wipe, wait for a leader).

use std::fs::{self, File};
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

/// How long `stop` waits after SIGTERM before SIGKILL.
pub const STOP_GRACE: Duration = Duration::from_secs(5);
/// How often cluster status is polled while waiting.
pub const POLL_INTERVAL: Duration = Duration::from_millis(50);

/// What to start.
#[derive(Debug, Clone)]
pub struct Spec {
    pub nodes: usize,
    pub dir: PathBuf,
    /// First HTTP port; node i gets base + i - 1. `None` picks free ports.
    pub base_http_port: Option<u16>,
    /// First Raft (UDP) port; `None` picks free ports.
    pub base_raft_port: Option<u16>,
    pub coordinator_bin: PathBuf,
    /// Extra `TT_*` settings for every node (e.g. snapshot thresholds in tests).
    pub env: Vec<(String, String)>,
    /// What the founding membership says node i (element i - 1) is reached at, instead of its
    /// own addresses: e.g. fault proxies in front of it (the chaos suite). Peers dial the Raft
    /// address and send HTTP (forwarded writes, read indexes, blob copies) to the HTTP address;
    /// followers redirect agents to the leader's agent address. `None`: the nodes' own.
    pub advertise: Option<Vec<Advertise>>,
}

/// Where peers and agents reach a node, when not at its own addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Advertise {
    /// Where the other nodes send this node HTTP requests. `None`: its own HTTP address (which
    /// operators and tools always use).
    pub http: Option<SocketAddr>,
    pub raft: SocketAddr,
    pub agent: SocketAddr,
    /// The node's blob origin: where it listens (`--swarm-addr`) and what the tracker hands
    /// agents (`--swarm-advertise`). `None`: as the spec's environment says.
    pub swarm: Option<SwarmAdvertise>,
}

/// A node's blob origin behind another address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SwarmAdvertise {
    pub listen: SocketAddr,
    pub advertise: SocketAddr,
}

/// One node of the cluster, as written to `cluster.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeEntry {
    pub id: u64,
    pub pid: Option<u32>,
    pub http_addr: SocketAddr,
    pub raft_addr: SocketAddr,
    /// QUIC endpoint for agents (`tt-agent/1`).
    pub agent_addr: SocketAddr,
    pub data_dir: PathBuf,
    pub tls_dir: PathBuf,
    pub log: PathBuf,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Manifest {
    pub nodes: Vec<NodeEntry>,
}

pub struct DevCluster {
    spec: Spec,
    pub nodes: Vec<NodeEntry>,
    children: Vec<Option<Child>>,
    members: Vec<String>,
    /// Nodes started without `--initial-member` (added to the cluster later).
    standby: Vec<u64>,
    /// Extra environment for one node's next starts (e.g. the chaos suite's failpoints).
    node_env: std::collections::BTreeMap<u64, Vec<(String, String)>>,
}

/// Finds the `coordinator` binary: `TT_COORDINATOR_BIN`, else next to the running executable
/// (or its parent, for test binaries in `target/*/deps`).
pub fn find_coordinator_bin() -> anyhow::Result<PathBuf> {
    find_sibling_bin("coordinator", "TT_COORDINATOR_BIN")
}

/// Finds binary `name` of this workspace: the path in `$env_var`, else next to the running
/// executable (or its parent, for test binaries in `target/*/deps`).
pub fn find_sibling_bin(name: &str, env_var: &str) -> anyhow::Result<PathBuf> {
    if let Ok(p) = std::env::var(env_var) {
        return Ok(PathBuf::from(p));
    }
    let exe = std::env::current_exe().context("locating the running executable")?;
    for dir in exe.ancestors().skip(1).take(2) {
        let candidate = dir.join(name);
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    bail!(
        "cannot find the `{name}` binary next to {}; build the workspace with `cargo build --workspace --bins` or set {env_var}",
        exe.display()
    )
}

/// Tries at drawing a port this process has not handed out yet.
const MAX_PORT_DRAWS: usize = 64;

/// Ports this process has handed out. A port is released as soon as it is drawn (the node
/// binds it later), and the kernel may offer it again: without this, two nodes (or a node's
/// HTTP and QUIC ports) could be given the same port.
static HANDED_OUT: std::sync::Mutex<std::collections::BTreeSet<u16>> =
    std::sync::Mutex::new(std::collections::BTreeSet::new());

/// A loopback port free for TCP (`udp` false) or UDP, never one this process handed out before.
fn free_port(udp: bool) -> anyhow::Result<u16> {
    for _ in 0..MAX_PORT_DRAWS {
        let port = if udp {
            UdpSocket::bind("127.0.0.1:0")?.local_addr()?.port()
        } else {
            TcpListener::bind("127.0.0.1:0")?.local_addr()?.port()
        };
        if HANDED_OUT.lock().expect("port registry lock").insert(port) {
            return Ok(port);
        }
    }
    bail!("no fresh loopback port after {MAX_PORT_DRAWS} draws")
}

/// The log format of the processes the dev tools start. Their logs go to files that people and
/// the tests' log tails read, so text, unless `TT_LOG_FORMAT` asks for JSON.
pub fn dev_log_format() -> String {
    std::env::var(telemetry::log::LOG_FORMAT_ENV).unwrap_or_else(|_| "text".into())
}

/// A loopback TCP port for a process this one starts (see [`free_port`]).
pub fn free_tcp_port() -> anyhow::Result<u16> {
    free_port(false)
}

/// A loopback UDP port for a process this one starts (see [`free_port`]).
pub fn free_udp_port() -> anyhow::Result<u16> {
    free_port(true)
}

fn run_checked(cmd: &mut Command) -> anyhow::Result<()> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

/// Issues node `i`'s certificate (once) and picks its ports and directories.
fn prepare_node(spec: &Spec, ca_dir: &Path, i: u64) -> anyhow::Result<NodeEntry> {
    let http_port = match spec.base_http_port {
        Some(b) => b + (i as u16) - 1,
        None => free_tcp_port()?,
    };
    let raft_port = match spec.base_raft_port {
        Some(b) => b + (i as u16) - 1,
        None => free_udp_port()?,
    };
    let agent_port = match spec.base_raft_port {
        Some(b) => b + 10 + (i as u16) - 1,
        None => free_udp_port()?,
    };
    let node_dir = spec.dir.join(format!("node-{i}"));
    let tls_dir = node_dir.join("tls");
    if !tls_dir.join("node.pem").exists() {
        run_checked(
            Command::new(&spec.coordinator_bin)
                .args(["certs", "issue", "--ca-dir"])
                .arg(ca_dir)
                .arg("--out")
                .arg(&tls_dir)
                .args(["--name", &format!("node-{i}")]),
        )?;
    }
    Ok(NodeEntry {
        id: i,
        pid: None,
        http_addr: SocketAddr::from(([127, 0, 0, 1], http_port)),
        raft_addr: SocketAddr::from(([127, 0, 0, 1], raft_port)),
        agent_addr: SocketAddr::from(([127, 0, 0, 1], agent_port)),
        data_dir: node_dir.join("data"),
        tls_dir,
        log: node_dir.join("coordinator.log"),
    })
}

/// Node `n`'s `--initial-member` entry (`id=http,raft,agent`): where the other nodes reach it.
fn member(n: &NodeEntry, advertise: Option<&Advertise>) -> String {
    let (http, raft, agent) = match advertise {
        Some(adv) => (adv.http.unwrap_or(n.http_addr), adv.raft, adv.agent),
        None => (n.http_addr, n.raft_addr, n.agent_addr),
    };
    format!("{}={http},{raft},{agent}", n.id)
}

impl DevCluster {
    /// Starts one more node with the cluster's CA but outside its membership: it waits to be
    /// added (`POST /v1/cluster/nodes`). Returns its entry.
    pub fn add_standby_node(&mut self) -> anyhow::Result<NodeEntry> {
        let id = self.nodes.iter().map(|n| n.id).max().unwrap_or(0) + 1;
        let mut spec = self.spec.clone();
        spec.base_http_port = None;
        spec.base_raft_port = None;
        let entry = prepare_node(&spec, &self.spec.dir.join("ca"), id)?;
        self.nodes.push(entry.clone());
        self.children.push(None);
        self.standby.push(id);
        self.spawn(self.nodes.len() - 1)?;
        self.write_manifest()?;
        Ok(entry)
    }

    /// Creates TLS material and directories, and starts every node.
    /// The coordinator binary the nodes run.
    pub fn coordinator_bin(&self) -> &Path {
        &self.spec.coordinator_bin
    }

    pub fn start(spec: Spec) -> anyhow::Result<DevCluster> {
        fs::create_dir_all(&spec.dir)
            .with_context(|| format!("creating {}", spec.dir.display()))?;
        let ca_dir = spec.dir.join("ca");
        if !ca_dir.join("ca.pem").exists() {
            run_checked(
                Command::new(&spec.coordinator_bin)
                    .args(["certs", "init-ca", "--dir"])
                    .arg(&ca_dir),
            )?;
        }
        let mut nodes = Vec::new();
        for i in 1..=spec.nodes as u64 {
            nodes.push(prepare_node(&spec, &ca_dir, i)?);
        }
        if let Some(adv) = &spec.advertise
            && adv.len() != nodes.len()
        {
            bail!("{} advertised addresses for {} nodes", adv.len(), nodes.len());
        }
        let members = nodes
            .iter()
            .enumerate()
            .map(|(i, n)| member(n, spec.advertise.as_ref().map(|adv| &adv[i])))
            .collect();
        let children = nodes.iter().map(|_| None).collect();
        let mut cluster = DevCluster {
            spec,
            nodes,
            children,
            members,
            standby: Vec::new(),
            node_env: Default::default(),
        };
        for i in 0..cluster.nodes.len() {
            cluster.spawn(i)?;
        }
        cluster.write_manifest()?;
        Ok(cluster)
    }

    fn index(&self, id: u64) -> usize {
        self.nodes.iter().position(|n| n.id == id).unwrap_or_else(|| panic!("no node {id}"))
    }

    fn spawn(&mut self, i: usize) -> anyhow::Result<()> {
        let n = &self.nodes[i];
        let log = File::options()
            .create(true)
            .append(true)
            .open(&n.log)
            .with_context(|| format!("opening {}", n.log.display()))?;
        let mut cmd = Command::new(&self.spec.coordinator_bin);
        cmd.env(telemetry::log::LOG_FORMAT_ENV, dev_log_format());
        cmd.arg("run")
            .arg("--node-id")
            .arg(n.id.to_string())
            .arg("--data-dir")
            .arg(&n.data_dir)
            .arg("--tls-dir")
            .arg(&n.tls_dir)
            .arg("--http-addr")
            .arg(n.http_addr.to_string())
            .arg("--raft-addr")
            .arg(n.raft_addr.to_string())
            .arg("--agent-addr")
            .arg(n.agent_addr.to_string())
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        if !self.standby.contains(&n.id) {
            cmd.arg("--initial-member").arg(self.members.join(";"));
        }
        if let Some(swarm) = self.spec.advertise.as_ref().and_then(|adv| adv.get(i)?.swarm) {
            cmd.arg("--swarm-addr").arg(swarm.listen.to_string());
            cmd.arg("--swarm-advertise").arg(swarm.advertise.to_string());
        }
        for (k, v) in self.spec.env.iter().chain(self.node_env.get(&n.id).into_iter().flatten()) {
            cmd.env(k, v);
        }
        let child = cmd.spawn().with_context(|| format!("starting node {}", n.id))?;
        self.nodes[i].pid = Some(child.id());
        self.children[i] = Some(child);
        Ok(())
    }

    /// Writes `DIR/cluster.json` describing every node.
    pub fn write_manifest(&self) -> anyhow::Result<PathBuf> {
        let path = self.spec.dir.join("cluster.json");
        let manifest = Manifest { nodes: self.nodes.clone() };
        fs::write(&path, serde_json::to_vec_pretty(&manifest)?)
            .with_context(|| format!("writing {}", path.display()))?;
        Ok(path)
    }

    pub fn base_url(&self, id: u64) -> String {
        format!("http://{}", self.nodes[self.index(id)].http_addr)
    }

    pub fn ids(&self) -> Vec<u64> {
        self.nodes.iter().map(|n| n.id).collect()
    }

    /// `kill -9` a node and reap it.
    pub fn kill9(&mut self, id: u64) {
        let i = self.index(id);
        if let Some(mut child) = self.children[i].take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.nodes[i].pid = None;
    }

    /// Sets the extra environment of node `id`'s next starts (on top of the spec's); empty
    /// clears it.
    pub fn set_node_env(&mut self, id: u64, env: Vec<(String, String)>) {
        self.node_env.insert(id, env);
    }

    /// Starts a stopped node again with its data directory as it is.
    pub fn restart(&mut self, id: u64) -> anyhow::Result<()> {
        let i = self.index(id);
        self.kill9(id);
        self.spawn(i)?;
        self.write_manifest()?;
        Ok(())
    }

    /// Kills a node and deletes its data directory (its certificates stay).
    pub fn wipe(&mut self, id: u64) -> anyhow::Result<()> {
        self.kill9(id);
        let dir = &self.nodes[self.index(id)].data_dir;
        if dir.exists() {
            fs::remove_dir_all(dir).with_context(|| format!("removing {}", dir.display()))?;
        }
        Ok(())
    }

    pub fn is_running(&mut self, id: u64) -> bool {
        let i = self.index(id);
        match &mut self.children[i] {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Stops every node: SIGTERM, then SIGKILL after [`STOP_GRACE`].
    pub fn stop_all(&mut self) {
        for child in self.children.iter().flatten() {
            let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
        }
        let deadline = Instant::now() + STOP_GRACE;
        for slot in &mut self.children {
            if let Some(child) = slot {
                while Instant::now() < deadline {
                    if let Ok(Some(_)) = child.try_wait() {
                        break;
                    }
                    std::thread::sleep(POLL_INTERVAL);
                }
                let _ = child.kill();
                let _ = child.wait();
            }
            *slot = None;
        }
        for n in &mut self.nodes {
            n.pid = None;
        }
    }

    pub fn node(&self, id: u64) -> &NodeEntry {
        &self.nodes[self.index(id)]
    }

    pub fn log_tail(&self, id: u64, bytes: usize) -> String {
        let text = fs::read(&self.node(id).log).unwrap_or_default();
        let start = text.len().saturating_sub(bytes);
        String::from_utf8_lossy(&text[start..]).into_owned()
    }

    /// Waits until a node among `among` reports a leader that is itself among `among` and
    /// that every node in `among` agrees on; returns the leader's id.
    pub async fn wait_leader(&self, among: &[u64], timeout: Duration) -> anyhow::Result<u64> {
        crate::ensure_crypto_provider();
        let client = reqwest::Client::new();
        let deadline = Instant::now() + timeout;
        loop {
            let mut seen = Vec::new();
            for id in among {
                let url = format!("{}/v1/cluster", self.base_url(*id));
                let leader = async {
                    let v: serde_json::Value = client
                        .get(&url)
                        .timeout(Duration::from_millis(500))
                        .send()
                        .await
                        .ok()?
                        .json()
                        .await
                        .ok()?;
                    v.get("leaderId")?.as_u64()
                }
                .await;
                seen.push(leader);
            }
            if let Some(Some(l)) = seen.first()
                && among.contains(l)
                && seen.iter().all(|s| *s == Some(*l))
            {
                return Ok(*l);
            }
            if Instant::now() > deadline {
                // The logs of the nodes that named no leader say why (a port taken, a crash).
                let logs: String = among
                    .iter()
                    .zip(&seen)
                    .filter(|(_, s)| s.is_none())
                    .map(|(id, _)| {
                        format!("\n--- node {id} log tail ---\n{}", self.log_tail(*id, 2000))
                    })
                    .collect();
                bail!("no agreed leader among {among:?} within {timeout:?}; saw {seen:?}{logs}");
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    pub fn dir(&self) -> &Path {
        &self.spec.dir
    }

    /// The cluster CA certificate agents verify coordinators with.
    pub fn ca_file(&self) -> PathBuf {
        self.spec.dir.join("ca").join("ca.pem")
    }

    /// Every node's agent endpoint (QUIC `tt-agent/1`).
    pub fn agent_addrs(&self) -> Vec<SocketAddr> {
        self.nodes.iter().map(|n| n.agent_addr).collect()
    }
}

impl Drop for DevCluster {
    fn drop(&mut self) {
        for child in self.children.iter_mut().flatten() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_membership_names_the_advertised_addresses() {
        let addr = |port: u16| SocketAddr::from(([127, 0, 0, 1], port));
        let n = NodeEntry {
            id: 2,
            pid: None,
            http_addr: addr(1),
            raft_addr: addr(2),
            agent_addr: addr(3),
            data_dir: PathBuf::new(),
            tls_dir: PathBuf::new(),
            log: PathBuf::new(),
        };
        assert_eq!(member(&n, None), "2=127.0.0.1:1,127.0.0.1:2,127.0.0.1:3");
        let mut adv = Advertise { http: None, raft: addr(12), agent: addr(13), swarm: None };
        assert_eq!(member(&n, Some(&adv)), "2=127.0.0.1:1,127.0.0.1:12,127.0.0.1:13");
        adv.http = Some(addr(11));
        assert_eq!(member(&n, Some(&adv)), "2=127.0.0.1:11,127.0.0.1:12,127.0.0.1:13");
    }
}
