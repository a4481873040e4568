//! Downloads: the IO shell around [`Scheduler`].
//!
//! One driver task per download owns the scheduler and feeds it events (links up and down,
//! bitfields and haves routed from the peers' control streams, finished requests, time); it
//! turns the scheduler's actions into piece requests, each its own task on its own QUIC
//! stream. A request task verifies every chunk group with bao-tree's response decoder before
//! writing it, so the first bad group ends the request and blames exactly that peer; what
//! verified is passed on to the piece's relay ([`crate::swarm::relay`]) at the same time.

use std::collections::{HashMap, HashSet, VecDeque};
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bao_tree::io::fsm::{ResponseDecoder, ResponseDecoderNext};
use bao_tree::io::{BaoContentItem, DecodeError};
use bytes::Bytes;
use tokio::sync::{mpsc, watch};
use tokio::task::{AbortHandle, JoinHandle, JoinSet};
use tracing::{Instrument, debug, debug_span, info, info_span, trace, warn};

use crate::blob::{
    BeginDownload, Bitfield, BlobHash, BlobSpec, CompleteBlob, FinalizeError, GroupWriteError,
    PartialBlob, ReserveError,
};
use crate::swarm::node::{BlobNode, ConnectError, Link, Node};
use crate::swarm::scheduler::{Action, Failure, PeerId, PeerRole, Scheduler, SchedulerConfig};
use crate::wire::{ControlMsg, PieceRequest, ResponseStatus, STREAM_RELAY_LOST};

/// Events queued for one download before the peers' control readers wait.
pub const DOWNLOAD_EVENT_QUEUE: usize = 4096;
/// A download fails after this long with no peer able to supply a missing piece.
pub const STALL_TIMEOUT: Duration = Duration::from_secs(30);
/// Dial attempts per peer before it is given up on (until it is added again).
pub const MAX_DIALS: u32 = 3;
/// Pause before re-dialing a peer whose connection failed or ended.
pub const REDIAL_BACKOFF: Duration = Duration::from_millis(500);
/// Longest time a download talks to its origins alone: peers are dialed once an origin has
/// answered a first request (or said it holds nothing) or no origin can be reached, and after
/// this long at the latest. A flash crowd's peer handshakes would otherwise queue ahead of
/// the origin's handshake and first pieces on a loaded host, and until an origin has sent
/// those, no peer has anything to give.
pub const ORIGIN_HEAD_START: Duration = Duration::from_millis(200);
/// Non-origin peers a download keeps linked or being dialed, at least; the rest of the
/// tracker's list waits in reserve and is dialed as those links fail, their peers are banned,
/// or the download cannot progress with the ones it has. Every link costs a mutual-TLS
/// handshake on both hosts, and for a blob of few pieces more sources than pieces only
/// duplicate its last pieces: `tt bench swarm --runs small` (1 MiB, 4 pieces, 50 hosts) took
/// 282–323 ms with 3 peers per host against 443–552 ms with 6, in alternating runs.
pub const MIN_PEER_LINKS: usize = 3;
/// Beyond [`MIN_PEER_LINKS`], one more peer link per this many pieces of the blob (a 64 MiB
/// build has 256: every peer the tracker names is dialed).
pub const PIECES_PER_PEER_LINK: u32 = 2;
/// How long a new link's first answer (its bitfield, or "holds nothing") is waited for before
/// the download counts it as of no use when deciding whether to dial the reserve.
pub const FIRST_ANSWER_WAIT: Duration = Duration::from_secs(1);
/// Most queued events the driver takes in one go before it decides again, in events.
pub const EVENT_BATCH_MAX: usize = 64;
/// The driver wakes at least this often to check for a stall.
const DRIVER_TICK: Duration = Duration::from_millis(250);

/// A peer to download from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerInfo {
    pub peer: PeerId,
    pub role: PeerRole,
}

/// Tuning for one download.
#[derive(Debug, Clone)]
pub struct DownloadOptions {
    pub scheduler: SchedulerConfig,
    pub stall_timeout: Duration,
}

impl DownloadOptions {
    /// The recommended scheduler settings with a random seed, and [`STALL_TIMEOUT`].
    pub fn recommended() -> DownloadOptions {
        DownloadOptions {
            scheduler: SchedulerConfig::recommended(rand::random()),
            stall_timeout: STALL_TIMEOUT,
        }
    }
}

/// Why a download failed.
#[derive(Debug, thiserror::Error)]
pub enum DownloadError {
    /// This node already runs a download of the blob; wait for that one.
    #[error("a download of blob {0} is already running on this node")]
    AlreadyRunning(BlobHash),
    /// No space for the blob (quota or disk); nothing was staged.
    #[error("reserving space: {0}")]
    Reserve(#[from] ReserveError),
    /// Writing verified data failed (e.g. disk full); the partial blob was deleted.
    #[error("writing the blob: {0}")]
    Write(#[source] GroupWriteError),
    /// No peer could supply the missing pieces for the stall timeout. The partial blob is
    /// kept; a later download with more peers resumes it.
    #[error(
        "stalled for {after:?}: no peer can supply the missing pieces ({pieces_done} of \
         {n_pieces} held)"
    )]
    Stalled { after: Duration, pieces_done: u64, n_pieces: u32 },
    /// The whole-blob check failed after every group verified (disk or bug); the partial
    /// blob was deleted.
    #[error("final verification: {0}")]
    Finalize(#[source] FinalizeError),
    /// Cancelled (or the node closed). The partial blob is kept for a later resume.
    #[error("download cancelled")]
    Cancelled,
    /// The download task panicked or was aborted.
    #[error("download task failed: {0}")]
    Task(String),
}

/// What a finished download did.
#[derive(Debug, Clone)]
pub struct DownloadReport {
    /// The verified blob.
    pub blob: CompleteBlob,
    /// Response bytes (data and proofs) received by this download.
    pub bytes_received: u64,
    /// Chunk groups already held when the download started (a resume).
    pub resumed_groups: u64,
    /// Peers banned for sending bad data, with how often.
    pub banned_peers: Vec<(PeerId, u32)>,
    /// Responses that failed verification.
    pub bad_responses: u64,
}

/// A snapshot of a running download.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DownloadProgress {
    pub pieces_done: u64,
    pub n_pieces: u32,
    pub connected_peers: usize,
    pub bytes_received: u64,
}

/// A running download. Dropping it does not stop it; see [`Download::cancel`].
#[derive(Debug)]
pub struct Download {
    spec: BlobSpec,
    events: mpsc::Sender<DownloadEvent>,
    progress: watch::Receiver<DownloadProgress>,
    task: JoinHandle<Result<DownloadReport, DownloadError>>,
}

impl Download {
    /// The blob being downloaded.
    pub fn spec(&self) -> BlobSpec {
        self.spec
    }

    /// Adds peers to a running download (from the tracker). Known peers are ignored.
    pub fn add_peers(&self, peers: Vec<PeerInfo>) {
        let _ = self.events.try_send(DownloadEvent::AddPeers(peers));
    }

    /// A handle that adds peers while [`Download::finish`] is awaited.
    pub fn peer_adder(&self) -> PeerAdder {
        PeerAdder { events: self.events.clone() }
    }

    /// The latest progress.
    pub fn progress(&self) -> DownloadProgress {
        *self.progress.borrow()
    }

    /// Stops the download; [`Download::finish`] then returns [`DownloadError::Cancelled`].
    pub fn cancel(&self) {
        let _ = self.events.try_send(DownloadEvent::Cancel);
    }

    /// Stops the download at once without any cleanup, as if the process had died: what is
    /// on disk stays as it is. For crash tests.
    pub fn abort(&self) {
        self.task.abort();
    }

    /// Waits for the download to end.
    pub async fn finish(self) -> Result<DownloadReport, DownloadError> {
        match self.task.await {
            Ok(result) => result,
            Err(error) if error.is_cancelled() => Err(DownloadError::Cancelled),
            Err(error) => Err(DownloadError::Task(error.to_string())),
        }
    }
}

/// Adds peers to a running download (see [`Download::peer_adder`]); does nothing once the
/// download has ended.
#[derive(Debug, Clone)]
pub struct PeerAdder {
    events: mpsc::Sender<DownloadEvent>,
}

impl PeerAdder {
    /// Like [`Download::add_peers`].
    pub fn add_peers(&self, peers: Vec<PeerInfo>) {
        let _ = self.events.try_send(DownloadEvent::AddPeers(peers));
    }
}

/// Events for a download's driver, from the node and from the [`Download`] handle.
#[derive(Debug)]
pub(crate) enum DownloadEvent {
    AddPeers(Vec<PeerInfo>),
    LinkUp(Arc<Link>),
    LinkDown {
        peer: PeerId,
        link_id: usize,
    },
    /// The peer subscribed to this blob: it downloads it too, so it is a peer for us.
    PeerInterested(Arc<Link>),
    Bitfield {
        peer: PeerId,
        size: u64,
        pieces: Bitfield,
    },
    Have {
        peer: PeerId,
        piece: u32,
    },
    DontHave {
        peer: PeerId,
    },
    /// The peer is receiving `piece` and relays it (cut-through).
    Incoming {
        peer: PeerId,
        piece: u32,
    },
    Cancel,
}

impl BlobNode {
    /// Starts downloading `spec` from `peers` (more can join later). Returns at once if the
    /// store holds the blob; fails at once if there is no space for it.
    pub async fn download(
        &self,
        spec: BlobSpec,
        peers: Vec<PeerInfo>,
        options: DownloadOptions,
    ) -> Result<Download, DownloadError> {
        let node = self.inner.clone();
        let (tx, rx) = mpsc::channel(DOWNLOAD_EVENT_QUEUE);
        {
            let mut downloads = node.downloads.lock().expect("downloads lock");
            if downloads.contains_key(&spec.hash) {
                return Err(DownloadError::AlreadyRunning(spec.hash));
            }
            downloads.insert(spec.hash, tx.clone());
        }
        let registration = Registration { node: node.clone(), hash: spec.hash };
        let store = node.store.clone();
        let begun = tokio::task::spawn_blocking(move || store.begin_download(spec))
            .await
            .map_err(|e| DownloadError::Task(e.to_string()))??;
        let (progress_tx, progress) = watch::channel(DownloadProgress::default());
        let span = info_span!("download", node = %node.id, blob = %spec.hash.short());
        let task = match begun {
            BeginDownload::Complete(blob) => tokio::spawn(async move {
                drop(registration);
                Ok(DownloadReport {
                    blob,
                    bytes_received: 0,
                    resumed_groups: 0,
                    banned_peers: Vec::new(),
                    bad_responses: 0,
                })
            }),
            BeginDownload::Partial(partial) => {
                let now = now();
                let geometry = partial.geometry();
                let core = Scheduler::new(options.scheduler.clone(), geometry, &partial.pieces());
                let peer_budget =
                    MIN_PEER_LINKS.max(geometry.n_pieces().div_ceil(PIECES_PER_PEER_LINK) as usize);
                let mut driver = Driver {
                    node,
                    spec,
                    resumed_groups: partial.groups_held(),
                    partial,
                    core,
                    options,
                    wanted: HashMap::new(),
                    links: HashMap::new(),
                    dialing: HashSet::new(),
                    held_back: None,
                    origin_answered: false,
                    dial_attempts: HashMap::new(),
                    peer_budget,
                    reserve: VecDeque::new(),
                    unanswered: HashMap::new(),
                    dials: JoinSet::new(),
                    requests: HashMap::new(),
                    fetches: JoinSet::new(),
                    rx,
                    progress: progress_tx,
                    bytes_received: 0,
                    bad_responses: 0,
                    stalled_since: None,
                    _registration: registration,
                };
                driver.add_peers(peers, now);
                tokio::spawn(async move { driver.run().await }.instrument(span))
            }
        };
        Ok(Download { spec, events: tx, progress, task })
    }
}

/// Unregisters a download from its node when the driver ends, however it ends.
struct Registration {
    node: Arc<Node>,
    hash: BlobHash,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.node.downloads.lock().expect("downloads lock").remove(&self.hash);
    }
}

type FetchResult = (PeerId, u32, Result<u64, FetchFailure>);

struct Driver {
    node: Arc<Node>,
    spec: BlobSpec,
    partial: Arc<PartialBlob>,
    resumed_groups: u64,
    core: Scheduler,
    options: DownloadOptions,
    /// Peers we were told about (or that came to us), with their role.
    wanted: HashMap<PeerId, PeerRole>,
    /// Peers with a link we subscribed on.
    links: HashMap<PeerId, Arc<Link>>,
    dialing: HashSet<PeerId>,
    /// Peers not dialed yet while an origin is ([`ORIGIN_HEAD_START`]), and until when.
    held_back: Option<(Instant, Vec<PeerId>)>,
    /// An origin answered a request or said it holds nothing: peers may be dialed.
    origin_answered: bool,
    dial_attempts: HashMap<PeerId, u32>,
    /// Peers linked or dialed at most ([`MIN_PEER_LINKS`], [`PIECES_PER_PEER_LINK`]).
    peer_budget: usize,
    /// Peers not dialed yet because the budget was full, in the tracker's order.
    reserve: VecDeque<PeerId>,
    /// Links whose peer has not said yet what it holds, since when.
    unanswered: HashMap<PeerId, Instant>,
    dials: JoinSet<(PeerId, Result<Arc<Link>, ConnectError>)>,
    requests: HashMap<(PeerId, u32), AbortHandle>,
    fetches: JoinSet<FetchResult>,
    rx: mpsc::Receiver<DownloadEvent>,
    progress: watch::Sender<DownloadProgress>,
    bytes_received: u64,
    bad_responses: u64,
    stalled_since: Option<Instant>,
    _registration: Registration,
}

fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

impl Driver {
    async fn run(mut self) -> Result<DownloadReport, DownloadError> {
        let result = self.run_inner().await;
        for link in self.links.values() {
            link.send(ControlMsg::NotInterested { hash: self.spec.hash });
        }
        self.fetches.abort_all();
        self.dials.abort_all();
        let store = self.node.store.clone();
        let hash = self.spec.hash;
        match &result {
            Ok(report) => {
                info!(
                    bytes = report.bytes_received,
                    resumed_groups = report.resumed_groups,
                    "download complete"
                )
            }
            Err(DownloadError::Write(_) | DownloadError::Finalize(_)) => {
                warn!(error = %result.as_ref().unwrap_err(), "download failed; discarding");
                store.discard(&hash);
            }
            Err(error) => {
                info!(%error, "download stopped; partial blob kept");
                store.suspend(&hash);
            }
        }
        result
    }

    async fn run_inner(&mut self) -> Result<DownloadReport, DownloadError> {
        loop {
            let now = now();
            if let Some((until, _)) = &self.held_back
                && (now >= *until || !self.origin_pending())
            {
                self.release_held_back();
            }
            self.dial_reserve(now);
            while let Some(action) = self.core.poll_action(now) {
                self.act(action);
            }
            if self.core.is_complete() {
                return self.finalize().await;
            }
            if self.core.can_progress(now) || !self.dialing.is_empty() || self.held_back.is_some() {
                self.stalled_since = None;
            } else {
                let since = *self.stalled_since.get_or_insert(now);
                if now.duration_since(since) >= self.options.stall_timeout {
                    return Err(DownloadError::Stalled {
                        after: self.options.stall_timeout,
                        pieces_done: self.core.pieces_done(),
                        n_pieces: self.partial.geometry().n_pieces(),
                    });
                }
            }
            let mut wake =
                self.core.poll_timeout(now).map_or(now + DRIVER_TICK, |t| t.min(now + DRIVER_TICK));
            if let Some((until, _)) = &self.held_back {
                wake = wake.min(*until);
            }
            tokio::select! {
                event = self.rx.recv() => match event {
                    Some(event) => {
                        self.handle_event(event)?;
                        // Under load events queue up (every linked peer's "have"s): take
                        // what is waiting before deciding again.
                        for _ in 1..EVENT_BATCH_MAX {
                            let Ok(event) = self.rx.try_recv() else { break };
                            self.handle_event(event)?;
                        }
                    }
                    None => return Err(DownloadError::Cancelled),
                },
                Some(done) = self.fetches.join_next(), if !self.fetches.is_empty() => {
                    if let Ok((peer, piece, result)) = done {
                        self.handle_fetch(peer, piece, result)?;
                    }
                }
                Some(dialed) = self.dials.join_next(), if !self.dials.is_empty() => {
                    if let Ok((peer, result)) = dialed {
                        self.handle_dialed(peer, result);
                    }
                }
                _ = tokio::time::sleep_until(tokio::time::Instant::from_std(wake)) => {
                    self.core.handle_timeout(tokio::time::Instant::now().into_std());
                }
            }
        }
    }

    fn act(&mut self, action: Action) {
        match action {
            Action::Request { peer, piece } => {
                let Some(link) = self.links.get(&peer).cloned() else {
                    // The scheduler only knows linked peers; a race with a link going down.
                    self.core.handle_piece_failed(peer, piece, Failure::Transport, now());
                    return;
                };
                trace!(%peer, piece, "request");
                let node = self.node.clone();
                let partial = self.partial.clone();
                let may_relay = self.proven(peer);
                let span =
                    debug_span!("fetch", blob = %self.spec.hash.short(), peer = %peer, piece);
                let handle = self.fetches.spawn(
                    async move {
                        (peer, piece, fetch_piece(node, link, partial, piece, may_relay).await)
                    }
                    .instrument(span),
                );
                self.requests.insert((peer, piece), handle);
            }
            Action::Cancel { peer, piece } => {
                trace!(%peer, piece, "cancel");
                if let Some(handle) = self.requests.remove(&(peer, piece)) {
                    handle.abort();
                }
            }
        }
    }

    /// Whether what `peer` sends may be relayed as it arrives: it is an origin, or it has
    /// delivered a verified piece of this blob and its measured rate is not slow. A relay runs
    /// at its source's pace, so relaying from a crawling peer throttles the relay's whole
    /// subtree, and a peer whose first response is corrupt would have nearly a whole piece (a
    /// flipped byte in the last chunk group) passed down the tree before the reset.
    fn proven(&self, peer: PeerId) -> bool {
        self.wanted.get(&peer) == Some(&PeerRole::Origin) || self.core.is_proven_fast(peer)
    }

    fn handle_fetch(
        &mut self,
        peer: PeerId,
        piece: u32,
        result: Result<u64, FetchFailure>,
    ) -> Result<(), DownloadError> {
        self.requests.remove(&(peer, piece));
        let now = now();
        let bytes = match &result {
            Ok(bytes) | Err(FetchFailure::Peer(_, bytes)) => *bytes,
            Err(FetchFailure::Store(_)) => 0,
        };
        if self.wanted.get(&peer) == Some(&PeerRole::Origin) {
            self.origin_answered = true;
            self.node.counters.downloaded_from_origin_bytes.fetch_add(bytes, Ordering::Relaxed);
        }
        match result {
            Ok(bytes) => {
                trace!(%peer, piece, bytes, "piece received");
                self.bytes_received += bytes;
                self.core.handle_piece_received(peer, piece, now);
                self.publish_progress();
            }
            Err(FetchFailure::Peer(failure, bytes)) => {
                self.bytes_received += bytes;
                if failure == Failure::Corrupt {
                    self.bad_responses += 1;
                    self.node.counters.bad_responses.fetch_add(1, Ordering::Relaxed);
                    warn!(%peer, piece, "response failed verification; banning peer for this blob");
                } else {
                    debug!(%peer, piece, ?failure, "request failed");
                }
                self.core.handle_piece_failed(peer, piece, failure, now);
            }
            Err(FetchFailure::Store(error)) => return Err(DownloadError::Write(error)),
        }
        Ok(())
    }

    fn handle_event(&mut self, event: DownloadEvent) -> Result<(), DownloadError> {
        let now = now();
        match event {
            DownloadEvent::AddPeers(peers) => self.add_peers(peers, now),
            DownloadEvent::LinkUp(link) => self.link_up(link, now),
            DownloadEvent::PeerInterested(link) => {
                if let std::collections::hash_map::Entry::Vacant(entry) =
                    self.wanted.entry(link.peer)
                {
                    debug!(peer = %link.peer, "peer downloading the same blob joins");
                    entry.insert(PeerRole::Peer);
                }
                self.link_up(link, now);
            }
            DownloadEvent::LinkDown { peer, link_id } => {
                if self.links.get(&peer).is_some_and(|l| l.id() == link_id) {
                    self.links.remove(&peer);
                    self.drop_peer(peer, now);
                    self.dial(peer, Some(REDIAL_BACKOFF));
                }
            }
            DownloadEvent::Bitfield { peer, size, pieces } => {
                self.unanswered.remove(&peer);
                if self.links.contains_key(&peer) {
                    if size == self.spec.size {
                        self.core.handle_bitfield(peer, pieces, now);
                    } else {
                        self.core.handle_dont_have(peer, now);
                    }
                }
            }
            DownloadEvent::Have { peer, piece } => {
                if self.links.contains_key(&peer) {
                    self.core.handle_have(peer, piece, now);
                }
            }
            DownloadEvent::Incoming { peer, piece } => {
                if self.links.contains_key(&peer) {
                    self.core.handle_incoming(peer, piece, now);
                }
            }
            DownloadEvent::DontHave { peer } => {
                self.unanswered.remove(&peer);
                if self.links.contains_key(&peer) {
                    self.origin_answered |= self.wanted.get(&peer) == Some(&PeerRole::Origin);
                    self.core.handle_dont_have(peer, now);
                }
            }
            DownloadEvent::Cancel => return Err(DownloadError::Cancelled),
        }
        Ok(())
    }

    fn add_peers(&mut self, mut peers: Vec<PeerInfo>, now: Instant) {
        // Origins first: until some host holds a piece, only an origin link is of use, and a
        // flash crowd's handshakes queue up behind one another.
        peers.sort_by_key(|p| p.role != PeerRole::Origin);
        for PeerInfo { peer, role } in peers {
            if peer == self.node.id {
                continue;
            }
            self.dial_attempts.remove(&peer);
            if self.wanted.insert(peer, role) != Some(role) {
                if self.links.contains_key(&peer) {
                    self.core.handle_peer_joined(peer, role, now);
                } else if role == PeerRole::Peer && self.dialing_origin() {
                    let (_, held) =
                        self.held_back.get_or_insert_with(|| (now + ORIGIN_HEAD_START, Vec::new()));
                    held.push(peer);
                } else {
                    self.dial(peer, None);
                }
            }
        }
    }

    /// Whether an origin's link is being dialed.
    fn dialing_origin(&self) -> bool {
        self.dialing.iter().any(|peer| self.wanted.get(peer) == Some(&PeerRole::Origin))
    }

    /// Whether peers should still wait for an origin: it is being dialed, or linked and has
    /// not answered yet.
    fn origin_pending(&self) -> bool {
        let linked = self.links.keys().any(|peer| self.wanted.get(peer) == Some(&PeerRole::Origin));
        self.dialing_origin() || (linked && !self.origin_answered)
    }

    /// Dials the peers held back for an origin ([`ORIGIN_HEAD_START`]).
    fn release_held_back(&mut self) {
        if let Some((_, peers)) = self.held_back.take() {
            debug!(n_peers = peers.len(), "dialing the peers held back for the origin");
            for peer in peers {
                if !self.links.contains_key(&peer) {
                    self.dial(peer, None);
                }
            }
        }
    }

    /// Dials `peer` now, or after `delay` (a redial, which the budget does not hold back); a
    /// non-origin peer beyond the budget goes to the reserve instead.
    fn dial(&mut self, peer: PeerId, delay: Option<Duration>) {
        if delay.is_none()
            && self.wanted.get(&peer) == Some(&PeerRole::Peer)
            && self.active_peers(now()) >= self.peer_budget
        {
            if !self.reserve.contains(&peer) {
                self.reserve.push_back(peer);
            }
            return;
        }
        self.start_dial(peer, delay);
    }

    /// Non-origin peers linked or being dialed, banned ones not counted.
    fn active_peers(&self, now: Instant) -> usize {
        self.links
            .keys()
            .chain(self.dialing.iter().filter(|p| !self.links.contains_key(*p)))
            .filter(|p| self.wanted.get(*p) == Some(&PeerRole::Peer))
            .filter(|p| !self.core.is_banned(**p, now))
            .count()
    }

    /// Dials reserve peers while the budget has room, and one more whenever the download
    /// cannot progress with the peers it has and nothing is being dialed.
    fn dial_reserve(&mut self, now: Instant) {
        if self.reserve.is_empty() {
            return;
        }
        let answering = self.unanswered.values().any(|&since| now < since + FIRST_ANSWER_WAIT);
        let stuck = self.dialing.is_empty() && !answering && !self.core.can_progress(now);
        while let Some(peer) = self.reserve.pop_front() {
            if self.links.contains_key(&peer) || !self.wanted.contains_key(&peer) {
                continue;
            }
            if self.active_peers(now) >= self.peer_budget && !stuck {
                self.reserve.push_front(peer);
                return;
            }
            self.start_dial(peer, None);
            if stuck {
                return;
            }
        }
    }

    fn start_dial(&mut self, peer: PeerId, delay: Option<Duration>) {
        if !self.wanted.contains_key(&peer) || self.dialing.contains(&peer) {
            return;
        }
        let attempts = self.dial_attempts.entry(peer).or_default();
        if *attempts >= MAX_DIALS {
            debug!(%peer, "giving up on peer");
            return;
        }
        *attempts += 1;
        self.dialing.insert(peer);
        let node = self.node.clone();
        self.dials.spawn(async move {
            if let Some(delay) = delay {
                tokio::time::sleep(delay).await;
            }
            (peer, node.connect(peer).await)
        });
    }

    fn handle_dialed(&mut self, peer: PeerId, result: Result<Arc<Link>, ConnectError>) {
        self.dialing.remove(&peer);
        match result {
            Ok(link) => self.link_up(link, now()),
            Err(error) => {
                debug!(%peer, %error, "dial failed");
                self.dial(peer, Some(REDIAL_BACKOFF));
            }
        }
    }

    fn link_up(&mut self, link: Arc<Link>, now: Instant) {
        let peer = link.peer;
        let Some(&role) = self.wanted.get(&peer) else { return };
        if link.connection.close_reason().is_some()
            || self.links.get(&peer).is_some_and(|l| l.id() == link.id())
        {
            return;
        }
        if self.links.insert(peer, link.clone()).is_some() {
            self.drop_peer(peer, now);
        }
        self.dial_attempts.remove(&peer);
        self.core.handle_peer_joined(peer, role, now);
        self.core.handle_rtt(peer, link.connection.rtt());
        link.send(ControlMsg::Interested { spec: self.spec });
        self.unanswered.insert(peer, now);
        self.publish_progress();
    }

    /// Forgets the peer's state and requests (its link is gone or replaced).
    fn drop_peer(&mut self, peer: PeerId, now: Instant) {
        self.core.handle_peer_left(peer, now);
        self.unanswered.remove(&peer);
        let keys: Vec<(PeerId, u32)> =
            self.requests.keys().filter(|(p, _)| *p == peer).copied().collect();
        for key in keys {
            if let Some(handle) = self.requests.remove(&key) {
                handle.abort();
            }
        }
        self.publish_progress();
    }

    fn publish_progress(&self) {
        let _ = self.progress.send(DownloadProgress {
            pieces_done: self.core.pieces_done(),
            n_pieces: self.partial.geometry().n_pieces(),
            connected_peers: self.links.len(),
            bytes_received: self.bytes_received,
        });
    }

    async fn finalize(&mut self) -> Result<DownloadReport, DownloadError> {
        let store = self.node.store.clone();
        let partial = self.partial.clone();
        let blob = tokio::task::spawn_blocking(move || store.finalize(&partial))
            .await
            .map_err(|e| DownloadError::Task(e.to_string()))?
            .map_err(DownloadError::Finalize)?;
        Ok(DownloadReport {
            blob,
            bytes_received: self.bytes_received,
            resumed_groups: self.resumed_groups,
            banned_peers: self.core.banned_peers(),
            bad_responses: self.bad_responses,
        })
    }
}

/// Why a request failed: the peer's fault (with the bytes it cost), or our disk's.
#[derive(Debug)]
enum FetchFailure {
    Peer(Failure, u64),
    Store(GroupWriteError),
}

/// Requests one piece and writes each chunk group as soon as it verifies, passing each
/// verified parent and group on to the piece's relay if `may_relay` (and this node relays).
/// Returns the response bytes read.
async fn fetch_piece(
    node: Arc<Node>,
    link: Arc<Link>,
    partial: Arc<PartialBlob>,
    piece: u32,
    may_relay: bool,
) -> Result<u64, FetchFailure> {
    let transport = |bytes| FetchFailure::Peer(Failure::Transport, bytes);
    let spec = partial.spec();
    let geometry = partial.geometry();
    let (mut send, mut recv) = link.connection.open_bi().await.map_err(|_| transport(0))?;
    send.write_all(&PieceRequest { spec, piece }.encode()).await.map_err(|_| transport(0))?;
    let _ = send.finish();
    let mut status = [0u8; 1];
    match recv.read_exact(&mut status).await {
        Ok(()) => {}
        Err(quinn::ReadExactError::FinishedEarly(_)) => {
            return Err(FetchFailure::Peer(Failure::Corrupt, 0));
        }
        Err(quinn::ReadExactError::ReadError(_)) => return Err(transport(0)),
    }
    match ResponseStatus::from_byte(status[0]) {
        Some(ResponseStatus::Ok) => {}
        Some(ResponseStatus::NotHeld | ResponseStatus::Refused) => {
            return Err(FetchFailure::Peer(Failure::NotHeld, 1));
        }
        Some(ResponseStatus::Busy) => return Err(FetchFailure::Peer(Failure::Busy, 1)),
        Some(ResponseStatus::Seeded) => return Err(FetchFailure::Peer(Failure::Seeded, 1)),
        None => return Err(FetchFailure::Peer(Failure::Corrupt, 1)),
    }
    let relay = if may_relay { node.start_relay(spec, piece) } else { None };
    // Verified parents not yet passed to the relay (a piece's encoding ends with a group).
    let mut parents = Vec::new();
    let received =
        Arc::new(ReadStats { bytes: AtomicU64::new(1), relay_lost: AtomicBool::new(false) });
    let reader = StreamReader { recv, node, stats: received.clone() };
    let mut decoder = ResponseDecoder::new(
        spec.hash.to_blake3(),
        geometry.piece_chunks(piece),
        geometry.tree(),
        reader,
    );
    loop {
        match decoder.next().await {
            ResponseDecoderNext::More((next, item)) => {
                let bytes = received.bytes.load(Ordering::Relaxed);
                decoder = next;
                match item {
                    Ok(BaoContentItem::Parent(parent)) => {
                        partial.write_verified_parent(&parent).map_err(FetchFailure::Store)?;
                        if relay.is_some() {
                            parents.extend_from_slice(parent.pair.0.as_bytes());
                            parents.extend_from_slice(parent.pair.1.as_bytes());
                        }
                    }
                    Ok(BaoContentItem::Leaf(leaf)) => {
                        partial
                            .write_verified_group(leaf.offset, &leaf.data)
                            .map_err(FetchFailure::Store)?;
                        if let Some(relay) = &relay {
                            // One segment per group: the parents before it go with it.
                            if parents.is_empty() {
                                relay.push(leaf.data);
                            } else {
                                parents.extend_from_slice(&leaf.data);
                                relay.push(Bytes::from(std::mem::take(&mut parents)));
                            }
                        }
                    }
                    Err(
                        error @ (DecodeError::LeafHashMismatch(_)
                        | DecodeError::ParentHashMismatch(_)
                        | DecodeError::LeafNotFound(_)
                        | DecodeError::ParentNotFound(_)),
                    ) => {
                        debug!(?error, "bad response");
                        return Err(FetchFailure::Peer(Failure::Corrupt, bytes));
                    }
                    Err(DecodeError::Io(_)) if received.relay_lost.load(Ordering::Relaxed) => {
                        return Err(FetchFailure::Peer(Failure::RelayLost, bytes));
                    }
                    Err(DecodeError::Io(_)) => return Err(transport(bytes)),
                }
            }
            ResponseDecoderNext::Done(_) => {
                if let Some(relay) = relay {
                    relay.complete();
                }
                return Ok(received.bytes.load(Ordering::Relaxed));
            }
        }
    }
}

/// A QUIC receive stream as bao-tree's async reader, paying the node's download bucket for
/// every byte before reading it.
struct StreamReader {
    recv: quinn::RecvStream,
    node: Arc<Node>,
    /// Shared with the request task (the decoder owns the reader).
    stats: Arc<ReadStats>,
}

/// What a [`StreamReader`] saw.
struct ReadStats {
    /// Response bytes read.
    bytes: AtomicU64,
    /// The sender reset the stream with [`STREAM_RELAY_LOST`].
    relay_lost: AtomicBool,
}

impl StreamReader {
    fn count(&mut self, n: usize) {
        self.stats.bytes.fetch_add(n as u64, Ordering::Relaxed);
        self.node.counters.downloaded_bytes.fetch_add(n as u64, Ordering::Relaxed);
    }

    fn read_error(&self, error: quinn::ReadError) -> io::Error {
        if error == quinn::ReadError::Reset(STREAM_RELAY_LOST) {
            self.stats.relay_lost.store(true, Ordering::Relaxed);
        }
        io::Error::new(io::ErrorKind::ConnectionReset, error)
    }
}

impl iroh_io::AsyncStreamReader for StreamReader {
    async fn read_bytes(&mut self, len: usize) -> io::Result<Bytes> {
        self.node.download.acquire(len as u64).await;
        let mut buf = vec![0u8; len];
        let n = match self.recv.read_exact(&mut buf).await {
            Ok(()) => len,
            Err(quinn::ReadExactError::FinishedEarly(n)) => n,
            Err(quinn::ReadExactError::ReadError(error)) => return Err(self.read_error(error)),
        };
        buf.truncate(n);
        self.count(n);
        Ok(Bytes::from(buf))
    }

    async fn read<const L: usize>(&mut self) -> io::Result<[u8; L]> {
        self.node.download.acquire(L as u64).await;
        let mut buf = [0u8; L];
        match self.recv.read_exact(&mut buf).await {
            Ok(()) => {
                self.count(L);
                Ok(buf)
            }
            Err(quinn::ReadExactError::FinishedEarly(n)) => {
                self.count(n);
                Err(io::ErrorKind::UnexpectedEof.into())
            }
            Err(quinn::ReadExactError::ReadError(error)) => Err(self.read_error(error)),
        }
    }
}
