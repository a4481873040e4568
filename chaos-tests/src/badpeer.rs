//! Bad peers for the blob swarm: `chaos bad-peer`, a separate process that runs a `tt-blob/1`
//! node which misbehaves on purpose and registers with the tracker the way an agent does, so
//! that honest agents are really offered it for the run's builds.
//!
//! The misbehaviour is the swarm's own fault hook ([`p2p_transfer::swarm::ServeFault`], the one
//! `tt bench swarm` uses): flip a byte of every piece sent, advertise every piece and answer
//! with junk, or answer piece `n + 1` for piece `n`. A crawling peer is honest but uploads at a
//! few KiB/s (the node's own upload cap). The peer holds the builds it serves (it imports the
//! lab's archives, which are the blobs byte for byte) except the liar, which holds nothing, and
//! announces every build as complete every [`ANNOUNCE_EVERY`]: the tracker lists seeders first.
//!
//! Its counters go to a JSON file ([`BadPeerStats`]) every [`STATS_EVERY`], so the lab can tell
//! whether anyone asked it for anything: a fault nobody hit did not fire.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use p2p_transfer::blob::{BlobStore, StoreConfig};
use p2p_transfer::swarm::{BlobNode, NodeConfig, NodeTls, ServeFault};
use p2p_transfer::tls::{ClusterCa, NodeCert};
use proto::agent::SwarmAnnounce;
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

/// How often a bad peer announces its builds to the tracker (a new leader starts empty).
pub const ANNOUNCE_EVERY: Duration = Duration::from_secs(1);
/// How often its counters are written.
pub const STATS_EVERY: Duration = Duration::from_millis(200);
/// A crawling peer's upload cap unless the scenario says otherwise, bytes per second: a
/// 256 KiB piece takes 16 s.
pub const DEFAULT_CRAWL_BYTES_PER_S: u64 = 16 * 1024;
/// Its store's quota (the lab's builds, a few MiB each).
pub const BAD_PEER_STORE_MAX_BYTES: u64 = 4 << 30;

/// How a bad peer misbehaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum BadPeerMode {
    /// Serves the build with one byte flipped in every piece.
    FlipByte,
    /// Holds nothing, advertises every piece and answers with junk.
    LieAboutPieces,
    /// Answers a request for piece `n` with the (valid) piece `n + 1`.
    WrongPiece,
    /// Serves the build correctly, very slowly.
    Crawl,
}

impl BadPeerMode {
    pub fn label(self) -> &'static str {
        match self {
            BadPeerMode::FlipByte => "flip-byte",
            BadPeerMode::LieAboutPieces => "lie-about-pieces",
            BadPeerMode::WrongPiece => "wrong-piece",
            BadPeerMode::Crawl => "crawl",
        }
    }

    /// Whether the peer sends data that fails verification (honest agents must ban it).
    pub fn corrupts(self) -> bool {
        self != BadPeerMode::Crawl
    }

    fn serve_fault(self) -> Option<ServeFault> {
        match self {
            BadPeerMode::FlipByte => Some(ServeFault::FlipByte),
            BadPeerMode::LieAboutPieces => Some(ServeFault::LieAboutPieces),
            BadPeerMode::WrongPiece => Some(ServeFault::WrongPiece),
            BadPeerMode::Crawl => None,
        }
    }
}

/// `chaos bad-peer`'s arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    #[arg(long, value_enum)]
    pub mode: BadPeerMode,
    /// The `tt-blob/1` address to bind.
    #[arg(long)]
    pub listen: SocketAddr,
    /// The address announced to the tracker (the proxy in front of `--listen`).
    #[arg(long)]
    pub advertise: SocketAddr,
    /// `node.pem`, `node.key` and `ca.pem` from the cluster CA.
    #[arg(long)]
    pub tls_dir: PathBuf,
    /// The store's directory.
    #[arg(long)]
    pub store: PathBuf,
    /// Coordinator agent endpoints (`tt-agent/1`), to announce to.
    #[arg(long = "coordinator", required = true)]
    pub coordinators: Vec<SocketAddr>,
    /// Build archives to serve and announce (their bytes are the blobs).
    #[arg(long = "blob", required = true)]
    pub blobs: Vec<PathBuf>,
    /// Upload cap, bytes per second (a crawling peer's default is
    /// [`DEFAULT_CRAWL_BYTES_PER_S`]).
    #[arg(long)]
    pub upload_bytes_per_s: Option<u64>,
    /// Where the counters go.
    #[arg(long)]
    pub stats: PathBuf,
}

/// What a bad peer did, as its stats file says.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BadPeerStats {
    /// Piece responses sent (for a corrupting peer, every one of them bad).
    pub pieces_served: u64,
    pub uploaded_bytes: u64,
    /// Uploads its cap held back (a crawling peer that was asked for something).
    pub upload_throttle_waits: u64,
    /// Announces the tracker accepted, and the ones that failed.
    pub announces: u64,
    pub announce_failures: u64,
}

/// Runs a bad peer until killed.
pub fn main(args: Args) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .context("starting the runtime")?;
    rt.block_on(serve(args))
}

async fn serve(args: Args) -> anyhow::Result<()> {
    p2p_transfer::tls::install_crypto_provider();
    let ca = ClusterCa::load_cert(&args.tls_dir).context("loading the CA certificate")?;
    let cert = NodeCert::load(&args.tls_dir).context("loading the node certificate")?;
    let tls = NodeTls::cluster(&cert, &ca).context("the node's TLS configs")?;
    let store = BlobStore::open(StoreConfig {
        dir: args.store.clone(),
        max_bytes: BAD_PEER_STORE_MAX_BYTES,
        high_watermark_bytes: BAD_PEER_STORE_MAX_BYTES,
        low_watermark_bytes: BAD_PEER_STORE_MAX_BYTES,
        min_free_bytes: 0,
        keep_newest: usize::MAX,
    })
    .context("opening the store")?;
    let mut hashes = Vec::new();
    for path in &args.blobs {
        let hash = if args.mode == BadPeerMode::LieAboutPieces {
            let bytes =
                std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
            blake3::hash(&bytes).to_hex().to_string()
        } else {
            let blob =
                store.import_file(path).with_context(|| format!("importing {}", path.display()))?;
            blob.spec().hash.to_hex()
        };
        hashes.push(hash);
    }
    let upload = match args.mode {
        BadPeerMode::Crawl => Some(args.upload_bytes_per_s.unwrap_or(DEFAULT_CRAWL_BYTES_PER_S)),
        _ => args.upload_bytes_per_s,
    };
    let node = BlobNode::start(
        NodeConfig {
            upload_bytes_per_sec: upload,
            fault: args.mode.serve_fault(),
            ..NodeConfig::recommended(args.listen)
        },
        tls,
        store,
    )
    .context("starting the tt-blob/1 node")?;
    info!(mode = args.mode.label(), listen = %args.listen, advertise = %args.advertise, blobs = hashes.len(), "bad peer up");
    let client =
        agent::coordinator_client::CoordinatorClient::new(&ca, args.coordinators.clone(), None)
            .context("the tt-agent/1 client")?;
    let stats = Arc::new(std::sync::Mutex::new(BadPeerStats::default()));
    tokio::spawn(write_stats(node.clone(), stats.clone(), args.stats.clone()));
    let mut tick = tokio::time::interval(ANNOUNCE_EVERY);
    loop {
        tick.tick().await;
        for hash in &hashes {
            let announce = SwarmAnnounce {
                blob_addr: args.advertise.to_string(),
                blake3: hash.clone(),
                complete: true,
                zone: None,
            };
            let ok = match client.announce(&announce).await {
                Ok(_) => true,
                Err(e) => {
                    warn!(blob = %&hash[..12], error = %e, "announcing failed");
                    false
                }
            };
            let mut s = stats.lock().expect("stats lock");
            if ok {
                s.announces += 1;
            } else {
                s.announce_failures += 1;
            }
        }
    }
}

async fn write_stats(node: BlobNode, stats: Arc<std::sync::Mutex<BadPeerStats>>, path: PathBuf) {
    let tmp = path.with_extension("json.tmp");
    let mut tick = tokio::time::interval(STATS_EVERY);
    loop {
        tick.tick().await;
        let n = node.stats();
        let snapshot = {
            let mut s = stats.lock().expect("stats lock");
            s.pieces_served = n.pieces_served;
            s.uploaded_bytes = n.uploaded_bytes;
            s.upload_throttle_waits = n.upload_throttle.waits;
            s.clone()
        };
        let json = serde_json::to_vec_pretty(&snapshot).expect("stats serialize");
        if std::fs::write(&tmp, json).and_then(|()| std::fs::rename(&tmp, &path)).is_err() {
            warn!(path = %path.display(), "cannot write the bad peer's stats");
        }
    }
}

/// A bad-peer process the lab started.
pub struct BadPeerProcess {
    pub mode: BadPeerMode,
    /// What the tracker hands out for it (its proxy).
    pub advertise: SocketAddr,
    pub stats_file: PathBuf,
    pub log: PathBuf,
    child: Option<Child>,
}

impl BadPeerProcess {
    /// Starts `chaos bad-peer` (binary `bin`) with `args`, logging to `<dir>/bad-peer.log`.
    pub fn start(bin: &Path, dir: &Path, args: &Args) -> anyhow::Result<BadPeerProcess> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let log = dir.join("bad-peer.log");
        let out =
            std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let mut cmd = Command::new(bin);
        cmd.arg("bad-peer")
            .args(["--mode", args.mode.label()])
            .arg("--listen")
            .arg(args.listen.to_string())
            .arg("--advertise")
            .arg(args.advertise.to_string())
            .arg("--tls-dir")
            .arg(&args.tls_dir)
            .arg("--store")
            .arg(&args.store)
            .arg("--stats")
            .arg(&args.stats);
        for c in &args.coordinators {
            cmd.arg("--coordinator").arg(c.to_string());
        }
        for b in &args.blobs {
            cmd.arg("--blob").arg(b);
        }
        if let Some(rate) = args.upload_bytes_per_s {
            cmd.arg("--upload-bytes-per-s").arg(rate.to_string());
        }
        let child = cmd
            .env("CHAOS_LOG", "info")
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .with_context(|| format!("starting {} bad-peer", bin.display()))?;
        Ok(BadPeerProcess {
            mode: args.mode,
            advertise: args.advertise,
            stats_file: args.stats.clone(),
            log,
            child: Some(child),
        })
    }

    /// What its stats file says now (nothing yet: all zero).
    pub fn stats(&self) -> BadPeerStats {
        std::fs::read(&self.stats_file)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }

    /// `kill -9` (its last stats file stays).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }
}

impl Drop for BadPeerProcess {
    fn drop(&mut self) {
        self.kill();
    }
}
