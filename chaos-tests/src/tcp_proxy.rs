//! A TCP fault proxy: one listening socket in front of one upstream address; every accepted
//! connection is forwarded to the upstream, its bytes pumped both ways through the faults in
//! force.
//!
//! The coordinators talk to each other over plain HTTP/1.1 as well as over Raft: a follower
//! forwards writes to the leader and asks it for the read index, and nodes copy blobs to each
//! other. That is TCP, which the datagram proxy ([`crate::proxy`]) cannot carry, so the lab puts
//! one of these in front of each node's HTTP port. It takes the same [`LinkFaults`], with the
//! meanings a byte stream allows:
//!
//! - **Cuts hold, they never close.** `blackhole`, `drop_to_upstream`, `drop_to_client`,
//!   `drop_from_ports` / `drop_to_ports` (by the connection's client port) and the per-process
//!   cuts of [`TcpFaults`] stop forwarding in their direction: bytes wait in the proxy and in
//!   the kernel's buffers (the sender blocks once they are full), as under a partition where
//!   TCP keeps retransmitting; when the cut lifts they flow on, in order. A connection's end
//!   (its FIN) is held the same way. Cuts apply to open connections at once, chunks already
//!   read included.
//! - **Delay and jitter** per chunk (at most [`CHUNK_BYTES`]); a chunk never overtakes the
//!   one before it, so the stream keeps its order ([`Lane`]).
//! - **Bandwidth**: a token bucket per direction shared by the proxy's connections; excess
//!   waits (nothing is dropped).
//! - **Loss** does not exist on a stream: a chunk "dropped" (`drop_rate`) arrives
//!   [`RETRANSMIT_DELAY`] late, as a retransmission would, and holds up what follows.
//! - **Corruption**: with `corrupt_rate`, one byte of a chunk is flipped. On a real wire TCP's
//!   checksum would turn that into a retransmission; here the bytes reach the application, as
//!   through a corrupting middlebox.
//! - **Duplication and reordering** do not exist on a stream: `duplicate_rate` and
//!   `reorder_rate` are ignored.
//!
//! Per-process cuts: a process's connections each come from a new ephemeral port, so the proxy
//! asks at accept time which of the processes it watches ([`TcpProxy::set_owners`]) holds the
//! client's socket (`procnet::tcp_owner`) and keeps that owner with the connection; every
//! change of faults is judged against it, so cutting or healing a process reaches its open
//! connections too. A connection whose owner was not watched when it arrived is asked about
//! again when the watched set changes.
//!
//! What happens to each chunk is the pure [`TcpShaper::decide`] of the faults, the chunk's
//! direction and size, the connection, the time and a seeded RNG; [`TcpProxy`] is the IO
//! shell: sockets, the per-direction delivery queues, counters.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;

use crate::procnet;
pub use crate::proxy::Direction;
use crate::proxy::{LinkFaults, ProxyError, TokenBucket, jittered_delay};

/// Most bytes read, decided on and forwarded at once.
pub const CHUNK_BYTES: usize = 16 * 1024;
/// How late a chunk the link "loses" arrives (TCP retransmits it).
pub const RETRANSMIT_DELAY: Duration = Duration::from_millis(200);
/// Chunks of one direction of one connection between reading and delivery; reading stops
/// (the sender is held back by TCP) while this many wait.
pub const IN_FLIGHT_CHUNKS: usize = 64;
/// Longest the proxy waits for the upstream to accept a connection; past it (or refused) the
/// client's connection is closed.
pub const UPSTREAM_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Pause after a failed accept (out of descriptors), before accepting again.
pub const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(10);

/// The faults a TCP proxy applies now: the link's, and cuts of whole processes.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TcpFaults {
    /// Cuts and link quality, meant as the module documentation says.
    pub link: LinkFaults,
    /// Hold what connections owned by these processes send (their requests).
    pub hold_from_pids: BTreeSet<u32>,
    /// Hold what is sent to connections owned by these processes (the answers to them).
    pub hold_to_pids: BTreeSet<u32>,
}

impl TcpFaults {
    /// Whether every setting is in range.
    pub fn validate(&self) -> Result<(), ProxyError> {
        self.link.validate()
    }
}

/// What the proxy knows of a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peer {
    /// The client's source port.
    pub client_port: u16,
    /// The watched process holding the client's socket, if one does.
    pub owner: Option<u32>,
}

/// Why bytes wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HoldReason {
    /// The connection's owner is cut in this direction.
    Process,
    /// The client's port is cut in this direction.
    BlockedPort,
    Blackhole,
    OneWay,
}

/// Whether `faults` hold bytes crossing in `dir` on the connection of `peer`, and why.
pub fn hold_reason(faults: &TcpFaults, dir: Direction, peer: Peer) -> Option<HoldReason> {
    let l = &faults.link;
    let (ports, pids, one_way) = match dir {
        Direction::ToUpstream => (&l.drop_from_ports, &faults.hold_from_pids, l.drop_to_upstream),
        Direction::ToClient => (&l.drop_to_ports, &faults.hold_to_pids, l.drop_to_client),
    };
    if peer.owner.is_some_and(|p| pids.contains(&p)) {
        Some(HoldReason::Process)
    } else if ports.contains(&peer.client_port) {
        Some(HoldReason::BlockedPort)
    } else if l.blackhole {
        Some(HoldReason::Blackhole)
    } else if one_way {
        Some(HoldReason::OneWay)
    } else {
        None
    }
}

/// How a chunk the link lets through is delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkDelivery {
    /// How long after it was read it is sent on (before [`Lane`] keeps it behind the chunk
    /// ahead of it).
    pub after: Duration,
    /// Byte index and XOR mask (never 0) to corrupt it with.
    pub corrupt: Option<(usize, u8)>,
    /// "Lost" and retransmitted: [`RETRANSMIT_DELAY`] is part of `after`.
    pub retransmitted: bool,
}

/// What happens to the next chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChunkFate {
    /// Wait until the faults change, then ask again.
    Hold(HoldReason),
    Deliver(ChunkDelivery),
}

/// The deterministic decision core of a TCP proxy.
pub struct TcpShaper {
    rng: StdRng,
    buckets: [TokenBucket; 2],
}

impl TcpShaper {
    pub fn new(seed: u64) -> Self {
        Self { rng: StdRng::seed_from_u64(seed), buckets: Default::default() }
    }

    /// Decides the fate of a chunk of `len` bytes (0: the connection's end) crossing in `dir`
    /// at `now` on the connection of `peer`.
    pub fn decide(
        &mut self,
        faults: &TcpFaults,
        dir: Direction,
        peer: Peer,
        len: usize,
        now: Instant,
    ) -> ChunkFate {
        if let Some(reason) = hold_reason(faults, dir, peer) {
            return ChunkFate::Hold(reason);
        }
        let l = &faults.link;
        let mut after = Duration::ZERO;
        if let Some(rate) = l.bandwidth_bytes_per_s {
            after += self.buckets[dir as usize].reserve(rate, len, now);
        }
        after += jittered_delay(&mut self.rng, l.delay_ms, l.jitter_ms);
        let retransmitted = l.drop_rate > 0.0 && self.rng.random_bool(l.drop_rate);
        if retransmitted {
            after += RETRANSMIT_DELAY;
        }
        let corrupt = (len > 0 && l.corrupt_rate > 0.0 && self.rng.random_bool(l.corrupt_rate))
            .then(|| (self.rng.random_range(0..len), self.rng.random_range(1..=255u8)));
        ChunkFate::Deliver(ChunkDelivery { after, corrupt, retransmitted })
    }
}

/// Delivery times of one direction of one connection: each chunk leaves its delay after it was
/// read, but never before the chunk ahead of it.
#[derive(Debug, Default)]
pub struct Lane {
    last: Option<Instant>,
}

impl Lane {
    /// When a chunk read at `now` and delayed by `after` is sent on.
    pub fn schedule(&mut self, now: Instant, after: Duration) -> Instant {
        let at = now + after;
        let at = self.last.map_or(at, |last| last.max(at));
        self.last = Some(at);
        at
    }
}

/// Counters of one TCP proxy since it started (bytes, unless named otherwise).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct TcpProxyStats {
    /// Connections accepted.
    pub connections: u64,
    /// Connections closed because the upstream refused them or did not answer.
    pub refused: u64,
    /// Connections whose opening waited for a cut towards the upstream to lift (their first
    /// bytes wait in the kernel meanwhile, not counted below).
    pub held_connections: u64,
    pub to_upstream: u64,
    pub to_client: u64,
    /// Bytes that waited for a cut to lift (or still wait), by reason; each chunk counts once.
    pub held_process: u64,
    pub held_blocked_port: u64,
    pub held_blackhole: u64,
    pub held_one_way: u64,
    pub delayed_chunks: u64,
    pub retransmitted_chunks: u64,
    /// Chunks with a flipped byte.
    pub corrupted_chunks: u64,
}

impl TcpProxyStats {
    /// Bytes held for any reason.
    pub fn held(&self) -> u64 {
        self.held_process + self.held_blocked_port + self.held_blackhole + self.held_one_way
    }

    /// Adds `o` into `self`.
    pub fn add(&mut self, o: &TcpProxyStats) {
        self.connections += o.connections;
        self.refused += o.refused;
        self.held_connections += o.held_connections;
        self.to_upstream += o.to_upstream;
        self.to_client += o.to_client;
        self.held_process += o.held_process;
        self.held_blocked_port += o.held_blocked_port;
        self.held_blackhole += o.held_blackhole;
        self.held_one_way += o.held_one_way;
        self.delayed_chunks += o.delayed_chunks;
        self.retransmitted_chunks += o.retransmitted_chunks;
        self.corrupted_chunks += o.corrupted_chunks;
    }
}

#[derive(Default)]
struct Counters {
    connections: AtomicU64,
    refused: AtomicU64,
    held_connections: AtomicU64,
    /// By [`Direction`].
    bytes: [AtomicU64; 2],
    /// By [`HoldReason`].
    held: [AtomicU64; 4],
    delayed: AtomicU64,
    retransmitted: AtomicU64,
    corrupted: AtomicU64,
}

impl Counters {
    fn snapshot(&self) -> TcpProxyStats {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        TcpProxyStats {
            connections: get(&self.connections),
            refused: get(&self.refused),
            held_connections: get(&self.held_connections),
            to_upstream: get(&self.bytes[Direction::ToUpstream as usize]),
            to_client: get(&self.bytes[Direction::ToClient as usize]),
            held_process: get(&self.held[HoldReason::Process as usize]),
            held_blocked_port: get(&self.held[HoldReason::BlockedPort as usize]),
            held_blackhole: get(&self.held[HoldReason::Blackhole as usize]),
            held_one_way: get(&self.held[HoldReason::OneWay as usize]),
            delayed_chunks: get(&self.delayed),
            retransmitted_chunks: get(&self.retransmitted),
            corrupted_chunks: get(&self.corrupted),
        }
    }
}

fn bump(a: &AtomicU64, n: u64) {
    a.fetch_add(n, Ordering::Relaxed);
}

struct Decider {
    faults: TcpFaults,
    shaper: TcpShaper,
}

/// One accepted connection.
struct Conn {
    client_port: u16,
    owner: Mutex<Option<u32>>,
}

impl Conn {
    fn peer(&self) -> Peer {
        Peer { client_port: self.client_port, owner: *self.owner.lock().unwrap() }
    }
}

struct Shared {
    listen: SocketAddr,
    upstream: watch::Sender<Option<SocketAddr>>,
    decider: Mutex<Decider>,
    /// Bumped whenever the faults or a connection's owner change: held bytes look again.
    changes: watch::Sender<()>,
    /// The processes connections are classified by.
    owners: Mutex<BTreeSet<u32>>,
    conns: Mutex<Vec<Weak<Conn>>>,
    counters: Counters,
}

/// A running TCP proxy. Dropping it stops it and closes its connections.
pub struct TcpProxy {
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

impl TcpProxy {
    /// Binds `listen` (port 0 picks one) and forwards to `upstream`, deciding with a shaper
    /// seeded by `seed`.
    pub async fn start(
        listen: SocketAddr,
        upstream: SocketAddr,
        seed: u64,
    ) -> Result<TcpProxy, ProxyError> {
        let proxy = TcpProxy::bind(listen, seed).await?;
        proxy.set_upstream(upstream)?;
        Ok(proxy)
    }

    /// Binds `listen` without an upstream yet: connections are accepted and wait until
    /// [`TcpProxy::set_upstream`] (for a proxy whose address must be known before the process
    /// behind it is started).
    pub async fn bind(listen: SocketAddr, seed: u64) -> Result<TcpProxy, ProxyError> {
        let listener = TcpListener::bind(listen)
            .await
            .map_err(|source| ProxyError::Bind { addr: listen, source })?;
        let listen =
            listener.local_addr().map_err(|source| ProxyError::Bind { addr: listen, source })?;
        let shared = Arc::new(Shared {
            listen,
            upstream: watch::Sender::new(None),
            decider: Mutex::new(Decider {
                faults: TcpFaults::default(),
                shaper: TcpShaper::new(seed),
            }),
            changes: watch::Sender::new(()),
            owners: Mutex::new(BTreeSet::new()),
            conns: Mutex::new(Vec::new()),
            counters: Counters::default(),
        });
        let task = tokio::spawn(accept_loop(shared.clone(), listener));
        Ok(TcpProxy { shared, task })
    }

    /// The address clients connect to.
    pub fn addr(&self) -> SocketAddr {
        self.shared.listen
    }

    /// The address connections are forwarded to, once set.
    pub fn upstream(&self) -> Option<SocketAddr> {
        *self.shared.upstream.borrow()
    }

    /// Sets the address connections are forwarded to (once; a second call with another
    /// address is refused).
    pub fn set_upstream(&self, upstream: SocketAddr) -> Result<(), ProxyError> {
        let mut refused = None;
        self.shared.upstream.send_if_modified(|set| match *set {
            None => {
                *set = Some(upstream);
                true
            }
            Some(other) => {
                refused = (other != upstream).then_some(other);
                false
            }
        });
        refused.map_or(Ok(()), |other| Err(ProxyError::UpstreamSet(other)))
    }

    /// The faults in force.
    pub fn faults(&self) -> TcpFaults {
        self.shared.decider.lock().unwrap().faults.clone()
    }

    /// Replaces the faults in force (open connections included).
    pub fn set_faults(&self, faults: TcpFaults) -> Result<(), ProxyError> {
        self.update(|f| *f = faults)
    }

    /// Changes the faults in force with `f` (refused, unchanged, if the result is invalid).
    pub fn update(&self, f: impl FnOnce(&mut TcpFaults)) -> Result<(), ProxyError> {
        {
            let mut d = self.shared.decider.lock().unwrap();
            let mut next = d.faults.clone();
            f(&mut next);
            next.validate()?;
            d.faults = next;
        }
        self.shared.changes.send_replace(());
        Ok(())
    }

    /// Sets the processes whose connections the proxy recognises (for
    /// [`TcpFaults::hold_from_pids`] and [`TcpFaults::hold_to_pids`]). Open connections whose
    /// owner is not known yet are asked about again.
    pub fn set_owners(&self, pids: BTreeSet<u32>) {
        {
            let mut owners = self.shared.owners.lock().unwrap();
            if *owners == pids {
                return;
            }
            *owners = pids.clone();
        }
        let unknown: Vec<Arc<Conn>> = {
            let mut conns = self.shared.conns.lock().unwrap();
            conns.retain(|c| c.strong_count() > 0);
            conns.iter().filter_map(Weak::upgrade).filter(|c| c.peer().owner.is_none()).collect()
        };
        for conn in unknown {
            let owner = procnet::tcp_owner(&pids, conn.client_port, self.shared.listen.port());
            *conn.owner.lock().unwrap() = owner.ok().flatten();
        }
        self.shared.changes.send_replace(());
    }

    /// Counters since start.
    pub fn stats(&self) -> TcpProxyStats {
        self.shared.counters.snapshot()
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        // The accept loop owns the connections' tasks: aborting it ends them too.
        self.task.abort();
    }
}

/// One piece of a direction's stream on its way to delivery.
struct Chunk {
    at: Instant,
    bytes: Vec<u8>,
    /// The source ended: shut the destination's write side after what came before.
    end: bool,
    /// Already counted as held.
    held: bool,
}

impl Shared {
    /// The watched process that holds the client socket of a connection from `client_port`.
    async fn classify(self: &Arc<Self>, client_port: u16) -> Option<u32> {
        let pids = self.owners.lock().unwrap().clone();
        if pids.is_empty() {
            return None;
        }
        let port = self.listen.port();
        tokio::task::spawn_blocking(move || procnet::tcp_owner(&pids, client_port, port))
            .await
            .ok()?
            .ok()?
    }

    /// Why the faults in force hold `dir` on `conn`, if they do.
    fn holds(&self, conn: &Conn, dir: Direction) -> Option<HoldReason> {
        hold_reason(&self.decider.lock().unwrap().faults, dir, conn.peer())
    }

    /// Waits while a cut holds `dir` on `conn`; counts `len` bytes as held (unless `counted`)
    /// and says whether it held them.
    async fn wait_passable(&self, conn: &Conn, dir: Direction, len: usize, counted: bool) -> bool {
        let mut changes = self.changes.subscribe();
        let mut held = counted;
        loop {
            changes.mark_unchanged();
            let Some(reason) = self.holds(conn, dir) else { return held };
            if !held {
                bump(&self.counters.held[reason as usize], len as u64);
                held = true;
            }
            if changes.changed().await.is_err() {
                return held;
            }
        }
    }

    /// The delivery of a chunk of `len` bytes read now, once no cut holds it.
    async fn admit(&self, conn: &Conn, dir: Direction, len: usize) -> (ChunkDelivery, bool) {
        let mut held = false;
        loop {
            let fate = {
                let mut d = self.decider.lock().unwrap();
                let Decider { faults, shaper } = &mut *d;
                shaper.decide(faults, dir, conn.peer(), len, Instant::now())
            };
            match fate {
                ChunkFate::Deliver(d) => return (d, held),
                ChunkFate::Hold(_) => held = self.wait_passable(conn, dir, len, held).await,
            }
        }
    }
}

async fn accept_loop(shared: Arc<Shared>, listener: TcpListener) {
    let mut conns = JoinSet::new();
    loop {
        let Ok((client, from)) = listener.accept().await else {
            tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
            continue;
        };
        bump(&shared.counters.connections, 1);
        conns.spawn(serve(shared.clone(), client, from));
        while conns.try_join_next().is_some() {}
    }
}

async fn serve(shared: Arc<Shared>, client: TcpStream, from: SocketAddr) {
    let owner = shared.classify(from.port()).await;
    let conn = Arc::new(Conn { client_port: from.port(), owner: Mutex::new(owner) });
    {
        let mut conns = shared.conns.lock().unwrap();
        conns.retain(|c| c.strong_count() > 0);
        conns.push(Arc::downgrade(&conn));
    }
    let mut upstream = shared.upstream.subscribe();
    let addr = match upstream.wait_for(Option::is_some).await {
        Ok(set) => set.expect("waited for it"),
        Err(_) => return,
    };
    // The connection attempt crosses the link too: a cut towards the upstream holds it.
    if shared.holds(&conn, Direction::ToUpstream).is_some() {
        bump(&shared.counters.held_connections, 1);
    }
    shared.wait_passable(&conn, Direction::ToUpstream, 0, false).await;
    let up = match tokio::time::timeout(UPSTREAM_CONNECT_TIMEOUT, TcpStream::connect(addr)).await {
        Ok(Ok(up)) => up,
        _ => {
            bump(&shared.counters.refused, 1);
            return;
        }
    };
    let _ = (client.set_nodelay(true), up.set_nodelay(true));
    let (client_read, client_write) = client.into_split();
    let (up_read, up_write) = up.into_split();
    let to_upstream = pump(&shared, &conn, Direction::ToUpstream, client_read, up_write);
    let to_client = pump(&shared, &conn, Direction::ToClient, up_read, client_write);
    tokio::pin!(to_upstream, to_client);
    let (mut up_done, mut client_done) = (false, false);
    while !(up_done && client_done) {
        // A direction that ended cleanly leaves the other running (a half-closed connection);
        // one that failed ends the connection.
        let ok = tokio::select! {
            r = &mut to_upstream, if !up_done => { up_done = true; r }
            r = &mut to_client, if !client_done => { client_done = true; r }
        };
        if !ok {
            return;
        }
    }
}

/// Forwards one direction of a connection; `false` if it ended with an error.
async fn pump(
    shared: &Shared,
    conn: &Conn,
    dir: Direction,
    src: OwnedReadHalf,
    dst: OwnedWriteHalf,
) -> bool {
    let (tx, rx) = mpsc::channel(IN_FLIGHT_CHUNKS);
    let reading = read_side(shared, conn, dir, src, tx);
    let writing = write_side(shared, conn, dir, dst, rx);
    tokio::pin!(reading, writing);
    // The writer ends once the reader has (it delivered the end, or the queue closed), unless
    // the destination failed: then reading on is pointless.
    tokio::select! {
        written = &mut writing => written && reading.await,
        read = &mut reading => writing.await && read,
    }
}

async fn read_side(
    shared: &Shared,
    conn: &Conn,
    dir: Direction,
    mut src: OwnedReadHalf,
    tx: mpsc::Sender<Chunk>,
) -> bool {
    let mut lane = Lane::default();
    loop {
        let mut bytes = vec![0u8; CHUNK_BYTES];
        let Ok(n) = src.read(&mut bytes).await else { return false };
        bytes.truncate(n);
        let (d, held) = shared.admit(conn, dir, n).await;
        let c = &shared.counters;
        if let Some((i, mask)) = d.corrupt {
            bytes[i] ^= mask;
            bump(&c.corrupted, 1);
        }
        if d.retransmitted {
            bump(&c.retransmitted, 1);
        }
        if !d.after.is_zero() {
            bump(&c.delayed, 1);
        }
        let at = lane.schedule(Instant::now(), d.after);
        let end = n == 0;
        if tx.send(Chunk { at, bytes, end, held }).await.is_err() || end {
            return true;
        }
    }
}

async fn write_side(
    shared: &Shared,
    conn: &Conn,
    dir: Direction,
    mut dst: OwnedWriteHalf,
    mut rx: mpsc::Receiver<Chunk>,
) -> bool {
    while let Some(chunk) = rx.recv().await {
        tokio::time::sleep_until(chunk.at).await;
        // A cut that began while the chunk was on its way holds it too.
        shared.wait_passable(conn, dir, chunk.bytes.len(), chunk.held).await;
        if chunk.end {
            let _ = dst.shutdown().await;
            return true;
        }
        bump(&shared.counters.bytes[dir as usize], chunk.bytes.len() as u64);
        if dst.write_all(&chunk.bytes).await.is_err() {
            return false;
        }
    }
    true
}

#[cfg(test)]
mod tests;
