//! The native agent endpoint: `tt-agent/1` over QUIC (server-authenticated TLS under the
//! cluster CA; agents identify with a token). One postcard [`AgentRequest`] and
//! [`AgentReply`] per stream. Followers redirect agents to the leader; the leader may hold a
//! NOOP ping (long-poll) and answers as soon as something concerning the host changes.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use proto::agent::{
    AgentReply, AgentRequest, MAX_AGENT_FRAME_BYTES, MAX_BLOB_CHUNK_BYTES, MAX_HELLO_BLOBS,
    MAX_LONG_POLL_MS, SwarmAnnounce, SwarmHello, SwarmHint,
};
use proto::beans::BLOB_URL_PREFIX;
use proto::enums::DeployStage;
use proto::ping::PingResponseBean;
use tracing::Instrument;

use crate::api::{App, known_leader};
use crate::blobs::BlobError;
use crate::rpc::{BoxFuture, RpcHandler};
use crate::state::prefetch::PrefetchBlob;

/// Agent connections one node serves at once: one per host of a large fleet (each QUIC
/// connection costs tens of KiB).
pub const MAX_AGENT_CONNECTIONS: usize = 200_000;

/// Serves agent requests on one node.
pub struct AgentHandler {
    pub app: App,
}

fn token_ok(app: &App, token: Option<&str>) -> bool {
    app.agent_token.as_deref().is_none_or(|want| token == Some(want))
}

fn encode(reply: &AgentReply) -> Result<Bytes, String> {
    postcard::to_stdvec(reply).map(Bytes::from).map_err(|e| e.to_string())
}

impl RpcHandler for AgentHandler {
    fn handle(&self, peer: SocketAddr, req: Bytes) -> BoxFuture<'static, Result<Bytes, String>> {
        let app = self.app.clone();
        Box::pin(async move {
            let refused =
                |code: u16, message: String| encode(&AgentReply::Refused { code, message });
            if req.len() > MAX_AGENT_FRAME_BYTES {
                return refused(
                    413,
                    format!("request of {} bytes exceeds {MAX_AGENT_FRAME_BYTES}", req.len()),
                );
            }
            let request: AgentRequest = match postcard::from_bytes(&req) {
                Ok(r) => r,
                Err(e) => return refused(400, format!("malformed agent request: {e}")),
            };
            let (token, wait_ms, request, hello) = match request {
                AgentRequest::Ping { token, wait_ms, request } => (token, wait_ms, request, None),
                AgentRequest::PingSwarm { token, wait_ms, request, mut hello } => {
                    hello.holding.truncate(MAX_HELLO_BLOBS);
                    (token, wait_ms, request, Some(hello))
                }
                AgentRequest::Swarm { token, announce } => {
                    if !token_ok(&app, token.as_deref()) {
                        tracing::warn!(%peer, "swarm announce with a missing or wrong token refused");
                        return refused(401, "missing or wrong agent token".into());
                    }
                    return swarm_peers(&app, announce).await;
                }
                AgentRequest::FetchBlob { token, blake3, offset, max_len } => {
                    if !token_ok(&app, token.as_deref()) {
                        tracing::warn!(%peer, "blob fetch with a missing or wrong token refused");
                        return refused(401, "missing or wrong agent token".into());
                    }
                    let max_len = max_len.min(MAX_BLOB_CHUNK_BYTES);
                    return match app.blobs.read(&blake3, offset, max_len).await {
                        Ok((total, data)) => encode(&AgentReply::Blob { total, data }),
                        Err(e @ BlobError::NotFound(_)) => refused(404, e.to_string()),
                        Err(e @ BlobError::BadHash(_)) => refused(400, e.to_string()),
                        Err(e) => refused(503, e.to_string()),
                    };
                }
            };
            if !token_ok(&app, token.as_deref()) {
                tracing::warn!(%peer, host = %request.host_id, "agent ping with a missing or wrong token refused");
                return refused(401, "missing or wrong agent token".into());
            }
            match known_leader(&app) {
                Some((leader, _)) if leader == app.node_id => {}
                Some((_, node)) => {
                    let leader = node.map(|n| n.agent_addr).filter(|a| !a.is_empty());
                    return encode(&AgentReply::Redirect { leader });
                }
                None => return encode(&AgentReply::Redirect { leader: None }),
            }
            let wait = Duration::from_millis(u64::from(wait_ms.min(MAX_LONG_POLL_MS)));
            let holding = hello.as_ref().map(|h| h.holding.as_slice());
            let native = crate::metrics::PingProtocol::Native;
            match crate::api::deploys::ping_core_with_prefetch(&app, native, request, wait, holding)
                .await
            {
                Ok((goal, prefetch)) => match hello {
                    None => encode(&AgentReply::Goal(goal)),
                    Some(hello) => {
                        let swarm = swarm_hint(&app, &hello, &goal, prefetch).await;
                        encode(&AgentReply::GoalSwarm { goal, swarm })
                    }
                },
                Err(e) if e.status.as_u16() == 503 => {
                    encode(&AgentReply::Redirect { leader: None })
                }
                Err(e) => refused(e.status.as_u16(), e.message),
            }
        })
    }
}

/// The tracker's answer to an announce (the leader's; followers redirect). Without an origin
/// (no `swarm_addr`) or without the blob anywhere, the answer has no peers and the agent
/// fetches from the coordinators.
async fn swarm_peers(app: &App, announce: SwarmAnnounce) -> Result<Bytes, String> {
    match known_leader(app) {
        Some((leader, _)) if leader == app.node_id => {}
        Some((_, node)) => {
            let leader = node.map(|n| n.agent_addr).filter(|a| !a.is_empty());
            return encode(&AgentReply::Redirect { leader });
        }
        None => return encode(&AgentReply::Redirect { leader: None }),
    }
    let Some(swarm) = &app.swarm else {
        return encode(&AgentReply::Peers { size: 0, peers: Vec::new() });
    };
    let span = tracing::debug_span!("swarm_announce", blob = %short(&announce.blake3), peer = %announce.blob_addr);
    async {
        let size = match swarm.ensure_origin(app, &announce.blake3).await {
            Ok(size) => size,
            Err(e @ BlobError::BadHash(_)) => {
                return encode(&AgentReply::Refused { code: 400, message: e.to_string() });
            }
            Err(e) => {
                tracing::warn!(error = %e, "no origin for the blob; the agent falls back");
                return encode(&AgentReply::Peers { size: 0, peers: Vec::new() });
            }
        };
        let peers = swarm.announce(&announce, std::time::Instant::now());
        encode(&AgentReply::Peers { size, peers })
    }
    .instrument(span)
    .await
}

/// The swarm part of a [`AgentRequest::PingSwarm`]'s answer: the build a waiting host should
/// prefetch, or the build its DOWNLOADING goal names when it is stored in the cluster, with
/// the peers to fetch it from (the host is recorded as fetching it). `None` when there is no
/// such build, no origin, or no copy of it: the host then downloads as it would without.
async fn swarm_hint(
    app: &App,
    hello: &SwarmHello,
    goal: &PingResponseBean,
    prefetch: Option<PrefetchBlob>,
) -> Option<SwarmHint> {
    let swarm = app.swarm.as_ref()?;
    let (blake3, prefetch) = match prefetch {
        Some(blob) => (blob.blake3, true),
        None => {
            let g = goal.deploy_goal.as_ref()?;
            if g.deploy_stage != Some(DeployStage::Downloading) {
                return None;
            }
            let url = g.build.as_ref()?.artifact_url.as_deref()?;
            (url.strip_prefix(BLOB_URL_PREFIX)?.to_ascii_lowercase(), false)
        }
    };
    let span = tracing::debug_span!("swarm_hint", blob = %short(&blake3), peer = %hello.blob_addr, prefetch);
    async {
        let size = match swarm.ensure_origin(app, &blake3).await {
            Ok(size) => size,
            Err(e) => {
                tracing::warn!(error = %e, "no origin for the build; the host downloads it without peers");
                return None;
            }
        };
        let announce = SwarmAnnounce {
            blob_addr: hello.blob_addr.clone(),
            blake3: blake3.clone(),
            complete: false,
            zone: hello.zone.clone(),
        };
        let peers = swarm.announce(&announce, std::time::Instant::now());
        Some(SwarmHint { blake3, size, peers, prefetch })
    }
    .instrument(span)
    .await
}

/// The first 12 hex digits of a hash, as `tracing` spans carry `blob`.
fn short(hex: &str) -> &str {
    hex.get(..12).unwrap_or(hex)
}
