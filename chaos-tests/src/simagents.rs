//! Simulated hosts for scale: one extra process (`chaos simagents`) runs many Teletraan agents
//! of `ops::simfleet` in a stage of their own, long-polling the coordinators over the native
//! protocol through proxies of the lab (so coordinator faults and agent link quality hit them
//! too), and writes each host's run of deploy steps per deploy to a file the run reads: the
//! parallelism checker judges them as it judges the real agents' hooks.
//!
//! The file ([`SimFile`], JSON) is rewritten every [`FLUSH_EVERY`] and once more on SIGTERM;
//! times are wall-clock nanoseconds, like the real hooks' journals. Each start of the process
//! (a restart after a `kill-sim` fault) writes a file of its own (`intervals-<run>.json`), so a
//! restarted process, whose hosts ping again under the same names with no local state, neither
//! loses nor overwrites the runs before it; when the lab kills the process it closes the
//! killed run's open intervals at the kill ([`SimAgents::kill`]).

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

impl SimFile {
    /// Runs of steps still open (hosts mid-deploy at the last flush).
    pub fn open_runs(&self) -> u64 {
        self.intervals.iter().filter(|i| i.end_ns.is_none()).count() as u64
    }
}

/// The intervals file at `path`, `None` if there is none yet.
fn read_file(path: &Path) -> Result<Option<SimFile>, SimError> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(SimError::Io { what: "reading", path: path.to_path_buf(), source });
        }
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|source| SimError::Parse { path: path.to_path_buf(), source })
}

/// Ends every run the file at `path` shows open at `at_ns` (the process was killed then);
/// answers how many there were. A run begun after the last flush is not in the file at all.
fn close_open_intervals(path: &Path, at_ns: u128) -> Result<u64, SimError> {
    let Some(mut file) = read_file(path)? else { return Ok(0) };
    let open = file.open_runs();
    for i in file.intervals.iter_mut().filter(|i| i.end_ns.is_none()) {
        i.end_ns = Some(at_ns.max(i.start_ns));
    }
    write_file(path, &file)?;
    Ok(open)
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
    let file = read_file(path)?.ok_or_else(|| SimError::Io {
        what: "reading",
        path: path.to_path_buf(),
        source: std::io::ErrorKind::NotFound.into(),
    })?;
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

/// The runs of steps of every start's file (`outs`, oldest first), appended; a start killed
/// before its first flush left no file, the running one must have one.
pub fn read_runs(
    outs: &[PathBuf],
    start_epoch_ns: u128,
    run_end_us: u64,
) -> Result<Vec<Interval>, SimError> {
    let mut all = Vec::new();
    for (i, out) in outs.iter().enumerate() {
        if i + 1 < outs.len() && !out.exists() {
            continue;
        }
        all.extend(read_intervals(out, start_epoch_ns, run_end_us)?.1);
    }
    Ok(all)
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
    /// Every start's intervals file, oldest first (the last is the running process's).
    pub outs: Vec<PathBuf>,
    /// Every start's output, appended.
    pub log: PathBuf,
    spec: SimSpec,
    bin: PathBuf,
    child: Option<Child>,
    paused: bool,
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
        let log = spec.dir.join("simagents.log");
        let mut sim = SimAgents {
            hosts: spec.hosts,
            prefix: spec.prefix.clone(),
            proxies,
            outs: Vec::new(),
            log,
            spec,
            bin,
            child: None,
            paused: false,
        };
        sim.spawn()?;
        Ok(sim)
    }

    /// Starts the process, writing to a new intervals file.
    fn spawn(&mut self) -> Result<(), SimError> {
        let io =
            |what, path: &Path, source| SimError::Io { what, path: path.to_path_buf(), source };
        let spec = &self.spec;
        let out = spec.dir.join(format!("intervals-{}.json", self.outs.len()));
        let log_file = std::fs::File::options()
            .create(true)
            .append(true)
            .open(&self.log)
            .map_err(|e| io("opening", &self.log, e))?;
        let err_file = log_file.try_clone().map_err(|e| io("opening", &self.log, e))?;
        let mut cmd = Command::new(&self.bin);
        cmd.arg("simagents")
            .args(["--hosts", &spec.hosts.to_string(), "--prefix", &spec.prefix])
            .args(["--group", &spec.group, "--step-ms", &spec.step.as_millis().to_string()])
            .arg("--ca-dir")
            .arg(&spec.ca_dir)
            .arg("--out")
            .arg(&out);
        for p in &self.proxies {
            cmd.args(["--agent-addr", &p.addr().to_string()]);
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log_file)
            .stderr(err_file)
            .spawn()
            .map_err(|e| io("starting", &self.bin, e))?;
        self.child = Some(child);
        self.paused = false;
        self.outs.push(out);
        Ok(())
    }

    /// `kill -9` the process. Its hosts stop deploying there and then: the runs of steps its
    /// last file shows open end at the kill. Answers how many were open (hosts mid-deploy), or
    /// `None` if the process was not running (the fault hit nothing).
    pub fn kill(&mut self) -> Result<Option<u64>, SimError> {
        if !self.is_running() {
            return Ok(None);
        }
        let Some(mut c) = self.child.take() else { return Ok(None) };
        let _ = c.kill();
        let _ = c.wait();
        self.paused = false;
        let out = self.outs.last().expect("a started process has a file");
        close_open_intervals(out, wall_ns()).map(Some)
    }

    /// Starts the process again (killing it first if it runs): its hosts ping again under
    /// the same names, with no local state, and its runs go to a new file.
    pub fn restart(&mut self) -> Result<(), SimError> {
        self.kill()?;
        self.spawn()
    }

    /// SIGSTOP the process; answers how many hosts its last file shows mid-deploy, or `None`
    /// if it was not running.
    pub fn pause(&mut self) -> Result<Option<u64>, SimError> {
        let Some(pid) = self.pid() else { return Ok(None) };
        let _ = kill(pid, Signal::SIGSTOP);
        self.paused = true;
        let out = self.outs.last().expect("a started process has a file");
        let open = read_file(out)?.map_or(0, |f| f.open_runs());
        Ok(Some(open))
    }

    /// SIGCONT the process, if it was paused.
    pub fn resume(&mut self) {
        if std::mem::take(&mut self.paused)
            && let Some(pid) = self.pid()
        {
            let _ = kill(pid, Signal::SIGCONT);
        }
    }

    pub fn is_paused(&self) -> bool {
        self.paused
    }

    fn pid(&mut self) -> Option<Pid> {
        self.is_running()
            .then(|| self.child.as_ref().map(|c| Pid::from_raw(c.id() as i32)))
            .flatten()
    }

    /// Every start's runs of steps as the checkers' intervals, on the run's clock
    /// ([`read_intervals`]); a start killed before its first flush left no file.
    pub fn intervals(
        &self,
        start_epoch_ns: u128,
        run_end_us: u64,
    ) -> Result<Vec<Interval>, SimError> {
        read_runs(&self.outs, start_epoch_ns, run_end_us)
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
        // A stopped process ignores SIGTERM until continued.
        self.resume();
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

    #[test]
    fn a_killed_run_ends_at_the_kill_and_a_restart_appends_a_run_of_its_own() {
        let dir = tempfile::tempdir().unwrap();
        let start = 1_000_000_000_000u128;
        let run = |host: &str, from_us: u128, to_us: Option<u128>| SimInterval {
            host: host.into(),
            deploy: "d".into(),
            start_ns: start + from_us * 1000,
            end_ns: to_us.map(|t| start + t * 1000),
        };
        let outs: Vec<PathBuf> =
            (0..3).map(|i| dir.path().join(format!("intervals-{i}.json"))).collect();
        // The first process: sim-0 done, sim-1 mid-deploy when it is killed at 50 µs.
        let first = SimFile {
            intervals: vec![run("sim-0", 5, Some(9)), run("sim-1", 7, None)],
            ping_errors: 0,
        };
        write_file(&outs[0], &first).unwrap();
        assert_eq!(close_open_intervals(&outs[0], start + 50_000).unwrap(), 1);
        assert_eq!(close_open_intervals(&outs[0], start + 60_000).unwrap(), 0, "closed once");
        // The second was killed before its first flush (no file); the third runs: sim-1
        // deploys again under the same name.
        assert_eq!(close_open_intervals(&outs[1], start).unwrap(), 0);
        let third = SimFile { intervals: vec![run("sim-1", 80, None)], ping_errors: 0 };
        write_file(&outs[2], &third).unwrap();
        let spans: Vec<(String, u64, u64)> = read_runs(&outs, start, 100)
            .unwrap()
            .into_iter()
            .map(|i| (i.host, i.start_us, i.end_us))
            .collect();
        let want = [("sim-0", 5, 9), ("sim-1", 7, 50), ("sim-1", 80, 100)];
        assert_eq!(spans, want.map(|(h, a, b)| (h.to_string(), a, b)));
        // The running process's file must be there.
        std::fs::remove_file(&outs[2]).unwrap();
        assert!(read_runs(&outs, start, 100).is_err());
    }
}
