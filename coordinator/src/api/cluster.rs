//! Cluster administration: status, membership changes, and the read index followers use.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::Ordering;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use openraft::ChangeMembers;
use serde::{Deserialize, Serialize};

use super::{ApiError, App, known_leader};
use crate::api::teletraan::JsonBody;
use crate::raft::{NodeId, NodeInfo};

pub fn routes() -> Router<App> {
    Router::new()
        .route("/v1/cluster", get(status))
        .route("/v1/cluster/read-index", get(read_index))
        .route("/v1/cluster/nodes", post(add_node))
        .route("/v1/cluster/nodes/{id}", delete(remove_node))
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterStatus {
    /// The node that answered.
    pub node_id: NodeId,
    pub leader_id: Option<NodeId>,
    pub term: u64,
    pub commit_index: u64,
    pub applied_index: u64,
    pub last_log_index: u64,
    pub snapshot_index: Option<u64>,
    pub purged_index: Option<u64>,
    /// This node's own Raft role: Leader, Follower, Candidate, Learner, Shutdown.
    pub state: String,
    pub members: Vec<Member>,
    /// The answering node's coordinator version (empty from a node that predates the field).
    #[serde(default)]
    pub version: String,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Member {
    pub id: NodeId,
    pub http_addr: String,
    pub raft_addr: String,
    pub agent_addr: String,
    /// leader, follower (voter) or learner.
    pub role: String,
    /// Highest log index the leader knows this member holds (on the leader only).
    pub matched_index: Option<u64>,
}

pub async fn status(State(app): State<App>) -> Json<ClusterStatus> {
    let m = app.raft.metrics().borrow().clone();
    let membership = m.membership_config.membership();
    let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
    let matched: BTreeMap<NodeId, u64> = m
        .replication
        .as_ref()
        .map(|r| r.iter().map(|(id, l)| (*id, l.map_or(0, |l| l.index))).collect())
        .unwrap_or_default();
    let members = membership
        .nodes()
        .map(|(id, node)| Member {
            id: *id,
            http_addr: node.http_addr.clone(),
            raft_addr: node.raft_addr.clone(),
            agent_addr: node.agent_addr.clone(),
            role: if Some(*id) == m.current_leader {
                "leader"
            } else if voters.contains(id) {
                "follower"
            } else {
                "learner"
            }
            .to_string(),
            matched_index: matched.get(id).copied(),
        })
        .collect();
    Json(ClusterStatus {
        node_id: app.node_id,
        leader_id: m.current_leader,
        term: m.current_term,
        commit_index: app.committed.load(Ordering::Relaxed),
        applied_index: m.last_applied.map_or(0, |l| l.index),
        last_log_index: m.last_log_index.unwrap_or(0),
        snapshot_index: m.snapshot.map(|l| l.index),
        purged_index: m.purged.map(|l| l.index),
        state: format!("{:?}", m.state),
        members,
        version: env!("CARGO_PKG_VERSION").to_string(),
    })
}

#[derive(Debug, Serialize, Deserialize)]
pub struct ReadIndex {
    pub index: u64,
}

async fn read_index(State(app): State<App>) -> Result<Json<ReadIndex>, ApiError> {
    let (read, _applied) = app.raft.get_read_log_id().await.map_err(|e| {
        ApiError::unavailable(format!("node {} cannot serve a read index: {e}", app.node_id))
    })?;
    Ok(Json(ReadIndex { index: read.map_or(0, |l| l.index) }))
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AddNode {
    pub id: NodeId,
    pub http_addr: String,
    pub raft_addr: String,
    #[serde(default)]
    pub agent_addr: String,
    /// Keep the node a learner (non-voting). Default false: promote to voter once caught up.
    #[serde(default)]
    pub learner_only: bool,
    /// How long the new node may take to catch up before the change is abandoned, in seconds
    /// (default [`DEFAULT_CATCH_UP_SECS`]).
    #[serde(default)]
    pub catch_up_secs: Option<u64>,
}

/// Default time a joining node has to catch up with the leader's log.
pub const DEFAULT_CATCH_UP_SECS: u64 = 60;
/// How close (in entries) to the leader's last index a learner must be to count as caught up.
pub const CAUGHT_UP_LAG_ENTRIES: u64 = 100;

/// Adds a node: first as a learner (it catches up by log or snapshot), then as a voter.
async fn add_node(
    State(app): State<App>,
    JsonBody(req): JsonBody<AddNode>,
) -> Result<Response, ApiError> {
    if req.id == 0 {
        return Err(ApiError::bad_request("id must be greater than 0"));
    }
    let node =
        NodeInfo { http_addr: req.http_addr, raft_addr: req.raft_addr, agent_addr: req.agent_addr };
    app.raft.add_learner(req.id, node, false).await.map_err(|e| {
        ApiError::unavailable(format!("adding node {} as a learner failed: {e}", req.id))
    })?;
    let limit = std::time::Duration::from_secs(req.catch_up_secs.unwrap_or(DEFAULT_CATCH_UP_SECS));
    let id = req.id;
    let caught_up = app
        .raft
        .wait(Some(limit))
        .metrics(
            move |m| {
                let last = m.last_log_index.unwrap_or(0);
                m.replication.as_ref().and_then(|r| r.get(&id)).is_some_and(|matched| {
                    matched.is_some_and(|l| l.index + CAUGHT_UP_LAG_ENTRIES >= last)
                })
            },
            "learner caught up",
        )
        .await;
    if caught_up.is_err() {
        let _ = app
            .raft
            .change_membership(ChangeMembers::RemoveNodes(BTreeSet::from([id])), false)
            .await;
        return Err(ApiError::new(
            StatusCode::GATEWAY_TIMEOUT,
            format!(
                "node {id} did not catch up within {limit:?} and was removed again; check that it runs, \
                 that its address is reachable, and that its certificate is issued by this cluster's CA"
            ),
        ));
    }
    if !req.learner_only {
        app.raft
            .change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([req.id])), false)
            .await
            .map_err(|e| {
                ApiError::unavailable(format!("promoting node {} to voter failed: {e}", req.id))
            })?;
    }
    Ok((StatusCode::OK, status(State(app)).await).into_response())
}

/// Removes a node from the membership (voter or learner).
async fn remove_node(State(app): State<App>, Path(id): Path<NodeId>) -> Result<Response, ApiError> {
    let m = app.raft.metrics().borrow().clone();
    let membership = m.membership_config.membership();
    if membership.get_node(&id).is_none() {
        return Err(ApiError::not_found(format!("node {id} is not a member")));
    }
    let is_voter = membership.voter_ids().any(|v| v == id);
    let change = if is_voter {
        ChangeMembers::RemoveVoters(BTreeSet::from([id]))
    } else {
        ChangeMembers::RemoveNodes(BTreeSet::from([id]))
    };
    app.raft
        .change_membership(change, false)
        .await
        .map_err(|e| ApiError::unavailable(format!("removing node {id} failed: {e}")))?;
    if is_voter {
        // The node stays as a learner after leaving the voters; drop it entirely.
        let _ = app
            .raft
            .change_membership(ChangeMembers::RemoveNodes(BTreeSet::from([id])), false)
            .await;
    }
    let _ = known_leader(&app);
    Ok(StatusCode::NO_CONTENT.into_response())
}
