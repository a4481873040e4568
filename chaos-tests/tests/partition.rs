//! Network cuts on a real three-node cluster: the proxies in front of the Raft ports and the
//! blocked ephemeral ports of the cut node really partition it.

use std::time::Duration;

use chaos_tests::lab::{Cuts, Lab, LabSpec, LinkClass};
use ops::devcluster::find_coordinator_bin;
use ops::devfleet::find_agent_bin;

/// Hang guard for leader elections.
const ELECTION_WAIT: Duration = Duration::from_secs(60);

async fn lab(dir: &std::path::Path) -> Lab {
    Lab::start(LabSpec {
        dir: dir.to_path_buf(),
        seed: 1,
        coordinator_bin: find_coordinator_bin().unwrap(),
        agent_bin: find_agent_bin().unwrap(),
        agents: 0,
        group: "g".into(),
        coordinator_env: vec![],
        agent_config: String::new(),
        swarm: false,
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_isolated_leader_is_replaced_and_rejoins_after_the_heal() {
    let tmp = tempfile::tempdir().unwrap();
    let mut lab = lab(tmp.path()).await;
    let all = lab.ids();
    let old = lab.cluster.wait_leader(&all, ELECTION_WAIT).await.unwrap();
    let status = lab.statuses().await;
    let members = status[&old]["members"].as_array().unwrap().clone();
    for m in &members {
        assert!(
            !lab.cluster.nodes.iter().any(|n| n.raft_addr.to_string() == m["raftAddr"]),
            "the membership names the proxies, not the nodes: {m}"
        );
        assert!(
            !lab.cluster.nodes.iter().any(|n| n.http_addr.to_string() == m["httpAddr"]),
            "the other nodes send HTTP through the proxies too: {m}"
        );
    }

    lab.set_cuts(Cuts { isolated: [old].into(), ..Cuts::default() }).unwrap();
    let others: Vec<u64> = all.iter().copied().filter(|&n| n != old).collect();
    let new = lab.cluster.wait_leader(&others, ELECTION_WAIT).await.unwrap();
    assert_ne!(new, old);
    let stats = &lab.proxy_stats()[&LinkClass::Raft];
    assert!(stats.dropped_blackhole > 0, "{stats:?}");
    assert!(stats.dropped_blocked_port > 0, "the old leader's own dials are cut too: {stats:?}");
    // The majority accepts writes.
    lab.client(new)
        .post::<_, serde_json::Value>(
            "/v1/envs",
            &serde_json::json!({"envName": "p", "stageName": "s", "maxParallel": 1}),
        )
        .await
        .unwrap();

    lab.set_cuts(Cuts::default()).unwrap();
    let healed = lab.cluster.wait_leader(&all, ELECTION_WAIT).await.unwrap();
    assert!(others.contains(&healed), "the old leader lost its term: {healed}");
    let v: serde_json::Value = lab.client(old).get("/v1/envs/p/s").await.unwrap();
    assert_eq!(v["stageName"], "s", "the rejoined node serves the majority's write");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_leader_is_replaced_and_steps_down_when_resumed() {
    let tmp = tempfile::tempdir().unwrap();
    let mut lab = lab(tmp.path()).await;
    let all = lab.ids();
    let old = lab.cluster.wait_leader(&all, ELECTION_WAIT).await.unwrap();
    lab.pause_node(old).unwrap();
    let others: Vec<u64> = all.iter().copied().filter(|&n| n != old).collect();
    let new = lab.cluster.wait_leader(&others, ELECTION_WAIT).await.unwrap();
    assert_ne!(new, old);
    lab.resume_node(old).unwrap();
    let healed = lab.cluster.wait_leader(&all, ELECTION_WAIT).await.unwrap();
    assert_ne!(healed, old, "the resumed node learns the newer term");
}
