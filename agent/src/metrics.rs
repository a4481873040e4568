//! The agent's Prometheus metrics and its health endpoints (`metrics_listen`): `/metrics`,
//! `/livez`, `/readyz` (`?verbose` for one line per check).
//!
//! Labels stay bounded (ping kind, deploy stage, outcome, byte source). The swarm's figures
//! live in `p2p-transfer` as plain counters ([`NodeStats`]) and are mirrored here at scrape
//! time, so the library knows nothing about Prometheus.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use p2p_transfer::ratelimit::ThrottleStats;
use p2p_transfer::swarm::NodeStats;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};
use telemetry::health::{self, Check};

/// What kind of ping: the daemon's ping for its next goal (may be held by a long-poll) or a
/// heartbeat during a step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PingKind {
    Goal,
    Heartbeat,
}

impl PingKind {
    const fn as_str(self) -> &'static str {
        match self {
            PingKind::Goal => "goal",
            PingKind::Heartbeat => "heartbeat",
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PingLabels {
    kind: &'static str,
    /// `ok` or `error` (no coordinator answered).
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StepLabels {
    /// The deploy stage (`PRE_DOWNLOAD`, ..., `SERVING_BUILD`, `STOPPING`, `STOPPED`).
    step: &'static str,
    /// The status reported (`SUCCEEDED`, `SCRIPT_FAILED`, ...), or `ABORTED`.
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SourceLabels {
    /// `peer` (other hosts) or `origin` (the coordinators' blob origin).
    source: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VersionLabels {
    version: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DirectionLabels {
    /// `upload` or `download`.
    direction: &'static str,
}

/// Buckets from 1 ms to about 9 minutes: pings, downloads and hooks share them.
fn duration_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 20))
}

/// The readiness of the coordinators as the last ping saw them.
const NOT_YET: u8 = 0;
const ANSWERED: u8 = 1;
const UNANSWERED: u8 = 2;

pub struct AgentMetrics {
    registry: Registry,
    pings: Family<PingLabels, Counter>,
    ping_seconds: Family<KindLabels, Histogram, fn() -> Histogram>,
    steps: Family<StepLabels, Counter>,
    hook_seconds: Family<StepLabels, Histogram, fn() -> Histogram>,
    downloads: Family<OutcomeLabels, Counter>,
    download_seconds: Histogram,
    swarm_received_bytes: Family<SourceLabels, Counter>,
    swarm_sent_bytes: Counter,
    swarm_peer_bans: Counter,
    throttle_waits: Family<DirectionLabels, Counter>,
    throttled_seconds: Family<DirectionLabels, Counter<f64>>,
    /// The host's blob node, once it runs one (read at scrape time).
    swarm: OnceLock<Arc<crate::swarm::SwarmSource>>,
    /// Whether the last ping reached a coordinator (`/readyz`).
    coordinators: AtomicU8,
    /// Serialises the scrape-time mirroring of the swarm's counters.
    scrape: Mutex<()>,
}

impl AgentMetrics {
    pub fn new() -> Arc<AgentMetrics> {
        let mut registry = Registry::with_prefix("tt_agent");
        let m = AgentMetrics {
            registry: Registry::default(),
            pings: Family::default(),
            ping_seconds: Family::new_with_constructor(duration_histogram),
            steps: Family::default(),
            hook_seconds: Family::new_with_constructor(duration_histogram),
            downloads: Family::default(),
            download_seconds: duration_histogram(),
            swarm_received_bytes: Family::default(),
            swarm_sent_bytes: Counter::default(),
            swarm_peer_bans: Counter::default(),
            throttle_waits: Family::default(),
            throttled_seconds: Family::default(),
            swarm: OnceLock::new(),
            coordinators: AtomicU8::new(NOT_YET),
            scrape: Mutex::new(()),
        };
        let build_info = Family::<VersionLabels, Gauge>::default();
        build_info.get_or_create(&VersionLabels { version: env!("CARGO_PKG_VERSION") }).set(1);
        registry.register("build_info", "The agent's version (value 1)", build_info);
        registry.register("pings", "Pings sent, by kind and result", m.pings.clone());
        registry.register(
            "ping_seconds",
            "Ping round trips (a goal ping includes the time the coordinator held it)",
            m.ping_seconds.clone(),
        );
        registry.register("steps", "Deploy steps run, by step and outcome", m.steps.clone());
        registry.register(
            "hook_seconds",
            "Hook scripts run (all attempts of a step), by step and outcome",
            m.hook_seconds.clone(),
        );
        registry.register("downloads", "Build download attempts, by outcome", m.downloads.clone());
        registry.register(
            "download_seconds",
            "Successful build downloads (fetch, verify, extract)",
            m.download_seconds.clone(),
        );
        registry.register_with_unit(
            "swarm_received",
            "Blob piece bytes received through the swarm, by source",
            Unit::Bytes,
            m.swarm_received_bytes.clone(),
        );
        registry.register_with_unit(
            "swarm_sent",
            "Blob piece bytes sent to peers",
            Unit::Bytes,
            m.swarm_sent_bytes.clone(),
        );
        registry.register(
            "swarm_peer_bans",
            "Peers banned for a blob after a response failed verification",
            m.swarm_peer_bans.clone(),
        );
        registry.register(
            "swarm_throttle_waits",
            "Transfers held back by the swarm's rate limit, by direction",
            m.throttle_waits.clone(),
        );
        registry.register_with_unit(
            "swarm_throttled",
            "Time transfers waited for the swarm's rate limit, by direction",
            Unit::Seconds,
            m.throttled_seconds.clone(),
        );
        Arc::new(AgentMetrics { registry, ..m })
    }

    /// One ping's outcome and round trip.
    pub fn ping(&self, kind: PingKind, ok: bool, seconds: f64) {
        let result = if ok { "ok" } else { "error" };
        self.pings.get_or_create(&PingLabels { kind: kind.as_str(), result }).inc();
        self.ping_seconds.get_or_create(&KindLabels { kind: kind.as_str() }).observe(seconds);
        if kind == PingKind::Goal {
            let state = if ok { ANSWERED } else { UNANSWERED };
            self.coordinators.store(state, Ordering::Relaxed);
        }
    }

    /// A deploy step ended with `outcome` (a reported status, or `ABORTED`).
    pub fn step(&self, step: &'static str, outcome: &'static str) {
        self.steps.get_or_create(&StepLabels { step, outcome }).inc();
    }

    /// A hook script ran for `seconds`.
    pub fn hook(&self, step: &'static str, outcome: &'static str, seconds: f64) {
        self.hook_seconds.get_or_create(&StepLabels { step, outcome }).observe(seconds);
    }

    /// One download attempt.
    pub fn download(&self, ok: bool, seconds: f64) {
        let outcome = if ok { "ok" } else { "error" };
        self.downloads.get_or_create(&OutcomeLabels { outcome }).inc();
        if ok {
            self.download_seconds.observe(seconds);
        }
    }

    /// From now on the swarm's counters are exported.
    pub fn watch_swarm(&self, swarm: Arc<crate::swarm::SwarmSource>) {
        let _ = self.swarm.set(swarm);
    }

    /// The swarm node's counters, if this host runs one.
    pub fn swarm_stats(&self) -> Option<NodeStats> {
        self.swarm.get().map(|s| s.node_stats())
    }

    /// The text exposition, with the swarm's counters brought up to date.
    pub fn encode(&self) -> String {
        {
            let _one_at_a_time = self.scrape.lock().expect("scrape lock");
            if let Some(swarm) = self.swarm.get() {
                self.mirror(&swarm.node_stats());
            }
        }
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }

    /// Moves each mirrored counter up to the node's total.
    fn mirror(&self, s: &NodeStats) {
        let up = |c: &Counter, total: u64| c.inc_by(total.saturating_sub(c.get()));
        let from_peers = s.downloaded_bytes.saturating_sub(s.downloaded_from_origin_bytes);
        up(&self.swarm_received_bytes.get_or_create(&SourceLabels { source: "peer" }), from_peers);
        up(
            &self.swarm_received_bytes.get_or_create(&SourceLabels { source: "origin" }),
            s.downloaded_from_origin_bytes,
        );
        up(&self.swarm_sent_bytes, s.uploaded_bytes);
        up(&self.swarm_peer_bans, s.bad_responses);
        for (direction, t) in [("upload", s.upload_throttle), ("download", s.download_throttle)] {
            let labels = DirectionLabels { direction };
            up(&self.throttle_waits.get_or_create(&labels), t.waits);
            let seconds = self.throttled_seconds.get_or_create(&labels);
            seconds.inc_by((throttled_seconds(t) - seconds.get()).max(0.0));
        }
    }

    /// The readiness checks: `env_status` loaded (the daemon would not run otherwise) and the
    /// last ping answered by a coordinator.
    fn readiness(&self) -> Vec<Check> {
        vec![
            Check::ok("env-status-loaded"),
            match self.coordinators.load(Ordering::Relaxed) {
                ANSWERED => Check::ok("coordinator-reachable"),
                UNANSWERED => Check::failed("coordinator-reachable", "the last ping failed"),
                _ => Check::failed("coordinator-reachable", "no ping answered yet"),
            },
        ]
    }
}

fn throttled_seconds(t: ThrottleStats) -> f64 {
    t.waited_micros as f64 / 1e6
}

/// Serves `/metrics`, `/livez` and `/readyz` on `listener` until the process ends.
pub async fn serve(listener: tokio::net::TcpListener, metrics: Arc<AgentMetrics>) {
    let app = Router::new()
        .route("/metrics", get(scrape))
        .route("/livez", get(livez))
        .route("/readyz", get(readyz))
        .with_state(metrics);
    if let Err(error) = axum::serve(listener, app).await {
        tracing::warn!(%error, "the metrics listener stopped");
    }
}

async fn scrape(State(m): State<Arc<AgentMetrics>>) -> Response {
    ([(header::CONTENT_TYPE, telemetry::exposition::CONTENT_TYPE)], m.encode()).into_response()
}

async fn livez(uri: Uri) -> Response {
    health_response(&health::render(
        "livez",
        &[Check::ok("http")],
        health::wants_verbose(uri.query()),
    ))
}

async fn readyz(State(m): State<Arc<AgentMetrics>>, uri: Uri) -> Response {
    health_response(&health::render("readyz", &m.readiness(), health::wants_verbose(uri.query())))
}

fn health_response(h: &health::Health) -> Response {
    let status = StatusCode::from_u16(h.status()).expect("200 and 503 are statuses");
    (status, h.body.clone()).into_response()
}

#[cfg(test)]
mod tests {
    use telemetry::exposition::{parse, value};

    use super::*;

    #[test]
    fn recorded_figures_reach_the_exposition() {
        let m = AgentMetrics::new();
        m.ping(PingKind::Goal, true, 0.01);
        m.ping(PingKind::Heartbeat, false, 0.5);
        m.step("RESTARTING", "SUCCEEDED");
        m.hook("RESTARTING", "SUCCEEDED", 1.5);
        m.download(true, 2.0);
        m.download(false, 0.1);
        m.mirror(&NodeStats {
            downloaded_bytes: 1000,
            downloaded_from_origin_bytes: 300,
            uploaded_bytes: 50,
            bad_responses: 1,
            download_throttle: ThrottleStats { waits: 4, waited_micros: 2_500_000 },
            ..NodeStats::default()
        });
        // Mirroring the same totals again adds nothing.
        m.mirror(&NodeStats {
            downloaded_bytes: 1000,
            downloaded_from_origin_bytes: 300,
            uploaded_bytes: 50,
            bad_responses: 1,
            download_throttle: ThrottleStats { waits: 4, waited_micros: 2_500_000 },
            ..NodeStats::default()
        });
        let s = parse(&m.encode()).unwrap();
        let v = |name, labels: &[(&str, &str)]| value(&s, name, labels);
        assert_eq!(v("tt_agent_pings_total", &[("kind", "goal"), ("result", "ok")]), Some(1.0));
        assert_eq!(
            v("tt_agent_pings_total", &[("kind", "heartbeat"), ("result", "error")]),
            Some(1.0)
        );
        assert_eq!(v("tt_agent_ping_seconds_count", &[("kind", "goal")]), Some(1.0));
        assert_eq!(
            v("tt_agent_steps_total", &[("step", "RESTARTING"), ("outcome", "SUCCEEDED")]),
            Some(1.0)
        );
        assert_eq!(v("tt_agent_hook_seconds_sum", &[("step", "RESTARTING")]), Some(1.5));
        assert_eq!(v("tt_agent_downloads_total", &[("outcome", "error")]), Some(1.0));
        assert_eq!(v("tt_agent_download_seconds_count", &[]), Some(1.0));
        assert_eq!(v("tt_agent_swarm_received_bytes_total", &[("source", "peer")]), Some(700.0));
        assert_eq!(v("tt_agent_swarm_received_bytes_total", &[("source", "origin")]), Some(300.0));
        assert_eq!(v("tt_agent_swarm_sent_bytes_total", &[]), Some(50.0));
        assert_eq!(v("tt_agent_swarm_peer_bans_total", &[]), Some(1.0));
        assert_eq!(
            v("tt_agent_swarm_throttle_waits_total", &[("direction", "download")]),
            Some(4.0)
        );
        assert_eq!(
            v("tt_agent_swarm_throttled_seconds_total", &[("direction", "download")]),
            Some(2.5)
        );
    }

    #[test]
    fn ready_once_a_coordinator_answered_and_not_after_a_failed_ping() {
        let m = AgentMetrics::new();
        let ready = |m: &AgentMetrics| health::render("readyz", &m.readiness(), true);
        let h = ready(&m);
        assert!(!h.ok);
        assert!(
            h.body.contains("[-]coordinator-reachable failed: no ping answered yet"),
            "{}",
            h.body
        );
        m.ping(PingKind::Goal, true, 0.01);
        let h = ready(&m);
        assert!(h.ok, "{}", h.body);
        assert!(h.body.contains("[+]env-status-loaded ok\n[+]coordinator-reachable ok\n"));
        m.ping(PingKind::Heartbeat, false, 0.01);
        assert!(ready(&m).ok, "a failed heartbeat is not the ping loop failing");
        m.ping(PingKind::Goal, false, 0.01);
        assert!(!ready(&m).ok);
    }
}
