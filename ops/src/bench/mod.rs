//! Write-path benchmark: our coordinator's Raft writes against a three-member etcd.
//!
//! [`loadgen::run`] drives any [`WriteTarget`] with N closed-loop clients, one connection each;
//! [`ours::BuildPublish`] and [`etcd::EtcdPut`] are the two targets, and [`etcd::EtcdCluster`]
//! launches the baseline. [`write_path_compare`] runs both at each client count and prints them
//! side by side.
//!
//! Goals: the same load shape on both sides (`reference/baselines.md`: sequential 256-byte writes
//! to distinct keys, 2 s warm-up, 12 s measured), both durable (etcd keeps its fsync), measured in
//! the same run so that the noisy shared machine affects both alike.
//!
//! Non-goals: launching our own cluster (the caller passes a URL), and comparing reads.

pub mod agent;
pub mod bittorrent;
pub mod etcd;
pub mod loadgen;
pub mod ours;
pub mod ping;
pub mod swarm;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;

pub use loadgen::{LoadReport, LoadSpec, WriteTarget};

#[cfg(test)]
mod tests;

/// `LoadReport::target` of [`ours::BuildPublish`].
pub const OURS_TARGET: &str = "ours";
/// `LoadReport::target` of [`etcd::EtcdPut`].
pub const ETCD_TARGET: &str = "etcd";

/// First port of the etcd cluster [`write_path_compare`] launches; it uses six from here.
pub const ETCD_BASE_PORT: u16 = 23790;

/// Runs `spec_template` at each client count in `clients`, against our coordinator at
/// `ours_base_url` and against an etcd cluster launched in `etcd_dir`, whichever are given;
/// prints a side-by-side table and returns the reports in run order.
///
/// At each client count ours runs first, then etcd, so drift in the machine's load shows up as a
/// difference between client counts rather than between targets. etcd's leader is looked up
/// again before each run, in case an election moved it.
pub async fn write_path_compare(
    ours_base_url: Option<String>,
    etcd_dir: Option<PathBuf>,
    clients: &[usize],
    spec_template: &LoadSpec,
) -> anyhow::Result<Vec<LoadReport>> {
    // etcd is paused while ours runs, so that its compaction after a run does not load ours.
    write_path_compare_paused(ours_base_url, &[], etcd_dir, clients, spec_template).await
}

/// The nearest-rank percentile `p` (0–100) of `sorted` samples; NaN when there are none.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Sends `signal` to each of `pids` (best effort).
fn signal_all(pids: &[u32], signal: nix::sys::signal::Signal) {
    for pid in pids {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(*pid as i32), signal);
    }
}

/// Writes every dirty page of the machine back to disk before a measured run, so that a run
/// does not pay for the writeback of the previous one's data (ours or etcd's: etcd, paused
/// while we run, still has its page cache written back by the kernel behind our fsyncs).
fn settle_disk() {
    nix::unistd::sync();
}

/// Like [`write_path_compare`], with `ours_pids` (our node processes) paused (SIGSTOP) while etcd
/// is measured. Not used by `tt bench write`: pausing a Raft cluster makes it elect a new leader
/// when it resumes, which then costs our next run a forwarding hop and failed writes.
pub async fn write_path_compare_paused(
    ours_base_url: Option<String>,
    ours_pids: &[u32],
    etcd_dir: Option<PathBuf>,
    clients: &[usize],
    spec_template: &LoadSpec,
) -> anyhow::Result<Vec<LoadReport>> {
    use nix::sys::signal::Signal;
    let etcd = match &etcd_dir {
        Some(dir) => Some(etcd::EtcdCluster::start(dir, ETCD_BASE_PORT).await?),
        None => None,
    };

    let mut reports = Vec::new();
    for &concurrency in clients {
        let spec = LoadSpec { concurrency, ..spec_template.clone() };
        let etcd_pids = etcd.as_ref().map(|e| e.pids()).unwrap_or_default();
        if let Some(base_url) = &ours_base_url {
            signal_all(&etcd_pids, Signal::SIGSTOP);
            settle_disk();
            let target = ours::BuildPublish { base_url: base_url.clone() };
            reports.push(loadgen::run(&spec, Arc::new(target)).await);
            signal_all(&etcd_pids, Signal::SIGCONT);
        }
        if let Some(cluster) = &etcd {
            signal_all(ours_pids, Signal::SIGSTOP);
            settle_disk();
            let base_url = cluster.leader_client_url().await?;
            let key_prefix = format!("bench/n{concurrency}/");
            let target = etcd::EtcdPut { base_url, key_prefix };
            reports.push(loadgen::run(&spec, Arc::new(target)).await);
            signal_all(ours_pids, Signal::SIGCONT);
        }
    }
    print!("{}", format_table(&reports));
    Ok(reports)
}

/// Writes `reports` to `path` as a pretty-printed JSON array.
pub fn write_json(path: &Path, reports: &[LoadReport]) -> anyhow::Result<()> {
    let json = serde_json::to_vec_pretty(reports).expect("reports serialize");
    std::fs::write(path, json).with_context(|| format!("writing {}", path.display()))
}

/// One row per report. Our rows also carry ours/etcd ratios of ops/s and p99 when etcd ran at the
/// same client count: above 1 is better for ops/s, below 1 is better for p99.
pub(crate) fn format_table(reports: &[LoadReport]) -> String {
    let mut table = String::new();
    writeln!(
        table,
        "{:<8} {:>7} {:>10} {:>9} {:>9} {:>8} {:>12} {:>12}",
        "target", "clients", "ops/s", "p50 ms", "p99 ms", "errors", "ops/s ratio", "p99 ratio"
    )
    .unwrap();
    for report in reports {
        let baseline = reports.iter().find(|other| {
            report.target == OURS_TARGET
                && other.target == ETCD_TARGET
                && other.concurrency == report.concurrency
        });
        let (ops_ratio, p99_ratio) = match baseline {
            Some(etcd) => (
                format!("{:.2}", report.ops_per_sec / etcd.ops_per_sec),
                format!("{:.2}", report.p99_ms / etcd.p99_ms),
            ),
            None => (String::new(), String::new()),
        };
        writeln!(
            table,
            "{:<8} {:>7} {:>10.0} {:>9.2} {:>9.2} {:>8} {:>12} {:>12}",
            report.target,
            report.concurrency,
            report.ops_per_sec,
            report.p50_ms,
            report.p99_ms,
            report.errors,
            ops_ratio,
            p99_ratio
        )
        .unwrap();
    }
    table
}
