//! Simulated hosts for scale: one extra process (`chaos simagents`) runs many Teletraan agents
//! of `ops::simfleet` in a stage of their own, long-polling the coordinators over the native
//! protocol through proxies of the lab (so coordinator faults and agent link quality hit them
//! too), and writes each host's run of deploy steps per deploy to a file the run reads: the
//! parallelism checker judges them as it judges the real agents' hooks.
//!
//! The file ([`SimFile`], JSON) is rewritten every [`FLUSH_EVERY`] and once more on SIGTERM;
//! times are wall-clock nanoseconds, like the real hooks' journals.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

use crate::checkers::Interval;
use crate::proxy::{LinkFaults, Proxy, ProxyError, ProxyStats};

/// How often the simulated fleet rewrites its intervals file.
pub const FLUSH_EVERY: Duration = Duration::from_millis(250);
/// How long a simulated host's long-poll may be held by the leader.
pub const LONG_POLL_WAIT: Duration = Duration::from_secs(5);
/// Grace between SIGTERM and SIGKILL when the lab stops the process.
pub const STOP_GRACE: Duration = Duration::from_secs(10);
/// The environment variable naming the `chaos` binary, if not found beside the running one.
pub const CHAOS_BIN_ENV: &str = "CHAOS_BIN";

/// Errors of the simulated fleet (the process's, and the lab's handling of it).
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error("loading the cluster CA from {dir}: {message}")]
    Ca { dir: PathBuf, message: String },
    #[error("{what} {path}: {source}")]
    Io { what: &'static str, path: PathBuf, source: std::io::Error },
    #[error("{path} is not a simulated fleet's intervals file: {source}")]
    Parse { path: PathBuf, source: serde_json::Error },
    #[error(transparent)]
    Proxy(#[from] ProxyError),
    #[error("cannot find the chaos binary: {0}")]
    Bin(String),
}

/// What `chaos simagents` runs.
#[derive(Debug, Clone)]
pub struct SimArgs {
    pub hosts: usize,
    /// Host names (and ids) are `{prefix}{i}`.
    pub prefix: String,
    /// The group every host reports (the stage's capacity).
    pub group: String,
    /// How long each deploy step takes.
    pub step: Duration,
    /// The coordinators' agent endpoints (the lab's proxies).
    pub agent_addrs: Vec<SocketAddr>,
    /// The cluster's CA directory (`ca.pem`).
    pub ca_dir: PathBuf,
    /// Where the intervals go.
    pub out: PathBuf,
}

/// One host's run of deploy steps on one deploy (wall clock, nanoseconds since the epoch).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SimInterval {
    pub host: String,
    pub deploy: String,
    pub start_ns: u128,
    /// `None` while it runs.
    pub end_ns: Option<u128>,
}

/// The intervals file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SimFile {
    pub intervals: Vec<SimInterval>,
    /// Pings that found no coordinator.
    pub ping_errors: u64,
}

fn wall_ns() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default()
}

/// Runs the simulated fleet until SIGTERM or SIGINT, rewriting `args.out` as it goes.
pub async fn serve(args: SimArgs) -> Result<(), SimError> {
    use ops::simfleet::{Fleet, FleetSpec, LongPoll};
    let ca = agent::ca_cert(&args.ca_dir)
        .map_err(|e| SimError::Ca { dir: args.ca_dir.clone(), message: e.to_string() })?;
    let (epoch_ns, epoch) = (wall_ns(), Instant::now());
    let fleet = Fleet::start(FleetSpec {
        hosts: args.hosts,
        prefix: args.prefix.clone(),
        groups: vec![args.group.clone()],
        coordinators: Vec::new(),
        hook: args.step,
        idle_ping: LONG_POLL_WAIT,
        long_poll: Some(LongPoll {
            ca,
            agent_addrs: args.agent_addrs.clone(),
            token: None,
            wait: LONG_POLL_WAIT,
            endpoint: None,
        }),
        zones: Vec::new(),
    });
    let at = |i: Instant| epoch_ns + i.saturating_duration_since(epoch).as_nanos();
    let snapshot = |fleet: &Fleet| SimFile {
        intervals: fleet
            .intervals()
            .into_iter()
            .map(|i| SimInterval {
                host: i.host,
                deploy: i.deploy_id,
                start_ns: at(i.start),
                end_ns: i.end.map(at),
            })
            .collect(),
        ping_errors: fleet.ping_errors(),
    };
    let io = |what, source| SimError::Io { what, path: args.out.clone(), source };
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| io("installing a SIGTERM handler for", e))?;
    loop {
        write_file(&args.out, &snapshot(&fleet))?;
        tokio::select! {
            _ = tokio::time::sleep(FLUSH_EVERY) => {}
            _ = term.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
        }
    }
    write_file(&args.out, &snapshot(&fleet))?;
    fleet.stop().await;
    Ok(())
}

fn write_file(path: &Path, file: &SimFile) -> Result<(), SimError> {
    let tmp = path.with_extension("tmp");
    let io = |what, source| SimError::Io { what, path: tmp.clone(), source };
    std::fs::write(&tmp, serde_json::to_vec(file).expect("intervals serialize"))
        .map_err(|e| io("writing", e))?;
    std::fs::rename(&tmp, path).map_err(|e| io("renaming into place", e))
}

/// Reads an intervals file as the checkers' intervals, on the run's clock (`start_epoch_ns` is
/// the run's start on the wall clock); a run still open lasts until `run_end_us`.
pub fn read_intervals(
    path: &Path,
    start_epoch_ns: u128,
    run_end_us: u64,
) -> Result<(SimFile, Vec<Interval>), SimError> {
    let bytes = std::fs::read(path).map_err(|source| SimError::Io {
        what: "reading",
        path: path.to_path_buf(),
        source,
    })?;
    let file: SimFile = serde_json::from_slice(&bytes)
        .map_err(|source| SimError::Parse { path: path.to_path_buf(), source })?;
    let us = |ns: u128| (ns.saturating_sub(start_epoch_ns) / 1000) as u64;
    let intervals = file
        .intervals
        .iter()
        .map(|i| Interval {
            host: i.host.clone(),
            deploy: i.deploy.clone(),
            start_us: us(i.start_ns),
            end_us: i.end_ns.map_or(run_end_us, us),
            run_start_us: None,
        })
        .collect();
    Ok((file, intervals))
}

/// The `chaos` binary: the running one, or one beside it (an integration test runs from
/// `target/<profile>/deps/`), or [`CHAOS_BIN_ENV`].
pub fn find_chaos_bin() -> Result<PathBuf, SimError> {
    if let Ok(exe) = std::env::current_exe()
        && exe.file_name().is_some_and(|n| n == "chaos")
    {
        return Ok(exe);
    }
    ops::devcluster::find_sibling_bin("chaos", CHAOS_BIN_ENV)
        .map_err(|e| SimError::Bin(e.to_string()))
}

/// The lab's simulated fleet: the process and its proxies (one per node).
pub struct SimAgents {
    pub hosts: usize,
    pub prefix: String,
    pub proxies: Vec<Proxy>,
    pub out: PathBuf,
    pub log: PathBuf,
    child: Option<Child>,
}

/// What the lab starts.
#[derive(Debug, Clone)]
pub struct SimSpec {
    pub dir: PathBuf,
    pub hosts: usize,
    pub prefix: String,
    pub group: String,
    pub step: Duration,
    /// Each node's agent endpoint (a proxy is put in front of each).
    pub nodes: Vec<SocketAddr>,
    pub ca_dir: PathBuf,
    /// One proxy seed per node.
    pub seeds: Vec<u64>,
}

impl SimAgents {
    pub async fn start(spec: SimSpec) -> Result<SimAgents, SimError> {
        let bin = find_chaos_bin()?;
        let mut proxies = Vec::new();
        for (node, seed) in spec.nodes.iter().zip(&spec.seeds) {
            proxies.push(Proxy::start(SocketAddr::from(([127, 0, 0, 1], 0)), *node, *seed).await?);
        }
        let io =
            |what, path: &Path, source| SimError::Io { what, path: path.to_path_buf(), source };
        std::fs::create_dir_all(&spec.dir).map_err(|e| io("creating", &spec.dir, e))?;
        let out = spec.dir.join("intervals.json");
        let log = spec.dir.join("simagents.log");
        let log_file = std::fs::File::create(&log).map_err(|e| io("creating", &log, e))?;
        let err_file = log_file.try_clone().map_err(|e| io("opening", &log, e))?;
        let mut cmd = Command::new(&bin);
        cmd.arg("simagents")
            .args(["--hosts", &spec.hosts.to_string(), "--prefix", &spec.prefix])
            .args(["--group", &spec.group, "--step-ms", &spec.step.as_millis().to_string()])
            .arg("--ca-dir")
            .arg(&spec.ca_dir)
            .arg("--out")
            .arg(&out);
        for p in &proxies {
            cmd.args(["--agent-addr", &p.addr().to_string()]);
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log_file)
            .stderr(err_file)
            .spawn()
            .map_err(|e| io("starting", &bin, e))?;
        Ok(SimAgents {
            hosts: spec.hosts,
            prefix: spec.prefix,
            proxies,
            out,
            log,
            child: Some(child),
        })
    }

    /// The simulated hosts' names.
    pub fn host_names(&self) -> Vec<String> {
        (0..self.hosts).map(|i| format!("{}{i}", self.prefix)).collect()
    }

    /// Sets the quality of the links to the coordinators.
    pub fn set_quality(&self, faults: &LinkFaults) -> Result<(), ProxyError> {
        for p in &self.proxies {
            p.set_faults(faults.clone())?;
        }
        Ok(())
    }

    pub fn proxy_stats(&self) -> ProxyStats {
        let mut s = ProxyStats::default();
        for p in &self.proxies {
            s.add(&p.stats());
        }
        s
    }

    pub fn is_running(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// SIGTERM (the fleet writes its file a last time), then SIGKILL after [`STOP_GRACE`].
    pub fn stop(&mut self) {
        let Some(mut c) = self.child.take() else { return };
        let _ = kill(Pid::from_raw(c.id() as i32), Signal::SIGTERM);
        let deadline = Instant::now() + STOP_GRACE;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = c.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = c.kill();
        let _ = c.wait();
    }
}

impl Drop for SimAgents {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_intervals_file_reads_as_intervals_on_the_run_clock() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("intervals.json");
        let start = 1_000_000_000_000u128;
        let file = SimFile {
            intervals: vec![
                SimInterval {
                    host: "sim-0".into(),
                    deploy: "d".into(),
                    start_ns: start + 5_000,
                    end_ns: Some(start + 9_000),
                },
                SimInterval {
                    host: "sim-1".into(),
                    deploy: "d".into(),
                    start_ns: start + 7_000,
                    end_ns: None,
                },
            ],
            ping_errors: 3,
        };
        write_file(&path, &file).unwrap();
        let (read, intervals) = read_intervals(&path, start, 100).unwrap();
        assert_eq!(read, file);
        let spans: Vec<(&str, u64, u64)> =
            intervals.iter().map(|i| (i.host.as_str(), i.start_us, i.end_us)).collect();
        assert_eq!(spans, [("sim-0", 5, 9), ("sim-1", 7, 100)], "an open run lasts to the end");
        std::fs::write(&path, b"{not json").unwrap();
        assert!(matches!(read_intervals(&path, start, 100), Err(SimError::Parse { .. })));
    }
}
