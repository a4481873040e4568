use super::*;
use crate::history::{HostRow, parse_journal};

fn w(key: &str, value: &str, invoke: u64, complete: u64, outcome: Outcome) -> Op {
    Op {
        process: 0,
        node: 1,
        kind: OpKind::Write { key: key.into(), value: value.into() },
        invoke_us: invoke,
        complete_us: complete,
        outcome,
        error: None,
    }
}

fn r(key: &str, value: Option<&str>, invoke: u64, complete: u64) -> Op {
    Op {
        process: 1,
        node: 2,
        kind: OpKind::Read { key: key.into(), value: value.map(str::to_string) },
        invoke_us: invoke,
        complete_us: complete,
        outcome: Outcome::Ok,
        error: None,
    }
}

use Outcome::{Failed, Ok as Acked, Unknown};

/// An operation of `kind` from 0 to 1 µs.
fn op(kind: OpKind, outcome: Outcome) -> Op {
    Op { process: 0, node: 1, kind, invoke_us: 0, complete_us: 1, outcome, error: None }
}

// --- linearizability --------------------------------------------------------------------------

#[test]
fn a_sequential_history_is_linearizable() {
    let h = vec![
        r("k", None, 0, 5),
        w("k", "1", 10, 20, Acked),
        r("k", Some("1"), 30, 40),
        w("k", "2", 50, 60, Acked),
        r("k", Some("2"), 70, 80),
        r("other", None, 0, 100),
    ];
    let v = linearizable(&h);
    assert!(v.passed(), "{v:?}");
    assert_eq!(v.checked, 6);
}

#[test]
fn a_stale_read_is_caught() {
    let h = vec![
        w("k", "1", 0, 10, Acked),
        w("k", "2", 20, 30, Acked),
        // Invoked after "2" was acknowledged: must not see "1".
        r("k", Some("1"), 40, 50),
    ];
    let v = linearizable(&h);
    assert_eq!(v.status, Status::Fail, "{v:?}");
    assert!(v.violations[0].contains("k: not linearizable"), "{v:?}");
}

#[test]
fn reads_concurrent_with_a_write_may_see_either_value_but_not_go_back() {
    let base = vec![w("k", "1", 0, 5, Acked), w("k", "2", 10, 100, Acked)];
    for seen in ["1", "2"] {
        let mut h = base.clone();
        h.push(r("k", Some(seen), 20, 30));
        assert!(linearizable(&h).passed(), "a read during the write may see {seen}");
    }
    // Once a read saw the new value, a later read cannot see the old one.
    let mut h = base.clone();
    h.push(r("k", Some("2"), 20, 30));
    h.push(r("k", Some("1"), 40, 50));
    assert_eq!(linearizable(&h).status, Status::Fail);
}

#[test]
fn unknown_writes_may_or_may_not_happen_and_failed_ones_must_not() {
    // An unknown write, seen later, and another never seen: both fine.
    let h = vec![
        w("k", "1", 0, 10, Acked),
        w("k", "2", 20, 30, Unknown),
        r("k", Some("2"), 1000, 1010),
        w("j", "x", 0, 10, Unknown),
        r("j", None, 100, 110),
    ];
    assert!(linearizable(&h).passed());
    // A failed write whose value is read: it happened after all.
    let h = vec![w("k", "1", 0, 10, Failed), r("k", Some("1"), 20, 30)];
    assert_eq!(linearizable(&h).status, Status::Fail);
    // A value nobody wrote.
    let h = vec![w("k", "1", 0, 10, Acked), r("k", Some("ghost"), 20, 30)];
    assert_eq!(linearizable(&h).status, Status::Fail);
    // An unknown write cannot take effect before it was invoked.
    let h = vec![r("k", Some("late"), 0, 10), w("k", "late", 20, 30, Unknown)];
    assert_eq!(linearizable(&h).status, Status::Fail);
}

#[test]
fn a_lost_acknowledged_write_is_not_linearizable() {
    let h = vec![
        w("k", "1", 0, 10, Acked),
        w("k", "2", 20, 30, Acked),
        r("k", Some("2"), 40, 50),
        // The write of "2" vanished (a leader lost it); a read sees "1" again.
        r("k", Some("1"), 60, 70),
    ];
    assert_eq!(linearizable(&h).status, Status::Fail);
}

#[test]
fn many_concurrent_clients_stay_tractable() {
    // Three clients, 300 overlapping operations on one key, consistent by construction: each
    // write takes effect at its midpoint and reads return the value at theirs.
    let mut h = Vec::new();
    let mut effects: Vec<(u64, String)> = Vec::new();
    for i in 0..100u64 {
        for c in 0..3u64 {
            let start = i * 100 + c * 30;
            let end = start + 80;
            if (i + c) % 2 == 0 {
                let v = format!("{i}-{c}");
                effects.push(((start + end) / 2, v.clone()));
                h.push(w("k", &v, start, end, Acked));
            }
        }
    }
    effects.sort();
    for i in 0..100u64 {
        for c in 0..3u64 {
            let start = i * 100 + c * 30;
            let end = start + 80;
            if (i + c) % 2 == 1 {
                let mid = (start + end) / 2;
                let v = effects.iter().rev().find(|(t, _)| *t <= mid).map(|(_, v)| v.as_str());
                h.push(r("k", v, start, end));
            }
        }
    }
    assert!(linearizable(&h).passed());
}

// --- durability -------------------------------------------------------------------------------

#[test]
fn durability_needs_the_last_acknowledged_write_or_a_later_one() {
    let h = vec![
        w("k", "1", 0, 10, Acked),
        w("k", "2", 20, 30, Acked),
        w("k", "3", 25, 40, Unknown),
        w("k", "4", 50, 60, Failed),
    ];
    let none = BTreeSet::new();
    let check = |v: Option<&str>| {
        durability(&h, &[("k".to_string(), v.map(str::to_string))].into(), &none, &none)
    };
    assert!(check(Some("2")).passed());
    assert!(check(Some("3")).passed(), "an unknown write may land last");
    assert_eq!(check(Some("1")).status, Status::Fail, "the write of 2 was lost");
    assert!(check(Some("1")).violations[0].contains("was lost"));
    assert_eq!(check(None).status, Status::Fail);
    assert_eq!(check(Some("4")).status, Status::Fail, "a failed write cannot be the value");
    assert_eq!(check(Some("9")).status, Status::Fail);
}

#[test]
fn durability_needs_every_acknowledged_creation() {
    let h = vec![
        op(OpKind::CreateBuild { id: Some("b1".into()) }, Acked),
        op(OpKind::CreateDeploy { build: "b1".into(), id: Some("d1".into()) }, Acked),
        op(OpKind::CreateBuild { id: None }, Unknown),
    ];
    let builds: BTreeSet<String> = ["b1".to_string()].into();
    let deploys: BTreeSet<String> = ["d1".to_string()].into();
    assert!(durability(&h, &BTreeMap::new(), &builds, &deploys).passed());
    let v = durability(&h, &BTreeMap::new(), &builds, &BTreeSet::new());
    assert_eq!(v.status, Status::Fail);
    assert!(v.violations[0].contains("deploy d1"), "{v:?}");
}

// --- parallelism ------------------------------------------------------------------------------

fn iv(host: &str, deploy: &str, start: u64, end: u64) -> Interval {
    Interval {
        host: host.into(),
        deploy: deploy.into(),
        start_us: start,
        end_us: end,
        run_start_us: None,
    }
}

#[test]
fn parallelism_counts_distinct_hosts_at_each_instant() {
    let none = BTreeSet::new();
    // Two at a time, handing over exactly at 10 and 20 (touching is not overlapping).
    let ok = vec![
        iv("a", "d", 0, 10),
        iv("b", "d", 0, 10),
        iv("c", "d", 10, 20),
        iv("a", "d", 10, 20),
        // One host's own overlapping intervals count once.
        iv("a", "d", 12, 18),
    ];
    let v = parallelism(&ok, 2, &none);
    assert!(v.passed(), "{v:?}");
    assert!(v.summary.contains("at most 2"));
    let mut bad = ok.clone();
    bad.push(iv("d", "d", 15, 25));
    let v = parallelism(&bad, 2, &none);
    assert_eq!(v.status, Status::Fail);
    assert!(v.violations[0].contains("3 hosts") && v.violations[0].contains("d"), "{v:?}");
    // First deploys are exempt.
    bad.push(iv("e", "first", 0, 30));
    let exempt: BTreeSet<String> = ["first".to_string()].into();
    assert_eq!(parallelism(&bad, 2, &exempt).violation_count, 1);
}

#[test]
fn journals_become_hook_intervals_and_spans() {
    let start_ns = 1_000_000_000_000u128;
    let ns = |us: u64| start_ns + u128::from(us) * 1000;
    let text = format!(
        "PRE_RESTART start D {}\nPRE_RESTART end D {}\nRESTARTING start D {}\nRESTARTING start D {}\nRESTARTING end D {}\ngarbage\nPOST_RESTART start D {}\n",
        ns(0),
        ns(10),
        ns(20),
        ns(30), // re-run after a kill: the first attempt ends here
        ns(40),
        ns(50), // never ends: lasts until the run's end
    );
    let entries = parse_journal("h", &text, start_ns);
    assert_eq!(entries.len(), 6);
    let hooks = hook_intervals(&entries, 100);
    let spans: Vec<(u64, u64)> = hooks.iter().map(|i| (i.start_us, i.end_us)).collect();
    assert_eq!(spans, vec![(0, 10), (20, 30), (30, 40), (50, 100)]);
    let d = deploy_spans(&hooks);
    assert_eq!(d, vec![iv("h", "D", 0, 100)]);
}

#[test]
fn spans_catch_a_host_admitted_while_another_is_between_steps() {
    // Limit 1: b starts while a is between two hooks (still holding its slot).
    let hooks =
        vec![iv("a", "d", 0, 10), iv("a", "d", 30, 40), iv("b", "d", 15, 25), iv("b", "d", 45, 50)];
    let none = BTreeSet::new();
    assert!(parallelism(&hooks, 1, &none).passed(), "hook by hook it looks fine");
    assert_eq!(parallelism(&deploy_spans(&hooks), 1, &none).status, Status::Fail);
}

fn host_op(host: &str, action: &str, invoke: u64, complete: u64, outcome: Outcome) -> Op {
    let kind = OpKind::HostAction { host: host.into(), action: action.into() };
    Op { invoke_us: invoke, complete_us: complete, ..op(kind, outcome) }
}

#[test]
fn a_user_paused_host_holds_no_slot_only_while_paused() {
    // Limit 2; c's hook runs on while c is paused by the user, and b is admitted meanwhile.
    let hooks = vec![iv("a", "d", 0, 100), iv("c", "d", 0, 60), iv("b", "d", 30, 90)];
    let none = BTreeSet::new();
    let judge = |ops: &[Op]| {
        parallelism(&without_paused(&deploy_spans(&hooks), &host_actions(ops)), 2, &none)
    };
    assert_eq!(judge(&[]).status, Status::Fail, "without the pause it is a violation");
    let paused =
        [host_op("c", "PAUSED_BY_USER", 20, 25, Acked), host_op("c", "NORMAL", 70, 75, Acked)];
    assert!(judge(&paused).passed(), "{:?}", judge(&paused));
    // A refused pause changed nothing.
    let refused =
        [host_op("c", "PAUSED_BY_USER", 20, 25, Failed), host_op("c", "NORMAL", 70, 75, Acked)];
    assert_eq!(judge(&refused).status, Status::Fail);
    // Resumed before b came: c held its slot again.
    let resumed =
        [host_op("c", "PAUSED_BY_USER", 5, 8, Acked), host_op("c", "NORMAL", 10, 12, Acked)];
    assert_eq!(judge(&resumed).status, Status::Fail);
    // A resume refused (no free slot) does not end the pause; the acknowledged one does.
    let retried = [
        host_op("c", "PAUSED_BY_USER", 20, 25, Acked),
        host_op("c", "NORMAL", 26, 27, Failed),
        host_op("c", "NORMAL", 95, 96, Acked),
    ];
    assert!(judge(&retried).passed());
    // An unknown pause may land late: it lasts until the host's last acknowledged NORMAL.
    let acts = host_actions(&[
        host_op("c", "PAUSED_BY_USER", 20, 25, Unknown),
        host_op("c", "NORMAL", 40, 45, Acked),
        host_op("c", "NORMAL", 80, 85, Acked),
    ]);
    assert_eq!(acts.paused["c"], vec![(20, 85)]);
    // A pause cuts an interval in two.
    let cut = without_paused(&[iv("c", "d", 0, 100)], &host_actions(&paused));
    assert_eq!(cut, vec![iv("c", "d", 0, 20), iv("c", "d", 75, 100)]);
}

#[test]
fn a_reset_host_starts_a_new_span() {
    // Limit 2: a finished d at 10, was reset at 50 and deployed d again from 60 to 70; b and
    // c deployed from 20 to 40, while a held no slot.
    let hooks = vec![
        iv("a", "d", 0, 5),
        iv("a", "d", 5, 10),
        iv("a", "d", 60, 70),
        iv("b", "d", 20, 40),
        iv("c", "d", 20, 40),
    ];
    let none = BTreeSet::new();
    let reset = host_actions(&[host_op("a", "RESET", 50, 52, Acked)]);
    assert_eq!(parallelism(&deploy_spans(&hooks), 2, &none).status, Status::Fail);
    let spans = deploy_spans_with(&hooks, &reset);
    assert_eq!(spans[..2], [iv("a", "d", 0, 10), iv("a", "d", 60, 70)]);
    assert!(parallelism(&spans, 2, &none).passed());
    // Its second run overlapping two others is still caught.
    let mut late = hooks.clone();
    late.push(iv("b", "d", 55, 75));
    late.push(iv("c", "d", 55, 75));
    assert_eq!(parallelism(&deploy_spans_with(&late, &reset), 2, &none).status, Status::Fail);
    // A refused reset does not split.
    let refused = host_actions(&[host_op("a", "RESET", 50, 52, Failed)]);
    assert_eq!(parallelism(&deploy_spans_with(&hooks, &refused), 2, &none).status, Status::Fail);
}

/// Seconds, in the checkers' microseconds.
const S: u64 = 1_000_000;

fn limit_op(value: u32, invoke: u64, complete: u64, outcome: Outcome) -> Op {
    Op { invoke_us: invoke, complete_us: complete, ..op(OpKind::SetMaxParallel { value }, outcome) }
}

#[test]
fn the_limit_timeline_allows_every_limit_that_may_be_in_effect() {
    // 2 from the start; 1 acknowledged during [10 s, 11 s]; 3 of unknown outcome from 20 s;
    // 2 again acknowledged during [30 s, 31 s]; a refused 5 changes nothing.
    let l = Limits::from_history(
        2,
        &[
            limit_op(1, 10 * S, 11 * S, Acked),
            limit_op(3, 20 * S, 20 * S + 1, Unknown),
            limit_op(2, 30 * S, 31 * S, Acked),
            limit_op(5, 40 * S, 41 * S, Failed),
        ],
    );
    assert_eq!(l.max_in(0, 9 * S), 2);
    assert_eq!(l.max_in(10 * S, 10 * S), 2, "during the write either limit may hold");
    assert_eq!(l.max_in(12 * S, 19 * S), 1, "after it completed only the new one");
    assert_eq!(l.max_in(12 * S, 20 * S), 3, "an unknown write may land from its invocation");
    assert_eq!(l.max_in(35 * S, 50 * S), 3, "or at any later time (or never)");
    assert_eq!(Limits::fixed(4).max_in(0, u64::MAX), 4);
}

#[test]
fn no_host_starts_above_the_limit_in_effect() {
    // maxParallel 2, lowered to 1 (acknowledged during [1 s, 1.01 s]); a deploys throughout.
    let lowered = [limit_op(1, S, S + 10_000, Acked)];
    let none = BTreeSet::new();
    let judge = |ops: &[Op], starts_at: u64| {
        let spans = vec![iv("a", "d", 0, 3 * S), iv("b", "d", starts_at, starts_at + S / 2)];
        parallelism_over(&spans, &Limits::from_history(2, ops), &none)
    };
    // b starts at 2 s, with a deploying: two hosts under a limit of one.
    let v = judge(&lowered, 2 * S);
    assert_eq!(v.status, Status::Fail, "{v:?}");
    assert!(v.violations[0].contains("b started with 2 hosts deploying (limit 1)"), "{v:?}");
    // The same start before the decrease: two of two, and both may finish after it.
    assert!(judge(&lowered, S / 2).passed());
    let v = parallelism_over(
        &[iv("a", "d", 0, 3 * S), iv("b", "d", S / 2, 3 * S)],
        &Limits::from_history(2, &lowered),
        &none,
    );
    assert!(v.passed(), "hosts admitted under 2 finish after the decrease to 1: {v:?}");
    // While the write is in flight either limit may hold.
    assert!(judge(&lowered, S + 5_000).passed());
    // A start within the admission slack after the decrease may have been admitted before it.
    assert!(judge(&lowered, S + 10_000 + ADMISSION_SLACK_US - 1).passed());
    assert_eq!(judge(&lowered, S + 10_000 + ADMISSION_SLACK_US + 1).status, Status::Fail);
    // Unknown outcome: the old limit may still hold (the write may never land) ...
    assert!(judge(&[limit_op(1, S, S + 10_000, Unknown)], 2 * S).passed());
    // ... and a refused write changed nothing.
    assert!(judge(&[limit_op(1, S, S + 10_000, Failed)], 2 * S).passed());
    // Set back to 2 (acknowledged by 2.01 s): b may start again after that.
    let restored = [lowered[0].clone(), limit_op(2, 2 * S, 2 * S + 10_000, Acked)];
    assert!(judge(&restored, 2 * S + S / 10).passed());
    assert_eq!(judge(&restored, 18 * S / 10).status, Status::Fail, "before it, 1 held");
}

#[test]
fn a_raised_limit_counts_only_once_it_may_be_in_effect() {
    // Three hosts at once at 5 s; 3 is set during [6 s, 6.01 s]: too late for them.
    let spans =
        vec![iv("a", "d", 5 * S, 9 * S), iv("b", "d", 5 * S, 9 * S), iv("c", "d", 5 * S, 9 * S)];
    let none = BTreeSet::new();
    for outcome in [Acked, Unknown] {
        let raised = Limits::from_history(2, &[limit_op(3, 6 * S, 6 * S + 10_000, outcome)]);
        assert_eq!(parallelism_over(&spans, &raised, &none).status, Status::Fail, "{outcome:?}");
        let early = Limits::from_history(2, &[limit_op(3, 4 * S, 4 * S + 10_000, outcome)]);
        assert!(parallelism_over(&spans, &early, &none).passed(), "{outcome:?}");
    }
    let refused = Limits::from_history(2, &[limit_op(3, 4 * S, 4 * S + 10_000, Failed)]);
    assert_eq!(parallelism_over(&spans, &refused, &none).status, Status::Fail);
}

#[test]
fn a_later_step_of_a_host_admitted_before_a_decrease_is_no_new_start() {
    // Steps: a runs two hooks of d (0-0.3 s, 2-2.3 s), b one long one; the limit goes from 2
    // to 1 at 1 s. a's second hook is the same run, admitted under 2.
    let hooks = vec![
        iv("a", "d", 0, 3 * S / 10),
        iv("a", "d", 2 * S, 23 * S / 10),
        iv("b", "d", S / 10, 3 * S),
    ];
    let limits = Limits::from_history(2, &[limit_op(1, S, S + 10_000, Acked)]);
    let none = BTreeSet::new();
    let steps = steps_in_runs(&hooks, &HostActions::default());
    assert_eq!(steps[1].run_start_us, Some(0));
    assert!(parallelism_over(&steps, &limits, &none).passed());
    assert_eq!(
        parallelism_over(&hooks, &limits, &none).status,
        Status::Fail,
        "judged as a new start it would be one"
    );
    // A reset begins a new run: a's hook after it is a start under the new limit.
    let reset = host_actions(&[host_op("a", "RESET", 19 * S / 10, 19 * S / 10 + 1, Acked)]);
    let steps = steps_in_runs(&hooks, &reset);
    assert_eq!(steps[1].run_start_us, None);
    assert_eq!(parallelism_over(&steps, &limits, &none).status, Status::Fail);
}

#[test]
fn deploys_made_by_actions_and_stage_settings_are_durable() {
    let h = vec![
        op(OpKind::Rollback { to: "d1".into(), id: Some("d2".into()) }, Acked),
        op(OpKind::Promote { from: "s1".into(), id: Some("d3".into()) }, Acked),
        Op {
            invoke_us: 10,
            complete_us: 20,
            ..op(OpKind::Config { key: "c".into(), value: "1".into() }, Acked)
        },
        Op {
            invoke_us: 30,
            complete_us: 40,
            ..op(OpKind::Config { key: "c".into(), value: "2".into() }, Acked)
        },
    ];
    let none = BTreeSet::new();
    let deploys: BTreeSet<String> = ["d2".to_string(), "d3".to_string()].into();
    let finals = |v: &str| -> BTreeMap<String, Option<String>> {
        [("c".to_string(), Some(v.to_string()))].into()
    };
    assert!(durability(&h, &finals("2"), &none, &deploys).passed());
    let v = durability(&h, &finals("2"), &none, &["d2".to_string()].into());
    assert!(v.violations[0].contains("deploy d3"), "{v:?}");
    let v = durability(&h, &finals("1"), &none, &deploys);
    assert!(v.violations[0].contains("was lost"), "a setting went back: {v:?}");
    // The setting is a register for the linearizability search too.
    let mut read_back = h.clone();
    read_back.push(r("c", Some("1"), 50, 60));
    assert_eq!(linearizable(&read_back).status, Status::Fail);
}

// --- convergence ------------------------------------------------------------------------------

fn row(host: &str, deploy: &str, step: &str, state: &str, status: &str) -> HostRow {
    HostRow {
        host: host.into(),
        deploy: Some(deploy.into()),
        step: step.into(),
        state: state.into(),
        status: status.into(),
    }
}

#[test]
fn convergence_needs_every_host_settled_within_the_bound() {
    let serving = |h| row(h, "d2", "SERVING_BUILD", "NORMAL", "SUCCEEDED");
    let failed = |h| row(h, "d2", "RESTARTING", "PAUSED_BY_SYSTEM", "TOO_MANY_RETRY");
    let busy = |h| row(h, "d2", "RESTARTING", "NORMAL", "UNKNOWN");
    let old = |h| row(h, "d1", "SERVING_BUILD", "NORMAL", "SUCCEEDED");
    let samples = vec![
        ProgressSample { t_us: 100, rows: vec![old("a"), busy("b"), busy("c")] },
        ProgressSample { t_us: 200, rows: vec![serving("a"), serving("b"), busy("c")] },
        ProgressSample { t_us: 300, rows: vec![serving("a"), serving("b"), failed("c")] },
    ];
    let hosts: Vec<String> = ["a", "b", "c"].map(String::from).to_vec();
    let (v, times) = convergence(&samples, "d2", &hosts, 150, 1000);
    assert!(v.passed(), "{v:?}");
    assert_eq!(times["c"], Some(150));
    let (v, _) = convergence(&samples, "d2", &hosts, 150, 100);
    assert_eq!(v.status, Status::Fail, "c took 150 µs, bound 100");
    let mut stuck = samples.clone();
    stuck.push(ProgressSample { t_us: 400, rows: vec![serving("a"), serving("b"), busy("c")] });
    let (v, times) = convergence(&stuck, "d2", &hosts, 150, 1000);
    assert_eq!(v.status, Status::Fail);
    assert_eq!(times["c"], None, "c fell back out of its settled state and stayed out");
    let missing: Vec<String> = vec!["zz".into()];
    assert_eq!(convergence(&samples, "d2", &missing, 0, 1000).0.status, Status::Fail);
}

// --- integrity --------------------------------------------------------------------------------

#[test]
fn integrity_compares_archives_and_trees_with_what_was_published() {
    let published: BTreeMap<String, Published> = [(
        "b1".to_string(),
        Published {
            blake3: "aa".into(),
            files: [("VERSION".to_string(), "v1".to_string())].into(),
        },
    )]
    .into();
    let good = HostBuilds {
        host: "h".into(),
        archives: vec![("b1".into(), "aa".into())],
        trees: vec![("b1".into(), [("VERSION".to_string(), "v1".to_string())].into())],
    };
    assert!(integrity(std::slice::from_ref(&good), &published).passed());
    let mut bad_archive = good.clone();
    bad_archive.archives[0].1 = "bb".into();
    let v = integrity(&[bad_archive], &published);
    assert_eq!(v.status, Status::Fail);
    assert!(v.violations[0].contains("hashes to bb"), "{v:?}");
    let mut bad_tree = good.clone();
    bad_tree.trees[0].1.insert("VERSION".into(), "tampered".into());
    assert_eq!(integrity(&[bad_tree], &published).status, Status::Fail);
    let mut unknown = good.clone();
    unknown.trees[0].0 = "b9".into();
    assert_eq!(integrity(&[unknown], &published).status, Status::Fail);
}

// --- the cluster ------------------------------------------------------------------------------

fn st(node: u64, term: u64, state: &str, leader: Option<u64>) -> StatusSample {
    StatusSample { t_us: 0, node, term, state: state.into(), leader, applied_index: 0 }
}

#[test]
fn two_leaders_in_one_term_are_caught() {
    let ok = vec![
        st(1, 1, "Leader", Some(1)),
        st(2, 1, "Follower", Some(1)),
        st(2, 2, "Leader", Some(2)),
        st(1, 2, "Follower", Some(2)),
        st(3, 2, "Candidate", None),
    ];
    assert!(one_leader_per_term(&ok).passed());
    let mut bad = ok.clone();
    bad.push(st(3, 2, "Leader", Some(3)));
    let v = one_leader_per_term(&bad);
    assert_eq!(v.status, Status::Fail);
    assert!(v.violations[0].contains("term 2"), "{v:?}");
}

#[test]
fn replicas_must_agree() {
    let m = |v: Option<&str>| -> BTreeMap<String, Option<String>> {
        [("k".to_string(), v.map(str::to_string))].into()
    };
    let same: BTreeMap<u64, _> = [(1, m(Some("x"))), (2, m(Some("x")))].into();
    assert!(replicas_agree(&same).passed());
    let differ: BTreeMap<u64, _> = [(1, m(Some("x"))), (2, m(None))].into();
    assert_eq!(replicas_agree(&differ).status, Status::Fail);
}

#[test]
fn unknown_writes_nobody_read_do_not_blow_up_the_search() {
    // A leaderless window: 60 writes time out (unknown), none of them is ever read; acked
    // operations around them must still be checked, and quickly.
    let mut h = vec![w("k", "a", 0, 10, Acked), r("k", Some("a"), 20, 30)];
    for i in 0..60 {
        h.push(w("k", &format!("lost-{i}"), 100 + i, 200 + i, Unknown));
    }
    h.push(w("k", "b", 1000, 1010, Acked));
    h.push(r("k", Some("b"), 1020, 1030));
    assert!(linearizable(&h).passed());
    // Still wrong when an acked read goes back in time.
    h.push(r("k", Some("a"), 1040, 1050));
    assert_eq!(linearizable(&h).status, Status::Fail);
    // And an unknown write that was read is still placed after its invocation.
    let h = vec![
        w("k", "a", 0, 10, Acked),
        w("k", "x", 100, 110, Unknown),
        r("k", Some("x"), 200, 210),
        r("k", Some("a"), 300, 310),
    ];
    assert_eq!(linearizable(&h).status, Status::Fail, "x was seen, then a again");
}
