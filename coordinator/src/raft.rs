//! openraft glue: the type configuration, and Raft RPCs carried over QUIC (`tt-raft/1`,
//! mutual TLS) as postcard-encoded request/response pairs.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::RPCTypes;
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use proto::command::{Proposal, ProposalResponse};
use serde::{Deserialize, Serialize};

use crate::rpc::{RpcClient, RpcError, RpcHandler};

/// A coordinator node's id in the Raft cluster.
pub type NodeId = u64;

/// What the cluster knows about a member: where to reach it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    /// `host:port` of the node's HTTP API.
    pub http_addr: String,
    /// `host:port` (UDP) of the node's QUIC endpoint for Raft traffic.
    pub raft_addr: String,
    /// `host:port` (UDP) of the node's QUIC endpoint for agents (`tt-agent/1`); empty if none.
    #[serde(default)]
    pub agent_addr: String,
}

openraft::declare_raft_types!(
    pub TypeConfig:
        D = Proposal,
        R = ProposalResponse,
        NodeId = NodeId,
        Node = NodeInfo,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = tokio::fs::File,
        AsyncRuntime = openraft::TokioRuntime,
);

pub type Raft = openraft::Raft<TypeConfig>;

#[derive(Serialize, Deserialize)]
enum RaftRequest {
    AppendEntries(AppendEntriesRequest<TypeConfig>),
    Vote(VoteRequest<NodeId>),
    InstallSnapshot(InstallSnapshotRequest<TypeConfig>),
}

#[derive(Serialize, Deserialize)]
enum RaftReply {
    AppendEntries(Result<AppendEntriesResponse<NodeId>, RaftError<NodeId>>),
    Vote(Result<VoteResponse<NodeId>, RaftError<NodeId>>),
    InstallSnapshot(
        Result<InstallSnapshotResponse<NodeId>, RaftError<NodeId, InstallSnapshotError>>,
    ),
}

/// Serves Raft RPCs arriving over QUIC to the local `Raft`.
pub struct RaftRpcHandler {
    pub raft: Raft,
}

impl RpcHandler for RaftRpcHandler {
    fn handle(&self, _peer: SocketAddr, req: Bytes) -> BoxFuture<'static, Result<Bytes, String>> {
        let raft = self.raft.clone();
        Box::pin(async move {
            let req: RaftRequest =
                postcard::from_bytes(&req).map_err(|e| format!("malformed Raft request: {e}"))?;
            let reply = match req {
                RaftRequest::AppendEntries(r) => {
                    RaftReply::AppendEntries(raft.append_entries(r).await)
                }
                RaftRequest::Vote(r) => RaftReply::Vote(raft.vote(r).await),
                RaftRequest::InstallSnapshot(r) => {
                    RaftReply::InstallSnapshot(raft.install_snapshot(r).await)
                }
            };
            postcard::to_stdvec(&reply).map(Bytes::from).map_err(|e| e.to_string())
        })
    }
}

/// Creates QUIC clients to other members.
#[derive(Clone)]
pub struct Network {
    endpoint: quinn::Endpoint,
    local: NodeId,
}

impl Network {
    pub fn new(endpoint: quinn::Endpoint, local: NodeId) -> Self {
        Self { endpoint, local }
    }
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = PeerClient;

    async fn new_client(&mut self, target: NodeId, node: &NodeInfo) -> PeerClient {
        let client = match resolve(&node.raft_addr) {
            Ok(addr) => Ok(RpcClient::new(self.endpoint.clone(), addr)),
            Err(e) => Err(e),
        };
        PeerClient { local: self.local, target, client: Arc::new(client) }
    }
}

fn resolve(addr: &str) -> Result<SocketAddr, String> {
    use std::net::ToSocketAddrs;
    addr.to_socket_addrs()
        .map_err(|e| format!("cannot resolve {addr}: {e}"))?
        .next()
        .ok_or_else(|| format!("{addr} resolves to no address"))
}

/// One member's Raft RPC client.
pub struct PeerClient {
    local: NodeId,
    target: NodeId,
    client: Arc<Result<RpcClient, String>>,
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Msg(String);

impl PeerClient {
    async fn call<E: std::error::Error>(
        &self,
        req: RaftRequest,
        action: RPCTypes,
        timeout: Duration,
    ) -> Result<RaftReply, RPCError<NodeId, NodeInfo, E>> {
        let client = match self.client.as_ref() {
            Ok(c) => c,
            Err(e) => return Err(RPCError::Unreachable(Unreachable::new(&Msg(e.clone())))),
        };
        let bytes =
            postcard::to_stdvec(&req).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        match client.call(Bytes::from(bytes), timeout).await {
            Ok(reply) => {
                postcard::from_bytes(&reply).map_err(|e| RPCError::Network(NetworkError::new(&e)))
            }
            Err(RpcError::Unreachable(e)) => {
                Err(RPCError::Unreachable(Unreachable::new(&Msg(e.to_string()))))
            }
            Err(RpcError::Timeout(after)) => Err(RPCError::Timeout(openraft::error::Timeout {
                action,
                id: self.local,
                target: self.target,
                timeout: after,
            })),
            Err(e) => Err(RPCError::Network(NetworkError::new(&e))),
        }
    }
}

fn unexpected<E: std::error::Error>() -> RPCError<NodeId, NodeInfo, E> {
    RPCError::Network(NetworkError::new(&Msg("reply of the wrong kind".into())))
}

impl RaftNetwork<TypeConfig> for PeerClient {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, NodeInfo, RaftError<NodeId>>> {
        match self
            .call(RaftRequest::AppendEntries(rpc), RPCTypes::AppendEntries, option.hard_ttl())
            .await?
        {
            RaftReply::AppendEntries(r) => r.map_err(|e| RemoteError::new(self.target, e).into()),
            _ => Err(unexpected()),
        }
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, NodeInfo, RaftError<NodeId, InstallSnapshotError>>,
    > {
        match self
            .call(RaftRequest::InstallSnapshot(rpc), RPCTypes::InstallSnapshot, option.hard_ttl())
            .await?
        {
            RaftReply::InstallSnapshot(r) => r.map_err(|e| RemoteError::new(self.target, e).into()),
            _ => Err(unexpected()),
        }
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, NodeInfo, RaftError<NodeId>>> {
        match self.call(RaftRequest::Vote(rpc), RPCTypes::Vote, option.hard_ttl()).await? {
            RaftReply::Vote(r) => r.map_err(|e| RemoteError::new(self.target, e).into()),
            _ => Err(unexpected()),
        }
    }
}
