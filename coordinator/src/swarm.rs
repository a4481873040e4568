//! The coordinators as the blob swarm's origin and tracker.
//!
//! Origin: a node configured with `swarm_addr` runs a `tt-blob/1` [`BlobNode`] (mutual TLS
//! under the cluster CA, like Raft) over its own verified store (`<data_dir>/swarm`). A build
//! artifact enters that store when an agent first asks for it: the node imports its copy from
//! `<data_dir>/blobs/`, or first pulls the blob from a node that has one. The origin hands out
//! each piece once per repeat window (super-seeding), so the swarm, not the origin, carries the
//! copies.
//!
//! Tracker: the leader's memory (soft state, never Raft) of which hosts fetch or hold which
//! blobs, from [`SwarmAnnounce`]s. Its answer lists seeders before fetching hosts, the asking
//! host's zone before others (never only it), and the leader's own origin last. A new leader
//! starts empty; agents re-announce while they download, so it refills within seconds.
//!
//! Non-goals: eviction of the origin's store (it follows the builds' retention later), and
//! more than one origin per answer (the leader is enough: it pulls what it lacks).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use p2p_transfer::blob::{BlobHash, BlobStore as SwarmStore, StoreConfig};
use p2p_transfer::swarm::{BlobNode, NodeConfig, NodeStats, NodeTls};
use p2p_transfer::tls::{ClusterCa, NodeCert};
use proto::agent::{SwarmAnnounce, SwarmPeer};
use tracing::info;

use crate::api::App;
use crate::blobs::{BlobError, parse_hash};

/// Most bytes the origin's own store keeps (a second copy of the artifacts it serves).
pub const ORIGIN_STORE_MAX_BYTES: u64 = 64 << 30;
/// A tracker entry not refreshed for this long is dropped (agents re-announce every second or
/// so while downloading, and once when done).
pub const TRACKER_ENTRY_TTL: Duration = Duration::from_secs(600);
/// Most hosts in one tracker answer (the origin comes on top). Each host also hears from the
/// hosts that list it, so a swarm's links are about twice this.
pub const MAX_PEERS_PER_ANSWER: usize = 8;
/// Hosts remembered per blob; beyond it the stalest entry makes room.
pub const MAX_TRACKED_HOSTS_PER_BLOB: usize = 100_000;

/// Starting the origin failed.
#[derive(Debug, thiserror::Error)]
pub enum SwarmStartError {
    #[error("loading the node certificate from {dir}: {message}")]
    Tls { dir: std::path::PathBuf, message: String },
    #[error("opening the origin store: {0}")]
    Store(#[from] p2p_transfer::blob::OpenError),
    #[error("starting the tt-blob/1 endpoint: {0}")]
    Start(#[from] p2p_transfer::swarm::StartError),
}

/// One node's origin, and (on the leader) the tracker.
pub struct Swarm {
    node: BlobNode,
    /// What the tracker hands out for this origin.
    advertise: SocketAddr,
    tracker: Mutex<Tracker>,
    /// Serialises imports, so two agents asking at once import a blob once.
    imports: tokio::sync::Mutex<()>,
}

impl Swarm {
    /// Binds the origin at `addr` (a concrete IP: peers dial exactly this address, or
    /// `advertise` when given; port 0 picks one) over `<data_dir>/swarm`, presenting the node's
    /// cluster certificate.
    pub fn start(
        addr: SocketAddr,
        advertise: Option<SocketAddr>,
        tls_dir: &Path,
        data_dir: &Path,
        max_bytes: u64,
    ) -> Result<Swarm, SwarmStartError> {
        let tls_err = |e: &dyn std::fmt::Display| SwarmStartError::Tls {
            dir: tls_dir.to_path_buf(),
            message: e.to_string(),
        };
        let ca = ClusterCa::load_cert(tls_dir).map_err(|e| tls_err(&e))?;
        let cert = NodeCert::load(tls_dir).map_err(|e| tls_err(&e))?;
        let tls = NodeTls::cluster(&cert, &ca).map_err(|e| tls_err(&e))?;
        let store = SwarmStore::open(StoreConfig {
            dir: data_dir.join("swarm"),
            max_bytes,
            high_watermark_bytes: max_bytes,
            low_watermark_bytes: max_bytes / 2,
            min_free_bytes: 0,
            keep_newest: usize::MAX,
        })?;
        let node = BlobNode::start(NodeConfig::origin(addr), tls, store)?;
        let advertise = advertise.unwrap_or(node.peer_id().0);
        info!(swarm_addr = %node.peer_id(), %advertise, "blob origin started");
        Ok(Swarm {
            node,
            advertise,
            tracker: Mutex::new(Tracker::default()),
            imports: Default::default(),
        })
    }

    /// The address agents dial for this origin (`swarm_advertise`, else where it listens).
    pub fn addr(&self) -> SocketAddr {
        self.advertise
    }

    /// The origin's byte counters.
    pub fn stats(&self) -> NodeStats {
        self.node.stats()
    }

    /// Makes sure the origin serves blob `hex`; returns its size. Imports the node's copy, or
    /// pulls one from another node first.
    pub async fn ensure_origin(&self, app: &App, hex: &str) -> Result<u64, BlobError> {
        let hex = parse_hash(hex)?;
        let hash: BlobHash = hex.parse().map_err(|_| BlobError::BadHash(hex.clone()))?;
        if let Some(size) = self.node.store().size_of(&hash).filter(|_| self.held(&hash)) {
            return Ok(size);
        }
        let _guard = self.imports.lock().await;
        if let Some(size) = self.node.store().size_of(&hash).filter(|_| self.held(&hash)) {
            return Ok(size);
        }
        if app.blobs.size(&hex).is_none() {
            pull_from_peers(app, &hex).await?;
        }
        let path = app.blobs.path(&hex);
        let store = self.node.store().clone();
        let imported = tokio::task::spawn_blocking(move || store.import_file(&path))
            .await
            .map_err(|e| BlobError::Body(format!("import task: {e}")))?
            .map_err(|e| BlobError::Body(format!("importing into the origin store: {e}")))?;
        if imported.spec().hash != hash {
            // The coordinator store names files by their hash; a mismatch is disk corruption.
            self.node.store().discard(&imported.spec().hash);
            return Err(BlobError::HashMismatch {
                expected: hex,
                actual: imported.spec().hash.to_hex(),
            });
        }
        info!(blob = %hash.short(), size = imported.spec().size, "blob imported into the origin");
        Ok(imported.spec().size)
    }

    fn held(&self, hash: &BlobHash) -> bool {
        self.node.store().get(hash).is_some()
    }

    /// What the tracker knows at `now`: per blob, hosts holding it whole and hosts fetching
    /// it, most-held first, at most `limit` blobs.
    pub fn tracked(&self, now: Instant, limit: usize) -> Vec<TrackedBlob> {
        self.tracker.lock().expect("tracker lock").summary(now, limit)
    }

    /// Records the announce and answers the peers for it: at most [`MAX_PEERS_PER_ANSWER`]
    /// hosts, then this node's origin.
    pub fn announce(&self, announce: &SwarmAnnounce, now: Instant) -> Vec<SwarmPeer> {
        let mut peers =
            self.tracker.lock().expect("tracker lock").announce(announce, now, rand::random);
        peers.push(SwarmPeer { addr: self.addr().to_string(), origin: true });
        peers
    }
}

/// Pulls blob `hex` into this node's coordinator store from the first other node that has it.
async fn pull_from_peers(app: &App, hex: &str) -> Result<(), BlobError> {
    let peers = crate::blob_copies::peer_addrs(app);
    let addrs: Vec<&str> = peers.iter().map(|(_, addr)| addr.as_str()).collect();
    crate::blob_copies::pull_from(app, hex, &addrs, "for the origin").await
}

/// Leader memory: per blob, the hosts that announced it.
#[derive(Default)]
struct Tracker {
    blobs: HashMap<String, HashMap<String, Entry>>,
}

/// One blob as the tracker sees it (for the dashboard's cluster page).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrackedBlob {
    pub blake3: String,
    /// Hosts that announced the whole blob.
    pub seeders: usize,
    /// Hosts that announced a partial download.
    pub fetching: usize,
}

struct Entry {
    complete: bool,
    zone: Option<String>,
    seen: Instant,
}

impl Tracker {
    fn summary(&self, now: Instant, limit: usize) -> Vec<TrackedBlob> {
        let mut out: Vec<TrackedBlob> = self
            .blobs
            .iter()
            .map(|(blake3, hosts)| {
                let live = hosts
                    .values()
                    .filter(|e| now.saturating_duration_since(e.seen) < TRACKER_ENTRY_TTL);
                let (seeders, fetching) =
                    live.fold((0, 0), |(s, f), e| if e.complete { (s + 1, f) } else { (s, f + 1) });
                TrackedBlob { blake3: blake3.clone(), seeders, fetching }
            })
            .filter(|b| b.seeders + b.fetching > 0)
            .collect();
        out.sort_by(|a, b| {
            (b.seeders, b.fetching, &a.blake3).cmp(&(a.seeders, a.fetching, &b.blake3))
        });
        out.truncate(limit);
        out
    }

    /// Records `announce` and returns up to [`MAX_PEERS_PER_ANSWER`] other hosts for its blob:
    /// seeders first, then the asker's zone, ties broken by `random` (so that answers spread
    /// the load rather than all naming the first hosts).
    fn announce(
        &mut self,
        announce: &SwarmAnnounce,
        now: Instant,
        mut random: impl FnMut() -> u64,
    ) -> Vec<SwarmPeer> {
        let hosts = self.blobs.entry(announce.blake3.clone()).or_default();
        hosts.retain(|_, e| now.saturating_duration_since(e.seen) < TRACKER_ENTRY_TTL);
        if hosts.len() >= MAX_TRACKED_HOSTS_PER_BLOB
            && !hosts.contains_key(&announce.blob_addr)
            && let Some(stalest) = hosts.iter().min_by_key(|(_, e)| e.seen).map(|(a, _)| a.clone())
        {
            hosts.remove(&stalest);
        }
        hosts.insert(
            announce.blob_addr.clone(),
            Entry { complete: announce.complete, zone: announce.zone.clone(), seen: now },
        );
        let mut ranked: Vec<(bool, bool, u64, &String)> = hosts
            .iter()
            .filter(|(addr, _)| **addr != announce.blob_addr)
            .map(|(addr, e)| {
                let other_zone = announce.zone.is_some() && e.zone != announce.zone;
                (!e.complete, other_zone, random(), addr)
            })
            .collect();
        ranked.sort();
        ranked
            .into_iter()
            .take(MAX_PEERS_PER_ANSWER)
            .map(|(_, _, _, addr)| SwarmPeer { addr: addr.clone(), origin: false })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn announce(addr: &str, complete: bool, zone: &str) -> SwarmAnnounce {
        SwarmAnnounce {
            blob_addr: addr.into(),
            blake3: "b".repeat(64),
            complete,
            zone: Some(zone.into()),
        }
    }

    #[test]
    fn seeders_come_first_then_the_same_zone_and_never_the_asker() {
        let mut t = Tracker::default();
        let now = Instant::now();
        let mut seq = 0u64;
        let mut next = || {
            seq += 1;
            seq
        };
        t.announce(&announce("a:1", false, "z1"), now, &mut next);
        t.announce(&announce("b:1", true, "z2"), now, &mut next);
        t.announce(&announce("c:1", false, "z2"), now, &mut next);
        let peers = t.announce(&announce("d:1", false, "z2"), now, &mut next);
        let addrs: Vec<&str> = peers.iter().map(|p| p.addr.as_str()).collect();
        // The seeder (other zone or not), then the same zone, then the rest: never only the
        // asker's zone.
        assert_eq!(addrs, ["b:1", "c:1", "a:1"]);
        assert!(peers.iter().all(|p| !p.origin));
    }

    #[test]
    fn answers_are_bounded_and_stale_hosts_expire() {
        let mut t = Tracker::default();
        let start = Instant::now();
        for i in 0..3 * MAX_PEERS_PER_ANSWER {
            t.announce(&announce(&format!("h{i}:1"), false, "z"), start, rand::random);
        }
        let peers = t.announce(&announce("new:1", false, "z"), start, rand::random);
        assert_eq!(peers.len(), MAX_PEERS_PER_ANSWER);
        let later = start + TRACKER_ENTRY_TTL;
        let peers = t.announce(&announce("late:1", false, "z"), later, rand::random);
        assert!(peers.is_empty(), "{peers:?}");
    }

    #[test]
    fn the_summary_counts_live_seeders_and_fetchers_most_held_first() {
        let mut t = Tracker::default();
        let now = Instant::now();
        let other = |addr: &str, complete| SwarmAnnounce {
            blake3: "c".repeat(64),
            ..announce(addr, complete, "z")
        };
        t.announce(&announce("a:1", true, "z"), now, rand::random);
        t.announce(&announce("b:1", true, "z"), now, rand::random);
        t.announce(&announce("c:1", false, "z"), now, rand::random);
        t.announce(&other("a:1", false), now, rand::random);
        let s = t.summary(now, 10);
        assert_eq!(
            s,
            [
                TrackedBlob { blake3: "b".repeat(64), seeders: 2, fetching: 1 },
                TrackedBlob { blake3: "c".repeat(64), seeders: 0, fetching: 1 },
            ]
        );
        assert_eq!(t.summary(now, 1).len(), 1, "bounded");
        assert!(t.summary(now + TRACKER_ENTRY_TTL, 10).is_empty(), "stale entries do not count");
    }
}
