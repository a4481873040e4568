//! Talks `tt-agent/1` to a coordinator cluster: pings (optionally long-polled), follows
//! redirects to the leader, and fails over across nodes by itself.

use std::net::{SocketAddr, ToSocketAddrs};
use std::time::Duration;

use bytes::Bytes;
use p2p_transfer::rpc::{RpcClient, make_client_endpoint};
use p2p_transfer::tls;
use proto::agent::{
    AgentReply, AgentRequest, MAX_LONG_POLL_MS, SwarmAnnounce, SwarmHello, SwarmHint, SwarmPeer,
};
use proto::ping::{PingRequestBean, PingResponseBean};
use rustls_pki_types::CertificateDer;
use tokio::sync::Mutex;

/// Extra time allowed beyond a long-poll wait before a ping call counts as failed.
pub const PING_RPC_SLACK: Duration = Duration::from_secs(5);
/// Pause before trying another node when none knows a leader.
pub const NO_LEADER_PAUSE: Duration = Duration::from_millis(100);
/// How long one blob piece may take to arrive.
pub const BLOB_RPC_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a swarm announce may take: the first for a build makes the leader import it into
/// its origin (or pull it from another node first).
pub const SWARM_RPC_TIMEOUT: Duration = Duration::from_secs(300);
/// Attempts per ping, over all nodes, before giving up.
pub const MAX_ATTEMPTS_PER_NODE: usize = 3;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("TLS setup: {0}")]
    Tls(String),
    #[error("no coordinator answered after {attempts} attempts; last error: {last}")]
    NoCoordinator { attempts: usize, last: String },
    #[error("coordinator refused the ping ({code}): {message}")]
    Refused { code: u16, message: String },
}

/// The host's blob node as its pings see it: what each ping says about it, and what it does
/// with the swarm hint an answer carries.
pub trait SwarmPinger: Send + Sync {
    /// Said with every ping.
    fn hello(&self) -> SwarmHello;
    /// An answer's hint. Must record the hinted blob before it returns, so that the next
    /// ping's [`SwarmPinger::hello`] lists it and is not answered with the same hint again.
    fn hint(&self, hint: SwarmHint);
}

pub struct CoordinatorClient {
    endpoint: quinn::Endpoint,
    nodes: Vec<SocketAddr>,
    token: Option<String>,
    /// The node pinged last (the leader, once found).
    current: Mutex<(SocketAddr, std::sync::Arc<RpcClient>)>,
    /// Set when the host runs a blob node: pings become [`AgentRequest::PingSwarm`].
    swarm: std::sync::OnceLock<std::sync::Arc<dyn SwarmPinger>>,
}

impl CoordinatorClient {
    /// A client for the cluster whose CA certificate is `ca` and whose agent endpoints are
    /// `nodes` (any subset; redirects lead to the leader).
    pub fn new(
        ca: &CertificateDer<'_>,
        nodes: Vec<SocketAddr>,
        token: Option<String>,
    ) -> Result<Self, ClientError> {
        Ok(Self::with_endpoint(Self::endpoint(ca)?, nodes, token))
    }

    /// A QUIC endpoint configured for the cluster whose CA is `ca`; many clients may share one
    /// (each keeps its own connection).
    pub fn endpoint(ca: &CertificateDer<'_>) -> Result<quinn::Endpoint, ClientError> {
        tls::install_crypto_provider();
        let config = tls::client_config(None, ca, &[proto::alpn::AGENT])
            .map_err(|e| ClientError::Tls(e.to_string()))?;
        make_client_endpoint(config).map_err(|e| ClientError::Tls(e.to_string()))
    }

    /// A client over an existing endpoint (see [`CoordinatorClient::endpoint`]).
    pub fn with_endpoint(
        endpoint: quinn::Endpoint,
        nodes: Vec<SocketAddr>,
        token: Option<String>,
    ) -> Self {
        assert!(!nodes.is_empty(), "at least one coordinator address");
        let first = nodes[0];
        let current =
            Mutex::new((first, std::sync::Arc::new(RpcClient::new(endpoint.clone(), first))));
        Self { endpoint, nodes, token, current, swarm: std::sync::OnceLock::new() }
    }

    /// From now on pings carry `swarm`'s hello and hand it the answers' hints. Set once.
    pub fn set_swarm(&self, swarm: std::sync::Arc<dyn SwarmPinger>) {
        assert!(self.swarm.set(swarm).is_ok(), "the swarm pinger is set once");
    }

    async fn rotate(&self, to: Option<SocketAddr>) {
        let mut cur = self.current.lock().await;
        let next = to.unwrap_or_else(|| {
            let i = self
                .nodes
                .iter()
                .position(|n| *n == cur.0)
                .map_or(0, |i| (i + 1) % self.nodes.len());
            self.nodes[i]
        });
        *cur = (next, std::sync::Arc::new(RpcClient::new(self.endpoint.clone(), next)));
    }

    /// Pings; if the answer would be NOOP, the leader may hold it up to `wait`.
    pub async fn ping(
        &self,
        request: &PingRequestBean,
        wait: Duration,
    ) -> Result<PingResponseBean, ClientError> {
        let wait_ms = u32::try_from(wait.as_millis()).unwrap_or(u32::MAX).min(MAX_LONG_POLL_MS);
        let token = self.token.clone();
        let req = match self.swarm.get() {
            Some(swarm) => AgentRequest::PingSwarm {
                token,
                wait_ms,
                request: request.clone(),
                hello: swarm.hello(),
            },
            None => AgentRequest::Ping { token, wait_ms, request: request.clone() },
        };
        let timeout = Duration::from_millis(u64::from(wait_ms)) + PING_RPC_SLACK;
        let (goal, hint) = self
            .call_leader(&req, timeout, "ping", |reply| match reply {
                AgentReply::Goal(goal) => Ok((goal, None)),
                AgentReply::GoalSwarm { goal, swarm } => Ok((goal, swarm)),
                other => Err(Box::new(other)),
            })
            .await?;
        if let (Some(hint), Some(swarm)) = (hint, self.swarm.get()) {
            swarm.hint(hint);
        }
        Ok(goal)
    }

    /// Tells the tracker (the leader) that this host's blob endpoint fetches or holds a blob;
    /// answers the blob's size and the peers to fetch it from (none: no swarm for it).
    pub async fn announce(
        &self,
        announce: &SwarmAnnounce,
    ) -> Result<(u64, Vec<SwarmPeer>), ClientError> {
        let req = AgentRequest::Swarm { token: self.token.clone(), announce: announce.clone() };
        self.call_leader(&req, SWARM_RPC_TIMEOUT, "swarm announce", |reply| match reply {
            AgentReply::Peers { size, peers } => Ok((size, peers)),
            other => Err(Box::new(other)),
        })
        .await
    }

    /// Sends `req` to the leader, following redirects and failing over; `accept` takes the
    /// reply it expects (anything else counts as a failed attempt).
    async fn call_leader<T>(
        &self,
        req: &AgentRequest,
        timeout: Duration,
        what: &str,
        accept: impl Fn(AgentReply) -> Result<T, Box<AgentReply>>,
    ) -> Result<T, ClientError> {
        let bytes = Bytes::from(postcard::to_stdvec(req).expect("requests encode"));
        let attempts = MAX_ATTEMPTS_PER_NODE * self.nodes.len();
        let mut last = String::new();
        for _ in 0..attempts {
            let (addr, client) = {
                let cur = self.current.lock().await;
                (cur.0, cur.1.clone())
            };
            match client.call(bytes.clone(), timeout).await {
                Ok(reply) => match postcard::from_bytes::<AgentReply>(&reply) {
                    Ok(AgentReply::Refused { code, message }) => {
                        return Err(ClientError::Refused { code, message });
                    }
                    Ok(AgentReply::Redirect { leader: Some(leader) }) => {
                        last = format!("{addr} redirected to {leader}");
                        let resolved = leader.to_socket_addrs().ok().and_then(|mut a| a.next());
                        self.rotate(resolved).await;
                    }
                    Ok(AgentReply::Redirect { leader: None }) => {
                        last = format!("{addr} knows no leader");
                        self.rotate(None).await;
                        tokio::time::sleep(NO_LEADER_PAUSE).await;
                    }
                    Ok(reply) => match accept(reply) {
                        Ok(value) => return Ok(value),
                        Err(other) => {
                            last = format!("{addr} answered {other:?} to a {what}");
                            self.rotate(None).await;
                        }
                    },
                    Err(e) => {
                        last = format!("{addr} sent a malformed reply: {e}");
                        self.rotate(None).await;
                    }
                },
                Err(e) => {
                    last = format!("{addr}: {e}");
                    self.rotate(None).await;
                }
            }
        }
        Err(ClientError::NoCoordinator { attempts, last })
    }

    /// Up to `max_len` bytes of blob `hash` from `offset`, from any node that has it (nodes
    /// without it answer 404 and the next one is asked).
    pub async fn fetch_blob(
        &self,
        hash: &str,
        offset: u64,
        max_len: u32,
    ) -> Result<(u64, Vec<u8>), ClientError> {
        let req = AgentRequest::FetchBlob {
            token: self.token.clone(),
            blake3: hash.to_string(),
            offset,
            max_len,
        };
        let bytes = Bytes::from(postcard::to_stdvec(&req).expect("requests encode"));
        let attempts = MAX_ATTEMPTS_PER_NODE * self.nodes.len();
        let mut last = String::new();
        for _ in 0..attempts {
            let (addr, client) = {
                let cur = self.current.lock().await;
                (cur.0, cur.1.clone())
            };
            match client.call(bytes.clone(), BLOB_RPC_TIMEOUT).await {
                Ok(reply) => match postcard::from_bytes::<AgentReply>(&reply) {
                    Ok(AgentReply::Blob { total, data }) => return Ok((total, data)),
                    Ok(AgentReply::Refused { code: 404, message }) => {
                        last = format!("{addr}: {message}")
                    }
                    Ok(AgentReply::Refused { code, message }) => {
                        return Err(ClientError::Refused { code, message });
                    }
                    Ok(other) => last = format!("{addr} answered {other:?} to a blob fetch"),
                    Err(e) => last = format!("{addr} sent a malformed reply: {e}"),
                },
                Err(e) => last = format!("{addr}: {e}"),
            }
            self.rotate(None).await;
        }
        Err(ClientError::NoCoordinator { attempts, last })
    }
}

impl crate::download::BlobSource for CoordinatorClient {
    fn read_blob<'a>(
        &'a self,
        hash: &'a str,
        offset: u64,
        max_len: u32,
    ) -> futures::future::BoxFuture<'a, Result<(u64, Vec<u8>), String>> {
        Box::pin(
            async move { self.fetch_blob(hash, offset, max_len).await.map_err(|e| e.to_string()) },
        )
    }
}
