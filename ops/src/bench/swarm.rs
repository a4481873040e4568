//! Swarm benchmark (`tt bench swarm`): one build from an origin to N simulated hosts on
//! loopback; ours against origin-only and BitTorrent under the same caps.
//!
//! Every host is its own [`BlobNode`]: its own QUIC endpoint, blob store directory and
//! upload/download token buckets, all in this process. The origin is one more node that holds
//! the build, with the same caps as the hosts. Hosts learn their peers the way the tracker
//! hands them out: a random sample of other hosts, the origin last. Every download starts at
//! once (the spread is reported; the issue asks for under 100 ms), and a host's completion time
//! runs from the first start to the moment its blob is verified whole and renamed into place.
//!
//! Baselines, in the same invocation and under the same caps:
//! - origin-only ([`System::OriginOnly`]): each host downloads from the origin alone, over the
//!   same protocol, as Teletraan's agents download from S3/HTTP. The origin serves everyone at
//!   once. It would need N × B/W (800 s at 50 hosts), so it is stopped after
//!   [`ORIGIN_ONLY_BUDGET`] and each unfinished host's time is projected from its progress.
//! - BitTorrent ([`super::bittorrent`]): Debian's aria2 (seeder and leechers), mktorrent and
//!   opentracker.
//!
//! Stores live on tmpfs by default, so that one machine's disk does not stand in for fifty
//! hosts' disks (every finished blob is fsynced).
//!
//! Non-goals: emulated RTT or loss (loopback only), more than one origin.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use p2p_transfer::blob::{BlobStore, StoreConfig};
use p2p_transfer::swarm::{
    BlobNode, DownloadError, DownloadOptions, DownloadReport, NodeConfig, NodeTls, PeerId,
    PeerInfo, PeerRole, ServeFault,
};
use p2p_transfer::tls::{self, ClusterCa};
use serde::Serialize;
use tracing::{Instrument, info_span};

use super::{bittorrent, percentile};

pub const MIB: u64 = 1024 * 1024;
/// Other hosts each host is told about (the tracker's peer list); the origin comes on top.
/// Each host ends up with about twice as many links, since the hosts that list it dial it
/// too. Measured: 6 finishes as fast as 12 and spends less CPU on handshakes.
pub const PEERS_PER_HOST: usize = 6;
/// The origin-only baseline is stopped after this long; unfinished hosts are projected.
pub const ORIGIN_ONLY_BUDGET: Duration = Duration::from_secs(30);
/// Slow hosts upload at the cap divided by this.
pub const SLOW_DIVISOR: u64 = 20;
/// A throttled run that has not finished after this many line-rate bounds has failed.
pub const RUN_LIMIT_BOUNDS: u32 = 8;
/// An unthrottled run that has not finished after this long has failed.
pub const UNTHROTTLED_RUN_LIMIT: Duration = Duration::from_secs(60);
/// Killed hosts die at a random moment in this range, as fractions of the line-rate bound.
const KILL_WINDOW: (f64, f64) = (0.2, 0.8);
/// How often the fleet's progress is sampled for [`RunReport::timeline`].
pub const TIMELINE_INTERVAL: Duration = Duration::from_millis(500);
/// The issue's limit on the spread of download starts.
pub const START_SPREAD_TARGET: Duration = Duration::from_millis(100);
/// Store quota beyond the build, bytes.
const STORE_HEADROOM_BYTES: u64 = 64 * MIB;
/// Bytes read per step when a host's blob is compared with the build.
const COMPARE_BLOCK_BYTES: usize = 4 * MIB as usize;
/// Chunk in which [`prefault_memory`] writes.
const PREFAULT_CHUNK_BYTES: usize = MIB as usize;
/// Share of the machine's available memory [`prefault_memory`] may touch at most.
const PREFAULT_MAX_SHARE_OF_AVAILABLE: u64 = 2;

/// One benchmark scenario.
#[derive(Debug, Clone, Serialize)]
pub struct RunSpec {
    pub name: String,
    pub hosts: usize,
    pub build_bytes: u64,
    /// Upload and download cap of every host and of the origin, bytes/s; `None` = unthrottled.
    pub rate_bytes_per_sec: Option<u64>,
    pub faults: FaultMix,
    /// Also run origin-only and BitTorrent.
    pub baselines: bool,
    /// The sender is an ordinary seeding host, not an origin (the pair run).
    pub seeder_not_origin: bool,
    /// Hosts relay pieces while receiving them (`NodeConfig::cut_through`).
    pub cut_through: bool,
}

impl RunSpec {
    /// The line-rate bound B/W in seconds, for throttled runs.
    pub fn bound_s(&self) -> Option<f64> {
        self.rate_bytes_per_sec.map(|rate| self.build_bytes as f64 / rate as f64)
    }

    fn limit(&self) -> Duration {
        match self.bound_s() {
            Some(bound) => Duration::from_secs_f64(bound * f64::from(RUN_LIMIT_BOUNDS)),
            None => UNTHROTTLED_RUN_LIMIT,
        }
    }
}

/// Percentages of misbehaving hosts.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct FaultMix {
    /// Serve corrupt data (flipped bytes, lying bitfields, wrong pieces, in turn).
    pub corrupt_pct: usize,
    /// Upload at 1/[`SLOW_DIVISOR`] of the cap.
    pub slow_pct: usize,
    /// Killed at a random moment mid-transfer.
    pub killed_pct: usize,
}

/// The scenarios the issue names, by name: `n50`, `n100`, `faults`, `small`, `pair`.
pub fn standard_run(name: &str) -> Option<RunSpec> {
    let run = |hosts, build_bytes, rate: Option<u64>| RunSpec {
        name: name.to_owned(),
        hosts,
        build_bytes,
        rate_bytes_per_sec: rate,
        faults: FaultMix::default(),
        baselines: true,
        seeder_not_origin: false,
        cut_through: true,
    };
    Some(match name {
        "n50" => run(50, 64 * MIB, Some(4 * MIB)),
        "n100" => run(100, 64 * MIB, Some(2 * MIB)),
        "faults" => RunSpec {
            faults: FaultMix { corrupt_pct: 10, slow_pct: 10, killed_pct: 10 },
            baselines: false,
            ..run(50, 64 * MIB, Some(4 * MIB))
        },
        "small" => run(50, MIB, None),
        "pair" => RunSpec { baselines: false, seeder_not_origin: true, ..run(1, 256 * MIB, None) },
        _ => return None,
    })
}

/// Names accepted by [`standard_run`], in the order `tt bench swarm` runs them.
pub const STANDARD_RUNS: [&str; 5] = ["n50", "n100", "faults", "small", "pair"];

/// Which distribution a fleet run measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum System {
    /// The swarm: peers first, the origin last.
    Ours,
    /// Every host from the origin alone.
    OriginOnly,
}

/// Figures of one system in one run.
#[derive(Debug, Clone, Serialize)]
pub struct RunReport {
    pub system: String,
    pub hosts: usize,
    /// Hosts whose times make the percentiles (honest hosts that were not killed).
    pub measured_hosts: usize,
    pub build_bytes: u64,
    pub rate_bytes_per_sec: Option<u64>,
    /// Line-rate bound B/W, seconds.
    pub bound_s: Option<f64>,
    /// From the first download start to the last.
    pub start_spread_ms: f64,
    pub p50_s: f64,
    pub p99_s: f64,
    pub max_s: f64,
    pub p50_x_bound: Option<f64>,
    pub p99_x_bound: Option<f64>,
    pub max_x_bound: Option<f64>,
    /// Build bytes per second received by the slowest host (unthrottled runs).
    pub min_host_mib_per_s: f64,
    /// Bytes the origin sent (data and proofs, including cancelled duplicates).
    pub origin_egress_bytes: u64,
    pub origin_copies: f64,
    pub bytes_from_peers: u64,
    pub bytes_from_origin: u64,
    /// Some completion times are projections (see [`ORIGIN_ONLY_BUDGET`]).
    pub projected: bool,
    /// Hosts whose final bytes equal the build.
    pub verified_hosts: usize,
    /// CPU used during the run (this process, or the baseline's processes), in cores.
    pub cpu_cores: f64,
    /// CPU seconds per GiB the hosts received.
    pub cpu_s_per_gib: f64,
    /// Cores the rest of the machine kept busy meanwhile, on average (the machine is shared;
    /// with two cores, a busy neighbour slows a CPU-bound run).
    pub other_load_cores: f64,
    /// Requests the origin answered "seeded", and those it served inside the repeat window
    /// because the piece was stranded (`p2p_transfer::swarm::repeats`).
    pub origin_declined: u64,
    pub origin_rescued: u64,
    /// Pieces hosts served while still receiving them (cut-through), and relayed responses
    /// reset because the relaying host's own transfer failed.
    pub pieces_relayed: u64,
    pub relays_reset: u64,
    pub faults: Option<FaultReport>,
    /// Progress every [`TIMELINE_INTERVAL`] (ours and origin-only).
    pub timeline: Vec<TimelinePoint>,
    pub note: Option<String>,
}

/// The fleet's progress at one moment.
#[derive(Debug, Clone, Default, Serialize)]
pub struct TimelinePoint {
    pub t_s: f64,
    /// Bytes the origin had sent, in copies of the build.
    pub origin_copies: f64,
    /// Distinct pieces held by at least one host, as a fraction of the build.
    pub injected: f64,
    /// Fraction of the build held, averaged over hosts and at its lowest.
    pub mean_held: f64,
    pub min_held: f64,
    pub hosts_done: usize,
    /// Bytes the hosts had sent to each other, in copies of the build.
    pub peer_copies: f64,
    /// Cores this process used since the previous point, and the whole machine's busy cores.
    pub process_cores: f64,
    pub machine_cores: f64,
}

/// What bad peers achieved.
#[derive(Debug, Clone, Default, Serialize)]
pub struct FaultReport {
    pub corrupt_hosts: usize,
    pub slow_hosts: usize,
    pub killed_hosts: usize,
    pub honest_survivors: usize,
    /// Bytes on honest hosts that differ from the build. Must be 0.
    pub bad_bytes_staged: u64,
    /// Honest hosts whose download failed.
    pub honest_failures: usize,
    /// (honest host, corrupt peer) pairs where the peer was banned.
    pub corrupt_bans: usize,
    /// Most bans of one corrupt peer by one host (1: banned after its first bad response).
    pub max_bans_per_peer: u32,
    /// Honest peers banned by honest hosts. Must be 0.
    pub honest_peers_banned: usize,
    /// Responses that failed verification on honest hosts, in total and at most per host.
    pub bad_responses: u64,
    pub max_bad_responses_per_host: u64,
}

/// One scenario with ours and its baselines.
#[derive(Debug, Clone, Serialize)]
pub struct ScenarioReport {
    pub spec: RunSpec,
    pub ours: RunReport,
    pub origin_only: Option<RunReport>,
    pub bittorrent: Option<RunReport>,
    /// Why a baseline did not run.
    pub skipped: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    Normal,
    Corrupt(ServeFault),
    Slow,
    Killed { after: Duration },
}

impl Kind {
    fn is_measured(self) -> bool {
        matches!(self, Kind::Normal | Kind::Slow)
    }
}

struct Host {
    node: BlobNode,
    kind: Kind,
}

struct Outcome {
    started: Instant,
    done: Instant,
    result: Result<DownloadReport, DownloadError>,
}

/// A deterministic xorshift64 stream for peer sampling and fault placement.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Deterministic build bytes.
pub fn build_bytes(len: u64, seed: u64) -> Vec<u8> {
    let mut out = vec![0; usize::try_from(len).expect("build fits memory")];
    blake3::Hasher::new().update(&seed.to_le_bytes()).finalize_xof().fill(&mut out);
    out
}

/// The bench's node TLS: one cluster CA, one certificate for 127.0.0.1 shared by every node.
pub fn bench_tls() -> anyhow::Result<NodeTls> {
    tls::install_crypto_provider();
    let ca = ClusterCa::generate("tt bench swarm CA")?;
    let cert = tls::issue_node_cert(&ca, "bench-node", &["127.0.0.1".to_owned()])?;
    Ok(NodeTls::cluster(&cert, ca.cert_der())?)
}

/// Where stores live unless `--dir` says otherwise: tmpfs if the machine has one.
pub fn default_dir() -> PathBuf {
    let base = if Path::new("/dev/shm").is_dir() { "/dev/shm" } else { "/var/tmp" };
    PathBuf::from(format!("{base}/tt-bench-swarm-{}", std::process::id()))
}

/// Writes `bytes` into a file under `dir` and deletes it, before a measured run.
///
/// Every run writes each host's copy of the build into fresh page-cache pages. On a VM that
/// hands idle guest memory back to the host, the first touch of such a page costs a fault in
/// the hypervisor: measured here, `dd` of 4 GiB into `/dev/shm` ran at 492 MB/s the first time
/// and 1.3 GB/s right after, and a run's CPU per GiB fell by a third. The simulated fleet packs
/// fifty hosts' writes into one machine's memory, so that cost is the simulation's, not the
/// protocol's; each system (ours and both baselines) gets the same warm-up. Touches at most
/// half of the available memory. Returns the bytes written and the seconds it took.
pub fn prefault_memory(dir: &Path, bytes: u64) -> std::io::Result<(u64, f64)> {
    use std::io::Write as _;
    let available = meminfo_available_bytes().unwrap_or(0);
    let bytes = bytes.min(available / PREFAULT_MAX_SHARE_OF_AVAILABLE);
    let path = dir.join("prefault");
    let started = Instant::now();
    let chunk = vec![0x5a_u8; PREFAULT_CHUNK_BYTES];
    let result = (|| -> std::io::Result<u64> {
        let mut file = std::fs::File::create(&path)?;
        let mut written = 0;
        while written < bytes {
            let n = chunk.len().min((bytes - written) as usize);
            file.write_all(&chunk[..n])?;
            written += n as u64;
        }
        Ok(written)
    })();
    let _ = std::fs::remove_file(&path);
    Ok((result?, started.elapsed().as_secs_f64()))
}

/// `MemAvailable` of `/proc/meminfo`, in bytes.
fn meminfo_available_bytes() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Warms the memory a run of `spec` writes (every host's copy and the origin's), and says so.
fn prefault_for(spec: &RunSpec, dir: &Path) -> anyhow::Result<()> {
    let bytes = (spec.hosts as u64 + 1) * spec.build_bytes;
    let (written, secs) = prefault_memory(dir, bytes)
        .with_context(|| format!("touching memory under {}", dir.display()))?;
    tracing::debug!(written, secs, "memory touched before the run");
    Ok(())
}

fn start_node(
    tls: &NodeTls,
    dir: PathBuf,
    build_bytes: u64,
    configure: impl FnOnce(&mut NodeConfig),
) -> anyhow::Result<BlobNode> {
    let max_bytes = 2 * build_bytes + STORE_HEADROOM_BYTES;
    let store = BlobStore::open(StoreConfig {
        dir,
        max_bytes,
        high_watermark_bytes: max_bytes,
        low_watermark_bytes: max_bytes,
        min_free_bytes: 0,
        keep_newest: 2,
    })?;
    let mut config = NodeConfig::recommended(([127, 0, 0, 1], 0).into());
    configure(&mut config);
    Ok(BlobNode::start(config, tls.clone(), store)?)
}

/// Which host is what: the first hosts corrupt, then slow, then killed (peer lists are random,
/// so position carries no advantage).
fn kinds(spec: &RunSpec, rng: &mut Rng) -> Vec<Kind> {
    let count = |pct: usize| spec.hosts * pct / 100;
    let faults = [ServeFault::FlipByte, ServeFault::LieAboutPieces, ServeFault::WrongPiece];
    let bound = spec.bound_s().unwrap_or(1.0);
    let mut kinds = Vec::with_capacity(spec.hosts);
    kinds.extend((0..count(spec.faults.corrupt_pct)).map(|i| Kind::Corrupt(faults[i % 3])));
    kinds.extend((0..count(spec.faults.slow_pct)).map(|_| Kind::Slow));
    kinds.extend((0..count(spec.faults.killed_pct)).map(|_| {
        let fraction = KILL_WINDOW.0 + (KILL_WINDOW.1 - KILL_WINDOW.0) * rng.unit();
        Kind::Killed { after: Duration::from_secs_f64(bound * fraction) }
    }));
    kinds.resize(spec.hosts, Kind::Normal);
    kinds
}

/// Runs one fleet of `system` and measures it.
pub async fn run_fleet(
    spec: &RunSpec,
    system: System,
    data: &Arc<Vec<u8>>,
    dir: &Path,
    tls: &NodeTls,
    seed: u64,
) -> anyhow::Result<RunReport> {
    let span = info_span!("swarm_bench", run = %spec.name, system = ?system);
    run_fleet_inner(spec, system, data, dir, tls, seed).instrument(span).await
}

async fn run_fleet_inner(
    spec: &RunSpec,
    system: System,
    data: &Arc<Vec<u8>>,
    dir: &Path,
    tls: &NodeTls,
    seed: u64,
) -> anyhow::Result<RunReport> {
    let rate = spec.rate_bytes_per_sec;
    let build = spec.build_bytes;
    let origin_role = if spec.seeder_not_origin || system == System::OriginOnly {
        PeerRole::Peer
    } else {
        PeerRole::Origin
    };
    let origin = start_node(tls, dir.join("origin"), build, |c| {
        c.upload_bytes_per_sec = rate;
        if origin_role == PeerRole::Origin {
            c.origin_repeat_window = NodeConfig::origin(c.listen).origin_repeat_window;
        } else if system == System::OriginOnly {
            // Like an HTTP server: everyone at once, shares set by the rate limit.
            c.max_concurrent_uploads =
                spec.hosts * p2p_transfer::swarm::scheduler::PIPELINE_MAX as usize;
            c.max_queued_uploads = p2p_transfer::swarm::UPLOAD_QUEUE_MAX;
        }
    })?;
    let blob = {
        let (store, data) = (origin.store().clone(), data.clone());
        tokio::task::spawn_blocking(move || store.import_bytes(&data)).await??.spec()
    };

    let mut rng = Rng(seed | 1);
    let kinds = kinds(spec, &mut rng);
    let mut hosts = Vec::with_capacity(spec.hosts);
    for (i, kind) in kinds.iter().enumerate() {
        let node = start_node(tls, dir.join(format!("host-{i:03}")), build, |c| {
            c.upload_bytes_per_sec = match kind {
                Kind::Slow => rate.map(|r| r / SLOW_DIVISOR),
                _ => rate,
            };
            c.download_bytes_per_sec = rate;
            c.cut_through = spec.cut_through;
            if let Kind::Corrupt(fault) = kind {
                c.fault = Some(*fault);
            }
        })?;
        hosts.push(Host { node, kind: *kind });
    }
    let peer_lists: Vec<Vec<PeerInfo>> = (0..hosts.len())
        .map(|i| {
            let mut peers = match system {
                System::Ours => sample_peers(&hosts, i, &mut rng),
                System::OriginOnly => Vec::new(),
            };
            peers.push(PeerInfo { peer: origin.peer_id(), role: origin_role });
            peers
        })
        .collect();

    let barrier = Arc::new(tokio::sync::Barrier::new(hosts.len() + 1));
    let mut tasks = Vec::with_capacity(hosts.len());
    for (host, peers) in hosts.iter().zip(peer_lists) {
        let (node, barrier) = (host.node.clone(), barrier.clone());
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            let started = Instant::now();
            let options = DownloadOptions::recommended();
            let result = match node.download(blob, peers, options).await {
                Ok(download) => download.finish().await,
                Err(error) => Err(error),
            };
            Outcome { started, done: Instant::now(), result }
        }));
    }
    let cpu_before = process_cpu_secs();
    let machine_before = machine_busy_secs();
    let wall = Instant::now();
    barrier.wait().await;
    let t0 = Instant::now();
    for host in &hosts {
        if let Kind::Killed { after } = host.kind {
            let node = host.node.clone();
            tokio::spawn(async move {
                tokio::time::sleep_until((t0 + after).into()).await;
                node.close();
            });
        }
    }

    let timeline = Arc::new(std::sync::Mutex::new(Vec::new()));
    let sampler = {
        let nodes: Vec<BlobNode> = hosts.iter().map(|h| h.node.clone()).collect();
        let origin = origin.clone();
        let n_pieces = p2p_transfer::blob::Geometry::new(build)?.n_pieces();
        tokio::spawn(sample_timeline(origin, nodes, blob, n_pieces, t0, timeline.clone()))
    };
    // Wait for the measured hosts, up to the run's limit (origin-only: its budget).
    let deadline = t0
        + match system {
            System::Ours => spec.limit(),
            System::OriginOnly => ORIGIN_ONLY_BUDGET.min(spec.limit()),
        };
    let mut outcomes: Vec<Option<Outcome>> = (0..hosts.len()).map(|_| None).collect();
    let mut pending: Vec<(usize, tokio::task::JoinHandle<Outcome>)> =
        tasks.into_iter().enumerate().collect();
    let mut cut_off = None;
    // Measured hosts first; the others (corrupt, killed) are collected once those are done.
    pending.sort_by_key(|(i, _)| !hosts[*i].kind.is_measured());
    let mut rest = Vec::new();
    for (i, task) in pending {
        if !hosts[i].kind.is_measured() {
            rest.push((i, task));
            continue;
        }
        let mut task = task;
        match tokio::time::timeout_at(deadline.into(), &mut task).await {
            Ok(outcome) => outcomes[i] = Some(outcome?),
            Err(_) => {
                cut_off.get_or_insert_with(Instant::now);
                rest.push((i, task));
            }
        }
    }
    let elapsed_at_cut = cut_off.map(|at| at.duration_since(t0));
    // Progress of hosts still running at the cut-off, for projections.
    // Bytes each host has received by the cut-off (origin-only projections).
    let received: Vec<u64> = hosts.iter().map(|h| h.node.stats().downloaded_bytes).collect();
    sampler.abort();
    let timeline = std::mem::take(&mut *timeline.lock().expect("timeline lock"));
    let cpu_s = process_cpu_secs() - cpu_before;
    let machine_s = machine_busy_secs() - machine_before;
    let wall_s = wall.elapsed().as_secs_f64();
    let origin_stats = origin.stats();
    let host_stats: Vec<_> = hosts.iter().map(|h| h.node.stats()).collect();
    let host_uploads: u64 = host_stats.iter().map(|s| s.uploaded_bytes).sum();
    let pieces_relayed = host_stats.iter().map(|s| s.pieces_relayed).sum();
    let relays_reset = host_stats.iter().map(|s| s.relays_reset).sum();
    for host in &hosts {
        host.node.close();
    }
    origin.close();
    for (i, task) in rest {
        outcomes[i] = Some(task.await?);
    }

    if system == System::Ours
        && let Some(at) = elapsed_at_cut
    {
        anyhow::bail!(
            "run {}: measured hosts unfinished after {:.1} s (limit {:?})",
            spec.name,
            at.as_secs_f64(),
            spec.limit()
        );
    }

    // Completion times, and the bytes every honest survivor ended with.
    let mut times = Vec::new();
    let mut projected = false;
    let mut verified_hosts = 0;
    let mut faults = FaultReport::default();
    let corrupt: Vec<PeerId> = hosts
        .iter()
        .filter(|h| matches!(h.kind, Kind::Corrupt(_)))
        .map(|h| h.node.peer_id())
        .collect();
    let starts: Vec<Instant> = outcomes.iter().flatten().map(|o| o.started).collect();
    let start_spread = starts.iter().max().zip(starts.iter().min()).map(|(a, b)| *a - *b);
    for (i, host) in hosts.iter().enumerate() {
        let outcome = outcomes[i].take().expect("every task collected");
        if !host.kind.is_measured() {
            continue;
        }
        match outcome.result {
            Ok(report) => {
                times.push(outcome.done.duration_since(t0).as_secs_f64());
                let bad = compare(&report, data).await?;
                faults.bad_bytes_staged += bad;
                if bad == 0 {
                    verified_hosts += 1;
                }
                for (peer, bans) in &report.banned_peers {
                    if corrupt.contains(peer) {
                        faults.corrupt_bans += 1;
                        faults.max_bans_per_peer = faults.max_bans_per_peer.max(*bans);
                    } else {
                        faults.honest_peers_banned += 1;
                    }
                }
                faults.bad_responses += report.bad_responses;
                faults.max_bad_responses_per_host =
                    faults.max_bad_responses_per_host.max(report.bad_responses);
            }
            Err(error) => match elapsed_at_cut {
                Some(at) if system == System::OriginOnly => {
                    projected = true;
                    let fraction = received[i] as f64 / build as f64;
                    times.push(if fraction > 0.0 {
                        at.as_secs_f64() / fraction
                    } else {
                        f64::INFINITY
                    });
                }
                _ => {
                    tracing::warn!(host = i, %error, "honest host failed");
                    faults.honest_failures += 1;
                }
            },
        }
    }
    times.sort_by(f64::total_cmp);
    let bound = spec.bound_s();
    let ratio = |t: f64| bound.map(|b| t / b);
    let (p50, p99, max) = (
        percentile(&times, 50.0),
        percentile(&times, 99.0),
        times.last().copied().unwrap_or(f64::NAN),
    );
    let has_faults = spec.faults.corrupt_pct + spec.faults.slow_pct + spec.faults.killed_pct > 0;
    let count = |f: fn(&Kind) -> bool| hosts.iter().filter(|h| f(&h.kind)).count();
    faults.corrupt_hosts = count(|k| matches!(k, Kind::Corrupt(_)));
    faults.slow_hosts = count(|k| matches!(k, Kind::Slow));
    faults.killed_hosts = count(|k| matches!(k, Kind::Killed { .. }));
    faults.honest_survivors = count(|k| k.is_measured());
    Ok(RunReport {
        system: match system {
            System::Ours => "ours",
            System::OriginOnly => "origin-only",
        }
        .to_owned(),
        hosts: spec.hosts,
        measured_hosts: times.len(),
        build_bytes: build,
        rate_bytes_per_sec: rate,
        bound_s: bound,
        start_spread_ms: start_spread.unwrap_or_default().as_secs_f64() * 1000.0,
        p50_s: p50,
        p99_s: p99,
        max_s: max,
        p50_x_bound: ratio(p50),
        p99_x_bound: ratio(p99),
        max_x_bound: ratio(max),
        min_host_mib_per_s: build as f64 / MIB as f64 / max,
        origin_egress_bytes: origin_stats.uploaded_bytes,
        origin_copies: origin_stats.uploaded_bytes as f64 / build as f64,
        bytes_from_peers: host_uploads,
        bytes_from_origin: origin_stats.uploaded_bytes,
        projected,
        verified_hosts,
        cpu_cores: cpu_s / wall_s,
        cpu_s_per_gib: cpu_s / (received.iter().sum::<u64>() as f64 / (1024.0 * MIB as f64)),
        other_load_cores: (machine_s - cpu_s) / wall_s,
        origin_declined: origin_stats.repeats_declined,
        origin_rescued: origin_stats.repeats_rescued,
        pieces_relayed,
        relays_reset,
        faults: has_faults.then_some(faults),
        timeline,
        note: projected.then(|| {
            format!(
                "stopped after {:.0} s; unfinished hosts projected as elapsed / fraction received",
                elapsed_at_cut.unwrap_or_default().as_secs_f64()
            )
        }),
    })
}

/// Appends the fleet's progress to `sink` every [`TIMELINE_INTERVAL`] until aborted.
async fn sample_timeline(
    origin: BlobNode,
    hosts: Vec<BlobNode>,
    blob: p2p_transfer::blob::BlobSpec,
    n_pieces: u32,
    t0: Instant,
    sink: Arc<std::sync::Mutex<Vec<TimelinePoint>>>,
) {
    let mut tick = tokio::time::interval(TIMELINE_INTERVAL);
    let mut last = (Instant::now(), process_cpu_secs(), machine_busy_secs());
    loop {
        tick.tick().await;
        let now = (Instant::now(), process_cpu_secs(), machine_busy_secs());
        let wall = now.0.duration_since(last.0).as_secs_f64().max(1e-3);
        let (process_cores, machine_cores) = ((now.1 - last.1) / wall, (now.2 - last.2) / wall);
        last = now;
        let n = f64::from(n_pieces.max(1));
        let mut union = p2p_transfer::blob::Bitfield::new(u64::from(n_pieces));
        let (mut sum, mut min, mut done, mut uploaded) = (0.0, f64::INFINITY, 0, 0);
        for host in &hosts {
            let held = host.store().pieces(&blob.hash, blob.size);
            let count = held.as_ref().map_or(0, |p| p.count());
            for piece in held.iter().flat_map(|p| p.ones()) {
                union.set(piece);
            }
            let fraction = count as f64 / n;
            sum += fraction;
            min = f64::min(min, fraction);
            done += usize::from(host.store().get(&blob.hash).is_some());
            uploaded += host.stats().uploaded_bytes;
        }
        sink.lock().expect("timeline lock").push(TimelinePoint {
            t_s: t0.elapsed().as_secs_f64(),
            origin_copies: origin.stats().uploaded_bytes as f64 / blob.size.max(1) as f64,
            injected: union.count() as f64 / n,
            mean_held: sum / hosts.len().max(1) as f64,
            min_held: if min.is_finite() { min } else { 0.0 },
            hosts_done: done,
            peer_copies: uploaded as f64 / blob.size.max(1) as f64,
            process_cores,
            machine_cores,
        });
    }
}

/// `PEERS_PER_HOST` distinct other hosts, at random.
fn sample_peers(hosts: &[Host], me: usize, rng: &mut Rng) -> Vec<PeerInfo> {
    let mut others: Vec<usize> = (0..hosts.len()).filter(|&j| j != me).collect();
    let n = PEERS_PER_HOST.min(others.len());
    for k in 0..n {
        let pick = k + rng.below(others.len() - k);
        others.swap(k, pick);
    }
    others[..n]
        .iter()
        .map(|&j| PeerInfo { peer: hosts[j].node.peer_id(), role: PeerRole::Peer })
        .collect()
}

/// Bytes of the host's blob that differ from the build (read back from its store).
async fn compare(report: &DownloadReport, data: &Arc<Vec<u8>>) -> anyhow::Result<u64> {
    let (path, data) = (report.blob.data_path(), data.clone());
    tokio::task::spawn_blocking(move || -> anyhow::Result<u64> {
        use std::io::Read;
        let mut file = std::fs::File::open(&path).with_context(|| path.display().to_string())?;
        let mut buf = vec![0u8; COMPARE_BLOCK_BYTES];
        let (mut offset, mut bad) = (0usize, 0u64);
        loop {
            let n = file.read(&mut buf)?;
            if n == 0 {
                break;
            }
            let expected = data.get(offset..offset + n).unwrap_or_default();
            bad += buf[..n].iter().zip(expected).filter(|(a, b)| a != b).count() as u64;
            bad += (n - expected.len()) as u64;
            offset += n;
        }
        bad += (data.len() - offset.min(data.len())) as u64;
        Ok(bad)
    })
    .await?
}

/// CPU seconds (user + system) this process has used.
fn process_cpu_secs() -> f64 {
    super::agent::cpu_and_rss(std::process::id()).map(|(cpu, _)| cpu).unwrap_or(f64::NAN)
}

/// CPU seconds every core of the machine has been busy (all of /proc/stat's `cpu` line but
/// idle and iowait).
pub(crate) fn machine_busy_secs() -> f64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let Some(line) = stat.lines().find(|l| l.starts_with("cpu ")) else { return f64::NAN };
    let ticks: Vec<f64> = line.split_whitespace().skip(1).filter_map(|v| v.parse().ok()).collect();
    let busy: f64 =
        ticks.iter().sum::<f64>() - ticks.get(3).unwrap_or(&0.0) - ticks.get(4).unwrap_or(&0.0);
    busy / USER_HZ
}

/// Clock ticks per second in /proc (USER_HZ, fixed at 100 by the Linux ABI).
const USER_HZ: f64 = 100.0;

/// Runs `runs` in order: ours, then (if the run wants them) origin-only and BitTorrent, each in
/// a fresh directory under `dir` removed afterwards. Prints each scenario as it finishes.
pub async fn run(
    runs: &[RunSpec],
    dir: &Path,
    seed: u64,
    baselines: bool,
) -> anyhow::Result<Vec<ScenarioReport>> {
    let tls = bench_tls()?;
    let bittorrent_ready = if baselines && runs.iter().any(|r| r.baselines) {
        bittorrent::ensure_tools()
    } else {
        Err("baselines not requested".to_owned())
    };
    let mut reports = Vec::new();
    for spec in runs {
        let data = Arc::new(build_bytes(spec.build_bytes, seed));
        let fresh = |what: &str| -> anyhow::Result<PathBuf> {
            let path = dir.join(format!("{}-{what}", spec.name));
            if path.exists() {
                std::fs::remove_dir_all(&path)?;
            }
            std::fs::create_dir_all(&path).with_context(|| path.display().to_string())?;
            Ok(path)
        };
        let path = fresh("ours")?;
        prefault_for(spec, &path)?;
        let ours = run_fleet(spec, System::Ours, &data, &path, &tls, seed).await;
        let _ = std::fs::remove_dir_all(&path);
        let ours = ours?;
        let mut scenario = ScenarioReport {
            spec: spec.clone(),
            ours,
            origin_only: None,
            bittorrent: None,
            skipped: Vec::new(),
        };
        if spec.baselines && baselines {
            let path = fresh("origin-only")?;
            prefault_for(spec, &path)?;
            let report = run_fleet(spec, System::OriginOnly, &data, &path, &tls, seed).await;
            let _ = std::fs::remove_dir_all(&path);
            scenario.origin_only = Some(report?);
            match &bittorrent_ready {
                Ok(()) => {
                    let path = fresh("bittorrent")?;
                    prefault_for(spec, &path)?;
                    let report = bittorrent::run(spec, &data, &path).await;
                    let _ = std::fs::remove_dir_all(&path);
                    match report {
                        Ok(report) => scenario.bittorrent = Some(report),
                        Err(error) => scenario.skipped.push(format!("bittorrent: {error:#}")),
                    }
                }
                Err(note) => scenario.skipped.push(format!("bittorrent: {note}")),
            }
        }
        print!("{}", format_scenario(&scenario));
        reports.push(scenario);
    }
    Ok(reports)
}

/// Fails if any of our runs staged a bad byte, banned an honest peer or lost an honest host:
/// the figures of such a run mean nothing.
pub fn check(reports: &[ScenarioReport]) -> anyhow::Result<()> {
    for s in reports {
        let ours = &s.ours;
        anyhow::ensure!(
            ours.verified_hosts == ours.measured_hosts,
            "run {}: {} of {} hosts ended with the exact build",
            s.spec.name,
            ours.verified_hosts,
            ours.measured_hosts
        );
        if let Some(f) = &ours.faults {
            anyhow::ensure!(f.bad_bytes_staged == 0, "run {}: bad bytes staged", s.spec.name);
            anyhow::ensure!(f.honest_failures == 0, "run {}: honest hosts failed", s.spec.name);
            anyhow::ensure!(f.honest_peers_banned == 0, "run {}: honest peers banned", s.spec.name);
        }
    }
    Ok(())
}

/// A scenario as a small table: each system's figures, baselines also as ratios to ours.
pub fn format_scenario(s: &ScenarioReport) -> String {
    use std::fmt::Write as _;
    let spec = &s.spec;
    let mut out = String::new();
    let caps = match spec.rate_bytes_per_sec {
        Some(rate) => format!(
            "{} MiB/s caps, B/W {:.1} s",
            rate as f64 / MIB as f64,
            spec.bound_s().unwrap_or_default()
        ),
        None => "unthrottled".to_owned(),
    };
    writeln!(
        out,
        "\nrun {}: {} hosts, {} build, {caps}; starts spread over {:.1} ms (target < {} ms); \
         other load on the machine during ours: {:.2} cores",
        spec.name,
        spec.hosts,
        human_bytes(spec.build_bytes),
        s.ours.start_spread_ms,
        START_SPREAD_TARGET.as_millis(),
        s.ours.other_load_cores
    )
    .unwrap();
    writeln!(
        out,
        "{:<12} {:>9} {:>9} {:>9} {:>7} {:>7} {:>7} {:>8} {:>10} {:>10} {:>9} {:>8} {:>8}",
        "system",
        "p50",
        "p99",
        "max",
        "p50/BW",
        "p99/BW",
        "max/BW",
        "origin",
        "from peers",
        "from orig",
        "cpu s/GiB",
        "p50/ours",
        "max/ours"
    )
    .unwrap();
    let ours = &s.ours;
    for report in [Some(ours), s.origin_only.as_ref(), s.bittorrent.as_ref()].into_iter().flatten()
    {
        let x = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{v:.2}"));
        let vs = |a: f64, b: f64| {
            if std::ptr::eq(report, ours) { "-".to_owned() } else { format!("{:.2}", a / b) }
        };
        let star = if report.projected { "*" } else { "" };
        writeln!(
            out,
            "{:<12} {:>9} {:>9} {:>9} {:>7} {:>7} {:>7} {:>8} {:>10} {:>10} {:>9.1} {:>8} {:>8}",
            report.system,
            format!("{}{star}", secs(report.p50_s)),
            format!("{}{star}", secs(report.p99_s)),
            format!("{}{star}", secs(report.max_s)),
            x(report.p50_x_bound),
            x(report.p99_x_bound),
            x(report.max_x_bound),
            format!("{:.2}x", report.origin_copies),
            human_bytes(report.bytes_from_peers),
            human_bytes(report.bytes_from_origin),
            report.cpu_s_per_gib,
            vs(report.p50_s, ours.p50_s),
            vs(report.max_s, ours.max_s),
        )
        .unwrap();
        if let Some(note) = &report.note {
            writeln!(out, "  {}{star}: {note}", report.system).unwrap();
        }
    }
    if spec.rate_bytes_per_sec.is_none() {
        writeln!(
            out,
            "  ours: every host verified {:.0} ms after the goal; slowest host {:.0} MiB/s \
             received, verified and written",
            ours.max_s * 1000.0,
            ours.min_host_mib_per_s
        )
        .unwrap();
    }
    if let Some(f) = &ours.faults {
        writeln!(
            out,
            "  faults: {} corrupt, {} slow, {} killed; {} honest survivors, {} failed; bad bytes \
             staged {}; corrupt peers banned {} times (at most {} per host and peer); honest \
             peers banned {}; bad responses {} (at most {} per host)",
            f.corrupt_hosts,
            f.slow_hosts,
            f.killed_hosts,
            f.honest_survivors,
            f.honest_failures,
            f.bad_bytes_staged,
            f.corrupt_bans,
            f.max_bans_per_peer,
            f.honest_peers_banned,
            f.bad_responses,
            f.max_bad_responses_per_host
        )
        .unwrap();
    }
    if ours.origin_declined > 0 {
        writeln!(
            out,
            "  ours: the origin answered \"seeded\" {} times and sent {} stranded pieces again",
            ours.origin_declined, ours.origin_rescued
        )
        .unwrap();
    }
    if ours.pieces_relayed > 0 || ours.relays_reset > 0 {
        writeln!(
            out,
            "  ours: hosts relayed {} pieces while receiving them ({} relays reset)",
            ours.pieces_relayed, ours.relays_reset
        )
        .unwrap();
    }
    for skipped in &s.skipped {
        writeln!(out, "  skipped {skipped}").unwrap();
    }
    out
}

fn secs(s: f64) -> String {
    if s < 1.0 { format!("{:.0} ms", s * 1000.0) } else { format!("{s:.1} s") }
}

fn human_bytes(bytes: u64) -> String {
    let b = bytes as f64;
    if b >= 1024.0 * MIB as f64 {
        format!("{:.2} GiB", b / (1024.0 * MIB as f64))
    } else {
        format!("{:.1} MiB", b / MIB as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefault_writes_what_it_says_and_leaves_nothing_behind() {
        let dir = tempfile::tempdir().unwrap();
        let (written, secs) = prefault_memory(dir.path(), 3 * MIB + 5).unwrap();
        assert_eq!(written, 3 * MIB + 5);
        assert!(secs >= 0.0);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "the file is deleted");
    }

    #[test]
    fn prefault_into_a_missing_directory_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("gone");
        assert!(prefault_memory(&missing, MIB).is_err());
    }
}
