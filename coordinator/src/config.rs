//! Node configuration: a TOML file, overridden by `TT_*` environment variables and flags
//! (flags win), validated once at start-up.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::raft::{NodeId, NodeInfo};

/// Default largest HTTP request body the API accepts.
pub const DEFAULT_MAX_BODY_BYTES: usize = 1024 * 1024;

/// Everything a node needs to run. Built by [`Config::from_sources`].
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// This node's id in the cluster (> 0, unique).
    pub node_id: NodeId,
    /// Directory for RocksDB and snapshots.
    pub data_dir: PathBuf,
    /// Directory holding `ca.pem`, `node.pem`, `node.key` (see `coordinator certs`).
    pub tls_dir: PathBuf,
    /// HTTP API listen address (Teletraan's default port is 8080).
    #[serde(default = "default_http")]
    pub http_addr: SocketAddr,
    /// QUIC (UDP) listen address for Raft traffic.
    #[serde(default = "default_raft")]
    pub raft_addr: SocketAddr,
    /// QUIC (UDP) listen address for agents (`tt-agent/1`).
    #[serde(default = "default_agent")]
    pub agent_addr: SocketAddr,
    /// Address agents use for this node's agent endpoint, if not `agent_addr`.
    #[serde(default)]
    pub advertise_agent: Option<String>,
    /// If set, agents must present this token (QUIC ping, or `Authorization: token ...` on the
    /// JSON ping). Unset means anonymous pings are accepted (development only).
    #[serde(default)]
    pub agent_token: Option<String>,
    /// Address other nodes and clients use for this node's HTTP API, if not `http_addr`.
    #[serde(default)]
    pub advertise_http: Option<String>,
    /// Address other nodes use for this node's Raft endpoint, if not `raft_addr`.
    #[serde(default)]
    pub advertise_raft: Option<String>,
    /// Members of a new cluster: `id=http_addr,raft_addr`. Set on every founding node; the node
    /// with the smallest id initialises the cluster once, when its store is empty.
    #[serde(default)]
    pub initial_members: Vec<String>,
    #[serde(default)]
    pub raft: RaftTimings,
    /// How often the leader runs auto-promotion, in milliseconds (Teletraan: 30 s). Must be
    /// shorter than a promote schedule's window (2 min), or scheduled promotions can be missed.
    #[serde(default = "default_promote_interval")]
    pub promote_interval_ms: u64,
    /// How often the leader runs the retention janitors, in milliseconds.
    #[serde(default = "default_janitor_interval")]
    pub janitor_interval_ms: u64,
    /// How often each node checks that the blobs builds name are on enough nodes and copies
    /// those too few hold, in milliseconds (`blob_copies.rs`).
    #[serde(default = "default_blob_repair_interval")]
    pub blob_repair_interval_ms: u64,
    /// Largest HTTP request body, in bytes.
    #[serde(default = "default_body")]
    pub max_body_bytes: usize,
    /// A host that holds a parallelism slot and does not ping for this long loses the slot
    /// (its row turns UNREACHABLE). JSON (legacy) agents cannot be told to stop mid-step, so
    /// this must exceed the longest hook timeout plus a ping interval for the limit to hold.
    #[serde(default = "default_lease_ttl")]
    pub lease_ttl_ms: u64,
    /// Largest build artifact `POST /v1/blobs` accepts, in bytes.
    #[serde(default = "default_max_blob")]
    pub max_blob_bytes: u64,
    /// Rows of a host silent this long that hold no parallelism slot become UNREACHABLE
    /// (Teletraan's agent janitor: 150 s). Slot holders are governed by `lease_ttl_ms`.
    #[serde(default = "default_host_stale")]
    pub host_stale_ms: u64,
    /// `anonymous` (every request may do everything; the default for now) or `tokens`
    /// (every request needs a token with the route's role; see `crate::auth`).
    #[serde(default)]
    pub auth: crate::auth::AuthMode,
    /// The bootstrap token: whoever presents it is a system ADMIN (`coordinator token new`
    /// prints a fresh one). Same value on every node.
    #[serde(default)]
    pub admin_token: Option<String>,
    /// QUIC (UDP) listen address of this node's blob origin (`tt-blob/1`, mutual TLS under the
    /// cluster CA). A concrete IP, since agents dial exactly this address; port 0 picks a free
    /// one. Unset: no swarm; agents fetch builds from the coordinators piece by piece.
    #[serde(default)]
    pub swarm_addr: Option<SocketAddr>,
    /// The origin's address as agents should dial it, when that is not `swarm_addr` (behind
    /// NAT or a proxy); the tracker hands this one out. Needs `swarm_addr`.
    #[serde(default)]
    pub swarm_advertise: Option<SocketAddr>,
    /// Directories whose files `POST /v1/blobs/pull` may read for a `file://` URL (absolute;
    /// a path that resolves outside them is refused). Empty: `file://` pulls are refused, so a
    /// publisher cannot read the node's own files (keys, data).
    #[serde(default)]
    pub pull_file_roots: Vec<PathBuf>,
}

/// Default parallelism lease TTL: generous, because legacy agents ping every 30-90 s.
pub const DEFAULT_LEASE_TTL_MS: u64 = 300_000;
/// Default largest build artifact (8 GiB).
pub const DEFAULT_MAX_BLOB_BYTES: u64 = 8 << 30;

fn default_max_blob() -> u64 {
    DEFAULT_MAX_BLOB_BYTES
}

/// Default host stale threshold (Teletraan's agent janitor).
pub const DEFAULT_HOST_STALE_MS: u64 = 150_000;

fn default_host_stale() -> u64 {
    DEFAULT_HOST_STALE_MS
}

fn default_lease_ttl() -> u64 {
    DEFAULT_LEASE_TTL_MS
}

/// Shortest `admin_token` accepted.
pub const MIN_ADMIN_TOKEN_LEN: usize = 16;

/// Shortest interval accepted for the leader's periodic loops, in milliseconds.
pub const MIN_LOOP_INTERVAL_MS: u64 = 10;

/// Raft timing and log-retention settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RaftTimings {
    pub heartbeat_ms: u64,
    pub election_timeout_min_ms: u64,
    pub election_timeout_max_ms: u64,
    /// Build a snapshot after this many applied entries since the last one.
    pub snapshot_every_entries: u64,
    /// Entries kept behind a snapshot for lagging followers (raft-anchors P2).
    pub keep_entries_after_snapshot: u64,
    /// Purge the log only once this many entries can go at once.
    pub purge_batch_entries: u64,
}

impl Default for RaftTimings {
    fn default() -> Self {
        Self {
            // openraft 0.9 starts an election only after the leader lease (= the maximum
            // election timeout) and then a random timeout have passed, so failure detection
            // takes max + [min, max): 0.75-1.0 s with these values.
            heartbeat_ms: 50,
            election_timeout_min_ms: 250,
            election_timeout_max_ms: 500,
            snapshot_every_entries: 20_000,
            keep_entries_after_snapshot: 10_000,
            purge_batch_entries: 256,
        }
    }
}

fn default_promote_interval() -> u64 {
    crate::api::promotes::DEFAULT_PROMOTE_INTERVAL.as_millis() as u64
}
fn default_janitor_interval() -> u64 {
    crate::api::promotes::DEFAULT_JANITOR_INTERVAL.as_millis() as u64
}
fn default_blob_repair_interval() -> u64 {
    crate::blob_copies::DEFAULT_BLOB_REPAIR_INTERVAL.as_millis() as u64
}
fn default_http() -> SocketAddr {
    "127.0.0.1:8080".parse().expect("literal")
}
fn default_raft() -> SocketAddr {
    "127.0.0.1:7400".parse().expect("literal")
}
fn default_agent() -> SocketAddr {
    "127.0.0.1:7410".parse().expect("literal")
}
fn default_body() -> usize {
    DEFAULT_MAX_BODY_BYTES
}

/// Why a configuration was refused. Each message names the setting and what to do.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("config file {path}: {source}")]
    Parse { path: PathBuf, source: toml::de::Error },
    #[error("{0}")]
    Invalid(String),
}

/// Values given on the command line or in `TT_*` variables; each overrides the file.
#[derive(Debug, Default, Clone, clap::Args)]
pub struct Overrides {
    /// TOML config file.
    #[arg(long, env = "TT_CONFIG")]
    pub config: Option<PathBuf>,
    #[arg(long, env = "TT_NODE_ID")]
    pub node_id: Option<NodeId>,
    #[arg(long, env = "TT_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    #[arg(long, env = "TT_TLS_DIR")]
    pub tls_dir: Option<PathBuf>,
    #[arg(long, env = "TT_HTTP_ADDR")]
    pub http_addr: Option<SocketAddr>,
    #[arg(long, env = "TT_RAFT_ADDR")]
    pub raft_addr: Option<SocketAddr>,
    #[arg(long, env = "TT_AGENT_ADDR")]
    pub agent_addr: Option<SocketAddr>,
    #[arg(long, env = "TT_ADVERTISE_AGENT")]
    pub advertise_agent: Option<String>,
    #[arg(long, env = "TT_AGENT_TOKEN", hide_env_values = true)]
    pub agent_token: Option<String>,
    #[arg(long, env = "TT_ADVERTISE_HTTP")]
    pub advertise_http: Option<String>,
    #[arg(long, env = "TT_ADVERTISE_RAFT")]
    pub advertise_raft: Option<String>,
    /// Founding members, `id=http_addr,raft_addr`; repeat or separate with ';'.
    #[arg(long = "initial-member", env = "TT_INITIAL_MEMBERS", value_delimiter = ';')]
    pub initial_members: Vec<String>,
    #[arg(long, env = "TT_HEARTBEAT_MS")]
    pub heartbeat_ms: Option<u64>,
    #[arg(long, env = "TT_ELECTION_TIMEOUT_MIN_MS")]
    pub election_timeout_min_ms: Option<u64>,
    #[arg(long, env = "TT_ELECTION_TIMEOUT_MAX_MS")]
    pub election_timeout_max_ms: Option<u64>,
    #[arg(long, env = "TT_SNAPSHOT_EVERY_ENTRIES")]
    pub snapshot_every_entries: Option<u64>,
    #[arg(long, env = "TT_KEEP_ENTRIES_AFTER_SNAPSHOT")]
    pub keep_entries_after_snapshot: Option<u64>,
    #[arg(long, env = "TT_PURGE_BATCH_ENTRIES")]
    pub purge_batch_entries: Option<u64>,
    #[arg(long, env = "TT_PROMOTE_INTERVAL_MS")]
    pub promote_interval_ms: Option<u64>,
    #[arg(long, env = "TT_JANITOR_INTERVAL_MS")]
    pub janitor_interval_ms: Option<u64>,
    #[arg(long, env = "TT_BLOB_REPAIR_INTERVAL_MS")]
    pub blob_repair_interval_ms: Option<u64>,
    #[arg(long, env = "TT_MAX_BODY_BYTES")]
    pub max_body_bytes: Option<usize>,
    #[arg(long, env = "TT_LEASE_TTL_MS")]
    pub lease_ttl_ms: Option<u64>,
    #[arg(long, env = "TT_MAX_BLOB_BYTES")]
    pub max_blob_bytes: Option<u64>,
    #[arg(long, env = "TT_HOST_STALE_MS")]
    pub host_stale_ms: Option<u64>,
    #[arg(long, env = "TT_AUTH", value_enum)]
    pub auth: Option<crate::auth::AuthMode>,
    #[arg(long, env = "TT_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    #[arg(long, env = "TT_SWARM_ADDR")]
    pub swarm_addr: Option<SocketAddr>,
    #[arg(long, env = "TT_SWARM_ADVERTISE")]
    pub swarm_advertise: Option<SocketAddr>,
    /// Directories `file://` pulls may read; repeat or separate with ';'.
    #[arg(long = "pull-file-root", env = "TT_PULL_FILE_ROOTS", value_delimiter = ';')]
    pub pull_file_roots: Vec<PathBuf>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    node_id: Option<NodeId>,
    data_dir: Option<PathBuf>,
    tls_dir: Option<PathBuf>,
    http_addr: Option<SocketAddr>,
    raft_addr: Option<SocketAddr>,
    advertise_http: Option<String>,
    advertise_raft: Option<String>,
    agent_addr: Option<SocketAddr>,
    advertise_agent: Option<String>,
    agent_token: Option<String>,
    #[serde(default)]
    initial_members: Vec<String>,
    #[serde(default)]
    raft: Option<RaftTimings>,
    promote_interval_ms: Option<u64>,
    janitor_interval_ms: Option<u64>,
    blob_repair_interval_ms: Option<u64>,
    max_body_bytes: Option<usize>,
    lease_ttl_ms: Option<u64>,
    max_blob_bytes: Option<u64>,
    host_stale_ms: Option<u64>,
    auth: Option<crate::auth::AuthMode>,
    admin_token: Option<String>,
    swarm_addr: Option<SocketAddr>,
    swarm_advertise: Option<SocketAddr>,
    #[serde(default)]
    pull_file_roots: Vec<PathBuf>,
}

impl Config {
    /// Reads the file named by `o.config` (if any), applies the overrides, and validates.
    pub fn from_sources(o: &Overrides) -> Result<Config, ConfigError> {
        let file = match &o.config {
            Some(path) => load_file(path)?,
            None => FileConfig::default(),
        };
        let mut raft = file.raft.unwrap_or_default();
        macro_rules! over {
            ($($f:ident),*) => { $( if let Some(v) = o.$f { raft.$f = v; } )* };
        }
        over!(
            heartbeat_ms,
            election_timeout_min_ms,
            election_timeout_max_ms,
            snapshot_every_entries,
            keep_entries_after_snapshot,
            purge_batch_entries
        );
        let missing = |name: &str, flag: &str, env: &str| {
            ConfigError::Invalid(format!(
                "{name} is not set: pass --{flag}, set {env}, or put `{name} = ...` in the config file"
            ))
        };
        let cfg = Config {
            node_id: o
                .node_id
                .or(file.node_id)
                .ok_or_else(|| missing("node_id", "node-id", "TT_NODE_ID"))?,
            data_dir: o
                .data_dir
                .clone()
                .or(file.data_dir)
                .ok_or_else(|| missing("data_dir", "data-dir", "TT_DATA_DIR"))?,
            tls_dir: o
                .tls_dir
                .clone()
                .or(file.tls_dir)
                .ok_or_else(|| missing("tls_dir", "tls-dir", "TT_TLS_DIR"))?,
            http_addr: o.http_addr.or(file.http_addr).unwrap_or_else(default_http),
            raft_addr: o.raft_addr.or(file.raft_addr).unwrap_or_else(default_raft),
            agent_addr: o.agent_addr.or(file.agent_addr).unwrap_or_else(default_agent),
            advertise_agent: o.advertise_agent.clone().or(file.advertise_agent),
            agent_token: o.agent_token.clone().or(file.agent_token),
            advertise_http: o.advertise_http.clone().or(file.advertise_http),
            advertise_raft: o.advertise_raft.clone().or(file.advertise_raft),
            initial_members: if o.initial_members.is_empty() {
                file.initial_members
            } else {
                o.initial_members.clone()
            },
            raft,
            promote_interval_ms: o
                .promote_interval_ms
                .or(file.promote_interval_ms)
                .unwrap_or_else(default_promote_interval),
            janitor_interval_ms: o
                .janitor_interval_ms
                .or(file.janitor_interval_ms)
                .unwrap_or_else(default_janitor_interval),
            blob_repair_interval_ms: o
                .blob_repair_interval_ms
                .or(file.blob_repair_interval_ms)
                .unwrap_or_else(default_blob_repair_interval),
            max_body_bytes: o
                .max_body_bytes
                .or(file.max_body_bytes)
                .unwrap_or(DEFAULT_MAX_BODY_BYTES),
            lease_ttl_ms: o.lease_ttl_ms.or(file.lease_ttl_ms).unwrap_or(DEFAULT_LEASE_TTL_MS),
            max_blob_bytes: o
                .max_blob_bytes
                .or(file.max_blob_bytes)
                .unwrap_or(DEFAULT_MAX_BLOB_BYTES),
            host_stale_ms: o.host_stale_ms.or(file.host_stale_ms).unwrap_or(DEFAULT_HOST_STALE_MS),
            auth: o.auth.or(file.auth).unwrap_or_default(),
            admin_token: o.admin_token.clone().or(file.admin_token),
            swarm_addr: o.swarm_addr.or(file.swarm_addr),
            swarm_advertise: o.swarm_advertise.or(file.swarm_advertise),
            pull_file_roots: if o.pull_file_roots.is_empty() {
                file.pull_file_roots
            } else {
                o.pull_file_roots.clone()
            },
        };
        cfg.validate()?;
        Ok(cfg)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        if self.node_id == 0 {
            return bad("node_id must be greater than 0".into());
        }
        let r = &self.raft;
        if r.heartbeat_ms == 0 || r.election_timeout_min_ms <= 2 * r.heartbeat_ms {
            return bad(format!(
                "raft.election_timeout_min_ms ({}) must exceed twice raft.heartbeat_ms ({})",
                r.election_timeout_min_ms, r.heartbeat_ms
            ));
        }
        if r.election_timeout_max_ms <= r.election_timeout_min_ms {
            return bad(format!(
                "raft.election_timeout_max_ms ({}) must exceed raft.election_timeout_min_ms ({})",
                r.election_timeout_max_ms, r.election_timeout_min_ms
            ));
        }
        if self.lease_ttl_ms < 2 * self.raft.election_timeout_max_ms {
            return bad(format!(
                "lease_ttl_ms ({}) must be at least twice raft.election_timeout_max_ms ({})",
                self.lease_ttl_ms, self.raft.election_timeout_max_ms
            ));
        }
        let window = crate::state::promote::SCHEDULE_WINDOW_MS as u64;
        if !(MIN_LOOP_INTERVAL_MS..window).contains(&self.promote_interval_ms) {
            return bad(format!(
                "promote_interval_ms ({}) must be at least {MIN_LOOP_INTERVAL_MS} and below a promote schedule's window ({window} ms)",
                self.promote_interval_ms
            ));
        }
        if self.janitor_interval_ms < MIN_LOOP_INTERVAL_MS {
            return bad(format!(
                "janitor_interval_ms ({}) must be at least {MIN_LOOP_INTERVAL_MS}",
                self.janitor_interval_ms
            ));
        }
        if self.blob_repair_interval_ms < MIN_LOOP_INTERVAL_MS {
            return bad(format!(
                "blob_repair_interval_ms ({}) must be at least {MIN_LOOP_INTERVAL_MS}",
                self.blob_repair_interval_ms
            ));
        }
        if self.max_body_bytes < 1024 {
            return bad(format!("max_body_bytes ({}) must be at least 1024", self.max_body_bytes));
        }
        if self.admin_token.as_deref().is_some_and(|t| t.len() < MIN_ADMIN_TOKEN_LEN) {
            return bad(format!(
                "admin_token must be at least {MIN_ADMIN_TOKEN_LEN} characters (`coordinator token new` prints one)"
            ));
        }
        if let Some(root) = self.pull_file_roots.iter().find(|r| !r.is_absolute()) {
            return bad(format!("pull_file_roots: {} is not an absolute path", root.display()));
        }
        if let Some(addr) = self.swarm_addr
            && addr.ip().is_unspecified()
        {
            return bad(format!(
                "swarm_addr ({addr}) must name the IP agents dial, not {}",
                addr.ip()
            ));
        }
        if let Some(addr) = self.swarm_advertise {
            if self.swarm_addr.is_none() {
                return bad(format!("swarm_advertise ({addr}) needs swarm_addr"));
            }
            if addr.ip().is_unspecified() || addr.port() == 0 {
                return bad(format!(
                    "swarm_advertise ({addr}) must be the exact IP and port agents dial"
                ));
            }
        }
        let members = self.parsed_members()?;
        if !members.is_empty() && !members.iter().any(|(id, _)| *id == self.node_id) {
            return bad(format!(
                "initial_members does not include this node's id {}; list every founding node",
                self.node_id
            ));
        }
        Ok(())
    }

    /// `initial_members` parsed into ids and addresses.
    pub fn parsed_members(&self) -> Result<Vec<(NodeId, NodeInfo)>, ConfigError> {
        self.initial_members.iter().map(|m| parse_member(m)).collect()
    }

    pub fn node_info(&self) -> NodeInfo {
        NodeInfo {
            http_addr: self.advertise_http.clone().unwrap_or_else(|| self.http_addr.to_string()),
            raft_addr: self.advertise_raft.clone().unwrap_or_else(|| self.raft_addr.to_string()),
            agent_addr: self.advertise_agent.clone().unwrap_or_else(|| self.agent_addr.to_string()),
        }
    }

    pub fn heartbeat(&self) -> Duration {
        Duration::from_millis(self.raft.heartbeat_ms)
    }
}

/// Parses `id=http_addr,raft_addr[,agent_addr]`.
pub fn parse_member(s: &str) -> Result<(NodeId, NodeInfo), ConfigError> {
    let err = || {
        ConfigError::Invalid(format!(
            "initial member {s:?} is not of the form id=http_host:port,raft_host:port[,agent_host:port]"
        ))
    };
    let (id, addrs) = s.split_once('=').ok_or_else(err)?;
    let id: NodeId = id.trim().parse().map_err(|_| err())?;
    let parts: Vec<&str> = addrs.split(',').map(str::trim).collect();
    if id == 0 || !(2..=3).contains(&parts.len()) || parts.iter().any(|p| p.is_empty()) {
        return Err(err());
    }
    Ok((
        id,
        NodeInfo {
            http_addr: parts[0].to_string(),
            raft_addr: parts[1].to_string(),
            agent_addr: parts.get(2).map(|a| a.to_string()).unwrap_or_default(),
        },
    ))
}

fn load_file(path: &Path) -> Result<FileConfig, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|source| ConfigError::Read { path: path.to_path_buf(), source })?;
    toml::from_str(&text).map_err(|source| ConfigError::Parse { path: path.to_path_buf(), source })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> Overrides {
        Overrides {
            node_id: Some(1),
            data_dir: Some("/tmp/d".into()),
            tls_dir: Some("/tmp/t".into()),
            ..Default::default()
        }
    }

    #[test]
    fn flags_override_file_and_validation_names_the_setting() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(
            &path,
            "node_id = 2\ndata_dir = \"/x\"\ntls_dir = \"/y\"\n[raft]\nheartbeat_ms = 50\n",
        )
        .unwrap();
        let o = Overrides { config: Some(path.clone()), node_id: Some(3), ..Default::default() };
        let c = Config::from_sources(&o).unwrap();
        assert_eq!(c.node_id, 3);
        assert_eq!(c.raft.heartbeat_ms, 50);
        assert_eq!(c.data_dir, PathBuf::from("/x"));

        std::fs::write(&path, "node_id = 2\nbogus = 1\n").unwrap();
        let e = Config::from_sources(&Overrides { config: Some(path), ..Default::default() })
            .unwrap_err();
        assert!(e.to_string().contains("bogus"), "{e}");

        let e = Config::from_sources(&Overrides { node_id: Some(1), ..Default::default() })
            .unwrap_err();
        assert!(e.to_string().contains("data_dir is not set"), "{e}");
    }

    #[test]
    fn bad_timings_and_members_are_refused() {
        let mut o = base();
        o.heartbeat_ms = Some(400);
        let e = Config::from_sources(&o).unwrap_err();
        assert!(e.to_string().contains("heartbeat_ms"), "{e}");

        let mut o = base();
        o.initial_members = vec!["2=127.0.0.1:1,127.0.0.1:2".into()];
        let e = Config::from_sources(&o).unwrap_err();
        assert!(e.to_string().contains("does not include this node"), "{e}");

        let mut o = base();
        o.promote_interval_ms = Some(300_000);
        let e = Config::from_sources(&o).unwrap_err();
        assert!(e.to_string().contains("promote_interval_ms"), "{e}");

        let mut o = base();
        o.initial_members = vec!["1=nope".into()];
        assert!(Config::from_sources(&o).is_err());

        let mut o = base();
        o.initial_members = vec!["1=127.0.0.1:1,127.0.0.1:2".into()];
        let c = Config::from_sources(&o).unwrap();
        assert_eq!(c.parsed_members().unwrap()[0].1.raft_addr, "127.0.0.1:2");

        let mut o = base();
        o.blob_repair_interval_ms = Some(1);
        let e = Config::from_sources(&o).unwrap_err();
        assert!(e.to_string().contains("blob_repair_interval_ms"), "{e}");
    }

    #[test]
    fn the_swarm_advertise_address_needs_the_origin_and_an_exact_address() {
        let mut o = base();
        o.swarm_advertise = Some("127.0.0.1:9000".parse().unwrap());
        let e = Config::from_sources(&o).unwrap_err();
        assert!(e.to_string().contains("needs swarm_addr"), "{e}");
        o.swarm_addr = Some("127.0.0.1:0".parse().unwrap());
        let c = Config::from_sources(&o).unwrap();
        assert_eq!(c.swarm_advertise, Some("127.0.0.1:9000".parse().unwrap()));
        o.swarm_advertise = Some("0.0.0.0:9000".parse().unwrap());
        let e = Config::from_sources(&o).unwrap_err();
        assert!(e.to_string().contains("exact IP and port"), "{e}");
    }
}
