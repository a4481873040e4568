//! Prometheus metrics of one node, served at `/metrics`.

use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::proposer::BatchObserver;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub method: String,
    pub route: String,
    pub status: u16,
}

fn latency_histogram() -> Histogram {
    // 0.1 ms .. ~3.3 s
    Histogram::new(exponential_buckets(0.0001, 2.0, 16))
}

pub struct Metrics {
    registry: Registry,
    pub term: Gauge,
    pub leader_id: Gauge,
    pub is_leader: Gauge,
    pub commit_index: Gauge,
    pub applied_index: Gauge,
    pub last_log_index: Gauge,
    pub proposals: Counter,
    pub proposed_ops: Counter,
    pub proposal_seconds: Histogram,
    pub log_fsync_seconds: Histogram,
    pub requests: Family<RouteLabels, Histogram, fn() -> Histogram>,
    pub forwarded: Counter,
}

impl Metrics {
    pub fn new() -> Arc<Self> {
        let mut registry = Registry::with_prefix("tt_coordinator");
        let m = Metrics {
            term: Gauge::default(),
            leader_id: Gauge::default(),
            is_leader: Gauge::default(),
            commit_index: Gauge::default(),
            applied_index: Gauge::default(),
            last_log_index: Gauge::default(),
            proposals: Counter::default(),
            proposed_ops: Counter::default(),
            proposal_seconds: latency_histogram(),
            log_fsync_seconds: latency_histogram(),
            requests: Family::new_with_constructor(latency_histogram),
            forwarded: Counter::default(),
            registry: Registry::default(),
        };
        registry.register("raft_term", "Current Raft term", m.term.clone());
        registry.register("raft_leader_id", "Known leader id (0 = none)", m.leader_id.clone());
        registry.register("raft_is_leader", "1 if this node is the leader", m.is_leader.clone());
        registry.register(
            "raft_commit_index",
            "Highest committed log index",
            m.commit_index.clone(),
        );
        registry.register(
            "raft_applied_index",
            "Highest applied log index",
            m.applied_index.clone(),
        );
        registry.register(
            "raft_last_log_index",
            "Last log index on this node",
            m.last_log_index.clone(),
        );
        registry.register(
            "proposals",
            "Raft proposals committed (group commits)",
            m.proposals.clone(),
        );
        registry.register(
            "proposed_ops",
            "Operations carried by committed proposals",
            m.proposed_ops.clone(),
        );
        registry.register(
            "proposal_seconds",
            "Time from submitting a proposal to its apply result",
            m.proposal_seconds.clone(),
        );
        registry.register(
            "log_fsync_seconds",
            "Duration of synced Raft log appends",
            m.log_fsync_seconds.clone(),
        );
        registry.register("http_request_seconds", "HTTP request latency", m.requests.clone());
        registry.register(
            "forwarded_requests",
            "Requests forwarded to the leader",
            m.forwarded.clone(),
        );
        Arc::new(Metrics { registry, ..m })
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }

    pub fn observe_raft(
        &self,
        m: &openraft::RaftMetrics<crate::raft::NodeId, crate::raft::NodeInfo>,
    ) {
        self.term.set(m.current_term as i64);
        self.leader_id.set(m.current_leader.unwrap_or(0) as i64);
        self.is_leader.set(i64::from(m.current_leader == Some(m.id)));
        self.applied_index.set(m.last_applied.map_or(0, |l| l.index) as i64);
        self.last_log_index.set(m.last_log_index.unwrap_or(0) as i64);
    }
}

impl BatchObserver for Metrics {
    fn proposal_committed(&self, ops: usize, seconds: f64) {
        self.proposals.inc();
        self.proposed_ops.inc_by(ops as u64);
        self.proposal_seconds.observe(seconds);
    }
}
