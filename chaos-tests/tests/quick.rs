//! The quick subset of the chaos suite, with the scenarios' fixed seeds: real clusters and
//! agents, real faults, and zero violations of any invariant. Scenarios run one after another
//! (each is a cluster and a fleet on a 2-core machine); `chaos run --all` runs the catalogue.

use std::collections::BTreeSet;

use chaos_tests::checkers::{self, Status};
use chaos_tests::lab::LinkClass;
use chaos_tests::report::SimHit;

mod common;
use common::run_scenario;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_quick_subset_holds_every_invariant() {
    let (r, recorded) = run_scenario("leader-kill-mid-deploy").await;
    assert!(r.recovery.iter().all(|x| x.leader_ms.is_some() && x.writes_ms.is_some()), "{r:?}");
    // The journals really show the rollout using its parallelism: one host at a time
    // throughout and the checker objects (so a slot too many would not go unseen).
    // The operator paused and reset hosts and changed maxParallel: spans are judged as the run
    // judged them (a user-paused host holds no slot, a reset host starts a new span, a start
    // is judged against the limit in effect).
    let acts = checkers::host_actions(&recorded.ops);
    let hooks = checkers::hook_intervals(&recorded.journal, r.timing.run_end_us);
    let spans = checkers::without_paused(&checkers::deploy_spans_with(&hooks, &acts), &acts);
    let exempt: BTreeSet<String> = [r.first_deploy.clone()].into();
    let limits = checkers::Limits::from_history(2, &recorded.ops);
    assert!(checkers::parallelism_over(&spans, &limits, &exempt).passed());
    assert_eq!(checkers::parallelism(&spans, 1, &exempt).status, Status::Fail);
    // maxParallel was set to another value than the scenario's 2, and acknowledged.
    assert!(
        limits.writes.iter().any(|w| w.value != 2 && w.complete_us != u64::MAX),
        "no acknowledged maxParallel change: {:?}",
        limits.writes
    );
    // The operator's actions happened, through the fault, and were acknowledged.
    let ok = &r.operations.ok_by_kind;
    for kind in [
        "pause-stage",
        "resume-stage",
        "host-paused_by_user",
        "host-normal",
        "host-reset",
        "config",
        "max-parallel",
    ] {
        assert!(ok.get(kind).is_some_and(|&n| n > 0), "no acknowledged {kind}: {ok:?}");
    }
    let deploy_actions = ok.get("rollback").unwrap_or(&0) + ok.get("promote").unwrap_or(&0);
    assert!(deploy_actions > 0, "neither a rollback nor a promotion: {ok:?}");

    let (r, _) = run_scenario("leader-isolated").await;
    assert!(r.links[&LinkClass::Raft].dropped_blocked_port > 0, "the leader's own dials were cut");
    // The followers forward writes and ask for read indexes over HTTP, to the leader they know
    // until they elect another: those requests were held, not carried around the cut.
    let http = &r.http_links;
    assert!(http.held_blackhole > 0 || http.held_connections > 0, "{http:?}");
    assert!(r.recovery.iter().all(|x| x.leader_ms.is_some()), "a new leader was elected");

    let (r, _) = run_scenario("agents-partitioned").await;
    assert!(r.links[&LinkClass::Agent].dropped() > 0);
    assert!(!r.unreachable_hosts.is_empty(), "the cut hosts' leases expired: {r:?}");

    // A storage fault really exercised: the follower's failpoint fired (ENOSPC on its log).
    let (r, _) = run_scenario("disk-full").await;
    assert!(r.faults.iter().all(|f| f.failpoint_fired > Some(0)), "{:?}", r.faults);

    // Scale: 200 simulated hosts in their own stage through a leader kill; every one of them
    // settled on the simulated stage's last deploy (run_scenario: zero violations).
    let (r, recorded) = run_scenario("scale-leader-kill").await;
    assert!(r.faults.iter().any(|f| f.hits_leader), "the leader was killed: {:?}", r.faults);
    assert!(r.recovery.iter().all(|x| x.leader_ms.is_some()), "a new leader was elected");
    let sim = |name: &str| r.verdicts.iter().find(|v| v.invariant == name).cloned();
    let converged = sim("convergence-sim").expect("the simulated stage is judged");
    assert_eq!(converged.checked, 200, "{converged:?}");
    assert!(sim("parallelism-sim").is_some_and(|v| v.checked > 0), "{:?}", r.verdicts);
    assert!(r.sim_deploys > 0 && !recorded.sim_intervals.is_empty());

    // The simulated-agent process killed and paused mid-deploy, restarted within its hosts'
    // long-poll hold: its dead incarnation's held pings must not rewrite the new one's rows
    // (they did, and the stage over-admitted; run_scenario: zero violations).
    let (r, _) = run_scenario("scale-sim-kill").await;
    let hits: Vec<_> = r.faults.iter().filter_map(|f| f.sim_hit).collect();
    assert!(
        hits.len() >= 2
            && hits.iter().all(
                |h| matches!(h, SimHit::Process { hosts_mid_deploy } if *hosts_mid_deploy > 0)
            ),
        "both faults hit the process mid-deploy: {:?}",
        r.faults
    );

    let (r, _) = run_scenario("agent-kill-every-step").await;
    for step in ["PRE_DOWNLOAD", "POST_DOWNLOAD", "PRE_RESTART", "RESTARTING", "POST_RESTART"] {
        assert!(
            r.agent_kills_at_steps.iter().any(|k| k.ends_with(&format!(":{step}"))),
            "never killed during {step}: {:?}",
            r.agent_kills_at_steps
        );
    }
}
