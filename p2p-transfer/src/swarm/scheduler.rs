//! The deterministic core of a download: which piece to ask from which peer next.
//!
//! ```text
//!   handle_peer_joined / handle_bitfield / handle_have / handle_dont_have / handle_peer_left
//!   handle_piece_received / handle_piece_failed / handle_rtt / handle_timeout(now)
//!                      │
//!                 [ Scheduler ]  ── no IO, no clock, no OS randomness
//!                      │
//!   poll_action(now) -> Request { peer, piece } | Cancel { peer, piece }
//!   poll_timeout(now) -> when to call handle_timeout next
//! ```
//!
//! Policy:
//! - **Piece choice:** random for the first [`SchedulerConfig::random_first_pieces`] pieces (so
//!   a flash crowd does not all want piece 0), then rarest first among usable non-origin
//!   peers, ties broken at random (seeded).
//! - **Peer choice:** non-origin peers first, fastest measured throughput first (unmeasured
//!   peers before measured ones, so newcomers get tried). Each peer gets a pipeline of
//!   `ceil(rate × rtt / piece) + 1` requests, clamped to
//!   [`SchedulerConfig::pipeline_min`]..=[`SchedulerConfig::pipeline_max`].
//! - **Origin protection:** a peer marked origin is asked only for pieces that no
//!   serviceable non-origin peer holds, and for at most
//!   [`SchedulerConfig::origin_max_inflight`] at once. A holder is serviceable unless banned,
//!   slow (its measured rate under the reference rate, the median of the peers' rates, over
//!   [`SchedulerConfig::slow_peer_ratio`]) or saturated ([`SchedulerConfig::busy_streak_limit`]
//!   "busy" answers in a row): a piece only such peers hold is stranded there.
//!   Within that, the origin is asked first, before the pieces that peers can supply: its
//!   upload is what brings new pieces into the swarm, so it must never idle because every
//!   host is busy with its peers. An origin that answers "seeded" (it sent that piece to
//!   someone else moments ago) is not asked for that piece again for
//!   [`SchedulerConfig::seeded_retry`]; it is asked for others at once.
//! - **Endgame:** once every missing piece is requested, idle peers duplicate the oldest
//!   in-flight pieces (at most [`SchedulerConfig::endgame_duplicates`] requests per piece);
//!   the first copy to arrive cancels the others.
//! - **Late requests:** a request to a peer older than [`SchedulerConfig::late_factor`] times
//!   the time the peer's measured rate, or the reference rate if higher, predicts for the
//!   piece (at least
//!   [`SchedulerConfig::late_floor`]; [`SchedulerConfig::late_unmeasured`] for a peer with no
//!   rate yet) stops counting against the download's pipeline, and its piece may be asked of
//!   another peer at once (first, before new pieces), up to the duplicate limit, or of an
//!   origin when no other peer holds it (a crawling seeder must not stall the swarm). A crawling or
//!   silently dead peer (a killed process sends no close) therefore costs a few piece-times,
//!   not the [`SchedulerConfig::request_timeout`], which still cancels the request itself.
//! - **Incoming pieces (cut-through):** a peer that announced it is receiving a piece offers
//!   it as a holder does (it relays the piece as each chunk group verifies), in availability,
//!   rarest-first and origin protection alike, but late rescues and endgame duplicates go to
//!   holders only (a relay may wait on the same slow source). A relay that fails
//!   ([`Failure::RelayLost`]), or a refusal of a piece the peer only had incoming, withdraws
//!   the offer without counting as a lie.
//! - **Bans:** one response that fails verification bans the peer for this blob for
//!   [`SchedulerConfig::ban_duration`]; its other requests are cancelled and go elsewhere. A
//!   peer that refuses [`SchedulerConfig::max_refusals`] pieces it advertised (a lying
//!   bitfield) is banned too.

use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::blob::{Bitfield, Geometry};

/// Default requests in flight to one peer before its throughput is known, and the floor.
pub const PIPELINE_MIN: u32 = 2;
/// Most requests in flight to one peer.
pub const PIPELINE_MAX: u32 = 16;
/// Most requests in flight to a peer marked origin, per download.
pub const ORIGIN_MAX_INFLIGHT: u32 = 2;
/// Most requests in flight to peers for one download (origin requests come on top). Four
/// pieces are at least 1 MiB, a LAN's bandwidth-delay product many times over; more only wait
/// at busy uploaders (who answer "busy"), which costs CPU and gains nothing. Measured with
/// `tt bench swarm`: 4 and 8 finish alike; 8 draws three times the "busy" answers.
pub const MAX_INFLIGHT_PIECES: u32 = 4;
/// Most requests for one piece at once during the endgame.
pub const ENDGAME_DUPLICATES: u32 = 2;
/// How long a peer that sent one bad chunk group is ignored for that blob.
pub const BAN_DURATION: Duration = Duration::from_secs(600);
/// A request unanswered this long is cancelled and the piece asked elsewhere.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a peer that answered "busy" is left alone.
pub const BUSY_BACKOFF: Duration = Duration::from_millis(200);
/// How long a peer whose stream failed is left alone.
pub const TRANSPORT_BACKOFF: Duration = Duration::from_millis(500);
/// Pieces chosen at random before rarest-first takes over.
pub const RANDOM_FIRST_PIECES: u32 = 1;
/// Refusals of advertised pieces after which a peer is banned as lying.
pub const MAX_REFUSALS: u32 = 3;
/// How long a piece the origin declined as "seeded" is left to the swarm before the origin
/// is asked for it again (if no usable peer holds it by then).
/// About the time a piece takes to cross a healthy swarm through peers; a swarm cut off from
/// the piece's receiver (a partition) gets it from the origin after this (once the origin's
/// repeat window has passed).
pub const SEEDED_RETRY: Duration = Duration::from_secs(1);
/// A request is late once older than this many times its expected duration.
pub const LATE_FACTOR: f64 = 4.0;
/// Shortest age at which a request may be late (covers scheduling noise on small pieces).
pub const LATE_FLOOR: Duration = Duration::from_millis(500);
/// Age at which a request to a peer with no measured rate yet is late.
pub const LATE_UNMEASURED: Duration = Duration::from_secs(2);
/// Round-trip time assumed until the transport reports one.
pub const DEFAULT_RTT: Duration = Duration::from_millis(10);
/// A peer whose measured rate is below the download's reference rate (the median of its
/// peers' rates) divided by this is slow: its pieces do not keep a piece from the origin.
pub const SLOW_PEER_RATIO: f64 = 8.0;
/// "Busy" answers in a row, with no piece delivered between, after which a peer's pieces do
/// not keep a piece from the origin until it delivers again (a crawling seeder is busy with
/// its few uploads for seconds at a time).
pub const BUSY_STREAK_LIMIT: u32 = 3;
/// Weight of a new throughput sample in the moving average.
const RATE_EWMA_WEIGHT: f64 = 0.3;

/// A peer, by the address of its blob endpoint.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PeerId(pub SocketAddr);

impl fmt::Display for PeerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl fmt::Debug for PeerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PeerId({})", self.0)
    }
}

/// What a peer is to the downloader.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerRole {
    /// Another host: a seeder or a partial peer.
    Peer,
    /// The origin (a coordinator): used last, for pieces nobody else has.
    Origin,
}

/// Tuning for a [`Scheduler`]. Build with [`SchedulerConfig::recommended`] and adjust.
#[derive(Debug, Clone)]
pub struct SchedulerConfig {
    pub pipeline_min: u32,
    pub pipeline_max: u32,
    pub origin_max_inflight: u32,
    pub max_inflight: u32,
    pub endgame_duplicates: u32,
    pub ban_duration: Duration,
    pub request_timeout: Duration,
    pub busy_backoff: Duration,
    pub transport_backoff: Duration,
    pub random_first_pieces: u32,
    pub max_refusals: u32,
    pub seeded_retry: Duration,
    pub late_factor: f64,
    pub late_floor: Duration,
    pub late_unmeasured: Duration,
    pub slow_peer_ratio: f64,
    pub busy_streak_limit: u32,
    /// Seed of the tie-breaking randomness; the shell draws it from the OS.
    pub seed: u64,
}

impl SchedulerConfig {
    /// The module's constants, with `seed`.
    pub fn recommended(seed: u64) -> SchedulerConfig {
        SchedulerConfig {
            pipeline_min: PIPELINE_MIN,
            pipeline_max: PIPELINE_MAX,
            origin_max_inflight: ORIGIN_MAX_INFLIGHT,
            max_inflight: MAX_INFLIGHT_PIECES,
            endgame_duplicates: ENDGAME_DUPLICATES,
            ban_duration: BAN_DURATION,
            request_timeout: REQUEST_TIMEOUT,
            busy_backoff: BUSY_BACKOFF,
            transport_backoff: TRANSPORT_BACKOFF,
            random_first_pieces: RANDOM_FIRST_PIECES,
            max_refusals: MAX_REFUSALS,
            seeded_retry: SEEDED_RETRY,
            late_factor: LATE_FACTOR,
            late_floor: LATE_FLOOR,
            late_unmeasured: LATE_UNMEASURED,
            slow_peer_ratio: SLOW_PEER_RATIO,
            busy_streak_limit: BUSY_STREAK_LIMIT,
            seed,
        }
    }
}

/// What the shell should do next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Ask `peer` for `piece`.
    Request { peer: PeerId, piece: u32 },
    /// Stop the request for `piece` to `peer` (another copy arrived, the peer was banned, or
    /// the request timed out). Its outcome will be ignored.
    Cancel { peer: PeerId, piece: u32 },
}

/// Why a request failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// The response failed BLAKE3 verification or broke the protocol: ban the peer.
    Corrupt,
    /// The peer said it does not hold a piece it had advertised.
    NotHeld,
    /// The peer is at its upload limit.
    Busy,
    /// The stream or connection failed.
    Transport,
    /// The origin sent this piece to another peer moments ago: get it from the swarm.
    Seeded,
    /// The peer was relaying a piece it was receiving, and its own transfer failed.
    RelayLost,
}

/// Per-peer figures, for reports and benchmarks.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PeerStats {
    pub role: PeerRole,
    pub pieces_held: u64,
    pub inflight: u32,
    /// Measured throughput (moving average), bytes per second.
    pub rate_bytes_per_sec: Option<f64>,
    pub pieces_received: u64,
    pub bad_responses: u32,
    pub banned: bool,
}

#[derive(Debug)]
struct Peer {
    role: PeerRole,
    have: Bitfield,
    /// Pieces the peer announced it is receiving (and relays as they verify); never one it
    /// has already (disjoint from `have`).
    incoming: Bitfield,
    inflight: u32,
    rate: Option<f64>,
    last_delivery: Option<Instant>,
    rtt: Duration,
    backoff_until: Option<Instant>,
    refusals: u32,
    pieces_received: u64,
    /// "Busy" answers since the last piece it delivered.
    busy_streak: u32,
}

impl Peer {
    /// Whether the peer holds `piece` or is receiving it.
    fn offers(&self, piece: u32) -> bool {
        self.have.get(piece.into()) || self.incoming.get(piece.into())
    }

    /// Whether the peer holds or is receiving anything.
    fn offers_any(&self) -> bool {
        self.have.count() > 0 || self.incoming.count() > 0
    }

    /// Pieces held or being received (disjoint sets).
    fn offered(&self) -> impl Iterator<Item = u64> + '_ {
        self.have.ones().chain(self.incoming.ones())
    }
}

#[derive(Debug, Clone, Copy)]
struct Inflight {
    peer: PeerId,
    since: Instant,
    /// Made to a peer in the origin role (counted in `n_origin_inflight`).
    to_origin: bool,
}

/// The download scheduler. See the module docs for the policy.
#[derive(Debug)]
pub struct Scheduler {
    config: SchedulerConfig,
    geometry: Geometry,
    done: Bitfield,
    inflight: BTreeMap<u32, Vec<Inflight>>,
    /// Requests in flight per piece (the lengths of `inflight`'s lists, dense for speed).
    requested: Vec<u8>,
    n_inflight: u32,
    /// Requests in flight to origins (not limited by [`SchedulerConfig::max_inflight`]).
    n_origin_inflight: u32,
    /// Pieces an origin declined as seeded, until when it is not asked for them again.
    seeded: BTreeMap<u32, Instant>,
    peers: BTreeMap<PeerId, Peer>,
    /// Bans outlive connections: a banned peer that reconnects stays banned.
    bans: BTreeMap<PeerId, Instant>,
    bad_responses: BTreeMap<PeerId, u32>,
    /// How often each peer was banned (bans expire; this does not).
    ban_count: BTreeMap<PeerId, u32>,
    /// Per piece: usable (connected, not banned) non-origin peers holding or receiving it.
    availability: Vec<u32>,
    /// The median measured rate of the non-origin peers, bytes per second: what a request
    /// is expected to get here (lateness, slow peers).
    reference_rate: Option<f64>,
    cancels: VecDeque<(PeerId, u32)>,
    rng: u64,
}

impl Scheduler {
    /// A scheduler for a blob of `geometry`, of which the pieces in `held` are already held.
    pub fn new(config: SchedulerConfig, geometry: Geometry, held: &Bitfield) -> Scheduler {
        assert_eq!(held.len(), u64::from(geometry.n_pieces()), "held bitfield length");
        Scheduler {
            rng: config.seed | 1,
            config,
            geometry,
            done: held.clone(),
            inflight: BTreeMap::new(),
            requested: vec![0; geometry.n_pieces() as usize],
            n_inflight: 0,
            n_origin_inflight: 0,
            seeded: BTreeMap::new(),
            peers: BTreeMap::new(),
            bans: BTreeMap::new(),
            bad_responses: BTreeMap::new(),
            ban_count: BTreeMap::new(),
            availability: vec![0; geometry.n_pieces() as usize],
            reference_rate: None,
            cancels: VecDeque::new(),
        }
    }

    /// True when every piece is held.
    pub fn is_complete(&self) -> bool {
        self.done.is_full()
    }

    /// Pieces held.
    pub fn pieces_done(&self) -> u64 {
        self.done.count()
    }

    /// Requests in flight.
    pub fn inflight(&self) -> u32 {
        self.n_inflight
    }

    /// Whether `peer` is banned at `now`.
    pub fn is_banned(&self, peer: PeerId, now: Instant) -> bool {
        self.bans.get(&peer).is_some_and(|&until| until > now)
    }

    /// Every peer that is or was banned during this download, with how often.
    pub fn banned_peers(&self) -> Vec<(PeerId, u32)> {
        self.ban_count.iter().map(|(&peer, &n)| (peer, n)).collect()
    }

    /// Connected peers.
    pub fn peers(&self) -> impl Iterator<Item = PeerId> + '_ {
        self.peers.keys().copied()
    }

    /// Whether `peer` has delivered a piece and its measured rate is not slow (see
    /// [`SchedulerConfig::slow_peer_ratio`]): a source worth relaying from as it arrives.
    pub fn is_proven_fast(&self, peer: PeerId) -> bool {
        self.peers.get(&peer).is_some_and(|p| p.rate.is_some() && !self.is_slow(p))
    }

    /// Figures for `peer`, if connected.
    pub fn peer_stats(&self, peer: PeerId, now: Instant) -> Option<PeerStats> {
        let state = self.peers.get(&peer)?;
        Some(PeerStats {
            role: state.role,
            pieces_held: state.have.count(),
            inflight: state.inflight,
            rate_bytes_per_sec: state.rate,
            pieces_received: state.pieces_received,
            bad_responses: self.bad_responses.get(&peer).copied().unwrap_or(0),
            banned: self.is_banned(peer, now),
        })
    }

    /// True if some missing piece is in flight or held by a usable peer: the download can
    /// progress without new peers.
    pub fn can_progress(&self, now: Instant) -> bool {
        if self.n_inflight > 0 || self.is_complete() {
            return true;
        }
        self.peers.iter().any(|(&id, peer)| {
            !self.is_banned(id, now) && peer.offered().any(|piece| !self.done.get(piece))
        })
    }

    /// A peer connected (or reconnected, or was re-announced with another role). Its
    /// bitfield follows.
    pub fn handle_peer_joined(&mut self, peer: PeerId, role: PeerRole, now: Instant) {
        if let Some(state) = self.peers.get(&peer) {
            if state.role != role {
                self.count_availability(peer, now, false);
                self.peers.get_mut(&peer).expect("present").role = role;
                self.count_availability(peer, now, true);
            }
            return;
        }
        self.peers.insert(
            peer,
            Peer {
                role,
                have: Bitfield::new(self.done.len()),
                incoming: Bitfield::new(self.done.len()),
                inflight: 0,
                rate: None,
                last_delivery: None,
                rtt: DEFAULT_RTT,
                backoff_until: None,
                refusals: 0,
                pieces_received: 0,
                busy_streak: 0,
            },
        );
    }

    /// The peer's full set of pieces. A bitfield of the wrong length is a lie: ban.
    pub fn handle_bitfield(&mut self, peer: PeerId, pieces: Bitfield, now: Instant) {
        if !self.peers.contains_key(&peer) {
            return;
        }
        if pieces.len() != self.done.len() {
            self.ban(peer, now);
            return;
        }
        self.count_availability(peer, now, false);
        let state = self.peers.get_mut(&peer).expect("present");
        // A bitfield is the peer's whole state: what it was receiving is in it or gone.
        state.incoming = Bitfield::new(self.done.len());
        state.have = pieces;
        self.count_availability(peer, now, true);
    }

    /// The peer completed `piece`. A piece outside the blob is a lie: ban.
    pub fn handle_have(&mut self, peer: PeerId, piece: u32, now: Instant) {
        if piece >= self.geometry.n_pieces() {
            self.ban(peer, now);
            return;
        }
        let counts = self.counts(peer, now);
        let Some(state) = self.peers.get_mut(&peer) else { return };
        let was_offered = state.incoming.clear(piece.into());
        if state.have.set(piece.into()) && !was_offered && counts {
            self.availability[piece as usize] += 1;
        }
    }

    /// The peer is receiving `piece` and relays it as it verifies. A piece outside the blob
    /// is a lie: ban.
    pub fn handle_incoming(&mut self, peer: PeerId, piece: u32, now: Instant) {
        if piece >= self.geometry.n_pieces() {
            self.ban(peer, now);
            return;
        }
        let counts = self.counts(peer, now);
        let Some(state) = self.peers.get_mut(&peer) else { return };
        if !state.have.get(piece.into()) && state.incoming.set(piece.into()) && counts {
            self.availability[piece as usize] += 1;
        }
    }

    /// The peer holds nothing of the blob (any more).
    pub fn handle_dont_have(&mut self, peer: PeerId, now: Instant) {
        if self.peers.contains_key(&peer) {
            self.handle_bitfield(peer, Bitfield::new(self.done.len()), now);
        }
    }

    /// The connection to the peer is gone; its requests are void (no cancel is emitted).
    pub fn handle_peer_left(&mut self, peer: PeerId, now: Instant) {
        if !self.peers.contains_key(&peer) {
            return;
        }
        self.count_availability(peer, now, false);
        self.peers.remove(&peer);
        self.drop_requests_of(peer, false);
        self.update_reference_rate();
    }

    /// The transport measured this round-trip time to the peer.
    pub fn handle_rtt(&mut self, peer: PeerId, rtt: Duration) {
        if let Some(state) = self.peers.get_mut(&peer) {
            state.rtt = rtt;
        }
    }

    /// `piece` arrived whole and verified from `peer`. Cancels any duplicates.
    pub fn handle_piece_received(&mut self, peer: PeerId, piece: u32, now: Instant) {
        let since = self.take_request(peer, piece);
        let piece_len = self.geometry.piece_len(piece) as f64;
        if let Some(state) = self.peers.get_mut(&peer) {
            state.pieces_received += 1;
            state.busy_streak = 0;
            if let Some(since) = since {
                let start = state.last_delivery.map_or(since, |last| last.max(since));
                let secs = now.saturating_duration_since(start).as_secs_f64().max(1e-4);
                let sample = piece_len / secs;
                state.rate = Some(match state.rate {
                    None => sample,
                    Some(rate) => rate + RATE_EWMA_WEIGHT * (sample - rate),
                });
            }
            state.last_delivery = Some(now);
        }
        self.update_reference_rate();
        if self.done.set(piece.into()) {
            let others: Vec<PeerId> = self
                .inflight
                .get(&piece)
                .map(|list| list.iter().map(|r| r.peer).collect())
                .unwrap_or_default();
            for other in others {
                self.take_request(other, piece);
                self.cancels.push_back((other, piece));
            }
        }
    }

    /// The request for `piece` to `peer` failed.
    pub fn handle_piece_failed(
        &mut self,
        peer: PeerId,
        piece: u32,
        failure: Failure,
        now: Instant,
    ) {
        self.take_request(peer, piece);
        match failure {
            Failure::Corrupt => {
                *self.bad_responses.entry(peer).or_default() += 1;
                self.ban(peer, now);
            }
            Failure::NotHeld => {
                if self.withdraw_incoming(peer, piece, now) {
                    // Its relay ended between the announcement and the request: no lie.
                    return;
                }
                let counts = self.counts(peer, now);
                let Some(state) = self.peers.get_mut(&peer) else { return };
                if state.have.clear(piece.into()) && counts {
                    self.availability[piece as usize] -= 1;
                }
                state.refusals += 1;
                if state.refusals >= self.config.max_refusals {
                    self.ban(peer, now);
                }
            }
            Failure::RelayLost => {
                self.withdraw_incoming(peer, piece, now);
            }
            Failure::Busy => {
                if let Some(state) = self.peers.get_mut(&peer) {
                    state.busy_streak += 1;
                }
                self.back_off(peer, now + self.config.busy_backoff);
            }
            Failure::Transport => self.back_off(peer, now + self.config.transport_backoff),
            Failure::Seeded => {
                self.seeded.insert(piece, now + self.config.seeded_retry);
            }
        }
    }

    /// Forgets that `peer` is receiving `piece`; returns whether it was.
    fn withdraw_incoming(&mut self, peer: PeerId, piece: u32, now: Instant) -> bool {
        let counts = self.counts(peer, now);
        let Some(state) = self.peers.get_mut(&peer) else { return false };
        if !state.incoming.clear(piece.into()) {
            return false;
        }
        if counts {
            self.availability[piece as usize] -= 1;
        }
        true
    }

    /// Expires bans and backoffs, and cancels requests older than the request timeout.
    pub fn handle_timeout(&mut self, now: Instant) {
        let expired: Vec<PeerId> =
            self.bans.iter().filter(|&(_, &until)| until <= now).map(|(&p, _)| p).collect();
        for peer in expired {
            self.bans.remove(&peer);
            self.count_availability(peer, now, true);
        }
        for state in self.peers.values_mut() {
            if state.backoff_until.is_some_and(|until| until <= now) {
                state.backoff_until = None;
            }
        }
        self.seeded.retain(|_, until| *until > now);
        let timeout = self.config.request_timeout;
        let stale: Vec<(u32, PeerId)> = self
            .inflight
            .iter()
            .flat_map(|(&piece, list)| list.iter().map(move |r| (piece, *r)))
            .filter(|(_, r)| r.since + timeout <= now)
            .map(|(piece, r)| (piece, r.peer))
            .collect();
        for (piece, peer) in stale {
            self.take_request(peer, piece);
            if let Some(state) = self.peers.get_mut(&peer) {
                // A peer that sat on a request is slow, whatever it measured before.
                state.rate = state.rate.map(|rate| rate / 2.0);
            }
            self.cancels.push_back((peer, piece));
        }
    }

    /// The earliest time after `now` at which something changes by itself: a request times
    /// out or turns late, a ban, backoff or "seeded" answer expires. A request that is late
    /// already stays late until it ends, so it wakes nobody again (a driver that slept until
    /// a past instant would spin for as long as the request lasts).
    pub fn poll_timeout(&self, now: Instant) -> Option<Instant> {
        // `handle_timeout` cancels timed-out requests and clears expired bans and backoffs,
        // so those deadlines are past only until it runs.
        let requests =
            self.inflight.values().flatten().map(|r| r.since + self.config.request_timeout);
        let late = self
            .inflight
            .iter()
            .flat_map(|(&piece, list)| {
                list.iter().filter_map(move |r| Some(r.since + self.late_after(r, piece)?))
            })
            .filter(|&at| at > now);
        let bans = self.bans.values().copied();
        let backoffs = self.peers.values().filter_map(|p| p.backoff_until);
        let seeded = self.seeded.values().copied();
        requests.chain(late).chain(bans).chain(backoffs).chain(seeded).min()
    }

    /// How old `r` (for `piece`) may get before it is late; `None` for origin requests, which
    /// are never duplicated on lateness (origin protection).
    fn late_after(&self, r: &Inflight, piece: u32) -> Option<Duration> {
        if r.to_origin {
            return None;
        }
        // A peer is expected to do at least as well as the download's reference: a crawling
        // peer's requests are late when a typical peer's would be, not when its own rate says.
        let own = self.peers.get(&r.peer).and_then(|p| p.rate);
        let rate = match (own, self.reference_rate) {
            (Some(own), Some(reference)) => Some(own.max(reference)),
            (own, reference) => own.or(reference),
        };
        Some(match rate {
            None => self.config.late_unmeasured,
            Some(rate) => {
                let expected = self.geometry.piece_len(piece) as f64 / rate.max(1.0);
                Duration::from_secs_f64((expected * self.config.late_factor).min(3600.0))
                    .max(self.config.late_floor)
            }
        })
    }

    fn is_late(&self, r: &Inflight, piece: u32, now: Instant) -> bool {
        self.late_after(r, piece).is_some_and(|after| r.since + after <= now)
    }

    /// Missing pieces whose every request is late and that may take one more request, oldest
    /// request first; and how many peer requests are late.
    fn late_pieces(&self, now: Instant) -> (Vec<u32>, u32) {
        let mut late_requests = 0;
        let mut pieces: Vec<(Instant, u32)> = Vec::new();
        for (&piece, list) in &self.inflight {
            let late = list.iter().filter(|r| self.is_late(r, piece, now)).count();
            late_requests += late as u32;
            if late == list.len() && list.len() < self.config.endgame_duplicates as usize {
                pieces.push((list.iter().map(|r| r.since).min().expect("non-empty"), piece));
            }
        }
        pieces.sort();
        (pieces.into_iter().map(|(_, p)| p).collect(), late_requests)
    }

    /// The next thing to do, or `None` until an event changes something.
    pub fn poll_action(&mut self, now: Instant) -> Option<Action> {
        if let Some((peer, piece)) = self.cancels.pop_front() {
            return Some(Action::Cancel { peer, piece });
        }
        if self.is_complete() {
            return None;
        }
        let order = self.peer_order(now);
        if order.is_empty() {
            // Every usable peer's pipeline is full: the common case after an event.
            return None;
        }
        // Non-origin peers sort before origins (see `peer_order`).
        let split = order.iter().position(|&(origin, _)| origin).unwrap_or(order.len());
        let peers: Vec<PeerId> = order[..split].iter().map(|&(_, id)| id).collect();
        let origins: Vec<PeerId> = order[split..].iter().map(|&(_, id)| id).collect();
        let (late, late_requests) = self.late_pieces(now);
        let live = self.n_inflight - self.n_origin_inflight - late_requests;
        let peers_full = live >= self.config.max_inflight;
        if origins.is_empty() && peers_full {
            return None;
        }
        let wanted: Vec<u32> = (0..self.geometry.n_pieces())
            .filter(|&p| !self.done.get(p.into()) && self.requested[p as usize] == 0)
            .collect();
        // Origins first (see the module docs); they only take pieces no peer can supply.
        for &peer in &origins {
            if let Some(piece) = self.pick_new(peer, &wanted, now) {
                return Some(self.request(peer, piece, now));
            }
        }
        if peers_full {
            return None;
        }
        // Rescue late pieces first: they are what the download waits on. Another peer that
        // holds the piece comes first; when none does (its only holders crawl), an origin that
        // holds it and has not declined it as seeded, or a crawling seeder would stall every
        // download for as long as it lives.
        for &piece in &late {
            let asked = &self.inflight[&piece];
            // Only a holder: a relay may be waiting on the same slow source.
            let can_rescue = |p: &PeerId| {
                self.peers[p].have.get(piece.into()) && asked.iter().all(|r| r.peer != *p)
            };
            let seeded = self.seeded.get(&piece).is_some_and(|&until| until > now);
            let rescuer = peers
                .iter()
                .copied()
                .find(can_rescue)
                .or_else(|| origins.iter().copied().filter(|_| !seeded).find(can_rescue));
            if let Some(peer) = rescuer {
                return Some(self.request(peer, piece, now));
            }
        }
        for peer in peers {
            if let Some(piece) = self.pick_new(peer, &wanted, now) {
                return Some(self.request(peer, piece, now));
            }
        }
        if wanted.is_empty() {
            for peer in order.iter().map(|&(_, id)| id) {
                if let Some(piece) = self.pick_duplicate(peer, now) {
                    return Some(self.request(peer, piece, now));
                }
            }
        }
        None
    }

    /// Usable peers with pipeline room, in preference order (non-origin peers first), each
    /// with whether it is an origin.
    fn peer_order(&self, now: Instant) -> Vec<(bool, PeerId)> {
        let mut order: Vec<(bool, f64, PeerId)> = self
            .peers
            .iter()
            .filter(|&(&id, peer)| {
                peer.offers_any()
                    && peer.inflight < self.depth(peer)
                    && peer.backoff_until.is_none_or(|until| until <= now)
                    && !self.is_banned(id, now)
            })
            // Unmeasured peers sort first (as infinitely fast) so that they get tried.
            .map(|(&id, peer)| {
                (peer.role == PeerRole::Origin, -peer.rate.unwrap_or(f64::INFINITY), id)
            })
            .collect();
        order.sort_by(|a, b| a.partial_cmp(b).expect("rates are not NaN"));
        order.into_iter().map(|(origin, _, id)| (origin, id)).collect()
    }

    fn depth(&self, peer: &Peer) -> u32 {
        if peer.role == PeerRole::Origin {
            return self.config.origin_max_inflight;
        }
        let Some(rate) = peer.rate else { return self.config.pipeline_min };
        let bdp_pieces = rate * peer.rtt.as_secs_f64() / self.geometry.piece_bytes() as f64;
        let depth = bdp_pieces.ceil().min(f64::from(self.config.pipeline_max)) as u32 + 1;
        depth.clamp(self.config.pipeline_min, self.config.pipeline_max)
    }

    /// A piece of `wanted` (missing, not requested) that `peer` holds: random at first, then
    /// rarest. An origin gets only pieces no serviceable peer holds and it has not declined.
    fn pick_new(&mut self, peer: PeerId, wanted: &[u32], now: Instant) -> Option<u32> {
        let state = &self.peers[&peer];
        let origin = state.role == PeerRole::Origin;
        // Computed once, not per piece: which peers' pieces keep a piece from an origin.
        let suppliers = if origin { self.suppliers(now) } else { Vec::new() };
        let random = self.done.count() < u64::from(self.config.random_first_pieces);
        let mut rng = self.rng;
        let mut best: Option<(u32, u32)> = None; // (availability, piece)
        let mut ties = 0u64;
        for &piece in wanted {
            if self.requested[piece as usize] > 0 || !state.offers(piece) {
                continue;
            }
            let availability = self.availability[piece as usize];
            if origin
                && (self.seeded.get(&piece).is_some_and(|&until| until > now)
                    || self.supplied_by(&suppliers, piece))
            {
                continue;
            }
            let key = if random { 0 } else { availability };
            match best {
                Some((best_key, _)) if key > best_key => {}
                Some((best_key, _)) if key == best_key => {
                    // Reservoir sampling among equals.
                    ties += 1;
                    if next_random(&mut rng).is_multiple_of(ties) {
                        best = Some((key, piece));
                    }
                }
                _ => {
                    best = Some((key, piece));
                    ties = 1;
                }
            }
        }
        self.rng = rng;
        best.map(|(_, piece)| piece)
    }

    /// An in-flight piece `peer` could duplicate in the endgame: the oldest request first.
    fn pick_duplicate(&self, peer: PeerId, now: Instant) -> Option<u32> {
        let state = &self.peers[&peer];
        let origin = state.role == PeerRole::Origin;
        let suppliers = if origin { self.suppliers(now) } else { Vec::new() };
        self.inflight
            .iter()
            .filter(|&(&piece, list)| {
                state.have.get(piece.into())
                    && list.len() < self.config.endgame_duplicates as usize
                    && list.iter().all(|r| r.peer != peer)
                    && (!origin || !self.supplied_by(&suppliers, piece))
            })
            .min_by_key(|(_, list)| list.iter().map(|r| r.since).min())
            .map(|(&piece, _)| piece)
    }

    /// The non-origin peers that can be expected to serve soon: not banned, not answering
    /// "busy" again and again, not slow. A piece only slow or saturated peers hold (or
    /// receive) is stranded there, and an origin may be asked for it.
    fn suppliers(&self, now: Instant) -> Vec<&Peer> {
        self.peers
            .iter()
            .filter(|&(&id, p)| {
                p.role == PeerRole::Peer
                    && p.busy_streak < self.config.busy_streak_limit
                    && !self.is_slow(p)
                    && !self.is_banned(id, now)
            })
            .map(|(_, p)| p)
            .collect()
    }

    /// Whether one of `suppliers` (see [`Scheduler::suppliers`]) holds or receives `piece`.
    fn supplied_by(&self, suppliers: &[&Peer], piece: u32) -> bool {
        self.availability[piece as usize] > 0 && suppliers.iter().any(|p| p.offers(piece))
    }

    fn is_slow(&self, peer: &Peer) -> bool {
        match (peer.rate, self.reference_rate) {
            (Some(rate), Some(reference)) => rate * self.config.slow_peer_ratio < reference,
            _ => false,
        }
    }

    /// Recomputes [`Scheduler::reference_rate`]: the median of the measured non-origin rates.
    fn update_reference_rate(&mut self) {
        let mut rates: Vec<f64> = self
            .peers
            .values()
            .filter(|p| p.role == PeerRole::Peer)
            .filter_map(|p| p.rate)
            .collect();
        rates.sort_by(f64::total_cmp);
        self.reference_rate = rates.get(rates.len() / 2).copied();
    }

    fn request(&mut self, peer: PeerId, piece: u32, now: Instant) -> Action {
        let state = self.peers.get_mut(&peer).expect("present");
        state.inflight += 1;
        let to_origin = state.role == PeerRole::Origin;
        self.n_origin_inflight += u32::from(to_origin);
        self.inflight.entry(piece).or_default().push(Inflight { peer, since: now, to_origin });
        self.requested[piece as usize] += 1;
        self.n_inflight += 1;
        Action::Request { peer, piece }
    }

    /// Forgets the request for `piece` to `peer`; returns when it was made, if it existed.
    fn take_request(&mut self, peer: PeerId, piece: u32) -> Option<Instant> {
        let list = self.inflight.get_mut(&piece)?;
        let index = list.iter().position(|r| r.peer == peer)?;
        let request = list.swap_remove(index);
        if list.is_empty() {
            self.inflight.remove(&piece);
        }
        self.requested[piece as usize] -= 1;
        self.n_inflight -= 1;
        self.n_origin_inflight -= u32::from(request.to_origin);
        if let Some(state) = self.peers.get_mut(&peer) {
            state.inflight -= 1;
        }
        Some(request.since)
    }

    fn drop_requests_of(&mut self, peer: PeerId, cancel: bool) {
        let pieces: Vec<u32> = self
            .inflight
            .iter()
            .filter(|(_, list)| list.iter().any(|r| r.peer == peer))
            .map(|(&piece, _)| piece)
            .collect();
        for piece in pieces {
            self.take_request(peer, piece);
            if cancel {
                self.cancels.push_back((peer, piece));
            }
        }
    }

    fn ban(&mut self, peer: PeerId, now: Instant) {
        if !self.is_banned(peer, now) {
            self.count_availability(peer, now, false);
            *self.ban_count.entry(peer).or_default() += 1;
        }
        self.bans.insert(peer, now + self.config.ban_duration);
        self.drop_requests_of(peer, true);
    }

    fn back_off(&mut self, peer: PeerId, until: Instant) {
        if let Some(state) = self.peers.get_mut(&peer) {
            state.backoff_until = Some(state.backoff_until.map_or(until, |u| u.max(until)));
        }
    }

    /// Whether `peer`'s offers count in the availability: connected, a non-origin peer, and
    /// not banned.
    fn counts(&self, peer: PeerId, now: Instant) -> bool {
        !self.is_banned(peer, now)
            && self.peers.get(&peer).is_some_and(|p| p.role == PeerRole::Peer)
    }

    /// Adds (`add`) or removes the peer's pieces from the availability counts, if it counts.
    fn count_availability(&mut self, peer: PeerId, now: Instant, add: bool) {
        if !self.counts(peer, now) {
            return;
        }
        let state = &self.peers[&peer];
        for piece in state.offered() {
            let count = &mut self.availability[piece as usize];
            if add {
                *count += 1;
            } else {
                *count -= 1;
            }
        }
    }
}

/// xorshift64: deterministic, seeded tie-breaking. Not for anything secret.
fn next_random(state: &mut u64) -> u64 {
    let mut x = *state;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    *state = x;
    x
}

#[cfg(test)]
mod tests;
