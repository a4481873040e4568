//! Request/response RPC over QUIC, used for Raft RPCs between coordinator peers.
//!
//! [`RpcServer`] accepts connections and hands each request to an [`RpcHandler`];
//! [`RpcClient`] sends requests to one peer over one cached connection. Both sides speak the
//! same framing, and neither knows what the bytes mean (the caller serializes).
//!
//! Wire format, one bidirectional stream per call:
//!
//! ```text
//! client → server: len: u32 BE | request (len bytes)                      then FIN
//! server → client: len: u32 BE | status: u8 | body (len - 1 bytes)         then FIN
//!                  status 0 = ok, body is the response
//!                  status 1 = handler error, body is a UTF-8 message
//! ```
//!
//! Goals:
//! - A bad frame costs one stream, never the connection or the process. A frame declaring more
//!   than [`MAX_RPC_FRAME_BYTES`] is refused before anything is allocated for it: the stream is
//!   reset with [`STREAM_CODE_FRAME_TOO_LARGE`].
//! - Errors say what the caller should do: [`RpcError::Unreachable`] (back off),
//!   [`RpcError::Timeout`], [`RpcError::Remote`] (the handler said no) and
//!   [`RpcError::Protocol`] (a bug or version skew on one side).
//!
//! Non-goals:
//! - Retries. The caller (openraft) owns retry and backoff policy.
//! - Per-node identity: see [`crate::tls`].

use std::future::Future;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use quinn::{ConnectionError, ReadError, ReadExactError, VarInt, WriteError};
use tokio::sync::{Semaphore, watch};
use tokio::time::Instant;
use tracing::{Instrument, debug, debug_span, info_span, trace, warn};

use crate::tls;

/// Largest frame (request, or status byte plus response) either side accepts or sends, in bytes.
/// Comfortably above openraft's 3 MiB snapshot chunks and large append batches.
pub const MAX_RPC_FRAME_BYTES: usize = 64 * 1024 * 1024;

/// Most RPC streams a client may have open at once on one connection. Further calls wait in
/// `open_bi` (bounded by their timeout) until a stream finishes, which bounds the handler tasks
/// one peer can start.
pub const MAX_CONCURRENT_RPC_STREAMS: u32 = 64;

/// Most connections an [`RpcServer`] serves at once. Connections beyond this are refused
/// during the handshake. A 3-node cluster needs two; the rest is headroom for reconnects.
pub const MAX_CONCURRENT_RPC_CONNECTIONS: usize = 64;

/// Stream error code: the declared frame length exceeds [`MAX_RPC_FRAME_BYTES`].
pub const STREAM_CODE_FRAME_TOO_LARGE: VarInt = VarInt::from_u32(1);
/// Stream error code: the stream ended or failed before a whole frame arrived.
pub const STREAM_CODE_MALFORMED: VarInt = VarInt::from_u32(2);
/// Connection close code sent by [`RpcServer::close`].
pub const CONNECTION_CODE_SHUTDOWN: VarInt = VarInt::from_u32(0);

/// How long one connection attempt may take. It runs in a task of its own, not in the call
/// that started it: a call whose timeout is shorter than the handshake (a Raft heartbeat's
/// 50 ms over a link with 20 ms of one-way delay and some loss) gives up, and the calls after
/// it wait for the same handshake instead of aborting and restarting it forever.
pub const RPC_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const FRAME_HEADER_BYTES: usize = 4;
const STATUS_OK: u8 = 0;
const STATUS_ERROR: u8 = 1;

/// A boxed, sendable future, as returned by [`RpcHandler::handle`].
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Serves requests for an [`RpcServer`].
pub trait RpcHandler: Send + Sync + 'static {
    /// Answers one request from `peer`. `Err(message)` reaches the caller as
    /// [`RpcError::Remote`]. Calls run concurrently, one task per stream.
    fn handle(&self, peer: SocketAddr, req: Bytes) -> BoxFuture<'static, Result<Bytes, String>>;
}

/// An [`RpcHandler`] made from a closure; see [`handler_fn`].
pub struct FnHandler<F>(F);

impl<F, Fut> RpcHandler for FnHandler<F>
where
    F: Fn(SocketAddr, Bytes) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Bytes, String>> + Send + 'static,
{
    fn handle(&self, peer: SocketAddr, req: Bytes) -> BoxFuture<'static, Result<Bytes, String>> {
        Box::pin((self.0)(peer, req))
    }
}

/// Wraps an async closure as an [`RpcHandler`].
pub fn handler_fn<F, Fut>(f: F) -> Arc<dyn RpcHandler>
where
    F: Fn(SocketAddr, Bytes) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Bytes, String>> + Send + 'static,
{
    Arc::new(FnHandler(f))
}

/// Binding a UDP socket for a QUIC endpoint failed.
#[derive(Debug, thiserror::Error)]
#[error("binding QUIC endpoint on {addr}: {source}")]
pub struct BindError {
    pub addr: SocketAddr,
    #[source]
    pub source: std::io::Error,
}

/// Why an [`RpcClient::call`] failed. The peer is not repeated here: the caller knows it, and
/// the `rpc_call` span carries it as `peer`.
#[derive(Debug, thiserror::Error)]
pub enum RpcError {
    /// No connection to the peer: connecting failed or did not finish within the call's
    /// timeout (peer down, wrong address, or the TLS handshake was refused), or an established
    /// connection was lost. The request may or may not have been delivered if the connection
    /// was lost mid-call. For openraft: `Unreachable`, so it backs off.
    #[error("peer unreachable: {0}")]
    Unreachable(#[source] LinkError),
    /// Connected, but no response arrived within the call's timeout (the value). The request
    /// may have been handled. For openraft: `Timeout`.
    #[error("peer did not answer within {0:?}")]
    Timeout(Duration),
    /// The peer's handler returned an error message.
    #[error("peer handler failed: {0}")]
    Remote(String),
    /// The peer broke the wire protocol or refused the stream (for example, our request frame
    /// was too large for it). A bug or version skew; retrying will not help.
    #[error("protocol error: {0}")]
    Protocol(#[source] ProtocolError),
    /// The request exceeds [`MAX_RPC_FRAME_BYTES`]; nothing was sent. Split the request.
    #[error("request of {len} bytes exceeds the {len_max}-byte frame limit")]
    RequestTooLarge { len: usize, len_max: usize },
}

impl RpcError {
    /// True for [`RpcError::Unreachable`]: the caller should treat the peer as down.
    pub fn is_unreachable(&self) -> bool {
        matches!(self, RpcError::Unreachable(_))
    }
}

/// The transport-level cause of [`RpcError::Unreachable`].
#[derive(Debug, Clone, thiserror::Error)]
pub enum LinkError {
    /// quinn refused to start connecting (for example, the endpoint is closed or the address
    /// family does not match the endpoint's socket).
    #[error("cannot connect: {0}")]
    Connect(#[from] quinn::ConnectError),
    /// The handshake failed or the connection was lost.
    #[error("connection failed: {0}")]
    Connection(#[from] ConnectionError),
    /// The handshake had not finished when the call's timeout expired (it goes on, up to
    /// [`RPC_CONNECT_TIMEOUT`], for the calls after it), or within [`RPC_CONNECT_TIMEOUT`].
    #[error("connecting timed out after {0:?}")]
    ConnectTimedOut(Duration),
}

/// The cause of [`RpcError::Protocol`].
#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    /// The peer reset or stopped our stream with this error code (see `STREAM_CODE_*`).
    #[error("stream refused by peer with code {0}")]
    StreamRefused(VarInt),
    /// The response frame declares more than [`MAX_RPC_FRAME_BYTES`].
    #[error("response frame of {len} bytes exceeds the {len_max}-byte limit")]
    ResponseTooLarge { len: usize, len_max: usize },
    /// The response stream ended before a whole frame arrived.
    #[error("response truncated")]
    Truncated,
    /// The response frame is empty or has an unknown status byte.
    #[error("malformed response frame: {0}")]
    MalformedResponse(&'static str),
    /// The stream failed in a way that is not a connection loss (0-RTT rejected, closed stream).
    #[error("stream error: {0}")]
    Stream(String),
}

/// Serves RPCs on one QUIC endpoint. Cheap to clone; clones share the endpoint.
#[derive(Debug, Clone)]
pub struct RpcServer {
    endpoint: quinn::Endpoint,
}

impl RpcServer {
    /// Binds a QUIC server endpoint on `addr` (port 0 picks a free port; see
    /// [`RpcServer::local_addr`]). Must be called inside a tokio runtime.
    ///
    /// Replaces `config`'s transport with [`tls::transport_config`] plus the RPC stream limits:
    /// at most [`MAX_CONCURRENT_RPC_STREAMS`] bidirectional streams per connection, and no
    /// unidirectional ones.
    pub fn bind(addr: SocketAddr, config: quinn::ServerConfig) -> Result<RpcServer, BindError> {
        Self::bind_with_reset_key(addr, config, None)
    }

    /// [`RpcServer::bind`] with a stateless-reset key that survives restarts (see
    /// [`tls::StableResetKey`]): peers still connected to this node's previous incarnation
    /// learn at their next packet that the connection is gone, instead of after
    /// [`tls::IDLE_TIMEOUT`]. `None`: a random key, as [`RpcServer::bind`].
    pub fn bind_with_reset_key(
        addr: SocketAddr,
        mut config: quinn::ServerConfig,
        reset_key: Option<tls::StableResetKey>,
    ) -> Result<RpcServer, BindError> {
        let mut transport = tls::transport_config();
        transport.max_concurrent_bidi_streams(VarInt::from_u32(MAX_CONCURRENT_RPC_STREAMS));
        transport.max_concurrent_uni_streams(VarInt::from_u32(0));
        config.transport_config(Arc::new(transport));
        let endpoint = match reset_key {
            None => quinn::Endpoint::server(config, addr),
            Some(key) => std::net::UdpSocket::bind(addr).and_then(|socket| {
                let runtime = quinn::default_runtime()
                    .ok_or_else(|| std::io::Error::other("no async runtime"))?;
                quinn::Endpoint::new(key.endpoint_config(), Some(config), socket, runtime)
            }),
        }
        .map_err(|source| BindError { addr, source })?;
        Ok(RpcServer { endpoint })
    }

    /// The address the server is listening on.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.endpoint.local_addr()
    }

    /// The underlying endpoint.
    pub fn endpoint(&self) -> &quinn::Endpoint {
        &self.endpoint
    }

    /// Accepts connections until the endpoint is closed, serving every stream with `handler`
    /// in its own task. Returns after [`RpcServer::close`].
    pub async fn serve(&self, handler: Arc<dyn RpcHandler>) {
        self.serve_with_limit(handler, MAX_CONCURRENT_RPC_CONNECTIONS).await;
    }

    /// [`RpcServer::serve`] with another limit on concurrent connections (e.g. one per agent
    /// of a fleet, where each host keeps one connection).
    pub async fn serve_with_limit(&self, handler: Arc<dyn RpcHandler>, max_connections: usize) {
        let connection_slots = Arc::new(Semaphore::new(max_connections));
        while let Some(incoming) = self.endpoint.accept().await {
            let peer = incoming.remote_address();
            let Ok(slot) = connection_slots.clone().try_acquire_owned() else {
                warn!(%peer, n_max = max_connections, "too many connections; refusing");
                incoming.refuse();
                continue;
            };
            let handler = handler.clone();
            tokio::spawn(
                async move {
                    serve_connection(incoming, handler).await;
                    drop(slot);
                }
                .instrument(info_span!("rpc_conn", peer = %peer)),
            );
        }
        debug!("rpc server endpoint closed");
    }

    /// Closes the endpoint and every connection on it; [`RpcServer::serve`] then returns.
    pub fn close(&self) {
        self.endpoint.close(CONNECTION_CODE_SHUTDOWN, b"shutdown");
    }
}

async fn serve_connection(incoming: quinn::Incoming, handler: Arc<dyn RpcHandler>) {
    let peer = incoming.remote_address();
    let connection = match incoming.await {
        Ok(connection) => connection,
        Err(error) => {
            // Includes a client certificate the cluster CA did not sign.
            warn!(%error, "handshake failed");
            return;
        }
    };
    debug!("connection established");
    loop {
        let (send, recv) = match connection.accept_bi().await {
            Ok(streams) => streams,
            Err(
                ConnectionError::ApplicationClosed(_)
                | ConnectionError::LocallyClosed
                | ConnectionError::ConnectionClosed(_),
            ) => {
                debug!("connection closed");
                return;
            }
            Err(error) => {
                debug!(%error, "connection lost");
                return;
            }
        };
        let span = debug_span!("rpc_stream", stream = %send.id());
        tokio::spawn(serve_stream(handler.clone(), peer, send, recv).instrument(span));
    }
}

async fn serve_stream(
    handler: Arc<dyn RpcHandler>,
    peer: SocketAddr,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
) {
    let request = match read_frame(&mut recv).await {
        Ok(request) => request,
        Err(error) => {
            let code = match error {
                FrameError::TooLarge { .. } => {
                    warn!(%error, "refusing request");
                    STREAM_CODE_FRAME_TOO_LARGE
                }
                FrameError::Truncated | FrameError::Read(_) => {
                    debug!(%error, "bad request stream");
                    STREAM_CODE_MALFORMED
                }
            };
            // Either may fail if the peer already gave up on the stream; nothing more to do.
            let _ = recv.stop(code);
            let _ = send.reset(code);
            return;
        }
    };
    trace!(req_bytes = request.len(), "request");

    let (status, body) = match handler.handle(peer, request).await {
        Ok(body) if body.len() < MAX_RPC_FRAME_BYTES => (STATUS_OK, body),
        Ok(body) => {
            warn!(resp_bytes = body.len(), "handler response exceeds the frame limit");
            let message = format!(
                "response of {} bytes exceeds the {MAX_RPC_FRAME_BYTES}-byte frame limit",
                body.len()
            );
            (STATUS_ERROR, Bytes::from(message))
        }
        Err(message) => {
            debug!(%message, "handler error");
            let mut body = Bytes::from(message);
            body.truncate(MAX_RPC_FRAME_BYTES - 1);
            (STATUS_ERROR, body)
        }
    };

    let frame_len = u32::try_from(body.len() + 1).expect("frame length bounded by the limit");
    let mut header = BytesMut::with_capacity(FRAME_HEADER_BYTES + 1);
    header.put_u32(frame_len);
    header.put_u8(status);
    let result = send.write_all_chunks(&mut [header.freeze(), body]).await;
    match result {
        // `finish` fails only if the stream was already reset, i.e. the client gave up.
        Ok(()) => {
            let _ = send.finish();
        }
        Err(error) => debug!(%error, "writing response failed"),
    }
}

/// Reading one frame failed.
#[derive(Debug, thiserror::Error)]
enum FrameError {
    #[error("declared frame of {len} bytes exceeds the {len_max}-byte limit")]
    TooLarge { len: usize, len_max: usize },
    #[error("stream ended inside a frame")]
    Truncated,
    #[error(transparent)]
    Read(ReadError),
}

impl From<ReadExactError> for FrameError {
    fn from(error: ReadExactError) -> Self {
        match error {
            ReadExactError::FinishedEarly(_) => FrameError::Truncated,
            ReadExactError::ReadError(error) => FrameError::Read(error),
        }
    }
}

/// Reads `len: u32 BE | len bytes`. The length is checked before any buffer is allocated.
async fn read_frame(recv: &mut quinn::RecvStream) -> Result<Bytes, FrameError> {
    let mut header = [0u8; FRAME_HEADER_BYTES];
    recv.read_exact(&mut header).await?;
    let len = u32::from_be_bytes(header) as usize;
    if len > MAX_RPC_FRAME_BYTES {
        return Err(FrameError::TooLarge { len, len_max: MAX_RPC_FRAME_BYTES });
    }
    let mut frame = vec![0u8; len];
    recv.read_exact(&mut frame).await?;
    Ok(Bytes::from(frame))
}

/// A client endpoint bound to `0.0.0.0:0`, using `config` for every connection.
/// Use [`make_client_endpoint_for`] to reach IPv6 peers.
pub fn make_client_endpoint(config: quinn::ClientConfig) -> Result<quinn::Endpoint, BindError> {
    make_client_endpoint_for(config, SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)))
}

/// A client endpoint bound to port 0 on the unspecified address of `peer`'s family.
pub fn make_client_endpoint_for(
    config: quinn::ClientConfig,
    peer: SocketAddr,
) -> Result<quinn::Endpoint, BindError> {
    let addr = match peer {
        SocketAddr::V4(_) => SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)),
        SocketAddr::V6(_) => SocketAddr::from((Ipv6Addr::UNSPECIFIED, 0)),
    };
    let mut endpoint =
        quinn::Endpoint::client(addr).map_err(|source| BindError { addr, source })?;
    endpoint.set_default_client_config(config);
    Ok(endpoint)
}

/// Calls one peer. Holds at most one connection, opened on the first call and re-opened
/// lazily by the first call after it closes.
#[derive(Debug)]
pub struct RpcClient {
    endpoint: quinn::Endpoint,
    peer: SocketAddr,
    /// The connection, or the attempt in progress that every caller waits for.
    slot: std::sync::Mutex<Slot>,
}

/// The outcome of one connection attempt, once known.
type Attempt = watch::Receiver<Option<Result<quinn::Connection, LinkError>>>;

#[derive(Debug)]
enum Slot {
    Idle,
    /// A handshake in progress in its own task (see [`RPC_CONNECT_TIMEOUT`]).
    Connecting(Attempt),
    Connected(quinn::Connection),
}

impl RpcClient {
    /// A client for the server at `peer`, connecting through `endpoint` (which must have a
    /// default client config, as from [`make_client_endpoint`]) with server name
    /// [`tls::CLUSTER_SERVER_NAME`]. Does not connect until the first call.
    pub fn new(endpoint: quinn::Endpoint, peer: SocketAddr) -> RpcClient {
        RpcClient { endpoint, peer, slot: std::sync::Mutex::new(Slot::Idle) }
    }

    /// The peer this client calls.
    pub fn peer(&self) -> SocketAddr {
        self.peer
    }

    /// Sends `req` and waits for the response, all within `timeout` (connecting included;
    /// a connection attempt outlives a call that gives up on it).
    pub async fn call(&self, req: Bytes, timeout: Duration) -> Result<Bytes, RpcError> {
        if req.len() > MAX_RPC_FRAME_BYTES {
            return Err(RpcError::RequestTooLarge { len: req.len(), len_max: MAX_RPC_FRAME_BYTES });
        }
        let deadline = Instant::now() + timeout;
        let span = debug_span!("rpc_call", peer = %self.peer, req_bytes = req.len());
        async {
            let connection = self.connection(deadline, timeout).await?;
            match tokio::time::timeout_at(deadline, self.exchange(&connection, req)).await {
                Ok(result) => result,
                Err(_elapsed) => Err(RpcError::Timeout(timeout)),
            }
        }
        .instrument(span)
        .await
    }

    /// The open connection, or the outcome of the attempt in progress (started here if there
    /// is none), waited for until `deadline`.
    async fn connection(
        &self,
        deadline: Instant,
        timeout: Duration,
    ) -> Result<quinn::Connection, RpcError> {
        let mut attempt = {
            let mut slot = self.slot.lock().expect("rpc client lock");
            match &*slot {
                Slot::Connected(connection) if connection.close_reason().is_none() => {
                    return Ok(connection.clone());
                }
                Slot::Connecting(attempt)
                    if !attempt.borrow().as_ref().is_some_and(|outcome| outcome.is_err()) =>
                {
                    attempt.clone()
                }
                stale => {
                    if matches!(stale, Slot::Connected(_)) {
                        debug!("cached connection closed; reconnecting");
                    }
                    let attempt = self.start_connecting()?;
                    *slot = Slot::Connecting(attempt.clone());
                    attempt
                }
            }
        };
        let outcome =
            match tokio::time::timeout_at(deadline, attempt.wait_for(Option::is_some)).await {
                Err(_elapsed) => {
                    return Err(RpcError::Unreachable(LinkError::ConnectTimedOut(timeout)));
                }
                Ok(Ok(outcome)) => outcome.clone().expect("waited for an outcome"),
                // The attempt's task ended without an outcome: the runtime is shutting down.
                Ok(Err(_closed)) => Err(LinkError::ConnectTimedOut(RPC_CONNECT_TIMEOUT)),
            };
        let mut slot = self.slot.lock().expect("rpc client lock");
        let current = matches!(&*slot, Slot::Connecting(a) if a.same_channel(&attempt));
        match outcome {
            Ok(connection) => {
                if current {
                    debug!("connected");
                    *slot = Slot::Connected(connection.clone());
                }
                Ok(connection)
            }
            Err(error) => {
                if current {
                    *slot = Slot::Idle;
                }
                Err(RpcError::Unreachable(error))
            }
        }
    }

    /// Starts a handshake in a task of its own, bounded by [`RPC_CONNECT_TIMEOUT`].
    fn start_connecting(&self) -> Result<Attempt, RpcError> {
        let connecting = self
            .endpoint
            .connect(self.peer, tls::CLUSTER_SERVER_NAME)
            .map_err(|e| RpcError::Unreachable(e.into()))?;
        let (outcome, attempt) = watch::channel(None);
        let span = debug_span!("rpc_connect", peer = %self.peer);
        tokio::spawn(
            async move {
                let result = match tokio::time::timeout(RPC_CONNECT_TIMEOUT, connecting).await {
                    Ok(Ok(connection)) => Ok(connection),
                    Ok(Err(error)) => Err(LinkError::Connection(error)),
                    Err(_elapsed) => Err(LinkError::ConnectTimedOut(RPC_CONNECT_TIMEOUT)),
                };
                if let Err(error) = &result {
                    debug!(%error, "connection attempt failed");
                }
                let _ = outcome.send(Some(result));
            }
            .instrument(span),
        );
        Ok(attempt)
    }

    async fn exchange(
        &self,
        connection: &quinn::Connection,
        req: Bytes,
    ) -> Result<Bytes, RpcError> {
        let unreachable = |e: ConnectionError| RpcError::Unreachable(e.into());
        let protocol = RpcError::Protocol;
        let from_write = |e: WriteError| match e {
            WriteError::ConnectionLost(e) => unreachable(e),
            WriteError::Stopped(code) => protocol(ProtocolError::StreamRefused(code)),
            e @ (WriteError::ClosedStream | WriteError::ZeroRttRejected) => {
                protocol(ProtocolError::Stream(e.to_string()))
            }
        };

        let (mut send, mut recv) = connection.open_bi().await.map_err(unreachable)?;
        let len = u32::try_from(req.len()).expect("request length bounded by the limit");
        let header = Bytes::copy_from_slice(&len.to_be_bytes());
        send.write_all_chunks(&mut [header, req]).await.map_err(from_write)?;
        // Fails only if the stream was reset, which the read below reports.
        let _ = send.finish();

        let mut frame = read_frame(&mut recv).await.map_err(|e| match e {
            FrameError::TooLarge { len, len_max } => {
                // Tell the server to stop sending the rest of the oversized response.
                let _ = recv.stop(STREAM_CODE_FRAME_TOO_LARGE);
                protocol(ProtocolError::ResponseTooLarge { len, len_max })
            }
            FrameError::Truncated => protocol(ProtocolError::Truncated),
            FrameError::Read(ReadError::ConnectionLost(e)) => unreachable(e),
            FrameError::Read(ReadError::Reset(code)) => {
                protocol(ProtocolError::StreamRefused(code))
            }
            FrameError::Read(e) => protocol(ProtocolError::Stream(e.to_string())),
        })?;
        if frame.is_empty() {
            return Err(protocol(ProtocolError::MalformedResponse("empty frame, no status byte")));
        }
        let body = frame.split_off(1);
        match frame[0] {
            STATUS_OK => {
                trace!(resp_bytes = body.len(), "response");
                Ok(body)
            }
            STATUS_ERROR => Err(RpcError::Remote(String::from_utf8_lossy(&body).into_owned())),
            _ => Err(protocol(ProtocolError::MalformedResponse("unknown status byte"))),
        }
    }
}
