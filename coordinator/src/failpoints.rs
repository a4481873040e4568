//! Storage failpoints for the chaos suite, compiled in with the `failpoints` feature: named
//! places in the storage code that, switched on for one process at start, fail the way a sick
//! disk does or kill the process in the middle of a write.
//!
//! `TT_FAILPOINTS="log-write=enospc@20,snapshot-build=abort"`: a comma-separated list of
//! `point=action[@after]`; the point passes `after` times (default 0), then acts every time.
//!
//! Actions: `eio` (an I/O error, as from a failed fsync), `enospc` (the disk is full), `abort`
//! (the process dies on the spot, as under `kill -9` at that line).
//!
//! Points:
//! - `log-write`: the Raft log's synced batch write. `abort` first writes the batch *without*
//!   syncing it: a crash between write and fsync, before the entries were acknowledged.
//! - `snapshot-build`: half-way through writing a snapshot file.
//! - `snapshot-install`: after a received snapshot is verified, before it replaces the state.
//!
//! Without the feature the points compile to nothing, and a set `TT_FAILPOINTS` stops the node
//! at start with an error saying so (a chaos run must not believe it injected a fault).

use std::collections::BTreeMap;
use std::io;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

/// The environment variable that switches failpoints on.
pub const ENV: &str = "TT_FAILPOINTS";
/// The Raft log's synced batch write.
pub const LOG_WRITE: &str = "log-write";
/// Half-way through writing a snapshot file.
pub const SNAPSHOT_BUILD: &str = "snapshot-build";
/// Before a verified, received snapshot replaces the state.
pub const SNAPSHOT_INSTALL: &str = "snapshot-install";
/// What the node logs (at ERROR) each time a point fires; the chaos suite counts these.
pub const FIRED_LOG_MESSAGE: &str = "failpoint fires";
/// Every point there is.
pub const POINTS: [&str; 3] = [LOG_WRITE, SNAPSHOT_BUILD, SNAPSHOT_INSTALL];

/// What a point does when it fires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Eio,
    Enospc,
    Abort,
}

impl Action {
    /// The error a failing write returns (`Abort` never returns).
    pub fn io_error(self, point: &str) -> io::Error {
        match self {
            Action::Eio => io::Error::other(format!("injected I/O error at failpoint {point}")),
            Action::Enospc => io::Error::new(
                io::ErrorKind::StorageFull,
                format!("injected ENOSPC (disk full) at failpoint {point}"),
            ),
            Action::Abort => unreachable!("abort does not return an error"),
        }
    }
}

/// A `TT_FAILPOINTS` value that cannot be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FailpointError {
    #[error("{ENV}: {0:?} is not point=action[@after]")]
    Syntax(String),
    #[error("{ENV}: unknown failpoint {0:?} (known: log-write, snapshot-build, snapshot-install)")]
    UnknownPoint(String),
    #[error("{ENV}: unknown action {0:?} (known: eio, enospc, abort)")]
    UnknownAction(String),
    #[error(
        "{ENV} is set but this coordinator was built without the `failpoints` feature; build it with `cargo build -p coordinator --features failpoints`"
    )]
    NotCompiled,
}

/// One armed point.
#[derive(Debug)]
struct Armed {
    action: Action,
    after: u64,
    passes: AtomicU64,
}

static ARMED: OnceLock<BTreeMap<&'static str, Armed>> = OnceLock::new();

/// Parses a `TT_FAILPOINTS` value: point -> (action, passes before it fires).
pub fn parse(spec: &str) -> Result<BTreeMap<&'static str, (Action, u64)>, FailpointError> {
    let mut out = BTreeMap::new();
    for item in spec.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let (point, rest) =
            item.split_once('=').ok_or_else(|| FailpointError::Syntax(item.into()))?;
        let point = POINTS
            .into_iter()
            .find(|p| *p == point.trim())
            .ok_or_else(|| FailpointError::UnknownPoint(point.trim().into()))?;
        let (action, after) = match rest.split_once('@') {
            Some((a, n)) => (a, n.trim().parse().map_err(|_| FailpointError::Syntax(item.into()))?),
            None => (rest, 0),
        };
        let action = match action.trim() {
            "eio" => Action::Eio,
            "enospc" => Action::Enospc,
            "abort" => Action::Abort,
            other => return Err(FailpointError::UnknownAction(other.into())),
        };
        out.insert(point, (action, after));
    }
    Ok(out)
}

/// Whether `spec` could be armed by this build: parsed, and the feature compiled in (what
/// `coordinator failpoints check` answers, so a harness can refuse early instead of watching a
/// node that never starts).
pub fn check_spec(spec: &str) -> Result<(), FailpointError> {
    parse(spec)?;
    if !cfg!(feature = "failpoints") {
        return Err(FailpointError::NotCompiled);
    }
    Ok(())
}

/// Arms the points `TT_FAILPOINTS` names, once, at start.
pub fn init_from_env() -> Result<(), FailpointError> {
    let Ok(spec) = std::env::var(ENV) else { return Ok(()) };
    if spec.trim().is_empty() {
        return Ok(());
    }
    if !cfg!(feature = "failpoints") {
        return Err(FailpointError::NotCompiled);
    }
    let armed = parse(&spec)?
        .into_iter()
        .map(|(p, (action, after))| (p, Armed { action, after, passes: AtomicU64::new(0) }))
        .collect();
    let _ = ARMED.set(armed);
    tracing::warn!(failpoints = %spec, "storage failpoints armed (chaos testing)");
    Ok(())
}

/// What point `name` does now: `None` (pass) unless it is armed and has passed its count.
#[inline]
pub fn check(name: &'static str) -> Option<Action> {
    if !cfg!(feature = "failpoints") {
        return None;
    }
    let armed = ARMED.get()?.get(name)?;
    let passed = armed.passes.fetch_add(1, Ordering::Relaxed);
    (passed >= armed.after).then(|| {
        tracing::error!(failpoint = name, action = ?armed.action, "{FIRED_LOG_MESSAGE}");
        armed.action
    })
}

/// Fires point `name` where the only effect is an error or death: `Ok` if it passes.
pub fn fail_io(name: &'static str) -> io::Result<()> {
    match check(name) {
        None => Ok(()),
        Some(Action::Abort) => std::process::abort(),
        Some(action) => Err(action.io_error(name)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse_and_bad_ones_say_what_is_wrong() {
        let p = parse("log-write=enospc@20, snapshot-build=abort").unwrap();
        assert_eq!(p[LOG_WRITE], (Action::Enospc, 20));
        assert_eq!(p[SNAPSHOT_BUILD], (Action::Abort, 0));
        assert_eq!(parse("").unwrap().len(), 0);
        assert_eq!(parse("disk=eio"), Err(FailpointError::UnknownPoint("disk".into())));
        assert_eq!(parse("log-write=melt"), Err(FailpointError::UnknownAction("melt".into())));
        assert_eq!(parse("log-write"), Err(FailpointError::Syntax("log-write".into())));
        assert_eq!(parse("log-write=eio@x"), Err(FailpointError::Syntax("log-write=eio@x".into())));
    }

    #[test]
    fn errors_carry_the_kind_a_sick_disk_gives() {
        assert_eq!(Action::Enospc.io_error(LOG_WRITE).kind(), io::ErrorKind::StorageFull);
        assert!(Action::Eio.io_error(LOG_WRITE).to_string().contains("log-write"));
    }
}
