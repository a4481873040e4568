//! The agent's configuration: a TOML file whose keys are Teletraan's `agent.conf` keys where
//! one exists, overridden by command-line flags. Per-goal `agentConfigs` from the coordinator
//! override the executor's limits (`process_timeout`, `max_retry`, ...) and `target`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::executor::ExecLimits;

/// Longest a NOOP ping is held by the coordinator before it answers (our long-poll).
pub const DEFAULT_LONG_POLL_MS: u64 = 30_000;
/// Teletraan's idle ping interval, used when long-poll is off.
pub const DEFAULT_DAEMON_SLEEP_TIME_MS: u64 = 30_000;
/// How long a parallelism slot lasts without a successful ping. Must be shorter than the
/// coordinators' `lease_ttl_ms` (default 300 000) so the agent gives up first.
pub const DEFAULT_LEASE_MS: u64 = 240_000;
/// First pause after a failed ping; doubles up to [`MAX_PING_BACKOFF_MS`].
pub const MIN_PING_BACKOFF_MS: u64 = 500;
/// Longest pause between attempts to reach a coordinator.
pub const MAX_PING_BACKOFF_MS: u64 = 30_000;

#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AgentConfig {
    /// Home of `env_status`, `host_info`, the lock and `<env>_SCRIPT_CONFIG`.
    pub deploy_agent_dir: PathBuf,
    /// Downloaded archives and extracted builds.
    pub builds_dir: PathBuf,
    /// The agent's own log and one log per env (hook output).
    pub log_directory: PathBuf,
    /// The service symlink is `<target_default_dir>/<env name>` unless the goal sets `target`.
    pub target_default_dir: PathBuf,
    /// Coordinator agent endpoints (`host:port`, QUIC `tt-agent/1`); any subset of the cluster.
    pub coordinators: Vec<String>,
    /// The cluster CA certificate (`ca.pem`) that coordinators' certificates chain to.
    pub ca_file: Option<PathBuf>,
    /// The agent token (`[auth] agent_token` of the coordinators).
    pub token: Option<String>,
    /// `quic` (our coordinators' native protocol, with long-poll) or `json` (Teletraan's
    /// `POST /v1/system/ping` at `service_urls`, polling every `daemon_sleep_time_ms`).
    pub protocol: Protocol,
    /// Base URLs of the ping service for `protocol = "json"` (Teletraan's
    /// `teletraan_service_url`; several for failover).
    pub service_urls: Vec<String>,
    /// How long the coordinator may hold a ping that has nothing to say (0: no long-poll).
    pub long_poll_ms: u64,
    /// Pause between idle pings when long-poll is off (Teletraan's `daemon_sleep_time`).
    pub daemon_sleep_time_ms: u64,
    pub lease_ms: u64,
    /// Hook limits (Teletraan's names and defaults).
    pub process_timeout: u64,
    pub termination_timeout: u64,
    pub max_retry: u32,
    pub process_wait_interval: u64,
    pub back_off_factor: u32,
    pub max_sleep_interval: u64,
    pub min_running_time: u64,
    pub max_tail_bytes: usize,
    /// Builds kept per env besides the ones in use.
    pub num_builds_to_retain: usize,
    /// Refuse builds published without `artifactBlake3` (on by default: integrity invariant).
    pub require_build_hash: bool,
    /// On a DELETE goal, remove the env's symlink, script config and unused builds.
    pub delete_cleans_up: bool,
    /// Accept `http://` artifact URLs (unverified transport; the BLAKE3 check still applies).
    pub allow_plain_http: bool,
    /// Extra CA certificates (PEM) trusted for `https://` artifact downloads.
    pub download_ca_file: Option<PathBuf>,
    /// Host identity (else from `host_info` or the system).
    pub host_id: Option<String>,
    pub hostname: Option<String>,
    pub ip: Option<String>,
    pub groups: Vec<String>,
    pub availability_zone: Option<String>,
    /// Extra variables for every hook (e.g. a port per host when several agents share a box).
    pub hook_env: BTreeMap<String, String>,
    /// The host's tags, reported to the coordinators as `ec2Tags` (e.g. `az = "us-east-1a"`):
    /// a stage's deploy constraint groups hosts by one of them.
    pub tags: BTreeMap<String, String>,
    /// This host's `tt-blob/1` endpoint (UDP): the address its peers dial, so a concrete IP
    /// (port 0 picks a free port). Set with `swarm_tls_dir` to fetch `tt://blob/` builds
    /// through the swarm and serve them to peers; unset, they come from the coordinators.
    pub swarm_listen: Option<SocketAddr>,
    /// The `tt-blob/1` address the tracker hands to peers, when it is not `swarm_listen`
    /// (a NAT or a proxy in front of the host forwards it there). Unset: `swarm_listen`.
    pub swarm_advertise: Option<SocketAddr>,
    /// `node.pem`, `node.key` and `ca.pem`: this host's certificate from the cluster CA
    /// (`coordinator certs issue`); blob peers authenticate each other with it.
    pub swarm_tls_dir: Option<PathBuf>,
    /// The swarm's store (`<deploy_agent_dir>/swarm` if unset) and its quota in bytes.
    pub swarm_dir: Option<PathBuf>,
    pub swarm_max_bytes: u64,
    /// Host-wide caps on serving and fetching blobs, bytes per second (unset: none).
    pub swarm_upload_bytes_per_sec: Option<u64>,
    pub swarm_download_bytes_per_sec: Option<u64>,
    /// Fetch through the swarm but never upload (a fragile host).
    pub swarm_leech_only: bool,
    /// Serve `/metrics`, `/livez` and `/readyz` over HTTP here (e.g. `127.0.0.1:9410`);
    /// unset, nothing listens.
    pub metrics_listen: Option<SocketAddr>,
}

/// Default quota of the agent's swarm store (the builds it keeps to serve peers).
pub const DEFAULT_SWARM_MAX_BYTES: u64 = 16 << 30;

impl Default for AgentConfig {
    fn default() -> Self {
        let d = ExecLimits::default();
        Self {
            deploy_agent_dir: PathBuf::from("/var/lib/deployd"),
            builds_dir: PathBuf::from("/var/lib/deployd/builds"),
            log_directory: PathBuf::from("/var/log/deployd"),
            target_default_dir: PathBuf::from("/tmp"),
            coordinators: vec!["127.0.0.1:7410".into()],
            ca_file: None,
            token: None,
            protocol: Protocol::Quic,
            service_urls: Vec::new(),
            long_poll_ms: DEFAULT_LONG_POLL_MS,
            daemon_sleep_time_ms: DEFAULT_DAEMON_SLEEP_TIME_MS,
            lease_ms: DEFAULT_LEASE_MS,
            process_timeout: d.process_timeout.as_secs(),
            termination_timeout: d.termination_timeout.as_secs(),
            max_retry: d.max_retry,
            process_wait_interval: d.process_wait_interval.as_secs(),
            back_off_factor: d.back_off_factor,
            max_sleep_interval: d.max_sleep_interval.as_secs(),
            min_running_time: d.heartbeat_interval.as_secs(),
            max_tail_bytes: d.max_tail_bytes,
            num_builds_to_retain: 2,
            require_build_hash: true,
            delete_cleans_up: true,
            allow_plain_http: false,
            download_ca_file: None,
            host_id: None,
            hostname: None,
            ip: None,
            groups: Vec::new(),
            availability_zone: None,
            hook_env: BTreeMap::new(),
            tags: BTreeMap::new(),
            swarm_listen: None,
            swarm_advertise: None,
            swarm_tls_dir: None,
            swarm_dir: None,
            swarm_max_bytes: DEFAULT_SWARM_MAX_BYTES,
            swarm_upload_bytes_per_sec: None,
            swarm_download_bytes_per_sec: None,
            swarm_leech_only: false,
            metrics_listen: None,
        }
    }
}

/// How the agent talks to the deploy service.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    #[default]
    Quic,
    Json,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("config {path} is not valid: {message}")]
    Invalid { path: PathBuf, message: String },
    #[error("coordinator address {addr:?} does not resolve: {message}")]
    Address { addr: String, message: String },
}

impl AgentConfig {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| ConfigError::Read { path: path.to_path_buf(), source })?;
        toml::from_str(&text)
            .map_err(|e| ConfigError::Invalid { path: path.to_path_buf(), message: e.to_string() })
    }

    /// Puts every directory under `root` (tests and the demo run many agents on one box).
    pub fn rooted_at(root: &Path) -> Self {
        Self {
            deploy_agent_dir: root.join("agent"),
            builds_dir: root.join("builds"),
            log_directory: root.join("logs"),
            target_default_dir: root.join("targets"),
            ..Self::default()
        }
    }

    /// The hook limits, with the goal's agent configs (already stripped of their stage prefix
    /// by the coordinator) applied on top.
    pub fn exec_limits(&self, runtime: &BTreeMap<String, String>) -> ExecLimits {
        let secs = |key: &str, base: u64| {
            Duration::from_secs(
                runtime.get(key).and_then(|v| v.trim().parse().ok()).unwrap_or(base),
            )
        };
        let int = |key: &str, base: u32| {
            runtime.get(key).and_then(|v| v.trim().parse().ok()).unwrap_or(base)
        };
        ExecLimits {
            process_timeout: secs("process_timeout", self.process_timeout),
            termination_timeout: secs("termination_timeout", self.termination_timeout),
            max_retry: int("max_retry", self.max_retry).max(1),
            process_wait_interval: secs("process_wait_interval", self.process_wait_interval),
            back_off_factor: int("back_off_factor", self.back_off_factor).max(1),
            max_sleep_interval: secs("max_sleep_interval", self.max_sleep_interval),
            heartbeat_interval: secs("min_running_time", self.min_running_time)
                .max(Duration::from_millis(100)),
            max_tail_bytes: runtime
                .get("max_tail_bytes")
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(self.max_tail_bytes),
        }
    }

    pub fn coordinator_addrs(&self) -> Result<Vec<SocketAddr>, ConfigError> {
        use std::net::ToSocketAddrs;
        self.coordinators
            .iter()
            .map(|a| {
                a.to_socket_addrs()
                    .map_err(|e| ConfigError::Address { addr: a.clone(), message: e.to_string() })?
                    .next()
                    .ok_or_else(|| ConfigError::Address {
                        addr: a.clone(),
                        message: "no address".into(),
                    })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toml_keys_and_runtime_overrides() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.toml");
        std::fs::write(&path, "max_retry = 5\ncoordinators = [\"127.0.0.1:1\"]\n").unwrap();
        let cfg = AgentConfig::load(&path).unwrap();
        assert_eq!(cfg.max_retry, 5);
        let mut rt = BTreeMap::new();
        assert_eq!(cfg.exec_limits(&rt).max_retry, 5);
        rt.insert("max_retry".to_string(), "2".to_string());
        rt.insert("process_timeout".to_string(), "7".to_string());
        let limits = cfg.exec_limits(&rt);
        assert_eq!(limits.max_retry, 2);
        assert_eq!(limits.process_timeout, Duration::from_secs(7));

        let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/etc/tt/agent.toml");
        let cfg = AgentConfig::load(&example).expect("the shipped example config loads");
        assert_eq!(cfg.coordinators.len(), 3);
        assert_eq!(cfg.lease_ms, DEFAULT_LEASE_MS);

        std::fs::write(
            &path,
            "swarm_listen = \"127.0.0.1:7420\"\nswarm_advertise = \"10.1.2.3:9\"\n",
        )
        .unwrap();
        let cfg = AgentConfig::load(&path).unwrap();
        assert_eq!(cfg.swarm_advertise, Some("10.1.2.3:9".parse().unwrap()));
        assert_eq!(AgentConfig::default().swarm_advertise, None, "peers dial swarm_listen");

        std::fs::write(&path, "max_retyr = 5\n").unwrap();
        let err = AgentConfig::load(&path).unwrap_err().to_string();
        assert!(err.contains("max_retyr"), "a typo is named: {err}");
    }
}
