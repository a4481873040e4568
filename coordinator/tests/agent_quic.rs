//! The native agent protocol on a real cluster: redirect from a follower to the leader, a
//! long-polled ping woken by a new deploy, a wrong token refused, and a held ping superseded
//! by its host's next one.

mod common;

use std::time::Duration;

use agent::coordinator_client::{ClientError, CoordinatorClient};
use common::{LEADER_WAIT, http, post_json, spec};
use ops::devcluster::DevCluster;
use proto::enums::{AgentStatus, DeployStage, OpCode};
use proto::ids::HostId;
use proto::ping::{PingReportBean, PingRequestBean};
use serde_json::{Value, json};

const TOKEN: &str = "s3cret-pinger";

fn request(report: Option<PingReportBean>) -> PingRequestBean {
    let mut r = PingRequestBean::new(HostId::new("i-web-1"));
    r.host_name = Some("web-1".into());
    r.reports = report.into_iter().collect();
    r
}

/// A three-node cluster with stage svc/prod (capacity: host web-1) and two builds.
struct Fixture {
    cluster: DevCluster,
    leader: u64,
    ca: rustls::pki_types::CertificateDer<'static>,
    c: reqwest::Client,
    base: String,
    b1: Value,
    b2: Value,
}

async fn fixture(dir: &std::path::Path) -> Fixture {
    let cluster = DevCluster::start(spec(dir.into(), 3, vec![("TT_AGENT_TOKEN", TOKEN)])).unwrap();
    let leader = cluster.wait_leader(&cluster.ids(), LEADER_WAIT).await.unwrap();
    let ca = p2p_transfer::tls::ClusterCa::load_cert(&cluster.dir().join("ca")).unwrap();
    let c = http();
    let base = cluster.base_url(leader);
    let post = |path: &str, body: Value| post_json(&c, format!("{base}{path}"), body);
    post("/v1/envs", json!({"envName": "svc", "stageName": "prod"})).await;
    c.put(format!("{base}/v1/envs/svc/prod/capacity?capacityType=HOST"))
        .json(&json!(["web-1"]))
        .send()
        .await
        .unwrap();
    let build = |commit: &str| json!({"name": "svc", "artifactUrl": format!("file:///{commit}"), "repo": "r", "branch": "m", "commit": commit});
    let b1 = post("/v1/builds", build("1111111")).await;
    let b2 = post("/v1/builds", build("2222222")).await;
    Fixture { cluster, leader, ca, c, base, b1, b2 }
}

/// Pings `client` through every step of the current deploy, each reported succeeded, until
/// the goal is SERVING_BUILD; returns the last report (what an agent in steady state says).
async fn walk_to_serving(client: &CoordinatorClient) -> Option<PingReportBean> {
    let mut report = None;
    loop {
        let goal = client.ping(&request(report.clone()), Duration::ZERO).await.unwrap();
        let Some(g) = goal.deploy_goal else { return report };
        report = Some(PingReportBean {
            deploy_id: g.deploy_id.clone(),
            env_id: g.env_id.clone(),
            deploy_stage: g.deploy_stage,
            agent_status: Some(AgentStatus::Succeeded),
            ..Default::default()
        });
        if g.deploy_stage == Some(DeployStage::ServingBuild) {
            return report;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quic_ping_redirects_long_polls_and_checks_the_token() {
    let dir = tempfile::tempdir().unwrap();
    let Fixture { cluster, leader, ca, c, base, b1, b2 } = fixture(dir.path()).await;
    let follower = *cluster.ids().iter().find(|i| **i != leader).unwrap();
    let post = |path: String, body: Value| post_json(&c, format!("{base}{path}"), body);

    // Wrong token: refused, nothing recorded.
    let wrong =
        CoordinatorClient::new(&ca, vec![cluster.node(leader).agent_addr], Some("nope".into()))
            .unwrap();
    let err = wrong.ping(&request(None), Duration::ZERO).await.unwrap_err();
    assert!(matches!(err, ClientError::Refused { code: 401, .. }), "{err}");
    // The JSON ping needs the token too.
    let r = c
        .post(format!("{base}/v1/system/ping"))
        .json(&json!({"hostId": "i-web-1"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);

    // A client that only knows a follower is redirected to the leader.
    let client =
        CoordinatorClient::new(&ca, vec![cluster.node(follower).agent_addr], Some(TOKEN.into()))
            .unwrap();
    let goal = client.ping(&request(None), Duration::ZERO).await.unwrap();
    assert_eq!(goal.op_code, OpCode::Noop, "never deployed: nothing to do");

    // First deploy, walked to steady state over QUIC.
    let d1 = post(
        format!("/v1/envs/svc/prod/deploys?buildId={}", b1["id"].as_str().unwrap()),
        json!(null),
    )
    .await;
    let report = walk_to_serving(&client).await;
    let idle = client.ping(&request(report.clone()), Duration::ZERO).await.unwrap();
    assert_eq!(idle.op_code, OpCode::Noop);
    assert_eq!(
        report.as_ref().unwrap().deploy_id.as_ref().unwrap().as_str(),
        d1["id"].as_str().unwrap()
    );

    // Long-poll: held while nothing changes; a new deploy wakes it long before its deadline.
    let held = {
        let req = request(report.clone());
        tokio::spawn(async move { client.ping(&req, Duration::from_millis(60_000)).await.unwrap() })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!held.is_finished(), "a NOOP ping is held, not answered");
    let d2 = post(
        format!("/v1/envs/svc/prod/deploys?buildId={}", b2["id"].as_str().unwrap()),
        json!(null),
    )
    .await;
    // Its long-poll deadline is 60 s away: an answer within 30 s means the change woke it.
    let goal = tokio::time::timeout(Duration::from_secs(30), held)
        .await
        .expect("woken by the deploy")
        .unwrap();
    let g = goal.deploy_goal.expect("a goal");
    assert_eq!(g.deploy_stage, Some(DeployStage::PreDownload));
    assert_eq!(g.deploy_id.unwrap().as_str(), d2["id"].as_str().unwrap());
}

/// A restarted agent pings at once while its dead process's long-poll may still be held by
/// the leader. The held ping carries the old report; planned again when the stage changes, it
/// would rewrite the host's row to what the dead process reported and free its slot (the
/// chaos suite's `scale-sim-kill` found the stage over-admitting so). It must be answered as
/// superseded instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_ping_superseded_by_the_host_s_next_ping_is_refused_not_replanned() {
    let dir = tempfile::tempdir().unwrap();
    let Fixture { cluster, leader, ca, c, base, b1, b2 } = fixture(dir.path()).await;
    let post = |path: String, body: Value| post_json(&c, format!("{base}{path}"), body);
    let agent_addr = cluster.node(leader).agent_addr;
    let client = |()| CoordinatorClient::new(&ca, vec![agent_addr], Some(TOKEN.into())).unwrap();
    let (dead, restarted) = (client(()), client(()));

    // The first process deploys b1 to the end.
    post(format!("/v1/envs/svc/prod/deploys?buildId={}", b1["id"].as_str().unwrap()), json!(null))
        .await;
    let report = walk_to_serving(&dead).await;
    assert!(report.is_some(), "the first deploy reached SERVING_BUILD");
    // Its last long-poll is held; then the process "dies" and its successor pings with no
    // local state.
    let held = {
        let req = request(report.clone());
        tokio::spawn(async move { dead.ping(&req, Duration::from_millis(60_000)).await })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!held.is_finished(), "a NOOP ping is held, not answered");
    restarted.ping(&request(None), Duration::ZERO).await.unwrap();
    // A change to the stage wakes every held ping.
    let d2 = post(
        format!("/v1/envs/svc/prod/deploys?buildId={}", b2["id"].as_str().unwrap()),
        json!(null),
    )
    .await;
    let answer = tokio::time::timeout(Duration::from_secs(30), held)
        .await
        .expect("the held ping was answered")
        .unwrap();
    match answer {
        Err(ClientError::Refused { code: 409, message }) => {
            assert!(message.contains("superseded"), "{message}")
        }
        other => panic!("the superseded ping was planned again: {other:?}"),
    }
    // The live process goes on with the new deploy.
    let goal = restarted.ping(&request(None), Duration::ZERO).await.unwrap();
    let g = goal.deploy_goal.expect("the new deploy's goal");
    assert_eq!(g.deploy_id.unwrap().as_str(), d2["id"].as_str().unwrap());
}
