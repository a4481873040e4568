//! The native agent protocol (`tt-agent/1`): one postcard-encoded request and reply per QUIC
//! stream. It carries Teletraan's ping beans unchanged and adds what JSON cannot: a long-poll
//! wait, a token, and a redirect to the leader.

use serde::{Deserialize, Serialize};

use crate::ping::{PingRequestBean, PingResponseBean};

/// Version of [`AgentRequest`]/[`AgentReply`]; a change of meaning needs a new ALPN name.
pub const AGENT_PROTOCOL_VERSION: u16 = 1;
/// Longest a coordinator holds a NOOP ping before answering it.
pub const MAX_LONG_POLL_MS: u32 = 60_000;
/// Largest agent request or reply, in bytes.
pub const MAX_AGENT_FRAME_BYTES: usize = 1024 * 1024;
/// Largest piece of a blob one [`AgentReply::Blob`] carries (well under the frame limit).
pub const MAX_BLOB_CHUNK_BYTES: u32 = 512 * 1024;

/// What an agent asks. Append-only enum.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum AgentRequest {
    /// A ping. If the answer would be NOOP, the coordinator may hold it up to `wait_ms`
    /// (capped at [`MAX_LONG_POLL_MS`]) and answer as soon as something concerning this host
    /// changes: a new deploy on one of its stages, a freed parallelism slot, a host action.
    Ping { token: Option<String>, wait_ms: u32, request: PingRequestBean },
    /// Up to `max_len` bytes (capped at [`MAX_BLOB_CHUNK_BYTES`]) of the blob whose BLAKE3 hash
    /// is `blake3` (hex), from `offset`. Any node holding the blob answers; a node without it
    /// refuses with 404.
    FetchBlob { token: Option<String>, blake3: String, offset: u64, max_len: u32 },
    /// A host with a `tt-blob/1` endpoint tells the tracker (the leader) that it fetches or
    /// holds a blob, and asks whom to fetch it from. Followers redirect to the leader.
    Swarm { token: Option<String>, announce: SwarmAnnounce },
    /// A [`AgentRequest::Ping`] from a host that runs a `tt-blob/1` node. The answer is an
    /// [`AgentReply::GoalSwarm`]: a DOWNLOADING goal for a cluster build (`tt://blob/`) carries
    /// the peers to fetch it from, and a host kept waiting for a parallelism slot is told to
    /// prefetch the build it will deploy (answered at once, not held, unless `hello` says the
    /// host already has or fetches it).
    PingSwarm { token: Option<String>, wait_ms: u32, request: PingRequestBean, hello: SwarmHello },
}

/// The stage agent-config key that sets a stage's parallelism lease TTL, in milliseconds
/// (the coordinators' `lease_ttl_ms` otherwise). Agents see it in their goals and count on at
/// most [`STAGE_LEASE_SHARE_PERCENT`] of it.
pub const STAGE_LEASE_TTL_CONFIG_KEY: &str = "tt.lease_ttl_ms";
/// Shortest stage lease TTL accepted, in milliseconds: a lease must outlive a leader election
/// and a few pings.
pub const MIN_STAGE_LEASE_TTL_MS: u64 = 2_000;
/// Longest stage lease TTL accepted, in milliseconds (a day).
pub const MAX_STAGE_LEASE_TTL_MS: u64 = 86_400_000;
/// Share of a stage's lease TTL an agent counts on; the rest covers clock-rate differences and
/// the answer's time in flight.
pub const STAGE_LEASE_SHARE_PERCENT: u64 = 80;

/// A stage lease TTL from agent configs: `Some` if the value is a number of milliseconds within
/// [`MIN_STAGE_LEASE_TTL_MS`]..=[`MAX_STAGE_LEASE_TTL_MS`].
pub fn parse_stage_lease_ttl_ms(value: &str) -> Option<u64> {
    value
        .trim()
        .parse()
        .ok()
        .filter(|ms| (MIN_STAGE_LEASE_TTL_MS..=MAX_STAGE_LEASE_TTL_MS).contains(ms))
}

/// Most blobs a [`SwarmHello`] lists; a host lists the newest it holds or fetches.
pub const MAX_HELLO_BLOBS: usize = 64;

/// What a host running a `tt-blob/1` node says with each ping.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SwarmHello {
    /// The host's `tt-blob/1` endpoint (`ip:port`).
    pub blob_addr: String,
    /// The host's availability zone, if known.
    pub zone: Option<String>,
    /// BLAKE3 hashes (hex) of the blobs the host holds, fetches, or gave up on: no prefetch
    /// hint names them. At most [`MAX_HELLO_BLOBS`].
    pub holding: Vec<String>,
}

/// The swarm part of an [`AgentReply::GoalSwarm`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SwarmHint {
    /// The build's BLAKE3 hash (hex).
    pub blake3: String,
    /// Its size in bytes.
    pub size: u64,
    /// The peers to fetch it from, seeders first, the origin last (the host has been recorded
    /// in the tracker as fetching it).
    pub peers: Vec<SwarmPeer>,
    /// `true`: the host is waiting for a slot; fetch this build now so that DOWNLOADING takes
    /// no time once admitted. `false`: the goal is DOWNLOADING this build.
    pub prefetch: bool,
}

/// What a host tells the swarm's tracker about one blob.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SwarmAnnounce {
    /// The host's `tt-blob/1` endpoint (`ip:port`), which also names it in the tracker.
    pub blob_addr: String,
    /// The blob's BLAKE3 hash (hex).
    pub blake3: String,
    /// The host holds the whole blob (a seeder), rather than fetching it.
    pub complete: bool,
    /// The host's availability zone, if known: peers in the same zone come first.
    pub zone: Option<String>,
}

/// A peer the tracker hands out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SwarmPeer {
    /// Its `tt-blob/1` endpoint (`ip:port`).
    pub addr: String,
    /// A coordinator: asked last, only for pieces no host has.
    pub origin: bool,
}

/// What a coordinator answers. Append-only enum.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum AgentReply {
    Goal(PingResponseBean),
    /// This node is not the leader; ask `leader` (its agent `host:port`), if known.
    Redirect {
        leader: Option<String>,
    },
    /// The request was refused (bad token, malformed request); nothing was recorded.
    Refused {
        code: u16,
        message: String,
    },
    /// A piece of a blob: `data` starts at the requested offset; `total` is the blob's size.
    Blob {
        total: u64,
        data: Vec<u8>,
    },
    /// The answer to [`AgentRequest::Swarm`]: the blob's size and the peers to fetch it from,
    /// seeders first, the origin last. No peers means the cluster has no origin for it: fetch
    /// it with [`AgentRequest::FetchBlob`].
    Peers {
        size: u64,
        peers: Vec<SwarmPeer>,
    },
    /// The answer to [`AgentRequest::PingSwarm`]: the goal, and the build to fetch with its
    /// peers when there is one.
    GoalSwarm {
        goal: PingResponseBean,
        swarm: Option<SwarmHint>,
    },
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::HostId;

    #[test]
    fn requests_and_replies_round_trip_through_postcard() {
        let req = AgentRequest::Ping {
            token: Some("t".into()),
            wait_ms: 5000,
            request: PingRequestBean::new(HostId::new("h")),
        };
        let bytes = postcard::to_stdvec(&req).unwrap();
        assert_eq!(postcard::from_bytes::<AgentRequest>(&bytes).unwrap(), req);
        let announce = AgentRequest::Swarm {
            token: None,
            announce: SwarmAnnounce {
                blob_addr: "10.0.0.1:7420".into(),
                blake3: "ab".repeat(32),
                complete: false,
                zone: Some("us-east-1a".into()),
            },
        };
        let bytes = postcard::to_stdvec(&announce).unwrap();
        assert_eq!(postcard::from_bytes::<AgentRequest>(&bytes).unwrap(), announce);
        // Appended variants keep the old ones' tags: a Ping still starts with tag 0.
        assert_eq!(postcard::to_stdvec(&req).unwrap()[0], 0);
        let ping_swarm = AgentRequest::PingSwarm {
            token: None,
            wait_ms: 30_000,
            request: PingRequestBean::new(HostId::new("h")),
            hello: SwarmHello {
                blob_addr: "10.0.0.1:7420".into(),
                zone: None,
                holding: vec!["cd".repeat(32)],
            },
        };
        let bytes = postcard::to_stdvec(&ping_swarm).unwrap();
        assert_eq!(bytes[0], 3, "PingSwarm is the fourth request variant");
        assert_eq!(postcard::from_bytes::<AgentRequest>(&bytes).unwrap(), ping_swarm);
        for reply in [
            AgentReply::Goal(PingResponseBean::default()),
            AgentReply::Redirect { leader: Some("127.0.0.1:7410".into()) },
            AgentReply::Refused { code: 401, message: "bad token".into() },
            AgentReply::Blob { total: 10, data: vec![1, 2, 3] },
            AgentReply::Peers {
                size: 7,
                peers: vec![SwarmPeer { addr: "127.0.0.1:7420".into(), origin: true }],
            },
            AgentReply::GoalSwarm {
                goal: PingResponseBean::default(),
                swarm: Some(SwarmHint {
                    blake3: "ef".repeat(32),
                    size: 9,
                    peers: vec![SwarmPeer { addr: "127.0.0.1:7421".into(), origin: false }],
                    prefetch: true,
                }),
            },
        ] {
            let bytes = postcard::to_stdvec(&reply).unwrap();
            assert_eq!(postcard::from_bytes::<AgentReply>(&bytes).unwrap(), reply);
        }
        assert!(
            postcard::from_bytes::<AgentRequest>(&[7, 1, 2]).is_err(),
            "unknown variants are refused"
        );
    }
}
