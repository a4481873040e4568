//! Retention janitors: what the plan deletes, what it never deletes, and `apply`'s re-check.

use proto::beans::{AgentBean, BuildBean, DeployBean, EnvironBean};
use proto::command::{Op, OpOutput};
use proto::enums::{AgentState, DeployStage};
use proto::ids::{BuildId, DeployId, EnvId, HostId};

use super::State;
use super::retention::BuildRetention;

const DAY: i64 = 86_400_000;

fn prod() -> EnvId {
    EnvId::new("e-prod")
}

/// Stage `svc/prod` keeping `max_num` deploys for `max_day` days, with host `h0`.
fn stage(max_num: i32, max_day: i32) -> State {
    let mut s = State::default();
    let mut env = EnvironBean {
        id: Some(prod()),
        env_name: Some("svc".into()),
        stage_name: Some("prod".into()),
        max_deploy_num: Some(max_num),
        max_deploy_day: Some(max_day),
        ..Default::default()
    };
    env.fill_create_defaults();
    s.apply(0, Op::CreateEnv { env }).unwrap();
    s
}

fn publish(s: &mut State, id: &str, at: i64) {
    let build = BuildBean {
        id: Some(BuildId::new(id)),
        name: Some("svc".into()),
        artifact_url: Some(format!("file:///{id}")),
        publish_date: Some(at),
        ..Default::default()
    };
    s.apply(at, Op::PublishBuild { build }).unwrap();
}

/// Deploys `d{i}` of build `b{i}` on day `i`, for `i` in `days`.
fn deploys(s: &mut State, days: std::ops::Range<i64>) {
    for i in days {
        publish(s, &format!("b{i}"), i * DAY);
        let expected = s.env_by_id(&prod()).unwrap().deploy_id.clone();
        let deploy = DeployBean {
            id: Some(DeployId::new(format!("d{i}"))),
            build_id: Some(BuildId::new(format!("b{i}"))),
            ..Default::default()
        };
        s.apply(i * DAY, Op::CreateDeploy { env_id: prod(), deploy, expected }).unwrap();
    }
}

fn purged(ops: &[Op]) -> (Vec<String>, Vec<String>) {
    let mut d = vec![];
    let mut b = vec![];
    for op in ops {
        match op {
            Op::PurgeDeploys { ids } => d.extend(ids.iter().map(|i| i.to_string())),
            Op::PurgeBuilds { ids } => b.extend(ids.iter().map(|i| i.to_string())),
            other => panic!("{other:?}"),
        }
    }
    (d, b)
}

const KEEP_ALL_BUILDS: BuildRetention = BuildRetention { keep_per_name: 1000, max_age_days: 180 };

#[test]
fn deploy_janitor_rules() {
    // (max_deploy_num, max_deploy_day, deploys on days 0..n, now in days, deleted)
    let cases: &[(i32, i32, i64, i64, &[&str])] = &[
        // Under the count: nothing, however old.
        (5, 1, 5, 100, &[]),
        // Over the count by 2, all old: the 2 oldest.
        (3, 10, 5, 100, &["d0", "d1"]),
        // Over the count but young: nothing (both limits must be passed).
        (3, 10, 5, 5, &[]),
        // Over by 3, only d0 old enough.
        (2, 10, 5, 11, &["d0"]),
        // Over by 4 with 5 deploys: never the current one (d4).
        (1, 1, 5, 100, &["d0", "d1", "d2", "d3"]),
    ];
    for (num, day, n, now, want) in cases {
        let mut s = stage(*num, *day);
        deploys(&mut s, 0..*n);
        let (d, b) = purged(&s.plan_retention(now * DAY, &KEEP_ALL_BUILDS));
        assert_eq!(d, *want, "max {num} deploys / {day} days, {n} deploys, day {now}");
        assert!(b.is_empty());
    }
}

#[test]
fn never_deleted_current_alias_or_running_deploys() {
    let mut s = stage(1, 1);
    deploys(&mut s, 0..4);
    // d3 is current; a rollback to d1 makes d1 its alias.
    let rb = DeployBean {
        id: Some(DeployId::new("r1")),
        build_id: Some(BuildId::new("b1")),
        deploy_type: Some(proto::enums::DeployType::Rollback),
        alias: Some(DeployId::new("d1")),
        ..Default::default()
    };
    let expected = Some(DeployId::new("d3"));
    s.apply(5 * DAY, Op::CreateDeploy { env_id: prod(), deploy: rb, expected }).unwrap();
    // A host's row still names d0 (e.g. paused by its operator before it moved on).
    let row = AgentBean {
        host_id: Some(HostId::new("h0")),
        host_name: Some("h0".into()),
        env_id: Some(prod()),
        deploy_id: Some(DeployId::new("d0")),
        deploy_stage: Some(DeployStage::ServingBuild),
        state: Some(AgentState::PausedByUser),
        ..Default::default()
    };
    s.put_agent((prod(), HostId::new("h0")), Some(row));
    let ops = s.plan_retention(100 * DAY, &KEEP_ALL_BUILDS);
    let (d, _) = purged(&ops);
    assert_eq!(d, ["d2", "d3"], "not r1 (current), d1 (its alias) or d0 (a host runs it)");

    // apply re-checks: an id that became protected since the plan is skipped.
    let stale = Op::PurgeDeploys { ids: vec![DeployId::new("d0"), DeployId::new("d2")] };
    assert_eq!(s.apply(100 * DAY, stale).unwrap(), OpOutput::Purged(1));
    assert!(s.deploy(&DeployId::new("d0")).is_some());
    assert!(s.deploy(&DeployId::new("d2")).is_none());
    assert_eq!(s.deploys_of(&prod()).count(), 4, "d0, d1, d3, r1");
}

#[test]
fn build_janitor_rules() {
    let retention = BuildRetention { keep_per_name: 3, max_age_days: 10 };
    let mut s = stage(5000, 365);
    for i in 0..6 {
        publish(&mut s, &format!("x{i}"), i * DAY);
    }
    // x1 is deployed: referenced builds stay.
    let deploy = DeployBean {
        id: Some(DeployId::new("d1")),
        build_id: Some(BuildId::new("x1")),
        ..Default::default()
    };
    s.apply(DAY, Op::CreateDeploy { env_id: prod(), deploy, expected: None }).unwrap();
    // Young builds stay however many there are.
    assert_eq!(purged(&s.plan_retention(12 * DAY, &retention)).1, ["x0"]);
    // Old: the 3 excess, oldest first, skipping x1.
    let ops = s.plan_retention(100 * DAY, &retention);
    assert_eq!(purged(&ops).1, ["x0", "x2", "x3"]);
    for op in ops {
        s.apply(100 * DAY, op).unwrap();
    }
    let left: Vec<String> =
        s.builds_newest_first(Some("svc")).map(|b| b.id.clone().unwrap().to_string()).collect();
    assert_eq!(left, ["x5", "x4", "x1"]);
    // apply skips a build that became referenced since the plan.
    let stale = Op::PurgeBuilds { ids: vec![BuildId::new("x1")] };
    assert_eq!(s.apply(100 * DAY, stale).unwrap(), OpOutput::Purged(0));
    assert!(s.plan_retention(100 * DAY, &retention).is_empty(), "at the limit now");
}
