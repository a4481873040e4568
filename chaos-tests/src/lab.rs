//! The lab: a real three-node coordinator cluster and real `deploy-agent` processes on loopback
//! with a fault proxy on every link, and the process and network faults a scenario injects.
//!
//! Links and their proxies:
//! - coordinator ↔ coordinator: one proxy in front of each node's Raft port; the founding
//!   membership names the proxies, so every peer's dial goes through them. A node's outgoing
//!   datagrams reach the other nodes' proxies from its client endpoint's ephemeral port, which
//!   `procnet` finds; cutting a node therefore also drops datagrams from and to its ports there.
//! - coordinator → coordinator HTTP (forwarded writes, read indexes, blob copies and pulls):
//!   one TCP proxy (`tcp_proxy`) in front of each node's HTTP port, which the founding
//!   membership names as the node's HTTP address, so every node's requests to another go
//!   through it. Cuts of a node hold bytes there as they drop datagrams on the Raft proxies:
//!   its own proxy in the cut direction(s), and on the other nodes' proxies the connections it
//!   owns (the proxy asks `procnet` which node process holds each accepted connection). The
//!   workload and the lab's status checks talk to each node's own HTTP address directly.
//! - agent → coordinator: each agent dials its own proxy per node (so one agent can be cut
//!   alone), and followers redirect agents to the leader's *advertised* agent address, one
//!   shared proxy per node, where a cut agent's ports are dropped the same way.
//!
//! - agent ↔ agent (with the swarm on): each agent's `tt-blob/1` port behind a proxy of its
//!   own, which it advertises; bad peers the same way (`swarm_lab`, `badpeer`).
//! - agent → origin (with the swarm on): each node's blob origin behind a proxy it advertises,
//!   shared by the agents, where a cut agent's ports are dropped as on the agent proxies.
//!
//! Cuts are declared ([`Cuts`]) and [`Lab::apply`] turns them, with the link quality per class,
//! into each proxy's faults; call it again after processes restart (their ports change).

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use ops::client::Client;
use ops::devcluster::{Advertise, DevCluster, Spec, SwarmAdvertise};
use ops::devfleet::{AgentSpec, DevAgent};
use serde::{Deserialize, Serialize};

use crate::badpeer::{BadPeerMode, BadPeerProcess};
use crate::procnet;
use crate::proxy::{LinkFaults, Proxy, ProxyError, ProxyStats};
use crate::scenario::HookMode;
use crate::simagents::{SimAgents, SimSpec};
use crate::swarm_lab::{self, SwarmLabError, SwarmReport};
use crate::tcp_proxy::{TcpFaults, TcpProxy, TcpProxyStats};
use crate::workload::HOOK_FAULT_ENV;

/// Names the `chaos` binary bad peers run (else it is looked for beside this executable).
pub const CHAOS_BIN_ENV: &str = "TT_CHAOS_BIN";
/// Longest the lab waits for the cluster's first leader.
pub const FIRST_LEADER_WAIT: Duration = Duration::from_secs(60);
/// Attempts to start a lab whose nodes all come up as themselves.
pub const LAB_START_ATTEMPTS: usize = 3;
/// Timeout of one status request to a node.
/// How much of a node's log [`Lab::failpoint_fires`] reads.
pub const FAILPOINT_LOG_SCAN_BYTES: usize = 16 << 20;
/// What a coordinator logs each time a failpoint fires.
const FAILPOINT_LOG_LINE: &str = coordinator::failpoints::FIRED_LOG_MESSAGE;
pub const STATUS_TIMEOUT: Duration = Duration::from_millis(800);

/// Errors setting up or driving the lab.
#[derive(Debug, thiserror::Error)]
pub enum LabError {
    /// Starting or restarting a process failed (the message says which and why).
    #[error("{what}: {message}")]
    Process { what: String, message: String },
    #[error(transparent)]
    Proxy(#[from] ProxyError),
    #[error(transparent)]
    Swarm(#[from] SwarmLabError),
    /// A node did not come up as itself (a port drawn twice) or exited at start; the lab
    /// starts again.
    #[error("node {node} is not up as itself: {message}")]
    Identity { node: u64, message: String },
    /// Sending a signal failed (the process is gone?).
    #[error("signal {signal} to {what}: {source}")]
    Signal { what: String, signal: Signal, source: nix::Error },
}

/// Refuses, before any node is touched, failpoints the coordinator binary cannot arm (a build
/// without the `failpoints` feature, e.g. one relinked by `cargo test -p coordinator`): such a
/// node would only fail to start, and the run would say "never fired".
pub fn check_failpoints(bin: &std::path::Path, spec: &str) -> Result<(), LabError> {
    let out = std::process::Command::new(bin)
        .args(["failpoints", "check", spec])
        .output()
        .map_err(|e| LabError::Process {
            what: format!("running {}", bin.display()),
            message: e.to_string(),
        })?;
    if out.status.success() {
        return Ok(());
    }
    Err(LabError::Process {
        what: format!("arming failpoints {spec:?} with {}", bin.display()),
        message: format!(
            "{} (build the workspace: `cargo build --workspace --bins` turns the feature on)",
            String::from_utf8_lossy(&out.stderr).trim()
        ),
    })
}

fn sim_err(what: &'static str) -> impl FnOnce(crate::simagents::SimError) -> LabError {
    move |e| LabError::Process {
        what: format!("{what} the simulated agents"),
        message: e.to_string(),
    }
}

fn process_err(what: impl Into<String>) -> impl FnOnce(anyhow::Error) -> LabError {
    let what = what.into();
    move |e| LabError::Process { what, message: format!("{e:#}") }
}

/// What to start.
#[derive(Debug, Clone)]
pub struct LabSpec {
    pub dir: PathBuf,
    pub seed: u64,
    pub coordinator_bin: PathBuf,
    pub agent_bin: PathBuf,
    /// Number of agents (hosts `host-1` …).
    pub agents: usize,
    /// The group every agent is in.
    pub group: String,
    /// Extra `TT_*` settings for every node.
    pub coordinator_env: Vec<(String, String)>,
    /// Extra agent config lines (TOML).
    pub agent_config: String,
    /// Agents fetch builds through the blob swarm, each behind a proxy (`swarm_lab`).
    pub swarm: bool,
}

/// The kinds of links whose quality can be set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LinkClass {
    /// Coordinator ↔ coordinator (Raft).
    Raft,
    /// Coordinator → coordinator HTTP (TCP: forwarded writes, read indexes, blob copies). Set
    /// apart from `raft` because the faults mean other things on a stream (`tcp_proxy`):
    /// loss is a retransmission delay, corruption reaches the coordinators.
    Http,
    /// Agent → coordinator (`tt-agent/1`, blob fetches too).
    Agent,
    /// Agent ↔ agent and agent → bad peer (`tt-blob/1`).
    Swarm,
}

/// Which links are cut.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Cuts {
    /// Nodes cut from their peers both ways (Raft and HTTP).
    pub isolated: BTreeSet<u64>,
    /// Nodes that receive nothing from their peers (their own datagrams and requests still
    /// arrive; the answers to them do not).
    pub deaf: BTreeSet<u64>,
    /// Nodes whose datagrams and requests their peers never receive, nor their answers (they
    /// still hear the peers).
    pub mute: BTreeSet<u64>,
    /// Agents (by index) cut from every coordinator.
    pub agents: BTreeSet<usize>,
}

impl Cuts {
    pub fn is_empty(&self) -> bool {
        *self == Cuts::default()
    }
}

/// One agent and its private proxies (one per node).
pub struct LabAgent {
    pub agent: DevAgent,
    pub proxies: Vec<Proxy>,
    /// Where its hooks journal their start and end.
    pub journal: PathBuf,
    /// Its hooks' fault switch (`workload::HOOK_FAULT_ENV`).
    pub hook_fault: PathBuf,
    /// In front of its `tt-blob/1` port (the address it advertises), with the swarm on.
    pub swarm_proxy: Option<Proxy>,
}

/// A bad peer and the proxy in front of it.
pub struct LabBadPeer {
    pub process: BadPeerProcess,
    pub proxy: Proxy,
}

pub struct Lab {
    pub spec: LabSpec,
    pub cluster: DevCluster,
    /// In front of node i + 1's Raft port.
    raft_proxies: Vec<Proxy>,
    /// In front of node i + 1's HTTP port: where the other nodes send it HTTP requests.
    http_proxies: Vec<TcpProxy>,
    /// In front of node i + 1's agent port: what followers redirect agents to.
    agent_proxies: Vec<Proxy>,
    /// In front of each node's blob origin (with the swarm on): agents reach it only here.
    origin_proxies: Vec<Proxy>,
    pub agents: Vec<LabAgent>,
    cuts: Cuts,
    quality: BTreeMap<LinkClass, LinkFaults>,
    /// Ports seen for each node or agent while a cut names it (kept until the cut ends, so
    /// connections from before a restart stay cut too).
    node_ports: BTreeMap<u64, BTreeSet<u16>>,
    agent_ports: BTreeMap<usize, BTreeSet<u16>>,
    paused: BTreeSet<u64>,
    paused_agents: BTreeSet<usize>,
    /// Hook faults in force per agent, oldest first.
    hook_faults: BTreeMap<usize, Vec<HookMode>>,
    /// The cluster CA, with the swarm on (agents' and bad peers' certificates).
    ca: Option<p2p_transfer::tls::ClusterCa>,
    /// The builds' archives (their bytes are the blobs), for bad peers to serve.
    blob_files: Vec<PathBuf>,
    pub bad_peers: Vec<LabBadPeer>,
    /// The simulated-agent process, if the scenario has simulated hosts ([`Lab::start_sim`]).
    pub sim: Option<SimAgents>,
}

/// A seed for the `i`-th thing of kind `tag`, derived from the run's seed.
pub fn sub_seed(seed: u64, tag: &str, i: u64) -> u64 {
    let mut h = blake3::Hasher::new();
    h.update(&seed.to_le_bytes());
    h.update(tag.as_bytes());
    h.update(&i.to_le_bytes());
    u64::from_le_bytes(h.finalize().as_bytes()[..8].try_into().expect("8 bytes"))
}

fn loopback() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

impl Lab {
    /// Starts the proxies, the cluster (waiting for its first leader) and the agents. A
    /// cluster whose nodes are not all up as themselves (or one of which exited before the
    /// first leader) is started again in a fresh directory,
    /// up to [`LAB_START_ATTEMPTS`] times (`ops::devcluster` picks free ports by binding port
    /// 0 and letting go, so two nodes can draw the same port; the second then never starts,
    /// and the first answers for both).
    pub async fn start(spec: LabSpec) -> Result<Lab, LabError> {
        let mut last = None;
        for attempt in 0..LAB_START_ATTEMPTS {
            let spec = LabSpec { dir: spec.dir.join(format!("lab-{attempt}")), ..spec.clone() };
            match Lab::start_once(spec).await {
                Ok(lab) => return Ok(lab),
                Err(e @ LabError::Identity { .. }) => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last.expect("at least one attempt"))
    }

    async fn start_once(spec: LabSpec) -> Result<Lab, LabError> {
        const NODES: u64 = 3;
        let mut raft_proxies = Vec::new();
        let mut http_proxies = Vec::new();
        let mut agent_proxies = Vec::new();
        for i in 0..NODES {
            raft_proxies.push(Proxy::bind(loopback(), sub_seed(spec.seed, "raft", i)).await?);
            http_proxies.push(TcpProxy::bind(loopback(), sub_seed(spec.seed, "http", i)).await?);
            agent_proxies.push(Proxy::bind(loopback(), sub_seed(spec.seed, "agent", i)).await?);
        }
        // With the swarm on, each node's blob origin listens behind a proxy too, and the
        // tracker hands agents the proxy.
        let mut origin_proxies = Vec::new();
        let mut origins = Vec::new();
        for i in 0..NODES {
            if spec.swarm {
                let (listen, proxy) =
                    swarm_lab::listen_behind_proxy(sub_seed(spec.seed, "origin", i)).await?;
                origins.push(Some(SwarmAdvertise { listen, advertise: proxy.addr() }));
                origin_proxies.push(proxy);
            } else {
                origins.push(None);
            }
        }
        let advertise = raft_proxies
            .iter()
            .zip(&http_proxies)
            .zip(&agent_proxies)
            .zip(origins)
            .map(|(((r, h), a), swarm)| Advertise {
                http: Some(h.addr()),
                raft: r.addr(),
                agent: a.addr(),
                swarm,
            })
            .collect();
        let mut cluster = DevCluster::start(Spec {
            nodes: NODES as usize,
            dir: spec.dir.join("cluster"),
            base_http_port: None,
            base_raft_port: None,
            coordinator_bin: spec.coordinator_bin.clone(),
            env: spec.coordinator_env.clone(),
            advertise: Some(advertise),
        })
        .map_err(process_err("starting the cluster"))?;
        for (i, n) in cluster.nodes.iter().enumerate() {
            raft_proxies[i].set_upstream(n.raft_addr)?;
            http_proxies[i].set_upstream(n.http_addr)?;
            agent_proxies[i].set_upstream(n.agent_addr)?;
        }
        if let Err(e) = cluster.wait_leader(&cluster.ids(), FIRST_LEADER_WAIT).await {
            // A node that exited at start most likely lost a port it was handed to another
            // process's ephemeral bind (ports are drawn, released, then bound): start again.
            if let Some(id) = cluster.ids().into_iter().find(|&id| !cluster.is_running(id)) {
                return Err(LabError::Identity {
                    node: id,
                    message: format!("it exited at start ({e:#})"),
                });
            }
            return Err(process_err("waiting for the first leader")(e));
        }
        verify_identities(&mut cluster).await?;
        let ca = if spec.swarm {
            let dir = cluster.dir().join("ca");
            Some(p2p_transfer::tls::ClusterCa::load(&dir).map_err(SwarmLabError::from)?)
        } else {
            None
        };
        let mut lab = Lab {
            spec,
            cluster,
            raft_proxies,
            http_proxies,
            agent_proxies,
            origin_proxies,
            agents: Vec::new(),
            cuts: Cuts::default(),
            quality: BTreeMap::new(),
            node_ports: BTreeMap::new(),
            agent_ports: BTreeMap::new(),
            paused: BTreeSet::new(),
            paused_agents: BTreeSet::new(),
            hook_faults: BTreeMap::new(),
            ca,
            blob_files: Vec::new(),
            bad_peers: Vec::new(),
            sim: None,
        };
        for i in 0..lab.spec.agents {
            lab.start_agent(i).await?;
        }
        Ok(lab)
    }

    async fn start_agent(&mut self, i: usize) -> Result<(), LabError> {
        let host = format!("host-{}", i + 1);
        let root = self.spec.dir.join(&host);
        let mut proxies = Vec::new();
        for (n, node) in self.cluster.nodes.iter().enumerate() {
            let seed = sub_seed(self.spec.seed, &host, n as u64);
            proxies.push(Proxy::start(loopback(), node.agent_addr, seed).await?);
        }
        let journal = root.join("journal");
        let hook_fault = root.join("hook-fault");
        let mut extra_config = self.spec.agent_config.clone();
        let mut swarm_proxy = None;
        if let Some(ca) = &self.ca {
            let tls = swarm_lab::issue_tls(ca, &root, &host)?;
            let seed = sub_seed(self.spec.seed, "swarm", i as u64);
            let (listen, proxy) = swarm_lab::listen_behind_proxy(seed).await?;
            extra_config.push_str(&swarm_lab::agent_config(listen, &proxy, &tls));
            swarm_proxy = Some(proxy);
        }
        let agent = DevAgent::start(
            &self.spec.agent_bin,
            AgentSpec {
                hostname: host.clone(),
                groups: vec![self.spec.group.clone()],
                root,
                coordinators: proxies.iter().map(Proxy::addr).collect(),
                ca_file: self.cluster.ca_file(),
                token: None,
                hook_env: vec![
                    ("JOURNAL".into(), journal.display().to_string()),
                    (HOOK_FAULT_ENV.into(), hook_fault.display().to_string()),
                ],
                extra_config,
            },
        )
        .map_err(process_err(format!("starting agent {host}")))?;
        self.agents.push(LabAgent { agent, proxies, journal, hook_fault, swarm_proxy });
        Ok(())
    }

    /// Node ids.
    pub fn ids(&self) -> Vec<u64> {
        self.cluster.ids()
    }

    /// An HTTP client for node `id`.
    pub fn client(&self, id: u64) -> Client {
        Client::new(&self.cluster.base_url(id), None)
    }

    /// The cuts in force.
    pub fn cuts(&self) -> &Cuts {
        &self.cuts
    }

    /// Replaces the cuts in force and applies them.
    pub fn set_cuts(&mut self, cuts: Cuts) -> Result<(), LabError> {
        self.node_ports.retain(|n, _| {
            cuts.isolated.contains(n) || cuts.deaf.contains(n) || cuts.mute.contains(n)
        });
        self.agent_ports.retain(|a, _| cuts.agents.contains(a));
        self.cuts = cuts;
        self.apply()
    }

    /// Sets the quality of every link of `class` (no cuts in it: those are [`Cuts`]).
    pub fn set_quality(&mut self, class: LinkClass, faults: LinkFaults) -> Result<(), LabError> {
        faults.validate()?;
        self.quality.insert(class, faults.without_cuts());
        self.apply()
    }

    /// Perfect links again, no cuts.
    pub fn heal_network(&mut self) -> Result<(), LabError> {
        self.quality.clear();
        self.set_cuts(Cuts::default())
    }

    fn pid(&self, id: u64) -> Option<u32> {
        self.cluster.node(id).pid
    }

    /// Computes every proxy's faults from the cuts, the link quality and the ports the cut
    /// processes hold now.
    pub fn apply(&mut self) -> Result<(), LabError> {
        let cut_nodes: BTreeSet<u64> = self
            .cuts
            .isolated
            .iter()
            .chain(&self.cuts.deaf)
            .chain(&self.cuts.mute)
            .copied()
            .collect();
        for n in cut_nodes {
            if let Some(pid) = self.pid(n)
                && let Ok(ports) = procnet::udp_ports(pid)
            {
                self.node_ports.entry(n).or_default().extend(ports);
            }
        }
        for &a in &self.cuts.agents {
            if let Some(pid) = self.agents.get(a).and_then(|a| a.agent.pid())
                && let Ok(ports) = procnet::udp_ports(pid)
            {
                self.agent_ports.entry(a).or_default().extend(ports);
            }
        }
        let raft_quality = self.quality.get(&LinkClass::Raft).cloned().unwrap_or_default();
        let agent_quality = self.quality.get(&LinkClass::Agent).cloned().unwrap_or_default();
        let ports_of = |set: &BTreeSet<u64>, except: u64| -> BTreeSet<u16> {
            set.iter()
                .filter(|&&m| m != except)
                .filter_map(|m| self.node_ports.get(m))
                .flatten()
                .copied()
                .collect()
        };
        let c = &self.cuts;
        // Nodes whose requests their peers never get, and nodes that never hear the answers.
        let silenced: BTreeSet<u64> = c.isolated.union(&c.mute).copied().collect();
        let deafened: BTreeSet<u64> = c.isolated.union(&c.deaf).copied().collect();
        // Node n's own link: cut both ways, towards it, or from it.
        let own_cuts = |n: u64, quality: &LinkFaults| LinkFaults {
            blackhole: c.isolated.contains(&n),
            drop_to_upstream: c.deaf.contains(&n),
            drop_to_client: c.mute.contains(&n),
            ..quality.clone()
        };
        for (i, proxy) in self.raft_proxies.iter().enumerate() {
            let n = i as u64 + 1;
            let mut f = own_cuts(n, &raft_quality);
            f.drop_from_ports = ports_of(&silenced, n);
            f.drop_to_ports = ports_of(&deafened, n);
            proxy.set_faults(f)?;
        }
        // HTTP connections are told apart by the node process that holds them.
        let http_quality = self.quality.get(&LinkClass::Http).cloned().unwrap_or_default();
        let pids: BTreeMap<u64, u32> =
            self.ids().into_iter().filter_map(|n| Some((n, self.pid(n)?))).collect();
        let pids_of = |set: &BTreeSet<u64>, except: u64| -> BTreeSet<u32> {
            set.iter().filter(|&&m| m != except).filter_map(|m| pids.get(m)).copied().collect()
        };
        for (i, proxy) in self.http_proxies.iter().enumerate() {
            let n = i as u64 + 1;
            proxy.set_owners(pids.values().copied().collect());
            proxy.set_faults(TcpFaults {
                link: own_cuts(n, &http_quality),
                hold_from_pids: pids_of(&silenced, n),
                hold_to_pids: pids_of(&deafened, n),
            })?;
        }
        let agent_ports: BTreeSet<u16> = self.agent_ports.values().flatten().copied().collect();
        for proxy in self.agent_proxies.iter().chain(&self.origin_proxies) {
            let mut f = agent_quality.clone();
            f.drop_from_ports = agent_ports.clone();
            f.drop_to_ports = agent_ports.clone();
            proxy.set_faults(f)?;
        }
        if let Some(sim) = &self.sim {
            sim.set_quality(&agent_quality)?;
        }
        for (a, agent) in self.agents.iter().enumerate() {
            let mut f = agent_quality.clone();
            f.blackhole = self.cuts.agents.contains(&a);
            for p in &agent.proxies {
                p.set_faults(f.clone())?;
            }
        }
        let swarm_quality = self.quality.get(&LinkClass::Swarm).cloned().unwrap_or_default();
        swarm_lab::apply_quality(self.swarm_proxies(), &swarm_quality)?;
        Ok(())
    }

    /// The proxies in front of every swarm node but the origins (agents', bad peers').
    fn swarm_proxies(&self) -> impl Iterator<Item = &Proxy> {
        let agents = self.agents.iter().filter_map(|a| a.swarm_proxy.as_ref());
        agents.chain(self.bad_peers.iter().map(|b| &b.proxy))
    }

    /// The builds' archives bad peers serve (set once they are written).
    pub fn set_blob_files(&mut self, files: Vec<PathBuf>) {
        self.blob_files = files;
    }

    /// Starts a bad peer for every build of [`Lab::set_blob_files`], behind a proxy; returns
    /// its index. Needs the swarm on.
    pub async fn start_bad_peer(
        &mut self,
        mode: BadPeerMode,
        upload_bytes_per_s: Option<u64>,
    ) -> Result<usize, LabError> {
        let i = self.bad_peers.len();
        let name = format!("bad-peer-{}", i + 1);
        let no_swarm = || LabError::Process {
            what: format!("starting {name}"),
            message: "the lab runs no swarm (scenario swarm = false) or has no builds".into(),
        };
        let ca = self.ca.as_ref().ok_or_else(no_swarm)?;
        if self.blob_files.is_empty() {
            return Err(no_swarm());
        }
        let dir = self.spec.dir.join(&name);
        let tls_dir = swarm_lab::issue_tls(ca, &dir, &name)?;
        let (listen, proxy) =
            swarm_lab::listen_behind_proxy(sub_seed(self.spec.seed, "bad-peer", i as u64)).await?;
        let bin = ops::devcluster::find_sibling_bin("chaos", CHAOS_BIN_ENV)
            .map_err(process_err(format!("finding the chaos binary for {name}")))?;
        let args = crate::badpeer::Args {
            mode,
            listen,
            advertise: proxy.addr(),
            tls_dir,
            store: dir.join("store"),
            coordinators: self.cluster.agent_addrs(),
            blobs: self.blob_files.clone(),
            upload_bytes_per_s,
            stats: dir.join("stats.json"),
        };
        let process = BadPeerProcess::start(&bin, &dir, &args)
            .map_err(process_err(format!("starting {name}")))?;
        self.bad_peers.push(LabBadPeer { process, proxy });
        self.apply()?;
        Ok(i)
    }

    /// `kill -9` bad peer `i`.
    pub fn stop_bad_peer(&mut self, i: usize) {
        if let Some(b) = self.bad_peers.get_mut(i) {
            b.process.kill();
        }
    }

    /// What the swarm did (`None` without it): read from every agent's and bad peer's stats.
    pub fn swarm_report(&self) -> Option<SwarmReport> {
        self.ca.as_ref()?;
        let hosts = self.agents.iter().map(|a| {
            let advertise =
                a.swarm_proxy.as_ref().map(|p| p.addr().to_string()).unwrap_or_default();
            (a.agent.spec.hostname.clone(), advertise, a.agent.spec.root.as_path())
        });
        let mut report = SwarmReport::collect(hosts, self.bad_peers.iter().map(|b| &b.process));
        report.origin_links = swarm_lab::stats(self.origin_proxies.iter());
        Some(report)
    }

    /// `kill -9` node `id`.
    pub fn kill_node(&mut self, id: u64) {
        self.paused.remove(&id);
        self.cluster.kill9(id);
    }

    /// Starts node `id` again (killing it first if it runs) with its data as it is.
    pub fn restart_node(&mut self, id: u64) -> Result<(), LabError> {
        self.paused.remove(&id);
        self.cluster.restart(id).map_err(process_err(format!("restarting node {id}")))?;
        self.apply()
    }

    /// Starts node `id` again (killing it first if it runs) with storage failpoints `spec`
    /// armed (`TT_FAILPOINTS`), or with none.
    pub fn restart_node_with_failpoints(
        &mut self,
        id: u64,
        spec: Option<&str>,
    ) -> Result<(), LabError> {
        if let Some(spec) = spec {
            check_failpoints(self.cluster.coordinator_bin(), spec)?;
        }
        let env = spec
            .map(|s| vec![(coordinator::failpoints::ENV.to_string(), s.to_string())])
            .unwrap_or_default();
        self.cluster.set_node_env(id, env);
        self.restart_node(id)
    }

    /// Kills node `id`, deletes its data directory (a replaced disk: its log, vote, state
    /// machine, snapshots and blobs; its certificates stay) and starts it again with storage
    /// failpoints `spec` armed, or with none. It rejoins empty and must catch up from its peers.
    pub fn wipe_node_with_failpoints(
        &mut self,
        id: u64,
        spec: Option<&str>,
    ) -> Result<(), LabError> {
        self.cluster.wipe(id).map_err(process_err(format!("wiping node {id}")))?;
        self.restart_node_with_failpoints(id, spec)
    }

    /// How often node `id`'s failpoints have fired in this run (from its log).
    pub fn failpoint_fires(&self, id: u64) -> u64 {
        self.cluster.log_tail(id, FAILPOINT_LOG_SCAN_BYTES).matches(FAILPOINT_LOG_LINE).count()
            as u64
    }

    pub fn is_running(&mut self, id: u64) -> bool {
        self.cluster.is_running(id)
    }

    /// SIGSTOP node `id`.
    pub fn pause_node(&mut self, id: u64) -> Result<(), LabError> {
        let pid = self.pid(id).ok_or_else(|| LabError::Process {
            what: format!("pausing node {id}"),
            message: "it is not running".into(),
        })?;
        signal(pid, Signal::SIGSTOP, &format!("node {id}"))?;
        self.paused.insert(id);
        Ok(())
    }

    /// SIGCONT node `id` (if it was paused).
    pub fn resume_node(&mut self, id: u64) -> Result<(), LabError> {
        if self.paused.remove(&id)
            && let Some(pid) = self.pid(id)
        {
            signal(pid, Signal::SIGCONT, &format!("node {id}"))?;
        }
        Ok(())
    }

    /// Nodes paused now.
    pub fn paused(&self) -> &BTreeSet<u64> {
        &self.paused
    }

    /// `kill -9` agent `a` (its hooks, in their own process groups, live on).
    pub fn kill_agent(&mut self, a: usize) {
        self.paused_agents.remove(&a);
        self.agents[a].agent.kill9();
    }

    /// Starts agent `a` again (killing it first if it runs).
    pub fn restart_agent(&mut self, a: usize) -> Result<(), LabError> {
        self.paused_agents.remove(&a);
        let host = self.agents[a].agent.spec.hostname.clone();
        self.agents[a].agent.restart().map_err(process_err(format!("restarting agent {host}")))?;
        self.apply()
    }

    /// Agent `a`'s hooks fail or hang (`mode`) from their next run on, until the same fault is
    /// cleared ([`Lab::clear_hook_fault`]). Faults in force on one host stack: the latest
    /// decides, and clearing one leaves the others.
    pub fn add_hook_fault(&mut self, a: usize, mode: HookMode) -> Result<(), LabError> {
        self.hook_faults.entry(a).or_default().push(mode);
        self.write_hook_switch(a)
    }

    /// Ends one `mode` fault on agent `a`'s hooks.
    pub fn clear_hook_fault(&mut self, a: usize, mode: HookMode) -> Result<(), LabError> {
        let modes = self.hook_faults.entry(a).or_default();
        if let Some(i) = modes.iter().rposition(|m| *m == mode) {
            modes.remove(i);
        }
        self.write_hook_switch(a)
    }

    fn write_hook_switch(&mut self, a: usize) -> Result<(), LabError> {
        let path = &self.agents[a].hook_fault;
        let written = match self.hook_faults.get(&a).and_then(|m| m.last()) {
            Some(m) => std::fs::write(path, m.switch_word()),
            None => std::fs::remove_file(path).or_else(|e| match e.kind() {
                std::io::ErrorKind::NotFound => Ok(()),
                _ => Err(e),
            }),
        };
        written.map_err(|e| LabError::Process {
            what: format!("switching the hooks of {}", self.agents[a].agent.spec.hostname),
            message: format!("{}: {e}", path.display()),
        })
    }

    /// SIGSTOP agent `a`.
    pub fn pause_agent(&mut self, a: usize) -> Result<(), LabError> {
        let host = self.agents[a].agent.spec.hostname.clone();
        let pid = self.agents[a].agent.pid().ok_or_else(|| LabError::Process {
            what: format!("pausing agent {host}"),
            message: "it is not running".into(),
        })?;
        signal(pid, Signal::SIGSTOP, &host)?;
        self.paused_agents.insert(a);
        Ok(())
    }

    /// SIGCONT agent `a` (if it was paused).
    pub fn resume_agent(&mut self, a: usize) -> Result<(), LabError> {
        if self.paused_agents.remove(&a)
            && let Some(pid) = self.agents[a].agent.pid()
        {
            signal(pid, Signal::SIGCONT, &self.agents[a].agent.spec.hostname.clone())?;
        }
        Ok(())
    }

    /// The simulated-agent process, for a fault aimed at it.
    fn sim_process(&mut self, what: &str) -> Result<&mut SimAgents, LabError> {
        self.sim.as_mut().ok_or_else(|| LabError::Process {
            what: format!("{what} the simulated agents"),
            message: "the scenario has none (sim_hosts = 0)".into(),
        })
    }

    /// `kill -9` the simulated-agent process; answers how many of its hosts were mid-deploy,
    /// `None` if it was not running.
    pub fn kill_sim(&mut self) -> Result<Option<u64>, LabError> {
        self.sim_process("killing")?.kill().map_err(sim_err("killing"))
    }

    /// Starts the simulated-agent process again (its hosts keep their names, not their state).
    pub fn restart_sim(&mut self) -> Result<(), LabError> {
        self.sim_process("restarting")?.restart().map_err(sim_err("restarting"))
    }

    /// SIGSTOP the simulated-agent process; answers how many of its hosts were mid-deploy,
    /// `None` if it was not running.
    pub fn pause_sim(&mut self) -> Result<Option<u64>, LabError> {
        self.sim_process("pausing")?.pause().map_err(sim_err("pausing"))
    }

    /// SIGCONT the simulated-agent process (if it was paused).
    pub fn resume_sim(&mut self) -> Result<(), LabError> {
        self.sim_process("resuming")?.resume();
        Ok(())
    }

    /// Resumes every paused process, starts every stopped node and agent (and the simulated
    /// agents), stops every bad peer, heals the network.
    pub fn heal_all(&mut self) -> Result<(), LabError> {
        if let Some(sim) = &mut self.sim {
            sim.resume();
            if !sim.is_running() {
                sim.restart().map_err(sim_err("restarting"))?;
            }
        }
        for b in &mut self.bad_peers {
            b.process.kill();
        }
        for id in self.paused.clone() {
            self.resume_node(id)?;
        }
        for a in self.paused_agents.clone() {
            self.resume_agent(a)?;
        }
        for id in self.ids() {
            if !self.cluster.is_running(id) {
                self.restart_node(id)?;
            }
        }
        for a in 0..self.agents.len() {
            self.hook_faults.remove(&a);
            self.write_hook_switch(a)?;
            if !self.agents[a].agent.is_running() {
                self.restart_agent(a)?;
            }
        }
        self.heal_network()
    }

    /// The status each running node reports now (`GET /v1/cluster`), by node id.
    pub async fn statuses(&self) -> BTreeMap<u64, serde_json::Value> {
        let http = reqwest::Client::new();
        let mut out = BTreeMap::new();
        for id in self.ids() {
            if self.paused.contains(&id) || self.cluster.node(id).pid.is_none() {
                continue;
            }
            let url = format!("{}/v1/cluster", self.cluster.base_url(id));
            let v = async { http.get(&url).timeout(STATUS_TIMEOUT).send().await?.json().await };
            if let Ok(v) = v.await {
                out.insert(id, v);
            }
        }
        out
    }

    /// Counters of the HTTP proxies in front of the nodes, summed.
    pub fn http_stats(&self) -> TcpProxyStats {
        let mut out = TcpProxyStats::default();
        for p in &self.http_proxies {
            out.add(&p.stats());
        }
        out
    }

    /// Counters of every datagram proxy, summed per link class (the HTTP proxies':
    /// [`Lab::http_stats`]).
    pub fn proxy_stats(&self) -> BTreeMap<LinkClass, ProxyStats> {
        let mut out: BTreeMap<LinkClass, ProxyStats> = BTreeMap::new();
        for p in &self.raft_proxies {
            out.entry(LinkClass::Raft).or_default().add(&p.stats());
        }
        let agent_side = self
            .agent_proxies
            .iter()
            .chain(&self.origin_proxies)
            .chain(self.agents.iter().flat_map(|a| &a.proxies));
        for p in agent_side {
            out.entry(LinkClass::Agent).or_default().add(&p.stats());
        }
        if self.swarm_proxies().next().is_some() {
            out.insert(LinkClass::Swarm, swarm_lab::stats(self.swarm_proxies()));
        }
        if let Some(sim) = &self.sim {
            out.entry(LinkClass::Agent).or_default().add(&sim.proxy_stats());
        }
        out
    }

    /// Starts the simulated-agent process: `hosts` hosts named `{prefix}{i}` in `group`, each
    /// deploy step taking `step`, behind a proxy of their own per node (agent link quality
    /// applies to them; agent cuts, kills and hook faults do not).
    pub async fn start_sim(
        &mut self,
        hosts: usize,
        prefix: &str,
        group: &str,
        step: Duration,
    ) -> Result<(), LabError> {
        let nodes = self.cluster.nodes.iter().map(|n| n.agent_addr).collect::<Vec<_>>();
        let seeds = (0..nodes.len() as u64).map(|n| sub_seed(self.spec.seed, "sim", n)).collect();
        let spec = SimSpec {
            dir: self.spec.dir.join("simagents"),
            hosts,
            prefix: prefix.to_string(),
            group: group.to_string(),
            step,
            nodes,
            ca_dir: self.cluster.ca_file().parent().map(PathBuf::from).unwrap_or_default(),
            seeds,
        };
        let sim = SimAgents::start(spec).await.map_err(|e| LabError::Process {
            what: "starting the simulated agents".into(),
            message: e.to_string(),
        })?;
        self.sim = Some(sim);
        self.apply()
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        // A stopped process ignores SIGTERM until continued; the cluster's and the agents' own
        // Drop then stop them.
        for id in self.paused.clone() {
            let _ = self.resume_node(id);
        }
        for a in self.paused_agents.clone() {
            let _ = self.resume_agent(a);
        }
    }
}

/// Every node runs and its HTTP address answers as itself.
async fn verify_identities(cluster: &mut DevCluster) -> Result<(), LabError> {
    let http = reqwest::Client::new();
    for id in cluster.ids() {
        let url = format!("{}/v1/cluster", cluster.base_url(id));
        let answer: Option<serde_json::Value> =
            async { http.get(&url).timeout(STATUS_TIMEOUT).send().await.ok()?.json().await.ok() }
                .await;
        let answered_as = answer.as_ref().and_then(|v| v["nodeId"].as_u64());
        if !cluster.is_running(id) || answered_as != Some(id) {
            return Err(LabError::Identity {
                node: id,
                message: format!(
                    "running: {}; its HTTP address answered as node {answered_as:?}",
                    cluster.is_running(id)
                ),
            });
        }
    }
    Ok(())
}

fn signal(pid: u32, signal: Signal, what: &str) -> Result<(), LabError> {
    kill(Pid::from_raw(pid as i32), signal).map_err(|source| LabError::Signal {
        what: what.to_string(),
        signal,
        source,
    })
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn failpoints_a_binary_cannot_arm_are_refused_before_any_node_is_touched() {
        // The workspace's coordinator (built with the feature) accepts a good spec and
        // refuses a malformed one.
        let bin = ops::devcluster::find_coordinator_bin().unwrap();
        check_failpoints(&bin, "log-write=enospc@20").unwrap();
        let err = check_failpoints(&bin, "log-write=melt").unwrap_err().to_string();
        assert!(err.contains("unknown action \"melt\""), "{err}");
        // A build without the feature says so (a stand-in script answering like one).
        let dir = tempfile::tempdir().unwrap();
        let fake = dir.path().join("coordinator");
        std::fs::write(
            &fake,
            "#!/bin/sh\necho 'TT_FAILPOINTS is set but this coordinator was built without the `failpoints` feature' >&2\nexit 1\n",
        )
        .unwrap();
        std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
        let err = check_failpoints(&fake, "log-write=eio").unwrap_err().to_string();
        assert!(
            err.contains("without the `failpoints` feature")
                && err.contains("cargo build --workspace"),
            "{err}"
        );
    }
}
