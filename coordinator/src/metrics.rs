//! Prometheus metrics of one node, served at `/metrics`.
//!
//! Labels stay bounded: protocol, result, env and stage, deploy state; never a host. Counters
//! fed by `apply` (admissions, lease expiries) count what this node applied, so every node of
//! a healthy cluster shows the same figures; take one node's (or `max by`), not their sum.

use std::sync::{Arc, Mutex};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use proto::enums::{DeployState, OpCode};

use crate::feed::{Changes, StageName};
use crate::proposer::BatchObserver;
use crate::state::State;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub method: String,
    pub route: String,
    pub status: u16,
}

/// How an agent pinged: Teletraan's JSON `POST /v1/system/ping` or the native `tt-agent/1`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PingProtocol {
    Json,
    Native,
}

impl PingProtocol {
    pub const fn as_str(self) -> &'static str {
        match self {
            PingProtocol::Json => "json",
            PingProtocol::Native => "native",
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PingLabels {
    pub protocol: &'static str,
    /// The goal's op code (`NOOP`, `DEPLOY`, `STOP`, ...), or `error`.
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProtocolLabels {
    pub protocol: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StageLabels {
    pub env: String,
    pub stage: String,
}

impl From<&StageName> for StageLabels {
    fn from((env, stage): &StageName) -> StageLabels {
        StageLabels { env: env.clone(), stage: stage.clone() }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DeployStateLabels {
    pub state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BuildInfoLabels {
    pub version: &'static str,
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
    pub apply_seconds: Histogram,
    pub requests: Family<RouteLabels, Histogram, fn() -> Histogram>,
    pub forwarded: Counter,
    pub apply_lag: Gauge,
    pub pings: Family<PingLabels, Counter>,
    pub ping_seconds: Family<ProtocolLabels, Histogram, fn() -> Histogram>,
    pub pings_held: Gauge,
    pub admissions: Family<StageLabels, Counter>,
    pub admission_waits: Family<StageLabels, Counter>,
    pub lease_expiries: Family<StageLabels, Counter>,
    pub deploys: Family<DeployStateLabels, Gauge>,
    pub origin_sent_bytes: Counter,
    /// Serialises the scrape-time refresh of figures mirrored from elsewhere.
    scrape: Mutex<()>,
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
            apply_seconds: latency_histogram(),
            requests: Family::new_with_constructor(latency_histogram),
            forwarded: Counter::default(),
            apply_lag: Gauge::default(),
            pings: Family::default(),
            ping_seconds: Family::new_with_constructor(latency_histogram),
            pings_held: Gauge::default(),
            admissions: Family::default(),
            admission_waits: Family::default(),
            lease_expiries: Family::default(),
            deploys: Family::default(),
            origin_sent_bytes: Counter::default(),
            scrape: Mutex::new(()),
            registry: Registry::default(),
        };
        let build_info = Family::<BuildInfoLabels, Gauge>::default();
        build_info.get_or_create(&BuildInfoLabels { version: env!("CARGO_PKG_VERSION") }).set(1);
        registry.register("build_info", "The coordinator's version (value 1)", build_info);
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
        registry.register(
            "apply_seconds",
            "Duration of state machine applies (committed entries to the state's write batch)",
            m.apply_seconds.clone(),
        );
        registry.register("http_request_seconds", "HTTP request latency", m.requests.clone());
        registry.register(
            "forwarded_requests",
            "Requests forwarded to the leader",
            m.forwarded.clone(),
        );
        registry.register(
            "raft_apply_lag_entries",
            "Committed log entries not yet applied here (commit index - applied index)",
            m.apply_lag.clone(),
        );
        registry.register(
            "pings",
            "Agent pings answered by this node as leader, by protocol and goal op code",
            m.pings.clone(),
        );
        registry.register(
            "ping_seconds",
            "Time spent answering a ping, not counting the time it was held (long-poll)",
            m.ping_seconds.clone(),
        );
        registry.register("pings_held", "Long-polled pings held right now", m.pings_held.clone());
        registry.register(
            "admissions",
            "Hosts admitted to a deploy of the stage (a parallelism slot taken; first deploys, \
             which bypass the limit, included), as applied on this node",
            m.admissions.clone(),
        );
        registry.register(
            "admission_waits",
            "Pings told to wait for a parallelism slot of the stage",
            m.admission_waits.clone(),
        );
        registry.register(
            "lease_expiries",
            "Slot holders whose lease expired (slot freed, row UNREACHABLE), as applied here",
            m.lease_expiries.clone(),
        );
        registry.register("deploys", "Stages' current deploys by deploy state", m.deploys.clone());
        registry.register_with_unit(
            "origin_sent",
            "Piece bytes this node's blob origin sent to agents",
            prometheus_client::registry::Unit::Bytes,
            m.origin_sent_bytes.clone(),
        );
        Arc::new(Metrics { registry, ..m })
    }

    /// One answered ping (`Err` for a refusal): its protocol, goal and service time.
    pub fn ping_answered(&self, protocol: PingProtocol, op_code: Option<OpCode>, seconds: f64) {
        let result = op_code.map_or("error", OpCode::as_str);
        self.pings.get_or_create(&PingLabels { protocol: protocol.as_str(), result }).inc();
        self.ping_seconds
            .get_or_create(&ProtocolLabels { protocol: protocol.as_str() })
            .observe(seconds);
    }

    /// A ping told to wait for a slot of `stage`.
    pub fn admission_wait(&self, stage: &StageName) {
        self.admission_waits.get_or_create(&stage.into()).inc();
    }

    /// Counts what one apply reports (admissions, lease expiries).
    pub fn applied(&self, changes: &Changes) {
        for (stage, n) in &changes.admitted {
            self.admissions.get_or_create(&stage.into()).inc_by(u64::from(*n));
        }
        for (stage, n) in &changes.leases_expired {
            self.lease_expiries.get_or_create(&stage.into()).inc_by(u64::from(*n));
        }
    }

    /// Refreshes the figures read at scrape time: Raft's, the apply lag, the deploy states of
    /// the applied state, and the origin's byte counter (`origin_sent_bytes`: its total so far).
    pub fn refresh(
        &self,
        raft: &openraft::RaftMetrics<crate::raft::NodeId, crate::raft::NodeInfo>,
        committed: u64,
        state: &State,
        origin_sent_bytes: Option<u64>,
    ) {
        let _one_at_a_time = self.scrape.lock().expect("scrape lock");
        self.observe_raft(raft);
        let applied = raft.last_applied.map_or(0, |l| l.index);
        self.commit_index.set(committed as i64);
        self.apply_lag.set(committed.saturating_sub(applied) as i64);
        for s in DeployState::ALL {
            let current = state
                .envs()
                .filter_map(|e| state.deploy(e.deploy_id.as_ref()?))
                .filter(|d| d.state == Some(*s))
                .count();
            self.deploys
                .get_or_create(&DeployStateLabels { state: s.as_str() })
                .set(current as i64);
        }
        if let Some(total) = origin_sent_bytes {
            let seen = self.origin_sent_bytes.get();
            self.origin_sent_bytes.inc_by(total.saturating_sub(seen));
        }
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

#[cfg(test)]
mod tests {
    use openraft::{CommittedLeaderId, LogId, RaftMetrics};
    use telemetry::exposition::{parse, value};

    use super::*;

    #[test]
    fn a_scrape_shows_the_apply_lag_every_deploy_state_and_the_origin_total() {
        let m = Metrics::new();
        let mut raft = RaftMetrics::new_initial(1);
        raft.last_applied = Some(LogId::new(CommittedLeaderId::new(3, 1), 7));
        m.refresh(&raft, 9, &State::default(), Some(100));
        m.refresh(&raft, 9, &State::default(), Some(150));
        let mut changes = Changes::default();
        changes.admitted.insert(("svc".into(), "prod".into()), 2);
        changes.leases_expired.insert(("svc".into(), "prod".into()), 1);
        m.applied(&changes);
        m.applied(&changes);
        m.admission_wait(&("svc".into(), "prod".into()));
        m.ping_answered(PingProtocol::Native, Some(OpCode::Noop), 0.001);
        m.ping_answered(PingProtocol::Json, None, 0.002);
        let s = parse(&m.encode()).unwrap();
        let v = |name, labels: &[(&str, &str)]| value(&s, name, labels);
        assert_eq!(v("tt_coordinator_raft_apply_lag_entries", &[]), Some(2.0));
        assert_eq!(v("tt_coordinator_raft_commit_index", &[]), Some(9.0));
        for state in DeployState::ALL {
            assert_eq!(v("tt_coordinator_deploys", &[("state", state.as_str())]), Some(0.0));
        }
        assert_eq!(v("tt_coordinator_origin_sent_bytes_total", &[]), Some(150.0));
        let stage = [("env", "svc"), ("stage", "prod")];
        assert_eq!(v("tt_coordinator_admissions_total", &stage), Some(4.0));
        assert_eq!(v("tt_coordinator_lease_expiries_total", &stage), Some(2.0));
        assert_eq!(v("tt_coordinator_admission_waits_total", &stage), Some(1.0));
        assert_eq!(
            v("tt_coordinator_pings_total", &[("protocol", "native"), ("result", "NOOP")]),
            Some(1.0)
        );
        assert_eq!(
            v("tt_coordinator_pings_total", &[("protocol", "json"), ("result", "error")]),
            Some(1.0)
        );
        assert_eq!(v("tt_coordinator_ping_seconds_count", &[("protocol", "json")]), Some(1.0));
        // Applied ahead of what this node knows is committed (after a restart): no lag.
        m.refresh(&raft, 0, &State::default(), None);
        let s = parse(&m.encode()).unwrap();
        assert_eq!(value(&s, "tt_coordinator_raft_apply_lag_entries", &[]), Some(0.0));
    }
}
