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
    /// Sent as `ec2Tags` `{"az": ...}` when set.
    az: Option<String>,
}

impl Agent {
    fn step(
        &mut self,
        s: &mut State,
        now: i64,
        host: &str,
        outcome: AgentStatus,
    ) -> PingResponseBean {
        let mut req = PingRequestBean::new(HostId::new(host));
        req.host_name = Some(host.into());
        req.reports = self.report.clone().into_iter().collect();
        req.ec2_tags = self.az.as_ref().map(|z| format!(r#"{{"az":"{z}"}}"#));
        let resp = match s.apply(now, Op::Ping { request: req }).unwrap() {
            OpOutput::Ping(r) => r,
            other => panic!("{other:?}"),
        };
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
fn admissions_and_lease_expiries_are_tallied_per_stage() {
    let mut s = stage(2, 1);
    let mut agents = vec![Agent::default(); 2];
    let prod = || std::collections::BTreeMap::from([(("svc".to_string(), "prod".to_string()), 1)]);
    deploy(&mut s, 1, "d1", "b1").unwrap();
    for round in 0..10 {
        for (i, a) in agents.iter_mut().enumerate() {
            a.step(&mut s, 2 + round, &format!("h{i}"), AgentStatus::Succeeded);
        }
    }
    // First deploys take a slot outside the limit: each host is admitted once, not per step.
    let first = s.take_changes();
    assert_eq!(first.admitted.values().sum::<u32>(), 2, "{first:?}");
    deploy(&mut s, 100, "d2", "b2").unwrap();
    agents[0].step(&mut s, 101, "h0", AgentStatus::Succeeded);
    let r = agents[1].step(&mut s, 102, "h1", AgentStatus::Succeeded);
    assert_eq!(r.op_code, OpCode::Noop, "h1 waits");
    let c = s.take_changes();
    assert_eq!(c.admitted, prod(), "only h0 took the slot");
    assert!(c.leases_expired.is_empty());
    s.apply(200, Op::ExpireLeases { keys: vec![(env_id(), HostId::new("h0"))] }).unwrap();
    let c = s.take_changes();
    assert_eq!(c.leases_expired, prod());
    assert!(c.admitted.is_empty());
    // h1 takes the freed slot, then walks on without being admitted again.
    for round in 0..3 {
        agents[1].step(&mut s, 201 + round, "h1", AgentStatus::Succeeded);
    }
    assert_eq!(s.take_changes().admitted, prod());
    // Expiring a host that holds no slot tallies nothing.
    s.apply(300, Op::ExpireLeases { keys: vec![(env_id(), HostId::new("h0"))] }).unwrap();
    assert!(s.take_changes().leases_expired.is_empty());
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
        Override { session: i32 },
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
            1 => (1..4i32).prop_map(|session| Event::Override { session }),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]
        /// Over random pings, failures, host actions and deploys, the stage never has more hosts
        /// deploying than its limit (once first deploys are done), and the incremental counters
        /// always equal a recount. Replaying the same events on a replica gives the same state.
        /// With a deploy constraint (tag `az`, maxParallel 1) and a schedule (2 then 3 hosts,
        /// cooldowns 1 min and until override): no tag value has more than one host deploying,
        /// and a host leaves steady state for the current deploy only when the schedule and the
        /// constraint admitted it at that moment.
        #[test]
        fn limit_holds_and_counters_match(
            events in proptest::collection::vec(event(), 1..300),
            group_by_group in any::<bool>(),
        ) {
            let limit = 2;
            let mut s = stage(8, limit);
            let ty = if group_by_group {
                proto::enums::DeployConstraintType::GroupByGroup
            } else {
                proto::enums::DeployConstraintType::AllGroupsInParallel
            };
            let constraint = Op::SetConstraint {
                env_id: env_id(),
                constraint: Some(proto::beans::DeployConstraintBean {
                    id: Some(proto::ids::ConstraintId::new("c1")),
                    constraint_key: Some("az".into()),
                    max_parallel: Some(1),
                    constraint_type: Some(ty),
                    ..Default::default()
                }),
            };
            s.apply(0, constraint).unwrap();
            let schedule = Op::SetSchedule {
                env_id: env_id(),
                schedule: Some(proto::beans::ScheduleBean {
                    id: Some(proto::ids::ScheduleId::new("s1")),
                    total_sessions: Some(2),
                    host_numbers: Some("2,3".into()),
                    cooldown_times: Some("1,-1".into()),
                    ..Default::default()
                }),
            };
            s.apply(0, schedule).unwrap();
            let mut replica = s.clone();
            let mut agents = vec![Agent::default(); 8];
            for (i, a) in agents.iter_mut().enumerate() {
                a.az = Some(["a", "b", "c"][i % 3].to_string());
            }
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
                        let key = HostId::new(format!("h{host}"));
                        let row_before = s.agent(&env_id(), &key).cloned();
                        // The schedule's rule, recounted naively (the per-az cap is checked
                        // on the whole state below).
                        use proto::enums::ScheduleState;
                        let admits = match s.schedule(&env_id()).and_then(|b| b.state) {
                            Some(ScheduleState::CoolingDown) => false,
                            Some(ScheduleState::Running) => {
                                s.recount_progress(&env_id()).on_deploy
                                    < s.session_cap(&env_id()).unwrap()
                            }
                            _ => true,
                        };
                        agents[host].step(&mut s, now, &format!("h{host}"), status);
                        let current = s.env_by_id(&env_id()).unwrap().deploy_id.clone();
                        let row_after = s.agent(&env_id(), &key).cloned();
                        let left_steady = row_before.as_ref().is_some_and(|r| {
                            r.deploy_stage == Some(DeployStage::ServingBuild)
                                && r.first_deploy != Some(true)
                        }) && row_after.as_ref().is_some_and(|r| {
                            r.deploy_id == current
                                && r.deploy_stage == Some(DeployStage::PreDownload)
                        });
                        prop_assert!(!left_steady || admits, "h{} admitted past the schedule or constraint", host);
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
                    Event::Override { session } => {
                        let op = Op::OverrideSchedule { env_id: env_id(), session };
                        let a = s.apply(now, op.clone());
                        let b = replica.apply(now, op);
                        prop_assert_eq!(a, b);
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
                prop_assert_eq!(s.tag_counts(&env_id()), s.recount_tags(&env_id()));
                let mut per_az = std::collections::BTreeMap::new();
                for a in s.agents_of(&env_id()) {
                    if crate::state::deploy::contribution(a).active == 1
                        && !crate::state::deploy::is_stop_work(a)
                    {
                        let h = a.host_id.clone().unwrap();
                        let az = s.host_tag(&env_id(), &h).unwrap().tag_value.clone().unwrap();
                        *per_az.entry(az).or_insert(0u32) += 1;
                    }
                }
                prop_assert!(per_az.values().all(|n| *n <= 1), "per az: {:?}", per_az);
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

// ----- schedules (waves) and deploy constraints ------------------------------------------------

mod waves {
    use proto::beans::{DeployConstraintBean, ScheduleBean};
    use proto::enums::{DeployConstraintType, ScheduleState, TagSyncState};
    use proto::ids::{ConstraintId, ScheduleId};

    use super::*;

    const MINUTE_MS: i64 = 60_000;

    /// A ping carrying `ec2Tags` (when `az` is set) and the agent's last report.
    fn step_tagged(
        s: &mut State,
        a: &mut Agent,
        now: i64,
        host: &str,
        az: Option<&str>,
    ) -> PingResponseBean {
        let mut req = PingRequestBean::new(HostId::new(host));
        req.host_name = Some(host.into());
        req.ec2_tags = az.map(|z| format!(r#"{{"az":"{z}","Name":"{host}"}}"#));
        req.reports = a.report.clone().into_iter().collect();
        let resp = match s.apply(now, Op::Ping { request: req }).unwrap() {
            OpOutput::Ping(r) => r,
            other => panic!("{other:?}"),
        };
        if let Some(g) = &resp.deploy_goal
            && resp.op_code != OpCode::Noop
        {
            let mut r = report(
                g.deploy_id.as_ref().unwrap().as_str(),
                g.deploy_stage.unwrap(),
                AgentStatus::Succeeded,
            );
            r.env_id = g.env_id.clone();
            a.report = Some(r);
        }
        resp
    }

    /// Every host pings until it is NOOP (first deploys of `d0`), so later deploys need
    /// admission.
    fn settle(s: &mut State, agents: &mut [Agent], now: i64, azs: &[Option<&str>]) {
        for _ in 0..12 {
            for (i, a) in agents.iter_mut().enumerate() {
                step_tagged(s, a, now, &format!("h{i}"), azs[i]);
            }
        }
    }

    fn schedule(hosts: &str, cooldowns: &str) -> Op {
        let n = hosts.split(',').count() as i32;
        Op::SetSchedule {
            env_id: env_id(),
            schedule: Some(ScheduleBean {
                id: Some(ScheduleId::new("s1")),
                total_sessions: Some(n),
                host_numbers: Some(hosts.into()),
                cooldown_times: Some(cooldowns.into()),
                ..Default::default()
            }),
        }
    }

    fn sched(s: &State) -> (ScheduleState, i32) {
        let b = s.schedule(&env_id()).unwrap();
        (b.state.unwrap(), b.current_session.unwrap())
    }

    /// Hosts that got a deploy step of `deploy` in one round of pings.
    fn admitted_round(
        s: &mut State,
        agents: &mut [Agent],
        now: i64,
        azs: &[Option<&str>],
        deploy: &str,
    ) -> Vec<usize> {
        let mut got = Vec::new();
        for (i, a) in agents.iter_mut().enumerate() {
            let r = step_tagged(s, a, now, &format!("h{i}"), azs[i]);
            if r.op_code != OpCode::Noop
                && r.deploy_goal.as_ref().and_then(|g| g.deploy_id.as_ref()).map(|d| d.as_str())
                    == Some(deploy)
            {
                got.push(i);
            }
        }
        got
    }

    #[test]
    fn schedule_sessions_validate_and_count() {
        use super::super::schedule::Sessions;
        let b = |h: &str, c: &str, n: i32| ScheduleBean {
            total_sessions: Some(n),
            host_numbers: Some(h.into()),
            cooldown_times: Some(c.into()),
            ..Default::default()
        };
        let abs = Sessions::parse(&b("5,10,20", "1,2,-1", 3)).unwrap();
        assert_eq!(abs.cumulative, vec![5, 15, 35], "absolute entries are increments");
        assert_eq!(abs.hosts_in_session(2, 1000), 15);
        let pct = Sessions::parse(&b("10%,50%", "0,-1", 2)).unwrap();
        assert_eq!(pct.hosts_in_session(1, 11), 2, "percentages round up");
        assert_eq!(pct.hosts_in_session(2, 11), 6);
        for (h, c, n) in [
            ("5,10", "1", 2),
            ("5", "1,2", 2),
            ("10%,5", "1,1", 2),
            ("50%,10%", "1,1", 2),
            ("0", "1", 1),
            ("x", "1", 1),
            ("5", "1", 0),
        ] {
            assert!(Sessions::parse(&b(h, c, n)).is_err(), "{h} / {c} / {n} must be refused");
        }
        // Refused in apply too, changing nothing.
        let mut s = stage(2, 2);
        let before = s.clone();
        assert!(matches!(s.apply(1, schedule("5%,x", "1,1")), Err(OpError::Invalid { .. })));
        assert_eq!(s, before);
    }

    #[test]
    fn schedule_waves_cool_down_advance_wait_for_override_and_finish() {
        let n = 4;
        let azs = vec![None; n];
        let mut s = stage(n, 4);
        let mut agents = vec![Agent::default(); n];
        deploy(&mut s, 0, "d0", "b1").unwrap();
        settle(&mut s, &mut agents, 0, &azs);
        s.apply(1, schedule("25%,50%", "1,-1")).unwrap();
        assert_eq!(sched(&s), (ScheduleState::NotStarted, 1));
        assert_eq!(
            s.env_by_id(&env_id()).unwrap().schedule_id.as_ref().map(|i| i.as_str()),
            Some("s1")
        );
        // A deploy starts session 1: one host of four (25%).
        deploy(&mut s, 10, "d1", "b2").unwrap();
        assert_eq!(sched(&s), (ScheduleState::Running, 1));
        assert_eq!(admitted_round(&mut s, &mut agents, 11, &azs, "d1"), vec![0]);
        // It finishes: the wave cools down, stamped with apply's time; nobody is admitted.
        let mut now = 12;
        while s.progress(&env_id()).finished < 1 {
            now += 1;
            step_tagged(&mut s, &mut agents[0], now, "h0", None);
        }
        let cooled_at = s.schedule(&env_id()).unwrap().state_start_time.unwrap();
        assert_eq!((sched(&s), cooled_at), ((ScheduleState::CoolingDown, 1), now));
        assert!(admitted_round(&mut s, &mut agents, now + 1, &azs, "d1").is_empty());
        // Override only for the current session.
        let wrong = Op::OverrideSchedule { env_id: env_id(), session: 2 };
        assert!(matches!(s.apply(now + 2, wrong), Err(OpError::Conflict { .. })));
        // The cooldown (1 min) must have passed strictly.
        assert!(!s.tick_needed(cooled_at + MINUTE_MS));
        s.apply(cooled_at + MINUTE_MS, Op::Tick).unwrap();
        assert_eq!(sched(&s), (ScheduleState::CoolingDown, 1));
        assert!(s.tick_needed(cooled_at + MINUTE_MS + 1));
        s.apply(cooled_at + MINUTE_MS + 1, Op::Tick).unwrap();
        assert_eq!(sched(&s), (ScheduleState::Running, 2));
        // Session 2: two hosts in all (50%), so one more.
        now = cooled_at + MINUTE_MS + 2;
        assert_eq!(admitted_round(&mut s, &mut agents, now, &azs, "d1"), vec![1]);
        while s.progress(&env_id()).finished < 2 {
            now += 1;
            step_tagged(&mut s, &mut agents[1], now, "h1", None);
        }
        assert_eq!(sched(&s), (ScheduleState::CoolingDown, 2));
        // A negative cooldown waits for an override however long, and stuck detection does not
        // mark the deploy FAILING meanwhile.
        let later = now + 1_000 * MINUTE_MS;
        assert!(!s.tick_needed(later));
        s.apply(later, Op::Tick).unwrap();
        assert_eq!(sched(&s), (ScheduleState::CoolingDown, 2));
        assert_eq!(s.deploy(&DeployId::new("d1")).unwrap().state, Some(DeployState::Running));
        assert!(admitted_round(&mut s, &mut agents, later, &azs, "d1").is_empty());
        s.apply(later, Op::OverrideSchedule { env_id: env_id(), session: 2 }).unwrap();
        assert_eq!(sched(&s), (ScheduleState::Final, 2));
        // FINAL: no schedule limit (max_parallel 4 admits both).
        assert_eq!(admitted_round(&mut s, &mut agents, later + 1, &azs, "d1"), vec![2, 3]);
        let done = Op::OverrideSchedule { env_id: env_id(), session: 2 };
        assert!(matches!(s.apply(later + 2, done), Err(OpError::Conflict { .. })));
        // A new deploy (here a restart-like redeploy) resets the waves to session 1.
        deploy(&mut s, later + 3, "d2", "b1").unwrap();
        assert_eq!(sched(&s), (ScheduleState::Running, 1));
        // totalSessions <= 0 (None) deletes it and the stage's pointer.
        s.apply(later + 4, Op::SetSchedule { env_id: env_id(), schedule: None }).unwrap();
        assert!(s.schedule(&env_id()).is_none());
        assert!(s.env_by_id(&env_id()).unwrap().schedule_id.is_none());
    }

    #[test]
    fn schedule_cooling_down_without_a_schedule_the_deploy_turns_failing() {
        // The control for the suppression above: same stall, no schedule.
        let n = 2;
        let azs = vec![None; n];
        let mut s = stage(n, 1);
        let mut agents = vec![Agent::default(); n];
        deploy(&mut s, 0, "d0", "b1").unwrap();
        settle(&mut s, &mut agents, 0, &azs);
        deploy(&mut s, 10, "d1", "b2").unwrap();
        s.apply(10 + 1_000 * MINUTE_MS, Op::Tick).unwrap();
        assert_eq!(s.deploy(&DeployId::new("d1")).unwrap().state, Some(DeployState::Failing));
    }

    fn constraint(max: i64, ty: Option<DeployConstraintType>) -> Op {
        Op::SetConstraint {
            env_id: env_id(),
            constraint: Some(DeployConstraintBean {
                id: Some(ConstraintId::new("c1")),
                constraint_key: Some("az".into()),
                max_parallel: Some(max),
                constraint_type: ty,
                ..Default::default()
            }),
        }
    }

    #[test]
    fn constraint_caps_each_tag_value_and_first_deploys_bypass() {
        let azs = [Some("a"), Some("a"), Some("a"), Some("b"), Some("b"), Some("c")];
        let n = azs.len();
        let mut s = stage(n, 6);
        s.apply(0, constraint(1, None)).unwrap();
        let c = s.constraint(&env_id()).unwrap();
        assert_eq!(c.constraint_type, Some(DeployConstraintType::AllGroupsInParallel));
        let mut agents = vec![Agent::default(); n];
        deploy(&mut s, 0, "d0", "b1").unwrap();
        // First deploys bypass the constraint: every host starts at once.
        assert_eq!(admitted_round(&mut s, &mut agents, 1, &azs, "d0").len(), n);
        settle(&mut s, &mut agents, 2, &azs);
        assert_eq!(s.constraint(&env_id()).unwrap().state, Some(TagSyncState::Finished));
        assert_eq!(
            s.host_tag(&env_id(), &HostId::new("h3")).unwrap().tag_value.as_deref(),
            Some("b")
        );
        // An unchanged tag writes nothing: a settled host's ping is read-only.
        let mut req = PingRequestBean::new(HostId::new("h3"));
        req.host_name = Some("h3".into());
        req.ec2_tags = Some(r#"{"az":"b"}"#.into());
        req.reports = agents[3].report.clone().into_iter().collect();
        assert!(s.plan_ping(3, &req).is_read_only());
        deploy(&mut s, 10, "d1", "b2").unwrap();
        // One host per az deploys.
        assert_eq!(admitted_round(&mut s, &mut agents, 11, &azs, "d1"), vec![0, 3, 5]);
        assert_eq!(s.tag_counts(&env_id()), s.recount_tags(&env_id()));
        assert_eq!(s.tag_counts(&env_id())["a"].deploying, 1);
        // Resuming a paused mid-deploy host of az a would exceed the cap: refused, unchanged.
        let pause = |h: &str, st| Op::HostAction {
            env_id: env_id(),
            hosts: vec![HostId::new(h)],
            state: st,
        };
        s.apply(12, pause("h0", AgentState::PausedByUser)).unwrap();
        assert_eq!(admitted_round(&mut s, &mut agents[..2], 13, &azs, "d1"), vec![1]);
        let before = s.clone();
        assert!(matches!(
            s.apply(14, pause("h0", AgentState::Normal)),
            Err(OpError::Conflict { .. })
        ));
        assert_eq!(s, before);
    }

    #[test]
    fn constraint_group_by_group_goes_one_tag_value_at_a_time() {
        let azs = [Some("b"), Some("a"), Some("a"), Some("b"), Some("c")];
        let n = azs.len();
        let mut s = stage(n, 5);
        let mut agents = vec![Agent::default(); n];
        deploy(&mut s, 0, "d0", "b1").unwrap();
        settle(&mut s, &mut agents, 1, &azs);
        s.apply(2, constraint(2, Some(DeployConstraintType::GroupByGroup))).unwrap();
        // Tags are recorded by the next pings (the new constraint starts over).
        assert_eq!(s.constraint(&env_id()).unwrap().state, Some(TagSyncState::Processing));
        settle(&mut s, &mut agents, 3, &azs);
        assert_eq!(s.constraint(&env_id()).unwrap().state, Some(TagSyncState::Finished));
        deploy(&mut s, 10, "d1", "b2").unwrap();
        // "a" first (string order), both of its hosts (maxParallel 2).
        assert_eq!(admitted_round(&mut s, &mut agents, 11, &azs, "d1"), vec![1, 2]);
        assert!(admitted_round(&mut s, &mut agents, 12, &azs, "d1").len() <= 2);
        let mut now = 13;
        let mut order = Vec::new();
        for _ in 0..40 {
            now += 1;
            for (i, a) in agents.iter_mut().enumerate() {
                let was = a.report.as_ref().and_then(|r| r.deploy_id.clone());
                step_tagged(&mut s, a, now, &format!("h{i}"), azs[i]);
                let is = a.report.as_ref().and_then(|r| r.deploy_id.clone());
                if was != is && is.as_ref().map(|d| d.as_str()) == Some("d1") {
                    order.push(azs[i].unwrap());
                }
            }
            // Never a host of a later value deploying while an earlier one is unfinished.
            let counts = s.tag_counts(&env_id());
            let mut earlier_unfinished = false;
            for t in counts.values() {
                assert!(!(earlier_unfinished && t.deploying > 0), "{counts:?}");
                earlier_unfinished |= t.unfinished > 0;
            }
        }
        assert_eq!(order, vec!["b", "b", "c"], "b after a, c after b");
        assert_eq!(s.progress(&env_id()).finished, n as u32);
    }

    #[test]
    fn constraint_waits_for_every_host_to_report_the_key() {
        let azs = [Some("a"), None];
        let mut s = stage(2, 2);
        s.apply(0, constraint(1, None)).unwrap();
        let mut agents = vec![Agent::default(); 2];
        deploy(&mut s, 0, "d0", "b1").unwrap();
        settle(&mut s, &mut agents, 1, &azs);
        assert_eq!(s.constraint(&env_id()).unwrap().state, Some(TagSyncState::Processing));
        deploy(&mut s, 10, "d1", "b2").unwrap();
        assert!(admitted_round(&mut s, &mut agents, 11, &azs, "d1").is_empty());
        // The missing host reports it: both values proceed.
        let azs = [Some("a"), Some("b")];
        assert_eq!(admitted_round(&mut s, &mut agents, 12, &azs, "d1"), vec![1]);
        // (h1 continues its deploy; h0 is admitted once the constraint is FINISHED.)
        assert_eq!(admitted_round(&mut s, &mut agents, 13, &azs, "d1"), vec![0, 1]);
        // Deleting the constraint drops its tags and the pointer.
        s.apply(14, Op::SetConstraint { env_id: env_id(), constraint: None }).unwrap();
        assert!(s.constraint(&env_id()).is_none());
        assert!(s.host_tags_of(&env_id()).next().is_none());
        assert!(s.tag_counts(&env_id()).is_empty());
        assert!(s.env_by_id(&env_id()).unwrap().deploy_constraint_id.is_none());
    }
}

/// A state loaded from the records `s` wrote (as a restarted node or a snapshot would).
fn reload(s: &mut State) -> State {
    let mut disk = std::collections::BTreeMap::new();
    for (k, v) in s.take_dirty() {
        if let Some(v) = v {
            disk.insert(k, v);
        }
    }
    s.take_changes();
    let mut reloaded = State::default();
    for (k, v) in &disk {
        reloaded.load_record(k, v).unwrap();
    }
    reloaded.finish_load();
    reloaded
}

#[test]
fn schedules_constraints_and_host_tags_reload_from_their_records() {
    let mut s = stage(3, 3);
    let mut agents = vec![Agent::default(); 3];
    for (i, a) in agents.iter_mut().enumerate() {
        a.az = Some(["a", "b"][i % 2].to_string());
    }
    let constraint = Op::SetConstraint {
        env_id: env_id(),
        constraint: Some(proto::beans::DeployConstraintBean {
            id: Some(proto::ids::ConstraintId::new("c1")),
            constraint_key: Some("az".into()),
            max_parallel: Some(1),
            ..Default::default()
        }),
    };
    s.apply(0, constraint).unwrap();
    let schedule = Op::SetSchedule {
        env_id: env_id(),
        schedule: Some(proto::beans::ScheduleBean {
            id: Some(proto::ids::ScheduleId::new("s1")),
            total_sessions: Some(1),
            host_numbers: Some("1".into()),
            cooldown_times: Some("-1".into()),
            ..Default::default()
        }),
    };
    s.apply(0, schedule).unwrap();
    deploy(&mut s, 1, "d0", "b1").unwrap();
    for round in 0..3 {
        for (i, a) in agents.iter_mut().enumerate() {
            a.step(&mut s, 2 + round, &format!("h{i}"), AgentStatus::Succeeded);
        }
    }
    assert!(!s.tag_counts(&env_id()).is_empty());
    assert!(s.schedule(&env_id()).is_some());
    let reloaded = reload(&mut s);
    assert_eq!(reloaded, s);
}

#[test]
fn webhooks_fall_due_at_creation_and_first_success_and_record_one_outcome() {
    use proto::beans::{EnvWebHookBean, WebHookBean};
    use proto::enums::{WebhookDeliveryState, WebhookPhase};

    let hook = |url: &str| WebHookBean {
        url: Some(url.into()),
        body: Some("$TELETRAAN_DEPLOY_ID $TELETRAAN_NUMERIC_DEPLOY_STATE".into()),
        ..Default::default()
    };
    let hooks = EnvWebHookBean {
        pre_deploy_hooks: vec![hook("http://r/pre")],
        post_deploy_hooks: vec![hook("http://r/post1"), hook("http://r/post2")],
    };
    let mut s = stage(1, 1);
    // A first deploy (before any hooks) gives the host its agent row.
    deploy(&mut s, 1, "d0", "b1").unwrap();
    let mut a = Agent::default();
    for _ in 0..8 {
        a.step(&mut s, 2, "h0", AgentStatus::Succeeded);
    }
    assert!(s.webhook_deliveries(&DeployId::new("d0")).is_empty());
    let set = |hooks| Op::SetWebHooks { env_id: env_id(), hooks, operator: "ann".into() };
    // Invalid hooks are refused whole, naming the hook.
    let bad = EnvWebHookBean { pre_deploy_hooks: vec![hook("ftp://r")], ..hooks.clone() };
    let err = s.apply(0, set(bad)).unwrap_err();
    assert!(err.to_string().contains("preDeployHooks[0]"), "{err}");
    assert_eq!(s.web_hooks(&env_id()), EnvWebHookBean::default());
    s.apply(0, set(hooks.clone())).unwrap();
    assert_eq!(s.web_hooks(&env_id()), hooks);

    // Creation: the pre hook is due, rendered with RUNNING (0).
    deploy(&mut s, 10, "d1", "b2").unwrap();
    let d1 = DeployId::new("d1");
    let pending = s.pending_webhooks();
    assert_eq!(pending.len(), 1);
    assert_eq!(pending[0].phase, WebhookPhase::Pre);
    assert_eq!(pending[0].request.as_ref().unwrap().body.as_deref(), Some("d1 0"));
    // A config change after the hook fell due does not alter it.
    s.apply(11, set(EnvWebHookBean::default())).unwrap();
    assert_eq!(s.pending_webhooks()[0].request.as_ref().unwrap().url, "http://r/pre");
    s.apply(12, set(hooks.clone())).unwrap();

    // First SUCCEEDING: both post hooks are due, rendered with SUCCEEDING (2); only once.
    assert_eq!(s.deploy(&d1).unwrap().state, Some(DeployState::Running));
    for t in 0..8 {
        a.step(&mut s, 20 + t, "h0", AgentStatus::Succeeded);
    }
    assert_eq!(s.deploy(&d1).unwrap().state, Some(DeployState::Succeeding));
    let pending = s.pending_webhooks();
    let post: Vec<_> = pending.iter().filter(|p| p.phase == WebhookPhase::Post).collect();
    assert_eq!(post.len(), 2, "{pending:?}");
    assert_eq!(post[1].request.as_ref().unwrap().url, "http://r/post2");
    assert_eq!(post[0].request.as_ref().unwrap().body.as_deref(), Some("d1 2"));
    s.apply(100, Op::Tick).unwrap();
    assert_eq!(s.webhook_deliveries(&d1).len(), 3, "the post hooks fall due once");

    // Outcomes: recorded once; a repeat (a second leader finishing the same delivery) and an
    // unknown delivery change nothing.
    let outcome = |phase, index, succeeded, attempts| Op::RecordWebhookOutcome {
        deploy_id: d1.clone(),
        phase,
        index,
        succeeded,
        attempts,
        detail: "HTTP 200".into(),
    };
    s.apply(200, outcome(WebhookPhase::Pre, 0, true, 3)).unwrap();
    s.apply(201, outcome(WebhookPhase::Pre, 0, false, 5)).unwrap();
    s.apply(202, outcome(WebhookPhase::Post, 7, false, 5)).unwrap();
    let all = s.webhook_deliveries(&d1);
    assert_eq!(all[0].state, Some(WebhookDeliveryState::Succeeded));
    assert_eq!((all[0].attempts, all[0].completed_date), (3, Some(200)));
    assert_eq!(all[1].state, Some(WebhookDeliveryState::Pending));
    assert_eq!(s.pending_webhooks().len(), 2);

    // Records round-trip, the pending set is rebuilt on load.
    let reloaded = reload(&mut s);
    assert_eq!(reloaded, s);
    assert_eq!(reloaded.pending_webhooks(), s.pending_webhooks());

    // Purging the deploy drops its deliveries.
    deploy(&mut s, 300, "d2", "b1").unwrap();
    for t in 0..8 {
        a.step(&mut s, 301 + t, "h0", AgentStatus::Succeeded);
    }
    let purged = s.apply(400, Op::PurgeDeploys { ids: vec![d1.clone()] }).unwrap();
    assert_eq!(purged, OpOutput::Purged(1));
    assert!(s.webhook_deliveries(&d1).is_empty());
    assert!(s.pending_webhooks().iter().all(|p| p.deploy_id != d1));
}

#[test]
fn each_host_keeps_a_step_timeline_of_its_current_deploy_and_its_download_source() {
    let mut s = stage(1, 1);
    deploy(&mut s, 0, "d1", "b1").unwrap();
    let mut a = Agent::default();
    let mut t = 100;
    while a.report.as_ref().and_then(|r| r.deploy_stage) != Some(DeployStage::ServingBuild) {
        // The agent says where the build came from once it is downloaded.
        if let Some(r) =
            a.report.as_mut().filter(|r| r.deploy_stage == Some(DeployStage::PostDownload))
        {
            r.extra_info = Some(
                [("downloadSource".to_string(), "swarm: 1.0 MiB from peers".to_string())].into(),
            );
        }
        a.step(&mut s, t, "h0", AgentStatus::Succeeded);
        t += 100;
        assert!(t < 10_000, "the host never finished");
    }
    a.step(&mut s, t, "h0", AgentStatus::Succeeded);
    let key = (env_id(), HostId::new("h0"));
    let tl = s.timeline(&key.0, &key.1).unwrap().clone();
    assert_eq!(tl.deploy_id, Some(DeployId::new("d1")));
    let stages: Vec<DeployStage> = tl.steps.iter().map(|(st, _)| *st).collect();
    assert_eq!(stages.first(), Some(&DeployStage::PreDownload), "{stages:?}");
    assert_eq!(stages.last(), Some(&DeployStage::ServingBuild), "{stages:?}");
    assert!(
        stages.contains(&DeployStage::Downloading) && stages.contains(&DeployStage::Restarting)
    );
    assert!(tl.steps.windows(2).all(|w| w[0].1 < w[1].1), "times increase: {tl:?}");
    assert_eq!(tl.download_source.as_deref(), Some("swarm: 1.0 MiB from peers"));
    // Replicated and persisted with the rest.
    assert_eq!(reload(&mut s), s);
    // A new deploy starts a new timeline.
    deploy(&mut s, t + 1, "d2", "b2").unwrap();
    a.step(&mut s, t + 2, "h0", AgentStatus::Succeeded);
    a.step(&mut s, t + 3, "h0", AgentStatus::Succeeded);
    let tl = s.timeline(&key.0, &key.1).unwrap();
    assert_eq!(tl.deploy_id, Some(DeployId::new("d2")));
    assert!(tl.steps.len() <= 2 && tl.download_source.is_none(), "{tl:?}");
}
