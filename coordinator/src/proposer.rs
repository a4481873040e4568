//! Group commit: many client operations share one Raft entry and one fsync.
//!
//! openraft 0.9 waits for each `append`'s own flush (raft-anchors P1), so fsyncs are amortised
//! here, upstream of Raft: operations queue on a channel; a single task drains whatever has
//! queued (up to [`MAX_OPS_PER_PROPOSAL`]) into one [`Proposal`] stamped with the leader's clock
//! and submits it, keeping at most [`MAX_INFLIGHT_PROPOSALS`] in flight. Under load a batch holds
//! every operation that arrived while the previous one was being committed.

use std::sync::Arc;

use openraft::error::{ClientWriteError, RaftError};
use proto::command::{MAX_OPS_PER_PROPOSAL, Op, OpResult, PROPOSAL_VERSION, Proposal};
use tokio::sync::{Semaphore, mpsc, oneshot};
use tracing::Instrument;

use crate::raft::{NodeId, NodeInfo, Raft};

/// Operations waiting to be proposed before callers are pushed back.
pub const PROPOSAL_QUEUE_OPS: usize = 16 * 1024;
/// Proposals submitted to Raft and not yet answered. openraft 0.9 flushes each append on its
/// own, so more than one in flight only splits batches (measured: 1 gave the best p99).
pub const MAX_INFLIGHT_PROPOSALS: usize = 1;

/// Why an operation was not applied. None of these changed state, except `Unknown`.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ProposeError {
    #[error("this node is not the leader")]
    NotLeader { leader_id: Option<NodeId>, leader: Option<NodeInfo> },
    #[error("the proposal queue is closed (node shutting down)")]
    Closed,
    /// Raft failed fatally or the outcome is unknown (e.g. leadership lost mid-commit).
    #[error("outcome unknown: {0}")]
    Unknown(String),
}

type Reply = oneshot::Sender<Result<OpResult, ProposeError>>;

/// Handle to the group-commit queue.
#[derive(Clone)]
pub struct Proposer {
    tx: mpsc::Sender<(Op, Reply)>,
}

/// Observations of the batching, for metrics.
pub trait BatchObserver: Send + Sync + 'static {
    fn proposal_committed(&self, ops: usize, seconds: f64);
}

impl Proposer {
    pub fn spawn(raft: Raft, clock: fn() -> i64, observer: Arc<dyn BatchObserver>) -> Self {
        let (tx, rx) = mpsc::channel(PROPOSAL_QUEUE_OPS);
        tokio::spawn(run(raft, rx, clock, observer).instrument(tracing::info_span!("proposer")));
        Self { tx }
    }

    /// Proposes one operation and waits for its result from `apply`.
    pub async fn propose(&self, op: Op) -> Result<OpResult, ProposeError> {
        let (reply, rx) = oneshot::channel();
        self.tx.send((op, reply)).await.map_err(|_| ProposeError::Closed)?;
        rx.await.map_err(|_| ProposeError::Closed)?
    }
}

async fn run(
    raft: Raft,
    mut rx: mpsc::Receiver<(Op, Reply)>,
    clock: fn() -> i64,
    observer: Arc<dyn BatchObserver>,
) {
    let inflight = Arc::new(Semaphore::new(MAX_INFLIGHT_PROPOSALS));
    while let Some(first) = rx.recv().await {
        // Wait for a slot before draining, so that the batch grows while Raft is busy.
        let permit = inflight.clone().acquire_owned().await.expect("semaphore never closed");
        let mut ops = Vec::with_capacity(64);
        let mut replies = Vec::with_capacity(64);
        ops.push(first.0);
        replies.push(first.1);
        while ops.len() < MAX_OPS_PER_PROPOSAL {
            match rx.try_recv() {
                Ok((op, reply)) => {
                    ops.push(op);
                    replies.push(reply);
                }
                Err(_) => break,
            }
        }
        let proposal = Proposal { version: PROPOSAL_VERSION, now_ms: clock(), ops };
        let raft = raft.clone();
        let observer = observer.clone();
        tokio::spawn(async move {
            let n = replies.len();
            let started = std::time::Instant::now();
            let outcome = raft.client_write(proposal).await;
            drop(permit);
            match outcome {
                Ok(resp) => {
                    observer.proposal_committed(n, started.elapsed().as_secs_f64());
                    assert_eq!(resp.data.results.len(), n, "apply answers every operation");
                    for (reply, result) in replies.into_iter().zip(resp.data.results) {
                        let _ = reply.send(Ok(result));
                    }
                }
                Err(e) => {
                    let err = classify(e);
                    for reply in replies {
                        let _ = reply.send(Err(err.clone()));
                    }
                }
            }
        });
    }
}

fn classify(e: RaftError<NodeId, ClientWriteError<NodeId, NodeInfo>>) -> ProposeError {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => {
            ProposeError::NotLeader { leader_id: f.leader_id, leader: f.leader_node }
        }
        other => ProposeError::Unknown(other.to_string()),
    }
}
