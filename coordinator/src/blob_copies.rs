//! Keeping every build's blob on [`MIN_BLOB_COPIES`] nodes after the upload.
//!
//! An upload is acknowledged once two nodes hold the blob (`api/blobs.rs`), but a node whose
//! disk is replaced, or whose blob directory is lost, comes back without its copies, and
//! nothing in Raft says where blobs live. So every node, every `blob_repair_interval_ms`,
//! walks the blobs that builds in the replicated state name (`tt://blob/<hash>`), and for each
//! one it lacks asks the other members whether they hold it (`HEAD /v1/blobs/{hash}`). If fewer
//! than [`MIN_BLOB_COPIES`] do, it pulls a copy from one that does, verified against the hash.
//! Two nodes may repair the same blob in the same round; a third copy is harmless.
//!
//! The decision is the pure [`decide`]; [`repair_round`] is its IO shell.

use std::time::Duration;

use futures::StreamExt;
use tracing::{Instrument, info, warn};

use crate::api::App;
use crate::blobs::{BlobError, MIN_BLOB_COPIES};

/// How often a node checks the copies of the blobs it lacks, by default.
pub const DEFAULT_BLOB_REPAIR_INTERVAL: Duration = Duration::from_secs(30);
/// How long a node waits for a peer's answer to "do you hold this blob?".
pub const BLOB_PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// How long pulling one blob from a peer may take.
pub const BLOB_PULL_TIMEOUT: Duration = Duration::from_secs(600);
/// Most blobs one node copies in one round (the rest wait for the next round), so that a
/// node coming back empty does not saturate its peers' disks and links at once.
pub const MAX_BLOB_REPAIRS_PER_ROUND: usize = 4;

/// What a node does about a blob it does not hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Enough other nodes hold it.
    Enough,
    /// Too few hold it: copy it here.
    Copy,
    /// No reachable node holds it: nothing to copy from (reported, retried next round).
    Unavailable,
}

/// `holders`: other members that said they hold the blob; `members`: voters and learners,
/// this node included.
pub fn decide(holders: usize, members: usize) -> Decision {
    if holders >= MIN_BLOB_COPIES.min(members) {
        Decision::Enough
    } else if holders == 0 {
        Decision::Unavailable
    } else {
        Decision::Copy
    }
}

/// What one round did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RoundReport {
    /// Blobs builds name that this node lacks.
    pub missing_here: usize,
    /// Blobs copied to this node.
    pub copied: Vec<String>,
    /// Blobs no reachable node holds.
    pub unavailable: Vec<String>,
    /// Blobs whose copy failed (a peer's error, a full disk, a hash mismatch).
    pub failed: Vec<String>,
}

/// The other members' HTTP addresses, by node id.
pub fn peer_addrs(app: &App) -> Vec<(u64, String)> {
    let m = app.raft.metrics().borrow().clone();
    m.membership_config
        .membership()
        .nodes()
        .filter(|(id, _)| **id != app.node_id)
        .map(|(id, n)| (*id, n.http_addr.clone()))
        .collect()
}

fn authorized(app: &App, req: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
    match &app.admin_token {
        Some(token) => req.header(reqwest::header::AUTHORIZATION, format!("token {token}")),
        None => req,
    }
}

/// The peers (of `peers`) that answer that they hold blob `hex`.
async fn holders<'a>(app: &App, hex: &str, peers: &'a [(u64, String)]) -> Vec<&'a str> {
    let probes = peers.iter().map(|(_, addr)| async move {
        let req =
            app.http.head(format!("http://{addr}/v1/blobs/{hex}")).timeout(BLOB_PROBE_TIMEOUT);
        match authorized(app, req).send().await {
            Ok(resp) if resp.status().is_success() => Some(addr.as_str()),
            _ => None,
        }
    });
    futures::future::join_all(probes).await.into_iter().flatten().collect()
}

/// Pulls blob `hex` into this node's store from the first of `from` that serves it whole and
/// with the right hash. `why` names the caller in the logs.
pub async fn pull_from(app: &App, hex: &str, from: &[&str], why: &str) -> Result<(), BlobError> {
    for addr in from {
        let req = app.http.get(format!("http://{addr}/v1/blobs/{hex}")).timeout(BLOB_PULL_TIMEOUT);
        match authorized(app, req).send().await {
            Ok(resp) if resp.status().is_success() => {
                let body = resp.bytes_stream().map(|chunk| chunk.map_err(|e| e.to_string()));
                match app.blobs.put(Box::pin(body), Some(hex)).await {
                    Ok(_) => {
                        info!(blob = hex, peer = addr, "pulled the blob {why}");
                        return Ok(());
                    }
                    Err(e) => warn!(blob = hex, peer = addr, error = %e, "pulling the blob failed"),
                }
            }
            Ok(resp) => {
                warn!(blob = hex, peer = addr, status = %resp.status(), "peer lacks the blob")
            }
            Err(e) => {
                warn!(blob = hex, peer = addr, error = %e, "asking a peer for the blob failed")
            }
        }
    }
    Err(BlobError::NotFound(hex.to_string()))
}

/// One pass over the blobs the builds name: copies here those too few nodes hold.
pub async fn repair_round(app: &App) -> RoundReport {
    let wanted = app.applied.read().expect("applied lock poisoned").state.build_blob_hashes();
    let peers = peer_addrs(app);
    let mut report = RoundReport::default();
    for hex in wanted.into_iter().filter(|h| app.blobs.size(h).is_none()) {
        report.missing_here += 1;
        if report.copied.len() + report.failed.len() >= MAX_BLOB_REPAIRS_PER_ROUND {
            continue;
        }
        let holders = holders(app, &hex, &peers).await;
        match decide(holders.len(), peers.len() + 1) {
            Decision::Enough => {}
            Decision::Unavailable => report.unavailable.push(hex),
            Decision::Copy => match pull_from(app, &hex, &holders, "to restore its copies").await {
                Ok(()) => report.copied.push(hex),
                Err(_) => report.failed.push(hex),
            },
        }
    }
    report
}

/// Every `interval`, on every node: [`repair_round`], logging what it did.
pub async fn repair_loop(app: App, interval: Duration) {
    let mut every = tokio::time::interval(interval);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        let report = repair_round(&app).instrument(tracing::debug_span!("blob_repair")).await;
        if !report.copied.is_empty() || !report.failed.is_empty() {
            info!(
                copied = report.copied.len(),
                failed = report.failed.len(),
                missing_here = report.missing_here,
                "blob copies restored"
            );
        }
        for hex in &report.unavailable {
            warn!(
                blob = hex.as_str(),
                "no reachable node holds this build's blob; hosts cannot download it until one does \
                 (bring back the nodes that held it, or publish the artifact again)"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copies_only_when_too_few_others_hold_it_and_someone_does() {
        // Three members: this node lacks it.
        assert_eq!(decide(0, 3), Decision::Unavailable);
        assert_eq!(decide(1, 3), Decision::Copy);
        assert_eq!(decide(2, 3), Decision::Enough);
        // Two members: the other one alone is too few.
        assert_eq!(decide(1, 2), Decision::Copy);
        // A lone node that lacks it has nowhere to copy it from.
        assert_eq!(decide(0, 1), Decision::Unavailable);
    }
}
