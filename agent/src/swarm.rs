//! DOWNLOADING through the blob swarm: `tt://blob/<hash>` builds come from peers over
//! `tt-blob/1` (every chunk group BLAKE3-verified before it is written), and the host serves
//! what it holds to its peers while and after it downloads.
//!
//! [`SwarmSource`] is the downloader's [`BlobSource`]: the first read of a build announces it
//! to the tracker (the coordinators' leader), which answers the build's size and the peers to
//! fetch it from (seeders first, the coordinators' origin last); the whole build is fetched into
//! the swarm store, re-announced every [`ANNOUNCE_INTERVAL`] for newcomers, announced complete,
//! and then read from that store. The downloader hashes the bytes once more as it copies them.
//! Whatever goes wrong (no origin configured, no peers, a stalled swarm), the build is read from
//! the coordinators as before, and the fallback is counted.
//!
//! The node's counters go to [`STATS_FILE`] in the agent directory every [`STATS_INTERVAL`].

use std::collections::{HashMap, HashSet, VecDeque};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use p2p_transfer::blob::{BlobHash, BlobSpec, BlobStore, CompleteBlob, StoreConfig};
use p2p_transfer::swarm::{
    BlobNode, DownloadOptions, NodeConfig, NodeTls, PeerId, PeerInfo, PeerRole,
};
use p2p_transfer::tls::{ClusterCa, NodeCert};
use proto::agent::{MAX_HELLO_BLOBS, SwarmAnnounce, SwarmHello, SwarmHint, SwarmPeer};
use serde::Serialize;
use tracing::{Instrument, info, info_span, warn};

use crate::config::AgentConfig;
use crate::coordinator_client::{CoordinatorClient, SwarmPinger};
use crate::download::BlobSource;

/// How often a download re-announces itself, picking up the peers that joined since.
pub const ANNOUNCE_INTERVAL: Duration = Duration::from_secs(1);
/// How often the node's counters are written to [`STATS_FILE`].
pub const STATS_INTERVAL: Duration = Duration::from_secs(1);
/// The node's counters, as JSON, in the agent directory.
pub const STATS_FILE: &str = "swarm-stats.json";

/// Starting the swarm node failed.
#[derive(Debug, thiserror::Error)]
pub enum SwarmError {
    #[error(
        "swarm_listen is set but swarm_tls_dir is not: peers authenticate with a certificate from the cluster CA"
    )]
    NoTlsDir,
    #[error("loading the swarm certificate from {dir}: {message}")]
    Tls { dir: PathBuf, message: String },
    #[error("opening the swarm store: {0}")]
    Store(#[from] p2p_transfer::blob::OpenError),
    #[error("starting the tt-blob/1 endpoint: {0}")]
    Start(#[from] p2p_transfer::swarm::StartError),
}

/// What [`STATS_FILE`] holds.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SwarmStats {
    /// Piece bytes this host sent to peers.
    pub uploaded_bytes: u64,
    /// Piece bytes this host received through the swarm.
    pub downloaded_bytes: u64,
    pub pieces_served: u64,
    pub bad_responses: u64,
    /// Builds fetched through the swarm.
    pub swarm_downloads: u64,
    /// Builds read from the coordinators instead.
    pub fallbacks: u64,
    /// Builds fetched ahead of admission on a coordinator's prefetch hint.
    pub prefetches: u64,
    /// The part of `downloaded_bytes` that came from the coordinators' origin.
    pub downloaded_from_origin_bytes: u64,
    /// Peers a download of this process banned for bad data (as the tracker named them),
    /// first [`MAX_BANNED_PEERS_LISTED`] only.
    pub banned_peers: Vec<String>,
}

/// Most peers [`SwarmStats::banned_peers`] lists.
pub const MAX_BANNED_PEERS_LISTED: usize = 64;

/// The downloader's blob source when the host runs a `tt-blob/1` node.
pub struct SwarmSource {
    node: BlobNode,
    /// What the tracker hands to peers: `swarm_advertise`, else the node's own address.
    advertise: String,
    banned: std::sync::Mutex<Vec<String>>,
    client: Arc<CoordinatorClient>,
    zone: Option<String>,
    state: tokio::sync::Mutex<Fetched>,
    /// The latest hint per blob: its first peers come from there, not from an announce.
    hints: std::sync::Mutex<HashMap<String, SwarmHint>>,
    /// Blobs held, fetching or given up on, oldest first: what each ping's hello lists.
    known: std::sync::Mutex<VecDeque<String>>,
    /// For the prefetch tasks [`SwarmPinger::hint`] spawns.
    me: std::sync::Weak<SwarmSource>,
    swarm_downloads: AtomicU64,
    fallbacks: AtomicU64,
    prefetches: AtomicU64,
}

#[derive(Default)]
struct Fetched {
    complete: HashMap<String, CompleteBlob>,
    /// Builds the swarm could not deliver: read from the coordinators.
    failed: HashSet<String>,
}

impl SwarmSource {
    /// Starts the host's node if `swarm_listen` is set; `None` otherwise.
    pub fn start(
        cfg: &AgentConfig,
        client: Arc<CoordinatorClient>,
    ) -> Result<Option<Arc<SwarmSource>>, SwarmError> {
        let Some(listen) = cfg.swarm_listen else { return Ok(None) };
        let dir = cfg.swarm_tls_dir.as_ref().ok_or(SwarmError::NoTlsDir)?;
        let tls_err = |e: &dyn std::fmt::Display| SwarmError::Tls {
            dir: dir.clone(),
            message: e.to_string(),
        };
        let ca = ClusterCa::load_cert(dir).map_err(|e| tls_err(&e))?;
        let cert = NodeCert::load(dir).map_err(|e| tls_err(&e))?;
        let tls = NodeTls::cluster(&cert, &ca).map_err(|e| tls_err(&e))?;
        let store_dir = cfg.swarm_dir.clone().unwrap_or_else(|| cfg.deploy_agent_dir.join("swarm"));
        let store = BlobStore::open(StoreConfig {
            dir: store_dir,
            max_bytes: cfg.swarm_max_bytes,
            high_watermark_bytes: cfg.swarm_max_bytes,
            low_watermark_bytes: cfg.swarm_max_bytes / 2,
            min_free_bytes: 0,
            // The build being deployed and the one before it stay to be served.
            keep_newest: 2,
        })?;
        let node = BlobNode::start(
            NodeConfig {
                upload_bytes_per_sec: cfg.swarm_upload_bytes_per_sec,
                download_bytes_per_sec: cfg.swarm_download_bytes_per_sec,
                leech_only: cfg.swarm_leech_only,
                ..NodeConfig::recommended(listen)
            },
            tls,
            store,
        )?;
        info!(swarm_addr = %node.peer_id(), advertise = ?cfg.swarm_advertise, "serving and fetching builds over tt-blob/1");
        let advertise =
            cfg.swarm_advertise.map_or_else(|| node.peer_id().to_string(), |a| a.to_string());
        let source = Arc::new_cyclic(|me| SwarmSource {
            node,
            advertise,
            banned: Default::default(),
            client: client.clone(),
            zone: cfg.availability_zone.clone(),
            state: Default::default(),
            hints: Default::default(),
            known: Default::default(),
            me: me.clone(),
            swarm_downloads: AtomicU64::new(0),
            fallbacks: AtomicU64::new(0),
            prefetches: AtomicU64::new(0),
        });
        client.set_swarm(source.clone());
        tokio::spawn(write_stats(source.clone(), cfg.deploy_agent_dir.join(STATS_FILE)));
        Ok(Some(source))
    }

    /// The node's counters and this source's tallies.
    pub fn stats(&self) -> SwarmStats {
        let node = self.node.stats();
        SwarmStats {
            uploaded_bytes: node.uploaded_bytes,
            downloaded_bytes: node.downloaded_bytes,
            pieces_served: node.pieces_served,
            bad_responses: node.bad_responses,
            swarm_downloads: self.swarm_downloads.load(Ordering::Relaxed),
            fallbacks: self.fallbacks.load(Ordering::Relaxed),
            prefetches: self.prefetches.load(Ordering::Relaxed),
            downloaded_from_origin_bytes: node.downloaded_from_origin_bytes,
            banned_peers: self.banned.lock().expect("banned lock").clone(),
        }
    }

    /// The node's own counters (bytes by source, bans, throttling).
    pub fn node_stats(&self) -> p2p_transfer::swarm::NodeStats {
        self.node.stats()
    }

    /// Adds `peers` to [`SwarmStats::banned_peers`] (each once, up to the bound).
    fn note_banned(&self, peers: impl Iterator<Item = String>) {
        let mut banned = self.banned.lock().expect("banned lock");
        for peer in peers {
            if banned.len() < MAX_BANNED_PEERS_LISTED && !banned.contains(&peer) {
                warn!(%peer, "a peer sent bad data and was banned");
                banned.push(peer);
            }
        }
    }

    /// Remembers `hex` for the hellos (newest last, at most [`MAX_HELLO_BLOBS`]).
    fn note(&self, hex: &str) {
        let mut known = self.known.lock().expect("known lock");
        if known.iter().any(|k| k == hex) {
            return;
        }
        if known.len() == MAX_HELLO_BLOBS {
            known.pop_front();
        }
        known.push_back(hex.to_owned());
    }

    fn announce(&self, hex: &str, complete: bool) -> SwarmAnnounce {
        SwarmAnnounce {
            blob_addr: self.advertise.clone(),
            blake3: hex.to_owned(),
            complete,
            zone: self.zone.clone(),
        }
    }

    /// The whole blob through the swarm.
    async fn fetch(&self, hex: &str) -> Result<CompleteBlob, String> {
        let hash: BlobHash = hex.parse().map_err(|e| format!("{e}"))?;
        let hinted = self.hints.lock().expect("hints lock").remove(hex);
        let (size, peers) = match hinted.filter(|h| !h.peers.is_empty()) {
            // The ping's answer already recorded this host in the tracker and named its peers.
            Some(hint) => (hint.size, hint.peers),
            None => {
                self.client.announce(&self.announce(hex, false)).await.map_err(|e| e.to_string())?
            }
        };
        if peers.is_empty() {
            return Err("the coordinators run no blob origin".to_owned());
        }
        let spec = BlobSpec { hash, size };
        let download = self
            .node
            .download(spec, peer_infos(&peers), DownloadOptions::recommended())
            .await
            .map_err(|e| e.to_string())?;
        let adder = download.peer_adder();
        let finish = download.finish();
        tokio::pin!(finish);
        let mut tick = tokio::time::interval(ANNOUNCE_INTERVAL);
        tick.tick().await;
        let report = loop {
            tokio::select! {
                result = &mut finish => break result.map_err(|e| e.to_string())?,
                _ = tick.tick() => {
                    match self.client.announce(&self.announce(hex, false)).await {
                        Ok((_, peers)) => adder.add_peers(peer_infos(&peers)),
                        Err(e) => warn!(error = %e, "re-announcing failed; going on with the peers known"),
                    }
                }
            }
        };
        info!(
            bytes = report.bytes_received,
            banned = report.banned_peers.len(),
            "build fetched through the swarm"
        );
        self.note_banned(report.banned_peers.iter().map(|(peer, _)| peer.to_string()));
        if let Err(e) = self.client.announce(&self.announce(hex, true)).await {
            warn!(error = %e, "announcing the complete build failed");
        }
        Ok(report.blob)
    }

    /// The complete blob, fetching it first; `None` if the swarm cannot deliver it.
    async fn complete(&self, hex: &str) -> Option<CompleteBlob> {
        self.note(hex);
        let mut state = self.state.lock().await;
        if let Some(blob) = state.complete.get(hex) {
            self.hints.lock().expect("hints lock").remove(hex);
            return Some(blob.clone());
        }
        if state.failed.contains(hex) {
            return None;
        }
        let span = info_span!("swarm_fetch", blob = %&hex[..hex.len().min(12)], peer = %self.node.peer_id());
        match self.fetch(hex).instrument(span).await {
            Ok(blob) => {
                self.swarm_downloads.fetch_add(1, Ordering::Relaxed);
                state.complete.insert(hex.to_owned(), blob.clone());
                Some(blob)
            }
            Err(e) => {
                warn!(blob = hex, error = %e, "the swarm cannot deliver the build; reading it from the coordinators");
                self.fallbacks.fetch_add(1, Ordering::Relaxed);
                state.failed.insert(hex.to_owned());
                None
            }
        }
    }
}

impl SwarmPinger for SwarmSource {
    fn hello(&self) -> SwarmHello {
        SwarmHello {
            blob_addr: self.advertise.clone(),
            zone: self.zone.clone(),
            holding: self.known.lock().expect("known lock").iter().cloned().collect(),
        }
    }

    fn hint(&self, hint: SwarmHint) {
        let hex = hint.blake3.to_ascii_lowercase();
        if hex.parse::<BlobHash>().is_err() {
            warn!(blob = %hint.blake3, "ignoring a swarm hint with a malformed hash");
            return;
        }
        let prefetch = hint.prefetch;
        let fresh = !self.known.lock().expect("known lock").iter().any(|k| *k == hex);
        self.note(&hex);
        self.hints.lock().expect("hints lock").insert(hex.clone(), hint);
        if !prefetch || !fresh {
            return;
        }
        let Some(me) = self.me.upgrade() else { return };
        info!(blob = %&hex[..12], "prefetching the build this host waits to deploy");
        tokio::spawn(async move {
            if me.complete(&hex).await.is_some() {
                me.prefetches.fetch_add(1, Ordering::Relaxed);
            }
        });
    }
}

fn peer_infos(peers: &[SwarmPeer]) -> Vec<PeerInfo> {
    peers
        .iter()
        .filter_map(|p| {
            let addr = p.addr.parse().ok()?;
            let role = if p.origin { PeerRole::Origin } else { PeerRole::Peer };
            Some(PeerInfo { peer: PeerId(addr), role })
        })
        .collect()
}

impl BlobSource for SwarmSource {
    fn read_blob<'a>(
        &'a self,
        hash: &'a str,
        offset: u64,
        max_len: u32,
    ) -> futures::future::BoxFuture<'a, Result<(u64, Vec<u8>), String>> {
        Box::pin(async move {
            let Some(blob) = self.complete(hash).await else {
                return self
                    .client
                    .fetch_blob(hash, offset, max_len)
                    .await
                    .map_err(|e| e.to_string());
            };
            let total = blob.spec().size;
            let len = u64::from(max_len).min(total.saturating_sub(offset));
            let path = blob.data_path();
            let data = tokio::task::spawn_blocking(move || {
                let file = std::fs::File::open(&path)?;
                let mut buf = vec![0u8; usize::try_from(len).expect("bounded by max_len")];
                file.read_exact_at(&mut buf, offset)?;
                std::io::Result::Ok(buf)
            })
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| format!("reading the swarm store: {e}"))?;
            Ok((total, data))
        })
    }
}

/// Writes the counters to `path` every [`STATS_INTERVAL`] (temp file and rename).
async fn write_stats(source: Arc<SwarmSource>, path: PathBuf) {
    let tmp = path.with_extension("json.tmp");
    let mut tick = tokio::time::interval(STATS_INTERVAL);
    loop {
        tick.tick().await;
        let json = serde_json::to_vec_pretty(&source.stats()).expect("stats serialize");
        if std::fs::write(&tmp, json).and_then(|()| std::fs::rename(&tmp, &path)).is_err() {
            warn!(path = %path.display(), "cannot write the swarm stats");
        }
    }
}
