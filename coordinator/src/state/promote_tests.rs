//! Auto-promotion and build tags driven directly: the planner fed state and time, its
//! operations applied, and the compare-and-set checks of `apply`.

use proto::beans::{
    AUTO_PROMOTER_OPERATOR, BuildBean, DeployBean, EnvironBean, PromoteBean, TagBean,
};
use proto::command::{Op, OpError, OpOutput};
use proto::enums::{
    AcceptanceStatus, AcceptanceType, DeployState, DeployType, EnvState, PromoteDisablePolicy,
    PromoteFailPolicy, PromoteType, TagValue,
};
use proto::ids::{BuildId, DeployId, EnvId, TagId};

use super::State;
use super::cron::days_from_civil;

const MIN: i64 = 60_000;
/// 2025-01-15 09:00 UTC.
const T0: i64 = (20_103 * 86_400 + 9 * 3600) * 1000;

fn canary() -> EnvId {
    EnvId::new("e-canary")
}
fn prod() -> EnvId {
    EnvId::new("e-prod")
}

/// Env `svc` with stages `canary` and `prod` (no hosts: a deploy is at once SUCCEEDING and,
/// with AUTO acceptance, ACCEPTED).
fn world() -> State {
    assert_eq!(T0, (days_from_civil(2025, 1, 15) * 86_400 + 9 * 3600) * 1000);
    let mut s = State::default();
    for (id, stage) in [(canary(), "canary"), (prod(), "prod")] {
        let mut env = EnvironBean {
            id: Some(id),
            env_name: Some("svc".into()),
            stage_name: Some(stage.into()),
            ..Default::default()
        };
        env.fill_create_defaults();
        s.apply(0, Op::CreateEnv { env }).unwrap();
    }
    s
}

/// Publishes build `id` of `svc` on `branch` at `at` (commit date = publish date).
fn publish(s: &mut State, id: &str, at: i64, branch: &str) {
    let build = BuildBean {
        id: Some(BuildId::new(id)),
        name: Some("svc".into()),
        artifact_url: Some(format!("file:///{id}")),
        branch: Some(branch.into()),
        commit: Some(format!("commit-{id}")),
        commit_date: Some(at),
        publish_date: Some(at),
        ..Default::default()
    };
    s.apply(at, Op::PublishBuild { build }).unwrap();
}

fn deploy_as(
    s: &mut State,
    now: i64,
    env: &EnvId,
    id: &str,
    build: &str,
    operator: &str,
) -> Result<OpOutput, OpError> {
    let expected = s.env_by_id(env).unwrap().deploy_id.clone();
    let deploy = DeployBean {
        id: Some(DeployId::new(id)),
        build_id: Some(BuildId::new(build)),
        operator: Some(operator.into()),
        ..Default::default()
    };
    s.apply(now, Op::CreateDeploy { env_id: env.clone(), deploy, expected })
}

fn deploy(s: &mut State, now: i64, env: &EnvId, id: &str, build: &str) {
    deploy_as(s, now, env, id, build, "alice").unwrap();
}

/// Turns on auto-promotion of `env` from `pred` with extra settings applied to the patch.
fn auto(s: &mut State, env: &EnvId, pred: &str, tweak: impl FnOnce(&mut PromoteBean)) {
    let mut patch = PromoteBean {
        promote_type: Some(PromoteType::Auto),
        pred_stage: Some(pred.into()),
        ..Default::default()
    };
    tweak(&mut patch);
    s.apply(0, Op::UpdatePromote { env_id: env.clone(), patch, operator: "alice".into() }).unwrap();
}

fn set_state(s: &mut State, id: &str, state: DeployState) {
    s.deploys.get_mut(&DeployId::new(id)).unwrap().state = Some(state);
}

fn tag(s: &mut State, now: i64, id: &str, build: &str, value: TagValue) {
    let tag = TagBean {
        id: Some(TagId::new(id)),
        value: Some(value),
        target_id: Some(build.into()),
        operator: Some("alice".into()),
        ..Default::default()
    };
    s.apply(now, Op::CreateTag { tag }).unwrap();
}

/// The planner's operations at `now`, summarised; new deploy ids are `n1`, `n2`, ...
fn plan(s: &State, now: i64) -> Vec<String> {
    let mut n = 0;
    let mut new_id = || {
        n += 1;
        DeployId::new(format!("n{n}"))
    };
    s.plan_auto_promotions(now, &mut new_id).iter().map(summary).collect()
}

fn summary(op: &Op) -> String {
    let env = |e: &EnvId| e.as_str().trim_start_matches("e-").to_string();
    match op {
        Op::CreateDeploy { env_id, deploy, expected } => format!(
            "{} <- build {}{} (expected {})",
            env(env_id),
            deploy.build_id.as_ref().unwrap(),
            deploy.from_deploy_id.as_ref().map(|f| format!(" from {f}")).unwrap_or_default(),
            expected.as_ref().map_or("none", |d| d.as_str()),
        ),
        Op::PromoteFailed { env_id, failed, rollback } => format!(
            "{} failed {failed}{}",
            env(env_id),
            rollback
                .as_ref()
                .map(|r| format!(
                    ", roll back to {} (build {})",
                    r.alias.as_ref().unwrap(),
                    r.build_id.as_ref().unwrap()
                ))
                .unwrap_or_default()
        ),
        other => format!("{other:?}"),
    }
}

/// Each case builds a state, then asks the planner at a time.
#[test]
fn plan_auto_promotions_table() {
    type Setup = fn(&mut State) -> i64;
    let cases: &[(&str, Setup, &[&str])] = &[
        ("no promote config: nothing", |_| T0, &[]),
        (
            "BUILD: the newest build after the current deploy's",
            |s| {
                publish(s, "b1", T0, "master");
                deploy(s, T0, &prod(), "d1", "b1");
                publish(s, "b2", T0 + MIN, "master");
                publish(s, "b3", T0 + 2 * MIN, "master");
                auto(s, &prod(), "BUILD", |_| {});
                T0 + 3 * MIN
            },
            &["prod <- build b3 (expected d1)"],
        ),
        (
            "BUILD: a stage never deployed takes the newest",
            |s| {
                publish(s, "b1", T0, "master");
                auto(s, &prod(), "BUILD", |_| {});
                T0 + MIN
            },
            &["prod <- build b1 (expected none)"],
        ),
        (
            "BUILD: nothing newer than the current build",
            |s| {
                publish(s, "b1", T0, "master");
                deploy(s, T0, &prod(), "d1", "b1");
                auto(s, &prod(), "BUILD", |_| {});
                T0 + MIN
            },
            &[],
        ),
        (
            "BUILD: only the stage's branch",
            |s| {
                publish(s, "b1", T0, "master");
                publish(s, "b2", T0 + MIN, "feature");
                auto(s, &prod(), "BUILD", |_| {});
                T0 + 2 * MIN
            },
            &["prod <- build b1 (expected none)"],
        ),
        (
            "BUILD: delay lets only baked builds through",
            |s| {
                publish(s, "b1", T0, "master");
                publish(s, "b2", T0 + 8 * MIN, "master");
                auto(s, &prod(), "BUILD", |p| p.delay = Some(5));
                T0 + 10 * MIN
            },
            &["prod <- build b1 (expected none)"],
        ),
        (
            "BUILD: delay, nothing baked yet",
            |s| {
                publish(s, "b1", T0, "master");
                auto(s, &prod(), "BUILD", |p| p.delay = Some(5));
                T0 + 4 * MIN
            },
            &[],
        ),
        (
            "BUILD: queue 2 takes the second newest",
            |s| {
                publish(s, "b1", T0, "master");
                publish(s, "b2", T0 + MIN, "master");
                auto(s, &prod(), "BUILD", |p| p.queue_size = Some(2));
                T0 + 2 * MIN
            },
            &["prod <- build b1 (expected none)"],
        ),
        (
            "BUILD: queue 2 waits for two candidates",
            |s| {
                publish(s, "b1", T0, "master");
                auto(s, &prod(), "BUILD", |p| p.queue_size = Some(2));
                T0 + 2 * MIN
            },
            &[],
        ),
        (
            "BUILD: a BAD build is skipped",
            |s| {
                publish(s, "b1", T0, "master");
                publish(s, "b2", T0 + MIN, "master");
                tag(s, T0 + MIN, "t1", "b2", TagValue::BadBuild);
                auto(s, &prod(), "BUILD", |_| {});
                T0 + 2 * MIN
            },
            &["prod <- build b1 (expected none)"],
        ),
        (
            "BUILD: BAD propagates to later builds of the branch",
            |s| {
                publish(s, "b1", T0, "master");
                tag(s, T0, "t1", "b1", TagValue::BadBuild);
                publish(s, "b2", T0 + MIN, "master");
                auto(s, &prod(), "BUILD", |_| {});
                T0 + 2 * MIN
            },
            &[],
        ),
        (
            "BUILD: a newer GOOD tag ends the BAD run",
            |s| {
                publish(s, "b1", T0, "master");
                tag(s, T0, "t1", "b1", TagValue::BadBuild);
                publish(s, "b2", T0 + MIN, "master");
                publish(s, "b3", T0 + 2 * MIN, "master");
                tag(s, T0 + 2 * MIN, "t2", "b3", TagValue::GoodBuild);
                auto(s, &prod(), "BUILD", |p| p.queue_size = Some(2));
                T0 + 3 * MIN
            },
            // b2 is still bad (after b1's tag, before b3's), so b3 is the only candidate.
            &[],
        ),
        (
            "predecessor: an ACCEPTED canary deploy goes to prod",
            |s| {
                publish(s, "b1", T0, "master");
                deploy(s, T0 + MIN, &canary(), "c1", "b1");
                auto(s, &prod(), "canary", |_| {});
                T0 + 2 * MIN
            },
            &["prod <- build b1 from c1 (expected none)"],
        ),
        (
            "predecessor: not yet accepted (MANUAL acceptance) waits",
            |s| {
                let patch = EnvironBean {
                    acceptance_type: Some(AcceptanceType::Manual),
                    ..Default::default()
                };
                s.apply(
                    0,
                    Op::UpdateEnv {
                        env_name: "svc".into(),
                        stage_name: "canary".into(),
                        patch,
                        operator: "alice".into(),
                    },
                )
                .unwrap();
                publish(s, "b1", T0, "master");
                deploy(s, T0 + MIN, &canary(), "c1", "b1");
                auto(s, &prod(), "canary", |_| {});
                T0 + 2 * MIN
            },
            &[],
        ),
        (
            "predecessor: already promoted",
            |s| {
                publish(s, "b1", T0, "master");
                deploy(s, T0 + MIN, &canary(), "c1", "b1");
                auto(s, &prod(), "canary", |_| {});
                let op = s.plan_auto_promotions(T0 + 2 * MIN, &mut || DeployId::new("p1"));
                s.apply(T0 + 2 * MIN, op.into_iter().next().unwrap()).unwrap();
                T0 + 3 * MIN
            },
            &[],
        ),
        (
            "predecessor: a newer canary deploy follows the promoted one",
            |s| {
                publish(s, "b1", T0, "master");
                publish(s, "b2", T0, "master");
                deploy(s, T0 + MIN, &canary(), "c1", "b1");
                auto(s, &prod(), "canary", |_| {});
                let op = s.plan_auto_promotions(T0 + 2 * MIN, &mut || DeployId::new("p1"));
                s.apply(T0 + 2 * MIN, op.into_iter().next().unwrap()).unwrap();
                deploy(s, T0 + 3 * MIN, &canary(), "c2", "b2");
                T0 + 4 * MIN
            },
            &["prod <- build b2 from c2 (expected p1)"],
        ),
        (
            "predecessor: delay",
            |s| {
                publish(s, "b1", T0, "master");
                deploy(s, T0 + MIN, &canary(), "c1", "b1");
                auto(s, &prod(), "canary", |p| p.delay = Some(30));
                T0 + 30 * MIN
            },
            &[],
        ),
        (
            "predecessor: BAD build not promoted",
            |s| {
                publish(s, "b1", T0, "master");
                deploy(s, T0 + MIN, &canary(), "c1", "b1");
                tag(s, T0 + MIN, "t1", "b1", TagValue::BadBuild);
                auto(s, &prod(), "canary", |_| {});
                T0 + 2 * MIN
            },
            &[],
        ),
        (
            "predecessor: queue 2 lags one behind",
            |s| {
                publish(s, "b1", T0, "master");
                publish(s, "b2", T0, "master");
                deploy(s, T0 + MIN, &canary(), "c1", "b1");
                deploy(s, T0 + 2 * MIN, &canary(), "c2", "b2");
                auto(s, &prod(), "canary", |p| p.queue_size = Some(2));
                T0 + 3 * MIN
            },
            &["prod <- build b1 from c1 (expected none)"],
        ),
        (
            "current deploy still RUNNING blocks",
            |s| {
                publish(s, "b1", T0, "master");
                publish(s, "b2", T0 + MIN, "master");
                deploy(s, T0, &prod(), "d1", "b1");
                set_state(s, "d1", DeployState::Running);
                s.deploys.get_mut(&DeployId::new("d1")).unwrap().acceptance_status =
                    Some(AcceptanceStatus::PendingDeploy);
                auto(s, &prod(), "BUILD", |_| {});
                T0 + 2 * MIN
            },
            &[],
        ),
        (
            "paused stage: nothing",
            |s| {
                publish(s, "b1", T0, "master");
                auto(s, &prod(), "BUILD", |_| {});
                s.envs.get_mut(&prod()).unwrap().env_state = Some(EnvState::Paused);
                T0 + MIN
            },
            &[],
        ),
        (
            "fail policy CONTINUE: a FAILING deploy is replaced",
            |s| {
                publish(s, "b1", T0, "master");
                deploy(s, T0, &prod(), "d1", "b1");
                set_state(s, "d1", DeployState::Failing);
                publish(s, "b2", T0 + MIN, "master");
                auto(s, &prod(), "BUILD", |_| {});
                T0 + 2 * MIN
            },
            &["prod <- build b2 (expected d1)"],
        ),
        (
            "fail policy DISABLE: a REJECTED deploy turns auto-promotion off",
            |s| {
                publish(s, "b1", T0, "master");
                deploy(s, T0, &prod(), "d1", "b1");
                reject(s, "d1");
                publish(s, "b2", T0 + MIN, "master");
                auto(s, &prod(), "BUILD", |p| p.fail_policy = Some(PromoteFailPolicy::Disable));
                T0 + 2 * MIN
            },
            &["prod failed d1"],
        ),
        (
            "fail policy ROLLBACK: back to the newest SUCCEEDED deploy",
            |s| {
                publish(s, "b1", T0, "master");
                publish(s, "b2", T0 + MIN, "master");
                deploy(s, T0, &prod(), "d1", "b1");
                deploy(s, T0 + MIN, &prod(), "d2", "b2");
                set_state(s, "d2", DeployState::Failing);
                auto(s, &prod(), "BUILD", |p| p.fail_policy = Some(PromoteFailPolicy::Rollback));
                T0 + 2 * MIN
            },
            &["prod failed d2, roll back to d1 (build b1)"],
        ),
        (
            "fail policy ROLLBACK without a SUCCEEDED deploy: only disable",
            |s| {
                publish(s, "b1", T0, "master");
                deploy(s, T0, &prod(), "d1", "b1");
                set_state(s, "d1", DeployState::Failing);
                auto(s, &prod(), "BUILD", |p| p.fail_policy = Some(PromoteFailPolicy::Rollback));
                T0 + 2 * MIN
            },
            &["prod failed d1"],
        ),
        (
            "schedule: inside the window",
            |s| {
                publish(s, "b1", T0, "master");
                auto(s, &prod(), "BUILD", |p| p.schedule = Some("0 10 * * *".into()));
                T0 + 61 * MIN // 10:01
            },
            &["prod <- build b1 (expected none)"],
        ),
        (
            "schedule: outside the window",
            |s| {
                publish(s, "b1", T0, "master");
                auto(s, &prod(), "BUILD", |p| p.schedule = Some("0 10 * * *".into()));
                T0 + 65 * MIN // 10:05
            },
            &[],
        ),
        (
            "schedule: a candidate is due only at a fire time after it baked",
            |s| {
                // Published 09:59 with 5 minutes of delay: due at the next 10:00 after 10:04.
                publish(s, "b1", T0 + 59 * MIN, "master");
                auto(s, &prod(), "BUILD", |p| {
                    p.schedule = Some("0 10 * * *".into());
                    p.delay = Some(5);
                });
                T0 + 61 * MIN
            },
            &[],
        ),
        (
            "schedule from a stage: window applies too",
            |s| {
                publish(s, "b1", T0, "master");
                deploy(s, T0 + MIN, &canary(), "c1", "b1");
                auto(s, &prod(), "canary", |p| p.schedule = Some("0 0 10 ? * *".into()));
                T0 + 30 * MIN
            },
            &[],
        ),
    ];
    for (name, setup, want) in cases {
        let mut s = world();
        let now = setup(&mut s);
        assert_eq!(plan(&s, now), *want, "{name}");
    }
}

fn reject(s: &mut State, id: &str) {
    s.apply(
        0,
        Op::UpdateDeploy {
            deploy_id: DeployId::new(id),
            acceptance_status: Some(AcceptanceStatus::Rejected),
            description: None,
        },
    )
    .unwrap();
}

fn promote_type(s: &State, env: &EnvId) -> Option<PromoteType> {
    s.promote(env).and_then(|p| p.promote_type)
}

#[test]
fn apply_rechecks_what_the_plan_saw() {
    let mut s = world();
    publish(&mut s, "b1", T0, "master");
    publish(&mut s, "b2", T0, "master");
    deploy(&mut s, T0 + MIN, &canary(), "c1", "b1");
    auto(&mut s, &prod(), "canary", |p| p.disable_policy = Some(PromoteDisablePolicy::Manual));
    let planned = s.plan_auto_promotions(T0 + 2 * MIN, &mut || DeployId::new("p1"));
    let again = s.plan_auto_promotions(T0 + 2 * MIN, &mut || DeployId::new("p2"));
    assert_eq!(planned.len(), 1);

    // Two leaders planned the same promotion: the second finds the current deploy moved.
    let out = s.apply(T0 + 2 * MIN, planned[0].clone()).unwrap();
    let OpOutput::Deploy(d) = out else { panic!("{out:?}") };
    assert_eq!(d.operator.as_deref(), Some(AUTO_PROMOTER_OPERATOR));
    assert_eq!(d.from_deploy_id, Some(DeployId::new("c1")));
    assert_eq!(d.description.as_deref(), Some("Auto promote deploy c1"));
    let before = s.clone();
    let e = s.apply(T0 + 2 * MIN, again[0].clone()).unwrap_err();
    assert!(matches!(e, OpError::Conflict { .. }), "{e:?}");
    assert_eq!(s, before, "a refused promotion changes nothing");

    // A build tagged BAD after the plan is refused at apply time.
    deploy(&mut s, T0 + 3 * MIN, &canary(), "c2", "b2");
    let planned = s.plan_auto_promotions(T0 + 4 * MIN, &mut || DeployId::new("p3"));
    assert_eq!(planned.len(), 1, "c2 is a candidate");
    tag(&mut s, T0 + 4 * MIN, "t1", "b2", TagValue::BadBuild);
    let e = s.apply(T0 + 4 * MIN, planned[0].clone()).unwrap_err();
    assert!(e.to_string().contains("BAD_BUILD"), "{e}");

    // Auto-promotion turned off after the plan: refused too.
    let planned = Op::CreateDeploy {
        env_id: prod(),
        deploy: DeployBean {
            id: Some(DeployId::new("p4")),
            build_id: Some(BuildId::new("b1")),
            operator: Some(AUTO_PROMOTER_OPERATOR.into()),
            ..Default::default()
        },
        expected: Some(DeployId::new("p1")),
    };
    let patch = PromoteBean { promote_type: Some(PromoteType::Manual), ..Default::default() };
    s.apply(0, Op::UpdatePromote { env_id: prod(), patch, operator: "bob".into() }).unwrap();
    let e = s.apply(T0 + 5 * MIN, planned).unwrap_err();
    assert!(e.to_string().contains("turned off"), "{e}");
}

#[test]
fn fail_policies_apply_atomically() {
    // ROLLBACK: the rollback deploy (alias = the SUCCEEDED target) and MANUAL, in one op.
    let mut s = world();
    publish(&mut s, "b1", T0, "master");
    publish(&mut s, "b2", T0, "master");
    deploy(&mut s, T0, &prod(), "d1", "b1");
    deploy(&mut s, T0 + MIN, &prod(), "d2", "b2");
    reject(&mut s, "d2");
    auto(&mut s, &prod(), "BUILD", |p| p.fail_policy = Some(PromoteFailPolicy::Rollback));
    let ops = s.plan_auto_promotions(T0 + 2 * MIN, &mut || DeployId::new("r1"));
    let stale = ops[0].clone();
    let out = s.apply(T0 + 2 * MIN, ops[0].clone()).unwrap();
    let OpOutput::Deploy(rb) = out else { panic!("{out:?}") };
    assert_eq!(rb.deploy_type, Some(DeployType::Rollback));
    assert_eq!(rb.alias, Some(DeployId::new("d1")));
    assert_eq!(rb.build_id, Some(BuildId::new("b1")));
    assert_eq!(promote_type(&s, &prod()), Some(PromoteType::Manual));
    let history: Vec<_> = s.history_of(&prod()).map(|h| h.change_type.clone().unwrap()).collect();
    assert_eq!(history[0], "Env Promote Config", "{history:?}");
    // Applied again (a second leader): the current deploy moved; nothing changes.
    let before = s.clone();
    assert!(matches!(s.apply(T0 + 3 * MIN, stale), Err(OpError::Conflict { .. })));
    assert_eq!(s, before);
    assert!(plan(&s, T0 + 4 * MIN).is_empty(), "auto-promotion is off");

    // DISABLE: only MANUAL, the failed deploy stays.
    let mut s = world();
    publish(&mut s, "b1", T0, "master");
    deploy(&mut s, T0, &prod(), "d1", "b1");
    set_state(&mut s, "d1", DeployState::Failing);
    auto(&mut s, &prod(), "BUILD", |p| p.fail_policy = Some(PromoteFailPolicy::Disable));
    for op in s.plan_auto_promotions(T0 + MIN, &mut || DeployId::new("x")) {
        s.apply(T0 + MIN, op).unwrap();
    }
    assert_eq!(promote_type(&s, &prod()), Some(PromoteType::Manual));
    assert_eq!(s.env_by_id(&prod()).unwrap().deploy_id, Some(DeployId::new("d1")));
}

#[test]
fn disable_policy() {
    // AUTO (the default): a manual deploy turns auto-promotion off, an auto-promoter's not.
    let mut s = world();
    publish(&mut s, "b1", T0, "master");
    publish(&mut s, "b2", T0 + MIN, "master");
    auto(&mut s, &prod(), "BUILD", |_| {});
    for op in s.plan_auto_promotions(T0 + 2 * MIN, &mut || DeployId::new("a1")) {
        s.apply(T0 + 2 * MIN, op).unwrap();
    }
    assert_eq!(promote_type(&s, &prod()), Some(PromoteType::Auto));
    deploy(&mut s, T0 + 3 * MIN, &prod(), "m1", "b1");
    assert_eq!(promote_type(&s, &prod()), Some(PromoteType::Manual));
    let h = s.history_of(&prod()).next().unwrap();
    assert_eq!(h.operator.as_deref(), Some("alice"));
    assert_eq!(h.config_change.as_deref(), Some(r#"{"type":"MANUAL"}"#));

    // MANUAL: only an operator turns it off.
    let mut s = world();
    publish(&mut s, "b1", T0, "master");
    auto(&mut s, &prod(), "BUILD", |p| p.disable_policy = Some(PromoteDisablePolicy::Manual));
    deploy(&mut s, T0 + MIN, &prod(), "m1", "b1");
    assert_eq!(promote_type(&s, &prod()), Some(PromoteType::Auto));
}

#[test]
fn promote_config_is_validated_and_recorded() {
    let mut s = world();
    // A stage without a config reads the defaults.
    let d = s.promote_or_default(&prod());
    assert_eq!(
        (d.promote_type, d.queue_size, d.delay, d.disable_policy, d.fail_policy),
        (
            Some(PromoteType::Manual),
            Some(1),
            Some(0),
            Some(PromoteDisablePolicy::Auto),
            Some(PromoteFailPolicy::Continue)
        )
    );
    // Refusals name the field and change nothing.
    let bad: &[(PromoteBean, &str)] = &[
        (PromoteBean { queue_size: Some(0), ..Default::default() }, "queueSize 0"),
        (PromoteBean { queue_size: Some(11), ..Default::default() }, "queueSize 11"),
        (PromoteBean { delay: Some(-1), ..Default::default() }, "delay -1"),
        (PromoteBean { schedule: Some("0 61 * * *".into()), ..Default::default() }, "schedule"),
        (PromoteBean { pred_stage: Some("a b".into()), ..Default::default() }, "predStage"),
        (PromoteBean { pred_stage: Some("prod".into()), ..Default::default() }, "is this stage"),
        (PromoteBean { pred_stage: Some("nope".into()), ..Default::default() }, "no such stage"),
        (
            PromoteBean { promote_type: Some(PromoteType::Auto), ..Default::default() },
            "predStage is required",
        ),
    ];
    for (patch, want) in bad {
        let before = s.clone();
        let e = s
            .apply(
                1,
                Op::UpdatePromote {
                    env_id: prod(),
                    patch: patch.clone(),
                    operator: "alice".into(),
                },
            )
            .unwrap_err();
        assert!(matches!(e, OpError::Invalid { .. }) && e.to_string().contains(want), "{e}");
        assert_eq!(s, before, "{want}: a refused config changes nothing");
    }
    // A cycle canary <- prod <- canary is refused.
    auto(&mut s, &prod(), "canary", |_| {});
    let e = s
        .apply(
            1,
            Op::UpdatePromote {
                env_id: canary(),
                patch: PromoteBean { pred_stage: Some("prod".into()), ..Default::default() },
                operator: "alice".into(),
            },
        )
        .unwrap_err();
    assert!(e.to_string().contains("canary -> prod -> canary"), "{e}");
    // A partial update keeps the rest; it is in the history with the request's JSON.
    let patch = PromoteBean { delay: Some(15), ..Default::default() };
    let out = s.apply(7, Op::UpdatePromote { env_id: prod(), patch, operator: "bob".into() });
    let Ok(OpOutput::Promote(p)) = out else { panic!("{out:?}") };
    assert_eq!(p.pred_stage.as_deref(), Some("canary"));
    assert_eq!(p.promote_type, Some(PromoteType::Auto));
    assert_eq!(
        (p.delay, p.last_operator.as_deref(), p.last_update),
        (Some(15), Some("bob"), Some(7))
    );
    let h = s.history_of(&prod()).next().unwrap();
    assert_eq!(h.change_type.as_deref(), Some("Env Promote Config"));
    assert!(h.config_change.as_deref().unwrap().contains(r#""delay":15"#));
    // Deleting the stage deletes its config.
    s.apply(8, Op::DeleteEnv { env_name: "svc".into(), stage_name: "prod".into() }).unwrap();
    assert!(s.promote(&prod()).is_none());
}

#[test]
fn effective_build_tags_follow_the_branch() {
    let mut s = world();
    publish(&mut s, "b1", T0, "master");
    publish(&mut s, "f1", T0 + MIN, "feature");
    tag(&mut s, T0 + MIN, "t1", "b1", TagValue::BadBuild);
    publish(&mut s, "b2", T0 + 2 * MIN, "master");
    publish(&mut s, "b3", T0 + 3 * MIN, "master");
    tag(&mut s, T0 + 3 * MIN, "t2", "b3", TagValue::GoodBuild);
    publish(&mut s, "b4", T0 + 4 * MIN, "master");
    let effective = |s: &State, b: &str| {
        let build = s.build(&BuildId::new(b)).unwrap().clone();
        s.effective_tag(&build).map(|t| t.value.unwrap())
    };
    assert_eq!(effective(&s, "b1"), Some(TagValue::BadBuild), "tagged");
    assert_eq!(effective(&s, "b2"), Some(TagValue::BadBuild), "later on the branch");
    assert_eq!(effective(&s, "f1"), None, "another branch");
    assert_eq!(effective(&s, "b3"), Some(TagValue::GoodBuild), "a newer tag wins");
    assert_eq!(effective(&s, "b4"), Some(TagValue::GoodBuild));
    // Two tags on one build: the newer one applies.
    tag(&mut s, T0 + 5 * MIN, "t3", "b3", TagValue::BadBuild);
    assert_eq!(effective(&s, "b4"), Some(TagValue::BadBuild));
    // A BUILD tag targets the build's name and carries the build.
    let t = s.tag(&TagId::new("t1")).unwrap();
    assert_eq!(t.target_id.as_deref(), Some("svc"));
    assert!(t.meta_info.as_deref().unwrap().contains("\"id\":\"b1\""));
    assert_eq!(s.tags_of_target("b1").len(), 1, "found by the tagged build's id");
    assert_eq!(s.tags_of_target("svc").len(), 3, "and by name");
    // Deleting the newest tag restores the previous effect.
    s.apply(0, Op::DeleteTag { tag_id: TagId::new("t3") }).unwrap();
    assert_eq!(effective(&s, "b4"), Some(TagValue::GoodBuild));
    // Bad input: a value that does not fit the target, an unknown build.
    let bad = TagBean {
        id: Some(TagId::new("t9")),
        value: Some(TagValue::EnableEnv),
        target_id: Some("b1".into()),
        ..Default::default()
    };
    let before = s.clone();
    assert!(matches!(s.apply(0, Op::CreateTag { tag: bad }), Err(OpError::Invalid { .. })));
    let missing = TagBean {
        id: Some(TagId::new("t9")),
        value: Some(TagValue::BadBuild),
        target_id: Some("nope".into()),
        ..Default::default()
    };
    assert!(matches!(s.apply(0, Op::CreateTag { tag: missing }), Err(OpError::NotFound { .. })));
    assert_eq!(s, before);
}

/// Promote configs and tags persist and reload into an equal state (derived indexes too).
#[test]
fn promotes_and_tags_round_trip() {
    let mut s = world();
    publish(&mut s, "b1", T0, "master");
    tag(&mut s, T0, "t1", "b1", TagValue::BadBuild);
    tag(&mut s, T0, "t2", "b1", TagValue::CertifiedBuild);
    s.apply(0, Op::DeleteTag { tag_id: TagId::new("t2") }).unwrap();
    deploy(&mut s, T0, &canary(), "c1", "b1");
    auto(&mut s, &prod(), "canary", |p| p.schedule = Some("0 0 * * *".into()));
    let mut records = std::collections::BTreeMap::new();
    for (k, v) in s.take_dirty() {
        match v {
            Some(v) => records.insert(k, v),
            None => records.remove(&k),
        };
    }
    let mut reloaded = State::default();
    for (k, v) in &records {
        reloaded.load_record(k, v).unwrap();
    }
    reloaded.finish_load();
    s.take_changes();
    assert_eq!(reloaded, s);
}
