//! [`BlobNode`]: one host's QUIC endpoint for `tt-blob/1`. It serves what its store holds,
//! keeps one connection (a [`Link`]) per peer, pushes have-updates to interested peers, and
//! runs downloads ([`crate::swarm::download`]).
//!
//! **Invariant:** at most one live connection per peer pair. When two peers dial each other at
//! once, both keep the connection dialed by the peer with the smaller [`PeerId`] and close the
//! other with [`CLOSE_DUPLICATE`]. This needs a node's `PeerId` to be the address its peers
//! dial, which is why [`BlobNode::start`] refuses an unspecified listen address.
//!
//! **Invariant:** a malformed or oversized frame closes that one connection
//! ([`CLOSE_PROTOCOL_VIOLATION`]); the node keeps serving everyone else.

use std::collections::{BinaryHeap, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use quinn::{ConnectionError, VarInt};
use rustls_pki_types::CertificateDer;
use tokio::sync::{broadcast, mpsc, oneshot};
use tracing::{Instrument, debug, debug_span, info_span, trace, warn};

use crate::blob::{BlobHash, BlobSpec, BlobStore, EncodePieceError, Geometry, StoreEvent};
use crate::ratelimit::{RateLimiter, ThrottleStats};
use crate::swarm::download::DownloadEvent;
use crate::swarm::relay::{RelayEnd, RelayState, RelayWriter, Relays};
use crate::swarm::repeats::{RepeatDecision, RepeatGuard};
use crate::swarm::scheduler::PeerId;
use crate::tls::{self, ClientAuth, NodeCert, TlsConfigError};
use crate::wire::{
    self, ALPN, CLOSE_DUPLICATE, CLOSE_PROTOCOL_VIOLATION, CLOSE_SHUTDOWN, ControlMsg,
    FRAME_HEADER_BYTES, MAX_CONTROL_FRAME_BYTES, MAX_REQUEST_FRAME_BYTES, PieceRequest,
    ResponseStatus, STREAM_RELAY_LOST, WireError,
};

/// UDP socket buffers a node asks for, each way. A burst of piece data from several peers at
/// once overflows Linux's default (about 208 KiB); the datagrams dropped there cost QUIC a
/// loss recovery and a congestion-window cut. The kernel caps the figure at
/// `net.core.rmem_max` / `wmem_max`.
pub const SOCKET_BUFFER_BYTES: usize = 4 * 1024 * 1024;
/// Piece uploads a host serves at once ([`NodeConfig::recommended`]). Few, so that each piece
/// leaves at a large share of the upload cap and the receiver can pass it on sooner: a
/// piece's hop time is its size over its share of the cap.
pub const RECOMMENDED_UPLOAD_SLOTS: usize = 2;
/// Piece requests that may wait for a slot ([`NodeConfig::recommended`]); a deeper queue only
/// holds requests that other peers could serve now.
pub const RECOMMENDED_QUEUED_UPLOADS: usize = 2;
/// An origin's repeat window ([`NodeConfig::origin`]): well beyond the time a piece takes to
/// reach the swarm's far side through peers (about log2(hosts) hops of two piece-times each:
/// 1.75 s for 100 hosts at 2 MiB/s, more on a busy machine), short enough that a piece whose
/// first receiver died or turned out corrupt is sent again within seconds. With 3 s,
/// `tt bench swarm` on a loaded machine sent 1.2 copies at 100 hosts; with 5 s, 1.01.
pub const RECOMMENDED_ORIGIN_REPEAT_WINDOW: Duration = Duration::from_secs(5);
/// Most connections (peers) one node keeps. Further incoming connections are refused.
pub const MAX_LINKS: usize = 512;
/// Most piece-request streams a peer may have open to us at once (QUIC enforces it).
pub const MAX_PIECE_STREAMS_PER_LINK: u32 = 64;
/// Control messages queued for one peer before the link is treated as stuck and closed.
pub const CONTROL_QUEUE_FRAMES: usize = 1024;
/// How long dialing a peer may take, handshake included.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Most piece uploads that may wait for a slot beyond [`NodeConfig::max_concurrent_uploads`],
/// whatever [`NodeConfig::max_queued_uploads`] says; more are answered "busy".
pub const UPLOAD_QUEUE_MAX: usize = 256;
/// Piece data is written to the stream in slices of this many bytes, each paid for in the
/// upload bucket first.
pub const UPLOAD_SLICE_BYTES: usize = 16 * 1024;

/// How a node behaves on the network.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// Address to bind, which is also this node's [`PeerId`]: it must be the address peers
    /// dial (not `0.0.0.0`). Port 0 picks a free port.
    pub listen: SocketAddr,
    /// Host-wide upload cap, bytes per second, over all peers.
    pub upload_bytes_per_sec: Option<u64>,
    /// Host-wide download cap, bytes per second, over all downloads and peers.
    pub download_bytes_per_sec: Option<u64>,
    /// Download only: advertise nothing and refuse every piece request.
    pub leech_only: bool,
    /// Piece uploads served at once; further requests wait, the least-served piece first
    /// (so an origin hands out pieces nobody has yet before repeats), or are told "busy".
    pub max_concurrent_uploads: usize,
    /// Piece requests that may wait for an upload slot (at most [`UPLOAD_QUEUE_MAX`]); more
    /// are answered "busy" at once, so that the requester asks another peer instead of
    /// waiting here while that peer idles.
    pub max_queued_uploads: usize,
    /// For an origin: after handing out a piece, answer "seeded" to further requests for
    /// that piece for this long (counted from when the upload finished), so that the swarm
    /// takes it from whoever got it and the origin spends its upload on pieces nobody has yet
    /// (super-seeding). After the window a piece is sent again, which covers a receiver that
    /// died before passing it on; a requester turned away twice for a piece is served inside
    /// the window (the piece is stranded: `repeats.rs`). `None` for ordinary hosts.
    pub origin_repeat_window: Option<Duration>,
    /// Cut-through ([`crate::swarm::relay`]): announce each piece as it starts to arrive and
    /// serve it to peers while receiving it. A node with a [`ServeFault`] never relays.
    pub cut_through: bool,
    /// Misbehave on purpose; for tests and chaos experiments only.
    pub fault: Option<ServeFault>,
}

impl NodeConfig {
    /// A host: the recommended upload slots and queue, no caps, no faults.
    pub fn recommended(listen: SocketAddr) -> NodeConfig {
        NodeConfig {
            listen,
            upload_bytes_per_sec: None,
            download_bytes_per_sec: None,
            leech_only: false,
            max_concurrent_uploads: RECOMMENDED_UPLOAD_SLOTS,
            max_queued_uploads: RECOMMENDED_QUEUED_UPLOADS,
            origin_repeat_window: None,
            cut_through: true,
            fault: None,
        }
    }

    /// An origin (a coordinator): like a host, and each piece is handed out once per
    /// [`RECOMMENDED_ORIGIN_REPEAT_WINDOW`] (super-seeding).
    pub fn origin(listen: SocketAddr) -> NodeConfig {
        NodeConfig {
            origin_repeat_window: Some(RECOMMENDED_ORIGIN_REPEAT_WINDOW),
            ..NodeConfig::recommended(listen)
        }
    }
}

/// Deliberate misbehaviour of a serving node, to test that downloaders survive it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServeFault {
    /// Flip one byte in the last chunk group of every piece sent.
    FlipByte,
    /// Advertise every piece; answer pieces we lack with random bytes.
    LieAboutPieces,
    /// Answer a request for piece `n` with the (correctly encoded) piece `n + 1`.
    WrongPiece,
}

/// The quinn configs for a node: mutual TLS under the cluster CA, ALPN `tt-blob/1`.
#[derive(Debug, Clone)]
pub struct NodeTls {
    pub server: quinn::ServerConfig,
    pub client: quinn::ClientConfig,
}

impl NodeTls {
    /// Configs presenting `node`'s certificate and trusting only `ca_cert`, in both roles.
    pub fn cluster(
        node: &NodeCert,
        ca_cert: &CertificateDer<'_>,
    ) -> Result<NodeTls, TlsConfigError> {
        let mut server = tls::server_config(node, ca_cert, &[ALPN], ClientAuth::Required)?;
        let mut client = tls::client_config(Some(node), ca_cert, &[ALPN])?;
        let transport = Arc::new(transport_config());
        server.transport_config(transport.clone());
        client.transport_config(transport);
        Ok(NodeTls { server, client })
    }
}

/// Stream limits of a blob connection: one control stream each way, bounded piece streams.
fn transport_config() -> quinn::TransportConfig {
    let mut transport = tls::transport_config();
    transport.max_concurrent_bidi_streams(VarInt::from_u32(MAX_PIECE_STREAMS_PER_LINK));
    transport.max_concurrent_uni_streams(VarInt::from_u32(1));
    transport
}

/// Starting a node failed.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The listen address is `0.0.0.0` or `::`; peers could not name this node.
    #[error("listen address {0} is unspecified; bind the address peers dial")]
    UnspecifiedAddress(SocketAddr),
    /// Binding the UDP socket failed.
    #[error("binding {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// Connecting to a peer failed.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("cannot connect: {0}")]
    Connect(#[from] quinn::ConnectError),
    #[error("connection failed: {0}")]
    Connection(#[from] ConnectionError),
    #[error("connecting timed out after {0:?}")]
    TimedOut(Duration),
    #[error("the node is closed")]
    Closed,
}

/// Byte counters of a node (for benchmarks: origin egress is the origin's `uploaded_bytes`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct NodeStats {
    /// Bytes of piece responses sent (data and proofs).
    pub uploaded_bytes: u64,
    /// Bytes of piece responses received (data and proofs).
    pub downloaded_bytes: u64,
    /// The part of `downloaded_bytes` that came from an origin (the rest came from peers).
    pub downloaded_from_origin_bytes: u64,
    /// Piece requests answered with data.
    pub pieces_served: u64,
    /// The part of `pieces_served` relayed while this node was still receiving the piece.
    pub pieces_relayed: u64,
    /// Relayed responses reset because this node's own transfer of the piece failed.
    pub relays_reset: u64,
    /// Responses that failed verification.
    pub bad_responses: u64,
    /// Connections closed for a protocol violation.
    pub protocol_violations: u64,
    /// Piece requests an origin declined as "seeded" (sent to another peer moments ago).
    pub repeats_declined: u64,
    /// Piece requests an origin served inside the piece's repeat window because it had
    /// turned the requester away [`super::repeats::RESCUE_AFTER_DECLINES`] times already.
    pub repeats_rescued: u64,
    /// Piece requests answered "busy" (every upload slot and queue place taken).
    pub busy_answers: u64,
    /// What the upload and download rate limits held back.
    pub upload_throttle: ThrottleStats,
    pub download_throttle: ThrottleStats,
}

#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub uploaded_bytes: AtomicU64,
    pub downloaded_bytes: AtomicU64,
    pub downloaded_from_origin_bytes: AtomicU64,
    pub pieces_served: AtomicU64,
    pub pieces_relayed: AtomicU64,
    pub relays_reset: AtomicU64,
    pub bad_responses: AtomicU64,
    pub protocol_violations: AtomicU64,
    pub repeats_declined: AtomicU64,
    pub repeats_rescued: AtomicU64,
    pub busy_answers: AtomicU64,
}

/// A `tt-blob/1` node. Cheap to clone.
#[derive(Clone, Debug)]
pub struct BlobNode {
    pub(crate) inner: Arc<Node>,
}

#[derive(Debug)]
pub(crate) struct Node {
    pub id: PeerId,
    endpoint: quinn::Endpoint,
    pub store: Arc<BlobStore>,
    pub config: NodeConfig,
    upload: RateLimiter,
    pub download: RateLimiter,
    uploads: Arc<UploadSlots>,
    /// Pieces being received and relayed at once (cut-through).
    pub relays: Arc<Relays>,
    /// For an origin ([`NodeConfig::origin_repeat_window`]): when each piece was handed out.
    repeats: Option<Mutex<RepeatGuard>>,
    links: Mutex<HashMap<PeerId, Arc<Link>>>,
    dial_locks: Mutex<HashMap<PeerId, Arc<tokio::sync::Mutex<()>>>>,
    pub downloads: Mutex<HashMap<BlobHash, mpsc::Sender<DownloadEvent>>>,
    pub counters: Counters,
}

/// The one connection to a peer.
#[derive(Debug)]
pub(crate) struct Link {
    pub peer: PeerId,
    pub connection: quinn::Connection,
    dialed_by: PeerId,
    control: mpsc::Sender<ControlMsg>,
    /// Blobs the peer asked to hear about.
    peer_wants: Mutex<HashSet<BlobHash>>,
    /// What the peer told us it holds (for blobs we asked it about): a piece it holds is not
    /// announced to it again, which saves about half of the have-messages of a swarm.
    peer_holds: Mutex<HashMap<BlobHash, crate::blob::Bitfield>>,
}

impl Link {
    /// Queues a control message; a peer that lets [`CONTROL_QUEUE_FRAMES`] pile up is cut.
    pub fn send(&self, msg: ControlMsg) {
        if let Err(mpsc::error::TrySendError::Full(_)) = self.control.try_send(msg) {
            warn!(peer = %self.peer, "control queue full; closing link");
            self.connection.close(CLOSE_SHUTDOWN, b"control queue full");
        }
    }

    pub fn id(&self) -> usize {
        self.connection.stable_id()
    }

    fn holds(&self) -> std::sync::MutexGuard<'_, HashMap<BlobHash, crate::blob::Bitfield>> {
        self.peer_holds.lock().expect("holds lock")
    }
}

impl BlobNode {
    /// Binds the endpoint and starts serving `store`. Must be called inside a tokio runtime.
    pub fn start(
        config: NodeConfig,
        tls: NodeTls,
        store: Arc<BlobStore>,
    ) -> Result<BlobNode, StartError> {
        if config.listen.ip().is_unspecified() {
            return Err(StartError::UnspecifiedAddress(config.listen));
        }
        let addr = config.listen;
        let socket =
            std::net::UdpSocket::bind(addr).map_err(|source| StartError::Bind { addr, source })?;
        let state = quinn::udp::UdpSocketState::new((&socket).into())
            .map_err(|source| StartError::Bind { addr, source })?;
        // Best effort: the kernel caps both at net.core.{r,w}mem_max.
        if let Err(error) = state.set_recv_buffer_size((&socket).into(), SOCKET_BUFFER_BYTES) {
            warn!(%error, "cannot raise the UDP receive buffer");
        }
        if let Err(error) = state.set_send_buffer_size((&socket).into(), SOCKET_BUFFER_BYTES) {
            warn!(%error, "cannot raise the UDP send buffer");
        }
        let mut endpoint = quinn::Endpoint::new(
            quinn::EndpointConfig::default(),
            Some(tls.server),
            socket,
            Arc::new(quinn::TokioRuntime),
        )
        .map_err(|source| StartError::Bind { addr, source })?;
        endpoint.set_default_client_config(tls.client);
        let id = PeerId(endpoint.local_addr().map_err(|source| StartError::Bind { addr, source })?);
        let node = Arc::new(Node {
            id,
            endpoint,
            upload: RateLimiter::new(config.upload_bytes_per_sec),
            download: RateLimiter::new(config.download_bytes_per_sec),
            uploads: Arc::new(UploadSlots::new(
                config.max_concurrent_uploads.max(1),
                config.max_queued_uploads.min(UPLOAD_QUEUE_MAX),
            )),
            repeats: config.origin_repeat_window.map(|w| Mutex::new(RepeatGuard::new(w))),
            relays: Arc::new(Relays::new()),
            config,
            store,
            links: Mutex::new(HashMap::new()),
            dial_locks: Mutex::new(HashMap::new()),
            downloads: Mutex::new(HashMap::new()),
            counters: Counters::default(),
        });
        tokio::spawn(accept_loop(node.clone()).instrument(info_span!("blob_node", node = %id)));
        Ok(BlobNode { inner: node })
    }

    /// This node's id: the address peers dial.
    pub fn peer_id(&self) -> PeerId {
        self.inner.id
    }

    /// The store this node serves and downloads into.
    pub fn store(&self) -> &Arc<BlobStore> {
        &self.inner.store
    }

    /// Byte counters.
    pub fn stats(&self) -> NodeStats {
        let c = &self.inner.counters;
        NodeStats {
            uploaded_bytes: c.uploaded_bytes.load(Ordering::Relaxed),
            downloaded_bytes: c.downloaded_bytes.load(Ordering::Relaxed),
            downloaded_from_origin_bytes: c.downloaded_from_origin_bytes.load(Ordering::Relaxed),
            pieces_served: c.pieces_served.load(Ordering::Relaxed),
            pieces_relayed: c.pieces_relayed.load(Ordering::Relaxed),
            relays_reset: c.relays_reset.load(Ordering::Relaxed),
            bad_responses: c.bad_responses.load(Ordering::Relaxed),
            protocol_violations: c.protocol_violations.load(Ordering::Relaxed),
            repeats_declined: c.repeats_declined.load(Ordering::Relaxed),
            repeats_rescued: c.repeats_rescued.load(Ordering::Relaxed),
            busy_answers: c.busy_answers.load(Ordering::Relaxed),
            upload_throttle: self.inner.upload.stats(),
            download_throttle: self.inner.download.stats(),
        }
    }

    /// Peers with a live connection.
    pub fn connected_peers(&self) -> Vec<PeerId> {
        self.inner.links.lock().expect("links lock").keys().copied().collect()
    }

    /// Closes every connection and stops serving; running downloads end with
    /// [`crate::swarm::DownloadError::Cancelled`] and their partial blobs stay resumable.
    pub fn close(&self) {
        let downloads: Vec<_> =
            self.inner.downloads.lock().expect("downloads lock").values().cloned().collect();
        for tx in downloads {
            let _ = tx.try_send(DownloadEvent::Cancel);
        }
        self.inner.endpoint.close(CLOSE_SHUTDOWN, b"shutdown");
    }
}

impl Node {
    /// The link to `peer`, dialing it if there is none.
    pub async fn connect(self: &Arc<Node>, peer: PeerId) -> Result<Arc<Link>, ConnectError> {
        if let Some(link) = self.live_link(peer) {
            return Ok(link);
        }
        let lock = self.dial_locks.lock().expect("dial lock").entry(peer).or_default().clone();
        let _guard = lock.lock().await;
        if let Some(link) = self.live_link(peer) {
            return Ok(link);
        }
        let connecting = self.endpoint.connect(peer.0, tls::CLUSTER_SERVER_NAME)?;
        let connection = tokio::time::timeout(CONNECT_TIMEOUT, connecting)
            .await
            .map_err(|_| ConnectError::TimedOut(CONNECT_TIMEOUT))??;
        debug!(%peer, "dialed");
        self.install_link(connection, self.id).ok_or(ConnectError::Closed)
    }

    fn live_link(&self, peer: PeerId) -> Option<Arc<Link>> {
        let links = self.links.lock().expect("links lock");
        links.get(&peer).filter(|l| l.connection.close_reason().is_none()).cloned()
    }

    /// Registers a new connection, resolving duplicates, and starts its tasks. Returns the
    /// link that won (possibly an existing one), or `None` if the node is closed.
    fn install_link(
        self: &Arc<Node>,
        connection: quinn::Connection,
        dialed_by: PeerId,
    ) -> Option<Arc<Link>> {
        let peer = PeerId(connection.remote_address());
        let (control_tx, control_rx) = mpsc::channel(CONTROL_QUEUE_FRAMES);
        let link = Arc::new(Link {
            peer,
            connection: connection.clone(),
            dialed_by,
            control: control_tx,
            peer_wants: Mutex::new(HashSet::new()),
            peer_holds: Mutex::new(HashMap::new()),
        });
        let replaced = {
            let mut links = self.links.lock().expect("links lock");
            if let Some(existing) =
                links.get(&peer).filter(|l| l.connection.close_reason().is_none())
            {
                let winner = self.id.min(peer);
                if existing.dialed_by == winner || link.dialed_by != winner {
                    debug!(%peer, "duplicate connection; keeping the existing one");
                    connection.close(CLOSE_DUPLICATE, b"duplicate");
                    return Some(existing.clone());
                }
            }
            links.insert(peer, link.clone())
        };
        if let Some(old) = replaced {
            debug!(%peer, "duplicate connection; replacing the existing one");
            old.connection.close(CLOSE_DUPLICATE, b"duplicate");
        }
        let span = info_span!("blob_link", node = %self.id, peer = %peer);
        tokio::spawn(write_control(link.clone(), control_rx).instrument(span.clone()));
        tokio::spawn(read_control(self.clone(), link.clone()).instrument(span.clone()));
        tokio::spawn(serve_requests(self.clone(), link.clone()).instrument(span.clone()));
        if !self.config.leech_only {
            tokio::spawn(forward_store_events(self.clone(), link.clone()).instrument(span.clone()));
        }
        tokio::spawn(watch_link(self.clone(), link.clone()).instrument(span));
        self.broadcast(|| DownloadEvent::LinkUp(link.clone()));
        Some(link)
    }

    fn broadcast(&self, event: impl Fn() -> DownloadEvent) {
        let downloads: Vec<_> =
            self.downloads.lock().expect("downloads lock").values().cloned().collect();
        for tx in downloads {
            let _ = tx.try_send(event());
        }
    }

    fn download_channel(&self, hash: &BlobHash) -> Option<mpsc::Sender<DownloadEvent>> {
        self.downloads.lock().expect("downloads lock").get(hash).cloned()
    }

    /// Whether an origin may hand out `piece` now (see [`NodeConfig::origin_repeat_window`]);
    /// records the upload if so.
    fn may_repeat(&self, hash: BlobHash, piece: u32, peer: PeerId) -> bool {
        let Some(repeats) = &self.repeats else { return true };
        let now = tokio::time::Instant::now().into_std();
        let decision = repeats.lock().expect("repeats lock").decide(hash, piece, peer, now);
        match decision {
            RepeatDecision::Serve => true,
            RepeatDecision::Rescue => {
                debug!(%peer, piece, "piece stranded at its first receiver; sending it again");
                self.counters.repeats_rescued.fetch_add(1, Ordering::Relaxed);
                true
            }
            RepeatDecision::Seeded => {
                self.counters.repeats_declined.fetch_add(1, Ordering::Relaxed);
                false
            }
        }
    }

    /// An upload recorded by [`Node::may_repeat`] did not happen (no slot, or the requester
    /// went away): the piece may be handed out again at once.
    fn forget_repeat(&self, hash: BlobHash, piece: u32) {
        if let Some(repeats) = &self.repeats {
            repeats.lock().expect("repeats lock").forget(hash, piece);
        }
    }

    /// An upload finished: the repeat window starts now, when the receiver has the piece.
    fn renew_repeat(&self, hash: BlobHash, piece: u32) {
        if let Some(repeats) = &self.repeats {
            let now = tokio::time::Instant::now().into_std();
            repeats.lock().expect("repeats lock").renew(hash, piece, now);
        }
    }

    /// Whether this node relays pieces it is receiving (see [`NodeConfig::cut_through`]).
    fn relays_enabled(&self) -> bool {
        self.config.cut_through && self.config.fault.is_none() && !self.config.leech_only
    }

    /// Starts relaying a piece a request of ours began to receive, if this node relays and
    /// no other request relays it already.
    pub fn start_relay(&self, spec: BlobSpec, piece: u32) -> Option<RelayWriter> {
        if !self.relays_enabled() {
            return None;
        }
        self.relays.start(spec, piece)
    }

    fn violation(&self, link: &Link, error: &WireError) {
        warn!(%error, "protocol violation; closing connection");
        self.counters.protocol_violations.fetch_add(1, Ordering::Relaxed);
        link.connection.close(CLOSE_PROTOCOL_VIOLATION, error.to_string().as_bytes());
    }
}

async fn accept_loop(node: Arc<Node>) {
    while let Some(incoming) = node.endpoint.accept().await {
        if node.links.lock().expect("links lock").len() >= MAX_LINKS {
            warn!(peer = %incoming.remote_address(), n_max = MAX_LINKS, "too many links; refusing");
            incoming.refuse();
            continue;
        }
        let node = node.clone();
        tokio::spawn(async move {
            match incoming.await {
                Ok(connection) => {
                    let peer = PeerId(connection.remote_address());
                    trace!(%peer, "accepted");
                    node.install_link(connection, peer);
                }
                // Includes a client without a certificate from the cluster CA.
                Err(error) => debug!(%error, "handshake failed"),
            }
        });
    }
    debug!("endpoint closed");
}

/// Waits for the connection to end, then unregisters it and tells the downloads.
async fn watch_link(node: Arc<Node>, link: Arc<Link>) {
    let reason = link.connection.closed().await;
    debug!(%reason, "link closed");
    {
        let mut links = node.links.lock().expect("links lock");
        if links.get(&link.peer).is_some_and(|l| Arc::ptr_eq(l, &link)) {
            links.remove(&link.peer);
        }
    }
    let (peer, id) = (link.peer, link.id());
    node.broadcast(|| DownloadEvent::LinkDown { peer, link_id: id });
}

async fn write_control(link: Arc<Link>, mut rx: mpsc::Receiver<ControlMsg>) {
    let mut send = match link.connection.open_uni().await {
        Ok(send) => send,
        Err(error) => {
            debug!(%error, "cannot open control stream");
            return;
        }
    };
    while let Some(msg) = rx.recv().await {
        trace!(?msg, "control out");
        if let Err(error) = send.write_all(&msg.encode()).await {
            debug!(%error, "control stream write failed");
            return;
        }
    }
}

async fn read_control(node: Arc<Node>, link: Arc<Link>) {
    let mut recv = match link.connection.accept_uni().await {
        Ok(recv) => recv,
        Err(error) => {
            debug!(%error, "no control stream");
            return;
        }
    };
    loop {
        let frame = match read_frame(&mut recv, MAX_CONTROL_FRAME_BYTES).await {
            Ok(Some(frame)) => frame,
            Ok(None) => return,
            Err(FrameError::Wire(error)) => return node.violation(&link, &error),
            Err(FrameError::Stream) => return,
        };
        let msg = match ControlMsg::decode(&frame) {
            Ok(msg) => msg,
            Err(error) => return node.violation(&link, &error),
        };
        trace!(?msg, "control in");
        handle_control(&node, &link, msg).await;
    }
}

async fn handle_control(node: &Arc<Node>, link: &Arc<Link>, msg: ControlMsg) {
    let peer = link.peer;
    let route = |hash: &BlobHash, event: DownloadEvent| {
        let tx = node.download_channel(hash);
        async move {
            if let Some(tx) = tx {
                let _ = tx.send(event).await;
            }
        }
    };
    match msg {
        ControlMsg::Interested { spec } => {
            link.peer_wants.lock().expect("wants lock").insert(spec.hash);
            if !node.config.leech_only {
                send_state(node, link, spec);
            } else {
                link.send(ControlMsg::DontHave { hash: spec.hash });
            }
            // A peer downloading the same blob is a peer for our download too.
            route(&spec.hash, DownloadEvent::PeerInterested(link.clone())).await;
        }
        ControlMsg::NotInterested { hash } => {
            link.peer_wants.lock().expect("wants lock").remove(&hash);
        }
        ControlMsg::Bitfield { spec, pieces } => {
            link.holds().insert(spec.hash, pieces.clone());
            route(&spec.hash, DownloadEvent::Bitfield { peer, size: spec.size, pieces }).await;
        }
        ControlMsg::Have { hash, piece } => {
            if let Some(pieces) = link.holds().get_mut(&hash)
                && u64::from(piece) < pieces.len()
            {
                pieces.set(piece.into());
            }
            route(&hash, DownloadEvent::Have { peer, piece }).await
        }
        ControlMsg::DontHave { hash } => {
            link.holds().remove(&hash);
            route(&hash, DownloadEvent::DontHave { peer }).await
        }
        ControlMsg::Incoming { hash, piece } => {
            route(&hash, DownloadEvent::Incoming { peer, piece }).await
        }
    }
}

/// What we hold of `spec`, then the pieces of it we are relaying (a bitfield is the whole
/// state, so it withdraws earlier announcements).
fn send_state(node: &Node, link: &Link, spec: BlobSpec) {
    link.send(state_message(node, spec));
    if node.relays_enabled() {
        for piece in node.relays.pieces_of(spec.hash) {
            link.send(ControlMsg::Incoming { hash: spec.hash, piece });
        }
    }
}

/// What we hold of `spec`, as a control message.
fn state_message(node: &Node, spec: BlobSpec) -> ControlMsg {
    if node.config.fault == Some(ServeFault::LieAboutPieces)
        && let Ok(geometry) = Geometry::new(spec.size)
    {
        return ControlMsg::Bitfield {
            spec,
            pieces: crate::blob::Bitfield::full(geometry.n_pieces().into()),
        };
    }
    match node.store.pieces(&spec.hash, spec.size) {
        Some(pieces) => ControlMsg::Bitfield { spec, pieces },
        None => ControlMsg::DontHave { hash: spec.hash },
    }
}

/// Pushes have-updates for the blobs the peer wants, as the store changes, and announces the
/// pieces this node starts to relay.
async fn forward_store_events(node: Arc<Node>, link: Arc<Link>) {
    let mut events = node.store.subscribe();
    let mut relays = node.relays.announcements();
    let wants = |hash: &BlobHash| link.peer_wants.lock().expect("wants lock").contains(hash);
    loop {
        let event = tokio::select! {
            event = events.recv() => event,
            relayed = relays.recv() => {
                // Lagging only skips hints: the piece's "have" follows when it is whole.
                if let Ok((hash, piece)) = relayed
                    && wants(&hash)
                    && !link.holds().get(&hash).is_some_and(|p| p.get(piece.into()))
                {
                    link.send(ControlMsg::Incoming { hash, piece });
                }
                continue;
            }
            _ = link.connection.closed() => return,
        };
        match event {
            Ok(StoreEvent::PieceComplete { hash, piece }) if wants(&hash) => {
                let held = link.holds().get(&hash).is_some_and(|p| p.get(piece.into()));
                if !held {
                    link.send(ControlMsg::Have { hash, piece });
                }
            }
            Ok(
                StoreEvent::BlobComplete { hash }
                | StoreEvent::PieceLost { hash, .. }
                | StoreEvent::BlobRemoved { hash },
            ) if wants(&hash) => resend_state(&node, &link, &[hash]),
            Ok(_) => {}
            Err(broadcast::error::RecvError::Lagged(n)) => {
                debug!(missed = n, "store events lagged; resending state");
                let hashes: Vec<BlobHash> =
                    link.peer_wants.lock().expect("wants lock").iter().copied().collect();
                resend_state(&node, &link, &hashes);
            }
            Err(broadcast::error::RecvError::Closed) => return,
        }
    }
}

/// Sends the full state of `hashes`; the size comes from what we hold.
fn resend_state(node: &Node, link: &Link, hashes: &[BlobHash]) {
    for hash in hashes {
        match node.store.size_of(hash) {
            Some(size) => send_state(node, link, BlobSpec { hash: *hash, size }),
            None => link.send(ControlMsg::DontHave { hash: *hash }),
        }
    }
}

async fn serve_requests(node: Arc<Node>, link: Arc<Link>) {
    loop {
        let (send, recv) = match link.connection.accept_bi().await {
            Ok(streams) => streams,
            Err(_) => return,
        };
        let span = debug_span!("serve_piece", stream = %send.id());
        tokio::spawn(serve_piece(node.clone(), link.clone(), send, recv).instrument(span));
    }
}

async fn serve_piece(
    node: Arc<Node>,
    link: Arc<Link>,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
) {
    let frame = match read_frame(&mut recv, MAX_REQUEST_FRAME_BYTES).await {
        Ok(Some(frame)) => frame,
        Ok(None) => return node.violation(&link, &WireError::Malformed("empty request stream")),
        Err(FrameError::Wire(error)) => return node.violation(&link, &error),
        Err(FrameError::Stream) => return,
    };
    let request = match PieceRequest::decode(&frame) {
        Ok(request) => request,
        Err(error) => return node.violation(&link, &error),
    };
    let PieceRequest { spec, piece } = request;
    let span = debug_span!("piece", blob = %spec.hash.short(), peer = %link.peer, piece);
    async {
        if node.config.leech_only {
            return respond_status(&mut send, ResponseStatus::Refused).await;
        }
        if !node.may_repeat(spec.hash, piece, link.peer) {
            return respond_status(&mut send, ResponseStatus::Seeded).await;
        }
        let Some(_slot) = node.uploads.acquire(spec.hash, piece).await else {
            node.forget_repeat(spec.hash, piece);
            node.counters.busy_answers.fetch_add(1, Ordering::Relaxed);
            return respond_status(&mut send, ResponseStatus::Busy).await;
        };
        if node.relays_enabled()
            && let Some(relay) = node.relays.subscribe(spec, piece)
        {
            return serve_relayed(&node, &mut send, relay, spec, piece).await;
        }
        let fault = node.config.fault;
        let source_piece = match fault {
            Some(ServeFault::WrongPiece) => {
                let n_pieces = Geometry::new(spec.size).map(|g| g.n_pieces()).unwrap_or(1);
                (piece + 1) % n_pieces
            }
            _ => piece,
        };
        let store = node.store.clone();
        let encoded =
            tokio::task::spawn_blocking(move || store.encode_piece(spec, source_piece)).await;
        let mut encoded = match encoded {
            Ok(Ok(encoded)) => encoded,
            Ok(Err(EncodePieceError::NotHeld)) if fault == Some(ServeFault::LieAboutPieces) => {
                let len = Geometry::new(spec.size).map(|g| g.piece_len(piece)).unwrap_or(0);
                garbage(len as usize, piece)
            }
            Ok(Err(error)) => {
                debug!(%error, "not serving");
                node.forget_repeat(spec.hash, piece);
                return respond_status(&mut send, ResponseStatus::NotHeld).await;
            }
            Err(error) => {
                warn!(%error, "encoding task failed");
                return respond_status(&mut send, ResponseStatus::NotHeld).await;
            }
        };
        if fault == Some(ServeFault::FlipByte)
            && let Some(last) = encoded.last_mut()
        {
            *last ^= 0x01;
        }
        if send.write_all(&[ResponseStatus::Ok as u8]).await.is_err() {
            return;
        }
        let encoded = Bytes::from(encoded);
        if let Err(error) = upload(&node, &mut send, encoded.clone()).await {
            // Most often the requester cancelled (another copy arrived first).
            trace!(%error, "upload stopped");
            node.forget_repeat(spec.hash, piece);
            return;
        }
        let _ = send.finish();
        node.renew_repeat(spec.hash, piece);
        node.counters.pieces_served.fetch_add(1, Ordering::Relaxed);
        trace!(bytes = encoded.len(), "piece served");
    }
    .instrument(span)
    .await;
}

/// Writes `bytes` to the stream in [`UPLOAD_SLICE_BYTES`] slices, each paid for in the upload
/// bucket first, and counts what was sent.
async fn upload(
    node: &Node,
    send: &mut quinn::SendStream,
    bytes: Bytes,
) -> Result<(), quinn::WriteError> {
    // Slices of one buffer handed to quinn as they are: no copy per slice.
    for start in (0..bytes.len()).step_by(UPLOAD_SLICE_BYTES) {
        let slice = bytes.slice(start..(start + UPLOAD_SLICE_BYTES).min(bytes.len()));
        let len = slice.len() as u64;
        node.upload.acquire(len).await;
        send.write_chunk(slice).await?;
        node.counters.uploaded_bytes.fetch_add(len, Ordering::Relaxed);
    }
    Ok(())
}

/// Serves a piece this node is still receiving: what has verified so far, then each segment
/// as it verifies. If the node's own transfer fails, the rest comes from the store when the
/// piece arrived whole another way meanwhile (the encoding is deterministic, so the bytes
/// sent are its prefix), and otherwise the stream is reset with [`STREAM_RELAY_LOST`].
async fn serve_relayed(
    node: &Arc<Node>,
    send: &mut quinn::SendStream,
    mut relay: tokio::sync::watch::Receiver<RelayState>,
    spec: BlobSpec,
    piece: u32,
) {
    if send.write_all(&[ResponseStatus::Ok as u8]).await.is_err() {
        return;
    }
    let (mut segments_sent, mut bytes_sent) = (0, 0);
    loop {
        let (segments, end) = {
            let state = relay.borrow_and_update();
            (state.segments[segments_sent..].to_vec(), state.end)
        };
        segments_sent += segments.len();
        let wrote_any = !segments.is_empty();
        for segment in segments {
            bytes_sent += segment.len();
            if let Err(error) = upload(node, send, segment).await {
                trace!(%error, "relayed upload stopped");
                return;
            }
        }
        match end {
            RelayEnd::Open => {
                if relay.changed().await.is_err() && relay.borrow().end == RelayEnd::Open {
                    debug_assert!(false, "a relay writer marks its relay ended before it goes");
                    break;
                }
            }
            RelayEnd::Complete if wrote_any => {}
            RelayEnd::Complete => {
                let _ = send.finish();
                node.counters.pieces_served.fetch_add(1, Ordering::Relaxed);
                node.counters.pieces_relayed.fetch_add(1, Ordering::Relaxed);
                trace!(bytes = bytes_sent, "relayed piece served");
                return;
            }
            RelayEnd::Lost => break,
        }
    }
    let store = node.store.clone();
    let encoded = tokio::task::spawn_blocking(move || store.encode_piece(spec, piece)).await;
    match encoded {
        Ok(Ok(encoded)) if encoded.len() >= bytes_sent => {
            debug!("relay lost; the rest of the piece comes from the store");
            let rest = Bytes::from(encoded).slice(bytes_sent..);
            if upload(node, send, rest).await.is_ok() {
                let _ = send.finish();
                node.counters.pieces_served.fetch_add(1, Ordering::Relaxed);
                node.counters.pieces_relayed.fetch_add(1, Ordering::Relaxed);
            }
        }
        _ => {
            debug!(bytes = bytes_sent, "relay lost; resetting the stream");
            node.counters.relays_reset.fetch_add(1, Ordering::Relaxed);
            let _ = send.reset(STREAM_RELAY_LOST);
        }
    }
}

async fn respond_status(send: &mut quinn::SendStream, status: ResponseStatus) {
    if send.write_all(&[status as u8]).await.is_ok() {
        let _ = send.finish();
    }
}

/// Deterministic junk for a lying peer.
fn garbage(len: usize, seed: u32) -> Vec<u8> {
    let mut out = vec![0; len];
    blake3::Hasher::new().update(&seed.to_le_bytes()).finalize_xof().fill(&mut out);
    out
}

pub(crate) enum FrameError {
    /// The peer broke the protocol.
    Wire(WireError),
    /// The stream failed (reset, connection lost).
    Stream,
}

/// Reads one `len: u32 | bytes` frame of at most `len_max` bytes; `Ok(None)` at a clean end
/// of stream between frames.
pub(crate) async fn read_frame(
    recv: &mut quinn::RecvStream,
    len_max: usize,
) -> Result<Option<Bytes>, FrameError> {
    let mut header = [0u8; FRAME_HEADER_BYTES];
    match recv.read_exact(&mut header).await {
        Ok(()) => {}
        Err(quinn::ReadExactError::FinishedEarly(0)) => return Ok(None),
        Err(quinn::ReadExactError::FinishedEarly(_)) => {
            return Err(FrameError::Wire(WireError::Malformed("stream ended inside a frame")));
        }
        Err(quinn::ReadExactError::ReadError(_)) => return Err(FrameError::Stream),
    }
    let len = wire::check_len(header, len_max).map_err(FrameError::Wire)?;
    let mut frame = vec![0u8; len];
    match recv.read_exact(&mut frame).await {
        Ok(()) => Ok(Some(Bytes::from(frame))),
        Err(quinn::ReadExactError::FinishedEarly(_)) => {
            Err(FrameError::Wire(WireError::Malformed("stream ended inside a frame")))
        }
        Err(quinn::ReadExactError::ReadError(_)) => Err(FrameError::Stream),
    }
}

/// Upload concurrency with a priority queue: when all slots are busy, the waiting request for
/// the piece this node has uploaded least often goes next.
#[derive(Debug)]
struct UploadSlots {
    max_active: usize,
    max_waiting: usize,
    state: Mutex<SlotState>,
}

#[derive(Debug, Default)]
struct SlotState {
    active: usize,
    waiting: BinaryHeap<Waiter>,
    seq: u64,
    served: HashMap<(BlobHash, u32), u32>,
}

#[derive(Debug)]
struct Waiter {
    served: u32,
    seq: u64,
    key: (BlobHash, u32),
    tx: oneshot::Sender<SlotGuard>,
}

impl PartialEq for Waiter {
    fn eq(&self, other: &Self) -> bool {
        (self.served, self.seq) == (other.served, other.seq)
    }
}
impl Eq for Waiter {}
impl PartialOrd for Waiter {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Waiter {
    /// The max-heap pops the least-served piece first, then the oldest request.
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (other.served, other.seq).cmp(&(self.served, self.seq))
    }
}

#[derive(Debug)]
struct SlotGuard {
    slots: Arc<UploadSlots>,
    /// False for a guard that was never handed out (its waiter was gone).
    armed: bool,
}

impl UploadSlots {
    fn new(max_active: usize, max_waiting: usize) -> UploadSlots {
        UploadSlots { max_active, max_waiting, state: Mutex::new(SlotState::default()) }
    }

    /// A slot, or `None` if `max_waiting` requests already wait.
    async fn acquire(self: &Arc<Self>, hash: BlobHash, piece: u32) -> Option<SlotGuard> {
        let rx = {
            let mut state = self.state.lock().expect("slots lock");
            let key = (hash, piece);
            if state.active < self.max_active {
                state.active += 1;
                *state.served.entry(key).or_default() += 1;
                return Some(SlotGuard { slots: self.clone(), armed: true });
            }
            if state.waiting.len() >= self.max_waiting {
                return None;
            }
            let (tx, rx) = oneshot::channel();
            state.seq += 1;
            let served = state.served.get(&key).copied().unwrap_or(0);
            let seq = state.seq;
            state.waiting.push(Waiter { served, seq, key, tx });
            rx
        };
        // The releaser hands its slot over inside the channel: if this request is dropped
        // meanwhile, the guard is dropped with the channel and the slot moves on.
        rx.await.ok()
    }
}

impl Drop for SlotGuard {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let mut state = self.slots.state.lock().expect("slots lock");
        while let Some(waiter) = state.waiting.pop() {
            let handover = SlotGuard { slots: self.slots.clone(), armed: true };
            match waiter.tx.send(handover) {
                Ok(()) => {
                    *state.served.entry(waiter.key).or_default() += 1;
                    return;
                }
                Err(mut unused) => unused.armed = false,
            }
        }
        state.active -= 1;
    }
}
