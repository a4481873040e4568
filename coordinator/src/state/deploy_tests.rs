//! The deploy core driven directly: GoalAnalyst cases, admission, deploy-state rules, and a
//! property test that the parallelism limit holds and the counters equal a recount.

use proto::beans::{BuildBean, DeployBean, EnvironBean};
use proto::command::{Op, OpError, OpOutput};
use proto::enums::{AgentState, AgentStatus, DeployStage, DeployState, EnvState, OpCode};
use proto::ids::{BuildId, DeployId, EnvId, HostId};
use proto::ping::{PingReportBean, PingRequestBean, PingResponseBean};

use super::State;
use super::deploy::max_parallel;

const ENV: &str = "e1";

fn env_id() -> EnvId {
    EnvId::new(ENV)
}

/// A stage `svc/prod` with `hosts` in its capacity, limit `max_parallel`, and build `b1`.
fn stage(hosts: usize, max_parallel: i32) -> State {
    let mut s = State::default();
    let mut env = EnvironBean {
        id: Some(env_id()),
        env_name: Some("svc".into()),
        stage_name: Some("prod".into()),
        max_parallel: Some(max_parallel),
        ..Default::default()
    };
    env.normalize_request().unwrap();
    env.fill_create_defaults();
    s.apply(0, Op::CreateEnv { env }).unwrap();
    for b in ["b1", "b2"] {
        let build = BuildBean {
            id: Some(BuildId::new(b)),
            name: Some("svc".into()),
            artifact_url: Some(format!("file:///{b}")),
            ..Default::default()
        };
        s.apply(0, Op::PublishBuild { build }).unwrap();
    }
    let hosts = (0..hosts).map(|i| format!("h{i}")).collect();
    s.apply(0, Op::SetCapacity { env_id: env_id(), hosts, groups: vec![] }).unwrap();
    s
}

fn deploy(s: &mut State, now: i64, id: &str, build: &str) -> Result<OpOutput, OpError> {
    let expected = s.env_by_id(&env_id()).unwrap().deploy_id.clone();
    let d = DeployBean {
        id: Some(DeployId::new(id)),
        build_id: Some(BuildId::new(build)),
        ..Default::default()
    };
    s.apply(now, Op::CreateDeploy { env_id: env_id(), deploy: d, expected })
}

fn report(deploy: &str, stage: DeployStage, status: AgentStatus) -> PingReportBean {
    PingReportBean {
        deploy_id: Some(DeployId::new(deploy)),
        env_id: Some(env_id()),
        deploy_stage: Some(stage),
        agent_status: Some(status),
        ..Default::default()
    }
}

fn ping(s: &mut State, now: i64, host: &str, reports: Vec<PingReportBean>) -> PingResponseBean {
    let mut req = PingRequestBean::new(HostId::new(host));
    req.host_name = Some(host.into());
    req.reports = reports;
    match s.apply(now, Op::Ping { request: req }).unwrap() {
        OpOutput::Ping(r) => r,
        other => panic!("{other:?}"),
    }
}

fn goal_stage(r: &PingResponseBean) -> Option<DeployStage> {
    r.deploy_goal.as_ref().and_then(|g| g.deploy_stage)
}

/// A Teletraan agent: does what the goal says, reports it, until NOOP.
#[derive(Clone, Debug, Default)]
struct Agent {
    report: Option<PingReportBean>,
}

impl Agent {
    fn step(
        &mut self,
        s: &mut State,
        now: i64,
        host: &str,
        outcome: AgentStatus,
    ) -> PingResponseBean {
        let resp = ping(s, now, host, self.report.clone().into_iter().collect());
        if let Some(g) = &resp.deploy_goal
            && resp.op_code != OpCode::Noop
            && resp.op_code != OpCode::Delete
        {
            let mut r =
                report(g.deploy_id.as_ref().unwrap().as_str(), g.deploy_stage.unwrap(), outcome);
            r.env_id = g.env_id.clone();
            self.report = Some(r);
        }
        if resp.op_code == OpCode::Delete {
            self.report = None;
        }
        resp
    }
}

#[test]
fn goal_analyst_cases() {
    let mut s = stage(3, 1);
    // 0.1: a stage never deployed gives no goal, and the ping writes only the host record.
    let r = ping(&mut s, 1, "h0", vec![]);
    assert_eq!(r.op_code, OpCode::Noop);
    assert!(
        s.plan_ping(2, &{
            let mut q = PingRequestBean::new(HostId::new("h0"));
            q.host_name = Some("h0".into());
            q
        })
        .is_read_only(),
        "a repeated ping that changes nothing writes nothing"
    );

    deploy(&mut s, 10, "d1", "b1").unwrap();
    // 2: new host, first deploy: PRE_DOWNLOAD, bypassing parallelism, script variables cleared.
    let r = ping(&mut s, 11, "h0", vec![]);
    assert_eq!(r.op_code, OpCode::Deploy);
    let g = r.deploy_goal.clone().unwrap();
    assert_eq!(g.deploy_stage, Some(DeployStage::PreDownload));
    assert_eq!(g.first_deploy, Some(true));
    assert_eq!(g.script_variables, Some(Default::default()));
    assert!(g.build.is_none(), "build only at DOWNLOADING");
    // 1.2: success moves to the next stage; the build rides along at DOWNLOADING.
    let r = ping(
        &mut s,
        12,
        "h0",
        vec![report("d1", DeployStage::PreDownload, AgentStatus::Succeeded)],
    );
    assert_eq!(goal_stage(&r), Some(DeployStage::Downloading));
    assert_eq!(r.deploy_goal.unwrap().build.unwrap().id, Some(BuildId::new("b1")));
    // 1.4: a failed-but-retriable stage is repeated.
    let r = ping(
        &mut s,
        13,
        "h0",
        vec![report("d1", DeployStage::Downloading, AgentStatus::ScriptFailed)],
    );
    assert_eq!(goal_stage(&r), Some(DeployStage::Downloading));
    // 1.3: a fatal status pauses the host on this deploy: no goal.
    let r = ping(
        &mut s,
        14,
        "h0",
        vec![report("d1", DeployStage::Downloading, AgentStatus::TooManyRetry)],
    );
    assert_eq!(r.op_code, OpCode::Noop);
    let row = s.agent(&env_id(), &HostId::new("h0")).unwrap();
    assert_eq!(row.state, Some(AgentState::PausedBySystem));
    assert_eq!(row.first_deploy, Some(false), "a failed first deploy ends the first-deploy phase");
    // Host action RESET: restart from PRE_DOWNLOAD (1.0.1).
    s.apply(
        15,
        Op::HostAction {
            env_id: env_id(),
            hosts: vec![HostId::new("h0")],
            state: AgentState::Reset,
        },
    )
    .unwrap();
    let r = ping(
        &mut s,
        16,
        "h0",
        vec![report("d1", DeployStage::Downloading, AgentStatus::TooManyRetry)],
    );
    assert_eq!(goal_stage(&r), Some(DeployStage::PreDownload));
    // 1.1: steady state.
    let mut rows = vec![];
    for st in [
        DeployStage::PreDownload,
        DeployStage::Downloading,
        DeployStage::PostDownload,
        DeployStage::Staging,
        DeployStage::PreRestart,
        DeployStage::Restarting,
        DeployStage::PostRestart,
    ] {
        rows.push(goal_stage(&ping(
            &mut s,
            17,
            "h0",
            vec![report("d1", st, AgentStatus::Succeeded)],
        )));
    }
    assert_eq!(rows.last().unwrap(), &Some(DeployStage::ServingBuild));
    let r = ping(
        &mut s,
        18,
        "h0",
        vec![report("d1", DeployStage::ServingBuild, AgentStatus::Succeeded)],
    );
    assert_eq!(r.op_code, OpCode::Noop);
    // 0.3: a user-paused host gets nothing.
    s.apply(
        19,
        Op::HostAction {
            env_id: env_id(),
            hosts: vec![HostId::new("h0")],
            state: AgentState::PausedByUser,
        },
    )
    .unwrap();
    deploy(&mut s, 20, "d2", "b2").unwrap();
    let r = ping(
        &mut s,
        21,
        "h0",
        vec![report("d1", DeployStage::ServingBuild, AgentStatus::Succeeded)],
    );
    assert_eq!(r.op_code, OpCode::Noop);
    s.apply(
        22,
        Op::HostAction {
            env_id: env_id(),
            hosts: vec![HostId::new("h0")],
            state: AgentState::Normal,
        },
    )
    .unwrap();
    // 1.5: a new deploy starts from steady state after admission.
    let r = ping(
        &mut s,
        23,
        "h0",
        vec![report("d1", DeployStage::ServingBuild, AgentStatus::Succeeded)],
    );
    assert_eq!(goal_stage(&r), Some(DeployStage::PreDownload));
    assert_eq!(r.deploy_goal.unwrap().deploy_id, Some(DeployId::new("d2")));
    // 3: removed from capacity while still reporting: DELETE.
    s.apply(
        24,
        Op::SetCapacity { env_id: env_id(), hosts: vec!["h1".into(), "h2".into()], groups: vec![] },
    )
    .unwrap();
    let r = ping(
        &mut s,
        25,
        "h0",
        vec![report("d2", DeployStage::PreDownload, AgentStatus::Succeeded)],
    );
    assert_eq!(r.op_code, OpCode::Delete);
    // 4: and once it stops reporting, its row goes.
    ping(&mut s, 26, "h0", vec![]);
    assert!(s.agent(&env_id(), &HostId::new("h0")).is_none());
    // 0.2: pause freezes hosts that are not on their first deploy.
    let mut p = EnvironBean { env_state: Some(EnvState::Paused), ..Default::default() };
    p.normalize_request().unwrap();
    s.apply(
        27,
        Op::UpdateEnv {
            env_name: "svc".into(),
            stage_name: "prod".into(),
            patch: p,
            operator: "op".into(),
        },
    )
    .unwrap();
    let r = ping(&mut s, 28, "h1", vec![]);
    assert_eq!(
        goal_stage(&r),
        Some(DeployStage::PreDownload),
        "first deploys proceed while paused"
    );
    let r = ping(
        &mut s,
        29,
        "h1",
        vec![report("d2", DeployStage::PreDownload, AgentStatus::Succeeded)],
    );
    assert_eq!(goal_stage(&r), Some(DeployStage::Downloading));
}

#[test]
fn admission_limits_hosts_and_frees_slots() {
    let mut s = stage(6, 2);
    let mut agents = vec![Agent::default(); 6];
    deploy(&mut s, 1, "d1", "b1").unwrap();
    // First deploy everywhere (bypasses the limit).
    for round in 0..10 {
        for (i, a) in agents.iter_mut().enumerate() {
            a.step(&mut s, 2 + round, &format!("h{i}"), AgentStatus::Succeeded);
        }
    }
    assert!(
        agents
            .iter()
            .all(|a| a.report.as_ref().unwrap().deploy_stage == Some(DeployStage::ServingBuild))
    );
    let d1 = s.deploy(&DeployId::new("d1")).unwrap();
    assert_eq!(d1.state, Some(DeployState::Succeeding));
    assert_eq!(d1.success_total, Some(6));
    // Second deploy: at most 2 hosts at a time.
    deploy(&mut s, 100, "d2", "b2").unwrap();
    assert_eq!(
        s.deploy(&DeployId::new("d1")).unwrap().state,
        Some(DeployState::Succeeded),
        "superseded"
    );
    let mut max_seen = 0;
    for round in 0..40 {
        for (i, a) in agents.iter_mut().enumerate() {
            a.step(&mut s, 101 + round, &format!("h{i}"), AgentStatus::Succeeded);
            let c = s.counters(&env_id());
            assert_eq!(c, s.recount(&env_id()));
            max_seen = max_seen.max(c.active);
            assert!(c.active <= 2, "round {round}: {} deploying", c.active);
        }
    }
    assert_eq!(max_seen, 2, "the limit is used");
    assert!(
        agents.iter().all(|a| a.report.as_ref().unwrap().deploy_id == Some(DeployId::new("d2")))
    );
    assert_eq!(s.deploy(&DeployId::new("d2")).unwrap().state, Some(DeployState::Succeeding));
}

#[test]
fn failed_hosts_keep_their_slot_and_turn_the_deploy_failing() {
    let mut s = stage(4, 1);
    let mut agents = vec![Agent::default(); 4];
    deploy(&mut s, 1, "d1", "b1").unwrap();
    for round in 0..10 {
        for (i, a) in agents.iter_mut().enumerate() {
            a.step(&mut s, 2 + round, &format!("h{i}"), AgentStatus::Succeeded);
        }
    }
    deploy(&mut s, 100, "d2", "b2").unwrap();
    // h0 is admitted and fails fatally; nobody else is admitted while it holds the slot.
    agents[0].step(&mut s, 101, "h0", AgentStatus::TooManyRetry);
    agents[0].step(&mut s, 102, "h0", AgentStatus::TooManyRetry);
    for round in 0..5 {
        for i in 1..4 {
            let r = agents[i].step(&mut s, 103 + round, &format!("h{i}"), AgentStatus::Succeeded);
            assert_eq!(r.op_code, OpCode::Noop, "no slot while the failed host keeps it");
        }
    }
    let d2 = s.deploy(&DeployId::new("d2")).unwrap();
    assert_eq!(
        d2.state,
        Some(DeployState::Failing),
        "one failure exceeds a 100% success threshold"
    );
    assert_eq!(d2.fail_total, Some(1));
}

#[test]
fn expired_lease_frees_the_slot_and_the_host_must_be_readmitted() {
    let mut s = stage(2, 1);
    let mut agents = vec![Agent::default(); 2];
    deploy(&mut s, 1, "d1", "b1").unwrap();
    for round in 0..10 {
        for (i, a) in agents.iter_mut().enumerate() {
            a.step(&mut s, 2 + round, &format!("h{i}"), AgentStatus::Succeeded);
        }
    }
    deploy(&mut s, 100, "d2", "b2").unwrap();
    let r = agents[0].step(&mut s, 101, "h0", AgentStatus::Succeeded);
    assert_eq!(goal_stage(&r), Some(DeployStage::PreDownload));
    let r = agents[1].step(&mut s, 102, "h1", AgentStatus::Succeeded);
    assert_eq!(r.op_code, OpCode::Noop, "h0 holds the only slot");
    // h0 goes silent; the leader expires its lease.
    let key = (env_id(), HostId::new("h0"));
    assert_eq!(s.slot_holders().map(|(k, _)| k.clone()).collect::<Vec<_>>(), vec![key.clone()]);
    s.apply(200, Op::ExpireLeases { keys: vec![key.clone()] }).unwrap();
    assert_eq!(
        s.agent(&env_id(), &HostId::new("h0")).unwrap().state,
        Some(AgentState::Unreachable)
    );
    assert_eq!(s.counters(&env_id()), s.recount(&env_id()));
    assert_eq!(s.counters(&env_id()).active, 0, "{:?}", s.agents_of(&env_id()).collect::<Vec<_>>());
    let r = agents[1].step(&mut s, 201, "h1", AgentStatus::Succeeded);
    assert_eq!(goal_stage(&r), Some(DeployStage::PreDownload), "the freed slot is reused");
    // h0 returns having finished its step: no slot, so no next step, and it does not count.
    let r = agents[0].step(&mut s, 202, "h0", AgentStatus::Succeeded);
    assert_eq!(r.op_code, OpCode::Noop, "not re-admitted while h1 holds the slot");
    assert_eq!(
        s.agent(&env_id(), &HostId::new("h0")).unwrap().state,
        Some(AgentState::Unreachable)
    );
    assert_eq!(s.counters(&env_id()), s.recount(&env_id()));
    assert_eq!(s.counters(&env_id()).active, 1);
    // h1 finishes; h0 is admitted again and continues where it was.
    for round in 0..10 {
        agents[1].step(&mut s, 300 + round, "h1", AgentStatus::Succeeded);
    }
    let r = agents[0].step(&mut s, 400, "h0", AgentStatus::Succeeded);
    assert_eq!(goal_stage(&r), Some(DeployStage::Downloading));
    assert_eq!(s.agent(&env_id(), &HostId::new("h0")).unwrap().state, Some(AgentState::Normal));
    // Expiring a host that holds no slot changes nothing.
    let before = s.clone();
    s.apply(401, Op::ExpireLeases { keys: vec![(env_id(), HostId::new("h1"))] }).unwrap();
    assert_eq!(s.agent(&env_id(), &HostId::new("h1")), before.agent(&env_id(), &HostId::new("h1")));
}

#[test]
fn rollback_alias_counts_hosts_that_never_left_the_target() {
    let mut s = stage(3, 1);
    let mut agents = vec![Agent::default(); 3];
    deploy(&mut s, 1, "d1", "b1").unwrap();
    for round in 0..10 {
        for (i, a) in agents.iter_mut().enumerate() {
            a.step(&mut s, 2 + round, &format!("h{i}"), AgentStatus::Succeeded);
        }
    }
    // d2 reaches only h0 before it is rolled back.
    deploy(&mut s, 100, "d2", "b2").unwrap();
    for round in 0..10 {
        agents[0].step(&mut s, 101 + round, "h0", AgentStatus::Succeeded);
    }
    assert_eq!(agents[0].report.as_ref().unwrap().deploy_id, Some(DeployId::new("d2")));
    let rb = DeployBean {
        id: Some(DeployId::new("d3")),
        build_id: Some(BuildId::new("b1")),
        deploy_type: Some(proto::enums::DeployType::Rollback),
        alias: Some(DeployId::new("d1")),
        ..Default::default()
    };
    let expected = Some(DeployId::new("d2"));
    s.apply(200, Op::CreateDeploy { env_id: env_id(), deploy: rb, expected }).unwrap();
    // h1 never left d1: recorded under d3 without redeploying.
    let r = agents[1].step(&mut s, 201, "h1", AgentStatus::Succeeded);
    assert_eq!(r.op_code, OpCode::Noop, "no redeploy for a host already on the target");
    assert_eq!(
        s.agent(&env_id(), &HostId::new("h1")).unwrap().deploy_id,
        Some(DeployId::new("d3"))
    );
    agents[2].step(&mut s, 202, "h2", AgentStatus::Succeeded);
    // h0 is on the bad build: it redeploys the old one with opCode ROLLBACK.
    let r = agents[0].step(&mut s, 203, "h0", AgentStatus::Succeeded);
    assert_eq!(r.op_code, OpCode::Rollback);
    assert_eq!(goal_stage(&r), Some(DeployStage::PreDownload));
    for round in 0..10 {
        let r = agents[0].step(&mut s, 204 + round, "h0", AgentStatus::Succeeded);
        if goal_stage(&r) == Some(DeployStage::Downloading) {
            assert_eq!(r.deploy_goal.unwrap().build.unwrap().id, Some(BuildId::new("b1")));
        }
    }
    let d3 = s.deploy(&DeployId::new("d3")).unwrap();
    assert_eq!(d3.success_total, Some(3), "{d3:?}");
    assert_eq!(d3.state, Some(DeployState::Succeeding));
    assert_eq!(s.deploy(&DeployId::new("d2")).unwrap().state, Some(DeployState::Aborted));
}

#[test]
fn goals_carry_script_variables_and_stage_scoped_agent_configs() {
    use proto::command::EnvConfigKind;
    let mut s = stage(1, 1);
    let vars = [("PORT".to_string(), "8081".to_string())].into_iter().collect();
    s.apply(
        1,
        Op::SetEnvConfig {
            env_id: env_id(),
            kind: EnvConfigKind::Script,
            values: vars,
            operator: "op".into(),
        },
    )
    .unwrap();
    let cfg = [("prod.max_retry", "5"), ("canary.max_retry", "1"), ("timeout", "30")]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    s.apply(
        2,
        Op::SetEnvConfig {
            env_id: env_id(),
            kind: EnvConfigKind::Agent,
            values: cfg,
            operator: "op".into(),
        },
    )
    .unwrap();
    deploy(&mut s, 3, "d1", "b1").unwrap();
    let g = ping(&mut s, 4, "h0", vec![]).deploy_goal.unwrap();
    assert_eq!(g.script_variables.unwrap()["PORT"], "8081");
    let ac = g.agent_configs.unwrap();
    assert_eq!(ac["max_retry"], "5", "this stage's prefixed key, prefix stripped");
    assert_eq!(ac["canary.max_retry"], "1", "other stages' keys pass unchanged (Teletraan)");
    assert_eq!(ac["timeout"], "30");
    let g =
        ping(&mut s, 5, "h0", vec![report("d1", DeployStage::PreDownload, AgentStatus::Succeeded)])
            .deploy_goal
            .unwrap();
    assert!(g.script_variables.is_none(), "script variables only at PRE_DOWNLOAD");
    // PUT /v1/deploys: acceptance and description only.
    let out = s
        .apply(
            6,
            Op::UpdateDeploy {
                deploy_id: DeployId::new("d1"),
                acceptance_status: Some(proto::enums::AcceptanceStatus::Rejected),
                description: Some("bad".into()),
            },
        )
        .unwrap();
    let OpOutput::Deploy(d) = out else { panic!() };
    assert_eq!(d.acceptance_status, Some(proto::enums::AcceptanceStatus::Rejected));
    assert!(matches!(
        s.apply(
            7,
            Op::UpdateDeploy {
                deploy_id: DeployId::new("nope"),
                acceptance_status: None,
                description: None
            }
        ),
        Err(OpError::NotFound { .. })
    ));
}

#[test]
fn deploy_state_rules() {
    let mut s = stage(0, 1);
    // An empty stage: nothing to deploy to, so SUCCEEDING at once (Teletraan's rule, kept).
    let OpOutput::Deploy(d) = deploy(&mut s, 1, "d1", "b1").unwrap() else { panic!() };
    assert_eq!(d.state, Some(DeployState::Succeeding));
    assert_eq!(d.acceptance_status, Some(proto::enums::AcceptanceStatus::Accepted));
    // Compare-and-set: a deploy that expected another current deploy is refused.
    let stale = DeployBean {
        id: Some(DeployId::new("dx")),
        build_id: Some(BuildId::new("b1")),
        ..Default::default()
    };
    let err = s
        .apply(2, Op::CreateDeploy { env_id: env_id(), deploy: stale, expected: None })
        .unwrap_err();
    assert!(matches!(err, OpError::Conflict { .. }), "{err:?}");
    // Wrong build name is refused.
    let other = BuildBean {
        id: Some(BuildId::new("o1")),
        name: Some("other".into()),
        ..Default::default()
    };
    s.apply(3, Op::PublishBuild { build: other }).unwrap();
    assert!(matches!(deploy(&mut s, 4, "d9", "o1"), Err(OpError::Invalid { .. })));

    // Stuck: no progress for stuckThreshold seconds turns RUNNING into FAILING (tick).
    let mut s = stage(2, 1);
    deploy(&mut s, 0, "d1", "b1").unwrap();
    let mut a = Agent::default();
    a.step(&mut s, 1, "h0", AgentStatus::Succeeded);
    a.step(&mut s, 2, "h0", AgentStatus::ScriptFailed);
    assert_eq!(s.deploy(&DeployId::new("d1")).unwrap().state, Some(DeployState::Running));
    assert!(!s.tick_needed(100_000));
    assert!(s.tick_needed(700_000), "600 s without progress");
    s.apply(700_000, Op::Tick).unwrap();
    assert_eq!(s.deploy(&DeployId::new("d1")).unwrap().state, Some(DeployState::Failing));
}

#[test]
fn max_parallel_modes() {
    let mut env =
        EnvironBean { max_parallel: Some(5), max_parallel_pct: Some(0), ..Default::default() };
    assert_eq!(max_parallel(&env, 100), 5);
    assert_eq!(max_parallel(&env, 3), 3, "never more than the hosts there are");
    assert_eq!(max_parallel(&env, 0), 1, "quirk fixed: an empty stage does not block with 0");
    env.max_parallel = Some(0);
    env.max_parallel_pct = Some(10);
    assert_eq!(max_parallel(&env, 1000), 100);
    assert_eq!(max_parallel(&env, 5), 1);
    env.max_parallel = Some(50);
    assert_eq!(max_parallel(&env, 1000), 50, "both set: the smaller");
}

mod property {
    use proptest::prelude::*;

    use super::*;

    #[derive(Debug, Clone)]
    enum Event {
        Ping { host: usize, outcome: u8 },
        Deploy,
        Pause { host: usize },
        Reset { host: usize },
        Resume { host: usize },
        Expire { host: usize },
        Stop { host: usize },
        Tick,
    }

    fn event() -> impl Strategy<Value = Event> {
        prop_oneof![
            8 => (0..8usize, 0..10u8).prop_map(|(host, outcome)| Event::Ping { host, outcome }),
            1 => Just(Event::Deploy),
            1 => (0..8usize).prop_map(|host| Event::Pause { host }),
            1 => (0..8usize).prop_map(|host| Event::Reset { host }),
            1 => (0..8usize).prop_map(|host| Event::Resume { host }),
            1 => (0..8usize).prop_map(|host| Event::Expire { host }),
            1 => Just(Event::Tick),
            1 => (0..8usize).prop_map(|host| Event::Stop { host }),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]
        /// Over random pings, failures, host actions and deploys, the stage never has more hosts
        /// deploying than its limit (once first deploys are done), and the incremental counters
        /// always equal a recount. Replaying the same events on a replica gives the same state.
        #[test]
        fn limit_holds_and_counters_match(events in proptest::collection::vec(event(), 1..300)) {
            let limit = 2;
            let mut s = stage(8, limit);
            let mut replica = s.clone();
            let mut agents = vec![Agent::default(); 8];
            let mut n = 0;
            deploy(&mut s, 0, "d0", "b1").unwrap();
            deploy(&mut replica, 0, "d0", "b1").unwrap();
            // First deploys bypass the limit by design (Teletraan's rule); bring every host to
            // steady state first so that every later deploy step needs admission.
            for round in 0..10 {
                for (i, a) in agents.iter_mut().enumerate() {
                    let mut shadow = a.clone();
                    a.step(&mut s, round, &format!("h{i}"), AgentStatus::Succeeded);
                    shadow.step(&mut replica, round, &format!("h{i}"), AgentStatus::Succeeded);
                }
            }
            prop_assert_eq!(s.counters(&env_id()).active, 0);
            let mut now = 1;
            for e in events {
                now += 1000;
                match e {
                    Event::Ping { host, outcome } => {
                        let status = match outcome {
                            0 => AgentStatus::TooManyRetry,
                            1 => AgentStatus::ScriptFailed,
                            _ => AgentStatus::Succeeded,
                        };
                        let before = agents[host].clone();
                        agents[host].step(&mut s, now, &format!("h{host}"), status);
                        let mut shadow = before;
                        shadow.step(&mut replica, now, &format!("h{host}"), status);
                    }
                    Event::Deploy => {
                        n += 1;
                        let b = if n % 2 == 0 { "b1" } else { "b2" };
                        deploy(&mut s, now, &format!("d{n}"), b).unwrap();
                        deploy(&mut replica, now, &format!("d{n}"), b).unwrap();
                    }
                    Event::Pause { host } | Event::Reset { host } | Event::Resume { host } => {
                        let state = match e {
                            Event::Pause { .. } => AgentState::PausedByUser,
                            Event::Reset { .. } => AgentState::Reset,
                            _ => AgentState::Normal,
                        };
                        let op = Op::HostAction { env_id: env_id(), hosts: vec![HostId::new(format!("h{host}"))], state };
                        let a = s.apply(now, op.clone());
                        let b = replica.apply(now, op);
                        prop_assert_eq!(a, b);
                    }
                    Event::Stop { host } => {
                        let op = Op::StopHosts { env_id: env_id(), hosts: vec![HostId::new(format!("h{host}"))] };
                        let a = s.apply(now, op.clone());
                        let b = replica.apply(now, op);
                        prop_assert_eq!(a, b);
                    }
                    Event::Tick => {
                        s.apply(now, Op::Tick).unwrap();
                        replica.apply(now, Op::Tick).unwrap();
                    }
                    Event::Expire { host } => {
                        let op = Op::ExpireLeases { keys: vec![(env_id(), HostId::new(format!("h{host}")))] };
                        s.apply(now, op.clone()).unwrap();
                        replica.apply(now, op).unwrap();
                    }
                }
                let c = s.counters(&env_id());
                prop_assert_eq!(c, s.recount(&env_id()));
                prop_assert_eq!(s.progress(&env_id()), s.recount_progress(&env_id()));
                // Stopping hosts bypass admission (Teletraan's rule) but take slots from it: the
                // limit binds the hosts running deploy steps.
                let deploying = s
                    .agents_of(&env_id())
                    .filter(|a| crate::state::deploy::contribution(a).active == 1)
                    .filter(|a| !crate::state::deploy::is_stop_work(a))
                    .count() as u32;
                prop_assert!(deploying <= limit as u32, "{} deploying, limit {}", deploying, limit);
                prop_assert_eq!(s.take_dirty(), replica.take_dirty());
            }
            prop_assert_eq!(s, replica);
        }
    }
}

#[test]
fn error_output_is_kept_per_host_and_stage_and_written_only_when_it_changes() {
    let mut s = stage(1, 1);
    deploy(&mut s, 1, "d1", "b1").unwrap();
    ping(&mut s, 2, "h0", vec![]);
    let mut failed = report("d1", DeployStage::Restarting, AgentStatus::TooManyRetry);
    failed.error_code = Some(3);
    failed.error_message = Some("boom: port 8000 in use\n".into());
    let mut req = PingRequestBean::new(HostId::new("h0"));
    req.host_name = Some("h0".into());
    req.reports = vec![failed.clone()];
    assert!(!s.plan_ping(3, &req).is_read_only(), "new error output must be written");
    ping(&mut s, 3, "h0", vec![failed.clone()]);
    assert_eq!(s.agent_error(&env_id(), "h0"), Some("boom: port 8000 in use\n"));
    assert!(s.plan_ping(4, &req).errors.is_empty(), "the same output is not written twice");

    failed.error_message = Some("é".repeat(super::deploy::MAX_AGENT_ERROR_BYTES));
    ping(&mut s, 5, "h0", vec![failed]);
    let kept = s.agent_error(&env_id(), "h0").unwrap();
    assert!(kept.len() <= super::deploy::MAX_AGENT_ERROR_BYTES && kept.starts_with('é'));
}

#[test]
fn liveness_is_recorded_and_stale_hosts_without_a_slot_turn_unreachable() {
    let mut s = stage(2, 1);
    deploy(&mut s, 1, "d1", "b1").unwrap();
    let (mut a0, mut a1) = (Agent::default(), Agent::default());
    // First deploys bypass the limit: both hosts reach SERVING_BUILD.
    for t in 2..40 {
        a0.step(&mut s, t, "h0", AgentStatus::Succeeded);
        a1.step(&mut s, t, "h1", AgentStatus::Succeeded);
    }
    let row = |s: &State, h: &str| s.agent(&env_id(), &HostId::new(h)).cloned().unwrap();
    assert_eq!(row(&s, "h1").deploy_stage, Some(DeployStage::ServingBuild));

    let seen = vec![("h0".to_string(), 1_000), ("nobody".to_string(), 5)];
    s.apply(50, Op::RecordLiveness { seen, unreachable: vec![] }).unwrap();
    assert_eq!(s.host("h0").unwrap().last_seen_ms, Some(1_000));
    assert!(s.host("nobody").is_none(), "unknown hosts are not created");
    let older = vec![("h0".to_string(), 900)];
    s.apply(51, Op::RecordLiveness { seen: older, unreachable: vec![] }).unwrap();
    assert_eq!(s.host("h0").unwrap().last_seen_ms, Some(1_000), "never goes back");
    ping(&mut s, 52, "h0", a0.report.clone().into_iter().collect());
    assert_eq!(s.host("h0").unwrap().last_seen_ms, Some(1_000), "a ping itself writes no liveness");

    // A new deploy: h0 takes the only slot; then both hosts fall silent.
    deploy(&mut s, 60, "d2", "b2").unwrap();
    a0.step(&mut s, 61, "h0", AgentStatus::Succeeded);
    a0.step(&mut s, 62, "h0", AgentStatus::Succeeded);
    assert_eq!(row(&s, "h0").deploy_id, Some(DeployId::new("d2")));
    let stale = vec!["h0".to_string(), "h1".to_string()];
    assert!(s.has_markable_rows("h1") && !s.has_markable_rows("h0"));
    s.apply(70, Op::RecordLiveness { seen: vec![], unreachable: stale }).unwrap();
    assert_eq!(row(&s, "h1").state, Some(AgentState::Unreachable), "silent, no slot");
    assert_ne!(
        row(&s, "h0").state,
        Some(AgentState::Unreachable),
        "a slot holder loses its slot only through lease expiry"
    );
    assert!(!s.has_markable_rows("h1"), "marked once");

    // h1 comes back still serving d1: it is a host again, waiting for its slot.
    let resp = a1.step(&mut s, 80, "h1", AgentStatus::Succeeded);
    assert_ne!(row(&s, "h1").state, Some(AgentState::Unreachable), "{resp:?}");
}

/// A second stage `side/prod` (id `e2`, system priority `priority`) with `hosts`, deployed.
fn add_side_stage(s: &mut State, hosts: &[&str], priority: i32) {
    let mut env = EnvironBean {
        id: Some(EnvId::new("e2")),
        env_name: Some("side".into()),
        stage_name: Some("prod".into()),
        build_name: Some("svc".into()),
        system_priority: Some(priority),
        ..Default::default()
    };
    env.normalize_request().unwrap();
    env.fill_create_defaults();
    s.apply(0, Op::CreateEnv { env }).unwrap();
    let hosts = hosts.iter().map(|h| h.to_string()).collect();
    s.apply(0, Op::SetCapacity { env_id: EnvId::new("e2"), hosts, groups: vec![] }).unwrap();
    let d = DeployBean {
        id: Some(DeployId::new("s1")),
        build_id: Some(BuildId::new("b1")),
        ..Default::default()
    };
    s.apply(1, Op::CreateDeploy { env_id: EnvId::new("e2"), deploy: d, expected: None }).unwrap();
}

#[test]
fn stop_walks_stopping_then_stopped_and_fatal_pauses() {
    let mut s = stage(3, 1);
    let mut agents = vec![Agent::default(); 3];
    deploy(&mut s, 1, "d1", "b1").unwrap();
    for round in 0..10 {
        for (i, a) in agents.iter_mut().enumerate() {
            a.step(&mut s, 2 + round, &format!("h{i}"), AgentStatus::Succeeded);
        }
    }
    let stop = |hosts: &[&str]| Op::StopHosts {
        env_id: env_id(),
        hosts: hosts.iter().map(|h| HostId::new(*h)).collect(),
    };
    // A host without a row on the stage: refused as a whole, nothing changes.
    let before = s.clone();
    assert!(matches!(s.apply(20, stop(&["h0", "nope"])), Err(OpError::NotFound { .. })));
    assert_eq!(s, before);

    s.apply(20, stop(&["h0", "h1"])).unwrap();
    let row = |s: &State, h: &str| s.agent(&env_id(), &HostId::new(h)).cloned().unwrap();
    assert_eq!(row(&s, "h0").state, Some(AgentState::Stop));
    assert_eq!(s.counters(&env_id()).active, 2, "stopping hosts count as deploying");
    assert_eq!(s.counters(&env_id()), s.recount(&env_id()));

    // (host, outcome of the goal it gets) → (opcode, goal stage, row state after the ping).
    let cases: &[(&str, AgentStatus, OpCode, Option<DeployStage>, AgentState)] = &[
        // not yet STOPPING: STOP at STOPPING, bypassing admission
        ("h0", AgentStatus::Succeeded, OpCode::Stop, Some(DeployStage::Stopping), AgentState::Stop),
        // STOPPING + SUCCEEDED → STOPPED (the env's opcode; the agent runs an optional hook)
        (
            "h0",
            AgentStatus::Succeeded,
            OpCode::Deploy,
            Some(DeployStage::Stopped),
            AgentState::Stop,
        ),
        // STOPPED → nothing, forever
        ("h0", AgentStatus::Succeeded, OpCode::Noop, None, AgentState::Stop),
        ("h0", AgentStatus::Succeeded, OpCode::Noop, None, AgentState::Stop),
        (
            "h1",
            AgentStatus::ScriptFailed,
            OpCode::Stop,
            Some(DeployStage::Stopping),
            AgentState::Stop,
        ),
        // STOPPING + a non-fatal failure → STOPPING again
        (
            "h1",
            AgentStatus::TooManyRetry,
            OpCode::Stop,
            Some(DeployStage::Stopping),
            AgentState::Stop,
        ),
        // STOPPING + fatal → PAUSED_BY_SYSTEM, nothing more
        ("h1", AgentStatus::Succeeded, OpCode::Noop, None, AgentState::PausedBySystem),
        ("h1", AgentStatus::Succeeded, OpCode::Noop, None, AgentState::PausedBySystem),
    ];
    for (i, (host, status, op, stage, state)) in cases.iter().enumerate() {
        let a = &mut agents[if *host == "h0" { 0 } else { 1 }];
        let r = a.step(&mut s, 30 + i as i64, host, *status);
        assert_eq!(r.op_code, *op, "case {i}");
        assert_eq!(goal_stage(&r), *stage, "case {i}");
        assert_eq!(row(&s, host).state, Some(*state), "case {i}");
        assert_eq!(s.counters(&env_id()), s.recount(&env_id()), "case {i}");
    }
    assert_eq!(row(&s, "h0").deploy_stage, Some(DeployStage::Stopped));
    // A STOPPED host holds no slot; the failed stop (PAUSED_BY_SYSTEM) keeps its slot.
    assert_eq!(s.counters(&env_id()).active, 1);
    // A new deploy leaves stopped hosts alone.
    deploy(&mut s, 100, "d2", "b2").unwrap();
    assert_eq!(agents[0].step(&mut s, 101, "h0", AgentStatus::Succeeded).op_code, OpCode::Noop);
    // Stopping again is a no-op for rows already STOP.
    s.apply(102, stop(&["h0"])).unwrap();
    assert_eq!(row(&s, "h0").deploy_stage, Some(DeployStage::Stopped));
    // Resetting the failed stop makes h1 a deploying host again: it needs a free slot, and
    // the one slot is held by h1's own failed stop, so it is refused.
    let reset = Op::HostAction {
        env_id: env_id(),
        hosts: vec![HostId::new("h1")],
        state: AgentState::Reset,
    };
    assert!(matches!(s.apply(103, reset), Err(OpError::Conflict { .. })));
}

#[test]
fn stop_reaches_every_stage_of_the_host_and_stops_come_first() {
    let mut s = stage(2, 1);
    deploy(&mut s, 1, "d1", "b1").unwrap();
    let mut a = Agent::default();
    for round in 0..10 {
        a.step(&mut s, 2 + round, "h0", AgentStatus::Succeeded);
    }
    // h0 joins a sidecar stage and is admitted there (first deploy: PRE_DOWNLOAD).
    add_side_stage(&mut s, &["h0"], 10);
    let mut side = Agent::default();
    let r = side.step(&mut s, 20, "h0", AgentStatus::Succeeded);
    assert_eq!(r.deploy_goal.as_ref().unwrap().env_id, Some(EnvId::new("e2")));
    assert_eq!(goal_stage(&r), Some(DeployStage::PreDownload));

    // Stopping h0 on svc/prod stops it on side/prod too, and stopping beats an in-flight deploy.
    s.apply(30, Op::StopHosts { env_id: env_id(), hosts: vec![HostId::new("h0")] }).unwrap();
    for e in [env_id(), EnvId::new("e2")] {
        assert_eq!(s.agent(&e, &HostId::new("h0")).unwrap().state, Some(AgentState::Stop));
    }
    // Among STOP candidates the larger priority value goes first: svc (NORMAL, 3000) stops
    // before the sidecar (10).
    let reports: Vec<PingReportBean> =
        [&a, &side].iter().filter_map(|x| x.report.clone()).collect();
    let r = ping(&mut s, 31, "h0", reports);
    assert_eq!(r.op_code, OpCode::Stop);
    assert_eq!(r.deploy_goal.as_ref().unwrap().env_id, Some(env_id()));
}

#[test]
fn all_deploy_candidates_lists_every_install_candidate_with_its_build_and_writes_nothing() {
    let mut s = stage(2, 1);
    deploy(&mut s, 1, "d1", "b1").unwrap();
    add_side_stage(&mut s, &["h0"], 10);
    let mut req = PingRequestBean::new(HostId::new("h0"));
    req.host_name = Some("h0".into());
    let before = s.clone();
    let all = s.deploy_candidates(5, &req);
    assert_eq!(s, before, "read-only");
    // Both stages are candidates (first deploys), the sidecar (priority 10) first.
    let envs: Vec<_> = all.iter().map(|r| r.deploy_goal.as_ref().unwrap().env_id.clone()).collect();
    assert_eq!(envs, vec![Some(EnvId::new("e2")), Some(env_id())]);
    for r in &all {
        let g = r.deploy_goal.as_ref().unwrap();
        assert_eq!(g.deploy_stage, Some(DeployStage::PreDownload));
        assert_eq!(g.build.as_ref().unwrap().id, Some(BuildId::new("b1")), "build always filled");
    }
    // The ping itself answers with the first of them, without the build.
    let r = ping(&mut s, 6, "h0", vec![]);
    assert_eq!(r.deploy_goal.as_ref().unwrap().env_id, Some(EnvId::new("e2")));
    assert!(r.deploy_goal.as_ref().unwrap().build.is_none());
    // A host with nothing to do has no candidates.
    let mut idle = PingRequestBean::new(HostId::new("zz"));
    idle.host_name = Some("zz".into());
    assert!(s.deploy_candidates(7, &idle).is_empty());
}
