//! What the chaos integration tests share: one shipped scenario run with its file's seed.

use chaos_tests::checkers::Status;
use chaos_tests::report::Report;
use chaos_tests::run::{Recorded, RunOptions, run};
use chaos_tests::scenario;

/// Runs the shipped scenario `name` and asserts that every invariant held and that a deploy ran
/// in the window.
pub async fn run_scenario(name: &str) -> (Report, Recorded) {
    let s = scenario::load(&scenario::default_dir(), name).unwrap();
    let work = tempfile::tempdir().unwrap();
    let opts = RunOptions {
        seed: None,
        duration_s: None,
        work_dir: work.path().to_path_buf(),
        coordinator_bin: ops::devcluster::find_coordinator_bin().unwrap(),
        agent_bin: ops::devfleet::find_agent_bin().unwrap(),
    };
    let (report, recorded) = run(&s, &opts).await.unwrap_or_else(|e| panic!("{name}: {e}"));
    let summary = report.summary();
    eprintln!("{summary}");
    for v in &report.verdicts {
        assert_eq!(v.status, Status::Pass, "{name}: {} failed\n{summary}", v.invariant);
    }
    assert_eq!(report.violations, 0);
    assert!(summary.contains(&format!("repeat: chaos run {name} --seed {}", s.seed)));
    assert!(!report.deploys.is_empty(), "{name}: no deploy ran in the window\n{summary}");
    (report, recorded)
}
