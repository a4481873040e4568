//! Runs one deploy stage's hook script (or any command) the way Teletraan's `run_cmd` does,
//! with its known faults fixed: [`run`] takes a [`HookCommand`], [`ExecLimits`] and a
//! [`Heartbeat`], and returns an [`ExecReport`].
//!
//! Each attempt runs in its own process group, with stdin from `/dev/null` and stdout and stderr
//! appended to the environment's log file. A file rather than a pipe, so that a daemon started
//! in the background by `RESTARTING` (which keeps the descriptor) does not hold the attempt open:
//! the attempt ends when the script itself exits. The child's cwd and environment are set on
//! the child only; the agent's own are never touched (Teletraan chdirs and mutates `os.environ`
//! process-wide, quirk 11).
//!
//! A non-zero exit is retried with exponential backoff, up to `max_retry` attempts in all. A
//! timeout is not retried. While an attempt runs and while the next one waits, a timer calls
//! the heartbeat; [`Verdict::Abort`] (the goal changed) stops the stage.
//!
//! A timed-out or aborted attempt's process group gets SIGTERM, then, if anything in it is still
//! running after `termination_timeout`, SIGKILL (Teletraan SIGKILLs at once on timeout, quirk
//! 14). Processes a script leaves behind when it exits *successfully* are not touched: starting
//! daemons is what `RESTARTING` is for.
//!
//! The output tail is the last `max_tail_bytes` *bytes* of what the attempt wrote, decoded as
//! lossy UTF-8 (Teletraan takes characters, drops the last one and strips non-ASCII, quirk 15).

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fs::File;
use std::future::Future;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, SystemTime};

use nix::errno::Errno;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use proto::enums::AgentStatus;
use tokio::process::{Child, Command};
use tokio::time::{Instant, Interval, MissedTickBehavior, interval_at, sleep, sleep_until};

/// Teletraan's `process_timeout`: wall clock allowed to one attempt.
pub const DEFAULT_PROCESS_TIMEOUT: Duration = Duration::from_secs(1800);
/// Teletraan's `termination_timeout`: grace between SIGTERM and SIGKILL.
pub const DEFAULT_TERMINATION_TIMEOUT: Duration = Duration::from_secs(30);
/// Teletraan's `max_retry`: attempts in all, the first included.
pub const DEFAULT_MAX_RETRY: u32 = 3;
/// Teletraan's `process_wait_interval`: the wait before the first retry.
pub const DEFAULT_PROCESS_WAIT_INTERVAL: Duration = Duration::from_secs(2);
/// Teletraan's `back_off_factor`: each wait before a retry is this many times the previous one.
pub const DEFAULT_BACK_OFF_FACTOR: u32 = 2;
/// Teletraan's `max_sleep_interval`: the longest wait before a retry.
pub const DEFAULT_MAX_SLEEP_INTERVAL: Duration = Duration::from_secs(60);
/// Teletraan's `min_running_time`: the period of heartbeats during a stage.
pub const DEFAULT_HEARTBEAT_INTERVAL: Duration = Duration::from_secs(60);
/// Teletraan's `max_tail_bytes` (the code's default; its shipped `agent.conf` says 20480).
pub const DEFAULT_MAX_TAIL_BYTES: usize = 10240;

/// A shorter heartbeat period is raised to this (a zero period would spin).
pub const MIN_HEARTBEAT_INTERVAL: Duration = Duration::from_millis(10);
/// How often a terminating process group is checked for survivors.
pub const GROUP_EXIT_POLL_INTERVAL: Duration = Duration::from_millis(20);
/// How long to wait for a SIGKILLed process group to disappear before giving up with a warning
/// (a process in uninterruptible sleep dies only when its IO returns).
pub const GROUP_KILL_CONFIRM_TIMEOUT: Duration = Duration::from_secs(5);
/// Spawns that fail with ETXTBSY are tried this many times in all. The error is transient: a
/// process forked by another thread of the agent while the script was being written holds a
/// copy of the write descriptor until it execs.
pub const SPAWN_TEXT_BUSY_ATTEMPTS: u32 = 10;
/// Pause between spawns that failed with ETXTBSY.
pub const SPAWN_TEXT_BUSY_PAUSE: Duration = Duration::from_millis(20);

/// Timeouts, retries and sizes of [`run`]; the defaults are Teletraan's.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExecLimits {
    /// Wall clock allowed to one attempt; past it the attempt is terminated and the stage ends
    /// with SCRIPT_TIMEOUT (not retried).
    pub process_timeout: Duration,
    /// Grace between SIGTERM and SIGKILL of a timed-out or aborted process group.
    pub termination_timeout: Duration,
    /// Attempts in all, the first included (Teletraan's name). 0 counts as 1.
    pub max_retry: u32,
    /// Wait before the first retry.
    pub process_wait_interval: Duration,
    /// Each wait before a retry is this many times the previous one.
    pub back_off_factor: u32,
    /// Cap of the wait before a retry.
    pub max_sleep_interval: Duration,
    /// Period of heartbeats while an attempt runs and while a retry waits (Teletraan's
    /// `min_running_time`).
    pub heartbeat_interval: Duration,
    /// The output tail keeps at most this many bytes of the attempt's output.
    pub max_tail_bytes: usize,
}

impl Default for ExecLimits {
    fn default() -> Self {
        Self {
            process_timeout: DEFAULT_PROCESS_TIMEOUT,
            termination_timeout: DEFAULT_TERMINATION_TIMEOUT,
            max_retry: DEFAULT_MAX_RETRY,
            process_wait_interval: DEFAULT_PROCESS_WAIT_INTERVAL,
            back_off_factor: DEFAULT_BACK_OFF_FACTOR,
            max_sleep_interval: DEFAULT_MAX_SLEEP_INTERVAL,
            heartbeat_interval: DEFAULT_HEARTBEAT_INTERVAL,
            max_tail_bytes: DEFAULT_MAX_TAIL_BYTES,
        }
    }
}

/// What to run for one stage.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HookCommand {
    /// Executed directly (no shell): a script needs a shebang and the execute bit.
    pub program: PathBuf,
    pub args: Vec<OsString>,
    /// The child's working directory.
    pub cwd: PathBuf,
    /// Added to (or replacing in) the agent's own environment, for the child only.
    pub env: BTreeMap<String, String>,
    /// The environment's log; stdout and stderr of every attempt are appended to it.
    pub log_file: PathBuf,
    /// The stage name, for the log and `tracing`.
    pub label: String,
    /// While an attempt runs, its process group is recorded here (and removed when it ends), so
    /// that an agent restarted after a crash can stop what the crashed one left running
    /// ([`stop_orphaned_group`]).
    pub pgid_file: Option<PathBuf>,
}

/// Where a stage stands, or how it ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExecStatus {
    /// The first attempt is running (in heartbeats only).
    Running,
    /// An attempt exited 0.
    Succeeded,
    /// An attempt failed and the stage is retrying: in heartbeats during the backoff and the
    /// following attempts, as in Teletraan.
    ScriptFailed,
    /// An attempt outlived `process_timeout`.
    ScriptTimeout,
    /// The last attempt failed.
    TooManyRetry,
    /// The heartbeat answered [`Verdict::Abort`]; Teletraan's ABORTED_BY_SERVER.
    Aborted,
    /// The log file could not be opened; nothing was run.
    AgentFailed,
}

impl ExecStatus {
    /// The status to report to the coordinator. An aborted stage is reported as UNKNOWN, as
    /// Teletraan's agent does.
    pub const fn agent_status(self) -> AgentStatus {
        match self {
            Self::Running | Self::Aborted => AgentStatus::Unknown,
            Self::Succeeded => AgentStatus::Succeeded,
            Self::ScriptFailed => AgentStatus::ScriptFailed,
            Self::ScriptTimeout => AgentStatus::ScriptTimeout,
            Self::TooManyRetry => AgentStatus::TooManyRetry,
            Self::AgentFailed => AgentStatus::AgentFailed,
        }
    }
}

/// The progress of a stage (given to heartbeats) or its outcome (returned by [`run`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExecReport {
    pub status: ExecStatus,
    /// 0 on success; 1 on timeout, on a spawn error and when the log cannot be opened; else the
    /// last attempt's exit code (128 + signal number if a signal killed it).
    pub error_code: i32,
    /// The last attempt's output tail, or the spawn error; `None` before any attempt ended.
    pub output: Option<String>,
    /// Attempts that failed so far.
    pub retry_times: u32,
}

/// The heartbeat's answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Keep going.
    Continue,
    /// The goal changed: stop the stage.
    Abort,
}

/// Called every `heartbeat_interval` while a stage runs, with its progress; typically pings the
/// coordinator. A heartbeat in flight delays noticing the script's exit but never the attempt's
/// timeout: at the deadline the heartbeat is dropped.
pub trait Heartbeat {
    fn beat(&mut self, progress: &ExecReport) -> impl Future<Output = Verdict> + Send;
}

/// A heartbeat that always continues, for commands run outside a deploy stage.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoHeartbeat;

impl Heartbeat for NoHeartbeat {
    fn beat(&mut self, _progress: &ExecReport) -> impl Future<Output = Verdict> + Send {
        std::future::ready(Verdict::Continue)
    }
}

/// Runs `cmd` until it succeeds, fails `limits.max_retry` times, times out or is aborted by
/// `heartbeat`. Never fails itself: every problem is a status of the report.
pub async fn run(
    cmd: &HookCommand,
    limits: &ExecLimits,
    heartbeat: &mut impl Heartbeat,
) -> ExecReport {
    let stage = cmd.label.as_str();
    let mut log = match File::options().create(true).append(true).open(&cmd.log_file) {
        Ok(log) => log,
        Err(e) => {
            let message = format!(
                "cannot open the log file {}: {e}; check that its directory exists and is \
                 writable by the agent",
                cmd.log_file.display()
            );
            tracing::error!(stage, "{message}");
            return ExecReport {
                status: ExecStatus::AgentFailed,
                error_code: 1,
                output: Some(message),
                retry_times: 0,
            };
        }
    };
    let max_attempts = limits.max_retry.max(1);
    let period = limits.heartbeat_interval.max(MIN_HEARTBEAT_INTERVAL);
    let mut ticker = interval_at(Instant::now() + period, period);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut progress =
        ExecReport { status: ExecStatus::Running, error_code: 0, output: None, retry_times: 0 };
    let mut backoff = limits.process_wait_interval;

    for attempt in 1..=max_attempts {
        let this = format!("{stage} attempt {attempt}/{max_attempts}");
        log_line(&mut log, &format!("{} {this}: {}", now_utc(), cmd_line(cmd)));
        let start_pos = log.metadata().map_or(0, |m| m.len());
        tracing::info!(stage, attempt, max_attempts, program = %cmd.program.display(), "hook started");

        let end = run_attempt(cmd, limits, &log, &mut ticker, heartbeat, &progress).await;
        // Before the footer below is appended.
        let tail = read_tail(&cmd.log_file, start_pos, limits.max_tail_bytes);
        let ended = now_utc();
        match end {
            AttemptEnd::Exited(0) => {
                log_line(&mut log, &format!("{ended} {this}: exit code 0"));
                tracing::info!(stage, attempt, "hook succeeded");
                return ExecReport {
                    status: ExecStatus::Succeeded,
                    error_code: 0,
                    output: Some(tail),
                    retry_times: progress.retry_times,
                };
            }
            AttemptEnd::Exited(code) => {
                log_line(&mut log, &format!("{ended} {this}: exit code {code}"));
                tracing::warn!(stage, attempt, exit_code = code, "hook failed");
                progress = ExecReport {
                    status: ExecStatus::ScriptFailed,
                    error_code: code,
                    output: Some(tail),
                    retry_times: progress.retry_times + 1,
                };
            }
            AttemptEnd::Failed(message) => {
                log_line(&mut log, &format!("{ended} {this}: {message}"));
                tracing::warn!(stage, attempt, "{message}");
                progress = ExecReport {
                    status: ExecStatus::ScriptFailed,
                    error_code: 1,
                    output: Some(message),
                    retry_times: progress.retry_times + 1,
                };
            }
            AttemptEnd::TimedOut(stopped) => {
                let timeout = limits.process_timeout;
                log_line(
                    &mut log,
                    &format!("{ended} {this}: timed out after {timeout:?}; {stopped}"),
                );
                tracing::warn!(stage, attempt, ?timeout, "hook timed out; {stopped}");
                return ExecReport {
                    status: ExecStatus::ScriptTimeout,
                    error_code: 1,
                    output: Some(tail),
                    retry_times: progress.retry_times,
                };
            }
            AttemptEnd::Aborted(stopped) => {
                log_line(&mut log, &format!("{ended} {this}: aborted (goal changed); {stopped}"));
                tracing::info!(stage, attempt, "hook aborted (goal changed); {stopped}");
                return ExecReport { status: ExecStatus::Aborted, output: Some(tail), ..progress };
            }
        }
        if attempt == max_attempts {
            tracing::warn!(
                stage,
                attempts = attempt,
                exit_code = progress.error_code,
                "hook failed on every attempt"
            );
            return ExecReport { status: ExecStatus::TooManyRetry, ..progress };
        }

        let wake = Instant::now() + backoff;
        loop {
            tokio::select! {
                biased;
                () = sleep_until(wake) => break,
                _ = ticker.tick() => {
                    if heartbeat.beat(&progress).await == Verdict::Abort {
                        let next = attempt + 1;
                        let text = format!("{stage}: aborted (goal changed) before attempt {next}");
                        log_line(&mut log, &format!("{} {text}", now_utc()));
                        tracing::info!(stage, attempt, "hook aborted (goal changed) before a retry");
                        return ExecReport { status: ExecStatus::Aborted, ..progress };
                    }
                }
            }
        }
        backoff = backoff
            .checked_mul(limits.back_off_factor)
            .unwrap_or(limits.max_sleep_interval)
            .min(limits.max_sleep_interval);
    }
    unreachable!("the last attempt returns")
}

enum AttemptEnd {
    /// The script exited with this code (128 + signal number if a signal killed it).
    Exited(i32),
    /// It could not be started (or waited for); the message says why.
    Failed(String),
    TimedOut(Stopped),
    Aborted(Stopped),
}

/// How a timed-out or aborted process group was stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stopped {
    /// Everything in it exited within the grace period after SIGTERM.
    ByTerm,
    /// Something outlived the grace period and was SIGKILLed.
    ByKill { grace: Duration },
}

impl std::fmt::Display for Stopped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::ByTerm => write!(f, "stopped by SIGTERM"),
            Self::ByKill { grace } => {
                write!(f, "still running {grace:?} after SIGTERM; stopped by SIGKILL")
            }
        }
    }
}

async fn run_attempt(
    cmd: &HookCommand,
    limits: &ExecLimits,
    log: &File,
    ticker: &mut Interval,
    heartbeat: &mut impl Heartbeat,
    progress: &ExecReport,
) -> AttemptEnd {
    enum Stop {
        Timeout,
        Abort,
    }

    let mut child = match spawn(cmd, log).await {
        Ok(child) => child,
        Err(e) => {
            let (program, cwd) = (cmd.program.display(), cmd.cwd.display());
            return AttemptEnd::Failed(format!("cannot run {program} in {cwd}: {e}"));
        }
    };
    let pid = child.id().expect("a child that was not waited for has an id");
    let pgid = Pid::from_raw(i32::try_from(pid).expect("pids fit in i32"));
    let mut guard = GroupGuard { pgid, armed: true };
    let _record = cmd.pgid_file.as_deref().map(|path| GroupRecord::write(path, pgid));
    let deadline = Instant::now() + limits.process_timeout;

    let stop = loop {
        tokio::select! {
            biased;
            status = child.wait() => {
                return match status {
                    Ok(status) => {
                        // Whatever the script left running is its business (daemons).
                        guard.armed = false;
                        AttemptEnd::Exited(exit_code(status))
                    }
                    // Unexpected (the child is ours alone); the guard kills the group.
                    Err(e) => AttemptEnd::Failed(format!(
                        "cannot wait for {}: {e}",
                        cmd.program.display()
                    )),
                };
            }
            () = sleep_until(deadline) => break Stop::Timeout,
            _ = ticker.tick() => {
                tokio::select! {
                    biased;
                    verdict = heartbeat.beat(progress) => {
                        if verdict == Verdict::Abort {
                            break Stop::Abort;
                        }
                    }
                    () = sleep_until(deadline) => break Stop::Timeout,
                }
            }
        }
    };
    let stopped = terminate_group(pgid, &mut child, limits.termination_timeout, &cmd.label).await;
    guard.armed = false;
    match stop {
        Stop::Timeout => AttemptEnd::TimedOut(stopped),
        Stop::Abort => AttemptEnd::Aborted(stopped),
    }
}

/// Spawns one attempt in a new process group, retrying transient ETXTBSY.
async fn spawn(cmd: &HookCommand, log: &File) -> std::io::Result<Child> {
    let mut tries = 1;
    loop {
        let mut command = Command::new(&cmd.program);
        command
            .args(&cmd.args)
            .current_dir(&cmd.cwd)
            .envs(&cmd.env)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log.try_clone()?)
            .process_group(0);
        match command.spawn() {
            Err(e)
                if e.raw_os_error() == Some(Errno::ETXTBSY as i32)
                    && tries < SPAWN_TEXT_BUSY_ATTEMPTS =>
            {
                tries += 1;
                sleep(SPAWN_TEXT_BUSY_PAUSE).await;
            }
            result => return result,
        }
    }
}

/// SIGTERMs the group, gives it `grace` to exit, then SIGKILLs whatever is left, and reaps the
/// leader.
async fn terminate_group(pgid: Pid, child: &mut Child, grace: Duration, stage: &str) -> Stopped {
    let _ = killpg(pgid, Signal::SIGTERM);
    let deadline = Instant::now() + grace;
    let mut leader_exited = false;
    loop {
        leader_exited = leader_exited || matches!(child.try_wait(), Ok(Some(_)));
        if leader_exited && !group_alive(pgid) {
            return Stopped::ByTerm;
        }
        if Instant::now() >= deadline {
            break;
        }
        sleep(GROUP_EXIT_POLL_INTERVAL.min(deadline - Instant::now())).await;
    }
    tracing::warn!(stage, ?grace, "hook's process group outlived SIGTERM; sending SIGKILL");
    let _ = killpg(pgid, Signal::SIGKILL);
    let _ = child.wait().await;
    let deadline = Instant::now() + GROUP_KILL_CONFIRM_TIMEOUT;
    while group_alive(pgid) {
        if Instant::now() >= deadline {
            tracing::warn!(stage, pgid = pgid.as_raw(), "processes of the hook survive SIGKILL");
            break;
        }
        sleep(GROUP_EXIT_POLL_INTERVAL).await;
    }
    Stopped::ByKill { grace }
}

/// Whether any process of group `pgid` is still running. Zombies do not count: once the leader
/// is reaped, the others are children of init, which may be slow to reap them.
fn group_alive(pgid: Pid) -> bool {
    if killpg(pgid, None) == Err(Errno::ESRCH) {
        return false;
    }
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return true;
    };
    procs.flatten().any(|entry| {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            return false;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            return false;
        };
        // "pid (comm) state ppid pgrp ..."; comm may contain spaces and parentheses.
        let Some(after_comm) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
            return false;
        };
        let mut fields = after_comm.split_whitespace();
        let state = fields.next();
        let pgrp = fields.nth(1).and_then(|p| p.parse::<i32>().ok());
        pgrp == Some(pgid.as_raw()) && !matches!(state, Some("Z" | "X"))
    })
}

/// The record of a running attempt's process group (`<boot id> <pgid>`); removed on drop.
struct GroupRecord(PathBuf);

impl GroupRecord {
    fn write(path: &Path, pgid: Pid) -> Self {
        let line = format!("{} {}\n", boot_id().unwrap_or_default(), pgid.as_raw());
        if let Err(e) = std::fs::write(path, line) {
            tracing::warn!(path = %path.display(), error = %e, "cannot record the hook's process group");
        }
        Self(path.to_path_buf())
    }
}

impl Drop for GroupRecord {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn boot_id() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id").ok().map(|s| s.trim().to_string())
}

/// Stops the hook a crashed agent left running, as recorded in `pgid_file`: SIGTERM to its
/// process group, `grace` to exit, then SIGKILL. A record from before a reboot is ignored (the
/// id may belong to someone else now); while a group exists its id is never reused, so a live
/// group with the recorded id is the orphan. Returns the group stopped, if any.
pub async fn stop_orphaned_group(pgid_file: &Path, grace: Duration) -> Option<i32> {
    let text = std::fs::read_to_string(pgid_file).ok()?;
    let _ = std::fs::remove_file(pgid_file);
    let mut fields = text.split_whitespace();
    let (boot, pgid) = (fields.next()?, fields.next()?.parse::<i32>().ok()?);
    if Some(boot) != boot_id().as_deref() || pgid <= 1 {
        return None;
    }
    let pgid = Pid::from_raw(pgid);
    if !group_alive(pgid) {
        return None;
    }
    tracing::warn!(pgid = pgid.as_raw(), "stopping the hook a previous agent left running");
    let _ = killpg(pgid, Signal::SIGTERM);
    let deadline = Instant::now() + grace;
    while group_alive(pgid) && Instant::now() < deadline {
        sleep(GROUP_EXIT_POLL_INTERVAL).await;
    }
    if group_alive(pgid) {
        let _ = killpg(pgid, Signal::SIGKILL);
    }
    Some(pgid.as_raw())
}

/// SIGKILLs the group of an attempt whose future was dropped before it ended.
struct GroupGuard {
    pgid: Pid,
    armed: bool,
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        if self.armed {
            let _ = killpg(self.pgid, Signal::SIGKILL);
        }
    }
}

fn exit_code(status: ExitStatus) -> i32 {
    status.code().or_else(|| status.signal().map(|signo| 128 + signo)).unwrap_or(1)
}

fn cmd_line(cmd: &HookCommand) -> String {
    let mut line = cmd.program.display().to_string();
    for arg in &cmd.args {
        line.push(' ');
        line.push_str(&arg.to_string_lossy());
    }
    line
}

/// Appends `=== <text>\n` to the log; a failure is logged, not fatal.
fn log_line(log: &mut File, text: &str) {
    if let Err(e) = log.write_all(format!("=== {text}\n").as_bytes()) {
        tracing::warn!("cannot write to the hook log: {e}");
    }
}

/// The tail of what was appended to `path` after `start`: see [`tail_text`].
fn read_tail(path: &Path, start: u64, max_bytes: usize) -> String {
    let read = || -> std::io::Result<(Vec<u8>, bool)> {
        let mut file = File::open(path)?;
        let end = file.metadata()?.len();
        let from = start.max(end.saturating_sub(max_bytes as u64));
        file.seek(SeekFrom::Start(from))?;
        let mut bytes = Vec::with_capacity(max_bytes.min(1 << 20));
        // A log truncated since `start` gives an empty tail, not an underflow.
        file.take(end.saturating_sub(from)).read_to_end(&mut bytes)?;
        Ok((bytes, from > start))
    };
    match read() {
        Ok((bytes, cut)) => tail_text(&bytes, max_bytes, cut),
        Err(e) => format!("(cannot read the hook log {}: {e})", path.display()),
    }
}

/// The last `max_bytes` bytes of `bytes` as lossy UTF-8, at most `max_bytes` long. If `cut`
/// (the bytes start inside the output), a partial character at the start is skipped rather
/// than shown as U+FFFD. Invalid bytes become U+FFFD (3 bytes each), so the text is then
/// trimmed at the front to stay within `max_bytes`.
fn tail_text(bytes: &[u8], max_bytes: usize, cut: bool) -> String {
    let mut tail = &bytes[bytes.len().saturating_sub(max_bytes)..];
    if cut || tail.len() < bytes.len() {
        let partial = tail.iter().take(3).take_while(|b| **b & 0xC0 == 0x80).count();
        tail = &tail[partial..];
    }
    let text = String::from_utf8_lossy(tail);
    if text.len() <= max_bytes {
        return text.into_owned();
    }
    let mut start = text.len() - max_bytes;
    while !text.is_char_boundary(start) {
        start += 1;
    }
    text[start..].to_owned()
}

/// The current time as `YYYY-MM-DDTHH:MM:SS.mmmZ`.
fn now_utc() -> String {
    let since_epoch = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    let secs = since_epoch.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Howard Hinnant's civil_from_days, for days since 1970-01-01 (non-negative here).
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        since_epoch.subsec_millis()
    )
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use std::os::unix::process::CommandExt;

    use nix::sys::signal::kill;

    use super::*;

    /// Hang guard for one `run`: generous, never a speed claim.
    const HANG_GUARD: Duration = Duration::from_secs(30);

    fn quick_limits() -> ExecLimits {
        ExecLimits {
            process_timeout: Duration::from_secs(20),
            termination_timeout: Duration::from_secs(2),
            max_retry: 3,
            process_wait_interval: Duration::from_millis(50),
            back_off_factor: 2,
            max_sleep_interval: Duration::from_millis(200),
            heartbeat_interval: Duration::from_millis(100),
            max_tail_bytes: DEFAULT_MAX_TAIL_BYTES,
        }
    }

    /// A tempdir with `hook` (the script, mode 0755) and `deploy.log`; the hook runs in the dir.
    fn hook(body: &str) -> (tempfile::TempDir, HookCommand) {
        let dir = tempfile::tempdir().unwrap();
        let program = dir.path().join("hook");
        std::fs::write(&program, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&program, std::fs::Permissions::from_mode(0o755)).unwrap();
        let cmd = HookCommand {
            program,
            args: Vec::new(),
            cwd: dir.path().to_path_buf(),
            env: BTreeMap::new(),
            log_file: dir.path().join("deploy.log"),
            label: "RESTARTING".to_string(),
            pgid_file: None,
        };
        (dir, cmd)
    }

    /// Records every progress it is given; answers Abort on call number `abort_on`.
    #[derive(Default)]
    struct Recorder {
        seen: Vec<(ExecStatus, u32)>,
        abort_on: Option<usize>,
    }

    impl Heartbeat for Recorder {
        fn beat(&mut self, progress: &ExecReport) -> impl Future<Output = Verdict> + Send {
            self.seen.push((progress.status, progress.retry_times));
            let abort = self.abort_on == Some(self.seen.len());
            std::future::ready(if abort { Verdict::Abort } else { Verdict::Continue })
        }
    }

    async fn run_guarded(
        cmd: &HookCommand,
        limits: &ExecLimits,
        heartbeat: &mut impl Heartbeat,
    ) -> ExecReport {
        tokio::time::timeout(HANG_GUARD, run(cmd, limits, heartbeat))
            .await
            .expect("the executor returned within the hang guard")
    }

    fn log_of(cmd: &HookCommand) -> String {
        String::from_utf8_lossy(&std::fs::read(&cmd.log_file).unwrap()).into_owned()
    }

    /// Waits (up to 10 s) for a pid file the script writes.
    async fn read_pid(path: &Path) -> i32 {
        for _ in 0..500 {
            let text = std::fs::read_to_string(path).unwrap_or_default();
            // The shell may not have finished the line yet: "12" of "1234\n" is not complete.
            if let Some(Ok(pid)) = text.strip_suffix('\n').map(str::parse) {
                return pid;
            }
            sleep(Duration::from_millis(20)).await;
        }
        panic!("{} was never written", path.display());
    }

    /// Whether `pid` is running. A zombie is not: once its parent script is gone it belongs to
    /// init, which (in some containers) reaps only every few seconds.
    fn running(pid: i32) -> bool {
        if kill(Pid::from_raw(pid), None) == Err(Errno::ESRCH) {
            return false;
        }
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let state = stat.rfind(')').and_then(|i| stat[i + 1..].split_whitespace().next());
        !matches!(state, None | Some("Z" | "X"))
    }

    /// Polls up to 5 s for `pid` to stop running.
    async fn gone(pid: i32) -> bool {
        for _ in 0..250 {
            if !running(pid) {
                return true;
            }
            sleep(Duration::from_millis(20)).await;
        }
        false
    }

    #[tokio::test]
    async fn success_reports_output_and_logs_a_header() {
        let (_dir, cmd) = hook("echo hello-from-hook");
        let report = run_guarded(&cmd, &quick_limits(), &mut NoHeartbeat).await;
        assert_eq!(
            report,
            ExecReport {
                status: ExecStatus::Succeeded,
                error_code: 0,
                output: Some("hello-from-hook\n".to_string()),
                retry_times: 0,
            }
        );
        assert_eq!(report.status.agent_status(), AgentStatus::Succeeded);
        let log = log_of(&cmd);
        assert!(log.contains("hello-from-hook\n"), "{log}");
        assert!(log.contains("RESTARTING attempt 1/3"), "{log}");
        assert!(log.contains(&cmd.program.display().to_string()), "{log}");
    }

    #[tokio::test]
    async fn failures_are_retried_until_success() {
        let (dir, cmd) = hook(
            "n=$(cat count 2>/dev/null || echo 0); n=$((n+1)); echo $n > count\n\
             [ \"$n\" -ge 3 ] || { echo \"attempt $n fails\"; exit 1; }\n\
             echo \"attempt $n works\"",
        );
        let report = run_guarded(&cmd, &quick_limits(), &mut NoHeartbeat).await;
        assert_eq!(report.status, ExecStatus::Succeeded);
        assert_eq!(report.error_code, 0);
        assert_eq!(report.retry_times, 2);
        // The tail is this attempt's output only.
        assert_eq!(report.output.as_deref(), Some("attempt 3 works\n"));
        assert_eq!(std::fs::read_to_string(dir.path().join("count")).unwrap(), "3\n");
        let log = log_of(&cmd);
        assert!(log.contains("attempt 1 fails"), "{log}");
        assert!(log.contains("RESTARTING attempt 3/3"), "{log}");
    }

    #[tokio::test]
    async fn last_failure_is_too_many_retry_with_the_exit_code() {
        let (dir, cmd) = hook("echo run >> runs; echo 'broken config' >&2; exit 3");
        let report = run_guarded(&cmd, &quick_limits(), &mut NoHeartbeat).await;
        assert_eq!(report.status, ExecStatus::TooManyRetry);
        assert_eq!(report.status.agent_status(), AgentStatus::TooManyRetry);
        assert_eq!(report.error_code, 3);
        assert_eq!(report.retry_times, 3);
        assert_eq!(report.output.as_deref(), Some("broken config\n"));
        assert_eq!(std::fs::read_to_string(dir.path().join("runs")).unwrap(), "run\n".repeat(3));
    }

    #[tokio::test]
    async fn a_signal_death_is_128_plus_the_signal() {
        let (_dir, cmd) = hook("kill -9 $$");
        let limits = ExecLimits { max_retry: 1, ..quick_limits() };
        let report = run_guarded(&cmd, &limits, &mut NoHeartbeat).await;
        assert_eq!(report.status, ExecStatus::TooManyRetry);
        assert_eq!(report.error_code, 128 + 9);
        assert_eq!(report.retry_times, 1);
    }

    #[tokio::test]
    async fn timeout_is_not_retried_and_kills_the_group() {
        let (dir, cmd) = hook(
            "echo run >> runs; sleep 1000 & echo $! > sleeper.pid; echo $$ > script.pid; sleep 1000",
        );
        let limits = ExecLimits { process_timeout: Duration::from_millis(300), ..quick_limits() };
        let report = run_guarded(&cmd, &limits, &mut NoHeartbeat).await;
        assert_eq!(report.status, ExecStatus::ScriptTimeout);
        assert_eq!(report.status.agent_status(), AgentStatus::ScriptTimeout);
        assert_eq!(report.error_code, 1);
        assert_eq!(report.retry_times, 0);
        assert_eq!(std::fs::read_to_string(dir.path().join("runs")).unwrap(), "run\n");
        let sleeper = read_pid(&dir.path().join("sleeper.pid")).await;
        let script = read_pid(&dir.path().join("script.pid")).await;
        assert!(gone(script).await, "the script {script} survived its timeout");
        assert!(gone(sleeper).await, "the background sleeper {sleeper} survived the timeout");
        assert!(log_of(&cmd).contains("timed out after 300ms"));
    }

    #[tokio::test]
    async fn timeout_sends_sigterm_first() {
        let (dir, cmd) = hook(
            "trap 'echo terminated > term-marker; exit 0' TERM\n\
             echo started\n\
             sleep 1000 &\n\
             wait",
        );
        let limits = ExecLimits {
            process_timeout: Duration::from_millis(300),
            termination_timeout: Duration::from_secs(10),
            ..quick_limits()
        };
        let report = run_guarded(&cmd, &limits, &mut NoHeartbeat).await;
        assert_eq!(report.status, ExecStatus::ScriptTimeout);
        assert_eq!(report.output.as_deref(), Some("started\n"));
        let marker = std::fs::read_to_string(dir.path().join("term-marker"));
        assert_eq!(
            marker.ok().as_deref(),
            Some("terminated\n"),
            "the trap for SIGTERM did not run"
        );
        let log = log_of(&cmd);
        assert!(log.contains("timed out after 300ms; stopped by SIGTERM"), "{log}");
        assert!(!log.contains("SIGKILL"), "{log}");
    }

    #[tokio::test]
    async fn a_group_ignoring_sigterm_is_killed_after_the_grace_period() {
        let (dir, cmd) = hook(
            "trap '' TERM\n\
             echo $$ > script.pid\n\
             sleep 1000 & echo $! > sleeper.pid\n\
             wait",
        );
        let limits = ExecLimits {
            process_timeout: Duration::from_millis(300),
            termination_timeout: Duration::from_millis(300),
            ..quick_limits()
        };
        let report = run_guarded(&cmd, &limits, &mut NoHeartbeat).await;
        assert_eq!((report.status, report.error_code), (ExecStatus::ScriptTimeout, 1));
        let log = log_of(&cmd);
        assert!(log.contains("still running 300ms after SIGTERM; stopped by SIGKILL"), "{log}");
        let sleeper = read_pid(&dir.path().join("sleeper.pid")).await;
        let script = read_pid(&dir.path().join("script.pid")).await;
        assert!(gone(script).await, "the script {script} survived SIGKILL");
        assert!(gone(sleeper).await, "the sleeper {sleeper} survived SIGKILL");
    }

    /// A heartbeat that never answers.
    struct Stuck;

    impl Heartbeat for Stuck {
        fn beat(&mut self, _progress: &ExecReport) -> impl Future<Output = Verdict> + Send {
            std::future::pending()
        }
    }

    #[tokio::test]
    async fn a_stuck_heartbeat_does_not_delay_the_timeout() {
        let (dir, cmd) = hook("echo $$ > script.pid; sleep 1000");
        let limits = ExecLimits { process_timeout: Duration::from_millis(500), ..quick_limits() };
        let report = run_guarded(&cmd, &limits, &mut Stuck).await;
        assert_eq!(report.status, ExecStatus::ScriptTimeout);
        let script = read_pid(&dir.path().join("script.pid")).await;
        assert!(gone(script).await, "the script {script} survived its timeout");
    }

    #[tokio::test]
    async fn abort_terminates_the_group() {
        let (dir, cmd) =
            hook("echo $$ > script.pid; sleep 1000 & echo $! > sleeper.pid; echo waiting; wait");
        let mut heartbeat = Recorder { abort_on: Some(2), ..Recorder::default() };
        let report = run_guarded(&cmd, &quick_limits(), &mut heartbeat).await;
        assert_eq!(report.status, ExecStatus::Aborted);
        assert_eq!(report.status.agent_status(), AgentStatus::Unknown);
        assert_eq!(report.retry_times, 0);
        assert_eq!(heartbeat.seen, vec![(ExecStatus::Running, 0); 2]);
        assert_eq!(report.output.as_deref(), Some("waiting\n"));
        let sleeper = read_pid(&dir.path().join("sleeper.pid")).await;
        let script = read_pid(&dir.path().join("script.pid")).await;
        assert!(gone(script).await, "the script {script} survived the abort");
        assert!(gone(sleeper).await, "the background sleeper {sleeper} survived the abort");
    }

    #[tokio::test]
    async fn heartbeats_tick_while_the_script_runs() {
        let (_dir, cmd) = hook("sleep 1");
        let mut heartbeat = Recorder::default();
        let report = run_guarded(&cmd, &quick_limits(), &mut heartbeat).await;
        assert_eq!(report.status, ExecStatus::Succeeded);
        assert!(
            heartbeat.seen.len() >= 3,
            "only {} heartbeats in 1 s at 100 ms",
            heartbeat.seen.len()
        );
        assert!(heartbeat.seen.iter().all(|seen| *seen == (ExecStatus::Running, 0)));
    }

    #[tokio::test]
    async fn heartbeats_during_backoff_report_the_failure() {
        let (_dir, cmd) = hook("exit 4");
        let limits = ExecLimits {
            max_retry: 2,
            process_wait_interval: Duration::from_millis(600),
            max_sleep_interval: Duration::from_millis(600),
            ..quick_limits()
        };
        let mut heartbeat = Recorder::default();
        let report = run_guarded(&cmd, &limits, &mut heartbeat).await;
        assert_eq!(report.status, ExecStatus::TooManyRetry);
        assert_eq!((report.error_code, report.retry_times), (4, 2));
        assert!(
            heartbeat.seen.contains(&(ExecStatus::ScriptFailed, 1)),
            "heartbeats during the backoff: {:?}",
            heartbeat.seen
        );
        assert_eq!(ExecStatus::ScriptFailed.agent_status(), AgentStatus::ScriptFailed);
    }

    #[tokio::test]
    async fn abort_during_backoff_stops_before_the_next_attempt() {
        let (dir, cmd) = hook("echo run >> runs; exit 5");
        let limits = ExecLimits {
            process_wait_interval: Duration::from_secs(20),
            max_sleep_interval: Duration::from_secs(20),
            ..quick_limits()
        };
        let mut heartbeat = Recorder { abort_on: Some(1), ..Recorder::default() };
        let report = run_guarded(&cmd, &limits, &mut heartbeat).await;
        assert_eq!(report.status, ExecStatus::Aborted);
        assert_eq!((report.error_code, report.retry_times), (5, 1));
        assert_eq!(heartbeat.seen, vec![(ExecStatus::ScriptFailed, 1)]);
        assert_eq!(std::fs::read_to_string(dir.path().join("runs")).unwrap(), "run\n");
    }

    #[tokio::test]
    async fn tail_is_the_last_bytes_with_the_final_newline() {
        let (_dir, cmd) = hook("head -c 102400 /dev/zero | tr '\\000' x; printf 'THE-END\\n'");
        let limits = ExecLimits { max_tail_bytes: 64, ..quick_limits() };
        let report = run_guarded(&cmd, &limits, &mut NoHeartbeat).await;
        assert_eq!(report.status, ExecStatus::Succeeded);
        let output = report.output.unwrap();
        assert_eq!(output, format!("{}THE-END\n", "x".repeat(64 - 8)));
        assert!(log_of(&cmd).len() > 102400);
    }

    #[tokio::test]
    async fn tail_keeps_non_ascii_and_marks_invalid_bytes() {
        let (_dir, cmd) = hook("printf 'h\\303\\251llo\\n'; printf 'bad \\377 byte\\n' >&2");
        let report = run_guarded(&cmd, &quick_limits(), &mut NoHeartbeat).await;
        assert_eq!(report.output.as_deref(), Some("héllo\nbad \u{FFFD} byte\n"));
    }

    #[test]
    fn tail_text_cuts_at_character_boundaries_within_the_limit() {
        let e_acute = "é".as_bytes(); // C3 A9
        let bytes = [b"a".as_slice(), e_acute, b"b"].concat();
        assert_eq!(tail_text(&bytes, 3, false), "éb");
        // The cut falls inside "é": its second byte is skipped, not shown as U+FFFD.
        assert_eq!(tail_text(&bytes, 2, false), "b");
        // Bytes that start inside the attempt's output are invalid there: U+FFFD.
        assert_eq!(tail_text(&e_acute[1..], 8, false), "\u{FFFD}");
        // 10 invalid bytes decode to 30 bytes; the text is trimmed to whole characters.
        let text = tail_text(&[0xFF; 10], 10, false);
        assert_eq!(text, "\u{FFFD}".repeat(3));
        assert_eq!(tail_text(b"", 10, false), "");
    }

    #[tokio::test]
    async fn cwd_and_env_are_the_childs_only() {
        let (dir, mut cmd) = hook("pwd; echo \"FOO=$TT_EXECUTOR_TEST_FOO\"; echo \"PATH=$PATH\"");
        let work = dir.path().join("work");
        std::fs::create_dir(&work).unwrap();
        cmd.cwd = work.clone();
        cmd.env.insert("TT_EXECUTOR_TEST_FOO".to_string(), "bar baz".to_string());
        let our_cwd = std::env::current_dir().unwrap();
        let report = run_guarded(&cmd, &quick_limits(), &mut NoHeartbeat).await;
        let output = report.output.unwrap();
        let lines: Vec<&str> = output.lines().collect();
        assert_eq!(Path::new(lines[0]).canonicalize().unwrap(), work.canonicalize().unwrap());
        assert_eq!(lines[1], "FOO=bar baz");
        // The agent's own environment is inherited.
        assert_eq!(lines[2], format!("PATH={}", std::env::var("PATH").unwrap()));
        assert_eq!(std::env::current_dir().unwrap(), our_cwd);
        assert!(std::env::var_os("TT_EXECUTOR_TEST_FOO").is_none());
    }

    #[tokio::test]
    async fn a_script_that_cannot_run_fails_each_attempt_with_code_1() {
        let (dir, mut cmd) = hook("echo never");
        std::fs::set_permissions(&cmd.program, std::fs::Permissions::from_mode(0o644)).unwrap();
        let limits = ExecLimits { max_retry: 2, ..quick_limits() };
        let report = run_guarded(&cmd, &limits, &mut NoHeartbeat).await;
        assert_eq!(report.status, ExecStatus::TooManyRetry);
        assert_eq!((report.error_code, report.retry_times), (1, 2));
        let output = report.output.unwrap();
        assert!(output.contains(&cmd.program.display().to_string()), "{output}");
        assert!(output.contains("ermission denied"), "{output}");
        assert!(log_of(&cmd).contains(&output), "the spawn error is in the log too");

        cmd.program = dir.path().join("missing");
        let report = run_guarded(&cmd, &limits, &mut NoHeartbeat).await;
        assert_eq!(report.status, ExecStatus::TooManyRetry);
        assert_eq!((report.error_code, report.retry_times), (1, 2));
        let output = report.output.unwrap();
        assert!(output.contains(&cmd.program.display().to_string()), "{output}");
    }

    #[tokio::test]
    async fn an_unwritable_log_is_an_agent_failure() {
        let (dir, mut cmd) = hook("echo run > runs");
        cmd.log_file = dir.path().join("no-such-dir").join("deploy.log");
        let report = run_guarded(&cmd, &quick_limits(), &mut NoHeartbeat).await;
        assert_eq!(report.status, ExecStatus::AgentFailed);
        assert_eq!(report.status.agent_status(), AgentStatus::AgentFailed);
        assert_eq!((report.error_code, report.retry_times), (1, 0));
        assert!(report.output.unwrap().contains("no-such-dir"));
        assert!(!dir.path().join("runs").exists(), "nothing runs without a log");
    }

    #[tokio::test]
    async fn success_leaves_background_children_running() {
        // The daemon keeps the log open: the attempt must still end when the script exits.
        let (dir, cmd) = hook("sleep 60 & echo $! > daemon.pid; echo started");
        let report = run_guarded(&cmd, &quick_limits(), &mut NoHeartbeat).await;
        assert_eq!(report.status, ExecStatus::Succeeded);
        assert_eq!(report.output.as_deref(), Some("started\n"));
        let daemon = read_pid(&dir.path().join("daemon.pid")).await;
        let alive = running(daemon);
        let _ = kill(Pid::from_raw(daemon), Signal::SIGKILL);
        assert!(alive, "the background child {daemon} was killed after a successful exit");
    }

    #[tokio::test]
    async fn dropping_the_run_kills_the_attempt() {
        let (dir, cmd) = hook("echo $$ > script.pid; sleep 1000 & echo $! > sleeper.pid; wait");
        let limits = quick_limits();
        let mut heartbeat = NoHeartbeat;
        let running_run = run(&cmd, &limits, &mut heartbeat);
        let pids = async {
            (
                read_pid(&dir.path().join("script.pid")).await,
                read_pid(&dir.path().join("sleeper.pid")).await,
            )
        };
        let (script, sleeper) = tokio::select! {
            report = running_run => panic!("the script ended early: {report:?}"),
            pids = pids => pids,
        };
        assert!(gone(script).await, "the script {script} survived the dropped run");
        assert!(gone(sleeper).await, "the sleeper {sleeper} survived the dropped run");
    }

    #[tokio::test]
    async fn a_script_without_shebang_is_not_run_by_a_shell() {
        let (dir, cmd) = hook("unused");
        std::fs::write(&cmd.program, "echo ran > ran\n").unwrap();
        let limits = ExecLimits { max_retry: 1, ..quick_limits() };
        let report = run_guarded(&cmd, &limits, &mut NoHeartbeat).await;
        assert_eq!(report.status, ExecStatus::TooManyRetry);
        assert_eq!((report.error_code, report.retry_times), (1, 1));
        let output = report.output.unwrap();
        assert!(output.contains("Exec format error"), "{output}");
        assert!(!dir.path().join("ran").exists());
    }

    #[test]
    fn run_is_send_for_a_send_heartbeat() {
        fn assert_send<T: Send>(_: &T) {}
        let (_dir, cmd) = hook("true");
        let (limits, mut heartbeat) = (quick_limits(), Recorder::default());
        let future = run(&cmd, &limits, &mut heartbeat);
        assert_send(&future);
    }

    #[test]
    fn timestamps_are_utc_iso_8601() {
        let now = now_utc();
        assert_eq!(now.len(), "2024-01-01T00:00:00.000Z".len(), "{now}");
        assert!(now.starts_with("20") && now.ends_with('Z') && now.as_bytes()[10] == b'T', "{now}");
    }

    #[test]
    fn defaults_are_teletraans() {
        let d = ExecLimits::default();
        assert_eq!(d.process_timeout, Duration::from_secs(1800));
        assert_eq!(d.termination_timeout, Duration::from_secs(30));
        assert_eq!((d.max_retry, d.back_off_factor, d.max_tail_bytes), (3, 2, 10240));
        assert_eq!(d.process_wait_interval, Duration::from_secs(2));
        assert_eq!(d.max_sleep_interval, Duration::from_secs(60));
        assert_eq!(d.heartbeat_interval, Duration::from_secs(60));
    }

    #[tokio::test]
    async fn a_running_attempt_records_its_group_and_a_restart_stops_the_orphan() {
        let (dir, mut cmd) = hook("cat \"$REC\" > \"$OUT\"");
        let rec = dir.path().join("hook.pgid");
        cmd.pgid_file = Some(rec.clone());
        cmd.env.insert("REC".into(), rec.display().to_string());
        cmd.env.insert("OUT".into(), dir.path().join("seen").display().to_string());
        let r = run(&cmd, &quick_limits(), &mut NoHeartbeat).await;
        assert_eq!(r.status, ExecStatus::Succeeded, "{r:?}");
        let seen = std::fs::read_to_string(dir.path().join("seen")).unwrap();
        assert_eq!(seen.split_whitespace().count(), 2, "boot id and group: {seen:?}");
        assert!(!rec.exists(), "the record is removed when the attempt ends");

        // An orphan from a "crashed agent": its own group, recorded with this boot's id.
        let orphan =
            std::process::Command::new("sleep").arg("30").process_group(0).spawn().unwrap();
        let pgid = orphan.id() as i32;
        std::fs::write(&rec, format!("{} {pgid}\n", boot_id().unwrap())).unwrap();
        let stopped = stop_orphaned_group(&rec, Duration::from_secs(5)).await;
        assert_eq!(stopped, Some(pgid));
        assert!(!group_alive(Pid::from_raw(pgid)), "the orphan is gone");
        assert!(!rec.exists());
        let mut orphan = orphan;
        let _ = orphan.wait();

        // A record from another boot is ignored: that id may be someone else's now.
        let other = std::process::Command::new("sleep").arg("30").process_group(0).spawn().unwrap();
        let pgid = other.id() as i32;
        std::fs::write(&rec, format!("not-this-boot {pgid}\n")).unwrap();
        assert_eq!(stop_orphaned_group(&rec, Duration::from_secs(1)).await, None);
        assert!(group_alive(Pid::from_raw(pgid)), "left alone");
        let _ = killpg(Pid::from_raw(pgid), Signal::SIGKILL);
        let mut other = other;
        let _ = other.wait();
    }
}
