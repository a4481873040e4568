//! Starting a node: storage, TLS, the Raft endpoint, the cluster bootstrap, group commit and the
//! HTTP API, wired together.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use openraft::{RaftMetrics, SnapshotPolicy};
use tracing::{error, info, warn};

use crate::api::{self, AppState};
use crate::config::Config;
use crate::metrics::Metrics;
use crate::proposer::Proposer;
use crate::raft::{Network, NodeId, NodeInfo, Raft, RaftRpcHandler};
use crate::rpc::{RpcServer, make_client_endpoint};
use crate::tls::{self, ClientAuth, ClusterCa, NodeCert};
use crate::{ids, store};
use proto::alpn::RAFT as RAFT_ALPN;

/// How long the founding node waits for its peers before retrying `initialize`.
pub const INIT_RETRY: Duration = Duration::from_millis(500);
/// Timeout of openraft's snapshot chunk RPC.
pub const INSTALL_SNAPSHOT_TIMEOUT_MS: u64 = 5_000;
/// Largest snapshot chunk sent in one RPC.
pub const SNAPSHOT_CHUNK_BYTES: u64 = 4 * 1024 * 1024;
/// Log entries per AppendEntries RPC.
pub const MAX_PAYLOAD_ENTRIES: u64 = 512;

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Store(#[from] store::OpenError),
    #[error("TLS material in {dir}: {source}")]
    Tls { dir: std::path::PathBuf, source: tls::TlsError },
    #[error("TLS configuration: {0}")]
    TlsConfig(#[from] tls::TlsConfigError),
    #[error("cannot bind {what} on {addr}: {source}")]
    Bind { what: &'static str, addr: std::net::SocketAddr, source: std::io::Error },
    #[error("invalid Raft configuration: {0}")]
    RaftConfig(String),
    #[error("Raft failed to start: {0}")]
    Raft(String),
    #[error("{0}")]
    Config(#[from] crate::config::ConfigError),
    #[error("HTTP server failed: {0}")]
    Http(std::io::Error),
    /// The Raft core stopped while the node was serving (a fatal storage error, or a panic in
    /// openraft). The node then stops too: with its core gone its applied state is frozen and
    /// it would still name itself leader, answering agents and readers from that state.
    #[error("the Raft core stopped ({0}); the node stops with it")]
    RaftStopped(String),
}

/// Wall clock in milliseconds since the Unix epoch (read only by the leader, see `Proposal`).
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Runs a node until `shutdown` resolves.
pub async fn run(
    cfg: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), StartError> {
    tls::install_crypto_provider();
    let metrics = Metrics::new();
    let (log_store, sm_store) = store::open(&cfg.data_dir).await?;
    let fsync_metrics = metrics.clone();
    let log_store = log_store
        .with_fsync_observer(Arc::new(move |s| fsync_metrics.log_fsync_seconds.observe(s)));
    let committed = log_store.committed_index();
    let apply_metrics = metrics.clone();
    let sm_store = sm_store.with_apply_observer(Arc::new(move |changes, seconds| {
        apply_metrics.apply_seconds.observe(seconds);
        apply_metrics.applied(changes);
    }));
    let applied = sm_store.applied();
    let feed = sm_store.change_feed();

    let tls_err = |source| StartError::Tls { dir: cfg.tls_dir.clone(), source };
    let ca_cert = ClusterCa::load_cert(&cfg.tls_dir).map_err(tls_err)?;
    let node_cert = NodeCert::load(&cfg.tls_dir).map_err(tls_err)?;
    let server_cfg = tls::server_config(&node_cert, &ca_cert, &[RAFT_ALPN], ClientAuth::Required)?;
    let client_cfg = tls::client_config(Some(&node_cert), &ca_cert, &[RAFT_ALPN])?;
    // A reset key that survives restarts: peers drop their connections to this node's previous
    // incarnation at once, instead of sending it nothing for the QUIC idle timeout.
    let rpc_server =
        RpcServer::bind_with_reset_key(cfg.raft_addr, server_cfg, Some(node_cert.reset_key()))
            .map_err(|e| StartError::Bind {
                what: "Raft QUIC endpoint",
                addr: e.addr,
                source: e.source,
            })?;
    let client_ep = make_client_endpoint(client_cfg)
        .map_err(|e| StartError::Raft(format!("client endpoint: {e}")))?;

    let raft_cfg = openraft::Config {
        cluster_name: "tt-coordinator".into(),
        heartbeat_interval: cfg.raft.heartbeat_ms,
        election_timeout_min: cfg.raft.election_timeout_min_ms,
        election_timeout_max: cfg.raft.election_timeout_max_ms,
        install_snapshot_timeout: INSTALL_SNAPSHOT_TIMEOUT_MS,
        snapshot_max_chunk_size: SNAPSHOT_CHUNK_BYTES,
        max_payload_entries: MAX_PAYLOAD_ENTRIES,
        snapshot_policy: SnapshotPolicy::LogsSinceLast(cfg.raft.snapshot_every_entries),
        max_in_snapshot_log_to_keep: cfg.raft.keep_entries_after_snapshot,
        purge_batch_size: cfg.raft.purge_batch_entries.max(1),
        ..Default::default()
    }
    .validate()
    .map_err(|e| StartError::RaftConfig(e.to_string()))?;
    let raft = Raft::new(
        cfg.node_id,
        Arc::new(raft_cfg),
        Network::new(client_ep, cfg.node_id),
        log_store,
        sm_store,
    )
    .await
    .map_err(|e| StartError::Raft(e.to_string()))?;
    let handler = Arc::new(RaftRpcHandler { raft: raft.clone() });
    tokio::spawn(async move { rpc_server.serve(handler).await });
    info!(node = cfg.node_id, raft_addr = %cfg.raft_addr, http_addr = %cfg.http_addr, "node started");

    let members = cfg.parsed_members()?;
    if let Some(first) = members.iter().map(|(id, _)| *id).min()
        && first == cfg.node_id
    {
        let raft = raft.clone();
        let members: BTreeMap<_, _> = members.into_iter().collect();
        tokio::spawn(bootstrap(raft, members));
    }

    let proposer = Proposer::spawn(raft.clone(), now_ms, metrics.clone());
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(64)
        .build()
        .map_err(|e| StartError::Raft(format!("HTTP client: {e}")))?;
    let app = Arc::new(AppState {
        node_id: cfg.node_id,
        raft: raft.clone(),
        applied,
        proposer,
        metrics,
        committed,
        http,
        max_body_bytes: cfg.max_body_bytes,
        ids: ids::IdGen,
        liveness: crate::api::deploys::Liveness::new(
            std::time::Duration::from_millis(cfg.lease_ttl_ms),
            std::time::Duration::from_millis(cfg.host_stale_ms),
        ),
        feed,
        agent_token: cfg.agent_token.clone(),
        auth_mode: cfg.auth,
        admin_token: cfg.admin_token.clone(),
        blobs: Arc::new(
            crate::blobs::BlobStore::open(&cfg.data_dir.join("blobs"), cfg.max_blob_bytes)
                .map_err(|e| StartError::Raft(format!("blob store: {e}")))?,
        ),
        swarm: match cfg.swarm_addr {
            Some(addr) => Some(Arc::new(
                crate::swarm::Swarm::start(
                    addr,
                    cfg.swarm_advertise,
                    &cfg.tls_dir,
                    &cfg.data_dir,
                    crate::swarm::ORIGIN_STORE_MAX_BYTES,
                )
                .map_err(|e| StartError::Raft(format!("blob origin: {e}")))?,
            )),
            None => None,
        },
        pull_file_roots: cfg.pull_file_roots.clone(),
    });
    // Agents: server-authenticated TLS under the cluster CA; identity by token.
    let agent_server_cfg =
        tls::server_config(&node_cert, &ca_cert, &[proto::alpn::AGENT], ClientAuth::None)?;
    let agent_server = RpcServer::bind_with_reset_key(
        cfg.agent_addr,
        agent_server_cfg,
        Some(node_cert.reset_key()),
    )
    .map_err(|e| StartError::Bind {
        what: "agent QUIC endpoint",
        addr: e.addr,
        source: e.source,
    })?;
    let agent_handler = Arc::new(crate::agent_api::AgentHandler { app: app.clone() });
    tokio::spawn(async move {
        agent_server.serve_with_limit(agent_handler, crate::agent_api::MAX_AGENT_CONNECTIONS).await
    });
    tokio::spawn(crate::api::deploys::tick_loop(app.clone()));
    tokio::spawn(crate::api::deploys::lease_loop(app.clone()));
    tokio::spawn(crate::api::webhooks::webhook_loop(app.clone()));
    let every = |ms| std::time::Duration::from_millis(ms);
    tokio::spawn(crate::api::promotes::promote_loop(app.clone(), every(cfg.promote_interval_ms)));
    tokio::spawn(crate::api::promotes::janitor_loop(app.clone(), every(cfg.janitor_interval_ms)));
    tokio::spawn(crate::blob_copies::repair_loop(app.clone(), every(cfg.blob_repair_interval_ms)));
    let listener = tokio::net::TcpListener::bind(cfg.http_addr)
        .await
        .map_err(|source| StartError::Bind { what: "HTTP API", addr: cfg.http_addr, source })?;
    let serve = axum::serve(listener, api::router(app.clone())).with_graceful_shutdown(shutdown);
    let served = tokio::select! {
        served = serve => served,
        why = raft_core_stopped(raft.metrics()) => {
            error!(reason = %why, "the Raft core stopped; stopping the node");
            return Err(StartError::RaftStopped(why));
        }
    };
    if let Err(e) = raft.shutdown().await {
        warn!(error = %e, "raft shutdown");
    }
    served.map_err(StartError::Http)
}

/// Resolves once the Raft core behind `metrics` has stopped, with why: it reported a fatal
/// error, or it is gone without a word (its task panicked and dropped the metrics sender).
pub async fn raft_core_stopped(
    mut metrics: tokio::sync::watch::Receiver<RaftMetrics<NodeId, NodeInfo>>,
) -> String {
    loop {
        if let Err(fatal) = &metrics.borrow_and_update().running_state {
            return fatal.to_string();
        }
        if metrics.changed().await.is_err() {
            return match &metrics.borrow().running_state {
                Err(fatal) => fatal.to_string(),
                Ok(()) => "its task ended without reporting why (panicked)".into(),
            };
        }
    }
}

/// Initialises a new cluster once, from the founding node, when its log is empty.
async fn bootstrap(raft: Raft, members: BTreeMap<u64, crate::raft::NodeInfo>) {
    match raft.is_initialized().await {
        Ok(true) => return,
        Ok(false) => {}
        Err(e) => {
            warn!(error = %e, "cannot tell whether the cluster is initialised");
            return;
        }
    }
    loop {
        match raft.initialize(members.clone()).await {
            Ok(()) => {
                info!(members = members.len(), "cluster initialised");
                return;
            }
            Err(openraft::error::RaftError::APIError(
                openraft::error::InitializeError::NotAllowed(_),
            )) => return,
            Err(e) => {
                warn!(error = %e, "initialise failed; retrying");
                tokio::time::sleep(INIT_RETRY).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use openraft::error::Fatal;

    fn metrics() -> RaftMetrics<NodeId, NodeInfo> {
        RaftMetrics::new_initial(1)
    }

    #[tokio::test]
    async fn a_core_that_reports_a_fatal_error_is_seen_as_stopped() {
        let (tx, rx) = tokio::sync::watch::channel(metrics());
        let watcher = tokio::spawn(raft_core_stopped(rx));
        tx.send_modify(|m| m.current_term = 2);
        tokio::task::yield_now().await;
        assert!(!watcher.is_finished(), "a running core is not stopped");
        tx.send_modify(|m| m.running_state = Err(Fatal::Panicked));
        let why = watcher.await.unwrap();
        assert!(why.contains("panicked"), "{why}");
        drop(tx);
    }

    #[tokio::test]
    async fn a_core_whose_task_vanished_is_seen_as_stopped() {
        // A panicking core task drops the metrics sender without a last report.
        let (tx, rx) = tokio::sync::watch::channel(metrics());
        let watcher = tokio::spawn(raft_core_stopped(rx));
        tokio::task::yield_now().await;
        assert!(!watcher.is_finished());
        drop(tx);
        assert!(watcher.await.unwrap().contains("without reporting why"));
    }
}
