use proto::beans::{BuildBean, DeployBean, EnvironBean};
use proto::command::{Op, OpError, OpOutput};
use proto::ids::{BuildId, DeployId, EnvId};

use super::State;

fn env(id: &str, name: &str, stage: &str) -> EnvironBean {
    let mut e = EnvironBean {
        id: Some(EnvId::new(id)),
        env_name: Some(name.into()),
        stage_name: Some(stage.into()),
        ..Default::default()
    };
    e.fill_create_defaults();
    e
}

fn build(id: &str, name: &str, published: i64) -> BuildBean {
    BuildBean {
        id: Some(BuildId::new(id)),
        name: Some(name.into()),
        artifact_url: Some(format!("file:///b/{id}")),
        publish_date: Some(published),
        ..Default::default()
    }
}

/// Every case: (operation, what apply must answer).
#[test]
fn apply_table() {
    enum Want {
        Ok,
        Conflict,
        NotFound,
        Invalid,
    }
    let mut patch = EnvironBean { max_parallel: Some(7), ..Default::default() };
    patch.normalize_request().unwrap();
    let cases: Vec<(Op, Want)> = vec![
        (Op::Noop, Want::Ok),
        (Op::CreateEnv { env: env("e1", "svc", "canary") }, Want::Ok),
        (Op::CreateEnv { env: env("e2", "svc", "canary") }, Want::Conflict),
        (Op::CreateEnv { env: env("e1", "svc", "prod") }, Want::Conflict),
        (
            Op::CreateEnv { env: EnvironBean { id: Some(EnvId::new("x")), ..Default::default() } },
            Want::Invalid,
        ),
        (Op::CreateEnv { env: env("e3", "svc", "prod") }, Want::Ok),
        (
            Op::UpdateEnv {
                env_name: "svc".into(),
                stage_name: "prod".into(),
                patch: patch.clone(),
                operator: "op".into(),
            },
            Want::Ok,
        ),
        (
            Op::UpdateEnv {
                env_name: "svc".into(),
                stage_name: "nope".into(),
                patch,
                operator: "op".into(),
            },
            Want::NotFound,
        ),
        (Op::PublishBuild { build: build("b1", "svc", 10) }, Want::Ok),
        (Op::PublishBuild { build: build("b1", "svc", 11) }, Want::Conflict),
        (
            Op::PublishBuild {
                build: BuildBean { id: Some(BuildId::new("b9")), ..Default::default() },
            },
            Want::Invalid,
        ),
        (Op::DeleteBuild { build_id: "nope".into() }, Want::NotFound),
        (Op::DeleteEnv { env_name: "svc".into(), stage_name: "canary".into() }, Want::Ok),
        (Op::DeleteEnv { env_name: "svc".into(), stage_name: "canary".into() }, Want::NotFound),
    ];
    let mut s = State::default();
    for (i, (op, want)) in cases.into_iter().enumerate() {
        let before = s.clone();
        let got = s.apply(1000 + i as i64, op.clone());
        match (want, &got) {
            (Want::Ok, Ok(_)) => {}
            (Want::Conflict, Err(OpError::Conflict { .. }))
            | (Want::NotFound, Err(OpError::NotFound { .. }))
            | (Want::Invalid, Err(OpError::Invalid { .. })) => {
                assert_eq!(s, before, "case {i}: a refused {op:?} changed the state");
            }
            (_, got) => panic!("case {i}: {op:?} answered {got:?}"),
        }
    }
    let prod = s.env("svc", "prod").unwrap();
    assert_eq!(prod.max_parallel, Some(7));
    assert_eq!(prod.max_parallel_pct, Some(0), "one parallelism mode at a time");
    assert_eq!(prod.last_operator.as_deref(), Some("op"));
    assert!(s.env("svc", "canary").is_none());
}

#[test]
fn referenced_builds_cannot_be_deleted() {
    let mut s = State::default();
    s.apply(1, Op::PublishBuild { build: build("b1", "svc", 1) }).unwrap();
    let deploy = DeployBean {
        id: Some(DeployId::new("d1")),
        build_id: Some(BuildId::new("b1")),
        ..Default::default()
    };
    s.load_record(b"d/d1", &postcard::to_stdvec(&deploy).unwrap()).unwrap();
    s.finish_load();
    let err = s.apply(2, Op::DeleteBuild { build_id: "b1".into() }).unwrap_err();
    assert!(matches!(err, OpError::Conflict { .. }), "{err:?}");
    assert!(s.build(&BuildId::new("b1")).is_some());
}

#[test]
fn builds_list_newest_first_per_name() {
    let mut s = State::default();
    for (id, name, t) in [("a", "svc", 5), ("b", "svc", 9), ("c", "other", 7), ("d", "svc", 1)] {
        s.apply(t, Op::PublishBuild { build: build(id, name, t) }).unwrap();
    }
    let ids: Vec<_> =
        s.builds_newest_first(Some("svc")).map(|b| b.id.clone().unwrap().into_string()).collect();
    assert_eq!(ids, ["b", "a", "d"]);
    let all: Vec<_> =
        s.builds_newest_first(None).map(|b| b.id.clone().unwrap().into_string()).collect();
    assert_eq!(all, ["b", "c", "a", "d"]);
    assert_eq!(s.build_names(), ["other", "svc"]);
}

/// Replicas applying the same operations reach the same state, and the persisted records
/// reload into that same state.
#[test]
fn apply_is_deterministic_and_records_round_trip() {
    let ops = vec![
        Op::CreateEnv { env: env("e1", "svc", "canary") },
        Op::PublishBuild { build: build("b1", "svc", 3) },
        Op::CreateEnv { env: env("e2", "svc", "prod") },
        Op::DeleteEnv { env_name: "svc".into(), stage_name: "canary".into() },
    ];
    let mut a = State::default();
    let mut b = State::default();
    let mut disk = std::collections::BTreeMap::new();
    for (i, op) in ops.into_iter().enumerate() {
        let ra = a.apply(i as i64, op.clone());
        let rb = b.apply(i as i64, op);
        assert_eq!(ra, rb);
        for (k, v) in a.take_dirty() {
            match v {
                Some(v) => disk.insert(k, v),
                None => disk.remove(&k),
            };
        }
        b.take_dirty();
    }
    assert_eq!(a, b);
    let mut reloaded = State::default();
    for (k, v) in &disk {
        reloaded.load_record(k, v).unwrap();
    }
    reloaded.finish_load();
    assert_eq!(reloaded, a);
    assert!(matches!(a.apply(9, Op::Noop), Ok(OpOutput::Done)));
    assert!(reloaded.load_record(b"z/x", b"").is_err(), "unknown tables are refused");
}

#[test]
fn config_changes_are_recorded_newest_first_and_bounded() {
    use proto::beans::ConfigHistoryBean as H;
    let mut s = State::default();
    s.apply(1, Op::CreateEnv { env: env("e1", "svc", "prod") }).unwrap();
    let mut patch = EnvironBean { max_parallel: Some(3), ..Default::default() };
    patch.normalize_request().unwrap();
    s.apply(
        2,
        Op::UpdateEnv {
            env_name: "svc".into(),
            stage_name: "prod".into(),
            patch: patch.clone(),
            operator: "alice".into(),
        },
    )
    .unwrap();
    // An update that changes nothing records nothing.
    s.apply(
        3,
        Op::UpdateEnv {
            env_name: "svc".into(),
            stage_name: "prod".into(),
            patch,
            operator: "alice".into(),
        },
    )
    .unwrap();
    s.apply(
        4,
        Op::SetCapacity { env_id: EnvId::new("e1"), hosts: vec!["h1".into()], groups: vec![] },
    )
    .unwrap();
    let h: Vec<_> = s.history_of(&EnvId::new("e1")).collect();
    assert_eq!(h.len(), 2);
    assert_eq!(h[0].change_type.as_deref(), Some(H::TYPE_ENV_HOST_CAPACITY));
    assert_eq!(h[1].change_type.as_deref(), Some(H::TYPE_ENV_GENERAL));
    assert_eq!(h[1].operator.as_deref(), Some("alice"));
    assert!(h[1].config_change.as_deref().unwrap().contains("\"maxParallel\":3"));
    for i in 0..(super::history::MAX_HISTORY_PER_STAGE + 5) {
        let hosts = vec![format!("h{i}")];
        s.apply(10 + i as i64, Op::SetCapacity { env_id: EnvId::new("e1"), hosts, groups: vec![] })
            .unwrap();
    }
    assert_eq!(s.history_of(&EnvId::new("e1")).count(), super::history::MAX_HISTORY_PER_STAGE);
    // And it persists: reloading the records gives the same history.
    let mut disk = std::collections::BTreeMap::new();
    let mut fresh = State::default();
    for (k, v) in s.take_dirty() {
        if let Some(v) = v {
            disk.insert(k, v);
        }
    }
    for (k, v) in &disk {
        fresh.load_record(k, v).unwrap();
    }
    fresh.finish_load();
    assert_eq!(fresh.history_of(&EnvId::new("e1")).count(), super::history::MAX_HISTORY_PER_STAGE);
}
