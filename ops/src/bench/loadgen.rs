//! Closed-loop HTTP load generator.
//!
//! `concurrency` workers each own one `reqwest::Client` (so one TCP connection) and issue
//! sequential writes through a [`WriteTarget`] until the run ends: a worker sends its next write
//! only when the previous one has been answered. Latencies of successful writes that complete
//! inside the measurement window (after the warm-up) go into a per-worker HDR histogram in
//! microseconds; the histograms are merged when the run ends.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use hdrhistogram::Histogram;
use serde::Serialize;
use tracing::Instrument;

/// A failed request is answered long before this on loopback; the bound only keeps a wedged
/// target from hanging the whole run.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Pause after a failed write, so a target that refuses connections does not turn the worker
/// into a busy loop that starves the target being measured of CPU.
const ERROR_BACKOFF: Duration = Duration::from_millis(10);

/// Largest latency the histograms can hold, in microseconds. Above `REQUEST_TIMEOUT`, so no
/// successful write is ever clamped.
const LATENCY_US_MAX: u64 = 60_000_000;

/// The shape of one load run.
#[derive(Debug, Clone)]
pub struct LoadSpec {
    /// Number of workers, each with its own connection and one write in flight.
    pub concurrency: usize,
    /// Time spent writing before latencies and completions are counted.
    pub warmup: Duration,
    /// Length of the measurement window that follows the warm-up.
    pub duration: Duration,
    /// Size of the value passed to [`WriteTarget::request`].
    pub value_bytes: usize,
}

/// A system under test: turns one logical write into one HTTP request.
pub trait WriteTarget: Send + Sync {
    /// Issues write number `seq` of worker `worker` over `client` and resolves once the target
    /// has acknowledged it. `value` is ASCII alphanumeric, so it can be embedded in JSON as is.
    /// The error is a human-readable description, logged once per run.
    fn request(
        &self,
        client: &reqwest::Client,
        worker: usize,
        seq: u64,
        value: &[u8],
    ) -> BoxFuture<'static, Result<(), String>>;

    /// Short name of the target, used as `LoadReport::target`.
    fn name(&self) -> String;
}

/// Figures of one load run. Latencies are of successful writes completed in the measurement
/// window.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LoadReport {
    pub target: String,
    pub concurrency: usize,
    /// Successful writes completed in the measurement window.
    pub ops: u64,
    /// Failed writes over the whole run, warm-up included: a failure is news whenever it happens.
    pub errors: u64,
    pub ops_per_sec: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

/// Builds an HTTP/1.1 client that keeps at most one idle connection, which a worker with one
/// request in flight turns into exactly one connection.
///
/// reqwest is built with `rustls-no-provider`, so building a client without a TLS configuration
/// panics unless a process-wide crypto provider is installed. The benchmark only speaks plain
/// HTTP on loopback, so it hands reqwest a ring-backed configuration that trusts no roots rather
/// than installing a global provider behind the binary's back.
pub(crate) fn http_client() -> reqwest::Client {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("ring supports the default TLS versions")
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .pool_max_idle_per_host(1)
        .tcp_nodelay(true)
        .timeout(REQUEST_TIMEOUT)
        .no_proxy()
        .build()
        .expect("HTTP client options are fixed and valid")
}

/// Runs `spec` against `target` and reports what was measured.
#[tracing::instrument(
    name = "load",
    skip_all,
    fields(write_target = %target.name(), concurrency = spec.concurrency)
)]
pub async fn run(spec: &LoadSpec, target: Arc<dyn WriteTarget>) -> LoadReport {
    assert!(spec.concurrency > 0, "a load run needs at least one worker");
    assert!(!spec.duration.is_zero(), "a load run needs a measurement window");

    let target_name = target.name();
    tracing::info!(
        warmup_ms = spec.warmup.as_millis() as u64,
        duration_ms = spec.duration.as_millis() as u64,
        value_bytes = spec.value_bytes,
        "load run started"
    );

    let value: Arc<[u8]> =
        (0..spec.value_bytes).map(|i| b"abcdefghijklmnopqrstuvwxyz"[i % 26]).collect();
    let measure_from = Instant::now() + spec.warmup;
    let window = Window { measure_from, end: measure_from + spec.duration };
    let workers: Vec<_> = (0..spec.concurrency)
        .map(|index| {
            let target = Arc::clone(&target);
            let value = Arc::clone(&value);
            let worker = worker(index, http_client(), target, value, window);
            tokio::spawn(worker.instrument(tracing::Span::current()))
        })
        .collect();

    let mut latencies_us = new_histogram();
    let mut ops = 0;
    let mut errors = 0;
    let mut first_error = None;
    for joined in futures::future::join_all(workers).await {
        let tally = joined.expect("load worker panicked");
        latencies_us.add(&tally.latencies_us).expect("histograms share their bounds");
        ops += tally.ops;
        errors += tally.errors;
        first_error = first_error.or(tally.first_error);
    }
    if let Some(error) = first_error {
        tracing::warn!(errors, first_error = %error, "writes failed");
    }

    let ms = |us: u64| us as f64 / 1000.0;
    let report = LoadReport {
        target: target_name,
        concurrency: spec.concurrency,
        ops,
        errors,
        ops_per_sec: ops as f64 / spec.duration.as_secs_f64(),
        p50_ms: ms(latencies_us.value_at_quantile(0.50)),
        p90_ms: ms(latencies_us.value_at_quantile(0.90)),
        p99_ms: ms(latencies_us.value_at_quantile(0.99)),
        max_ms: ms(latencies_us.max()),
    };
    tracing::info!(
        ops = report.ops,
        errors = report.errors,
        ops_per_sec = report.ops_per_sec,
        p99_ms = report.p99_ms,
        "load run finished"
    );
    report
}

/// When a run counts completions: in `(measure_from, end]`. Counting by completion time rather
/// than start time keeps throughput unbiased in a closed loop, where every worker has one write
/// straddling each edge of the window.
#[derive(Debug, Clone, Copy)]
struct Window {
    measure_from: Instant,
    end: Instant,
}

struct WorkerTally {
    latencies_us: Histogram<u64>,
    ops: u64,
    errors: u64,
    first_error: Option<String>,
}

async fn worker(
    index: usize,
    client: reqwest::Client,
    target: Arc<dyn WriteTarget>,
    value: Arc<[u8]>,
    window: Window,
) -> WorkerTally {
    let mut tally =
        WorkerTally { latencies_us: new_histogram(), ops: 0, errors: 0, first_error: None };
    let mut seq = 0;
    while Instant::now() < window.end {
        let started = Instant::now();
        let result = target.request(&client, index, seq, &value).await;
        let finished = Instant::now();
        seq += 1;
        match result {
            Ok(()) => {
                if finished > window.measure_from && finished <= window.end {
                    let latency_us = (finished - started).as_micros() as u64;
                    tally.latencies_us.saturating_record(latency_us.max(1));
                    tally.ops += 1;
                }
            }
            Err(error) => {
                tracing::debug!(worker = index, seq, %error, "write failed");
                tally.errors += 1;
                tally.first_error.get_or_insert(error);
                tokio::time::sleep(ERROR_BACKOFF).await;
            }
        }
    }
    tally
}

fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, LATENCY_US_MAX, 3).expect("histogram bounds are valid")
}

/// Reads the whole response body, which lets the connection go back to the pool for the
/// worker's next request, and turns a status outside `accepted` into an error.
pub(crate) async fn expect_status(
    response: Result<reqwest::Response, reqwest::Error>,
    accepted: &[reqwest::StatusCode],
) -> Result<(), String> {
    let response = response.map_err(|error| error_chain(&error))?;
    let status = response.status();
    let body =
        response.bytes().await.map_err(|error| format!("reading body: {}", error_chain(&error)))?;
    if accepted.contains(&status) {
        return Ok(());
    }
    const BODY_SHOWN_BYTES_MAX: usize = 200;
    let shown = &body[..body.len().min(BODY_SHOWN_BYTES_MAX)];
    Err(format!("HTTP {status}: {}", String::from_utf8_lossy(shown)))
}

/// reqwest's `Display` stops at "error sending request"; the cause (connection refused, timed
/// out) is in the source chain.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
