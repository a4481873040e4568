//! A UDP datagram fault proxy: one listening socket in front of one upstream address.
//!
//! QUIC is UDP and this machine has neither `netem` nor `iptables`, so every link the chaos
//! suite breaks goes through one of these (etcd's robustness tests use the same user-space
//! design). Each client source address gets its own upstream socket, so the upstream sees one
//! peer per client and answers find their way back.
//!
//! The decision of what happens to a datagram is a pure function, [`Shaper::decide`], of the
//! current [`LinkFaults`], the datagram's direction, size and client port, the time and a seeded
//! RNG: a run with the same seed and the same traffic makes the same decisions. [`Proxy`] is the
//! IO shell around it: sockets, a delay queue, counters.

use std::cmp::Reverse;
use std::collections::{BTreeSet, BinaryHeap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use serde::{Deserialize, Serialize};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// Largest datagram the proxy forwards (the UDP maximum).
pub const MAX_DATAGRAM_BYTES: usize = 65_535;
/// Client sessions (one upstream socket each) kept at once; the least recently seen is dropped
/// beyond this.
pub const MAX_CLIENTS: usize = 4096;
/// Datagrams waiting in the delay queue; beyond this new delayed datagrams are dropped.
pub const DELAY_QUEUE_DATAGRAMS: usize = 65_536;
/// Extra hold of a datagram chosen for reordering, so that later ones overtake it.
pub const REORDER_HOLD: Duration = Duration::from_millis(25);
/// Gap between a datagram and its duplicate.
pub const DUPLICATE_GAP: Duration = Duration::from_millis(1);
/// Longest a datagram may queue behind the bandwidth cap before it is dropped instead.
pub const MAX_SHAPING_DELAY: Duration = Duration::from_millis(500);
/// The token bucket's burst, as time at the capped rate.
pub const BANDWIDTH_BURST: Duration = Duration::from_millis(50);
/// The smallest burst, so that one full-size QUIC datagram always fits.
pub const MIN_BURST_BYTES: u64 = 2_048;
/// Pause after a failed receive from the upstream (nothing listening: a killed node).
pub const UPSTREAM_ERROR_PAUSE: Duration = Duration::from_millis(10);

/// Which way a datagram travels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// From a client to the upstream.
    ToUpstream,
    /// From the upstream back to a client.
    ToClient,
}

/// The faults a link applies now. The default is a perfect link.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LinkFaults {
    /// Drop everything, both ways (peers see silence, not resets).
    pub blackhole: bool,
    /// Drop datagrams from clients to the upstream (a one-way partition).
    pub drop_to_upstream: bool,
    /// Drop datagrams from the upstream to clients (the other one-way partition).
    pub drop_to_client: bool,
    /// Added to every datagram's delivery time.
    pub delay_ms: u64,
    /// The delay varies uniformly by up to this much either way (which also reorders).
    pub jitter_ms: u64,
    /// Probability that a datagram is dropped.
    pub drop_rate: f64,
    /// Probability that a datagram is delivered twice.
    pub duplicate_rate: f64,
    /// Probability that a datagram is held back [`REORDER_HOLD`] so later ones overtake it.
    pub reorder_rate: f64,
    /// Cap on bytes per second in each direction (a token bucket; excess queues, then drops).
    pub bandwidth_bytes_per_s: Option<u64>,
    /// Probability that one byte of a datagram is flipped.
    pub corrupt_rate: f64,
    /// Drop datagrams from clients whose source port is in this set (how a process's outgoing
    /// connections are cut: its ephemeral ports, see `procnet`).
    pub drop_from_ports: BTreeSet<u16>,
    /// Drop datagrams to clients whose source port is in this set (the answers to them).
    pub drop_to_ports: BTreeSet<u16>,
}

impl LinkFaults {
    /// Whether every setting is in range.
    pub fn validate(&self) -> Result<(), ProxyError> {
        for (name, p) in [
            ("drop_rate", self.drop_rate),
            ("duplicate_rate", self.duplicate_rate),
            ("reorder_rate", self.reorder_rate),
            ("corrupt_rate", self.corrupt_rate),
        ] {
            if !(0.0..=1.0).contains(&p) {
                return Err(ProxyError::BadFault(format!("{name} {p} is not in [0, 1]")));
            }
        }
        if self.bandwidth_bytes_per_s == Some(0) {
            return Err(ProxyError::BadFault("bandwidth_bytes_per_s must be above 0".into()));
        }
        Ok(())
    }

    /// The same cuts (blackhole, one-way drops, blocked ports) with a perfect link otherwise.
    pub fn cuts_only(&self) -> LinkFaults {
        LinkFaults {
            blackhole: self.blackhole,
            drop_to_upstream: self.drop_to_upstream,
            drop_to_client: self.drop_to_client,
            drop_from_ports: self.drop_from_ports.clone(),
            drop_to_ports: self.drop_to_ports.clone(),
            ..LinkFaults::default()
        }
    }

    /// The same link quality (delay, loss, ...) without any cut.
    pub fn without_cuts(&self) -> LinkFaults {
        LinkFaults {
            blackhole: false,
            drop_to_upstream: false,
            drop_to_client: false,
            drop_from_ports: BTreeSet::new(),
            drop_to_ports: BTreeSet::new(),
            ..self.clone()
        }
    }
}

/// Why a datagram was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    BlockedPort,
    Blackhole,
    OneWay,
    Random,
    Bandwidth,
    QueueFull,
    /// The proxy does not know its upstream yet.
    NoUpstream,
}

/// One delivery of a datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delivery {
    /// How long after arrival it is sent on.
    pub after: Duration,
    /// Byte index and XOR mask (never 0) to corrupt it with.
    pub corrupt: Option<(usize, u8)>,
}

/// What happens to one datagram.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fate {
    Dropped(DropReason),
    /// Delivered once, or twice when duplicated.
    Deliver {
        first: Delivery,
        duplicate: Option<Delivery>,
        reordered: bool,
    },
}

/// A token bucket per direction: `rate` bytes per second, a burst of [`BANDWIDTH_BURST`] at that
/// rate; datagrams that find it empty wait for tokens (at most [`MAX_SHAPING_DELAY`]).
#[derive(Debug, Default)]
pub(crate) struct TokenBucket {
    /// Bytes available; negative while datagrams queue.
    tokens: f64,
    last: Option<Instant>,
}

impl TokenBucket {
    /// Takes `len` bytes' tokens at `rate` and says how long they wait for them (however long).
    pub(crate) fn reserve(&mut self, rate: u64, len: usize, now: Instant) -> Duration {
        let rate = rate as f64;
        let burst = (rate * BANDWIDTH_BURST.as_secs_f64()).max(MIN_BURST_BYTES as f64);
        self.tokens = match self.last {
            None => burst,
            Some(last) => (self.tokens + now.duration_since(last).as_secs_f64() * rate).min(burst),
        };
        self.last = Some(now);
        self.tokens -= len as f64;
        if self.tokens >= 0.0 {
            return Duration::ZERO;
        }
        Duration::from_secs_f64(-self.tokens / rate)
    }

    /// As [`TokenBucket::reserve`], but a datagram that would wait more than
    /// [`MAX_SHAPING_DELAY`] is refused (`None`) and takes no tokens.
    fn admit(&mut self, rate: u64, len: usize, now: Instant) -> Option<Duration> {
        let wait = self.reserve(rate, len, now);
        if wait > MAX_SHAPING_DELAY {
            self.tokens += len as f64;
            return None;
        }
        Some(wait)
    }
}

/// `delay_ms`, varied uniformly by up to `jitter_ms` either way (never below 0).
pub(crate) fn jittered_delay(rng: &mut StdRng, delay_ms: u64, jitter_ms: u64) -> Duration {
    let ms = if jitter_ms > 0 {
        let j = jitter_ms as i64;
        (delay_ms as i64 + rng.random_range(-j..=j)).max(0) as u64
    } else {
        delay_ms
    };
    Duration::from_millis(ms)
}

/// The deterministic decision core of a proxy.
pub struct Shaper {
    rng: StdRng,
    buckets: [TokenBucket; 2],
}

impl Shaper {
    pub fn new(seed: u64) -> Self {
        Self { rng: StdRng::seed_from_u64(seed), buckets: Default::default() }
    }

    /// Decides the fate of a datagram of `len` bytes crossing in `dir` at `now`, from or to the
    /// client whose source port is `client_port`.
    pub fn decide(
        &mut self,
        faults: &LinkFaults,
        dir: Direction,
        client_port: u16,
        len: usize,
        now: Instant,
    ) -> Fate {
        let blocked = match dir {
            Direction::ToUpstream => &faults.drop_from_ports,
            Direction::ToClient => &faults.drop_to_ports,
        };
        if blocked.contains(&client_port) {
            return Fate::Dropped(DropReason::BlockedPort);
        }
        if faults.blackhole {
            return Fate::Dropped(DropReason::Blackhole);
        }
        let one_way = match dir {
            Direction::ToUpstream => faults.drop_to_upstream,
            Direction::ToClient => faults.drop_to_client,
        };
        if one_way {
            return Fate::Dropped(DropReason::OneWay);
        }
        if faults.drop_rate > 0.0 && self.rng.random_bool(faults.drop_rate) {
            return Fate::Dropped(DropReason::Random);
        }
        let mut after = Duration::ZERO;
        if let Some(rate) = faults.bandwidth_bytes_per_s {
            let bucket = &mut self.buckets[dir as usize];
            match bucket.admit(rate, len, now) {
                Some(wait) => after += wait,
                None => return Fate::Dropped(DropReason::Bandwidth),
            }
        }
        after += jittered_delay(&mut self.rng, faults.delay_ms, faults.jitter_ms);
        let reordered = faults.reorder_rate > 0.0 && self.rng.random_bool(faults.reorder_rate);
        if reordered {
            after += REORDER_HOLD;
        }
        let corrupt =
            (len > 0 && faults.corrupt_rate > 0.0 && self.rng.random_bool(faults.corrupt_rate))
                .then(|| (self.rng.random_range(0..len), self.rng.random_range(1..=255u8)));
        let duplicate = (faults.duplicate_rate > 0.0
            && self.rng.random_bool(faults.duplicate_rate))
        .then_some(Delivery { after: after + DUPLICATE_GAP, corrupt: None });
        Fate::Deliver { first: Delivery { after, corrupt }, duplicate, reordered }
    }
}

/// Errors of the proxy.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// The listening socket could not be bound (port in use?).
    #[error("cannot bind the proxy on {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    /// A fault setting is out of range; nothing was changed.
    #[error("bad link fault: {0}")]
    BadFault(String),
    /// The proxy already forwards to another upstream.
    #[error("the proxy already forwards to {0}")]
    UpstreamSet(SocketAddr),
}

/// Counters of one proxy since it started.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProxyStats {
    pub to_upstream: u64,
    pub to_client: u64,
    pub dropped_blocked_port: u64,
    pub dropped_blackhole: u64,
    pub dropped_one_way: u64,
    pub dropped_random: u64,
    pub dropped_bandwidth: u64,
    pub dropped_queue_full: u64,
    pub dropped_no_upstream: u64,
    pub delayed: u64,
    pub reordered: u64,
    pub duplicated: u64,
    pub corrupted: u64,
}

impl ProxyStats {
    /// Datagrams dropped for any reason.
    pub fn dropped(&self) -> u64 {
        self.dropped_blocked_port
            + self.dropped_blackhole
            + self.dropped_one_way
            + self.dropped_random
            + self.dropped_bandwidth
            + self.dropped_queue_full
            + self.dropped_no_upstream
    }

    /// Adds `other` into `self`.
    pub fn add(&mut self, o: &ProxyStats) {
        self.to_upstream += o.to_upstream;
        self.to_client += o.to_client;
        self.dropped_blocked_port += o.dropped_blocked_port;
        self.dropped_blackhole += o.dropped_blackhole;
        self.dropped_one_way += o.dropped_one_way;
        self.dropped_random += o.dropped_random;
        self.dropped_bandwidth += o.dropped_bandwidth;
        self.dropped_queue_full += o.dropped_queue_full;
        self.dropped_no_upstream += o.dropped_no_upstream;
        self.delayed += o.delayed;
        self.reordered += o.reordered;
        self.duplicated += o.duplicated;
        self.corrupted += o.corrupted;
    }
}

#[derive(Default)]
struct Counters {
    to_upstream: AtomicU64,
    to_client: AtomicU64,
    dropped: [AtomicU64; 7],
    delayed: AtomicU64,
    reordered: AtomicU64,
    duplicated: AtomicU64,
    corrupted: AtomicU64,
}

impl Counters {
    fn snapshot(&self) -> ProxyStats {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        ProxyStats {
            to_upstream: get(&self.to_upstream),
            to_client: get(&self.to_client),
            dropped_blocked_port: get(&self.dropped[DropReason::BlockedPort as usize]),
            dropped_blackhole: get(&self.dropped[DropReason::Blackhole as usize]),
            dropped_one_way: get(&self.dropped[DropReason::OneWay as usize]),
            dropped_random: get(&self.dropped[DropReason::Random as usize]),
            dropped_bandwidth: get(&self.dropped[DropReason::Bandwidth as usize]),
            dropped_queue_full: get(&self.dropped[DropReason::QueueFull as usize]),
            dropped_no_upstream: get(&self.dropped[DropReason::NoUpstream as usize]),
            delayed: get(&self.delayed),
            reordered: get(&self.reordered),
            duplicated: get(&self.duplicated),
            corrupted: get(&self.corrupted),
        }
    }
}

struct Decider {
    faults: LinkFaults,
    shaper: Shaper,
}

/// Where a delayed datagram goes.
enum Target {
    Upstream(Arc<UdpSocket>),
    Client(SocketAddr),
}

struct Scheduled {
    at: Instant,
    seq: u64,
    bytes: Vec<u8>,
    target: Target,
}

impl PartialEq for Scheduled {
    fn eq(&self, o: &Self) -> bool {
        (self.at, self.seq) == (o.at, o.seq)
    }
}
impl Eq for Scheduled {}
impl PartialOrd for Scheduled {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Scheduled {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        (self.at, self.seq).cmp(&(o.at, o.seq))
    }
}

struct Session {
    socket: Arc<UdpSocket>,
    last_seen: Instant,
    reader: JoinHandle<()>,
}

struct Shared {
    listener: Arc<UdpSocket>,
    upstream: OnceLock<SocketAddr>,
    decider: Mutex<Decider>,
    counters: Counters,
    sessions: Mutex<HashMap<SocketAddr, Session>>,
    delayed: mpsc::Sender<Scheduled>,
    seq: AtomicU64,
}

/// A running proxy. Dropping it stops it.
pub struct Proxy {
    listen: SocketAddr,
    shared: Arc<Shared>,
    tasks: Vec<JoinHandle<()>>,
}

impl Proxy {
    /// Binds `listen` (port 0 picks one) and forwards to `upstream`, deciding with a shaper
    /// seeded by `seed`.
    pub async fn start(
        listen: SocketAddr,
        upstream: SocketAddr,
        seed: u64,
    ) -> Result<Proxy, ProxyError> {
        let proxy = Proxy::bind(listen, seed).await?;
        proxy.set_upstream(upstream)?;
        Ok(proxy)
    }

    /// Binds `listen` without an upstream yet (datagrams are dropped until
    /// [`Proxy::set_upstream`]): for a proxy whose address must be known before the process
    /// behind it is started.
    pub async fn bind(listen: SocketAddr, seed: u64) -> Result<Proxy, ProxyError> {
        let listener = UdpSocket::bind(listen)
            .await
            .map_err(|source| ProxyError::Bind { addr: listen, source })?;
        let listen =
            listener.local_addr().map_err(|source| ProxyError::Bind { addr: listen, source })?;
        let (tx, rx) = mpsc::channel(DELAY_QUEUE_DATAGRAMS);
        let shared = Arc::new(Shared {
            listener: Arc::new(listener),
            upstream: OnceLock::new(),
            decider: Mutex::new(Decider {
                faults: LinkFaults::default(),
                shaper: Shaper::new(seed),
            }),
            counters: Counters::default(),
            sessions: Mutex::new(HashMap::new()),
            delayed: tx,
            seq: AtomicU64::new(0),
        });
        let tasks = vec![
            tokio::spawn(accept_loop(shared.clone())),
            tokio::spawn(delay_loop(shared.clone(), rx)),
        ];
        Ok(Proxy { listen, shared, tasks })
    }

    /// The address clients send to.
    pub fn addr(&self) -> SocketAddr {
        self.listen
    }

    /// The address datagrams are forwarded to, once set.
    pub fn upstream(&self) -> Option<SocketAddr> {
        self.shared.upstream.get().copied()
    }

    /// Sets the address datagrams are forwarded to (once; a second call with another address
    /// is refused).
    pub fn set_upstream(&self, upstream: SocketAddr) -> Result<(), ProxyError> {
        let set = *self.shared.upstream.get_or_init(|| upstream);
        if set != upstream {
            return Err(ProxyError::UpstreamSet(set));
        }
        Ok(())
    }

    /// The faults in force.
    pub fn faults(&self) -> LinkFaults {
        self.shared.decider.lock().unwrap().faults.clone()
    }

    /// Replaces the faults in force.
    pub fn set_faults(&self, faults: LinkFaults) -> Result<(), ProxyError> {
        faults.validate()?;
        self.shared.decider.lock().unwrap().faults = faults;
        Ok(())
    }

    /// Changes the faults in force with `f` (refused, unchanged, if the result is invalid).
    pub fn update(&self, f: impl FnOnce(&mut LinkFaults)) -> Result<(), ProxyError> {
        let mut d = self.shared.decider.lock().unwrap();
        let mut next = d.faults.clone();
        f(&mut next);
        next.validate()?;
        d.faults = next;
        Ok(())
    }

    /// Counters since start.
    pub fn stats(&self) -> ProxyStats {
        self.shared.counters.snapshot()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
        for (_, s) in self.shared.sessions.lock().unwrap().drain() {
            s.reader.abort();
        }
    }
}

impl Shared {
    fn decide(&self, dir: Direction, client: SocketAddr, len: usize) -> Fate {
        let mut d = self.decider.lock().unwrap();
        let Decider { faults, shaper } = &mut *d;
        shaper.decide(faults, dir, client.port(), len, Instant::now())
    }

    /// Carries out `fate` for `bytes` towards `target`.
    async fn dispatch(&self, fate: Fate, bytes: &[u8], dir: Direction, target: Target) {
        let c = &self.counters;
        let (first, duplicate, reordered) = match fate {
            Fate::Dropped(reason) => {
                c.dropped[reason as usize].fetch_add(1, Ordering::Relaxed);
                return;
            }
            Fate::Deliver { first, duplicate, reordered } => (first, duplicate, reordered),
        };
        if reordered {
            c.reordered.fetch_add(1, Ordering::Relaxed);
        }
        let deliveries = std::iter::once(first).chain(duplicate);
        if duplicate.is_some() {
            c.duplicated.fetch_add(1, Ordering::Relaxed);
        }
        for d in deliveries {
            let mut data = bytes.to_vec();
            if let Some((i, mask)) = d.corrupt {
                data[i] ^= mask;
                c.corrupted.fetch_add(1, Ordering::Relaxed);
            }
            match dir {
                Direction::ToUpstream => c.to_upstream.fetch_add(1, Ordering::Relaxed),
                Direction::ToClient => c.to_client.fetch_add(1, Ordering::Relaxed),
            };
            let target = match &target {
                Target::Upstream(s) => Target::Upstream(s.clone()),
                Target::Client(a) => Target::Client(*a),
            };
            if d.after.is_zero() {
                self.send(&target, &data).await;
                continue;
            }
            c.delayed.fetch_add(1, Ordering::Relaxed);
            let seq = self.seq.fetch_add(1, Ordering::Relaxed);
            let item = Scheduled { at: Instant::now() + d.after, seq, bytes: data, target };
            if self.delayed.try_send(item).is_err() {
                c.dropped[DropReason::QueueFull as usize].fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    async fn send(&self, target: &Target, data: &[u8]) {
        // A send error (the peer's port closed, a full buffer) is a lost datagram: UDP.
        let _ = match target {
            Target::Upstream(s) => s.send(data).await,
            Target::Client(a) => self.listener.send_to(data, a).await,
        };
    }

    /// The upstream socket of `client`, opened (with its reader) on first sight.
    async fn session(self: &Arc<Self>, client: SocketAddr) -> Option<Arc<UdpSocket>> {
        let upstream = *self.upstream.get()?;
        {
            let mut sessions = self.sessions.lock().unwrap();
            if let Some(s) = sessions.get_mut(&client) {
                s.last_seen = Instant::now();
                return Some(s.socket.clone());
            }
        }
        let bind: SocketAddr = match upstream {
            SocketAddr::V4(_) => ([127, 0, 0, 1], 0).into(),
            SocketAddr::V6(_) => (std::net::Ipv6Addr::LOCALHOST, 0).into(),
        };
        let socket = UdpSocket::bind(bind).await.ok()?;
        socket.connect(upstream).await.ok()?;
        let socket = Arc::new(socket);
        let reader = tokio::spawn(upstream_loop(self.clone(), client, socket.clone()));
        let mut sessions = self.sessions.lock().unwrap();
        if sessions.len() >= MAX_CLIENTS
            && let Some(oldest) = sessions.iter().min_by_key(|(_, s)| s.last_seen).map(|(a, _)| *a)
            && let Some(s) = sessions.remove(&oldest)
        {
            s.reader.abort();
        }
        sessions
            .insert(client, Session { socket: socket.clone(), last_seen: Instant::now(), reader });
        Some(socket)
    }
}

async fn accept_loop(shared: Arc<Shared>) {
    let mut buf = vec![0u8; MAX_DATAGRAM_BYTES];
    loop {
        let Ok((n, client)) = shared.listener.recv_from(&mut buf).await else {
            // ICMP port-unreachable errors surface here on Linux; they are not fatal.
            continue;
        };
        let Some(socket) = shared.session(client).await else {
            shared.counters.dropped[DropReason::NoUpstream as usize]
                .fetch_add(1, Ordering::Relaxed);
            continue;
        };
        let fate = shared.decide(Direction::ToUpstream, client, n);
        shared.dispatch(fate, &buf[..n], Direction::ToUpstream, Target::Upstream(socket)).await;
    }
}

async fn upstream_loop(shared: Arc<Shared>, client: SocketAddr, socket: Arc<UdpSocket>) {
    let mut buf = vec![0u8; MAX_DATAGRAM_BYTES];
    loop {
        let Ok(n) = socket.recv(&mut buf).await else {
            // Upstream not listening (a killed node): keep the session; it may come back.
            tokio::time::sleep(UPSTREAM_ERROR_PAUSE).await;
            continue;
        };
        let fate = shared.decide(Direction::ToClient, client, n);
        shared.dispatch(fate, &buf[..n], Direction::ToClient, Target::Client(client)).await;
    }
}

async fn delay_loop(shared: Arc<Shared>, mut rx: mpsc::Receiver<Scheduled>) {
    let mut heap: BinaryHeap<Reverse<Scheduled>> = BinaryHeap::new();
    loop {
        let next_at = heap.peek().map(|Reverse(s)| s.at);
        tokio::select! {
            item = rx.recv() => match item {
                Some(item) => heap.push(Reverse(item)),
                None => return,
            },
            _ = async {
                match next_at {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            } => {
                let now = Instant::now();
                while heap.peek().is_some_and(|Reverse(s)| s.at <= now) {
                    let Reverse(s) = heap.pop().expect("peeked");
                    shared.send(&s.target, &s.bytes).await;
                }
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests;
